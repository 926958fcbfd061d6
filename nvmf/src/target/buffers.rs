//! Data buffers for transfers larger than a request slot's own in-capsule buffer: each poll
//! group keeps a pool of `max_io_size` buffers and a FIFO of the requests waiting for one.
//!
//! The pool's size is fixed when the group starts (`num_shared_buffers` shared out over the
//! groups, at least [`MIN_BUFFERS`]); buffers are allocated the first time the pool grows to
//! need them and kept for the group's life, so the I/O path never allocates. A request that
//! finds the pool empty waits in order; it never fails for want of a buffer.

use bdev::DmaBuf;
use std::collections::VecDeque;

/// A group keeps at least this many large buffers, whatever `num_shared_buffers` says.
pub const MIN_BUFFERS: usize = 8;
/// Buffers are aligned for direct I/O (uring bdevs open files O_DIRECT).
pub const ALIGN: usize = 4096;

/// A request waiting for a buffer: its connection (slab index and generation) and slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Waiter {
    pub conn: u16,
    pub epoch: u16,
    pub slot: u16,
}

pub struct BufferPool {
    buf_len: usize,
    cap: usize,
    bufs: Vec<DmaBuf>,
    free: Vec<u32>,
    waiters: VecDeque<Waiter>,
    /// Slots of the live connections: the waiter queue holds at most this many.
    slots: usize,
}

impl BufferPool {
    /// A pool of at most `cap` buffers of `buf_len` bytes, `prealloc` of them made now.
    pub fn new(buf_len: usize, cap: usize, prealloc: usize) -> BufferPool {
        let cap = cap.max(MIN_BUFFERS);
        let mut p = BufferPool {
            buf_len,
            cap,
            bufs: Vec::with_capacity(cap),
            free: Vec::with_capacity(cap),
            waiters: VecDeque::new(),
            slots: 0,
        };
        for _ in 0..prealloc.min(cap) {
            if !p.grow() {
                break;
            }
        }
        p
    }

    pub fn buf_len(&self) -> usize {
        self.buf_len
    }

    /// One more buffer, while under the cap and memory allows.
    fn grow(&mut self) -> bool {
        if self.bufs.len() >= self.cap {
            return false;
        }
        let Some(b) = DmaBuf::new(self.buf_len, ALIGN) else {
            return false;
        };
        self.free.push(self.bufs.len() as u32);
        self.bufs.push(b);
        true
    }

    /// A free buffer's index, unless requests already wait (they go first) or none is left.
    pub fn take(&mut self) -> Option<u32> {
        if !self.waiters.is_empty() {
            return None;
        }
        self.take_any()
    }

    fn take_any(&mut self) -> Option<u32> {
        if self.free.is_empty() {
            self.grow();
        }
        self.free.pop()
    }

    /// Gives a buffer back; `serve` then hands it to the first waiter.
    pub fn give(&mut self, idx: u32) {
        if (idx as usize) < self.bufs.len() && self.free.len() < self.bufs.len() {
            self.free.push(idx);
        }
    }

    /// Queues a request for the next free buffer (capacity was reserved at connect, so this
    /// does not allocate).
    pub fn wait(&mut self, w: Waiter) {
        self.waiters.push_back(w);
    }

    /// The next waiter and a buffer for it, while both exist.
    pub fn serve(&mut self) -> Option<(Waiter, u32)> {
        self.waiters.front()?;
        let b = self.take_any()?;
        match self.waiters.pop_front() {
            Some(w) => Some((w, b)),
            None => {
                self.free.push(b);
                None
            }
        }
    }

    pub fn has_waiters(&self) -> bool {
        !self.waiters.is_empty()
    }

    /// A connection with `slots` request slots arrived: room for all of them to wait.
    pub fn add_slots(&mut self, slots: usize) {
        self.slots += slots;
        let need = self.slots.saturating_sub(self.waiters.len());
        self.waiters.reserve(need);
    }

    /// A connection left: forget its waiters and its share of the queue.
    pub fn remove_conn(&mut self, conn: u16, epoch: u16, slots: usize) {
        self.waiters.retain(|w| w.conn != conn || w.epoch != epoch);
        self.slots = self.slots.saturating_sub(slots);
    }

    pub fn get(&self, idx: u32) -> Option<&DmaBuf> {
        self.bufs.get(idx as usize)
    }

    pub fn get_mut(&mut self, idx: u32) -> Option<&mut DmaBuf> {
        self.bufs.get_mut(idx as usize)
    }

    /// Buffers in use (for the statistics).
    pub fn in_use(&self) -> usize {
        self.bufs.len() - self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiters_are_served_in_order_and_first() {
        let mut p = BufferPool::new(4096, 8, 2);
        p.add_slots(16);
        let taken: Vec<u32> = (0..8).filter_map(|_| p.take()).collect();
        assert_eq!(taken.len(), 8, "grows to the cap");
        assert_eq!(p.take(), None);
        let w = |slot| Waiter {
            conn: 1,
            epoch: 1,
            slot,
        };
        p.wait(w(3));
        p.wait(w(4));
        assert_eq!(p.serve(), None, "nothing free yet");
        p.give(taken[0]);
        // A new request does not overtake the queue.
        assert_eq!(p.take(), None);
        assert_eq!(p.serve(), Some((w(3), taken[0])));
        p.remove_conn(1, 1, 16);
        p.give(taken[1]);
        assert_eq!(p.serve(), None);
        assert_eq!(p.take(), Some(taken[1]));
    }
}
