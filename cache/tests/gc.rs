//! GC under the deterministic harness, on a small cache (32 MiB of pmem in 1 MiB segments over a
//! malloc origin): writing more than the cache holds completes (defer → writeback → GC → resume)
//! with every block correct; gc_percent 0 reclaims down to the minimum; a recently read extent
//! gets a second chance; data overwritten across GC rounds replays as its newest version.

mod common;
use common::{iov, record, unregister, wait};

use bdev::malloc::{self, rpc::MallocCreateParams};
use bdev::{Bdev, BdevChannel, BdevDesc, DmaBuf, IoCtx, IoFlags};
use cache::instance::Cache;
use cache::params::CreateParams;
use pmem::{Pmem, PmemFile};
use poller::Harness;
use std::sync::Arc;

const BS: usize = 4096;
const PMEM_BYTES: usize = 32 << 20;
/// 64 MiB origin: twice the cache.
const ORIGIN_BLOCKS: u64 = 16384;
/// Lanes the cache has (each holds a key segment): one per thread that used it.
fn lanes(st: &serde_json::Value) -> u64 {
    st["tails"].as_array().unwrap().len() as u64
}

/// Block `lba`'s content in version `tag`.
fn fill_block(dst: &mut [u8], lba: u64, tag: u64) {
    for (i, x) in dst.iter_mut().enumerate() {
        *x = (lba
            .wrapping_mul(131)
            .wrapping_add(tag.wrapping_mul(31))
            .wrapping_add(i as u64 / 8)) as u8;
    }
}

/// `n` blocks from `lba`, version `tag`.
fn blocks(lba: u64, n: usize, tag: u64) -> DmaBuf {
    let mut b = DmaBuf::new(n * BS, 4096).unwrap();
    for (i, chunk) in b.as_mut_slice().chunks_mut(BS).enumerate() {
        fill_block(chunk, lba + i as u64, tag);
    }
    b
}

fn params(name: &str, cache: &str, origin: &str, gc_percent: u32) -> CreateParams {
    serde_json::from_value(serde_json::json!({
        "name": name, "cache_bdev": cache, "origin_bdev": origin, "data_crc": true,
        "segment_size": 1 << 20, "gc_percent": gc_percent
    }))
    .unwrap()
}

fn open_on(h: &Harness, thread: usize, name: &str, write: bool) -> (BdevDesc, BdevChannel) {
    let d = BdevDesc::open(name, write, |_| {}).unwrap();
    let ch = h.run_on(thread, || d.get_io_channel().unwrap());
    (d, ch)
}

/// Writes `n` blocks at `lba` (version `tag`) from `thread` and waits.
fn write_on(h: &Harness, thread: usize, ch: &BdevChannel, lba: u64, n: usize, tag: u64) {
    let b = blocks(lba, n, tag);
    h.run_on(thread, || {
        ch.write(
            &[iov(&b)],
            lba,
            n as u64,
            IoFlags::default(),
            record,
            IoCtx::Word(1),
        )
        .unwrap()
    });
    assert_eq!(wait(h, 1), vec![(1, true)]);
}

fn read_n(h: &Harness, ch: &BdevChannel, lba: u64, n: usize) -> Vec<u8> {
    let r = DmaBuf::new(n * BS, 4096).unwrap();
    h.run_on(0, || {
        ch.read(&[iov(&r)], lba, n as u64, record, IoCtx::Word(3))
            .unwrap()
    });
    assert_eq!(wait(h, 1), vec![(3, true)]);
    r.as_slice().to_vec()
}

fn stats(c: &Cache) -> serde_json::Value {
    cache::rpc::stats_json(c)
}

fn u(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"))
}

/// flush_start, then runs the threads (moving the clock) until it is done.
fn flush_all(h: &mut Harness, c: &Cache) {
    h.run_on(0, || c.flush_start());
    for _ in 0..10_000 {
        h.poll_until_idle(100);
        let st = c.flush_status();
        if !st["in_progress"].as_bool().unwrap() {
            assert_eq!(st["dirty_bytes"], 0, "{st}");
            return;
        }
        h.advance_us(1_000);
    }
    panic!("flush did not finish: {}", c.flush_status());
}

