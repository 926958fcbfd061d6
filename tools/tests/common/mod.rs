//! Helpers shared by the tools' integration tests: a minimal JSON-RPC client for a bdevperf or
//! pcache_tgt socket, and readers for bdevperf's JSON results.
// Each test file uses the helpers it needs.
#![allow(dead_code)]

use serde_json::{Value, json};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// A run or a start that takes longer than this is a hang, not a slow machine.
pub const DEADLINE: Duration = Duration::from_secs(90);

/// A minimal SPDK JSON-RPC client: one request, one answer.
pub fn rpc_call(sock: &Path, method: &str, params: Value) -> Value {
    let mut s = UnixStream::connect(sock)
        .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", sock.display()));
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let req = json!({"jsonrpc": "2.0", "method": method, "id": 1, "params": params});
    s.write_all(req.to_string().as_bytes()).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "{method}: connection closed before the answer");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(Ok(v)) = serde_json::Deserializer::from_slice(&buf)
            .into_iter::<Value>()
            .next()
        {
            return v;
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
