//! Helpers shared by the cross-crate integration tests: a `pcache_tgt` process per test, SPDK's
//! real `spdk-rpc` client (installed by scripts/setup-venv.sh), a raw JSON-RPC socket client, and
//! result-shape comparison against SPDK's golden captures in golden/spdk/.
//!
//! The tests run the release `pcache_tgt`, which [`pcache_tgt`] has cargo build when it is not
//! current.

use serde_json::Value;
use std::fs::File;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

/// How long any one client call or target start may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The `pcache_tgt` the tests run, built first if it is not current.
///
/// Cargo hands a package's tests the paths of that package's own binaries only
/// (`CARGO_BIN_EXE_<name>`), and a dependency on `app` would build its library, never its
/// binary, so whatever sat in target/release was tested, however old. Instead the first call in
/// each test process has cargo build the binary (a no-op when it is current) and takes the path
/// from cargo's own report.
pub fn pcache_tgt() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| cargo_build_bin("app", "pcache_tgt"))
}

/// `cargo build --release -p <package> --bin <bin>`; the executable cargo reports.
fn cargo_build_bin(package: &str, bin: &str) -> PathBuf {
    let out = Command::new(env!("CARGO"))
        .args(["build", "--release", "--message-format=json"])
        .args(["-p", package, "--bin", bin])
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo to build {bin}: {e}"));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "cargo build -p {package} --bin {bin} failed:\n{log}"
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == bin)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("cargo reported no {bin} executable:\n{log}"))
}

/// SPDK's `spdk-rpc`: `PCACHE_SPDK_RPC`, else the project's venv. None (with a loud message) when
/// it is missing, unless `PCACHE_REQUIRE_SPDK_RPC` is set, which makes that a failure.
pub fn spdk_rpc_bin() -> Option<PathBuf> {
    let bin = std::env::var_os("PCACHE_SPDK_RPC")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/bin/spdk-rpc"));
    if bin.is_file() {
        return Some(bin);
    }
    let required =
        std::env::var("PCACHE_REQUIRE_SPDK_RPC").is_ok_and(|v| !v.is_empty() && v != "0");
    assert!(
        !required,
        "PCACHE_REQUIRE_SPDK_RPC is set but SPDK's client is not at {}: run scripts/setup-venv.sh",
        bin.display()
    );
    // Straight to the process's stderr: the test harness's capture would hide eprintln!.
    let _ = writeln!(
        std::io::stderr(),
        "\n!!!!!!!!!! SKIPPED: SPDK's spdk-rpc client not found at {}.\n\
         !!!!!!!!!! Run scripts/setup-venv.sh (set PCACHE_REQUIRE_SPDK_RPC=1 to fail instead).\n",
        bin.display()
    );
    None
}

/// Returns from the test (skipping it loudly) when SPDK's client is not installed.
#[macro_export]
macro_rules! require_spdk_rpc {
    () => {
        if $crate::spdk_rpc_bin().is_none() {
            return;
        }
    };
}

/// One `pcache_tgt` process with its own socket; killed when dropped.
pub struct Target {
    child: Option<Child>,
    pub sock: PathBuf,
    pub log: PathBuf,
    /// Keeps the directory alive when the target made its own.
    _dir: Option<tempfile::TempDir>,
}

impl Target {
    /// A target in the RUNTIME state, no config, in a fresh temp dir.
    pub fn start() -> Target {
        Self::start_args(&[])
    }

    /// A target with extra flags (`--wait-for-rpc`, `-c FILE`...) in a fresh temp dir.
    pub fn start_args(args: &[&str]) -> Target {
        let dir = tempdir();
        let mut t = Self::start_in(dir.path(), "tgt", args);
        t._dir = Some(dir);
        t
    }

