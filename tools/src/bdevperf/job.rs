//! The I/O engine: one job per (bdev, core) on its own lightweight thread.
//!
//! A job opens its descriptor and channel on its thread, allocates `-q` tasks with their buffers up
//! front, and then keeps every task in flight: each completion records the latency and resubmits
//! the task. Nothing on that path allocates, locks, hashes or formats: the completion callback is a
//! plain `fn`, the task travels as `IoCtx::Word(slot << 32 | task)`, and the job itself sits in a
//! per-OS-thread slab (several jobs may share a reactor). When the run ends the job stops
//! submitting, drains, reports to the coordinator by message and closes its channel and descriptor.

use crate::pattern::{self, BlockClass, PatternSpec};
use bdev::{
    BdevChannel, BdevDesc, BdevError, BdevEvent, BdevIo, DmaBuf, IoCtx, IoFlags, IoType, IoVec,
    SubmitError,
};
use hdrhistogram::Histogram;
use poller::{PollStatus, Poller, Thread, ThreadHandle};
use std::cell::RefCell;

/// SPDK's workloads plus pcache's `check`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    Read,
    Write,
    RandRead,
    RandWrite,
    Rw,
    RandRw,
    Verify,
    Flush,
    Unmap,
    WriteZeroes,
    Check,
}

impl Workload {
    pub const NAMES: &'static str =
        "read, write, randread, randwrite, rw, randrw, verify, flush, unmap, write_zeroes, check";

