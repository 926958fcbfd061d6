//! Admin commands of a controller: Identify, Get/Set Features, Get Log Page, Asynchronous Event
//! Request, Keep Alive, Abort. Everything else (Create/Delete I/O SQ/CQ among them: fabrics
//! queues come from Connect) is Invalid Opcode.

use crate::target::config;
use crate::target::controller::{ACL, AERL, AdminOutcome, Controller, Features, VERSION};
use crate::target::discovery;
use crate::target::subsystem::Namespace;
use crate::wire::command::{Sqe, admin, io};
use crate::wire::fabrics::{Nqn, Text};
use crate::wire::features::{
    ErrorRecovery, FeatureCommand, HOST_BEHAVIOR_LEN, HostBehavior, NumberOfQueues, TempThreshold,
    capabilities, fid, sel,
};
use crate::wire::identify::{
    IDENTIFY_LEN, IdentifyCommand, IdentifyController, IdentifyNamespace, IdentifyNsIndependent,
    IdentifyNvmController, NMIC_SHARED, NSTAT_READY, NsIdDescriptor, cmic, cns, cntrltype, csi,
    ctratt, encode_ns_descriptors, encode_ns_list, entry_sizes, frmw, indep_nsfeat, lpa, oaes,
    oncs, sgls, vwc,
};
use crate::wire::le::WireError;
use crate::wire::log::{
    CHANGED_NS_OVERFLOW, ERROR_ENTRY_LEN, FirmwareSlotLog, GetLogPage, HealthLog, copy_window,
    effects, encode_changed_ns, encode_command_effects, encode_supported, lid,
};
use crate::wire::status::Status;
use std::sync::Arc;

/// Host Identifier (extended, 128-bit) data: 16 bytes.
const HOST_ID_LEN: usize = 16;

pub(super) fn execute(c: &mut Controller, sqe: &Sqe, data: &mut [u8]) -> AdminOutcome {
    if sqe.is_fabrics() {
        return AdminOutcome::status(Status::INVALID_OPCODE);
    }
    if sqe.fuse != 0 {
        return AdminOutcome::status(Status::INVALID_FIELD);
    }
    // Before CC.EN only fabrics commands are accepted.
    if !c.cc.en {
        return AdminOutcome::status(Status::COMMAND_SEQUENCE_ERROR);
    }
    match sqe.opcode {
        admin::IDENTIFY => identify(c, sqe, data),
        admin::GET_LOG_PAGE => get_log_page(c, sqe, data),
        admin::GET_FEATURES => get_features(c, sqe, data),
        admin::SET_FEATURES => set_features(c, sqe, data),
        admin::ASYNC_EVENT_REQUEST => async_event_request(c, sqe),
        admin::KEEP_ALIVE => AdminOutcome::status(Status::SUCCESS),
        admin::ABORT => abort(c, sqe),
        _ => AdminOutcome::status(Status::INVALID_OPCODE),
    }
}

fn async_event_request(c: &mut Controller, sqe: &Sqe) -> AdminOutcome {
    if c.notice.pending && !c.notice.masked {
        let done = c.report(sqe.cid);
        return AdminOutcome::dw0(done.dw0);
    }
    if c.aers.len() > usize::from(AERL) {
        return AdminOutcome::status(Status::ASYNC_EVENT_LIMIT_EXCEEDED);
    }
    c.aers.push(sqe.cid);
    AdminOutcome::Parked
}

fn abort(c: &mut Controller, sqe: &Sqe) -> AdminOutcome {
    let (sqid, cid) = (sqe.abort_sqid(), sqe.abort_cid());
    if sqid == 0 {
        c.aers.retain(|&a| a != cid);
    }
    AdminOutcome::Abort { sqid, cid }
}

// ---------------------------------------------------------------------------------------------
// Features

/// Whether any namespace's bdev has a volatile write cache (Identify VWC, feature 06h).
pub(super) fn volatile_cache(c: &Controller) -> bool {
    !c.discovery
        && c.subsystem
            .lock()
            .namespaces
            .values()
            .any(|n| n.volatile_cache)
}

/// The features a discovery controller has: Keep Alive Timer and Async Event Configuration.
fn discovery_feature(f: u8) -> bool {
    matches!(f, fid::KEEP_ALIVE_TIMER | fid::ASYNC_EVENT_CONFIG)
}

fn get_features(c: &mut Controller, sqe: &Sqe, data: &mut [u8]) -> AdminOutcome {
    let cmd = FeatureCommand::from_sqe(sqe);
    let f = cmd.fid;
    if c.discovery && !discovery_feature(f) {
        return AdminOutcome::status(Status::INVALID_FIELD);
    }
    let vwc = volatile_cache(c);
    let changeable = match f {
        fid::ARBITRATION
        | fid::POWER_MGMT
        | fid::TEMP_THRESHOLD
        | fid::ERROR_RECOVERY
        | fid::NUMBER_OF_QUEUES
        | fid::INTERRUPT_COALESCING
        | fid::WRITE_ATOMICITY
        | fid::ASYNC_EVENT_CONFIG
        | fid::KEEP_ALIVE_TIMER
        | fid::HOST_BEHAVIOR => true,
        // A bdev's cache cannot be turned off; absent, the feature is not there at all.
        fid::VOLATILE_WRITE_CACHE if vwc => false,
        fid::HOST_IDENTIFIER => false,
        _ => return AdminOutcome::status(Status::INVALID_FIELD),
    };
    // Nothing is saveable, so "saved" reads as the default.
    let (feats, kato) = match cmd.sel {
        sel::CURRENT => (c.features, c.kato_ms),
        sel::DEFAULT | sel::SAVED => (Features::defaults(c.discovery, &c.opts), 0),
        sel::SUPPORTED => {
            return AdminOutcome::dw0(if changeable {
                capabilities::CHANGEABLE
            } else {
                0
            });
        }
        _ => return AdminOutcome::status(Status::INVALID_FIELD),
    };
    let dw0 = match f {
        fid::ARBITRATION => feats.arbitration,
        fid::POWER_MGMT => feats.power_management,
        fid::TEMP_THRESHOLD => {
            let t = TempThreshold::from_u32(cmd.cdw11);
            if t.tmpsel != 0 {
                return AdminOutcome::status(Status::INVALID_FIELD);
            }
            let tmpth = match t.thsel {
                0 => feats.temp_over,
                1 => feats.temp_under,
                _ => return AdminOutcome::status(Status::INVALID_FIELD),
            };
            TempThreshold { tmpth, ..t }.to_u32()
        }
        fid::ERROR_RECOVERY => feats.error_recovery.to_u32(),
        fid::VOLATILE_WRITE_CACHE => crate::wire::features::VWC_ENABLE,
        fid::NUMBER_OF_QUEUES => feats.queues.to_u32(),
        fid::INTERRUPT_COALESCING => feats.interrupt_coalescing,
        fid::WRITE_ATOMICITY => feats.write_atomicity,
        fid::ASYNC_EVENT_CONFIG => feats.async_event_config,
        fid::KEEP_ALIVE_TIMER => kato,
        fid::HOST_BEHAVIOR => {
            return match feats.host_behavior.encode(data) {
                Ok(n) => AdminOutcome::data(n as u32),
                Err(_) => AdminOutcome::status(Status::INVALID_FIELD),
            };
        }
        fid::HOST_IDENTIFIER => {
            // Only the 128-bit form exists over fabrics (EXHID, cdw11 bit 0).
            if cmd.cdw11 & 1 == 0 {
                return AdminOutcome::status(Status::INVALID_FIELD);
            }
            let Some(out) = data.get_mut(..HOST_ID_LEN) else {
                return AdminOutcome::status(Status::INVALID_FIELD);
            };
            out.copy_from_slice(c.hostid.as_bytes());
            return AdminOutcome::data(HOST_ID_LEN as u32);
        }
        _ => return AdminOutcome::status(Status::INVALID_FIELD),
    };
    AdminOutcome::dw0(dw0)
}

