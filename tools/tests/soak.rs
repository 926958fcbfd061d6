//! Soak (not in the default run): queues of 4096 into a small pcache whose origin is slow and
//! jittery (a delay bdev over malloc, p99 latencies in the tens of milliseconds), so the cache
//! fills, GC and writeback run all the time, and foreground I/O holds every pooled bdev_io. It fails
//! if I/O stops completing for `STALL` at any point (read from bdevperf's own bdev_get_iostat once
//! a second), if the stall watchdog ever logs, or if any I/O fails.
//!
//! `cargo test --release -p tools --test soak -- --ignored` (`PCACHE_SOAK_SECS`, default 60, is the
//! time of each of its two phases: 4 KiB randwrite, then 64 KiB randrw with half reads).

mod common;
use common::{DEADLINE, try_rpc_call, u};

use serde_json::json;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BDEVPERF: &str = env!("CARGO_BIN_EXE_bdevperf");
/// No I/O completing for this long is a hang (the stall watchdog speaks after 5 s).
const STALL: Duration = Duration::from_secs(10);

/// Reads and writes Pcache0 has completed; None once bdevperf's socket is gone (the run ended).
fn ops(sock: &Path) -> Option<u64> {
    let r = try_rpc_call(sock, "bdev_get_iostat", json!({"name": "Pcache0"})).ok()?;
    let b = &r["result"]["bdevs"][0];
    Some(u(b, "num_read_ops") + u(b, "num_write_ops"))
}

fn phase(dir: &Path, config: &Path, workload: &[&str], io_size: u32, secs: u64) {
    let sock = dir.join(format!("bdevperf-{}.sock", workload[0]));
    let log = dir.join(format!("bdevperf-{}.log", workload[0]));
    let out = dir.join(format!("bdevperf-{}.json", workload[0]));
    let mut child = Command::new(BDEVPERF)
        .args([
            "-c",
            config.to_str().unwrap(),
            "-T",
            "Pcache0",
            "-q",
            "4096",
        ])
        .args([
            "-o",
            &io_size.to_string(),
            "-t",
            &secs.to_string(),
            "-m",
            "0x1",
        ])
        .args(["-w"])
        .args(workload)
        .args(["-r", sock.to_str().unwrap()])
        .args(["--json-output", out.to_str().unwrap()])
        .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
        .stderr(Stdio::from(
            std::fs::OpenOptions::new().append(true).open(&log).unwrap(),
        ))
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !sock.exists() {
        assert!(start.elapsed() < DEADLINE, "bdevperf did not start");
        assert!(child.try_wait().unwrap().is_none(), "bdevperf exited");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (mut last, mut moved) = (0, Instant::now());
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if let Some(n) = ops(&sock) {
            if n != last {
                (last, moved) = (n, Instant::now());
            }
            assert!(
                moved.elapsed() < STALL,
                "{workload:?}: no I/O completed for {STALL:?} after {last} ops"
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs) + DEADLINE,
            "{workload:?}: bdevperf did not finish"
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{workload:?}: {status}\n{text}");
    assert!(
        !text.contains("no I/O completed"),
        "the stall watchdog spoke:\n{text}"
    );
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let job = &results["results"][0];
    assert_eq!(job["io_failed"], 0, "{workload:?}: {job:#}");
    eprintln!("{workload:?}: {job}");
}

#[test]
#[ignore = "soak: run with --ignored"]
fn deep_queues_into_a_full_cache_over_a_slow_jittery_origin_keep_completing() {
    let secs: u64 = std::env::var("PCACHE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("soak.json");
    // Small pools, so the cache's origin channel runs out often: read misses and writeback
    // then queue behind each other for bdev_io instead of failing or starving.
    let cfg = json!({"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_set_options", "params": {"bdev_io_cache_size": 128}},
        {"method": "bdev_malloc_create",
         "params": {"name": "Origin0", "num_blocks": 65536, "block_size": 4096}},
        {"method": "bdev_delay_create", "params": {
            "name": "Slow0", "base_bdev_name": "Origin0",
            "avg_read_latency": 200, "p99_read_latency": 20000,
            "avg_write_latency": 500, "p99_write_latency": 50000}},
        {"method": "bdev_pmem_create", "params": {
            "name": "Pmem0", "pmem_file": dir.path().join("cache.pmem"),
            "block_size": 4096, "num_blocks": 16384, "mode": "emulated"}},
        {"method": "bdev_pcache_create", "params": {
            "name": "Pcache0", "cache_bdev": "Pmem0", "origin_bdev": "Slow0",
            "format": true, "segment_size": 1048576}},
    ]}]});
    std::fs::write(&config, cfg.to_string()).unwrap();
    // 4 KiB writes fill the cache with scattered blocks; 64 KiB reads and writes over them are
    // then partial hits, each needing several origin reads at once.
    phase(dir.path(), &config, &["randwrite"], 4096, secs);
    phase(dir.path(), &config, &["randrw", "-M", "50"], 65536, secs);
}
