//! Replay: rebuilding a cache's DRAM state (index, segment table, lane heads) from its pmem at
//! start (docs/format.md, "Replay").
//!
//! Two passes. The first walks every lane's log from its key tail to its end
//! ([`log::walk_linked`]): it marks the segments the log passes through as that lane's key
//! segments, checks every key against the geometry and the origin, and keeps only where each
//! key-set lies (16 bytes for up to 100 keys). The second merges the lanes in `seq` order — a k-way
//! merge over one decoded key-set per lane, read back from pmem as the merge reaches it, so DRAM
//! never holds the log — and applies each key to the index in that order, so newer keys win:
//!
//! - a data key whose segment's generation differs from the one it recorded is stale: dropped;
//! - a live data key marks its segment as the naming lane's data segment (a data segment has one
//!   writer: two lanes naming it, or a key naming a key segment, is corruption), takes one
//!   reference on it, and maps its blocks, dirty when it is DIRTY and newer than the written-back
//!   sequence;
//! - an UNMAP key (tombstone) removes what older keys mapped in its range. While it is dirty
//!   (DIRTY, `seq` above the written-back sequence) the origin has not received it yet, so the
//!   range is mapped as a dirty ZERO extent (reads see zeroes, not the origin's older data, and
//!   writeback still owes the origin the unmap); a clean one simply removes the range (it reads
//!   from the origin, as after `Index::zero_written_back`).
//!
//! Ordering contract with the writers: within one lane, keys are appended in non-decreasing `seq`
//! (a lane takes its sequence numbers and appends its keys on one thread); a lane whose `seq` goes
//! down is reported as corruption. Equal `seq` (one write split into several keys) is allowed.
//!
//! Contract with GC: a key that is stale, or no longer in the logs, shadows nothing at replay, so
//! older keys it overwrote come back. GC must therefore never drop a key (move a key tail past it,
//! or free its data segment) while it still maps blocks that an older key in some lane's log also
//! names: reclaiming the lanes' logs in `seq` order across lanes guarantees that.
//!
//! Replay only reads pmem. On error the index and segment table are half built: discard them.

use std::cell::Cell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use pmem::Pmem;

use crate::format::{self, FormatError, Key, KsetId, Layout, LogPos, MAX_KSET_SIZE, OpenedMeta};
use crate::index::{Extent, Index, IndexError, MAX_CACHE_BLOCKS, MAX_KEY_BLOCKS};
use crate::log::{self, WalkError};
use crate::segments::{SegUse, SegmentTable, cache_pos};

/// A lane as replay left it: where its log starts and ends, and where its writer resumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaneState {
    pub lane: u32,
    /// From the tails record: where the log starts (GC's position).
    pub key_tail: LogPos,
    /// From the tails record: the oldest key-set not yet written back.
    pub dirty_tail: LogPos,
    /// The end of the log: the lane's next key-set goes here (`LaneLog::new(lane, format_id,
    /// head, head_gen, next_seq)`).
    pub head: LogPos,
    /// The current generation of `head.seg`.
    pub head_gen: u32,
    /// The lane sequence the next key-set must carry.
    pub next_seq: u64,
    /// The data segment of the lane's newest live data key, if it has one. Recommended: do not
    /// append there; start the lane on a freshly allocated data segment. Where the durable data
    /// in it ends is not recorded (writes in flight at the power cut may have left data past the
    /// newest key, and keys need not be sealed in the order their data was placed), so appending
    /// could overwrite blocks a live key names. Starting afresh costs at most the unused tail of
    /// one segment per lane per restart, which GC reclaims with the segment. The segment's
    /// reference count covers its live keys only (no data-head reference).
    pub last_data_seg: Option<u32>,
}

