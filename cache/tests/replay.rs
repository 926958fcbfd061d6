//! Replay through the real writers: logs built with `LaneLog` (data written with non-temporal
//! stores into segments allocated from a `SegmentTable`), read back by `replay`, compared with the
//! index the writes built live, under stale segments, tombstones, the written-back sequence,
//! damage, torn tails and power cuts at (a subset of) every fence.

mod common;
use common::crash::Tap;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cache::format::{self, FormatParams, KSET_ALIGN, Key, LogPos, OpenedMeta, OriginId, kset_size};
use cache::index::{Extent, Index, IndexConfig, Piece};
use cache::log::{LaneLog, LogCtx};
use cache::replay::{ReplayError, Replayed, replay};
use cache::segments::{SegUse, SegmentTable, cache_pos};
use pmem::{CrashPmem, Pmem, PmemFile};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const SEG: u32 = 1 << 20;

/// A key-set a lane sealed.
#[derive(Clone, Debug)]
struct Sealed {
    lane_seq: u64,
    pos: LogPos,
    keys: Vec<Key>,
}

struct Writer {
    log: LaneLog,
    /// The lane sequence of the next key-set (a LAST link takes one too).
    lane_seq: u64,
    /// Data head: segment, its generation, next free byte.
    data: Option<(u32, u32, u32)>,
    sealed: Vec<Sealed>,
}

/// A cache being written the way the data path writes it, with the index it builds live.
struct Rig {
    pmem: Arc<dyn Pmem>,
    origin: OriginId,
    meta: OpenedMeta,
    format_id: u64,
    segments: SegmentTable,
    live: Index,
    lanes: Vec<Writer>,
    seq: u64,
    /// Keys sealed so far, per lane (shared with crash hooks).
    sealed_count: Arc<Vec<AtomicU64>>,
    write_data: bool,
}

impl Rig {
    fn new(pmem: Arc<dyn Pmem>, lanes: u32, block_size: u32, origin_blocks: u64) -> Rig {
        let origin = OriginId {
            uuid: uuid::Uuid::new_v4(),
            blocks: origin_blocks,
            block_size,
        };
        let mut params = FormatParams::new(uuid::Uuid::new_v4(), origin, lanes);
        params.segment_size = SEG;
        format::format(&*pmem, &params).unwrap();
        let meta = format::open(&*pmem, &origin).unwrap();
        let segments = SegmentTable::new(meta.gens.clone());
        let lanes: Vec<Writer> = (0..lanes)
            .map(|l| {
                segments
                    .mark_used(l, SegUse::Key { lane: l as u16 })
                    .unwrap();
                let log = LaneLog::new(
                    l,
                    params.format_id,
                    LogPos { seg: l, off: 0 },
                    meta.gens[l as usize],
                    1,
                );
                Writer {
                    log,
                    lane_seq: 1,
                    data: None,
                    sealed: Vec::new(),
                }
            })
            .collect();
        Rig {
            sealed_count: Arc::new((0..lanes.len()).map(|_| AtomicU64::new(0)).collect()),
            pmem,
            origin,
            format_id: params.format_id,
            segments,
            live: Index::new(IndexConfig::new(block_size)).unwrap(),
            lanes,
            seq: 0,
            meta,
            write_data: true,
        }
    }

    fn bs(&self) -> u32 {
        self.meta.layout.block_size()
    }

    /// Moves lane `lane`'s key log to start at `at` (a new key tail), as GC would have left it.
    fn move_key_tail(&mut self, lane: u32, at: LogPos) {
        let mut tails = self.meta.tails;
        let t = &mut tails.lanes_mut()[lane as usize];
        t.key_tail = at;
        t.dirty_tail = at;
        self.write_tails(tails);
        let w = &mut self.lanes[lane as usize];
        w.log = LaneLog::new(lane, self.format_id, at, self.meta.gens[at.seg as usize], 1);
    }

    fn set_written_back(&mut self, seq: u64) {
        let mut tails = self.meta.tails;
        tails.written_back_seq = seq;
        self.write_tails(tails);
    }

    fn write_tails(&mut self, tails: format::Tails) {
        let payload = tails.encode();
        self.meta
            .tails_slot
            .write(&*self.pmem, &payload[..tails.encoded_len()])
            .unwrap();
        self.meta.tails = tails;
    }

