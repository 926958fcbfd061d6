//! The target's connection life cycle: asynchronous events for namespaces added and removed,
//! a bdev deleted under a connected host (with I/O in flight), keep alive timeout teardown,
//! host disconnect teardown, and what nvmf_get_stats / get_qpairs / get_controllers report.

mod common;

use common::*;
use nvmf::wire::command::{Sqe, admin, io as op};
use nvmf::wire::status::Status;
use serde_json::json;
use std::time::{Duration, Instant};

/// Notice, Namespace Attribute Changed, log 04h.
const AER_NS_CHANGED: u32 = 0x0004_0002;

fn send_aer(c: &mut Client) -> u16 {
    let cid = c.cid();
    c.send_cmd(&Sqe::new(admin::ASYNC_EVENT_REQUEST, cid, 0), &[]);
    cid
}

/// Reads the Changed Namespace List (clearing it and unmasking the notice).
fn changed_namespaces(c: &mut Client) -> Vec<u32> {
    let cid = c.cid();
    let mut sqe = Sqe::new(admin::GET_LOG_PAGE, cid, 0xFFFF_FFFF);
    sqe.cdw10 = 0x04 | (1023 << 16);
    sqe.dptr = nvmf::wire::command::Sgl::transport(4096);
    let (cqe, d) = c.run(sqe, &[], false);
    assert!(cqe.status.is_success(), "{:?}", cqe.status);
    d.chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .take_while(|&n| n != 0)
        .collect()
}

fn expect_aer(c: &mut Client, cid: u16) {
    match c.recv() {
        Got::Resp(r) => {
            assert_eq!(r.cid, cid);
            assert_eq!(r.status, Status::SUCCESS);
            assert_eq!(r.dw0, AER_NS_CHANGED);
        }
        other => panic!("expected the AER completion, got {other:?}"),
    }
}

#[test]
fn namespace_events_and_hot_remove_with_io_in_flight() {
    let mut t = Tgt::start();
    let mut h = t.host(false, false);
    let aer = send_aer(&mut h.admin);

    // A namespace added: the AER completes, the log names it, and I/O reaches it.
    rpc_ok(
        &mut t.rpc,
        "bdev_malloc_create",
        json!({"name": "Malloc1", "num_blocks": 256, "block_size": BS}),
    );
    rpc_ok(
        &mut t.rpc,
        "bdev_delay_create",
        json!({"name": "Delay1", "base_bdev_name": "Malloc1", "avg_read_latency": 300000,
               "p99_read_latency": 300000, "avg_write_latency": 0, "p99_write_latency": 0}),
    );
    rpc_ok(
        &mut t.rpc,
        "nvmf_subsystem_add_ns",
        json!({"nqn": NQN, "namespace": {"bdev_name": "Delay1", "nsid": 2}}),
    );
    expect_aer(&mut h.admin, aer);
    assert_eq!(changed_namespaces(&mut h.admin), vec![2]);
    let data = pattern(5, 1, 9);
    assert_eq!(h.io.write(2, 5, &data, true), Status::SUCCESS);
    let aer = send_aer(&mut h.admin);

    // A slow read in flight, then the bdev is deleted: the delete finishes, the read
    // completes, the AER tells the host, and the namespace is gone.
    let cid = h.io.cid();
    let mut rd = Sqe::new(op::READ, cid, 2);
    rd.set_lba_range(5, 1).unwrap_or_default();
    rd.dptr = nvmf::wire::command::Sgl::transport(BS as u32);
    h.io.send_cmd(&rd, &[]);
    std::thread::sleep(Duration::from_millis(50));
    let started = Instant::now();
    rpc_ok(&mut t.rpc, "bdev_delay_delete", json!({"name": "Delay1"}));
    assert!(started.elapsed() < Duration::from_secs(5));
    loop {
        match h.io.recv() {
            Got::C2H { cid: c, .. } => assert_eq!(c, cid),
            Got::Resp(r) => {
                assert_eq!(r.cid, cid);
                break;
            }
            other => panic!("expected the read's completion, got {other:?}"),
        }
    }
    expect_aer(&mut h.admin, aer);
    assert_eq!(changed_namespaces(&mut h.admin), vec![2]);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (st, _) = h.io.read(2, 0, 1);
        if st == Status::INVALID_NAMESPACE {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "namespace 2 still answers: {st:?}"
        );
    }
    // The remaining namespace still serves, and the malloc under the deleted delay bdev can go.
    assert_eq!(h.io.read(1, 0, 1).0, Status::SUCCESS);
    rpc_ok(&mut t.rpc, "bdev_malloc_delete", json!({"name": "Malloc1"}));
    // Deleting the exported bdev of namespace 1 finishes too.
    rpc_ok(&mut t.rpc, "bdev_malloc_delete", json!({"name": "Malloc0"}));
    assert_eq!(h.io.read(1, 0, 1).0, Status::INVALID_NAMESPACE);
}

