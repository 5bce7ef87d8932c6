"""Owns PYUSDT_FILTER / `python -m pyusdt --only` (README, "Filters"): a filtered trace has
exactly the events of the matching code (a real bpftrace with no predicate of its own,
against a plain sys.monitoring recorder of that code's file), and the DISABLE pyusdt
returns elsewhere never disturbs another tool's disabled locations, also across
another tool's sys.monitoring.restart_events()."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

from conftest import attach_bpftrace, base_env, finish, go, readline_raw, spawn
from gated import trace
from test_new_probes import REF_TOOL, SCRIPTS

from pyusdt import PROBES

REF_EVENTS = tuple(p for p in PROBES if p not in ("CALL", "LINE"))


def counting_program(probes: tuple[str, ...]) -> str:
    """Counts every event by probe, thread (0 = main) and function: no filter in bpftrace."""
    return "\n".join(
        f'usdt:PYUSDT:pyusdt:{p} {{ @n["{p}", tid == pid ? 0 : 1, str(arg0)] = count(); }}'
        for p in probes
    )


def parse(output: str) -> Counter:
    got: Counter = Counter()
    for ln in output.splitlines():
        if ln.startswith("@n["):
            key, _, n = ln.rpartition(": ")
            probe, thread, fn = key[3:-1].split(", ", 2)
            got[(probe, int(thread), fn)] = int(n)
    return got


def reference(script: Path, ref_file: Path, tmp: Path) -> Counter:
    out = tmp / "reference.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "record_pairs.py"), str(REF_TOOL), str(out), str(script)],
        capture_output=True,
        text=True,
        env=base_env(PYUSDT_REF_FILE=str(ref_file)),
        cwd=script.parent,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    import json

    return Counter((r[0], r[1], r[2]) for r in json.loads(out.read_text()))


def test_filtered_trace_is_exactly_the_matching_code(bpftrace: str, tmp_path: Path) -> None:
    for name in ("filtered.py", "hot.py"):
        shutil.copy(SCRIPTS / name, tmp_path / name)
    script, hot = tmp_path / "filtered.py", tmp_path / "hot.py"
    want = reference(script, hot, tmp_path)
    # hot raises (RAISE, PY_UNWIND); the handling is in the main script.
    assert {k[0] for k in want} == set(REF_EVENTS) - {
        "PY_THROW",
        "RERAISE",
        "C_RAISE",
        "EXCEPTION_HANDLED",
    }
    t = trace(
        counting_program(PROBES),
        script,
        list(PROBES),
        cwd=tmp_path,
        env=base_env(PYUSDT_FILTER="hot.*"),
    )
    assert t.returncode == 0, t.stderr + t.bt_stderr
    assert t.stdout == "filtered done\n" and t.stderr == ""
    got = parse(t.output)
    assert got, t.output
    # CALL and LINE are not recorded by the reference: only their functions are checked.
    assert {k[2] for k in got if k[0] in ("CALL", "LINE")} <= {
        "<module>",
        "step",
        "helper",
        "gen",
        "fail",
    }
    assert Counter({k: n for k, n in got.items() if k[0] in REF_EVENTS}) == want
    # Only hot's code: busy() and work() of the main script never reach the probes.
    assert not {k for k in got if k[2] in ("busy", "work")}


OTHER_TOOL = """\
import sys
import pyusdt
import hot

mon = sys.monitoring
TOOL = 2
seen = {}


def on_start(code, offset):
    seen[code.co_name] = seen.get(code.co_name, 0) + 1
    return mon.DISABLE


def cold():
    return 1


mon.use_tool_id(TOOL, "other")
mon.register_callback(TOOL, mon.events.PY_START, on_start)
mon.set_events(TOOL, mon.events.PY_START)
for _ in range(100):
    cold()
print("before", seen.get("cold"), flush=True)
sys.stdin.readline()
if not pyusdt.wait_for_tracer(60, ["PY_START"]):
    sys.exit("not traced")
for i in range(100):
    cold()
    hot.step(i)
