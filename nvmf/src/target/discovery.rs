//! The discovery log page (70h): a 1024-byte header (GENCTR, NUMREC, RECFMT) and one 1024-byte
//! entry per (subsystem that allows the host) × (its listeners), plus one "current discovery
//! subsystem" entry per listener added to the discovery subsystem itself — as SPDK builds it.
//! A host reads it in pieces (the header, then the entries) and compares GENCTR between reads,
//! so the requested window is encoded entry by entry straight into the host's buffer.
//!
//! ```text
//! header  0 genctr u64  8 numrec u64  16 recfmt u16
//! entry   0 trtype  1 adrfam  2 subtype  3 treq  4 portid u16  6 cntlid u16  8 asqsz u16
//!        10 eflags u16  32 trsvcid[32] (space padded)  256 subnqn[256] (NUL padded)
//!       512 traddr[256] (space padded)  768 tsas[256] (TCP: byte 0 sectype)
//! ```

use crate::target::options::TransportOptions;
use crate::target::subsystem::{DISCOVERY_NQN, ListenAddress, SubsystemType, Target};
use crate::wire::le::{self, Pad, Result as WireResult};
use crate::wire::status::Status;
use std::collections::BTreeSet;

/// Bytes of the header and of each entry.
pub const HEADER_LEN: usize = 1024;
pub const ENTRY_LEN: usize = 1024;

/// TRTYPE: TCP.
pub const TRTYPE_TCP: u8 = 3;
/// ADRFAM values.
pub const ADRFAM_IPV4: u8 = 1;
pub const ADRFAM_IPV6: u8 = 2;
/// SUBTYPE values.
pub mod subtype {
    /// A referral to another discovery service.
    pub const REFERRAL: u8 = 1;
    /// An NVM subsystem.
    pub const NVME: u8 = 2;
    /// This discovery subsystem.
    pub const CURRENT_DISCOVERY: u8 = 3;
}
/// TREQ: a secure channel is not required.
pub const TREQ_SECURE_CHANNEL_NOT_REQUIRED: u8 = 2;
/// EFLAGS: duplicate returned information; explicit persistent connections supported.
pub const EFLAGS_DUPRETINFO: u16 = 1 << 0;
pub const EFLAGS_EPCSD: u16 = 1 << 1;
/// CNTLID: the controller is allocated at Connect.
pub const CNTLID_DYNAMIC: u16 = 0xFFFF;

/// One entry of the log, before encoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub subtype: u8,
    pub subnqn: String,
    pub addr: ListenAddress,
    pub portid: u16,
    pub eflags: u16,
}

/// The log's generation counter and records for `hostnqn`, in subsystem order. GENCTR is read
/// first: a change while the records are gathered makes the host's next read see a newer
/// GENCTR and start over.
pub fn records(hostnqn: &str) -> (u64, Vec<Record>) {
    let target = Target::get();
    let genctr = target.discovery_generation();
    let subsystems = target.subsystems();
    // A port ID per listen address, the same in every subsystem that listens there.
    let mut ports = BTreeSet::new();
    let mut out = Vec::new();
    for s in &subsystems {
        let st = s.lock();
        for l in &st.listeners {
            ports.insert((l.traddr.clone(), l.trsvcid.clone()));
        }
        if st.deleted || !st.allows_host(hostnqn) {
            continue;
        }
        let (sub, eflags) = match st.subtype {
            SubsystemType::Discovery => {
                (subtype::CURRENT_DISCOVERY, EFLAGS_DUPRETINFO | EFLAGS_EPCSD)
            }
            SubsystemType::Nvme => (subtype::NVME, 0),
        };
        for l in &st.listeners {
            out.push(Record {
                subtype: sub,
                subnqn: if st.subtype == SubsystemType::Discovery {
                    DISCOVERY_NQN.to_string()
                } else {
                    st.nqn.clone()
                },
                addr: l.clone(),
                portid: 0,
                eflags,
            });
        }
    }
    for r in &mut out {
        let key = (r.addr.traddr.clone(), r.addr.trsvcid.clone());
        r.portid = ports
            .iter()
            .position(|p| *p == key)
            .and_then(|i| u16::try_from(i).ok())
            .unwrap_or(0);
    }
    (genctr, out)
}

