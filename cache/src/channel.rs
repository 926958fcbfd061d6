//! The cache bdev's channel on a thread: the origin's channel, the thread's lane channel and
//! its sequential streams; the data path (`io`) runs on it.

use crate::admission::Streams;
use crate::instance::Cache;
use crate::lane_channel::LaneChannel;
use bdev::BdevChannel;
use poller::{IoChannel, IoDevice};
use std::cell::Cell;
use std::sync::Arc;

/// The cache bdev's channel on a thread: the origin's channel plus the thread's lane.
pub struct CacheBdevChannel {
    pub(crate) cache: Arc<Cache>,
    pub(crate) origin: BdevChannel,
    pub(crate) lane: IoChannel<LaneChannel>,
    /// Every thread's lane channels (FLUSH visits them all).
    pub(crate) lanes: IoDevice<LaneChannel>,
    /// This thread's recent sequential streams (for the sequential cutoff).
    pub(crate) streams: Streams,
    /// Parents whose origin child is in flight or waits for a bdev_io (stall reports).
    pub(crate) at_origin: Cell<u32>,
}

impl CacheBdevChannel {
    /// What this thread's cache I/O waits for: the origin, free segments (GC), key-set seals,
    /// a FLUSH's walk over the lanes, and what writeback is doing.
    pub(crate) fn report(&self) -> String {
        let cache = &self.cache;
        let segs = cache.segments().counts();
        let lane = &self.lane;
        format!(
            "pcache {}: {} I/Os at the origin (in flight or waiting for a bdev_io), {} writes \
             here waiting for free segments ({} in the cache; {} of {} segments in use, {} \
             retiring), {} writes waiting for their key-set seal, {} FLUSHes waiting for the \
             lanes; {}",
            cache.name(),
            self.at_origin.get(),
            lane.deferred.borrow().len(),
            cache.gc().deferred(),
            segs.used,
            segs.total,
            segs.retiring,
            lane.awaiting_seal.borrow().len(),
            lane.awaiting_flush.borrow().len(),
            crate::writeback::describe(cache.wb()),
        )
    }
}
