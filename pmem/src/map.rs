//! `PmemFile`: a file (or anonymous memory) mapped shared and used as persistent memory.

use std::fs::{File, OpenOptions};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use nix::errno::Errno;
use nix::fcntl::{FallocateFlags, fallocate};
use nix::sys::mman::{MapFlags, MsFlags, ProtFlags, mmap, mmap_anonymous, msync, munmap};

use crate::device::check_range;
use crate::{FileLock, Pmem, PmemError, PmemKind, persist};

/// How [`PmemFile::open`] maps the file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MapMode {
    /// Real DAX (`MAP_SYNC`) when the file system offers it, else emulated.
    #[default]
    Auto,
    /// Plain shared mapping, even on DAX.
    Emulated,
    /// Plain shared mapping made durable by msync in [`Pmem::sync`].
    Msync,
}

/// A shared mapping used as persistent memory; unmapped on drop.
pub struct PmemFile {
    base: NonNull<u8>,
    len: usize,
    kind: PmemKind,
    path: Option<PathBuf>,
    /// The file's exclusive lock, until [`PmemFile::take_lock`] hands it to the owner.
    lock: Option<FileLock>,
}

// SAFETY: the mapping is process-wide shared memory owned by this value until drop, and it
// is only reached through raw-pointer copies, never references. The `Pmem` contract has
// threads touch disjoint ranges (or ranges handed over by message), so no two threads race.
unsafe impl Send for PmemFile {}
// SAFETY: as for `Send`.
unsafe impl Sync for PmemFile {}

impl PmemFile {
    /// Map `path`, creating it at `size` bytes if missing or empty. An existing file must be
    /// exactly `size` bytes; `size == 0` means "use the existing size". The file is locked for
    /// exclusive use (see [`FileLock`]) while this value lives: a file another opener holds is
    /// [`PmemError::Busy`], and nothing of it is touched.
    pub fn open(path: &Path, size: u64, mode: MapMode) -> Result<Self, PmemError> {
        let name = path.display().to_string();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(size != 0) // size 0 means "existing file": do not leave an empty one behind
            .truncate(false)
            .open(path)
            .map_err(|e| PmemError::io(format!("open {name}"), e))?;
        let meta = file
            .metadata()
            .map_err(|e| PmemError::io(format!("stat {name}"), e))?;
        if !meta.is_file() {
            return Err(PmemError::NotRegularFile { path: name });
        }
        let lock = FileLock::exclusive(&file, path)?;
        let size = match (meta.len(), size) {
            (0, 0) => {
                return Err(PmemError::BadSize {
                    size: 0,
                    why: "the file is new or empty, so a size is required",
                });
            }
            (existing, 0) => existing,
            (existing, requested) if existing != 0 && existing != requested => {
                return Err(PmemError::SizeMismatch {
                    path: name,
                    existing,
                    requested,
                });
            }
            (_, requested) => requested,
        };
        let len = map_len(size)?;
        reserve(&file, size).map_err(|e| PmemError::io(format!("allocate {name}"), e))?;
        let (base, kind) =
            map_file(&file, len, mode).map_err(|e| PmemError::io(format!("mmap {name}"), e))?;
        match kind {
            PmemKind::Emulated => {
                let why = match mode {
                    MapMode::Auto => "the file system refused MAP_SYNC",
                    _ => "as requested",
                };
                tracing::warn!(
                    "pmem {name}: emulated ({why}); survives a process crash but not a power cut"
                )
            }
            _ => tracing::info!("pmem {name}: {kind}, {size} bytes"),
        }
        Ok(Self {
            base,
            len: len.get(),
            kind,
            path: Some(path.to_path_buf()),
            lock: Some(lock),
        })
    }

    /// Shared anonymous memory for tests and benchmarks (kind `Emulated`, gone on exit).
    pub fn anonymous(size: u64) -> Result<Self, PmemError> {
        let len = map_len(size)?;
        // SAFETY: a fresh mapping at an address the kernel picks; no existing memory changes.
        let base = unsafe { mmap_anonymous(None, len, rw(), MapFlags::MAP_SHARED) }
            .map_err(|e| PmemError::io("mmap anonymous", e))?;
        Ok(Self {
            base: base.cast(),
            len: len.get(),
            kind: PmemKind::Emulated,
            path: None,
            lock: None,
        })
    }

    /// Hands the file's lock to the caller, whose object's life it then follows: a bdev drops
    /// it at delete, while the mapping may linger a little in stacked modules' hands.
    pub fn take_lock(&mut self) -> Option<FileLock> {
        self.lock.take()
    }

    /// The mapped file; `None` for anonymous memory.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// `off..off + len` checked and turned into a pointer into the mapping.
    fn at(&self, off: u64, len: usize) -> Result<*mut u8, PmemError> {
        let (off, _) = check_range(off, len as u64, self.len as u64)?;
        // SAFETY: `off <= self.len`, so the result stays inside (or one past) the mapping.
        Ok(unsafe { self.base.as_ptr().add(off) })
    }
}

