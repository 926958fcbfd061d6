//! The server under abuse: garbage, partial and oversized requests, clients that vanish mid-way,
//! many clients at once, and the socket file's life. After each, SPDK's client is still served.

use serde_json::{Value, json};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};
use tests::{RawClient, Target, error_of, require_spdk_rpc, tempdir};

/// SPDK's client gets a good answer.
fn assert_served(t: &Target) {
    let out = t.cli().run(&["spdk_get_version"]);
    assert!(
        out.ok(),
        "target no longer serves spdk-rpc: {out:?}\n{}",
        t.log_text()
    );
}

fn resident_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn garbage_and_partial_input_then_a_good_client() {
    require_spdk_rpc!();
    let t = Target::start();
    // A request left half-sent stays pending without blocking anyone.
    let mut partial = t.raw();
    partial
        .send(b"{\n  \"jsonrpc\": \"2.0\",\n  \"method\": \"spdk_get")
        .expect("send");
    for garbage in [
        &b"this is not json"[..],
        b"}",
        b"{\"a\":1,}",
        b"\xff\xfe\x00garbage",
        b"{\"jsonrpc\":\"2.0\",\"method\":\"x\",\"id\":1}]]]",
        b"nul",
    ] {
        let mut c = t.raw();
        c.send(garbage).expect("send");
        // A bare literal needs a delimiter to end, and a stray `]` is seen only after the
        // request before it, which is answered first.
        c.send(b" ").expect("send");
        let mut last = c.recv();
        if last["id"] == 1 {
            last = c.recv();
        }
        assert_eq!(error_of(&last).0, -32700, "{garbage:?}: {last}");
        assert!(
            c.closed_within(Duration::from_secs(5)),
            "{garbage:?}: not closed"
        );
    }
    // A pretty-printed request fed one byte at a time.
    let mut slow = t.raw();
    let req = serde_json::to_string_pretty(
        &json!({"jsonrpc": "2.0", "method": "bdev_get_bdevs", "id": 42}),
    )
    .unwrap_or_default();
    for b in req.as_bytes() {
        slow.send(std::slice::from_ref(b)).expect("send");
    }
    assert_eq!(
        slow.recv(),
        json!({"jsonrpc": "2.0", "id": 42, "result": []})
    );
    assert_served(&t);
    // The half-sent request completes and is answered.
    partial.send(b"_version\",\n  \"id\": 1\n}").expect("send");
    assert_eq!(partial.recv()["result"]["fields"]["major"], 0);
}

#[test]
fn a_client_that_disconnects_mid_request() {
    require_spdk_rpc!();
    let t = Target::start();
    for _ in 0..20 {
        // Gone in the middle of a request.
        let mut c = t.raw();
        c.send(b"{\"jsonrpc\":\"2.0\",\"method\":\"bdev_malloc_cre")
            .expect("send");
        drop(c);
        // Gone before reading its answers (the server writes to a closed socket).
        let mut c = t.raw();
        for _ in 0..8 {
            c.send_request("bdev_get_bdevs", None);
        }
        let _ = c.stream.shutdown(std::net::Shutdown::Both);
        drop(c);
    }
    // Half a request and a half-close: the server answers nothing and closes.
    let mut c = t.raw();
    c.send(b"{\"jsonrpc\":\"2.0\",\"method\":\"spdk_get_vers")
        .expect("send");
    let _ = c.stream.shutdown(std::net::Shutdown::Write);
    assert!(c.closed_within(Duration::from_secs(5)));
    assert_served(&t);
    assert!(t.raw().call("rpc_get_methods", None)["result"].is_array());
}

#[test]
fn thirty_two_clients_at_once() {
    require_spdk_rpc!();
    let t = Target::start();
    // 32 raw connections open together, each pipelining requests: answers in request order.
    let mut conns: Vec<RawClient> = (0..32).map(|_| t.raw()).collect();
    for (i, c) in conns.iter_mut().enumerate() {
        let name = format!("M{i}");
        c.send_request(
            "bdev_malloc_create",
            Some(json!({"name": name, "num_blocks": 64, "block_size": 512})),
        );
        c.send_request("bdev_get_bdevs", Some(json!({"name": name})));
        c.send_request("spdk_get_version", None);
    }
    for (i, c) in conns.iter_mut().enumerate() {
        let name = format!("M{i}");
        let (a, b, v) = (c.recv(), c.recv(), c.recv());
        assert_eq!(
            (a["id"].clone(), a["result"].clone()),
            (json!(1), json!(name))
        );
        assert_eq!(
            (b["id"].clone(), b["result"][0]["name"].clone()),
            (json!(2), json!(name))
        );
        assert_eq!(v["id"], 3);
    }
    // SPDK's clients in parallel too (Python start-up dominates; a few are enough).
    let sock = t.sock.clone();
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let cli = tests::SpdkRpc::new(&sock);
            std::thread::spawn(move || cli.run(&["bdev_get_bdevs", "-b", &format!("M{i}")]))
        })
        .collect();
    for (i, c) in clients.into_iter().enumerate() {
        let out = c.join().expect("client thread");
        assert_eq!(out.json()[0]["name"], format!("M{i}"), "{out:?}");
    }
    assert_eq!(
        t.cli().json(&["bdev_get_bdevs"]).as_array().map(Vec::len),
        Some(32)
    );
}

