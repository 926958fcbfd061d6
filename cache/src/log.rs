//! A lane's key log: the appender its owner thread uses to seal key-sets onto pmem, and the walk
//! replay uses to read a lane's log back.
//!
//! Sealing order is what makes the log crash safe: the data the keys name was written with
//! non-temporal stores, so one fence makes it durable; then the key-set is written (also
//! non-temporal) and fenced before the next one is written. A lane's log is therefore persisted
//! strictly in order, a power cut leaves at most a torn last key-set, and a torn key-set followed
//! by a valid later one can only be media damage.

use crate::format::{
    self, FormatError, KSET_ALIGN, KSET_HEADER, Key, KeySetHeader, KsetEnd, KsetError, KsetId,
    Layout, LogPos, MAX_KEYS_PER_KSET, MAX_KSET_SIZE, kset_size,
};
use crate::segments::{SegUse, SegmentTable};
use pmem::Pmem;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// What the lane's owner shares with the management thread (writeback and GC): how far the log
/// is durable (packed as (segment << 32 | offset) so it is published with one store), and the
/// smallest `seq` that may still sit in the lane's open key-set.
#[derive(Default)]
pub struct LaneShared {
    persisted_head: AtomicU64,
    /// A lower bound of every `seq` the owner has taken but not yet sealed; 0: none (`seq`
    /// starts at 1). Set *before* the owner takes a sequence number (see `Cache::take_seq`), so
    /// a writeback thread that reads the global sequence and then this never misses a key that
    /// is taken but not yet durable.
    min_open_seq: AtomicU64,
}

impl LaneShared {
    pub fn persisted_head(&self) -> LogPos {
        let v = self.persisted_head.load(Ordering::Acquire);
        LogPos {
            seg: (v >> 32) as u32,
            off: v as u32,
        }
    }

    /// The lower bound of the `seq`s still open in this lane (None: every key is sealed).
    pub fn min_open_seq(&self) -> Option<u64> {
        match self.min_open_seq.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s),
        }
    }

    /// The owner is about to take a `seq` of at least `lower_bound`; keeps an earlier bound.
    pub fn open_from(&self, lower_bound: u64) {
        if self.min_open_seq.load(Ordering::Relaxed) == 0 {
            self.min_open_seq
                .store(lower_bound.max(1), Ordering::SeqCst);
        }
    }

    /// The owner holds no taken-but-unsealed `seq` (after a seal, or between I/Os with an empty
    /// open key-set). Called after the persisted head is published.
    pub fn clear_open(&self) {
        if self.min_open_seq.load(Ordering::Relaxed) != 0 {
            self.min_open_seq.store(0, Ordering::SeqCst);
        }
    }

    /// The only `seq` still open is `seq` (raises the bound past the keys just sealed).
    fn reopen_at(&self, seq: u64) {
        self.min_open_seq.store(seq.max(1), Ordering::SeqCst);
    }

    fn publish(&self, pos: LogPos) {
        self.persisted_head.store(
            (u64::from(pos.seg) << 32) | u64::from(pos.off),
            Ordering::Release,
        );
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("no free segment for lane {0}'s key log")]
    Full(u32),
}

impl LogError {
    pub fn errno(&self) -> i32 {
        match self {
            LogError::Format(e) => e.errno(),
            LogError::Full(_) => libc::ENOSPC,
        }
    }
}

/// The device-wide things a lane needs to write its log.
pub struct LogCtx<'a> {
    pub pmem: &'a dyn Pmem,
    pub layout: &'a Layout,
    pub segments: &'a SegmentTable,
    pub format_id: u64,
}

/// The appender, owned by one thread.
pub struct LaneLog {
    lane: u32,
    format_id: u64,
    head: LogPos,
    head_gen: u32,
    /// lane_seq of the next key-set.
    next_seq: u64,
    open: Vec<Key>,
    buf: Box<[u8; MAX_KSET_SIZE]>,
    shared: Arc<LaneShared>,
}