print("traced", seen.get("cold"), flush=True)
mon.restart_events()
for i in range(100):
    cold()
    hot.step(i)
print("restarted", seen.get("cold"), seen.get("step"), flush=True)
"""


def test_other_tools_disabled_locations_kept(bpftrace: str, tmp_path: Path) -> None:
    """Tool 2 disables its PY_START everywhere; pyusdt (filter `hot.*`, PY_START attached)
    disables cold code for itself. Tool 2 sees `cold` once until it calls
    restart_events(), then once more (and `step` likewise); pyusdt counts hot's code
    exactly throughout (after restart_events() it is called again in cold code and
    disables it again)."""
    shutil.copy(SCRIPTS / "hot.py", tmp_path / "hot.py")
    script = tmp_path / "other_tool.py"
    script.write_text(OTHER_TOOL)
    target = spawn(script, env=base_env(PYUSDT_FILTER="hot.*"))
    assert target.stdout is not None
    assert readline_raw(target.stdout) == "before 1\n"
    prog = "usdt:PYUSDT:pyusdt:PY_START { @n[str(arg0)] = count(); }"
    bt = attach_bpftrace(target.pid, prog)
    go(target)
    out, err = finish(target)
    bt_out, _ = finish(bt)
    assert target.returncode == 0, err
    assert err == ""
    assert out == "traced 1\nrestarted 2 2\n"
    n = {k: v for k, v in (ln.split(": ") for ln in bt_out.splitlines() if ln.startswith("@n["))}
    assert n == {"@n[step]": "200", "@n[helper]": "200"}, bt_out


ONLY = """\
import sys
import pyusdt
import hot

print(pyusdt.status()["enabled"], sys.argv, flush=True)
sys.stdin.readline()
if not pyusdt.wait_for_tracer(60, ["PY_START"]):
    sys.exit("not traced")
for i in range(30):
    hot.step(i)
    len(str(i))
"""


def test_only_option(bpftrace: str, tmp_path: Path) -> None:
    """`python -m pyusdt --only=GLOBS script args` traces as PYUSDT_FILTER=GLOBS would
    (it re-executes itself once with it set), with the script's own argv."""
    shutil.copy(SCRIPTS / "hot.py", tmp_path / "hot.py")
    script = tmp_path / "only.py"
    script.write_text(ONLY)
    target = spawn(script, "a1", python_flags=("-m", "pyusdt", "--only=*/hot.py"), env=base_env())
    assert target.stdout is not None
    assert readline_raw(target.stdout) == f"[] ['{script}', 'a1']\n"
    prog = "usdt:PYUSDT:pyusdt:PY_START { @n[str(arg0)] = count(); }"
    bt = attach_bpftrace(target.pid, prog)
    go(target)
    out, err = finish(target)
    bt_out, _ = finish(bt)
    assert target.returncode == 0 and err == "" and out == "", err
    n = {k: v for k, v in (ln.split(": ") for ln in bt_out.splitlines() if ln.startswith("@n["))}
    assert n == {"@n[step]": "30", "@n[helper]": "30"}, bt_out


def test_pyusdt_trace_only(bpftrace: str, tmp_path: Path) -> None:
    """`pyusdt-trace --only GLOBS`: the program runs with PYUSDT_FILTER=GLOBS."""
    shutil.copy(SCRIPTS / "hot.py", tmp_path / "hot.py")
    script = tmp_path / "main.py"
    script.write_text("import hot\nfor i in range(25):\n    hot.step(i)\n    len(str(i))\n")
    exe = Path(sys.executable).parent / "pyusdt-trace"
    proc = subprocess.run(
        [
            str(exe),
            "--only",
            "hot.step",
            "-e",
            "usdt:PYUSDT:pyusdt:PY_START { @n[str(arg0)] = count(); }",
            "--",
            str(script),
        ],
        capture_output=True,
        text=True,
        env=base_env(),
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    n = [ln for ln in proc.stdout.splitlines() if ln.startswith("@n[")]
    assert n == ["@n[step]: 25"], proc.stdout
