//! The data path: how the cache bdev executes each I/O on the submitting thread.
//!
//! - Writes (writeback): data goes into the thread's lane with non-temporal stores (checksummed on
//!   the way when data_crc is on), the new extent is indexed, its key appended to the lane's open
//!   key-set. The write completes at once (volatile write cache), or once the key-set is sealed
//!   (FUA, durable mode: the lane's poller seals once per iteration — group commit).
//! - Writes in the other modes, and writes of a sequential stream past the cutoff, go to the
//!   origin ([`write_to_origin`]): cached copies of the range are dropped first (logged as a clean
//!   UNMAP key and sealed when there were any, so replay cannot bring them back), and again when
//!   the origin completes (a read racing the write may have cached the old data); writethrough
//!   then caches the new data as clean. A range that still holds dirty data (the cache is
//!   leaving writeback and cleaning) takes the writeback path instead, so the log keeps the
//!   order of the two writes and writeback sends the newer one last.
//! - Unmap and write_zeroes: a tombstone in the log in writeback mode (writeback sends it to the
//!   origin after older dirty data for the range); in the other modes straight to the origin
//!   like a write, unless the range holds dirty data.
//! - Reads: the index splits the range into hits (copied out of pmem, crc-checked when data_crc is
//!   on) and misses (read from the origin, one after another, then cached as clean data unless
//!   the mode is passthrough, the read belongs to a sequential stream past the cutoff, or the
//!   promotion threshold has not been reached for the range).
//! - FLUSH seals every thread's open key-set (a walk over the lanes) before it completes.
//!
//! A parent I/O's progress (blocks done) lives in its `driver_ctx`; an origin read carries the
//! parent in its context, so nothing is allocated per I/O. An origin child refused for want of
//! a bdev_io is not an error: the parent waits on the origin's channel (`queue_io_wait`) and
//! resumes from the step that was refused.

use crate::channel::CacheBdevChannel;
use crate::index::{Extent, Piece};
use crate::instance::Cache;
use crate::lane_channel::LaneChannel;
use crate::params::CacheMode;
use bdev::iov::{self, IoVec};
use bdev::{BdevChannelOps, BdevIo, IoCtx, IoStatus, IoType};
use poller::Thread;
use std::rc::Rc;
use std::sync::Arc;

/// Keys are at most this many blocks (the index's limit for one original key).
const MAX_KEY_BLOCKS: u32 = crate::index::MAX_KEY_BLOCKS;

// driver_ctx slots of a parent I/O. DONE counts blocks in its low bits; a read also records
// there whether it met hits and misses, to be counted once when it completes.
const DONE: usize = 0;
const SAW_HIT: u64 = 1 << 63;
const SAW_MISS: u64 = 1 << 62;
/// A write was deferred at least once (for the deferred_writes counter).
const DEFERRED: u64 = 1 << 63;
/// A read whose misses are not cached (passthrough, sequential stream past the cutoff).
const NO_PROMOTE: u64 = 1 << 61;
/// A write sent to the origin whose data is cached when the origin completes (writethrough).
const CACHE_AFTER: u64 = 1 << 61;
const DONE_MASK: u64 = NO_PROMOTE - 1;
const MISS_LBA: usize = 1;
const MISS_LEN: usize = 2;
const MISS_VERSION: usize = 3;

impl BdevChannelOps for CacheBdevChannel {
    fn stall_report(&self) -> Option<String> {
        Some(self.report())
    }

    fn submit_request(&self, mut io: BdevIo) {
        io.driver_ctx()[DONE] = 0;
        self.cache.wb().note_io(self.origin.now());
        let mode = self.cache.mode();
        match io.io_type() {
            IoType::Read => {
                let bypass = self.past_cutoff(&io);
                if bypass || mode == CacheMode::Passthrough {
                    io.driver_ctx()[DONE] = NO_PROMOTE;
                }
                read_continue(self, io)
            }
            IoType::Write => {
                let bypass = self.past_cutoff(&io);
                if mode == CacheMode::Writeback && !bypass || holds_dirty(&self.cache, &io) {
                    write_continue(&self.lane, io)
                } else {
                    if mode == CacheMode::Writethrough && !bypass {
                        io.driver_ctx()[DONE] = CACHE_AFTER;
                    }
                    write_to_origin(self, io)
                }
            }
            IoType::Flush => flush(self, io),
            IoType::Reset => io.complete_ok(),
            IoType::Unmap | IoType::WriteZeroes => {
                // Durable mode: a tombstone is persistent at completion, an origin unmap not.
                if mode == CacheMode::Writeback
                    || self.cache.durable()
                    || !self.origin.io_type_supported(io.io_type())
                    || holds_dirty(&self.cache, &io)
                {
                    zero_range(&self.lane, io)
                } else {
                    write_to_origin(self, io)
                }
            }
        }
    }
}

