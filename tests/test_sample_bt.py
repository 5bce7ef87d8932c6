"""Owns sample.bt (repo root): run as shipped (library path filled in the way pyusdt-trace
does it) against a small script, every probe prints its line with the right function,
file and details; and the `pyusdt-trace sample.bt -- script.py` command its header gives."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import LIB, base_env
from gated import trace

from pyusdt.trace import rewrite_program

SAMPLE = Path(__file__).resolve().parent.parent / "sample.bt"
HEADER = "Tracing pyusdt probes... Hit Ctrl-C to end."
SCRIPT = """\
def square(n):
    return n * n


def countdown(n):
    while n > 0:
        yield n
        n -= 1


def main():
    total = 0
    for v in countdown(3):
        total += square(v)
    print("total", total)


main()
"""
# sample.bt prints every event of the process: room for bursts (pages per CPU).
BIG_BUFFERS = {"BPFTRACE_PERF_RB_PAGES": "2048"}
# EVENT INTP FUNCTION FILE DETAILS, as sample.bt prints them.
ROW = re.compile(
    r"^(PY_START|PY_RESUME|PY_RETURN|PY_YIELD|CALL|LINE)\s+(\d+)\s+(\S+)\s+(\S+)\s+(.*)$"
)


@pytest.fixture
def script() -> Iterator[Path]:
    # A short path, so that bpftrace's 63-byte str() shows the file name whole.
    d = Path(tempfile.mkdtemp(prefix="pyusdt-", dir="/tmp"))
    dst = d / "sample_target.py"
    dst.write_text(SCRIPT)
    yield dst
    shutil.rmtree(d)


def rows(output: str, file: str) -> list[tuple[str, str, str]]:
    """(event, function, details) of the script's own events; checks INTP and FILE."""
    found = []
    for ln in output.splitlines():
        m = ROW.match(ln)
        if m and m.group(4) == file:
            assert m.group(2) == "0", ln
            found.append((m.group(1), m.group(3), m.group(5)))
    return found


def check(output: str, file: str) -> None:
    lines = output.splitlines()
    # 6 probes at 2 locations each (their 1-byte and 5-byte nop sites), BEGIN and END.
    assert lines[0] == "Attaching 14 probes...", output[:500]
    assert lines[1] == HEADER, output[:500]
    # (BEGIN's second line may come after events bpftrace read from another CPU's buffer.)
    assert ["EVENT", "INTP", "FUNCTION", "FILE", "DETAILS"] in [ln.split() for ln in lines]
    assert output.rstrip("\n").endswith("\n\nTracing ended."), output[-500:]
    r = rows(output, file)
    assert ("PY_START", "<module>", "line:1 offset:0") in r
    assert ("PY_START", "square", "line:1 offset:0") in r
    retvals = [d.split("retval:")[1] for e, f, d in r if e == "PY_RETURN" and f == "square"]
    assert sorted(retvals) == ["1", "4", "9"], r  # (lines of different CPUs may interleave)
    yields = [d.split("yield:")[1] for e, f, d in r if e == "PY_YIELD" and f == "countdown"]
    assert sorted(yields) == ["1", "2", "3"], r
    resumes = [d for e, f, d in r if e == "PY_RESUME" and f == "countdown"]
    assert len(resumes) == 3, r
    assert all(re.fullmatch(r"line:5 offset:\d+", d) for d in resumes), resumes
    calls = [d.split("callable:")[1] for e, f, d in r if e == "CALL" and f == "main"]
    assert len([c for c in calls if re.fullmatch(r"<function square at 0x\w+>", c)]) == 3
    assert len([c for c in calls if re.fullmatch(r"<function countdown at 0x\w+>", c)]) == 1
    assert "<built-in function print>" in calls, calls
    main_lines = [d for e, f, d in r if e == "LINE" and f == "main"]
    assert "line:12" in main_lines and "line:15" in main_lines, main_lines


def test_sample_bt_as_shipped(bpftrace: str, script: Path, tmp_path: Path) -> None:
    text = SAMPLE.read_text()
    assert text.count("usdt:./libpyusdt.so:pyusdt:") == 6  # all six probes, like the original
    program = rewrite_program(text, LIB)
    assert "usdt:./libpyusdt.so" not in program
    t = trace(
        program,
        script,
        ["PY_START", "PY_RESUME", "PY_RETURN", "PY_YIELD", "CALL", "LINE"],
        cwd=tmp_path,
        ready=HEADER,
        bt_env=BIG_BUFFERS,
    )
    assert t.returncode == 0, t.stderr + t.bt_stderr
    assert "Lost" not in t.output + t.bt_stderr
    assert t.stdout == "total 14\n"
    check(t.output, str(script))


def test_pyusdt_trace_sample_bt(bpftrace: str, script: Path, tmp_path: Path) -> None:
    """The command sample.bt's header documents."""
    exe = Path(sys.executable).parent / "pyusdt-trace"
    assert exe.exists(), exe
    env = base_env(**BIG_BUFFERS)
    # The program and bpftrace share stdout: let the program write its line in one go.
    env.pop("PYTHONUNBUFFERED", None)
    proc = subprocess.run(
        [str(exe), str(SAMPLE), "--", str(script)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "total 14\n" in proc.stdout
    assert HEADER in proc.stdout
    assert "Lost" not in proc.stdout + proc.stderr
    r = rows(proc.stdout, str(script))
    assert ("PY_START", "square", "line:1 offset:0") in r, proc.stdout[-2000:]
    retvals = [d.split("retval:")[1] for e, f, d in r if e == "PY_RETURN" and f == "square"]
    assert sorted(retvals) == ["1", "4", "9"], r  # (lines of different CPUs may interleave)
