//! The `pyusdt.libpyusdt` module object: its definition for multi-phase
//! init (one copy per interpreter, per-interpreter GIL supported, no GIL
//! needed), exec/traverse/clear/free, and the functions it exposes.

use std::ffi::{c_int, c_void, CStr};
use std::ptr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use pyo3::ffi;

use crate::callbacks;
use crate::code_info;
use crate::config;
use crate::fast_repr::Keys;
use crate::fork_sites;
use crate::monitoring;
use crate::probes::{self, Probe};
use crate::repr::PerThread;
use crate::state::{self, State, NO_TOOL};
use crate::watcher::{self, Entry};

const VERSION: &CStr = c"0.2.0";

type Slot = *mut State;

macro_rules! method {
    ($name:expr, $meth:expr, $flags:expr, $doc:expr) => {
        ffi::PyMethodDef {
            ml_name: $name.as_ptr(),
            ml_meth: $meth,
            ml_flags: $flags,
            ml_doc: $doc.as_ptr(),
        }
    };
}

static mut METHODS: [ffi::PyMethodDef; 3] = [
    method!(
        c"status",
        ffi::PyMethodDefPointer { PyCFunction: status },
        ffi::METH_NOARGS,
        c"status() -> dict\n--\n\nTool id, poll interval, attached probes and enabled events of this interpreter."
    ),
    method!(
        c"attached_probes",
        ffi::PyMethodDefPointer { PyCFunction: attached_probes },
        ffi::METH_NOARGS,
        c"attached_probes() -> list[str]\n--\n\nProbes a tracer has attached right now."
    ),
    ffi::PyMethodDef::zeroed(),
];

/// Functions that are not module attributes: the monitoring callbacks and
/// the atexit / fork hooks, bound to the module object.
static mut CALLBACK_DEFS: [ffi::PyMethodDef; 6] = {
    const fn cb(name: &'static CStr, f: ffi::PyCFunctionFast) -> ffi::PyMethodDef {
        ffi::PyMethodDef {
            ml_name: name.as_ptr(),
            ml_meth: ffi::PyMethodDefPointer { PyCFunctionFast: f },
            ml_flags: ffi::METH_FASTCALL,
            ml_doc: ptr::null(),
        }
    }
    let f = callbacks::FUNCTIONS;
    [
        cb(c"pyusdt_PY_START", f[0]),
        cb(c"pyusdt_PY_RESUME", f[1]),
        cb(c"pyusdt_PY_RETURN", f[2]),
        cb(c"pyusdt_PY_YIELD", f[3]),
        cb(c"pyusdt_CALL", f[4]),
        cb(c"pyusdt_LINE", f[5]),
    ]
};

static mut HOOK_DEFS: [ffi::PyMethodDef; 4] = {
    const fn hook(name: &'static CStr, f: ffi::PyCFunction) -> ffi::PyMethodDef {
        ffi::PyMethodDef {
            ml_name: name.as_ptr(),
            ml_meth: ffi::PyMethodDefPointer { PyCFunction: f },
            ml_flags: ffi::METH_NOARGS,
            ml_doc: ptr::null(),
        }
    }
    [
        hook(c"_pyusdt_atexit", atexit_hook),
        hook(c"_pyusdt_before_fork", before_fork),
        hook(c"_pyusdt_after_fork_parent", after_fork_parent),
        hook(c"_pyusdt_after_fork_child", after_fork_child),
    ]
};

static mut SLOTS: [ffi::PyModuleDef_Slot; 4] = [
    ffi::PyModuleDef_Slot {
        slot: ffi::Py_mod_exec,
        value: exec as *mut c_void,
    },
    ffi::PyModuleDef_Slot {
        slot: ffi::Py_mod_multiple_interpreters,
        value: ffi::Py_MOD_PER_INTERPRETER_GIL_SUPPORTED,
    },
    #[cfg(Py_3_13)]
    ffi::PyModuleDef_Slot {
        slot: ffi::Py_mod_gil,
        value: ffi::Py_MOD_GIL_NOT_USED,
    },
    #[cfg(not(Py_3_13))]
    ffi::PyModuleDef_Slot {
        slot: 0,
        value: ptr::null_mut(),
    },
    ffi::PyModuleDef_Slot {
        slot: 0,
        value: ptr::null_mut(),
    },
];

