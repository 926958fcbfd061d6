//! The target's data path, driven by the raw client: ICReq, admin Connect, Property Get/Set,
//! Identify, an I/O queue, Read/Write in-capsule and through R2T/H2CData, C2HData, with and
//! without digests; Flush, Write Zeroes, Dataset Management; error statuses.

mod common;

use common::*;
use nvmf::wire::command::{DsmRange, Sgl, Sqe, io as op};
use nvmf::wire::fabrics::reg;
use nvmf::wire::status::Status;

#[test]
fn connect_identify_and_io_with_and_without_digests() {
    let t = Tgt::start();
    for (hdgst, ddgst) in [(false, false), (true, true), (true, false), (false, true)] {
        let mut h = t.host(hdgst, ddgst);
        // Registers.
        let cap = h.admin.property_get(reg::CAP, 8);
        assert_eq!(cap & 0xFFFF, 127, "MQES = max_queue_depth - 1");
        assert_eq!(h.admin.property_get(reg::VS, 4), 0x0001_0300);
        // Identify controller: cntlid matches the Connect, ioccsz, kas.
        let (st, id) = h.admin.identify(1, 0);
        assert_eq!(st, Status::SUCCESS);
        assert_eq!(id.len(), 4096);
        assert_eq!(u16::from_le_bytes([id[78], id[79]]), h.cntlid);
        // Identify namespace 1: 4096 blocks.
        let (st, ns) = h.admin.identify(0, 1);
        assert_eq!(st, Status::SUCCESS);
        assert_eq!(
            u64::from_le_bytes(ns[0..8].try_into().unwrap_or_default()),
            BLOCKS
        );

        let seed = u8::from(hdgst) * 2 + u8::from(ddgst);
        // In-capsule write (one block), R2T write (8 blocks), 32-block R2T write (128 KiB).
        let a = pattern(10, 1, seed);
        assert_eq!(h.io.write(1, 10, &a, true), Status::SUCCESS);
        let b = pattern(100, 8, seed);
        assert_eq!(h.io.write(1, 100, &b, false), Status::SUCCESS);
        let c = pattern(200, 32, seed);
        assert_eq!(h.io.write(1, 200, &c, false), Status::SUCCESS);
        assert_eq!(h.io.read(1, 10, 1), (Status::SUCCESS, a));
        assert_eq!(h.io.read(1, 100, 8), (Status::SUCCESS, b));
        assert_eq!(h.io.read(1, 200, 32), (Status::SUCCESS, c));
        assert_eq!(h.admin.keep_alive(), Status::SUCCESS);
    }
}

#[test]
fn nvm_commands_and_their_errors() {
    let t = Tgt::start();
    let mut h = t.host(false, false);
    let data = pattern(0, 4, 7);
    assert_eq!(h.io.write(1, 0, &data, false), Status::SUCCESS);

    // Flush.
    let cid = h.io.cid();
    let (c, _) = h.io.run(Sqe::new(op::FLUSH, cid, 1), &[], false);
    assert_eq!(c.status, Status::SUCCESS);

    // Write Zeroes over block 1.
    let cid = h.io.cid();
    let mut wz = Sqe::new(op::WRITE_ZEROES, cid, 1);
    wz.set_lba_range(1, 1).unwrap_or_default();
    assert_eq!(h.io.run(wz, &[], false).0.status, Status::SUCCESS);
    let (st, got) = h.io.read(1, 0, 4);
    assert_eq!(st, Status::SUCCESS);
    assert_eq!(&got[..BS], &data[..BS]);
    assert!(got[BS..2 * BS].iter().all(|&b| b == 0));
    assert_eq!(&got[2 * BS..], &data[2 * BS..]);

    // Dataset Management: deallocate blocks 2..4 (malloc reads them back as zeroes).
    let cid = h.io.cid();
    let mut dsm = Sqe::new(op::DATASET_MANAGEMENT, cid, 1);
    dsm.set_dsm(1, nvmf::wire::command::dsm::AD)
        .unwrap_or_default();
    let ranges = DsmRange {
        attributes: 0,
        nlb: 2,
        slba: 2,
    }
    .to_bytes();
    assert_eq!(h.io.run(dsm, &ranges, true).0.status, Status::SUCCESS);

    // Errors: unknown namespace, LBA out of range, length that does not match, bad opcode.
    let (st, _) = h.io.read(2, 0, 1);
    assert_eq!(st, Status::INVALID_NAMESPACE);
    let (st, _) = h.io.read(1, BLOCKS - 1, 2);
    assert!(st.same_code(&Status::LBA_OUT_OF_RANGE), "{st:?}");
    let cid = h.io.cid();
    let mut bad = Sqe::new(op::READ, cid, 1);
    bad.set_lba_range(0, 2).unwrap_or_default();
    bad.dptr = Sgl::transport(4096);
    assert!(
        h.io.run(bad, &[], false)
            .0
            .status
            .same_code(&Status::SGL_INVALID_DATA_LENGTH)
    );
    let cid = h.io.cid();
    let (c, _) = h.io.run(Sqe::new(0x7E, cid, 1), &[], false);
    assert!(c.status.same_code(&Status::INVALID_OPCODE));
    // An admin command on the I/O queue.
    let (st, _) = h.io.identify(1, 0);
    assert!(st.same_code(&Status::INVALID_OPCODE), "{st:?}");
    // The queue still serves.
    assert_eq!(h.io.read(1, 0, 1).0, Status::SUCCESS);
}

