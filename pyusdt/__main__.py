"""`python -m pyusdt`: run a script, module or code string exactly like `python` would.

This file owns the command-line runner. Importing the `pyusdt` package (which `-m pyusdt`
does first) loads the probes; the runner then reproduces what the interpreter itself does
for `python script.py`, `python -m module`, `python -c code`, `python dir/`, `python app.zip`
and `python -`: the same `sys.argv`, `sys.path[0]`, `__main__` globals, tracebacks and exit
status, so that tracing a program never changes how it behaves.
"""

from __future__ import annotations

import builtins
import importlib.machinery
import importlib.util
import io
import linecache
import marshal
import os
import runpy
import sys
import types
from collections.abc import Callable

import pyusdt

_PROG = "python -m pyusdt"
_DEFAULT_WAIT = 10.0
_USAGE = (
    f"usage: {_PROG} [--wait[=SECONDS] [--probes=NAMES]] [--only=GLOBS] [--help] [--version]"
    " [--lib] (script.py | dir | app.zip | -m module | -c code | -) [args...]"
)
_HELP = f"""{_USAGE}

Run a Python program with pyusdt's USDT probes loaded, exactly as `python` would run it
(same sys.argv, sys.path[0], __main__, tracebacks and exit status). Probes fire only while
a tracer such as bpftrace is attached (e.g. `bpftrace -p PID`, or use `pyusdt-trace`).

targets (everything from the target on is passed to the program):
  script.py         run a script file (also a directory or zip file with __main__.py)
  -m module         run a library module as a script (a package runs its __main__)
  -c code           run a code string
  -                 read the program from stdin

options (must come before the target):
  --wait[=SECONDS]  before running the target, wait until a tracer has attached and
                    events are enabled (default {_DEFAULT_WAIT:g} s); on timeout, run anyway
  --probes=NAMES    with --wait: wait until these probes (comma-separated, e.g.
                    PY_START,CALL) are all enabled, rather than until the tracer's set
                    of attached probes stops changing
  --only=GLOBS      trace only code whose module, qualname, module.qualname or file
                    matches one of these comma-separated globs (as PYUSDT_FILTER;
                    python -m pyusdt re-executes itself once with it set)
  --lib             print the path of the library holding the probes (for usdt:PATH:...)
  --version         print the pyusdt version
  -h, --help        show this help

environment:
  PYUSDT_CHECK_MSEC  longest time (ms) before an attached tracer is noticed (default 100)
  PYUSDT_FILTER      globs of the code to trace (see --only); other code costs nothing
  PYUSDT_REPR_MAX    bound in bytes of value/callable reprs given to probes (default 256)
  PYUSDT_VERBOSE=1   log attach/detach and enable/disable decisions to stderr
"""

# Frames whose globals are this dict are pyusdt's own and get cut from tracebacks.
_OWN_GLOBALS = globals()


def _usage_error(message: str | None = None) -> None:
    if message:
        sys.stderr.write(f"pyusdt: {message}\n")
    sys.stderr.write(f"{_USAGE}\nTry '{_PROG} --help' for more information.\n")
    sys.exit(2)


