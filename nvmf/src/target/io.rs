//! NVM commands onto bdev I/O: Read, Write (FUA), Flush, Write Zeroes and Dataset Management
//! (deallocate → one unmap per range), on the namespace's channel of the poll group thread.
//!
//! `prepare` checks a command before its data moves (so a bad write is refused without an
//! R2T); `submit` sends it (again after a wait for a bdev_io: Dataset Management resumes at
//! the range it stopped at). The completion callback is a plain `fn`; the request travels as
//! `IoCtx::Word` (poll group, connection, generation, slot).

use crate::target::buffers::BufferPool;
use crate::target::poll_group::{self, NsView, SubsysView};
use crate::target::request::{Buf, Request, State};
use crate::wire::command::{DSM_RANGE_LEN, DsmRange, io as op};
use crate::wire::status::Status;
use bdev::{BdevError, BdevIo, IoCtx, IoFlags, IoStatus, IoVec, SubmitError};

/// What `submit` did.
pub enum Outcome {
    /// bdev I/O is in flight (or waits for a bdev_io): the callback finishes the command.
    Submitted,
    /// Finished at once (nothing to do, or refused) with this status — once nothing the
    /// request sent earlier is still in flight.
    Done(Status),
}

/// Checks a command of an I/O queue against its namespace before its data moves.
pub fn prepare(r: &Request, view: Option<&SubsysView>, max_io: u32) -> Result<(), Status> {
    let sqe = &r.sqe;
    if !matches!(
        sqe.opcode,
        op::READ | op::WRITE | op::FLUSH | op::WRITE_ZEROES | op::DATASET_MANAGEMENT
    ) {
        return Err(Status::INVALID_OPCODE);
    }
    let ns = view
        .and_then(|v| v.find(sqe.nsid))
        .ok_or(Status::INVALID_NAMESPACE)?;
    if sqe.fuse != 0 {
        return Err(Status::INVALID_FIELD);
    }
    match sqe.opcode {
        op::READ | op::WRITE => {
            if sqe.prinfo() != 0 {
                return Err(Status::INVALID_FIELD);
            }
            let bytes = u64::from(sqe.nlb()) * u64::from(ns.block_size);
            if bytes > u64::from(max_io) {
                return Err(Status::INVALID_FIELD);
            }
            if bytes != u64::from(r.len) {
                return Err(Status::SGL_INVALID_DATA_LENGTH);
            }
            check_range(ns, sqe.slba(), u64::from(sqe.nlb()))
        }
        op::FLUSH => Ok(()),
        op::WRITE_ZEROES => {
            if !ns.write_zeroes {
                return Err(Status::INVALID_OPCODE);
            }
            check_range(ns, sqe.slba(), u64::from(sqe.nlb()))
        }
        op::DATASET_MANAGEMENT => {
            if (sqe.dsm_nr() * DSM_RANGE_LEN) as u64 > u64::from(r.len) {
                return Err(Status::SGL_INVALID_DATA_LENGTH);
            }
            Ok(())
        }
        _ => Err(Status::INVALID_OPCODE),
    }
}

fn check_range(ns: &NsView, slba: u64, nlb: u64) -> Result<(), Status> {
    match slba.checked_add(nlb) {
        Some(end) if end <= ns.num_blocks => Ok(()),
        _ => Err(Status::LBA_OUT_OF_RANGE),
    }
}

/// The request's buffer as one bdev segment of `len` bytes.
fn iovec(r: &Request, pool: &BufferPool, len: usize) -> Option<IoVec> {
    let base = match r.buf {
        Buf::Own => r.own.as_ref()?,
        Buf::Pool(i) => pool.get(i)?,
        Buf::None => return None,
    };
    if base.len() < len {
        return None;
    }
    // SAFETY: the request holds this buffer (its own, or a pool buffer it took) until its
    // completion callback has run, and nothing touches it meanwhile: while the request is
    // `Exec` or `IoWait` the receive path writes only `Receiving`/`AwaitH2C` slots and the
    // send queue reads only `Sending` ones; the buffer outlives the connection's I/O (a
    // connection is freed only once no slot is `Exec` or `IoWait`).
    Some(unsafe { IoVec::new(base.as_mut_ptr(), len) })
}

