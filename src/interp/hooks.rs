//! The interpreter's hooks into Python's life cycle: the `atexit` callback
//! that unregisters it from the watcher (and, in the main interpreter, stops
//! the watcher), the main interpreter's `os.register_at_fork` hooks that
//! stop the watcher around `os.fork`, and, when a subinterpreter imports
//! pyusdt first, a pending call that registers those in the main interpreter.

use std::ffi::{c_int, c_void, CStr};
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};

use pyo3::ffi;

use super::monitoring;
use super::state;
use crate::config;
use crate::watcher::{self, WATCHER};

const fn noargs(name: &'static CStr, f: ffi::PyCFunction) -> ffi::PyMethodDef {
    ffi::PyMethodDef {
        ml_name: name.as_ptr(),
        ml_meth: ffi::PyMethodDefPointer { PyCFunction: f },
        ml_flags: ffi::METH_NOARGS,
        ml_doc: ptr::null(),
    }
}

static mut ATEXIT_DEF: ffi::PyMethodDef = noargs(c"_pyusdt_atexit", atexit_hook);
static mut STOP_DEF: ffi::PyMethodDef = noargs(c"_pyusdt_stop_watcher", stop_hook);
static mut FORK_DEFS: [ffi::PyMethodDef; 3] = [
    noargs(c"_pyusdt_before_fork", before_fork),
    noargs(c"_pyusdt_after_fork_parent", after_fork_parent),
    noargs(c"_pyusdt_after_fork_child", after_fork_child),
];
static MAIN_HOOKS_QUEUED: AtomicBool = AtomicBool::new(false);

/// Runs `f` with this thread detached from its interpreter, so that waiting
/// on a native lock never blocks another thread's GIL or a stop-the-world.
///
/// # Safety
/// Attached to an interpreter.
unsafe fn detached<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: attached (contract); restored on the same thread.
    unsafe {
        let ts = ffi::PyEval_SaveThread();
        let r = f();
        ffi::PyEval_RestoreThread(ts);
        r
    }
}

/// A function object for `def` (bound to `module`, or to nothing if null).
/// `Err` leaves the Python error set.
unsafe fn function(
    def: *mut ffi::PyMethodDef,
    module: *mut ffi::PyObject,
) -> Result<*mut ffi::PyObject, ()> {
    // SAFETY: attached; `def` points into a static table, no reference taken.
    let f = unsafe { ffi::PyCFunction_NewEx(def, module, ptr::null_mut()) };
    if f.is_null() {
        Err(())
    } else {
        Ok(f)
    }
}

/// `atexit.register(f)` in the current interpreter; `Err` leaves the error set.
///
/// # Safety
/// Attached; `f` is a valid callable.
unsafe fn atexit_register(f: *mut ffi::PyObject) -> Result<(), ()> {
    // SAFETY: attached; every result is checked and released.
    unsafe {
        let atexit = ffi::PyImport_ImportModule(c"atexit".as_ptr());
        if atexit.is_null() {
            return Err(());
        }
        let r = ffi::PyObject_CallMethod(atexit, c"register".as_ptr(), c"O".as_ptr(), f);
        ffi::Py_DECREF(atexit);
        if r.is_null() {
            return Err(());
        }
        ffi::Py_DECREF(r);
        Ok(())
    }
}

/// Registers this module's `atexit` callback.
///
/// # Safety
/// Attached, from the module's exec.
pub unsafe fn register_atexit(module: *mut ffi::PyObject) -> Result<(), ()> {
    // SAFETY: attached; the function object is released after registering.
    unsafe {
        let f = function(ptr::addr_of_mut!(ATEXIT_DEF), module)?;
        let r = atexit_register(f);
        ffi::Py_DECREF(f);
        r
    }
}

