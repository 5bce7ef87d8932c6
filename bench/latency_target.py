"""The attach-latency target: calls a Python function about every millisecond.

Run as `python -m pyusdt latency_target.py SECONDS` (our pyusdt only); prints READY once
pyusdt is loaded (and its watcher is polling), then calls tick() every ~1 ms for SECONDS.
bench/run.py attaches bpftrace and measures from bpftrace's BEGIN to the first PY_START
of tick(). To break that down, the loop also notes (CLOCK_MONOTONIC, like bpftrace's
nsecs) when it first sees a probe attached (its semaphore set) and when it first sees
events enabled, and prints "ATTACHED ns" and "ENABLED ns" once it has seen both.
"""

import sys
import time

import pyusdt


def tick() -> None:
    pass


def main() -> None:
    deadline = time.monotonic() + float(sys.argv[1])
    attached = enabled = None
    print("READY", flush=True)
    while time.monotonic() < deadline:
        tick()
        if attached is None and pyusdt.attached_probes():
            attached = time.monotonic_ns()
        if enabled is None and pyusdt.status()["enabled"]:
            enabled = time.monotonic_ns()
            print(f"ATTACHED {attached}\nENABLED {enabled}", flush=True)
        time.sleep(0.001)


if __name__ == "__main__":
    main()
