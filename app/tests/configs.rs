//! Every example config starts pcache_tgt, which logs its bdevs (as plain text into a file) and
//! exits 0 on SIGTERM; a bad config exits non-zero naming the entry.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TGT: &str = env!("CARGO_BIN_EXE_pcache_tgt");

/// Starts the target on `config`, waits for "pcache_tgt ready", sends SIGTERM, returns (exit code, log).
fn run_until_ready(config: &Path, dir: &Path) -> (i32, String) {
    let log_path = dir.join("tgt.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(TGT)
        .args([
            "-c",
            config.to_str().unwrap(),
            "-r",
            dir.join("rpc.sock").to_str().unwrap(),
            "--idle-backoff",
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let start = Instant::now();
    let ready = loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if text.contains("pcache_tgt ready") {
            break true;
        }
        if child.try_wait().unwrap().is_some() || start.elapsed() > Duration::from_secs(20) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if ready {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::SIGTERM,
        )
        .unwrap();
    }
    let status = child.wait().unwrap();
    let _ = child.kill();
    (
        status.code().unwrap_or(-1),
        std::fs::read_to_string(&log_path).unwrap_or_default(),
    )
}

/// The example configs listen on NVMe/TCP's well-known port (or the demo's placeholder); tests
/// take a free one instead, since another service may hold 4420.
fn with_free_ports(text: &str) -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
        .to_string();
    text.replace("\"4420\"", &format!("\"{port}\""))
        .replace("@NVMF_PORT@", &port)
}

#[test]
fn every_example_config_starts_and_stops_cleanly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let mut seen = 0;
    for entry in std::fs::read_dir(&root).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        // Point every file the config names into the temp dir, and create the origin files.
        let text = with_free_ports(
            &std::fs::read_to_string(&path)
                .unwrap()
                .replace("@STATE@", dir.path().to_str().unwrap())
                .replace("/var/tmp/", &format!("{}/", dir.path().display())),
        );
        for name in ["origin.img", "pcache-uring.img", "pcache-origin.img"] {
            let f = std::fs::File::create(dir.path().join(name)).unwrap();
            f.set_len(64 << 20).unwrap();
        }
        let config = dir.path().join("config.json");
        std::fs::write(&config, &text).unwrap();
        let (code, log) = run_until_ready(&config, dir.path());
        let expected = text.matches("_create\"").count();
        assert_eq!(code, 0, "{}: exit code\n{log}", path.display());
        assert_eq!(
            log.matches("bdev ready").count(),
            expected,
            "{}: bdevs logged\n{log}",
            path.display()
        );
        assert!(
            log.contains("shutting down"),
            "{}: clean shutdown\n{log}",
            path.display()
        );
        if text.contains("bdev_pcache_create") {
            assert!(
                log.contains("pcache stopped cleanly"),
                "{}: the cache stops cleanly\n{log}",
                path.display()
            );
        }
        seen += 1;
    }
    assert!(seen >= 7, "example configs found: {seen}");
}

/// scripts/demo.sh keeps its state between runs: the second start must find the cache it left
/// (same origin identity, so no "format" needed) and reattach to it, not fail or reformat.
#[test]
fn the_demo_config_restarts_on_its_own_state() {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let text = with_free_ports(
        &std::fs::read_to_string(root.join("demo.json"))
            .unwrap()
            .replace("@STATE@", dir.path().to_str().unwrap()),
    );
    let f = std::fs::File::create(dir.path().join("origin.img")).unwrap();
    f.set_len(64 << 20).unwrap();
    let config = dir.path().join("demo.json");
    std::fs::write(&config, &text).unwrap();
    let (code, log) = run_until_ready(&config, dir.path());
    assert_eq!(code, 0, "first start\n{log}");
    // `./scripts/demo.sh > log 2>&1` must give plain text: stderr is not a terminal here.
    assert!(log.contains(" INFO "), "{log}");
    assert!(
        !log.contains('\x1b'),
        "escape sequences in a log file:\n{log:?}"
    );
    assert!(
        log.contains("cache formatted"),
        "first start formats\n{log}"
    );
    let (code, log) = run_until_ready(&config, dir.path());
    assert_eq!(code, 0, "second start\n{log}");
    assert_eq!(log.matches("bdev ready").count(), 3, "{log}");
    assert!(
        log.contains("log replayed") && !log.contains("cache formatted"),
        "second start reattaches\n{log}"
    );
    assert!(log.contains("pcache stopped cleanly"), "{log}");
}

#[test]
fn a_bad_config_names_the_entry_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.json");
    std::fs::write(
        &config,
        r#"{"subsystems":[{"subsystem":"bdev","config":[
            {"method":"bdev_malloc_create","params":{"name":"M0","num_blocks":64,"block_size":512}},
            {"method":"bdev_malloc_create","params":{"name":"M0","num_blocks":64,"block_size":512}}]}]}"#,
    )
    .unwrap();
    let (code, log) = run_until_ready(&config, dir.path());
    assert_ne!(code, 0);
    assert!(
        log.contains("entry 1 (bdev_malloc_create)") && log.contains("File exists"),
        "{log}"
    );

    std::fs::write(&config, "{ not json").unwrap();
    let (code, log) = run_until_ready(&config, dir.path());
    assert_ne!(code, 0);
    assert!(log.contains("invalid config"), "{log}");
}
