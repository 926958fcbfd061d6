//! `BdevIo`: one block I/O, from its channel's pool, owned by exactly one party at a time.
//!
//! The submitter gets it from the pool, the bdev layer hands it to the module, the module completes
//! it, the layer hands it back to the submitter's callback, and dropping it returns it to the pool.
//! Ownership moves with the value, so no reference counting or locking is needed per I/O and a
//! lost or doubly-completed I/O is impossible to write in safe code.
//!
//! Completions are always deferred to the thread's completion poller: a module may complete inside
//! `submit_request` and the caller's callback still never runs inside its own submit call.

use crate::channel::ChannelInner;
use crate::iov::IoVec;
use std::rc::Rc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IoType {
    Read,
    Write,
    Flush,
    Unmap,
    WriteZeroes,
    Reset,
}

impl IoType {
    pub const ALL: [IoType; 6] = [
        IoType::Read,
        IoType::Write,
        IoType::Flush,
        IoType::Unmap,
        IoType::WriteZeroes,
        IoType::Reset,
    ];

    /// SPDK's key in `supported_io_types`.
    pub fn name(self) -> &'static str {
        match self {
            IoType::Read => "read",
            IoType::Write => "write",
            IoType::Flush => "flush",
            IoType::Unmap => "unmap",
            IoType::WriteZeroes => "write_zeroes",
            IoType::Reset => "reset",
        }
    }

    pub(crate) fn bit(self) -> u32 {
        1 << self as u32
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoStatus {
    Pending,
    Success,
    /// Failed with an errno (EIO unless the module knows better).
    Failed(i32),
    /// The module ran out of a resource: the layer resubmits the I/O once another one completes.
    NoMemory,
    Aborted,
}

/// Per-I/O flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoFlags {
    /// Force unit access: the write is durable when it completes.
    pub fua: bool,
}

/// What the submitter gets back with its completion: nothing, a word (a task index), or an I/O it
/// parked here (a vbdev's parent I/O travels with its child this way).
pub enum IoCtx {
    None,
    Word(usize),
    Io(BdevIo),
}

/// Completion callback: the finished I/O (drop it to recycle), success, and the submitter's context.
pub type IoCallback = fn(io: BdevIo, success: bool, ctx: IoCtx);

pub(crate) struct IoData {
    pub(crate) io_type: IoType,
    pub(crate) offset_blocks: u64,
    pub(crate) num_blocks: u64,
    pub(crate) flags: IoFlags,
    pub(crate) iovs: Vec<IoVec>,
    pub(crate) status: IoStatus,
    pub(crate) cb: Option<IoCallback>,
    pub(crate) ctx: IoCtx,
    /// The bdev-layer channel it was submitted on; None while pooled.
    pub(crate) ch: Option<Rc<ChannelInner>>,
    pub(crate) submit_tick: u64,
    /// A split child: from the channel's split pool, and skips the statistics (its parent
    /// counts once).
    pub(crate) split_child: bool,
    /// Next block a split parent hands to a child.
    pub(crate) split_next: u64,
    pub(crate) split_failed: Option<i32>,
    /// Scratch space for the module that executes the I/O.
    pub driver_ctx: [u64; 4],
}

/// A block I/O. Dropping it returns it to its channel's pool.
pub struct BdevIo(Option<Box<IoData>>);

impl BdevIo {
    #[inline(always)]
    pub(crate) fn data(&self) -> &IoData {
        match &self.0 {
            Some(d) => d,
            None => unreachable!("BdevIo used after release"),
        }
    }

    #[inline(always)]
    pub(crate) fn data_mut(&mut self) -> &mut IoData {
        match &mut self.0 {
            Some(d) => d,
            None => unreachable!("BdevIo used after release"),
        }
    }

    pub fn io_type(&self) -> IoType {
        self.data().io_type
    }

    pub fn offset_blocks(&self) -> u64 {
        self.data().offset_blocks
    }

    pub fn num_blocks(&self) -> u64 {
        self.data().num_blocks
    }

    pub fn flags(&self) -> IoFlags {
        self.data().flags
    }

    pub fn iovs(&self) -> &[IoVec] {
        &self.data().iovs
    }

    pub fn block_size(&self) -> u32 {
        self.data().ch.as_ref().map(|c| c.block_size).unwrap_or(512)
    }

    /// Byte offset and length on the bdev.
    pub fn byte_range(&self) -> (u64, u64) {
        let bs = self.block_size() as u64;
        (self.offset_blocks() * bs, self.num_blocks() * bs)
    }

    pub fn status(&self) -> IoStatus {
        self.data().status
    }

    pub fn driver_ctx(&mut self) -> &mut [u64; 4] {
        &mut self.data_mut().driver_ctx
    }

    /// `driver_ctx`, read-only.
    pub fn driver_ctx_ref(&self) -> &[u64; 4] {
        &self.data().driver_ctx
    }

    /// The module's per-thread channel this I/O was submitted to.
    pub fn module_channel<T: 'static>(&self) -> Option<Rc<T>> {
        let ch = self.data().ch.as_ref()?;
        ch.module_ch.clone().into_any_rc().downcast::<T>().ok()
    }

    /// Finishes the I/O; the submitter's callback runs from the thread's completion poller.
    pub fn complete(mut self, status: IoStatus) {
        self.data_mut().status = status;
        let Some(ch) = self.data().ch.clone() else {
            return;
        };
        if status == IoStatus::NoMemory {
            ch.thread.push_resubmit(self);
        } else {
            ch.thread.push_completion(self);
        }
    }

    pub fn complete_ok(self) {
        self.complete(IoStatus::Success)
    }

    pub fn fail(self, errno: i32) {
        self.complete(IoStatus::Failed(errno))
    }

    pub fn is_success(&self) -> bool {
        self.data().status == IoStatus::Success
    }
}

impl Drop for BdevIo {
    fn drop(&mut self) {
        let Some(mut data) = self.0.take() else {
            return;
        };
        let Some(ch) = data.ch.take() else { return };
        data.iovs.clear();
        data.ctx = IoCtx::None;
        data.cb = None;
        let pool = if data.split_child {
            &ch.split_pool
        } else {
            &ch.pool
        };
        if pool.give(data) {
            ch.thread.schedule_wake(&ch);
        }
    }
}

impl IoData {
    pub(crate) fn new() -> IoData {
        IoData {
            io_type: IoType::Read,
            offset_blocks: 0,
            num_blocks: 0,
            flags: IoFlags::default(),
            iovs: Vec::with_capacity(16),
            status: IoStatus::Pending,
            cb: None,
            ctx: IoCtx::None,
            ch: None,
            submit_tick: 0,
            split_child: false,
            split_next: 0,
            split_failed: None,
            driver_ctx: [0; 4],
        }
    }
}

impl BdevIo {
    pub(crate) fn from_data(d: Box<IoData>) -> BdevIo {
        BdevIo(Some(d))
    }
}
