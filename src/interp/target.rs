//! An interpreter as the watcher sees it (`watcher::Interp`): entering it
//! from the watcher thread through a fresh thread state of that interpreter
//! (`PyThreadState_New` + `PyEval_RestoreThread`; `PyGILState_*` would land
//! in the main interpreter) and applying a probe mask there.

use std::sync::atomic::{AtomicBool, Ordering};

use pyo3::ffi;

use super::monitoring;
use super::state::State;
use crate::watcher::{InFlight, Interp};

pub struct Target {
    interp: *mut ffi::PyInterpreterState,
    id: i64,
    main: bool,
    state: *const State,
    /// False for a subinterpreter on CPython 3.13.0, which can abort when
    /// another thread enters a subinterpreter (gh-126914, fixed in 3.13.1).
    enter: bool,
}

// SAFETY: the pointers are only dereferenced in `apply`, which the toggle
// protocol calls only while the interpreter is registered and not being
// removed (so it and the state are alive), attached to that interpreter.
unsafe impl Send for Target {}
// SAFETY: as above; `Target` itself is immutable.
unsafe impl Sync for Target {}

static TOLD_3130: AtomicBool = AtomicBool::new(false);

impl Target {
    /// # Safety
    /// `interp` and `state` stay valid until the registration made with this
    /// target is unregistered (or abandoned with no toggle in flight).
    pub unsafe fn new(
        interp: *mut ffi::PyInterpreterState,
        id: i64,
        state: *const State,
        no_subinterp_entry: bool,
    ) -> Self {
        // SAFETY: reading the main interpreter pointer has no preconditions
        // beyond an initialised runtime.
        let main = unsafe { ffi::PyInterpreterState_Main() } == interp;
        Target {
            interp,
            id,
            main,
            state,
            enter: main || !no_subinterp_entry,
        }
    }
}

impl Interp for Target {
    fn id(&self) -> i64 {
        self.id
    }

    fn is_main(&self) -> bool {
        self.main
    }

    fn apply(&self, mask: u32, _proof: &InFlight) -> u32 {
        if !self.enter {
            if !TOLD_3130.swap(true, Ordering::Relaxed) {
                crate::config::log(|| {
                    "CPython 3.13.0 can abort when another thread enters a subinterpreter \
                     (gh-126914); subinterpreters are not traced on 3.13.0, upgrade to 3.13.1+"
                        .to_string()
                });
            }
            return mask; // nothing to do there, ever
        }
        // SAFETY: the proof says the interpreter is registered and not being
        // removed, so it is alive and not finalizing (unregister waits for
        // us) and `state` is valid. We attach through a new thread state of
        // that interpreter and leave it cleared and deleted.
        unsafe {
            let st = &*self.state;
            let ts = ffi::PyThreadState_New(self.interp);
            if ts.is_null() {
                return st.enabled.load(Ordering::Acquire);
            }
            ffi::PyEval_RestoreThread(ts);
            let got = monitoring::apply(st, mask);
            ffi::PyThreadState_Clear(ts);
            ffi::PyThreadState_DeleteCurrent();
            got
        }
    }
}