    pub fn parse(s: &str) -> Option<Workload> {
        Some(match s {
            "read" => Workload::Read,
            "write" => Workload::Write,
            "randread" => Workload::RandRead,
            "randwrite" => Workload::RandWrite,
            "rw" => Workload::Rw,
            "randrw" => Workload::RandRw,
            "verify" => Workload::Verify,
            "flush" => Workload::Flush,
            "unmap" => Workload::Unmap,
            "write_zeroes" => Workload::WriteZeroes,
            "check" => Workload::Check,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Workload::Read => "read",
            Workload::Write => "write",
            Workload::RandRead => "randread",
            Workload::RandWrite => "randwrite",
            Workload::Rw => "rw",
            Workload::RandRw => "randrw",
            Workload::Verify => "verify",
            Workload::Flush => "flush",
            Workload::Unmap => "unmap",
            Workload::WriteZeroes => "write_zeroes",
            Workload::Check => "check",
        }
    }

    pub fn is_mixed(self) -> bool {
        matches!(self, Workload::Rw | Workload::RandRw)
    }

    fn is_random(self) -> bool {
        matches!(
            self,
            Workload::RandRead | Workload::RandWrite | Workload::RandRw
        )
    }

    /// The I/O types the bdev must support.
    pub fn io_types(self, read_pct: u32) -> Vec<IoType> {
        match self {
            Workload::Read | Workload::RandRead | Workload::Check => vec![IoType::Read],
            Workload::Write | Workload::RandWrite => vec![IoType::Write],
            Workload::Verify => vec![IoType::Read, IoType::Write],
            Workload::Rw | Workload::RandRw => match read_pct {
                100 => vec![IoType::Read],
                0 => vec![IoType::Write],
                _ => vec![IoType::Read, IoType::Write],
            },
            Workload::Flush => vec![IoType::Flush],
            Workload::Unmap => vec![IoType::Unmap],
            Workload::WriteZeroes => vec![IoType::WriteZeroes],
        }
    }

    fn writes(self, read_pct: u32) -> bool {
        self.io_types(read_pct)
            .iter()
            .any(|t| matches!(t, IoType::Write | IoType::Unmap | IoType::WriteZeroes))
    }

    fn has_data(self) -> bool {
        !matches!(
            self,
            Workload::Flush | Workload::Unmap | Workload::WriteZeroes
        )
    }
}

/// What one job does; built by the coordinator.
#[derive(Clone, Debug)]
pub struct JobSpec {
    /// Position in the run (results are reported in this order).
    pub index: usize,
    pub bdev: String,
    pub core: u32,
    pub workload: Workload,
    /// Reads out of 100 for rw/randrw.
    pub read_pct: u32,
    pub queue_depth: u32,
    pub io_size: u32,
    /// None: until the range is covered once (pattern write, check).
    pub run_us: Option<u64>,
    pub offset_blocks: u64,
    /// 0: to the end of the bdev.
    pub num_blocks: u64,
    pub pattern: Option<PatternSpec>,
    pub continue_on_failure: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum JobStatus {
    Finished,
    /// Stopped early: the bdev went away or the application is shutting down.
    Terminated,
    /// An I/O failed or a block miscompared (and -f was not given), or the job could not run.
    Failed,
}

impl JobStatus {
    pub fn name(self) -> &'static str {
        match self {
            JobStatus::Finished => "finished",
            JobStatus::Terminated => "terminated",
            JobStatus::Failed => "failed",
        }
    }
}

/// The block classes a `check` job counted.
#[derive(Clone, Debug, Default)]
pub struct CheckCounts {
    pub matching: u64,
    pub other_pattern: u64,
    pub foreign: u64,
    /// The first few foreign LBAs, for the report.
    pub first_foreign: Vec<u64>,
}

const FIRST_FOREIGN: usize = 16;

/// A finished job, sent to the coordinator.
pub struct JobResult {
    pub spec: JobSpec,
    pub status: JobStatus,
    pub runtime_s: f64,
    pub io_completed: u64,
    pub io_failed: u64,
    pub miscompares: u64,
    pub lat_sum_ticks: u64,
    /// Latencies in ticks.
    pub hist: Histogram<u64>,
    /// The LBA range the job worked on (start, blocks).
    pub range: (u64, u64),
    pub block_size: u32,
    /// Pattern write: blocks written; check: blocks read and classified.
    pub blocks_covered: Option<u64>,
    pub check: Option<CheckCounts>,
}

/// A job that opened its bdev and is waiting for the signal to start.
pub struct Prepared {
    pub thread: ThreadHandle,
    pub slot: usize,
}

/// How a job reports back: each runs on the coordinator's thread.
#[derive(Clone, Copy)]
pub struct Hooks {
    pub prepared: fn(index: usize, Result<Prepared, String>),
    pub finished: fn(JobResult),
}

/// The histogram every job records into: 1 tick to an hour, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    let hour = poller::time::ticks_hz().saturating_mul(3600).max(2);
    Histogram::new_with_bounds(1, hour, 3)
        .or_else(|_| Histogram::new(3))
        .unwrap_or_else(|_| unreachable!("3 significant digits are always valid"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Read,
    Write,
    Flush,
    Unmap,
    WriteZeroes,
    /// The read-back half of a verify I/O.
    VerifyRead,
}

/// How the next offset is chosen.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Order {
    /// Sequential, wrapping at the end of the range.
    Wrap,
    /// Uniformly random, aligned to the I/O size.
    Random,
    /// Sequential, every block once, then no more work.
    Once,
}

struct Task {
    buf: Option<DmaBuf>,
    /// The segment of the current I/O (the whole buffer, or a prefix for a short last I/O).
    iov: Option<IoVec>,
    /// Verify reads back into this one.
    vbuf: Option<DmaBuf>,
    viov: Option<IoVec>,
    offset: u64,
    blocks: u64,
    op: Op,
    submit_tick: u64,
}

struct Job {
    spec: JobSpec,
    slot: usize,
    thread: ThreadHandle,
    coord: ThreadHandle,
    hooks: Hooks,
    ch: BdevChannel,
    desc: BdevDesc,
    tasks: Vec<Task>,
    order: Order,
    /// The op of every I/O, except for rw/randrw (mixed) and the verify read-back.
    op: Op,
    mixed: bool,
    verify: bool,
    block_size: u64,
    io_blocks: u64,
    range_start: u64,
    range_blocks: u64,
    size_in_ios: u64,
    /// Next I/O index (Wrap) or next block (Once), relative to the range.
    next: u64,
    rng: u64,
    in_flight: u32,
    started: bool,
    draining: bool,
    finished: bool,
    status: JobStatus,
    start_tick: u64,
    end_tick: u64,
    io_completed: u64,
    io_failed: u64,
    miscompares: u64,
    lat_sum: u64,
    hist: Histogram<u64>,
    timer: Option<Poller>,
    /// Verify: one bit per I/O slot of the range, set while a task owns it.
    outstanding: Vec<u64>,
    verify_seed: u64,
    write_version: u64,
    blocks_covered: u64,
    check: CheckCounts,
}

thread_local! {
    /// The jobs of the lightweight threads this OS thread polls. Slots are never reused, so a late
    /// event for a finished job finds an empty slot rather than another job.
    static JOBS: RefCell<Vec<Option<Box<Job>>>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on the job in `slot`, if it is still there.
#[inline(always)]
fn with_job<R>(slot: usize, f: impl FnOnce(&mut Job) -> R) -> Option<R> {
    JOBS.with_borrow_mut(|jobs| match jobs.get_mut(slot) {
        Some(Some(job)) => Some(f(job)),
        _ => None,
    })
}

#[inline(always)]
fn word(slot: usize, task: usize) -> IoCtx {
    IoCtx::Word((slot << 32) | task)
}

#[inline(always)]
fn unword(ctx: IoCtx) -> Option<(usize, usize)> {
    match ctx {
        IoCtx::Word(w) => Some((w >> 32, w & 0xffff_ffff)),
        _ => None,
    }
}

/// xorshift64*: a few cycles, no state but one word.
#[inline(always)]
fn xorshift(s: &mut u64) -> u64 {
    let mut x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// A uniform value in `0..n` from a random word, without a division.
#[inline(always)]
fn below(r: u64, n: u64) -> u64 {
    ((r as u128 * n as u128) >> 64) as u64
}

fn seed_for(index: usize) -> u64 {
    let mut z = poller::time::ticks() ^ ((std::process::id() as u64) << 32) ^ index as u64;
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) | 1
}

/// Step 1, on the job's own thread: open the bdev, get a channel, allocate the tasks. Reports to
/// the coordinator either way.
pub fn prepare(spec: JobSpec, coord: ThreadHandle, hooks: Hooks) {
    let index = spec.index;
    let res = build(spec, coord.clone(), hooks).map(|job| {
        let prepared = Prepared {
            thread: job.thread.clone(),
            slot: job.slot,
        };
        let slot = job.slot;
        JOBS.with_borrow_mut(|jobs| jobs[slot] = Some(job));
        prepared
    });
    coord.send_msg(move || (hooks.prepared)(index, res));
}

fn build(spec: JobSpec, coord: ThreadHandle, hooks: Hooks) -> Result<Box<Job>, String> {
    let thread = Thread::current_handle().ok_or("job not started on a reactor thread")?;
    let slot = JOBS.with_borrow_mut(|jobs| {
        jobs.push(None);
        jobs.len() - 1
    });
    let w = spec.workload;
    let desc = BdevDesc::open(&spec.bdev, w.writes(spec.read_pct), move |ev| {
        if ev == BdevEvent::Remove {
            with_job(slot, |j| j.drain(JobStatus::Terminated));
        }
    })
    .map_err(|e| format!("Could not open bdev {}: {e}", spec.bdev))?;
    let bdev = desc.bdev().clone();
    let ch = desc
        .get_io_channel()
        .map_err(|e| format!("Could not get an I/O channel for {}: {e}", spec.bdev))?;
    let bs = bdev.block_size() as u64;
    if !(spec.io_size as u64).is_multiple_of(bs) || spec.io_size == 0 {
        return Err(format!(
            "IO size ({}) is not a multiple of the block size of bdev {} ({bs})",
            spec.io_size, spec.bdev
        ));
    }
    if spec.pattern.is_some() && (bs as usize) < pattern::MIN_BLOCK {
        return Err(format!(
            "bdev {} has {bs}-byte blocks, too small for a pattern header",
            spec.bdev
        ));
    }
    for t in w.io_types(spec.read_pct) {
        if !bdev.io_type_supported(t) {
            return Err(format!("bdev {} does not support {}", spec.bdev, t.name()));
        }
    }
    let io_blocks = spec.io_size as u64 / bs;
    let range_start = spec.offset_blocks.min(bdev.num_blocks());
    let range_blocks = match spec.num_blocks {
        0 => bdev.num_blocks() - range_start,
        n => n.min(bdev.num_blocks() - range_start),
    };
    let size_in_ios = range_blocks / io_blocks;
    let order = match w {
        _ if w.is_random() => Order::Random,
        Workload::Check => Order::Once,
        Workload::Write if spec.pattern.is_some() => Order::Once,
        _ => Order::Wrap,
    };
    if (order != Order::Once && size_in_ios == 0) || range_blocks == 0 {
        return Err(format!(
            "bdev {} ({range_blocks} blocks of {bs} bytes in range) is smaller than one {}-byte I/O",
            spec.bdev, spec.io_size
        ));
    }
    let verify = w == Workload::Verify;
    let mut depth = spec.queue_depth as u64;
    if verify {
        // Verify never has two tasks on one I/O slot, so it cannot keep more in flight than that.
        depth = depth.min(size_in_ios);
    }
    let tasks = (0..depth)
        .map(|_| new_task(w, spec.io_size as usize, w.writes(spec.read_pct), verify))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| {
            format!(
                "Cannot allocate {} buffers of {} bytes",
                depth, spec.io_size
            )
        })?;
    let op = match w {
        Workload::Read | Workload::RandRead | Workload::Check => Op::Read,
        Workload::Flush => Op::Flush,
        Workload::Unmap => Op::Unmap,
        Workload::WriteZeroes => Op::WriteZeroes,
        Workload::Rw | Workload::RandRw if spec.read_pct == 100 => Op::Read,
        _ => Op::Write,
    };
    let mixed = w.is_mixed() && spec.read_pct != 0 && spec.read_pct != 100;
    let rng = seed_for(spec.index);
    Ok(Box::new(Job {
        slot,
        thread,
        coord,
        hooks,
        ch,
        desc,
        tasks,
        order,
        op,
        mixed,
        verify,
        block_size: bs,
        io_blocks,
        range_start,
        range_blocks,
        size_in_ios,
        next: 0,
        rng,
        in_flight: 0,
        started: false,
        draining: false,
        finished: false,
        status: JobStatus::Finished,
        start_tick: 0,
        end_tick: 0,
        io_completed: 0,
        io_failed: 0,
        miscompares: 0,
        lat_sum: 0,
        hist: new_histogram(),
        timer: None,
        outstanding: if verify {
            vec![0u64; size_in_ios.div_ceil(64) as usize]
        } else {
            Vec::new()
        },
        verify_seed: seed_for(spec.index + 1),
        write_version: 0,
        blocks_covered: 0,
        check: CheckCounts {
            first_foreign: Vec::with_capacity(FIRST_FOREIGN),
            ..Default::default()
        },
        spec,
    }))
}

fn new_task(w: Workload, io_size: usize, writes: bool, verify: bool) -> Option<Task> {
    let (buf, iov) = if w.has_data() {
        let mut b = DmaBuf::new(io_size, 4096)?;
        if writes {
            // Plain writes send whatever the buffer holds; make it something other than zeroes.
            b.as_mut_slice()
                .iter_mut()
                .enumerate()
                .for_each(|(i, x)| *x = (i as u8) ^ 0x5a);
        }
        // SAFETY: the buffer belongs to the task, which lives in the job until the job is torn
        // down, and a job is torn down only once no I/O is in flight.
        let v = unsafe { b.iovec() };
        (Some(b), Some(v))
    } else {
        (None, None)
    };
    let (vbuf, viov) = if verify {
        let b = DmaBuf::new(io_size, 4096)?;
        // SAFETY: as above.
        let v = unsafe { b.iovec() };
        (Some(b), Some(v))
    } else {
        (None, None)
    };
    Some(Task {
        buf,
        iov,
        vbuf,
        viov,
        offset: 0,
        blocks: 0,
        op: Op::Read,
        submit_tick: 0,
    })
}

/// Step 2, on the job's thread: start the clock and put every task in flight.
pub fn go(slot: usize) {
    with_job(slot, Job::start);
}

/// Instead of step 2: another job failed to prepare, so this one ends without running.
pub fn abort(slot: usize) {
    with_job(slot, |j| {
        j.status = JobStatus::Failed;
        j.draining = true;
        j.finish_if_idle();
    });
}

impl Job {
    fn start(&mut self) {
        self.started = true;
        self.start_tick = poller::time::ticks();
        if let Some(us) = self.spec.run_us {
            let slot = self.slot;
            self.timer = Poller::register("bdevperf_run", us.max(1), move || {
                with_job(slot, |j| j.drain(JobStatus::Finished));
                PollStatus::Busy
            });
        }
        let now = self.start_tick;
        for t in 0..self.tasks.len() {
            if self.draining {
                break;
            }
            // Counted before the submit: a submit that fails at once retires the task again.
            self.in_flight += 1;
            if !self.submit_new(t, now) {
                self.in_flight -= 1;
                break;
            }
        }
        self.finish_if_idle();
    }

