"""Only pay while someone listens: a probe is enabled only while its semaphore is raised
AND the site that fires is patched by a tracer (issue 11, item 4).

- semaphores raised by hand, no uprobe: nothing is enabled, for many poll intervals
  (and with PYUSDT_TRUST_SEMAPHORES=1 the same semaphores do enable: the knob);
- a bcc-like tracer (tests/scripts/bcc_like.py: raises the semaphores itself, seconds
  before placing its uprobes): `wait_for_tracer` and `python -m pyusdt --wait` return
  only after the uprobes are placed, and every event after that is received (exact
  per-thread uprobe hit counts); SIGKILLed, it leaves the semaphores raised and the
  kernel removes its uprobes: pyusdt disables within two poll intervals;
- a real bpftrace -p, SIGKILLed mid-trace: pyusdt disables within two poll intervals;
- semaphores left raised by a dead tracer do not stall wait_for_tracer for a live one.

Times are CLOCK_MONOTONIC, shared by the test and its target; the target records when
its enabled set changes from a sampler thread (tests/scripts/listen_target.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import LIB, attach_bpftrace, base_env, need_bpftrace, readline_raw

import pyusdt

SCRIPTS = Path(__file__).parent / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

import rel_uprobe  # noqa: E402
from interp_sema import Semaphores  # noqa: E402

POLL_MSEC = 200
ALL = list(pyusdt.PROBES)
BCC_PROBES = ["PY_START", "PY_RETURN", "CALL"]


def need_uprobes() -> None:
    why = rel_uprobe.available()
    if why is not None:
        if os.environ.get("PYUSDT_REQUIRE_BPFTRACE") == "1":
            pytest.fail(f"PYUSDT_REQUIRE_BPFTRACE=1 but {why}")
        pytest.skip(why)


class Proc:
    """A child process spoken to by lines on stdin / stdout."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, cwd=None) -> None:
        self.p = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=cwd,
        )

    def send(self, line: str) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()

    def expect(self, word: str) -> str:
        """The rest of the next stdout line that starts with `word`."""
        assert self.p.stdout is not None
        while True:
            line = readline_raw(self.p.stdout)
            if not line:
                self.p.wait(10)
                err = self.p.stderr.read() if self.p.stderr else ""
                raise AssertionError(f"{self.p.args[:3]} exited {self.p.returncode}: {err}")
            if line.split(" ", 1)[0].strip() == word:
                return line[len(word) :].strip()

    def ask(self, cmd: str, word: str | None = None) -> str:
        self.send(cmd)
        return self.expect(word or cmd.split()[0])

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.communicate()


