"""Other clients than the host's bpftrace, attached to a real pyusdt process: bpftrace
0.27 and bcc 0.37 (`tplist`, `trace`) from Debian sid in matrix/clients' chroot, and the
host's perf (bookworm's linux-perf 6.1); plus the host's bpftrace 0.17 in the same forms.

Run once, by the `clients` nox session (the tests-* sessions leave this file out): it
builds the chroot when missing (`matrix/clients`). Each test compares exact counts
against the workload's ground truth (tests/scripts/clients_target.py: `alpha` 50 times,
`K.beta` 20 times, the generator `gamma` once, yielding 1, 2, 3) and checks the
strings. Without root, the chroot, perf or tracefs the tests skip, unless
PYUSDT_REQUIRE_BPFTRACE=1 (CI), which turns every skip into a failure.
"""

from __future__ import annotations

import ast
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import BPFTRACE, REQUIRE_BPFTRACE, base_env, finish, wait_mapped

import pyusdt
from pyusdt.trace import attached_probes

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = ROOT / "matrix" / "clients"
TARGET_SRC = Path(__file__).resolve().parent / "scripts" / "clients_target.py"
LIB = os.path.realpath(pyusdt.lib_path())
PERF = shutil.which("perf")
# Per probe: how many arguments its notes describe (the README's probe reference).
ARGC = {name: (5 if name == "LINE" else 6) for name in pyusdt.PROBES}
SITES_PER_PROBE = 2


def _unavailable(need_chroot: bool = True, need_perf: bool = False) -> str | None:
    if os.geteuid() != 0:
        return "tracers need root"
    if not os.path.isdir("/sys/kernel/tracing/events"):
        return "tracefs is not mounted at /sys/kernel/tracing"
    if need_chroot:
        r = subprocess.run([str(CLIENTS), "--path"], capture_output=True, text=True)
        if r.returncode != 0:
            return "the clients chroot is not built: run matrix/clients"
    if need_perf and PERF is None:
        return "perf is not installed (apt-get install linux-perf)"
    return None


def need(reason: str | None) -> None:
    if reason is None:
        return
    if REQUIRE_BPFTRACE:
        pytest.fail(f"PYUSDT_REQUIRE_BPFTRACE=1 but {reason}")
    pytest.skip(reason)


def in_chroot(*cmd: str, binds: tuple[str, ...] = ()) -> list[str]:
    args = [str(CLIENTS), "run"]
    for b in binds:
        args += ["--bind", b]
    return [*args, "--", *cmd]


def host_binds() -> tuple[str, ...]:
    """What the chroot must see for it to run this interpreter and venv itself
    (`bpftrace -c`) or to name the library by its host path (a system-wide attach):
    the venv and the base interpreter, unless they are under /tmp (always bound)."""
    out = []
    for p in {os.path.realpath(sys.prefix), os.path.realpath(sys.base_prefix)}:
        if p != "/tmp" and not p.startswith("/tmp/"):
            out.append(p)
    return tuple(sorted(out))


TRACERS = {
    "bpftrace-0.17": lambda *a, binds=(): [BPFTRACE or "bpftrace", *a],
    "bpftrace-0.27": lambda *a, binds=(): in_chroot("bpftrace", *a, binds=binds),
}


@pytest.fixture(autouse=True)
def _outside_the_tree(tmp_path, monkeypatch):
    """Every child runs in a scratch directory: in the source tree (nox's working
    directory) `python -m pyusdt` would import the unbuilt package found there."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def target_file():
    """The workload, copied to a short path under /tmp (visible in the chroot; short, so
    that bpftrace's 64-byte strings hold it whole)."""
    d = tempfile.mkdtemp(prefix="pyusdt-cl-", dir="/tmp")
    dst = Path(d) / "clients_target.py"
    shutil.copy(TARGET_SRC, dst)
    yield str(dst)
    shutil.rmtree(d, ignore_errors=True)


def first_lines(path: str) -> dict[str, int]:
    """co_firstlineno of every function of the workload, from its source."""
    tree = ast.parse(Path(path).read_text())
    return {
        n.name: n.lineno for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))
    }


