"""Per-hit cost of a probe site on the running kernel: `python bench/site_cost.py [--n N]
[--runs R] [--bin-dir DIR] [--json PATH]` (run it with the Python whose pyusdt is measured).

Three sites, each fired N times in a C loop that checks its semaphore first, untraced and
traced by `bpftrace -p PID` with `/arg2 == 42/ { @ = count(); }` (the loops fire line 42;
pyusdt also fires for the target's own Python code once the tracer is attached); a hit's
cost is (traced - untraced) / N:
  nop1    bench/sdt_loop.c with a standard SDT site (a 1-byte nop): the reference
  nop5    bench/sdt_loop.c -DBENCH_NOP5 (a 5-byte nop)
  nop1-py the nop1 site again, but in bench/site_call.c inside the Python process that
          measures pyusdt (same threads and mappings as the pyusdt figure)
  pyusdt  pyusdt's own PY_START site, the one pyusdt fires on this kernel (found through
          its notes, called from bench/site_call.c inside a process that imported pyusdt);
          bpftrace attaches to both of the probe's locations, so its count also checks
          that exactly one is hit
Prints the median cost per hit of each and pyusdt/nop1 (target <= 1.05). A benchmark,
not a test: it fails only when it cannot measure (or a count is not exactly N).
The C programs are built with cc into --bin-dir (default: a temporary directory); build
them beforehand (--build-only) where the tree is read-only (the kernel-matrix guest).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "tests" / "scripts"

TARGET = """\
import ctypes, os, sys, time
sys.path.insert(0, {tests!r})
import pyusdt, rel_uprobe
n, lib_c, wait, ref = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "1", sys.argv[4] == "ref"
lib = os.path.realpath(pyusdt.lib_path())
site, sema = rel_uprobe.stapsdt_probes(lib)["PY_START"]  # virtual addresses
def addr(vaddr):
    # The load base: where the file's first page (offset 0) is mapped.
    with open("/proc/self/maps") as maps:
        for line in maps:
            f = line.split()
            if len(f) >= 6 and f[5] == lib and int(f[2], 16) == 0:
                return int(f[0].split("-")[0], 16) + vaddr
    raise SystemExit("library not mapped")
