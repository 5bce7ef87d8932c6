//! The watcher's protocol against fake interpreters and fake probes
//! (semaphores, patched sites): no Python involved.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::{InFlight, Interp, Sources, Watcher};

struct Fake {
    id: i64,
    main: bool,
    /// Masks applied, in order.
    calls: Mutex<Vec<u32>>,
    /// Fail this many applies (report nothing enabled).
    fail: AtomicUsize,
    /// Hold each apply this long.
    hold: Duration,
    inside: AtomicBool,
    done: AtomicUsize,
}

impl Fake {
    fn new(id: i64, main: bool, hold: Duration) -> Arc<Self> {
        Arc::new(Fake {
            id,
            main,
            calls: Mutex::new(Vec::new()),
            fail: AtomicUsize::new(0),
            hold,
            inside: AtomicBool::new(false),
            done: AtomicUsize::new(0),
        })
    }
    fn calls(&self) -> Vec<u32> {
        self.calls.lock().unwrap().clone()
    }
}

impl Interp for Fake {
    fn id(&self) -> i64 {
        self.id
    }
    fn is_main(&self) -> bool {
        self.main
    }
    fn apply(&self, mask: u32, _proof: &InFlight) -> u32 {
        self.inside.store(true, Ordering::SeqCst);
        self.calls.lock().unwrap().push(mask);
        thread::sleep(self.hold);
        self.inside.store(false, Ordering::SeqCst);
        self.done.fetch_add(1, Ordering::SeqCst);
        if self
            .fail
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            0
        } else {
            mask
        }
    }
}

fn fast() -> Duration {
    Duration::from_millis(5)
}

/// Fake probes: raised semaphores, armed (patched) sites, the trust knob.
struct Probes {
    raised: AtomicU32,
    armed: AtomicU32,
    trust: AtomicBool,
}

impl Probes {
    const fn new() -> Self {
        Probes {
            raised: AtomicU32::new(0),
            armed: AtomicU32::new(0),
            trust: AtomicBool::new(false),
        }
    }
    /// What a tracer attached to exactly `mask` looks like (semaphores
    /// raised by the kernel, sites patched).
    fn store(&self, mask: u32, order: Ordering) {
        self.raised.store(mask, order);
        self.armed.store(mask, order);
    }
}

/// A watcher of its own, polling the fake probes `$probes`.
macro_rules! watcher {
    ($probes:ident) => {{
        static $probes: Probes = Probes::new();
        fn raised() -> u32 {
            $probes.raised.load(Ordering::SeqCst)
        }
        fn armed() -> u32 {
            $probes.armed.load(Ordering::SeqCst)
        }
        fn trust() -> bool {
            $probes.trust.load(Ordering::SeqCst)
        }
        let sources = Sources {
            raised,
            armed,
            trust_semaphores: trust,
        };
        let w: &'static Watcher = Box::leak(Box::new(Watcher::new(sources, fast)));
        (w, &$probes)
    }};
}

fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn applies_the_attached_mask_and_only_changes() {
    let (w, mask) = watcher!(MASK_A);
    let fake = Fake::new(1, true, Duration::ZERO);
    let reg = w.register(fake.clone());
    mask.store(0b101, Ordering::SeqCst);
    eventually("enable", || fake.calls() == [0b101]);
    mask.store(0, Ordering::SeqCst);
    eventually("disable", || fake.calls() == [0b101, 0]);
    thread::sleep(Duration::from_millis(50));
    assert_eq!(fake.calls(), [0b101, 0], "no toggle without a change");
    reg.unregister();
    w.shutdown();
}

#[test]
fn unregister_waits_for_the_toggle_in_flight_and_ends_all_toggles() {
    let (w, mask) = watcher!(MASK_B);
    let fake = Fake::new(1, true, Duration::from_millis(200));
    let reg = w.register(fake.clone());
    mask.store(0b1, Ordering::SeqCst);
    eventually("a toggle in flight", || fake.inside.load(Ordering::SeqCst));
    reg.unregister();
    assert!(
        !fake.inside.load(Ordering::SeqCst),
        "unregister returned mid-toggle"
    );
    assert_eq!(fake.done.load(Ordering::SeqCst), 1);
    mask.store(0b11, Ordering::SeqCst);
    thread::sleep(Duration::from_millis(100));
    assert_eq!(fake.calls(), [0b1], "toggled after unregister");
    assert!(!w.is_registered(1));
    w.shutdown();
}

#[test]
fn a_failed_apply_is_retried() {
    let (w, mask) = watcher!(MASK_C);
    let fake = Fake::new(1, true, Duration::ZERO);
    fake.fail.store(1, Ordering::SeqCst);
    let reg = w.register(fake.clone());
    mask.store(0b10, Ordering::SeqCst);
    eventually("the retry", || fake.calls() == [0b10, 0b10]);
    reg.unregister();
    w.shutdown();
}

#[test]
fn abandon_while_in_flight_keeps_the_state_alive() {
    let (w, mask) = watcher!(MASK_D);
    let fake = Fake::new(1, true, Duration::from_millis(200));
    let reg = w.register(fake.clone());
    mask.store(0b1, Ordering::SeqCst);
    eventually("a toggle in flight", || fake.inside.load(Ordering::SeqCst));
    assert!(!reg.abandon(), "state may not be freed mid-toggle");
    eventually("the toggle to land", || {
        fake.done.load(Ordering::SeqCst) == 1
    });
    mask.store(0b11, Ordering::SeqCst);
    thread::sleep(Duration::from_millis(50));
    assert_eq!(fake.calls(), [0b1]);
    assert!(reg.abandon(), "nothing in flight any more");
    w.shutdown();
}

