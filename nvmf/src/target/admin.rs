//! Admin commands of a controller: Identify, Get/Set Features, Get Log Page, Asynchronous Event
//! Request, Keep Alive, Abort. Everything else (Create/Delete I/O SQ/CQ among them: fabrics
//! queues come from Connect) is Invalid Opcode.

use crate::target::controller::{AdminOutcome, Controller};
use crate::wire::command::{Sqe, admin};
use crate::wire::status::Status;

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
    if c.aers.len() > usize::from(crate::target::controller::AERL) {
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
        sel::DEFAULT | sel::SAVED => {
            crate::target::controller::Features::defaults(c.discovery, &c.opts)
        }
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
            out[..feats.host_behavior.len()].copy_from_slice(&feats.host_behavior);
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
            feats.host_behavior.copy_from_slice(&src[..4]);
        }
        _ => return AdminOutcome::status(Status::INVALID_FIELD),
    }
    AdminOutcome::status(Status::SUCCESS)
}

// ---------------------------------------------------------------------------------------------
// Identify and Get Log Page (filled in next)

fn identify(_c: &mut Controller, _sqe: &Sqe, _data: &mut [u8]) -> AdminOutcome {
    AdminOutcome::status(Status::INVALID_FIELD)
}

fn get_log_page(c: &mut Controller, _sqe: &Sqe, _data: &mut [u8]) -> AdminOutcome {
    c.unmask();
    AdminOutcome::status(Status::INVALID_LOG_PAGE)
}
