"""Target for test_lifecycle.py: imports pyusdt, then answers commands read from stdin
with one JSON line each on stdout, describing pyusdt.status() and sys.monitoring.

Commands: `snapshot`; `wait_enabled` (until PY_START is attached, then until it is
enabled; reports how long enabling took after the probe showed up as attached);
`ping` (calls marker_function 3 times); `wait_disabled`; `exit`.
"""

import json
import sys
import time

import pyusdt

mon = sys.monitoring
BITS = {p: getattr(mon.events, p) for p in pyusdt.PROBES}


def snapshot():
    return {
        "status": pyusdt.status(),
        "tools": [mon.get_tool(i) for i in range(6)],
        "events": [mon.get_events(i) for i in range(6)],
        "bits": BITS,
    }


def marker_function():
    return 42


def wait_until(cond, timeout=60.0):
    deadline = time.monotonic() + timeout
    while True:
        s = snapshot()
        if cond(s):
            return s
        if time.monotonic() > deadline:
            raise SystemExit(f"lifecycle_target: timed out, last {s}")
        time.sleep(0.001)


def reply(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


for line in sys.stdin:
    cmd = line.strip()
    if cmd == "snapshot":
        reply(snapshot())
    elif cmd == "wait_enabled":
        wait_until(lambda s: "PY_START" in s["status"]["attached"])
        t0 = time.monotonic()
        s = wait_until(lambda s: s["status"]["enabled"])
        s["delay"] = time.monotonic() - t0
        reply(s)
    elif cmd == "ping":
        reply([marker_function() for _ in range(3)])
    elif cmd == "wait_disabled":
        reply(wait_until(lambda s: not s["status"]["enabled"] and s["status"]["tool_id"] is None))
    elif cmd == "exit":
        break
    else:
        raise SystemExit(f"lifecycle_target: unknown command {cmd!r}")
