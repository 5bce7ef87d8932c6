//! The USDT probes of provider `pyusdt` and their semaphores: which probes a
//! tracer has attached, as a bit mask (bit i = `Probe::ALL[i]`).

use std::ptr::addr_of;

usdt::dtrace_provider!("src/pyusdt.d");

/// One probe of the provider. The discriminant is its bit in a probe mask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    PyStart = 0,
    PyResume = 1,
    PyReturn = 2,
    PyYield = 3,
    Call = 4,
    Line = 5,
}

impl Probe {
    pub const ALL: [Probe; 6] = [
        Probe::PyStart,
        Probe::PyResume,
        Probe::PyReturn,
        Probe::PyYield,
        Probe::Call,
        Probe::Line,
    ];

    /// The probe's name, which is also the name of its `sys.monitoring` event.
    pub const fn name(self) -> &'static str {
        match self {
            Probe::PyStart => "PY_START",
            Probe::PyResume => "PY_RESUME",
            Probe::PyReturn => "PY_RETURN",
            Probe::PyYield => "PY_YIELD",
            Probe::Call => "CALL",
            Probe::Line => "LINE",
        }
    }

    pub const fn bit(self) -> u32 {
        1 << (self as u32)
    }

    /// True while at least one tracer has this probe attached.
    #[inline(always)]
    pub fn attached(self) -> bool {
        semaphore(self) != 0
    }
}

// The semaphores the `usdt` crate emits next to each probe (one u16 per
// probe, in the `.probes` section); the kernel increments them when a uprobe
// is attached to the probe and decrements them on detach.
unsafe extern "C" {
    static __usdt_sema_pyusdt_PY_START: u16;
    static __usdt_sema_pyusdt_PY_RESUME: u16;
    static __usdt_sema_pyusdt_PY_RETURN: u16;
    static __usdt_sema_pyusdt_PY_YIELD: u16;
    static __usdt_sema_pyusdt_CALL: u16;
    static __usdt_sema_pyusdt_LINE: u16;
}

#[inline(always)]
fn semaphore(probe: Probe) -> u16 {
    // SAFETY: the semaphores are 2-byte statics defined by the probe records
    // in this library; the kernel writes them behind our back, so they are
    // read with a volatile load and never through a reference.
    unsafe {
        match probe {
            Probe::PyStart => addr_of!(__usdt_sema_pyusdt_PY_START).read_volatile(),
            Probe::PyResume => addr_of!(__usdt_sema_pyusdt_PY_RESUME).read_volatile(),
            Probe::PyReturn => addr_of!(__usdt_sema_pyusdt_PY_RETURN).read_volatile(),
            Probe::PyYield => addr_of!(__usdt_sema_pyusdt_PY_YIELD).read_volatile(),
            Probe::Call => addr_of!(__usdt_sema_pyusdt_CALL).read_volatile(),
            Probe::Line => addr_of!(__usdt_sema_pyusdt_LINE).read_volatile(),
        }
    }
}

/// The mask of probes that are attached right now.
pub fn attached_mask() -> u32 {
    Probe::ALL
        .iter()
        .filter(|p| p.attached())
        .fold(0, |m, p| m | p.bit())
}

/// The names of the probes in `mask`, in probe order.
pub fn names(mask: u32) -> Vec<&'static str> {
    Probe::ALL
        .iter()
        .filter(|p| mask & p.bit() != 0)
        .map(|p| p.name())
        .collect()
}
