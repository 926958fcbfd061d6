//! The uring bdev: a file or block device driven through io_uring (SPDK's bdev_uring).
//!
//! Each thread's channel owns one ring polled by its own poller: `submit_request` only pushes an
//! SQE, and the poller submits the whole batch once per iteration and completes I/O from the CQEs.
//! When io_uring is unavailable (or asked for) a synchronous engine runs the same requests inline.
//!
//! The file is opened O_DIRECT when the file system allows it; I/O whose buffers miss the
//! O_DIRECT alignment goes through a second, buffered descriptor of the same file (the kernel keeps
//! the two coherent), since the layer has no bounce buffers. Every completed write reaches the
//! kernel, not the media, so the bdev advertises a volatile write cache: FLUSH is fdatasync and
//! FUA is RWF_DSYNC. Unmap punches a hole, write_zeroes zeroes the range (each falls back to the
//! other where the file system lacks one).

mod engine;
pub mod rpc;

use crate::{
    Bdev, BdevChannel, BdevChannelOps, BdevError, BdevIo, BdevOps, BdevProps, IoStatus, IoType,
};
use engine::{Engine, Files, Op, Req, RingEngine, Submitted, SyncEngine};
use poller::{PollStatus, Poller};
use serde_json::{Value, json};
use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::rc::{Rc, Weak};
use std::sync::{Arc, Mutex};
use uuid::Uuid;

pub const MODULE: &str = "uring";
const PRODUCT_NAME: &str = "URING bdev";

/// Which engine a uring bdev's channels use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EngineKind {
    /// io_uring when the kernel offers it (and a channel's ring can be set up), else synchronous.
    #[default]
    Auto,
    /// io_uring or nothing: creating the bdev (or a channel) fails without it.
    Uring,
    /// Synchronous system calls on the submitting thread.
    Sync,
}

struct UringDisk {
    name: String,
    filename: String,
    block_size: u32,
    uuid: Uuid,
    files: Arc<Files>,
    /// O_DIRECT wants every segment's address aligned to `mem_align` and its length a multiple
    /// of `len_align`; other I/O takes the buffered descriptor.
    mem_align: usize,
    len_align: usize,
    engine: EngineKind,
    /// io_uring can fallocate (so unmap and write_zeroes are offered on ring channels).
    ring_fallocate: bool,
    /// The exclusive hold on the file, from create to delete (`destruct`), even while channels'
    /// engines still hold descriptors a moment longer.
    lock: Mutex<Option<::pmem::FileLock>>,
}

impl UringDisk {
    /// The request for `io`; None for a reset, which has nothing to do in the file.
    fn request(&self, io: &BdevIo) -> Option<Req> {
        const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        const ZERO: i32 = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
        let op = match io.io_type() {
            IoType::Read => Op::Read,
            IoType::Write => Op::Write {
                fua: io.flags().fua,
            },
            IoType::Flush => Op::Flush,
            IoType::Unmap => Op::Fallocate {
                mode: PUNCH,
                alt_mode: ZERO,
            },
            IoType::WriteZeroes => Op::Fallocate {
                mode: ZERO,
                alt_mode: PUNCH,
            },
            IoType::Reset => return None,
        };
        let (offset, len) = io.byte_range();
        let direct = matches!(op, Op::Read | Op::Write { .. }) && self.direct_ok(io);
        Some(Req {
            op,
            offset,
            len,
            direct,
        })
    }

    fn direct_ok(&self, io: &BdevIo) -> bool {
        self.files.direct.is_some()
            && io.iovs().iter().all(|v| {
                (v.base() as usize).is_multiple_of(self.mem_align)
                    && v.len().is_multiple_of(self.len_align)
            })
    }
}

/// A thread's channel: its engine, and the poller that drives a ring engine.
struct UringChannel {
    state: Rc<ChannelState>,
    poller: Option<Poller>,
}

struct ChannelState {
    disk: Arc<UringDisk>,
    engine: RefCell<Engine>,
}

impl ChannelState {
    fn poll(&self) -> PollStatus {
        let Ok(mut engine) = self.engine.try_borrow_mut() else {
            return PollStatus::Idle;
        };
        PollStatus::from(engine.poll(&mut |io, status| io.complete(status)))
    }
}

