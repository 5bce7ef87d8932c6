"""Owns the pairing rule (README, "Pairing starts and ends"): per thread,
PY_START + PY_RESUME + PY_THROW = PY_RETURN + PY_YIELD + PY_UNWIND, and each end closes
the frame activation opened last on its thread. Checked with a real bpftrace keeping a
per-thread stack, against a plain sys.monitoring recorder run in a separate process, for
tests/scripts/pairs.py (generators, asyncio, exceptions crossing frames, `with`,
KeyboardInterrupt, two threads), and for a tracer attached in the middle of a deep call
stack."""

from __future__ import annotations

import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import attach_bpftrace, base_env, finish, go, readline_raw, spawn
from gated import trace
from test_new_probes import reference

SCRIPTS = Path(__file__).parent / "scripts"
STARTS = ("PY_START", "PY_RESUME", "PY_THROW")
ENDS = ("PY_RETURN", "PY_YIELD", "PY_UNWIND")
MAP = re.compile(r"^@(\w+)\[(\d+)\]: (-?\d+)$", re.M)


def pairing_program(path: str) -> str:
    """Per thread (0 = main, 1 = other): starts, ends, ends whose start was never seen
    (@orphan), ends that do not close the activation opened last (@mismatch), and the
    depth left at exit. An activation is identified by its code's first line."""
    pred = f'/str(arg1) == "{path}"/'
    parts = []
    for p in STARTS:
        parts.append(
            f"usdt:PYUSDT:pyusdt:{p} {pred} {{ $t = tid == pid ? 0 : 1; "
            "@stk[$t, @d[$t]] = arg2; @d[$t] = @d[$t] + 1; @starts[$t] = count(); }"
        )
    for p in ENDS:
        parts.append(
            f"usdt:PYUSDT:pyusdt:{p} {pred} {{ $t = tid == pid ? 0 : 1; @ends[$t] = count(); "
            "if (@d[$t] > 0) { @d[$t] = @d[$t] - 1; "
            "if (@stk[$t, @d[$t]] != arg2) { @mismatch[$t] = count(); } "
            "delete(@stk[$t, @d[$t]]); } else { @orphan[$t] = count(); } }"
        )
    return "\n".join(parts)


def maps(output: str) -> dict[str, dict[int, int]]:
    res: dict[str, dict[int, int]] = {}
    for name, key, val in MAP.findall(output):
        res.setdefault(name, {})[int(key)] = int(val)
    return res


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # A short path: bpftrace 0.17 refuses string literals over 63 bytes.
    d = Path(tempfile.mkdtemp(prefix="pyusdt-", dir="/tmp"))
    yield d
    shutil.rmtree(d)


def test_pairs_per_thread(bpftrace: str, short_dir: Path, tmp_path: Path) -> None:
    script = short_dir / "pairs.py"
    shutil.copy(SCRIPTS / "pairs.py", script)
    want = reference(script, tmp_path, STARTS + ENDS)
    per_thread: dict[int, Counter] = {}
    for k, n in want.items():
        per_thread.setdefault(k[1], Counter())[k[0]] += n
    assert set(per_thread) == {0, 1}
    for c in per_thread.values():
        # The rule holds in the ground truth, and every kind of start and end occurs.
        assert sum(c[p] for p in STARTS) == sum(c[p] for p in ENDS)
        assert all(c[p] > 0 for p in STARTS + ENDS), c

    t = trace(pairing_program(str(script)), script, list(STARTS + ENDS), cwd=tmp_path)
    assert t.returncode == 0, t.stderr + t.bt_stderr
    assert t.stdout == "pairs done\n" and t.stderr == ""
    m = maps(t.output)
    for th, c in per_thread.items():
        assert m["starts"][th] == sum(c[p] for p in STARTS)
        assert m["ends"][th] == sum(c[p] for p in ENDS)
        assert m["d"][th] == 0
    assert "orphan" not in m and "mismatch" not in m, m


DEEP = """\
import sys
import pyusdt


def down(n):
    if n == 0:
        print("deep", flush=True)
        sys.stdin.readline()
        if not pyusdt.wait_for_tracer(60, ["PY_START", "PY_RETURN", "PY_UNWIND"]):
            sys.exit("not traced")
        raise ValueError("unwinds the stack")
    return down(n - 1)


def main():
    try:
        down(DEPTH)
    except ValueError:
        pass
    for _ in range(3):
        down_ok(5)


def down_ok(n):
    return n if n == 0 else down_ok(n - 1)


main()
"""


def test_attach_mid_stack(bpftrace: str, short_dir: Path) -> None:
    """Attached 40 frames deep: the frames already running end without a start the
    tracer saw (40 PY_UNWIND of `down` and `main`'s PY_RETURN... exactly the frames on
    the stack); a tool drops ends at depth 0, and from then on pairs are exact."""
    depth = 40
    script = short_dir / "deep.py"
    script.write_text(DEEP.replace("DEPTH", str(depth)))
    target = spawn(script, env=base_env())
    assert target.stdout is not None
    assert readline_raw(target.stdout) == "deep\n"
    bt = attach_bpftrace(target.pid, pairing_program(str(script)))
    go(target)
    out, err = finish(target)
    bt_out, bt_err = finish(bt)
    assert target.returncode == 0, err
    assert err == "" and out == ""
    m = maps(bt_out)
    # On the stack at attach: down x (depth + 1), main, <module>. `down` frames unwind
    # (ValueError); main returns, then <module>.
    orphans = depth + 1 + 2
    # After: 3 x down_ok(5) = 18 activations, each paired.
    assert m["orphan"] == {0: orphans}, m
    assert m["starts"] == {0: 18}, m
    assert m["ends"] == {0: 18 + orphans}, m
    assert m["d"] == {0: 0}, m
    assert "mismatch" not in m, m
