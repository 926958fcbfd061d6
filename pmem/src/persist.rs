//! Persistence primitives on raw memory: flush cache lines, fence, non-temporal copy.
//!
//! A store reaches the persistence domain either through the cache (store, then flush its
//! line, then fence) or around it (non-temporal store, then fence). Fences order only the
//! calling CPU's flushes and non-temporal stores.

use crate::cpu::{self, FlushInstr};

/// Flush granularity on every x86_64 CPU pcache targets.
pub const CACHE_LINE: usize = 64;

/// Start writing back every cache line overlapping `ptr..ptr + len`; durable after [`fence`].
///
/// # Safety
/// The range must lie inside one live allocation or mapping (a flush of an unmapped
/// address faults).
pub unsafe fn flush_range(ptr: *const u8, len: usize) {
    // SAFETY: the caller's contract is forwarded unchanged.
    unsafe { flush_range_with(cpu::flush_instr(), ptr, len) }
}

#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn flush_range_with(instr: FlushInstr, ptr: *const u8, len: usize) {
    use core::arch::asm;
    if len == 0 || instr == FlushInstr::FenceOnly {
        return;
    }
    // Walk line starts with pointer arithmetic so the pointer keeps its provenance.
    let mut line = ptr.wrapping_sub(ptr as usize % CACHE_LINE);
    let end = (ptr as usize).saturating_add(len);
    while (line as usize) < end {
        // SAFETY: `line` starts a cache line overlapping the caller's mapped range. These
        // instructions change no value the program can observe; no `nomem` option, so the
        // compiler keeps earlier stores before them.
        unsafe {
            match instr {
                FlushInstr::Clwb => {
                    asm!("clwb [{}]", in(reg) line, options(nostack, preserves_flags))
                }
                FlushInstr::ClflushOpt => {
                    asm!("clflushopt [{}]", in(reg) line, options(nostack, preserves_flags))
                }
                FlushInstr::Clflush => {
                    asm!("clflush [{}]", in(reg) line, options(nostack, preserves_flags))
                }
                FlushInstr::FenceOnly => {}
            }
        }
        line = line.wrapping_add(CACHE_LINE);
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn flush_range_with(_instr: FlushInstr, _ptr: *const u8, _len: usize) {}

/// Wait until this CPU's earlier flushes and non-temporal stores are durable (sfence).
/// Also a compiler barrier: no store moves across it.
pub fn fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: sfence only orders this CPU's stores; it reads and writes no memory.
    unsafe {
        core::arch::asm!("sfence", options(nostack, preserves_flags))
    };
    #[cfg(not(target_arch = "x86_64"))]
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
}

/// [`flush_range`] then [`fence`].
///
/// # Safety
/// As for [`flush_range`].
pub unsafe fn persist_range(ptr: *const u8, len: usize) {
    // SAFETY: the caller's contract is forwarded unchanged.
    unsafe { flush_range(ptr, len) };
    fence();
}

/// Copy `len` bytes so that the whole destination is durable after the next [`fence`].
///
/// Whole destination cache lines are written with non-temporal stores, which bypass the
/// cache; the partial lines at either end are copied normally and flushed, so no line
/// mixes the two kinds of store.
///
/// # Safety
/// `src` must be readable and `dst` writable for `len` bytes, the two must not overlap, and
/// this thread must call [`fence`] before another thread reads `dst`.
pub unsafe fn nt_copy(dst: *mut u8, src: *const u8, len: usize) {
    let head = ((CACHE_LINE - dst as usize % CACHE_LINE) % CACHE_LINE).min(len);
    let lines = (len - head) / CACHE_LINE;
    let body = lines * CACHE_LINE;
    // SAFETY: head, body and tail partition `0..len`, which the caller guarantees valid.
    unsafe {
        cached_copy(dst, src, head);
        stream_lines(dst.add(head), src.add(head), lines);
        cached_copy(
            dst.add(head + body),
            src.add(head + body),
            len - head - body,
        );
    }
}

/// Copy through the cache and start the write-back.
unsafe fn cached_copy(dst: *mut u8, src: *const u8, len: usize) {
    if len > 0 {
        // SAFETY: ranges valid and disjoint per `nt_copy`'s contract.
        unsafe {
            std::ptr::copy_nonoverlapping(src, dst, len);
            flush_range(dst, len);
        }
    }
}

