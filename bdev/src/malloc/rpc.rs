//! `bdev_malloc_create` / `bdev_malloc_delete` with SPDK's parameters.

use crate::BdevError;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MallocCreateParams {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub num_blocks: u64,
    pub block_size: u32,
    #[serde(default)]
    pub physical_block_size: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<Uuid>,
    #[serde(default)]
    pub optimal_io_boundary: u32,
    #[serde(default)]
    pub md_size: u32,
    #[serde(default, skip_serializing)]
    pub md_interleave: bool,
    #[serde(default)]
    pub dif_type: u32,
    #[serde(default)]
    pub dif_is_head_of_md: bool,
    #[serde(default)]
    pub dif_pi_format: u32,
    #[serde(default = "no_numa")]
    pub numa_id: i32,
}

fn no_numa() -> i32 {
    -1
}

impl MallocCreateParams {
    pub fn new(name: &str, num_blocks: u64, block_size: u32) -> Self {
        MallocCreateParams {
            name: Some(name.to_string()),
            num_blocks,
            block_size,
            physical_block_size: 0,
            uuid: None,
            optimal_io_boundary: 0,
            md_size: 0,
            md_interleave: false,
            dif_type: 0,
            dif_is_head_of_md: false,
            dif_pi_format: 0,
            numa_id: -1,
        }
    }

    pub(crate) fn check(&mut self) -> Result<(), BdevError> {
        if self.md_size != 0 || self.dif_type != 0 {
            return Err(BdevError::invalid("metadata and DIF are not supported"));
        }
        if !self.block_size.is_multiple_of(512) || !self.block_size.is_power_of_two() {
            return Err(BdevError::invalid(format!(
                "block_size {} is not a power of two multiple of 512",
                self.block_size
            )));
        }
        if self.physical_block_size == 0 {
            self.physical_block_size = self.block_size;
        }
        if self.num_blocks == 0
            || self
                .num_blocks
                .checked_mul(self.block_size as u64)
                .is_none_or(|b| b > 1 << 40)
        {
            return Err(BdevError::invalid(
                "num_blocks must be at least 1 and the disk at most 1 TiB",
            ));
        }
        Ok(())
    }
}

pub fn register_rpcs() {
    crate::rpc::register_create(
        "bdev_malloc_create",
        super::create,
        crate::rpc::CreateErrors::Strerror,
    );
    crate::rpc::register_delete("bdev_malloc_delete", super::delete);
}
