//! One NVMe/TCP connection (a qpair), owned by its poll group thread for its whole life.
//!
//! ```text
//! accept → AwaitIcReq → (ICResp) → Ready: Connect makes it an admin or I/O qpair
//!        → Closing (no more input; in-flight bdev I/O drains; a TermReq is flushed first)
//!        → freed by the poll group
//! ```
//!
//! Receiving: bytes land in `rbuf`; `stream::parse_header` checks each PDU header as soon as
//! it is in, and data (in-capsule or H2CData) is copied — or, for large transfers, read
//! straight — into the request's buffer, its digest checked there. Sending: a queue of slots
//! (and the connection's own ICResp / TermReq) written with `writev`: each slot's header bytes,
//! its data straight from its buffer, its data digest, its CapsuleResp; partial writes resume
//! where they stopped.
//!
//! Commands: Fabrics (Connect, Property Get/Set, Disconnect) here, admin commands through the
//! controller (`controller.rs`), NVM commands through `io.rs`.

use crate::target::buffers::{BufferPool, Waiter};
use crate::target::controller::{AdminOutcome, Controller};
use crate::target::io;
use crate::target::options::{ADMIN_IN_CAPSULE_DATA, TransportOptions};
use crate::target::poll_group::{self, GroupShared};
use crate::target::request::{Buf, Kind, Request, Slots, State, Tx};
use crate::target::subsystem::{
    ControllerEntry, ControllerEvents, ListenAddress, QpairInfo, Subsystem, Target,
};
use crate::wire::command::{Cqe, Sqe, Xfer, fctype};
use crate::wire::digest;
use crate::wire::fabrics::{
    CNTLID_DYNAMIC, ConnectCommand, ConnectData, ConnectInvalid, PropertyGet, PropertySet,
    connect_data, connect_sqe, connect_success_dw0,
};
use crate::wire::pdu::{
    C2HData, CapsuleResp, Direction, Fes, Framing, Header, IcResp, R2T, TermReq, encode_pdu,
};
use crate::wire::status::Status;
use crate::wire::stream::{self, PduError, StreamConfig};
use poller::ThreadHandle;
use std::collections::VecDeque;
use std::io::{ErrorKind, IoSlice, IoSliceMut, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use uuid::Uuid;

/// Receive buffer per connection: many capsules per `recv`; larger data goes straight to the
/// request's buffer.
const RBUF_LEN: usize = 64 * 1024;
/// Data still to come from this size up is read straight into the request's buffer.
const DIRECT_MIN: usize = 8 * 1024;
/// `recv`s per readiness event before the next connection gets its turn.
const READS_PER_POLL: usize = 4;
/// Iovecs per `writev`.
const IOV_BATCH: usize = 256;
/// Send-queue entries for the connection's own PDUs.
const CTRL_IC: u16 = u16::MAX;
const CTRL_TERM: u16 = u16::MAX - 1;
/// How long a connection may stay without a successful Connect.
pub const UNASSOCIATED_TIMEOUT_MS: u64 = 30_000;
/// How long a connection that sent a TermReq waits for the host to close.
const LINGER_MS: u64 = 1_000;
/// Own buffers are at least this big, so 4 KiB reads never need the pool.
const MIN_OWN_BUF: usize = 4096;

/// A qpair as seen from elsewhere: its thread and its place there.
#[derive(Clone, Debug)]
pub struct QpairRef {
    pub thread: ThreadHandle,
    pub group: usize,
    pub conn: u16,
    pub epoch: u16,
}

impl QpairRef {
    /// Runs `f` on the connection, on its thread, if it still exists.
    pub fn send(&self, f: impl FnOnce(&mut Connection, &mut GroupShared) + Send + 'static) {
        let (g, c, n) = (self.group, self.conn, self.epoch);
        self.thread
            .send_msg(move || poll_group::on_conn(g, c, n, f));
    }
}

struct IoQpair {
    qid: u16,
    qref: QpairRef,
    info: QpairInfo,
}

struct CtrlrState {
    closing: bool,
    admin: QpairInfo,
    io: Vec<IoQpair>,
}

/// What a controller shares with its I/O qpairs (which may live on other poll groups) and
/// with the control plane: registered in the subsystem as its `ControllerEvents`.
pub struct CtrlrShared {
    cntlid: u16,
    subsystem: Arc<Subsystem>,
    hostnqn: String,
    discovery: bool,
    admin: QpairRef,
    enabled: AtomicBool,
    io_granted: AtomicU16,
    num_io: AtomicU32,
    state: Mutex<CtrlrState>,
}

impl CtrlrShared {
    fn lock(&self) -> MutexGuard<'_, CtrlrState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ControllerEvents for CtrlrShared {
    fn namespace_changed(&self, nsid: u32) {
        self.admin.send(move |c, sh| c.namespace_changed(nsid, sh));
    }

    fn disconnect(&self) {
        self.admin
            .send(|c, sh| c.begin_close(sh, false, "the host lost access"));
    }

    fn qpairs(&self) -> Vec<QpairInfo> {
        let st = self.lock();
        let mut v = vec![st.admin.clone()];
        v.extend(st.io.iter().map(|q| q.info.clone()));
        v
    }

    fn num_io_qpairs(&self) -> u32 {
        self.num_io.load(Ordering::Acquire)
    }
}

/// Every live controller, for I/O queue Connects (which name the controller by cntlid).
static CTRLRS: Mutex<Vec<Arc<CtrlrShared>>> = Mutex::new(Vec::new());

fn ctrlrs() -> MutexGuard<'static, Vec<Arc<CtrlrShared>>> {
    CTRLRS.lock().unwrap_or_else(|p| p.into_inner())
}

/// The controller's end: its I/O qpairs are disconnected (by message to their threads) and it
/// leaves its subsystem and the registry.
fn teardown_controller(shared: &Arc<CtrlrShared>) {
    let io = {
        let mut st = shared.lock();
        if st.closing {
            return;
        }
        st.closing = true;
        std::mem::take(&mut st.io)
    };
    shared.num_io.store(0, Ordering::Release);
    for q in io {
        q.qref
            .send(|c, sh| c.begin_close(sh, false, "its controller is gone"));
    }
    ctrlrs().retain(|c| !Arc::ptr_eq(c, shared));
    let me = Arc::as_ptr(shared) as *const ();
    shared
        .subsystem
        .lock()
        .controllers
        .retain(|c| Arc::as_ptr(&c.events) as *const () != me);
}

/// Disconnects the controller's I/O qpairs (a controller reset keeps the admin queue).
fn disconnect_io_qpairs(shared: &CtrlrShared) {
    let io = std::mem::take(&mut shared.lock().io);
    shared.num_io.store(0, Ordering::Release);
    for q in io {
        q.qref
            .send(|c, sh| c.begin_close(sh, false, "the controller was reset"));
    }
}

