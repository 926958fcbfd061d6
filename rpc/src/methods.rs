//! Built-in methods: version, method list, subsystems, config, and the framework start-up pair.

use std::sync::{Arc, Weak};

use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::RpcError;
use crate::registry::{AppState, Registry, Responder, StateMask, lock};

/// What `spdk_get_version` reports, supplied by the application.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VersionInfo {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
    /// Appended to the number, e.g. "-pre"; usually empty.
    pub suffix: String,
    /// Short git hash; empty when unknown (then no "commit" field, as in SPDK).
    pub commit: String,
}

impl VersionInfo {
    /// From a Cargo version such as "0.1.0" or "1.2.3-pre" (missing parts are 0).
    pub fn from_cargo(version: &str, commit: &str) -> VersionInfo {
        let (numbers, suffix) = match version.find(['-', '+']) {
            Some(i) => version.split_at(i),
            None => (version, ""),
        };
        let mut parts = numbers.split('.').map(|p| p.parse().unwrap_or(0));
        VersionInfo {
            major: parts.next().unwrap_or(0),
            minor: parts.next().unwrap_or(0),
            patch: parts.next().unwrap_or(0),
            suffix: suffix.to_owned(),
            commit: commit.to_owned(),
        }
    }

    /// "pcache v0.1.0 git sha1 abc123", in the shape of SPDK's "SPDK v26.05 git sha1 d519b163cb".
    pub fn version_string(&self) -> String {
        let mut s = format!(
            "pcache v{}.{}.{}{}",
            self.major, self.minor, self.patch, self.suffix
        );
        if !self.commit.is_empty() {
            s.push_str(" git sha1 ");
            s.push_str(&self.commit);
        }
        s
    }

    pub fn to_json(&self) -> Value {
        let mut fields = json!({
            "major": self.major,
            "minor": self.minor,
            "patch": self.patch,
            "suffix": self.suffix,
        });
        if !self.commit.is_empty() {
            fields["commit"] = json!(self.commit);
        }
        json!({ "version": self.version_string(), "fields": fields })
    }
}

pub type StartInitHook = Arc<dyn Fn(Responder) + Send + Sync>;