impl CacheBdevChannel {
    /// Whether `io` continues a sequential stream longer than the cutoff (always false when
    /// the cutoff is 0). Streams are tracked per channel, a few at a time.
    fn past_cutoff(&self, io: &BdevIo) -> bool {
        let cutoff = self.cache.sequential_cutoff();
        if cutoff == 0 {
            return false;
        }
        let bytes = io.num_blocks() * u64::from(self.cache.block_size());
        let run = self
            .streams
            .note(io.offset_blocks(), io.num_blocks(), bytes);
        let past = run > cutoff;
        if past {
            self.cache.stats().sequential_bypassed.add(1);
        }
        past
    }
}

/// Whether the index holds dirty data (or a dirty tombstone) in `io`'s range.
fn holds_dirty(cache: &Cache, io: &BdevIo) -> bool {
    let mut dirty = false;
    let (lba, n) = (io.offset_blocks(), io.num_blocks());
    let mut at = lba;
    while at < lba + n && !dirty {
        let len = (lba + n - at).min(u64::from(u32::MAX)) as u32;
        cache.index().lookup(at, len, |piece| {
            dirty |= matches!(piece, Piece::Hit(e) if e.dirty);
        });
        at += u64::from(len);
    }
    dirty
}

/// A write (or, outside writeback, an unmap or write_zeroes) that goes to the origin: the
/// range's cached copies are dropped first, then the I/O is passed down.
fn write_to_origin(ch: &CacheBdevChannel, io: BdevIo) {
    if let Err(errno) = invalidate(&ch.lane, io.offset_blocks(), io.num_blocks()) {
        io.fail(errno);
        return;
    }
    // An origin without FLUSH has no volatile cache to lose the write from.
    if ch.origin.io_type_supported(IoType::Flush) {
        ch.cache.note_around();
    }
    let flags = around_flags(&ch.cache, &io);
    // (forward_with fails the parent itself on a refusal other than NoMemory, which a
    // claimed origin of the same geometry never gives: the count would keep it.)
    ch.to_origin();
    ch.origin
        .forward_with(io, flags, origin_write_done, retry_origin_write);
}

/// A write around the cache is FUA on the origin when its completion promises more than the
/// origin's volatile cache keeps: a clean copy is cached after it (writethrough: the copy must
/// never outlive the data it copies), or durable mode.
fn around_flags(cache: &Cache, io: &BdevIo) -> bdev::IoFlags {
    let mut flags = io.flags();
    let copied = io.io_type() == IoType::Write && io.driver_ctx_ref()[DONE] & CACHE_AFTER != 0;
    flags.fua |= copied || cache.durable();
    flags
}

fn retry_origin_write(ctx: IoCtx) {
    if let Some((io, ch)) = resumed(ctx) {
        let flags = around_flags(&ch.cache, &io);
        ch.origin
            .forward_with(io, flags, origin_write_done, retry_origin_write);
    }
}

impl CacheBdevChannel {
    /// An origin submit that did not happen: with no bdev_io free the parent waits on the
    /// origin's channel (the one that refused it) and `retry` resumes it; any other refusal
    /// fails it with its errno.
    fn refused(&self, e: bdev::SubmitError, retry: fn(IoCtx)) {
        let IoCtx::Io(io) = e.ctx else { return };
        if e.error == bdev::BdevError::NoMemory {
            self.origin.queue_io_wait(retry, IoCtx::Io(io));
        } else {
            self.back_from_origin();
            self.cache.stats().origin_errors.add(1);
            io.fail(e.error.errno());
        }
    }

    /// A parent is handed to the origin (its child submitted or waiting for a bdev_io).
    fn to_origin(&self) {
        self.at_origin.set(self.at_origin.get() + 1);
    }

    /// A parent's origin child completed (or never will be submitted).
    fn back_from_origin(&self) {
        self.at_origin.set(self.at_origin.get().saturating_sub(1));
    }
}