/// What replay rebuilt.
#[derive(Clone, Debug, PartialEq)]
pub struct Replayed {
    /// One per lane of the tails record, in lane order.
    pub lanes: Vec<LaneState>,
    /// The highest `seq` of any key found, or the written-back sequence if that is higher: the
    /// global write sequence resumes at `max_seq + 1`.
    pub max_seq: u64,
    /// Keys read from the logs: live, stale and UNMAP.
    pub keys: u64,
    /// Data keys dropped because their segment's generation moved on.
    pub stale_keys: u64,
    /// UNMAP keys (tombstones) applied.
    pub unmaps: u64,
    /// Dirty blocks in the index after replay (dirty ZERO blocks included), as
    /// `IndexStats::dirty_blocks` counts them.
    pub dirty_blocks: u64,
    pub elapsed: Duration,
    /// `keys / elapsed`.
    pub keys_per_sec: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The index or segment table handed in does not fit this cache, or is not empty (EINVAL).
    #[error("cannot replay: {0}")]
    Invalid(String),

    /// A lane's log cannot be walked: a damaged key-set in the middle, an intact key-set that
    /// breaks the format, a pmem error.
    #[error("lane {lane}: key log from {}:{}: {source}", .from.seg, .from.off)]
    Walk {
        lane: u32,
        from: LogPos,
        source: WalkError,
    },

    /// The key-set at `at` breaks a rule replay checks: a key outside the origin or the cache,
    /// a data segment used two ways, `seq` going down (EIO); or pmem failed reading it.
    /// `lane_seq` 0: not a key-set but the lane's key tail or a LAST link at `at`, naming a
    /// segment another lane's log or a data key already uses (EIO).
    #[error("lane {lane}: {} at {}:{}: {source}", what(.lane_seq), .at.seg, .at.off)]
    Format {
        lane: u32,
        at: LogPos,
        lane_seq: u64,
        source: FormatError,
    },

    /// The index refused a key read from media (EIO).
    #[error("lane {lane}: key-set {lane_seq} at {}:{}: key {key}: {source}", .at.seg, .at.off)]
    Index {
        lane: u32,
        at: LogPos,
        lane_seq: u64,
        key: usize,
        source: IndexError,
    },
}

/// Names the log position of a [`ReplayError::Format`].
fn what(lane_seq: &u64) -> String {
    match lane_seq {
        0 => "log position".into(),
        n => format!("key-set {n}"),
    }
}

impl ReplayError {
    /// Positive errno for SPDK-style answers.
    pub fn errno(&self) -> i32 {
        match self {
            Self::Invalid(_) => libc::EINVAL,
            Self::Walk { source, .. } => source.errno(),
            Self::Format { source, .. } => source.errno(),
            Self::Index { .. } => libc::EIO,
        }
    }
}

/// Where a key-set with keys lies in a lane's log (LAST key-sets are not kept).
#[derive(Clone, Copy, Debug)]
struct KsetRef {
    pos: LogPos,
    lane_seq: u64,
}

/// Pass one's result for a lane.
struct Scanned {
    state: LaneState,
    ksets: Vec<KsetRef>,
    keys: u64,
}

/// What both passes read.
struct Ctx<'a> {
    pmem: &'a dyn Pmem,
    layout: &'a Layout,
    gens: &'a [u32],
    format_id: u64,
    origin_blocks: u64,
}

