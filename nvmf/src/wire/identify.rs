//! Identify (admin opcode 06h): the command's fields and the 4096-byte structures it returns
//! (NVMe Base 2.0 "Identify command"; NVM Command Set 1.0 for the namespace and the NVM
//! controller structures; NVMe-oF 1.1 for the fabrics fields of Identify Controller).
//!
//! ```text
//! cdw10  7:0 CNS  31:16 CNTID        cdw11  15:0 CNS specific id  31:24 CSI
//! cdw14  6:0 UUID index
//! ```
//!
//! Builders write a whole 4096-byte structure (reserved bytes zero) into a caller's buffer;
//! decoders read one from at least 4096 bytes.

use super::command::{Sgl, Sqe, admin};
use super::fabrics::{Nqn, Text};
use super::le::{self, Pad, Result, WireError};

/// Size of every Identify data structure.
pub const IDENTIFY_LEN: usize = 4096;
/// Entries in a namespace list (CNS 02h / 07h / 10h).
pub const NS_LIST_LEN: usize = 1024;

/// Controller or Namespace Structure values (CNS).
pub mod cns {
    /// Identify Namespace (NVM) for CDW1.NSID.
    pub const NAMESPACE: u8 = 0x00;
    /// Identify Controller.
    pub const CONTROLLER: u8 = 0x01;
    /// Active namespace IDs above CDW1.NSID.
    pub const ACTIVE_NS_LIST: u8 = 0x02;
    /// Namespace identification descriptor list for CDW1.NSID.
    pub const NS_ID_DESCRIPTORS: u8 = 0x03;
    /// NVM Set list.
    pub const NVM_SET_LIST: u8 = 0x04;
    /// I/O command set specific Identify Namespace (CDW11.CSI).
    pub const IOCS_NAMESPACE: u8 = 0x05;
    /// I/O command set specific Identify Controller (CDW11.CSI; NVM: [`super::IdentifyNvmController`]).
    pub const IOCS_CONTROLLER: u8 = 0x06;
    /// I/O command set specific active namespace IDs (CDW11.CSI).
    pub const IOCS_ACTIVE_NS_LIST: u8 = 0x07;
    /// I/O command set independent Identify Namespace.
    pub const IOCS_INDEPENDENT_NAMESPACE: u8 = 0x08;
    /// Allocated namespace IDs.
    pub const ALLOCATED_NS_LIST: u8 = 0x10;
    /// Identify Namespace for an allocated NSID.
    pub const ALLOCATED_NAMESPACE: u8 = 0x11;
    /// Controllers attached to CDW1.NSID.
    pub const NS_CONTROLLER_LIST: u8 = 0x12;
    /// Controllers in the subsystem.
    pub const CONTROLLER_LIST: u8 = 0x13;
    /// UUID list.
    pub const UUID_LIST: u8 = 0x17;
    /// I/O command set combinations.
    pub const IO_COMMAND_SETS: u8 = 0x1C;
}

/// Command set identifiers (CSI).
pub mod csi {
    /// NVM command set.
    pub const NVM: u8 = 0x00;
    /// Key value command set.
    pub const KV: u8 = 0x01;
    /// Zoned namespace command set.
    pub const ZNS: u8 = 0x02;
}

/// An Identify command's fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdentifyCommand {
    /// Which structure (see [`cns`]).
    pub cns: u8,
    /// Controller identifier (controller lists).
    pub cntid: u16,
    /// CNS specific identifier (e.g. an NVM Set).
    pub cnssid: u16,
    /// Command set (see [`csi`]) for CNS 05h..07h.
    pub csi: u8,
    /// UUID index (0: none).
    pub uuid_index: u8,
}

impl IdentifyCommand {
    /// The Identify fields of `sqe` (its opcode is not checked; the dispatcher did that).
    pub const fn from_sqe(sqe: &Sqe) -> IdentifyCommand {
        IdentifyCommand {
            cns: sqe.cdw10 as u8,
            cntid: (sqe.cdw10 >> 16) as u16,
            cnssid: sqe.cdw11 as u16,
            csi: (sqe.cdw11 >> 24) as u8,
            uuid_index: (sqe.cdw14 & 0x7F) as u8,
        }
    }

    /// An Identify SQE for namespace `nsid` with these fields, data at `dptr`.
    pub fn to_sqe(&self, cid: u16, nsid: u32, dptr: Sgl) -> Sqe {
        let mut sqe = Sqe::new(admin::IDENTIFY, cid, nsid);
        sqe.dptr = dptr;
        sqe.cdw10 = self.cns as u32 | (self.cntid as u32) << 16;
        sqe.cdw11 = self.cnssid as u32 | (self.csi as u32) << 24;
        sqe.cdw14 = (self.uuid_index & 0x7F) as u32;
        sqe
    }
}

/// Controller types (CNTRLTYPE).
pub mod cntrltype {
    /// Not reported (before NVMe 1.4).
    pub const UNREPORTED: u8 = 0;
    /// I/O controller.
    pub const IO: u8 = 1;
    /// Discovery controller.
    pub const DISCOVERY: u8 = 2;
    /// Administrative controller.
    pub const ADMIN: u8 = 3;
}

/// CMIC bits.
pub mod cmic {
    /// The subsystem may have more than one port.
    pub const MULTI_PORT: u8 = 1 << 0;
    /// The subsystem may have more than one controller (needed for a second host connection).
    pub const MULTI_CONTROLLER: u8 = 1 << 1;
    /// SR-IOV virtual function.
    pub const SRIOV: u8 = 1 << 2;
    /// Asymmetric Namespace Access reporting.
    pub const ANA: u8 = 1 << 3;
}

/// OAES bits (optional asynchronous events supported).
pub mod oaes {
    /// Namespace Attribute Notices.
    pub const NS_ATTRIBUTE: u32 = 1 << 8;
    /// Firmware Activation Notices.
    pub const FW_ACTIVATION: u32 = 1 << 9;
    /// ANA Change Notices.
    pub const ANA_CHANGE: u32 = 1 << 11;
    /// Discovery Log Page Change Notices (discovery controllers).
    pub const DISCOVERY_LOG_CHANGE: u32 = 1 << 31;
}

/// CTRATT bits (controller attributes).
pub mod ctratt {
    /// 128-bit Host Identifier support.
    pub const HOST_ID_128: u32 = 1 << 0;
    /// Traffic Based Keep Alive.
    pub const TBKAS: u32 = 1 << 6;
    /// Extended LBA Formats.
    pub const ELBAS: u32 = 1 << 15;
}

/// OACS bits (optional admin commands).
pub mod oacs {
    /// Security Send / Receive.
    pub const SECURITY: u16 = 1 << 0;
    /// Format NVM.
    pub const FORMAT: u16 = 1 << 1;
    /// Firmware Download / Commit.
    pub const FIRMWARE: u16 = 1 << 2;
    /// Namespace Management.
    pub const NS_MANAGEMENT: u16 = 1 << 3;
    /// Directives.
    pub const DIRECTIVES: u16 = 1 << 5;
}

/// LPA bits (log page attributes).
pub mod lpa {
    /// SMART / health log per namespace.
    pub const SMART_PER_NS: u8 = 1 << 0;
    /// Commands Supported and Effects log (Linux then reads log 05h).
    pub const CMD_EFFECTS: u8 = 1 << 1;
    /// Extended data for Get Log Page (NUMDU, LPO).
    pub const EXTENDED_DATA: u8 = 1 << 2;
    /// Telemetry logs.
    pub const TELEMETRY: u8 = 1 << 3;
    /// Persistent event log.
    pub const PERSISTENT_EVENT: u8 = 1 << 4;
    /// Supported log pages, FID effects and NVMe-MI effects logs.
    pub const MISC: u8 = 1 << 5;
}

