//! Bounded, never-raising `repr()` of a returned/yielded value or a callable,
//! for the probes: per-thread scratch and a per-thread re-entrancy guard.
//!
//! A repr that fits in `PYUSDT_REPR_MAX` bytes is passed as the `str`'s own UTF-8
//! buffer (no copy); a longer one is cut at a character boundary into the
//! thread's scratch buffer. The commonest values skip `PyObject_Repr`: their
//! exact repr is written straight into the scratch buffer or is a static
//! string (`fast_repr`). In the default `safe` mode (`PYUSDT_REPR`) no Python
//! code runs: a value whose `repr()` is not pure C gets `object.__repr__`'s
//! text, made natively (`object_repr`); `full` calls `repr()` for it, with
//! the guards below. When `repr()` raises an `Exception`, the event
//! still fires with `<repr failed: TypeName>` and the exception is cleared,
//! so the traced program never sees it. A `BaseException` that is not an
//! `Exception` (KeyboardInterrupt from a signal handler, SystemExit) is left
//! set for the caller to propagate: swallowing it would lose a Ctrl-C.
//! CPython raises no monitoring events while a callback runs, so Python code
//! run by a `__repr__` is not traced; should a future CPython raise them, a
//! per-thread guard makes those fire with `<re-entrant repr>` rather than
//! recurse into `repr()` again.

use std::cell::{Cell, RefCell};
use std::ffi::{c_char, CStr};

use pyo3::ffi;
use thread_local::ThreadLocal;

use super::bounded;
use super::fast_repr::{self, Fast, Keys};
use super::object_repr;
use crate::config::{self, ReprMode};

/// Per-thread state of one interpreter (threads can switch interpreters, so
/// it is kept per interpreter, not in a `thread_local!`).
#[derive(Default)]
pub struct Scratch {
    in_repr: Cell<bool>,
    buf: RefCell<Vec<u8>>,
}

pub type PerThread = ThreadLocal<Scratch>;

/// A repr ready for a probe: `ptr()` stays valid while this lives.
pub enum Repr<'a> {
    /// Owned `str`; its UTF-8 is NUL-terminated and short enough.
    Str(*mut ffi::PyObject, *const c_char),
    /// Bytes in the thread's scratch buffer (NUL-terminated).
    Scratch(std::cell::Ref<'a, Vec<u8>>),
    /// Static text (`None`, `True`, ...).
    Static(&'static CStr),
}

impl Repr<'_> {
    pub fn ptr(&self) -> *const c_char {
        match self {
            Repr::Str(_, p) => *p,
            Repr::Scratch(b) => b.as_ptr().cast(),
            Repr::Static(t) => t.as_ptr(),
        }
    }
}

impl Drop for Repr<'_> {
    fn drop(&mut self) {
        if let Repr::Str(obj, _) = self {
            // SAFETY: an owned reference, dropped inside the callback while attached.
            unsafe { ffi::Py_DECREF(*obj) };
        }
    }
}

/// `parts` (valid UTF-8) in the scratch buffer, cut to the bound if longer.
fn write_scratch<'a>(s: &'a Scratch, parts: &[&[u8]]) -> Repr<'a> {
    {
        let mut buf = s.buf.borrow_mut();
        buf.clear();
        for p in parts {
            buf.extend_from_slice(p);
        }
        finish(&mut buf);
    }
    Repr::Scratch(s.buf.borrow())
}

/// Cuts `buf` to the bound (with "...") if it does not fit, and NUL-terminates it.
pub(super) fn finish(buf: &mut Vec<u8>) {
    if buf.len() >= config::get().repr_max {
        let end = cut_point(buf);
        buf.truncate(end);
        buf.extend_from_slice(b"...");
    }
    buf.push(0);
}

/// A fast repr (see `fast_repr`) in the scratch buffer, or static text.
unsafe fn fast<'a>(s: &'a Scratch, keys: &Keys, obj: *mut ffi::PyObject) -> Option<Repr<'a>> {
    let mut buf = s.buf.borrow_mut();
    buf.clear();
    // SAFETY: attached, `obj` valid, `keys` of this interpreter (the caller's contract).
    match unsafe { fast_repr::write(obj, keys, &mut buf, config::get().repr_max) }? {
        Fast::Static(text) => Some(Repr::Static(text)),
        Fast::Written => {
            finish(&mut buf);
            drop(buf);
            Some(Repr::Scratch(s.buf.borrow()))
        }
    }
}

