//! Server tests with real `UnixStream` clients in threads and `poll()` in the test thread.

use super::*;
use crate::methods::VersionInfo;
use crate::registry::StateMask;
use crate::stream::MAX_REQUEST_BYTES;
use serde::Deserialize;
use serde_json::json;
use std::io::Write;
use std::net::Shutdown;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};
use tempfile::TempDir;

struct Fixture {
    dir: TempDir,
    server: RpcServer,
    /// Requests to "hold", unanswered until the test answers them.
    held: Arc<Mutex<Vec<Responder>>>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let registry = Registry::new();
        registry.register_builtin_methods(&VersionInfo::from_cargo("0.1.0", "abc"));
        registry.register_raw(
            "echo",
            StateMask::BOTH,
            Arc::new(|p, r| r.ok(p.unwrap_or(Value::Null))),
        );
        #[derive(Deserialize)]
        struct Late {
            ms: u64,
            v: Value,
        }
        registry.register("late", StateMask::BOTH, |p: Late, r: Responder| {
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(p.ms));
                r.ok(p.v);
            });
        });
        let held: Arc<Mutex<Vec<Responder>>> = Arc::default();
        let h = held.clone();
        registry.register_raw(
            "hold",
            StateMask::BOTH,
            Arc::new(move |_, r| lock(&h).push(r)),
        );
        registry.register_raw(
            "runtime_only",
            StateMask::RUNTIME,
            Arc::new(|_, r| r.ok(json!(1))),
        );
        let path = dir.path().join("rpc.sock");
        let server = RpcServer::listen_with(&path, 0o600, registry).expect("listen");
        Fixture { dir, server, held }
    }

    fn path(&self) -> PathBuf {
        self.server.path().to_owned()
    }

    /// Polls until every client thread is done, then returns their results.
    fn serve<T>(&mut self, clients: Vec<JoinHandle<T>>) -> Vec<T> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !clients.iter().all(|c| c.is_finished()) {
            if !self.server.poll() {
                thread::sleep(Duration::from_micros(200));
            }
            assert!(Instant::now() < deadline, "clients did not finish");
        }
        // Let the server notice closed connections.
        for _ in 0..100 {
            self.server.poll();
        }
        clients
            .into_iter()
            .map(|c| c.join().expect("client thread panicked"))
            .collect()
    }
}

/// A test client that reads answers as a stream of JSON values, like SPDK's client.
struct Client {
    s: UnixStream,
    dec: RequestDecoder,
    raw: Vec<u8>,
}

