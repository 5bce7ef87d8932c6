//! The x86_64 probe sites: for each probe two naked leaf functions, each
//! one site (a 1-byte `nop` and a 5-byte `nop`) with its own SystemTap SDT
//! note (same provider, name, arguments and semaphore), the semaphore, and
//! the choice, made once per process from what the kernel offers, of the
//! site that fires.
//!
//! Why two: Linux 6.18+ turns a uprobe on a 5-byte `nop` into a call to a
//! trampoline that enters the kernel through the `uprobe` syscall (248 ns a
//! hit instead of 496 ns on a trapped site, bench/sdt_loop.c); older kernels
//! single-step a 5-byte `nop` after the int3 (several times the cost of a
//! 1-byte `nop`, which they emulate). The site bytes cannot be rewritten at
//! run time (a uprobe decodes and restores the file's bytes), so both exist
//! and `fire::*` calls one: the 5-byte site where the `uprobe` syscall
//! exists (`optimized()`), the 1-byte site elsewhere. A tracer attaches both
//! notes' locations (one semaphore, raised twice); only one is ever hit, so
//! counts stay exact.
//!
//! Each site is the whole body of a naked function (`nop; ret`), so the
//! arguments are exactly where the C calling convention puts them (the
//! note's operands name those registers), and the function's own red zone,
//! into which the 6.18 trampoline's `call` writes, holds nothing. The
//! function carries its own CFI (the CFA is `%rsp + 8` throughout: nothing
//! moves the stack pointer), so DWARF unwinders (perf `--call-graph dwarf`,
//! gdb) step through a site; frame-pointer walkers see the caller's chain
//! untouched. The 5-byte `nop` is 8-byte aligned, so it never straddles a
//! page (the 6.18 optimizer refuses such sites).
//!
//! `.stapsdt.base` is placed in the text segment ("ax"): perf computes a
//! site's file offset as if the base and the sites shared a segment, which
//! with LLD's layout (text at p_vaddr - p_offset = 0x1000) put its uprobe
//! mid-instruction when the base sat in a read-only data segment.

use std::sync::atomic::{AtomicU8, Ordering};

use super::symbols::sites;
use super::Probe;

/// The instruction at every 5-byte probe site, `nopl 0x0(%rax,%rax,1)`: the
/// bytes the site asm writes (it needs them as a literal), checked against
/// the notes by tests/test_sites.py and restored in forked children by
/// `fork_repair`.
pub const SITE_NOP: Site = [0x0f, 0x1f, 0x44, 0x00, 0x00];

/// The bytes of a site (`symbols::sites`): the 5-byte one.
pub type Site = [u8; 5];

/// The instruction at every 1-byte probe site, `nop`.
pub const SITE_NOP1: u8 = 0x90;

/// x86_64's `uprobe` system call (Linux 6.18+), which the kernel's uprobe
/// trampoline calls. Called anywhere else it fails with ENXIO and does
/// nothing; kernels without it fail with ENOSYS (335, `uretprobe`, would
/// raise SIGILL: never call that one).
const NR_UPROBE: libc::c_long = 336;

const UNKNOWN: u8 = 0;
const NOP5: u8 = 1;
const NOP1: u8 = 2;
static CHOICE: AtomicU8 = AtomicU8::new(UNKNOWN);

/// True if this kernel optimizes uprobes on 5-byte `nop`s (it has the
/// `uprobe` syscall): the 5-byte sites fire then, the 1-byte sites
/// otherwise. Asked of the kernel once per process.
#[inline(always)]
pub fn optimized() -> bool {
    match CHOICE.load(Ordering::Relaxed) {
        NOP5 => true,
        NOP1 => false,
        _ => choose(),
    }
}

#[cold]
#[inline(never)]
fn choose() -> bool {
    // SAFETY: a system call without arguments that, outside the kernel's
    // uprobe trampoline, only returns an error (ENXIO where it exists,
    // ENOSYS where it does not); it touches no memory of ours.
    let rc = unsafe { libc::syscall(NR_UPROBE) };
    let has = rc == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO);
    CHOICE.store(if has { NOP5 } else { NOP1 }, Ordering::Relaxed);
    has
}

