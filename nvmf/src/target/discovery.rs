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
use crate::wire::fabrics::{Nqn, Text};
use crate::wire::log::{
    DISCOVERY_ENTRY_LEN, DISCOVERY_HEADER_LEN, DiscoveryLogEntry, DiscoveryLogHeader, adrfam,
    eflags, sectype, subtype, treq, trtype,
};
use crate::wire::status::Status;
use std::collections::BTreeSet;

/// Bytes of the header and of each entry.
pub const HEADER_LEN: usize = DISCOVERY_HEADER_LEN;
pub const ENTRY_LEN: usize = DISCOVERY_ENTRY_LEN;
/// CNTLID: the controller is allocated at Connect.
pub const CNTLID_DYNAMIC: u16 = crate::wire::fabrics::CNTLID_DYNAMIC;

/// One entry of the log, before encoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub subtype: u8,
    pub subnqn: String,
    pub addr: ListenAddress,
    pub portid: u16,
    pub eflags: u16,
}

impl Record {
    /// The wire entry: TCP, no secure channel required (TSAS security type none), dynamic
    /// controller, admin queues of `asqsz` entries.
    pub fn entry(&self, asqsz: u16) -> Result<DiscoveryLogEntry, crate::wire::le::WireError> {
        Ok(DiscoveryLogEntry {
            trtype: trtype::TCP,
            adrfam: if self.addr.adrfam == "IPv6" {
                adrfam::IPV6
            } else {
                adrfam::IPV4
            },
            subtype: self.subtype,
            treq: treq::SECURE_CHANNEL_NOT_REQUIRED,
            portid: self.portid,
            cntlid: CNTLID_DYNAMIC,
            asqsz,
            eflags: self.eflags,
            trsvcid: Text::new(&self.addr.trsvcid)?,
            subnqn: Nqn::new(&self.subnqn)?,
            traddr: Text::new(&self.addr.traddr)?,
            sectype: sectype::NONE,
        })
    }
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
            SubsystemType::Discovery => (
                subtype::CURRENT_DISCOVERY,
                eflags::DUPRETINFO | eflags::EPCSD,
            ),
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
            None => DiscoveryLogHeader {
                genctr,
                numrec: recs.len() as u64,
                ..DiscoveryLogHeader::default()
            }
            .encode(&mut chunk),
            Some(r) => r.entry(asqsz).and_then(|e| e.encode(&mut chunk)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::controller::testing::{
        controller, discovery, done, get_log, listen, opts, sqe, subsystem,
    };
    use crate::target::controller::{AER_DISCOVERY_CHANGED, AdminOutcome, AerCompletion};
    use crate::target::subsystem::Target;
    use crate::wire::command::admin;
    use crate::wire::le;
    use crate::wire::log::DiscoveryLogEntry;

    const H1: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-disc-test-0000-000000000001";
    const H2: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-disc-test-0000-000000000002";
    const A: &str = "nqn.2016-06.io.pcache:disc-a";
    const B: &str = "nqn.2016-06.io.pcache:disc-b";

    /// An entry decoded at its offsets.
    #[derive(Debug, PartialEq)]
    struct Entry {
        trtype: u8,
        adrfam: u8,
        subtype: u8,
        treq: u8,
        portid: u16,
        cntlid: u16,
        asqsz: u16,
        eflags: u16,
        trsvcid: String,
        subnqn: String,
        traddr: String,
    }

    fn entry(b: &[u8]) -> Entry {
        let u16_at = |o| le::get_u16(b, o).unwrap_or_else(|e| panic!("{e}"));
        let text = |o, n| {
            le::get_str(b, o, n, "field")
                .unwrap_or_else(|e| panic!("{e}"))
                .to_string()
        };
        // The wire decoder reads the same fields.
        let w = DiscoveryLogEntry::decode(b).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((w.trtype, w.subtype, w.portid), (b[0], b[2], u16_at(4)));
        assert_eq!(w.subnqn.as_str(), text(256, 256));
        assert_eq!(w.traddr.as_str(), text(512, 256));
        assert_eq!(w.sectype, sectype::NONE);
        Entry {
            trtype: b[0],
            adrfam: b[1],
            subtype: b[2],
            treq: b[3],
            portid: u16_at(4),
            cntlid: u16_at(6),
            asqsz: u16_at(8),
            eflags: u16_at(10),
            trsvcid: text(32, 32),
            subnqn: text(256, 256),
            traddr: text(512, 256),
        }
    }

    /// Reads the log the way `nvme discover` does: the header, then every entry from 1024.
    fn discover(c: &mut crate::target::controller::Controller) -> (u64, Vec<Entry>) {
        let mut hdr = [0u8; HEADER_LEN];
        let (st, _, n) = done(c, &get_log(0x70, HEADER_LEN as u32, 0, false), &mut hdr);
        assert_eq!((st, n), (Status::SUCCESS, HEADER_LEN as u32));
        let genctr = le::get_u64(&hdr, 0).unwrap_or_default();
        let numrec = le::get_u64(&hdr, 8).unwrap_or_default() as usize;
        assert_eq!(le::get_u16(&hdr, 16), Ok(0), "recfmt");
        let mut rest = vec![0u8; numrec * ENTRY_LEN];
        if numrec > 0 {
            let (st, _, _) = done(
                c,
                &get_log(0x70, rest.len() as u32, HEADER_LEN as u64, false),
                &mut rest,
            );
            assert_eq!(st, Status::SUCCESS);
        }
        (genctr, rest.chunks(ENTRY_LEN).map(entry).collect())
    }

    fn mine(entries: &[Entry]) -> Vec<&Entry> {
        entries
            .iter()
            .filter(|e| e.subnqn.starts_with("nqn.2016-06.io.pcache:disc-"))
            .collect()
    }

    #[test]
    fn two_subsystems_each_host_sees_its_own() {
        let a = subsystem(A, &[H1]);
        listen(&a, "127.0.0.1", 14420);
        listen(&a, "::1", 14421);
        let b = subsystem(B, &[H2]);
        listen(&b, "127.0.0.1", 14422);
        listen(&b, "127.0.0.1", 14420);

        let mut c1 = controller(&discovery(), H1, 1);
        let (genctr, all) = discover(&mut c1);
        assert!(genctr >= 1);
        assert!(genctr <= Target::get().discovery_generation());
        let e = mine(&all);
        assert_eq!(e.len(), 2, "{all:?}");
        let (v4, v6) = (&e[0], &e[1]);
        assert_eq!(
            (v4.trtype, v4.adrfam, v4.subtype, v4.treq),
            (
                trtype::TCP,
                adrfam::IPV4,
                subtype::NVME,
                treq::SECURE_CHANNEL_NOT_REQUIRED
            )
        );
        assert_eq!((v4.cntlid, v4.asqsz, v4.eflags), (CNTLID_DYNAMIC, 128, 0));
        assert_eq!(
            (v4.subnqn.as_str(), v4.traddr.as_str(), v4.trsvcid.as_str()),
            (A, "127.0.0.1", "14420")
        );
        assert_eq!(
            (v6.adrfam, v6.traddr.as_str(), v6.trsvcid.as_str()),
            (adrfam::IPV6, "::1", "14421")
        );
        assert_ne!(v4.portid, v6.portid);

        let mut c2 = controller(&discovery(), H2, 2);
        let (_, all2) = discover(&mut c2);
        let e2 = mine(&all2);
        assert_eq!(e2.len(), 2);
        assert!(e2.iter().all(|e| e.subnqn == B));
        // The same address has the same port ID in every subsystem.
        let shared = e2.iter().find(|e| e.trsvcid == "14420").map(|e| e.portid);
        assert_eq!(shared, Some(v4.portid));

        // A host allowed nowhere sees none of these.
        let mut c3 = controller(&discovery(), "nqn.h:disc-nobody", 3);
        assert!(mine(&discover(&mut c3).1).is_empty());

        // Padding: traddr and trsvcid spaces, subnqn NULs.
        let mut raw = vec![0u8; HEADER_LEN + ENTRY_LEN * all.len()];
        let len = raw.len() as u32;
        done(&mut c1, &get_log(0x70, len, 0, false), &mut raw);
        let at = raw
            .chunks(ENTRY_LEN)
            .skip(1)
            .position(|c| entry(c).subnqn == A)
            .map(|i| HEADER_LEN * (i + 1))
            .unwrap_or_else(|| panic!("A listed"));
        let ent = &raw[at..at + ENTRY_LEN];
        assert_eq!(&ent[32..38], b"14420 ");
        assert!(ent[37..64].iter().all(|&b| b == b' '));
        assert_eq!(ent[256 + A.len()], 0);
        assert!(ent[512 + 9..768].iter().all(|&b| b == b' '));
        assert!(ent[768..].iter().all(|&b| b == 0), "tsas: no security");
    }

    #[test]
    fn any_window_of_the_log_is_the_same_bytes() {
        let h = "nqn.h:disc-window";
        for (i, port) in [(1u16, 15001u16), (2, 15002), (3, 15003)] {
            let s = subsystem(&format!("nqn.2016-06.io.pcache:disc-w{i}"), &[h]);
            listen(&s, "10.0.0.1", port);
        }
        let o = opts();
        let (_, recs) = records(h);
        let size = HEADER_LEN + ENTRY_LEN * recs.len();
        let mut full = vec![0u8; size];
        read(h, &o, 0, &mut full).unwrap_or_else(|s| panic!("{s:?}"));
        let numrec = le::get_u64(&full, 8).unwrap_or_default() as usize;
        assert_eq!(numrec, recs.len());
        assert!(numrec >= 3);
        for (lpo, len) in [(0, 16), (512, 1024), (1020, 8), (1024, 2048), (2000, 3000)] {
            let mut w = vec![0xEEu8; len];
            read(h, &o, lpo as u64, &mut w).unwrap_or_else(|s| panic!("{s:?}"));
            let want: Vec<u8> = (lpo..lpo + len)
                .map(|i| full.get(i).copied().unwrap_or(0))
                .collect();
            assert_eq!(w, want, "window {lpo}+{len}");
        }
        // Past the end reads zeroes; beyond it is refused.
        let mut w = [0xEEu8; 64];
        read(h, &o, size as u64, &mut w).unwrap_or_else(|s| panic!("{s:?}"));
        assert!(w.iter().all(|&b| b == 0));
        assert_eq!(
            read(h, &o, size as u64 + 4, &mut w),
            Err(Status::INVALID_FIELD)
        );
        let mut c = controller(&discovery(), h, 4);
        assert_eq!(
            done(
                &mut c,
                &get_log(0x70, 64, size as u64 + 1024, false),
                &mut w
            )
            .0,
            Status::INVALID_FIELD
        );
        assert_eq!(
            done(&mut c, &get_log(0x70, 2048, 0, false), &mut w).0,
            Status::INVALID_FIELD,
            "longer than the buffer"
        );
    }

    #[test]
    fn the_current_discovery_subsystem_lists_its_own_listeners() {
        let d = discovery();
        listen(&d, "127.0.0.7", 18009);
        let (_, recs) = records("nqn.h:disc-current");
        let own: Vec<&Record> = recs
            .iter()
            .filter(|r| r.addr.traddr == "127.0.0.7")
            .collect();
        assert_eq!(own.len(), 1);
        assert_eq!(own[0].subtype, subtype::CURRENT_DISCOVERY);
        assert_eq!(own[0].subnqn, DISCOVERY_NQN);
        assert_eq!(own[0].eflags, eflags::DUPRETINFO | eflags::EPCSD);
        d.lock().listeners.retain(|l| l.traddr != "127.0.0.7");
    }

    #[test]
    fn discovery_log_changes_are_notified_once_until_read() {
        let h = "nqn.h:disc-aen";
        let mut c = controller(&discovery(), h, 5);
        let mut none = [0u8; 0];
        let aer = |cid| sqe(admin::ASYNC_EVENT_REQUEST, cid, 0, 0, 0);
        assert_eq!(c.admin(&aer(31), &mut none), AdminOutcome::Parked);
        assert_eq!(c.admin(&aer(30), &mut none), AdminOutcome::Parked);
        assert_eq!(
            c.namespace_changed(0),
            Some(AerCompletion {
                cid: 31,
                dw0: AER_DISCOVERY_CHANGED
            })
        );
        assert_eq!(AER_DISCOVERY_CHANGED, 0x0070_F002);
        assert_eq!(c.namespace_changed(0), None, "masked until the log is read");
        let mut hdr = [0u8; HEADER_LEN];
        done(&mut c, &get_log(0x70, HEADER_LEN as u32, 0, true), &mut hdr);
        assert_eq!(c.namespace_changed(0), None, "RAE keeps it masked");
        done(
            &mut c,
            &get_log(0x70, HEADER_LEN as u32, 0, false),
            &mut hdr,
        );
        assert_eq!(
            c.namespace_changed(0),
            Some(AerCompletion {
                cid: 30,
                dw0: AER_DISCOVERY_CHANGED
            })
        );
    }
}