/// Registers the fork hooks with `os.register_at_fork`.
///
/// # Safety
/// Attached to the main interpreter.
pub unsafe fn register_fork_hooks() -> Result<(), ()> {
    // SAFETY: attached; objects are checked and released.
    unsafe {
        let os = ffi::PyImport_ImportModule(c"os".as_ptr());
        if os.is_null() {
            return Err(());
        }
        let reg = ffi::PyObject_GetAttrString(os, c"register_at_fork".as_ptr());
        ffi::Py_DECREF(os);
        if reg.is_null() {
            return Err(());
        }
        let kwargs = ffi::PyDict_New();
        let mut ok = !kwargs.is_null();
        let defs = ptr::addr_of_mut!(FORK_DEFS) as *mut ffi::PyMethodDef;
        for (i, key) in [c"before", c"after_in_parent", c"after_in_child"]
            .iter()
            .enumerate()
        {
            if !ok {
                break;
            }
            match function(defs.add(i), ptr::null_mut()) {
                Ok(f) => {
                    ok = ffi::PyDict_SetItemString(kwargs, key.as_ptr(), f) == 0;
                    ffi::Py_DECREF(f);
                }
                Err(()) => ok = false,
            }
        }
        if ok {
            let args = ffi::PyTuple_New(0);
            let r = if args.is_null() {
                ptr::null_mut()
            } else {
                ffi::PyObject_Call(reg, args, kwargs)
            };
            ffi::Py_XDECREF(args);
            ok = !r.is_null();
            ffi::Py_XDECREF(r);
        }
        ffi::Py_XDECREF(kwargs);
        ffi::Py_DECREF(reg);
        if ok {
            Ok(())
        } else {
            Err(())
        }
    }
}

/// When a subinterpreter imports first: have the main interpreter register
/// the hook that stops the watcher at exit, and the fork hooks, from a
/// pending call (which CPython runs in the main interpreter's main thread).
pub fn queue_main_hooks() {
    if MAIN_HOOKS_QUEUED.swap(true, Ordering::AcqRel) {
        return;
    }
    // SAFETY: a plain C function pointer with a null argument; callable
    // from any thread.
    if unsafe { ffi::Py_AddPendingCall(Some(add_main_hooks), ptr::null_mut()) } != 0 {
        MAIN_HOOKS_QUEUED.store(false, Ordering::Release);
    }
}

extern "C" fn add_main_hooks(_arg: *mut c_void) -> c_int {
    // SAFETY: pending calls run in the main interpreter's main thread,
    // attached. A failure is logged and cleared: an exception left set here
    // would surface in whatever code the main thread was running.
    unsafe {
        let ok = function(ptr::addr_of_mut!(STOP_DEF), ptr::null_mut())
            .and_then(|f| {
                let r = atexit_register(f);
                ffi::Py_DECREF(f);
                r
            })
            .and_then(|()| register_fork_hooks());
        if ok.is_err() {
            let msg = monitoring::exception_text();
            config::log(|| format!("cannot register the main interpreter's hooks: {msg}"));
        }
    }
    0
}

fn is_main() -> bool {
    // SAFETY: called attached; both pointers are the runtime's own.
    unsafe { ffi::PyInterpreterState_Get() == ffi::PyInterpreterState_Main() }
}

unsafe extern "C" fn atexit_hook(
    module: *mut ffi::PyObject,
    _: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: called by atexit, attached to the module's interpreter; the
    // waits run detached (a toggle in flight may need this GIL).
    unsafe {
        state::with(module, |st| {
            if let Some(reg) = st.registration.get() {
                detached(|| reg.unregister());
                if is_main() {
                    detached(|| WATCHER.shutdown());
                }
            }
            // Nobody else toggles this interpreter now: release the tool id.
            monitoring::apply(st, 0);
        });
        ffi::Py_NewRef(ffi::Py_None())
    }
}

unsafe extern "C" fn stop_hook(_: *mut ffi::PyObject, _: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: called by atexit in the main interpreter, attached.
    unsafe {
        detached(|| WATCHER.shutdown());
        ffi::Py_NewRef(ffi::Py_None())
    }
}

unsafe extern "C" fn before_fork(
    _: *mut ffi::PyObject,
    _: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: called by os.fork in the main interpreter, attached; the stop
    // waits detached and holds nothing across the fork.
    unsafe {
        detached(watcher::before_python_fork);
        ffi::Py_NewRef(ffi::Py_None())
    }
}

unsafe extern "C" fn after_fork_parent(
    _: *mut ffi::PyObject,
    _: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    watcher::after_python_fork_parent();
    // SAFETY: attached.
    unsafe { ffi::Py_NewRef(ffi::Py_None()) }
}

unsafe extern "C" fn after_fork_child(
    _: *mut ffi::PyObject,
    _: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    watcher::after_python_fork_child();
    // SAFETY: attached.
    unsafe { ffi::Py_NewRef(ffi::Py_None()) }
}
