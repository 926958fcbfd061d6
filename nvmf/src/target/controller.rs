//! One NVMe-oF controller: what an admin Connect creates. It holds the controller's registers
//! (CAP, VS, CC, CSTS through Property Get/Set), its feature values, its Asynchronous Event
//! Requests and the keep alive clock, and answers admin commands (admin.rs) — synchronously,
//! with no socket and no bdev I/O, on the poll group thread that owns the admin qpair.
//!
//! Asynchronous events follow the spec's masking rule: once an event of a type is reported, that
//! type stays masked until the host reads its log page (Changed Namespace List, or the discovery
//! log) without Retain Asynchronous Event; changes meanwhile only accumulate in the log.

use crate::target::admin;
use crate::target::options::TransportOptions;
use crate::target::subsystem::Subsystem;
use crate::wire::command::Sqe;
use crate::wire::fabrics::{Cap, Cc, Csts, VS_1_3, cap_css, cc_css, reg, shutdown};
use crate::wire::features::{AsyncEvent, ErrorRecovery, HostBehavior, NumberOfQueues, aec};
use crate::wire::status::Status;
use std::cell::Cell;
use std::collections::BTreeSet;
use std::sync::Arc;
use uuid::Uuid;

/// Outstanding Asynchronous Event Requests allowed, 0's based (Identify AERL): four.
pub const AERL: u8 = 3;
/// Concurrent Aborts allowed, 0's based (Identify ACL): four.
pub const ACL: u8 = 3;
/// CAP.TO: 15 × 500 ms. Enabling is immediate here; this only bounds the host's wait.
pub const CAP_TO: u8 = 15;
/// The version reported in VS and Identify VER: NVMe 1.3. 2.0 would oblige CRTO, the I/O
/// command set profile structures and more; every host we serve speaks 1.3, and the 2.0-only
/// structures (Identify CNS 08h) are answered anyway.
pub const VERSION: u32 = VS_1_3;
/// Entries of the Changed Namespace List log before it reports "more than 1024 changed".
pub const CHANGED_NS_MAX: usize = 1024;

/// Notice: Namespace Attribute Changed, read log 04h (CQE dw0 of the AER).
pub const AER_NS_CHANGED: u32 = AsyncEvent::NS_ATTR_CHANGED.to_dw0();
/// Notice: Discovery Log Page Change, read log 70h.
pub const AER_DISCOVERY_CHANGED: u32 = AsyncEvent::DISCOVERY_LOG_CHANGE.to_dw0();

/// What [`Controller::admin`] asks its caller to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminOutcome {
    /// Complete now: status, CQE dw0 (dw1 = 0), bytes of `data` to send to the host.
    Done {
        status: Status,
        dw0: u32,
        data_len: u32,
    },
    /// An Asynchronous Event Request kept outstanding (completed later via namespace_changed).
    Parked,
    /// Abort of (sqid, cid): the caller looks for it and answers via `abort_result(found)`.
    /// When it names one of this controller's outstanding AERs, the controller has already
    /// forgotten that AER: the caller completes the parked command with ABORT_REQUESTED and
    /// counts it as found.
    Abort { sqid: u16, cid: u16 },
}

impl AdminOutcome {
    /// A completion with `status`, dw0 0 and no data.
    pub const fn status(status: Status) -> AdminOutcome {
        AdminOutcome::Done {
            status,
            dw0: 0,
            data_len: 0,
        }
    }

    /// A successful completion carrying `data_len` bytes of data.
    pub const fn data(data_len: u32) -> AdminOutcome {
        AdminOutcome::Done {
            status: Status::SUCCESS,
            dw0: 0,
            data_len,
        }
    }

    /// A successful completion with `dw0`.
    pub const fn dw0(dw0: u32) -> AdminOutcome {
        AdminOutcome::Done {
            status: Status::SUCCESS,
            dw0,
            data_len: 0,
        }
    }
}

/// An Asynchronous Event Request to complete now: its command id and CQE dw0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AerCompletion {
    pub cid: u16,
    pub dw0: u32,
}

/// One asynchronous event type's state.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Notice {
    /// Happened, not reported yet (no AER was outstanding).
    pub(super) pending: bool,
    /// Reported; masked until the host reads the log page without RAE.
    pub(super) masked: bool,
}

