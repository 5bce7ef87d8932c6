"""Tests for `pyusdt-trace -p PID`, `pyusdt-trace --ps`, the attach-once probe form, the
sudo user the target runs as, RLIMIT_MEMLOCK and a trace without pyusdt's own start-up
events (pyusdt/trace.py, pyusdt/_trace_boot.py), with a real bpftrace.
"""

from __future__ import annotations

import os
import pwd
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from conftest import (
    BPFTRACE,
    LIB,
    attach_bpftrace,
    base_env,
    finish,
    go,
    need_bpftrace,
    readline_raw,
    spawn,
)

SCRIPTS = Path(__file__).parent / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

from interp_sema import Semaphores  # noqa: E402

REAL_LIB = os.path.realpath(LIB)
READY = 'BEGIN { printf("READY\\n"); } '
COUNT = 'usdt:PYUSDT:pyusdt:PY_START /str(arg0) == "marker_fn"/ { @calls = count(); }'

# Imports pyusdt, then on each line from stdin calls marker_fn 3 times (on "go", once its
# PY_START probe is enabled); exits at end of input.
TARGET = """\
import sys
import pyusdt

def marker_fn(i):
    return i

print("loaded", flush=True)
for line in sys.stdin:
    if line == "go\\n" and not pyusdt.wait_for_tracer(60, ["PY_START"]):
        sys.exit("probes were not enabled")
    for i in range(3):
        marker_fn(i)
    print("round done", flush=True)
"""

TINY = """\
def f(x):
    return x


f(1)
"""

# Every probe, one line each: timestamp|probe|pid|function|file|arg2 (sorted by time, as
# events from different CPUs can reach bpftrace's output out of order).
ALL_EVENTS = " ".join(
    f'usdt:PYUSDT:pyusdt:{name} {{ printf("%lu|%s|%d|%s|%s|%d\\n", nsecs, probe, pid,'
    f" str(arg0), str(arg1), arg2); }}"
    for name in ("PY_START", "PY_RESUME", "PY_RETURN", "PY_YIELD", "CALL", "LINE")
)
TINY_EVENTS = [
    ("PY_START", "<module>", 1),
    ("LINE", "<module>", 1),
    ("LINE", "<module>", 5),
    ("CALL", "<module>", 1),
    ("PY_START", "f", 1),
    ("LINE", "f", 2),
    ("PY_RETURN", "f", 1),
    ("PY_RETURN", "<module>", 1),
]


def trace_cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", "from pyusdt.trace import main; main()", *args]


def env() -> dict[str, str]:
    e = base_env()
    for name in ("PYUSDT_VERBOSE", "SUDO_UID", "SUDO_GID", "SUDO_USER"):
        e.pop(name, None)
    return e


def run_trace(*args: str, cwd: Path | str, env_extra: dict[str, str] | None = None):
    return subprocess.run(
        trace_cmd(*args),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**env(), **(env_extra or {})},
    )


