//! `repr()` computed only as far as the probes' bound: for values whose full
//! repr can be large and whose format CPython fixes (exact `str`, `bytes`,
//! `list`, `tuple` and `dict`), produce the first bytes of exactly what
//! `repr()` would return, and stop once past the bound. On free-threaded
//! builds a list or dict is read from a snapshot taken under its own lock
//! (`PyList_AsTuple`, `PyDict_Items`), as consistent as CPython's own repr.
//! Elements that `fast_repr` knows are written by it; everything else
//! (subclasses, other types) goes through `PyObject_Repr` when its repr is
//! pure C or `PYUSDT_REPR=full`, else gets `object.__repr__`'s text
//! (`object_repr`), so that `[1, Foo()]` is `[1, <__main__.Foo object at 0x...>]`.
//!
//! Invariant: after `repr_into(obj, out, limit)`, either `out` ends with the
//! whole of `repr(obj)`, or `out.len() >= limit` and its first `limit` bytes
//! are those `repr()` would have produced.

use std::ffi::c_char;

use pyo3::ffi;

use super::fast_repr::{self, Fast, Keys};
use super::object_repr;
use crate::config::{self, ReprMode};

/// Should `repr_into` handle this value (rather than a plain `PyObject_Repr`)?
///
/// # Safety
/// Attached; `obj` is valid.
pub unsafe fn wants(obj: *mut ffi::PyObject, limit: usize) -> bool {
    // SAFETY: type checks and size reads on a valid object.
    unsafe {
        (ffi::PyUnicode_CheckExact(obj) != 0 && ffi::PyUnicode_GetLength(obj) as usize > limit)
            || (ffi::PyBytes_CheckExact(obj) != 0 && ffi::PyBytes_Size(obj) as usize > limit)
            || ffi::PyList_CheckExact(obj) != 0
            || ffi::PyTuple_CheckExact(obj) != 0
            || ffi::PyDict_CheckExact(obj) != 0
    }
}

/// Appends `repr(obj)` to `out`, stopping once `out.len() >= limit` (see the
/// invariant above). `Err` leaves the Python error set.
///
/// # Safety
/// Attached; `obj` is valid; `keys` belong to this interpreter.
pub unsafe fn repr_into(
    obj: *mut ffi::PyObject,
    out: &mut Vec<u8>,
    limit: usize,
    keys: &Keys,
) -> Result<(), ()> {
    if out.len() >= limit {
        return Ok(());
    }
    let room = limit - out.len();
    // SAFETY: attached, `obj` valid (the caller's contract).
    unsafe {
        if ffi::PyUnicode_CheckExact(obj) != 0 && ffi::PyUnicode_GetLength(obj) as usize > room {
            return str_prefix(obj, out, limit, keys);
        }
        if ffi::PyBytes_CheckExact(obj) != 0 && ffi::PyBytes_Size(obj) as usize > room {
            return bytes_prefix(obj, out, limit, keys);
        }
        if ffi::PyList_CheckExact(obj) != 0 {
            return list(obj, out, limit, keys);
        }
        if ffi::PyTuple_CheckExact(obj) != 0 {
            return sequence(obj, obj, out, limit, keys, b'(', b')', true);
        }
        if ffi::PyDict_CheckExact(obj) != 0 {
            return dict(obj, out, limit, keys);
        }
        append_repr(obj, out, limit, keys)
    }
}

/// Appends the UTF-8 of `repr(obj)` (a str's only up to `limit`, see the invariant).
unsafe fn append_repr(
    obj: *mut ffi::PyObject,
    out: &mut Vec<u8>,
    limit: usize,
    keys: &Keys,
) -> Result<(), ()> {
    // SAFETY: attached, `obj` valid, `keys` of this interpreter (the caller's
    // contract); the repr is released after copying.
    unsafe {
        match fast_repr::write(obj, keys, out, limit) {
            Some(Fast::Static(text)) => {
                out.extend_from_slice(text.to_bytes());
                return Ok(());
            }
            Some(Fast::Written) => return Ok(()),
            None => {}
        }
        if config::get().repr_mode == ReprMode::Safe && !object_repr::pure_c(obj) {
            return object_repr::write(obj, keys, out);
        }
        let r = ffi::PyObject_Repr(obj);
        if r.is_null() {
            return Err(());
        }
        let res = append_utf8(r, out);
        ffi::Py_DECREF(r);
        res
    }
}

