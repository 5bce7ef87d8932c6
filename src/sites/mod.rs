//! Layer 1, the probe sites: the USDT probes of provider `pyusdt` (their SDT
//! notes, semaphores and sites, written per architecture), which probes
//! tracers announce (raised semaphores) and which sites they have patched
//! right now (bit masks, bit i = `Probe::ALL[i]`), and
//! the switch that turns them all off in a process whose sites cannot be
//! trusted (see `fork_repair`). Depends on nothing else of the crate but
//! `config`.
//!
//! The notes keep the layout of the original pyusdt 0.1.1, with the
//! interpreter id as the last argument:
//!
//! ```text
//! PY_START, PY_RESUME  (uintptr_t name, uintptr_t file, int32_t line, int64_t offset, int64_t interp, uintptr_t qualname)
//! PY_RETURN, PY_YIELD  (uintptr_t name, uintptr_t file, int32_t line, int64_t offset, uintptr_t repr, int64_t interp)
//! CALL                 (uintptr_t name, uintptr_t file, int32_t line, int64_t offset, uintptr_t repr, int64_t interp)
//! LINE                 (uintptr_t name, uintptr_t file, int32_t line, int64_t interp, uintptr_t qualname)
//! C_RETURN, C_RAISE    (uintptr_t name, uintptr_t file, int32_t line, int64_t offset, uintptr_t repr, int64_t interp)
//! PY_UNWIND, PY_THROW, RAISE, RERAISE, EXCEPTION_HANDLED
//!                      (uintptr_t name, uintptr_t file, int32_t line, int64_t offset, uintptr_t type, uintptr_t message)
//! ```
//!
//! No probe has more than six arguments: bpftrace 0.17 reads none past
//! `arg5`. `qualname` is appended where a probe had fewer than six (after
//! the original's last argument, so its positions are unchanged); the
//! exception probes carry type and message instead of the interpreter id.
//!
//! Strings are `uintptr_t` pointers to NUL-terminated UTF-8 that already
//! exists, which bpftrace reads with `str()`.

use std::sync::atomic::{AtomicBool, Ordering};

#[cfg(target_arch = "x86_64")]
pub mod fork_repair;

/// On aarch64 the kernel never rewrites a site into a call to a trampoline
/// (it places a `brk`, which a forked child handles by itself): a child's
/// sites need no repair.
#[cfg(target_arch = "aarch64")]
pub mod fork_repair {
    pub fn install() {}
}

mod symbols;

#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
use x86_64 as arch;

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "aarch64")]
use aarch64 as arch;

#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
compile_error!("pyusdt's probe sites are written for x86_64 and aarch64 Linux");

/// The probe sites, one function each; each is called from one callback,
/// only while its probe is attached.
pub use arch::fire;
// Used by the fork repair, which aarch64 does not need, and the tests.
#[cfg_attr(all(target_arch = "aarch64", not(test)), allow(unused_imports))]
pub use arch::SITE_NOP;

/// One probe of the provider. The discriminant is its bit in a probe mask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    PyStart = 0,
    PyResume = 1,
    PyReturn = 2,
    PyYield = 3,
    Call = 4,
    Line = 5,
    PyUnwind = 6,
    PyThrow = 7,
    Raise = 8,
    Reraise = 9,
    ExceptionHandled = 10,
    CReturn = 11,
    CRaise = 12,
}

impl Probe {
    /// How many probes there are.
    pub const COUNT: usize = 13;

    pub const ALL: [Probe; Probe::COUNT] = [
        Probe::PyStart,
        Probe::PyResume,
        Probe::PyReturn,
        Probe::PyYield,
        Probe::Call,
        Probe::Line,
        Probe::PyUnwind,
        Probe::PyThrow,
        Probe::Raise,
        Probe::Reraise,
        Probe::ExceptionHandled,
        Probe::CReturn,
        Probe::CRaise,
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
            Probe::PyUnwind => "PY_UNWIND",
            Probe::PyThrow => "PY_THROW",
            Probe::Raise => "RAISE",
            Probe::Reraise => "RERAISE",
            Probe::ExceptionHandled => "EXCEPTION_HANDLED",
            Probe::CReturn => "C_RETURN",
            Probe::CRaise => "C_RAISE",
        }
    }

    /// Can CPython disable this probe's event at one location (a "local"
    /// event)? A callback of any other event must never return `DISABLE`
    /// (CPython raises `ValueError` and removes the callback).
    pub const fn local(self) -> bool {
        (self as u32) <= Probe::Line as u32
    }

    /// C_RETURN and C_RAISE: CPython delivers them only at `CALL`s that are
    /// monitored (`set_events` refuses them), so enabling them enables `CALL`.
    pub const fn needs_call(self) -> bool {
        matches!(self, Probe::CReturn | Probe::CRaise)
    }

    pub const fn bit(self) -> u32 {
        1 << (self as u32)
    }

    /// True while at least one tracer has this probe attached (and the
    /// sites work in this process).
    #[inline(always)]
    pub fn attached(self) -> bool {
        symbols::semaphore(self) != 0 && !sites_off()
    }
}

static SITES_OFF: AtomicBool = AtomicBool::new(false);

/// True once the probe sites of this process are switched off.
#[inline(always)]
pub fn sites_off() -> bool {
    SITES_OFF.load(Ordering::Relaxed)
}

/// Switches every probe off for the rest of this process (async-signal-safe).
#[cfg_attr(target_arch = "aarch64", allow(dead_code))]
pub fn switch_off() {
    SITES_OFF.store(true, Ordering::Relaxed);
}

/// The mask of probes every site of which a tracer has patched right now
/// (what `--wait` waits for: the semaphore rises at a probe's first location).
pub fn patched_mask() -> u32 {
    Probe::ALL
        .iter()
        .filter(|p| arch::patched(**p))
        .fold(0, |m, p| m | p.bit())
}

/// The mask of probes whose site that fires here (on x86_64 the 1-byte or
/// the 5-byte one, see `x86_64::optimized`) a tracer has patched right now:
/// the probes whose events a tracer can receive.
pub fn armed_mask() -> u32 {
    Probe::ALL
        .iter()
        .filter(|p| arch::armed(**p))
        .fold(0, |m, p| m | p.bit())
}

/// The mask of probes whose semaphore is raised right now (and the sites
/// work in this process): what tracers announced, not what they receive.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_follow_probe_order() {
        for (i, p) in Probe::ALL.iter().enumerate() {
            assert_eq!(p.bit(), 1 << i);
        }
        assert_eq!(names(0b100101), ["PY_START", "PY_RETURN", "LINE"]);
        assert!(names(0).is_empty());
        assert_eq!(Probe::ALL.len(), Probe::COUNT);
        assert_eq!(names(1 << 12), ["C_RAISE"]);
    }

    #[test]
    fn nothing_attached_without_a_tracer() {
        assert_eq!(attached_mask(), 0);
        assert_eq!(armed_mask(), 0);
        assert_eq!(patched_mask(), 0);
    }

    #[test]
    fn every_site_is_the_nop_and_never_straddles_a_page() {
        for site in symbols::sites() {
            let addr = site as usize;
            assert!(addr % 4096 + SITE_NOP.len() <= 4096, "{addr:#x}");
            // SAFETY: a probe site in this binary's mapped text.
            let bytes = unsafe { std::ptr::read_volatile(site) };
            assert_eq!(bytes, SITE_NOP);
        }
    }
}
