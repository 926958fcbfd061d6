//! One region's mapping: its entries sorted by origin offset and never overlapping, held in
//! chunks of at most `chunk_max` entries, so that an insert or a removal moves at most one chunk's
//! worth of memory however dense the region is, and a sparse region costs one small chunk.
//!
//! Every capacity change goes through `set_cap`, which keeps the shard's `Tally` true: the
//! memory estimate is then a sum of counters, not a walk.

use super::{Extent, Out, Piece};

/// `Entry::olf` holds the original key's length − 1 in its low 13 bits and these flags above.
pub(super) const DIRTY: u16 = 1 << 13;
pub(super) const REFERENCED: u16 = 1 << 14;
/// The blocks read as zeroes and have no cache data: `pos`, `crc`, `head_skip` and the length
/// bits of `olf` are 0, and the entry is never REFERENCED (GC has nothing of it to move).
pub(super) const ZERO: u16 = 1 << 15;
const ORIG_LEN_MASK: u16 = (1 << 13) - 1;
/// Longest ZERO entry, in blocks (`len` is 16 bits): longer zero runs in a region become one
/// entry per `ZERO_ENTRY_MAX`-aligned slice of region offsets.
pub(super) const ZERO_ENTRY_MAX: u32 = 1 << 15;

/// One run of cached (or zeroed) blocks inside a region, 16 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Entry {
    /// First block, as an offset in the region.
    pub(super) off: u16,
    /// Length in blocks (at most 8192, the longest key; `ZERO_ENTRY_MAX` for ZERO entries).
    pub(super) len: u16,
    /// Cache position of the first block, in blocks (0 for ZERO entries).
    pub(super) pos: u32,
    /// crc32c of the original key's whole data (0 for ZERO entries).
    pub(super) crc: u32,
    /// Blocks between the original key's first block and this entry's first block (0 for
    /// ZERO entries).
    pub(super) head_skip: u16,
    /// Original key length − 1 (13 bits; 0 for ZERO entries), DIRTY, REFERENCED, ZERO.
    pub(super) olf: u16,
}

impl Entry {
    /// The part of `e` at region offsets [x, y) of a region starting at origin block `base`.
    /// `e` has been validated: every number fits its field, and for a ZERO extent
    /// y − x ≤ `ZERO_ENTRY_MAX` (see `zero_slice`).
    pub(super) fn piece(e: &Extent, base: u64, x: u32, y: u32) -> Entry {
        if e.zero {
            return Entry {
                off: x as u16,
                len: (y - x) as u16,
                pos: 0,
                crc: 0,
                head_skip: 0,
                olf: if e.dirty { ZERO | DIRTY } else { ZERO },
            };
        }
        let lba = base + u64::from(x);
        let pos = e.pos + (lba - e.lba);
        let mut olf = (e.orig_len - 1) as u16;
        if e.dirty {
            olf |= DIRTY;
        }
        Entry {
            off: x as u16,
            len: (y - x) as u16,
            pos: pos as u32,
            crc: e.crc,
            head_skip: (pos - e.orig_pos) as u16,
            olf,
        }
    }

    pub(super) fn start(&self) -> u32 {
        u32::from(self.off)
    }

    pub(super) fn end(&self) -> u32 {
        self.start() + u32::from(self.len)
    }

    pub(super) fn dirty(&self) -> bool {
        self.olf & DIRTY != 0
    }

    pub(super) fn referenced(&self) -> bool {
        self.olf & REFERENCED != 0
    }

    pub(super) fn zero(&self) -> bool {
        self.olf & ZERO != 0
    }

    pub(super) fn orig_len(&self) -> u32 {
        u32::from(self.olf & ORIG_LEN_MASK) + 1
    }

    pub(super) fn orig_pos(&self) -> u32 {
        self.pos - u32::from(self.head_skip)
    }

    /// This entry without its first `k` blocks (`k < len`).
    fn skip(mut self, k: u32) -> Entry {
        self.off += k as u16;
        self.len -= k as u16;
        if !self.zero() {
            self.pos += k;
            self.head_skip += k as u16;
        }
        self
    }

