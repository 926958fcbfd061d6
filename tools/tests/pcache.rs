//! The pcache bdev end to end, through the built binaries: bdevperf (and pcache_tgt) over a pcache
//! bdev whose cache is an emulated pmem file (`bdev_pmem_create`) and whose origin is a file served
//! by the uring bdev, both in a temp dir each test makes. Every process runs on one core
//! (`-m 0x1`) with idle back-off, so tests running side by side share the machine.
//!
//! pcache_tgt is not a binary of this crate: `tests::pcache_tgt` has cargo build it when it is not
//! current.
//!
//! - the verify matrix (dm-pcache's own): every mode × data_crc on/off × gc_percent 0 and 80;
//! - a pattern written through the cache survives the process and is found by the next one;
//! - SIGKILL of bdevperf mid-write, and of pcache_tgt mid-writeback, leaves only whole blocks;
//! - after `bdev_pcache_flush_start` completes, the origin alone holds the data.

mod common;
use common::{DEADLINE, counts, rpc_call, u};

use serde_json::{Value, json};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const BDEVPERF: &str = env!("CARGO_BIN_EXE_bdevperf");
const MIB: u64 = 1 << 20;
const BS: u64 = 4096;
/// The origin's identity: the cache records it and reattaches only to the same one, and the uring
/// bdev makes up a new uuid at every start unless it is given one.
const ORIGIN_UUID: &str = "0c9e6a52-7d1f-4b38-a2c4-5e8f90b1d3a7";
/// The smallest segment (params.rs): many segments, so GC has whole segments to free early.
const SEGMENT: u64 = MIB;

/// The current `pcache_tgt` (cargo builds it if it is not).
fn pcache_tgt() -> PathBuf {
    tests::pcache_tgt().to_path_buf()
}

/// How the pcache bdev is created.
#[derive(Clone, Debug)]
struct CacheOpts {
    mode: &'static str,
    data_crc: bool,
    gc_percent: u32,
    durable: bool,
    /// Bytes per second, 0: none. A slow writeback keeps what bdevperf wrote dirty in pmem.
    writeback_rate_limit: u64,
}

impl CacheOpts {
    fn writeback() -> CacheOpts {
        CacheOpts {
            mode: "writeback",
            data_crc: true,
            gc_percent: 70,
            durable: false,
            writeback_rate_limit: 0,
        }
    }

    /// Writeback at 1 MiB/s: data written in a short run stays (almost all) dirty in pmem.
    fn slow_writeback() -> CacheOpts {
        CacheOpts {
            writeback_rate_limit: MIB,
            ..CacheOpts::writeback()
        }
    }
}

/// One test's files: the pmem file, the origin file, configs, logs, sockets.
struct Setup {
    dir: tempfile::TempDir,
    pmem_mib: u64,
    origin_blocks: u64,
    configs: std::cell::Cell<u32>,
}

