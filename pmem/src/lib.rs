//! Persistence primitives for pcache.
//!
//! The cache reaches persistent memory only through the [`Pmem`] trait, whose kinds are:
//! - **DAX** ([`PmemKind::Dax`]): a file on a DAX file system mapped `MAP_SYNC`. A store is
//!   durable once its cache line is flushed (clwb, else clflushopt, else clflush) and fenced,
//!   or after a non-temporal store and a fence.
//! - **Emulated**: a file (tmpfs or any file system) mapped `MAP_SHARED`, running the same
//!   flush and fence instructions so its speed is representative. It survives a process crash,
//!   not a power cut.
//! - **Msync**: a file on a real disk, durable when [`Pmem::sync`] runs msync.
//! - **CrashSim** (`CrashPmem`, behind the `crash` feature that tests enable): a test double
//!   that tracks what is not yet durable and, at a simulated power cut, keeps an arbitrary
//!   subset of it at 8-byte granularity. Everything that claims crash safety is tested against
//!   it.

pub mod cpu;
#[cfg(any(test, feature = "crash"))]
mod crash;
mod device;
mod error;
mod lock;
mod map;
pub mod persist;

pub use cpu::{FlushInstr, flush_instr};
#[cfg(any(test, feature = "crash"))]
pub use crash::CrashPmem;
pub use device::{Pmem, PmemKind};
pub use error::PmemError;
pub use lock::{FileLock, Holder};
pub use map::{MapMode, PmemFile};
pub use persist::{fence, flush_range, nt_copy, persist_range};
