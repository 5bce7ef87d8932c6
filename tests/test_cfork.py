"""C-level fork (issue 9): children forked with libc's fork() directly, as uWSGI and other
C code do, so Python's os.fork hooks never run in them.

A C-forked child of a program that imported pyusdt (in the main interpreter, or first in
a subinterpreter) must exit exactly as it does without pyusdt, and be traceable on its
own by `bpftrace -p CHILD`. A parent whose main thread is blocked in os.waitpid after a
fork stays traceable from another thread. With probes enabled, gdb unwinds from a probe
site through pyusdt's frames into the interpreter's. (The free-threaded 200-fork stress
is in test_freethreaded_fork.py, collected on free-threaded builds only.)
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import attach_bpftrace, base_env, finish, go, need_bpftrace, readline_raw

SCRIPTS = Path(__file__).parent / "scripts"
PANIC = ("panicked", "threads should not terminate", "RUST_BACKTRACE")
# CPython 3.13.0 (gh-126914): pyusdt does not enter subinterpreters there.
IS_3130 = sys.version_info[:3] == (3, 13, 0)
# Newer CPythons (3.14.7 and 3.15 here) warn at exit about subinterpreters left open, as
# the fork child's is; older ones exit silently.
SUB_LEFT_OPEN = (
    "<sys>:0: RuntimeWarning: remaining subinterpreters; close them with Interpreter.close()\n"
)

WORK_PROGRAM = """
usdt:PYUSDT:pyusdt:PY_START /str(arg0) == "child_work" || str(arg0) == "thread_work"/ {
  printf("%d %s\\n", pid, str(arg0));
}
"""


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def start(script: Path, *args: str) -> subprocess.Popen:
    """`python script args` in its own session, so teardown can kill what it forked."""
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=base_env(),
        cwd=script.parent,
        start_new_session=True,
    )


def kill_group(proc: subprocess.Popen) -> None:
    """Kills whatever is left of `proc`'s session (a hung child, say)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def expect_line(proc: subprocess.Popen, prefix: str) -> str:
    """Reads the target's stdout up to the next line starting with `prefix`."""
    assert proc.stdout is not None
    seen = []
    while True:
        line = readline_raw(proc.stdout)
        if not line:
            _, err = finish(proc)
            raise AssertionError(f"no {prefix!r} line; got {seen}\nstderr:{err}")
        if line.startswith(prefix):
            return line[len(prefix) :].strip()
        seen.append(line)


def events(bt_output: str) -> list[tuple[int, str]]:
    return [(int(p), f) for p, f in re.findall(r"^(\d+) (\w+)$", bt_output, re.M)]


def no_panic(*texts: str) -> None:
    for text in texts:
        for word in PANIC:
            assert word not in text, text


# -- a C-forked child exits as without pyusdt, and is traceable --------------------------

CFORK_SCRIPT = """\
import ctypes, os, sys
sys.path.insert(0, {scripts!r})
mode, where, traced = sys.argv[1:4]
sub = None
if where == "sub":
    # The first import of pyusdt happens in a subinterpreter; main never imports it.
    from interp_compat import Interp
    sub = Interp()
    sub.run("import pyusdt" if mode == "pyusdt" else "import json")
elif mode == "pyusdt":
    import pyusdt
libc = ctypes.CDLL(None, use_errno=True)

def work(n):
    return sum(i * i for i in range(n))

def child_work():
    return 1

IN_SUB = '''
import pyusdt
def child_work():
    return 1
if not pyusdt.wait_for_tracer(20, ["PY_START"]):
    raise RuntimeError("events not enabled in the child's subinterpreter")
for _ in range(3):
    child_work()
'''

print("parent", work(10), flush=True)
pid = libc.fork()
if pid == 0:
    print("child", work(100), flush=True)
    if traced == "1":
        print("CHILD", os.getpid(), flush=True)
        if sys.stdin.readline() != "go\\n":
            sys.exit(5)
        if sub is not None:
            sub.run(IN_SUB)
        else:
            if not pyusdt.wait_for_tracer(20, ["PY_START"]):
                print("enabled:", pyusdt.status()["enabled"], file=sys.stderr)
                sys.exit(4)
            for _ in range(3):
                child_work()
    elif sub is not None:
        sub.run("x = sum(range(10))")
    print("child done", flush=True)
    sys.exit(3)
_, status = os.waitpid(pid, 0)
print("status", os.waitstatus_to_exitcode(status), flush=True)
if sub is not None:
    sub.close()
print("parent done", flush=True)
"""


