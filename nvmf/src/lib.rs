//! NVMe over Fabrics on TCP: the wire format both sides share, the target that exports bdevs
//! to hosts, and the initiator that attaches a remote namespace as a local bdev
//! (`bdev_nvme_attach_controller`). docs/architecture.md tells how a command flows.
//!
//! ```text
//! wire      the NVMe, NVMe-oF and NVMe/TCP formats: pure encode/decode, never panics on input
//! target    subsystems, controllers, TCP qpairs polled from the reactors, the nvmf_* RPCs
//! host      the initiator bdev module (bdev_nvme_*), one qpair per thread
//! ```

pub mod host;
pub mod target;
pub mod wire;