    /// The first `k` blocks of this entry (`0 < k ≤ len`).
    fn take(mut self, k: u32) -> Entry {
        self.len = k as u16;
        self
    }

    /// Region offsets [x, y) of this entry, in a region starting at `base`, as an extent.
    pub(super) fn extent(&self, base: u64, x: u32, y: u32) -> Extent {
        if self.zero() {
            return Extent::zero(base + u64::from(x), y - x, self.dirty());
        }
        Extent {
            lba: base + u64::from(x),
            len: y - x,
            pos: u64::from(self.pos) + u64::from(x - self.start()),
            orig_pos: u64::from(self.orig_pos()),
            orig_len: self.orig_len(),
            crc: self.crc,
            dirty: self.dirty(),
            zero: false,
        }
    }
}

/// The end of the ZERO entry that starts at region offset `x` of a zero run ending at `y`:
/// entries are cut at multiples of `ZERO_ENTRY_MAX`, so the same run always gets the same
/// entries (and a repeated unmap replaces them in place).
pub(super) fn zero_slice(x: u32, y: u32) -> u32 {
    y.min((x / ZERO_ENTRY_MAX + 1) * ZERO_ENTRY_MAX)
}

/// A shard's content and heap use, kept true by every change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Tally {
    pub(super) entries: u64,
    /// Blocks with cache data (not ZERO).
    pub(super) cached: u64,
    /// Dirty blocks, ZERO ones included.
    pub(super) dirty: u64,
    /// ZERO blocks.
    pub(super) zero: u64,
    /// Entry slots allocated: the sum of chunk capacities.
    pub(super) entry_slots: u64,
    /// Chunk headers allocated: the sum of region directory capacities.
    pub(super) chunk_slots: u64,
    /// Heap blocks owned by regions (each costs the allocator a header).
    pub(super) allocs: u64,
}

impl Tally {
    /// Counts `n` blocks of `e` in.
    fn add(&mut self, e: &Entry, n: u64) {
        if e.zero() {
            self.zero += n;
        } else {
            self.cached += n;
        }
        if e.dirty() {
            self.dirty += n;
        }
    }

    /// Counts `n` blocks of `e` out.
    fn sub(&mut self, e: &Entry, n: u64) {
        if e.zero() {
            self.zero -= n;
        } else {
            self.cached -= n;
        }
        if e.dirty() {
            self.dirty -= n;
        }
    }
}

/// Sets `v`'s capacity to `cap` (at least its length) and records the change in `slots`/`allocs`.
fn set_cap<T>(v: &mut Vec<T>, cap: usize, slots: &mut u64, allocs: &mut u64) {
    let old = v.capacity();
    if cap > old {
        v.reserve_exact(cap - v.len());
    } else if cap < old {
        v.shrink_to(cap);
    }
    account(old, v.capacity(), slots, allocs);
}

fn account(old: usize, new: usize, slots: &mut u64, allocs: &mut u64) {
    *slots = *slots + new as u64 - old as u64;
    match (old, new) {
        (0, n) if n > 0 => *allocs += 1,
        (o, 0) if o > 0 => *allocs -= 1,
        _ => {}
    }
}

/// Capacity for `n` elements with an eighth to spare: growth stays amortised (each step adds
/// an eighth) while the slack, which counts against the per-block budget, stays near 6 %.
fn roomy(n: usize) -> usize {
    n + (n / 8).max(1)
}

fn grow<T>(v: &mut Vec<T>, extra: usize, slots: &mut u64, allocs: &mut u64) {
    let need = v.len() + extra;
    if need > v.capacity() {
        set_cap(v, roomy(need), slots, allocs);
    }
}

/// Gives back the capacity of a vector that has lost more than half its elements.
fn trim<T>(v: &mut Vec<T>, slots: &mut u64, allocs: &mut u64) {
    if v.capacity() > 2 * v.len() + 4 {
        set_cap(v, roomy(v.len()), slots, allocs);
    }
}

