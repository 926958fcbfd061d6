//! NVMe/TCP PDU headers: the 8-byte common header, the header of each PDU type, and the
//! framing rules (where data starts, which digests are present, the total length).
//!
//! ```text
//! | common header (8) | type-specific | HDGST (4)? | pad to PDO | data | DDGST (4)? |
//! |<-------------- hlen ------------->|
//! |<------------------- plen (the whole PDU) ---------------------------------->|
//! ```
//!
//! Encoding writes everything up to the data into a caller buffer and says where the data and
//! its digest go, so the data itself can be sent from (or received into) the I/O buffer. The
//! stream parser (`stream.rs`) checks received headers; decoders here only pick fields out.

use core::ops::Range;

use super::digest::{self, DIGEST_LEN};
use super::le::{self, WireError};

/// Bytes of the common header every PDU starts with.
pub const CH_LEN: usize = 8;
/// HLEN (and PLEN) of ICReq and ICResp.
pub const IC_LEN: usize = 128;
/// HLEN of H2CTermReq and C2HTermReq.
pub const TERM_REQ_HLEN: usize = 24;
/// Most bytes of the offending PDU header a TermReq may carry as its data.
pub const TERM_REQ_DATA_MAX: usize = 128;
/// Largest TermReq PDU.
pub const TERM_REQ_MAX_LEN: usize = TERM_REQ_HLEN + TERM_REQ_DATA_MAX;
/// HLEN of CapsuleCmd: the common header and a 64-byte SQE.
pub const CAPSULE_CMD_HLEN: usize = 72;
/// HLEN of CapsuleResp: the common header and a 16-byte CQE.
pub const CAPSULE_RESP_HLEN: usize = 24;
/// HLEN of H2CData and C2HData.
pub const DATA_HLEN: usize = 24;
/// HLEN of R2T.
pub const R2T_HLEN: usize = 24;
/// Longest run of bytes before a PDU's data: a CapsuleCmd with header digest (76 bytes)
/// padded to a PDA of 17, a multiple of 72. A header buffer this size fits any PDU's header.
pub const MAX_HEADER_LEN: usize = 144;
/// Largest PDA (HPDA / CPDA): data alignment of (PDA + 1) dwords, at most 128 bytes.
pub const PDA_MAX: u8 = 31;

/// Common header flag bits.
pub mod flags {
    /// A header digest follows the header.
    pub const HDGSTF: u8 = 0x01;
    /// A data digest follows the data.
    pub const DDGSTF: u8 = 0x02;
    /// H2CData / C2HData: the last data PDU of the transfer.
    pub const LAST_PDU: u8 = 0x04;
    /// C2HData: the command succeeded and no CapsuleResp follows (needs LAST_PDU).
    pub const SUCCESS: u8 = 0x08;
}

/// Which way a PDU travels; each side accepts only the other side's PDUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Host to controller: what the target receives.
    HostToController,
    /// Controller to host: what the initiator receives.
    ControllerToHost,
}

/// The PDU types of NVMe/TCP (type 8 is unassigned).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PduType {
    IcReq = 0x00,
    IcResp = 0x01,
    H2CTermReq = 0x02,
    C2HTermReq = 0x03,
    CapsuleCmd = 0x04,
    CapsuleResp = 0x05,
    H2CData = 0x06,
    C2HData = 0x07,
    R2T = 0x09,
}

impl PduType {
    /// The type for a PDU-type byte, `None` for values the protocol does not define.
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0x00 => Self::IcReq,
            0x01 => Self::IcResp,
            0x02 => Self::H2CTermReq,
            0x03 => Self::C2HTermReq,
            0x04 => Self::CapsuleCmd,
            0x05 => Self::CapsuleResp,
            0x06 => Self::H2CData,
            0x07 => Self::C2HData,
            0x09 => Self::R2T,
            _ => return None,
        })
    }

    /// The one HLEN the type allows.
    pub fn hlen(self) -> usize {
        match self {
            Self::IcReq | Self::IcResp => IC_LEN,
            Self::H2CTermReq | Self::C2HTermReq => TERM_REQ_HLEN,
            Self::CapsuleCmd => CAPSULE_CMD_HLEN,
            Self::CapsuleResp => CAPSULE_RESP_HLEN,
            Self::H2CData | Self::C2HData => DATA_HLEN,
            Self::R2T => R2T_HLEN,
        }
    }

    /// Who sends it (the low bit of the type: 0 from the host).
    pub fn direction(self) -> Direction {
        if (self as u8) & 1 == 0 {
            Direction::HostToController
        } else {
            Direction::ControllerToHost
        }
    }

    /// Whether the PDU may carry data at PDO (command data, not a TermReq's header copy).
    pub fn carries_data(self) -> bool {
        matches!(self, Self::CapsuleCmd | Self::H2CData | Self::C2HData)
    }

    /// Whether negotiated digests apply: never to the IC exchange or a TermReq, which must be
    /// readable whatever was (or was not yet) agreed.
    pub fn takes_digests(self) -> bool {
        !matches!(
            self,
            Self::IcReq | Self::IcResp | Self::H2CTermReq | Self::C2HTermReq
        )
    }
}

/// The 8 bytes every PDU starts with. `pdu_type` stays a raw byte so an unknown type can be
/// reported rather than lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommonHeader {
    pub pdu_type: u8,
    pub flags: u8,
    pub hlen: u8,
    pub pdo: u8,
    pub plen: u32,
}

