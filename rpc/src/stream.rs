//! Framing: turns a byte stream of concatenated JSON values (no delimiter, any whitespace,
//! arbitrary splits) into values. Pure, no I/O.
//!
//! A small scanner that knows strings and escapes finds where a value ends; only then is the
//! value parsed, once. Every byte is scanned once however the input is split, so a large request
//! arriving a byte at a time costs linear time.

use serde_json::Value;

/// Largest single request accepted; a bigger one is refused and the connection dropped.
pub const MAX_REQUEST_BYTES: usize = 32 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("invalid JSON: {0}")]
    Parse(String),
    #[error("request larger than {0} bytes")]
    TooLarge(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// Between values: skipping whitespace.
    Idle,
    /// Inside an object or array.
    Container {
        depth: usize,
        in_string: bool,
        escaped: bool,
    },
    /// A top-level string.
    Str { escaped: bool },
    /// A top-level number or literal; it ends at the next delimiter.
    Scalar,
}

/// Incremental decoder: `push` bytes, then take values with `next` until it returns `None`.
#[derive(Debug)]
pub struct RequestDecoder {
    buf: Vec<u8>,
    /// First byte not yet handed out (start of the value being scanned).
    start: usize,
    /// Next byte to scan.
    pos: usize,
    scan: Scan,
    limit: usize,
    failed: bool,
}

impl Default for RequestDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestDecoder {
    pub fn new() -> Self {
        Self::with_limit(MAX_REQUEST_BYTES)
    }

    pub fn with_limit(limit: usize) -> Self {
        RequestDecoder {
            buf: Vec::new(),
            start: 0,
            pos: 0,
            scan: Scan::Idle,
            limit,
            failed: false,
        }
    }

    /// Appends bytes. Callers bound what they push between `next` calls (the server pushes one
    /// bounded read at a time), so the buffer stays within about `limit` plus one push.
    pub fn push(&mut self, data: &[u8]) {
        if self.failed {
            return;
        }
        self.compact();
        self.buf.extend_from_slice(data);
    }

    /// Bytes held that have not been returned as values (a partial value, whitespace).
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// True while a value has started but not ended.
    pub fn in_value(&self) -> bool {
        self.scan != Scan::Idle
    }

    fn fail(&mut self, e: DecodeError) -> Result<Value, DecodeError> {
        self.failed = true;
        self.buf = Vec::new();
        self.start = 0;
        self.pos = 0;
        Err(e)
    }

    /// Scans new bytes; returns the end offset (exclusive) of a complete value if one is found.
    fn scan_to_end(&mut self) -> Result<Option<usize>, DecodeError> {
        while self.pos < self.buf.len() {
            let b = self.buf[self.pos];
            self.pos += 1;
            match &mut self.scan {
                Scan::Idle => match b {
                    b' ' | b'\t' | b'\n' | b'\r' => self.start = self.pos,
                    b'{' | b'[' => {
                        self.scan = Scan::Container {
                            depth: 1,
                            in_string: false,
                            escaped: false,
                        }
                    }
                    b'"' => self.scan = Scan::Str { escaped: false },
                    _ => self.scan = Scan::Scalar,
                },
                Scan::Container {
                    depth,
                    in_string,
                    escaped,
                } => {
                    if *in_string {
                        if *escaped {
                            *escaped = false;
                        } else if b == b'\\' {
                            *escaped = true;
                        } else if b == b'"' {
                            *in_string = false;
                        }
                    } else {
                        match b {
                            b'"' => *in_string = true,
                            b'{' | b'[' => *depth += 1,
                            b'}' | b']' => {
                                *depth -= 1;
                                if *depth == 0 {
                                    return Ok(Some(self.pos));
                                }
                            }
                            _ => {}
                        }
                    }
                }
                Scan::Str { escaped } => {
                    if *escaped {
                        *escaped = false;
                    } else if b == b'\\' {
                        *escaped = true;
                    } else if b == b'"' {
                        return Ok(Some(self.pos));
                    }
                }
                Scan::Scalar => {
                    if matches!(
                        b,
                        b' ' | b'\t'
                            | b'\n'
                            | b'\r'
                            | b'{'
                            | b'}'
                            | b'['
                            | b']'
                            | b'"'
                            | b','
                            | b':'
                    ) {
                        // The delimiter belongs to what follows.
                        self.pos -= 1;
                        return Ok(Some(self.pos));
                    }
                }
            }
            if self.pos - self.start > self.limit {
                return Err(DecodeError::TooLarge(self.limit));
            }
        }
        Ok(None)
    }

