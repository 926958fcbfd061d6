//! `BdevIo`: one block I/O, from a per-thread pool, owned by exactly one party at a time.
//!
//! The submitter gets it from the pool, the bdev layer hands it to the module, the module completes
//! it, the layer hands it back to the submitter's callback, and dropping it returns it to the pool.
//! Ownership moves with the value, so no reference counting or locking is needed per I/O and a
//! lost or doubly-completed I/O is impossible to write in safe code.
//!
//! Completions are always deferred to the thread's completion poller: a module may complete inside
//! `submit_request` and the caller's callback still never runs inside its own submit call.

use crate::channel::ChannelInner;
use crate::iov::IoVec;
use poller::{PollStatus, Poller, Thread};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::{Rc, Weak};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IoType {
    Read,
    Write,
    Flush,
    Unmap,
    WriteZeroes,
    Reset,
}

impl IoType {
    pub const ALL: [IoType; 6] = [
        IoType::Read,
        IoType::Write,
        IoType::Flush,
        IoType::Unmap,
        IoType::WriteZeroes,
        IoType::Reset,
    ];

    /// SPDK's key in `supported_io_types`.
    pub fn name(self) -> &'static str {
        match self {
            IoType::Read => "read",
            IoType::Write => "write",
            IoType::Flush => "flush",
            IoType::Unmap => "unmap",
            IoType::WriteZeroes => "write_zeroes",
            IoType::Reset => "reset",
        }
    }

    pub(crate) fn bit(self) -> u32 {
        1 << self as u32
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoStatus {
    Pending,
    Success,
    /// Failed with an errno (EIO unless the module knows better).
    Failed(i32),
    /// The module ran out of a resource: the layer resubmits the I/O once another one completes.
    NoMemory,
    Aborted,
}

/// Per-I/O flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoFlags {
    /// Force unit access: the write is durable when it completes.
    pub fua: bool,
}

/// What the submitter gets back with its completion: nothing, a word (a task index), or an I/O it
/// parked here (a vbdev's parent I/O travels with its child this way).
pub enum IoCtx {
    None,
    Word(usize),
    Io(BdevIo),
}

/// Completion callback: the finished I/O (drop it to recycle), success, and the submitter's context.
pub type IoCallback = fn(io: BdevIo, success: bool, ctx: IoCtx);

pub(crate) struct IoData {
    pub(crate) io_type: IoType,
    pub(crate) offset_blocks: u64,
    pub(crate) num_blocks: u64,
    pub(crate) flags: IoFlags,
    pub(crate) iovs: Vec<IoVec>,
    pub(crate) status: IoStatus,
    pub(crate) cb: Option<IoCallback>,
    pub(crate) ctx: IoCtx,
    /// The bdev-layer channel it was submitted on; None while pooled.
    pub(crate) ch: Option<Rc<ChannelInner>>,
    pub(crate) submit_tick: u64,
    /// Split children skip the statistics (their parent counts once).
    pub(crate) is_child: bool,
    /// Next block a split parent hands to a child.
    pub(crate) split_next: u64,
    pub(crate) split_failed: Option<i32>,
    /// Scratch space for the module that executes the I/O.
    pub driver_ctx: [u64; 4],
}

/// A block I/O. Dropping it returns it to its thread's pool.
pub struct BdevIo(Option<Box<IoData>>);

impl BdevIo {
    #[inline(always)]
    pub(crate) fn data(&self) -> &IoData {
        match &self.0 {
            Some(d) => d,
            None => unreachable!("BdevIo used after release"),
        }
    }

    #[inline(always)]
    pub(crate) fn data_mut(&mut self) -> &mut IoData {
        match &mut self.0 {
            Some(d) => d,
            None => unreachable!("BdevIo used after release"),
        }
    }

    pub fn io_type(&self) -> IoType {
        self.data().io_type
    }

    pub fn offset_blocks(&self) -> u64 {
        self.data().offset_blocks
    }

    pub fn num_blocks(&self) -> u64 {
        self.data().num_blocks
    }

    pub fn flags(&self) -> IoFlags {
        self.data().flags
    }

    pub fn iovs(&self) -> &[IoVec] {
        &self.data().iovs
    }

    pub fn block_size(&self) -> u32 {
        self.data().ch.as_ref().map(|c| c.block_size).unwrap_or(512)
    }

    /// Byte offset and length on the bdev.
    pub fn byte_range(&self) -> (u64, u64) {
        let bs = self.block_size() as u64;
        (self.offset_blocks() * bs, self.num_blocks() * bs)
    }

    pub fn status(&self) -> IoStatus {
        self.data().status
    }

    pub fn driver_ctx(&mut self) -> &mut [u64; 4] {
        &mut self.data_mut().driver_ctx
    }

    /// `driver_ctx`, read-only.
    pub fn driver_ctx_ref(&self) -> &[u64; 4] {
        &self.data().driver_ctx
    }

    /// The module's per-thread channel this I/O was submitted to.
    pub fn module_channel<T: 'static>(&self) -> Option<Rc<T>> {
        let ch = self.data().ch.as_ref()?;
        ch.module_ch.clone().into_any_rc().downcast::<T>().ok()
    }

    /// Finishes the I/O; the submitter's callback runs from the thread's completion poller.
    pub fn complete(mut self, status: IoStatus) {
        self.data_mut().status = status;
        let Some(ch) = self.data().ch.clone() else {
            return;
        };
        if status == IoStatus::NoMemory {
            ch.thread
                .waiters
                .borrow_mut()
                .push_back(Waiter::Resubmit(self));
        } else {
            ch.thread.completions.borrow_mut().push_back(self);
        }
    }

    pub fn complete_ok(self) {
        self.complete(IoStatus::Success)
    }

    pub fn fail(self, errno: i32) {
        self.complete(IoStatus::Failed(errno))
    }

    pub fn is_success(&self) -> bool {
        self.data().status == IoStatus::Success
    }
}