/// A parent I/O back from waiting for a free origin bdev_io (counted), with its channel.
fn resumed(ctx: IoCtx) -> Option<(BdevIo, Rc<CacheBdevChannel>)> {
    let IoCtx::Io(io) = ctx else { return None };
    let Some(ch) = io.module_channel::<CacheBdevChannel>() else {
        io.fail(libc::ENODEV);
        return None;
    };
    ch.cache.stats().origin_io_waits.add(1);
    Some((io, ch))
}

/// An origin child's completion: the parent and its channel when the child succeeded; else the
/// parent has failed with the child's errno (counted as an origin error).
fn origin_done(child: BdevIo, ok: bool, ctx: IoCtx) -> Option<(BdevIo, Rc<CacheBdevChannel>)> {
    let status = child.status();
    drop(child);
    let IoCtx::Io(io) = ctx else { return None };
    let Some(ch) = io.module_channel::<CacheBdevChannel>() else {
        io.fail(libc::ENODEV);
        return None;
    };
    ch.back_from_origin();
    if !ok {
        ch.cache.stats().origin_errors.add(1);
        io.fail(match status {
            IoStatus::Failed(e) => e,
            _ => libc::EIO,
        });
        return None;
    }
    Some((io, ch))
}

fn origin_write_done(child: BdevIo, ok: bool, ctx: IoCtx) {
    let Some((mut io, ch)) = origin_done(child, ok, ctx) else {
        return;
    };
    let cache = &ch.cache;
    let (lba, n) = (io.offset_blocks(), io.num_blocks());
    if io.io_type() == IoType::Write {
        cache
            .stats()
            .bytes_written_origin
            .add(n * u64::from(cache.block_size()));
    }
    // A read that began after the first invalidation may have cached what the origin held
    // before this write: writethrough replaces it with the new data, the others drop it again.
    let cached = io.driver_ctx()[DONE] & CACHE_AFTER != 0
        && n <= u64::from(u32::MAX)
        && cache_copy(&ch.lane, io.iovs(), 0, lba, n as u32, Fill::Newest);
    if !cached && let Err(errno) = invalidate(&ch.lane, lba, n) {
        io.fail(errno);
        return;
    }
    io.complete_ok();
}

/// Drops every cached copy in [lba, lba + n). When there was one, the drop is logged (a clean
/// UNMAP key) and sealed before this returns: the origin is about to change under it, and
/// replay must not bring the old copy back. Fills in flight for the range give way either way.
fn invalidate(lane_ch: &LaneChannel, lba: u64, n: u64) -> Result<(), i32> {
    let cache = &lane_ch.cache;
    let mut done = 0u64;
    while done < n {
        let len = (n - done).min(u64::from(u32::MAX)) as u32;
        let at = lba + done;
        done += u64::from(len);
        let mut cached = false;
        cache.index().lookup(at, len, |piece| {
            cached |= matches!(piece, Piece::Hit(_));
        });
        if !cached {
            cache.index().remove_range(at, len);
            continue;
        }
        let mut lane_ref = lane_ch.lane.borrow_mut();
        let Some(lane) = lane_ref.as_mut() else {
            return Err(libc::EBUSY);
        };
        let (dropped, seq) = cache.remove_ordered(lane, at, len);
        let key = crate::format::Key {
            seq,
            origin_off: at,
            len,
            flags: crate::format::Key::UNMAP,
            ..Default::default()
        };
        let logged = cache
            .append_key(lane, key)
            .and_then(|()| lane.seal(&cache.log_ctx()));
        if let Err(e) = logged {
            tracing::error!(cache = %cache.name(), "logging an invalidation failed: {e}");
            return Err(libc::EIO);
        }
        cache.stats().keysets_sealed.add(1);
        cache
            .stats()
            .bytes_invalidated
            .add(dropped.total() * u64::from(cache.block_size()));
    }
    Ok(())
}

