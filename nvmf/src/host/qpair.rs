//! One NVMe/TCP queue pair of the host, as a polled state machine that never blocks: the
//! handshake (non-blocking TCP connect, ICReq / ICResp, Fabrics Connect), the command slots,
//! the send queue (capsules and H2CData PDUs sent with one `sendmsg` straight from the I/O
//! buffers) and the receive side (PDU headers checked by `wire::stream`, C2HData copied into
//! the I/O buffers as it arrives, so no PDU is ever buffered whole).
//!
//! ```text
//! TcpConnect --connected--> IcResp --ICResp ok, Connect sent--> Connect --success--> Ready
//!      any error, a TermReq, EOF, a timeout before Ready --> the qpair is dead (poll's Err)
//! ```
//!
//! The owner submits `Command`s with an optional `BdevIo` whose buffers carry the data, polls,
//! and pops completions; after an error it takes the outstanding I/O back to resubmit it on the
//! next connection. A slot's own 4 KiB buffer carries admin data and DSM ranges.

use crate::host::error::HostError;
use crate::host::socket::{ConnectState, MAX_IOV, Socket, iovec};
use crate::wire::command::{Cqe, Sgl, Sqe, Xfer};
use crate::wire::digest::{self, Crc32c, DIGEST_LEN};
use crate::wire::fabrics::{
    CNTLID_DYNAMIC, CONNECT_DATA_LEN, ConnectCommand, ConnectData, ConnectInvalid, Nqn,
    connect_authreq, connect_cntlid,
};
use crate::wire::pdu::{
    CapsuleCmd, Direction, Fes, Framing, H2CData, Header, IC_LEN, IcReq, MAX_HEADER_LEN,
    TERM_REQ_DATA_MAX, TermReq, encode_pdu,
};
use crate::wire::status::Status;
use crate::wire::stream::{self, StreamConfig};
use bdev::BdevIo;
use std::collections::VecDeque;
use std::net::SocketAddr;

/// Bytes of a slot's own buffer (Identify data, log pages, Connect data, DSM ranges).
pub const OWN_LEN: usize = 4096;
/// In-capsule data the admin queue always takes (NVMe/TCP: 8 KiB for admin and Fabrics).
pub const ADMIN_ICD: usize = 8192;
/// The receive buffer: headers and data pass through it; any PDU size works.
const RBUF_LEN: usize = 64 * 1024;
/// C2HData still to come from this size up is read straight into the I/O buffers.
const DIRECT_MIN: usize = 16 * 1024;
/// Reads per poll, so one busy connection cannot hold its reactor.
const READS_PER_POLL: usize = 4;
/// Linux waits 10 s for an ICResp; so do we, and for a TCP connect without its own timeout.
pub const HANDSHAKE_SECS: u64 = 10;

/// What a qpair needs to connect.
#[derive(Clone, Debug)]
pub struct QpairParams {
    pub addr: SocketAddr,
    pub src: Option<SocketAddr>,
    pub qid: u16,
    /// Queue entries (the Connect's SQSIZE is this minus one); also the command slots.
    pub entries: u16,
    /// Slots actually used (≤ entries).
    pub slots: u16,
    /// Connect KATO in ms (admin queue only).
    pub kato_ms: u32,
    pub cattr: u8,
    pub hostnqn: Nqn,
    pub subnqn: Nqn,
    pub hostid: [u8; 16],
    /// The admin queue's controller, for an I/O queue's Connect.
    pub cntlid: u16,
    pub hdgst: bool,
    pub ddgst: bool,
    /// In-capsule data limit for commands on this queue.
    pub max_icd: usize,
    /// Largest data one command moves (bounds C2HData).
    pub max_transfer: u32,
    /// Ticks allowed for the TCP connect, for the ICResp, and for the Connect response.
    pub tcp_timeout: u64,
    pub ic_timeout: u64,
    pub connect_timeout: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    TcpConnect,
    IcResp,
    Connect,
    Ready,
    Dead,
}

/// Where a command's data is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Src {
    None,
    /// The BdevIo's buffers, from this byte offset.
    Iovs(usize),
    /// The slot's own buffer.
    Own,
}

/// A command to send: the SQE (its CID and data pointer are filled in here), which way `len`
/// bytes move, and where they are.
#[derive(Clone, Copy, Debug)]
pub struct Command {
    pub sqe: Sqe,
    pub xfer: Xfer,
    pub len: usize,
    pub src: Src,
}

/// A finished command.
pub struct Completion {
    pub cid: u16,
    pub cqe: Cqe,
    pub io: Option<BdevIo>,
}

/// What a poll did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Progress {
    pub busy: bool,
    /// Set once: the Connect succeeded and this is the controller's id.
    pub connected: Option<u16>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    Free,
    Busy,
    Done,
}

struct Slot {
    state: SlotState,
    io: Option<BdevIo>,
    xfer: Xfer,
    len: usize,
    src: Src,
    /// Write data went in the capsule.
    icd: bool,
    /// The PDU this slot has in the send queue (or last had).
    hdr: [u8; MAX_HEADER_LEN],
    hdr_len: usize,
    pdu_off: usize,
    pdu_len: usize,
    ddgst: [u8; DIGEST_LEN],
    pdu_ddgst: bool,
    in_sendq: bool,
    /// The capsule is out (an R2T may come).
    capsule_sent: bool,
    /// The R2T being answered: [r2t_next, r2t_end) still to send, with its tag.
    r2t_next: usize,
    r2t_end: usize,
    ttag: u16,
    /// Read data received so far.
    received: usize,
    data_error: bool,
    cqe: Cqe,
    own: Box<[u8]>,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            state: SlotState::Free,
            io: None,
            xfer: Xfer::None,
            len: 0,
            src: Src::None,
            icd: false,
            hdr: [0; MAX_HEADER_LEN],
            hdr_len: 0,
            pdu_off: 0,
            pdu_len: 0,
            ddgst: [0; DIGEST_LEN],
            pdu_ddgst: false,
            in_sendq: false,
            capsule_sent: false,
            r2t_next: 0,
            r2t_end: 0,
            ttag: 0,
            received: 0,
            data_error: false,
            cqe: Cqe::new(0, Status::SUCCESS),
            own: vec![0u8; OWN_LEN].into_boxed_slice(),
        }
    }

    /// Bytes of the PDU in the send queue.
    fn pdu_total(&self) -> usize {
        self.hdr_len + self.pdu_len + if self.pdu_ddgst { DIGEST_LEN } else { 0 }
    }

    /// Calls `f` on each piece of the command's data `[off, off + len)`.
    fn for_each_data(&self, off: usize, len: usize, mut f: impl FnMut(&[u8])) {
        match self.src {
            Src::None => {}
            Src::Own => {
                if let Some(s) = self.own.get(off..off + len) {
                    f(s);
                }
            }
            Src::Iovs(base) => {
                if let Some(io) = &self.io {
                    bdev::iov::for_each_range(io.iovs(), base + off, len, f);
                }
            }
        }
    }

    /// Copies received data to `[off, off + data.len())` of the command's data.
    fn place(&mut self, off: usize, data: &[u8]) {
        match self.src {
            Src::None => {}
            Src::Own => {
                if let Some(d) = self.own.get_mut(off..off + data.len()) {
                    d.copy_from_slice(data);
                }
            }
            Src::Iovs(base) => {
                if let Some(io) = &self.io {
                    let mut at = 0;
                    bdev::iov::for_each_range_mut(io.iovs(), base + off, data.len(), |d| {
                        if let Some(s) = data.get(at..at + d.len()) {
                            d.copy_from_slice(s);
                        }
                        at += d.len();
                    });
                }
            }
        }
    }

    fn data_digest(&self, off: usize, len: usize) -> u32 {
        let mut c = Crc32c::new();
        self.for_each_data(off, len, |s| c.update(s));
        c.value()
    }
}

