//! The pcache vbdev: a crash-safe write-back cache on persistent memory in front of an origin bdev.
//! The on-media format is specified in docs/format.md; docs/architecture.md tells how the pieces
//! fit. Built so far: the format (`format`), the DRAM index (`index`), segment allocation
//! (`segments`), the lanes' key logs (`log`), the parameters (`params`), the writeback engine
//! (`writeback`) and GC (`gc`).

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
