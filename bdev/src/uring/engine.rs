//! The two ways a uring channel executes I/O, behind one interface (Firecracker's block engines).
//!
//! The io_uring engine parks the I/O in a slot, pushes an SQE and answers `Queued`; its poller
//! submits the batch once per iteration and completes the I/O from the CQE. The synchronous engine
//! runs the system call inline and answers `Executed`. The channel handles both answers the same
//! way and never needs to know which engine it has.

use crate::iov::{self, IoVec};
use crate::{BdevIo, IoStatus};
use io_uring::{IoUring, opcode, types};
use nix::fcntl::FallocateFlags;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, OnceLock};

/// Entries of each channel's ring (SPDK's queue depth); also the most I/Os a channel has in flight.
pub(crate) const RING_ENTRIES: u32 = 512;

/// Segments each slot reserves for resubmitting the rest of a short transfer.
const REST_SEGS: usize = 16;

/// The file, opened twice: with O_DIRECT for I/O whose buffers meet its alignment, and buffered for
/// the rest (and for everything when the file system refuses O_DIRECT).
pub(crate) struct Files {
    pub(crate) direct: Option<OwnedFd>,
    pub(crate) buffered: OwnedFd,
}

impl Files {
    fn fd(&self, direct: bool) -> &OwnedFd {
        match (&self.direct, direct) {
            (Some(fd), true) => fd,
            _ => &self.buffered,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Read,
    /// FUA writes carry RWF_DSYNC.
    Write {
        fua: bool,
    },
    Flush,
    /// `alt_mode` is tried once when the file system refuses `mode` (0: no alternative).
    Fallocate {
        mode: i32,
        alt_mode: i32,
    },
}

/// One request in file terms; reads and writes take their segments from the `BdevIo`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Req {
    pub(crate) op: Op,
    pub(crate) offset: u64,
    pub(crate) len: u64,
    /// Use the O_DIRECT descriptor (a refusal with EINVAL falls back to the buffered one).
    pub(crate) direct: bool,
}

impl Req {
    const IDLE: Req = Req {
        op: Op::Flush,
        offset: 0,
        len: 0,
        direct: false,
    };
}

/// What an engine did with a request.
pub(crate) enum Submitted {
    /// On the ring: it completes later, from `Engine::poll`.
    Queued,
    /// Done (or refused with `NoMemory`): the caller completes it with this status.
    Executed(BdevIo, IoStatus),
}

/// What the running kernel's io_uring offers, probed once per process.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RingSupport {
    pub(crate) fallocate: bool,
}

/// None when io_uring cannot be used at all (old kernel, disabled by sysctl or seccomp).
pub(crate) fn probe() -> Option<RingSupport> {
    static PROBE: OnceLock<Option<RingSupport>> = OnceLock::new();
    *PROBE.get_or_init(|| {
        let ring = match IoUring::new(4) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("io_uring unavailable ({e}); uring bdevs use synchronous I/O");
                return None;
            }
        };
        let mut p = io_uring::Probe::new();
        if ring.submitter().register_probe(&mut p).is_err() {
            // Kernels before 5.6 cannot be probed; they have vectored I/O and fsync but no fallocate.
            return Some(RingSupport { fallocate: false });
        }
        let basic = [
            opcode::Readv::CODE,
            opcode::Writev::CODE,
            opcode::Fsync::CODE,
        ];
        if !basic.iter().all(|&op| p.is_supported(op)) {
            tracing::warn!("io_uring lacks vectored I/O or fsync; uring bdevs use synchronous I/O");
            return None;
        }
        Some(RingSupport {
            fallocate: p.is_supported(opcode::Fallocate::CODE),
        })
    })
}

pub(crate) enum Engine {
    // Boxed: the ring's bookkeeping dwarfs the synchronous engine.
    Ring(Box<RingEngine>),
    Sync(SyncEngine),
}

impl Engine {
    pub(crate) fn submit(&mut self, io: BdevIo, req: Req) -> Submitted {
        match self {
            Engine::Ring(r) => r.submit(io, req),
            Engine::Sync(s) => {
                let status = s.execute(&io, req);
                Submitted::Executed(io, status)
            }
        }
    }