impl BdevChannelOps for UringChannel {
    fn submit_request(&self, io: BdevIo) {
        let Some(req) = self.state.disk.request(&io) else {
            // Reset: nothing is cached here, and in-flight I/O completes on its own.
            io.complete_ok();
            return;
        };
        let Ok(mut engine) = self.state.engine.try_borrow_mut() else {
            // Only reachable from a re-entrant submit; the layer retries it shortly.
            io.complete(IoStatus::NoMemory);
            return;
        };
        match engine.submit(io, req) {
            Submitted::Queued => {}
            Submitted::Executed(io, status) => io.complete(status),
        }
    }
}

impl Drop for UringChannel {
    fn drop(&mut self) {
        // The poller only holds a weak reference; it must not outlive the channel on its thread.
        if let Some(p) = &self.poller {
            p.unregister();
        }
    }
}

struct UringOps(Arc<UringDisk>);

impl BdevOps for UringOps {
    fn io_type_supported(&self, t: IoType) -> bool {
        match t {
            IoType::Read | IoType::Write | IoType::Flush | IoType::Reset => true,
            IoType::Unmap | IoType::WriteZeroes => {
                self.0.engine == EngineKind::Sync || self.0.ring_fallocate
            }
        }
    }

    fn create_channel(&self) -> Result<Rc<dyn BdevChannelOps>, BdevError> {
        let disk = &self.0;
        let engine = match (disk.engine, engine::probe()) {
            (EngineKind::Sync, _) | (EngineKind::Auto, None) => None,
            (kind, Some(support)) => match RingEngine::new(disk.files.clone(), support) {
                Ok(r) => Some(Box::new(r)),
                Err(e) if kind == EngineKind::Auto => {
                    tracing::warn!(
                        "uring bdev {}: cannot set up a ring ({e}); this thread uses synchronous I/O",
                        disk.name
                    );
                    None
                }
                Err(e) => {
                    return Err(BdevError::io(
                        e.raw_os_error().unwrap_or(libc::EIO),
                        format!("uring bdev {}: cannot set up a ring: {e}", disk.name),
                    ));
                }
            },
            (EngineKind::Uring, None) => {
                return Err(BdevError::io(libc::ENOTSUP, "io_uring is not available"));
            }
        };
        let is_ring = engine.is_some();
        let state = Rc::new(ChannelState {
            disk: disk.clone(),
            engine: RefCell::new(match engine {
                Some(r) => Engine::Ring(r),
                None => Engine::Sync(SyncEngine::new(disk.files.clone())),
            }),
        });
        let poller = if is_ring {
            let weak: Weak<ChannelState> = Rc::downgrade(&state);
            let p = Poller::register("uring_poll", 0, move || match weak.upgrade() {
                Some(s) => s.poll(),
                None => PollStatus::Idle,
            });
            Some(p.ok_or(BdevError::NoThread)?)
        } else {
            None
        };
        Ok(Rc::new(UringChannel { state, poller }))
    }

    fn dump_info_json(&self) -> Value {
        json!({"uring": {"filename": self.0.filename}})
    }

    fn destruct(&self) {
        let mut lock = self.0.lock.lock().unwrap_or_else(|p| p.into_inner());
        drop(lock.take());
    }

    fn write_config_json(&self) -> Option<Value> {
        let d = &self.0;
        Some(json!({
            "method": "bdev_uring_create",
            "params": {
                "name": d.name,
                "filename": d.filename,
                "block_size": d.block_size,
                "uuid": d.uuid.to_string(),
            }
        }))
    }
}

/// Creates a uring bdev with the engine chosen automatically (`bdev_uring_create`).
pub fn create(params: rpc::UringCreateParams) -> Result<Bdev, BdevError> {
    create_with_engine(params, EngineKind::Auto)
}

