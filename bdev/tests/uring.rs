//! The uring bdev under the deterministic harness, with both engines: many I/Os in flight, FUA,
//! flush, unmap and write_zeroes, failures from a file that shrank, unaligned buffers, parameter
//! checks, save_config and the RPCs.

use bdev::uring::{self, EngineKind, rpc::UringCreateParams};
use bdev::{Bdev, BdevChannel, BdevDesc, DmaBuf, IoCtx, IoFlags, IoType, IoVec};
use poller::Harness;
use serde_json::json;
use std::path::Path;
use std::sync::atomic::Ordering;

mod common;
use common::{call_off_thread as call, iov, record, wait};

fn file_of(dir: &Path, len: u64) -> String {
    let path = dir.join("disk");
    std::fs::File::create(&path).unwrap().set_len(len).unwrap();
    path.to_str().unwrap().to_string()
}

struct Open {
    bdev: Bdev,
    desc: Option<BdevDesc>,
    ch: Option<BdevChannel>,
}

fn open(h: &Harness, name: &str, file: &str, engine: EngineKind) -> Open {
    let bdev = uring::create_with_engine(UringCreateParams::new(name, file), engine).unwrap();
    let desc = BdevDesc::open(name, true, |_| {}).unwrap();
    let ch = h.run_on(0, || desc.get_io_channel().unwrap());
    Open {
        bdev,
        desc: Some(desc),
        ch: Some(ch),
    }
}

impl Open {
    fn ch(&self) -> &BdevChannel {
        self.ch.as_ref().unwrap()
    }

    /// Closes everything on the harness thread and removes the bdev.
    fn close(mut self, h: &Harness) {
        let ch = self.ch.take();
        h.run_on(0, || drop(ch));
        drop(self.desc.take());
        self.bdev.unregister(|r| r.unwrap());
        h.poll_until_idle(10);
        assert!(Bdev::lookup(self.bdev.name()).is_none());
    }
}

fn pattern(i: usize, len: usize) -> DmaBuf {
    let mut b = DmaBuf::new(len, 4096).unwrap();
    b.as_mut_slice()
        .iter_mut()
        .enumerate()
        .for_each(|(j, x)| *x = (i * 7 + j / 512 + 1) as u8);
    b
}

/// 32 writes in flight at once, then 32 reads, then the file itself is checked.
fn round_trip(name: &str, engine: EngineKind) {
    const QD: usize = 32;
    const BLK: u64 = 8; // 4 KiB in 512-byte blocks
    let h = Harness::new(1);
    let dir = tempfile::tempdir().unwrap();
    let file = file_of(dir.path(), 1 << 20);
    let o = open(&h, name, &file, engine);
    assert_eq!((o.bdev.block_size(), o.bdev.num_blocks()), (512, 2048));
    let used = uring::channel_engine(o.ch());
    match engine {
        EngineKind::Sync => assert_eq!(used, Some(EngineKind::Sync)),
        _ if uring::io_uring_available() => assert_eq!(used, Some(EngineKind::Uring)),
        _ => {}
    }
    let wbufs: Vec<DmaBuf> = (0..QD).map(|i| pattern(i, 4096)).collect();
    h.run_on(0, || {
        for (i, b) in wbufs.iter().enumerate() {
            let off = i as u64 * 2 * BLK;
            o.ch()
                .write(
                    &[iov(b)],
                    off,
                    BLK,
                    IoFlags::default(),
                    record,
                    IoCtx::Word(i),
                )
                .unwrap();
        }
    });
    let expect: Vec<_> = (0..QD).map(|i| (i, true)).collect();
    assert_eq!(wait(&h, QD), expect);
    let rbufs: Vec<DmaBuf> = (0..QD).map(|_| DmaBuf::new(4096, 4096).unwrap()).collect();
    h.run_on(0, || {
        for (i, b) in rbufs.iter().enumerate() {
            let off = i as u64 * 2 * BLK;
            o.ch()
                .read(&[iov(b)], off, BLK, record, IoCtx::Word(i))
                .unwrap();
        }
    });
    assert_eq!(wait(&h, QD), expect);
    for (w, r) in wbufs.iter().zip(&rbufs) {
        assert_eq!(w.as_slice(), r.as_slice());
    }
    let st = o.ch().stat();
    assert_eq!((st.read.ops, st.write.ops), (QD as u64, QD as u64));
    o.close(&h);
    let on_disk = std::fs::read(&file).unwrap();
    for (i, w) in wbufs.iter().enumerate() {
        let at = i * 2 * 4096;
        assert_eq!(
            &on_disk[at..at + 4096],
            w.as_slice(),
            "write {i} is in the file"
        );
        assert!(on_disk[at + 4096..at + 8192].iter().all(|&b| b == 0));
    }
}

