//! A channel's pool of bdev_io and the submitters waiting on it.
//!
//! Every bdev channel (one bdev on one thread) owns its pool, so the I/O a vbdev sends to its base
//! comes from the base's pool, never from the one its parent came from. Submitters that hold every
//! I/O of a pool then cannot starve the layer below them of the children it needs: an I/O at the
//! bottom of a stack completes without needing another, each layer's pool refills as the layer
//! below completes, and no stack depth, queue depth or number of submitters can deadlock (the
//! bio_set rule of Linux's block layer). Waiters are served in order and a new submit does not
//! overtake them, so background work queued on a busy base gets its turn.

use crate::io::{IoCtx, IoData};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Fewest I/Os a pool gets even when `bdev_io_pool_size` is spent (each needs one to progress).
const MIN_POOL: usize = 16;

/// I/Os held by every pool of the process, against `bdev_io_pool_size`.
static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

/// A submitter to call back once an I/O is free (SPDK's spdk_bdev_io_wait_entry).
type Waiter = (fn(IoCtx), IoCtx);

pub(crate) struct IoPool {
    // Boxed so handing an I/O around moves one pointer, not the whole record.
    #[allow(clippy::vec_box)]
    free: RefCell<Vec<Box<IoData>>>,
    waiters: RefCell<VecDeque<Waiter>>,
    /// `waiters.len()`, read on every take and give without borrowing the queue.
    queued: Cell<usize>,
    capacity: usize,
    /// Set while a waiter is being resumed: it may take I/Os although others still queue behind.
    serving: Cell<bool>,
}

impl IoPool {
    /// A pool of `want` I/Os, fewer once the process holds `bdev_io_pool_size` (never under
    /// `MIN_POOL`); `want == 0` makes an empty pool that allocates nothing.
    pub(crate) fn new(want: usize) -> IoPool {
        let capacity = if want == 0 {
            0
        } else {
            let limit = crate::options().bdev_io_pool_size as usize;
            let left = limit.saturating_sub(ALLOCATED.load(Ordering::Relaxed));
            want.min(left).max(MIN_POOL.min(want))
        };
        ALLOCATED.fetch_add(capacity, Ordering::Relaxed);
        IoPool {
            free: RefCell::new((0..capacity).map(|_| Box::new(IoData::new())).collect()),
            waiters: RefCell::new(VecDeque::with_capacity(capacity)),
            queued: Cell::new(0),
            capacity,
            serving: Cell::new(false),
        }
    }

    /// An I/O for a new submit; None when all are out, or when others wait for one already.
    #[inline]
    pub(crate) fn take(&self) -> Option<Box<IoData>> {
        if self.queued.get() != 0 && !self.serving.get() {
            return None;
        }
        self.free.borrow_mut().pop()
    }

    /// Returns an I/O; true when waiters should now be woken.
    #[inline]
    pub(crate) fn give(&self, d: Box<IoData>) -> bool {
        self.free.borrow_mut().push(d);
        self.queued.get() != 0
    }

    /// Queues `f(ctx)` for when an I/O is free; true when one is free already (wake now).
    pub(crate) fn wait(&self, f: fn(IoCtx), ctx: IoCtx) -> bool {
        self.waiters.borrow_mut().push_back((f, ctx));
        self.queued.set(self.queued.get() + 1);
        !self.free.borrow().is_empty()
    }

    /// Resumes the waiters queued now, in order, while I/Os are free (one that fails again
    /// queues behind and waits a round). True when some wait still and I/Os are free.
    pub(crate) fn serve(&self) -> bool {
        let queued = self.waiters.borrow().len();
        for _ in 0..queued {
            if self.free.borrow().is_empty() {
                break;
            }
            let Some((f, ctx)) = self.waiters.borrow_mut().pop_front() else {
                break;
            };
            self.queued.set(self.queued.get() - 1);
            self.serving.set(true);
            f(ctx);
            self.serving.set(false);
        }
        self.queued.get() != 0 && !self.free.borrow().is_empty()
    }

    /// I/Os taken and not yet returned.
    pub(crate) fn outstanding(&self) -> usize {
        self.capacity - self.free.borrow().len()
    }

    pub(crate) fn waiting(&self) -> usize {
        self.queued.get()
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }
}

impl Drop for IoPool {
    fn drop(&mut self) {
        ALLOCATED.fetch_sub(self.capacity, Ordering::Relaxed);
    }
}