impl LaneLog {
    /// Continues a lane at `head` (the end found by replay, or a fresh segment's start).
    pub fn new(lane: u32, format_id: u64, head: LogPos, head_gen: u32, next_seq: u64) -> LaneLog {
        let shared = Arc::new(LaneShared::default());
        shared.publish(head);
        LaneLog {
            lane,
            format_id,
            head,
            head_gen,
            next_seq,
            open: Vec::with_capacity(MAX_KEYS_PER_KSET),
            buf: Box::new([0; MAX_KSET_SIZE]),
            shared,
        }
    }

    /// Starts a new lane in a freshly allocated key segment.
    pub fn start(lane: u32, ctx: &LogCtx) -> Result<LaneLog, LogError> {
        let (seg, gen_) = ctx
            .segments
            .alloc(SegUse::Key { lane: lane as u16 })
            .ok_or(LogError::Full(lane))?;
        Ok(LaneLog::new(
            lane,
            ctx.format_id,
            LogPos { seg, off: 0 },
            gen_,
            1,
        ))
    }

    pub fn lane(&self) -> u32 {
        self.lane
    }

    pub fn shared(&self) -> &Arc<LaneShared> {
        &self.shared
    }

    pub fn head(&self) -> LogPos {
        self.head
    }

    pub fn open_keys(&self) -> &[Key] {
        &self.open
    }

    /// Adds a key to the open key-set; true when the set is full and must be sealed now.
    pub fn append(&mut self, key: Key) -> bool {
        self.open.push(key);
        self.open.len() >= MAX_KEYS_PER_KSET
    }

    /// Writes the open key-set to pmem and makes it durable (with the data it names).
    pub fn seal(&mut self, ctx: &LogCtx) -> Result<(), LogError> {
        self.seal_keeping(ctx, None)
    }

    /// Appends `key` to the open key-set, sealing first when the set holds keys below `cut` and
    /// `key` is at or above it (GC's cut request: then no key-set straddles `cut`), and after
    /// when the set is full.
    pub fn append_at_cut(&mut self, ctx: &LogCtx, key: Key, cut: u64) -> Result<(), LogError> {
        if cut != 0 && key.seq >= cut && self.open.first().is_some_and(|k| k.seq < cut) {
            // `key.seq` is taken but not yet in the set: it stays the lane's open bound.
            self.seal_keeping(ctx, Some(key.seq))?;
        }
        if self.append(key) {
            self.seal(ctx)?;
        }
        Ok(())
    }

    /// `seal`; `still_open`: a `seq` the owner holds but has not appended, which stays the
    /// lane's published lower bound (clearing it even for a moment would let writeback take
    /// that `seq` as durable).
    fn seal_keeping(&mut self, ctx: &LogCtx, still_open: Option<u64>) -> Result<(), LogError> {
        if self.open.is_empty() {
            if still_open.is_none() {
                self.shared.clear_open();
            }
            return Ok(());
        }
        let size = kset_size(self.open.len()) as u32;
        // Room for this key-set and, after it, the LAST link that continues the log elsewhere.
        if self.head.off + size + KSET_ALIGN as u32 > ctx.layout.segment_size() {
            self.link_new_segment(ctx)?;
        }
        let id = self.id();
        let n = format::encode_kset(id, &self.open, &mut self.buf[..])?;
        // Durable data first: the key-set must never name data that a power cut can lose.
        ctx.pmem.fence();
        self.write_persist(ctx, n)?;
        self.head.off += n as u32;
        self.next_seq += 1;
        self.open.clear();
        self.shared.publish(self.head);
        match still_open {
            Some(seq) => self.shared.reopen_at(seq),
            None => self.shared.clear_open(),
        }
        Ok(())
    }

    fn id(&self) -> KsetId {
        KsetId {
            format_id: self.format_id,
            lane: self.lane,
            lane_seq: self.next_seq,
            seg_gen: self.head_gen,
        }
    }

