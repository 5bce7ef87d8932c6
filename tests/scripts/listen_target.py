"""Target of tests/test_listen.py: imports pyusdt and records, from a sampler thread,
every change of this interpreter's enabled probes (with CLOCK_MONOTONIC times, which the
test's clock shares), while its main thread obeys commands on stdin, one per line:

    status        print `status JSON` (pyusdt.status() and the free sys.monitoring ids)
    changes       print `changes JSON`: [[monotonic_ns, enabled, tool_id], ...]
    wait SECS     pyusdt.wait_for_tracer(SECS); print `waited OK MONOTONIC_NS`
    call N        call work() N times; print `called N`
    spin / stop   a thread calls work() in a loop until `stop`

The main thread between two commands runs no Python function but work() (reading
binary stdin, decode, split, compare, print are C), so a per-thread count of PY_START
hits in between is exactly the number of work() calls.
"""

import json
import sys
import threading
import time

import pyusdt

changes = []
spinning = threading.Event()


def work():
    return 1


def sample():
    last = None
    while True:
        st = pyusdt.status()
        now = (st["enabled"], st["tool_id"])
        if now != last:
            changes.append([time.monotonic_ns(), *now])
            last = now
        time.sleep(0.001)


def spin():
    while spinning.is_set():
        work()
        time.sleep(0.0005)


threading.Thread(target=sample, daemon=True).start()
print("ready", flush=True)
# Binary: a text stdin decodes through encodings' IncrementalDecoder.decode, a Python call.
for line in sys.stdin.buffer:
    cmd = line.decode().split()
    if not cmd:
        continue
    if cmd[0] == "status":
        st = dict(pyusdt.status())
        st["free_ids"] = [i for i in range(6) if sys.monitoring.get_tool(i) is None]
        print("status", json.dumps(st), flush=True)
    elif cmd[0] == "changes":
        print("changes", json.dumps(changes), flush=True)
    elif cmd[0] == "wait":
        ok = pyusdt.wait_for_tracer(float(cmd[1]))
        print("waited", ok, time.monotonic_ns(), flush=True)
    elif cmd[0] == "call":
        for _ in range(int(cmd[1])):
            work()
        print("called", cmd[1], flush=True)
    elif cmd[0] == "spin":
        spinning.set()
        threading.Thread(target=spin, daemon=True).start()
        print("spinning", flush=True)
    elif cmd[0] == "stop":
        spinning.clear()
        print("stopped", flush=True)