fn rw() -> ProtFlags {
    ProtFlags::PROT_READ | ProtFlags::PROT_WRITE
}

/// A mapping length: non-zero and small enough for pointer offsets (`isize`).
fn map_len(size: u64) -> Result<NonZeroUsize, PmemError> {
    let bad = |why| PmemError::BadSize { size, why };
    let len = usize::try_from(size)
        .ok()
        .filter(|&l| l <= isize::MAX as usize)
        .ok_or_else(|| bad("too large to map"))?;
    NonZeroUsize::new(len).ok_or_else(|| bad("must not be zero"))
}

/// Give the file `size` bytes with blocks allocated, so a later store into a hole cannot
/// hit ENOSPC at page-fault time (SIGBUS). Also fills holes of an existing sparse file.
fn reserve(file: &File, size: u64) -> Result<(), Errno> {
    let off_len = i64::try_from(size).map_err(|_| Errno::EFBIG)?;
    match fallocate(file, FallocateFlags::empty(), 0, off_len) {
        Err(Errno::EOPNOTSUPP | Errno::ENOSYS) => file
            .set_len(size)
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))),
        other => other,
    }
}

fn map_file(
    file: &File,
    len: NonZeroUsize,
    mode: MapMode,
) -> Result<(NonNull<u8>, PmemKind), Errno> {
    if mode == MapMode::Auto {
        let flags = MapFlags::MAP_SHARED_VALIDATE | MapFlags::MAP_SYNC;
        // SAFETY: a fresh mapping at an address the kernel picks; no existing memory changes.
        match unsafe { mmap(None, len, rw(), flags, file, 0) } {
            Ok(p) => return Ok((p.cast(), PmemKind::Dax)),
            // The file system cannot promise MAP_SYNC: fall back to emulation.
            Err(Errno::EOPNOTSUPP | Errno::EINVAL) => {}
            Err(e) => return Err(e),
        }
    }
    // SAFETY: as above.
    let p = unsafe { mmap(None, len, rw(), MapFlags::MAP_SHARED, file, 0) }?;
    let kind = match mode {
        MapMode::Msync => PmemKind::Msync,
        _ => PmemKind::Emulated,
    };
    Ok((p.cast(), kind))
}

impl Pmem for PmemFile {
    fn len(&self) -> u64 {
        self.len as u64
    }

    fn kind(&self) -> PmemKind {
        self.kind
    }

    fn write(&self, off: u64, src: &[u8]) -> Result<(), PmemError> {
        let dst = self.at(off, src.len())?;
        // SAFETY: `dst` has `src.len()` mapped bytes; the caller owns them (trait contract).
        // `copy` rather than `copy_nonoverlapping` in case `src` was built from `as_ptr`.
        unsafe { std::ptr::copy(src.as_ptr(), dst, src.len()) };
        Ok(())
    }

    fn write_nt(&self, off: u64, src: &[u8]) -> Result<(), PmemError> {
        let dst = self.at(off, src.len())?;
        // SAFETY: as in `write`; the `Pmem` contract (fence before others read) matches
        // `nt_copy`'s. A `&[u8]` cannot alias the caller-owned destination range.
        unsafe { persist::nt_copy(dst, src.as_ptr(), src.len()) };
        Ok(())
    }

