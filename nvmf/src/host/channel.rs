//! A thread's I/O path to a remote controller: one I/O qpair per (controller, thread), shared by
//! every namespace bdev of that controller the thread uses, connected by its own poller without
//! ever blocking the reactor. I/O submitted before the qpair is ready, or while the controller
//! reconnects, waits in the queue; commands in flight when a connection fails are kept and sent
//! again on the next one. After `fast_io_fail_timeout_sec` waiting I/O fails with EIO; when the
//! controller is deleted every I/O still here fails with EIO.
//!
//! `driver_ctx` of a BdevIo here: [0] nsid | vwc << 32, [1] blocks done, [2] retries, [3] the
//! blocks of the command in flight.

use crate::host::controller::{Shared, State};
use crate::host::io::{self, IoShape, Plan};
use crate::host::options;
use crate::host::qpair::{Completion, Qpair};
use bdev::{BdevChannelOps, BdevIo, IoStatus};
use poller::{PollStatus, Poller, Thread};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::{Rc, Weak};
use std::sync::Arc;

/// I/O the queue can hold without growing (it may grow past this, rarely).
const WAITQ_CAPACITY: usize = 1024;

/// A thread's connection to one controller (the io_device channel).
pub struct IoQueue {
    state: Rc<RefCell<QueueState>>,
    poller: Option<Poller>,
}

struct QueueState {
    sh: Arc<Shared>,
    qid: u16,
    qp: Option<Qpair>,
    /// The association `qp` belongs to.
    qp_gen: u64,
    /// The association whose connection failed here (no new attempt until it changes).
    failed_gen: u64,
    max_transfer: u64,
    waitq: VecDeque<BdevIo>,
    retry_limit: i32,
    /// Warned once per outage that I/O waits.
    waiting_logged: bool,
}

impl IoQueue {
    /// Builds the calling thread's queue (from the controller's io_device).
    pub fn new(sh: Arc<Shared>) -> Result<IoQueue, i32> {
        let qid = sh.take_qid().ok_or_else(|| {
            tracing::error!(
                "nvme controller {}: every I/O queue it granted is in use; no channel for this thread",
                sh.spec.name
            );
            libc::ENOMEM
        })?;
        let retry_limit = options::get().bdev_retry_count;
        let period = options::get().nvme_ioq_poll_period_us;
        let state = Rc::new(RefCell::new(QueueState {
            sh,
            qid,
            qp: None,
            qp_gen: 0,
            failed_gen: 0,
            max_transfer: 0,
            waitq: VecDeque::with_capacity(WAITQ_CAPACITY),
            retry_limit,
            waiting_logged: false,
        }));
        let weak: Weak<RefCell<QueueState>> = Rc::downgrade(&state);
        let poller = Poller::register("nvme_ioq", period, move || {
            let Some(s) = weak.upgrade() else {
                return PollStatus::Idle;
            };
            let Ok(mut s) = s.try_borrow_mut() else {
                return PollStatus::Idle;
            };
            PollStatus::from(s.poll())
        });
        if poller.is_none() {
            let s = state.borrow();
            s.sh.give_qid(s.qid);
            return Err(libc::ENXIO);
        }
        Ok(IoQueue { state, poller })
    }

    fn submit(&self, io: BdevIo) {
        match self.state.try_borrow_mut() {
            Ok(mut s) => s.submit(io),
            // Only a re-entrant submit gets here; the layer hands it back next poll.
            Err(_) => io.complete(IoStatus::NoMemory),
        }
    }

    fn report(&self) -> Option<String> {
        let s = self.state.try_borrow().ok()?;
        let qp = match &s.qp {
            Some(q) => format!(
                "qpair {} {:?} with {} commands in flight",
                s.qid,
                q.phase(),
                q.outstanding()
            ),
            None => format!("qpair {} not connected", s.qid),
        };
        Some(format!(
            "controller {} {}: {qp}, {} I/O waiting",
            s.sh.spec.name,
            s.sh.state().name(),
            s.waitq.len()
        ))
    }
}

impl Drop for IoQueue {
    fn drop(&mut self) {
        if let Some(p) = &self.poller {
            p.unregister();
        }
        if let Ok(mut s) = self.state.try_borrow_mut() {
            s.fail_all(libc::ENXIO);
            let (sh, qid) = (s.sh.clone(), s.qid);
            sh.give_qid(qid);
        }
    }
}

