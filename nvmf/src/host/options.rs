//! `bdev_nvme_set_options`: the module's global options with SPDK's names and defaults. A call
//! changes only the members it names (SPDK starts from the current options); save_config writes
//! them all back. The members this initiator uses are marked; the rest are accepted and kept
//! so SPDK's configs load and round-trip.

use crate::host::error::HostError;
use crate::host::reconnect::ReconnectParams;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::sync::Mutex;

const DIGESTS: [&str; 3] = ["sha256", "sha384", "sha512"];
const DHGROUPS: [&str; 6] = [
    "null",
    "ffdhe2048",
    "ffdhe3072",
    "ffdhe4096",
    "ffdhe6144",
    "ffdhe8192",
];

/// `multipath_opts`: one path per controller here, so the policy only round-trips.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultipathOpts {
    #[serde(default = "default_policy")]
    pub policy: String,
    #[serde(default = "default_selector")]
    pub selector: String,
    #[serde(default = "default_min_io")]
    pub min_io: u32,
}

fn default_policy() -> String {
    "active_passive".into()
}
fn default_selector() -> String {
    "round_robin".into()
}
fn default_min_io() -> u32 {
    1
}

impl Default for MultipathOpts {
    fn default() -> Self {
        MultipathOpts {
            policy: default_policy(),
            selector: default_selector(),
            min_io: default_min_io(),
        }
    }
}

impl MultipathOpts {
    pub fn check(&self) -> Result<(), HostError> {
        if !["active_passive", "active_active"].contains(&self.policy.as_str()) {
            return Err(HostError::invalid(format!(
                "multipath_opts.policy: unknown policy {}",
                self.policy
            )));
        }
        if !["round_robin", "queue_depth"].contains(&self.selector.as_str()) {
            return Err(HostError::invalid(format!(
                "multipath_opts.selector: unknown selector {}",
                self.selector
            )));
        }
        if self.min_io == 0 {
            return Err(HostError::invalid(
                "multipath_opts.min_io must be at least 1",
            ));
        }
        Ok(())
    }

    /// SPDK's form: the selector only for active_active, min_io only for round robin.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("policy".into(), json!(self.policy));
        if self.policy == "active_active" {
            m.insert("selector".into(), json!(self.selector));
            if self.selector == "round_robin" {
                m.insert("min_io".into(), json!(self.min_io));
            }
        }
        Value::Object(m)
    }
}

/// SPDK's `spdk_bdev_nvme_opts` as the RPC carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NvmeOptions {
    pub action_on_timeout: String,
    pub timeout_us: u64,
    pub timeout_admin_us: u64,
    /// Used: the Connect KATO and the Keep Alive period (KATO / 2); 0 disables keep alive.
    pub keep_alive_timeout_ms: u32,
    pub arbitration_burst: u32,
    pub low_priority_weight: u32,
    pub medium_priority_weight: u32,
    pub high_priority_weight: u32,
    /// Used: how often the admin queue is polled (AENs, keep alive answers, reconnect timers).
    pub nvme_adminq_poll_period_us: u64,
    /// Used: how often an I/O qpair is polled (0: every reactor iteration).
    pub nvme_ioq_poll_period_us: u64,
    /// Used: caps an I/O qpair's command slots below the queue depth the controller allows
    /// (0: the controller's limit).
    pub io_queue_requests: u32,
    pub delay_cmd_submit: bool,
    pub transport_retry_count: u32,
    /// Used: how many times an I/O that failed with a retryable status (DNR clear) is sent
    /// again before it fails (-1: without limit).
    pub bdev_retry_count: i32,
    pub transport_ack_timeout: u8,
    /// Used: the defaults of `bdev_nvme_attach_controller`'s three reconnect parameters.
    pub ctrlr_loss_timeout_sec: i32,
    pub reconnect_delay_sec: u32,
    pub fast_io_fail_timeout_sec: u32,
    pub disable_auto_failback: bool,
    /// Used: a namespace that reports neither a UUID nor an NGUID gets a UUID derived from the
    /// controller's serial number and the nsid (else a random one).
    pub generate_uuids: bool,
    pub transport_tos: u8,
    pub nvme_error_stat: bool,
    pub rdma_srq_size: u32,
    pub io_path_stat: bool,
    pub allow_accel_sequence: bool,
    pub rdma_max_cq_size: u32,
    pub rdma_cm_event_timeout_ms: u16,
    pub dhchap_digests: Vec<String>,
    pub dhchap_dhgroups: Vec<String>,
    pub rdma_umr_per_io: bool,
    /// Used: the TCP connect timeout of every qpair (0: the Connect timeout alone applies).
    pub tcp_connect_timeout_ms: u32,
    /// Accepted for SPDK's configs. FLUSH always goes to a namespace with a volatile write
    /// cache here (SPDK HEAD completes it unsent unless this is true): pcache's durability
    /// contract must hold over NVMe/TCP.
    pub enable_flush: bool,
    pub multipath_opts: MultipathOpts,
}

