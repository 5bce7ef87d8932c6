"""Tests for pyusdt's ready-made tools (`pyusdt-trace --tool NAME`, pyusdt/tools/), with a
real bpftrace, against ground truth: a plain `sys.monitoring` recorder run over the same
workload in a process without pyusdt, or workloads with known counts (a function that calls
os.stat exactly 1000 times must own exactly 1000 stat system calls).

Durations are only checked where they are deterministic: as lower bounds (a function that
sleeps 0.2 s has taken at least 0.2 s) and for ordering.

Tests that need root and bpftrace skip without them, unless PYUSDT_REQUIRE_BPFTRACE=1,
which turns the skip into a failure.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import LIB, base_env, finish, need_bpftrace, readline_raw, spawn

from pyusdt import tools
from pyusdt.trace import stapsdt_semaphores

LIB_NARGS: dict[str, int] = {}
with open(LIB, "rb") as _f:
    stapsdt_semaphores(_f.read(), nargs=LIB_NARGS)
LIB_PROBES = set(LIB_NARGS)
HAS_QUALNAME = tools.has_qualname(LIB_NARGS)
HAS_UNWIND = {"PY_UNWIND", "PY_THROW"} <= LIB_PROBES
HAS_EXCEPTIONS = {"RAISE", "RERAISE", "EXCEPTION_HANDLED", "PY_UNWIND"} <= LIB_PROBES

# Ground truth: runs WORKLOAD as __main__ under a sys.monitoring tool (no pyusdt in this
# process) and writes, per function of WORKLOAD's file, the activations that ended
# (PY_RETURN / PY_YIELD, and PY_UNWIND when pyusdt has that probe too, as the tools pair
# with it then), per thread the (kind, name, depth) sequence of its starts and ends, and
# per function and exception type the RAISE, RERAISE, EXCEPTION_HANDLED, PY_UNWIND counts.
RECORDER = """\
import json, runpy, sys, threading
workload, out = sys.argv[1], sys.argv[2]
unwind, qualname = sys.argv[3] == "1", sys.argv[4] == "1"
M = sys.monitoring
E = M.events
TOOL = 4
M.use_tool_id(TOOL, "recorder")
ends = {}
flows = {}
depth = threading.local()
lock = threading.Lock()
def mine(code):
    return code.co_filename == workload and code.co_name != "<module>"
def push(kind):
    def cb(code, offset, *rest):
        d = getattr(depth, "d", 0)
        depth.d = d + 1
        if mine(code):
            with lock:
                flows.setdefault(threading.get_native_id(), []).append([">", code.co_name, d])
    return cb
def pop(counted):
    def cb(code, offset, *rest):
        d = getattr(depth, "d", 0) - 1
        depth.d = max(d, 0)
        if mine(code):
            with lock:
                if counted:
                    name = code.co_qualname if qualname else code.co_name
                    k = f"{name}|{code.co_firstlineno}"
                    ends[k] = ends.get(k, 0) + 1
                    flows.setdefault(threading.get_native_id(), []).append(["<", code.co_name, d])
    return cb
M.register_callback(TOOL, E.PY_START, push(">"))
M.register_callback(TOOL, E.PY_RESUME, push(">"))
M.register_callback(TOOL, E.PY_THROW, push(">"))
M.register_callback(TOOL, E.PY_RETURN, pop(True))
M.register_callback(TOOL, E.PY_YIELD, pop(True))
excs = {}
def exc(column, then=None):
    def cb(code, offset, exception):
        if mine(code):
            with lock:
                t = type(exception)
                tn = t.__qualname__
                if t.__module__ != "builtins":
                    tn = f"{t.__module__}.{tn}"
                k = f"{code.co_name}|{tn}"
                excs.setdefault(k, [0, 0, 0, 0])[column] += 1
        if then is not None:
            then(code, offset, exception)
    return cb
M.register_callback(TOOL, E.PY_UNWIND, exc(3, pop(unwind)))
M.register_callback(TOOL, E.RAISE, exc(0))
M.register_callback(TOOL, E.RERAISE, exc(1))
M.register_callback(TOOL, E.EXCEPTION_HANDLED, exc(2))
M.set_events(TOOL, E.PY_START | E.PY_RESUME | E.PY_THROW | E.PY_RETURN | E.PY_YIELD
             | E.PY_UNWIND | E.RAISE | E.RERAISE | E.EXCEPTION_HANDLED)