/// ONCS bits (optional NVM commands).
pub mod oncs {
    /// Compare.
    pub const COMPARE: u16 = 1 << 0;
    /// Write Uncorrectable.
    pub const WRITE_UNCORRECTABLE: u16 = 1 << 1;
    /// Dataset Management.
    pub const DSM: u16 = 1 << 2;
    /// Write Zeroes.
    pub const WRITE_ZEROES: u16 = 1 << 3;
    /// Save / Select in Set and Get Features.
    pub const SAVE_SELECT: u16 = 1 << 4;
    /// Reservations.
    pub const RESERVATIONS: u16 = 1 << 5;
    /// Timestamp feature.
    pub const TIMESTAMP: u16 = 1 << 6;
    /// Verify.
    pub const VERIFY: u16 = 1 << 7;
    /// Copy.
    pub const COPY: u16 = 1 << 8;
}

/// VWC values (volatile write cache).
pub mod vwc {
    /// A volatile write cache is present (Flush means something).
    pub const PRESENT: u8 = 1 << 0;
    /// Flush with NSID FFFFFFFFh is not supported (bits 2:1 = 10b).
    pub const FLUSH_BROADCAST_UNSUPPORTED: u8 = 2 << 1;
    /// Flush with NSID FFFFFFFFh is supported (bits 2:1 = 11b).
    pub const FLUSH_BROADCAST_SUPPORTED: u8 = 3 << 1;
}

/// SGLS bits (SGL support).
pub mod sgls {
    /// SGLs supported, no alignment requirement (bits 1:0 = 01b; Linux requires 01b or 10b).
    pub const SUPPORTED: u32 = 1;
    /// SGLs supported with dword alignment (bits 1:0 = 10b).
    pub const SUPPORTED_DWORD_ALIGNED: u32 = 2;
    /// Keyed SGL Data Block descriptors.
    pub const KEYED: u32 = 1 << 2;
    /// Bit Bucket descriptors.
    pub const BIT_BUCKET: u32 = 1 << 16;
    /// Metadata pointer to a contiguous buffer.
    pub const MPTR_CONTIGUOUS: u32 = 1 << 17;
    /// Data longer than the SGL describes.
    pub const OVERSIZED: u32 = 1 << 18;
    /// Metadata pointer to an SGL segment.
    pub const MPTR_SGL: u32 = 1 << 19;
    /// Address field as an offset (in-capsule data).
    pub const OFFSET: u32 = 1 << 20;
    /// Transport SGL Data Block descriptors.
    pub const TRANSPORT: u32 = 1 << 21;
}

/// FRMW bits (firmware updates).
pub mod frmw {
    /// Slot 1 is read-only.
    pub const SLOT1_RO: u8 = 1 << 0;
    /// FRMW for `n` (1..=7) firmware slots.
    pub const fn slots(n: u8) -> u8 {
        (n & 7) << 1
    }
}

/// OFCS bits (optional fabrics commands).
pub mod ofcs {
    /// Disconnect command supported.
    pub const DISCONNECT: u16 = 1 << 0;
}

/// SQES / CQES value with minimum and maximum entry sizes 2^min .. 2^max.
pub const fn entry_sizes(min: u8, max: u8) -> u8 {
    (min & 0xF) | (max & 0xF) << 4
}

/// Identify Controller (CNS 01h): the fields a fabrics controller sets and a host reads.
///
/// ```text
///    0 vid  2 ssvid  4 sn[20]  24 mn[40]  64 fr[8]  72 rab  73 ieee[3]  76 cmic  77 mdts
///   78 cntlid  80 ver  84 rtd3r  88 rtd3e  92 oaes  96 ctratt  111 cntrltype  112 fguid[16]
///  128 crdt1  130 crdt2  132 crdt3
///  256 oacs  258 acl  259 aerl  260 frmw  261 lpa  262 elpe  263 npss  266 wctemp  268 cctemp
///  320 kas
///  512 sqes  513 cqes  514 maxcmd  516 nn  520 oncs  522 fuses  524 fna  525 vwc  526 awun
///  528 awupf  532 acwu  536 sgls  540 mnan  768 subnqn[256]
/// 1792 ioccsz  1796 iorcsz  1800 icdoff  1802 fcatt  1803 msdbd  1804 ofcs
/// ```
///
/// sn, mn and fr are space padded ASCII; subnqn is NUL padded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdentifyController {
    /// PCI vendor id (0 for a fabrics controller without one).
    pub vid: u16,
    /// PCI subsystem vendor id.
    pub ssvid: u16,
    /// Serial number.
    pub sn: Text<20>,
    /// Model number.
    pub mn: Text<40>,
    /// Firmware revision.
    pub fr: Text<8>,
    /// Recommended arbitration burst.
    pub rab: u8,
    /// IEEE OUI (least significant byte first).
    pub ieee: [u8; 3],
    /// Multi-path I/O and namespace sharing (see [`cmic`]).
    pub cmic: u8,
    /// Maximum data transfer size, 2^mdts × CAP.MPSMIN pages (0: no limit).
    pub mdts: u8,
    /// Controller id.
    pub cntlid: u16,
    /// Version (as the VS register).
    pub ver: u32,
    /// RTD3 resume latency (µs).
    pub rtd3r: u32,
    /// RTD3 entry latency (µs).
    pub rtd3e: u32,
    /// Optional asynchronous events supported (see [`oaes`]).
    pub oaes: u32,
    /// Controller attributes (see [`ctratt`]).
    pub ctratt: u32,
    /// Controller type (see [`cntrltype`]).
    pub cntrltype: u8,
    /// FRU globally unique identifier.
    pub fguid: [u8; 16],
    /// Command retry delay times 1..3 (100 ms units).
    pub crdt: [u16; 3],
    /// Optional admin commands (see [`oacs`]).
    pub oacs: u16,
    /// Abort command limit, 0's based.
    pub acl: u8,
    /// Asynchronous event request limit, 0's based.
    pub aerl: u8,
    /// Firmware updates (see [`frmw`]).
    pub frmw: u8,
    /// Log page attributes (see [`lpa`]).
    pub lpa: u8,
    /// Error log page entries, 0's based.
    pub elpe: u8,
    /// Number of power states, 0's based.
    pub npss: u8,
    /// Warning composite temperature threshold (kelvin; 0: none).
    pub wctemp: u16,
    /// Critical composite temperature threshold (kelvin; 0: none).
    pub cctemp: u16,
    /// Keep alive granularity (100 ms units; 0: keep alive not supported).
    pub kas: u16,
    /// Submission queue entry sizes (see [`entry_sizes`]; 0x66 for 64 bytes).
    pub sqes: u8,
    /// Completion queue entry sizes (0x44 for 16 bytes).
    pub cqes: u8,
    /// Maximum outstanding commands per queue.
    pub maxcmd: u16,
    /// Number of namespaces (the largest valid NSID).
    pub nn: u32,
    /// Optional NVM commands (see [`oncs`]).
    pub oncs: u16,
    /// Fused operations (bit 0: Compare and Write).
    pub fuses: u16,
    /// Format NVM attributes.
    pub fna: u8,
    /// Volatile write cache (see [`vwc`]).
    pub vwc: u8,
    /// Atomic write unit normal, 0's based blocks.
    pub awun: u16,
    /// Atomic write unit power fail, 0's based blocks.
    pub awupf: u16,
    /// Atomic compare and write unit, 0's based blocks.
    pub acwu: u16,
    /// SGL support (see [`sgls`]).
    pub sgls: u32,
    /// Maximum allowed namespaces (0: not reported).
    pub mnan: u32,
    /// The subsystem's NQN.
    pub subnqn: Nqn,
    /// I/O queue command capsule size in 16-byte units (≥ 4: the 64-byte SQE).
    pub ioccsz: u32,
    /// I/O queue response capsule size in 16-byte units (≥ 1).
    pub iorcsz: u32,
    /// In-capsule data offset in 16-byte units (the Linux host requires 0).
    pub icdoff: u16,
    /// Controller attributes: bit 0 static controller model.
    pub fcatt: u8,
    /// Maximum SGL data block descriptors per command (0: no limit).
    pub msdbd: u8,
    /// Optional fabrics commands (see [`ofcs`]).
    pub ofcs: u16,
}