impl CommonHeader {
    /// Offsets within the common header, for TermReq FEI values.
    pub const TYPE_OFFSET: u32 = 0;
    pub const FLAGS_OFFSET: u32 = 1;
    pub const HLEN_OFFSET: u32 = 2;
    pub const PDO_OFFSET: u32 = 3;
    pub const PLEN_OFFSET: u32 = 4;

    /// Reads the common header at the start of `b`.
    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        le::need(b, CH_LEN)?;
        Ok(Self {
            pdu_type: le::get_u8(b, 0)?,
            flags: le::get_u8(b, 1)?,
            hlen: le::get_u8(b, 2)?,
            pdo: le::get_u8(b, 3)?,
            plen: le::get_u32(b, 4)?,
        })
    }

    /// Writes the common header at the start of `b`.
    pub fn encode(&self, b: &mut [u8]) -> Result<(), WireError> {
        le::need(b, CH_LEN)?;
        le::put_u8(b, 0, self.pdu_type)?;
        le::put_u8(b, 1, self.flags)?;
        le::put_u8(b, 2, self.hlen)?;
        le::put_u8(b, 3, self.pdo)?;
        le::put_u32(b, 4, self.plen)
    }
}

/// Fatal error status of a TermReq: why the sender is closing the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fes {
    /// A header field is invalid; FEI is its byte offset in the PDU.
    InvalidHeaderField,
    /// A PDU arrived that is not allowed at this point of the exchange.
    PduSequenceError,
    /// The header digest did not match.
    HeaderDigestError,
    /// Data PDU offset / length outside the command's transfer.
    DataOutOfRange,
    /// More data than the negotiated limit (MAXH2CDATA, in-capsule size) or too many R2Ts.
    DataLimitExceeded,
    /// A parameter (e.g. PFV) this side does not support.
    UnsupportedParameter,
}

impl Fes {
    /// The FES value on the wire.
    pub fn code(self) -> u16 {
        match self {
            Self::InvalidHeaderField => 0x01,
            Self::PduSequenceError => 0x02,
            Self::HeaderDigestError => 0x03,
            Self::DataOutOfRange => 0x04,
            Self::DataLimitExceeded => 0x05,
            Self::UnsupportedParameter => 0x06,
        }
    }

    /// The status for a wire value, `None` for values the protocol does not define.
    pub fn from_code(code: u16) -> Option<Self> {
        Some(match code {
            0x01 => Self::InvalidHeaderField,
            0x02 => Self::PduSequenceError,
            0x03 => Self::HeaderDigestError,
            0x04 => Self::DataOutOfRange,
            0x05 => Self::DataLimitExceeded,
            0x06 => Self::UnsupportedParameter,
            _ => return None,
        })
    }
}

/// Bits of the ICReq / ICResp digest byte.
const IC_HDGST: u8 = 0x01;
const IC_DDGST: u8 = 0x02;

fn ic_digest_byte(hdgst: bool, ddgst: bool) -> u8 {
    (if hdgst { IC_HDGST } else { 0 }) | (if ddgst { IC_DDGST } else { 0 })
}

/// ICReq: the host's connection parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcReq {
    /// PDU format version, 0 for NVMe/TCP 1.0.
    pub pfv: u16,
    /// Data alignment the host wants in PDUs it receives, in dwords, 0's based.
    pub hpda: u8,
    pub hdgst: bool,
    pub ddgst: bool,
    /// Most outstanding R2Ts per command, 0's based.
    pub maxr2t: u32,
}

impl IcReq {
    /// Reads the fields from a whole ICReq (`b` starts at the common header).
    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        le::need(b, IC_LEN)?;
        let dgst = le::get_u8(b, 11)?;
        Ok(Self {
            pfv: le::get_u16(b, 8)?,
            hpda: le::get_u8(b, 10)?,
            hdgst: dgst & IC_HDGST != 0,
            ddgst: dgst & IC_DDGST != 0,
            maxr2t: le::get_u32(b, 12)?,
        })
    }

    fn put(&self, b: &mut [u8]) -> Result<(), WireError> {
        le::put_u16(b, 8, self.pfv)?;
        le::put_u8(b, 10, self.hpda)?;
        le::put_u8(b, 11, ic_digest_byte(self.hdgst, self.ddgst))?;
        le::put_u32(b, 12, self.maxr2t)
    }
}

/// ICResp: the controller's answer to ICReq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcResp {
    pub pfv: u16,
    /// Data alignment the controller wants in PDUs it receives, in dwords, 0's based.
    pub cpda: u8,
    pub hdgst: bool,
    pub ddgst: bool,
    /// Most data bytes in one H2CData PDU.
    pub maxh2cdata: u32,
}

impl IcResp {
    /// Reads the fields from a whole ICResp.
    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        le::need(b, IC_LEN)?;
        let dgst = le::get_u8(b, 11)?;
        Ok(Self {
            pfv: le::get_u16(b, 8)?,
            cpda: le::get_u8(b, 10)?,
            hdgst: dgst & IC_HDGST != 0,
            ddgst: dgst & IC_DDGST != 0,
            maxh2cdata: le::get_u32(b, 12)?,
        })
    }

    fn put(&self, b: &mut [u8]) -> Result<(), WireError> {
        le::put_u16(b, 8, self.pfv)?;
        le::put_u8(b, 10, self.cpda)?;
        le::put_u8(b, 11, ic_digest_byte(self.hdgst, self.ddgst))?;
        le::put_u32(b, 12, self.maxh2cdata)
    }
}

