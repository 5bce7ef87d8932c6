"""Runs the `wl_work` workload at once in the main interpreter and in N isolated
subinterpreters, one thread each; every interpreter waits until the probes are
enabled in itself before starting. Usage: interp_concurrent.py PROBES NSUB ROUNDS.
Prints `ids ...` (all interpreter ids, once pyusdt is loaded everywhere: attach
then), waits for a `go` line on stdin, prints `result ID VALUE` per interpreter."""

import os
import sys
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from interp_compat import Interp  # noqa: E402

import pyusdt  # noqa: E402, F401  (maps the probes' library before the tracer comes)

probes = sys.argv[1].split(",")
nsub = int(sys.argv[2])
rounds = int(sys.argv[3])

# Every interpreter runs this in its own __main__ (the main one in a fresh dict).
CODE = f"""
import sys
if {HERE!r} not in sys.path:
    sys.path.insert(0, {HERE!r})
import os, pyusdt, interp_workload
me = pyusdt.status()["interpreter_id"]
if not pyusdt.wait_for_tracer(60, {probes!r}):
    raise RuntimeError(f"interpreter {{me}}: tracer did not attach")
result = interp_workload.wl_work({rounds})
os.write(1, f"result {{me}} {{result}}\\n".encode())  # one write: no interleaving
"""

subs = [Interp() for _ in range(nsub)]
for s in subs:
    # Import (and register with the watcher) before the tracer comes.
    s.run(f"import sys; sys.path.insert(0, {HERE!r}); import pyusdt, interp_workload")
print("ids", 0, *(s.id for s in subs), flush=True)
# The test answers `go` once its tracer has attached all its probes.
if sys.stdin.readline().strip() != "go":
    sys.exit("no go line")

errors = []


def run_main():
    try:
        exec(CODE, {"__name__": "__wl_main__"})
    except BaseException as e:  # noqa: BLE001
        errors.append(f"main: {e!r}")


def run_sub(s):
    try:
        s.run(CODE)
    except BaseException as e:  # noqa: BLE001
        errors.append(f"{s.id}: {e}")


threads = [threading.Thread(target=run_main)]
threads += [threading.Thread(target=run_sub, args=(s,)) for s in subs]
for t in threads:
    t.start()
for t in threads:
    t.join()
for s in subs:
    s.close()
if errors:
    sys.exit("\n".join(errors))