/// `repr(obj)` for a probe, or `None` when a non-`Exception` is raised and
/// must propagate (it is left set).
///
/// # Safety
/// Attached to the interpreter that owns `scratch` and `keys`; `obj` is valid.
pub unsafe fn bounded<'a>(
    scratch: &'a PerThread,
    keys: &Keys,
    obj: *mut ffi::PyObject,
) -> Option<Repr<'a>> {
    let s = scratch.get_or_default();
    if s.in_repr.get() {
        return Some(write_scratch(s, &[b"<re-entrant repr>"]));
    }
    // SAFETY: attached, `obj` valid (the caller's contract).
    if let Some(r) = unsafe { fast(s, keys, obj) } {
        return Some(r);
    }
    let max = config::get().repr_max;
    // SAFETY: as above.
    if unsafe { bounded::wants(obj, max) } {
        return unsafe { bounded_repr(s, keys, obj) };
    }
    // SAFETY: as above.
    if config::get().repr_mode == ReprMode::Safe && !unsafe { object_repr::pure_c(obj) } {
        return unsafe { object_text(s, keys, obj) };
    }
    s.in_repr.set(true);
    // SAFETY: attached, `obj` valid (the caller's contract).
    let r = unsafe { ffi::PyObject_Repr(obj) };
    s.in_repr.set(false);
    // SAFETY: attached; `r` is an owned str or null with an error set.
    unsafe {
        if r.is_null() {
            return failed(s);
        }
        let mut len: ffi::Py_ssize_t = 0;
        let p = ffi::PyUnicode_AsUTF8AndSize(r, &mut len);
        if p.is_null() {
            ffi::Py_DECREF(r);
            return failed(s);
        }
        let len = len as usize;
        if len < max {
            return Some(Repr::Str(r, p));
        }
        // Only the first `max` bytes are copied; `finish` cuts them to the bound.
        let out = write_scratch(s, &[std::slice::from_raw_parts(p.cast::<u8>(), max)]);
        ffi::Py_DECREF(r);
        Some(out)
    }
}

/// `object.__repr__(obj)`'s text (see `object_repr`), in the scratch buffer.
unsafe fn object_text<'a>(
    s: &'a Scratch,
    keys: &Keys,
    obj: *mut ffi::PyObject,
) -> Option<Repr<'a>> {
    let mut buf = s.buf.borrow_mut();
    buf.clear();
    // SAFETY: attached, `obj` valid (the caller's contract); no Python code
    // runs, so nothing can observe the buffer borrowed.
    if unsafe { object_repr::write(obj, keys, &mut buf) }.is_err() {
        drop(buf);
        // SAFETY: attached with the error of `write` set.
        return unsafe { failed(s) };
    }
    finish(&mut buf);
    drop(buf);
    Some(Repr::Scratch(s.buf.borrow()))
}

/// A repr computed only up to the bound (see `bounded`), in the scratch buffer.
unsafe fn bounded_repr<'a>(
    s: &'a Scratch,
    keys: &Keys,
    obj: *mut ffi::PyObject,
) -> Option<Repr<'a>> {
    // The buffer is taken out while Python code runs, so that nothing can
    // observe it borrowed; it goes back (with its capacity) either way.
    let mut buf = std::mem::take(&mut *s.buf.borrow_mut());
    buf.clear();
    s.in_repr.set(true);
    // SAFETY: attached, `obj` valid (the caller's contract).
    let max = config::get().repr_max;
    let res = unsafe { bounded::repr_into(obj, &mut buf, max, keys) };
    s.in_repr.set(false);
    if res.is_err() {
        *s.buf.borrow_mut() = buf;
        // SAFETY: attached with the error of `repr_into` set.
        return unsafe { failed(s) };
    }
    finish(&mut buf);
    *s.buf.borrow_mut() = buf;
    Some(Repr::Scratch(s.buf.borrow()))
}

/// Where to cut UTF-8 `bytes` (longer than the bound) so that the text and
/// "..." and a NUL fit in the bound: at a character boundary.
fn cut_point(bytes: &[u8]) -> usize {
    let mut end = config::get().repr_max - 4;
    // Step back to a character boundary (continuation bytes are 0b10xxxxxx).
    while end > 0 && (bytes[end] & 0xC0) == 0x80 {
        end -= 1;
    }
    end
}

/// The placeholder for a repr that raised; clears an `Exception`, keeps
/// anything else set and returns `None`.
unsafe fn failed(s: &Scratch) -> Option<Repr<'_>> {
    // SAFETY: attached with an error set.
    unsafe {
        let exc = ffi::PyErr_GetRaisedException();
        if exc.is_null() {
            return Some(write_scratch(s, &[b"<repr failed>"]));
        }
        if ffi::PyErr_GivenExceptionMatches(exc, ffi::PyExc_Exception) == 0 {
            ffi::PyErr_SetRaisedException(exc);
            return None;
        }
        let ty = ffi::Py_TYPE(exc);
        let full = std::ffi::CStr::from_ptr((*ty).tp_name).to_bytes();
        let short = match full.iter().rposition(|&b| b == b'.') {
            Some(i) => &full[i + 1..],
            None => full,
        };
        let short: Vec<u8> = short.iter().copied().take(64).collect();
        let out = write_scratch(s, &[b"<repr failed: ", &short, b">"]);
        ffi::Py_DECREF(exc);
        Some(out)
    }
}
