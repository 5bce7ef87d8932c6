//! Turning `sys.monitoring` on and off in the current interpreter: claim a
//! free tool id, register the callbacks of the attached probes, enable just
//! their events; on detach disable, unregister and free the id again, so no
//! id is held while nobody traces (cProfile, coverage and debuggers need them).
//!
//! C_RETURN and C_RAISE cannot be enabled themselves (`set_events` refuses
//! them): CPython delivers them at the calls where CALL is monitored. So
//! while either probe is attached, CALL's event is enabled and its callback
//! registered too (it fires the CALL probe only if that is attached).

use std::ffi::CStr;
use std::sync::atomic::Ordering;

use pyo3::ffi;

use super::state::{State, NO_TOOL};
use crate::config;
use crate::sites::{self, Probe};

/// Tool ids in the order we try them: first those no standard tool uses
/// (3, 4), then OPTIMIZER_ID (5), which CPython does not use yet. The
/// debugger, coverage and profiler ids (0, 1, 2) are never taken.
const TOOL_PREFERENCE: [i32; 3] = [3, 4, 5];
const TOOL_NAME: &CStr = c"pyusdt";

/// An owned reference, released on drop (attached).
struct Owned(*mut ffi::PyObject);

impl Drop for Owned {
    fn drop(&mut self) {
        // SAFETY: owned reference or null; dropped while attached.
        unsafe { ffi::Py_XDECREF(self.0) };
    }
}

/// `monitoring.<name>(*args)`, returning the result or `Err` with the
/// Python error left set.
unsafe fn call(
    monitoring: *mut ffi::PyObject,
    name: &CStr,
    args: &[*mut ffi::PyObject],
) -> Result<Owned, ()> {
    // SAFETY: attached; `monitoring` and `args` are valid objects.
    unsafe {
        let f = Owned(ffi::PyObject_GetAttrString(monitoring, name.as_ptr()));
        if f.0.is_null() {
            return Err(());
        }
        let r = ffi::PyObject_Vectorcall(f.0, args.as_ptr(), args.len(), std::ptr::null_mut());
        if r.is_null() {
            Err(())
        } else {
            Ok(Owned(r))
        }
    }
}

unsafe fn long(v: i64) -> Owned {
    // SAFETY: attached.
    Owned(unsafe { ffi::PyLong_FromLongLong(v) })
}

/// Logs and clears the pending Python error.
unsafe fn report(what: &str, interp_id: i64) {
    // SAFETY: attached (the caller's contract).
    let text = unsafe { exception_text() };
    config::log(|| format!("{what} failed in interpreter {interp_id}: {text}"));
}

/// The pending exception's text ("?" if none), cleared.
///
/// # Safety
/// Attached.
pub(super) unsafe fn exception_text() -> String {
    // SAFETY: attached; the exception and its str are released.
    unsafe {
        let exc = ffi::PyErr_GetRaisedException();
        let mut text = String::from("?");
        if !exc.is_null() {
            let s = ffi::PyObject_Str(exc);
            if !s.is_null() {
                let p = ffi::PyUnicode_AsUTF8AndSize(s, std::ptr::null_mut());
                if !p.is_null() {
                    text = CStr::from_ptr(p).to_string_lossy().into_owned();
                }
                ffi::Py_DECREF(s);
            }
            ffi::Py_DECREF(exc);
        }
        ffi::PyErr_Clear();
        text
    }
}

/// Claims the first free tool id; `None` if all are taken.
unsafe fn claim_tool(st: &State) -> Option<i32> {
    // SAFETY: attached; objects are checked for null.
    unsafe {
        for id in TOOL_PREFERENCE {
            let idobj = long(id as i64);
            let Ok(holder) = call(st.monitoring, c"get_tool", &[idobj.0]) else {
                ffi::PyErr_Clear();
                continue;
            };
            if holder.0 != ffi::Py_None() {
                continue;
            }
            let name = Owned(ffi::PyUnicode_FromString(TOOL_NAME.as_ptr()));
            if call(st.monitoring, c"use_tool_id", &[idobj.0, name.0]).is_ok() {
                return Some(id);
            }
            ffi::PyErr_Clear();
        }
        None
    }
}

/// Makes the enabled events of this interpreter match `mask` as far as
/// CPython lets it (an audit hook may deny a call) and returns the mask
/// enabled now; `enabled` always says what is really enabled.
///
/// # Safety
/// Attached to `st`'s interpreter, and the caller is the only party toggling
/// it (the watcher while registered, `atexit` after).
pub unsafe fn apply(st: &State, mask: u32) -> u32 {
    let current = st.enabled.load(Ordering::Acquire);
    if current == mask {
        return current;
    }
    // SAFETY: attached (the caller's contract).
    unsafe {
        // Keep a pending exception of the interrupted thread out of our calls.
        let saved = ffi::PyErr_GetRaisedException();
        let got = apply_inner(st, current, mask);
        ffi::PyErr_SetRaisedException(saved);
        got
    }
}

