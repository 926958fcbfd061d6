//! Runtime behaviour under the deterministic harness and on real reactors.

use poller::{Harness, IoDevice, PollStatus, Poller, ReactorOptions, Thread};
use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

#[test]
fn messages_run_in_order_on_the_target_thread() {
    let h = Harness::new(2);
    let log = Arc::new(Mutex::new(Vec::new()));
    for i in 0..5 {
        let log = log.clone();
        h.handle(1).send_msg(move || {
            let t = Thread::current().unwrap();
            log.lock().unwrap().push((t.name().to_string(), i));
        });
    }
    // Nothing runs until thread 1 is polled; thread 0 never sees the messages.
    assert!(!h.poll_thread(0));
    assert!(log.lock().unwrap().is_empty());
    assert!(h.poll_thread(1));
    let got = log.lock().unwrap().clone();
    assert_eq!(
        got,
        (0..5)
            .map(|i| ("ut_thread1".to_string(), i))
            .collect::<Vec<_>>()
    );
}

#[test]
fn raw_messages_need_no_allocation() {
    static HITS: AtomicUsize = AtomicUsize::new(0);
    fn bump(n: usize) {
        HITS.fetch_add(n, Ordering::SeqCst);
    }
    let h = Harness::new(1);
    h.handle(0).send_raw(bump, 7);
    h.poll_until_idle(10);
    assert_eq!(HITS.load(Ordering::SeqCst), 7);
}

#[test]
fn poller_pauses_and_unregisters_itself() {
    let h = Harness::new(1);
    let runs = Rc::new(Cell::new(0));
    let r = runs.clone();
    let p = h.run_on(0, || {
        Poller::register("self_pausing", 0, move || {
            r.set(r.get() + 1);
            let me = Poller::current().unwrap();
            if r.get() == 2 {
                me.pause();
            }
            if r.get() == 3 {
                me.unregister();
            }
            PollStatus::Busy
        })
        .unwrap()
    });
    h.poll_thread(0);
    h.poll_thread(0);
    assert_eq!(runs.get(), 2);
    assert!(p.is_paused());
    h.poll_thread(0);
    assert_eq!(runs.get(), 2, "a paused poller does not run");
    h.run_on(0, || p.resume());
    h.poll_thread(0);
    assert_eq!(runs.get(), 3);
    assert!(!p.is_registered());
    h.poll_thread(0);
    assert_eq!(runs.get(), 3, "an unregistered poller never runs again");
    assert_eq!(
        h.thread(0)
            .handle()
            .counters()
            .active_pollers
            .load(Ordering::Relaxed),
        0
    );
}

#[test]
fn timed_poller_follows_the_virtual_clock() {
    let mut h = Harness::new(1);
    let runs = Rc::new(Cell::new(0));
    let r = runs.clone();
    h.run_on(0, || {
        Poller::register("every_100us", 100, move || {
            r.set(r.get() + 1);
            PollStatus::Idle
        })
    });
    h.poll_thread(0);
    assert_eq!(runs.get(), 0, "not due yet");
    h.advance_us(99);
    h.poll_thread(0);
    assert_eq!(runs.get(), 0);
    h.advance_us(2);
    h.poll_thread(0);
    assert_eq!(runs.get(), 1);
    h.poll_thread(0);
    assert_eq!(runs.get(), 1, "runs once per period");
    h.advance_us(100);
    h.poll_thread(0);
    assert_eq!(runs.get(), 2);
}

struct Ctx {
    thread: String,
    seen: Cell<u32>,
    destroyed: Arc<AtomicUsize>,
}