/// H2CTermReq / C2HTermReq header; the PDU's data is a copy of the offending PDU header.
/// `fes` stays raw so a received unknown status can still be logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TermReq {
    pub fes: u16,
    /// Field error information: for `InvalidHeaderField`, the byte offset of the field.
    pub fei: u32,
}

impl TermReq {
    /// The TermReq to send for `fes`.
    pub fn new(fes: Fes, fei: u32) -> Self {
        Self {
            fes: fes.code(),
            fei,
        }
    }

    /// The status, if it is one the protocol defines.
    pub fn status(&self) -> Option<Fes> {
        Fes::from_code(self.fes)
    }

    /// Reads the fields from a TermReq header.
    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        le::need(b, TERM_REQ_HLEN)?;
        Ok(Self {
            fes: le::get_u16(b, 8)?,
            fei: le::get_u32(b, 10)?,
        })
    }

    fn put(&self, b: &mut [u8]) -> Result<(), WireError> {
        le::put_u16(b, 8, self.fes)?;
        le::put_u32(b, 10, self.fei)
    }
}

/// CapsuleCmd header: the 64-byte SQE, decoded by `command.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapsuleCmd {
    pub sqe: [u8; 64],
}

impl CapsuleCmd {
    /// Reads the SQE from a CapsuleCmd header.
    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        le::need(b, CAPSULE_CMD_HLEN)?;
        Ok(Self {
            sqe: le::get_array(b, CH_LEN)?,
        })
    }

    fn put(&self, b: &mut [u8]) -> Result<(), WireError> {
        le::put_bytes(b, CH_LEN, &self.sqe)
    }
}

/// CapsuleResp header: the 16-byte CQE, decoded by `command.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapsuleResp {
    pub cqe: [u8; 16],
}

impl CapsuleResp {
    /// Reads the CQE from a CapsuleResp header.
    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        le::need(b, CAPSULE_RESP_HLEN)?;
        Ok(Self {
            cqe: le::get_array(b, CH_LEN)?,
        })
    }

    fn put(&self, b: &mut [u8]) -> Result<(), WireError> {
        le::put_bytes(b, CH_LEN, &self.cqe)
    }
}

/// H2CData header: write data the host sends after an R2T.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H2CData {
    /// CID of the command the data belongs to.
    pub cccid: u16,
    /// The R2T's transfer tag.
    pub ttag: u16,
    /// Offset of this data in the command's transfer.
    pub datao: u32,
    /// Bytes of data in this PDU.
    pub datal: u32,
    /// LAST_PDU: the last H2CData for the R2T.
    pub last: bool,
}

impl H2CData {
    /// Offset of DATAL, for TermReq FEI values.
    pub const DATAL_OFFSET: u32 = 16;

    /// Reads the fields (and the LAST_PDU flag) from an H2CData header.
    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        le::need(b, DATA_HLEN)?;
        Ok(Self {
            cccid: le::get_u16(b, 8)?,
            ttag: le::get_u16(b, 10)?,
            datao: le::get_u32(b, 12)?,
            datal: le::get_u32(b, 16)?,
            last: le::get_u8(b, 1)? & flags::LAST_PDU != 0,
        })
    }

    fn put(&self, b: &mut [u8]) -> Result<(), WireError> {
        le::put_u16(b, 8, self.cccid)?;
        le::put_u16(b, 10, self.ttag)?;
        le::put_u32(b, 12, self.datao)?;
        le::put_u32(b, 16, self.datal)
    }
}

/// C2HData header: read data the controller sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct C2HData {
    pub cccid: u16,
    pub datao: u32,
    pub datal: u32,
    /// LAST_PDU: the last C2HData of the command.
    pub last: bool,
    /// SUCCESS: the command completed successfully and no CapsuleResp follows.
    pub success: bool,
}

impl C2HData {
    /// Offset of DATAL, for TermReq FEI values.
    pub const DATAL_OFFSET: u32 = 16;

    /// Reads the fields (and the LAST_PDU / SUCCESS flags) from a C2HData header.
    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        le::need(b, DATA_HLEN)?;
        let f = le::get_u8(b, 1)?;
        Ok(Self {
            cccid: le::get_u16(b, 8)?,
            datao: le::get_u32(b, 12)?,
            datal: le::get_u32(b, 16)?,
            last: f & flags::LAST_PDU != 0,
            success: f & flags::SUCCESS != 0,
        })
    }

    fn put(&self, b: &mut [u8]) -> Result<(), WireError> {
        le::put_u16(b, 8, self.cccid)?;
        le::put_u32(b, 12, self.datao)?;
        le::put_u32(b, 16, self.datal)
    }
}

/// R2T header: the controller asks for a range of a write command's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct R2T {
    pub cccid: u16,
    /// Tag the host echoes in the H2CData PDUs that answer.
    pub ttag: u16,
    /// Offset of the requested range in the command's transfer.
    pub r2to: u32,
    /// Bytes requested.
    pub r2tl: u32,
}