pub static mut MODULE_DEF: ffi::PyModuleDef = ffi::PyModuleDef {
    m_base: ffi::PyModuleDef_HEAD_INIT,
    m_name: c"pyusdt.libpyusdt".as_ptr(),
    m_doc: c"USDT probes for sys.monitoring events (provider `pyusdt`).".as_ptr(),
    m_size: std::mem::size_of::<Slot>() as ffi::Py_ssize_t,
    m_methods: ptr::addr_of_mut!(METHODS) as *mut ffi::PyMethodDef,
    m_slots: ptr::addr_of_mut!(SLOTS) as *mut ffi::PyModuleDef_Slot,
    m_traverse: Some(traverse),
    m_clear: Some(clear),
    m_free: Some(free),
};

/// Owned references from a fallible ffi call; `Err` leaves the error set.
fn check(p: *mut ffi::PyObject) -> Result<*mut ffi::PyObject, ()> {
    if p.is_null() {
        Err(())
    } else {
        Ok(p)
    }
}

/// `atexit.register(f)` in the current interpreter; 0 on success.
///
/// # Safety
/// Attached; `f` is a valid callable.
pub unsafe fn atexit_register(f: *mut ffi::PyObject) -> c_int {
    // SAFETY: attached; every result is checked and released.
    unsafe {
        let Ok(atexit) = check(ffi::PyImport_ImportModule(c"atexit".as_ptr())) else {
            return -1;
        };
        let r = ffi::PyObject_CallMethod(atexit, c"register".as_ptr(), c"O".as_ptr(), f);
        ffi::Py_DECREF(atexit);
        if r.is_null() {
            return -1;
        }
        ffi::Py_DECREF(r);
        0
    }
}

unsafe fn bound(
    def: *mut ffi::PyMethodDef,
    module: *mut ffi::PyObject,
) -> Result<*mut ffi::PyObject, ()> {
    // SAFETY: attached; `def` points into a static table.
    unsafe { check(ffi::PyCFunction_NewEx(def, module, ptr::null_mut())) }
}

unsafe fn hook_def(i: usize) -> *mut ffi::PyMethodDef {
    // SAFETY: address of an element of a static table, no reference taken.
    unsafe { (ptr::addr_of_mut!(HOOK_DEFS) as *mut ffi::PyMethodDef).add(i) }
}

fn is_3130() -> bool {
    // SAFETY: Py_GetVersion returns a static NUL-terminated string.
    let v = unsafe { CStr::from_ptr(ffi::Py_GetVersion()) }.to_bytes();
    v.starts_with(b"3.13.0") && !v.get(6).is_some_and(|c| c.is_ascii_digit())
}

unsafe extern "C" fn exec(module: *mut ffi::PyObject) -> c_int {
    // SAFETY: CPython runs exec attached, with our module object.
    match unsafe { exec_inner(module) } {
        Ok(()) => 0,
        Err(()) => -1,
    }
}