class Target(Proc):
    def __init__(self, tmp_path: Path, **env: str) -> None:
        super().__init__(
            [sys.executable, str(SCRIPTS / "listen_target.py")],
            env=base_env(PYUSDT_CHECK_MSEC=str(POLL_MSEC), **env),
            cwd=tmp_path,
        )
        self.expect("ready")

    def status(self) -> dict:
        return json.loads(self.ask("status"))

    def changes(self) -> list[tuple[int, list[str], int | None]]:
        return [tuple(c) for c in json.loads(self.ask("changes"))]

    def wait_enabled(self, want: list[str], timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while (st := self.status())["enabled"] != want:
            assert time.monotonic() < deadline, st
            time.sleep(0.02)
        return st


def assert_off_in_time(changes: list, t_kill: int, t_dead: int) -> None:
    """The enabled set became empty (tool id freed) after the tracer was killed, stayed
    so, and did within two poll intervals of the tracer being gone (reaped)."""
    assert changes and changes[-1][1:] == ([], None), changes
    off = changes[-1][0]
    assert off > t_kill, (changes, t_kill)
    ms = (off - t_dead) / 1e6
    assert ms <= 2 * POLL_MSEC, f"disabled {ms:.0f} ms after the tracer was reaped ({changes})"


def assert_untraced(st: dict) -> None:
    assert st["enabled"] == [] and st["listening"] == [], st
    assert st["tool_id"] is None and st["free_ids"] == [0, 1, 2, 3, 4, 5], st


def test_raised_semaphores_without_uprobes_enable_nothing(tmp_path):
    need_uprobes()  # root, to write the semaphores through /proc/PID/mem
    for trust in ("", "1"):
        target = Target(tmp_path, PYUSDT_TRUST_SEMAPHORES=trust)
        try:
            sems = Semaphores(target.p.pid, LIB)
            try:
                for p in ALL:
                    sems.add(p, 1)
                t_raised = time.monotonic_ns()
                time.sleep(10 * POLL_MSEC / 1000)  # twenty looks of the watcher
                st = target.status()
                changes = target.changes()
                assert st["attached"] == ALL and st["patched"] == [], st
                if not trust:
                    assert st["trust_semaphores"] is False
                    assert_untraced(st)
                    # Never enabled, not even for a moment: the only change recorded is
                    # the sampler's first look.
                    assert [c[1:] for c in changes] == [([], None)], changes
                else:
                    # The knob: the semaphores alone enable, as before the patched-site
                    # condition (so the assertions above can fail).
                    assert st["trust_semaphores"] is True
                    assert st["listening"] == st["enabled"] == ALL, st
                    assert st["tool_id"] == 3, st
                    assert changes[-1][1] == ALL and changes[-1][0] > t_raised, changes
                for p in ALL:
                    sems.add(p, -1)
                assert target.status()["attached"] == []
            finally:
                sems.close()
        finally:
            target.kill()


def bcc_like(pid: int, probes: list[str], early: float) -> Proc:
    bcc = Proc(
        [sys.executable, str(SCRIPTS / "bcc_like.py"), str(pid), LIB, ",".join(probes)]
        + ["--early", str(early)]
    )
    return bcc


def counts(bcc: Proc) -> dict[str, int]:
    text = bcc.ask("count")
    return {k: int(v) for k, v in (kv.split("=") for kv in text.split(","))}


def test_bcc_like_early_semaphores_wait_then_sigkill_disables(tmp_path):
    need_uprobes()
    target = Target(tmp_path)
    bcc = None
    try:
        bcc = bcc_like(target.p.pid, BCC_PROBES, early=5 * POLL_MSEC / 1000)
        target.send("wait 60")
        t_raised = int(bcc.expect("raised"))
        t_attached = int(bcc.expect("attached"))
        ok, t_waited = target.expect("waited").split()
        assert ok == "True"
        # Released only once the uprobes were being placed, not when the semaphores rose.
        assert int(t_waited) > t_attached > t_raised + 4 * POLL_MSEC * 1_000_000
        st = target.status()
        assert st["attached"] == st["patched"] == st["listening"] == BCC_PROBES, st
        assert st["enabled"] == BCC_PROBES and st["tool_id"] == 3, st
        changes = target.changes()
        enabled_at = [c[0] for c in changes if c[1]]
        assert enabled_at and min(enabled_at) > t_attached, (changes, t_attached)
        # Every event from now on reaches the tracer: exact per-thread counts.
        before = counts(bcc)
        assert target.ask("call 500", "called") == "500"
        after = counts(bcc)
        assert after["PY_START"] - before["PY_START"] == 500, (before, after)
        assert after["PY_RETURN"] - before["PY_RETURN"] == 500, (before, after)

        # SIGKILL: the kernel removes the uprobes; the semaphores stay raised.
        target.send("spin")
        target.expect("spinning")
        time.sleep(2 * POLL_MSEC / 1000)
        t_kill = time.monotonic_ns()
        bcc.p.kill()
        bcc.p.wait(30)
        # Reaped: its files are closed, so the kernel has removed its uprobes (about
        # 0.1 s each, one after the other, from the kill on).
        t_dead = time.monotonic_ns()
        time.sleep(4 * POLL_MSEC / 1000)
        st = target.status()
        assert st["attached"] == BCC_PROBES and st["patched"] == [], st
        assert_untraced(st)
        assert_off_in_time(target.changes(), t_kill, t_dead)
        target.ask("stop", "stopped")
    finally:
        if bcc is not None:
            bcc.kill()
        target.kill()


def test_stale_semaphores_do_not_stall_wait_for_tracer(tmp_path):
    """Semaphores a dead bcc left raised (CALL, LINE here) and a live tracer on PY_START
    (a perf uprobe counted in its semaphore, as bpftrace's): wait_for_tracer returns, with
    only PY_START enabled."""
    need_uprobes()
    target = Target(tmp_path)
    sems = Semaphores(target.p.pid, LIB)
    try:
        for p in ("CALL", "LINE"):
            sems.add(p, 1)
        with rel_uprobe.Uprobe(LIB, rel_uprobe.probe_offsets(LIB)["PY_START"], target.p.pid):
            ok, _ = target.ask("wait 20", "waited").split()
            assert ok == "True"
            st = target.status()
            assert st["attached"] == ["PY_START", "CALL", "LINE"], st
            assert st["listening"] == st["enabled"] == ["PY_START"], st
        for p in ("CALL", "LINE"):
            sems.add(p, -1)
    finally:
        sems.close()
        target.kill()


WAIT_SCRIPT = """\
import sys

def work():
    return 1

for _ in range(300):
    work()
print("done", flush=True)
sys.stdin.readline()
"""


def test_wait_option_waits_for_the_uprobes_not_the_semaphores(tmp_path):
    """`python -m pyusdt --wait` with a client that raises the semaphores early: the
    program's first calls are all seen (PYUSDT_FILTER=work: only work() fires)."""
    need_uprobes()
    script = tmp_path / "early.py"
    script.write_text(WAIT_SCRIPT)
    target = Proc(
        [sys.executable, "-m", "pyusdt", "--wait=60", str(script)],
        env=base_env(PYUSDT_CHECK_MSEC=str(POLL_MSEC), PYUSDT_FILTER="work"),
        cwd=tmp_path,
    )
    bcc = None
    try:
        # Longer than wait_for_tracer's settling (1 s for a tracer that has not patched
        # every site of its probes): trusting the semaphores would start the program
        # untraced (0 counted).
        bcc = bcc_like(target.p.pid, ["PY_START"], early=2.5)
        bcc.expect("attached")
        target.expect("done")
        assert counts(bcc) == {"PY_START": 300}
        target.send("")
        assert target.p.wait(30) == 0
    finally:
        if bcc is not None:
            bcc.kill()
        target.kill()


def test_bpftrace_sigkilled_mid_trace_disables_within_two_polls(tmp_path):
    need_bpftrace()
    target = Target(tmp_path)
    bt = None
    try:
        bt = attach_bpftrace(
            target.p.pid,
            'usdt:PYUSDT:pyusdt:PY_START /str(arg0) == "work"/ { @n = count(); }',
        )
        target.wait_enabled(["PY_START"])
        target.ask("spin", "spinning")
        time.sleep(2 * POLL_MSEC / 1000)  # mid-trace: work() fires all along
        assert target.status()["enabled"] == ["PY_START"]
        t_kill = time.monotonic_ns()
        os.kill(bt.pid, signal.SIGKILL)
        bt.wait(30)
        t_dead = time.monotonic_ns()  # reaped: its uprobes are gone
        time.sleep(4 * POLL_MSEC / 1000)
        st = target.status()
        assert st["attached"] == [] and st["patched"] == [], st
        assert_untraced(st)
        assert_off_in_time(target.changes(), t_kill, t_dead)
        target.ask("stop", "stopped")
    finally:
        if bt is not None and bt.poll() is None:
            bt.kill()
        if bt is not None:
            bt.communicate()
        target.kill()