unsafe fn append_utf8(s: *mut ffi::PyObject, out: &mut Vec<u8>) -> Result<(), ()> {
    // SAFETY: attached; `s` is a str.
    unsafe {
        let mut len: ffi::Py_ssize_t = 0;
        let p = ffi::PyUnicode_AsUTF8AndSize(s, &mut len);
        if p.is_null() {
            return Err(());
        }
        out.extend_from_slice(std::slice::from_raw_parts(p.cast::<u8>(), len as usize));
        Ok(())
    }
}

/// `repr()` picks its quote from the whole value (`"` if it holds `'` and no
/// `"`), so the prefix is extended with the quote characters the whole value
/// holds and the prefix lacks: its repr then picks the same quote, and starts
/// with the same `1 + room` bytes or more as the whole value's repr.
unsafe fn str_prefix(
    obj: *mut ffi::PyObject,
    out: &mut Vec<u8>,
    limit: usize,
    keys: &Keys,
) -> Result<(), ()> {
    let room = limit - out.len();
    // SAFETY: attached; `obj` is an exact str longer than `room`; every new
    // object is checked and released.
    unsafe {
        let has = |s: *mut ffi::PyObject, ch: char| -> Result<bool, ()> {
            let n = ffi::PyUnicode_GetLength(s);
            match ffi::PyUnicode_FindChar(s, ch as u32, 0, n, 1) {
                -2 => Err(()),
                i => Ok(i >= 0),
            }
        };
        let prefix = ffi::PyUnicode_Substring(obj, 0, room as ffi::Py_ssize_t);
        if prefix.is_null() {
            return Err(());
        }
        let mut extra = String::new();
        for q in ['\'', '"'] {
            match (has(obj, q), has(prefix, q)) {
                (Ok(true), Ok(false)) => extra.push(q),
                (Ok(_), Ok(_)) => {}
                _ => {
                    ffi::Py_DECREF(prefix);
                    return Err(());
                }
            }
        }
        let target = if extra.is_empty() {
            prefix
        } else {
            let tail =
                ffi::PyUnicode_FromStringAndSize(extra.as_ptr().cast::<c_char>(), extra.len() as _);
            let joined = if tail.is_null() {
                tail
            } else {
                ffi::PyUnicode_Concat(prefix, tail)
            };
            ffi::Py_XDECREF(tail);
            ffi::Py_DECREF(prefix);
            if joined.is_null() {
                return Err(());
            }
            joined
        };
        let res = append_repr(target, out, limit, keys);
        ffi::Py_DECREF(target);
        res
    }
}

/// As `str_prefix`, for bytes (same quote rule).
unsafe fn bytes_prefix(
    obj: *mut ffi::PyObject,
    out: &mut Vec<u8>,
    limit: usize,
    keys: &Keys,
) -> Result<(), ()> {
    let room = limit - out.len();
    // SAFETY: attached; `obj` is an exact bytes object longer than `room`.
    unsafe {
        let mut p: *mut c_char = std::ptr::null_mut();
        let mut n: ffi::Py_ssize_t = 0;
        if ffi::PyBytes_AsStringAndSize(obj, &mut p, &mut n) < 0 {
            return Err(());
        }
        let all = std::slice::from_raw_parts(p.cast::<u8>(), n as usize);
        let mut prefix = all[..room].to_vec();
        for q in [b'\'', b'"'] {
            if all.contains(&q) && !prefix.contains(&q) {
                prefix.push(q);
            }
        }
        let target =
            ffi::PyBytes_FromStringAndSize(prefix.as_ptr().cast::<c_char>(), prefix.len() as _);
        if target.is_null() {
            return Err(());
        }
        let res = append_repr(target, out, limit, keys);
        ffi::Py_DECREF(target);
        res
    }
}

