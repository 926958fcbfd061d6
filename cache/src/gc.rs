//! GC: reclaims the oldest part of the lanes' key logs, and the data segments only those keys
//! named, once the cache is fuller than `gc_percent` or writes are waiting for space. One engine
//! per cache, a poller on the management thread next to writeback. docs/architecture.md ("GC",
//! "Reclaim") says how a round works and why it drops exactly the keys up to a cut no key-set
//! straddles; replay.rs states the contract it keeps.

use crate::error::CacheError;
use crate::format::{self, Key, KsetError, KsetId, LogPos, MAX_KSET_SIZE};
use crate::index::Extent;
use crate::instance::Cache;
use crate::lane_channel::LaneChannel;
use crate::segments::cache_pos;
use poller::{IoChannel, IoDevice, PollStatus, Poller, Thread};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

/// Key-sets read per lane per round, at first.
pub const SETS_PER_LANE: usize = 64;
/// A round that finds no cut in windows its budget cut short doubles the budget, up to this:
/// one lane's key-set may span as many `seq`s as another lane's many small key-sets (FUA
/// writes seal one key each), and the cut lies beyond them.
pub const MAX_SETS_PER_LANE: usize = 1 << 16;
/// A round copies forward at most 1 / this of the blocks it evicted.
pub const SECOND_CHANCE_SHARE: u64 = 4;
/// REFERENCED extents kept per round for a second chance.
const SECOND_CHANCE_MAX: usize = 1024;
/// A round found nothing to drop: wait this long (or for W to move) before trying again.
const RETRY_US: u64 = 10_000;
/// How often segments retired by the data path are looked for.
const SWEEP_US: u64 = 100_000;
/// Bytes copied at a time for a second chance.
const COPY_CHUNK: usize = 64 << 10;

/// Starts GC on the current thread (create calls it on the management thread).
pub(crate) fn start(
    cache: &Arc<Cache>,
    lane_device: IoDevice<LaneChannel>,
) -> Result<(), CacheError> {
    let now = Thread::current().map_or(0, |t| t.now());
    let lanes = cache.lanes().count();
    let engine = Rc::new(RefCell::new(Engine {
        cache: cache.clone(),
        lanes: lane_device,
        kset_buf: vec![0u8; MAX_KSET_SIZE],
        copy_buf: vec![0u8; COPY_CHUNK],
        windows: (0..lanes).map(|_| Window::default()).collect(),
        keys: Vec::new(),
        referenced: Vec::with_capacity(SECOND_CHANCE_MAX),
        dropped: Vec::new(),
        tails: Vec::with_capacity(lanes),
        zeroed: Vec::new(),
        retire_asked: false,
        next_sweep: now,
        sets_per_lane: SETS_PER_LANE,
        stuck_at: None,
        retry_at: now,
    }));
    Poller::register("pcache_gc", 0, move || {
        let status = engine.borrow_mut().poll();
        status.unwrap_or_else(|| {
            if let Some(p) = Poller::current() {
                p.unregister();
            }
            PollStatus::Idle
        })
    })
    .ok_or(CacheError::NoThread("GC"))?;
    Ok(())
}

/// A key-set of a window: where it is, its keys (in `Engine::keys`), their smallest and largest
/// `seq`.
#[derive(Clone, Copy, Debug)]
struct SetInfo {
    pos: LogPos,
    min: u64,
    max: u64,
    first_key: usize,
    keys: usize,
}

/// What a round read of one lane's log.
#[derive(Default)]
struct Window {
    sets: Vec<SetInfo>,
    /// LAST links followed: (key-sets read before it, the segment it left).
    links: Vec<(usize, u32)>,
    /// The window reached the dirty tail (else the read budget ended it).
    reached_limit: bool,
    /// Every key after the window has `seq` ≥ this (None: nothing durable follows).
    after: Option<u64>,
    limit: LogPos,
}

struct Engine {
    cache: Arc<Cache>,
    /// Every thread's lane channel (grace walks; the management thread's lane for second
    /// chances).
    lanes: IoDevice<LaneChannel>,
    kset_buf: Vec<u8>,
    copy_buf: Vec<u8>,
    windows: Vec<Window>,
    keys: Vec<Key>,
    referenced: Vec<(Extent, u64)>,
    /// Each lane's (key tail, dirty tail) for the round.
    tails: Vec<(LogPos, LogPos)>,
    /// The keys of the key-sets a round drops.
    dropped: Vec<Key>,
    /// Data segments whose last reference went this round.
    zeroed: Vec<u32>,
    /// Segments were retired since the last grace walk began.
    retire_asked: bool,
    next_sweep: u64,
    /// Key-sets a round reads per lane (see [`MAX_SETS_PER_LANE`]).
    sets_per_lane: usize,
    /// The written-back sequence at which a round last found nothing to drop.
    stuck_at: Option<u64>,
    retry_at: u64,
}

