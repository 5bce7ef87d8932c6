"""Tests for the `pyusdt-trace` console script (pyusdt/trace.py), with a real bpftrace.

Tests that need root and bpftrace skip without them, unless PYUSDT_REQUIRE_BPFTRACE=1,
which turns the skip into a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyusdt.trace import rewrite_program

MARKER = """\
import sys
def marker_fn(i):
    return i
def other_fn():
    pass
for i in range(3):
    marker_fn(i)
    other_fn()
print("target done")
sys.exit(7)
"""

HIT = 'pyusdt:PY_START /str(arg0) == "marker_fn"/ { printf("hit %s\\n", str(arg0)); }'
LONG = "import time\nprint('started', flush=True)\nwhile True:\n    time.sleep(0.05)\n"


def require_bpftrace() -> None:
    """Skip without root + bpftrace + tracefs; fail instead if PYUSDT_REQUIRE_BPFTRACE=1."""
    if shutil.which("bpftrace") is None:
        reason = "bpftrace is not installed"
    elif os.geteuid() != 0:
        reason = "bpftrace needs root"
    elif not (
        os.path.isdir("/sys/kernel/tracing/events")
        or os.path.isdir("/sys/kernel/debug/tracing/events")
    ):
        reason = "tracefs is not mounted"
    else:
        return
    if os.environ.get("PYUSDT_REQUIRE_BPFTRACE") == "1":
        pytest.fail(f"PYUSDT_REQUIRE_BPFTRACE=1 but {reason}")
    pytest.skip(reason)


def trace_cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", "from pyusdt.trace import main; main()", *args]


def run_trace(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("PYUSDT_VERBOSE", None)
    return subprocess.run(
        trace_cmd(*args), cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )


def pids_running(marker: str) -> list[int]:
    """Processes whose command line mentions `marker` (a unique file name)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            found.append(int(entry))
    return found


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "marker.py").write_text(MARKER)
    return tmp_path


# -- without bpftrace --------------------------------------------------------------------------


def test_rewrite_program():
    lib = "/site/pyusdt/libpyusdt.cpython-312-x86_64-linux-gnu.so"
    for spec in (
        "usdt:./libpyusdt.so:",
        "usdt:PYUSDT:",
        "usdt:/old/build/libpyusdt.cpython-313-x86_64-linux-gnu.so:",
        "usdt:*:",
        "U:libpyusdt.so:",
    ):
        program = f"{spec}pyusdt:PY_START, {spec}pyusdt:LINE {{ @[str(arg0)] = count(); }}"
        rewritten = rewrite_program(program, lib)
        kind = spec.split(":")[0]
        assert rewritten == (
            f"{kind}:{lib}:pyusdt:PY_START, {kind}:{lib}:pyusdt:LINE {{ @[str(arg0)] = count(); }}"
        )
    other = 'usdt:/usr/lib/libfoo.so:foo:bar { printf("PYUSDT:x\\n"); }'
    assert rewrite_program(other, lib) == other
    assert rewrite_program("usdt:PYUSDT:pyusdt:CALL {}", "/a b/libpyusdt.so") == (
        'usdt:"/a b/libpyusdt.so":pyusdt:CALL {}'
    )


def test_missing_bpftrace(workdir):
    (workdir / "never_started_1.py").write_text(LONG)
    r = run_trace(
        "--bpftrace",
        "/nonexistent/bpftrace",
        "-e",
        "BEGIN {}",
        "--",
        "never_started_1.py",
        cwd=workdir,
    )
    assert r.returncode != 0
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and "bpftrace" in lines[0] and "/nonexistent/bpftrace" in lines[0]
    assert pids_running("never_started_1.py") == []


def test_usage_errors(workdir):
    for args in (
        [],
        ["-e", "BEGIN {}"],
        ["--bogus"],
        ["--wait", "x", "-e", "BEGIN {}", "--", "a.py"],
    ):
        r = run_trace(*args, cwd=workdir)
        assert r.returncode == 2, args
        assert "usage: pyusdt-trace" in r.stderr and "Traceback" not in r.stderr


def test_help(workdir):
    r = run_trace("--help", cwd=workdir)
    assert r.returncode == 0
    assert r.stdout.startswith("usage: pyusdt-trace")
    assert "usdt:PYUSDT:" in r.stdout
    for text in ("-p PID", "--ps", "--as-root", "SUDO_UID", "/proc/PID/root/", "RLIMIT_MEMLOCK"):
        assert text in r.stdout, text


def test_console_script_installed():
    script = Path(sys.executable).parent / "pyusdt-trace"
    if not script.exists():
        pytest.skip("pyusdt-trace console script is not next to this interpreter")
    r = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.startswith("usage: pyusdt-trace")


# -- with bpftrace -------------------------------------------------------------------------------


@pytest.mark.parametrize("lib", ["./libpyusdt.so", "PYUSDT"])
def test_trace_marker(workdir, lib):
    require_bpftrace()
    r = run_trace("-e", f"usdt:{lib}:{HIT}", "--", "marker.py", cwd=workdir)
    assert r.returncode == 7, r.stderr
    # The target and bpftrace share stdout, so lines may interleave: count, don't split.
    assert r.stdout.count("hit ") == 3, r.stdout + r.stderr
    assert r.stdout.count("hit marker_fn") == 3, r.stdout + r.stderr
    assert "target done" in r.stdout


def test_trace_script_file_and_module_target(workdir):
    require_bpftrace()
    (workdir / "count.bt").write_text(
        'usdt:PYUSDT:pyusdt:PY_START /str(arg0) == "marker_fn"/ { @calls = count(); }\n'
    )
    r = run_trace("count.bt", "--", "-m", "marker", cwd=workdir)
    assert r.returncode == 7, r.stderr
    assert "@calls: 3" in r.stdout


def test_bad_bpftrace_program_kills_target(workdir):
    require_bpftrace()
    (workdir / "never_finishes_2.py").write_text(LONG)
    r = run_trace(
        "-e", "usdt:PYUSDT:pyusdt:PY_START { nonsense( }", "--", "never_finishes_2.py", cwd=workdir
    )
    assert r.returncode != 0
    assert "ERROR" in r.stderr
    assert "started" not in r.stdout  # the target never ran untraced
    assert pids_running("never_finishes_2.py") == []


def test_target_error_before_tracing(workdir):
    require_bpftrace()
    r = run_trace("-e", f"usdt:PYUSDT:{HIT}", "--", "missing.py", cwd=workdir)
    assert r.returncode == 2
    assert "can't open file" in r.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_is_forwarded_and_trace_flushed(workdir, sig):
    require_bpftrace()
    (workdir / f"long_{sig.name}.py").write_text(LONG)
    program = 'usdt:PYUSDT:pyusdt:CALL /str(arg0) == "<module>"/ { @calls = count(); }'
    env = dict(os.environ)
    env.pop("PYUSDT_VERBOSE", None)
    proc = subprocess.Popen(
        trace_cmd("-e", program, "--", f"long_{sig.name}.py"),
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # no controlling terminal: signals come only from us
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        for line in proc.stdout:
            if "started" in line or time.monotonic() > deadline:
                break
        time.sleep(0.3)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -sig, err
    assert "@calls:" in out
    assert pids_running(f"long_{sig.name}.py") == []
