//! Per-interpreter module state: everything one interpreter's copy of the
//! module owns (its `sys.monitoring` handles, callbacks, tool id, scratch,
//! watcher registration), kept behind the module object's state slot, never
//! in a static. Once published in the slot it is only ever shared (`&State`):
//! what changes afterwards is atomic or set once.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU32, Ordering};
use std::sync::OnceLock;

use pyo3::ffi;

use super::filter;
use crate::config;
use crate::sites::Probe;
use crate::values::code_info::CodeInfo;
use crate::values::exception;
use crate::values::fast_repr::Keys;
use crate::values::repr::PerThread;
use crate::watcher::Registration;

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
    /// Owned callbacks, indexed like `Probe::ALL` (nulled by `m_clear` once
    /// nobody can toggle this interpreter any more).
    pub callbacks: [AtomicPtr<ffi::PyObject>; Probe::COUNT],
    /// `sys.monitoring.events` value for each probe, indexed like `Probe::ALL`.
    pub event_bits: [i64; Probe::COUNT],
    /// Tool id held, or `NO_TOOL`. Written only by the party that toggles
    /// this interpreter (the watcher while registered, then `atexit`).
    pub tool_id: AtomicI32,
    /// Probe mask whose events are enabled in this interpreter.
    pub enabled: AtomicU32,
    /// "No free tool id" was logged already (log it once per shortage).
    pub told_no_tool: AtomicBool,
    pub scratch: PerThread,
    /// Per-thread buffers for the exception probes' type names and messages.
    pub exc_buffers: exception::PerThread,
    /// This interpreter's `co_extra` index for `PYUSDT_FILTER`'s decisions,
    /// or `filter::NO_INDEX` (no filter: everything is traced).
    pub filter_index: ffi::Py_ssize_t,
    /// Owned interned names for the fast reprs.
    pub keys: Keys,
    /// This interpreter's watcher registration; unset for a second copy of
    /// the module in the same interpreter, which stays passive.
    pub registration: OnceLock<Registration>,
}

// SAFETY: the raw pointers are owned Python objects of this interpreter,
// only used by threads attached to it (callbacks, module functions, and the
// watcher while it is attached there through the toggle protocol).
unsafe impl Sync for State {}

impl State {
    /// A state holding `monitoring` (an owned reference) and nothing else yet.
    pub fn new(interp_id: i64, layout_ok: bool, monitoring: *mut ffi::PyObject) -> Self {
        State {
            interp_id,
            layout_ok,
            monitoring,
            disable: std::ptr::null_mut(),
            own_prefix: Vec::new(),
            callbacks: Default::default(),
            event_bits: [0; Probe::COUNT],
            tool_id: NO_TOOL.into(),
            enabled: 0.into(),
            told_no_tool: false.into(),
            scratch: PerThread::new(),
            exc_buffers: exception::PerThread::new(),
            filter_index: filter::NO_INDEX,
            keys: Keys::empty(),
            registration: OnceLock::new(),
        }
    }

    pub fn callback(&self, p: Probe) -> *mut ffi::PyObject {
        self.callbacks[p as usize].load(Ordering::Acquire)
    }

    /// Is this code object's file part of pyusdt itself?
    #[inline(always)]
    pub fn is_own(&self, file: &[u8]) -> bool {
        !self.own_prefix.is_empty() && file.starts_with(&self.own_prefix)
    }

    /// Is this code traced under `PYUSDT_FILTER` (always, without one)?
    ///
    /// # Safety
    /// Attached, during an event for `code`, whose fields are `info`.
    #[inline(always)]
    pub unsafe fn wanted(&self, code: *mut ffi::PyObject, info: &CodeInfo) -> bool {
        if self.filter_index == filter::NO_INDEX {
            return true;
        }
        match &config::get().filter {
            // SAFETY: per the contract; the index is this interpreter's.
            Some(f) => unsafe { filter::wanted(f, self.filter_index, code, info) },
            None => true,
        }
    }

    pub fn tool(&self) -> Option<i32> {
        match self.tool_id.load(Ordering::Acquire) {
            NO_TOOL => None,
            t => Some(t),
        }
    }

    /// Releases the objects the state owns.
    ///
    /// # Safety
    /// Attached to the state's interpreter; nobody else uses the state.
    pub unsafe fn release(mut self) {
        // SAFETY: owned references or null, released once (the state is consumed).
        unsafe {
            for cb in &self.callbacks {
                ffi::Py_XDECREF(cb.swap(std::ptr::null_mut(), Ordering::AcqRel));
            }
            ffi::Py_XDECREF(self.monitoring);
            ffi::Py_XDECREF(self.disable);
            self.keys.release();
        }
    }
}

/// Runs `f` with the state of one of our module objects; `None` if the
/// module has none (exec failed or `m_free` ran). The borrow cannot outlive
/// the call.
///
/// # Safety
/// `module` is one of our module objects and the caller is attached to its
/// interpreter (so `m_free`, which runs attached, cannot free it meanwhile).
#[inline(always)]
pub unsafe fn with<R>(module: *mut ffi::PyObject, f: impl FnOnce(&State) -> R) -> Option<R> {
    // SAFETY: per the contract; the slot holds a published `*mut State` or null.
    unsafe {
        let slot = ffi::PyModule_GetState(module) as *mut *mut State;
        if slot.is_null() || (*slot).is_null() {
            return None;
        }
        Some(f(&**slot))
    }
}