    /// A target whose socket and log are `<dir>/<name>.sock` and `<dir>/<name>.log`. Waits until
    /// it is ready: serving RPC, and, unless `--wait-for-rpc`, done with init and its config.
    pub fn start_in(dir: &Path, name: &str, args: &[&str]) -> Target {
        let mut t = Self::spawn(dir, name, args);
        let wait_for_rpc = args.contains(&"--wait-for-rpc");
        let start = Instant::now();
        loop {
            let serving = UnixStream::connect(&t.sock).is_ok();
            if serving && (wait_for_rpc || t.log_text().contains("pcache_tgt ready")) {
                return t;
            }
            if let Some(status) = t.try_exit() {
                panic!("pcache_tgt exited early ({status}):\n{}", t.log_text());
            }
            assert!(
                start.elapsed() < DEADLINE,
                "pcache_tgt not ready:\n{}",
                t.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts the process without waiting for anything.
    pub fn spawn(dir: &Path, name: &str, args: &[&str]) -> Target {
        Self::spawn_at(
            &dir.join(format!("{name}.sock")),
            &dir.join(format!("{name}.log")),
            args,
        )
    }

    /// Starts the process on socket `sock`, logging to `log`, without waiting for anything.
    pub fn spawn_at(sock: &Path, log: &Path, args: &[&str]) -> Target {
        let (sock, log) = (sock.to_path_buf(), log.to_path_buf());
        let err = File::create(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let mut cmd = Command::new(pcache_tgt());
        cmd.args(["-m", "0x1", "--idle-backoff", "-r"])
            .arg(&sock)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err);
        let child = cmd.spawn().expect("cannot start pcache_tgt");
        Target {
            child: Some(child),
            sock,
            log,
            _dir: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The exit status if the process has exited.
    pub fn try_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.try_exit().is_none()
    }

    /// Waits for the process to exit by itself; its exit code (-1 if killed by a signal).
    pub fn wait_exit(&mut self) -> i32 {
        let start = Instant::now();
        loop {
            if let Some(s) = self.try_exit() {
                self.child = None;
                return s.code().unwrap_or(-1);
            }
            assert!(
                start.elapsed() < DEADLINE,
                "pcache_tgt did not exit:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then waits; the exit code.
    pub fn terminate(&mut self) -> i32 {
        let Some(child) = &self.child else {
            return -1;
        };
        // SAFETY: kill(2) with the pid of our own child process and a valid signal number.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        self.wait_exit()
    }

    /// An `spdk-rpc` client bound to this target's socket.
    pub fn cli(&self) -> SpdkRpc {
        SpdkRpc::new(&self.sock)
    }

    /// A raw socket connection to this target.
    pub fn raw(&self) -> RawClient {
        RawClient::connect(&self.sock)
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("pcache-test-")
        .tempdir()
        .expect("cannot create a temp dir")
}

/// What one `spdk-rpc` invocation did.
#[derive(Debug, Clone)]
pub struct CliOutput {
    /// The command line, for failure messages.
    pub command: String,
    /// 0 on success, 1 when the server answered an error (or the client failed).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    pub fn ok(&self) -> bool {
        self.code == 0
    }

    /// The printed result as JSON (`spdk-rpc` prints results with indent 2; bare strings are
    /// printed unquoted, so a non-JSON output comes back as a JSON string).
    pub fn json(&self) -> Value {
        assert!(self.ok(), "spdk-rpc failed: {self:?}");
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|_| Value::String(self.stdout.trim().to_owned()))
    }

    /// `(code, message)` of the JSON-RPC error the client printed.
    pub fn error(&self) -> (i64, String) {
        assert!(
            !self.ok(),
            "spdk-rpc succeeded, an error was expected: {self:?}"
        );
        let at = self
            .stdout
            .find("response:\n")
            .unwrap_or_else(|| panic!("no JSON-RPC error response in {self:?}"));
        let err: Value = serde_json::from_str(self.stdout[at + "response:\n".len()..].trim())
            .unwrap_or_else(|e| panic!("bad error object ({e}) in {self:?}"));
        (
            err["code"].as_i64().unwrap_or(0),
            err["message"].as_str().unwrap_or_default().to_owned(),
        )
    }
}

/// SPDK's `spdk-rpc` against one socket. `run` starts one process per call, exactly as an
/// operator would; `session` keeps one `spdk-rpc --server` process that runs many command lines
/// (the same parser and client, one connection per command) without Python's start-up cost.
pub struct SpdkRpc {
    bin: PathBuf,
    sock: PathBuf,
    envs: Vec<(String, String)>,
}

impl SpdkRpc {
    pub fn new(sock: &Path) -> SpdkRpc {
        let bin = spdk_rpc_bin().expect("SPDK's spdk-rpc client is not installed");
        SpdkRpc {
            bin,
            sock: sock.to_owned(),
            envs: Vec::new(),
        }
    }

    pub fn env(mut self, key: &str, value: &str) -> SpdkRpc {
        self.envs.push((key.to_owned(), value.to_owned()));
        self
    }

    /// `spdk-rpc -s SOCK <args>`.
    pub fn run(&self, args: &[&str]) -> CliOutput {
        self.run_stdin(args, None)
    }

    /// `spdk-rpc -s SOCK <args> < input`.
    pub fn run_stdin(&self, args: &[&str], input: Option<&str>) -> CliOutput {
        let mut full: Vec<&str> = vec!["-s", self.sock.to_str().unwrap_or_default()];
        full.extend_from_slice(args);
        run_process(&self.bin, &full, &self.envs, input)
    }

    /// Runs and asserts success; the printed result as JSON.
    pub fn json(&self, args: &[&str]) -> Value {
        self.run(args).json()
    }

    /// Runs and asserts failure; the JSON-RPC error's code and message.
    pub fn error(&self, args: &[&str]) -> (i64, String) {
        self.run(args).error()
    }

    /// A persistent `spdk-rpc --server` process for many calls.
    pub fn session(&self) -> CliSession {
        CliSession::start(&self.bin, &self.sock, &self.envs)
    }
}

/// Runs a process with a deadline, stdout and stderr captured through files (no pipe deadlock).
pub fn run_process(
    bin: &Path,
    args: &[&str],
    envs: &[(String, String)],
    input: Option<&str>,
) -> CliOutput {
    let dir = tempdir();
    let (out_path, err_path) = (dir.path().join("out"), dir.path().join("err"));
    let stdin = match input {
        Some(text) => {
            let p = dir.path().join("in");
            std::fs::write(&p, text).expect("cannot write stdin file");
            Stdio::from(File::open(&p).expect("cannot open stdin file"))
        }
        None => Stdio::null(),
    };
    let mut child = Command::new(bin)
        .args(args)
        .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(stdin)
        .stdout(File::create(&out_path).expect("stdout file"))
        .stderr(File::create(&err_path).expect("stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait failed") {
            break s;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{} {args:?} did not finish in {DEADLINE:?}", bin.display());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    CliOutput {
        command: format!("{} {}", bin.display(), args.join(" ")),
        code: status.code().unwrap_or(-1),
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

/// `spdk-rpc --server`: reads command lines on stdin, prints each one's output followed by
/// `**STATUS=0` or `**STATUS=1`.
pub struct CliSession {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    sock: PathBuf,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl CliSession {
    fn start(bin: &Path, sock: &Path, envs: &[(String, String)]) -> CliSession {
        let dir = tempdir();
        let stderr = dir.path().join("err");
        let mut child = Command::new(bin)
            .arg("--server")
            .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(File::create(&stderr).expect("stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        CliSession {
            stdin: child.stdin.take(),
            child,
            lines,
            sock: sock.to_owned(),
            stderr,
            _dir: dir,
        }
    }

    /// Runs one command line (`-s SOCK` is added) and returns its output.
    pub fn run(&mut self, args: &[&str]) -> CliOutput {
        let mut line = format!("-s {}", shell_quote(self.sock.to_str().unwrap_or_default()));
        for a in args {
            line.push(' ');
            line.push_str(&shell_quote(a));
        }
        line.push('\n');
        let stdin = self.stdin.as_mut().expect("session closed");
        stdin
            .write_all(line.as_bytes())
            .and_then(|()| stdin.flush())
            .expect("spdk-rpc --server is gone");
        let mut stdout = String::new();
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(l) = self.lines.recv_timeout(left) else {
                panic!(
                    "spdk-rpc --server gave no status for {args:?}; output so far:\n{stdout}\nstderr:\n{}",
                    std::fs::read_to_string(&self.stderr).unwrap_or_default()
                );
            };
            if let Some(status) = l.strip_prefix("**STATUS=") {
                return CliOutput {
                    command: line.trim_end().to_owned(),
                    code: status.trim().parse().unwrap_or(-1),
                    stdout,
                    stderr: String::new(),
                };
            }
            stdout.push_str(&l);
            stdout.push('\n');
        }
    }

    pub fn json(&mut self, args: &[&str]) -> Value {
        self.run(args).json()
    }

    pub fn error(&mut self, args: &[&str]) -> (i64, String) {
        self.run(args).error()
    }
}

impl Drop for CliSession {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(2) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A JSON-RPC connection driven byte by byte, for what SPDK's client never sends.
pub struct RawClient {
    pub stream: UnixStream,
    buf: Vec<u8>,
    next_id: u64,
}

impl RawClient {
    pub fn connect(sock: &Path) -> RawClient {
        let stream = UnixStream::connect(sock)
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", sock.display()));
        Self::from_stream(stream)
    }

    pub fn from_stream(stream: UnixStream) -> RawClient {
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("set_read_timeout");
        RawClient {
            stream,
            buf: Vec::new(),
            next_id: 1,
        }
    }

    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Sends a request pretty-printed as SPDK's client does (no trailing newline); its id.
    pub fn send_request(&mut self, method: &str, params: Option<Value>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let mut req = serde_json::json!({"jsonrpc": "2.0", "method": method, "id": id});
        if let Some(p) = params {
            req["params"] = p;
        }
        let text = serde_json::to_string_pretty(&req).unwrap_or_default();
        self.send(text.as_bytes()).expect("send failed");
        id
    }

    /// Sends a request and returns the whole answer object, checking it answers this id.
    pub fn call(&mut self, method: &str, params: Option<Value>) -> Value {
        let id = self.send_request(method, params);
        let answer = self.recv();
        assert_eq!(answer["id"], id, "answer to another request: {answer}");
        answer
    }

    /// The next JSON value the server sends; panics on timeout or disconnection.
    pub fn recv(&mut self) -> Value {
        match self.try_recv(DEADLINE) {
            Ok(v) => v,
            Err(e) => panic!(
                "no answer: {e}; buffered: {}",
                String::from_utf8_lossy(&self.buf)
            ),
        }
    }

    /// The next JSON value, or why there is none (timeout, closed, invalid).
    pub fn try_recv(&mut self, timeout: Duration) -> Result<Value, String> {
        self.try_recv_text(timeout).map(|(v, _)| v)
    }

    /// The next JSON value with the exact text the server sent for it.
    pub fn recv_text(&mut self) -> (Value, String) {
        match self.try_recv_text(DEADLINE) {
            Ok(r) => r,
            Err(e) => panic!("no answer: {e}"),
        }
    }

    fn try_recv_text(&mut self, timeout: Duration) -> Result<(Value, String), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut values = serde_json::Deserializer::from_slice(&self.buf).into_iter::<Value>();
            match values.next() {
                Some(Ok(v)) => {
                    let used = values.byte_offset();
                    let text = String::from_utf8_lossy(&self.buf[..used]).trim().to_owned();
                    self.buf.drain(..used);
                    return Ok((v, text));
                }
                Some(Err(e)) if !e.is_eof() => {
                    return Err(format!("invalid JSON from server: {e}"));
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err("timed out".into());
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err("connection closed".into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read failed: {e}")),
            }
        }
    }

    /// True if the server closes the connection (after any answers, which are discarded)
    /// within `timeout`.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut chunk = [0u8; 65536];
        while Instant::now() < deadline {
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
        false
    }
}

/// `(code, message)` of an answer's error member.
pub fn error_of(answer: &Value) -> (i64, String) {
    let e = &answer["error"];
    assert!(e.is_object(), "expected an error answer, got {answer}");
    (
        e["code"].as_i64().unwrap_or(0),
        e["message"].as_str().unwrap_or_default().to_owned(),
    )
}

/// A file of SPDK's golden captures (tests/golden/spdk/).
pub fn golden_text(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("golden/spdk")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

pub fn golden(name: &str) -> Value {
    serde_json::from_str(&golden_text(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Where `actual`'s shape differs from `expected`'s: every key of an expected object present
/// with a value of the same JSON type, recursively, and no other key unless named in
/// `extra_ok`. An empty expected object is a map with run-specific keys (`io_error`); every
/// element of an array is compared with the expected array's first element.
pub fn shape_diff(expected: &Value, actual: &Value, extra_ok: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    diff_at("$", expected, actual, extra_ok, &mut out);
    out
}

fn diff_at(at: &str, expected: &Value, actual: &Value, extra_ok: &[&str], out: &mut Vec<String>) {
    if kind(expected) != kind(actual) {
        out.push(format!("{at}: {} expected, found {actual}", kind(expected)));
        return;
    }
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) if !e.is_empty() => {
            for (k, ev) in e {
                match a.get(k) {
                    Some(av) => diff_at(&format!("{at}.{k}"), ev, av, extra_ok, out),
                    None => out.push(format!("{at}.{k}: missing")),
                }
            }
            for k in a.keys() {
                if !e.contains_key(k) && !extra_ok.contains(&k.as_str()) {
                    out.push(format!("{at}.{k}: not in SPDK's answer"));
                }
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            if let Some(first) = e.first() {
                for (i, av) in a.iter().enumerate() {
                    diff_at(&format!("{at}[{i}]"), first, av, extra_ok, out);
                }
            }
        }
        _ => {}
    }
}

/// Panics with every difference if `actual` is not shaped like `expected`.
pub fn assert_shape(what: &str, expected: &Value, actual: &Value, extra_ok: &[&str]) {
    let d = shape_diff(expected, actual, extra_ok);
    assert!(
        d.is_empty(),
        "{what}: shape differs from SPDK's:\n  {}\nactual: {actual:#}",
        d.join("\n  ")
    );
}

/// Sorted `(name, uuid, num_blocks, block_size)` of a `bdev_get_bdevs` answer.
pub fn bdev_identities(bdevs: &Value) -> Vec<(String, String, u64, u64)> {
    let mut v: Vec<_> = bdevs
        .as_array()
        .map(|a| {
            a.iter()
                .map(|b| {
                    (
                        b["name"].as_str().unwrap_or_default().to_owned(),
                        b["uuid"].as_str().unwrap_or_default().to_owned(),
                        b["num_blocks"].as_u64().unwrap_or(0),
                        b["block_size"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A sparse file of `bytes` bytes.
pub fn sparse_file(path: &Path, bytes: u64) {
    let f = File::create(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    f.set_len(bytes).expect("set_len");
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released), for a
/// server under test; another service may hold the well-known ports.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free TCP port on 127.0.0.1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shape_diff_reports_missing_extra_and_mistyped() {
        let e = json!({"a": 1, "b": {"c": "x"}, "m": {}, "l": [{"k": true}]});
        let a =
            json!({"a": 2, "b": {"c": "y"}, "m": {"EIO": 3}, "l": [{"k": false}, {"k": false}]});
        assert!(shape_diff(&e, &a, &[]).is_empty());
        let a = json!({"a": 1.5, "b": {}, "m": {}, "l": [{"k": 1}], "z": 0});
        let d = shape_diff(&e, &a, &[]);
        assert_eq!(
            d,
            [
                "$.a: integer expected, found 1.5",
                "$.b.c: missing",
                "$.l[0].k: bool expected, found 1",
                "$.z: not in SPDK's answer"
            ]
        );
        assert_eq!(shape_diff(&e, &a, &["z"]).len(), 3);
    }

    #[test]
    fn quoting_survives_shlex() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
