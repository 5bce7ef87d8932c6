//! What the exception probes say about an exception: its type's name and a
//! bounded message, both made without running any Python code.
//!
//! - type: the exception type's name as `object.__repr__` writes it
//!   (`object_repr::type_name`): `ValueError`, `KeyboardInterrupt`,
//!   `json.decoder.JSONDecodeError`, `mymodule.MyError`. A static type's
//!   `tp_name` is passed in place.
//! - message: `str(exc)` only where that is `args[0]` itself with no code
//!   run: the exception's type is a static (built-in) type whose `tp_str` is
//!   `BaseException`'s, and `args` is an exact tuple of one exact `str`
//!   (`ValueError("bad")`, `RuntimeError("x")`), or of none (empty
//!   message, as `str()` gives). Every other exception (classes defined in
//!   Python, `KeyError`, `OSError` and the others with a `__str__` of their
//!   own, several arguments) gets an empty message. The message is cut as
//!   reprs are (`PYUSDT_REPR_MAX`).

use std::cell::{Ref, RefCell};
use std::ffi::c_char;

use pyo3::ffi;
use thread_local::ThreadLocal;

use super::fast_repr::Keys;
use super::object_repr;
use super::repr::finish;
use crate::config;

unsafe extern "C" {
    // In the C API since 3.12; not in PyO3's ffi.
    fn PyException_GetArgs(exc: *mut ffi::PyObject) -> *mut ffi::PyObject;
}

/// Per-thread buffers of one interpreter for a type name and a message.
#[derive(Default)]
pub struct Buffers {
    ty: RefCell<Vec<u8>>,
    msg: RefCell<Vec<u8>>,
}

pub type PerThread = ThreadLocal<Buffers>;

enum Text<'a> {
    /// NUL-terminated UTF-8 that lives as long as the exception (or forever).
    Borrowed(*const c_char),
    /// NUL-terminated UTF-8 of an owned `str` (released on drop).
    Owned(*mut ffi::PyObject, *const c_char),
    Buf(Ref<'a, Vec<u8>>),
}

impl Text<'_> {
    fn ptr(&self) -> *const c_char {
        match self {
            Text::Borrowed(p) | Text::Owned(_, p) => *p,
            Text::Buf(b) => b.as_ptr().cast(),
        }
    }
}

impl Drop for Text<'_> {
    fn drop(&mut self) {
        if let Text::Owned(obj, _) = self {
            // SAFETY: an owned reference, dropped inside the callback while attached.
            unsafe { ffi::Py_DECREF(*obj) };
        }
    }
}

/// An exception's type name and message, valid while this lives.
pub struct Described<'a> {
    ty: Text<'a>,
    msg: Text<'a>,
}

impl Described<'_> {
    pub fn type_ptr(&self) -> *const c_char {
        self.ty.ptr()
    }

    pub fn message_ptr(&self) -> *const c_char {
        self.msg.ptr()
    }
}

/// Describes `exc` (an exception instance, or any object CPython passed).
/// Never raises: a name that cannot be made is `?`.
///
/// # Safety
/// Attached to the interpreter that owns `bufs` and `keys`; `exc` is valid.
pub unsafe fn describe<'a>(
    bufs: &'a PerThread,
    keys: &Keys,
    exc: *mut ffi::PyObject,
) -> Described<'a> {
    let b = bufs.get_or_default();
    // SAFETY: attached, `exc` valid (the caller's contract).
    unsafe {
        let ty = ffi::Py_TYPE(exc);
        let is_static = ffi::PyType_HasFeature(ty, ffi::Py_TPFLAGS_HEAPTYPE) == 0;
        let ty_text = if is_static {
            // A static type's `tp_name` is a constant of its C code.
            Text::Borrowed((*ty).tp_name)
        } else {
            let mut buf = b.ty.borrow_mut();
            buf.clear();
            if object_repr::type_name(ty, keys, &mut buf).is_err() {
                ffi::PyErr_Clear();
                buf.clear();
                buf.push(b'?');
            }
            finish(&mut buf);
            drop(buf);
            Text::Buf(b.ty.borrow())
        };
        let msg = if is_static { message(b, exc, ty) } else { None };
        Described {
            ty: ty_text,
            msg: msg.unwrap_or(Text::Borrowed(c"".as_ptr())),
        }
    }
}

/// `str(exc)` when it is `args[0]` (see the header), else `None`.
unsafe fn message<'a>(
    b: &'a Buffers,
    exc: *mut ffi::PyObject,
    ty: *mut ffi::PyTypeObject,
) -> Option<Text<'a>> {
    // SAFETY: attached; `exc` is valid and `ty` its static type; the args
    // tuple and its item are held by new references while read.
    unsafe {
        if ffi::PyExceptionInstance_Check(exc) == 0 {
            return None;
        }
        let base_str = (*ffi::PyExc_BaseException.cast::<ffi::PyTypeObject>()).tp_str;
        if (*ty).tp_str.map(|f| f as usize) != base_str.map(|f| f as usize) {
            return None;
        }
        let args = PyException_GetArgs(exc);
        if args.is_null() {
            ffi::PyErr_Clear();
            return None;
        }
        let text = if ffi::PyTuple_CheckExact(args) == 0 {
            None
        } else {
            match ffi::PyTuple_Size(args) {
                0 => Some(Text::Borrowed(c"".as_ptr())),
                1 => str_text(b, ffi::PyTuple_GetItem(args, 0)),
                _ => None,
            }
        };
        ffi::Py_DECREF(args);
        text
    }
}

/// The UTF-8 of an exact str, cut to the bound; `None` if not one.
unsafe fn str_text(b: &Buffers, s: *mut ffi::PyObject) -> Option<Text<'_>> {
    // SAFETY: attached; `s` is a borrowed item (or null), held while read.
    unsafe {
        if s.is_null() || ffi::PyUnicode_CheckExact(s) == 0 {
            return None;
        }
        let mut len: ffi::Py_ssize_t = 0;
        let p = ffi::PyUnicode_AsUTF8AndSize(s, &mut len);
        if p.is_null() {
            ffi::PyErr_Clear();
            return None;
        }
        let len = len as usize;
        if len < config::get().repr_max {
            return Some(Text::Owned(ffi::Py_NewRef(s), p));
        }
        let mut buf = b.msg.borrow_mut();
        buf.clear();
        buf.extend_from_slice(std::slice::from_raw_parts(
            p.cast::<u8>(),
            config::get().repr_max,
        ));
        finish(&mut buf);
        drop(buf);
        Some(Text::Buf(b.msg.borrow()))
    }
}
