//! Completion status: the 15-bit field in the upper half of CQE dword 3 (NVMe Base 2.0, "Completion
//! Queue Entry: Status Field").
//!
//! ```text
//! bit 0      phase tag (not part of the status; always 0 over fabrics)
//! bits 1..8  SC   status code
//! bits 9..11 SCT  status code type (0 generic, 1 command specific, 2 media, 3 path, 7 vendor)
//! bits 12..13 CRD command retry delay (index into Identify CRDT1..3; 0 = retry at once)
//! bit 14     M    more (the Error Information log has more)
//! bit 15     DNR  do not retry
//! ```
//!
//! Each constant carries the DNR bit a controller should normally post with it: set when the
//! same command would fail again (a bad field, an unknown namespace), clear when a retry may
//! succeed (an internal error from a bdev, a namespace that is not ready, an abort).

use core::fmt;

/// Status code types (SCT).
pub mod sct {
    /// Generic command status.
    pub const GENERIC: u8 = 0;
    /// Command specific status (its meaning depends on the opcode).
    pub const COMMAND_SPECIFIC: u8 = 1;
    /// Media and data integrity errors.
    pub const MEDIA: u8 = 2;
    /// Path related status.
    pub const PATH: u8 = 3;
    /// Vendor specific.
    pub const VENDOR: u8 = 7;
}

/// A completion status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Status {
    /// Status code type, 3 bits (see [`sct`]).
    pub sct: u8,
    /// Status code.
    pub sc: u8,
    /// Do not retry.
    pub dnr: bool,
    /// More status information in the Error Information log page.
    pub more: bool,
    /// Command retry delay, 2 bits (0 = none, 1..3 = Identify CRDT1..3).
    pub crd: u8,
}

const fn st(sct: u8, sc: u8, dnr: bool) -> Status {
    Status {
        sct,
        sc,
        dnr,
        more: false,
        crd: 0,
    }
}

const G: u8 = sct::GENERIC;
const C: u8 = sct::COMMAND_SPECIFIC;
const M: u8 = sct::MEDIA;
const P: u8 = sct::PATH;

impl Status {
    /// Successful completion.
    pub const SUCCESS: Status = st(G, 0x00, false);

