//! The pcache bdev end to end under the deterministic harness: writes and reads through the cache,
//! misses served from the origin, FLUSH, and the data surviving delete + re-create (replay).

mod common;
use common::{iov, record, unregister, wait};

use bdev::malloc::{self, rpc::MallocCreateParams};
use bdev::{Bdev, BdevChannel, BdevDesc, DmaBuf, IoCtx, IoFlags};
use cache::params::CreateParams;
use pmem::{Pmem, PmemFile};
use poller::Harness;
use std::sync::Arc;

fn block(tag: u64) -> DmaBuf {
    let mut b = DmaBuf::new(4096, 4096).unwrap();
    for (i, x) in b.as_mut_slice().iter_mut().enumerate() {
        *x = (tag.wrapping_mul(31).wrapping_add(i as u64 / 8)) as u8;
    }
    b
}

fn params(name: &str, cache: &str, origin: &str) -> CreateParams {
    serde_json::from_value(serde_json::json!({
        "name": name, "cache_bdev": cache, "origin_bdev": origin, "data_crc": true, "segment_size": 1 << 20
    }))
    .unwrap()
}

fn open(h: &Harness, name: &str) -> (BdevDesc, BdevChannel) {
    let d = BdevDesc::open(name, true, |_| {}).unwrap();
    let ch = h.run_on(0, || d.get_io_channel().unwrap());
    (d, ch)
}

#[test]
fn written_data_reads_back_before_and_after_reattach() {
    let h = Harness::new(1);
    let pm: Arc<dyn Pmem> = Arc::new(PmemFile::anonymous(64 << 20).unwrap());
    bdev::pmem::create_with("vb_pmem", pm.clone(), 4096).unwrap();
    let origin = malloc::create(MallocCreateParams::new("vb_origin", 4096, 4096)).unwrap();
    // The origin starts with a known pattern so misses are recognisable.
    {
        let (d, ch) = open(&h, "vb_origin");
        let bufs: Vec<DmaBuf> = (0..16).map(|i| block(1000 + i)).collect();
        h.run_on(0, || {
            for (i, b) in bufs.iter().enumerate() {
                ch.write(
                    &[iov(b)],
                    i as u64,
                    1,
                    IoFlags::default(),
                    record,
                    IoCtx::Word(i),
                )
                .unwrap();
            }
        });
        assert!(wait(&h, 16).iter().all(|(_, ok)| *ok));
        drop((ch, d));
    }
    let pc = h.run_on(0, || {
        cache::vbdev::create(params("vb_cache", "vb_pmem", "vb_origin")).unwrap()
    });
    assert_eq!(pc.num_blocks(), 4096);
    let (d, ch) = open(&h, "vb_cache");
    // Misses come from the origin.
    let r = DmaBuf::new(4096, 4096).unwrap();
    h.run_on(0, || {
        ch.read(&[iov(&r)], 3, 1, record, IoCtx::Word(1)).unwrap()
    });
    assert_eq!(wait(&h, 1), vec![(1, true)]);
    assert_eq!(r.as_slice(), block(1003).as_slice());
    // Writes of 1 and 8 blocks, one FUA, then a FLUSH.
    let w: Vec<DmaBuf> = (0..32).map(block).collect();
    h.run_on(0, || {
        for (i, b) in w.iter().enumerate() {
            let flags = IoFlags { fua: i == 5 };
            ch.write(
                &[iov(b)],
                100 + 7 * i as u64,
                1,
                flags,
                record,
                IoCtx::Word(i),
            )
            .unwrap();
        }
    });
    assert!(wait(&h, 32).iter().all(|(_, ok)| *ok));
    h.run_on(0, || ch.flush(0, 4096, record, IoCtx::Word(99)).unwrap());
    assert_eq!(wait(&h, 1), vec![(99, true)]);
    let check = |ch: &BdevChannel| {
        let r = DmaBuf::new(4096, 4096).unwrap();
        for (i, b) in w.iter().enumerate() {
            h.run_on(0, || {
                ch.read(&[iov(&r)], 100 + 7 * i as u64, 1, record, IoCtx::Word(i))
                    .unwrap()
            });
            assert_eq!(wait(&h, 1), vec![(i, true)]);
            assert_eq!(r.as_slice(), b.as_slice(), "block {i}");
        }
    };
    check(&ch);
    // A read spanning a hit and misses on both sides.
    let big = DmaBuf::new(3 * 4096, 4096).unwrap();
    h.run_on(0, || {
        ch.read(&[iov(&big)], 99, 3, record, IoCtx::Word(7))
            .unwrap()
    });
    assert_eq!(wait(&h, 1), vec![(7, true)]);
    assert_eq!(&big.as_slice()[4096..8192], w[0].as_slice());
    let stats = cache::rpc::stats_json(&cache::vbdev::cache_of(&pc).unwrap());
    assert!(stats["read_partial_hits"].as_u64().unwrap() >= 1, "{stats}");
    assert_eq!(stats["dirty_bytes"].as_u64().unwrap(), 32 * 4096, "{stats}");
    drop((ch, d));
    unregister(&h, pc);

    // Re-create over the same pmem: the log replays, the data is there, still dirty.
    let pc = h.run_on(0, || {
        cache::vbdev::create(params("vb_cache", "vb_pmem", "vb_origin")).unwrap()
    });
    let (d, ch) = open(&h, "vb_cache");
    check(&ch);
    let stats = cache::rpc::stats_json(&cache::vbdev::cache_of(&pc).unwrap());
    assert_eq!(stats["dirty_bytes"].as_u64().unwrap(), 32 * 4096, "{stats}");
    drop((ch, d));
    unregister(&h, pc);
    unregister(&h, origin);
    unregister(&h, Bdev::lookup("vb_pmem").unwrap());
}

