//! The sequence that builds an association with the controller, one admin command per step
//! (run at attach and at every reconnect), and the namespaces it finds: Identify checks as
//! Linux makes them, the bdev of each usable namespace, the rescan after a notice.

use super::{
    CSTS_POLL_US, Ctrlr, HostError, IO_QUEUE_SIZE, IoConnInfo, MAX_TRANSFER_CAP, Mode, Namespace,
    SHUTDOWN_SECS, STEP_TIMEOUT_SECS, State, lock, us,
};
use crate::host::options;
use crate::host::qpair::{OWN_LEN, Qpair};
use crate::wire::command::{Cqe, Sqe, Xfer};
use crate::wire::fabrics::{Cap, Cc, Csts, PropertyGet, PropertySet, VS_1_3, reg, shutdown};
use crate::wire::features::{FeatureCommand, NumberOfQueues, aec, fid};
use crate::wire::identify::{
    self, IdentifyCommand, IdentifyController, IdentifyNamespace, NsIdDescriptor, NsIdDescriptors,
    NsList, cns,
};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use uuid::Uuid;

fn identify_sqe(cns: u8, nsid: u32) -> Sqe {
    IdentifyCommand {
        cns,
        ..IdentifyCommand::default()
    }
    .to_sqe(0, nsid, crate::wire::command::Sgl::transport(0))
}

fn set_features_sqe(fid: u8, value: u32) -> Sqe {
    FeatureCommand {
        fid,
        cdw11: value,
        ..FeatureCommand::default()
    }
    .to_set_sqe(0, 0)
}

fn get_features_sqe(fid: u8) -> Sqe {
    FeatureCommand {
        fid,
        ..FeatureCommand::default()
    }
    .to_get_sqe(0, 0)
}

/// A UUID for a namespace from what it reports: its UUID, else its NGUID, else one derived
/// from the serial number (generate_uuids) or none.
fn ns_uuid(f: &NsFound, sn: &str, generate: bool) -> Option<Uuid> {
    if let Some(u) = f.uuid.filter(|u| !u.is_nil()) {
        return Some(u);
    }
    if f.nguid != [0; 16] {
        return Some(Uuid::from_bytes(f.nguid));
    }
    generate.then(|| Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("{sn}:{}", f.nsid).as_bytes()))
}

fn prop_get(offset: u32, size: u8) -> Sqe {
    PropertyGet { size, offset }.to_sqe(0)
}

fn prop_set(offset: u32, value: u32) -> Sqe {
    PropertySet {
        size: 4,
        offset,
        value: u64::from(value),
    }
    .to_sqe(0)
}

/// One step of the sequence that (re)builds the association.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Step {
    Connecting,
    GetCap,
    GetVs,
    GetCc,
    SetCc,
    WaitRdy,
    IdentifyCtrl,
    SetAec,
    GetKato,
    SetQueues,
    ActiveNs,
    IdentifyNs(usize),
    NsDesc(usize),
    Ready,
    /// No association (lost, waiting for the next attempt, or deleted).
    Down,
    /// CC.SHN sent; waiting for CSTS.SHST.
    ShutdownSent,
    ShutdownWait,
}

/// What a scan found for one active namespace.
#[derive(Clone, Debug, PartialEq)]
pub struct NsFound {
    pub nsid: u32,
    pub block_size: u32,
    pub num_blocks: u64,
    pub uuid: Option<Uuid>,
    pub nguid: [u8; 16],
    pub eui64: [u8; 8],
}

impl Ctrlr {
    /// Moves to `step` and issues its command (unless it waits for `step_not_before`).
    pub(super) fn next_step(&mut self, step: Step, now: u64) {
        self.step = step;
        self.step_cid = None;
        self.step_deadline = now.saturating_add(self.secs(STEP_TIMEOUT_SECS));
        if let Err(e) = self.issue_step(now) {
            self.association_failed(e, now);
        }
    }

