//! bdevperf end to end: the built binary against tiny malloc/null/uring configs, 1 s runs with idle
//! back-off so parallel tests share the cores.

mod common;
use common::{DEADLINE, Watched, counts, rpc_call, u};

use serde_json::{Value, json};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_bdevperf");

/// 4 MiB malloc with 4 KiB blocks, and a null bdev.
const CONFIG: &str = r#"{"subsystems": [{"subsystem": "bdev", "config": [
  {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 1024, "block_size": 4096}},
  {"method": "bdev_null_create", "params": {"name": "Null0", "num_blocks": 1024, "block_size": 4096}}
]}]}"#;

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new(config: &str) -> Env {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), config).unwrap();
        Env { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("-c")
            .arg(self.path("config.json"))
            .arg("--idle-backoff")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// Runs bdevperf to the end; kills it (and fails) past the deadline.
    fn run(&self, args: &[&str]) -> Output {
        let child = self.command(args).spawn().unwrap();
        wait(child, DEADLINE)
    }

    /// Runs with `--json-output` and returns (output, the one job's JSON).
    fn run_json(&self, args: &[&str]) -> (Output, Value) {
        let json = self.path("out.json");
        let mut a = args.to_vec();
        let js = json.to_str().unwrap();
        a.extend(["--json-output", js]);
        let out = self.run(&a);
        let doc: Value = match std::fs::read_to_string(&json) {
            Ok(t) => serde_json::from_str(&t).unwrap(),
            Err(_) => Value::Null,
        };
        let _ = std::fs::remove_file(&json);
        (out, doc)
    }
}

fn wait(mut child: Child, deadline: Duration) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "bdevperf hung; stdout:\n{}\nstderr:\n{}",
                text(&out.stdout),
                text(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(out: &Output) -> String {
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "bdevperf failed ({:?}); stdout:\n{stdout}\nstderr:\n{}",
        out.status,
        text(&out.stderr)
    );
    stdout
}

fn job(doc: &Value, i: usize) -> &Value {
    &doc["results"][i]
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64()
        .unwrap_or_else(|| panic!("{k} missing in {v:#}"))
}

#[test]
fn randread_prints_spdk_table_and_json() {
    let env = Env::new(CONFIG);
    let (out, doc) = env.run_json(&[
        "-T", "Null0", "-q", "32", "-o", "4k", "-w", "randread", "-t", "1",
    ]);
    let stdout = ok(&out);
    for s in [
        "Running I/O for 1 seconds...",
        "Latency(us)",
        "Device Information",
        "runtime(s)",
        "IOPS",
        "MiB/s",
        "Fail/s",
        "TO/s",
        "Average",
        "p99.9",
        "Job: Null0 (Core Mask 0x1, workload: randread, depth: 32, IO size: 4096)",
        " Total ",
    ] {
        assert!(stdout.contains(s), "missing {s:?} in:\n{stdout}");
    }
    // Logs into a pipe are plain text.
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("INFO") && !stderr.contains('\x1b'),
        "{stderr:?}"
    );
    assert_eq!(doc["results"].as_array().unwrap().len(), 1);
    assert_eq!(doc["core_count"], json!(1));
    let j = job(&doc, 0);
    assert_eq!(j["job"], "Null0");
    assert_eq!(j["bdev"], "Null0");
    assert_eq!(j["core_mask"], "0x1");
    assert_eq!(j["workload"], "randread");
    assert_eq!(u(j, "queue_depth"), 32);
    assert_eq!(u(j, "io_size"), 4096);
    assert!(f(j, "iops") > 0.0, "{j:#}");
    assert!(f(j, "runtime") > 0.5, "{j:#}");
    assert!((f(j, "mibps") - f(j, "iops") * 4096.0 / 1048576.0).abs() < 1e-3);
    assert_eq!(u(j, "io_failed"), 0);
    assert_eq!(f(j, "fails"), 0.0);
    let (min, p50, p99, p999, max, avg) = (
        f(j, "min_us"),
        f(j, "p50_us"),
        f(j, "p99_us"),
        f(j, "p999_us"),
        f(j, "max_us"),
        f(j, "avg_us"),
    );
    assert!(
        0.0 < min && min <= p50 && p50 <= p99 && p99 <= p999 && p999 <= max * 1.001,
        "{j:#}"
    );
    assert!(min <= avg && avg <= max, "{j:#}");
}