fn release<T>(v: Vec<T>, slots: &mut u64, allocs: &mut u64) {
    account(v.capacity(), 0, slots, allocs);
}

/// Bytes of one chunk header in a region's directory.
pub(super) const CHUNK_BYTES: u64 = std::mem::size_of::<Chunk>() as u64;

/// Index of the first element of `v` that ends after `x`, for `v` sorted by `end` with its
/// elements spread over offsets [lo, hi): `v.partition_point(|t| end(t) <= x)`. Region offsets
/// are close to evenly spread in the common cases (dense regions, random keys), so a guess
/// interpolated from the bounds is a step or two from the answer, where a binary search would
/// chain a dozen dependent loads; skewed runs fall back to binary search after a few steps.
pub(super) fn first_past<T>(v: &[T], x: u32, lo: u32, hi: u32, end: impl Fn(&T) -> u32) -> usize {
    const STEPS: usize = 3;
    let n = v.len();
    if n <= 2 * STEPS {
        return v.partition_point(|t| end(t) <= x);
    }
    let span = u64::from(hi.saturating_sub(lo)).max(1);
    let guess = u64::from(x.saturating_sub(lo)) * n as u64 / span;
    let mut i = guess.min(n as u64 - 1) as usize;
    if end(&v[i]) <= x {
        // The answer lies in (i, n].
        for _ in 0..STEPS {
            i += 1;
            if i == n || end(&v[i]) > x {
                return i;
            }
        }
        i + 1 + v[i + 1..].partition_point(|t| end(t) <= x)
    } else {
        // The answer lies in [0, i].
        for _ in 0..STEPS {
            if i == 0 || end(&v[i - 1]) <= x {
                return i;
            }
            i -= 1;
        }
        v[..i].partition_point(|t| end(t) <= x)
    }
}

/// `first_past` over a run of entries.
fn entry_past(v: &[Entry], x: u32) -> usize {
    let (lo, hi) = match (v.first(), v.last()) {
        (Some(f), Some(l)) => (f.start(), l.end()),
        _ => return 0,
    };
    first_past(v, x, lo, hi, Entry::end)
}

/// A bounded sorted run of entries; never empty while it is in a region.
pub(super) struct Chunk {
    /// Start of the first entry and end of the last, cached here so that the searches read
    /// the directory and one guessed entry, not the run's two ends (each a cache miss).
    start: u32,
    end: u32,
    v: Vec<Entry>,
}

impl Chunk {
    fn new(v: Vec<Entry>) -> Chunk {
        let mut c = Chunk {
            start: 0,
            end: 0,
            v,
        };
        c.refresh_bounds();
        c
    }

    fn start(&self) -> u32 {
        self.start
    }

    fn refresh_bounds(&mut self) {
        if let (Some(f), Some(l)) = (self.v.first(), self.v.last()) {
            self.start = f.start();
            self.end = l.end();
        }
    }

    /// `entry_past` with the cached bounds.
    fn entry_past(&self, x: u32) -> usize {
        first_past(&self.v, x, self.start, self.end, Entry::end)
    }
}

/// What a cut does to the selected blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CutMode {
    /// Unmap them.
    Drop,
    /// Clear their DIRTY flag (only dirty entries with cache data are selected).
    Clean,
    /// Unmap them, selecting only dirty ZERO entries (their tombstone reached the origin).
    ZeroDone,
}

/// Region offsets [a, b), optionally only the blocks whose cache position is in `window`
/// (a window never selects ZERO entries: they have no cache position).
pub(super) struct Cut {
    pub(super) a: u32,
    pub(super) b: u32,
    pub(super) window: Option<(u64, u64)>,
    pub(super) mode: CutMode,
}

/// Blocks a cut dropped (dirty, clean; `zero` of them ZERO) or, in Clean mode, cleaned
/// (counted in `dirty`).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Cutting {
    pub(super) dirty: u64,
    pub(super) clean: u64,
    pub(super) zero: u64,
}

