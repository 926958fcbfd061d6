//! One cache instance: the state every thread shares (pmem, layout, index, segments, the global
//! write sequence, counters) and the per-thread channel that owns a lane.

use crate::error::CacheError;
use crate::format::{CacheInfo, Key, Layout, SlotWriter, Tails};
use crate::gc::GcShared;
use crate::index::Index;
use crate::lane::Lane;
use crate::log::{LaneLog, LaneShared, LogCtx};
use crate::params::{CacheMode, CreateParams};
use crate::segments::SegmentTable;
use crate::writeback::WritebackShared;
use bdev::{BdevChannel, BdevDesc, BdevIo};
use pmem::Pmem;
use poller::{IoDevice, PollStatus, Poller};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Declares `Stats` from one list of counters, with `Stats::all` over every one of them (so
/// `reset` cannot miss a counter added later).
macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// Counters for `bdev_pcache_get_stats` (relaxed: each is its own fact).
        #[derive(Default)]
        pub struct Stats {
            $($(#[$doc])* pub $name: Counter,)*
        }

        impl Stats {
            fn all(&self) -> impl Iterator<Item = &Counter> {
                [$(&self.$name),*].into_iter()
            }
        }
    };
}

counters! {
    read_hits,
    read_misses,
    read_partial_hits,
    bytes_read_cache,
    bytes_read_origin,
    bytes_written_cache,
    bytes_written_origin,
    bytes_promoted,
    crc_errors,
    origin_errors,
    deferred_writes,
    keysets_sealed,
    /// Bytes written (or zeroed) on the origin by writeback, batches committed, keys written.
    writeback_bytes,
    writeback_batches,
    writeback_keys,
    /// GC rounds that dropped something, keys dropped, bytes evicted from the index, bytes
    /// given a second chance, segments freed after their grace period.
    gc_runs,
    gc_keys,
    gc_evicted_bytes,
    gc_second_chance_bytes,
    gc_segments_freed,
    /// I/Os of sequential streams past the cutoff (they bypassed the cache).
    sequential_bypassed,
    /// Cached bytes dropped because a write or unmap went to the origin around the cache.
    bytes_invalidated,
    /// Times an origin I/O (data path or writeback) waited for a free bdev_io and resumed.
    origin_io_waits,
}

impl Stats {
    pub fn add(c: &Counter, n: u64) {
        c.add(n);
    }

    /// `bdev_pcache_reset_stats`: every counter back to 0 (the state — dirty bytes, occupancy,
    /// log positions — is not a counter and stays).
    pub fn reset(&self) {
        self.all().for_each(Counter::reset);
    }
}

/// Slots per counter: each thread adds into its own, on its own cache line, so reactors on
/// different cores never bounce a counter's line between them; a read sums the slots.
const COUNTER_SLOTS: usize = 8;

#[repr(align(64))]
#[derive(Default)]
struct Slot(AtomicU64);

/// A statistics counter the data path bumps on every I/O.
#[derive(Default)]
pub struct Counter([Slot; COUNTER_SLOTS]);

thread_local! {
    /// This thread's slot in every counter (handed out in turn at a thread's first add).
    static SLOT: usize = {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed) % COUNTER_SLOTS
    };
}

impl Counter {
    pub fn add(&self, n: u64) {
        let slot = SLOT.with(|s| *s);
        self.0[slot].0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0
            .iter()
            .fold(0u64, |a, s| a.wrapping_add(s.0.load(Ordering::Relaxed)))
    }

    fn reset(&self) {
        for s in &self.0 {
            s.0.store(0, Ordering::Relaxed);
        }
    }
}

/// Metadata records the management thread rewrites (tails after writeback/GC, info on changes).
pub struct MetaWriter {
    pub info: CacheInfo,
    pub info_slot: SlotWriter,
    pub tails: Tails,
    pub tails_slot: SlotWriter,
}