    /// A fresh data head for `lane` (the old one keeps the references of its keys).
    fn new_data_seg(&mut self, lane: u32) -> u32 {
        let w = &mut self.lanes[lane as usize];
        if let Some((seg, _, _)) = w.data.take() {
            self.segments.put_ref(seg);
        }
        let (seg, gen_) = self
            .segments
            .alloc(SegUse::Data { lane: lane as u16 })
            .expect("a free data segment");
        w.data = Some((seg, gen_, 0));
        seg
    }

    /// Writes `len` blocks at `lba` through lane `lane`: data, key, live index.
    fn write(&mut self, lane: u32, lba: u64, len: u32, dirty: bool) -> Key {
        let bytes = len * self.bs();
        if self.lanes[lane as usize]
            .data
            .is_none_or(|(_, _, off)| off + bytes > SEG)
        {
            self.new_data_seg(lane);
        }
        let (seg, gen_, off) = self.lanes[lane as usize].data.unwrap();
        self.lanes[lane as usize].data = Some((seg, gen_, off + bytes));
        self.seq += 1;
        let seq = self.seq;
        let mut crc = 0;
        if self.write_data {
            let data: Vec<u8> = (0..bytes)
                .map(|i| (seq as u32).wrapping_mul(31).wrapping_add(i) as u8)
                .collect();
            let at = self.meta.layout.segment_offset(seg).unwrap() + u64::from(off);
            self.pmem.write_nt(at, &data).unwrap();
            crc = crc32c::crc32c(&data);
        }
        let key = Key {
            seq,
            origin_off: lba,
            len,
            data_off: off,
            data_seg: seg,
            data_gen: gen_,
            data_crc: crc,
            flags: if dirty { Key::DIRTY } else { 0 },
        };
        self.segments.get_ref(seg);
        let pos = cache_pos(&self.meta.layout, seg, off);
        self.live
            .insert(&Extent::key(lba, len, pos, crc, dirty))
            .unwrap();
        self.append(lane, key);
        key
    }

    /// An UNMAP tombstone for `len` blocks at `lba` through lane `lane`.
    fn unmap(&mut self, lane: u32, lba: u64, len: u32, dirty: bool) -> Key {
        self.seq += 1;
        let key = Key {
            seq: self.seq,
            origin_off: lba,
            len,
            flags: Key::UNMAP | if dirty { Key::DIRTY } else { 0 },
            ..Key::default()
        };
        if dirty {
            self.live.insert(&Extent::zero(lba, len, true)).unwrap();
        } else {
            self.live.remove_range(lba, len);
        }
        self.append(lane, key);
        key
    }

    /// Appends a key as written (no checks), sealing when the key-set is full.
    fn append(&mut self, lane: u32, key: Key) {
        if self.lanes[lane as usize].log.append(key) {
            self.seal(lane);
        }
    }

    fn seal(&mut self, lane: u32) {
        let ctx = LogCtx {
            pmem: &*self.pmem,
            layout: &self.meta.layout,
            segments: &self.segments,
            format_id: self.format_id,
        };
        let w = &mut self.lanes[lane as usize];
        let keys = w.log.open_keys().to_vec();
        if keys.is_empty() {
            return;
        }
        let before = w.log.head();
        w.log.seal(&ctx).unwrap();
        let after = w.log.head();
        if after.seg != before.seg {
            w.lane_seq += 1; // the LAST link
        }
        w.sealed.push(Sealed {
            lane_seq: w.lane_seq,
            pos: LogPos {
                seg: after.seg,
                off: after.off - kset_size(keys.len()) as u32,
            },
            keys,
        });
        w.lane_seq += 1;
        self.sealed_count[lane as usize].store(w.sealed.len() as u64, Ordering::SeqCst);
    }

    fn seal_all(&mut self) {
        for l in 0..self.lanes.len() as u32 {
            self.seal(l);
        }
    }

    fn all_keys(&self) -> usize {
        self.lanes
            .iter()
            .flat_map(|w| &w.sealed)
            .map(|s| s.keys.len())
            .sum()
    }

    /// Opens the device afresh and replays it into a new index and segment table.
    fn replay(&self) -> Result<(Replayed, Index, SegmentTable), ReplayError> {
        replay_device(&*self.pmem, &self.origin)
    }
}