    /// Submits what was queued and hands finished I/Os to `done`; whether anything happened.
    pub(crate) fn poll(&mut self, done: &mut dyn FnMut(BdevIo, IoStatus)) -> bool {
        match self {
            Engine::Ring(r) => r.poll(done),
            Engine::Sync(_) => false,
        }
    }
}

/// A slot holds an in-flight I/O; its index is the SQE's user_data.
struct Slot {
    io: Option<BdevIo>,
    req: Req,
    /// Bytes already transferred (a short read or write continues from here).
    done: u64,
    /// The segments still to transfer after a short transfer.
    rest: Vec<IoVec>,
}

pub(crate) struct RingEngine {
    ring: IoUring,
    files: Arc<Files>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    in_flight: usize,
    fallocate: bool,
}

/// What to do with a slot after a completion.
enum Next {
    Resubmit,
    Finish(IoStatus),
}

impl RingEngine {
    pub(crate) fn new(files: Arc<Files>, support: RingSupport) -> std::io::Result<RingEngine> {
        let ring = IoUring::new(RING_ENTRIES)?;
        // The CQ is twice the SQ, so one slot per SQ entry can never overflow it.
        let n = ring.params().sq_entries();
        let slots = (0..n)
            .map(|_| Slot {
                io: None,
                req: Req::IDLE,
                done: 0,
                rest: Vec::with_capacity(REST_SEGS),
            })
            .collect();
        Ok(RingEngine {
            ring,
            files,
            slots,
            free: (0..n).rev().collect(),
            in_flight: 0,
            fallocate: support.fallocate,
        })
    }

    fn submit(&mut self, io: BdevIo, req: Req) -> Submitted {
        if matches!(req.op, Op::Fallocate { .. }) && !self.fallocate {
            // Not advertised in this case, so the layer never sends it; refuse rather than block.
            return Submitted::Executed(io, IoStatus::Failed(libc::ENOTSUP));
        }
        let Some(idx) = self.free.pop() else {
            return Submitted::Executed(io, IoStatus::NoMemory);
        };
        let slot = &mut self.slots[idx as usize];
        slot.io = Some(io);
        slot.req = req;
        slot.done = 0;
        self.in_flight += 1;
        match self.push(idx) {
            Ok(()) => Submitted::Queued,
            Err(status) => match self.release(idx) {
                Some(io) => Submitted::Executed(io, status),
                None => Submitted::Queued,
            },
        }
    }

    /// Builds the slot's SQE (from where its transfer stands) and puts it on the submission queue.
    fn push(&mut self, idx: u32) -> Result<(), IoStatus> {
        let slot = &self.slots[idx as usize];
        let Some(io) = slot.io.as_ref() else {
            return Err(IoStatus::Failed(libc::EINVAL));
        };
        let req = slot.req;
        let fd = types::Fd(self.files.fd(req.direct).as_raw_fd());
        let entry = match req.op {
            Op::Read | Op::Write { .. } => {
                let segs: &[IoVec] = if slot.done == 0 {
                    io.iovs()
                } else {
                    &slot.rest
                };
                let count =
                    u32::try_from(segs.len()).map_err(|_| IoStatus::Failed(libc::EINVAL))?;
                // IoVec is a transparent wrapper of `struct iovec`, so the array goes as is.
                let ptr = segs.as_ptr().cast::<libc::iovec>();
                let offset = req.offset + slot.done;
                match req.op {
                    Op::Write { fua } => opcode::Writev::new(fd, ptr, count)
                        .offset(offset)
                        .rw_flags(if fua { libc::RWF_DSYNC } else { 0 })
                        .build(),
                    _ => opcode::Readv::new(fd, ptr, count).offset(offset).build(),
                }
            }
            Op::Flush => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            Op::Fallocate { mode, .. } => opcode::Fallocate::new(fd, req.len)
                .offset(req.offset)
                .mode(mode)
                .build(),
        }
        .user_data(u64::from(idx));
        // SAFETY: the SQE points at the I/O's iovec array (or the slot's `rest`) and, through it,
        // at the caller's data segments. The BdevIo stays parked in this slot, untouched, until its
        // CQE is reaped, so the array does not move or change; the segments stay valid under the
        // IoVec contract until the I/O completes, which is after that CQE.
        unsafe { self.ring.submission().push(&entry) }.map_err(|_| IoStatus::NoMemory)
    }

