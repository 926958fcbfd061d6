//! The cache's lanes: the ones no channel owns right now, every lane's published state for
//! writeback and GC, and adding a lane when a thread finds none free — so key space is taken
//! only for lanes some thread uses, and a small cache is not filled by idle lanes' key logs.

use crate::error::CacheError;
use crate::format::{LaneTails, LogPos, MAX_LANES, MetaWriter, Tails};
use crate::lane::Lane;
use crate::log::{LaneLog, LaneShared, LogCtx, LogError};
use crate::segments::SegUse;
use std::sync::{Arc, Mutex, MutexGuard};

pub(crate) struct LanePool {
    /// Lanes not owned by a channel right now.
    free: Mutex<Vec<Lane>>,
    /// Every lane's published persisted head and open bound, in lane order.
    heads: Mutex<Vec<Arc<LaneShared>>>,
}

impl LanePool {
    pub(crate) fn new(lanes: Vec<Lane>) -> LanePool {
        let heads = lanes.iter().map(|l| l.log.shared().clone()).collect();
        LanePool {
            free: Mutex::new(lanes),
            heads: Mutex::new(heads),
        }
    }

    fn heads(&self) -> MutexGuard<'_, Vec<Arc<LaneShared>>> {
        self.heads.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lanes the cache has.
    pub(crate) fn count(&self) -> usize {
        self.heads().len()
    }

    /// Every lane's persisted head, in lane order.
    pub(crate) fn persisted_heads(&self) -> Vec<LogPos> {
        self.heads().iter().map(|l| l.persisted_head()).collect()
    }

    /// Whether some lane holds taken-but-unsealed keys.
    pub(crate) fn any_open(&self) -> bool {
        self.heads().iter().any(|l| l.min_open_seq().is_some())
    }

    /// The smallest "min open seq" of every lane (None: every key is sealed).
    pub(crate) fn min_open_seq(&self) -> Option<u64> {
        self.heads().iter().filter_map(|l| l.min_open_seq()).min()
    }

    /// A free lane, else a new one: a key segment for its log, recorded in the tails record
    /// (the lane count grows by one) before any key-set is written there, so replay knows the
    /// lane from the moment it can hold keys. The tails lock orders it with writeback's and
    /// GC's tails updates, which keep the lanes they did not read.
    pub(crate) fn take(&self, ctx: &LogCtx, meta: &Mutex<MetaWriter>) -> Result<Lane, CacheError> {
        let free = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop();
        if let Some(l) = free {
            return Ok(l);
        }
        let mut meta = meta.lock().unwrap_or_else(|p| p.into_inner());
        let lane = meta.tails.lanes().len();
        if lane >= MAX_LANES {
            return Err(CacheError::NoLane(format!(
                "all {MAX_LANES} lanes are in use"
            )));
        }
        let (seg, gen_) = ctx
            .segments
            .alloc(SegUse::Key { lane: lane as u16 })
            .ok_or_else(|| CacheError::NoLane("no free segment for a new lane's key log".into()))?;
        let start = LogPos { seg, off: 0 };
        let mut lanes = meta.tails.lanes().to_vec();
        lanes.push(LaneTails {
            key_tail: start,
            dirty_tail: start,
        });
        let persisted = Tails::new(meta.tails.written_back_seq, &lanes).and_then(|tails| {
            let bytes = tails.encode();
            let payload = bytes.get(..tails.encoded_len()).unwrap_or(&bytes[..]);
            meta.tails_slot.write(ctx.pmem, payload)?;
            Ok(tails)
        });
        let tails = match persisted {
            Ok(t) => t,
            Err(e) => {
                // Nothing names the segment: it goes back through retirement.
                ctx.segments.retire(seg);
                return Err(e.into());
            }
        };
        meta.tails = tails;
        let log = LaneLog::new(lane as u32, ctx.format_id, start, gen_, 1);
        // Published after the tails record, so writeback and GC never see a lane without tails.
        self.heads().push(log.shared().clone());
        tracing::info!(lane, segment = seg, "lane added");
        Ok(Lane::new(log, None))
    }

    /// A channel closed: its lane waits for the next thread.
    pub(crate) fn give_back(&self, lane: Lane) {
        self.free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(lane);
    }

    /// Seals every lane not owned by a channel.
    pub(crate) fn seal_free(&self, ctx: &LogCtx) -> Result<(), LogError> {
        let mut lanes = self.free.lock().unwrap_or_else(|p| p.into_inner());
        for l in lanes.iter_mut() {
            l.seal(ctx)?;
        }
        Ok(())
    }
}
