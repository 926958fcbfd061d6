//! A load generator for the target's data path (ignored by default; run with
//! `cargo test --release -p nvmf --test target_bench -- --ignored --nocapture`): one client
//! thread pinned to the other core keeps `QD` 4 KiB random reads in flight on one I/O queue of
//! a target running on core 0 with a malloc namespace, and reports IOPS.
//!
//! Environment: `BENCH_SECS` (default 5), `BENCH_QD` (32), `BENCH_C2H_SUCCESS` (1: Connect
//! with SQ flow control disabled so reads complete with C2HData SUCCESS and no CapsuleResp),
//! `BENCH_CORE` (1), `BENCH_WRITE` (1: random writes in-capsule instead), `BENCH_PORT` (a
//! target already listening there with `NQN` exported, queue depth ≥ 256).

mod common;

use common::*;
use nvmf::wire::command::{Sgl, Sqe, io as op};
use nvmf::wire::fabrics::{ConnectCommand, ConnectData, Nqn};
use nvmf::wire::pdu::{CapsuleCmd, Framing, Header, encode_pdu};
use std::io::{ErrorKind, Read, Write};
use std::time::{Duration, Instant};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pin(core: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it; the call
    // only changes this thread's affinity.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

#[test]
#[ignore]
fn randread_4k() {
    let secs = env("BENCH_SECS", 5);
    let qd = env("BENCH_QD", 32) as usize;
    let c2h_success = env("BENCH_C2H_SUCCESS", 1) == 1;
    let write = env("BENCH_WRITE", 0) == 1;
    // A busy-polling target (no idle back-off), as in production; or, with BENCH_PORT, one
    // already serving `NQN` there (under a profiler, say).
    let port = env("BENCH_PORT", 0) as u16;
    let (_proc, t) = if port != 0 {
        let rpc =
            tests::RawClient::from_stream(std::os::unix::net::UnixStream::pair().expect("pair").0);
        (None, Tgt { t: None, port, rpc })
    } else {
        let p = Proc::start(&["-m", "0x1"]);
        let t = Tgt::setup(
            None,
            p.rpc(),
            serde_json::json!({"trtype": "TCP", "max_queue_depth": 256}),
            true,
        );
        (Some(p), t)
    };
    pin(env("BENCH_CORE", 1) as usize);
    let mut admin = t.client();
    admin.icreq(false, false);
    let cntlid = admin.connect_admin(NQN, HOSTNQN, 0);
    admin.enable();
    admin.set_queues(1);
    let mut io = t.client();
    io.icreq(false, false);
    // I/O Connect, with CATTR bit 2 (SQ flow control disabled) when asked.
    let cmd = ConnectCommand {
        recfmt: 0,
        qid: 1,
        sqsize: 255,
        cattr: if c2h_success { 4 } else { 0 },
        kato: 0,
    };
    let sqe = cmd.to_sqe(1, Sgl::in_capsule(0, 1024));
    let mut d = vec![0u8; 1024];
    ConnectData {
        hostid: [7; 16],
        cntlid,
        subnqn: Nqn::new(NQN).unwrap_or_default(),
        hostnqn: Nqn::new(HOSTNQN).unwrap_or_default(),
    }
    .encode(&mut d)
    .unwrap_or_default();
    let (c, _) = io.run(sqe, &d, true);
    assert!(c.status.is_success());

    // Pre-encoded capsules, one per cid (cid = slot).
    let cap_len = if write { 72 + BS } else { 72 };
    let payload = vec![0xA5u8; BS];
    let mut caps = vec![0u8; cap_len * qd];
    let encode = |caps: &mut [u8], slot: usize, lba: u64| {
        let mut sqe = Sqe::new(if write { op::WRITE } else { op::READ }, slot as u16, 1);
        let _ = sqe.set_lba_range(lba, 1);
        sqe.dptr = if write {
            Sgl::in_capsule(0, BS as u32)
        } else {
            Sgl::transport(BS as u32)
        };
        let h = Header::CapsuleCmd(CapsuleCmd {
            sqe: sqe.to_bytes(),
        });
        let data: &[u8] = if write { &payload } else { &[] };
        let _ = encode_pdu(
            &mut caps[slot * cap_len..(slot + 1) * cap_len],
            &h,
            &Framing::NONE,
            data,
        );
    };
    let mut rng: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next_lba = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % BLOCKS
    };
    let sock = &io.sock;
    sock.set_nonblocking(true).unwrap_or_default();
    let mut out: Vec<u8> = Vec::with_capacity(cap_len * qd);
    for s in 0..qd {
        encode(&mut caps, s, next_lba());
        out.extend_from_slice(&caps[s * cap_len..(s + 1) * cap_len]);
    }
    let mut rbuf = vec![0u8; 1 << 20];
    let (mut rs, mut re) = (0usize, 0usize);
    let mut done: u64 = 0;
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut w = 0usize;
    let mut stop = false;
    loop {
        if w < out.len() {
            match (&*sock).write(&out[w..]) {
                Ok(n) => w += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("send: {e}"),
            }
            if w == out.len() {
                out.clear();
                w = 0;
            }
        }
        if re == rbuf.len() {
            rbuf.copy_within(rs..re, 0);
            re -= rs;
            rs = 0;
        }
        match (&*sock).read(&mut rbuf[re..]) {
            Ok(0) => panic!("target closed"),
            Ok(n) => re += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => panic!("recv: {e}"),
        }
        // Parse whole PDUs: C2HData (24 + data) and CapsuleResp (24).
        loop {
            if re - rs < 8 {
                break;
            }
            let plen = u32::from_le_bytes([rbuf[rs + 4], rbuf[rs + 5], rbuf[rs + 6], rbuf[rs + 7]])
                as usize;
            if re - rs < plen {
                break;
            }
            let ty = rbuf[rs];
            let flags = rbuf[rs + 1];
            let finished = match ty {
                0x07 => {
                    (flags & 0x08 != 0).then(|| u16::from_le_bytes([rbuf[rs + 8], rbuf[rs + 9]]))
                }
                0x05 => {
                    let status = u16::from_le_bytes([rbuf[rs + 22], rbuf[rs + 23]]);
                    assert_eq!(status >> 1, 0, "I/O failed");
                    Some(u16::from_le_bytes([rbuf[rs + 20], rbuf[rs + 21]]))
                }
                t => panic!("unexpected PDU type {t}"),
            };
            rs += plen;
            if let Some(cid) = finished {
                done += 1;
                if !stop {
                    let s = cid as usize;
                    encode(&mut caps, s, next_lba());
                    out.extend_from_slice(&caps[s * cap_len..(s + 1) * cap_len]);
                }
            }
        }
        if rs == re {
            rs = 0;
            re = 0;
        }
        if !stop && Instant::now() >= end {
            stop = true;
        }
        if stop {
            break;
        }
    }
    let el = start.elapsed().as_secs_f64();
    println!(
        "{} 4 KiB qd {qd} c2h_success {c2h_success}: {:.0} IOPS ({done} in {el:.2} s)",
        if write { "randwrite" } else { "randread" },
        done as f64 / el
    );
}