    pub(super) fn issue_step(&mut self, now: u64) -> Result<(), HostError> {
        if now < self.step_not_before {
            return Ok(());
        }
        let page = OWN_LEN;
        let (sqe, xfer, len) = match self.step {
            Step::GetCap => (prop_get(reg::CAP, 8), Xfer::None, 0),
            Step::GetVs => (prop_get(reg::VS, 4), Xfer::None, 0),
            Step::GetCc => (prop_get(reg::CC, 4), Xfer::None, 0),
            Step::SetCc => {
                let cc = Cc {
                    en: true,
                    css: 0,
                    mps: 0,
                    ams: 0,
                    shn: 0,
                    iosqes: 6,
                    iocqes: 4,
                    crime: false,
                };
                (prop_set(reg::CC, cc.to_u32()), Xfer::None, 0)
            }
            Step::WaitRdy | Step::ShutdownWait => (prop_get(reg::CSTS, 4), Xfer::None, 0),
            Step::IdentifyCtrl => (
                identify_sqe(cns::CONTROLLER, 0),
                Xfer::ControllerToHost,
                page,
            ),
            Step::SetAec => (
                set_features_sqe(fid::ASYNC_EVENT_CONFIG, aec::NS_ATTR),
                Xfer::None,
                0,
            ),
            Step::GetKato => (get_features_sqe(fid::KEEP_ALIVE_TIMER), Xfer::None, 0),
            Step::SetQueues => {
                let n =
                    u16::try_from(self.sh.spec.num_io_queues.clamp(1, 65535)).unwrap_or(u16::MAX);
                let q = NumberOfQueues::from_counts(n, n);
                (
                    set_features_sqe(fid::NUMBER_OF_QUEUES, q.to_u32()),
                    Xfer::None,
                    0,
                )
            }
            Step::ActiveNs => (
                identify_sqe(cns::ACTIVE_NS_LIST, 0),
                Xfer::ControllerToHost,
                page,
            ),
            Step::IdentifyNs(i) => {
                let nsid = self.scan_list.get(i).copied().unwrap_or(0);
                (
                    identify_sqe(cns::NAMESPACE, nsid),
                    Xfer::ControllerToHost,
                    page,
                )
            }
            Step::NsDesc(i) => {
                let nsid = self.scan_found.get(i).map_or(0, |f| f.nsid);
                (
                    identify_sqe(cns::NS_ID_DESCRIPTORS, nsid),
                    Xfer::ControllerToHost,
                    page,
                )
            }
            Step::ShutdownSent => {
                let cc = Cc {
                    en: true,
                    iosqes: 6,
                    iocqes: 4,
                    shn: shutdown::SHN_NORMAL,
                    ..Cc::default()
                };
                (prop_set(reg::CC, cc.to_u32()), Xfer::None, 0)
            }
            Step::Connecting | Step::Ready | Step::Down => return Ok(()),
        };
        self.step_cid = Some(self.submit(sqe, xfer, len)?);
        Ok(())
    }

    pub(super) fn need(cqe: &Cqe, what: &str) -> Result<(), HostError> {
        if cqe.status.is_success() {
            Ok(())
        } else {
            Err(HostError::Status {
                what: what.to_string(),
                status: cqe.status,
            })
        }
    }