impl Engine {
    /// One poller run. None: stopped (unregister).
    fn poll(&mut self) -> Option<PollStatus> {
        let cache = self.cache.clone();
        if cache.wb().stopped() {
            return None;
        }
        let now = Thread::current().map_or(0, |t| t.now());
        let mut busy = false;
        if self.retire_asked || now >= self.next_sweep {
            self.next_sweep = now + poller::time::us_to_ticks(SWEEP_US);
            if start_grace_walk(&cache, &self.lanes) {
                self.retire_asked = false;
                busy = true;
            }
        }
        cache.gc().request_cut(cache.next_seq());
        let deferred = cache.gc().deferred() > 0;
        let total = u64::from(cache.layout().segment_count());
        let used = u64::from(cache.segments().used());
        let triggered = deferred || used * 100 >= u64::from(cache.gc().gc_percent()) * total;
        if !triggered {
            return Some(PollStatus::from(busy));
        }
        let written_back = {
            let meta = cache.meta();
            let lanes = meta.tails.lanes();
            if lanes.iter().all(|l| l.key_tail == l.dirty_tail) {
                return Some(PollStatus::from(busy));
            }
            self.tails.clear();
            self.tails
                .extend(lanes.iter().map(|l| (l.key_tail, l.dirty_tail)));
            meta.tails.written_back_seq
        };
        if self.stuck_at == Some(written_back) && now < self.retry_at {
            return Some(PollStatus::from(busy));
        }
        let tails = std::mem::take(&mut self.tails);
        let r = self.round(written_back, &tails);
        self.tails = tails;
        match r {
            Ok(0) if self.windows_cut_short() && self.sets_per_lane < MAX_SETS_PER_LANE => {
                // A cut may lie past what the budget read: read further at once.
                self.sets_per_lane *= 2;
                busy = true;
            }
            Ok(0) => {
                self.stuck_at = Some(written_back);
                self.retry_at = now + poller::time::us_to_ticks(RETRY_US);
            }
            Ok(_) => {
                self.stuck_at = None;
                self.sets_per_lane = SETS_PER_LANE;
                busy = true;
            }
            Err(e) => {
                tracing::error!(cache = %cache.name(), "GC cannot reclaim: {e}");
                self.stuck_at = Some(written_back);
                self.retry_at = now + poller::time::us_to_ticks(1_000_000);
            }
        }
        Some(PollStatus::from(busy))
    }

    /// Whether a window of the last round stopped at the read budget before its dirty tail.
    fn windows_cut_short(&self) -> bool {
        self.windows.iter().any(|w| !w.reached_limit)
    }

