"""matrix/wheel_check.py -- owned by the wheels work (`nox -s wheels`).

Installs one built wheel into a fresh venv of the given interpreter with no Rust
toolchain reachable (PATH holds only the venv and the system's /usr/bin:/bin, CARGO and
RUSTUP homes point nowhere), then traces an example with the installed `pyusdt-trace`
and a real bpftrace and checks the exact count of one function's PY_START events.

    python3 matrix/wheel_check.py PYTHON WHEEL

Prints one line per check; exits non-zero (with the reason) on the first failure.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CALLS = 250
PROGRAM = f"""
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def top(i):
    return fib(5)


for i in range({CALLS}):
    top(i)
print("ok")
"""
BT = 'usdt:PYUSDT:pyusdt:PY_START /str(arg0) == "top"/ { @top = count(); }'


def fail(msg: str) -> None:
    sys.exit(f"wheel_check: {msg}")


def run(cmd: list[str], env: dict[str, str], timeout: float = 300) -> str:
    # From the venv's directory: never the source tree, whose pyusdt/ would shadow it.
    cwd = Path(env["HOME"])
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    if r.returncode != 0:
        fail(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r.stdout


def main() -> None:
    if len(sys.argv) != 3:
        fail("usage: wheel_check.py PYTHON WHEEL")
    python, wheel = sys.argv[1], Path(sys.argv[2]).resolve()
    bpftrace = shutil.which("bpftrace")
    if bpftrace is None:
        fail("bpftrace is not installed")
    with tempfile.TemporaryDirectory(prefix="pyusdt-wheel-") as tmp:
        venv = Path(tmp) / "venv"
        subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=300)
        env = {
            "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
            "HOME": tmp,
            "CARGO_HOME": str(Path(tmp) / "no-cargo"),
            "RUSTUP_HOME": str(Path(tmp) / "no-rustup"),
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        }
        for tool in ("cargo", "rustc", "maturin"):
            if shutil.which(tool, path=env["PATH"]):
                fail(f"{tool} is reachable from the test venv's PATH")
        # --no-index: nothing may be fetched or built; the wheel has no dependencies.
        run([str(venv / "bin" / "pip"), "install", "--no-index", str(wheel)], env)
        print(f"installed {wheel.name} into a venv of {python} with no Rust toolchain")
        lib = run([str(venv / "bin" / "python"), "-m", "pyusdt", "--lib"], env).strip()
        if not lib.startswith(str(venv)):
            fail(f"the library {lib} is not the venv's")
        script = Path(tmp) / "prog.py"
        script.write_text(PROGRAM)
        trace = [str(venv / "bin" / "pyusdt-trace"), "--bpftrace", bpftrace, "-e", BT, "--"]
        out = run([*trace, str(script)], {**env, "PATH": env["PATH"] + ":/usr/sbin:/sbin"})
        want = f"@top: {CALLS}"
        if "ok" not in out.splitlines() or want not in out:
            fail(f"expected the program's 'ok' and '{want}' in the trace, got:\n{out}")
        print(f"traced with the wheel's pyusdt-trace: {want}")


if __name__ == "__main__":
    main()