fn set_features(c: &mut Controller, sqe: &Sqe, data: &mut [u8]) -> AdminOutcome {
    let cmd = FeatureCommand::from_sqe(sqe);
    let (f, v) = (cmd.fid, cmd.cdw11);
    if c.discovery && !discovery_feature(f) {
        return AdminOutcome::status(Status::INVALID_FIELD);
    }
    match f {
        fid::ARBITRATION
        | fid::POWER_MGMT
        | fid::TEMP_THRESHOLD
        | fid::ERROR_RECOVERY
        | fid::VOLATILE_WRITE_CACHE
        | fid::NUMBER_OF_QUEUES
        | fid::INTERRUPT_COALESCING
        | fid::WRITE_ATOMICITY
        | fid::ASYNC_EVENT_CONFIG
        | fid::KEEP_ALIVE_TIMER
        | fid::HOST_BEHAVIOR => {}
        // The host identifier comes with the Connect command on fabrics.
        fid::HOST_IDENTIFIER => return AdminOutcome::status(Status::COMMAND_SEQUENCE_ERROR),
        _ => return AdminOutcome::status(Status::INVALID_FIELD),
    }
    if cmd.save {
        return AdminOutcome::status(Status::FEATURE_NOT_SAVEABLE);
    }
    let vwc = volatile_cache(c);
    let max_queues = c.opts.max_io_qpairs_per_ctrlr;
    let feats = &mut c.features;
    match f {
        fid::ARBITRATION => feats.arbitration = v,
        fid::POWER_MGMT => {
            // One power state (NPSS 0); workload hints are not used.
            if v & 0x1F != 0 {
                return AdminOutcome::status(Status::INVALID_FIELD);
            }
            feats.power_management = v & 0xFF;
        }
        fid::TEMP_THRESHOLD => {
            let t = TempThreshold::from_u32(v);
            // The composite temperature is the only sensor (0Fh: all sensors).
            if t.tmpsel != 0 && t.tmpsel != 0xF {
                return AdminOutcome::status(Status::INVALID_FIELD);
            }
            match t.thsel {
                0 => feats.temp_over = t.tmpth,
                1 => feats.temp_under = t.tmpth,
                _ => return AdminOutcome::status(Status::INVALID_FIELD),
            }
        }
        fid::ERROR_RECOVERY => {
            let e = ErrorRecovery::from_u32(v);
            // DULBE: deallocated blocks read as data, never as an error.
            if e.dulbe {
                return AdminOutcome::status(Status::INVALID_FIELD);
            }
            feats.error_recovery = e;
        }
        fid::VOLATILE_WRITE_CACHE => {
            if !vwc {
                return AdminOutcome::status(Status::INVALID_FIELD);
            }
            // Enabling is a no-op; a bdev's cache cannot be turned off, and pretending so
            // would let the host skip the FLUSHes durability needs.
            if v & crate::wire::features::VWC_ENABLE == 0 {
                return AdminOutcome::status(Status::FEATURE_NOT_CHANGEABLE);
            }
        }
        fid::NUMBER_OF_QUEUES => {
            let asked = NumberOfQueues::from_u32(v);
            if !asked.is_valid_request() {
                return AdminOutcome::status(Status::INVALID_FIELD);
            }
            let max = max_queues.saturating_sub(1);
            feats.queues = NumberOfQueues {
                nsq: asked.nsq.min(max),
                ncq: asked.ncq.min(max),
            };
            return AdminOutcome::dw0(feats.queues.to_u32());
        }
        fid::INTERRUPT_COALESCING => feats.interrupt_coalescing = v & 0xFFFF,
        fid::WRITE_ATOMICITY => {
            feats.write_atomicity = v & crate::wire::features::WRITE_ATOMICITY_DN
        }
        fid::ASYNC_EVENT_CONFIG => feats.async_event_config = v,
        fid::KEEP_ALIVE_TIMER => c.kato_ms = c.opts.effective_kato(v),
        fid::HOST_BEHAVIOR => {
            let Some(src) = data.get(..HOST_BEHAVIOR_LEN) else {
                return AdminOutcome::status(Status::INVALID_FIELD);
            };
            // ACRE, ETDAS, LBAFEE are booleans; anything else there is reserved.
            if src.iter().take(3).any(|&b| b > 1) || src.iter().skip(3).any(|&b| b != 0) {
                return AdminOutcome::status(Status::INVALID_FIELD);
            }
            match HostBehavior::decode(src) {
                Ok(h) => feats.host_behavior = h,
                Err(_) => return AdminOutcome::status(Status::INVALID_FIELD),
            }
        }
        _ => return AdminOutcome::status(Status::INVALID_FIELD),
    }
    AdminOutcome::status(Status::SUCCESS)
}

// ---------------------------------------------------------------------------------------------
// Identify

/// Identify Controller as this controller reports it (exports.md §4.3: what the Linux host
/// checks — cntlid, kas, ioccsz, iorcsz, icdoff, sgls — and SPDK's values for the rest).
pub fn identify_controller(c: &Controller) -> IdentifyController {
    let st = c.subsystem.lock();
    let o = &c.opts;
    let crdt = config::crdt();
    let text20 = |s: &str| Text::<20>::new(s).unwrap_or_default();
    let text40 = |s: &str| Text::<40>::new(s).unwrap_or_default();
    let vwc = !c.discovery && st.namespaces.values().any(|n| n.volatile_cache);
    IdentifyController {
        sn: text20(&st.params.serial_number),
        mn: text40(&st.params.model_number),
        fr: firmware_revision(),
        rab: 6,
        cmic: if c.discovery {
            cmic::MULTI_CONTROLLER
        } else {
            cmic::MULTI_PORT | cmic::MULTI_CONTROLLER
        },
        mdts: o.mdts(),
        cntlid: c.cntlid,
        ver: VERSION,
        oaes: if c.discovery {
            oaes::DISCOVERY_LOG_CHANGE
        } else {
            oaes::NS_ATTRIBUTE
        },
        ctratt: ctratt::HOST_ID_128,
        cntrltype: if c.discovery {
            cntrltype::DISCOVERY
        } else {
            cntrltype::IO
        },
        crdt: [crdt.crdt1, crdt.crdt2, crdt.crdt3],
        acl: ACL,
        aerl: AERL,
        frmw: frmw::SLOT1_RO | frmw::slots(1),
        lpa: if c.discovery {
            lpa::EXTENDED_DATA | lpa::MISC
        } else {
            lpa::CMD_EFFECTS | lpa::EXTENDED_DATA | lpa::MISC
        },
        wctemp: WCTEMP,
        cctemp: CCTEMP,
        kas: o.kas,
        sqes: entry_sizes(6, 6),
        cqes: entry_sizes(4, 4),
        maxcmd: o.max_queue_depth,
        nn: if c.discovery { 0 } else { st.max_nsid() },
        oncs: if c.discovery {
            0
        } else {
            oncs::DSM | oncs::WRITE_ZEROES | oncs::SAVE_SELECT
        },
        vwc: if vwc { vwc::PRESENT } else { 0 },
        sgls: sgls::SUPPORTED | sgls::OFFSET | sgls::TRANSPORT,
        subnqn: Nqn::new(&st.nqn).unwrap_or_default(),
        ioccsz: o.ioccsz(),
        iorcsz: 1,
        icdoff: 0,
        // Dynamic controller model.
        fcatt: 0,
        msdbd: 1,
        ..IdentifyController::default()
    }
}