impl IdentifyController {
    /// Writes the 4096-byte structure into `b` (reserved bytes zero) and returns 4096.
    pub fn encode(&self, b: &mut [u8]) -> Result<usize> {
        le::need(b, IDENTIFY_LEN)?;
        le::zero(b, 0, IDENTIFY_LEN)?;
        le::put_u16(b, 0, self.vid)?;
        le::put_u16(b, 2, self.ssvid)?;
        self.sn.encode(b, 4, Pad::Space, "sn")?;
        self.mn.encode(b, 24, Pad::Space, "mn")?;
        self.fr.encode(b, 64, Pad::Space, "fr")?;
        le::put_u8(b, 72, self.rab)?;
        le::put_bytes(b, 73, &self.ieee)?;
        le::put_u8(b, 76, self.cmic)?;
        le::put_u8(b, 77, self.mdts)?;
        le::put_u16(b, 78, self.cntlid)?;
        le::put_u32(b, 80, self.ver)?;
        le::put_u32(b, 84, self.rtd3r)?;
        le::put_u32(b, 88, self.rtd3e)?;
        le::put_u32(b, 92, self.oaes)?;
        le::put_u32(b, 96, self.ctratt)?;
        le::put_u8(b, 111, self.cntrltype)?;
        le::put_bytes(b, 112, &self.fguid)?;
        le::put_u16(b, 128, self.crdt[0])?;
        le::put_u16(b, 130, self.crdt[1])?;
        le::put_u16(b, 132, self.crdt[2])?;
        le::put_u16(b, 256, self.oacs)?;
        le::put_u8(b, 258, self.acl)?;
        le::put_u8(b, 259, self.aerl)?;
        le::put_u8(b, 260, self.frmw)?;
        le::put_u8(b, 261, self.lpa)?;
        le::put_u8(b, 262, self.elpe)?;
        le::put_u8(b, 263, self.npss)?;
        le::put_u16(b, 266, self.wctemp)?;
        le::put_u16(b, 268, self.cctemp)?;
        le::put_u16(b, 320, self.kas)?;
        le::put_u8(b, 512, self.sqes)?;
        le::put_u8(b, 513, self.cqes)?;
        le::put_u16(b, 514, self.maxcmd)?;
        le::put_u32(b, 516, self.nn)?;
        le::put_u16(b, 520, self.oncs)?;
        le::put_u16(b, 522, self.fuses)?;
        le::put_u8(b, 524, self.fna)?;
        le::put_u8(b, 525, self.vwc)?;
        le::put_u16(b, 526, self.awun)?;
        le::put_u16(b, 528, self.awupf)?;
        le::put_u16(b, 532, self.acwu)?;
        le::put_u32(b, 536, self.sgls)?;
        le::put_u32(b, 540, self.mnan)?;
        self.subnqn.encode(b, 768, Pad::Nul, "subnqn")?;
        le::put_u32(b, 1792, self.ioccsz)?;
        le::put_u32(b, 1796, self.iorcsz)?;
        le::put_u16(b, 1800, self.icdoff)?;
        le::put_u8(b, 1802, self.fcatt)?;
        le::put_u8(b, 1803, self.msdbd)?;
        le::put_u16(b, 1804, self.ofcs)?;
        Ok(IDENTIFY_LEN)
    }

    /// The structure in the first 4096 bytes of `b`. `NotText` when sn, mn, fr or subnqn is not
    /// UTF-8.
    pub fn decode(b: &[u8]) -> Result<IdentifyController> {
        le::need(b, IDENTIFY_LEN)?;
        Ok(IdentifyController {
            vid: le::get_u16(b, 0)?,
            ssvid: le::get_u16(b, 2)?,
            sn: Text::decode(b, 4, "sn")?,
            mn: Text::decode(b, 24, "mn")?,
            fr: Text::decode(b, 64, "fr")?,
            rab: le::get_u8(b, 72)?,
            ieee: le::get_array(b, 73)?,
            cmic: le::get_u8(b, 76)?,
            mdts: le::get_u8(b, 77)?,
            cntlid: le::get_u16(b, 78)?,
            ver: le::get_u32(b, 80)?,
            rtd3r: le::get_u32(b, 84)?,
            rtd3e: le::get_u32(b, 88)?,
            oaes: le::get_u32(b, 92)?,
            ctratt: le::get_u32(b, 96)?,
            cntrltype: le::get_u8(b, 111)?,
            fguid: le::get_array(b, 112)?,
            crdt: [
                le::get_u16(b, 128)?,
                le::get_u16(b, 130)?,
                le::get_u16(b, 132)?,
            ],
            oacs: le::get_u16(b, 256)?,
            acl: le::get_u8(b, 258)?,
            aerl: le::get_u8(b, 259)?,
            frmw: le::get_u8(b, 260)?,
            lpa: le::get_u8(b, 261)?,
            elpe: le::get_u8(b, 262)?,
            npss: le::get_u8(b, 263)?,
            wctemp: le::get_u16(b, 266)?,
            cctemp: le::get_u16(b, 268)?,
            kas: le::get_u16(b, 320)?,
            sqes: le::get_u8(b, 512)?,
            cqes: le::get_u8(b, 513)?,
            maxcmd: le::get_u16(b, 514)?,
            nn: le::get_u32(b, 516)?,
            oncs: le::get_u16(b, 520)?,
            fuses: le::get_u16(b, 522)?,
            fna: le::get_u8(b, 524)?,
            vwc: le::get_u8(b, 525)?,
            awun: le::get_u16(b, 526)?,
            awupf: le::get_u16(b, 528)?,
            acwu: le::get_u16(b, 532)?,
            sgls: le::get_u32(b, 536)?,
            mnan: le::get_u32(b, 540)?,
            subnqn: Nqn::decode(b, 768, "subnqn")?,
            ioccsz: le::get_u32(b, 1792)?,
            iorcsz: le::get_u32(b, 1796)?,
            icdoff: le::get_u16(b, 1800)?,
            fcatt: le::get_u8(b, 1802)?,
            msdbd: le::get_u8(b, 1803)?,
            ofcs: le::get_u16(b, 1804)?,
        })
    }

    /// The largest transfer in bytes for a page size of `page` bytes (CAP.MPSMIN), or None
    /// when MDTS is 0 (no limit) or the size does not fit in 64 bits.
    pub fn max_transfer(&self, page: u64) -> Option<u64> {
        if self.mdts == 0 {
            return None;
        }
        1u64.checked_shl(self.mdts as u32)
            .and_then(|n| n.checked_mul(page))
    }
}

/// An LBA format: metadata bytes, data size 2^lbads, relative performance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LbaFormat {
    /// Metadata bytes per block.
    pub ms: u16,
    /// Block data size as a power of two (9 = 512, 12 = 4096; 0 = format not available).
    pub lbads: u8,
    /// Relative performance (2 bits; 0 best).
    pub rp: u8,
}

impl LbaFormat {
    /// The format's dword.
    pub const fn to_u32(&self) -> u32 {
        self.ms as u32 | (self.lbads as u32) << 16 | ((self.rp & 3) as u32) << 24
    }

    /// The format in a dword (reserved bits ignored).
    pub const fn from_u32(v: u32) -> LbaFormat {
        LbaFormat {
            ms: v as u16,
            lbads: (v >> 16) as u8,
            rp: ((v >> 24) & 3) as u8,
        }
    }

    /// Block size in bytes, or None when lbads is 0 or too large to mean anything.
    pub fn block_size(&self) -> Option<u32> {
        if self.lbads == 0 || self.lbads >= 32 {
            None
        } else {
            Some(1u32 << self.lbads)
        }
    }
}

/// The number of LBA format slots in Identify Namespace.
pub const LBA_FORMATS: usize = 64;

/// NSFEAT bits of Identify Namespace.
pub mod nsfeat {
    /// Thin provisioning.
    pub const THIN: u8 = 1 << 0;
    /// NAWUN / NAWUPF / NACWU are defined.
    pub const NS_ATOMICS: u8 = 1 << 1;
    /// Deallocated or Unwritten Logical Block error supported.
    pub const DEALLOC_ERROR: u8 = 1 << 2;
    /// NGUID and EUI64 are never reused.
    pub const UID_REUSE: u8 = 1 << 3;
    /// NPWG, NPWA, NPDG, NPDA and NOWS are defined (Linux then sets the I/O hints).
    pub const OPTPERF: u8 = 1 << 4;
}