    /// One round; returns the key-sets dropped.
    fn round(
        &mut self,
        written_back: u64,
        tails: &[(LogPos, LogPos)],
    ) -> Result<usize, CacheError> {
        let cache = self.cache.clone();
        let heads = cache.persisted_heads();
        self.keys.clear();
        // Lanes are added while the cache runs: a window for each lane both lists know.
        self.windows
            .resize_with(tails.len().min(heads.len()), Window::default);
        for (lane, (&(key_tail, dirty_tail), &head)) in (0u32..).zip(tails.iter().zip(&heads)) {
            self.read_window(lane, key_tail, dirty_tail, head)?;
        }
        let cut = cut(&self.windows, written_back);
        // Which key-sets go, and where each lane's key tail moves.
        self.zeroed.clear();
        self.dropped.clear();
        let mut dropped_sets = 0usize;
        let mut new_tails: Vec<Option<LogPos>> = vec![None; self.windows.len()];
        let mut left_segments: Vec<u32> = Vec::new();
        for (lane, w) in self.windows.iter().enumerate() {
            let d = w.sets.iter().take_while(|s| s.max <= cut).count();
            if d == w.sets.len() && !w.reached_limit {
                return Err(CacheError::Damaged(format!(
                    "lane {lane}: a cut past the end of the window"
                )));
            }
        }
        for (lane, w) in self.windows.iter().enumerate() {
            let d = w.sets.iter().take_while(|s| s.max <= cut).count();
            let tail = w.sets.get(d).map_or(w.limit, |s| s.pos);
            left_segments.extend(w.links.iter().filter(|(k, _)| *k <= d).map(|&(_, s)| s));
            if d > 0 || w.links.iter().any(|(k, _)| *k <= d) {
                new_tails[lane] = Some(tail);
            }
            for s in &w.sets[..d] {
                dropped_sets += 1;
                self.dropped
                    .extend_from_slice(&self.keys[s.first_key..s.first_key + s.keys]);
            }
        }
        if new_tails.iter().all(Option::is_none) {
            return Ok(0);
        }
        // Evict what they name, key by key; REFERENCED pieces are copied forward at once, so
        // each fill carries the version its own evict gave (a later evict in the same version
        // unit would make it look changed).
        let data_blocks: u64 = self
            .dropped
            .iter()
            .filter(|k| !k.is_unmap())
            .map(|k| u64::from(k.len))
            .sum();
        let budget = if cache.gc().deferred() > 0 {
            0
        } else {
            data_blocks / SECOND_CHANCE_SHARE
        };
        let mut lane_ch: Option<IoChannel<LaneChannel>> = None;
        let (mut evicted, mut copied) = (0u64, 0u64);
        let dropped = std::mem::take(&mut self.dropped);
        for k in &dropped {
            if k.is_unmap() || cache.segments().generation(k.data_seg) != Some(k.data_gen) {
                continue;
            }
            let pos = cache_pos(cache.layout(), k.data_seg, k.data_off);
            self.referenced.clear();
            let refs = &mut self.referenced;
            let want = copied < budget;
            evicted += u64::from(cache.index().evict(
                k.origin_off,
                k.len,
                pos,
                pos + u64::from(k.len),
                |e, version| {
                    if want && refs.len() < SECOND_CHANCE_MAX {
                        refs.push((e, version));
                    }
                },
            ));
            if !self.referenced.is_empty() {
                if lane_ch.is_none() {
                    lane_ch = self.lanes.get_channel().ok();
                }
                if let Some(ch) = &lane_ch {
                    copied += self.second_chance(ch, budget - copied);
                }
            }
            if cache.segments().put_ref(k.data_seg) {
                self.zeroed.push(k.data_seg);
            }
        }
        let dropped_keys = dropped.len() as u64;
        self.dropped = dropped;
        if let Some(ch) = lane_ch
            && let Err(e) = ch.seal()
        {
            tracing::error!(cache = %cache.name(), "sealing GC's second-chance keys failed: {e}");
        }
        // Persist the key tails, then retire what they left behind.
        {
            let mut meta = cache.meta();
            let mut t = meta.tails;
            for (lt, nt) in t.lanes_mut().iter_mut().zip(&new_tails) {
                if let Some(p) = nt {
                    lt.key_tail = *p;
                }
            }
            let bytes = t.encode();
            let payload = bytes.get(..t.encoded_len()).unwrap_or(&bytes[..]);
            if let Err(e) = meta.tails_slot.write(cache.pmem(), payload) {
                // The index no longer maps the dropped keys, but they stay in the log: nothing
                // is retired, so nothing they name is reused (the space is simply not freed).
                return Err(e.into());
            }
            meta.tails = t;
        }
        for &seg in left_segments.iter().chain(&self.zeroed) {
            cache.segments().retire(seg);
        }
        self.retire_asked |= !left_segments.is_empty() || !self.zeroed.is_empty();
        if self.retire_asked && start_grace_walk(&cache, &self.lanes) {
            self.retire_asked = false;
        }
        let bs = u64::from(cache.block_size());
        cache.stats().gc_runs.add(1);
        cache.stats().gc_keys.add(dropped_keys);
        cache.stats().gc_evicted_bytes.add(evicted * bs);
        cache.stats().gc_second_chance_bytes.add(copied * bs);
        tracing::debug!(cache = %cache.name(), cut, dropped_sets, dropped_keys, evicted, copied, "GC round");
        Ok(dropped_sets)
    }