#[test]
fn a_cache_formatted_for_another_origin_is_refused_without_format() {
    let h = Harness::new(1);
    let pm: Arc<dyn Pmem> = Arc::new(PmemFile::anonymous(64 << 20).unwrap());
    bdev::pmem::create_with("mm_pmem", pm, 4096).unwrap();
    let a = malloc::create(MallocCreateParams::new("mm_a", 1024, 4096)).unwrap();
    let b = malloc::create(MallocCreateParams::new("mm_b", 1024, 4096)).unwrap();
    let pc = h.run_on(0, || {
        cache::vbdev::create(params("mm_cache", "mm_pmem", "mm_a")).unwrap()
    });
    unregister(&h, pc);
    let e = h.run_on(0, || {
        cache::vbdev::create(params("mm_cache", "mm_pmem", "mm_b")).unwrap_err()
    });
    assert_eq!(e.errno(), libc::EINVAL);
    assert!(e.to_string().contains("format"), "{e}");
    let mut p = params("mm_cache", "mm_pmem", "mm_b");
    p.format = true;
    let pc = h.run_on(0, || cache::vbdev::create(p).unwrap());
    unregister(&h, pc);
    unregister(&h, a);
    unregister(&h, b);
    unregister(&h, Bdev::lookup("mm_pmem").unwrap());
}

#[test]
fn another_origin_is_told_the_recorded_uuid_and_the_dirty_bytes_and_format_needs_force() {
    let h = Harness::new(1);
    let pm: Arc<dyn Pmem> = Arc::new(PmemFile::anonymous(64 << 20).unwrap());
    bdev::pmem::create_with("od_pmem", pm, 4096).unwrap();
    let a = malloc::create(MallocCreateParams::new("od_a", 1024, 4096)).unwrap();
    let b = malloc::create(MallocCreateParams::new("od_b", 1024, 4096)).unwrap();
    let pc = h.run_on(0, || {
        cache::vbdev::create(params("od_cache", "od_pmem", "od_a")).unwrap()
    });
    // Three dirty blocks for od_a, kept in pmem at delete.
    let (d, ch) = open(&h, "od_cache");
    let w = block(5);
    h.run_on(0, || {
        for (i, lba) in [1u64, 7, 8].into_iter().enumerate() {
            ch.write(
                &[iov(&w)],
                lba,
                1,
                IoFlags::default(),
                record,
                IoCtx::Word(i),
            )
            .unwrap();
        }
    });
    assert!(wait(&h, 3).iter().all(|(_, ok)| *ok));
    drop((ch, d));
    unregister(&h, pc);

    let e = h.run_on(0, || {
        cache::vbdev::create(params("od_cache", "od_pmem", "od_b")).unwrap_err()
    });
    let msg = e.to_string();

    assert_eq!(e.errno(), libc::EINVAL, "{msg}");
    assert!(
        msg.contains(&a.uuid().to_string()),
        "names the recorded uuid: {msg}"
    );
    assert!(msg.contains("\"uuid\""), "says how to keep it: {msg}");
    assert!(msg.contains(&format!("{} dirty bytes", 3 * 4096)), "{msg}");
    assert!(msg.contains("\"force\""), "{msg}");

    // format alone would lose them: refused, and the cache is untouched.
    let mut p = params("od_cache", "od_pmem", "od_b");
    p.format = true;
    let e = h.run_on(0, || cache::vbdev::create(p.clone()).unwrap_err());
    assert_eq!(e.errno(), libc::EBUSY, "{e}");

    assert!(
        e.to_string().contains(&format!("{} dirty bytes", 3 * 4096)),
        "{e}"
    );
    let pc = h.run_on(0, || {
        cache::vbdev::create(params("od_cache", "od_pmem", "od_a")).unwrap()
    });
    let st = cache::rpc::stats_json(&cache::vbdev::cache_of(&pc).unwrap());
    assert_eq!(st["dirty_bytes"], 3 * 4096, "still there for od_a: {st}");
    unregister(&h, pc);

    // force alone means nothing; with format it formats for od_b.
    let mut f = params("od_cache", "od_pmem", "od_b");
    f.force = true;
    let e = h.run_on(0, || cache::vbdev::create(f.clone()).unwrap_err());
    assert_eq!(e.errno(), libc::EINVAL, "{e}");
    p.force = true;
    let pc = h.run_on(0, || cache::vbdev::create(p).unwrap());
    let st = cache::rpc::stats_json(&cache::vbdev::cache_of(&pc).unwrap());
    assert_eq!(st["dirty_bytes"], 0, "{st}");
    // Neither is saved: a restart reattaches.
    let saved = pc.ops().write_config_json().unwrap();
    assert!(saved["params"].get("format").is_none(), "{saved}");
    assert!(saved["params"].get("force").is_none(), "{saved}");
    unregister(&h, pc);
    unregister(&h, a);
    unregister(&h, b);
    unregister(&h, Bdev::lookup("od_pmem").unwrap());
}

