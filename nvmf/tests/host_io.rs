//! I/O through the initiator against our own target, driven by bdevperf on core 1 with
//! `bdev_nvme_attach_controller` in its config (as SPDK's bdevperf runs over NVMe/TCP): a
//! pattern written through it reads back from a new process, with writes in the capsule and
//! through R2T and transfers above the controller's limit; every I/O type; both digests.

mod common;

use common::host::*;
use serde_json::{Value, json};

/// 32 MiB of 4 KiB blocks.
const BLOCKS: u64 = 8192;

fn export() -> Export {
    Export::start(vec![malloc("Malloc0", BLOCKS, 4096)], "Malloc0")
}

fn run(dir: &std::path::Path, name: &str, cfg: &Value, args: &[&str]) -> Value {
    let mut a = vec!["-T", "Nvme0n1"];
    a.extend_from_slice(args);
    Perf::run(dir, name, cfg, &a).ok().clone()
}

fn pattern_round(e: &Export, dir: &std::path::Path, digests: Value, tag: &str) {
    let cfg = e.client_config("Nvme0", digests);
    // 64 KiB writes go through R2T / H2CData; 4 KiB ones in the capsule.
    for (seed, wsize, rsize) in [("11", "64k", "4k"), ("12", "4k", "256k")] {
        let w = run(
            dir,
            &format!("{tag}-write-{seed}"),
            &cfg,
            &["-q", "32", "-o", wsize, "-w", "write", "--pattern", seed],
        );
        assert_eq!(w["blocks_covered"], BLOCKS, "{w:#}");
        // A new process reads it all back (256 KiB reads: two commands each, MDTS 128 KiB).
        let c = run(
            dir,
            &format!("{tag}-check-{seed}"),
            &cfg,
            &["-q", "16", "-o", rsize, "-w", "check", "--pattern", seed],
        );
        assert_eq!(
            (
                c["blocks_matching"].clone(),
                c["blocks_other_pattern"].clone(),
                c["blocks_foreign"].clone()
            ),
            (json!(BLOCKS), json!(0), json!(0)),
            "{c:#}"
        );
    }
}

#[test]
fn pattern_written_through_the_initiator_reads_back_from_a_new_process() {
    let e = export();
    let dir = tests::tempdir();
    pattern_round(&e, dir.path(), json!({}), "plain");
}

#[test]
fn pattern_with_header_and_data_digests() {
    let e = export();
    let dir = tests::tempdir();
    pattern_round(
        &e,
        dir.path(),
        json!({"hdgst": true, "ddgst": true}),
        "digests",
    );
    // Header digest alone.
    let cfg = e.client_config("Nvme0", json!({"hdgst": true}));
    run(
        dir.path(),
        "hdgst-verify",
        &cfg,
        &["-q", "32", "-o", "16k", "-w", "verify", "-t", "1"],
    );
}

#[test]
fn every_io_type() {
    let e = export();
    let dir = tests::tempdir();
    let cfg = e.client_config("Nvme0", json!({}));
    for (w, extra) in [
        ("verify", vec!["-o", "4k"]),
        ("verify", vec!["-o", "192k"]),
        ("randread", vec!["-o", "4k"]),
        ("randwrite", vec!["-o", "8k"]),
        ("randrw", vec!["-o", "4k", "-M", "50"]),
        ("flush", vec!["-o", "4k"]),
        ("unmap", vec!["-o", "64k"]),
        ("write_zeroes", vec!["-o", "1m"]),
    ] {
        let mut args = vec!["-q", "16", "-w", w, "-t", "1"];
        args.extend(extra.iter().copied());
        let j = run(dir.path(), &format!("io-{w}-{}", extra[1]), &cfg, &args);
        assert!(
            j["io_completed"].as_u64().is_some_and(|n| n > 0),
            "{w}: {j:#}"
        );
    }
}

#[test]
fn each_thread_gets_its_own_io_qpair() {
    let e = export();
    let dir = tests::tempdir();
    let cfg = e.client_config("Nvme0", json!({}));
    // Two reactors, each driving its slice of the bdev: two I/O qpairs and the admin queue.
    let perf = Perf::spawn_on(
        dir.path(),
        "two-threads",
        &cfg,
        "0x3",
        &[
            "-T", "Nvme0n1", "-C", "-q", "16", "-o", "4k", "-w", "verify", "-t", "3",
        ],
    );
    let qids = poll_until(LONG, "two I/O qpairs at the target", || {
        let q = e.call(
            "nvmf_subsystem_get_qpairs",
            json!({"nqn": common::host::SUBNQN}),
        );
        let mut ids: Vec<u64> = q
            .as_array()
            .map(|a| a.iter().filter_map(|x| x["qid"].as_u64()).collect())
            .unwrap_or_default();
        ids.sort_unstable();
        (ids.len() == 3).then_some(ids)
    });
    assert_eq!(qids, vec![0, 1, 2]);
    let r = perf.finish(LONG);
    for j in r.json["results"].as_array().cloned().unwrap_or_default() {
        assert_eq!(j["io_failed"], 0, "{j:#}\n{}", r.output);
    }
    assert!(r.status.success(), "{}", r.output);
}
