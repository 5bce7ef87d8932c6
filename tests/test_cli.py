"""Tests for `python -m pyusdt` (pyusdt/__main__.py): parity with plain `python`.

Each parity test runs the same target as `python ARGS` and as `python -m pyusdt ARGS`
in real subprocesses and asserts identical stdout, stderr and exit status.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

SHOW = """\
import os, sys
print("argv", sys.argv)
print("path0", repr(sys.path[0]))
print("name", __name__)
print("file", globals().get("__file__"))
print("cached", globals().get("__cached__"))
print("package", repr(__package__))
print("spec", getattr(__spec__, "name", None), getattr(__spec__, "origin", None))
print("loader", type(__loader__).__name__ if not isinstance(__loader__, type) else __loader__)
print("globals", list(globals()))
print("builtins", type(__builtins__).__name__)
print("main", sys.modules["__main__"] is sys.modules[__name__])
print("main-file", getattr(sys.modules["__main__"], "__file__", None))
"""

TRACEBACK = """\
def inner(x):
    return 1 / x

def outer():
    return inner(0)

outer()
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYUSDT_VERBOSE", None)
    env.pop("PYTHONSAFEPATH", None)
    return env


def run(args: list[str], cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
    )


def pyusdt(args: list[str], cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    return run(["-m", "pyusdt", *args], cwd, stdin)


def assert_same(cwd: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run `python ARGS` and `python -m pyusdt ARGS`; assert they behave identically."""
    plain = run(list(args), cwd, stdin)
    traced = pyusdt(list(args), cwd, stdin)
    assert traced.stderr == plain.stderr
    assert traced.stdout == plain.stdout
    assert traced.returncode == plain.returncode
    return traced


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    write(tmp_path / "show.py", SHOW)
    return tmp_path


# -- scripts -------------------------------------------------------------------------------


def test_script_argv_path_and_globals(tmp):
    r = assert_same(tmp, "show.py", "a", "--version", "-m", "x y")
    assert "argv ['show.py', 'a', '--version', '-m', 'x y']" in r.stdout
    assert f"path0 {str(tmp)!r}" in r.stdout
    assert "name __main__" in r.stdout
    assert "main True" in r.stdout
    assert r.returncode == 0


def test_script_in_subdirectory_and_dotdot(tmp):
    write(tmp / "sub" / "show.py", SHOW)
    r = assert_same(tmp, "sub/show.py", "1")
    assert f"path0 {str(tmp / 'sub')!r}" in r.stdout
    assert_same(tmp, "./sub/../sub/show.py")
    assert_same(tmp / "sub", str(tmp / "sub" / "show.py"))


def test_symlinked_script_path0_is_resolved(tmp):
    write(tmp / "real" / "show.py", SHOW)
    (tmp / "link.py").symlink_to(tmp / "real" / "show.py")
    r = assert_same(tmp, "link.py")
    assert f"path0 {str(tmp / 'real')!r}" in r.stdout


def test_script_imports_sibling_module(tmp):
    write(tmp / "app" / "helper.py", "VALUE = 42\n")
    write(tmp / "app" / "main.py", "import helper\nprint(helper.VALUE)\n")
    r = assert_same(tmp, "app/main.py")
    assert r.stdout == "42\n"


def test_dash_dash_ends_options(tmp):
    assert_same(tmp, "--", "show.py", "x")


def test_stdin_program(tmp):
    r = assert_same(tmp, "-", "a", stdin=SHOW)
    assert "argv ['-', 'a']" in r.stdout


# -- -m and -c -------------------------------------------------------------------------------


def test_module(tmp):
    write(tmp / "mod.py", SHOW)
    r = assert_same(tmp, "-m", "mod", "arg")
    assert f"argv [{str(tmp / 'mod.py')!r}, 'arg']" in r.stdout
    assert f"path0 {str(tmp)!r}" in r.stdout
    assert "spec mod " in r.stdout


def test_package_main(tmp):
    write(tmp / "pkg" / "__init__.py", "")
    write(tmp / "pkg" / "helper.py", "VALUE = 'relative import ok'\n")
    write(tmp / "pkg" / "__main__.py", SHOW + "from .helper import VALUE\nprint(VALUE)\n")
    r = assert_same(tmp, "-m", "pkg", "arg")
    assert "spec pkg.__main__ " in r.stdout
    assert "relative import ok" in r.stdout
    assert_same(tmp, "-mpkg")


def test_module_traceback_and_missing_module(tmp):
    write(tmp / "boom.py", TRACEBACK)
    r = assert_same(tmp, "-m", "boom")
    assert r.returncode == 1
    r = assert_same(tmp, "-m", "no_such_module_xyz")
    assert r.returncode == 1
    assert "No module named no_such_module_xyz" in r.stderr
    write(tmp / "nsp" / "x.py", "")
    assert_same(tmp, "-m", "nsp")  # a namespace package cannot be directly executed


def test_code(tmp):
    r = assert_same(tmp, "-c", SHOW, "a", "b")
    assert "argv ['-c', 'a', 'b']" in r.stdout
    assert "path0 ''" in r.stdout
    assert_same(tmp, "-cimport sys; print(sys.argv)", "z")


def test_code_traceback(tmp):
    r = assert_same(tmp, "-c", "def f():\n    raise ValueError('bad')\nf()\n")
    assert r.returncode == 1
    assert r.stderr.startswith("Traceback (most recent call last):\n")


# -- exits and errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status"),
    [("3", 3), ("'message'", 1), ("None", 0), ("", 0), ("0", 0), ("[1, 2]", 1)],
)
def test_system_exit(tmp, code, status):
    write(tmp / "exit.py", f"import sys\nprint('before')\nraise SystemExit({code})\n")
    r = assert_same(tmp, "exit.py")
    assert r.returncode == status
    write(tmp / "exit2.py", f"import sys\nsys.exit({code})\n")
    assert_same(tmp, "exit2.py")


def test_uncaught_exception_traceback(tmp):
    write(tmp / "tb.py", TRACEBACK)
    r = assert_same(tmp, "tb.py")
    assert r.returncode == 1
    assert "pyusdt" not in r.stderr and "runpy" not in r.stderr
    assert r.stderr.splitlines()[-1] == "ZeroDivisionError: division by zero"


def test_chained_exception_and_atexit(tmp):
    write(
        tmp / "chain.py",
        """\
        import atexit
        atexit.register(print, "atexit ran")
        try:
            {}["k"]
        except KeyError as e:
            raise RuntimeError("wrapped") from e
        """,
    )
    r = assert_same(tmp, "chain.py")
    assert "atexit ran" in r.stdout
    assert "The above exception was the direct cause" in r.stderr


def test_custom_excepthook_gets_trimmed_traceback(tmp):
    write(
        tmp / "hook.py",
        """\
        import sys, traceback
        def hook(etype, value, tb):
            print("hook", etype.__name__, [f.name for f in traceback.extract_tb(tb)],
                  [f.name for f in traceback.extract_tb(value.__traceback__)])
        sys.excepthook = hook
        def fail():
            raise KeyError(1)
        fail()
        """,
    )
    r = assert_same(tmp, "hook.py")
    assert r.stdout == "hook KeyError ['<module>', 'fail'] ['<module>', 'fail']\n"
    assert r.returncode == 1


def test_syntax_error(tmp):
    write(tmp / "bad.py", "print('ok')\ndef broken(:\n    pass\n")
    r = assert_same(tmp, "bad.py")
    assert r.returncode == 1
    assert "SyntaxError" in r.stderr and "Traceback" not in r.stderr


def test_keyboard_interrupt_exits_by_sigint(tmp):
    write(tmp / "ki.py", "import atexit\natexit.register(print, 'bye')\nraise KeyboardInterrupt\n")
    r = assert_same(tmp, "ki.py")
    assert r.returncode == -signal.SIGINT
    assert r.stderr.splitlines()[-1] == "KeyboardInterrupt"
    assert r.stdout == "bye\n"


def test_missing_script(tmp):
    r = assert_same(tmp, "missing.py", "arg")
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr == (
        f"{sys.executable}: can't open file {str(tmp / 'missing.py')!r}:"
        " [Errno 2] No such file or directory\n"
    )


def test_directory_and_zip_with_main(tmp):
    write(tmp / "app" / "__main__.py", SHOW)
    r = assert_same(tmp, "app", "x")
    assert "argv ['app', 'x']" in r.stdout
    assert_same(tmp, "app/", "y")
    with zipfile.ZipFile(tmp / "app.zip", "w") as zf:
        zf.writestr("__main__.py", SHOW)
    r = assert_same(tmp, "app.zip", "z")
    assert "argv ['app.zip', 'z']" in r.stdout


def test_directory_without_main(tmp):
    (tmp / "empty").mkdir()
    r = assert_same(tmp, "empty")
    assert r.returncode == 1
    assert "can't find '__main__' module" in r.stderr


# -- pyusdt's own options --------------------------------------------------------------------


@pytest.mark.parametrize("args", [[], ["--bogus"], ["-x", "show.py"], ["-m"], ["-c"]])
def test_usage_errors(tmp, args):
    r = pyusdt(args, tmp)
    assert r.returncode == 2
    assert r.stdout == ""
    assert "usage: python -m pyusdt" in r.stderr
    assert "Traceback" not in r.stderr


def test_help(tmp):
    r = pyusdt(["--help"], tmp)
    assert r.returncode == 0
    assert r.stdout.startswith("usage: python -m pyusdt")
    for word in ("--wait", "--lib", "--version", "PYUSDT_CHECK_MSEC", "PYUSDT_VERBOSE"):
        assert word in r.stdout
    assert r.stderr == ""


def test_version(tmp):
    r = pyusdt(["--version"], tmp)
    expected = run(["-c", "import pyusdt; print(pyusdt.__version__)"], tmp).stdout.strip()
    assert r.returncode == 0
    assert r.stdout == f"pyusdt {expected}\n"
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", expected)


def test_lib(tmp):
    r = pyusdt(["--lib"], tmp)
    assert r.returncode == 0
    path = r.stdout.strip()
    assert os.path.isabs(path) and os.path.isfile(path)
    assert os.path.basename(path).startswith("libpyusdt")
    expected = run(["-c", "import pyusdt; print(pyusdt.lib_path())"], tmp).stdout.strip()
    assert os.path.samefile(path, expected)


def test_wait_times_out_with_one_line_and_runs_anyway(tmp):
    write(tmp / "exit.py", "print('ran')\nraise SystemExit(5)\n")
    r = pyusdt(["--wait=0.3", "exit.py"], tmp)
    assert r.returncode == 5
    assert r.stdout == "ran\n"
    assert r.stderr == "pyusdt: no tracer attached after 0.3 s; running anyway\n"


def test_options_after_target_belong_to_target(tmp):
    r = pyusdt(["show.py", "--wait=1", "--help"], tmp)
    assert "argv ['show.py', '--wait=1', '--help']" in r.stdout
    assert r.stderr == ""


def test_bad_wait_value(tmp):
    r = pyusdt(["--wait=soon", "show.py"], tmp)
    assert r.returncode == 2
    assert "--wait" in r.stderr


def test_no_noise(tmp):
    r = pyusdt(["-c", "pass"], tmp)
    assert (r.stdout, r.stderr, r.returncode) == ("", "", 0)


def test_wait_for_named_probes(tmp):
    r = pyusdt(["--wait=0.2", "--probes=py_start,CALL", "-c", "print('ran')"], tmp)
    assert (r.stdout, r.returncode) == ("ran\n", 0)
    assert r.stderr == "pyusdt: no tracer attached after 0.2 s; running anyway\n"
    r = pyusdt(["--wait=0.2", "--probes=NOPE", "-c", "print('ran')"], tmp)
    assert r.returncode == 2 and r.stdout == "" and "--probes" in r.stderr
