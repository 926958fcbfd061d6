//! The 64-byte submission queue entry, the 16-byte completion queue entry, SGL descriptors and
//! the opcodes (NVMe Base 2.0 "Submission Queue Entry", "Completion Queue Entry", "SGL
//! Descriptor"; NVM Command Set 1.0 for the I/O commands; NVMe-oF 1.1 for Fabrics commands).
//!
//! ```text
//! SQE  0 opcode  1 fuse(1:0) psdt(7:6)  2 cid  4 nsid (Fabrics: byte 4 = fctype)  8 cdw2
//!     12 cdw3   16 mptr  24 dptr (16-byte SGL descriptor)  40 cdw10 .. 60 cdw15
//! CQE  0 dw0  4 dw1  8 sqhd  10 sqid  12 cid  14 status (bit 0 phase)
//! ```
//!
//! Decoding accepts any 64 (or 16) bytes: a reserved or unknown value is the caller's to judge.

use super::le::{self, Result, WireError};
use super::status::Status;

/// Size of a submission queue entry.
pub const SQE_LEN: usize = 64;
/// Size of a completion queue entry.
pub const CQE_LEN: usize = 16;
/// Size of an SGL descriptor.
pub const SGL_LEN: usize = 16;
/// Size of a Dataset Management range.
pub const DSM_RANGE_LEN: usize = 16;
/// The most ranges one Dataset Management command carries (NR is 8 bits, 0's based).
pub const DSM_MAX_RANGES: usize = 256;

/// The Fabrics command opcode (the command type is in `fctype`, SQE byte 4).
pub const FABRICS: u8 = 0x7F;

/// Admin command opcodes.
pub mod admin {
    /// Delete I/O Submission Queue.
    pub const DELETE_IO_SQ: u8 = 0x00;
    /// Create I/O Submission Queue.
    pub const CREATE_IO_SQ: u8 = 0x01;
    /// Get Log Page.
    pub const GET_LOG_PAGE: u8 = 0x02;
    /// Delete I/O Completion Queue.
    pub const DELETE_IO_CQ: u8 = 0x04;
    /// Create I/O Completion Queue.
    pub const CREATE_IO_CQ: u8 = 0x05;
    /// Identify.
    pub const IDENTIFY: u8 = 0x06;
    /// Abort.
    pub const ABORT: u8 = 0x08;
    /// Set Features.
    pub const SET_FEATURES: u8 = 0x09;
    /// Get Features.
    pub const GET_FEATURES: u8 = 0x0A;
    /// Asynchronous Event Request.
    pub const ASYNC_EVENT_REQUEST: u8 = 0x0C;
    /// Namespace Management.
    pub const NS_MANAGEMENT: u8 = 0x0D;
    /// Firmware Commit.
    pub const FIRMWARE_COMMIT: u8 = 0x10;
    /// Firmware Image Download.
    pub const FIRMWARE_DOWNLOAD: u8 = 0x11;
    /// Device Self-test.
    pub const DEVICE_SELF_TEST: u8 = 0x14;
    /// Namespace Attachment.
    pub const NS_ATTACHMENT: u8 = 0x15;
    /// Keep Alive.
    pub const KEEP_ALIVE: u8 = 0x18;
    /// Directive Send.
    pub const DIRECTIVE_SEND: u8 = 0x19;
    /// Directive Receive.
    pub const DIRECTIVE_RECEIVE: u8 = 0x1A;
    /// Doorbell Buffer Config.
    pub const DOORBELL_BUFFER_CONFIG: u8 = 0x7C;
    /// Fabrics commands.
    pub const FABRICS: u8 = super::FABRICS;
    /// Format NVM.
    pub const FORMAT_NVM: u8 = 0x80;
    /// Security Send.
    pub const SECURITY_SEND: u8 = 0x81;
    /// Security Receive.
    pub const SECURITY_RECEIVE: u8 = 0x82;
    /// Sanitize.
    pub const SANITIZE: u8 = 0x84;
    /// Get LBA Status.
    pub const GET_LBA_STATUS: u8 = 0x86;
}