#[test]
fn an_empty_cache_holds_no_data_and_lanes_take_key_space_only_when_used() {
    let h = Harness::new(2);
    // The demo's cache: 256 MiB in 8 MiB segments.
    let pm: Arc<dyn Pmem> = Arc::new(PmemFile::anonymous(256 << 20).unwrap());
    bdev::pmem::create_with("oc_pmem", pm, 4096).unwrap();
    let origin = malloc::create(MallocCreateParams::new("oc_origin", 4096, 4096)).unwrap();
    let p: CreateParams = serde_json::from_value(serde_json::json!({
        "name": "oc_cache", "cache_bdev": "oc_pmem", "origin_bdev": "oc_origin"
    }))
    .unwrap();
    let pc = h.run_on(0, || cache::vbdev::create(p.clone()).unwrap());
    let c = cache::vbdev::cache_of(&pc).unwrap();
    let st = cache::rpc::stats_json(&c);
    let seg = st["segments_total"].as_f64().unwrap();
    assert_eq!(st["data_occupancy_percent"], 0.0, "{st}");
    assert_eq!(st["segments_key"], 1, "one lane at format: {st}");
    assert_eq!(
        st["occupancy_percent"].as_f64().unwrap(),
        100.0 / seg,
        "{st}"
    );
    assert_eq!(
        st["metadata_bytes"].as_u64().unwrap(),
        c.layout().segment_base() + u64::from(c.layout().segment_size()),
        "{st}"
    );
    // Writers on two threads: a second lane, with its own key segment, when the second comes.
    let d = BdevDesc::open("oc_cache", true, |_| {}).unwrap();
    let chans: Vec<BdevChannel> = (0..2)
        .map(|t| h.run_on(t, || d.get_io_channel().unwrap()))
        .collect();
    let w = block(3);
    for (t, ch) in chans.iter().enumerate() {
        h.run_on(t, || {
            ch.write(
                &[iov(&w)],
                t as u64,
                1,
                IoFlags::default(),
                record,
                IoCtx::Word(t),
            )
            .unwrap()
        });
    }
    let mut done = Vec::new();
    for _ in 0..1000 {
        h.poll_until_idle(10);
        done.extend(common::take_done());
        if done.len() == 2 {
            break;
        }
    }
    assert_eq!(done.len(), 2, "{done:?}");
    assert!(done.iter().all(|(_, ok)| *ok));
    let st = cache::rpc::stats_json(&c);
    assert_eq!(st["segments_key"], 2, "{st}");
    assert_eq!(st["tails"].as_array().unwrap().len(), 2, "{st}");
    assert!(st["data_occupancy_percent"].as_f64().unwrap() > 0.0, "{st}");
    drop((chans, d, c));
    unregister(&h, pc);
    // The added lane is on media: replay finds both lanes and both writes.
    let pc = h.run_on(0, || cache::vbdev::create(p).unwrap());
    let st = cache::rpc::stats_json(&cache::vbdev::cache_of(&pc).unwrap());
    assert_eq!(st["tails"].as_array().unwrap().len(), 2, "{st}");
    assert_eq!(st["dirty_bytes"], 2 * 4096, "{st}");
    let (d, ch) = open(&h, "oc_cache");
    let r = DmaBuf::new(4096, 4096).unwrap();
    for lba in 0..2u64 {
        h.run_on(0, || {
            ch.read(&[iov(&r)], lba, 1, record, IoCtx::Word(9)).unwrap()
        });
        assert_eq!(wait(&h, 1), vec![(9, true)]);
        assert_eq!(r.as_slice(), w.as_slice(), "block {lba}");
    }
    drop((ch, d));
    unregister(&h, pc);
    unregister(&h, origin);
    unregister(&h, Bdev::lookup("oc_pmem").unwrap());
}