fn shape(io: &BdevIo) -> IoShape {
    let ctx = io.driver_ctx_ref()[0];
    IoShape {
        io_type: io.io_type(),
        offset: io.offset_blocks(),
        blocks: io.num_blocks(),
        block_size: io.block_size(),
        fua: io.flags().fua,
        nsid: ctx as u32,
        vwc: ctx >> 32 != 0,
    }
}

impl QueueState {
    fn submit(&mut self, io: BdevIo) {
        if let Err(errno) = self.admissible() {
            io.fail(errno);
            return;
        }
        let ready = self.qp.as_ref().is_some_and(Qpair::is_ready);
        if ready && self.waitq.is_empty() {
            if let Err(io) = self.start(io) {
                // No free command slot: the bdev layer hands it back on its next poll.
                io.complete(IoStatus::NoMemory);
            }
        } else {
            self.waitq.push_back(io);
        }
    }

    /// Whether I/O may wait for this controller now, else the errno it fails with.
    fn admissible(&self) -> Result<(), i32> {
        if self.sh.state() == State::Deleting || self.sh.fast_failing() {
            Err(libc::EIO)
        } else {
            Ok(())
        }
    }

    /// Sends the next piece of `io`; the I/O back when no slot is free.
    fn start(&mut self, mut io: BdevIo) -> Result<(), BdevIo> {
        let Some(qp) = self.qp.as_mut().filter(|q| q.is_ready()) else {
            return Err(io);
        };
        let done = io.driver_ctx_ref()[1];
        match io::plan(&shape(&io), done, self.max_transfer) {
            Plan::Done => {
                io.complete_ok();
                Ok(())
            }
            Plan::Invalid(e) => {
                io.fail(e);
                Ok(())
            }
            Plan::Send(p) => {
                io.driver_ctx()[3] = p.blocks;
                let dsm = p.dsm;
                match qp.submit(p.cmd, Some(io), |buf| {
                    if let Some((slba, nlb)) = dsm {
                        io::fill_dsm(buf, slba, nlb);
                    }
                }) {
                    Ok(_) => Ok(()),
                    Err(Some(io)) => Err(io),
                    Err(None) => Ok(()),
                }
            }
        }
    }

    /// A command finished: the I/O moves on, is retried, or completes.
    fn finished(&mut self, c: Completion) {
        let Some(mut io) = c.io else {
            return;
        };
        let st = c.cqe.status;
        if st.is_success() {
            let ctx = io.driver_ctx();
            ctx[1] = ctx[1].saturating_add(ctx[3]);
            ctx[2] = 0;
            if ctx[1] >= io.num_blocks() {
                io.complete_ok();
                return;
            }
        } else {
            let retries = io.driver_ctx_ref()[2];
            let limit = self.retry_limit;
            let may_retry = !st.dnr && (limit < 0 || retries < u64::from(limit.unsigned_abs()));
            if !may_retry {
                tracing::debug!(
                    "nvme controller {}: {:?} of {} blocks at {} failed: {st}",
                    self.sh.spec.name,
                    io.io_type(),
                    io.num_blocks(),
                    io.offset_blocks()
                );
                io.fail(st.to_errno().max(1));
                return;
            }
            io.driver_ctx()[2] = retries + 1;
        }
        if let Err(io) = self.start(io) {
            self.waitq.push_front(io);
        }
    }

