//! Helpers shared by the cache's harness tests: completions recorded per OS thread, polling until
//! they arrive, and I/O vectors over test buffers.
// Each test file uses the helpers it needs.
#![allow(dead_code)]

use bdev::{BdevIo, DmaBuf, IoCtx, IoVec};
use poller::Harness;
use std::cell::RefCell;

thread_local! {
    static DONE: RefCell<Vec<(usize, bool)>> = const { RefCell::new(Vec::new()) };
}

/// Completion callback: records (the I/O's `IoCtx::Word`, success).
pub fn record(io: BdevIo, ok: bool, ctx: IoCtx) {
    drop(io);
    if let IoCtx::Word(w) = ctx {
        DONE.with(|d| d.borrow_mut().push((w, ok)));
    }
}

/// Polls the harness until `n` completions were recorded (or a generous bound), and takes them.
pub fn wait(h: &Harness, n: usize) -> Vec<(usize, bool)> {
    for _ in 0..100_000 {
        h.poll_until_idle(10);
        if DONE.with(|d| d.borrow().len()) >= n {
            break;
        }
    }
    DONE.with(|d| std::mem::take(&mut *d.borrow_mut()))
}

pub fn iov(b: &DmaBuf) -> IoVec {
    // SAFETY: the buffers outlive the harness loops that complete their I/O.
    unsafe { b.iovec() }
}
