"""Owns the value/callable repr passed to the probes when repr() misbehaves: raising,
huge (bounded to PYUSDT_REPR_MAX - 1 bytes, here 1023, cut at a UTF-8 boundary), non-str,
endlessly recursive, re-entrant (calls traced code), and KeyboardInterrupt (propagates
to the program). These run with PYUSDT_REPR=full, where repr() is called; by default
(`safe`) none of those `__repr__` run and the values carry `object.__repr__`'s text."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Traced, base_env
from gated import trace

SCRIPT = Path(__file__).parent / "scripts" / "values_target.py"
PROBES = ["PY_START", "PY_RETURN", "PY_YIELD", "CALL"]
REPR_MAX = 1024  # set through PYUSDT_REPR_MAX (the default is 256)
# The tail of a cut repr is read from this offset: a character boundary of both long
# values, and close enough to the end for bpftrace's default 63-byte str().
TAIL_AT = 961


def program(path: str) -> str:
    """Tab-separated lines: nsecs (for ordering across CPUs), kind, fields."""
    f = f'str(arg1) == "{path}"'
    return f"""
usdt:PYUSDT:pyusdt:PY_START /{f}/ {{ printf("%lu\\tS\\t%s\\n", nsecs, str(arg0)); }}
usdt:PYUSDT:pyusdt:PY_RETURN /{f}/ {{
    printf("%lu\\tR\\t%s\\t%s\\n", nsecs, str(arg0), str(arg4));
}}
usdt:PYUSDT:pyusdt:PY_RETURN /{f} && (str(arg0) == "ret_huge" || str(arg0) == "ret_accents")/ {{
    printf("%lu\\tT\\t%s\\t%s\\n", nsecs, str(arg0), str(arg4 + {TAIL_AT}));
}}
usdt:PYUSDT:pyusdt:PY_YIELD /{f}/ {{
    printf("%lu\\tY\\t%s\\t%s\\n", nsecs, str(arg0), str(arg4));
}}
usdt:PYUSDT:pyusdt:CALL /{f}/ {{ printf("%lu\\tC\\t%s\\t%s\\n", nsecs, str(arg0), str(arg4)); }}
"""


def events(t: Traced) -> list[tuple[str, ...]]:
    rows = []
    for ln in t.output.splitlines():
        f = ln.split("\t")
        if len(f) >= 3 and f[0].isdigit():
            rows.append((int(f[0]), *f[1:]))
    rows.sort(key=lambda r: r[0])
    return [tuple(r[1:]) for r in rows]


@pytest.fixture
def script() -> Iterator[Path]:
    # A short path: bpftrace 0.17 refuses string literals over 63 bytes.
    d = Path(tempfile.mkdtemp(prefix="pyusdt-", dir="/tmp"))
    dst = d / "values_target.py"
    shutil.copy(SCRIPT, dst)
    assert len(str(dst).encode()) < 64, dst
    yield dst
    shutil.rmtree(d)


def untraced(script: Path, mode: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import pyusdt, runpy, sys; sys.argv = sys.argv[1:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')",
            str(script),
            mode,
        ],
        capture_output=True,
        text=True,
        env=base_env(),
        cwd=cwd,
        timeout=120,
    )


def test_misbehaving_reprs(bpftrace: str, script: Path, tmp_path: Path) -> None:
    plain = untraced(script, "reprs", tmp_path)
    assert plain.returncode == 0, plain.stderr
    env = base_env(PYUSDT_REPR_MAX=str(REPR_MAX), PYUSDT_REPR="full")
    t = trace(program(str(script)), script, PROBES, args=["reprs"], cwd=tmp_path, env=env)
    # The program sees nothing of what the probes went through.
    assert t.returncode == 0, t.stderr + t.bt_stderr
    assert t.stdout == plain.stdout
    assert t.stderr == "" == plain.stderr
    ev = events(t)
    rets = {e[1]: e[2] for e in ev if e[0] == "R"}
    tails = {e[1]: e[2] for e in ev if e[0] == "T"}

    assert rets["ret_raises"] == "<repr failed: ValueError>"
    assert rets["ret_not_str"] == "<repr failed: TypeError>"
    assert rets["ret_recursive"] == "<repr failed: RecursionError>"
    assert ("Y", "yield_raises", "<repr failed: ValueError>") in ev
    assert ("C", "call_bad_callable", "<repr failed: ValueError>") in ev
    assert rets["after"] == "'after'"

    # 100 kB repr: the probe gets its first bytes, and it ends "..." at byte 1023 (the
    # tail read from TAIL_AT ends at a NUL before bpftrace's 63-byte limit).
    assert rets["ret_huge"] == "H" * 63
    assert tails["ret_huge"] == "H" * (REPR_MAX - 4 - TAIL_AT) + "..."
    # 5000 two-byte characters: cut one byte earlier, at a character boundary.
    assert rets["ret_accents"] == "'" + "\u00e9" * 31
    assert tails["ret_accents"] == "\u00e9" * ((REPR_MAX - 5 - TAIL_AT) // 2) + "..."

    # A repr that calls traced code: CPython raises no events while a sys.monitoring
    # callback runs (tstate->tracing), so the code run by our repr() is invisible and
    # cannot re-enter the probes; helper() itself is traced when the program calls it.
    start = ev.index(("S", "ret_chatty"))
    end = ev.index(("R", "ret_chatty", "Chatty<7>"))
    assert ev[start : end + 1] == [
        ("S", "ret_chatty"),
        ("C", "ret_chatty", "<class '__main__.Chatty'>"),
        ("R", "ret_chatty", "Chatty<7>"),
    ]
    assert ev.count(("S", "helper")) == 1
    assert ("R", "helper", "'<8>'") in ev
    assert not [e for e in ev if e[1] == "__repr__" or "<re-entrant repr>" in e]


def test_keyboard_interrupt_in_repr_reaches_the_program(
    bpftrace: str, script: Path, tmp_path: Path
) -> None:
    plain = untraced(script, "interrupt", tmp_path)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout == "no KeyboardInterrupt\nafter str None\n"
    env = base_env(PYUSDT_REPR="full")
    t = trace(program(str(script)), script, PROBES, args=["interrupt"], cwd=tmp_path, env=env)
    assert t.returncode == 0, t.stderr + t.bt_stderr
    # A BaseException from repr() is not swallowed: it surfaces where the value was
    # returned, and the program can handle it.
    assert t.stdout == "program saw KeyboardInterrupt\nafter str None\n"
    assert t.stderr == ""
    ev = events(t)
    assert ("S", "ret_interrupting") in ev
    assert [e for e in ev if e[0] == "R" and e[1] == "ret_interrupting"] == []
    # Tracing goes on afterwards.
    assert ("R", "after", "'after'") in ev


def obj(name: str) -> str:
    return rf"<__main__\.{name} object at 0x[0-9a-f]+>"


def test_misbehaving_reprs_do_not_run_by_default(
    bpftrace: str, script: Path, tmp_path: Path
) -> None:
    plain = untraced(script, "reprs", tmp_path)
    env = base_env(PYUSDT_REPR_MAX=str(REPR_MAX))
    env.pop("PYUSDT_REPR", None)
    t = trace(program(str(script)), script, PROBES, args=["reprs"], cwd=tmp_path, env=env)
    assert t.returncode == 0, t.stderr + t.bt_stderr
    assert t.stdout == plain.stdout
    assert t.stderr == ""
    ev = events(t)
    rets = {e[1]: e[2] for e in ev if e[0] == "R"}
    tails = {e[1]: e[2] for e in ev if e[0] == "T"}
    # object.__repr__'s text: no __repr__ ran, so none could fail.
    for func, cls in [
        ("ret_raises", "RaisesInRepr"),
        ("ret_not_str", "NotAStr"),
        ("ret_recursive", "Recursive"),
        ("ret_chatty", "Chatty"),
        ("ret_huge", "Huge"),
    ]:
        assert re.fullmatch(obj(cls), rets[func]), (func, rets[func])
    [yielded] = [e[2] for e in ev if e[0] == "Y" and e[1] == "yield_raises"]
    assert re.fullmatch(obj("RaisesInRepr"), yielded)
    # The class is called (its repr is type's, pure C), then the instance.
    called = [e[2] for e in ev if e[0] == "C" and e[1] == "call_bad_callable"]
    assert called[0] == "<class '__main__.BadCallable'>"
    assert re.fullmatch(obj("BadCallable"), called[1]), called
    assert not [e for e in ev if "<repr failed" in e[-1]]
    # A str's repr is pure C: the same text (and bound) as with repr().
    assert rets["ret_accents"] == "'" + "\u00e9" * 31
    assert tails["ret_accents"] == "\u00e9" * ((REPR_MAX - 5 - TAIL_AT) // 2) + "..."
    assert rets["after"] == "'after'"


def test_keyboard_interrupting_repr_does_not_run_by_default(
    bpftrace: str, script: Path, tmp_path: Path
) -> None:
    env = base_env()
    env.pop("PYUSDT_REPR", None)
    t = trace(program(str(script)), script, PROBES, args=["interrupt"], cwd=tmp_path, env=env)
    assert t.returncode == 0, t.stderr + t.bt_stderr
    assert t.stdout == "no KeyboardInterrupt\nafter str None\n"
    assert t.stderr == ""
    [ret] = [e[2] for e in events(t) if e[0] == "R" and e[1] == "ret_interrupting"]
    assert re.fullmatch(obj("Interrupting"), ret)
