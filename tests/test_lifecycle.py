"""Owns the attach/detach lifecycle seen from the traced process: no tool id or events
while untraced, exactly the attached probe's events while bpftrace is attached, all
released after it exits, and what pyusdt writes (nothing, or PYUSDT_VERBOSE lines)."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

from conftest import base_env, bt_program
from gated import READY, trace

SCRIPTS = Path(__file__).parent / "scripts"
POLL_MSEC = 50
# "Within two poll intervals", with generous slack for a loaded machine.
ENABLE_WITHIN = 2 * POLL_MSEC / 1000 + 1.0
TIMEOUT = 60


def reader(stream: IO[str]) -> queue.Queue[str | None]:
    """Lines of `stream` as they come; None at EOF."""
    q: queue.Queue[str | None] = queue.Queue()

    def run() -> None:
        for ln in stream:
            q.put(ln)
        q.put(None)

    threading.Thread(target=run, daemon=True).start()
    return q


def next_line(q: queue.Queue[str | None], what: str) -> str:
    try:
        ln = q.get(timeout=TIMEOUT)
    except queue.Empty:
        raise AssertionError(f"no line from {what} within {TIMEOUT} s") from None
    assert ln is not None, f"{what} ended early"
    return ln


def interrupt(proc: subprocess.Popen[str]) -> int:
    """SIGINT bpftrace until it exits; returns its exit status.

    bpftrace 0.17 sometimes loses a SIGINT that arrives just as it re-enters
    epoll_wait (seen here about once in ten runs); another one has always worked.
    """
    for _ in range(TIMEOUT):
        proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            continue
    raise AssertionError("bpftrace ignored SIGINT")


class Target:
    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(SCRIPTS / "lifecycle_target.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=cwd,
        )
        assert self.proc.stdout is not None
        self.out = reader(self.proc.stdout)

    def ask(self, cmd: str) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return json.loads(next_line(self.out, f"target ({cmd})"))

    def finish(self) -> tuple[int, str]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("exit\n")
        self.proc.stdin.flush()
        self.proc.stdin.close()
        assert self.proc.stderr is not None
        err = self.proc.stderr.read()
        return self.proc.wait(timeout=TIMEOUT), err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def assert_untraced(s: dict[str, Any]) -> None:
    st = s["status"]
    assert st["tool_id"] is None
    assert st["enabled"] == []
    assert st["attached"] == []
    assert s["tools"][3] is None
    assert "pyusdt" not in s["tools"]
    assert s["events"] == [0] * 6


def test_attach_enables_only_attached_probe_then_detach_frees(
    bpftrace: str, tmp_path: Path
) -> None:
    env = base_env(PYUSDT_CHECK_MSEC=str(POLL_MSEC), PYUSDT_VERBOSE="1")
    target = Target(env, tmp_path)
    bt = None
    try:
        first = target.ask("snapshot")
        assert first["status"]["poll_msec"] == POLL_MSEC
        assert_untraced(first)

        prog = f'BEGIN {{ printf("{READY}\\n"); }}\n' + bt_program(
            'usdt:PYUSDT:pyusdt:PY_START /str(arg0) == "marker_function"/ '
            '{ printf("marker %s %d\\n", str(arg0), arg4); }'
        )
        bt = subprocess.Popen(
            [bpftrace, "-p", str(target.proc.pid), "-e", prog],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert bt.stdout is not None
        bt_out = reader(bt.stdout)

        on = target.ask("wait_enabled")
        st = on["status"]
        assert st["attached"] == ["PY_START"]
        assert st["enabled"] == ["PY_START"]
        assert "LINE" not in st["enabled"]
        assert st["tool_id"] == 3  # the first free id of our preference
        assert on["tools"][3] == "pyusdt"
        assert on["events"][3] == on["bits"]["PY_START"]  # exactly that event
        assert [e for i, e in enumerate(on["events"]) if i != 3] == [0] * 5
        assert on["delay"] < ENABLE_WITHIN, on["delay"]

        # The probe fires for the target's code while enabled (once the BPF program
        # is in place: bpftrace runs BEGIN after attaching).
        while next_line(bt_out, "bpftrace") != READY + "\n":
            pass
        assert target.ask("ping") == [42, 42, 42]
        seen = []
        try:
            while len(seen) < 3:
                ln = next_line(bt_out, "bpftrace")
                if ln.startswith("marker "):
                    seen.append(ln.split())
        except AssertionError as e:
            bt.kill()
            assert bt.stderr is not None
            raise AssertionError(f"{e}; bpftrace stderr: {bt.stderr.read()}") from None
        assert seen == [["marker", "marker_function", "0"]] * 3

        assert interrupt(bt) == 0

        off = target.ask("wait_disabled")
        assert_untraced(off)
        rc, err = target.finish()
    finally:
        target.kill()
        if bt is not None and bt.poll() is None:
            bt.kill()
            bt.wait()
    assert rc == 0, err
    lines = err.splitlines()
    ready = [i for i, ln in enumerate(lines) if ln.startswith("pyusdt: ready (interpreter 0")]
    enabled = [
        i
        for i, ln in enumerate(lines)
        if ln.startswith("pyusdt: enabled PY_START (interpreter 0, tool id 3)")
    ]
    disabled = [i for i, ln in enumerate(lines) if ln == "pyusdt: disabled (interpreter 0)"]
    # One of each: the disable came from the detach (at exit nothing was left to disable).
    assert len(ready) == len(enabled) == len(disabled) == 1, err
    assert ready[0] < enabled[0] < disabled[0], err
    assert all(ln.startswith("pyusdt: ") for ln in lines), err


OWN_OUTPUT = """\
import sys
import pyusdt

