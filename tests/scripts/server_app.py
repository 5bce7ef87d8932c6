"""WSGI app for tests/test_servers.py, served by uWSGI and gunicorn.

With SERVER_APP_PYUSDT=1 the module imports pyusdt, so a preforking server
imports it in its master and forks the workers from there. Routes:
  /req/K    calls a function named `req_K` (made once per K, from one code object)
            and answers "PID K": the test's ground truth of who served what
  /status   answers "PID PROBES", the probes whose events are enabled in the
            worker that served it ("-" for none, or without pyusdt)
"""

from __future__ import annotations

import os
import types

if os.environ.get("SERVER_APP_PYUSDT") == "1":
    import pyusdt
else:
    pyusdt = None

_handlers: dict[int, types.FunctionType] = {}


def _template() -> int:
    return 0


def _handler(k: int) -> types.FunctionType:
    f = _handlers.get(k)
    if f is None:
        name = f"req_{k}"
        f = types.FunctionType(_template.__code__.replace(co_name=name, co_qualname=name), {})
        _handlers[k] = f
    return f


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path.startswith("/req/"):
        k = int(path[5:])
        _handler(k)()
        body = f"{os.getpid()} {k}"
    elif path == "/status":
        enabled = pyusdt.status()["enabled"] if pyusdt is not None else []
        body = f"{os.getpid()} {','.join(enabled) or '-'}"
    else:
        start_response("404 Not Found", [("Content-Length", "0")])
        return [b""]
    data = body.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
    return [data]
