//! Writeback: the background engine that copies dirty data to the origin in log order, so the
//! origin always holds a prefix of the write history (docs/format.md, "Tails"). One engine per
//! cache, a poller on the management thread. docs/architecture.md ("Writeback", "Out of
//! bdev_io") says how a batch is bounded, gathered, written, flushed and committed, how
//! tombstones leave the index, and how the pace is set ([`batch_interval_us`]).

use crate::error::CacheError;
use crate::format::{self, Key, KsetError, KsetId, LogPos, MAX_KSET_SIZE};
use crate::instance::Cache;
use crate::lane_channel::LaneChannel;
use crate::segments::cache_pos;
use crate::shared::WritebackShared;
use bdev::{BdevChannel, BdevError, BdevIo, DmaBuf, IoCtx, IoFlags, IoType, IoVec};
use poller::{IoChannel, IoDevice, PollStatus, Poller, Thread};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

/// Most keys in a batch.
pub const BATCH_KEYS: usize = 256;
/// Data in a batch, soft limit (a single key larger than this goes alone).
pub const BATCH_BYTES: usize = 8 << 20;
/// Pause between batches at or below the dirty target.
pub const SLOW_INTERVAL_US: u64 = 100_000;
/// No foreground I/O for this long: full speed.
pub const IDLE_AFTER_US: u64 = 1_000_000;
const BACKOFF_MIN_US: u64 = 1_000;
const BACKOFF_MAX_US: u64 = 1_000_000;
/// Key-sets one gather reads at most (a log full of clean keys is crossed over several rounds).
const KSET_BUDGET: usize = 4096;
/// Written-back tombstone ranges kept for `zero_written_back`.
pub const PENDING_ZERO_MAX: usize = 4096;

/// What the engine is doing, in words (the stall watchdog's report).
pub(crate) fn describe(wb: &WritebackShared) -> String {
    let st = wb.state();
    let (phase, waits, inflight) = ((st >> 40) as u8, (st >> 32) as u8, st as u32);
    let doing = match phase {
        1 => format!("writing a batch to the origin ({inflight} I/Os in flight)"),
        2 => "retrying a batch after an origin error".to_string(),
        3 => "flushing the origin".to_string(),
        4 => "retrying an origin flush after an error".to_string(),
        5 => "stopped".to_string(),
        _ => "idle".to_string(),
    };
    let waiting: Vec<&str> = WAITS
        .iter()
        .filter(|w| waits & (1 << **w as u8) != 0)
        .map(|w| match w {
            Wait::Pieces => "its batch's writes",
            Wait::Flush => "its origin flush",
            Wait::Around => "the flush for writes around the cache",
        })
        .collect();
    if waiting.is_empty() {
        format!("writeback {doing}")
    } else {
        format!(
            "writeback {doing}, waiting for an origin bdev_io for {}",
            waiting.join(" and ")
        )
    }
}

/// The controller's inputs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Throttle {
    pub dirty_bytes: u64,
    pub capacity_bytes: u64,
    /// Percent of capacity (0–100).
    pub target_percent: u32,
    /// No foreground I/O for a while.
    pub idle: bool,
    /// A flush_start is in progress.
    pub flushing: bool,
    /// Bytes per second, 0: none.
    pub rate_limit: u64,
    /// Bytes the batch just finished wrote.
    pub last_batch_bytes: u64,
}

/// Microseconds to wait before the next batch (see the module doc).
pub fn batch_interval_us(t: &Throttle) -> u64 {
    let target = t.capacity_bytes / 100 * u64::from(t.target_percent.min(100));
    let base = if t.flushing || t.idle {
        0
    } else if t.dirty_bytes <= target {
        SLOW_INTERVAL_US
    } else {
        let room = t.capacity_bytes.saturating_sub(target).max(1);
        let over = (t.dirty_bytes - target).min(room);
        // Proportional: the further over the target, the shorter the pause.
        ((u128::from(SLOW_INTERVAL_US) * u128::from(room - over)) / u128::from(room)) as u64
    };
    let limit = if t.rate_limit == 0 {
        0
    } else {
        ((u128::from(t.last_batch_bytes) * 1_000_000) / u128::from(t.rate_limit)) as u64
    };
    base.max(limit)
}

