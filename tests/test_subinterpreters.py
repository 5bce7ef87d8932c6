"""Tests for subinterpreters: concurrent isolated interpreters traced at once,
subinterpreter churn under an attaching/detaching tracer, and process exit when
only subinterpreters imported pyusdt (helpers: tests/scripts/interp_*.py)."""

from __future__ import annotations

import queue
import random
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import BPFTRACE, base_env, bt_program

SCRIPTS = Path(__file__).parent / "scripts"
sys.path.insert(0, str(SCRIPTS))

import interp_workload  # noqa: E402

ALL = ["PY_START", "PY_RESUME", "PY_RETURN", "PY_YIELD", "CALL", "LINE"]
# Position of the interpreter-id argument (always the last one).
INTERP_ARG = {"PY_START": 4, "PY_RESUME": 4, "PY_RETURN": 5, "PY_YIELD": 5, "CALL": 5, "LINE": 3}

# Counts events of the `wl_*` functions by (probe, function, interpreter id).
COUNT_WL = "\n".join(
    f'usdt:PYUSDT:pyusdt:{p} /strncmp(str(arg0), "wl_", 3) == 0/ '
    f"{{ @{p}[str(arg0), arg{INTERP_ARG[p]}] = count(); }}"
    for p in ALL
)
# CPython 3.13.0 (gh-126914): pyusdt does not enter subinterpreters there.
IS_3130 = sys.version_info[:3] == (3, 13, 0)
SKIP_3130 = pytest.mark.skipif(IS_3130, reason="subinterpreters are not traced on 3.13.0")
MAP_LINE = re.compile(r"^@(\w+)\[(\w+), (\d+)\]: (\d+)$")


def parse_counts(output: str) -> dict[int, Counter]:
    """bpftrace map lines -> {interp id: Counter({(probe, function): n})}."""
    per: dict[int, Counter] = {}
    for line in output.splitlines():
        m = MAP_LINE.match(line.strip())
        if m:
            probe, func, interp, n = m.group(1), m.group(2), int(m.group(3)), int(m.group(4))
            per.setdefault(interp, Counter())[(probe, func)] += n
    return per


class Lines:
    """A process's stdout lines, read by a thread, awaited by prefix."""

    def __init__(self, stream) -> None:
        self.seen: list[str] = []
        self._q: queue.Queue[str | None] = queue.Queue()
        self._t = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._t.start()

    def _read(self, stream) -> None:
        for line in stream:
            self._q.put(line.rstrip("\n"))
        self._q.put(None)

    def _drain(self, timeout: float) -> bool:
        """Moves queued lines to `seen`, waiting up to `timeout` s for the
        first; False once the stream has ended."""
        try:
            line = self._q.get(timeout=timeout)
            while line is not None:
                self.seen.append(line)
                line = self._q.get_nowait()
        except queue.Empty:
            return True
        self._q.put(None)
        return False

    def wait_for(self, pred, timeout: float, start: int = 0) -> int:
        """Index of the first line from `start` on that satisfies `pred`."""
        deadline = time.monotonic() + timeout
        while True:
            for i in range(start, len(self.seen)):
                if pred(self.seen[i]):
                    return i
            start = len(self.seen)
            left = deadline - time.monotonic()
            if left <= 0 or not self._drain(min(left, 0.5)) and start == len(self.seen):
                raise AssertionError(f"no such line; lines so far: {self.seen[-50:]}")

    def has(self, prefix: str) -> bool:
        self._drain(0.001)
        return any(ln.startswith(prefix) for ln in self.seen)

    def all(self, timeout: float = 30) -> str:
        """All lines, once the stream has ended."""
        deadline = time.monotonic() + timeout
        while self._drain(0.1):
            assert time.monotonic() < deadline, f"stdout did not end: {self.seen}"
        return "\n".join(self.seen)

    def expect(self, prefix: str, timeout: float) -> str:
        return self.seen[self.wait_for(lambda ln: ln.startswith(prefix), timeout)]


def start_target(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=base_env(),
        cwd=cwd,
    )


