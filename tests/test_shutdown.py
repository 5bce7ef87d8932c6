"""Shutdown and signals: a traced process exits exactly like plain python, and never hangs.

Each way of ending a program (normal end, sys.exit in a thread, os._exit, an unhandled
exception, SIGINT, a busy daemon thread at exit) runs once with pyusdt loaded and a real
`bpftrace -p` attached, and once without pyusdt: exit status, stdout and stderr must be
identical, and bpftrace must have seen the program's calls and exited by itself.
Then a program exits while its probes are attached and detached over and over.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from conftest import LIB, attach_bpftrace, base_env, finish, need_bpftrace, readline_raw

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
import rel_uprobe  # noqa: E402

SCRIPT = """\
import atexit, os, sys, threading
if os.environ.get("REL_PYUSDT") == "1":
    import pyusdt
    ok = sys.stdin.readline() == "go\\n" and pyusdt.wait_for_tracer(60, ["PY_START"])
else:
    ok = sys.stdin.readline() == "go\\n"
if not ok:
    os._exit(99)

def work(n):
    return n + 1

for i in range(5):
    work(i)
atexit.register(print, "atexit ran")
print("worked", flush=True)
mode = sys.argv[1]
if mode == "normal":
    print("end")
elif mode == "thread_exit":
    t = threading.Thread(target=sys.exit, args=(3,))
    t.start()
    t.join()
    print("thread joined")
elif mode == "os_exit":
    print("before _exit", flush=True)
    os._exit(5)
elif mode == "exception":
    def fail():
        raise ValueError("boom")
    fail()
elif mode == "sigint":
    print("WAITING", flush=True)
    threading.Event().wait()
elif mode == "daemon_busy":
    started = threading.Event()
    def spin():
        i = 0
        while True:
            work(i)
            i += 1
            if i == 1000:
                started.set()
    threading.Thread(target=spin, daemon=True).start()
    started.wait()
    print("exiting with a busy daemon thread")
"""

COUNT_WORK = 'usdt:PYUSDT:pyusdt:PY_START /str(arg0) == "work"/ { @calls = count(); }'

EXPECTED_STATUS = {
    "normal": 0,
    "thread_exit": 0,  # SystemExit in a thread only ends that thread
    "os_exit": 5,
    "exception": 1,
    "sigint": -signal.SIGINT,  # KeyboardInterrupt: python re-kills itself with SIGINT
    "daemon_busy": 0,
}


FUTEX = {"x86_64": 202, "aarch64": 98}[os.uname().machine]


def wait_blocked(pid: int) -> None:
    """Waits until the main thread of `pid` sleeps in futex() (blocked in Event.wait), so
    that the KeyboardInterrupt is raised at the same place with and without pyusdt."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/syscall") as f:
            if f.read().split()[0] == str(FUTEX):
                return
        time.sleep(0.001)
    raise AssertionError("the target never blocked")


