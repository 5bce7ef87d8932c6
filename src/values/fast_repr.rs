//! Fast reprs: `repr()`'s exact text for the commonest values, written from
//! the object's fields (or a static string) with no Python object made and,
//! short of a non-str key forced into a class's dict, no Python code run.
//! Anything unusual returns `None` (no error set) and the caller falls back
//! to `PyObject_Repr`.
//!
//! Each path follows CPython 3.12-3.15's own formatting: `none_repr`,
//! `bool_repr`, `long_to_decimal_string`, `float_repr`, `func_repr`, `type_repr`,
//! `meth_repr`, `method_repr` (descrobject.c) and `unicode_repr`.
//! On the free-threaded build only immutable data is read: the paths that
//! read a field Python code may reassign meanwhile (a function's qualname, a
//! heap type's qualname, `__module__` or name) are GIL-only.

use std::ffi::{c_char, CStr};
use std::io::Write;

use pyo3::ffi;

/// What `write` produced.
pub enum Fast {
    /// The repr is this static text; nothing was written.
    Static(&'static CStr),
    /// The repr was appended to the buffer.
    Written,
}

/// Interned names the fast paths look up, owned by one interpreter's state.
pub struct Keys {
    /// `"__module__"`, the key of a heap type's module in its dict.
    #[cfg_attr(Py_GIL_DISABLED, allow(dead_code))]
    module: *mut ffi::PyObject,
}

impl Keys {
    /// The interned `"__module__"` (null before `init`), borrowed.
    #[cfg(not(Py_GIL_DISABLED))]
    pub fn module_key(&self) -> *mut ffi::PyObject {
        self.module
    }

    pub const fn empty() -> Self {
        Keys {
            module: std::ptr::null_mut(),
        }
    }

    /// Creates the names; `Err` leaves the Python error set.
    ///
    /// # Safety
    /// Attached to the interpreter whose state will own them.
    pub unsafe fn init(&mut self) -> Result<(), ()> {
        // SAFETY: attached; the new reference is kept until `release`.
        self.module = unsafe { ffi::PyUnicode_InternFromString(c"__module__".as_ptr()) };
        if self.module.is_null() {
            Err(())
        } else {
            Ok(())
        }
    }

    /// # Safety
    /// Attached to the interpreter that created them.
    pub unsafe fn release(&mut self) {
        // SAFETY: an owned reference or null.
        unsafe { ffi::Py_XDECREF(self.module) };
        self.module = std::ptr::null_mut();
    }
}

/// Appends `repr(obj)` to `out` (or names a static text) when `obj` is of a
/// kind handled here; `None` leaves `out` as it was and no error set. A str
/// repr stops once `out` holds `limit` bytes or more (the rest would be cut).
///
/// # Safety
/// Attached; `obj` is valid; `keys` belong to this interpreter.
pub unsafe fn write(
    obj: *mut ffi::PyObject,
    keys: &Keys,
    out: &mut Vec<u8>,
    limit: usize,
) -> Option<Fast> {
    // SAFETY: attached, `obj` valid (the caller's contract).
    if let Some(s) = unsafe { singleton(obj) } {
        return Some(Fast::Static(s));
    }
    let start = out.len();
    // SAFETY: as above; each path checks the exact type before reading fields.
    let done = unsafe {
        let ty = ffi::Py_TYPE(obj);
        if ty == &raw mut ffi::PyLong_Type {
            int(obj, out)
        } else if ty == &raw mut ffi::PyUnicode_Type {
            ascii_str(obj, out, limit)
        } else if ty == &raw mut ffi::PyFloat_Type {
            float(obj, out)
        } else if ty == &raw mut ffi::PyType_Type {
            class(obj, keys, out)
        } else if ty == &raw mut ffi::PyCFunction_Type || ty == &raw mut ffi::PyCMethod_Type {
            builtin(obj, out)
        } else if ty == &raw mut ffi::PyMethodDescr_Type {
            method_descr(obj, out)
        } else {
            function(obj, out)
        }
    };
    if done.is_some() {
        Some(Fast::Written)
    } else {
        out.truncate(start);
        None
    }
}

/// `None`, `True`, `False`, `...` and `NotImplemented`, by identity.
unsafe fn singleton(obj: *mut ffi::PyObject) -> Option<&'static CStr> {
    // SAFETY: the singletons' addresses, compared only.
    unsafe {
        if obj == ffi::Py_None() {
            Some(c"None")
        } else if obj == ffi::Py_True() {
            Some(c"True")
        } else if obj == ffi::Py_False() {
            Some(c"False")
        } else if obj == ffi::Py_Ellipsis() {
            Some(c"Ellipsis")
        } else if obj == ffi::Py_NotImplemented() {
            Some(c"NotImplemented")
        } else {
            None
        }
    }
}

