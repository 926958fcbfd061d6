//! The index against a trivially correct model: one map entry per cached block.
//!
//! Regions are tiny (1–16 blocks) and chunks hold 2–4 entries, so keys are cut at region
//! boundaries and chunks split and merge all the time. After every step the structure is
//! checked (order, bounds, chunk sizes, tallies against a recount) and so are the stats. A
//! block is unmapped, mapped to cache data, or ZERO (reads as zeroes, no cache data).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use proptest::collection::vec;
use proptest::prelude::*;

use super::region::Tally;
use super::*;

/// A failed check, for proptest: `TestCaseError::fail(format!(..))`.
macro_rules! fail {
    ($($arg:tt)*) => {
        ::proptest::test_runner::TestCaseError::fail(format!($($arg)*))
    };
}
pub(super) use fail;

impl Index {
    /// Walks every shard and checks the structure and the running tallies against a recount.
    fn check_invariants(&self) -> Result<(), TestCaseError> {
        for i in 0..self.shards.len() {
            let g = self.lock(i);
            let mut t = Tally::default();
            for (&region, r) in &g.regions {
                if self.shard_of(region) != i {
                    return Err(fail!("region {region} in shard {i}"));
                }
                r.check(self.cfg.region_blocks, self.chunk_max, &mut t)
                    .map_err(|e| fail!("region {region}: {e}"))?;
            }
            if t != g.tally {
                return Err(fail!("shard {i}: tally {:?} but recount {t:?}", g.tally));
            }
        }
        Ok(())
    }
}

/// What the model knows of one mapped block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Block {
    kind: Kind,
    dirty: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Cached data at cache block `pos`, from the key at [orig_pos, orig_pos + orig_len).
    Data {
        pos: u64,
        orig_pos: u64,
        orig_len: u32,
        crc: u32,
    },
    /// Reads as zeroes; no cache data.
    Zero,
}

struct Model {
    blocks: BTreeMap<u64, Block>,
    /// Blocks that a lookup returned since they were mapped (a subset of REFERENCED).
    seen: BTreeSet<u64>,
    /// Time of the last mapping change per version slot, keyed as the index keys them.
    stamps: HashMap<(usize, u64), u64>,
}

impl Model {
    fn new() -> Model {
        Model {
            blocks: BTreeMap::new(),
            seen: BTreeSet::new(),
            stamps: HashMap::new(),
        }
    }

    fn slot(idx: &Index, unit: u64) -> (usize, u64) {
        let region = (unit << idx.vshift) >> idx.region_shift;
        (idx.shard_of(region), unit % VERSION_BUCKETS as u64)
    }

    fn stamp(&mut self, idx: &Index, lba: u64, end: u64, time: u64) {
        for unit in (lba >> idx.vshift)..=((end - 1) >> idx.vshift) {
            self.stamps.insert(Model::slot(idx, unit), time);
        }
    }

    fn changed_since(&self, idx: &Index, lba: u64, end: u64, time: u64) -> bool {
        ((lba >> idx.vshift)..=((end - 1) >> idx.vshift)).any(|u| {
            self.stamps
                .get(&Model::slot(idx, u))
                .is_some_and(|&t| t > time)
        })
    }

    /// Stamps what `drop_range` stamps: the range's units, or every slot of every shard when
    /// the range spans more regions than there are version slots.
    fn stamp_drop(&mut self, idx: &Index, lba: u64, end: u64, time: u64) {
        let regions = ((end - 1) >> idx.region_shift) - (lba >> idx.region_shift) + 1;
        if regions > (idx.shards.len() * VERSION_BUCKETS) as u64 {
            for shard in 0..idx.shards.len() {
                for b in 0..VERSION_BUCKETS as u64 {
                    self.stamps.insert((shard, b), time);
                }
            }
        } else {
            self.stamp(idx, lba, end, time);
        }
    }

    fn drop_block(&mut self, b: u64, d: &mut Displaced) {
        if let Some(old) = self.blocks.remove(&b) {
            self.seen.remove(&b);
            if old.dirty {
                d.dirty += 1;
            } else {
                d.clean += 1;
            }
            if old.kind == Kind::Zero {
                d.zero += 1;
            }
        }
    }

    fn block_of(e: &Extent, i: u64) -> Block {
        let kind = if e.zero {
            Kind::Zero
        } else {
            Kind::Data {
                pos: e.pos + i,
                orig_pos: e.orig_pos,
                orig_len: e.orig_len,
                crc: e.crc,
            }
        };
        Block {
            kind,
            dirty: e.dirty,
        }
    }

    fn insert(&mut self, e: &Extent) -> Displaced {
        let mut d = Displaced::default();
        for i in 0..u64::from(e.len) {
            self.drop_block(e.lba + i, &mut d);
            self.blocks.insert(e.lba + i, Model::block_of(e, i));
        }
        d
    }

    /// Unmapped blocks of the extent (what a fill would map).
    fn gaps(&self, e: &Extent) -> u32 {
        (0..u64::from(e.len))
            .filter(|i| !self.blocks.contains_key(&(e.lba + i)))
            .count() as u32
    }

    fn fill(&mut self, e: &Extent) {
        for i in 0..u64::from(e.len) {
            self.blocks
                .entry(e.lba + i)
                .or_insert_with(|| Model::block_of(e, i));
        }
    }