/// One probe's sites: `$probe` is the probe name, `$args` the note's
/// argument string over the C ABI's argument registers. Defines
/// `$fn_name(...)`, which fires the probe (on the site `optimized()`
/// chooses), and the module `$fn_name` holding the two site functions
/// `nop1` and `nop5`.
macro_rules! site_fn {
    ($fn_name:ident, $probe:literal, $args:literal, ($($arg:ident: $ty:ty),*)) => {
        /// Fires the probe of the same name: calls one of its two sites (a
        /// `nop` unless a tracer placed a uprobe on it); the arguments are
        /// read by the tracer from registers.
        #[inline(always)]
        pub fn $fn_name($($arg: $ty),*) {
            if super::optimized() {
                $fn_name::nop5($($arg),*)
            } else {
                $fn_name::nop1($($arg),*)
            }
        }

        pub mod $fn_name {
            /// The probe's 1-byte-`nop` site (the site on kernels that
            /// emulate it after their int3).
            #[unsafe(naked)]
            pub extern "C" fn nop1($($arg: $ty),*) {
                // The body is the site and `ret`: it reads and writes no
                // memory and leaves every register as it was. The note is
                // data emitted into its own section.
                core::arch::naked_asm!(
                    ".cfi_startproc",
                    concat!(".globl __pyusdt_site1_", $probe),
                    concat!(".hidden __pyusdt_site1_", $probe),
                    concat!("__pyusdt_site1_", $probe, ":"),
                    "990: .byte 0x90",
                    "ret",
                    ".cfi_endproc",
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
                    ".pushsection .stapsdt.base, \"axGR\", \"progbits\", .stapsdt.base, comdat",
                    ".weak _.stapsdt.base",
                    ".hidden _.stapsdt.base",
                    "_.stapsdt.base: .byte 0xcc",
                    ".size _.stapsdt.base, 1",
                    ".popsection",
                    ".endif",
                    options(att_syntax)
                )
            }

            /// The probe's 5-byte-`nop` site (the site on kernels with the
            /// optimized uprobe path) and the probe's semaphore.
            #[unsafe(naked)]
            pub extern "C" fn nop5($($arg: $ty),*) {
                // As `nop1`; the semaphore is data in `.probes`.
                core::arch::naked_asm!(
                    ".cfi_startproc",
                    ".balign 8",
                    concat!(".globl __pyusdt_site_", $probe),
                    concat!(".hidden __pyusdt_site_", $probe),
                    concat!("__pyusdt_site_", $probe, ":"),
                    "990: .byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
                    "ret",
                    ".cfi_endproc",
                    ".pushsection .probes, \"aw\", \"progbits\"",
                    concat!(".globl __usdt_sema_pyusdt_", $probe),
                    concat!(".hidden __usdt_sema_pyusdt_", $probe),
                    ".balign 2",
                    concat!("__usdt_sema_pyusdt_", $probe, ":"),
                    ".zero 2",
                    concat!(".type __usdt_sema_pyusdt_", $probe, ", @object"),
                    concat!(".size __usdt_sema_pyusdt_", $probe, ", 2"),
                    ".popsection",
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
                    ".pushsection .stapsdt.base, \"axGR\", \"progbits\", .stapsdt.base, comdat",
                    ".weak _.stapsdt.base",
                    ".hidden _.stapsdt.base",
                    "_.stapsdt.base: .byte 0xcc",
                    ".size _.stapsdt.base, 1",
                    ".popsection",
                    ".endif",
                    options(att_syntax)
                )
            }
        }
    };
}

/// The probe sites, one function each.
pub mod fire {
    // At most six arguments, all in registers: bpftrace 0.17 reads no USDT
    // argument past arg5 ("x86_64 doesn't support arg6").