/// NVM command set I/O opcodes.
pub mod io {
    /// Flush.
    pub const FLUSH: u8 = 0x00;
    /// Write.
    pub const WRITE: u8 = 0x01;
    /// Read.
    pub const READ: u8 = 0x02;
    /// Write Uncorrectable.
    pub const WRITE_UNCORRECTABLE: u8 = 0x04;
    /// Compare.
    pub const COMPARE: u8 = 0x05;
    /// Write Zeroes.
    pub const WRITE_ZEROES: u8 = 0x08;
    /// Dataset Management.
    pub const DATASET_MANAGEMENT: u8 = 0x09;
    /// Verify.
    pub const VERIFY: u8 = 0x0C;
    /// Reservation Register.
    pub const RESERVATION_REGISTER: u8 = 0x0D;
    /// Reservation Report.
    pub const RESERVATION_REPORT: u8 = 0x0E;
    /// Reservation Acquire.
    pub const RESERVATION_ACQUIRE: u8 = 0x11;
    /// Reservation Release.
    pub const RESERVATION_RELEASE: u8 = 0x15;
    /// Copy.
    pub const COPY: u8 = 0x19;
}

/// Fabrics command types (SQE byte 4 when the opcode is [`FABRICS`]).
pub mod fctype {
    /// Property Set.
    pub const PROPERTY_SET: u8 = 0x00;
    /// Connect.
    pub const CONNECT: u8 = 0x01;
    /// Property Get.
    pub const PROPERTY_GET: u8 = 0x04;
    /// Authentication Send.
    pub const AUTH_SEND: u8 = 0x05;
    /// Authentication Receive.
    pub const AUTH_RECV: u8 = 0x06;
    /// Disconnect (NVMe-oF 1.1: deletes one I/O queue).
    pub const DISCONNECT: u8 = 0x08;
}

/// Which way a command moves data, from bits 1:0 of its opcode (or of its fctype for Fabrics
/// commands): 00b none, 01b host to controller, 10b controller to host, 11b both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Xfer {
    /// No data.
    None,
    /// Host to controller (a write; Connect's data).
    HostToController,
    /// Controller to host (a read; Identify, Get Log Page).
    ControllerToHost,
    /// Bidirectional (not used by any command we support).
    Both,
}

impl Xfer {
    /// The direction encoded in the low two bits of `code`.
    pub const fn from_code(code: u8) -> Xfer {
        match code & 3 {
            0 => Xfer::None,
            1 => Xfer::HostToController,
            2 => Xfer::ControllerToHost,
            _ => Xfer::Both,
        }
    }
}

/// SGL descriptor types (high nibble of the descriptor's byte 15).
pub mod sgl_type {
    /// Data Block.
    pub const DATA_BLOCK: u8 = 0x0;
    /// Bit Bucket.
    pub const BIT_BUCKET: u8 = 0x1;
    /// Segment.
    pub const SEGMENT: u8 = 0x2;
    /// Last Segment.
    pub const LAST_SEGMENT: u8 = 0x3;
    /// Keyed Data Block (RDMA; unused on TCP).
    pub const KEYED_DATA_BLOCK: u8 = 0x4;
    /// Transport Data Block.
    pub const TRANSPORT_DATA_BLOCK: u8 = 0x5;
    /// Vendor specific.
    pub const VENDOR: u8 = 0xF;
}

/// SGL descriptor subtypes (low nibble of the descriptor's byte 15).
pub mod sgl_subtype {
    /// The address field is a memory address.
    pub const ADDRESS: u8 = 0x0;
    /// The address field is an offset (into in-capsule data on fabrics).
    pub const OFFSET: u8 = 0x1;
    /// Transport specific (NVMe/TCP: data moves in C2HData / H2CData PDUs).
    pub const TRANSPORT: u8 = 0xA;
}

/// An SGL descriptor (the SQE's DPTR on fabrics).
///
/// ```text
/// 0 address u64   8 length u32 (keyed: 24 bits at 8, key u32 at 11)   15 type << 4 | subtype
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Sgl {
    /// Address, or offset into in-capsule data for Data Block / Offset.
    pub address: u64,
    /// Length in bytes (24 bits in the keyed form).
    pub length: u32,
    /// Key of a Keyed Data Block (0 otherwise).
    pub key: u32,
    /// Descriptor type, 4 bits (see [`sgl_type`]).
    pub sgl_type: u8,
    /// Descriptor subtype, 4 bits (see [`sgl_subtype`]).
    pub subtype: u8,
}

impl Sgl {
    /// Descriptor identifier byte of a Data Block with Offset subtype: in-capsule data.
    pub const ID_DATA_BLOCK_OFFSET: u8 = 0x01;
    /// Descriptor identifier byte of a Transport Data Block: data in separate PDUs.
    pub const ID_TRANSPORT: u8 = 0x5A;

    /// In-capsule data of `length` bytes at `offset` from the start of the capsule's data.
    pub const fn in_capsule(offset: u64, length: u32) -> Sgl {
        Sgl {
            address: offset,
            length,
            key: 0,
            sgl_type: sgl_type::DATA_BLOCK,
            subtype: sgl_subtype::OFFSET,
        }
    }

