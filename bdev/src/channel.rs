//! The per-thread channel of a bdev and the submit path: validate, take an I/O from the pool,
//! split it on the optimal I/O boundary if asked, hand it to the module; and the completion path:
//! statistics, then the submitter's callback.

use crate::bdev::BdevInner;
use crate::error::BdevError;
use crate::io::{BdevIo, IoCallback, IoCtx, IoFlags, IoStatus, IoType};
use crate::iov::{self, IoVec};
use crate::module::BdevChannelOps;
use crate::pool::IoPool;
use crate::stat::IoStat;
use crate::thread::{BdevThread, STALL_SECS};
use poller::{IoChannel, Thread};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::{Arc, Weak};

/// Most I/Os a channel has split into children at once (each split parent sends one at a time).
const SPLIT_POOL: usize = 64;

/// The bdev layer's per-thread context for one bdev, wrapping the module's channel.
pub(crate) struct ChannelInner {
    pub(crate) bdev: Weak<BdevInner>,
    pub(crate) module_ch: Rc<dyn BdevChannelOps>,
    pub(crate) thread: Rc<BdevThread>,
    pub(crate) stat: RefCell<IoStat>,
    pub(crate) block_size: u32,
    pub(crate) num_blocks: u64,
    pub(crate) supported: u32,
    /// Split reads and writes at multiples of this many blocks (0: never).
    pub(crate) split_boundary: u64,
    /// The I/Os submitted to this bdev on this thread.
    pub(crate) pool: IoPool,
    /// The children of split I/Os, apart so parents holding `pool` cannot starve them.
    pub(crate) split_pool: IoPool,
    /// Set while the thread has this channel on its list of waiters to resume.
    pub(crate) wake_queued: Cell<bool>,
    /// Set once the stall watchdog knows this channel.
    pub(crate) watched: Cell<bool>,
    /// I/Os completed, and what the stall watchdog last saw.
    completed: Cell<u64>,
    stall: Cell<StallWatch>,
}

#[derive(Clone, Copy, Default)]
struct StallWatch {
    completed: u64,
    since: u64,
    reported: bool,
}

impl ChannelInner {
    pub(crate) fn new(bdev: &Arc<BdevInner>, thread: &Thread) -> Result<ChannelInner, i32> {
        let module_ch = bdev.ops.create_channel().map_err(|e| e.errno())?;
        let supported = IoType::ALL
            .iter()
            .filter(|t| bdev.ops.io_type_supported(**t))
            .fold(0, |m, t| m | t.bit());
        let p = &bdev.props;
        let split_boundary = if p.split_on_optimal_io_boundary {
            p.optimal_io_boundary as u64
        } else {
            0
        };
        let size = crate::options().bdev_io_cache_size as usize;
        Ok(ChannelInner {
            bdev: Arc::downgrade(bdev),
            module_ch,
            thread: BdevThread::attach_channel(thread),
            stat: RefCell::new(IoStat::default()),
            block_size: p.block_size,
            num_blocks: p.num_blocks,
            supported,
            split_boundary,
            pool: IoPool::new(size),
            split_pool: IoPool::new(if split_boundary != 0 {
                size.min(SPLIT_POOL)
            } else {
                0
            }),
            wake_queued: Cell::new(false),
            watched: Cell::new(false),
            completed: Cell::new(0),
            stall: Cell::new(StallWatch {
                since: thread.now(),
                ..StallWatch::default()
            }),
        })
    }

    /// Resumes waiters while I/Os are free; true when some still wait with I/Os free.
    pub(crate) fn resume_waiters(&self) -> bool {
        let more = self.pool.serve();
        self.split_pool.serve() || more
    }

    /// The stall watchdog's look at this channel: warns once when I/O has been outstanding for
    /// `limit` ticks without one completing, says so again when I/O moves.
    pub(crate) fn check_stall(&self, now: u64, limit: u64) {
        let mut w = self.stall.get();
        let outstanding = self.pool.outstanding() + self.split_pool.outstanding();
        // Only a line that is logged needs the name.
        let name = || {
            self.bdev
                .upgrade()
                .map_or_else(|| "?".to_string(), |b| b.props.name.clone())
        };
        if outstanding == 0 || self.completed.get() != w.completed {
            if w.reported {
                tracing::info!(bdev = name(), "I/O completes again");
            }
            w = StallWatch {
                completed: self.completed.get(),
                since: now,
                reported: false,
            };
        } else if !w.reported && now.saturating_sub(w.since) >= limit {
            let module = self
                .module_ch
                .stall_report()
                .map_or_else(String::new, |r| format!("; {r}"));
            tracing::warn!(
                bdev = name(),
                "no I/O completed for {STALL_SECS} s while {outstanding} of {} are outstanding; \
                 {} submitters wait for a free bdev_io{module}",
                self.pool.capacity(),
                self.pool.waiting() + self.split_pool.waiting(),
            );
            w.reported = true;
        }
        self.stall.set(w);
    }
}