enum Qpair {
    /// No Connect yet.
    None,
    Admin {
        ctrl: Box<Controller>,
        shared: Arc<CtrlrShared>,
    },
    Io {
        shared: Arc<CtrlrShared>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Rx {
    /// Collecting a PDU header in `rbuf`.
    Header,
    /// Data for `slot`'s `target` buffer at `off..end` (this PDU's data began at `start`),
    /// then its digest if `digest`.
    Data {
        slot: u16,
        target: Buf,
        start: u32,
        off: u32,
        end: u32,
        digest: bool,
        capsule: bool,
    },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Life {
    Open,
    /// No more commands; `flush`: send what is queued (a TermReq, a Disconnect's answer) first.
    Closing {
        flush: bool,
        linger_until: u64,
    },
}

pub struct Connection {
    pub id: u16,
    pub epoch: u16,
    sock: TcpStream,
    listen: ListenAddress,
    peer: ListenAddress,
    life: Life,
    qpair: Qpair,
    qid: u16,
    /// The subsystem view of the poll group this qpair uses (after Connect).
    pub view: Option<usize>,
    cfg: StreamConfig,
    framing: Framing,
    ic_done: bool,
    rbuf: Box<[u8]>,
    rstart: usize,
    rend: usize,
    rx: Rx,
    /// A capsule waits for a free slot (the host sent more than its queue holds).
    rx_blocked: bool,
    slots: Slots,
    sendq: VecDeque<u16>,
    /// Bytes of the head of `sendq` already written.
    sent: usize,
    ic_pdu: [u8; 128],
    term_pdu: [u8; 160],
    term_len: usize,
    sqhd: u16,
    sq_entries: u16,
    c2h_success: bool,
    /// In-capsule data this queue accepts.
    icd_limit: u32,
    /// On the poll group's list of connections to flush.
    pub dirty: bool,
    accepted_at: u64,
    opts: Arc<TransportOptions>,
}

fn ticks_ms(ms: u64) -> u64 {
    poller::time::us_to_ticks(ms.saturating_mul(1000))
}

/// A slot's data buffer for writing.
fn buf_mut<'a>(r: &'a mut Request, pool: &'a mut BufferPool, which: Buf) -> Option<&'a mut [u8]> {
    match which {
        Buf::None => None,
        Buf::Own => r.own.as_mut().map(|b| b.as_mut_slice()),
        Buf::Pool(i) => pool.get_mut(i).map(|b| b.as_mut_slice()),
    }
}

/// A slot's data buffer for reading.
pub fn buf_ref<'a>(r: &'a Request, pool: &'a BufferPool) -> Option<&'a [u8]> {
    match r.buf {
        Buf::None => None,
        Buf::Own => r.own.as_ref().map(|b| b.as_slice()),
        Buf::Pool(i) => pool.get(i).map(|b| b.as_slice()),
    }
}

/// Fabrics Connect failures: the status and the CQE dw0 (IATTR/IPO for invalid parameters).
struct Refused(Status, u32);

fn invalid_cmd(off: u16) -> Refused {
    Refused(
        Status::CONNECT_INVALID_PARAMETERS,
        ConnectInvalid::command(off).to_dw0(),
    )
}

fn invalid_data(off: u16) -> Refused {
    Refused(
        Status::CONNECT_INVALID_PARAMETERS,
        ConnectInvalid::data(off).to_dw0(),
    )
}

impl Connection {
    pub fn new(
        id: u16,
        epoch: u16,
        sock: TcpStream,
        listen: ListenAddress,
        opts: Arc<TransportOptions>,
    ) -> std::io::Result<Connection> {
        sock.set_nonblocking(true)?;
        sock.set_nodelay(true)?;
        let peer = ListenAddress::of_socket(sock.peer_addr()?);
        let max_data = ADMIN_IN_CAPSULE_DATA
            .max(opts.in_capsule_data_size)
            .max(opts.max_io_size);
        Ok(Connection {
            id,
            epoch,
            sock,
            listen,
            peer,
            life: Life::Open,
            qpair: Qpair::None,
            qid: 0,
            view: None,
            cfg: StreamConfig::initial(Direction::HostToController, max_data),
            framing: Framing::NONE,
            ic_done: false,
            rbuf: vec![0u8; RBUF_LEN].into_boxed_slice(),
            rstart: 0,
            rend: 0,
            rx: Rx::Header,
            rx_blocked: false,
            slots: Slots::bootstrap(ADMIN_IN_CAPSULE_DATA as usize),
            sendq: VecDeque::with_capacity(4),
            sent: 0,
            ic_pdu: [0; 128],
            term_pdu: [0; 160],
            term_len: 0,
            sqhd: 0,
            sq_entries: 0,
            c2h_success: false,
            icd_limit: ADMIN_IN_CAPSULE_DATA,
            dirty: false,
            accepted_at: poller::time::ticks(),
            opts,
        })
    }

    pub fn sock(&self) -> &TcpStream {
        &self.sock
    }

    pub fn is_admin(&self) -> bool {
        matches!(self.qpair, Qpair::Admin { .. })
    }

    pub fn is_io(&self) -> bool {
        matches!(self.qpair, Qpair::Io { .. })
    }

    pub fn is_closing(&self) -> bool {
        self.life != Life::Open
    }

    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    fn mark_dirty(&mut self, sh: &mut GroupShared) {
        if !self.dirty {
            self.dirty = true;
            sh.dirty.push(self.id);
        }
    }

    // ---------------------------------------------------------------------------------------
    // Receiving

    /// The socket is readable: read, and handle every complete PDU.
    pub fn on_readable(&mut self, sh: &mut GroupShared) {
        if let Life::Closing { .. } = self.life {
            self.drain_input();
            return;
        }
        for _ in 0..READS_PER_POLL {
            if self.rx_blocked || self.life != Life::Open {
                return;
            }
            let (n, asked) = match self.read_once(sh) {
                Ok(r) => r,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!("NVMe/TCP connection from {}: {e}", self.peer.traddr);
                    self.begin_close(sh, false, "socket error");
                    return;
                }
            };
            if n == 0 && asked > 0 {
                self.begin_close(sh, false, "the host closed the connection");
                return;
            }
            self.process_input(sh);
            if n < asked {
                return;
            }
        }
    }

    /// One `recv` (or `readv` straight into a request's buffer): bytes read, bytes asked for.
    fn read_once(&mut self, sh: &mut GroupShared) -> std::io::Result<(usize, usize)> {
        if self.rstart == self.rend {
            self.rstart = 0;
            self.rend = 0;
        }
        if let Rx::Data {
            slot,
            target,
            off,
            end,
            ..
        } = self.rx
            && self.rstart == self.rend
            && (end - off) as usize >= DIRECT_MIN
        {
            let Some(dest) = self
                .slots
                .get_mut(slot)
                .and_then(|r| buf_mut(r, &mut sh.pool, target))
                .and_then(|b| b.get_mut(off as usize..end as usize))
            else {
                return Err(std::io::Error::other("request buffer missing"));
            };
            let want = dest.len() + self.rbuf.len();
            let n = (&self.sock)
                .read_vectored(&mut [IoSliceMut::new(dest), IoSliceMut::new(&mut self.rbuf[..])])?;
            let d = n.min((end - off) as usize);
            if let Rx::Data { off, .. } = &mut self.rx {
                *off += d as u32;
            }
            self.rend = n - d;
            return Ok((n, want));
        }
        if self.rbuf.len() - self.rend < 512 && self.rstart > 0 {
            self.rbuf.copy_within(self.rstart..self.rend, 0);
            self.rend -= self.rstart;
            self.rstart = 0;
        }
        let Some(free) = self.rbuf.get_mut(self.rend..) else {
            return Ok((0, 0));
        };
        let want = free.len();
        if want == 0 {
            return Ok((0, 0));
        }
        let n = (&self.sock).read(free)?;
        self.rend += n;
        Ok((n, want))
    }

    /// After a TermReq: read and drop whatever the host still sends until it closes.
    fn drain_input(&mut self) {
        let mut scratch = [0u8; 4096];
        loop {
            match (&self.sock).read(&mut scratch) {
                Ok(0) => {
                    if let Life::Closing {
                        flush: false,
                        linger_until,
                    } = &mut self.life
                    {
                        *linger_until = 0;
                    }
                    return;
                }
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => {
                    if let Life::Closing {
                        flush: false,
                        linger_until,
                    } = &mut self.life
                    {
                        *linger_until = 0;
                    }
                    return;
                }
            }
        }
    }

    /// Handles every whole PDU (and every piece of data) in `rbuf`.
    pub fn process_input(&mut self, sh: &mut GroupShared) {
        while self.life == Life::Open && !self.rx_blocked {
            match self.rx {
                Rx::Header => {
                    if !self.next_header(sh) {
                        return;
                    }
                }
                Rx::Data { .. } => {
                    if !self.next_data(sh) {
                        return;
                    }
                }
            }
        }
    }

    /// Handles the PDU header at `rstart`; false when more bytes are needed (or it failed).
    fn next_header(&mut self, sh: &mut GroupShared) -> bool {
        let avail = self.rbuf.get(self.rstart..self.rend).unwrap_or_default();
        if avail.is_empty() {
            return false;
        }
        let (header, frame) = match stream::parse_header(avail, &self.cfg) {
            Ok(Some(h)) => h,
            Ok(None) => return false,
            Err(e) => {
                self.fatal(sh, e);
                return false;
            }
        };
        match header {
            Header::IcReq(ic) => {
                self.rstart += frame.len;
                self.ic_done = true;
                self.cfg.before_icreq = false;
                self.cfg.hdgst = ic.hdgst;
                self.cfg.ddgst = ic.ddgst;
                self.framing = Framing {
                    hdgst: ic.hdgst,
                    ddgst: ic.ddgst,
                    pda: ic.hpda,
                };
                let resp = Header::IcResp(IcResp {
                    pfv: 0,
                    cpda: 0,
                    hdgst: ic.hdgst,
                    ddgst: ic.ddgst,
                    maxh2cdata: self.opts.max_io_size,
                });
                if encode_pdu(&mut self.ic_pdu, &resp, &Framing::NONE, &[]).is_err() {
                    self.begin_close(sh, false, "cannot encode ICResp");
                    return false;
                }
                self.enqueue(CTRL_IC, sh);
                true
            }
            Header::H2CTermReq(t) => {
                tracing::info!(
                    "NVMe/TCP host {} terminated the connection (FES {:#x}, FEI {:#x})",
                    self.peer.traddr,
                    t.fes,
                    t.fei
                );
                self.begin_close(sh, false, "the host sent a TermReq");
                false
            }
            Header::CapsuleCmd(cmd) => {
                let Some(slot) = self.slots.alloc() else {
                    // The host sent more commands than its queue holds: wait for a slot.
                    self.rx_blocked = true;
                    return false;
                };
                self.rstart += frame.header_len;
                let sqe = Sqe::decode(&cmd.sqe).unwrap_or_default();
                if self.sq_entries > 0 {
                    self.sqhd = (self.sqhd + 1) % self.sq_entries;
                } else {
                    self.sqhd = self.sqhd.wrapping_add(1);
                }
                let Some(r) = self.slots.get_mut(slot) else {
                    return false;
                };
                r.start(sqe);
                if frame.data_len == 0 {
                    self.command(slot, 0, sh);
                    return true;
                }
                if frame.data_len > self.icd_limit as usize || frame.data_len > r.own_len() {
                    self.fatal(
                        sh,
                        PduError {
                            fes: Fes::DataLimitExceeded,
                            fei: 0,
                            reason: "in-capsule data over the queue's limit",
                            reply: true,
                        },
                    );
                    return false;
                }
                r.buf = Buf::Own;
                self.rx = Rx::Data {
                    slot,
                    target: Buf::Own,
                    start: 0,
                    off: 0,
                    end: frame.data_len as u32,
                    digest: frame.data_digest,
                    capsule: true,
                };
                true
            }
            Header::H2CData(h) => {
                let slot = h.ttag.wrapping_sub(1);
                let ok = self.slots.get(slot).is_some_and(|r| {
                    r.state == State::AwaitH2C && r.r2t_out && r.sqe.cid == h.cccid
                });
                if !ok {
                    self.fatal(
                        sh,
                        PduError {
                            fes: Fes::InvalidHeaderField,
                            fei: 10,
                            reason: "H2CData for no outstanding R2T",
                            reply: true,
                        },
                    );
                    return false;
                }
                let Some(r) = self.slots.get(slot) else {
                    return false;
                };
                let end = u64::from(h.datao) + u64::from(h.datal);
                if h.datao != r.h2c_done || end > u64::from(r.len) {
                    self.fatal(
                        sh,
                        PduError {
                            fes: Fes::DataOutOfRange,
                            fei: 12,
                            reason: "H2CData outside the transfer",
                            reply: true,
                        },
                    );
                    return false;
                }
                if h.datal > self.opts.max_io_size {
                    self.fatal(
                        sh,
                        PduError {
                            fes: Fes::DataLimitExceeded,
                            fei: 16,
                            reason: "H2CData over MAXH2CDATA",
                            reply: true,
                        },
                    );
                    return false;
                }
                let target = r.buf;
                self.rstart += frame.header_len;
                self.rx = Rx::Data {
                    slot,
                    target,
                    start: h.datao,
                    off: h.datao,
                    end: end as u32,
                    digest: frame.data_digest,
                    capsule: false,
                };
                true
            }
            _ => {
                self.fatal(
                    sh,
                    PduError {
                        fes: Fes::InvalidHeaderField,
                        fei: 0,
                        reason: "PDU type not accepted here",
                        reply: true,
                    },
                );
                false
            }
        }
    }

    /// Moves data from `rbuf` into the request's buffer; at its end checks the digest and
    /// goes on with the command. False when more bytes are needed.
    fn next_data(&mut self, sh: &mut GroupShared) -> bool {
        let Rx::Data {
            slot,
            target,
            start,
            off,
            end,
            digest: has_digest,
            capsule,
        } = self.rx
        else {
            return true;
        };
        if off < end {
            let n = (self.rend - self.rstart).min((end - off) as usize);
            if n == 0 {
                return false;
            }
            let Some(src) = self.rbuf.get(self.rstart..self.rstart + n) else {
                return false;
            };
            let Some(dest) = self
                .slots
                .get_mut(slot)
                .and_then(|r| buf_mut(r, &mut sh.pool, target))
                .and_then(|b| b.get_mut(off as usize..off as usize + n))
            else {
                self.begin_close(sh, false, "request buffer missing");
                return false;
            };
            dest.copy_from_slice(src);
            self.rstart += n;
            if let Rx::Data { off, .. } = &mut self.rx {
                *off += n as u32;
            }
            if off as usize + n < end as usize {
                return false;
            }
        }
        if has_digest {
            // Only bytes received count: the digest may still be on its way.
            let Some(d) = self
                .rbuf
                .get(self.rstart..self.rend)
                .and_then(|b| b.get(..digest::DIGEST_LEN))
            else {
                return false;
            };
            let received = u32::from_le_bytes([d[0], d[1], d[2], d[3]]);
            self.rstart += digest::DIGEST_LEN;
            let computed = self
                .slots
                .get_mut(slot)
                .and_then(|r| buf_mut(r, &mut sh.pool, target))
                .and_then(|b| b.get(start as usize..end as usize))
                .map(digest::crc32c);
            if computed != Some(received)
                && let Some(r) = self.slots.get_mut(slot)
            {
                tracing::warn!(
                    "NVMe/TCP host {}: data digest mismatch (cid {})",
                    self.peer.traddr,
                    r.sqe.cid
                );
                r.digest_error = true;
            }
        }
        self.rx = Rx::Header;
        if capsule {
            self.command(slot, end, sh);
        } else {
            self.h2c_received(slot, end, sh);
        }
        true
    }

    /// A protocol error: answer with a C2HTermReq (unless the bad PDU was a TermReq), then close.
    fn fatal(&mut self, sh: &mut GroupShared, e: PduError) {
        tracing::warn!(
            "NVMe/TCP host {}:{}: {}; closing the connection",
            self.peer.traddr,
            self.peer.trsvcid,
            e
        );
        if !e.reply {
            self.begin_close(sh, false, "bad TermReq");
            return;
        }
        let offending =
            stream::offending_header(self.rbuf.get(self.rstart..self.rend).unwrap_or_default());
        let term = Header::C2HTermReq(TermReq::new(e.fes, e.fei));
        match encode_pdu(&mut self.term_pdu, &term, &Framing::NONE, offending) {
            Ok(n) => {
                self.term_len = n;
                self.enqueue(CTRL_TERM, sh);
                self.begin_close(sh, true, "protocol error");
            }
            Err(_) => self.begin_close(sh, false, "protocol error"),
        }
    }

    // ---------------------------------------------------------------------------------------
    // Commands

    /// A whole capsule is in (`icd` bytes of in-capsule data in the slot's own buffer).
    fn command(&mut self, slot: u16, icd: u32, sh: &mut GroupShared) {
        let max_io = self.opts.max_io_size;
        let is_admin_q = !self.is_io();
        let Some(r) = self.slots.get_mut(slot) else {
            return;
        };
        if r.digest_error {
            return self.complete(slot, Status::TRANSIENT_TRANSPORT_ERROR, 0, 0, sh);
        }
        let sqe = r.sqe;
        r.kind = if sqe.is_fabrics() {
            Kind::Fabrics
        } else if is_admin_q {
            Kind::Admin
        } else {
            Kind::Io
        };
        // Where the data is.
        let sgl = sqe.dptr;
        let xfer = sqe.xfer();
        if sgl.length > 0 {
            if sgl.is_in_capsule() {
                let end = sgl.address.saturating_add(u64::from(sgl.length));
                if xfer != Xfer::HostToController {
                    return self.complete(slot, Status::SGL_INVALID_TYPE, 0, 0, sh);
                }
                if sgl.address > u64::from(icd) {
                    return self.complete(slot, Status::SGL_INVALID_OFFSET, 0, 0, sh);
                }
                if end > u64::from(icd) {
                    return self.complete(slot, Status::SGL_INVALID_DATA_LENGTH, 0, 0, sh);
                }
                if sgl.address > 0
                    && let Some(b) = r.own.as_mut()
                {
                    let a = sgl.address as usize;
                    b.as_mut_slice().copy_within(a..end as usize, 0);
                }
                r.buf = Buf::Own;
                r.len = sgl.length;
            } else if sgl.is_transport() {
                match xfer {
                    Xfer::HostToController => r.h2c = true,
                    Xfer::ControllerToHost => {}
                    _ => return self.complete(slot, Status::INVALID_FIELD, 0, 0, sh),
                }
                if sgl.length > max_io {
                    return self.complete(slot, Status::INVALID_FIELD, 0, 0, sh);
                }
                r.buf = Buf::None;
                r.len = sgl.length;
            } else {
                return self.complete(slot, Status::SGL_INVALID_TYPE, 0, 0, sh);
            }
        } else {
            r.buf = Buf::None;
        }
        match r.kind {
            Kind::Fabrics => {}
            _ if matches!(self.qpair, Qpair::None) => {
                return self.complete(slot, Status::COMMAND_SEQUENCE_ERROR, 0, 0, sh);
            }
            Kind::Admin => {}
            Kind::Io => {
                let view = self
                    .view
                    .and_then(|v| sh.views.get(v))
                    .and_then(Option::as_ref);
                if let Err(st) = io::prepare(r, view, max_io) {
                    return self.complete(slot, st, 0, 0, sh);
                }
            }
        }
        self.with_buffer(slot, sh);
    }

    /// Gives the request a buffer big enough for its data (its own, or one from the pool —
    /// waiting for one if need be), then moves on to its data.
    fn with_buffer(&mut self, slot: u16, sh: &mut GroupShared) {
        let (id, epoch) = (self.id, self.epoch);
        let Some(r) = self.slots.get_mut(slot) else {
            return;
        };
        if r.len > 0 && r.buf == Buf::None {
            if r.len as usize <= r.own_len() {
                r.buf = Buf::Own;
            } else if let Some(b) = sh.pool.take() {
                r.buf = Buf::Pool(b);
            } else {
                r.state = State::NeedBuffer;
                sh.pool.wait(Waiter {
                    conn: id,
                    epoch,
                    slot,
                });
                return;
            }
        }
        self.data_stage(slot, sh);
    }

    /// The pool has a buffer for a waiting request.
    pub fn buffer_ready(&mut self, slot: u16, b: u32, sh: &mut GroupShared) {
        match self.slots.get_mut(slot) {
            Some(r) if r.state == State::NeedBuffer && self.life == Life::Open => {
                r.buf = Buf::Pool(b);
                self.data_stage(slot, sh);
            }
            _ => sh.pool.give(b),
        }
    }

    /// Host-to-controller data comes next (R2T), or the command runs now.
    fn data_stage(&mut self, slot: u16, sh: &mut GroupShared) {
        let framing = self.framing;
        let Some(r) = self.slots.get_mut(slot) else {
            return;
        };
        if r.h2c {
            let hdr = Header::R2T(R2T {
                cccid: r.sqe.cid,
                ttag: slot.wrapping_add(1),
                r2to: 0,
                r2tl: r.len,
            });
            match hdr.encode(&mut r.hdr, &framing, 0) {
                Ok(f) => {
                    r.tx = Tx {
                        h1: f.header_len as u8,
                        r2t: true,
                        ..Tx::default()
                    };
                    r.state = State::AwaitH2C;
                    self.enqueue(slot, sh);
                }
                Err(_) => self.complete(slot, Status::INTERNAL, 0, 0, sh),
            }
            return;
        }
        self.execute(slot, sh);
    }

    /// H2CData up to `end` is in.
    fn h2c_received(&mut self, slot: u16, end: u32, sh: &mut GroupShared) {
        let Some(r) = self.slots.get_mut(slot) else {
            return;
        };
        r.h2c_done = end;
        if end < r.len {
            return;
        }
        if r.digest_error {
            return self.complete(slot, Status::TRANSIENT_TRANSPORT_ERROR, 0, 0, sh);
        }
        self.execute(slot, sh);
    }

    fn execute(&mut self, slot: u16, sh: &mut GroupShared) {
        let Some(kind) = self.slots.get(slot).map(|r| r.kind) else {
            return;
        };
        match kind {
            Kind::Fabrics => self.fabrics(slot, sh),
            Kind::Admin => self.admin(slot, sh),
            Kind::Io => self.submit_io(slot, sh),
        }
    }

    // ---------------------------------------------------------------------------------------
    // NVM I/O

    /// Sends (or resends, after a wait for a bdev_io) the request's bdev I/O.
    pub fn submit_io(&mut self, slot: u16, sh: &mut GroupShared) {
        let word = poll_group::word(sh.index, self.id, self.epoch, slot);
        let Some(r) = self.slots.get_mut(slot) else {
            return;
        };
        let ns = self
            .view
            .and_then(|v| sh.views.get(v))
            .and_then(Option::as_ref)
            .and_then(|v| v.find(r.sqe.nsid));
        let Some(ns) = ns else {
            if r.pending > 0 {
                // A namespace removed between two ranges: finish with what is in flight.
                r.error.get_or_insert(Status::INVALID_NAMESPACE);
                r.next_range = u16::MAX;
                r.state = State::Exec;
                return;
            }
            return self.complete(slot, Status::INVALID_NAMESPACE, 0, 0, sh);
        };
        let before = r.pending;
        let outcome = io::submit(r, ns, &sh.pool, word);
        let added = u64::from(r.pending.saturating_sub(before));
        sh.stats.pending_bdev_io += added;
        match outcome {
            io::Outcome::Submitted => {}
            io::Outcome::Done(st) => {
                if r.pending == 0 {
                    let out = if st.is_success() && r.sqe.opcode == crate::wire::command::io::READ {
                        r.len
                    } else {
                        0
                    };
                    r.data_out = out;
                    self.complete(slot, st, 0, 0, sh);
                }
            }
        }
    }

    /// A bdev I/O of `slot` finished with `st`.
    pub fn io_done(&mut self, slot: u16, st: Status, sh: &mut GroupShared) {
        sh.stats.pending_bdev_io = sh.stats.pending_bdev_io.saturating_sub(1);
        let closing = self.life != Life::Open;
        let Some(r) = self.slots.get_mut(slot) else {
            return;
        };
        r.pending = r.pending.saturating_sub(1);
        if !st.is_success() && r.error.is_none() {
            r.error = Some(st);
        }
        if r.pending > 0 || r.state != State::Exec {
            return;
        }
        if !io::all_submitted(r) {
            // Dataset Management with ranges left (a wait for a bdev_io ended): go on.
            if closing {
                self.release(slot, sh);
            } else {
                self.submit_io(slot, sh);
            }
            return;
        }
        if closing {
            self.release(slot, sh);
            return;
        }
        let status = r.error.unwrap_or(Status::SUCCESS);
        r.data_out = if status.is_success() && r.sqe.opcode == crate::wire::command::io::READ {
            r.len
        } else {
            0
        };
        self.complete(slot, status, 0, 0, sh);
    }

    /// A bdev_io is free again for a request that waited for one.
    pub fn io_retry(&mut self, slot: u16, sh: &mut GroupShared) {
        let Some(r) = self.slots.get_mut(slot) else {
            return;
        };
        if r.state != State::IoWait {
            return;
        }
        r.state = State::Exec;
        if self.life != Life::Open {
            if r.pending == 0 {
                self.release(slot, sh);
            }
            return;
        }
        self.submit_io(slot, sh);
    }

    // ---------------------------------------------------------------------------------------
    // Admin

    fn admin(&mut self, slot: u16, sh: &mut GroupShared) {
        let Qpair::Admin { ctrl, shared } = &mut self.qpair else {
            return self.complete(slot, Status::COMMAND_SEQUENCE_ERROR, 0, 0, sh);
        };
        let Some(r) = self.slots.get_mut(slot) else {
            return;
        };
        ctrl.keep_alive_received(poller::time::ticks());
        let sqe = r.sqe;
        let len = r.len as usize;
        let buf = r.buf;
        let mut empty: [u8; 0] = [];
        let data: &mut [u8] = match buf_mut(r, &mut sh.pool, buf).and_then(|b| b.get_mut(..len)) {
            Some(d) => d,
            None => &mut empty,
        };
        let outcome = ctrl.admin(&sqe, data);
        shared
            .io_granted
            .store(ctrl.io_queues_granted(), Ordering::Release);
        match outcome {
            AdminOutcome::Done {
                status,
                dw0,
                data_len,
            } => {
                if let Some(r) = self.slots.get_mut(slot) {
                    r.data_out = if sqe.xfer() == Xfer::ControllerToHost && status.is_success() {
                        data_len.min(r.len)
                    } else {
                        0
                    };
                }
                self.complete(slot, status, dw0, 0, sh);
            }
            AdminOutcome::Parked => {
                if let Some(r) = self.slots.get_mut(slot) {
                    r.state = State::Parked;
                }
            }
            AdminOutcome::Abort { sqid, cid } => {
                // Only a parked Asynchronous Event Request can be aborted here (the controller
                // has forgotten it already); commands in the bdev layer run to completion.
                let aer = if sqid == 0 {
                    self.slots
                        .reqs
                        .iter()
                        .position(|r| r.state == State::Parked && r.sqe.cid == cid)
                } else {
                    None
                };
                let answer = match &self.qpair {
                    Qpair::Admin { ctrl, .. } => ctrl.abort_result(aer.is_some()),
                    _ => AdminOutcome::dw0(1),
                };
                if let Some(a) = aer {
                    self.complete(a as u16, Status::ABORT_REQUESTED, 0, 0, sh);
                }
                let (status, dw0) = match answer {
                    AdminOutcome::Done { status, dw0, .. } => (status, dw0),
                    _ => (Status::SUCCESS, 1),
                };
                self.complete(slot, status, dw0, 0, sh);
            }
        }
    }

    /// A namespace of the controller's subsystem changed: maybe an AER completes.
    pub fn namespace_changed(&mut self, nsid: u32, sh: &mut GroupShared) {
        if self.life != Life::Open {
            return;
        }
        let Qpair::Admin { ctrl, .. } = &mut self.qpair else {
            return;
        };
        let Some(aer) = ctrl.namespace_changed(nsid) else {
            return;
        };
        let slot = self
            .slots
            .reqs
            .iter()
            .position(|r| r.state == State::Parked && r.sqe.cid == aer.cid);
        if let Some(s) = slot {
            self.complete(s as u16, Status::SUCCESS, aer.dw0, 0, sh);
        }
    }

    /// Keep alive: true when the controller's KATO passed without a command.
    pub fn keep_alive_expired(&self, now: u64) -> bool {
        match &self.qpair {
            Qpair::Admin { ctrl, .. } => {
                self.life == Life::Open && ctrl.kato_ms() > 0 && ctrl.keep_alive_expired(now)
            }
            _ => false,
        }
    }

    /// The timer's look: keep alive, a connection that never connected, a linger that ended.
    pub fn timer(&mut self, now: u64, sh: &mut GroupShared) {
        if self.keep_alive_expired(now) {
            if let Qpair::Admin { ctrl, shared } = &self.qpair {
                tracing::error!(
                    "Disconnecting host {} from subsystem {} due to keep alive timeout",
                    ctrl.hostnqn(),
                    shared.subsystem.nqn()
                );
            }
            self.begin_close(sh, false, "keep alive timeout");
            return;
        }
        if self.life == Life::Open
            && matches!(self.qpair, Qpair::None)
            && now.saturating_sub(self.accepted_at) > ticks_ms(UNASSOCIATED_TIMEOUT_MS)
        {
            tracing::info!(
                "NVMe/TCP connection from {}:{} sent no Connect in {} s; closing it",
                self.peer.traddr,
                self.peer.trsvcid,
                UNASSOCIATED_TIMEOUT_MS / 1000
            );
            self.begin_close(sh, false, "no Connect");
        }
        if let Life::Closing {
            flush,
            linger_until,
        } = self.life
            && linger_until != 0
            && now > linger_until
        {
            if flush {
                // The host does not read what is queued: give up on it.
                self.begin_close(sh, false, "the host stopped reading");
            }
            self.life = Life::Closing {
                flush: false,
                linger_until: 0,
            };
        }
    }

    // ---------------------------------------------------------------------------------------
    // Fabrics

    fn fabrics(&mut self, slot: u16, sh: &mut GroupShared) {
        let Some(r) = self.slots.get(slot) else {
            return;
        };
        let sqe = r.sqe;
        match sqe.fctype() {
            fctype::CONNECT => match self.connect(slot, sh) {
                Ok(dw0) => self.complete(slot, Status::SUCCESS, dw0, 0, sh),
                Err(Refused(st, dw0)) => self.complete(slot, st, dw0, 0, sh),
            },
            fctype::PROPERTY_GET => {
                let Qpair::Admin { ctrl, .. } = &mut self.qpair else {
                    return self.complete(slot, Status::COMMAND_SEQUENCE_ERROR, 0, 0, sh);
                };
                ctrl.keep_alive_received(poller::time::ticks());
                let res = PropertyGet::from_sqe(&sqe)
                    .map_err(|_| Status::INVALID_FIELD)
                    .and_then(|p| ctrl.property_get(p.offset, p.size));
                match res {
                    Ok(v) => self.complete(slot, Status::SUCCESS, v as u32, (v >> 32) as u32, sh),
                    Err(st) => self.complete(slot, st, 0, 0, sh),
                }
            }
            fctype::PROPERTY_SET => {
                let Qpair::Admin { ctrl, shared } = &mut self.qpair else {
                    return self.complete(slot, Status::COMMAND_SEQUENCE_ERROR, 0, 0, sh);
                };
                ctrl.keep_alive_received(poller::time::ticks());
                let res = PropertySet::from_sqe(&sqe)
                    .map_err(|_| Status::INVALID_FIELD)
                    .and_then(|p| ctrl.property_set(p.offset, p.size, p.value));
                let was = shared.enabled.load(Ordering::Acquire);
                let now = ctrl.enabled();
                shared.enabled.store(now, Ordering::Release);
                // A controller reset deletes the I/O queues; outstanding AERs stay with
                // their commands (the controller keeps them).
                if was && !now {
                    disconnect_io_qpairs(shared);
                }
                match res {
                    Ok(()) => self.complete(slot, Status::SUCCESS, 0, 0, sh),
                    Err(st) => self.complete(slot, st, 0, 0, sh),
                }
            }
            fctype::DISCONNECT => {
                self.complete(slot, Status::SUCCESS, 0, 0, sh);
                self.begin_close(sh, true, "the host disconnected the queue");
            }
            _ => self.complete(slot, Status::INVALID_OPCODE, 0, 0, sh),
        }
    }

    /// Fabrics Connect: checks it and makes this connection an admin or I/O qpair.
    fn connect(&mut self, slot: u16, sh: &mut GroupShared) -> Result<u32, Refused> {
        if !matches!(self.qpair, Qpair::None) {
            return Err(Refused(Status::COMMAND_SEQUENCE_ERROR, 0));
        }
        let Some(r) = self.slots.get(slot) else {
            return Err(Refused(Status::INTERNAL, 0));
        };
        let cmd = ConnectCommand::from_sqe(&r.sqe).map_err(|_| invalid_cmd(connect_sqe::QID))?;
        if cmd.recfmt != 0 {
            return Err(Refused(Status::CONNECT_INCOMPATIBLE_FORMAT, 0));
        }
        let data = buf_ref(r, &sh.pool)
            .and_then(|b| b.get(..r.len as usize))
            .ok_or(Refused(Status::SGL_INVALID_DATA_LENGTH, 0))?;
        let data = ConnectData::decode(data).map_err(|_| invalid_data(connect_data::SUBNQN))?;
        let subnqn = data.subnqn.as_str();
        let hostnqn = data.hostnqn.as_str().to_string();
        let Some(sub) = Target::get().find(subnqn) else {
            tracing::warn!(
                "Connect from {hostnqn} to unknown subsystem {subnqn} refused ({})",
                self.peer.traddr
            );
            return Err(invalid_data(connect_data::SUBNQN));
        };
        if cmd.sqsize == 0 {
            return Err(invalid_cmd(connect_sqe::SQSIZE));
        }
        let entries = u32::from(cmd.sqsize) + 1;
        if cmd.qid == 0 {
            if entries > self.opts.max_aq_depth {
                return Err(invalid_cmd(connect_sqe::SQSIZE));
            }
            self.connect_admin(sub, cmd, data.cntlid, data.hostid, hostnqn, sh)
        } else {
            if entries > u32::from(self.opts.max_queue_depth) {
                return Err(invalid_cmd(connect_sqe::SQSIZE));
            }
            self.connect_io(sub, cmd, data.cntlid, hostnqn, sh)
        }
    }

    fn access_check(
        &self,
        st: &crate::target::subsystem::SubsystemState,
        hostnqn: &str,
    ) -> Result<(), Refused> {
        if !st.allows_listener(&self.listen) {
            tracing::warn!(
                "Connect from {hostnqn} to {}: not listening on {}:{} for it",
                st.nqn,
                self.listen.traddr,
                self.listen.trsvcid
            );
            return Err(invalid_data(connect_data::SUBNQN));
        }
        if !st.allows_host(hostnqn) {
            tracing::warn!(
                "Connect from host {hostnqn} to {} refused: host not allowed",
                st.nqn
            );
            return Err(Refused(
                Status::CONNECT_INVALID_HOST,
                ConnectInvalid::data(connect_data::HOSTNQN).to_dw0(),
            ));
        }
        Ok(())
    }

    fn connect_admin(
        &mut self,
        sub: Arc<Subsystem>,
        cmd: ConnectCommand,
        cntlid: u16,
        hostid: [u8; 16],
        hostnqn: String,
        sh: &mut GroupShared,
    ) -> Result<u32, Refused> {
        if cntlid != CNTLID_DYNAMIC {
            return Err(invalid_data(connect_data::CNTLID));
        }
        let kato = self.opts.effective_kato(cmd.kato);
        let admin_info = QpairInfo {
            cntlid: 0,
            qid: 0,
            state: "enabled",
            thread: sh.name.clone(),
            hostnqn: hostnqn.clone(),
            listen: self.listen.clone(),
            peer: self.peer.clone(),
        };
        let qref = QpairRef {
            thread: sh.thread.clone(),
            group: sh.index,
            conn: self.id,
            epoch: self.epoch,
        };
        let hostid = Uuid::from_bytes(hostid);
        let shared = {
            let mut st = sub.lock();
            self.access_check(&st, &hostnqn)?;
            let Some(cntlid) = st.allocate_cntlid() else {
                return Err(Refused(Status::CONNECT_CONTROLLER_BUSY, 0));
            };
            let discovery = st.subtype == crate::target::subsystem::SubsystemType::Discovery;
            let shared = Arc::new(CtrlrShared {
                cntlid,
                subsystem: sub.clone(),
                hostnqn: hostnqn.clone(),
                discovery,
                admin: qref,
                enabled: AtomicBool::new(false),
                io_granted: AtomicU16::new(0),
                num_io: AtomicU32::new(0),
                state: Mutex::new(CtrlrState {
                    closing: false,
                    admin: QpairInfo {
                        cntlid,
                        ..admin_info
                    },
                    io: Vec::new(),
                }),
            });
            st.controllers.push(ControllerEntry {
                cntlid,
                hostnqn: hostnqn.clone(),
                hostid,
                discovery,
                thread: sh.thread.clone(),
                events: shared.clone(),
            });
            shared
        };
        ctrlrs().push(shared.clone());
        let mut ctrl = Box::new(Controller::new(
            shared.cntlid,
            sub.clone(),
            &hostnqn,
            hostid,
            kato,
            cmd.sqsize,
            self.opts.clone(),
        ));
        ctrl.keep_alive_received(poller::time::ticks());
        shared
            .io_granted
            .store(ctrl.io_queues_granted(), Ordering::Release);
        tracing::info!(
            "host {hostnqn} connected to {} as controller {} (admin queue of {}, KATO {} ms) from {}:{}",
            sub.nqn(),
            shared.cntlid,
            cmd.queue_entries(),
            kato,
            self.peer.traddr,
            self.peer.trsvcid
        );
        let cntlid = shared.cntlid;
        self.qpair = Qpair::Admin { ctrl, shared };
        self.qid = 0;
        self.icd_limit = ADMIN_IN_CAPSULE_DATA;
        self.associate(sub, cmd, ADMIN_IN_CAPSULE_DATA as usize, sh);
        sh.stats.admin_qpairs += 1;
        sh.stats.current_admin_qpairs += 1;
        Ok(connect_success_dw0(cntlid))
    }

    fn connect_io(
        &mut self,
        sub: Arc<Subsystem>,
        cmd: ConnectCommand,
        cntlid: u16,
        hostnqn: String,
        sh: &mut GroupShared,
    ) -> Result<u32, Refused> {
        self.access_check(&sub.lock(), &hostnqn)?;
        let shared = ctrlrs()
            .iter()
            .find(|c| Arc::ptr_eq(&c.subsystem, &sub) && c.cntlid == cntlid)
            .cloned()
            .ok_or_else(|| invalid_data(connect_data::CNTLID))?;
        if shared.hostnqn != hostnqn {
            return Err(invalid_data(connect_data::HOSTNQN));
        }
        if shared.discovery
            || !shared.enabled.load(Ordering::Acquire)
            || cmd.qid > shared.io_granted.load(Ordering::Acquire)
        {
            return Err(invalid_cmd(connect_sqe::QID));
        }
        let qref = QpairRef {
            thread: sh.thread.clone(),
            group: sh.index,
            conn: self.id,
            epoch: self.epoch,
        };
        {
            let mut st = shared.lock();
            if st.closing || st.io.iter().any(|q| q.qid == cmd.qid) {
                return Err(invalid_cmd(connect_sqe::QID));
            }
            st.io.push(IoQpair {
                qid: cmd.qid,
                qref,
                info: QpairInfo {
                    cntlid,
                    qid: cmd.qid,
                    state: "enabled",
                    thread: sh.name.clone(),
                    hostnqn: hostnqn.clone(),
                    listen: self.listen.clone(),
                    peer: self.peer.clone(),
                },
            });
            shared.num_io.store(st.io.len() as u32, Ordering::Release);
        }
        tracing::debug!(
            "host {hostnqn}: I/O queue {} of controller {cntlid} connected ({} entries)",
            cmd.qid,
            cmd.queue_entries()
        );
        self.qpair = Qpair::Io { shared };
        self.qid = cmd.qid;
        self.icd_limit = self.opts.in_capsule_data_size;
        let own = (self.opts.in_capsule_data_size as usize).max(MIN_OWN_BUF);
        self.associate(sub, cmd, own, sh);
        sh.stats.io_qpairs += 1;
        sh.stats.current_io_qpairs += 1;
        Ok(connect_success_dw0(cntlid))
    }

    /// What both Connects do once accepted: slots, the namespace view, queue parameters.
    fn associate(
        &mut self,
        sub: Arc<Subsystem>,
        cmd: ConnectCommand,
        own: usize,
        sh: &mut GroupShared,
    ) {
        let entries = usize::from(cmd.sqsize) + 1;
        let before = self.slots.len();
        self.slots.resize(entries, own);
        sh.pool.add_slots(self.slots.len().saturating_sub(before));
        self.sendq.reserve(self.slots.len() + 2);
        self.sq_entries = cmd.sqsize.saturating_add(1);
        self.sqhd %= self.sq_entries.max(1);
        self.c2h_success = self.opts.c2h_success && cmd.sq_flow_control_disabled();
        self.view = Some(sh.view_for(sub));
        sh.stats.current_unassociated_qpairs =
            sh.stats.current_unassociated_qpairs.saturating_sub(1);
    }

    // ---------------------------------------------------------------------------------------
    // Responses and sending

    /// Completes `slot` with `status`: its read data (`data_out` bytes) and CapsuleResp go
    /// on the send queue.
    fn complete(&mut self, slot: u16, status: Status, dw0: u32, dw1: u32, sh: &mut GroupShared) {
        let (framing, sqhd, qid, c2h_ok, io_q) = (
            self.framing,
            self.sqhd,
            self.qid,
            self.c2h_success,
            self.is_io(),
        );
        if self.life != Life::Open {
            return self.release(slot, sh);
        }
        let Some(r) = self.slots.get_mut(slot) else {
            return;
        };
        if io_q {
            sh.stats.completed_nvme_io += 1;
        }
        r.cqe = Cqe {
            dw0,
            dw1,
            sqhd,
            sqid: qid,
            cid: r.sqe.cid,
            status,
        };
        let data = if status.is_success() { r.data_out } else { 0 };
        let mut tx = Tx::default();
        let mut need_resp = true;
        if data > 0 {
            let success = c2h_ok && dw0 == 0 && dw1 == 0;
            let hdr = Header::C2HData(C2HData {
                cccid: r.sqe.cid,
                datao: 0,
                datal: data,
                last: true,
                success,
            });
            let Ok(f) = hdr.encode(&mut r.hdr, &framing, data as usize) else {
                return self.begin_close(sh, false, "cannot encode C2HData");
            };
            tx.h1 = f.header_len as u8;
            tx.data = data;
            if f.data_digest {
                let crc = buf_ref(r, &sh.pool)
                    .and_then(|b| b.get(..data as usize))
                    .map(digest::crc32c)
                    .unwrap_or(0);
                r.ddgst = crc.to_le_bytes();
                tx.ddgst = true;
            }
            need_resp = !success;
        }
        if need_resp {
            let resp = Header::CapsuleResp(CapsuleResp {
                cqe: r.cqe.to_bytes(),
            });
            let Ok(f) = resp.encode(&mut r.resp, &framing, 0) else {
                return self.begin_close(sh, false, "cannot encode CapsuleResp");
            };
            tx.h2 = f.header_len as u8;
        }
        r.tx = tx;
        r.state = State::Sending;
        self.enqueue(slot, sh);
    }

    fn enqueue(&mut self, item: u16, sh: &mut GroupShared) {
        self.sendq.push_back(item);
        self.mark_dirty(sh);
    }

    /// Frees a slot and its pool buffer.
    fn release(&mut self, slot: u16, sh: &mut GroupShared) {
        if let Some(r) = self.slots.get_mut(slot) {
            if let Buf::Pool(b) = r.buf {
                sh.pool.give(b);
            }
            r.buf = Buf::None;
        }
        self.slots.release(slot);
        if self.rx_blocked && self.slots.has_free() {
            self.rx_blocked = false;
            sh.unblocked.push(self.id);
        }
    }

    /// Writes as much of the send queue as the socket takes.
    pub fn flush(&mut self, sh: &mut GroupShared) {
        while !self.sendq.is_empty() {
            let mut iov = [IoSlice::new(&[]); IOV_BATCH];
            let mut n = 0;
            let mut skip = self.sent;
            for &item in self.sendq.iter() {
                if n >= IOV_BATCH {
                    break;
                }
                let parts = self.parts(item, &sh.pool);
                for p in parts.into_iter().flatten() {
                    if p.len() <= skip {
                        skip -= p.len();
                        continue;
                    }
                    if n >= IOV_BATCH {
                        break;
                    }
                    iov[n] = IoSlice::new(&p[skip..]);
                    skip = 0;
                    n += 1;
                }
            }
            if n == 0 {
                // Nothing left to write in the queued items (cannot happen): drop them.
                self.sendq.clear();
                self.sent = 0;
                break;
            }
            let written = match (&self.sock).write_vectored(&iov[..n]) {
                Ok(w) => w,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.mark_dirty(sh);
                    return;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.sendq.clear();
                    self.sent = 0;
                    self.begin_close(sh, false, "send failed");
                    self.release_unsent(sh);
                    return;
                }
            };
            self.advance(written, sh);
        }
        if let Life::Closing { flush: true, .. } = self.life {
            let _ = self.sock.shutdown(Shutdown::Write);
            self.life = Life::Closing {
                flush: false,
                linger_until: poller::time::ticks() + ticks_ms(LINGER_MS),
            };
        }
    }

    /// The byte ranges of a queued item, in order.
    fn parts<'a>(&'a self, item: u16, pool: &'a BufferPool) -> [Option<&'a [u8]>; 4] {
        match item {
            CTRL_IC => [Some(&self.ic_pdu[..]), None, None, None],
            CTRL_TERM => [self.term_pdu.get(..self.term_len), None, None, None],
            s => {
                let Some(r) = self.slots.get(s) else {
                    return [None; 4];
                };
                let t = r.tx;
                let data = if t.data > 0 {
                    buf_ref(r, pool).and_then(|b| b.get(..t.data as usize))
                } else {
                    None
                };
                [
                    r.hdr.get(..usize::from(t.h1)),
                    data,
                    if t.ddgst { Some(&r.ddgst[..]) } else { None },
                    r.resp.get(..usize::from(t.h2)),
                ]
            }
        }
    }