    /// Whether a windowed cut (evict, mark_clean) selects `b`: never a ZERO block.
    fn in_window(b: &Block, lo: u64, hi: u64) -> bool {
        matches!(b.kind, Kind::Data { pos, .. } if (lo..hi).contains(&pos))
    }

    fn count(&self, f: impl Fn(&Block) -> bool) -> u64 {
        self.blocks.values().filter(|b| f(b)).count() as u64
    }

    fn regions(&self, shift: u32) -> u64 {
        self.blocks
            .keys()
            .map(|b| b >> shift)
            .collect::<BTreeSet<_>>()
            .len() as u64
    }
}

#[derive(Clone, Debug)]
enum Op {
    Insert {
        lba: u64,
        len: u32,
        pos: u64,
        head: u32,
        tail: u32,
        crc: u32,
        dirty: bool,
    },
    Snapshot {
        slot: usize,
        lba: u64,
        len: u32,
    },
    Fill {
        slot: usize,
        pos: u64,
        head: u32,
        tail: u32,
        crc: u32,
        dirty: bool,
    },
    Zero {
        lba: u64,
        len: u32,
        dirty: bool,
        /// Put in the fields a ZERO extent ignores.
        noise: u64,
    },
    ZeroDone {
        lba: u64,
        len: u32,
    },
    Remove {
        lba: u64,
        len: u32,
    },
    Evict {
        lba: u64,
        len: u32,
        lo: u64,
        hi: u64,
    },
    Clean {
        lba: u64,
        len: u32,
        lo: u64,
        hi: u64,
    },
    Lookup {
        lba: u64,
        len: u32,
        buf: usize,
    },
    GcRefill {
        pos: u64,
    },
    Bad {
        kind: u8,
        lba: u64,
    },
}

/// Origin blocks: mostly a small window so that ranges overlap, sometimes the very end of the
/// 64-bit space.
fn lba() -> impl Strategy<Value = u64> {
    prop_oneof![9 => 0u64..96, 1 => (0u64..48).prop_map(|k| u64::MAX - k)]
}

/// Lengths of unmaps: mostly small, sometimes longer than a key, rarely huge (more regions
/// than version slots: the wide path).
fn unmap_len(min: u32) -> impl Strategy<Value = u32> {
    prop_oneof![12 => min..30u32, 2 => 8000u32..9000, 1 => Just(u32::MAX)]
}

fn window() -> impl Strategy<Value = (u64, u64)> {
    prop_oneof![1 => Just((0, u64::MAX)), 3 => (0u64..420, 0u64..80).prop_map(|(lo, n)| (lo, lo + n))]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (lba(), 1u32..24, 0u64..400, 0u32..4, 0u32..4, any::<u32>(), any::<bool>())
            .prop_map(|(lba, len, pos, head, tail, crc, dirty)| Op::Insert { lba, len, pos, head, tail, crc, dirty }),
        2 => (0usize..4, lba(), 1u32..24).prop_map(|(slot, lba, len)| Op::Snapshot { slot, lba, len }),
        3 => (0usize..4, 0u64..400, 0u32..4, 0u32..4, any::<u32>(), any::<bool>())
            .prop_map(|(slot, pos, head, tail, crc, dirty)| Op::Fill { slot, pos, head, tail, crc, dirty }),
        2 => (lba(), unmap_len(0)).prop_map(|(lba, len)| Op::Remove { lba, len }),
        3 => (lba(), unmap_len(1), any::<bool>(), any::<u64>())
            .prop_map(|(lba, len, dirty, noise)| Op::Zero { lba, len: len.min(9000), dirty, noise }),
        2 => (lba(), unmap_len(0)).prop_map(|(lba, len)| Op::ZeroDone { lba, len }),
        3 => (lba(), 0u32..40, window()).prop_map(|(lba, len, (lo, hi))| Op::Evict { lba, len, lo, hi }),
        2 => (lba(), 0u32..40, window()).prop_map(|(lba, len, (lo, hi))| Op::Clean { lba, len, lo, hi }),
        4 => (lba(), 0u32..40, 0usize..4).prop_map(|(lba, len, buf)| Op::Lookup { lba, len, buf }),
        1 => (0u64..400).prop_map(|pos| Op::GcRefill { pos }),
        1 => (0u8..9, lba()).prop_map(|(kind, lba)| Op::Bad { kind, lba }),
    ]
}

/// A key's extent: `len` visible blocks at `pos`, inside a key that starts `head` blocks
/// earlier and ends `tail` blocks later.
fn extent(lba: u64, len: u32, pos: u64, head: u32, tail: u32, crc: u32, dirty: bool) -> Extent {
    let head = pos.min(u64::from(head));
    Extent {
        lba,
        len,
        pos,
        orig_pos: pos - head,
        orig_len: len + head as u32 + tail,
        crc,
        dirty,
        zero: false,
    }
}

