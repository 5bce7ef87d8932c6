"""Free-threaded build (3.13t+) only, collected there alone (conftest.collect_ignore):
200+ forks, os.fork and libc's fork() alternating, while a real bpftrace attaches to and
detaches from the parent over and over (issue 9). No fork may hang, every child exits 0
through a normal interpreter exit (atexit hooks, a stop-the-world collection), and the
parent is still traced exactly afterwards.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import sysconfig
import textwrap
import time
from pathlib import Path

import pytest
from conftest import attach_bpftrace, base_env, finish, go
from test_subinterpreters import Lines, bpftrace_cycle

pytestmark = pytest.mark.skipif(
    not sysconfig.get_config_var("Py_GIL_DISABLED"),
    reason="free-threaded build only (Py_GIL_DISABLED): runs in the 3.13t session",
)

FORKS = 200
ALL = ["PY_START", "PY_RESUME", "PY_RETURN", "PY_YIELD", "CALL", "LINE"]
# Any event of the six probes, counted per probe.
CYCLE_PROGRAM = "\n".join(f"usdt:PYUSDT:pyusdt:{p} {{ @{p} = count(); }}" for p in ALL)
FINAL_PROGRAM = (
    'usdt:PYUSDT:pyusdt:PY_START /str(arg0) == "wl_final"/ { printf("%d %s\\n", pid, str(arg0)); }'
)

SCRIPT = """\
import ctypes, gc, os, select, sys
import pyusdt
libc = ctypes.CDLL(None, use_errno=True)
target = int(sys.argv[1])

def wl_parent(n):
    return sum(range(n))

def wl_child(n):
    return [str(i) for i in range(n)]

def wl_final():
    return 0

def gen(n):
    yield from range(n)

def child():
    wl_child(50)
    list(gen(5))
    gc.collect()  # stops the world: hangs if a dead thread's state stayed attached
    sys.exit(0)   # a normal interpreter exit: atexit hooks run

def stopped():
    # "stop" on stdin (no reader thread: the parent stays single-threaded).
    return bool(select.select([0], [], [], 0)[0]) and os.read(0, 5) == b"stop\\n"

print("ready", os.getpid(), flush=True)
codes = []
stop = False
while len(codes) < target or not stop:
    how = "os" if len(codes) % 2 == 0 else "c"
    pid = os.fork() if how == "os" else libc.fork()
    if pid == 0:
        child()
    _, status = os.waitpid(pid, 0)
    codes.append((how, os.waitstatus_to_exitcode(status)))
    if codes[-1][1] != 0:
        break  # the first failure is reported at once
    wl_parent(100)
    list(gen(3))
    if len(codes) == target:
        print("reached", target, flush=True)
    if len(codes) >= target:
        stop = stop or stopped()
print("forks", len(codes), flush=True)
print("bad", [c for c in codes if c[1] != 0], flush=True)
print("FINAL", flush=True)
if not (
    any(line == "go\\n" for line in sys.stdin) and pyusdt.wait_for_tracer(60, ["PY_START"])
):
    sys.exit("not traced at the end")
for _ in range(7):
    wl_final()
"""


def test_forks_while_tracer_toggles(tmp_path: Path) -> None:
    rng = random.Random(9)
    script = tmp_path / "forks.py"
    script.write_text(textwrap.dedent(SCRIPT))
    target = subprocess.Popen(
        # The 3.13+ multi-threaded fork warning is test_fork.py's subject, not this one's.
        [sys.executable, "-W", "ignore::DeprecationWarning", str(script), str(FORKS)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=base_env(),
        cwd=tmp_path,
        start_new_session=True,
    )
    bt = None
    try:
        lines = Lines(target.stdout)
        pid = int(lines.expect("ready", 60).split()[1])
        cycles = 0
        deadline = time.monotonic() + 150  # a hang fails here, not in CI's timeout
        while not (lines.has(f"reached {FORKS}") and cycles >= 4 or lines.has("forks")):
            assert target.poll() is None, f"target exited: {lines.seen[-20:]}"
            assert time.monotonic() < deadline, f"forks hang: {lines.seen[-20:]}"
            ok, _ = bpftrace_cycle(pid, CYCLE_PROGRAM, rng.uniform(0.1, 0.4))
            cycles += ok
            time.sleep(rng.uniform(0.02, 0.2))  # detached for a while
        assert target.stdin is not None
        target.stdin.write("stop\n")
        target.stdin.flush()
        n = int(lines.expect("forks", 120).split()[1])
        bad = lines.expect("bad", 30)
        lines.expect("FINAL", 30)
        bt = attach_bpftrace(pid, FINAL_PROGRAM)
        go(target)
        target.wait(60)
        bt_out, bt_err = finish(bt, timeout=60)
    finally:
        try:
            os.killpg(target.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        target.wait()
        if bt is not None and bt.poll() is None:
            bt.kill()
            bt.communicate()
    err = target.stderr.read() if target.stderr else ""
    assert bad == "bad []", (bad, err[-3000:])  # every child, os.fork'ed or C-forked, exited 0
    assert target.returncode == 0, err
    assert "panicked" not in err and "threads should not terminate" not in err, err
    assert n >= FORKS
    found = [(int(p), f) for p, f in re.findall(r"^(\d+) (\w+)$", bt_out, re.M)]
    assert found == [(pid, "wl_final")] * 7, bt_err
