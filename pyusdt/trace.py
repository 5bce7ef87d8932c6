"""`pyusdt-trace`: run a Python program under `python -m pyusdt` and trace it with bpftrace.

This file owns the `pyusdt-trace` console script. It starts the target as
`python -m pyusdt --wait=SECS ARGS...` (so the target's code only runs once bpftrace is
attached), fills the probe library's path into the bpftrace program, runs
`bpftrace -p PID`, forwards SIGINT/SIGTERM to the target and exits with its status.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

PROG = "pyusdt-trace"
DEFAULT_WAIT = 10.0
USAGE = (
    f"usage: {PROG} [--bpftrace PATH] [--wait SECS] (SCRIPT.bt | -e PROGRAM)"
    " [--] (script.py | -m module | -c code) [args...]"
)
HELP = f"""{USAGE}

Run a Python program with `python -m pyusdt` and trace it with `bpftrace -p PID`.
The program starts only once bpftrace is attached, and everything it does is traced.
Exits with the program's exit status, after bpftrace has printed everything.

In the bpftrace program, the probe library may be named as `usdt:PYUSDT:pyusdt:PROBE`,
`usdt:./libpyusdt.so:pyusdt:PROBE` (any path ending in libpyusdt*.so) or
`usdt:*:pyusdt:PROBE`; each is replaced by the absolute path of the library the target
loaded. Probes: PY_START, PY_RESUME, PY_RETURN, PY_YIELD, CALL, LINE (see the README).

options:
  -e PROGRAM        the bpftrace program text (instead of SCRIPT.bt)
  --bpftrace PATH   the bpftrace binary (default: bpftrace on PATH)
  --wait SECS       how long the target waits for bpftrace to attach before running
                    untraced (default {DEFAULT_WAIT:g})
  -h, --help        show this help

Everything after `--` (or after SCRIPT.bt / -e PROGRAM) is passed to `python -m pyusdt`.
Needs root (bpftrace does).

example:
  sudo {PROG} -e 'usdt:PYUSDT:pyusdt:PY_START {{ @[str(arg0)] = count(); }}' -- app.py
"""

# usdt:<lib>: or U:<lib>: where <lib> is PYUSDT, `*` / empty (with provider pyusdt), or
# any path whose file name is libpyusdt*.so (optionally quoted).
_PROBE_LIB_RE = re.compile(
    r"""(?<![\w$])(usdt|U):(?:PYUSDT|"[^"]*libpyusdt[^"/]*\.so"|[^\s:,{}"]*libpyusdt[^\s:,{}/"]*\.so)(?=:)"""
    r"""|(?<![\w$])(usdt|U):\*?(?=:pyusdt:)"""
)


# The target runs `python -m pyusdt ARGS`, except that pyusdt is loaded from this very
# package rather than looked up on sys.path: with `-m`, a `pyusdt/` directory in the
# current directory (a source checkout, say) would shadow the installed one.
_BOOTSTRAP = f"""\
import importlib.util, os, sys
if not sys.flags.safe_path:
    del sys.path[0]
_spec = importlib.util.spec_from_file_location(
    "pyusdt", {os.path.join(os.path.dirname(os.path.abspath(__file__)), "__init__.py")!r}
)
_pyusdt = importlib.util.module_from_spec(_spec)
sys.modules["pyusdt"] = _pyusdt
_spec.loader.exec_module(_pyusdt)
import pyusdt.__main__ as _main
if not sys.flags.safe_path:
    sys.path.insert(0, os.getcwd())