/// Feature values (Set/Get Features), reset to their defaults by a controller reset.
#[derive(Clone, Copy, Debug)]
pub(super) struct Features {
    pub(super) arbitration: u32,
    pub(super) power_management: u32,
    /// Composite temperature over / under thresholds (Kelvin).
    pub(super) temp_over: u16,
    pub(super) temp_under: u16,
    pub(super) error_recovery: ErrorRecovery,
    pub(super) interrupt_coalescing: u32,
    pub(super) write_atomicity: u32,
    pub(super) async_event_config: u32,
    pub(super) host_behavior: HostBehavior,
    /// Number of Queues granted (NSQA, NCQA, 0's based).
    pub(super) queues: NumberOfQueues,
}

impl Features {
    pub(super) fn defaults(discovery: bool, opts: &TransportOptions) -> Features {
        let queues = if discovery {
            0
        } else {
            opts.max_io_qpairs_per_ctrlr.saturating_sub(1)
        };
        Features {
            // Arbitration Burst 111b: no limit.
            arbitration: 7,
            power_management: 0,
            // 70 °C.
            temp_over: 343,
            temp_under: 0,
            error_recovery: ErrorRecovery::default(),
            interrupt_coalescing: 0,
            write_atomicity: 0,
            // The notices we implement are on until the host says otherwise (as SPDK does).
            async_event_config: if discovery {
                aec::DISCOVERY_CHANGE
            } else {
                aec::NS_ATTR
            },
            host_behavior: HostBehavior::default(),
            queues: NumberOfQueues {
                nsq: queues,
                ncq: queues,
            },
        }
    }
}

/// One controller; lives on the poll group thread of its admin qpair.
pub struct Controller {
    pub(super) cntlid: u16,
    pub(super) subsystem: Arc<Subsystem>,
    pub(super) discovery: bool,
    pub(super) hostnqn: String,
    pub(super) hostid: Uuid,
    pub(super) kato_ms: u32,
    pub(super) admin_sqsize: u16,
    pub(super) opts: Arc<TransportOptions>,
    pub(super) cc: Cc,
    pub(super) csts: Csts,
    pub(super) features: Features,
    /// Outstanding AER command ids, oldest first.
    pub(super) aers: Vec<u16>,
    /// Namespace Attribute Changed (NVM controllers) or Discovery Log Change (discovery).
    pub(super) notice: Notice,
    /// The Changed Namespace List; `changed_overflow` when more than 1024 changed.
    pub(super) changed: BTreeSet<u32>,
    pub(super) changed_overflow: bool,
    /// Ticks of the last admin command; set by the first keep alive check if none came yet.
    last_keep_alive: Cell<Option<u64>>,
}

impl Controller {
    pub fn new(
        cntlid: u16,
        subsystem: Arc<Subsystem>,
        hostnqn: &str,
        hostid: Uuid,
        kato_ms: u32,
        admin_sqsize: u16,
        opts: Arc<TransportOptions>,
    ) -> Controller {
        let discovery = subsystem.is_discovery();
        Controller {
            cntlid,
            discovery,
            subsystem,
            hostnqn: hostnqn.to_string(),
            hostid,
            kato_ms,
            admin_sqsize,
            features: Features::defaults(discovery, &opts),
            opts,
            cc: Cc::default(),
            csts: Csts::default(),
            aers: Vec::with_capacity(usize::from(AERL) + 1),
            notice: Notice::default(),
            changed: BTreeSet::new(),
            changed_overflow: false,
            last_keep_alive: Cell::new(None),
        }
    }

    pub fn cntlid(&self) -> u16 {
        self.cntlid
    }

    pub fn is_discovery(&self) -> bool {
        self.discovery
    }

    pub fn subsystem(&self) -> &Arc<Subsystem> {
        &self.subsystem
    }

    pub fn hostnqn(&self) -> &str {
        &self.hostnqn
    }

    pub fn hostid(&self) -> Uuid {
        self.hostid
    }

    /// The keep alive timeout in ms (0: none); Set Features Keep Alive Timer changes it.
    pub fn kato_ms(&self) -> u32 {
        self.kato_ms
    }

    /// The admin queue's SQSIZE from the Connect (0's based).
    pub fn admin_sqsize(&self) -> u16 {
        self.admin_sqsize
    }

    /// CC.EN and CSTS.RDY: I/O queues may connect.
    pub fn enabled(&self) -> bool {
        self.cc.en && self.csts.rdy
    }

    /// CC.SHN set: the host is shutting the controller down.
    pub fn shutting_down(&self) -> bool {
        self.cc.shn != shutdown::SHN_NONE
    }

