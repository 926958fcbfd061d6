//! The pcache vbdev: a crash-safe write-back cache on persistent memory in front of an origin bdev.
//! The on-media format is specified in docs/format.md; docs/architecture.md tells how the pieces
//! fit: the format (`format`), the DRAM index (`index`), segment allocation (`segments`), the
//! lanes' key logs (`log`, `lane`), replay (`replay`), the shared instance (`instance`), the data
//! path (`io`) and what it admits (`admission`), the writeback engine (`writeback`), GC (`gc`),
//! the bdev (`vbdev`), its parameters (`params`) and RPCs (`rpc`).
// stats_json is one json! literal with many members.
#![recursion_limit = "256"]

pub mod admission;
pub mod error;
pub mod format;
pub mod gc;
pub mod index;
pub mod instance;
pub mod io;
pub mod lane;
pub mod log;
pub mod params;
pub mod replay;
pub mod rpc;
pub mod segments;
pub mod vbdev;
pub mod writeback;

pub use error::CacheError;
