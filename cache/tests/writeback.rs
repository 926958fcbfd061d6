//! Writeback under the deterministic harness: flush_start writes every dirty byte to the origin in
//! log order (newest version of each block, unmaps as zeroes), the written-back sequence survives
//! a delete + re-create, and origin errors are retried until everything is written.

mod common;
use common::{iov, record, unregister, wait};

use bdev::error_inject::rpc::{ErrorCreateParams, ErrorInjectParams, ErrorType, InjectIoType};
use bdev::malloc::{self, rpc::MallocCreateParams};
use bdev::{Bdev, BdevChannel, BdevDesc, DmaBuf, IoCtx, IoFlags};
use cache::instance::Cache;
use cache::params::CreateParams;
use cache::writeback::{SLOW_INTERVAL_US, Throttle, batch_interval_us};
use pmem::{Pmem, PmemFile};
use poller::Harness;
use std::sync::Arc;

const BS: usize = 4096;

fn block(tag: u64) -> DmaBuf {
    let mut b = DmaBuf::new(BS, 4096).unwrap();
    for (i, x) in b.as_mut_slice().iter_mut().enumerate() {
        *x = (tag.wrapping_mul(31).wrapping_add(i as u64 / 8)) as u8;
    }
    b
}

fn params(name: &str, cache: &str, origin: &str) -> CreateParams {
    serde_json::from_value(serde_json::json!({
        "name": name, "cache_bdev": cache, "origin_bdev": origin, "data_crc": true,
        "segment_size": 1 << 20
    }))
    .unwrap()
}

fn open(h: &Harness, name: &str, write: bool) -> (BdevDesc, BdevChannel) {
    let d = BdevDesc::open(name, write, |_| {}).unwrap();
    let ch = h.run_on(0, || d.get_io_channel().unwrap());
    (d, ch)
}

fn write(h: &Harness, ch: &BdevChannel, lba: u64, b: &DmaBuf) {
    h.run_on(0, || {
        ch.write(
            &[iov(b)],
            lba,
            1,
            IoFlags::default(),
            record,
            IoCtx::Word(1),
        )
        .unwrap()
    });
    assert_eq!(wait(h, 1), vec![(1, true)]);
}

fn unmap(h: &Harness, ch: &BdevChannel, lba: u64, n: u64) {
    h.run_on(0, || ch.unmap(lba, n, record, IoCtx::Word(2)).unwrap());
    assert_eq!(wait(h, 1), vec![(2, true)]);
}

fn read(h: &Harness, ch: &BdevChannel, lba: u64) -> Vec<u8> {
    let r = DmaBuf::new(BS, 4096).unwrap();
    h.run_on(0, || {
        ch.read(&[iov(&r)], lba, 1, record, IoCtx::Word(3)).unwrap()
    });
    assert_eq!(wait(h, 1), vec![(3, true)]);
    r.as_slice().to_vec()
}

fn stats(c: &Cache) -> serde_json::Value {
    cache::rpc::stats_json(c)
}

/// flush_start, then runs the threads (moving the clock for back-offs) until it is done.
fn flush_all(h: &mut Harness, c: &Cache) {
    h.run_on(0, || c.flush_start());
    for _ in 0..10_000 {
        h.poll_until_idle(100);
        let st = c.flush_status();
        if !st["in_progress"].as_bool().unwrap() {
            assert_eq!(st["dirty_bytes"], 0, "{st}");
            assert!(
                st["written_back_seq"].as_u64() >= st["target_seq"].as_u64(),
                "{st}"
            );
            return;
        }
        h.advance_us(1_000);
    }
    panic!("flush did not finish: {}", c.flush_status());
}

struct Env {
    h: Harness,
    pc: Option<Bdev>,
    cache: Arc<Cache>,
    /// The bdev the cache writes back to (the origin, or its error bdev).
    origin: String,
    others: Vec<Bdev>,
}

fn env(prefix: &str, with_error_bdev: bool) -> Env {
    env_on(
        prefix,
        with_error_bdev,
        Arc::new(PmemFile::anonymous(64 << 20).unwrap()),
    )
}