/// Starts the engine on the current thread (create calls it on the management thread).
pub(crate) fn start(
    cache: &Arc<Cache>,
    lane_device: IoDevice<LaneChannel>,
) -> Result<(), CacheError> {
    let origin = cache.origin_channel()?;
    let bs = cache.block_size() as usize;
    let cap = BATCH_BYTES.max(crate::index::MAX_KEY_BLOCKS as usize * bs);
    let bounce = DmaBuf::new(cap, 4096).ok_or(CacheError::NoMemory("the writeback buffer"))?;
    let now = Thread::current().map_or(0, |t| t.now());
    cache.wb().set_last_io(now);
    let lanes = cache.lanes().count();
    let engine = Rc::new(RefCell::new(Engine {
        cache: cache.clone(),
        lanes: lane_device,
        origin,
        bounce,
        id: 0,
        phase: Phase::Idle,
        next_at: now + poller::time::us_to_ticks(SLOW_INTERVAL_US),
        backoff_us: BACKOFF_MIN_US,
        batch: Vec::with_capacity(BATCH_KEYS),
        pieces: Vec::with_capacity(BATCH_KEYS * 2),
        inflight: 0,
        around_flush: None,
        around_next: 0,
        waiting: [false; WAITS.len()],
        failed: false,
        covered: 0,
        dirty_tails: vec![LogPos::default(); lanes],
        pending_zero: Vec::new(),
        blocked_seq: None,
        batch_bytes: 0,
        window_start: now,
        window_bytes: 0,
        kset_buf: vec![0u8; MAX_KSET_SIZE],
        cursors: Vec::with_capacity(lanes),
    }));
    let id = ENGINES.with(|e| {
        let mut e = e.borrow_mut();
        let id = e.iter().position(Option::is_none).unwrap_or(e.len());
        if id == e.len() {
            e.push(None);
        }
        e[id] = Some(engine.clone());
        id
    });
    engine.borrow_mut().id = id;
    Poller::register("pcache_writeback", 0, move || {
        let status = engine.borrow_mut().poll();
        engine.borrow().publish();
        status.unwrap_or_else(|| {
            // Stopped with nothing in flight: let go of everything.
            ENGINES.with(|e| {
                if let Some(slot) = e.borrow_mut().get_mut(id) {
                    *slot = None;
                }
            });
            if let Some(p) = Poller::current() {
                p.unregister();
            }
            PollStatus::Idle
        })
    })
    .ok_or(CacheError::NoThread("writeback"))?;
    Ok(())
}

thread_local! {
    /// The engines on this thread, by id (I/O contexts carry the id and a piece number).
    static ENGINES: RefCell<Vec<Option<Rc<RefCell<Engine>>>>> = const { RefCell::new(Vec::new()) };
}

fn engine_of(ctx: &IoCtx) -> Option<(Rc<RefCell<Engine>>, usize)> {
    let IoCtx::Word(w) = *ctx else { return None };
    let (id, piece) = (w >> 32, w & 0xffff_ffff);
    ENGINES.with(|e| e.borrow().get(id).cloned().flatten().map(|en| (en, piece)))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    /// Pieces on the origin.
    Writing,
    /// Waiting to resubmit the failed pieces.
    RetryWrite {
        at: u64,
    },
    Flushing,
    RetryFlush {
        at: u64,
    },
    /// Stopped for good (shutdown).
    Stopped,
}

