//! Process-wide configuration from the environment (`PYUSDT_CHECK_MSEC`,
//! `PYUSDT_REPR_MAX`, `PYUSDT_REPR`, `PYUSDT_VERBOSE`) and the verbose log,
//! written straight to fd 2.

use std::sync::OnceLock;

pub const DEFAULT_CHECK_MSEC: u64 = 100;
pub const MAX_CHECK_MSEC: u64 = 10_000;
/// Default bound, in bytes and including the terminating NUL, of a value or
/// callable repr passed to a probe (`PYUSDT_REPR_MAX`). Longer reprs are cut at
/// a UTF-8 boundary and end in "...". bpftrace 0.17's `str()` reads at most 200.
pub const DEFAULT_REPR_MAX: usize = 256;
pub const MIN_REPR_MAX: usize = 16;
pub const MAX_REPR_MAX: usize = 65_536;

/// Which values get their `repr()` called (`PYUSDT_REPR`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ReprMode {
    /// `safe` (the default): no Python code runs for a repr; values whose
    /// `repr()` could run some get `object.__repr__`'s text (`object_repr`).
    Safe,
    /// `full`: `repr()` of every value, user-defined `__repr__` included.
    Full,
}

pub struct Config {
    pub check_msec: u64,
    pub repr_max: usize,
    pub repr_mode: ReprMode,
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
        let check_msec = setting(
            "PYUSDT_CHECK_MSEC",
            1,
            MAX_CHECK_MSEC,
            DEFAULT_CHECK_MSEC,
            verbose,
        );
        let repr_max = setting(
            "PYUSDT_REPR_MAX",
            MIN_REPR_MAX as u64,
            MAX_REPR_MAX as u64,
            DEFAULT_REPR_MAX as u64,
            verbose,
        ) as usize;
        let repr_mode = repr_mode(verbose);
        Config {
            check_msec,
            repr_max,
            repr_mode,
            verbose,
        }
    })
}

/// A whole number from the environment within `min..=max`; otherwise (one
/// verbose line) the default.
fn setting(name: &str, min: u64, max: u64, default: u64, verbose: bool) -> u64 {
    let Ok(raw) = std::env::var(name) else {
        return default;
    };
    match raw.trim().parse::<u64>() {
        Ok(v) if (min..=max).contains(&v) => v,
        _ => {
            if verbose {
                write_stderr(&format!(
                    "pyusdt: {name}={raw:?} is not a whole number from {min} to {max}; using {default}\n"
                ));
            }
            default
        }
    }
}

/// `PYUSDT_REPR`: `safe` or `full` (case and surrounding blanks ignored);
/// anything else (one verbose line) is the default, `safe`.
fn repr_mode(verbose: bool) -> ReprMode {
    let Ok(raw) = std::env::var("PYUSDT_REPR") else {
        return ReprMode::Safe;
    };
    match raw.trim().to_ascii_lowercase().as_str() {
        "safe" => ReprMode::Safe,
        "full" => ReprMode::Full,
        _ => {
            if verbose {
                write_stderr(&format!(
                    "pyusdt: PYUSDT_REPR={raw:?} is not safe or full; using safe\n"
                ));
            }
            ReprMode::Safe
        }
    }
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