/// Pmem whose writes can be made to fail (EIO), to see errnos reach the answer.
struct Flaky {
    inner: PmemFile,
    fail: std::sync::atomic::AtomicBool,
}

impl Flaky {
    fn check(&self) -> Result<(), pmem::PmemError> {
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(pmem::PmemError::Io {
                what: "write".into(),
                source: std::io::Error::from_raw_os_error(libc::EIO),
            });
        }
        Ok(())
    }
}

impl Pmem for Flaky {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn kind(&self) -> pmem::PmemKind {
        self.inner.kind()
    }
    fn write(&self, off: u64, src: &[u8]) -> Result<(), pmem::PmemError> {
        self.check()?;
        self.inner.write(off, src)
    }
    fn write_nt(&self, off: u64, src: &[u8]) -> Result<(), pmem::PmemError> {
        self.check()?;
        self.inner.write_nt(off, src)
    }
    fn read(&self, off: u64, dst: &mut [u8]) -> Result<(), pmem::PmemError> {
        self.inner.read(off, dst)
    }
    fn flush(&self, off: u64, len: u64) -> Result<(), pmem::PmemError> {
        self.inner.flush(off, len)
    }
    fn fence(&self) {
        self.inner.fence()
    }
    fn sync(&self) -> Result<(), pmem::PmemError> {
        self.inner.sync()
    }
    fn as_ptr(&self) -> Option<*mut u8> {
        None
    }
}

#[test]
fn set_options_answers_a_pmem_failure_with_its_errno() {
    let h = Harness::new(1);
    let flaky = Arc::new(Flaky {
        inner: PmemFile::anonymous(64 << 20).unwrap(),
        fail: Default::default(),
    });
    let pm: Arc<dyn Pmem> = flaky.clone();
    bdev::pmem::create_with("fk_pmem", pm, 4096).unwrap();
    let origin = malloc::create(MallocCreateParams::new("fk_origin", 1024, 4096)).unwrap();
    let pc = h.run_on(0, || {
        cache::vbdev::create(params("fk_cache", "fk_pmem", "fk_origin")).unwrap()
    });
    let c = cache::vbdev::cache_of(&pc).unwrap();
    flaky.fail.store(true, std::sync::atomic::Ordering::SeqCst);
    let o: cache::params::SetOptionsParams =
        serde_json::from_value(serde_json::json!({"name": "fk_cache", "mode": "writethrough"}))
            .unwrap();
    let e = c.set_options(&o).unwrap_err();
    assert_eq!(e.errno(), libc::EIO, "the pmem's errno, not EINVAL: {e}");
    let answer = rpc::RpcError::from(e);
    assert_eq!(answer.code(), -libc::EIO, "{answer}");
    assert_eq!(
        c.mode(),
        cache::params::CacheMode::Writeback,
        "nothing changed"
    );
    flaky.fail.store(false, std::sync::atomic::Ordering::SeqCst);
    c.set_options(&o).unwrap();
    assert_eq!(c.mode(), cache::params::CacheMode::Writethrough);
    drop(c);
    unregister(&h, pc);
    unregister(&h, origin);
    unregister(&h, Bdev::lookup("fk_pmem").unwrap());
}