    fn read(&self, off: u64, dst: &mut [u8]) -> Result<(), PmemError> {
        let src = self.at(off, dst.len())?;
        // SAFETY: `src` has `dst.len()` mapped bytes, not written concurrently (trait contract).
        unsafe { std::ptr::copy(src, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    fn visit(&self, off: u64, len: u64, f: &mut dyn FnMut(&[u8])) -> Result<(), PmemError> {
        let (_, n) = check_range(off, len, self.len as u64)?;
        let src = self.at(off, n)?;
        // SAFETY: `src` has `n` mapped bytes that live as long as `self`, and nobody writes
        // them while they are read (trait contract), so a shared slice over them is sound.
        f(unsafe { std::slice::from_raw_parts(src, n) });
        Ok(())
    }

    fn flush(&self, off: u64, len: u64) -> Result<(), PmemError> {
        let (o, l) = check_range(off, len, self.len as u64)?;
        // SAFETY: range checked against the live mapping.
        unsafe { persist::flush_range(self.base.as_ptr().add(o), l) };
        Ok(())
    }

    fn fence(&self) {
        persist::fence();
    }

    fn sync(&self) -> Result<(), PmemError> {
        if self.kind == PmemKind::Msync {
            // SAFETY: the whole live mapping, page-aligned by mmap.
            unsafe { msync(self.base.cast(), self.len, MsFlags::MS_SYNC) }
                .map_err(|e| PmemError::io("msync", e))?;
        }
        Ok(())
    }

    fn as_ptr(&self) -> Option<*mut u8> {
        Some(self.base.as_ptr())
    }
}

impl Drop for PmemFile {
    fn drop(&mut self) {
        // SAFETY: this value owns the mapping and nothing uses it after drop.
        if let Err(e) = unsafe { munmap(self.base.cast(), self.len) } {
            tracing::error!("pmem munmap failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn file_roundtrip_and_reopen_with_existing_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pmem");
        {
            let p = PmemFile::open(&path, 1 << 20, MapMode::Auto).unwrap();
            assert!(matches!(p.kind(), PmemKind::Dax | PmemKind::Emulated));
            assert_eq!(p.path(), Some(path.as_path()));
            p.write((1 << 20) - 5, b"tail!").unwrap();
            p.write_nt(4096 + 3, &[9u8; 1000]).unwrap();
            p.persist((1 << 20) - 5, 5).unwrap();
            p.fence();
        }
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 20);
        let p = PmemFile::open(&path, 0, MapMode::Msync).unwrap();
        assert_eq!((p.len(), p.kind()), (1 << 20, PmemKind::Msync));
        let mut buf = [0u8; 5];
        p.read((1 << 20) - 5, &mut buf).unwrap();
        assert_eq!(&buf, b"tail!");
        let mut buf = [0u8; 1000];
        p.read(4096 + 3, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 9));
        p.sync().unwrap();
    }

    #[test]
    fn size_rules() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pmem");
        let e = PmemFile::open(&path, 0, MapMode::Auto).err().unwrap();
        assert_eq!(e.errno(), libc::ENOENT);
        assert!(!path.exists(), "size 0 must not create the file");
        std::fs::File::create(&path).unwrap();
        let e = PmemFile::open(&path, 0, MapMode::Auto).err().unwrap();
        assert!(matches!(e, PmemError::BadSize { .. }));
        drop(PmemFile::open(&path, 8192, MapMode::Emulated).unwrap());
        let e = PmemFile::open(&path, 4096, MapMode::Auto).err().unwrap();
        let msg = e.to_string();
        assert!(msg.contains("8192") && msg.contains("4096"), "{msg}");
        assert_eq!(e.errno(), libc::EINVAL);
        let e = PmemFile::open(dir.path(), 4096, MapMode::Auto)
            .err()
            .unwrap();
        assert!(e.errno() > 0);
        assert!(PmemFile::anonymous(0).is_err());
        assert!(PmemFile::anonymous(u64::MAX).is_err());
    }

    #[test]
    fn a_mapped_file_is_busy_for_a_second_opener_until_its_lock_goes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pmem");
        let mut first = PmemFile::open(&path, 8192, MapMode::Emulated).unwrap();
        first.write(0, b"first").unwrap();
        let e = PmemFile::open(&path, 8192, MapMode::Emulated)
            .err()
            .unwrap();
        assert_eq!(e.errno(), libc::EBUSY);
        let msg = e.to_string();
        assert!(
            msg.contains(&path.display().to_string()) && msg.contains("in use"),
            "{msg}"
        );
        assert!(msg.contains(&std::process::id().to_string()), "{msg}");
        // The refused opener touched nothing, even given another size.
        let e = PmemFile::open(&path, 4096, MapMode::Emulated)
            .err()
            .unwrap();
        assert_eq!(e.errno(), libc::EBUSY);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 8192);
        // The lock follows whoever took it, not the mapping.
        let lock = first.take_lock().unwrap();
        assert!(PmemFile::open(&path, 0, MapMode::Emulated).is_err());
        drop(lock);
        let second = PmemFile::open(&path, 0, MapMode::Emulated).unwrap();
        let mut buf = [0u8; 5];
        second.read(0, &mut buf).unwrap();
        assert_eq!(&buf, b"first");
        drop(first);
        assert_eq!(
            PmemFile::open(&path, 0, MapMode::Emulated)
                .err()
                .unwrap()
                .errno(),
            libc::EBUSY
        );
        drop(second);
        drop(PmemFile::open(&path, 0, MapMode::Emulated).unwrap());
    }

    #[test]
    fn threads_write_disjoint_ranges() {
        let p = Arc::new(PmemFile::anonymous(64 * 1024).unwrap());
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                let p = Arc::clone(&p);
                std::thread::spawn(move || {
                    let off = u64::from(t) * 16 * 1024;
                    for i in 0..16u64 {
                        let chunk = [t + 1; 1024];
                        if i % 2 == 0 {
                            p.write(off + i * 1024, &chunk).unwrap();
                            p.flush(off + i * 1024, 1024).unwrap();
                        } else {
                            p.write_nt(off + i * 1024, &chunk).unwrap();
                        }
                    }
                    p.fence();
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut all = vec![0u8; 64 * 1024];
        p.read(0, &mut all).unwrap();
        for (i, b) in all.iter().enumerate() {
            assert_eq!(usize::from(*b), i / (16 * 1024) + 1);
        }
        // SAFETY: reading inside the mapping after all writers joined.
        assert_eq!(unsafe { *p.as_ptr().unwrap().add(16 * 1024) }, 2);
    }
}
