//! Request slots: one per submission queue entry of a qpair, allocated at Connect (queue depth
//! = SQSIZE + 1) with their in-capsule buffer and the bytes of the PDU headers they send, so a
//! command moves from capsule to response without allocating.
//!
//! ```text
//! Free → (capsule in) → [NeedBuffer] → [AwaitH2C: R2T sent, data coming] → Exec (bdev I/O,
//!        or IoWait for a bdev_io) → Sending (response queued) → Free
//!        AER: → Parked → Sending
//! ```

use crate::wire::command::{Cqe, Sqe};
use crate::wire::status::Status;
use bdev::DmaBuf;

/// Header bytes a slot keeps for its first PDU: an R2T or C2HData header with its digest,
/// padded to the host's HPDA (at most 128 bytes), or a CapsuleResp.
pub const HDR_LEN: usize = 128;
/// A CapsuleResp with its header digest.
pub const RESP_LEN: usize = 28;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Free,
    /// Its capsule's in-capsule data is arriving.
    Receiving,
    /// Waiting in the poll group's FIFO for a large buffer.
    NeedBuffer,
    /// R2T queued; H2CData PDUs fill the buffer.
    AwaitH2C,
    /// bdev I/O in flight (`pending` of them).
    Exec,
    /// Waiting for a bdev_io (queue_io_wait).
    IoWait,
    /// An Asynchronous Event Request kept for a later event.
    Parked,
    /// Its response (and read data) queued or being written.
    Sending,
}

/// Which engine executes a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Fabrics,
    Admin,
    Io,
}

/// Where a request's data lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Buf {
    None,
    /// The slot's own in-capsule buffer.
    Own,
    /// A buffer of the poll group's pool.
    Pool(u32),
}

/// What a request sends, in order: `hdr[..h1]`, `len` data bytes, their digest (if
/// `ddgst`), then `resp[..h2]`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tx {
    pub h1: u8,
    pub data: u32,
    pub ddgst: bool,
    pub h2: u8,
    /// This is an R2T: the slot waits for data once it is out, rather than being freed.
    pub r2t: bool,
}

impl Tx {
    /// Bytes on the wire.
    pub fn bytes(&self) -> usize {
        usize::from(self.h1)
            + self.data as usize
            + if self.ddgst { 4 } else { 0 }
            + usize::from(self.h2)
    }
}

pub struct Request {
    pub state: State,
    pub kind: Kind,
    pub sqe: Sqe,
    /// The buffer the slot owns (in-capsule size of its queue).
    pub own: Option<DmaBuf>,
    pub buf: Buf,
    /// Bytes the command moves (its SGL's length).
    pub len: u32,
    /// Host to controller data (a write, Connect): received before executing.
    pub h2c: bool,
    /// H2CData bytes received so far (the next DATAO expected).
    pub h2c_done: u32,
    /// The R2T is on the wire: H2CData may come.
    pub r2t_out: bool,
    /// A data digest did not match: the command fails once its data is in.
    pub digest_error: bool,
    /// Sub-I/Os in flight (Dataset Management sends one unmap per range).
    pub pending: u16,
    /// Dataset Management: next range to submit.
    pub next_range: u16,
    /// The first failure among sub-I/Os.
    pub error: Option<Status>,
    /// The completion to send.
    pub cqe: Cqe,
    /// Bytes of read data to send with it.
    pub data_out: u32,
    pub tx: Tx,
    pub hdr: [u8; HDR_LEN],
    pub resp: [u8; RESP_LEN],
    pub ddgst: [u8; 4],
}

impl Request {
    pub fn new(own: Option<DmaBuf>) -> Request {
        Request {
            state: State::Free,
            kind: Kind::Fabrics,
            sqe: Sqe::default(),
            own,
            buf: Buf::None,
            len: 0,
            h2c: false,
            h2c_done: 0,
            r2t_out: false,
            digest_error: false,
            pending: 0,
            next_range: 0,
            error: None,
            cqe: Cqe::default(),
            data_out: 0,
            tx: Tx::default(),
            hdr: [0; HDR_LEN],
            resp: [0; RESP_LEN],
            ddgst: [0; 4],
        }
    }

