"""noxfile.py -- owned by the test-matrix work (matrix/ + noxfile.py).

Sessions:
  tests-3.12, tests-3.13, tests-3.13t, tests-3.14, tests-3.14t, tests-3.15, tests-3.15t
                                       all required: always defined, fail loudly if not provisioned
                                       (tests-3.15 sets PYUSDT_EXPECT_NATIVE_MARKERS=1: its
                                       interpreter is built --with-dtrace)
  tests-3.15-jit                       opt-in (not run by default): the suite on the JIT build
                                       (`matrix/provision 3.15-jit`) with PYTHON_JIT=1
  clients                              tests/test_clients.py once (3.12): bpftrace 0.27 and bcc
                                       0.37 from matrix/clients' Debian sid chroot (built there
                                       when missing), the host's perf and bpftrace 0.17; the
                                       tests-* sessions leave that file out
  lint                                 cargo clippy -D warnings and cargo fmt --check (both
                                       Cargo manifests), ruff
  bench                                python bench/run.py (3.12 venv, project installed)
  wheels                               one manylinux2014 wheel per provisioned interpreter
                                       and architecture (x86_64, aarch64; maturin --zig) into
                                       dist/wheels, the x86_64 ones install-tested

`nox` with no arguments runs every tests-* session, clients, lint and wheels.

Interpreter paths come from `matrix/provision --list` ("VERSION PATH" lines); this file
never builds interpreters, run `matrix/provision` (or `bash matrix/test`) first.
Venvs use the stdlib `venv` backend of the target interpreter. The test sessions
install maturin + pytest, the servers tests/test_servers.py runs (uWSGI and gunicorn,
from PyPI), then the project with `pip install --no-build-isolation .`
(maturin builds the extension for that interpreter), then run `pytest -v tests`
with `session.posargs` appended. The caller's environment is passed through, e.g.
PYUSDT_REQUIRE_BPFTRACE=1 turns bpftrace skips into failures.
"""

import os
import subprocess
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
PROVISION = ROOT / "matrix" / "provision"
# The second Cargo manifest (PyO3 0.30, CPython >= 3.15); build_backend/pyusdt_backend.py
# picks it for `pip install .` on those interpreters.
PYO3_030_MANIFEST = "pyo3-0.30/Cargo.toml"
REQUIRED = ("3.12", "3.13", "3.13t", "3.14", "3.14t", "3.15", "3.15t")
# Interpreters that matrix/provision builds --with-dtrace: their sessions set
# PYUSDT_EXPECT_NATIVE_MARKERS=1, so tests/test_native_markers.py runs and must pass there.
NATIVE_MARKERS = ("3.15",)
BUILD_REQS = ("maturin>=1.7,<2", "pytest", "coverage")
# uWSGI has no wheels on PyPI: pip builds it from source (~30 s) once per interpreter and
# keeps the wheel in its cache (~/.cache/pip/wheels), so later fresh venvs reuse it.
# Nothing here may turn that cache off (no --no-cache-dir).
SERVER_REQS = ("uwsgi", "gunicorn")

nox.options.reuse_existing_virtualenvs = False
nox.options.error_on_missing_interpreters = True