/// The receive state: between PDUs, inside a C2HData's data, or at its data digest.
#[derive(Clone, Copy, Debug)]
enum Rx {
    Header,
    Data {
        cid: u16,
        off: usize,
        left: usize,
        crc: Crc32c,
        digest: bool,
        success: bool,
    },
    Digest {
        cid: u16,
        crc: u32,
        success: bool,
    },
}

pub struct Qpair {
    p: QpairParams,
    sock: Socket,
    phase: Phase,
    deadline: u64,
    framing: Framing,
    maxh2cdata: usize,
    slots: Box<[Slot]>,
    free: Vec<u16>,
    sendq: VecDeque<u16>,
    send_off: usize,
    /// The ICReq, sent before anything else.
    raw: [u8; IC_LEN],
    raw_left: usize,
    rbuf: Box<[u8]>,
    rstart: usize,
    rend: usize,
    rx: Rx,
    completed: VecDeque<u16>,
    connect_cid: Option<u16>,
    cntlid: u16,
    report_connected: bool,
    busy_slots: usize,
}

/// The peer's ICResp did not say what the host asked for.
fn ic_mismatch(what: &str) -> HostError {
    HostError::protocol(format!("ICResp: {what}"))
}

impl Qpair {
    /// Starts connecting; poll until `Progress::connected` (or an error).
    pub fn connect(p: QpairParams, now: u64) -> Result<Qpair, HostError> {
        let sock = Socket::connect(p.addr, p.src)?;
        let n = usize::from(p.slots.clamp(1, p.entries.max(1)));
        let slots: Box<[Slot]> = (0..n).map(|_| Slot::new()).collect();
        Ok(Qpair {
            deadline: now.saturating_add(p.tcp_timeout),
            sock,
            phase: Phase::TcpConnect,
            framing: Framing::NONE,
            maxh2cdata: 0,
            free: (0..n as u16).rev().collect(),
            slots,
            sendq: VecDeque::with_capacity(n + 1),
            send_off: 0,
            raw: [0; IC_LEN],
            raw_left: 0,
            rbuf: vec![0u8; RBUF_LEN].into_boxed_slice(),
            rstart: 0,
            rend: 0,
            rx: Rx::Header,
            completed: VecDeque::with_capacity(n),
            connect_cid: None,
            cntlid: 0,
            report_connected: false,
            busy_slots: 0,
            p,
        })
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn is_ready(&self) -> bool {
        self.phase == Phase::Ready
    }

    pub fn cntlid(&self) -> u16 {
        self.cntlid
    }

    /// MAXH2CDATA from the ICResp.
    pub fn maxh2cdata(&self) -> usize {
        self.maxh2cdata
    }

    /// Commands in flight (or completed but not popped).
    pub fn outstanding(&self) -> usize {
        self.busy_slots
    }

    pub fn has_free_slot(&self) -> bool {
        self.phase == Phase::Ready && !self.free.is_empty()
    }

    fn rx_config(&self) -> StreamConfig {
        StreamConfig {
            hdgst: self.framing.hdgst,
            ddgst: self.framing.ddgst,
            max_data: self.p.max_transfer.max(OWN_LEN as u32),
            pda: 0,
            expect: Direction::ControllerToHost,
            before_icreq: matches!(self.phase, Phase::TcpConnect | Phase::IcResp),
        }
    }

    /// Queues `cmd` (ready queues only); the CID, or the I/O back when no slot is free.
    pub fn submit(
        &mut self,
        cmd: Command,
        io: Option<BdevIo>,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<u16, Option<BdevIo>> {
        if self.phase != Phase::Ready {
            return Err(io);
        }
        self.submit_inner(cmd, io, fill)
    }

    fn submit_inner(
        &mut self,
        cmd: Command,
        io: Option<BdevIo>,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<u16, Option<BdevIo>> {
        let fits = match cmd.src {
            Src::None => cmd.len == 0,
            Src::Own => cmd.len <= OWN_LEN,
            Src::Iovs(base) => io
                .as_ref()
                .is_some_and(|io| base + cmd.len <= bdev::iov::total_len(io.iovs())),
        };
        if !fits
            || (cmd.len > 0 && !matches!(cmd.xfer, Xfer::HostToController | Xfer::ControllerToHost))
        {
            return Err(io);
        }
        let Some(cid) = self.free.pop() else {
            return Err(io);
        };
        let framing = self.framing;
        // The admin queue and Fabrics commands always take 8 KiB in the capsule.
        let max_icd = if self.p.qid == 0 || cmd.sqe.is_fabrics() {
            ADMIN_ICD.max(self.p.max_icd)
        } else {
            self.p.max_icd
        };
        let icd = cmd.xfer == Xfer::HostToController && cmd.len > 0 && cmd.len <= max_icd;
        let Some(slot) = self.slots.get_mut(usize::from(cid)) else {
            return Err(io);
        };
        slot.state = SlotState::Busy;
        slot.io = io;
        slot.xfer = cmd.xfer;
        slot.len = cmd.len;
        slot.src = cmd.src;
        slot.icd = icd;
        slot.capsule_sent = false;
        slot.r2t_next = 0;
        slot.r2t_end = 0;
        slot.received = 0;
        slot.data_error = false;
        if cmd.src == Src::Own {
            fill(&mut slot.own);
        }
        let mut sqe = cmd.sqe;
        sqe.cid = cid;
        let len32 = u32::try_from(cmd.len).unwrap_or(u32::MAX);
        sqe.dptr = if icd {
            Sgl::in_capsule(0, len32)
        } else {
            Sgl::transport(len32)
        };
        let data_len = if icd { cmd.len } else { 0 };
        let header = Header::CapsuleCmd(CapsuleCmd {
            sqe: sqe.to_bytes(),
        });
        match header.encode(&mut slot.hdr, &framing, data_len) {
            Ok(frame) => {
                slot.hdr_len = frame.header_len;
                slot.pdu_off = 0;
                slot.pdu_len = data_len;
                slot.pdu_ddgst = frame.data_digest;
                if frame.data_digest {
                    slot.ddgst = slot.data_digest(0, data_len).to_le_bytes();
                }
            }
            Err(_) => {
                // Cannot happen for a capsule of a length we checked; give the slot back.
                slot.state = SlotState::Free;
                let io = slot.io.take();
                self.free.push(cid);
                return Err(io);
            }
        }
        slot.in_sendq = true;
        self.sendq.push_back(cid);
        self.busy_slots += 1;
        Ok(cid)
    }

    /// Hands out the next completion (with the slot's own buffer, valid for the call) and
    /// frees its slot.
    pub fn pop_completion<R>(&mut self, f: impl FnOnce(Completion, &[u8]) -> R) -> Option<R> {
        let cid = self.completed.pop_front()?;
        let slot = self.slots.get_mut(usize::from(cid))?;
        let c = Completion {
            cid,
            cqe: slot.cqe,
            io: slot.io.take(),
        };
        let r = f(c, &slot.own);
        slot.state = SlotState::Free;
        self.free.push(cid);
        self.busy_slots = self.busy_slots.saturating_sub(1);
        Some(r)
    }

    /// Every command still in flight, in CID order, with its I/O (after an error, to resend
    /// on the next connection); the queue is empty afterwards. Completed commands not yet
    /// popped are handed out too (pop them first to keep their results).
    pub fn take_outstanding(&mut self, mut f: impl FnMut(u16, Option<BdevIo>)) {
        self.completed.clear();
        self.sendq.clear();
        self.send_off = 0;
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if slot.state != SlotState::Free {
                slot.state = SlotState::Free;
                slot.in_sendq = false;
                f(i as u16, slot.io.take());
            }
        }
        self.free = (0..self.slots.len() as u16).rev().collect();
        self.busy_slots = 0;
    }

    /// Closes the connection at once.
    pub fn shutdown(&mut self) {
        self.sock.shutdown();
        self.phase = Phase::Dead;
    }

    /// One step: the connect, received PDUs, then queued sends. An error kills the qpair.
    pub fn poll(&mut self, now: u64) -> Result<Progress, HostError> {
        if self.phase == Phase::Dead {
            return Err(HostError::Gone("qpair is closed".into()));
        }
        let r = self.poll_inner(now);
        if let Err(e) = &r {
            self.fail(e);
        }
        r
    }

    fn poll_inner(&mut self, now: u64) -> Result<Progress, HostError> {
        let mut prog = Progress::default();
        if self.phase == Phase::TcpConnect {
            match self.sock.poll_connect()? {
                ConnectState::InProgress => {
                    if now > self.deadline {
                        return Err(HostError::Timeout(format!(
                            "no TCP connection to {} within the connect timeout",
                            self.p.addr
                        )));
                    }
                    return Ok(prog);
                }
                ConnectState::Connected => {
                    self.start_ic(now)?;
                    prog.busy = true;
                }
            }
        }
        prog.busy |= self.receive()?;
        prog.busy |= self.flush()?;
        match self.phase {
            Phase::IcResp | Phase::Connect if now > self.deadline => {
                return Err(HostError::Timeout(format!(
                    "{} from {} did not come in time",
                    if self.phase == Phase::IcResp {
                        "ICResp"
                    } else {
                        "the Connect response"
                    },
                    self.p.addr
                )));
            }
            _ => {}
        }
        if self.report_connected {
            self.report_connected = false;
            prog.connected = Some(self.cntlid);
        }
        Ok(prog)
    }

    fn fail(&mut self, _e: &HostError) {
        self.sock.shutdown();
        self.phase = Phase::Dead;
    }

    fn start_ic(&mut self, now: u64) -> Result<(), HostError> {
        let h = Header::IcReq(IcReq {
            pfv: 0,
            hpda: 0,
            hdgst: self.p.hdgst,
            ddgst: self.p.ddgst,
            maxr2t: 0,
        });
        let n = encode_pdu(&mut self.raw, &h, &Framing::NONE, &[])
            .map_err(|e| HostError::protocol(format!("cannot encode the ICReq: {e}")))?;
        self.raw_left = n;
        self.phase = Phase::IcResp;
        self.deadline = now.saturating_add(self.p.ic_timeout);
        Ok(())
    }

    /// Sends queued PDUs until the socket is full; whether anything went out.
    pub fn flush(&mut self) -> Result<bool, HostError> {
        let mut any = false;
        while self.raw_left > 0 {
            let start = IC_LEN - self.raw_left;
            let seg = [iovec(self.raw[start..].as_ptr(), self.raw_left)];
            let n = self.sock.send(&seg)?;
            if n == 0 {
                return Ok(any);
            }
            any = true;
            self.raw_left -= n.min(self.raw_left);
        }
        if self.phase == Phase::TcpConnect {
            return Ok(any);
        }
        while !self.sendq.is_empty() {
            let mut iov = [iovec(std::ptr::null(), 0); MAX_IOV];
            let cnt = self.gather(&mut iov);
            if cnt == 0 {
                break;
            }
            let n = self.sock.send(&iov[..cnt])?;
            if n == 0 {
                break;
            }
            any = true;
            self.advance(n)?;
        }
        Ok(any)
    }

    /// The segments of the queued PDUs from the first unsent byte; how many.
    fn gather(&self, iov: &mut [libc::iovec; MAX_IOV]) -> usize {
        let mut cnt = 0;
        let mut skip = self.send_off;
        let mut push = |base: *const u8, len: usize, cnt: &mut usize| {
            if *cnt >= MAX_IOV || len == 0 {
                return;
            }
            if skip >= len {
                skip -= len;
                return;
            }
            // `skip < len`: the segment starts inside the buffer.
            let base = base.wrapping_add(skip);
            let len = len - skip;
            skip = 0;
            if let Some(v) = iov.get_mut(*cnt) {
                *v = iovec(base, len);
                *cnt += 1;
            }
        };
        for &cid in &self.sendq {
            if cnt >= MAX_IOV - 2 {
                break;
            }
            let Some(s) = self.slots.get(usize::from(cid)) else {
                continue;
            };
            let hdr = s.hdr.get(..s.hdr_len).unwrap_or(&[]);
            push(hdr.as_ptr(), hdr.len(), &mut cnt);
            s.for_each_data(s.pdu_off, s.pdu_len, |d| {
                push(d.as_ptr(), d.len(), &mut cnt)
            });
            if s.pdu_ddgst {
                push(s.ddgst.as_ptr(), DIGEST_LEN, &mut cnt);
            }
        }
        cnt
    }

    /// `n` bytes went out: retire the PDUs they completed.
    fn advance(&mut self, n: usize) -> Result<(), HostError> {
        self.send_off += n;
        while let Some(&cid) = self.sendq.front() {
            let Some(s) = self.slots.get(usize::from(cid)) else {
                self.sendq.pop_front();
                continue;
            };
            let total = s.pdu_total();
            if self.send_off < total {
                break;
            }
            self.send_off -= total;
            self.sendq.pop_front();
            self.pdu_sent(cid)?;
        }
        Ok(())
    }

    /// A slot's PDU is out: the capsule (the command now waits for the controller), or an
    /// H2CData (send the next one of the R2T's range, if any).
    fn pdu_sent(&mut self, cid: u16) -> Result<(), HostError> {
        let maxh2c = self.maxh2cdata;
        let framing = self.framing;
        let Some(s) = self.slots.get_mut(usize::from(cid)) else {
            return Ok(());
        };
        s.in_sendq = false;
        if !s.capsule_sent {
            s.capsule_sent = true;
            return Ok(());
        }
        s.r2t_next += s.pdu_len;
        if s.r2t_next < s.r2t_end {
            prepare_h2c(s, cid, maxh2c, &framing)?;
            self.sendq.push_back(cid);
        }
        Ok(())
    }

    /// Reads and handles what the socket has; whether anything came.
    fn receive(&mut self) -> Result<bool, HostError> {
        let mut any = false;
        for _ in 0..READS_PER_POLL {
            if self.rstart == self.rend {
                self.rstart = 0;
                self.rend = 0;
            } else if self.rbuf.len() - self.rend < MAX_HEADER_LEN + TERM_REQ_DATA_MAX {
                self.rbuf.copy_within(self.rstart..self.rend, 0);
                self.rend -= self.rstart;
                self.rstart = 0;
            }
            match self.receive_direct()? {
                Some(0) => break,
                Some(_) => {
                    any = true;
                    continue;
                }
                None => {}
            }
            let room = self.rbuf.len() - self.rend;
            let Some(n) = self.sock.recv(&mut self.rbuf[self.rend..])? else {
                break;
            };
            any = true;
            self.rend += n;
            self.process()?;
            if n < room {
                break;
            }
        }
        Ok(any)
    }

    /// Handles every complete unit (header, data piece, digest) in the receive buffer.
    fn process(&mut self) -> Result<(), HostError> {
        loop {
            let avail = self.rend - self.rstart;
            match self.rx {
                Rx::Header => {
                    if avail == 0 || !self.header()? {
                        return Ok(());
                    }
                }
                Rx::Data { cid, off, left, .. } => {
                    let n = left.min(avail);
                    if n == 0 {
                        return Ok(());
                    }
                    let data = &self.rbuf[self.rstart..self.rstart + n];
                    if let Some(s) = self.slots.get_mut(usize::from(cid)) {
                        s.place(off, data);
                    }
                    self.rstart += n;
                    self.data_in(n);
                }
                Rx::Digest { cid, crc, success } => {
                    let Some(d) = self.rbuf.get(self.rstart..self.rstart + DIGEST_LEN) else {
                        return Ok(());
                    };
                    let got = u32::from_le_bytes([d[0], d[1], d[2], d[3]]);
                    self.rstart += DIGEST_LEN;
                    if digest::check(crc, got).is_err() {
                        tracing::warn!(
                            "qpair {} to {}: data digest mismatch on command {cid}",
                            self.p.qid,
                            self.p.addr
                        );
                        if let Some(s) = self.slots.get_mut(usize::from(cid)) {
                            s.data_error = true;
                        }
                    }
                    self.rx = Rx::Header;
                    self.data_done(cid, success);
                }
            }
        }
    }

    /// `n` bytes of the current C2HData's data are in place: count them, digest them, and
    /// move past the data when it is all in.
    fn data_in(&mut self, n: usize) {
        let Rx::Data {
            cid,
            off,
            left,
            mut crc,
            digest,
            success,
        } = self.rx
        else {
            return;
        };
        if let Some(s) = self.slots.get_mut(usize::from(cid)) {
            if digest {
                s.for_each_data(off, n, |d| crc.update(d));
            }
            s.received += n;
        }
        self.rx = if n < left {
            Rx::Data {
                cid,
                off: off + n,
                left: left - n,
                crc,
                digest,
                success,
            }
        } else if digest {
            Rx::Digest {
                cid,
                crc: crc.value(),
                success,
            }
        } else {
            self.data_done(cid, success);
            Rx::Header
        };
    }

    /// The segments `[off, off + len)` of a slot's data, for a read straight into them.
    fn data_segments(
        &mut self,
        cid: u16,
        off: usize,
        len: usize,
        iov: &mut [libc::iovec],
    ) -> usize {
        let mut cnt = 0;
        let Some(s) = self.slots.get_mut(usize::from(cid)) else {
            return 0;
        };
        let mut push = |p: *const u8, l: usize| {
            if let Some(v) = iov.get_mut(cnt) {
                *v = iovec(p, l);
                cnt += 1;
            }
        };
        match (s.src, &s.io) {
            (Src::Iovs(base), Some(io)) => {
                bdev::iov::for_each_range_mut(io.iovs(), base + off, len, |d| {
                    push(d.as_mut_ptr(), d.len())
                });
            }
            (Src::Own, _) => {
                if let Some(d) = s.own.get_mut(off..off + len) {
                    push(d.as_mut_ptr(), d.len());
                }
            }
            _ => {}
        }
        cnt
    }

    /// While a large C2HData's data is still to come and the buffer is empty, reads it
    /// straight into the I/O buffers (the next header, if it comes along, into the buffer).
    fn receive_direct(&mut self) -> Result<Option<usize>, HostError> {
        let Rx::Data { cid, off, left, .. } = self.rx else {
            return Ok(None);
        };
        if left < DIRECT_MIN || self.rstart != self.rend {
            return Ok(None);
        }
        let mut iov = [iovec(std::ptr::null(), 0); MAX_IOV];
        let cnt = self.data_segments(cid, off, left, &mut iov[..MAX_IOV - 1]);
        if cnt == 0 {
            return Ok(None);
        }
        let direct: usize = iov[..cnt].iter().map(|v| v.iov_len).sum();
        self.rstart = 0;
        self.rend = 0;
        iov[cnt] = iovec(self.rbuf.as_mut_ptr(), self.rbuf.len());
        // The segments are the slot's I/O buffers (valid under the IoVec contract while the
        // command is in flight) and our own receive buffer.
        let Some(n) = self.sock.recv_vectored(&iov[..=cnt])? else {
            return Ok(Some(0));
        };
        let into_data = n.min(direct);
        self.rend = n - into_data;
        self.data_in(into_data);
        self.process()?;
        Ok(Some(n))
    }

    /// The data of a C2HData is in: with SUCCESS, the command is complete.
    fn data_done(&mut self, cid: u16, success: bool) {
        if success {
            let status = self
                .slots
                .get(usize::from(cid))
                .map_or(Status::SUCCESS, |s| {
                    if s.data_error {
                        Status::DATA_TRANSFER_ERROR
                    } else {
                        Status::SUCCESS
                    }
                });
            self.complete(cid, Cqe::new(cid, status));
        }
    }

    /// Handles the PDU header at the front of the buffer; false when more bytes are needed.
    fn header(&mut self) -> Result<bool, HostError> {
        let cfg = self.rx_config();
        let buf = &self.rbuf[self.rstart..self.rend];
        let (header, frame) = match stream::parse_header(buf, &cfg) {
            Ok(Some(x)) => x,
            Ok(None) => return Ok(false),
            Err(e) => {
                let off = stream::offending_header(buf);
                let mut copy = [0u8; TERM_REQ_DATA_MAX];
                let n = off.len().min(TERM_REQ_DATA_MAX);
                copy[..n].copy_from_slice(&off[..n]);
                if e.reply {
                    self.send_term_req(e.fes, e.fei, &copy[..n]);
                }
                return Err(HostError::protocol(format!(
                    "bad PDU from {}: {}",
                    self.p.addr, e.reason
                )));
            }
        };
        match header {
            Header::IcResp(r) => {
                self.rstart += frame.len;
                if r.hdgst != self.p.hdgst {
                    return Err(ic_mismatch("header digest not what the host asked for"));
                }
                if r.ddgst != self.p.ddgst {
                    return Err(ic_mismatch("data digest not what the host asked for"));
                }
                if r.cpda != 0 {
                    return Err(ic_mismatch("unsupported cpda (only 0 is)"));
                }
                self.framing = Framing {
                    hdgst: r.hdgst,
                    ddgst: r.ddgst,
                    pda: r.cpda,
                };
                self.maxh2cdata = r.maxh2cdata as usize;
                self.send_connect()?;
            }
            Header::C2HTermReq(t) => {
                if buf.len() < frame.len {
                    return Ok(false);
                }
                self.rstart += frame.len;
                let why = t
                    .status()
                    .map_or("unknown FES".to_string(), |f| format!("{f:?}"));
                return Err(HostError::protocol(format!(
                    "{} terminated the connection: {why} (FES {:#x}, FEI {:#x})",
                    self.p.addr, t.fes, t.fei
                )));
            }
            Header::CapsuleResp(r) => {
                self.rstart += frame.len;
                let cqe = Cqe::decode(&r.cqe)
                    .map_err(|_| HostError::protocol("CapsuleResp: short CQE"))?;
                self.capsule_resp(cqe)?;
            }
            Header::R2T(r) => {
                self.rstart += frame.len;
                self.r2t(r.cccid, r.ttag, r.r2to as usize, r.r2tl as usize)?;
            }
            Header::C2HData(h) => {
                let cid = h.cccid;
                let s = self.slots.get(usize::from(cid));
                let ok = s.is_some_and(|s| {
                    s.state == SlotState::Busy
                        && s.capsule_sent
                        && s.xfer == Xfer::ControllerToHost
                        && Some(cid) != self.connect_cid
                });
                if !ok {
                    return Err(HostError::protocol(format!(
                        "C2HData for command {cid}, which is not a read in flight"
                    )));
                }
                let (received, len) = s.map_or((0, 0), |s| (s.received, s.len));
                let (datao, datal) = (h.datao as usize, h.datal as usize);
                if datao != received || datao + datal > len {
                    return Err(HostError::protocol(format!(
                        "C2HData for command {cid}: data at {datao}+{datal}, expected {received} of {len}"
                    )));
                }
                if h.success && datao + datal != len {
                    return Err(HostError::protocol(format!(
                        "C2HData SUCCESS for command {cid} with short data ({} of {len})",
                        datao + datal
                    )));
                }
                self.rstart += frame.header_len;
                self.rx = Rx::Data {
                    cid,
                    off: datao,
                    left: datal,
                    crc: Crc32c::new(),
                    digest: frame.data_digest,
                    success: h.success,
                };
            }
            other => {
                return Err(HostError::protocol(format!(
                    "unexpected {:?} PDU from the controller",
                    other.pdu_type()
                )));
            }
        }
        Ok(true)
    }

    fn send_connect(&mut self) -> Result<(), HostError> {
        let admin = self.p.qid == 0;
        let cmd = ConnectCommand {
            recfmt: 0,
            qid: self.p.qid,
            sqsize: self.p.entries.saturating_sub(1),
            cattr: self.p.cattr,
            kato: if admin { self.p.kato_ms } else { 0 },
        };
        let data = ConnectData {
            hostid: self.p.hostid,
            cntlid: if admin { CNTLID_DYNAMIC } else { self.p.cntlid },
            subnqn: self.p.subnqn,
            hostnqn: self.p.hostnqn,
        };
        let sqe = cmd.to_sqe(0, Sgl::in_capsule(0, CONNECT_DATA_LEN as u32));
        let c = Command {
            sqe,
            xfer: Xfer::HostToController,
            len: CONNECT_DATA_LEN,
            src: Src::Own,
        };
        let cid = self
            .submit_inner(c, None, |b| {
                let _ = data.encode(b);
            })
            .map_err(|_| HostError::protocol("no slot for the Connect command"))?;
        self.connect_cid = Some(cid);
        self.phase = Phase::Connect;
        Ok(())
    }

    fn capsule_resp(&mut self, mut cqe: Cqe) -> Result<(), HostError> {
        let cid = cqe.cid;
        let Some(s) = self.slots.get(usize::from(cid)) else {
            return Err(HostError::protocol(format!(
                "CapsuleResp for command {cid}, which does not exist"
            )));
        };
        if s.state != SlotState::Busy || s.in_sendq {
            return Err(HostError::protocol(format!(
                "CapsuleResp for command {cid}, which is not in flight"
            )));
        }
        if cqe.status.is_success()
            && (s.data_error || (s.xfer == Xfer::ControllerToHost && s.received != s.len))
        {
            cqe.status = Status::DATA_TRANSFER_ERROR;
        }
        if Some(cid) == self.connect_cid {
            return self.connect_done(cid, cqe);
        }
        self.complete(cid, cqe);
        Ok(())
    }

    fn connect_done(&mut self, cid: u16, cqe: Cqe) -> Result<(), HostError> {
        self.connect_cid = None;
        if let Some(s) = self.slots.get_mut(usize::from(cid)) {
            s.state = SlotState::Free;
        }
        self.free.push(cid);
        self.busy_slots = self.busy_slots.saturating_sub(1);
        if !cqe.status.is_success() {
            let mut what = format!(
                "Connect of queue {} to {} ({})",
                self.p.qid, self.p.addr, self.p.subnqn
            );
            if cqe.status.same_code(&Status::CONNECT_INVALID_PARAMETERS) {
                let inv = ConnectInvalid::from_dw0(cqe.dw0);
                what.push_str(&format!(
                    " (invalid {} byte {})",
                    if inv.iattr == 0 { "command" } else { "data" },
                    inv.ipo
                ));
            }
            return Err(HostError::Refused {
                what,
                status: cqe.status,
            });
        }
        if connect_authreq(cqe.dw0) != 0 {
            return Err(HostError::Unsupported(format!(
                "{} requires in-band authentication, which is not supported",
                self.p.subnqn
            )));
        }
        self.cntlid = connect_cntlid(cqe.dw0);
        self.phase = Phase::Ready;
        self.report_connected = true;
        Ok(())
    }

    fn r2t(&mut self, cid: u16, ttag: u16, r2to: usize, r2tl: usize) -> Result<(), HostError> {
        let maxh2c = self.maxh2cdata;
        let framing = self.framing;
        let Some(s) = self.slots.get_mut(usize::from(cid)) else {
            return Err(HostError::protocol(format!(
                "R2T for unknown command {cid}"
            )));
        };
        let ok = s.state == SlotState::Busy
            && s.xfer == Xfer::HostToController
            && s.capsule_sent
            && !s.in_sendq
            && !s.icd
            && s.r2t_next == s.r2t_end
            && r2to == s.r2t_end
            && r2tl != 0
            && r2to + r2tl <= s.len;
        if !ok {
            return Err(HostError::protocol(format!(
                "bad R2T for command {cid}: offset {r2to} length {r2tl} (sent {} of {})",
                s.r2t_end, s.len
            )));
        }
        s.ttag = ttag;
        s.r2t_next = r2to;
        s.r2t_end = r2to + r2tl;
        prepare_h2c(s, cid, maxh2c, &framing)?;
        self.sendq.push_back(cid);
        Ok(())
    }

    fn complete(&mut self, cid: u16, cqe: Cqe) {
        if let Some(s) = self.slots.get_mut(usize::from(cid)) {
            s.cqe = cqe;
            s.cqe.cid = cid;
            s.state = SlotState::Done;
            self.completed.push_back(cid);
        }
    }

    /// Best effort: tell the controller why the host closes (it may be gone already).
    fn send_term_req(&mut self, fes: Fes, fei: u32, offending: &[u8]) {
        let mut buf = [0u8; 24 + TERM_REQ_DATA_MAX];
        let h = Header::H2CTermReq(TermReq::new(fes, fei));
        if let Ok(n) = encode_pdu(&mut buf, &h, &Framing::NONE, offending) {
            let _ = self.sock.send(&[iovec(buf.as_ptr(), n)]);
        }
    }
}

/// Lays out the next H2CData of the slot's R2T range (at most MAXH2CDATA bytes).
fn prepare_h2c(s: &mut Slot, cid: u16, maxh2c: usize, framing: &Framing) -> Result<(), HostError> {
    let n = (s.r2t_end - s.r2t_next).min(maxh2c.max(1));
    let h = Header::H2CData(H2CData {
        cccid: cid,
        ttag: s.ttag,
        datao: s.r2t_next as u32,
        datal: n as u32,
        last: s.r2t_next + n == s.r2t_end,
    });
    let frame = h
        .encode(&mut s.hdr, framing, n)
        .map_err(|e| HostError::protocol(format!("cannot encode H2CData: {e}")))?;
    s.hdr_len = frame.header_len;
    s.pdu_off = s.r2t_next;
    s.pdu_len = n;
    s.pdu_ddgst = frame.data_digest;
    if frame.data_digest {
        s.ddgst = s.data_digest(s.r2t_next, n).to_le_bytes();
    }
    s.in_sendq = true;
    Ok(())
}

impl Drop for Qpair {
    fn drop(&mut self) {
        // Never lose an I/O: whatever the owner did not take back fails here.
        let mut lost = 0;
        self.take_outstanding(|_, io| {
            if let Some(io) = io {
                lost += 1;
                io.fail(libc::ENXIO);
            }
        });
        if lost > 0 {
            tracing::error!(
                "qpair {} to {} closed with {lost} I/O in flight: failed",
                self.p.qid,
                self.p.addr
            );
        }
        self.sock.shutdown();
    }
}

#[cfg(test)]
mod tests {
    //! The qpair against a scripted controller on a loopback socket: the ICResp checks Linux
    //! makes, the Connect answers, and the data paths (C2HData in pieces, R2T / H2CData).

    use super::*;
    use crate::wire::command::{CQE_LEN, admin};
    use crate::wire::pdu::{C2HData, CapsuleResp, IcResp, R2T};
    use crate::wire::stream::Pdu;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    const NQN: &str = "nqn.2016-06.io.spdk:cnode1";
    const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:0c2f7b4e-4a61-4f0e-9d6f-1b2c3d4e5f60";

    fn params(addr: SocketAddr, digests: bool) -> QpairParams {
        let hz = poller::time::ticks_hz();
        QpairParams {
            addr,
            src: None,
            qid: 0,
            entries: 32,
            slots: 4,
            kato_ms: 10_000,
            cattr: 0,
            hostnqn: Nqn::new(HOST).unwrap(),
            subnqn: Nqn::new(NQN).unwrap(),
            hostid: [7; 16],
            cntlid: 0,
            hdgst: digests,
            ddgst: digests,
            max_icd: 0,
            max_transfer: 4096,
            tcp_timeout: 5 * hz,
            ic_timeout: 5 * hz,
            connect_timeout: 5 * hz,
        }
    }

    /// The controller side: reads whole PDUs off the socket.
    struct Ctrl {
        s: TcpStream,
        buf: Vec<u8>,
        framing: Framing,
    }

    impl Ctrl {
        fn accept(l: &TcpListener) -> Ctrl {
            let (s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            Ctrl {
                s,
                buf: Vec::new(),
                framing: Framing::NONE,
            }
        }

        /// The next PDU (its header and data), as the target's parser sees it.
        fn recv(&mut self, before_ic: bool) -> (Header, Vec<u8>) {
            let cfg = StreamConfig {
                hdgst: self.framing.hdgst,
                ddgst: self.framing.ddgst,
                max_data: 1 << 20,
                pda: 0,
                expect: Direction::HostToController,
                before_icreq: before_ic,
            };
            loop {
                if let Some((pdu, n)) = stream::parse(&self.buf, &cfg).unwrap() {
                    let (h, data) = match pdu {
                        Pdu::CapsuleCmd { cmd, data } => (Header::CapsuleCmd(cmd), data.unwrap()),
                        Pdu::H2CData { hdr, data } => (Header::H2CData(hdr), data.unwrap()),
                        other => (other.header(), &[][..]),
                    };
                    let data = data.to_vec();
                    self.buf.drain(..n);
                    return (h, data);
                }
                let mut chunk = [0u8; 65536];
                let n = self.s.read(&mut chunk).unwrap();
                assert!(n > 0, "host closed");
                self.buf.extend_from_slice(&chunk[..n]);
            }
        }

        fn send(&mut self, h: &Header, data: &[u8]) {
            let mut b = vec![0u8; 256 + data.len()];
            let n = encode_pdu(&mut b, h, &self.framing, data).unwrap();
            self.s.write_all(&b[..n]).unwrap();
        }

        fn icresp(&mut self, r: IcResp) {
            let (h, _) = self.recv(true);
            let Header::IcReq(q) = h else {
                panic!("expected ICReq, got {h:?}")
            };
            assert_eq!((q.pfv, q.hpda, q.maxr2t), (0, 0, 0));
            let mut b = [0u8; IC_LEN];
            encode_pdu(&mut b, &Header::IcResp(r), &Framing::NONE, &[]).unwrap();
            self.s.write_all(&b).unwrap();
            self.framing = Framing {
                hdgst: r.hdgst,
                ddgst: r.ddgst,
                pda: 0,
            };
        }

        fn cmd(&mut self) -> (Sqe, Vec<u8>) {
            let (h, data) = self.recv(false);
            let Header::CapsuleCmd(c) = h else {
                panic!("expected a command, got {h:?}")
            };
            (Sqe::decode(&c.sqe).unwrap(), data)
        }

        fn resp(&mut self, cid: u16, status: Status, dw0: u32) {
            let mut cqe = Cqe::new(cid, status);
            cqe.dw0 = dw0;
            let mut b = [0u8; CQE_LEN];
            cqe.encode(&mut b);
            self.send(&Header::CapsuleResp(CapsuleResp { cqe: b }), &[]);
        }
    }

    fn ok_icresp(digests: bool) -> IcResp {
        IcResp {
            pfv: 0,
            cpda: 0,
            hdgst: digests,
            ddgst: digests,
            maxh2cdata: 4096,
        }
    }

    /// Polls until `done` says so or the qpair fails; the error, if it failed.
    fn drive(qp: &mut Qpair, mut done: impl FnMut(&mut Qpair) -> bool) -> Option<HostError> {
        let start = Instant::now();
        loop {
            if let Err(e) = qp.poll(poller::time::ticks()) {
                return Some(e);
            }
            if done(qp) {
                return None;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "qpair stuck");
            std::thread::yield_now();
        }
    }

    /// A handshake where the controller answers `r` (and, if it gets that far, `connect`).
    fn handshake(
        r: IcResp,
        connect: Option<(Status, u32)>,
        digests: bool,
    ) -> Result<u16, HostError> {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let ctrl = std::thread::spawn(move || {
            let mut c = Ctrl::accept(&l);
            c.icresp(r);
            if let Some((status, dw0)) = connect {
                let (sqe, data) = c.cmd();
                assert!(sqe.is_fabrics());
                let cd = ConnectData::decode(&data).unwrap();
                assert_eq!(cd.cntlid, CNTLID_DYNAMIC);
                assert_eq!(cd.subnqn, NQN);
                assert_eq!(cd.hostnqn, HOST);
                let cc = ConnectCommand::from_sqe(&sqe).unwrap();
                assert_eq!((cc.qid, cc.sqsize, cc.kato), (0, 31, 10_000));
                c.resp(sqe.cid, status, dw0);
            }
            // Hold the connection until the host is done with it.
            let mut rest = [0u8; 64];
            let _ = c.s.read(&mut rest);
        });
        let mut qp = Qpair::connect(params(addr, digests), poller::time::ticks())?;
        let mut cntlid = None;
        let err = drive(&mut qp, |q| {
            cntlid = cntlid.or(q.report_connected.then_some(q.cntlid));
            q.is_ready()
        });
        qp.shutdown();
        let _ = ctrl.join();
        match err {
            Some(e) => Err(e),
            None => Ok(qp.cntlid()),
        }
    }

    #[test]
    fn icresp_checks_as_linux_makes_them() {
        let mut r = ok_icresp(true);
        r.ddgst = false;
        let e = handshake(r, None, true).unwrap_err();
        assert!(
            e.to_string()
                .contains("data digest not what the host asked for"),
            "{e}"
        );
        let mut r = ok_icresp(false);
        r.hdgst = true;
        let e = handshake(r, None, false).unwrap_err();
        assert!(e.to_string().contains("header digest"), "{e}");
        let mut r = ok_icresp(false);
        r.cpda = 1;
        let e = handshake(r, None, false).unwrap_err();
        assert!(e.to_string().contains("cpda"), "{e}");
        let mut r = ok_icresp(false);
        r.maxh2cdata = 2048;
        let e = handshake(r, None, false).unwrap_err();
        assert!(e.to_string().contains("MAXH2CDATA"), "{e}");
        assert_eq!(e.errno(), libc::EPROTO);
    }

    #[test]
    fn connect_answers() {
        assert_eq!(
            handshake(ok_icresp(false), Some((Status::SUCCESS, 5)), false).unwrap(),
            5
        );
        assert_eq!(
            handshake(ok_icresp(true), Some((Status::SUCCESS, 6)), true).unwrap(),
            6
        );
        let e = handshake(
            ok_icresp(false),
            Some((
                Status::CONNECT_INVALID_PARAMETERS,
                ConnectInvalid::data(256).to_dw0(),
            )),
            false,
        )
        .unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL);
        assert!(
            e.to_string().contains("(invalid data byte 256) refused"),
            "{e}"
        );
        let e = handshake(
            ok_icresp(false),
            Some((Status::CONNECT_INVALID_HOST, 0)),
            false,
        )
        .unwrap_err();
        assert_eq!(e.errno(), libc::EACCES);
        // Authentication asked for: not supported.
        let e = handshake(
            ok_icresp(false),
            Some((Status::SUCCESS, 1 | (1 << 17))),
            false,
        )
        .unwrap_err();
        assert_eq!(e.errno(), libc::ENOTSUP);
    }

    /// A ready qpair and its controller side.
    fn ready(digests: bool) -> (Qpair, Ctrl) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        // An I/O queue without in-capsule data: writes go through R2T.
        let mut p = params(addr, digests);
        p.qid = 1;
        p.cntlid = 1;
        let mut qp = Qpair::connect(p, poller::time::ticks()).unwrap();
        let mut c = None;
        let err = drive(&mut qp, |q| {
            if c.is_none() && q.phase() == Phase::IcResp {
                let mut ctrl = Ctrl::accept(&l);
                // The ICReq is out once the qpair flushed it.
                let _ = q.flush();
                ctrl.icresp(ok_icresp(digests));
                c = Some(ctrl);
            }
            if q.phase() == Phase::Connect
                && let Some(ctrl) = c.as_mut()
                && ctrl.buf.is_empty()
            {
                let _ = q.flush();
                let (sqe, _) = ctrl.cmd();
                ctrl.resp(sqe.cid, Status::SUCCESS, 1);
                ctrl.buf.push(0xAA); // only once
            }
            q.is_ready()
        });
        assert!(err.is_none(), "{err:?}");
        let mut c = c.unwrap();
        c.buf.clear();
        (qp, c)
    }

    fn own_read(qp: &mut Qpair) -> u16 {
        let sqe = Sqe::new(admin::IDENTIFY, 0, 0);
        let cmd = Command {
            sqe,
            xfer: Xfer::ControllerToHost,
            len: OWN_LEN,
            src: Src::Own,
        };
        let cid = qp.submit(cmd, None, |_| {}).ok().unwrap();
        qp.flush().unwrap();
        cid
    }

    #[test]
    fn reads_in_pieces_and_writes_through_r2t_with_digests() {
        for digests in [false, true] {
            let (mut qp, mut c) = ready(digests);
            let cid = own_read(&mut qp);
            let (sqe, _) = c.cmd();
            assert_eq!(sqe.cid, cid);
            assert!(sqe.dptr.is_transport());
            let page: Vec<u8> = (0..OWN_LEN).map(|i| (i % 251) as u8).collect();
            for (off, len, last) in [(0usize, 1000usize, false), (1000, OWN_LEN - 1000, true)] {
                let h = Header::C2HData(C2HData {
                    cccid: cid,
                    datao: off as u32,
                    datal: len as u32,
                    last,
                    success: false,
                });
                c.send(&h, &page[off..off + len]);
            }
            c.resp(cid, Status::SUCCESS, 0);
            let mut got = None;
            let err = drive(&mut qp, |q| {
                got = got
                    .take()
                    .or_else(|| q.pop_completion(|c, own| (c.cqe, own.to_vec())));
                got.is_some()
            });
            assert!(err.is_none(), "{err:?}");
            let (cqe, data) = got.unwrap();
            assert_eq!(cqe.status, Status::SUCCESS);
            assert_eq!(data, page);

            // A write the capsule cannot carry (max_icd 0): R2T, then one H2CData.
            let cmd = Command {
                sqe: Sqe::new(admin::SET_FEATURES, 0, 0),
                xfer: Xfer::HostToController,
                len: OWN_LEN,
                src: Src::Own,
            };
            let cid = qp
                .submit(cmd, None, |b| b.copy_from_slice(&page))
                .ok()
                .unwrap();
            qp.flush().unwrap();
            let (sqe, data) = c.cmd();
            assert!(data.is_empty() && sqe.dptr.is_transport() && sqe.dptr.length == 4096);
            assert_eq!(sqe.opcode, admin::SET_FEATURES);
            c.send(
                &Header::R2T(R2T {
                    cccid: cid,
                    ttag: 9,
                    r2to: 0,
                    r2tl: OWN_LEN as u32,
                }),
                &[],
            );
            let start = Instant::now();
            let (h, data) = loop {
                let _ = qp.poll(poller::time::ticks());
                c.s.set_nonblocking(true).unwrap();
                let mut chunk = [0u8; 8192];
                match c.s.read(&mut chunk) {
                    Ok(n) if n > 0 => c.buf.extend_from_slice(&chunk[..n]),
                    _ => {}
                }
                c.s.set_nonblocking(false).unwrap();
                let cfg = StreamConfig {
                    hdgst: digests,
                    ddgst: digests,
                    max_data: 1 << 20,
                    pda: 0,
                    expect: Direction::HostToController,
                    before_icreq: false,
                };
                if let Some((Pdu::H2CData { hdr, data }, n)) = stream::parse(&c.buf, &cfg).unwrap()
                {
                    let out = (hdr, data.unwrap().to_vec());
                    c.buf.drain(..n);
                    break out;
                }
                assert!(start.elapsed() < Duration::from_secs(10));
            };
            assert_eq!(
                (h.cccid, h.ttag, h.datao, h.datal, h.last),
                (cid, 9, 0, 4096, true)
            );
            assert_eq!(data, page);
            c.resp(cid, Status::SUCCESS, 0);
            let mut done = None;
            drive(&mut qp, |q| {
                done = done
                    .take()
                    .or_else(|| q.pop_completion(|c, _| c.cqe.status));
                done.is_some()
            });
            assert_eq!(done, Some(Status::SUCCESS));
            assert_eq!(qp.outstanding(), 0);

            // Protocol errors kill the qpair: data for a command not in flight.
            c.send(
                &Header::C2HData(C2HData {
                    cccid: 3,
                    datao: 0,
                    datal: 4,
                    last: true,
                    success: true,
                }),
                &[1, 2, 3, 4],
            );
            let e = drive(&mut qp, |_| false).unwrap();
            assert!(e.to_string().contains("not a read in flight"), "{e}");
            assert_eq!(qp.phase(), Phase::Dead);
        }
    }
}