/// Checks that pieces tile [lba, lba + len) in canonical form and returns them block by block.
fn tile(pieces: &[Piece], lba: u64, len: u32) -> Result<Vec<(u64, Option<Block>)>, TestCaseError> {
    let mut blocks = Vec::new();
    let mut at = lba;
    for (k, p) in pieces.iter().enumerate() {
        if p.lba() != at || p.is_empty() {
            return Err(fail!("piece {k} {p:?} does not continue at {at}"));
        }
        if let Piece::Hit(e) = p
            && e.zero
            && (e.pos, e.orig_pos, e.orig_len, e.crc) != (0, 0, 0, 0)
        {
            return Err(fail!("ZERO piece {k} {p:?} not canonical"));
        }
        if let Some(prev) = k.checked_sub(1).map(|i| &pieces[i]) {
            let mergeable = match (prev, p) {
                (Piece::Miss { .. }, Piece::Miss { .. }) => true,
                (Piece::Hit(a), Piece::Hit(b)) => a.continues(b),
                _ => false,
            };
            if mergeable {
                return Err(fail!("pieces {prev:?} and {p:?} should have been one"));
            }
        }
        for i in 0..u64::from(p.len()) {
            let b = match p {
                Piece::Hit(e) => Some(Model::block_of(e, i)),
                Piece::Miss { .. } => None,
            };
            blocks.push((at + i, b));
        }
        at += u64::from(p.len());
    }
    if at != lba.saturating_add(u64::from(len)) {
        return Err(fail!(
            "pieces end at {at}, range at {}",
            lba.saturating_add(u64::from(len))
        ));
    }
    Ok(blocks)
}

struct Case {
    idx: Index,
    m: Model,
    slots: [Option<(u64, u64, u64, u32)>; 4],
    gc: Option<(Extent, u64, u64)>,
}