impl R2T {
    /// Reads the fields from an R2T header.
    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        le::need(b, R2T_HLEN)?;
        Ok(Self {
            cccid: le::get_u16(b, 8)?,
            ttag: le::get_u16(b, 10)?,
            r2to: le::get_u32(b, 12)?,
            r2tl: le::get_u32(b, 16)?,
        })
    }

    fn put(&self, b: &mut [u8]) -> Result<(), WireError> {
        le::put_u16(b, 8, self.cccid)?;
        le::put_u16(b, 10, self.ttag)?;
        le::put_u32(b, 12, self.r2to)?;
        le::put_u32(b, 16, self.r2tl)
    }
}

/// The type-specific header of any PDU, for code that sends or receives more than one type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    IcReq(IcReq),
    IcResp(IcResp),
    H2CTermReq(TermReq),
    C2HTermReq(TermReq),
    CapsuleCmd(CapsuleCmd),
    CapsuleResp(CapsuleResp),
    H2CData(H2CData),
    C2HData(C2HData),
    R2T(R2T),
}

/// What the connection agreed that shapes a PDU this side sends: digests from the IC
/// exchange, and the data alignment the receiver asked for (the ICResp's CPDA when the host
/// sends, the ICReq's HPDA when the controller does; 0 for Linux).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Framing {
    pub hdgst: bool,
    pub ddgst: bool,
    pub pda: u8,
}

impl Framing {
    /// Before the IC exchange: no digests, dword alignment.
    pub const NONE: Framing = Framing {
        hdgst: false,
        ddgst: false,
        pda: 0,
    };
}

/// Where the parts of one PDU sit, from its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub pdu_type: PduType,
    /// Bytes before the data: header, header digest, padding (PDO when there is data).
    pub header_len: usize,
    /// Bytes of data (for a TermReq, the copied header).
    pub data_len: usize,
    /// Whether a data digest follows the data.
    pub data_digest: bool,
    /// The whole PDU (PLEN).
    pub len: usize,
}

impl Frame {
    /// Where the data sits.
    pub fn data(&self) -> Range<usize> {
        self.header_len..self.header_len + self.data_len
    }

    /// Where the data digest sits, if there is one.
    pub fn data_digest_at(&self) -> Option<usize> {
        self.data_digest.then_some(self.header_len + self.data_len)
    }
}

impl Header {
    /// The PDU type this header is for.
    pub fn pdu_type(&self) -> PduType {
        match self {
            Self::IcReq(_) => PduType::IcReq,
            Self::IcResp(_) => PduType::IcResp,
            Self::H2CTermReq(_) => PduType::H2CTermReq,
            Self::C2HTermReq(_) => PduType::C2HTermReq,
            Self::CapsuleCmd(_) => PduType::CapsuleCmd,
            Self::CapsuleResp(_) => PduType::CapsuleResp,
            Self::H2CData(_) => PduType::H2CData,
            Self::C2HData(_) => PduType::C2HData,
            Self::R2T(_) => PduType::R2T,
        }
    }

    /// Reads the type-specific fields of a `pdu_type` PDU whose header starts `b`.
    pub fn decode(pdu_type: PduType, b: &[u8]) -> Result<Self, WireError> {
        Ok(match pdu_type {
            PduType::IcReq => Self::IcReq(IcReq::decode(b)?),
            PduType::IcResp => Self::IcResp(IcResp::decode(b)?),
            PduType::H2CTermReq => Self::H2CTermReq(TermReq::decode(b)?),
            PduType::C2HTermReq => Self::C2HTermReq(TermReq::decode(b)?),
            PduType::CapsuleCmd => Self::CapsuleCmd(CapsuleCmd::decode(b)?),
            PduType::CapsuleResp => Self::CapsuleResp(CapsuleResp::decode(b)?),
            PduType::H2CData => Self::H2CData(H2CData::decode(b)?),
            PduType::C2HData => Self::C2HData(C2HData::decode(b)?),
            PduType::R2T => Self::R2T(R2T::decode(b)?),
        })
    }

    /// Flags that come from the header's own fields rather than the framing.
    fn own_flags(&self) -> u8 {
        match self {
            Self::H2CData(h) if h.last => flags::LAST_PDU,
            Self::C2HData(c) => {
                (if c.last { flags::LAST_PDU } else { 0 })
                    | (if c.success { flags::SUCCESS } else { 0 })
            }
            _ => 0,
        }
    }

    /// Lays out a PDU of this header with `data_len` bytes of data. Rejects what the protocol
    /// forbids: data on a PDU that carries none, an H2CData / C2HData without data or whose
    /// DATAL differs, SUCCESS without LAST_PDU, a TermReq copy over 128 bytes, PDA over 31.
    pub fn frame(&self, framing: &Framing, data_len: usize) -> Result<Frame, WireError> {
        let t = self.pdu_type();
        let hlen = t.hlen();
        if framing.pda > PDA_MAX {
            return Err(WireError::Invalid {
                field: "pda",
                value: framing.pda.into(),
            });
        }
        let hdgst_len = if framing.hdgst && t.takes_digests() {
            DIGEST_LEN
        } else {
            0
        };
        let datal = match self {
            Self::H2CData(h) => Some(h.datal),
            Self::C2HData(c) => {
                if c.success && !c.last {
                    return Err(WireError::Invalid {
                        field: "C2HData flags",
                        value: flags::SUCCESS.into(),
                    });
                }
                Some(c.datal)
            }
            _ => None,
        };
        if let Some(datal) = datal
            && (data_len == 0 || usize::try_from(datal) != Ok(data_len))
        {
            return Err(WireError::Invalid {
                field: "datal",
                value: datal.into(),
            });
        }
        let (header_len, data_digest) = if data_len == 0 {
            (hlen + hdgst_len, false)
        } else if t.carries_data() {
            let align = (usize::from(framing.pda) + 1) * 4;
            ((hlen + hdgst_len).next_multiple_of(align), framing.ddgst)
        } else if matches!(t, PduType::H2CTermReq | PduType::C2HTermReq) {
            if data_len > TERM_REQ_DATA_MAX {
                return Err(WireError::TooLong {
                    field: "TermReq data",
                    max: TERM_REQ_DATA_MAX,
                });
            }
            (hlen, false)
        } else {
            return Err(WireError::Invalid {
                field: "data length",
                value: data_len as u64,
            });
        };
        let len = header_len
            .checked_add(data_len)
            .and_then(|l| l.checked_add(if data_digest { DIGEST_LEN } else { 0 }))
            .filter(|&l| u32::try_from(l).is_ok())
            .ok_or(WireError::Invalid {
                field: "plen",
                value: data_len as u64,
            })?;
        Ok(Frame {
            pdu_type: t,
            header_len,
            data_len,
            data_digest,
            len,
        })
    }