sys.argv = [workload]
try:
    runpy.run_path(workload, run_name="__main__")
finally:
    M.set_events(TOOL, 0)
    with open(out, "w") as f:
        json.dump({"ends": ends, "flows": list(flows.values()), "exceptions": excs}, f)
"""

# Known counts: leaf 1000 (+ Box.leaf 7), fib(12) 465 calls, gen 1 start + 5 resumes,
# catcher 100 (each catching thrower's ValueError), stat_many 1000 os.stat, sleeper 4 x 0.05 s,
# two threads running work() (leaf 50 each, so 1100 leaf in all).
WORKLOAD = """\
import os
import threading
import time


def leaf(i):
    return i


class Box:
    def leaf(self, i):
        return i


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def gen():
    for i in range(5):
        yield i


def thrower():
    raise ValueError("x")


def catcher():
    try:
        thrower()
    except ValueError:
        pass


def stat_many():
    for _ in range(1000):
        os.stat("/")


def sleeper():
    time.sleep(0.05)


def work():
    for i in range(50):
        leaf(i)


def main():
    for i in range(1000):
        leaf(i)
    box = Box()
    for i in range(7):
        box.leaf(i)
    fib(12)
    list(gen())
    for _ in range(100):
        catcher()
    stat_many()
    for _ in range(4):
        sleeper()
    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