fn replay_device(
    pmem: &dyn Pmem,
    origin: &OriginId,
) -> Result<(Replayed, Index, SegmentTable), ReplayError> {
    let meta = format::open(pmem, origin).unwrap();
    let index = Index::new(IndexConfig::new(origin.block_size)).unwrap();
    let segments = SegmentTable::new(meta.gens.clone());
    let r = replay(pmem, &meta, &index, &segments)?;
    Ok((r, index, segments))
}

/// The pieces of [0, blocks), adjacent pieces that continue each other merged.
fn pieces(index: &Index, blocks: u64) -> Vec<Piece> {
    let mut out: Vec<Piece> = Vec::new();
    let mut lba = 0;
    while lba < blocks {
        let n = (blocks - lba).min(1 << 30) as u32;
        index.lookup(lba, n, |p| {
            if let Some(last) = out.last_mut() {
                match (last, &p) {
                    (Piece::Miss { len, .. }, Piece::Miss { .. }) => {
                        *len += p.len();
                        return;
                    }
                    (Piece::Hit(a), Piece::Hit(b))
                        if a.zero == b.zero
                            && a.dirty == b.dirty
                            && (a.zero
                                || (a.pos + u64::from(a.len) == b.pos
                                    && (a.orig_pos, a.orig_len, a.crc)
                                        == (b.orig_pos, b.orig_len, b.crc))) =>
                    {
                        a.len += b.len;
                        return;
                    }
                    _ => {}
                }
            }
            out.push(p);
        });
        lba += u64::from(n);
    }
    out
}

fn assert_same_index(got: &Index, want: &Index, blocks: u64) {
    let (g, w) = (pieces(got, blocks), pieces(want, blocks));
    if g != w {
        let at = g.iter().zip(&w).position(|(a, b)| a != b).unwrap_or(0);
        panic!(
            "indexes differ at piece {at} of {}/{}: replayed {:?}, live {:?}",
            g.len(),
            w.len(),
            g.get(at),
            w.get(at)
        );
    }
    let (gs, ws) = (got.stats(), want.stats());
    assert_eq!(
        (gs.cached_blocks, gs.dirty_blocks, gs.zero_blocks),
        (ws.cached_blocks, ws.dirty_blocks, ws.zero_blocks)
    );
}

/// The index replay must build from `keys` (any order): applied in seq order, stale ones
/// dropped, clean at or below `written_back`.
fn model(keys: &[Key], gens: &[u32], layout: &format::Layout, written_back: u64) -> Index {
    let mut keys = keys.to_vec();
    keys.sort_by_key(|k| k.seq);
    let index = Index::new(IndexConfig::new(layout.block_size())).unwrap();
    for k in keys {
        let dirty = k.is_dirty() && k.seq > written_back;
        if k.is_unmap() {
            if dirty {
                index
                    .insert(&Extent::zero(k.origin_off, k.len, true))
                    .unwrap();
            } else {
                index.remove_range(k.origin_off, k.len);
            }
        } else if gens[k.data_seg as usize] == k.data_gen {
            let pos = cache_pos(layout, k.data_seg, k.data_off);
            index
                .insert(&Extent::key(k.origin_off, k.len, pos, k.data_crc, dirty))
                .unwrap();
        }
    }
    index
}

fn anon(bytes: u64) -> Arc<dyn Pmem> {
    Arc::new(PmemFile::anonymous(bytes).unwrap())
}