    /// Reads lane `lane`'s key-sets from `tail` to `limit` (the dirty tail) into its window,
    /// and the smallest `seq` of the key-set at the limit.
    fn read_window(
        &mut self,
        lane: u32,
        tail: LogPos,
        limit: LogPos,
        head: LogPos,
    ) -> Result<(), CacheError> {
        let cache = self.cache.clone();
        let mut w = std::mem::take(&mut self.windows[lane as usize]);
        w.sets.clear();
        w.links.clear();
        w.reached_limit = false;
        w.after = None;
        w.limit = limit;
        let mut pos = tail;
        let mut gen_ = cache.segments().generation(pos.seg).ok_or_else(|| {
            CacheError::Damaged(format!("lane {lane}: key tail in segment {}", pos.seg))
        })?;
        let mut lane_seq: Option<u64> = None;
        let result = loop {
            let past_limit = w.reached_limit || pos == limit;
            if pos == limit {
                w.reached_limit = true;
            }
            if pos == head {
                break Ok(());
            }
            if !past_limit && w.sets.len() >= self.sets_per_lane {
                w.after = w.sets.last().map(|s| s.max);
                break Ok(());
            }
            let seg_size = cache.layout().segment_size();
            let n = (seg_size.saturating_sub(pos.off) as usize).min(self.kset_buf.len());
            let base = match cache.layout().segment_offset(pos.seg) {
                Ok(b) => b,
                Err(e) => break Err(e.into()),
            };
            if let Err(e) = cache
                .pmem()
                .read(base + u64::from(pos.off), &mut self.kset_buf[..n])
            {
                break Err(e.into());
            }
            let seq = match lane_seq {
                Some(s) => s,
                None => {
                    match format::KeySetHeader::decode(&self.kset_buf[..n.min(format::KSET_HEADER)])
                    {
                        Ok(h) => h.lane_seq,
                        Err(e) => {
                            break Err(CacheError::Damaged(format!(
                                "lane {lane}: key-set at {pos:?}: {e}"
                            )));
                        }
                    }
                }
            };
            let expect = KsetId {
                format_id: cache.format_id(),
                lane,
                lane_seq: seq,
                seg_gen: gen_,
            };
            let view = match format::decode_kset(&self.kset_buf[..n], expect) {
                Ok(v) => v,
                Err(KsetError::End(r)) => {
                    break Err(CacheError::Damaged(format!(
                        "lane {lane}: no valid key-set at {}:{} before the persisted head ({r})",
                        pos.seg, pos.off
                    )));
                }
                Err(KsetError::Corrupt(e)) => {
                    break Err(CacheError::Damaged(format!("lane {lane}: {e}")));
                }
            };
            lane_seq = Some(seq + 1);
            if let Some((next, next_gen)) = view.next_segment() {
                if !past_limit {
                    w.links.push((w.sets.len(), pos.seg));
                }
                pos = LogPos { seg: next, off: 0 };
                gen_ = next_gen;
                continue;
            }
            let first_key = self.keys.len();
            self.keys.extend(view.keys());
            let ks = &self.keys[first_key..];
            let min = ks.iter().map(|k| k.seq).min().unwrap_or(u64::MAX);
            let max = ks.iter().map(|k| k.seq).max().unwrap_or(0);
            if past_limit {
                // The key-set at the dirty tail: only its smallest seq matters.
                self.keys.truncate(first_key);
                w.after = Some(min);
                break Ok(());
            }
            w.sets.push(SetInfo {
                pos,
                min,
                max,
                first_key,
                keys: ks.len(),
            });
            pos.off += view.size() as u32;
        };
        self.windows[lane as usize] = w;
        result
    }

    /// Copies the REFERENCED extents just evicted forward into `ch`'s lane (the management
    /// thread's), at most `budget` blocks; returns the blocks copied. The caller seals the lane.
    fn second_chance(&mut self, ch: &LaneChannel, budget: u64) -> u64 {
        let cache = self.cache.clone();
        let bs = u64::from(cache.block_size());
        let mut copied = 0u64;
        {
            let mut lane_ref = ch.lane.borrow_mut();
            let Some(lane) = lane_ref.as_mut() else {
                return 0;
            };
            'extents: for &(e, version) in &self.referenced {
                if copied + u64::from(e.len) > budget {
                    break;
                }
                if e.dirty {
                    // Never: GC only drops written-back keys.
                    tracing::error!(cache = %cache.name(), lba = e.lba, blocks = e.len, "GC evicted a dirty extent");
                    continue;
                }
                if cache.data_crc() && !cache.crc_ok(&e) {
                    cache.stats().crc_errors.add(1);
                    continue;
                }
                let mut done = 0u32;
                while done < e.len {
                    let Some(space) =
                        lane.alloc_data(cache.segments(), cache.layout(), e.len - done)
                    else {
                        break 'extents;
                    };
                    let pos = cache_pos(cache.layout(), space.seg, space.off);
                    let mut src = cache.pos_offset(e.pos + u64::from(done));
                    let mut dst = cache.pos_offset(pos);
                    let mut left = u64::from(space.blocks) * bs;
                    let mut crc = 0u32;
                    let mut ok = true;
                    while left > 0 && ok {
                        let n = left.min(self.copy_buf.len() as u64) as usize;
                        let buf = &mut self.copy_buf[..n];
                        ok = cache.pmem().read(src, buf).is_ok()
                            && cache.pmem().write_nt(dst, buf).is_ok();
                        if cache.data_crc() {
                            crc = crc32c::crc32c_append(crc, buf);
                        }
                        src += n as u64;
                        dst += n as u64;
                        left -= n as u64;
                    }
                    let lba = e.lba + u64::from(done);
                    let seq = cache.take_seq(lane);
                    let filled = ok
                        && cache
                            .index()
                            .fill(&Extent::key(lba, space.blocks, pos, crc, false), version)
                            .is_ok_and(|n| n > 0);
                    if filled {
                        let key = cache.key_for(seq, lba, space.blocks, &space, crc, false);
                        if let Err(err) = cache.append_key(lane, key) {
                            tracing::error!(cache = %cache.name(), "appending a key failed: {err}");
                            break 'extents;
                        }
                        copied += u64::from(space.blocks);
                    } else if cache.segments().put_ref(space.seg) {
                        // No key names the space: its reference goes at once.
                        cache.segments().retire(space.seg);
                        self.retire_asked = true;
                    }
                    done += space.blocks;
                }
            }
        }
        copied
    }
}