    /// I/O queues the host may connect (qid 1..=this): Set Features Number of Queues' grant,
    /// max_io_qpairs_per_ctrlr until then; 0 on a discovery controller.
    pub fn io_queues_granted(&self) -> u16 {
        if self.discovery {
            0
        } else {
            self.features
                .queues
                .nsq
                .min(self.features.queues.ncq)
                .saturating_add(1)
        }
    }

    /// CAP: contiguous queues, MQES from max_queue_depth, 4 KiB pages only, NVM command set.
    pub fn cap(&self) -> Cap {
        Cap {
            mqes: self.opts.max_queue_depth.saturating_sub(1),
            cqr: true,
            to: CAP_TO,
            css: cap_css::NVM,
            mpsmin: 0,
            mpsmax: 0,
            ..Cap::default()
        }
    }

    /// Property Get: the register's value (CQE dw1:dw0).
    pub fn property_get(&self, offset: u32, size: u8) -> Result<u64, Status> {
        if reg::size(offset) != Some(size) {
            return Err(Status::INVALID_FIELD);
        }
        match offset {
            reg::CAP => Ok(self.cap().to_u64()),
            reg::VS => Ok(u64::from(VERSION)),
            reg::CC => Ok(u64::from(self.cc.to_u32())),
            reg::CSTS => Ok(u64::from(self.csts.to_u32())),
            // NSSR reads as 0 (NVM subsystem reset is not supported).
            reg::NSSR => Ok(0),
            _ => Err(Status::INVALID_FIELD),
        }
    }

    /// Property Set: only CC is writable.
    pub fn property_set(&mut self, offset: u32, size: u8, value: u64) -> Result<(), Status> {
        if reg::size(offset) != Some(size) || offset != reg::CC {
            return Err(Status::INVALID_FIELD);
        }
        self.set_cc(Cc::from_u32(value as u32))
    }

    /// A CC write: EN 0→1 makes the controller ready at once, EN 1→0 resets it, SHN completes
    /// the shutdown at once (nothing is buffered here; the bdevs below keep their own promises).
    fn set_cc(&mut self, new: Cc) -> Result<(), Status> {
        let old = self.cc;
        if new.en && !old.en {
            // Only what CAP offers: 4 KiB pages, round robin, the NVM or admin command set,
            // 64-byte SQEs and 16-byte CQEs (0 = not chosen yet, as hosts write it for admin-only
            // controllers).
            let css_ok = matches!(new.css, cc_css::NVM | cc_css::ADMIN_ONLY);
            if new.mps != 0
                || new.ams != 0
                || !css_ok
                || !matches!(new.iosqes, 0 | 6)
                || !matches!(new.iocqes, 0 | 4)
            {
                return Err(Status::INVALID_FIELD);
            }
            self.csts.rdy = true;
            self.csts.shst = shutdown::SHST_NORMAL;
        } else if !new.en && old.en {
            self.reset();
        }
        if new.shn != shutdown::SHN_NONE {
            self.csts.shst = shutdown::SHST_COMPLETE;
        }
        self.cc = new;
        Ok(())
    }

    /// Controller reset (CC.EN 1→0): not ready, features back to their defaults, events
    /// forgotten. Outstanding AERs stay with their commands (their slots belong to the qpair,
    /// which completes them at teardown through `take_outstanding_aers`).
    fn reset(&mut self) {
        self.csts = Csts::default();
        self.features = Features::defaults(self.discovery, &self.opts);
        self.notice = Notice::default();
        self.changed.clear();
        self.changed_overflow = false;
    }

    /// An admin command (never a fabrics one). `data` is the command's data buffer: for
    /// host→controller commands it holds the data the host sent; for controller→host ones the
    /// controller writes into it (the caller sized it to the SGL's length, at most max_io_size).
    pub fn admin(&mut self, sqe: &Sqe, data: &mut [u8]) -> AdminOutcome {
        admin::execute(self, sqe, data)
    }

    /// The completion of an Abort the caller looked for: dw0 bit 0 clear when the command was
    /// found (and aborted), set when it was not.
    pub fn abort_result(&self, found: bool) -> AdminOutcome {
        AdminOutcome::dw0(u32::from(!found))
    }

