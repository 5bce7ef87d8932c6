//! The `safe` repr mode (`PYUSDT_REPR`, the default): which values may have
//! their `repr()` called because it is pure C, and `object.__repr__`'s text
//! (`<MOD.QUALNAME object at 0xADDR>`) made natively for all the others.
//!
//! The text follows CPython 3.12-3.14's `object_repr`, `type_module` and
//! `type_qualname` (Objects/typeobject.c): MOD is a heap type's `__module__`
//! from its own dict (only if it is a str, subclasses included) or, for a
//! static type, `tp_name` before its last '.' ("builtins" if it has none);
//! QUALNAME a heap type's `ht_qualname` or a static type's `tp_name` after
//! its last '.'. When MOD is not a str or equals "builtins" the text is
//! `<TP_NAME object at 0xADDR>`. `%p` is `0x` and lowercase hex on glibc.
//!
//! No Python code runs, with one exception shared with CPython's own
//! `object_repr`: looking `__module__` up in a class dict into which a
//! non-str key with the same hash was forced (through `gc.get_referents`)
//! calls that key's `__eq__`.
//!
//! Free-threaded builds read nothing that Python code may replace meanwhile
//! without a reference: the module comes from `PyType_GetModuleName`
//! (`PyDict_GetItemRef`, a new reference), the qualname from
//! `PyType_GetQualName` (a new reference), and a heap type's `tp_name` is
//! read only if the type is immutable; otherwise its `__name__`
//! (`PyType_GetName`, a new reference) stands in for it, which is the same
//! text for every class made by a `class` statement or `type()`.

use std::ffi::CStr;
use std::io::Write;

use pyo3::ffi;

use super::fast_repr::Keys;

/// Is `repr(obj)` pure C code that cannot reach Python code? Then `safe`
/// mode calls it, and the text is `repr()`'s own.
///
/// # Safety
/// Attached; `obj` is valid.
pub unsafe fn pure_c(obj: *mut ffi::PyObject) -> bool {
    // SAFETY: type identity checks and a slot read on a valid type; the
    // slots of the static types compared with are fixed.
    unsafe {
        let ty = ffi::Py_TYPE(obj);
        // Exact str, bytes, bytearray, int, float, complex and bool:
        // `unicode_repr`, `bytes_repr`, `bytearray_repr`, `long_to_decimal_string`,
        // `float_repr`, `complex_repr` and `bool_repr` only format the value's
        // own data (a subclass could override `__repr__`, so exact types only).
        ty == &raw mut ffi::PyUnicode_Type
            || ty == &raw mut ffi::PyBytes_Type
            || ty == &raw mut ffi::PyByteArray_Type
            || ty == &raw mut ffi::PyLong_Type
            || ty == &raw mut ffi::PyFloat_Type
            || ty == &raw mut ffi::PyComplex_Type
            || ty == &raw mut ffi::PyBool_Type
            // Python functions: `func_repr` formats the qualname (a str, its
            // setter checks) and the address. Needed on free-threaded builds,
            // where the fast path leaves functions to `repr()`.
            || ty == &raw mut ffi::PyFunction_Type
            // Built-in functions and methods (`meth_repr`: the C name, the
            // bound object's `tp_name` and address) and method descriptors
            // (`method_repr`: the descriptor's name and its type's `tp_name`).
            || ty == &raw mut ffi::PyCFunction_Type
            || ty == &raw mut ffi::PyCMethod_Type
            || ty == &raw mut ffi::PyMethodDescr_Type
            // Classes whose metaclass keeps `type.__repr__` (`type_repr`: the
            // `__module__` from the class dict and the qualname, as below; a
            // metaclass that defines `__repr__` gets another slot).
            || (ffi::PyType_Check(obj) != 0
                && slot_addr((*ty).tp_repr) == slot_addr(ffi::PyType_Type.tp_repr))
    }
}

/// A `tp_repr` slot as an address: both compared are C functions of
/// CPython's, set once, so equal addresses mean the same function.
fn slot_addr(f: Option<ffi::reprfunc>) -> usize {
    f.map_or(0, |f| f as usize)
}

/// Appends `object.__repr__(obj)`'s text to `out`. `Err` (the error set):
/// the module or qualname cannot be encoded to UTF-8, where `repr()`'s own
/// text would fail the same way.
///
/// # Safety
/// Attached; `obj` is valid; `keys` belong to this interpreter.
pub unsafe fn write(obj: *mut ffi::PyObject, keys: &Keys, out: &mut Vec<u8>) -> Result<(), ()> {
    // SAFETY: attached, `obj` valid (the caller's contract).
    unsafe {
        let ty = ffi::Py_TYPE(obj);
        let start = out.len();
        let res = if ffi::PyType_HasFeature(ty, ffi::Py_TPFLAGS_HEAPTYPE) == 0 {
            static_type(ty, out)
        } else {
            heap_type(ty, keys, out)
        };
        match res {
            Ok(()) => {
                let _ = write!(out, " object at {:#x}>", obj as usize);
                Ok(())
            }
            Err(()) => {
                out.truncate(start);
                Err(())
            }
        }
    }
}

/// Appends the name of the type `ty` as `object.__repr__` writes it
/// (`MOD.QUALNAME`, or `TP_NAME` for a static type or one whose module is
/// `builtins`), for the exception probes. `Err` (the error set) as `write`.
///
/// # Safety
/// Attached; `ty` is a valid type; `keys` belong to this interpreter.
pub unsafe fn type_name(
    ty: *mut ffi::PyTypeObject,
    keys: &Keys,
    out: &mut Vec<u8>,
) -> Result<(), ()> {
    // SAFETY: attached, `ty` valid (the caller's contract).
    unsafe {
        let start = out.len();
        let res = if ffi::PyType_HasFeature(ty, ffi::Py_TPFLAGS_HEAPTYPE) == 0 {
            static_type(ty, out)
        } else {
            heap_type(ty, keys, out)
        };
        match res {
            Ok(()) => {
                // Both write the text after a '<'.
                out.remove(start);
                Ok(())
            }
            Err(()) => {
                out.truncate(start);
                Err(())
            }
        }
    }
}