main()
"""

UNITS = {"ns": 1, "us": 1e3, "ms": 1e6, "s": 1e9}


def trace_cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", "from pyusdt.trace import main; main()", *args]


def env() -> dict[str, str]:
    e = base_env()
    for name in ("PYUSDT_VERBOSE", "SUDO_UID", "SUDO_GID", "SUDO_USER"):
        e.pop(name, None)
    return e


def run_trace(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        trace_cmd(*args), cwd=cwd, capture_output=True, text=True, timeout=120, env=env()
    )


def run_tool(workdir: Path, *args: str, script: str = "work.py") -> subprocess.CompletedProcess:
    need_bpftrace()
    r = run_trace("--tool", *args, "--", script, cwd=workdir)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Tracing " in r.stderr.splitlines()[0], r.stderr
    return r


def record(workdir: Path, script: str = "work.py") -> dict:
    (workdir / "recorder.py").write_text(RECORDER)
    out = workdir / "truth.json"
    path = str(workdir / script)
    subprocess.run(
        [
            sys.executable,
            "recorder.py",
            path,
            str(out),
            str(int(HAS_UNWIND)),
            str(int(HAS_QUALNAME)),
        ],
        cwd=workdir,
        check=True,
        timeout=60,
        env=env(),
    )
    return json.loads(out.read_text())


def ns(value: str, unit: str) -> float:
    return float(value) * UNITS[unit]


def table(stdout: str) -> list[list[str]]:
    """The report's rows (after the FUNCTION header), split on spaces (a file name such as
    `<frozen importlib._bootstrap>` may be split: use the cells counted from the end)."""
    lines = stdout.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("FUNCTION"))
    return [ln.split() for ln in lines[start + 1 :] if ln.strip()]


def calls_rows(stdout: str, path: str) -> dict[str, list[str]]:
    """{"name|line": [calls, total, unit, mean, unit, max, unit]} for the file `path`."""
    return {
        f"{row[0]}|{row[1].rsplit(':', 1)[1]}": row[-7:]
        for row in table(stdout)
        if row[1].startswith(path + ":")
    }


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "work.py").write_text(WORKLOAD)
    return tmp_path


# -- without bpftrace ----------------------------------------------------------------------------


def test_list_tools_and_headers(workdir):
    r = run_trace("--list-tools", cwd=workdir)
    assert r.returncode == 0 and r.stderr == ""
    listed = [ln.split()[0] for ln in r.stdout.splitlines()]
    assert listed == ["calls", "flow", "latency", "syscalls", "offcpu", "exceptions"]
    assert "latency FUNC" in r.stdout
    for tool in tools.TOOLS.values():
        # Shipped in the installed package, with bpftrace's tools/ header convention.
        assert os.path.isfile(tool.path), tool.path
        source = tool.source()
        assert source.startswith("#!/usr/bin/env bpftrace\n/*\n * " + tool.name + ".bt\t")
        assert tool.summary() and tool.summary() in r.stdout
        for part in ("USAGE: pyusdt-trace --tool " + tool.name, "Example output", "BEGIN"):
            assert part in source, (tool.name, part)


def test_tool_usage_errors(workdir):
    for args, text in (
        (["--tool", "nosuch", "--", "work.py"], "unknown tool: 'nosuch'"),
        (["--tool", "latency", "--", "work.py"], "--tool latency needs FUNC"),
        (["--tool", "latency"], "--tool latency needs FUNC"),
        (["--tool", "flow", "--top", "3", "--", "work.py"], "--top does not apply"),
        (["--tool", "calls", "--top", "0", "--", "work.py"], "invalid --top value"),
        (["--tool", "calls", "-e", "BEGIN {}", "--", "work.py"], "no SCRIPT.bt or -e"),
        (["--top", "3", "-e", "BEGIN {}", "--", "work.py"], "--top is for --tool"),
    ):
        r = run_trace(*args, cwd=workdir)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.count("\n") == 1 and text in r.stderr, (args, r.stderr)
        assert r.stderr.startswith("pyusdt-trace: ") and r.stdout == ""
    r = run_trace("--tool", "calls", cwd=workdir)
    assert r.returncode == 2 and "no Python program to run" in r.stderr


def test_adapt_drops_probes_the_library_lacks():
    tool = tools.TOOLS["calls"]
    source = tool.source()
    six = {"PY_START", "PY_RESUME", "PY_RETURN", "PY_YIELD", "CALL", "LINE"}
    adapted = tools.adapt(tool, source, six)
    assert tools.probes_of(adapted) == ["PY_START", "PY_RESUME", "PY_RETURN", "PY_YIELD"]
    assert "usdt:PYUSDT:pyusdt:PY_RESUME\n{" in adapted
    assert "usdt:PYUSDT:pyusdt:PY_YIELD\n{" in adapted
    assert adapted.count("{") == adapted.count("}")
    # With qualnames (arg5 of PY_START and PY_RESUME), the program as it is; without,
    # the name on the lines marked /* qualname */.
    nargs = dict.fromkeys(six | {"PY_UNWIND", "PY_THROW"}, 6)
    assert tools.adapt(tool, source, nargs) == source
    adapted = tools.adapt(tool, source, {**nargs, "PY_START": 5, "PY_RESUME": 5})
    assert adapted == source.replace("nsecs, arg5);", "nsecs, arg0);")
    assert tools.adapt(tool, source, None) == source
    with pytest.raises(tools.ToolError, match="needs the PY_RETURN probe"):
        tools.adapt(tool, source, six - {"PY_RETURN"})
    exc = tools.TOOLS["exceptions"]
    with pytest.raises(tools.ToolError, match="RAISE, RERAISE, EXCEPTION_HANDLED, PY_UNWIND"):
        tools.adapt(exc, exc.source(), six)


def test_reports_from_map_lines():
    lines = [
        "@calls[f, 3, /a, b.py]: 4",
        "@calls[g, 9, /x.py]: 1",
        "@calls[h, 12, /x.py]: 2",
        "@total_ns[f, 3, /a, b.py]: 4000",
        "@total_ns[g, 9, /x.py]: 9000000",
        "@total_ns[h, 12, /x.py]: 10",
        "@max_ns[f, 3, /a, b.py]: 1500",
        "@max_ns[g, 9, /x.py]: 9000000",
        "@max_ns[h, 12, /x.py]: 6",
    ]
    out = tools.report_calls(lines, 2).splitlines()
    assert out[0].split() == ["FUNCTION", "FILE:LINE", "CALLS", "TOTAL", "MEAN", "MAX"]
    assert out[1].split() == ["g", "/x.py:9", "1", "9.00", "ms", "9.00", "ms", "9.00", "ms"]
    assert out[2].split() == ["f", "/a,", "b.py:3", "4", "4.00", "us", "1.00", "us", "1.50", "us"]
    assert len(out) == 3  # --top 2
    sys_lines = ["@syscalls[f, 3, 262, /x.py]: 10", "@syscalls[f, 3, 231, /x.py]: 1"]
    sys_lines += ["@total_ns[f, 3, 262, /x.py]: 20000"]
    out = tools.report_syscalls(sys_lines, 20).splitlines()
    if os.uname().machine == "x86_64":
        assert out[1].split() == ["f", "/x.py:3", "newfstatat", "10", "20.00", "us", "2.00", "us"]
        assert out[2].split() == ["f", "/x.py:3", "exit_group", "1", "-", "-"]


# -- with bpftrace -------------------------------------------------------------------------------


def test_calls_match_recorder(workdir):
    truth = record(workdir)["ends"]
    r = run_tool(workdir, "calls", "--top", "1000")
    rows = calls_rows(r.stdout, str(workdir / "work.py"))
    got = {k: int(row[0]) for k, row in rows.items()}
    got.pop("<module>|1", None)
    assert got == truth, r.stdout
    # The known counts, whatever the recorder says.
    method = "Box.leaf" if HAS_QUALNAME else "leaf"
    assert got["leaf|6"] == 1100 and got[f"{method}|11"] == 7 and got["fib|15"] == 465
    assert got["gen|19"] == 6 and got["catcher|28"] == 100 and got["stat_many|35"] == 1
    assert got.get("thrower|24", 0) == (100 if HAS_UNWIND else 0)
    sleeper = rows["sleeper|40"]
    assert int(sleeper[0]) == 4
    assert ns(*sleeper[1:3]) >= 0.2e9  # total
    assert ns(*sleeper[3:5]) >= 0.05e9 and ns(*sleeper[5:7]) >= 0.05e9  # mean, max
    # Sorted by total time: <module>, main (which runs everything), then sleeper.
    all_rows = table(r.stdout)
    totals = [ns(*row[-6:-4]) for row in all_rows]
    assert totals == sorted(totals, reverse=True)
    assert [row[0] for row in all_rows[:3]] == ["<module>", "main", "sleeper"]


def test_calls_top(workdir):
    r = run_tool(workdir, "calls", "--top", "2")
    assert [row[0] for row in table(r.stdout)] == ["<module>", "main"]


FLOW_WORKLOAD = """\
import threading