/// The probes whose callbacks must be registered for the probes of `mask`:
/// C_RETURN and C_RAISE need CALL's.
fn with_implied(mask: u32) -> u32 {
    let needs_call = Probe::ALL
        .iter()
        .any(|p| p.needs_call() && mask & p.bit() != 0);
    if needs_call {
        mask | Probe::Call.bit()
    } else {
        mask
    }
}

/// `register_callback(tool, event of p, f)`; false (logged) if it failed.
unsafe fn register(st: &State, tool: &Owned, p: Probe, f: *mut ffi::PyObject) -> bool {
    // SAFETY: attached (see `apply`); the objects are valid.
    unsafe {
        let ev = long(st.event_bits[p as usize]);
        let ok = call(st.monitoring, c"register_callback", &[tool.0, ev.0, f]).is_ok();
        if !ok {
            report("register_callback", st.interp_id);
        }
        ok
    }
}

unsafe fn set_events(st: &State, tool: &Owned, mask: u32) -> bool {
    let events: i64 = Probe::ALL
        .iter()
        .filter(|p| with_implied(mask) & p.bit() != 0 && !p.needs_call())
        .map(|p| st.event_bits[*p as usize])
        .sum();
    // SAFETY: attached (see `apply`).
    unsafe {
        let ev = long(events);
        let ok = call(st.monitoring, c"set_events", &[tool.0, ev.0]).is_ok();
        if !ok {
            report("set_events", st.interp_id);
        }
        ok
    }
}

unsafe fn free_tool(st: &State, tool: &Owned) {
    // SAFETY: attached (see `apply`).
    unsafe {
        if call(st.monitoring, c"free_tool_id", &[tool.0]).is_err() {
            report("free_tool_id", st.interp_id);
        }
    }
    st.tool_id.store(NO_TOOL, Ordering::Release);
}

unsafe fn apply_inner(st: &State, current: u32, mask: u32) -> u32 {
    // SAFETY: attached (see `apply`).
    unsafe {
        let tool = match st.tool() {
            Some(t) => t,
            None if mask == 0 => return 0,
            None => match claim_tool(st) {
                Some(t) => {
                    st.told_no_tool.store(false, Ordering::Relaxed);
                    st.tool_id.store(t, Ordering::Release);
                    t
                }
                None => {
                    if !st.told_no_tool.swap(true, Ordering::Relaxed) {
                        config::log(|| {
                            format!(
                                "no free sys.monitoring tool id (3, 4, 5) in interpreter {}; \
                                 staying inert until one is free",
                                st.interp_id
                            )
                        });
                    }
                    return current;
                }
            },
        };
        let tool_obj = long(tool as i64);
        // Register before enabling, so no event fires without its callback;
        // a probe whose callback could not be registered stays off.
        // Callbacks are registered per probe; CALL's also for C_RETURN and
        // C_RAISE (`with_implied`), which cannot be on without it.
        let have = with_implied(current);
        let mut added = 0;
        for p in Probe::ALL {
            if with_implied(mask) & p.bit() != 0
                && have & p.bit() == 0
                && register(st, &tool_obj, p, st.callback(p))
            {
                added |= p.bit();
            }
        }
        // A probe is on when its callback is registered.
        let mut target = mask & (have | added);
        if (have | added) & Probe::Call.bit() == 0 {
            // CALL's callback is missing: C_RETURN and C_RAISE stay off.
            target &= !(Probe::CReturn.bit() | Probe::CRaise.bit());
        }
        if target != current && !set_events(st, &tool_obj, target) {
            // Nothing changed: take back the callbacks just registered.
            for p in Probe::ALL {
                if added & p.bit() != 0 {
                    register(st, &tool_obj, p, ffi::Py_None());
                }
            }
            if current == 0 {
                free_tool(st, &tool_obj);
            }
            return current;
        }
        for p in Probe::ALL {
            let now = with_implied(target) & p.bit() != 0;
            if !now && (have | added) & p.bit() != 0 {
                register(st, &tool_obj, p, ffi::Py_None());
            }
        }
        st.enabled.store(target, Ordering::Release);
        if target == 0 {
            free_tool(st, &tool_obj);
            config::log(|| format!("disabled (interpreter {})", st.interp_id));
        } else {
            config::log(|| {
                format!(
                    "enabled {} (interpreter {}, tool id {tool})",
                    sites::names(target).join(", "),
                    st.interp_id
                )
            });
        }
        target
    }
}