    /// Drops consumed bytes, amortised so that many small values stay linear.
    fn compact(&mut self) {
        if self.start == self.buf.len() {
            self.buf.clear();
            // A past huge request should not pin its memory for the connection's life.
            if self.buf.capacity() > 1 << 20 {
                self.buf.shrink_to(64 << 10);
            }
        } else if self.start >= 4096 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
        } else {
            return;
        }
        self.pos -= self.start;
        self.start = 0;
    }
}

/// Yields the next complete value, `None` when more bytes are needed. After an error the
/// decoder is dead: the error is yielded once, then `None` forever (JSON has no resync point).
impl Iterator for RequestDecoder {
    type Item = Result<Value, DecodeError>;

    fn next(&mut self) -> Option<Result<Value, DecodeError>> {
        if self.failed {
            return None;
        }
        let end = match self.scan_to_end() {
            Ok(Some(end)) => end,
            Ok(None) => return None,
            Err(e) => return Some(self.fail(e)),
        };
        let parsed = serde_json::from_slice::<Value>(&self.buf[self.start..end]);
        self.start = end;
        self.scan = Scan::Idle;
        match parsed {
            Ok(v) => Some(Ok(v)),
            Err(e) => Some(self.fail(DecodeError::Parse(e.to_string()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;
    use std::time::{Duration, Instant};

    fn drain(d: &mut RequestDecoder) -> Vec<Result<Value, DecodeError>> {
        d.by_ref().collect()
    }

    fn decode_split(data: &[u8], cuts: &[usize]) -> Vec<Result<Value, DecodeError>> {
        let mut d = RequestDecoder::new();
        let mut out = Vec::new();
        let mut at = 0;
        for &c in cuts.iter().chain(std::iter::once(&data.len())) {
            let c = c.clamp(at, data.len());
            d.push(&data[at..c]);
            out.extend(drain(&mut d));
            at = c;
        }
        out
    }

    #[test]
    fn concatenated_values_without_delimiters() {
        let mut d = RequestDecoder::new();
        d.push(b"{\"a\":\"}{\\\"\"}[1,{\"b\":[]}]  \n\"s\\\"}\"12 true{");
        let got: Vec<_> = drain(&mut d).into_iter().map(Result::unwrap).collect();
        let expected = [
            json!({"a": "}{\""}),
            json!([1, {"b": []}]),
            json!("s\"}"),
            json!(12),
        ];
        assert_eq!(got[..4], expected);
        // `true` ends at the `{`, which then starts an incomplete object.
        assert_eq!(got[4..], [json!(true)]);
        d.push(b"}nul");
        assert_eq!(d.next(), Some(Ok(json!({}))));
        // A trailing literal may still grow, so it waits for a delimiter.
        assert_eq!(d.next(), None);
        d.push(b"l ");
        assert_eq!(d.next(), Some(Ok(Value::Null)));
        assert_eq!(d.next(), None);
        assert!(!d.in_value());
        d.push(b" [");
        assert_eq!(d.next(), None);
        assert!(d.in_value());
    }

    #[test]
    fn invalid_json_kills_the_stream() {
        let mut d = RequestDecoder::new();
        d.push(b"{\"a\":1,}{\"b\":2}");
        assert!(matches!(d.next(), Some(Err(DecodeError::Parse(_)))));
        assert_eq!(d.next(), None);
        d.push(b"{}");
        assert_eq!(d.next(), None);
        let mut d = RequestDecoder::new();
        d.push(b"}");
        d.push(b" ");
        assert!(matches!(d.next(), Some(Err(DecodeError::Parse(_)))));
        let mut d = RequestDecoder::new();
        d.push(b"{\"a\":\"\xff\"}");
        assert!(matches!(d.next(), Some(Err(DecodeError::Parse(_)))));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let mut d = RequestDecoder::new();
        let deep = "[".repeat(100_000) + &"]".repeat(100_000);
        d.push(deep.as_bytes());
        assert!(matches!(d.next(), Some(Err(DecodeError::Parse(_)))));
    }

    #[test]
    fn oversized_value_is_refused() {
        let mut d = RequestDecoder::with_limit(1000);
        d.push(b"{\"a\":\"");
        for _ in 0..10 {
            d.push(&[b'x'; 100]);
            if let Some(r) = d.next() {
                assert_eq!(r, Err(DecodeError::TooLarge(1000)));
                return;
            }
        }
        panic!("no error for an oversized request");
    }

    #[test]
    fn one_mib_fed_one_byte_at_a_time_is_fast() {
        let big = "x".repeat(1 << 20);
        let req = serde_json::to_vec_pretty(&json!({
            "jsonrpc": "2.0", "method": "m", "id": 1, "params": {"data": big}
        }))
        .unwrap_or_default();
        let started = Instant::now();
        let mut d = RequestDecoder::new();
        let mut got = Vec::new();
        for b in &req {
            d.push(std::slice::from_ref(b));
            got.extend(drain(&mut d));
        }
        assert_eq!(got.len(), 1);
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn many_small_values_in_one_push() {
        let one = br#"{"jsonrpc":"2.0","method":"m","id":1}"#;
        let data: Vec<u8> = one
            .iter()
            .copied()
            .cycle()
            .take(one.len() * 20_000)
            .collect();
        let mut d = RequestDecoder::new();
        d.push(&data);
        assert_eq!(drain(&mut d).len(), 20_000);
    }

    fn request() -> impl Strategy<Value = Value> {
        let scalar = prop_oneof![
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            ".*".prop_map(Value::from),
            Just(Value::Null),
        ];
        let params = scalar.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map("[a-z_\"\\\\{}]{0,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        });
        ("[a-z_]{1,12}", params, any::<u32>()).prop_map(
            |(m, p, id)| json!({"jsonrpc": "2.0", "method": m, "params": {"p": p}, "id": id}),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_bytes_never_panic(
            data in prop::collection::vec(any::<u8>(), 0..512),
            cuts in prop::collection::vec(0usize..512, 0..8),
        ) {
            let mut cuts = cuts;
            cuts.sort_unstable();
            let out = decode_split(&data, &cuts);
            // At most one error, and it is the last item.
            let errs = out.iter().filter(|r| r.is_err()).count();
            prop_assert!(errs <= 1);
            if errs == 1 {
                prop_assert!(out.last().is_some_and(|r| r.is_err()));
            }
        }

        #[test]
        fn split_pretty_requests_decode_identically(
            reqs in prop::collection::vec(request(), 1..4),
            cuts in prop::collection::vec(0usize..4096, 0..16),
        ) {
            let mut data = Vec::new();
            for r in &reqs {
                data.extend(serde_json::to_vec_pretty(r).unwrap_or_default());
            }
            let mut cuts = cuts;
            cuts.sort_unstable();
            let whole = decode_split(&data, &[]);
            let split = decode_split(&data, &cuts);
            let expected: Vec<_> = reqs.into_iter().map(Ok).collect();
            prop_assert_eq!(&whole, &expected);
            prop_assert_eq!(&split, &expected);
        }
    }
}