#[test]
fn ring_round_trip_at_queue_depth_32() {
    round_trip("uring_rt", EngineKind::Auto);
}

#[test]
fn sync_engine_round_trip() {
    round_trip("uring_rt_sync", EngineKind::Sync);
}

fn fua_flush_and_zeroes(name: &str, engine: EngineKind) {
    let h = Harness::new(1);
    let dir = tempfile::tempdir().unwrap();
    let file = file_of(dir.path(), 256 * 1024);
    let o = open(&h, name, &file, engine);
    for t in [IoType::Flush, IoType::Unmap, IoType::WriteZeroes] {
        assert!(o.bdev.io_type_supported(t), "{t:?}");
    }
    assert_eq!(o.bdev.info_json()["write_cache"], json!(true));
    let data = pattern(3, 16 * 512);
    let fua = IoFlags { fua: true };
    h.run_on(0, || {
        o.ch()
            .write(&[iov(&data)], 0, 16, fua, record, IoCtx::Word(0))
            .unwrap()
    });
    assert_eq!(wait(&h, 1), vec![(0, true)]);
    h.run_on(0, || {
        o.ch().flush(0, 16, record, IoCtx::Word(1)).unwrap();
        o.ch().unmap(0, 8, record, IoCtx::Word(2)).unwrap();
        o.ch().write_zeroes(8, 8, record, IoCtx::Word(3)).unwrap();
    });
    assert_eq!(wait(&h, 3), vec![(1, true), (2, true), (3, true)]);
    let mut back = DmaBuf::new(16 * 512, 4096).unwrap();
    back.as_mut_slice().fill(0xEE);
    h.run_on(0, || {
        o.ch()
            .read(&[iov(&back)], 0, 16, record, IoCtx::Word(4))
            .unwrap();
        o.ch().reset(record, IoCtx::Word(5)).unwrap();
    });
    assert_eq!(wait(&h, 2), vec![(4, true), (5, true)]);
    assert!(
        back.as_slice().iter().all(|&b| b == 0),
        "unmapped and zeroed"
    );
    o.close(&h);
    assert!(
        std::fs::read(&file).unwrap()[..8192]
            .iter()
            .all(|&b| b == 0)
    );
}

#[test]
fn fua_flush_unmap_and_write_zeroes() {
    fua_flush_and_zeroes("uring_fz", EngineKind::Auto);
}

#[test]
fn fua_flush_unmap_and_write_zeroes_sync() {
    fua_flush_and_zeroes("uring_fz_sync", EngineKind::Sync);
}

/// The file shrinks behind the bdev: a read past the new end fails (after a short transfer when it
/// straddles the end), and nothing panics.
fn shrunk_file_fails_reads(name: &str, engine: EngineKind) {
    let h = Harness::new(1);
    let dir = tempfile::tempdir().unwrap();
    let file = file_of(dir.path(), 64 * 1024);
    let o = open(&h, name, &file, engine);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(4096)
        .unwrap();
    let buf = DmaBuf::new(8192, 4096).unwrap();
    let tail = DmaBuf::new(4096, 4096).unwrap();
    h.run_on(0, || {
        o.ch()
            .read(&[iov(&buf)], 0, 16, record, IoCtx::Word(0))
            .unwrap();
        o.ch()
            .read(&[iov(&tail)], 64, 8, record, IoCtx::Word(1))
            .unwrap();
    });
    assert_eq!(wait(&h, 2), vec![(0, false), (1, false)]);
    assert_eq!(o.ch().stat().read.ops, 0);
    o.close(&h);
}

#[test]
fn read_of_a_shrunk_file_fails() {
    shrunk_file_fails_reads("uring_shrunk", EngineKind::Auto);
}

#[test]
fn read_of_a_shrunk_file_fails_sync() {
    shrunk_file_fails_reads("uring_shrunk_sync", EngineKind::Sync);
}