    /// `length` bytes moved by the transport (NVMe/TCP R2T/H2CData or C2HData).
    pub const fn transport(length: u32) -> Sgl {
        Sgl {
            address: 0,
            length,
            key: 0,
            sgl_type: sgl_type::TRANSPORT_DATA_BLOCK,
            subtype: sgl_subtype::TRANSPORT,
        }
    }

    /// The descriptor identifier byte (type in the high nibble, subtype in the low).
    pub const fn id(&self) -> u8 {
        (self.sgl_type << 4) | (self.subtype & 0x0F)
    }

    /// True for in-capsule data (Data Block, Offset subtype).
    pub const fn is_in_capsule(&self) -> bool {
        self.id() == Self::ID_DATA_BLOCK_OFFSET
    }

    /// True for transport data (Transport Data Block, transport subtype).
    pub const fn is_transport(&self) -> bool {
        self.id() == Self::ID_TRANSPORT
    }

    /// The descriptor in the first 16 bytes of `b`.
    pub fn decode(b: &[u8]) -> Result<Sgl> {
        le::need(b, SGL_LEN)?;
        let id = le::get_u8(b, 15)?;
        let sgl_type = id >> 4;
        let (length, key) = if sgl_type == sgl_type::KEYED_DATA_BLOCK {
            (le::get_u32(b, 8)? & 0x00FF_FFFF, le::get_u32(b, 11)?)
        } else {
            (le::get_u32(b, 8)?, 0)
        };
        Ok(Sgl {
            address: le::get_u64(b, 0)?,
            length,
            key,
            sgl_type,
            subtype: id & 0x0F,
        })
    }

    /// The descriptor's 16 bytes (reserved bytes zero; a keyed length is cut to 24 bits).
    pub fn to_bytes(&self) -> [u8; SGL_LEN] {
        let mut out = [0u8; SGL_LEN];
        put(&mut out, 0, self.address.to_le_bytes());
        if self.sgl_type == sgl_type::KEYED_DATA_BLOCK {
            let l = self.length.to_le_bytes();
            put(&mut out, 8, [l[0], l[1], l[2]]);
            put(&mut out, 11, self.key.to_le_bytes());
        } else {
            put(&mut out, 8, self.length.to_le_bytes());
        }
        put(&mut out, 15, [self.id()]);
        out
    }
}

/// Copies `v` to `out[off..]` when it fits; every caller passes constant offsets inside a fixed
/// array, which the golden tests pin.
fn put<const N: usize>(out: &mut [u8], off: usize, v: [u8; N]) {
    if let Some(d) = out.get_mut(off..off + N) {
        d.copy_from_slice(&v);
    }
}

/// A submission queue entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Sqe {
    /// Opcode (admin, I/O or [`FABRICS`]).
    pub opcode: u8,
    /// Fused operation, 2 bits (0 normal, 1 first, 2 second).
    pub fuse: u8,
    /// PRP or SGL for data transfer, 2 bits (fabrics: 1, SGLs; the Linux host sends 1 on I/O
    /// commands, and 0 or 1 on Fabrics commands, whose PSDT field is reserved).
    pub psdt: u8,
    /// Command identifier.
    pub cid: u16,
    /// Namespace identifier (Fabrics commands: byte 0 is the fctype).
    pub nsid: u32,
    /// Command dword 2.
    pub cdw2: u32,
    /// Command dword 3.
    pub cdw3: u32,
    /// Metadata pointer.
    pub mptr: u64,
    /// Data pointer.
    pub dptr: Sgl,
    /// Command dword 10.
    pub cdw10: u32,
    /// Command dword 11.
    pub cdw11: u32,
    /// Command dword 12.
    pub cdw12: u32,
    /// Command dword 13.
    pub cdw13: u32,
    /// Command dword 14.
    pub cdw14: u32,
    /// Command dword 15.
    pub cdw15: u32,
}

/// PSDT value for "SGLs, metadata pointer to a contiguous buffer" (what fabrics uses).
pub const PSDT_SGL: u8 = 1;

impl Sqe {
    /// An entry with `opcode`, `cid` and `nsid`, PSDT = SGL, everything else zero.
    pub const fn new(opcode: u8, cid: u16, nsid: u32) -> Sqe {
        Sqe {
            opcode,
            fuse: 0,
            psdt: PSDT_SGL,
            cid,
            nsid,
            cdw2: 0,
            cdw3: 0,
            mptr: 0,
            dptr: Sgl {
                address: 0,
                length: 0,
                key: 0,
                sgl_type: 0,
                subtype: 0,
            },
            cdw10: 0,
            cdw11: 0,
            cdw12: 0,
            cdw13: 0,
            cdw14: 0,
            cdw15: 0,
        }
    }

