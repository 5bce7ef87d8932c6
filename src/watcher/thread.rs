//! The watcher thread itself: starting it (or waking it), its polling loop,
//! and stopping it with a bounded wait. A thread is known by its generation:
//! it runs while the control's generation is its own, so stopping is bumping
//! the generation, and a handle inherited through `fork()` (whose thread
//! does not exist in the child) is recognised by its pid and never joined.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{lock, Watcher};

/// The longest a stop waits for the thread to end (it may be finishing a
/// toggle that needs an interpreter's GIL); after that it is left to end by
/// itself, never joined.
pub(super) const STOP_WAIT: Duration = Duration::from_secs(2);

/// How long semaphores must stay raised on unpatched sites before the
/// verbose log says so.
const LOG_IGNORED_AFTER: Duration = Duration::from_secs(1);

struct Running {
    handle: JoinHandle<()>,
    pid: i32,
    generation: u64,
}

pub(super) struct Control {
    /// The generation of the thread that should run; bumped by every stop.
    generation: u64,
    /// The highest generation whose thread has ended.
    exited: u64,
    running: Option<Running>,
    kick: bool,
    /// The process is finalizing: no new thread is started.
    shutdown: bool,
    /// Between Python's before-fork and after-fork hooks: no new thread is
    /// started (the fork must see none); `restart` says whether to after.
    pub(super) paused: bool,
    pub(super) restart: bool,
    /// Never enter an interpreter again in this process (a forked child
    /// whose fork interrupted a toggle).
    pub(super) off: bool,
    /// The next thread first waits one interval before looking (a child of a
    /// C-level fork, while CPython may still be re-initialising).
    pub(super) settle: bool,
}

impl Control {
    pub(super) const fn new() -> Self {
        Control {
            generation: 0,
            exited: 0,
            running: None,
            kick: false,
            shutdown: false,
            paused: false,
            restart: false,
            off: false,
            settle: false,
        }
    }

    /// In a forked child: the thread of the inherited handle does not exist
    /// here; forget it without joining (or detaching) it.
    pub(super) fn forget_inherited(&mut self) {
        if let Some(r) = self.running.take() {
            std::mem::forget(r.handle);
            self.exited = self.exited.max(r.generation);
        }
        self.kick = false;
    }
}

fn pid() -> i32 {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() }
}

impl Watcher {
    /// Wakes the running thread, or starts one (unless stopped for good,
    /// paused for a fork, or off).
    pub(super) fn start_or_kick(&'static self, settle: bool) {
        let mut c = lock(&self.ctl);
        if c.shutdown || c.off {
            return;
        }
        if c.paused {
            c.restart = true;
            return;
        }
        if c.running.as_ref().is_some_and(|r| r.pid != pid()) {
            c.forget_inherited();
        }
        if c.running.is_some() {
            c.kick = true;
            self.wake.notify_all();
            return;
        }
        c.generation += 1;
        c.kick = false;
        c.settle |= settle;
        let generation = c.generation;
        match std::thread::Builder::new()
            .name("pyusdt-watcher".into())
            .spawn(move || self.run(generation))
        {
            Ok(handle) => {
                c.running = Some(Running {
                    handle,
                    pid: pid(),
                    generation,
                })
            }
            Err(e) => crate::config::log(|| format!("cannot start the watcher thread: {e}")),
        }
    }

    /// Stops the thread and joins it, waiting at most `STOP_WAIT`; true if
    /// a thread was running. `shutdown`: never start another.
    pub(super) fn stop_and_join(&'static self, shutdown: bool) -> bool {
        let mut c = lock(&self.ctl);
        c.shutdown |= shutdown;
        c.generation += 1;
        self.wake.notify_all();
        let Some(r) = c.running.take() else {
            return false;
        };
        if r.pid != pid() {
            std::mem::forget(r.handle);
            return false;
        }
        let deadline = Instant::now() + STOP_WAIT;
        while c.exited < r.generation {
            let now = Instant::now();
            if now >= deadline {
                crate::config::log(|| "the watcher did not stop in time; left running".into());
                return true; // dropping the handle detaches the thread
            }
            c = self
                .wake
                .wait_timeout(c, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        drop(c);
        let _ = r.handle.join();
        true
    }

    fn run(&'static self, generation: u64) {
        let interval = (self.interval)();
        let mut c = lock(&self.ctl);
        if std::mem::take(&mut c.settle) {
            c = self
                .wake
                .wait_timeout(c, interval)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        // Raised semaphores whose sites are not patched: which, since when,
        // and whether that was logged (once it lasts `LOG_IGNORED_AFTER`: a
        // tracer attaching or detaching passes through it briefly).
        let mut ignored = (0, Instant::now(), false);
        loop {
            if c.generation != generation || c.off {
                break;
            }
            drop(c);
            let mask = self.sources.listening();
            if crate::config::get().verbose {
                let now = (self.sources.raised)() & !mask;
                if now != ignored.0 {
                    ignored = (now, Instant::now(), false);
                } else if now != 0 && !ignored.2 && ignored.1.elapsed() >= LOG_IGNORED_AFTER {
                    ignored.2 = true;
                    crate::config::log(|| {
                        format!(
                            "semaphores raised but sites not patched, not enabled: {}",
                            crate::sites::names(now).join(", ")
                        )
                    });
                }
            }
            let due = lock(&self.reg).due(mask, Instant::now());
            for token in due {
                self.toggle(token, mask);
            }
            c = lock(&self.ctl);
            if c.generation == generation && !c.kick {
                c = self
                    .wake
                    .wait_timeout(c, interval)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            c.kick = false;
        }
        c.exited = c.exited.max(generation);
        self.wake.notify_all();
    }
}

#[cfg(test)]
impl Watcher {
    /// Makes the control look inherited through a fork: the thread is
    /// stopped behind its back and its handle claims another pid.
    pub(super) fn pretend_forked(&'static self) {
        let generation = {
            let mut c = lock(&self.ctl);
            c.generation += 1;
            self.wake.notify_all();
            c.running.as_ref().map(|r| r.generation)
        };
        if let Some(g) = generation {
            let mut c = lock(&self.ctl);
            while c.exited < g {
                c = self.wake.wait(c).unwrap_or_else(|e| e.into_inner());
            }
            if let Some(r) = c.running.as_mut() {
                r.pid = -1;
            }
        }
    }
}