/// Polls (moving the clock a little) so GC rounds and grace walks settle.
fn settle(h: &mut Harness) {
    for _ in 0..50 {
        h.poll_until_idle(100);
        h.advance_us(1_000);
    }
}

struct Env {
    h: Harness,
    pc: Option<Bdev>,
    cache: Arc<Cache>,
    origin: String,
    pmem_name: String,
    name: String,
    gc_percent: u32,
    others: Vec<Bdev>,
}

fn env(prefix: &str, threads: usize, gc_percent: u32) -> Env {
    let h = Harness::new(threads);
    let pm: Arc<dyn Pmem> = Arc::new(PmemFile::anonymous(PMEM_BYTES as u64).unwrap());
    let pmem_name = format!("{prefix}_pmem");
    let pmem_bdev = bdev::pmem::create_with(&pmem_name, pm, 4096).unwrap();
    let origin = format!("{prefix}_origin");
    let m = malloc::create(MallocCreateParams::new(&origin, ORIGIN_BLOCKS, BS as u32)).unwrap();
    let name = format!("{prefix}_cache");
    let pc = h.run_on(0, || {
        cache::vbdev::create(params(&name, &pmem_name, &origin, gc_percent)).unwrap()
    });
    let cache = cache::vbdev::cache_of(&pc).unwrap();
    Env {
        h,
        pc: Some(pc),
        cache,
        origin,
        pmem_name,
        name,
        gc_percent,
        others: vec![m, pmem_bdev],
    }
}

impl Env {
    /// Deletes the cache bdev and creates it again (replay).
    fn recreate(&mut self) {
        unregister(&self.h, self.pc.take().unwrap());
        let p = params(&self.name, &self.pmem_name, &self.origin, self.gc_percent);
        let pc = self.h.run_on(0, || cache::vbdev::create(p).unwrap());
        self.cache = cache::vbdev::cache_of(&pc).unwrap();
        self.pc = Some(pc);
    }

    fn teardown(self) {
        let Env { h, pc, others, .. } = self;
        if let Some(pc) = pc {
            unregister(&h, pc);
        }
        for b in others {
            unregister(&h, b);
        }
    }
}

#[test]
fn writing_more_than_the_cache_holds_completes_and_reads_back() {
    fill_past_capacity("gc1", 1);
}

/// Two threads writing all the time: their lanes' key-sets interleave in `seq`, and GC still
/// finds cuts (the lanes split their open key-sets where GC asks).
#[test]
fn two_lanes_writing_past_capacity_complete_and_read_back() {
    fill_past_capacity("gc2l", 2);
}

/// Writes 1.5× the cache, 16 KiB at a time with 32 in flight, spread over `threads` threads
/// (each its own lane), then reads everything back through the cache and from the origin.
fn fill_past_capacity(prefix: &str, threads: usize) {
    let mut e = env(prefix, threads, 70);
    let name = format!("{prefix}_cache");
    let chans: Vec<(BdevDesc, BdevChannel)> = (0..threads)
        .map(|t| open_on(&e.h, t, &name, true))
        .collect();
    let ch = &chans[0].1;
    let total = e.cache.layout().segment_count() as u64 * (1 << 20) / BS as u64;
    // 1.5× the whole cache, 16 KiB writes, 32 in flight.
    let per_io = 4usize;
    let ios = (total * 3 / 2) / per_io as u64;
    assert!(ios * per_io as u64 <= ORIGIN_BLOCKS);
    let depth = 32u64;
    let mut next = 0u64;
    while next < ios {
        let n = depth.min(ios - next);
        let bufs: Vec<DmaBuf> = (next..next + n)
            .map(|i| blocks(i * per_io as u64, per_io, 1))
            .collect();
        for (t, (_, tch)) in chans.iter().enumerate() {
            e.h.run_on(t, || {
                for (k, b) in bufs.iter().enumerate().skip(t).step_by(threads) {
                    let lba = (next + k as u64) * per_io as u64;
                    tch.write(
                        &[iov(b)],
                        lba,
                        per_io as u64,
                        IoFlags::default(),
                        record,
                        IoCtx::Word(100),
                    )
                    .unwrap();
                }
            });
        }
        let done = wait(&e.h, n as usize);
        assert_eq!(
            done.len(),
            n as usize,
            "writes {next}..{} stuck: {}",
            next + n,
            stats(&e.cache)
        );
        assert!(done.iter().all(|&(_, ok)| ok));
        next += n;
    }
    let st = stats(&e.cache);
    assert!(
        u(&st, "deferred_writes") > 0,
        "the cache never filled: {st}"
    );
    assert!(u(&st, "gc_runs") > 0, "{st}");
    assert!(u(&st, "gc_segments_freed") > 0, "{st}");
    assert_eq!(u(&st, "writes_deferred_now"), 0, "{st}");
    // Everything reads back through the cache (hits and misses alike) …
    for i in (0..ios).step_by(7) {
        let lba = i * per_io as u64;
        assert_eq!(
            read_n(&e.h, ch, lba, per_io),
            blocks(lba, per_io, 1).as_slice(),
            "lba {lba} through the cache"
        );
    }
    // … and from the origin alone once flushed.
    flush_all(&mut e.h, &e.cache);
    let (od, och) = open_on(&e.h, 0, &e.origin, false);
    for i in 0..ios {
        let lba = i * per_io as u64;
        assert_eq!(
            read_n(&e.h, &och, lba, per_io),
            blocks(lba, per_io, 1).as_slice(),
            "lba {lba} on the origin"
        );
    }
    drop((och, od, chans));
    e.teardown();
}

