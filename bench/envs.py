"""The interpreters and venvs the benchmark runs: ours (this repo) and the original 0.1.1.

Interpreters come from `matrix/provision --list` ("VERSION PATH" lines). Venvs are
built once and cached under the bench cache (PYUSDT_BENCH_CACHE, default
/var/tmp/pyusdt-bench): ours per interpreter and per hash of the sources that go
into the extension (a source change rebuilds it), the original per interpreter.
A venv that failed to build leaves a FAILED file with the log, so later runs skip
it quickly (delete the cache to retry).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("PYUSDT_BENCH_CACHE", "/var/tmp/pyusdt-bench"))
ORIG_VERSION = "0.1.1"
# Where the original's sdist may have been unpacked (used when PyPI has no wheel).
ORIG_SDIST = Path(os.environ.get("PYUSDT_ORIG_SDIST", "/tmp/orig/pyusdt-0.1.1"))
# What goes into our extension and package: a change here means a rebuild.
SOURCES = ("src", "pyusdt", "Cargo.toml", "Cargo.lock", "build.rs", "pyproject.toml")


class EnvError(Exception):
    """A venv could not be built (the message says why)."""


@dataclass
class Python:
    """A python that can run the workload, and the library holding its probes."""

    label: str  # e.g. "3.12 ours"
    exe: str
    lib: str  # path of the .so with the `pyusdt` provider


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def provisioned() -> dict[str, str]:
    """VERSION -> interpreter path, from `matrix/provision --list`."""
    try:
        proc = subprocess.run(
            [str(REPO / "matrix" / "provision"), "--list"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    found = {}
    for line in proc.stdout.splitlines():
        parts = line.split(maxsplit=1)
        if len(parts) == 2:
            found[parts[0]] = parts[1].strip()
    return found


def source_hash() -> str:
    h = hashlib.sha256()
    for name in SOURCES:
        root = REPO / name
        files = sorted(root.rglob("*")) if root.is_dir() else [root]
        for f in files:
            if f.is_file() and "__pycache__" not in f.parts:
                h.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:12]


def _run(cmd: list[str], logfile: Path, env: dict[str, str] | None = None) -> None:
    # The venv's bin first on PATH: `pip install --no-build-isolation` runs `maturin`.
    env = dict(env or os.environ)
    env["PATH"] = f"{Path(cmd[0]).parent}:{env.get('PATH', '')}"
    with logfile.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, check=False)
    if proc.returncode != 0:
        tail = [ln for ln in logfile.read_text().splitlines() if ln.strip()][-3:]
        raise EnvError(f"`{' '.join(cmd[:5])} ...` failed (log: {logfile}): " + " | ".join(tail))


def _probe_lib(exe: str, module: str) -> str:
    code = f"import {module} as m, sys; sys.stdout.write(m.__file__)"
    if module == "pyusdt":
        code = "import pyusdt, sys; sys.stdout.write(pyusdt.lib_path())"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYUSDT_")}
    proc = subprocess.run(
        [exe, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
        cwd=_neutral_cwd(),
    )
    path = proc.stdout.strip()
    # (The original may crash at exit, so the exit status alone does not tell.)
    if not path or not os.path.isfile(path):
        raise EnvError(f"{exe} cannot import {module}: {proc.stderr.strip()[-500:]}")
    return os.path.abspath(path)


def _cached_venv(name: str, build) -> Path:
    """The venv CACHE/name, built by `build(dir, logfile)` unless already complete."""
    d = CACHE / name
    if (d / "FAILED").exists():
        raise EnvError(f"{d} failed to build before (see {d / 'FAILED'}; delete it to retry)")
    if (d / "COMPLETE").exists():
        return d
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    logfile = d / "build.log"
    log(f"building {d} (once; log in {logfile})")
    try:
        build(d, logfile)
    except EnvError as exc:
        (d / "FAILED").write_text(str(exc) + "\n")
        raise
    (d / "COMPLETE").write_text("")
    return d


def ours(version: str, base: str) -> Python:
    """Our pyusdt for `base`: the running python if it is that interpreter with pyusdt
    installed (the nox session), else a cached venv with the repo installed."""
    here = sys.version_info
    this = f"{here.major}.{here.minor}" + ("t" if _free_threaded() else "")
    if this == version and _has_pyusdt(sys.executable):
        return Python(f"{version} ours", sys.executable, _probe_lib(sys.executable, "pyusdt"))
    key = source_hash()
    for stale in CACHE.glob(f"ours-{version}-*"):
        if stale.name != f"ours-{version}-{key}":
            shutil.rmtree(stale, ignore_errors=True)

    def build(d: Path, logfile: Path) -> None:
        _run([base, "-m", "venv", str(d)], logfile)
        pip = [str(d / "bin" / "python"), "-m", "pip", "install", "-q"]
        _run([*pip, "maturin>=1.7,<2"], logfile)
        _run([*pip, "--no-build-isolation", str(REPO)], logfile)

    d = _cached_venv(f"ours-{version}-{key}", build)
    exe = str(d / "bin" / "python")
    return Python(f"{version} ours", exe, _probe_lib(exe, "pyusdt"))


def original(version: str, base: str) -> Python:
    """The original pyusdt 0.1.1 (module `libpyusdt`) in a cached venv of `base`:
    PyPI's wheel where there is one (cp312), else built from its sdist."""

    def build(d: Path, logfile: Path) -> None:
        _run([base, "-m", "venv", str(d)], logfile)
        pip = [str(d / "bin" / "python"), "-m", "pip", "install", "-q"]
        try:
            _run([*pip, "--only-binary=:all:", f"pyusdt=={ORIG_VERSION}"], logfile)
            return
        except EnvError:
            pass
        # The sdist's setup.py runs `python3-config`: give it this interpreter's.
        config = Path(base).with_name(f"python{version.rstrip('t')}-config")
        if version.endswith("t"):
            config = Path(base).with_name(f"python{version}-config")
        shim = d / "shim"
        shim.mkdir()
        if config.exists():
            (shim / "python3-config").symlink_to(config)
        env = dict(os.environ, PATH=f"{shim}:{os.environ.get('PATH', '')}")
        source = str(ORIG_SDIST) if ORIG_SDIST.is_dir() else f"pyusdt=={ORIG_VERSION}"
        _run([*pip, "--no-binary=pyusdt", source], logfile, env=env)

    d = _cached_venv(f"orig-{version}", build)
    exe = str(d / "bin" / "python")
    return Python(f"{version} original", exe, _probe_lib(exe, "libpyusdt"))


