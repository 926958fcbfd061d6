//! The target's JSON-RPC methods, with SPDK's names, parameters and result shapes, and the
//! "nvmf" subsystem for save_config.

use crate::target::config::{self, Crdt, SetConfigParams};
use crate::target::options::TransportOptions;
use crate::target::subsystem::{CreateSubsystemParams, ListenAddress, NamespaceParams, Target};
use crate::target::{TargetError, listener, poll_group, transport};
use rpc::{Responder, RpcError, StateMask};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::atomic::Ordering;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NqnParams {
    nqn: String,
    #[serde(default)]
    tgt_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OptNqnParams {
    #[serde(default)]
    nqn: Option<String>,
    #[serde(default)]
    tgt_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetTransportsParams {
    #[serde(default)]
    trtype: Option<String>,
    #[serde(default)]
    tgt_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddNsParams {
    nqn: String,
    namespace: NamespaceParams,
    #[serde(default)]
    tgt_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveNsParams {
    nqn: String,
    nsid: u32,
    #[serde(default)]
    tgt_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenerParams {
    nqn: String,
    listen_address: Value,
    #[serde(default)]
    tgt_name: Option<String>,
    #[serde(default)]
    secure_channel: bool,
    #[serde(default)]
    ana_state: Option<String>,
    #[serde(default)]
    sock_impl: Option<String>,
    #[serde(default)]
    numa_id: Option<i32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostParams {
    nqn: String,
    host: String,
    #[serde(default)]
    tgt_name: Option<String>,
    #[serde(default)]
    psk: Option<String>,
    #[serde(default)]
    dhchap_key: Option<String>,
    #[serde(default)]
    dhchap_ctrlr_key: Option<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowAnyHostParams {
    nqn: String,
    allow_any_host: bool,
    #[serde(default)]
    tgt_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MaxSubsystemsParams {
    max_subsystems: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TgtNameParams {
    #[serde(default)]
    tgt_name: Option<String>,
}

/// Only the default target exists (SPDK's multi-target RPCs are not offered).
fn default_target(tgt_name: &Option<String>) -> Result<(), TargetError> {
    match tgt_name {
        None => Ok(()),
        Some(n) => Err(TargetError::invalid(format!(
            "Unable to find the target {n}: only the default target exists"
        ))),
    }
}

fn answer(r: Responder, res: Result<Value, TargetError>) {
    r.result(res.map_err(RpcError::from))
}

fn ok_true(res: Result<(), TargetError>) -> Result<Value, TargetError> {
    res.map(|()| json!(true))
}

fn listener_params(p: &ListenerParams) -> Result<ListenAddress, TargetError> {
    default_target(&p.tgt_name)?;
    if p.secure_channel {
        return Err(TargetError::invalid(
            "secure_channel (TLS) is not supported",
        ));
    }
    if p.ana_state.is_some() {
        return Err(TargetError::invalid(
            "ana_state: ANA reporting is not supported",
        ));
    }
    if p.sock_impl.as_deref().is_some_and(|s| s != "posix") {
        return Err(TargetError::invalid(
            "sock_impl: only posix sockets are used",
        ));
    }
    let _ = p.numa_id;
    ListenAddress::from_json(&p.listen_address)
}

fn controllers_json(nqn: &str) -> Result<Value, TargetError> {
    let s = Target::get().get_subsystem(nqn)?;
    let st = s.lock();
    let list: Vec<Value> = st
        .controllers
        .iter()
        .map(|c| {
            json!({"cntlid": c.cntlid, "cntrltype": if c.discovery { "discovery" } else { "io" },
                   "hostnqn": c.hostnqn, "hostid": c.hostid.to_string(),
                   "num_io_qpairs": c.events.num_io_qpairs()})
        })
        .collect();
    Ok(json!(list))
}

fn qpairs_json(nqn: &str) -> Result<Value, TargetError> {
    let s = Target::get().get_subsystem(nqn)?;
    let events: Vec<_> = s
        .lock()
        .controllers
        .iter()
        .map(|c| c.events.clone())
        .collect();
    let list: Vec<Value> = events
        .iter()
        .flat_map(|e| e.qpairs())
        .map(|q| q.to_json())
        .collect();
    Ok(json!(list))
}

fn subsystems_json(p: &OptNqnParams) -> Result<Value, TargetError> {
    default_target(&p.tgt_name)?;
    let t = Target::get();
    let list: Vec<Value> = match &p.nqn {
        Some(nqn) => vec![t.get_subsystem(nqn)?.lock().to_json()],
        None => t.subsystems().iter().map(|s| s.lock().to_json()).collect(),
    };
    Ok(json!(list))
}

pub fn register_rpcs() {
    let rt = StateMask::RUNTIME;
    rpc::register(
        "nvmf_create_transport",
        rt,
        |p: TransportOptions, r: Responder| answer(r, ok_true(transport::create(p))),
    );
    rpc::register(
        "nvmf_get_transports",
        rt,
        |p: GetTransportsParams, r: Responder| {
            let res = default_target(&p.tgt_name).and_then(|()| {
                let list: Vec<Value> = transport::options()
                    .filter(|_| {
                        p.trtype
                            .as_deref()
                            .is_none_or(|t| t.eq_ignore_ascii_case("tcp"))
                    })
                    .map(|t| t.to_json())
                    .into_iter()
                    .collect();
                match (&p.trtype, list.is_empty()) {
                    (Some(t), true) => Err(TargetError::not_found(format!(
                        "Unable to find transport {t}"
                    ))),
                    _ => Ok(json!(list)),
                }
            });
            answer(r, res)
        },
    );
    rpc::register(
        "nvmf_create_subsystem",
        rt,
        |p: CreateSubsystemParams, r: Responder| {
            answer(r, ok_true(Target::get().create_subsystem(p)))
        },
    );
    rpc::register("nvmf_delete_subsystem", rt, |p: NqnParams, r: Responder| {
        let res = default_target(&p.tgt_name).and_then(|()| Target::get().delete_subsystem(&p.nqn));
        answer(r, ok_true(res))
    });
    rpc::register(
        "nvmf_subsystem_add_ns",
        rt,
        |p: AddNsParams, r: Responder| {
            let res = default_target(&p.tgt_name)
                .and_then(|()| Target::get().add_namespace(&p.nqn, p.namespace))
                .map(|nsid| json!(nsid));
            answer(r, res)
        },
    );
    rpc::register(
        "nvmf_subsystem_remove_ns",
        rt,
        |p: RemoveNsParams, r: Responder| {
            let res = default_target(&p.tgt_name)
                .and_then(|()| Target::get().remove_namespace(&p.nqn, p.nsid));
            answer(r, ok_true(res))
        },
    );
    rpc::register(
        "nvmf_subsystem_add_listener",
        rt,
        |p: ListenerParams, r: Responder| {
            let res = listener_params(&p).and_then(|addr| {
                let s = Target::get().get_subsystem(&p.nqn)?;
                listener::add(&s, addr)
            });
            answer(r, ok_true(res))
        },
    );
    rpc::register(
        "nvmf_subsystem_remove_listener",
        rt,
        |p: ListenerParams, r: Responder| {
            let res = listener_params(&p).and_then(|addr| {
                let s = Target::get().get_subsystem(&p.nqn)?;
                listener::remove(&s, &addr)
            });
            answer(r, ok_true(res))
        },
    );
    rpc::register(
        "nvmf_subsystem_add_host",
        rt,
        |p: HostParams, r: Responder| {
            let res = default_target(&p.tgt_name).and_then(|()| {
                if p.psk.is_some() || p.dhchap_key.is_some() || p.dhchap_ctrlr_key.is_some() {
                    return Err(TargetError::invalid(
                        "psk and DH-HMAC-CHAP keys are not supported",
                    ));
                }
                Target::get().add_host(&p.nqn, &p.host)
            });
            answer(r, ok_true(res))
        },
    );
    rpc::register(
        "nvmf_subsystem_remove_host",
        rt,
        |p: HostParams, r: Responder| {
            let _ = p.timeout_ms;
            let res = default_target(&p.tgt_name)
                .and_then(|()| Target::get().remove_host(&p.nqn, &p.host));
            answer(r, ok_true(res))
        },
    );
    rpc::register(
        "nvmf_subsystem_allow_any_host",
        rt,
        |p: AllowAnyHostParams, r: Responder| {
            let res = default_target(&p.tgt_name)
                .and_then(|()| Target::get().allow_any_host(&p.nqn, p.allow_any_host));
            answer(r, ok_true(res))
        },
    );
    rpc::register(
        "nvmf_get_subsystems",
        rt,
        |p: OptNqnParams, r: Responder| answer(r, subsystems_json(&p)),
    );
    rpc::register(
        "nvmf_subsystem_get_controllers",
        rt,
        |p: NqnParams, r: Responder| {
            answer(
                r,
                default_target(&p.tgt_name).and_then(|()| controllers_json(&p.nqn)),
            )
        },
    );
    rpc::register(
        "nvmf_subsystem_get_qpairs",
        rt,
        |p: NqnParams, r: Responder| {
            answer(
                r,
                default_target(&p.tgt_name).and_then(|()| qpairs_json(&p.nqn)),
            )
        },
    );
    rpc::register(
        "nvmf_subsystem_get_listeners",
        rt,
        |p: NqnParams, r: Responder| {
            let res = default_target(&p.tgt_name).and_then(|()| {
                let s = Target::get().get_subsystem(&p.nqn)?;
                let st = s.lock();
                Ok(json!(
                    st.listeners
                        .iter()
                        .map(|l| json!({"address": l.to_json()}))
                        .collect::<Vec<_>>()
                ))
            });
            answer(r, res)
        },
    );
    rpc::register(
        "nvmf_get_stats",
        rt,
        |p: TgtNameParams, r: Responder| match default_target(&p.tgt_name) {
            Ok(()) => poll_group::stats_json(move |v| r.ok(v)),
            Err(e) => r.err(e.into()),
        },
    );
    let st = StateMask::STARTUP;
    rpc::register(
        "nvmf_set_config",
        st,
        |p: SetConfigParams, r: Responder| match config::set_config(&p) {
            Ok(()) => r.ok(json!(true)),
            Err(m) => r.err(RpcError::InvalidParams(m)),
        },
    );
    rpc::register(
        "nvmf_set_max_subsystems",
        st,
        |p: MaxSubsystemsParams, r: Responder| {
            if p.max_subsystems == 0 {
                return r.err(RpcError::InvalidParams(
                    "max_subsystems must be at least 1".into(),
                ));
            }
            Target::get()
                .max_subsystems
                .store(u64::from(p.max_subsystems), Ordering::Relaxed);
            r.ok(json!(true))
        },
    );
    rpc::register("nvmf_set_crdt", st, |p: Crdt, r: Responder| {
        config::set_crdt(p);
        r.ok(json!(true))
    });
    rpc::register_subsystem(rpc::Subsystem::new("nvmf", &["bdev"], config::write_config));
}