sys.argv[0] = _main.__file__
_main.main()
"""


class UsageError(Exception):
    pass


def _error(message: str) -> None:
    sys.stderr.write(f"{PROG}: {message}\n")
    sys.stderr.flush()


def rewrite_program(text: str, lib: str) -> str:
    """Put the absolute library path into every pyusdt probe spec of a bpftrace program."""
    if not re.fullmatch(r"[\w./+-]+", lib):
        lib = '"' + lib.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return _PROBE_LIB_RE.sub(lambda m: f"{m.group(1) or m.group(2)}:{lib}", text)


_PROBES = ("PY_START", "PY_RESUME", "PY_RETURN", "PY_YIELD", "CALL", "LINE")


def probes_used(program: str) -> list[str] | None:
    """The pyusdt probe names a (rewritten) program attaches to, or None if not plain names.

    With the names, the target starts as soon as exactly these are enabled; without
    (wildcards, say), it waits until the tracer's set of attached probes stops changing.
    """
    names = re.findall(r":pyusdt:([^\s,{/:]*)", program)
    if not names or any(name not in _PROBES for name in names):
        return None
    return sorted(set(names), key=_PROBES.index)


def parse_args(argv: list[str]) -> tuple[str, str | None, str | None, float, list[str]]:
    """Return (bpftrace, script_path, program_text, wait, python_args)."""
    bpftrace = "bpftrace"
    wait = DEFAULT_WAIT
    script = program = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if arg in ("-h", "--help"):
            sys.stdout.write(HELP)
            sys.exit(0)
        elif name in ("--bpftrace", "--wait") or arg == "-e":
            if not eq:
                if i + 1 >= len(argv):
                    raise UsageError(f"{arg} needs a value")
                i += 1
                value = argv[i]
            if arg == "-e":
                program = value
            elif name == "--bpftrace":
                bpftrace = value
            else:
                try:
                    wait = float(value)
                except ValueError:
                    wait = -1.0
                if not 0 <= wait < float("inf"):
                    raise UsageError(f"invalid --wait value: {value!r}")
        elif arg == "--":
            i += 1
            break
        elif arg.startswith("-") and arg != "-" and program is None and script is None:
            raise UsageError(f"unknown option: {arg}")
        elif program is None and script is None:
            script = arg
        else:
            break
        i += 1
    if program is None and script is None:
        raise UsageError("a bpftrace script or -e PROGRAM is required")
    python_args = argv[i:]
    if not python_args:
        raise UsageError("no Python program to run (give it after `--`)")
    return bpftrace, script, program, wait, python_args


def _find_bpftrace(name: str) -> str | None:
    if os.sep in name:
        return name if os.path.isfile(name) and os.access(name, os.X_OK) else None
    return shutil.which(name)


def _mapped_lib(pid: int) -> str | None:
    """The libpyusdt shared object mapped into process `pid`, if any yet."""
    try:
        with open(f"/proc/{pid}/maps") as maps:
            for line in maps:
                path = line.rstrip("\n").split(None, 5)[-1]
                if os.path.basename(path).startswith("libpyusdt") and ".so" in path:
                    return path
    except OSError:
        pass
    return None


def _wait_for_lib(child: subprocess.Popen, timeout: float) -> str | None:
    """Wait until the target has loaded the probe library; None if it exited first."""
    deadline = time.monotonic() + timeout
    while child.poll() is None:
        lib = _mapped_lib(child.pid)
        if lib is not None:
            return lib
        if time.monotonic() > deadline:
            break
        time.sleep(0.005)
    if child.poll() is None:
        # Could not see it (no /proc?): use the library this interpreter would load.
        import pyusdt

        return os.path.abspath(pyusdt.lib_path())
    return None


def _stop(proc: subprocess.Popen, sig: int, grace: float) -> None:
    """Send `sig` to proc if it still runs; SIGKILL it if it is still running after `grace`.

    The signal is repeated every half second meanwhile: bpftrace 0.17 now and then
    misses a SIGINT while it sits in epoll_wait, and a killed bpftrace prints nothing.
    """
    deadline = time.monotonic() + grace
    while proc.poll() is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            proc.kill()
            proc.wait()
            return
        try:
            proc.send_signal(sig)
            proc.wait(min(0.5, remaining))
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return


def _exit_like(returncode: int) -> None:
    """Exit with the target's status; if a signal killed it, die by the same signal."""
    sys.stdout.flush()
    sys.stderr.flush()
    if returncode < 0:
        sig = -returncode
        try:
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)
        except (OSError, ValueError):
            pass
        sys.exit(128 + sig)
    sys.exit(returncode)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    try:
        bpftrace_name, script, program, wait, python_args = parse_args(argv)
    except UsageError as exc:
        _error(str(exc))
        sys.stderr.write(f"{USAGE}\nTry '{PROG} --help' for more information.\n")
        sys.exit(2)

    bpftrace = _find_bpftrace(bpftrace_name)
    if bpftrace is None:
        _error(f"bpftrace not found: {bpftrace_name} (install bpftrace or pass --bpftrace PATH)")
        sys.exit(1)
    if os.geteuid() != 0:
        _error("bpftrace needs root: run this as root (e.g. with sudo)")
        sys.exit(1)
    if program is None:
        try:
            with open(script, encoding="utf-8") as f:
                program = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            _error(f"cannot read {script}: {exc.strerror or exc}")
            sys.exit(1)

    # Ctrl-C at a terminal reaches the target directly (same process group); anything else
    # sent to us is forwarded. bpftrace runs in its own process group so that it keeps
    # tracing until the target has finished, then flushes its output.
    child: subprocess.Popen | None = None

    def forward(signum, _frame):
        if child is None or child.poll() is not None:
            return
        if signum == signal.SIGINT:
            try:
                tty = os.open("/dev/tty", os.O_RDONLY)
                try:
                    if os.tcgetpgrp(tty) == os.getpgrp():
                        return  # the terminal sent it to the target too
                finally:
                    os.close(tty)
            except OSError:
                pass
        child.send_signal(signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)

    # Which probes to wait for can be known before the library's path is.
    probes = probes_used(rewrite_program(program, "/libpyusdt.so"))
    options = [f"--wait={wait:g}"] + ([f"--probes={','.join(probes)}"] if probes else [])
    child = subprocess.Popen([sys.executable, "-c", _BOOTSTRAP, *options, *python_args])
    tmpdir = None
    try:
        lib = _wait_for_lib(child, timeout=max(wait, 5.0))
        if lib is None:  # the target failed before loading pyusdt (it said why)
            _exit_like(child.wait())
        tmpdir = tempfile.mkdtemp(prefix="pyusdt-trace-")
        bt_file = os.path.join(tmpdir, os.path.basename(script) if script else "program.bt")
        with open(bt_file, "w", encoding="utf-8") as f:
            f.write(rewrite_program(program, lib))
        try:
            tracer = subprocess.Popen([bpftrace, "-p", str(child.pid), bt_file], process_group=0)
        except OSError as exc:
            _error(f"cannot run {bpftrace}: {exc.strerror or exc}")
            _stop(child, signal.SIGKILL, 1.0)
            sys.exit(1)

        while True:
            status = child.poll()
            if status is not None:
                break
            tracer_status = tracer.poll()
            if tracer_status is not None and tracer_status != 0:
                # bpftrace failed. If the target just exited, that was probably why.
                try:
                    status = child.wait(0.25)
                    break
                except subprocess.TimeoutExpired:
                    pass
                # A bad program, no permission, ...: bpftrace said why.
                _stop(child, signal.SIGTERM, 1.0)
                sys.exit(tracer_status if tracer_status > 0 else 1)
            time.sleep(0.01)

        # bpftrace -p exits when the target does; give it time to flush, then nudge it.
        try:
            tracer.wait(2.0)
        except subprocess.TimeoutExpired:
            _stop(tracer, signal.SIGINT, 5.0)
        _exit_like(status)
    finally:
        if child.poll() is None:
            _stop(child, signal.SIGKILL, 1.0)
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)


if __name__ == "__main__":
    main()