    /// Frees a slot and returns its I/O.
    fn release(&mut self, idx: u32) -> Option<BdevIo> {
        let io = self.slots.get_mut(idx as usize)?.io.take()?;
        self.free.push(idx);
        self.in_flight -= 1;
        Some(io)
    }

    fn poll(&mut self, done: &mut dyn FnMut(BdevIo, IoStatus)) -> bool {
        let mut busy = false;
        if !self.ring.submission().is_empty() {
            match self.ring.submit() {
                Ok(n) => busy |= n > 0,
                // The kernel is short of resources or was interrupted: the SQEs stay queued.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EAGAIN | libc::EBUSY | libc::EINTR)
                    ) => {}
                Err(e) => tracing::warn!("io_uring submit failed: {e}"),
            }
        }
        loop {
            // The temporary queue hands the head back to the kernel at the end of the statement.
            let Some(cqe) = self.ring.completion().next() else {
                break;
            };
            busy = true;
            self.reap(cqe.user_data(), cqe.result(), done);
        }
        busy
    }

    fn reap(&mut self, user_data: u64, res: i32, done: &mut dyn FnMut(BdevIo, IoStatus)) {
        let Ok(idx) = u32::try_from(user_data) else {
            return;
        };
        let next = match self.slots.get_mut(idx as usize) {
            Some(slot) if slot.io.is_some() => Self::next_step(slot, res),
            _ => {
                tracing::warn!("io_uring completion for unknown slot {user_data}");
                return;
            }
        };
        let status = match next {
            Next::Resubmit => match self.push(idx) {
                Ok(()) => return,
                Err(s) => s,
            },
            Next::Finish(s) => s,
        };
        if let Some(io) = self.release(idx) {
            done(io, status);
        }
    }

    /// Reads a completion against its slot: finished, failed, or to be resubmitted (the rest of a
    /// short transfer, the buffered descriptor after an O_DIRECT refusal, the alternative mode).
    fn next_step(slot: &mut Slot, res: i32) -> Next {
        let req = slot.req;
        if res == -libc::EAGAIN || res == -libc::EINTR {
            return Next::Resubmit;
        }
        match req.op {
            Op::Read | Op::Write { .. } => {
                if res == -libc::EINVAL && req.direct {
                    slot.req.direct = false;
                    return Next::Resubmit;
                }
                let Ok(n) = u64::try_from(res) else {
                    return Next::Finish(IoStatus::Failed(-res));
                };
                if n == 0 {
                    // End of file inside the bdev: the file shrank behind our back.
                    return Next::Finish(IoStatus::Failed(libc::EIO));
                }
                slot.done += n;
                if slot.done >= req.len {
                    return Next::Finish(IoStatus::Success);
                }
                let Some(io) = slot.io.as_ref() else {
                    return Next::Finish(IoStatus::Failed(libc::EIO));
                };
                slot.rest.clear();
                iov::slice_into(
                    io.iovs(),
                    slot.done as usize,
                    (req.len - slot.done) as usize,
                    &mut slot.rest,
                );
                Next::Resubmit
            }
            Op::Fallocate { alt_mode, .. } if res == -libc::EOPNOTSUPP && alt_mode != 0 => {
                slot.req.op = Op::Fallocate {
                    mode: alt_mode,
                    alt_mode: 0,
                };
                Next::Resubmit
            }
            Op::Flush | Op::Fallocate { .. } if res < 0 => Next::Finish(IoStatus::Failed(-res)),
            Op::Flush | Op::Fallocate { .. } => Next::Finish(IoStatus::Success),
        }
    }
}