/// Enters a container's repr like CPython does: recursion limit, and
/// `Py_ReprEnter` for self-reference (`[...]`). `Ok(false)`: already inside.
unsafe fn enter(obj: *mut ffi::PyObject) -> Result<bool, ()> {
    // SAFETY: attached; `obj` valid.
    unsafe {
        if ffi::Py_EnterRecursiveCall(c" while getting the repr of an object".as_ptr()) != 0 {
            return Err(());
        }
        match ffi::Py_ReprEnter(obj) {
            0 => Ok(true),
            r => {
                ffi::Py_LeaveRecursiveCall();
                if r > 0 {
                    Ok(false)
                } else {
                    Err(())
                }
            }
        }
    }
}

unsafe fn leave(obj: *mut ffi::PyObject) {
    // SAFETY: pairs a successful `enter`.
    unsafe {
        ffi::Py_ReprLeave(obj);
        ffi::Py_LeaveRecursiveCall();
    }
}

/// A list: read in place on GIL builds; on free-threaded builds from a
/// tuple snapshot of its items, taken under the list's lock.
unsafe fn list(
    obj: *mut ffi::PyObject,
    out: &mut Vec<u8>,
    limit: usize,
    keys: &Keys,
) -> Result<(), ()> {
    // SAFETY: attached; `obj` is an exact list; the snapshot is ours and
    // released after use.
    unsafe {
        #[cfg(Py_GIL_DISABLED)]
        {
            let snapshot = ffi::PyList_AsTuple(obj);
            if snapshot.is_null() {
                return Err(());
            }
            let res = sequence(obj, snapshot, out, limit, keys, b'[', b']', false);
            ffi::Py_DECREF(snapshot);
            res
        }
        #[cfg(not(Py_GIL_DISABLED))]
        {
            sequence(obj, obj, out, limit, keys, b'[', b']', false)
        }
    }
}

/// The repr of `obj` (for recursion checks), whose items are read from
/// `items`: `obj` itself, or a tuple snapshot of a list.
#[allow(clippy::too_many_arguments)]
unsafe fn sequence(
    obj: *mut ffi::PyObject,
    items: *mut ffi::PyObject,
    out: &mut Vec<u8>,
    limit: usize,
    keys: &Keys,
    open: u8,
    close: u8,
    is_tuple: bool,
) -> Result<(), ()> {
    // SAFETY: attached; the container is re-measured on every step (a
    // `__repr__` may change a list) and each item is held while in use. A
    // tuple (or a snapshot) never changes.
    unsafe {
        let from_list = ffi::PyList_CheckExact(items) != 0;
        if ffi::Py_SIZE(items) == 0 {
            out.extend_from_slice(&[open, close]);
            return Ok(());
        }
        if !enter(obj)? {
            out.extend_from_slice(&[open, b'.', b'.', b'.', close]);
            return Ok(());
        }
        out.push(open);
        let mut i: ffi::Py_ssize_t = 0;
        let mut res = Ok(());
        while i < ffi::Py_SIZE(items) && out.len() < limit {
            if i > 0 {
                out.extend_from_slice(b", ");
            }
            let item = if from_list {
                ffi::PyList_GetItem(items, i)
            } else {
                ffi::PyTuple_GetItem(items, i)
            };
            if item.is_null() {
                res = Err(());
                break;
            }
            ffi::Py_INCREF(item);
            res = repr_into(item, out, limit, keys);
            ffi::Py_DECREF(item);
            if res.is_err() {
                break;
            }
            i += 1;
        }
        if res.is_ok() && out.len() < limit {
            if is_tuple && i == 1 {
                out.push(b',');
            }
            out.push(close);
        }
        leave(obj);
        res
    }
}