/// Rebuild `index` and `segments` from the logs on `pmem`, as opened by [`format::open`].
///
/// `index` must be empty and shaped for the cache's block size; `segments` must be fresh
/// (`SegmentTable::new(meta.gens.clone())`). Afterwards the segments the logs pass through are
/// their lanes' key segments, the segments live keys name are their lanes' data segments with one
/// reference per live key, and every other segment is free.
pub fn replay(
    pmem: &dyn Pmem,
    meta: &OpenedMeta,
    index: &Index,
    segments: &SegmentTable,
) -> Result<Replayed, ReplayError> {
    let started = Instant::now();
    let layout = &meta.layout;
    check_inputs(meta, index, segments)?;
    let ctx = Ctx {
        pmem,
        layout,
        gens: &meta.gens,
        format_id: meta.superblock.format_id,
        origin_blocks: meta.superblock.origin.blocks,
    };

    let mut scanned = Vec::with_capacity(meta.tails.lanes().len());
    for (lane, tails) in (0u32..).zip(meta.tails.lanes()) {
        scanned.push(scan_lane(
            &ctx,
            segments,
            lane,
            tails.key_tail,
            tails.dirty_tail,
        )?);
    }

    let mut apply = Apply {
        ctx: &ctx,
        index,
        segments,
        written_back: meta.tails.written_back_seq,
        data_owner: vec![NO_LANE; layout.segment_count() as usize],
        refs: vec![0; layout.segment_count() as usize],
        last_data_seg: vec![None; scanned.len()],
        max_seq: meta.tails.written_back_seq,
        stale: 0,
        unmaps: 0,
        dirty_blocks: 0,
    };
    merge(&ctx, &scanned, &mut apply)?;
    // The references counted during the merge, taken in one go per segment.
    for (seg, &n) in (0u32..).zip(&apply.refs) {
        for _ in 0..n {
            segments.get_ref(seg);
        }
    }

    let keys = scanned.iter().map(|s| s.keys).sum::<u64>();
    let lanes: Vec<LaneState> = scanned
        .iter()
        .zip(&apply.last_data_seg)
        .map(|(s, &last)| LaneState {
            last_data_seg: last,
            ..s.state
        })
        .collect();
    let elapsed = started.elapsed();
    let secs = elapsed.as_secs_f64();
    let keys_per_sec = if secs > 0.0 { keys as f64 / secs } else { 0.0 };
    tracing::debug!(
        keys,
        stale = apply.stale,
        unmaps = apply.unmaps,
        dirty_blocks = apply.dirty_blocks,
        max_seq = apply.max_seq,
        ?elapsed,
        "replayed the key logs"
    );
    Ok(Replayed {
        lanes,
        max_seq: apply.max_seq,
        keys,
        stale_keys: apply.stale,
        unmaps: apply.unmaps,
        dirty_blocks: apply.dirty_blocks,
        elapsed,
        keys_per_sec,
    })
}

fn check_inputs(
    meta: &OpenedMeta,
    index: &Index,
    segments: &SegmentTable,
) -> Result<(), ReplayError> {
    let layout = &meta.layout;
    let invalid = |why: String| Err(ReplayError::Invalid(why));
    if index.config().block_size != layout.block_size() {
        return invalid(format!(
            "the index is for {}-byte blocks, the cache has {}-byte blocks",
            index.config().block_size,
            layout.block_size()
        ));
    }
    let cache_blocks = u64::from(layout.segment_count()) * u64::from(layout.blocks_per_segment());
    if cache_blocks > MAX_CACHE_BLOCKS {
        return invalid(format!(
            "the cache holds {cache_blocks} blocks, the index addresses at most \
             {MAX_CACHE_BLOCKS}"
        ));
    }
    if index.stats().entries != 0 {
        return invalid("the index is not empty".into());
    }
    let counts = segments.counts();
    if counts.total != layout.segment_count() || counts.used != 0 {
        return invalid(format!(
            "the segment table ({} segments, {} in use) is not a fresh table for {} segments",
            counts.total,
            counts.used,
            layout.segment_count()
        ));
    }
    if meta.gens.len() != layout.segment_count() as usize
        || (0u32..)
            .zip(&meta.gens)
            .any(|(seg, &g)| segments.generation(seg) != Some(g))
    {
        return invalid(
            "the segment table's generations are not the generation table read at open".into(),
        );
    }
    Ok(())
}

