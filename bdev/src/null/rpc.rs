//! `bdev_null_create` / `bdev_null_delete` with SPDK's parameters.

use crate::BdevError;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NullCreateParams {
    pub name: String,
    pub num_blocks: u64,
    pub block_size: u32,
    #[serde(default)]
    pub physical_block_size: u32,
    #[serde(default)]
    pub md_size: u32,
    #[serde(default)]
    pub dif_type: u32,
    #[serde(default)]
    pub dif_is_head_of_md: bool,
    #[serde(default)]
    pub dif_pi_format: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<Uuid>,
    #[serde(default)]
    pub preferred_write_granularity: u32,
    #[serde(default)]
    pub preferred_write_alignment: u32,
    #[serde(default)]
    pub optimal_write_size: u32,
    #[serde(default)]
    pub preferred_unmap_granularity: u32,
    #[serde(default)]
    pub preferred_unmap_alignment: u32,
}

impl NullCreateParams {
    pub fn new(name: &str, num_blocks: u64, block_size: u32) -> Self {
        serde_json::from_value(
            serde_json::json!({"name": name, "num_blocks": num_blocks, "block_size": block_size}),
        )
        .unwrap_or_else(|_| unreachable!("static parameters"))
    }

    pub(crate) fn check(&mut self) -> Result<(), BdevError> {
        if self.md_size != 0 || self.dif_type != 0 {
            return Err(BdevError::invalid("metadata and DIF are not supported"));
        }
        if self.physical_block_size == 0 {
            self.physical_block_size = self.block_size;
        }
        Ok(())
    }
}

pub fn register_rpcs() {
    crate::rpc::register_create(
        "bdev_null_create",
        super::create,
        crate::rpc::CreateErrors::Strerror,
    );
    crate::rpc::register_delete("bdev_null_delete", super::delete);
}
