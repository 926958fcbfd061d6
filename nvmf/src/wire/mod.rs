//! The NVMe, NVMe-oF and NVMe/TCP wire formats, shared by the target and the initiator. Pure
//! encode/decode over byte slices: no I/O, no allocation, and decoding any bytes gives a value or
//! an error, never a panic.
//!
//! ```text
//! le        little-endian field access on byte slices (bounds checked)
//! status    completion status codes (generic, command specific, fabrics)
//! command   the 64-byte SQE, the 16-byte CQE, SGL descriptors, opcodes
//! fabrics   Connect, Property Get/Set, the controller registers (CAP, VS, CC, CSTS)
//! identify  Identify controller / namespace / lists / descriptors
//! features  feature identifiers and their values
//! log       log pages: error, SMART / health, changed namespaces, discovery
//! digest    CRC32C header and data digests
//! pdu       NVMe/TCP PDU headers (ICReq ... TermReq): encode and decode
//! stream    the PDU stream parser: bytes in, whole checked PDUs out
//! ```

pub mod command;
pub mod digest;
pub mod fabrics;
pub mod features;
pub mod identify;
pub mod le;
pub mod log;
pub mod pdu;
pub mod status;
pub mod stream;