/// Creates a uring bdev whose channels use `engine`.
pub fn create_with_engine(
    params: rpc::UringCreateParams,
    engine: EngineKind,
) -> Result<Bdev, BdevError> {
    if params.name.is_empty() {
        return Err(BdevError::invalid("name must not be empty"));
    }
    if Bdev::lookup(&params.name).is_some() {
        return Err(BdevError::Exists(params.name));
    }
    let support = engine::probe();
    let engine = match (engine, support) {
        (EngineKind::Uring, None) => {
            return Err(BdevError::io(libc::ENOTSUP, "io_uring is not available"));
        }
        (EngineKind::Auto, None) => EngineKind::Sync,
        (e, _) => e,
    };
    let path = params.filename.as_str();
    let opened = open_file(path, params.block_size.filter(|&b| b != 0))?;
    let uuid = params.uuid.unwrap_or_else(Uuid::new_v4);
    let mut props = BdevProps::new(
        &params.name,
        MODULE,
        PRODUCT_NAME,
        opened.block_size,
        opened.num_blocks,
    );
    props.uuid = Some(uuid);
    props.write_cache = true;
    tracing::info!(
        "uring bdev {}: {path}, {} blocks of {} bytes, {} I/O, {:?} engine",
        params.name,
        opened.num_blocks,
        opened.block_size,
        if opened.files.direct.is_some() {
            "direct"
        } else {
            "buffered"
        },
        engine
    );
    let disk = UringDisk {
        name: params.name,
        filename: params.filename,
        block_size: opened.block_size,
        uuid,
        files: Arc::new(opened.files),
        mem_align: opened.mem_align,
        len_align: opened.len_align,
        engine,
        ring_fallocate: support.is_some_and(|s| s.fallocate),
        lock: Mutex::new(Some(opened.lock)),
    };
    Bdev::register(props, Arc::new(UringOps(Arc::new(disk))))
}

/// Whether this kernel lets uring bdevs use io_uring (probed once per process).
pub fn io_uring_available() -> bool {
    engine::probe().is_some()
}

/// The engine behind a channel of a uring bdev (`Uring` or `Sync`); None for another module.
pub fn channel_engine(ch: &BdevChannel) -> Option<EngineKind> {
    let uc = ch.module_channel::<UringChannel>()?;
    Some(match &*uc.state.engine.try_borrow().ok()? {
        Engine::Ring(_) => EngineKind::Uring,
        Engine::Sync(_) => EngineKind::Sync,
    })
}

/// Unregisters the uring bdev `name`; `done` runs once it is gone.
pub fn delete(name: &str, done: impl FnOnce(Result<(), BdevError>) + Send + 'static) {
    Bdev::unregister_module_bdev(MODULE, name, done)
}

struct Opened {
    files: Files,
    lock: ::pmem::FileLock,
    block_size: u32,
    num_blocks: u64,
    mem_align: usize,
    len_align: usize,
}

fn io_err(path: &str, what: &str, e: std::io::Error) -> BdevError {
    BdevError::io(
        e.raw_os_error().unwrap_or(libc::EIO),
        format!("{what} {path}: {e}"),
    )
}

/// Opens the file (buffered, and O_DIRECT when allowed) for exclusive use and works out its
/// geometry.
fn open_file(path: &str, block_size: Option<u32>) -> Result<Opened, BdevError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| io_err(path, "cannot open", e))?;
    let ftype = file
        .metadata()
        .map_err(|e| io_err(path, "cannot stat", e))?
        .file_type();
    let is_blk = ftype.is_block_device();
    if !is_blk && !ftype.is_file() {
        return Err(BdevError::invalid(format!(
            "{path} is neither a regular file nor a block device"
        )));
    }
    let lbs = if is_blk {
        logical_block_size(&file)
    } else {
        None
    };
    let block_size = block_size.or(lbs).unwrap_or(512);
    if !block_size.is_power_of_two() || !(512..=65536).contains(&block_size) {
        return Err(BdevError::invalid(format!(
            "block_size {block_size} is not a power of two in 512..65536"
        )));
    }
    if let Some(lbs) = lbs
        && block_size < lbs
    {
        return Err(BdevError::invalid(format!(
            "block_size {block_size} is smaller than the logical block size {lbs} of {path}"
        )));
    }
    let size = (&file)
        .seek(SeekFrom::End(0))
        .map_err(|e| io_err(path, "cannot size", e))?;
    let num_blocks = size / u64::from(block_size);
    if num_blocks == 0 {
        return Err(BdevError::invalid(format!(
            "{path} is {size} bytes, smaller than one block of {block_size}"
        )));
    }
    if !size.is_multiple_of(u64::from(block_size)) {
        tracing::warn!(
            "{path}: the last {} bytes are not a whole block and are ignored",
            size % u64::from(block_size)
        );
    }
    // Bad parameters are reported as such first; nothing above changed the file. flock on a
    // file, O_EXCL on a block device: a second opener (another process, or another bdev here)
    // is EBUSY, naming the file and its holder where it can be found.
    let lock = ::pmem::FileLock::exclusive(&file, std::path::Path::new(path))
        .map_err(|e| BdevError::io(e.errno(), e.to_string()))?;
    let (direct, mem_align, len_align) = open_direct(path, block_size, lbs);
    Ok(Opened {
        files: Files {
            direct,
            buffered: file.into(),
        },
        lock,
        block_size,
        num_blocks,
        mem_align,
        len_align,
    })
}

