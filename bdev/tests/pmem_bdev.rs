//! The pmem bdev under the deterministic harness: round trips on a pmem file that persist across
//! delete and re-create, the size rules, durability of completed writes on the crash-simulating
//! double, msync mode, the mapping handed to stacked modules, save_config and the RPCs.

use bdev::pmem::{
    self as pmem_bdev,
    rpc::{PmemCreateParams, PmemMode},
};
use bdev::{Bdev, BdevChannel, BdevDesc, DmaBuf, IoCtx, IoFlags, IoVec};
use pmem::CrashPmem;
use poller::Harness;
use serde_json::json;
use std::sync::Arc;

mod common;
use common::{call_off_thread as call, iov, record};

fn done(h: &Harness) -> Vec<(usize, bool)> {
    h.poll_until_idle(100);
    common::done()
}

fn pattern(i: usize, len: usize) -> DmaBuf {
    let mut b = DmaBuf::new(len, 4096).unwrap();
    b.as_mut_slice()
        .iter_mut()
        .enumerate()
        .for_each(|(j, x)| *x = (i * 11 + j / 512 + 1) as u8);
    b
}

fn channel(h: &Harness, name: &str) -> (BdevDesc, BdevChannel) {
    let desc = BdevDesc::open(name, true, |_| {}).unwrap();
    let ch = h.run_on(0, || desc.get_io_channel().unwrap());
    (desc, ch)
}

fn close(h: &Harness, b: &Bdev, desc: BdevDesc, ch: BdevChannel) {
    h.run_on(0, || drop(ch));
    drop(desc);
    b.unregister(|r| r.unwrap());
    h.poll_until_idle(10);
    assert!(Bdev::lookup(b.name()).is_none());
}

/// Writes 32 blocks at once (queue depth 32), then reads them back.
fn write_read_32(h: &Harness, ch: &BdevChannel, bufs: &[DmaBuf]) {
    h.run_on(0, || {
        for (i, b) in bufs.iter().enumerate() {
            ch.write(
                &[iov(b)],
                i as u64 * 2,
                1,
                IoFlags::default(),
                record,
                IoCtx::Word(i),
            )
            .unwrap();
        }
    });
    let all_ok: Vec<_> = (0..bufs.len()).map(|i| (i, true)).collect();
    assert_eq!(done(h), all_ok);
    check_32(h, ch, bufs);
}

fn check_32(h: &Harness, ch: &BdevChannel, bufs: &[DmaBuf]) {
    let back: Vec<DmaBuf> = bufs
        .iter()
        .map(|b| DmaBuf::new(b.len(), 4096).unwrap())
        .collect();
    h.run_on(0, || {
        for (i, b) in back.iter().enumerate() {
            ch.read(&[iov(b)], i as u64 * 2, 1, record, IoCtx::Word(i))
                .unwrap();
        }
    });
    let all_ok: Vec<_> = (0..bufs.len()).map(|i| (i, true)).collect();
    assert_eq!(done(h), all_ok);
    for (w, r) in bufs.iter().zip(&back) {
        assert_eq!(w.as_slice(), r.as_slice());
    }
}

#[test]
fn file_round_trip_persists_across_delete_and_recreate() {
    let h = Harness::new(1);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pm").to_str().unwrap().to_string();
    let b = pmem_bdev::create(PmemCreateParams::new("pm_rt", &file, 4096, 64)).unwrap();
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 64 * 4096);
    let info = b.info_json();
    assert_eq!(info["product_name"], json!("pmem bdev"));
    assert_eq!(info["write_cache"], json!(false));
    let ds = &info["driver_specific"]["pmem"];
    assert_eq!(
        (&ds["pmem_file"], &ds["mode"]),
        (&json!(file), &json!("auto"))
    );
    assert!(["dax", "emulated"].contains(&ds["kind"].as_str().unwrap()));
    let (desc, ch) = channel(&h, "pm_rt");
    let bufs: Vec<DmaBuf> = (0..32).map(|i| pattern(i, 4096)).collect();
    write_read_32(&h, &ch, &bufs);
    // A stacked module reaches the same bytes through the mapping.
    let map = pmem_bdev::pmem_of(&b).unwrap();
    assert_eq!(map.len(), 64 * 4096);
    let mut first = vec![0u8; 4096];
    map.read(0, &mut first).unwrap();
    assert_eq!(first, bufs[0].as_slice());
    drop(map);
    close(&h, &b, desc, ch);
    assert!(pmem_bdev::pmem_of(&b).is_none(), "gone once unregistered");

    let on_disk = std::fs::read(&file).unwrap();
    for (i, w) in bufs.iter().enumerate() {
        assert_eq!(&on_disk[i * 8192..i * 8192 + 4096], w.as_slice());
    }
    // Re-created from the file alone: geometry from its size, the data still there.
    let b = pmem_bdev::create(PmemCreateParams::open("pm_rt", &file)).unwrap();
    assert_eq!((b.block_size(), b.num_blocks()), (4096, 64));
    let (desc, ch) = channel(&h, "pm_rt");
    check_32(&h, &ch, &bufs);
    close(&h, &b, desc, ch);
}

