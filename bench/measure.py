"""One measurement each: run a target untraced or under bpftrace and return what it saw.

Every target runs in a fresh process with PYUSDT_* removed from its environment (so
the poll interval is the default 100 ms) and PYTHONHASHSEED=0. bpftrace programs count
hits with `@NAME = count()`: the same action as in the uprobe-cost loop, so the floor
model charges exactly what bpftrace itself costs per hit.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from envs import CACHE, Python

HERE = Path(__file__).resolve().parent
WORKLOAD = str(HERE / "workload.py")
LATENCY_TARGET = str(HERE / "latency_target.py")
BPFTRACE = shutil.which("bpftrace")
PROBES = ("PY_START", "PY_RESUME", "PY_RETURN", "PY_YIELD", "CALL", "LINE")
# The probes added since (exception and C-call events), for the filter figure.
MORE_PROBES = (
    "PY_UNWIND",
    "PY_THROW",
    "RAISE",
    "RERAISE",
    "EXCEPTION_HANDLED",
    "C_RETURN",
    "C_RAISE",
)
# sys.monitoring.events bits of the probes' events (the same in 3.12 .. 3.14). C_RETURN
# and C_RAISE cannot be set: pyusdt enables CALL for them (0: nothing to wait for).
EVENT_BIT = {
    "PY_START": 1,
    "PY_RESUME": 2,
    "PY_RETURN": 4,
    "PY_YIELD": 8,
    "CALL": 16,
    "LINE": 32,
    "RAISE": 1024,
    "EXCEPTION_HANDLED": 2048,
    "PY_UNWIND": 4096,
    "PY_THROW": 8192,
    "RERAISE": 16384,
    "C_RETURN": 0,
    "C_RAISE": 0,
}
PROBE_SETS = {"start": ("PY_START",), "all": PROBES, "every": PROBES + MORE_PROBES}
# Processes per untraced sample (see `untraced`).
UNTRACED_PROCS = 3


class MeasureError(Exception):
    """A run that produced no measurement (the message has the target's output)."""


def target_cwd() -> str:
    """Where targets run: not the repo root, whose pyusdt/ source dir (without the
    built extension) would shadow the installed package for `-m pyusdt`."""
    CACHE.mkdir(parents=True, exist_ok=True)
    return str(CACHE)


def target_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYUSDT_")}
    env["PYTHONHASHSEED"] = "0"
    return env


def _bench_times(out: str, err: str, what: str) -> list[float]:
    """The workload's own timings (BENCH_TIMES: one per repeat)."""
    m = re.search(r"^BENCH_TIMES (.+)$", out, re.M)
    if not m:
        raise MeasureError(f"{what}: no BENCH_TIMES\nstdout: {out[-800:]}\nstderr: {err[-800:]}")
    return [float(t) for t in m.group(1).split()]


def thread_times(out: str) -> dict[int, float]:
    """{thread count: fastest time} from a `--threads 1,2` run's BENCH_TIMES_T lines."""
    return {
        int(m.group(1)): min(float(t) for t in m.group(2).split())
        for m in re.finditer(r"^BENCH_TIMES_T(\d+) (.+)$", out, re.M)
    }


def untraced(
    py: Python,
    work: list[str],
    via_pyusdt: bool,
    procs: int = UNTRACED_PROCS,
    env: dict[str, str] | None = None,
) -> dict:
    """`python workload.py ...` (or `python -m pyusdt workload.py ...`), no tracer, in
    `procs` processes one after the other (`env`: more environment variables). The
    sample's time is the fastest repeat of them all: on the VMs this runs on, a whole
    process can run up to 2x slower than the next one, whatever it runs, and other load
    only ever adds time."""
    cmd = [py.exe, *(["-m", "pyusdt"] if via_pyusdt else []), WORKLOAD, *work]
    times: list[float] = []
    by_threads: dict[int, float] = {}
    for _ in range(procs):
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            env={**target_env(), **(env or {})},
            cwd=target_cwd(),
            timeout=600,
            check=False,
        )
        if proc.returncode != 0:
            raise MeasureError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-800:]}")
        times += _bench_times(proc.stdout, proc.stderr, " ".join(cmd))
        for t, best in thread_times(proc.stdout).items():
            by_threads[t] = min(best, by_threads.get(t, best))
    return {"time": min(times), "times": times, "threads": by_threads}


