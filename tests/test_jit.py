"""Owns pyusdt under CPython's JIT (3.15 built --enable-experimental-jit=yes-off, run
with PYTHON_JIT=1): a loop the JIT compiled before a tracer attached loses no function
event once one is attached, and, for comparison, CPython's own function__entry marker
is not fired by JIT code.

Collected only on JIT builds, or where PYUSDT_EXPECT_JIT=1 (the opt-in tests-3.15-jit
nox session) says the interpreter must be one. See tests/conftest.py.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import attach_bpftrace, base_env, finish, go, readline_raw, spawn

TARGET = Path(__file__).parent / "scripts" / "jit_hot.py"
N = 20_000
WARM = 50_000  # jit_hot.py's warm-up iterations
MAP_LINE = re.compile(r"^(@\w+)\[(\w+)\]: (\d+)$")


def is_jit_build() -> bool:
    return "--enable-experimental-jit=yes" in (sysconfig.get_config_var("CONFIG_ARGS") or "")


def run(program: str, *mode: str) -> tuple[dict[tuple[str, str], int], list[str]]:
    """jit_hot.py under PYTHON_JIT=1, `program` attached after its warm-up (and, unless
    `mode` is "native", detached before its third run); returns bpftrace's map counts
    {(map, key): n} and the target's lines after WARM."""
    assert is_jit_build(), sysconfig.get_config_var("CONFIG_ARGS")
    target = spawn(TARGET, str(N), *mode, env=base_env(PYTHON_JIT="1"))
    try:
        assert target.stdout is not None
        warm = readline_raw(target.stdout).split()
        assert warm[:1] == ["WARM"], (warm, target.stderr.read() if target.stderr else "")
        # The JIT is on, and most of the warm-up's iterations ran JIT-compiled code.
        assert warm[2] == "True" and int(warm[3]) > WARM // 2, warm
        bt = attach_bpftrace(int(warm[1]), program)
        go(target)
        lines = []
        if mode != ("native",):
            lines.append(readline_raw(target.stdout).strip())
            bt.send_signal(signal.SIGINT)  # prints the maps and detaches
            bt_out, bt_err = finish(bt)
            go(target)
        out, err = finish(target)
        if mode == ("native",):
            bt_out, bt_err = finish(bt)
    finally:
        if target.poll() is None:
            target.kill()
    assert target.returncode == 0, err
    assert bt.returncode == 0, bt_err
    counts = {}
    for ln in bt_out.splitlines():
        if m := MAP_LINE.match(ln):
            counts[(m[1], m[2])] = int(m[3])
    return counts, lines + out.split()


def test_a_loop_the_jit_compiled_loses_no_function_event():
    pred = '/str(arg0) == "jit_leaf" || str(arg0) == "hot"/'
    counts, lines = run(
        f"usdt:PYUSDT:pyusdt:PY_START {pred} {{ @start[str(arg0)] = count(); }}\n"
        f"usdt:PYUSDT:pyusdt:PY_RETURN {pred} {{ @ret[str(arg0)] = count(); }}"
    )
    assert counts == {
        ("@start", "jit_leaf"): N,
        ("@ret", "jit_leaf"): N,
        ("@start", "hot"): 1,
        ("@ret", "hot"): 1,
    }, (counts, lines)
    # While traced, CPython ran the monitored loop in its instrumented interpreter (no JIT
    # code, which is why nothing is missed); once the tracer left, the JIT came back.
    assert lines[0] == "TRACED 0" and lines[1] == "DETACHED", lines
    assert int(lines[2]) > N // 2, lines


# matrix/provision's 3.15-jit has them (--with-dtrace): there (PYUSDT_EXPECT_JIT=1) no skip.
@pytest.mark.skipif(
    not (sysconfig.get_config_var("WITH_DTRACE") or os.environ.get("PYUSDT_EXPECT_JIT") == "1"),
    reason="CPython's markers need a build made --with-dtrace",
)
def test_cpythons_own_function_entry_marker_misses_calls_made_by_jit_code():
    exe = str(Path(sys.executable).resolve())
    counts, lines = run(
        f'usdt:{exe}:python:function__entry /str(arg1) == "jit_leaf"/ '
        "{ @entry[str(arg1)] = count(); }",
        "native",
    )
    seen = counts.get(("@entry", "jit_leaf"), 0)
    assert lines[0] == "TRACED", lines
    jitted = int(lines[1])
    # The JIT's code is compiled from the same instruction definitions with the markers
    # compiled out (Py_BUILD_CORE_MODULE): each call made from JIT code goes unseen, each
    # made by the interpreter is seen.
    assert 0 < jitted < N and seen == N - jitted, (seen, lines)