#[test]
fn two_interleaved_lanes_replay_to_the_live_index() {
    let blocks = 4096;
    let mut rig = Rig::new(anon(64 << 20), 2, 512, blocks);
    // Each log starts 32 KiB before the end of its segment, so both cross a LAST link.
    let tails: Vec<LogPos> = (0..2)
        .map(|l| LogPos {
            seg: l,
            off: SEG - (32 << 10),
        })
        .collect();
    for (l, &t) in (0u32..).zip(&tails) {
        rig.move_key_tail(l, t);
    }
    let mut rng = StdRng::seed_from_u64(1);
    for _ in 0..6000 {
        let lane = rng.random_range(0..2u32);
        let len = rng.random_range(1..=24u32);
        let lba = rng.random_range(0..blocks - u64::from(len));
        if rng.random_bool(0.1) {
            rig.unmap(lane, lba, len, rng.random_bool(0.8));
        } else {
            rig.write(lane, lba, len, rng.random_bool(0.9));
        }
        if rng.random_bool(0.08) {
            rig.seal(lane);
        }
    }
    rig.seal_all();
    assert!(
        rig.lanes
            .iter()
            .all(|w| w.log.head().seg != w.sealed[0].pos.seg),
        "both lanes' logs crossed a LAST link"
    );

    let (r, index, segments) = rig.replay().unwrap();
    assert_same_index(&index, &rig.live, blocks);
    println!("{r:?}");
    let all: Vec<Key> = rig
        .lanes
        .iter()
        .flat_map(|w| w.sealed.iter().flat_map(|s| s.keys.clone()))
        .collect();
    assert_eq!(r.keys, all.len() as u64);
    assert_eq!(r.unmaps, all.iter().filter(|k| k.is_unmap()).count() as u64);
    assert_eq!(r.stale_keys, 0);
    assert_eq!(r.max_seq, rig.seq);
    assert_eq!(r.dirty_blocks, rig.live.stats().dirty_blocks);
    assert!(r.keys_per_sec > 0.0);

    // Lane heads: where each writer stands, and what it resumes with.
    for (l, (st, w)) in r.lanes.iter().zip(&rig.lanes).enumerate() {
        assert_eq!(st.lane, l as u32);
        assert_eq!(st.head, w.log.head());
        assert_eq!(st.next_seq, w.lane_seq);
        assert_eq!((st.key_tail, st.dirty_tail), (tails[l], tails[l]));
        let newest = w
            .sealed
            .iter()
            .flat_map(|s| &s.keys)
            .rfind(|k| !k.is_unmap())
            .map(|k| k.data_seg);
        assert_eq!(st.last_data_seg, newest);
    }

    // Segments: key segments and data segments by lane, one reference per key.
    let mut refs: BTreeMap<u32, (u16, u32)> = BTreeMap::new();
    for (l, w) in rig.lanes.iter().enumerate() {
        for k in w
            .sealed
            .iter()
            .flat_map(|s| &s.keys)
            .filter(|k| !k.is_unmap())
        {
            refs.entry(k.data_seg).or_insert((l as u16, 0)).1 += 1;
        }
    }
    for seg in 0..rig.meta.layout.segment_count() {
        let want = rig.segments.use_of(seg).unwrap();
        assert_eq!(segments.use_of(seg), Some(want), "segment {seg}");
        if let Some(&(lane, n)) = refs.get(&seg) {
            assert_eq!(want, SegUse::Data { lane });
            assert_eq!(segments.refs(seg), n, "segment {seg}");
        }
    }
    assert_eq!(segments.counts(), rig.segments.counts());
}

#[test]
fn keys_at_or_below_the_written_back_sequence_are_clean() {
    let blocks = 2048;
    let mut rig = Rig::new(anon(32 << 20), 2, 4096, blocks);
    let mut rng = StdRng::seed_from_u64(2);
    let mut keys = Vec::new();
    for _ in 0..600 {
        let lane = rng.random_range(0..2u32);
        let len = rng.random_range(1..=8u32);
        let lba = rng.random_range(0..blocks - u64::from(len));
        keys.push(rig.write(lane, lba, len, true));
    }
    rig.seal_all();
    let wb = 400;
    rig.set_written_back(wb);
    // Writeback as it runs live: each key's blocks still pointing at its data become clean.
    for k in keys.iter().filter(|k| k.seq <= wb) {
        let pos = cache_pos(&rig.meta.layout, k.data_seg, k.data_off);
        rig.live
            .mark_clean(k.origin_off, k.len, pos, pos + u64::from(k.len));
    }
    let (r, index, _) = rig.replay().unwrap();
    assert_same_index(&index, &rig.live, blocks);
    let s = index.stats();
    assert!(
        0 < s.dirty_blocks && s.dirty_blocks < s.cached_blocks,
        "{s:?}"
    );
    assert_eq!(r.dirty_blocks, s.dirty_blocks);
    // Everything written back: nothing dirty.
    rig.set_written_back(rig.seq);
    let (r, index, _) = rig.replay().unwrap();
    assert_eq!((r.dirty_blocks, index.stats().dirty_blocks), (0, 0));
    assert_eq!(index.stats().cached_blocks, s.cached_blocks);
}

