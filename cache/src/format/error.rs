//! Errors of the on-media format, each with the errno an RPC answer carries.

use pmem::PmemError;

use super::superblock::OriginId;

/// A rule of the format that a structure breaks, in words. Where the structure came from says
/// which error it is: [`FormatError::Corrupt`] when it was read from the media,
/// [`FormatError::Invalid`] when a caller handed it in (so the errno is chosen there, once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken(pub String);

impl From<&str> for Broken {
    fn from(why: &str) -> Self {
        Broken(why.to_string())
    }
}

impl From<Broken> for String {
    fn from(b: Broken) -> Self {
        b.0
    }
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `Broken(format!(..))`.
macro_rules! broken {
    ($($arg:tt)*) => {
        $crate::format::error::Broken(format!($($arg)*))
    };
}
pub(crate) use broken;

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// A parameter given by the caller is out of range (EINVAL).
    #[error("invalid {what}: {why}")]
    Invalid { what: &'static str, why: String },

    /// A buffer handed to a decoder or encoder has the wrong length (EINVAL).
    #[error("{what}: {len} bytes given, {need} expected")]
    Short {
        what: &'static str,
        len: usize,
        need: usize,
    },

    /// No superblock magic: never formatted, or a format was cut short (EINVAL).
    #[error("no pcache superblock on the device (never formatted, or a format was cut short)")]
    NotFormatted,

    /// Bytes on the media break the format: media corruption or a writer bug (EIO).
    #[error("corrupt {what}: {why}")]
    Corrupt { what: &'static str, why: String },

    /// Written by a format version this reader does not implement (ENOTSUP).
    #[error("unsupported on-media format: {why}")]
    Unsupported { why: String },

    /// The superblock asks for incompatible features this reader does not know (ENOTSUP).
    #[error("the device uses incompatible feature flags {bits:#x} that this version does not know")]
    UnknownIncompat { bits: u64 },

    /// The device was formatted for another origin (EINVAL).
    #[error(
        "origin mismatch: the cache was formatted for {on_media}, but the origin given is {given}"
    )]
    OriginMismatch { on_media: OriginId, given: OriginId },

    /// The device is too small for what was asked (ENOSPC).
    #[error("not enough space: {0}")]
    NoSpace(String),

    /// More than a structure can hold (E2BIG).
    #[error("{what} too large: {why}")]
    TooBig { what: &'static str, why: String },

    /// The pmem device refused an access.
    #[error("pmem: {0}")]
    Pmem(#[from] PmemError),
}

impl FormatError {
    /// Positive errno for SPDK-style answers.
    pub fn errno(&self) -> i32 {
        match self {
            Self::Invalid { .. }
            | Self::Short { .. }
            | Self::NotFormatted
            | Self::OriginMismatch { .. } => libc::EINVAL,
            Self::Corrupt { .. } => libc::EIO,
            Self::Unsupported { .. } | Self::UnknownIncompat { .. } => libc::ENOTSUP,
            Self::NoSpace(_) => libc::ENOSPC,
            Self::TooBig { .. } => libc::E2BIG,
            Self::Pmem(e) => e.errno(),
        }
    }

    pub(crate) fn invalid(what: &'static str, why: impl Into<String>) -> Self {
        Self::Invalid {
            what,
            why: why.into(),
        }
    }

    pub(crate) fn corrupt(what: &'static str, why: impl Into<String>) -> Self {
        Self::Corrupt {
            what,
            why: why.into(),
        }
    }

    pub(crate) fn short(what: &'static str, len: usize, need: usize) -> Self {
        Self::Short { what, len, need }
    }
}

/// Why the bytes at a log position are not the key-set expected there. At replay this is the
/// normal end of a lane's log (a torn write at a power cut looks like this), not an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KsetEnd {
    /// Fewer bytes than the header (or the key count it claims) needs.
    Truncated {
        have: usize,
        need: usize,
    },
    BadMagic,
    BadCrc {
        stored: u32,
        computed: u32,
    },
    /// Written under an earlier format of this device.
    OtherFormat {
        found: u64,
    },
    /// Written under another generation of this segment (stale).
    StaleGen {
        found: u32,
        expected: u32,
    },
    OtherLane {
        found: u32,
    },
    /// A valid key-set of this lane, but not the next one. Replay treats `found > expected`
    /// beyond the end of a log as a damaged key-set in the middle (media corruption).
    OutOfSequence {
        found: u64,
        expected: u64,
    },
}

impl std::fmt::Display for KsetEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Self::Truncated { have, need } => {
                write!(f, "{have} bytes left, a key-set here needs {need}")
            }
            Self::BadMagic => f.write_str("no key-set magic"),
            Self::BadCrc { stored, computed } => {
                write!(f, "crc {stored:#010x} stored, {computed:#010x} computed")
            }
            Self::OtherFormat { found } => write!(f, "key-set of format {found:#018x}"),
            Self::StaleGen { found, expected } => {
                write!(f, "segment generation {found}, expected {expected}")
            }
            Self::OtherLane { found } => write!(f, "key-set of lane {found}"),
            Self::OutOfSequence { found, expected } => {
                write!(f, "lane sequence {found}, expected {expected}")
            }
        }
    }
}

/// What [`super::decode_kset`] found instead of the expected key-set.
#[derive(Debug, thiserror::Error)]
pub enum KsetError {
    /// Not a valid key-set here: the normal end of a lane's log.
    #[error("end of log: {0}")]
    End(KsetEnd),
    /// Intact (crc and identity match) but breaks a rule of the format, e.g. more keys than
    /// a key-set holds: media corruption or a writer bug.
    #[error(transparent)]
    Corrupt(FormatError),
}

impl KsetError {
    pub fn errno(&self) -> i32 {
        match self {
            Self::End(_) => libc::ENODATA,
            Self::Corrupt(e) => e.errno(),
        }
    }
}
