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

/// The completions recorded so far, taken without polling.
pub fn take_done() -> Vec<(usize, bool)> {
    DONE.with(|d| std::mem::take(&mut *d.borrow_mut()))
}

pub fn iov(b: &DmaBuf) -> IoVec {
    // SAFETY: the buffers outlive the harness loops that complete their I/O.
    unsafe { b.iovec() }
}

/// Deletes `b` and polls until it is gone.
pub fn unregister(h: &Harness, b: bdev::Bdev) {
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d = done.clone();
    h.run_on(0, || {
        b.unregister(move |r| {
            r.unwrap();
            d.store(true, std::sync::atomic::Ordering::SeqCst);
        })
    });
    for _ in 0..100 {
        h.poll_until_idle(10);
        if done.load(std::sync::atomic::Ordering::SeqCst) {
            break;
        }
    }
    assert!(done.load(std::sync::atomic::Ordering::SeqCst));
}

/// Test doubles for crash tests: an origin disk with a volatile write cache whose power-cut image
/// can be taken at any instant, plain memory as pmem, and a pmem wrapper that can cut power just
/// before each fence.
pub mod crash {
    use bdev::{Bdev, BdevChannelOps, BdevError, BdevIo, BdevOps, BdevProps, IoType, iov};
    use pmem::{CrashPmem, Pmem, PmemError, PmemKind};
    use poller::{PollStatus, Poller};
    use rand::RngExt;
    use std::cell::RefCell;
    use std::collections::{BTreeSet, VecDeque};
    use std::rc::{Rc, Weak};
    use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

    /// A RAM disk with a volatile write cache, for crash tests: a write lands in the volatile
    /// image (what reads see) and becomes durable when a FLUSH submitted after it completes (or
    /// at once when it is FUA, or when the disk has no write cache). A power cut
    /// ([`Disk::crash_image`]) keeps the durable image plus, block by block, an arbitrary choice
    /// of the blocks written since they were last made durable. It can also fail chosen writes
    /// (by ordinal) and flushes, without applying them.
    pub struct Disk {
        pub block_size: usize,
        pub blocks: u64,
        /// Whether WRITE_ZEROES is offered (else writeback zeroes ranges with UNMAP).
        pub write_zeroes: bool,
        /// Whether writes wait in a volatile write cache (else each is durable when it lands).
        pub volatile: bool,
        st: Mutex<DiskState>,
    }

    #[derive(Default)]
    struct DiskState {
        volatile: Vec<u8>,
        durable: Vec<u8>,
        /// Blocks written (or zeroed) and not yet made durable.
        dirty: BTreeSet<u64>,
        /// Write-type I/Os (write, unmap, write_zeroes) submitted so far, and flushes.
        writes: u64,
        flushes: u64,
        /// Ordinals (1-based) of the write-type I/Os and flushes to fail.
        fail_writes: BTreeSet<u64>,
        fail_flushes: BTreeSet<u64>,
        failed: u64,
    }

    impl Disk {
        /// A disk with a volatile write cache holding `image` (its length a multiple of
        /// `block_size`), all of it durable.
        pub fn new(image: Vec<u8>, block_size: usize, write_zeroes: bool) -> Arc<Disk> {
            Disk::with_cache(image, block_size, write_zeroes, true)
        }

        /// [`Disk::new`], with a volatile write cache or without one.
        pub fn with_cache(
            image: Vec<u8>,
            block_size: usize,
            write_zeroes: bool,
            volatile: bool,
        ) -> Arc<Disk> {
            assert!(image.len().is_multiple_of(block_size));
            Arc::new(Disk {
                block_size,
                blocks: (image.len() / block_size) as u64,
                write_zeroes,
                volatile,
                st: Mutex::new(DiskState {
                    durable: image.clone(),
                    volatile: image,
                    ..DiskState::default()
                }),
            })
        }

        fn lock(&self) -> MutexGuard<'_, DiskState> {
            self.st.lock().unwrap_or_else(PoisonError::into_inner)
        }