#[test]
fn verify_on_malloc_passes_with_no_failures() {
    let env = Env::new(CONFIG);
    let (out, doc) = env.run_json(&[
        "-T", "Malloc0", "-q", "16", "-o", "8192", "-w", "verify", "-t", "1",
    ]);
    let stdout = ok(&out);
    assert!(stdout.contains("Verification LBA range: start 0x0 length 0x400"));
    assert!(!stdout.contains("mismatch"), "{stdout}");
    let j = job(&doc, 0);
    assert_eq!(j["status"], "finished");
    assert!(u(j, "io_completed") > 0);
    assert_eq!(u(j, "io_failed"), 0);
    assert_eq!(u(j, "miscompares"), 0);
}

#[test]
fn verify_on_null_reports_miscompares_and_fails() {
    // The null bdev stores nothing, so every read-back differs.
    let env = Env::new(CONFIG);
    let (out, doc) = env.run_json(&[
        "-T", "Null0", "-q", "4", "-o", "4096", "-w", "verify", "-t", "1",
    ]);
    assert!(!out.status.success());
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("Buffer mismatch! Target: Null0"),
        "{stdout}"
    );
    assert!(stdout.contains("MISCOMPARE"), "{stdout}");
    let j = job(&doc, 0);
    assert_eq!(j["status"], "failed");
    assert!(u(j, "miscompares") > 0);
    assert!(u(j, "io_failed") > 0);
}

#[test]
fn unmap_flush_write_zeroes_and_mixed_workloads_run() {
    let env = Env::new(CONFIG);
    for w in [
        &["-w", "unmap"][..],
        &["-w", "flush"],
        &["-w", "write_zeroes"],
        &["-w", "rw", "-M", "70"],
        &["-w", "randrw", "-M", "30"],
        &["-w", "write"],
        &["-w", "read"],
    ] {
        let mut args = vec!["-T", "Malloc0", "-q", "8", "-o", "4096", "-t", "1"];
        args.extend_from_slice(w);
        let (out, doc) = env.run_json(&args);
        let stdout = ok(&out);
        let j = job(&doc, 0);
        assert_eq!(j["workload"], w[1], "{stdout}");
        assert!(f(j, "iops") > 0.0, "{w:?}: {j:#}");
        assert_eq!(u(j, "io_failed"), 0, "{w:?}");
        if w.len() == 4 {
            assert_eq!(u(j, "percentage"), w[3].parse::<u64>().unwrap());
            assert!(
                stdout.contains(&format!("percentage: {}", w[3])),
                "{stdout}"
            );
        }
    }
}

#[test]
fn every_bdev_is_a_target_by_default_and_unsupported_ones_are_skipped() {
    let env = Env::new(CONFIG);
    let (out, doc) = env.run_json(&["-q", "4", "-o", "4096", "-w", "randread", "-t", "1"]);
    ok(&out);
    let names: Vec<&str> = doc["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["bdev"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Malloc0", "Null0"]);
    let (out, doc) = env.run_json(&["-q", "4", "-o", "4096", "-w", "unmap", "-t", "1"]);
    let stdout = ok(&out);
    assert!(stdout.contains("Skipping Null0 because it does not support unmap"));
    assert_eq!(doc["results"].as_array().unwrap().len(), 1);
}

#[test]
fn every_core_drives_every_bdev_with_dash_c() {
    let env = Env::new(CONFIG);
    let (out, doc) = env.run_json(&[
        "-C", "-m", "0x3", "-T", "Malloc0", "-q", "4", "-o", "4096", "-w", "read", "-t", "1",
    ]);
    let stdout = ok(&out);
    assert!(stdout.contains("Core Mask 0x1"), "{stdout}");
    assert!(stdout.contains("Core Mask 0x2"), "{stdout}");
    assert_eq!(doc["core_count"], json!(2));
    let ranges: Vec<(u64, u64)> = (0..2)
        .map(|i| {
            let r = &job(&doc, i)["range"];
            (u(r, "start"), u(r, "length"))
        })
        .collect();
    assert_eq!(ranges, [(0, 512), (512, 512)], "each core has its own half");
}