/// FR: the crate's version, cut to the field's 8 bytes.
fn firmware_revision() -> Text<8> {
    let v = env!("CARGO_PKG_VERSION");
    Text::new(v.get(..v.len().min(8)).unwrap_or("")).unwrap_or_default()
}

/// Warning and critical composite temperature thresholds (Kelvin): 70 °C and 85 °C.
const WCTEMP: u16 = 343;
const CCTEMP: u16 = 358;
/// The composite temperature the SMART log reports (Kelvin, 35 °C): there is no sensor.
const COMPOSITE_TEMPERATURE: u16 = 308;

/// Identify Namespace (CNS 00h) for an active namespace.
pub fn identify_namespace(ns: &Namespace) -> IdentifyNamespace {
    let lbads = if ns.block_size.is_power_of_two() {
        ns.block_size.trailing_zeros() as u8
    } else {
        0
    };
    let mut id = IdentifyNamespace::simple(ns.num_blocks, lbads);
    id.nmic = NMIC_SHARED;
    id.nguid = ns.nguid;
    id.eui64 = ns.eui64.unwrap_or_default();
    id.nvmcap = u128::from(ns.num_blocks) * u128::from(ns.block_size);
    let boundary = ns.desc.bdev().props().optimal_io_boundary;
    id.noiob = u16::try_from(boundary).unwrap_or(0);
    id
}

/// The namespace identification descriptors (CNS 03h): EUI-64 when there is one, NGUID,
/// UUID, and the command set (NVM); the array and how many of it to use.
fn ns_descriptors(ns: &Namespace) -> ([NsIdDescriptor; 4], usize) {
    let nguid = NsIdDescriptor::Nguid(ns.nguid);
    let uuid = NsIdDescriptor::Uuid(*ns.uuid.as_bytes());
    let nvm = NsIdDescriptor::Csi(csi::NVM);
    match ns.eui64 {
        Some(e) => ([NsIdDescriptor::Eui64(e), nguid, uuid, nvm], 4),
        None => ([nguid, uuid, nvm, nvm], 3),
    }
}

/// Copies what fits of a structure into the host's buffer.
fn send(data: &mut [u8], src: &[u8]) -> AdminOutcome {
    let n = data.len().min(src.len());
    data.iter_mut().zip(src).for_each(|(d, s)| *d = *s);
    AdminOutcome::data(n as u32)
}

/// The namespace an NSID names: Ok(Some) active, Ok(None) valid but inactive (1..=NN), Err
/// otherwise.
fn lookup_ns(c: &Controller, nsid: u32) -> Result<Option<Arc<Namespace>>, Status> {
    let st = c.subsystem.lock();
    if nsid == 0 || nsid > st.max_nsid() {
        return Err(Status::INVALID_NAMESPACE);
    }
    Ok(st.namespaces.get(&nsid).cloned())
}