def leaf(i):
    return i


def mid(n):
    for i in range(n):
        leaf(i)
    return n


def gen():
    yield 1
    yield 2


def work(n):
    mid(n)
    list(gen())


def main():
    work(3)
    threads = [threading.Thread(target=work, args=(k + 2,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


main()
"""

_FLOW_ROW = re.compile(r"^\s*(\d+\.\d+)\s+(\d+)  ( *)(->|<-) (\S+)(?: \((.*):(\d+)\)| (.*))$")


def test_flow_matches_recorder(workdir):
    (workdir / "flow.py").write_text(FLOW_WORKLOAD)
    truth = record(workdir, "flow.py")["flows"]
    r = run_tool(workdir, "flow", script="flow.py")
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["TIME(us)", "TID", "CALL"]
    path = str(workdir / "flow.py")
    per_thread: dict[int, list] = {}
    times = []
    for line in lines[1:]:
        m = _FLOW_ROW.match(line)
        assert m, line
        times.append(float(m[1]))
        kind = ">" if m[4] == "->" else "<"
        if kind == ">" and m[6] != path:
            continue
        per_thread.setdefault(int(m[2]), []).append((kind, m[5], len(m[3]) // 2))
    assert times == sorted(times)  # put in time order
    # Only this file's functions (a start's file is on its line; an end follows its start).
    names = {"leaf", "mid", "gen", "work", "main"}
    got = [[ev for ev in seq if ev[1] in names] for seq in per_thread.values()]

    def relative(seq):
        base = seq[0][2]
        return [(kind, name, depth - base) for kind, name, depth in seq]

    got_rel = sorted(relative(seq) for seq in got if seq)
    truth_rel = sorted(relative([tuple(ev) for ev in seq]) for seq in truth)
    assert got_rel == truth_rel, r.stdout
    assert len(got_rel) == 3  # the main thread and two others
    ends = [ln for ln in lines if " <- " in ln]
    assert all(re.search(r" \d+(\.\d+)? (ns|us|ms|s)$", ln) for ln in ends)


def test_latency_count_exact(workdir):
    r = run_tool(workdir, "latency", "leaf")
    assert 'Tracing Python function "leaf"' in r.stderr
    buckets = re.findall(r"^\[(\S+), (\S+)\)\s+(\d+) \|", r.stdout, re.M)
    assert buckets, r.stdout
    # Every function named leaf: 1000 + 2 x 50 calls of leaf(), 7 of Box.leaf.
    assert sum(int(b[2]) for b in buckets) == 1107
    assert re.search(r"^@calls: 1107$", r.stdout, re.M), r.stdout


def test_latency_qualname(workdir):
    """FUNC as a qualname picks the method alone (where the library has qualnames)."""
    r = run_tool(workdir, "latency", "Box.leaf")
    if HAS_QUALNAME:
        assert re.search(r"^@calls: 7$", r.stdout, re.M), r.stdout
    else:  # no function is named "Box.leaf"
        assert r.stdout.startswith("@ns:\n(no calls)"), r.stdout


def test_latency_lower_bound(workdir):
    r = run_tool(workdir, "latency", "sleeper")
    buckets = [b for b in re.findall(r"^\[(\S+), (\S+)\)\s+(\d+) \|", r.stdout, re.M)]
    filled = [b for b in buckets if int(b[2])]
    assert sum(int(b[2]) for b in filled) == 4
    # Each call slept 50 ms: every filled bucket starts at 32M ns or more.
    assert all(b[0].endswith("M") and int(b[0][:-1]) >= 32 for b in filled), r.stdout


SYSCALL_WORKLOAD = """\
import os
import threading
import time


def stat_many():
    for _ in range(1000):
        os.stat("/")


def thread_stats():
    for _ in range(500):
        os.stat("/")


def open_many(path):
    for _ in range(10):
        fd = os.open(path, os.O_RDONLY)
        os.close(fd)


def sleeper():
    time.sleep(0.2)


def main():
    stat_many()
    t = threading.Thread(target=thread_stats)
    t.start()
    t.join()
    open_many(__file__)
    sleeper()


main()
"""


def test_syscalls_owned_by_function(workdir):
    (workdir / "sys.py").write_text(SYSCALL_WORKLOAD)
    r = run_tool(workdir, "syscalls", "--top", "1000", script="sys.py")
    path = str(workdir / "sys.py")
    owned: dict[str, dict[str, int]] = {}
    times: dict[tuple[str, str], float] = {}
    for row in table(r.stdout):
        if row[1].startswith(path + ":"):
            owned.setdefault(row[0], {})[row[2]] = int(row[3])
            if row[4] != "-":
                times[(row[0], row[2])] = ns(row[4], row[5])
    # Besides these, a function may own futex calls: the GIL changing hands between threads.
    for calls in owned.values():
        calls.pop("futex", None)
    stat = {"newfstatat", "stat", "statx", "fstatat64"}
    assert set(owned["stat_many"]) <= stat and sum(owned["stat_many"].values()) == 1000, owned
    assert set(owned["thread_stats"]) <= stat and sum(owned["thread_stats"].values()) == 500
    assert owned["open_many"] == {"openat": 10, "close": 10}, owned
    assert owned["sleeper"] == {"clock_nanosleep": 1}, owned
    assert set(owned) == {"stat_many", "thread_stats", "open_many", "sleeper"}, owned
    assert times[("sleeper", "clock_nanosleep")] >= 0.2e9


OFFCPU_WORKLOAD = """\
import time


def sleeper():
    time.sleep(0.2)


def spin():
    end = time.monotonic() + 0.2
    while time.monotonic() < end:
        pass


def main():
    sleeper()
    spin()
    sleeper()


main()
"""


def test_offcpu_owned_by_sleeper(workdir):
    (workdir / "off.py").write_text(OFFCPU_WORKLOAD)
    r = run_tool(workdir, "offcpu", "--top", "1000", script="off.py")
    rows = table(r.stdout)
    path = str(workdir / "off.py")
    off = {row[0]: ns(row[2], row[3]) for row in rows if row[1].startswith(path + ":")}
    assert off["sleeper"] >= 0.4e9, r.stdout
    assert rows[0][0] == "sleeper"  # the most off-CPU time of all
    assert off.get("spin", 0) < off["sleeper"]
    sleeper = next(row for row in rows if row[0] == "sleeper")
    assert int(sleeper[4]) >= 2  # at least one switch per sleep


ATTACH_TARGET = """\
import sys
import pyusdt


def marker_fn(i):
    return i


def serve():
    print("loaded", flush=True)
    for line in sys.stdin:
        if not pyusdt.wait_for_tracer(60, ["PY_START", "PY_RETURN"]):
            sys.exit("probes were not enabled")
        for i in range(500):
            marker_fn(i)
        print("round done", flush=True)


serve()
"""


def test_calls_attach_mid_stack(workdir):
    """-p PID: attached while serve() runs; serve's end has no start and is ignored."""
    need_bpftrace()
    (workdir / "target.py").write_text(ATTACH_TARGET)
    target = spawn(workdir / "target.py", env=env())
    assert target.stdout is not None and target.stdin is not None
    assert readline_raw(target.stdout) == "loaded\n"
    trace = subprocess.Popen(
        trace_cmd("--tool", "calls", "-p", str(target.pid)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
        cwd="/",
        start_new_session=True,
    )
    assert trace.stderr is not None
    line = readline_raw(trace.stderr)
    assert line.startswith("Tracing Python function calls"), line + trace.stderr.read()
    target.stdin.write("go\n")
    target.stdin.flush()
    assert readline_raw(target.stdout) == "round done\n"
    target.stdin.close()
    assert target.wait(60) == 0
    out, err = finish(trace)
    assert trace.returncode == 0, err
    rows = {row[0]: row for row in table(out)}
    assert int(rows["marker_fn"][2]) == 500, out
    assert "serve" not in rows and "<module>" not in rows, out


EXC_WORKLOAD = """\
def thrower():
    raise ValueError("x")


def catcher():
    try:
        thrower()
    except ValueError:
        pass


def lookup(d):
    try:
        return d["missing"]
    except KeyError:
        return None


def cleanup():
    try:
        thrower()
    finally:
        pass


def outer():
    try:
        cleanup()
    except ValueError:
        pass


def main():
    for _ in range(100):
        catcher()
    for _ in range(10):
        lookup({})
    for _ in range(5):
        outer()


main()
"""


def test_exceptions(workdir):
    need_bpftrace()
    (workdir / "exc.py").write_text(EXC_WORKLOAD)
    if not HAS_EXCEPTIONS:
        # This pyusdt has no exception probes: a one-line error, the program is not run.
        r = run_trace("--tool", "exceptions", "--", "exc.py", cwd=workdir)
        assert r.returncode == 2, r.stderr
        assert r.stderr.count("\n") == 1 and "tool exceptions needs the" in r.stderr
        return
    r = run_tool(workdir, "exceptions", "--top", "1000", script="exc.py")
    path = str(workdir / "exc.py")
    got = {
        (row[0], row[2]): [int(v) for v in row[3:7]]
        for row in table(r.stdout)
        if row[1].startswith(path + ":")
    }
    truth = {tuple(k.split("|")): v for k, v in record(workdir, "exc.py")["exceptions"].items()}
    assert got == truth, r.stdout
    # RAISED RERAISED HANDLED ESCAPED: raised in thrower 105 times, escaped from it each
    # time; caught 100 times in catcher, 5 times in outer (after cleanup's finally).
    assert got[("thrower", "ValueError")] == [105, 0, 0, 105], r.stdout
    assert got[("catcher", "ValueError")][2] == 100 and got[("outer", "ValueError")][2] == 5
    assert got[("lookup", "KeyError")][0] == 10 and got[("lookup", "KeyError")][2] == 10
    assert got[("cleanup", "ValueError")][3] == 5


def test_flow_output_file(workdir):
    """-o FILE: the report goes there, nothing of it into the program's stdout."""
    need_bpftrace()
    (workdir / "hello.py").write_text("def f():\n    print('hello')\n\nf()\n")
    r = run_trace("--tool", "calls", "-o", "report.txt", "--", "hello.py", cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hello\n"
    rows = table((workdir / "report.txt").read_text())
    assert [row[0] for row in rows] == ["<module>", "f"]
