"""The probe sites (src/probes.rs, src/fork_sites.rs): one per probe, each a 5-byte nop,
which Linux 6.18+ serves through its uprobe trampoline instead of an int3 trap; and a
child forked while a tracer is attached gets its nops back (the kernel leaves the
parent's `call` into a trampoline page that fork() does not copy: the child would crash
at its first probe hit)."""

from __future__ import annotations

import ctypes
import errno
import sys
import textwrap
from pathlib import Path

from conftest import LIB, attach_bpftrace, finish, go, readline_raw, spawn

import pyusdt

SCRIPTS = Path(__file__).parent / "scripts"
sys.path.insert(0, str(SCRIPTS))
import rel_uprobe  # noqa: E402

NOP5 = bytes.fromhex("0f1f440000")


def kernel_optimizes_uprobes() -> bool:
    """Has this kernel the `uprobe` syscall (336) that its nop5 trampoline calls? Outside
    a trampoline it fails with ENXIO; kernels without it say ENOSYS."""
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.syscall(336) == -1 and ctypes.get_errno() == errno.ENXIO


def test_every_probe_site_is_a_5_byte_nop():
    offsets = rel_uprobe.probe_offsets(LIB)
    assert sorted(offsets) == sorted(pyusdt.PROBES)
    data = Path(LIB).read_bytes()
    for name, (site, semaphore) in offsets.items():
        assert data[site : site + 5] == NOP5, (name, data[site : site + 5].hex())
        assert semaphore, name


TARGET = """\
import os, sys
sys.path.insert(0, {scripts!r})
import pyusdt, rel_uprobe

def site_bytes():
    lib = os.path.realpath(pyusdt.lib_path())
    off = rel_uprobe.probe_offsets(lib)["PY_START"][0]
    with open("/proc/self/maps") as maps:
        for line in maps:
            f = line.split()
            start, end = (int(x, 16) for x in f[0].split("-"))
            if len(f) >= 6 and f[5] == lib and int(f[2], 16) <= off < int(f[2], 16) + end - start:
                addr = start + off - int(f[2], 16)
    with open("/proc/self/mem", "rb") as mem:
        mem.seek(addr)
        return mem.read(5).hex()

def work():
    pass

print("PID", os.getpid(), flush=True)
sys.stdin.readline()
pyusdt.wait_for_tracer(30, probes=["PY_START"])
for _ in range(1000):
    work()
print("PARENT", site_bytes(), flush=True)
pid = os.fork()
if pid == 0:
    seen = site_bytes()
    for _ in range(1000):
        work()
    print("CHILD", seen, flush=True)
    os._exit(0)
_, status = os.waitpid(pid, 0)
print("CHILD-EXIT", os.waitstatus_to_exitcode(status), flush=True)
"""


def test_child_forked_under_a_tracer_gets_its_nops_back(tmp_path):
    script = tmp_path / "target.py"
    script.write_text(textwrap.dedent(TARGET.format(scripts=str(SCRIPTS))))
    target = spawn(script)
    try:
        assert target.stdout is not None
        pid = int(readline_raw(target.stdout).split()[1])
        bt = attach_bpftrace(pid, "usdt:PYUSDT:pyusdt:PY_START { @hits = count(); }")
        go(target)
        out, err = finish(target)
        finish(bt)
    finally:
        if target.poll() is None:
            target.kill()
    assert target.returncode == 0, err
    lines = dict(ln.split(maxsplit=1) for ln in out.splitlines())
    parent = bytes.fromhex(lines["PARENT"])
    if kernel_optimizes_uprobes():
        # The kernel turned the parent's nop into a call (or jmp) to its trampoline;
        # the child has the nop back.
        assert parent[0] in (0xE8, 0xE9), parent.hex()
        assert lines["CHILD"] == NOP5.hex()
    else:
        # An int3, which the kernel handles in the child too.
        assert parent[0] == 0xCC and parent[1:] == NOP5[1:], parent.hex()
        assert lines["CHILD"] in (NOP5.hex(), parent.hex())
    assert lines["CHILD-EXIT"] == "0", err
