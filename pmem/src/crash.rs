//! `CrashPmem`: the crash-simulating [`Pmem`] double that crash-safety tests run against.
//!
//! Every 8-byte word not yet durable is tracked: *pending* after an ordinary store,
//! *flushed* after a flush (or a non-temporal store) until the next fence, which copies the
//! value it had when flushed into the persisted image. A simulated power cut keeps the
//! persisted image plus an arbitrary subset of the in-flight words, each whole (8-byte
//! failure atomicity, as on real pmem): never a torn or invented value. Simplification: a
//! fence from any thread commits every flushed word (a real sfence orders only its CPU's).

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rand::RngExt;

use crate::device::check_range;
use crate::{Pmem, PmemError, PmemKind};

const WORD: usize = 8;
type Word = [u8; WORD];
type FenceHook = dyn Fn(u64) + Send + Sync;

pub struct CrashPmem {
    len: u64,
    state: Mutex<State>,
    // Own lock, so the hook runs without `state` held and may take crash images.
    hook: Mutex<Option<Arc<FenceHook>>>,
}

struct State {
    /// What reads see.
    volatile: Vec<u8>,
    /// What survives any power cut.
    persisted: Vec<u8>,
    /// Words stored with ordinary stores and not flushed since.
    pending: WordSet,
    /// Flushed words with their value at flush time, oldest first; the next fence commits them.
    flushed: Vec<(usize, Word)>,
    fences: u64,
}

impl CrashPmem {
    /// A zero-filled device of `len` bytes.
    pub fn new(len: usize) -> Self {
        Self::from_image(vec![0; len])
    }

    /// The device a restart after a power cut sees: `image` is both persisted and visible.
    pub fn from_image(image: Vec<u8>) -> Self {
        let state = State {
            pending: WordSet::new(image.len().div_ceil(WORD)),
            persisted: image.clone(),
            volatile: image,
            flushed: Vec::new(),
            fences: 0,
        };
        Self {
            len: state.volatile.len() as u64,
            state: Mutex::new(state),
            hook: Mutex::new(None),
        }
    }

    /// Call `hook(fence_count)` after every fence, e.g. to take crash images at that point.
    pub fn set_fence_hook(&self, hook: Option<Box<dyn Fn(u64) + Send + Sync>>) {
        *self.hook.lock().unwrap_or_else(PoisonError::into_inner) = hook.map(Arc::from);
    }

    pub fn fence_count(&self) -> u64 {
        self.lock().fences
    }

    /// Words written or flushed but not yet made durable by a fence.
    pub fn pending_words(&self) -> u64 {
        let st = self.lock();
        let mut only_flushed: Vec<usize> = st
            .flushed
            .iter()
            .map(|&(w, _)| w)
            .filter(|&w| !st.pending.contains(w))
            .collect();
        only_flushed.sort_unstable();
        only_flushed.dedup();
        (st.pending.count + only_flushed.len()) as u64
    }

    /// A power cut now: each in-flight word independently keeps its persisted value or one
    /// of the values it was given since (flush-time or current), with a random bias per image.
    pub fn crash_image(&self, rng: &mut impl rand::Rng) -> Vec<u8> {
        let (mut img, in_flight) = self.snapshot();
        let bias: f64 = rng.random();
        for (w, values) in in_flight {
            if rng.random_bool(bias) {
                put_word(&mut img, w, values[rng.random_range(0..values.len())]);
            }
        }
        img
    }

    /// A power cut now where in-flight word `w` takes its newest value iff `keep(w)`.
    pub fn crash_image_with(&self, mut keep: impl FnMut(u64) -> bool) -> Vec<u8> {
        let (mut img, in_flight) = self.snapshot();
        for (w, values) in in_flight {
            if let Some(&newest) = values.last()
                && keep(w as u64)
            {
                put_word(&mut img, w, newest);
            }
        }
        img
    }

    /// Only what is durable.
    pub fn crash_image_none(&self) -> Vec<u8> {
        self.lock().persisted.clone()
    }

    /// Every store reached the media (equals the visible image).
    pub fn crash_image_all(&self) -> Vec<u8> {
        self.lock().volatile.clone()
    }

