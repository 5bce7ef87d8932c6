"""Owns PYUSDT_REPR: by default (`safe`) no user-defined Python code runs for a value or
callable repr (a counting `__repr__` stays at 0, a `__repr__` taking a lock the traced
code holds cannot deadlock), and values whose repr() could run Python code carry
`object.__repr__`'s text, inside containers too; `full` calls repr() for them."""

from __future__ import annotations

import json
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

SCRIPT = Path(__file__).parent / "scripts" / "repr_safety.py"
ALL_PROBES = ["PY_START", "PY_RESUME", "PY_RETURN", "PY_YIELD", "CALL", "LINE"]


CHUNK = 63  # bpftrace's default str() reads 63 bytes; a repr is read in 3 pieces


def program(path: str) -> str:
    """All six probes; for the three that carry a repr, one line per CHUNK-byte piece
    of its first 3 * CHUNK bytes: nsecs, kind, function, piece index, piece. The
    piece is last: read past the repr's end it can hold any byte but NUL."""
    f = f'str(arg1) == "{path}"'

    def out(kind: str) -> str:
        return "$t = nsecs; " + " ".join(
            f'printf("%lu\\t{kind}\\t%s\\t{i}\\t%s\\n", $t, str(arg0), str(arg4 + {i * CHUNK}));'
            for i in range(3)
        )

    return f"""
usdt:PYUSDT:pyusdt:PY_START /{f}/ {{ @s = count(); }}
usdt:PYUSDT:pyusdt:PY_RESUME /{f}/ {{ @r = count(); }}
usdt:PYUSDT:pyusdt:LINE /{f}/ {{ @l = count(); }}
usdt:PYUSDT:pyusdt:PY_RETURN /{f}/ {{ {out("R")} }}
usdt:PYUSDT:pyusdt:PY_YIELD /{f}/ {{ {out("Y")} }}
usdt:PYUSDT:pyusdt:CALL /{f}/ {{ {out("C")} }}
"""


def events(t: Traced) -> list[tuple[str, str, str]]:
    """(kind, function, repr) in time order; a piece shorter than CHUNK bytes ends the
    repr (the pieces after it were read past its NUL)."""
    pieces: dict[tuple[int, str, str], dict[int, str]] = {}
    for ln in t.output.splitlines():
        f = ln.split("\t", 4)
        if len(f) == 5 and f[0].isdigit() and f[3] in ("0", "1", "2"):
            pieces.setdefault((int(f[0]), f[1], f[2]), {})[int(f[3])] = f[4]
    rows = []
    for (_ns, kind, func), parts in sorted(pieces.items()):
        text = ""
        for i in range(3):
            text += parts[i]
            if len(parts[i].encode("utf-8", "surrogateescape")) < CHUNK:
                break
        rows.append((kind, func, text))
    return rows


@pytest.fixture
def script() -> Iterator[Path]:
    # A short path: bpftrace 0.17 refuses string literals over 63 bytes.
    d = Path(tempfile.mkdtemp(prefix="pyusdt-", dir="/tmp"))
    dst = d / "rs.py"
    shutil.copy(SCRIPT, dst)
    yield dst
    shutil.rmtree(d)