/// Writes the 1024-byte header.
pub fn encode_header(genctr: u64, numrec: u64, b: &mut [u8]) -> WireResult<()> {
    le::zero(b, 0, HEADER_LEN)?;
    le::put_u64(b, 0, genctr)?;
    le::put_u64(b, 8, numrec)?;
    le::put_u16(b, 16, 0)
}

/// Writes one 1024-byte entry.
pub fn encode_entry(r: &Record, asqsz: u16, b: &mut [u8]) -> WireResult<()> {
    le::zero(b, 0, ENTRY_LEN)?;
    le::put_u8(b, 0, TRTYPE_TCP)?;
    le::put_u8(
        b,
        1,
        if r.addr.adrfam == "IPv6" {
            ADRFAM_IPV6
        } else {
            ADRFAM_IPV4
        },
    )?;
    le::put_u8(b, 2, r.subtype)?;
    le::put_u8(b, 3, TREQ_SECURE_CHANNEL_NOT_REQUIRED)?;
    le::put_u16(b, 4, r.portid)?;
    le::put_u16(b, 6, CNTLID_DYNAMIC)?;
    le::put_u16(b, 8, asqsz)?;
    le::put_u16(b, 10, r.eflags)?;
    le::put_str(b, 32, 32, &r.addr.trsvcid, Pad::Space, "trsvcid")?;
    le::put_str(b, 256, 256, &r.subnqn, Pad::Nul, "subnqn")?;
    le::put_str(b, 512, 256, &r.addr.traddr, Pad::Space, "traddr")?;
    // TSAS for TCP: SECTYPE 0, no security.
    Ok(())
}

/// Fills `out` with the log's bytes from `lpo` for `hostnqn` (zero past the end). An offset
/// beyond the log is Invalid Field.
pub fn read(
    hostnqn: &str,
    opts: &TransportOptions,
    lpo: u64,
    out: &mut [u8],
) -> Result<(), Status> {
    let (genctr, recs) = records(hostnqn);
    let size = HEADER_LEN as u64 + ENTRY_LEN as u64 * recs.len() as u64;
    if lpo > size {
        return Err(Status::INVALID_FIELD);
    }
    let asqsz = u16::try_from(opts.max_aq_depth).unwrap_or(u16::MAX);
    out.fill(0);
    let end = lpo.saturating_add(out.len() as u64);
    let mut chunk = [0u8; ENTRY_LEN];
    // Chunk 0 is the header, chunk i the entry i - 1.
    for i in 0..=recs.len() {
        let start = i as u64 * ENTRY_LEN as u64;
        if start >= end || start + ENTRY_LEN as u64 <= lpo {
            continue;
        }
        let built = match i.checked_sub(1).and_then(|e| recs.get(e)) {
            None => encode_header(genctr, recs.len() as u64, &mut chunk),
            Some(r) => encode_entry(r, asqsz, &mut chunk),
        };
        if let Err(e) = built {
            tracing::warn!("discovery log entry {i}: {e}");
            return Err(Status::INTERNAL);
        }
        // The overlap of [start, start + 1024) with [lpo, end).
        let from = lpo.max(start);
        let to = end.min(start + ENTRY_LEN as u64);
        let src = chunk
            .get((from - start) as usize..(to - start) as usize)
            .unwrap_or(&[]);
        let dst = out
            .get_mut((from - lpo) as usize..(to - lpo) as usize)
            .unwrap_or(&mut []);
        dst.iter_mut().zip(src).for_each(|(d, s)| *d = *s);
    }
    Ok(())
}
