//! Bad input from hosts: oversized and truncated PDUs, wrong digests, PDUs out of sequence, a
//! Connect to an unknown NQN or from a host not allowed, a host that vanishes mid-command,
//! 100 connections opened and dropped. Each gets a clear status or a C2HTermReq, and after
//! each the target still serves another host, with the data written before intact.

mod common;

use common::*;
use nvmf::wire::command::{Sgl, Sqe, io as op};
use nvmf::wire::fabrics::{CNTLID_DYNAMIC, ConnectInvalid};
use nvmf::wire::pdu::{CapsuleCmd, Framing, H2CData, Header, TermReq, encode_pdu};
use nvmf::wire::status::Status;
use serde_json::json;
use std::time::{Duration, Instant};

/// FES values of a C2HTermReq.
const FES_INVALID_HEADER: u16 = 1;
const FES_SEQUENCE: u16 = 2;
const FES_HEADER_DIGEST: u16 = 3;
const FES_OUT_OF_RANGE: u16 = 4;
const FES_LIMIT: u16 = 5;

/// The data every check reads back: 8 blocks at LBA 64.
const KEEP_LBA: u64 = 64;

fn start() -> Tgt {
    let t = Tgt::start_with(json!({"trtype": "TCP"}), false);
    let mut h = t.host(false, false);
    assert_eq!(
        h.io.write(1, KEEP_LBA, &pattern(KEEP_LBA, 8, 1), false),
        Status::SUCCESS
    );
    t
}

/// Another host still gets the data written at the start.
fn still_serves(t: &Tgt) {
    let mut h = t.host(false, false);
    assert_eq!(
        h.io.read(1, KEEP_LBA, 8),
        (Status::SUCCESS, pattern(KEEP_LBA, 8, 1)),
        "log:\n{}",
        t.log()
    );
}

fn expect_term(c: &mut Client, fes: u16) -> TermReq {
    let g = c.recv();
    let Some(term) = term_of(&g) else {
        panic!("expected a C2HTermReq (FES {fes}), got {g:?}");
    };
    assert_eq!(term.fes, fes, "{g:?}");
    assert!(
        c.closed_within(DEADLINE),
        "the target kept the connection open"
    );
    term
}

fn capsule(c: &Client, sqe: &Sqe, data: &[u8]) -> Vec<u8> {
    c.pdu_bytes(
        &Header::CapsuleCmd(CapsuleCmd {
            sqe: sqe.to_bytes(),
        }),
        data,
    )
}

#[test]
fn oversized_pdus_get_a_termreq() {
    let t = start();
    // PLEN far past any limit.
    let mut c = t.client();
    c.icreq(false, false);
    let mut pdu = capsule(&c, &Sqe::new(op::READ, 1, 1), &[]);
    pdu[4..8].copy_from_slice(&0x7FFF_FFFFu32.to_le_bytes());
    pdu[3] = 72; // PDO: data would follow the header
    c.send_raw(&pdu).unwrap_or_default();
    expect_term(&mut c, FES_LIMIT);
    still_serves(&t);

    // In-capsule data over the I/O queue's in-capsule size (4 KiB) but within MAXH2CDATA.
    let mut h = t.host(false, false);
    let cid = h.io.cid();
    let mut w = Sqe::new(op::WRITE, cid, 1);
    w.set_lba_range(0, 4).unwrap_or_default();
    w.dptr = Sgl::in_capsule(0, 4 * BS as u32);
    h.io.send_cmd(&w, &pattern(0, 4, 3));
    expect_term(&mut h.io, FES_LIMIT);
    still_serves(&t);
}

