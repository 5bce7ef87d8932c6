"""The bounded repr of values: what bpftrace reads for PY_RETURN equals Python's own
`repr()`, whole when it fits in the bound (PYUSDT_REPR_MAX - 1 bytes: 255 by default),
else cut at a character boundary with "..."."""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import base_env
from gated import trace

SCRIPT = Path(__file__).parent / "scripts" / "bounded_values.py"
CHUNK = 127  # bpftrace reads CHUNK bytes per str() with BPFTRACE_STRLEN=128


def expected(v: object, repr_max: int) -> bytes:
    """What the probe should carry for `v` (without the NUL)."""
    try:
        full = repr(v).encode()
    except Exception as exc:
        full = f"<repr failed: {type(exc).__name__}>".encode()
    if len(full) < repr_max:
        return full
    end = repr_max - 4
    while end > 0 and (full[end] & 0xC0) == 0x80:
        end -= 1
    return full[:end] + b"..."


@pytest.mark.parametrize("repr_max", [None, 1024, 16], ids=["default", "1024", "16"])
def test_bounded_reprs_match_python(tmp_path, repr_max):
    env = base_env() if repr_max is None else base_env(PYUSDT_REPR_MAX=str(repr_max))
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
        want = [expected(v, repr_max) for v in bv.VALUES]
        assert len(seen) == len(want), (len(seen), t.output[:2000], t.bt_stderr)
        for i, (got, exp) in enumerate(zip(seen, want, strict=True)):
            # Function reprs hold addresses, which differ between the two processes.
            got, exp = (re.sub(rb"0x[0-9a-f]+", b"0xADDR", x) for x in (got, exp))
            assert got == exp, (i, got[:200], exp[:200], len(got), len(exp))
    finally:
        shutil.rmtree(d, ignore_errors=True)
