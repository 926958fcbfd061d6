//! `bdev_delay_create` / `bdev_delay_delete` / `bdev_delay_update_latency` with SPDK's parameters.
//! Latencies are in microseconds.

use rpc::{Responder, RpcError, StateMask};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Also the `params` of the save_config entry and of `driver_specific.delay`, so the member order
/// is SPDK's.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelayCreateParams {
    pub name: String,
    pub base_bdev_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<Uuid>,
    pub avg_read_latency: u64,
    pub p99_read_latency: u64,
    pub avg_write_latency: u64,
    pub p99_write_latency: u64,
}

impl DelayCreateParams {
    /// Read and write latencies (average, p99) in microseconds.
    pub fn new(name: &str, base_bdev_name: &str, read: (u64, u64), write: (u64, u64)) -> Self {
        DelayCreateParams {
            name: name.to_string(),
            base_bdev_name: base_bdev_name.to_string(),
            uuid: None,
            avg_read_latency: read.0,
            p99_read_latency: read.1,
            avg_write_latency: write.0,
            p99_write_latency: write.1,
        }
    }
}

/// The latency classes, in SPDK's `latency_type` spelling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LatencyType {
    AvgRead,
    P99Read,
    AvgWrite,
    P99Write,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelayUpdateLatencyParams {
    pub delay_bdev_name: String,
    pub latency_type: LatencyType,
    pub latency_us: u64,
}

pub fn register_rpcs() {
    super::register_module();
    rpc::register(
        "bdev_delay_create",
        StateMask::RUNTIME,
        |p: DelayCreateParams, r: Responder| {
            let name = p.name.clone();
            crate::rpc::answer(r, super::create(p).map(|_| name))
        },
    );
    crate::rpc::register_delete("bdev_delay_delete", super::delete);
    rpc::register(
        "bdev_delay_update_latency",
        StateMask::RUNTIME,
        |p: DelayUpdateLatencyParams, r: Responder| {
            match super::update_latency(&p.delay_bdev_name, p.latency_type, p.latency_us) {
                Ok(()) => r.ok(true.into()),
                // SPDK answers this one with -32602 and its own text rather than an errno.
                Err(_) => r.err(RpcError::invalid_params(
                    "The requested bdev does not exist.",
                )),
            }
        },
    );
}