/// Writes the rest of `io` into the lane; defers it when the cache is full.
fn write_continue(lane_ch: &LaneChannel, mut io: BdevIo) {
    let cache = &lane_ch.cache;
    let bs = cache.block_size();
    let total = io.num_blocks() as u32;
    let lba = io.offset_blocks();
    let word = io.driver_ctx()[DONE];
    let mut done = (word & DONE_MASK) as u32;
    let mut lane_ref = lane_ch.lane.borrow_mut();
    let Some(lane) = lane_ref.as_mut() else {
        drop(lane_ref);
        io.fail(libc::EBUSY);
        return;
    };
    while done < total {
        let want = (total - done).min(MAX_KEY_BLOCKS);
        let Some(space) = lane.alloc_data(cache.segments(), cache.layout(), want) else {
            // Counted once per write, however often it has to wait again.
            if word & DEFERRED == 0 {
                cache.stats().deferred_writes.add(1);
            }
            io.driver_ctx()[DONE] = u64::from(done) | DEFERRED;
            drop(lane_ref);
            cache.gc().note_deferred();
            lane_ch.deferred.borrow_mut().push_back(io);
            return;
        };
        let bytes = (space.blocks * bs) as usize;
        let pos = crate::segments::cache_pos(cache.layout(), space.seg, space.off);
        let mut at = cache.pos_offset(pos);
        let mut crc = 0u32;
        let mut failed = false;
        iov::for_each_range(io.iovs(), done as usize * bs as usize, bytes, |src| {
            if cache.data_crc() {
                crc = crc32c::crc32c_append(crc, src);
            }
            failed |= cache.pmem().write_nt(at, src).is_err();
            at += src.len() as u64;
        });
        if failed {
            drop(lane_ref);
            io.fail(libc::EIO);
            return;
        }
        let key_lba = lba + u64::from(done);
        let extent = Extent::key(key_lba, space.blocks, pos, crc, true);
        let Ok(seq) = cache.insert_ordered(lane, &extent) else {
            drop(lane_ref);
            io.fail(libc::EINVAL);
            return;
        };
        let key = cache.key_for(seq, key_lba, space.blocks, &space, crc, true);
        if let Err(e) = cache.append_key(lane, key) {
            tracing::error!(cache = %cache.name(), "appending a key failed: {e}");
            drop(lane_ref);
            io.fail(libc::EIO);
            return;
        }
        done += space.blocks;
    }
    drop(lane_ref);
    cache
        .stats()
        .bytes_written_cache
        .add(u64::from(total) * u64::from(bs));
    if io.flags().fua || cache.durable() {
        lane_ch.awaiting_seal.borrow_mut().push_back(io);
    } else {
        io.complete_ok();
    }
}

/// Unmap and write_zeroes: a tombstone key in the log (so writeback sends it to the origin after
/// any older dirty data for the range) and a ZERO extent in the index (so the range reads as zeroes
/// at once).
fn zero_range(lane_ch: &LaneChannel, io: BdevIo) {
    let cache = &lane_ch.cache;
    let mut lane_ref = lane_ch.lane.borrow_mut();
    let Some(lane) = lane_ref.as_mut() else {
        drop(lane_ref);
        io.fail(libc::EBUSY);
        return;
    };
    let (lba, total) = (io.offset_blocks(), io.num_blocks());
    let mut done = 0u64;
    while done < total {
        let blocks = (total - done).min(u64::from(u32::MAX)) as u32;
        // Writeback drops written-back ZERO entries only when no newer tombstone can be in the
        // index; the lock makes "seq taken, ZERO inserted, recorded" one step for it.
        let unmap_guard = cache.wb().unmap_guard();
        let Ok(seq) = cache.insert_ordered(lane, &Extent::zero(lba + done, blocks, true)) else {
            drop(unmap_guard);
            drop(lane_ref);
            io.fail(libc::EINVAL);
            return;
        };
        cache.wb().note_unmap(seq);
        drop(unmap_guard);
        let key = crate::format::Key {
            seq,
            origin_off: lba + done,
            len: blocks,
            flags: crate::format::Key::UNMAP | crate::format::Key::DIRTY,
            ..Default::default()
        };
        if let Err(e) = cache.append_key(lane, key) {
            tracing::error!(cache = %cache.name(), "appending a key failed: {e}");
            drop(lane_ref);
            io.fail(libc::EIO);
            return;
        }
        done += u64::from(blocks);
    }
    drop(lane_ref);
    if cache.durable() {
        lane_ch.awaiting_seal.borrow_mut().push_back(io);
    } else {
        io.complete_ok();
    }
}

/// A deferred write gets another try (from the lane's poller).
pub(crate) fn resume_deferred(lane_ch: &LaneChannel, io: BdevIo) {
    write_continue(lane_ch, io);
}