impl Default for NvmeOptions {
    fn default() -> Self {
        NvmeOptions {
            action_on_timeout: "none".into(),
            timeout_us: 0,
            timeout_admin_us: 0,
            keep_alive_timeout_ms: 10_000,
            arbitration_burst: 0,
            low_priority_weight: 0,
            medium_priority_weight: 0,
            high_priority_weight: 0,
            nvme_adminq_poll_period_us: 10_000,
            nvme_ioq_poll_period_us: 0,
            io_queue_requests: 0,
            delay_cmd_submit: true,
            transport_retry_count: 4,
            bdev_retry_count: 3,
            transport_ack_timeout: 0,
            ctrlr_loss_timeout_sec: 0,
            reconnect_delay_sec: 0,
            fast_io_fail_timeout_sec: 0,
            disable_auto_failback: false,
            generate_uuids: false,
            transport_tos: 0,
            nvme_error_stat: false,
            rdma_srq_size: 0,
            io_path_stat: false,
            allow_accel_sequence: false,
            rdma_max_cq_size: 0,
            rdma_cm_event_timeout_ms: 0,
            dhchap_digests: DIGESTS.iter().map(|s| s.to_string()).collect(),
            dhchap_dhgroups: DHGROUPS.iter().map(|s| s.to_string()).collect(),
            rdma_umr_per_io: false,
            tcp_connect_timeout_ms: 0,
            enable_flush: false,
            multipath_opts: MultipathOpts::default(),
        }
    }
}

impl NvmeOptions {
    pub fn reconnect(&self) -> ReconnectParams {
        ReconnectParams {
            ctrlr_loss_timeout_sec: self.ctrlr_loss_timeout_sec,
            reconnect_delay_sec: self.reconnect_delay_sec,
            fast_io_fail_timeout_sec: self.fast_io_fail_timeout_sec,
        }
    }

    /// SPDK's validation (`bdev_nvme_validate_opts`), with what it logs as the message.
    pub fn check(&self) -> Result<(), HostError> {
        if !["none", "reset", "abort"].contains(&self.action_on_timeout.as_str()) {
            return Err(HostError::invalid(format!(
                "action_on_timeout: expected none, reset or abort, got {}",
                self.action_on_timeout
            )));
        }
        if self.bdev_retry_count < -1 {
            return Err(HostError::invalid(
                "Invalid option: bdev_retry_count can't be less than -1.",
            ));
        }
        self.reconnect().check().map_err(HostError::invalid)?;
        for d in &self.dhchap_digests {
            if !DIGESTS.contains(&d.as_str()) {
                return Err(HostError::invalid(format!(
                    "dhchap_digests: unknown digest {d}"
                )));
            }
        }
        for g in &self.dhchap_dhgroups {
            if !DHGROUPS.contains(&g.as_str()) {
                return Err(HostError::invalid(format!(
                    "dhchap_dhgroups: unknown group {g}"
                )));
            }
        }
        self.multipath_opts.check()
    }