/// A key taken into the batch.
#[derive(Clone, Copy, Debug)]
struct Taken {
    key: Key,
    /// Byte offset of its data in the bounce buffer (data keys).
    bounce_off: usize,
    /// Where its data is: the bounce buffer, or (a mapped cache) in place.
    data: Src,
    lane: u32,
    /// The key-set holding it.
    kset_pos: LogPos,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PieceState {
    Todo,
    InFlight,
    Done,
    Failed,
}

/// The data of a key or piece: at a byte offset in the bounce buffer, or at a byte offset of the
/// cache device when it is mapped (written to the origin straight from pmem: a dirty key's data
/// stays where it is until it has been written back, GC never passes the dirty tail).
#[derive(Clone, Copy, Debug)]
enum Src {
    Bounce(usize),
    Pmem(u64),
}

/// One origin I/O of a batch: blocks [lba, lba + len), from `src` (None: zeroes).
#[derive(Clone, Copy, Debug)]
struct Piece {
    lba: u64,
    len: u64,
    src: Option<Src>,
    state: PieceState,
}

/// A lane's place in the gather.
struct Cursor {
    lane: u32,
    /// The next key-set to read.
    pos: LogPos,
    gen_: u32,
    lane_seq: Option<u64>,
    /// The persisted head read at the start of the gather: reading stops there.
    head: LogPos,
    /// The key-set `keys` came from.
    kset_pos: LogPos,
    keys: Vec<Key>,
    next: usize,
}

struct Engine {
    cache: Arc<Cache>,
    /// Every thread's lane channel (seal walks).
    lanes: IoDevice<LaneChannel>,
    origin: BdevChannel,
    bounce: DmaBuf,
    id: usize,
    phase: Phase,
    /// Tick before which no batch starts (unless a flush is asked).
    next_at: u64,
    backoff_us: u64,
    batch: Vec<Taken>,
    pieces: Vec<Piece>,
    inflight: usize,
    failed: bool,
    /// Every key up to this `seq` is in the batch or need not be written.
    covered: u64,
    /// Each lane's dirty tail once the batch is written back.
    dirty_tails: Vec<LogPos>,
    /// Written-back tombstone ranges whose ZERO extents are not dropped yet.
    pending_zero: Vec<(u64, u32)>,
    /// A key that must not be written (bad crc, reclaimed data): writeback stays below it.
    blocked_seq: Option<u64>,
    batch_bytes: u64,
    window_start: u64,
    window_bytes: u64,
    kset_buf: Vec<u8>,
    cursors: Vec<Cursor>,
    /// An origin flush for writes sent around the cache is in flight, begun when the cache's
    /// `around` count was this.
    around_flush: Option<u64>,
    around_next: u64,
    /// Submits waiting on the origin's channel for a free bdev_io (by [`Wait`]).
    waiting: [bool; WAITS.len()],
}

/// How soon after a write around the cache its origin flush starts (so that promotions, which
/// wait for it, resume; `Cache::origin_flushed`).
const AROUND_FLUSH_US: u64 = 1_000;

impl Engine {
    /// Publishes the engine's step for [`WritebackShared::describe`].
    fn publish(&self) {
        let phase: u64 = match self.phase {
            Phase::Idle => 0,
            Phase::Writing => 1,
            Phase::RetryWrite { .. } => 2,
            Phase::Flushing => 3,
            Phase::RetryFlush { .. } => 4,
            Phase::Stopped => 5,
        };
        let waits = WAITS
            .iter()
            .filter(|w| self.waiting[**w as usize])
            .fold(0u64, |m, w| m | 1 << *w as u8);
        let inflight = self.inflight.min(u32::MAX as usize) as u64;
        self.cache
            .wb()
            .set_state(phase << 40 | waits << 32 | inflight);
    }

    /// One poller run. None: stopped with nothing in flight (unregister).
    fn poll(&mut self) -> Option<PollStatus> {
        let now = Thread::current().map_or(0, |t| t.now());
        if self.cache.wb().stopped() && self.phase != Phase::Stopped {
            if self.inflight > 0 || self.around_flush.is_some() {
                return Some(PollStatus::Idle);
            }
            self.phase = Phase::Stopped;
        }
        if self.phase != Phase::Stopped {
            self.flush_around(now);
        }
        match self.phase {
            Phase::Stopped => return None,
            Phase::Writing | Phase::Flushing => return Some(PollStatus::Idle),
            Phase::RetryWrite { at } if now >= at => {
                self.submit_pieces();
                return Some(PollStatus::Busy);
            }
            Phase::RetryFlush { at } if now >= at => {
                self.flush();
                return Some(PollStatus::Busy);
            }
            Phase::RetryWrite { .. } | Phase::RetryFlush { .. } => {
                return Some(PollStatus::Idle);
            }
            Phase::Idle => {}
        }
        // Cheap checks first: this runs on every iteration of the management thread.
        let asked = self.cache.wb().flush_target();
        // Writes waiting for space: full speed, GC can only reclaim what is written back.
        let urgent = self.cache.gc().deferred() > 0;
        if asked.is_none() && !urgent && now < self.next_at {
            return Some(PollStatus::Idle);
        }
        let written_back = self.cache.meta().tails.written_back_seq;
        let flushing = urgent || asked.is_some_and(|t| t > written_back);
        if !flushing && now < self.next_at {
            return Some(PollStatus::Idle);
        }
        match self.gather(written_back) {
            Ok(()) => {}
            Err(e) => {
                tracing::error!(cache = %self.cache.name(), "writeback cannot read the key log: {e}");
                self.next_at = now + poller::time::us_to_ticks(BACKOFF_MAX_US);
                return Some(PollStatus::Idle);
            }
        }
        if self.covered <= written_back {
            // Nothing durable to write: keys may wait in open key-sets; have them sealed.
            self.ask_seal_walk();
            self.next_at =
                now + poller::time::us_to_ticks(if flushing { 0 } else { SLOW_INTERVAL_US });
            return Some(PollStatus::Idle);
        }
        self.build_pieces();
        self.batch_bytes = 0;
        self.phase = Phase::Writing;
        self.submit_pieces();
        Some(PollStatus::Busy)
    }