#[test]
fn unaligned_buffers_take_the_buffered_path() {
    let h = Harness::new(1);
    let dir = tempfile::tempdir().unwrap();
    let file = file_of(dir.path(), 64 * 1024);
    let o = open(&h, "uring_unaligned", &file, EngineKind::Auto);
    let mut w = DmaBuf::new(4096 + 8, 4096).unwrap();
    w.as_mut_slice()
        .iter_mut()
        .enumerate()
        .for_each(|(i, x)| *x = i as u8);
    let r = DmaBuf::new(4096 + 8, 4096).unwrap();
    // Three segments at odd addresses and lengths that still add up to 8 blocks.
    // SAFETY: all inside the buffers, which outlive the I/Os.
    let (wv, rv) = unsafe {
        let (a, b) = (w.as_mut_ptr().add(8), r.as_mut_ptr().add(3));
        (
            [IoVec::new(a, 100), IoVec::new(a.add(100), 4096 - 100)],
            [
                IoVec::new(b, 7),
                IoVec::new(b.add(7), 2000),
                IoVec::new(b.add(2007), 4096 - 2007),
            ],
        )
    };
    h.run_on(0, || {
        o.ch()
            .write(&wv, 8, 8, IoFlags::default(), record, IoCtx::Word(0))
            .unwrap()
    });
    assert_eq!(wait(&h, 1), vec![(0, true)]);
    h.run_on(0, || {
        o.ch().read(&rv, 8, 8, record, IoCtx::Word(1)).unwrap()
    });
    assert_eq!(wait(&h, 1), vec![(1, true)]);
    assert_eq!(&r.as_slice()[3..4099], &w.as_slice()[8..4104]);
    // An aligned read (O_DIRECT when the file system allows it) sees the buffered write.
    let a = DmaBuf::new(4096, 4096).unwrap();
    h.run_on(0, || {
        o.ch()
            .read(&[iov(&a)], 8, 8, record, IoCtx::Word(2))
            .unwrap()
    });
    assert_eq!(wait(&h, 1), vec![(2, true)]);
    assert_eq!(a.as_slice(), &w.as_slice()[8..4104]);
    o.close(&h);
}

#[test]
fn tmpfs_file_works_with_or_without_o_direct() {
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        return;
    }
    let dir = tempfile::tempdir_in(shm).unwrap();
    let h = Harness::new(1);
    let file = file_of(dir.path(), 64 * 1024);
    let o = open(&h, "uring_tmpfs", &file, EngineKind::Auto);
    let w = pattern(9, 4096);
    h.run_on(0, || {
        o.ch()
            .write(&[iov(&w)], 0, 8, IoFlags::default(), record, IoCtx::Word(0))
            .unwrap()
    });
    assert_eq!(wait(&h, 1), vec![(0, true)]);
    o.close(&h);
    assert_eq!(&std::fs::read(&file).unwrap()[..4096], w.as_slice());
}

#[test]
fn geometry_and_parameter_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str, file: &str, bs: Option<u32>| {
        let mut p = UringCreateParams::new(name, file);
        p.block_size = bs;
        p
    };
    let missing = dir.path().join("nope").to_str().unwrap().to_string();
    let e = uring::create(p("uring_e1", &missing, None)).unwrap_err();
    assert_eq!(e.errno(), libc::ENOENT);
    let small = dir.path().join("small");
    std::fs::write(&small, [1u8; 100]).unwrap();
    let e = uring::create(p("uring_e2", small.to_str().unwrap(), None)).unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL);
    let e = uring::create(p("uring_e3", dir.path().to_str().unwrap(), None)).unwrap_err();
    assert!(
        [libc::EINVAL, libc::EISDIR].contains(&e.errno()),
        "a directory"
    );
    let file = file_of(dir.path(), 5000);
    for bad in [1000, 256, 1 << 20] {
        let e = uring::create(p("uring_e4", &file, Some(bad))).unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL, "block_size {bad}");
    }
    let e = uring::create(p("", &file, None)).unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL);
    // 5000 bytes: nine whole blocks of 512, the tail is ignored; 0 means "default".
    let b = uring::create(p("uring_geo", &file, Some(0))).unwrap();
    assert_eq!((b.block_size(), b.num_blocks()), (512, 9));
    let e = uring::create(p("uring_geo", &file, None)).unwrap_err();
    assert_eq!(e.errno(), libc::EEXIST);
    // One bdev at a time on a file (the second would be EBUSY).
    b.unregister(|r| r.unwrap());
    let b4k = uring::create(p("uring_geo4k", &file, Some(4096))).unwrap();
    assert_eq!(b4k.num_blocks(), 1);
    b4k.unregister(|r| r.unwrap());
}

#[test]
fn info_and_config_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let file = file_of(dir.path(), 64 * 1024);
    let mut params = UringCreateParams::new("uring_cfg", &file);
    params.block_size = Some(4096);
    let b = uring::create(params).unwrap();
    let info = b.info_json();
    assert_eq!(info["product_name"], json!("URING bdev"));
    assert_eq!(
        info["driver_specific"],
        json!({"uring": {"filename": file}})
    );
    let cfg = b.ops().write_config_json().unwrap();
    assert_eq!(cfg["method"], json!("bdev_uring_create"));
    assert_eq!(
        cfg["params"],
        json!({"name": "uring_cfg", "filename": file, "block_size": 4096,
               "uuid": b.uuid().to_string()})
    );
    let uuid = b.uuid();
    b.unregister(|r| r.unwrap());
    let again: UringCreateParams = serde_json::from_value(cfg["params"].clone()).unwrap();
    let b = uring::create(again).unwrap();
    assert_eq!((b.uuid(), b.block_size(), b.num_blocks()), (uuid, 4096, 16));
    b.unregister(|r| r.unwrap());
}