    /// A namespace changed (0 = discovery log changed): note it; returns the AER completion to
    /// send now if one is outstanding and the event is enabled (Async Event Configuration).
    pub fn namespace_changed(&mut self, nsid: u32) -> Option<AerCompletion> {
        if self.discovery {
            if self.features.async_event_config & aec::DISCOVERY_CHANGE == 0 {
                return None;
            }
        } else {
            if nsid == 0 || nsid == u32::MAX {
                return None;
            }
            if !self.changed_overflow {
                self.changed.insert(nsid);
                if self.changed.len() > CHANGED_NS_MAX {
                    self.changed.clear();
                    self.changed_overflow = true;
                }
            }
            if self.features.async_event_config & aec::NS_ATTR == 0 {
                return None;
            }
        }
        if self.notice.masked {
            return None;
        }
        self.notice.pending = true;
        let cid = *self.aers.first()?;
        self.aers.remove(0);
        Some(self.report(cid))
    }

    /// Reports the pending notice on AER `cid` and masks its type.
    pub(super) fn report(&mut self, cid: u16) -> AerCompletion {
        self.notice.pending = false;
        self.notice.masked = true;
        AerCompletion {
            cid,
            dw0: if self.discovery {
                AER_DISCOVERY_CHANGED
            } else {
                AER_NS_CHANGED
            },
        }
    }

    /// The host read the notice's log page without RAE: the event type is unmasked.
    pub(super) fn unmask(&mut self) {
        self.notice.masked = false;
    }

    /// Called when the host sends any admin command (Keep Alive resets the timer).
    pub fn keep_alive_received(&mut self, now_ticks: u64) {
        self.last_keep_alive.set(Some(now_ticks));
    }

    /// Whether KATO passed since the last admin command (never with KATO 0). Before any
    /// command, the first check starts the clock.
    pub fn keep_alive_expired(&self, now_ticks: u64) -> bool {
        if self.kato_ms == 0 {
            return false;
        }
        let Some(last) = self.last_keep_alive.get() else {
            self.last_keep_alive.set(Some(now_ticks));
            return false;
        };
        now_ticks.saturating_sub(last) > poller::time::us_to_ticks(u64::from(self.kato_ms) * 1000)
    }

    /// Outstanding AER command ids (to complete with ABORTED - SQ DELETION at teardown).
    pub fn take_outstanding_aers(&mut self) -> Vec<u16> {
        std::mem::take(&mut self.aers)
    }
}