    /// Asks every lane to seal its open key-set (at most one walk at a time).
    fn ask_seal_walk(&self) {
        if !self.cache.lanes().any_open() {
            return;
        }
        let Some(flag) = self.cache.wb().begin_seal_walk() else {
            return;
        };
        self.lanes.for_each_channel(
            |lane: &IoChannel<LaneChannel>| {
                if let Err(e) = lane.seal() {
                    tracing::error!(cache = %lane.cache.name(), "sealing for writeback failed: {e}");
                }
            },
            move || flag.store(false, std::sync::atomic::Ordering::SeqCst),
        );
    }

    /// The largest `seq` every key up to which is durable in some lane's log (module doc).
    fn durable_bound(&self) -> u64 {
        // Order matters: the global sequence first, then the lanes' bounds, then (in gather)
        // their heads.
        let next = self.cache.next_seq();
        let mut s = next.saturating_sub(1);
        if let Some(m) = self.cache.lanes().min_open_seq() {
            s = s.min(m.saturating_sub(1));
        }
        if let Some(b) = self.blocked_seq {
            s = s.min(b.saturating_sub(1));
        }
        s
    }

    /// Fills `batch` with the next keys to write back and sets `covered` and `dirty_tails`.
    fn gather(&mut self, written_back: u64) -> Result<(), CacheError> {
        self.batch.clear();
        self.covered = written_back;
        let s = self.durable_bound();
        let heads = self.cache.persisted_heads();
        let tails: Vec<LogPos> = self
            .cache
            .meta()
            .tails
            .lanes()
            .iter()
            .map(|t| t.dirty_tail)
            .collect();
        self.cursors.clear();
        for (lane, (&tail, &head)) in (0u32..).zip(tails.iter().zip(&heads)) {
            let gen_ = self.cache.segments().generation(tail.seg).ok_or_else(|| {
                CacheError::Damaged(format!("lane {lane}: dirty tail in segment {}", tail.seg))
            })?;
            self.cursors.push(Cursor {
                lane,
                pos: tail,
                gen_,
                lane_seq: None,
                head,
                kset_pos: tail,
                keys: Vec::new(),
                next: 0,
            });
        }
        // Lanes are added while the cache runs: a dirty tail for each lane read here (commit
        // leaves the tails of lanes added since as they are).
        self.dirty_tails
            .resize(self.cursors.len(), LogPos::default());
        let mut budget = KSET_BUDGET;
        for i in 0..self.cursors.len() {
            self.fill(i, &mut budget)?;
        }
        let bs = self.cache.block_size() as usize;
        let mut bytes = 0usize;
        // A lane left without its next key (the read budget ran out) ends the merge: its next
        // key may come before the other lanes' ones.
        let starved = |c: &Cursor| c.next >= c.keys.len() && c.pos != c.head;
        let mut covered = if self.cursors.iter().any(starved) {
            written_back
        } else {
            s
        };
        while covered > written_back {
            // The lane whose next key comes first.
            let next = self
                .cursors
                .iter()
                .enumerate()
                .filter_map(|(i, c)| c.keys.get(c.next).map(|k| (k.seq, i)))
                .min();
            let Some((seq, i)) = next else { break };
            if seq > s {
                break;
            }
            let (k, kset_pos) = {
                let c = &self.cursors[i];
                (c.keys[c.next], c.kset_pos)
            };
            if k.is_dirty() && k.seq > written_back {
                let kb = if k.is_unmap() { 0 } else { k.len as usize * bs };
                let full = self.batch.len() >= BATCH_KEYS
                    || (bytes > 0 && bytes + kb > BATCH_BYTES)
                    || bytes + kb > self.bounce.len();
                if full {
                    covered = seq - 1;
                    break;
                }
                self.batch.push(Taken {
                    key: k,
                    bounce_off: bytes,
                    data: Src::Bounce(bytes),
                    lane: self.cursors[i].lane,
                    kset_pos,
                });
                bytes += kb;
            }
            self.cursors[i].next += 1;
            self.fill(i, &mut budget)?;
            if starved(&self.cursors[i]) {
                covered = seq - 1;
                break;
            }
        }
        // Copy the data in; a key that must not be written ends the batch before it.
        for n in 0..self.batch.len() {
            let t = self.batch[n];
            if t.key.is_unmap() || t.key.seq > covered {
                continue;
            }
            match load(&self.cache, &mut self.bounce, &t) {
                Ok(data) => self.batch[n].data = data,
                Err(why) => {
                    self.cache.stats().crc_errors.add(1);
                    tracing::error!(
                        cache = %self.cache.name(),
                        seq = t.key.seq,
                        lba = t.key.origin_off,
                        blocks = t.key.len,
                        "DIRTY DATA CANNOT BE WRITTEN BACK ({why}); it stays dirty and writeback stops here"
                    );
                    self.blocked_seq = Some(t.key.seq);
                    covered = covered.min(t.key.seq - 1);
                    break;
                }
            }
        }
        self.covered = covered.max(written_back);
        // Dirty tails: each lane's first key-set holding a key above `covered` — a taken key
        // left out of the batch, else the key its cursor stopped at, else where it stopped.
        for (i, c) in self.cursors.iter().enumerate() {
            let left_out = self
                .batch
                .iter()
                .find(|t| t.lane == c.lane && t.key.seq > self.covered)
                .map(|t| t.kset_pos);
            let tail = left_out.unwrap_or(if c.next < c.keys.len() {
                c.kset_pos
            } else {
                c.pos
            });
            if let Some(t) = self.dirty_tails.get_mut(i) {
                *t = tail;
            }
        }
        let covered = self.covered;
        self.batch.retain(|t| t.key.seq <= covered);
        Ok(())
    }

