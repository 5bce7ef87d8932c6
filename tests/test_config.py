"""Bad configuration: PYUSDT_CHECK_MSEC and PYUSDT_REPR_MAX values, and `python -m pyusdt`
edge cases not in test_cli.

Invalid poll intervals fall back to 100 ms with one verbose line (and silence otherwise);
valid ones are used. The CLI cases (odd file names, FIFOs, unopenable paths, paths given
to -m) must behave exactly like plain `python`: same exit status, stdout and stderr.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

STATUS = "import pyusdt; print(pyusdt.status()['poll_msec'])"


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "PYUSDT_CHECK_MSEC",
            "PYUSDT_REPR_MAX",
            "PYUSDT_REPR",
            "PYUSDT_VERBOSE",
            "PYTHONSAFEPATH",
        )
    }
    env.update(extra)
    return env


def poll_msec(env: dict[str, str], tmp_path: Path) -> tuple[int, list[str]]:
    r = subprocess.run(
        [sys.executable, "-c", STATUS],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    return int(r.stdout), r.stderr.splitlines()


@pytest.mark.parametrize("value", ["0", "-5", "abc", "10001", "", "1e3", "5 5", "0x10"])
def test_invalid_check_msec_falls_back_to_100(tmp_path, value):
    msec, err = poll_msec(clean_env(PYUSDT_CHECK_MSEC=value), tmp_path)
    assert (msec, err) == (100, [])
    msec, err = poll_msec(clean_env(PYUSDT_CHECK_MSEC=value, PYUSDT_VERBOSE="1"), tmp_path)
    assert msec == 100
    about = [ln for ln in err if "PYUSDT_CHECK_MSEC" in ln]
    assert about == [
        f"pyusdt: PYUSDT_CHECK_MSEC={value!r}".replace("'", '"')
        + " is not a whole number from 1 to 10000; using 100"
    ]
    # The only other line is the usual "ready" line, which reports the interval in use.
    assert [ln for ln in err if ln not in about] == ["pyusdt: ready (interpreter 0, poll 100 ms)"]


@pytest.mark.parametrize(("value", "expected"), [("1", 1), ("10000", 10000), (" 50 ", 50)])
def test_valid_check_msec_is_used(tmp_path, value, expected):
    assert poll_msec(clean_env(PYUSDT_CHECK_MSEC=value), tmp_path) == (expected, [])
    msec, err = poll_msec(clean_env(PYUSDT_CHECK_MSEC=value, PYUSDT_VERBOSE="1"), tmp_path)
    assert msec == expected
    assert err == [f"pyusdt: ready (interpreter 0, poll {expected} ms)"]


def test_unset_check_msec_is_100(tmp_path):
    assert poll_msec(clean_env(), tmp_path) == (100, [])


def status_value(env: dict[str, str], tmp_path: Path, key: str) -> tuple[str, list[str]]:
    """`pyusdt.status()[key]` in a fresh process, and its stderr lines but "ready"."""
    r = subprocess.run(
        [sys.executable, "-c", f"import pyusdt; print(pyusdt.status()[{key!r}])"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.strip(), [ln for ln in r.stderr.splitlines() if "ready" not in ln]


def repr_max(env: dict[str, str], tmp_path: Path) -> tuple[int, list[str]]:
    value, err = status_value(env, tmp_path, "repr_max")
    return int(value), err


@pytest.mark.parametrize("value", ["15", "65537", "-1", "big", ""])
def test_invalid_repr_max_falls_back_to_256(tmp_path, value):
    assert repr_max(clean_env(PYUSDT_REPR_MAX=value), tmp_path) == (256, [])
    assert repr_max(clean_env(PYUSDT_REPR_MAX=value, PYUSDT_VERBOSE="1"), tmp_path) == (
        256,
        [
            f"pyusdt: PYUSDT_REPR_MAX={value!r}".replace("'", '"')
            + " is not a whole number from 16 to 65536; using 256"
        ],
    )


@pytest.mark.parametrize(("value", "expected"), [("16", 16), ("65536", 65536), (None, 256)])
def test_valid_repr_max_is_used(tmp_path, value, expected):
    env = clean_env() if value is None else clean_env(PYUSDT_REPR_MAX=value)
    assert repr_max(env, tmp_path) == (expected, [])


# -- python -m pyusdt edge cases -----------------------------------------------------------

SHOW = "import sys\nprint('argv', sys.argv)\nprint('path0', repr(sys.path[0]))\nprint(__file__)\n"


def run(args: list[str], cwd: Path, feed: Path | None = None) -> subprocess.CompletedProcess:
    writer = None
    if feed is not None:  # a FIFO target: a writer feeds it the program once opened
        writer = threading.Thread(target=lambda: feed.write_text(SHOW), daemon=True)
        writer.start()
    r = subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
    )
    if writer is not None:
        writer.join(10)
        assert not writer.is_alive(), "nobody read the FIFO"
    return r


def assert_same(cwd: Path, *args: str, feed: Path | None = None) -> subprocess.CompletedProcess:
    plain = run(list(args), cwd, feed)
    traced = run(["-m", "pyusdt", *args], cwd, feed)
    assert (traced.returncode, traced.stdout, traced.stderr) == (
        plain.returncode,
        plain.stdout,
        plain.stderr,
    )
    return traced


@pytest.mark.parametrize("name", ["with space.py", "ünï cödé ✓.py", "-dash.py", "x'q\".py"])
def test_odd_script_names(tmp_path, name):
    d = tmp_path / "dir with spaces é"
    d.mkdir()
    (d / name).write_text(SHOW)
    r = assert_same(tmp_path, str(d / name), "a b", "ü")
    assert r.returncode == 0
    assert f"argv [{str(d / name)!r}, 'a b', 'ü']" in r.stdout
    assert f"path0 {str(d)!r}" in r.stdout
    # relative, from inside the directory (a leading dash needs ./ for both)
    r = assert_same(d, "./" + name)
    assert r.returncode == 0


def test_odd_names_for_directory_and_zip(tmp_path):
    app = tmp_path / "my äpp dir"
    app.mkdir()
    (app / "__main__.py").write_text(SHOW)
    r = assert_same(tmp_path, "my äpp dir", "x")
    assert r.returncode == 0 and "argv ['my äpp dir', 'x']" in r.stdout
    with zipfile.ZipFile(tmp_path / "zïp file.pyz", "w") as zf:
        zf.writestr("__main__.py", SHOW)
    r = assert_same(tmp_path, "zïp file.pyz")
    assert r.returncode == 0 and "zïp file.pyz" in r.stdout


def test_zip_without_main(tmp_path):
    with zipfile.ZipFile(tmp_path / "nomain.zip", "w") as zf:
        zf.writestr("other.py", SHOW)
    r = assert_same(tmp_path, "nomain.zip")
    assert r.returncode == 1 and "can't find '__main__' module" in r.stderr


@pytest.mark.parametrize(
    "make",
    ["not_a_dir", "symlink_loop", "dangling_symlink", "name_too_long"],
)
def test_unopenable_script(tmp_path, make):
    # As root chmod 000 does not stop reading, so use paths open() itself refuses.
    (tmp_path / "file.py").write_text(SHOW)
    if make == "not_a_dir":
        target = "file.py/inner.py"
    elif make == "symlink_loop":
        (tmp_path / "a.py").symlink_to(tmp_path / "b.py")
        (tmp_path / "b.py").symlink_to(tmp_path / "a.py")
        target = "a.py"
    elif make == "dangling_symlink":
        (tmp_path / "gone.py").symlink_to(tmp_path / "missing.py")
        target = "gone.py"
    else:
        target = "n" * 300 + ".py"
    r = assert_same(tmp_path, target, "arg")
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.startswith(f"{sys.executable}: can't open file ")


def test_fifo_script(tmp_path):
    fifo = tmp_path / "prog.fifo"
    os.mkfifo(fifo)
    r = assert_same(tmp_path, "prog.fifo", "z", feed=fifo)
    assert r.returncode == 0
    assert "argv ['prog.fifo', 'z']" in r.stdout


@pytest.mark.parametrize("spec", ["pkg/", "./pkg", "pkg.py", ".pkg", "pkg.__main__", "pkg..x"])
def test_paths_and_odd_names_given_to_dash_m(tmp_path, spec):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "__main__.py").write_text(SHOW)
    r = assert_same(tmp_path, "-m", spec)
    if spec == "pkg.__main__":
        assert r.returncode == 0
    else:
        assert r.returncode == 1 and r.stdout == ""


def repr_mode(env: dict[str, str], tmp_path: Path) -> tuple[str, list[str]]:
    return status_value(env, tmp_path, "repr")


@pytest.mark.parametrize(
    ("value", "expected"), [(None, "safe"), ("safe", "safe"), ("full", "full"), (" FULL ", "full")]
)
def test_repr_mode_setting(tmp_path, value, expected):
    env = clean_env() if value is None else clean_env(PYUSDT_REPR=value)
    assert repr_mode(env, tmp_path) == (expected, [])


def test_invalid_repr_mode_falls_back_to_safe(tmp_path):
    assert repr_mode(clean_env(PYUSDT_REPR="fast"), tmp_path) == ("safe", [])
    mode, err = repr_mode(clean_env(PYUSDT_REPR="fast", PYUSDT_VERBOSE="1"), tmp_path)
    assert mode == "safe"
    assert len(err) == 1 and "PYUSDT_REPR" in err[0], err