/// Pass one for a lane: walk its log, mark its key segments, check its keys, note where its
/// key-sets lie.
fn scan_lane(
    ctx: &Ctx,
    segments: &SegmentTable,
    lane: u32,
    key_tail: LogPos,
    dirty_tail: LogPos,
) -> Result<Scanned, ReplayError> {
    // Lanes are < 64 (the tails record allows no more), so they fit the segment table's u16.
    let key_use = SegUse::Key { lane: lane as u16 };
    let mark = |at: LogPos, lane_seq: u64, seg: u32| {
        segments
            .mark_used(seg, key_use)
            .map_err(|source| ReplayError::Format {
                lane,
                at,
                lane_seq,
                source,
            })
    };
    mark(key_tail, 0, key_tail.seg)?;

    // The callbacks report errors as FormatError; the precise ReplayError waits here.
    let failed: Cell<Option<ReplayError>> = Cell::new(None);
    let mut ksets: Vec<KsetRef> = Vec::new();
    let mut links: Vec<LogPos> = Vec::new();
    let mut keys = 0u64;
    let mut last_seq = 0u64;
    let stop = || FormatError::corrupt("key log", "replay stopped");
    let walked = log::walk_linked(
        ctx.pmem,
        ctx.layout,
        ctx.gens,
        ctx.format_id,
        lane,
        key_tail,
        |at, next| {
            // The LAST key-set's own lane sequence is not at hand: 0, "a log position".
            mark(at, 0, next).map_err(|e| {
                failed.set(Some(e));
                stop()
            })?;
            links.push(at);
            Ok(())
        },
        |found| {
            let lane_seq = found.header.lane_seq;
            for (i, k) in found.keys.iter().enumerate() {
                let why = match k.check_bounds(ctx.layout, ctx.origin_blocks) {
                    Err(FormatError::Corrupt { why, .. }) => Some(why),
                    Err(e) => Some(e.to_string()),
                    Ok(()) if !k.is_unmap() && k.len > MAX_KEY_BLOCKS => {
                        Some(format!("{} blocks, at most {MAX_KEY_BLOCKS}", k.len))
                    }
                    Ok(()) if k.seq < last_seq => Some(format!(
                        "seq {} after seq {last_seq}: a lane's keys never go back",
                        k.seq
                    )),
                    Ok(()) => None,
                };
                if let Some(why) = why {
                    failed.set(Some(ReplayError::Format {
                        lane,
                        at: found.pos,
                        lane_seq,
                        source: FormatError::corrupt("key", format!("key {i}: {why}")),
                    }));
                    return Err(stop());
                }
                last_seq = k.seq;
            }
            keys += found.keys.len() as u64;
            ksets.push(KsetRef {
                pos: found.pos,
                lane_seq,
            });
            Ok(())
        },
    );
    let end = match (walked, failed.take()) {
        (_, Some(e)) => return Err(e),
        (Err(source), None) => {
            return Err(ReplayError::Walk {
                lane,
                from: key_tail,
                source,
            });
        }
        (Ok(end), None) => end,
    };
    // Writeback resumes at the dirty tail: it must be a position of this log.
    let on_path = dirty_tail == key_tail
        || dirty_tail == end.head
        || links.contains(&dirty_tail)
        || ksets.iter().any(|k| k.pos == dirty_tail);
    if !on_path {
        tracing::warn!(
            lane,
            dirty_tail = ?dirty_tail,
            key_tail = ?key_tail,
            head = ?end.head,
            "the dirty tail is not a position of the lane's key log"
        );
    }
    tracing::debug!(lane, ?key_tail, head = ?end.head, key_sets = ksets.len(), keys,
        end = %end.reason, "lane log walked");
    Ok(Scanned {
        state: LaneState {
            lane,
            key_tail,
            dirty_tail,
            head: end.head,
            head_gen: end.head_gen,
            next_seq: end.next_seq,
            last_data_seg: None,
        },
        ksets,
        keys,
    })
}

