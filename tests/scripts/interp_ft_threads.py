"""Free-threaded workload: N threads run `wl_work(1)` in a loop at once.
Usage: interp_ft_threads.py PROBES NTHREADS ITERATIONS|until-stop EXPECTED
(EXPECTED: the result of `wl_work(1)`, checked by every iteration).

Imports pyusdt, prints `loaded`, waits for a `go` line on stdin and until
PROBES are enabled, then starts the threads together. With a number, each
thread runs that many iterations; with `until-stop`, until a `stop` line
arrives on stdin. Prints per thread
`thread NATIVE_ID ITERATIONS`, checks every result, and `gil False|True`."""

import os
import sys
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import interp_workload  # noqa: E402

import pyusdt  # noqa: E402

probes = [p for p in sys.argv[1].split(",") if p]
nthreads = int(sys.argv[2])
until_stop = sys.argv[3] == "until-stop"
iterations = 0 if until_stop else int(sys.argv[3])
expected = int(sys.argv[4])

print("loaded", flush=True)
# The test answers `go` once its tracer has attached all its probes.
if sys.stdin.readline().strip() != "go":
    sys.exit("no go line")
stop = threading.Event()
start = threading.Barrier(nthreads)
errors = []
done = []


def worker():
    n = 0
    try:
        start.wait()
        while (not stop.is_set()) if until_stop else n < iterations:
            if interp_workload.wl_work(1) != expected:
                errors.append("wrong result")
            n += 1
    except BaseException as e:  # noqa: BLE001
        errors.append(repr(e))
    done.append((threading.get_native_id(), n))


if probes and not pyusdt.wait_for_tracer(60, probes):
    sys.exit("tracer did not attach")
print("started", flush=True)
threads = [threading.Thread(target=worker) for _ in range(nthreads)]
for t in threads:
    t.start()
if until_stop:
    if sys.stdin.readline().strip() != "stop":
        errors.append("no stop line")
    stop.set()
for t in threads:
    t.join()
for tid, n in done:
    print("thread", tid, n, flush=True)
print("gil", sys._is_gil_enabled(), flush=True)
if errors:
    sys.exit("\n".join(errors[:5]))