    fn write_persist(&mut self, ctx: &LogCtx, n: usize) -> Result<(), LogError> {
        let at = ctx.layout.segment_offset(self.head.seg)? + u64::from(self.head.off);
        ctx.pmem
            .write_nt(at, &self.buf[..n])
            .map_err(FormatError::from)?;
        ctx.pmem.fence();
        Ok(())
    }

    /// Ends the current key segment with a LAST key-set pointing at a new one.
    fn link_new_segment(&mut self, ctx: &LogCtx) -> Result<(), LogError> {
        let lane = self.lane;
        let (seg, gen_) = ctx
            .segments
            .alloc(SegUse::Key { lane: lane as u16 })
            .ok_or(LogError::Full(lane))?;
        let id = self.id();
        let n = format::encode_kset_last(id, seg, gen_, &mut self.buf[..])?;
        self.write_persist(ctx, n)?;
        self.next_seq += 1;
        self.head = LogPos { seg, off: 0 };
        self.head_gen = gen_;
        Ok(())
    }
}

/// One key-set found by a walk.
pub struct Found {
    pub pos: LogPos,
    pub header: KeySetHeader,
    pub keys: Vec<Key>,
    pub size: u32,
}

/// Where a walk stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalkEnd {
    /// The lane's head: the first position that does not hold the expected key-set.
    pub head: LogPos,
    pub head_gen: u32,
    pub next_seq: u64,
    /// Why it stopped (a torn or never-written key-set is the normal end).
    pub reason: KsetEnd,
}

#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("lane {lane}: key-set at segment {}:{} is damaged but lane sequence {later} follows at offset {later_off}", .at.seg, .at.off)]
    Damaged {
        lane: u32,
        at: LogPos,
        later: u64,
        later_off: u32,
    },
}

impl WalkError {
    pub fn errno(&self) -> i32 {
        match self {
            WalkError::Format(e) => e.errno(),
            WalkError::Damaged { .. } => libc::EIO,
        }
    }
}

/// Reads a lane's log from `start` to its end, calling `f` for every key-set (LAST links are
/// followed, not reported). `gens` is every segment's current generation.
pub fn walk(
    pmem: &dyn Pmem,
    layout: &Layout,
    gens: &[u32],
    format_id: u64,
    lane: u32,
    start: LogPos,
    f: impl FnMut(Found) -> Result<(), FormatError>,
) -> Result<WalkEnd, WalkError> {
    walk_linked(pmem, layout, gens, format_id, lane, start, |_, _| Ok(()), f)
}

