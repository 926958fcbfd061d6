//! The initiator's errors: what failed while attaching, talking to, or detaching a remote
//! controller, each with the errno an RPC answers and a message naming the step that failed.

use crate::wire::status::Status;
use rpc::RpcError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// A bad or unsupported parameter; the message names it (EINVAL, or ENOTSUP below).
    #[error("{0}")]
    Invalid(String),
    /// A parameter SPDK accepts but this initiator does not implement (TLS, DH-HMAC-CHAP, PI).
    #[error("{0}")]
    Unsupported(String),
    /// A controller of that name exists already (EALREADY, as SPDK answers).
    #[error("{0}")]
    Exists(String),
    /// No such controller (ENODEV; SPDK's get_controllers answers EINVAL itself).
    #[error("{0}")]
    NotFound(String),
    /// The socket failed: connect refused, reset, closed... (its errno).
    #[error("{msg}")]
    Io { errno: i32, msg: String },
    /// The target broke the NVMe/TCP or NVMe-oF rules (EPROTO).
    #[error("{0}")]
    Protocol(String),
    /// A command completed with an error status.
    #[error("{what} failed: {status}")]
    Status { what: String, status: Status },
    /// The controller refused a Fabrics Connect (the NQN, the host, the queue...).
    #[error("{what} refused: {status}")]
    Refused { what: String, status: Status },
    /// A step took longer than its limit (ETIMEDOUT).
    #[error("{0}")]
    Timeout(String),
    /// The controller is being deleted or was never ready (ENXIO).
    #[error("{0}")]
    Gone(String),
}

impl HostError {
    pub fn invalid(msg: impl Into<String>) -> HostError {
        HostError::Invalid(msg.into())
    }

    pub fn protocol(msg: impl Into<String>) -> HostError {
        HostError::Protocol(msg.into())
    }

    pub fn io(e: &std::io::Error, what: impl std::fmt::Display) -> HostError {
        HostError::Io {
            errno: e.raw_os_error().unwrap_or(libc::EIO),
            msg: format!("{what}: {e}"),
        }
    }

    pub fn errno(&self) -> i32 {
        match self {
            HostError::Invalid(_) => libc::EINVAL,
            HostError::Unsupported(_) => libc::ENOTSUP,
            HostError::Exists(_) => libc::EALREADY,
            HostError::NotFound(_) => libc::ENODEV,
            HostError::Io { errno, .. } => *errno,
            HostError::Protocol(_) => libc::EPROTO,
            HostError::Status { status, .. } => match status.to_errno() {
                0 => libc::EIO,
                e => e,
            },
            // The Connect codes (command specific 80h..84h) read as what they say.
            HostError::Refused { status, .. } => match (status.sct, status.sc) {
                (1, 0x81) => libc::EBUSY,
                (1, 0x84) => libc::EACCES,
                (1, 0x80 | 0x82) => libc::EINVAL,
                (1, 0x83) => libc::EAGAIN,
                _ => match status.to_errno() {
                    0 => libc::EIO,
                    e => e,
                },
            },
            HostError::Timeout(_) => libc::ETIMEDOUT,
            HostError::Gone(_) => libc::ENXIO,
        }
    }
}

impl From<HostError> for RpcError {
    fn from(e: HostError) -> RpcError {
        RpcError::errno_msg(e.errno(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errnos_and_rpc_shape() {
        let e = HostError::Io {
            errno: libc::ECONNREFUSED,
            msg: "connect to 127.0.0.1:4420: Connection refused".into(),
        };
        let r: RpcError = e.into();
        assert_eq!(r.code(), -libc::ECONNREFUSED);
        assert_eq!(r.message(), "connect to 127.0.0.1:4420: Connection refused");
        let s = HostError::Refused {
            what: "Connect".into(),
            status: Status::CONNECT_INVALID_HOST,
        };
        assert_eq!(s.errno(), libc::EACCES);
        assert!(
            s.to_string()
                .starts_with("Connect refused: sct 0x1 sc 0x84")
        );
        let s = HostError::Refused {
            what: "Connect".into(),
            status: Status::CONNECT_INVALID_PARAMETERS,
        };
        assert_eq!(s.errno(), libc::EINVAL);
        let s = HostError::Status {
            what: "Identify".into(),
            status: Status::INVALID_FIELD,
        };
        assert_eq!(s.errno(), libc::EINVAL);
        assert_eq!(HostError::Exists("x".into()).errno(), libc::EALREADY);
        assert_eq!(HostError::Timeout("t".into()).errno(), libc::ETIMEDOUT);
    }
}
