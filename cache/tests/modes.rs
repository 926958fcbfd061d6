//! Cache modes and what the cache admits, under the deterministic harness (a 32 MiB pmem cache in
//! 1 MiB segments over a malloc origin): writethrough, writearound and passthrough put writes on
//! the origin before they complete; writearound's invalidation survives a restart; leaving
//! writeback cleans the dirty data while writes to still-dirty blocks keep their order; unmap
//! goes to the origin outside writeback; the sequential cutoff and the promotion threshold keep
//! reads out of the cache; set_options checks its values and reset_stats zeroes the counters.

mod common;
use common::{iov, record, unregister, wait};

use bdev::malloc::{self, rpc::MallocCreateParams};
use bdev::{Bdev, BdevChannel, BdevDesc, DmaBuf, IoCtx, IoFlags};
use cache::instance::Cache;
use cache::params::{CacheMode, CreateParams, SetOptionsParams};
use pmem::{Pmem, PmemFile};
use poller::Harness;
use std::sync::Arc;

const BS: usize = 4096;
const ORIGIN_BLOCKS: u64 = 4096;

fn block_of(lba: u64, tag: u8) -> Vec<u8> {
    let mut b = vec![tag; BS];
    b[..8].copy_from_slice(&lba.to_le_bytes());
    b
}

fn buf_of(lba: u64, n: usize, tag: u8) -> DmaBuf {
    let mut b = DmaBuf::new(n * BS, 4096).unwrap();
    for (i, c) in b.as_mut_slice().chunks_mut(BS).enumerate() {
        c.copy_from_slice(&block_of(lba + i as u64, tag));
    }
    b
}

struct Env {
    h: Harness,
    pc: Option<Bdev>,
    cache: Arc<Cache>,
    params: CreateParams,
    desc: Option<(BdevDesc, BdevChannel)>,
    origin: (BdevDesc, BdevChannel),
    others: Vec<Bdev>,
}

fn env(prefix: &str, extra: serde_json::Value) -> Env {
    let h = Harness::new(1);
    let pm: Arc<dyn Pmem> = Arc::new(PmemFile::anonymous(32 << 20).unwrap());
    let pmem_name = format!("{prefix}_pmem");
    let pmem_bdev = bdev::pmem::create_with(&pmem_name, pm, 4096).unwrap();
    let origin = format!("{prefix}_origin");
    let m = malloc::create(MallocCreateParams::new(&origin, ORIGIN_BLOCKS, BS as u32)).unwrap();
    let mut v = serde_json::json!({
        "name": format!("{prefix}_cache"), "cache_bdev": pmem_name, "origin_bdev": origin,
        "data_crc": true, "segment_size": 1 << 20
    });
    v.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let params: CreateParams = serde_json::from_value(v).unwrap();
    let pc = h.run_on(0, || cache::vbdev::create(params.clone()).unwrap());
    let cache = cache::vbdev::cache_of(&pc).unwrap();
    let desc = Some(open(&h, &params.name, true));
    let origin = open(&h, &origin, false);
    Env {
        h,
        pc: Some(pc),
        cache,
        params,
        desc,
        origin,
        others: vec![m, pmem_bdev],
    }
}

fn open(h: &Harness, name: &str, write: bool) -> (BdevDesc, BdevChannel) {
    let d = BdevDesc::open(name, write, |_| {}).unwrap();
    let ch = h.run_on(0, || d.get_io_channel().unwrap());
    (d, ch)
}

impl Env {
    fn ch(&self) -> &BdevChannel {
        &self.desc.as_ref().unwrap().1
    }