#[test]
fn truncated_pdus_and_early_closes() {
    let t = start();
    // Half a capsule header, then the host goes away.
    let mut c = t.client();
    c.icreq(false, false);
    let pdu = capsule(&c, &Sqe::new(op::READ, 1, 1), &[]);
    c.send_raw(&pdu[..40]).unwrap_or_default();
    drop(c);
    // Half an ICReq.
    let mut c = t.client();
    c.send_raw(&[0u8, 0, 128, 0, 128, 0, 0, 0, 0, 0])
        .unwrap_or_default();
    drop(c);
    // A capsule whose in-capsule data stops short.
    let mut h = t.host(false, false);
    let cid = h.io.cid();
    let mut w = Sqe::new(op::WRITE, cid, 1);
    w.set_lba_range(KEEP_LBA, 1).unwrap_or_default();
    w.dptr = Sgl::in_capsule(0, BS as u32);
    let pdu = capsule(&h.io, &w, &[0xEE; BS]);
    h.io.send_raw(&pdu[..pdu.len() - 100]).unwrap_or_default();
    drop(h);
    still_serves(&t);
}

#[test]
fn wrong_digests() {
    let t = start();
    // Header digest: a TermReq.
    let mut c = t.client();
    c.icreq(true, false);
    let mut pdu = capsule(&c, &Sqe::new(op::READ, 1, 1), &[]);
    pdu[72] ^= 0x55;
    c.send_raw(&pdu).unwrap_or_default();
    let term = expect_term(&mut c, FES_HEADER_DIGEST);
    assert_eq!(term.fei, 0);
    still_serves(&t);

    // Data digest: the command fails (transient transport error) and writes nothing; the
    // connection goes on.
    let mut h = t.host(false, true);
    let cid = h.io.cid();
    let mut w = Sqe::new(op::WRITE, cid, 1);
    w.set_lba_range(KEEP_LBA, 1).unwrap_or_default();
    w.dptr = Sgl::in_capsule(0, BS as u32);
    let mut pdu = capsule(&h.io, &w, &[0xEE; BS]);
    let n = pdu.len();
    pdu[n - 1] ^= 0x01;
    h.io.send_raw(&pdu).unwrap_or_default();
    match h.io.recv() {
        Got::Resp(r) => {
            assert_eq!(r.cid, cid);
            assert!(
                r.status.same_code(&Status::TRANSIENT_TRANSPORT_ERROR),
                "{r:?}"
            );
        }
        other => panic!("expected an error completion, got {other:?}"),
    }
    // The same through R2T / H2CData.
    let cid = h.io.cid();
    let mut w = Sqe::new(op::WRITE, cid, 1);
    w.set_lba_range(KEEP_LBA, 8).unwrap_or_default();
    w.dptr = Sgl::transport(8 * BS as u32);
    h.io.send_cmd(&w, &[]);
    let Got::R2T(r2t) = h.io.recv() else {
        panic!("expected an R2T");
    };
    let mut pdu = h.io.pdu_bytes(
        &Header::H2CData(H2CData {
            cccid: cid,
            ttag: r2t.ttag,
            datao: 0,
            datal: 8 * BS as u32,
            last: true,
        }),
        &[0xEE; 8 * BS],
    );
    let n = pdu.len();
    pdu[n - 2] ^= 0x80;
    h.io.send_raw(&pdu).unwrap_or_default();
    match h.io.recv() {
        Got::Resp(r) => {
            assert!(
                r.status.same_code(&Status::TRANSIENT_TRANSPORT_ERROR),
                "{r:?}"
            );
        }
        other => panic!("expected an error completion, got {other:?}"),
    }
    assert_eq!(
        h.io.read(1, KEEP_LBA, 8),
        (Status::SUCCESS, pattern(KEEP_LBA, 8, 1))
    );
    still_serves(&t);
}

