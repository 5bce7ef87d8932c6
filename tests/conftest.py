"""Shared test fixtures: bpftrace availability, programs, and attaching a real bpftrace.

Tests that need root and bpftrace skip without them, unless PYUSDT_REQUIRE_BPFTRACE=1
(set by .ci/run), which turns the skip into a failure. `attach_bpftrace` attaches to a
running process; tests/gated.py runs a script with bpftrace attached from its first line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import pyusdt

REQUIRE_BPFTRACE = os.environ.get("PYUSDT_REQUIRE_BPFTRACE") == "1"
# bpftrace >= 0.19 appends ".." to a str() it cut at its length limit; the tests expect
# cut strings as bpftrace 0.17 prints them (no trailer), which this gives on both (every
# bpftrace the tests start inherits it; the arm64 guest runs bpftrace 0.23).
os.environ.setdefault("BPFTRACE_STR_TRUNC_TRAILER", "")

# Tests that only mean something on the free-threaded build are not collected on
# the others (rather than skipped): the 3.13t nox session runs them.
FREE_THREADED_ONLY = ["test_freethreaded.py", "test_freethreaded_fork.py"]
collect_ignore = [] if sysconfig.get_config_var("Py_GIL_DISABLED") else FREE_THREADED_ONLY
# CPython's own USDT markers exist only in builds made --with-dtrace (sysconfig WITH_DTRACE):
# test_native_markers.py is collected there, and wherever PYUSDT_EXPECT_NATIVE_MARKERS=1
# (set by the tests-3.15 nox session) says the interpreter must have them, so that a build
# without them fails rather than skips.
EXPECT_NATIVE_MARKERS = os.environ.get("PYUSDT_EXPECT_NATIVE_MARKERS") == "1"
if not (EXPECT_NATIVE_MARKERS or sysconfig.get_config_var("WITH_DTRACE")):
    collect_ignore.append("test_native_markers.py")
# Likewise test_jit.py: collected on builds made --enable-experimental-jit=yes(-off), and
# where PYUSDT_EXPECT_JIT=1 (set by the opt-in tests-3.15-jit nox session).
JIT_BUILD = "--enable-experimental-jit=yes" in (sysconfig.get_config_var("CONFIG_ARGS") or "")
if not (os.environ.get("PYUSDT_EXPECT_JIT") == "1" or JIT_BUILD):
    collect_ignore.append("test_jit.py")
BPFTRACE = shutil.which("bpftrace")
LIB = pyusdt.lib_path()


def bpftrace_unavailable() -> str | None:
    """Why bpftrace tests cannot run here, or None if they can."""
    if BPFTRACE is None:
        return "bpftrace is not installed"
    if os.geteuid() != 0:
        return "bpftrace needs root"
    if not os.path.isdir("/sys/kernel/tracing/events") and not os.path.isdir(
        "/sys/kernel/debug/tracing/events"
    ):
        return "tracefs is not mounted (mount -t tracefs nodev /sys/kernel/tracing)"
    return None


def need_bpftrace() -> None:
    """Skip (or fail, under PYUSDT_REQUIRE_BPFTRACE=1) when bpftrace cannot run."""
    reason = bpftrace_unavailable()
    if reason is None:
        return
    if REQUIRE_BPFTRACE:
        pytest.fail(f"PYUSDT_REQUIRE_BPFTRACE=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture
def bpftrace() -> str:
    need_bpftrace()
    assert BPFTRACE is not None
    return BPFTRACE


def bt_program(program: str, lib: str = LIB) -> str:
    """Fills the library path into `usdt:PYUSDT:pyusdt:...` probe specs."""
    return program.replace("usdt:PYUSDT:", f"usdt:{lib}:")


@dataclass
class Traced:
    output: str  # bpftrace's stdout
    bt_stderr: str
    bt_returncode: int
    stdout: str  # the target's
    stderr: str
    returncode: int

    def lines(self, prefix: str = "") -> list[str]:
        return [ln for ln in self.output.splitlines() if ln.startswith(prefix)]


def base_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYUSDT_CHECK_MSEC", "10")
    env.update(extra)
    return env


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


def spawn(
    script: Path,
    *args: str,
    python_flags: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> subprocess.Popen:
    """`python [flags] script args` with piped stdio (text), run in the script's folder."""
    return subprocess.Popen(
        [sys.executable, *python_flags, str(script), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or base_env(),
        cwd=script.parent,
    )


def go(target: subprocess.Popen) -> None:
    """Releases a target that waits for "go" on its stdin."""
    assert target.stdin is not None
    target.stdin.write("go\n")
    target.stdin.flush()


def finish(proc: subprocess.Popen, timeout: float = 90) -> tuple[str, str]:
    """communicate(); on timeout kill `proc` and fail with what it printed."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"{proc.args[:3]} hung\nstdout:{out}\nstderr:{err}") from None


def wait_mapped(pid: int, lib: str = LIB, timeout: float = 30) -> None:
    """Waits until process `pid` has mapped `lib` (i.e. imported pyusdt)."""
    deadline = time.monotonic() + timeout
    name = os.path.realpath(lib)
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/maps") as f:
            if name in f.read():
                return
        time.sleep(0.002)
    raise AssertionError(f"process {pid} did not load {name} within {timeout} s")


def readline_raw(stream) -> str:
    """One line from a child's pipe, read a byte at a time from its fd.

    `stream.readline()` would read ahead into Python's buffer, and a later
    `communicate()` reads the raw fd: whatever followed the line would be lost.
    """
    fd = stream.fileno()
    buf = bytearray()
    while not buf.endswith(b"\n"):
        b = os.read(fd, 1)
        if not b:
            break
        buf += b
    return buf.decode("utf-8", "surrogateescape")


def attach_bpftrace(pid: int, program: str) -> subprocess.Popen:
    """`bpftrace -p PID -e PROGRAM`, returned once all its probes are attached.

    The kernel raises a probe's semaphore while bpftrace is still attaching, so a target's
    `wait_for_tracer` can return before the BPF program is in place (and a target that then
    exits at once makes the attach fail with ESRCH). bpftrace runs BEGIN only after
    attaching everything, so its READY line is the real "attached". bpftrace exits by
    itself when PID exits; collect its output with `finish()`. It is started only once PID
    has mapped the library (else bpftrace fails with "couldn't get argument 0").
    """
    need_bpftrace()
    assert BPFTRACE is not None
    wait_mapped(pid)
    bt = subprocess.Popen(
        [BPFTRACE, "-p", str(pid), "-e", 'BEGIN { printf("READY\\n"); }' + bt_program(program)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert bt.stdout is not None
    while (line := readline_raw(bt.stdout)) != "READY\n":
        if not line:
            _, err = finish(bt)
            raise AssertionError(f"bpftrace did not attach to {pid}: {err}")
    return bt