/// The largest P ≤ `written_back` that no key-set of the windows straddles (each lies wholly at
/// or below P, or wholly above it, and so does whatever follows each window), among the ends of
/// the windows' key-sets. 0: no key-set can go (the key tails may still move past LAST links).
fn cut(windows: &[Window], written_back: u64) -> u64 {
    let mut cands: Vec<u64> = windows
        .iter()
        .flat_map(|w| w.sets.iter().map(|s| s.max))
        .filter(|&m| m <= written_back)
        .collect();
    cands.sort_unstable_by(|a, b| b.cmp(a));
    cands.dedup();
    cands
        .into_iter()
        .find(|&p| {
            windows.iter().all(|w| {
                w.after.is_none_or(|a| a > p) && w.sets.iter().all(|s| s.max <= p || s.min > p)
            })
        })
        .unwrap_or(0)
}

/// Starts a grace-period walk over every thread's lane channel for the segments retiring now;
/// its completion (on this thread) frees them. False when one is in flight or none retire.
fn start_grace_walk(cache: &Arc<Cache>, lanes: &IoDevice<LaneChannel>) -> bool {
    if cache.gc().walking() {
        return false;
    }
    let segs = cache.segments().retiring();
    if segs.is_empty() {
        return false;
    }
    cache.gc().begin_walk();
    let c = cache.clone();
    lanes.for_each_channel(
        |_| {},
        move || {
            let before = c.segments().freed();
            if let Err(e) = c.segments().free_retired(c.pmem(), c.layout(), &segs) {
                tracing::error!(cache = %c.name(), "freeing retired segments failed: {e}");
            }
            c.stats()
                .gc_segments_freed
                .add(c.segments().freed() - before);
            c.gc().end_walk();
        },
    );
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(sets: &[(u64, u64)], after: Option<u64>) -> Window {
        Window {
            sets: sets
                .iter()
                .map(|&(min, max)| SetInfo {
                    pos: LogPos::default(),
                    min,
                    max,
                    first_key: 0,
                    keys: 0,
                })
                .collect(),
            after,
            reached_limit: true,
            ..Window::default()
        }
    }

    #[test]
    fn the_cut_never_splits_a_key_set_across_lanes() {
        // One lane: every key-set end up to W is a cut.
        assert_eq!(cut(&[window(&[(1, 10), (11, 20), (21, 30)], None)], 25), 20);
        // Two lanes interleaved: B's [5, 40] straddles 10, 20 and 30.
        let a = window(&[(1, 10), (11, 20), (21, 30)], Some(41));
        let b = window(&[(5, 40)], Some(45));
        assert_eq!(cut(&[a, b], 100), 40);
        let a = window(&[(1, 10), (11, 20), (21, 30)], Some(41));
        let b = window(&[(5, 40)], Some(45));
        assert_eq!(cut(&[a, b], 35), 0, "nothing below W=35 can go alone");
        // What follows a window (the key-set at the dirty tail) bounds the cut too.
        let a = window(&[(1, 10), (11, 20)], None);
        let b = window(&[(2, 9)], Some(15));
        assert_eq!(cut(&[a, b], 100), 10);
        // Equal seqs split over two key-sets of a lane are never separated.
        assert_eq!(cut(&[window(&[(1, 7), (7, 9)], None)], 100), 9);
        assert_eq!(cut(&[window(&[(1, 7), (7, 9)], Some(12))], 8), 0);
    }
}