    /// The save_config entry (SPDK's member order).
    pub fn to_json(&self) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or_else(|_| json!({}));
        if let Some(m) = v.as_object_mut() {
            m.insert("multipath_opts".into(), self.multipath_opts.to_json());
        }
        v
    }

    /// These options with the members of `params` (a JSON object) applied on top.
    pub fn merged(&self, params: &Map<String, Value>) -> Result<NvmeOptions, String> {
        let mut base = serde_json::to_value(self).map_err(|e| e.to_string())?;
        if let Some(m) = base.as_object_mut() {
            for (k, v) in params {
                if k == "multipath_opts" {
                    // A partial object keeps the other members, as SPDK's decoder does.
                    let mut mp =
                        serde_json::to_value(&self.multipath_opts).map_err(|e| e.to_string())?;
                    match (mp.as_object_mut(), v.as_object()) {
                        (Some(mp), Some(given)) => {
                            for (k2, v2) in given {
                                mp.insert(k2.clone(), v2.clone());
                            }
                        }
                        _ => return Err("multipath_opts: expected an object".into()),
                    }
                    m.insert(k.clone(), mp);
                } else {
                    m.insert(k.clone(), v.clone());
                }
            }
        }
        rpc::decode_params(Some(base)).map_err(|e| e.message())
    }
}

static OPTIONS: Mutex<Option<NvmeOptions>> = Mutex::new(None);

/// The current options.
pub fn get() -> NvmeOptions {
    OPTIONS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .unwrap_or_default()
}

pub(crate) fn set(o: NvmeOptions) {
    *OPTIONS.lock().unwrap_or_else(|p| p.into_inner()) = Some(o);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_spdks_and_merge_changes_only_what_is_named() {
        let d = NvmeOptions::default();
        assert_eq!(d.check(), Ok(()));
        let j = d.to_json();
        assert_eq!(j["keep_alive_timeout_ms"], 10000);
        assert_eq!(j["bdev_retry_count"], 3);
        assert_eq!(j["transport_retry_count"], 4);
        assert_eq!(j["nvme_adminq_poll_period_us"], 10000);
        assert_eq!(j["multipath_opts"], json!({"policy": "active_passive"}));
        assert_eq!(j["dhchap_dhgroups"][5], "ffdhe8192");
        // save_config's entry loads back to the same options.
        let back = NvmeOptions::default()
            .merged(j.as_object().unwrap())
            .unwrap();
        assert_eq!(back, d);

        let p = json!({"keep_alive_timeout_ms": 2000, "reconnect_delay_sec": 1,
                       "ctrlr_loss_timeout_sec": -1, "multipath_opts": {"min_io": 5}});
        let m = d.merged(p.as_object().unwrap()).unwrap();
        assert_eq!(m.keep_alive_timeout_ms, 2000);
        assert_eq!(m.reconnect().ctrlr_loss_timeout_sec, -1);
        assert_eq!(m.multipath_opts.min_io, 5);
        assert_eq!(m.multipath_opts.policy, "active_passive");
        assert_eq!(m.bdev_retry_count, 3);
        assert_eq!(m.check(), Ok(()));

        let e = d
            .merged(json!({"nope": 1}).as_object().unwrap())
            .unwrap_err();
        assert!(e.contains("unknown field `nope`"), "{e}");
        let e = d
            .merged(json!({"keep_alive_timeout_ms": -1}).as_object().unwrap())
            .unwrap_err();
        assert!(e.contains("keep_alive_timeout_ms"), "{e}");
        let bad = d
            .merged(json!({"reconnect_delay_sec": 3}).as_object().unwrap())
            .unwrap();
        assert_eq!(
            bad.check().unwrap_err().to_string(),
            "Both reconnect_delay_sec and fast_io_fail_timeout_sec must be 0 if ctrlr_loss_timeout_sec is 0."
        );
        let bad = d
            .merged(json!({"action_on_timeout": "explode"}).as_object().unwrap())
            .unwrap();
        assert!(bad.check().is_err());
    }
}
