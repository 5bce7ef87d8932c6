//! The registry of interpreters and the toggle protocol: an interpreter is
//! applied to only between `begin` (which refuses one being removed) and
//! `finish`, and `unregister` waits until no toggle of it is in flight.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{lock, InFlight, Interp, Watcher};

/// After a failed apply, the same mask is tried again this much later.
const RETRY: Duration = Duration::from_secs(1);

struct Entry {
    token: u64,
    id: i64,
    target: Arc<dyn Interp>,
    /// The mask the interpreter reported enabled after its last toggle.
    applied: u32,
    /// When a failed apply may be retried.
    retry_at: Option<Instant>,
    in_flight: bool,
    removed: bool,
}

pub(super) struct Registry {
    entries: Vec<Entry>,
    next_token: u64,
}

impl Registry {
    pub(super) const fn new() -> Self {
        Registry {
            entries: Vec::new(),
            next_token: 1,
        }
    }

    pub(super) fn contains(&self, id: i64) -> bool {
        self.entries.iter().any(|e| e.id == id && !e.removed)
    }

    pub(super) fn add(&mut self, target: Arc<dyn Interp>) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        self.entries.push(Entry {
            token,
            id: target.id(),
            target,
            applied: 0,
            retry_at: None,
            in_flight: false,
            removed: false,
        });
        token
    }

    pub(super) fn is_empty(&self) -> bool {
        self.entries.iter().all(|e| e.removed)
    }

    /// The entries whose applied mask differs from `mask`, now.
    /// The main interpreter comes first: a subinterpreter whose GIL a
    /// thread lost in a fork still holds would stall the watcher there.
    pub(super) fn due(&self, mask: u32, now: Instant) -> Vec<u64> {
        let mut due: Vec<(bool, u64)> = self
            .entries
            .iter()
            .filter(|e| !e.removed && !e.in_flight && e.applied != mask)
            .filter(|e| e.retry_at.is_none_or(|t| now >= t))
            .map(|e| (!e.target.is_main(), e.token))
            .collect();
        due.sort();
        due.into_iter().map(|(_, t)| t).collect()
    }

    /// Marks the entry in flight, unless it is gone or being removed.
    fn begin(&mut self, token: u64) -> Option<(Arc<dyn Interp>, InFlight)> {
        let e = self.entries.iter_mut().find(|e| e.token == token)?;
        if e.removed || e.in_flight {
            return None;
        }
        e.in_flight = true;
        Some((e.target.clone(), InFlight { _private: () }))
    }

    fn finish(&mut self, token: u64, wanted: u32, got: u32) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.token == token) {
            e.in_flight = false;
            e.applied = got;
            e.retry_at = (got != wanted).then(|| Instant::now() + RETRY);
        }
        // An entry abandoned while in flight is dropped once it lands.
        self.entries
            .retain(|e| !(e.removed && !e.in_flight && e.token == token));
    }

    pub(super) fn any_in_flight(&self) -> bool {
        self.entries.iter().any(|e| e.in_flight)
    }

    /// In a forked child, where no toggle runs: after `os.fork` only the
    /// main interpreter survives (CPython deletes the others); after a
    /// C-level fork they all still exist. Returns whether a toggle was in
    /// flight at the fork.
    pub(super) fn after_fork_child(&mut self, keep_subinterpreters: bool) -> bool {
        let was = self.any_in_flight();
        self.entries
            .retain(|e| (keep_subinterpreters || e.target.is_main()) && !e.removed);
        for e in &mut self.entries {
            e.in_flight = false;
        }
        was
    }
}

impl Watcher {
    /// One toggle of one entry: begin, apply outside the lock, finish.
    pub(super) fn toggle(&self, token: u64, mask: u32) {
        let Some((target, proof)) = lock(&self.reg).begin(token) else {
            return;
        };
        let got = target.apply(mask, &proof);
        lock(&self.reg).finish(token, mask, got);
        self.settled.notify_all();
    }
}

/// An interpreter's registration with the watcher.
pub struct Registration {
    watcher: &'static Watcher,
    token: u64,
}

impl Registration {
    pub(super) fn new(watcher: &'static Watcher, token: u64) -> Self {
        Registration { watcher, token }
    }

    /// Removes the interpreter and returns once no toggle of it is in
    /// flight; from then on the watcher never touches it. Call it detached
    /// from the interpreter: a toggle in flight may need its GIL to finish.
    pub fn unregister(&self) {
        let w = self.watcher;
        let mut r = lock(&w.reg);
        if let Some(e) = r.entries.iter_mut().find(|e| e.token == self.token) {
            e.removed = true;
        }
        while r
            .entries
            .iter()
            .any(|e| e.token == self.token && e.in_flight)
        {
            r = w.settled.wait(r).unwrap_or_else(|e| e.into_inner());
        }
        r.entries.retain(|e| e.token != self.token);
    }

    /// Marks the interpreter removed without waiting (when it is freed
    /// without having unregistered). True if nothing is in flight, so its
    /// state may be freed; false if a toggle still runs (then leak it).
    pub fn abandon(&self) -> bool {
        let mut r = lock(&self.watcher.reg);
        let Some(i) = r.entries.iter().position(|e| e.token == self.token) else {
            return true;
        };
        if r.entries[i].in_flight {
            r.entries[i].removed = true;
            false
        } else {
            r.entries.remove(i);
            true
        }
    }
}
