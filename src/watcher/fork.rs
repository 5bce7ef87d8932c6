//! The watcher across `fork()`, whoever forks: Python's `os.fork` (whose
//! before/after hooks the interpreter layer forwards here) or a C-level
//! `fork()` (uWSGI's workers, ctypes, C extensions), which runs none of
//! Python's hooks. Native `pthread_atfork` handlers cover every fork:
//! - prepare: waits (bounded, detached from any interpreter) until no toggle
//!   is in flight, then holds `ctl` and `reg` across the fork, so the child
//!   gets them unlocked and consistent. It runs inside `fork()`, after
//!   `os.fork`'s stop-the-world on free-threaded builds, when no attached
//!   thread can be inside these locks' short critical sections.
//! - child: forgets the parent's thread (it does not exist here), keeps the
//!   main interpreter only after `os.fork` (CPython deletes the others; a
//!   C-level fork leaves them all), and after a C-level fork starts the child's own
//!   watcher (which first waits one interval). After `os.fork`, Python's
//!   after-in-child hook starts it instead, once CPython is re-initialised.
//!
//! Around `os.fork` the thread is also stopped beforehand, so CPython sees a
//! single-threaded process and prints no "multi-threaded fork" warning, and
//! restarted after: at once if the parent has other threads anyway (or the
//! fork came from another thread); from the main thread's next bytecode (a
//! pending call) if it is the only thread, since then nothing else can run
//! Python code meanwhile.

use std::cell::RefCell;
use std::ffi::c_int;
use std::os::raw::c_void;
use std::sync::{MutexGuard, Once};
use std::time::{Duration, Instant};

use pyo3::ffi;

use super::registry::Registry;
use super::thread::{Control, STOP_WAIT};
use super::{lock, Watcher, WATCHER};

static INSTALL: Once = Once::new();

type Held = (MutexGuard<'static, Control>, MutexGuard<'static, Registry>);

thread_local! {
    /// The locks the forking thread holds across `fork()`.
    static HELD: RefCell<Option<Held>> = const { RefCell::new(None) };
}

/// Registers the native fork handlers, once per process.
pub fn install() {
    INSTALL.call_once(|| {
        // SAFETY: registers handlers of this library, which CPython never
        // unloads; see each handler for what it does inside fork().
        let rc = unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
        if rc != 0 {
            crate::config::log(|| {
                format!("pthread_atfork failed ({rc}): forked children are not traced")
            });
        }
    });
}

extern "C" fn prepare() {
    WATCHER.prepare_fork();
}

extern "C" fn parent() {
    HELD.with(|h| h.borrow_mut().take());
}

extern "C" fn child() {
    WATCHER.child_fork();
}

impl Watcher {
    fn prepare_fork(&'static self) {
        if lock(&self.reg).any_in_flight() {
            // SAFETY: reading this thread's state has no preconditions; if
            // it is attached it detaches for the wait (a toggle in flight may
            // need its GIL) and re-attaches on the same thread, holding none
            // of our locks while it re-attaches.
            unsafe {
                let attached = !ffi::compat::PyThreadState_GetUnchecked().is_null();
                let saved = if attached {
                    ffi::PyEval_SaveThread()
                } else {
                    std::ptr::null_mut()
                };
                self.wait_settled(STOP_WAIT);
                if !saved.is_null() {
                    ffi::PyEval_RestoreThread(saved);
                }
            }
        }
        let c = lock(&self.ctl);
        let r = lock(&self.reg);
        HELD.with(|h| *h.borrow_mut() = Some((c, r)));
    }

    /// Waits until no toggle is in flight, at most `limit`.
    fn wait_settled(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut r = lock(&self.reg);
        while r.any_in_flight() {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            r = self
                .settled
                .wait_timeout(r, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn child_fork(&'static self) {
        let Some((mut c, mut r)) = HELD.with(|h| h.borrow_mut().take()) else {
            return;
        };
        c.forget_inherited();
        let c_level = !c.paused;
        if r.after_fork_child(c_level) {
            // The fork cut a toggle short: that interpreter's state is not
            // trustworthy here, so this process is never toggled again.
            c.off = true;
        }
        let start = c_level && !r.is_empty();
        drop(r);
        drop(c);
        if start {
            self.start_or_kick(true);
        }
    }
}

/// Python's before-fork hook (main interpreter, called detached): stop the
/// thread, and start none until the after-fork hooks.
pub fn before_python_fork() {
    lock(&WATCHER.ctl).paused = true;
    let was_running = WATCHER.stop_and_join(false);
    lock(&WATCHER.ctl).restart |= was_running;
}

/// Python's after-fork hook in the parent (attached).
pub fn after_python_fork_parent() {
    let restart = {
        let mut c = lock(&WATCHER.ctl);
        c.paused = false;
        std::mem::take(&mut c.restart)
    };
    if !restart {
        return;
    }
    // SAFETY: the gettid system call (not glibc's 2.30 wrapper, so wheels
    // keep an older glibc baseline) and getpid have no preconditions;
    // Py_AddPendingCall takes a plain C function and a null argument, from
    // an attached thread.
    let deferred = unsafe {
        libc::syscall(libc::SYS_gettid) == libc::getpid() as libc::c_long
            && !other_threads()
            && ffi::Py_AddPendingCall(Some(restart_pending), std::ptr::null_mut()) == 0
    };
    if !deferred {
        WATCHER.start_or_kick(false);
    }
}

/// Python's after-fork hook in the child (attached): CPython is consistent
/// again, start this process's own watcher.
pub fn after_python_fork_child() {
    let start = {
        let mut c = lock(&WATCHER.ctl);
        c.paused = false;
        c.restart = false;
        !lock(&WATCHER.reg).is_empty()
    };
    if start {
        WATCHER.start_or_kick(false);
    }
}

/// Does the process have a thread besides the calling one?
fn other_threads() -> bool {
    match std::fs::read_dir("/proc/self/task") {
        Ok(d) => d.count() > 1,
        Err(_) => true,
    }
}

extern "C" fn restart_pending(_arg: *mut c_void) -> c_int {
    WATCHER.start_or_kick(false);
    0
}
