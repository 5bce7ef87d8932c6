# Type stubs for the native extension `pyusdt.libpyusdt` (written in Rust, see src/).
# This file owns only the typing of its Python-visible API.
from typing import TypedDict

__version__: str
REPR_MAX: int  # default maximum bytes of a value repr passed to probes

class Status(TypedDict):  # stub-only: for annotations under TYPE_CHECKING
    """What `status()` reports about this interpreter's probes."""

    tool_id: int | None  # the sys.monitoring tool id in use, None while not registered
    poll_msec: int  # how often the watcher checks for attached tracers (PYUSDT_CHECK_MSEC)
    attached: list[str]  # probes whose USDT semaphore is > 0 (a tracer announced them)
    patched: list[str]  # probes every site of which a tracer has patched (int3 or a call)
    listening: list[str]  # attached and the site that fires here patched: what gets enabled
    trust_semaphores: bool  # PYUSDT_TRUST_SEMAPHORES: attached alone is listening
    enabled: list[str]  # probes whose sys.monitoring events are enabled here
    interpreter_id: int
    repr_max: int  # maximum bytes of a value repr passed to PY_RETURN/PY_YIELD/CALL
    repr: str  # 'safe' (no user code runs for a repr) or 'full' (PYUSDT_REPR=full)

def status() -> Status: ...
def attached_probes() -> list[str]: ...
