"""Subinterpreter churn: 2 threads create an isolated subinterpreter, import
pyusdt in it, run a little code and destroy it, at least NSUB times in all,
while the test attaches and detaches tracers. Usage: interp_churn.py NSUB
[--no-sub-wait] (--no-sub-wait: no subinterpreter waits for a tracer, for
3.13.0 where subinterpreters are not traced).

Protocol on stdout/stdin: `ready` (pyusdt imported; waits for a first tracer),
`reached NSUB` (churn goes on until a `stop` line on stdin), `churned TOTAL`,
then after a `final` line: waits until no probe is enabled, prints `waiting`,
waits for a `go` line and PY_START, calls `churn_marker` in the main
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
    if pyusdt.wait_for_tracer({{wait_s}}, ["PY_START"]):
        churn_marker()
"""
RESULT_1 = interp_workload.wl_work(1)


stop = threading.Event()
errors = []
done = [0, 0]
reached = [threading.Event(), threading.Event()]


def churn(me, minimum):
    k = 0
    while k < minimum or not stop.is_set():
        try:
            s = Interp()
            try:
                # Every 25th waits (briefly: the test may be between tracers).
                wait = sub_wait and k % 25 == 0
                s.run(CODE.format(rounds_1=RESULT_1, iid=s.id, wait=wait, wait_s=5))
            finally:
                s.close()
        except BaseException as e:  # noqa: BLE001
            errors.append(repr(e))
            break
        k += 1
        done[me] = k
        if k == minimum:
            reached[me].set()


def churn_marker():
    return 1


print("ready", flush=True)
if not pyusdt.wait_for_tracer(60):
    sys.exit("no first tracer")
half = nsub // 2
threads = [
    threading.Thread(target=churn, args=(0, half)),
    threading.Thread(target=churn, args=(1, nsub - half)),
]
for t in threads:
    t.start()
for ev, t in zip(reached, threads, strict=True):
    while not ev.wait(0.1) and t.is_alive():
        pass
if not errors:
    print("reached", nsub, flush=True)
    if sys.stdin.readline().strip() != "stop":
        errors.append("no stop line")
stop.set()
for t in threads:
    t.join()
if errors:
    sys.exit("\n".join(errors[:5]))
print("churned", sum(done), flush=True)

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
if sys.stdin.readline().strip() != "go":  # the final tracer attached all its probes
    sys.exit("no go line")
if not pyusdt.wait_for_tracer(60, ["PY_START"]):
    sys.exit("final tracer did not attach")
churn_marker()
s = Interp()
s.run(CODE.format(rounds_1=RESULT_1, iid=s.id, wait=sub_wait, wait_s=60))
s.close()
print("done", pyusdt.status()["interpreter_id"], s.id, flush=True)
