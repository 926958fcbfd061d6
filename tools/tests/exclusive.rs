//! One process at a time on a cache: a second pcache_tgt or bdevperf started on a config whose
//! pmem file or origin another process has open exits 1 naming the busy file, and the first
//! process is unharmed (a pattern written through it before checks whole afterwards).
//!
//! The config is demo.json's shape: an emulated pmem file (Pmem0), a uring file origin
//! (Origin0) and a pcache bdev over them (Pcache0), all in a temp dir with the RPC sockets.

mod common;
use common::{DEADLINE, Watched, counts, rpc_call, u};

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use tests::Target;

const BDEVPERF: &str = env!("CARGO_BIN_EXE_bdevperf");
const MIB: u64 = 1 << 20;
const BS: u64 = 4096;
/// 16 MiB of origin: 4096 blocks of 4 KiB.
const BLOCKS: u64 = 4096;

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        std::fs::File::create(dir.path().join("origin.img"))
            .unwrap()
            .set_len(BLOCKS * BS)
            .unwrap();
        let s = Setup { dir };
        s.write_config("pcache.json", true);
        s.write_config("origin.json", false);
        s
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The pmem file, the origin and the pcache bdev; or the origin alone.
    fn write_config(&self, name: &str, cache: bool) {
        let origin = json!({"method": "bdev_uring_create", "params": {
            "name": "Origin0",
            "filename": self.path("origin.img"),
            "block_size": BS,
            "uuid": "5a1e0c4d-8b7f-4e2a-9c3d-1f6b8a2e4d70",
        }});
        let entries = if cache {
            vec![
                json!({"method": "bdev_pmem_create", "params": {
                    "name": "Pmem0",
                    "pmem_file": self.path("cache.pmem"),
                    "block_size": BS,
                    "num_blocks": 64 * MIB / BS,
                    "mode": "emulated",
                }}),
                origin,
                json!({"method": "bdev_pcache_create", "params": {
                    "name": "Pcache0",
                    "cache_bdev": "Pmem0",
                    "origin_bdev": "Origin0",
                    "segment_size": MIB,
                }}),
            ]
        } else {
            vec![origin]
        };
        let doc = json!({"subsystems": [{"subsystem": "bdev", "config": entries}]});
        std::fs::write(self.path(name), doc.to_string()).unwrap();
    }

    fn bdevperf(&self, config: &str, args: &[&str]) -> Watched {
        let mut cmd = Command::new(BDEVPERF);
        cmd.arg("-c")
            .arg(self.path(config))
            .args(["-m", "0x1", "--idle-backoff"])
            .args(args)
            .env("RUST_LOG", "info");
        Watched::spawn(cmd)
    }

    /// A one-shot pattern run over all of Pcache0 that must succeed; its job's JSON.
    fn pattern_run(&self, workload: &str, seed: &str) -> Value {
        let json_path = self.path("result.json");
        let mut p = self.bdevperf(
            "pcache.json",
            &[
                "-T",
                "Pcache0",
                "-q",
                "16",
                "-o",
                "64k",
                "-w",
                workload,
                "--pattern",
                seed,
                "--json-output",
                json_path.to_str().unwrap(),
            ],
        );
        let status = p.wait(DEADLINE);
        assert!(
            status.success(),
            "{workload} failed ({status}):\n{}",
            p.output()
        );
        let doc: Value =
            serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
        let j = doc["results"][0].clone();
        assert_eq!(u(&j, "blocks_covered"), BLOCKS, "{j:#}");
        j
    }

    /// A second pcache_tgt on `config`: it exits 1, its log naming `busy` as in use by `holder`.
    fn second_tgt_is_refused(&self, config: &str, busy: &str, holder: u32) {
        let c = self.path(config);
        let mut second = Target::spawn(self.dir.path(), "second", &["-c", c.to_str().unwrap()]);
        let code = second.wait_exit();
        let log = second.log_text();
        assert_eq!(code, 1, "{log}");
        names_busy_file(&log, &self.path(busy), holder);
        assert!(!log.contains("pcache_tgt ready"), "{log}");
    }

    /// A second bdevperf on `config`: it exits 1 before any I/O, naming `busy`.
    fn second_bdevperf_is_refused(&self, config: &str, busy: &str, holder: u32) {
        let mut p = self.bdevperf(
            config,
            &["-q", "8", "-o", "4096", "-w", "randwrite", "-t", "1"],
        );
        let status = p.wait(DEADLINE);
        assert_eq!(status.code(), Some(1), "{}", p.output());
        names_busy_file(p.output(), &self.path(busy), holder);
        assert!(!p.output().contains("Running I/O"), "{}", p.output());
    }
}