    /// Reads key-sets into cursor `i` until it has a key or reaches its head.
    fn fill(&mut self, i: usize, budget: &mut usize) -> Result<(), CacheError> {
        let cache = self.cache.clone();
        let c = &mut self.cursors[i];
        while c.next >= c.keys.len() && c.pos != c.head {
            if *budget == 0 {
                return Ok(());
            }
            *budget -= 1;
            let seg_size = cache.layout().segment_size();
            let room = seg_size.saturating_sub(c.pos.off) as usize;
            let n = room.min(self.kset_buf.len());
            let base = cache.layout().segment_offset(c.pos.seg)?;
            cache
                .pmem()
                .read(base + u64::from(c.pos.off), &mut self.kset_buf[..n])?;
            let lane_seq = match c.lane_seq {
                Some(s) => s,
                None => format::KeySetHeader::decode(&self.kset_buf[..n.min(format::KSET_HEADER)])
                    .map(|h| h.lane_seq)
                    .map_err(|e| {
                        CacheError::Damaged(format!("lane {}: key-set at {:?}: {e}", c.lane, c.pos))
                    })?,
            };
            let expect = KsetId {
                format_id: cache.format_id(),
                lane: c.lane,
                lane_seq,
                seg_gen: c.gen_,
            };
            let view = format::decode_kset(&self.kset_buf[..n], expect).map_err(|e| {
                CacheError::Damaged(match e {
                    KsetError::End(r) => format!(
                        "lane {}: no valid key-set at {}:{} before the persisted head ({r})",
                        c.lane, c.pos.seg, c.pos.off
                    ),
                    KsetError::Corrupt(e) => format!("lane {}: {e}", c.lane),
                })
            })?;
            c.lane_seq = Some(lane_seq + 1);
            if let Some((next, next_gen)) = view.next_segment() {
                c.pos = LogPos { seg: next, off: 0 };
                c.gen_ = next_gen;
            } else {
                c.kset_pos = c.pos;
                c.keys.clear();
                c.keys.extend(view.keys());
                c.next = 0;
                c.pos.off += view.size() as u32;
            }
        }
        Ok(())
    }

    /// The batch as disjoint origin I/Os: each block in its newest version of the batch.
    fn build_pieces(&mut self) {
        self.pieces.clear();
        let bs = u64::from(self.cache.block_size());
        // Ranges taken by later keys, sorted and merged.
        let mut later: Vec<(u64, u64)> = Vec::with_capacity(self.batch.len());
        for t in self.batch.iter().rev() {
            let (start, end) = (t.key.origin_off, t.key.origin_off + u64::from(t.key.len));
            let mut cur = start;
            for &(a, b) in later.iter() {
                if b <= cur {
                    continue;
                }
                if a >= end {
                    break;
                }
                if a > cur {
                    self.pieces.push(piece(t, cur, a, bs));
                }
                cur = cur.max(b);
                if cur >= end {
                    break;
                }
            }
            if cur < end {
                self.pieces.push(piece(t, cur, end, bs));
            }
            // Insert [start, end) into `later`, merging.
            let i = later.partition_point(|&(_, b)| b < start);
            let mut j = i;
            let (mut a, mut b) = (start, end);
            while j < later.len() && later[j].0 <= b {
                a = a.min(later[j].0);
                b = b.max(later[j].1);
                j += 1;
            }
            later.splice(i..j, [(a, b)]);
        }
    }

    /// Flushes the origin for the writes sent around the cache since the last origin flush
    /// (one at a time, at most every [`AROUND_FLUSH_US`]).
    fn flush_around(&mut self, now: u64) {
        if self.around_flush.is_some()
            || self.waiting[Wait::Around as usize]
            || self.cache.origin_flushed()
            || now < self.around_next
            || !self.origin.io_type_supported(IoType::Flush)
        {
            return;
        }
        self.around_next = now + poller::time::us_to_ticks(AROUND_FLUSH_US);
        self.submit_around();
    }