    pub(super) fn step_done(&mut self, cqe: Cqe, data: &[u8], now: u64) -> Result<(), HostError> {
        match self.step {
            Step::GetCap => {
                Self::need(&cqe, "Property Get CAP")?;
                self.cap = Cap::from_u64(cqe.result_u64());
                self.next_step(Step::GetVs, now);
            }
            Step::GetVs => {
                Self::need(&cqe, "Property Get VS")?;
                self.vs = cqe.dw0;
                self.next_step(Step::GetCc, now);
            }
            Step::GetCc => {
                Self::need(&cqe, "Property Get CC")?;
                let cc = Cc::from_u32(cqe.dw0);
                // CAP.TO is in 500 ms units.
                self.rdy_deadline = now.saturating_add(
                    us(self.hz, 500_000).saturating_mul(u64::from(self.cap.to).max(1)),
                );
                self.next_step(if cc.en { Step::WaitRdy } else { Step::SetCc }, now);
            }
            Step::SetCc => {
                Self::need(&cqe, "Property Set CC.EN")?;
                self.next_step(Step::WaitRdy, now);
            }
            Step::WaitRdy => {
                Self::need(&cqe, "Property Get CSTS")?;
                let csts = Csts::from_u32(cqe.dw0);
                if csts.cfs {
                    return Err(HostError::protocol(
                        "the controller reports a fatal status (CSTS.CFS)",
                    ));
                }
                if csts.rdy {
                    self.next_step(Step::IdentifyCtrl, now);
                } else if now > self.rdy_deadline {
                    return Err(HostError::Timeout(format!(
                        "the controller did not become ready within CAP.TO ({} ms)",
                        u32::from(self.cap.to) * 500
                    )));
                } else {
                    self.step_not_before = now.saturating_add(us(self.hz, CSTS_POLL_US));
                    self.next_step(Step::WaitRdy, now);
                }
            }
            Step::IdentifyCtrl => {
                Self::need(&cqe, "Identify Controller")?;
                let cd = IdentifyController::decode(data)
                    .map_err(|e| HostError::protocol(format!("Identify Controller: {e}")))?;
                self.check_identify(&cd)?;
                let ns_notices = cd.oaes & identify::oaes::NS_ATTRIBUTE != 0;
                self.cdata = Some(Box::new(cd));
                self.aer_wanted = ns_notices;
                self.next_step(
                    if ns_notices {
                        Step::SetAec
                    } else {
                        Step::GetKato
                    },
                    now,
                );
            }
            Step::SetAec => {
                if !cqe.status.is_success() {
                    tracing::warn!(
                        "nvme controller {}: Set Features Async Event Configuration failed ({}); no namespace notices",
                        self.sh.spec.name,
                        cqe.status
                    );
                    self.aer_wanted = false;
                }
                self.next_step(Step::GetKato, now);
            }
            Step::GetKato => {
                let asked = options::get().keep_alive_timeout_ms;
                self.kato_ms = if cqe.status.is_success() && cqe.dw0 != 0 && asked != 0 {
                    cqe.dw0
                } else {
                    asked
                };
                self.next_step(Step::SetQueues, now);
            }
            Step::SetQueues => {
                Self::need(&cqe, "Set Features Number of Queues")?;
                let q = NumberOfQueues::from_u32(cqe.dw0);
                let granted = q.sq_count().min(q.cq_count());
                let asked = self.sh.spec.num_io_queues.clamp(1, 65535);
                self.io_queues = u16::try_from(granted.min(asked)).unwrap_or(u16::MAX);
                self.next_step(Step::ActiveNs, now);
            }
            Step::ActiveNs => {
                let nn = self.cdata.as_ref().map_or(0, |c| c.nn);
                self.scan_list = if cqe.status.is_success() {
                    NsList::decode(data)
                        .map(|l| l.collect())
                        .map_err(|e| HostError::protocol(format!("active namespace list: {e}")))?
                } else if cqe.status.dnr && nn <= 1024 {
                    // As Linux: without the list, every nsid up to NN.
                    (1..=nn).collect()
                } else {
                    return Err(HostError::Status {
                        what: "Identify Active Namespace List".into(),
                        status: cqe.status,
                    });
                };
                self.scan_found.clear();
                self.scan_next(0, now);
            }
            Step::IdentifyNs(i) => {
                let nsid = self.scan_list.get(i).copied().unwrap_or(0);
                if cqe.status.is_success() {
                    let ns = IdentifyNamespace::decode(data).map_err(|e| {
                        HostError::protocol(format!("Identify Namespace {nsid}: {e}"))
                    })?;
                    if let Some(found) = self.namespace_usable(nsid, &ns) {
                        self.scan_found.push(found);
                        if self.vs >= VS_1_3 {
                            self.next_step(Step::NsDesc(self.scan_found.len() - 1), now);
                            return Ok(());
                        }
                    }
                } else {
                    tracing::warn!(
                        "nvme controller {}: Identify Namespace {nsid} failed: {}",
                        self.sh.spec.name,
                        cqe.status
                    );
                }
                self.scan_next(i + 1, now);
            }
            Step::NsDesc(j) => {
                if cqe.status.is_success()
                    && let Ok(descs) = NsIdDescriptors::decode(data)
                {
                    for d in descs.flatten() {
                        if let (NsIdDescriptor::Uuid(u), Some(f)) = (d, self.scan_found.get_mut(j))
                        {
                            f.uuid = Some(Uuid::from_bytes(u));
                        }
                    }
                }
                let nsid = self.scan_found.get(j).map_or(0, |f| f.nsid);
                let i = self
                    .scan_list
                    .iter()
                    .position(|&n| n == nsid)
                    .map_or(self.scan_list.len(), |p| p + 1);
                self.scan_next(i, now);
            }
            Step::ShutdownSent => {
                self.step_deadline = now.saturating_add(self.secs(SHUTDOWN_SECS));
                if cqe.status.is_success() {
                    self.next_step(Step::ShutdownWait, now);
                    self.step_deadline = now.saturating_add(self.secs(SHUTDOWN_SECS));
                } else {
                    self.close_admin();
                }
            }
            Step::ShutdownWait => {
                let csts = Csts::from_u32(cqe.dw0);
                if !cqe.status.is_success() || csts.shst == shutdown::SHST_COMPLETE {
                    self.close_admin();
                } else {
                    self.step_not_before = now.saturating_add(us(self.hz, CSTS_POLL_US));
                    let deadline = self.step_deadline;
                    self.next_step(Step::ShutdownWait, now);
                    self.step_deadline = deadline;
                }
            }
            Step::Connecting | Step::Ready | Step::Down => {}
        }
        Ok(())
    }

