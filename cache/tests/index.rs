//! The index through its public API: the DRAM budget per cached block, and many threads at once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use cache::index::{Extent, Index, IndexConfig, Piece};

/// The budget: DRAM per cached 4 KiB block.
const BUDGET: f64 = 24.0;

/// xorshift64: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn bytes_per_block(idx: &Index) -> f64 {
    let s = idx.stats();
    assert_eq!(s.memory_bytes, idx.memory_bytes());
    s.memory_bytes as f64 / s.cached_blocks as f64
}

#[test]
fn random_4k_keys_fit_the_budget() {
    // 100k single-block keys at random over a 64 GiB origin of 4 KiB blocks.
    let idx = Index::new(IndexConfig::new(4096)).unwrap();
    let mut rng = Rng(0x1234_5678);
    for pos in 0..100_000 {
        idx.insert(&Extent::key(rng.below(16 << 20), 1, pos, pos as u32, true))
            .unwrap();
    }
    let per_block = bytes_per_block(&idx);
    println!(
        "random 4 KiB keys: {per_block:.2} bytes per cached block, {:?}",
        idx.stats()
    );
    assert!(per_block <= BUDGET, "{per_block:.2} bytes per block");
}

#[test]
fn sequential_128k_keys_fit_the_budget() {
    // 1 GiB written front to back in 128 KiB keys.
    let idx = Index::new(IndexConfig::new(4096)).unwrap();
    for k in 0..8192 {
        idx.insert(&Extent::key(k * 32, 32, k * 32, 0, true))
            .unwrap();
    }
    let per_block = bytes_per_block(&idx);
    println!(
        "sequential 128 KiB keys: {per_block:.2} bytes per cached block, {:?}",
        idx.stats()
    );
    assert!(per_block <= 2.0, "{per_block:.2} bytes per block");
}

#[test]
fn a_dense_region_of_4k_keys_fits_the_budget() {
    // Every block of 256 MiB cached, each by its own key, written in random order.
    let idx = Index::new(IndexConfig::new(4096)).unwrap();
    let mut rng = Rng(0x0bad_cafe);
    let mut order: Vec<u64> = (0..65536).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    for (pos, &lba) in order.iter().enumerate() {
        idx.insert(&Extent::key(lba, 1, pos as u64, 0, true))
            .unwrap();
    }
    assert_eq!(idx.stats().entries, 65536);
    let per_block = bytes_per_block(&idx);
    println!(
        "dense 4 KiB keys: {per_block:.2} bytes per cached block, {:?}",
        idx.stats()
    );
    assert!(per_block <= BUDGET, "{per_block:.2} bytes per block");
}

#[test]
fn a_huge_unmap_costs_an_entry_per_region() {
    // 16 TiB of 4 KiB blocks unmapped at once: one ZERO entry per 64 MiB region.
    let idx = Index::new(IndexConfig::new(4096)).unwrap();
    let d = idx.insert(&Extent::zero(0, u32::MAX, true)).unwrap();
    assert_eq!(d.total(), 0);
    let s = idx.stats();
    assert_eq!(
        (s.zero_blocks, s.dirty_blocks),
        (u64::from(u32::MAX), u64::from(u32::MAX))
    );
    assert_eq!(s.entries, s.regions);
    let per_region = s.memory_bytes as f64 / s.regions as f64;
    println!("huge unmap: {per_region:.1} bytes per region, {s:?}");
    assert!(per_region <= 200.0, "{per_region:.1} bytes per region");
    let mut pieces = Vec::new();
    idx.lookup(0, u32::MAX, |p| pieces.push(p));
    assert_eq!(pieces, [Piece::Hit(Extent::zero(0, u32::MAX, true))]);
    // Data written since splits it; writeback of the tombstone leaves only the data.
    idx.insert(&Extent::key(1 << 30, 8, 0, 1, true)).unwrap();
    assert_eq!(idx.zero_written_back(0, u32::MAX), u32::MAX - 8);
    let s = idx.stats();
    assert_eq!((s.entries, s.cached_blocks, s.zero_blocks), (1, 8, 0));
}

/// What a thread expects of its own blocks: cache position (None: ZERO) and dirtiness.
type Owned = BTreeMap<u64, (Option<u64>, bool)>;

