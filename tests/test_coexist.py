"""Coexistence with other tracing users in one process: coverage.py, sys.settrace/setprofile.

coverage (both its sys.settrace core and its sys.monitoring core) must report exactly the
lines it reports without pyusdt, whichever is imported first and whether or not a real
bpftrace is attached, while pyusdt's probes still fire. A settrace/setprofile user sees
every call while bpftrace sees them too. (cProfile is covered by test_cprofile.py.)
NB: the noxfile must install `coverage` in the test venvs for this file to run.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import coverage  # noqa: F401  (fail, not skip, when missing: the nox sessions install it)
import pytest
from conftest import attach_bpftrace, base_env, finish, need_bpftrace

MEASURED = """\
def measured_fn(x):
    if x > 0:
        return 1
    return -1


def unused():
    return 2
"""

COVER_SCRIPT = """\
import os, sys
order = sys.argv[1]
if order == "pyusdt-first":
    import pyusdt
import coverage
cov = coverage.Coverage(data_file=None, include=[os.path.abspath("measured.py")])
cov.start()
if order == "coverage-first":
    import pyusdt
if sys.stdin.readline() == "go\\n":
    assert pyusdt.wait_for_tracer(60, ["PY_START", "LINE"])
import measured
for i in range(3):
    measured.measured_fn(1)
tools = [sys.monitoring.get_tool(i) for i in range(6)]
cov.stop()
_, statements, _, missing, _ = cov.analysis2("measured.py")
print("CORE", cov._collector.tracer_name())
print("STATEMENTS", statements)
print("MISSING", missing)
print("TOOLS", tools)
"""

MEASURED_PROGRAM = """
usdt:PYUSDT:pyusdt:PY_START /str(arg0) == "measured_fn"/ { @starts = count(); }
usdt:PYUSDT:pyusdt:LINE /str(arg0) == "measured_fn"/ { @lines[arg2] = count(); }
"""


def run_script(
    workdir: Path, script: str, args: list[str], traced: bool, program: str, **env: str
) -> tuple[str, str]:
    target = subprocess.Popen(
        [sys.executable, script, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=base_env(**env),
        cwd=workdir,
    )
    assert target.stdin is not None
    bt = attach_bpftrace(target.pid, program) if traced else None
    target.stdin.write("go\n" if traced else "untraced\n")
    target.stdin.flush()
    out, err = finish(target, 60)
    assert target.returncode == 0, err
    assert err == ""
    bt_out = ""
    if bt is not None:
        bt_out, bt_err = finish(bt, 60)
        assert bt.returncode == 0, bt_err
    return out, bt_out


@pytest.fixture
def cover_dir(tmp_path: Path) -> Path:
    (tmp_path / "measured.py").write_text(MEASURED)
    (tmp_path / "cover.py").write_text(COVER_SCRIPT)
    return tmp_path


# coverage has no C tracer on the free-threaded build: only its cores that exist here.
CORES = ["ctrace", "sysmon"] if importlib.util.find_spec("coverage.tracer") else ["sysmon"]


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("order", ["pyusdt-first", "coverage-first"])
@pytest.mark.parametrize("traced", [False, True], ids=["untraced", "traced"])
def test_coverage_report_unchanged(cover_dir, core, order, traced):
    if traced:
        need_bpftrace()
    env = {"COVERAGE_CORE": core}
    baseline, _ = run_script(cover_dir, "cover.py", ["none"], False, "", **env)
    out, bt_out = run_script(cover_dir, "cover.py", [order], traced, MEASURED_PROGRAM, **env)
    expected_core = {"ctrace": "CTracer", "sysmon": "SysMonitor"}[core]
    assert f"CORE {expected_core}\n" in baseline
    assert "STATEMENTS [1, 2, 3, 4, 7, 8]\n" in baseline
    assert "MISSING [4, 8]\n" in baseline
    # Same core, same statements, same missing lines as without pyusdt.
    assert out.split("TOOLS")[0] == baseline.split("TOOLS")[0]
    tools = out.split("TOOLS ")[1]
    if traced:
        # bpftrace saw the three calls and their lines; pyusdt held a tool id of its own.
        assert re.search(r"^@starts: 3$", bt_out, re.M), bt_out
        lines = dict(re.findall(r"^@lines\[(\d+)\]: (\d+)$", bt_out, re.M))
        assert lines == {"2": "3", "3": "3"}, bt_out
        assert "'pyusdt'" in tools
    else:
        assert "'pyusdt'" not in tools
    if core == "sysmon":
        assert tools.startswith("[None, 'coverage.py', ")


SETTRACE_SCRIPT = """\
import sys
import pyusdt

calls = []

def tracer(frame, event, arg):
    if event == "call" and frame.f_code.co_name == "traced_fn":
        calls.append("trace")
    return None

def profiler(frame, event, arg):
    if event == "call" and frame.f_code.co_name == "traced_fn":
        calls.append("profile")

def traced_fn(i):
    return i * 2

early = sys.argv[1] == "early"
if early:
    sys.settrace(tracer)
    sys.setprofile(profiler)
if sys.stdin.readline() == "go\\n":
    assert pyusdt.wait_for_tracer(60, ["PY_START", "CALL"])
if not early:
    sys.settrace(tracer)
    sys.setprofile(profiler)
for i in range(4):
    traced_fn(i)
sys.settrace(None)
sys.setprofile(None)
print("TRACE", calls.count("trace"), "PROFILE", calls.count("profile"))
"""

SETTRACE_PROGRAM = """
usdt:PYUSDT:pyusdt:PY_START /str(arg0) == "traced_fn"/ { @starts = count(); }
usdt:PYUSDT:pyusdt:CALL /strncmp(str(arg4), "<function traced_fn ", 20) == 0/ { @calls = count(); }
"""


@pytest.mark.parametrize("when", ["early", "late"])
@pytest.mark.parametrize("traced", [False, True], ids=["untraced", "traced"])
def test_settrace_and_setprofile_see_calls_while_traced(tmp_path, when, traced):
    if traced:
        need_bpftrace()
    (tmp_path / "st.py").write_text(textwrap.dedent(SETTRACE_SCRIPT))
    out, bt_out = run_script(tmp_path, "st.py", [when], traced, SETTRACE_PROGRAM)
    assert out == "TRACE 4 PROFILE 4\n"
    if traced:
        assert re.search(r"^@starts: 4$", bt_out, re.M), bt_out
        assert re.search(r"^@calls: 4$", bt_out, re.M), bt_out