bench = ctypes.CDLL(lib_c)
loop = bench.site_loop
loop.restype = ctypes.c_uint64
loop.argtypes = [ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
bench.ref_loop.restype = ctypes.c_uint64
bench.ref_loop.argtypes = [ctypes.c_long]
if ref:
    sema_addr = ctypes.addressof(ctypes.c_uint16.in_dll(bench, "bench_tick_semaphore"))
else:
    sema_addr = addr(sema)
print("PID", os.getpid(), flush=True)
if wait:
    sys.stdin.readline()  # the harness's go: bpftrace has attached every location
ns = bench.ref_loop(n) if ref else loop(n, addr(site), sema_addr)
print("LOOP_NS", ns, n, n, flush=True)
"""


def build(bin_dir: Path) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    src = HERE / "sdt_loop.c"
    cc = ["cc", "-O2", "-pthread"]
    subprocess.run([*cc, "-DBENCH_OWN_SDT", "-o", bin_dir / "sdt_nop1", src], check=True)
    subprocess.run([*cc, "-DBENCH_NOP5", "-o", bin_dir / "sdt_nop5", src], check=True)
    subprocess.run(
        [*cc, "-shared", "-fPIC", "-o", bin_dir / "site_call.so", HERE / "site_call.c"],
        check=True,
    )
    (bin_dir / "site_target.py").write_text(TARGET.format(tests=str(TESTS)))


def command(kind: str, bin_dir: Path, n: int, wait: bool) -> list[str]:
    if kind in ("pyusdt", "nop1-py"):
        return [
            sys.executable,
            str(bin_dir / "site_target.py"),
            str(n),
            str(bin_dir / "site_call.so"),
            "1" if wait else "0",
            "ref" if kind == "nop1-py" else "site",
        ]
    return [str(bin_dir / f"sdt_{kind}"), str(n), *(["--wait"] if wait else [])]


def program(kind: str, bin_dir: Path) -> str:
    if kind == "pyusdt":
        import pyusdt

        return f"usdt:{pyusdt.lib_path()}:pyusdt:PY_START /arg2 == 42/ {{ @ = count(); }}"
    if kind == "nop1-py":
        return f"usdt:{bin_dir / 'site_call.so'}:bench:tick /arg2 == 42/ {{ @ = count(); }}"
    return f"usdt:{bin_dir / f'sdt_{kind}'}:bench:tick /arg2 == 42/ {{ @ = count(); }}"


def readline_raw(fd: int) -> str:
    """One line, a byte at a time: a later communicate() reads the rest of the pipe."""
    line = b""
    while not line.endswith(b"\n"):
        b = os.read(fd, 1)
        if not b:
            break
        line += b
    return line.decode()


def run_once(kind: str, bin_dir: Path, n: int, traced: bool) -> float:
    target = subprocess.Popen(
        command(kind, bin_dir, n, traced),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert target.stdout is not None
    pid = int(readline_raw(target.stdout.fileno()).split()[1])
    bt = None
    if traced:
        # The C loops wait for their semaphore (and 0.2 s more); the Python target for
        # a line on stdin, sent once bpftrace ran BEGIN, i.e. attached both locations.
        bt = subprocess.Popen(
            [
                "bpftrace",
                "-p",
                str(pid),
                "-e",
                'BEGIN { printf("READY\\n"); } ' + program(kind, bin_dir),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert bt.stdout is not None
        while (line := readline_raw(bt.stdout.fileno())) != "READY\n":
            if not line:
                raise SystemExit(f"{kind}: bpftrace did not attach: {bt.communicate()[1]}")
    out, err = target.communicate("\n", timeout=900)
    if target.returncode != 0:
        raise SystemExit(f"{kind}: target failed ({target.returncode}): {out} {err}")
    ns = int(next(ln for ln in out.splitlines() if ln.startswith("LOOP_NS")).split()[1])
    if bt is not None:
        bt_out, bt_err = bt.communicate(timeout=120)
        counts = [ln for ln in bt_out.splitlines() if ln.startswith("@:")]
        if counts != [f"@: {n}"]:
            raise SystemExit(f"{kind}: bpftrace counted {counts} for {n} hits: {bt_err}")
    return ns


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="hits per traced loop")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--bin-dir", type=Path)
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    tmp = None
    if args.bin_dir is None:
        tmp = tempfile.mkdtemp(prefix="pyusdt-site-cost.")
        args.bin_dir = Path(tmp)
    try:
        if args.build_only or not (args.bin_dir / "site_target.py").exists():
            build(args.bin_dir)
        if args.build_only:
            return 0
        kinds = ["nop1", "nop5", "nop1-py", "pyusdt"]
        costs: dict[str, list[float]] = {k: [] for k in kinds}
        for _ in range(args.runs):
            for kind in kinds:
                base = run_once(kind, args.bin_dir, args.n, False)
                hit = run_once(kind, args.bin_dir, args.n, True)
                costs[kind].append((hit - base) / args.n)
        med = {k: statistics.median(v) for k, v in costs.items()}
        sys.path.insert(0, str(TESTS))
        import rel_uprobe

        fired = "5-byte nop" if rel_uprobe.kernel_optimizes_uprobes() else "1-byte nop"
        print(
            f"kernel {os.uname().release}; pyusdt fires its {fired} site;"
            f" n={args.n}, runs={args.runs}"
        )
        for k in kinds:
            print(f"  {k:8s} {med[k]:10.1f} ns/hit   samples {[round(c, 1) for c in costs[k]]}")
        print(f"  pyusdt/nop1    {med['pyusdt'] / med['nop1']:.3f} (target <= 1.05)")
        print(f"  pyusdt/nop1-py {med['pyusdt'] / med['nop1-py']:.3f} (same process)")
        print(f"  nop5/nop1      {med['nop5'] / med['nop1']:.3f}")
        if args.json:
            args.json.write_text(
                json.dumps({"kernel": os.uname().release, "fired": fired, "costs": costs}, indent=1)
            )
        return 0
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
