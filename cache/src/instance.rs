//! One cache instance: the state every thread shares — pmem, layout, index, segments, the global
//! write sequence, the lane pool, the runtime tunables, counters — behind methods.

use crate::admission::PromotionFilter;
use crate::format::{Key, Layout, LogPos, MetaWriter};
use crate::index::{Displaced, Extent, Index, IndexError};
use crate::lane::{DataSpace, Lane};
use crate::lanes::LanePool;
use crate::log::{LogCtx, LogError};
use crate::params::{CacheMode, CreateParams};
use crate::segments::SegmentTable;
use crate::shared::{GcShared, WritebackShared};
use crate::stats::Stats;
use bdev::vbdev::VbdevBase;
use bdev::{BdevChannel, BdevError};
use pmem::Pmem;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

pub struct Cache {
    name: String,
    pmem: Arc<dyn Pmem>,
    layout: Layout,
    format_id: u64,
    index: Index,
    segments: SegmentTable,
    /// The next write sequence number.
    seq: AtomicU64,
    data_crc: bool,
    durable: bool,
    mode: AtomicU32,
    /// Runtime tunables the data path reads on every I/O (`bdev_pcache_set_options`).
    sequential_cutoff: AtomicU64,
    promotion_threshold: AtomicU32,
    promotion: PromotionFilter,
    /// Writes sent to the origin around the cache so far, and how many of them an origin flush
    /// has covered: while the first is ahead, the origin may hold data it can still lose, so
    /// no clean copy of origin data is cached (`Cache::origin_flushed`), a FLUSH flushes the
    /// origin too, and writeback's engine flushes it soon.
    around: AtomicU64,
    around_flushed: AtomicU64,
    stats: Stats,
    lanes: LanePool,
    meta: Mutex<MetaWriter>,
    params: Mutex<CreateParams>,
    /// The origin and the cache device, claimed from create to shutdown.
    origin_base: OnceLock<VbdevBase>,
    cache_base: OnceLock<VbdevBase>,
    wb: WritebackShared,
    gc: GcShared,
}

