//! The `Pmem` trait: the only way the cache touches persistent memory, so the
//! crash-simulating double can stand in for a real mapping.

use std::fmt;

use crate::PmemError;

/// What backs a [`Pmem`] and therefore what "durable" means for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PmemKind {
    /// DAX file mapped `MAP_SYNC`: flush + fence survives power loss.
    Dax,
    /// Plain shared mapping: survives a process crash, not a power cut.
    Emulated,
    /// Shared mapping of a file on disk: durable at [`Pmem::sync`] (msync).
    Msync,
    /// `CrashPmem`, the test double (the `crash` feature).
    CrashSim,
}

impl fmt::Display for PmemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Dax => "dax",
            Self::Emulated => "emulated",
            Self::Msync => "msync",
            Self::CrashSim => "crash-sim",
        })
    }
}

/// Byte-addressed persistent memory.
///
/// Methods take `&self` because several reactor threads use one device at once. Contract:
/// each thread touches only ranges it owns; a range changes owner only through a message
/// (which orders the accesses), as for any shared memory. Overlapping concurrent access is
/// a caller bug. Every range is checked: out of bounds is [`PmemError::OutOfRange`].
pub trait Pmem: Send + Sync {
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn kind(&self) -> PmemKind;
    /// Copy into pmem at `off` with ordinary stores (durable only after flush + fence).
    fn write(&self, off: u64, src: &[u8]) -> Result<(), PmemError>;
    /// Copy with non-temporal stores: durable after this thread's next fence().
    fn write_nt(&self, off: u64, src: &[u8]) -> Result<(), PmemError>;
    fn read(&self, off: u64, dst: &mut [u8]) -> Result<(), PmemError>;
    /// Shows `off..off + len` to `f` in one or more pieces, in order, without copying where the
    /// device is mapped (checksumming cached data in place); the default copies through a
    /// small buffer.
    fn visit(&self, off: u64, len: u64, f: &mut dyn FnMut(&[u8])) -> Result<(), PmemError> {
        check_range(off, len, self.len())?;
        let mut buf = [0u8; 512];
        let (mut at, end) = (off, off + len);
        while at < end {
            let n = (end - at).min(buf.len() as u64) as usize;
            self.read(at, &mut buf[..n])?;
            f(&buf[..n]);
            at += n as u64;
        }
        Ok(())
    }
    /// Start writing back `off..off + len`; durable after this thread's next fence().
    fn flush(&self, off: u64, len: u64) -> Result<(), PmemError>;
    fn fence(&self);
    fn persist(&self, off: u64, len: u64) -> Result<(), PmemError> {
        self.flush(off, len)?;
        self.fence();
        Ok(())
    }
    /// Make the whole device durable the slow way (msync for PmemKind::Msync, no-op otherwise).
    fn sync(&self) -> Result<(), PmemError>;
    /// Raw base pointer for zero-copy reads on real mappings; None for the crash double.
    /// Accesses through it follow the same ownership contract as the methods.
    fn as_ptr(&self) -> Option<*mut u8>;
}

/// Check `off..off + len` against a device of `size` bytes; returns the range as `usize`s.
pub(crate) fn check_range(off: u64, len: u64, size: u64) -> Result<(usize, usize), PmemError> {
    let err = || PmemError::OutOfRange { off, len, size };
    let end = off.checked_add(len).ok_or_else(err)?;
    if end > size {
        return Err(err());
    }
    let off = usize::try_from(off).map_err(|_| err())?;
    let len = usize::try_from(len).map_err(|_| err())?;
    Ok((off, len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CrashPmem, PmemFile};

    #[test]
    fn check_range_rejects_overflow_and_overrun() {
        assert_eq!(check_range(0, 10, 10).unwrap(), (0, 10));
        assert_eq!(check_range(10, 0, 10).unwrap(), (10, 0));
        assert!(check_range(11, 0, 10).is_err());
        assert!(check_range(5, 6, 10).is_err());
        let e = check_range(u64::MAX, 2, 10).unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL);
    }

    /// The same calls must behave the same on every implementation.
    fn contract(p: &dyn Pmem) {
        assert_eq!(p.len(), 4096);
        p.write(1, b"hello").unwrap();
        p.write_nt(100, &[7u8; 300]).unwrap();
        p.persist(0, 8).unwrap();
        p.fence();
        p.sync().unwrap();
        let mut buf = [0u8; 6];
        p.read(0, &mut buf).unwrap();
        assert_eq!(&buf, b"\0hello");
        let mut big = [0u8; 302];
        p.read(99, &mut big).unwrap();
        assert_eq!(big[0], 0);
        assert!(big[1..301].iter().all(|&b| b == 7));
        assert_eq!(big[301], 0);
        // visit shows the same bytes, in order, however it cuts them.
        let mut seen = Vec::new();
        p.visit(99, 2000, &mut |b| seen.extend_from_slice(b))
            .unwrap();
        assert_eq!(seen.len(), 2000);
        assert_eq!(&seen[..302], &big[..]);
        assert!(p.visit(4000, 97, &mut |_| {}).is_err());

        for (off, len) in [(4096, 1), (4095, 2), (u64::MAX, 1), (u64::MAX - 1, 4)] {
            let n = usize::try_from(len).unwrap();
            assert!(matches!(
                p.write(off, &vec![0; n]),
                Err(PmemError::OutOfRange { .. })
            ));
            assert!(p.write_nt(off, &vec![0; n]).is_err());
            assert!(p.read(off, &mut vec![0; n]).is_err());
            assert!(p.flush(off, len).is_err());
            assert!(p.persist(off, len).is_err());
        }
        assert!(p.flush(0, u64::MAX).is_err());
        assert!(p.flush(4096, 0).is_ok());
    }

    #[test]
    fn all_implementations_keep_the_contract() {
        contract(&PmemFile::anonymous(4096).unwrap());
        contract(&CrashPmem::new(4096));
        let dir = tempfile::tempdir().unwrap();
        let f = PmemFile::open(&dir.path().join("p"), 4096, crate::MapMode::Msync).unwrap();
        contract(&f);
    }
}