#[test]
fn gc_percent_zero_reclaims_down_to_the_minimum() {
    let mut e = env("gc2", 1, 0);
    let (d, ch) = open_on(&e.h, 0, "gc2_cache", true);
    // 6 MiB over 6 segments, some blocks twice.
    for i in 0..96u64 {
        write_on(&e.h, 0, &ch, i * 16, 16, 2);
    }
    for i in 0..16u64 {
        write_on(&e.h, 0, &ch, i * 16, 16, 3);
    }
    let before = stats(&e.cache);
    assert_eq!(lanes(&before), 1, "one thread, one lane: {before}");
    assert!(
        u(&before, "segments_used") >= lanes(&before) + 6,
        "{before}"
    );
    flush_all(&mut e.h, &e.cache);
    settle(&mut e.h);
    let st = stats(&e.cache);
    // Each lane's key segment, plus the writing lane's data head.
    assert!(u(&st, "segments_used") <= lanes(&st) + 1, "{st}");
    assert_eq!(u(&st, "segments_retiring"), 0, "{st}");
    assert_eq!(u(&st, "cached_bytes"), 0, "{st}");
    assert!(u(&st, "gc_keys") >= 112, "{st}");
    for (i, tail) in st["tails"].as_array().unwrap().iter().enumerate() {
        assert_eq!(tail["key_tail"], tail["dirty_tail"], "lane {i}: {st}");
    }
    // Everything now comes from the origin, correctly.
    for i in 0..96u64 {
        let tag = if i < 16 { 3 } else { 2 };
        assert_eq!(
            read_n(&e.h, &ch, i * 16, 16),
            blocks(i * 16, 16, tag).as_slice(),
            "lba {}",
            i * 16
        );
    }
    drop((ch, d));
    e.teardown();
}

#[test]
fn a_recently_read_extent_survives_a_gc_round_its_neighbours_do_not() {
    let mut e = env("gc3", 1, 0);
    let (d, ch) = open_on(&e.h, 0, "gc3_cache", true);
    for lba in 0..64u64 {
        write_on(&e.h, 0, &ch, lba, 1, 4);
    }
    // Read 10 and 20: REFERENCED in the index.
    assert_eq!(read_n(&e.h, &ch, 10, 1), blocks(10, 1, 4).as_slice());
    assert_eq!(read_n(&e.h, &ch, 20, 1), blocks(20, 1, 4).as_slice());
    flush_all(&mut e.h, &e.cache);
    e.h.poll_until_idle(100);
    let st = stats(&e.cache);
    assert!(u(&st, "gc_runs") >= 1, "{st}");
    assert_eq!(u(&st, "gc_second_chance_bytes"), 2 * BS as u64, "{st}");
    assert_eq!(u(&st, "cached_bytes"), 2 * BS as u64, "{st}");
    let (hits, misses) = (u(&st, "read_hits"), u(&st, "read_misses"));
    // The read blocks are still cached (hits), their neighbours come from the origin.
    assert_eq!(read_n(&e.h, &ch, 10, 1), blocks(10, 1, 4).as_slice());
    assert_eq!(read_n(&e.h, &ch, 20, 1), blocks(20, 1, 4).as_slice());
    let st = stats(&e.cache);
    assert_eq!(u(&st, "read_hits"), hits + 2, "{st}");
    assert_eq!(read_n(&e.h, &ch, 11, 1), blocks(11, 1, 4).as_slice());
    assert_eq!(read_n(&e.h, &ch, 19, 1), blocks(19, 1, 4).as_slice());
    let st = stats(&e.cache);
    assert_eq!(u(&st, "read_misses"), misses + 2, "{st}");
    // A write after the second chance wins over it, also after replay.
    write_on(&e.h, 0, &ch, 10, 1, 5);
    drop((ch, d));
    e.recreate();
    let (d, ch) = open_on(&e.h, 0, "gc3_cache", true);
    assert_eq!(read_n(&e.h, &ch, 10, 1), blocks(10, 1, 5).as_slice());
    assert_eq!(read_n(&e.h, &ch, 20, 1), blocks(20, 1, 4).as_slice());
    drop((ch, d));
    e.teardown();
}