/// DLFEAT bits of Identify Namespace.
pub mod dlfeat {
    /// A deallocated block reads as zeroes (bits 2:0 = 001b).
    pub const READ_ZEROES: u8 = 1;
    /// A deallocated block reads as FFh bytes (bits 2:0 = 010b).
    pub const READ_ONES: u8 = 2;
    /// Write Zeroes supports its Deallocate bit.
    pub const WRITE_ZEROES_DEALLOCATE: u8 = 1 << 3;
    /// The guard field of a deallocated block is its CRC.
    pub const GUARD_CRC: u8 = 1 << 4;
}

/// NMIC bit: the namespace may be attached to more than one controller.
pub const NMIC_SHARED: u8 = 1 << 0;
/// NSATTR bit: the namespace is currently write protected (read-only).
pub const NSATTR_WRITE_PROTECTED: u8 = 1 << 0;

/// Identify Namespace for the NVM command set (CNS 00h).
///
/// ```text
///   0 nsze  8 ncap  16 nuse  24 nsfeat  25 nlbaf  26 flbas  27 mc  28 dpc  29 dps  30 nmic
///  31 rescap  32 fpi  33 dlfeat  34 nawun  36 nawupf  38 nacwu  40 nabsn  42 nabo  44 nabspf
///  46 noiob  48 nvmcap (u128)  64 npwg  66 npwa  68 npdg  70 npda  72 nows  74 mssrl  76 mcl
///  80 msrc  92 anagrpid  99 nsattr  100 nvmsetid  102 endgid  104 nguid[16]  120 eui64[8]
/// 128 lbaf[64] (ms u16, lbads u8, rp 2 bits)
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdentifyNamespace {
    /// Size in blocks.
    pub nsze: u64,
    /// Capacity in blocks (0 tells the Linux host the namespace is gone).
    pub ncap: u64,
    /// Blocks in use.
    pub nuse: u64,
    /// Features (see [`nsfeat`]).
    pub nsfeat: u8,
    /// Number of LBA formats, 0's based.
    pub nlbaf: u8,
    /// Formatted LBA size: format index bits 3:0 (and 6:5 above 16 formats), bit 4 extended
    /// metadata.
    pub flbas: u8,
    /// Metadata capabilities.
    pub mc: u8,
    /// End-to-end data protection capabilities.
    pub dpc: u8,
    /// End-to-end data protection type settings.
    pub dps: u8,
    /// Multi-path I/O and sharing (see [`NMIC_SHARED`]).
    pub nmic: u8,
    /// Reservation capabilities.
    pub rescap: u8,
    /// Format progress indicator.
    pub fpi: u8,
    /// Deallocate logical block features (see [`dlfeat`]).
    pub dlfeat: u8,
    /// Namespace atomic write unit normal, 0's based.
    pub nawun: u16,
    /// Namespace atomic write unit power fail, 0's based.
    pub nawupf: u16,
    /// Namespace atomic compare and write unit, 0's based.
    pub nacwu: u16,
    /// Atomic boundary size normal.
    pub nabsn: u16,
    /// Atomic boundary offset.
    pub nabo: u16,
    /// Atomic boundary size power fail.
    pub nabspf: u16,
    /// Optimal I/O boundary in blocks (0: none).
    pub noiob: u16,
    /// NVM capacity in bytes.
    pub nvmcap: u128,
    /// Preferred write granularity, 0's based blocks.
    pub npwg: u16,
    /// Preferred write alignment, 0's based blocks.
    pub npwa: u16,
    /// Preferred deallocate granularity, 0's based blocks.
    pub npdg: u16,
    /// Preferred deallocate alignment, 0's based blocks.
    pub npda: u16,
    /// Optimal write size, 0's based blocks.
    pub nows: u16,
    /// Maximum single source range length (Copy).
    pub mssrl: u16,
    /// Maximum copy length.
    pub mcl: u32,
    /// Maximum source range count, 0's based.
    pub msrc: u8,
    /// ANA group (0: not reported).
    pub anagrpid: u32,
    /// Attributes (see [`NSATTR_WRITE_PROTECTED`]).
    pub nsattr: u8,
    /// NVM Set.
    pub nvmsetid: u16,
    /// Endurance group.
    pub endgid: u16,
    /// Namespace globally unique identifier (big-endian bytes as the spec shows them).
    pub nguid: [u8; 16],
    /// IEEE extended unique identifier.
    pub eui64: [u8; 8],
    /// LBA formats (only `0..=nlbaf` are meaningful).
    pub lbaf: [LbaFormat; LBA_FORMATS],
}

impl Default for IdentifyNamespace {
    fn default() -> Self {
        IdentifyNamespace {
            nsze: 0,
            ncap: 0,
            nuse: 0,
            nsfeat: 0,
            nlbaf: 0,
            flbas: 0,
            mc: 0,
            dpc: 0,
            dps: 0,
            nmic: 0,
            rescap: 0,
            fpi: 0,
            dlfeat: 0,
            nawun: 0,
            nawupf: 0,
            nacwu: 0,
            nabsn: 0,
            nabo: 0,
            nabspf: 0,
            noiob: 0,
            nvmcap: 0,
            npwg: 0,
            npwa: 0,
            npdg: 0,
            npda: 0,
            nows: 0,
            mssrl: 0,
            mcl: 0,
            msrc: 0,
            anagrpid: 0,
            nsattr: 0,
            nvmsetid: 0,
            endgid: 0,
            nguid: [0; 16],
            eui64: [0; 8],
            lbaf: [LbaFormat::default(); LBA_FORMATS],
        }
    }
}

impl IdentifyNamespace {
    /// A namespace of `blocks` blocks of 2^`lbads` bytes, fully allocated, one LBA format.
    pub fn simple(blocks: u64, lbads: u8) -> IdentifyNamespace {
        let mut ns = IdentifyNamespace {
            nsze: blocks,
            ncap: blocks,
            nuse: blocks,
            ..IdentifyNamespace::default()
        };
        ns.lbaf[0] = LbaFormat {
            ms: 0,
            lbads,
            rp: 0,
        };
        ns
    }

    /// The index of the LBA format in use (FLBAS bits 3:0, with bits 6:5 as bits 5:4 when
    /// there are more than 16 formats).
    pub const fn format_index(&self) -> usize {
        let low = (self.flbas & 0xF) as usize;
        if self.nlbaf >= 16 {
            low | (((self.flbas >> 5) & 3) as usize) << 4
        } else {
            low
        }
    }

    /// The LBA format in use, or None when FLBAS points past NLBAF.
    pub fn format(&self) -> Option<LbaFormat> {
        let i = self.format_index();
        if i > self.nlbaf as usize {
            return None;
        }
        self.lbaf.get(i).copied()
    }

    /// Block size in bytes of the format in use.
    pub fn block_size(&self) -> Option<u32> {
        self.format().and_then(|f| f.block_size())
    }

