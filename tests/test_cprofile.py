"""Owns coexistence with cProfile: profiling works in a process that imported pyusdt,
and pyusdt imports under an active profiler, untraced and traced (then both the
profile and the probes are complete)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Traced, base_env
from gated import collect, start_bpftrace, wait_mapped

SCRIPT = Path(__file__).parent / "scripts" / "cprof_work.py"
PROBES = ["PY_START", "CALL"]
PROGRAM = """
usdt:PYUSDT:pyusdt:PY_START /str(arg0) == "square"/ { printf("start %s %d\\n", str(arg0), arg4); }
usdt:PYUSDT:pyusdt:CALL /str(arg0) == "main"/ { printf("call %s\\n", str(arg4)); }
"""
# How each way of profiling is started: `python ARGS`.
WAYS = {
    "m_cprofile_m_pyusdt": ["-m", "cProfile", "-s", "ncalls", "-m", "pyusdt", str(SCRIPT), "plain"],
    "profile_object": [str(SCRIPT), "profile"],
    "cprofile_run_imports_pyusdt": [str(SCRIPT), "run"],
}


def run(args: list[str], traced: bool, cwd: Path) -> Traced | subprocess.CompletedProcess[str]:
    proc = subprocess.Popen(
        [sys.executable, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=base_env(),
        cwd=cwd,
    )
    assert proc.stdin is not None
    if not traced:
        out, err = proc.communicate("go\n", timeout=120)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    try:
        wait_mapped(proc)
        bt, early = start_bpftrace(proc.pid, PROGRAM)
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    proc.stdin.write(f"go {','.join(PROBES)}\n")
    proc.stdin.close()
    proc.stdin = None
    return collect(proc, bt, 120, early)


def profile_rows(stdout: str) -> dict[str, int]:
    """ncalls of the script's functions in cProfile's table."""
    rows = {}
    for m in re.finditer(r"^\s*(\d+)\s+.*cprof_work\.py:\d+\((\w+)\)$", stdout, re.M):
        rows[m.group(2)] = int(m.group(1))
    return rows


def check_profile(stdout: str) -> None:
    assert "grand total 1425" in stdout
    assert "function calls" in stdout  # cProfile's header
    rows = profile_rows(stdout)
    assert rows.get("main") == 1, stdout
    assert rows.get("work") == 5, stdout
    assert rows.get("square") == 50, stdout


@pytest.mark.parametrize("way", WAYS)
def test_cprofile_untraced(way: str, tmp_path: Path) -> None:
    r = run(WAYS[way], traced=False, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    check_profile(r.stdout)
    if way == "profile_object":
        assert "tools during profile: ['cProfile', None]" in r.stdout


@pytest.mark.parametrize("way", WAYS)
def test_cprofile_traced(bpftrace: str, way: str, tmp_path: Path) -> None:
    t = run(WAYS[way], traced=True, cwd=tmp_path)
    assert isinstance(t, Traced)
    assert t.returncode == 0, t.stderr + t.bt_stderr
    assert t.stderr == ""
    check_profile(t.stdout)
    if way == "profile_object":
        assert "tools during profile: ['cProfile', 3]" in t.stdout
        assert "pyusdt enabled during profile: ['PY_START', 'CALL']" in t.stdout
    # The probes saw every call the profile counted.
    assert t.lines("start ") == ["start square 0"] * 50, t.output
    calls = t.lines("call ")
    assert len([c for c in calls if c.startswith("call <function work at 0x")]) == 5, calls
    assert calls.count("call <built-in function print>") == 1, calls
