//! `bdev_uring_create` / `bdev_uring_delete` with SPDK's parameters.

use ::rpc::{Responder, StateMask};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UringCreateParams {
    pub name: String,
    /// Path to a regular file or a block device.
    pub filename: String,
    /// Default (absent or 0): the device's logical block size, 512 for a regular file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<Uuid>,
}

impl UringCreateParams {
    pub fn new(name: &str, filename: &str) -> Self {
        UringCreateParams {
            name: name.to_string(),
            filename: filename.to_string(),
            block_size: None,
            uuid: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UringDeleteParams {
    pub name: String,
}

pub fn register_rpcs() {
    ::rpc::register(
        "bdev_uring_create",
        StateMask::RUNTIME,
        |p: UringCreateParams, r: Responder| match super::create(p) {
            Ok(b) => r.ok(json!(b.name())),
            Err(e) => r.err(crate::rpc::detailed_error(&e)),
        },
    );
    ::rpc::register(
        "bdev_uring_delete",
        StateMask::RUNTIME,
        |p: UringDeleteParams, r: Responder| {
            super::delete(&p.name, move |res| {
                crate::rpc::answer(r, res.map(|()| true))
            })
        },
    );
}
