//! `bdev_uring_create` / `bdev_uring_delete` with SPDK's parameters.

use serde::{Deserialize, Serialize};
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

pub fn register_rpcs() {
    crate::rpc::register_create(
        "bdev_uring_create",
        super::create,
        crate::rpc::CreateErrors::Detailed,
    );
    crate::rpc::register_delete("bdev_uring_delete", super::delete);
}