    /// A Fabrics command of type `fctype` (the opcode is [`FABRICS`], byte 4 the fctype).
    pub const fn fabrics(fctype: u8, cid: u16) -> Sqe {
        Sqe::new(FABRICS, cid, fctype as u32)
    }

    /// The SQE in the first 64 bytes of `b`. Any bytes decode.
    pub fn decode(b: &[u8]) -> Result<Sqe> {
        le::need(b, SQE_LEN)?;
        let flags = le::get_u8(b, 1)?;
        Ok(Sqe {
            opcode: le::get_u8(b, 0)?,
            fuse: flags & 3,
            psdt: flags >> 6,
            cid: le::get_u16(b, 2)?,
            nsid: le::get_u32(b, 4)?,
            cdw2: le::get_u32(b, 8)?,
            cdw3: le::get_u32(b, 12)?,
            mptr: le::get_u64(b, 16)?,
            dptr: Sgl::decode(le::get_bytes(b, 24, SGL_LEN)?)?,
            cdw10: le::get_u32(b, 40)?,
            cdw11: le::get_u32(b, 44)?,
            cdw12: le::get_u32(b, 48)?,
            cdw13: le::get_u32(b, 52)?,
            cdw14: le::get_u32(b, 56)?,
            cdw15: le::get_u32(b, 60)?,
        })
    }

    /// Writes the 64 bytes of the entry (fuse and psdt masked to 2 bits).
    pub fn encode(&self, out: &mut [u8; SQE_LEN]) {
        put(
            out,
            0,
            [self.opcode, (self.fuse & 3) | ((self.psdt & 3) << 6)],
        );
        put(out, 2, self.cid.to_le_bytes());
        put(out, 4, self.nsid.to_le_bytes());
        put(out, 8, self.cdw2.to_le_bytes());
        put(out, 12, self.cdw3.to_le_bytes());
        put(out, 16, self.mptr.to_le_bytes());
        put(out, 24, self.dptr.to_bytes());
        put(out, 40, self.cdw10.to_le_bytes());
        put(out, 44, self.cdw11.to_le_bytes());
        put(out, 48, self.cdw12.to_le_bytes());
        put(out, 52, self.cdw13.to_le_bytes());
        put(out, 56, self.cdw14.to_le_bytes());
        put(out, 60, self.cdw15.to_le_bytes());
    }

    /// The entry's 64 bytes.
    pub fn to_bytes(&self) -> [u8; SQE_LEN] {
        let mut out = [0u8; SQE_LEN];
        self.encode(&mut out);
        out
    }

    /// True for a Fabrics command.
    pub const fn is_fabrics(&self) -> bool {
        self.opcode == FABRICS
    }

    /// The Fabrics command type (byte 4; meaningful when [`Sqe::is_fabrics`]).
    pub const fn fctype(&self) -> u8 {
        self.nsid as u8
    }

    /// Which way the command moves data (opcode bits 1:0, or fctype bits 1:0 for Fabrics).
    pub const fn xfer(&self) -> Xfer {
        if self.is_fabrics() {
            Xfer::from_code(self.fctype())
        } else {
            Xfer::from_code(self.opcode)
        }
    }

    /// Starting LBA of a Read, Write, Write Zeroes, Compare or Verify (cdw11:cdw10).
    pub const fn slba(&self) -> u64 {
        (self.cdw10 as u64) | ((self.cdw11 as u64) << 32)
    }

    /// Number of logical blocks (cdw12 bits 15:0 are 0's based, so 1..=65536).
    pub const fn nlb(&self) -> u32 {
        (self.cdw12 & 0xFFFF) + 1
    }

    /// Force Unit Access (cdw12 bit 30).
    pub const fn fua(&self) -> bool {
        self.cdw12 & (1 << 30) != 0
    }

    /// Limited Retry (cdw12 bit 31).
    pub const fn limited_retry(&self) -> bool {
        self.cdw12 & (1 << 31) != 0
    }

    /// Write Zeroes: Deallocate (cdw12 bit 25).
    pub const fn deac(&self) -> bool {
        self.cdw12 & (1 << 25) != 0
    }

    /// Protection information field (cdw12 bits 29:26); nonzero asks for PI we do not offer.
    pub const fn prinfo(&self) -> u8 {
        ((self.cdw12 >> 26) & 0xF) as u8
    }

