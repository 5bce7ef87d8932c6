//! The one watcher thread of the process and the registry of interpreters it
//! serves: it polls the probe semaphores twice every `PYUSDT_CHECK_MSEC` ms and,
//! when the attached probes change, applies the new event set in every
//! registered interpreter.
//!
//! Protocol (every lock here is a native lock; none is ever held while a
//! GIL is being taken, and a Python thread only waits for one detached):
//! - `register` (module exec) adds the interpreter's `Entry` and starts or
//!   wakes the watcher.
//! - The watcher toggles an interpreter only after marking its entry
//!   `in_flight` under the entry's lock, and only if it is not `removed`.
//!   It enters through a fresh thread state of that interpreter
//!   (`PyThreadState_New` + `PyEval_RestoreThread`; `PyGILState_*` would
//!   land in the main interpreter), toggles, then clears and deletes it.
//! - `unregister` runs from a Python-level `atexit` callback of each
//!   interpreter (early enough: `m_free` and `PyUnstable_AtExit` run after
//!   the interpreter is marked finalizing, and taking the GIL of a
//!   finalizing interpreter ends the thread inside `take_gil`). With its GIL
//!   released it unlinks the entry, marks it `removed` and waits until no
//!   toggle is in flight; after that the watcher never touches it.
//! - The main interpreter's `atexit` stops and joins the watcher. When the
//!   first importer is a subinterpreter, a pending call (which CPython runs
//!   in the main interpreter) registers that hook in the main interpreter.
//! - CPython 3.13.0 aborts when `PyThreadState_New` races with the deletion
//!   of an interpreter's last thread state (gh-126914, fixed in 3.13.1), so
//!   there the watcher does not enter subinterpreters (one verbose line).

use std::cell::RefCell;
use std::ffi::c_int;
use std::os::raw::c_void;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use pyo3::ffi;

use crate::config;
use crate::monitoring;
use crate::probes;
use crate::state::State;

pub struct Entry {
    pub interp: *mut ffi::PyInterpreterState,
    pub interp_id: i64,
    pub is_main: bool,
    /// The module state; valid while the entry is registered and not removed.
    state: *const State,
    /// Probe mask the watcher last applied (a hint read without the GIL).
    pub applied: AtomicU32,
    flags: Mutex<Flags>,
    cv: Condvar,
}

#[derive(Default)]
struct Flags {
    removed: bool,
    in_flight: bool,
}

// SAFETY: the raw pointers are only dereferenced by the watcher while the
// entry is `in_flight` (so the interpreter and state are alive, see the
// protocol above) and by threads attached to that interpreter.
unsafe impl Send for Entry {}
// SAFETY: as above; all mutable fields are atomics or behind the mutex.
unsafe impl Sync for Entry {}

impl Entry {
    pub fn new(interp: *mut ffi::PyInterpreterState, interp_id: i64, state: *const State) -> Self {
        // SAFETY: reading the main interpreter pointer has no preconditions
        // beyond an initialised runtime.
        let is_main = unsafe { ffi::PyInterpreterState_Main() } == interp;
        Entry {
            interp,
            interp_id,
            is_main,
            state,
            applied: AtomicU32::new(0),
            flags: Mutex::new(Flags::default()),
            cv: Condvar::new(),
        }
    }
}

#[derive(Default)]
struct Control {
    stop: bool,
    kick: bool,
    /// The process is finalizing: no new watcher is started.
    shutdown: bool,
    handle: Option<JoinHandle<()>>,
}

static REGISTRY: Mutex<Vec<Arc<Entry>>> = Mutex::new(Vec::new());
static CONTROL: Mutex<Control> = Mutex::new(Control {
    stop: false,
    kick: false,
    shutdown: false,
    handle: None,
});
static WAKE: Condvar = Condvar::new();
static MAIN_HOOK_QUEUED: AtomicBool = AtomicBool::new(false);
static TOLD_3130: AtomicBool = AtomicBool::new(false);
/// Set at module exec when the runtime is CPython 3.13.0 (gh-126914).
pub static NO_SUBINTERP_ENTRY: AtomicBool = AtomicBool::new(false);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic cannot happen while these are held (panic=abort), so poisoning
    // carries no information: take the data either way.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f` with this thread detached from its interpreter, so that waiting
/// on a native lock never blocks another thread's GIL or a stop-the-world.
///
/// # Safety
/// Attached to an interpreter.
pub unsafe fn detached<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: attached (contract); restored on the same thread.
    unsafe {
        let ts = ffi::PyEval_SaveThread();
        let r = f();
        ffi::PyEval_RestoreThread(ts);
        r
    }
}

/// Is an entry registered for this interpreter already?
pub fn is_registered(interp_id: i64) -> bool {
    lock(&REGISTRY).iter().any(|e| e.interp_id == interp_id)
}

