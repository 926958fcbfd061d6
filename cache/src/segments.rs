//! Segment allocation: the free list, each segment's generation and use, reference counts, and
//! retirement. A segment is allocated to a lane as a data segment or a key segment; it is freed
//! when nothing refers to it any more, but only reused after a grace period (every thread has
//! passed a poll iteration), so a reader that found its data in the index can finish copying
//! without a lock. Freeing bumps the generation on media first, which makes every key still naming
//! the old generation stale for replay.
//!
//! Allocation happens once per segment filled (16 MiB of writes by default), so one short mutex
//! is enough; it is never held across I/O.

use crate::format::{self, FormatError, Layout};
use pmem::Pmem;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Free segments a lane's data allocation leaves for the key logs: a cache full of data can
/// still seal key-sets (so writeback and GC can make progress and free space).
pub const KEY_RESERVE: usize = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegUse {
    Free,
    Data {
        lane: u16,
    },
    Key {
        lane: u16,
    },
    /// Nothing refers to it; waiting for the grace period before its generation moves on.
    Retiring,
}

struct State {
    gens: Vec<u32>,
    uses: Vec<SegUse>,
    /// Data segments: live keys naming data in it, plus one while it is a lane's data head.
    refs: Vec<u32>,
    free: VecDeque<u32>,
    used: u32,
}

