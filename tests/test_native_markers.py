"""Owns pyusdt side by side with CPython's own USDT markers (provider `python`,
`function__entry`/`function__return`, in builds made `--with-dtrace`, 3.15+): one
bpftrace session attaches both to one process and each sees every call, with the same
function names, files and lines.

Collected only where the interpreter has the markers, or where
PYUSDT_EXPECT_NATIVE_MARKERS=1 says it must (the tests-3.15 nox session sets it; there
a build without them fails here instead of skipping). See tests/conftest.py.
"""

from __future__ import annotations

import ast
import os
import re
import sys
import sysconfig
from collections import Counter
from pathlib import Path

from conftest import base_env
from gated import trace

SCRIPTS = Path(__file__).parent / "scripts"
sys.path.insert(0, str(SCRIPTS))
import rel_uprobe  # noqa: E402

TARGET = SCRIPTS / "native_calls.py"
CALLS = {"native_alpha": 1000, "native_beta": 300}
NATIVE = ("function__entry", "function__return")
MAP_LINE = re.compile(r"^(@\w+)\[(.*)\]: (\d+)$")


def marker_elf() -> str:
    """The ELF file that holds this interpreter's own markers: libpython for a shared
    build, else the executable (a venv's python is a symlink to it)."""
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        libdir = sysconfig.get_config_var("LIBDIR")
        return os.path.realpath(os.path.join(libdir, sysconfig.get_config_var("INSTSONAME")))
    return os.path.realpath(sys.executable)


def native_markers() -> dict[str, list[tuple[int, int]]]:
    """{marker name: [(site, semaphore), ...]} of provider `python` in marker_elf()."""
    try:
        return rel_uprobe.stapsdt_notes(marker_elf(), provider="python")
    except KeyError:  # no .note.stapsdt section at all
        return {}


def has_native_markers() -> bool:
    return all(m in native_markers() for m in NATIVE)


def source_lines(path: Path) -> dict[str, tuple[int, int]]:
    """{function: (its `def` line, the line of its one `return`)} of `path`."""
    out = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef) and node.name in CALLS:
            (ret,) = [n for n in ast.walk(node) if isinstance(n, ast.Return)]
            out[node.name] = (node.lineno, ret.lineno)
    return out


def test_the_interpreter_has_semaphore_gated_native_markers():
    markers = native_markers()
    assert all(m in markers for m in NATIVE), (
        f"{marker_elf()} has no provider `python` markers {NATIVE} (found {sorted(markers)}): "
        "not built --with-dtrace?"
    )
    for name in NATIVE:
        assert markers[name] and all(sema for _, sema in markers[name]), (name, markers[name])


def test_native_markers_and_pyusdt_in_one_bpftrace_session(tmp_path):
    assert has_native_markers(), f"{marker_elf()}: no native markers"
    exe = marker_elf()
    names = " || ".join(f'str(arg1) == "{f}"' for f in CALLS)
    pnames = " || ".join(f'str(arg0) == "{f}"' for f in CALLS)
    # native: arg0 file, arg1 function, arg2 line; pyusdt: arg0 function, arg1 file,
    # arg2 first line, arg4 (PY_RETURN) the return value's repr. Counted in maps (printf
    # per event would outrun bpftrace's perf buffer), printed when the target exits.
    program = f"""
usdt:{exe}:python:function__entry /{names}/ {{ @n_entry[str(arg1), str(arg0), arg2] = count(); }}
usdt:{exe}:python:function__return /{names}/ {{ @n_return[str(arg1), str(arg0), arg2] = count(); }}
usdt:PYUSDT:pyusdt:PY_START /{pnames}/ {{ @p_start[str(arg0), str(arg1), arg2] = count(); }}
usdt:PYUSDT:pyusdt:PY_RETURN /{pnames}/ {{
    @p_return[str(arg0), str(arg1), arg2] = count(); @value[str(arg0), str(arg4)] = count(); }}
"""
    script = tmp_path / TARGET.name
    script.write_text(TARGET.read_text())
    args = [str(CALLS["native_alpha"]), str(CALLS["native_beta"])]
    r = trace(
        program,
        script,
        ["PY_START", "PY_RETURN"],
        cwd=tmp_path,
        args=args,
        env=base_env(),
        bt_env={"BPFTRACE_STRLEN": "120"},
    )
    assert r.returncode == 0, r.stderr
    assert r.bt_returncode == 0, r.bt_stderr

    events: Counter[tuple[str, ...]] = Counter()
    values: dict[str, Counter[str]] = {f: Counter() for f in CALLS}
    for ln in r.output.splitlines():
        if not (m := MAP_LINE.match(ln)):
            continue
        name, key, n = m[1], m[2].split(", "), int(m[3])
        if name == "@value":
            values[key[0]][key[1]] += n
        else:
            events[(name, *key)] += n
    lines = source_lines(script)
    path = str(script)
    expected = Counter()
    for func, n in CALLS.items():
        def_line, return_line = lines[func]
        expected[("@n_entry", func, path, str(def_line))] = n
        expected[("@n_return", func, path, str(return_line))] = n
        expected[("@p_start", func, path, str(def_line))] = n
        expected[("@p_return", func, path, str(def_line))] = n
    assert events == expected, (r.output[-2000:], r.bt_stderr)
    # pyusdt also has the values: native_alpha(i) returns i + 1, native_beta(i) i * 2.
    assert values["native_alpha"] == Counter(str(i + 1) for i in range(CALLS["native_alpha"]))
    assert values["native_beta"] == Counter(str(i * 2) for i in range(CALLS["native_beta"]))
