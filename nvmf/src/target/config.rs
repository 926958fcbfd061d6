//! The "nvmf" subsystem's save_config, in SPDK's order, and the start-up settings
//! (`nvmf_set_config`, `nvmf_set_max_subsystems`, `nvmf_set_crdt`) it begins with. Loading the
//! written config into a fresh target recreates the same transport, subsystems, hosts,
//! namespaces (with their NSIDs and IDs) and listeners.

use crate::target::subsystem::{DISCOVERY_NQN, SubsystemType, Target};
use crate::target::transport;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Mutex;
use std::sync::atomic::Ordering;

/// `nvmf_set_config`'s settings (accepted as SPDK writes them; only the defaults are
/// implemented: no command passthrough, no discovery filtering, no DH-HMAC-CHAP).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetConfigParams {
    #[serde(default)]
    pub discovery_filter: Option<String>,
    #[serde(default)]
    pub discovery_filters: Option<Vec<String>>,
    #[serde(default)]
    pub admin_cmd_passthru: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    pub poll_groups_mask: Option<String>,
    #[serde(default)]
    pub dhchap_digests: Option<Vec<String>>,
    #[serde(default)]
    pub dhchap_dhgroups: Option<Vec<String>>,
    #[serde(default)]
    pub dup_host_policy: Option<String>,
}

/// Command Retry Delay Times (×100 ms) reported in Identify Controller.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Crdt {
    #[serde(default)]
    pub crdt1: u16,
    #[serde(default)]
    pub crdt2: u16,
    #[serde(default)]
    pub crdt3: u16,
}

static CRDT: Mutex<Crdt> = Mutex::new(Crdt {
    crdt1: 0,
    crdt2: 0,
    crdt3: 0,
});

pub fn crdt() -> Crdt {
    *CRDT.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn set_crdt(c: Crdt) {
    *CRDT.lock().unwrap_or_else(|p| p.into_inner()) = c;
}

/// Checks `nvmf_set_config`: what is not implemented is refused, never silently dropped.
pub fn set_config(p: &SetConfigParams) -> Result<(), String> {
    if let Some(m) = &p.admin_cmd_passthru
        && m.values().any(|v| v != &json!(false))
    {
        return Err("admin_cmd_passthru: command passthrough is not supported".into());
    }
    let filters_default = p.discovery_filters.as_ref().is_none_or(|f| f.is_empty())
        && p.discovery_filter
            .as_deref()
            .is_none_or(|f| f == "match_any");
    if !filters_default {
        return Err("discovery filters are not supported (every listener is reported)".into());
    }
    if p.dup_host_policy.as_deref().is_some_and(|d| d != "allow") {
        return Err("dup_host_policy: only \"allow\" is supported".into());
    }
    if let Some(mask) = &p.poll_groups_mask {
        let m = poller::CpuMask::parse(mask).map_err(|e| format!("poll_groups_mask: {e}"))?;
        let cores = poller::reactor_cores();
        if m.cores().iter().any(|c| !cores.contains(c)) {
            return Err(format!(
                "poll_groups_mask {mask} names cores outside the core mask"
            ));
        }
        crate::target::poll_group::set_mask(m.cores().to_vec());
    }
    Ok(())
}

/// The config entries that recreate the target.
pub fn write_config() -> Vec<Value> {
    let c = crdt();
    let target = Target::get();
    let mut out = vec![
        json!({"method": "nvmf_set_config", "params": {
            "discovery_filters": [],
            "admin_cmd_passthru": {"identify_ctrlr": false, "identify_uuid_list": false,
                "get_log_page": false, "get_set_features": false, "sanitize": false,
                "security_send_recv": false, "fw_update": false, "nvme_mi": false,
                "vendor_specific": false},
            "dhchap_digests": ["sha256", "sha384", "sha512"],
            "dhchap_dhgroups": ["null", "ffdhe2048", "ffdhe3072", "ffdhe4096", "ffdhe6144",
                "ffdhe8192"],
            "dup_host_policy": "allow"}}),
        json!({"method": "nvmf_set_max_subsystems", "params": {
            "max_subsystems": target.max_subsystems.load(Ordering::Relaxed)}}),
        json!({"method": "nvmf_set_crdt", "params": {
            "crdt1": c.crdt1, "crdt2": c.crdt2, "crdt3": c.crdt3}}),
    ];
    if let Some(t) = transport::options() {
        out.push(json!({"method": "nvmf_create_transport", "params": t.to_json()}));
    }
    // The discovery subsystem is listed first and writes only its listeners.
    for s in target.subsystems() {
        let st = s.lock();
        if st.subtype == SubsystemType::Discovery {
            for l in &st.listeners {
                out.push(json!({"method": "nvmf_subsystem_add_listener",
                    "params": {"nqn": DISCOVERY_NQN, "listen_address": l.to_json(),
                               "secure_channel": false}}));
            }
            continue;
        }
        let p = &st.params;
        let mut create = json!({"nqn": st.nqn, "allow_any_host": st.allow_any_host,
            "serial_number": p.serial_number, "model_number": p.model_number});
        if p.max_namespaces != 0 {
            create["max_namespaces"] = json!(p.max_namespaces);
        }
        for (k, v) in [
            ("min_cntlid", json!(p.min_cntlid)),
            ("max_cntlid", json!(p.max_cntlid)),
            ("ana_reporting", json!(p.ana_reporting)),
            ("dmrsl", json!(p.dmrsl)),
            ("wzsl", json!(p.wzsl)),
            ("passthrough", json!(p.passthrough)),
            ("enable_nssr", json!(p.enable_nssr)),
        ] {
            create[k] = v;
        }
        if let Some(l) = &p.admin_label {
            create["admin_label"] = json!(l);
        }
        out.push(json!({"method": "nvmf_create_subsystem", "params": create}));
        for h in &st.hosts {
            out.push(json!({"method": "nvmf_subsystem_add_host",
                "params": {"nqn": st.nqn, "host": h}}));
        }
        for ns in st.namespaces.values() {
            let mut n = json!({"nsid": ns.nsid, "bdev_name": ns.bdev_name,
                "nguid": ns.to_json()["nguid"], "uuid": ns.uuid.to_string()});
            if let Some(e) = ns.to_json().get("eui64") {
                n["eui64"] = e.clone();
            }
            n["no_auto_visible"] = json!(false);
            out.push(json!({"method": "nvmf_subsystem_add_ns",
                "params": {"nqn": st.nqn, "namespace": n}}));
        }
        for l in &st.listeners {
            out.push(json!({"method": "nvmf_subsystem_add_listener",
                "params": {"nqn": st.nqn, "listen_address": l.to_json(),
                           "secure_channel": false}}));
        }
    }
    out
}
