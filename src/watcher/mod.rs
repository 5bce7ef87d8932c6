//! Layer 3, the process-wide watcher: one thread per process looks twice
//! every `PYUSDT_CHECK_MSEC` ms at which probes someone listens to (their
//! semaphore raised and the site that fires patched, see `Sources`) and,
//! when that set changes, has every registered interpreter apply it.
//! It knows interpreters only through `Interp` (is it the main one; apply a
//! mask) and the probes only through `Sources` (three functions), so its
//! protocol is tested with fake interpreters and fake probes (`cargo test`).
//!
//! The protocol, owned by `Registry` (registry.rs), which makes the wrong
//! order impossible:
//! - an interpreter is applied to only through `Interp::apply`, which needs
//!   an `InFlight` proof that only `Registry::begin` gives out, and `begin`
//!   refuses an entry that is being removed;
//! - `Registration::unregister` marks the entry removed and returns only
//!   once no toggle of it is in flight: after it, the watcher never touches
//!   that interpreter again.
//!
//! Locks (native, never held while taking a GIL or running Python code, so a
//! Python thread only ever waits for them briefly): `ctl` (the thread's
//! control) before `reg` (the registry) when both are taken, which only the
//! fork handlers do (fork.rs).

mod fork;
mod registry;
mod thread;

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

pub use fork::{
    after_python_fork_child, after_python_fork_parent, before_python_fork,
    install as install_fork_handlers,
};
pub use registry::Registration;

use registry::Registry;
use thread::Control;

/// What the watcher knows of an interpreter.
pub trait Interp: Send + Sync {
    /// The interpreter's id (one registration per interpreter).
    fn id(&self) -> i64;
    /// The main interpreter is the only one a forked child keeps.
    fn is_main(&self) -> bool;
    /// Makes the interpreter's enabled probes match `mask` and returns the
    /// mask that is enabled now (it differs when a step failed; the watcher
    /// retries later). Only callable with the proof that the interpreter is
    /// registered, not being removed, and marked in flight.
    fn apply(&self, mask: u32, proof: &InFlight) -> u32;
}

/// Proof that a toggle of an interpreter is in flight (see `Registry::begin`).
pub struct InFlight {
    _private: (),
}

/// What the watcher reads of the probes (bit masks, bit i = `Probe::ALL[i]`).
pub struct Sources {
    /// The probes whose semaphore is raised: a tracer announced them (the
    /// kernel counts a uprobe attached with the semaphore's offset; bcc
    /// raises them itself, seconds early, and leaves them raised when it is
    /// SIGKILLed).
    pub raised: fn() -> u32,
    /// The probes whose site that fires here is patched (an int3, or the
    /// 6.18 trampoline's call): a tracer receives their events. The kernel
    /// removes a dead tracer's uprobes, so this follows who is alive.
    pub armed: fn() -> u32,
    /// `PYUSDT_TRUST_SEMAPHORES`: a raised semaphore alone is enough.
    pub trust_semaphores: fn() -> bool,
}

impl Sources {
    /// The probes someone listens to: raised and armed (raised alone when
    /// semaphores are trusted). A probe is enabled only while it is in here.
    pub fn listening(&self) -> u32 {
        let raised = (self.raised)();
        if raised == 0 || (self.trust_semaphores)() {
            raised
        } else {
            raised & (self.armed)()
        }
    }
}

/// The watcher: registry, thread control and the sources it polls.
pub struct Watcher {
    reg: Mutex<Registry>,
    /// Notified when a toggle finishes.
    settled: Condvar,
    ctl: Mutex<Control>,
    /// Wakes the thread (kick, stop) and whoever waits for it to exit.
    wake: Condvar,
    /// The probes, read at every look.
    sources: Sources,
    /// The time between two looks at the mask.
    interval: fn() -> Duration,
}

/// The process's watcher, polling the real semaphores and sites.
pub static WATCHER: Watcher = Watcher::new(
    Sources {
        raised: crate::sites::attached_mask,
        armed: crate::sites::armed_mask,
        trust_semaphores,
    },
    poll_interval,
);

fn trust_semaphores() -> bool {
    crate::config::get().trust_semaphores
}

/// Two looks per interval: a tracer that attaches (or dies) is then noticed
/// within `PYUSDT_CHECK_MSEC` (plus the switch itself). A look is thirteen
/// volatile reads of semaphores, and while one is raised thirteen of sites.
fn poll_interval() -> Duration {
    Duration::from_micros(crate::config::get().check_msec * 500)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic cannot happen while these are held (panic=abort), so poisoning
    // carries no information: take the data either way.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Watcher {
    pub const fn new(sources: Sources, interval: fn() -> Duration) -> Self {
        Watcher {
            reg: Mutex::new(Registry::new()),
            settled: Condvar::new(),
            ctl: Mutex::new(Control::new()),
            wake: Condvar::new(),
            sources,
            interval,
        }
    }

    /// The probes someone listens to right now (what the watcher enables).
    pub fn listening(&self) -> u32 {
        self.sources.listening()
    }

    /// Is an interpreter with this id registered already?
    pub fn is_registered(&self, id: i64) -> bool {
        lock(&self.reg).contains(id)
    }

    /// Adds an interpreter and makes sure the watcher runs and looks at it
    /// now. The interpreter must stay valid until `unregister` returns (or
    /// `abandon` returned true).
    pub fn register(&'static self, target: std::sync::Arc<dyn Interp>) -> Registration {
        let token = lock(&self.reg).add(target);
        self.start_or_kick(false);
        Registration::new(self, token)
    }

    /// Stops the watcher for good (the main interpreter's exit), waiting a
    /// bounded time for the thread to end.
    pub fn shutdown(&'static self) {
        self.stop_and_join(true);
    }
}

#[cfg(test)]
mod tests;