#[test]
fn rpcs_create_and_delete() {
    uring::rpc::register_rpcs();
    rpc::set_state(rpc::AppState::Runtime);
    let dir = tempfile::tempdir().unwrap();
    let file = file_of(dir.path(), 64 * 1024);
    let e = call(
        "bdev_uring_create",
        json!({"name": "uring_rpc", "filename": file, "bogus": 1}),
    )
    .unwrap_err();
    assert_eq!(e.code(), -32602);
    // SPDK's client sends absent optional parameters as null.
    let ok = call(
        "bdev_uring_create",
        json!({"name": "uring_rpc", "filename": file, "block_size": null, "uuid": null}),
    );
    assert_eq!(ok, Ok(json!("uring_rpc")));
    let e = call(
        "bdev_uring_create",
        json!({"name": "uring_rpc", "filename": file}),
    )
    .unwrap_err();
    assert_eq!((e.code(), e.message().as_str()), (-17, "File exists"));
    let e = call(
        "bdev_uring_create",
        json!({"name": "uring_rpc2", "filename": file, "block_size": 1000}),
    )
    .unwrap_err();
    assert_eq!(e.code(), -22);
    assert!(e.message().contains("1000"), "{}", e.message());
    assert_eq!(
        call("bdev_uring_delete", json!({"name": "uring_rpc"})),
        Ok(json!(true))
    );
    let e = call("bdev_uring_delete", json!({"name": "uring_rpc"})).unwrap_err();
    assert_eq!((e.code(), e.message().as_str()), (-19, "No such device"));
}

#[test]
fn dropping_the_channel_with_io_in_flight_loses_nothing() {
    const QD: usize = 32;
    let h = Harness::new(1);
    let dir = tempfile::tempdir().unwrap();
    let file = file_of(dir.path(), 256 * 1024);
    let mut o = open(&h, "uring_drop", &file, EngineKind::Auto);
    let pollers = || {
        h.handle(0)
            .counters()
            .active_pollers
            .load(Ordering::Relaxed)
    };
    let with_ring = pollers();
    let bufs: Vec<DmaBuf> = (0..QD).map(|i| pattern(i, 4096)).collect();
    let ch = o.ch.take().unwrap();
    h.run_on(0, || {
        for (i, b) in bufs.iter().enumerate() {
            ch.write(
                &[iov(b)],
                i as u64 * 8,
                8,
                IoFlags::default(),
                record,
                IoCtx::Word(i),
            )
            .unwrap();
        }
        drop(ch);
    });
    let expect: Vec<_> = (0..QD).map(|i| (i, true)).collect();
    assert_eq!(wait(&h, QD), expect);
    h.poll_until_idle(10);
    if uring::io_uring_available() {
        // The ring's poller, and the layer's completion poller with the thread's last channel.
        assert_eq!(
            pollers(),
            with_ring - 2,
            "the pollers left with the channel"
        );
    }
    o.close(&h);
    let on_disk = std::fs::read(&file).unwrap();
    for (i, w) in bufs.iter().enumerate() {
        assert_eq!(&on_disk[i * 4096..(i + 1) * 4096], w.as_slice());
    }
}

#[test]
fn more_io_than_ring_slots_is_retried_not_failed() {
    const N: usize = 600; // beyond the 512 slots of a ring
    let h = Harness::new(1);
    let dir = tempfile::tempdir().unwrap();
    let file = file_of(dir.path(), 64 * 1024);
    let o = open(&h, "uring_full", &file, EngineKind::Auto);
    let buf = DmaBuf::new(N * 512, 4096).unwrap();
    h.run_on(0, || {
        for i in 0..N {
            // SAFETY: inside `buf`, which outlives the I/Os.
            let v = unsafe { IoVec::new(buf.as_mut_ptr().add(i * 512), 512) };
            o.ch()
                .read(&[v], (i % 128) as u64, 1, record, IoCtx::Word(i))
                .unwrap();
        }
    });
    let expect: Vec<_> = (0..N).map(|i| (i, true)).collect();
    assert_eq!(wait(&h, N), expect);
    assert_eq!(o.ch().stat().read.ops, N as u64);
    o.close(&h);
}
