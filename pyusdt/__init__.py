"""pyusdt: sys.monitoring (PEP 669) events as USDT probes for bpftrace.

This file owns the public Python API; the probes, the watcher and the
monitoring callbacks live in the Rust extension `pyusdt.libpyusdt`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

try:
    from pyusdt import libpyusdt
except ImportError as exc:  # e.g. `python -m pyusdt` run from a source checkout
    import glob  # only on this path: `import pyusdt` stays light

    if not glob.glob(glob.escape(__path__[0]) + "/libpyusdt*.so"):
        raise ImportError(
            f"pyusdt's extension is not built in {__path__[0]}: this is the source tree, "
            "not an installed pyusdt. Run from another directory, or `pip install -e .` "
            "to build it in place."
        ) from exc
    raise
from pyusdt.libpyusdt import __version__, attached_probes, status

__all__ = ["PROBES", "__version__", "attached_probes", "lib_path", "status", "wait_for_tracer"]

#: The probes of provider `pyusdt`, in order.
PROBES = (
    "PY_START",
    "PY_RESUME",
    "PY_RETURN",
    "PY_YIELD",
    "CALL",
    "LINE",
    "PY_UNWIND",
    "PY_THROW",
    "RAISE",
    "RERAISE",
    "EXCEPTION_HANDLED",
    "C_RETURN",
    "C_RAISE",
)
# How long the attached set must stay unchanged before `wait_for_tracer`
# without explicit probes considers the tracer fully attached. _SETTLE also
# covers a client that opens its output buffers only after placing its last
# uprobe (bcc's `trace` does: events in between are dropped by it, seen once
# under load with 50 ms here).
_PARTIAL_SETTLE = 1.0
_SETTLE = 0.25


def lib_path() -> str:
    """Absolute path of the extension that holds the probes (for `usdt:PATH:pyusdt:...`)."""
    return libpyusdt.__file__


def wait_for_tracer(timeout: float, probes: Iterable[str] | None = None) -> bool:
    """Block until a tracer is attached and its events are enabled in this interpreter.

    With `probes` (names such as "PY_START"), wait until all of them are enabled;
    without, until at least one is. A probe is enabled only once a tracer has
    patched its site (a raised semaphore alone is not enough, unless
    PYUSDT_TRUST_SEMAPHORES is set). Either way, then until the set of attached
    probes has stopped changing for a moment: a tracer attaches its probes one
    after another, and the kernel raises a probe's semaphore just before the
    tracer's program is in place. Returns True once that holds, False if
    `timeout` seconds pass first.
    """
    wanted = {p.upper() for p in probes} if probes is not None else None
    if wanted is not None and not wanted <= set(PROBES):
        raise ValueError(f"unknown probe name(s): {sorted(wanted - set(PROBES))}")
    deadline = time.monotonic() + timeout
    stable_since = 0.0
    last: tuple[list[str], list[str]] = ([], [])
    while True:
        st = status()
        enabled = set(st["enabled"])
        if (wanted <= enabled) if wanted is not None else bool(enabled):
            now = time.monotonic()
            seen = (st["attached"], st["patched"])
            # Listening, not attached: a raised semaphore whose sites nobody patched
            # (left by a SIGKILLed bcc, say) is never enabled, and must not stall this.
            if seen != last or enabled != set(st["listening"]):
                last, stable_since = seen, now
            # Every location of every attached probe patched: the tracer is done
            # (a probe's semaphore rises with its first location, and each probe
            # has a site per kind, see the README). A client that attaches only
            # some locations is waited for a while longer instead.
            elif now - stable_since >= (
                _SETTLE if set(st["attached"]) <= set(st["patched"]) else _PARTIAL_SETTLE
            ):
                return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(0.005, remaining))
