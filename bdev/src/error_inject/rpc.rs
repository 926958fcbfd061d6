//! `bdev_error_create` / `bdev_error_delete` / `bdev_error_inject_error` /
//! `bdev_error_resume_pending` with SPDK's parameters.

use crate::BdevError;
use rpc::{Responder, RpcError, StateMask};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Also the `params` of the save_config entry.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorCreateParams {
    pub base_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<Uuid>,
}

impl ErrorCreateParams {
    pub fn new(base_name: &str) -> Self {
        ErrorCreateParams {
            base_name: base_name.to_string(),
            uuid: None,
        }
    }
}

/// Which I/O type an injection targets; `clear` disarms every type, `all` arms every type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InjectIoType {
    Clear,
    Read,
    Write,
    Unmap,
    Flush,
    All,
}

/// What happens to an affected I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum ErrorType {
    /// Completes failed (EIO).
    Failure = 1,
    /// Completes failed; SPDK sets an NVMe status, which our I/O cannot carry, so this is EIO too.
    NvmeFailure,
    /// Never completes until `bdev_error_resume_pending` (then runs normally) or a reset (aborted).
    Pending,
    /// A write reaches the base with one byte XORed; a read returns with one byte XORed.
    CorruptData,
    /// Completes with "no memory": the bdev layer retries it.
    Nomem,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorInjectParams {
    /// The error bdev (`EE_<base>`).
    pub name: String,
    pub io_type: InjectIoType,
    pub error_type: ErrorType,
    #[serde(default)]
    pub nvme_sct: u32,
    #[serde(default)]
    pub nvme_sc: u32,
    /// How many I/Os to affect; 0 disarms.
    #[serde(default = "one")]
    pub num: u32,
    /// Affect I/Os only while at least this many are in flight on the channel.
    #[serde(default)]
    pub queue_depth: u64,
    #[serde(default)]
    pub corrupt_offset: u64,
    #[serde(default)]
    pub corrupt_value: u8,
}

fn one() -> u32 {
    1
}

impl ErrorInjectParams {
    pub fn new(name: &str, io_type: InjectIoType, error_type: ErrorType, num: u32) -> Self {
        ErrorInjectParams {
            name: name.to_string(),
            io_type,
            error_type,
            nvme_sct: 0,
            nvme_sc: 0,
            num,
            queue_depth: 0,
            corrupt_offset: 0,
            corrupt_value: 0,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorResumePendingParams {
    pub name: String,
}

pub fn register_rpcs() {
    super::register_module();
    // SPDK answers `true` here, not the new bdev's name.
    rpc::register(
        "bdev_error_create",
        StateMask::RUNTIME,
        |p: ErrorCreateParams, r: Responder| crate::rpc::answer(r, super::create(p).map(|_| true)),
    );
    crate::rpc::register_delete("bdev_error_delete", super::delete);
    rpc::register(
        "bdev_error_inject_error",
        StateMask::RUNTIME,
        |p: ErrorInjectParams, r: Responder| match super::inject_error(&p) {
            // SPDK's own text for a bad NVMe status pair, with -EINVAL.
            Err(BdevError::InvalidParam(msg)) => r.err(RpcError::errno_msg(libc::EINVAL, msg)),
            res => crate::rpc::answer(r, res.map(|_| true)),
        },
    );
    rpc::register(
        "bdev_error_resume_pending",
        StateMask::RUNTIME,
        |p: ErrorResumePendingParams, r: Responder| {
            crate::rpc::answer(r, super::resume_pending(&p.name).map(|_| true))
        },
    );
}
