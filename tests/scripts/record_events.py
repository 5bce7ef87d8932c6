"""Reference recorder for test_probes.py: runs a script as __main__ under a plain
sys.monitoring tool (no pyusdt, no tracer) and writes, as JSON, what each probe
would carry for every event raised by code of that script's file.

usage: python record_events.py TOOL_ID MAXLEN OUT.json SCRIPT [ARGS...]

Strings (function name, value/callable repr) are cut to MAXLEN bytes of UTF-8, as
bpftrace's str() does with BPFTRACE_STRLEN=MAXLEN+1.
"""

import json
import runpy
import sys

tool = int(sys.argv[1])
maxlen = int(sys.argv[2])
out_path = sys.argv[3]
script = sys.argv[4]
sys.argv = sys.argv[4:]

mon = sys.monitoring
ev = mon.events
records = []


def cut(s):
    return s.encode("utf-8")[:maxlen].decode("utf-8", "ignore")


def value(v):
    try:
        return cut(repr(v))
    except Exception as e:  # noqa: BLE001 - mirrors the probe's placeholder
        return f"<repr failed: {type(e).__name__}>"


def ours(code):
    return code.co_filename == script


def start_like(name):
    def cb(code, offset):
        if ours(code):
            records.append([name, cut(code.co_name), code.co_firstlineno, offset])

    return cb


def value_like(name):
    def cb(code, offset, obj, *_):
        if ours(code):
            records.append([name, cut(code.co_name), code.co_firstlineno, offset, value(obj)])

    return cb


def line(code, lineno):
    if ours(code):
        records.append(["LINE", cut(code.co_name), lineno])


callbacks = {
    "PY_START": start_like("PY_START"),
    "PY_RESUME": start_like("PY_RESUME"),
    "PY_RETURN": value_like("PY_RETURN"),
    "PY_YIELD": value_like("PY_YIELD"),
    "CALL": value_like("CALL"),
    "LINE": line,
}

mon.use_tool_id(tool, "reference-recorder")
mask = 0
for name, cb in callbacks.items():
    mon.register_callback(tool, getattr(ev, name), cb)
    mask |= getattr(ev, name)
mon.set_events(tool, mask)
try:
    runpy.run_path(script, run_name="__main__")
finally:
    mon.set_events(tool, 0)
    mon.free_tool_id(tool)
    with open(out_path, "w") as f:
        json.dump(records, f)