#[test]
fn size_rules() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pm").to_str().unwrap().to_string();
    let e = pmem_bdev::create(PmemCreateParams::open("pm_sz", &file)).unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL);
    assert!(e.to_string().contains("required"), "{e}");
    assert!(!std::path::Path::new(&file).exists());
    let mut half = PmemCreateParams::open("pm_sz", &file);
    half.block_size = Some(4096);
    assert_eq!(pmem_bdev::create(half).unwrap_err().errno(), libc::EINVAL);
    for (bs, nb) in [(1000, 8), (4096, 0), (256, 8), (1 << 20, 8)] {
        let e = pmem_bdev::create(PmemCreateParams::new("pm_sz", &file, bs, nb)).unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL, "{bs} x {nb}");
    }
    let e = pmem_bdev::create(PmemCreateParams::new("pm_sz", &file, 4096, u64::MAX)).unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL);

    std::fs::File::create(&file)
        .unwrap()
        .set_len(64 * 4096)
        .unwrap();
    let e = pmem_bdev::create(PmemCreateParams::new("pm_sz", &file, 4096, 32)).unwrap_err();
    let msg = e.to_string();
    assert_eq!(e.errno(), libc::EINVAL);
    assert!(msg.contains("262144") && msg.contains("131072"), "{msg}");
    let e = pmem_bdev::create(PmemCreateParams::new("pm_sz", &file, 512, 64)).unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL);
    // Matching sizes, or a block size alone, open the file as it is.
    let b = pmem_bdev::create(PmemCreateParams::new("pm_sz", &file, 512, 512)).unwrap();
    b.unregister(|r| r.unwrap());
    let mut bs_only = PmemCreateParams::open("pm_sz", &file);
    bs_only.block_size = Some(8192);
    let b = pmem_bdev::create(bs_only).unwrap();
    assert_eq!(b.num_blocks(), 32);
    let e = pmem_bdev::create(PmemCreateParams::open("pm_sz", &file)).unwrap_err();
    assert_eq!(e.errno(), libc::EEXIST);
    b.unregister(|r| r.unwrap());

    std::fs::File::create(&file).unwrap().set_len(5000).unwrap();
    let e = pmem_bdev::create(PmemCreateParams::open("pm_sz", &file)).unwrap_err();
    assert_eq!(
        e.errno(),
        libc::EINVAL,
        "not a whole number of 4 KiB blocks"
    );
    let e = pmem_bdev::create(PmemCreateParams::open(
        "pm_sz",
        dir.path().to_str().unwrap(),
    ))
    .unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL, "a directory");
}

#[test]
fn completed_writes_survive_a_power_cut() {
    let h = Harness::new(1);
    let cp = Arc::new(CrashPmem::new(64 * 1024));
    let b = pmem_bdev::create_with("pm_crash", cp.clone(), 512).unwrap();
    assert_eq!(b.num_blocks(), 128);
    assert!(b.ops().write_config_json().is_none(), "no RPC recreates it");
    let map = pmem_bdev::pmem_of(&b).unwrap();
    assert!(std::ptr::addr_eq(Arc::as_ptr(&map), Arc::as_ptr(&cp)));
    let (desc, ch) = channel(&h, "pm_crash");
    let w = pattern(5, 3 * 512);
    // Two segments, one of them not a whole block, to exercise the copy.
    // SAFETY: both inside `w`, which outlives the I/O.
    let wv = unsafe {
        [
            IoVec::new(w.as_mut_ptr(), 700),
            IoVec::new(w.as_mut_ptr().add(700), 836),
        ]
    };
    h.run_on(0, || {
        ch.write(&wv, 8, 3, IoFlags::default(), record, IoCtx::Word(0))
            .unwrap()
    });
    assert_eq!(done(&h), vec![(0, true)]);
    assert_eq!(cp.pending_words(), 0);
    assert_eq!(&cp.crash_image_none()[4096..4096 + 1536], w.as_slice());
    // Reads go through the double's own read (it has no pointer), in chunks.
    let whole = pattern(7, 64 * 1024);
    h.run_on(0, || {
        ch.write(
            &[iov(&whole)],
            0,
            128,
            IoFlags::default(),
            record,
            IoCtx::Word(2),
        )
        .unwrap()
    });
    assert_eq!(done(&h), vec![(2, true)]);
    let back = DmaBuf::new(64 * 1024, 4096).unwrap();
    h.run_on(0, || {
        ch.read(&[iov(&back)], 0, 128, record, IoCtx::Word(3))
            .unwrap()
    });
    assert_eq!(done(&h), vec![(3, true)]);
    assert_eq!(back.as_slice(), whole.as_slice());
    assert_eq!(cp.crash_image_none(), whole.as_slice());
    // Unmap and write_zeroes are durable zeroes.
    h.run_on(0, || {
        ch.unmap(0, 4, record, IoCtx::Word(4)).unwrap();
        ch.write_zeroes(100, 28, record, IoCtx::Word(5)).unwrap();
        ch.flush(0, 128, record, IoCtx::Word(6)).unwrap();
    });
    assert_eq!(done(&h), vec![(4, true), (5, true), (6, true)]);
    let img = cp.crash_image_none();
    assert!(img[..2048].iter().all(|&b| b == 0));
    assert_eq!(&img[2048..100 * 512], &whole.as_slice()[2048..100 * 512]);
    assert!(img[100 * 512..].iter().all(|&b| b == 0));
    drop(map);
    close(&h, &b, desc, ch);
}

