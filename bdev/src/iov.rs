//! I/O vectors: the caller's data buffers, described as (pointer, length) pairs as in SPDK.
//!
//! An `IoVec` is a promise by whoever built it that the memory stays valid and untouched by
//! anyone else until the I/O that carries it completes; that is why building one is `unsafe`.
//! Modules then move bytes in and out with the copy helpers below.

/// One data segment, layout-compatible with `struct iovec` (so it can go to io_uring as is).
#[repr(transparent)]
#[derive(Clone, Copy)]
pub struct IoVec(libc::iovec);

impl IoVec {
    /// # Safety
    /// `base..base+len` must be valid for reads and writes, and not accessed by anything else,
    /// until every I/O carrying this vector has completed.
    pub unsafe fn new(base: *mut u8, len: usize) -> IoVec {
        IoVec(libc::iovec {
            iov_base: base.cast(),
            iov_len: len,
        })
    }

    pub fn len(&self) -> usize {
        self.0.iov_len
    }

    pub fn is_empty(&self) -> bool {
        self.0.iov_len == 0
    }

    pub fn base(&self) -> *mut u8 {
        self.0.iov_base.cast()
    }

    pub fn as_raw(&self) -> &libc::iovec {
        &self.0
    }
}

impl std::fmt::Debug for IoVec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IoVec({:p}, {})", self.0.iov_base, self.0.iov_len)
    }
}

// SAFETY of the helpers below: every IoVec was built through `IoVec::new`, whose contract makes the
// segment valid and exclusively ours for the life of the I/O; the helpers never go past `len`.

pub fn total_len(iovs: &[IoVec]) -> usize {
    iovs.iter().map(|v| v.len()).sum()
}

/// Copies `src` into the segments (a read's data going to the caller). Returns bytes copied.
pub fn copy_to_iovs(iovs: &[IoVec], src: &[u8]) -> usize {
    let mut done = 0;
    for v in iovs {
        let n = v.len().min(src.len() - done);
        // SAFETY: see the note above; `src` is a distinct Rust slice so the ranges do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr().add(done), v.base(), n) };
        done += n;
        if done == src.len() {
            break;
        }
    }
    done
}

/// Copies from the segments into `dst` (a write's data coming from the caller).
pub fn copy_from_iovs(iovs: &[IoVec], dst: &mut [u8]) -> usize {
    let mut done = 0;
    for v in iovs {
        let n = v.len().min(dst.len() - done);
        // SAFETY: see the note above; `dst` is a distinct Rust slice.
        unsafe { std::ptr::copy_nonoverlapping(v.base(), dst.as_mut_ptr().add(done), n) };
        done += n;
        if done == dst.len() {
            break;
        }
    }
    done
}

/// Copies raw memory into the segments. Returns bytes copied.
///
/// # Safety
/// `src..src+len` must be readable and must not overlap the segments.
pub unsafe fn copy_ptr_to_iovs(iovs: &[IoVec], src: *const u8, len: usize) -> usize {
    let mut done = 0;
    for v in iovs {
        let n = v.len().min(len - done);
        // SAFETY: caller guarantees the source range; the segment is ours (note above).
        unsafe { std::ptr::copy_nonoverlapping(src.add(done), v.base(), n) };
        done += n;
        if done == len {
            break;
        }
    }
    done
}

/// Copies from the segments into raw memory.
///
/// # Safety
/// `dst..dst+len` must be writable and must not overlap the segments.
pub unsafe fn copy_iovs_to_ptr(iovs: &[IoVec], dst: *mut u8, len: usize) -> usize {
    let mut done = 0;
    for v in iovs {
        let n = v.len().min(len - done);
        // SAFETY: caller guarantees the destination range; the segment is ours (note above).
        unsafe { std::ptr::copy_nonoverlapping(v.base(), dst.add(done), n) };
        done += n;
        if done == len {
            break;
        }
    }
    done
}

/// Fills the segments with zeroes.
pub fn zero_iovs(iovs: &[IoVec]) {
    for v in iovs {
        // SAFETY: see the note above.
        unsafe { std::ptr::write_bytes(v.base(), 0, v.len()) };
    }
}

/// Calls `f` on each segment viewed as a byte slice (checksums, comparisons, pattern checks).
pub fn for_each_slice(iovs: &[IoVec], mut f: impl FnMut(&[u8])) {
    for v in iovs {
        // SAFETY: see the note above; the slice lives only for the call.
        f(unsafe { std::slice::from_raw_parts(v.base(), v.len()) });
    }
}

/// Calls `f` on each piece of bytes `[offset, offset + len)` of the segments, in order (a write's
/// data going into a cache, checksummed on the way). Returns the bytes visited.
pub fn for_each_range(
    iovs: &[IoVec],
    offset: usize,
    len: usize,
    mut f: impl FnMut(&[u8]),
) -> usize {
    walk_range(iovs, offset, len, |p, n| {
        // SAFETY: a sub-range of a segment (note above); the slice lives only for the call.
        f(unsafe { std::slice::from_raw_parts(p, n) })
    })
}

/// Calls `f` on each piece of bytes `[offset, offset + len)` of the segments as writable slices
/// (a read's data coming out of a cache). Returns the bytes visited.
pub fn for_each_range_mut(
    iovs: &[IoVec],
    offset: usize,
    len: usize,
    mut f: impl FnMut(&mut [u8]),
) -> usize {
    walk_range(iovs, offset, len, |p, n| {
        // SAFETY: a sub-range of a segment that is exclusively ours for the I/O (note above); the
        // pieces are disjoint and each slice lives only for the call.
        f(unsafe { std::slice::from_raw_parts_mut(p, n) })
    })
}

