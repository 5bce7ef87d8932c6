"""The script `pyusdt-trace` starts its target with: `python .../pyusdt/_trace_boot.py ARGS`.

It behaves as `python -m pyusdt ARGS`, except that pyusdt is loaded from this very
directory rather than looked up on sys.path: with `-m`, a `pyusdt/` directory in the
current directory (a source checkout, say) would shadow the installed one.

It is a file in the pyusdt package, not `python -c CODE`, so that this outermost frame is
pyusdt's own code, which is never traced: a `-c` frame (file `<string>`) would show up in
the trace as a PY_RETURN once the target has finished. Nothing else runs first, so no
runpy frame lies under the target either.

With PYUSDT_TRACE_GATE=FD in the environment (set by `pyusdt-trace --tool`), the target
waits, before its first line, for a line on that pipe instead (--wait's timeout does not
apply): pyusdt-trace writes it when
bpftrace has run the tool's BEGIN, i.e. once every probe is attached, and it names the
tool's probes (comma-separated); the target then waits until pyusdt has enabled all of
them, so that no event of the program's first lines is missed. End of file instead (no
names) lets it run at once.
"""

import importlib.util
import os
import sys
import time

# python put this file's directory first on sys.path; `python -m` puts the cwd there.
if not sys.flags.safe_path:
    sys.path[0] = os.getcwd()
_here = os.path.dirname(os.path.abspath(__file__))
try:
    _spec = importlib.util.spec_from_file_location("pyusdt", os.path.join(_here, "__init__.py"))
    _pyusdt = importlib.util.module_from_spec(_spec)
    sys.modules["pyusdt"] = _pyusdt
    _spec.loader.exec_module(_pyusdt)
except OSError as exc:
    sys.stderr.write(f"pyusdt-trace: cannot load pyusdt from {_here}: {exc.strerror or exc}\n")
    sys.exit(2)
import pyusdt.__main__ as _main  # noqa: E402

_gate = os.environ.pop("PYUSDT_TRACE_GATE", None)
if _gate is not None and _gate.isdigit():

    def _wait_for_gate(wait, probes, _fd=int(_gate)):
        # Instead of --wait (whose timeout would start the program untraced while bpftrace
        # is still compiling a tool, on a busy machine): until pyusdt-trace says.
        data = b""
        try:
            while not data.endswith(b"\n"):
                chunk = os.read(_fd, 4096)
                if not chunk:
                    break
                data += chunk
            os.close(_fd)
        except OSError:
            pass
        # "NAME,NAME,... SETTLE": the tool's USDT probes, then how long its kernel probes
        # may still take to attach once those are enabled.
        line, _, settle = data.decode(errors="replace").strip().partition(" ")
        names = [n for n in line.split(",") if n in _pyusdt.PROBES]
        if names and not _pyusdt.wait_for_tracer(max(wait or 0.0, 10.0), names):
            sys.stderr.write("pyusdt: the tool's probes were not enabled; running anyway\n")
        try:
            time.sleep(min(max(float(settle or 0), 0.0), 5.0))
        except ValueError:
            pass

    _main._wait_for_tracer = _wait_for_gate

sys.argv[0] = _main.__file__
_main.main()
