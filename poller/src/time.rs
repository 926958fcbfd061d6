//! The reactor clock: a cheap monotonic tick counter.
//!
//! The data path stamps every I/O, so reading the clock must cost a few nanoseconds: on x86_64 that
//! is the TSC (invariant on every CPU we run on), calibrated once against the OS clock. Elsewhere
//! the OS monotonic clock stands in.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

static EPOCH: OnceLock<Instant> = OnceLock::new();
static HZ: OnceLock<u64> = OnceLock::new();

/// Current tick count.
#[inline(always)]
pub fn ticks() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: RDTSC only reads the time-stamp counter; it has no memory effects.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
    }
}

/// Ticks per second, measured once (about 20 ms on first call).
pub fn ticks_hz() -> u64 {
    *HZ.get_or_init(|| {
        if cfg!(not(target_arch = "x86_64")) {
            return 1_000_000_000;
        }
        let t0 = Instant::now();
        let c0 = ticks();
        std::thread::sleep(Duration::from_millis(20));
        let c1 = ticks();
        let ns = t0.elapsed().as_nanos().max(1) as u64;
        ((c1.wrapping_sub(c0) as u128 * 1_000_000_000u128) / ns as u128).max(1) as u64
    })
}

/// Converts microseconds to ticks.
pub fn us_to_ticks(us: u64) -> u64 {
    (us as u128 * ticks_hz() as u128 / 1_000_000) as u64
}

/// Converts ticks to microseconds (as a float, for statistics).
pub fn ticks_to_us(t: u64) -> f64 {
    t as f64 * 1e6 / ticks_hz() as f64
}

/// Wall-clock reference for "elapsed since start" style reports.
pub fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}
