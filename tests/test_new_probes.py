"""Owns the exception and C-call probes (PY_UNWIND, PY_THROW, RAISE, RERAISE,
EXCEPTION_HANDLED, C_RETURN, C_RAISE) end to end: a real bpftrace against a plain
sys.monitoring recorder (tests/scripts/record_pairs.py) run in a separate process,
exact multisets of (event, thread, function, first line, offset, detail); co_qualname
on PY_START / LINE; C_RETURN attached alone."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import base_env
from gated import trace

SCRIPTS = Path(__file__).parent / "scripts"
PAIRS = SCRIPTS / "pairs.py"
REF_TOOL = 4
ADDR = re.compile(r"0x[0-9a-f]+")

EXC = ("PY_UNWIND", "PY_THROW", "RAISE", "RERAISE", "EXCEPTION_HANDLED")
CCALL = ("C_RETURN", "C_RAISE")
CODE = ("PY_START", "PY_RESUME", "PY_RETURN", "PY_YIELD")


def program(path: str, probes: tuple[str, ...]) -> str:
    pred = f'/str(arg1) == "{path}"/'
    parts = []
    for p in probes:
        if p in EXC:
            fmt, args = "%s\\t%s", "str(arg4), str(arg5)"
        elif p in CCALL:
            fmt, args = "%s", "str(arg4)"
        else:
            fmt, args = "", ""
        sep = "\\t" if fmt else ""
        extra = f", {args}" if args else ""
        parts.append(
            f"usdt:PYUSDT:pyusdt:{p} {pred} "
            f'{{ printf("{p}\\t%d\\t%s\\t%d\\t%d{sep}{fmt}\\n", '
            f"tid == pid ? 0 : 1, str(arg0), arg2, arg3{extra}); }}"
        )
    return "\n".join(parts)


def parse(output: str, probes: tuple[str, ...]) -> Counter:
    """The events bpftrace printed; thread 0 is the main thread (tid == pid)."""
    got: Counter = Counter()
    for ln in output.splitlines():
        f = ln.split("\t")
        if f[0] not in probes:
            continue
        thread = int(f[1])
        got[(f[0], thread, f[2], int(f[3]), int(f[4]), *(ADDR.sub("0xA", x) for x in f[5:]))] += 1
    return got


def reference(script: Path, tmp: Path, probes: tuple[str, ...]) -> Counter:
    out = tmp / "reference.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "record_pairs.py"), str(REF_TOOL), str(out), str(script)],
        capture_output=True,
        text=True,
        env=base_env(),
        cwd=tmp,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    want: Counter = Counter()
    for r in json.loads(out.read_text()):
        if r[0] in probes:
            want[(r[0], r[1], r[2], r[3], r[4], *(ADDR.sub("0xA", x) for x in r[5:]))] += 1
    return want


@pytest.fixture
def pairs() -> Iterator[Path]:
    # A short path: bpftrace 0.17 refuses string literals over 63 bytes.
    d = Path(tempfile.mkdtemp(prefix="pyusdt-", dir="/tmp"))
    dst = d / "pairs.py"
    shutil.copy(PAIRS, dst)
    yield dst
    shutil.rmtree(d)


def run(pairs: Path, tmp_path: Path, probes: tuple[str, ...], env=None, stderr: str = ""):
    t = trace(program(str(pairs), probes), pairs, list(probes), cwd=tmp_path, env=env)
    assert t.returncode == 0, t.stderr + t.bt_stderr
    assert t.stdout == "pairs done\n"
    assert t.stderr == stderr
    assert "Lost" not in t.bt_stderr, t.bt_stderr
    return t


def check(t, probes: tuple[str, ...], want: Counter) -> None:
    got = parse(t.output, probes)
    assert {k[0] for k in want} == set(probes), sorted({k[0] for k in want})
    missing, extra = want - got, got - want
    assert not missing and not extra, (
        f"missing {sorted(missing.items())[:8]}, extra {sorted(extra.items())[:8]}"
    )


def test_exception_and_c_probes_match_reference(bpftrace: str, pairs: Path, tmp_path: Path) -> None:
    probes = EXC + CCALL
    want = reference(pairs, tmp_path, probes)
    # What the workload raises, as the probes name it.
    details = {k[5:] for k in want if k[0] == "RAISE"}
    for d in (
        ("ValueError", "deep down"),
        ("ValueError", "invalid literal for int() with base 10: 'x'"),
        ("__main__.Boom", ""),  # a Python class: no message (its str() could run code)
        ("KeyError", ""),  # KeyError has its own __str__: no message
        ("KeyboardInterrupt", ""),
        ("asyncio.exceptions.CancelledError", ""),
    ):
        assert d in details, d
    # The reference records repr(); the default (safe) mode shows the workload's bound
    # method `Suppress.__exit__` as object.__repr__ does (README), so compare in full mode.
    t = run(pairs, tmp_path, probes, env=base_env(PYUSDT_REPR="full"))
    check(t, probes, want)


def test_c_return_alone(bpftrace: str, pairs: Path, tmp_path: Path) -> None:
    """C_RETURN attached alone: CPython delivers it only where CALL is monitored, so
    pyusdt enables CALL for it, but fires no CALL probe and reports C_RETURN alone."""
    probes = ("C_RETURN",)
    want = reference(pairs, tmp_path, probes)
    t = run(
        pairs,
        tmp_path,
        probes,
        env=base_env(PYUSDT_REPR="full", PYUSDT_VERBOSE="1"),
        stderr="pyusdt: ready (interpreter 0, poll 10 ms)\n"
        "pyusdt: enabled C_RETURN (interpreter 0, tool id 3)\n"
        "pyusdt: disabled (interpreter 0)\n",
    )
    check(t, probes, want)


def test_qualname_arguments(bpftrace: str, tmp_path: Path) -> None:
    """PY_START / PY_RESUME carry co_qualname as arg5, LINE as arg4."""
    d = Path(tempfile.mkdtemp(prefix="pyusdt-", dir="/tmp"))
    try:
        script = d / "q.py"
        script.write_text(
            "class Outer:\n"
            "    class Inner:\n"
            "        def meth(self):\n"
            "            def local():\n"
            "                return 1\n"
            "            return local()\n"
            "    def gen(self):\n"
            "        yield 1\n"
            "        yield 2\n"
            "Outer.Inner().meth()\n"
            "list(Outer().gen())\n"
        )
        pred = f'/str(arg1) == "{script}"/'
        u = "usdt:PYUSDT:pyusdt"
        prog = (
            f'{u}:PY_START {pred} {{ printf("S %s %s\\n", str(arg0), str(arg5)); }}\n'
            f'{u}:PY_RESUME {pred} {{ printf("R %s %s\\n", str(arg0), str(arg5)); }}\n'
            f'{u}:LINE {pred} {{ printf("L %d %s\\n", arg2, str(arg4)); }}\n'
        )
        t = trace(prog, script, ["PY_START", "PY_RESUME", "LINE"], cwd=tmp_path)
        assert t.returncode == 0, t.stderr + t.bt_stderr
        lines = Counter(ln for ln in t.output.splitlines() if ln[:2] in ("S ", "R ", "L "))
        assert lines["S meth Outer.Inner.meth"] == 1
        assert lines["S local Outer.Inner.meth.<locals>.local"] == 1
        assert lines["S gen Outer.gen"] == 1
        assert lines["R gen Outer.gen"] == 2
        assert lines["S <module> <module>"] == 1
        assert lines["L 5 Outer.Inner.meth.<locals>.local"] == 1
    finally:
        shutil.rmtree(d)