def start_trace(*args: str) -> subprocess.Popen:
    """pyusdt-trace in its own session (signals only from us), stdout/stderr piped."""
    return subprocess.Popen(
        trace_cmd(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
        cwd="/",  # not a source checkout's pyusdt/
        start_new_session=True,
    )


def wait_ready(trace: subprocess.Popen) -> None:
    assert trace.stdout is not None
    while (line := readline_raw(trace.stdout)) != "READY\n":
        if not line:
            out, err = finish(trace)
            raise AssertionError(f"pyusdt-trace did not attach: {out} {err}")


def events(output: str) -> list[tuple[str, str, str, str, int]]:
    """(probe spec, pid, function, file, arg2) of the event lines, in time order."""
    rows = [ln.split("|") for ln in output.splitlines() if ln.count("|") == 5]
    rows.sort(key=lambda r: int(r[0]))
    return [(r[1], r[2], r[3], r[4], int(r[5])) for r in rows]


def start_target(workdir: Path, name: str = "target.py") -> subprocess.Popen:
    (workdir / name).write_text(TARGET)
    target = spawn(workdir / name, env=env())
    assert target.stdout is not None
    assert readline_raw(target.stdout) == "loaded\n"
    return target


# -- -p PID --------------------------------------------------------------------------------------


def test_attach_counts_once_and_exits_with_target(workdir):
    need_bpftrace()
    target = start_target(workdir)
    hit = 'usdt:PYUSDT:pyusdt:PY_START /str(arg0) == "marker_fn"/ { printf("hit %s\\n", probe); }'
    trace = start_trace("-p", str(target.pid), "-e", READY + hit)
    wait_ready(trace)
    go(target)
    assert target.stdin is not None
    target.stdin.close()
    target.stdin = None
    out, err = finish(target)
    assert (out, err, target.returncode) == ("round done\n", "", 0)
    out, err = finish(trace)  # ends by itself, as the target has
    assert trace.returncode == 0, err
    spec = f"usdt:/proc/{target.pid}/root{REAL_LIB}:pyusdt:PY_START"
    assert [ln for ln in out.splitlines() if ln.startswith("hit")] == [f"hit {spec}"] * 3
    assert "RLIMIT_MEMLOCK" not in err


def test_attach_sigint_flushes_and_leaves_target_running(workdir):
    need_bpftrace()
    target = start_target(workdir)
    try:
        trace = start_trace("-p", str(target.pid), "-e", READY + COUNT)
        wait_ready(trace)
        go(target)
        assert target.stdout is not None
        assert readline_raw(target.stdout) == "round done\n"
        trace.send_signal(signal.SIGINT)
        out, err = finish(trace)
        assert trace.returncode == 0, err
        assert "@calls: 3\n" in out
        assert target.poll() is None  # still running, untraced now
        assert target.stdin is not None
        target.stdin.write("untraced\n")
        target.stdin.flush()
        assert readline_raw(target.stdout) == "round done\n"
    finally:
        if target.stdin is not None:
            target.stdin.close()
            target.stdin = None
        finish(target)
    assert target.returncode == 0


def test_attach_errors(workdir):
    need_bpftrace()
    plain = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=-1)
    try:
        gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)  # fmt: skip
        dead = int(gone.stdout)
        cases = {
            dead: f"pyusdt-trace: no such process: {dead}\n",
            plain.pid: f"pyusdt-trace: process {plain.pid} has not loaded pyusdt (no"
            f" libpyusdt*.so in /proc/{plain.pid}/maps; run it with `python -m pyusdt` or"
            " `import pyusdt`)\n",
        }
        for pid, message in cases.items():
            if pid == dead and os.path.exists(f"/proc/{dead}"):
                continue  # the pid was reused meanwhile
            r = run_trace("-p", str(pid), "-e", COUNT, cwd=workdir)
            assert (r.returncode, r.stdout, r.stderr) == (2, "", message)
    finally:
        plain.kill()
        plain.wait()
    for args in (["-p", "x", "-e", COUNT], ["-p", "1", "-e", COUNT, "--", "a.py"],
                 ["-p", "1", "--wait", "1", "-e", COUNT]):  # fmt: skip
        r = run_trace(*args, cwd=workdir)
        assert r.returncode == 2 and "usage: pyusdt-trace" in r.stderr, args
        assert r.stderr.startswith("pyusdt-trace: ") and "Traceback" not in r.stderr


def in_other_mount_namespace(workdir: Path) -> tuple[subprocess.Popen, str]:
    """A target that loads pyusdt from a path that exists only in its own mount namespace
    (the site directory bind-mounted on an empty directory), as in a container."""
    site = os.path.dirname(os.path.dirname(REAL_LIB))
    mnt = tempfile.mkdtemp(prefix="pyusdt-ns-")
    (workdir / "ns_target.py").write_text(f"import sys\nsys.path.insert(0, {mnt!r})\n" + TARGET)
    target = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         'mount --bind "$1" "$2" && exec "$3" "$4"', "sh", site, mnt, sys.executable,
         str(workdir / "ns_target.py")],
        stdin=-1, stdout=-1, stderr=-1, text=True, env=env(),
    )  # fmt: skip
    assert target.stdout is not None
    assert readline_raw(target.stdout) == "loaded\n", finish(target)
    return target, mnt