    /// Picks the next I/O for task `t` (counted in flight by the caller) and submits it. False
    /// when there is no more work.
    #[inline(always)]
    fn submit_new(&mut self, t: usize, now: u64) -> bool {
        let (offset, blocks) = match self.order {
            Order::Random => {
                let r = xorshift(&mut self.rng);
                (
                    self.range_start + below(r, self.size_in_ios) * self.io_blocks,
                    self.io_blocks,
                )
            }
            Order::Wrap => {
                let mut i = self.next_wrap();
                if self.verify {
                    while self.outstanding[(i / 64) as usize] & (1 << (i % 64)) != 0 {
                        i = self.next_wrap();
                    }
                    self.outstanding[(i / 64) as usize] |= 1 << (i % 64);
                }
                (self.range_start + i * self.io_blocks, self.io_blocks)
            }
            Order::Once => {
                if self.next >= self.range_blocks {
                    return false;
                }
                let n = self.io_blocks.min(self.range_blocks - self.next);
                let off = self.range_start + self.next;
                self.next += n;
                (off, n)
            }
        };
        let op = if self.mixed {
            let r = xorshift(&mut self.rng);
            if below(r, 100) < self.spec.read_pct as u64 {
                Op::Read
            } else {
                Op::Write
            }
        } else {
            self.op
        };
        let task = &mut self.tasks[t];
        task.offset = offset;
        task.blocks = blocks;
        task.op = op;
        task.submit_tick = now;
        if self.order == Order::Once
            && let Some(b) = &task.buf
        {
            // SAFETY: a prefix of the task's own buffer (see `new_task`).
            task.iov =
                Some(unsafe { IoVec::new(b.as_mut_ptr(), (blocks * self.block_size) as usize) });
        }
        if op == Op::Write && (self.verify || self.spec.pattern.is_some()) {
            self.fill(t);
        }
        self.issue(t);
        true
    }

