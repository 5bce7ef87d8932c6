"""The probe sites (src/sites/x86_64.rs, src/sites/fork_repair.rs): two per probe, a
1-byte nop and a 5-byte nop, each with its note and the probe's one semaphore; pyusdt
fires the 5-byte one where Linux (6.18+) serves it through its uprobe trampoline, the
1-byte one where the kernel would single-step a 5-byte nop. A tracer attached to both
sees each event exactly once. A child forked while a tracer is attached gets its nops
back (the kernel leaves the parent's `call` into a trampoline page that fork() does not
copy: the child would crash at its first probe hit). On aarch64 (src/sites/aarch64.rs)
there is one site per probe, a 4-byte `nop`, where the kernel places a `brk`, which a
forked child handles as well."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

from conftest import LIB, attach_bpftrace, finish, go, readline_raw, spawn

import pyusdt

SCRIPTS = Path(__file__).parent / "scripts"
sys.path.insert(0, str(SCRIPTS))
import rel_uprobe  # noqa: E402

NOP5 = bytes.fromhex("0f1f440000")


NOP1 = b"\x90"
AARCH64 = os.uname().machine == "aarch64"
# aarch64: `nop` (0xd503201f) and the kernel's uprobe breakpoint, `brk #0x5` (0xd42000a0).
NOP_A64 = bytes.fromhex("1f2003d5")
BRK_A64 = bytes.fromhex("a00020d4")
# The program counter, as bpftrace's reg() names it.
PC = "pc" if AARCH64 else "ip"
kernel_optimizes_uprobes = rel_uprobe.kernel_optimizes_uprobes


def test_every_probe_has_its_nop_sites_with_one_semaphore():
    notes = rel_uprobe.stapsdt_notes(LIB)
    assert sorted(notes) == sorted(pyusdt.PROBES)
    data = Path(LIB).read_bytes()
    for name, sites in notes.items():
        if AARCH64:
            # One site: a 4-byte-aligned nop, with the probe's semaphore.
            assert len(sites) == 1, (name, sites)
            ((site, sema),) = sites
            assert site % 4 == 0, (name, site)
            assert data[site : site + 4] == NOP_A64, (name, data[site : site + 4].hex())
            assert sema != 0, name
            continue
        assert len(sites) == 2, (name, sites)
        (site1, sema1), (site5, sema5) = sites
        assert data[site1 : site1 + 1] == NOP1, (name, data[site1 : site1 + 5].hex())
        assert data[site5 : site5 + 5] == NOP5, (name, data[site5 : site5 + 5].hex())
        assert sema1 == sema5 != 0, name
        # The 5-byte nop never straddles a page (the 6.18 optimizer refuses such sites).
        assert site5 % 4096 + 5 <= 4096, name


def test_a_tracer_on_all_sites_counts_each_event_once(tmp_path):
    script = tmp_path / "calls.py"
    script.write_text(
        textwrap.dedent(
            """\
            import os, sys
            import pyusdt
            def work():
                pass
            print("PID", os.getpid(), flush=True)
            sys.stdin.readline()
            pyusdt.wait_for_tracer(30, probes=["PY_START"])
            for _ in range(300):
                work()
            """
        )
    )
    target = spawn(script)
    try:
        assert target.stdout is not None
        pid = int(readline_raw(target.stdout).split()[1])
        bt = attach_bpftrace(
            pid,
            'usdt:PYUSDT:pyusdt:PY_START /str(arg0) == "work"/ '
            f'{{ @[probe, reg("{PC}")] = count(); }}',
        )
        go(target)
        _, err = finish(target)
        out, _ = finish(bt)
    finally:
        if target.poll() is None:
            target.kill()
    assert target.returncode == 0, err
    counts = [int(ln.rsplit(":", 1)[1]) for ln in out.splitlines() if ln.startswith("@[")]
    # One location was hit, 300 times; the other (x86_64) never.
    assert counts == [300], out


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
    if AARCH64:
        # A brk on the parent's site; the child has the brk (which the kernel handles
        # there too) or the nop back, and ran its 1000 probe hits.
        assert parent[:4] == BRK_A64, parent.hex()
        assert lines["CHILD"] in ((NOP_A64 + parent[4:]).hex(), parent.hex())
    elif kernel_optimizes_uprobes():
        # The kernel turned the parent's nop into a call (or jmp) to its trampoline;
        # the child has the nop back.
        assert parent[0] in (0xE8, 0xE9), parent.hex()
        assert lines["CHILD"] == NOP5.hex()
    else:
        # An int3 on the 1-byte site, which the kernel handles in the child too.
        original = NOP1 + parent[1:]
        assert parent[0] == 0xCC, parent.hex()
        assert lines["CHILD"] in (original.hex(), parent.hex())
    assert lines["CHILD-EXIT"] == "0", err
