"""Target of tests/test_jit.py: a hot loop that CPython's JIT compiles before any tracer
is attached, then run again once one is (argv: the calls of that second run; "native" as
argv[2] waits for "go" only, not for pyusdt's probes). Prints whether the JIT is on and
in how many iterations of each run the loop ran JIT-compiled code; with pyusdt's probes, a
third run once the tracer is gone (after a second "go")."""

import os
import sys
import time

import pyusdt

WARM = 50_000


def jit_leaf(i):
    return i + 1


def hot(n):
    """sum(jit_leaf(i)), and in how many iterations this frame ran JIT-compiled code."""
    total = jitted = 0
    for i in range(n):
        total += jit_leaf(i)
        jitted += sys._jit.is_active()
    return total, jitted


_, warm_jitted = hot(WARM)
print("WARM", os.getpid(), sys._jit.is_enabled(), warm_jitted, flush=True)
sys.stdin.readline()
if sys.argv[2:] != ["native"] and not pyusdt.wait_for_tracer(60, ["PY_START", "PY_RETURN"]):
    sys.exit("jit_hot: probes were not enabled")
n = int(sys.argv[1])
total, jitted = hot(n)
assert total == n * (n + 1) // 2
print("TRACED", jitted, flush=True)
if sys.argv[2:] != ["native"]:
    # Once the tracer is gone (and pyusdt has let go of sys.monitoring), the JIT again.
    sys.stdin.readline()
    deadline = time.monotonic() + 30
    while pyusdt.status()["tool_id"] is not None:
        if time.monotonic() > deadline:
            sys.exit("jit_hot: pyusdt still monitors 30 s after the tracer left")
        time.sleep(0.01)
    print("DETACHED", hot(n)[1], flush=True)