impl Case {
    fn step(&mut self, time: u64, op: &Op) -> Result<(), TestCaseError> {
        let Case { idx, m, slots, gc } = self;
        match *op {
            Op::Insert {
                lba,
                len,
                pos,
                head,
                tail,
                crc,
                dirty,
            } => {
                let e = extent(lba, len, pos, head, tail, crc, dirty);
                match idx.insert(&e) {
                    Ok(d) => {
                        m.stamp(idx, lba, lba + u64::from(len), time);
                        let want = m.insert(&e);
                        if d != want {
                            return Err(fail!("insert {e:?} displaced {d:?}, model {want:?}"));
                        }
                    }
                    Err(err) if lba.checked_add(u64::from(len)).is_none() => {
                        if err.errno() != libc::EINVAL {
                            return Err(fail!("wrapping insert gave {err:?}"));
                        }
                    }
                    Err(err) => return Err(fail!("insert {e:?} failed: {err}")),
                }
            }
            Op::Snapshot { slot, lba, len } => {
                let len = len.min(u32::try_from(u64::MAX - lba).unwrap_or(u32::MAX));
                slots[slot] = (len > 0).then(|| (idx.range_version(lba, len), time, lba, len));
            }
            Op::Fill {
                slot,
                pos,
                head,
                tail,
                crc,
                dirty,
            } => {
                let Some((version, since, lba, len)) = slots[slot] else {
                    return Ok(());
                };
                let e = extent(lba, len, pos, head, tail, crc, dirty);
                let got = idx
                    .fill(&e, version)
                    .map_err(|err| fail!("fill {e:?}: {err}"))?;
                let want = if m.changed_since(idx, lba, lba + u64::from(len), since) {
                    0
                } else {
                    m.gaps(&e)
                };
                if got != want {
                    return Err(fail!(
                        "fill {e:?} at version {version} mapped {got}, model {want}"
                    ));
                }
                if want > 0 {
                    m.fill(&e);
                }
            }
            Op::Zero {
                lba,
                len,
                dirty,
                noise,
            } => {
                let e = Extent {
                    pos: noise,
                    orig_pos: noise >> 7,
                    orig_len: noise as u32,
                    crc: (noise >> 32) as u32,
                    ..Extent::zero(lba, len, dirty)
                };
                match idx.insert(&e) {
                    Ok(d) => {
                        m.stamp(idx, lba, lba + u64::from(len), time);
                        let want = m.insert(&e);
                        if d != want {
                            return Err(fail!("zero {e:?} displaced {d:?}, model {want:?}"));
                        }
                    }
                    Err(err) if lba.checked_add(u64::from(len)).is_none() => {
                        if err.errno() != libc::EINVAL {
                            return Err(fail!("wrapping zero gave {err:?}"));
                        }
                    }
                    Err(err) => return Err(fail!("zero {e:?} failed: {err}")),
                }
            }
            Op::ZeroDone { lba, len } => {
                let got = idx.zero_written_back(lba, len);
                let end = lba.saturating_add(u64::from(len));
                let mut want = 0;
                if end > lba {
                    m.stamp_drop(idx, lba, end, time);
                    let done: Vec<u64> = m
                        .blocks
                        .range(lba..end)
                        .filter(|(_, b)| b.kind == Kind::Zero && b.dirty)
                        .map(|(&k, _)| k)
                        .collect();
                    for b in done {
                        m.blocks.remove(&b);
                        m.seen.remove(&b);
                        want += 1;
                    }
                }
                if got != want {
                    return Err(fail!(
                        "zero_written_back {lba}+{len} dropped {got}, model {want}"
                    ));
                }
            }
            Op::Remove { lba, len } => {
                let d = idx.remove_range(lba, len);
                let end = lba.saturating_add(u64::from(len));
                let mut want = Displaced::default();
                if end > lba {
                    m.stamp_drop(idx, lba, end, time);
                    let gone: Vec<u64> = m.blocks.range(lba..end).map(|(&k, _)| k).collect();
                    gone.into_iter().for_each(|b| m.drop_block(b, &mut want));
                }
                if d != want {
                    return Err(fail!("remove {lba}+{len} dropped {d:?}, model {want:?}"));
                }
            }
            Op::Evict { lba, len, lo, hi } => {
                let end = lba.saturating_add(u64::from(len));
                let mut reported: Vec<(Extent, u64)> = Vec::new();
                let got = idx.evict(lba, len, lo, hi, |e, v| reported.push((e, v)));
                let dropped: BTreeMap<u64, Block> = m
                    .blocks
                    .range(lba..end)
                    .filter(|(_, b)| Model::in_window(b, lo, hi))
                    .map(|(&k, &b)| (k, b))
                    .collect();
                if u64::from(got) != dropped.len() as u64 {
                    return Err(fail!(
                        "evict {lba}+{len} [{lo},{hi}) dropped {got}, model {}",
                        dropped.len()
                    ));
                }
                let mut seen_reported = BTreeSet::new();
                for (e, _) in &reported {
                    if e.lba >> idx.region_shift
                        != (e.lba + u64::from(e.len) - 1) >> idx.region_shift
                    {
                        return Err(fail!("referenced extent {e:?} crosses a region"));
                    }
                    for i in 0..u64::from(e.len) {
                        let b = e.lba + i;
                        if dropped.get(&b) != Some(&Model::block_of(e, i))
                            || !seen_reported.insert(b)
                        {
                            return Err(fail!(
                                "evict reported block {b} of {e:?}, not (once) a dropped block"
                            ));
                        }
                    }
                }
                if let Some(b) = dropped
                    .keys()
                    .find(|b| m.seen.contains(b) && !seen_reported.contains(b))
                {
                    return Err(fail!("evict did not report looked-up block {b}"));
                }
                let mut stamped = BTreeSet::new();
                for &b in dropped.keys() {
                    m.blocks.remove(&b);
                    m.seen.remove(&b);
                    let region = b >> idx.region_shift;
                    if stamped.insert(region) {
                        let base = region << idx.region_shift;
                        let r_end = base
                            .saturating_add(u64::from(idx.cfg.region_blocks))
                            .min(end);
                        m.stamp(idx, lba.max(base), r_end, time);
                    }
                }
                if let Some(&(e, v)) = reported.first() {
                    *gc = Some((e, v, time));
                }
            }
            Op::Clean { lba, len, lo, hi } => {
                let end = lba.saturating_add(u64::from(len));
                let got = idx.mark_clean(lba, len, lo, hi);
                let mut want = 0;
                for (_, b) in m.blocks.range_mut(lba..end) {
                    if b.dirty && Model::in_window(b, lo, hi) {
                        b.dirty = false;
                        want += 1;
                    }
                }
                if got != want {
                    return Err(fail!(
                        "mark_clean {lba}+{len} [{lo},{hi}) cleaned {got}, model {want}"
                    ));
                }
            }
            Op::Lookup { lba, len, buf } => {
                let mut pieces = Vec::new();
                if buf == 0 {
                    idx.lookup(lba, len, |p| pieces.push(p));
                } else {
                    let mut out = [Piece::Miss { lba: 0, len: 0 }; 3];
                    let end = lba.saturating_add(u64::from(len));
                    let mut cur = lba;
                    while cur < end {
                        let (n, covered) =
                            idx.lookup_into(cur, (end - cur) as u32, &mut out[..buf]);
                        if covered == 0 || n == 0 {
                            return Err(fail!("lookup_into at {cur} made no progress"));
                        }
                        pieces.extend_from_slice(&out[..n]);
                        cur += u64::from(covered);
                    }
                    // Batches are not merged with each other: merge here for the tiling check.
                    let mut merged: Vec<Piece> = Vec::new();
                    for p in pieces {
                        let mut o = Out {
                            buf: &mut [Piece::Miss { lba: 0, len: 0 }],
                            n: 0,
                        };
                        match merged.last_mut() {
                            Some(last) => {
                                o.buf[0] = *last;
                                o.n = 1;
                                if o.push(p) {
                                    *last = o.buf[0];
                                } else {
                                    merged.push(p);
                                }
                            }
                            None => merged.push(p),
                        }
                    }
                    pieces = merged;
                }
                let len = len.min(u32::try_from(u64::MAX - lba).unwrap_or(u32::MAX));
                for (b, got) in tile(&pieces, lba, len)? {
                    let want = m.blocks.get(&b).copied();
                    if got != want {
                        return Err(fail!(
                            "lookup {lba}+{len}: block {b} is {got:?}, model {want:?}"
                        ));
                    }
                    if want.is_some() {
                        m.seen.insert(b);
                    }
                }
            }
            Op::GcRefill { pos } => {
                let Some((old, version, since)) = gc.take() else {
                    return Ok(());
                };
                let e = Extent::key(old.lba, old.len, pos, old.crc ^ 1, old.dirty);
                let got = idx
                    .fill(&e, version)
                    .map_err(|err| fail!("refill {e:?}: {err}"))?;
                let end = e.lba + u64::from(e.len);
                let want = if m.changed_since(idx, e.lba, end, since) {
                    0
                } else {
                    m.gaps(&e)
                };
                if got != want {
                    return Err(fail!("gc refill {e:?} mapped {got}, model {want}"));
                }
                if want > 0 {
                    m.fill(&e);
                }
            }
            Op::Bad { kind, lba } => {
                let e = match kind {
                    0 => Extent::key(lba, 0, 0, 0, true),
                    1 => Extent::key(lba, MAX_KEY_BLOCKS + 1, 0, 0, true),
                    2 => Extent {
                        orig_len: MAX_KEY_BLOCKS + 1,
                        ..Extent::key(lba, 4, 0, 0, true)
                    },
                    3 => Extent {
                        orig_pos: 10,
                        ..Extent::key(lba, 4, 8, 0, true)
                    },
                    4 => Extent {
                        orig_len: 4,
                        ..Extent::key(lba, 4, 9, 0, true)
                    }
                    .with_orig_pos(8),
                    5 => Extent::key(lba, 4, MAX_CACHE_BLOCKS - 2, 0, true),
                    6 => Extent::zero(lba, 0, true),
                    7 => Extent::zero(u64::MAX - lba % 4, 8, false),
                    // A valid unmap, but a fill carries data.
                    _ => Extent::zero(lba, 4, false),
                };
                let before = idx.stats();
                let version = idx.range_version(lba, 4);
                let mut errs = vec![idx.fill(&e, version).err()];
                if kind < 8 {
                    errs.push(idx.insert(&e).err());
                }
                for err in errs {
                    match err {
                        Some(err) if err.errno() == libc::EINVAL => {}
                        other => return Err(fail!("bad extent {e:?} gave {other:?}")),
                    }
                }
                if idx.stats() != before {
                    return Err(fail!("bad extent {e:?} changed the index"));
                }
            }
        }
        Ok(())
    }