/// Stream `lines` whole cache lines to the 64-byte-aligned `dst`.
#[cfg(target_arch = "x86_64")]
unsafe fn stream_lines(dst: *mut u8, src: *const u8, lines: usize) {
    if cpu::has_avx() {
        // SAFETY: AVX was detected at run time; ranges valid per `nt_copy`'s contract.
        unsafe { stream_lines_avx(dst, src, lines) }
    } else {
        // SAFETY: SSE2 is part of x86_64; ranges valid per `nt_copy`'s contract.
        unsafe { stream_lines_sse2(dst, src, lines) }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn stream_lines_avx(dst: *mut u8, src: *const u8, lines: usize) {
    use std::arch::x86_64::{__m256i, _mm256_loadu_si256, _mm256_stream_si256};
    for i in (0..lines * CACHE_LINE).step_by(32) {
        // SAFETY: `i + 32 <= lines * 64` bytes, inside both ranges; `dst + i` is 32-byte
        // aligned because `dst` is line-aligned; the load tolerates any `src` alignment.
        unsafe {
            let v = _mm256_loadu_si256(src.add(i).cast::<__m256i>());
            _mm256_stream_si256(dst.add(i).cast::<__m256i>(), v);
        }
    }
}

#[cfg(target_arch = "x86_64")]
unsafe fn stream_lines_sse2(dst: *mut u8, src: *const u8, lines: usize) {
    use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_stream_si128};
    for i in (0..lines * CACHE_LINE).step_by(16) {
        // SAFETY: as in `stream_lines_avx`, with 16-byte steps and alignment.
        unsafe {
            let v = _mm_loadu_si128(src.add(i).cast::<__m128i>());
            _mm_stream_si128(dst.add(i).cast::<__m128i>(), v);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn stream_lines(dst: *mut u8, src: *const u8, lines: usize) {
    // SAFETY: ranges valid and disjoint per `nt_copy`'s contract.
    unsafe { std::ptr::copy_nonoverlapping(src, dst, lines * CACHE_LINE) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SPAN: usize = 300 + 2 * CACHE_LINE;

    /// nt_copy `len` bytes between offsets measured from 64-byte-aligned bases, then check
    /// the copy and that nothing around it changed.
    fn check_copy(src_off: usize, dst_off: usize, len: usize) {
        let mut src_buf = vec![0u8; SPAN + CACHE_LINE];
        let mut dst_buf = vec![0xAAu8; SPAN + CACHE_LINE];
        let sbase = src_buf.as_ptr().align_offset(CACHE_LINE);
        let dbase = dst_buf.as_ptr().align_offset(CACHE_LINE);
        for (i, b) in src_buf.iter_mut().enumerate() {
            *b = (i * 7 + 1) as u8;
        }
        let (s, d) = (sbase + src_off, dbase + dst_off);
        // SAFETY: both ranges lie inside their own vectors.
        unsafe { nt_copy(dst_buf.as_mut_ptr().add(d), src_buf.as_ptr().add(s), len) };
        fence();
        assert_eq!(&dst_buf[d..d + len], &src_buf[s..s + len]);
        assert!(
            dst_buf[..d].iter().all(|&b| b == 0xAA),
            "bytes before dst changed"
        );
        assert!(
            dst_buf[d + len..].iter().all(|&b| b == 0xAA),
            "bytes after dst changed"
        );
    }

    #[test]
    fn nt_copy_every_dst_alignment_and_length() {
        for dst_off in 0..CACHE_LINE {
            for len in 0..300 {
                check_copy(dst_off % 5, dst_off, len);
            }
        }
    }

    proptest! {
        #[test]
        fn nt_copy_any_alignment(src_off in 0..CACHE_LINE, dst_off in 0..CACHE_LINE, len in 0usize..300) {
            check_copy(src_off, dst_off, len);
        }
    }

    /// The SSE2 path is the fallback when AVX is missing, so test it on AVX machines too.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn sse2_stream_copies_whole_lines() {
        let src: Vec<u8> = (0..4 * CACHE_LINE + 1).map(|i| i as u8).collect();
        let mut dst = vec![0u8; 5 * CACHE_LINE];
        let d = dst.as_ptr().align_offset(CACHE_LINE);
        // SAFETY: 3 lines from `src[1..]` into the aligned part of `dst`, both in bounds.
        unsafe { stream_lines_sse2(dst.as_mut_ptr().add(d), src.as_ptr().add(1), 3) };
        fence();
        assert_eq!(&dst[d..d + 3 * CACHE_LINE], &src[1..1 + 3 * CACHE_LINE]);
        assert_eq!(dst[d + 3 * CACHE_LINE], 0);
    }

    #[test]
    fn every_supported_flush_instruction_runs() {
        let buf = vec![1u8; 4096];
        let all = [
            FlushInstr::Clwb,
            FlushInstr::ClflushOpt,
            FlushInstr::Clflush,
            FlushInstr::FenceOnly,
        ];
        for instr in all.into_iter().filter(|&i| cpu::supports(i)) {
            for (off, len) in [(0, 0), (0, 1), (63, 2), (5, 4000), (0, 4096)] {
                // SAFETY: inside `buf`.
                unsafe { flush_range_with(instr, buf.as_ptr().add(off), len) };
            }
            fence();
        }
        // SAFETY: inside `buf`.
        unsafe { persist_range(buf.as_ptr(), buf.len()) };
        assert!(buf.iter().all(|&b| b == 1));
    }
}