/// The offsets [x, y) of `e` that the cut selects, if any.
fn select(e: &Entry, cut: &Cut) -> Option<(u32, u32)> {
    let wanted = match cut.mode {
        CutMode::Drop => !e.zero() || cut.window.is_none(),
        CutMode::Clean => e.dirty() && !e.zero(),
        CutMode::ZeroDone => e.dirty() && e.zero(),
    };
    if !wanted {
        return None;
    }
    let mut x = cut.a.max(e.start());
    let mut y = cut.b.min(e.end());
    if let Some((lo, hi)) = cut.window {
        // Offset o holds cache position pos + (o − start): keep the offsets mapping into [lo, hi).
        let p = u64::from(e.pos);
        let s = u64::from(e.start());
        let wx = s.saturating_add(lo.saturating_sub(p));
        let wy = s.saturating_add(hi.saturating_sub(p));
        x = x.max(wx.min(u64::from(u32::MAX)) as u32);
        y = y.min(wy.min(u64::from(u32::MAX)) as u32);
    }
    (x < y).then_some((x, y))
}

/// Applies `cut` to the entries of one chunk. `sink` sees every dropped REFERENCED piece and
/// says whether it has room for more; when it has not, the cut stops after that entry and
/// returns the offset to resume from.
fn cut_chunk<S>(
    v: &mut Vec<Entry>,
    cut: &Cut,
    t: &mut Tally,
    out: &mut Cutting,
    sink: &mut S,
) -> Option<u32>
where
    S: FnMut(&Entry, u32, u32) -> bool,
{
    let mut i = entry_past(v, cut.a);
    // Wholly dropped entries are removed in one drain per run, not one memmove each.
    let mut run: Option<usize> = None;
    let mut resume = None;
    while let Some(&e) = v.get(i) {
        if e.start() >= cut.b {
            break;
        }
        let Some((x, y)) = select(&e, cut) else {
            drain_run(v, &mut run, &mut i, t);
            i += 1;
            continue;
        };
        let n = u64::from(y - x);
        let s = e.start();
        match cut.mode {
            CutMode::Drop | CutMode::ZeroDone => {
                if e.dirty() {
                    out.dirty += n;
                } else {
                    out.clean += n;
                }
                if e.zero() {
                    out.zero += n;
                }
                t.sub(&e, n);
                let room = !e.referenced() || sink(&e, x, y);
                if x == s && y == e.end() {
                    run.get_or_insert(i);
                    i += 1;
                } else {
                    drain_run(v, &mut run, &mut i, t);
                    if x == s {
                        v[i] = e.skip(y - s);
                        i += 1;
                    } else if y == e.end() {
                        v[i] = e.take(x - s);
                        i += 1;
                    } else {
                        v[i] = e.take(x - s);
                        grow(v, 1, &mut t.entry_slots, &mut t.allocs);
                        v.insert(i + 1, e.skip(y - s));
                        t.entries += 1;
                        i += 2;
                    }
                }
                if !room {
                    resume = Some(e.end());
                    break;
                }
            }
            CutMode::Clean => {
                out.dirty += n;
                t.dirty -= n;
                let mut mid = e.skip(x - s).take(y - x);
                mid.olf &= !DIRTY;
                let left = (x > s).then(|| e.take(x - s));
                let right = (y < e.end()).then(|| e.skip(y - s));
                let extra = usize::from(left.is_some()) + usize::from(right.is_some());
                grow(v, extra, &mut t.entry_slots, &mut t.allocs);
                t.entries += extra as u64;
                v[i] = mid;
                if let Some(l) = left {
                    v.insert(i, l);
                    i += 1;
                }
                i += 1;
                if let Some(r) = right {
                    v.insert(i, r);
                    i += 1;
                }
            }
        }
    }
    drain_run(v, &mut run, &mut i, t);
    resume
}

