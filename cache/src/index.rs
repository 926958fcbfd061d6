//! The cache's DRAM index: which origin blocks are cached, and where their data lies in pmem.
//!
//! The origin is cut into regions of `region_blocks` blocks. A region hashes to one of a
//! power-of-two number of shards, each a `Mutex` over a map from region number to the region's
//! entries: 16 bytes each, sorted, never overlapping, kept in bounded chunks (`region.rs`). A
//! shard lock is held for one index operation only; pieces found by a lookup reach the caller
//! after the lock is released, so the caller copies data unlocked. The data a hit points at stays
//! valid because GC waits a grace period before reusing a segment; the index needs no epochs.
//!
//! A key is at most 8192 blocks. One that crosses regions becomes one entry per region, each
//! keeping the key's crc and length and its own distance from the key's start, so a reader can
//! check the crc over the whole original key, which stays in pmem until GC reclaims it.
//!
//! ZERO entries (unmap, write-zeroes) say "these blocks read as zeroes" and have no cache data:
//! no position, crc or key, so they may be of any length (cut per region, and within a region
//! every `ZERO_ENTRY_MAX` blocks). A dirty one stands for a tombstone the origin has not yet
//! received; `zero_written_back` drops it once it has (the origin then reads as zeroes too).
//! GC's `evict` and writeback's `mark_clean` select by cache position, so they never touch
//! ZERO entries; `fill` maps only unmapped blocks, so it never overwrites one.
//!
//! Versions (for read-fill): every mapping change (insert, remove_range, evict) stamps the
//! version units it touched (slices of at most 256 blocks, `VERSION_BUCKETS` slots per shard)
//! with the next value of its shard's clock. `range_version` returns the largest clock of the
//! shards a range touches and lifts those clocks to it, so every later change stamps a larger
//! value; `fill` maps blocks only where each unit's stamp is still at most that value.

mod region;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use region::{Cut, CutMode, Cutting, Entry, Region, Tally, zero_slice};

/// Longest key, in blocks: callers split longer writes (the entry keeps the key length in 13 bits).
/// ZERO extents may be longer (up to `u32::MAX` blocks).
pub const MAX_KEY_BLOCKS: u32 = 8192;
/// Largest region, in blocks (entries keep their region offset in 16 bits).
pub const MAX_REGION_BLOCKS: u32 = 1 << 16;
/// Most shards an index may have.
pub const MAX_SHARDS: usize = 1 << 12;
/// Cache positions are kept in 32 bits of blocks.
pub const MAX_CACHE_BLOCKS: u64 = 1 << 32;

/// Version slots per shard. Version units map to them by number, so units closer than this
/// many units apart never share a slot.
const VERSION_BUCKETS: usize = 128;
/// Version units are at most 2^8 blocks (a region when regions are smaller).
const VERSION_UNIT_SHIFT: u32 = 8;
/// Entries per chunk: a chunk insert moves at most 2 KiB.
const CHUNK_ENTRIES: usize = 128;
/// Pieces a lookup gathers under the lock before handing them over.
const LOOKUP_BATCH: usize = 8;
/// REFERENCED extents an evict gathers under the lock before handing them over.
const EVICT_BATCH: usize = 16;
/// What the memory estimate charges the allocator per heap block (glibc: an 8-byte header plus
/// rounding to 16).
const ALLOC_OVERHEAD: u64 = 16;
/// Default region size in bytes: big enough that sparse random keys share a region (the
/// per-region cost is then spread over many blocks), small enough that a 64 GiB origin still has
/// a thousand regions to spread over the shards.
const DEFAULT_REGION_BYTES: u64 = 64 << 20;
const DEFAULT_SHARDS: usize = 64;
/// Regions a small origin is cut into (see `IndexConfig::for_origin`).
pub const MIN_REGIONS: u64 = 4096;
/// The smallest region `IndexConfig::for_origin` chooses.
pub const MIN_REGION_BLOCKS: u32 = 2048;

/// Shape of an index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexConfig {
    /// Origin (and cache) block size in bytes, a power of two from 512 to 1 MiB.
    pub block_size: u32,
    /// Origin blocks per region, a power of two up to `MAX_REGION_BLOCKS`.
    pub region_blocks: u32,
    /// Shards, a power of two up to `MAX_SHARDS`.
    pub shards: usize,
}

impl IndexConfig {
    /// The default shape for `block_size`: 64 MiB regions (at most `MAX_REGION_BLOCKS` blocks)
    /// over 64 shards.
    pub fn new(block_size: u32) -> IndexConfig {
        let blocks = (DEFAULT_REGION_BYTES / u64::from(block_size.max(1)))
            .clamp(1, u64::from(MAX_REGION_BLOCKS));
        IndexConfig {
            block_size,
            region_blocks: 1 << blocks.ilog2(),
            shards: DEFAULT_SHARDS,
        }
    }