def untraced_pair(py: Python, work: list[str], procs: int = UNTRACED_PROCS) -> dict:
    """`untraced` plain and under `-m pyusdt`, their processes alternating (so that both
    see the same moments of the machine): {"plain": seconds, "pyusdt": seconds, ...}."""
    runs: dict[str, list[float]] = {"plain": [], "pyusdt": []}
    for _ in range(procs):
        for name in runs:
            runs[name] += untraced(py, work, name == "pyusdt", procs=1)["times"]
    return {
        "plain": min(runs["plain"]),
        "pyusdt": min(runs["pyusdt"]),
        "plain_times": runs["plain"],
        "pyusdt_times": runs["pyusdt"],
    }


def _counts(bt_out: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^@(\w+): (\d+)$", bt_out, re.M)}


def _attach(target: subprocess.Popen, program: str, timeout: float) -> tuple[str, str, str]:
    """Attaches `bpftrace -p` to `target` once it has printed its first line (so it has
    loaded the library with the probes), waits for both; returns (target stdout, target
    stderr, bpftrace stdout). bpftrace exits by itself when the target does."""
    assert BPFTRACE is not None and target.stdout is not None
    first = target.stdout.readline()
    if not first:
        out, err = target.communicate()
        raise MeasureError(f"target exited {target.returncode} before attach: {err[-800:]}")
    bt = subprocess.Popen(
        [BPFTRACE, "-p", str(target.pid), "-e", program],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + timeout
    try:
        while target.poll() is None:
            if bt.poll() is not None:
                # It may just have seen the target exit before we did.
                try:
                    target.wait(timeout=5)
                    break
                except subprocess.TimeoutExpired:
                    pass
                bt_out, bt_err = bt.communicate()
                raise MeasureError(f"bpftrace exited early ({bt.returncode}): {bt_out} {bt_err}")
            if time.monotonic() > deadline:
                raise MeasureError(f"target still running after {timeout:.0f} s")
            time.sleep(0.01)
        out, err = target.communicate()
        try:
            bt_out, bt_err = bt.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            bt.send_signal(signal.SIGINT)
            bt_out, bt_err = bt.communicate(timeout=30)
    except BaseException:
        for p in (target, bt):
            if p.poll() is None:
                p.kill()
                p.wait()
        raise
    if target.returncode != 0:
        raise MeasureError(f"target exited {target.returncode}: {err[-800:]}\nbpftrace: {bt_err}")
    return first + out, err, bt_out


def count_program(lib: str, provider: str, probes: tuple[str, ...]) -> str:
    return " ".join(f"usdt:{lib}:{provider}:{p} {{ @{p} = count(); }}" for p in probes)


def traced(
    py: Python,
    work: list[str],
    probe_set: str,
    timeout: float = 600,
    env: dict[str, str] | None = None,
    all_counted: bool = True,
) -> dict:
    """`python -m pyusdt workload.py ...` with bpftrace counting the hits of
    `probe_set`'s probes; the workload starts once their events are enabled. `env` is
    added to the target's environment; `all_counted`: every probe must have hits."""
    probes = PROBE_SETS[probe_set]
    mask = sum(EVENT_BIT[p] for p in probes)
    cmd = [py.exe, "-m", "pyusdt", WORKLOAD, *work, "--wait-events", hex(mask)]
    target = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**target_env(), **(env or {})},
        cwd=target_cwd(),
    )
    out, err, bt_out = _attach(target, count_program(py.lib, "pyusdt", probes), timeout)
    counts = _counts(bt_out)
    missing = [p for p in probes if p not in counts and all_counted]
    if missing:
        raise MeasureError(f"bpftrace printed no count for {missing}: {bt_out[-500:]}")
    times = _bench_times(out, err, " ".join(cmd))
    # Hits of one repeat: bpftrace counted all of them (and a few around the workload).
    return {
        "time": min(times),
        "times": times,
        "hits": sum(counts.values()) / len(times),
        "counts": counts,
        "threads": thread_times(out),
    }