impl Setup {
    /// A zero-filled (sparse) origin; the pmem file is made by the first bdev_pmem_create.
    fn new(pmem_mib: u64, origin_mib: u64) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::File::create(dir.path().join("origin.img")).unwrap();
        f.set_len(origin_mib * MIB).unwrap();
        Setup {
            dir,
            pmem_mib,
            origin_blocks: origin_mib * MIB / BS,
            configs: std::cell::Cell::new(0),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A fresh name in the temp dir (`<stem>-<n>.<ext>`).
    fn fresh(&self, stem: &str, ext: &str) -> PathBuf {
        let n = self.configs.get() + 1;
        self.configs.set(n);
        self.path(&format!("{stem}-{n}.{ext}"))
    }

    /// A config with the origin (Origin0) and, given cache options, the pmem file (Pmem0) and the
    /// pcache bdev (Pcache0) over them.
    fn config(&self, cache: Option<&CacheOpts>) -> PathBuf {
        let mut entries = Vec::new();
        if cache.is_some() {
            entries.push(json!({"method": "bdev_pmem_create", "params": {
                "name": "Pmem0",
                "pmem_file": self.path("cache.pmem"),
                "block_size": BS,
                "num_blocks": self.pmem_mib * MIB / BS,
                "mode": "emulated",
            }}));
        }
        entries.push(json!({"method": "bdev_uring_create", "params": {
            "name": "Origin0",
            "filename": self.path("origin.img"),
            "block_size": BS,
            "uuid": ORIGIN_UUID,
        }}));
        if let Some(c) = cache {
            entries.push(json!({"method": "bdev_pcache_create", "params": {
                "name": "Pcache0",
                "cache_bdev": "Pmem0",
                "origin_bdev": "Origin0",
                "mode": c.mode,
                "data_crc": c.data_crc,
                "gc_percent": c.gc_percent,
                "durable": c.durable,
                "writeback_rate_limit": c.writeback_rate_limit,
                "segment_size": SEGMENT,
            }}));
        }
        let doc = json!({"subsystems": [{"subsystem": "bdev", "config": entries}]});
        let path = self.fresh("config", "json");
        std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
        path
    }

    /// bdevperf on `config` with its output in files (a pipe nobody reads could fill and block it).
    fn spawn_bdevperf(&self, config: &Path, args: &[&str]) -> Proc {
        let mut cmd = Command::new(BDEVPERF);
        cmd.arg("-c")
            .arg(config)
            .args(["-m", "0x1", "--idle-backoff"])
            .args(args);
        Proc::spawn(
            cmd,
            self.fresh("bdevperf", "out"),
            self.fresh("bdevperf", "err"),
        )
    }

    /// Runs bdevperf to the end with `--json-output`; (exit status, stdout + stderr, the JSON).
    fn bdevperf(&self, config: &Path, args: &[&str]) -> (ExitStatus, String, Value) {
        let json_path = self.fresh("result", "json");
        let mut a = args.to_vec();
        a.extend(["--json-output", json_path.to_str().unwrap()]);
        let mut p = self.spawn_bdevperf(config, &a);
        let status = p.wait(DEADLINE);
        let doc = std::fs::read_to_string(&json_path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null);
        (status, p.output(), doc)
    }

    /// A bdevperf run that must succeed; its one job's JSON.
    fn bdevperf_ok(&self, config: &Path, args: &[&str]) -> Value {
        let (status, out, doc) = self.bdevperf(config, args);
        assert!(
            status.success(),
            "bdevperf {args:?} failed ({status}):\n{out}"
        );
        let j = doc["results"][0].clone();
        assert!(j.is_object(), "no job in the JSON output:\n{out}");
        assert_eq!(j["status"], "finished", "{j:#}\n{out}");
        assert_eq!(u(&j, "io_failed"), 0, "{j:#}\n{out}");
        j
    }

    /// Writes pattern `seed` over all of Pcache0 (`config` has slow writeback) and shows that
    /// the data lives in pmem: the origin alone (`origin_only`) holds less than half of it.
    fn write_pattern_into_pmem(&self, config: &Path, origin_only: &Path, seed: u64) {
        let blocks = self.origin_blocks;
        let seed_arg = seed.to_string();
        let w = self.bdevperf_ok(
            config,
            &[
                "-T",
                "Pcache0",
                "-q",
                "32",
                "-o",
                "4096",
                "-w",
                "write",
                "--pattern",
                &seed_arg,
            ],
        );
        assert_eq!(u(&w, "blocks_covered"), blocks, "{w:#}");
        let (on_origin, _, _) = self.check(origin_only, "Origin0", seed);
        assert!(
            on_origin < blocks / 2,
            "{on_origin} of {blocks} blocks already on the origin: the test would prove nothing"
        );
    }

    /// `-w check --pattern SEED` over the whole bdev; (matching, other pattern, foreign).
    fn check(&self, config: &Path, bdev: &str, seed: u64) -> (u64, u64, u64) {
        let seed = seed.to_string();
        let j = self.bdevperf_ok(
            config,
            &[
                "-T",
                bdev,
                "-q",
                "32",
                "-o",
                "64k",
                "-w",
                "check",
                "--pattern",
                &seed,
            ],
        );
        assert_eq!(u(&j, "blocks_covered"), self.origin_blocks, "{j:#}");
        counts(&j)
    }

    /// pcache_tgt on `config`, ready (its config applied) and serving RPC.
    fn start_tgt(&self, config: &Path) -> Tgt {
        let sock = self.fresh("tgt", "sock");
        let mut cmd = Command::new(pcache_tgt());
        cmd.arg("-c")
            .arg(config)
            .arg("-r")
            .arg(&sock)
            .args(["-m", "0x1", "--idle-backoff"]);
        let mut p = Proc::spawn(cmd, self.fresh("tgt", "out"), self.fresh("tgt", "log"));
        p.wait_for("pcache_tgt ready");
        Tgt { p, sock }
    }

    /// bdevperf -z (tests come by perform_tests) on `config`, ready for RPC.
    fn start_bdevperf_server(&self, config: &Path, args: &[&str]) -> Tgt {
        let sock = self.fresh("bdevperf", "sock");
        let mut a = vec!["-z", "-r", sock.to_str().unwrap()];
        a.extend_from_slice(args);
        let mut p = self.spawn_bdevperf(config, &a);
        p.wait_for("Waiting for the perform_tests RPC");
        Tgt { p, sock }
    }
}

/// A child process whose stdout and stderr go to files.
struct Proc {
    child: Option<Child>,
    out: PathBuf,
    err: PathBuf,
}

impl Proc {
    fn spawn(mut cmd: Command, out: PathBuf, err: PathBuf) -> Proc {
        cmd.env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Proc {
            child: Some(child),
            out,
            err,
        }
    }