    /// The shape for an origin of `origin_blocks` blocks: regions as by default, but smaller for
    /// small origins, so that an origin has up to [`MIN_REGIONS`] regions to spread over the
    /// shards (with a handful of regions every thread would take the same few shard locks).
    /// Regions stay at least [`MIN_REGION_BLOCKS`], so that a write of up to that many blocks
    /// touches at most two regions (the allocation-free locking path).
    pub fn for_origin(block_size: u32, origin_blocks: u64) -> IndexConfig {
        let mut cfg = IndexConfig::new(block_size);
        let want = (origin_blocks / MIN_REGIONS).max(u64::from(MIN_REGION_BLOCKS));
        if want < u64::from(cfg.region_blocks) {
            cfg.region_blocks = 1 << want.ilog2();
        }
        cfg
    }

    fn validate(&self) -> Result<(), IndexError> {
        if !self.block_size.is_power_of_two() || !(512..=1 << 20).contains(&self.block_size) {
            return Err(IndexError::Config(
                "block_size must be a power of two from 512 to 1 MiB",
            ));
        }
        if !self.region_blocks.is_power_of_two() || self.region_blocks > MAX_REGION_BLOCKS {
            return Err(IndexError::Config(
                "region_blocks must be a power of two up to 65536",
            ));
        }
        if !self.shards.is_power_of_two() || self.shards > MAX_SHARDS {
            return Err(IndexError::Config(
                "shards must be a power of two up to 4096",
            ));
        }
        Ok(())
    }
}

/// Index errors: every one is the caller's mistake, so every one is EINVAL.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    #[error("invalid index configuration: {0}")]
    Config(&'static str),
    #[error("key of {len} blocks is longer than {max} blocks: split it")]
    KeyTooLong { len: u32, max: u32 },
    #[error("invalid extent: {0}")]
    Extent(&'static str),
    #[error("extent out of range: {0}")]
    OutOfRange(&'static str),
}

impl IndexError {
    pub fn errno(&self) -> i32 {
        match self {
            IndexError::Config(_)
            | IndexError::KeyTooLong { .. }
            | IndexError::Extent(_)
            | IndexError::OutOfRange(_) => libc::EINVAL,
        }
    }
}

/// Cached data for origin blocks [lba, lba + len): block lba's data is at cache block `pos`, and
/// the key that wrote it covers cache blocks [orig_pos, orig_pos + orig_len) with crc32c `crc`.
///
/// With `zero` set the blocks read as zeroes and have no cache data (an unmap or write-zeroes,
/// dirty until its tombstone reaches the origin): `pos`, `orig_pos`, `orig_len` and `crc` mean
/// nothing. The index ignores them on the way in and hands out 0 for them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub lba: u64,
    pub len: u32,
    pub pos: u64,
    pub orig_pos: u64,
    pub orig_len: u32,
    pub crc: u32,
    pub dirty: bool,
    pub zero: bool,
}

impl Extent {
    /// A whole key: `len` blocks at origin `lba`, data at cache block `pos`.
    pub fn key(lba: u64, len: u32, pos: u64, crc: u32, dirty: bool) -> Extent {
        Extent {
            lba,
            len,
            pos,
            orig_pos: pos,
            orig_len: len,
            crc,
            dirty,
            zero: false,
        }
    }

    /// `len` blocks at origin `lba` that read as zeroes; any length up to `u32::MAX`.
    pub fn zero(lba: u64, len: u32, dirty: bool) -> Extent {
        Extent {
            lba,
            len,
            pos: 0,
            orig_pos: 0,
            orig_len: 0,
            crc: 0,
            dirty,
            zero: true,
        }
    }

    /// Two extents that continue each other (same key, next blocks, next positions; or both
    /// ZERO, next blocks).
    fn continues(&self, next: &Extent) -> bool {
        self.lba + u64::from(self.len) == next.lba
            && (self.zero, self.dirty) == (next.zero, next.dirty)
            && (self.zero
                || (self.pos + u64::from(self.len) == next.pos
                    && (self.orig_pos, self.orig_len, self.crc)
                        == (next.orig_pos, next.orig_len, next.crc)))
    }
}

/// Part of a looked-up range: cached (`Hit`, which for a ZERO extent means "fill with zeroes")
/// or not (`Miss`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece {
    Hit(Extent),
    Miss { lba: u64, len: u32 },
}

impl Piece {
    pub fn lba(&self) -> u64 {
        match self {
            Piece::Hit(e) => e.lba,
            Piece::Miss { lba, .. } => *lba,
        }
    }