/// Adds an interpreter and makes sure the watcher runs and looks at it now.
///
/// # Safety
/// Attached to `entry`'s interpreter, from its module exec.
pub unsafe fn register(entry: Arc<Entry>) {
    let is_main = entry.is_main;
    // SAFETY: attached (contract).
    unsafe {
        detached(|| {
            lock(&REGISTRY).push(entry);
            start_or_kick();
        });
        if !is_main && !MAIN_HOOK_QUEUED.swap(true, Ordering::AcqRel) {
            // SAFETY: a plain C function pointer with a null argument.
            if ffi::Py_AddPendingCall(Some(add_main_hook), ptr::null_mut()) != 0 {
                MAIN_HOOK_QUEUED.store(false, Ordering::Release);
            }
        }
    }
}

/// Removes an interpreter and waits until the watcher is out of it.
///
/// # Safety
/// Called detached (the watcher may need this interpreter's GIL to finish).
pub unsafe fn unregister(entry: &Arc<Entry>) {
    lock(&REGISTRY).retain(|e| !Arc::ptr_eq(e, entry));
    let mut f = lock(&entry.flags);
    f.removed = true;
    while f.in_flight {
        f = entry.cv.wait(f).unwrap_or_else(|e| e.into_inner());
    }
}

/// Marks an entry removed without waiting (from `m_free`, when `atexit`
/// never ran). Returns true if the state may be freed: no toggle in flight.
pub fn abandon(entry: &Arc<Entry>) -> bool {
    lock(&REGISTRY).retain(|e| !Arc::ptr_eq(e, entry));
    let mut f = lock(&entry.flags);
    f.removed = true;
    !f.in_flight
}

fn start_or_kick() {
    let mut c = lock(&CONTROL);
    if c.shutdown {
        return;
    }
    if c.handle.is_some() {
        c.kick = true;
        WAKE.notify_all();
        return;
    }
    c.stop = false;
    c.kick = false;
    match std::thread::Builder::new()
        .name("pyusdt-watcher".into())
        .spawn(run)
    {
        Ok(h) => c.handle = Some(h),
        Err(e) => config::log(|| format!("cannot start the watcher thread: {e}")),
    }
}

/// Stops the watcher and joins it. Call detached.
fn stop_and_join(shutdown: bool) -> bool {
    let handle = {
        let mut c = lock(&CONTROL);
        c.shutdown |= shutdown;
        c.stop = true;
        WAKE.notify_all();
        c.handle.take()
    };
    match handle {
        Some(h) => {
            let _ = h.join();
            true
        }
        None => false,
    }
}

/// Stops the watcher for good (main interpreter's atexit).
///
/// # Safety
/// Attached to the main interpreter.
pub unsafe fn shutdown() {
    // SAFETY: attached (contract).
    unsafe { detached(|| stop_and_join(true)) };
}