#[test]
fn an_unknown_bdev_exits_non_zero_with_a_clear_message() {
    let env = Env::new(CONFIG);
    let out = env.run(&[
        "-T", "Nope0", "-q", "1", "-o", "4096", "-w", "read", "-t", "1",
    ]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("Unable to find bdev 'Nope0'"), "{stderr}");
}

#[test]
fn bad_parameters_are_refused_before_starting() {
    let env = Env::new(CONFIG);
    for (args, msg) in [
        (
            &["-q", "1", "-o", "4096", "-t", "1"][..],
            "-w <type> is required",
        ),
        (
            &["-w", "bogus", "-q", "1", "-o", "4096", "-t", "1"],
            "-w must be one of",
        ),
        (
            &["-w", "rw", "-q", "1", "-o", "4096", "-t", "1"],
            "-M must be specified",
        ),
        (
            &["-w", "read", "-q", "1", "-o", "4096"],
            "-t <seconds> is required",
        ),
        (&["-w", "check", "-q", "1", "-o", "4096"], "needs --pattern"),
        (
            &[
                "-w",
                "read",
                "--pattern",
                "1",
                "-q",
                "1",
                "-o",
                "4096",
                "-t",
                "1",
            ],
            "--pattern works with",
        ),
    ] {
        let out = env.run(args);
        assert!(!out.status.success(), "{args:?}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(msg), "{args:?}: {stderr}");
    }
    // An I/O size the bdev cannot take is caught when the job opens it.
    let out = env.run(&[
        "-T", "Malloc0", "-w", "read", "-q", "1", "-o", "1000", "-t", "1",
    ]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("not a multiple of the block size"));
}

#[test]
fn help_says_no_rpc_server_by_default() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let help = text(&out.stdout);
    assert!(
        help.contains("No RPC server is started unless -r"),
        "{help}"
    );
    for flag in [
        "-q",
        "-o",
        "-w",
        "-t",
        "-M",
        "-m",
        "-T",
        "-C",
        "--json-output",
        "--pattern",
        "-z",
    ] {
        assert!(help.contains(flag), "{flag}");
    }
}

#[test]
fn a_fresh_malloc_checks_as_all_foreign() {
    let env = Env::new(CONFIG);
    let (out, doc) = env.run_json(&[
        "-T",
        "Malloc0",
        "-q",
        "8",
        "-o",
        "16k",
        "-w",
        "check",
        "--pattern",
        "5",
    ]);
    let stdout = ok(&out);
    assert!(stdout.contains("foreign 1024"), "{stdout}");
    let j = job(&doc, 0);
    assert_eq!(counts(j), (0, 0, 1024));
    assert_eq!(u(j, "blocks_covered"), 1024);
}

