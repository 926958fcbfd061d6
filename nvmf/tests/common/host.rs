//! What the initiator's integration tests share: a `pcache_tgt` exporting bdevs over NVMe/TCP
//! on core 0 that can be SIGKILLed and restarted on the same port with the same config, and
//! clients on core 1 that attach to it with `bdev_nvme_attach_controller` in their config: a
//! `pcache_tgt` (RPC checks, save_config) or `bdevperf` (I/O, patterns written and checked).

use serde_json::{Value, json};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tests::{RawClient, free_port, pcache_tgt, tempdir, workspace_root};

pub const SUBNQN: &str = "nqn.2016-06.io.spdk:cnode1";
/// A run or a start that takes longer than this is a hang.
pub const LONG: Duration = Duration::from_secs(60);

/// Polls `f` every few milliseconds until it gives Some, or fails the test after `limit`.
pub fn poll_until<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// bdevperf, built by cargo when it is not current (as tests::pcache_tgt does for the target).
pub fn bdevperf_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = Command::new(env!("CARGO"))
            .args(["build", "--release", "--message-format=json"])
            .args(["-p", "tools", "--bin", "bdevperf"])
            .current_dir(workspace_root())
            .stdin(Stdio::null())
            .output()
            .expect("cannot run cargo");
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "cannot build bdevperf:\n{log}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "bdevperf")
            .find_map(|m| m["executable"].as_str().map(PathBuf::from))
            .unwrap_or_else(|| panic!("cargo reported no bdevperf:\n{log}"))
    })
}