fn names_busy_file(log: &str, file: &Path, holder: u32) {
    let want = format!("{} is in use: process {holder} has it open", file.display());
    assert!(log.contains(&want), "no {want:?} in:\n{log}");
    assert!(log.contains("(-16)"), "EBUSY expected:\n{log}");
}

#[test]
fn a_second_pcache_tgt_on_the_same_cache_exits_1_and_the_first_keeps_serving() {
    let s = Setup::new();
    s.pattern_run("write", "41");
    let config = s.path("pcache.json");
    let mut first = Target::start_in(s.dir.path(), "first", &["-c", config.to_str().unwrap()]);

    // The cache's pmem file comes first in the config; the origin alone is busy too.
    s.second_tgt_is_refused("pcache.json", "cache.pmem", first.pid());
    s.second_tgt_is_refused("origin.json", "origin.img", first.pid());
    s.second_bdevperf_is_refused("pcache.json", "cache.pmem", first.pid());

    // The first target still serves its cache.
    let stats = rpc_call(
        &first.sock,
        "bdev_pcache_get_stats",
        json!({"name": "Pcache0"}),
    );
    assert!(stats["result"].is_object(), "{stats:#}");
    let bdevs = rpc_call(&first.sock, "bdev_get_bdevs", json!({"name": "Pcache0"}));
    assert_eq!(bdevs["result"][0]["num_blocks"], BLOCKS, "{bdevs:#}");
    assert_eq!(first.terminate(), 0, "{}", first.log_text());

    // What was written through the cache before is whole.
    let j = s.pattern_run("check", "41");
    assert_eq!(counts(&j), (BLOCKS, 0, 0), "{j:#}");
}

#[test]
fn a_second_bdevperf_on_the_same_cache_exits_1_and_the_first_checks_its_pattern_whole() {
    let s = Setup::new();
    let sock = s.path("first.sock");
    let mut first = s.bdevperf(
        "pcache.json",
        &[
            "-z",
            "-r",
            sock.to_str().unwrap(),
            "-T",
            "Pcache0",
            "-q",
            "16",
            "-o",
            "16k",
            "--pattern",
            "43",
        ],
    );
    first.wait_for("Waiting for the perform_tests RPC");
    let perform = |workload: &str| {
        let answer = rpc_call(&sock, "perform_tests", json!({"workload_type": workload}));
        let j = answer["result"]["results"][0].clone();
        assert_eq!(j["status"], "finished", "{answer:#}");
        assert_eq!(u(&j, "blocks_covered"), BLOCKS, "{answer:#}");
        j
    };
    perform("write");

    s.second_bdevperf_is_refused("pcache.json", "cache.pmem", first.pid());
    s.second_bdevperf_is_refused("origin.json", "origin.img", first.pid());
    s.second_tgt_is_refused("pcache.json", "cache.pmem", first.pid());

    assert_eq!(counts(&perform("check")), (BLOCKS, 0, 0));
    rpc_call(&sock, "spdk_kill_instance", json!({"sig_name": "SIGTERM"}));
    let status = first.wait(DEADLINE);
    assert!(status.success(), "{status}:\n{}", first.output());
    // And a process that opens the cache next finds it whole too.
    let j = s.pattern_run("check", "43");
    assert_eq!(counts(&j), (BLOCKS, 0, 0), "{j:#}");
}