        /// What a power cut now leaves: the durable image, and for each block written since it
        /// was last made durable, independently, its new or its durable content (with a random
        /// bias per image).
        pub fn crash_image(&self, rng: &mut impl rand::Rng) -> Vec<u8> {
            let st = self.lock();
            let mut img = st.durable.clone();
            let bias: f64 = rng.random();
            let bs = self.block_size;
            for &b in &st.dirty {
                if rng.random_bool(bias) {
                    let r = b as usize * bs..(b as usize + 1) * bs;
                    img[r.clone()].copy_from_slice(&st.volatile[r]);
                }
            }
            img
        }

        /// What a power cut now leaves when no block written since it was made durable survives.
        pub fn durable_contents(&self) -> Vec<u8> {
            self.lock().durable.clone()
        }

        /// What reads see now.
        pub fn contents(&self) -> Vec<u8> {
            self.lock().volatile.clone()
        }

        /// Runs `f` over what reads see now.
        pub fn with_contents<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
            f(&self.lock().volatile)
        }

        /// Fails the write-type I/O (write, unmap, write_zeroes) with this ordinal (1-based,
        /// counted from the disk's creation).
        pub fn fail_write(&self, ordinal: u64) {
            self.lock().fail_writes.insert(ordinal);
        }

        /// Fails the flush with this ordinal (1-based).
        pub fn fail_flush(&self, ordinal: u64) {
            self.lock().fail_flushes.insert(ordinal);
        }

        /// (write-type I/Os, flushes) submitted so far.
        pub fn io_counts(&self) -> (u64, u64) {
            let st = self.lock();
            (st.writes, st.flushes)
        }

        /// I/Os failed on purpose so far.
        pub fn failed(&self) -> u64 {
            self.lock().failed
        }

        /// Registers the disk as bdev `name` with `uuid` (a cache checks its origin's UUID).
        pub fn register(self: &Arc<Self>, name: &str, uuid: uuid::Uuid) -> Result<Bdev, BdevError> {
            let mut props = BdevProps::new(
                name,
                "crash_disk",
                "Crash-test disk",
                self.block_size as u32,
                self.blocks,
            );
            props.uuid = Some(uuid);
            props.write_cache = true;
            Bdev::register(props, Arc::new(DiskOps(self.clone())))
        }

        /// Applies a write-type I/O (or refuses it when its ordinal is to fail).
        fn submit_write(&self, io: &BdevIo) -> bool {
            let st = &mut *self.lock();
            st.writes += 1;
            if st.fail_writes.remove(&st.writes) {
                st.failed += 1;
                return false;
            }
            let bs = self.block_size;
            let (lba, n) = (io.offset_blocks(), io.num_blocks());
            let r = lba as usize * bs..(lba + n) as usize * bs;
            match io.io_type() {
                IoType::Write => {
                    iov::copy_from_iovs(io.iovs(), &mut st.volatile[r.clone()]);
                }
                _ => st.volatile[r.clone()].fill(0),
            }
            if io.flags().fua || !self.volatile {
                // Forced unit access (or no write cache): durable when it completes.
                let (v, d) = (&st.volatile, &mut st.durable);
                d[r.clone()].copy_from_slice(&v[r]);
                for b in lba..lba + n {
                    st.dirty.remove(&b);
                }
            } else {
                st.dirty.extend(lba..lba + n);
            }
            true
        }
    }

    struct DiskOps(Arc<Disk>);

    impl BdevOps for DiskOps {
        fn io_type_supported(&self, t: IoType) -> bool {
            t != IoType::WriteZeroes || self.0.write_zeroes
        }

        fn create_channel(&self) -> Result<Rc<dyn BdevChannelOps>, BdevError> {
            let ch = Rc::new(DiskChannel {
                disk: self.0.clone(),
                flushes: RefCell::new(VecDeque::new()),
                poller: RefCell::new(None),
            });
            let weak: Weak<DiskChannel> = Rc::downgrade(&ch);
            let p = Poller::register("crash_disk_flush", 0, move || match weak.upgrade() {
                Some(ch) => ch.finish_flushes(),
                None => PollStatus::Idle,
            });
            *ch.poller.borrow_mut() = p;
            Ok(ch)
        }
    }

    /// A thread's channel: FLUSHes complete on the channel's next poll, so a power cut can fall
    /// between a flush's submission and the moment its writes are durable.
    struct DiskChannel {
        disk: Arc<Disk>,
        /// Flushes in progress, each with the blocks that were not durable when it came.
        flushes: RefCell<VecDeque<(BdevIo, Vec<u64>)>>,
        poller: RefCell<Option<Poller>>,
    }

    impl DiskChannel {
        fn finish_flushes(&self) -> PollStatus {
            let done: Vec<_> = self.flushes.borrow_mut().drain(..).collect();
            if done.is_empty() {
                return PollStatus::Idle;
            }
            for (io, blocks) in done {
                {
                    let st = &mut *self.disk.lock();
                    let bs = self.disk.block_size;
                    for b in blocks {
                        let r = b as usize * bs..(b as usize + 1) * bs;
                        let (v, d) = (&st.volatile, &mut st.durable);
                        d[r.clone()].copy_from_slice(&v[r]);
                        st.dirty.remove(&b);
                    }
                }
                io.complete_ok();
            }
            PollStatus::Busy
        }
    }

    impl Drop for DiskChannel {
        fn drop(&mut self) {
            if let Some(p) = self.poller.borrow_mut().take() {
                p.unregister();
            }
        }
    }

    impl BdevChannelOps for DiskChannel {
        fn submit_request(&self, io: BdevIo) {
            let disk = &self.disk;
            let bs = disk.block_size;
            match io.io_type() {
                IoType::Read => {
                    let st = disk.lock();
                    let (lba, n) = (io.offset_blocks() as usize, io.num_blocks() as usize);
                    iov::copy_to_iovs(io.iovs(), &st.volatile[lba * bs..(lba + n) * bs]);
                    drop(st);
                    io.complete_ok();
                }
                IoType::Write | IoType::Unmap | IoType::WriteZeroes => {
                    if disk.submit_write(&io) {
                        io.complete_ok();
                    } else {
                        io.fail(libc::EIO);
                    }
                }
                IoType::Flush => {
                    let blocks = {
                        let st = &mut *disk.lock();
                        st.flushes += 1;
                        if st.fail_flushes.remove(&st.flushes) {
                            st.failed += 1;
                            None
                        } else {
                            Some(st.dirty.iter().copied().collect())
                        }
                    };
                    match blocks {
                        Some(b) => self.flushes.borrow_mut().push_back((io, b)),
                        None => io.fail(libc::EIO),
                    }
                }
                IoType::Reset => io.complete_ok(),
            }
        }
    }

    /// Plain memory as pmem: what a restart after a power cut sees, without crash tracking (so a
    /// rebuild from a crash image copies nothing, and replay's many small reads take no lock).
    pub struct RamPmem {
        ptr: *mut u8,
        len: usize,
    }

    // SAFETY: the memory is only reached through the `Pmem` methods, which copy with raw
    // pointers (never references) inside bounds they check; the `Pmem` contract (each thread
    // touches only ranges it owns, ownership moves by message) orders overlapping accesses, as
    // for a real mapping.
    unsafe impl Send for RamPmem {}
    // SAFETY: as above.
    unsafe impl Sync for RamPmem {}

    impl RamPmem {
        pub fn new(image: Vec<u8>) -> RamPmem {
            let b: Box<[u8]> = image.into_boxed_slice();
            let len = b.len();
            RamPmem {
                ptr: Box::into_raw(b).cast::<u8>(),
                len,
            }
        }

        fn check(&self, off: u64, len: u64) -> Result<usize, PmemError> {
            let size = self.len as u64;
            match off.checked_add(len) {
                Some(end) if end <= size => Ok(off as usize),
                _ => Err(PmemError::OutOfRange { off, len, size }),
            }
        }
    }

    impl Drop for RamPmem {
        fn drop(&mut self) {
            // SAFETY: `ptr` and `len` came from `Box::into_raw` of a boxed slice of `len` bytes.
            drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(self.ptr, self.len)) });
        }
    }

    impl Pmem for RamPmem {
        fn len(&self) -> u64 {
            self.len as u64
        }
        fn kind(&self) -> PmemKind {
            PmemKind::Emulated
        }
        fn write(&self, off: u64, src: &[u8]) -> Result<(), PmemError> {
            let at = self.check(off, src.len() as u64)?;
            // SAFETY: `at + src.len()` is within the buffer (checked); `src` is a distinct slice.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.add(at), src.len()) };
            Ok(())
        }
        fn write_nt(&self, off: u64, src: &[u8]) -> Result<(), PmemError> {
            self.write(off, src)
        }
        fn read(&self, off: u64, dst: &mut [u8]) -> Result<(), PmemError> {
            let at = self.check(off, dst.len() as u64)?;
            // SAFETY: as in `write`, the other way round.
            unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(at), dst.as_mut_ptr(), dst.len()) };
            Ok(())
        }
        fn visit(&self, off: u64, len: u64, f: &mut dyn FnMut(&[u8])) -> Result<(), PmemError> {
            let at = self.check(off, len)?;
            // SAFETY: the range is within the buffer (checked), and under the `Pmem` contract
            // no one writes it while its owner reads it.
            f(unsafe { std::slice::from_raw_parts(self.ptr.add(at), len as usize) });
            Ok(())
        }
        fn flush(&self, off: u64, len: u64) -> Result<(), PmemError> {
            self.check(off, len).map(|_| ())
        }
        fn fence(&self) {}
        fn sync(&self) -> Result<(), PmemError> {
            Ok(())
        }
        /// Mapped, like a real device: caches rebuilt on it take the zero-copy paths.
        fn as_ptr(&self) -> Option<*mut u8> {
            Some(self.ptr)
        }
    }

    type CutHook = dyn Fn(&CrashPmem) + Send + Sync;

    /// A [`CrashPmem`] whose hook runs just *before* each fence, when every store since the last
    /// fence is still in flight (the richest moment for a power cut). The `CrashPmem`'s own
    /// fence hook (after each fence) stays available.
    pub struct Tap {
        pub inner: Arc<CrashPmem>,
        before_fence: Mutex<Option<Arc<CutHook>>>,
    }

    impl Tap {
        pub fn new(inner: Arc<CrashPmem>) -> Tap {
            Tap {
                inner,
                before_fence: Mutex::new(None),
            }
        }

        pub fn set_before_fence(&self, hook: Option<Box<CutHook>>) {
            *self
                .before_fence
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = hook.map(Arc::from);
        }
    }

    impl Pmem for Tap {
        fn len(&self) -> u64 {
            self.inner.len()
        }
        fn kind(&self) -> PmemKind {
            self.inner.kind()
        }
        fn write(&self, off: u64, src: &[u8]) -> Result<(), PmemError> {
            self.inner.write(off, src)
        }
        fn write_nt(&self, off: u64, src: &[u8]) -> Result<(), PmemError> {
            self.inner.write_nt(off, src)
        }
        fn read(&self, off: u64, dst: &mut [u8]) -> Result<(), PmemError> {
            self.inner.read(off, dst)
        }
        fn flush(&self, off: u64, len: u64) -> Result<(), PmemError> {
            self.inner.flush(off, len)
        }
        fn fence(&self) {
            let hook = self
                .before_fence
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            if let Some(h) = hook {
                h(&self.inner);
            }
            self.inner.fence();
        }
        fn sync(&self) -> Result<(), PmemError> {
            self.inner.sync()
        }
        fn as_ptr(&self) -> Option<*mut u8> {
            None
        }
    }
}
