//! Helpers shared by the tools' integration tests: a minimal JSON-RPC client for a bdevperf or
//! pcache_tgt socket, readers for bdevperf's JSON results, and a child process whose output is
//! read as it comes.
// Each test file uses the helpers it needs.
#![allow(dead_code)]

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

/// A run or a start that takes longer than this is a hang, not a slow machine.
pub const DEADLINE: Duration = Duration::from_secs(90);

/// A minimal SPDK JSON-RPC client: one request, one answer.
pub fn rpc_call(sock: &Path, method: &str, params: Value) -> Value {
    try_rpc_call(sock, method, params)
        .unwrap_or_else(|e| panic!("{method} on {}: {e}", sock.display()))
}

/// `rpc_call` that says why instead of panicking (the server may be gone).
pub fn try_rpc_call(sock: &Path, method: &str, params: Value) -> std::io::Result<Value> {
    let mut s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(DEADLINE))?;
    let req = json!({"jsonrpc": "2.0", "method": method, "id": 1, "params": params});
    s.write_all(req.to_string().as_bytes())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before the answer",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(Ok(v)) = serde_json::Deserializer::from_slice(&buf)
            .into_iter::<Value>()
            .next()
        {
            return Ok(v);
        }
    }
}

/// An unsigned member of a JSON result.
pub fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("{k} missing in {v:#}"))
}

/// A pattern check's (matching, other pattern, foreign) block counts.
pub fn counts(j: &Value) -> (u64, u64, u64) {
    (
        u(j, "blocks_matching"),
        u(j, "blocks_other_pattern"),
        u(j, "blocks_foreign"),
    )
}

/// A child process whose stdout and stderr lines arrive as it writes them, so a test waits for
/// what the process says rather than for a guessed time. Killed when dropped.
pub struct Watched {
    child: Child,
    lines: Receiver<String>,
    seen: String,
    /// Both streams reached their end (the process closed them, so it is exiting).
    closed: bool,
}

impl Watched {
    pub fn spawn(mut cmd: Command) -> Watched {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let (tx, lines) = channel();
        let streams: [Option<Box<dyn Read + Send>>; 2] = [
            child.stdout.take().map(|s| Box::new(s) as _),
            child.stderr.take().map(|s| Box::new(s) as _),
        ];
        for stream in streams.into_iter().flatten() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Watched {
            child,
            lines,
            seen: String::new(),
            closed: false,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process wrote so far (stdout and stderr lines as they arrived).
    pub fn output(&self) -> &str {
        &self.seen
    }

    /// The next line, or None once both streams ended; fails past `end`.
    fn next_line(&mut self, end: Instant, what: &str) -> Option<String> {
        if self.closed {
            return None;
        }
        match self
            .lines
            .recv_timeout(end.saturating_duration_since(Instant::now()))
        {
            Ok(line) => {
                self.seen.push_str(&line);
                self.seen.push('\n');
                Some(line)
            }
            Err(RecvTimeoutError::Disconnected) => {
                self.closed = true;
                None
            }
            Err(RecvTimeoutError::Timeout) => {
                let _ = self.child.kill();
                panic!("{what}: nothing in time; output so far:\n{}", self.seen)
            }
        }
    }

    /// Waits for a line containing `what`; fails if the process ends first or past DEADLINE.
    pub fn wait_for(&mut self, what: &str) {
        let end = Instant::now() + DEADLINE;
        while let Some(line) = self.next_line(end, what) {
            if line.contains(what) {
                return;
            }
        }
        panic!("ended before {what:?}:\n{}", self.seen);
    }

    /// Reads the output to its end and reaps the process; kills it (and fails) past `deadline`.
    pub fn wait(&mut self, deadline: Duration) -> ExitStatus {
        let end = Instant::now() + deadline;
        while self.next_line(end, "waiting for the exit").is_some() {}
        // Both streams closed: the process is exiting, so this returns promptly.
        self.child.wait().unwrap()
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid (not reaped while `self` lives) has no memory
        // effects.
        assert_eq!(unsafe { libc::kill(self.pid() as i32, sig) }, 0);
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
