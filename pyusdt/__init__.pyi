# Type stubs for the public `pyusdt` API (implemented in pyusdt/__init__.py).
from collections.abc import Iterable

from pyusdt.libpyusdt import __version__ as __version__
from pyusdt.libpyusdt import attached_probes as attached_probes
from pyusdt.libpyusdt import status as status

__all__ = ["PROBES", "__version__", "attached_probes", "lib_path", "status", "wait_for_tracer"]

PROBES: tuple[str, ...]  # the probes of provider `pyusdt`, in order

def lib_path() -> str:
    """Absolute path of the extension that holds the probes (for `usdt:PATH:pyusdt:...`)."""

def wait_for_tracer(timeout: float, probes: Iterable[str] | None = None) -> bool:
    """Block until a tracer is attached and events are enabled (all of `probes`, if given).

    Returns False if `timeout` seconds pass first.
    """