/// Serves what the index has, then the first miss from the origin; the origin read's completion
/// caches the data and comes back here for the rest.
fn read_continue(ch: &CacheBdevChannel, mut io: BdevIo) {
    let cache = &ch.cache;
    let bs = u64::from(cache.block_size());
    let lba = io.offset_blocks();
    let total = io.num_blocks();
    let word = io.driver_ctx()[DONE];
    let done = word & DONE_MASK;
    let mut miss: Option<(u64, u32)> = None;
    let mut hits = 0u64;
    let mut err = 0i32;
    let mut bad_clean: Option<Extent> = None;
    // Taken before the lookup: a write that lands after it changes the version, so the miss read
    // that follows cannot cache origin data over it (a write before it shows as a hit instead).
    let version = cache
        .index()
        .range_version(lba + done, (total - done) as u32);
    let iovs: &[IoVec] = io.iovs();
    cache
        .index()
        .lookup(lba + done, (total - done) as u32, |piece| {
            if miss.is_some() || err != 0 {
                return;
            }
            match piece {
                Piece::Miss { lba: m, len } => miss = Some((m, len)),
                Piece::Hit(e) if e.zero => {
                    // Unmapped or zeroed here, not yet on the origin: reads as zeroes.
                    let off = ((e.lba - lba) * bs) as usize;
                    iov::for_each_range_mut(iovs, off, (u64::from(e.len) * bs) as usize, |dst| {
                        dst.fill(0)
                    });
                    hits += u64::from(e.len);
                }
                Piece::Hit(e) => {
                    if let Err(errno) = copy_hit(cache, &e, iovs, ((e.lba - lba) * bs) as usize) {
                        err = errno;
                        if errno == CLEAN_CRC_ERROR {
                            bad_clean = Some(e);
                        }
                        return;
                    }
                    hits += u64::from(e.len);
                }
            }
        });
    cache.stats().bytes_read_cache.add(hits * bs);
    if let Some(e) = bad_clean {
        // Drop the damaged clean copy; the next lookup sees a miss and reads the origin.
        let end = e.orig_pos + u64::from(e.orig_len);
        cache
            .index()
            .evict(e.lba, e.len, e.orig_pos, end, |_, _| {});
        io.driver_ctx()[DONE] = word;
        read_continue(ch, io);
        return;
    }
    if err != 0 {
        io.fail(err);
        return;
    }
    let seen = (word & (SAW_HIT | SAW_MISS)) | if hits > 0 { SAW_HIT } else { 0 };
    let Some((m, len)) = miss else {
        let counter = match (seen & SAW_HIT != 0, seen & SAW_MISS != 0) {
            (true, true) => &cache.stats().read_partial_hits,
            (false, true) => &cache.stats().read_misses,
            _ => &cache.stats().read_hits,
        };
        counter.add(1);
        io.complete_ok();
        return;
    };
    let ctx = io.driver_ctx();
    ctx[DONE] = (m + u64::from(len) - lba) | seen | SAW_MISS | (word & NO_PROMOTE);
    ctx[MISS_LBA] = m;
    ctx[MISS_LEN] = u64::from(len);
    ctx[MISS_VERSION] = version;
    ch.to_origin();
    read_miss(ch, io);
}

/// Reads the miss recorded in `io`'s driver_ctx from the origin, straight into the caller's
/// buffer; with no bdev_io free on the origin it waits there and tries again.
fn read_miss(ch: &CacheBdevChannel, io: BdevIo) {
    let d = *io.driver_ctx_ref();
    let (m, len) = (d[MISS_LBA], d[MISS_LEN]);
    let bs = u64::from(ch.cache.block_size());
    // A scratch iovec list per miss.
    let mut sub = [empty_iov(); 16];
    let Some(n) = iov::slice_to(
        io.iovs(),
        ((m - io.offset_blocks()) * bs) as usize,
        (len * bs) as usize,
        &mut sub,
    ) else {
        ch.back_from_origin();
        io.fail(libc::EINVAL);
        return;
    };
    if let Err(e) = ch
        .origin
        .read(&sub[..n], m, len, origin_read_done, IoCtx::Io(io))
    {
        ch.refused(e, retry_read_miss);
    }
}