    /// Linux's checks of a fabrics controller's Identify data.
    pub(super) fn check_identify(&self, cd: &IdentifyController) -> Result<(), HostError> {
        let connected = self.admin.as_ref().map_or(0, Qpair::cntlid);
        if cd.cntlid != connected {
            return Err(HostError::protocol(format!(
                "Identify Controller reports cntlid {}, the Connect gave {connected}",
                cd.cntlid
            )));
        }
        if cd.ioccsz < 4 {
            return Err(HostError::protocol(format!(
                "I/O command capsule size {} is under 4 (64 bytes)",
                cd.ioccsz
            )));
        }
        if cd.iorcsz < 1 {
            return Err(HostError::protocol("I/O response capsule size is 0"));
        }
        if cd.icdoff != 0 {
            return Err(HostError::Unsupported(format!(
                "in-capsule data offset {} is not supported",
                cd.icdoff
            )));
        }
        if cd.sgls & 3 == 0 {
            return Err(HostError::Unsupported(
                "Mandatory sgls are not supported".into(),
            ));
        }
        if cd.kas == 0 {
            return Err(HostError::protocol("keep alive support (KAS) is 0"));
        }
        if cd.maxcmd == 0 {
            tracing::warn!(
                "nvme controller {}: MAXCMD is 0, using the queue size",
                self.sh.spec.name
            );
        }
        Ok(())
    }

    pub(super) fn namespace_usable(&self, nsid: u32, ns: &IdentifyNamespace) -> Option<NsFound> {
        let name = &self.sh.spec.name;
        if ns.ncap == 0 || ns.nsze == 0 {
            return None;
        }
        let Some(fmt) = ns.format() else {
            tracing::warn!("nvme controller {name}: namespace {nsid} has a bad FLBAS; skipped");
            return None;
        };
        if fmt.ms != 0 {
            tracing::warn!(
                "nvme controller {name}: namespace {nsid} has {} bytes of metadata per block, which is not supported; skipped",
                fmt.ms
            );
            return None;
        }
        let Some(bs) = fmt.block_size().filter(|b| (512..=65536).contains(b)) else {
            tracing::warn!(
                "nvme controller {name}: namespace {nsid} has an unusable block size; skipped"
            );
            return None;
        };
        Some(NsFound {
            nsid,
            block_size: bs,
            num_blocks: ns.nsze,
            uuid: None,
            nguid: ns.nguid,
            eui64: ns.eui64,
        })
    }

    pub(super) fn scan_next(&mut self, i: usize, now: u64) {
        if i < self.scan_list.len() {
            self.next_step(Step::IdentifyNs(i), now);
        } else {
            self.association_ready(now);
        }
    }