/// `<MOD.NAME` or `<TP_NAME` of a static type: MOD and NAME are `tp_name`
/// split at its last '.' and joined again by it, so either way `<TP_NAME`.
unsafe fn static_type(ty: *mut ffi::PyTypeObject, out: &mut Vec<u8>) -> Result<(), ()> {
    // SAFETY: a static type's `tp_name` is a NUL-terminated constant.
    let name = unsafe { CStr::from_ptr((*ty).tp_name) }.to_bytes();
    // `PyUnicode_FromString` of its last part fails on a name that is not UTF-8.
    if std::str::from_utf8(name).is_err() {
        // SAFETY: attached; sets the error that decoding it raises.
        unsafe { decode_error(name) };
        return Err(());
    }
    out.push(b'<');
    out.extend_from_slice(name);
    Ok(())
}

/// Raises the `UnicodeDecodeError` that decoding `bytes` as UTF-8 raises.
unsafe fn decode_error(bytes: &[u8]) {
    // SAFETY: attached; `bytes` is a valid buffer; the result (null, with
    // the error set) is not used.
    unsafe {
        let r = ffi::PyUnicode_DecodeUTF8(
            bytes.as_ptr().cast(),
            bytes.len() as ffi::Py_ssize_t,
            std::ptr::null(),
        );
        ffi::Py_XDECREF(r);
    }
}

/// The UTF-8 of a str (subclasses included), or `Err` with the error set.
unsafe fn utf8<'a>(s: *mut ffi::PyObject) -> Result<&'a [u8], ()> {
    // SAFETY: attached; `s` is a str that outlives the returned slice.
    unsafe {
        let mut len: ffi::Py_ssize_t = 0;
        let p = ffi::PyUnicode_AsUTF8AndSize(s, &mut len);
        if p.is_null() {
            return Err(());
        }
        Ok(std::slice::from_raw_parts(p.cast::<u8>(), len as usize))
    }
}

/// A heap type's `__module__`, a new reference, or null (no error set) when
/// it has none or it is not a str.
unsafe fn module(ty: *mut ffi::PyTypeObject, keys: &Keys) -> *mut ffi::PyObject {
    // SAFETY: attached. With the GIL nothing changes the dict while it is
    // read and the value found is held at once; `PyType_GetModuleName`
    // returns a new reference (free-threaded builds, 3.13 and later).
    unsafe {
        #[cfg(Py_GIL_DISABLED)]
        let m = {
            let _ = keys;
            ffi::PyType_GetModuleName(ty)
        };
        #[cfg(not(Py_GIL_DISABLED))]
        let m = {
            let dict = (*ty).tp_dict;
            let key = keys.module_key();
            if dict.is_null() || key.is_null() {
                return std::ptr::null_mut();
            }
            let m = ffi::PyDict_GetItemWithError(dict, key);
            ffi::Py_XINCREF(m);
            m
        };
        if m.is_null() {
            // As `object_repr`: a missing `__module__` (or a failed lookup)
            // is no module.
            ffi::PyErr_Clear();
            return m;
        }
        if ffi::PyUnicode_Check(m) == 0 {
            ffi::Py_DECREF(m);
            return std::ptr::null_mut();
        }
        m
    }
}

/// `<MOD.QUALNAME` or `<TP_NAME` of a heap type.
unsafe fn heap_type(ty: *mut ffi::PyTypeObject, keys: &Keys, out: &mut Vec<u8>) -> Result<(), ()> {
    // SAFETY: attached; every object read is held by a new reference while
    // its UTF-8 is copied, and released before returning.
    unsafe {
        let m = module(ty, keys);
        let q = ffi::PyType_GetQualName(ty);
        if q.is_null() {
            ffi::Py_XDECREF(m);
            return Err(());
        }
        let res = (|| {
            out.push(b'<');
            if !m.is_null() {
                let mb = utf8(m)?;
                if mb != b"builtins" {
                    out.extend_from_slice(mb);
                    out.push(b'.');
                    out.extend_from_slice(utf8(q)?);
                    return Ok(());
                }
            }
            tp_name(ty, out)
        })();
        ffi::Py_DECREF(q);
        ffi::Py_XDECREF(m);
        res
    }
}

/// A heap type's `tp_name` (see the header for free-threaded builds).
unsafe fn tp_name(ty: *mut ffi::PyTypeObject, out: &mut Vec<u8>) -> Result<(), ()> {
    // SAFETY: attached. With the GIL, `tp_name` (the UTF-8 of `__name__`,
    // or the spec's name) cannot be replaced while read; on free-threaded
    // builds it is read only from an immutable type, else `__name__` is
    // held by a new reference while copied.
    unsafe {
        #[cfg(Py_GIL_DISABLED)]
        if ffi::PyType_HasFeature(ty, ffi::Py_TPFLAGS_IMMUTABLETYPE) == 0 {
            let n = ffi::PyType_GetName(ty);
            if n.is_null() {
                return Err(());
            }
            let res = utf8(n).map(|b| out.extend_from_slice(b));
            ffi::Py_DECREF(n);
            return res;
        }
        let name = CStr::from_ptr((*ty).tp_name).to_bytes();
        if std::str::from_utf8(name).is_err() {
            decode_error(name);
            return Err(());
        }
        out.extend_from_slice(name);
        Ok(())
    }
}
