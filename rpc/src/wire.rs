//! JSON-RPC 2.0 messages: validating decoded values into requests, and writing answers the way
//! SPDK does (compact, members `jsonrpc`, `id`, then `result`/`error`, ASCII only).

use serde_json::{Map, Number, Value};

use crate::error::RpcError;

/// A request id. Ids too weird to echo (objects, booleans...) make the request invalid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Id {
    Null,
    Num(Number),
    Str(String),
}

impl Id {
    fn write(&self, out: &mut String) {
        match self {
            Id::Null => out.push_str("null"),
            Id::Num(n) => out.push_str(&n.to_string()),
            Id::Str(s) => out.push_str(&Value::String(s.clone()).to_string()),
        }
    }
}

/// A valid request. `id: None` is a notification: it is run but never answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub method: String,
    pub params: Option<Value>,
    pub id: Option<Id>,
}

/// One top-level value from the stream. `Err(id)` is an invalid request, answered -32600 with
/// that id (`Id::Null` when none could be recovered).
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Single(Result<Request, Id>),
    Batch(Vec<Result<Request, Id>>),
}

pub fn parse_message(v: Value) -> Message {
    match v {
        Value::Object(o) => Message::Single(parse_request(o)),
        // An empty batch is a single invalid request (JSON-RPC 2.0 and SPDK agree).
        Value::Array(a) if a.is_empty() => Message::Single(Err(Id::Null)),
        Value::Array(a) => Message::Batch(
            a.into_iter()
                .map(|e| match e {
                    Value::Object(o) => parse_request(o),
                    _ => Err(Id::Null),
                })
                .collect(),
        ),
        _ => Message::Single(Err(Id::Null)),
    }
}

/// SPDK's rules: `jsonrpc` may be absent but if present is "2.0"; `method` is a string;
/// `params` is an object, an array or null (= absent); `id` is a number, string or null;
/// any other member makes the request invalid.
fn parse_request(mut o: Map<String, Value>) -> Result<Request, Id> {
    let id = match o.remove("id") {
        None => None,
        Some(Value::Null) => Some(Id::Null),
        Some(Value::Number(n)) => Some(Id::Num(n)),
        Some(Value::String(s)) => Some(Id::Str(s)),
        Some(_) => return Err(Id::Null),
    };
    let err_id = id.clone().unwrap_or(Id::Null);
    match o.remove("jsonrpc") {
        None => {}
        Some(Value::String(v)) if v == "2.0" => {}
        Some(_) => return Err(err_id),
    }
    let Some(Value::String(method)) = o.remove("method") else {
        return Err(err_id);
    };
    let params = match o.remove("params") {
        None | Some(Value::Null) => None,
        Some(p @ (Value::Object(_) | Value::Array(_))) => Some(p),
        Some(_) => return Err(err_id),
    };
    if !o.is_empty() {
        return Err(err_id);
    }
    Ok(Request { method, params, id })
}