    /// Writes the 4096-byte structure into `b` (reserved bytes zero) and returns 4096.
    pub fn encode(&self, b: &mut [u8]) -> Result<usize> {
        le::need(b, IDENTIFY_LEN)?;
        le::zero(b, 0, IDENTIFY_LEN)?;
        le::put_u64(b, 0, self.nsze)?;
        le::put_u64(b, 8, self.ncap)?;
        le::put_u64(b, 16, self.nuse)?;
        le::put_bytes(
            b,
            24,
            &[
                self.nsfeat,
                self.nlbaf,
                self.flbas,
                self.mc,
                self.dpc,
                self.dps,
                self.nmic,
                self.rescap,
                self.fpi,
                self.dlfeat,
            ],
        )?;
        le::put_u16(b, 34, self.nawun)?;
        le::put_u16(b, 36, self.nawupf)?;
        le::put_u16(b, 38, self.nacwu)?;
        le::put_u16(b, 40, self.nabsn)?;
        le::put_u16(b, 42, self.nabo)?;
        le::put_u16(b, 44, self.nabspf)?;
        le::put_u16(b, 46, self.noiob)?;
        le::put_bytes(b, 48, &self.nvmcap.to_le_bytes())?;
        le::put_u16(b, 64, self.npwg)?;
        le::put_u16(b, 66, self.npwa)?;
        le::put_u16(b, 68, self.npdg)?;
        le::put_u16(b, 70, self.npda)?;
        le::put_u16(b, 72, self.nows)?;
        le::put_u16(b, 74, self.mssrl)?;
        le::put_u32(b, 76, self.mcl)?;
        le::put_u8(b, 80, self.msrc)?;
        le::put_u32(b, 92, self.anagrpid)?;
        le::put_u8(b, 99, self.nsattr)?;
        le::put_u16(b, 100, self.nvmsetid)?;
        le::put_u16(b, 102, self.endgid)?;
        le::put_bytes(b, 104, &self.nguid)?;
        le::put_bytes(b, 120, &self.eui64)?;
        for (i, f) in self.lbaf.iter().enumerate() {
            le::put_u32(b, 128 + 4 * i, f.to_u32())?;
        }
        Ok(IDENTIFY_LEN)
    }

    /// The structure in the first 4096 bytes of `b`. Any bytes decode.
    pub fn decode(b: &[u8]) -> Result<IdentifyNamespace> {
        le::need(b, IDENTIFY_LEN)?;
        let mut lbaf = [LbaFormat::default(); LBA_FORMATS];
        for (i, f) in lbaf.iter_mut().enumerate() {
            *f = LbaFormat::from_u32(le::get_u32(b, 128 + 4 * i)?);
        }
        Ok(IdentifyNamespace {
            nsze: le::get_u64(b, 0)?,
            ncap: le::get_u64(b, 8)?,
            nuse: le::get_u64(b, 16)?,
            nsfeat: le::get_u8(b, 24)?,
            nlbaf: le::get_u8(b, 25)?,
            flbas: le::get_u8(b, 26)?,
            mc: le::get_u8(b, 27)?,
            dpc: le::get_u8(b, 28)?,
            dps: le::get_u8(b, 29)?,
            nmic: le::get_u8(b, 30)?,
            rescap: le::get_u8(b, 31)?,
            fpi: le::get_u8(b, 32)?,
            dlfeat: le::get_u8(b, 33)?,
            nawun: le::get_u16(b, 34)?,
            nawupf: le::get_u16(b, 36)?,
            nacwu: le::get_u16(b, 38)?,
            nabsn: le::get_u16(b, 40)?,
            nabo: le::get_u16(b, 42)?,
            nabspf: le::get_u16(b, 44)?,
            noiob: le::get_u16(b, 46)?,
            nvmcap: u128::from_le_bytes(le::get_array(b, 48)?),
            npwg: le::get_u16(b, 64)?,
            npwa: le::get_u16(b, 66)?,
            npdg: le::get_u16(b, 68)?,
            npda: le::get_u16(b, 70)?,
            nows: le::get_u16(b, 72)?,
            mssrl: le::get_u16(b, 74)?,
            mcl: le::get_u32(b, 76)?,
            msrc: le::get_u8(b, 80)?,
            anagrpid: le::get_u32(b, 92)?,
            nsattr: le::get_u8(b, 99)?,
            nvmsetid: le::get_u16(b, 100)?,
            endgid: le::get_u16(b, 102)?,
            nguid: le::get_array(b, 104)?,
            eui64: le::get_array(b, 120)?,
            lbaf,
        })
    }
}

/// Writes a namespace list (CNS 02h): the first 1024 of `ids` (the caller passes active NSIDs
/// above the command's NSID, ascending), zero after the last. Returns 4096.
pub fn encode_ns_list<I: IntoIterator<Item = u32>>(ids: I, b: &mut [u8]) -> Result<usize> {
    le::need(b, IDENTIFY_LEN)?;
    le::zero(b, 0, IDENTIFY_LEN)?;
    for (i, id) in ids.into_iter().take(NS_LIST_LEN).enumerate() {
        le::put_u32(b, 4 * i, id)?;
    }
    Ok(IDENTIFY_LEN)
}

/// The NSIDs of a namespace list, up to its first zero entry.
#[derive(Clone, Debug)]
pub struct NsList<'a> {
    chunks: core::slice::ChunksExact<'a, u8>,
}

impl<'a> NsList<'a> {
    /// The list in the first 4096 bytes of `b`.
    pub fn decode(b: &'a [u8]) -> Result<NsList<'a>> {
        Ok(NsList {
            chunks: le::get_bytes(b, 0, IDENTIFY_LEN)?.chunks_exact(4),
        })
    }
}

impl Iterator for NsList<'_> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        let id = le::get_u32(self.chunks.next()?, 0).ok()?;
        if id == 0 {
            // The list ends at the first zero: drain so later calls stay None.
            self.chunks = [].chunks_exact(4);
            None
        } else {
            Some(id)
        }
    }
}

/// Namespace identification descriptor types (NIDT).
pub mod nidt {
    /// IEEE EUI-64 (8 bytes).
    pub const EUI64: u8 = 1;
    /// Namespace GUID (16 bytes).
    pub const NGUID: u8 = 2;
    /// Namespace UUID (16 bytes).
    pub const UUID: u8 = 3;
    /// Command set identifier (1 byte).
    pub const CSI: u8 = 4;
}

/// One namespace identification descriptor (CNS 03h): `nidt u8, nidl u8, 2 reserved, nid`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NsIdDescriptor {
    /// IEEE EUI-64.
    Eui64([u8; 8]),
    /// Namespace GUID.
    Nguid([u8; 16]),
    /// Namespace UUID.
    Uuid([u8; 16]),
    /// Command set identifier (see [`csi`]).
    Csi(u8),
    /// A type this decoder does not know (its `nidl` bytes were skipped).
    Unknown {
        /// The descriptor type.
        nidt: u8,
        /// Its length.
        nidl: u8,
    },
}

impl NsIdDescriptor {
    fn parts(&self) -> (u8, &[u8]) {
        match self {
            NsIdDescriptor::Eui64(v) => (nidt::EUI64, v),
            NsIdDescriptor::Nguid(v) => (nidt::NGUID, v),
            NsIdDescriptor::Uuid(v) => (nidt::UUID, v),
            NsIdDescriptor::Csi(v) => (nidt::CSI, core::slice::from_ref(v)),
            NsIdDescriptor::Unknown { nidt, .. } => (*nidt, &[]),
        }
    }
}

/// Writes a namespace identification descriptor list into the 4096 bytes of `b` (zero after
/// the last; an `Unknown` descriptor is skipped). Returns 4096.
pub fn encode_ns_descriptors(descs: &[NsIdDescriptor], b: &mut [u8]) -> Result<usize> {
    le::need(b, IDENTIFY_LEN)?;
    le::zero(b, 0, IDENTIFY_LEN)?;
    let mut off = 0;
    for d in descs {
        if matches!(d, NsIdDescriptor::Unknown { .. }) {
            continue;
        }
        let (t, nid) = d.parts();
        if off + 4 + nid.len() > IDENTIFY_LEN {
            return Err(WireError::TooLong {
                field: "ns descriptors",
                max: IDENTIFY_LEN,
            });
        }
        le::put_u8(b, off, t)?;
        le::put_u8(b, off + 1, nid.len() as u8)?;
        le::put_bytes(b, off + 4, nid)?;
        off += 4 + nid.len();
    }
    Ok(IDENTIFY_LEN)
}

/// The descriptors of a namespace identification descriptor list, up to the first with type 0.
/// A known type with the wrong length, or one running past the end, yields an error and ends
/// the list.
#[derive(Clone, Debug)]
pub struct NsIdDescriptors<'a> {
    b: &'a [u8],
    off: usize,
}