    /// The sequence is done: publish the association, then register or update bdevs.
    pub(super) fn association_ready(&mut self, now: u64) {
        let Some(cd) = self.cdata.as_deref().cloned() else {
            self.association_failed(HostError::protocol("no Identify data"), now);
            return;
        };
        let connected = self.admin.as_ref().map_or(0, Qpair::cntlid);
        let maxh2c = self.admin.as_ref().map_or(0, Qpair::maxh2cdata);
        let page = 1u64 << (12 + u32::from(self.cap.mpsmin).min(20));
        let max_transfer = cd
            .max_transfer(page)
            .unwrap_or(MAX_TRANSFER_CAP)
            .min(MAX_TRANSFER_CAP)
            .max(page);
        let mut entries = IO_QUEUE_SIZE.min(u32::from(self.cap.mqes) + 1);
        if cd.maxcmd != 0 {
            entries = entries.min(u32::from(cd.maxcmd));
        }
        let entries = u16::try_from(entries.max(2)).unwrap_or(u16::MAX);
        let opts = options::get();
        let slots = match opts.io_queue_requests {
            0 => entries,
            r => entries.min(u16::try_from(r).unwrap_or(u16::MAX)).max(1),
        };
        let mut params = self.admin_params();
        // hostsvcid is the admin queue's port; I/O queues bind the address alone.
        params.src = params.src.map(|a| SocketAddr::new(a.ip(), 0));
        params.entries = entries;
        params.slots = slots;
        params.kato_ms = 0;
        params.cntlid = connected;
        params.max_icd = (cd.ioccsz as usize * 16).saturating_sub(64);
        params.max_transfer = u32::try_from(max_transfer).unwrap_or(u32::MAX);
        *lock(&self.sh.conn) = Some(IoConnInfo {
            params,
            max_queues: self.io_queues,
            max_transfer,
        });
        let sh = self.sh.clone();
        let spec = &sh.spec;
        let found = std::mem::take(&mut self.scan_found);
        self.step = Step::Ready;
        self.step_not_before = 0;
        self.ka_next = now.saturating_add(self.ka_period());
        match self.mode {
            Mode::Attach => {
                let mut names = Vec::new();
                let mut err = None;
                for f in &found {
                    match self.register_ns(f, &cd) {
                        Ok(name) => names.push(name),
                        Err(e) => err = Some(e),
                    }
                }
                if let Some(e) = err {
                    self.fail_attach(e);
                    return;
                }
                if names.len() > spec.max_bdevs as usize {
                    self.fail_attach(HostError::Io {
                        errno: libc::ERANGE,
                        msg: format!(
                            "Maximum number of namespaces supported per NVMe controller is {}. Unable to return all names of created bdevs",
                            spec.max_bdevs
                        ),
                    });
                    return;
                }
                tracing::info!(
                    "nvme controller {} attached: {} cntlid {}, {} {} {}, {} I/O queues of {entries}, max transfer {max_transfer}, MAXH2CDATA {maxh2c}, digests header {} data {}; namespaces: {}",
                    spec.name,
                    spec.place(),
                    connected,
                    cd.mn,
                    cd.sn,
                    cd.fr,
                    self.io_queues,
                    spec.hdgst,
                    spec.ddgst,
                    self.ns_summary()
                );
                self.mode = Mode::Running;
                self.sh.assoc.fetch_add(1, Ordering::AcqRel);
                self.sh.set_state(State::Enabled);
                if let Some(r) = self.attach_rsp.take() {
                    r(Ok(names));
                }
            }
            Mode::Reconnect | Mode::Running => {
                let reconnect = self.mode == Mode::Reconnect;
                self.apply_scan(&found, &cd);
                if reconnect {
                    let secs = now.saturating_sub(self.lost_at) as f64 / self.hz as f64;
                    tracing::info!(
                        "nvme controller {}: reconnected to {} after {secs:.1} s ({} attempts), cntlid {connected}; resuming I/O",
                        spec.name,
                        spec.place(),
                        self.attempts
                    );
                    self.policy.connected();
                    self.mode = Mode::Running;
                    self.sh.fast_fail.store(false, Ordering::Release);
                    self.sh.assoc.fetch_add(1, Ordering::AcqRel);
                    self.sh.set_state(State::Enabled);
                }
            }
            Mode::Deleting => {}
        }
        self.attempts = 0;
        self.arm_aer();
    }