    /// The persisted image and, for each in-flight word in ascending order, the values a
    /// power cut may leave instead of the persisted one, oldest first. Taken under the lock
    /// so callbacks run without it.
    fn snapshot(&self) -> (Vec<u8>, BTreeMap<usize, Vec<Word>>) {
        let st = self.lock();
        let mut in_flight: BTreeMap<usize, Vec<Word>> = BTreeMap::new();
        for &(w, v) in &st.flushed {
            in_flight.entry(w).or_default().push(v);
        }
        for w in st.pending.iter() {
            in_flight.entry(w).or_default().push(word(&st.volatile, w));
        }
        (st.persisted.clone(), in_flight)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Pmem for CrashPmem {
    fn len(&self) -> u64 {
        self.len
    }

    fn kind(&self) -> PmemKind {
        PmemKind::CrashSim
    }

    fn write(&self, off: u64, src: &[u8]) -> Result<(), PmemError> {
        let (o, n) = check_range(off, src.len() as u64, self.len)?;
        let mut st = self.lock();
        st.volatile[o..o + n].copy_from_slice(src);
        st.pending.insert(words(o, n));
        Ok(())
    }

    fn write_nt(&self, off: u64, src: &[u8]) -> Result<(), PmemError> {
        let (o, n) = check_range(off, src.len() as u64, self.len)?;
        let st = &mut *self.lock();
        st.volatile[o..o + n].copy_from_slice(src);
        // Partial words at the ends are cached stores + flush in `nt_copy`: flushed as well.
        for w in words(o, n) {
            st.pending.remove(w);
            st.flushed.push((w, word(&st.volatile, w)));
        }
        Ok(())
    }

    fn read(&self, off: u64, dst: &mut [u8]) -> Result<(), PmemError> {
        let (o, n) = check_range(off, dst.len() as u64, self.len)?;
        dst.copy_from_slice(&self.lock().volatile[o..o + n]);
        Ok(())
    }

    fn flush(&self, off: u64, len: u64) -> Result<(), PmemError> {
        let (o, n) = check_range(off, len, self.len)?;
        let st = &mut *self.lock();
        let (volatile, flushed) = (&st.volatile, &mut st.flushed);
        st.pending
            .take(words(o, n), |w| flushed.push((w, word(volatile, w))));
        Ok(())
    }

    fn fence(&self) {
        let count = {
            let st = &mut *self.lock();
            for (w, v) in st.flushed.drain(..) {
                put_word(&mut st.persisted, w, v);
            }
            st.fences += 1;
            st.fences
        };
        let hook = self
            .hook
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(hook) = hook {
            hook(count);
        }
    }

    fn sync(&self) -> Result<(), PmemError> {
        Ok(())
    }

    fn as_ptr(&self) -> Option<*mut u8> {
        None
    }
}

/// Word indices touched by bytes `off..off + len`.
fn words(off: usize, len: usize) -> Range<usize> {
    if len == 0 {
        return 0..0;
    }
    off / WORD..(off + len).div_ceil(WORD)
}

/// Byte range of word `w` (the last word of an odd-sized device is short).
fn span(buf: &[u8], w: usize) -> Range<usize> {
    w * WORD..(w * WORD + WORD).min(buf.len())
}

fn word(buf: &[u8], w: usize) -> Word {
    let r = span(buf, w);
    let mut v = [0; WORD];
    v[..r.len()].copy_from_slice(&buf[r]);
    v
}

fn put_word(buf: &mut [u8], w: usize, v: Word) {
    let r = span(buf, w);
    let n = r.len();
    buf[r].copy_from_slice(&v[..n]);
}

/// A bitmap of word indices: range operations cost one step per 64 words, so flushing a
/// large range with few pending words stays cheap.
struct WordSet {
    bits: Vec<u64>,
    count: usize,
}

impl WordSet {
    fn new(words: usize) -> Self {
        Self {
            bits: vec![0; words.div_ceil(64)],
            count: 0,
        }
    }

    fn contains(&self, w: usize) -> bool {
        self.bits[w / 64] & (1 << (w % 64)) != 0
    }

    fn insert(&mut self, r: Range<usize>) {
        chunks(r, |c, mask| {
            self.count += (mask & !self.bits[c]).count_ones() as usize;
            self.bits[c] |= mask;
        });
    }

    fn remove(&mut self, w: usize) {
        self.take(w..w + 1, |_| {});
    }

    /// Remove every member of `r`, handing each to `f`.
    fn take(&mut self, r: Range<usize>, mut f: impl FnMut(usize)) {
        chunks(r, |c, mask| {
            let mut hit = self.bits[c] & mask;
            self.bits[c] &= !mask;
            self.count -= hit.count_ones() as usize;
            while hit != 0 {
                f(c * 64 + hit.trailing_zeros() as usize);
                hit &= hit - 1;
            }
        });
    }

    fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.bits
            .iter()
            .enumerate()
            .filter(|(_, b)| **b != 0)
            .flat_map(|(c, &b)| {
                (0..64)
                    .filter(move |i| b & (1 << i) != 0)
                    .map(move |i| c * 64 + i)
            })
    }
}

/// Split `r` into (bitmap index, mask of `r`'s bits in that u64).
fn chunks(r: Range<usize>, mut f: impl FnMut(usize, u64)) {
    let mut w = r.start;
    while w < r.end {
        let c = w / 64;
        let (lo, hi) = (w % 64, (r.end - c * 64).min(64));
        f(c, (u64::MAX >> (64 - (hi - lo))) << lo);
        w = c * 64 + hi;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn rng(seed: u64) -> StdRng {
        StdRng::seed_from_u64(seed)
    }

    #[test]
    fn persisted_data_survives_every_crash() {
        let p = CrashPmem::new(4096);
        p.write(64, &[1; 100]).unwrap();
        p.persist(64, 100).unwrap();
        p.write(1000, &[2; 100]).unwrap(); // never flushed
        p.write(2000, &[3; 100]).unwrap();
        p.flush(2000, 100).unwrap(); // never fenced
        for seed in 0..50 {
            assert_eq!(&p.crash_image(&mut rng(seed))[64..164], &[1; 100]);
        }
        assert_eq!(&p.crash_image_none()[64..164], &[1; 100]);
        assert_eq!(p.crash_image_all(), {
            let mut v = vec![0; 4096];
            p.read(0, &mut v).unwrap();
            v
        });
    }

    #[test]
    fn unflushed_words_are_old_or_new_never_torn() {
        let p = CrashPmem::from_image(vec![0xAA; 64]);
        p.write(4, &[0x55; 24]).unwrap(); // words 0 and 3 only partly written
        let (mut seen_old, mut seen_new) = (false, false);
        for seed in 0..200 {
            let img = p.crash_image(&mut rng(seed));
            for w in 0..8 {
                let old = [0xAA; 8];
                let new = word(&p.crash_image_all(), w);
                let got = word(&img, w);
                assert!(got == old || got == new, "word {w} torn: {got:?}");
                seen_old |= (1..4).contains(&w) && got == old;
                seen_new |= (1..4).contains(&w) && got == new;
            }
        }
        assert!(seen_old && seen_new);
    }

    #[test]
    fn flush_without_fence_may_or_may_not_survive() {
        let p = CrashPmem::new(64);
        p.write(0, &[7; 8]).unwrap();
        p.flush(0, 8).unwrap();
        assert_eq!(p.pending_words(), 1);
        assert_eq!(p.crash_image_none()[0], 0);
        assert_eq!(p.crash_image_with(|w| w == 0)[0], 7);
        let outcomes: Vec<u8> = (0..100).map(|s| p.crash_image(&mut rng(s))[0]).collect();
        assert!(outcomes.contains(&0) && outcomes.contains(&7));
        p.fence();
        assert_eq!((p.pending_words(), p.fence_count()), (0, 1));
        assert_eq!(p.crash_image_none()[0], 7);
    }

    #[test]
    fn write_nt_then_fence_survives() {
        let p = CrashPmem::new(256);
        p.write_nt(3, &[9; 100]).unwrap();
        assert_eq!(p.crash_image_none()[3], 0);
        p.fence();
        assert_eq!(&p.crash_image_none()[3..103], &[9; 100]);
        assert_eq!(p.pending_words(), 0);
    }

    #[test]
    fn rewrite_after_flush_can_leave_the_flushed_value() {
        let p = CrashPmem::new(8);
        p.write(0, &[1; 8]).unwrap();
        p.flush(0, 8).unwrap();
        p.write(0, &[2; 8]).unwrap();
        let seen: std::collections::BTreeSet<u8> =
            (0..300).map(|s| p.crash_image(&mut rng(s))[0]).collect();
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![0, 1, 2]);
        p.fence(); // commits the flushed 1; the 2 is still only cached
        assert_eq!(p.crash_image_none()[0], 1);
        assert_eq!(p.pending_words(), 1);
    }

    #[test]
    fn fence_hook_sees_counts_and_can_take_images() {
        let p = Arc::new(CrashPmem::new(64));
        let last = Arc::new(AtomicU64::new(0));
        let (p2, last2) = (Arc::downgrade(&p), Arc::clone(&last));
        p.set_fence_hook(Some(Box::new(move |n| {
            let img = p2.upgrade().unwrap().crash_image_none();
            last2.store(n * 1000 + u64::from(img[0]), Ordering::SeqCst);
        })));
        p.write(0, &[5]).unwrap();
        p.persist(0, 1).unwrap();
        assert_eq!(last.load(Ordering::SeqCst), 1005);
        p.set_fence_hook(None);
        p.fence();
        assert_eq!((p.fence_count(), last.load(Ordering::SeqCst)), (2, 1005));
    }

    #[test]
    fn odd_sized_device_and_ranges() {
        let p = CrashPmem::new(13);
        p.write(9, &[1; 4]).unwrap();
        p.persist(12, 1).unwrap();
        assert_eq!(&p.crash_image_none()[8..13], &[0, 1, 1, 1, 1]);
        assert!(p.write(10, &[0; 4]).is_err());
        assert!(p.read(u64::MAX, &mut [0; 1]).is_err());
        assert!(p.flush(14, 0).is_err());
        assert!(p.write_nt(13, &[0]).is_err());
        assert_eq!(p.flush(1, u64::MAX).unwrap_err().errno(), libc::EINVAL);
    }

    #[test]
    fn large_device_many_writes() {
        let len = 64 << 20;
        let p = CrashPmem::new(len);
        let mut r = rng(1);
        for i in 0..200_000u64 {
            let off = r.random_range(0..(len as u64 - 4096)) & !7;
            p.write(off, &[i as u8; 64]).unwrap();
            p.flush(off, 64).unwrap();
            if i % 8 == 0 {
                p.fence();
            }
        }
        p.flush(0, len as u64).unwrap(); // a whole-device flush walks the bitmap, not bytes
        p.fence();
        assert_eq!(p.pending_words(), 0);
        assert_eq!(p.crash_image(&mut r), p.crash_image_all());
    }

    #[derive(Clone, Debug)]
    enum Op {
        Write(u64, usize, u8),
        WriteNt(u64, usize, u8),
        Flush(u64, u64),
        Fence,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..200, 0usize..60, any::<u8>()).prop_map(|(o, l, b)| Op::Write(o, l, b)),
            (0u64..200, 0usize..60, any::<u8>()).prop_map(|(o, l, b)| Op::WriteNt(o, l, b)),
            (0u64..200, 0u64..80).prop_map(|(o, l)| Op::Flush(o, l)),
            Just(Op::Fence),
        ]
    }

    proptest! {
        /// Against a per-word reference: every crash image word is a value the word once
        /// held, and words made durable (flushed after their last store, then fenced) always
        /// hold their current value.
        #[test]
        fn crash_images_match_the_model(ops in proptest::collection::vec(op(), 0..40), seed: u64) {
            const LEN: usize = 256;
            let p = CrashPmem::new(LEN);
            let nwords = LEN / WORD;
            let mut history = vec![vec![[0u8; 8]]; nwords];
            let mut durable = vec![true; nwords];
            let mut flushed = vec![false; nwords];
            for op in ops {
                match op {
                    Op::Write(off, len, b) | Op::WriteNt(off, len, b) => {
                        let nt = matches!(op, Op::WriteNt(..));
                        let res = if nt { p.write_nt(off, &vec![b; len]) } else { p.write(off, &vec![b; len]) };
                        if off as usize + len > LEN {
                            prop_assert!(res.is_err());
                            continue;
                        }
                        res.unwrap();
                        let img = p.crash_image_all();
                        for w in words(off as usize, len) {
                            history[w].push(word(&img, w));
                            durable[w] = false;
                            flushed[w] = nt;
                        }
                    }
                    Op::Flush(off, len) => {
                        if p.flush(off, len).is_err() {
                            prop_assert!(off + len > LEN as u64);
                            continue;
                        }
                        for w in words(off as usize, len as usize) {
                            flushed[w] |= !durable[w];
                        }
                    }
                    Op::Fence => {
                        p.fence();
                        for w in 0..nwords {
                            durable[w] |= std::mem::take(&mut flushed[w]);
                        }
                    }
                }
            }
            let current = p.crash_image_all();
            let mut r = rng(seed);
            let mut images = vec![p.crash_image_none(), current.clone()];
            images.extend((0..8).map(|_| p.crash_image(&mut r)));
            images.push(p.crash_image_with(|w| w % 3 == seed % 3));
            for img in images {
                for w in 0..nwords {
                    let got = word(&img, w);
                    prop_assert!(history[w].contains(&got), "word {} holds an invented value", w);
                    if durable[w] {
                        prop_assert_eq!(got, word(&current, w), "durable word {} lost", w);
                    }
                }
            }
        }
    }
}