fn retry_read_miss(ctx: IoCtx) {
    if let Some((io, ch)) = resumed(ctx) {
        read_miss(&ch, io);
    }
}

fn empty_iov() -> IoVec {
    // SAFETY: a zero-length vector names no memory.
    unsafe { IoVec::new(std::ptr::NonNull::dangling().as_ptr(), 0) }
}

/// `copy_hit`'s answer for clean data that fails its crc: the origin has a good copy.
const CLEAN_CRC_ERROR: i32 = -1;

/// Copies a hit out of pmem into the caller's buffer at byte `dst_off`. With data_crc, a hit that
/// is its key's whole data is checked in the caller's buffer once copied (the bytes returned are
/// the bytes checked, read once); a piece of a larger key is checked in place first.
fn copy_hit(cache: &Cache, e: &Extent, iovs: &[IoVec], dst_off: usize) -> Result<(), i32> {
    let whole = e.pos == e.orig_pos && e.len == e.orig_len;
    if cache.data_crc() && !whole && !cache.crc_ok(e) {
        return Err(crc_failure(cache, e));
    }
    let mut at = cache.pos_offset(e.pos);
    let bytes = e.len as usize * cache.block_size() as usize;
    let mut failed = false;
    let mut crc = 0u32;
    iov::for_each_range_mut(iovs, dst_off, bytes, |dst| {
        failed |= cache.pmem().read(at, dst).is_err();
        if cache.data_crc() {
            crc = crc32c::crc32c_append(crc, dst);
        }
        at += dst.len() as u64;
    });
    if failed {
        return Err(libc::EIO);
    }
    if cache.data_crc() && whole && crc != e.crc {
        return Err(crc_failure(cache, e));
    }
    Ok(())
}

/// Counts and logs cached data that fails its crc; the error for the read.
fn crc_failure(cache: &Cache, e: &Extent) -> i32 {
    cache.stats().crc_errors.add(1);
    tracing::error!(cache = %cache.name(), lba = e.lba, blocks = e.len, dirty = e.dirty, "cached data fails its crc");
    // Dirty data has no other copy: fail rather than return wrong bytes.
    if e.dirty { libc::EIO } else { CLEAN_CRC_ERROR }
}

fn origin_read_done(child: BdevIo, ok: bool, ctx: IoCtx) {
    let Some((mut io, ch)) = origin_done(child, ok, ctx) else {
        return;
    };
    let d = *io.driver_ctx();
    let (m, len, version) = (d[MISS_LBA], d[MISS_LEN] as u32, d[MISS_VERSION]);
    ch.cache
        .stats()
        .bytes_read_origin
        .add(u64::from(len) * u64::from(ch.cache.block_size()));
    // Only data the origin holds durably is cached as clean: a copy of what a write around the
    // cache left in the origin's volatile cache could outlive it after a power cut.
    if d[DONE] & NO_PROMOTE == 0
        && ch.cache.origin_flushed()
        && ch
            .cache
            .promotion()
            .admit(m, ch.cache.promotion_threshold())
    {
        let off = ((m - io.offset_blocks()) * u64::from(ch.cache.block_size())) as usize;
        cache_copy(&ch.lane, io.iovs(), off, m, len, Fill::IfUnchanged(version));
    }
    read_continue(&ch, io);
}

/// How [`cache_copy`] maps clean data it copied into the cache.
#[derive(Clone, Copy)]
enum Fill {
    /// A read miss: only blocks still unmapped, and only if the range did not change since
    /// `version` (taken before the origin read).
    IfUnchanged(u64),
    /// Writethrough: the newest data for the range, over whatever is cached.
    Newest,
}

