//! pyusdt's native extension `pyusdt.libpyusdt`: `sys.monitoring` (PEP 669)
//! events as USDT probes of provider `pyusdt`, enabled only while a tracer is
//! attached. This file only declares the modules and the init function.
//!
//! Every interpreter gets its own module object and state (multi-phase
//! init); nothing Python-related lives in a static. PyO3 is used for its ffi
//! bindings only: its `#[pymodule]` refuses subinterpreters and its cached
//! statics are shared between interpreters. Built with
//! `--cfg pyo3_disable_reference_pool` (see .cargo/config.toml).

mod bounded;
mod callbacks;
mod code_info;
mod config;
mod fast_repr;
mod fork_sites;
mod module;
mod monitoring;
mod object_repr;
mod probes;
mod repr;
mod state;
mod watcher;

use pyo3::ffi;

/// # Safety
/// Called by CPython's import machinery.
#[no_mangle]
pub unsafe extern "C" fn PyInit_libpyusdt() -> *mut ffi::PyObject {
    // SAFETY: the definition is a static that CPython initialises once and
    // then only reads.
    unsafe { ffi::PyModuleDef_Init(std::ptr::addr_of_mut!(module::MODULE_DEF)) }
}