fn walk_range(
    iovs: &[IoVec],
    mut offset: usize,
    mut len: usize,
    mut f: impl FnMut(*mut u8, usize),
) -> usize {
    let mut done = 0;
    for v in iovs {
        if len == 0 {
            break;
        }
        if offset >= v.len() {
            offset -= v.len();
            continue;
        }
        let n = (v.len() - offset).min(len);
        // The pointer stays inside the segment: offset < v.len() and n ≤ v.len() - offset.
        f(v.base().wrapping_add(offset), n);
        done += n;
        len -= n;
        offset = 0;
    }
    done
}

/// Writes into `out` the part of `iovs` covering bytes `[offset, offset + len)`, without
/// allocating; the number of segments, or None when `out` is too small.
pub fn slice_to(iovs: &[IoVec], offset: usize, len: usize, out: &mut [IoVec]) -> Option<usize> {
    let mut n = 0;
    let mut fits = true;
    walk_range(iovs, offset, len, |p, l| match out.get_mut(n) {
        Some(slot) => {
            // SAFETY: a sub-range of a segment that is valid under the same contract.
            *slot = unsafe { IoVec::new(p, l) };
            n += 1;
        }
        None => fits = false,
    });
    fits.then_some(n)
}

/// Appends to `out` the part of `iovs` covering bytes `[offset, offset + len)`.
pub fn slice_into(iovs: &[IoVec], mut offset: usize, mut len: usize, out: &mut Vec<IoVec>) {
    for v in iovs {
        if len == 0 {
            break;
        }
        if offset >= v.len() {
            offset -= v.len();
            continue;
        }
        let n = (v.len() - offset).min(len);
        // SAFETY: a sub-range of a segment that is valid under the same contract.
        out.push(unsafe { IoVec::new(v.base().add(offset), n) });
        len -= n;
        offset = 0;
    }
}

/// A zero-filled buffer aligned for direct I/O. Large buffers are anonymous mappings, so a RAM
/// disk of many GiB costs nothing until it is touched.
pub struct DmaBuf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
    /// Some: heap allocation with this layout; None: anonymous mapping.
    layout: Option<std::alloc::Layout>,
}

/// Buffers from this size up are mapped rather than allocated.
const MAP_THRESHOLD: usize = 1 << 20;

impl DmaBuf {
    /// A buffer of `len` bytes aligned to `align` (a power of two up to the 4 KiB page for mapped
    /// buffers). None when memory is short or the arguments are invalid.
    pub fn new(len: usize, align: usize) -> Option<DmaBuf> {
        if len >= MAP_THRESHOLD && align <= 4096 {
            // SAFETY: a fresh private anonymous mapping aliases nothing.
            let p = unsafe {
                nix::sys::mman::mmap_anonymous(
                    None,
                    std::num::NonZeroUsize::new(len)?,
                    nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_WRITE,
                    nix::sys::mman::MapFlags::MAP_PRIVATE | nix::sys::mman::MapFlags::MAP_NORESERVE,
                )
            }
            .ok()?;
            return Some(DmaBuf {
                ptr: p.cast(),
                len,
                layout: None,
            });
        }
        let layout = std::alloc::Layout::from_size_align(len.max(1), align.max(1)).ok()?;
        // SAFETY: the layout has a non-zero size.
        let ptr = std::ptr::NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) })?;
        Some(DmaBuf {
            ptr,
            len,
            layout: Some(layout),
        })
    }

    /// A mapped buffer backed by real memory up front (huge pages where the kernel offers them), so
    /// a RAM disk is measured at memory speed from its first I/O rather than on page faults or the
    /// shared zero page.
    pub fn new_prefaulted(len: usize) -> Option<DmaBuf> {
        let buf = DmaBuf::new(len.max(MAP_THRESHOLD), 4096)?;
        if buf.layout.is_none() {
            // SAFETY: advice on our own fresh mapping; failure only means no huge pages.
            let _ = unsafe {
                nix::sys::mman::madvise(
                    buf.ptr.cast(),
                    buf.len,
                    nix::sys::mman::MmapAdvise::MADV_HUGEPAGE,
                )
            };
        }
        for off in (0..buf.len).step_by(4096) {
            // SAFETY: inside our own buffer; a volatile write so the touch is not optimised away.
            unsafe { buf.ptr.as_ptr().add(off).write_volatile(0) };
        }
        Some(buf)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: we own `len` initialised bytes; no I/O may be in flight while a caller holds this.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes the view exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// The whole buffer as one segment.
    ///
    /// # Safety
    /// The buffer must outlive, and not be otherwise accessed during, every I/O carrying it.
    pub unsafe fn iovec(&self) -> IoVec {
        // SAFETY: forwarded to the caller.
        unsafe { IoVec::new(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for DmaBuf {
    fn drop(&mut self) {
        match self.layout {
            // SAFETY: allocated in `new` with this layout.
            Some(layout) => unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) },
            // SAFETY: mapped in `new` with this length; nothing refers to it any more.
            None => unsafe {
                let _ = nix::sys::mman::munmap(self.ptr.cast(), self.len);
            },
        }
    }
}

// SAFETY: DmaBuf owns its memory outright, like a Box<[u8]>.
unsafe impl Send for DmaBuf {}
