//! pyusdt's native extension `pyusdt.libpyusdt`: `sys.monitoring` (PEP 669)
//! events as USDT probes of provider `pyusdt`, enabled only while a tracer is
//! attached. This file only declares the layers and the init function.
//!
//! Layers, each using only those above it in this list:
//! - `config`: process-wide settings from the environment and the log;
//! - `sites`: the probe sites, notes and semaphores, and their repair in a
//!   forked child;
//! - `values`: reading code objects and the bounded reprs of values;
//! - `watcher`: the one thread per process that polls the semaphores, and
//!   its protocol with interpreters (known only through `watcher::Interp`);
//! - `interp`: each interpreter's module, state, callbacks and hooks.
//!
//! Every interpreter gets its own module object and state (multi-phase
//! init); nothing Python-related lives in a static. PyO3 is used for its ffi
//! bindings only: its `#[pymodule]` refuses subinterpreters and its cached
//! statics are shared between interpreters. Built with
//! `--cfg pyo3_disable_reference_pool` (see .cargo/config.toml).

mod config;
mod interp;
mod sites;
mod values;
mod watcher;

use pyo3::ffi;

/// # Safety
/// Called by CPython's import machinery.
#[no_mangle]
pub unsafe extern "C" fn PyInit_libpyusdt() -> *mut ffi::PyObject {
    // SAFETY: the definition is a static that CPython initialises once and
    // then only reads.
    unsafe { ffi::PyModuleDef_Init(std::ptr::addr_of_mut!(interp::module::MODULE_DEF)) }
}