def run(script: Path, mode: str, traced: bool) -> tuple[int, str, str, str]:
    """Runs the scenario; returns (status, stdout, stderr, bpftrace stdout)."""
    env = base_env(REL_PYUSDT="1") if traced else base_env()
    target = subprocess.Popen(
        [sys.executable, str(script), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=script.parent,
    )
    assert target.stdin is not None and target.stdout is not None
    bt = attach_bpftrace(target.pid, COUNT_WORK) if traced else None
    target.stdin.write("go\n")
    target.stdin.flush()
    head = ""
    if mode == "sigint":
        while (line := readline_raw(target.stdout)) and line != "WAITING\n":
            head += line
        head += line
        wait_blocked(target.pid)
        target.send_signal(signal.SIGINT)
    out, err = finish(target, 60)
    bt_out = ""
    if bt is not None:
        bt_out, bt_err = finish(bt, 60)
        assert bt.returncode == 0, bt_err
    return target.returncode, head + out, err, bt_out


@pytest.mark.parametrize("mode", list(EXPECTED_STATUS))
def test_exit_paths_match_plain_python(tmp_path, mode):
    need_bpftrace()
    script = tmp_path / "prog.py"
    script.write_text(SCRIPT)
    plain = run(script, mode, traced=False)
    traced = run(script, mode, traced=True)
    assert plain[0] == EXPECTED_STATUS[mode], plain
    assert traced[:3] == plain[:3]
    calls = re.search(r"^@calls: (\d+)$", traced[3], re.M)
    assert calls is not None, traced[3]
    if mode == "daemon_busy":
        assert int(calls[1]) >= 1005
    else:
        assert int(calls[1]) == 5


# -- exit while the probes are being attached and detached ---------------------------------

TOGGLE_TARGET = """\
import sys, time
import pyusdt

def work(n):
    return n + 1

print("READY", flush=True)
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    work(0)
"""


def toggle_until_exit(target: subprocess.Popen, log: list[str]) -> int:
    """Attaches and detaches one probe after another (via perf uprobes, like bpftrace -p)
    until the target exits, each time waiting for the target's verbose log to report the
    watcher's "enabled" / "disabled". Returns the number of completed cycles."""
    assert target.stderr is not None
    offsets = rel_uprobe.probe_offsets(LIB)
    names = ["PY_START", "PY_RETURN", "CALL", "LINE"]

    def until(prefix: str) -> bool:
        while line := readline_raw(target.stderr):
            log.append(line)
            if line.startswith(prefix):
                return True
        return False  # EOF: the target exited

    if not until("pyusdt: ready"):
        return 0
    cycles = 0
    while True:
        name = names[cycles % len(names)]
        try:
            probe = rel_uprobe.Uprobe(LIB, offsets[name], target.pid)
        except OSError as e:
            if e.errno != errno.ESRCH:  # ESRCH: the target is exiting
                raise
            until("\0")
            return cycles
        with probe:
            alive = until(f"pyusdt: enabled {name} ")
        if not alive or not until("pyusdt: disabled"):
            return cycles
        cycles += 1


@pytest.mark.parametrize("seconds", [0, 0.25, 0.6, 1.3])
def test_exit_while_probes_toggle(tmp_path, seconds):
    why = rel_uprobe.available()
    if why:
        need_bpftrace()  # same requirements (root, uprobes): skip or fail like the others
        pytest.skip(why)
    script = tmp_path / "toggle.py"
    script.write_text(TOGGLE_TARGET)
    target = subprocess.Popen(
        [sys.executable, str(script), str(seconds)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=base_env(PYUSDT_CHECK_MSEC="1", PYUSDT_VERBOSE="1"),
    )
    log: list[str] = []
    result: list[int] = []
    toggler = threading.Thread(target=lambda: result.append(toggle_until_exit(target, log)))
    toggler.start()
    try:
        assert target.stdout is not None
        out = target.stdout.read()
        target.wait(60)
    finally:
        toggler.join(60)
        if toggler.is_alive():
            target.kill()
    assert not toggler.is_alive()
    assert (target.returncode, out) == (0, "READY\n")
    assert log and log[0].startswith("pyusdt: ready"), log
    # Nothing but the watcher's own log lines on stderr: no error, no traceback.
    assert all(re.fullmatch(r"pyusdt: (enabled \S+|disabled) .*\n", ln) for ln in log[1:]), log
    if seconds >= 0.6:
        assert result[0] >= 2
    print(f"{seconds} s: {result[0]} attach/detach cycles, then exit")


def test_exit_while_bpftrace_comes_and_goes(tmp_path):
    need_bpftrace()
    script = tmp_path / "toggle.py"
    script.write_text(
        textwrap.dedent("""\
        import sys, time
        import pyusdt
        def work(n):
            return n + 1
        print("READY", flush=True)
        end = time.monotonic() + 3
        while time.monotonic() < end:
            work(0)
        """)
    )
    target = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=base_env(PYUSDT_CHECK_MSEC="1"),
    )
    assert target.stdout is not None
    assert readline_raw(target.stdout) == "READY\n"
    # Short-lived tracers, one after another, until the target has exited under one.
    program = COUNT_WORK + " interval:ms:50 { exit(); }"
    runs = 0
    while target.poll() is None and runs < 100:
        bt = subprocess.Popen(
            [
                "bpftrace",
                "-p",
                str(target.pid),
                "-e",
                program.replace("usdt:PYUSDT:", f"usdt:{LIB}:"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        finish(bt, 60)
        runs += 1
    out, err = finish(target, 60)
    assert (target.returncode, out, err) == (0, "", "")
    assert runs >= 2
    print(f"{runs} bpftrace runs")
