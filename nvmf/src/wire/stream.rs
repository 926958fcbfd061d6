//! The NVMe/TCP receive side: bytes from the socket in, whole checked PDUs out.
//!
//! The parser is stateless: the caller keeps its receive buffer and a [`StreamConfig`] (which
//! side it is, what the IC exchange agreed) and calls [`parse`] with the unconsumed bytes.
//! `Ok(None)` asks for more bytes; an error is fatal to the connection and says which TermReq
//! to answer with. Everything in the common header is checked as soon as its 8 bytes are in,
//! and the header digest as soon as the header is, so a corrupt PLEN never makes the caller
//! wait for (or buffer) data that is not coming. Fields are checked in wire order, so the
//! error names the lowest bad field, as the TermReq FEI should.
//!
//! A data digest mismatch is not fatal (the spec fails the command, not the connection): the
//! PDU is returned with its payload as `Err(DigestMismatch)`.
//!
//! A receiver that places data straight into I/O buffers calls [`parse_header`] once
//! [`Frame::header_len`] bytes are in, reads `data_len` bytes where they belong, and checks
//! the data digest itself with `digest::Crc32c`.

use super::digest::{self, DIGEST_LEN, DigestMismatch};
use super::pdu::{
    C2HData, CH_LEN, CapsuleCmd, CapsuleResp, CommonHeader, Direction, Fes, Frame, H2CData, Header,
    IC_LEN, IcReq, IcResp, PDA_MAX, PduType, R2T, TERM_REQ_DATA_MAX, TERM_REQ_HLEN, TermReq, flags,
};

/// What the receiving side knows about its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamConfig {
    /// Header digests were agreed.
    pub hdgst: bool,
    /// Data digests were agreed.
    pub ddgst: bool,
    /// Largest data one PDU may carry (e.g. the larger of the in-capsule size and MAXH2CDATA
    /// on the target; the largest transfer on the host). Finer limits are the caller's.
    pub max_data: u32,
    /// Data alignment this side asked the peer for (CPDA on the target, HPDA on the host),
    /// 0's based dwords; PDO must be a multiple of it.
    pub pda: u8,
    /// Which PDUs this side receives: `HostToController` on the target.
    pub expect: Direction,
    /// The IC exchange has not happened: only ICReq / ICResp (and a TermReq) may come.
    pub before_icreq: bool,
}

impl StreamConfig {
    /// A new connection, before the IC exchange.
    pub fn initial(expect: Direction, max_data: u32) -> Self {
        Self {
            hdgst: false,
            ddgst: false,
            max_data,
            pda: 0,
            expect,
            before_icreq: true,
        }
    }
}

/// Why a PDU is unacceptable, and the TermReq to answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("bad NVMe/TCP PDU: {reason} (FES {fes:?}, FEI {fei})")]
pub struct PduError {
    pub fes: Fes,
    /// For `InvalidHeaderField`, the byte offset of the field in the PDU; 0 otherwise.
    pub fei: u32,
    pub reason: &'static str,
    /// False when the bad PDU is itself a TermReq: the spec says to close without answering.
    pub reply: bool,
}

impl PduError {
    /// Positive errno for logs and callers that fail pending commands.
    pub fn errno(&self) -> i32 {
        libc::EPROTO
    }
}

fn bad(fes: Fes, fei: u32, reason: &'static str) -> PduError {
    PduError {
        fes,
        fei,
        reason,
        reply: true,
    }
}

fn bad_field(fei: u32, reason: &'static str) -> PduError {
    bad(Fes::InvalidHeaderField, fei, reason)
}

/// Data of a PDU, or the digest mismatch that makes it unusable.
pub type Payload<'a> = Result<&'a [u8], DigestMismatch>;

/// One received PDU: its header and the data it carries, digests checked and stripped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pdu<'a> {
    IcReq(IcReq),
    IcResp(IcResp),
    /// `offending`: the header copy the peer sent with its TermReq (at most 128 bytes).
    H2CTermReq {
        term: TermReq,
        offending: &'a [u8],
    },
    C2HTermReq {
        term: TermReq,
        offending: &'a [u8],
    },
    /// `data`: in-capsule data, empty when there is none.
    CapsuleCmd {
        cmd: CapsuleCmd,
        data: Payload<'a>,
    },
    CapsuleResp(CapsuleResp),
    H2CData {
        hdr: H2CData,
        data: Payload<'a>,
    },
    C2HData {
        hdr: C2HData,
        data: Payload<'a>,
    },
    R2T(R2T),
}

impl Pdu<'_> {
    /// The PDU's type.
    pub fn pdu_type(&self) -> PduType {
        self.header().pdu_type()
    }

    /// The PDU's header alone (for logs and code that handles any type).
    pub fn header(&self) -> Header {
        match *self {
            Self::IcReq(h) => Header::IcReq(h),
            Self::IcResp(h) => Header::IcResp(h),
            Self::H2CTermReq { term, .. } => Header::H2CTermReq(term),
            Self::C2HTermReq { term, .. } => Header::C2HTermReq(term),
            Self::CapsuleCmd { cmd, .. } => Header::CapsuleCmd(cmd),
            Self::CapsuleResp(h) => Header::CapsuleResp(h),
            Self::H2CData { hdr, .. } => Header::H2CData(hdr),
            Self::C2HData { hdr, .. } => Header::C2HData(hdr),
            Self::R2T(h) => Header::R2T(h),
        }
    }
}

