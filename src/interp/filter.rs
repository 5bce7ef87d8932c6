//! `PYUSDT_FILTER` in one interpreter: whether a code object is traced,
//! decided once per code object and kept in its `co_extra` slot (an index
//! pyusdt requests from this interpreter, only when a filter is set).
//!
//! The module is `__name__` of the globals of the frame that raised the
//! event (read only the first time a code object is seen, and only if that
//! frame runs this code object; otherwise the module is unknown and only
//! the qualname and file are matched). No Python code runs: the globals are
//! read with a dict lookup of an exact str key.
//!
//! Immortal code objects (3.12+'s deep-frozen stdlib code, shared by every
//! interpreter of the process) are never written: their `co_extra` would be
//! shared by interpreters running in parallel. They are matched at each
//! event instead, which the local events pay once per location (the
//! decision is `DISABLE` or a fired probe either way).

use std::ffi::{c_int, c_void};
use std::ptr;

use pyo3::ffi;

use crate::config::Filter;
use crate::values::code_info::CodeInfo;

unsafe extern "C" {
    // The C API's per-code-object slots (3.12+, not in PyO3's ffi).
    fn PyUnstable_Eval_RequestCodeExtraIndex(free: Option<ffi::freefunc>) -> ffi::Py_ssize_t;
    fn PyUnstable_Code_GetExtra(
        code: *mut ffi::PyObject,
        index: ffi::Py_ssize_t,
        extra: *mut *mut c_void,
    ) -> c_int;
    fn PyUnstable_Code_SetExtra(
        code: *mut ffi::PyObject,
        index: ffi::Py_ssize_t,
        extra: *mut c_void,
    ) -> c_int;
}

/// The decisions kept in `co_extra` (never dereferenced, so nothing to free).
const TRACED: usize = 1;
const NOT_TRACED: usize = 2;

/// No `co_extra` index: no filter (or none could be had; then all is traced).
pub const NO_INDEX: ffi::Py_ssize_t = -1;

/// Requests this interpreter's `co_extra` index when a filter is set.
///
/// # Safety
/// Attached.
pub unsafe fn request_index(filter: Option<&Filter>) -> ffi::Py_ssize_t {
    if filter.is_none() {
        return NO_INDEX;
    }
    // SAFETY: attached; no free function (the values are not pointers).
    let i = unsafe { PyUnstable_Eval_RequestCodeExtraIndex(None) };
    if i < 0 {
        crate::config::log(|| "no co_extra index: PYUSDT_FILTER ignored".into());
        return NO_INDEX;
    }
    i
}

/// Is `code` traced under `filter`?
///
/// # Safety
/// Attached to the interpreter that gave `index`; `code` is a code object
/// and `info` its fields, read during an event raised by the current frame.
#[inline(always)]
pub unsafe fn wanted(
    filter: &Filter,
    index: ffi::Py_ssize_t,
    code: *mut ffi::PyObject,
    info: &CodeInfo,
) -> bool {
    // SAFETY: per the contract; a failed get/set is cleared and the decision
    // made again next time.
    unsafe {
        let mut got: *mut c_void = ptr::null_mut();
        if PyUnstable_Code_GetExtra(code, index, &mut got) < 0 {
            ffi::PyErr_Clear();
        } else if got as usize == TRACED {
            return true;
        } else if got as usize == NOT_TRACED {
            return false;
        }
        let module = module_of(code);
        let yes = filter.matches(
            module.as_deref().unwrap_or(b""),
            info.qualname_bytes(),
            info.file_bytes(),
        );
        let v = if yes { TRACED } else { NOT_TRACED };
        if !immortal(code) && PyUnstable_Code_SetExtra(code, index, v as *mut c_void) < 0 {
            ffi::PyErr_Clear();
        }
        yes
    }
}

/// Is `obj` immortal? Its reference count then reads as at least
/// `u32::MAX` (3.12, 3.13, free-threaded too), which no mortal object reaches.
unsafe fn immortal(obj: *mut ffi::PyObject) -> bool {
    // SAFETY: reading the reference count of a valid object.
    unsafe { ffi::Py_REFCNT(obj) as u64 >= u64::from(u32::MAX) }
}

/// `__name__` of the current frame's globals if that frame runs `code`.
unsafe fn module_of(code: *mut ffi::PyObject) -> Option<Vec<u8>> {
    // SAFETY: attached; the frame and its code are new references released
    // here; the globals and the name are borrowed while copied.
    unsafe {
        let frame = ffi::PyEval_GetFrame();
        if frame.is_null() {
            return None;
        }
        let fcode = ffi::PyFrame_GetCode(frame);
        let same = fcode.cast::<ffi::PyObject>() == code;
        ffi::Py_XDECREF(fcode.cast());
        if !same {
            return None;
        }
        let globals = ffi::PyEval_GetGlobals();
        if globals.is_null() || ffi::PyDict_CheckExact(globals) == 0 {
            ffi::PyErr_Clear();
            return None;
        }
        let name = ffi::PyDict_GetItemString(globals, c"__name__".as_ptr());
        if name.is_null() || ffi::PyUnicode_CheckExact(name) == 0 {
            ffi::PyErr_Clear();
            return None;
        }
        let mut len: ffi::Py_ssize_t = 0;
        let p = ffi::PyUnicode_AsUTF8AndSize(name, &mut len);
        if p.is_null() {
            ffi::PyErr_Clear();
            return None;
        }
        Some(std::slice::from_raw_parts(p.cast::<u8>(), len as usize).to_vec())
    }
}
