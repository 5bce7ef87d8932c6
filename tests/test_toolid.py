"""Tool ids: with ids 3, 4 and 5 all taken by other tools, an attached tracer leaves
pyusdt inert (one verbose line, no crash), and it claims the first id that is freed."""

from __future__ import annotations

from conftest import attach_bpftrace, base_env, finish, go, need_bpftrace, readline_raw, spawn

TARGET = """\
import sys, time
import pyusdt
M = sys.monitoring
for tool in (3, 4, 5):
    M.use_tool_id(tool, f"other-{tool}")
def marker():
    pass
print("READY", flush=True)
assert sys.stdin.readline() == "go\\n"
deadline = time.monotonic() + 60
while "PY_START" not in pyusdt.status()["attached"]:
    assert time.monotonic() < deadline, "no tracer"
    time.sleep(0.005)
# Twenty watcher polls (PYUSDT_CHECK_MSEC=10) with the tracer attached and no free id.
time.sleep(0.2)
st = pyusdt.status()
print("inert", st["tool_id"], st["enabled"], [M.get_tool(t) for t in (3, 4, 5)], flush=True)
marker()
M.free_tool_id(4)
assert pyusdt.wait_for_tracer(60, ["PY_START"])
st = pyusdt.status()
print("claimed", st["tool_id"], st["enabled"], M.get_tool(4), flush=True)
for _ in range(3):
    marker()
"""


def test_no_free_tool_id_stays_inert_then_claims_a_freed_one(tmp_path):
    need_bpftrace()
    script = tmp_path / "toolid_target.py"
    script.write_text(TARGET)
    target = spawn(script, env=base_env(PYUSDT_VERBOSE="1"))
    assert readline_raw(target.stdout) == "READY\n"
    bt = attach_bpftrace(
        target.pid,
        'usdt:PYUSDT:pyusdt:PY_START /str(arg0) == "marker"/ { @calls = count(); }',
    )
    go(target)
    out, err = finish(target)
    bt_out, bt_err = finish(bt)
    assert target.returncode == 0, err
    lines = out.splitlines()
    assert lines[0] == "inert None [] ['other-3', 'other-4', 'other-5']", out
    assert lines[1] == "claimed 4 ['PY_START'] pyusdt", out
    # Only the three calls made once an id was free fired the probe.
    assert "@calls: 3" in bt_out, bt_out + bt_err
    no_tool = [ln for ln in err.splitlines() if "no free sys.monitoring tool id" in ln]
    assert no_tool == [
        "pyusdt: no free sys.monitoring tool id (3, 4, 5) in interpreter 0; "
        "staying inert until one is free"
    ], err
    assert "pyusdt: enabled PY_START (interpreter 0, tool id 4)" in err.splitlines(), err
