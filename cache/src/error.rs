//! The cache's errors, each with the errno an RPC answer carries (as `BdevError` is for the bdev
//! layer). The on-media format, the key log, replay and the index keep their own error types
//! (each with its errno); this one wraps them and adds what the cache itself refuses.

use crate::format::FormatError;
use crate::index::IndexError;
use crate::log::LogError;
use crate::replay::ReplayError;
use bdev::BdevError;
use pmem::PmemError;
use rpc::RpcError;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A parameter out of range; the message names it (EINVAL).
    #[error("{0}")]
    InvalidParam(String),
    /// The cache on pmem was formatted for another origin (EINVAL).
    #[error("{0}")]
    OriginMismatch(String),
    /// Formatting would lose dirty data held for another origin (EBUSY).
    #[error("{0}")]
    DirtyData(String),
    /// No lane for a thread: all in use, or no segment for a new one's key log (EBUSY).
    #[error("{0}")]
    NoLane(String),
    /// Written by a newer pcache with features this one can only read (EROFS).
    #[error("the cache was written by a newer pcache (read-only features)")]
    ReadOnly,
    /// A buffer could not be allocated (ENOMEM).
    #[error("no memory for {0}")]
    NoMemory(&'static str),
    /// Not called on an SPDK-style thread (ENXIO).
    #[error("{0} must run on an SPDK-style thread")]
    NoThread(&'static str),
    /// A lane's key log cannot be read where it must be readable, or dirty data cannot be
    /// written back (its segment reclaimed, its crc failing) (EIO).
    #[error("{0}")]
    Damaged(String),
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("pmem: {0}")]
    Pmem(#[from] PmemError),
    #[error(transparent)]
    KeyLog(#[from] LogError),
    #[error(transparent)]
    Replay(#[from] ReplayError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Bdev(#[from] BdevError),
}

impl CacheError {
    /// Positive errno for SPDK-style answers.
    pub fn errno(&self) -> i32 {
        match self {
            Self::InvalidParam(_) | Self::OriginMismatch(_) => libc::EINVAL,
            Self::DirtyData(_) | Self::NoLane(_) => libc::EBUSY,
            Self::ReadOnly => libc::EROFS,
            Self::NoMemory(_) => libc::ENOMEM,
            Self::NoThread(_) => libc::ENXIO,
            Self::Damaged(_) => libc::EIO,
            Self::Format(e) => e.errno(),
            Self::Pmem(e) => e.errno(),
            Self::KeyLog(e) => e.errno(),
            Self::Replay(e) => e.errno(),
            Self::Index(e) => e.errno(),
            Self::Bdev(e) => e.errno(),
        }
    }
}

impl From<CacheError> for BdevError {
    fn from(e: CacheError) -> Self {
        match e {
            CacheError::Bdev(b) => b,
            e => BdevError::io(e.errno(), e.to_string()),
        }
    }
}

/// SPDK's shape: -errno and what was wrong (existence errors keep the strerror text, as the
/// bdev modules answer them).
impl From<CacheError> for RpcError {
    fn from(e: CacheError) -> Self {
        match e {
            CacheError::Bdev(b @ (BdevError::Exists(_) | BdevError::NoSuchDevice(_))) => {
                RpcError::errno(b.errno())
            }
            e => RpcError::errno_msg(e.errno(), e.to_string()),
        }
    }
}
