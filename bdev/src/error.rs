//! Errors of the block-device layer, each with the errno SPDK would report.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BdevError {
    #[error("bdev {0} does not exist")]
    NoSuchDevice(String),
    #[error("bdev name {0} already exists")]
    Exists(String),
    #[error("invalid parameter: {0}")]
    InvalidParam(String),
    #[error("out of I/O resources, retry when one frees")]
    NoMemory,
    #[error("bdev {bdev} is already claimed by module {module}")]
    Claimed { bdev: String, module: String },
    #[error("descriptor is read-only")]
    ReadOnly,
    #[error("I/O type {0} not supported by this bdev")]
    NotSupported(&'static str),
    #[error("I/O beyond the end of the bdev")]
    OutOfRange,
    #[error("bdev {0} is being removed")]
    Removing(String),
    #[error("not called on a reactor thread")]
    NoThread,
    #[error("{msg}")]
    Io { errno: i32, msg: String },
}

impl BdevError {
    pub fn errno(&self) -> i32 {
        match self {
            BdevError::NoSuchDevice(_) | BdevError::Removing(_) => libc::ENODEV,
            BdevError::Exists(_) => libc::EEXIST,
            BdevError::InvalidParam(_) | BdevError::OutOfRange => libc::EINVAL,
            BdevError::NoMemory => libc::ENOMEM,
            BdevError::Claimed { .. } | BdevError::ReadOnly => libc::EPERM,
            BdevError::NotSupported(_) => libc::ENOTSUP,
            BdevError::NoThread => libc::ENXIO,
            BdevError::Io { errno, .. } => *errno,
        }
    }

    pub fn io(errno: i32, msg: impl Into<String>) -> BdevError {
        BdevError::Io {
            errno,
            msg: msg.into(),
        }
    }

    pub fn invalid(msg: impl Into<String>) -> BdevError {
        BdevError::InvalidParam(msg.into())
    }
}