fn env_on(prefix: &str, with_error_bdev: bool, pm: Arc<dyn Pmem>) -> Env {
    let h = Harness::new(1);
    let pmem_name = format!("{prefix}_pmem");
    let pmem_bdev = bdev::pmem::create_with(&pmem_name, pm, 4096).unwrap();
    let base = format!("{prefix}_origin");
    let m = malloc::create(MallocCreateParams::new(&base, 4096, BS as u32)).unwrap();
    let mut others = vec![m, pmem_bdev];
    let origin = if with_error_bdev {
        let ee = bdev::error_inject::create(ErrorCreateParams::new(&base))
            .unwrap()
            .unwrap();
        let name = ee.name().to_string();
        others.insert(0, ee);
        name
    } else {
        base
    };
    let name = format!("{prefix}_cache");
    let pc = h.run_on(0, || {
        cache::vbdev::create(params(&name, &pmem_name, &origin)).unwrap()
    });
    let cache = cache::vbdev::cache_of(&pc).unwrap();
    Env {
        h,
        pc: Some(pc),
        cache,
        origin,
        others,
    }
}

impl Env {
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
fn flush_start_writes_every_dirty_block_to_the_origin() {
    let mut e = env("wb1", false);
    let (d, ch) = open(&e.h, "wb1_cache", true);
    let bufs: Vec<DmaBuf> = (0..40).map(block).collect();
    for (i, b) in bufs.iter().enumerate() {
        write(&e.h, &ch, 10 + 3 * i as u64, b);
    }
    assert_eq!(stats(&e.cache)["dirty_bytes"], 40 * BS as u64);
    flush_all(&mut e.h, &e.cache);
    let st = stats(&e.cache);
    assert_eq!(st["dirty_bytes"], 0, "{st}");
    assert_eq!(st["writeback_bytes"], 40 * BS as u64, "{st}");
    assert!(st["writeback_batches"].as_u64().unwrap() >= 1, "{st}");
    let (od, och) = open(&e.h, &e.origin, false);
    for (i, b) in bufs.iter().enumerate() {
        assert_eq!(
            read(&e.h, &och, 10 + 3 * i as u64),
            b.as_slice(),
            "block {i}"
        );
    }
    // Blocks never written are still the origin's zeroes.
    assert!(read(&e.h, &och, 11).iter().all(|&x| x == 0));
    // The cache still serves the (now clean) data.
    assert_eq!(read(&e.h, &ch, 10), bufs[0].as_slice());
    drop((och, od, ch, d));
    e.teardown();
}

#[test]
fn overwrites_across_and_within_batches_leave_the_newest_on_the_origin() {
    let mut e = env("wb2", false);
    let (d, ch) = open(&e.h, "wb2_cache", true);
    // Within one flush: 600 writes (several batches of at most 256 keys) over 7 blocks.
    for i in 0..600u64 {
        write(&e.h, &ch, 100 + i % 7, &block(i));
    }
    flush_all(&mut e.h, &e.cache);
    let st = stats(&e.cache);
    assert!(st["writeback_batches"].as_u64().unwrap() >= 3, "{st}");
    let (od, och) = open(&e.h, &e.origin, false);
    for b in 0..7u64 {
        let newest = (0..600u64).rev().find(|i| i % 7 == b).unwrap();
        assert_eq!(
            read(&e.h, &och, 100 + b),
            block(newest).as_slice(),
            "block {b}"
        );
    }
    // Across flushes: the same block again, flushed each time.
    for round in 0..3u64 {
        write(&e.h, &ch, 100, &block(10_000 + round));
        flush_all(&mut e.h, &e.cache);
        assert_eq!(read(&e.h, &och, 100), block(10_000 + round).as_slice());
    }
    assert_eq!(stats(&e.cache)["dirty_bytes"], 0);
    drop((och, od, ch, d));
    e.teardown();
}

#[test]
fn an_unmap_after_writes_reaches_the_origin_as_zeroes() {
    let mut e = env("wb3", false);
    let (d, ch) = open(&e.h, "wb3_cache", true);
    for i in 0..8u64 {
        write(&e.h, &ch, 200 + i, &block(i));
    }
    // Written back once, so the origin holds the data before the unmap comes.
    flush_all(&mut e.h, &e.cache);
    for i in 0..8u64 {
        write(&e.h, &ch, 200 + i, &block(100 + i));
    }
    unmap(&e.h, &ch, 202, 4);
    write(&e.h, &ch, 203, &block(999));
    assert!(read(&e.h, &ch, 202).iter().all(|&x| x == 0));
    flush_all(&mut e.h, &e.cache);
    assert_eq!(stats(&e.cache)["dirty_bytes"], 0);
    let (od, och) = open(&e.h, &e.origin, false);
    for i in 0..8u64 {
        let got = read(&e.h, &och, 200 + i);
        match i {
            3 => assert_eq!(got, block(999).as_slice()),
            2 | 4 | 5 => assert!(got.iter().all(|&x| x == 0), "block {i}"),
            _ => assert_eq!(got, block(100 + i).as_slice(), "block {i}"),
        }
    }
    // Reads through the cache agree.
    assert!(read(&e.h, &ch, 204).iter().all(|&x| x == 0));
    assert_eq!(read(&e.h, &ch, 203), block(999).as_slice());
    drop((och, od, ch, d));
    e.teardown();
}

#[test]
fn written_back_keys_are_clean_after_delete_and_re_create() {
    let mut e = env("wb4", false);
    let (d, ch) = open(&e.h, "wb4_cache", true);
    for i in 0..20u64 {
        write(&e.h, &ch, 300 + i, &block(i));
    }
    unmap(&e.h, &ch, 305, 2);
    flush_all(&mut e.h, &e.cache);
    // Some dirty data after the flush stays dirty.
    write(&e.h, &ch, 400, &block(77));
    let wb_seq = stats(&e.cache)["written_back_seq"].as_u64().unwrap();
    assert!(wb_seq > 0);
    drop((ch, d));
    unregister(&e.h, e.pc.take().unwrap());
    let pc = e.h.run_on(0, || {
        cache::vbdev::create(params("wb4_cache", "wb4_pmem", &e.origin)).unwrap()
    });
    let c = cache::vbdev::cache_of(&pc).unwrap();
    let st = stats(&c);
    assert_eq!(st["written_back_seq"].as_u64().unwrap(), wb_seq, "{st}");
    assert_eq!(
        st["dirty_bytes"], BS as u64,
        "only block 400 is dirty: {st}"
    );
    let (d, ch) = open(&e.h, "wb4_cache", true);
    for i in 0..20u64 {
        let got = read(&e.h, &ch, 300 + i);
        if i == 5 || i == 6 {
            assert!(got.iter().all(|&x| x == 0), "block {i}");
        } else {
            assert_eq!(got, block(i).as_slice(), "block {i}");
        }
    }
    assert_eq!(read(&e.h, &ch, 400), block(77).as_slice());
    flush_all(&mut e.h, &c);
    let (od, och) = open(&e.h, &e.origin, false);
    assert_eq!(read(&e.h, &och, 400), block(77).as_slice());
    drop((och, od, ch, d));
    e.pc = Some(pc);
    e.teardown();
}

#[test]
fn origin_write_failures_are_retried_until_everything_is_written() {
    let mut e = env("wb5", true);
    let (d, ch) = open(&e.h, "wb5_cache", true);
    let bufs: Vec<DmaBuf> = (0..10).map(|i| block(500 + i)).collect();
    for (i, b) in bufs.iter().enumerate() {
        write(&e.h, &ch, 50 + i as u64, b);
    }
    bdev::error_inject::inject_error(&ErrorInjectParams::new(
        &e.origin,
        InjectIoType::Write,
        ErrorType::Failure,
        3,
    ))
    .unwrap();
    flush_all(&mut e.h, &e.cache);
    let st = stats(&e.cache);
    assert_eq!(st["origin_errors"], 3, "{st}");
    assert_eq!(st["dirty_bytes"], 0, "{st}");
    let (od, och) = open(&e.h, &e.origin, false);
    for (i, b) in bufs.iter().enumerate() {
        assert_eq!(read(&e.h, &och, 50 + i as u64), b.as_slice(), "block {i}");
    }
    drop((och, od, ch, d));
    e.teardown();
}

#[test]
fn without_a_flush_writeback_waits_for_its_interval() {
    let mut e = env("wb6", false);
    let (d, ch) = open(&e.h, "wb6_cache", true);
    write(&e.h, &ch, 1, &block(1));
    // The key is sealed by a FLUSH; no time passes, so no batch runs.
    e.h.run_on(0, || ch.flush(0, 4096, record, IoCtx::Word(9)).unwrap());
    assert_eq!(wait(&e.h, 1), vec![(9, true)]);
    e.h.poll_until_idle(100);
    assert_eq!(stats(&e.cache)["dirty_bytes"], BS as u64);
    // After the slow interval (the target is 0: everything is over it) a batch runs.
    e.h.advance_us(SLOW_INTERVAL_US + 1);
    e.h.poll_until_idle(100);
    let st = stats(&e.cache);
    assert_eq!(st["dirty_bytes"], 0, "{st}");
    assert_eq!(st["writeback_batches"], 1, "{st}");
    drop((ch, d));
    e.teardown();
}

#[test]
fn the_controller_pauses_less_the_further_dirty_data_is_over_the_target() {
    let base = Throttle {
        dirty_bytes: 0,
        capacity_bytes: 1000 << 20,
        target_percent: 10,
        ..Default::default()
    };
    let at = |dirty: u64| {
        batch_interval_us(&Throttle {
            dirty_bytes: dirty << 20,
            ..base
        })
    };
    assert_eq!(at(0), SLOW_INTERVAL_US);
    assert_eq!(at(100), SLOW_INTERVAL_US);
    assert!(at(200) < SLOW_INTERVAL_US);
    assert!(at(500) < at(200));
    assert_eq!(at(1000), 0);
    assert_eq!(
        batch_interval_us(&Throttle {
            dirty_bytes: 0,
            idle: true,
            ..base
        }),
        0
    );
    assert_eq!(
        batch_interval_us(&Throttle {
            flushing: true,
            ..base
        }),
        0
    );
    // 8 MiB at 80 MiB/s: at least 100 ms, even when idle.
    assert_eq!(
        batch_interval_us(&Throttle {
            idle: true,
            rate_limit: 80 << 20,
            last_batch_bytes: 8 << 20,
            ..base
        }),
        100_000
    );
}

/// Dirty data whose bytes no longer match their crc is never written to the origin: writeback
/// stops before it (counted), the blocks before it in the log are written back, and the damaged
/// block stays dirty. On a mapped cache (written back in place) and on one that is not (the
/// bounce buffer) alike.
#[test]
fn damaged_dirty_data_is_never_written_back() {
    let mapped: Arc<dyn Pmem> = Arc::new(PmemFile::anonymous(64 << 20).unwrap());
    let unmapped: Arc<dyn Pmem> = Arc::new(pmem::CrashPmem::new(64 << 20));
    for (prefix, pm) in [("wbcm", mapped), ("wbcu", unmapped)] {
        let mut e = env_on(prefix, false, pm.clone());
        let (d, ch) = open(&e.h, &format!("{prefix}_cache"), true);
        for lba in 0..6u64 {
            write(&e.h, &ch, lba, &block(lba + 40));
        }
        let mut pos = None;
        e.cache.index().lookup(3, 1, |p| {
            if let cache::index::Piece::Hit(x) = p {
                pos = Some(x.pos);
            }
        });
        let at = e.cache.pos_offset(pos.expect("cached")) + 99;
        let mut b = [0u8; 1];
        pm.read(at, &mut b).unwrap();
        pm.write(at, &[b[0] ^ 0x5a]).unwrap();
        e.h.run_on(0, || e.cache.flush_start());
        for _ in 0..200 {
            e.h.poll_until_idle(100);
            e.h.advance_us(1_000);
        }
        let st = stats(&e.cache);
        assert_eq!(st["crc_errors"], 1, "{prefix}: {st}");
        assert_eq!(
            st["dirty_bytes"],
            3 * BS as u64,
            "{prefix}: blocks 3..6 stay dirty: {st}"
        );
        let (od, och) = open(&e.h, &format!("{prefix}_origin"), false);
        for lba in 0..3u64 {
            assert_eq!(
                read(&e.h, &och, lba),
                block(lba + 40).as_slice(),
                "{prefix} {lba}"
            );
        }
        assert_eq!(
            read(&e.h, &och, 3),
            vec![0u8; BS],
            "{prefix}: damaged data not written"
        );
        drop((och, od, ch, d));
        e.teardown();
    }
}
