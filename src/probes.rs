//! The USDT probes of provider `pyusdt`: their probe sites (SystemTap SDT
//! notes), their semaphores, and which probes a tracer has attached, as a bit
//! mask (bit i = `Probe::ALL[i]`).
//!
//! The probe sites are written here rather than by the `usdt` crate because
//! of one instruction: `usdt` (like `<sys/sdt.h>`) places a 1-byte `nop` at
//! each site, which the kernel can only trap (int3). Linux 6.18+ turns a
//! uprobe on a 5-byte `nop` into a call to a trampoline that enters the kernel
//! through the `uprobe` syscall: measured here, 248 ns per hit instead of
//! 496 ns (bench/sdt_loop.c, nop5 vs nop; README "Performance"). Older
//! kernels fall back to the int3 trap on it (not tested here). The 6.18
//! trampoline is entered with `call`, which writes below the stack pointer,
//! so the site steps the stack pointer past the red zone around the `nop`.
//!
//! The notes keep the layout of the original pyusdt 0.1.1 (and of the `usdt`
//! crate's `.d` provider), with the interpreter id as the last argument:
//!
//! ```text
//! PY_START, PY_RESUME  (uintptr_t name, uintptr_t file, int32_t line, int64_t offset, int64_t interp)
//! PY_RETURN, PY_YIELD  (uintptr_t name, uintptr_t file, int32_t line, int64_t offset, uintptr_t repr, int64_t interp)
//! CALL                 (uintptr_t name, uintptr_t file, int32_t line, int64_t offset, uintptr_t repr, int64_t interp)
//! LINE                 (uintptr_t name, uintptr_t file, int32_t line, int64_t interp)
//! ```
//!
//! Strings are `uintptr_t` pointers to NUL-terminated UTF-8 that already
//! exists, which bpftrace reads with `str()`.

use std::ptr::addr_of;

use crate::fork_sites;

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
compile_error!("pyusdt's probe sites are written for x86_64 Linux");

/// The instruction at every probe site, `nopl 0x0(%rax,%rax,1)`: the bytes
/// the `site!` asm writes (it needs them as a literal), checked against the
/// notes by tests/test_sites.py and restored in forked children by `fork_sites`.
pub const NOP5: [u8; 5] = [0x0f, 0x1f, 0x44, 0x00, 0x00];

/// One probe site: the 5-byte `nop` the kernel patches, its stapsdt note,
/// and (once per probe name) its semaphore in `.probes`. `$args` is the note's
/// argument string over the operands; operands are registers only, so the
/// stack-pointer step does not move them.
macro_rules! site {
    ($probe:literal, $args:literal, $($operands:tt)*) => {
        // SAFETY: the asm only moves the stack pointer down and back up around
        // a `nop` (no memory written; the flags are kept), and emits data into
        // the note and `.probes` sections. `readonly`, not `nomem`: the tracer
        // reads the strings behind the pointers when the probe fires, so the
        // writes to them must be done by then. The semaphore is a named
        // symbol, defined once per probe name under `.ifndef`; the site's
        // symbol (for `fork_sites`) is defined once: the function holding
        // the site is never inlined.
        #[allow(named_asm_labels)]
        unsafe {
            ::std::arch::asm!(
                "lea -128(%rsp), %rsp",
                concat!(".globl __pyusdt_site_", $probe),
                concat!(".hidden __pyusdt_site_", $probe),
                concat!("__pyusdt_site_", $probe, ":"),
                "990: .byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
                "lea 128(%rsp), %rsp",
                concat!(".ifndef __usdt_sema_pyusdt_", $probe),
                ".pushsection .probes, \"aw\", \"progbits\"",
                concat!(".weak __usdt_sema_pyusdt_", $probe),
                concat!(".hidden __usdt_sema_pyusdt_", $probe),
                concat!("__usdt_sema_pyusdt_", $probe, ":"),
                ".zero 2",
                concat!(".type __usdt_sema_pyusdt_", $probe, ", @object"),
                concat!(".size __usdt_sema_pyusdt_", $probe, ", 2"),
                ".popsection",
                ".endif",
                ".pushsection .note.stapsdt, \"\", \"note\"",
                ".balign 4",
                ".4byte 992f-991f, 994f-993f, 3",
                "991: .asciz \"stapsdt\"",
                "992: .balign 4",
                "993: .8byte 990b",
                ".8byte _.stapsdt.base",
                concat!(".8byte __usdt_sema_pyusdt_", $probe),
                ".asciz \"pyusdt\"",
                concat!(".asciz \"", $probe, "\""),
                concat!(".asciz \"", $args, "\""),
                "994: .balign 4",
                ".popsection",
                ".ifndef _.stapsdt.base",
                ".pushsection .stapsdt.base, \"aGR\", \"progbits\", .stapsdt.base, comdat",
                ".weak _.stapsdt.base",
                ".hidden _.stapsdt.base",
                "_.stapsdt.base: .space 1",
                ".size _.stapsdt.base, 1",
                ".popsection",
                ".endif",
                $($operands)*
                options(att_syntax, readonly, nostack, preserves_flags)
            )
        }
    };
}