    pub fn len(&self) -> u32 {
        match self {
            Piece::Hit(e) => e.len,
            Piece::Miss { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Blocks an operation unmapped, by state: `dirty` + `clean` are all of them, ZERO ones
/// included; `zero` says how many of those were ZERO (had no cache data).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Displaced {
    pub dirty: u64,
    pub clean: u64,
    pub zero: u64,
}

impl Displaced {
    pub fn total(&self) -> u64 {
        self.dirty + self.clean
    }
}

impl From<Cutting> for Displaced {
    fn from(c: Cutting) -> Displaced {
        Displaced {
            dirty: c.dirty,
            clean: c.clean,
            zero: c.zero,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndexStats {
    pub entries: u64,
    /// Blocks with cache data (ZERO blocks are not counted here).
    pub cached_blocks: u64,
    /// Dirty blocks, dirty ZERO blocks included.
    pub dirty_blocks: u64,
    /// Blocks mapped as ZERO, dirty or clean.
    pub zero_blocks: u64,
    pub regions: u64,
    /// Estimated DRAM: shard structures, map tables, chunk directories and entries at their
    /// allocated capacity, plus `ALLOC_OVERHEAD` per heap block.
    pub memory_bytes: u64,
}

/// Pieces gathered under a lock; adjacent pieces that continue each other are merged.
pub(super) struct Out<'a> {
    buf: &'a mut [Piece],
    n: usize,
}

impl Out<'_> {
    /// Adds `p`; false when the buffer is full and `p` does not extend the last piece.
    fn push(&mut self, p: Piece) -> bool {
        if let Some(last) = self.n.checked_sub(1).map(|i| &mut self.buf[i]) {
            match (last, &p) {
                (Piece::Miss { lba, len }, Piece::Miss { lba: l2, len: n2 })
                    if *lba + u64::from(*len) == *l2 =>
                {
                    if let Some(sum) = len.checked_add(*n2) {
                        *len = sum;
                        return true;
                    }
                }
                (Piece::Hit(a), Piece::Hit(b)) if a.continues(b) => {
                    a.len += b.len;
                    return true;
                }
                _ => {}
            }
        }
        match self.buf.get_mut(self.n) {
            Some(slot) => {
                *slot = p;
                self.n += 1;
                true
            }
            None => false,
        }
    }
}

/// Spreads region numbers over shards and hash buckets (splitmix64's finaliser).
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Hashes region numbers for a shard's map, independently of the shard choice.
#[derive(Default)]
struct RegionHasher(u64);

impl Hasher for RegionHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = mix(self.0 ^ u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = mix(n ^ 0x6a09_e667_f3bc_c909);
    }
}

type RegionMap = HashMap<u64, Region, BuildHasherDefault<RegionHasher>>;

struct ShardState {
    regions: RegionMap,
    /// Clock value of the last mapping change in each version bucket.
    versions: [u64; VERSION_BUCKETS],
    tally: Tally,
}

/// One lock's worth of regions, on its own cache lines.
#[repr(align(64))]
struct Shard {
    /// Raised by every mapping change in the shard and by `range_version`.
    clock: AtomicU64,
    state: Mutex<ShardState>,
}

/// At most one shard lock, switched as an operation walks its regions: an operation never
/// holds two locks, so operations cannot deadlock.
struct Held<'a> {
    index: &'a Index,
    cur: Option<(usize, MutexGuard<'a, ShardState>)>,
}

impl<'a> Held<'a> {
    fn new(index: &'a Index) -> Held<'a> {
        Held { index, cur: None }
    }

    fn get(&mut self, shard: usize) -> &mut ShardState {
        if !matches!(&self.cur, Some((s, _)) if *s == shard) {
            self.cur = None;
        }
        let cur = self
            .cur
            .take()
            .unwrap_or_else(|| (shard, self.index.lock(shard)));
        &mut self.cur.insert(cur).1
    }

    fn release(&mut self) {
        self.cur = None;
    }
}

/// Access to the state of the shards an operation holds.
trait Hold {
    fn get(&mut self, shard: usize) -> &mut ShardState;
}

impl Hold for Held<'_> {
    fn get(&mut self, shard: usize) -> &mut ShardState {
        Held::get(self, shard)
    }
}

/// Every shard an ordered insert touches, locked up front (two inline; more only for unmaps).
#[derive(Default)]
struct HeldAll<'a> {
    two: [Option<(usize, MutexGuard<'a, ShardState>)>; 2],
    more: Vec<(usize, MutexGuard<'a, ShardState>)>,
}

impl<'a> HeldAll<'a> {
    fn has(&self, shard: usize) -> bool {
        self.two.iter().flatten().any(|(s, _)| *s == shard)
            || self.more.iter().any(|(s, _)| *s == shard)
    }

    fn push(&mut self, shard: usize, g: MutexGuard<'a, ShardState>) {
        match self.two.iter_mut().find(|x| x.is_none()) {
            Some(slot) => *slot = Some((shard, g)),
            None => self.more.push((shard, g)),
        }
    }
}

impl Hold for HeldAll<'_> {
    fn get(&mut self, shard: usize) -> &mut ShardState {
        let in_two = self
            .two
            .iter()
            .position(|x| matches!(x, Some((s, _)) if *s == shard));
        match in_two {
            Some(i) => match &mut self.two[i] {
                Some((_, g)) => g,
                None => unreachable!("position found a filled slot"),
            },
            None => match self.more.iter_mut().find(|(s, _)| *s == shard) {
                Some((_, g)) => g,
                // Every shard of the extent was locked before the insert began.
                None => unreachable!("shard {shard} was not locked for this insert"),
            },
        }
    }
}

/// One region's share of a range: region number, its first block, offsets [a, b).
#[derive(Clone, Copy)]
struct Span {
    region: u64,
    base: u64,
    a: u32,
    b: u32,
}

/// The DRAM index of a cache. All methods take `&self`; it is shared between reactors.
pub struct Index {
    cfg: IndexConfig,
    region_shift: u32,
    vshift: u32,
    shard_mask: u64,
    chunk_max: usize,
    shards: Box<[Shard]>,
}

impl Index {
    pub fn new(cfg: IndexConfig) -> Result<Index, IndexError> {
        Index::with_chunk_max(cfg, CHUNK_ENTRIES)
    }

    /// Tests use tiny chunks so that chunk splits and merges happen in small regions.
    fn with_chunk_max(cfg: IndexConfig, chunk_max: usize) -> Result<Index, IndexError> {
        cfg.validate()?;
        let region_shift = cfg.region_blocks.ilog2();
        let shards = (0..cfg.shards)
            .map(|_| Shard {
                clock: AtomicU64::new(0),
                state: Mutex::new(ShardState {
                    regions: RegionMap::default(),
                    versions: [0; VERSION_BUCKETS],
                    tally: Tally::default(),
                }),
            })
            .collect();
        Ok(Index {
            cfg,
            region_shift,
            vshift: region_shift.min(VERSION_UNIT_SHIFT),
            shard_mask: cfg.shards as u64 - 1,
            chunk_max: chunk_max.max(2),
            shards,
        })
    }

    pub fn config(&self) -> IndexConfig {
        self.cfg
    }

    fn lock(&self, shard: usize) -> MutexGuard<'_, ShardState> {
        // A panic under the lock would be a bug in this file; the state is still usable.
        self.shards[shard]
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn shard_of(&self, region: u64) -> usize {
        (mix(region) & self.shard_mask) as usize
    }

    /// The part of [cur, end) that lies in cur's region (cur < end).
    fn span(&self, cur: u64, end: u64) -> Span {
        let region = cur >> self.region_shift;
        let base = region << self.region_shift;
        let region_end = base.saturating_add(u64::from(self.cfg.region_blocks));
        Span {
            region,
            base,
            a: (cur - base) as u32,
            b: (end.min(region_end) - base) as u32,
        }
    }

    /// Checks an extent to be mapped; returns its end block.
    fn check(&self, e: &Extent) -> Result<u64, IndexError> {
        if e.zero {
            if e.len == 0 {
                return Err(IndexError::Extent("no blocks"));
            }
            return e
                .lba
                .checked_add(u64::from(e.len))
                .ok_or(IndexError::OutOfRange(
                    "origin range wraps past 2^64 blocks",
                ));
        }
        if e.len > MAX_KEY_BLOCKS || e.orig_len > MAX_KEY_BLOCKS {
            return Err(IndexError::KeyTooLong {
                len: e.len.max(e.orig_len),
                max: MAX_KEY_BLOCKS,
            });
        }
        if e.len == 0 {
            return Err(IndexError::Extent("no blocks"));
        }
        if e.pos < e.orig_pos || e.pos - e.orig_pos + u64::from(e.len) > u64::from(e.orig_len) {
            return Err(IndexError::Extent(
                "the blocks lie outside their original key",
            ));
        }
        if e.orig_pos.saturating_add(u64::from(e.orig_len)) > MAX_CACHE_BLOCKS {
            return Err(IndexError::OutOfRange("cache position beyond 2^32 blocks"));
        }
        e.lba
            .checked_add(u64::from(e.len))
            .ok_or(IndexError::OutOfRange(
                "origin range wraps past 2^64 blocks",
            ))
    }

    /// Stamps the version units of span `s` with a new clock value; returns it. Called after
    /// the change, under the lock: a `range_version` that sees this clock value (Acquire on
    /// the Release of fetch_add) also sees the change, so a later lookup cannot miss it.
    fn stamp(&self, shard: usize, st: &mut ShardState, s: Span) -> u64 {
        let seq = self.shards[shard].clock.fetch_add(1, Ordering::AcqRel) + 1;
        let first = (s.base + u64::from(s.a)) >> self.vshift;
        let last = (s.base + u64::from(s.b) - 1) >> self.vshift;
        if last - first >= VERSION_BUCKETS as u64 {
            st.versions.fill(seq);
        } else {
            for unit in first..=last {
                st.versions[unit as usize % VERSION_BUCKETS] = seq;
            }
        }
        seq
    }

    /// Whether no version unit of span `s` changed after `version`.
    fn unchanged(&self, st: &ShardState, s: Span, version: u64) -> bool {
        let first = (s.base + u64::from(s.a)) >> self.vshift;
        let last = (s.base + u64::from(s.b) - 1) >> self.vshift;
        (first..=last.min(first.saturating_add(VERSION_BUCKETS as u64)))
            .all(|unit| st.versions[unit as usize % VERSION_BUCKETS] <= version)
    }

    /// Maps newer data for [e.lba, e.lba + e.len) over whatever older entries it overlaps
    /// (they are trimmed, split or removed). Returns the blocks it displaced.
    ///
    /// A ZERO extent (unmap, write-zeroes) replaces older entries the same way; it may be of
    /// any length. Its blocks then read as zeroes until newer data replaces them or, when
    /// dirty, until `zero_written_back`.
    pub fn insert(&self, e: &Extent) -> Result<Displaced, IndexError> {
        let end = self.check(e)?;
        Ok(self.insert_held(e, end, &mut Held::new(self)))
    }

    /// `insert`, with the write's sequence number taken from `seq` while every shard the extent
    /// touches is locked. For any block the order of inserts and the order of sequence numbers then
    /// agree across threads, so replay (newest sequence wins) rebuilds exactly what readers saw.
    /// Shards are locked in ascending order, so two inserts never wait on each other in a cycle.
    pub fn insert_ordered(
        &self,
        e: &Extent,
        seq: &AtomicU64,
    ) -> Result<(Displaced, u64), IndexError> {
        let end = self.check(e)?;
        let mut held = self.lock_range(e.lba, end);
        // SeqCst, like every other taker of the write sequence (writeback reasons about it).
        let n = seq.fetch_add(1, Ordering::SeqCst);
        Ok((self.insert_held(e, end, &mut held), n))
    }

    /// `remove_range` with a sequence number taken while the range's shards are locked, as in
    /// `insert_ordered` (for an invalidation logged as a clean UNMAP key: replay then drops
    /// exactly what readers stopped seeing). Ranges wider than the version slots take the
    /// number after an unordered `remove_range`: only huge unmaps do, and the block layer does
    /// not order them against overlapping I/O in flight anyway.
    pub fn remove_ordered(&self, lba: u64, len: u32, seq: &AtomicU64) -> (Displaced, u64) {
        let end = lba.saturating_add(u64::from(len.max(1)));
        let regions = ((end - 1) >> self.region_shift) - (lba >> self.region_shift) + 1;
        if regions > (self.shards.len() * VERSION_BUCKETS) as u64 {
            let d = self.remove_range(lba, len);
            return (d, seq.fetch_add(1, Ordering::SeqCst));
        }
        let mut held = self.lock_range(lba, end);
        let n = seq.fetch_add(1, Ordering::SeqCst);
        (self.drop_held(lba, end, CutMode::Drop, &mut held).into(), n)
    }

    /// Locks every shard [lba, end) touches, in ascending order (two inserts never wait on
    /// each other in a cycle).
    fn lock_range(&self, lba: u64, end: u64) -> HeldAll<'_> {
        let first = lba >> self.region_shift;
        let last = (end - 1) >> self.region_shift;
        let mut held = HeldAll::default();
        if last - first >= self.shards.len() as u64 {
            for shard in 0..self.shards.len() {
                held.push(shard, self.lock(shard));
            }
        } else {
            let (a, b) = (self.shard_of(first), self.shard_of(last));
            if last == first || (last - first == 1 && a != b) {
                // The common case: a data key in one or two regions, no allocation.
                for shard in [a.min(b), a.max(b)] {
                    if !held.has(shard) {
                        held.push(shard, self.lock(shard));
                    }
                }
            } else {
                let mut shards: Vec<usize> = (first..=last).map(|r| self.shard_of(r)).collect();
                shards.sort_unstable();
                shards.dedup();
                for shard in shards {
                    held.push(shard, self.lock(shard));
                }
            }
        }
        held
    }

    fn insert_held(&self, e: &Extent, end: u64, held: &mut impl Hold) -> Displaced {
        let mut cut = Cutting::default();
        let mut cur = e.lba;
        while cur < end {
            let s = self.span(cur, end);
            let shard = self.shard_of(s.region);
            let st = held.get(shard);
            let ShardState { regions, tally, .. } = &mut *st;
            let region = regions.entry(s.region).or_default();
            if e.zero {
                let mut x = s.a;
                while x < s.b {
                    let y = zero_slice(x, s.b);
                    let entry = Entry::piece(e, s.base, x, y);
                    region.insert(entry, tally, self.chunk_max, &mut cut);
                    x = y;
                }
            } else {
                let entry = Entry::piece(e, s.base, s.a, s.b);
                region.insert(entry, tally, self.chunk_max, &mut cut);
            }
            self.stamp(shard, st, s);
            cur = s.base + u64::from(s.b);
        }
        cut.into()
    }

    /// Read-fill: maps the still-unmapped blocks of the extent, provided no mapping in its range
    /// changed since `version` (from `range_version`, taken before the origin read began).
    /// Returns the blocks mapped: 0 when a write, unmap or evict got in first. A region changed
    /// while the fill itself runs is skipped, the others are filled: each region's data is
    /// checked on its own, so a partial fill is still correct. Never overwrites a ZERO entry
    /// (it is mapped); a ZERO extent cannot be filled (EINVAL: a fill carries origin data).
    pub fn fill(&self, e: &Extent, version: u64) -> Result<u32, IndexError> {
        if e.zero {
            return Err(IndexError::Extent("a fill carries data, not zeroes"));
        }
        let end = self.check(e)?;
        let mut held = Held::new(self);
        let head = self.span(e.lba, end);
        if head.base + u64::from(head.b) < end {
            // Several regions: all of them must be unchanged before any is filled.
            let mut cur = e.lba;
            while cur < end {
                let s = self.span(cur, end);
                if !self.unchanged(held.get(self.shard_of(s.region)), s, version) {
                    return Ok(0);
                }
                cur = s.base + u64::from(s.b);
            }
        }
        let mut filled = 0;
        let mut cur = e.lba;
        while cur < end {
            let s = self.span(cur, end);
            let st = held.get(self.shard_of(s.region));
            if self.unchanged(st, s, version) {
                let ShardState { regions, tally, .. } = st;
                let region = regions.entry(s.region).or_default();
                filled += region.fill(s.a, s.b, tally, self.chunk_max, |x, y| {
                    Entry::piece(e, s.base, x, y)
                });
            }
            cur = s.base + u64::from(s.b);
        }
        Ok(filled)
    }

    /// A version for [lba, lba + len) to hand to `fill`: it changes (grows) whenever a mapping
    /// in a region touching the range changes afterwards.
    pub fn range_version(&self, lba: u64, len: u32) -> u64 {
        let end = lba.saturating_add(u64::from(len.max(1)));
        let first = lba >> self.region_shift;
        let last = ((end - 1) >> self.region_shift).max(first);
        let clock = |region: u64| &self.shards[self.shard_of(region)].clock;
        if first == last {
            return clock(first).load(Ordering::Acquire);
        }
        if last - first >= self.shards.len() as u64 {
            let v = self
                .shards
                .iter()
                .map(|s| s.clock.load(Ordering::Acquire))
                .max()
                .unwrap_or(0);
            self.shards.iter().for_each(|s| {
                s.clock.fetch_max(v, Ordering::AcqRel);
            });
            return v;
        }
        let v = (first..=last)
            .map(|r| clock(r).load(Ordering::Acquire))
            .max()
            .unwrap_or(0);
        for r in first..=last {
            clock(r).fetch_max(v, Ordering::AcqRel);
        }
        v
    }

    /// Hands `f` the pieces covering [lba, lba + len) in order, hits and misses; marks the hit
    /// entries REFERENCED (GC's second chance). `f` runs with no lock held, so it may copy data.
    /// A hit on a ZERO extent (`e.zero`) reads as zeroes.
    pub fn lookup(&self, lba: u64, len: u32, mut f: impl FnMut(Piece)) {
        let mut buf = [Piece::Miss { lba: 0, len: 0 }; LOOKUP_BATCH];
        let end = lba.saturating_add(u64::from(len));
        let mut cur = lba;
        while cur < end {
            let (n, covered) = self.lookup_into(cur, (end - cur) as u32, &mut buf);
            buf[..n].iter().for_each(|p| f(*p));
            if covered == 0 {
                break;
            }
            cur += u64::from(covered);
        }
    }

    /// Like `lookup`, into a fixed buffer: fills `out` with the pieces of a prefix of the range
    /// and returns (pieces written, blocks they cover). Call again from lba + covered while
    /// covered < len.
    pub fn lookup_into(&self, lba: u64, len: u32, out: &mut [Piece]) -> (usize, u32) {
        let end = lba.saturating_add(u64::from(len));
        let mut o = Out { buf: out, n: 0 };
        let mut held = Held::new(self);
        let mut cur = lba;
        while cur < end {
            let s = self.span(cur, end);
            let st = held.get(self.shard_of(s.region));
            let stop = match st.regions.get_mut(&s.region) {
                Some(r) => r.lookup(s.base, s.a, s.b, &mut o),
                None => (!o.push(Piece::Miss {
                    lba: cur,
                    len: s.b - s.a,
                }))
                .then_some(s.a),
            };
            if let Some(off) = stop {
                return (o.n, (s.base + u64::from(off) - lba) as u32);
            }
            cur = s.base + u64::from(s.b);
        }
        (o.n, (end - lba) as u32)
    }

    /// Drops every entry in [lba, lba + len), ZERO ones included, and invalidates fills in
    /// flight there, cached or not: the range then reads from the origin. Returns the blocks
    /// dropped. When an unmap also goes to the origin, call this again once the origin has
    /// completed it: a fill whose origin read raced the origin's unmap then gives way too.
    /// (An unmap whose tombstone is written back in sequence order inserts a ZERO extent
    /// instead, and calls `zero_written_back` when the origin has it.)
    pub fn remove_range(&self, lba: u64, len: u32) -> Displaced {
        self.drop_range(lba, len, CutMode::Drop).into()
    }

    /// Writeback has sent the tombstones of [lba, lba + len) to the origin, which has completed
    /// them: the DIRTY ZERO entries there are dropped (the origin reads as zeroes now too, and
    /// dropping saves the memory a clean ZERO entry would keep), and fills in flight there give
    /// way, as after `remove_range`. Clean ZERO entries and entries with data are left alone.
    /// Returns the blocks dropped.
    ///
    /// The range has no cache position to tell tombstones apart: a newer tombstone for the same
    /// blocks, still dirty, is dropped too. Call it only when that is harmless (the origin,
    /// having completed the older unmap, reads those blocks as zeroes until data newer than the
    /// tombstone reaches it).
    pub fn zero_written_back(&self, lba: u64, len: u32) -> u32 {
        self.drop_range(lba, len, CutMode::ZeroDone).dirty as u32
    }

    /// Cuts [lba, lba + len) in `mode` (Drop or ZeroDone) and stamps every version unit there.
    fn drop_range(&self, lba: u64, len: u32, mode: CutMode) -> Cutting {
        let end = lba.saturating_add(u64::from(len));
        if end == lba {
            return Cutting::default();
        }
        let regions = ((end - 1) >> self.region_shift) - (lba >> self.region_shift) + 1;
        if regions > (self.shards.len() * VERSION_BUCKETS) as u64 {
            return self.drop_wide(lba, end, mode);
        }
        self.drop_held(lba, end, mode, &mut Held::new(self))
    }

    fn drop_held(&self, lba: u64, end: u64, mode: CutMode, held: &mut impl Hold) -> Cutting {
        let mut cut = Cutting::default();
        let mut cur = lba;
        while cur < end {
            let s = self.span(cur, end);
            let shard = self.shard_of(s.region);
            let st = held.get(shard);
            self.cut_region(st, s, mode, None, &mut cut, &mut |_, _, _| true);
            // Even with nothing cached here: a fill in flight must not map old origin data.
            self.stamp(shard, st, s);
            cur = s.base + u64::from(s.b);
        }
        cut
    }

    /// drop_range over more regions than there are version slots: visits each shard once and
    /// only the regions it holds.
    fn drop_wide(&self, lba: u64, end: u64, mode: CutMode) -> Cutting {
        let (first, last) = (lba >> self.region_shift, (end - 1) >> self.region_shift);
        let mut cut = Cutting::default();
        for (i, shard) in self.shards.iter().enumerate() {
            let mut st = self.lock(i);
            let seq = shard.clock.fetch_add(1, Ordering::AcqRel) + 1;
            st.versions.fill(seq);
            let ShardState { regions, tally, .. } = &mut *st;
            regions.retain(|&region, r| {
                if region < first || region > last {
                    return true;
                }
                let base = region << self.region_shift;
                let s = self.span(lba.max(base), end);
                let c = Cut {
                    a: s.a,
                    b: s.b,
                    window: None,
                    mode,
                };
                r.cut(&c, tally, self.chunk_max, &mut cut, &mut |_, _, _| true);
                if r.is_empty() {
                    r.clear(tally);
                    return false;
                }
                true
            });
            shrink_map(&mut st.regions);
        }
        cut
    }

    /// GC: drops the blocks of [lba, lba + len) whose data lies in cache blocks
    /// [pos_start, pos_end) (still pointing at a reclaimed key's data). Each dropped piece that
    /// had been REFERENCED goes to `referenced` with a version for `fill`, so GC can give it a
    /// second chance by copying it forward and filling it back (which fails if anything changed
    /// the range meanwhile). `referenced` runs with no lock held. Returns the blocks dropped.
    /// ZERO entries have no cache data, so evict never drops them.
    pub fn evict(
        &self,
        lba: u64,
        len: u32,
        pos_start: u64,
        pos_end: u64,
        mut referenced: impl FnMut(Extent, u64),
    ) -> u32 {
        let end = lba.saturating_add(u64::from(len));
        let mut stash = [(Extent::key(0, 0, 0, 0, false), 0u64); EVICT_BATCH];
        let mut n: usize = 0;
        let mut dropped: u32 = 0;
        let mut held = Held::new(self);
        let mut cur = lba;
        while cur < end {
            let s = self.span(cur, end);
            let shard = self.shard_of(s.region);
            let st = held.get(shard);
            let mut cut = Cutting::default();
            let before = n;
            let resume = self.cut_region(
                st,
                s,
                CutMode::Drop,
                Some((pos_start, pos_end)),
                &mut cut,
                &mut |e, x, y| {
                    let ext = e.extent(s.base, x, y);
                    match n.checked_sub(1).map(|i| &mut stash[i].0) {
                        Some(last) if n > before && last.continues(&ext) => last.len += ext.len,
                        _ => {
                            if let Some(slot) = stash.get_mut(n) {
                                slot.0 = ext;
                                n += 1;
                            }
                        }
                    }
                    n < EVICT_BATCH
                },
            );
            let blocks = cut.dirty + cut.clean;
            if blocks > 0 {
                dropped += blocks as u32;
                let seq = self.stamp(shard, st, s);
                stash[before..n].iter_mut().for_each(|(_, v)| *v = seq);
            }
            if n == EVICT_BATCH {
                held.release();
                stash[..n].iter().for_each(|&(e, v)| referenced(e, v));
                n = 0;
            }
            cur = match resume {
                Some(off) => s.base + u64::from(off),
                None => s.base + u64::from(s.b),
            };
        }
        held.release();
        stash[..n].iter().for_each(|&(e, v)| referenced(e, v));
        dropped
    }

    /// Writeback done: the dirty blocks of [lba, lba + len) whose data lies in cache blocks
    /// [pos_start, pos_end) become clean. Returns the blocks cleaned. ZERO entries have no data
    /// in the cache; see `zero_written_back` for them.
    pub fn mark_clean(&self, lba: u64, len: u32, pos_start: u64, pos_end: u64) -> u32 {
        let end = lba.saturating_add(u64::from(len));
        let mut cut = Cutting::default();
        let mut held = Held::new(self);
        let mut cur = lba;
        while cur < end {
            let s = self.span(cur, end);
            let st = held.get(self.shard_of(s.region));
            self.cut_region(
                st,
                s,
                CutMode::Clean,
                Some((pos_start, pos_end)),
                &mut cut,
                &mut |_, _, _| true,
            );
            cur = s.base + u64::from(s.b);
        }
        cut.dirty as u32
    }

    /// Cuts span `s` of its region, dropping the region once empty.
    fn cut_region<S>(
        &self,
        st: &mut ShardState,
        s: Span,
        mode: CutMode,
        window: Option<(u64, u64)>,
        out: &mut Cutting,
        sink: &mut S,
    ) -> Option<u32>
    where
        S: FnMut(&Entry, u32, u32) -> bool,
    {
        let ShardState { regions, tally, .. } = st;
        let r = regions.get_mut(&s.region)?;
        let c = Cut {
            a: s.a,
            b: s.b,
            window,
            mode,
        };
        let resume = r.cut(&c, tally, self.chunk_max, out, sink);
        if r.is_empty()
            && let Some(r) = regions.remove(&s.region)
        {
            r.free(tally);
            shrink_map(regions);
        }
        resume
    }

    pub fn stats(&self) -> IndexStats {
        let mut st = IndexStats {
            memory_bytes: std::mem::size_of::<Index>() as u64,
            ..IndexStats::default()
        };
        for i in 0..self.shards.len() {
            let g = self.lock(i);
            let t = &g.tally;
            st.entries += t.entries;
            st.cached_blocks += t.cached;
            st.dirty_blocks += t.dirty;
            st.zero_blocks += t.zero;
            st.regions += g.regions.len() as u64;
            st.memory_bytes += shard_bytes(&g);
        }
        st
    }

    /// Estimated DRAM in use (see `IndexStats::memory_bytes`).
    pub fn memory_bytes(&self) -> u64 {
        self.stats().memory_bytes
    }
}

/// Shrinks a shard's map once it is mostly empty, so that a burst of regions does not pin
/// its table.
fn shrink_map(regions: &mut RegionMap) {
    if regions.capacity() > 64 && regions.len() * 4 < regions.capacity() {
        regions.shrink_to(regions.len() * 2);
    }
}

/// A shard's estimated DRAM: the shard itself, its map table and what its regions hold.
fn shard_bytes(st: &ShardState) -> u64 {
    let t = &st.tally;
    let map = match st.regions.capacity() {
        0 => 0,
        cap => {
            // hashbrown: a power-of-two bucket count at most 7/8 full, one control byte per
            // bucket plus a 16-byte group, one allocation.
            let buckets = if cap < 8 { cap + 1 } else { cap * 8 / 7 }.next_power_of_two() as u64;
            buckets * (std::mem::size_of::<(u64, Region)>() as u64 + 1) + 16 + ALLOC_OVERHEAD
        }
    };
    std::mem::size_of::<Shard>() as u64
        + map
        + t.chunk_slots * region::CHUNK_BYTES
        + t.entry_slots * std::mem::size_of::<Entry>() as u64
        + t.allocs * ALLOC_OVERHEAD
}