#[test]
fn flipped_bytes_in_pmem_are_never_returned_as_data() {
    let h = Harness::new(1);
    let pm: Arc<dyn Pmem> = Arc::new(PmemFile::anonymous(64 << 20).unwrap());
    bdev::pmem::create_with("fl_pmem", pm.clone(), 4096).unwrap();
    let origin = malloc::create(MallocCreateParams::new("fl_origin", 1024, 4096)).unwrap();
    let pc = h.run_on(0, || {
        cache::vbdev::create(params("fl_cache", "fl_pmem", "fl_origin")).unwrap()
    });
    let cache = cache::vbdev::cache_of(&pc).unwrap();
    let (d, ch) = open(&h, "fl_cache");
    // Block 10: dirty (written through the cache). Block 20: clean (a miss, promoted; the origin
    // holds zeroes there).
    let w = block(77);
    h.run_on(0, || {
        ch.write(
            &[iov(&w)],
            10,
            1,
            IoFlags::default(),
            record,
            IoCtx::Word(1),
        )
        .unwrap()
    });
    assert_eq!(wait(&h, 1), vec![(1, true)]);
    let r = DmaBuf::new(4096, 4096).unwrap();
    h.run_on(0, || {
        ch.read(&[iov(&r)], 20, 1, record, IoCtx::Word(2)).unwrap()
    });
    assert_eq!(wait(&h, 1), vec![(2, true)]);
    let flip = |lba: u64| {
        let mut pos = None;
        cache.index().lookup(lba, 1, |p| {
            if let cache::index::Piece::Hit(e) = p {
                pos = Some(e.pos);
            }
        });
        let at = cache.pos_offset(pos.expect("cached")) + 123;
        let mut b = [0u8; 1];
        pm.read(at, &mut b).unwrap();
        pm.write(at, &[b[0] ^ 0xff]).unwrap();
    };
    flip(10);
    flip(20);
    let mut r = DmaBuf::new(4096, 4096).unwrap();
    r.as_mut_slice().fill(0xAA);
    h.run_on(0, || {
        ch.read(&[iov(&r)], 10, 1, record, IoCtx::Word(3)).unwrap()
    });
    assert_eq!(
        wait(&h, 1),
        vec![(3, false)],
        "dirty data failing its crc is an error, not data"
    );
    h.run_on(0, || {
        ch.read(&[iov(&r)], 20, 1, record, IoCtx::Word(4)).unwrap()
    });
    assert_eq!(
        wait(&h, 1),
        vec![(4, true)],
        "clean data failing its crc is re-read from the origin"
    );
    assert!(
        r.as_slice().iter().all(|b| *b == 0),
        "the origin's bytes, not the flipped ones"
    );
    let stats = cache::rpc::stats_json(&cache);
    assert_eq!(stats["crc_errors"].as_u64().unwrap(), 2, "{stats}");
    drop((ch, d, cache));
    unregister(&h, pc);
    unregister(&h, origin);
    unregister(&h, Bdev::lookup("fl_pmem").unwrap());
}

#[test]
fn removing_the_origin_or_the_cache_device_removes_the_pcache_bdev_and_frees_the_other() {
    let h = Harness::new(1);
    let pm: Arc<dyn Pmem> = Arc::new(PmemFile::anonymous(64 << 20).unwrap());
    let dev = bdev::pmem::create_with("hr_pmem", pm, 4096).unwrap();
    let origin = malloc::create(MallocCreateParams::new("hr_origin", 1024, 4096)).unwrap();
    let pc = h.run_on(0, || {
        cache::vbdev::create(params("hr_cache", "hr_pmem", "hr_origin")).unwrap()
    });
    assert_eq!(origin.claimed_by().as_deref(), Some("pcache"));
    assert_eq!(dev.claimed_by().as_deref(), Some("pcache"));
    drop(pc);
    unregister(&h, origin);
    assert!(Bdev::lookup("hr_cache").is_none(), "gone with its origin");
    assert_eq!(dev.claimed_by(), None, "the cache device is free again");

    // Reattached to a new origin of the same identity, then the cache device goes.
    let mut o = MallocCreateParams::new("hr_origin", 1024, 4096);
    o.uuid = Some(uuid::Uuid::new_v4());
    let origin = malloc::create(o).unwrap();
    let mut p = params("hr_cache", "hr_pmem", "hr_origin");
    p.format = true;
    let pc = h.run_on(0, || cache::vbdev::create(p).unwrap());
    drop(pc);
    unregister(&h, dev);
    assert!(
        Bdev::lookup("hr_cache").is_none(),
        "gone with its cache device"
    );
    assert_eq!(origin.claimed_by(), None, "the origin is free again");
    unregister(&h, origin);
}