pub struct Cache {
    pub name: String,
    pub pmem: Arc<dyn Pmem>,
    pub layout: Layout,
    pub format_id: u64,
    pub block_size: u32,
    pub origin_blocks: u64,
    pub index: Index,
    pub segments: SegmentTable,
    /// The next write sequence number.
    pub seq: AtomicU64,
    pub data_crc: bool,
    pub durable: bool,
    mode: AtomicU32,
    /// Runtime tunables the data path reads on every I/O (`bdev_pcache_set_options`).
    sequential_cutoff: AtomicU64,
    promotion_threshold: AtomicU32,
    pub promotion: crate::admission::PromotionFilter,
    /// Writes sent to the origin around the cache so far, and how many of them an origin flush
    /// has covered: while the first is ahead, the origin may hold data it can still lose, so
    /// no clean copy of origin data is cached (`Cache::origin_flushed`), a FLUSH flushes the
    /// origin too, and writeback's engine flushes it soon.
    pub around: AtomicU64,
    pub around_flushed: AtomicU64,
    pub stats: Stats,
    /// Lanes not owned by a channel right now.
    free_lanes: Mutex<Vec<Lane>>,
    /// Every lane's published persisted head, for writeback and GC.
    pub lane_heads: Mutex<Vec<Arc<LaneShared>>>,
    pub meta: Mutex<MetaWriter>,
    pub params: Mutex<CreateParams>,
    pub origin_desc: Mutex<Option<BdevDesc>>,
    pub cache_desc: Mutex<Option<BdevDesc>>,
    /// Per-thread lane channels (a separate io_device so FLUSH can visit every thread's lane).
    pub lanes: IoDevice<LaneChannel>,
    /// What the writeback engine shares with the data path and the RPCs.
    pub wb: WritebackShared,
    /// What GC shares with the data path and the RPCs.
    pub gc: GcShared,
}