def _only(globs: str) -> None:
    """`--only=GLOBS`: the filter is read when the extension loads (it already has), so
    re-execute this same command line once with PYUSDT_FILTER set."""
    if not globs.strip(", "):
        _usage_error(f"invalid --only value: {globs!r}")
    if os.environ.get("PYUSDT_FILTER") == globs:
        return
    os.environ["PYUSDT_FILTER"] = globs
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def _parse(argv: list[str]) -> tuple[float | None, list[str] | None, str, str, list[str]]:
    """Return (wait, probes, kind, target, args); kind: 'script', 'module', 'code', 'stdin'."""
    wait: float | None = None
    probes: list[str] | None = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            sys.stdout.write(_HELP)
            sys.exit(0)
        elif arg == "--version":
            print(f"pyusdt {pyusdt.__version__}")
            sys.exit(0)
        elif arg == "--lib":
            print(os.path.abspath(pyusdt.lib_path()))
            sys.exit(0)
        elif arg == "--wait":
            wait = _DEFAULT_WAIT
        elif arg.startswith("--wait="):
            try:
                wait = float(arg[len("--wait=") :])
            except ValueError:
                wait = -1.0
            if not wait >= 0 or wait == float("inf"):
                _usage_error(f"invalid --wait value: {arg[len('--wait=') :]!r}")
        elif arg.startswith("--only="):
            _only(arg[len("--only=") :])
        elif arg.startswith("--probes="):
            probes = [p.strip().upper() for p in arg[len("--probes=") :].split(",") if p.strip()]
            unknown = sorted(set(probes) - set(pyusdt.PROBES))
            if unknown or not probes:
                _usage_error(f"invalid --probes value: {arg[len('--probes=') :]!r}")
        elif arg in ("-m", "-c") or (arg[:2] in ("-m", "-c") and not arg.startswith("--")):
            # Like python: `-m mod`, `-mmod`, `-c code`, `-ccode`.
            value = arg[2:] if len(arg) > 2 else None
            if value is None:
                if i + 1 >= len(argv):
                    _usage_error(f"argument expected for the {arg} option")
                i += 1
                value = argv[i]
            return wait, probes, ("module" if arg[1] == "m" else "code"), value, argv[i + 1 :]
        elif arg == "-":
            return wait, probes, "stdin", arg, argv[i + 1 :]
        elif arg == "--":
            if i + 1 >= len(argv):
                _usage_error()
            i += 1
            kind = "stdin" if argv[i] == "-" else "script"
            return wait, probes, kind, argv[i], argv[i + 1 :]
        elif arg.startswith("-"):
            _usage_error(f"unknown option: {arg}")
        else:
            return wait, probes, "script", arg, argv[i + 1 :]
        i += 1
    _usage_error()
    raise AssertionError("unreachable")


def _set_path0(value: str | None) -> None:
    """Make sys.path[0] what `python` would have put there (None: nothing).

    `python -m pyusdt` put the cwd there, unless -P / PYTHONSAFEPATH / -I (safe_path) is
    in effect, in which case python adds nothing for scripts, modules and -c either.
    """
    if sys.flags.safe_path:
        return
    if value is None:
        del sys.path[0]
    else:
        sys.path[0] = value


def _abspath(path: str) -> str:
    """The interpreter's absolute path for a command-line file: cwd joined, not normalised."""
    if os.path.isabs(path):
        return path
    return os.path.join(os.getcwd(), path)


def _is_importer_path(path: str) -> bool:
    """True if python would run `path` via runpy: a directory or a zip file."""
    importer = sys.path_importer_cache.get(path, False)
    if importer is False:
        importer = None
        for hook in sys.path_hooks:
            try:
                importer = hook(path)
            except ImportError:
                continue
            break
        sys.path_importer_cache.setdefault(path, importer)
    return importer is not None


# A script's or stdin's `__main__` has `__cached__ = None` up to 3.14; 3.15 no longer sets it.
_CACHED: dict[str, object] = {"__cached__": None} if sys.version_info < (3, 15) else {}


def _fresh_main(**attrs: object) -> dict:
    """Install a new, empty `__main__` module (as python starts with) and return its dict."""
    main = types.ModuleType("__main__")
    main.__dict__["__loader__"] = importlib.machinery.BuiltinImporter
    if sys.version_info < (3, 14):  # 3.14's __main__ starts without it (PEP 649)
        main.__dict__["__annotations__"] = {}
    main.__dict__["__builtins__"] = builtins
    main.__dict__.update(attrs)
    sys.modules["__main__"] = main
    return main.__dict__


def _wait_for_tracer(wait: float | None, probes: list[str] | None) -> None:
    if wait is not None and not pyusdt.wait_for_tracer(wait, probes):
        sys.stderr.write(f"pyusdt: no tracer attached after {wait:g} s; running anyway\n")
        sys.stderr.flush()