def cfork_script(tmp: Path) -> Path:
    return write(tmp / "cfork.py", CFORK_SCRIPT.format(scripts=str(SCRIPTS)))


def run_untraced(script: Path, mode: str, where: str) -> tuple[int, str, str]:
    proc = start(script, mode, where, "0")
    try:
        proc.stdin.close()
        proc.stdin = None
        out, err = finish(proc, timeout=60)
    finally:
        kill_group(proc)
    return proc.returncode, out, err


@pytest.mark.parametrize("where", ["main", "sub"])
def test_cfork_child_exits_as_without_pyusdt(tmp_path, where):
    script = cfork_script(tmp_path)
    plain = run_untraced(script, "plain", where)
    assert plain[:2] == (
        0,
        "parent 285\nchild 328350\nchild done\nstatus 3\nparent done\n",
    ), plain  # the reference itself
    assert plain[2] in (("", SUB_LEFT_OPEN) if where == "sub" else ("",)), plain
    code, out, err = run_untraced(script, "pyusdt", where)
    no_panic(out, err)
    # Same exit status of the child (no SIGABRT: "status -6") and of the parent, same output.
    assert (code, out, err) == plain


@pytest.mark.parametrize(
    "where",
    [
        "main",
        pytest.param(
            "sub",
            marks=pytest.mark.skipif(IS_3130, reason="subinterpreters not traced on 3.13.0"),
        ),
    ],
)
def test_cfork_child_traceable(tmp_path, where):
    need_bpftrace()
    target = start(cfork_script(tmp_path), "pyusdt", where, "1")
    bt = None
    try:
        child = int(expect_line(target, "CHILD "))
        assert child != target.pid
        bt = attach_bpftrace(child, WORK_PROGRAM)
        go(target)
        out, err = finish(target, timeout=60)
        bt_out, bt_err = finish(bt, timeout=60)  # bpftrace exits with the child
    finally:
        kill_group(target)
        if bt is not None and bt.poll() is None:
            bt.kill()
            bt.communicate()
    no_panic(out, err, bt_out)
    assert target.returncode == 0, err
    assert out.splitlines()[-3:] == ["child done", "status 3", "parent done"], (out, err)
    # The child's own events, seen by a tracer of the child alone, exactly.
    assert events(bt_out) == [(child, "child_work")] * 3, (bt_err, err)


# -- the parent stays traceable while its main thread waits in os.waitpid ---------------

WAITPID_SCRIPT = """\
import ctypes, os, select, sys, threading, time
import pyusdt
how = sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)
r, w = os.pipe()
main_tid = threading.get_native_id()

# wait4 (glibc's waitpid) is syscall 61 on x86_64, 260 on aarch64.
WAIT4 = {"x86_64": "61", "aarch64": "260"}[os.uname().machine]

def main_in_wait4():
    with open(f"/proc/self/task/{main_tid}/syscall") as f:
        return f.read().split()[0] == WAIT4

def thread_work():
    return 1

def second_thread():
    for _ in range(1000):  # until main blocks in waitpid (bounded)
        if main_in_wait4():
            break
        time.sleep(0.01)
    print("BLOCKED", main_in_wait4(), flush=True)
    ok = sys.stdin.readline() == "go\\n" and pyusdt.wait_for_tracer(20, ["PY_START"])
    if ok:
        for _ in range(5):
            thread_work()
    print("THREAD", ok, main_in_wait4(), flush=True)
    os.write(w, b"x")  # releases the child, which releases main

pid = os.fork() if how == "os.fork" else libc.fork()
if pid == 0:
    os.close(w)
    select.select([r], [], [], 60)
    os._exit(7)
os.close(r)
print("PARENT", os.getpid(), flush=True)
t = threading.Thread(target=second_thread)
t.start()  # after the fork: the child is single-threaded
_, status = os.waitpid(pid, 0)
t.join()
print("CHILD-EXIT", os.waitstatus_to_exitcode(status), flush=True)
"""