impl Cache {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        pmem: Arc<dyn Pmem>,
        layout: Layout,
        format_id: u64,
        origin_blocks: u64,
        index: Index,
        segments: SegmentTable,
        next_seq: u64,
        lanes: Vec<Lane>,
        meta: MetaWriter,
        params: CreateParams,
    ) -> Arc<Cache> {
        let heads = lanes.iter().map(|l| l.log.shared().clone()).collect();
        let gc_percent = params.gc_percent;
        Arc::new_cyclic(|weak: &std::sync::Weak<Cache>| {
            let weak = weak.clone();
            Cache {
                name: name.to_string(),
                block_size: layout.block_size(),
                pmem,
                layout,
                format_id,
                origin_blocks,
                index,
                segments,
                seq: AtomicU64::new(next_seq),
                data_crc: params.data_crc,
                durable: params.durable,
                mode: AtomicU32::new(params.mode as u32),
                sequential_cutoff: AtomicU64::new(params.sequential_cutoff),
                promotion_threshold: AtomicU32::new(params.promotion_threshold),
                promotion: Default::default(),
                around: AtomicU64::new(0),
                around_flushed: AtomicU64::new(0),
                stats: Stats::default(),
                free_lanes: Mutex::new(lanes),
                lane_heads: Mutex::new(heads),
                meta: Mutex::new(meta),
                params: Mutex::new(params),
                origin_desc: Mutex::new(None),
                cache_desc: Mutex::new(None),
                lanes: IoDevice::new(name, move || LaneChannel::create(&weak)),
                wb: WritebackShared::new(next_seq.saturating_sub(1)),
                gc: GcShared::new(gc_percent),
            }
        })
    }

    pub fn mode(&self) -> CacheMode {
        match self.mode.load(Ordering::Relaxed) {
            1 => CacheMode::Writethrough,
            2 => CacheMode::Writearound,
            3 => CacheMode::Passthrough,
            _ => CacheMode::Writeback,
        }
    }

    pub fn set_mode(&self, m: CacheMode) {
        self.mode.store(m as u32, Ordering::Relaxed);
    }

    /// Every write sent around the cache is durable on the origin (an origin flush covered it).
    pub fn origin_flushed(&self) -> bool {
        self.around_flushed.load(Ordering::Acquire) >= self.around.load(Ordering::Acquire)
    }

    /// An origin flush that began when `around` was `at` has completed.
    pub fn note_origin_flushed(&self, at: u64) {
        self.around_flushed.fetch_max(at, Ordering::AcqRel);
    }

    /// Bytes after which a sequential stream bypasses the cache (0: never).
    pub fn sequential_cutoff(&self) -> u64 {
        self.sequential_cutoff.load(Ordering::Relaxed)
    }

    /// Misses on a range before it is cached (0 or 1: the first).
    pub fn promotion_threshold(&self) -> u32 {
        self.promotion_threshold.load(Ordering::Relaxed)
    }

    /// Applies `bdev_pcache_set_options` (already checked): the runtime values, the saved
    /// parameters (save_config) and the cache info on pmem. Leaving writeback starts a flush:
    /// the other modes write around the cache, so its dirty data must reach the origin (writes
    /// to blocks still dirty meanwhile keep going through the log, in order).
    pub fn set_options(&self, o: &crate::params::SetOptionsParams) -> Result<(), CacheError> {
        let mut p = self.params.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = p.clone();
        next.mode = o.mode.unwrap_or(next.mode);
        next.gc_percent = o.gc_percent.unwrap_or(next.gc_percent);
        next.promotion_threshold = o.promotion_threshold.unwrap_or(next.promotion_threshold);
        next.sequential_cutoff = o.sequential_cutoff.unwrap_or(next.sequential_cutoff);
        next.writeback_dirty_target = o
            .writeback_dirty_target
            .unwrap_or(next.writeback_dirty_target);
        next.writeback_rate_limit = o.writeback_rate_limit.unwrap_or(next.writeback_rate_limit);
        next.check()?;
        {
            let mut meta = self.meta();
            let mut info = meta.info;
            info.mode = next.mode.into();
            info.gc_percent = next.gc_percent;
            info.promotion = next.promotion_threshold;
            info.seq_cutoff = next.sequential_cutoff;
            info.writeback_target = u64::from(next.writeback_dirty_target) * 100;
            info.writeback_rate = next.writeback_rate_limit;
            let bytes = info.encode();
            // A pmem failure answers with its own errno (EIO), not as a bad parameter.
            meta.info_slot.write(&*self.pmem, &bytes)?;
            meta.info = info;
        }
        let leaving_writeback = p.mode == CacheMode::Writeback && next.mode != CacheMode::Writeback;
        self.set_mode(next.mode);
        self.gc.set_gc_percent(next.gc_percent);
        self.promotion_threshold
            .store(next.promotion_threshold, Ordering::Relaxed);
        self.sequential_cutoff
            .store(next.sequential_cutoff, Ordering::Relaxed);
        *p = next;
        drop(p);
        if leaving_writeback {
            crate::writeback::flush_start(self);
        }
        Ok(())
    }

    pub fn log_ctx(&self) -> LogCtx<'_> {
        LogCtx {
            pmem: &*self.pmem,
            layout: &self.layout,
            segments: &self.segments,
            format_id: self.format_id,
        }
    }

    /// Byte offset on pmem of cache block `pos`.
    pub fn pos_offset(&self, pos: u64) -> u64 {
        self.layout.segment_base() + pos * u64::from(self.block_size)
    }

    pub fn meta(&self) -> MutexGuard<'_, MetaWriter> {
        self.meta.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A lane for a thread that has none: a free one, else a new one. Key space is taken only
    /// for lanes some thread uses, so a small cache is not filled by idle lanes' key segments.
    fn take_lane(&self) -> Option<Lane> {
        let free = self
            .free_lanes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop();
        free.or_else(|| match self.add_lane() {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(cache = %self.name, "no lane for this thread: {e}");
                None
            }
        })
    }

    /// Adds a lane to the cache: a key segment for its log, recorded in the tails record (the
    /// lane count grows by one) before any key-set is written there, so replay knows the lane
    /// from the moment it can hold keys. The tails lock orders it with writeback's and GC's
    /// tails updates, which keep the lanes they did not read.
    fn add_lane(&self) -> Result<Lane, CacheError> {
        let mut meta = self.meta();
        let lane = meta.tails.lanes().len();
        if lane >= crate::format::MAX_LANES {
            return Err(CacheError::NoLane(format!(
                "all {} lanes are in use",
                crate::format::MAX_LANES
            )));
        }
        let (seg, gen_) = self
            .segments
            .alloc(crate::segments::SegUse::Key { lane: lane as u16 })
            .ok_or_else(|| CacheError::NoLane("no free segment for a new lane's key log".into()))?;
        let start = crate::format::LogPos { seg, off: 0 };
        let mut lanes = meta.tails.lanes().to_vec();
        lanes.push(crate::format::LaneTails {
            key_tail: start,
            dirty_tail: start,
        });
        let persisted =
            crate::format::Tails::new(meta.tails.written_back_seq, &lanes).and_then(|tails| {
                let bytes = tails.encode();
                let payload = bytes.get(..tails.encoded_len()).unwrap_or(&bytes[..]);
                meta.tails_slot.write(&*self.pmem, payload)?;
                Ok(tails)
            });
        let tails = match persisted {
            Ok(t) => t,
            Err(e) => {
                // Nothing names the segment: it goes back through retirement.
                self.segments.retire(seg);
                return Err(e.into());
            }
        };
        meta.tails = tails;
        let log = LaneLog::new(lane as u32, self.format_id, start, gen_, 1);
        // Published after the tails record, so writeback and GC never see a lane without tails.
        self.lane_heads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(log.shared().clone());
        tracing::info!(cache = %self.name, lane, segment = seg, "lane added");
        Ok(Lane::new(log, None))
    }

    fn return_lane(&self, lane: Lane) {
        self.free_lanes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(lane);
    }

    /// Seals every lane not owned by a channel (at delete, after the channels are gone).
    pub fn seal_free_lanes(&self) -> Result<(), crate::log::LogError> {
        let mut lanes = self.free_lanes.lock().unwrap_or_else(|p| p.into_inner());
        for l in lanes.iter_mut() {
            l.seal(&self.log_ctx())?;
        }
        Ok(())
    }

    /// A new key's sequence number, for a key `lane` will append. The lane's "min open seq" is
    /// published first (SeqCst, as the increment), so writeback, which reads `seq` and then every
    /// lane's bound, never takes a taken-but-unsealed key's `seq` as durable.
    pub fn take_seq(&self, lane: &Lane) -> u64 {
        self.open_lane(lane);
        self.seq.fetch_add(1, Ordering::SeqCst)
    }

    /// Publishes `lane`'s "min open seq" before it takes a sequence number (see `take_seq`).
    fn open_lane(&self, lane: &Lane) {
        let shared = lane.log.shared();
        if shared.min_open_seq().is_none() {
            shared.open_from(self.seq.load(Ordering::SeqCst));
        }
    }

    /// Indexes a write's extent and gives it its sequence number, taken under the index lock so
    /// that for every block the index's newest version is the log's highest sequence (replay and
    /// writeback agree with what readers saw). The lane's "min open seq" is published first, as in
    /// `take_seq`.
    pub fn insert_ordered(
        &self,
        lane: &Lane,
        e: &crate::index::Extent,
    ) -> Result<u64, crate::index::IndexError> {
        self.open_lane(lane);
        self.index.insert_ordered(e, &self.seq).map(|(_, seq)| seq)
    }

    /// Drops the index's entries for [lba, lba + len) with a sequence number taken as in
    /// `insert_ordered`, for the clean UNMAP key that logs the drop.
    pub fn remove_ordered(
        &self,
        lane: &Lane,
        lba: u64,
        len: u32,
    ) -> (crate::index::Displaced, u64) {
        self.open_lane(lane);
        self.index.remove_ordered(lba, len, &self.seq)
    }

    /// Appends `key` to `lane`'s open key-set (sealing where GC asked for a cut, and when full).
    pub fn append_key(&self, lane: &mut Lane, key: Key) -> Result<(), crate::log::LogError> {
        lane.log
            .append_at_cut(&self.log_ctx(), key, self.gc.cut_request())
    }

    pub fn key_for(
        &self,
        seq: u64,
        lba: u64,
        blocks: u32,
        space: &crate::lane::DataSpace,
        crc: u32,
        dirty: bool,
    ) -> Key {
        Key {
            seq,
            origin_off: lba,
            len: blocks,
            data_off: space.off,
            data_seg: space.seg,
            data_gen: space.gen_,
            data_crc: crc,
            flags: if dirty { Key::DIRTY } else { 0 },
        }
    }
}