/// A dict's items in order: walked in place on GIL builds (`PyDict_Next`
/// tolerates a dict changed meanwhile, as in CPython's own repr); on
/// free-threaded builds read from `PyDict_Items`, a list of pairs taken
/// under the dict's lock, which is ours alone.
struct Items {
    #[cfg(not(Py_GIL_DISABLED))]
    dict: *mut ffi::PyObject,
    #[cfg(not(Py_GIL_DISABLED))]
    pos: ffi::Py_ssize_t,
    #[cfg(Py_GIL_DISABLED)]
    pairs: *mut ffi::PyObject,
    #[cfg(Py_GIL_DISABLED)]
    i: ffi::Py_ssize_t,
}

impl Items {
    /// # Safety
    /// Attached; `dict` is an exact dict that outlives the walk.
    unsafe fn new(dict: *mut ffi::PyObject) -> Result<Self, ()> {
        #[cfg(not(Py_GIL_DISABLED))]
        return Ok(Items { dict, pos: 0 });
        #[cfg(Py_GIL_DISABLED)]
        {
            // SAFETY: attached; a new list, released in `drop`.
            let pairs = unsafe { ffi::PyDict_Items(dict) };
            if pairs.is_null() {
                return Err(());
            }
            Ok(Items { pairs, i: 0 })
        }
    }

    /// The next key and value, borrowed from the dict (or the snapshot).
    ///
    /// # Safety
    /// Attached.
    unsafe fn next(&mut self) -> Result<Option<(*mut ffi::PyObject, *mut ffi::PyObject)>, ()> {
        #[cfg(not(Py_GIL_DISABLED))]
        {
            let mut key = std::ptr::null_mut();
            let mut value = std::ptr::null_mut();
            // SAFETY: attached; `dict` is a dict (see `new`).
            let more = unsafe { ffi::PyDict_Next(self.dict, &mut self.pos, &mut key, &mut value) };
            Ok((more != 0).then_some((key, value)))
        }
        #[cfg(Py_GIL_DISABLED)]
        // SAFETY: attached; `pairs` is our own list of 2-tuples.
        unsafe {
            if self.i >= ffi::PyList_Size(self.pairs) {
                return Ok(None);
            }
            let pair = ffi::PyList_GetItem(self.pairs, self.i);
            self.i += 1;
            if pair.is_null() {
                return Err(());
            }
            let (key, value) = (ffi::PyTuple_GetItem(pair, 0), ffi::PyTuple_GetItem(pair, 1));
            if key.is_null() || value.is_null() {
                return Err(());
            }
            Ok(Some((key, value)))
        }
    }
}

#[cfg(Py_GIL_DISABLED)]
impl Drop for Items {
    fn drop(&mut self) {
        // SAFETY: our own reference, dropped while attached (inside a repr).
        unsafe { ffi::Py_DECREF(self.pairs) };
    }
}

unsafe fn dict(
    obj: *mut ffi::PyObject,
    out: &mut Vec<u8>,
    limit: usize,
    keys: &Keys,
) -> Result<(), ()> {
    // SAFETY: attached; `obj` is an exact dict; keys and values are held
    // while their reprs run.
    unsafe {
        let mut items = Items::new(obj)?;
        let Some(mut pair) = items.next()? else {
            out.extend_from_slice(b"{}");
            return Ok(());
        };
        if !enter(obj)? {
            out.extend_from_slice(b"{...}");
            return Ok(());
        }
        out.push(b'{');
        let res = loop {
            let (key, value) = pair;
            ffi::Py_INCREF(key);
            ffi::Py_INCREF(value);
            let mut res = repr_into(key, out, limit, keys);
            if res.is_ok() && out.len() < limit {
                out.extend_from_slice(b": ");
                res = repr_into(value, out, limit, keys);
            }
            ffi::Py_DECREF(key);
            ffi::Py_DECREF(value);
            if res.is_err() || out.len() >= limit {
                break res;
            }
            match items.next() {
                Ok(Some(p)) => pair = p,
                Ok(None) => break Ok(()),
                Err(()) => break Err(()),
            }
            out.extend_from_slice(b", ");
        };
        if res.is_ok() && out.len() < limit {
            out.push(b'}');
        }
        leave(obj);
        res
    }
}