const THREADS: u64 = 4;
/// Thread t owns the 16-block stripes s with s % THREADS == t: threads share regions and
/// shards, never blocks.
const STRIPE: u64 = 16;
const STRIPES: u64 = 256;
/// A range every thread writes, unmaps and evicts at once.
const SHARED: u64 = 1 << 20;
const SHARED_LEN: u32 = 256;

fn config() -> IndexConfig {
    IndexConfig {
        block_size: 4096,
        region_blocks: 64,
        shards: 4,
    }
}

fn expect_own(idx: &Index, own: &Owned, lba: u64, len: u32) {
    let mut at = lba;
    idx.lookup(lba, len, |p| {
        assert_eq!(p.lba(), at);
        for i in 0..u64::from(p.len()) {
            let got = match p {
                Piece::Hit(e) if e.zero => Some((None, e.dirty)),
                Piece::Hit(e) => Some((Some(e.pos + i), e.dirty)),
                Piece::Miss { .. } => None,
            };
            assert_eq!(got, own.get(&(at + i)).copied(), "block {}", at + i);
        }
        at += u64::from(p.len());
    });
    assert_eq!(at, lba + u64::from(len));
}

/// One thread's random work: its own stripes, checked exactly, and the shared range.
fn worker(idx: &Index, t: u64, ops: usize) -> Owned {
    let mut rng = Rng(0x9e37_79b9 * (t + 1));
    let mut own = Owned::new();
    let mut next_pos = t << 28;
    for _ in 0..ops {
        let stripe = rng.below(STRIPES / THREADS) * THREADS + t;
        let off = rng.below(STRIPE);
        let lba = stripe * STRIPE + off;
        let len = 1 + rng.below(STRIPE - off) as u32;
        let blocks = lba..lba + u64::from(len);
        match rng.below(10) {
            0..=2 => {
                let dirty = rng.below(2) == 0;
                idx.insert(&Extent::key(lba, len, next_pos, 7, dirty))
                    .unwrap();
                for (i, b) in blocks.enumerate() {
                    own.insert(b, (Some(next_pos + i as u64), dirty));
                }
                next_pos += u64::from(len);
            }
            8 => {
                let dirty = rng.below(4) != 0;
                let d = idx.insert(&Extent::zero(lba, len, dirty)).unwrap();
                let zero = blocks
                    .clone()
                    .filter(|b| matches!(own.get(b), Some((None, _))))
                    .count() as u64;
                let old = blocks
                    .clone()
                    .filter_map(|b| own.insert(b, (None, dirty)))
                    .count() as u64;
                assert_eq!((d.total(), d.zero), (old, zero));
            }
            9 => {
                let dropped = idx.zero_written_back(lba, len);
                let gone: Vec<u64> = own
                    .range(blocks)
                    .filter(|(_, (p, dirty))| p.is_none() && *dirty)
                    .map(|(&b, _)| b)
                    .collect();
                gone.iter().for_each(|b| {
                    own.remove(b);
                });
                assert_eq!(dropped as usize, gone.len());
            }
            3 => {
                let d = idx.remove_range(lba, len);
                let gone = blocks.filter_map(|b| own.remove(&b)).count() as u64;
                assert_eq!(d.total(), gone);
            }
            4 => {
                // Read-fill: other threads change the same version units, so it may give way,
                // but when it fills it fills every gap (a stripe lies in one region).
                let v = idx.range_version(lba, len);
                let gaps = blocks.clone().filter(|b| !own.contains_key(b)).count() as u32;
                let filled = idx
                    .fill(&Extent::key(lba, len, next_pos, 9, false), v)
                    .unwrap();
                assert!(filled == 0 || filled == gaps, "filled {filled} of {gaps}");
                if filled > 0 {
                    for (i, b) in blocks.enumerate() {
                        own.entry(b).or_insert((Some(next_pos + i as u64), false));
                    }
                }
                next_pos += u64::from(len);
            }
            5 => {
                let cleaned = idx.mark_clean(lba, len, t << 28, (t + 1) << 28);
                let mut want = 0;
                for (_, (pos, dirty)) in own.range_mut(blocks) {
                    if pos.is_some() {
                        want += u32::from(*dirty);
                        *dirty = false;
                    }
                }
                assert_eq!(cleaned, want);
            }
            6 => {
                // Evict this thread's older half of positions in the range.
                let cut = (t << 28) + (next_pos - (t << 28)) / 2;
                let dropped = idx.evict(lba, len, t << 28, cut, |_, _| {});
                let gone: Vec<u64> = own
                    .range(blocks)
                    .filter(|(_, (p, _))| p.is_some_and(|p| p < cut))
                    .map(|(&b, _)| b)
                    .collect();
                gone.iter().for_each(|b| {
                    own.remove(b);
                });
                assert_eq!(dropped as usize, gone.len());
            }
            _ => expect_own(idx, &own, lba, len),
        }
        // The shared range: overlapping writers, unmaps and a GC that refills from its callback.
        let s = SHARED + rng.below(u64::from(SHARED_LEN) - 8);
        match rng.below(6) {
            0 => {
                idx.insert(&Extent::key(s, 8, next_pos, 1, rng.below(2) == 0))
                    .unwrap();
                next_pos += 8;
            }
            1 => {
                idx.remove_range(s, 3);
            }
            4 => {
                idx.insert(&Extent::zero(s, 5, true)).unwrap();
            }
            5 => {
                idx.zero_written_back(s, 8);
            }
            2 => {
                idx.evict(s, 8, 0, u64::MAX, |e, v| {
                    let moved = Extent {
                        pos: next_pos,
                        orig_pos: next_pos,
                        orig_len: e.len,
                        ..e
                    };
                    idx.fill(&moved, v).unwrap();
                    next_pos += u64::from(e.len);
                });
            }
            _ => {
                let mut at = s;
                idx.lookup(s, 8, |p| {
                    assert_eq!(p.lba(), at);
                    at += u64::from(p.len());
                });
                assert_eq!(at, s + 8);
            }
        }
    }
    own
}