    #[inline(always)]
    fn next_wrap(&mut self) -> u64 {
        let i = self.next;
        self.next += 1;
        if self.next == self.size_in_ios {
            self.next = 0;
        }
        i
    }

    /// Writes the self-describing blocks of task `t` into its buffer.
    fn fill(&mut self, t: usize) {
        let (seed, version) = match self.spec.pattern {
            Some(p) => (p.seed, p.version),
            None => {
                // Verify: a new version per write, so stale data never passes for new.
                self.write_version += 1;
                (self.verify_seed, self.write_version)
            }
        };
        let bs = self.block_size as usize;
        let task = &mut self.tasks[t];
        let len = task.blocks as usize * bs;
        if let Some(b) = task.buf.as_mut() {
            pattern::fill_blocks(&mut b.as_mut_slice()[..len], bs, task.offset, seed, version);
        }
    }

    /// Hands task `t`'s current I/O to the bdev layer.
    #[inline(always)]
    fn issue(&mut self, t: usize) {
        let ch = &self.ch;
        let task = &self.tasks[t];
        let ctx = word(self.slot, t);
        let (off, n) = (task.offset, task.blocks);
        let r = match task.op {
            Op::Read => ch.read(task.iov.as_slice(), off, n, on_complete, ctx),
            Op::Write => ch.write(
                task.iov.as_slice(),
                off,
                n,
                IoFlags::default(),
                on_complete,
                ctx,
            ),
            Op::VerifyRead => ch.read(task.viov.as_slice(), off, n, on_complete, ctx),
            Op::Flush => ch.flush(off, n, on_complete, ctx),
            Op::Unmap => ch.unmap(off, n, on_complete, ctx),
            Op::WriteZeroes => ch.write_zeroes(off, n, on_complete, ctx),
        };
        if let Err(e) = r {
            self.submit_failed(t, e);
        }
    }

