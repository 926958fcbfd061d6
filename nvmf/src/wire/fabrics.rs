//! NVMe over Fabrics commands (NVMe-oF 1.1): Connect and its 1024-byte data, Property Get and
//! Property Set, and the controller registers a host reads and writes through them (NVMe Base
//! 2.0 "Controller Registers": CAP, VS, CC, CSTS, NSSR, CRTO).
//!
//! ```text
//! Connect SQE   40 recfmt u16  42 qid u16  44 sqsize u16 (0's based)  46 cattr u8  48 kato u32 (ms)
//! Connect data  0 hostid [16]  16 cntlid u16  256 subnqn [256]  512 hostnqn [256]  (1024 bytes)
//! Connect CQE dw0   success: cntlid (15:0), authreq (31:16)
//!                   Invalid Parameters: ipo (15:0, byte offset), iattr (23:16: 0 SQE, 1 data)
//! Property Get  40 attrib (2:0: 0 = 4 bytes, 1 = 8 bytes)  44 offset u32;  value in CQE dw1:dw0
//! Property Set  40 attrib  44 offset u32  48 value u64
//! ```
//!
//! [`Text`] is the fixed-capacity string the NQN, serial number and transport address fields
//! decode into, here and in `identify` and `log`.

use core::fmt;

use super::command::{FABRICS, Sgl, Sqe, fctype};
use super::le::{self, Pad, Result, WireError};

/// Text from a fixed-size field: at most `N` bytes of UTF-8 without a NUL, kept inline (no
/// allocation), so a decoded structure owns its strings.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Text<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> Text<N> {
    /// The empty text.
    pub const fn empty() -> Self {
        Text {
            buf: [0; N],
            len: 0,
        }
    }

    /// `s` as text: `TooLong` beyond `N` bytes, `NotText` when it holds a NUL.
    pub fn new(s: &str) -> Result<Self> {
        if s.len() > N {
            return Err(WireError::TooLong {
                field: "text",
                max: N,
            });
        }
        if s.as_bytes().contains(&0) {
            return Err(WireError::NotText { field: "text" });
        }
        let mut t = Self::empty();
        if let Some(d) = t.buf.get_mut(..s.len()) {
            d.copy_from_slice(s.as_bytes());
        }
        t.len = s.len();
        Ok(t)
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        self.buf
            .get(..self.len)
            .and_then(|b| core::str::from_utf8(b).ok())
            .unwrap_or("")
    }

    /// Length in bytes.
    pub const fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The text in the `N`-byte field at `off` (up to the first NUL, trailing spaces dropped).
    pub fn decode(b: &[u8], off: usize, field: &'static str) -> Result<Self> {
        let s = le::get_str(b, off, N, field)?;
        let mut t = Self::empty();
        if let Some(d) = t.buf.get_mut(..s.len()) {
            d.copy_from_slice(s.as_bytes());
        }
        t.len = s.len();
        Ok(t)
    }

    /// Writes the text into the `N`-byte field at `off`, padded per `pad` (a NUL-padded field
    /// needs room for one NUL, so holds at most `N - 1` bytes).
    pub fn encode(&self, b: &mut [u8], off: usize, pad: Pad, field: &'static str) -> Result<()> {
        le::put_str(b, off, N, self.as_str(), pad, field)
    }
}

impl<const N: usize> Default for Text<N> {
    fn default() -> Self {
        Self::empty()
    }
}