    // Generic command status (SCT 0).
    /// Invalid Command Opcode.
    pub const INVALID_OPCODE: Status = st(G, 0x01, true);
    /// Invalid Field in Command.
    pub const INVALID_FIELD: Status = st(G, 0x02, true);
    /// Command ID Conflict.
    pub const CID_CONFLICT: Status = st(G, 0x03, true);
    /// Data Transfer Error.
    pub const DATA_TRANSFER_ERROR: Status = st(G, 0x04, false);
    /// Commands Aborted due to Power Loss Notification.
    pub const ABORTED_POWER_LOSS: Status = st(G, 0x05, false);
    /// Internal Error.
    pub const INTERNAL: Status = st(G, 0x06, false);
    /// Command Abort Requested.
    pub const ABORT_REQUESTED: Status = st(G, 0x07, false);
    /// Command Aborted due to SQ Deletion.
    pub const SQ_DELETION: Status = st(G, 0x08, false);
    /// Command Aborted due to Failed Fused Command.
    pub const ABORTED_FAILED_FUSED: Status = st(G, 0x09, false);
    /// Command Aborted due to Missing Fused Command.
    pub const ABORTED_MISSING_FUSED: Status = st(G, 0x0A, true);
    /// Invalid Namespace or Format.
    pub const INVALID_NAMESPACE: Status = st(G, 0x0B, true);
    /// Command Sequence Error.
    pub const COMMAND_SEQUENCE_ERROR: Status = st(G, 0x0C, true);
    /// Invalid SGL Segment Descriptor.
    pub const SGL_INVALID_SEGMENT_DESCRIPTOR: Status = st(G, 0x0D, true);
    /// Invalid Number of SGL Descriptors.
    pub const SGL_INVALID_COUNT: Status = st(G, 0x0E, true);
    /// Data SGL Length Invalid.
    pub const SGL_INVALID_DATA_LENGTH: Status = st(G, 0x0F, true);
    /// Metadata SGL Length Invalid.
    pub const SGL_INVALID_METADATA_LENGTH: Status = st(G, 0x10, true);
    /// SGL Descriptor Type Invalid.
    pub const SGL_INVALID_TYPE: Status = st(G, 0x11, true);
    /// Invalid Use of Controller Memory Buffer.
    pub const INVALID_CMB_USE: Status = st(G, 0x12, true);
    /// PRP Offset Invalid.
    pub const PRP_OFFSET_INVALID: Status = st(G, 0x13, true);
    /// Atomic Write Unit Exceeded.
    pub const ATOMIC_WRITE_UNIT_EXCEEDED: Status = st(G, 0x14, true);
    /// Operation Denied.
    pub const OPERATION_DENIED: Status = st(G, 0x15, true);
    /// SGL Offset Invalid.
    pub const SGL_INVALID_OFFSET: Status = st(G, 0x16, true);
    /// Host Identifier Inconsistent Format.
    pub const HOST_ID_INCONSISTENT_FORMAT: Status = st(G, 0x18, true);
    /// Keep Alive Timer Expired.
    pub const KEEP_ALIVE_EXPIRED: Status = st(G, 0x19, true);
    /// Keep Alive Timeout Invalid.
    pub const KEEP_ALIVE_INVALID: Status = st(G, 0x1A, true);
    /// Command Aborted due to Preempt and Abort.
    pub const ABORTED_PREEMPT: Status = st(G, 0x1B, false);
    /// Namespace is Write Protected.
    pub const NS_WRITE_PROTECTED: Status = st(G, 0x20, true);
    /// Command Interrupted (the host should retry).
    pub const COMMAND_INTERRUPTED: Status = st(G, 0x21, false);
    /// Transient Transport Error.
    pub const TRANSIENT_TRANSPORT_ERROR: Status = st(G, 0x22, false);
    /// LBA Out of Range (NVM command set).
    pub const LBA_OUT_OF_RANGE: Status = st(G, 0x80, true);
    /// Capacity Exceeded (NVM command set).
    pub const CAPACITY_EXCEEDED: Status = st(G, 0x81, true);
    /// Namespace Not Ready (NVM command set; retry may succeed).
    pub const NS_NOT_READY: Status = st(G, 0x82, false);
    /// Reservation Conflict (NVM command set).
    pub const RESERVATION_CONFLICT: Status = st(G, 0x83, true);
    /// Format In Progress (NVM command set).
    pub const FORMAT_IN_PROGRESS: Status = st(G, 0x84, false);

    // Command specific status (SCT 1), admin commands.
    /// Completion Queue Invalid.
    pub const COMPLETION_QUEUE_INVALID: Status = st(C, 0x00, true);
    /// Invalid Queue Identifier.
    pub const INVALID_QUEUE_IDENTIFIER: Status = st(C, 0x01, true);
    /// Invalid Queue Size.
    pub const INVALID_QUEUE_SIZE: Status = st(C, 0x02, true);
    /// Abort Command Limit Exceeded.
    pub const ABORT_LIMIT_EXCEEDED: Status = st(C, 0x03, true);
    /// Asynchronous Event Request Limit Exceeded.
    pub const ASYNC_EVENT_LIMIT_EXCEEDED: Status = st(C, 0x05, true);
    /// Invalid Firmware Slot.
    pub const INVALID_FIRMWARE_SLOT: Status = st(C, 0x06, true);
    /// Invalid Firmware Image.
    pub const INVALID_FIRMWARE_IMAGE: Status = st(C, 0x07, true);
    /// Invalid Interrupt Vector.
    pub const INVALID_INTERRUPT_VECTOR: Status = st(C, 0x08, true);
    /// Invalid Log Page.
    pub const INVALID_LOG_PAGE: Status = st(C, 0x09, true);
    /// Invalid Format.
    pub const INVALID_FORMAT: Status = st(C, 0x0A, true);
    /// Invalid Queue Deletion.
    pub const INVALID_QUEUE_DELETION: Status = st(C, 0x0C, true);
    /// Feature Identifier Not Saveable.
    pub const FEATURE_NOT_SAVEABLE: Status = st(C, 0x0D, true);
    /// Feature Not Changeable.
    pub const FEATURE_NOT_CHANGEABLE: Status = st(C, 0x0E, true);
    /// Feature Not Namespace Specific.
    pub const FEATURE_NOT_NAMESPACE_SPECIFIC: Status = st(C, 0x0F, true);
    /// Invalid Controller Identifier.
    pub const INVALID_CONTROLLER_ID: Status = st(C, 0x1F, true);
    /// I/O Command Set Not Supported.
    pub const IOCS_NOT_SUPPORTED: Status = st(C, 0x29, true);
    /// I/O Command Set Not Enabled.
    pub const IOCS_NOT_ENABLED: Status = st(C, 0x2A, true);
    /// I/O Command Set Combination Rejected.
    pub const IOCS_COMBINATION_REJECTED: Status = st(C, 0x2B, true);
    /// Invalid I/O Command Set.
    pub const INVALID_IOCS: Status = st(C, 0x2C, true);

