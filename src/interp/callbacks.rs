//! The `sys.monitoring` callbacks: METH_FASTCALL C functions bound to this
//! interpreter's module, one per event, each firing its USDT probe.
//!
//! Per event: one semaphore read, the code object's fields read in place
//! (`code_info`), for value probes a bounded repr (`repr`), for exception
//! probes the type name and message (`exception`). Nothing is allocated for
//! names and files and nothing shared is locked, so callbacks run
//! concurrently on the free-threaded build.
//!
//! `DISABLE` is returned only from the callbacks of local events
//! (`Probe::local`), for code pyusdt does not trace (its own, and code outside
//! `PYUSDT_FILTER`); the others return None there: CPython cannot disable
//! them and raises `ValueError` if asked to.

use std::ffi::c_char;
use std::ptr;

use pyo3::ffi;

use super::state::{self, State};
use crate::sites::{fire, Probe};
use crate::values::code_info::{self, CodeInfo};
use crate::values::{exception, repr};

type Args = *mut *mut ffi::PyObject;

/// Returns a new reference to None.
#[inline(always)]
fn none() -> *mut ffi::PyObject {
    // SAFETY: Py_None is a valid (immortal) object; we return a new reference.
    unsafe { ffi::Py_NewRef(ffi::Py_None()) }
}

/// `sys.monitoring.DISABLE`, new reference: pyusdt's own code is not traced,
/// and once disabled at a location CPython stops calling us there.
#[inline(always)]
fn disable(st: &State) -> *mut ffi::PyObject {
    // SAFETY: `st.disable` is an owned reference kept by the state.
    unsafe { ffi::Py_NewRef(st.disable) }
}

/// What a callback returns for code it does not trace: `DISABLE` where
/// CPython can disable the event at that location, else None.
#[inline(always)]
fn skip(st: &State, local: bool) -> *mut ffi::PyObject {
    if local {
        disable(st)
    } else {
        none()
    }
}

/// An int argument (offset or line number); -1 if it is not an int.
#[inline(always)]
unsafe fn int_arg(obj: *mut ffi::PyObject) -> i64 {
    // SAFETY: attached; `obj` is valid.
    unsafe {
        let v = ffi::PyLong_AsLongLong(obj);
        if v == -1 && !ffi::PyErr_Occurred().is_null() {
            ffi::PyErr_Clear();
        }
        v
    }
}

/// Validates and reads an event, then runs `fire` with the state, the
/// arguments, the code object's fields and the int argument (offset, or
/// line number for LINE). Returns what the callback returns: `fire`'s
/// result, NULL with an exception set, or `skip` for code not traced
/// (pyusdt's own, code outside the filter).
///
/// # Safety
/// Called from a METH_FASTCALL callback bound to `module`: attached, `args`
/// has `nargs` items.
#[inline(always)]
unsafe fn dispatch(
    module: *mut ffi::PyObject,
    args: Args,
    nargs: ffi::Py_ssize_t,
    want: ffi::Py_ssize_t,
    local: bool,
    fire: impl FnOnce(&State, &[*mut ffi::PyObject], &CodeInfo, i64) -> *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: per the contract; `a[0]` is checked to be a code object.
    unsafe {
        if nargs != want || !code_info::is_code(*args) {
            ffi::PyErr_SetString(
                ffi::PyExc_TypeError,
                c"pyusdt callbacks take (code, int, ...) from sys.monitoring".as_ptr(),
            );
            return ptr::null_mut();
        }
        let a = std::slice::from_raw_parts(args, nargs as usize);
        let r = state::with(module, |st| {
            let info = code_info::read(a[0], st.layout_ok);
            if st.is_own(info.file_bytes()) || !st.wanted(a[0], &info) {
                return skip(st, local);
            }
            fire(st, a, &info, int_arg(a[1]))
        });
        r.unwrap_or_else(|| {
            ffi::PyErr_SetString(
                ffi::PyExc_RuntimeError,
                c"pyusdt module not initialised".as_ptr(),
            );
            ptr::null_mut()
        })
    }
}

macro_rules! start_like {
    ($fn_name:ident, $probe:expr, $site:ident) => {
        pub unsafe extern "C" fn $fn_name(
            module: *mut ffi::PyObject,
            args: Args,
            nargs: ffi::Py_ssize_t,
        ) -> *mut ffi::PyObject {
            if !$probe.attached() {
                return none();
            }
            // SAFETY: CPython calls us attached, with `nargs` arguments.
            unsafe {
                dispatch(
                    module,
                    args,
                    nargs,
                    2,
                    $probe.local(),
                    |st, _, info, offset| {
                        fire::$site(
                            info.name as usize,
                            info.file as usize,
                            info.firstlineno,
                            offset,
                            st.interp_id,
                            info.qualname as usize,
                        );
                        none()
                    },
                )
            }
        }
    };
}