impl<const N: usize> fmt::Debug for Text<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl<const N: usize> fmt::Display for Text<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<const N: usize> PartialEq<str> for Text<N> {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl<const N: usize> PartialEq<&str> for Text<N> {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// Size of an NQN field (NUL padded, so an NQN in it is at most 255 bytes; the spec limits NQNs
/// to 223).
pub const NQN_FIELD_LEN: usize = 256;
/// The longest NQN the spec allows.
pub const NQN_MAX_LEN: usize = 223;
/// An NQN as it sits in a 256-byte field.
pub type Nqn = Text<NQN_FIELD_LEN>;
/// The well-known discovery subsystem NQN.
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";

/// Size of the Connect command's data.
pub const CONNECT_DATA_LEN: usize = 1024;
/// Connect's cntlid asking for any controller (dynamic controller model).
pub const CNTLID_DYNAMIC: u16 = 0xFFFF;

/// Byte offsets of the Connect SQE's fields (for [`ConnectInvalid::command`]).
pub mod connect_sqe {
    /// RECFMT.
    pub const RECFMT: u16 = 40;
    /// QID.
    pub const QID: u16 = 42;
    /// SQSIZE.
    pub const SQSIZE: u16 = 44;
    /// CATTR.
    pub const CATTR: u16 = 46;
    /// KATO.
    pub const KATO: u16 = 48;
}

/// Byte offsets of the Connect data's fields (for [`ConnectInvalid::data`]).
pub mod connect_data {
    /// HOSTID.
    pub const HOSTID: u16 = 0;
    /// CNTLID.
    pub const CNTLID: u16 = 16;
    /// SUBNQN.
    pub const SUBNQN: u16 = 256;
    /// HOSTNQN.
    pub const HOSTNQN: u16 = 512;
}

/// Connect CATTR bit: the host disabled SQ flow control (SQHD need not be reported).
pub const CATTR_DISABLE_SQ_FLOW_CONTROL: u8 = 1 << 2;

/// The Connect command's own fields (its data is [`ConnectData`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectCommand {
    /// Record format (0 is the only one defined).
    pub recfmt: u16,
    /// Queue: 0 admin, else an I/O queue.
    pub qid: u16,
    /// Submission queue size, 0's based.
    pub sqsize: u16,
    /// Connect attributes (priority class 1:0, disable SQ flow control bit 2).
    pub cattr: u8,
    /// Keep alive timeout in milliseconds (admin queue only; 0 = none).
    pub kato: u32,
}

impl ConnectCommand {
    /// The Connect fields of `sqe`; `Invalid` when it is not a Fabrics Connect.
    pub fn from_sqe(sqe: &Sqe) -> Result<ConnectCommand> {
        if !sqe.is_fabrics() || sqe.fctype() != fctype::CONNECT {
            return Err(WireError::Invalid {
                field: "fctype",
                value: sqe.fctype() as u64,
            });
        }
        Ok(ConnectCommand {
            recfmt: sqe.cdw10 as u16,
            qid: (sqe.cdw10 >> 16) as u16,
            sqsize: sqe.cdw11 as u16,
            cattr: (sqe.cdw11 >> 16) as u8,
            kato: sqe.cdw12,
        })
    }

    /// A Connect SQE with these fields; `dptr` says where its 1024 bytes of data are (on
    /// NVMe/TCP, in the capsule: `Sgl::in_capsule(0, 1024)`).
    pub fn to_sqe(&self, cid: u16, dptr: Sgl) -> Sqe {
        let mut sqe = Sqe::fabrics(fctype::CONNECT, cid);
        sqe.dptr = dptr;
        sqe.cdw10 = self.recfmt as u32 | (self.qid as u32) << 16;
        sqe.cdw11 = self.sqsize as u32 | (self.cattr as u32) << 16;
        sqe.cdw12 = self.kato;
        sqe
    }

    /// The number of entries the host's submission queue has (sqsize + 1).
    pub const fn queue_entries(&self) -> u32 {
        self.sqsize as u32 + 1
    }

    /// True when the host disabled SQ flow control.
    pub const fn sq_flow_control_disabled(&self) -> bool {
        self.cattr & CATTR_DISABLE_SQ_FLOW_CONTROL != 0
    }
}

/// The Connect command's 1024-byte data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectData {
    /// Host identifier (a UUID's 16 bytes).
    pub hostid: [u8; 16],
    /// Controller: [`CNTLID_DYNAMIC`] on the admin queue, the admin queue's cntlid on I/O queues.
    pub cntlid: u16,
    /// The subsystem to connect to.
    pub subnqn: Nqn,
    /// The host's NQN.
    pub hostnqn: Nqn,
}

impl ConnectData {
    /// The data in the first 1024 bytes of `b`.
    pub fn decode(b: &[u8]) -> Result<ConnectData> {
        le::need(b, CONNECT_DATA_LEN)?;
        Ok(ConnectData {
            hostid: le::get_array(b, 0)?,
            cntlid: le::get_u16(b, 16)?,
            subnqn: Nqn::decode(b, 256, "subnqn")?,
            hostnqn: Nqn::decode(b, 512, "hostnqn")?,
        })
    }

    /// Writes the 1024 bytes (reserved zero, NQNs NUL padded) and returns 1024.
    pub fn encode(&self, b: &mut [u8]) -> Result<usize> {
        le::need(b, CONNECT_DATA_LEN)?;
        le::zero(b, 0, CONNECT_DATA_LEN)?;
        le::put_bytes(b, 0, &self.hostid)?;
        le::put_u16(b, 16, self.cntlid)?;
        self.subnqn.encode(b, 256, Pad::Nul, "subnqn")?;
        self.hostnqn.encode(b, 512, Pad::Nul, "hostnqn")?;
        Ok(CONNECT_DATA_LEN)
    }
}

/// Connect completion dw0 on success: the controller's id (no authentication requested).
pub const fn connect_success_dw0(cntlid: u16) -> u32 {
    cntlid as u32
}

/// The cntlid in a successful Connect's dw0.
pub const fn connect_cntlid(dw0: u32) -> u16 {
    dw0 as u16
}