    site_fn!(py_start, "PY_START", "8@%rdi 8@%rsi -4@%edx -8@%rcx -8@%r8 8@%r9",
        (name: usize, file: usize, line: i32, offset: i64, interp: i64, qualname: usize));
    site_fn!(py_resume, "PY_RESUME", "8@%rdi 8@%rsi -4@%edx -8@%rcx -8@%r8 8@%r9",
        (name: usize, file: usize, line: i32, offset: i64, interp: i64, qualname: usize));
    site_fn!(py_return, "PY_RETURN", "8@%rdi 8@%rsi -4@%edx -8@%rcx 8@%r8 -8@%r9",
        (name: usize, file: usize, line: i32, offset: i64, repr: usize, interp: i64));
    site_fn!(py_yield, "PY_YIELD", "8@%rdi 8@%rsi -4@%edx -8@%rcx 8@%r8 -8@%r9",
        (name: usize, file: usize, line: i32, offset: i64, repr: usize, interp: i64));
    site_fn!(call, "CALL", "8@%rdi 8@%rsi -4@%edx -8@%rcx 8@%r8 -8@%r9",
        (name: usize, file: usize, line: i32, offset: i64, repr: usize, interp: i64));
    site_fn!(line, "LINE", "8@%rdi 8@%rsi -4@%edx -8@%rcx 8@%r8",
        (name: usize, file: usize, line: i32, interp: i64, qualname: usize));
    site_fn!(py_unwind, "PY_UNWIND", "8@%rdi 8@%rsi -4@%edx -8@%rcx 8@%r8 8@%r9",
        (name: usize, file: usize, line: i32, offset: i64, ty: usize, msg: usize));
    site_fn!(py_throw, "PY_THROW", "8@%rdi 8@%rsi -4@%edx -8@%rcx 8@%r8 8@%r9",
        (name: usize, file: usize, line: i32, offset: i64, ty: usize, msg: usize));
    site_fn!(raise, "RAISE", "8@%rdi 8@%rsi -4@%edx -8@%rcx 8@%r8 8@%r9",
        (name: usize, file: usize, line: i32, offset: i64, ty: usize, msg: usize));
    site_fn!(reraise, "RERAISE", "8@%rdi 8@%rsi -4@%edx -8@%rcx 8@%r8 8@%r9",
        (name: usize, file: usize, line: i32, offset: i64, ty: usize, msg: usize));
    site_fn!(exception_handled, "EXCEPTION_HANDLED", "8@%rdi 8@%rsi -4@%edx -8@%rcx 8@%r8 8@%r9",
        (name: usize, file: usize, line: i32, offset: i64, ty: usize, msg: usize));
    site_fn!(c_return, "C_RETURN", "8@%rdi 8@%rsi -4@%edx -8@%rcx 8@%r8 -8@%r9",
        (name: usize, file: usize, line: i32, offset: i64, repr: usize, interp: i64));
    site_fn!(c_raise, "C_RAISE", "8@%rdi 8@%rsi -4@%edx -8@%rcx 8@%r8 -8@%r9",
        (name: usize, file: usize, line: i32, offset: i64, repr: usize, interp: i64));
}

/// Is the 1-byte site of `probe` patched by a tracer (an int3 on its `nop`)?
fn patched1(probe: Probe) -> bool {
    // SAFETY: the first byte of a probe site in this library's mapped text,
    // read (volatile: the kernel rewrites it) and never written.
    unsafe { std::ptr::read_volatile(SITES1[probe as usize]) != SITE_NOP1 }
}

/// Is the 5-byte site of `probe` patched by a tracer (its first byte no
/// longer the `nop`'s: an int3, or on 6.18 a call into the trampoline)?
fn patched5(probe: Probe) -> bool {
    // SAFETY: the first byte of a probe site in this library's mapped text,
    // read (volatile: the kernel rewrites it) and never written.
    unsafe { std::ptr::read_volatile(sites()[probe as usize].cast::<u8>()) != SITE_NOP[0] }
}

/// Is every site of `probe` patched by a tracer? A tracer attaches the
/// probe's locations one after the other.
pub fn patched(probe: Probe) -> bool {
    patched1(probe) && patched5(probe)
}

/// Is the site of `probe` that fires on this kernel (`optimized()`) patched
/// by a tracer? Only that site's uprobe sees an event: a tracer whose uprobe
/// on it is gone (SIGKILLed: the kernel removes its uprobes) receives
/// nothing, whatever the semaphore says.
pub fn armed(probe: Probe) -> bool {
    if optimized() {
        patched5(probe)
    } else {
        patched1(probe)
    }
}

/// The 1-byte sites, in probe order: each is its function's first byte.
const SITES1: [*const u8; Probe::COUNT] = [
    fire::py_start::nop1 as *const u8,
    fire::py_resume::nop1 as *const u8,
    fire::py_return::nop1 as *const u8,
    fire::py_yield::nop1 as *const u8,
    fire::call::nop1 as *const u8,
    fire::line::nop1 as *const u8,
    fire::py_unwind::nop1 as *const u8,
    fire::py_throw::nop1 as *const u8,
    fire::raise::nop1 as *const u8,
    fire::reraise::nop1 as *const u8,
    fire::exception_handled::nop1 as *const u8,
    fire::c_return::nop1 as *const u8,
    fire::c_raise::nop1 as *const u8,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_1_byte_sites_are_the_nop_and_the_choice_is_the_kernels() {
        for site in [
            fire::py_start::nop1 as *const u8,
            fire::line::nop1 as *const u8,
        ] {
            // SAFETY: the first byte of a site function in this binary's text.
            assert_eq!(unsafe { std::ptr::read_volatile(site) }, SITE_NOP1);
        }
        // SAFETY: as in `choose`: outside a trampoline only an error.
        let rc = unsafe { libc::syscall(NR_UPROBE) };
        let errno = std::io::Error::last_os_error().raw_os_error();
        assert_eq!(optimized(), rc == -1 && errno == Some(libc::ENXIO));
        // Firing either way is a plain call that returns.
        fire::line(0, 0, 1, 0, 0);
        // No tracer here: neither site is patched.
        assert!(!armed(Probe::Line) && !patched(Probe::Line));
    }
}
