//! What gets into the cache on a read miss or a write outside writeback: the promotion filter
//! (cache a range only after n misses on it) and the sequential-stream detector (streams longer
//! than the cutoff bypass the cache, as bcache's sequential_cutoff).

use std::cell::Cell;
use std::sync::atomic::{AtomicU8, Ordering};

/// Miss counters, one per bucket of [`GRANULE_BLOCKS`] blocks hashed into [`BUCKETS`] slots.
/// Collisions only make a range promote a little early: a count is a hint, never a promise.
pub struct PromotionFilter {
    misses: Box<[AtomicU8]>,
}

const BUCKETS: usize = 1 << 14;
/// Blocks that share a counter (32 KiB of 4 KiB blocks).
const GRANULE_BLOCKS: u64 = 8;

impl Default for PromotionFilter {
    fn default() -> Self {
        PromotionFilter {
            misses: (0..BUCKETS).map(|_| AtomicU8::new(0)).collect(),
        }
    }
}

impl PromotionFilter {
    /// Counts a miss on the range starting at `lba`; true when it is to be cached now
    /// (threshold 0 or 1: always; else on its `threshold`-th miss, which restarts the count).
    pub fn admit(&self, lba: u64, threshold: u32) -> bool {
        if threshold <= 1 {
            return true;
        }
        let granule = lba / GRANULE_BLOCKS;
        // Fibonacci hashing spreads neighbouring granules over the table.
        let slot = (granule.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 50) as usize % BUCKETS;
        let c = &self.misses[slot];
        let seen = u32::from(c.fetch_add(1, Ordering::Relaxed).saturating_add(1));
        if seen >= threshold.min(255) {
            c.store(0, Ordering::Relaxed);
            true
        } else {
            false
        }
    }
}

/// The sequential streams one channel has seen lately: where each ends and how many bytes it
/// has run. Owned by the channel's thread.
#[derive(Default)]
pub struct Streams {
    slots: [Cell<(u64, u64)>; STREAMS],
    next: Cell<usize>,
}

const STREAMS: usize = 8;

impl Streams {
    /// Notes an I/O of `blocks` blocks (`bytes` bytes) at `lba`; returns the bytes of the stream
    /// it belongs to, itself included (a new stream when it continues none).
    pub fn note(&self, lba: u64, blocks: u64, bytes: u64) -> u64 {
        let end = lba.saturating_add(blocks);
        for s in &self.slots {
            let (s_end, run) = s.get();
            if s_end == lba && run > 0 {
                let run = run.saturating_add(bytes);
                s.set((end, run));
                return run;
            }
        }
        let i = self.next.get();
        self.slots[i].set((end, bytes));
        self.next.set((i + 1) % STREAMS);
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_is_admitted_on_its_nth_miss() {
        let f = PromotionFilter::default();
        assert!(f.admit(100, 0) && f.admit(100, 1));
        assert!(!f.admit(800, 3));
        assert!(!f.admit(801, 3), "same granule");
        assert!(f.admit(802, 3));
        assert!(!f.admit(800, 3), "the count restarts");
    }

    #[test]
    fn streams_grow_while_they_continue_and_interleave() {
        let s = Streams::default();
        assert_eq!(s.note(0, 8, 32768), 32768);
        assert_eq!(s.note(1000, 1, 4096), 4096);
        assert_eq!(s.note(8, 8, 32768), 65536);
        assert_eq!(s.note(1001, 1, 4096), 8192);
        assert_eq!(s.note(5, 1, 4096), 4096, "a jump starts a new stream");
    }
}
