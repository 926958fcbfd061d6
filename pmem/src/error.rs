//! The crate's one error type.

use std::io;

/// Everything that can go wrong opening or addressing persistent memory.
#[derive(Debug, thiserror::Error)]
pub enum PmemError {
    #[error("range {off}+{len} lies outside the {size}-byte pmem device")]
    OutOfRange { off: u64, len: u64, size: u64 },

    #[error(
        "{path}: existing file is {existing} bytes but a size of {requested} bytes was requested"
    )]
    SizeMismatch {
        path: String,
        existing: u64,
        requested: u64,
    },

    #[error("invalid pmem size {size}: {why}")]
    BadSize { size: u64, why: &'static str },

    #[error("{path}: not a regular file")]
    NotRegularFile { path: String },

    /// Another opener (another process, or another bdev of this one) uses the file.
    #[error("{path} is in use: {holder}")]
    Busy {
        path: String,
        holder: crate::lock::Holder,
    },

    /// A system call failed; `what` names the call and the file.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

impl PmemError {
    /// Positive errno for SPDK-style RPC answers.
    pub fn errno(&self) -> i32 {
        match self {
            Self::OutOfRange { .. }
            | Self::SizeMismatch { .. }
            | Self::BadSize { .. }
            | Self::NotRegularFile { .. } => libc::EINVAL,
            Self::Busy { .. } => libc::EBUSY,
            Self::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
        }
    }

    pub(crate) fn io(what: impl Into<String>, source: impl Into<io::Error>) -> Self {
        Self::Io {
            what: what.into(),
            source: source.into(),
        }
    }
}