    fn output(&self) -> String {
        format!(
            "--- stdout:\n{}--- stderr:\n{}",
            std::fs::read_to_string(&self.out).unwrap_or_default(),
            std::fs::read_to_string(&self.err).unwrap_or_default()
        )
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// Waits until the output says `what`; fails if the process exits first or takes too long.
    fn wait_for(&mut self, what: &str) {
        let start = Instant::now();
        while !self.output().contains(what) {
            if let Some(s) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("exited ({s}) before {what:?}:\n{}", self.output());
            }
            assert!(
                start.elapsed() < DEADLINE,
                "no {what:?} in time:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the exit; kills (and fails) past `deadline`.
    fn wait(&mut self, deadline: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("already waited for");
        let start = Instant::now();
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                self.child = None;
                return s;
            }
            if start.elapsed() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.child = None;
                panic!("hung past {deadline:?}:\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own, not yet reaped, child's pid has no memory effects.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0);
    }

    /// SIGKILL: the process ends with no chance to clean up.
    fn sigkill(&mut self) {
        self.signal(libc::SIGKILL);
        let s = self.wait(DEADLINE);
        assert_eq!(
            s.signal(),
            Some(libc::SIGKILL),
            "ended by SIGKILL ({s}):\n{}",
            self.output()
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A process serving JSON-RPC: pcache_tgt, or bdevperf -z.
struct Tgt {
    p: Proc,
    sock: PathBuf,
}

impl Tgt {
    /// One request on its own connection; the `result`, failing on an error answer.
    fn call(&self, method: &str, params: Value) -> Value {
        let answer = rpc_call(&self.sock, method, params.clone());
        assert!(
            answer.get("error").is_none() && answer.get("result").is_some(),
            "{method} {params}: {answer:#}\n{}",
            self.p.output()
        );
        answer["result"].clone()
    }

    fn stats(&self) -> Value {
        self.call("bdev_pcache_get_stats", json!({"name": "Pcache0"}))
    }

    /// spdk_kill_instance SIGTERM; the exit status after the clean shutdown.
    fn stop(mut self) -> (ExitStatus, String) {
        self.call("spdk_kill_instance", json!({"sig_name": "SIGTERM"}));
        let s = self.p.wait(DEADLINE);
        (s, self.p.output())
    }
}

/// One cell of the verify matrix: a fresh 64 MiB cache (one-MiB segments) in front of a
/// 128 MiB origin, so a 1 s verify run overflows the cache and GC has to make room.
fn verify_cell(mode: &'static str, data_crc: bool, gc_percent: u32) {
    let what = format!("mode {mode}, data_crc {data_crc}, gc_percent {gc_percent}");
    let setup = Setup::new(64, 128);
    let opts = CacheOpts {
        mode,
        data_crc,
        gc_percent,
        ..CacheOpts::writeback()
    };
    let config = setup.config(Some(&opts));
    let json_path = setup.fresh("verify", "json");
    let tgt = setup.start_bdevperf_server(
        &config,
        &[
            "-T",
            "Pcache0",
            "-q",
            "32",
            "-o",
            "4096",
            "--json-output",
            json_path.to_str().unwrap(),
        ],
    );
    let res = tgt.call(
        "perform_tests",
        json!({"workload_type": "verify", "time_in_sec": 1}),
    );
    let j = &res["results"][0];
    assert_eq!(j["workload"], "verify", "{what}: {res:#}");
    assert_eq!(j["status"], "finished", "{what}: {res:#}");
    assert!(u(j, "io_completed") > 0, "{what}: {j:#}");
    assert_eq!(u(j, "io_failed"), 0, "{what}: {j:#}");
    assert_eq!(u(j, "miscompares"), 0, "{what}: {j:#}");
    let stats = tgt.stats();
    let (status, out) = tgt.stop();
    assert!(status.success(), "{what}: exit {status}\n{out}");
    assert!(
        out.contains("pcache stopped cleanly"),
        "{what}: clean stop\n{out}"
    );
    assert!(!out.contains("MISCOMPARE"), "{what}:\n{out}");
    // The file --json-output wrote says the same.
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    assert_eq!(doc["results"][0]["miscompares"], 0, "{what}: {doc:#}");
    assert_eq!(doc["results"][0]["io_failed"], 0, "{what}: {doc:#}");

    assert_eq!(stats["mode"], mode, "{what}: {stats:#}");
    assert_eq!(u(&stats, "gc_percent"), u64::from(gc_percent), "{what}");
    assert_eq!(u(&stats, "crc_errors"), 0, "{what}: {stats:#}");
    assert_eq!(u(&stats, "origin_errors"), 0, "{what}: {stats:#}");
    if mode == "writeback" {
        let written = u(&stats, "bytes_written_cache");
        assert!(written > 0, "{what}: writes went to the cache: {stats:#}");
        if gc_percent == 0 {
            // Reclaim everything written back: GC must have freed segments within the run.
            assert!(
                u(&stats, "gc_runs") > 0 && u(&stats, "gc_segments_freed") > 0,
                "{what}: GC ran: {stats:#}"
            );
        } else if written > u(&stats, "segments_total") * SEGMENT {
            // More was written than the cache holds: only freed segments made that possible.
            assert!(
                u(&stats, "gc_segments_freed") > 0,
                "{what}: GC freed segments: {stats:#}"
            );
        }
    }
}

fn verify_matrix(mode: &'static str) {
    for data_crc in [true, false] {
        for gc_percent in [0, 80] {
            verify_cell(mode, data_crc, gc_percent);
        }
    }
}

#[test]
fn verify_is_clean_in_writeback_mode() {
    verify_matrix("writeback");
}

#[test]
fn verify_is_clean_in_writethrough_mode() {
    verify_matrix("writethrough");
}

#[test]
fn verify_is_clean_in_writearound_mode() {
    verify_matrix("writearound");
}

#[test]
fn verify_is_clean_in_passthrough_mode() {
    verify_matrix("passthrough");
}

#[test]
fn a_pattern_written_through_the_cache_survives_the_process() {
    let setup = Setup::new(256, 64);
    let blocks = setup.origin_blocks;
    let pcache = setup.config(Some(&CacheOpts::slow_writeback()));
    let origin_only = setup.config(None);
    setup.write_pattern_into_pmem(&pcache, &origin_only, 41);
    // A new process reattaches (the first one stopped the cache cleanly) and finds every block.
    let tgt = setup.start_bdevperf_server(
        &pcache,
        &["-T", "Pcache0", "-q", "32", "-o", "64k", "--pattern", "41"],
    );
    let stats = tgt.stats();
    assert!(u(&stats, "dirty_bytes") > 0, "{stats:#}");
    let res = tgt.call("perform_tests", json!({"workload_type": "check"}));
    let j = &res["results"][0];
    assert_eq!(counts(j), (blocks, 0, 0), "{j:#}");
    let (status, out) = tgt.stop();
    assert!(status.success(), "{status}\n{out}");
    assert!(out.contains("pcache stopped cleanly"), "{out}");
}

/// A pattern twice the size of the cache, written through it in every mode, reads back whole
/// through it from a new process: what GC evicted comes from the origin, where writeback (or the
/// write itself) put it.
#[test]
fn a_pattern_larger_than_the_cache_reads_back_in_every_mode() {
    for mode in ["writeback", "writethrough", "writearound", "passthrough"] {
        let setup = Setup::new(64, 128);
        let blocks = setup.origin_blocks;
        let config = setup.config(Some(&CacheOpts {
            mode,
            ..CacheOpts::writeback()
        }));
        let w = setup.bdevperf_ok(
            &config,
            &[
                "-T",
                "Pcache0",
                "-q",
                "32",
                "-o",
                "16k",
                "-w",
                "write",
                "--pattern",
                "55",
            ],
        );
        assert_eq!(u(&w, "blocks_covered"), blocks, "{mode}: {w:#}");
        let tgt = setup.start_bdevperf_server(
            &config,
            &["-T", "Pcache0", "-q", "32", "-o", "64k", "--pattern", "55"],
        );
        let res = tgt.call("perform_tests", json!({"workload_type": "check"}));
        let j = &res["results"][0];
        assert_eq!(counts(j), (blocks, 0, 0), "{mode}: {j:#}");
        let stats = tgt.stats();
        let (status, out) = tgt.stop();
        assert!(status.success(), "{mode}: {status}\n{out}");
        assert_eq!(stats["mode"], mode, "{stats:#}");
        // The cache cannot hold it all: the rest was read from the origin.
        let cache_bytes = u(&stats, "segments_total") * SEGMENT;
        assert!(
            u(&stats, "bytes_read_origin") >= blocks * BS - cache_bytes,
            "{mode}: read from the origin: {stats:#}"
        );
        assert_eq!(u(&stats, "crc_errors"), 0, "{mode}: {stats:#}");
    }
}

/// Every block of Pcache0 is a whole block of seed `a` or seed `b` (`check` calls a torn block,
/// zeroes or another LBA's block foreign); returns how many are seed `b`.
fn all_whole(setup: &Setup, config: &Path, a: u64, b: u64, what: &str) -> u64 {
    let blocks = setup.origin_blocks;
    let (mb, ob, fb) = setup.check(config, "Pcache0", b);
    let (ma, oa, fa) = setup.check(config, "Pcache0", a);
    assert_eq!(
        (fa, fb),
        (0, 0),
        "{what}: foreign (torn, zero or misplaced) blocks"
    );
    assert_eq!(
        (ma + mb, oa, ob),
        (blocks, mb, ma),
        "{what}: every block is seed {a} or seed {b}"
    );
    mb
}

/// Waits until writeback has sent something to the origin, then SIGKILLs the target; the last
/// stats seen.
fn kill_tgt_mid_writeback(tgt: Tgt) -> Value {
    let start = Instant::now();
    let stats = loop {
        let s = tgt.stats();
        if u(&s, "writeback_bytes") > 0 || u(&s, "dirty_bytes") == 0 {
            break s;
        }
        assert!(start.elapsed() < DEADLINE, "writeback never started: {s:#}");
        std::thread::sleep(Duration::from_millis(2));
    };
    let mut p = tgt.p;
    p.sigkill();
    stats
}

/// SIGKILL of bdevperf in the middle of random pattern writes through the cache, then of
/// pcache_tgt attached to what it left (replaying it) and writing it back: the pcache bdev never
/// shows a torn or foreign block, only whole blocks of the old seed or the new one.
fn sigkill_mid_write(opts: CacheOpts) {
    let what = format!("{opts:?}");
    let (a, b) = (101u64, 202u64);
    let setup = Setup::new(256, 64);
    let blocks = setup.origin_blocks;
    let pcache = setup.config(Some(&opts));
    // pcache_tgt writes back at full speed, so it is killed in the middle of writeback.
    let tgt_config = setup.config(Some(&CacheOpts {
        writeback_rate_limit: 0,
        ..opts.clone()
    }));
    let origin_only = setup.config(None);
    // Every block starts as a whole pattern block of seed a, on the origin.
    let w = setup.bdevperf_ok(
        &origin_only,
        &[
            "-T",
            "Origin0",
            "-q",
            "32",
            "-o",
            "64k",
            "-w",
            "write",
            "--pattern",
            "101",
        ],
    );
    assert_eq!(u(&w, "blocks_covered"), blocks);

    let mut p = setup.spawn_bdevperf(
        &pcache,
        &[
            "-T",
            "Pcache0",
            "-q",
            "32",
            "-o",
            "4096",
            "-w",
            "randwrite",
            "--pattern",
            "202",
            "-t",
            "60",
        ],
    );
    p.wait_for("Running I/O for 60 seconds");
    std::thread::sleep(Duration::from_millis(1000));
    p.sigkill();

    // pcache_tgt attaches to the cache bdevperf left (an unclean stop: the log is replayed), and
    // is killed once writeback is under way...
    let before = kill_tgt_mid_writeback(setup.start_tgt(&tgt_config));
    // ...and bdevperf then finds whole blocks only.
    let written = all_whole(&setup, &pcache, a, b, &format!("{what}, after both kills"));
    assert!(
        written > 0,
        "{what}: no write survived the kill: the test proves nothing (stats at attach {before:#})"
    );

    // Again with a cache stopped cleanly (by the checks) but still dirty: pcache_tgt writes it
    // back and is killed as soon as it is up; nothing changes.
    let before = kill_tgt_mid_writeback(setup.start_tgt(&tgt_config));
    let again = all_whole(&setup, &pcache, a, b, &format!("{what}, after a tgt kill"));
    assert_eq!(
        again, written,
        "{what}: seed {b} blocks before and after pcache_tgt was killed (stats: {before:#})"
    );
}

#[test]
fn sigkill_mid_write_leaves_whole_blocks_with_writeback_and_gc_running() {
    sigkill_mid_write(CacheOpts {
        gc_percent: 0,
        ..CacheOpts::writeback()
    });
}

#[test]
fn sigkill_mid_write_leaves_whole_blocks_with_dirty_data_in_pmem() {
    sigkill_mid_write(CacheOpts::slow_writeback());
}

#[test]
fn sigkill_mid_write_leaves_whole_blocks_in_durable_mode() {
    sigkill_mid_write(CacheOpts {
        durable: true,
        ..CacheOpts::writeback()
    });
}

#[test]
fn after_flush_the_origin_alone_holds_the_data() {
    let setup = Setup::new(256, 64);
    let blocks = setup.origin_blocks;
    let writer = setup.config(Some(&CacheOpts::slow_writeback()));
    let tgt_config = setup.config(Some(&CacheOpts::writeback()));
    let origin_only = setup.config(None);
    setup.write_pattern_into_pmem(&writer, &origin_only, 77);

    let tgt = setup.start_tgt(&tgt_config);
    assert_eq!(
        tgt.call("bdev_pcache_flush_start", json!({"name": "Pcache0"})),
        json!(true)
    );
    let start = Instant::now();
    let status = loop {
        let s = tgt.call("bdev_pcache_flush_status", json!({"name": "Pcache0"}));
        if s["in_progress"] == json!(false) {
            break s;
        }
        assert!(start.elapsed() < DEADLINE, "flush never ended: {s:#}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(u(&status, "dirty_bytes"), 0, "{status:#}");
    let stats = tgt.stats();
    assert_eq!(u(&stats, "dirty_bytes"), 0, "{stats:#}");
    assert!(!stats["flush_in_progress"].as_bool().unwrap(), "{stats:#}");
    let mut tp = tgt.p;
    tp.signal(libc::SIGTERM);
    let s = tp.wait(DEADLINE);
    assert!(s.success(), "{s}\n{}", tp.output());

    // The origin alone, no cache in front: every block is there.
    assert_eq!(
        setup.check(&origin_only, "Origin0", 77),
        (blocks, 0, 0),
        "after the flush"
    );
}