/// A lane's place in the merge: its key-sets, and the keys of the one being merged.
struct Cursor<'a> {
    lane: u32,
    ksets: &'a [KsetRef],
    /// The key-set `keys` came from: `ksets[next_kset - 1]`.
    next_kset: usize,
    keys: Vec<Key>,
    next_key: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<&Key> {
        self.keys.get(self.next_key)
    }

    fn current(&self) -> KsetRef {
        self.ksets
            .get(self.next_kset.wrapping_sub(1))
            .copied()
            .unwrap_or(KsetRef {
                pos: LogPos::default(),
                lane_seq: 0,
            })
    }

    /// Moves past the current key (see [`Cursor::fill`]).
    fn advance(&mut self, ctx: &Ctx, buf: &mut [u8]) -> Result<(), ReplayError> {
        self.next_key += 1;
        self.fill(ctx, buf)
    }

    /// Reads key-sets until one has a key left to merge or none are left.
    fn fill(&mut self, ctx: &Ctx, buf: &mut [u8]) -> Result<(), ReplayError> {
        while self.next_key >= self.keys.len() {
            let Some(&k) = self.ksets.get(self.next_kset) else {
                self.keys.clear();
                self.next_key = 0;
                return Ok(());
            };
            self.next_kset += 1;
            self.load(ctx, k, buf)?;
        }
        Ok(())
    }

    /// Reads back key-set `k`, which pass one found valid.
    fn load(&mut self, ctx: &Ctx, k: KsetRef, buf: &mut [u8]) -> Result<(), ReplayError> {
        let fail = |source: FormatError| ReplayError::Format {
            lane: self.lane,
            at: k.pos,
            lane_seq: k.lane_seq,
            source,
        };
        let seg_gen = ctx.gens.get(k.pos.seg as usize).copied().unwrap_or(0);
        let base = ctx.layout.segment_offset(k.pos.seg).map_err(fail)?;
        let room = ctx.layout.segment_size().saturating_sub(k.pos.off) as usize;
        let n = room.min(buf.len());
        let buf = &mut buf[..n];
        ctx.pmem
            .read(base + u64::from(k.pos.off), buf)
            .map_err(|e| fail(e.into()))?;
        let expect = KsetId {
            format_id: ctx.format_id,
            lane: self.lane,
            lane_seq: k.lane_seq,
            seg_gen,
        };
        let view = format::decode_kset(buf, expect).map_err(|e| {
            fail(FormatError::corrupt(
                "key-set",
                format!("changed while replay read it: {e}"),
            ))
        })?;
        self.keys.clear();
        self.keys.extend(view.keys());
        self.next_key = 0;
        Ok(())
    }
}

/// Pass two: every lane's keys into `apply`, in `seq` order.
fn merge(ctx: &Ctx, scanned: &[Scanned], apply: &mut Apply) -> Result<(), ReplayError> {
    let mut buf = vec![0u8; MAX_KSET_SIZE];
    let mut cursors: Vec<Cursor> = scanned
        .iter()
        .map(|s| Cursor {
            lane: s.state.lane,
            ksets: &s.ksets,
            next_kset: 0,
            keys: Vec::with_capacity(format::MAX_KEYS_PER_KSET),
            next_key: 0,
        })
        .collect();
    // Min-heap of (seq of the lane's next key, cursor); ties go to the lower lane.
    let mut heap: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::with_capacity(cursors.len());
    for (i, c) in cursors.iter_mut().enumerate() {
        c.fill(ctx, &mut buf)?;
        if let Some(k) = c.peek() {
            heap.push(Reverse((k.seq, i)));
        }
    }
    while let Some(Reverse((_, i))) = heap.pop() {
        let c = &mut cursors[i];
        // Take this lane's keys for as long as they come before every other lane's next key.
        while let Some(&key) = c.peek() {
            let at = c.current();
            apply.key(c.lane, at, c.next_key, &key)?;
            c.advance(ctx, &mut buf)?;
            let Some(next) = c.peek() else { break };
            let first = match heap.peek() {
                Some(Reverse(top)) => (next.seq, i) < *top,
                None => true,
            };
            if !first {
                heap.push(Reverse((next.seq, i)));
                break;
            }
        }
    }
    Ok(())
}