    /// Submits the origin flush for the writes around the cache completed so far; with no
    /// bdev_io free it waits on the origin's channel and is resubmitted from there.
    fn submit_around(&mut self) {
        let at = self.cache.around();
        let ctx = IoCtx::Word((self.id << 32) | AROUND_FLUSH_PIECE);
        match self
            .origin
            .flush(0, self.origin.num_blocks(), around_flush_done, ctx)
        {
            Ok(()) => self.around_flush = Some(at),
            Err(e) if e.error == BdevError::NoMemory => self.wait_for_io(Wait::Around),
            Err(_) => self.cache.stats().origin_errors.add(1),
        }
    }

    /// Queues the engine on the origin's channel until a bdev_io is free; `what` resumes then.
    fn wait_for_io(&mut self, what: Wait) {
        self.waiting[what as usize] = true;
        let ctx = IoCtx::Word((self.id << 32) | what as usize);
        self.origin.queue_io_wait(resume, ctx);
    }

    /// Submits every piece not done yet (a new batch, or the retry of failed pieces).
    fn submit_pieces(&mut self) {
        self.phase = Phase::Writing;
        self.failed = false;
        for p in &mut self.pieces {
            if p.state == PieceState::Failed {
                p.state = PieceState::Todo;
            }
        }
        self.submit_todo();
    }

    /// Submits the pieces not submitted yet, until the origin has no bdev_io free (then the
    /// rest waits for one, see [`resume`]).
    fn submit_todo(&mut self) {
        let zero_type = if self.origin.io_type_supported(IoType::WriteZeroes) {
            IoType::WriteZeroes
        } else {
            IoType::Unmap
        };
        for n in 0..self.pieces.len() {
            let p = self.pieces[n];
            if p.state != PieceState::Todo {
                continue;
            }
            let ctx = IoCtx::Word((self.id << 32) | n);
            let bytes = (p.len * u64::from(self.cache.block_size())) as usize;
            let iov = match p.src {
                // SAFETY: the range lies in the bounce buffer (built from keys that fit it),
                // which lives as long as the engine and is not touched until every piece of
                // the batch has completed.
                Some(Src::Bounce(off)) => unsafe {
                    Some(IoVec::new(self.bounce.as_mut_ptr().add(off), bytes))
                },
                Some(Src::Pmem(at)) => self.cache.pmem().as_ptr().map(|base| {
                    // SAFETY: `at..at + bytes` is a dirty key's data inside the mapping (its
                    // offset came from the layout), which the engine's `Arc<Cache>` keeps
                    // mapped; nothing writes it before it is written back (the log never
                    // writes in place and GC never reclaims past the dirty tail). The origin
                    // only reads through the vector.
                    unsafe { IoVec::new(base.add(at as usize), bytes) }
                }),
                None => None,
            };
            let r = match iov {
                Some(iov) => {
                    self.origin
                        .write(&[iov], p.lba, p.len, IoFlags::default(), piece_done, ctx)
                }
                None if zero_type == IoType::WriteZeroes => {
                    self.origin.write_zeroes(p.lba, p.len, piece_done, ctx)
                }
                None => self.origin.unmap(p.lba, p.len, piece_done, ctx),
            };
            match r {
                Ok(()) => {
                    self.pieces[n].state = PieceState::InFlight;
                    self.inflight += 1;
                }
                Err(e) if e.error == BdevError::NoMemory => {
                    self.wait_for_io(Wait::Pieces);
                    break;
                }
                Err(e) => {
                    self.cache.stats().origin_errors.add(1);
                    tracing::warn!(cache = %self.cache.name(), lba = p.lba, blocks = p.len, "writeback could not submit to the origin: {}", e.error);
                    self.pieces[n].state = PieceState::Failed;
                    self.failed = true;
                }
            }
        }
        self.after_io();
    }

    /// Called when an I/O of the current step completed (or none could be submitted).
    fn after_io(&mut self) {
        if self.inflight > 0 || self.waiting[Wait::Pieces as usize] {
            return;
        }
        let now = Thread::current().map_or(0, |t| t.now());
        match self.phase {
            Phase::Writing if self.failed => {
                self.phase = Phase::RetryWrite {
                    at: now + self.backoff(),
                };
            }
            Phase::Writing => self.flush(),
            Phase::Flushing if self.failed => {
                self.phase = Phase::RetryFlush {
                    at: now + self.backoff(),
                };
            }
            Phase::Flushing => self.commit(now),
            _ => {}
        }
    }