def shout(word):
    return word.upper()

print("out", shout("one"))
print("err", shout("two"), file=sys.stderr)
print("out", pyusdt.status()["poll_msec"])
"""


def quiet_env(**extra: str) -> dict[str, str]:
    env = base_env(**extra)
    env.pop("PYUSDT_VERBOSE", None)
    return env


def test_not_verbose_untraced_output_is_the_programs_own(tmp_path: Path) -> None:
    script = tmp_path / "own_output.py"
    script.write_text(OWN_OUTPUT)
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=quiet_env(),
        cwd=tmp_path,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0
    assert proc.stdout == "out ONE\nout 10\n"
    assert proc.stderr == "err TWO\n"


def test_not_verbose_traced_output_is_the_programs_own(bpftrace: str, tmp_path: Path) -> None:
    script = tmp_path / "own_output.py"
    script.write_text(OWN_OUTPUT)
    t = trace(
        'usdt:PYUSDT:pyusdt:PY_START /str(arg0) == "shout"/ { printf("start %s\\n", str(arg0)); }',
        script,
        ["PY_START"],
        env=quiet_env(),
        cwd=tmp_path,
    )
    assert t.returncode == 0, t.stderr
    assert t.stdout == "out ONE\nout 10\n"
    assert t.stderr == "err TWO\n"
    assert t.lines("start ") == ["start shout"] * 2


def test_verbose_logs_ready_enabled_disabled(bpftrace: str, tmp_path: Path) -> None:
    script = tmp_path / "own_output.py"
    script.write_text(OWN_OUTPUT)
    t = trace(
        'usdt:PYUSDT:pyusdt:PY_START /str(arg0) == "shout"/ { printf("start %s\\n", str(arg0)); }',
        script,
        ["PY_START"],
        env=base_env(PYUSDT_VERBOSE="1"),
        cwd=tmp_path,
    )
    assert t.returncode == 0, t.stderr
    assert t.stdout == "out ONE\nout 10\n"
    lines = t.stderr.splitlines()
    assert "err TWO" in lines
    pyusdt_lines = [ln for ln in lines if ln != "err TWO"]
    assert all(ln.startswith("pyusdt: ") for ln in pyusdt_lines), t.stderr
    # In order: loaded, enabled once the tracer attached, disabled at exit.
    assert [ln.split(" (")[0] for ln in pyusdt_lines] == [
        "pyusdt: ready",
        "pyusdt: enabled PY_START",
        "pyusdt: disabled",
    ], t.stderr
    assert pyusdt_lines[0].startswith("pyusdt: ready (interpreter 0, poll 10 ms"), t.stderr
    assert pyusdt_lines[1].startswith("pyusdt: enabled PY_START (interpreter 0, tool id 3)")
    assert pyusdt_lines[2] == "pyusdt: disabled (interpreter 0)"
    assert t.lines("start ") == ["start shout"] * 2