    pub(super) fn ns_summary(&self) -> String {
        if self.namespaces.is_empty() {
            return "none".into();
        }
        self.namespaces
            .iter()
            .map(|n| {
                format!(
                    "{} ({} blocks of {} bytes)",
                    n.bdev.name(),
                    n.info.num_blocks,
                    n.info.block_size
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub(super) fn register_ns(
        &mut self,
        f: &NsFound,
        cd: &IdentifyController,
    ) -> Result<String, HostError> {
        let generate = options::get().generate_uuids;
        let uuid = ns_uuid(f, cd.sn.as_str(), generate);
        let bdev = crate::host::register_bdev(&self.sh, f, uuid, cd)?;
        let name = bdev.name().to_string();
        self.namespaces.push(Namespace {
            info: f.clone(),
            bdev,
        });
        Ok(name)
    }

    /// After a reconnect or a namespace notice: new namespaces become bdevs, gone ones go.
    pub(super) fn apply_scan(&mut self, found: &[NsFound], cd: &IdentifyController) {
        let name = self.sh.spec.name.clone();
        let gone: Vec<usize> = self
            .namespaces
            .iter()
            .enumerate()
            .filter(|(_, n)| !found.iter().any(|f| f.nsid == n.info.nsid))
            .map(|(i, _)| i)
            .collect();
        for i in gone.into_iter().rev() {
            let n = self.namespaces.remove(i);
            tracing::warn!(
                "nvme controller {name}: namespace {} is gone; removing {}",
                n.info.nsid,
                n.bdev.name()
            );
            n.bdev.unregister(|_| {});
        }
        for f in found {
            match self.namespaces.iter().find(|n| n.info.nsid == f.nsid) {
                Some(n) => {
                    if n.info.block_size != f.block_size || n.info.num_blocks != f.num_blocks {
                        tracing::warn!(
                            "nvme controller {name}: namespace {} changed geometry ({} x {} -> {} x {}); {} keeps the old one",
                            f.nsid,
                            n.info.num_blocks,
                            n.info.block_size,
                            f.num_blocks,
                            f.block_size,
                            n.bdev.name()
                        );
                    }
                }
                None => match self.register_ns(f, cd) {
                    Ok(b) => {
                        tracing::info!("nvme controller {name}: new namespace {}: {b}", f.nsid)
                    }
                    Err(e) => tracing::error!(
                        "nvme controller {name}: namespace {}: cannot register its bdev: {e}",
                        f.nsid
                    ),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{default_hostnqn, hostid_for};
    use super::*;

    #[test]
    pub(super) fn uuids_and_host_ids() {
        let f = NsFound {
            nsid: 1,
            block_size: 512,
            num_blocks: 8,
            uuid: None,
            nguid: [0; 16],
            eui64: [0; 8],
        };
        assert_eq!(ns_uuid(&f, "SN", false), None);
        let g = ns_uuid(&f, "SN", true).unwrap();
        assert_eq!(ns_uuid(&f, "SN", true), Some(g));
        assert_ne!(ns_uuid(&f, "SN2", true), Some(g));
        let with_nguid = NsFound {
            nguid: [7; 16],
            ..f.clone()
        };
        assert_eq!(
            ns_uuid(&with_nguid, "SN", false),
            Some(Uuid::from_bytes([7; 16]))
        );
        let u = Uuid::new_v4();
        let with_uuid = NsFound {
            uuid: Some(u),
            ..with_nguid
        };
        assert_eq!(ns_uuid(&with_uuid, "SN", false), Some(u));

        let nqn = default_hostnqn();
        assert_eq!(nqn, default_hostnqn());
        let id = nqn.rsplit(':').next().unwrap();
        assert_eq!(hostid_for(&nqn), Uuid::parse_str(id).unwrap().into_bytes());
        assert_ne!(hostid_for("nqn.2016-06.io.spdk:host1"), [0; 16]);
    }
}
