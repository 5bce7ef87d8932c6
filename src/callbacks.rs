//! The `sys.monitoring` callbacks: METH_FASTCALL C functions bound to this
//! interpreter's module, one per event, each firing its USDT probe.
//!
//! Per event: one semaphore read, the code object's fields read in place
//! (`code_info`), and for value probes a bounded repr (`repr`). Nothing is
//! allocated for names and files and nothing shared is locked, so callbacks
//! run concurrently on the free-threaded build.

use std::ffi::c_char;
use std::ptr;

use pyo3::ffi;

use crate::code_info;
use crate::probes::{self, Probe};
use crate::repr;
use crate::state::{self, State};

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

/// Validated callback arguments: the state, the code object and args.
///
/// # Safety
/// Called from a METH_FASTCALL function: attached, `args` has `nargs` items.
#[inline(always)]
unsafe fn prologue<'a>(
    module: *mut ffi::PyObject,
    args: Args,
    nargs: ffi::Py_ssize_t,
    want: ffi::Py_ssize_t,
) -> Result<(&'a State, &'a [*mut ffi::PyObject]), ()> {
    // SAFETY: per the contract; the callbacks are created with `module` as self.
    unsafe {
        if nargs != want || !code_info::is_code(*args) {
            ffi::PyErr_SetString(
                ffi::PyExc_TypeError,
                c"pyusdt callbacks take (code, int, ...) from sys.monitoring".as_ptr(),
            );
            return Err(());
        }
        match state::of(module) {
            Some(s) => Ok((s, std::slice::from_raw_parts(args, nargs as usize))),
            None => {
                ffi::PyErr_SetString(
                    ffi::PyExc_RuntimeError,
                    c"pyusdt module not initialised".as_ptr(),
                );
                Err(())
            }
        }
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

/// One event, validated and read: the state, the arguments, the code
/// object's fields and the int argument (offset, or line number for LINE).
struct Event<'a> {
    st: &'a State,
    args: &'a [*mut ffi::PyObject],
    info: code_info::CodeInfo,
    num: i64,
}

/// Validates and reads an event; `Err` is what the callback returns instead
/// of firing: NULL with an exception set, or DISABLE for pyusdt's own code.
///
/// # Safety
/// Called from a METH_FASTCALL callback: attached, `args` has `nargs` items.
#[inline(always)]
unsafe fn event<'a>(
    module: *mut ffi::PyObject,
    args: Args,
    nargs: ffi::Py_ssize_t,
    want: ffi::Py_ssize_t,
) -> Result<Event<'a>, *mut ffi::PyObject> {
    // SAFETY: per the contract; `prologue` checks `a[0]` is a code object.
    unsafe {
        let (st, a) = prologue(module, args, nargs, want).map_err(|()| ptr::null_mut())?;
        let info = code_info::read(a[0], st.layout_ok);
        if st.is_own(info.file_bytes()) {
            return Err(disable(st));
        }
        Ok(Event {
            st,
            args: a,
            info,
            num: int_arg(a[1]),
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
            let ev = match unsafe { event(module, args, nargs, 2) } {
                Ok(ev) => ev,
                Err(ret) => return ret,
            };
            probes::fire::$site(
                ev.info.name as usize,
                ev.info.file as usize,
                ev.info.firstlineno,
                ev.num,
                ev.st.interp_id,
            );
            drop(ev);
            none()
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
            // SAFETY: CPython calls us attached, with `nargs` arguments.
            let ev = match unsafe { event(module, args, nargs, $nargs) } {
                Ok(ev) => ev,
                Err(ret) => return ret,
            };
            // SAFETY: attached to the interpreter that owns `ev.st.scratch`.
            let Some(value) = (unsafe { repr::bounded(&ev.st.scratch, &ev.st.keys, ev.args[2]) })
            else {
                return ptr::null_mut();
            };
            let value_ptr: *const c_char = value.ptr();
            probes::fire::$site(
                ev.info.name as usize,
                ev.info.file as usize,
                ev.info.firstlineno,
                ev.num,
                value_ptr as usize,
                ev.st.interp_id,
            );
            drop(value);
            drop(ev);
            none()
        }
    };
}

value_like!(py_return, Probe::PyReturn, py_return, 3);
value_like!(py_yield, Probe::PyYield, py_yield, 3);
// CALL passes (code, offset, callable, arg0).
value_like!(call, Probe::Call, call, 4);

pub unsafe extern "C" fn line(
    module: *mut ffi::PyObject,
    args: Args,
    nargs: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    if !Probe::Line.attached() {
        return none();
    }
    // SAFETY: CPython calls us attached, with `nargs` arguments.
    let ev = match unsafe { event(module, args, nargs, 2) } {
        Ok(ev) => ev,
        Err(ret) => return ret,
    };
    let lineno = ev.num as i32;
    probes::fire::line(
        ev.info.name as usize,
        ev.info.file as usize,
        lineno,
        ev.st.interp_id,
    );
    drop(ev);
    none()
}

/// The callback function for each probe, indexed like `Probe::ALL`.
pub const FUNCTIONS: [ffi::PyCFunctionFast; 6] =
    [py_start, py_resume, py_return, py_yield, call, line];