    #[cold]
    fn submit_failed(&mut self, t: usize, e: SubmitError) {
        if e.error == BdevError::NoMemory {
            self.ch.queue_io_wait(retry, e.ctx);
            return;
        }
        println!(
            "Failed to submit bdev_io to {} at offset {}: {}",
            self.spec.bdev, self.tasks[t].offset, e.error
        );
        self.io_failed += 1;
        self.release(t);
        self.drain(JobStatus::Failed);
        self.in_flight -= 1;
        self.finish_if_idle();
    }

    /// Task `t`'s I/O completed.
    #[inline(always)]
    fn complete(&mut self, t: usize, ok: bool) {
        // The layer's batch clock: one TSC read per completion batch, shared with the resubmit.
        let now = self.ch.now();
        if !ok {
            return self.io_error(t, now);
        }
        match self.tasks[t].op {
            Op::Write if self.verify => {
                self.tasks[t].op = Op::VerifyRead;
                self.issue(t);
                return;
            }
            Op::VerifyRead if !self.compare(t) => return self.miscompare(t, now),
            Op::Read if self.order == Order::Once => self.classify(t),
            Op::Write if self.order == Order::Once => self.blocks_covered += self.tasks[t].blocks,
            _ => {}
        }
        let lat = now.wrapping_sub(self.tasks[t].submit_tick);
        self.hist.saturating_record(lat);
        self.lat_sum += lat;
        self.io_completed += 1;
        self.next_io(t, now);
    }

