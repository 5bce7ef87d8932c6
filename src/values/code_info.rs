//! Function name, qualified name, file name and first line of a code object, as borrowed
//! NUL-terminated UTF-8 pointers for the probes, without allocating.
//!
//! CPython has no C accessor for `co_name`, `co_filename` or `co_firstlineno`
//! other than attribute lookup, which costs descriptor calls per event.
//! So the fields are read from the start of `PyCodeObject`, whose layout up to
//! `co_qualname` is the same in 3.12, 3.13, 3.14 and 3.15 (free-threaded or not: only
//! the object header differs, and `PyVarObject` follows the build). The layout
//! is checked against attribute lookup when the module is loaded; if it does
//! not match (an interpreter we do not know), every event takes the slow,
//! attribute-lookup path instead.

use std::ffi::{c_char, c_int, CStr};
use std::ptr;

use pyo3::ffi;

#[repr(C)]
struct CodeHead {
    ob_base: ffi::PyVarObject,
    co_consts: *mut ffi::PyObject,
    co_names: *mut ffi::PyObject,
    co_exceptiontable: *mut ffi::PyObject,
    co_flags: c_int,
    co_argcount: c_int,
    co_posonlyargcount: c_int,
    co_kwonlyargcount: c_int,
    co_stacksize: c_int,
    co_firstlineno: c_int,
    co_nlocalsplus: c_int,
    co_framesize: c_int,
    co_nlocals: c_int,
    co_ncellvars: c_int,
    co_nfreevars: c_int,
    co_version: u32,
    co_localsplusnames: *mut ffi::PyObject,
    co_localspluskinds: *mut ffi::PyObject,
    co_filename: *mut ffi::PyObject,
    co_name: *mut ffi::PyObject,
    co_qualname: *mut ffi::PyObject,
}

const UNKNOWN: &CStr = c"<unknown>";

/// What the probes say about a code object. The pointers borrow UTF-8 kept by
/// `str` objects that `holder` (or the code object itself) keeps alive.
pub struct CodeInfo {
    pub name: *const c_char,
    /// `co_qualname` (`Class.method`, `outer.<locals>.inner`).
    pub qualname: *const c_char,
    pub qualname_len: usize,
    pub file: *const c_char,
    pub file_len: usize,
    pub firstlineno: i32,
    /// Strong references taken by the slow path, released on drop.
    holder: [*mut ffi::PyObject; 3],
}

impl CodeInfo {
    /// The file name's UTF-8 bytes.
    pub fn file_bytes(&self) -> &[u8] {
        // SAFETY: `file` points to `file_len` bytes kept alive with `self`.
        unsafe { std::slice::from_raw_parts(self.file.cast::<u8>(), self.file_len) }
    }

    /// The qualified name's UTF-8 bytes.
    pub fn qualname_bytes(&self) -> &[u8] {
        // SAFETY: `qualname` points to `qualname_len` bytes kept alive with `self`.
        unsafe { std::slice::from_raw_parts(self.qualname.cast::<u8>(), self.qualname_len) }
    }
}

impl Drop for CodeInfo {
    fn drop(&mut self) {
        for obj in self.holder {
            // SAFETY: CodeInfo only lives inside a callback, while attached;
            // `holder` holds owned references or null.
            unsafe { ffi::Py_XDECREF(obj) };
        }
    }
}

/// Borrowed UTF-8 of a `str` and its length, or `<unknown>` (with the error
/// cleared) when it is not a str or cannot be encoded (lone surrogates).
///
/// # Safety
/// Attached to the interpreter; `s` is null or a valid object.
unsafe fn utf8(s: *mut ffi::PyObject) -> (*const c_char, usize) {
    let unknown = (UNKNOWN.as_ptr(), UNKNOWN.count_bytes());
    // SAFETY: the caller guarantees attachment and a valid or null `s`.
    unsafe {
        if s.is_null() || ffi::PyUnicode_Check(s) == 0 {
            return unknown;
        }
        let mut len: ffi::Py_ssize_t = 0;
        let p = ffi::PyUnicode_AsUTF8AndSize(s, &mut len);
        if p.is_null() {
            ffi::PyErr_Clear();
            return unknown;
        }
        (p, len as usize)
    }
}

/// True if `obj` is a code object.
///
/// # Safety
/// `obj` is a valid object.
#[inline(always)]
pub unsafe fn is_code(obj: *mut ffi::PyObject) -> bool {
    // SAFETY: reading the type of a valid object.
    unsafe { ffi::Py_TYPE(obj) == ptr::addr_of_mut!(ffi::PyCode_Type) }
}