start_like!(py_start, Probe::PyStart, py_start);
start_like!(py_resume, Probe::PyResume, py_resume);

macro_rules! value_like {
    ($fn_name:ident, $probe:expr, $site:ident, $nargs:expr) => {
        pub unsafe extern "C" fn $fn_name(
            module: *mut ffi::PyObject,
            args: Args,
            nargs: ffi::Py_ssize_t,
        ) -> *mut ffi::PyObject {
            if !$probe.attached() {
                return none();
            }
            // SAFETY: CPython calls us attached, with `nargs` arguments;
            // the state's scratch and keys belong to this interpreter.
            unsafe {
                dispatch(
                    module,
                    args,
                    nargs,
                    $nargs,
                    $probe.local(),
                    |st, a, info, offset| {
                        let Some(value) = repr::bounded(&st.scratch, &st.keys, a[2]) else {
                            return ptr::null_mut();
                        };
                        let value_ptr: *const c_char = value.ptr();
                        fire::$site(
                            info.name as usize,
                            info.file as usize,
                            info.firstlineno,
                            offset,
                            value_ptr as usize,
                            st.interp_id,
                        );
                        drop(value);
                        none()
                    },
                )
            }
        }
    };
}

value_like!(py_return, Probe::PyReturn, py_return, 3);
value_like!(py_yield, Probe::PyYield, py_yield, 3);
// C_RETURN and C_RAISE pass (code, offset, callable, arg0), as CALL does.
value_like!(c_return, Probe::CReturn, c_return, 4);
value_like!(c_raise, Probe::CRaise, c_raise, 4);

/// CALL passes (code, offset, callable, arg0). CALL is also enabled, without
/// its probe, while only C_RETURN or C_RAISE are attached (CPython delivers
/// those only at monitored calls): then it fires nothing, and with a filter
/// it still disables the calls in code outside it (and so their C_RETURN
/// and C_RAISE).
pub unsafe extern "C" fn call(
    module: *mut ffi::PyObject,
    args: Args,
    nargs: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    if Probe::Call.attached() {
        // SAFETY: as `call_probe`'s contract, which this is.
        return unsafe { call_probe(module, args, nargs) };
    }
    if crate::config::get().filter.is_none()
        || !(Probe::CReturn.attached() || Probe::CRaise.attached())
    {
        return none();
    }
    // SAFETY: CPython calls us attached, with `nargs` arguments.
    unsafe {
        dispatch(module, args, nargs, 4, Probe::Call.local(), |_, _, _, _| {
            none()
        })
    }
}

value_like!(call_probe, Probe::Call, call, 4);

macro_rules! exception_like {
    ($fn_name:ident, $probe:expr, $site:ident) => {
        /// (code, offset, exception); not a local event.
        pub unsafe extern "C" fn $fn_name(
            module: *mut ffi::PyObject,
            args: Args,
            nargs: ffi::Py_ssize_t,
        ) -> *mut ffi::PyObject {
            if !$probe.attached() {
                return none();
            }
            // SAFETY: CPython calls us attached, with `nargs` arguments;
            // the state's buffers and keys belong to this interpreter.
            unsafe {
                dispatch(
                    module,
                    args,
                    nargs,
                    3,
                    $probe.local(),
                    |st, a, info, offset| {
                        let exc = exception::describe(&st.exc_buffers, &st.keys, a[2]);
                        fire::$site(
                            info.name as usize,
                            info.file as usize,
                            info.firstlineno,
                            offset,
                            exc.type_ptr() as usize,
                            exc.message_ptr() as usize,
                        );
                        drop(exc);
                        none()
                    },
                )
            }
        }
    };
}

exception_like!(py_unwind, Probe::PyUnwind, py_unwind);
exception_like!(py_throw, Probe::PyThrow, py_throw);
exception_like!(raise, Probe::Raise, raise);
exception_like!(reraise, Probe::Reraise, reraise);
exception_like!(
    exception_handled,
    Probe::ExceptionHandled,
    exception_handled
);

pub unsafe extern "C" fn line(
    module: *mut ffi::PyObject,
    args: Args,
    nargs: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    if !Probe::Line.attached() {
        return none();
    }
    // SAFETY: CPython calls us attached, with `nargs` arguments.
    unsafe {
        dispatch(
            module,
            args,
            nargs,
            2,
            Probe::Line.local(),
            |st, _, info, lineno| {
                fire::line(
                    info.name as usize,
                    info.file as usize,
                    lineno as i32,
                    st.interp_id,
                    info.qualname as usize,
                );
                none()
            },
        )
    }
}

/// The callback function for each probe, indexed like `Probe::ALL`.
pub const FUNCTIONS: [ffi::PyCFunctionFast; Probe::COUNT] = [
    py_start,
    py_resume,
    py_return,
    py_yield,
    call,
    line,
    py_unwind,
    py_throw,
    raise,
    reraise,
    exception_handled,
    c_return,
    c_raise,
];