def test_attach_in_other_mount_namespace(workdir):
    need_bpftrace()
    target, mnt = in_other_mount_namespace(workdir)
    try:
        lib = os.path.join(mnt, "pyusdt", os.path.basename(REAL_LIB))
        with open(f"/proc/{target.pid}/maps") as f:
            assert lib in f.read()
        assert not os.path.exists(lib)  # not in this namespace: only /proc/PID/root has it
        trace = start_trace("-p", str(target.pid), "-e", READY + COUNT)
        wait_ready(trace)
        go(target)
        assert target.stdin is not None
        target.stdin.close()
        target.stdin = None
        out, err = finish(target)
        assert (out, err, target.returncode) == ("round done\n", "", 0)
        out, err = finish(trace)
        assert trace.returncode == 0, err
        assert "@calls: 3\n" in out
    finally:
        if target.poll() is None:
            target.kill()
            target.wait()
        os.rmdir(mnt)


# -- --ps ----------------------------------------------------------------------------------------


def ps_row(pid: int) -> list[str]:
    r = run_trace("--ps", cwd="/")
    assert r.returncode == 0 and r.stderr == ""
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["PID", "PYTHON", "PROBES", "COMMAND"]
    rows = [ln.split(None, 3) for ln in lines[1:]]
    assert str(os.getpid()) in [row[0] for row in rows]  # this pytest has pyusdt loaded
    found = [row for row in rows if row[0] == str(pid)]
    assert len(found) == 1, r.stdout
    return found[0]


def test_ps(workdir):
    need_bpftrace()
    version = "{}.{}{}".format(*sys.version_info[:2], "t" if sysconfig.get_config_var(
        "Py_GIL_DISABLED") else "")  # fmt: skip
    target = start_target(workdir, "ps_target.py")
    ns_target, mnt = in_other_mount_namespace(workdir)
    try:
        command = f"{sys.executable} {workdir / 'ps_target.py'}"
        assert ps_row(target.pid) == [str(target.pid), version, "-", command]
        bt = attach_bpftrace(
            target.pid, "usdt:PYUSDT:pyusdt:CALL {} usdt:PYUSDT:pyusdt:PY_START {}"
        )
        ns_lib = f"/proc/{ns_target.pid}/root{mnt}/pyusdt/{os.path.basename(REAL_LIB)}"
        ns_bt = subprocess.Popen(
            [BPFTRACE, "-p", str(ns_target.pid), "-e", f"{READY} usdt:{ns_lib}:pyusdt:LINE {{}}"],
            stdout=-1, stderr=-1, text=True,
        )  # fmt: skip
        wait_ready(ns_bt)
        assert ps_row(target.pid)[:3] == [str(target.pid), version, "PY_START,CALL"]
        assert ps_row(ns_target.pid)[:3] == [str(ns_target.pid), version, "LINE"]
        # A semaphore raised with no uprobe on its sites (as a SIGKILLed bcc leaves it) is
        # marked: pyusdt keeps that probe off.
        sema = Semaphores(target.pid, REAL_LIB)
        try:
            sema.add("LINE", 1)
            assert ps_row(target.pid)[2] == "PY_START,CALL,LINE(no-uprobe)"
            sema.add("LINE", -1)
        finally:
            sema.close()
        assert ps_row(target.pid)[2] == "PY_START,CALL"
        for t in (target, ns_target):
            assert t.stdin is not None
            t.stdin.close()
            t.stdin = None
            finish(t)
        for b in (bt, ns_bt):
            finish(b)
    finally:
        for t in (target, ns_target):
            if t.poll() is None:
                t.kill()
                t.wait()
        os.rmdir(mnt)


# -- run mode: no pyusdt start-up events, no RLIMIT_MEMLOCK error --------------------------------