impl Client {
    fn connect(path: &Path) -> Client {
        let s = UnixStream::connect(path).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        Client {
            s,
            dec: RequestDecoder::new(),
            raw: Vec::new(),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("write");
    }

    fn send_json(&mut self, v: &Value) {
        let bytes = serde_json::to_vec_pretty(v).expect("encode");
        self.send(&bytes);
    }

    /// The next answer, or `None` once the server closed the connection.
    fn recv(&mut self) -> Option<Value> {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(v) = self.dec.next() {
                return Some(v.expect("server sent invalid JSON"));
            }
            match (&self.s).read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => {
                    self.raw.extend_from_slice(&buf[..n]);
                    self.dec.push(&buf[..n]);
                }
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    fn call(&mut self, id: u64, method: &str, params: Option<Value>) -> Value {
        let mut req = json!({"jsonrpc": "2.0", "method": method, "id": id});
        if let Some(p) = params {
            req["params"] = p;
        }
        self.send_json(&req);
        self.recv().expect("answer")
    }
}

fn spawn<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    thread::spawn(f)
}

#[test]
fn pretty_request_in_one_byte_writes() {
    let mut fx = Fixture::new();
    let path = fx.path();
    let client = spawn(move || {
        let mut c = Client::connect(&path);
        let req = serde_json::to_vec_pretty(
            &json!({"jsonrpc": "2.0", "method": "spdk_get_version", "id": 1}),
        )
        .expect("encode");
        for b in &req {
            c.send(std::slice::from_ref(b));
            thread::sleep(Duration::from_micros(100));
        }
        c.recv();
        c.s.shutdown(Shutdown::Both).expect("shutdown");
        String::from_utf8(c.raw).expect("utf8")
    });
    let raw = fx.serve(vec![client]).remove(0);
    assert_eq!(
        raw,
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"version\":\"pcache v0.1.0 git sha1 abc\",\
         \"fields\":{\"major\":0,\"minor\":1,\"patch\":0,\"suffix\":\"\",\"commit\":\"abc\"}}}\n"
    );
    assert_eq!(fx.server.connections(), 0);
}

#[test]
fn spdk_error_shapes_on_the_wire() {
    let mut fx = Fixture::new();
    let path = fx.path();
    let client = spawn(move || {
        let mut c = Client::connect(&path);
        let a = c.call(1, "nope", None);
        let b = c.call(2, "runtime_only", None);
        let d = c.call(3, "echo", Some(json!(5)));
        c.send(br#"{"jsonrpc":"2.0","method":"echo","id":4,"extra":1}"#);
        let e = c.recv();
        (a, b, d, e)
    });
    let (a, b, d, e) = fx.serve(vec![client]).remove(0);
    assert_eq!(
        a,
        json!({"jsonrpc": "2.0", "id": 1, "error": {"code": -32601, "message": "Method not found"}})
    );
    assert_eq!(b["error"]["code"], -1);
    assert_eq!(
        b["error"]["message"],
        "Method may only be called after framework is initialized using framework_start_init RPC."
    );
    assert_eq!(d["error"]["code"], -32600);
    assert_eq!(d["id"], 3);
    assert_eq!(e.map(|e| e["error"]["code"].clone()), Some(json!(-32600)));
}

#[test]
fn batch_notifications_and_empty_batch() {
    let mut fx = Fixture::new();
    let path = fx.path();
    let client = spawn(move || {
        let mut c = Client::connect(&path);
        c.send_json(&json!([
            {"jsonrpc": "2.0", "method": "late", "params": {"ms": 50, "v": "first"}, "id": 1},
            {"jsonrpc": "2.0", "method": "echo", "params": {"n": 1}},
            {"jsonrpc": "2.0", "method": "nope", "id": 2},
            5,
            {"jsonrpc": "2.0", "method": "echo", "params": {"a": 1}, "id": 3},
        ]));
        let batch = c.recv();
        // Notifications only: no answer, so the next answer is the echo's.
        c.send_json(&json!([{"method": "echo"}, {"method": "nope"}]));
        c.send_json(&json!({"jsonrpc": "2.0", "method": "echo"}));
        let after = c.call(4, "echo", Some(json!({"x": 1})));
        c.send(b"[]");
        let empty = c.recv();
        (batch, after, empty)
    });
    let (batch, after, empty) = fx.serve(vec![client]).remove(0);
    assert_eq!(
        batch,
        Some(json!([
            {"jsonrpc": "2.0", "id": 1, "result": "first"},
            {"jsonrpc": "2.0", "id": 2, "error": {"code": -32601, "message": "Method not found"}},
            {"jsonrpc": "2.0", "id": null, "error": {"code": -32600, "message": "Invalid request"}},
            {"jsonrpc": "2.0", "id": 3, "result": {"a": 1}},
        ]))
    );
    assert_eq!(
        after,
        json!({"jsonrpc": "2.0", "id": 4, "result": {"x": 1}})
    );
    assert_eq!(
        empty,
        Some(
            json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32600, "message": "Invalid request"}})
        )
    );
}

#[test]
fn garbage_closes_only_that_client() {
    let mut fx = Fixture::new();
    let path = fx.path();
    let bad = spawn(move || {
        let mut c = Client::connect(&path);
        c.send(b"{\"jsonrpc\": \"2.0\", ]]] more");
        let first = c.recv();
        (
            first,
            c.recv(),
            String::from_utf8(c.raw).unwrap_or_default(),
        )
    });
    let (first, eof, raw) = fx.serve(vec![bad]).remove(0);
    assert_eq!(
        raw,
        "{\"jsonrpc\":\"2.0\",\"id\":null,\"error\":{\"code\":-32700,\"message\":\"Parse error\"}}\n"
    );
    assert!(first.is_some());
    assert_eq!(eof, None);
    let path = fx.path();
    let good = spawn(move || Client::connect(&path).call(1, "echo", Some(json!({"ok": true}))));
    assert_eq!(fx.serve(vec![good])[0]["result"], json!({"ok": true}));
}