#[test]
fn reads_end_with_c2h_success_when_sq_flow_control_is_off() {
    let t = Tgt::start();
    let mut admin = t.client();
    admin.icreq(false, true);
    let cntlid = admin.connect_admin(NQN, HOSTNQN, 0);
    admin.enable();
    let mut io = t.client();
    io.cattr = 4;
    io.icreq(false, true);
    assert!(
        io.try_connect(NQN, HOSTNQN, 1, cntlid, 31, 0)
            .status
            .is_success()
    );
    let data = pattern(7, 2, 4);
    assert_eq!(io.write(1, 7, &data, false), Status::SUCCESS);
    let cid = io.cid();
    let mut rd = Sqe::new(op::READ, cid, 1);
    rd.set_lba_range(7, 2).unwrap_or_default();
    rd.dptr = Sgl::transport(2 * BS as u32);
    io.send_cmd(&rd, &[]);
    match io.recv() {
        Got::C2H {
            cid: c,
            data: d,
            last,
            success,
            digest_ok,
            ..
        } => {
            assert_eq!(c, cid);
            assert!(last && success && digest_ok);
            assert_eq!(d, data);
        }
        other => panic!("expected C2HData with SUCCESS, got {other:?}"),
    }
    // No CapsuleResp follows: the next PDU answers the next command.
    assert_eq!(io.read(1, 7, 2), (Status::SUCCESS, pattern(7, 2, 4)));
    // A failed read still gets its CapsuleResp.
    assert_eq!(io.read(1, BLOCKS, 1).0.sct, Status::LBA_OUT_OF_RANGE.sct);
}

/// Sends `pdu` in two writes split at `at`, with a pause between, so the target sees the
/// first part alone.
fn send_split(c: &mut Client, pdu: &[u8], at: usize) {
    c.send_raw(&pdu[..at]).unwrap_or_default();
    std::thread::sleep(std::time::Duration::from_millis(3));
    c.send_raw(&pdu[at..]).unwrap_or_default();
}

#[test]
fn pdus_arriving_in_pieces() {
    use nvmf::wire::pdu::{CapsuleCmd, H2CData, Header};
    let t = Tgt::start();
    let mut h = t.host(true, true);
    // An in-capsule write (header 72 + digest 4, data 4096, digest 4) split inside the common
    // header, the header, its digest, the data, right before the data digest, inside it.
    for (i, at) in [3usize, 40, 74, 76, 2000, 76 + 4096, 76 + 4096 + 2]
        .into_iter()
        .enumerate()
    {
        let lba = 300 + i as u64;
        let data = pattern(lba, 1, 11);
        let cid = h.io.cid();
        let mut w = Sqe::new(op::WRITE, cid, 1);
        w.set_lba_range(lba, 1).unwrap_or_default();
        w.dptr = Sgl::in_capsule(0, BS as u32);
        let pdu =
            h.io.pdu_bytes(&Header::CapsuleCmd(CapsuleCmd { sqe: w.to_bytes() }), &data);
        send_split(&mut h.io, &pdu, at);
        match h.io.recv() {
            Got::Resp(r) => assert_eq!((r.cid, r.status), (cid, Status::SUCCESS), "split {at}"),
            other => panic!("split at {at}: {other:?}"),
        }
        assert_eq!(h.io.read(1, lba, 1), (Status::SUCCESS, data), "split {at}");
    }
    // H2CData (header 24 + digest 4, data 16 KiB, digest 4) split the same ways.
    for (i, at) in [5usize, 26, 28, 9000, 28 + 16384, 28 + 16384 + 3]
        .into_iter()
        .enumerate()
    {
        let lba = 400 + 4 * i as u64;
        let data = pattern(lba, 4, 12);
        let cid = h.io.cid();
        let mut w = Sqe::new(op::WRITE, cid, 1);
        w.set_lba_range(lba, 4).unwrap_or_default();
        w.dptr = Sgl::transport(4 * BS as u32);
        h.io.send_cmd(&w, &[]);
        let Got::R2T(r2t) = h.io.recv() else {
            panic!("expected an R2T");
        };
        let pdu = h.io.pdu_bytes(
            &Header::H2CData(H2CData {
                cccid: cid,
                ttag: r2t.ttag,
                datao: 0,
                datal: 4 * BS as u32,
                last: true,
            }),
            &data,
        );
        send_split(&mut h.io, &pdu, at);
        match h.io.recv() {
            Got::Resp(r) => assert_eq!((r.cid, r.status), (cid, Status::SUCCESS), "split {at}"),
            other => panic!("split at {at}: {other:?}"),
        }
        assert_eq!(h.io.read(1, lba, 4), (Status::SUCCESS, data), "split {at}");
    }
}
