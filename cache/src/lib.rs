//! The pcache vbdev: a crash-safe write-back cache on persistent memory in front of an origin bdev.
//! The on-media format is specified in docs/format.md; docs/architecture.md tells how the pieces
//! fit and why.
//!
//! Modules, each using only those above it:
//!
//! ```text
//! error  params  stats  admission  format        leaves: errors, parameters, counters, admission,
//!                                                the on-media format
//! index  segments                                 DRAM extent index, segment allocation
//! log  lane                                       a lane's key log and data head
//! replay                                          rebuilding index and segments from the logs
//! shared                                          what writeback and GC share with the data path
//! lanes  instance  options                        the lane pool, the shared instance, set_options
//! lane_channel                                    a thread's lane and the I/O waiting on it
//! writeback  gc                                   the background engines
//! channel  io                                     the bdev channel and the data path
//! vbdev  rpc                                      create/delete/BdevOps, the RPC methods
//! ```
// stats_json is one json! literal with many members.
#![recursion_limit = "256"]

mod admission;
mod channel;
mod error;
pub mod format;
mod gc;
pub mod index;
pub mod instance;
mod io;
mod lane;
mod lane_channel;
mod lanes;
pub mod log;
mod options;
pub mod params;
pub mod replay;
pub mod rpc;
pub mod segments;
mod shared;
mod stats;
pub mod vbdev;
pub mod writeback;

pub use channel::CacheBdevChannel;
pub use error::CacheError;