impl Drop for ChannelInner {
    fn drop(&mut self) {
        self.thread.detach_channel();
        // A channel's counters outlive it in the bdev's totals.
        if let Some(b) = self.bdev.upgrade()
            && let Ok(mut total) = b.retired_stat.lock()
        {
            total.add(&self.stat.borrow());
        }
    }
}

/// A submit that did not happen; the context comes back so nothing the caller parked is lost.
#[derive(Debug)]
pub struct SubmitError {
    pub error: BdevError,
    pub ctx: IoCtx,
}

impl std::fmt::Debug for IoCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IoCtx::None => write!(f, "None"),
            IoCtx::Word(w) => write!(f, "Word({w})"),
            IoCtx::Io(_) => write!(f, "Io(..)"),
        }
    }
}

pub type SubmitResult = Result<(), SubmitError>;

/// Where a submit's buffers come from: the caller, or the parent I/O parked in the context.
#[derive(Clone, Copy)]
enum Buffers<'a> {
    Given(&'a [IoVec]),
    Parent,
}

/// A thread's handle for submitting I/O to a bdev through one descriptor.
#[derive(Clone)]
pub struct BdevChannel {
    pub(crate) ch: IoChannel<ChannelInner>,
    pub(crate) writable: bool,
}

impl BdevChannel {
    pub fn read(
        &self,
        iovs: &[IoVec],
        offset_blocks: u64,
        num_blocks: u64,
        cb: IoCallback,
        ctx: IoCtx,
    ) -> SubmitResult {
        self.submit(
            IoType::Read,
            Buffers::Given(iovs),
            offset_blocks,
            num_blocks,
            IoFlags::default(),
            cb,
            ctx,
        )
    }

    pub fn write(
        &self,
        iovs: &[IoVec],
        offset_blocks: u64,
        num_blocks: u64,
        flags: IoFlags,
        cb: IoCallback,
        ctx: IoCtx,
    ) -> SubmitResult {
        self.submit(
            IoType::Write,
            Buffers::Given(iovs),
            offset_blocks,
            num_blocks,
            flags,
            cb,
            ctx,
        )
    }

    pub fn unmap(
        &self,
        offset_blocks: u64,
        num_blocks: u64,
        cb: IoCallback,
        ctx: IoCtx,
    ) -> SubmitResult {
        self.submit(
            IoType::Unmap,
            Buffers::Given(&[]),
            offset_blocks,
            num_blocks,
            IoFlags::default(),
            cb,
            ctx,
        )
    }

    pub fn write_zeroes(
        &self,
        offset_blocks: u64,
        num_blocks: u64,
        cb: IoCallback,
        ctx: IoCtx,
    ) -> SubmitResult {
        self.submit(
            IoType::WriteZeroes,
            Buffers::Given(&[]),
            offset_blocks,
            num_blocks,
            IoFlags::default(),
            cb,
            ctx,
        )
    }

    pub fn flush(
        &self,
        offset_blocks: u64,
        num_blocks: u64,
        cb: IoCallback,
        ctx: IoCtx,
    ) -> SubmitResult {
        self.submit(
            IoType::Flush,
            Buffers::Given(&[]),
            offset_blocks,
            num_blocks,
            IoFlags::default(),
            cb,
            ctx,
        )
    }

    pub fn reset(&self, cb: IoCallback, ctx: IoCtx) -> SubmitResult {
        self.submit(
            IoType::Reset,
            Buffers::Given(&[]),
            0,
            0,
            IoFlags::default(),
            cb,
            ctx,
        )
    }