    fn backoff(&mut self) -> u64 {
        let us = self.backoff_us;
        self.backoff_us = (us * 2).min(BACKOFF_MAX_US);
        poller::time::us_to_ticks(us)
    }

    fn flush(&mut self) {
        self.phase = Phase::Flushing;
        self.failed = false;
        if self.cache.wb().stopped() {
            self.phase = Phase::Idle;
            return;
        }
        if self.pieces.is_empty() || !self.origin.io_type_supported(IoType::Flush) {
            self.after_io();
            return;
        }
        let ctx = IoCtx::Word((self.id << 32) | 0xffff_ffff);
        match self
            .origin
            .flush(0, self.origin.num_blocks(), piece_done, ctx)
        {
            Ok(()) => self.inflight += 1,
            Err(e) if e.error == BdevError::NoMemory => self.wait_for_io(Wait::Flush),
            Err(_) => {
                self.cache.stats().origin_errors.add(1);
                self.failed = true;
                self.after_io();
            }
        }
    }

    /// The batch is on the origin and flushed: persist the tails, then clean the index.
    fn commit(&mut self, now: u64) {
        self.phase = Phase::Idle;
        self.backoff_us = BACKOFF_MIN_US;
        if self.cache.wb().stopped() {
            return;
        }
        let cache = self.cache.clone();
        {
            let mut meta = cache.meta();
            let mut tails = meta.tails;
            tails.written_back_seq = self.covered;
            for (t, &d) in tails.lanes_mut().iter_mut().zip(&self.dirty_tails) {
                t.dirty_tail = d;
            }
            let bytes = tails.encode();
            let payload = bytes.get(..tails.encoded_len()).unwrap_or(&bytes[..]);
            if let Err(e) = meta.tails_slot.write(cache.pmem(), payload) {
                drop(meta);
                tracing::error!(cache = %cache.name(), "persisting the writeback tails failed: {e}");
                self.next_at = now + poller::time::us_to_ticks(BACKOFF_MAX_US);
                return;
            }
            meta.tails = tails;
        }
        let bs = u64::from(cache.block_size());
        let mut bytes = 0u64;
        for t in &self.batch {
            let k = &t.key;
            if k.is_unmap() {
                if self.pending_zero.len() < PENDING_ZERO_MAX {
                    self.pending_zero.push((k.origin_off, k.len));
                }
            } else {
                let pos = cache_pos(cache.layout(), k.data_seg, k.data_off);
                cache
                    .index()
                    .mark_clean(k.origin_off, k.len, pos, pos + u64::from(k.len));
            }
        }
        for p in &self.pieces {
            bytes += p.len * bs;
        }
        if !self.pending_zero.is_empty() {
            let _g = cache.wb().unmap_guard();
            if cache.wb().max_unmap_seq() <= self.covered {
                for &(lba, len) in &self.pending_zero {
                    cache.index().zero_written_back(lba, len);
                }
                self.pending_zero.clear();
            }
        }
        if !self.batch.is_empty() {
            cache.stats().writeback_bytes.add(bytes);
            cache.stats().writeback_batches.add(1);
            cache.stats().writeback_keys.add(self.batch.len() as u64);
        }
        self.window_bytes += bytes;
        let hz = poller::time::ticks_hz().max(1);
        let elapsed = now.saturating_sub(self.window_start);
        if elapsed >= hz {
            let rate =
                (u128::from(self.window_bytes) * u128::from(hz) / u128::from(elapsed)) as u64;
            cache.wb().set_rate(rate);
            self.window_start = now;
            self.window_bytes = 0;
        }
        // A finished flush is forgotten (unless a newer one was asked meanwhile).
        if let Some(t) = cache.wb().flush_target()
            && t <= self.covered
        {
            cache.wb().flush_reached(t);
        }
        self.batch_bytes = bytes;
        let params = cache.params();
        let last_io = cache.wb().last_io();
        let throttle = Throttle {
            dirty_bytes: cache.index().stats().dirty_blocks * bs,
            capacity_bytes: u64::from(cache.layout().segment_count())
                * u64::from(cache.layout().segment_size()),
            target_percent: params.writeback_dirty_target,
            idle: now.saturating_sub(last_io) >= poller::time::us_to_ticks(IDLE_AFTER_US),
            flushing: cache.wb().flush_target().is_some() || cache.gc().deferred() > 0,
            rate_limit: params.writeback_rate_limit,
            last_batch_bytes: bytes,
        };
        self.next_at = now + poller::time::us_to_ticks(batch_interval_us(&throttle));
    }
}

/// Checks a data key's segment and crc; its data stays in place on a mapped cache, else it is
/// copied into the bounce buffer (and checked there).
fn load(cache: &Cache, bounce: &mut DmaBuf, t: &Taken) -> Result<Src, CacheError> {
    let k = &t.key;
    if cache.segments().generation(k.data_seg) != Some(k.data_gen) {
        return Err(CacheError::Damaged(format!(
            "its segment {} was reclaimed",
            k.data_seg
        )));
    }
    let n = k.len as usize * cache.block_size() as usize;
    let at = cache.pos_offset(cache_pos(cache.layout(), k.data_seg, k.data_off));
    let crc_fails = || Err(CacheError::Damaged("its data fails its crc".into()));
    if cache.pmem().as_ptr().is_some() {
        if cache.data_crc() && !cache.crc_matches(at, n as u64, k.data_crc) {
            return crc_fails();
        }
        return Ok(Src::Pmem(at));
    }
    let dst = bounce
        .as_mut_slice()
        .get_mut(t.bounce_off..t.bounce_off + n)
        .ok_or_else(|| CacheError::Damaged("the key does not fit the writeback buffer".into()))?;
    cache.pmem().read(at, dst)?;
    if cache.data_crc() && crc32c::crc32c(dst) != k.data_crc {
        return crc_fails();
    }
    Ok(Src::Bounce(t.bounce_off))
}

fn piece(t: &Taken, a: u64, b: u64, bs: u64) -> Piece {
    let skip = (a - t.key.origin_off) * bs;
    Piece {
        lba: a,
        len: b - a,
        src: (!t.key.is_unmap()).then_some(match t.data {
            Src::Bounce(off) => Src::Bounce(off + skip as usize),
            Src::Pmem(at) => Src::Pmem(at + skip),
        }),
        state: PieceState::Todo,
    }
}

/// The piece number of `flush_around`'s flush.
const AROUND_FLUSH_PIECE: usize = 0xffff_fffe;

/// What the engine waits on the origin's channel for a free bdev_io to submit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wait {
    /// The batch's pieces not submitted yet.
    Pieces,
    /// The batch's origin flush.
    Flush,
    /// The flush for writes around the cache.
    Around,
}