    /// Resubmits task `t`, or retires it when the run is over.
    #[inline(always)]
    fn next_io(&mut self, t: usize, now: u64) {
        self.release(t);
        if !self.draining && self.submit_new(t, now) {
            return;
        }
        self.in_flight -= 1;
        self.finish_if_idle();
    }

    #[inline(always)]
    fn release(&mut self, t: usize) {
        if self.verify {
            let i = (self.tasks[t].offset - self.range_start) / self.io_blocks;
            self.outstanding[(i / 64) as usize] &= !(1 << (i % 64));
        }
    }

    #[cold]
    fn io_error(&mut self, t: usize, now: u64) {
        self.io_failed += 1;
        if !self.spec.continue_on_failure && !self.draining {
            println!(
                "task offset: {} on job bdev={} fails",
                self.tasks[t].offset, self.spec.bdev
            );
            self.drain(JobStatus::Failed);
        }
        self.next_io(t, now);
    }

    fn compare(&self, t: usize) -> bool {
        let task = &self.tasks[t];
        let len = (task.blocks * self.block_size) as usize;
        match (&task.buf, &task.vbuf) {
            (Some(w), Some(r)) => w.as_slice()[..len] == r.as_slice()[..len],
            _ => true,
        }
    }

    #[cold]
    fn miscompare(&mut self, t: usize, now: u64) {
        self.miscompares += 1;
        self.io_failed += 1;
        let task = &self.tasks[t];
        let bs = self.block_size as usize;
        let (mut first, mut count) = (None, 0);
        if let (Some(w), Some(r)) = (&task.buf, &task.vbuf) {
            let (w, r) = (w.as_slice(), r.as_slice());
            for i in 0..task.blocks as usize {
                if w[i * bs..(i + 1) * bs] != r[i * bs..(i + 1) * bs] {
                    first.get_or_insert(task.offset + i as u64);
                    count += 1;
                }
            }
        }
        println!(
            "Buffer mismatch! Target: {} Disk Offset: {} ({count} of {} blocks differ, first at LBA {})",
            self.spec.bdev,
            task.offset,
            task.blocks,
            first.unwrap_or(task.offset)
        );
        if !self.spec.continue_on_failure {
            self.drain(JobStatus::Failed);
        }
        self.next_io(t, now);
    }