#[test]
fn a_key_naming_a_reclaimed_segment_is_stale_and_dropped() {
    let blocks = 1 << 16;
    let mut rig = Rig::new(anon(16 << 20), 2, 4096, blocks);
    // Lane 0 fills segment A with keys over [0, 1024); lane 1 writes [1024, 1536) elsewhere;
    // lane 0's next segment B holds a newer key over part of A's range.
    let a = rig.new_data_seg(0);
    let in_a: Vec<Key> = (0..64).map(|i| rig.write(0, i * 16, 4, true)).collect();
    assert!(
        in_a.iter().all(|k| k.data_seg == a),
        "A holds 64 keys of 16 KiB"
    );
    let b = rig.new_data_seg(0);
    for i in 0..32 {
        rig.write(1, 1024 + i * 16, 16, true);
    }
    let newer = rig.write(0, 100, 50, true);
    assert_eq!(newer.data_seg, b);
    rig.seal_all();

    // GC reclaims A: drops the blocks still pointing into it, releases its references, and
    // after the grace period moves its generation on.
    let layout = rig.meta.layout;
    for k in &in_a {
        let pos = cache_pos(&layout, k.data_seg, k.data_off);
        rig.live
            .evict(k.origin_off, k.len, pos, pos + u64::from(k.len), |_, _| {});
    }
    let mut last = false;
    for _ in &in_a {
        last = rig.segments.put_ref(a);
    }
    assert!(last, "the keys held the last references");
    rig.segments.retire(a);
    rig.segments
        .free_retired(&*rig.pmem, &layout, &[a])
        .unwrap();

    let (r, index, segments) = rig.replay().unwrap();
    assert_eq!(r.stale_keys, in_a.len() as u64);
    assert_eq!(r.keys, rig.all_keys() as u64);
    assert_same_index(&index, &rig.live, blocks);
    // The newer key over A's range survives whole.
    let mut hit = Vec::new();
    index.lookup(100, 50, |p| hit.push(p));
    assert!(
        matches!(&hit[..], [Piece::Hit(e)] if e.len == 50),
        "{hit:?}"
    );
    assert_eq!(segments.use_of(a), Some(SegUse::Free));
    assert_eq!(segments.refs(a), 0);
    assert_eq!(segments.generation(a), Some(format::GEN_FIRST + 1));
    assert_eq!(segments.use_of(b), Some(SegUse::Data { lane: 0 }));
}

#[test]
fn an_unmap_removes_older_data_but_not_newer() {
    let blocks = 1024;
    let mut rig = Rig::new(anon(16 << 20), 2, 4096, blocks);
    let k1 = rig.write(0, 0, 64, true); // seq 1
    rig.unmap(1, 16, 32, true); // seq 2: [16, 48)
    let k3 = rig.write(0, 32, 8, true); // seq 3, newer than the tombstone
    rig.write(1, 100, 10, true); // seq 4
    rig.unmap(0, 100, 4, false); // seq 5: a clean tombstone (the origin has it)
    // Lane 0's key-set (seqs 1, 3, 5) lands before lane 1's (2, 4): replay goes by seq.
    rig.seal(0);
    rig.seal(1);

    let (r, index, _) = rig.replay().unwrap();
    assert_eq!(r.unmaps, 2);
    assert_same_index(&index, &rig.live, blocks);
    let layout = rig.meta.layout;
    let pos = |k: &Key| cache_pos(&layout, k.data_seg, k.data_off);
    let mut got = Vec::new();
    index.lookup(0, 110, |p| got.push(p));
    let zero = |lba, len| Piece::Hit(Extent::zero(lba, len, true));
    let hit = |k: &Key, lba: u64, len: u32| {
        Piece::Hit(Extent {
            lba,
            len,
            pos: pos(k) + (lba - k.origin_off),
            ..Extent::key(k.origin_off, k.len, pos(k), k.data_crc, true)
        })
    };
    assert_eq!(
        got,
        vec![
            hit(&k1, 0, 16),
            zero(16, 16),
            hit(&k3, 32, 8),
            zero(40, 8),
            hit(&k1, 48, 16),
            Piece::Miss { lba: 64, len: 40 },
            got[6], // [104, 110) of seq 4
        ]
    );
    assert!(matches!(got[6], Piece::Hit(e) if e.lba == 104 && e.len == 6 && !e.zero));
    // [0, 64): 64 blocks (48 of data, 16 zeroes), and [104, 110).
    assert_eq!(r.dirty_blocks, 64 + 6);

    // Once the tombstone is written back the range reads from the origin.
    rig.set_written_back(2);
    let (_, index, _) = rig.replay().unwrap();
    let mut got = Vec::new();
    index.lookup(16, 32, |p| got.push(p));
    assert_eq!(
        got,
        vec![
            Piece::Miss { lba: 16, len: 16 },
            hit(&k3, 32, 8),
            Piece::Miss { lba: 40, len: 8 },
        ]
    );
}