    fn write(&self, lba: u64, n: usize, tag: u8) {
        let b = buf_of(lba, n, tag);
        let ch = self.ch();
        self.h.run_on(0, || {
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
        assert_eq!(wait(&self.h, 1), vec![(1, true)], "write {lba}+{n}");
    }

    fn read_from(&self, ch: &BdevChannel, lba: u64, n: usize) -> Vec<u8> {
        let r = DmaBuf::new(n * BS, 4096).unwrap();
        self.h.run_on(0, || {
            ch.read(&[iov(&r)], lba, n as u64, record, IoCtx::Word(2))
                .unwrap()
        });
        assert_eq!(wait(&self.h, 1), vec![(2, true)], "read {lba}+{n}");
        r.as_slice().to_vec()
    }

    fn read(&self, lba: u64, n: usize) -> Vec<u8> {
        self.read_from(self.ch(), lba, n)
    }

    fn origin_read(&self, lba: u64, n: usize) -> Vec<u8> {
        self.read_from(&self.origin.1, lba, n)
    }

    fn stats(&self) -> serde_json::Value {
        cache::rpc::stats_json(&self.cache)
    }

    fn stat(&self, k: &str) -> u64 {
        let st = self.stats();
        st[k].as_u64().unwrap_or_else(|| panic!("{k} in {st}"))
    }

    fn set(&self, v: serde_json::Value) {
        let mut o = serde_json::json!({ "name": self.params.name });
        o.as_object_mut()
            .unwrap()
            .extend(v.as_object().unwrap().clone());
        let o: SetOptionsParams = serde_json::from_value(o).unwrap();
        self.cache.set_options(&o).unwrap();
    }

    /// Runs the threads with the clock moving, so that background work due (the origin flush
    /// after writes around the cache, which read misses wait for before they are cached) runs.
    fn settle(&mut self) {
        for _ in 0..5 {
            self.h.poll_until_idle(100);
            self.h.advance_us(2_000);
        }
    }

    /// Runs the threads, moving the clock, until writeback has cleaned everything.
    fn until_clean(&mut self) {
        for _ in 0..10_000 {
            self.h.poll_until_idle(100);
            if self.stat("dirty_bytes") == 0 {
                return;
            }
            self.h.advance_us(1_000);
        }
        panic!("dirty data stays: {}", self.stats());
    }

    /// Deletes the cache bdev and creates it again with the same parameters (replay).
    fn recreate(&mut self) {
        self.desc = None;
        unregister(&self.h, self.pc.take().unwrap());
        let p = self.params.clone();
        let pc = self.h.run_on(0, || cache::vbdev::create(p).unwrap());
        self.cache = cache::vbdev::cache_of(&pc).unwrap();
        self.pc = Some(pc);
        self.desc = Some(open(&self.h, &self.params.name, true));
    }

    fn teardown(mut self) {
        self.desc = None;
        if let Some(pc) = self.pc.take() {
            unregister(&self.h, pc);
        }
        let Env {
            h, others, origin, ..
        } = self;
        drop(origin);
        for b in others {
            unregister(&h, b);
        }
    }
}

#[test]
fn writethrough_puts_writes_on_the_origin_and_keeps_a_clean_copy() {
    let e = env("mwt", serde_json::json!({"mode": "writethrough"}));
    e.write(10, 4, 7);
    assert_eq!(e.origin_read(10, 4), buf_of(10, 4, 7).as_slice());
    assert_eq!(e.stat("dirty_bytes"), 0);
    assert_eq!(e.stat("cached_bytes"), 4 * BS as u64);
    assert_eq!(e.read(10, 4), buf_of(10, 4, 7).as_slice());
    assert_eq!((e.stat("read_hits"), e.stat("read_misses")), (1, 0));
    // Overwritten: the origin and the cached copy both move on.
    e.write(11, 1, 8);
    assert_eq!(e.origin_read(11, 1), block_of(11, 8));
    assert_eq!(e.read(11, 1), block_of(11, 8));
    assert_eq!(e.stat("read_hits"), 2);
    assert_eq!(e.stat("bytes_written_origin"), 5 * BS as u64);
    e.teardown();
}

#[test]
fn writearound_drops_the_cached_copy_and_the_drop_survives_a_restart() {
    let mut e = env("mwa", serde_json::json!({"mode": "writearound"}));
    e.write(20, 2, 1);
    assert_eq!(e.stat("cached_bytes"), 0, "writearound caches no write");
    assert_eq!(e.origin_read(20, 2), buf_of(20, 2, 1).as_slice());
    // A read miss caches the blocks (as clean), the next read hits.
    assert_eq!(e.read(20, 2), buf_of(20, 2, 1).as_slice());
    assert_eq!(e.stat("cached_bytes"), 2 * BS as u64);
    assert_eq!(e.read(20, 2), buf_of(20, 2, 1).as_slice());
    assert_eq!(e.stat("read_hits"), 1);
    // A new write goes around and the stale copy goes.
    e.write(20, 2, 2);
    assert_eq!(e.stat("cached_bytes"), 0);
    assert_eq!(e.stat("bytes_invalidated"), 2 * BS as u64);
    assert_eq!(e.read(20, 2), buf_of(20, 2, 2).as_slice());
    // Cached again, then written around once more, then the cache restarts: replay must not
    // bring back the copy the last write made stale.
    e.write(20, 2, 3);
    e.recreate();
    assert_eq!(e.read(20, 2), buf_of(20, 2, 3).as_slice());
    e.teardown();
}

#[test]
fn passthrough_caches_nothing() {
    let e = env("mpt", serde_json::json!({"mode": "passthrough"}));
    e.write(5, 3, 4);
    assert_eq!(e.origin_read(5, 3), buf_of(5, 3, 4).as_slice());
    for _ in 0..2 {
        assert_eq!(e.read(5, 3), buf_of(5, 3, 4).as_slice());
    }
    let st = e.stats();
    assert_eq!(
        (&st["read_misses"], &st["read_hits"]),
        (&2.into(), &0.into())
    );
    assert_eq!(st["cached_bytes"], 0);
    assert_eq!(st["bytes_promoted"], 0);
    e.teardown();
}

#[test]
fn leaving_writeback_cleans_and_keeps_the_order_of_writes_to_dirty_blocks() {
    let mut e = env("mlv", serde_json::json!({"writeback_rate_limit": 4096}));
    // Dirty data that writeback (limited to 4 KiB/s) will not clean by itself soon.
    for i in 0..8 {
        e.write(100 + i * 4, 4, 1);
    }
    assert!(e.stat("dirty_bytes") > 0);
    e.set(serde_json::json!({"mode": "writethrough", "writeback_rate_limit": 0}));
    assert_eq!(e.stats()["mode"], "writethrough");
    // Still dirty in the cache: this write goes through the log, after the older one.
    e.write(100, 1, 9);
    assert_eq!(e.read(100, 1), block_of(100, 9));
    // A block that was never dirty goes straight to the origin.
    e.write(500, 1, 9);
    assert_eq!(e.origin_read(500, 1), block_of(500, 9));
    e.until_clean();
    assert_eq!(
        e.origin_read(100, 1),
        block_of(100, 9),
        "the newer write won"
    );
    assert_eq!(e.origin_read(101, 3), buf_of(101, 3, 1).as_slice());
    assert_eq!(e.cache.mode(), CacheMode::Writethrough);
    // Written through from now on, the origin has it at completion.
    e.write(100, 1, 10);
    assert_eq!(e.origin_read(100, 1), block_of(100, 10));
    assert_eq!(e.stat("dirty_bytes"), 0);
    // save_config and the next create see the new mode.
    assert_eq!(e.cache.params().mode, CacheMode::Writethrough);
    e.teardown();
}

#[test]
fn write_zeroes_outside_writeback_reaches_the_origin_at_once() {
    let e = env("mwz", serde_json::json!({"mode": "writethrough"}));
    e.write(40, 4, 6);
    assert_eq!(e.stat("cached_bytes"), 4 * BS as u64);
    let ch = e.ch();
    e.h.run_on(0, || {
        ch.write_zeroes(41, 2, record, IoCtx::Word(3)).unwrap();
    });
    assert_eq!(wait(&e.h, 1), vec![(3, true)]);
    let zero = vec![0u8; 2 * BS];
    assert_eq!(e.origin_read(41, 2), zero);
    assert_eq!(e.read(41, 2), zero);
    assert_eq!(e.read(40, 1), block_of(40, 6));
    assert_eq!(e.read(43, 1), block_of(43, 6));
    assert_eq!(e.stat("dirty_bytes"), 0);
    e.teardown();
}

#[test]
fn a_sequential_stream_past_the_cutoff_bypasses_the_cache() {
    let mut e = env("msc", serde_json::json!({"sequential_cutoff": 16 * BS}));
    // One write of 64 blocks is a stream past the cutoff by itself: around the cache.
    e.write(200, 64, 2);
    assert_eq!(e.stat("dirty_bytes"), 0);
    assert_eq!(e.origin_read(200, 64), buf_of(200, 64, 2).as_slice());
    for lba in 0..64 {
        e.write(lba, 1, 2);
    }
    // The first 16 blocks of the stream were cached as dirty; the rest went to the origin.
    e.settle();
    assert_eq!(e.stat("dirty_bytes"), 16 * BS as u64);
    assert_eq!(e.origin_read(16, 48), buf_of(16, 48, 2).as_slice());
    // Reads: a stream of 64 one-block reads promotes its first 16 only (they are hits) …
    for lba in 1000..1064 {
        assert_eq!(e.read(lba, 1), vec![0u8; BS]);
    }
    assert_eq!(e.stat("bytes_promoted"), 16 * BS as u64);
    assert_eq!(e.stat("sequential_bypassed"), 1 + 48 + 48);
    // … while random reads are cached as usual.
    e.read(3000, 1);
    assert_eq!(e.stat("bytes_promoted"), 17 * BS as u64);
    e.teardown();
}

#[test]
fn the_promotion_threshold_caches_a_range_on_its_nth_miss() {
    let e = env("mpr", serde_json::json!({"promotion_threshold": 3}));
    for _ in 0..2 {
        e.read(2000, 1);
    }
    assert_eq!(e.stat("bytes_promoted"), 0);
    e.read(2000, 1);
    assert_eq!(e.stat("bytes_promoted"), BS as u64);
    e.read(2000, 1);
    assert_eq!(e.stat("read_hits"), 1);
    e.teardown();
}

#[test]
fn set_options_checks_values_and_reset_stats_zeroes_counters() {
    let e = env("mso", serde_json::json!({}));
    let bad = |v: serde_json::Value| {
        let mut o = serde_json::json!({ "name": e.params.name });
        o.as_object_mut()
            .unwrap()
            .extend(v.as_object().unwrap().clone());
        let o: SetOptionsParams = serde_json::from_value(o).unwrap();
        let err = e.cache.set_options(&o).unwrap_err();
        assert_eq!(err.errno(), libc::EINVAL, "{err}");
        err.to_string()
    };
    assert!(bad(serde_json::json!({"gc_percent": 91})).contains("gc_percent"));
    assert!(
        bad(serde_json::json!({"writeback_dirty_target": 101})).contains("writeback_dirty_target")
    );
    assert_eq!(e.cache.mode(), CacheMode::Writeback, "nothing changed");
    e.set(serde_json::json!({"gc_percent": 20, "promotion_threshold": 4}));
    let st = e.stats();
    assert_eq!(
        (&st["gc_percent"], &st["promotion_threshold"]),
        (&20.into(), &4.into())
    );
    e.write(1, 1, 1);
    e.read(1, 1);
    assert_eq!(e.stat("read_hits"), 1);
    e.cache.stats().reset();
    let st = e.stats();
    assert_eq!(st["read_hits"], 0);
    assert_eq!(st["bytes_written_cache"], 0);
    assert_eq!(st["dirty_bytes"], BS as u64, "state is not a counter");
    e.teardown();
}