    fn check(&self) -> Result<(), TestCaseError> {
        self.idx.check_invariants()?;
        let s = self.idx.stats();
        let m = &self.m;
        let want = (
            m.count(|b| b.kind != Kind::Zero),
            m.count(|b| b.dirty),
            m.count(|b| b.kind == Kind::Zero),
            m.regions(self.idx.region_shift),
        );
        if (s.cached_blocks, s.dirty_blocks, s.zero_blocks, s.regions) != want {
            return Err(fail!(
                "stats {s:?}, model (cached, dirty, zero, regions) {want:?}"
            ));
        }
        let mapped = s.cached_blocks + s.zero_blocks;
        if s.entries > mapped || (mapped > 0 && s.entries == 0) {
            return Err(fail!("stats {s:?}: impossible entry count"));
        }
        Ok(())
    }
}

impl Extent {
    fn with_orig_pos(self, orig_pos: u64) -> Extent {
        Extent { orig_pos, ..self }
    }
}

fn run(
    region_blocks: u32,
    shards: usize,
    chunk_max: usize,
    ops: &[Op],
) -> Result<(), TestCaseError> {
    let cfg = IndexConfig {
        block_size: 4096,
        region_blocks,
        shards,
    };
    let idx =
        Index::with_chunk_max(cfg, chunk_max).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut case = Case {
        idx,
        m: Model::new(),
        slots: [None; 4],
        gc: None,
    };
    for (t, op) in ops.iter().enumerate() {
        case.step(t as u64 + 1, op)
            .map_err(|e| fail!("step {t} {op:?}: {e}"))?;
        case.check()
            .map_err(|e| fail!("after step {t} {op:?}: {e}"))?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn matches_block_model(
        region_blocks in prop_oneof![Just(1u32), Just(4), Just(8), Just(16)],
        shards in prop_oneof![Just(1usize), Just(2), Just(4)],
        chunk_max in 2usize..5,
        ops in vec(op(), 1..80),
    ) {
        run(region_blocks, shards, chunk_max, &ops)?;
    }

    /// Real chunk size, bigger regions: long runs of small keys inside one region.
    #[test]
    fn matches_block_model_dense(ops in vec(op(), 1..200)) {
        run(64, 2, CHUNK_ENTRIES, &ops)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The interpolated search agrees with a binary search on any sorted run, even with
    /// bounds that are wrong (they only steer the first guess).
    #[test]
    fn first_past_is_partition_point(
        mut ends in vec(0u32..70_000, 0..300),
        x in 0u32..70_000,
        lo in 0u32..70_000,
        hi in 0u32..70_000,
        skew in any::<bool>(),
    ) {
        if skew {
            ends.iter_mut().for_each(|e| *e = (*e / 64).pow(2) / 1000);
        }
        ends.sort_unstable();
        let want = ends.partition_point(|&e| e <= x);
        prop_assert_eq!(region::first_past(&ends, x, lo, hi, |&e| e), want);
        let (lo, hi) = (ends.first().copied().unwrap_or(0), ends.last().copied().unwrap_or(0));
        prop_assert_eq!(region::first_past(&ends, x, lo, hi, |&e| e), want);
    }
}

fn small(region_blocks: u32, shards: usize) -> Index {
    Index::new(IndexConfig {
        block_size: 4096,
        region_blocks,
        shards,
    })
    .unwrap()
}

fn pieces(idx: &Index, lba: u64, len: u32) -> Vec<Piece> {
    let mut v = Vec::new();
    idx.lookup(lba, len, |p| v.push(p));
    v
}

#[test]
fn a_key_across_regions_reads_back_as_one_piece() {
    let idx = small(8, 4);
    idx.insert(&Extent::key(5, 20, 100, 7, true)).unwrap();
    assert_eq!(idx.stats().entries, 4, "cut at 8, 16 and 24");
    assert_eq!(
        pieces(&idx, 0, 30),
        [
            Piece::Miss { lba: 0, len: 5 },
            Piece::Hit(Extent::key(5, 20, 100, 7, true)),
            Piece::Miss { lba: 25, len: 5 },
        ]
    );
    // A piece in the middle still names the whole key for the crc check.
    assert_eq!(
        pieces(&idx, 17, 2),
        [Piece::Hit(Extent {
            lba: 17,
            len: 2,
            pos: 112,
            ..Extent::key(5, 20, 100, 7, true)
        })]
    );
}

#[test]
fn errors_are_einval() {
    let idx = small(8, 1);
    for e in [
        Extent::key(0, MAX_KEY_BLOCKS + 1, 0, 0, false),
        Extent::key(0, 0, 0, 0, false),
        Extent::key(u64::MAX - 1, 2, 0, 0, false),
        Extent::key(0, 8, MAX_CACHE_BLOCKS - 4, 0, false),
    ] {
        assert_eq!(idx.insert(&e).unwrap_err().errno(), libc::EINVAL, "{e:?}");
    }
    for cfg in [
        IndexConfig {
            block_size: 4096,
            region_blocks: 3,
            shards: 1,
        },
        IndexConfig {
            block_size: 4096,
            region_blocks: 1 << 17,
            shards: 1,
        },
        IndexConfig {
            block_size: 4096,
            region_blocks: 8,
            shards: 3,
        },
        IndexConfig {
            block_size: 1000,
            region_blocks: 8,
            shards: 1,
        },
    ] {
        assert_eq!(
            Index::new(cfg).err().map(|e| e.errno()),
            Some(libc::EINVAL),
            "{cfg:?}"
        );
    }
    // The longest key fits.
    idx.insert(&Extent::key(0, MAX_KEY_BLOCKS, 0, 0, false))
        .unwrap();
}

#[test]
fn fill_gives_way_to_changes_made_after_its_version() {
    let idx = small(8, 4);
    let v = idx.range_version(0, 16);
    idx.insert(&Extent::key(40, 1, 0, 0, true)).unwrap(); // elsewhere: no effect
    assert_eq!(idx.fill(&Extent::key(0, 16, 100, 0, false), v).unwrap(), 16);
    let v = idx.range_version(0, 16);
    assert_eq!(
        idx.remove_range(9, 1),
        Displaced {
            dirty: 0,
            clean: 1,
            zero: 0
        }
    );
    assert_eq!(idx.fill(&Extent::key(0, 16, 200, 0, false), v).unwrap(), 0);
    // Only unmapped blocks are filled.
    let v = idx.range_version(0, 16);
    assert_eq!(idx.fill(&Extent::key(0, 16, 200, 0, false), v).unwrap(), 1);
    assert_eq!(idx.stats().cached_blocks, 17);
    // An unmap of blocks that were not cached still beats a fill in flight.
    let v = idx.range_version(24, 4);
    assert_eq!(idx.remove_range(25, 1), Displaced::default());
    assert_eq!(idx.fill(&Extent::key(24, 4, 300, 0, false), v).unwrap(), 0);
    idx.check_invariants().unwrap();
}

#[test]
fn range_version_grows_with_every_change_in_any_shard_of_the_range() {
    let idx = small(1, 8);
    for k in 0..64u64 {
        let v = idx.range_version(0, 64);
        idx.insert(&Extent::key(k, 1, k, 0, false)).unwrap();
        assert!(idx.range_version(0, 64) > v);
    }
}

#[test]
fn wide_unmap_matches_the_region_walk() {
    // One shard: more than VERSION_BUCKETS regions of one block each takes the wide path.
    let wide = small(1, 1);
    let narrow = small(1, 1);
    for k in (0..600u64).step_by(3) {
        for idx in [&wide, &narrow] {
            idx.insert(&Extent::key(k, 2, k, 0, k % 2 == 0)).unwrap();
        }
    }
    let v = wide.range_version(1000, 1);
    let d = wide.remove_range(50, 400);
    let mut want = Displaced::default();
    for lba in (50..450).step_by(100) {
        let d = narrow.remove_range(lba, 100);
        want.dirty += d.dirty;
        want.clean += d.clean;
    }
    assert_eq!(d, want);
    wide.check_invariants().unwrap();
    assert_eq!(wide.stats(), narrow.stats());
    assert_eq!(pieces(&wide, 0, 700), pieces(&narrow, 0, 700));
    // Every fill in flight anywhere gives way to a wide unmap.
    assert_eq!(wide.fill(&Extent::key(1000, 1, 0, 0, false), v).unwrap(), 0);
    // Four billion one-block regions at once return promptly.
    wide.remove_range(0, u32::MAX);
    wide.remove_range(u64::MAX - 10, u32::MAX);
    assert_eq!(wide.stats().cached_blocks, 0);
    wide.check_invariants().unwrap();
}

#[test]
fn evict_hands_over_referenced_pieces_unlocked_with_a_usable_version() {
    let idx = small(8, 2);
    idx.insert(&Extent::key(0, 40, 1000, 9, false)).unwrap();
    idx.insert(&Extent::key(10, 2, 2000, 1, true)).unwrap();
    idx.lookup(0, 20, |_| {});
    let mut refs = Vec::new();
    // The callback may call back into the index: no lock is held.
    let dropped = idx.evict(0, 40, 1000, 1040, |e, v| {
        let _ = idx.stats();
        refs.push((e, v));
    });
    assert_eq!(dropped, 38);
    let blocks: u32 = refs.iter().map(|(e, _)| e.len).sum();
    assert_eq!(
        blocks, 22,
        "0..10 and 12..20 were looked up; 16..24 is one entry, marked whole"
    );
    // Second chance: copy forward and fill back.
    for (e, v) in refs {
        let moved = Extent {
            pos: 5000 + e.lba,
            orig_pos: 5000 + e.lba,
            orig_len: e.len,
            ..e
        };
        assert_eq!(idx.fill(&moved, v).unwrap(), e.len);
    }
    assert_eq!(idx.stats().cached_blocks, 24);
    idx.check_invariants().unwrap();
}

#[test]
fn many_referenced_pieces_go_out_in_batches() {
    let idx = small(64, 1);
    for k in 0..100u64 {
        idx.insert(&Extent::key(2 * k, 1, k, 0, false)).unwrap();
    }
    idx.lookup(0, 200, |_| {});
    let mut n = 0;
    assert_eq!(idx.evict(0, 200, 0, 100, |_, _| n += 1), 100);
    assert_eq!(n, 100);
    assert_eq!(idx.stats().entries, 0);
    idx.check_invariants().unwrap();
}

#[test]
fn lookup_marks_and_mark_clean_splits() {
    let idx = small(16, 1);
    idx.insert(&Extent::key(0, 16, 0, 0, true)).unwrap();
    assert_eq!(idx.mark_clean(0, 16, 4, 8), 4);
    assert_eq!(idx.stats().entries, 3);
    assert_eq!(idx.stats().dirty_blocks, 12);
    assert_eq!(idx.mark_clean(0, 16, 0, 16), 12);
    assert_eq!(idx.mark_clean(0, 16, 0, 16), 0);
    idx.check_invariants().unwrap();
}

#[test]
fn zero_extents_read_as_zeroes_and_replace_data() {
    let idx = small(8, 2);
    idx.insert(&Extent::key(0, 20, 100, 7, true)).unwrap();
    idx.insert(&Extent::key(20, 4, 200, 8, false)).unwrap();
    // An unmap over dirty and clean data displaces both.
    let d = idx.insert(&Extent::zero(16, 6, true)).unwrap();
    assert_eq!(
        d,
        Displaced {
            dirty: 4,
            clean: 2,
            zero: 0
        }
    );
    assert_eq!(
        pieces(&idx, 0, 30),
        [
            Piece::Hit(Extent {
                len: 16,
                ..Extent::key(0, 20, 100, 7, true)
            }),
            Piece::Hit(Extent::zero(16, 6, true)),
            Piece::Hit(Extent {
                lba: 22,
                len: 2,
                pos: 202,
                ..Extent::key(20, 4, 200, 8, false)
            }),
            Piece::Miss { lba: 24, len: 6 },
        ]
    );
    let s = idx.stats();
    assert_eq!(
        (s.cached_blocks, s.zero_blocks, s.dirty_blocks),
        (18, 6, 22)
    );
    // Newer data over part of it displaces ZERO blocks.
    let d = idx.insert(&Extent::key(20, 1, 300, 9, true)).unwrap();
    assert_eq!(
        d,
        Displaced {
            dirty: 1,
            clean: 0,
            zero: 1
        }
    );
    // GC and writeback of data go by cache position: ZERO entries have none.
    assert_eq!(idx.mark_clean(0, 30, 0, u64::MAX), 17);
    assert_eq!(idx.evict(0, 30, 0, u64::MAX, |_, _| {}), 19);
    let s = idx.stats();
    assert_eq!((s.cached_blocks, s.zero_blocks, s.dirty_blocks), (0, 5, 5));
    // A fill maps only unmapped blocks: never over a ZERO entry.
    let v = idx.range_version(10, 20);
    assert_eq!(
        idx.fill(&Extent::key(10, 20, 400, 1, false), v).unwrap(),
        15
    );
    assert_eq!(
        pieces(&idx, 16, 6),
        [
            Piece::Hit(Extent::zero(16, 4, true)),
            Piece::Hit(Extent {
                lba: 20,
                len: 1,
                pos: 410,
                ..Extent::key(10, 20, 400, 1, false)
            }),
            Piece::Hit(Extent::zero(21, 1, true)),
        ]
    );
    idx.check_invariants().unwrap();
}

#[test]
fn zero_written_back_drops_dirty_zero_entries_and_beats_fills() {
    let idx = small(8, 4);
    idx.insert(&Extent::zero(0, 10, true)).unwrap();
    idx.insert(&Extent::zero(10, 6, false)).unwrap();
    idx.insert(&Extent::key(16, 4, 50, 3, true)).unwrap();
    // A fill whose version predates the unmap gives way to it.
    let v_before = idx.range_version(20, 4);
    idx.insert(&Extent::zero(20, 4, true)).unwrap();
    assert_eq!(
        idx.fill(&Extent::key(20, 4, 60, 0, false), v_before)
            .unwrap(),
        0
    );
    // Only dirty ZERO blocks go; clean ZERO and data stay.
    let v = idx.range_version(0, 30);
    assert_eq!(idx.zero_written_back(2, 25), 12);
    assert_eq!(idx.zero_written_back(2, 25), 0);
    assert_eq!(
        pieces(&idx, 0, 26),
        [
            Piece::Hit(Extent::zero(0, 2, true)),
            Piece::Miss { lba: 2, len: 8 },
            Piece::Hit(Extent::zero(10, 6, false)),
            Piece::Hit(Extent::key(16, 4, 50, 3, true)),
            Piece::Miss { lba: 20, len: 6 },
        ]
    );
    let s = idx.stats();
    assert_eq!((s.cached_blocks, s.zero_blocks, s.dirty_blocks), (4, 8, 6));
    // Dropping bumped the versions: an origin read begun before it is not cached.
    assert_eq!(idx.fill(&Extent::key(0, 30, 70, 0, false), v).unwrap(), 0);
    // One begun after it is.
    let v = idx.range_version(2, 8);
    assert_eq!(idx.fill(&Extent::key(2, 8, 70, 0, false), v).unwrap(), 8);
    // remove_range drops ZERO entries too.
    assert_eq!(
        idx.remove_range(0, 16),
        Displaced {
            dirty: 2,
            clean: 14,
            zero: 8
        }
    );
    idx.check_invariants().unwrap();
}

#[test]
fn zero_extents_may_be_longer_than_a_key() {
    let idx = small(8, 4);
    let long = MAX_KEY_BLOCKS * 12 + 5;
    assert_eq!(
        idx.insert(&Extent::zero(3, long, true)).unwrap(),
        Displaced::default()
    );
    assert_eq!(idx.stats().zero_blocks, u64::from(long));
    // One region each, read back as one piece.
    assert_eq!(
        pieces(&idx, 3, long),
        [Piece::Hit(Extent::zero(3, long, true))]
    );
    assert_eq!(idx.zero_written_back(0, u32::MAX), long);
    assert_eq!(idx.stats(), small(8, 4).stats());
    idx.check_invariants().unwrap();

    // Regions longer than a ZERO entry hold one per 2^15-aligned slice.
    let idx = Index::new(IndexConfig {
        block_size: 4096,
        region_blocks: MAX_REGION_BLOCKS,
        shards: 4,
    })
    .unwrap();
    let base = 5 * u64::from(MAX_REGION_BLOCKS);
    idx.insert(&Extent::key(base + 40_000, 8, 0, 0, false))
        .unwrap();
    let z = Extent::zero(base + 100, 200_000, true);
    assert_eq!(
        idx.insert(&z).unwrap(),
        Displaced {
            dirty: 0,
            clean: 8,
            zero: 0
        }
    );
    assert_eq!(idx.stats().entries, 7);
    assert_eq!(pieces(&idx, z.lba, z.len), [Piece::Hit(z)]);
    idx.check_invariants().unwrap();
    // The same unmap again replaces the entries one for one.
    assert_eq!(
        idx.insert(&z).unwrap(),
        Displaced {
            dirty: 200_000,
            clean: 0,
            zero: 200_000
        }
    );
    assert_eq!(idx.stats().entries, 7);
    // Data in the middle of a ZERO entry splits it.
    idx.insert(&Extent::key(base + 70_000, 1, 9, 0, true))
        .unwrap();
    assert_eq!(idx.stats().entries, 9);
    idx.check_invariants().unwrap();
    // An unmap of 2^32 − 1 blocks; writeback of it takes the wide path.
    let idx = Index::new(IndexConfig::new(4096)).unwrap();
    idx.insert(&Extent::zero(1, u32::MAX, true)).unwrap();
    assert_eq!(idx.stats().zero_blocks, u64::from(u32::MAX));
    assert_eq!(idx.zero_written_back(0, u32::MAX), u32::MAX - 1);
    assert_eq!(idx.zero_written_back(u32::MAX.into(), 1), 1);
    assert_eq!(idx.stats().entries, 0);
    idx.check_invariants().unwrap();
}

#[test]
fn zero_extent_errors_are_einval() {
    let idx = small(8, 1);
    for e in [
        Extent::zero(0, 0, true),
        Extent::zero(u64::MAX - 1, 2, true),
    ] {
        assert_eq!(idx.insert(&e).unwrap_err().errno(), libc::EINVAL, "{e:?}");
    }
    let v = idx.range_version(0, 4);
    assert_eq!(
        idx.fill(&Extent::zero(0, 4, false), v).unwrap_err().errno(),
        libc::EINVAL
    );
    assert_eq!(idx.stats().entries, 0);
    // Fields a ZERO extent does not use are ignored, whatever they hold.
    let odd = Extent {
        pos: MAX_CACHE_BLOCKS * 2,
        orig_len: MAX_KEY_BLOCKS * 3,
        crc: 5,
        ..Extent::zero(0, 4, false)
    };
    idx.insert(&odd).unwrap();
    assert_eq!(pieces(&idx, 0, 4), [Piece::Hit(Extent::zero(0, 4, false))]);
}

#[test]
fn small_origins_get_smaller_regions_large_ones_the_default() {
    let default = IndexConfig::new(4096).region_blocks;
    assert_eq!(default, 16384, "64 MiB of 4 KiB blocks");
    // 1 GiB: 4096 regions would be 64 blocks; the floor is 2048 (128 regions).
    assert_eq!(IndexConfig::for_origin(4096, 262_144).region_blocks, 2048);
    // 64 GiB: 4096 regions of 4096 blocks.
    assert_eq!(IndexConfig::for_origin(4096, 16 << 20).region_blocks, 4096);
    // 1 TiB and more: the default.
    assert_eq!(
        IndexConfig::for_origin(4096, 1 << 28).region_blocks,
        default
    );
    for blocks in [0, 1, 1000, 1 << 40] {
        let cfg = IndexConfig::for_origin(512, blocks);
        assert!(Index::new(cfg).is_ok(), "{cfg:?}");
    }
}
