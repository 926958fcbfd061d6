//! The target's errors. SPDK's nvmf RPCs answer bad or unknown parameters with JSON-RPC's
//! "invalid params" (-32602) and a message; the rest carry an errno.

use bdev::BdevError;
use rpc::RpcError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// A parameter out of range or malformed; the message names it.
    #[error("{0}")]
    Invalid(String),
    /// No such subsystem, namespace, host or listener.
    #[error("{0}")]
    NotFound(String),
    /// It exists already (EEXIST).
    #[error("{0}")]
    Exists(String),
    /// In use or full (EBUSY).
    #[error("{0}")]
    Busy(String),
    /// The socket layer refused (its errno).
    #[error("{msg}")]
    Io { errno: i32, msg: String },
    #[error(transparent)]
    Bdev(#[from] BdevError),
}

impl TargetError {
    pub fn invalid(msg: impl Into<String>) -> TargetError {
        TargetError::Invalid(msg.into())
    }

    pub fn not_found(msg: impl Into<String>) -> TargetError {
        TargetError::NotFound(msg.into())
    }

    pub fn errno(&self) -> i32 {
        match self {
            TargetError::Invalid(_) => libc::EINVAL,
            TargetError::NotFound(_) => libc::ENOENT,
            TargetError::Exists(_) => libc::EEXIST,
            TargetError::Busy(_) => libc::EBUSY,
            TargetError::Io { errno, .. } => *errno,
            TargetError::Bdev(e) => e.errno(),
        }
    }
}

impl From<TargetError> for RpcError {
    fn from(e: TargetError) -> RpcError {
        match e {
            TargetError::Invalid(m) | TargetError::NotFound(m) => RpcError::InvalidParams(m),
            e => RpcError::errno_msg(e.errno(), e.to_string()),
        }
    }
}
