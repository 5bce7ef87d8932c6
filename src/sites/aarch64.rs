//! The aarch64 probe sites: one naked leaf function per probe whose first
//! instruction is the site (`nop; ret`), its SystemTap SDT note and its
//! semaphore. The kernel places a `brk` on the `nop` and never rewrites it
//! into a call to a trampoline page, so a forked child needs no repair, and
//! aarch64 has no red zone. The functions carry their own CFI (the CFA is
//! `sp` throughout, the return address stays in `x30`).

use super::symbols::sites;
use super::Probe;

/// The instruction at every probe site, `nop` (0xd503201f, little-endian),
/// checked by the unit tests.
pub const SITE_NOP: Site = [0x1f, 0x20, 0x03, 0xd5];

/// The bytes of a site (`symbols::sites`).
pub type Site = [u8; 4];

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
    // At most six arguments, all in registers, as on x86_64. A 32-bit argument is
    // `-4@xN`, never `-4@wN`: bcc's and libbpf's aarch64 note parsers (bpftrace's)
    // know only `xN` and `sp` and read the low 4 bytes for size 4 (with `wN`, bpftrace
    // 0.23 rejects the note: "Parse error", then "couldn't get argument").

    site_fn!(py_start, "PY_START", "8@x0 8@x1 -4@x2 -8@x3 -8@x4 8@x5",
        (name: usize, file: usize, line: i32, offset: i64, interp: i64, qualname: usize));
    site_fn!(py_resume, "PY_RESUME", "8@x0 8@x1 -4@x2 -8@x3 -8@x4 8@x5",
        (name: usize, file: usize, line: i32, offset: i64, interp: i64, qualname: usize));
    site_fn!(py_return, "PY_RETURN", "8@x0 8@x1 -4@x2 -8@x3 8@x4 -8@x5",
        (name: usize, file: usize, line: i32, offset: i64, repr: usize, interp: i64));
    site_fn!(py_yield, "PY_YIELD", "8@x0 8@x1 -4@x2 -8@x3 8@x4 -8@x5",
        (name: usize, file: usize, line: i32, offset: i64, repr: usize, interp: i64));
    site_fn!(call, "CALL", "8@x0 8@x1 -4@x2 -8@x3 8@x4 -8@x5",
        (name: usize, file: usize, line: i32, offset: i64, repr: usize, interp: i64));
    site_fn!(line, "LINE", "8@x0 8@x1 -4@x2 -8@x3 8@x4",
        (name: usize, file: usize, line: i32, interp: i64, qualname: usize));
    site_fn!(py_unwind, "PY_UNWIND", "8@x0 8@x1 -4@x2 -8@x3 8@x4 8@x5",
        (name: usize, file: usize, line: i32, offset: i64, ty: usize, msg: usize));
    site_fn!(py_throw, "PY_THROW", "8@x0 8@x1 -4@x2 -8@x3 8@x4 8@x5",
        (name: usize, file: usize, line: i32, offset: i64, ty: usize, msg: usize));
    site_fn!(raise, "RAISE", "8@x0 8@x1 -4@x2 -8@x3 8@x4 8@x5",
        (name: usize, file: usize, line: i32, offset: i64, ty: usize, msg: usize));
    site_fn!(reraise, "RERAISE", "8@x0 8@x1 -4@x2 -8@x3 8@x4 8@x5",
        (name: usize, file: usize, line: i32, offset: i64, ty: usize, msg: usize));
    site_fn!(exception_handled, "EXCEPTION_HANDLED", "8@x0 8@x1 -4@x2 -8@x3 8@x4 8@x5",
        (name: usize, file: usize, line: i32, offset: i64, ty: usize, msg: usize));
    site_fn!(c_return, "C_RETURN", "8@x0 8@x1 -4@x2 -8@x3 8@x4 -8@x5",
        (name: usize, file: usize, line: i32, offset: i64, repr: usize, interp: i64));
    site_fn!(c_raise, "C_RAISE", "8@x0 8@x1 -4@x2 -8@x3 8@x4 -8@x5",
        (name: usize, file: usize, line: i32, offset: i64, repr: usize, interp: i64));
}

/// Is the site of `probe` patched by a tracer (a `brk` instead of the `nop`)?
pub fn patched(probe: Probe) -> bool {
    // SAFETY: a probe site's 4 bytes in this library's mapped text, read
    // (volatile: the kernel rewrites them) and never written.
    unsafe { std::ptr::read_volatile(sites()[probe as usize]) != SITE_NOP }
}

/// Is the site of `probe` patched (aarch64 has one site per probe, the one
/// that fires)?
pub fn armed(probe: Probe) -> bool {
    patched(probe)
}