fn drain_run(v: &mut Vec<Entry>, run: &mut Option<usize>, i: &mut usize, t: &mut Tally) {
    if let Some(s) = run.take() {
        v.drain(s..*i);
        t.entries -= (*i - s) as u64;
        *i = s;
    }
}

/// A region: its chunks in offset order, each non-empty.
#[derive(Default)]
pub(super) struct Region {
    chunks: Vec<Chunk>,
}

impl Region {
    pub(super) fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Index of the first chunk holding an entry that ends after offset `x`.
    fn chunk_past(&self, x: u32) -> usize {
        let (lo, hi) = match (self.chunks.first(), self.chunks.last()) {
            (Some(f), Some(l)) => (f.start, l.end),
            _ => return 0,
        };
        first_past(&self.chunks, x, lo, hi, |c| c.end)
    }

    /// Gives back every allocation (the region is being dropped).
    pub(super) fn free(mut self, t: &mut Tally) {
        self.clear(t);
    }

    /// Unmaps everything and gives back every allocation.
    pub(super) fn clear(&mut self, t: &mut Tally) {
        let chunks = std::mem::take(&mut self.chunks);
        for c in &chunks {
            t.entries -= c.v.len() as u64;
            for e in &c.v {
                t.sub(e, u64::from(e.len));
            }
        }
        for c in &chunks {
            account(c.v.capacity(), 0, &mut t.entry_slots, &mut t.allocs);
        }
        release(chunks, &mut t.chunk_slots, &mut t.allocs);
    }

    /// Maps `e` over whatever it overlaps, counting the displaced blocks in `d`.
    pub(super) fn insert(&mut self, e: Entry, t: &mut Tally, chunk_max: usize, d: &mut Cutting) {
        let (a, b) = (e.start(), e.end());
        // A block rewritten with the same extent replaces its entry in place: no memmove.
        let ci = self.chunk_past(a);
        if let Some(c) = self.chunks.get_mut(ci) {
            let i = c.entry_past(a);
            if let Some(old) = c.v.get_mut(i)
                && old.start() == a
                && old.end() == b
            {
                let n = u64::from(e.len);
                if old.dirty() {
                    d.dirty += n;
                } else {
                    d.clean += n;
                }
                if old.zero() {
                    d.zero += n;
                }
                t.sub(old, n);
                t.add(&e, n);
                *old = e;
                return;
            }
        }
        let cut = Cut {
            a,
            b,
            window: None,
            mode: CutMode::Drop,
        };
        self.cut(&cut, t, chunk_max, d, &mut |_, _, _| true);
        self.put(e, t, chunk_max);
    }

    /// Applies `cut`; see `cut_chunk` for `sink`. Returns the offset to resume from when the
    /// sink filled up before the cut was done.
    pub(super) fn cut<S>(
        &mut self,
        cut: &Cut,
        t: &mut Tally,
        chunk_max: usize,
        out: &mut Cutting,
        sink: &mut S,
    ) -> Option<u32>
    where
        S: FnMut(&Entry, u32, u32) -> bool,
    {
        let first = self.chunk_past(cut.a);
        let mut ci = first;
        let mut resume = None;
        while let Some(c) = self.chunks.get_mut(ci)
            && c.start() < cut.b
        {
            resume = cut_chunk(&mut c.v, cut, t, out, sink);
            ci += 1;
            if resume.is_some() {
                break;
            }
        }
        self.repair(first, ci, t, chunk_max);
        resume.filter(|&r| r < cut.b)
    }

