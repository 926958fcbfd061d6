//! Admin commands of a controller: Identify, Get/Set Features, Get Log Page, Asynchronous Event
//! Request, Keep Alive, Abort. Everything else (Create/Delete I/O SQ/CQ among them: fabrics
//! queues come from Connect) is Invalid Opcode.

use crate::target::config;
use crate::target::controller::{ACL, AERL, AdminOutcome, Controller, Features, VERSION};
use crate::target::discovery;
use crate::target::subsystem::Namespace;
use crate::wire::command::{Sqe, admin, io};
use crate::wire::fabrics::{Nqn, Text};
use crate::wire::identify::{
    IDENTIFY_LEN, IdentifyCommand, IdentifyController, IdentifyNamespace, IdentifyNsIndependent,
    IdentifyNvmController, NMIC_SHARED, NSTAT_READY, NsIdDescriptor, cmic, cns, cntrltype, csi,
    ctratt, encode_ns_descriptors, encode_ns_list, entry_sizes, frmw, indep_nsfeat, lpa, oaes,
    oncs, sgls, vwc,
};
use crate::wire::le::{self, Pad, WireError};
use crate::wire::status::Status;
use std::sync::Arc;

/// Feature identifiers (Set/Get Features cdw10 bits 7:0).
pub mod fid {
    pub const ARBITRATION: u8 = 0x01;
    pub const POWER_MANAGEMENT: u8 = 0x02;
    pub const TEMPERATURE_THRESHOLD: u8 = 0x04;
    pub const ERROR_RECOVERY: u8 = 0x05;
    pub const VOLATILE_WRITE_CACHE: u8 = 0x06;
    pub const NUMBER_OF_QUEUES: u8 = 0x07;
    pub const INTERRUPT_COALESCING: u8 = 0x08;
    pub const WRITE_ATOMICITY: u8 = 0x0A;
    pub const ASYNC_EVENT_CONFIG: u8 = 0x0B;
    pub const KEEP_ALIVE_TIMER: u8 = 0x0F;
    pub const HOST_BEHAVIOR: u8 = 0x16;
    pub const HOST_IDENTIFIER: u8 = 0x81;
}

/// Get Features SEL (cdw10 bits 10:8).
mod sel {
    pub const CURRENT: u8 = 0;
    pub const DEFAULT: u8 = 1;
    pub const SAVED: u8 = 2;
    pub const SUPPORTED: u8 = 3;
}

/// Get Features SEL=3 answer bits.
mod capability {
    pub const CHANGEABLE: u32 = 1 << 2;
}

