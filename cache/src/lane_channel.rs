//! A thread's lane channel: the lane it owns (taken from the cache's pool on the thread's first
//! use, given back when the channel closes) and the I/O waiting on it — writes waiting for their
//! key-set's seal, writes waiting for free segments, FLUSHes waiting for the walk over every
//! lane.

use crate::instance::Cache;
use crate::lane::Lane;
use crate::log::LogError;
use bdev::BdevIo;
use poller::{IoDevice, PollStatus, Poller};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::{Arc, Weak};

/// Where the lane's poller hands a deferred write back to the data path.
pub(crate) type Resume = fn(&LaneChannel, BdevIo);

/// A thread's lane and its waiting I/O. Created on the thread, never leaves it.
pub struct LaneChannel {
    pub(crate) cache: Arc<Cache>,
    pub(crate) lane: RefCell<Option<Lane>>,
    /// Writes whose key must be sealed before they complete (FUA, durable mode).
    pub(crate) awaiting_seal: RefCell<VecDeque<BdevIo>>,
    /// Writes waiting for free space.
    pub(crate) deferred: RefCell<VecDeque<BdevIo>>,
    /// FLUSHes submitted on this thread, waiting for the walk over every lane.
    pub(crate) awaiting_flush: RefCell<VecDeque<BdevIo>>,
    /// The segment table's freed counter when the deferred writes were last retried.
    seen_freed: Cell<u64>,
    poller: RefCell<Option<Poller>>,
}

/// The per-thread lane channels of `cache`: a separate io_device from the bdev's, so FLUSH,
/// writeback and GC can visit every thread's lane.
pub fn lane_device(cache: &Arc<Cache>) -> IoDevice<LaneChannel> {
    let weak = Arc::downgrade(cache);
    IoDevice::new(cache.name(), move || LaneChannel::create(&weak))
}

impl LaneChannel {
    fn create(weak: &Weak<Cache>) -> Result<LaneChannel, i32> {
        let cache = weak.upgrade().ok_or(libc::ENODEV)?;
        let lane = cache.take_lane();
        let ch = LaneChannel {
            cache,
            lane: RefCell::new(lane),
            awaiting_seal: RefCell::new(VecDeque::with_capacity(1024)),
            deferred: RefCell::new(VecDeque::with_capacity(1024)),
            awaiting_flush: RefCell::new(VecDeque::with_capacity(64)),
            seen_freed: Cell::new(0),
            poller: RefCell::new(None),
        };
        Ok(ch)
    }

    /// Registers the per-thread poller that group-commits and hands deferred writes back to
    /// `resume` (the data path's) once segments have been freed.
    pub(crate) fn start_poller(self: &Rc<Self>, resume: Resume) {
        if self.poller.borrow().is_some() {
            return;
        }
        let weak = Rc::downgrade(self);
        let p = Poller::register("pcache_lane", 0, move || match weak.upgrade() {
            Some(ch) => ch.poll(resume),
            None => PollStatus::Idle,
        });
        *self.poller.borrow_mut() = p;
    }

    /// Seals this thread's open key-set; completes the writes that waited for it.
    pub(crate) fn seal(&self) -> Result<(), LogError> {
        if let Some(lane) = self.lane.borrow_mut().as_mut()
            && !lane.log.open_keys().is_empty()
        {
            lane.seal(&self.cache.log_ctx())?;
            self.cache.stats().keysets_sealed.add(1);
        }
        let waiting = std::mem::take(&mut *self.awaiting_seal.borrow_mut());
        for io in waiting {
            io.complete_ok();
        }
        Ok(())
    }

    fn poll(&self, resume: Resume) -> PollStatus {
        let mut busy = false;
        // Between I/Os no sequence number is in hand: an empty open key-set bounds nothing
        // (a promotion that took a `seq` and then did not fill leaves a bound behind).
        if let Some(lane) = self.lane.borrow().as_ref()
            && lane.log.open_keys().is_empty()
        {
            lane.log.shared().clear_open();
        }
        if !self.awaiting_seal.borrow().is_empty() {
            if let Err(e) = self.seal() {
                tracing::error!(cache = %self.cache.name(), "sealing a key-set failed: {e}");
                let waiting = std::mem::take(&mut *self.awaiting_seal.borrow_mut());
                for io in waiting {
                    io.fail(libc::EIO);
                }
            }
            busy = true;
        }
        // Deferred writes wait for space: retried only once segments have been freed since.
        let freed = self.cache.segments().freed();
        if freed != self.seen_freed.get() && !self.deferred.borrow().is_empty() {
            self.seen_freed.set(freed);
            let n = self.deferred.borrow().len();
            for _ in 0..n {
                let Some(io) = self.deferred.borrow_mut().pop_front() else {
                    break;
                };
                busy = true;
                self.cache.gc().note_resumed();
                resume(self, io);
            }
        }
        PollStatus::from(busy)
    }
}

impl Drop for LaneChannel {
    fn drop(&mut self) {
        if let Some(p) = self.poller.borrow_mut().take() {
            p.unregister();
        }
        if let Some(mut lane) = self.lane.borrow_mut().take() {
            if let Err(e) = lane.seal(&self.cache.log_ctx()) {
                tracing::error!(cache = %self.cache.name(), "sealing a lane at channel close failed: {e}");
            }
            self.cache.return_lane(lane);
        }
    }
}