const NO_LANE: u8 = u8::MAX;

/// Pass two's state: what the keys, applied in `seq` order, do to the index and segments.
struct Apply<'a> {
    ctx: &'a Ctx<'a>,
    index: &'a Index,
    segments: &'a SegmentTable,
    written_back: u64,
    /// Which lane's data segment each segment is (`NO_LANE`: none yet).
    data_owner: Vec<u8>,
    /// Live keys naming each segment.
    refs: Vec<u32>,
    last_data_seg: Vec<Option<u32>>,
    max_seq: u64,
    stale: u64,
    unmaps: u64,
    dirty_blocks: u64,
}

impl Apply<'_> {
    /// Applies key `i` of the key-set at `at` of `lane`.
    fn key(&mut self, lane: u32, at: KsetRef, i: usize, k: &Key) -> Result<(), ReplayError> {
        self.max_seq = self.max_seq.max(k.seq);
        let dirty = k.is_dirty() && k.seq > self.written_back;
        let index_err = |source| ReplayError::Index {
            lane,
            at: at.pos,
            lane_seq: at.lane_seq,
            key: i,
            source,
        };
        if k.is_unmap() {
            self.unmaps += 1;
            let displaced = if dirty {
                self.dirty_blocks += u64::from(k.len);
                self.index
                    .insert(&Extent::zero(k.origin_off, k.len, true))
                    .map_err(index_err)?
            } else {
                self.index.remove_range(k.origin_off, k.len)
            };
            self.dirty_blocks = self.dirty_blocks.saturating_sub(displaced.dirty);
            return Ok(());
        }
        let seg = k.data_seg;
        // In range: pass one checked every key's bounds.
        if self.ctx.gens.get(seg as usize) != Some(&k.data_gen) {
            self.stale += 1;
            return Ok(());
        }
        self.own(lane, at, i, seg)?;
        if let Some(r) = self.refs.get_mut(seg as usize) {
            *r = r.saturating_add(1);
        }
        if let Some(l) = self.last_data_seg.get_mut(lane as usize) {
            *l = Some(seg);
        }
        let pos = cache_pos(self.ctx.layout, seg, k.data_off);
        let e = Extent::key(k.origin_off, k.len, pos, k.data_crc, dirty);
        let displaced = self.index.insert(&e).map_err(index_err)?;
        if dirty {
            self.dirty_blocks += u64::from(k.len);
        }
        self.dirty_blocks = self.dirty_blocks.saturating_sub(displaced.dirty);
        Ok(())
    }

    /// `seg` holds data written by `lane`: mark it so the first time, refuse a second writer.
    fn own(&mut self, lane: u32, at: KsetRef, i: usize, seg: u32) -> Result<(), ReplayError> {
        let fail = |source: FormatError| ReplayError::Format {
            lane,
            at: at.pos,
            lane_seq: at.lane_seq,
            source,
        };
        let Some(owner) = self.data_owner.get_mut(seg as usize) else {
            return Err(fail(FormatError::corrupt(
                "key",
                format!("key {i}: data segment {seg} is out of range"),
            )));
        };
        // Lanes are < 64.
        let me = lane as u8;
        if *owner == me {
            return Ok(());
        }
        if *owner != NO_LANE {
            return Err(fail(FormatError::corrupt(
                "key",
                format!(
                    "key {i}: data segment {seg} is already lane {}'s: a data segment has one writer",
                    *owner
                ),
            )));
        }
        self.segments
            .mark_used(seg, SegUse::Data { lane: lane as u16 })
            .map_err(|e| {
                fail(FormatError::corrupt(
                    "key",
                    format!("key {i}: names data in segment {seg}: {e}"),
                ))
            })?;
        *owner = me;
        Ok(())
    }
}