#[test]
fn stats_qpairs_and_disconnect_teardown() {
    let mut t = Tgt::start();
    let mut h = t.host(false, false);
    assert_eq!(h.io.read(1, 0, 1).0, Status::SUCCESS);
    let stats = rpc_ok(&mut t.rpc, "nvmf_get_stats", json!({}));
    let g = &stats["poll_groups"][0];
    assert_eq!(g["name"], "nvmf_tgt_poll_group_000", "{stats}");
    assert_eq!(g["current_admin_qpairs"], 1, "{stats}");
    assert_eq!(g["current_io_qpairs"], 1, "{stats}");
    assert!(g["completed_nvme_io"].as_u64().unwrap_or(0) >= 1, "{stats}");
    assert_eq!(g["transports"][0]["trtype"], "TCP");
    assert!(stats["tick_rate"].as_u64().unwrap_or(0) > 0);

    let qp = rpc_ok(&mut t.rpc, "nvmf_subsystem_get_qpairs", json!({"nqn": NQN}));
    let qids: Vec<u64> = qp
        .as_array()
        .map(|a| a.iter().filter_map(|q| q["qid"].as_u64()).collect())
        .unwrap_or_default();
    assert_eq!(qids, vec![0, 1], "{qp}");
    assert_eq!(qp[0]["state"], "enabled");
    assert_eq!(qp[0]["thread"], "nvmf_tgt_poll_group_000");
    assert_eq!(qp[0]["listen_address"]["trsvcid"], t.port.to_string());
    assert_eq!(qp[1]["hostnqn"], HOSTNQN);
    let ctrlrs = rpc_ok(
        &mut t.rpc,
        "nvmf_subsystem_get_controllers",
        json!({"nqn": NQN}),
    );
    assert_eq!(ctrlrs[0]["cntlid"], h.cntlid, "{ctrlrs}");
    assert_eq!(ctrlrs[0]["num_io_qpairs"], 1, "{ctrlrs}");

    // The host drops its admin connection: the controller goes, with its I/O queue.
    let Host { admin, mut io, .. } = h;
    drop(admin);
    assert!(
        io.closed_within(DEADLINE),
        "the I/O queue outlived its controller"
    );
    let deadline = Instant::now() + DEADLINE;
    loop {
        let c = rpc_ok(
            &mut t.rpc,
            "nvmf_subsystem_get_controllers",
            json!({"nqn": NQN}),
        );
        if c.as_array().is_some_and(Vec::is_empty) {
            break;
        }
        assert!(Instant::now() < deadline, "controller still listed: {c}");
        std::thread::sleep(Duration::from_millis(10));
    }
    let stats = rpc_ok(&mut t.rpc, "nvmf_get_stats", json!({}));
    let g = &stats["poll_groups"][0];
    assert_eq!(g["current_admin_qpairs"], 0, "{stats}");
    assert_eq!(g["current_io_qpairs"], 0, "{stats}");
    assert_eq!(g["admin_qpairs"], 1, "{stats}");
    // A new host is served.
    let mut h = t.host(true, true);
    assert_eq!(h.io.read(1, 0, 1).0, Status::SUCCESS);
}

#[test]
fn keep_alive_timeout_tears_the_controller_down() {
    let t = Tgt::start_with(json!({"trtype": "TCP", "min_kato": 300}), true);
    let mut admin = t.client();
    admin.icreq(false, false);
    let cntlid = admin.connect_admin(NQN, HOSTNQN, 300);
    admin.enable();
    let mut io = t.client();
    io.icreq(false, false);
    let c = io.try_connect(NQN, HOSTNQN, 1, cntlid, 31, 0);
    assert!(c.status.is_success());
    // Keep alives hold it up...
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(admin.keep_alive(), Status::SUCCESS);
    }
    assert_eq!(io.read(1, 0, 1).0, Status::SUCCESS);
    // ...silence takes it down: both queues close.
    let started = Instant::now();
    assert!(admin.closed_within(DEADLINE), "admin queue still open");
    assert!(io.closed_within(DEADLINE), "I/O queue still open");
    assert!(started.elapsed() >= Duration::from_millis(200));
    let deadline = Instant::now() + DEADLINE;
    while !t.log().contains(&format!(
        "Disconnecting host {HOSTNQN} from subsystem {NQN} due to keep alive timeout"
    )) {
        assert!(
            Instant::now() < deadline,
            "no keep alive message:\n{}",
            t.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Another host connects.
    let mut h = t.host(false, false);
    assert_eq!(h.io.read(1, 0, 1).0, Status::SUCCESS);
}

#[test]
fn deleting_the_subsystem_or_removing_the_host_disconnects() {
    let mut t = Tgt::start_with(json!({"trtype": "TCP"}), false);
    // Host removed: its controller and queues go; others could still connect.
    let Host {
        mut admin, mut io, ..
    } = t.host(false, false);
    rpc_ok(
        &mut t.rpc,
        "nvmf_subsystem_remove_host",
        json!({"nqn": NQN, "host": HOSTNQN}),
    );
    assert!(
        admin.closed_within(DEADLINE),
        "admin queue survived host removal"
    );
    assert!(
        io.closed_within(DEADLINE),
        "I/O queue survived host removal"
    );
    let mut c = t.client();
    c.icreq(false, false);
    let r = c.try_connect(NQN, HOSTNQN, 0, 0xFFFF, 31, 0);
    assert!(r.status.same_code(&Status::CONNECT_INVALID_HOST), "{r:?}");
    rpc_ok(
        &mut t.rpc,
        "nvmf_subsystem_add_host",
        json!({"nqn": NQN, "host": HOSTNQN}),
    );

    // Subsystem deleted with I/O going on: the queues close and the bdev is free to delete.
    let Host {
        admin: _a, mut io, ..
    } = t.host(false, false);
    assert_eq!(io.read(1, 0, 1).0, Status::SUCCESS);
    rpc_ok(&mut t.rpc, "nvmf_delete_subsystem", json!({"nqn": NQN}));
    assert!(
        io.closed_within(DEADLINE),
        "I/O queue survived its subsystem"
    );
    rpc_ok(&mut t.rpc, "bdev_malloc_delete", json!({"name": "Malloc0"}));
    // Its listener went with it: nothing listens there any more.
    assert!(std::net::TcpStream::connect(("127.0.0.1", t.port)).is_err());
}
