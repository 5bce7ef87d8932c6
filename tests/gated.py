"""Helper for the probe tests (test_probes, test_values, test_cprofile, test_sample_bt):
run a script with bpftrace attached, gated on bpftrace's BEGIN rather than on the
semaphores alone.

The kernel raises a probe's semaphore while bpftrace is still attaching it, so a
target that only waits for its probes to be enabled can run its first lines before
the BPF program is in place. Here the target imports pyusdt and blocks on stdin;
bpftrace is started once the library is mapped, with a BEGIN that prints a marker
(BEGIN runs only after every probe is attached); then the target is released, waits
until its probes are enabled, and runs the script as __main__.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import BPFTRACE, LIB, Traced, base_env, bt_program, need_bpftrace, readline_raw

READY = "@@pyusdt-gated-ready@@"

# pkgutil: runpy.run_path imports it, which would be traced (and flood a trace of all
# events) if done after the tracer attached.
BOOTSTRAP = """\
import pkgutil, runpy, sys
import pyusdt
sys.stdin.readline()
probes = [p for p in sys.argv[1].split(",") if p]
if not pyusdt.wait_for_tracer(60, probes or None):
    sys.exit("gated bootstrap: probes were not enabled")
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def wait_mapped(proc: subprocess.Popen[str], timeout: float = 60) -> None:
    """Waits until `proc` has mapped the probe library (it imported pyusdt)."""
    name = os.path.realpath(LIB)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"target exited ({proc.returncode}) before loading pyusdt")
        with open(f"/proc/{proc.pid}/maps") as f:
            if name in f.read():
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"target did not load {name} within {timeout} s")
        time.sleep(0.005)


def start_bpftrace(
    pid: int,
    program: str,
    bt_env: dict[str, str] | None = None,
    ready: str | None = None,
) -> tuple[subprocess.Popen[str], str]:
    """`bpftrace -p PID`, returned once its BEGIN ran (all probes attached), with the
    output it printed so far.

    `program` says `usdt:PYUSDT:pyusdt:NAME`; the library path is filled in. bpftrace
    allows one BEGIN: a program with its own passes `ready`, the line its BEGIN prints.
    """
    need_bpftrace()
    assert BPFTRACE is not None
    text = bt_program(program)
    if ready is None:
        ready = READY
        text = f'BEGIN {{ printf("{READY}\\n"); }}\n' + text
    bt = subprocess.Popen(
        [BPFTRACE, "-p", str(pid), "-e", text],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # str() of a pointer past a string's end can read bytes that are not UTF-8.
        errors="surrogateescape",
        env={**os.environ, **(bt_env or {})},
    )
    assert bt.stdout is not None
    early = []
    while (line := readline_raw(bt.stdout)) != ready + "\n":
        if not line:
            err = bt.communicate(timeout=60)[1]
            raise AssertionError(f"bpftrace did not attach to {pid}: {err}")
        early.append(line)
    if ready != READY:
        early.append(line)
    return bt, "".join(early)


def collect(
    target: subprocess.Popen[str], bt: subprocess.Popen[str], timeout: float, early: str = ""
) -> Traced:
    """Waits for the target, then for bpftrace (which exits with it); `early` is what
    bpftrace printed before (from start_bpftrace)."""
    try:
        out, err = target.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        target.kill()
        out, err = target.communicate()
        bt.kill()
        bt_out, bt_err = bt.communicate()
        raise AssertionError(
            f"target timed out\nstdout:{out}\nstderr:{err}\nbpftrace:{bt_out}{bt_err}"
        ) from None
    try:
        bt_out, bt_err = bt.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        bt.kill()
        bt_out, bt_err = bt.communicate()
        raise AssertionError(f"bpftrace did not exit with its target: {bt_err}") from None
    return Traced(early + bt_out, bt_err, bt.returncode, out, err, target.returncode)


def trace(
    program: str,
    script: str | Path,
    probes: list[str],
    *,
    cwd: str | Path,
    args: list[str] | tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    bt_env: dict[str, str] | None = None,
    python: str = sys.executable,
    timeout: float = 120,
    ready: str | None = None,
) -> Traced:
    """Runs `script` as __main__ in a fresh `python`, traced by `program` from its first line.

    The script starts only after bpftrace's BEGIN ran and `probes` are enabled, so not
    even the first events can be missed. A program with
    its own BEGIN passes `ready`, the line that BEGIN prints (see start_bpftrace).
    """
    need_bpftrace()
    target = subprocess.Popen(
        [python, "-c", BOOTSTRAP, ",".join(probes), str(script), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or base_env(),
        cwd=cwd,
    )
    try:
        wait_mapped(target)
        bt, early = start_bpftrace(target.pid, program, bt_env, ready)
    except BaseException:
        target.kill()
        target.communicate()
        raise
    assert target.stdin is not None
    target.stdin.write("go\n")
    target.stdin.close()
    target.stdin = None  # communicate() must not flush a closed stdin
    return collect(target, bt, timeout, early)
