//! `bdev_passthru_create` / `bdev_passthru_delete` with SPDK's parameters.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Also the `params` of the save_config entry, so the member order is SPDK's.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassthruCreateParams {
    pub base_bdev_name: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<Uuid>,
}

impl PassthruCreateParams {
    pub fn new(name: &str, base_bdev_name: &str) -> Self {
        PassthruCreateParams {
            base_bdev_name: base_bdev_name.to_string(),
            name: name.to_string(),
            uuid: None,
        }
    }
}

pub fn register_rpcs() {
    use rpc::{Responder, StateMask};
    super::register_module();
    // Answers the name even when the base is missing: the vbdev appears when the base does.
    rpc::register(
        "bdev_passthru_create",
        StateMask::RUNTIME,
        |p: PassthruCreateParams, r: Responder| {
            let name = p.name.clone();
            crate::rpc::answer(r, super::create(p).map(|_| name))
        },
    );
    crate::rpc::register_delete("bdev_passthru_delete", |name, done| {
        super::delete(name, done)
    });
}
