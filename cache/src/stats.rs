//! The counters of `bdev_pcache_get_stats`: one slot per thread on its own cache line, summed
//! when read.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Declares `Stats` from one list of counters, with `Stats::all` over every one of them (so
/// `reset` cannot miss a counter added later).
macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// Counters for `bdev_pcache_get_stats` (relaxed: each is its own fact).
        #[derive(Default)]
        pub struct Stats {
            $($(#[$doc])* pub $name: Counter,)*
        }

        impl Stats {
            fn all(&self) -> impl Iterator<Item = &Counter> {
                [$(&self.$name),*].into_iter()
            }
        }
    };
}

counters! {
    read_hits,
    read_misses,
    read_partial_hits,
    bytes_read_cache,
    bytes_read_origin,
    bytes_written_cache,
    bytes_written_origin,
    bytes_promoted,
    crc_errors,
    origin_errors,
    deferred_writes,
    keysets_sealed,
    /// Bytes written (or zeroed) on the origin by writeback, batches committed, keys written.
    writeback_bytes,
    writeback_batches,
    writeback_keys,
    /// GC rounds that dropped something, keys dropped, bytes evicted from the index, bytes
    /// given a second chance, segments freed after their grace period.
    gc_runs,
    gc_keys,
    gc_evicted_bytes,
    gc_second_chance_bytes,
    gc_segments_freed,
    /// I/Os of sequential streams past the cutoff (they bypassed the cache).
    sequential_bypassed,
    /// Cached bytes dropped because a write or unmap went to the origin around the cache.
    bytes_invalidated,
    /// Times an origin I/O (data path or writeback) waited for a free bdev_io and resumed.
    origin_io_waits,
}

impl Stats {
    /// `bdev_pcache_reset_stats`: every counter back to 0 (the state — dirty bytes, occupancy,
    /// log positions — is not a counter and stays).
    pub fn reset(&self) {
        self.all().for_each(Counter::reset);
    }
}

/// Slots per counter: each thread adds into its own, on its own cache line, so reactors on
/// different cores never bounce a counter's line between them; a read sums the slots.
const COUNTER_SLOTS: usize = 8;

#[repr(align(64))]
#[derive(Default)]
struct Slot(AtomicU64);

/// A statistics counter the data path bumps on every I/O.
#[derive(Default)]
pub struct Counter([Slot; COUNTER_SLOTS]);

thread_local! {
    /// This thread's slot in every counter (handed out in turn at a thread's first add).
    static SLOT: usize = {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed) % COUNTER_SLOTS
    };
}

impl Counter {
    pub fn add(&self, n: u64) {
        let slot = SLOT.with(|s| *s);
        self.0[slot].0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0
            .iter()
            .fold(0u64, |a, s| a.wrapping_add(s.0.load(Ordering::Relaxed)))
    }

    fn reset(&self) {
        for s in &self.0 {
            s.0.store(0, Ordering::Relaxed);
        }
    }
}
