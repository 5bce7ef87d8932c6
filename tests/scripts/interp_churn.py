"""Subinterpreter churn: 2 threads create an isolated subinterpreter, import
pyusdt in it, run a little code and destroy it, NSUB times in all, while the
test attaches and detaches tracers. Usage: interp_churn.py NSUB [--no-sub-wait]
(--no-sub-wait: no subinterpreter waits for a tracer, for 3.13.0 where
subinterpreters are not traced).

Protocol on stdout/stdin: `ready` (pyusdt imported; waits for a first tracer),
`churned N`, then after a `final` line on stdin: waits until no probe is
enabled, prints `waiting`, waits for PY_START, calls `churn_marker` in the main
interpreter and in a fresh subinterpreter, prints `done MAIN_ID SUB_ID`."""

import os
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import interp_workload  # noqa: E402
from interp_compat import Interp  # noqa: E402

import pyusdt  # noqa: E402

nsub = int(sys.argv[1])
sub_wait = "--no-sub-wait" not in sys.argv[2:]
# Every 25th subinterpreter waits for a tracer and fires `churn_marker` itself.
CODE = f"""
import sys
sys.path.insert(0, {HERE!r})
import pyusdt, interp_workload

def churn_marker():
    return 1

assert interp_workload.wl_work(1) == {{rounds_1}}
assert pyusdt.status()["interpreter_id"] == {{iid}}
if {{wait}}:
    if pyusdt.wait_for_tracer(60, ["PY_START"]):
        churn_marker()
"""
RESULT_1 = interp_workload.wl_work(1)


def churn(count, first, errors):
    for k in range(count):
        try:
            s = Interp()
            try:
                wait = sub_wait and (first + k) % 25 == 0
                s.run(CODE.format(rounds_1=RESULT_1, iid=s.id, wait=wait))
            finally:
                s.close()
        except BaseException as e:  # noqa: BLE001
            errors.append(repr(e))


def churn_marker():
    return 1


print("ready", flush=True)
if not pyusdt.wait_for_tracer(60):
    sys.exit("no first tracer")
errors = []
half = nsub // 2
threads = [
    threading.Thread(target=churn, args=(half, 0, errors)),
    threading.Thread(target=churn, args=(nsub - half, half, errors)),
]
for t in threads:
    t.start()
for t in threads:
    t.join()
if errors:
    sys.exit("\n".join(errors[:5]))
print("churned", nsub, flush=True)

if sys.stdin.readline().strip() != "final":
    sys.exit("no final line")
# The churn tracers are gone: wait until the watcher has disabled everything.
for _ in range(6000):
    st = pyusdt.status()
    if not st["enabled"] and not st["attached"]:
        break
    time.sleep(0.01)
else:
    sys.exit(f"probes stayed enabled: {pyusdt.status()}")
print("waiting", flush=True)
if not pyusdt.wait_for_tracer(60, ["PY_START"]):
    sys.exit("final tracer did not attach")
churn_marker()
s = Interp()
s.run(CODE.format(rounds_1=RESULT_1, iid=s.id, wait=sub_wait))
s.close()
print("done", pyusdt.status()["interpreter_id"], s.id, flush=True)