/// A thread's lane and its waiting I/O. Created on the thread, never leaves it.
pub struct LaneChannel {
    pub cache: Arc<Cache>,
    pub lane: RefCell<Option<Lane>>,
    /// Writes whose key must be sealed before they complete (FUA, durable mode).
    pub awaiting_seal: RefCell<VecDeque<BdevIo>>,
    /// Writes waiting for free space.
    pub deferred: RefCell<VecDeque<BdevIo>>,
    /// FLUSHes submitted on this thread, waiting for the walk over every lane.
    pub awaiting_flush: RefCell<VecDeque<BdevIo>>,
    /// The segment table's freed counter when the deferred writes were last retried.
    seen_freed: std::cell::Cell<u64>,
    poller: RefCell<Option<Poller>>,
}

impl LaneChannel {
    fn create(weak: &std::sync::Weak<Cache>) -> Result<LaneChannel, i32> {
        let cache = weak.upgrade().ok_or(libc::ENODEV)?;
        let lane = cache.take_lane();
        let ch = LaneChannel {
            cache,
            lane: RefCell::new(lane),
            awaiting_seal: RefCell::new(VecDeque::with_capacity(1024)),
            deferred: RefCell::new(VecDeque::with_capacity(1024)),
            awaiting_flush: RefCell::new(VecDeque::with_capacity(64)),
            seen_freed: std::cell::Cell::new(0),
            poller: RefCell::new(None),
        };
        Ok(ch)
    }