    /// Sets the LBA range of a Read, Write, Write Zeroes, Compare or Verify: `slba` and `nlb`
    /// blocks (1..=65536), keeping cdw12's other bits.
    pub fn set_lba_range(&mut self, slba: u64, nlb: u32) -> Result<()> {
        if nlb == 0 || nlb > 0x1_0000 {
            return Err(WireError::Invalid {
                field: "nlb",
                value: nlb as u64,
            });
        }
        self.cdw10 = slba as u32;
        self.cdw11 = (slba >> 32) as u32;
        self.cdw12 = (self.cdw12 & !0xFFFF) | (nlb - 1);
        Ok(())
    }

    /// Sets or clears Force Unit Access.
    pub fn set_fua(&mut self, fua: bool) {
        if fua {
            self.cdw12 |= 1 << 30;
        } else {
            self.cdw12 &= !(1 << 30);
        }
    }

    /// Dataset Management: number of ranges (cdw10 bits 7:0, 0's based, so 1..=256).
    pub const fn dsm_nr(&self) -> usize {
        (self.cdw10 & 0xFF) as usize + 1
    }

    /// Dataset Management: Deallocate (cdw11 bit 2).
    pub const fn dsm_deallocate(&self) -> bool {
        self.cdw11 & dsm::AD != 0
    }

    /// Dataset Management: sets the range count (1..=256) and the attribute bits of cdw11.
    pub fn set_dsm(&mut self, nr: usize, attributes: u32) -> Result<()> {
        if nr == 0 || nr > DSM_MAX_RANGES {
            return Err(WireError::Invalid {
                field: "dsm nr",
                value: nr as u64,
            });
        }
        self.cdw10 = (self.cdw10 & !0xFF) | (nr as u32 - 1);
        self.cdw11 = attributes;
        Ok(())
    }

    /// Abort: the submission queue of the command to abort (cdw10 bits 15:0).
    pub const fn abort_sqid(&self) -> u16 {
        self.cdw10 as u16
    }

    /// Abort: the identifier of the command to abort (cdw10 bits 31:16).
    pub const fn abort_cid(&self) -> u16 {
        (self.cdw10 >> 16) as u16
    }
}

/// Dataset Management cdw11 attribute bits.
pub mod dsm {
    /// Integral Dataset for Read.
    pub const IDR: u32 = 1 << 0;
    /// Integral Dataset for Write.
    pub const IDW: u32 = 1 << 1;
    /// Deallocate.
    pub const AD: u32 = 1 << 2;
}

/// One Dataset Management range: `nlb` blocks (not 0's based) from `slba`.
///
/// ```text
/// 0 context attributes u32   4 nlb u32   8 slba u64
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DsmRange {
    /// Context attributes (access frequency, latency, ...); advisory.
    pub attributes: u32,
    /// Length in logical blocks.
    pub nlb: u32,
    /// Starting LBA.
    pub slba: u64,
}

impl DsmRange {
    /// The range in the first 16 bytes of `b`.
    pub fn decode(b: &[u8]) -> Result<DsmRange> {
        le::need(b, DSM_RANGE_LEN)?;
        Ok(DsmRange {
            attributes: le::get_u32(b, 0)?,
            nlb: le::get_u32(b, 4)?,
            slba: le::get_u64(b, 8)?,
        })
    }

    /// The range's 16 bytes.
    pub fn to_bytes(&self) -> [u8; DSM_RANGE_LEN] {
        let mut out = [0u8; DSM_RANGE_LEN];
        put(&mut out, 0, self.attributes.to_le_bytes());
        put(&mut out, 4, self.nlb.to_le_bytes());
        put(&mut out, 8, self.slba.to_le_bytes());
        out
    }

    /// Writes the first `ranges.len()` ranges to `b` and returns the bytes written.
    pub fn encode_list(ranges: &[DsmRange], b: &mut [u8]) -> Result<usize> {
        let len = ranges
            .len()
            .checked_mul(DSM_RANGE_LEN)
            .ok_or(WireError::Short {
                need: usize::MAX,
                have: b.len(),
            })?;
        le::need(b, len)?;
        for (r, chunk) in ranges.iter().zip(b.chunks_exact_mut(DSM_RANGE_LEN)) {
            chunk.copy_from_slice(&r.to_bytes());
        }
        Ok(len)
    }
}

/// The ranges of a Dataset Management command's data, in order.
#[derive(Clone, Debug)]
pub struct DsmRanges<'a> {
    chunks: core::slice::ChunksExact<'a, u8>,
}

