//! Poll groups: one lightweight thread per reactor of the core mask, each owning the
//! connections assigned to it. (The data plane replaces this file.)

use crate::target::subsystem::ListenAddress;
use serde_json::{Value, json};
use std::net::TcpStream;

/// Hands an accepted connection to a poll group.
pub fn accept(stream: TcpStream, listen: ListenAddress) {
    tracing::warn!(
        "no NVMe/TCP data plane yet: closing a connection on {}:{}",
        listen.traddr,
        listen.trsvcid
    );
    drop(stream);
}

/// Restricts the poll groups to these cores (nvmf_set_config's poll_groups_mask).
pub fn set_mask(_cores: Vec<u32>) {}

/// `nvmf_get_stats`'s answer, given to `done` once every poll group has reported.
pub fn stats_json(done: impl FnOnce(Value) + Send + 'static) {
    done(json!({"tick_rate": poller::time::ticks_hz(), "poll_groups": []}))
}