impl Cache {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        name: &str,
        pmem: Arc<dyn Pmem>,
        layout: Layout,
        format_id: u64,
        index: Index,
        segments: SegmentTable,
        next_seq: u64,
        lanes: Vec<Lane>,
        meta: MetaWriter,
        params: CreateParams,
    ) -> Arc<Cache> {
        Arc::new(Cache {
            name: name.to_string(),
            pmem,
            layout,
            format_id,
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
            lanes: LanePool::new(lanes),
            meta: Mutex::new(meta),
            wb: WritebackShared::new(next_seq.saturating_sub(1)),
            gc: GcShared::new(params.gc_percent),
            params: Mutex::new(params),
            origin_base: OnceLock::new(),
            cache_base: OnceLock::new(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pmem(&self) -> &dyn Pmem {
        &*self.pmem
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn format_id(&self) -> u64 {
        self.format_id
    }

    pub fn block_size(&self) -> u32 {
        self.layout.block_size()
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    pub fn segments(&self) -> &SegmentTable {
        &self.segments
    }

    pub fn data_crc(&self) -> bool {
        self.data_crc
    }

    pub fn durable(&self) -> bool {
        self.durable
    }

    pub fn promotion(&self) -> &PromotionFilter {
        &self.promotion
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// What the writeback engine shares with the data path and the RPCs.
    pub fn wb(&self) -> &WritebackShared {
        &self.wb
    }

    /// What GC shares with the data path and the RPCs.
    pub fn gc(&self) -> &GcShared {
        &self.gc
    }

    /// The next write sequence number (every key taken so far is below it).
    pub fn next_seq(&self) -> u64 {
        self.seq.load(Ordering::SeqCst)
    }

    pub fn mode(&self) -> CacheMode {
        match self.mode.load(Ordering::Relaxed) {
            1 => CacheMode::Writethrough,
            2 => CacheMode::Writearound,
            3 => CacheMode::Passthrough,
            _ => CacheMode::Writeback,
        }
    }

    pub(crate) fn set_mode(&self, m: CacheMode) {
        self.mode.store(m as u32, Ordering::Relaxed);
    }

    /// Bytes after which a sequential stream bypasses the cache (0: never).
    pub fn sequential_cutoff(&self) -> u64 {
        self.sequential_cutoff.load(Ordering::Relaxed)
    }

    /// Misses on a range before it is cached (0 or 1: the first).
    pub fn promotion_threshold(&self) -> u32 {
        self.promotion_threshold.load(Ordering::Relaxed)
    }

    /// The runtime tunables `set_options` changes.
    pub(crate) fn set_tunables(&self, promotion_threshold: u32, sequential_cutoff: u64) {
        self.promotion_threshold
            .store(promotion_threshold, Ordering::Relaxed);
        self.sequential_cutoff
            .store(sequential_cutoff, Ordering::Relaxed);
    }

    /// The parameters save_config writes (as created, with the options set since).
    pub fn params(&self) -> CreateParams {
        self.params_lock().clone()
    }

    pub(crate) fn params_lock(&self) -> MutexGuard<'_, CreateParams> {
        self.params.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A write is about to go to the origin around the cache (see `origin_flushed`).
    pub(crate) fn note_around(&self) {
        self.around.fetch_add(1, Ordering::AcqRel);
    }

    /// Writes sent around the cache so far (an origin flush begun now covers them).
    pub(crate) fn around(&self) -> u64 {
        self.around.load(Ordering::Acquire)
    }

    /// Every write sent around the cache is durable on the origin (an origin flush covered it).
    pub(crate) fn origin_flushed(&self) -> bool {
        self.around_flushed.load(Ordering::Acquire) >= self.around.load(Ordering::Acquire)
    }

    /// An origin flush that began when `around` was `at` has completed.
    pub(crate) fn note_origin_flushed(&self, at: u64) {
        self.around_flushed.fetch_max(at, Ordering::AcqRel);
    }

    /// The origin and cache bdevs, claimed from create to shutdown.
    pub(crate) fn set_bases(&self, origin: VbdevBase, cache: VbdevBase) {
        let _ = self.origin_base.set(origin);
        let _ = self.cache_base.set(cache);
    }

    /// Shutdown: both bases are closed (their claims with them).
    pub(crate) fn close_bases(&self) {
        self.origin_base.get().map(VbdevBase::close);
        self.cache_base.get().map(VbdevBase::close);
    }

    /// This thread's channel to the origin.
    pub(crate) fn origin_channel(&self) -> Result<BdevChannel, BdevError> {
        self.origin_base
            .get()
            .ok_or_else(|| BdevError::Removing(format!("{} (origin)", self.name)))?
            .channel()
    }

    pub(crate) fn log_ctx(&self) -> LogCtx<'_> {
        LogCtx {
            pmem: &*self.pmem,
            layout: &self.layout,
            segments: &self.segments,
            format_id: self.format_id,
        }
    }

    /// Byte offset on pmem of cache block `pos`.
    pub fn pos_offset(&self, pos: u64) -> u64 {
        self.layout.segment_base() + pos * u64::from(self.block_size())
    }

    pub fn meta(&self) -> MutexGuard<'_, MetaWriter> {
        self.meta.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A lane for a thread that has none: a free one, else a new one (see `LanePool::take`).
    pub(crate) fn take_lane(&self) -> Option<Lane> {
        match self.lanes.take(&self.log_ctx(), &self.meta) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(cache = %self.name, "no lane for this thread: {e}");
                None
            }
        }
    }

    pub(crate) fn return_lane(&self, lane: Lane) {
        self.lanes.give_back(lane);
    }

    /// Seals every lane not owned by a channel (at delete, after the channels are gone).
    pub(crate) fn seal_free_lanes(&self) -> Result<(), LogError> {
        self.lanes.seal_free(&self.log_ctx())
    }

    /// The lanes' logs: how many, their persisted heads, their open bounds.
    pub(crate) fn lanes(&self) -> &LanePool {
        &self.lanes
    }

    /// A new key's sequence number, for a key `lane` will append. The lane's "min open seq" is
    /// published first (SeqCst, as the increment), so writeback, which reads `seq` and then every
    /// lane's bound, never takes a taken-but-unsealed key's `seq` as durable.
    pub(crate) fn take_seq(&self, lane: &Lane) -> u64 {
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
    pub(crate) fn insert_ordered(&self, lane: &Lane, e: &Extent) -> Result<u64, IndexError> {
        self.open_lane(lane);
        self.index.insert_ordered(e, &self.seq).map(|(_, seq)| seq)
    }

    /// Drops the index's entries for [lba, lba + len) with a sequence number taken as in
    /// `insert_ordered`, for the clean UNMAP key that logs the drop.
    pub(crate) fn remove_ordered(&self, lane: &Lane, lba: u64, len: u32) -> (Displaced, u64) {
        self.open_lane(lane);
        self.index.remove_ordered(lba, len, &self.seq)
    }

    /// Appends `key` to `lane`'s open key-set (sealing where GC asked for a cut, and when full).
    pub(crate) fn append_key(&self, lane: &mut Lane, key: Key) -> Result<(), LogError> {
        lane.log
            .append_at_cut(&self.log_ctx(), key, self.gc.cut_request())
    }

    pub(crate) fn key_for(
        &self,
        seq: u64,
        lba: u64,
        blocks: u32,
        space: &DataSpace,
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

    /// crc32c over the original key's whole data, read in place.
    pub(crate) fn crc_ok(&self, e: &Extent) -> bool {
        let at = self.pos_offset(e.orig_pos);
        let len = u64::from(e.orig_len) * u64::from(self.block_size());
        self.crc_matches(at, len, e.crc)
    }

    /// Whether the `len` bytes at pmem offset `at` have crc32c `crc` (read in place).
    pub(crate) fn crc_matches(&self, at: u64, len: u64, crc: u32) -> bool {
        let mut got = 0u32;
        self.pmem
            .visit(at, len, &mut |b| got = crc32c::crc32c_append(got, b))
            .is_ok()
            && got == crc
    }

    /// Bytes of dirty data (dirty tombstones included).
    pub fn dirty_bytes(&self) -> u64 {
        self.index.stats().dirty_blocks * u64::from(self.block_size())
    }

    /// `bdev_pcache_flush_start`: write back every key taken so far, ignoring the dirty target.
    pub fn flush_start(&self) -> u64 {
        let target = self.next_seq().saturating_sub(1);
        let written_back = self.meta().tails.written_back_seq;
        if target > written_back {
            self.wb.request_flush(target);
        }
        target
    }

    /// `bdev_pcache_flush_status`.
    pub fn flush_status(&self) -> serde_json::Value {
        let written_back = self.meta().tails.written_back_seq;
        let target = self.wb.flush_target();
        serde_json::json!({
            "in_progress": target.is_some_and(|t| t > written_back),
            "dirty_bytes": self.dirty_bytes(),
            "written_back_seq": written_back,
            "target_seq": target.unwrap_or(written_back),
        })
    }

    /// Every lane's persisted head, in lane order.
    pub(crate) fn persisted_heads(&self) -> Vec<LogPos> {
        self.lanes.persisted_heads()
    }
}
