//! The aarch64 probe sites: one naked leaf function per probe whose first
//! instruction is the site (`nop; ret`), its SystemTap SDT note and its
//! semaphore. The kernel places a `brk` on the `nop` and never rewrites it
//! into a call to a trampoline page, so a forked child needs no repair, and
//! aarch64 has no red zone. The functions carry their own CFI (the CFA is
//! `sp` throughout, the return address stays in `x30`).

use std::ptr::addr_of;

use super::Probe;

/// The instruction at every probe site, `nop` (0xd503201f, little-endian),
/// checked by the unit tests.
pub const SITE_NOP: [u8; 4] = [0x1f, 0x20, 0x03, 0xd5];

/// One probe site function: `$probe` is the probe name, `$args` the note's
/// argument string over the C ABI's argument registers.
macro_rules! site_fn {
    ($fn_name:ident, $probe:literal, $args:literal, ($($arg:ident: $ty:ty),*)) => {
        /// Fires the probe of the same name (a `nop` unless a tracer placed a
        /// uprobe on it); the arguments are read by the tracer from registers.
        #[unsafe(naked)]
        pub extern "C" fn $fn_name($($arg: $ty),*) {
            // The body is the site and `ret`: it reads and writes no memory
            // and leaves every register as it was. The semaphore and the
            // note are data emitted into their own sections.
            core::arch::naked_asm!(
                ".cfi_startproc",
                concat!(".globl __pyusdt_site_", $probe),
                concat!(".hidden __pyusdt_site_", $probe),
                concat!("__pyusdt_site_", $probe, ":"),
                "990: nop",
                "ret",
                ".cfi_endproc",
                ".pushsection .probes, \"aw\", %progbits",
                concat!(".globl __usdt_sema_pyusdt_", $probe),
                concat!(".hidden __usdt_sema_pyusdt_", $probe),
                ".balign 2",
                concat!("__usdt_sema_pyusdt_", $probe, ":"),
                ".zero 2",
                concat!(".type __usdt_sema_pyusdt_", $probe, ", %object"),
                concat!(".size __usdt_sema_pyusdt_", $probe, ", 2"),
                ".popsection",
                ".pushsection .note.stapsdt, \"\", %note",
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
                ".pushsection .stapsdt.base, \"axGR\", %progbits, .stapsdt.base, comdat",
                ".weak _.stapsdt.base",
                ".hidden _.stapsdt.base",
                "_.stapsdt.base: .space 1",
                ".size _.stapsdt.base, 1",
                ".popsection",
                ".endif",
            )
        }
    };
}

/// The probe sites, one function each.
pub mod fire {
    // At most six arguments, all in registers, as on x86_64.

    site_fn!(py_start, "PY_START", "8@x0 8@x1 -4@w2 -8@x3 -8@x4 8@x5",
        (name: usize, file: usize, line: i32, offset: i64, interp: i64, qualname: usize));
    site_fn!(py_resume, "PY_RESUME", "8@x0 8@x1 -4@w2 -8@x3 -8@x4 8@x5",
        (name: usize, file: usize, line: i32, offset: i64, interp: i64, qualname: usize));
    site_fn!(py_return, "PY_RETURN", "8@x0 8@x1 -4@w2 -8@x3 8@x4 -8@x5",
        (name: usize, file: usize, line: i32, offset: i64, repr: usize, interp: i64));
    site_fn!(py_yield, "PY_YIELD", "8@x0 8@x1 -4@w2 -8@x3 8@x4 -8@x5",
        (name: usize, file: usize, line: i32, offset: i64, repr: usize, interp: i64));
    site_fn!(call, "CALL", "8@x0 8@x1 -4@w2 -8@x3 8@x4 -8@x5",
        (name: usize, file: usize, line: i32, offset: i64, repr: usize, interp: i64));
    site_fn!(line, "LINE", "8@x0 8@x1 -4@w2 -8@x3 8@x4",
        (name: usize, file: usize, line: i32, interp: i64, qualname: usize));
    site_fn!(py_unwind, "PY_UNWIND", "8@x0 8@x1 -4@w2 -8@x3 8@x4 8@x5",
        (name: usize, file: usize, line: i32, offset: i64, ty: usize, msg: usize));
    site_fn!(py_throw, "PY_THROW", "8@x0 8@x1 -4@w2 -8@x3 8@x4 8@x5",
        (name: usize, file: usize, line: i32, offset: i64, ty: usize, msg: usize));
    site_fn!(raise, "RAISE", "8@x0 8@x1 -4@w2 -8@x3 8@x4 8@x5",
        (name: usize, file: usize, line: i32, offset: i64, ty: usize, msg: usize));
    site_fn!(reraise, "RERAISE", "8@x0 8@x1 -4@w2 -8@x3 8@x4 8@x5",
        (name: usize, file: usize, line: i32, offset: i64, ty: usize, msg: usize));
    site_fn!(exception_handled, "EXCEPTION_HANDLED", "8@x0 8@x1 -4@w2 -8@x3 8@x4 8@x5",
        (name: usize, file: usize, line: i32, offset: i64, ty: usize, msg: usize));
    site_fn!(c_return, "C_RETURN", "8@x0 8@x1 -4@w2 -8@x3 8@x4 -8@x5",
        (name: usize, file: usize, line: i32, offset: i64, repr: usize, interp: i64));
    site_fn!(c_raise, "C_RAISE", "8@x0 8@x1 -4@w2 -8@x3 8@x4 -8@x5",
        (name: usize, file: usize, line: i32, offset: i64, repr: usize, interp: i64));
}

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

// The sites' labels: each names the 4 bytes of its `nop`.
unsafe extern "C" {
    static __pyusdt_site_PY_START: [u8; 4];
    static __pyusdt_site_PY_RESUME: [u8; 4];
    static __pyusdt_site_PY_RETURN: [u8; 4];
    static __pyusdt_site_PY_YIELD: [u8; 4];
    static __pyusdt_site_CALL: [u8; 4];
    static __pyusdt_site_LINE: [u8; 4];
    static __pyusdt_site_PY_UNWIND: [u8; 4];
    static __pyusdt_site_PY_THROW: [u8; 4];
    static __pyusdt_site_RAISE: [u8; 4];
    static __pyusdt_site_RERAISE: [u8; 4];
    static __pyusdt_site_EXCEPTION_HANDLED: [u8; 4];
    static __pyusdt_site_C_RETURN: [u8; 4];
    static __pyusdt_site_C_RAISE: [u8; 4];
}

/// Is the site of `probe` patched by a tracer (a `brk` instead of the `nop`)?
pub fn patched(probe: Probe) -> bool {
    // SAFETY: a probe site's 4 bytes in this library's mapped text, read
    // (volatile: the kernel rewrites them) and never written.
    unsafe { std::ptr::read_volatile(sites()[probe as usize]) != SITE_NOP }
}

/// The address of every probe site's `nop`, in probe order.
pub fn sites() -> [*const [u8; 4]; Probe::COUNT] {
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