def filtered_pair(py: Python, work: list[str], globs: str, procs: int = UNTRACED_PROCS) -> dict:
    """Plain `python workload.py ...` and the same traced with every probe attached but
    PYUSDT_FILTER=`globs`, their processes alternating: {"plain": s, "filtered": s,
    "hits": probe hits per repeat, ...}."""
    plain: list[float] = []
    filtered: list[float] = []
    hits: list[float] = []
    for _ in range(procs):
        plain += untraced(py, work, False, procs=1)["times"]
        t = traced(py, work, "every", env={"PYUSDT_FILTER": globs}, all_counted=False)
        filtered += t["times"]
        hits.append(t["hits"])
    return {
        "plain": min(plain),
        "filtered": min(filtered),
        "hits": min(hits),
        "plain_times": plain,
        "filtered_times": filtered,
    }


def sdt_loop(binary: str, n: int, repeat: int, trace: bool, threads: int = 1) -> dict:
    """The C reference loop: N semaphore-guarded probe sites (the fastest of `repeat`
    loops; in each of `threads` threads), untraced or traced; `hits` is what bpftrace
    counted over all loops."""
    cmd = [binary, str(n), "--repeat", str(repeat), "--threads", str(threads)]
    cmd += ["--wait"] if trace else []
    target = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=target_cwd()
    )
    hits = 0
    if trace:
        out, err, bt_out = _attach(target, count_program(binary, "bench", ("tick",)), 300)
        hits = _counts(bt_out).get("tick", 0)
    else:
        out, err = target.communicate(timeout=300)
    m = re.search(r"^LOOP_NS (\d+) (\d+) (\d+)$", out, re.M)
    if target.returncode != 0 or not m:
        raise MeasureError(f"sdt_loop failed ({target.returncode}): {out} {err}")
    return {"ns": int(m.group(1)), "n": int(m.group(2)), "total": int(m.group(3)), "hits": hits}


LATENCY_PROGRAM = (
    'BEGIN { printf("T0 %llu\\n", nsecs); } '
    "usdt:{lib}:pyusdt:PY_START /@seen == 0/ "
    '{ @seen = 1; printf("T1 %llu\\n", nsecs); exit(); }'
)


def latency(py: Python, timeout: float = 30) -> dict:
    """Milliseconds from bpftrace's BEGIN (all probes attached) to the first PY_START,
    for a target that is already running and calls a function every ~1 ms; also when
    the target saw the semaphore set and the events enabled, relative to BEGIN."""
    assert BPFTRACE is not None
    target = subprocess.Popen(
        [py.exe, "-m", "pyusdt", LATENCY_TARGET, str(timeout)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=target_env(),
        cwd=target_cwd(),
    )
    try:
        assert target.stdout is not None
        line = target.stdout.readline()
        if line.strip() != "READY":
            raise MeasureError(f"latency target did not start: {line!r} {target.stderr.read()}")
        bt = subprocess.run(
            [BPFTRACE, "-p", str(target.pid), "-e", LATENCY_PROGRAM.replace("{lib}", py.lib)],
            capture_output=True,
            text=True,
            timeout=timeout + 30,
            check=False,
        )
        time.sleep(0.05)  # the target prints ATTACHED/ENABLED within a loop turn (1 ms)
    finally:
        target.kill()
        out, _ = target.communicate()
    stamps = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+) (\d+)$", out, re.M)}
    stamps.update(
        {m.group(1): int(m.group(2)) for m in re.finditer(r"^(T\d) (\d+)$", bt.stdout, re.M)}
    )
    if not ("T0" in stamps and "T1" in stamps):
        raise MeasureError(f"no first event within {timeout} s: {bt.stdout} {bt.stderr}")
    t0 = stamps["T0"]
    sample = {"ms": (stamps["T1"] - t0) / 1e6}
    for key in ("ATTACHED", "ENABLED"):
        if key in stamps:
            sample[key.lower() + "_ms"] = (stamps[key] - t0) / 1e6
    return sample


RSS_CODE = """\
import time
def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
before = rss()
import {module}
time.sleep(0.1)  # let the watcher thread start and settle
print("RSS_KB", rss() - before)
"""


def rss_added(py: Python, module: str) -> dict:
    """KiB of VmRSS added by `import module` (then 0.1 s for its threads to start)."""
    proc = subprocess.run(
        [py.exe, "-c", RSS_CODE.replace("{module}", module)],
        capture_output=True,
        text=True,
        env=target_env(),
        cwd=target_cwd(),
        timeout=60,
        check=False,
    )
    m = re.search(r"^RSS_KB (-?\d+)$", proc.stdout, re.M)
    if not m:
        raise MeasureError(f"rss probe failed: {proc.stdout} {proc.stderr[-500:]}")
    return {"kib": int(m.group(1))}