/// The AUTHREQ bits of a successful Connect's dw0 (bit 1 ATR, bit 2 ASCR: the host must
/// authenticate before using the queue).
pub const fn connect_authreq(dw0: u32) -> u16 {
    (dw0 >> 16) as u16
}

/// Where the parameter a Connect Invalid Parameters status complains about is: dw0 carries its
/// byte offset (IPO, bits 15:0) and whether that is in the SQE or the data (IATTR, bits 23:16).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectInvalid {
    /// 0: the offset is into the Connect SQE; 1: into the Connect data.
    pub iattr: u8,
    /// Byte offset of the invalid parameter.
    pub ipo: u16,
}

impl ConnectInvalid {
    /// A bad field of the Connect SQE at byte `offset` (see [`connect_sqe`]).
    pub const fn command(offset: u16) -> ConnectInvalid {
        ConnectInvalid {
            iattr: 0,
            ipo: offset,
        }
    }

    /// A bad field of the Connect data at byte `offset` (see [`connect_data`]).
    pub const fn data(offset: u16) -> ConnectInvalid {
        ConnectInvalid {
            iattr: 1,
            ipo: offset,
        }
    }

    /// The CQE dw0 carrying it.
    pub const fn to_dw0(&self) -> u32 {
        self.ipo as u32 | (self.iattr as u32) << 16
    }

    /// It, from a CQE dw0.
    pub const fn from_dw0(dw0: u32) -> ConnectInvalid {
        ConnectInvalid {
            iattr: (dw0 >> 16) as u8,
            ipo: dw0 as u16,
        }
    }
}

/// Controller register (property) offsets.
pub mod reg {
    /// Controller Capabilities (8 bytes).
    pub const CAP: u32 = 0x00;
    /// Version (4 bytes).
    pub const VS: u32 = 0x08;
    /// Interrupt Mask Set (not used over fabrics).
    pub const INTMS: u32 = 0x0C;
    /// Interrupt Mask Clear (not used over fabrics).
    pub const INTMC: u32 = 0x10;
    /// Controller Configuration (4 bytes).
    pub const CC: u32 = 0x14;
    /// Controller Status (4 bytes).
    pub const CSTS: u32 = 0x1C;
    /// NVM Subsystem Reset (4 bytes).
    pub const NSSR: u32 = 0x20;
    /// Controller Ready Timeouts (4 bytes; read when CAP.CRMS is set).
    pub const CRTO: u32 = 0x68;

    /// The size in bytes of the property at `offset` that fabrics defines, or None.
    pub const fn size(offset: u32) -> Option<u8> {
        match offset {
            CAP => Some(8),
            VS | CC | CSTS | NSSR | CRTO => Some(4),
            _ => None,
        }
    }
}

/// Property size encoding of ATTRIB bits 2:0.
const ATTRIB_SIZE_4: u8 = 0;
const ATTRIB_SIZE_8: u8 = 1;

fn attrib_size(cdw10: u32) -> Result<u8> {
    match (cdw10 & 7) as u8 {
        ATTRIB_SIZE_4 => Ok(4),
        ATTRIB_SIZE_8 => Ok(8),
        v => Err(WireError::Invalid {
            field: "property attrib",
            value: v as u64,
        }),
    }
}

fn attrib_code(size: u8) -> u32 {
    if size == 8 {
        ATTRIB_SIZE_8 as u32
    } else {
        ATTRIB_SIZE_4 as u32
    }
}

/// A Property Get: read `size` (4 or 8) bytes of the register at `offset`. The value comes back
/// in the CQE's dw0 (and dw1 for 8 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PropertyGet {
    /// 4 or 8.
    pub size: u8,
    /// Register offset (see [`reg`]).
    pub offset: u32,
}

impl PropertyGet {
    /// The fields of a Property Get SQE; `Invalid` when it is not one or ATTRIB is reserved.
    pub fn from_sqe(sqe: &Sqe) -> Result<PropertyGet> {
        expect_fctype(sqe, fctype::PROPERTY_GET)?;
        Ok(PropertyGet {
            size: attrib_size(sqe.cdw10)?,
            offset: sqe.cdw11,
        })
    }

    /// The SQE (size 8 encodes as 8 bytes, anything else as 4).
    pub fn to_sqe(&self, cid: u16) -> Sqe {
        let mut sqe = Sqe::fabrics(fctype::PROPERTY_GET, cid);
        sqe.cdw10 = attrib_code(self.size);
        sqe.cdw11 = self.offset;
        sqe
    }
}

/// A Property Set: write the low `size` (4 or 8) bytes of `value` to the register at `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PropertySet {
    /// 4 or 8.
    pub size: u8,
    /// Register offset (see [`reg`]).
    pub offset: u32,
    /// The value (bits above `size` bytes ignored).
    pub value: u64,
}