/// The O_DIRECT descriptor and the alignment it needs, or None (buffered only) when the file
/// system refuses O_DIRECT or the block size is finer than its granularity.
fn open_direct(
    path: &str,
    block_size: u32,
    lbs: Option<u32>,
) -> (Option<std::os::fd::OwnedFd>, usize, usize) {
    let buffered_only = (None, 1, 1);
    let file = match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!("{path}: O_DIRECT refused ({e}); using buffered I/O");
            return buffered_only;
        }
    };
    // Without the kernel's answer, assume the strictest common rule: page-aligned memory and
    // block-sized segments (an EINVAL still falls back to the buffered descriptor).
    let (mem, off) = dio_align(&file).unwrap_or((4096, lbs.unwrap_or(block_size)));
    if off == 0 {
        tracing::warn!("{path}: the file system does not support O_DIRECT; using buffered I/O");
        return buffered_only;
    }
    if !block_size.is_multiple_of(off) {
        tracing::warn!(
            "{path}: block_size {block_size} is finer than the O_DIRECT granularity {off}; \
             using buffered I/O"
        );
        return buffered_only;
    }
    (Some(file.into()), mem.max(1) as usize, off as usize)
}

/// BLKSSZGET: a block device's logical block size.
fn logical_block_size(f: &File) -> Option<u32> {
    let mut lbs: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int into `lbs`, which lives across the call.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), libc::BLKSSZGET, &mut lbs) };
    u32::try_from(lbs).ok().filter(|&l| rc == 0 && l > 0)
}

/// The O_DIRECT (memory, offset) alignment the kernel reports through statx, if it does.
fn dio_align(f: &File) -> Option<(u32, u32)> {
    let mut st = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: statx fills the buffer we own; an empty path with AT_EMPTY_PATH names `f` itself.
    let rc = unsafe {
        libc::statx(
            f.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            st.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return None;
    }
    // SAFETY: zero-initialised, then filled by a successful statx; every field is plain data.
    let st = unsafe { st.assume_init() };
    (st.stx_mask & libc::STATX_DIOALIGN != 0)
        .then_some((st.stx_dio_mem_align, st.stx_dio_offset_align))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_bdev_on_a_file_is_busy_until_the_first_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        File::create(&path).unwrap().set_len(1 << 20).unwrap();
        let file = path.to_str().unwrap();
        let first = create(rpc::UringCreateParams::new("LockUring0", file)).unwrap();
        let e = create(rpc::UringCreateParams::new("LockUring1", file)).unwrap_err();
        assert_eq!(
            (e.errno(), e.to_string()),
            (
                libc::EBUSY,
                format!(
                    "{file} is in use: this process (pid {}) already has it open",
                    std::process::id()
                )
            )
        );
        // No reactor thread here: with no descriptor open the unregister completes at once.
        first.unregister(|r| r.unwrap());
        let second = create(rpc::UringCreateParams::new("LockUring1", file)).unwrap();
        second.unregister(|r| r.unwrap());
        assert!(Bdev::lookup("LockUring1").is_none());
    }
}