def _run(wait: Callable[[], None], kind: str, target: str, args: list[str]) -> None:
    """Run the target; `wait()` is called once it is ready to start."""
    if kind == "module":
        # While the module is being located, python shows '-m' as argv[0]; runpy then
        # replaces it with the module's file, exactly as for `python -m`.
        sys.argv[:] = ["-m", *args]
        _fresh_main()
        wait()
        runpy._run_module_as_main(target, alter_argv=True)
        return

    if kind == "code":
        sys.argv[:] = ["-c", *args]
        _set_path0("")
        globs = _fresh_main()
        code = compile(target, "<string>", "exec", dont_inherit=True)
        if sys.version_info >= (3, 13):
            # 3.13+ registers the -c source so tracebacks can show its lines.
            lines = [line + "\n" for line in target.splitlines()]
            linecache.cache["<string>"] = (len(target), None, lines, "<string>")
        wait()
        exec(code, globs)
        return

    if kind == "stdin":
        sys.argv[:] = ["-", *args]
        _set_path0("")
        globs = _fresh_main(__file__="<stdin>", **_CACHED)
        code = compile(sys.stdin.buffer.read(), "<stdin>", "exec", dont_inherit=True)
        wait()
        exec(code, globs)
        return

    filename = _abspath(target)
    sys.argv[:] = [target, *args]
    if _is_importer_path(filename):
        # A directory or zip file: python puts it first on sys.path and runs its __main__.
        # (Unlike the other targets this happens even with safe_path.)
        if sys.flags.safe_path:
            sys.path.insert(0, filename)
        else:
            sys.path[0] = filename
        _fresh_main()
        wait()
        runpy._run_module_as_main("__main__", alter_argv=False)
        return

    try:
        with io.open_code(filename) as f:
            source = f.read()
    except OSError as exc:
        program = sys.orig_argv[0] if sys.orig_argv else sys.executable
        sys.stderr.write(
            f"{program}: can't open file {filename!r}: [Errno {exc.errno}] {exc.strerror}\n"
        )
        sys.exit(2)
    _set_path0(os.path.dirname(os.path.realpath(target)))
    if filename.endswith(".pyc") or source[:4] == importlib.util.MAGIC_NUMBER:
        loader = importlib.machinery.SourcelessFileLoader("__main__", filename)
        globs = _fresh_main(__file__=filename, **_CACHED, __loader__=loader)
        if source[:4] != importlib.util.MAGIC_NUMBER:
            raise RuntimeError("Bad magic number in .pyc file")
        code = marshal.loads(source[16:])
    else:
        loader = importlib.machinery.SourceFileLoader("__main__", filename)
        globs = _fresh_main(__file__=filename, **_CACHED, __loader__=loader)
        code = compile(source, filename, "exec", dont_inherit=True)
    wait()
    exec(code, globs)


def _report_via_interpreter(exc: BaseException) -> None:
    """Let the interpreter report `exc` as it does for `python`, minus pyusdt's frames.

    The exception is re-raised so that python itself sets the exit status (1, or death by
    SIGINT after finalisation for KeyboardInterrupt); a one-shot sys.excepthook (wrapping
    whatever hook the program installed) swaps in the traceback without our frames.
    """
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_globals is _OWN_GLOBALS:
        tb = tb.tb_next
    program_hook = sys.excepthook

    def excepthook(etype, value, _tb):
        sys.excepthook = program_hook
        if value is exc:
            value.__traceback__ = tb
            program_hook(etype, value, tb)
        else:
            program_hook(etype, value, _tb)

    sys.excepthook = excepthook


def main() -> None:
    wait, probes, kind, target, args = _parse(sys.argv[1:])
    own_main = sys.modules["__main__"]  # keep this module alive while the target runs
    try:
        _run(lambda: _wait_for_tracer(wait, probes), kind, target, args)
    except SystemExit:
        raise
    except BaseException as exc:
        _report_via_interpreter(exc)
        raise
    finally:
        del own_main


if __name__ == "__main__":
    main()
    if __spec__ is not None and not sys.flags.inspect:
        # Run by `python -m pyusdt`: leave runpy's frames below by an exception (exit status
        # 0 all the same), so that their last line and PY_RETURNs are not traced. (Under -i,
        # python would show the SystemExit and enter the REPL: returning is right there.)
        raise SystemExit
