"""CPython's own test_profile and test_generators under pyusdt with all six probes attached
by a real `bpftrace -p` (README "Known interactions").

Two CPython behaviours show up when a sys.monitoring tool, pyusdt or not, monitors
these events: the pure-Python `profile` module fails with "Bad return" when CALL is
monitored (whatever the callback), and a SIGINT raised just before a generator resumes
is delivered elsewhere when PY_RESUME is monitored by a Python-level callback
(test.test_generators.SignalAndYieldFromTest): the callback's own frame takes the
signal. pyusdt's callbacks are C functions, as is the bare tool's `"".format` here,
which does not trigger the second one. The failing tests under pyusdt must be exactly
those that bare tools with C callbacks monitoring CALL and PY_RESUME make fail without
pyusdt; a plain run must pass.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import attach_bpftrace, base_env, finish, need_bpftrace

import pyusdt

MODULES = ["test.test_profile", "test.test_generators"]
ALL = list(pyusdt.PROBES)
COUNT_ALL = "\n".join(f"usdt:PYUSDT:pyusdt:{p} {{ @{p} = count(); }}" for p in ALL)
RESUME_FAILURE = (
    "test.test_generators.SignalAndYieldFromTest.test_raise_and_yield_from",
    "test_raise_and_yield_from",
)

# A bare sys.monitoring tool (no pyusdt) monitoring the events in argv[2] with a C
# callback (argv[1] == "c": a builtin method taking any arguments, as pyusdt's
# callbacks are C functions) or a Python one ("py"), then unittest.
BARE_TOOL = """\
import sys, unittest
mon = sys.monitoring
mon.use_tool_id(3, "bare")
callback = "".format if sys.argv[1] == "c" else (lambda *args: None)
mask = 0
for name in sys.argv[2].split(","):
    event = getattr(mon.events, name)
    mon.register_callback(3, event, callback)
    mask |= event
mon.set_events(3, mask)
unittest.main(module=None, argv=["unittest", *sys.argv[3:]])
"""


def outcome(proc_out: str, proc_err: str) -> tuple[int, set[tuple[str, str]]]:
    """(tests run, {(test id, test name)} of failures and errors) of a unittest run."""
    text = proc_out + proc_err
    ran = re.search(r"^Ran (\d+) tests? in ", text, re.M)
    assert ran, text[-3000:]
    failed = {
        (test_id, name)
        for name, test_id in re.findall(r"^(?:FAIL|ERROR): (\S+) \((\S+)\)", text, re.M)
    }
    return int(ran.group(1)), failed


def run(args: list[str], tmp: Path) -> tuple[int, set[tuple[str, str]], str]:
    proc = subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=base_env(),
        cwd=tmp,
    )
    out, err = finish(proc, timeout=120)
    ran, failed = outcome(out, err)
    assert proc.returncode == (1 if failed else 0), (proc.returncode, err[-3000:])
    return ran, failed, out + err


def test_interpreter_ships_the_test_package():
    proc = subprocess.run(
        [sys.executable, "-c", "import _testcapi, " + ", ".join(MODULES)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"{sys.executable} lacks CPython's test package: {proc.stderr}"


def test_failures_under_pyusdt_are_the_known_interactions(tmp_path):
    need_bpftrace()
    bare = tmp_path / "bare_tool.py"
    bare.write_text(textwrap.dedent(BARE_TOOL))

    ran, plain, text = run(["-m", "unittest", *MODULES], tmp_path)
    assert plain == set(), text[-3000:]
    assert ran > 0

    def bare_run(kind: str, events: str) -> tuple[set[tuple[str, str]], str]:
        n, failed, text = run([str(bare), kind, events, *MODULES], tmp_path)
        assert n == ran, text[-3000:]
        return failed, text

    # Without pyusdt: a tool monitoring CALL breaks `profile` ("Bad return"), whatever
    # its callback,
    by_call, text = bare_run("c", "CALL")
    assert by_call and all(t.startswith("test.test_profile.") for t, _ in by_call), by_call
    assert "Bad return" in text, text[-3000:]
    assert bare_run("py", "CALL")[0] == by_call
    # a Python-level callback for PY_RESUME moves the SIGINT of SignalAndYieldFromTest,
    assert bare_run("py", "PY_RESUME")[0] == {RESUME_FAILURE}
    # a C one does not,
    by_resume, text = bare_run("c", "PY_RESUME")
    assert by_resume == set(), text[-3000:]
    # and C callbacks for both break just `profile`.
    expected = bare_run("c", "CALL,PY_RESUME")[0]
    assert expected == by_call | by_resume

    # pyusdt with all six probes attached by bpftrace, from before the first test.
    target = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pyusdt",
            "--wait=60",
            f"--probes={','.join(ALL)}",
            "-m",
            "unittest",
            *MODULES,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=base_env(),
        cwd=tmp_path,
    )
    bt = None
    try:
        bt = attach_bpftrace(target.pid, COUNT_ALL)
        out, err = finish(target, timeout=120)
        bt_out, bt_err = finish(bt, timeout=60)  # exits with the target, printing its maps
    finally:
        for proc in (target, bt):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()
    n, under_pyusdt = outcome(out, err)
    assert n == ran
    assert target.returncode == (1 if under_pyusdt else 0), err[-3000:]
    counts = dict(re.findall(r"^@(\w+): (\d+)$", bt_out, re.M))
    assert sorted(counts) == sorted(ALL), (bt_out, bt_err)  # every probe fired
    assert all(int(c) > 0 for c in counts.values()), counts
    assert under_pyusdt == expected, (under_pyusdt, err[-3000:])