def start_bpftrace(pid: int, program: str) -> subprocess.Popen:
    assert BPFTRACE is not None
    return subprocess.Popen(
        [BPFTRACE, "-p", str(pid), "-e", bt_program(program)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()


def bpftrace_cycle(pid: int, program: str, hold: float) -> tuple[bool, str]:
    """One short-lived tracer: attach, stay `hold` s once all its probes are
    attached (its BEGIN ran), then exit. Returns (it attached, its stdout).
    It ends itself with exit(): bpftrace 0.17 sometimes ignores SIGINT."""
    bt = start_bpftrace(
        pid,
        'BEGIN { printf("attached\\n"); }\n'
        f"interval:ms:{max(1, round(hold * 1000))} {{ exit(); }}\n" + program,
    )
    try:
        out = Lines(bt.stdout)
        bt.wait(60)
        text = out.all()
        return "attached" in text.splitlines(), text
    finally:
        stop(bt)


class Tracer:
    """A bpftrace attached to `pid`; once all its probes are attached (its
    BEGIN ran) the target is told `go` on stdin, so it misses no event (the
    kernel raises a semaphore before bpftrace has finished attaching)."""

    def __init__(self, target: subprocess.Popen, program: str) -> None:
        self.bt = start_bpftrace(target.pid, 'BEGIN { printf("attached\\n"); }\n' + program)
        self.out = Lines(self.bt.stdout)
        self.out.expect("attached", 60)
        assert target.stdin is not None
        target.stdin.write("go\n")
        target.stdin.flush()

    def finish(self) -> tuple[str, str]:
        """(stdout, stderr) once bpftrace has exited (it follows its target)."""
        self.bt.wait(30)
        err = self.bt.stderr.read() if self.bt.stderr else ""
        return self.out.all(), err


def run_concurrent(nsub: int, rounds: int, cwd: Path) -> tuple[list[int], dict[int, Counter], str]:
    target = start_target(
        [str(SCRIPTS / "interp_concurrent.py"), ",".join(ALL), str(nsub), str(rounds)], cwd
    )
    bt = None
    try:
        lines = Lines(target.stdout)
        # Attach only once the target has mapped the library (bpftrace -p
        # resolves USDT arguments in the process's mapped modules).
        ids = [int(x) for x in lines.expect("ids", 60).split()[1:]]
        tracer = Tracer(target, COUNT_WL)
        bt = tracer.bt
        target.wait(120)
        bt_out, bt_err = tracer.finish()
    finally:
        stop(target)
        stop(bt)
    stderr = target.stderr.read() if target.stderr else ""
    assert target.returncode == 0, stderr + bt_err
    expected = interp_workload.wl_work(rounds)
    results = {
        int(m.group(1)): int(m.group(2))
        for m in re.finditer(r"^result (\d+) (\d+)$", lines.all(), re.M)
    }
    assert results == {i: expected for i in ids}, lines.seen
    return ids, parse_counts(bt_out), bt_out


@SKIP_3130
def test_concurrent_isolated_interpreters_exact_counts(bpftrace, workdir):
    rounds = 20
    ref_ids, ref, ref_out = run_concurrent(0, rounds, workdir)
    assert ref_ids == [0]
    assert list(ref) == [0], ref_out
    one = ref[0]
    # Every probe fired for the workload in the reference run.
    assert {p for p, _ in one} == set(ALL), one
    assert one[("PY_START", "wl_fib")] == one[("PY_RETURN", "wl_fib")] == rounds * fib_calls(12)
    ids, per, out = run_concurrent(3, rounds, workdir)
    assert len(set(ids)) == 4 and ids[0] == 0
    assert sorted(per) == sorted(ids), out
    for i in ids:
        assert per[i] == one, f"interpreter {i}: {per[i]} != reference {one}"
    total = Counter()
    for c in per.values():
        total.update(c)
    for p in ALL:
        n_ref = sum(n for (q, _), n in one.items() if q == p)
        assert sum(n for (q, _), n in total.items() if q == p) == 4 * n_ref


def fib_calls(n: int) -> int:
    return 1 if n < 2 else 1 + fib_calls(n - 1) + fib_calls(n - 2)


# Any event, keyed by probe and interpreter id, plus the churn markers.
CHURN_PROGRAM = "\n".join(
    f"usdt:PYUSDT:pyusdt:{p} {{ @{p}[arg{INTERP_ARG[p]}] = count(); }}" for p in ALL
) + (
    '\nusdt:PYUSDT:pyusdt:PY_START /str(arg0) == "churn_marker"/ { printf("marker %d\\n", arg4); }'
)
FINAL_PROGRAM = (
    'usdt:PYUSDT:pyusdt:PY_START /str(arg0) == "churn_marker"/ { printf("marker %d\\n", arg4); }'
)


def test_churn_500_subinterpreters_under_toggling_tracer(bpftrace, workdir):
    rng = random.Random(669)
    args = [str(SCRIPTS / "interp_churn.py"), "500"] + (["--no-sub-wait"] if IS_3130 else [])
    target = start_target(args, workdir)
    final = None
    try:
        lines = Lines(target.stdout)
        lines.expect("ready", 60)
        cycles, outputs = 0, []
        deadline = time.monotonic() + 180  # a hang fails here, not in CI's timeout
        # At least 500 subinterpreters and 5 tracer cycles, however fast either is.
        while not (lines.has("reached 500") and cycles >= 5) and target.poll() is None:
            assert time.monotonic() < deadline, f"churn hangs: {lines.seen}"
            ok, out = bpftrace_cycle(target.pid, CHURN_PROGRAM, rng.uniform(0.15, 0.45))
            cycles += ok
            outputs.append(out)
            time.sleep(rng.uniform(0.05, 0.3))  # detached for a while
        assert target.stdin is not None
        target.stdin.write("stop\n")
        target.stdin.flush()
        churned = int(lines.expect("churned", 120).split()[1])
        target.stdin.write("final\n")
        target.stdin.flush()
        lines.expect("waiting", 60)
        tracer = Tracer(target, FINAL_PROGRAM)
        final = tracer.bt
        done = lines.expect("done", 60)
        rc = target.wait(60)
        fout, ferr = tracer.finish()
    finally:
        stop(target)
        stop(final)
    stderr = target.stderr.read() if target.stderr else ""
    assert rc == 0, stderr
    assert churned >= 500
    main_id, sub_id = (int(x) for x in done.split()[1:])
    assert main_id == 0 and sub_id > 0
    # The watcher still serves the main interpreter and new subinterpreters.
    markers = sorted(int(x) for x in re.findall(r"^marker (\d+)$", fout, re.M))
    assert markers == ([0] if IS_3130 else [0, sub_id]), fout + ferr
    # While churning, the tracers saw events of subinterpreters (none on 3.13.0).
    seen = {int(x) for o in outputs for x in re.findall(r"^@\w+\[(\d+)\]: \d+$", o, re.M)}
    assert 0 in seen, outputs
    if IS_3130:
        assert seen == {0}, outputs
    else:
        churn_markers = [int(x) for o in outputs for x in re.findall(r"^marker (\d+)$", o, re.M)]
        assert any(i > 0 for i in churn_markers) and seen - {0}, outputs


# PY_START first, so the target can exit while the other probes still attach.
SHUTDOWN_PROGRAM = "usdt:PYUSDT:pyusdt:PY_START { @start[arg4] = count(); }\n" + "\n".join(
    f"usdt:PYUSDT:pyusdt:{p} {{ @{p} = count(); }}" for p in ALL[1:]
)


def check_exit(returncode: int, stdout: str, stderr: str) -> int:
    """The script's own status, no fatal error, only subinterpreters registered."""
    assert returncode == 4, f"status {returncode}\n{stdout}\n{stderr}"
    assert "Fatal Python error" not in stderr, stderr
    ids = [int(x) for x in stdout.split("ready", 1)[1].split()[:3]]
    ready = re.findall(r"^pyusdt: ready \(interpreter (\d+)", stderr, re.M)
    assert sorted(int(i) for i in ready) == sorted(ids) and 0 not in ids, stderr
    return ids[0]


def test_exit_status_when_only_subinterpreters_imported_untraced(workdir):
    env = base_env(PYUSDT_VERBOSE="1")
    for _ in range(20):
        p = subprocess.run(
            [sys.executable, str(SCRIPTS / "interp_shutdown.py"), "untraced"],
            capture_output=True,
            text=True,
            env=env,
            cwd=workdir,
            timeout=60,
        )
        check_exit(p.returncode, p.stdout, p.stderr)


@SKIP_3130
def test_exit_status_when_only_subinterpreters_imported_traced(bpftrace, workdir):
    env = base_env(PYUSDT_VERBOSE="1")
    for _ in range(10):
        target = subprocess.Popen(
            [sys.executable, str(SCRIPTS / "interp_shutdown.py"), "traced"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=workdir,
        )
        bt = None
        try:
            lines = Lines(target.stdout)
            lines.expect("ready", 60)
            bt = start_bpftrace(target.pid, SHUTDOWN_PROGRAM)
            target.wait(60)
            bt_out, bt_err = bt.communicate(timeout=30)
        finally:
            stop(target)
            stop(bt)
        stderr = target.stderr.read() if target.stderr else ""
        a_id = check_exit(target.returncode, "\n".join(lines.seen), stderr)
        # The tracer really was attached: it saw A's workload start.
        assert re.search(rf"^@start\[{a_id}\]: [1-9]", bt_out, re.M), bt_out + bt_err


# CPython 3.13.0 only (the gh-126914 workaround); the matrix runs 3.13 >= 3.13.1, where
# this is not collected rather than skipped.
if IS_3130:

    def test_3130_subinterpreters_are_not_entered(bpftrace, workdir):
        env = base_env(PYUSDT_VERBOSE="1")
        target = subprocess.Popen(
            [sys.executable, str(SCRIPTS / "interp_3130.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=workdir,
        )
        bt = None
        try:
            lines = Lines(target.stdout)
            sub_id = int(lines.expect("loaded", 60).split()[1])
            tracer = Tracer(target, COUNT_WL)
            bt = tracer.bt
            target.wait(60)
            bt_out, bt_err = tracer.finish()
        finally:
            stop(target)
            stop(bt)
        stderr = target.stderr.read() if target.stderr else ""
        assert target.returncode == 0, stderr + bt_err
        assert "sub-enabled []" in lines.all(), lines.seen
        assert len(re.findall(r"gh-126914", stderr)) == 1, stderr
        per = parse_counts(bt_out)
        assert list(per) == [0] and sub_id != 0, bt_out
