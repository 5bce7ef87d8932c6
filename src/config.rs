//! Process-wide configuration from the environment (`PYUSDT_CHECK_MSEC`,
//! `PYUSDT_REPR_MAX`, `PYUSDT_REPR`, `PYUSDT_FILTER`, `PYUSDT_VERBOSE`,
//! `PYUSDT_TRUST_SEMAPHORES`), the
//! filter's glob matching, and the verbose log, written straight to fd 2.

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
    /// `PYUSDT_FILTER`: only code that matches is traced; `None`: all code.
    pub filter: Option<Filter>,
    pub verbose: bool,
    /// `PYUSDT_TRUST_SEMAPHORES`: a raised semaphore alone enables its probe,
    /// patched site or not (for clients that raise semaphores without
    /// uprobes, and for tests that toggle semaphores by hand).
    pub trust_semaphores: bool,
}

/// `PYUSDT_FILTER`: comma-separated globs (`*` any run of characters, `?`
/// one character, both across `.` and `/`). A code object is traced when
/// some glob matches its module (`__name__` of its globals), its
/// `co_qualname`, `module.qualname`, or its `co_filename`.
#[derive(Debug, PartialEq, Eq)]
pub struct Filter {
    globs: Vec<Vec<u8>>,
}

impl Filter {
    /// The filter of a `PYUSDT_FILTER` value; `None` if it has no glob.
    pub fn parse(raw: &str) -> Option<Filter> {
        let globs: Vec<Vec<u8>> = raw
            .split(',')
            .map(str::trim)
            .filter(|g| !g.is_empty())
            .map(|g| g.as_bytes().to_vec())
            .collect();
        (!globs.is_empty()).then_some(Filter { globs })
    }

    /// Is code of `module` (empty if unknown), `qualname` and `file` traced?
    pub fn matches(&self, module: &[u8], qualname: &[u8], file: &[u8]) -> bool {
        let mut dotted = Vec::with_capacity(module.len() + 1 + qualname.len());
        if !module.is_empty() {
            dotted.extend_from_slice(module);
            dotted.push(b'.');
            dotted.extend_from_slice(qualname);
        }
        self.globs.iter().any(|g| {
            (!module.is_empty() && (glob(g, module) || glob(g, &dotted)))
                || glob(g, qualname)
                || glob(g, file)
        })
    }
}

/// Does `pat` (`*`, `?`, other bytes literal) match all of `text`?
fn glob(pat: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut back: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pat.len() && (pat[p] == b'?' || pat[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pat.len() && pat[p] == b'*' {
            back = Some((p, t));
            p += 1;
        } else if let Some((bp, bt)) = back {
            p = bp + 1;
            t = bt + 1;
            back = Some((bp, bt + 1));
        } else {
            return false;
        }
    }
    pat[p..].iter().all(|&c| c == b'*')
}

static CONFIG: OnceLock<Config> = OnceLock::new();

pub fn get() -> &'static Config {
    CONFIG.get_or_init(|| {
        let verbose = flag("PYUSDT_VERBOSE");
        let trust_semaphores = flag("PYUSDT_TRUST_SEMAPHORES");
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
        let filter = std::env::var("PYUSDT_FILTER")
            .ok()
            .and_then(|v| Filter::parse(&v));
        Config {
            check_msec,
            repr_max,
            repr_mode,
            filter,
            verbose,
            trust_semaphores,
        }
    })
}

/// An on/off setting: `1`, `true`, `yes` or `on` (any case) is on; anything
/// else, or unset, off.
fn flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob(b"*", b""));
        assert!(glob(b"a*c", b"abbbc"));
        assert!(glob(b"a?c", b"abc"));
        assert!(!glob(b"a?c", b"ac"));
        assert!(glob(b"*/app.py", b"/srv/x/app.py"));
        assert!(!glob(b"*/app.py", b"/srv/x/app.pyc"));
        assert!(glob(b"*a*b", b"xaxxab"));
    }

    #[test]
    fn filter_matches_module_qualname_and_file() {
        assert_eq!(Filter::parse(" , "), None);
        let f = Filter::parse("mypkg.*, Handler.get ,*/hot.py").unwrap();
        assert!(f.matches(b"mypkg.views", b"index", b"/x/views.py"));
        assert!(f.matches(b"mypkg", b"main", b"/x/__init__.py"));
        assert!(f.matches(b"other", b"Handler.get", b"/x/o.py"));
        assert!(f.matches(b"", b"f", b"/srv/hot.py"));
        assert!(!f.matches(b"other", b"Handler.post", b"/x/o.py"));
        assert!(!f.matches(b"", b"mypkg", b"/x/o.py"));
    }
}