#[test]
fn threads_on_shared_regions_keep_their_own_blocks_exact() {
    let idx = Arc::new(Index::new(config()).unwrap());
    let (done, finished) = mpsc::channel();
    for t in 0..THREADS {
        let (idx, done) = (Arc::clone(&idx), done.clone());
        std::thread::spawn(move || {
            let own = worker(&idx, t, 50_000);
            done.send((t, own)).unwrap();
        });
    }
    let mut owned = Vec::new();
    for _ in 0..THREADS {
        // A deadlock shows up here as a timeout rather than a hung test run.
        let got = finished
            .recv_timeout(Duration::from_secs(120))
            .expect("a worker died or deadlocked");
        owned.push(got);
    }
    let mut cached: u64 = 0;
    let mut dirty: u64 = 0;
    let mut zero: u64 = 0;
    for (t, own) in &owned {
        for s in (*t..STRIPES).step_by(THREADS as usize) {
            expect_own(&idx, own, s * STRIPE, STRIPE as u32);
        }
        cached += own.values().filter(|(p, _)| p.is_some()).count() as u64;
        dirty += own.values().filter(|(_, d)| *d).count() as u64;
        zero += own.values().filter(|(p, _)| p.is_none()).count() as u64;
    }
    // Whatever the shared range ended with counts too.
    idx.lookup(SHARED, SHARED_LEN, |p| {
        if let Piece::Hit(e) = p {
            let n = u64::from(e.len);
            *if e.zero { &mut zero } else { &mut cached } += n;
            dirty += if e.dirty { n } else { 0 };
        }
    });
    let s = idx.stats();
    assert_eq!(
        (s.cached_blocks, s.dirty_blocks, s.zero_blocks),
        (cached, dirty, zero),
        "{s:?}"
    );
}

