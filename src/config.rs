//! Process-wide configuration from the environment (`PYUSDT_CHECK_MSEC`,
//! `PYUSDT_VERBOSE`) and the verbose log, written straight to fd 2.

use std::sync::OnceLock;

pub const DEFAULT_CHECK_MSEC: u64 = 100;
pub const MAX_CHECK_MSEC: u64 = 10_000;
/// Bound, in bytes and including the terminating NUL, of a value or callable
/// repr passed to a probe. Longer reprs are cut at a UTF-8 boundary and end in "...".
pub const REPR_MAX: usize = 1024;

pub struct Config {
    pub check_msec: u64,
    pub verbose: bool,
}

static CONFIG: OnceLock<Config> = OnceLock::new();

pub fn get() -> &'static Config {
    CONFIG.get_or_init(|| {
        let verbose = match std::env::var("PYUSDT_VERBOSE") {
            Ok(v) => matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            ),
            Err(_) => false,
        };
        let check_msec = match std::env::var("PYUSDT_CHECK_MSEC") {
            Err(_) => DEFAULT_CHECK_MSEC,
            Ok(raw) => match raw.trim().parse::<u64>() {
                Ok(v) if (1..=MAX_CHECK_MSEC).contains(&v) => v,
                _ => {
                    if verbose {
                        write_stderr(&format!(
                            "pyusdt: PYUSDT_CHECK_MSEC={raw:?} is not a whole number from 1 to \
                             {MAX_CHECK_MSEC}; using {DEFAULT_CHECK_MSEC}\n"
                        ));
                    }
                    DEFAULT_CHECK_MSEC
                }
            },
        };
        Config {
            check_msec,
            verbose,
        }
    })
}

/// Log one line to stderr when `PYUSDT_VERBOSE` is on.
pub fn log(msg: impl FnOnce() -> String) {
    if get().verbose {
        let mut line = String::from("pyusdt: ");
        line.push_str(&msg());
        line.push('\n');
        write_stderr(&line);
    }
}

/// One write(2) to fd 2: no Python objects, no locks, safe from any thread.
fn write_stderr(s: &str) {
    let mut bytes = s.as_bytes();
    while !bytes.is_empty() {
        // SAFETY: writes from a valid buffer of the given length.
        let n = unsafe { libc::write(2, bytes.as_ptr().cast(), bytes.len()) };
        if n <= 0 {
            return;
        }
        bytes = &bytes[n as usize..];
    }
}