#[test]
fn msync_mode_has_a_write_cache_and_flushes() {
    let h = Harness::new(1);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pm").to_str().unwrap().to_string();
    let mut p = PmemCreateParams::new("pm_msync", &file, 512, 64);
    p.mode = PmemMode::Msync;
    let b = pmem_bdev::create(p).unwrap();
    let info = b.info_json();
    assert_eq!(info["write_cache"], json!(true));
    assert_eq!(info["driver_specific"]["pmem"]["kind"], json!("msync"));
    let cfg = b.ops().write_config_json().unwrap();
    assert_eq!(cfg["params"]["mode"], json!("msync"));
    let (desc, ch) = channel(&h, "pm_msync");
    let w = pattern(1, 512);
    h.run_on(0, || {
        ch.write(
            &[iov(&w)],
            3,
            1,
            IoFlags { fua: true },
            record,
            IoCtx::Word(0),
        )
        .unwrap();
        ch.flush(0, 64, record, IoCtx::Word(1)).unwrap();
    });
    assert_eq!(done(&h), vec![(0, true), (1, true)]);
    close(&h, &b, desc, ch);
    assert_eq!(&std::fs::read(&file).unwrap()[1536..2048], w.as_slice());
}

#[test]
fn config_round_trip_and_pmem_of_other_modules() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pm").to_str().unwrap().to_string();
    let b = pmem_bdev::create(PmemCreateParams::new("pm_cfg", &file, 4096, 16)).unwrap();
    let cfg = b.ops().write_config_json().unwrap();
    assert_eq!(cfg["method"], json!("bdev_pmem_create"));
    assert_eq!(
        cfg["params"],
        json!({"name": "pm_cfg", "pmem_file": file, "block_size": 4096, "num_blocks": 16,
               "uuid": b.uuid().to_string()})
    );
    let uuid = b.uuid();
    b.unregister(|r| r.unwrap());
    let again: PmemCreateParams = serde_json::from_value(cfg["params"].clone()).unwrap();
    let b = pmem_bdev::create(again).unwrap();
    assert_eq!((b.uuid(), b.num_blocks()), (uuid, 16));
    let m = bdev::malloc::create(bdev::malloc::rpc::MallocCreateParams::new(
        "pm_cfg_m", 8, 512,
    ))
    .unwrap();
    assert!(pmem_bdev::pmem_of(&m).is_none());
    assert!(pmem_bdev::pmem_of(&b).is_some());
    m.unregister(|r| r.unwrap());
    b.unregister(|r| r.unwrap());
}

#[test]
fn rpcs_create_and_delete() {
    pmem_bdev::rpc::register_rpcs();
    rpc::set_state(rpc::AppState::Runtime);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pm").to_str().unwrap().to_string();
    let e = call(
        "bdev_pmem_create",
        json!({"name": "pm_rpc", "pmem_file": file, "block_size": 512, "num_blocks": 8,
               "extra": true}),
    )
    .unwrap_err();
    assert_eq!(e.code(), -32602);
    let e = call(
        "bdev_pmem_create",
        json!({"name": "pm_rpc", "pmem_file": file, "mode": "fast"}),
    )
    .unwrap_err();
    assert_eq!(e.code(), -32602);
    let e = call(
        "bdev_pmem_create",
        json!({"name": "pm_rpc", "pmem_file": file}),
    )
    .unwrap_err();
    assert_eq!(e.code(), -22);
    assert!(e.message().contains("num_blocks"), "{}", e.message());
    let ok = call(
        "bdev_pmem_create",
        json!({"name": "pm_rpc", "pmem_file": file, "block_size": 512, "num_blocks": 8,
               "mode": "emulated"}),
    );
    assert_eq!(ok, Ok(json!("pm_rpc")));
    let e = call(
        "bdev_pmem_create",
        json!({"name": "pm_rpc", "pmem_file": file}),
    )
    .unwrap_err();
    assert_eq!((e.code(), e.message().as_str()), (-17, "File exists"));
    assert_eq!(
        call("bdev_pmem_delete", json!({"name": "pm_rpc"})),
        Ok(json!(true))
    );
    let e = call("bdev_pmem_delete", json!({"name": "pm_rpc"})).unwrap_err();
    assert_eq!((e.code(), e.message().as_str()), (-19, "No such device"));
}