    // Command specific status (SCT 1), NVM I/O commands.
    /// Conflicting Attributes (e.g. a Dataset Management with bad attributes).
    pub const CONFLICTING_ATTRIBUTES: Status = st(C, 0x80, true);
    /// Invalid Protection Information.
    pub const INVALID_PROTECTION_INFO: Status = st(C, 0x81, true);
    /// Attempted Write to Read Only Range.
    pub const WRITE_TO_READ_ONLY_RANGE: Status = st(C, 0x82, true);
    /// Command Size Limit Exceeded.
    pub const COMMAND_SIZE_LIMIT_EXCEEDED: Status = st(C, 0x83, true);

    // Command specific status (SCT 1), Fabrics commands (NVMe-oF 1.1, Connect).
    /// Connect: Incompatible Format (unsupported RECFMT).
    pub const CONNECT_INCOMPATIBLE_FORMAT: Status = st(C, 0x80, true);
    /// Connect: Controller Busy (e.g. the queue is already connected; the host may retry).
    pub const CONNECT_CONTROLLER_BUSY: Status = st(C, 0x81, false);
    /// Connect: Invalid Parameters (dw0 names the field: [`crate::wire::fabrics`]'s IATTR/IPO).
    pub const CONNECT_INVALID_PARAMETERS: Status = st(C, 0x82, true);
    /// Connect: Restart Discovery (the subsystem is not found here).
    pub const CONNECT_RESTART_DISCOVERY: Status = st(C, 0x83, true);
    /// Connect: Invalid Host (the host NQN is not allowed).
    pub const CONNECT_INVALID_HOST: Status = st(C, 0x84, true);
    /// Fabrics: Invalid Queue Type.
    pub const INVALID_QUEUE_TYPE: Status = st(C, 0x85, true);
    /// Get Log Page (discovery): Discover Restart (the log changed while it was read).
    pub const DISCOVER_RESTART: Status = st(C, 0x90, false);
    /// Fabrics: Authentication Required.
    pub const AUTH_REQUIRED: Status = st(C, 0x91, true);

    // Media and data integrity errors (SCT 2).
    /// Write Fault.
    pub const WRITE_FAULT: Status = st(M, 0x80, false);
    /// Unrecovered Read Error.
    pub const UNRECOVERED_READ_ERROR: Status = st(M, 0x81, true);
    /// End-to-end Guard Check Error.
    pub const GUARD_CHECK_ERROR: Status = st(M, 0x82, true);
    /// End-to-end Application Tag Check Error.
    pub const APP_TAG_CHECK_ERROR: Status = st(M, 0x83, true);
    /// End-to-end Reference Tag Check Error.
    pub const REF_TAG_CHECK_ERROR: Status = st(M, 0x84, true);
    /// Compare Failure.
    pub const COMPARE_FAILURE: Status = st(M, 0x85, true);
    /// Access Denied.
    pub const ACCESS_DENIED: Status = st(M, 0x86, true);
    /// Deallocated or Unwritten Logical Block.
    pub const DEALLOCATED_OR_UNWRITTEN: Status = st(M, 0x87, true);

    // Path related status (SCT 3).
    /// Internal Path Error.
    pub const INTERNAL_PATH_ERROR: Status = st(P, 0x00, false);
    /// Asymmetric Access Persistent Loss.
    pub const ANA_PERSISTENT_LOSS: Status = st(P, 0x01, false);
    /// Asymmetric Access Inaccessible.
    pub const ANA_INACCESSIBLE: Status = st(P, 0x02, false);
    /// Asymmetric Access Transition.
    pub const ANA_TRANSITION: Status = st(P, 0x03, false);
    /// Controller Pathing Error.
    pub const CONTROLLER_PATH_ERROR: Status = st(P, 0x60, false);
    /// Host Pathing Error.
    pub const HOST_PATH_ERROR: Status = st(P, 0x70, false);
    /// Command Aborted By Host.
    pub const ABORTED_BY_HOST: Status = st(P, 0x71, false);