/// The app's start-up hook and whether a start is under way.
#[derive(Default)]
pub(crate) struct InitControl {
    hook: Option<StartInitHook>,
    starting: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetMethodsParams {
    #[serde(default)]
    current: bool,
    // We register no aliases, so there is nothing to include.
    #[serde(default)]
    #[allow(dead_code)]
    include_aliases: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetConfigParams {
    name: String,
    // Batches are never produced, so the flag changes nothing.
    #[serde(default)]
    #[allow(dead_code)]
    with_batches: Option<bool>,
}

impl Registry {
    /// Registers spdk_get_version, rpc_get_methods, framework_start_init, framework_wait_init,
    /// framework_get_subsystems and framework_get_config on this registry.
    pub fn register_builtin_methods(self: &Arc<Self>, version: &VersionInfo) {
        let version = version.to_json();
        self.register_raw(
            "spdk_get_version",
            StateMask::BOTH,
            Arc::new(move |params, r| match params {
                Some(_) => r.err(no_params("spdk_get_version method requires no parameters")),
                None => r.ok(version.clone()),
            }),
        );

        let reg = Arc::downgrade(self);
        self.register(
            "rpc_get_methods",
            StateMask::BOTH,
            move |p: GetMethodsParams, r| {
                with(&reg, r, |reg, r| r.ok(json!(reg.methods(p.current))))
            },
        );

        let reg = Arc::downgrade(self);
        self.register_raw(
            "framework_start_init",
            StateMask::STARTUP,
            Arc::new(move |params, r| match params {
                Some(_) => r.err(no_params("framework_start_init requires no parameters")),
                None => with(&reg, r, start_init),
            }),
        );

        let reg = Arc::downgrade(self);
        self.register_raw(
            "framework_wait_init",
            StateMask::BOTH,
            Arc::new(move |_params, r| {
                with(&reg, r, |reg, r| reg.on_runtime(move || r.ok(json!(true))))
            }),
        );

        let reg = Arc::downgrade(self);
        self.register_raw(
            "framework_get_subsystems",
            StateMask::RUNTIME,
            Arc::new(move |params, r| match params {
                Some(_) => r.err(no_params(
                    "'framework_get_subsystems' requires no arguments",
                )),
                None => with(&reg, r, |reg, r| {
                    let list: Vec<Value> = reg
                        .subsystems()
                        .into_iter()
                        .map(|s| json!({ "subsystem": s.name, "depends_on": s.depends_on }))
                        .collect();
                    r.ok(Value::Array(list))
                }),
            }),
        );

        let reg = Arc::downgrade(self);
        self.register(
            "framework_get_config",
            StateMask::RUNTIME,
            move |p: GetConfigParams, r| {
                with(&reg, r, |reg, r| match reg.subsystem_config(&p.name) {
                    Some(config) => r.ok(Value::Array(config)),
                    // SPDK answers an unknown name with -32602 and this text.
                    None => r.err(RpcError::InvalidParams(format!(
                        "Subsystem '{}' not found",
                        p.name
                    ))),
                })
            },
        );
    }

    /// Sets what `framework_start_init` runs; the hook answers `true` once initialised.
    pub fn set_start_init_hook(&self, f: impl Fn(Responder) + Send + Sync + 'static) {
        lock(&self.init).hook = Some(Arc::new(f));
    }
}

/// Runs the hook; its success switches the state to RUNTIME before the caller is answered.
fn start_init(reg: &Arc<Registry>, r: Responder) {
    let hook = {
        let mut init = lock(&reg.init);
        if init.starting {
            return r.err(RpcError::errno_msg(
                libc::EBUSY,
                "framework initialization already in progress",
            ));
        }
        init.starting = true;
        init.hook.clone()
    };
    let weak = Arc::downgrade(reg);
    let done = Responder::new(move |result| {
        if let Some(reg) = weak.upgrade() {
            lock(&reg.init).starting = false;
            if result.is_ok() {
                reg.set_state(AppState::Runtime);
            }
        }
        r.result(result);
    });
    match hook {
        Some(hook) => hook(done),
        None => done.ok(json!(true)),
    }
}

/// Builtins hold the registry weakly (it owns them); a gone registry answers an error.
fn with(reg: &Weak<Registry>, r: Responder, f: impl FnOnce(&Arc<Registry>, Responder)) {
    match reg.upgrade() {
        Some(reg) => f(&reg, r),
        None => r.err(RpcError::internal("registry is gone")),
    }
}

fn no_params(msg: &str) -> RpcError {
    RpcError::InvalidParams(msg.to_owned())
}

/// Registers the built-in methods on the global registry.
pub fn register_builtin_methods(version: &VersionInfo) {
    Registry::global().register_builtin_methods(version);
}

/// Sets the global registry's `framework_start_init` hook.
pub fn set_start_init_hook(f: impl Fn(Responder) + Send + Sync + 'static) {
    Registry::global().set_start_init_hook(f);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{ALREADY_INITIALIZED_MSG, NOT_INITIALIZED_MSG};
    use crate::subsystem::Subsystem;
    use std::sync::{Mutex, mpsc};

    fn call(reg: &Registry, method: &str, params: Option<Value>) -> Result<Value, RpcError> {
        let (tx, rx) = mpsc::channel();
        reg.call(
            method,
            params,
            Responder::new(move |r| tx.send(r).unwrap_or(())),
        );
        rx.try_recv()
            .unwrap_or(Err(RpcError::internal("no answer yet")))
    }

    fn version() -> VersionInfo {
        VersionInfo::from_cargo("0.1.0", "d519b163cb")
    }

    #[test]
    fn version_shape_matches_golden() {
        let reg = Registry::new();
        reg.register_builtin_methods(&version());
        let v = call(&reg, "spdk_get_version", None).unwrap_or_default();
        assert_eq!(
            v.to_string(),
            r#"{"version":"pcache v0.1.0 git sha1 d519b163cb","fields":{"major":0,"minor":1,"patch":0,"suffix":"","commit":"d519b163cb"}}"#
        );
        assert_eq!(
            call(&reg, "spdk_get_version", Some(json!({}))).map_err(|e| e.code()),
            Err(-32602)
        );
        let v = VersionInfo::from_cargo("1.2.3-pre", "");
        assert_eq!(v.version_string(), "pcache v1.2.3-pre");
        assert!(v.to_json()["fields"].get("commit").is_none());
        assert_eq!(VersionInfo::from_cargo("x", "").major, 0);
    }

    #[test]
    fn methods_listing_follows_state() {
        let reg = Registry::new();
        reg.register_builtin_methods(&version());
        let all = call(
            &reg,
            "rpc_get_methods",
            Some(json!({"include_aliases": false})),
        );
        assert_eq!(
            all,
            Ok(json!([
                "spdk_get_version",
                "rpc_get_methods",
                "framework_start_init",
                "framework_wait_init",
                "framework_get_subsystems",
                "framework_get_config"
            ]))
        );
        let cur = call(&reg, "rpc_get_methods", Some(json!({"current": true})));
        assert_eq!(
            cur,
            Ok(json!([
                "spdk_get_version",
                "rpc_get_methods",
                "framework_start_init",
                "framework_wait_init"
            ]))
        );
        let e = call(&reg, "rpc_get_methods", Some(json!({"current": 1}))).unwrap_err();
        assert!(e.message().starts_with("current: invalid type"), "{e}");
        let e = call(&reg, "framework_get_subsystems", None).unwrap_err();
        assert_eq!(e, RpcError::InvalidState(NOT_INITIALIZED_MSG.into()));

        assert_eq!(call(&reg, "framework_start_init", None), Ok(json!(true)));
        assert_eq!(reg.state(), AppState::Runtime);
        let cur = call(&reg, "rpc_get_methods", Some(json!({"current": true})));
        let cur = cur.unwrap_or_default();
        assert!(!cur.to_string().contains("framework_start_init"));
        let e = call(&reg, "framework_start_init", None).unwrap_err();
        assert_eq!(e, RpcError::InvalidState(ALREADY_INITIALIZED_MSG.into()));
    }

    #[test]
    fn start_init_hook_and_wait_init() {
        let reg = Registry::new();
        reg.register_builtin_methods(&version());
        let (hook_tx, hook_rx) = mpsc::channel::<Responder>();
        let hook_tx = Mutex::new(hook_tx);
        reg.set_start_init_hook(move |r| lock(&hook_tx).send(r).unwrap_or(()));

        let (tx, rx) = mpsc::channel();
        let tx2 = tx.clone();
        reg.call(
            "framework_wait_init",
            None,
            Responder::new(move |r| tx.send(("wait", r)).unwrap_or(())),
        );
        reg.call(
            "framework_start_init",
            None,
            Responder::new(move |r| tx2.send(("start", r)).unwrap_or(())),
        );
        assert!(rx.try_recv().is_err());
        // A second start while the first runs is refused.
        let e = call(&reg, "framework_start_init", None).unwrap_err();
        assert_eq!(e.code(), -libc::EBUSY);

        let init = hook_rx.try_recv();
        assert!(init.is_ok());
        assert_eq!(reg.state(), AppState::Startup);
        if let Ok(init) = init {
            std::thread::spawn(move || init.ok(json!(true)))
                .join()
                .unwrap_or(());
        }
        assert_eq!(rx.try_recv().ok(), Some(("wait", Ok(json!(true)))));
        assert_eq!(rx.try_recv().ok(), Some(("start", Ok(json!(true)))));
        assert_eq!(reg.state(), AppState::Runtime);
        assert_eq!(call(&reg, "framework_wait_init", None), Ok(json!(true)));
    }

    #[test]
    fn failed_init_stays_in_startup() {
        let reg = Registry::new();
        reg.register_builtin_methods(&version());
        reg.set_start_init_hook(|r| r.err(RpcError::internal("framework_initialization failed")));
        let e = call(&reg, "framework_start_init", None).unwrap_err();
        assert_eq!(e.code(), -32603);
        assert_eq!(reg.state(), AppState::Startup);
        // Not stuck in "starting".
        assert_eq!(
            call(&reg, "framework_start_init", None).unwrap_err().code(),
            -32603
        );
    }

    #[test]
    fn subsystems_and_config() {
        let reg = Registry::new();
        reg.register_builtin_methods(&version());
        reg.register_subsystem(Subsystem::new("bdev", &["accel"], || {
            vec![json!({"method": "bdev_set_options", "params": {"bdev_io_pool_size": 65535}})]
        }));
        reg.register_subsystem(Subsystem::new("accel", &[], Vec::new));
        reg.set_state(AppState::Runtime);
        assert_eq!(
            call(&reg, "framework_get_subsystems", None),
            Ok(json!([
                {"subsystem": "accel", "depends_on": []},
                {"subsystem": "bdev", "depends_on": ["accel"]}
            ]))
        );
        let p = json!({"name": "bdev", "with_batches": false});
        let cfg = call(&reg, "framework_get_config", Some(p)).unwrap_or_default();
        assert_eq!(cfg[0]["method"], "bdev_set_options");
        let e = call(&reg, "framework_get_config", Some(json!({"name": "nope"}))).unwrap_err();
        assert_eq!(
            e,
            RpcError::InvalidParams("Subsystem 'nope' not found".into())
        );
        let e = call(&reg, "framework_get_config", None).unwrap_err();
        assert_eq!(e, RpcError::InvalidParams("missing field `name`".into()));
    }
}
