//! `FileLock`: exclusive use of a file for as long as the lock lives, so two processes (or two
//! bdevs in one) never drive the same pmem file or origin at once.
//!
//! Regular files take `flock(LOCK_EX | LOCK_NB)`; block devices are opened `O_EXCL`, the kernel's
//! own exclusive claim (it also refuses a mounted device). flock locks belong to the open file
//! description, so a second open in the same process conflicts too.

use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::PmemError;

/// Who holds a file that is busy, as far as can be found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holder {
    /// The process with this pid holds the file's lock (possibly this process).
    Pid(u32),
    /// The lock's holder is not in /proc/locks (or /proc is not readable).
    Unknown,
    /// A block device opened exclusively or mounted: the kernel does not say by whom.
    BlockDevice,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Self::Pid(pid) if pid == std::process::id() => {
                write!(f, "this process (pid {pid}) already has it open")
            }
            Self::Pid(pid) => write!(f, "process {pid} has it open"),
            Self::Unknown => f.write_str("another opener holds its lock (its pid cannot be found)"),
            Self::BlockDevice => f.write_str(
                "the block device is mounted or opened exclusively elsewhere (the holder's pid \
                 cannot be found)",
            ),
        }
    }
}

/// An exclusive hold on a file; released on drop.
#[derive(Debug)]
pub struct FileLock {
    held: Held,
}

#[derive(Debug)]
enum Held {
    /// A descriptor of the locked open file, unlocked explicitly on drop so the lock ends even
    /// while other descriptors of that open file (I/O engines winding down) stay open.
    Flock(File),
    /// The O_EXCL claim lasts as long as this descriptor.
    Exclusive { _fd: File },
}

impl FileLock {
    /// Takes `file` (opened from `path`) for exclusive use without waiting: a file someone
    /// already holds is [`PmemError::Busy`] (EBUSY).
    pub fn exclusive(file: &File, path: &Path) -> Result<FileLock, PmemError> {
        let name = path.display().to_string();
        let meta = file
            .metadata()
            .map_err(|e| PmemError::io(format!("stat {name}"), e))?;
        if meta.file_type().is_block_device() {
            return exclusive_open(path, &name);
        }
        // A second descriptor of the same open file (the lock is the open file's), so the lock
        // can be dropped apart from the caller's `File`.
        let dup = file
            .try_clone()
            .map_err(|e| PmemError::io(format!("dup {name}"), e))?;
        // flock(LOCK_EX | LOCK_NB) on Linux.
        match dup.try_lock() {
            Ok(()) => Ok(FileLock {
                held: Held::Flock(dup),
            }),
            Err(TryLockError::WouldBlock) => Err(PmemError::Busy {
                path: name,
                holder: flock_holder(meta.dev(), meta.ino()),
            }),
            Err(TryLockError::Error(e)) => Err(PmemError::io(format!("flock {name}"), e)),
        }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        if let Held::Flock(f) = &self.held
            && let Err(e) = f.unlock()
        {
            tracing::error!("cannot unlock a file: {e}");
        }
    }
}

fn exclusive_open(path: &Path, name: &str) -> Result<FileLock, PmemError> {
    match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_EXCL)
        .open(path)
    {
        Ok(f) => Ok(FileLock {
            held: Held::Exclusive { _fd: f },
        }),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Err(PmemError::Busy {
            path: name.to_string(),
            holder: Holder::BlockDevice,
        }),
        Err(e) => Err(PmemError::io(format!("open {name} exclusively"), e)),
    }
}

/// The pid holding a flock on the file `dev`/`ino`, from /proc/locks. The kernel hands that
/// file out a page per read, so a lock taken or dropped elsewhere between two reads can shift
/// our line out of sight: a miss is read again a few times.
fn flock_holder(dev: u64, ino: u64) -> Holder {
    for _ in 0..4 {
        let Ok(text) = std::fs::read_to_string("/proc/locks") else {
            return Holder::Unknown;
        };
        if let found @ Holder::Pid(_) = holder_in(&text, dev, ino) {
            return found;
        }
    }
    Holder::Unknown
}

/// The holder of a flock on `dev`/`ino` in the text of /proc/locks, whose lines read
/// `1: FLOCK  ADVISORY  WRITE 9897 fe:00:5308692 0 EOF` (device numbers in hex); waiters'
/// lines (`1: -> FLOCK ...`) are skipped. Some file systems (btrfs subvolumes, overlayfs) show
/// another device than stat does, so a lone entry with the inode alone is taken when no entry
/// matches both.
fn holder_in(text: &str, dev: u64, ino: u64) -> Holder {
    let want = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    let mut by_ino = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || f[1] != "FLOCK" {
            continue;
        }
        let Some((pid, (maj, min, i))) = f[4].parse::<u32>().ok().zip(parse_id(f[5])) else {
            continue;
        };
        if i != ino || pid == 0 {
            continue;
        }
        if (maj, min) == want {
            return Holder::Pid(pid);
        }
        by_ino.push(pid);
    }
    match by_ino.as_slice() {
        [pid] => Holder::Pid(*pid),
        _ => Holder::Unknown,
    }
}