/// One answer object, compact and ASCII-only, without a trailing newline.
pub fn encode_answer(id: &Id, result: &Result<Value, RpcError>) -> String {
    let mut out = String::from(r#"{"jsonrpc":"2.0","id":"#);
    id.write(&mut out);
    match result {
        Ok(v) => {
            out.push_str(r#","result":"#);
            out.push_str(&v.to_string());
        }
        Err(e) => {
            out.push_str(r#","error":"#);
            out.push_str(&e.to_json().to_string());
        }
    }
    out.push('}');
    ascii_only(out)
}

/// A batch answer: the answers in request order.
pub fn encode_batch(answers: &[String]) -> String {
    format!("[{}]", answers.join(","))
}

/// Escapes every non-ASCII character as `\uXXXX` (UTF-16, surrogate pairs above U+FFFF).
/// Valid for serde_json output, where non-ASCII can only occur inside strings.
pub fn ascii_only(json: String) -> String {
    if json.is_ascii() {
        return json;
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn single(v: Value) -> Result<Request, Id> {
        match parse_message(v) {
            Message::Single(r) => r,
            Message::Batch(_) => Err(Id::Str("batch".into())),
        }
    }

    #[test]
    fn validation_follows_spdk() {
        let r = single(json!({"jsonrpc": "2.0", "method": "m", "id": 1}));
        assert_eq!(
            r,
            Ok(Request {
                method: "m".into(),
                params: None,
                id: Some(Id::Num(1.into()))
            })
        );
        let r = single(json!({"method": "m", "params": null})).map(|r| (r.params, r.id));
        assert_eq!(r, Ok((None, None)));
        let r = single(json!({"method": "m", "params": [1], "id": "x"}));
        assert_eq!(r.map(|r| r.params), Ok(Some(json!([1]))));
        let bad_id = Id::Num(7.into());
        for v in [
            json!({"jsonrpc": "1.0", "method": "m", "id": 7}),
            json!({"jsonrpc": "2.0", "id": 7}),
            json!({"jsonrpc": "2.0", "method": 3, "id": 7}),
            json!({"jsonrpc": "2.0", "method": "m", "params": 1, "id": 7}),
            json!({"jsonrpc": "2.0", "method": "m", "params": "x", "id": 7}),
            json!({"jsonrpc": "2.0", "method": "m", "extra": 1, "id": 7}),
        ] {
            assert_eq!(single(v), Err(bad_id.clone()));
        }
        assert_eq!(single(json!({"method": "m", "id": {}})), Err(Id::Null));
        assert_eq!(single(json!({"method": "m", "id": true})), Err(Id::Null));
        assert_eq!(single(json!([])), Err(Id::Null));
        assert_eq!(single(json!(5)), Err(Id::Null));
        assert_eq!(single(json!("x")), Err(Id::Null));
        match parse_message(json!([{"method": "a", "id": 1}, 2])) {
            Message::Batch(b) => {
                assert!(b[0].is_ok());
                assert_eq!(b[1], Err(Id::Null));
            }
            Message::Single(_) => panic!("expected a batch"),
        }
    }

    #[test]
    fn answers_are_spdk_shaped() {
        let a = encode_answer(&Id::Num(1.into()), &Ok(json!("Malloc1")));
        assert_eq!(a, r#"{"jsonrpc":"2.0","id":1,"result":"Malloc1"}"#);
        let a = encode_answer(&Id::Str("a\"b".into()), &Err(RpcError::errno(17)));
        assert_eq!(
            a,
            r#"{"jsonrpc":"2.0","id":"a\"b","error":{"code":-17,"message":"File exists"}}"#
        );
        let a = encode_answer(&Id::Null, &Err(RpcError::Parse));
        assert_eq!(
            a,
            r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}}"#
        );
        // Result members keep the handler's order (serde_json `preserve_order`).
        let a = encode_answer(&Id::Null, &Ok(json!({"z": 1, "a": 2})));
        assert!(a.ends_with(r#""result":{"z":1,"a":2}}"#));
        assert_eq!(encode_batch(&["1".into(), "2".into()]), "[1,2]");
    }

    #[test]
    fn non_ascii_is_escaped() {
        let a = encode_answer(&Id::Str("é".into()), &Ok(json!({"ключ": "日本 😀"})));
        assert!(a.is_ascii());
        assert!(a.contains(r#""\u00e9""#));
        assert!(a.contains(r#""\u65e5\u672c \ud83d\ude00""#));
        let back: Value = serde_json::from_str(&a).unwrap_or_default();
        assert_eq!(back["result"], json!({"ключ": "日本 😀"}));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        #[test]
        fn any_value_parses_and_any_result_encodes(v in crate::registry::tests::arb_json()) {
            // Never panics; whatever it is, answers are ASCII JSON that decode back.
            let _ = parse_message(v.clone());
            let a = encode_answer(&Id::Str("ü".into()), &Ok(v.clone()));
            proptest::prop_assert!(a.is_ascii());
            let back: Value = serde_json::from_str(&a).unwrap_or_default();
            proptest::prop_assert_eq!(&back["result"], &v);
            proptest::prop_assert_eq!(&back["id"], "ü");
        }
    }
}
