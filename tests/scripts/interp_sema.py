"""Raises and lowers pyusdt's USDT semaphores in another process, as a tracer
attaching and detaching does (bpftrace -p raises the semaphore of each probe
it attaches), but in microseconds, so a test can toggle hundreds of times.
Writes the 16-bit counters through /proc/PID/mem (root). Only use it on
probes no real tracer is attached to in that process."""

from __future__ import annotations

import os
import struct


def semaphores(lib: str, provider: str = "pyusdt") -> dict[str, int]:
    """{probe name: semaphore virtual address in the ELF file} (64-bit LE ELF)."""
    with open(lib, "rb") as f:
        data = f.read()
    assert data[:6] == b"\x7fELF\x02\x01", "64-bit little-endian ELF only"
    e_shoff = struct.unpack_from("<Q", data, 0x28)[0]
    e_shentsize, e_shnum, e_shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    sections = {}
    hdrs = [struct.unpack_from("<IIQQQQ", data, e_shoff + i * e_shentsize) for i in range(e_shnum)]
    strtab = hdrs[e_shstrndx][4]
    for name, _type, _flags, addr, offset, size in hdrs:
        sname = data[strtab + name : data.index(b"\0", strtab + name)].decode()
        sections[sname] = (addr, offset, size)
    base_addr = sections[".stapsdt.base"][0] if ".stapsdt.base" in sections else None
    _, pos, size = sections[".note.stapsdt"]
    end = pos + size
    result = {}
    while pos < end:
        namesz, descsz, ntype = struct.unpack_from("<III", data, pos)
        pos += 12
        owner = data[pos : pos + namesz].rstrip(b"\0")
        pos += (namesz + 3) & ~3
        desc = data[pos : pos + descsz]
        pos += (descsz + 3) & ~3
        if owner != b"stapsdt" or ntype != 3:
            continue
        _pc, base, sema = struct.unpack_from("<QQQ", desc, 0)
        prov, name = desc[24:].split(b"\0")[:2]
        if prov.decode() == provider and sema:
            if base_addr is not None:
                sema += base_addr - base
            result[name.decode()] = sema
    return result


class Semaphores:
    """The semaphores of `lib` as mapped in process `pid`."""

    def __init__(self, pid: int, lib: str) -> None:
        real = os.path.realpath(lib)
        start = None
        with open(f"/proc/{pid}/maps") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 6 and parts[5] == real and int(parts[2], 16) == 0:
                    start = int(parts[0].split("-")[0], 16)
                    break
        if start is None:
            raise LookupError(f"{real} is not mapped in process {pid}")
        # Shared objects are linked at 0: the load bias is the first mapping.
        self.addr = {name: start + vaddr for name, vaddr in semaphores(real).items()}
        self.fd = os.open(f"/proc/{pid}/mem", os.O_RDWR)

    def get(self, probe: str) -> int:
        return struct.unpack("<H", os.pread(self.fd, 2, self.addr[probe]))[0]

    def add(self, probe: str, delta: int) -> None:
        os.pwrite(self.fd, struct.pack("<H", self.get(probe) + delta), self.addr[probe])

    def close(self) -> None:
        os.close(self.fd)