    /// Adds `e`, which overlaps no entry.
    fn put(&mut self, e: Entry, t: &mut Tally, chunk_max: usize) {
        t.entries += 1;
        t.add(&e, u64::from(e.len));
        if self.chunks.is_empty() {
            let mut v = Vec::new();
            set_cap(&mut v, 1, &mut t.entry_slots, &mut t.allocs);
            v.push(e);
            // Most regions of a sparse cache never need a second chunk.
            set_cap(&mut self.chunks, 1, &mut t.chunk_slots, &mut t.allocs);
            self.chunks.push(Chunk::new(v));
            return;
        }
        // The first chunk with an entry ending after e.start: that entry starts after e.
        let mut ci = self.chunk_past(e.start());
        let tail = ci == self.chunks.len();
        if tail {
            ci -= 1;
        }
        let c = &mut self.chunks[ci];
        // No entry overlaps e: those ending by its start are exactly those starting before it.
        let i = c.entry_past(e.start());
        grow(&mut c.v, 1, &mut t.entry_slots, &mut t.allocs);
        c.v.insert(i, e);
        c.start = c.start.min(e.start());
        c.end = c.end.max(e.end());
        let n = c.v.len();
        if n > chunk_max {
            // A stream appending at the region's end leaves full chunks behind it.
            let at = if tail && i + 1 == n { chunk_max } else { n / 2 };
            self.split(ci, at, t);
        }
    }

    /// Maps the unmapped blocks of [a, b) with `make(x, y)` for each gap [x, y); returns blocks.
    pub(super) fn fill(
        &mut self,
        a: u32,
        b: u32,
        t: &mut Tally,
        chunk_max: usize,
        make: impl Fn(u32, u32) -> Entry,
    ) -> u32 {
        let mut c = a;
        let mut filled = 0;
        while c < b {
            match self.first_after(c) {
                Some((s, end)) if s <= c => c = end,
                next => {
                    let y = next.map_or(b, |(s, _)| s.min(b));
                    self.put(make(c, y), t, chunk_max);
                    filled += y - c;
                    c = y;
                }
            }
        }
        filled
    }

    /// (start, end) of the first entry ending after offset `c`.
    fn first_after(&self, c: u32) -> Option<(u32, u32)> {
        let ch = self.chunks.get(self.chunk_past(c))?;
        let i = ch.entry_past(c);
        ch.v.get(i).map(|e| (e.start(), e.end()))
    }

    /// Pieces of offsets [a, b) into `out`, marking the hit entries with cache data REFERENCED.
    /// Returns the offset where it stopped when `out` filled up.
    pub(super) fn lookup(&mut self, base: u64, a: u32, b: u32, out: &mut Out) -> Option<u32> {
        let mut c = a;
        let mut ci = self.chunk_past(a);
        let mut ei = self.chunks.get(ci).map_or(0, |ch| ch.entry_past(a));
        while c < b {
            let Some(e) = self.chunks.get_mut(ci).and_then(|ch| ch.v.get_mut(ei)) else {
                return (!out.push(Piece::Miss {
                    lba: base + u64::from(c),
                    len: b - c,
                }))
                .then_some(c);
            };
            if e.start() > c {
                let y = e.start().min(b);
                if !out.push(Piece::Miss {
                    lba: base + u64::from(c),
                    len: y - c,
                }) {
                    return Some(c);
                }
                c = y;
                continue;
            }
            let y = e.end().min(b);
            if !out.push(Piece::Hit(e.extent(base, c, y))) {
                return Some(c);
            }
            // Repeat hits leave the line clean.
            if !e.referenced() && !e.zero() {
                e.olf |= REFERENCED;
            }
            c = y;
            ei += 1;
            if ei == self.chunks[ci].v.len() {
                ci += 1;
                ei = 0;
            }
        }
        None
    }