#[test]
fn blocks_overwritten_across_gc_rounds_replay_as_their_newest_version() {
    // Two threads, two lanes whose key-sets interleave in seq.
    let mut e = env("gc4", 2, 0);
    let (d0, ch0) = open_on(&e.h, 0, "gc4_cache", true);
    let (d1, ch1) = open_on(&e.h, 1, "gc4_cache", true);
    let chans = [&ch0, &ch1];
    let (hot, warm) = (5u64, 7u64);
    for round in 0..8u64 {
        for k in 0..40u64 {
            let t = ((round + k) % 2) as usize;
            write_on(&e.h, t, chans[t], 1000 + round * 64 + k, 1, round);
            if k % 10 == 0 {
                write_on(&e.h, t, chans[t], hot, 1, round * 100 + k);
                write_on(&e.h, 1 - t, chans[1 - t], warm, 1, round * 100 + k);
            }
        }
        flush_all(&mut e.h, &e.cache);
        settle(&mut e.h);
    }
    let st = stats(&e.cache);
    assert!(u(&st, "gc_runs") >= 4, "{st}");
    assert!(
        u(&st, "gc_segments_freed") > 0 || u(&st, "gc_keys") > 0,
        "{st}"
    );
    // The newest versions: hot and warm written back (clean), then hot once more, dirty.
    let warm_tag = 7 * 100 + 30;
    write_on(&e.h, 1, &ch1, hot, 1, 9999);
    drop((ch0, d0, ch1, d1));
    e.recreate();
    let (d, ch) = open_on(&e.h, 0, "gc4_cache", true);
    assert_eq!(read_n(&e.h, &ch, hot, 1), blocks(hot, 1, 9999).as_slice());
    assert_eq!(
        read_n(&e.h, &ch, warm, 1),
        blocks(warm, 1, warm_tag).as_slice()
    );
    for round in 0..8u64 {
        for k in 0..40u64 {
            let lba = 1000 + round * 64 + k;
            assert_eq!(read_n(&e.h, &ch, lba, 1), blocks(lba, 1, round).as_slice());
        }
    }
    // GC on the replayed cache, a second replay, and the origin after a flush agree.
    for round in 0..3u64 {
        write_on(&e.h, 0, &ch, hot, 1, 20_000 + round);
        flush_all(&mut e.h, &e.cache);
        settle(&mut e.h);
    }
    drop((ch, d));
    e.recreate();
    let (d, ch) = open_on(&e.h, 0, "gc4_cache", true);
    assert_eq!(read_n(&e.h, &ch, hot, 1), blocks(hot, 1, 20_002).as_slice());
    assert_eq!(
        read_n(&e.h, &ch, warm, 1),
        blocks(warm, 1, warm_tag).as_slice()
    );
    flush_all(&mut e.h, &e.cache);
    let (od, och) = open_on(&e.h, 0, &e.origin, false);
    assert_eq!(
        read_n(&e.h, &och, hot, 1),
        blocks(hot, 1, 20_002).as_slice()
    );
    assert_eq!(
        read_n(&e.h, &och, warm, 1),
        blocks(warm, 1, warm_tag).as_slice()
    );
    drop((och, od, ch, d));
    e.teardown();
}