impl<'a> NsIdDescriptors<'a> {
    /// The list in the first 4096 bytes of `b`.
    pub fn decode(b: &'a [u8]) -> Result<NsIdDescriptors<'a>> {
        Ok(NsIdDescriptors {
            b: le::get_bytes(b, 0, IDENTIFY_LEN)?,
            off: 0,
        })
    }

    fn read(&self) -> Result<Option<(NsIdDescriptor, usize)>> {
        let t = match le::get_u8(self.b, self.off) {
            Ok(t) => t,
            Err(_) => return Ok(None),
        };
        if t == 0 {
            return Ok(None);
        }
        let nidl = le::get_u8(self.b, self.off + 1)?;
        let nid = le::get_bytes(self.b, self.off + 4, nidl as usize)?;
        let want = match t {
            nidt::EUI64 => Some(8),
            nidt::NGUID | nidt::UUID => Some(16),
            nidt::CSI => Some(1),
            _ => None,
        };
        if want.is_some_and(|w| w != nidl as usize) {
            return Err(WireError::Invalid {
                field: "nidl",
                value: nidl as u64,
            });
        }
        let d = match t {
            nidt::EUI64 => NsIdDescriptor::Eui64(le::get_array(nid, 0)?),
            nidt::NGUID => NsIdDescriptor::Nguid(le::get_array(nid, 0)?),
            nidt::UUID => NsIdDescriptor::Uuid(le::get_array(nid, 0)?),
            nidt::CSI => NsIdDescriptor::Csi(le::get_u8(nid, 0)?),
            _ => NsIdDescriptor::Unknown { nidt: t, nidl },
        };
        Ok(Some((d, 4 + nidl as usize)))
    }
}

impl Iterator for NsIdDescriptors<'_> {
    type Item = Result<NsIdDescriptor>;

    fn next(&mut self) -> Option<Result<NsIdDescriptor>> {
        match self.read() {
            Ok(Some((d, len))) => {
                self.off += len;
                Some(Ok(d))
            }
            Ok(None) => None,
            Err(e) => {
                self.off = self.b.len();
                Some(Err(e))
            }
        }
    }
}

/// I/O command set specific Identify Controller for the NVM command set (CNS 06h, CSI 0).
/// All zero means no limits.
///
/// ```text
/// 0 vsl  1 wzsl  2 wusl  3 dmrl  4 dmrsl u32  8 dmsl u64
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdentifyNvmController {
    /// Verify size limit (2^n pages; 0: none).
    pub vsl: u8,
    /// Write Zeroes size limit (2^n pages; 0: none).
    pub wzsl: u8,
    /// Write Uncorrectable size limit (2^n pages; 0: none).
    pub wusl: u8,
    /// Dataset Management ranges limit (0: none).
    pub dmrl: u8,
    /// Dataset Management range size limit in blocks (0: none).
    pub dmrsl: u32,
    /// Dataset Management size limit in blocks (0: none).
    pub dmsl: u64,
}

impl IdentifyNvmController {
    /// Writes the 4096-byte structure and returns 4096.
    pub fn encode(&self, b: &mut [u8]) -> Result<usize> {
        le::need(b, IDENTIFY_LEN)?;
        le::zero(b, 0, IDENTIFY_LEN)?;
        le::put_bytes(b, 0, &[self.vsl, self.wzsl, self.wusl, self.dmrl])?;
        le::put_u32(b, 4, self.dmrsl)?;
        le::put_u64(b, 8, self.dmsl)?;
        Ok(IDENTIFY_LEN)
    }

    /// The structure in the first 4096 bytes of `b`.
    pub fn decode(b: &[u8]) -> Result<IdentifyNvmController> {
        le::need(b, IDENTIFY_LEN)?;
        Ok(IdentifyNvmController {
            vsl: le::get_u8(b, 0)?,
            wzsl: le::get_u8(b, 1)?,
            wusl: le::get_u8(b, 2)?,
            dmrl: le::get_u8(b, 3)?,
            dmrsl: le::get_u32(b, 4)?,
            dmsl: le::get_u64(b, 8)?,
        })
    }
}

/// NSFEAT bits of the command set independent namespace structure.
pub mod indep_nsfeat {
    /// NGUID and EUI64 are never reused.
    pub const UID_REUSE: u8 = 1 << 3;
    /// Rotational media.
    pub const ROTATIONAL: u8 = 1 << 4;
    /// No volatile write cache for this namespace.
    pub const VWC_NOT_PRESENT: u8 = 1 << 5;
}

/// NSTAT bit: the namespace is ready (the Linux host skips a namespace without it).
pub const NSTAT_READY: u8 = 1 << 0;

/// I/O command set independent Identify Namespace (CNS 08h).
///
/// ```text
/// 0 nsfeat  1 nmic  2 rescap  3 fpi  4 anagrpid u32  8 nsattr  10 nvmsetid  12 endgid  14 nstat
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdentifyNsIndependent {
    /// Features (see [`indep_nsfeat`]).
    pub nsfeat: u8,
    /// Multi-path I/O and sharing (see [`NMIC_SHARED`]).
    pub nmic: u8,
    /// Reservation capabilities.
    pub rescap: u8,
    /// Format progress indicator.
    pub fpi: u8,
    /// ANA group.
    pub anagrpid: u32,
    /// Attributes (see [`NSATTR_WRITE_PROTECTED`]).
    pub nsattr: u8,
    /// NVM Set.
    pub nvmsetid: u16,
    /// Endurance group.
    pub endgid: u16,
    /// Status (see [`NSTAT_READY`]).
    pub nstat: u8,
}

impl IdentifyNsIndependent {
    /// Writes the 4096-byte structure and returns 4096.
    pub fn encode(&self, b: &mut [u8]) -> Result<usize> {
        le::need(b, IDENTIFY_LEN)?;
        le::zero(b, 0, IDENTIFY_LEN)?;
        le::put_bytes(b, 0, &[self.nsfeat, self.nmic, self.rescap, self.fpi])?;
        le::put_u32(b, 4, self.anagrpid)?;
        le::put_u8(b, 8, self.nsattr)?;
        le::put_u16(b, 10, self.nvmsetid)?;
        le::put_u16(b, 12, self.endgid)?;
        le::put_u8(b, 14, self.nstat)?;
        Ok(IDENTIFY_LEN)
    }

