"""The extension loaded a second time in one interpreter (its entry removed from
sys.modules and imported again): the second copy stays passive, so events are not
doubled, and fork hooks are not registered twice (a second set used to deadlock fork)."""

from __future__ import annotations

from conftest import attach_bpftrace, finish, go, need_bpftrace, readline_raw, spawn

TARGET = """\
import os, sys
import pyusdt
first = pyusdt.libpyusdt
del sys.modules["pyusdt.libpyusdt"]
import pyusdt.libpyusdt as second
assert second is not first
def marker():
    pass
print("READY", flush=True)
assert sys.stdin.readline() == "go\\n"
assert pyusdt.wait_for_tracer(60, ["PY_START"])  # pyusdt.status is the first copy's
for _ in range(3):
    marker()
pid = os.fork()
if pid == 0:
    os._exit(0)
print("child", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
print("first", first.status()["enabled"], "second", second.status()["enabled"], flush=True)
"""


def test_second_copy_is_passive(tmp_path):
    need_bpftrace()
    script = tmp_path / "reload_target.py"
    script.write_text(TARGET)
    target = spawn(script, python_flags=("-W", "error::DeprecationWarning"))
    assert readline_raw(target.stdout) == "READY\n"
    bt = attach_bpftrace(
        target.pid, 'usdt:PYUSDT:pyusdt:PY_START /str(arg0) == "marker"/ { @calls = count(); }'
    )
    go(target)
    out, err = finish(target, timeout=60)
    bt_out, bt_err = finish(bt)
    assert target.returncode == 0, err
    assert err == ""
    assert out.splitlines() == ["child 0", "first ['PY_START'] second []"], out
    assert "@calls: 3" in bt_out, bt_out + bt_err