#[test]
fn disconnect_mid_request_and_half_close() {
    let mut fx = Fixture::new();
    let path = fx.path();
    let quitter = spawn(move || {
        let mut c = Client::connect(&path);
        c.send(b"{\"jsonrpc\": \"2.0\", \"method\": \"ec");
    });
    fx.serve(vec![quitter]);
    assert_eq!(fx.server.connections(), 0);

    // A client that sends, shuts its write side and then reads still gets its answers.
    let path = fx.path();
    let half = spawn(move || {
        let mut c = Client::connect(&path);
        c.send(br#"{"method":"late","params":{"ms":30,"v":1},"id":1}{"method":"echo","id":2}"#);
        c.s.shutdown(Shutdown::Write).expect("shutdown");
        (c.recv(), c.recv(), c.recv())
    });
    let (a, b, end) = fx.serve(vec![half]).remove(0);
    assert_eq!(a.map(|a| a["result"].clone()), Some(json!(1)));
    assert_eq!(b.map(|b| b["id"].clone()), Some(json!(2)));
    assert_eq!(end, None);
    assert_eq!(fx.server.connections(), 0);
}

#[test]
fn thirty_two_concurrent_clients() {
    let mut fx = Fixture::new();
    let clients = (0..32u64)
        .map(|n| {
            let path = fx.path();
            spawn(move || {
                let mut c = Client::connect(&path);
                (0..10u64)
                    .map(|i| c.call(i, "echo", Some(json!({"client": n, "i": i}))))
                    .all(|a| a["result"]["client"] == n && a["id"] == a["result"]["i"])
            })
        })
        .collect();
    assert!(fx.serve(clients).into_iter().all(|ok| ok));
    assert_eq!(fx.server.connections(), 0);
}

#[test]
fn late_answers_keep_request_order() {
    let mut fx = Fixture::new();
    let path = fx.path();
    let client = spawn(move || {
        let mut c = Client::connect(&path);
        let mut reqs = Vec::new();
        for (id, ms) in [(1, 200), (2, 0), (3, 50), (4, 0)] {
            let method = if ms > 0 { "late" } else { "echo" };
            let v = json!({"jsonrpc": "2.0", "method": method, "id": id,
                           "params": {"ms": ms, "v": id}});
            reqs.extend(serde_json::to_vec_pretty(&v).expect("encode"));
        }
        c.send(&reqs);
        (0..4)
            .map(|_| c.recv().map(|a| a["id"].clone()))
            .collect::<Vec<_>>()
    });
    let ids = fx.serve(vec![client]).remove(0);
    assert_eq!(
        ids,
        [
            Some(json!(1)),
            Some(json!(2)),
            Some(json!(3)),
            Some(json!(4))
        ]
    );
}

#[test]
fn non_ascii_results_are_escaped() {
    let mut fx = Fixture::new();
    let path = fx.path();
    let client = spawn(move || {
        let mut c = Client::connect(&path);
        let a = c.call(1, "echo", Some(json!({"s": "é日😀"})));
        (a, c.raw)
    });
    let (a, raw) = fx.serve(vec![client]).remove(0);
    assert_eq!(a["result"]["s"], "é日😀");
    assert!(raw.is_ascii());
    let text = String::from_utf8(raw).unwrap_or_default();
    assert!(text.contains(r#""\u00e9\u65e5\ud83d\ude00""#), "{text}");
}

#[test]
fn oversized_request_is_refused() {
    let mut fx = Fixture::new();
    let path = fx.path();
    let client = spawn(move || {
        let mut c = Client::connect(&path);
        c.send(b"{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"id\":1,\"params\":{\"s\":\"");
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..(MAX_REQUEST_BYTES >> 20) + 2 {
            // The server closes once over the limit; later writes fail.
            if c.s.write_all(&chunk).is_err() {
                break;
            }
        }
        (c.recv(), c.recv())
    });
    let (a, end) = fx.serve(vec![client]).remove(0);
    assert_eq!(a.map(|a| a["error"]["code"].clone()), Some(json!(-32700)));
    assert_eq!(end, None);
    assert_eq!(fx.server.connections(), 0);
}

#[test]
fn socket_file_lifecycle() {
    let mut fx = Fixture::new();
    let path = fx.path();
    let mode = fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // A live socket is not taken over.
    let err = RpcServer::listen_with(&path, 0o600, Registry::new()).err();
    assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::AddrInUse));
    fx.server.poll();
    fx.server.close();
    assert!(!path.exists());
    fx.server.close();
    assert!(!fx.server.poll());

    // A stale socket file (nobody listening) is replaced.
    drop(UnixListener::bind(&path).expect("bind"));
    assert!(path.exists());
    let server = RpcServer::listen_with(&path, 0o660, Registry::new()).expect("relisten");
    drop(server);
    assert!(!path.exists());

    // A regular file is never removed.
    let file = fx.dir.path().join("file");
    fs::write(&file, b"x").expect("write");
    let err = RpcServer::listen_with(&file, 0o600, Registry::new()).err();
    assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::AlreadyExists));
    assert!(file.exists());
}

#[test]
fn notification_flood_is_throttled() {
    let mut fx = Fixture::new();
    let path = fx.path();
    let client = spawn(move || {
        let mut c = Client::connect(&path);
        let note = br#"{"jsonrpc":"2.0","method":"hold"}"#;
        let flood: Vec<u8> = note
            .iter()
            .copied()
            .cycle()
            .take(note.len() * 200)
            .collect();
        c.send(&flood);
        c.call(1, "echo", Some(json!({"after": "flood"})))
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut max_held = 0;
    while !client.is_finished() {
        fx.server.poll();
        let mut held = lock(&fx.held);
        max_held = max_held.max(held.len());
        // The server stops reading at the limit; answering lets it go on.
        if held.len() >= MAX_PENDING_PER_CONN {
            held.drain(..).for_each(|r| r.ok(json!(true)));
        }
        drop(held);
        thread::sleep(Duration::from_micros(200));
        assert!(Instant::now() < deadline, "client did not finish");
    }
    let answer = client.join().expect("client");
    assert_eq!(answer["result"], json!({"after": "flood"}));
    assert_eq!(max_held, MAX_PENDING_PER_CONN);
}
