//! The symbols every architecture's site asm defines under the same names:
//! one semaphore per probe (`__usdt_sema_pyusdt_NAME`, a u16 in `.probes`)
//! and the label of each probe's site (`__pyusdt_site_NAME`), with the
//! reads the rest of the crate needs of them.

use std::ptr::addr_of;

use super::arch::Site;
use super::Probe;

// The semaphores the site asm defines (one u16 per probe, in `.probes`);
// the kernel increments one when a uprobe is attached to its probe and
// decrements it on detach.
unsafe extern "C" {
    static __usdt_sema_pyusdt_PY_START: u16;
    static __usdt_sema_pyusdt_PY_RESUME: u16;
    static __usdt_sema_pyusdt_PY_RETURN: u16;
    static __usdt_sema_pyusdt_PY_YIELD: u16;
    static __usdt_sema_pyusdt_CALL: u16;
    static __usdt_sema_pyusdt_LINE: u16;
    static __usdt_sema_pyusdt_PY_UNWIND: u16;
    static __usdt_sema_pyusdt_PY_THROW: u16;
    static __usdt_sema_pyusdt_RAISE: u16;
    static __usdt_sema_pyusdt_RERAISE: u16;
    static __usdt_sema_pyusdt_EXCEPTION_HANDLED: u16;
    static __usdt_sema_pyusdt_C_RETURN: u16;
    static __usdt_sema_pyusdt_C_RAISE: u16;
}

#[inline(always)]
pub fn semaphore(probe: Probe) -> u16 {
    // SAFETY: the semaphores are 2-byte, 2-aligned statics defined by the
    // site asm; the kernel writes them behind our back, so they are read with
    // a volatile load through a raw pointer, never through a reference.
    unsafe {
        match probe {
            Probe::PyStart => addr_of!(__usdt_sema_pyusdt_PY_START).read_volatile(),
            Probe::PyResume => addr_of!(__usdt_sema_pyusdt_PY_RESUME).read_volatile(),
            Probe::PyReturn => addr_of!(__usdt_sema_pyusdt_PY_RETURN).read_volatile(),
            Probe::PyYield => addr_of!(__usdt_sema_pyusdt_PY_YIELD).read_volatile(),
            Probe::Call => addr_of!(__usdt_sema_pyusdt_CALL).read_volatile(),
            Probe::Line => addr_of!(__usdt_sema_pyusdt_LINE).read_volatile(),
            Probe::PyUnwind => addr_of!(__usdt_sema_pyusdt_PY_UNWIND).read_volatile(),
            Probe::PyThrow => addr_of!(__usdt_sema_pyusdt_PY_THROW).read_volatile(),
            Probe::Raise => addr_of!(__usdt_sema_pyusdt_RAISE).read_volatile(),
            Probe::Reraise => addr_of!(__usdt_sema_pyusdt_RERAISE).read_volatile(),
            Probe::ExceptionHandled => {
                addr_of!(__usdt_sema_pyusdt_EXCEPTION_HANDLED).read_volatile()
            }
            Probe::CReturn => addr_of!(__usdt_sema_pyusdt_C_RETURN).read_volatile(),
            Probe::CRaise => addr_of!(__usdt_sema_pyusdt_C_RAISE).read_volatile(),
        }
    }
}

// The sites' labels: each names the bytes of its `nop` (`Site`); on x86_64
// the 5-byte one (the 1-byte sites are their functions' first bytes).
unsafe extern "C" {
    static __pyusdt_site_PY_START: Site;
    static __pyusdt_site_PY_RESUME: Site;
    static __pyusdt_site_PY_RETURN: Site;
    static __pyusdt_site_PY_YIELD: Site;
    static __pyusdt_site_CALL: Site;
    static __pyusdt_site_LINE: Site;
    static __pyusdt_site_PY_UNWIND: Site;
    static __pyusdt_site_PY_THROW: Site;
    static __pyusdt_site_RAISE: Site;
    static __pyusdt_site_RERAISE: Site;
    static __pyusdt_site_EXCEPTION_HANDLED: Site;
    static __pyusdt_site_C_RETURN: Site;
    static __pyusdt_site_C_RAISE: Site;
}

/// The address of every probe site's `nop`, in probe order.
pub fn sites() -> [*const Site; Probe::COUNT] {
    // Only the addresses are taken; nothing is read here.
    [
        addr_of!(__pyusdt_site_PY_START),
        addr_of!(__pyusdt_site_PY_RESUME),
        addr_of!(__pyusdt_site_PY_RETURN),
        addr_of!(__pyusdt_site_PY_YIELD),
        addr_of!(__pyusdt_site_CALL),
        addr_of!(__pyusdt_site_LINE),
        addr_of!(__pyusdt_site_PY_UNWIND),
        addr_of!(__pyusdt_site_PY_THROW),
        addr_of!(__pyusdt_site_RAISE),
        addr_of!(__pyusdt_site_RERAISE),
        addr_of!(__pyusdt_site_EXCEPTION_HANDLED),
        addr_of!(__pyusdt_site_C_RETURN),
        addr_of!(__pyusdt_site_C_RAISE),
    ]
}