#[test]
fn pdus_and_commands_out_of_sequence() {
    let t = start();
    // A capsule before ICReq.
    let mut c = t.client();
    let pdu = capsule(&c, &Sqe::new(op::READ, 1, 1), &[]);
    c.send_raw(&pdu).unwrap_or_default();
    let term = expect_term(&mut c, FES_SEQUENCE);
    let _ = term;
    // A second ICReq.
    let mut c = t.client();
    c.icreq(false, false);
    let mut ic = vec![0u8; 128];
    ic[2] = 128;
    ic[4] = 128;
    c.send_raw(&ic).unwrap_or_default();
    expect_term(&mut c, FES_SEQUENCE);
    // An unknown PDU type: the TermReq points at the type and copies the header.
    let mut c = t.client();
    c.icreq(false, false);
    let mut bad = capsule(&c, &Sqe::new(op::READ, 1, 1), &[]);
    bad[0] = 0x08;
    c.send_raw(&bad).unwrap_or_default();
    match c.recv() {
        Got::Term {
            fes,
            fei,
            offending,
        } => {
            assert_eq!((fes, fei), (FES_INVALID_HEADER, 0));
            assert_eq!(&offending[..8], &bad[..8]);
        }
        other => panic!("expected a TermReq, got {other:?}"),
    }
    // A command before Connect, a second Connect: Command Sequence Error, connection kept.
    let mut c = t.client();
    c.icreq(false, false);
    let (st, _) = c.read(1, 0, 1);
    assert!(st.same_code(&Status::COMMAND_SEQUENCE_ERROR), "{st:?}");
    c.connect_admin(NQN, HOSTNQN, 0);
    let again = c.try_connect(NQN, HOSTNQN, 0, CNTLID_DYNAMIC, 31, 0);
    assert!(again.status.same_code(&Status::COMMAND_SEQUENCE_ERROR));
    // H2CData for no R2T.
    let mut h = t.host(false, false);
    h.io.send_pdu(
        &Header::H2CData(H2CData {
            cccid: 9,
            ttag: 3,
            datao: 0,
            datal: 512,
            last: true,
        }),
        &[0; 512],
    );
    expect_term(&mut h.io, FES_INVALID_HEADER);
    // H2CData past the R2T's range.
    let mut h = t.host(false, false);
    let cid = h.io.cid();
    let mut w = Sqe::new(op::WRITE, cid, 1);
    w.set_lba_range(0, 2).unwrap_or_default();
    w.dptr = Sgl::transport(2 * BS as u32);
    h.io.send_cmd(&w, &[]);
    let Got::R2T(r2t) = h.io.recv() else {
        panic!("expected an R2T");
    };
    h.io.send_pdu(
        &Header::H2CData(H2CData {
            cccid: cid,
            ttag: r2t.ttag,
            datao: BS as u32,
            datal: 2 * BS as u32,
            last: true,
        }),
        &[0; 2 * BS],
    );
    expect_term(&mut h.io, FES_OUT_OF_RANGE);
    // A TermReq from the host: the target closes without answering.
    let mut c = t.client();
    c.icreq(false, false);
    let mut term = vec![0u8; 64];
    let n = encode_pdu(
        &mut term,
        &Header::H2CTermReq(TermReq { fes: 2, fei: 0 }),
        &Framing::NONE,
        &[],
    )
    .unwrap_or(0);
    c.send_raw(&term[..n]).unwrap_or_default();
    assert!(matches!(c.recv(), Got::Closed));
    still_serves(&t);
}