#[test]
fn a_damaged_key_set_in_the_middle_is_reported_with_its_lane() {
    let mut rig = Rig::new(anon(16 << 20), 2, 4096, 1 << 16);
    for i in 0..10 {
        rig.write(0, i, 1, true);
        rig.seal(0);
        rig.write(1, 100 + i, 1, true);
        rig.seal(1);
    }
    rig.replay().unwrap();
    // Flip a byte inside lane 1's fourth key-set.
    let at = rig.lanes[1].sealed[3].pos;
    let off = rig.meta.layout.segment_offset(at.seg).unwrap() + u64::from(at.off) + 70;
    let mut b = [0u8];
    rig.pmem.read(off, &mut b).unwrap();
    rig.pmem.write(off, &[b[0] ^ 0x10]).unwrap();
    let err = rig.replay().map(|_| ()).unwrap_err();
    assert_eq!(err.errno(), libc::EIO, "{err}");
    assert!(matches!(err, ReplayError::Walk { lane: 1, .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("lane 1") && msg.contains("damaged"), "{msg}");
}

#[test]
fn keys_that_break_the_geometry_are_corruption_naming_lane_and_sequence() {
    let blocks = 1 << 16;
    // Each case: a key written by lane 1 as its fourth key-set; what the error must say.
    type BadKey = Box<dyn Fn(&mut Rig) -> Key>;
    let cases: Vec<(&str, BadKey)> = vec![
        (
            "beyond the origin",
            Box::new(move |r: &mut Rig| {
                let mut k = r.write(1, 0, 1, true);
                k.origin_off = blocks;
                k
            }),
        ),
        (
            "outside",
            Box::new(|r: &mut Rig| {
                let mut k = r.write(1, 0, 1, true);
                k.data_off = SEG - 4096 + 512; // not block aligned
                k
            }),
        ),
        (
            "segment 0",
            Box::new(|r: &mut Rig| {
                // Data "in" lane 0's key segment.
                let mut k = r.write(1, 0, 1, true);
                k.data_seg = 0;
                k.data_gen = r.meta.gens[0];
                k
            }),
        ),
        (
            "one writer",
            Box::new(|r: &mut Rig| {
                // Data in lane 0's data segment.
                let k0 = r.lanes[0].sealed[0].keys[0];
                let mut k = r.write(1, 0, 1, true);
                (k.data_seg, k.data_gen) = (k0.data_seg, k0.data_gen);
                k
            }),
        ),
        (
            "never go back",
            Box::new(|r: &mut Rig| {
                let mut k = r.write(1, 0, 1, true);
                k.seq = 1;
                k
            }),
        ),
    ];
    for (want, make) in cases {
        let mut rig = Rig::new(anon(16 << 20), 2, 4096, blocks);
        for i in 0..3 {
            rig.write(0, i, 1, true);
            rig.seal(0);
            rig.write(1, 10 + i, 1, true);
            rig.seal(1);
        }
        // Build the bad key with the rig (data and all), then seal it in place of the good one.
        let bad = make(&mut rig);
        let w = &mut rig.lanes[1];
        w.log = LaneLog::new(1, rig.format_id, w.log.head(), rig.meta.gens[1], w.lane_seq);
        w.log.append(bad);
        rig.seal(1);
        let err = rig.replay().map(|_| ()).unwrap_err();
        assert_eq!(err.errno(), libc::EIO, "{want}: {err}");
        let msg = err.to_string();
        assert!(
            msg.contains("lane 1") && msg.contains("key-set 4") && msg.contains(want),
            "{want}: {msg}"
        );
        assert!(matches!(
            err,
            ReplayError::Format {
                lane: 1,
                lane_seq: 4,
                ..
            }
        ));
    }
}

#[test]
fn a_torn_last_key_set_replays_the_prefix_and_the_lane_resumes_at_it() {
    let tap = Arc::new(Tap::new(Arc::new(CrashPmem::new(16 << 20))));
    let blocks = 1 << 12;
    let mut rig = Rig::new(tap.clone(), 2, 4096, blocks);
    let mut rng = StdRng::seed_from_u64(5);
    for i in 0..200 {
        let lane = (i % 2) as u32;
        let lba = rng.random_range(0..blocks - 8);
        rig.write(lane, lba, rng.random_range(1..=8), true);
        if i % 7 == 0 {
            rig.seal(lane);
        }
    }
    rig.seal_all();
    let before: Vec<Key> = rig
        .lanes
        .iter()
        .flat_map(|w| w.sealed.iter().flat_map(|s| s.keys.clone()))
        .collect();
    let sealed_before = rig.lanes[1].sealed.len();

    // Lane 1 seals 40 more keys; the power fails just before the fence that would make the
    // key-set durable, with half of its words on the media.
    for j in 0..40 {
        rig.write(1, j * 4, 4, true);
    }
    let image: Arc<Mutex<Option<Vec<u8>>>> = Arc::default();
    let (img, fences) = (image.clone(), Arc::new(AtomicU64::new(0)));
    tap.set_before_fence(Some(Box::new(move |p: &CrashPmem| {
        // The seal's first fence covers the data, its second the key-set.
        if fences.fetch_add(1, Ordering::SeqCst) == 1 {
            *img.lock().unwrap() = Some(p.crash_image_with(|w| w % 2 == 0));
        }
    })));
    rig.seal(1);
    tap.set_before_fence(None);
    let image = image
        .lock()
        .unwrap()
        .take()
        .expect("an image at the key-set's fence");

    let cut = CrashPmem::from_image(image);
    let (r, index, segments) = replay_device(&cut, &rig.origin).unwrap();
    assert_eq!(
        r.keys,
        before.len() as u64,
        "exactly the key-sets sealed before"
    );
    let gens = format::read_gen_table(&cut, &rig.meta.layout).unwrap();
    assert_same_index(&index, &model(&before, &gens, &rig.meta.layout, 0), blocks);
    let torn = rig.lanes[1].sealed.last().unwrap().clone();
    let lane1 = r.lanes[1];
    assert_eq!(
        lane1.head, torn.pos,
        "the head is where the torn key-set began"
    );
    assert_eq!(lane1.next_seq, torn.lane_seq);
    assert_eq!(rig.lanes[1].sealed.len(), sealed_before + 1);

    // Restart on the image: lane 1 resumes at its head with new keys (on a fresh data segment,
    // as recommended), and the next replay has the old prefix and the new keys, none of the torn.
    let fid = rig.format_id;
    let meta = format::open(&cut, &rig.origin).unwrap();
    let ctx = LogCtx {
        pmem: &cut,
        layout: &meta.layout,
        segments: &segments,
        format_id: fid,
    };
    let mut log = LaneLog::new(1, fid, lane1.head, lane1.head_gen, lane1.next_seq);
    let (seg, gen_) = segments.alloc(SegUse::Data { lane: 1 }).unwrap();
    let mut after = before.clone();
    for j in 0..3u32 {
        let k = Key {
            seq: r.max_seq + 1 + u64::from(j),
            origin_off: 2000 + u64::from(j),
            len: 1,
            data_off: j * 4096,
            data_seg: seg,
            data_gen: gen_,
            data_crc: 0,
            flags: Key::DIRTY,
        };
        log.append(k);
        after.push(k);
    }
    log.seal(&ctx).unwrap();
    let (r2, index2, _) = replay_device(&cut, &rig.origin).unwrap();
    assert_eq!(r2.keys, after.len() as u64);
    assert_eq!(r2.max_seq, r.max_seq + 3);
    assert_same_index(&index2, &model(&after, &gens, &meta.layout, 0), blocks);
}

/// Crash images at a subset of the fences of a run with two lanes, writes, tombstones and a LAST
/// link: every image replays, each lane to a prefix of its sealed key-sets that holds at least
/// every key-set whose seal had returned, and the index is what those keys make.
#[test]
fn every_crash_image_replays() {
    let tap = Arc::new(Tap::new(Arc::new(CrashPmem::new(10 << 20))));
    let blocks = 1 << 12;
    let mut rig = Rig::new(tap.clone(), 2, 512, blocks);
    // Lane 1's log starts near the end of its segment, so it crosses a LAST link early on.
    rig.move_key_tail(
        1,
        LogPos {
            seg: 1,
            off: SEG - 4 * KSET_ALIGN as u32 * 16,
        },
    );

    type Images = Arc<Mutex<Vec<(Vec<u64>, Vec<u8>)>>>;
    let images: Images = Arc::default();
    let (imgs, counts) = (images.clone(), rig.sealed_count.clone());
    // The hook runs outside the tap's lock: its state is its own to guard.
    let rng = Mutex::new(StdRng::seed_from_u64(11));
    let n = AtomicU64::new(0);
    tap.set_before_fence(Some(Box::new(move |p: &CrashPmem| {
        if !(n.fetch_add(1, Ordering::SeqCst) + 1).is_multiple_of(2) {
            return;
        }
        let done: Vec<u64> = counts.iter().map(|c| c.load(Ordering::SeqCst)).collect();
        let img = p.crash_image(&mut *rng.lock().unwrap());
        imgs.lock().unwrap().push((done, img));
    })));

    let mut ops = StdRng::seed_from_u64(12);
    for _ in 0..1500 {
        let lane = ops.random_range(0..2u32);
        let len = ops.random_range(1..=8u32);
        let lba = ops.random_range(0..blocks - u64::from(len));
        if ops.random_bool(0.3) {
            rig.unmap(lane, lba, len, true);
        } else {
            rig.write(lane, lba, len, ops.random_bool(0.9));
        }
        if ops.random_bool(0.15) {
            rig.seal(lane);
        }
    }
    rig.seal_all();
    tap.set_before_fence(None);
    assert_ne!(rig.lanes[1].log.head().seg, 1, "lane 1 crossed a LAST link");

    let images = std::mem::take(&mut *images.lock().unwrap());
    assert!(images.len() > 100, "crash points: {}", images.len());
    let layout = rig.meta.layout;
    for (i, (done, img)) in images.into_iter().enumerate() {
        let cut = CrashPmem::from_image(img);
        let (r, index, _) = replay_device(&cut, &rig.origin)
            .unwrap_or_else(|e| panic!("image {i}: replay failed: {e}"));
        let mut keys = Vec::new();
        for (l, w) in rig.lanes.iter().enumerate() {
            let got = w
                .sealed
                .iter()
                .take_while(|s| s.lane_seq < r.lanes[l].next_seq)
                .count() as u64;
            assert!(
                got >= done[l] && got <= done[l] + 1,
                "image {i}: lane {l} replayed {got} key-sets, {} sealed",
                done[l]
            );
            keys.extend(w.sealed[..got as usize].iter().flat_map(|s| s.keys.clone()));
        }
        assert_eq!(r.keys, keys.len() as u64, "image {i}");
        let gens = format::read_gen_table(&cut, &layout).unwrap();
        assert_same_index(&index, &model(&keys, &gens, &layout, 0), blocks);
    }
}

/// Replays at least 200k keys from four lanes (random 1–4 block writes over a 64 GiB origin,
/// some tombstones) and prints the rate. No timing is asserted.
#[test]
fn replay_speed() {
    let keys = 256_000u64;
    let blocks = 1 << 27; // 512-byte blocks: 64 GiB
    let mut rig = Rig::new(anon(512 << 20), 4, 512, blocks);
    rig.write_data = cfg!(not(debug_assertions));
    let mut rng = StdRng::seed_from_u64(3);
    for i in 0..keys {
        let lane = rng.random_range(0..4u32);
        let len = rng.random_range(1..=4u32);
        let lba = rng.random_range(0..blocks - 8);
        if i % 50 == 49 {
            rig.unmap(lane, lba, len, true);
        } else {
            rig.write(lane, lba, len, true);
        }
        if rng.random_bool(0.01) {
            rig.seal(lane);
        }
    }
    rig.seal_all();
    let (r, index, segments) = rig.replay().unwrap();
    let s = index.stats();
    println!(
        "replay: {} keys ({} tombstones) from {} lanes in {:?}: {:.0} keys/s; {} cached blocks, \
         {} entries, {} segments in use",
        r.keys,
        r.unmaps,
        r.lanes.len(),
        r.elapsed,
        r.keys_per_sec,
        s.cached_blocks,
        s.entries,
        segments.counts().used
    );
    assert_eq!(r.keys, keys);
    assert!(r.keys_per_sec > 0.0);
}