#[test]
fn every_interpreter_is_served_and_a_second_copy_is_seen() {
    let (w, mask) = watcher!(MASK_E);
    let main = Fake::new(0, true, Duration::ZERO);
    let sub = Fake::new(7, false, Duration::ZERO);
    let r1 = w.register(main.clone());
    let r2 = w.register(sub.clone());
    assert!(w.is_registered(7));
    mask.store(0b1000, Ordering::SeqCst);
    eventually("both", || {
        main.calls() == [0b1000] && sub.calls() == [0b1000]
    });
    r2.unregister();
    r1.unregister();
    w.shutdown();
}

#[test]
fn a_stop_does_not_wait_forever_for_a_stuck_toggle() {
    let (w, mask) = watcher!(MASK_F);
    let fake = Fake::new(1, true, Duration::from_secs(4));
    let _reg = w.register(fake.clone());
    mask.store(0b1, Ordering::SeqCst);
    eventually("a toggle in flight", || fake.inside.load(Ordering::SeqCst));
    // Returns (after its bounded wait) although the toggle is still running.
    assert!(w.stop_and_join(true));
    assert!(fake.inside.load(Ordering::SeqCst));
}

#[test]
fn an_inherited_thread_is_forgotten_and_a_new_one_serves() {
    let (w, mask) = watcher!(MASK_G);
    let fake = Fake::new(0, true, Duration::ZERO);
    let sub = Fake::new(3, false, Duration::ZERO);
    let reg = w.register(fake.clone());
    let _sub = w.register(sub.clone());
    // What a fork leaves: the thread is gone (stop it without telling the
    // control), the handle is the parent's, only the main interpreter stays.
    w.pretend_forked();
    assert!(!super::lock(&w.reg).after_fork_child(false));
    assert!(!w.is_registered(3));
    w.start_or_kick(true);
    mask.store(0b1, Ordering::SeqCst);
    eventually("the new thread's toggle", || fake.calls() == [0b1]);
    assert!(sub.calls().is_empty());
    reg.unregister();
    w.shutdown();
}

#[test]
fn listening_is_raised_and_armed_or_raised_alone_when_trusted() {
    let (w, p) = watcher!(PROBES_L);
    for (raised, armed, trust, want) in [
        (0, 0, false, 0),
        (0b11, 0, false, 0), // semaphores raised early, or by a dead tracer
        (0, 0b11, false, 0), // sites patched, nobody announced (a debugger's int3)
        (0b11, 0b01, false, 0b01),
        (0b11, 0b111, false, 0b11),
        (0b11, 0, true, 0b11),
        (0, 0b11, true, 0),
    ] {
        p.raised.store(raised, Ordering::SeqCst);
        p.armed.store(armed, Ordering::SeqCst);
        p.trust.store(trust, Ordering::SeqCst);
        assert_eq!(w.listening(), want, "{raised:#b} {armed:#b} {trust}");
    }
}

#[test]
fn a_raised_semaphore_enables_only_while_its_site_is_patched() {
    let (w, p) = watcher!(PROBES_H);
    let fake = Fake::new(1, true, Duration::ZERO);
    let reg = w.register(fake.clone());
    // A client that raises the semaphores seconds before placing its uprobes.
    p.raised.store(0b11, Ordering::SeqCst);
    thread::sleep(Duration::from_millis(50)); // ten looks
    assert!(fake.calls().is_empty(), "enabled without a patched site");
    p.armed.store(0b01, Ordering::SeqCst);
    eventually("the patched probe", || fake.calls() == [0b01]);
    p.armed.store(0b11, Ordering::SeqCst);
    eventually("both", || fake.calls() == [0b01, 0b11]);
    // It is SIGKILLed: the kernel removes its uprobes, the semaphores stay.
    p.armed.store(0, Ordering::SeqCst);
    eventually("disable", || fake.calls() == [0b01, 0b11, 0]);
    thread::sleep(Duration::from_millis(50));
    assert_eq!(
        fake.calls(),
        [0b01, 0b11, 0],
        "re-enabled on the stale semaphores"
    );
    // A patched site nobody announced (a debugger's breakpoint) enables nothing.
    p.raised.store(0, Ordering::SeqCst);
    p.armed.store(0b100, Ordering::SeqCst);
    thread::sleep(Duration::from_millis(50));
    assert_eq!(fake.calls(), [0b01, 0b11, 0]);
    reg.unregister();
    w.shutdown();
}

#[test]
fn trusted_semaphores_enable_without_patched_sites() {
    let (w, p) = watcher!(PROBES_T);
    p.trust.store(true, Ordering::SeqCst);
    let fake = Fake::new(1, true, Duration::ZERO);
    let reg = w.register(fake.clone());
    p.raised.store(0b100, Ordering::SeqCst);
    eventually("enable", || fake.calls() == [0b100]);
    p.raised.store(0, Ordering::SeqCst);
    eventually("disable", || fake.calls() == [0b100, 0]);
    reg.unregister();
    w.shutdown();
}