def test_trace_has_only_the_programs_events(workdir):
    need_bpftrace()
    (workdir / "tiny.py").write_text(TINY)
    r = run_trace("-e", ALL_EVENTS, "--", "tiny.py", cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # in particular no "couldn't set RLIMIT_MEMLOCK"
    got = events(r.stdout)
    pid = got[0][1]
    file = str(workdir / "tiny.py")[:63]  # bpftrace's str() reads 64 bytes
    assert got == [
        (f"usdt:/proc/{pid}/root{REAL_LIB}:pyusdt:{probe}", pid, fn, file, n)
        for probe, fn, n in TINY_EVENTS
    ]


def test_python_m_pyusdt_has_only_the_programs_events(workdir):
    """`python -m pyusdt --wait` under a plain bpftrace: no runpy frame of its start-up."""
    need_bpftrace()
    (workdir / "tiny.py").write_text(TINY)
    target = subprocess.Popen(
        [sys.executable, "-m", "pyusdt", "--wait=60", "tiny.py"],
        cwd=workdir, stdout=-1, stderr=-1, text=True, env=env(),
    )  # fmt: skip
    bt = attach_bpftrace(target.pid, ALL_EVENTS)
    assert finish(target) == ("", "")
    out, _ = finish(bt)
    got = events(out)
    file = str(workdir / "tiny.py")[:63]  # bpftrace's str() reads 64 bytes
    assert [(probe.rsplit(":", 1)[1], fn, f, n) for probe, _, fn, f, n in got] == [
        (probe, fn, file, n) for probe, fn, n in TINY_EVENTS
    ]


# -- run mode under sudo: the program runs as the invoking user ---------------------------------


def _unreachable(path: str) -> tuple[str, str] | None:
    """(first ancestor directory another user cannot enter, its child on the way to path)."""
    parts = Path(path).parts
    for k in range(1, len(parts)):
        d = os.path.join(*parts[:k])
        if not os.stat(d).st_mode & stat.S_IXOTH:
            return d, parts[k]
    return None


def as_sudo_user_cmd(args: list[str]) -> list[str]:
    """`args` in a private mount namespace in which the interpreter, the venv and pyusdt
    can be reached by other users: a directory they cannot enter on the way (e.g. /root of
    a pyenv under /root) is covered with a tmpfs that holds just the needed entry."""
    needed = [os.path.realpath(sys.executable), sys.base_prefix, sys.prefix, REAL_LIB]
    covers: dict[str, set[str]] = {}
    for path in needed:
        blocked = _unreachable(os.path.realpath(path))
        if blocked:
            covers.setdefault(blocked[0], set()).add(blocked[1])
    script = ["set -e"]
    for k, (d, children) in enumerate(covers.items()):
        t = f"/tmp/.pyusdt-cover-{os.getpid()}-{k}"
        script.append(f"mkdir -p {t} && mount -t tmpfs -o mode=755 tmpfs {t}")
        for child in sorted(children):
            src = os.path.join(d, child)
            make = "mkdir" if os.path.isdir(src) else "touch"
            script.append(f"{make} {t}/{child} && mount --bind {src} {t}/{child}")
        script.append(f"mount --move {t} {d} && rmdir {t}")
    script.append('exec "$@"')
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            "\n".join(script), "sh", *args]  # fmt: skip


def test_program_runs_as_sudo_user(workdir):
    need_bpftrace()
    nobody = pwd.getpwnam("nobody")
    groups = sorted(os.getgrouplist(nobody.pw_name, nobody.pw_gid))
    # No Python-level function is called (os.environ["HOME"] would be): one PY_START.
    show = (
        "import os; print(os.getuid(), os.getgid(), sorted(os.getgroups()),"
        " os.environ._data[b'HOME'].decode())"
    )
    count = "usdt:PYUSDT:pyusdt:PY_START { @starts = count(); }"
    sudo = {"SUDO_UID": str(nobody.pw_uid), "SUDO_GID": str(nobody.pw_gid), "HOME": "/root"}
    results = {}
    for extra in ([], ["--as-root"]):
        r = subprocess.run(
            as_sudo_user_cmd(trace_cmd(*extra, "-e", count, "--", "-c", show)),
            cwd="/", capture_output=True, text=True, timeout=120, env={**env(), **sudo},
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert r.stderr == ""
        lines = [ln for ln in r.stdout.splitlines() if ln and not ln.startswith("Attaching")]
        results[tuple(extra)] = lines
    assert results[()] == [f"{nobody.pw_uid} {nobody.pw_gid} {groups} {nobody.pw_dir}",
                           "@starts: 1"]  # fmt: skip
    root_groups = sorted(os.getgroups())
    assert results[("--as-root",)] == [f"0 0 {root_groups} /root", "@starts: 1"]