@pytest.mark.parametrize("how", ["os.fork", "ctypes"])
def test_parent_blocked_in_waitpid_stays_traceable(tmp_path, how):
    need_bpftrace()
    target = start(write(tmp_path / "waitpid.py", WAITPID_SCRIPT), how)
    bt = None
    try:
        parent = int(expect_line(target, "PARENT"))
        assert parent == target.pid
        assert expect_line(target, "BLOCKED") == "True"
        bt = attach_bpftrace(parent, WORK_PROGRAM)  # attached after the fork
        go(target)
        # The thread's calls ran while main was still in waitpid.
        assert expect_line(target, "THREAD") == "True True"
        assert expect_line(target, "CHILD-EXIT") == "7"
        out, err = finish(target, timeout=60)
        bt_out, bt_err = finish(bt, timeout=60)
    finally:
        kill_group(target)
        if bt is not None and bt.poll() is None:
            bt.kill()
            bt.communicate()
    no_panic(out, err)
    assert target.returncode == 0, err
    assert events(bt_out) == [(parent, "thread_work")] * 5, bt_err


# -- gdb unwinds from a probe site into the interpreter ---------------------------------

GDB_TARGET = """\
import os, sys
sys.path.insert(0, {scripts!r})
import pyusdt
from interp_sema import Semaphores

# Raise PY_START's semaphore as a tracer attaching does (no uprobe: gdb's breakpoint
# at the site is the only thing there).
sems = Semaphores(os.getpid(), pyusdt.lib_path())
sems.add("PY_START", 1)
if not pyusdt.wait_for_tracer(30, ["PY_START"]):
    sys.exit("PY_START was not enabled")

def probe_me():
    return 1

probe_me()
print("done", flush=True)
"""

INTERPRETER_FRAME = re.compile(r"_PyEval|PyObject_Vectorcall|call_instrumentation")


def test_gdb_backtrace_from_probe_site_reaches_interpreter(tmp_path):
    gdb = shutil.which("gdb") or "/usr/bin/gdb"
    assert os.path.exists(gdb), "gdb is not installed (apt-get install -y gdb)"
    assert os.geteuid() == 0, "the target raises its semaphore through /proc/self/mem"
    script = write(tmp_path / "gdb_target.py", GDB_TARGET.format(scripts=str(SCRIPTS)))
    proc = subprocess.Popen(
        [
            gdb,
            "-nx",
            "-batch",
            "-iex",
            "set auto-load python-scripts off",
            "-ex",
            "set breakpoint pending on",
            "-ex",
            "set debuginfod enabled off",
            "-ex",
            "break __pyusdt_site_PY_START",
            "-ex",
            "run",
            "-ex",
            "bt 60",
            "-ex",
            "kill",
            "--args",
            sys.executable,
            str(script),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=base_env(),
        cwd=tmp_path,
        start_new_session=True,
    )
    try:
        out, err = finish(proc, timeout=120)
    finally:
        kill_group(proc)
    frames = re.findall(r"^#(\d+)\s+(?:0x[0-9a-f]+ in )?(\S+)", out, re.M)
    assert frames, f"no backtrace (the probe did not fire?)\n{out}\n{err}"
    names = [name for _, name in frames]
    text = f"{out}\n{err}"
    # The breakpoint hit at the site, in pyusdt (gdb names the function holding it),
    assert "pyusdt" in names[0] and "py_start" in names[0].lower(), text
    # its caller is pyusdt's callback, and the unwinder got from there through the
    # interpreter up to main, every frame a known function (a wrong CFA at the site gives
    # "?? ()" frames of stack garbage, which may even name an interpreter symbol).
    assert len(names) > 2 and "pyusdt" in names[1], text
    first = next((i for i, n in enumerate(names) if INTERPRETER_FRAME.search(n)), None)
    assert first is not None, text
    bottom = next((i for i, n in enumerate(names) if n in ("Py_RunMain", "Py_BytesMain")), None)
    assert bottom is not None and bottom > first, text
    assert "??" not in names[: bottom + 1], text