/// A NUL-terminated C string's bytes if they are UTF-8 (as CPython's `%s`
/// would decode them without replacement).
unsafe fn utf8_cstr<'a>(p: *const c_char) -> Option<&'a [u8]> {
    if p.is_null() {
        return None;
    }
    // SAFETY: a non-null NUL-terminated string (the caller's contract).
    let b = unsafe { CStr::from_ptr(p) }.to_bytes();
    std::str::from_utf8(b).ok().map(str::as_bytes)
}

/// The UTF-8 of a str, or `None` (error cleared) if it cannot be encoded.
unsafe fn utf8_str<'a>(s: *mut ffi::PyObject) -> Option<&'a [u8]> {
    // SAFETY: attached; `s` is a str that outlives the returned slice.
    unsafe {
        let mut len: ffi::Py_ssize_t = 0;
        let p = ffi::PyUnicode_AsUTF8AndSize(s, &mut len);
        if p.is_null() {
            ffi::PyErr_Clear();
            return None;
        }
        Some(std::slice::from_raw_parts(p.cast::<u8>(), len as usize))
    }
}

/// Is this type's `tp_name` fixed for its lifetime? A static type's is; a
/// heap type's follows `__name__` unless the type is immutable.
#[cfg_attr(not(Py_GIL_DISABLED), allow(dead_code))]
unsafe fn fixed_name(ty: *mut ffi::PyTypeObject) -> bool {
    // SAFETY: reads the flags of a valid type.
    unsafe {
        ffi::PyType_HasFeature(ty, ffi::Py_TPFLAGS_HEAPTYPE) == 0
            || ffi::PyType_HasFeature(ty, ffi::Py_TPFLAGS_IMMUTABLETYPE) != 0
    }
}

/// The type's `tp_name` where it can be read safely: always with the GIL,
/// only a fixed one on the free-threaded build.
unsafe fn tp_name<'a>(ty: *mut ffi::PyTypeObject) -> Option<&'a [u8]> {
    // SAFETY: `ty` is valid; see `fixed_name`.
    unsafe {
        #[cfg(Py_GIL_DISABLED)]
        if !fixed_name(ty) {
            return None;
        }
        utf8_cstr((*ty).tp_name)
    }
}

/// Exact `int` within 64 bits: its decimal digits.
unsafe fn int(obj: *mut ffi::PyObject, out: &mut Vec<u8>) -> Option<()> {
    // SAFETY: attached; `obj` is an exact int.
    unsafe {
        let mut overflow = 0;
        let v = ffi::PyLong_AsLongLongAndOverflow(obj, &mut overflow);
        if overflow != 0 || (v == -1 && !ffi::PyErr_Occurred().is_null()) {
            ffi::PyErr_Clear();
            return None;
        }
        let _ = write!(out, "{v}");
        Some(())
    }
}

