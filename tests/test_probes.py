"""Owns end-to-end probe correctness: all six probes, as seen by a real bpftrace, against
a reference sys.monitoring recorder run in a separate, untraced process."""

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
WORKLOAD = SCRIPTS / "workload.py"
# bpftrace 0.17 keeps str() buffers on the 512-byte BPF stack: three strings of 128
# (the file predicate, the function, the value) is what fits in one probe.
STRLEN = 128
# bpftrace >= 0.19 marks a str() it cut at STRLEN with a ".." trailer (the reference
# recorder cuts as bpftrace 0.17 does, without one): an empty trailer prints the same on
# both (the arm64 guest of matrix/arm64-suite runs trixie's bpftrace 0.23).
BT_ENV = {"BPFTRACE_STRLEN": str(STRLEN), "BPFTRACE_STR_TRUNC_TRAILER": ""}
REF_TOOL = 4
ADDR = re.compile(r"0x[0-9a-f]+")

START_LIKE = ("PY_START", "PY_RESUME")
VALUE_LIKE = ("PY_RETURN", "PY_YIELD", "CALL")


def program(path: str) -> str:
    """One tab-separated line per event of `path`'s code: NAME, args..., interp id."""
    pred = f'/str(arg1) == "{path}"/'
    parts = []
    for p in START_LIKE:
        parts.append(
            f"usdt:PYUSDT:pyusdt:{p} {pred} "
            f'{{ printf("{p}\\t%s\\t%d\\t%d\\t%d\\n", str(arg0), arg2, arg3, arg4); }}'
        )
    for p in VALUE_LIKE:
        parts.append(
            f"usdt:PYUSDT:pyusdt:{p} {pred} "
            f'{{ printf("{p}\\t%s\\t%d\\t%d\\t%s\\t%d\\n", '
            f"str(arg0), arg2, arg3, str(arg4), arg5); }}"
        )
    parts.append(
        f"usdt:PYUSDT:pyusdt:LINE {pred} "
        f'{{ printf("LINE\\t%s\\t%d\\t%d\\n", str(arg0), arg2, arg3); }}'
    )
    return "\n".join(parts)


def normalise(rec: tuple) -> tuple:
    return tuple(ADDR.sub("0xADDR", f) if isinstance(f, str) else f for f in rec)


def parse_bpftrace(output: str) -> tuple[list[tuple], Counter]:
    """Events (without the interpreter id) and a Counter of the interpreter ids."""
    events, interps = [], Counter()
    for ln in output.splitlines():
        f = ln.split("\t")
        if not f or f[0] not in START_LIKE + VALUE_LIKE + ("LINE",):
            continue
        name = f[0]
        if name in START_LIKE:
            assert len(f) == 5, ln
            events.append((name, f[1], int(f[2]), int(f[3])))
        elif name in VALUE_LIKE:
            assert len(f) == 6, ln
            events.append((name, f[1], int(f[2]), int(f[3]), f[4]))
        else:
            assert len(f) == 4, ln
            events.append((name, f[1], int(f[2])))
        interps[int(f[-1])] += 1
    return events, interps


def reference(script: Path, tmp: Path, python: str) -> tuple[list[tuple], str]:
    out = tmp / "reference.json"
    proc = subprocess.run(
        [
            python,
            str(SCRIPTS / "record_events.py"),
            str(REF_TOOL),
            str(STRLEN - 1),
            str(out),
            str(script),
        ],
        capture_output=True,
        text=True,
        env=base_env(),
        cwd=tmp,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return [tuple(r) for r in json.loads(out.read_text())], proc.stdout


def by_probe(events: list[tuple]) -> dict[str, Counter]:
    res: dict[str, Counter] = {}
    for e in events:
        res.setdefault(e[0], Counter())[normalise(e)] += 1
    return res


@pytest.fixture
def workload() -> Iterator[Path]:
    # A short path: bpftrace 0.17 refuses string literals over 63 bytes.
    d = Path(tempfile.mkdtemp(prefix="pyusdt-", dir="/tmp"))
    dst = d / "workload.py"
    shutil.copy(WORKLOAD, dst)
    assert len(str(dst).encode()) < 64, dst
    yield dst
    shutil.rmtree(d)


def test_all_probes_match_reference(bpftrace: str, workload: Path, tmp_path: Path) -> None:
    python = sys.executable
    ref_events, ref_stdout = reference(workload, tmp_path, python)
    probes = list(START_LIKE + VALUE_LIKE + ("LINE",))
    t = trace(
        program(str(workload)),
        workload,
        probes,
        python=python,
        cwd=tmp_path,
        bt_env=BT_ENV,
    )
    assert t.returncode == 0, t.stderr + t.bt_stderr
    assert t.stdout == ref_stdout  # the traced program behaves exactly like the reference
    assert t.stderr == ""
    assert "Lost" not in t.bt_stderr, t.bt_stderr
    got_events, interps = parse_bpftrace(t.output)
    assert set(interps) == {0}, interps

    got, want = by_probe(got_events), by_probe(ref_events)
    # Every probe fired, for code of every kind the workload has.
    assert set(want) == set(probes), sorted(want)
    names = {e[1] for e in ref_events}
    for fn in (
        "<module>",
        "main",
        "__init__",
        "deposit",
        "fee",
        "add",
        "outer",
        "inner",
        "count_up",
        "delegate",
        "double_later",
        "gather_some",
        "fail",
        "recover",
        "spread_out",
        "long_text",
    ):
        assert fn in names, fn
    for p in probes:
        missing = want[p] - got.get(p, Counter())
        extra = got.get(p, Counter()) - want[p]
        assert not missing and not extra, (
            f"{p}: missing {sorted(missing.items())[:10]}, extra {sorted(extra.items())[:10]}"
        )