/// [`walk`], also calling `on_link(at, next)` for every LAST link it follows (the LAST key-set at
/// `at` continues the log in segment `next`) before it reads `next`: with `start.seg`, these are
/// all the segments the log passes through.
#[allow(clippy::too_many_arguments)]
pub fn walk_linked(
    pmem: &dyn Pmem,
    layout: &Layout,
    gens: &[u32],
    format_id: u64,
    lane: u32,
    start: LogPos,
    mut on_link: impl FnMut(LogPos, u32) -> Result<(), FormatError>,
    mut f: impl FnMut(Found) -> Result<(), FormatError>,
) -> Result<WalkEnd, WalkError> {
    let mut pos = start;
    let mut buf = vec![0u8; MAX_KSET_SIZE];
    let gen_of = |seg: u32| gens.get(seg as usize).copied().ok_or_else(|| bad_pos(seg));
    let mut seg_gen = gen_of(pos.seg)?;
    // The first key-set's lane sequence is whatever the valid key-set at the tail carries.
    let mut expect_seq: Option<u64> = None;
    loop {
        let n = read_at(pmem, layout, pos, &mut buf)?;
        let seq = match expect_seq {
            Some(s) => s,
            None => match KeySetHeader::decode(&buf[..KSET_HEADER.min(n)]) {
                Ok(h) => h.lane_seq,
                Err(_) => 1,
            },
        };
        let expect = KsetId {
            format_id,
            lane,
            lane_seq: seq,
            seg_gen,
        };
        match format::decode_kset(&buf[..n], expect) {
            Ok(view) => {
                let size = view.size() as u32;
                if let Some((next, next_gen)) = view.next_segment() {
                    if gen_of(next)? != next_gen {
                        // The link names a generation the segment no longer has: its successor
                        // was reclaimed, so nothing after this point belongs to the log.
                        return Ok(WalkEnd {
                            head: pos,
                            head_gen: seg_gen,
                            next_seq: seq,
                            reason: KsetEnd::BadMagic,
                        });
                    }
                    on_link(pos, next)?;
                    pos = LogPos { seg: next, off: 0 };
                    seg_gen = next_gen;
                } else {
                    f(Found {
                        pos,
                        header: *view.header(),
                        keys: view.keys().collect(),
                        size,
                    })?;
                    pos.off += size;
                }
                expect_seq = Some(seq + 1);
            }
            Err(KsetError::End(reason)) => {
                check_nothing_after(pmem, layout, lane, format_id, seg_gen, seq, pos, &mut buf)?;
                return Ok(WalkEnd {
                    head: pos,
                    head_gen: seg_gen,
                    next_seq: seq,
                    reason,
                });
            }
            Err(KsetError::Corrupt(e)) => return Err(e.into()),
        }
    }
}

fn bad_pos(seg: u32) -> FormatError {
    FormatError::Corrupt {
        what: "log position",
        why: format!("segment {seg} is out of range"),
    }
}

/// Reads up to one key-set's worth of bytes at `pos` (fewer at the end of a segment).
fn read_at(
    pmem: &dyn Pmem,
    layout: &Layout,
    pos: LogPos,
    buf: &mut [u8],
) -> Result<usize, FormatError> {
    let seg_size = layout.segment_size();
    if pos.off >= seg_size || !pos.off.is_multiple_of(KSET_ALIGN as u32) {
        return Err(FormatError::Corrupt {
            what: "log position",
            why: format!("offset {} in a segment", pos.off),
        });
    }
    let n = buf.len().min((seg_size - pos.off) as usize);
    pmem.read(
        layout.segment_offset(pos.seg)? + u64::from(pos.off),
        &mut buf[..n],
    )?;
    Ok(n)
}

/// After the end of a lane's log, no later key-set of the same lane and generation may follow in
/// the segment: if one does, the key-set at the end is damaged (media corruption), not torn.
#[allow(clippy::too_many_arguments)]
fn check_nothing_after(
    pmem: &dyn Pmem,
    layout: &Layout,
    lane: u32,
    format_id: u64,
    seg_gen: u32,
    expected_seq: u64,
    end: LogPos,
    buf: &mut [u8],
) -> Result<(), WalkError> {
    let mut off = end.off + KSET_ALIGN as u32;
    while off < layout.segment_size() {
        let pos = LogPos { seg: end.seg, off };
        // The header alone first: the rest is read only for a candidate (a 64th of the bytes).
        let n = read_at(pmem, layout, pos, &mut buf[..KSET_HEADER])?;
        if let Ok(h) = KeySetHeader::decode(&buf[..n])
            && h.lane == lane
            && h.seg_gen == seg_gen
            && h.lane_seq > expected_seq
        {
            let n = read_at(pmem, layout, pos, buf)?;
            let expect = KsetId {
                format_id,
                lane,
                lane_seq: h.lane_seq,
                seg_gen,
            };
            if format::decode_kset(&buf[..n], expect).is_ok() {
                return Err(WalkError::Damaged {
                    lane,
                    at: end,
                    later: h.lane_seq,
                    later_off: off,
                });
            }
        }
        off += KSET_ALIGN as u32;
    }
    Ok(())
}