/// Reads a code object's fields.
///
/// # Safety
/// Attached; `code` is a code object (see `is_code`); `layout_ok` comes from
/// `check_layout` in this process.
#[inline(always)]
pub unsafe fn read(code: *mut ffi::PyObject, layout_ok: bool) -> CodeInfo {
    // SAFETY: per the contract above. With a verified layout the fields are
    // immutable after creation and owned by `code`, which outlives the event.
    unsafe {
        if layout_ok {
            let head = code as *const CodeHead;
            let (file, file_len) = utf8((*head).co_filename);
            let (qualname, qualname_len) = utf8((*head).co_qualname);
            return CodeInfo {
                name: utf8((*head).co_name).0,
                qualname,
                qualname_len,
                file,
                file_len,
                firstlineno: (*head).co_firstlineno,
                holder: [ptr::null_mut(); 3],
            };
        }
        read_slow(code)
    }
}

unsafe fn getattr(obj: *mut ffi::PyObject, name: &CStr) -> *mut ffi::PyObject {
    // SAFETY: attached; `obj` is valid; a failed lookup is cleared.
    unsafe {
        let v = ffi::PyObject_GetAttrString(obj, name.as_ptr());
        if v.is_null() {
            ffi::PyErr_Clear();
        }
        v
    }
}

unsafe fn read_slow(code: *mut ffi::PyObject) -> CodeInfo {
    // SAFETY: attached; `code` is valid. The strings are kept alive by `holder`.
    unsafe {
        let name = getattr(code, c"co_name");
        let qualname = getattr(code, c"co_qualname");
        let file = getattr(code, c"co_filename");
        let line = getattr(code, c"co_firstlineno");
        let mut firstlineno = 0;
        if !line.is_null() {
            firstlineno = ffi::PyLong_AsLong(line) as i32;
            if firstlineno == -1 && !ffi::PyErr_Occurred().is_null() {
                ffi::PyErr_Clear();
                firstlineno = 0;
            }
            ffi::Py_DECREF(line);
        }
        let (file_ptr, file_len) = utf8(file);
        let (qualname_ptr, qualname_len) = utf8(qualname);
        CodeInfo {
            name: utf8(name).0,
            qualname: qualname_ptr,
            qualname_len,
            file: file_ptr,
            file_len,
            firstlineno,
            holder: [name, file, qualname],
        }
    }
}

/// Checks that `CodeHead` matches this interpreter's code objects, by
/// comparing it with attribute lookup on two compiled code objects.
///
/// # Safety
/// Attached to the interpreter.
pub unsafe fn check_layout() -> bool {
    // SAFETY: attached; every object is checked for null before use and
    // released after.
    unsafe {
        let src = c"\n\n\ndef _pyusdt_layout_check():\n    pass\n";
        let module = ffi::Py_CompileString(
            src.as_ptr(),
            c"<pyusdt layout check>".as_ptr(),
            ffi::Py_file_input,
        );
        if module.is_null() {
            ffi::PyErr_Clear();
            return false;
        }
        let mut ok = matches_attrs(module, 1);
        let consts = getattr(module, c"co_consts");
        if !consts.is_null() {
            let mut found = false;
            if ffi::PyTuple_Check(consts) != 0 {
                for i in 0..ffi::PyTuple_Size(consts) {
                    let c = ffi::PyTuple_GetItem(consts, i);
                    if !c.is_null() && is_code(c) {
                        found = true;
                        ok &= matches_attrs(c, 4);
                    }
                }
            }
            ok &= found;
            ffi::Py_DECREF(consts);
        } else {
            ok = false;
        }
        ffi::Py_DECREF(module);
        ok
    }
}

unsafe fn matches_attrs(code: *mut ffi::PyObject, line: i32) -> bool {
    // SAFETY: attached; `code` is a valid code object; the layout read is
    // only trusted once every field agrees with attribute lookup.
    unsafe {
        if !is_code(code) {
            return false;
        }
        let head = code as *const CodeHead;
        let slow = read_slow(code);
        let same = slow.holder[0] == (*head).co_name
            && slow.holder[1] == (*head).co_filename
            && slow.holder[2] == (*head).co_qualname
            && slow.firstlineno == line
            && (*head).co_firstlineno == line;
        drop(slow);
        same
    }
}
