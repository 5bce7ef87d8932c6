"""Attach pyusdt's USDT probes to a process without bpftrace (for the reliability tests).

A USDT probe is a uprobe on the probe's address plus a reference counter (the probe's
semaphore) that the kernel increments while the uprobe is attached. Opening a perf event
of the `uprobe` PMU with `ref_ctr_offset` does exactly what `bpftrace -p PID` does to the
semaphores and breakpoints, in microseconds instead of the ~1 s bpftrace needs to start,
so a test can attach and detach hundreds of times. The perf event counts the probe hits
of the thread it was opened for (`Uprobe.count()`).
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

_SYS_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}[os.uname().machine]
_PERF_FLAG_FD_CLOEXEC = 8
_UPROBE_PMU = "/sys/bus/event_source/devices/uprobe"
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _vaddr_to_offset(phdrs: list[tuple[int, int, int, int]], vaddr: int) -> int:
    for p_type, p_offset, p_vaddr, p_filesz in phdrs:
        if p_type == 1 and p_vaddr <= vaddr < p_vaddr + max(p_filesz, 1):
            return vaddr - p_vaddr + p_offset
    raise ValueError(f"address {vaddr:#x} is in no PT_LOAD segment")


def kernel_optimizes_uprobes() -> bool:
    """Has this kernel the `uprobe` syscall (336) that its nop5 trampoline calls? Outside
    a trampoline it fails with ENXIO; kernels without it say ENOSYS. pyusdt fires its
    5-byte-nop sites then, its 1-byte-nop sites otherwise. Only x86_64 has the trampoline
    (336 is another syscall number, or none, elsewhere)."""
    if os.uname().machine != "x86_64":
        return False
    _libc.syscall.restype = ctypes.c_long
    return _libc.syscall(336) == -1 and ctypes.get_errno() == errno.ENXIO


def stapsdt_notes(lib: str, provider: str = "pyusdt") -> dict[str, list[tuple[int, int]]]:
    """{probe name: [(file offset of a site, file offset of its semaphore or 0), ...]}: every
    note of each probe (pyusdt has two, a 1-byte-nop and a 5-byte-nop site)."""
    notes, phdrs = _read(lib, provider)
    return {
        name: [
            (_vaddr_to_offset(phdrs, pc), _vaddr_to_offset(phdrs, sema) if sema else 0)
            for pc, sema in sites
        ]
        for name, sites in notes.items()
    }


def _fired(lib: str, provider: str) -> dict[str, int]:
    """{probe name: index in its notes of the site pyusdt fires on this kernel}."""
    want = 5 if kernel_optimizes_uprobes() else 1
    with open(lib, "rb") as f:
        data = f.read()
    fired = {}
    for name, sites in stapsdt_notes(lib, provider).items():
        lengths = [5 if data[off] == 0x0F else 1 for off, _ in sites]
        fired[name] = lengths.index(want) if want in lengths else 0
    return fired


def stapsdt_probes(lib: str, provider: str = "pyusdt") -> dict[str, tuple[int, int]]:
    """{probe name: (virtual address of the site fired on this kernel, of its semaphore
    or 0)} of a 64-bit little-endian ELF, read from its `.note.stapsdt` notes."""
    fired = _fired(lib, provider)
    return {name: sites[fired[name]] for name, sites in _read(lib, provider)[0].items()}


def probe_offsets(lib: str, provider: str = "pyusdt") -> dict[str, tuple[int, int]]:
    """{probe name: (file offset of the site fired on this kernel, file offset of its
    semaphore)} of a 64-bit ELF."""
    fired = _fired(lib, provider)
    return {name: sites[fired[name]] for name, sites in stapsdt_notes(lib, provider).items()}


def _read(
    lib: str, provider: str
) -> tuple[dict[str, list[tuple[int, int]]], list[tuple[int, int, int, int]]]:
    with open(lib, "rb") as f:
        data = f.read()
    if data[:5] != b"\x7fELF\x02" or data[5] != 1:
        raise ValueError("only 64-bit little-endian ELF files are supported")
    e_phoff, e_shoff = struct.unpack_from("<QQ", data, 0x20)
    e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx = struct.unpack_from(
        "<HHHHH", data, 0x36
    )
    phdrs = []
    for i in range(e_phnum):
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from(
            "<IIQQQQ", data, e_phoff + i * e_phentsize
        )
        phdrs.append((p_type, p_offset, p_vaddr, p_filesz))
    sections = []
    for i in range(e_shnum):
        name, _type, _flags, addr, offset, size = struct.unpack_from(
            "<IIQQQQ", data, e_shoff + i * e_shentsize
        )
        sections.append((name, addr, offset, size))
    strtab_off = sections[e_shstrndx][2]

    def sname(n: int) -> str:
        return data[strtab_off + n : data.index(b"\0", strtab_off + n)].decode()

    by_name = {sname(s[0]): s for s in sections}
    base_addr = by_name[".stapsdt.base"][1] if ".stapsdt.base" in by_name else None
    _, _, note_off, note_size = by_name[".note.stapsdt"]
    probes: dict[str, list[tuple[int, int]]] = {}
    pos, end = note_off, note_off + note_size
    while pos < end:
        namesz, descsz, ntype = struct.unpack_from("<III", data, pos)
        pos += 12
        owner = data[pos : pos + namesz].rstrip(b"\0")
        pos += (namesz + 3) & ~3
        desc = data[pos : pos + descsz]
        pos += (descsz + 3) & ~3
        if owner != b"stapsdt" or ntype != 3:
            continue
        pc, base, sema = struct.unpack_from("<QQQ", desc, 0)
        prov, name = desc[24:].split(b"\0")[:2]
        if prov.decode() != provider:
            continue
        if base_addr is not None:
            pc += base_addr - base
            if sema:
                sema += base_addr - base
        probes.setdefault(name.decode(), []).append((pc, sema))
    return probes, phdrs


class _PerfEventAttr(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("size", ctypes.c_uint32),
        ("config", ctypes.c_uint64),
        ("sample_period", ctypes.c_uint64),
        ("sample_type", ctypes.c_uint64),
        ("read_format", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
        ("wakeup_events", ctypes.c_uint32),
        ("bp_type", ctypes.c_uint32),
        ("config1", ctypes.c_uint64),  # uprobe_path
        ("config2", ctypes.c_uint64),  # probe_offset
        ("branch_sample_type", ctypes.c_uint64),
        ("sample_regs_user", ctypes.c_uint64),
        ("sample_stack_user", ctypes.c_uint32),
        ("clockid", ctypes.c_int32),
        ("sample_regs_intr", ctypes.c_uint64),
        ("aux_watermark", ctypes.c_uint32),
        ("sample_max_stack", ctypes.c_uint16),
        ("reserved_2", ctypes.c_uint16),
    ]


def available() -> str | None:
    """Why uprobes cannot be opened here, or None."""
    if os.geteuid() != 0:
        return "opening uprobes needs root"
    if not os.path.exists(f"{_UPROBE_PMU}/format/ref_ctr_offset"):
        return "the kernel's uprobe PMU has no ref_ctr_offset (Linux < 4.20)"
    return None


class Uprobe:
    """One USDT probe attached to one process (its thread `pid`) until `close()`."""

    def __init__(self, lib: str, offsets: tuple[int, int], pid: int) -> None:
        with open(f"{_UPROBE_PMU}/type") as f:
            pmu = int(f.read())
        self._path = ctypes.create_string_buffer(os.fsencode(lib))
        attr = _PerfEventAttr()
        attr.type = pmu
        attr.size = ctypes.sizeof(_PerfEventAttr)
        attr.config = offsets[1] << 32  # ref_ctr_offset: config:32-63
        attr.config1 = ctypes.addressof(self._path)
        attr.config2 = offsets[0]
        fd = _libc.syscall(
            _SYS_PERF_EVENT_OPEN, ctypes.byref(attr), pid, -1, -1, _PERF_FLAG_FD_CLOEXEC
        )
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"perf_event_open(uprobe): {os.strerror(err)}")
        self.fd = fd

    def count(self) -> int:
        return struct.unpack("<Q", os.read(self.fd, 8))[0]

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Uprobe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