fn wait_for_socket(sock: &Path, child: &mut Child) {
    let start = Instant::now();
    while UnixStream::connect(sock).is_err() {
        assert!(child.try_wait().unwrap().is_none(), "bdevperf exited early");
        assert!(start.elapsed() < DEADLINE, "no RPC socket");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn perform_tests_over_rpc_writes_then_checks_a_pattern() {
    // -z keeps the process (and so the malloc's data) between runs.
    let env = Env::new(CONFIG);
    let sock = env.path("rpc.sock");
    let mut child = env
        .command(&[
            "-z",
            "-r",
            sock.to_str().unwrap(),
            "-T",
            "Malloc0",
            "-q",
            "8",
            "-o",
            "16k",
            "--pattern",
            "77",
        ])
        .spawn()
        .unwrap();
    wait_for_socket(&sock, &mut child);
    let check = |v: &Value| counts(&v["result"]["results"][0]);
    let before = rpc_call(&sock, "perform_tests", json!({"workload_type": "check"}));
    assert_eq!(check(&before), (0, 0, 1024), "{before:#}");
    let write = rpc_call(&sock, "perform_tests", json!({"workload_type": "write"}));
    let w = &write["result"]["results"][0];
    assert_eq!(u(w, "blocks_covered"), 1024, "{write:#}");
    assert_eq!(w["status"], "finished");
    let after = rpc_call(
        &sock,
        "perform_tests",
        json!({"workload_type": "check", "io_size": "4096"}),
    );
    assert_eq!(check(&after), (1024, 0, 0), "{after:#}");
    assert_eq!(u(&after["result"]["results"][0], "io_size"), 4096);
    // Bad parameters are an error answer, and the process keeps serving.
    let bad = rpc_call(&sock, "perform_tests", json!({"workload_type": "bogus"}));
    assert!(
        bad["error"]["message"]
            .as_str()
            .unwrap()
            .contains("-w must be one of"),
        "{bad:#}"
    );
    let randwrite = rpc_call(
        &sock,
        "perform_tests",
        json!({"workload_type": "randwrite", "time_in_sec": 1, "queue_depth": 4}),
    );
    assert!(
        f(&randwrite["result"]["results"][0], "iops") > 0.0,
        "{randwrite:#}"
    );
    rpc_call(&sock, "spdk_kill_instance", json!({"sig_name": "SIGTERM"}));
    let out = wait(child, DEADLINE);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// The cross-run test: a pattern written by one process is checked by the next, over a file the
/// uring bdev serves (malloc does not survive its process).
#[test]
fn a_pattern_survives_restarts_on_a_uring_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("disk.img");
    // 2 MiB: 4096 blocks of 512 bytes (a regular file's default block size).
    std::fs::write(&file, vec![0u8; 2 << 20]).unwrap();
    let config = json!({"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_uring_create", "params": {"name": "Uring0", "filename": file}}
    ]}]});
    let env = Env::new(&config.to_string());
    let common = ["-T", "Uring0", "-q", "16", "-o", "8k"];
    let run = |extra: &[&str]| {
        let mut a = common.to_vec();
        a.extend_from_slice(extra);
        let (out, doc) = env.run_json(&a);
        ok(&out);
        let j = job(&doc, 0).clone();
        assert_eq!(
            u(&j, "block_size"),
            512,
            "pattern blocks are the bdev's blocks"
        );
        j
    };
    let w = run(&["-w", "write", "--pattern", "11"]);
    assert_eq!(u(&w, "blocks_covered"), 4096);
    assert_eq!(
        counts(&run(&["-w", "check", "--pattern", "11"])),
        (4096, 0, 0)
    );
    assert_eq!(
        counts(&run(&["-w", "check", "--pattern", "12"])),
        (0, 4096, 0)
    );
    assert_eq!(
        counts(&run(&[
            "-w",
            "check",
            "--pattern",
            "11",
            "--pattern-version",
            "2"
        ])),
        (0, 4096, 0)
    );
    // Damage the file between runs: a zeroed block, a torn block (half of it from another seed),
    // a flipped bit, and one block copied onto its neighbour (the wrong LBA).
    let mut img = std::fs::read(&file).unwrap();
    let b = |i: usize| i * 512..(i + 1) * 512;
    img[b(10)].fill(0);
    img.copy_within(21 * 512 + 256..22 * 512, 20 * 512 + 256);
    img[30 * 512 + 100] ^= 0x10;
    let copy = img[b(40)].to_vec();
    img[b(41)].copy_from_slice(&copy);
    std::fs::write(&file, &img).unwrap();
    let j = run(&["-w", "check", "--pattern", "11"]);
    assert_eq!(counts(&j), (4092, 0, 4), "{j:#}");
    assert_eq!(j["first_foreign_lbas"], json!([10, 20, 30, 41]));
    // Random rewrites with a new version leave whole blocks of one version or the other.
    let w = run(&["-w", "write", "--pattern", "11", "--pattern-version", "2"]);
    assert_eq!(u(&w, "blocks_covered"), 4096);
    let j = run(&[
        "-w",
        "randwrite",
        "--pattern",
        "11",
        "--pattern-version",
        "3",
        "-t",
        "1",
    ]);
    assert!(f(&j, "iops") > 0.0);
    let j = run(&["-w", "check", "--pattern", "11", "--pattern-version", "3"]);
    let (m, o, fo) = counts(&j);
    assert_eq!((m + o, fo), (4096, 0), "{j:#}");
    assert!(m > 0, "{j:#}");
}