impl PropertySet {
    /// The fields of a Property Set SQE; `Invalid` when it is not one or ATTRIB is reserved.
    pub fn from_sqe(sqe: &Sqe) -> Result<PropertySet> {
        expect_fctype(sqe, fctype::PROPERTY_SET)?;
        let size = attrib_size(sqe.cdw10)?;
        let raw = sqe.cdw12 as u64 | (sqe.cdw13 as u64) << 32;
        Ok(PropertySet {
            size,
            offset: sqe.cdw11,
            value: if size == 4 { raw & 0xFFFF_FFFF } else { raw },
        })
    }

    /// The SQE.
    pub fn to_sqe(&self, cid: u16) -> Sqe {
        let mut sqe = Sqe::fabrics(fctype::PROPERTY_SET, cid);
        sqe.cdw10 = attrib_code(self.size);
        sqe.cdw11 = self.offset;
        sqe.cdw12 = self.value as u32;
        sqe.cdw13 = if self.size == 8 {
            (self.value >> 32) as u32
        } else {
            0
        };
        sqe
    }
}

fn expect_fctype(sqe: &Sqe, want: u8) -> Result<()> {
    if sqe.opcode == FABRICS && sqe.fctype() == want {
        Ok(())
    } else {
        Err(WireError::Invalid {
            field: "fctype",
            value: sqe.fctype() as u64,
        })
    }
}

const fn bits64(v: u64, shift: u32, width: u32) -> u8 {
    ((v >> shift) & ((1 << width) - 1)) as u8
}

const fn bits32(v: u32, shift: u32, width: u32) -> u8 {
    ((v >> shift) & ((1 << width) - 1)) as u8
}

/// CAP.CSS bits: the command sets a controller supports.
pub mod cap_css {
    /// NVM command set.
    pub const NVM: u8 = 1 << 0;
    /// One or more I/O command sets (Identify I/O Command Set structures).
    pub const IOCS: u8 = 1 << 6;
    /// No I/O command set (admin only; a discovery controller).
    pub const NO_IO: u8 = 1 << 7;
}

/// Controller Capabilities.
///
/// ```text
/// 15:0 MQES (0's based)  16 CQR  18:17 AMS  31:24 TO (500 ms)  35:32 DSTRD  36 NSSRS
/// 44:37 CSS  45 BPS  47:46 CPS  51:48 MPSMIN  55:52 MPSMAX  56 PMRS  57 CMBS  58 NSSS
/// 59 CRWMS  60 CRIMS
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cap {
    /// Maximum queue entries supported, 0's based.
    pub mqes: u16,
    /// Contiguous queues required.
    pub cqr: bool,
    /// Arbitration mechanisms supported beyond round robin (2 bits).
    pub ams: u8,
    /// Worst-case time to become ready, in 500 ms units.
    pub to: u8,
    /// Doorbell stride (4 bits; 0 over fabrics).
    pub dstrd: u8,
    /// NVM subsystem reset supported.
    pub nssrs: bool,
    /// Command sets supported (see [`cap_css`]).
    pub css: u8,
    /// Boot partition support.
    pub bps: bool,
    /// Controller power scope (2 bits).
    pub cps: u8,
    /// Minimum memory page size, 2^(12 + mpsmin) (4 bits).
    pub mpsmin: u8,
    /// Maximum memory page size, 2^(12 + mpsmax) (4 bits).
    pub mpsmax: u8,
    /// Persistent memory region supported.
    pub pmrs: bool,
    /// Controller memory buffer supported.
    pub cmbs: bool,
    /// NVM subsystem shutdown supported.
    pub nsss: bool,
    /// Controller ready with media support (the host then reads CRTO).
    pub crwms: bool,
    /// Controller ready independent of media support.
    pub crims: bool,
}

impl Cap {
    /// The register value.
    pub const fn to_u64(&self) -> u64 {
        self.mqes as u64
            | (self.cqr as u64) << 16
            | ((self.ams & 3) as u64) << 17
            | (self.to as u64) << 24
            | ((self.dstrd & 0xF) as u64) << 32
            | (self.nssrs as u64) << 36
            | (self.css as u64) << 37
            | (self.bps as u64) << 45
            | ((self.cps & 3) as u64) << 46
            | ((self.mpsmin & 0xF) as u64) << 48
            | ((self.mpsmax & 0xF) as u64) << 52
            | (self.pmrs as u64) << 56
            | (self.cmbs as u64) << 57
            | (self.nsss as u64) << 58
            | (self.crwms as u64) << 59
            | (self.crims as u64) << 60
    }