#[test]
fn connect_refusals() {
    let t = start();
    // Unknown subsystem: Connect Invalid Parameters, pointing at SUBNQN in the data.
    let mut c = t.client();
    c.icreq(false, false);
    let r = c.try_connect(
        "nqn.2016-06.io.spdk:nope",
        HOSTNQN,
        0,
        CNTLID_DYNAMIC,
        31,
        0,
    );
    assert!(
        r.status.same_code(&Status::CONNECT_INVALID_PARAMETERS),
        "{r:?}"
    );
    assert_eq!(ConnectInvalid::from_dw0(r.dw0), ConnectInvalid::data(256));
    // A host not on the list: Connect Invalid Host.
    let r = c.try_connect(
        NQN,
        "nqn.2014-08.org.example:intruder",
        0,
        CNTLID_DYNAMIC,
        31,
        0,
    );
    assert!(r.status.same_code(&Status::CONNECT_INVALID_HOST), "{r:?}");
    // A queue deeper than the transport allows.
    let r = c.try_connect(NQN, HOSTNQN, 0, CNTLID_DYNAMIC, 4095, 0);
    assert!(
        r.status.same_code(&Status::CONNECT_INVALID_PARAMETERS),
        "{r:?}"
    );
    assert_eq!(ConnectInvalid::from_dw0(r.dw0), ConnectInvalid::command(44));
    // An I/O queue of no controller, of another host's controller, of a disabled one.
    let r = c.try_connect(NQN, HOSTNQN, 1, 0x1234, 31, 0);
    assert!(
        r.status.same_code(&Status::CONNECT_INVALID_PARAMETERS),
        "{r:?}"
    );
    let mut a = t.client();
    a.icreq(false, false);
    let cntlid = a.connect_admin(NQN, HOSTNQN, 0);
    let r = c.try_connect(NQN, HOSTNQN, 1, cntlid, 31, 0);
    assert!(
        r.status.same_code(&Status::CONNECT_INVALID_PARAMETERS),
        "disabled: {r:?}"
    );
    a.enable();
    let r = c.try_connect(NQN, HOSTNQN, 200, cntlid, 31, 0);
    assert!(
        r.status.same_code(&Status::CONNECT_INVALID_PARAMETERS),
        "qid: {r:?}"
    );
    let r = c.try_connect(NQN, HOSTNQN, 1, cntlid, 31, 0);
    assert!(r.status.is_success(), "{r:?}");
    let mut d = t.client();
    d.icreq(false, false);
    let r = d.try_connect(NQN, HOSTNQN, 1, cntlid, 31, 0);
    assert!(
        r.status.same_code(&Status::CONNECT_INVALID_PARAMETERS),
        "same qid twice: {r:?}"
    );
    still_serves(&t);
}

#[test]
fn host_vanishes_mid_write() {
    let t = start();
    let mut h = t.host(false, false);
    let cid = h.io.cid();
    let mut w = Sqe::new(op::WRITE, cid, 1);
    w.set_lba_range(KEEP_LBA, 8).unwrap_or_default();
    w.dptr = Sgl::transport(8 * BS as u32);
    h.io.send_cmd(&w, &[]);
    let Got::R2T(r2t) = h.io.recv() else {
        panic!("expected an R2T");
    };
    // Half the data, in a PDU that says there is more, and half of a second PDU.
    let first = h.io.pdu_bytes(
        &Header::H2CData(H2CData {
            cccid: cid,
            ttag: r2t.ttag,
            datao: 0,
            datal: 4 * BS as u32,
            last: false,
        }),
        &[0xEE; 4 * BS],
    );
    h.io.send_raw(&first).unwrap_or_default();
    let second = h.io.pdu_bytes(
        &Header::H2CData(H2CData {
            cccid: cid,
            ttag: r2t.ttag,
            datao: 4 * BS as u32,
            datal: 4 * BS as u32,
            last: true,
        }),
        &[0xEE; 4 * BS],
    );
    h.io.send_raw(&second[..second.len() / 2])
        .unwrap_or_default();
    drop(h);
    // Nothing of the write was applied; the controller went with its host.
    still_serves(&t);
}

#[test]
fn a_hundred_connections_opened_and_dropped() {
    let mut t = start();
    for i in 0..100 {
        let mut c = t.client();
        match i % 4 {
            0 => {}
            1 => {
                c.icreq(i % 8 == 1, false);
            }
            2 => {
                c.icreq(false, false);
                c.connect_admin(NQN, HOSTNQN, 0);
            }
            _ => {
                let mut h = t.host(false, false);
                let _ = h.io.read(1, 0, 1);
            }
        }
        drop(c);
    }
    still_serves(&t);
    // Every one of them is gone from the books.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let s = rpc_ok(&mut t.rpc, "nvmf_get_stats", json!({}));
        let g = &s["poll_groups"][0];
        if g["current_admin_qpairs"] == 0
            && g["current_io_qpairs"] == 0
            && g["current_unassociated_qpairs"] == 0
        {
            break;
        }
        assert!(Instant::now() < deadline, "connections left: {s}");
        std::thread::sleep(Duration::from_millis(10));
    }
    let c = rpc_ok(
        &mut t.rpc,
        "nvmf_subsystem_get_controllers",
        json!({"nqn": NQN}),
    );
    assert_eq!(c, json!([]));
}