const WAITS: [Wait; 3] = [Wait::Pieces, Wait::Flush, Wait::Around];

/// A bdev_io is free on the origin's channel: the engine resubmits what waited for it, from
/// the waiter callback itself (so it keeps its place ahead of later submitters). A wake-up the
/// engine no longer waits for (stopped, or an engine reusing a stopped one's id) does nothing.
fn resume(ctx: IoCtx) {
    let Some((engine, n)) = engine_of(&ctx) else {
        return;
    };
    let Ok(mut e) = engine.try_borrow_mut() else {
        return;
    };
    let Some(&what) = WAITS.get(n) else { return };
    if !std::mem::take(&mut e.waiting[what as usize]) {
        return;
    }
    e.cache.stats().origin_io_waits.add(1);
    if e.cache.wb().stopped() {
        // Shutdown: nothing more is submitted; the poller lets go once nothing is in flight.
        return;
    }
    match what {
        Wait::Pieces => e.submit_todo(),
        Wait::Flush => e.flush(),
        Wait::Around => {
            if !e.cache.origin_flushed() {
                e.submit_around();
            }
        }
    }
    e.publish();
}

fn around_flush_done(io: BdevIo, ok: bool, ctx: IoCtx) {
    drop(io);
    let Some((engine, _)) = engine_of(&ctx) else {
        return;
    };
    let Ok(mut e) = engine.try_borrow_mut() else {
        return;
    };
    if let Some(at) = e.around_flush.take() {
        if ok {
            e.cache.note_origin_flushed(at);
        } else {
            e.cache.stats().origin_errors.add(1);
        }
    }
}

/// Completion of a piece (or, piece number 0xffff_ffff, of the flush).
fn piece_done(io: BdevIo, ok: bool, ctx: IoCtx) {
    drop(io);
    let Some((engine, n)) = engine_of(&ctx) else {
        return;
    };
    let Ok(mut e) = engine.try_borrow_mut() else {
        return;
    };
    e.inflight = e.inflight.saturating_sub(1);
    if !ok {
        e.cache.stats().origin_errors.add(1);
        e.failed = true;
    }
    if n != 0xffff_ffff
        && let Some(p) = e.pieces.get_mut(n)
    {
        p.state = if ok {
            PieceState::Done
        } else {
            PieceState::Failed
        };
    }
    if !ok {
        tracing::warn!(cache = %e.cache.name(), "an origin I/O of writeback failed; it will be retried");
    }
    e.after_io();
    e.publish();
}