    /// The fields of a register value (reserved bits ignored).
    pub const fn from_u64(v: u64) -> Cap {
        Cap {
            mqes: v as u16,
            cqr: v & (1 << 16) != 0,
            ams: bits64(v, 17, 2),
            to: bits64(v, 24, 8),
            dstrd: bits64(v, 32, 4),
            nssrs: v & (1 << 36) != 0,
            css: bits64(v, 37, 8),
            bps: v & (1 << 45) != 0,
            cps: bits64(v, 46, 2),
            mpsmin: bits64(v, 48, 4),
            mpsmax: bits64(v, 52, 4),
            pmrs: v & (1 << 56) != 0,
            cmbs: v & (1 << 57) != 0,
            nsss: v & (1 << 58) != 0,
            crwms: v & (1 << 59) != 0,
            crims: v & (1 << 60) != 0,
        }
    }
}

/// The Version register value for `major.minor.tertiary`.
pub const fn vs(major: u16, minor: u8, tertiary: u8) -> u32 {
    (major as u32) << 16 | (minor as u32) << 8 | tertiary as u32
}

/// NVMe 1.3.
pub const VS_1_3: u32 = vs(1, 3, 0);
/// NVMe 1.4.
pub const VS_1_4: u32 = vs(1, 4, 0);
/// NVMe 2.0.
pub const VS_2_0: u32 = vs(2, 0, 0);

/// CC.SHN and CSTS.SHST values.
pub mod shutdown {
    /// CC.SHN: no notification.
    pub const SHN_NONE: u8 = 0;
    /// CC.SHN: normal shutdown.
    pub const SHN_NORMAL: u8 = 1;
    /// CC.SHN: abrupt shutdown.
    pub const SHN_ABRUPT: u8 = 2;
    /// CSTS.SHST: normal operation.
    pub const SHST_NORMAL: u8 = 0;
    /// CSTS.SHST: shutdown processing occurring.
    pub const SHST_OCCURRING: u8 = 1;
    /// CSTS.SHST: shutdown processing complete.
    pub const SHST_COMPLETE: u8 = 2;
}

/// CC.CSS values.
pub mod cc_css {
    /// NVM command set.
    pub const NVM: u8 = 0;
    /// All supported I/O command sets.
    pub const IOCS: u8 = 6;
    /// Admin command set only.
    pub const ADMIN_ONLY: u8 = 7;
}

/// Controller Configuration.
///
/// ```text
/// 0 EN  6:4 CSS  10:7 MPS  13:11 AMS  15:14 SHN  19:16 IOSQES  23:20 IOCQES  24 CRIME
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cc {
    /// Enable.
    pub en: bool,
    /// I/O command set selected (3 bits, see [`cc_css`]).
    pub css: u8,
    /// Memory page size, 2^(12 + mps) (4 bits).
    pub mps: u8,
    /// Arbitration mechanism selected (3 bits).
    pub ams: u8,
    /// Shutdown notification (2 bits, see [`shutdown`]).
    pub shn: u8,
    /// I/O submission queue entry size, 2^n (4 bits; 6 = 64 bytes).
    pub iosqes: u8,
    /// I/O completion queue entry size, 2^n (4 bits; 4 = 16 bytes).
    pub iocqes: u8,
    /// Controller ready independent of media enable.
    pub crime: bool,
}

impl Cc {
    /// The register value.
    pub const fn to_u32(&self) -> u32 {
        self.en as u32
            | ((self.css & 7) as u32) << 4
            | ((self.mps & 0xF) as u32) << 7
            | ((self.ams & 7) as u32) << 11
            | ((self.shn & 3) as u32) << 14
            | ((self.iosqes & 0xF) as u32) << 16
            | ((self.iocqes & 0xF) as u32) << 20
            | (self.crime as u32) << 24
    }

    /// The fields of a register value (reserved bits ignored).
    pub const fn from_u32(v: u32) -> Cc {
        Cc {
            en: v & 1 != 0,
            css: bits32(v, 4, 3),
            mps: bits32(v, 7, 4),
            ams: bits32(v, 11, 3),
            shn: bits32(v, 14, 2),
            iosqes: bits32(v, 16, 4),
            iocqes: bits32(v, 20, 4),
            crime: v & (1 << 24) != 0,
        }
    }
}

/// Controller Status.
///
/// ```text
/// 0 RDY  1 CFS  3:2 SHST  4 NSSRO  5 PP  6 ST
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Csts {
    /// Ready.
    pub rdy: bool,
    /// Controller fatal status.
    pub cfs: bool,
    /// Shutdown status (2 bits, see [`shutdown`]).
    pub shst: u8,
    /// NVM subsystem reset occurred.
    pub nssro: bool,
    /// Processing paused.
    pub pp: bool,
    /// Shutdown type (1: the subsystem is shutting down).
    pub st: bool,
}

