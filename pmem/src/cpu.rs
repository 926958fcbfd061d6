//! CPU feature probe: which cache-line flush and which non-temporal store width to use.
//! Probed once per process; the answer never changes while running.

use std::fmt;
use std::sync::OnceLock;

/// The instruction that writes a cache line back towards persistent memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushInstr {
    /// Writes the line back and may keep it cached, so later reads still hit: the best choice.
    Clwb,
    /// Writes back and evicts; weakly ordered, so many can be in flight before the fence.
    ClflushOpt,
    /// Writes back and evicts, one at a time: always present on x86_64, and the slowest.
    Clflush,
    /// Not x86_64: no user-space flush is issued, only a memory fence.
    FenceOnly,
}

impl fmt::Display for FlushInstr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Clwb => "clwb",
            Self::ClflushOpt => "clflushopt",
            Self::Clflush => "clflush",
            Self::FenceOnly => "fence-only",
        })
    }
}

struct Features {
    flush: FlushInstr,
    clflushopt: bool,
    clwb: bool,
    /// 32-byte AVX non-temporal stores instead of 16-byte SSE2 ones.
    avx: bool,
}

fn features() -> &'static Features {
    static FEATURES: OnceLock<Features> = OnceLock::new();
    FEATURES.get_or_init(probe)
}

#[cfg(target_arch = "x86_64")]
fn probe() -> Features {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    // `__cpuid*` became safe fns in recent Rust; the block keeps older compilers happy.
    #[allow(unused_unsafe)]
    // SAFETY: CPUID exists on every x86_64 CPU and only reads identification registers.
    let ebx7 = unsafe {
        if __cpuid(0).eax >= 7 {
            __cpuid_count(7, 0).ebx
        } else {
            0
        }
    };
    // CPUID.(EAX=7,ECX=0):EBX bit 24 = CLWB, bit 23 = CLFLUSHOPT.
    let (clwb, clflushopt) = (ebx7 & (1 << 24) != 0, ebx7 & (1 << 23) != 0);
    let flush = if clwb {
        FlushInstr::Clwb
    } else if clflushopt {
        FlushInstr::ClflushOpt
    } else {
        FlushInstr::Clflush
    };
    Features {
        flush,
        clflushopt,
        clwb,
        avx: std::arch::is_x86_feature_detected!("avx"),
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn probe() -> Features {
    Features {
        flush: FlushInstr::FenceOnly,
        clflushopt: false,
        clwb: false,
        avx: false,
    }
}

/// The flush instruction this process uses (clwb, else clflushopt, else clflush).
pub fn flush_instr() -> FlushInstr {
    features().flush
}

/// Whether this CPU can execute `instr` (tests exercise every supported one).
pub fn supports(instr: FlushInstr) -> bool {
    let f = features();
    match instr {
        FlushInstr::Clwb => f.clwb,
        FlushInstr::ClflushOpt => f.clflushopt,
        FlushInstr::Clflush => cfg!(target_arch = "x86_64"),
        FlushInstr::FenceOnly => true,
    }
}

pub(crate) fn has_avx() -> bool {
    features().avx
}

/// One line for the start-up log.
pub fn describe() -> String {
    let nt = if cfg!(not(target_arch = "x86_64")) {
        "plain copy"
    } else if has_avx() {
        "avx 32-byte"
    } else {
        "sse2 16-byte"
    };
    format!(
        "pmem cpu: cache-line flush {}, non-temporal stores {nt}",
        flush_instr()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_is_stable_and_described() {
        assert_eq!(flush_instr(), flush_instr());
        #[cfg(target_arch = "x86_64")]
        assert_ne!(flush_instr(), FlushInstr::FenceOnly);
        assert!(supports(flush_instr()));
        assert!(describe().contains(&flush_instr().to_string()));
    }
}
