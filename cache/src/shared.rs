//! What the background engines (writeback, GC) share with the data path, the RPCs and shutdown:
//! flags, requests and counters, each an atomic or a short lock.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Keys between two GC cut requests: each costs every writing lane one extra (smaller) key-set.
pub const CUT_EVERY: u64 = 1024;

/// What the writeback engine shares with the data path, the RPCs and shutdown.
pub struct WritebackShared {
    stop: AtomicBool,
    /// `bdev_pcache_flush_start`'s target sequence (0: no flush asked).
    flush_target: AtomicU64,
    /// Tick of the latest foreground I/O (stored at most every [`NOTE_IO_EVERY_US`]).
    last_io_tick: AtomicU64,
    /// The highest `seq` of any tombstone put in the index (see the module doc).
    max_unmap_seq: AtomicU64,
    unmap_lock: Mutex<()>,
    /// Writeback bytes per second, over the latest second or more.
    rate: AtomicU64,
    /// A for_each_channel seal walk, asked by the engine, has not come back yet.
    seal_walk: Arc<AtomicBool>,
    /// The engine's step as it last published it (`Engine::publish`), for stall reports.
    state: AtomicU64,
}

const NOTE_IO_EVERY_US: u64 = 1_000;

impl WritebackShared {
    /// `last_seq`: the highest `seq` replay found (tombstones up to it may be in the index).
    pub fn new(last_seq: u64) -> WritebackShared {
        WritebackShared {
            stop: AtomicBool::new(false),
            flush_target: AtomicU64::new(0),
            last_io_tick: AtomicU64::new(0),
            max_unmap_seq: AtomicU64::new(last_seq),
            unmap_lock: Mutex::new(()),
            rate: AtomicU64::new(0),
            seal_walk: Arc::new(AtomicBool::new(false)),
            state: AtomicU64::new(0),
        }
    }

    /// A foreground I/O at tick `now` (cheap: a shared store only once a millisecond).
    #[inline]
    pub fn note_io(&self, now: u64) {
        let last = self.last_io_tick.load(Ordering::Relaxed);
        if now > last && now - last >= note_io_ticks() {
            self.last_io_tick.store(now, Ordering::Relaxed);
        }
    }

    pub fn unmap_guard(&self) -> MutexGuard<'_, ()> {
        self.unmap_lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A tombstone with this `seq` is in the index (called under [`Self::unmap_guard`]).
    pub fn note_unmap(&self, seq: u64) {
        self.max_unmap_seq.fetch_max(seq, Ordering::SeqCst);
    }

    /// Asks the engine to write back every key up to `target` now, ignoring the dirty target.
    pub fn request_flush(&self, target: u64) {
        self.flush_target.fetch_max(target, Ordering::SeqCst);
    }

    /// The flush target still to reach, if a flush is asked.
    pub fn flush_target(&self) -> Option<u64> {
        match self.flush_target.load(Ordering::SeqCst) {
            0 => None,
            t => Some(t),
        }
    }

    pub fn rate(&self) -> u64 {
        self.rate.load(Ordering::Relaxed)
    }

    /// Shutdown: the engine submits nothing more, persists nothing more, and unregisters once
    /// its I/O in flight has completed.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Shutdown has begun (GC stops with writeback).
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// The engine starts at `now`: foreground I/O counts from here.
    pub fn set_last_io(&self, now: u64) {
        self.last_io_tick.store(now, Ordering::Relaxed);
    }

    /// Tick of the latest foreground I/O noted.
    pub fn last_io(&self) -> u64 {
        self.last_io_tick.load(Ordering::Relaxed)
    }

    /// The highest `seq` of a tombstone put in the index (read under [`Self::unmap_guard`]).
    pub fn max_unmap_seq(&self) -> u64 {
        self.max_unmap_seq.load(Ordering::SeqCst)
    }

    /// The flush asked up to `target` is done (unless a newer one was asked meanwhile).
    pub fn flush_reached(&self, target: u64) {
        let _ = self
            .flush_target
            .compare_exchange(target, 0, Ordering::SeqCst, Ordering::SeqCst);
    }

    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.rate.store(bytes_per_sec, Ordering::Relaxed);
    }

    /// Starts a seal walk unless one is in flight: the flag to clear when it comes back.
    pub fn begin_seal_walk(&self) -> Option<Arc<AtomicBool>> {
        (!self.seal_walk.swap(true, Ordering::SeqCst)).then(|| self.seal_walk.clone())
    }

    /// The engine's step, packed by the engine (`writeback::describe` reads it).
    pub fn state(&self) -> u64 {
        self.state.load(Ordering::Relaxed)
    }

    pub fn set_state(&self, state: u64) {
        self.state.store(state, Ordering::Relaxed);
    }
}

fn note_io_ticks() -> u64 {
    static T: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *T.get_or_init(|| poller::time::us_to_ticks(NOTE_IO_EVERY_US))
}

/// What GC shares with the data path and the RPCs.
pub struct GcShared {
    /// Writes waiting on a lane's defer list right now.
    deferred: AtomicU64,
    gc_percent: AtomicU32,
    /// GC's cut request (0: none): lanes seal their open key-set before appending the first key
    /// at or above it, so that with several lanes writing all the time a cut still appears.
    cut_request: AtomicU64,
    /// A grace-period walk is in flight.
    walk: AtomicBool,
}

impl GcShared {
    pub fn new(gc_percent: u32) -> GcShared {
        GcShared {
            deferred: AtomicU64::new(0),
            gc_percent: AtomicU32::new(gc_percent),
            cut_request: AtomicU64::new(0),
            walk: AtomicBool::new(false),
        }
    }

    /// Writes waiting for space.
    pub fn deferred(&self) -> u64 {
        self.deferred.load(Ordering::Relaxed)
    }

    /// A write went onto a defer list.
    pub fn note_deferred(&self) {
        self.deferred.fetch_add(1, Ordering::Relaxed);
    }

    /// A write left a defer list (to be retried).
    pub fn note_resumed(&self) {
        let _ = self
            .deferred
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| d.checked_sub(1));
    }

    /// Where GC asks the lanes to split their key-sets (0: nowhere).
    pub fn cut_request(&self) -> u64 {
        self.cut_request.load(Ordering::Relaxed)
    }

    /// Asks for a cut at `next_seq` (the next `seq` to be taken) once the last request is
    /// [`CUT_EVERY`] keys old. Every key-set sealed so far lies below it and the lanes split
    /// their open ones there, so the write history gets a cut every [`CUT_EVERY`] keys however
    /// many lanes write at once; GC reclaims up to the newest one writeback has passed.
    pub fn request_cut(&self, next_seq: u64) {
        if next_seq.saturating_sub(self.cut_request()) >= CUT_EVERY {
            self.cut_request.store(next_seq, Ordering::Relaxed);
        }
    }

    pub fn gc_percent(&self) -> u32 {
        self.gc_percent.load(Ordering::Relaxed)
    }

    pub fn set_gc_percent(&self, p: u32) {
        self.gc_percent.store(p, Ordering::Relaxed);
    }

    /// A grace-period walk is in flight.
    pub fn walking(&self) -> bool {
        self.walk.load(Ordering::SeqCst)
    }

    pub fn begin_walk(&self) {
        self.walk.store(true, Ordering::SeqCst);
    }

    /// The grace-period walk came back.
    pub fn end_walk(&self) {
        self.walk.store(false, Ordering::SeqCst);
    }
}