/// What the controller, admin and discovery tests share: a transport, subsystems with unique
/// NQNs in the process-wide target, enabled controllers, and SQE builders.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::target::subsystem::{CreateSubsystemParams, ListenAddress, Target};
    use crate::wire::command::admin;
    use serde_json::json;

    pub fn opts() -> Arc<TransportOptions> {
        let mut o = TransportOptions::tcp();
        o.check().unwrap_or_else(|e| panic!("{e}"));
        Arc::new(o)
    }

    /// A new NVM subsystem `nqn` that allows only `hosts`.
    pub fn subsystem(nqn: &str, hosts: &[&str]) -> Arc<Subsystem> {
        let p: CreateSubsystemParams = serde_json::from_value(json!({
            "nqn": nqn, "serial_number": "SN-CTRLR-TEST", "model_number": "pcache test ctrl",
            "wzsl": 5, "dmrsl": 256,
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let t = Target::get();
        t.create_subsystem(p).unwrap_or_else(|e| panic!("{e}"));
        for h in hosts {
            t.add_host(nqn, h).unwrap_or_else(|e| panic!("{e}"));
        }
        t.find(nqn).unwrap_or_else(|| panic!("{nqn} was created"))
    }

    pub fn discovery() -> Arc<Subsystem> {
        Target::get()
            .find(crate::target::subsystem::DISCOVERY_NQN)
            .unwrap_or_else(|| panic!("the discovery subsystem exists"))
    }

    /// Records a listen address without opening a socket.
    pub fn listen(s: &Subsystem, traddr: &str, port: u16) {
        s.lock().listeners.push(ListenAddress {
            trtype: "TCP".into(),
            adrfam: if traddr.contains(':') { "IPv6" } else { "IPv4" }.into(),
            traddr: traddr.into(),
            trsvcid: port.to_string(),
        });
    }

    pub const HOSTID: Uuid = Uuid::from_bytes([
        0x6c, 0x1f, 0x3d, 0x4e, 0x0a, 0x6b, 0x4b, 0x5e, 0x9d, 0x1c, 0x2f, 0x3e, 0x4a, 0x5b, 0x6c,
        0x7d,
    ]);

    /// A controller as an admin Connect makes it, then enabled the way the Linux host does.
    pub fn controller(s: &Arc<Subsystem>, host: &str, cntlid: u16) -> Controller {
        let mut c = Controller::new(cntlid, s.clone(), host, HOSTID, 10_000, 31, opts());
        enable(&mut c);
        c
    }

    /// CC.EN = 1, CSS NVM, MPS 0, IOSQES 6, IOCQES 4.
    pub fn enable(c: &mut Controller) {
        let cc = Cc {
            en: true,
            iosqes: 6,
            iocqes: 4,
            ..Cc::default()
        };
        c.property_set(reg::CC, 4, u64::from(cc.to_u32()))
            .unwrap_or_else(|s| panic!("enable: {s:?}"));
    }

    pub fn sqe(opcode: u8, cid: u16, nsid: u32, cdw10: u32, cdw11: u32) -> Sqe {
        let mut s = Sqe::new(opcode, cid, nsid);
        s.cdw10 = cdw10;
        s.cdw11 = cdw11;
        s
    }

    pub fn identify(cns: u8, nsid: u32, csi: u8) -> Sqe {
        sqe(
            admin::IDENTIFY,
            1,
            nsid,
            u32::from(cns),
            u32::from(csi) << 24,
        )
    }

    /// Get Log Page for `len` bytes (a multiple of 4) at `lpo`.
    pub fn get_log(lid: u8, len: u32, lpo: u64, rae: bool) -> Sqe {
        let numd = len / 4 - 1;
        let mut s = sqe(
            admin::GET_LOG_PAGE,
            2,
            0xFFFF_FFFF,
            u32::from(lid) | u32::from(rae) << 15 | (numd & 0xFFFF) << 16,
            numd >> 16,
        );
        s.cdw12 = lpo as u32;
        s.cdw13 = (lpo >> 32) as u32;
        s
    }

    pub fn get_features(fid: u8, sel: u8, cdw11: u32) -> Sqe {
        sqe(
            admin::GET_FEATURES,
            3,
            0,
            u32::from(fid) | u32::from(sel) << 8,
            cdw11,
        )
    }

    pub fn set_features(fid: u8, cdw11: u32) -> Sqe {
        sqe(admin::SET_FEATURES, 4, 0, u32::from(fid), cdw11)
    }

    /// Runs a command expected to complete now; returns (status, dw0, data_len).
    pub fn done(c: &mut Controller, s: &Sqe, data: &mut [u8]) -> (Status, u32, u32) {
        match c.admin(s, data) {
            AdminOutcome::Done {
                status,
                dw0,
                data_len,
            } => (status, dw0, data_len),
            other => panic!("opcode {:#x}: {other:?}", s.opcode),
        }
    }

    /// The status of a command expected to complete now.
    pub fn status(c: &mut Controller, s: &Sqe) -> Status {
        let mut data = [0u8; 4096];
        done(c, s, &mut data).0
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use crate::wire::command::admin;

    #[test]
    fn cap_vs_and_the_initial_registers() {
        let s = subsystem("nqn.2016-06.io.pcache:ctrlr-regs", &[]);
        let c = Controller::new(1, s, "nqn.h:regs", HOSTID, 0, 31, opts());
        let cap = Cap::from_u64(c.property_get(reg::CAP, 8).unwrap_or_default());
        assert_eq!(cap.mqes, 127);
        assert!(cap.cqr);
        assert_eq!(cap.to, CAP_TO);
        assert_eq!(cap.css, cap_css::NVM);
        assert_eq!((cap.mpsmin, cap.mpsmax, cap.ams, cap.dstrd), (0, 0, 0, 0));
        assert_eq!(c.property_get(reg::VS, 4), Ok(0x0001_0300));
        assert_eq!(c.property_get(reg::CC, 4), Ok(0));
        assert_eq!(c.property_get(reg::CSTS, 4), Ok(0));
        assert_eq!(c.property_get(reg::NSSR, 4), Ok(0));
        // Wrong sizes and unknown offsets.
        assert_eq!(c.property_get(reg::CAP, 4), Err(Status::INVALID_FIELD));
        assert_eq!(c.property_get(reg::VS, 8), Err(Status::INVALID_FIELD));
        assert_eq!(c.property_get(0x30, 4), Err(Status::INVALID_FIELD));
        assert_eq!(c.property_get(reg::CC, 3), Err(Status::INVALID_FIELD));
        assert!(!c.enabled());
        assert!(!c.shutting_down());
        assert_eq!(c.io_queues_granted(), 127);
        assert_eq!(c.cntlid(), 1);
        assert!(!c.is_discovery());
        assert_eq!(c.hostnqn(), "nqn.h:regs");
        assert_eq!(c.admin_sqsize(), 31);
    }

    #[test]
    fn enable_reset_and_shutdown() {
        let s = subsystem("nqn.2016-06.io.pcache:ctrlr-cc", &[]);
        let mut c = Controller::new(1, s, "nqn.h:cc", HOSTID, 0, 31, opts());
        // Admin commands wait for CC.EN.
        assert_eq!(
            status(&mut c, &sqe(admin::KEEP_ALIVE, 1, 0, 0, 0)),
            Status::COMMAND_SEQUENCE_ERROR
        );
        // Read-only registers.
        for off in [reg::CAP, reg::VS, reg::CSTS, reg::NSSR] {
            let size = reg::size(off).unwrap_or(4);
            assert_eq!(
                c.property_set(off, size, 1),
                Err(Status::INVALID_FIELD),
                "{off:#x}"
            );
        }
        assert_eq!(c.property_set(reg::CC, 8, 1), Err(Status::INVALID_FIELD));
        // An enable asking for what CAP does not offer is refused and leaves it disabled.
        for bad in [
            Cc {
                en: true,
                mps: 1,
                ..Cc::default()
            },
            Cc {
                en: true,
                css: 1,
                ..Cc::default()
            },
            Cc {
                en: true,
                ams: 1,
                ..Cc::default()
            },
            Cc {
                en: true,
                iosqes: 7,
                ..Cc::default()
            },
        ] {
            assert_eq!(
                c.property_set(reg::CC, 4, u64::from(bad.to_u32())),
                Err(Status::INVALID_FIELD)
            );
            assert_eq!(c.property_get(reg::CSTS, 4), Ok(0));
        }
        enable(&mut c);
        let csts = Csts::from_u32(c.property_get(reg::CSTS, 4).unwrap_or_default() as u32);
        assert!(csts.rdy);
        assert_eq!(csts.shst, shutdown::SHST_NORMAL);
        assert!(c.enabled());
        let cc = Cc::from_u32(c.property_get(reg::CC, 4).unwrap_or_default() as u32);
        assert!(cc.en);
        assert_eq!((cc.iosqes, cc.iocqes), (6, 4));
        assert_eq!(
            status(&mut c, &sqe(admin::KEEP_ALIVE, 1, 0, 0, 0)),
            Status::SUCCESS
        );

        // A feature changed, then EN 1→0: not ready, features back to defaults.
        assert_eq!(
            status(&mut c, &set_features(admin_fid::ARBITRATION, 3)),
            Status::SUCCESS
        );
        c.property_set(reg::CC, 4, 0)
            .unwrap_or_else(|s| panic!("{s:?}"));
        assert!(!c.enabled());
        assert_eq!(c.property_get(reg::CSTS, 4), Ok(0));
        enable(&mut c);
        let mut d = [0u8; 8];
        assert_eq!(
            done(&mut c, &get_features(admin_fid::ARBITRATION, 0, 0), &mut d).1,
            7
        );

        // SHN → SHST complete at once; RDY stays until EN is cleared.
        let shn = Cc {
            en: true,
            iosqes: 6,
            iocqes: 4,
            shn: shutdown::SHN_NORMAL,
            ..Cc::default()
        };
        c.property_set(reg::CC, 4, u64::from(shn.to_u32()))
            .unwrap_or_else(|s| panic!("{s:?}"));
        let csts = Csts::from_u32(c.property_get(reg::CSTS, 4).unwrap_or_default() as u32);
        assert_eq!(csts.shst, shutdown::SHST_COMPLETE);
        assert!(csts.rdy);
        assert!(c.shutting_down());
        // Disabled and enabled again: normal operation.
        c.property_set(reg::CC, 4, 0)
            .unwrap_or_else(|s| panic!("{s:?}"));
        assert!(!c.shutting_down());
        enable(&mut c);
        let csts = Csts::from_u32(c.property_get(reg::CSTS, 4).unwrap_or_default() as u32);
        assert_eq!((csts.rdy, csts.shst), (true, shutdown::SHST_NORMAL));
    }

    use crate::wire::features::fid as admin_fid;
    use crate::wire::log::lid;

    fn aer(cid: u16) -> Sqe {
        sqe(admin::ASYNC_EVENT_REQUEST, cid, 0, 0, 0)
    }

    #[test]
    fn aers_park_up_to_the_limit_and_complete_on_a_namespace_change() {
        let s = subsystem("nqn.2016-06.io.pcache:ctrlr-aer", &[]);
        let mut c = controller(&s, "nqn.h:aer", 1);
        let mut d = [0u8; 0];
        for cid in 10..14 {
            assert_eq!(c.admin(&aer(cid), &mut d), AdminOutcome::Parked);
        }
        assert_eq!(
            c.admin(&aer(14), &mut d),
            AdminOutcome::status(Status::ASYNC_EVENT_LIMIT_EXCEEDED)
        );
        // The oldest completes, reporting Namespace Attribute Changed with log 04h.
        assert_eq!(
            c.namespace_changed(3),
            Some(AerCompletion {
                cid: 10,
                dw0: 0x0004_0002
            })
        );
        // Masked until the log is read: later changes only go to the log.
        assert_eq!(c.namespace_changed(5), None);
        assert_eq!(c.namespace_changed(3), None);
        let mut log = [0u8; 4096];
        // Retaining the event keeps it masked and the list whole.
        assert_eq!(
            done(&mut c, &get_log(lid::CHANGED_NS, 4096, 0, true), &mut log).0,
            Status::SUCCESS
        );
        assert_eq!(c.namespace_changed(6), None);
        assert_eq!(
            done(&mut c, &get_log(lid::CHANGED_NS, 4096, 0, false), &mut log).0,
            Status::SUCCESS
        );
        assert_eq!(
            &log[..16],
            &[3, 0, 0, 0, 5, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0]
        );
        // Read without RAE: cleared and unmasked.
        assert_eq!(
            c.namespace_changed(1),
            Some(AerCompletion {
                cid: 11,
                dw0: AER_NS_CHANGED
            })
        );
        done(&mut c, &get_log(lid::CHANGED_NS, 4096, 0, false), &mut log);
        assert_eq!(&log[..8], &[1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(c.take_outstanding_aers(), vec![12, 13]);

        // A change with no AER outstanding waits for the next AER, which completes at once.
        assert_eq!(c.namespace_changed(2), None);
        assert_eq!(c.admin(&aer(20), &mut d), AdminOutcome::dw0(AER_NS_CHANGED));
        // ... and is masked again until the log is read.
        assert_eq!(c.admin(&aer(21), &mut d), AdminOutcome::Parked);
        assert_eq!(c.namespace_changed(2), None);
        done(&mut c, &get_log(lid::CHANGED_NS, 4096, 0, false), &mut log);
        assert_eq!(
            c.namespace_changed(4),
            Some(AerCompletion {
                cid: 21,
                dw0: AER_NS_CHANGED
            })
        );
    }

    #[test]
    fn namespace_notices_can_be_disabled() {
        let s = subsystem("nqn.2016-06.io.pcache:ctrlr-aec", &[]);
        let mut c = controller(&s, "nqn.h:aec", 1);
        let mut d = [0u8; 0];
        assert_eq!(
            status(&mut c, &set_features(admin_fid::ASYNC_EVENT_CONFIG, 0)),
            Status::SUCCESS
        );
        assert_eq!(c.admin(&aer(1), &mut d), AdminOutcome::Parked);
        assert_eq!(c.namespace_changed(7), None);
        // Still logged.
        let mut log = [0u8; 8];
        done(&mut c, &get_log(lid::CHANGED_NS, 8, 0, false), &mut log);
        assert_eq!(log, [7, 0, 0, 0, 0, 0, 0, 0]);
        // Enabled again: the next change is reported.
        assert_eq!(
            status(
                &mut c,
                &set_features(admin_fid::ASYNC_EVENT_CONFIG, aec::NS_ATTR)
            ),
            Status::SUCCESS
        );
        assert_eq!(
            c.namespace_changed(7),
            Some(AerCompletion {
                cid: 1,
                dw0: AER_NS_CHANGED
            })
        );
        // NSID 0 and the broadcast id are not namespaces.
        assert_eq!(c.namespace_changed(0), None);
        assert_eq!(c.namespace_changed(u32::MAX), None);
    }

    #[test]
    fn the_changed_namespace_list_overflows_to_ffffffff() {
        let s = subsystem("nqn.2016-06.io.pcache:ctrlr-overflow", &[]);
        let mut c = controller(&s, "nqn.h:overflow", 1);
        for nsid in 1..=1025 {
            c.namespace_changed(nsid);
        }
        let mut log = [0u8; 4096];
        done(&mut c, &get_log(lid::CHANGED_NS, 4096, 0, false), &mut log);
        assert_eq!(&log[..8], &[0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0]);
        assert!(log[4..].iter().all(|&b| b == 0));
        done(&mut c, &get_log(lid::CHANGED_NS, 4096, 0, false), &mut log);
        assert!(log.iter().all(|&b| b == 0), "cleared by the read");
        // 1024 exactly still fits.
        for nsid in 1..=1024 {
            c.namespace_changed(nsid);
        }
        done(&mut c, &get_log(lid::CHANGED_NS, 4096, 0, false), &mut log);
        assert_eq!(&log[..4], &[1, 0, 0, 0]);
        assert_eq!(&log[4092..], &[0, 4, 0, 0]);
    }

    #[test]
    fn abort_names_the_command_and_forgets_an_aborted_aer() {
        let s = subsystem("nqn.2016-06.io.pcache:ctrlr-abort", &[]);
        let mut c = controller(&s, "nqn.h:abort", 1);
        let mut d = [0u8; 0];
        assert_eq!(c.admin(&aer(31), &mut d), AdminOutcome::Parked);
        assert_eq!(c.admin(&aer(30), &mut d), AdminOutcome::Parked);
        let abort = |sqid: u16, cid: u16| {
            sqe(
                admin::ABORT,
                5,
                0,
                u32::from(sqid) | u32::from(cid) << 16,
                0,
            )
        };
        assert_eq!(
            c.admin(&abort(0, 31), &mut d),
            AdminOutcome::Abort { sqid: 0, cid: 31 }
        );
        assert_eq!(
            c.admin(&abort(2, 77), &mut d),
            AdminOutcome::Abort { sqid: 2, cid: 77 }
        );
        // The aborted AER is no longer completed by events nor returned at teardown.
        assert_eq!(
            c.namespace_changed(1),
            Some(AerCompletion {
                cid: 30,
                dw0: AER_NS_CHANGED
            })
        );
        assert!(c.take_outstanding_aers().is_empty());
        assert_eq!(c.abort_result(true), AdminOutcome::dw0(0));
        assert_eq!(c.abort_result(false), AdminOutcome::dw0(1));
    }

    #[test]
    fn keep_alive_expires_after_kato_without_admin_commands() {
        let s = subsystem("nqn.2016-06.io.pcache:ctrlr-kato", &[]);
        let mut c = controller(&s, "nqn.h:kato", 1);
        assert_eq!(c.kato_ms(), 10_000);
        let kato = poller::time::us_to_ticks(10_000_000);
        // The first check starts the clock.
        assert!(!c.keep_alive_expired(1000));
        assert!(!c.keep_alive_expired(1000 + kato));
        assert!(c.keep_alive_expired(1001 + kato));
        c.keep_alive_received(5 * kato);
        assert!(!c.keep_alive_expired(5 * kato + kato / 2));
        assert!(c.keep_alive_expired(6 * kato + 1));
        // KATO 0: never.
        let off = Controller::new(2, s, "nqn.h:kato", HOSTID, 0, 31, opts());
        assert!(!off.keep_alive_expired(0));
        assert!(!off.keep_alive_expired(u64::MAX));
    }

    #[test]
    fn unknown_and_queue_commands_are_invalid_opcodes() {
        let s = subsystem("nqn.2016-06.io.pcache:ctrlr-opcodes", &[]);
        let mut c = controller(&s, "nqn.h:opcodes", 1);
        for op in [
            admin::CREATE_IO_SQ,
            admin::DELETE_IO_SQ,
            admin::CREATE_IO_CQ,
            admin::DELETE_IO_CQ,
            admin::FORMAT_NVM,
            admin::NS_MANAGEMENT,
            admin::FABRICS,
            0xC0,
        ] {
            assert_eq!(
                status(&mut c, &sqe(op, 1, 0, 0, 0)),
                Status::INVALID_OPCODE,
                "{op:#x}"
            );
        }
        let mut fused = sqe(admin::KEEP_ALIVE, 1, 0, 0, 0);
        fused.fuse = 1;
        assert_eq!(status(&mut c, &fused), Status::INVALID_FIELD);
    }
}