impl Drop for Ctx {
    fn drop(&mut self) {
        self.destroyed.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn channels_are_per_thread_shared_and_destroyed_with_the_last_reference() {
    let h = Harness::new(2);
    let created = Arc::new(AtomicUsize::new(0));
    let destroyed = Arc::new(AtomicUsize::new(0));
    let (c, d) = (created.clone(), destroyed.clone());
    let dev = IoDevice::new("dev", move || {
        c.fetch_add(1, Ordering::SeqCst);
        Ok(Ctx {
            thread: Thread::current().unwrap().name().into(),
            seen: Cell::new(0),
            destroyed: d.clone(),
        })
    });
    let a1 = h.run_on(0, || dev.get_channel().unwrap());
    let a2 = h.run_on(0, || dev.get_channel().unwrap());
    let b = h.run_on(1, || dev.get_channel().unwrap());
    assert_eq!(created.load(Ordering::SeqCst), 2, "one context per thread");
    assert!(Rc::ptr_eq(a1.rc(), a2.rc()));
    assert_eq!(a1.thread, "ut_thread0");
    assert_eq!(b.thread, "ut_thread1");
    drop(a1);
    assert_eq!(destroyed.load(Ordering::SeqCst), 0);
    drop(a2);
    assert_eq!(destroyed.load(Ordering::SeqCst), 1);
    // A new request after destruction creates a fresh context.
    let a3 = h.run_on(0, || dev.get_channel().unwrap());
    assert_eq!(created.load(Ordering::SeqCst), 3);
    drop((a3, b));
    assert_eq!(destroyed.load(Ordering::SeqCst), 3);
}

#[test]
fn for_each_channel_visits_every_thread_then_completes_on_the_caller() {
    let h = Harness::new(3);
    let dev = IoDevice::new("walk", || {
        Ok(Ctx {
            thread: Thread::current().unwrap().name().into(),
            seen: Cell::new(0),
            destroyed: Arc::new(AtomicUsize::new(0)),
        })
    });
    // Channels on threads 0 and 2 only.
    let c0 = h.run_on(0, || dev.get_channel().unwrap());
    let c2 = h.run_on(2, || dev.get_channel().unwrap());
    let visited = Arc::new(Mutex::new(Vec::new()));
    let done_on = Arc::new(Mutex::new(None));
    let (v, d) = (visited.clone(), done_on.clone());
    h.run_on(1, || {
        dev.for_each_channel(
            move |ch| {
                ch.seen.set(ch.seen.get() + 1);
                v.lock().unwrap().push(ch.thread.clone());
            },
            move || *d.lock().unwrap() = Some(Thread::current().unwrap().name().to_string()),
        )
    });
    // Step by step: the walk advances only as each thread is polled, in thread order.
    h.poll_thread(2);
    assert!(
        visited.lock().unwrap().is_empty(),
        "thread 0 is visited first"
    );
    h.poll_thread(0);
    assert_eq!(*visited.lock().unwrap(), vec!["ut_thread0"]);
    h.poll_thread(1);
    h.poll_thread(2);
    assert_eq!(*visited.lock().unwrap(), vec!["ut_thread0", "ut_thread2"]);
    assert!(done_on.lock().unwrap().is_none());
    h.poll_thread(1);
    assert_eq!(done_on.lock().unwrap().as_deref(), Some("ut_thread1"));
    assert_eq!((c0.seen.get(), c2.seen.get()), (1, 1));
}

#[test]
fn reactors_run_threads_on_two_cores_and_stop() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let opts = ReactorOptions {
        cpumask: poller::CpuMask::parse("0x3").unwrap(),
        idle_backoff: true,
        pin: true,
    };
    poller::run(opts, move || {
        let app = Thread::current().unwrap();
        s.lock()
            .unwrap()
            .push(("start".to_string(), app.handle().core()));
        let worker = poller::spawn_thread("worker", Some(1)).unwrap();
        let s2 = s.clone();
        let app_h = app.handle();
        worker.send_msg(move || {
            let cpu = nix::sched::sched_getcpu().unwrap_or(99) as u32;
            s2.lock().unwrap().push(("worker".to_string(), cpu));
            app_h.send_msg(poller::stop);
        });
    })
    .unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen[0], ("start".to_string(), 0));
    assert_eq!(
        seen[1],
        ("worker".to_string(), 1),
        "the worker runs pinned on core 1"
    );
}
