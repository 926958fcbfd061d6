//! A deterministic test harness: several lightweight threads on the calling OS thread, polled one
//! step at a time under a virtual clock, so ordering between threads is chosen by the test instead
//! of by timing (SPDK's ut_multithread is the model).

use crate::thread::{Group, Thread, ThreadHandle, Waker};
use std::sync::Arc;

pub struct Harness {
    threads: Vec<Thread>,
    group: Arc<Group>,
    /// Virtual time in ticks; moved only by `advance_us`.
    now: u64,
}

impl Harness {
    /// `n` threads named `ut_thread<i>`.
    pub fn new(n: usize) -> Harness {
        let group = Group::new();
        let threads = (0..n)
            .map(|i| {
                Thread::new(
                    &format!("ut_thread{i}"),
                    i as u32,
                    &group,
                    Arc::new(Waker::default()),
                )
            })
            .collect();
        Harness {
            threads,
            group,
            now: crate::time::ticks(),
        }
    }

    pub fn thread(&self, i: usize) -> &Thread {
        &self.threads[i]
    }

    pub fn handle(&self, i: usize) -> ThreadHandle {
        self.threads[i].handle()
    }

    pub fn group(&self) -> &Arc<Group> {
        &self.group
    }

    /// Runs `f` with thread `i` current (set-up steps such as opening a descriptor).
    pub fn run_on<R>(&self, i: usize, f: impl FnOnce() -> R) -> R {
        self.threads[i].set_now(self.now);
        self.threads[i].enter(f)
    }

    /// One iteration of thread `i`; whether it did any work.
    pub fn poll_thread(&self, i: usize) -> bool {
        self.threads[i].poll(self.now)
    }

    /// Polls every thread round-robin until a full round does no work; returns the rounds run.
    /// Gives up after `max_rounds` (a live-lock is a test failure, not a hang).
    pub fn poll_until_idle(&self, max_rounds: usize) -> usize {
        for round in 0..max_rounds {
            let mut busy = false;
            for i in 0..self.threads.len() {
                busy |= self.poll_thread(i);
            }
            if !busy {
                return round;
            }
        }
        max_rounds
    }

    /// Moves the virtual clock forward, making timed pollers due.
    pub fn advance_us(&mut self, us: u64) {
        self.now += crate::time::us_to_ticks(us);
    }

    pub fn now(&self) -> u64 {
        self.now
    }
}