    /// Sends `parent` down this channel as a child of the same type, range, buffers and flags
    /// (a vbdev passing I/O to its base); `cb` gets the child with the parent in `IoCtx::Io`. A
    /// child that cannot be had now calls `retry` with the parent once an I/O frees; any other
    /// refusal fails the parent with its errno.
    pub fn forward(&self, parent: BdevIo, cb: IoCallback, retry: fn(IoCtx)) {
        let flags = parent.flags();
        self.forward_with(parent, flags, cb, retry)
    }

    /// `forward` with other flags (a vbdev that needs the child to be FUA, say).
    pub fn forward_with(&self, parent: BdevIo, flags: IoFlags, cb: IoCallback, retry: fn(IoCtx)) {
        let (t, offset, blocks) = (
            parent.io_type(),
            parent.offset_blocks(),
            parent.num_blocks(),
        );
        let Err(e) = self.submit(
            t,
            Buffers::Parent,
            offset,
            blocks,
            flags,
            cb,
            IoCtx::Io(parent),
        ) else {
            return;
        };
        let IoCtx::Io(parent) = e.ctx else { return };
        match e.error {
            BdevError::NoMemory => self.queue_io_wait(retry, IoCtx::Io(parent)),
            err => parent.fail(err.errno()),
        }
    }

    /// Calls `f(ctx)` on this thread once this channel has an I/O free again (after a NoMemory
    /// submit); waiters are resumed in the order they queued.
    pub fn queue_io_wait(&self, f: fn(IoCtx), ctx: IoCtx) {
        if self.ch.pool.wait(f, ctx) {
            self.ch.thread.schedule_wake(self.ch.rc());
        }
    }

    pub fn block_size(&self) -> u32 {
        self.ch.block_size
    }

    pub fn num_blocks(&self) -> u64 {
        self.ch.num_blocks
    }

    pub fn io_type_supported(&self, t: IoType) -> bool {
        self.ch.supported & t.bit() != 0
    }

    /// The tick count the layer stamps I/O with right now (shared by a whole completion batch), so
    /// a submitter timing its I/O can avoid reading the clock again.
    pub fn now(&self) -> u64 {
        self.ch.thread.now()
    }

    /// This thread's counters for the bdev.
    pub fn stat(&self) -> IoStat {
        self.ch.stat.borrow().clone()
    }

    /// The module's channel (for a module's own tests and tools).
    pub fn module_channel<T: 'static>(&self) -> Option<Rc<T>> {
        self.ch.module_ch.clone().into_any_rc().downcast::<T>().ok()
    }

    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn submit(
        &self,
        io_type: IoType,
        iovs: Buffers<'_>,
        offset_blocks: u64,
        num_blocks: u64,
        flags: IoFlags,
        cb: IoCallback,
        ctx: IoCtx,
    ) -> SubmitResult {
        // A forwarded child's buffers are its parent's, parked in the context.
        let iovs = match (&ctx, iovs) {
            (_, Buffers::Given(iovs)) => iovs,
            (IoCtx::Io(parent), Buffers::Parent) => parent.iovs(),
            (_, Buffers::Parent) => &[],
        };
        if let Err(error) = self.check(io_type, iovs, offset_blocks, num_blocks) {
            return Err(SubmitError { error, ctx });
        }
        let ch = &self.ch;
        let Some(mut d) = ch.pool.take() else {
            return Err(SubmitError {
                error: BdevError::NoMemory,
                ctx,
            });
        };
        d.io_type = io_type;
        d.offset_blocks = offset_blocks;
        d.num_blocks = num_blocks;
        d.flags = flags;
        match iovs {
            [one] => d.iovs.push(*one),
            _ => d.iovs.extend_from_slice(iovs),
        }
        d.status = IoStatus::Pending;
        d.cb = Some(cb);
        d.ctx = ctx;
        d.ch = Some(ch.rc().clone());
        d.split_child = false;
        d.split_failed = None;
        d.submit_tick = ch.thread.now();
        let io = BdevIo::from_data(d);
        if ch.split_boundary != 0
            && matches!(io_type, IoType::Read | IoType::Write)
            && offset_blocks / ch.split_boundary
                != (offset_blocks + num_blocks - 1) / ch.split_boundary
        {
            let mut io = io;
            io.data_mut().split_next = offset_blocks;
            split_continue(io);
        } else {
            ch.module_ch.submit_request(io);
        }
        Ok(())
    }

    #[inline]
    fn check(
        &self,
        io_type: IoType,
        iovs: &[IoVec],
        offset_blocks: u64,
        num_blocks: u64,
    ) -> Result<(), BdevError> {
        let ch = &self.ch;
        if ch.supported & io_type.bit() == 0 {
            return Err(BdevError::NotSupported(io_type.name()));
        }
        if !self.writable && matches!(io_type, IoType::Write | IoType::Unmap | IoType::WriteZeroes)
        {
            return Err(BdevError::ReadOnly);
        }
        if io_type == IoType::Reset {
            return Ok(());
        }
        match offset_blocks.checked_add(num_blocks) {
            Some(end) if end <= ch.num_blocks => {}
            _ => return Err(BdevError::OutOfRange),
        }
        if matches!(io_type, IoType::Read | IoType::Write) {
            if num_blocks == 0 {
                return Err(BdevError::invalid("zero-length I/O"));
            }
            if iov::total_len(iovs) as u64 != num_blocks * ch.block_size as u64 {
                return Err(BdevError::invalid(
                    "buffer length does not match the block count",
                ));
            }
        }
        Ok(())
    }
}