/// A child process with its output in a file; killed when dropped.
pub struct Proc {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(bin: &Path, args: &[&str], log: PathBuf) -> Proc {
        let out = File::create(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let err = out.try_clone().expect("dup log file");
        let child = Command::new(bin)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        Proc {
            child: Some(child),
            log,
        }
    }

    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Waits for the process to end by itself.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.try_exit() {
                self.child = None;
                return s;
            }
            assert!(
                start.elapsed() < limit,
                "process did not exit in {limit:?}:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn signal(&self, sig: libc::c_int) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own child's pid with a valid signal number.
            unsafe { libc::kill(c.id() as libc::pid_t, sig) };
        }
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// Waits until the log contains `what`; fails if the process exits first.
    pub fn wait_log(&mut self, what: &str, limit: Duration) {
        let start = Instant::now();
        loop {
            if self.text().contains(what) {
                return;
            }
            if let Some(s) = self.try_exit() {
                panic!("exited ({s}) before logging {what:?}:\n{}", self.text());
            }
            assert!(
                start.elapsed() < limit,
                "no {what:?} in the log:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A JSON config with these bdev entries (and nvmf entries, when any).
pub fn config(bdev: Vec<Value>, nvmf: Vec<Value>) -> Value {
    let mut subs = vec![json!({"subsystem": "bdev", "config": bdev})];
    if !nvmf.is_empty() {
        subs.push(json!({"subsystem": "nvmf", "config": nvmf}));
    }
    json!({ "subsystems": subs })
}

pub fn write_json(path: &Path, v: &Value) {
    std::fs::write(path, serde_json::to_string_pretty(v).unwrap_or_default())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// A target exporting `bdevs` (config entries; `ns` the bdev to export as NSID 1) in `SUBNQN`
/// on 127.0.0.1:`port`, on core 0. Restartable: the config stays in its directory.
pub struct Export {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub cfg: PathBuf,
    pub proc: Option<Proc>,
    starts: u32,
}

impl Export {
    pub fn start(bdevs: Vec<Value>, ns: &str) -> Export {
        Self::start_with(bdevs, ns, json!({"trtype": "TCP"}))
    }

    pub fn start_with(bdevs: Vec<Value>, ns: &str, transport: Value) -> Export {
        let dir = tempdir();
        let port = free_port();
        let nvmf = vec![
            json!({"method": "nvmf_create_transport", "params": transport}),
            json!({"method": "nvmf_create_subsystem", "params": {"nqn": SUBNQN,
                   "allow_any_host": true, "serial_number": "PCACHE0001",
                   "model_number": "pcache test target"}}),
            json!({"method": "nvmf_subsystem_add_ns", "params": {"nqn": SUBNQN,
                   "namespace": {"bdev_name": ns, "nsid": 1}}}),
            json!({"method": "nvmf_subsystem_add_listener", "params": {"nqn": SUBNQN,
                   "listen_address": {"trtype": "TCP", "adrfam": "IPv4",
                                      "traddr": "127.0.0.1", "trsvcid": port.to_string()}}}),
        ];
        let cfg = dir.path().join("target.json");
        write_json(&cfg, &config(bdevs, nvmf));
        let mut e = Export {
            dir,
            port,
            cfg,
            proc: None,
            starts: 0,
        };
        e.restart();
        e
    }

    /// Starts the target (again) with its config; returns once it serves.
    pub fn restart(&mut self) {
        self.starts += 1;
        let sock = self.dir.path().join(format!("tgt{}.sock", self.starts));
        let log = self.dir.path().join(format!("tgt{}.log", self.starts));
        let args = [
            "-m",
            "0x1",
            "--idle-backoff",
            "-r",
            sock.to_str().unwrap_or_default(),
            "-c",
            self.cfg.to_str().unwrap_or_default(),
        ];
        let mut p = Proc::spawn(pcache_tgt(), &args, log);
        p.wait_log("pcache_tgt ready", LONG);
        self.proc = Some(p);
    }

    /// SIGKILL: no shutdown, the connections reset.
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    pub fn log(&self) -> String {
        self.proc.as_ref().map(Proc::text).unwrap_or_default()
    }

    /// The RPC socket of the running target.
    pub fn sock(&self) -> PathBuf {
        self.dir.path().join(format!("tgt{}.sock", self.starts))
    }

    /// The result of `method` on the target, or panics with the error.
    pub fn call(&self, method: &str, params: Value) -> Value {
        let a = RawClient::connect(&self.sock()).call(method, Some(params.clone()));
        assert!(
            a.get("error").is_none(),
            "target {method} {params} failed: {a}\n{}",
            self.log()
        );
        a["result"].clone()
    }

    /// SIGSTOP / SIGCONT: the target stops answering with its sockets open, and resumes.
    pub fn signal(&self, sig: libc::c_int) {
        if let Some(p) = &self.proc {
            p.signal(sig);
        }
    }

    /// `bdev_nvme_attach_controller` parameters for this target, with `extra` members.
    pub fn attach_params(&self, name: &str, extra: Value) -> Value {
        let mut p = json!({"name": name, "trtype": "tcp", "adrfam": "ipv4",
                           "traddr": "127.0.0.1", "trsvcid": self.port.to_string(),
                           "subnqn": SUBNQN});
        if let (Some(m), Some(e)) = (p.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                m.insert(k.clone(), v.clone());
            }
        }
        p
    }

    /// A client config attaching this target as `name`.
    pub fn client_config(&self, name: &str, extra: Value) -> Value {
        config(
            vec![json!({"method": "bdev_nvme_attach_controller",
                        "params": self.attach_params(name, extra)})],
            vec![],
        )
    }
}

/// A 512-byte-block malloc bdev entry.
pub fn malloc(name: &str, blocks: u64, block_size: u32) -> Value {
    json!({"method": "bdev_malloc_create",
           "params": {"name": name, "num_blocks": blocks, "block_size": block_size}})
}

/// A uring bdev on `file` (created sparse with `bytes` bytes) with a fixed UUID.
pub fn uring_on_file(name: &str, file: &Path, bytes: u64, block_size: u32) -> Value {
    tests::sparse_file(file, bytes);
    json!({"method": "bdev_uring_create",
           "params": {"name": name, "filename": file.to_str().unwrap_or_default(),
                      "block_size": block_size,
                      "uuid": "5f0c7e2a-1b3d-4c5e-8f90-a1b2c3d4e5f6"}})
}

/// A `pcache_tgt` client on core 1 with `config`; returns once it is ready.
pub struct Client {
    pub proc: Proc,
    pub sock: PathBuf,
}

impl Client {
    pub fn start(dir: &Path, name: &str, cfg: &Value) -> Client {
        let c = Self::spawn(dir, name, cfg);
        c.ready()
    }

    pub fn spawn(dir: &Path, name: &str, cfg: &Value) -> Client {
        let path = dir.join(format!("{name}.json"));
        write_json(&path, cfg);
        let sock = dir.join(format!("{name}.sock"));
        let args = [
            "-m",
            "0x2",
            "--idle-backoff",
            "-r",
            sock.to_str().unwrap_or_default(),
            "-c",
            path.to_str().unwrap_or_default(),
        ];
        let proc = Proc::spawn(pcache_tgt(), &args, dir.join(format!("{name}.log")));
        Client { proc, sock }
    }

    pub fn ready(mut self) -> Client {
        self.proc.wait_log("pcache_tgt ready", LONG);
        self
    }

    pub fn rpc(&self) -> RawClient {
        RawClient::connect(&self.sock)
    }

    /// The result of `method`, or panics with the error.
    pub fn call(&self, method: &str, params: Value) -> Value {
        let a = self.rpc().call(method, Some(params.clone()));
        assert!(
            a.get("error").is_none(),
            "{method} {params} failed: {a}\n{}",
            self.proc.text()
        );
        a["result"].clone()
    }

    /// The (code, message) of the error `method` answers.
    pub fn call_err(&self, method: &str, params: Value) -> (i64, String) {
        let a = self.rpc().call(method, Some(params));
        tests::error_of(&a)
    }
}

/// Where bdevperf put its results.
pub struct PerfRun {
    pub status: ExitStatus,
    pub output: String,
    pub json: Value,
}

impl PerfRun {
    /// The one job's results, asserting the run finished without failed I/O.
    pub fn ok(&self) -> &Value {
        let j = &self.json["results"][0];
        assert!(
            self.status.success() && j["status"] == "finished" && j["io_failed"] == 0,
            "bdevperf failed ({}):\n{}\n{:#}",
            self.status,
            self.output,
            self.json
        );
        j
    }
}

/// bdevperf on core 1 against `cfg`, started (not waited for).
pub struct Perf {
    pub proc: Proc,
    json_path: PathBuf,
    pub sock: PathBuf,
}

impl Perf {
    pub fn spawn(dir: &Path, name: &str, cfg: &Value, args: &[&str]) -> Perf {
        Self::spawn_on(dir, name, cfg, "0x2", args)
    }

    /// On the reactors of `mask`.
    pub fn spawn_on(dir: &Path, name: &str, cfg: &Value, mask: &str, args: &[&str]) -> Perf {
        let path = dir.join(format!("{name}.json"));
        write_json(&path, cfg);
        let json_path = dir.join(format!("{name}.result.json"));
        let sock = dir.join(format!("{name}.sock"));
        let mut a = vec![
            "-c",
            path.to_str().unwrap_or_default(),
            "-m",
            mask,
            "--idle-backoff",
            "-r",
            sock.to_str().unwrap_or_default(),
            "--json-output",
            json_path.to_str().unwrap_or_default(),
        ];
        a.extend_from_slice(args);
        let proc = Proc::spawn(bdevperf_bin(), &a, dir.join(format!("{name}.log")));
        Perf {
            proc,
            json_path,
            sock,
        }
    }

    pub fn run(dir: &Path, name: &str, cfg: &Value, args: &[&str]) -> PerfRun {
        Self::spawn(dir, name, cfg, args).finish(LONG)
    }

    pub fn finish(mut self, limit: Duration) -> PerfRun {
        let status = self.proc.wait(limit);
        let json = std::fs::read_to_string(&self.json_path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null);
        PerfRun {
            status,
            output: self.proc.text(),
            json,
        }
    }

    /// A JSON-RPC call on bdevperf's socket, None while it does not answer.
    pub fn try_call(&self, method: &str, params: Value) -> Option<Value> {
        let mut s = UnixStream::connect(&self.sock).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        let req = json!({"jsonrpc": "2.0", "method": method, "id": 1, "params": params});
        s.write_all(req.to_string().as_bytes()).ok()?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 65536];
        loop {
            let n = s.read(&mut chunk).ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(Ok(v)) = serde_json::Deserializer::from_slice(&buf)
                .into_iter::<Value>()
                .next()
            {
                return v.get("result").cloned();
            }
        }
    }

    /// Write (or read) operations completed on `bdev` so far.
    pub fn ops(&self, bdev: &str, key: &str) -> Option<u64> {
        let v = self.try_call("bdev_get_iostat", json!({"name": bdev}))?;
        v["bdevs"][0][key].as_u64()
    }

    /// The state of controller `name` as bdevperf's get_controllers shows it.
    pub fn ctrlr_state(&self, name: &str) -> Option<String> {
        let v = self.try_call("bdev_nvme_get_controllers", json!({"name": name}))?;
        v[0]["ctrlrs"][0]["state"].as_str().map(str::to_owned)
    }
}