/// Host Behavior Support data: 512 bytes.
const HOST_BEHAVIOR_LEN: usize = 512;
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
    let f = sqe.cdw10 as u8;
    let select = ((sqe.cdw10 >> 8) & 7) as u8;
    if c.discovery && !discovery_feature(f) {
        return AdminOutcome::status(Status::INVALID_FIELD);
    }
    let vwc = volatile_cache(c);
    let changeable = match f {
        fid::ARBITRATION
        | fid::POWER_MANAGEMENT
        | fid::TEMPERATURE_THRESHOLD
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
    let feats = match select {
        sel::CURRENT => c.features,
        sel::DEFAULT | sel::SAVED => Features::defaults(c.discovery, &c.opts),
        sel::SUPPORTED => {
            return AdminOutcome::dw0(if changeable {
                capability::CHANGEABLE
            } else {
                0
            });
        }
        _ => return AdminOutcome::status(Status::INVALID_FIELD),
    };
    let kato = if select == sel::CURRENT { c.kato_ms } else { 0 };
    let dw0 = match f {
        fid::ARBITRATION => feats.arbitration,
        fid::POWER_MANAGEMENT => feats.power_management,
        fid::TEMPERATURE_THRESHOLD => {
            let tmpsel = (sqe.cdw11 >> 16) & 0xF;
            let thsel = (sqe.cdw11 >> 20) & 3;
            if tmpsel != 0 {
                return AdminOutcome::status(Status::INVALID_FIELD);
            }
            match thsel {
                0 => u32::from(feats.temp_over),
                1 => u32::from(feats.temp_under) | 1 << 20,
                _ => return AdminOutcome::status(Status::INVALID_FIELD),
            }
        }
        fid::ERROR_RECOVERY => feats.error_recovery,
        fid::VOLATILE_WRITE_CACHE => 1,
        fid::NUMBER_OF_QUEUES => u32::from(feats.nsqa) | u32::from(feats.ncqa) << 16,
        fid::INTERRUPT_COALESCING => feats.interrupt_coalescing,
        fid::WRITE_ATOMICITY => feats.write_atomicity,
        fid::ASYNC_EVENT_CONFIG => feats.async_event_config,
        fid::KEEP_ALIVE_TIMER => kato,
        fid::HOST_BEHAVIOR => {
            let Some(out) = data.get_mut(..HOST_BEHAVIOR_LEN) else {
                return AdminOutcome::status(Status::INVALID_FIELD);
            };
            out.fill(0);
            out.iter_mut()
                .zip(feats.host_behavior)
                .for_each(|(d, s)| *d = s);
            return AdminOutcome::data(HOST_BEHAVIOR_LEN as u32);
        }
        fid::HOST_IDENTIFIER => {
            // Only the 128-bit form exists over fabrics (EXHID, cdw11 bit 0).
            if sqe.cdw11 & 1 == 0 {
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
    let f = sqe.cdw10 as u8;
    let save = sqe.cdw10 & (1 << 31) != 0;
    let v = sqe.cdw11;
    if c.discovery && !discovery_feature(f) {
        return AdminOutcome::status(Status::INVALID_FIELD);
    }
    match f {
        fid::ARBITRATION
        | fid::POWER_MANAGEMENT
        | fid::TEMPERATURE_THRESHOLD
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
    if save {
        return AdminOutcome::status(Status::FEATURE_NOT_SAVEABLE);
    }
    let feats = &mut c.features;
    match f {
        fid::ARBITRATION => feats.arbitration = v,
        fid::POWER_MANAGEMENT => {
            // One power state (NPSS 0); workload hints are not used.
            if v & 0x1F != 0 {
                return AdminOutcome::status(Status::INVALID_FIELD);
            }
            feats.power_management = v & 0xFF;
        }
        fid::TEMPERATURE_THRESHOLD => {
            let tmpsel = (v >> 16) & 0xF;
            let thsel = (v >> 20) & 3;
            // The composite temperature is the only sensor (0Fh: all sensors).
            if tmpsel != 0 && tmpsel != 0xF {
                return AdminOutcome::status(Status::INVALID_FIELD);
            }
            match thsel {
                0 => feats.temp_over = v as u16,
                1 => feats.temp_under = v as u16,
                _ => return AdminOutcome::status(Status::INVALID_FIELD),
            }
        }
        fid::ERROR_RECOVERY => {
            // DULBE (bit 16): deallocated blocks read as data, never as an error.
            if v & (1 << 16) != 0 {
                return AdminOutcome::status(Status::INVALID_FIELD);
            }
            feats.error_recovery = v & 0xFFFF;
        }
        fid::VOLATILE_WRITE_CACHE => {
            if !volatile_cache(c) {
                return AdminOutcome::status(Status::INVALID_FIELD);
            }
            // Enabling is a no-op; a bdev's cache cannot be turned off, and pretending so
            // would let the host skip the FLUSHes durability needs.
            if v & 1 == 0 {
                return AdminOutcome::status(Status::FEATURE_NOT_CHANGEABLE);
            }
        }
        fid::NUMBER_OF_QUEUES => {
            let (nsqr, ncqr) = (v as u16, (v >> 16) as u16);
            if nsqr == u16::MAX || ncqr == u16::MAX {
                return AdminOutcome::status(Status::INVALID_FIELD);
            }
            let max = c.opts.max_io_qpairs_per_ctrlr.saturating_sub(1);
            feats.nsqa = nsqr.min(max);
            feats.ncqa = ncqr.min(max);
            return AdminOutcome::dw0(u32::from(feats.nsqa) | u32::from(feats.ncqa) << 16);
        }
        fid::INTERRUPT_COALESCING => feats.interrupt_coalescing = v & 0xFFFF,
        fid::WRITE_ATOMICITY => feats.write_atomicity = v & 1,
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
            feats
                .host_behavior
                .iter_mut()
                .zip(src)
                .for_each(|(d, s)| *d = *s);
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

/// Log page identifiers.
pub mod lid {
    pub const SUPPORTED: u8 = 0x00;
    pub const ERROR: u8 = 0x01;
    pub const HEALTH: u8 = 0x02;
    pub const FW_SLOT: u8 = 0x03;
    pub const CHANGED_NS: u8 = 0x04;
    pub const CMD_EFFECTS: u8 = 0x05;
    pub const DISCOVERY: u8 = 0x70;
}

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

/// Get Log Page's fields (cdw10..13).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogRequest {
    pub lid: u8,
    pub lsp: u8,
    /// Retain Asynchronous Event.
    pub rae: bool,
    /// Bytes asked for (NUMD + 1 dwords).
    pub len: u64,
    /// Log page offset in bytes.
    pub lpo: u64,
}

impl LogRequest {
    pub fn from_sqe(sqe: &Sqe) -> LogRequest {
        let numd = u64::from(sqe.cdw10 >> 16) | u64::from(sqe.cdw11 & 0xFFFF) << 16;
        LogRequest {
            lid: sqe.cdw10 as u8,
            lsp: ((sqe.cdw10 >> 8) & 0x7F) as u8,
            rae: sqe.cdw10 & (1 << 15) != 0,
            len: (numd + 1) * 4,
            lpo: u64::from(sqe.cdw12) | u64::from(sqe.cdw13) << 32,
        }
    }
}

/// Copies `[lpo, lpo + out.len())` of `page` into `out`, zeroes past the page's end.
pub(super) fn copy_window(page: &[u8], lpo: u64, out: &mut [u8]) -> Result<(), Status> {
    let start = usize::try_from(lpo)
        .ok()
        .filter(|&s| s <= page.len())
        .ok_or(Status::INVALID_FIELD)?;
    let src = page.get(start..).unwrap_or(&[]);
    let n = src.len().min(out.len());
    out.iter_mut().zip(src).for_each(|(d, s)| *d = *s);
    out.iter_mut().skip(n).for_each(|d| *d = 0);
    Ok(())
}

/// Health, FW slot and error log sizes.
const HEALTH_LEN: usize = 512;
const FW_SLOT_LEN: usize = 512;
const ERROR_ENTRY_LEN: usize = 64;
const SUPPORTED_LEN: usize = 1024;
const LOG_4K: usize = 4096;
/// Command Supported and Effects bits.
const CSUPP: u32 = 1 << 0;
const LBCC: u32 = 1 << 1;

fn get_log_page(c: &mut Controller, sqe: &Sqe, data: &mut [u8]) -> AdminOutcome {
    let req = LogRequest::from_sqe(sqe);
    // The offset is in dwords' worth of bytes; the length must fit the buffer given.
    if req.lpo & 3 != 0 {
        return AdminOutcome::status(Status::INVALID_FIELD);
    }
    let Some(out) = usize::try_from(req.len)
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
    let mut buf = [0u8; LOG_4K];
    let built: Result<usize, WireError> = match req.lid {
        lid::SUPPORTED => supported_logs(supported, &mut buf),
        // No error is ever logged: one empty entry.
        lid::ERROR => Ok(ERROR_ENTRY_LEN),
        lid::HEALTH => health(&mut buf),
        lid::FW_SLOT => fw_slot(&mut buf),
        lid::CHANGED_NS => changed_ns(c, &mut buf),
        lid::CMD_EFFECTS => command_effects(&mut buf),
        lid::DISCOVERY => {
            let r = discovery::read(&c.hostnqn, &c.opts, req.lpo, out);
            return match r {
                Ok(()) => {
                    if !req.rae {
                        c.unmask();
                    }
                    AdminOutcome::data(out.len() as u32)
                }
                Err(s) => AdminOutcome::status(s),
            };
        }
        _ => return AdminOutcome::status(Status::INVALID_LOG_PAGE),
    };
    let size = match built {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!("log page {:#x}: {e}", req.lid);
            return AdminOutcome::status(Status::INTERNAL);
        }
    };
    if let Err(s) = copy_window(buf.get(..size).unwrap_or(&buf), req.lpo, out) {
        return AdminOutcome::status(s);
    }
    if req.lid == lid::CHANGED_NS && !req.rae {
        c.changed.clear();
        c.changed_overflow = false;
        c.unmask();
    }
    AdminOutcome::data(out.len() as u32)
}

fn supported_logs(lids: &[u8], b: &mut [u8]) -> Result<usize, WireError> {
    for &l in lids {
        le::put_u32(b, 4 * usize::from(l), CSUPP)?;
    }
    Ok(SUPPORTED_LEN)
}

fn health(b: &mut [u8]) -> Result<usize, WireError> {
    // No critical warning, a fixed composite temperature, all spare left (threshold 10%),
    // nothing used up; the counters are not kept here.
    le::put_u16(b, 1, COMPOSITE_TEMPERATURE)?;
    le::put_u8(b, 3, 100)?;
    le::put_u8(b, 4, 10)?;
    Ok(HEALTH_LEN)
}

fn fw_slot(b: &mut [u8]) -> Result<usize, WireError> {
    // Slot 1 active, holding this version.
    le::put_u8(b, 0, 1)?;
    firmware_revision().encode(b, 8, Pad::Space, "frs1")?;
    Ok(FW_SLOT_LEN)
}

fn changed_ns(c: &Controller, b: &mut [u8]) -> Result<usize, WireError> {
    if c.changed_overflow {
        le::put_u32(b, 0, u32::MAX)?;
    } else {
        for (i, nsid) in c.changed.iter().enumerate() {
            le::put_u32(b, 4 * i, *nsid)?;
        }
    }
    Ok(LOG_4K)
}

fn command_effects(b: &mut [u8]) -> Result<usize, WireError> {
    for op in [
        admin::GET_LOG_PAGE,
        admin::IDENTIFY,
        admin::ABORT,
        admin::SET_FEATURES,
        admin::GET_FEATURES,
        admin::ASYNC_EVENT_REQUEST,
        admin::KEEP_ALIVE,
    ] {
        le::put_u32(b, 4 * usize::from(op), CSUPP)?;
    }
    for (op, effects) in [
        (io::FLUSH, CSUPP),
        (io::WRITE, CSUPP | LBCC),
        (io::READ, CSUPP),
        (io::WRITE_ZEROES, CSUPP | LBCC),
        (io::DATASET_MANAGEMENT, CSUPP | LBCC),
    ] {
        le::put_u32(b, 1024 + 4 * usize::from(op), effects)?;
    }
    Ok(LOG_4K)
}
