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

/// Asynchronous Event Configuration bits (Set Features 0Bh).
pub mod aec {
    /// Namespace Attribute Notices.
    pub const NS_ATTR: u32 = 1 << 8;
    /// Discovery Log Page Change Notices (discovery controllers).
    pub const DISCOVERY_CHANGE: u32 = 1 << 31;
}

/// CQE dword 0 of an Asynchronous Event Request completion: event type 2 (notice), the event
/// information and the log page to read.
pub const fn aer_dw0(info: u8, lid: u8) -> u32 {
    2 | (info as u32) << 8 | (lid as u32) << 16
}
/// Notice: Namespace Attribute Changed, read log 04h.
pub const AER_NS_CHANGED: u32 = aer_dw0(0x00, 0x04);
/// Notice: Discovery Log Page Change, read log 70h.
pub const AER_DISCOVERY_CHANGED: u32 = aer_dw0(0xF0, 0x70);

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
    pub(super) error_recovery: u32,
    pub(super) interrupt_coalescing: u32,
    pub(super) write_atomicity: u32,
    pub(super) async_event_config: u32,
    /// Host Behavior Support bytes 0..4 (ACRE, ETDAS, LBAFEE, reserved); the rest is reserved.
    pub(super) host_behavior: [u8; 4],
    /// Number of Queues granted, 0's based (NSQA, NCQA).
    pub(super) nsqa: u16,
    pub(super) ncqa: u16,
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
            error_recovery: 0,
            interrupt_coalescing: 0,
            write_atomicity: 0,
            // The notices we implement are on until the host says otherwise (as SPDK does).
            async_event_config: if discovery {
                aec::DISCOVERY_CHANGE
            } else {
                aec::NS_ATTR
            },
            host_behavior: [0; 4],
            nsqa: queues,
            ncqa: queues,
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
            self.features.nsqa.min(self.features.ncqa).saturating_add(1)
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