    /// Writes the PDU's header, header digest and padding into `buf` for `data_len` bytes of
    /// data that the caller sends after it (followed by the data digest when
    /// `Frame::data_digest`). HLEN, PDO, PLEN and the digest flags are computed here.
    pub fn encode(
        &self,
        buf: &mut [u8],
        framing: &Framing,
        data_len: usize,
    ) -> Result<Frame, WireError> {
        let frame = self.frame(framing, data_len)?;
        let t = frame.pdu_type;
        let hlen = t.hlen();
        let hdgst = framing.hdgst && t.takes_digests();
        le::zero(buf, 0, frame.header_len)?;
        let pdo = if t.carries_data() && data_len != 0 {
            frame.header_len
        } else {
            0
        };
        let ch = CommonHeader {
            pdu_type: t as u8,
            flags: self.own_flags()
                | if hdgst { flags::HDGSTF } else { 0 }
                | if frame.data_digest { flags::DDGSTF } else { 0 },
            // HLEN is at most 128 and PDO at most 144 (MAX_HEADER_LEN): both fit a byte.
            hlen: u8::try_from(hlen).unwrap_or(u8::MAX),
            pdo: u8::try_from(pdo).unwrap_or(u8::MAX),
            plen: u32::try_from(frame.len).unwrap_or(u32::MAX),
        };
        ch.encode(buf)?;
        match self {
            Self::IcReq(h) => h.put(buf)?,
            Self::IcResp(h) => h.put(buf)?,
            Self::H2CTermReq(h) | Self::C2HTermReq(h) => h.put(buf)?,
            Self::CapsuleCmd(h) => h.put(buf)?,
            Self::CapsuleResp(h) => h.put(buf)?,
            Self::H2CData(h) => h.put(buf)?,
            Self::C2HData(h) => h.put(buf)?,
            Self::R2T(h) => h.put(buf)?,
        }
        if hdgst {
            digest::seal(buf, hlen)?;
        }
        Ok(frame)
    }
}

