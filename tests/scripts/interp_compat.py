"""Subinterpreter compat shim for the interpreter tests (3.12 to 3.14+).

`Interp()` creates an isolated interpreter (own GIL, own obmalloc);
`run(code)` runs source in its __main__ and raises `RunFailed` when the code
raised; `close()` destroys it. 3.12: `_xxsubinterpreters`; 3.13:
`_interpreters`; 3.14+: `concurrent.interpreters`.
"""

from __future__ import annotations

import sys


class RunFailed(RuntimeError):
    pass


if sys.version_info >= (3, 14):
    from concurrent import interpreters as _ci

    def _create() -> object:
        return _ci.create()

    def _id(h: object) -> int:
        return int(h.id)  # type: ignore[attr-defined]

    def _run(h: object, code: str) -> None:
        try:
            h.exec(code)  # type: ignore[attr-defined]
        except _ci.ExecutionFailed as e:
            raise RunFailed(str(e)) from None

    def _destroy(h: object) -> None:
        h.close()  # type: ignore[attr-defined]

elif sys.version_info >= (3, 13):
    import _interpreters as _i  # type: ignore[import-not-found]

    def _create() -> object:
        return _i.create(_i.new_config("isolated"))

    def _id(h: object) -> int:
        return int(h)  # type: ignore[call-overload]

    def _run(h: object, code: str) -> None:
        exc = _i.exec(h, code)
        if exc is not None:
            raise RunFailed(exc.errdisplay)

    def _destroy(h: object) -> None:
        _i.destroy(h)

else:
    import _xxsubinterpreters as _i  # type: ignore[import-not-found]

    def _create() -> object:
        return _i.create(isolated=True)

    def _id(h: object) -> int:
        return int(h)  # type: ignore[call-overload]

    def _run(h: object, code: str) -> None:
        try:
            _i.run_string(h, code)
        except _i.RunFailedError as e:
            raise RunFailed(str(e)) from None

    def _destroy(h: object) -> None:
        _i.destroy(h)


class Interp:
    """One isolated subinterpreter."""

    def __init__(self) -> None:
        self._h = _create()
        self.id = _id(self._h)

    def run(self, code: str) -> None:
        _run(self._h, code)

    def close(self) -> None:
        _destroy(self._h)
