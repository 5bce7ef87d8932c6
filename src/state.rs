//! Per-interpreter module state: everything one interpreter's copy of the
//! module owns (its `sys.monitoring` handles, callbacks, tool id, scratch),
//! kept in the module object's state block, never in a static.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering};
use std::sync::Arc;

use pyo3::ffi;

use crate::fast_repr::Keys;
use crate::probes::Probe;
use crate::repr::PerThread;
use crate::watcher::Entry;

/// No tool id held.
pub const NO_TOOL: i32 = -1;

pub struct State {
    pub interp_id: i64,
    /// `PyCodeObject` layout verified (see `code_info`).
    pub layout_ok: bool,
    /// Owned `sys.monitoring` module of this interpreter.
    pub monitoring: *mut ffi::PyObject,
    /// Owned `sys.monitoring.DISABLE`, returned for events in pyusdt's own code.
    pub disable: *mut ffi::PyObject,
    /// UTF-8 of pyusdt's package directory with a trailing '/', or empty if
    /// unknown: code from files under it (the CLI, `wait_for_tracer`) is not traced.
    pub own_prefix: Vec<u8>,
    /// Owned callbacks, indexed like `Probe::ALL`.
    pub callbacks: [*mut ffi::PyObject; 6],
    /// `sys.monitoring.events` value for each probe, indexed like `Probe::ALL`.
    pub event_bits: [i64; 6],
    /// Tool id held, or `NO_TOOL`. Written only by the party that toggles
    /// this interpreter (the watcher while registered, then `atexit`).
    pub tool_id: AtomicI32,
    /// Probe mask whose events are enabled in this interpreter.
    pub enabled: AtomicU32,
    /// "No free tool id" was logged already (log it once per shortage).
    pub told_no_tool: AtomicBool,
    pub scratch: PerThread,
    /// Owned interned names for the fast reprs.
    pub keys: Keys,
    /// This interpreter's watcher registration; `None` for a second copy of
    /// the module in the same interpreter, which stays passive.
    pub entry: Option<Arc<Entry>>,
}

impl State {
    pub fn callback(&self, p: Probe) -> *mut ffi::PyObject {
        self.callbacks[p as usize]
    }

    /// Is this code object's file part of pyusdt itself?
    #[inline(always)]
    pub fn is_own(&self, file: &[u8]) -> bool {
        !self.own_prefix.is_empty() && file.starts_with(&self.own_prefix)
    }

    pub fn tool(&self) -> Option<i32> {
        match self.tool_id.load(Ordering::Acquire) {
            NO_TOOL => None,
            t => Some(t),
        }
    }
}

/// The state of a module object of ours.
///
/// # Safety
/// `module` is one of our module objects whose exec slot completed, and the
/// caller is attached to its interpreter.
#[inline(always)]
pub unsafe fn of<'a>(module: *mut ffi::PyObject) -> Option<&'a State> {
    // SAFETY: per the contract; the slot holds a `*mut State` or null.
    unsafe {
        let slot = ffi::PyModule_GetState(module) as *mut *mut State;
        if slot.is_null() || (*slot).is_null() {
            return None;
        }
        Some(&**slot)
    }
}
