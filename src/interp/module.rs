//! The `pyusdt.libpyusdt` module object: its definition for multi-phase
//! init (one copy per interpreter, per-interpreter GIL supported, no GIL
//! needed), exec/traverse/clear/free, and the functions it exposes.

use std::ffi::{c_int, c_void, CStr};
use std::ptr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use pyo3::ffi;

use super::callbacks;
use super::hooks;
use super::state::{self, State};
use super::target::Target;
use crate::config;
use crate::sites::{self, Probe};
use crate::values::code_info;
use crate::watcher::WATCHER;

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
static mut CALLBACK_DEFS: [ffi::PyMethodDef; Probe::COUNT] = {
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
        cb(c"pyusdt_PY_UNWIND", f[6]),
        cb(c"pyusdt_PY_THROW", f[7]),
        cb(c"pyusdt_RAISE", f[8]),
        cb(c"pyusdt_RERAISE", f[9]),
        cb(c"pyusdt_EXCEPTION_HANDLED", f[10]),
        cb(c"pyusdt_C_RETURN", f[11]),
        cb(c"pyusdt_C_RAISE", f[12]),
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

unsafe fn bound(
    def: *mut ffi::PyMethodDef,
    module: *mut ffi::PyObject,
) -> Result<*mut ffi::PyObject, ()> {
    // SAFETY: attached; `def` points into a static table.
    unsafe { check(ffi::PyCFunction_NewEx(def, module, ptr::null_mut())) }
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

/// Fills a new, unpublished state: the monitoring handles, event bits and
/// callbacks. `Err` leaves the Python error set.
unsafe fn fill(st: &mut State, module: *mut ffi::PyObject) -> Result<(), ()> {
    // SAFETY: attached (module exec); the state is not shared yet. Every
    // object made here is owned by the state or released before returning.
    unsafe {
        st.disable = check(ffi::PyObject_GetAttrString(
            st.monitoring,
            c"DISABLE".as_ptr(),
        ))?;
        st.keys.init()?;
        st.own_prefix = own_prefix(module);
        st.filter_index = super::filter::request_index(config::get().filter.as_ref());
        let events = check(ffi::PyObject_GetAttrString(
            st.monitoring,
            c"events".as_ptr(),
        ))?;
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
        for (i, cb) in st.callbacks.iter().enumerate() {
            let f = bound(
                (ptr::addr_of_mut!(CALLBACK_DEFS) as *mut ffi::PyMethodDef).add(i),
                module,
            )?;
            cb.store(f, Ordering::Release);
        }
        Ok(())
    }
}

unsafe fn exec_inner(module: *mut ffi::PyObject) -> Result<(), ()> {
    // SAFETY: attached (module exec). The state is built and filled while
    // this function owns it alone, then published in the module slot; from
    // then on it is only shared (`&State`), also with the watcher.
    unsafe {
        let cfg = config::get();
        let interp = ffi::PyInterpreterState_Get();
        let interp_id = ffi::PyInterpreterState_GetID(interp);

        let monitoring = ffi::PySys_GetObject(c"monitoring".as_ptr());
        if monitoring.is_null() {
            ffi::PyErr_SetString(
                ffi::PyExc_ImportError,
                c"pyusdt needs sys.monitoring (Python 3.12+)".as_ptr(),
            );
            return Err(());
        }
        let mut st = Box::new(State::new(
            interp_id,
            code_info::check_layout(),
            ffi::Py_NewRef(monitoring),
        ));
        if fill(&mut st, module).is_err() {
            st.release();
            return Err(());
        }
        let st_ptr: *const State = Box::into_raw(st);
        *(ffi::PyModule_GetState(module) as *mut Slot) = st_ptr.cast_mut();
        let st: &State = &*st_ptr;

        if ffi::PyModule_AddStringConstant(module, c"__version__".as_ptr(), VERSION.as_ptr()) < 0 {
            return Err(());
        }
        let repr_max = ffi::PyLong_FromSize_t(cfg.repr_max);
        if ffi::PyModule_AddObject(module, c"REPR_MAX".as_ptr(), repr_max) < 0 {
            ffi::Py_XDECREF(repr_max);
            return Err(());
        }

        // atexit first: a registered interpreter must always unregister.
        hooks::register_atexit(module)?;

        if WATCHER.is_registered(interp_id) {
            config::log(|| {
                format!("module loaded again in interpreter {interp_id}: this copy stays passive")
            });
            return Ok(());
        }
        sites::fork_repair::install();
        crate::watcher::install_fork_handlers();
        let target = Target::new(interp, interp_id, st_ptr, is_3130());
        if target_is_main(interp) {
            hooks::register_fork_hooks()?;
        } else {
            hooks::queue_main_hooks();
        }
        let _ = st.registration.set(WATCHER.register(Arc::new(target)));
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

fn target_is_main(interp: *mut ffi::PyInterpreterState) -> bool {
    // SAFETY: reading the main interpreter pointer has no preconditions
    // beyond an initialised runtime.
    unsafe { ffi::PyInterpreterState_Main() == interp }
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
    unsafe { list_of(&sites::names(sites::attached_mask())) }
}

unsafe extern "C" fn status(
    module: *mut ffi::PyObject,
    _: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: a module function, called attached.
    let d = unsafe { state::with(module, |st| status_dict(st)) };
    d.unwrap_or_else(|| {
        // SAFETY: attached; sets an exception for the NULL return.
        unsafe {
            ffi::PyErr_SetString(
                ffi::PyExc_RuntimeError,
                c"pyusdt module not initialised".as_ptr(),
            )
        };
        ptr::null_mut()
    })
}

unsafe fn status_dict(st: &State) -> *mut ffi::PyObject {
    // SAFETY: attached (a module function); items are checked.
    unsafe {
        let d = ffi::PyDict_New();
        if d.is_null() {
            return d;
        }
        let tool = match st.tool() {
            Some(t) => ffi::PyLong_FromLong(t as _),
            None => ffi::Py_NewRef(ffi::Py_None()),
        };
        let items: [(&CStr, *mut ffi::PyObject); 10] = [
            (c"tool_id", tool),
            (
                c"poll_msec",
                ffi::PyLong_FromUnsignedLongLong(config::get().check_msec),
            ),
            (c"attached", list_of(&sites::names(sites::attached_mask()))),
            (c"patched", list_of(&sites::names(sites::patched_mask()))),
            (c"listening", list_of(&sites::names(WATCHER.listening()))),
            (
                c"trust_semaphores",
                ffi::PyBool_FromLong(config::get().trust_semaphores as _),
            ),
            (
                c"enabled",
                list_of(&sites::names(st.enabled.load(Ordering::Acquire))),
            ),
            (c"interpreter_id", ffi::PyLong_FromLongLong(st.interp_id)),
            (c"repr_max", ffi::PyLong_FromSize_t(config::get().repr_max)),
            (
                c"repr",
                ffi::PyUnicode_FromString(match config::get().repr_mode {
                    config::ReprMode::Safe => c"safe".as_ptr(),
                    config::ReprMode::Full => c"full".as_ptr(),
                }),
            ),
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
    // SAFETY: called by the GC with our module, attached; only non-null
    // objects are visited.
    let r = unsafe {
        state::with(module, |st| {
            let objs = st.callbacks.iter().map(|c| c.load(Ordering::Acquire));
            for obj in objs.chain([st.monitoring]) {
                if !obj.is_null() {
                    let r = visit(obj, arg);
                    if r != 0 {
                        return r;
                    }
                }
            }
            0
        })
    };
    r.unwrap_or(0)
}

unsafe extern "C" fn clear(module: *mut ffi::PyObject) -> c_int {
    // SAFETY: called by the GC with our module, attached. The callbacks are
    // swapped out before release, and only once the watcher can no longer
    // toggle this interpreter (it needs them).
    unsafe {
        state::with(module, |st| {
            if st.registration.get().is_some() && WATCHER.is_registered(st.interp_id) {
                return;
            }
            for cb in &st.callbacks {
                ffi::Py_XDECREF(cb.swap(ptr::null_mut(), Ordering::AcqRel));
            }
        });
    }
    0
}

unsafe extern "C" fn free(module: *mut c_void) {
    // SAFETY: called by CPython when our module object is deallocated,
    // attached. The state is taken out of the slot first, so nothing can
    // reach it through the module any more.
    unsafe {
        let module = module as *mut ffi::PyObject;
        let slot = ffi::PyModule_GetState(module) as *mut Slot;
        if slot.is_null() || (*slot).is_null() {
            return;
        }
        let st_ptr = std::mem::replace(&mut *slot, ptr::null_mut());
        if let Some(reg) = (*st_ptr).registration.get() {
            // atexit normally unregistered us already; if a toggle is still
            // in flight the state must outlive it: leak it rather than free.
            if !reg.abandon() {
                return;
            }
        }
        Box::from_raw(st_ptr).release();
    }
}
