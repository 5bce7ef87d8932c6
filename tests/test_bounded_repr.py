"""The bounded repr of values: what bpftrace reads for PY_RETURN equals Python's own
`repr()` with PYUSDT_REPR=full, and by default (`safe`) that same text for the values
whose repr() is pure C and `object.__repr__`'s for the others (inside containers too);
whole when it fits in the bound (PYUSDT_REPR_MAX - 1 bytes: 255 by default), else cut
at a character boundary with "..."."""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
import types
from pathlib import Path

import pytest
from conftest import base_env
from gated import trace

SCRIPT = Path(__file__).parent / "scripts" / "bounded_values.py"
CHUNK = 127  # bpftrace reads CHUNK bytes per str() with BPFTRACE_STRLEN=128


# Types whose repr() the default mode calls or makes itself: pure C, no Python code.
PURE_C = (
    str,
    bytes,
    bytearray,
    int,
    float,
    complex,
    bool,
    type(None),
    type(...),
    type(NotImplemented),
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodDescriptorType,
)


def safe_repr(v: object, inside: tuple[int, ...] = ()) -> str:
    """The default mode's text for `v`: repr() where it is pure C, exact list, tuple and
    dict of such texts, else `object.__repr__(v)`."""
    t = type(v)
    if t in (list, tuple, dict):
        open_, close = {list: "[]", tuple: "()", dict: "{}"}[t]
        if not v:
            return open_ + close
        if id(v) in inside:
            return open_ + "..." + close
        inside = (*inside, id(v))
        if t is dict:
            items = [safe_repr(k, inside) + ": " + safe_repr(x, inside) for k, x in v.items()]
        else:
            items = [safe_repr(x, inside) for x in v]
        one = "," if t is tuple and len(v) == 1 else ""
        return open_ + ", ".join(items) + one + close
    if t in PURE_C or (isinstance(v, type) and t.__repr__ is type.__repr__):
        return repr(v)
    # The target runs the values' module as __main__; the test imports it as `bv`.
    return object.__repr__(v).replace("<bv.", "<__main__.", 1)


def expected(v: object, repr_max: int, mode: str = "full") -> bytes:
    """What the probe should carry for `v` (without the NUL)."""
    try:
        full = (repr(v) if mode == "full" else safe_repr(v)).encode()
    except Exception as exc:
        full = f"<repr failed: {type(exc).__name__}>".encode()
    if len(full) < repr_max:
        return full
    end = repr_max - 4
    while end > 0 and (full[end] & 0xC0) == 0x80:
        end -= 1
    return full[:end] + b"..."


@pytest.mark.parametrize("mode", ["full", "safe"])
@pytest.mark.parametrize("repr_max", [None, 1024, 16], ids=["default", "1024", "16"])
def test_bounded_reprs_match_python(tmp_path, repr_max, mode):
    env = base_env() if repr_max is None else base_env(PYUSDT_REPR_MAX=str(repr_max))
    env.pop("PYUSDT_REPR", None)
    if mode == "full":
        env["PYUSDT_REPR"] = "full"
    repr_max = repr_max or 256
    chunks_per_value = repr_max // CHUNK + 1
    d = Path(tempfile.mkdtemp(prefix="pyusdt-", dir="/tmp"))
    try:
        script = d / "bv.py"
        shutil.copy(SCRIPT, script)
        reads = " ".join(
            f'printf("%lu\\t{i}\\t%s\\n", $t, str(arg4 + {i * CHUNK}));'
            for i in range(chunks_per_value)
        )
        program = (
            f'usdt:PYUSDT:pyusdt:PY_RETURN /str(arg0) == "ret" && str(arg1) == "{script}"/ '
            f"{{ $t = nsecs; {reads} }}"
        )
        t = trace(
            program,
            script,
            ["PY_RETURN"],
            cwd=tmp_path,
            env=env,
            bt_env={"BPFTRACE_STRLEN": "128"},
        )
        assert t.returncode == 0, t.stderr
        assert t.stderr == ""
        chunks: dict[int, dict[int, bytes]] = {}
        for ln in t.output.encode("utf-8", "surrogateescape").split(b"\n"):
            f = ln.split(b"\t", 2)
            if len(f) == 3 and f[0].isdigit():
                chunks.setdefault(int(f[0]), {})[int(f[1])] = f[2]
        seen = []
        for _, parts in sorted(chunks.items()):
            text = b""
            for i in range(chunks_per_value):
                text += parts[i]
                if len(parts[i]) < CHUNK:
                    break
            seen.append(text)
        sys.path.insert(0, str(d))
        try:
            import bv  # noqa: PLC0415  (the values, built the same way as in the target)
        finally:
            sys.path.remove(str(d))
        want = [expected(v, repr_max, mode) for v in bv.VALUES]
        assert len(seen) == len(want), (len(seen), t.output[:2000], t.bt_stderr)
        for i, (got, exp) in enumerate(zip(seen, want, strict=True)):
            # Function reprs hold addresses, which differ between the two processes.
            got, exp = (re.sub(rb"0x[0-9a-f]+", b"0xADDR", x) for x in (got, exp))
            assert got == exp, (i, got[:200], exp[:200], len(got), len(exp))
    finally:
        shutil.rmtree(d, ignore_errors=True)