    /// The structure in the first 4096 bytes of `b`.
    pub fn decode(b: &[u8]) -> Result<IdentifyNsIndependent> {
        le::need(b, IDENTIFY_LEN)?;
        Ok(IdentifyNsIndependent {
            nsfeat: le::get_u8(b, 0)?,
            nmic: le::get_u8(b, 1)?,
            rescap: le::get_u8(b, 2)?,
            fpi: le::get_u8(b, 3)?,
            anagrpid: le::get_u32(b, 4)?,
            nsattr: le::get_u8(b, 8)?,
            nvmsetid: le::get_u16(b, 10)?,
            endgid: le::get_u16(b, 12)?,
            nstat: le::get_u8(b, 14)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::fabrics::VS_2_0;
    use proptest::prelude::*;

    const SUBNQN: &str = "nqn.2016-06.io.spdk:cnode1";

    /// An I/O controller the way the target would describe itself, and the bytes the spec's
    /// offsets say it is.
    fn sample_ctrl() -> IdentifyController {
        IdentifyController {
            sn: Text::new("PCACHE0001").unwrap(),
            mn: Text::new("pcache NVMe-oF").unwrap(),
            fr: Text::new("0.1").unwrap(),
            cmic: cmic::MULTI_PORT | cmic::MULTI_CONTROLLER,
            mdts: 5,
            cntlid: 0x0001,
            ver: VS_2_0,
            oaes: oaes::NS_ATTRIBUTE,
            ctratt: ctratt::HOST_ID_128,
            cntrltype: cntrltype::IO,
            crdt: [1, 2, 3],
            acl: 3,
            aerl: 3,
            frmw: frmw::SLOT1_RO | frmw::slots(1),
            lpa: lpa::CMD_EFFECTS | lpa::MISC,
            elpe: 127,
            kas: 10,
            sqes: entry_sizes(6, 6),
            cqes: entry_sizes(4, 4),
            maxcmd: 128,
            nn: 32,
            oncs: oncs::DSM | oncs::WRITE_ZEROES,
            vwc: vwc::PRESENT | vwc::FLUSH_BROADCAST_UNSUPPORTED,
            sgls: sgls::SUPPORTED | sgls::OFFSET | sgls::TRANSPORT,
            subnqn: Nqn::new(SUBNQN).unwrap(),
            ioccsz: 4 + 8192 / 16,
            iorcsz: 1,
            msdbd: 1,
            ..IdentifyController::default()
        }
    }

    fn golden_ctrl() -> Vec<u8> {
        let mut b = vec![0u8; IDENTIFY_LEN];
        b[4..24].copy_from_slice(b"PCACHE0001          ");
        b[24..64].copy_from_slice(b"pcache NVMe-oF                          ");
        b[64..72].copy_from_slice(b"0.1     ");
        b[76] = 0x03;
        b[77] = 5;
        b[78] = 0x01;
        b[82] = 0x02; // ver 0x00020000
        b[93] = 0x01; // oaes bit 8
        b[96] = 0x01;
        b[111] = 1;
        b[128] = 1;
        b[130] = 2;
        b[132] = 3;
        b[258] = 3;
        b[259] = 3;
        b[260] = 0x03;
        b[261] = 0x22;
        b[262] = 127;
        b[320] = 10;
        b[512] = 0x66;
        b[513] = 0x44;
        b[514] = 128;
        b[516] = 32;
        b[520] = 0x0C;
        b[525] = 0x05;
        // sgls = 1 | 1 << 20 | 1 << 21 = 0x0030_0001
        b[536] = 0x01;
        b[538] = 0x30;
        b[768..768 + SUBNQN.len()].copy_from_slice(SUBNQN.as_bytes());
        // ioccsz = 516 = 0x204
        b[1792] = 0x04;
        b[1793] = 0x02;
        b[1796] = 1;
        b[1803] = 1;
        b
    }

    #[test]
    fn identify_controller_golden() {
        let mut out = vec![0xEEu8; IDENTIFY_LEN + 8];
        assert_eq!(sample_ctrl().encode(&mut out), Ok(IDENTIFY_LEN));
        let golden = golden_ctrl();
        for (i, (a, e)) in out.iter().zip(golden.iter()).enumerate() {
            assert_eq!(a, e, "byte {i}");
        }
        assert_eq!(out[IDENTIFY_LEN], 0xEE, "wrote past 4096");
        let back = IdentifyController::decode(&golden).unwrap();
        assert_eq!(back, sample_ctrl());
        assert_eq!(back.sn, "PCACHE0001");
        assert_eq!(back.max_transfer(4096), Some(128 * 1024));
        assert_eq!(IdentifyController::default().max_transfer(4096), None);
        let huge = IdentifyController {
            mdts: 200,
            ..IdentifyController::default()
        };
        assert_eq!(huge.max_transfer(4096), None);
    }

    #[test]
    fn identify_controller_every_field_lands() {
        // Fill every field with a distinct value and check the round trip, so no two fields
        // share bytes and none is dropped.
        let c = IdentifyController {
            vid: 0x1101,
            ssvid: 0x1202,
            sn: Text::new("12345678901234567890").unwrap(),
            mn: Text::new("m").unwrap(),
            fr: Text::new("abcdefgh").unwrap(),
            rab: 4,
            ieee: [5, 6, 7],
            cmic: 8,
            mdts: 9,
            cntlid: 0x0A0A,
            ver: 0x0B0B_0B0B,
            rtd3r: 0x0C0C_0C0C,
            rtd3e: 0x0D0D_0D0D,
            oaes: 0x0E0E_0E0E,
            ctratt: 0x0F0F_0F0F,
            cntrltype: 0x10,
            fguid: [0x11; 16],
            crdt: [0x1212, 0x1313, 0x1414],
            oacs: 0x1515,
            acl: 0x16,
            aerl: 0x17,
            frmw: 0x18,
            lpa: 0x19,
            elpe: 0x1A,
            npss: 0x1B,
            wctemp: 0x1C1C,
            cctemp: 0x1D1D,
            kas: 0x1E1E,
            sqes: 0x1F,
            cqes: 0x20,
            maxcmd: 0x2121,
            nn: 0x2222_2222,
            oncs: 0x2323,
            fuses: 0x2424,
            fna: 0x25,
            vwc: 0x26,
            awun: 0x2727,
            awupf: 0x2828,
            acwu: 0x2929,
            sgls: 0x2A2A_2A2A,
            mnan: 0x2B2B_2B2B,
            subnqn: Nqn::new(SUBNQN).unwrap(),
            ioccsz: 0x2C2C_2C2C,
            iorcsz: 0x2D2D_2D2D,
            icdoff: 0x2E2E,
            fcatt: 0x2F,
            msdbd: 0x30,
            ofcs: 0x3131,
        };
        let mut b = vec![0u8; IDENTIFY_LEN];
        c.encode(&mut b).unwrap();
        assert_eq!(IdentifyController::decode(&b), Ok(c));
        assert_eq!(&b[80..84], &[0x0B; 4]);
        assert_eq!(&b[1804..1806], &[0x31, 0x31]);
        assert_eq!(&b[4..24], b"12345678901234567890");
    }

    #[test]
    fn identify_namespace_golden() {
        // 2 GiB of 4 KiB blocks = 0x80000 blocks; one format, lbads 12; nguid and eui64 set.
        let mut ns = IdentifyNamespace::simple(0x80000, 12);
        ns.nsfeat = nsfeat::OPTPERF;
        ns.dlfeat = dlfeat::READ_ZEROES | dlfeat::WRITE_ZEROES_DEALLOCATE;
        ns.noiob = 32;
        ns.nows = 7;
        ns.nguid = [0xA5; 16];
        ns.eui64 = [1, 2, 3, 4, 5, 6, 7, 8];
        ns.nmic = NMIC_SHARED;
        ns.anagrpid = 1;
        let mut g = vec![0u8; IDENTIFY_LEN];
        for off in [0, 8, 16] {
            g[off + 2] = 0x08; // 0x80000
        }
        g[24] = 0x10;
        g[30] = 0x01;
        g[33] = 0x09;
        g[46] = 32;
        g[72] = 7;
        g[92] = 1;
        g[104..120].fill(0xA5);
        g[120..128].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        g[130] = 12; // lbaf[0].lbads at byte 2 of the dword
        let mut out = vec![0xFFu8; IDENTIFY_LEN];
        assert_eq!(ns.encode(&mut out), Ok(IDENTIFY_LEN));
        assert_eq!(out, g);
        let back = IdentifyNamespace::decode(&g).unwrap();
        assert_eq!(back, ns);
        assert_eq!(back.block_size(), Some(4096));
        assert_eq!(back.format_index(), 0);
    }

    #[test]
    fn namespace_formats() {
        let mut ns = IdentifyNamespace::simple(8, 9);
        ns.nlbaf = 1;
        ns.lbaf[1] = LbaFormat {
            ms: 8,
            lbads: 12,
            rp: 2,
        };
        ns.flbas = 1;
        assert_eq!(ns.block_size(), Some(4096));
        assert_eq!(LbaFormat::from_u32(ns.lbaf[1].to_u32()), ns.lbaf[1]);
        assert_eq!(ns.lbaf[1].to_u32(), 0x020C_0008);
        ns.flbas = 2; // past nlbaf
        assert_eq!(ns.format(), None);
        // Above 16 formats, FLBAS bits 6:5 are the index's bits 5:4.
        ns.nlbaf = 40;
        ns.flbas = 0x23;
        assert_eq!(ns.format_index(), 0x13);
        ns.lbaf[0x13].lbads = 40;
        assert_eq!(ns.block_size(), None);
        ns.nvmcap = u128::MAX - 5;
        ns.mcl = 0x0102_0304;
        let mut b = vec![0u8; IDENTIFY_LEN];
        ns.encode(&mut b).unwrap();
        assert_eq!(IdentifyNamespace::decode(&b), Ok(ns));
    }

    #[test]
    fn ns_list_round_trip() {
        let mut b = vec![0xFFu8; IDENTIFY_LEN];
        assert_eq!(encode_ns_list([1, 2, 7], &mut b), Ok(IDENTIFY_LEN));
        assert_eq!(&b[..16], &[1, 0, 0, 0, 2, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0]);
        assert!(b[12..].iter().all(|&x| x == 0));
        let mut l = NsList::decode(&b).unwrap();
        assert_eq!(
            [l.next(), l.next(), l.next(), l.next(), l.next()],
            [Some(1), Some(2), Some(7), None, None]
        );
        // 2000 ids: only 1024 fit.
        encode_ns_list(1..=2000, &mut b).unwrap();
        assert_eq!(NsList::decode(&b).unwrap().count(), 1024);
        assert_eq!(NsList::decode(&b).unwrap().last(), Some(1024));
        assert!(NsList::decode(&b[..4095]).is_err());
        assert!(encode_ns_list([1], &mut b[..100]).is_err());
    }

    #[test]
    fn ns_descriptors_golden() {
        let uuid = [0x11u8; 16];
        let descs = [
            NsIdDescriptor::Eui64([1, 2, 3, 4, 5, 6, 7, 8]),
            NsIdDescriptor::Nguid([0x22; 16]),
            NsIdDescriptor::Uuid(uuid),
            NsIdDescriptor::Csi(csi::NVM),
        ];
        let mut b = vec![0xFFu8; IDENTIFY_LEN];
        encode_ns_descriptors(&descs, &mut b).unwrap();
        let mut g = vec![0u8; IDENTIFY_LEN];
        g[0] = 1;
        g[1] = 8;
        g[4..12].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        g[12] = 2;
        g[13] = 16;
        g[16..32].fill(0x22);
        g[32] = 3;
        g[33] = 16;
        g[36..52].fill(0x11);
        g[52] = 4;
        g[53] = 1;
        g[56] = 0;
        assert_eq!(b, g);
        let back: Vec<_> = NsIdDescriptors::decode(&g).unwrap().collect();
        assert_eq!(back, descs.iter().copied().map(Ok).collect::<Vec<_>>());
        // Unknown types are skipped by length; a known type with a bad length ends the list.
        let mut u = vec![0u8; IDENTIFY_LEN];
        u[0] = 0x7E;
        u[1] = 2;
        u[6] = 4;
        u[7] = 1;
        u[10] = 2;
        u[11] = 1; // EUI64 claiming 9 bytes
        u[12] = 9;
        let mut it = NsIdDescriptors::decode(&u).unwrap();
        assert_eq!(
            it.next(),
            Some(Ok(NsIdDescriptor::Unknown {
                nidt: 0x7E,
                nidl: 2
            }))
        );
        assert_eq!(it.next(), Some(Ok(NsIdDescriptor::Csi(2))));
        assert!(matches!(it.next(), Some(Err(_))));
        assert_eq!(it.next(), None);
        // A descriptor running past 4096 is an error.
        // Walk there through unknown descriptors: 15 of 256 bytes, one of 252.
        let mut e = vec![0u8; IDENTIFY_LEN];
        for i in 0..15 {
            e[i * 256] = 0x80;
            e[i * 256 + 1] = 252;
        }
        e[3840] = 0x80;
        e[3841] = 248;
        e[4092] = 2;
        e[4093] = 16;
        let r: Vec<_> = NsIdDescriptors::decode(&e).unwrap().collect();
        assert_eq!(r.len(), 17);
        assert!(r[..16].iter().all(|d| d.is_ok()));
        assert!(r[16].is_err());
    }

    #[test]
    fn nvm_controller_and_independent_ns() {
        let c = IdentifyNvmController {
            wzsl: 5,
            dmrl: 1,
            dmrsl: 0x1000,
            dmsl: 0x2_0000_0000,
            ..IdentifyNvmController::default()
        };
        let mut b = vec![0u8; IDENTIFY_LEN];
        c.encode(&mut b).unwrap();
        assert_eq!(
            &b[..16],
            &[0, 5, 0, 1, 0, 0x10, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0]
        );
        assert_eq!(IdentifyNvmController::decode(&b), Ok(c));

        let n = IdentifyNsIndependent {
            nsfeat: indep_nsfeat::VWC_NOT_PRESENT,
            nmic: NMIC_SHARED,
            anagrpid: 0x0102_0304,
            nsattr: NSATTR_WRITE_PROTECTED,
            endgid: 0x0506,
            nstat: NSTAT_READY,
            ..IdentifyNsIndependent::default()
        };
        n.encode(&mut b).unwrap();
        assert_eq!(
            &b[..16],
            &[0x20, 1, 0, 0, 4, 3, 2, 1, 1, 0, 0, 0, 6, 5, 1, 0]
        );
        assert_eq!(IdentifyNsIndependent::decode(&b), Ok(n));
    }

    #[test]
    fn identify_command_fields() {
        let mut sqe = Sqe::new(admin::IDENTIFY, 4, 1);
        sqe.cdw10 = 0x0003_0006; // CNS 06h, CNTID 3
        sqe.cdw11 = 0x0200_0001; // CSI 2, CNSSID 1
        sqe.cdw14 = 0xFF;
        let c = IdentifyCommand::from_sqe(&sqe);
        assert_eq!(
            c,
            IdentifyCommand {
                cns: cns::IOCS_CONTROLLER,
                cntid: 3,
                cnssid: 1,
                csi: csi::ZNS,
                uuid_index: 0x7F
            }
        );
        let back = c.to_sqe(4, 1, Sgl::transport(4096));
        assert_eq!(IdentifyCommand::from_sqe(&back), c);
        assert_eq!(back.cdw14, 0x7F);
    }

    #[test]
    fn short_buffers_are_errors() {
        let short = vec![0u8; IDENTIFY_LEN - 1];
        assert!(IdentifyController::decode(&short).is_err());
        assert!(IdentifyNamespace::decode(&short).is_err());
        assert!(IdentifyNvmController::decode(&short).is_err());
        assert!(IdentifyNsIndependent::decode(&short).is_err());
        assert!(NsIdDescriptors::decode(&short).is_err());
        let mut out = vec![0u8; IDENTIFY_LEN - 1];
        assert!(sample_ctrl().encode(&mut out).is_err());
        assert!(IdentifyNamespace::default().encode(&mut out).is_err());
        assert!(encode_ns_descriptors(&[], &mut out).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn decoders_take_any_bytes(b in proptest::collection::vec(any::<u8>(), 4000..4200),
                                   text in any::<bool>()) {
            let mut b = b;
            if text && b.len() >= IDENTIFY_LEN {
                // Make the text fields ASCII so the controller decoder gets past them.
                for r in [4..72, 768..1024] {
                    for x in &mut b[r] {
                        *x &= 0x7F;
                    }
                }
            }
            if let Ok(c) = IdentifyController::decode(&b) {
                let mut out = vec![0u8; IDENTIFY_LEN];
                if c.encode(&mut out).is_ok() {
                    prop_assert_eq!(IdentifyController::decode(&out), Ok(c));
                }
            }
            if let Ok(n) = IdentifyNamespace::decode(&b) {
                let mut out = vec![0u8; IDENTIFY_LEN];
                n.encode(&mut out).unwrap();
                let again = IdentifyNamespace::decode(&out).unwrap();
                prop_assert_eq!(again, n);
                let _ = n.block_size();
            }
            if let Ok(l) = NsList::decode(&b) {
                prop_assert!(l.count() <= NS_LIST_LEN);
            }
            if let Ok(d) = NsIdDescriptors::decode(&b) {
                prop_assert!(d.count() <= IDENTIFY_LEN / 4);
            }
            let _ = IdentifyNvmController::decode(&b);
            let _ = IdentifyNsIndependent::decode(&b);
        }
    }
}