    /// A generic (SCT 0) status with code `sc`, DNR clear.
    pub const fn generic(sc: u8) -> Status {
        st(G, sc, false)
    }

    /// A command specific (SCT 1) status with code `sc`, DNR clear.
    pub const fn command_specific(sc: u8) -> Status {
        st(C, sc, false)
    }

    /// The same status with DNR set to `dnr`.
    pub const fn with_dnr(self, dnr: bool) -> Status {
        Status { dnr, ..self }
    }

    /// The same status with the More bit set to `more`.
    pub const fn with_more(self, more: bool) -> Status {
        Status { more, ..self }
    }

    /// The same status with command retry delay `crd` (masked to 2 bits).
    pub const fn with_crd(self, crd: u8) -> Status {
        Status {
            crd: crd & 3,
            ..self
        }
    }

    /// True for a successful completion (SCT 0, SC 0; DNR/M/CRD ignored).
    pub const fn is_success(&self) -> bool {
        self.sct == G && self.sc == 0
    }

    /// Whether two statuses carry the same code (SCT and SC), whatever their flags.
    pub const fn same_code(&self, other: &Status) -> bool {
        self.sct == other.sct && self.sc == other.sc
    }

    /// The CQE status field (bits 15:1 of the upper half of dword 3, phase tag 0). Fields wider
    /// than their bits are masked.
    pub const fn to_u16(&self) -> u16 {
        ((self.sc as u16) << 1)
            | (((self.sct & 7) as u16) << 9)
            | (((self.crd & 3) as u16) << 12)
            | ((self.more as u16) << 14)
            | ((self.dnr as u16) << 15)
    }

    /// The status in a CQE status field; bit 0 (the phase tag) is ignored. Total: every value
    /// decodes.
    pub const fn from_u16(v: u16) -> Status {
        Status {
            sc: (v >> 1) as u8,
            sct: ((v >> 9) & 7) as u8,
            crd: ((v >> 12) & 3) as u8,
            more: v & (1 << 14) != 0,
            dnr: v & (1 << 15) != 0,
        }
    }

    /// The status a target completes a command with when the bdev I/O behind it failed with
    /// `errno` (either sign; 0 is success).
    ///
    /// ```text
    /// EIO, and anything not listed      Internal Error            (retry may succeed)
    /// ENOMEM, EAGAIN, EBUSY             Internal Error            (retry may succeed)
    /// EINVAL                            Invalid Field in Command  DNR
    /// ENOTSUP / EOPNOTSUPP              Invalid Command Opcode    DNR
    /// ENOSPC                            Capacity Exceeded         DNR
    /// ERANGE, EOVERFLOW                 LBA Out of Range          DNR
    /// ENODEV                            Invalid Namespace         DNR (the bdev is gone)
    /// ENXIO                             Namespace Not Ready       (retry may succeed)
    /// EROFS                             Namespace is Write Protected DNR
    /// EPERM, EACCES                     Access Denied (media)     DNR
    /// ENODATA, EILSEQ, EBADMSG          Unrecovered Read Error    DNR (data lost or corrupt)
    /// ECANCELED                         Command Abort Requested
    /// ETIMEDOUT, EINTR                  Command Interrupted       (retry may succeed)
    /// EBADE                             Reservation Conflict      DNR
    /// ```
    ///
    /// A plain EIO does not say whether the medium failed (the cache's origin may simply be
    /// unreachable), so it maps to Internal Error, as SPDK does for a failed bdev I/O; the host
    /// retries a few times and then reports EIO.
    pub fn from_errno(errno: i32) -> Status {
        let e = if errno < 0 {
            errno.wrapping_neg()
        } else {
            errno
        };
        match e {
            0 => Status::SUCCESS,
            libc::EINVAL => Status::INVALID_FIELD,
            libc::ENOTSUP => Status::INVALID_OPCODE,
            libc::ENOSPC => Status::CAPACITY_EXCEEDED,
            libc::ERANGE | libc::EOVERFLOW => Status::LBA_OUT_OF_RANGE,
            libc::ENODEV => Status::INVALID_NAMESPACE,
            libc::ENXIO => Status::NS_NOT_READY,
            libc::EROFS => Status::NS_WRITE_PROTECTED,
            libc::EPERM | libc::EACCES => Status::ACCESS_DENIED,
            libc::ENODATA | libc::EILSEQ | libc::EBADMSG => Status::UNRECOVERED_READ_ERROR,
            libc::ECANCELED => Status::ABORT_REQUESTED,
            libc::ETIMEDOUT | libc::EINTR => Status::COMMAND_INTERRUPTED,
            libc::EBADE => Status::RESERVATION_CONFLICT,
            _ => Status::INTERNAL,
        }
    }

