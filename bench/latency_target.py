"""The attach-latency target: calls a Python function about every millisecond.

Run as `python -m pyusdt latency_target.py SECONDS`; prints READY once pyusdt is loaded
(and its watcher is polling), then calls tick() every ~1 ms for SECONDS. bench/run.py
attaches bpftrace and measures from bpftrace's BEGIN to the first PY_START of tick().
"""

import sys
import time


def tick() -> None:
    pass


def main() -> None:
    deadline = time.monotonic() + float(sys.argv[1])
    print("READY", flush=True)
    while time.monotonic() < deadline:
        tick()
        time.sleep(0.001)


if __name__ == "__main__":
    main()