/// Checks the common header at the start of `buf` and says where the PDU's parts are.
/// `Ok(None)` until the 8 bytes are in. `Frame::len` is how many bytes the whole PDU takes.
pub fn peek(buf: &[u8], cfg: &StreamConfig) -> Result<Option<Frame>, PduError> {
    let Some(chb) = buf.get(..CH_LEN) else {
        return Ok(None);
    };
    let ch = CommonHeader::decode(chb).map_err(|_| bad_field(0, "short common header"))?;
    check_common(&ch, cfg).map(Some)
}

/// The total length of the PDU at the start of `buf` (PLEN, checked), once its common
/// header is in: how many bytes to read before [`parse`] can return it.
pub fn pdu_len(buf: &[u8], cfg: &StreamConfig) -> Result<Option<usize>, PduError> {
    Ok(peek(buf, cfg)?.map(|f| f.len))
}

fn check_common(ch: &CommonHeader, cfg: &StreamConfig) -> Result<Frame, PduError> {
    // PDU type (offset 0).
    let t = PduType::from_u8(ch.pdu_type).ok_or(bad_field(0, "unknown PDU type"))?;
    if t.direction() != cfg.expect {
        return Err(bad_field(0, "PDU type not sent in this direction"));
    }
    let is_ic = matches!(t, PduType::IcReq | PduType::IcResp);
    let is_term = matches!(t, PduType::H2CTermReq | PduType::C2HTermReq);
    if cfg.before_icreq && !is_ic && !is_term {
        return Err(bad(
            Fes::PduSequenceError,
            0,
            "PDU before the connection is initialised",
        ));
    }
    if !cfg.before_icreq && is_ic {
        return Err(bad(
            Fes::PduSequenceError,
            0,
            "IC PDU on an initialised connection",
        ));
    }
    let plen = ch.plen as usize;
    let hlen = t.hlen();

    if is_term {
        // Never answer a TermReq with a TermReq: any error here just closes.
        let quiet = |fei, reason| PduError {
            reply: false,
            ..bad_field(fei, reason)
        };
        if usize::from(ch.hlen) != hlen {
            return Err(quiet(CommonHeader::HLEN_OFFSET, "TermReq HLEN is not 24"));
        }
        if !(TERM_REQ_HLEN..=TERM_REQ_HLEN + TERM_REQ_DATA_MAX).contains(&plen) {
            return Err(quiet(
                CommonHeader::PLEN_OFFSET,
                "TermReq PLEN out of range",
            ));
        }
        return Ok(Frame {
            pdu_type: t,
            header_len: TERM_REQ_HLEN,
            data_len: plen - TERM_REQ_HLEN,
            data_digest: false,
            len: plen,
        });
    }
    if is_ic {
        // The IC PDUs carry no digests whatever their flags say; only the lengths matter.
        if usize::from(ch.hlen) != IC_LEN {
            return Err(bad_field(
                CommonHeader::HLEN_OFFSET,
                "IC PDU HLEN is not 128",
            ));
        }
        if plen != IC_LEN {
            return Err(bad_field(
                CommonHeader::PLEN_OFFSET,
                "IC PDU PLEN is not 128",
            ));
        }
        return Ok(Frame {
            pdu_type: t,
            header_len: IC_LEN,
            data_len: 0,
            data_digest: false,
            len: IC_LEN,
        });
    }

    let full_hlen = hlen + if cfg.hdgst { DIGEST_LEN } else { 0 };
    let has_data = t.carries_data() && plen > full_hlen;
    let data_digest = cfg.ddgst && has_data;

    // Flags (offset 1): the digest flags must say exactly what was agreed.
    if (ch.flags & flags::HDGSTF != 0) != cfg.hdgst {
        return Err(bad_field(
            CommonHeader::FLAGS_OFFSET,
            if cfg.hdgst {
                "header digest flag missing"
            } else {
                "header digest flag set but not agreed"
            },
        ));
    }
    if (ch.flags & flags::DDGSTF != 0) != data_digest {
        return Err(bad_field(
            CommonHeader::FLAGS_OFFSET,
            if data_digest {
                "data digest flag missing"
            } else {
                "data digest flag set without agreed digest or data"
            },
        ));
    }
    if t == PduType::C2HData && ch.flags & (flags::SUCCESS | flags::LAST_PDU) == flags::SUCCESS {
        return Err(bad_field(
            CommonHeader::FLAGS_OFFSET,
            "C2HData SUCCESS without LAST_PDU",
        ));
    }

    // HLEN (offset 2).
    if usize::from(ch.hlen) != hlen {
        return Err(bad_field(
            CommonHeader::HLEN_OFFSET,
            "wrong HLEN for the PDU type",
        ));
    }

    // PDO (offset 3): 0 or the end of the header when there is no data; otherwise at or past
    // the header, within the PDU, on the alignment this side asked for.
    let pdo = usize::from(ch.pdo);
    if has_data {
        let align = (usize::from(cfg.pda.min(PDA_MAX)) + 1) * 4;
        if pdo < full_hlen || pdo > plen || pdo % align != 0 {
            return Err(bad_field(CommonHeader::PDO_OFFSET, "bad PDO"));
        }
    } else if pdo != 0 && pdo != full_hlen {
        return Err(bad_field(
            CommonHeader::PDO_OFFSET,
            "PDO on a PDU without data",
        ));
    }

    // PLEN (offset 4).
    if plen < full_hlen {
        return Err(bad_field(
            CommonHeader::PLEN_OFFSET,
            "PLEN shorter than the header",
        ));
    }
    if !has_data {
        if plen != full_hlen {
            return Err(bad_field(
                CommonHeader::PLEN_OFFSET,
                "PLEN past the header of a PDU without data",
            ));
        }
        if matches!(t, PduType::H2CData | PduType::C2HData) {
            return Err(bad_field(
                CommonHeader::PLEN_OFFSET,
                "data PDU without data",
            ));
        }
        return Ok(Frame {
            pdu_type: t,
            header_len: full_hlen,
            data_len: 0,
            data_digest: false,
            len: plen,
        });
    }
    let ddgst_len = if data_digest { DIGEST_LEN } else { 0 };
    let data_len = match (plen - pdo).checked_sub(ddgst_len) {
        Some(n) if n > 0 => n,
        _ => {
            return Err(bad_field(
                CommonHeader::PLEN_OFFSET,
                "PLEN leaves no room for data",
            ));
        }
    };
    if data_len > cfg.max_data as usize {
        return Err(bad(
            Fes::DataLimitExceeded,
            0,
            "more data than the connection allows",
        ));
    }
    Ok(Frame {
        pdu_type: t,
        header_len: pdo,
        data_len,
        data_digest,
        len: plen,
    })
}

