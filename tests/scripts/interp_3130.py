"""CPython 3.13.0 (gh-126914): the watcher must not enter subinterpreters.
The main interpreter and one subinterpreter import pyusdt; once the tracer's
PY_START is enabled in main, both run the `wl_*` workload for a while
(repeatedly, so a wrongly traced subinterpreter would show events). Prints
`loaded SUB_ID`, then waits for `go` on stdin, `sub-enabled [...]` at the end."""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import interp_workload  # noqa: E402
from interp_compat import Interp  # noqa: E402

import pyusdt  # noqa: E402

s = Interp()
s.run(f"import sys; sys.path.insert(0, {HERE!r}); import pyusdt, interp_workload, time")
print("loaded", s.id, flush=True)
if sys.stdin.readline().strip() != "go":  # the tracer attached all its probes
    sys.exit("no go line")
if not pyusdt.wait_for_tracer(60, ["PY_START"]):
    sys.exit("tracer did not attach")
interp_workload.wl_work(1)
s.run(
    "deadline = time.monotonic() + 0.5\n"
    "while time.monotonic() < deadline:\n"
    "    interp_workload.wl_work(1)\n"
    "print('sub-enabled', pyusdt.status()['enabled'], flush=True)\n"
)
s.close()
