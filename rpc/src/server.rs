//! The JSON-RPC server on a Unix stream socket, driven by explicit `poll()` calls.
//!
//! Each connection keeps an ordered queue of answer slots: a request takes the next slot when it
//! is dispatched, its `Responder` (possibly on another thread) fills it, and `poll` writes the
//! slots out strictly in order, because SPDK's client takes the next JSON value as the answer.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, ErrorKind, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, send};
use serde_json::Value;

use crate::error::RpcError;
use crate::registry::{Registry, Responder, lock};
use crate::stream::{DecodeError, RequestDecoder};
use crate::wire::{Id, Message, Request, encode_answer, encode_batch, parse_message};

/// Connections beyond this are accepted and closed at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// Answers of one connection not yet written, and handler calls not yet answered (notifications
/// included); past either the connection is not read until they drain (backpressure instead of
/// buffering).
pub const MAX_PENDING_PER_CONN: usize = 64;
/// Larger batches are refused whole: each element costs an answer, so this bounds amplification.
pub const MAX_BATCH_LEN: usize = 4096;
const READ_CHUNK: usize = 64 << 10;
const MAX_ACCEPTS_PER_POLL: usize = 64;
/// Ready answers move to the write buffer only while it holds less than this.
const OUT_HIGH_WATER: usize = 256 << 10;

/// Answers waiting for their turn, by slot number. Shared with responders on any thread.
type Outbox = Arc<Mutex<BTreeMap<u64, String>>>;

pub struct RpcServer {
    listener: UnixListener,
    path: PathBuf,
    /// (device, inode) of the socket we bound, so `close` never removes someone else's file.
    file_id: (u64, u64),
    registry: Arc<Registry>,
    conns: Vec<Conn>,
    read_buf: Vec<u8>,
    closed: bool,
}

impl RpcServer {
    /// Listens on `path` for the global registry; see [`RpcServer::listen_with`].
    pub fn listen(path: &Path, mode: u32) -> io::Result<RpcServer> {
        Self::listen_with(path, mode, Registry::global().clone())
    }

