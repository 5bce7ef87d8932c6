//! Probe sites in a forked child. Linux 6.18 optimizes a uprobe on a 5-byte
//! `nop` by rewriting that `nop` into a `call` to a `[uprobes-trampoline]`
//! page, and `fork()` does not copy that page into the child: a child forked
//! while a tracer is attached would crash at its first probe hit. A
//! `pthread_atfork` child handler, which runs inside every `fork()` (Python's
//! or a C program's) before the child runs anything else, writes the `nop`s
//! back (through `/proc/self/mem`, as a debugger pokes code); if it cannot,
//! it switches the probes off in that process, which then stays untraced
//! but safe. Only the 5-byte sites are repaired: the kernel never rewrites
//! a 1-byte site into anything but its own int3, which it handles in the
//! child as in the parent.

use std::sync::Once;

use super::{switch_off, symbols, SITE_NOP};

/// The kernel's breakpoint (a uprobe not yet optimized): it handles it in
/// the child itself.
const INT3: u8 = 0xcc;

static INSTALL: Once = Once::new();

/// Registers the child handler, once per process.
pub fn install() {
    INSTALL.call_once(|| {
        // SAFETY: registers a handler of this library, which CPython never
        // unloads; the handler only makes async-signal-safe calls.
        let rc = unsafe { libc::pthread_atfork(None, None, Some(after_fork_child)) };
        if rc != 0 {
            // Without the handler a child could crash: no probes at all then.
            switch_off();
            crate::config::log(|| format!("pthread_atfork failed ({rc}): probes switched off"));
        }
    });
}

extern "C" fn after_fork_child() {
    let mut mem = -1;
    for site in symbols::sites() {
        // SAFETY: `site` is the address of a probe site's 5 bytes in this
        // library's text, which is mapped and readable.
        let now = unsafe { std::ptr::read_volatile(site) };
        if now == SITE_NOP || now[0] == INT3 {
            continue;
        }
        if mem < 0 {
            // SAFETY: an async-signal-safe system call on a constant path.
            mem = unsafe { libc::open(c"/proc/self/mem".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        }
        if !restore(mem, site) {
            switch_off();
        }
    }
    if mem >= 0 {
        // SAFETY: closes the descriptor opened above.
        unsafe { libc::close(mem) };
    }
}

/// Writes the nop back at `site` through `mem` (`/proc/self/mem`, or -1 if
/// it could not be opened); false if that is not possible here.
fn restore(mem: libc::c_int, site: *const [u8; 5]) -> bool {
    if mem < 0 {
        return false;
    }
    // SAFETY: pwrite is an async-signal-safe system call; the write goes to
    // this process's own text, of which only the forking thread runs (in the
    // child, inside fork()), and not this site.
    unsafe {
        let n = libc::pwrite(
            mem,
            SITE_NOP.as_ptr().cast(),
            SITE_NOP.len(),
            site as libc::off_t,
        );
        n == SITE_NOP.len() as isize && std::ptr::read_volatile(site) == SITE_NOP
    }
}
