"""pyusdt: sys.monitoring (PEP 669) events as USDT probes for bpftrace.

This file owns the public Python API; the probes, the watcher and the
monitoring callbacks live in the Rust extension `pyusdt.libpyusdt`.
"""

from __future__ import annotations

import time

from pyusdt import libpyusdt
from pyusdt.libpyusdt import __version__, attached_probes, status

__all__ = ["__version__", "attached_probes", "lib_path", "status", "wait_for_tracer"]


def lib_path() -> str:
    """Absolute path of the extension that holds the probes (for `usdt:PATH:pyusdt:...`)."""
    return libpyusdt.__file__


def wait_for_tracer(timeout: float) -> bool:
    """Block until a tracer is attached and its events are enabled in this interpreter.

    Returns True once events are enabled, False if `timeout` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while True:
        if status()["enabled"]:
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(0.005, remaining))
