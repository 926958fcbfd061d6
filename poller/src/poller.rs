//! Pollers: functions a thread runs on every iteration, or every N microseconds.
//!
//! A poller reports whether it found work (`Busy`) or not (`Idle`); the reactor uses that for its
//! busy/idle accounting and its idle back-off. A poller can pause, resume or unregister itself from
//! inside its own function through `Poller::current()`.

use crate::thread::Thread;
use std::cell::{Cell, RefCell};
use std::rc::Rc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollStatus {
    Idle,
    Busy,
}

impl From<bool> for PollStatus {
    fn from(busy: bool) -> Self {
        if busy {
            PollStatus::Busy
        } else {
            PollStatus::Idle
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Running,
    Paused,
    Unregistered,
}

pub(crate) struct PollerInner {
    name: String,
    period_ticks: u64,
    next_run: Cell<u64>,
    state: Cell<State>,
    run_count: Cell<u64>,
    busy_count: Cell<u64>,
    f: RefCell<Box<dyn FnMut() -> PollStatus>>,
}

thread_local! {
    static RUNNING: RefCell<Option<Poller>> = const { RefCell::new(None) };
}

impl PollerInner {
    pub(crate) fn is_unregistered(&self) -> bool {
        self.state.get() == State::Unregistered
    }

    pub(crate) fn is_paused(&self) -> bool {
        self.state.get() == State::Paused
    }

    /// Drops the poller's function (and what it captured) once it is unregistered.
    pub(crate) fn release(&self) {
        if let Ok(mut f) = self.f.try_borrow_mut() {
            *f = Box::new(|| PollStatus::Idle);
        }
    }

    pub(crate) fn period_ticks(&self) -> u64 {
        self.period_ticks
    }

    pub(crate) fn run_if_due(self: &Rc<Self>, now: u64) -> PollStatus {
        if self.state.get() != State::Running {
            return PollStatus::Idle;
        }
        if self.period_ticks > 0 {
            if now < self.next_run.get() {
                return PollStatus::Idle;
            }
            self.next_run.set(now + self.period_ticks);
        }
        // A poller that re-enters itself (through a nested poll) is skipped rather than aliased.
        let Ok(mut f) = self.f.try_borrow_mut() else {
            return PollStatus::Idle;
        };
        let prev = RUNNING.with(|r| {
            r.replace(Some(Poller {
                inner: self.clone(),
            }))
        });
        let status = f();
        RUNNING.with(|r| *r.borrow_mut() = prev);
        self.run_count.set(self.run_count.get() + 1);
        if status == PollStatus::Busy {
            self.busy_count.set(self.busy_count.get() + 1);
        }
        status
    }
}

/// Handle to a registered poller. Dropping the handle does not unregister it (as in SPDK, a
/// poller lives until it is unregistered), so a fire-and-forget poller needs no handle kept.
#[derive(Clone)]
pub struct Poller {
    inner: Rc<PollerInner>,
}

impl Poller {
    /// Registers `f` on the current thread. `period_us == 0` runs it on every iteration.
    /// Returns None when called off any thread.
    pub fn register(
        name: &str,
        period_us: u64,
        f: impl FnMut() -> PollStatus + 'static,
    ) -> Option<Poller> {
        let thread = Thread::current()?;
        Some(Self::register_on(&thread, name, period_us, f))
    }

    /// Registers `f` on `thread` (which must be polled by this OS thread).
    pub fn register_on(
        thread: &Thread,
        name: &str,
        period_us: u64,
        f: impl FnMut() -> PollStatus + 'static,
    ) -> Poller {
        let period_ticks = if period_us == 0 {
            0
        } else {
            crate::time::us_to_ticks(period_us).max(1)
        };
        let inner = Rc::new(PollerInner {
            name: name.to_string(),
            period_ticks,
            next_run: Cell::new(thread.now() + period_ticks),
            state: Cell::new(State::Running),
            run_count: Cell::new(0),
            busy_count: Cell::new(0),
            f: RefCell::new(Box::new(f)),
        });
        thread.inner.pollers.borrow_mut().push(inner.clone());
        thread.publish_poller_counts();
        Poller { inner }
    }

    /// The poller whose function is running right now on this OS thread.
    pub fn current() -> Option<Poller> {
        RUNNING.with(|r| r.borrow().clone())
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn pause(&self) {
        if self.inner.state.get() == State::Running {
            self.inner.state.set(State::Paused);
            Self::republish();
        }
    }

    pub fn resume(&self) {
        if self.inner.state.get() == State::Paused {
            self.inner.state.set(State::Running);
            Self::republish();
        }
    }

    /// Stops the poller for good; its function (and what it captured) is dropped by the owner
    /// thread at the end of the current iteration.
    pub fn unregister(&self) {
        if self.inner.state.replace(State::Unregistered) != State::Unregistered
            && let Some(t) = Thread::current()
        {
            t.inner.pollers_removed.set(true);
        }
    }

    pub fn is_paused(&self) -> bool {
        self.inner.is_paused()
    }

    pub fn is_registered(&self) -> bool {
        !self.inner.is_unregistered()
    }

    /// How many times the poller ran, and how many of those found work.
    pub fn run_counts(&self) -> (u64, u64) {
        (self.inner.run_count.get(), self.inner.busy_count.get())
    }

    fn republish() {
        if let Some(t) = Thread::current() {
            t.publish_poller_counts();
        }
    }
}