    /// Registers the per-thread poller that group-commits and resumes deferred writes.
    pub fn start_poller(self: &Rc<Self>) {
        if self.poller.borrow().is_some() {
            return;
        }
        let weak = Rc::downgrade(self);
        let p = Poller::register("pcache_lane", 0, move || match weak.upgrade() {
            Some(ch) => ch.poll(),
            None => PollStatus::Idle,
        });
        *self.poller.borrow_mut() = p;
    }

    /// Seals this thread's open key-set; completes the writes that waited for it.
    pub fn seal(&self) -> Result<(), crate::log::LogError> {
        if let Some(lane) = self.lane.borrow_mut().as_mut()
            && !lane.log.open_keys().is_empty()
        {
            lane.seal(&self.cache.log_ctx())?;
            Stats::add(&self.cache.stats.keysets_sealed, 1);
        }
        let waiting = std::mem::take(&mut *self.awaiting_seal.borrow_mut());
        for io in waiting {
            io.complete_ok();
        }
        Ok(())
    }

    fn poll(&self) -> PollStatus {
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
                tracing::error!(cache = %self.cache.name, "sealing a key-set failed: {e}");
                let waiting = std::mem::take(&mut *self.awaiting_seal.borrow_mut());
                for io in waiting {
                    io.fail(libc::EIO);
                }
            }
            busy = true;
        }
        // Deferred writes wait for space: retried only once segments have been freed since.
        let freed = self.cache.segments.freed();
        if freed != self.seen_freed.get() && !self.deferred.borrow().is_empty() {
            self.seen_freed.set(freed);
            let n = self.deferred.borrow().len();
            for _ in 0..n {
                let Some(io) = self.deferred.borrow_mut().pop_front() else {
                    break;
                };
                busy = true;
                self.cache.gc.note_resumed();
                crate::io::resume_deferred(self, io);
            }
        }
        PollStatus::from(busy)
    }
}

use std::rc::Rc;

impl Drop for LaneChannel {
    fn drop(&mut self) {
        if let Some(p) = self.poller.borrow_mut().take() {
            p.unregister();
        }
        if let Some(mut lane) = self.lane.borrow_mut().take() {
            if let Err(e) = lane.seal(&self.cache.log_ctx()) {
                tracing::error!(cache = %self.cache.name, "sealing a lane at channel close failed: {e}");
            }
            self.cache.return_lane(lane);
        }
    }
}

/// The cache bdev's channel on a thread: the origin's channel plus the thread's lane.
pub struct CacheBdevChannel {
    pub cache: Arc<Cache>,
    pub origin: BdevChannel,
    pub lane: poller::IoChannel<LaneChannel>,
    /// This thread's recent sequential streams (for the sequential cutoff).
    pub streams: crate::admission::Streams,
    /// Parents whose origin child is in flight or waits for a bdev_io (stall reports).
    pub at_origin: std::cell::Cell<u32>,
}