/// Sends the request's bdev I/O on `ns`; `word` identifies it to the callbacks.
pub fn submit(r: &mut Request, ns: &NsView, pool: &BufferPool, word: usize) -> Outcome {
    let sqe = r.sqe;
    let ctx = IoCtx::Word(word);
    let res = match sqe.opcode {
        op::READ | op::WRITE => {
            let Some(iov) = iovec(r, pool, r.len as usize) else {
                return Outcome::Done(Status::INTERNAL);
            };
            let iovs = std::slice::from_ref(&iov);
            let (slba, nlb) = (sqe.slba(), u64::from(sqe.nlb()));
            if sqe.opcode == op::READ {
                ns.ch.read(iovs, slba, nlb, io_done, ctx)
            } else {
                let flags = IoFlags { fua: sqe.fua() };
                ns.ch.write(iovs, slba, nlb, flags, io_done, ctx)
            }
        }
        op::FLUSH => {
            if !ns.flush {
                return Outcome::Done(Status::SUCCESS);
            }
            ns.ch.flush(0, ns.num_blocks, io_done, ctx)
        }
        op::WRITE_ZEROES => ns
            .ch
            .write_zeroes(sqe.slba(), u64::from(sqe.nlb()), io_done, ctx),
        op::DATASET_MANAGEMENT => return dsm(r, ns, pool, word),
        _ => return Outcome::Done(Status::INVALID_OPCODE),
    };
    match res {
        Ok(()) => {
            r.pending += 1;
            r.state = State::Exec;
            Outcome::Submitted
        }
        Err(e) => refused(r, ns, e),
    }
}

/// A refused submit: a wait for a bdev_io, or the command's status.
fn refused(r: &mut Request, ns: &NsView, e: SubmitError) -> Outcome {
    if e.error == BdevError::NoMemory {
        r.state = State::IoWait;
        ns.ch.queue_io_wait(io_retry, e.ctx);
        return Outcome::Submitted;
    }
    Outcome::Done(submit_status(&e.error))
}

fn submit_status(e: &BdevError) -> Status {
    match e {
        BdevError::OutOfRange => Status::LBA_OUT_OF_RANGE,
        BdevError::NotSupported(_) => Status::INVALID_OPCODE,
        e => Status::from_errno(e.errno()),
    }
}

/// Dataset Management: deallocate each range (an unmap), from `next_range` on. Without the
/// deallocate attribute (or without unmap on the bdev) there is nothing to do: the other
/// attributes are hints.
fn dsm(r: &mut Request, ns: &NsView, pool: &BufferPool, word: usize) -> Outcome {
    let nr = r.sqe.dsm_nr();
    if !r.sqe.dsm_deallocate() || !ns.unmap {
        r.next_range = nr as u16;
        return Outcome::Done(Status::SUCCESS);
    }
    r.state = State::Exec;
    while usize::from(r.next_range) < nr {
        let i = usize::from(r.next_range);
        let range = crate::target::connection::buf_ref(r, pool)
            .and_then(|b| b.get(i * DSM_RANGE_LEN..(i + 1) * DSM_RANGE_LEN))
            .and_then(|b| DsmRange::decode(b).ok());
        let Some(range) = range else {
            r.error.get_or_insert(Status::SGL_INVALID_DATA_LENGTH);
            r.next_range = nr as u16;
            break;
        };
        if range.nlb == 0 {
            r.next_range += 1;
            continue;
        }
        if let Err(st) = check_range(ns, range.slba, u64::from(range.nlb)) {
            r.error.get_or_insert(st);
            r.next_range = nr as u16;
            break;
        }
        match ns
            .ch
            .unmap(range.slba, u64::from(range.nlb), io_done, IoCtx::Word(word))
        {
            Ok(()) => {
                r.pending += 1;
                r.next_range += 1;
            }
            Err(e) if e.error == BdevError::NoMemory => {
                r.state = State::IoWait;
                ns.ch.queue_io_wait(io_retry, e.ctx);
                return Outcome::Submitted;
            }
            Err(e) => {
                r.error.get_or_insert(submit_status(&e.error));
                r.next_range = nr as u16;
                break;
            }
        }
    }
    if r.pending == 0 {
        return Outcome::Done(r.error.unwrap_or(Status::SUCCESS));
    }
    Outcome::Submitted
}

/// Everything the command has to send is sent (only Dataset Management sends in steps).
pub fn all_submitted(r: &Request) -> bool {
    r.sqe.opcode != op::DATASET_MANAGEMENT || usize::from(r.next_range) >= r.sqe.dsm_nr()
}

/// The status of a finished bdev I/O.
fn io_status(io: &BdevIo, ok: bool) -> Status {
    if ok {
        return Status::SUCCESS;
    }
    match io.status() {
        IoStatus::Failed(0) => Status::INTERNAL,
        IoStatus::Failed(e) => Status::from_errno(e),
        IoStatus::Aborted => Status::ABORT_REQUESTED,
        _ => Status::INTERNAL,
    }
}

/// Completion callback of every NVM command's bdev I/O.
fn io_done(io: BdevIo, ok: bool, ctx: IoCtx) {
    let st = io_status(&io, ok);
    // Back to the channel's pool before anything resubmits.
    drop(io);
    if let IoCtx::Word(w) = ctx {
        poll_group::io_done(w, st);
    }
}

/// A bdev_io is free again for a request that got NoMemory.
fn io_retry(ctx: IoCtx) {
    if let IoCtx::Word(w) = ctx {
        poll_group::io_retry(w);
    }
}