impl<'a> DsmRanges<'a> {
    /// The first `nr` ranges in `data` (`nr` from [`Sqe::dsm_nr`]); `Short` when the data holds
    /// fewer.
    pub fn new(data: &'a [u8], nr: usize) -> Result<DsmRanges<'a>> {
        let len = nr.checked_mul(DSM_RANGE_LEN).ok_or(WireError::Short {
            need: usize::MAX,
            have: data.len(),
        })?;
        let data = le::get_bytes(data, 0, len)?;
        Ok(DsmRanges {
            chunks: data.chunks_exact(DSM_RANGE_LEN),
        })
    }
}

impl Iterator for DsmRanges<'_> {
    type Item = DsmRange;

    fn next(&mut self) -> Option<DsmRange> {
        self.chunks.next().and_then(|c| DsmRange::decode(c).ok())
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.chunks.size_hint()
    }
}

impl ExactSizeIterator for DsmRanges<'_> {}

/// A completion queue entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Cqe {
    /// Command specific dword 0 (Connect: cntlid; Property Get: value bits 31:0; Set Features
    /// Number of Queues: the counts; AER: the event).
    pub dw0: u32,
    /// Command specific dword 1 (Property Get: value bits 63:32).
    pub dw1: u32,
    /// Submission queue head pointer.
    pub sqhd: u16,
    /// Submission queue identifier.
    pub sqid: u16,
    /// Command identifier.
    pub cid: u16,
    /// Status (the phase tag is not kept: it is 0 over fabrics).
    pub status: Status,
}

impl Cqe {
    /// A completion of command `cid` with `status`, other fields zero.
    pub const fn new(cid: u16, status: Status) -> Cqe {
        Cqe {
            dw0: 0,
            dw1: 0,
            sqhd: 0,
            sqid: 0,
            cid,
            status,
        }
    }

    /// The CQE in the first 16 bytes of `b`. Any bytes decode.
    pub fn decode(b: &[u8]) -> Result<Cqe> {
        le::need(b, CQE_LEN)?;
        Ok(Cqe {
            dw0: le::get_u32(b, 0)?,
            dw1: le::get_u32(b, 4)?,
            sqhd: le::get_u16(b, 8)?,
            sqid: le::get_u16(b, 10)?,
            cid: le::get_u16(b, 12)?,
            status: Status::from_u16(le::get_u16(b, 14)?),
        })
    }

    /// Writes the 16 bytes of the entry (phase tag 0).
    pub fn encode(&self, out: &mut [u8; CQE_LEN]) {
        put(out, 0, self.dw0.to_le_bytes());
        put(out, 4, self.dw1.to_le_bytes());
        put(out, 8, self.sqhd.to_le_bytes());
        put(out, 10, self.sqid.to_le_bytes());
        put(out, 12, self.cid.to_le_bytes());
        put(out, 14, self.status.to_u16().to_le_bytes());
    }

    /// The entry's 16 bytes.
    pub fn to_bytes(&self) -> [u8; CQE_LEN] {
        let mut out = [0u8; CQE_LEN];
        self.encode(&mut out);
        out
    }