/// Runs a completed I/O's accounting and callback (from the thread's completion poller).
pub(crate) fn finish(mut io: BdevIo) {
    let d = io.data_mut();
    let status = d.status;
    if let Some(ch) = d.ch.as_ref() {
        ch.completed.set(ch.completed.get() + 1);
    }
    if !d.split_child
        && let Some(ch) = d.ch.as_ref()
    {
        let mut stat = ch.stat.borrow_mut();
        match status {
            IoStatus::Success => {
                let ticks = ch.thread.now().saturating_sub(d.submit_tick);
                stat.record(d.io_type, d.num_blocks * ch.block_size as u64, ticks);
            }
            IoStatus::Failed(e) => stat.record_error(e),
            _ => stat.record_error(libc::EIO),
        }
    }
    let cb = d.cb.take();
    let ctx = std::mem::replace(&mut d.ctx, IoCtx::None);
    if let Some(cb) = cb {
        cb(io, status == IoStatus::Success, ctx);
    }
}

/// Hands an I/O back to its module (after it reported NoMemory).
pub(crate) fn resubmit(mut io: BdevIo) {
    io.data_mut().status = IoStatus::Pending;
    if let Some(ch) = io.data().ch.clone() {
        ch.module_ch.submit_request(io);
    }
}

/// Submits the next child of a split parent, or completes the parent when all are done.
/// Children go one at a time: the parent travels in the child's context.
fn split_continue(mut parent: BdevIo) {
    let Some(ch) = parent.data().ch.clone() else {
        return;
    };
    let d = parent.data();
    let end = d.offset_blocks + d.num_blocks;
    let next = d.split_next;
    if let Some(e) = d.split_failed {
        parent.complete(IoStatus::Failed(e));
        return;
    }
    if next >= end {
        parent.complete(IoStatus::Success);
        return;
    }
    let Some(mut c) = ch.split_pool.take() else {
        if ch.split_pool.wait(split_resume, IoCtx::Io(parent)) {
            ch.thread.schedule_wake(&ch);
        }
        return;
    };
    let child_end = end.min((next / ch.split_boundary + 1) * ch.split_boundary);
    let bs = ch.block_size as usize;
    c.io_type = d.io_type;
    c.offset_blocks = next;
    c.num_blocks = child_end - next;
    c.flags = d.flags;
    iov::slice_into(
        &d.iovs,
        (next - d.offset_blocks) as usize * bs,
        (child_end - next) as usize * bs,
        &mut c.iovs,
    );
    c.status = IoStatus::Pending;
    c.cb = Some(split_child_done);
    c.ch = Some(ch.clone());
    c.split_child = true;
    c.submit_tick = ch.thread.now();
    parent.data_mut().split_next = child_end;
    c.ctx = IoCtx::Io(parent);
    ch.module_ch.submit_request(BdevIo::from_data(c));
}

fn split_resume(ctx: IoCtx) {
    if let IoCtx::Io(parent) = ctx {
        split_continue(parent);
    }
}

fn split_child_done(child: BdevIo, ok: bool, ctx: IoCtx) {
    let IoCtx::Io(mut parent) = ctx else { return };
    if !ok {
        let errno = match child.status() {
            IoStatus::Failed(e) => e,
            _ => libc::EIO,
        };
        parent.data_mut().split_failed = Some(errno);
    }
    drop(child);
    split_continue(parent);
}