/// Copies `len` blocks at byte `src_off` of `iovs` into the lane as clean data for origin
/// blocks from `lba`, and logs their keys. False when not all of it was cached (no space, or a
/// fill that gave way).
fn cache_copy(
    lane_ch: &LaneChannel,
    iovs: &[IoVec],
    src_off: usize,
    lba: u64,
    len: u32,
    how: Fill,
) -> bool {
    let cache = &lane_ch.cache;
    let bs = cache.block_size();
    let mut lane_ref = lane_ch.lane.borrow_mut();
    let Some(lane) = lane_ref.as_mut() else {
        return false;
    };
    let mut done = 0u32;
    let mut all = true;
    while done < len {
        let Some(space) = lane.alloc_data(
            cache.segments(),
            cache.layout(),
            (len - done).min(MAX_KEY_BLOCKS),
        ) else {
            return false;
        };
        let pos = crate::segments::cache_pos(cache.layout(), space.seg, space.off);
        let mut at = cache.pos_offset(pos);
        let mut crc = 0u32;
        let off = src_off + done as usize * bs as usize;
        iov::for_each_range(iovs, off, (space.blocks * bs) as usize, |src| {
            if cache.data_crc() {
                crc = crc32c::crc32c_append(crc, src);
            }
            let _ = cache.pmem().write_nt(at, src);
            at += src.len() as u64;
        });
        let key_lba = lba + u64::from(done);
        let extent = Extent::key(key_lba, space.blocks, pos, crc, false);
        let seq = match how {
            Fill::IfUnchanged(version) => {
                let seq = cache.take_seq(lane);
                let filled = cache.index().fill(&extent, version).is_ok_and(|n| n > 0);
                filled.then_some(seq)
            }
            Fill::Newest => cache.insert_ordered(lane, &extent).ok(),
        };
        let Some(seq) = seq else {
            // No key names the space: give its reference back (GC could never drop it).
            if cache.segments().put_ref(space.seg) {
                cache.segments().retire(space.seg);
            }
            all = false;
            done += space.blocks;
            continue;
        };
        let key = cache.key_for(seq, key_lba, space.blocks, &space, crc, false);
        if let Err(e) = cache.append_key(lane, key) {
            tracing::error!(cache = %cache.name(), "appending a key failed: {e}");
            return false;
        }
        let counter = match how {
            Fill::IfUnchanged(_) => &cache.stats().bytes_promoted,
            Fill::Newest => &cache.stats().bytes_written_cache,
        };
        counter.add(u64::from(space.blocks) * u64::from(bs));
        done += space.blocks;
    }
    all
}

/// FLUSH: every thread seals its open key-set, then the flush completes on this thread.
fn flush(ch: &CacheBdevChannel, io: BdevIo) {
    let cache: Arc<Cache> = ch.cache.clone();
    // The flush I/O cannot travel between threads; it waits in this thread's lane until the walk
    // over every thread's lane comes back.
    ch.lane.awaiting_flush.borrow_mut().push_back(io);
    let lanes = ch.lanes.clone();
    ch.lanes.for_each_channel(
        |lane: &poller::IoChannel<LaneChannel>| {
            if let Err(e) = lane.seal() {
                tracing::error!(cache = %lane.cache.name(), "sealing for FLUSH failed: {e}");
            }
        },
        move || {
            let Some(t) = Thread::current() else { return };
            let Some(lane) = lanes.existing_channel(&t) else {
                return;
            };
            if let Some(io) = lane.awaiting_flush.borrow_mut().pop_front() {
                if cache.pmem().sync().is_err() {
                    io.fail(libc::EIO);
                } else {
                    flush_origin(io);
                }
            }
        },
    );
}

/// The second half of a FLUSH: writes sent around the cache are flushed on the origin (a
/// FLUSH covers every completed write), unless an origin flush already covers them.
fn flush_origin(mut io: BdevIo) {
    let Some(ch) = io.module_channel::<CacheBdevChannel>() else {
        io.fail(libc::ENODEV);
        return;
    };
    let at = ch.cache.around();
    if ch.cache.origin_flushed() || !ch.origin.io_type_supported(IoType::Flush) {
        io.complete_ok();
        return;
    }
    io.driver_ctx()[MISS_LBA] = at;
    ch.to_origin();
    submit_origin_flush(&ch, io);
}

fn submit_origin_flush(ch: &CacheBdevChannel, io: BdevIo) {
    let blocks = ch.origin.num_blocks();
    if let Err(e) = ch.origin.flush(0, blocks, origin_flush_done, IoCtx::Io(io)) {
        ch.refused(e, retry_flush_origin);
    }
}

fn retry_flush_origin(ctx: IoCtx) {
    if let Some((io, ch)) = resumed(ctx) {
        submit_origin_flush(&ch, io);
    }
}

fn origin_flush_done(child: BdevIo, ok: bool, ctx: IoCtx) {
    let Some((io, ch)) = origin_done(child, ok, ctx) else {
        return;
    };
    ch.cache.note_origin_flushed(io.driver_ctx_ref()[MISS_LBA]);
    io.complete_ok();
}