/// Exact `float`: the very call `float_repr` makes, minus the str.
unsafe fn float(obj: *mut ffi::PyObject, out: &mut Vec<u8>) -> Option<()> {
    // SAFETY: attached; `obj` is an exact float; the buffer CPython returns
    // is NUL-terminated ASCII and freed with PyMem_Free.
    unsafe {
        let p = ffi::PyOS_double_to_string(
            ffi::PyFloat_AS_DOUBLE(obj),
            b'r' as c_char,
            0,
            ffi::Py_DTSF_ADD_DOT_0,
            std::ptr::null_mut(),
        );
        if p.is_null() {
            ffi::PyErr_Clear();
            return None;
        }
        out.extend_from_slice(CStr::from_ptr(p).to_bytes());
        ffi::PyMem_Free(p.cast());
        Some(())
    }
}

/// Exact `str` of ASCII characters, not over 4 times the bound long
/// (`unicode_repr`): quoted with `'` unless it holds `'` and no `"`; `\\`,
/// the quote, `\t`, `\n` and `\r` escaped, other controls and DEL as `\xhh`.
unsafe fn ascii_str(obj: *mut ffi::PyObject, out: &mut Vec<u8>, limit: usize) -> Option<()> {
    // SAFETY: attached; `obj` is an exact str, immutable, whose 1-byte data
    // holds `len` characters.
    let s = unsafe {
        let len = ffi::PyUnicode_GET_LENGTH(obj) as usize;
        if len > 4 * crate::config::get().repr_max
            || ffi::PyUnicode_KIND(obj) != ffi::PyUnicode_1BYTE_KIND
        {
            return None;
        }
        std::slice::from_raw_parts(ffi::PyUnicode_DATA(obj).cast::<u8>(), len)
    };
    if !s.is_ascii() {
        return None;
    }
    let quote = if s.contains(&b'\'') && !s.contains(&b'"') {
        b'"'
    } else {
        b'\''
    };
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(s.len().min(limit) + 2);
    out.push(quote);
    for (i, &c) in s.iter().enumerate() {
        match c {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ if c == quote => out.extend_from_slice(&[b'\\', c]),
            0..=0x1f | 0x7f => out.extend_from_slice(&[
                b'\\',
                b'x',
                HEX[(c >> 4) as usize],
                HEX[(c & 15) as usize],
            ]),
            _ => out.push(c),
        }
        // Checked every 64 characters: the bound is cut later anyway.
        if i % 64 == 63 && out.len() >= limit {
            return Some(());
        }
    }
    out.push(quote);
    Some(())
}

/// A class whose type is exactly `type` (`type_repr`): a static type is
/// `<class 'TP_NAME'>`; a heap type (GIL builds) `<class 'MOD.QUALNAME'>`
/// with its own `__module__`, or `<class 'TP_NAME'>` when that is "builtins".
unsafe fn class(obj: *mut ffi::PyObject, keys: &Keys, out: &mut Vec<u8>) -> Option<()> {
    let ty = obj.cast::<ffi::PyTypeObject>();
    // SAFETY: attached; `obj` is a type object.
    unsafe {
        if ffi::PyType_HasFeature(ty, ffi::Py_TPFLAGS_HEAPTYPE) == 0 {
            let name = utf8_cstr((*ty).tp_name)?;
            out.extend_from_slice(b"<class '");
            out.extend_from_slice(name);
            out.extend_from_slice(b"'>");
            return Some(());
        }
        #[cfg(Py_GIL_DISABLED)]
        {
            let _ = (keys, out);
            None
        }
        #[cfg(not(Py_GIL_DISABLED))]
        heap_class(ty, keys, out)
    }
}

