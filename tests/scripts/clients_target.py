"""Target of tests/test_clients.py: a workload with exact ground truth, driven over stdin.

`clients_target.py MODE [PROBES [TIMEOUT]]`. The workload, `work()`: `alpha` 50 times,
the method `K.beta` 20 times, the generator `gamma` iterated once (it yields 1, 2, 3).
MODE says when it runs:
  stdin   print "ready", run it on a "go" line;
  run     run it at once;
  tracer  run it once pyusdt.wait_for_tracer(TIMEOUT, PROBES) returns (PROBES
          comma-separated; exit status 3 if it times out).
After each run it prints "done". Until EOF or "exit" it then answers stdin lines:
"go" runs the workload again, "status" prints pyusdt.status() as one JSON line.
Every line it prints is flushed.
"""

import json
import sys

import pyusdt

ALPHA_CALLS = 50
BETA_CALLS = 20


def alpha(i):
    return i + 1


class K:
    def beta(self, s):
        return s * 2


def gamma():
    yield 1
    yield 2
    yield 3


def work():
    k = K()
    for i in range(ALPHA_CALLS):
        alpha(i)
    for _ in range(BETA_CALLS):
        k.beta("x")
    for _ in gamma():
        pass
    print("done", flush=True)


def main():
    mode = sys.argv[1]
    if mode == "tracer":
        probes = sys.argv[2].split(",")
        timeout = float(sys.argv[3]) if len(sys.argv) > 3 else 60.0
        if not pyusdt.wait_for_tracer(timeout, probes):
            print("timeout", flush=True)
            sys.exit(3)
        work()
    elif mode == "run":
        work()
    else:
        print("ready", flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "go":
            work()
        elif cmd == "status":
            print(json.dumps(pyusdt.status()), flush=True)
        elif cmd == "exit":
            break


main()