/// Writes a whole PDU, data and data digest included, into `buf` and returns its length:
/// for PDUs without data, small in-capsule data and TermReqs. `buf` is left unchanged when
/// it is too small.
pub fn encode_pdu(
    buf: &mut [u8],
    header: &Header,
    framing: &Framing,
    data: &[u8],
) -> Result<usize, WireError> {
    let frame = header.frame(framing, data.len())?;
    le::need(buf, frame.len)?;
    header.encode(buf, framing, data.len())?;
    le::put_bytes(buf, frame.header_len, data)?;
    if let Some(at) = frame.data_digest_at() {
        digest::put(buf, at, digest::crc32c(data))?;
    }
    Ok(frame.len)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    const BOTH: Framing = Framing {
        hdgst: true,
        ddgst: true,
        pda: 0,
    };

    fn encode_vec(h: &Header, f: &Framing, data: &[u8]) -> Vec<u8> {
        let mut buf = vec![0xEEu8; 512];
        let n = encode_pdu(&mut buf, h, f, data).unwrap();
        buf.truncate(n);
        buf
    }

    fn le32(v: u32) -> [u8; 4] {
        v.to_le_bytes()
    }

    #[test]
    fn icreq_golden() {
        // hpda 0, both digests asked for, maxr2t 0: Linux's ICReq.
        let mut want = vec![0u8; 128];
        want[0] = 0x00; // ICReq
        want[1] = 0x00; // no digest flags, ever, on IC PDUs
        want[2] = 128; // hlen
        want[3] = 0; // pdo
        want[4..8].copy_from_slice(&le32(128)); // plen
        want[8..10].copy_from_slice(&[0, 0]); // pfv 0
        want[10] = 0; // hpda
        want[11] = 0x03; // HDGST_ENABLE | DDGST_ENABLE
        want[12..16].copy_from_slice(&le32(0)); // maxr2t
        let h = Header::IcReq(IcReq {
            pfv: 0,
            hpda: 0,
            hdgst: true,
            ddgst: true,
            maxr2t: 0,
        });
        // Digests negotiated or not, an ICReq carries none.
        assert_eq!(encode_vec(&h, &BOTH, &[]), want);
        assert_eq!(encode_vec(&h, &Framing::NONE, &[]), want);
        assert_eq!(Header::decode(PduType::IcReq, &want), Ok(h));
    }

    #[test]
    fn icresp_golden() {
        let mut want = vec![0u8; 128];
        want[0] = 0x01;
        want[2] = 128;
        want[4..8].copy_from_slice(&le32(128));
        want[10] = 0; // cpda
        want[11] = 0x01; // header digest only
        want[12..16].copy_from_slice(&le32(0x0002_0000)); // maxh2cdata 128 KiB
        let h = Header::IcResp(IcResp {
            pfv: 0,
            cpda: 0,
            hdgst: true,
            ddgst: false,
            maxh2cdata: 128 * 1024,
        });
        assert_eq!(encode_vec(&h, &BOTH, &[]), want);
        assert_eq!(Header::decode(PduType::IcResp, &want), Ok(h));
    }

    #[test]
    fn capsule_resp_golden() {
        let cqe: [u8; 16] = core::array::from_fn(|i| i as u8 + 0xA0);
        // Without digests.
        let mut want = vec![0x05, 0x00, 24, 0];
        want.extend_from_slice(&le32(24));
        want.extend_from_slice(&cqe);
        let h = Header::CapsuleResp(CapsuleResp { cqe });
        assert_eq!(encode_vec(&h, &Framing::NONE, &[]), want);
        // With both digests: HDGSTF only (no data, so no data digest), plen 28.
        let mut want = vec![0x05, 0x01, 24, 0];
        want.extend_from_slice(&le32(28));
        want.extend_from_slice(&cqe);
        let d = digest::crc32c(&want);
        want.extend_from_slice(&le32(d));
        assert_eq!(encode_vec(&h, &BOTH, &[]), want);
        assert_eq!(Header::decode(PduType::CapsuleResp, &want), Ok(h));
        // A CapsuleResp never carries data.
        assert!(h.frame(&BOTH, 1).is_err());
    }

    #[test]
    fn h2c_data_golden_with_both_digests() {
        let data = *b"ABCDEFGH";
        let mut want = vec![0x06, 0x07, 24, 28]; // HDGSTF|DDGSTF|LAST_PDU, pdo 24+4
        want.extend_from_slice(&le32(28 + 8 + 4)); // plen: header, hdgst, data, ddgst
        want.extend_from_slice(&[0x34, 0x12]); // cccid 0x1234
        want.extend_from_slice(&[0x01, 0x00]); // ttag 1
        want.extend_from_slice(&le32(0x1000)); // datao
        want.extend_from_slice(&le32(8)); // datal
        want.extend_from_slice(&[0; 4]); // reserved
        let hd = digest::crc32c(&want);
        want.extend_from_slice(&le32(hd));
        want.extend_from_slice(&data);
        want.extend_from_slice(&le32(digest::crc32c(&data)));
        let h = Header::H2CData(H2CData {
            cccid: 0x1234,
            ttag: 1,
            datao: 0x1000,
            datal: 8,
            last: true,
        });
        assert_eq!(encode_vec(&h, &BOTH, &data), want);
        assert_eq!(Header::decode(PduType::H2CData, &want), Ok(h));
        // The header-only encoder writes exactly the bytes before the data.
        let mut hb = [0u8; MAX_HEADER_LEN];
        let f = h.encode(&mut hb, &BOTH, 8).unwrap();
        assert_eq!(f.header_len, 28);
        assert_eq!(f.data(), 28..36);
        assert_eq!(f.data_digest_at(), Some(36));
        assert_eq!(f.len, 40);
        assert_eq!(&hb[..28], &want[..28]);
    }

    #[test]
    fn r2t_golden() {
        let mut want = vec![0x09, 0x00, 24, 0];
        want.extend_from_slice(&le32(24));
        want.extend_from_slice(&[0x07, 0x00]); // cccid 7
        want.extend_from_slice(&[0x02, 0x00]); // ttag 2
        want.extend_from_slice(&le32(0)); // r2to
        want.extend_from_slice(&le32(0x20000)); // r2tl 128 KiB
        want.extend_from_slice(&[0; 4]);
        let h = Header::R2T(R2T {
            cccid: 7,
            ttag: 2,
            r2to: 0,
            r2tl: 0x20000,
        });
        // A data digest alone never shows up on a PDU without data.
        let ddgst_only = Framing {
            hdgst: false,
            ddgst: true,
            pda: 0,
        };
        assert_eq!(encode_vec(&h, &ddgst_only, &[]), want);
        assert_eq!(Header::decode(PduType::R2T, &want), Ok(h));
    }

    #[test]
    fn capsule_cmd_golden_with_in_capsule_data_and_padding() {
        let sqe: [u8; 64] = core::array::from_fn(|i| i as u8);
        let data = [0x5Au8; 12];
        // No digests, pda 0: data right after the 72-byte header.
        let mut want = vec![0x04, 0x00, 72, 72];
        want.extend_from_slice(&le32(72 + 12));
        want.extend_from_slice(&sqe);
        want.extend_from_slice(&data);
        let h = Header::CapsuleCmd(CapsuleCmd { sqe });
        assert_eq!(encode_vec(&h, &Framing::NONE, &data), want);
        // Header digest and pda 3 (16-byte alignment): 72 + 4 = 76, padded to 80.
        let f = Framing {
            hdgst: true,
            ddgst: false,
            pda: 3,
        };
        let mut want = vec![0x04, 0x01, 72, 80];
        want.extend_from_slice(&le32(80 + 12));
        want.extend_from_slice(&sqe);
        let hd = digest::crc32c(&want);
        want.extend_from_slice(&le32(hd));
        want.extend_from_slice(&[0; 4]); // pad
        want.extend_from_slice(&data);
        assert_eq!(encode_vec(&h, &f, &data), want);
        // Without data: pdo 0, no DDGSTF even when data digests are on.
        let mut want = vec![0x04, 0x01, 72, 0];
        want.extend_from_slice(&le32(76));
        want.extend_from_slice(&sqe);
        let hd = digest::crc32c(&want);
        want.extend_from_slice(&le32(hd));
        assert_eq!(encode_vec(&h, &BOTH, &[]), want);
        assert_eq!(Header::decode(PduType::CapsuleCmd, &want), Ok(h));
    }

    #[test]
    fn c2h_term_req_golden() {
        let offending = [0x04, 0x00, 0x48, 0x48, 0xFF, 0xFF, 0xFF, 0x7F];
        let mut want = vec![0x03, 0x00, 24, 0];
        want.extend_from_slice(&le32(24 + 8));
        want.extend_from_slice(&[0x01, 0x00]); // fes: invalid header field
        want.extend_from_slice(&le32(4)); // fei: plen's offset
        want.extend_from_slice(&[0; 10]);
        want.extend_from_slice(&offending);
        let h = Header::C2HTermReq(TermReq::new(Fes::InvalidHeaderField, 4));
        // Never digests on a TermReq.
        assert_eq!(encode_vec(&h, &BOTH, &offending), want);
        let back = Header::decode(PduType::C2HTermReq, &want).unwrap();
        assert_eq!(back, h);
        let Header::C2HTermReq(t) = back else {
            unreachable!()
        };
        assert_eq!(t.status(), Some(Fes::InvalidHeaderField));
        // Up to 128 bytes of the offending header, not more.
        assert_eq!(encode_vec(&h, &BOTH, &[0; 128]).len(), TERM_REQ_MAX_LEN);
        assert_eq!(
            h.frame(&BOTH, 129),
            Err(WireError::TooLong {
                field: "TermReq data",
                max: 128
            })
        );
    }

    #[test]
    fn c2h_data_golden_success() {
        let data = [1u8, 2, 3, 4];
        let mut want = vec![0x07, 0x0C, 24, 24]; // LAST_PDU|SUCCESS
        want.extend_from_slice(&le32(28));
        want.extend_from_slice(&[0x09, 0x00]); // cccid 9
        want.extend_from_slice(&[0, 0]); // reserved
        want.extend_from_slice(&le32(512)); // datao
        want.extend_from_slice(&le32(4)); // datal
        want.extend_from_slice(&[0; 4]);
        want.extend_from_slice(&data);
        let h = Header::C2HData(C2HData {
            cccid: 9,
            datao: 512,
            datal: 4,
            last: true,
            success: true,
        });
        assert_eq!(encode_vec(&h, &Framing::NONE, &data), want);
        assert_eq!(Header::decode(PduType::C2HData, &want), Ok(h));
    }

    #[test]
    fn encoder_refuses_what_the_protocol_forbids() {
        let c2h = C2HData {
            cccid: 1,
            datao: 0,
            datal: 4,
            last: false,
            success: true,
        };
        assert!(Header::C2HData(c2h).frame(&BOTH, 4).is_err());
        let h2c = Header::H2CData(H2CData {
            cccid: 1,
            ttag: 1,
            datao: 0,
            datal: 4,
            last: false,
        });
        assert!(h2c.frame(&BOTH, 3).is_err()); // datal differs
        assert!(h2c.frame(&BOTH, 0).is_err()); // data PDU without data
        assert!(
            h2c.frame(
                &Framing {
                    pda: 32,
                    ..Framing::NONE
                },
                4
            )
            .is_err()
        );
        let ic = Header::IcReq(IcReq {
            pfv: 0,
            hpda: 0,
            hdgst: false,
            ddgst: false,
            maxr2t: 0,
        });
        assert!(ic.frame(&Framing::NONE, 1).is_err());
        let big = Header::CapsuleCmd(CapsuleCmd { sqe: [0; 64] });
        assert!(big.frame(&BOTH, u32::MAX as usize).is_err());
        // Too small a buffer: an error, and nothing written.
        let mut small = [0xEEu8; 30];
        assert!(encode_pdu(&mut small, &h2c, &BOTH, &[0; 4]).is_err());
        assert_eq!(small, [0xEE; 30]);
        assert!(h2c.encode(&mut small[..20], &BOTH, 4).is_err());
    }

    #[test]
    fn types_and_fes_codes() {
        for v in 0..=255u8 {
            match PduType::from_u8(v) {
                Some(t) => {
                    assert_eq!(t as u8, v);
                    assert_eq!(
                        t.direction() == Direction::HostToController,
                        v % 2 == 0,
                        "{t:?}"
                    );
                }
                None => assert!(v == 8 || v > 9),
            }
        }
        for c in 0..=0xFFFFu16 {
            if let Some(f) = Fes::from_code(c) {
                assert_eq!(f.code(), c);
            } else {
                assert!(c == 0 || c > 6);
            }
        }
        assert!(CommonHeader::decode(&[0; 7]).is_err());
        assert!(IcReq::decode(&[0; 127]).is_err());
        assert!(CapsuleCmd::decode(&[0; 71]).is_err());
        assert!(H2CData::decode(&[0; 23]).is_err());
    }

    #[test]
    fn max_header_len_is_tight() {
        let cmd = Header::CapsuleCmd(CapsuleCmd { sqe: [0; 64] });
        let longest = (0..=PDA_MAX)
            .map(|pda| {
                let f = Framing {
                    hdgst: true,
                    ddgst: true,
                    pda,
                };
                cmd.frame(&f, 1).unwrap().header_len
            })
            .max();
        assert_eq!(longest, Some(MAX_HEADER_LEN));
    }

    /// Any header the protocol allows, with data that fits it.
    pub(crate) fn arb_header() -> impl Strategy<Value = (Header, Vec<u8>)> {
        let data = || proptest::collection::vec(any::<u8>(), 1..300);
        prop_oneof![
            (
                any::<u16>(),
                0..=PDA_MAX,
                any::<bool>(),
                any::<bool>(),
                any::<u32>()
            )
                .prop_map(|(pfv, hpda, hdgst, ddgst, maxr2t)| (
                    Header::IcReq(IcReq {
                        pfv,
                        hpda,
                        hdgst,
                        ddgst,
                        maxr2t
                    }),
                    vec![]
                )),
            (
                any::<u16>(),
                0..=PDA_MAX,
                any::<bool>(),
                any::<bool>(),
                any::<u32>()
            )
                .prop_map(|(pfv, cpda, hdgst, ddgst, maxh2cdata)| (
                    Header::IcResp(IcResp {
                        pfv,
                        cpda,
                        hdgst,
                        ddgst,
                        maxh2cdata
                    }),
                    vec![]
                )),
            (
                any::<u16>(),
                any::<u32>(),
                any::<bool>(),
                proptest::collection::vec(any::<u8>(), 0..=128)
            )
                .prop_map(|(fes, fei, h2c, copy)| {
                    let t = TermReq { fes, fei };
                    let h = if h2c {
                        Header::H2CTermReq(t)
                    } else {
                        Header::C2HTermReq(t)
                    };
                    (h, copy)
                }),
            (
                any::<[u8; 64]>(),
                proptest::collection::vec(any::<u8>(), 0..300)
            )
                .prop_map(|(sqe, d)| (Header::CapsuleCmd(CapsuleCmd { sqe }), d)),
            any::<[u8; 16]>().prop_map(|cqe| (Header::CapsuleResp(CapsuleResp { cqe }), vec![])),
            (
                any::<u16>(),
                any::<u16>(),
                any::<u32>(),
                any::<bool>(),
                data()
            )
                .prop_map(|(cccid, ttag, datao, last, d)| (
                    Header::H2CData(H2CData {
                        cccid,
                        ttag,
                        datao,
                        datal: d.len() as u32,
                        last
                    }),
                    d
                )),
            (
                any::<u16>(),
                any::<u32>(),
                any::<bool>(),
                any::<bool>(),
                data()
            )
                .prop_map(|(cccid, datao, last, success, d)| (
                    Header::C2HData(C2HData {
                        cccid,
                        datao,
                        datal: d.len() as u32,
                        last: last || success,
                        success
                    }),
                    d
                )),
            (any::<u16>(), any::<u16>(), any::<u32>(), any::<u32>()).prop_map(
                |(cccid, ttag, r2to, r2tl)| (
                    Header::R2T(R2T {
                        cccid,
                        ttag,
                        r2to,
                        r2tl
                    }),
                    vec![]
                )
            ),
        ]
    }

    pub(crate) fn arb_framing() -> impl Strategy<Value = Framing> {
        (any::<bool>(), any::<bool>(), 0..=PDA_MAX).prop_map(|(hdgst, ddgst, pda)| Framing {
            hdgst,
            ddgst,
            pda,
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn headers_round_trip((h, data) in arb_header(), f in arb_framing()) {
            let mut buf = [0u8; 1024];
            let n = encode_pdu(&mut buf, &h, &f, &data).unwrap();
            let pdu = &buf[..n];
            let ch = CommonHeader::decode(pdu).unwrap();
            let t = h.pdu_type();
            prop_assert_eq!(ch.pdu_type, t as u8);
            prop_assert_eq!(usize::from(ch.hlen), t.hlen());
            prop_assert_eq!(ch.plen as usize, n);
            prop_assert_eq!(Header::decode(t, pdu).unwrap(), h);
            let frame = h.frame(&f, data.len()).unwrap();
            prop_assert_eq!(&pdu[frame.data()], &data[..]);
            if t.carries_data() && !data.is_empty() {
                prop_assert_eq!(usize::from(ch.pdo), frame.header_len);
                prop_assert_eq!(frame.header_len % ((usize::from(f.pda) + 1) * 4), 0);
            } else {
                prop_assert_eq!(ch.pdo, 0);
            }
            prop_assert!(frame.header_len <= MAX_HEADER_LEN);
            let hdgst = f.hdgst && t.takes_digests();
            prop_assert_eq!(ch.flags & flags::HDGSTF != 0, hdgst);
            if hdgst {
                prop_assert_eq!(digest::verify(pdu, t.hlen()), Ok(Ok(())));
            }
            prop_assert_eq!(ch.flags & flags::DDGSTF != 0, frame.data_digest);
            if let Some(at) = frame.data_digest_at() {
                prop_assert_eq!(digest::get(pdu, at).unwrap(), digest::crc32c(&data));
            }
        }
    }
}