# Ground truth, as (function, qualname) -> PY_START count.
WORK_STARTS = {("work", "work"): 1, ("alpha", "alpha"): 50, ("beta", "K.beta"): 20,
               ("gamma", "gamma"): 1}  # fmt: skip
# Traced from the first line of the program on: also the module, the class body, main.
ALL_STARTS = {**WORK_STARTS, ("<module>", "<module>"): 1, ("K", "K"): 1, ("main", "main"): 1}
RESUMES = {"gamma": 3}
YIELDS = {("gamma", "1"): 1, ("gamma", "2"): 1, ("gamma", "3"): 1}


class Target:
    """clients_target.py in a child process, driven over its stdin (see that file)."""

    def __init__(self, script: str, mode: str, *args: str, python: tuple[str, ...] = (),
                 env: dict[str, str] | None = None):  # fmt: skip
        self.script = script
        self.proc = subprocess.Popen(
            [sys.executable, *python, script, mode, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env or base_env(),
        )
        self.pid = self.proc.pid
        self._buf = b""

    def readline(self, timeout: float = 60) -> str:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self.proc.kill()
                raise AssertionError(f"target printed no line in {timeout} s: {self._buf!r}")
            chunk = os.read(fd, 4096)
            if not chunk:
                _, err = self.proc.communicate()
                raise AssertionError(f"target exited ({self.proc.returncode}): {err!r}")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def expect(self, want: str, timeout: float = 60) -> None:
        got = self.readline(timeout)
        assert got == want, f"target said {got!r}, expected {want!r}"

    def send(self, cmd: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd.encode() + b"\n")
        self.proc.stdin.flush()

    def status(self) -> dict:
        self.send("status")
        return json.loads(self.readline())

    def wait_enabled(self, probes: set[str], timeout: float = 60) -> dict:
        """Polls pyusdt.status() in the target until `probes` are enabled."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.status()
            if probes <= set(st["enabled"]):
                return st
            if time.monotonic() > deadline:
                raise AssertionError(f"{sorted(probes)} not enabled in {timeout} s: {st}")
            time.sleep(0.02)

    def close(self) -> int:
        if self.proc.poll() is None:
            try:
                self.send("exit")
            except BrokenPipeError:
                pass
        try:
            self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
        return self.proc.returncode


class Lines:
    """A child's stdout, read line by line into a list by a thread."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._cond:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self.lines.append(None)  # type: ignore[arg-type]  # EOF
            self._cond.notify_all()

    def wait_for(self, pred, timeout: float, what: str, summary=None) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not (ok := pred([ln for ln in self.lines if ln is not None])):
                left = deadline - time.monotonic()
                if left <= 0 or (self.lines and self.lines[-1] is None):
                    break
                self._cond.wait(left)
        if not ok:
            err = self.stop(repeat=False)
            seen = summary(self.text()) if summary else self.lines[-20:]
            raise AssertionError(f"no {what} in {timeout} s: {seen}\n{err}")

    def stop(self, repeat: bool = True, grace: float = 30) -> str:
        """SIGINTs the child, waits for it; returns its stderr. `repeat`: every half
        second (bpftrace 0.17 sometimes misses a SIGINT; bcc must get only one, a second
        one interrupts its cleanup)."""
        deadline = time.monotonic() + grace
        sent = False
        while self.proc.poll() is None and time.monotonic() < deadline:
            if repeat or not sent:
                self.proc.send_signal(signal.SIGINT)
                sent = True
            try:
                self.proc.wait(0.5)
            except subprocess.TimeoutExpired:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._thread.join(10)
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode(errors="replace")

    def text(self) -> list[str]:
        return [ln for ln in self.lines if ln is not None]


def popen(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )


# -- bpftrace ----------------------------------------------------------------------------------

MAP_LINE = re.compile(r"^@(\w+)\[(.*)\]: (\d+)$")


def bt_program(spec: str, file: str, pid_filter: int | None = None) -> str:
    cond = f'str(arg1) == "{file}"' + (f" && pid == {pid_filter}" if pid_filter else "")
    return (
        f"usdt:{spec}:pyusdt:PY_START /{cond}/ {{ @start[str(arg0), str(arg5)] = count(); }}\n"
        f"usdt:{spec}:pyusdt:PY_RESUME /{cond}/ {{ @resume[str(arg0)] = count(); }}\n"
        f"usdt:{spec}:pyusdt:PY_YIELD /{cond}/ {{ @yield[str(arg0), str(arg4)] = count(); }}\n"
    )


def bt_maps(output: str) -> dict[str, dict]:
    maps: dict[str, dict] = {"start": {}, "resume": {}, "yield": {}}
    for line in output.splitlines():
        m = MAP_LINE.match(line)
        if m:
            key = tuple(m[2].split(", "))
            maps[m[1]][key if len(key) > 1 else key[0]] = int(m[3])
    return maps


def assert_counts(maps: dict[str, dict], starts: dict) -> None:
    assert maps["start"] == starts
    assert maps["resume"] == RESUMES
    assert maps["yield"] == YIELDS


SPECS = {
    "proc-root": lambda pid: f"/proc/{pid}/root{LIB}",
    "star": lambda pid: "*",
    "absolute": lambda pid: LIB,
}


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("tracer", TRACERS)
def test_bpftrace_pid(tracer, spec, target_file):
    """`bpftrace -p PID` with each form of the library's name: every probe attached once
    (exact counts, not doubled), the right strings."""
    need(_unavailable(need_chroot=tracer != "bpftrace-0.17"))
    if tracer == "bpftrace-0.17":
        need(None if BPFTRACE else "bpftrace is not installed")
    target = Target(target_file, "stdin")
    try:
        target.expect("ready")
        wait_mapped(target.pid)
        program = 'BEGIN { printf("READY\\n"); }\n' + bt_program(
            SPECS[spec](target.pid), target_file
        )
        bt = popen(TRACERS[tracer]("-p", str(target.pid), "-e", program))
        out = Lines(bt)
        out.wait_for(lambda ls: "READY" in ls, 120, "READY from bpftrace")
        target.wait_enabled({"PY_START", "PY_RESUME", "PY_YIELD"})
        target.send("go")
        target.expect("done")
    finally:
        assert target.close() == 0
    bt.wait(60)  # bpftrace -p exits with the process
    err = out.stop()
    assert bt.returncode == 0, err
    assert_counts(bt_maps("\n".join(out.text())), WORK_STARTS)


def test_bpftrace027_c(target_file):
    """bpftrace 0.27's `-c CMD` with the library's absolute path: the program (run in the
    chroot, the interpreter bound in) is traced from its first line."""
    need(_unavailable())
    cmd = f"{sys.executable} -m pyusdt --wait=30 {target_file} run"
    bt = popen(in_chroot("bpftrace", "-c", cmd, "-e", bt_program(LIB, target_file),
                         binds=host_binds()))  # fmt: skip
    out, err = finish(bt, timeout=180)
    assert bt.returncode == 0, err
    assert "done" in out.decode().splitlines(), err
    assert_counts(bt_maps(out.decode()), ALL_STARTS)


@pytest.mark.parametrize("tracer", TRACERS)
def test_bpftrace_system_wide(tracer, target_file):
    """A system-wide attach (no -p, the library's absolute path): the kernel raises the
    semaphores in every process that maps the library; the program waits for them."""
    need(_unavailable(need_chroot=tracer != "bpftrace-0.17"))
    target = Target(target_file, "tracer", "PY_START,PY_RESUME,PY_YIELD", "120")
    wait_mapped(target.pid)
    bt = popen(TRACERS[tracer]("-e", bt_program(LIB, target_file, target.pid),
                               binds=host_binds()))  # fmt: skip
    out = Lines(bt)
    try:
        target.expect("done", timeout=150)
    finally:
        assert target.close() == 0
    err = out.stop()
    assert bt.returncode == 0, err
    assert_counts(bt_maps("\n".join(out.text())), WORK_STARTS)


def test_pyusdt_trace_bpftrace027(target_file, tmp_path):
    """`pyusdt-trace --bpftrace PATH` with bpftrace 0.27 (a wrapper that runs the chroot's):
    its `usdt:PYUSDT:` and `usdt:*:` specs, rewritten to /proc/PID/root/LIB, count exactly."""
    need(_unavailable())
    wrapper = tmp_path / "bpftrace-0.27"
    wrapper.write_text(f'#!/bin/sh\nexec {CLIENTS} run -- bpftrace "$@"\n')
    wrapper.chmod(0o755)
    program = bt_program("PYUSDT", target_file).replace(
        "usdt:PYUSDT:pyusdt:PY_YIELD", "usdt:*:pyusdt:PY_YIELD"
    )
    r = subprocess.run(
        [sys.executable, "-c", "from pyusdt.trace import main; main()", "--bpftrace",
         str(wrapper), "--as-root", "-e", program, "--", target_file, "run"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "done" in r.stdout.splitlines(), r.stdout
    assert_counts(bt_maps(r.stdout), ALL_STARTS)
    assert "RLIMIT_MEMLOCK" not in r.stderr


def test_pyusdt_trace_attach_bpftrace027(target_file, tmp_path):
    """`pyusdt-trace --bpftrace PATH -p PID` with bpftrace 0.27: attached to a running
    process, exact counts; it exits when the process does."""
    need(_unavailable())
    wrapper = tmp_path / "bpftrace-0.27"
    wrapper.write_text(f'#!/bin/sh\nexec {CLIENTS} run -- bpftrace "$@"\n')
    wrapper.chmod(0o755)
    target = Target(target_file, "stdin")
    try:
        target.expect("ready")
        wait_mapped(target.pid)
        trace = subprocess.Popen(
            [sys.executable, "-c", "from pyusdt.trace import main; main()", "--bpftrace",
             str(wrapper), "-p", str(target.pid), "-e", bt_program("PYUSDT", target_file)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        target.wait_enabled({"PY_START", "PY_RESUME", "PY_YIELD"})
        target.send("go")
        target.expect("done")
    finally:
        assert target.close() == 0
    out, err = finish(trace, timeout=60)
    assert trace.returncode == 0, err
    assert_counts(bt_maps(out), WORK_STARTS)


@pytest.mark.parametrize("tool", ["calls", "flow", "latency"])
def test_tools_bpftrace027(target_file, tmp_path, tool):
    """pyusdt's ready-made tools that keep a per-thread frame stack compile and count
    exactly on bpftrace 0.27 too (its variables are scoped to their block, unlike 0.17's),
    and print none of 0.27's warnings about pyusdt's own programs."""
    need(_unavailable())
    wrapper = tmp_path / "bpftrace-0.27"
    wrapper.write_text(f'#!/bin/sh\nexec {CLIENTS} run -- bpftrace "$@"\n')
    wrapper.chmod(0o755)
    func = ["alpha"] if tool == "latency" else ["--top", "1000"] if tool == "calls" else []
    r = subprocess.run(
        [sys.executable, "-c", "from pyusdt.trace import main; main()", "--bpftrace",
         str(wrapper), "--as-root", "--tool", tool, *func, "--", target_file, "run"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "WARNING" not in r.stderr and "ERROR" not in r.stderr, r.stderr
    out = r.stdout
    if tool == "calls":
        rows = dict(re.findall(r"^(\S+)\s+\S+:\d+\s+(\d+)\s", out, re.M))
        assert rows.get("alpha") == "50" and rows.get("K.beta") == "20", out
    elif tool == "flow":
        assert len(re.findall(r"-> alpha \(", out)) == 50, out
        assert len(re.findall(r"<- alpha \d", out)) == 50, out
        assert len(re.findall(r"-> K\.beta \(", out)) == 20, out
    else:
        assert re.search(r"^@calls: 50$", out, re.M), out


# -- bcc -----------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["-l", "-p"])
def test_tplist(how, target_file):
    """bcc's tplist lists all probes, each with its two sites and its arguments as the
    notes describe them (function, file: 8-byte pointers; first line: 4-byte signed)."""
    need(_unavailable())
    target = Target(target_file, "stdin")
    try:
        target.expect("ready")
        wait_mapped(target.pid)
        # The library by a path the chroot sees wherever it lives (a venv in the tree).
        what = f"/proc/{target.pid}/root{LIB}" if how == "-l" else str(target.pid)
        r = subprocess.run(in_chroot("tplist-bpfcc", "-vv", how, what),
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    finally:
        target.close()
    assert r.returncode == 0, r.stderr
    probes: dict[str, list[list[str]]] = {}
    current = None
    for line in r.stdout.splitlines():
        if m := re.match(r"^(?:\S+ )?pyusdt:(\w+) \[sema 0x[0-9a-f]+\]$", line):
            current = probes.setdefault(m[1], [])
        elif line.startswith("  location #"):
            assert current is not None
            assert LIB in line, line
            current.append([])
        elif m := re.match(r"^    argument #\d+ (.*)$", line):
            assert current
            current[-1].append(m[1].split(" @ ")[0].split())
    assert sorted(probes) == sorted(pyusdt.PROBES), r.stdout
    for name, locations in probes.items():
        assert len(locations) == SITES_PER_PROBE, (name, locations)
        for args in locations:
            assert len(args) == ARGC[name], (name, args)
            assert args[:3] == [["8", "unsigned", "bytes"], ["8", "unsigned", "bytes"],
                                ["4", "signed", "bytes"]], (name, args)  # fmt: skip


def bcc_trace(pid: int, probes: dict[str, str]) -> subprocess.Popen:
    """bcc's `trace -p PID 'u:/proc/PID/root/LIB:PROBE FORMAT'...` (bcc numbers the
    arguments from arg1), stdout unbuffered."""
    lib = f"/proc/{pid}/root{LIB}"
    specs = [f"u:{lib}:{name} {fmt}" for name, fmt in probes.items()]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return popen(in_chroot("trace-bpfcc", "-p", str(pid), *specs), env=env)


BCC_PROBES = {
    "PY_START": '"%s|%s|%s|%d", arg1, arg6, arg2, arg3',
    "PY_RESUME": '"%s|%s", arg1, arg2',
    "PY_YIELD": '"%s|%s|%s", arg1, arg2, arg5',
}
BCC_LINE = re.compile(r"^(\d+)\s+(\d+)\s+(\S+)\s+(\w+)\s+(.*)$")


def bcc_events(lines: list[str], file: str) -> dict[str, dict]:
    """{probe: {key: count}} of the `trace` lines whose file is `file`."""
    lines_of = first_lines(file)
    got: dict[str, dict] = {"PY_START": {}, "PY_RESUME": {}, "PY_YIELD": {}}
    for line in lines:
        m = BCC_LINE.match(line)
        if not m or m[4] not in got:
            continue
        f = m[5].split("|")
        if f[1 if m[4] != "PY_START" else 2] != file:
            continue
        if m[4] == "PY_START":
            assert int(f[3]) == (1 if f[0] == "<module>" else lines_of[f[0]]), line
            key = (f[0], f[1])
        elif m[4] == "PY_RESUME":
            key = f[0]
        else:
            key = (f[0], f[2])
        got[m[4]][key] = got[m[4]].get(key, 0) + 1
    return got


def total(counts: dict) -> int:
    return sum(counts.values())


def wait_bcc_events(out: Lines, file: str, starts: dict) -> dict[str, dict]:
    """Waits until `trace` printed as many events as the ground truth holds, then a moment
    longer (a doubled event would show), stops it; returns its events."""
    want = total(starts) + total(RESUMES) + total(YIELDS)

    def enough(lines):
        return sum(total(c) for c in bcc_events(lines, file).values()) >= want

    out.wait_for(enough, 60, "events from bcc trace", lambda ls: bcc_events(ls, file))
    time.sleep(0.5)
    err = out.stop(repeat=False)
    # trace exits with status 1 after a Ctrl-C (it prints the empty KeyboardInterrupt).
    assert out.proc.returncode == 1 and "Traceback" not in err, err
    return bcc_events(out.text(), file)


def test_bcc_trace(target_file):
    """bcc's `trace -p PID`: exact counts, the right strings and first lines."""
    need(_unavailable())
    target = Target(target_file, "stdin")
    try:
        target.expect("ready")
        wait_mapped(target.pid)
        out = Lines(bcc_trace(target.pid, BCC_PROBES))
        out.wait_for(lambda ls: any(ln.startswith("PID") for ln in ls), 180, "trace header")
        target.wait_enabled(set(BCC_PROBES))
        target.send("go")
        target.expect("done")
        got = wait_bcc_events(out, target_file, WORK_STARTS)
    finally:
        assert target.close() == 0
    assert got == {"PY_START": WORK_STARTS, "PY_RESUME": RESUMES, "PY_YIELD": YIELDS}


@pytest.mark.parametrize("how", ["wait_for_tracer", "python -m pyusdt --wait"])
def test_bcc_early_semaphores(how, target_file):
    """bcc raises the semaphores seconds before its uprobes are in place; a program that
    waits for a tracer (pyusdt.wait_for_tracer, `python -m pyusdt --wait`) must not start
    before events are received: the first event is not lost."""
    need(_unavailable())
    if how == "wait_for_tracer":
        target = Target(target_file, "tracer", ",".join(BCC_PROBES), "180")
        starts = WORK_STARTS
    else:
        wait = ("-m", "pyusdt", "--wait=180", f"--probes={','.join(BCC_PROBES)}")
        target = Target(target_file, "run", python=wait)
        starts = ALL_STARTS
    try:
        wait_mapped(target.pid)
        out = Lines(bcc_trace(target.pid, BCC_PROBES))
        target.expect("done", timeout=200)
        got = wait_bcc_events(out, target_file, starts)
    finally:
        assert target.close() == 0
    assert got == {"PY_START": starts, "PY_RESUME": RESUMES, "PY_YIELD": YIELDS}


@pytest.mark.parametrize("tracer", ["bcc-trace", *TRACERS])
def test_sigkill_disables(tracer, target_file):
    """A tracer killed with SIGKILL mid-trace: pyusdt disables the probes within two
    poll intervals (2 x status()["poll_msec"]), as their sites are no longer patched.
    bcc's `trace` leaves the semaphores raised (it lowers them itself when it exits
    normally); bpftrace's are the kernel's, which lowers them with the uprobes."""
    need(_unavailable(need_chroot=tracer != "bpftrace-0.17"))
    target = Target(target_file, "stdin", env=base_env(PYUSDT_CHECK_MSEC="100"))
    try:
        target.expect("ready")
        wait_mapped(target.pid)
        if tracer == "bcc-trace":
            out = Lines(bcc_trace(target.pid, {"PY_START": '"%s", arg1'}))
            ready = "trace header"
            out.wait_for(lambda ls: any(ln.startswith("PID") for ln in ls), 180, ready)
        else:
            spec = f"/proc/{target.pid}/root{LIB}"
            program = (
                'BEGIN { printf("READY\\n"); }\n'
                f'usdt:{spec}:pyusdt:PY_START {{ printf("%s\\n", str(arg0)); }}'
            )
            out = Lines(popen(TRACERS[tracer]("-p", str(target.pid), "-e", program)))
            out.wait_for(lambda ls: "READY" in ls, 120, "READY from bpftrace")
        target.wait_enabled({"PY_START"})
        target.send("go")
        target.expect("done")
        out.wait_for(lambda ls: any("alpha" in ln for ln in ls), 30, "an alpha event")
        out.proc.kill()
        out.proc.wait()
        killed = time.monotonic()
        interval = target.status()["poll_msec"] / 1000
        raised = attached_probes(target.pid)  # the semaphores, from the process's memory
        assert raised is not None
        if tracer == "bcc-trace":
            assert raised.get("PY_START", 0) > 0, raised
        while True:
            st = target.status()
            if not st["enabled"]:
                break
            assert time.monotonic() - killed < 10, st
            time.sleep(0.005)
        took = time.monotonic() - killed
        assert took <= 2 * interval, f"disabled after {took:.3f} s, poll interval {interval} s"
        assert st["listening"] == [] and st["patched"] == [], st
    finally:
        assert target.close() == 0
    out.stop(repeat=False)


# -- perf --------------------------------------------------------------------------------------


def note_sites(lib: str) -> dict[str, list[tuple[int, int]]]:
    """{probe: [(site file offset, semaphore file offset)]} from the library's notes and
    program headers, as readelf prints them (the ground truth for where perf probes)."""
    loads = []
    for line in subprocess.run(["readelf", "-lW", lib], capture_output=True, text=True,
                               check=True).stdout.splitlines():  # fmt: skip
        f = line.split()
        if f and f[0] == "LOAD":
            off, vaddr, filesz = int(f[1], 16), int(f[2], 16), int(f[4], 16)
            loads.append((vaddr, vaddr + int(f[5], 16), off, filesz))

    def file_offset(vaddr: int) -> int:
        for start, end, off, _ in loads:
            if start <= vaddr < end:
                return vaddr - start + off
        raise AssertionError(f"{vaddr:#x} in no PT_LOAD of {lib}")

    sites: dict[str, list[tuple[int, int]]] = {}
    name = None
    for line in subprocess.run(["readelf", "-nW", lib], capture_output=True, text=True,
                               check=True).stdout.splitlines():  # fmt: skip
        if m := re.match(r"^\s+Name: (\w+)$", line):
            name = m[1]
        elif m := re.match(r"^\s+Location: (0x[0-9a-f]+), Base: (0x[0-9a-f]+), "
                           r"Semaphore: (0x[0-9a-f]+)$", line):  # fmt: skip
            assert name is not None
            sites.setdefault(name, []).append(
                (file_offset(int(m[1], 16)), file_offset(int(m[3], 16)))
            )
    return sites


def read_cstring(pid: int, addr: int) -> str:
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        mem.seek(addr)
        return mem.read(256).split(b"\0", 1)[0].decode()


@pytest.fixture
def perf_event(tmp_path):
    """`perf probe sdt_pyusdt:PY_START` on this library (after `perf buildid-cache --add`,
    in a build-id cache of the test's own, so other libraries' notes stay out of it);
    yields the event's name, deletes it afterwards. `-f`: the event is named
    PY_START_1 and so on if another PY_START exists (another checkout, say); perf pads the
    names it lists, so one or more spaces follow."""
    need(_unavailable(need_chroot=False, need_perf=True))
    assert PERF is not None
    perf = [PERF, "--buildid-dir", str(tmp_path / "buildid")]
    r = subprocess.run([*perf, "buildid-cache", "--add", LIB], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([*perf, "probe", "-f", "sdt_pyusdt:PY_START"], capture_output=True,
                       text=True)  # fmt: skip
    events = set(re.findall(r"^\s+(sdt_pyusdt:PY_START\w*)\s+\(on ", r.stderr + r.stdout, re.M))
    try:
        assert r.returncode == 0 and len(events) == 1, r.stderr
        yield next(iter(events))
    finally:
        for event in events:
            subprocess.run([PERF, "probe", "-q", "-d", event], capture_output=True)


def test_perf_probe_sites(perf_event):
    """perf places the uprobes on exactly the notes' sites (file offsets), with the
    semaphore's offset for the kernel to raise, and `perf probe -l` shows them at the
    start of the site functions (not inside other code)."""
    group, event = perf_event.split(":")
    with open("/sys/kernel/tracing/uprobe_events") as f:
        mine = [ln.split() for ln in f if ln.startswith(f"p:{group}/{event} ")]
    placed = set()
    for fields in mine:
        m = re.match(r"^(.*):0x([0-9a-f]+)\(0x([0-9a-f]+)\)$", fields[1])
        assert m and m[1] == LIB, fields
        placed.add((int(m[2], 16), int(m[3], 16)))
    assert placed == set(note_sites(LIB)["PY_START"])
    r = subprocess.run([PERF, "probe", "-l", perf_event], capture_output=True, text=True)
    shown = [ln for ln in r.stdout.splitlines() if ln.strip().startswith(perf_event + " ")]
    assert len(shown) == SITES_PER_PROBE, r.stdout + r.stderr
    for line in shown:
        where = re.search(r"\(on (\S+) in ", line)
        assert where and "py_start" in where[1] and "+" not in where[1], line


def perf_events(perf_event: str, data: Path) -> list[dict[str, int]]:
    """The arguments of each `perf_event` event in `data` (`perf script`)."""
    r = subprocess.run([PERF, "script", "-i", str(data)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return [
        {k: int(v) for k, v in re.findall(r"(arg\d)=(-?\d+)", line)}
        for line in r.stdout.splitlines()
        if f" {perf_event}: " in line
    ]


def test_perf_record_pid(perf_event, target_file, tmp_path):
    """`perf record -e sdt_pyusdt:PY_START -p PID`: perf hands the kernel the semaphore's
    offset, so the semaphore rises and pyusdt enables the probe; `perf script` shows each
    event once, its pointer arguments naming the right strings in the process.

    perf opens (and so attaches) its events before it enables them, after it has read the
    process's mappings: events in between are not recorded. So it starts disabled
    (`-D -1`) and the workload runs once `enable` on its control fifo is acknowledged."""
    data = tmp_path / "perf.data"
    ctl, ack = tmp_path / "ctl", tmp_path / "ack"
    os.mkfifo(ctl)
    os.mkfifo(ack)
    target = Target(target_file, "stdin")
    try:
        target.expect("ready")
        wait_mapped(target.pid)
        rec = subprocess.Popen(
            [PERF, "record", "-q", "-D", "-1", "--control", f"fifo:{ctl},{ack}",
             "-e", perf_event, "-o", str(data), "-p", str(target.pid)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        target.wait_enabled({"PY_START"})
        with open(ctl, "w") as c, open(ack) as a:
            c.write("enable\n")
            c.flush()
            assert a.readline() == "ack\n"
        target.send("go")
        target.expect("done")
        rec.send_signal(signal.SIGINT)
        _, err = finish(rec, timeout=60)
        # perf record ends by re-raising the SIGINT it handled.
        assert rec.returncode in (0, -signal.SIGINT), err
        lines_of = first_lines(target_file)
        counts: dict[tuple[str, str], int] = {}
        for args in perf_events(perf_event, data):
            name = read_cstring(target.pid, args["arg1"])
            if read_cstring(target.pid, args["arg2"]) != target_file:
                continue
            assert args["arg3"] == lines_of[name], (name, args)
            key = (name, read_cstring(target.pid, args["arg6"]))
            counts[key] = counts.get(key, 0) + 1
    finally:
        assert target.close() == 0
    assert counts == WORK_STARTS


def test_perf_record_command(perf_event, target_file, tmp_path):
    """`perf record -e sdt_pyusdt:PY_START -- python -m pyusdt --wait ... SCRIPT`: perf
    enables its events before the program runs, the kernel raises the semaphore as the
    library is mapped, so the program is traced exactly from its first line.

    The program has exited when perf's data is complete, so its strings cannot be read
    back; its events are told apart by their file argument (one pointer per file): one
    file's first lines must count exactly as the workload's functions ran."""
    data = tmp_path / "perf.data"
    rec = subprocess.run(
        [PERF, "record", "-q", "-e", perf_event, "-o", str(data), "--", sys.executable,
         "-m", "pyusdt", "--wait=60", "--probes=PY_START", target_file, "run"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
        env=base_env(),
    )  # fmt: skip
    assert rec.returncode == 0 and rec.stdout == "done\n", rec.stderr
    lines_of = first_lines(target_file)
    want: dict[int, int] = {}
    for (name, _), n in ALL_STARTS.items():
        line = 1 if name == "<module>" else lines_of[name]
        want[line] = want.get(line, 0) + n
    by_file: dict[int, dict[int, int]] = {}
    for args in perf_events(perf_event, data):
        lines = by_file.setdefault(args["arg2"], {})
        lines[args["arg3"]] = lines.get(args["arg3"], 0) + 1
    assert want in by_file.values(), (want, [c for c in by_file.values() if 1 in c])
