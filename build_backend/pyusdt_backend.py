"""pyusdt's PEP 517 build backend: maturin, with the Cargo manifest chosen per interpreter.

Why: pyusdt supports CPython 3.12 to 3.15, GIL and free-threaded (3.13t, 3.14t, 3.15t).
No single PyO3 release covers that range: PyO3 0.28 is the last with 3.13t and supports
CPython only up to 3.14 (3.15 only as an "experimental ABI" build), PyO3 0.29 dropped
3.13t, PyO3 0.30 supports 3.15. Two pyo3-ffi versions cannot be in one Cargo graph (both
declare `links = "python"`, so not even as optional renamed dependencies), so there are
two manifests over one source tree:

  Cargo.toml            PyO3 0.28.x, for CPython <= 3.14 (incl. 3.13t, 3.14t)
  pyo3-0.30/Cargo.toml  PyO3 0.30.x, for CPython >= 3.15 (3.15, 3.15t);
                        same src/, build.rs and dependencies, own Cargo.lock

(The second manifest sits one level below the root on purpose: given `--manifest-path`,
maturin looks for pyproject.toml only up to the parent of that manifest's workspace root.)

This module only picks the manifest and hands over to maturin's own backend: it adds
`--manifest-path pyo3-0.30/Cargo.toml` to maturin's build arguments when the
target interpreter is 3.15 or newer. The target is the interpreter running this backend
(as for maturin itself), or the one given with `-i`/`--interpreter` in the maturin
arguments (config setting `maturin.build-args` or `MATURIN_PEP517_ARGS`). An explicit
`-m`/`--manifest-path` there wins. Nothing else of maturin's behaviour changes, so
`pip install .` needs no extra option on any supported interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import maturin
from maturin import (  # noqa: F401  (re-exported PEP 517 hooks that need no manifest)
    build_sdist,
    get_requires_for_build_editable,
    get_requires_for_build_sdist,
    get_requires_for_build_wheel,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYO3_030_MANIFEST = os.path.join("pyo3-0.30", "Cargo.toml")
# The first CPython minor version that needs the PyO3 0.30 manifest.
PYO3_030_FROM = (3, 15)


def _interpreter_arg(args: list[str]) -> str | None:
    for i, arg in enumerate(args):
        if arg in ("-i", "--interpreter") and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--interpreter="):
            return arg.split("=", 1)[1]
    return None


def _target_version(args: list[str]) -> tuple[int, int]:
    interp = _interpreter_arg(args)
    if interp is None:
        return sys.version_info[:2]
    try:
        out = subprocess.run(
            [interp, "-c", "import sys; print(*sys.version_info[:2])"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.split()
        return int(out[0]), int(out[1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as e:
        raise SystemExit(f"pyusdt build: cannot run the interpreter {interp!r}: {e}") from None


def _with_manifest(config_settings: Mapping[str, Any] | None) -> dict[str, Any]:
    args = list(maturin.get_maturin_pep517_args(config_settings))
    settings = dict(config_settings or {})
    has_manifest = any(
        a in ("-m", "--manifest-path") or a.startswith("--manifest-path=") for a in args
    )
    if not has_manifest and _target_version(args) >= PYO3_030_FROM:
        args = ["--manifest-path", os.path.join(ROOT, PYO3_030_MANIFEST), *args]
    settings.pop("build-args", None)
    settings["maturin.build-args"] = args
    return settings


def build_wheel(
    wheel_directory: str,
    config_settings: Mapping[str, Any] | None = None,
    metadata_directory: str | None = None,
) -> str:
    return maturin.build_wheel(wheel_directory, _with_manifest(config_settings), metadata_directory)


def build_editable(
    wheel_directory: str,
    config_settings: Mapping[str, Any] | None = None,
    metadata_directory: str | None = None,
) -> str:
    return maturin.build_editable(
        wheel_directory, _with_manifest(config_settings), metadata_directory
    )


def prepare_metadata_for_build_wheel(
    metadata_directory: str, config_settings: Mapping[str, Any] | None = None
) -> str:
    return maturin.prepare_metadata_for_build_wheel(
        metadata_directory, _with_manifest(config_settings)
    )


def prepare_metadata_for_build_editable(
    metadata_directory: str, config_settings: Mapping[str, Any] | None = None
) -> str:
    return maturin.prepare_metadata_for_build_editable(
        metadata_directory, _with_manifest(config_settings)
    )