    /// After a change to chunks [lo, hi): drops empty chunks, refreshes ends, splits chunks over
    /// `chunk_max`, gives back slack, and merges small neighbours.
    fn repair(&mut self, lo: usize, mut hi: usize, t: &mut Tally, chunk_max: usize) {
        let mut i = lo;
        while i < hi.min(self.chunks.len()) {
            let n = self.chunks[i].v.len();
            if n == 0 {
                let c = self.chunks.remove(i);
                release(c.v, &mut t.entry_slots, &mut t.allocs);
                hi -= 1;
            } else if n > chunk_max {
                self.split(i, n / 2, t);
                hi += 1;
            } else {
                let c = &mut self.chunks[i];
                c.refresh_bounds();
                trim(&mut c.v, &mut t.entry_slots, &mut t.allocs);
                i += 1;
            }
        }
        let mut k = lo.saturating_sub(1);
        while k < hi && k + 1 < self.chunks.len() {
            let (l, r) = (self.chunks[k].v.len(), self.chunks[k + 1].v.len());
            if l + r <= chunk_max && 3 * l.min(r) <= chunk_max {
                let right = self.chunks.remove(k + 1);
                let left = &mut self.chunks[k];
                grow(&mut left.v, r, &mut t.entry_slots, &mut t.allocs);
                left.v.extend_from_slice(&right.v);
                left.end = right.end;
                release(right.v, &mut t.entry_slots, &mut t.allocs);
                hi = hi.saturating_sub(1);
            } else {
                k += 1;
            }
        }
        trim(&mut self.chunks, &mut t.chunk_slots, &mut t.allocs);
    }

    /// Moves the entries of chunk `i` from index `at` on into a new chunk after it.
    fn split(&mut self, i: usize, at: usize, t: &mut Tally) {
        let left = &mut self.chunks[i].v;
        let mut right = Vec::new();
        set_cap(
            &mut right,
            roomy(left.len() - at),
            &mut t.entry_slots,
            &mut t.allocs,
        );
        right.extend_from_slice(&left[at..]);
        left.truncate(at);
        if left.capacity() > roomy(at) {
            set_cap(left, roomy(at), &mut t.entry_slots, &mut t.allocs);
        }
        self.chunks[i].refresh_bounds();
        let chunk = Chunk::new(right);
        grow(&mut self.chunks, 1, &mut t.chunk_slots, &mut t.allocs);
        self.chunks.insert(i + 1, chunk);
    }

    /// Checks the region's structure against `region_blocks` and `chunk_max` and adds what it
    /// holds to `t`.
    #[cfg(test)]
    pub(super) fn check(
        &self,
        region_blocks: u32,
        chunk_max: usize,
        t: &mut Tally,
    ) -> Result<(), proptest::test_runner::TestCaseError> {
        if self.chunks.is_empty() {
            return Err(proptest::test_runner::TestCaseError::fail(
                "empty region kept",
            ));
        }
        t.chunk_slots += self.chunks.capacity() as u64;
        t.allocs += 1;
        let mut prev_end = 0;
        for (ci, c) in self.chunks.iter().enumerate() {
            if c.v.is_empty() || c.v.len() > chunk_max {
                return Err(super::tests::fail!(
                    "chunk {ci} holds {} entries (max {chunk_max})",
                    c.v.len()
                ));
            }
            if c.end != c.v[c.v.len() - 1].end() || c.start != c.v[0].start() {
                return Err(super::tests::fail!(
                    "chunk {ci} bounds {}..{} are stale",
                    c.start,
                    c.end
                ));
            }
            t.entry_slots += c.v.capacity() as u64;
            t.allocs += 1;
            for e in &c.v {
                if e.len == 0 || e.start() < prev_end || e.end() > region_blocks {
                    return Err(super::tests::fail!(
                        "entry {e:?} out of order or bounds (prev end {prev_end})"
                    ));
                }
                if e.zero() {
                    if (e.pos, e.crc, e.head_skip) != (0, 0, 0)
                        || e.olf & (ORIG_LEN_MASK | REFERENCED) != 0
                        || u32::from(e.len) > ZERO_ENTRY_MAX
                    {
                        return Err(super::tests::fail!("ZERO entry {e:?} not canonical"));
                    }
                } else if u32::from(e.head_skip) + u32::from(e.len) > e.orig_len()
                    || e.pos < u32::from(e.head_skip)
                {
                    return Err(super::tests::fail!("entry {e:?} outside its key"));
                }
                prev_end = e.end();
                t.entries += 1;
                t.add(e, u64::from(e.len));
            }
        }
        Ok(())
    }
}
