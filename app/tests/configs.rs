//! Every example config starts pcache_tgt, which logs its bdevs (as plain text into a file) and
//! exits 0 on SIGTERM; a bad config exits non-zero naming the entry.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TGT: &str = env!("CARGO_BIN_EXE_pcache_tgt");

/// Starts the target on `config` (socket and log `<dir>/<name>.*`), waits for "pcache_tgt
/// ready"; whether it got there.
fn start(config: &Path, dir: &Path, name: &str) -> (Child, PathBuf, bool) {
    let log_path = dir.join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(TGT)
        .args([
            "-c",
            config.to_str().unwrap(),
            "-r",
            dir.join(format!("{name}.sock")).to_str().unwrap(),
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
    (child, log_path, ready)
}

/// Starts the target on `config`, waits for "pcache_tgt ready", sends SIGTERM, returns (exit code, log).
fn run_until_ready(config: &Path, dir: &Path) -> (i32, String) {
    let (mut child, log_path, ready) = start(config, dir, "tgt");
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

fn free_port() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
        .to_string()
}

/// The example configs listen on NVMe/TCP's well-known port 4420 (or the demo's placeholder),
/// and 4421 for the target another one attaches to; tests take free ones instead, since another
/// service may hold them.
fn with_free_ports(text: &str, ports: &(String, String)) -> String {
    text.replace("\"4420\"", &format!("\"{}\"", ports.0))
        .replace("\"4421\"", &format!("\"{}\"", ports.1))
        .replace("@NVMF_PORT@", &ports.0)
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
        let ports = (free_port(), free_port());
        // Point every file the config names into the temp dir, and create the origin files.
        let prepare = |path: &Path| {
            with_free_ports(
                &std::fs::read_to_string(path)
                    .unwrap()
                    .replace("@STATE@", dir.path().to_str().unwrap())
                    .replace("/var/tmp/", &format!("{}/", dir.path().display())),
                &ports,
            )
        };
        let text = prepare(&path);
        for name in [
            "origin.img",
            "pcache-uring.img",
            "pcache-origin.img",
            "pcache-remote-origin.img",
        ] {
            let f = std::fs::File::create(dir.path().join(name)).unwrap();
            f.set_len(64 << 20).unwrap();
        }
        // A config that attaches a remote namespace gets its partner, nvmf-origin.json, first.
        let partner = text.contains("bdev_nvme_attach_controller").then(|| {
            let config = dir.path().join("origin.json");
            std::fs::write(&config, prepare(&root.join("nvmf-origin.json"))).unwrap();
            let (child, log, ready) = start(&config, dir.path(), "origin");
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            assert!(ready, "nvmf-origin.json for {}:\n{text}", path.display());
            child
        });
        let config = dir.path().join("config.json");
        std::fs::write(&config, &text).unwrap();
        let (code, log) = run_until_ready(&config, dir.path());
        if let Some(mut p) = partner {
            let _ = p.kill();
            let _ = p.wait();
        }
        // One bdev per *_create, one per attached controller (one namespace each here).
        let expected = text.matches("_create\"").count()
            + text.matches("\"bdev_nvme_attach_controller\"").count();
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
        &(free_port(), free_port()),
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
