//! The block-device layer (SPDK's lib/bdev) and its base modules.
//!
//! - `Bdev`: a registered device (properties + the module's `BdevOps`), shared by all threads.
//! - `BdevDesc`: an opener's handle (read-only or read-write, optional exclusive write claim).
//! - `BdevChannel`: a thread's handle for submitting I/O through a descriptor.
//! - `BdevIo`: one I/O from its channel's pool (`pool.rs`), completed on the submitting thread
//!   (`thread.rs` runs the completions, the waiters and the stall watchdog).
//!
//! Module-facing traits (`BdevOps`, `BdevChannelOps`, `BdevModule`) live in `module.rs`, apart
//! from the user API in `bdev.rs`.

mod bdev;
mod channel;
mod desc;
mod error;
mod io;
pub mod iov;
mod module;
mod pool;
pub mod rpc;
mod stat;
mod thread;
pub mod vbdev;

pub use bdev::{Bdev, BdevEvent, BdevProps};
pub use channel::{BdevChannel, SubmitError, SubmitResult};
pub use desc::BdevDesc;
pub use error::BdevError;
pub use io::{BdevIo, IoCallback, IoCtx, IoFlags, IoStatus, IoType};
pub use iov::{DmaBuf, IoVec};
pub use module::{AsAny, AsAnyRc, BdevChannelOps, BdevModule, BdevOps, modules, register_module};
pub use stat::{IoStat, OpStat};
pub use thread::STALL_SECS;

use serde::{Deserialize, Serialize};
use std::sync::Mutex;

/// SPDK's `bdev_set_options`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BdevOptions {
    #[serde(default = "default_pool")]
    /// All the bdev_io of the process: each channel's pool is taken from it (at least 16 each).
    pub bdev_io_pool_size: u32,
    /// I/Os each channel (one bdev on one thread) keeps in its pool, allocated with the channel.
    #[serde(default = "default_cache")]
    pub bdev_io_cache_size: u32,
    #[serde(default = "default_true")]
    pub bdev_auto_examine: bool,
    #[serde(default = "default_small")]
    pub iobuf_small_cache_size: u32,
    #[serde(default = "default_large")]
    pub iobuf_large_cache_size: u32,
}

fn default_pool() -> u32 {
    65535
}
fn default_cache() -> u32 {
    1024
}
fn default_true() -> bool {
    true
}
fn default_small() -> u32 {
    128
}
fn default_large() -> u32 {
    16
}

impl Default for BdevOptions {
    fn default() -> Self {
        BdevOptions {
            bdev_io_pool_size: default_pool(),
            bdev_io_cache_size: default_cache(),
            bdev_auto_examine: true,
            iobuf_small_cache_size: default_small(),
            iobuf_large_cache_size: default_large(),
        }
    }
}

static OPTIONS: Mutex<Option<BdevOptions>> = Mutex::new(None);

pub fn options() -> BdevOptions {
    OPTIONS
        .lock()
        .ok()
        .and_then(|o| o.clone())
        .unwrap_or_default()
}

pub fn set_options(o: BdevOptions) -> Result<(), BdevError> {
    if o.bdev_io_cache_size == 0 || o.bdev_io_cache_size > o.bdev_io_pool_size {
        return Err(BdevError::invalid(
            "bdev_io_cache_size must be between 1 and bdev_io_pool_size",
        ));
    }
    if let Ok(mut g) = OPTIONS.lock() {
        *g = Some(o);
    }
    Ok(())
}

/// Initialises every registered module (start-up, after the startup-state RPCs).
pub fn subsystem_init() -> Result<(), BdevError> {
    for m in modules() {
        m.init()?;
    }
    Ok(())
}

/// Unregisters every bdev, newest first (stacked bdevs go before their bases), then finalises the
/// modules in reverse order, then calls `done` on the calling thread.
pub fn subsystem_fini(done: impl FnOnce() + Send + 'static) {
    fn next(done: Box<dyn FnOnce() + Send>) {
        match Bdev::all().pop() {
            Some(b) => b.unregister(move |_| next(done)),
            None => {
                for m in modules().iter().rev() {
                    m.fini();
                }
                done();
            }
        }
    }
    next(Box::new(done));
}

pub mod delay;
pub mod error_inject;
pub mod malloc;
pub mod null;
pub mod passthru;
pub mod pmem;
pub mod uring;