impl Drop for BdevIo {
    fn drop(&mut self) {
        let Some(mut data) = self.0.take() else {
            return;
        };
        let Some(ch) = data.ch.take() else { return };
        data.iovs.clear();
        data.ctx = IoCtx::None;
        data.cb = None;
        ch.thread.pool.borrow_mut().push(data);
    }
}

/// Something waiting for a free I/O on this thread.
pub(crate) enum Waiter {
    /// Resubmit this I/O to its module (it reported NoMemory).
    Resubmit(BdevIo),
    /// Call back the submitter (SPDK's spdk_bdev_queue_io_wait).
    Call(fn(IoCtx), IoCtx),
}

/// Per-thread state of the bdev layer: the I/O pool, deferred completions and waiters.
pub(crate) struct BdevThread {
    // Boxed so handing an I/O around moves one pointer, not the whole record.
    #[allow(clippy::vec_box)]
    pub(crate) pool: RefCell<Vec<Box<IoData>>>,
    pub(crate) completions: RefCell<VecDeque<BdevIo>>,
    pub(crate) waiters: RefCell<VecDeque<Waiter>>,
    /// The clock read once for the whole completion batch being run (0 outside a batch): every
    /// completion and every resubmit from a callback shares it instead of reading the TSC again.
    batch_now: Cell<u64>,
    /// Live channels on this thread; the completion poller exists only while there are some, so a
    /// thread that stops doing I/O can exit.
    channels: Cell<usize>,
    poller: RefCell<Option<Poller>>,
}

impl Default for BdevThread {
    fn default() -> Self {
        BdevThread {
            pool: RefCell::new(Vec::new()),
            completions: RefCell::new(VecDeque::new()),
            waiters: RefCell::new(VecDeque::new()),
            batch_now: Cell::new(0),
            channels: Cell::new(0),
            poller: RefCell::new(None),
        }
    }
}

impl BdevThread {
    /// The current thread's state, for a channel being created on it: the pool is filled on first
    /// use and the completion poller registered while the thread has channels.
    pub(crate) fn attach_channel(thread: &Thread) -> Rc<BdevThread> {
        let t = thread.local::<BdevThread>();
        if t.pool.borrow().is_empty() && t.channels.get() == 0 {
            let size = crate::options().bdev_io_cache_size as usize;
            t.pool
                .borrow_mut()
                .extend((0..size).map(|_| Box::new(IoData::new())));
            t.completions.borrow_mut().reserve(size);
            t.waiters.borrow_mut().reserve(size);
        }
        t.channels.set(t.channels.get() + 1);
        if t.poller.borrow().is_none() {
            let weak: Weak<BdevThread> = Rc::downgrade(&t);
            let p = Poller::register_on(thread, "bdev_completions", 0, move || {
                match weak.upgrade() {
                    Some(t) => t.poll(),
                    None => PollStatus::Idle,
                }
            });
            *t.poller.borrow_mut() = Some(p);
        }
        t
    }

    /// A channel closed; with the last one gone no I/O can be pending here (each holds its
    /// channel), so the poller goes and leftover waiters (from gone channels) are dropped.
    pub(crate) fn detach_channel(&self) {
        let n = self.channels.get().saturating_sub(1);
        self.channels.set(n);
        if n == 0 {
            if let Some(p) = self.poller.borrow_mut().take() {
                p.unregister();
            }
            let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
            drop(waiters);
        }
    }

    pub(crate) fn alloc(&self) -> Option<Box<IoData>> {
        self.pool.borrow_mut().pop()
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
    /// resubmitting callback cannot keep this loop going forever), then wakes waiters.
    fn poll(&self) -> PollStatus {
        let n = self.completions.borrow().len();
        if n > 0 {
            self.batch_now.set(poller::time::ticks());
        }
        for _ in 0..n {
            let Some(io) = self.completions.borrow_mut().pop_front() else {
                break;
            };
            crate::channel::finish(io);
        }
        let mut woke = false;
        // Only the waiters present now: one that fails again re-queues behind and waits a round.
        let waiting = self.waiters.borrow().len();
        for _ in 0..waiting {
            if self.pool.borrow().is_empty() {
                break;
            }
            let Some(w) = self.waiters.borrow_mut().pop_front() else {
                break;
            };
            woke = true;
            match w {
                Waiter::Resubmit(io) => crate::channel::resubmit(io),
                Waiter::Call(f, ctx) => f(ctx),
            }
        }
        self.batch_now.set(0);
        PollStatus::from(n > 0 || woke)
    }
}

impl IoData {
    fn new() -> IoData {
        IoData {
            io_type: IoType::Read,
            offset_blocks: 0,
            num_blocks: 0,
            flags: IoFlags::default(),
            iovs: Vec::with_capacity(16),
            status: IoStatus::Pending,
            cb: None,
            ctx: IoCtx::None,
            ch: None,
            submit_tick: 0,
            is_child: false,
            split_next: 0,
            split_failed: None,
            driver_ctx: [0; 4],
        }
    }
}

impl BdevIo {
    pub(crate) fn from_data(d: Box<IoData>) -> BdevIo {
        BdevIo(Some(d))
    }
}
