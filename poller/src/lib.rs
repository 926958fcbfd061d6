//! The runtime: reactors, lightweight threads, pollers, messages and io_device/io_channel.
//!
//! Ownership follows SPDK's lib/thread: every object belongs to one `Thread`; other threads reach
//! it by message (`ThreadHandle::send_msg`). Reactors poll their threads in a loop on a pinned
//! core. Nothing here takes a lock on the data path: messages go over lock-free queues and
//! per-thread state lives in `!Send` types.

mod cpumask;
mod harness;
mod io_device;
mod poller;
mod reactor;
mod thread;
pub mod time;

pub use cpumask::CpuMask;
pub use harness::Harness;
pub use io_device::{IoChannel, IoDevice};
pub use poller::{PollStatus, Poller};
pub use reactor::{
    ReactorInfo, ReactorOptions, app_thread, idle_backoff, reactor_cores, reactors, run,
    spawn_thread, stop, threads,
};
pub use thread::{Group, Thread, ThreadCounters, ThreadHandle, Waker};

#[derive(Debug, thiserror::Error)]
pub enum PollerError {
    #[error("invalid core mask '{0}'")]
    InvalidCpuMask(String),
    #[error("cannot pin reactor to core {0}: {1}")]
    Affinity(u32, String),
    #[error("no reactor on core {0}")]
    NoSuchCore(u32),
    #[error("reactors are already running")]
    AlreadyRunning,
    #[error("reactors are not running")]
    NotRunning,
    #[error("cannot start reactor thread: {0}")]
    Spawn(String),
    #[error("runtime state poisoned")]
    Poisoned,
}

impl PollerError {
    pub fn errno(&self) -> i32 {
        match self {
            PollerError::InvalidCpuMask(_) | PollerError::NoSuchCore(_) => libc::EINVAL,
            PollerError::Affinity(..) => libc::EPERM,
            PollerError::AlreadyRunning => libc::EALREADY,
            PollerError::NotRunning => libc::ENXIO,
            PollerError::Spawn(_) => libc::EAGAIN,
            PollerError::Poisoned => libc::EIO,
        }
    }
}