    /// dw1:dw0 as one 64-bit value (a Property Get result).
    pub const fn result_u64(&self) -> u64 {
        (self.dw0 as u64) | ((self.dw1 as u64) << 32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A Read of 8 blocks at LBA 0x1_0000_0010 with FUA, cid 0x1234, nsid 1, data by the
    /// transport (SGL 5Ah, 4096 bytes), written out byte by byte from the SQE layout.
    fn golden_read() -> [u8; 64] {
        let mut b = [0u8; 64];
        b[0] = 0x02; // opcode Read
        b[1] = 0x40; // psdt 01b in bits 7:6
        b[2] = 0x34;
        b[3] = 0x12; // cid
        b[4] = 0x01; // nsid 1
        // dptr: address 0, length 0x1000 at byte 24 + 8, id 0x5A at byte 24 + 15
        b[33] = 0x10;
        b[39] = 0x5A;
        b[40] = 0x10; // cdw10 = slba low
        b[44] = 0x01; // cdw11 = slba high
        b[48] = 0x07; // cdw12: nlb 0's based = 7
        b[51] = 0x40; // cdw12 bit 30: FUA
        b
    }

    #[test]
    fn read_sqe_golden() {
        let sqe = Sqe::decode(&golden_read()).unwrap();
        assert_eq!(sqe.opcode, io::READ);
        assert_eq!(sqe.psdt, PSDT_SGL);
        assert_eq!(sqe.cid, 0x1234);
        assert_eq!(sqe.nsid, 1);
        assert_eq!(sqe.dptr, Sgl::transport(4096));
        assert!(sqe.dptr.is_transport());
        assert_eq!(sqe.slba(), 0x1_0000_0010);
        assert_eq!(sqe.nlb(), 8);
        assert!(sqe.fua());
        assert!(!sqe.limited_retry());
        assert_eq!(sqe.xfer(), Xfer::ControllerToHost);

        let mut built = Sqe::new(io::READ, 0x1234, 1);
        built.dptr = Sgl::transport(4096);
        built.set_lba_range(0x1_0000_0010, 8).unwrap();
        built.set_fua(true);
        assert_eq!(built.to_bytes(), golden_read());
    }

    #[test]
    fn sgl_forms() {
        // In-capsule data: offset 0, 512 bytes, id 01h.
        let mut b = [0u8; 16];
        b[9] = 0x02;
        b[15] = 0x01;
        let s = Sgl::decode(&b).unwrap();
        assert_eq!(s, Sgl::in_capsule(0, 512));
        assert!(s.is_in_capsule());
        assert_eq!(s.to_bytes(), b);
        // Keyed data block: 24-bit length, 32-bit key at byte 11, type 4 subtype 0.
        let b = [
            1, 2, 3, 4, 5, 6, 7, 8, 0x00, 0x10, 0x00, 0xEF, 0xBE, 0xAD, 0xDE, 0x40,
        ];
        let s = Sgl::decode(&b).unwrap();
        assert_eq!(s.sgl_type, sgl_type::KEYED_DATA_BLOCK);
        assert_eq!(s.subtype, 0);
        assert_eq!(s.length, 0x1000);
        assert_eq!(s.key, 0xDEAD_BEEF);
        assert_eq!(s.address, 0x0807_0605_0403_0201);
        assert_eq!(s.to_bytes(), b);
    }

    #[test]
    fn fabrics_sqe_has_fctype_in_byte_4() {
        let mut b = [0u8; 64];
        b[0] = 0x7F;
        b[2] = 0x05;
        b[4] = fctype::CONNECT;
        let sqe = Sqe::decode(&b).unwrap();
        assert!(sqe.is_fabrics());
        assert_eq!(sqe.fctype(), fctype::CONNECT);
        assert_eq!(sqe.xfer(), Xfer::HostToController);
        assert_eq!(Sqe::fabrics(fctype::CONNECT, 5).fctype(), fctype::CONNECT);
        let get = Sqe::fabrics(fctype::PROPERTY_GET, 0);
        assert_eq!(get.xfer(), Xfer::None);
        assert_eq!(
            Sqe::new(admin::IDENTIFY, 0, 0).xfer(),
            Xfer::ControllerToHost
        );
        assert_eq!(Sqe::new(io::WRITE, 0, 0).xfer(), Xfer::HostToController);
        assert_eq!(Sqe::new(io::FLUSH, 0, 0).xfer(), Xfer::None);
    }

    #[test]
    fn cqe_golden() {
        // cid 7, sqid 1, sqhd 3, dw0 0x10, status Invalid Field + DNR (0x8004).
        let b = [
            0x10, 0, 0, 0, 0, 0, 0, 0, 0x03, 0x00, 0x01, 0x00, 0x07, 0x00, 0x04, 0x80,
        ];
        let cqe = Cqe::decode(&b).unwrap();
        assert_eq!(
            cqe,
            Cqe {
                dw0: 0x10,
                dw1: 0,
                sqhd: 3,
                sqid: 1,
                cid: 7,
                status: Status::INVALID_FIELD
            }
        );
        assert_eq!(cqe.to_bytes(), b);
        let mut p = b;
        p[14] |= 1; // phase tag set: same status
        assert_eq!(Cqe::decode(&p).unwrap(), cqe);
        let v = Cqe {
            dw0: 0x0040_0001,
            dw1: 0x20,
            ..Cqe::default()
        };
        assert_eq!(v.result_u64(), 0x20_0040_0001);
    }

    #[test]
    fn dsm_ranges_decode() {
        let mut sqe = Sqe::new(io::DATASET_MANAGEMENT, 1, 1);
        sqe.cdw10 = 1; // two ranges
        sqe.cdw11 = dsm::AD;
        assert_eq!(sqe.dsm_nr(), 2);
        assert!(sqe.dsm_deallocate());
        let mut data = [0u8; 40];
        data[4] = 8; // range 0: 8 blocks at LBA 0x100
        data[9] = 0x01;
        data[16] = 0xAA; // range 1: attributes 0xAA, 0x10000 blocks at LBA 2^40
        data[22] = 0x01;
        data[29] = 0x01;
        let r: [DsmRange; 2] = {
            let mut it = DsmRanges::new(&data, sqe.dsm_nr()).unwrap();
            assert_eq!(it.len(), 2);
            [it.next().unwrap(), it.next().unwrap()]
        };
        assert_eq!(
            r,
            [
                DsmRange {
                    attributes: 0,
                    nlb: 8,
                    slba: 0x100
                },
                DsmRange {
                    attributes: 0xAA,
                    nlb: 0x10000,
                    slba: 1 << 40
                }
            ]
        );
        let mut out = [0u8; 40];
        assert_eq!(DsmRange::encode_list(&r, &mut out), Ok(32));
        assert_eq!(out[..32], data[..32]);
        assert!(DsmRanges::new(&data, 3).is_err());
        assert!(DsmRanges::new(&data, usize::MAX).is_err());
        assert!(DsmRange::encode_list(&r, &mut out[..31]).is_err());
        let mut s = Sqe::new(io::DATASET_MANAGEMENT, 1, 1);
        s.set_dsm(256, dsm::AD).unwrap();
        assert_eq!((s.cdw10, s.dsm_nr()), (255, 256));
        assert!(s.set_dsm(0, 0).is_err());
        assert!(s.set_dsm(257, 0).is_err());
    }

    #[test]
    fn lba_range_limits() {
        let mut s = Sqe::new(io::WRITE, 0, 1);
        s.cdw12 = 1 << 30;
        s.set_lba_range(5, 0x1_0000).unwrap();
        assert_eq!((s.slba(), s.nlb(), s.fua()), (5, 0x1_0000, true));
        assert!(s.set_lba_range(0, 0).is_err());
        assert!(s.set_lba_range(0, 0x1_0001).is_err());
        s.set_fua(false);
        assert!(!s.fua());
    }

    #[test]
    fn abort_fields() {
        let mut s = Sqe::new(admin::ABORT, 0, 0);
        s.cdw10 = 0x0012_0003;
        assert_eq!((s.abort_sqid(), s.abort_cid()), (3, 0x12));
    }

    #[test]
    fn short_buffers_are_errors() {
        assert_eq!(
            Sqe::decode(&[0u8; 63]),
            Err(WireError::Short { need: 64, have: 63 })
        );
        assert!(Cqe::decode(&[0u8; 15]).is_err());
        assert!(Sgl::decode(&[0u8; 15]).is_err());
        assert!(DsmRange::decode(&[0u8; 15]).is_err());
        assert!(Sqe::decode(&[]).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn sqe_any_bytes(b in proptest::collection::vec(any::<u8>(), 0..80)) {
            match Sqe::decode(&b) {
                Ok(s) => {
                    prop_assert!(b.len() >= 64);
                    // Re-encoding and decoding again is stable.
                    prop_assert_eq!(Sqe::decode(&s.to_bytes()), Ok(s));
                    let _ = (s.xfer(), s.nlb(), s.slba(), s.dsm_nr());
                }
                Err(_) => prop_assert!(b.len() < 64),
            }
        }

        #[test]
        fn cqe_any_bytes(b in proptest::collection::vec(any::<u8>(), 0..24)) {
            match Cqe::decode(&b) {
                Ok(c) => {
                    let mut want = [0u8; 16];
                    want.copy_from_slice(&b[..16]);
                    want[14] &= !1;
                    prop_assert_eq!(c.to_bytes(), want);
                }
                Err(_) => prop_assert!(b.len() < 16),
            }
        }

        #[test]
        fn dsm_any_bytes(b in proptest::collection::vec(any::<u8>(), 0..100), nr in 0usize..300) {
            if let Ok(it) = DsmRanges::new(&b, nr) {
                prop_assert_eq!(it.count(), nr);
            } else {
                prop_assert!(b.len() < nr * 16);
            }
        }

        #[test]
        fn sqe_round_trip(opcode in any::<u8>(), fuse in 0u8..4, psdt in 0u8..4, cid in any::<u16>(),
                          nsid in any::<u32>(), dws in any::<[u32; 8]>(), mptr in any::<u64>(),
                          addr in any::<u64>(), len in any::<u32>(), id in any::<u8>()) {
            let mut dptr = Sgl { address: addr, length: len, key: 0, sgl_type: id >> 4, subtype: id & 0xF };
            if dptr.sgl_type == sgl_type::KEYED_DATA_BLOCK {
                dptr.length &= 0xFF_FFFF;
                dptr.key = len;
            }
            let s = Sqe { opcode, fuse, psdt, cid, nsid, cdw2: dws[0], cdw3: dws[1], mptr, dptr,
                          cdw10: dws[2], cdw11: dws[3], cdw12: dws[4], cdw13: dws[5], cdw14: dws[6],
                          cdw15: dws[7] };
            prop_assert_eq!(Sqe::decode(&s.to_bytes()), Ok(s));
        }
    }
}