impl Csts {
    /// The register value.
    pub const fn to_u32(&self) -> u32 {
        self.rdy as u32
            | (self.cfs as u32) << 1
            | ((self.shst & 3) as u32) << 2
            | (self.nssro as u32) << 4
            | (self.pp as u32) << 5
            | (self.st as u32) << 6
    }

    /// The fields of a register value (reserved bits ignored).
    pub const fn from_u32(v: u32) -> Csts {
        Csts {
            rdy: v & 1 != 0,
            cfs: v & 2 != 0,
            shst: bits32(v, 2, 2),
            nssro: v & (1 << 4) != 0,
            pp: v & (1 << 5) != 0,
            st: v & (1 << 6) != 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::command::{SQE_LEN, Sgl};
    use proptest::prelude::*;

    const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:6c1f3d4e-0a6b-4b5e-9d1c-2f3e4a5b6c7d";
    const SUBNQN: &str = "nqn.2016-06.io.spdk:cnode1";

    /// The admin-queue Connect the Linux host sends: cid 0, qid 0, sqsize 31, kato 5000 ms,
    /// 1024 bytes in the capsule (SGL 01h at offset 0).
    fn golden_connect_sqe() -> [u8; SQE_LEN] {
        let mut b = [0u8; SQE_LEN];
        b[0] = 0x7F;
        b[1] = 0x40; // psdt SGL
        b[4] = 0x01; // fctype Connect
        b[24 + 9] = 0x04; // length 0x400
        b[24 + 15] = 0x01; // Data Block, Offset
        b[44] = 31; // sqsize
        b[48] = 0x88; // kato 5000 = 0x1388
        b[49] = 0x13;
        b
    }

    fn golden_connect_data() -> [u8; CONNECT_DATA_LEN] {
        let mut b = [0u8; CONNECT_DATA_LEN];
        for (i, x) in b[..16].iter_mut().enumerate() {
            *x = 0xA0 + i as u8;
        }
        b[16] = 0xFF;
        b[17] = 0xFF;
        b[256..256 + SUBNQN.len()].copy_from_slice(SUBNQN.as_bytes());
        b[512..512 + HOSTNQN.len()].copy_from_slice(HOSTNQN.as_bytes());
        b
    }

    #[test]
    fn connect_golden() {
        let sqe = Sqe::decode(&golden_connect_sqe()).unwrap();
        let c = ConnectCommand::from_sqe(&sqe).unwrap();
        assert_eq!(
            c,
            ConnectCommand {
                recfmt: 0,
                qid: 0,
                sqsize: 31,
                cattr: 0,
                kato: 5000
            }
        );
        assert_eq!(c.queue_entries(), 32);
        assert!(!c.sq_flow_control_disabled());
        assert!(sqe.dptr.is_in_capsule());
        assert_eq!(sqe.dptr.length, 1024);
        let built = c.to_sqe(0, Sgl::in_capsule(0, 1024));
        assert_eq!(built.to_bytes(), golden_connect_sqe());

        let d = ConnectData::decode(&golden_connect_data()).unwrap();
        assert_eq!(d.cntlid, CNTLID_DYNAMIC);
        assert_eq!(d.hostid[0], 0xA0);
        assert_eq!(d.hostid[15], 0xAF);
        assert_eq!(d.subnqn, SUBNQN);
        assert_eq!(d.hostnqn.as_str(), HOSTNQN);
        let mut out = [0x55u8; CONNECT_DATA_LEN];
        assert_eq!(d.encode(&mut out), Ok(CONNECT_DATA_LEN));
        assert_eq!(out, golden_connect_data());
    }

    #[test]
    fn io_queue_connect_fields() {
        let c = ConnectCommand {
            recfmt: 0,
            qid: 3,
            sqsize: 127,
            cattr: CATTR_DISABLE_SQ_FLOW_CONTROL,
            kato: 0,
        };
        let b = c.to_sqe(9, Sgl::in_capsule(0, 1024)).to_bytes();
        assert_eq!(&b[40..48], &[0, 0, 3, 0, 127, 0, 0x04, 0]);
        let back = ConnectCommand::from_sqe(&Sqe::decode(&b).unwrap()).unwrap();
        assert_eq!(back, c);
        assert!(back.sq_flow_control_disabled());
        assert!(ConnectCommand::from_sqe(&Sqe::fabrics(fctype::PROPERTY_GET, 0)).is_err());
        assert!(ConnectCommand::from_sqe(&Sqe::new(0x01, 0, 1)).is_err());
    }

    #[test]
    fn connect_response_dw0() {
        assert_eq!(connect_success_dw0(0x0102), 0x0102);
        assert_eq!(connect_cntlid(0x0006_0102), 0x0102);
        assert_eq!(connect_authreq(0x0006_0102), 0x0006);
        // Invalid hostnqn: IATTR 1 (data) in bits 23:16, IPO 512 in bits 15:0.
        let inv = ConnectInvalid::data(connect_data::HOSTNQN);
        assert_eq!(inv.to_dw0(), 0x0001_0200);
        assert_eq!(ConnectInvalid::from_dw0(0x0001_0200), inv);
        // Invalid qid: IATTR 0 (SQE), IPO 42.
        assert_eq!(
            ConnectInvalid::command(connect_sqe::QID).to_dw0(),
            0x0000_002A
        );
    }

    #[test]
    fn connect_data_bad_input() {
        assert!(ConnectData::decode(&[0u8; 1023]).is_err());
        let mut b = golden_connect_data();
        b[256] = 0xFF; // not UTF-8
        assert_eq!(
            ConnectData::decode(&b),
            Err(WireError::NotText { field: "subnqn" })
        );
        // A 256-byte NQN without a NUL decodes but cannot be encoded NUL-padded.
        let mut b = golden_connect_data();
        b[512..768].fill(b'a');
        let d = ConnectData::decode(&b).unwrap();
        assert_eq!(d.hostnqn.len(), 256);
        assert!(d.encode(&mut [0u8; 1024]).is_err());
        let d = ConnectData::decode(&golden_connect_data()).unwrap();
        assert!(d.encode(&mut [0u8; 1000]).is_err());
    }

    #[test]
    fn property_get_cap_golden() {
        let mut b = [0u8; SQE_LEN];
        b[0] = 0x7F;
        b[2] = 0x02; // cid 2
        b[4] = 0x04; // fctype Property Get
        b[40] = 0x01; // attrib: 8 bytes
        // offset 0 (CAP) at 44
        let sqe = Sqe::decode(&b).unwrap();
        let g = PropertyGet::from_sqe(&sqe).unwrap();
        assert_eq!(
            g,
            PropertyGet {
                size: 8,
                offset: reg::CAP
            }
        );
        let mut built = g.to_sqe(2);
        built.psdt = 0;
        assert_eq!(built.to_bytes(), b);

        let mut vs = b;
        vs[40] = 0;
        vs[44] = 0x08;
        let g = PropertyGet::from_sqe(&Sqe::decode(&vs).unwrap()).unwrap();
        assert_eq!((g.size, g.offset), (4, reg::VS));
        vs[40] = 2; // reserved size
        assert!(PropertyGet::from_sqe(&Sqe::decode(&vs).unwrap()).is_err());
        assert_eq!(reg::size(reg::CAP), Some(8));
        assert_eq!(reg::size(reg::CSTS), Some(4));
        assert_eq!(reg::size(0x24), None);
    }

    #[test]
    fn property_set_cc_golden() {
        // Set CC = EN | IOSQES 6 | IOCQES 4 = 0x0046_0001.
        let mut b = [0u8; SQE_LEN];
        b[0] = 0x7F;
        b[1] = 0x40;
        b[2] = 0x03;
        b[4] = 0x00; // Property Set
        b[44] = 0x14; // CC
        b[48] = 0x01;
        b[50] = 0x46;
        let s = PropertySet::from_sqe(&Sqe::decode(&b).unwrap()).unwrap();
        assert_eq!(
            s,
            PropertySet {
                size: 4,
                offset: reg::CC,
                value: 0x0046_0001
            }
        );
        assert_eq!(s.to_sqe(3).to_bytes(), b);
        let cc = Cc::from_u32(s.value as u32);
        assert_eq!(
            cc,
            Cc {
                en: true,
                iosqes: 6,
                iocqes: 4,
                ..Cc::default()
            }
        );
        assert_eq!(cc.to_u32(), 0x0046_0001);
        // A 4-byte set ignores cdw13.
        let mut hi = b;
        hi[52] = 0xFF;
        let s = PropertySet::from_sqe(&Sqe::decode(&hi).unwrap()).unwrap();
        assert_eq!(s.value, 0x0046_0001);
        let s8 = PropertySet {
            size: 8,
            offset: 0,
            value: 0x1122_3344_5566_7788,
        };
        assert_eq!(PropertySet::from_sqe(&s8.to_sqe(1)), Ok(s8));
        assert!(PropertySet::from_sqe(&Sqe::fabrics(fctype::CONNECT, 0)).is_err());
    }

    #[test]
    fn cap_golden() {
        // MQES 127, CQR, TO 30 (15 s), CSS NVM: 0x7F | 1 << 16 | 30 << 24 | 1 << 37.
        let v = 0x0000_0020_1E01_007Fu64;
        let cap = Cap::from_u64(v);
        assert_eq!(
            cap,
            Cap {
                mqes: 127,
                cqr: true,
                to: 30,
                css: cap_css::NVM,
                ..Cap::default()
            }
        );
        assert_eq!(cap.to_u64(), v);
        // MPSMIN 0, MPSMAX 4 (64 KiB), CRWMS, CSS NVM | IOCS.
        let c = Cap {
            mpsmax: 4,
            crwms: true,
            css: cap_css::NVM | cap_css::IOCS,
            ..Cap::default()
        };
        assert_eq!(c.to_u64(), 4 << 52 | 1 << 59 | 0x41 << 37);
        assert_eq!(VS_2_0, 0x0002_0000);
        assert_eq!(VS_1_3, 0x0001_0300);
        assert_eq!(vs(1, 2, 1), 0x0001_0201);
    }

    #[test]
    fn cc_csts_bits() {
        let cc = Cc::from_u32(0x0046_4001);
        assert_eq!(cc.shn, shutdown::SHN_NORMAL);
        assert!(cc.en);
        let cc = Cc {
            css: cc_css::ADMIN_ONLY,
            mps: 1,
            ams: 1,
            crime: true,
            ..Cc::default()
        };
        assert_eq!(cc.to_u32(), 7 << 4 | 1 << 7 | 1 << 11 | 1 << 24);
        let csts = Csts {
            rdy: true,
            shst: shutdown::SHST_COMPLETE,
            ..Csts::default()
        };
        assert_eq!(csts.to_u32(), 0x9);
        assert_eq!(Csts::from_u32(0x9), csts);
        assert_eq!(Csts::from_u32(0x7E).to_u32(), 0x7E);
    }

    #[test]
    fn text_limits() {
        assert_eq!(Text::<4>::new("abcd").unwrap().as_str(), "abcd");
        assert!(Text::<4>::new("abcde").is_err());
        assert!(Text::<4>::new("a\0").is_err());
        assert!(Text::<4>::default().is_empty());
        assert_eq!(format!("{:?}", Text::<8>::new("x y").unwrap()), "\"x y\"");
        assert_eq!(Text::<8>::new("x y").unwrap().to_string(), "x y");
        assert!(Nqn::new(DISCOVERY_NQN).unwrap() == DISCOVERY_NQN);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn connect_data_any_bytes(b in proptest::collection::vec(any::<u8>(), 1000..1100)) {
            if let Ok(d) = ConnectData::decode(&b) {
                let mut out = [0u8; CONNECT_DATA_LEN];
                if d.encode(&mut out).is_ok() {
                    prop_assert_eq!(ConnectData::decode(&out), Ok(d));
                }
            }
        }

        #[test]
        fn connect_data_round_trip(hostid in any::<[u8; 16]>(), cntlid in any::<u16>(),
                                   sub in "[ -~]{0,255}", host in "[!-~]{1,255}") {
            // Trailing spaces are padding to a reader, so a round trip keeps the text before them.
            let d = ConnectData {
                hostid,
                cntlid,
                subnqn: Nqn::new(&sub).unwrap(),
                hostnqn: Nqn::new(&host).unwrap(),
            };
            let mut out = [0u8; CONNECT_DATA_LEN];
            prop_assert_eq!(d.encode(&mut out), Ok(CONNECT_DATA_LEN));
            let back = ConnectData::decode(&out).unwrap();
            prop_assert_eq!(back.subnqn.as_str(), sub.trim_end_matches(' '));
            prop_assert_eq!(back.hostnqn, d.hostnqn);
            prop_assert_eq!((back.hostid, back.cntlid), (hostid, cntlid));
        }

        #[test]
        fn fabrics_sqe_any_bytes(b in any::<[u8; 64]>()) {
            let sqe = Sqe::decode(&b).unwrap();
            let _ = ConnectCommand::from_sqe(&sqe);
            if let Ok(g) = PropertyGet::from_sqe(&sqe) {
                prop_assert_eq!(PropertyGet::from_sqe(&g.to_sqe(sqe.cid)), Ok(g));
            }
            if let Ok(s) = PropertySet::from_sqe(&sqe) {
                prop_assert_eq!(PropertySet::from_sqe(&s.to_sqe(sqe.cid)), Ok(s));
            }
        }

        #[test]
        fn registers_round_trip(v in any::<u64>(), w in any::<u32>()) {
            let cap = Cap::from_u64(v);
            prop_assert_eq!(Cap::from_u64(cap.to_u64()), cap);
            let cc = Cc::from_u32(w);
            prop_assert_eq!(Cc::from_u32(cc.to_u32()), cc);
            let csts = Csts::from_u32(w);
            prop_assert_eq!(Csts::from_u32(csts.to_u32()), csts);
        }
    }
}