def _provisioned() -> dict[str, str]:
    """Map VERSION -> interpreter path, as reported by `matrix/provision --list`."""
    try:
        proc = subprocess.run(
            [str(PROVISION), "--list"],
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    found: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        parts = line.split(maxsplit=1)
        if len(parts) == 2:
            found[parts[0]] = parts[1].strip()
    return found


INTERPRETERS = _provisioned()
PY312 = INTERPRETERS.get("3.12")


def _require(session: nox.Session, version: str) -> None:
    if version not in INTERPRETERS:
        session.error(
            f"Python {version} is not provisioned: run `matrix/provision` "
            f"(or `bash matrix/test`) first; `matrix/provision --list` shows what is usable"
        )


def _install_project(session: nox.Session) -> None:
    session.install(*BUILD_REQS)
    session.install("--no-build-isolation", ".")


def _make_tests_session(version: str) -> None:
    path = INTERPRETERS.get(version)

    # Without an interpreter the session runs venv-less just to report the problem.
    @nox.session(
        name=f"tests-{version}",
        python=path if path else False,
        venv_backend="venv" if path else "none",
    )
    def tests(session: nox.Session) -> None:
        _require(session, version)
        if os.environ.get("PIP_NO_CACHE_DIR"):
            session.warn("PIP_NO_CACHE_DIR is set: uWSGI is rebuilt from source in every venv")
        session.install(*SERVER_REQS)
        _install_project(session)
        env = {"PYUSDT_EXPECT_NATIVE_MARKERS": "1"} if version in NATIVE_MARKERS else {}
        session.run("pytest", "-v", "tests", f"--ignore={CLIENT_TESTS}", *session.posargs, env=env)


for _version in REQUIRED:
    _make_tests_session(_version)

# Other tracers than the host's bpftrace (README "Other tracers"): run once, not per
# interpreter.
CLIENT_TESTS = "tests/test_clients.py"


@nox.session(python=PY312 if PY312 else False, venv_backend="venv" if PY312 else "none")
def clients(session: nox.Session) -> None:
    """matrix/clients (builds the sid chroot when missing), then tests/test_clients.py."""
    _require(session, "3.12")
    _install_project(session)
    session.run(str(ROOT / "matrix" / "clients"), "--prepare", external=True)
    session.run(str(ROOT / "matrix" / "clients"), "versions", external=True)
    session.run("pytest", "-v", CLIENT_TESTS, *session.posargs)


JIT = "3.15-jit"


@nox.session(
    name=f"tests-{JIT}",
    python=INTERPRETERS.get(JIT) or False,
    venv_backend="venv" if JIT in INTERPRETERS else "none",
)
def tests_jit(session: nox.Session) -> None:
    """Opt-in: the whole suite on 3.15 built --enable-experimental-jit=yes-off, with the
    JIT on (PYTHON_JIT=1, inherited by every traced target); tests/test_jit.py must run.
    Needs `matrix/provision 3.15-jit` first (LLVM 21 toolchain and a build, ~20 min)."""
    if JIT not in INTERPRETERS:
        session.error(f"{JIT} is not provisioned: run `matrix/provision {JIT}` first")
    session.install(*SERVER_REQS)
    _install_project(session)
    env = {"PYTHON_JIT": "1", "PYUSDT_EXPECT_JIT": "1", "PYUSDT_EXPECT_NATIVE_MARKERS": "1"}
    session.run("pytest", "-v", "tests", f"--ignore={CLIENT_TESTS}", *session.posargs, env=env)


@nox.session(python=PY312 if PY312 else False, venv_backend="venv" if PY312 else "none")
def lint(session: nox.Session) -> None:
    """cargo clippy (-D warnings), cargo fmt --check, ruff check, ruff format --check."""
    _require(session, "3.12")
    session.install("ruff")
    # Both manifests (see build_backend/pyusdt_backend.py), each with an interpreter it
    # supports: pyo3's build script needs one (3.12 for PyO3 0.28, 3.15 for PyO3 0.30,
    # so the Py_3_15 code paths are linted too).
    _require(session, "3.15")
    for manifest, python in (
        ("Cargo.toml", PY312),
        (PYO3_030_MANIFEST, INTERPRETERS["3.15"]),
    ):
        session.run(
            "cargo",
            "clippy",
            "--manifest-path",
            manifest,
            "--all-targets",
            "--",
            "-D",
            "warnings",
            external=True,
            env={"PYO3_PYTHON": str(python)},
        )
        session.run("cargo", "fmt", "--check", "--manifest-path", manifest, external=True)
    # The aarch64 probe sites (src/sites/aarch64.rs) are linted by cross-checking.
    session.run("rustup", "target", "add", AARCH64, external=True)
    session.run(
        "cargo", "clippy", "--all-targets", "--target", AARCH64, "--", "-D", "warnings",
        external=True, env={"PYO3_CROSS_PYTHON_VERSION": "3.12"},
    )  # fmt: skip
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PY312 if PY312 else False, venv_backend="venv" if PY312 else "none")
def bench(session: nox.Session) -> None:
    """Run bench/run.py (posargs passed through) against the project in a 3.12 venv, then
    bench/kernel_sites.py: the probe site's cost per kernel (the host's, and Debian's 6.1,
    6.12 and 5.10 in qemu guests when run as root with qemu-system-x86_64 installed; it
    says so when it skips them; PYUSDT_BENCH_KERNELS picks kernels, "none" only the host)."""
    _require(session, "3.12")
    if not (ROOT / "bench" / "run.py").exists():
        session.skip("bench/run.py does not exist yet")
    _install_project(session)
    session.run("python", "bench/run.py", *session.posargs)
    session.run("python", "bench/kernel_sites.py")


