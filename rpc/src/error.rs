//! The one error type of the RPC layer, shaped like SPDK's JSON-RPC errors.

use serde_json::{Value, json};

/// What a runtime-only method answers while the framework is still starting (SPDK's wording).
pub const NOT_INITIALIZED_MSG: &str =
    "Method may only be called after framework is initialized using framework_start_init RPC.";

/// What a startup-only method answers once the framework runs (SPDK's wording).
pub const ALREADY_INITIALIZED_MSG: &str = "Method may only be called before framework is \
     initialized. Use --wait-for-rpc command line parameter and then issue this RPC before the \
     framework_start_init RPC.";

/// A JSON-RPC error: the standard codes, SPDK's invalid-state code -1, or a negative errno.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    #[error("Parse error")]
    Parse,
    #[error("Invalid request")]
    InvalidRequest,
    #[error("Method not found")]
    MethodNotFound,
    /// The message names the offending field, e.g. "missing field `name`".
    #[error("{0}")]
    InvalidParams(String),
    #[error("{0}")]
    Internal(String),
    /// The method exists but may not be called in the current application state.
    #[error("{0}")]
    InvalidState(String),
    /// `errno` is positive (EEXIST = 17); the wire code is its negation.
    #[error("{}", errno_message(*errno, message.as_deref()))]
    Errno { errno: i32, message: Option<String> },
}

impl RpcError {
    /// `-errno` with the strerror text, e.g. `errno(libc::EEXIST)` → -17 "File exists".
    /// A negative argument is taken as already negated.
    pub fn errno(errno: i32) -> Self {
        RpcError::Errno {
            errno: errno.saturating_abs(),
            message: None,
        }
    }

    /// `-errno` with an explicit message instead of the strerror text.
    pub fn errno_msg(errno: i32, msg: impl Into<String>) -> Self {
        RpcError::Errno {
            errno: errno.saturating_abs(),
            message: Some(msg.into()),
        }
    }

    pub fn invalid_params(msg: impl Into<String>) -> Self {
        RpcError::InvalidParams(msg.into())
    }

    pub fn internal(msg: impl Into<String>) -> Self {
        RpcError::Internal(msg.into())
    }

    /// The wire code.
    pub fn code(&self) -> i32 {
        match self {
            RpcError::Parse => -32700,
            RpcError::InvalidRequest => -32600,
            RpcError::MethodNotFound => -32601,
            RpcError::InvalidParams(_) => -32602,
            RpcError::Internal(_) => -32603,
            RpcError::InvalidState(_) => -1,
            RpcError::Errno { errno, .. } => -errno.saturating_abs(),
        }
    }

    /// The wire message.
    pub fn message(&self) -> String {
        self.to_string()
    }

    /// `{"code":..,"message":..}`, the `error` member of an answer.
    pub fn to_json(&self) -> Value {
        json!({ "code": self.code(), "message": self.message() })
    }
}

fn errno_message(errno: i32, message: Option<&str>) -> String {
    match message {
        Some(m) => m.to_owned(),
        None => strerror(errno),
    }
}

/// The C library's text for `errno` (sign ignored), "Unknown errno" when it has none.
pub fn strerror(errno: i32) -> String {
    nix::errno::Errno::from_raw(errno.saturating_abs())
        .desc()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_messages() {
        let e = RpcError::errno(libc::EEXIST);
        assert_eq!((e.code(), e.message().as_str()), (-17, "File exists"));
        let e = RpcError::errno(-libc::ENODEV);
        assert_eq!((e.code(), e.message().as_str()), (-19, "No such device"));
        let e = RpcError::errno_msg(libc::EINVAL, "bad size");
        assert_eq!((e.code(), e.message().as_str()), (-22, "bad size"));
        assert_eq!(RpcError::Parse.code(), -32700);
        assert_eq!(RpcError::InvalidRequest.message(), "Invalid request");
        assert_eq!(RpcError::MethodNotFound.code(), -32601);
        assert_eq!(RpcError::invalid_params("x").code(), -32602);
        assert_eq!(RpcError::internal("x").code(), -32603);
        assert_eq!(RpcError::InvalidState("x".into()).code(), -1);
        // Out-of-range values never panic.
        assert!(RpcError::errno(i32::MIN).code() < 0);
        assert!(!strerror(100_000).is_empty());
    }

    #[test]
    fn json_shape_keeps_member_order() {
        let v = RpcError::errno(libc::EEXIST).to_json();
        assert_eq!(v.to_string(), r#"{"code":-17,"message":"File exists"}"#);
    }
}