unsafe fn exec_inner(module: *mut ffi::PyObject) -> Result<(), ()> {
    // SAFETY: attached (module exec). Every object created here is owned by
    // the state (released in `free`) or released before returning.
    unsafe {
        let cfg = config::get();
        let interp = ffi::PyInterpreterState_Get();
        let interp_id = ffi::PyInterpreterState_GetID(interp);
        if is_3130() {
            watcher::NO_SUBINTERP_ENTRY.store(true, Ordering::Relaxed);
        }

        let monitoring = ffi::PySys_GetObject(c"monitoring".as_ptr());
        if monitoring.is_null() {
            ffi::PyErr_SetString(
                ffi::PyExc_ImportError,
                c"pyusdt needs sys.monitoring (Python 3.12+)".as_ptr(),
            );
            return Err(());
        }
        ffi::Py_INCREF(monitoring);
        let mut st = Box::new(State {
            interp_id,
            layout_ok: code_info::check_layout(),
            monitoring,
            disable: ptr::null_mut(),
            own_prefix: own_prefix(module),
            callbacks: [ptr::null_mut(); 6],
            event_bits: [0; 6],
            tool_id: NO_TOOL.into(),
            enabled: 0.into(),
            told_no_tool: false.into(),
            scratch: PerThread::new(),
            keys: Keys::empty(),
            entry: None,
        });
        // From here on `st` owns its objects; storing it in the module slot
        // first lets `free` release them if a later step fails.
        let slot = ffi::PyModule_GetState(module) as *mut Slot;
        let st_ptr: *mut State = &mut *st;
        *slot = Box::into_raw(st);
        let st = &mut *st_ptr;

        st.disable = check(ffi::PyObject_GetAttrString(monitoring, c"DISABLE".as_ptr()))?;
        st.keys.init()?;
        let events = check(ffi::PyObject_GetAttrString(monitoring, c"events".as_ptr()))?;
        for p in Probe::ALL {
            let name = std::ffi::CString::new(p.name()).expect("probe names have no NUL");
            let v = ffi::PyObject_GetAttrString(events, name.as_ptr());
            if v.is_null() {
                ffi::Py_DECREF(events);
                return Err(());
            }
            st.event_bits[p as usize] = ffi::PyLong_AsLongLong(v);
            ffi::Py_DECREF(v);
        }
        ffi::Py_DECREF(events);
        if !ffi::PyErr_Occurred().is_null() {
            return Err(());
        }
        for (i, cb) in st.callbacks.iter_mut().enumerate() {
            *cb = bound(
                (ptr::addr_of_mut!(CALLBACK_DEFS) as *mut ffi::PyMethodDef).add(i),
                module,
            )?;
        }
        if ffi::PyModule_AddStringConstant(module, c"__version__".as_ptr(), VERSION.as_ptr()) < 0 {
            return Err(());
        }
        let repr_max = ffi::PyLong_FromSize_t(config::get().repr_max);
        if ffi::PyModule_AddObject(module, c"REPR_MAX".as_ptr(), repr_max) < 0 {
            ffi::Py_XDECREF(repr_max);
            return Err(());
        }

        // atexit first: a registered interpreter must always unregister.
        let hook = bound(hook_def(0), module)?;
        let r = atexit_register(hook);
        ffi::Py_DECREF(hook);
        if r < 0 {
            return Err(());
        }

        let entry = Arc::new(Entry::new(interp, interp_id, st_ptr));
        if watcher::is_registered(interp_id) {
            config::log(|| {
                format!("module loaded again in interpreter {interp_id}: this copy stays passive")
            });
            return Ok(());
        }
        fork_sites::install();
        if entry.is_main {
            register_fork_hooks(module)?;
        }
        st.entry = Some(entry.clone());
        watcher::register(entry);
        config::log(|| {
            format!(
                "ready (interpreter {interp_id}, poll {} ms{})",
                cfg.check_msec,
                if st.layout_ok {
                    ""
                } else {
                    ", slow code-object path"
                }
            )
        });
        Ok(())
    }
}