    /// Binds a non-blocking Unix socket at `path` with permissions `mode`. A stale socket file
    /// (nobody accepting) is replaced; a live one is an `AddrInUse` error.
    pub fn listen_with(path: &Path, mode: u32, registry: Arc<Registry>) -> io::Result<RpcServer> {
        remove_stale_socket(path)?;
        let listener = UnixListener::bind(path)?;
        let setup = || -> io::Result<(u64, u64)> {
            listener.set_nonblocking(true)?;
            fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
            let md = fs::metadata(path)?;
            Ok((md.dev(), md.ino()))
        };
        let file_id = match setup() {
            Ok(id) => id,
            Err(e) => {
                let _ = fs::remove_file(path);
                return Err(e);
            }
        };
        Ok(RpcServer {
            listener,
            path: path.to_owned(),
            file_id,
            registry,
            conns: Vec::new(),
            read_buf: vec![0; READ_CHUNK],
            closed: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Accepts, reads, dispatches and writes without blocking. Returns true if it did anything.
    pub fn poll(&mut self) -> bool {
        if self.closed {
            return false;
        }
        let mut work = self.accept();
        for conn in &mut self.conns {
            work |= conn.poll(&self.registry, &mut self.read_buf);
        }
        let before = self.conns.len();
        self.conns.retain(|c| !c.finished());
        work | (self.conns.len() != before)
    }

    /// Closes every connection and removes the socket file. Idempotent.
    pub fn close(&mut self) {
        if std::mem::replace(&mut self.closed, true) {
            return;
        }
        self.conns.clear();
        if let Ok(md) = fs::symlink_metadata(&self.path)
            && (md.dev(), md.ino()) == self.file_id
        {
            let _ = fs::remove_file(&self.path);
        }
    }

    fn accept(&mut self) -> bool {
        let mut work = false;
        for _ in 0..MAX_ACCEPTS_PER_POLL {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    work = true;
                    if self.conns.len() >= MAX_CONNECTIONS {
                        tracing::warn!("RPC connection limit reached, refusing a client");
                        continue;
                    }
                    if stream.set_nonblocking(true).is_ok() {
                        self.conns.push(Conn::new(stream));
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!(error = %e, "RPC accept failed");
                    break;
                }
            }
        }
        work
    }
}

impl Drop for RpcServer {
    fn drop(&mut self) {
        self.close();
    }
}

fn remove_stale_socket(path: &Path) -> io::Result<()> {
    let md = match fs::symlink_metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !md.file_type().is_socket() {
        return Err(io::Error::new(
            ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        ));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(io::Error::new(
            ErrorKind::AddrInUse,
            format!("another process is listening on {}", path.display()),
        )),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => fs::remove_file(path),
        Err(e) => Err(e),
    }
}

struct Conn {
    stream: UnixStream,
    decoder: RequestDecoder,
    outbox: Outbox,
    /// Next slot number to hand out.
    next_slot: u64,
    /// Next slot to move into `out`; slots below it are written or being written.
    sent_slot: u64,
    out: Vec<u8>,
    out_pos: usize,
    /// Nothing more will be read: the peer finished sending, or the stream was bad.
    eof: bool,
    /// A parse error was answered; nothing more is decoded.
    failed: bool,
    /// Handler calls not yet answered, counted by their responders.
    calls: Arc<AtomicUsize>,
    /// Decoding stopped at the pending limit with possibly more requests buffered.
    blocked: bool,
    dead: bool,
}

impl Conn {
    fn new(stream: UnixStream) -> Conn {
        Conn {
            stream,
            decoder: RequestDecoder::new(),
            outbox: Arc::default(),
            next_slot: 0,
            sent_slot: 0,
            out: Vec::new(),
            out_pos: 0,
            eof: false,
            failed: false,
            calls: Arc::default(),
            blocked: false,
            dead: false,
        }
    }

    fn pending(&self) -> usize {
        usize::try_from(self.next_slot - self.sent_slot).unwrap_or(usize::MAX)
    }

    fn busy(&self) -> bool {
        self.pending() >= MAX_PENDING_PER_CONN
            || self.calls.load(Ordering::Relaxed) >= MAX_PENDING_PER_CONN
    }

    /// A responder counted in `calls` until it answers.
    fn responder(&self, f: impl FnOnce(Result<Value, RpcError>) + Send + 'static) -> Responder {
        let calls = self.calls.clone();
        calls.fetch_add(1, Ordering::Relaxed);
        Responder::new(move |r| {
            calls.fetch_sub(1, Ordering::Relaxed);
            f(r);
        })
    }

    /// Done once the peer is gone, or it stopped sending and every answer is written.
    fn finished(&self) -> bool {
        self.dead
            || (self.eof && !self.blocked && self.pending() == 0 && self.out_pos == self.out.len())
    }

    fn poll(&mut self, registry: &Registry, buf: &mut [u8]) -> bool {
        let mut work = self.decode(registry);
        if !self.eof && !self.dead && !self.busy() {
            work |= self.read(buf);
            work |= self.decode(registry);
        }
        work | self.flush()
    }

    fn read(&mut self, buf: &mut [u8]) -> bool {
        match (&self.stream).read(buf) {
            Ok(0) => self.eof = true,
            Ok(n) => self.decoder.push(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                return false;
            }
            Err(_) => self.dead = true,
        }
        true
    }

    fn decode(&mut self, registry: &Registry) -> bool {
        let mut work = false;
        self.blocked = false;
        while !self.failed && !self.dead {
            if self.busy() {
                self.blocked = true;
                break;
            }
            match self.decoder.next() {
                None => break,
                Some(Ok(v)) => self.dispatch(registry, v),
                Some(Err(e)) => {
                    match &e {
                        DecodeError::Parse(m) => tracing::debug!("RPC parse error: {m}"),
                        DecodeError::TooLarge(_) => tracing::warn!("RPC {e}"),
                    }
                    // No resync point in a JSON stream: answer, then close (as SPDK).
                    self.failed = true;
                    self.eof = true;
                    let slot = self.take_slot();
                    deliver(
                        &self.outbox,
                        slot,
                        encode_answer(&Id::Null, &Err(RpcError::Parse)),
                    );
                }
            }
            work = true;
        }
        work
    }

    fn take_slot(&mut self) -> u64 {
        self.next_slot += 1;
        self.next_slot - 1
    }

    fn dispatch(&mut self, registry: &Registry, v: Value) {
        match parse_message(v) {
            Message::Single(Err(id)) => {
                let slot = self.take_slot();
                deliver(&self.outbox, slot, invalid(&id));
            }
            Message::Single(Ok(req)) => {
                let Some(id) = req.id.clone() else {
                    return registry.call(&req.method, req.params, self.responder(drop));
                };
                let (slot, outbox) = (self.take_slot(), self.outbox.clone());
                let responder = self.responder(move |r| {
                    deliver(&outbox, slot, encode_answer(&id, &r));
                });
                registry.call(&req.method, req.params, responder);
            }
            Message::Batch(items) if items.len() > MAX_BATCH_LEN => {
                let slot = self.take_slot();
                deliver(&self.outbox, slot, invalid(&Id::Null));
            }
            Message::Batch(items) => self.dispatch_batch(registry, items),
        }
    }

    fn dispatch_batch(&mut self, registry: &Registry, items: Vec<Result<Request, Id>>) {
        let answered = items
            .iter()
            .filter(|i| !matches!(i, Ok(Request { id: None, .. })))
            .count();
        // A batch of notifications only gets no answer at all.
        if answered == 0 {
            for req in items.into_iter().flatten() {
                registry.call(&req.method, req.params, self.responder(drop));
            }
            return;
        }
        let batch = Arc::new(Mutex::new(Batch {
            answers: vec![None; answered],
            missing: answered,
            slot: self.take_slot(),
            outbox: self.outbox.clone(),
        }));
        let mut index = 0;
        for item in items {
            match item {
                Ok(Request {
                    method,
                    params,
                    id: None,
                }) => {
                    registry.call(&method, params, self.responder(drop));
                }
                Ok(Request {
                    method,
                    params,
                    id: Some(id),
                }) => {
                    let (b, i) = (batch.clone(), index);
                    index += 1;
                    let responder = self.responder(move |r| {
                        Batch::fill(&b, i, encode_answer(&id, &r));
                    });
                    registry.call(&method, params, responder);
                }
                Err(id) => {
                    Batch::fill(&batch, index, invalid(&id));
                    index += 1;
                }
            }
        }
    }

    /// Moves ready answers (in slot order) to the write buffer and writes what the socket takes.
    fn flush(&mut self) -> bool {
        let mut work = false;
        loop {
            if self.out.len() - self.out_pos < OUT_HIGH_WATER {
                let mut ready = lock(&self.outbox);
                while let Some(answer) = ready.remove(&self.sent_slot) {
                    self.out.extend_from_slice(answer.as_bytes());
                    // SPDK ends every answer with a newline; clients skip whitespace.
                    self.out.push(b'\n');
                    self.sent_slot += 1;
                    work = true;
                    if self.out.len() - self.out_pos >= OUT_HIGH_WATER {
                        break;
                    }
                }
            }
            if self.out_pos == self.out.len() || self.dead {
                break;
            }
            let flags = MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT;
            match send(self.stream.as_raw_fd(), &self.out[self.out_pos..], flags) {
                Ok(n) => {
                    work = true;
                    self.out_pos += n;
                    if self.out_pos == self.out.len() {
                        self.out.clear();
                        self.out_pos = 0;
                        if self.out.capacity() > 4 * OUT_HIGH_WATER {
                            self.out.shrink_to(OUT_HIGH_WATER);
                        }
                    }
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => break,
                Err(_) => {
                    // The peer is gone; nobody will read the rest.
                    self.dead = true;
                    work = true;
                }
            }
        }
        work
    }
}

fn deliver(outbox: &Outbox, slot: u64, answer: String) {
    lock(outbox).insert(slot, answer);
}

fn invalid(id: &Id) -> String {
    encode_answer(id, &Err(RpcError::InvalidRequest))
}

/// Answers of one batch, collected in request order until all are in.
struct Batch {
    answers: Vec<Option<String>>,
    missing: usize,
    slot: u64,
    outbox: Outbox,
}

impl Batch {
    fn fill(batch: &Mutex<Batch>, index: usize, answer: String) {
        let mut b = lock(batch);
        let Some(place) = b.answers.get_mut(index) else {
            return;
        };
        if place.replace(answer).is_none() {
            b.missing -= 1;
        }
        if b.missing == 0 {
            let all: Vec<String> = b.answers.iter_mut().filter_map(Option::take).collect();
            deliver(&b.outbox, b.slot, encode_batch(&all));
        }
    }
}

#[cfg(test)]
mod tests;