fn run() {
    // Two looks per interval: a tracer that attaches is then served within
    // PYUSDT_CHECK_MSEC (plus the switch itself), not up to twice that late
    // in the worst case. A look is six volatile reads and no GIL.
    let interval = Duration::from_micros(config::get().check_msec * 500);
    loop {
        let mask = probes::attached_mask();
        let entries: Vec<Arc<Entry>> = lock(&REGISTRY).clone();
        for e in entries {
            if e.applied.load(Ordering::Acquire) != mask {
                toggle(&e, mask);
            }
        }
        let mut c = lock(&CONTROL);
        if !c.stop && !c.kick {
            c = WAKE
                .wait_timeout(c, interval)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        c.kick = false;
        if c.stop {
            return;
        }
    }
}

fn toggle(e: &Arc<Entry>, mask: u32) {
    if !e.is_main && NO_SUBINTERP_ENTRY.load(Ordering::Relaxed) {
        if !TOLD_3130.swap(true, Ordering::Relaxed) {
            config::log(|| {
                "CPython 3.13.0 can abort when another thread enters a subinterpreter \
                 (gh-126914); subinterpreters are not traced on 3.13.0, upgrade to 3.13.1+"
                    .to_string()
            });
        }
        return;
    }
    {
        let mut f = lock(&e.flags);
        if f.removed {
            return;
        }
        f.in_flight = true;
    }
    // SAFETY: the entry is in flight and not removed, so its interpreter is
    // alive and not finalizing (unregister waits for us) and `state` is
    // valid. We attach through a new thread state of that interpreter and
    // leave it cleared and deleted.
    unsafe {
        let ts = ffi::PyThreadState_New(e.interp);
        if !ts.is_null() {
            ffi::PyEval_RestoreThread(ts);
            let st = &*e.state;
            monitoring::apply(st, mask);
            e.applied
                .store(st.enabled.load(Ordering::Acquire), Ordering::Release);
            ffi::PyThreadState_Clear(ts);
            ffi::PyThreadState_DeleteCurrent();
        }
    }
    let mut f = lock(&e.flags);
    f.in_flight = false;
    e.cv.notify_all();
}

// ---- the main interpreter's exit hook, when a subinterpreter came first ----

static mut STOP_DEF: ffi::PyMethodDef = ffi::PyMethodDef {
    ml_name: c"_pyusdt_stop_watcher".as_ptr(),
    ml_meth: ffi::PyMethodDefPointer {
        PyCFunction: stop_hook,
    },
    ml_flags: ffi::METH_NOARGS,
    ml_doc: ptr::null(),
};

unsafe extern "C" fn stop_hook(
    _slf: *mut ffi::PyObject,
    _arg: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: called by atexit in the main interpreter, attached.
    unsafe {
        shutdown();
        ffi::Py_NewRef(ffi::Py_None())
    }
}

/// Registers `stop_hook` with the main interpreter's `atexit`.
///
/// # Safety
/// Attached to the main interpreter.
pub unsafe fn register_main_hook() -> c_int {
    // SAFETY: attached; objects are checked and released.
    unsafe {
        let f = ffi::PyCFunction_NewEx(
            ptr::addr_of_mut!(STOP_DEF),
            ptr::null_mut(),
            ptr::null_mut(),
        );
        if f.is_null() {
            ffi::PyErr_Clear();
            return 0;
        }
        let r = crate::module::atexit_register(f);
        ffi::Py_DECREF(f);
        r
    }
}

extern "C" fn add_main_hook(_arg: *mut c_void) -> c_int {
    // SAFETY: pending calls run in the main interpreter's main thread, attached.
    unsafe { register_main_hook() };
    0
}

// ---- fork: stop before, restart after (hooks registered in module.rs) ----

/// The native locks held across a fork by the forking thread.
type ForkGuards = (
    MutexGuard<'static, Control>,
    MutexGuard<'static, Vec<Arc<Entry>>>,
);

thread_local! {
    static FORK_GUARDS: RefCell<Option<ForkGuards>> = const { RefCell::new(None) };
}
static RESTART_AFTER_FORK: AtomicBool = AtomicBool::new(false);

/// Before `fork()`: stop and join the watcher (so the process has no other
/// native thread, and none inside CPython), then hold the native locks
/// across the fork so the child gets them in a known state.
///
/// # Safety
/// Attached to the main interpreter, on the forking thread.
pub unsafe fn before_fork() {
    if FORK_GUARDS.with(|g| g.borrow().is_some()) {
        return; // already prepared for this fork
    }
    // SAFETY: attached (contract).
    unsafe {
        detached(|| {
            let was_running = stop_and_join(false);
            RESTART_AFTER_FORK.store(was_running, Ordering::Relaxed);
            let c = lock(&CONTROL);
            let r = lock(&REGISTRY);
            FORK_GUARDS.with(|g| *g.borrow_mut() = Some((c, r)));
        });
    }
}

/// After `fork()` in the parent: release the locks and restart the watcher.
///
/// CPython 3.13 counts the process's threads for its "process is
/// multi-threaded" fork warning after the `after_in_parent` hooks, so on the
/// process's main thread the restart is deferred to a pending call, which runs
/// once `os.fork()` has returned. (Forking from another thread warns anyway:
/// there are two threads already.)
pub fn after_fork_parent() {
    FORK_GUARDS.with(|g| g.borrow_mut().take());
    if RESTART_AFTER_FORK.load(Ordering::Relaxed) {
        // SAFETY: gettid/getpid have no preconditions; Py_AddPendingCall takes
        // a plain C function and a null argument, from an attached thread.
        let deferred = unsafe {
            libc::gettid() == libc::getpid()
                && ffi::Py_AddPendingCall(Some(restart_pending), ptr::null_mut()) == 0
        };
        if !deferred {
            start_or_kick();
        }
    }
}

extern "C" fn restart_pending(_arg: *mut c_void) -> c_int {
    start_or_kick();
    0
}

/// After `fork()` in the child: only the main interpreter survives; forget
/// the others, release the locks and start the child's own watcher.
pub fn after_fork_child() {
    FORK_GUARDS.with(|g| {
        if let Some((mut c, mut r)) = g.borrow_mut().take() {
            r.retain(|e| e.is_main);
            for e in r.iter() {
                let mut f = lock(&e.flags);
                f.in_flight = false;
            }
            c.stop = false;
            c.kick = false;
            c.handle = None;
        }
    });
    if !lock(&REGISTRY).is_empty() {
        start_or_kick();
    }
}