/// The directory of this extension's file, with a trailing '/' (empty if
/// unknown): the pyusdt package, whose own code is not traced.
unsafe fn own_prefix(module: *mut ffi::PyObject) -> Vec<u8> {
    // SAFETY: attached; the filename object is checked and released.
    unsafe {
        let f = ffi::PyModule_GetFilenameObject(module);
        if f.is_null() {
            ffi::PyErr_Clear();
            return Vec::new();
        }
        let mut len: ffi::Py_ssize_t = 0;
        let p = ffi::PyUnicode_AsUTF8AndSize(f, &mut len);
        let mut out = Vec::new();
        if p.is_null() {
            ffi::PyErr_Clear();
        } else {
            let bytes = std::slice::from_raw_parts(p.cast::<u8>(), len as usize);
            if let Some(i) = bytes.iter().rposition(|&b| b == b'/') {
                out.extend_from_slice(&bytes[..=i]);
            }
        }
        ffi::Py_DECREF(f);
        out
    }
}

unsafe fn register_fork_hooks(module: *mut ffi::PyObject) -> Result<(), ()> {
    // SAFETY: attached; objects are checked and released.
    unsafe {
        let os = check(ffi::PyImport_ImportModule(c"os".as_ptr()))?;
        let reg = ffi::PyObject_GetAttrString(os, c"register_at_fork".as_ptr());
        ffi::Py_DECREF(os);
        let reg = check(reg)?;
        let kwargs = ffi::PyDict_New();
        let mut ok = !kwargs.is_null();
        for (i, key) in [c"before", c"after_in_parent", c"after_in_child"]
            .iter()
            .enumerate()
        {
            if !ok {
                break;
            }
            match bound(hook_def(i + 1), module) {
                Ok(f) => {
                    ok = ffi::PyDict_SetItemString(kwargs, key.as_ptr(), f) == 0;
                    ffi::Py_DECREF(f);
                }
                Err(()) => ok = false,
            }
        }
        if ok {
            let args = ffi::PyTuple_New(0);
            let r = ffi::PyObject_Call(reg, args, kwargs);
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

unsafe extern "C" fn atexit_hook(
    module: *mut ffi::PyObject,
    _: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: called by atexit, attached to the module's interpreter.
    unsafe {
        if let Some(st) = state::of(module) {
            if let Some(entry) = &st.entry {
                let is_main = entry.is_main;
                watcher::detached(|| watcher::unregister(entry));
                if is_main {
                    watcher::shutdown();
                }
            }
            // Nobody else toggles this interpreter now: release the tool id.
            monitoring::apply(st, 0);
        }
        ffi::Py_NewRef(ffi::Py_None())
    }
}

unsafe extern "C" fn before_fork(
    _: *mut ffi::PyObject,
    _: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: called by os.fork in the main interpreter, attached.
    unsafe {
        watcher::before_fork();
        ffi::Py_NewRef(ffi::Py_None())
    }
}

unsafe extern "C" fn after_fork_parent(
    _: *mut ffi::PyObject,
    _: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    watcher::after_fork_parent();
    // SAFETY: attached.
    unsafe { ffi::Py_NewRef(ffi::Py_None()) }
}

unsafe extern "C" fn after_fork_child(
    _: *mut ffi::PyObject,
    _: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    watcher::after_fork_child();
    // SAFETY: attached.
    unsafe { ffi::Py_NewRef(ffi::Py_None()) }
}

unsafe fn list_of(names: &[&str]) -> *mut ffi::PyObject {
    // SAFETY: attached; the list is filled with new strings (PyList_SetItem steals).
    unsafe {
        let list = ffi::PyList_New(names.len() as ffi::Py_ssize_t);
        if list.is_null() {
            return list;
        }
        for (i, n) in names.iter().enumerate() {
            let s = ffi::PyUnicode_FromStringAndSize(n.as_ptr().cast(), n.len() as ffi::Py_ssize_t);
            if s.is_null() {
                ffi::Py_DECREF(list);
                return ptr::null_mut();
            }
            ffi::PyList_SetItem(list, i as ffi::Py_ssize_t, s);
        }
        list
    }
}

unsafe extern "C" fn attached_probes(
    _: *mut ffi::PyObject,
    _: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: a module function, called attached.
    unsafe { list_of(&probes::names(probes::attached_mask())) }
}

unsafe extern "C" fn status(
    module: *mut ffi::PyObject,
    _: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: a module function, called attached; items are checked.
    unsafe {
        let Some(st) = state::of(module) else {
            ffi::PyErr_SetString(
                ffi::PyExc_RuntimeError,
                c"pyusdt module not initialised".as_ptr(),
            );
            return ptr::null_mut();
        };
        let d = ffi::PyDict_New();
        if d.is_null() {
            return d;
        }
        let tool = match st.tool() {
            Some(t) => ffi::PyLong_FromLong(t as _),
            None => ffi::Py_NewRef(ffi::Py_None()),
        };
        let items: [(&CStr, *mut ffi::PyObject); 6] = [
            (c"tool_id", tool),
            (
                c"poll_msec",
                ffi::PyLong_FromUnsignedLongLong(config::get().check_msec),
            ),
            (
                c"attached",
                list_of(&probes::names(probes::attached_mask())),
            ),
            (
                c"enabled",
                list_of(&probes::names(st.enabled.load(Ordering::Acquire))),
            ),
            (c"interpreter_id", ffi::PyLong_FromLongLong(st.interp_id)),
            (c"repr_max", ffi::PyLong_FromSize_t(config::get().repr_max)),
        ];
        let mut ok = true;
        for (k, v) in items {
            if v.is_null() || ffi::PyDict_SetItemString(d, k.as_ptr(), v) < 0 {
                ok = false;
            }
            ffi::Py_XDECREF(v);
        }
        if !ok {
            ffi::Py_DECREF(d);
            return ptr::null_mut();
        }
        d
    }
}

unsafe extern "C" fn traverse(
    module: *mut ffi::PyObject,
    visit: ffi::visitproc,
    arg: *mut c_void,
) -> c_int {
    // SAFETY: called by the GC with our module; only non-null objects are visited.
    unsafe {
        let slot = ffi::PyModule_GetState(module) as *mut Slot;
        if slot.is_null() || (*slot).is_null() {
            return 0;
        }
        let st = &**slot;
        for &obj in st.callbacks.iter().chain([st.monitoring].iter()) {
            if !obj.is_null() {
                let r = visit(obj, arg);
                if r != 0 {
                    return r;
                }
            }
        }
        0
    }
}

unsafe extern "C" fn clear(module: *mut ffi::PyObject) -> c_int {
    // SAFETY: called attached with our module; pointers are nulled before release.
    unsafe {
        let slot = ffi::PyModule_GetState(module) as *mut Slot;
        if slot.is_null() || (*slot).is_null() {
            return 0;
        }
        // Toggling needs these objects; only clear once nobody can toggle.
        let st = &mut **slot;
        if st.entry.is_some() && st.enabled.load(Ordering::Acquire) != 0 {
            return 0;
        }
        for cb in st.callbacks.iter_mut() {
            let obj = std::mem::replace(cb, ptr::null_mut());
            ffi::Py_XDECREF(obj);
        }
        0
    }
}

unsafe extern "C" fn free(module: *mut c_void) {
    // SAFETY: called by CPython when our module object is deallocated, attached.
    unsafe {
        let module = module as *mut ffi::PyObject;
        let slot = ffi::PyModule_GetState(module) as *mut Slot;
        if slot.is_null() || (*slot).is_null() {
            return;
        }
        let st_ptr = std::mem::replace(&mut *slot, ptr::null_mut());
        if let Some(entry) = &(*st_ptr).entry {
            // atexit normally unregistered us already; if a toggle is still
            // in flight the state must outlive it: leak it rather than free.
            if !watcher::abandon(entry) {
                return;
            }
        }
        let mut st = Box::from_raw(st_ptr);
        for &obj in st.callbacks.iter() {
            ffi::Py_XDECREF(obj);
        }
        ffi::Py_XDECREF(st.monitoring);
        ffi::Py_XDECREF(st.disable);
        st.keys.release();
        drop(st);
    }
}