/// Checks and decodes the header of the PDU at the start of `buf`, header digest included,
/// once `Frame::header_len` bytes are in (`Ok(None)` before). The data is not looked at.
pub fn parse_header(buf: &[u8], cfg: &StreamConfig) -> Result<Option<(Header, Frame)>, PduError> {
    let Some(frame) = peek(buf, cfg)? else {
        return Ok(None);
    };
    let Some(head) = buf.get(..frame.header_len) else {
        return Ok(None);
    };
    let t = frame.pdu_type;
    let hlen = t.hlen();
    if cfg.hdgst && t.takes_digests() {
        match digest::verify(head, hlen) {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                return Err(bad(Fes::HeaderDigestError, 0, "header digest mismatch"));
            }
            Err(_) => return Err(bad_field(CommonHeader::HLEN_OFFSET, "header cut short")),
        }
    }
    let header = Header::decode(t, head)
        .map_err(|_| bad_field(CommonHeader::HLEN_OFFSET, "header cut short"))?;
    check_fields(&header, &frame)?;
    Ok(Some((header, frame)))
}

/// The type-specific rules the parser can check without knowing the commands in flight.
fn check_fields(header: &Header, frame: &Frame) -> Result<(), PduError> {
    let pda_ok = |pfv: u16, pda: u8| -> Result<(), PduError> {
        if pfv != 0 {
            return Err(bad_field(8, "unsupported PDU format version"));
        }
        if pda > PDA_MAX {
            return Err(bad_field(10, "PDA over 31"));
        }
        Ok(())
    };
    match header {
        Header::IcReq(h) => pda_ok(h.pfv, h.hpda),
        Header::IcResp(h) => {
            pda_ok(h.pfv, h.cpda)?;
            if h.maxh2cdata < 4096 || h.maxh2cdata % 4 != 0 {
                return Err(bad_field(
                    12,
                    "MAXH2CDATA under 4096 or not a multiple of 4",
                ));
            }
            Ok(())
        }
        Header::H2CData(H2CData { datal, .. }) | Header::C2HData(C2HData { datal, .. })
            if *datal as usize != frame.data_len =>
        {
            Err(bad_field(
                H2CData::DATAL_OFFSET,
                "DATAL differs from the data in the PDU",
            ))
        }
        Header::R2T(r) if r.r2tl == 0 => Err(bad_field(16, "R2T for no data")),
        _ => Ok(()),
    }
}

/// Parses the PDU at the start of `buf`: `Ok(Some((pdu, consumed)))` once it is all in,
/// `Ok(None)` before, an error as soon as something already in is wrong.
pub fn parse<'a>(buf: &'a [u8], cfg: &StreamConfig) -> Result<Option<(Pdu<'a>, usize)>, PduError> {
    let Some((header, frame)) = parse_header(buf, cfg)? else {
        return Ok(None);
    };
    let Some(whole) = buf.get(..frame.len) else {
        return Ok(None);
    };
    let cut = || bad_field(CommonHeader::PLEN_OFFSET, "PDU cut short");
    let data = whole.get(frame.data()).ok_or_else(cut)?;
    let payload: Payload<'a> = match frame.data_digest_at() {
        Some(at) => {
            let received = digest::get(whole, at).map_err(|_| cut())?;
            digest::check(digest::crc32c(data), received).map(|()| data)
        }
        None => Ok(data),
    };
    let pdu = match header {
        Header::IcReq(h) => Pdu::IcReq(h),
        Header::IcResp(h) => Pdu::IcResp(h),
        Header::H2CTermReq(term) => Pdu::H2CTermReq {
            term,
            offending: data,
        },
        Header::C2HTermReq(term) => Pdu::C2HTermReq {
            term,
            offending: data,
        },
        Header::CapsuleCmd(cmd) => Pdu::CapsuleCmd { cmd, data: payload },
        Header::CapsuleResp(h) => Pdu::CapsuleResp(h),
        Header::H2CData(hdr) => Pdu::H2CData { hdr, data: payload },
        Header::C2HData(hdr) => Pdu::C2HData { hdr, data: payload },
        Header::R2T(h) => Pdu::R2T(h),
    };
    Ok(Some((pdu, frame.len)))
}