    /// Check: sorts every block of task `t`'s read into matching / other pattern / foreign.
    fn classify(&mut self, t: usize) {
        let Some(spec) = self.spec.pattern else {
            return;
        };
        let bs = self.block_size as usize;
        let task = &self.tasks[t];
        let Some(buf) = &task.buf else { return };
        let data = &buf.as_slice()[..task.blocks as usize * bs];
        for (i, block) in data.chunks_exact(bs).enumerate() {
            let lba = task.offset + i as u64;
            match pattern::classify(block, lba, &spec) {
                BlockClass::Matching => self.check.matching += 1,
                BlockClass::OtherPattern => self.check.other_pattern += 1,
                BlockClass::Foreign => {
                    self.check.foreign += 1;
                    if self.check.first_foreign.len() < FIRST_FOREIGN {
                        self.check.first_foreign.push(lba);
                    }
                }
            }
        }
        self.blocks_covered += task.blocks;
    }

    /// Stops submitting; the job ends when the last I/O in flight completes.
    fn drain(&mut self, status: JobStatus) {
        self.status = self.status.max(status);
        self.draining = true;
        if let Some(p) = self.timer.take() {
            p.unregister();
        }
        self.finish_if_idle();
    }

    fn finish_if_idle(&mut self) {
        if self.in_flight != 0 || self.finished || !(self.draining || self.started) {
            return;
        }
        self.finished = true;
        self.end_tick = poller::time::ticks();
        let slot = self.slot;
        // Torn down from a message: never inside a completion the bdev layer is still running.
        self.thread.send_msg(move || teardown(slot));
    }

    /// The report, and the channel and descriptor to close after sending it.
    fn into_parts(self: Box<Self>) -> (JobResult, BdevChannel, BdevDesc) {
        let runtime_s = if self.started {
            self.end_tick.saturating_sub(self.start_tick) as f64 / poller::time::ticks_hz() as f64
        } else {
            0.0
        };
        let j = *self;
        let result = JobResult {
            status: j.status,
            runtime_s,
            io_completed: j.io_completed,
            io_failed: j.io_failed,
            miscompares: j.miscompares,
            lat_sum_ticks: j.lat_sum,
            hist: j.hist,
            range: (j.range_start, j.range_blocks),
            block_size: j.block_size as u32,
            blocks_covered: (j.order == Order::Once).then_some(j.blocks_covered),
            check: (j.spec.workload == Workload::Check).then_some(j.check),
            spec: j.spec,
        };
        // The tasks (and their buffers) go here: nothing is in flight any more.
        drop(j.tasks);
        (result, j.ch, j.desc)
    }
}

/// Completion callback of every job I/O.
fn on_complete(io: BdevIo, ok: bool, ctx: IoCtx) {
    // Back to the pool first, so the resubmission below reuses it.
    drop(io);
    if let Some((slot, t)) = unword(ctx) {
        with_job(slot, |j| j.complete(t, ok));
    }
}

/// An I/O is free again after a NoMemory submit.
fn retry(ctx: IoCtx) {
    if let Some((slot, t)) = unword(ctx) {
        with_job(slot, |j| {
            if j.draining {
                j.release(t);
                j.in_flight -= 1;
                j.finish_if_idle();
            } else {
                j.issue(t);
            }
        });
    }
}

/// Step 3, on the job's thread once it is idle: report, then close the channel and descriptor.
fn teardown(slot: usize) {
    let Some(job) = JOBS.with_borrow_mut(|jobs| jobs.get_mut(slot).and_then(Option::take)) else {
        return;
    };
    let (coord, finished) = (job.coord.clone(), job.hooks.finished);
    let (result, ch, desc) = job.into_parts();
    // Reported before the descriptor closes: if the application is shutting down, the close lets
    // the bdev's unregistration finish, and the report must reach the coordinator before that.
    coord.send_msg(move || finished(result));
    drop(ch);
    drop(desc);
}