pub struct SegmentTable {
    state: Mutex<State>,
    /// Segments freed so far (deferred writes retry when it moves).
    freed: AtomicU64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentCounts {
    pub total: u32,
    pub used: u32,
    pub data: u32,
    pub key: u32,
    pub retiring: u32,
}

impl SegmentTable {
    /// All segments free, with the generations read from (or written at) format.
    pub fn new(gens: Vec<u32>) -> SegmentTable {
        let n = gens.len();
        SegmentTable {
            state: Mutex::new(State {
                uses: vec![SegUse::Free; n],
                refs: vec![0; n],
                free: (0..n as u32).collect(),
                gens,
                used: 0,
            }),
            freed: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn generation(&self, seg: u32) -> Option<u32> {
        self.lock().gens.get(seg as usize).copied()
    }

    pub fn use_of(&self, seg: u32) -> Option<SegUse> {
        self.lock().uses.get(seg as usize).copied()
    }

    /// Takes a free segment for `use_`; its current generation comes with it. None when full.
    pub fn alloc(&self, use_: SegUse) -> Option<(u32, u32)> {
        self.alloc_keeping(use_, 0)
    }

    /// [`Self::alloc`], but only while more than `keep` segments are free.
    pub fn alloc_keeping(&self, use_: SegUse, keep: usize) -> Option<(u32, u32)> {
        let mut st = self.lock();
        if st.free.len() <= keep {
            return None;
        }
        let seg = st.free.pop_front()?;
        st.uses[seg as usize] = use_;
        st.refs[seg as usize] = u32::from(matches!(use_, SegUse::Data { .. }));
        st.used += 1;
        Some((seg, st.gens[seg as usize]))
    }

    /// Replay: `seg` is in use as found on media (removed from the free list once).
    pub fn mark_used(&self, seg: u32, use_: SegUse) -> Result<(), FormatError> {
        let mut st = self.lock();
        let cur = *st.uses.get(seg as usize).ok_or_else(|| bad_seg(seg))?;
        if cur == use_ {
            return Ok(());
        }
        if cur != SegUse::Free {
            return Err(FormatError::corrupt(
                "segment use",
                format!("segment {seg} used as {cur:?} and as {use_:?}"),
            ));
        }
        st.free.retain(|s| *s != seg);
        st.uses[seg as usize] = use_;
        st.used += 1;
        Ok(())
    }

    /// One more key (or the data head) refers to data in `seg`.
    pub fn get_ref(&self, seg: u32) {
        let mut st = self.lock();
        if let Some(r) = st.refs.get_mut(seg as usize) {
            *r += 1;
        }
    }

    /// One reference fewer; true when it was the last (the caller retires the segment).
    pub fn put_ref(&self, seg: u32) -> bool {
        let mut st = self.lock();
        match st.refs.get_mut(seg as usize) {
            Some(r) if *r > 0 => {
                *r -= 1;
                *r == 0
            }
            _ => false,
        }
    }

    pub fn refs(&self, seg: u32) -> u32 {
        self.lock().refs.get(seg as usize).copied().unwrap_or(0)
    }

    /// Nothing refers to `seg` any more: it waits for the grace period.
    pub fn retire(&self, seg: u32) {
        let mut st = self.lock();
        if let Some(u) = st.uses.get_mut(seg as usize) {
            *u = SegUse::Retiring;
        }
    }

    /// After the grace period: moves each retired segment's generation on (persisted) and frees it.
    pub fn free_retired(
        &self,
        pmem: &dyn Pmem,
        layout: &Layout,
        segs: &[u32],
    ) -> Result<(), FormatError> {
        let mut st = self.lock();
        for &seg in segs {
            let i = seg as usize;
            if st.uses.get(i) != Some(&SegUse::Retiring) {
                continue;
            }
            // Wrapping would make keys of a long-gone generation current again: refuse instead.
            let next = st.gens[i].checked_add(1).ok_or_else(|| {
                FormatError::corrupt(
                    "generation",
                    format!("segment {seg} ran out of generations"),
                )
            })?;
            format::write_gen(pmem, layout, seg, next)?;
            st.gens[i] = next;
            st.uses[i] = SegUse::Free;
            st.refs[i] = 0;
            st.free.push_back(seg);
            st.used -= 1;
            self.freed.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Segments in use (data, key or retiring).
    pub fn used(&self) -> u32 {
        self.lock().used
    }

    /// Segments waiting for their grace period.
    pub fn retiring(&self) -> Vec<u32> {
        let st = self.lock();
        (0u32..)
            .zip(&st.uses)
            .filter(|(_, u)| **u == SegUse::Retiring)
            .map(|(s, _)| s)
            .collect()
    }

    /// Segments freed since the table was made.
    pub fn freed(&self) -> u64 {
        self.freed.load(Ordering::SeqCst)
    }

    pub fn counts(&self) -> SegmentCounts {
        let st = self.lock();
        let mut c = SegmentCounts {
            total: st.uses.len() as u32,
            used: st.used,
            ..Default::default()
        };
        for u in &st.uses {
            match u {
                SegUse::Data { .. } => c.data += 1,
                SegUse::Key { .. } => c.key += 1,
                SegUse::Retiring => c.retiring += 1,
                SegUse::Free => {}
            }
        }
        c
    }
}

fn bad_seg(seg: u32) -> FormatError {
    FormatError::corrupt("segment number", format!("segment {seg} is out of range"))
}

/// The index addresses cached data by cache block: blocks counted from the start of segment 0.
pub fn cache_pos(layout: &Layout, seg: u32, data_off: u32) -> u64 {
    (u64::from(seg) * u64::from(layout.segment_size()) + u64::from(data_off))
        / u64::from(layout.block_size())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pmem::CrashPmem;

    fn table() -> (CrashPmem, Layout, SegmentTable) {
        let layout = Layout::new(16 << 20, 1 << 20, 4096).unwrap();
        let pmem = CrashPmem::new(16 << 20);
        let gens = vec![format::GEN_FIRST; layout.segment_count() as usize];
        for seg in 0..layout.segment_count() {
            format::write_gen(&pmem, &layout, seg, format::GEN_FIRST).unwrap();
        }
        (pmem, layout, SegmentTable::new(gens))
    }

    #[test]
    fn a_segment_is_reused_only_after_retirement_with_a_new_generation() {
        let (pmem, layout, t) = table();
        let n = layout.segment_count();
        let (seg, gen0) = t.alloc(SegUse::Data { lane: 0 }).unwrap();
        assert_eq!(t.refs(seg), 1, "the data head holds it");
        t.get_ref(seg);
        assert!(!t.put_ref(seg));
        assert!(t.put_ref(seg), "the last reference");
        t.retire(seg);
        // Everything else can be allocated, but not the retiring segment.
        let others: Vec<u32> = (1..n)
            .map(|_| t.alloc(SegUse::Key { lane: 1 }).unwrap().0)
            .collect();
        assert!(!others.contains(&seg));
        assert!(t.alloc(SegUse::Key { lane: 1 }).is_none(), "full");
        t.free_retired(&pmem, &layout, &[seg]).unwrap();
        assert_eq!(t.generation(seg), Some(gen0 + 1));
        assert_eq!(
            format::read_gen(&pmem, &layout, seg).unwrap(),
            gen0 + 1,
            "persisted"
        );
        // The persisted generation survives any crash.
        let img = pmem.crash_image_none();
        let after = CrashPmem::from_image(img);
        assert_eq!(format::read_gen(&after, &layout, seg).unwrap(), gen0 + 1);
        assert_eq!(t.alloc(SegUse::Data { lane: 2 }), Some((seg, gen0 + 1)));
        assert_eq!(t.counts().used, n);
    }

    #[test]
    fn replay_marks_are_checked() {
        let (_pmem, _layout, t) = table();
        t.mark_used(3, SegUse::Key { lane: 0 }).unwrap();
        t.mark_used(3, SegUse::Key { lane: 0 }).unwrap();
        assert!(
            t.mark_used(3, SegUse::Data { lane: 0 }).is_err(),
            "one segment, two uses"
        );
        assert!(t.mark_used(10_000, SegUse::Data { lane: 0 }).is_err());
        let c = t.counts();
        assert_eq!((c.used, c.key), (1, 1));
        assert!((0..c.total - 1).all(|_| {
            t.alloc(SegUse::Data { lane: 0 })
                .is_some_and(|(s, _)| s != 3)
        }));
    }
}
