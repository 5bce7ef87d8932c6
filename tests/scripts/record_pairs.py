"""Reference recorder for test_pairing.py / test_exceptions.py: runs a script as
__main__ under a plain sys.monitoring tool (no pyusdt, no tracer) and writes, as JSON,
one record per event raised by code of that script's file:
[event, thread, co_name, co_firstlineno, offset, detail...], thread numbered in order of
first event. detail: exception events: type name, message cut to 63 bytes (by pyusdt's rule: README,
probe reference); C_RETURN / C_RAISE: repr of the callable; strings cut
to 63 bytes, as bpftrace's str() reads them by default.

usage: python record_pairs.py TOOL_ID OUT.json SCRIPT [ARGS...]
With PYUSDT_REF_FILE=PATH, the events of code of PATH are recorded instead.
"""

import json
import os
import runpy
import sys
import threading

tool = int(sys.argv[1])
out_path = sys.argv[2]
script = sys.argv[3]
sys.argv = sys.argv[3:]
ref_file = os.environ.get("PYUSDT_REF_FILE", script)
# As `python SCRIPT` would: the script's directory first on the path (not this one's).
sys.path[0] = os.path.dirname(os.path.abspath(script))

mon = sys.monitoring
ev = mon.events
records = []
threads = {}
HEAPTYPE = 1 << 9


def thread():
    return threads.setdefault(threading.get_ident(), len(threads))


def type_name(t):
    if t.__flags__ & HEAPTYPE:
        mod = t.__dict__.get("__module__")
        if isinstance(mod, str) and mod != "builtins":
            return f"{mod}.{t.__qualname__}"
        return t.__name__
    return t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def cut(s):
    return s.encode()[:63].decode("utf-8", "ignore")


def message(e):
    t = type(e)
    if t.__flags__ & HEAPTYPE or t.__str__ is not BaseException.__str__:
        return ""
    a = e.args
    if type(a) is tuple and len(a) == 1 and type(a[0]) is str:
        return cut(a[0])
    return ""


def code_ev(name):
    def cb(code, offset, *rest):
        if code.co_filename == ref_file:
            records.append([name, thread(), code.co_name, code.co_firstlineno, offset])

    return cb


def exc_ev(name):
    def cb(code, offset, exc):
        if code.co_filename == ref_file:
            records.append(
                [
                    name,
                    thread(),
                    code.co_name,
                    code.co_firstlineno,
                    offset,
                    type_name(type(exc)),
                    message(exc),
                ]
            )

    return cb


def c_ev(name):
    def cb(code, offset, callable_, arg0):
        if code.co_filename == ref_file:
            records.append(
                [name, thread(), code.co_name, code.co_firstlineno, offset, cut(repr(callable_))]
            )

    return cb


callbacks = {
    "PY_START": code_ev("PY_START"),
    "PY_RESUME": code_ev("PY_RESUME"),
    "PY_RETURN": code_ev("PY_RETURN"),
    "PY_YIELD": code_ev("PY_YIELD"),
    "CALL": lambda *a: None,  # C_RETURN / C_RAISE come only where CALL is monitored
    "PY_UNWIND": exc_ev("PY_UNWIND"),
    "PY_THROW": exc_ev("PY_THROW"),
    "RAISE": exc_ev("RAISE"),
    "RERAISE": exc_ev("RERAISE"),
    "EXCEPTION_HANDLED": exc_ev("EXCEPTION_HANDLED"),
    "C_RETURN": c_ev("C_RETURN"),
    "C_RAISE": c_ev("C_RAISE"),
}

mon.use_tool_id(tool, "reference-recorder")
mask = 0
for name, cb in callbacks.items():
    mon.register_callback(tool, getattr(ev, name), cb)
    if name not in ("C_RETURN", "C_RAISE"):
        mask |= getattr(ev, name)
mon.set_events(tool, mask)
try:
    runpy.run_path(script, run_name="__main__")
finally:
    mon.set_events(tool, 0)
    mon.free_tool_id(tool)
    with open(out_path, "w") as f:
        json.dump(records, f)
