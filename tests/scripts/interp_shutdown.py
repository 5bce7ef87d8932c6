"""Process exit when only subinterpreters imported pyusdt: the first importer
is a subinterpreter and the main interpreter never imports it. Two
subinterpreters stay alive until exit, a third is destroyed before; then
`sys.exit(4)`. Usage: interp_shutdown.py traced|untraced; prints `ready A B C`,
and when traced, subinterpreter A waits for PY_START before its workload."""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from interp_compat import Interp  # noqa: E402

SETUP = f"import sys; sys.path.insert(0, {HERE!r}); import pyusdt, interp_workload"
a = Interp()
a.run(SETUP)
b = Interp()
b.run(SETUP)
c = Interp()
c.run(SETUP)
c.close()
print("ready", a.id, b.id, c.id, flush=True)
if sys.argv[1] == "traced":
    a.run(
        "if not pyusdt.wait_for_tracer(60, ['PY_START']):\n"
        "    raise RuntimeError('tracer did not attach')\n"
        "interp_workload.wl_work(2)\n"
    )
b.run("interp_workload.wl_work(1)")
if "pyusdt" in sys.modules:
    sys.exit("the main interpreter imported pyusdt")
sys.exit(4)