/// Fires `PY_START` or `PY_RESUME` (`$probe`).
macro_rules! start_site {
    ($fn_name:ident, $probe:literal) => {
        #[inline(never)]
        pub fn $fn_name(name: usize, file: usize, line: i32, offset: i64, interp: i64) {
            site!(
                $probe,
                "8@%rdi 8@%rsi -4@%edx -8@%rcx -8@%r8",
                in("rdi") name,
                in("rsi") file,
                in("edx") line,
                in("rcx") offset,
                in("r8") interp,
            );
        }
    };
}

/// Fires `PY_RETURN`, `PY_YIELD` or `CALL` (`$probe`).
macro_rules! value_site {
    ($fn_name:ident, $probe:literal) => {
        #[inline(never)]
        pub fn $fn_name(name: usize, file: usize, line: i32, offset: i64, repr: usize, interp: i64) {
            site!(
                $probe,
                "8@%rdi 8@%rsi -4@%edx -8@%rcx 8@%r8 -8@%r9",
                in("rdi") name,
                in("rsi") file,
                in("edx") line,
                in("rcx") offset,
                in("r8") repr,
                in("r9") interp,
            );
        }
    };
}

/// The probe sites, one function each (never inlined, so there is exactly
/// one site per probe and its arguments are where the x86_64 calling
/// convention puts them, as in the original's notes); each is called from
/// one callback, only while its probe is attached.
pub mod fire {
    start_site!(py_start, "PY_START");
    start_site!(py_resume, "PY_RESUME");
    value_site!(py_return, "PY_RETURN");
    value_site!(py_yield, "PY_YIELD");
    value_site!(call, "CALL");

    #[inline(never)]
    pub fn line(name: usize, file: usize, line: i32, interp: i64) {
        site!(
            "LINE",
            "8@%rdi 8@%rsi -4@%edx -8@%rcx",
            in("rdi") name,
            in("rsi") file,
            in("edx") line,
            in("rcx") interp,
        );
    }
}

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

    /// True while at least one tracer has this probe attached (and the
    /// sites work in this process: see `fork_sites`).
    #[inline(always)]
    pub fn attached(self) -> bool {
        semaphore(self) != 0 && !fork_sites::sites_off()
    }
}

// The semaphores the probe sites define (one u16 per probe, in the `.probes`
// section); the kernel increments them when a uprobe is attached to the probe
// and decrements them on detach.
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

unsafe extern "C" {
    static __pyusdt_site_PY_START: u8;
    static __pyusdt_site_PY_RESUME: u8;
    static __pyusdt_site_PY_RETURN: u8;
    static __pyusdt_site_PY_YIELD: u8;
    static __pyusdt_site_CALL: u8;
    static __pyusdt_site_LINE: u8;
}

/// The address of every probe site's 5-byte nop, in probe order.
pub fn sites() -> [*const u8; 6] {
    // Only the addresses of the code labels are taken; nothing is read here.
    [
        addr_of!(__pyusdt_site_PY_START),
        addr_of!(__pyusdt_site_PY_RESUME),
        addr_of!(__pyusdt_site_PY_RETURN),
        addr_of!(__pyusdt_site_PY_YIELD),
        addr_of!(__pyusdt_site_CALL),
        addr_of!(__pyusdt_site_LINE),
    ]
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
