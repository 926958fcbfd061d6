//! The bdev layer's per-thread state: completions deferred to the thread's poller, I/Os a module
//! asked to have resubmitted, channels whose waiters can be resumed, and the stall watchdog that
//! says which bdev has I/O outstanding and nothing completing.

use crate::channel::{self, ChannelInner};
use crate::io::BdevIo;
use poller::{PollStatus, Poller, Thread};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::{Rc, Weak};

/// A channel whose I/O makes no progress this long while some is outstanding is reported.
pub const STALL_SECS: u64 = 5;

pub(crate) struct BdevThread {
    completions: RefCell<VecDeque<BdevIo>>,
    /// I/Os their module completed with NoMemory, handed back to it on the next poll.
    resubmits: RefCell<VecDeque<BdevIo>>,
    /// Channels with waiters and free I/Os; `wake_spare` is swapped in while they are served, so
    /// serving never allocates.
    wake: RefCell<Vec<Rc<ChannelInner>>>,
    wake_spare: RefCell<Vec<Rc<ChannelInner>>>,
    /// The clock read once for the whole completion batch being run (0 outside a batch): every
    /// completion and every resubmit from a callback shares it instead of reading the TSC again.
    batch_now: Cell<u64>,
    /// Live channels on this thread; the pollers exist only while there are some, so a thread
    /// that stops doing I/O can exit.
    channels: Cell<usize>,
    /// Channels the stall watchdog looks at.
    watched: RefCell<Vec<Weak<ChannelInner>>>,
    pollers: RefCell<Option<[Poller; 2]>>,
}

impl Default for BdevThread {
    fn default() -> Self {
        BdevThread {
            completions: RefCell::new(VecDeque::with_capacity(1024)),
            resubmits: RefCell::new(VecDeque::new()),
            wake: RefCell::new(Vec::new()),
            wake_spare: RefCell::new(Vec::new()),
            batch_now: Cell::new(0),
            channels: Cell::new(0),
            watched: RefCell::new(Vec::new()),
            pollers: RefCell::new(None),
        }
    }
}

impl BdevThread {
    /// The current thread's state, for a channel being created on it; the pollers are registered
    /// while the thread has channels.
    pub(crate) fn attach_channel(thread: &Thread) -> Rc<BdevThread> {
        let t = thread.local::<BdevThread>();
        t.channels.set(t.channels.get() + 1);
        if t.pollers.borrow().is_none() {
            let weak: Weak<BdevThread> = Rc::downgrade(&t);
            let completions = Poller::register_on(thread, "bdev_completions", 0, move || {
                weak.upgrade().map_or(PollStatus::Idle, |t| t.poll())
            });
            let weak: Weak<BdevThread> = Rc::downgrade(&t);
            let watchdog =
                Poller::register_on(thread, "bdev_stall_watchdog", 1_000_000, move || {
                    if let (Some(t), Some(now)) =
                        (weak.upgrade(), Thread::current().map(|c| c.now()))
                    {
                        t.check_stalls(now);
                    }
                    PollStatus::Idle
                });
            *t.pollers.borrow_mut() = Some([completions, watchdog]);
        }
        t
    }

    /// A channel closed; with the last one gone no I/O can be pending here (each holds its
    /// channel), so the pollers go.
    pub(crate) fn detach_channel(&self) {
        let n = self.channels.get().saturating_sub(1);
        self.channels.set(n);
        if n == 0
            && let Some(pollers) = self.pollers.borrow_mut().take()
        {
            pollers.iter().for_each(Poller::unregister);
        }
    }

    #[inline]
    pub(crate) fn push_completion(&self, io: BdevIo) {
        self.completions.borrow_mut().push_back(io);
    }

    #[inline]
    pub(crate) fn push_resubmit(&self, io: BdevIo) {
        self.resubmits.borrow_mut().push_back(io);
    }

    /// Resume `ch`'s waiters on the next poll (once, however often this is asked).
    #[inline]
    pub(crate) fn schedule_wake(&self, ch: &Rc<ChannelInner>) {
        if !ch.wake_queued.replace(true) {
            self.wake.borrow_mut().push(ch.clone());
        }
    }

    /// Lets the stall watchdog look at `ch` (once per channel).
    pub(crate) fn watch(&self, ch: &Rc<ChannelInner>) {
        if !ch.watched.replace(true) {
            let mut w = self.watched.borrow_mut();
            w.retain(|c| c.strong_count() > 0);
            w.push(Rc::downgrade(ch));
        }
    }

    /// The tick count to stamp an I/O with: the batch's reading inside a completion batch.
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        match self.batch_now.get() {
            0 => poller::time::ticks(),
            t => t,
        }
    }

    /// Runs the completions queued before this call (later ones wait for the next iteration, so a
    /// resubmitting callback cannot keep this loop going forever), hands NoMemory I/Os back to
    /// their modules, then resumes waiters where I/Os came free.
    fn poll(&self) -> PollStatus {
        let n = self.completions.borrow().len();
        if n > 0 {
            self.batch_now.set(poller::time::ticks());
        }
        for _ in 0..n {
            let Some(io) = self.completions.borrow_mut().pop_front() else {
                break;
            };
            channel::finish(io);
        }
        let r = self.resubmits.borrow().len();
        for _ in 0..r {
            let Some(io) = self.resubmits.borrow_mut().pop_front() else {
                break;
            };
            channel::resubmit(io);
        }
        let woke = self.resume_waiters();
        self.batch_now.set(0);
        PollStatus::from(n > 0 || r > 0 || woke)
    }

    fn resume_waiters(&self) -> bool {
        if self.wake.borrow().is_empty() {
            return false;
        }
        let mut ready = std::mem::take(&mut *self.wake_spare.borrow_mut());
        std::mem::swap(&mut ready, &mut *self.wake.borrow_mut());
        for ch in ready.drain(..) {
            ch.wake_queued.set(false);
            if ch.resume_waiters() {
                self.schedule_wake(&ch);
            }
        }
        *self.wake_spare.borrow_mut() = ready;
        true
    }

    /// Logs each channel with I/O outstanding and none completed for `STALL_SECS`, and again
    /// when it moves.
    fn check_stalls(&self, now: u64) {
        let limit = poller::time::us_to_ticks(STALL_SECS * 1_000_000);
        let channels: Vec<Rc<ChannelInner>> = self
            .watched
            .borrow()
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for ch in channels {
            ch.check_stall(now, limit);
        }
    }
}