    fn item_len(&self, item: u16) -> usize {
        match item {
            CTRL_IC => self.ic_pdu.len(),
            CTRL_TERM => self.term_len,
            s => self.slots.get(s).map_or(0, |r| r.tx.bytes()),
        }
    }

    /// `n` more bytes are on the wire: items fully written leave the queue.
    fn advance(&mut self, mut n: usize, sh: &mut GroupShared) {
        while let Some(&item) = self.sendq.front() {
            let left = self.item_len(item).saturating_sub(self.sent);
            if n < left {
                self.sent += n;
                return;
            }
            n -= left;
            self.sent = 0;
            self.sendq.pop_front();
            self.sent_item(item, sh);
        }
    }

    fn sent_item(&mut self, item: u16, sh: &mut GroupShared) {
        if item == CTRL_IC || item == CTRL_TERM {
            return;
        }
        let Some(r) = self.slots.get_mut(item) else {
            return;
        };
        if r.tx.r2t {
            r.r2t_out = true;
            return;
        }
        self.release(item, sh);
    }

    /// Slots whose responses will never be written (the connection broke).
    fn release_unsent(&mut self, sh: &mut GroupShared) {
        for i in 0..self.slots.len() as u16 {
            if self.slots.get(i).is_some_and(|r| r.state == State::Sending) {
                self.release(i, sh);
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // Closing

    /// Stops the connection: no more commands; `flush` sends what is queued first (a TermReq,
    /// a Disconnect's answer). Its controller (admin queue) goes at once; bdev I/O in flight
    /// drains before the poll group frees it.
    pub fn begin_close(&mut self, sh: &mut GroupShared, flush: bool, why: &str) {
        if self.life != Life::Open {
            if !flush && let Life::Closing { flush: true, .. } = self.life {
                self.life = Life::Closing {
                    flush: false,
                    linger_until: 0,
                };
                let _ = self.sock.shutdown(Shutdown::Both);
                self.sendq.clear();
                self.sent = 0;
                self.release_unsent(sh);
            }
            return;
        }
        tracing::debug!(
            "NVMe/TCP connection {}:{} (qid {}) closing: {why}",
            self.peer.traddr,
            self.peer.trsvcid,
            self.qid
        );
        // A TermReq (or a Disconnect's answer) gets LINGER_MS to go out.
        let linger_until = if flush {
            poller::time::ticks() + ticks_ms(LINGER_MS)
        } else {
            0
        };
        self.life = Life::Closing {
            flush,
            linger_until,
        };
        match &self.qpair {
            Qpair::Admin { shared, .. } => teardown_controller(shared),
            Qpair::Io { shared } => {
                let mut st = shared.lock();
                let me = (sh.index, self.id, self.epoch);
                st.io
                    .retain(|q| (q.qref.group, q.qref.conn, q.qref.epoch) != me);
                shared.num_io.store(st.io.len() as u32, Ordering::Release);
            }
            Qpair::None => {}
        }
        sh.pool.remove_conn(self.id, self.epoch, 0);
        for i in 0..self.slots.len() as u16 {
            let st = self.slots.get(i).map(|r| r.state);
            match st {
                Some(State::Receiving | State::NeedBuffer | State::AwaitH2C | State::Parked) => {
                    self.release(i, sh)
                }
                Some(State::Sending) if !flush => self.release(i, sh),
                _ => {}
            }
        }
        if !flush {
            self.sendq.clear();
            self.sent = 0;
            let _ = self.sock.shutdown(Shutdown::Both);
        } else {
            self.mark_dirty(sh);
        }
        self.rx = Rx::Header;
    }

    /// Nothing is left in flight: the poll group may free the connection.
    pub fn can_free(&self) -> bool {
        match self.life {
            Life::Open => false,
            Life::Closing {
                flush,
                linger_until,
            } => {
                !flush
                    && linger_until == 0
                    && self
                        .slots
                        .reqs
                        .iter()
                        .all(|r| !matches!(r.state, State::Exec | State::IoWait))
            }
        }
    }

    /// The poll group frees the connection: it leaves the pool's books and its controller's.
    pub fn on_free(&mut self, sh: &mut GroupShared) {
        sh.pool.remove_conn(self.id, self.epoch, self.slots.len());
        if let Some(v) = self.view.take() {
            sh.release_view(v);
        }
        match &self.qpair {
            Qpair::Admin { .. } => {
                sh.stats.current_admin_qpairs = sh.stats.current_admin_qpairs.saturating_sub(1)
            }
            Qpair::Io { .. } => {
                sh.stats.current_io_qpairs = sh.stats.current_io_qpairs.saturating_sub(1)
            }
            Qpair::None => {
                sh.stats.current_unassociated_qpairs =
                    sh.stats.current_unassociated_qpairs.saturating_sub(1)
            }
        }
        self.qpair = Qpair::None;
    }

    /// Whether the socket's readiness still matters (a TermReq to flush, a linger for the
    /// host's close); a connection only draining its bdev I/O leaves the epoll set.
    pub fn wants_input(&self) -> bool {
        match self.life {
            Life::Open => true,
            Life::Closing {
                flush,
                linger_until,
            } => flush || linger_until != 0,
        }
    }

    /// Input left in `rbuf` after a slot freed for a blocked capsule.
    pub fn has_input(&self) -> bool {
        self.rstart < self.rend
    }
}