#[cfg(not(Py_GIL_DISABLED))]
unsafe fn heap_class(ty: *mut ffi::PyTypeObject, keys: &Keys, out: &mut Vec<u8>) -> Option<()> {
    // SAFETY: attached with the GIL, so nothing changes the type while we
    // read it; the module is held by a new reference while in use, and the
    // qualname (always a str, its setter checks) is copied before anything
    // else can run.
    unsafe {
        let dict = (*ty).tp_dict;
        if dict.is_null() || keys.module.is_null() || (*ty).tp_name.is_null() {
            return None;
        }
        let module = ffi::PyDict_GetItemWithError(dict, keys.module);
        if module.is_null() {
            ffi::PyErr_Clear();
            return None;
        }
        ffi::Py_INCREF(module);
        let res = (|| {
            if ffi::PyUnicode_CheckExact(module) == 0 {
                return None;
            }
            let m = utf8_str(module)?;
            out.extend_from_slice(b"<class '");
            if m == b"builtins" {
                out.extend_from_slice(utf8_cstr((*ty).tp_name)?);
            } else {
                let q = (*ty.cast::<ffi::PyHeapTypeObject>()).ht_qualname;
                if q.is_null() || ffi::PyUnicode_Check(q) == 0 {
                    return None;
                }
                out.extend_from_slice(m);
                out.push(b'.');
                out.extend_from_slice(utf8_str(q)?);
            }
            out.extend_from_slice(b"'>");
            Some(())
        })();
        ffi::Py_DECREF(module);
        res
    }
}

/// A built-in function or method (`meth_repr`): `<built-in function NAME>`
/// when bound to nothing or to a module, else `<built-in method NAME of
/// TP_NAME object at 0xADDR>`.
unsafe fn builtin(obj: *mut ffi::PyObject, out: &mut Vec<u8>) -> Option<()> {
    // SAFETY: attached; `obj` is exactly a PyCFunctionObject, whose fields
    // are set at creation and never change.
    unsafe {
        let f = obj.cast::<ffi::PyCFunctionObject>();
        let ml = (*f).m_ml;
        if ml.is_null() {
            return None;
        }
        let name = utf8_cstr((*ml).ml_name)?;
        let slf = (*f).m_self;
        if slf.is_null() || ffi::PyModule_Check(slf) != 0 {
            out.extend_from_slice(b"<built-in function ");
            out.extend_from_slice(name);
            out.push(b'>');
        } else {
            let tn = tp_name(ffi::Py_TYPE(slf))?;
            out.extend_from_slice(b"<built-in method ");
            out.extend_from_slice(name);
            out.extend_from_slice(b" of ");
            out.extend_from_slice(tn);
            let _ = write!(out, " object at {:#x}>", slf as usize);
        }
        Some(())
    }
}

/// A method descriptor (`method_repr`): `<method 'NAME' of 'TP_NAME' objects>`,
/// NAME `?` when the descriptor's name is not a str.
unsafe fn method_descr(obj: *mut ffi::PyObject, out: &mut Vec<u8>) -> Option<()> {
    // SAFETY: attached; `obj` is exactly a PyMethodDescrObject, whose name
    // and type are set at creation and never change.
    unsafe {
        let d = obj.cast::<ffi::PyDescrObject>();
        let dtype = (*d).d_type;
        if dtype.is_null() {
            return None;
        }
        let tn = tp_name(dtype)?;
        let n = (*d).d_name;
        out.extend_from_slice(b"<method '");
        if !n.is_null() && ffi::PyUnicode_Check(n) != 0 {
            out.extend_from_slice(utf8_str(n)?);
        } else {
            out.push(b'?');
        }
        out.extend_from_slice(b"' of '");
        out.extend_from_slice(tn);
        out.extend_from_slice(b"' objects>");
        Some(())
    }
}

/// A Python function (GIL builds, where its qualname cannot change while
/// read): `<function QUALNAME at 0xADDR>`.
unsafe fn function(obj: *mut ffi::PyObject, out: &mut Vec<u8>) -> Option<()> {
    #[cfg(Py_GIL_DISABLED)]
    {
        let _ = (obj, out);
        None
    }
    // SAFETY: attached with the GIL; the qualname is checked to be a str.
    #[cfg(not(Py_GIL_DISABLED))]
    unsafe {
        if ffi::PyFunction_Check(obj) == 0 {
            return None;
        }
        let q = (*(obj as *mut ffi::PyFunctionObject)).func_qualname;
        if q.is_null() || ffi::PyUnicode_Check(q) == 0 {
            return None;
        }
        out.extend_from_slice(b"<function ");
        out.extend_from_slice(utf8_str(q)?);
        let _ = write!(out, " at {:#x}>", obj as usize);
        Some(())
    }
}