    /// Resets the per-command fields for a new capsule.
    pub fn start(&mut self, sqe: Sqe) {
        self.sqe = sqe;
        self.buf = Buf::None;
        self.len = 0;
        self.h2c = false;
        self.h2c_done = 0;
        self.r2t_out = false;
        self.digest_error = false;
        self.pending = 0;
        self.next_range = 0;
        self.error = None;
        self.cqe = Cqe::new(sqe.cid, Status::SUCCESS);
        self.data_out = 0;
        self.tx = Tx::default();
    }

    /// Capacity of the slot's own buffer.
    pub fn own_len(&self) -> usize {
        self.own.as_ref().map_or(0, DmaBuf::len)
    }
}

/// The slots of one qpair and their free list.
pub struct Slots {
    pub reqs: Vec<Request>,
    free: Vec<u16>,
}

impl Slots {
    /// Slots for a connection that has not connected yet: one, for the Connect command.
    pub fn bootstrap(own_len: usize) -> Slots {
        Slots {
            reqs: vec![Request::new(DmaBuf::new(
                own_len,
                crate::target::buffers::ALIGN,
            ))],
            free: vec![0],
        }
    }

    /// Grows to `n` slots with `own_len`-byte buffers each (at Connect; slot 0, whose Connect
    /// is being answered, gets a new buffer too: its data was decoded already).
    pub fn resize(&mut self, n: usize, own_len: usize) {
        let n = n.clamp(1, usize::from(u16::MAX));
        for r in &mut self.reqs {
            if r.own_len() != own_len {
                r.own = DmaBuf::new(own_len, crate::target::buffers::ALIGN);
            }
        }
        self.free.reserve(n.saturating_sub(self.free.len()));
        while self.reqs.len() < n {
            self.free.push(self.reqs.len() as u16);
            self.reqs.push(Request::new(DmaBuf::new(
                own_len,
                crate::target::buffers::ALIGN,
            )));
        }
    }

    pub fn len(&self) -> usize {
        self.reqs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// A free slot, if any, marked `Receiving`.
    pub fn alloc(&mut self) -> Option<u16> {
        let i = self.free.pop()?;
        if let Some(r) = self.reqs.get_mut(usize::from(i)) {
            r.state = State::Receiving;
        }
        Some(i)
    }

    pub fn release(&mut self, i: u16) {
        if let Some(r) = self.reqs.get_mut(usize::from(i))
            && r.state != State::Free
        {
            r.state = State::Free;
            self.free.push(i);
        }
    }

    pub fn has_free(&self) -> bool {
        !self.free.is_empty()
    }

    /// Slots not free.
    pub fn busy(&self) -> usize {
        self.reqs.len() - self.free.len()
    }

    pub fn get(&self, i: u16) -> Option<&Request> {
        self.reqs.get(usize::from(i))
    }

    pub fn get_mut(&mut self, i: u16) -> Option<&mut Request> {
        self.reqs.get_mut(usize::from(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_grow_at_connect_and_recycle() {
        let mut s = Slots::bootstrap(8192);
        assert_eq!(s.len(), 1);
        let first = s.alloc();
        assert_eq!(first, Some(0));
        assert_eq!(s.get(0).map(|r| r.state), Some(State::Receiving));
        assert_eq!(s.alloc(), None, "one slot before Connect");
        // Connect: 32 slots of 4 KiB; slot 0 (answering the Connect) keeps its place.
        s.resize(32, 4096);
        assert_eq!(s.len(), 32);
        assert!(s.reqs.iter().all(|r| r.own_len() == 4096));
        assert_eq!(s.busy(), 1);
        let all: Vec<u16> = std::iter::from_fn(|| s.alloc()).collect();
        assert_eq!(all.len(), 31);
        assert!(!s.has_free());
        s.release(0);
        s.release(0);
        assert_eq!(s.busy(), 31, "a double release is ignored");
        assert_eq!(s.alloc(), Some(0));
        // Out-of-range indices are ignored, not a panic.
        s.release(999);
        assert!(s.get(999).is_none());
    }

    #[test]
    fn tx_length_counts_every_part() {
        let t = Tx {
            h1: 24,
            data: 4096,
            ddgst: true,
            h2: 28,
            r2t: false,
        };
        assert_eq!(t.bytes(), 24 + 4096 + 4 + 28);
        assert_eq!(Tx::default().bytes(), 0);
    }
}