fn identify(c: &mut Controller, sqe: &Sqe, data: &mut [u8]) -> AdminOutcome {
    let cmd = IdentifyCommand::from_sqe(sqe);
    if data.is_empty() {
        return AdminOutcome::status(Status::INVALID_FIELD);
    }
    if c.discovery && cmd.cns != cns::CONTROLLER {
        return AdminOutcome::status(Status::INVALID_FIELD);
    }
    let mut buf = [0u8; IDENTIFY_LEN];
    let built = match cmd.cns {
        cns::CONTROLLER => identify_controller(c).encode(&mut buf),
        cns::NAMESPACE => match lookup_ns(c, sqe.nsid) {
            Err(s) => return AdminOutcome::status(s),
            // An inactive NSID reads as zeroes.
            Ok(None) => Ok(IDENTIFY_LEN),
            Ok(Some(ns)) => identify_namespace(&ns).encode(&mut buf),
        },
        cns::ACTIVE_NS_LIST | cns::IOCS_ACTIVE_NS_LIST => {
            if cmd.cns == cns::IOCS_ACTIVE_NS_LIST && cmd.csi != csi::NVM {
                return AdminOutcome::status(Status::INVALID_FIELD);
            }
            if sqe.nsid >= 0xFFFF_FFFE {
                return AdminOutcome::status(Status::INVALID_NAMESPACE);
            }
            let st = c.subsystem.lock();
            let after = sqe.nsid;
            encode_ns_list(
                st.namespaces
                    .range(after.saturating_add(1)..)
                    .map(|(k, _)| *k),
                &mut buf,
            )
        }
        cns::NS_ID_DESCRIPTORS => match lookup_ns(c, sqe.nsid) {
            Ok(Some(ns)) => {
                let (d, n) = ns_descriptors(&ns);
                encode_ns_descriptors(d.get(..n).unwrap_or(&d), &mut buf)
            }
            _ => return AdminOutcome::status(Status::INVALID_NAMESPACE),
        },
        cns::IOCS_NAMESPACE => {
            if cmd.csi != csi::NVM {
                return AdminOutcome::status(Status::INVALID_FIELD);
            }
            // The NVM command set's namespace structure: nothing beyond the defaults.
            match lookup_ns(c, sqe.nsid) {
                Err(s) => return AdminOutcome::status(s),
                Ok(_) => Ok(IDENTIFY_LEN),
            }
        }
        cns::IOCS_CONTROLLER => {
            if cmd.csi != csi::NVM {
                return AdminOutcome::status(Status::INVALID_FIELD);
            }
            let st = c.subsystem.lock();
            IdentifyNvmController {
                wzsl: st.params.wzsl,
                dmrsl: st.params.dmrsl,
                ..IdentifyNvmController::default()
            }
            .encode(&mut buf)
        }
        cns::IOCS_INDEPENDENT_NAMESPACE => match lookup_ns(c, sqe.nsid) {
            Err(s) => return AdminOutcome::status(s),
            Ok(None) => Ok(IDENTIFY_LEN),
            Ok(Some(ns)) => IdentifyNsIndependent {
                nsfeat: if ns.volatile_cache {
                    0
                } else {
                    indep_nsfeat::VWC_NOT_PRESENT
                },
                nmic: NMIC_SHARED,
                nstat: NSTAT_READY,
                ..IdentifyNsIndependent::default()
            }
            .encode(&mut buf),
        },
        _ => return AdminOutcome::status(Status::INVALID_FIELD),
    };
    match built {
        Ok(_) => send(data, &buf),
        Err(e) => {
            tracing::warn!("identify cns {:#x}: {e}", cmd.cns);
            AdminOutcome::status(Status::INTERNAL)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Get Log Page

/// The log pages an NVM controller offers, and a discovery controller.
const NVM_LOGS: &[u8] = &[
    lid::SUPPORTED,
    lid::ERROR,
    lid::HEALTH,
    lid::FW_SLOT,
    lid::CHANGED_NS,
    lid::CMD_EFFECTS,
];
const DISCOVERY_LOGS: &[u8] = &[lid::SUPPORTED, lid::DISCOVERY];

/// The admin and I/O commands, with their effects (log 05h).
const ADMIN_EFFECTS: &[(u8, u32)] = &[
    (admin::GET_LOG_PAGE, effects::CSUPP),
    (admin::IDENTIFY, effects::CSUPP),
    (admin::ABORT, effects::CSUPP),
    (admin::SET_FEATURES, effects::CSUPP),
    (admin::GET_FEATURES, effects::CSUPP),
    (admin::ASYNC_EVENT_REQUEST, effects::CSUPP),
    (admin::KEEP_ALIVE, effects::CSUPP),
];
const IO_EFFECTS: &[(u8, u32)] = &[
    (io::FLUSH, effects::CSUPP),
    (io::WRITE, effects::CSUPP | effects::LBCC),
    (io::READ, effects::CSUPP),
    (io::WRITE_ZEROES, effects::CSUPP | effects::LBCC),
    (io::DATASET_MANAGEMENT, effects::CSUPP | effects::LBCC),
];

/// The largest log built in memory (Changed Namespace List, Command Effects).
const LOG_4K: usize = 4096;

fn get_log_page(c: &mut Controller, sqe: &Sqe, data: &mut [u8]) -> AdminOutcome {
    let req = GetLogPage::from_sqe(sqe);
    // Byte offsets must be dword aligned; index offsets (OT) are not offered (IOS clear).
    if req.ot {
        return AdminOutcome::status(Status::INVALID_FIELD);
    }
    if let Some(s) = req.offset_error() {
        return AdminOutcome::status(s);
    }
    // The length must fit the buffer the host gave.
    let Some(out) = usize::try_from(req.len())
        .ok()
        .and_then(|len| data.get_mut(..len))
    else {
        return AdminOutcome::status(Status::INVALID_FIELD);
    };
    let supported = if c.discovery {
        DISCOVERY_LOGS
    } else {
        NVM_LOGS
    };
    if !supported.contains(&req.lid) {
        return AdminOutcome::status(Status::INVALID_LOG_PAGE);
    }
    if req.lid == lid::DISCOVERY {
        return match discovery::read(&c.hostnqn, &c.opts, req.lpo, out) {
            Ok(()) => {
                if !req.rae {
                    c.unmask();
                }
                AdminOutcome::data(out.len() as u32)
            }
            Err(s) => AdminOutcome::status(s),
        };
    }
    let mut buf = [0u8; LOG_4K];
    let built: Result<usize, WireError> = match req.lid {
        lid::SUPPORTED => encode_supported(supported, &mut buf),
        // No error is ever logged: one empty entry.
        lid::ERROR => Ok(ERROR_ENTRY_LEN),
        lid::HEALTH => HealthLog {
            temperature: COMPOSITE_TEMPERATURE,
            ..HealthLog::default()
        }
        .encode(&mut buf),
        lid::FW_SLOT => {
            let mut frs = [Text::<8>::empty(); 7];
            frs[0] = firmware_revision();
            FirmwareSlotLog { afi: 1, frs }.encode(&mut buf)
        }
        lid::CHANGED_NS => {
            if c.changed_overflow {
                encode_changed_ns([CHANGED_NS_OVERFLOW], &mut buf)
            } else {
                encode_changed_ns(c.changed.iter().copied(), &mut buf)
            }
        }
        lid::CMD_EFFECTS => encode_command_effects(ADMIN_EFFECTS, IO_EFFECTS, &mut buf),
        _ => return AdminOutcome::status(Status::INVALID_LOG_PAGE),
    };
    let page = match built {
        Ok(n) => buf.get(..n).unwrap_or(&buf),
        Err(e) => {
            tracing::warn!("log page {:#x}: {e}", req.lid);
            return AdminOutcome::status(Status::INTERNAL);
        }
    };
    // An offset past the end of the page is invalid; reading up to and past it gives zeroes.
    if req.lpo > page.len() as u64 {
        return AdminOutcome::status(Status::INVALID_FIELD);
    }
    copy_window(page, req.lpo, out);
    if req.lid == lid::CHANGED_NS && !req.rae {
        c.changed.clear();
        c.changed_overflow = false;
        c.unmask();
    }
    AdminOutcome::data(out.len() as u32)
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::controller::testing::{
        HOSTID, controller, discovery, done, get_features as getf, get_log, identify as id_sqe,
        set_features as setf, status, subsystem,
    };
    use crate::target::subsystem::{DISCOVERY_NQN, NamespaceParams, Target};
    use crate::wire::fabrics::VS_1_3;
    use crate::wire::identify::{NsIdDescriptors, NsList};
    use bdev::BdevDesc;
    use bdev::malloc::{self, rpc::MallocCreateParams};
    use poller::Harness;
    use serde_json::json;

    #[test]
    fn identify_controller_has_what_the_linux_host_checks() {
        let nqn = "nqn.2016-06.io.pcache:admin-idctrl";
        let s = subsystem(nqn, &[]);
        let mut c = controller(&s, "nqn.h:idctrl", 0x1234);
        let mut d = [0xAAu8; 4096];
        assert_eq!(
            done(&mut c, &id_sqe(cns::CONTROLLER, 0, 0), &mut d),
            (Status::SUCCESS, 0, 4096)
        );
        // The fields at their offsets, read byte by byte.
        let u16_at = |o: usize| u16::from_le_bytes([d[o], d[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes([d[o], d[o + 1], d[o + 2], d[o + 3]]);
        assert_eq!(u16_at(78), 0x1234, "cntlid");
        assert_eq!(u32_at(80), VS_1_3, "ver");
        assert_eq!(
            d[76] & cmic::MULTI_CONTROLLER,
            cmic::MULTI_CONTROLLER,
            "cmic"
        );
        assert_eq!(d[77], 5, "mdts: 128 KiB of 4 KiB pages");
        assert_eq!(u32_at(92), oaes::NS_ATTRIBUTE, "oaes");
        assert_eq!(d[111], cntrltype::IO, "cntrltype");
        assert_eq!((d[258], d[259]), (ACL, AERL), "acl aerl");
        assert_eq!(u16_at(320), 100, "kas");
        assert_eq!((d[512], d[513]), (0x66, 0x44), "sqes cqes");
        assert_eq!(u16_at(514), 128, "maxcmd");
        assert_eq!(u32_at(516), 32, "nn = max_namespaces");
        assert_eq!(u16_at(520) & (oncs::DSM | oncs::WRITE_ZEROES), 0x0C, "oncs");
        assert_eq!(d[525], 0, "vwc: no namespace has a volatile cache");
        assert_ne!(u32_at(536) & 3, 0, "sgls bits 0/1");
        assert_eq!(u32_at(1792), 260, "ioccsz = 4 + 4096/16");
        assert_eq!(u32_at(1796), 1, "iorcsz");
        assert_eq!(u16_at(1800), 0, "icdoff");
        assert_eq!(d[1803], 1, "msdbd");
        assert_eq!(&d[4..17], b"SN-CTRLR-TEST");
        assert_eq!(&d[24..40], b"pcache test ctrl");
        assert!(d[40..64].iter().all(|&b| b == b' '), "mn is space padded");
        assert_eq!(&d[768..768 + nqn.len()], nqn.as_bytes());
        assert_eq!(d[768 + nqn.len()], 0);
        assert!(
            d[2048..].iter().all(|&b| b == 0),
            "reserved and power states zero"
        );
        // And through the wire decoder.
        let id = IdentifyController::decode(&d).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(id.sn, "SN-CTRLR-TEST");
        assert_eq!(id.mn, "pcache test ctrl");
        assert_eq!(id.fr, env!("CARGO_PKG_VERSION"));
        assert_eq!(id.subnqn, nqn);
        assert_ne!(id.kas, 0);
        assert!(id.ioccsz >= 4 && id.iorcsz >= 1);
        assert_eq!(id.ctratt & ctratt::HOST_ID_128, ctratt::HOST_ID_128);
        assert_eq!(id.lpa & lpa::EXTENDED_DATA, lpa::EXTENDED_DATA);
        assert_eq!(id.frmw, 0x03);
        assert_eq!(id.crdt, [0, 0, 0]);
        // A short buffer gets what fits.
        let mut short = [0u8; 100];
        assert_eq!(
            done(&mut c, &id_sqe(cns::CONTROLLER, 0, 0), &mut short),
            (Status::SUCCESS, 0, 100)
        );
        assert_eq!(&short[..], &d[..100]);
        assert_eq!(
            done(&mut c, &id_sqe(cns::CONTROLLER, 0, 0), &mut []).0,
            Status::INVALID_FIELD
        );
        // Unknown CNS.
        for cns in [
            cns::NVM_SET_LIST,
            cns::CONTROLLER_LIST,
            cns::IO_COMMAND_SETS,
            0xFF,
        ] {
            assert_eq!(status(&mut c, &id_sqe(cns, 0, 0)), Status::INVALID_FIELD);
        }
    }

    #[test]
    fn identify_on_the_discovery_controller() {
        let mut c = controller(&discovery(), "nqn.h:iddisc", 0x21);
        assert!(c.is_discovery());
        assert_eq!(c.io_queues_granted(), 0);
        let mut d = [0u8; 4096];
        assert_eq!(
            done(&mut c, &id_sqe(cns::CONTROLLER, 0, 0), &mut d).0,
            Status::SUCCESS
        );
        let id = IdentifyController::decode(&d).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(id.cntrltype, cntrltype::DISCOVERY);
        assert_eq!(id.subnqn, DISCOVERY_NQN);
        assert_eq!(id.cntlid, 0x21);
        assert_eq!(id.oaes, oaes::DISCOVERY_LOG_CHANGE);
        assert_eq!((id.nn, id.oncs, id.vwc), (0, 0, 0));
        assert!(id.ioccsz >= 4 && id.iorcsz >= 1 && id.sgls & 3 != 0);
        for cns in [cns::NAMESPACE, cns::ACTIVE_NS_LIST, cns::NS_ID_DESCRIPTORS] {
            assert_eq!(status(&mut c, &id_sqe(cns, 1, 0)), Status::INVALID_FIELD);
        }
    }

    /// A subsystem with malloc namespaces 1 (EUI-64 given) and 5, opened on a harness thread.
    fn with_namespaces(nqn: &str, tag: &str) -> (Harness, std::sync::Arc<Subsystem>) {
        let h = Harness::new(1);
        let s = subsystem(nqn, &[]);
        h.run_on(0, || {
            for (name, blocks, bs, boundary) in [("a", 256, 512, 8), ("b", 64, 4096, 0)] {
                let mut p = MallocCreateParams::new(&format!("{tag}_{name}"), blocks, bs);
                p.optimal_io_boundary = boundary;
                malloc::create(p).unwrap_or_else(|e| panic!("{e}"));
            }
            let ns = |v| -> NamespaceParams {
                serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"))
            };
            let t = Target::get();
            let one = t
                .add_namespace(
                    nqn,
                    ns(json!({"nsid": 1, "bdev_name": format!("{tag}_a"),
                              "eui64": "0011223344556677",
                              "nguid": "000102030405060708090A0B0C0D0E0F",
                              "uuid": "6c1f3d4e-0a6b-4b5e-9d1c-2f3e4a5b6c7d"})),
                )
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(one, 1);
            let five = t
                .add_namespace(nqn, ns(json!({"nsid": 5, "bdev_name": format!("{tag}_b")})))
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(five, 5);
        });
        (h, s)
    }

    use crate::target::subsystem::Subsystem;

    #[test]
    fn identify_namespaces_lists_and_descriptors() {
        let nqn = "nqn.2016-06.io.pcache:admin-idns";
        let (_h, s) = with_namespaces(nqn, "admin_idns");
        let mut c = controller(&s, "nqn.h:idns", 1);
        let mut d = [0u8; 4096];
        assert_eq!(
            done(&mut c, &id_sqe(cns::NAMESPACE, 1, 0), &mut d).0,
            Status::SUCCESS
        );
        let id = IdentifyNamespace::decode(&d).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((id.nsze, id.ncap, id.nuse), (256, 256, 256));
        assert_eq!(id.block_size(), Some(512));
        assert_eq!((id.nlbaf, id.flbas), (0, 0));
        assert_eq!(id.nmic, NMIC_SHARED);
        assert_eq!(id.noiob, 8);
        assert_eq!(id.eui64, [0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77]);
        assert_eq!(
            id.nguid,
            [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]
        );
        // The same bytes at their offsets.
        assert_eq!(&d[0..8], &256u64.to_le_bytes());
        assert_eq!(d[30], NMIC_SHARED);
        assert_eq!(&d[104..120], &id.nguid);
        assert_eq!(&d[120..128], &id.eui64);
        assert_eq!(d[128 + 2], 9, "lbaf0.lbads");

        done(&mut c, &id_sqe(cns::NAMESPACE, 5, 0), &mut d);
        let id5 = IdentifyNamespace::decode(&d).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (id5.nsze, id5.block_size(), id5.eui64),
            (64, Some(4096), [0; 8])
        );
        let uuid5 = s
            .lock()
            .namespaces
            .get(&5)
            .map(|n| n.nguid)
            .unwrap_or_default();
        assert_eq!(id5.nguid, uuid5);

        // Inactive but in range: zeroes, success. Out of range: Invalid Namespace.
        d.fill(0xEE);
        assert_eq!(
            done(&mut c, &id_sqe(cns::NAMESPACE, 2, 0), &mut d),
            (Status::SUCCESS, 0, 4096)
        );
        assert!(d.iter().all(|&b| b == 0));
        for nsid in [0, 33, 0xFFFF_FFFF] {
            assert_eq!(
                status(&mut c, &id_sqe(cns::NAMESPACE, nsid, 0)),
                Status::INVALID_NAMESPACE,
                "{nsid}"
            );
        }

        // Active namespace lists.
        let list = |c: &mut Controller, cns: u8, nsid: u32| -> Vec<u32> {
            let mut d = [0u8; 4096];
            assert_eq!(done(c, &id_sqe(cns, nsid, 0), &mut d).0, Status::SUCCESS);
            NsList::decode(&d)
                .unwrap_or_else(|e| panic!("{e}"))
                .collect()
        };
        assert_eq!(list(&mut c, cns::ACTIVE_NS_LIST, 0), vec![1, 5]);
        assert_eq!(list(&mut c, cns::ACTIVE_NS_LIST, 1), vec![5]);
        assert_eq!(list(&mut c, cns::ACTIVE_NS_LIST, 5), Vec::<u32>::new());
        assert_eq!(list(&mut c, cns::IOCS_ACTIVE_NS_LIST, 0), vec![1, 5]);
        assert_eq!(
            status(&mut c, &id_sqe(cns::ACTIVE_NS_LIST, 0xFFFF_FFFE, 0)),
            Status::INVALID_NAMESPACE
        );
        assert_eq!(
            status(&mut c, &id_sqe(cns::IOCS_ACTIVE_NS_LIST, 0, 2)),
            Status::INVALID_FIELD
        );

        // Descriptors: EUI-64, NGUID, UUID, CSI for 1; no EUI-64 for 5.
        let descs = |c: &mut Controller, nsid: u32| -> Vec<NsIdDescriptor> {
            let mut d = [0u8; 4096];
            assert_eq!(
                done(c, &id_sqe(cns::NS_ID_DESCRIPTORS, nsid, 0), &mut d).0,
                Status::SUCCESS
            );
            NsIdDescriptors::decode(&d)
                .unwrap_or_else(|e| panic!("{e}"))
                .map(|r| r.unwrap_or_else(|e| panic!("{e}")))
                .collect()
        };
        let uuid = *uuid::Uuid::parse_str("6c1f3d4e-0a6b-4b5e-9d1c-2f3e4a5b6c7d")
            .unwrap_or_default()
            .as_bytes();
        assert_eq!(
            descs(&mut c, 1),
            vec![
                NsIdDescriptor::Eui64([0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77]),
                NsIdDescriptor::Nguid([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]),
                NsIdDescriptor::Uuid(uuid),
                NsIdDescriptor::Csi(csi::NVM),
            ]
        );
        let d5 = descs(&mut c, 5);
        assert_eq!(d5.len(), 3);
        assert!(matches!(d5.first(), Some(NsIdDescriptor::Nguid(_))));
        assert_eq!(
            status(&mut c, &id_sqe(cns::NS_ID_DESCRIPTORS, 2, 0)),
            Status::INVALID_NAMESPACE
        );

        // Command set specific structures.
        d.fill(0xEE);
        assert_eq!(
            done(&mut c, &id_sqe(cns::IOCS_NAMESPACE, 1, csi::NVM), &mut d).0,
            Status::SUCCESS
        );
        assert!(d.iter().all(|&b| b == 0));
        assert_eq!(
            status(&mut c, &id_sqe(cns::IOCS_NAMESPACE, 1, csi::ZNS)),
            Status::INVALID_FIELD
        );
        assert_eq!(
            done(&mut c, &id_sqe(cns::IOCS_CONTROLLER, 0, csi::NVM), &mut d).0,
            Status::SUCCESS
        );
        let nvm = IdentifyNvmController::decode(&d).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((nvm.wzsl, nvm.dmrsl), (5, 256));
        assert_eq!(
            status(&mut c, &id_sqe(cns::IOCS_CONTROLLER, 0, csi::KV)),
            Status::INVALID_FIELD
        );
        assert_eq!(
            done(
                &mut c,
                &id_sqe(cns::IOCS_INDEPENDENT_NAMESPACE, 1, 0),
                &mut d
            )
            .0,
            Status::SUCCESS
        );
        let ind = IdentifyNsIndependent::decode(&d).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((ind.nmic, ind.nstat), (NMIC_SHARED, NSTAT_READY));
        assert_eq!(ind.nsfeat, indep_nsfeat::VWC_NOT_PRESENT);
        d.fill(0xEE);
        done(
            &mut c,
            &id_sqe(cns::IOCS_INDEPENDENT_NAMESPACE, 3, 0),
            &mut d,
        );
        assert!(d.iter().all(|&b| b == 0));

        // A namespace removed is inactive at once.
        Target::get()
            .remove_namespace(nqn, 5)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(list(&mut c, cns::ACTIVE_NS_LIST, 0), vec![1]);
    }

    #[test]
    fn the_volatile_write_cache_follows_the_bdevs() {
        let nqn = "nqn.2016-06.io.pcache:admin-vwc";
        let (h, s) = with_namespaces(nqn, "admin_vwc");
        let mut c = controller(&s, "nqn.h:vwc", 1);
        let vwc_bit = |c: &mut Controller| {
            let mut d = [0u8; 4096];
            done(c, &id_sqe(cns::CONTROLLER, 0, 0), &mut d);
            d[525]
        };
        assert_eq!(vwc_bit(&mut c), 0);
        assert_eq!(
            status(&mut c, &getf(fid::VOLATILE_WRITE_CACHE, 0, 0)),
            Status::INVALID_FIELD
        );
        assert_eq!(
            status(&mut c, &setf(fid::VOLATILE_WRITE_CACHE, 1)),
            Status::INVALID_FIELD
        );
        // A namespace whose bdev caches writes (as a pcache bdev does).
        h.run_on(0, || {
            malloc::create(MallocCreateParams::new("admin_vwc_cached", 16, 512))
                .unwrap_or_else(|e| panic!("{e}"));
            let desc =
                BdevDesc::open("admin_vwc_cached", false, |_| {}).unwrap_or_else(|e| panic!("{e}"));
            s.lock().namespaces.insert(
                9,
                std::sync::Arc::new(Namespace {
                    nsid: 9,
                    bdev_name: "admin_vwc_cached".into(),
                    uuid: uuid::Uuid::new_v4(),
                    nguid: [9; 16],
                    eui64: None,
                    block_size: 512,
                    num_blocks: 16,
                    volatile_cache: true,
                    desc,
                }),
            );
        });
        assert_eq!(vwc_bit(&mut c), vwc::PRESENT);
        let mut d = [0u8; 8];
        assert_eq!(
            done(&mut c, &getf(fid::VOLATILE_WRITE_CACHE, 0, 0), &mut d),
            (Status::SUCCESS, 1, 0)
        );
        assert_eq!(
            done(&mut c, &getf(fid::VOLATILE_WRITE_CACHE, 3, 0), &mut d),
            (Status::SUCCESS, 0, 0),
            "present, not changeable"
        );
        assert_eq!(
            status(&mut c, &setf(fid::VOLATILE_WRITE_CACHE, 1)),
            Status::SUCCESS
        );
        assert_eq!(
            status(&mut c, &setf(fid::VOLATILE_WRITE_CACHE, 0)),
            Status::FEATURE_NOT_CHANGEABLE
        );
        let mut d = [0u8; 4096];
        done(
            &mut c,
            &id_sqe(cns::IOCS_INDEPENDENT_NAMESPACE, 9, 0),
            &mut d,
        );
        assert_eq!(d[0] & indep_nsfeat::VWC_NOT_PRESENT, 0);
        s.lock().namespaces.remove(&9);
        assert_eq!(vwc_bit(&mut c), 0);
    }

    #[test]
    fn features_get_and_set() {
        let s = subsystem("nqn.2016-06.io.pcache:admin-feat", &[]);
        let mut c = controller(&s, "nqn.h:feat", 1);
        let mut d = [0u8; 4096];
        let mut get =
            |c: &mut Controller, f: u8, sel: u8, cdw11: u32| done(c, &getf(f, sel, cdw11), &mut d);
        // Number of Queues: the grant is capped at max_io_qpairs_per_ctrlr (127), 0's based.
        assert_eq!(
            get(&mut c, fid::NUMBER_OF_QUEUES, 0, 0),
            (Status::SUCCESS, 126 | 126 << 16, 0)
        );
        let mut d2 = [0u8; 0];
        assert_eq!(
            done(
                &mut c,
                &setf(fid::NUMBER_OF_QUEUES, 199 | 199 << 16),
                &mut d2
            ),
            (Status::SUCCESS, 126 | 126 << 16, 0)
        );
        assert_eq!(c.io_queues_granted(), 127);
        assert_eq!(
            done(&mut c, &setf(fid::NUMBER_OF_QUEUES, 3 | 1 << 16), &mut d2),
            (Status::SUCCESS, 3 | 1 << 16, 0)
        );
        assert_eq!(c.io_queues_granted(), 2);
        assert_eq!(get(&mut c, fid::NUMBER_OF_QUEUES, 0, 0).1, 3 | 1 << 16);
        assert_eq!(
            get(&mut c, fid::NUMBER_OF_QUEUES, 1, 0).1,
            126 | 126 << 16,
            "default"
        );
        assert_eq!(
            status(&mut c, &setf(fid::NUMBER_OF_QUEUES, 0xFFFF)),
            Status::INVALID_FIELD
        );
        // Keep Alive Timer: raised to min_kato, 0 disables.
        assert_eq!(get(&mut c, fid::KEEP_ALIVE_TIMER, 0, 0).1, 10_000);
        assert_eq!(
            status(&mut c, &setf(fid::KEEP_ALIVE_TIMER, 5000)),
            Status::SUCCESS
        );
        assert_eq!(c.kato_ms(), 10_000);
        assert_eq!(
            status(&mut c, &setf(fid::KEEP_ALIVE_TIMER, 30_000)),
            Status::SUCCESS
        );
        assert_eq!(get(&mut c, fid::KEEP_ALIVE_TIMER, 0, 0).1, 30_000);
        assert_eq!(c.kato_ms(), 30_000);
        // Async Event Configuration.
        assert_eq!(get(&mut c, fid::ASYNC_EVENT_CONFIG, 0, 0).1, 1 << 8);
        assert_eq!(
            status(&mut c, &setf(fid::ASYNC_EVENT_CONFIG, 0x1FF)),
            Status::SUCCESS
        );
        assert_eq!(get(&mut c, fid::ASYNC_EVENT_CONFIG, 0, 0).1, 0x1FF);
        assert_eq!(get(&mut c, fid::ASYNC_EVENT_CONFIG, 1, 0).1, 1 << 8);
        assert_eq!(
            get(&mut c, fid::ASYNC_EVENT_CONFIG, 2, 0).1,
            1 << 8,
            "saved = default"
        );
        // Stored values.
        for (f, v) in [
            (fid::ARBITRATION, 0x0302_0103),
            (fid::ERROR_RECOVERY, 30),
            (fid::INTERRUPT_COALESCING, 0x0A05),
            (fid::WRITE_ATOMICITY, 1),
        ] {
            assert_eq!(status(&mut c, &setf(f, v)), Status::SUCCESS, "{f:#x}");
            assert_eq!(get(&mut c, f, 0, 0), (Status::SUCCESS, v, 0), "{f:#x}");
        }
        assert_eq!(get(&mut c, fid::ARBITRATION, 1, 0).1, 7);
        // Power management: one power state.
        assert_eq!(get(&mut c, fid::POWER_MGMT, 0, 0).1, 0);
        assert_eq!(
            status(&mut c, &setf(fid::POWER_MGMT, 1)),
            Status::INVALID_FIELD
        );
        // Temperature thresholds: over (THSEL 0) and under (THSEL 1) of the composite sensor.
        assert_eq!(get(&mut c, fid::TEMP_THRESHOLD, 0, 0).1, 343);
        assert_eq!(
            status(&mut c, &setf(fid::TEMP_THRESHOLD, 350)),
            Status::SUCCESS
        );
        assert_eq!(
            status(&mut c, &setf(fid::TEMP_THRESHOLD, 270 | 1 << 20)),
            Status::SUCCESS
        );
        assert_eq!(get(&mut c, fid::TEMP_THRESHOLD, 0, 0).1, 350);
        assert_eq!(
            get(&mut c, fid::TEMP_THRESHOLD, 0, 1 << 20).1,
            270 | 1 << 20
        );
        assert_eq!(
            status(&mut c, &setf(fid::TEMP_THRESHOLD, 350 | 3 << 16)),
            Status::INVALID_FIELD,
            "no sensor 3"
        );
        assert_eq!(
            status(&mut c, &setf(fid::ERROR_RECOVERY, 1 << 16)),
            Status::INVALID_FIELD,
            "DULBE"
        );
        // SEL 3: capabilities (changeable, not saveable).
        assert_eq!(get(&mut c, fid::ARBITRATION, 3, 0), (Status::SUCCESS, 4, 0));
        assert_eq!(get(&mut c, fid::HOST_IDENTIFIER, 3, 1).1, 0);
        assert_eq!(get(&mut c, fid::ARBITRATION, 4, 0).0, Status::INVALID_FIELD);
        // Saving is refused; unknown features are invalid.
        let mut save = setf(fid::ARBITRATION, 0);
        save.cdw10 |= 1 << 31;
        assert_eq!(status(&mut c, &save), Status::FEATURE_NOT_SAVEABLE);
        for f in [0x03, 0x09, 0x0C, 0x0D, 0x0E, 0x10, 0x7F, 0xC0] {
            assert_eq!(get(&mut c, f, 0, 0).0, Status::INVALID_FIELD, "{f:#x}");
            assert_eq!(status(&mut c, &setf(f, 0)), Status::INVALID_FIELD, "{f:#x}");
        }
    }

    #[test]
    fn features_with_data() {
        let s = subsystem("nqn.2016-06.io.pcache:admin-featdata", &[]);
        let mut c = controller(&s, "nqn.h:featdata", 1);
        // Host Behavior Support: 512 bytes each way.
        let mut hb = [0u8; 512];
        hb[0] = 1;
        assert_eq!(
            done(&mut c, &setf(fid::HOST_BEHAVIOR, 0), &mut hb).0,
            Status::SUCCESS
        );
        let mut out = [0xEEu8; 512];
        assert_eq!(
            done(&mut c, &getf(fid::HOST_BEHAVIOR, 0, 0), &mut out),
            (Status::SUCCESS, 0, 512)
        );
        assert_eq!(out[0], 1);
        assert!(out[1..].iter().all(|&b| b == 0));
        hb[100] = 1;
        assert_eq!(
            done(&mut c, &setf(fid::HOST_BEHAVIOR, 0), &mut hb).0,
            Status::INVALID_FIELD,
            "reserved bytes"
        );
        assert_eq!(
            done(&mut c, &setf(fid::HOST_BEHAVIOR, 0), &mut [0u8; 16]).0,
            Status::INVALID_FIELD,
            "short data"
        );
        // Host Identifier: the Connect's, 128-bit form only; set only through Connect.
        let mut id = [0u8; 16];
        assert_eq!(
            done(&mut c, &getf(fid::HOST_IDENTIFIER, 0, 1), &mut id),
            (Status::SUCCESS, 0, 16)
        );
        assert_eq!(id, *HOSTID.as_bytes());
        assert_eq!(
            done(&mut c, &getf(fid::HOST_IDENTIFIER, 0, 0), &mut id).0,
            Status::INVALID_FIELD
        );
        assert_eq!(
            status(&mut c, &setf(fid::HOST_IDENTIFIER, 1)),
            Status::COMMAND_SEQUENCE_ERROR
        );
    }

    #[test]
    fn discovery_controllers_have_only_kato_and_aec() {
        let mut c = controller(&discovery(), "nqn.h:featdisc", 2);
        let mut d = [0u8; 8];
        assert_eq!(
            done(&mut c, &getf(fid::ASYNC_EVENT_CONFIG, 0, 0), &mut d).1,
            aec_discovery()
        );
        assert_eq!(
            status(&mut c, &setf(fid::KEEP_ALIVE_TIMER, 0)),
            Status::SUCCESS
        );
        assert_eq!(c.kato_ms(), 0);
        for f in [
            fid::NUMBER_OF_QUEUES,
            fid::ARBITRATION,
            fid::VOLATILE_WRITE_CACHE,
        ] {
            assert_eq!(status(&mut c, &getf(f, 0, 0)), Status::INVALID_FIELD);
            assert_eq!(status(&mut c, &setf(f, 0)), Status::INVALID_FIELD);
        }
    }

    fn aec_discovery() -> u32 {
        crate::wire::features::aec::DISCOVERY_CHANGE
    }

    #[test]
    fn log_pages() {
        let s = subsystem("nqn.2016-06.io.pcache:admin-logs", &[]);
        let mut c = controller(&s, "nqn.h:logs", 1);
        let mut d = [0xEEu8; 4096];
        // Supported log pages.
        assert_eq!(
            done(&mut c, &get_log(lid::SUPPORTED, 1024, 0, false), &mut d),
            (Status::SUCCESS, 0, 1024)
        );
        for l in 0..256usize {
            let want = u8::try_from(l).is_ok_and(|l| NVM_LOGS.contains(&l));
            assert_eq!(d[4 * l] & 1 == 1, want, "lid {l:#x}");
        }
        // Error log: one empty entry (and zeroes past it).
        d.fill(0xEE);
        assert_eq!(
            done(&mut c, &get_log(lid::ERROR, 128, 0, false), &mut d).2,
            128
        );
        assert!(d[..128].iter().all(|&b| b == 0));
        assert_eq!(d[128], 0xEE, "only the asked length is written");
        // SMART / health.
        assert_eq!(
            done(&mut c, &get_log(lid::HEALTH, 512, 0, false), &mut d).0,
            Status::SUCCESS
        );
        assert_eq!(d[0], 0, "no critical warning");
        assert_eq!(u16::from_le_bytes([d[1], d[2]]), COMPOSITE_TEMPERATURE);
        assert_eq!((d[3], d[4], d[5]), (100, 10, 0));
        // The same page from an offset.
        let mut part = [0u8; 8];
        done(&mut c, &get_log(lid::HEALTH, 8, 0, false), &mut part);
        let mut off = [0u8; 4];
        done(&mut c, &get_log(lid::HEALTH, 4, 4, false), &mut off);
        assert_eq!(off, part[4..8]);
        // Firmware slots: slot 1 active with this version.
        done(&mut c, &get_log(lid::FW_SLOT, 512, 0, false), &mut d);
        assert_eq!(d[0], 1);
        let v = env!("CARGO_PKG_VERSION").as_bytes();
        assert_eq!(&d[8..8 + v.len().min(8)], &v[..v.len().min(8)]);
        // Command effects: admin and I/O commands supported, writes change LBA content.
        done(&mut c, &get_log(lid::CMD_EFFECTS, 4096, 0, false), &mut d);
        let eff =
            |i: usize| u32::from_le_bytes([d[4 * i], d[4 * i + 1], d[4 * i + 2], d[4 * i + 3]]);
        assert_eq!(eff(usize::from(admin::IDENTIFY)), effects::CSUPP);
        assert_eq!(eff(usize::from(admin::CREATE_IO_SQ)), 0);
        assert_eq!(eff(256 + usize::from(io::READ)), effects::CSUPP);
        assert_eq!(
            eff(256 + usize::from(io::WRITE)),
            effects::CSUPP | effects::LBCC
        );
        assert_eq!(eff(256 + usize::from(io::COMPARE)), 0);
        // Errors: length past the buffer, unaligned or too large offset, unknown pages.
        let mut small = [0u8; 512];
        assert_eq!(
            done(&mut c, &get_log(lid::HEALTH, 1024, 0, false), &mut small).0,
            Status::INVALID_FIELD
        );
        assert_eq!(
            status(&mut c, &get_log(lid::HEALTH, 8, 2, false)),
            Status::INVALID_FIELD
        );
        assert_eq!(
            status(&mut c, &get_log(lid::HEALTH, 8, 516, false)),
            Status::INVALID_FIELD
        );
        assert_eq!(
            done(&mut c, &get_log(lid::HEALTH, 8, 512, false), &mut d).0,
            Status::SUCCESS,
            "the end of the page reads as zeroes"
        );
        for l in [lid::DISCOVERY, 0x06, 0x0C, 0x80, 0xFF] {
            assert_eq!(
                status(&mut c, &get_log(l, 512, 0, false)),
                Status::INVALID_LOG_PAGE,
                "{l:#x}"
            );
        }
        // NUMDU: a length above 64K dwords is still checked against the buffer.
        let mut big = get_log(lid::HEALTH, 4, 0, false);
        big.cdw11 = 1;
        assert_eq!(status(&mut c, &big), Status::INVALID_FIELD);
        assert_eq!(GetLogPage::from_sqe(&big).len(), (1u64 << 16) * 4 + 4);
    }

    #[test]
    fn discovery_controller_log_pages() {
        let mut c = controller(&discovery(), "nqn.h:logdisc", 3);
        let mut d = [0u8; 1024];
        done(&mut c, &get_log(lid::SUPPORTED, 1024, 0, false), &mut d);
        assert_eq!((d[0], d[4 * 0x70]), (1, 1));
        assert_eq!(d[4], 0);
        for l in [lid::ERROR, lid::HEALTH, lid::CHANGED_NS, lid::CMD_EFFECTS] {
            assert_eq!(
                status(&mut c, &get_log(l, 512, 0, false)),
                Status::INVALID_LOG_PAGE
            );
        }
    }
}