    /// The positive errno a host reports for an I/O that completed with this status (0 for
    /// success). Command specific codes are read as NVM I/O command codes: a Connect's status
    /// means something else and its caller reads it itself.
    ///
    /// ```text
    /// Invalid Field, Command Sequence Error, SGL errors, admin command specific  EINVAL
    /// Invalid Command Opcode                         ENOTSUP
    /// Invalid Namespace                              ENODEV
    /// Namespace Not Ready                            ENXIO
    /// LBA Out of Range                               ERANGE
    /// Capacity Exceeded                              ENOSPC
    /// Namespace is Write Protected, Write to Read Only Range   EROFS
    /// Access Denied                                  EACCES
    /// Command Abort Requested, SQ Deletion, aborts   ECANCELED
    /// Command Interrupted                            EINTR
    /// Reservation Conflict                           EBADE
    /// Internal Error, Data Transfer Error, media, path, anything else   EIO
    /// ```
    pub fn to_errno(&self) -> i32 {
        if self.is_success() {
            return 0;
        }
        match (self.sct, self.sc) {
            (G, 0x01) => libc::ENOTSUP,
            (G, 0x02 | 0x03 | 0x0C..=0x11 | 0x13 | 0x14 | 0x16 | 0x18 | 0x1A) => libc::EINVAL,
            (G, 0x05 | 0x07 | 0x08 | 0x09 | 0x0A | 0x1B) => libc::ECANCELED,
            (G, 0x0B) => libc::ENODEV,
            (G, 0x15) => libc::EPERM,
            (G, 0x20) => libc::EROFS,
            (G, 0x21) => libc::EINTR,
            (G, 0x80) => libc::ERANGE,
            (G, 0x81) => libc::ENOSPC,
            (G, 0x82) => libc::ENXIO,
            (G, 0x83) => libc::EBADE,
            (C, 0x82) => libc::EROFS,
            (C, _) => libc::EINVAL,
            (M, 0x86) => libc::EACCES,
            _ => libc::EIO,
        }
    }