def run(script: Path, mode: str, tmp_path: Path, repr_mode: str | None) -> tuple[Traced, object]:
    out = tmp_path / f"{mode}.json"
    env = base_env()
    env.pop("PYUSDT_REPR", None)
    if repr_mode is not None:
        env["PYUSDT_REPR"] = repr_mode
    t = trace(
        program(str(script)),
        script,
        ALL_PROBES,
        args=[mode, str(out)],
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    assert t.returncode == 0, t.stderr + t.bt_stderr
    assert t.stderr == ""
    return t, json.loads(out.read_text())


OBJ = r"<__main__\.{} object at 0x[0-9a-f]+>"


def in_list(*items: str) -> str:
    return r"\[" + ", ".join(items) + r"\]"


def in_dict(key: str, value: str) -> str:
    return r"\{" + key + ": " + value + "}"


@pytest.mark.parametrize("repr_mode", [None, "safe", "bogus"])
def test_no_user_repr_runs_by_default(
    bpftrace: str, script: Path, tmp_path: Path, repr_mode: str | None
) -> None:
    t, counts = run(script, "count", tmp_path, repr_mode)
    assert counts == dict.fromkeys(counts, 0)
    ev = events(t)
    rets = [e[2] for e in ev if e[0] == "R" and e[1] == "ret"]
    assert len(rets) == 13, ev
    assert re.fullmatch(OBJ.format("Counting"), rets[0])
    assert re.fullmatch(OBJ.format("CountingInt"), rets[1])
    assert re.fullmatch(r"<set object at 0x[0-9a-f]+>", rets[6])
    assert re.fullmatch(in_list("1", OBJ.format("InList")), rets[8])
    assert re.fullmatch(in_dict(OBJ.format("InDict"), "'v'"), rets[11])
    assert re.fullmatch(r"<method object at 0x[0-9a-f]+>", rets[12])
    ylds = [e[2] for e in ev if e[0] == "Y"]
    assert len(ylds) == 2
    assert re.fullmatch(in_list(OBJ.format("Yielded")), ylds[1])
    calls = [e[2] for e in ev if e[0] == "C" and e[1] == "count"]
    assert any(re.fullmatch(OBJ.format("Called"), c) for c in calls), calls
    assert any(re.fullmatch(OBJ.format("CountingMeta"), c) for c in calls), calls
    assert "<class '__main__.Counting'>" in calls


def test_full_mode_calls_user_repr(bpftrace: str, script: Path, tmp_path: Path) -> None:
    t, counts = run(script, "count", tmp_path, "full")
    # Each kind of site reaches its __repr__ with PYUSDT_REPR=full (so the test above
    # would see it if the default did).
    assert all(n > 0 for n in counts.values()), counts
    rets = [e[2] for e in events(t) if e[0] == "R" and e[1] == "ret"]
    assert rets[0] == "counted"
    assert rets[8] == "[1, counted]"  # repr() of the list calls its items' __repr__


def test_repr_taking_a_held_lock_does_not_hang(bpftrace: str, script: Path, tmp_path: Path) -> None:
    # With repr() called, the first return would deadlock: the subprocess timeout of
    # run() turns that into a failure.
    t, done = run(script, "lock", tmp_path, None)
    assert done == "done"
    ev = events(t)
    rets = [e[2] for e in ev if e[0] == "R" and e[1] == "ret_locked"]
    assert len(rets) == 1 and re.fullmatch(OBJ.format("Locked"), rets[0]), ev
    assert re.fullmatch(in_list(OBJ.format("Locked")), [e[2] for e in ev if e[0] == "Y"][0])
    assert any(re.fullmatch(OBJ.format("Locked"), e[2]) for e in ev if e[0] == "C"), ev


@pytest.mark.parametrize("repr_mode", [None, "full"])
def test_texts(bpftrace: str, script: Path, tmp_path: Path, repr_mode: str | None) -> None:
    t, want = run(script, "texts", tmp_path, repr_mode)
    want = want["full" if repr_mode == "full" else "safe"]
    assert all(len(w.encode()) < 3 * CHUNK for w in want), want
    got = [e[2] for e in events(t) if e[0] == "R" and e[1] == "ret"]
    assert got == want


def test_bad_setting_is_logged(tmp_path: Path) -> None:
    env = base_env(PYUSDT_REPR="Sometimes", PYUSDT_VERBOSE="1")
    p = subprocess.run(
        [sys.executable, "-c", "import pyusdt"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert 'pyusdt: PYUSDT_REPR="Sometimes" is not safe or full; using safe' in p.stderr
    ok = subprocess.run(
        [sys.executable, "-c", "import pyusdt"],
        capture_output=True,
        text=True,
        env=base_env(PYUSDT_REPR=" FULL ", PYUSDT_VERBOSE="1"),
        cwd=tmp_path,
        timeout=60,
    )
    assert "PYUSDT_REPR" not in ok.stderr