/// Waits until `bdev` has completed I/O (`counter` of its iostat above 0), so a run stopped now
/// has something to report.
fn wait_for_io(sock: &Path, bdev: &str, counter: &str) {
    let start = Instant::now();
    loop {
        let st = rpc_call(sock, "bdev_get_iostat", json!({"name": bdev}));
        if st["result"]["bdevs"][0][counter]
            .as_u64()
            .is_some_and(|n| n > 0)
        {
            return;
        }
        assert!(start.elapsed() < DEADLINE, "no {counter} on {bdev}: {st:#}");
    }
}

/// Starts a 60 s run (with an RPC socket), waits until it is running I/O and has completed
/// some, then sends `sig`: the run must end early, with its report, and succeed.
fn signal_mid_run(env: &Env, args: &[&str], counter: &str, sig: libc::c_int) {
    let sock = env.path("rpc.sock");
    let mut a = vec!["-r", sock.to_str().unwrap(), "-t", "60"];
    a.extend_from_slice(args);
    let mut p = Watched::spawn(env.command(&a));
    p.wait_for("Running I/O for 60 seconds");
    let bdev = a[a.iter().position(|&x| x == "-T").unwrap() + 1];
    wait_for_io(&sock, bdev, counter);
    p.signal(sig);
    let status = p.wait(Duration::from_secs(30));
    assert!(
        status.success(),
        "bdevperf failed ({status}):\n{}",
        p.output()
    );
    assert!(
        p.output().contains("Received shutdown signal"),
        "{}",
        p.output()
    );
}

#[test]
fn a_signal_ends_the_run_with_a_report() {
    let env = Env::new(CONFIG);
    let json = env.path("sig.json");
    let args = [
        "-T",
        "Null0",
        "-q",
        "4",
        "-o",
        "4096",
        "-w",
        "randread",
        "--json-output",
        json.to_str().unwrap(),
    ];
    signal_mid_run(&env, &args, "num_read_ops", libc::SIGINT);
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let j = job(&doc, 0);
    assert_eq!(j["status"], "terminated");
    assert!(f(j, "runtime") < 30.0 && f(j, "iops") > 0.0, "{j:#}");
}

#[test]
fn sigterm_with_writes_in_flight_shuts_down_cleanly_and_loses_no_completed_block() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("disk.img");
    std::fs::write(&file, vec![0u8; 8 << 20]).unwrap();
    let config = json!({"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_uring_create", "params": {"name": "Uring0", "filename": file, "block_size": 4096}}
    ]}]});
    let env = Env::new(&config.to_string());
    let json = env.path("term.json");
    let args = [
        "-T",
        "Uring0",
        "-q",
        "32",
        "-o",
        "4096",
        "-w",
        "randwrite",
        "--pattern",
        "5",
        "--json-output",
        json.to_str().unwrap(),
    ];
    signal_mid_run(&env, &args, "num_write_ops", libc::SIGTERM);
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(job(&doc, 0)["status"], "terminated");
    assert!(u(job(&doc, 0), "io_completed") > 0 || f(job(&doc, 0), "iops") > 0.0);
    // In-flight writes drained before exit: every block is untouched (zero, counted foreign) or a
    // whole pattern block of seed 5 -- none torn.
    let (out, doc) = env.run_json(&[
        "-T",
        "Uring0",
        "-q",
        "16",
        "-o",
        "4096",
        "-w",
        "check",
        "--pattern",
        "5",
    ]);
    ok(&out);
    let j = job(&doc, 0);
    assert_eq!(u(j, "blocks_other_pattern"), 0, "{j:#}");
    assert!(u(j, "blocks_matching") > 0, "{j:#}");
    let bad: Vec<u64> = j["first_foreign_lbas"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_u64())
        .collect();
    let on_disk = std::fs::read(&file).unwrap();
    for lba in bad {
        let block = &on_disk[lba as usize * 4096..(lba as usize + 1) * 4096];
        assert!(
            block.iter().all(|b| *b == 0),
            "block {lba} is neither zero nor a whole pattern block"
        );
    }
}
