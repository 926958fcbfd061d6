//! What the bdev tests share: the completion recorder, buffers, opening a bdev on a harness
//! thread, and RPC calls answered under the harness.
#![allow(dead_code)]

use bdev::{BdevChannel, BdevDesc, BdevIo, DmaBuf, IoCtx, IoFlags, IoVec};
use poller::Harness;
use rpc::{Responder, RpcError};
use serde_json::Value;
use std::cell::RefCell;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

thread_local! {
    static DONE: RefCell<Vec<(usize, bool)>> = const { RefCell::new(Vec::new()) };
}

/// The completion callback of every test I/O: records (submitter word, success).
pub fn record(io: BdevIo, ok: bool, ctx: IoCtx) {
    drop(io);
    if let IoCtx::Word(w) = ctx {
        DONE.with(|d| d.borrow_mut().push((w, ok)));
    }
}

/// Completions since the last call, sorted by submitter word.
pub fn done() -> Vec<(usize, bool)> {
    let mut v = DONE.with(|d| std::mem::take(&mut *d.borrow_mut()));
    v.sort();
    v
}

/// Polls thread 0 until `n` I/Os completed (a kernel finishes them in its own time, so an idle
/// round does not mean done); returns them sorted by submitter word.
pub fn wait(h: &Harness, n: usize) -> Vec<(usize, bool)> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        h.poll_thread(0);
        let got = DONE.with(|d| d.borrow().len());
        if got >= n {
            return done();
        }
        assert!(
            Instant::now() < deadline,
            "only {got} of {n} I/Os completed"
        );
    }
}

pub fn iov(buf: &DmaBuf) -> IoVec {
    // SAFETY: every test keeps its buffers alive until the harness is idle.
    unsafe { buf.iovec() }
}

/// `len` bytes of a pattern that differs with `seed`.
pub fn pattern(len: usize, seed: u8) -> DmaBuf {
    let mut b = DmaBuf::new(len, 4096).unwrap();
    b.as_mut_slice()
        .iter_mut()
        .enumerate()
        .for_each(|(i, x)| *x = (i as u8).wrapping_mul(7) ^ seed);
    b
}

/// Opens `name` on harness thread 0 and takes that thread's channel.
pub fn open(h: &Harness, name: &str, write: bool) -> (BdevDesc, BdevChannel) {
    h.run_on(0, || {
        let d = BdevDesc::open(name, write, |_| {}).unwrap();
        let ch = d.get_io_channel().unwrap();
        (d, ch)
    })
}

/// Submits a write of all of `buf` at `lba` on thread 0.
pub fn write(h: &Harness, ch: &BdevChannel, buf: &DmaBuf, lba: u64, word: usize) {
    let blocks = buf.len() as u64 / ch.block_size() as u64;
    h.run_on(0, || {
        ch.write(
            &[iov(buf)],
            lba,
            blocks,
            IoFlags::default(),
            record,
            IoCtx::Word(word),
        )
        .unwrap()
    });
}

/// Submits a read into all of `buf` from `lba` on thread 0.
pub fn read(h: &Harness, ch: &BdevChannel, buf: &DmaBuf, lba: u64, word: usize) {
    let blocks = buf.len() as u64 / ch.block_size() as u64;
    h.run_on(0, || {
        ch.read(&[iov(buf)], lba, blocks, record, IoCtx::Word(word))
            .unwrap()
    });
}

/// Calls an RPC from outside any thread (for methods that answer without one).
pub fn call_off_thread(method: &str, params: Value) -> Result<Value, RpcError> {
    let (tx, rx) = std::sync::mpsc::channel();
    rpc::call(
        method,
        Some(params),
        Responder::new(move |r| tx.send(r).unwrap()),
    );
    rx.recv_timeout(Duration::from_secs(2)).unwrap()
}

/// Calls an RPC on thread 0 and polls until it is answered.
pub fn call(h: &Harness, method: &str, params: Value) -> Result<Value, RpcError> {
    rpc::set_state(rpc::AppState::Runtime);
    let out = Arc::new(Mutex::new(None));
    let o = out.clone();
    h.run_on(0, || {
        rpc::call(
            method,
            Some(params),
            Responder::new(move |r| *o.lock().unwrap() = Some(r)),
        )
    });
    h.poll_until_idle(100);
    out.lock().unwrap().take().expect("the RPC was answered")
}