#[test]
fn one_hot_region_under_every_thread() {
    // Every thread in the same few blocks: no deadlock, and the structure stays whole.
    let idx = Arc::new(
        Index::new(IndexConfig {
            block_size: 4096,
            region_blocks: 8,
            shards: 2,
        })
        .unwrap(),
    );
    let (done, finished) = mpsc::channel();
    for t in 0..THREADS {
        let (idx, done) = (Arc::clone(&idx), done.clone());
        std::thread::spawn(move || {
            let mut rng = Rng(t + 11);
            for k in 0..50_000u64 {
                let lba = rng.below(40);
                let len = 1 + rng.below(20) as u32;
                match rng.below(5) {
                    0 | 1 => drop(
                        idx.insert(&Extent::key(lba, len, (t << 28) + k * 32, 0, true))
                            .unwrap(),
                    ),
                    2 => drop(idx.remove_range(lba, len)),
                    3 => drop(idx.evict(lba, len, t << 28, (t << 28) + k * 16, |_, _| {})),
                    _ => idx.lookup(lba, len, |_| {}),
                }
            }
            done.send(()).unwrap();
        });
    }
    for _ in 0..THREADS {
        finished
            .recv_timeout(Duration::from_secs(120))
            .expect("a worker died or deadlocked");
    }
    let mut cached = 0;
    idx.lookup(0, 64, |p| {
        if let Piece::Hit(e) = p {
            cached += u64::from(e.len);
        }
    });
    assert_eq!(idx.stats().cached_blocks, cached);
}

/// Threads racing on the same blocks with `insert_ordered`: for every block, the extent the index
/// keeps is the one with the highest sequence number (what replay would pick).
#[test]
fn ordered_inserts_agree_with_their_sequence_numbers() {
    use cache::index::{Extent, Index, IndexConfig, Piece};
    use std::sync::atomic::AtomicU64;
    let mut cfg = IndexConfig::new(4096);
    cfg.region_blocks = 8;
    cfg.shards = 4;
    let index = std::sync::Arc::new(Index::new(cfg).unwrap());
    let seq = std::sync::Arc::new(AtomicU64::new(1));
    // (sequence, lba, len, pos) of every insert.
    let mut all: Vec<(u64, u64, u64, u64)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4u64)
            .map(|t| {
                let (index, seq) = (index.clone(), seq.clone());
                s.spawn(move || {
                    let mut mine = Vec::new();
                    for i in 0..5000u64 {
                        // Keys of 1..3 blocks over 16 blocks: many cross a region (and shard) edge.
                        let lba = (i * 7 + t * 3) % 14;
                        let len = 1 + (i + t) % 3;
                        let pos = (t << 24) | (i << 2);
                        let e = Extent::key(lba, len as u32, pos, 0, true);
                        let (_, n) = index.insert_ordered(&e, &seq).unwrap();
                        mine.push((n, lba, len, pos));
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    all.sort_unstable();
    let mut expect = [None::<u64>; 16];
    for (_, lba, len, pos) in &all {
        for b in 0..*len {
            expect[(lba + b) as usize] = Some(pos + b);
        }
    }
    for (block, want) in expect.iter().enumerate() {
        let mut got = None;
        index.lookup(block as u64, 1, |p| {
            if let Piece::Hit(e) = p {
                got = Some(e.pos);
            }
        });
        assert_eq!(got, *want, "block {block}");
    }
}

/// Two threads insert the same block at the same moment, many times over: the index must keep the
/// one with the higher sequence number every time.
#[test]
fn racing_ordered_inserts_keep_the_higher_sequence() {
    use cache::index::{Extent, Index, IndexConfig, Piece};
    use std::sync::atomic::AtomicU64;
    use std::sync::{Arc, Barrier};
    let index = Arc::new(Index::new(IndexConfig::new(4096)).unwrap());
    let seq = Arc::new(AtomicU64::new(1));
    for round in 0..1000u64 {
        let barrier = Arc::new(Barrier::new(2));
        let results: Vec<(u64, u64)> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..2u64)
                .map(|t| {
                    let (index, seq, barrier) = (index.clone(), seq.clone(), barrier.clone());
                    s.spawn(move || {
                        let pos = round * 2 + t;
                        barrier.wait();
                        let (_, n) = index
                            .insert_ordered(&Extent::key(5, 1, pos, 0, true), &seq)
                            .unwrap();
                        (n, pos)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let want = results.iter().max().unwrap().1;
        let mut got = None;
        index.lookup(5, 1, |p| {
            if let Piece::Hit(e) = p {
                got = Some(e.pos);
            }
        });
        assert_eq!(got, Some(want), "round {round}");
    }
}
