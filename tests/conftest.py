"""Shared test fixtures: running a target Python process under a real bpftrace.

`run_traced` starts the target through a bootstrap that waits until the named
probes are enabled in the target (so no event is missed), attaches
`bpftrace -p`, and returns bpftrace's output with the target's result.
Tests that need root and bpftrace skip without them, unless
PYUSDT_REQUIRE_BPFTRACE=1 (set by .ci/run), which turns the skip into a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import pyusdt

REQUIRE_BPFTRACE = os.environ.get("PYUSDT_REQUIRE_BPFTRACE") == "1"

# Tests that only mean something on the free-threaded build are not collected on
# the others (rather than skipped): the 3.13t nox session runs them.
collect_ignore = [] if sysconfig.get_config_var("Py_GIL_DISABLED") else ["test_freethreaded.py"]
BPFTRACE = shutil.which("bpftrace")
LIB = pyusdt.lib_path()

# Runs in the target: wait for the probes, then run the script as __main__.
BOOTSTRAP = """\
import runpy, sys
import pyusdt
probes = [p for p in sys.argv[1].split(",") if p]
if not pyusdt.wait_for_tracer(60, probes or None):
    sys.exit("bootstrap: tracer did not attach")
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


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


def run_traced(
    program: str,
    script: str | Path,
    probes: list[str],
    args: list[str] | tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    timeout: float = 120,
    python: str = sys.executable,
    cwd: str | Path | None = None,
    bt_env: dict[str, str] | None = None,
) -> Traced:
    """Runs `script` in a fresh `python` with bpftrace attached from its first line.

    `program` is a bpftrace program whose probes say `usdt:PYUSDT:pyusdt:NAME`;
    `probes` are the probe names the target waits for before running `script`.
    `bt_env` adds variables to bpftrace's environment (e.g. BPFTRACE_STRLEN).
    """
    need_bpftrace()
    assert BPFTRACE is not None
    target = subprocess.Popen(
        [python, "-c", BOOTSTRAP, ",".join(probes), str(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or base_env(),
        cwd=cwd,
    )
    bt = subprocess.Popen(
        [BPFTRACE, "-p", str(target.pid), "-e", bt_program(program)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(bt_env or {})},
    )
    try:
        out, err = target.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        target.kill()
        bt.send_signal(signal.SIGINT)
        out, err = target.communicate()
        bt_out, bt_err = bt.communicate(timeout=30)
        raise AssertionError(
            f"target timed out\nstdout:{out}\nstderr:{err}\nbpftrace:{bt_out}{bt_err}"
        ) from None
    try:
        bt_out, bt_err = bt.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        bt.send_signal(signal.SIGINT)
        bt_out, bt_err = bt.communicate(timeout=30)
    return Traced(bt_out, bt_err, bt.returncode, out, err, target.returncode)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


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
    while (line := bt.stdout.readline()) != "READY\n":
        if not line:
            _, err = finish(bt)
            raise AssertionError(f"bpftrace did not attach to {pid}: {err}")
    return bt