#[test]
fn a_request_over_the_size_limit_is_refused() {
    require_spdk_rpc!();
    let t = Target::start();
    // Just under a MiB is fine (the params are then refused on their merits).
    let mut c = t.raw();
    let big = "x".repeat(1 << 20);
    let a = c.call("bdev_get_bdevs", Some(json!({"name": big})));
    assert_eq!(error_of(&a).0, -19);

    // Over 32 MiB: refused with a parse error and dropped, never buffered without bound.
    let mut c = UnixStream::connect(&t.sock).expect("connect");
    c.set_write_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let head = br#"{"jsonrpc":"2.0","method":"bdev_get_bdevs","id":1,"params":{"name":""#;
    c.write_all(head).expect("send");
    let chunk = vec![b'x'; 1 << 20];
    let mut sent = head.len();
    let start = Instant::now();
    while sent < 40 << 20 {
        // The server stops reading once it has refused the request.
        if c.write_all(&chunk).is_err() {
            break;
        }
        sent += chunk.len();
    }
    assert!(sent < 40 << 20 || start.elapsed() < Duration::from_secs(30));
    let mut raw = RawClient::from_stream(c);
    match raw.try_recv(Duration::from_secs(10)) {
        Ok(a) => assert_eq!(error_of(&a), (-32700, "Parse error".into())),
        // The connection may be reset before the answer is read.
        Err(e) => assert!(e.contains("closed") || e.contains("reset"), "{e}"),
    }
    assert!(raw.closed_within(Duration::from_secs(10)));
    assert!(
        resident_kib(t.pid()) < 256 << 10,
        "target holds {} KiB",
        resident_kib(t.pid())
    );
    assert_served(&t);
}

#[test]
fn a_flood_of_malformed_requests_then_a_good_client() {
    require_spdk_rpc!();
    let t = Target::start();
    let bad: [&[u8]; 8] = [
        b"{{{{",
        b"[1,2",
        b"\"unterminated",
        b"{\"jsonrpc\":\"2.0\",\"method\":}",
        b"\x00\x01\x02\x03",
        b"tru e",
        b"{\"a\":\"\\uZZZZ\"}",
        b"-",
    ];
    // Many connections of garbage, all sent before any is read; every other one half-closes
    // (an unfinished value then ends the connection, a complete bad one fails it anyway).
    let mut conns = Vec::new();
    for i in 0..200 {
        let mut c = t.raw();
        let _ = c.send(bad[i % bad.len()]);
        let _ = c.send(b" ");
        if i % 2 == 0 || i % bad.len() < 3 {
            let _ = c.stream.shutdown(std::net::Shutdown::Write);
        }
        conns.push(c);
    }
    for c in &mut conns {
        assert!(c.closed_within(Duration::from_secs(10)));
    }
    // One connection pipelining thousands of invalid requests: each answered, in order.
    let mut c = t.raw();
    let mut burst = Vec::new();
    for i in 0..3000 {
        burst.extend_from_slice(format!(r#"{{"jsonrpc":"2.0","id":{i}}}"#).as_bytes());
    }
    let writer = {
        let mut s = c.stream.try_clone().expect("clone");
        std::thread::spawn(move || s.write_all(&burst))
    };
    for i in 0..3000 {
        let a = c.recv();
        assert_eq!((a["id"].clone(), error_of(&a).0), (json!(i), -32600));
    }
    writer.join().expect("writer").expect("burst sent");
    // Deep nesting is a parse error, not a crash.
    let mut deep = t.raw();
    let _ = deep.send(&[b'['; 100_000]);
    let _ = deep.send(&[b']'; 100_000]);
    assert_eq!(error_of(&deep.recv()).0, -32700);
    assert_served(&t);
    let v: Value = t.cli().json(&["spdk_get_version"]);
    assert!(v["version"].is_string());
}

#[test]
fn stale_socket_replaced_live_socket_refused() {
    require_spdk_rpc!();
    let dir = tempdir();
    let sock = dir.path().join("t.sock");
    // A socket file nobody listens on, as a crashed target leaves it.
    drop(UnixListener::bind(&sock).expect("bind"));
    assert!(sock.exists());
    let t = Target::start_in(dir.path(), "t", &[]);
    assert_served(&t);
    let mode = std::fs::metadata(&sock)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0);
    assert_eq!(mode, 0o600, "default socket mode");

    // A second target on the live socket refuses to start and says why.
    let mut second = Target::spawn_at(&sock, &dir.path().join("second.log"), &[]);
    assert_ne!(second.wait_exit(), 0);
    let log = second.log_text();
    assert!(log.contains("another process is listening on"), "{log}");
    assert!(sock.exists());
    assert_served(&t);
    drop(t);

    // Something that is not a socket is never removed.
    let file = dir.path().join("f.sock");
    std::fs::write(&file, "precious").expect("write");
    let mut third = Target::spawn_at(&file, &dir.path().join("third.log"), &[]);
    assert_ne!(third.wait_exit(), 0);
    assert_eq!(
        std::fs::read_to_string(&file).unwrap_or_default(),
        "precious"
    );
    assert!(
        third.log_text().contains("is not a socket"),
        "{}",
        third.log_text()
    );

    // --rpc-mode widens the permissions.
    let wide = Target::start_in(dir.path(), "w", &["--rpc-mode", "660"]);
    let mode = std::fs::metadata(&wide.sock)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0);
    assert_eq!(mode, 0o660);
}