/// The bytes of the bad PDU's header to copy into the TermReq answering `parse`'s error:
/// up to its HLEN (at least the common header), at most 128 bytes, at most what is in `buf`.
pub fn offending_header(buf: &[u8]) -> &[u8] {
    let hlen = buf.get(2).map_or(CH_LEN, |&h| usize::from(h).max(CH_LEN));
    let n = hlen.min(TERM_REQ_DATA_MAX).min(buf.len());
    buf.get(..n).unwrap_or(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::pdu::tests::{arb_framing, arb_header};
    use crate::wire::pdu::{Framing, encode_pdu};
    use proptest::prelude::*;

    const H2C: Direction = Direction::HostToController;
    const C2H: Direction = Direction::ControllerToHost;

    fn cfg(expect: Direction, hdgst: bool, ddgst: bool) -> StreamConfig {
        StreamConfig {
            hdgst,
            ddgst,
            max_data: 8192,
            pda: 0,
            expect,
            before_icreq: false,
        }
    }

    fn framing(c: &StreamConfig) -> Framing {
        Framing {
            hdgst: c.hdgst,
            ddgst: c.ddgst,
            pda: c.pda,
        }
    }

    fn enc(h: &Header, c: &StreamConfig, data: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; 16384];
        let n = encode_pdu(&mut buf, h, &framing(c), data).unwrap();
        buf.truncate(n);
        buf
    }

    fn le32(v: u32) -> [u8; 4] {
        v.to_le_bytes()
    }

    fn err(buf: &[u8], c: &StreamConfig) -> PduError {
        parse(buf, c).unwrap_err()
    }

    fn cmd() -> Header {
        Header::CapsuleCmd(CapsuleCmd {
            sqe: core::array::from_fn(|i| i as u8),
        })
    }

    fn h2c_data(len: u32) -> Header {
        Header::H2CData(H2CData {
            cccid: 3,
            ttag: 1,
            datao: 0,
            datal: len,
            last: true,
        })
    }

    /// Linux's ICReq (hpda 0, both digests, maxr2t 0), byte by byte.
    fn linux_icreq() -> Vec<u8> {
        let mut b = vec![0u8; 128];
        b[2] = 128;
        b[4..8].copy_from_slice(&le32(128));
        b[11] = 0x03;
        b
    }

    #[test]
    fn icreq_golden_parses_before_init_only() {
        let b = linux_icreq();
        let c = StreamConfig::initial(H2C, 8192);
        let (pdu, n) = parse(&b, &c).unwrap().unwrap();
        assert_eq!(n, 128);
        assert_eq!(
            pdu,
            Pdu::IcReq(IcReq {
                pfv: 0,
                hpda: 0,
                hdgst: true,
                ddgst: true,
                maxr2t: 0
            })
        );
        assert_eq!(pdu_len(&b[..8], &c), Ok(Some(128)));
        assert_eq!(pdu_len(&b[..7], &c), Ok(None));
        for cut in 0..128 {
            assert_eq!(parse(&b[..cut], &c), Ok(None), "cut at {cut}");
        }
        // A second ICReq is a sequence error.
        let after = cfg(H2C, true, true);
        assert_eq!(err(&b, &after).fes, Fes::PduSequenceError);
        // The host never receives one.
        let host = StreamConfig::initial(C2H, 8192);
        assert_eq!(err(&b, &host).fes, Fes::InvalidHeaderField);
        assert_eq!(err(&b, &host).fei, 0);
    }

    #[test]
    fn ic_field_rules() {
        let c = StreamConfig::initial(H2C, 8192);
        let mut b = linux_icreq();
        b[8] = 1; // pfv 1
        assert_eq!(
            (err(&b, &c).fes, err(&b, &c).fei),
            (Fes::InvalidHeaderField, 8)
        );
        let mut b = linux_icreq();
        b[10] = 32; // hpda
        assert_eq!(err(&b, &c).fei, 10);
        let mut b = linux_icreq();
        b[4..8].copy_from_slice(&le32(132));
        assert_eq!(err(&b[..8], &c).fei, 4);
        let mut b = linux_icreq();
        b[2] = 24;
        assert_eq!(err(&b[..8], &c).fei, 2);

        let host = StreamConfig::initial(C2H, 8192);
        let resp = |maxh2cdata| {
            enc(
                &Header::IcResp(IcResp {
                    pfv: 0,
                    cpda: 0,
                    hdgst: false,
                    ddgst: false,
                    maxh2cdata,
                }),
                &host,
                &[],
            )
        };
        assert!(parse(&resp(4096), &host).unwrap().is_some());
        assert_eq!(err(&resp(4095), &host).fei, 12);
        assert_eq!(err(&resp(4098), &host).fei, 12);
    }

    #[test]
    fn capsule_cmd_before_icreq_is_a_sequence_error() {
        let c = StreamConfig::initial(H2C, 8192);
        let b = enc(&cmd(), &c, &[]);
        let e = err(&b[..8], &c);
        assert_eq!(e.fes, Fes::PduSequenceError);
        assert!(e.reply);
        // A TermReq is fine before the IC exchange.
        let t = enc(
            &Header::H2CTermReq(TermReq::new(Fes::PduSequenceError, 0)),
            &c,
            &b[..8],
        );
        let (pdu, _) = parse(&t, &c).unwrap().unwrap();
        assert_eq!(
            pdu,
            Pdu::H2CTermReq {
                term: TermReq::new(Fes::PduSequenceError, 0),
                offending: &b[..8]
            }
        );
    }

    #[test]
    fn types_not_sent_in_the_direction_are_refused() {
        let target = cfg(H2C, false, false);
        let host = cfg(C2H, false, false);
        let resp = enc(
            &Header::CapsuleResp(CapsuleResp { cqe: [0; 16] }),
            &host,
            &[],
        );
        let e = err(&resp, &target);
        assert_eq!((e.fes, e.fei), (Fes::InvalidHeaderField, 0));
        let r2t = enc(
            &Header::R2T(R2T {
                cccid: 1,
                ttag: 1,
                r2to: 0,
                r2tl: 8,
            }),
            &host,
            &[],
        );
        assert_eq!(err(&r2t, &target).fei, 0);
        let c = enc(&cmd(), &target, &[]);
        assert_eq!(err(&c, &host).fei, 0);
        assert!(parse(&c, &target).unwrap().is_some());
        assert!(parse(&resp, &host).unwrap().is_some());
        // Unassigned types.
        for t in [0x08u8, 0x0A, 0x7F, 0xFF] {
            let mut b = c.clone();
            b[0] = t;
            assert_eq!(err(&b, &target).fei, 0);
            assert_eq!(err(&b, &host).fei, 0);
        }
    }

    #[test]
    fn wrong_hlen_and_plen() {
        let c = cfg(H2C, false, false);
        let mut b = enc(&cmd(), &c, &[]);
        b[2] = 24;
        assert_eq!(
            (err(&b[..8], &c).fes, err(&b[..8], &c).fei),
            (Fes::InvalidHeaderField, 2)
        );
        // plen < hlen.
        let mut b = enc(&cmd(), &c, &[]);
        b[4..8].copy_from_slice(&le32(70));
        assert_eq!(err(&b[..8], &c).fei, 4);
        let host = cfg(C2H, false, false);
        let mut r = enc(
            &Header::CapsuleResp(CapsuleResp { cqe: [0; 16] }),
            &host,
            &[],
        );
        r[4..8].copy_from_slice(&le32(20));
        assert_eq!(err(&r, &host).fei, 4);
        // A CapsuleResp with extra bytes.
        r[4..8].copy_from_slice(&le32(28));
        assert_eq!(err(&r, &host).fei, 4);
        // An H2CData without data.
        let mut d = enc(&h2c_data(4), &c, &[1, 2, 3, 4]);
        d[3] = 0;
        d[4..8].copy_from_slice(&le32(24));
        assert_eq!(err(&d[..8], &c).fei, 4);
    }

    #[test]
    fn pdo_rules() {
        let mut c = cfg(H2C, true, false);
        c.pda = 1; // 8-byte alignment: 72 + 4 = 76 pads to 80
        let good = enc(&cmd(), &c, &[9; 16]);
        assert_eq!(good[3], 80);
        assert!(parse(&good, &c).unwrap().is_some());
        // Larger multiples of the alignment are allowed too.
        let mut c4 = c;
        c4.pda = 0;
        assert!(parse(&good, &c4).unwrap().is_some());
        // Misaligned, inside the header, past the PDU.
        for pdo in [76u8, 84, 72, 0] {
            let mut b = good.clone();
            b[3] = pdo;
            let e = parse(&b, &c).unwrap_err();
            assert_eq!((e.fes, e.fei), (Fes::InvalidHeaderField, 3), "pdo {pdo}");
        }
        // PDO on a PDU without data: 0 or the header's end.
        let host = cfg(C2H, false, false);
        let mut r = enc(
            &Header::CapsuleResp(CapsuleResp { cqe: [0; 16] }),
            &host,
            &[],
        );
        r[3] = 24;
        assert!(parse(&r, &host).unwrap().is_some());
        r[3] = 8;
        assert_eq!(err(&r, &host).fei, 3);
    }

    #[test]
    fn data_over_the_limit_is_refused_from_the_common_header() {
        let mut c = cfg(H2C, false, false);
        c.max_data = 4096;
        let ok = enc(&h2c_data(4096), &c, &[0; 4096]);
        assert!(parse(&ok, &c).unwrap().is_some());
        let big = enc(&h2c_data(4100), &c, &[0; 4100]);
        // Eight bytes are enough to refuse it: nobody waits for the rest.
        let e = err(&big[..8], &c);
        assert_eq!(e.fes, Fes::DataLimitExceeded);
        assert_eq!(pdu_len(&big[..8], &c), Err(e));
        // In-capsule data too.
        let big_cmd = enc(&cmd(), &c, &[0; 4097]);
        assert_eq!(err(&big_cmd[..8], &c).fes, Fes::DataLimitExceeded);
        // A PLEN of 4 GiB.
        let mut huge = ok.clone();
        huge[4..8].copy_from_slice(&le32(u32::MAX));
        assert_eq!(err(&huge[..8], &c).fes, Fes::DataLimitExceeded);
    }

    #[test]
    fn digest_flags_must_match_what_was_agreed() {
        let both = cfg(H2C, true, true);
        let none = cfg(H2C, false, false);
        // Sent without digests to a side that agreed both: HDGSTF missing.
        let plain = enc(&h2c_data(4), &none, &[1, 2, 3, 4]);
        let e = err(&plain[..8], &both);
        assert_eq!((e.fes, e.fei), (Fes::InvalidHeaderField, 1));
        assert_eq!(e.reason, "header digest flag missing");
        // With both digests to a side that agreed none.
        let dig = enc(&h2c_data(4), &both, &[1, 2, 3, 4]);
        assert_eq!(err(&dig[..8], &none).fei, 1);
        // Data digest flag missing.
        let hd_only = cfg(H2C, true, false);
        let b = enc(&h2c_data(4), &hd_only, &[1, 2, 3, 4]);
        let e = err(&b[..8], &both);
        assert_eq!((e.fei, e.reason), (1, "data digest flag missing"));
        // DDGSTF on a command without data.
        let mut c = enc(&cmd(), &both, &[]);
        c[1] |= flags::DDGSTF;
        assert_eq!(err(&c[..8], &both).fei, 1);
        // C2HData SUCCESS without LAST_PDU.
        let host = cfg(C2H, false, false);
        let mut d = enc(
            &Header::C2HData(C2HData {
                cccid: 1,
                datao: 0,
                datal: 4,
                last: true,
                success: true,
            }),
            &host,
            &[0; 4],
        );
        assert!(parse(&d, &host).unwrap().is_some());
        d[1] &= !flags::LAST_PDU;
        assert_eq!(err(&d, &host).fei, 1);
    }

    #[test]
    fn bad_header_digest_is_fes_3() {
        let c = cfg(H2C, true, true);
        let mut b = enc(&h2c_data(8), &c, &[7; 8]);
        b[10] ^= 0x40; // ttag
        // Reported once the header and its digest are in, before the data.
        assert_eq!(parse(&b[..27], &c), Ok(None));
        let e = err(&b[..28], &c);
        assert_eq!(e.fes, Fes::HeaderDigestError);
        assert!(e.reply);
        let mut b = enc(&h2c_data(8), &c, &[7; 8]);
        b[25] ^= 1; // the digest itself
        assert_eq!(err(&b, &c).fes, Fes::HeaderDigestError);
    }

    #[test]
    fn bad_data_digest_fails_the_pdu_not_the_stream() {
        let c = cfg(H2C, true, true);
        let data = [7u8; 8];
        let mut b = enc(&h2c_data(8), &c, &data);
        let good_len = b.len();
        b[30] ^= 0x01;
        b.extend_from_slice(&enc(&cmd(), &c, &[]));
        let (pdu, n) = parse(&b, &c).unwrap().unwrap();
        assert_eq!(n, good_len);
        let Pdu::H2CData { hdr, data: payload } = pdu else {
            panic!("{pdu:?}")
        };
        assert_eq!(hdr.datal, 8);
        let mismatch = payload.unwrap_err();
        assert_eq!(mismatch.received, digest::crc32c(&[7u8; 8]));
        // The stream goes on.
        let (next, _) = parse(&b[n..], &c).unwrap().unwrap();
        assert_eq!(next.pdu_type(), PduType::CapsuleCmd);
        // In-capsule data too.
        let mut cc = enc(&cmd(), &c, &data);
        let last = cc.len() - 1;
        cc[last] ^= 0x80;
        let (pdu, _) = parse(&cc, &c).unwrap().unwrap();
        assert!(matches!(pdu, Pdu::CapsuleCmd { data: Err(_), .. }));
    }

    #[test]
    fn datal_and_r2tl_rules() {
        let c = cfg(H2C, false, false);
        let mut b = enc(&h2c_data(8), &c, &[0; 8]);
        b[16] = 9;
        let e = err(&b, &c);
        assert_eq!((e.fes, e.fei), (Fes::InvalidHeaderField, 16));
        let host = cfg(C2H, false, false);
        let mut r = enc(
            &Header::R2T(R2T {
                cccid: 1,
                ttag: 1,
                r2to: 0,
                r2tl: 1,
            }),
            &host,
            &[],
        );
        assert!(parse(&r, &host).unwrap().is_some());
        r[16] = 0;
        assert_eq!(err(&r, &host).fei, 16);
    }

    #[test]
    fn term_req_errors_close_without_answer() {
        let host = cfg(C2H, true, true);
        let mut t = enc(
            &Header::C2HTermReq(TermReq::new(Fes::HeaderDigestError, 0)),
            &host,
            &[0xAB; 20],
        );
        // A TermReq is readable whatever the digests (it carries none).
        let (pdu, n) = parse(&t, &host).unwrap().unwrap();
        assert_eq!(n, 44);
        assert!(matches!(pdu, Pdu::C2HTermReq { offending, .. } if offending == [0xAB; 20]));
        t[4..8].copy_from_slice(&le32(24 + 129));
        let e = err(&t[..8], &host);
        assert!(!e.reply);
        t[4..8].copy_from_slice(&le32(23));
        assert!(!err(&t[..8], &host).reply);
        t[2] = 28;
        assert!(!err(&t[..8], &host).reply);
    }

    #[test]
    fn offending_header_is_bounded() {
        assert_eq!(offending_header(&[]), &[] as &[u8]);
        assert_eq!(offending_header(&[1, 2, 3]), &[1, 2, 3]);
        let mut b = vec![0u8; 300];
        b[2] = 72;
        assert_eq!(offending_header(&b).len(), 72);
        b[2] = 255;
        assert_eq!(offending_header(&b).len(), 128);
        b[2] = 0;
        assert_eq!(offending_header(&b).len(), 8);
    }

    #[test]
    fn golden_capsule_resp_and_r2t_streams() {
        // Two PDUs back to back, built byte by byte, header digests on.
        let host = cfg(C2H, true, true);
        let cqe: [u8; 16] = [1, 0, 0, 0, 0, 0, 0, 0, 5, 0, 1, 0, 0x2A, 0, 1, 0];
        let mut resp = vec![0x05, 0x01, 24, 0];
        resp.extend_from_slice(&le32(28));
        resp.extend_from_slice(&cqe);
        let d = digest::crc32c(&resp);
        resp.extend_from_slice(&le32(d));
        let mut r2t = vec![0x09, 0x01, 24, 0];
        r2t.extend_from_slice(&le32(28));
        r2t.extend_from_slice(&[0x2B, 0, 0x01, 0]);
        r2t.extend_from_slice(&le32(4096));
        r2t.extend_from_slice(&le32(8192));
        r2t.extend_from_slice(&[0; 4]);
        let d = digest::crc32c(&r2t);
        r2t.extend_from_slice(&le32(d));
        let stream = [resp, r2t].concat();
        let (a, n) = parse(&stream, &host).unwrap().unwrap();
        assert_eq!(a, Pdu::CapsuleResp(CapsuleResp { cqe }));
        let (b, m) = parse(&stream[n..], &host).unwrap().unwrap();
        assert_eq!(
            b,
            Pdu::R2T(R2T {
                cccid: 0x2B,
                ttag: 1,
                r2to: 4096,
                r2tl: 8192
            })
        );
        assert_eq!(n + m, stream.len());
        assert_eq!(parse(&stream[n + m..], &host), Ok(None));
    }

    /// Whether the parser accepts `h` on an initialised connection expecting `dir`.
    fn valid_after_init(h: &Header, dir: Direction) -> bool {
        let t = h.pdu_type();
        t.direction() == dir
            && !matches!(t, PduType::IcReq | PduType::IcResp)
            && !matches!(h, Header::R2T(r) if r.r2tl == 0)
    }

    fn arb_cfg() -> impl Strategy<Value = StreamConfig> {
        (arb_framing(), any::<bool>()).prop_map(|(f, h2c)| StreamConfig {
            hdgst: f.hdgst,
            ddgst: f.ddgst,
            max_data: 300,
            pda: f.pda,
            expect: if h2c { H2C } else { C2H },
            before_icreq: false,
        })
    }

    /// A connection's config, the PDUs of a stream valid for it, and their bytes.
    type Stream = (StreamConfig, Vec<(Header, Vec<u8>)>, Vec<u8>);

    fn arb_stream() -> impl Strategy<Value = Stream> {
        arb_cfg()
            .prop_flat_map(|c| {
                let dir = c.expect;
                let pdus = proptest::collection::vec(
                    arb_header().prop_filter("valid in the direction", move |(h, _)| {
                        valid_after_init(h, dir)
                    }),
                    1..6,
                );
                (Just(c), pdus)
            })
            .prop_map(|(c, pdus)| {
                let mut bytes = Vec::new();
                for (h, d) in &pdus {
                    bytes.extend_from_slice(&enc(h, &c, d));
                }
                (c, pdus, bytes)
            })
    }

    /// The header and data of a parsed PDU, for comparison with what was encoded.
    fn parts<'a>(p: &Pdu<'a>) -> (Header, Result<&'a [u8], DigestMismatch>) {
        let data = match *p {
            Pdu::H2CTermReq { offending, .. } | Pdu::C2HTermReq { offending, .. } => Ok(offending),
            Pdu::CapsuleCmd { data, .. }
            | Pdu::H2CData { data, .. }
            | Pdu::C2HData { data, .. } => data,
            _ => Ok(&[][..]),
        };
        (p.header(), data)
    }

    /// Arbitrary bytes, sometimes with a plausible common header so the checks past the type
    /// byte get exercised too.
    fn arb_bytes() -> impl Strategy<Value = Vec<u8>> {
        (
            proptest::collection::vec(any::<u8>(), 0..400),
            proptest::option::of((0usize..9, any::<u32>())),
        )
            .prop_map(|(mut b, fix)| {
                if let (Some((t, plen)), true) = (fix, b.len() >= 8) {
                    let types = [0u8, 1, 2, 3, 4, 5, 6, 7, 9];
                    let t = PduType::from_u8(types[t]).unwrap();
                    b[0] = t as u8;
                    b[2] = t.hlen() as u8;
                    let plen = plen % (b.len() as u32 + 8);
                    b[4..8].copy_from_slice(&plen.to_le_bytes());
                }
                b
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_bytes_never_panic(b in arb_bytes(), mut c in arb_cfg(), before in any::<bool>()) {
            c.before_icreq = before;
            let _ = offending_header(&b);
            let peeked = peek(&b, &c);
            let head = parse_header(&b, &c);
            match parse(&b, &c) {
                Ok(Some((pdu, n))) => {
                    prop_assert!(n <= b.len() && n >= CH_LEN);
                    prop_assert_eq!(pdu.pdu_type().direction(), c.expect);
                    prop_assert_eq!(peeked, Ok(Some(parse_header(&b, &c).unwrap().unwrap().1)));
                    prop_assert_eq!(pdu_len(&b, &c), Ok(Some(n)));
                    prop_assert_eq!(head.unwrap().unwrap().0, pdu.header());
                }
                Ok(None) => prop_assert!(peeked.is_ok() && head.is_ok()),
                Err(e) => {
                    // An error from the common header shows up in all three.
                    if let Err(pe) = peeked {
                        prop_assert_eq!(pe, e);
                    }
                    prop_assert_eq!(e.errno(), libc::EPROTO);
                }
            }
        }

        #[test]
        fn valid_streams_parse_back((c, pdus, bytes) in arb_stream()) {
            let mut at = 0;
            for (h, d) in &pdus {
                let (pdu, n) = parse(&bytes[at..], &c).unwrap().unwrap();
                prop_assert_eq!(parts(&pdu), (*h, Ok(&d[..])));
                at += n;
            }
            prop_assert_eq!(at, bytes.len());
            prop_assert_eq!(parse(&bytes[at..], &c), Ok(None));
        }

        #[test]
        fn truncated_streams_wait(
            (c, pdus, bytes) in arb_stream(),
            cut in any::<proptest::sample::Index>(),
        ) {
            // Every PDU wholly inside the prefix comes back; then more bytes are asked for.
            let cut = cut.index(bytes.len() + 1);
            let b = &bytes[..cut];
            let mut at = 0;
            let mut i = 0;
            while let Some((pdu, n)) = parse(&b[at..], &c).unwrap() {
                let (h, d) = &pdus[i];
                prop_assert_eq!(parts(&pdu), (*h, Ok(&d[..])));
                at += n;
                i += 1;
            }
            let mut end = 0;
            let whole = pdus
                .iter()
                .take_while(|(h, d)| {
                    end += enc(h, &c, d).len();
                    end <= cut
                })
                .count();
            prop_assert_eq!(i, whole);
        }

        #[test]
        fn every_truncation_of_one_pdu_waits((c, pdus, bytes) in arb_stream()) {
            let first = enc(&pdus[0].0, &c, &pdus[0].1);
            for cut in 0..first.len() {
                prop_assert_eq!(parse(&bytes[..cut], &c), Ok(None), "cut at {}", cut);
            }
            prop_assert!(parse(&bytes[..first.len()], &c).unwrap().is_some());
        }

        #[test]
        fn bit_flips_under_digests_are_caught(
            (mut c, pdus, _) in arb_stream(),
            flip in any::<proptest::sample::Index>(),
            bit in 0u8..8,
        ) {
            c.hdgst = true;
            c.ddgst = true;
            let mut bytes = Vec::new();
            let mut starts = Vec::new();
            for (h, d) in &pdus {
                starts.push(bytes.len());
                bytes.extend_from_slice(&enc(h, &c, d));
            }
            let pos = flip.index(bytes.len());
            bytes[pos] ^= 1 << bit;
            let hit = starts.iter().rposition(|&s| s <= pos).unwrap();
            let mut at = 0;
            for (i, (h, d)) in pdus.iter().enumerate() {
                let r = parse(&bytes[at..], &c);
                if i < hit {
                    let (pdu, n) = r.unwrap().unwrap();
                    prop_assert_eq!(parts(&pdu), (*h, Ok(&d[..])));
                    at += n;
                    continue;
                }
                let frame = h.frame(&framing(&c), d.len()).unwrap();
                let off = pos - at;
                let in_pad = off >= h.pdu_type().hlen() + DIGEST_LEN && off < frame.header_len;
                let in_term = matches!(h, Header::H2CTermReq(_) | Header::C2HTermReq(_));
                match r {
                    // Header and TermReq flips are refused (a TermReq has no digest to catch
                    // a flip, so it may also come back changed, or wait for more bytes).
                    Err(_) | Ok(None) => prop_assert!(!in_pad),
                    Ok(Some((pdu, _))) => {
                        let (got_h, got_d) = parts(&pdu);
                        let got_term =
                            matches!(got_h, Header::H2CTermReq(_) | Header::C2HTermReq(_));
                        if in_term || got_term {
                            // Nothing protects a TermReq (and a flip of the type byte can make
                            // one, e.g. C2HData 7 → C2HTermReq 3); it ends the connection
                            // either way, so only its shape is checked.
                            prop_assert!(matches!(got_h, Header::H2CTermReq(_) | Header::C2HTermReq(_)));
                        } else if in_pad {
                            // Padding is covered by no digest and ignored.
                            prop_assert_eq!((got_h, got_d), (*h, Ok(&d[..])));
                        } else {
                            // Otherwise only a data flip gets through, as a digest mismatch.
                            prop_assert_eq!(got_h, *h);
                            prop_assert!(got_d.is_err());
                        }
                    }
                }
                break;
            }
        }

        #[test]
        fn bit_flips_without_digests_never_panic(
            (c, _, mut bytes) in arb_stream(),
            flip in any::<proptest::sample::Index>(),
            bit in 0u8..8,
        ) {
            let pos = flip.index(bytes.len());
            bytes[pos] ^= 1 << bit;
            let mut at = 0;
            while let Ok(Some((_, n))) = parse(&bytes[at..], &c) {
                prop_assert!(n > 0);
                at += n;
                prop_assert!(at <= bytes.len());
            }
        }
    }
}