    /// The spec's name for this status (command specific codes named as for admin and NVM I/O
    /// commands), for logs.
    pub fn name(&self) -> &'static str {
        match (self.sct, self.sc) {
            (G, 0x00) => "Successful Completion",
            (G, 0x01) => "Invalid Command Opcode",
            (G, 0x02) => "Invalid Field in Command",
            (G, 0x03) => "Command ID Conflict",
            (G, 0x04) => "Data Transfer Error",
            (G, 0x05) => "Commands Aborted due to Power Loss Notification",
            (G, 0x06) => "Internal Error",
            (G, 0x07) => "Command Abort Requested",
            (G, 0x08) => "Command Aborted due to SQ Deletion",
            (G, 0x09) => "Command Aborted due to Failed Fused Command",
            (G, 0x0A) => "Command Aborted due to Missing Fused Command",
            (G, 0x0B) => "Invalid Namespace or Format",
            (G, 0x0C) => "Command Sequence Error",
            (G, 0x0D) => "Invalid SGL Segment Descriptor",
            (G, 0x0E) => "Invalid Number of SGL Descriptors",
            (G, 0x0F) => "Data SGL Length Invalid",
            (G, 0x10) => "Metadata SGL Length Invalid",
            (G, 0x11) => "SGL Descriptor Type Invalid",
            (G, 0x12) => "Invalid Use of Controller Memory Buffer",
            (G, 0x13) => "PRP Offset Invalid",
            (G, 0x14) => "Atomic Write Unit Exceeded",
            (G, 0x15) => "Operation Denied",
            (G, 0x16) => "SGL Offset Invalid",
            (G, 0x18) => "Host Identifier Inconsistent Format",
            (G, 0x19) => "Keep Alive Timer Expired",
            (G, 0x1A) => "Keep Alive Timeout Invalid",
            (G, 0x1B) => "Command Aborted due to Preempt and Abort",
            (G, 0x20) => "Namespace is Write Protected",
            (G, 0x21) => "Command Interrupted",
            (G, 0x22) => "Transient Transport Error",
            (G, 0x80) => "LBA Out of Range",
            (G, 0x81) => "Capacity Exceeded",
            (G, 0x82) => "Namespace Not Ready",
            (G, 0x83) => "Reservation Conflict",
            (G, 0x84) => "Format In Progress",
            (C, 0x00) => "Completion Queue Invalid",
            (C, 0x01) => "Invalid Queue Identifier",
            (C, 0x02) => "Invalid Queue Size",
            (C, 0x03) => "Abort Command Limit Exceeded",
            (C, 0x05) => "Asynchronous Event Request Limit Exceeded",
            (C, 0x06) => "Invalid Firmware Slot",
            (C, 0x07) => "Invalid Firmware Image",
            (C, 0x08) => "Invalid Interrupt Vector",
            (C, 0x09) => "Invalid Log Page",
            (C, 0x0A) => "Invalid Format",
            (C, 0x0C) => "Invalid Queue Deletion",
            (C, 0x0D) => "Feature Identifier Not Saveable",
            (C, 0x0E) => "Feature Not Changeable",
            (C, 0x0F) => "Feature Not Namespace Specific",
            (C, 0x1F) => "Invalid Controller Identifier",
            (C, 0x29) => "I/O Command Set Not Supported",
            (C, 0x2A) => "I/O Command Set Not Enabled",
            (C, 0x2B) => "I/O Command Set Combination Rejected",
            (C, 0x2C) => "Invalid I/O Command Set",
            (C, 0x80) => "Conflicting Attributes / Connect Incompatible Format",
            (C, 0x81) => "Invalid Protection Information / Connect Controller Busy",
            (C, 0x82) => "Attempted Write to Read Only Range / Connect Invalid Parameters",
            (C, 0x83) => "Command Size Limit Exceeded / Connect Restart Discovery",
            (C, 0x84) => "Connect Invalid Host",
            (C, 0x85) => "Invalid Queue Type",
            (C, 0x90) => "Discover Restart",
            (C, 0x91) => "Authentication Required",
            (M, 0x80) => "Write Fault",
            (M, 0x81) => "Unrecovered Read Error",
            (M, 0x82) => "End-to-end Guard Check Error",
            (M, 0x83) => "End-to-end Application Tag Check Error",
            (M, 0x84) => "End-to-end Reference Tag Check Error",
            (M, 0x85) => "Compare Failure",
            (M, 0x86) => "Access Denied",
            (M, 0x87) => "Deallocated or Unwritten Logical Block",
            (P, 0x00) => "Internal Path Error",
            (P, 0x01) => "Asymmetric Access Persistent Loss",
            (P, 0x02) => "Asymmetric Access Inaccessible",
            (P, 0x03) => "Asymmetric Access Transition",
            (P, 0x60) => "Controller Pathing Error",
            (P, 0x70) => "Host Pathing Error",
            (P, 0x71) => "Command Aborted By Host",
            (sct::VENDOR, _) => "Vendor Specific",
            _ => "Unknown Status",
        }
    }
}

