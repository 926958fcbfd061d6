//! Resources running out and threads: large transfers beyond the poll group's buffer pool and
//! bdev I/O beyond the channel's bdev_io pool wait (they never fail); an admin queue and its
//! I/O queue on different poll groups (two cores); the discovery controller.

mod common;

use common::*;
use nvmf::wire::command::{Sgl, Sqe, admin, io as op};
use nvmf::wire::status::Status;
use serde_json::json;
use std::time::{Duration, Instant};

fn reads(c: &mut Client, n: usize, blocks: u32) -> Vec<(Sqe, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let cid = c.cid();
            let mut s = Sqe::new(op::READ, cid, 1);
            s.set_lba_range((i as u64 * u64::from(blocks)) % BLOCKS, blocks)
                .unwrap_or_default();
            s.dptr = Sgl::transport(blocks * BS as u32);
            (s, Vec::new())
        })
        .collect()
}

fn writes(c: &mut Client, n: usize, blocks: u32, seed: u8) -> Vec<(Sqe, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let cid = c.cid();
            let slba = (i as u64 * u64::from(blocks)) % BLOCKS;
            let mut s = Sqe::new(op::WRITE, cid, 1);
            s.set_lba_range(slba, blocks).unwrap_or_default();
            s.dptr = Sgl::transport(blocks * BS as u32);
            (s, pattern(slba, blocks as usize, seed))
        })
        .collect()
}

#[test]
fn large_transfers_wait_for_pool_buffers() {
    // At least 8 buffers of 128 KiB per group; 64 transfers of 128 KiB at once.
    let t = Tgt::start_with(
        json!({"trtype": "TCP", "num_shared_buffers": 1, "max_queue_depth": 128}),
        true,
    );
    let mut h = t.host(false, false);
    let w = writes(&mut h.io, 64, 32, 5);
    for (cqe, _) in h.io.pipeline(&w) {
        assert_eq!(cqe.status, Status::SUCCESS);
    }
    let r = reads(&mut h.io, 64, 32);
    let got = h.io.pipeline(&r);
    for (i, (cqe, data)) in got.iter().enumerate() {
        assert_eq!(cqe.status, Status::SUCCESS);
        let slba = (i as u64 * 32) % BLOCKS;
        assert!(*data == pattern(slba, 32, 5), "read {i} differs");
    }
}

#[test]
fn bdev_io_exhaustion_waits() {
    let p = Proc::start(&["-m", "0x1", "--idle-backoff", "--wait-for-rpc"]);
    let mut rpc = p.rpc();
    rpc_ok(
        &mut rpc,
        "bdev_set_options",
        json!({"bdev_io_pool_size": 64, "bdev_io_cache_size": 4}),
    );
    let a = rpc.call("framework_start_init", None);
    assert!(a.get("error").is_none(), "{a}");
    let deadline = Instant::now() + DEADLINE;
    while !p.log_text().contains("pcache_tgt ready") {
        assert!(Instant::now() < deadline, "not ready:\n{}", p.log_text());
        std::thread::sleep(Duration::from_millis(10));
    }
    let t = Tgt::setup(None, rpc, json!({"trtype": "TCP"}), true);
    let mut h = t.host(false, false);
    let w = writes(&mut h.io, 100, 1, 8);
    for (cqe, _) in h.io.pipeline(&w) {
        assert_eq!(cqe.status, Status::SUCCESS);
    }
    let r = reads(&mut h.io, 100, 1);
    for (i, (cqe, data)) in h.io.pipeline(&r).iter().enumerate() {
        assert_eq!(cqe.status, Status::SUCCESS);
        assert!(
            *data == pattern(i as u64 % BLOCKS, 1, 8),
            "read {i} differs"
        );
    }
    // Dataset Management with many ranges through the same four bdev_ios.
    let cid = h.io.cid();
    let mut dsm = Sqe::new(op::DATASET_MANAGEMENT, cid, 1);
    dsm.set_dsm(64, nvmf::wire::command::dsm::AD)
        .unwrap_or_default();
    let ranges: Vec<u8> = (0..64u64)
        .flat_map(|i| {
            nvmf::wire::command::DsmRange {
                attributes: 0,
                nlb: 1,
                slba: 1000 + i * 2,
            }
            .to_bytes()
        })
        .collect();
    assert_eq!(h.io.run(dsm, &ranges, true).0.status, Status::SUCCESS);
}

#[test]
fn admin_and_io_queues_on_different_poll_groups() {
    let p = Proc::start(&["-m", "0x3", "--idle-backoff"]);
    let mut t = Tgt::setup(None, p.rpc(), json!({"trtype": "TCP"}), true);
    // Connections go round robin: the admin queue to one group, the I/O queue to the other.
    let mut h = t.host(true, true);
    let qp = rpc_ok(&mut t.rpc, "nvmf_subsystem_get_qpairs", json!({"nqn": NQN}));
    let threads: Vec<&str> = qp
        .as_array()
        .map(|a| a.iter().filter_map(|q| q["thread"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(threads.len(), 2, "{qp}");
    assert_ne!(threads[0], threads[1], "{qp}");
    let data = pattern(3, 4, 2);
    assert_eq!(h.io.write(1, 3, &data, false), Status::SUCCESS);
    assert_eq!(h.io.read(1, 3, 4), (Status::SUCCESS, data));
    let stats = rpc_ok(&mut t.rpc, "nvmf_get_stats", json!({}));
    assert_eq!(
        stats["poll_groups"].as_array().map(Vec::len),
        Some(2),
        "{stats}"
    );
    // The controller's end reaches the I/O queue on the other thread.
    let Host { admin, mut io, .. } = h;
    drop(admin);
    assert!(io.closed_within(DEADLINE));
    let mut h = t.host(false, false);
    assert_eq!(h.io.read(1, 3, 1).0, Status::SUCCESS);
    drop(p);
}

#[test]
fn discovery_controller() {
    let t = Tgt::start();
    let mut c = t.client();
    c.icreq(false, false);
    c.connect_admin("nqn.2014-08.org.nvmexpress.discovery", HOSTNQN, 0);
    c.enable();
    let (st, id) = c.identify(1, 0);
    assert_eq!(st, Status::SUCCESS);
    assert_eq!(id[111], 2, "CNTRLTYPE discovery");
    let cid = c.cid();
    let mut sqe = Sqe::new(admin::GET_LOG_PAGE, cid, 0);
    sqe.cdw10 = 0x70 | (2047 << 16);
    sqe.dptr = Sgl::transport(8192);
    let (cqe, log) = c.run(sqe, &[], false);
    assert_eq!(cqe.status, Status::SUCCESS);
    assert_eq!(log.len(), 8192);
    let numrec = u64::from_le_bytes(log[8..16].try_into().unwrap_or_default());
    assert_eq!(numrec, 1);
    let e = &log[1024..2048];
    assert_eq!(e[0], 3, "TRTYPE TCP");
    assert_eq!(e[2], 2, "SUBTYPE NVMe");
    let svcid = String::from_utf8_lossy(&e[32..64]).trim().to_string();
    assert_eq!(svcid, t.port.to_string());
    let subnqn = String::from_utf8_lossy(&e[256..512])
        .trim_end_matches('\0')
        .to_string();
    assert_eq!(subnqn, NQN);
    assert_eq!(c.keep_alive(), Status::SUCCESS);
}