WHEEL_REQS = ("maturin>=1.7,<2", "ziglang")
AARCH64 = "aarch64-unknown-linux-gnu"


def _manifest_args(version: str) -> list[str]:
    """The manifest whose PyO3 supports `version` (as build_backend/pyusdt_backend.py picks)."""
    minor = int(version.rstrip("t").split(".")[1])
    return ["--manifest-path", PYO3_030_MANIFEST] if minor >= 15 else []


@nox.session(python=PY312 if PY312 else False, venv_backend="venv" if PY312 else "none")
def wheels(session: nox.Session) -> None:
    """Builds a wheel per provisioned interpreter and install-tests each one.

    maturin links through zig against glibc 2.17 (`--compatibility manylinux2014`, which
    maturin's own compliance check verifies), so the wheels install on any x86_64 Linux
    with glibc >= 2.17. Each wheel is then installed into a fresh venv with no Rust
    toolchain on PATH and traced with a real bpftrace (matrix/wheel_check.py).
    """
    _require(session, "3.12")
    session.install(*WHEEL_REQS)
    out = ROOT / "dist" / "wheels"
    if out.exists():
        for old in out.glob("*.whl"):
            old.unlink()
    # A target directory of their own: zig-linked objects never mix with the others.
    env = {"CARGO_TARGET_DIR": str(ROOT / "target" / "wheels")}
    for version in REQUIRED:
        path = INTERPRETERS.get(version)
        if path is None:
            continue
        before = set(out.glob("*.whl"))
        session.run(
            "maturin", "build", "--release", "--zig", "--compatibility", "manylinux2014",
            *_manifest_args(version), "--interpreter", path, "--out", str(out), env=env,
        )  # fmt: skip
        built = sorted(set(out.glob("*.whl")) - before)
        if len(built) != 1:
            session.error(f"expected one new wheel for {version}, got {built}")
        session.run("python", str(ROOT / "matrix" / "wheel_check.py"), path, str(built[0]))
    # aarch64: cross-built (zig links; maturin knows each interpreter's layout by name),
    # checked by maturin's manylinux audit; not install-tested here: matrix/arm64-suite
    # builds the cp313 one the same way and tests it in an arm64 guest (in .ci/run).
    # maturin cross-builds free-threaded interpreters only from 3.14 on: no 3.13t wheel.
    session.run("rustup", "target", "add", AARCH64, external=True)
    for version in REQUIRED:
        if version not in INTERPRETERS or version == "3.13t":
            continue
        session.run(
            "maturin", "build", "--release", "--zig", "--compatibility", "manylinux2014",
            "--target", AARCH64, *_manifest_args(version),
            "--interpreter", f"python{version}", "--out", str(out),
            env=env,
        )  # fmt: skip


nox.options.sessions = [f"tests-{v}" for v in REQUIRED] + ["clients", "lint", "wheels"]
