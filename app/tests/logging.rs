//! Logs written to a file or a pipe are plain text: no ANSI escape sequences, whatever the
//! environment says (`./scripts/demo.sh > log 2>&1` wrote colour codes on every line).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TGT: &str = env!("CARGO_BIN_EXE_pcache_tgt");

#[test]
fn pcache_tgt_logs_to_a_file_without_escape_sequences() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("tgt.log");
    let mut child = Command::new(TGT)
        .args(["-r", dir.path().join("rpc.sock").to_str().unwrap()])
        .args(["--idle-backoff", "-L", "bdev"])
        // What a terminal session would carry; stderr is a file all the same.
        .env("TERM", "xterm-256color")
        .env_remove("NO_COLOR")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let log = loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if text.contains("pcache_tgt ready") {
            break text;
        }
        assert!(
            child.try_wait().unwrap().is_none() && start.elapsed() < Duration::from_secs(20),
            "not ready:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::SIGTERM,
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
    let log = std::fs::read_to_string(&log_path).unwrap_or(log);
    assert!(log.lines().count() >= 3, "{log}");
    assert!(log.contains(" INFO "), "levels are still written: {log}");
    assert!(
        !log.contains('\x1b'),
        "escape sequences in the log:\n{log:?}"
    );
}