/// `sct 0x0 sc 0x02 (Invalid Field in Command) dnr`.
impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sct {:#x} sc {:#04x} ({})",
            self.sct,
            self.sc,
            self.name()
        )?;
        if self.crd != 0 {
            write!(f, " crd {}", self.crd)?;
        }
        if self.more {
            f.write_str(" more")?;
        }
        if self.dnr {
            f.write_str(" dnr")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn status_field_bits_follow_the_spec() {
        // Invalid Field in Command with DNR: SC 02h in bits 8:1, SCT 0, DNR bit 15.
        assert_eq!(Status::INVALID_FIELD.to_u16(), 0x8004);
        // Connect Invalid Host: SCT 1 (bit 9), SC 84h (0x84 << 1 = 0x108), DNR.
        assert_eq!(
            Status::CONNECT_INVALID_HOST.to_u16(),
            0x8000 | 0x0200 | 0x0108
        );
        // Unrecovered Read Error: SCT 2 (0x400), SC 81h (0x102), DNR.
        assert_eq!(
            Status::UNRECOVERED_READ_ERROR.to_u16(),
            0x8000 | 0x0400 | 0x0102
        );
        // Internal Path Error: SCT 3, SC 0.
        assert_eq!(Status::INTERNAL_PATH_ERROR.to_u16(), 0x0600);
        // CRD 2 in bits 13:12, More in bit 14.
        let s = Status::NS_NOT_READY.with_crd(2).with_more(true);
        assert_eq!(s.to_u16(), 0x4000 | 0x2000 | 0x0104);
        assert_eq!(Status::SUCCESS.to_u16(), 0);
    }

    #[test]
    fn phase_bit_is_ignored() {
        assert_eq!(Status::from_u16(0x0001), Status::SUCCESS);
        assert_eq!(Status::from_u16(0x8005), Status::INVALID_FIELD);
        assert!(Status::from_u16(1).is_success());
    }

    #[test]
    fn fabrics_codes_are_the_spec_values() {
        assert_eq!(
            [
                Status::CONNECT_INCOMPATIBLE_FORMAT.sc,
                Status::CONNECT_CONTROLLER_BUSY.sc,
                Status::CONNECT_INVALID_PARAMETERS.sc,
                Status::CONNECT_RESTART_DISCOVERY.sc,
                Status::CONNECT_INVALID_HOST.sc,
            ],
            [0x80, 0x81, 0x82, 0x83, 0x84]
        );
        assert_eq!(Status::CONNECT_INVALID_HOST.sct, sct::COMMAND_SPECIFIC);
        assert_eq!(Status::INVALID_LOG_PAGE, st(1, 0x09, true));
    }

    #[test]
    fn errno_mapping() {
        assert_eq!(Status::from_errno(0), Status::SUCCESS);
        assert_eq!(Status::from_errno(-libc::EIO), Status::INTERNAL);
        assert!(!Status::from_errno(libc::EIO).dnr);
        assert_eq!(Status::from_errno(libc::ENOMEM), Status::INTERNAL);
        assert!(!Status::from_errno(-libc::ENOMEM).dnr);
        assert_eq!(Status::from_errno(libc::ENOSPC), Status::CAPACITY_EXCEEDED);
        assert_eq!(Status::from_errno(-libc::EINVAL), Status::INVALID_FIELD);
        assert_eq!(Status::from_errno(libc::ENODEV), Status::INVALID_NAMESPACE);
        assert_eq!(Status::from_errno(libc::ENXIO), Status::NS_NOT_READY);
        assert_eq!(Status::from_errno(libc::EROFS), Status::NS_WRITE_PROTECTED);
        assert_eq!(Status::from_errno(libc::EOPNOTSUPP), Status::INVALID_OPCODE);
        assert_eq!(Status::from_errno(i32::MIN), Status::INTERNAL);
        for e in [
            libc::EINVAL,
            libc::ENOTSUP,
            libc::ENOSPC,
            libc::ERANGE,
            libc::ENODEV,
            libc::ENXIO,
            libc::EROFS,
            libc::EACCES,
            libc::ECANCELED,
            libc::EINTR,
            libc::EBADE,
            libc::EIO,
        ] {
            assert_eq!(Status::from_errno(e).to_errno(), e, "errno {e}");
        }
        assert_eq!(Status::SUCCESS.to_errno(), 0);
        assert_eq!(Status::WRITE_FAULT.to_errno(), libc::EIO);
        assert_eq!(Status::HOST_PATH_ERROR.to_errno(), libc::EIO);
        assert_eq!(Status::WRITE_TO_READ_ONLY_RANGE.to_errno(), libc::EROFS);
        assert_eq!(Status::INVALID_LOG_PAGE.to_errno(), libc::EINVAL);
        assert_eq!(Status::generic(0x7F).to_errno(), libc::EIO);
    }

    #[test]
    fn display_names_the_code() {
        assert_eq!(
            Status::INVALID_FIELD.to_string(),
            "sct 0x0 sc 0x02 (Invalid Field in Command) dnr"
        );
        assert_eq!(
            Status::from_u16(0xEE00 | 0x1FE).to_string(),
            "sct 0x7 sc 0xff (Vendor Specific) crd 2 more dnr"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn any_field_round_trips(v in any::<u16>()) {
            let s = Status::from_u16(v);
            prop_assert_eq!(s.to_u16(), v & !1);
            let _ = s.to_errno();
            let _ = s.name();
        }

        #[test]
        fn any_errno_maps(e in any::<i32>()) {
            let s = Status::from_errno(e);
            prop_assert_eq!(Status::from_u16(s.to_u16()), s);
            prop_assert_eq!(s.is_success(), e == 0);
        }
    }
}