    /// One poll: follow the controller's state, connect, move I/O.
    fn poll(&mut self) -> bool {
        let now = Thread::current().map_or(0, |t| t.now());
        let state = self.sh.state();
        let assoc = self.sh.generation();
        if state == State::Deleting {
            let had = !self.waitq.is_empty() || self.qp.is_some();
            self.fail_all(libc::EIO);
            return had;
        }
        let mut busy = false;
        if self.qp.is_some() && (self.qp_gen != assoc || state != State::Enabled) {
            self.teardown();
            busy = true;
        }
        if self.qp.is_none() && state == State::Enabled && assoc != 0 && assoc != self.failed_gen {
            self.connect(assoc, now);
            busy = true;
        }
        if let Some(qp) = self.qp.as_mut() {
            let res = qp.poll(now);
            while let Some(c) = self.qp.as_mut().and_then(|q| q.pop_completion(|c, _| c)) {
                self.finished(c);
                busy = true;
            }
            match res {
                Ok(p) => {
                    busy |= p.busy;
                    if p.connected.is_some() {
                        self.connected();
                    }
                }
                Err(e) => {
                    self.failed_gen = self.qp_gen;
                    self.teardown();
                    self.sh
                        .report_failure(self.qp_gen, format!("queue {}: {e}", self.qid));
                    busy = true;
                }
            }
        }
        busy |= self.drain();
        if let Some(qp) = self.qp.as_mut() {
            match qp.flush() {
                Ok(b) => busy |= b,
                Err(e) => {
                    self.failed_gen = self.qp_gen;
                    self.teardown();
                    self.sh
                        .report_failure(self.qp_gen, format!("queue {}: {e}", self.qid));
                }
            }
        }
        if self.sh.fast_failing() && !self.waitq.is_empty() {
            let n = self.waitq.len();
            for io in self.waitq.drain(..) {
                io.fail(libc::EIO);
            }
            tracing::debug!(
                "nvme controller {}: failed {n} waiting I/O (fast_io_fail_timeout_sec)",
                self.sh.spec.name
            );
            busy = true;
        }
        if !self.waitq.is_empty() && state != State::Enabled && !self.waiting_logged {
            self.waiting_logged = true;
            tracing::info!(
                "nvme controller {}: {} I/O waiting for the controller to come back",
                self.sh.spec.name,
                self.waitq.len()
            );
        }
        busy
    }

    fn connect(&mut self, assoc: u64, now: u64) {
        let Some(info) = self.sh.conn_info() else {
            return;
        };
        let mut p = info.params;
        p.qid = self.qid;
        self.max_transfer = info.max_transfer;
        self.qp_gen = assoc;
        match Qpair::connect(p, now) {
            Ok(q) => self.qp = Some(q),
            Err(e) => {
                self.failed_gen = assoc;
                self.sh
                    .report_failure(assoc, format!("queue {}: {e}", self.qid));
            }
        }
    }

    fn connected(&mut self) {
        self.waiting_logged = false;
        tracing::debug!(
            "nvme controller {}: I/O queue {} connected; {} I/O waiting",
            self.sh.spec.name,
            self.qid,
            self.waitq.len()
        );
    }

    /// Moves waiting I/O onto the qpair while it has free slots.
    fn drain(&mut self) -> bool {
        let mut busy = false;
        while self.qp.as_ref().is_some_and(Qpair::has_free_slot) {
            let Some(io) = self.waitq.pop_front() else {
                break;
            };
            busy = true;
            if let Err(io) = self.start(io) {
                self.waitq.push_front(io);
                break;
            }
        }
        busy
    }

    /// Closes the qpair; completed commands complete, the rest wait for the next one.
    fn teardown(&mut self) {
        let Some(mut qp) = self.qp.take() else {
            return;
        };
        while let Some(c) = qp.pop_completion(|c, _| c) {
            self.finished(c);
        }
        let mut back = Vec::new();
        qp.take_outstanding(|_, io| {
            if let Some(io) = io {
                back.push(io);
            }
        });
        for io in back.into_iter().rev() {
            self.waitq.push_front(io);
        }
        qp.shutdown();
    }

    fn fail_all(&mut self, errno: i32) {
        if let Some(mut qp) = self.qp.take() {
            // What completed completes as it did (a piece left over waits, and fails below).
            while let Some(c) = qp.pop_completion(|c, _| c) {
                self.finished(c);
            }
            qp.take_outstanding(|_, io| {
                if let Some(io) = io {
                    io.fail(errno);
                }
            });
            qp.shutdown();
        }
        for io in self.waitq.drain(..) {
            io.fail(errno);
        }
    }
}

/// A namespace bdev's channel on this thread: the controller's queue plus the namespace.
pub struct NsChannel {
    queue: poller::IoChannel<IoQueue>,
    /// driver_ctx[0] of this namespace's I/O.
    ctx0: u64,
}

impl NsChannel {
    pub fn new(queue: poller::IoChannel<IoQueue>, nsid: u32, vwc: bool) -> NsChannel {
        NsChannel {
            queue,
            ctx0: u64::from(nsid) | (u64::from(vwc) << 32),
        }
    }
}

impl BdevChannelOps for NsChannel {
    fn submit_request(&self, mut io: BdevIo) {
        *io.driver_ctx() = [self.ctx0, 0, 0, 0];
        self.queue.submit(io);
    }

    fn stall_report(&self) -> Option<String> {
        self.queue.report()
    }
}