impl Drop for RingEngine {
    fn drop(&mut self) {
        // The layer destroys a channel only once no I/O holds it, so nothing should be in flight.
        // If something is, wait for the kernel to finish with its buffers before they can go.
        let mut rounds = 0;
        while self.in_flight > 0 && rounds < 1000 {
            rounds += 1;
            if let Err(e) = self.ring.submit_and_wait(1)
                && e.raw_os_error() != Some(libc::EINTR)
            {
                tracing::error!("io_uring drain failed: {e}");
                break;
            }
            loop {
                let Some(cqe) = self.ring.completion().next() else {
                    break;
                };
                if let Ok(idx) = u32::try_from(cqe.user_data())
                    && let Some(io) = self.release(idx)
                {
                    io.complete(IoStatus::Aborted);
                }
            }
        }
    }
}

/// Runs each request inline with preadv/pwritev2/fdatasync/fallocate.
pub(crate) struct SyncEngine {
    files: Arc<Files>,
    rest: Vec<IoVec>,
}

impl SyncEngine {
    pub(crate) fn new(files: Arc<Files>) -> SyncEngine {
        SyncEngine {
            files,
            rest: Vec::with_capacity(REST_SEGS),
        }
    }

    fn execute(&mut self, io: &BdevIo, req: Req) -> IoStatus {
        let r = match req.op {
            Op::Read | Op::Write { .. } => self.transfer(io, req),
            Op::Flush => nix::unistd::fdatasync(&self.files.buffered).map_err(|e| e as i32),
            Op::Fallocate { mode, alt_mode } => match self.fallocate(req, mode) {
                Err(libc::EOPNOTSUPP) if alt_mode != 0 => self.fallocate(req, alt_mode),
                r => r,
            },
        };
        match r {
            Ok(()) => IoStatus::Success,
            Err(e) => IoStatus::Failed(e),
        }
    }

    fn fallocate(&self, req: Req, mode: i32) -> Result<(), i32> {
        let off = i64::try_from(req.offset).map_err(|_| libc::EINVAL)?;
        let len = i64::try_from(req.len).map_err(|_| libc::EINVAL)?;
        let flags = FallocateFlags::from_bits_retain(mode);
        nix::fcntl::fallocate(&self.files.buffered, flags, off, len).map_err(|e| e as i32)
    }

    /// Reads or writes until the whole range is done, continuing after short transfers.
    fn transfer(&mut self, io: &BdevIo, req: Req) -> Result<(), i32> {
        let mut done = 0u64;
        let mut direct = req.direct;
        while done < req.len {
            let segs: &[IoVec] = if done == 0 {
                io.iovs()
            } else {
                self.rest.clear();
                iov::slice_into(
                    io.iovs(),
                    done as usize,
                    (req.len - done) as usize,
                    &mut self.rest,
                );
                &self.rest
            };
            let count = libc::c_int::try_from(segs.len()).map_err(|_| libc::EINVAL)?;
            let offset = i64::try_from(req.offset + done).map_err(|_| libc::EINVAL)?;
            let fd = self.files.fd(direct).as_raw_fd();
            // IoVec is a transparent wrapper of `struct iovec`.
            let ptr = segs.as_ptr().cast::<libc::iovec>();
            let n = match req.op {
                // SAFETY: `ptr` is a live array of `count` iovecs; each segment is valid for writes
                // and ours alone for the life of the I/O (IoVec contract); the call returns before
                // we touch them again.
                Op::Read => unsafe { libc::preadv(fd, ptr, count, offset) },
                Op::Write { fua } => {
                    let flags = if fua { libc::RWF_DSYNC } else { 0 };
                    // SAFETY: as above; the kernel only reads the segments.
                    unsafe { libc::pwritev2(fd, ptr, count, offset, flags) }
                }
                _ => return Err(libc::EINVAL),
            };
            if n < 0 {
                match std::io::Error::last_os_error().raw_os_error() {
                    Some(libc::EINTR | libc::EAGAIN) => continue,
                    Some(libc::EINVAL) if direct => {
                        direct = false;
                        continue;
                    }
                    e => return Err(e.unwrap_or(libc::EIO)),
                }
            }
            if n == 0 {
                // End of file inside the bdev: the file shrank behind our back.
                return Err(libc::EIO);
            }
            done += n as u64;
        }
        Ok(())
    }
}
