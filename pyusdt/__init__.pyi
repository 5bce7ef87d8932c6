# Type stubs for the public `pyusdt` API (implemented in pyusdt/__init__.py).
from pyusdt.libpyusdt import __version__ as __version__
from pyusdt.libpyusdt import attached_probes as attached_probes
from pyusdt.libpyusdt import status as status

__all__ = ["__version__", "attached_probes", "lib_path", "status", "wait_for_tracer"]

def lib_path() -> str:
    """Absolute path of the extension that holds the probes (for `usdt:PATH:pyusdt:...`)."""

def wait_for_tracer(timeout: float) -> bool:
    """Block until a tracer is attached and events are enabled; False after `timeout` s."""