/// `fe:00:5308692` → (major, minor, inode).
fn parse_id(s: &str) -> Option<(u64, u64, u64)> {
    let mut it = s.split(':');
    let maj = u64::from_str_radix(it.next()?, 16).ok()?;
    let min = u64::from_str_radix(it.next()?, 16).ok()?;
    let ino = it.next()?.parse().ok()?;
    it.next().is_none().then_some((maj, min, ino))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(path: &Path) -> File {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .unwrap()
    }

    #[test]
    fn a_second_lock_in_this_process_is_busy_and_names_this_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let (a, b) = (open(&path), open(&path));
        let held = FileLock::exclusive(&a, &path).unwrap();
        let e = FileLock::exclusive(&b, &path).unwrap_err();
        assert_eq!(e.errno(), libc::EBUSY);
        let me = std::process::id();
        assert!(
            matches!(e, PmemError::Busy { holder: Holder::Pid(p), .. } if p == me),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains(&path.display().to_string()) && msg.contains("in use"),
            "{msg}"
        );
        assert!(msg.contains(&format!("pid {me}")), "{msg}");
        // Dropping the lock frees the file even though `a` (the locked open file) stays open.
        drop(held);
        let again = FileLock::exclusive(&b, &path).unwrap();
        assert_eq!(
            FileLock::exclusive(&a, &path).unwrap_err().errno(),
            libc::EBUSY
        );
        drop(again);
    }

    /// A loop device over a file, detached on drop.
    struct Loop(String);

    impl Loop {
        fn attach(file: &Path) -> Option<Loop> {
            let out = std::process::Command::new("losetup")
                .args(["-f", "--show"])
                .arg(file)
                .output()
                .ok()
                .filter(|o| o.status.success())?;
            let dev = String::from_utf8(out.stdout).ok()?.trim().to_string();
            (!dev.is_empty()).then_some(Loop(dev))
        }
    }

    impl Drop for Loop {
        fn drop(&mut self) {
            let _ = std::process::Command::new("losetup")
                .args(["-d", &self.0])
                .status();
        }
    }

    #[test]
    fn a_block_device_is_claimed_with_o_excl() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("img");
        File::create(&img).unwrap().set_len(1 << 20).unwrap();
        let Some(dev) = Loop::attach(&img) else {
            // Loop devices need root (and losetup); the flock path is tested regardless.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED a_block_device_is_claimed_with_o_excl: cannot attach a loop device"
            );
            return;
        };
        let path = Path::new(&dev.0);
        let (a, b) = (open(path), open(path));
        let held = FileLock::exclusive(&a, path).unwrap();
        let e = FileLock::exclusive(&b, path).unwrap_err();
        assert_eq!(e.errno(), libc::EBUSY);
        assert!(
            matches!(
                e,
                PmemError::Busy {
                    holder: Holder::BlockDevice,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains(&dev.0), "{e}");
        drop(held);
        drop(FileLock::exclusive(&b, path).unwrap());
    }

    #[test]
    fn proc_locks_lines_give_the_holder() {
        let text = "1: FLOCK  ADVISORY  WRITE 9897 fe:00:5308692 0 EOF\n\
                    1: -> FLOCK  ADVISORY  WRITE 4444 fe:00:77 0 EOF\n\
                    2: POSIX  ADVISORY  WRITE 5555 fe:00:77 0 EOF\n\
                    3: FLOCK  ADVISORY  WRITE 6666 00:2a:77 0 EOF\n\
                    4: FLOCK  ADVISORY  WRITE 7777 fe:01:88 0 EOF\n\
                    5: FLOCK  ADVISORY  WRITE 8888 fe:02:88 0 EOF\n";
        let dev = |maj, min| nix::sys::stat::makedev(maj, min);
        assert_eq!(holder_in(text, dev(0xfe, 0), 5308692), Holder::Pid(9897));
        // Waiters and POSIX locks are not flock holders; the lone flock on inode 77 is taken
        // though its device differs.
        assert_eq!(holder_in(text, dev(0xfe, 0), 77), Holder::Pid(6666));
        assert_eq!(holder_in(text, dev(0, 0x2a), 77), Holder::Pid(6666));
        // Two entries for the inode on other devices: ambiguous.
        assert_eq!(holder_in(text, dev(8, 1), 88), Holder::Unknown);
        assert_eq!(holder_in(text, dev(0xfe, 2), 88), Holder::Pid(8888));
        assert_eq!(holder_in(text, dev(0xfe, 0), 1), Holder::Unknown);
        assert_eq!(
            holder_in("garbage\n1: FLOCK x y z w\n", 0, 1),
            Holder::Unknown
        );
        assert_eq!(parse_id("103:05:12"), Some((0x103, 5, 12)));
        assert_eq!(parse_id("fe:00"), None);
    }
}
