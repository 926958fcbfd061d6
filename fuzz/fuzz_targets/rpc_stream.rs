//! The RPC server's input path on arbitrary bytes: the stream decoder (framing) under arbitrary
//! splits, then the JSON-RPC request parser, typed parameter decoding and answer encoding.
//!
//! Checked: nothing panics; a split stream decodes exactly as the whole one; at most one error,
//! and nothing after it; every answer is ASCII JSON that reads back as what was encoded.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rpc::wire::{Id, Message, encode_answer, parse_message};
use rpc::{DecodeError, RequestDecoder, decode_params};
use serde::Deserialize;
use serde_json::Value;

/// A parameter struct shaped like the handlers' (required, optional, nested, enum).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Probe {
    name: String,
    #[serde(default)]
    num_blocks: Option<u64>,
    #[serde(default)]
    timeout: Option<f64>,
    #[serde(default)]
    mode: Option<Mode>,
    #[serde(default)]
    names: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
enum Mode {
    Auto,
    Emulated,
}

/// Decodes `data` pushed in pieces whose sizes come from `cuts`, with a small request limit so
/// that oversized requests are reached too.
fn decode(data: &[u8], cuts: &[u8], limit: usize) -> Vec<Result<Value, DecodeError>> {
    let mut d = RequestDecoder::with_limit(limit);
    let mut out = Vec::new();
    let mut at = 0;
    let mut sizes = cuts.iter().map(|&c| usize::from(c) + 1).cycle();
    while at < data.len() {
        let n = if cuts.is_empty() {
            data.len() - at
        } else {
            sizes.next().unwrap_or(1).min(data.len() - at)
        };
        d.push(&data[at..at + n]);
        at += n;
        out.extend(d.by_ref());
    }
    out
}

fn has_float(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.is_f64(),
        Value::Array(a) => a.iter().any(has_float),
        Value::Object(o) => o.values().any(has_float),
        _ => false,
    }
}

fn check_answer(id: &Id, v: &Value) {
    let a = encode_answer(id, &Ok(v.clone()));
    assert!(a.is_ascii(), "non-ASCII answer: {a}");
    let back: Value = serde_json::from_str(&a).expect("answer is not JSON");
    // serde_json's default float parsing may be off in the last place (no float_roundtrip), so
    // only values without floats must read back exactly.
    if !has_float(v) {
        assert_eq!(&back["result"], v);
    }
}

fuzz_target!(|input: &[u8]| {
    // Layout: [limit selector][n cut sizes][n][stream...]
    let Some((&sel, rest)) = input.split_first() else {
        return;
    };
    let Some((&n, rest)) = rest.split_first() else {
        return;
    };
    let n = usize::from(n % 16).min(rest.len());
    let (cuts, data) = rest.split_at(n);
    let limit = 64 + usize::from(sel) * 64;

    let whole = decode(data, &[], limit);
    let split = decode(data, cuts, limit);
    assert_eq!(whole, split, "splitting changed the decoded stream");
    let errors = whole.iter().filter(|r| r.is_err()).count();
    assert!(errors <= 1);
    if errors == 1 {
        assert!(
            whole.last().is_some_and(Result::is_err),
            "values after an error"
        );
    }

    for v in whole.into_iter().flatten() {
        check_answer(&Id::Str("\u{fc}".into()), &v);
        let requests = match parse_message(v) {
            Message::Single(r) => vec![r],
            Message::Batch(b) => b,
        };
        for r in requests {
            match r {
                Ok(req) => {
                    if let Err(e) = decode_params::<Probe>(req.params.clone()) {
                        assert_eq!(e.code(), -32602);
                    }
                    let id = req.id.unwrap_or(Id::Null);
                    check_answer(&id, &Value::String(req.method));
                }
                Err(id) => check_answer(&id, &Value::Null),
            }
        }
    }
});
