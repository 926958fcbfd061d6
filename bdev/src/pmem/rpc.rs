//! `bdev_pmem_create` / `bdev_pmem_delete`.
//!
//! SPDK split creation in two (`bdev_pmem_create_pool` sized the file, `bdev_pmem_create` opened
//! it); here one call does both: `block_size` and `num_blocks` are required only to create a
//! missing file, and must match an existing one when given (`block_size` defaults to 4096).
//! `mode` is pcache's extension: "auto" maps DAX with MAP_SYNC when the file system can and
//! emulates otherwise, "emulated" never uses MAP_SYNC, "msync" makes a file on an ordinary disk
//! durable with msync at FLUSH.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PmemMode {
    #[default]
    Auto,
    Emulated,
    Msync,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PmemCreateParams {
    pub name: String,
    pub pmem_file: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_blocks: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<Uuid>,
    #[serde(default)]
    pub mode: PmemMode,
}

impl PmemCreateParams {
    /// Opens `pmem_file` as it is (it must exist).
    pub fn open(name: &str, pmem_file: &str) -> Self {
        PmemCreateParams {
            name: name.to_string(),
            pmem_file: pmem_file.to_string(),
            block_size: None,
            num_blocks: None,
            uuid: None,
            mode: PmemMode::Auto,
        }
    }

    /// Creates `pmem_file` at `num_blocks * block_size` bytes, or opens it if it has that size.
    pub fn new(name: &str, pmem_file: &str, block_size: u32, num_blocks: u64) -> Self {
        PmemCreateParams {
            block_size: Some(block_size),
            num_blocks: Some(num_blocks),
            ..Self::open(name, pmem_file)
        }
    }
}

pub fn register_rpcs() {
    crate::rpc::register_create(
        "bdev_pmem_create",
        super::create,
        crate::rpc::CreateErrors::Detailed,
    );
    crate::rpc::register_delete("bdev_pmem_delete", super::delete);
}