def _neutral_cwd() -> str:
    """A cwd where `-c`/`-m` cannot pick up the repo's pyusdt/ source dir."""
    CACHE.mkdir(parents=True, exist_ok=True)
    return str(CACHE)


def _free_threaded() -> bool:
    import sysconfig

    return bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


def _has_pyusdt(exe: str) -> bool:
    proc = subprocess.run(
        [exe, "-c", "import pyusdt.libpyusdt"],
        capture_output=True,
        timeout=60,
        check=False,
        cwd=_neutral_cwd(),
    )
    return proc.returncode == 0


def build_sdt_loop(nop5: bool = False) -> tuple[str, str]:
    """Compile bench/sdt_loop.c; returns (binary, how the probe was made). The
    standard probe (a 1-byte nop, as <sys/sdt.h> makes it), or with `nop5` the
    5-byte nop site that pyusdt's probes use."""
    src = REPO / "bench" / "sdt_loop.c"
    out_dir = CACHE / "sdt"
    out_dir.mkdir(parents=True, exist_ok=True)
    if nop5:
        binary = out_dir / "sdt_loop_nop5"
        _compile_sdt_loop(src, binary, ["-DBENCH_NOP5"])
        return str(binary), "own inline-asm stapsdt note on a 5-byte nop"
    binary = out_dir / "sdt_loop"
    have_sdt = _has_sdt_header()
    if not have_sdt and shutil.which("apt-get") and os.geteuid() == 0:
        log("installing systemtap-sdt-dev for <sys/sdt.h>")
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "systemtap-sdt-dev"],
            capture_output=True,
            check=False,
            env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"),
        )
        have_sdt = _has_sdt_header()
    _compile_sdt_loop(src, binary, [] if have_sdt else ["-DBENCH_OWN_SDT"])
    return str(binary), ("<sys/sdt.h> STAP_PROBE5" if have_sdt else "own inline-asm stapsdt note")


def _compile_sdt_loop(src: Path, binary: Path, flags: list[str]) -> None:
    proc = subprocess.run(
        ["cc", "-O2", "-Wall", "-pthread", *flags, "-o", str(binary), str(src)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise EnvError(f"cc sdt_loop.c {' '.join(flags)} failed:\n{proc.stderr}")


def _has_sdt_header() -> bool:
    proc = subprocess.run(
        ["cc", "-E", "-x", "c", "-", "-o", "/dev/null"],
        input="#include <sys/sdt.h>\n",
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.returncode == 0
