//! The method registry and the application state (STARTUP / RUNTIME) it checks calls against.
//!
//! Control path only: short locks, never held while a handler runs, so handlers may register
//! methods or change the state themselves.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::{ALREADY_INITIALIZED_MSG, NOT_INITIALIZED_MSG, RpcError};
use crate::methods::InitControl;
use crate::subsystem::Subsystem;

/// The states a method may be called in (SPDK's `SPDK_RPC_STARTUP | SPDK_RPC_RUNTIME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateMask(u8);

impl StateMask {
    pub const STARTUP: StateMask = StateMask(1);
    pub const RUNTIME: StateMask = StateMask(2);
    pub const BOTH: StateMask = StateMask(3);

    pub fn allows(self, state: AppState) -> bool {
        let bit = match state {
            AppState::Startup => Self::STARTUP.0,
            AppState::Runtime => Self::RUNTIME.0,
        };
        self.0 & bit != 0
    }

    pub fn contains(self, other: StateMask) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn bits(self) -> u8 {
        self.0
    }
}

impl std::ops::BitOr for StateMask {
    type Output = StateMask;
    fn bitor(self, rhs: StateMask) -> StateMask {
        StateMask(self.0 | rhs.0)
    }
}

/// Before `framework_start_init` (only startup methods run) and after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppState {
    Startup,
    Runtime,
}

type Answer = Box<dyn FnOnce(Result<Value, RpcError>) + Send>;

/// The one-shot answer to a call. It may be sent to and answered from any thread.
pub struct Responder {
    f: Option<Answer>,
}

impl Responder {
    pub fn new(f: impl FnOnce(Result<Value, RpcError>) + Send + 'static) -> Self {
        Responder {
            f: Some(Box::new(f)),
        }
    }

    /// A responder whose answer nobody waits for.
    pub fn ignore() -> Self {
        Responder::new(|_| {})
    }

    pub fn ok(self, v: Value) {
        self.result(Ok(v));
    }

    pub fn err(self, e: RpcError) {
        self.result(Err(e));
    }

    pub fn result(mut self, r: Result<Value, RpcError>) {
        if let Some(f) = self.f.take() {
            f(r);
        }
    }
}

impl Drop for Responder {
    // A request is always answered, even when a handler forgets it or panics.
    fn drop(&mut self) {
        if let Some(f) = self.f.take() {
            f(Err(RpcError::internal("handler dropped the request")));
        }
    }
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.f.is_some() {
            "Responder(pending)"
        } else {
            "Responder(answered)"
        })
    }
}

pub type Handler = Arc<dyn Fn(Option<Value>, Responder) + Send + Sync>;

/// Parameters of a method that takes none: any member is refused as unknown.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

struct Method {
    name: String,
    states: StateMask,
    handler: Handler,
}

struct StateInner {
    state: AppState,
    on_runtime: Vec<Box<dyn FnOnce() + Send>>,
}

/// Methods, state, subsystems and the init hook. The app uses [`Registry::global`]; tests make
/// their own with [`Registry::new`] so they do not disturb each other.
pub struct Registry {
    methods: RwLock<Vec<Method>>,
    state: Mutex<StateInner>,
    pub(crate) subsystems: RwLock<Vec<Subsystem>>,
    pub(crate) init: Mutex<InitControl>,
}

static GLOBAL: OnceLock<Arc<Registry>> = OnceLock::new();

impl Registry {
    pub fn new() -> Arc<Registry> {
        Arc::new(Registry {
            methods: RwLock::new(Vec::new()),
            state: Mutex::new(StateInner {
                state: AppState::Startup,
                on_runtime: Vec::new(),
            }),
            subsystems: RwLock::new(Vec::new()),
            init: Mutex::new(InitControl::default()),
        })
    }

    /// The process-wide registry behind the free functions of this crate.
    pub fn global() -> &'static Arc<Registry> {
        GLOBAL.get_or_init(Registry::new)
    }

    /// Registers `name`, replacing (in place) an earlier registration of the same name.
    pub fn register_raw(&self, name: &str, states: StateMask, handler: Handler) {
        let mut methods = write(&self.methods);
        match methods.iter_mut().find(|m| m.name == name) {
            Some(m) => {
                m.states = states;
                m.handler = handler;
            }
            None => methods.push(Method {
                name: name.to_owned(),
                states,
                handler,
            }),
        }
    }

    /// Registers a handler taking typed parameters; see [`decode_params`].
    pub fn register<P: DeserializeOwned + 'static>(
        &self,
        name: &str,
        states: StateMask,
        f: impl Fn(P, Responder) + Send + Sync + 'static,
    ) {
        let handler: Handler = Arc::new(move |params, r: Responder| match decode_params(params) {
            Ok(p) => f(p, r),
            Err(e) => r.err(e),
        });
        self.register_raw(name, states, handler);
    }

    pub fn unregister(&self, name: &str) -> bool {
        let mut methods = write(&self.methods);
        let before = methods.len();
        methods.retain(|m| m.name != name);
        methods.len() != before
    }

    pub fn state_mask(&self, name: &str) -> Option<StateMask> {
        read(&self.methods)
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.states)
    }

    /// Checks existence (-32601) and state (-1), then runs the handler on this thread.
    pub fn call(&self, method: &str, params: Option<Value>, responder: Responder) {
        let found = read(&self.methods)
            .iter()
            .find(|m| m.name == method)
            .map(|m| (m.states, m.handler.clone()));
        let Some((states, handler)) = found else {
            return responder.err(RpcError::MethodNotFound);
        };
        let state = self.state();
        if !states.allows(state) {
            let msg = match state {
                AppState::Startup => NOT_INITIALIZED_MSG,
                AppState::Runtime => ALREADY_INITIALIZED_MSG,
            };
            return responder.err(RpcError::InvalidState(msg.to_owned()));
        }
        // `null` params mean no params, as in SPDK.
        let params = params.filter(|p| !p.is_null());
        // A buggy handler must not take the server down; its dropped Responder answers -32603.
        if catch_unwind(AssertUnwindSafe(|| handler(params, responder))).is_err() {
            tracing::error!(method, "RPC handler panicked");
        }
    }

    /// Method names in registration order; `current_only` keeps those callable now.
    pub fn methods(&self, current_only: bool) -> Vec<String> {
        let state = self.state();
        read(&self.methods)
            .iter()
            .filter(|m| !current_only || m.states.allows(state))
            .map(|m| m.name.clone())
            .collect()
    }

    pub fn state(&self) -> AppState {
        lock(&self.state).state
    }

    /// Sets the state; entering RUNTIME runs everything queued by [`Registry::on_runtime`].
    pub fn set_state(&self, state: AppState) {
        let waiters = {
            let mut inner = lock(&self.state);
            inner.state = state;
            match state {
                AppState::Runtime => std::mem::take(&mut inner.on_runtime),
                AppState::Startup => Vec::new(),
            }
        };
        for w in waiters {
            w();
        }
    }

    /// Runs `f` now if the state is RUNTIME, else when it becomes RUNTIME.
    pub fn on_runtime(&self, f: impl FnOnce() + Send + 'static) {
        let mut inner = lock(&self.state);
        if inner.state == AppState::Runtime {
            drop(inner);
            f();
        } else {
            inner.on_runtime.push(Box::new(f));
        }
    }
}

/// Decodes typed parameters: absent or `null` decode from `{}`, a non-object is refused, and
/// decoding errors name the field (`num_blocks: invalid type: ...`, "missing field `name`").
pub fn decode_params<P: DeserializeOwned>(params: Option<Value>) -> Result<P, RpcError> {
    let value = match params {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(v @ Value::Object(_)) => v,
        Some(_) => return Err(RpcError::invalid_params("params must be an object")),
    };
    serde_path_to_error::deserialize(value).map_err(|e| {
        let mut path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // For an unknown field the path ends with that field, which the message already names.
        if inner.starts_with("unknown field") {
            path = path
                .rsplit_once('.')
                .map(|(p, _)| p.to_owned())
                .unwrap_or_default();
        }
        if path.is_empty() || path == "." {
            RpcError::InvalidParams(inner)
        } else {
            RpcError::InvalidParams(format!("{path}: {inner}"))
        }
    })
}

// Poisoning only means another thread panicked mid-update of plain data; keep serving.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

pub fn register_raw(name: &str, states: StateMask, handler: Handler) {
    Registry::global().register_raw(name, states, handler);
}

pub fn register<P: DeserializeOwned + 'static>(
    name: &str,
    states: StateMask,
    f: impl Fn(P, Responder) + Send + Sync + 'static,
) {
    Registry::global().register(name, states, f);
}

pub fn call(method: &str, params: Option<Value>, responder: Responder) {
    Registry::global().call(method, params, responder);
}

pub fn methods(current_only: bool) -> Vec<String> {
    Registry::global().methods(current_only)
}

pub fn state() -> AppState {
    Registry::global().state()
}

pub fn set_state(state: AppState) {
    Registry::global().set_state(state);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;
    use std::sync::mpsc;

    fn call_sync(reg: &Registry, method: &str, params: Option<Value>) -> Result<Value, RpcError> {
        let (tx, rx) = mpsc::channel();
        reg.call(
            method,
            params,
            Responder::new(move |r| tx.send(r).unwrap_or(())),
        );
        rx.try_recv()
            .unwrap_or(Err(RpcError::internal("no answer yet")))
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct P {
        name: String,
        #[serde(default)]
        size: u64,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Nested {
        #[allow(dead_code)]
        inner: P,
    }

    fn registry() -> Arc<Registry> {
        let reg = Registry::new();
        reg.register("echo", StateMask::BOTH, |p: P, r: Responder| {
            r.ok(json!({ "name": p.name, "size": p.size }))
        });
        reg.register("late", StateMask::RUNTIME, |_: NoParams, r: Responder| {
            r.ok(json!(true))
        });
        reg.register("early", StateMask::STARTUP, |_: NoParams, r: Responder| {
            r.ok(json!(true))
        });
        reg
    }

    #[test]
    fn typed_params_and_errors_name_fields() {
        let reg = registry();
        reg.register("nested", StateMask::BOTH, |_: Nested, r: Responder| {
            r.ok(json!(1))
        });
        let ok = call_sync(&reg, "echo", Some(json!({"name": "a", "size": 3})));
        assert_eq!(ok, Ok(json!({"name": "a", "size": 3})));
        let e = call_sync(&reg, "echo", Some(json!({"name": "a", "foo": 1}))).unwrap_err();
        assert_eq!(e.code(), -32602);
        assert!(e.message().starts_with("unknown field `foo`"), "{e}");
        let e = call_sync(
            &reg,
            "nested",
            Some(json!({"inner": {"name": "a", "x": 1}})),
        );
        assert!(
            e.unwrap_err()
                .message()
                .starts_with("inner: unknown field `x`")
        );
        let e = call_sync(&reg, "nested", Some(json!({"inner": {}})));
        assert_eq!(e.unwrap_err().message(), "inner: missing field `name`");
        let e = call_sync(&reg, "echo", None).unwrap_err();
        assert_eq!(e, RpcError::invalid_params("missing field `name`"));
        let e = call_sync(&reg, "echo", Some(json!({"name": "a", "size": "x"}))).unwrap_err();
        assert!(e.message().starts_with("size: invalid type"), "{e}");
        let e = call_sync(&reg, "echo", Some(json!([1]))).unwrap_err();
        assert_eq!(e.code(), -32602);
        // Null params decode like absent ones.
        assert_eq!(
            call_sync(&reg, "late", Some(Value::Null))
                .unwrap_err()
                .code(),
            -1
        );
        assert_eq!(call_sync(&reg, "nope", None), Err(RpcError::MethodNotFound));
    }

    #[test]
    fn state_mask_is_enforced_with_spdk_messages() {
        let reg = registry();
        let e = call_sync(&reg, "late", None).unwrap_err();
        assert_eq!(e, RpcError::InvalidState(NOT_INITIALIZED_MSG.into()));
        assert_eq!(call_sync(&reg, "early", None), Ok(json!(true)));
        assert_eq!(reg.methods(true), ["echo", "early"]);
        reg.set_state(AppState::Runtime);
        let e = call_sync(&reg, "early", None).unwrap_err();
        assert_eq!(e, RpcError::InvalidState(ALREADY_INITIALIZED_MSG.into()));
        assert_eq!(reg.methods(true), ["echo", "late"]);
        assert_eq!(reg.methods(false), ["echo", "late", "early"]);
    }

    #[test]
    fn replace_keeps_position_and_unregister() {
        let reg = registry();
        reg.register_raw("echo", StateMask::STARTUP, Arc::new(|_, r| r.ok(json!(1))));
        assert_eq!(reg.methods(false), ["echo", "late", "early"]);
        assert_eq!(call_sync(&reg, "echo", None), Ok(json!(1)));
        assert_eq!(reg.state_mask("echo"), Some(StateMask::STARTUP));
        assert!(reg.unregister("late"));
        assert!(!reg.unregister("late"));
    }

    #[test]
    fn dropped_or_panicking_handler_still_answers() {
        let reg = Registry::new();
        reg.register_raw("drop", StateMask::BOTH, Arc::new(|_, r| drop(r)));
        reg.register_raw("panic", StateMask::BOTH, Arc::new(|_, _r| panic!("boom")));
        let e = call_sync(&reg, "drop", None).unwrap_err();
        assert_eq!(e, RpcError::internal("handler dropped the request"));
        assert_eq!(call_sync(&reg, "panic", None).unwrap_err().code(), -32603);
    }

    #[test]
    fn late_answer_from_another_thread() {
        let reg = Registry::new();
        reg.register_raw(
            "slow",
            StateMask::BOTH,
            Arc::new(|_, r| {
                std::thread::spawn(move || r.ok(json!("done")));
            }),
        );
        let (tx, rx) = mpsc::channel();
        reg.call(
            "slow",
            None,
            Responder::new(move |r| tx.send(r).unwrap_or(())),
        );
        assert_eq!(rx.recv().ok(), Some(Ok(json!("done"))));
    }

    #[test]
    fn on_runtime_runs_queued_and_immediate() {
        let reg = Registry::new();
        let (tx, rx) = mpsc::channel();
        let tx2 = tx.clone();
        reg.on_runtime(move || tx.send(1).unwrap_or(()));
        assert!(rx.try_recv().is_err());
        reg.set_state(AppState::Runtime);
        assert_eq!(rx.try_recv().ok(), Some(1));
        reg.on_runtime(move || tx2.send(2).unwrap_or(()));
        assert_eq!(rx.try_recv().ok(), Some(2));
    }

    #[test]
    fn mask_ops() {
        assert_eq!(StateMask::STARTUP | StateMask::RUNTIME, StateMask::BOTH);
        assert!(StateMask::BOTH.contains(StateMask::RUNTIME));
        assert!(!StateMask::STARTUP.contains(StateMask::BOTH));
        assert!(StateMask::BOTH.allows(AppState::Startup));
        assert!(!StateMask::RUNTIME.allows(AppState::Startup));
        assert_eq!(StateMask::BOTH.bits(), 3);
    }

    fn _assert_send_sync() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<Registry>();
        send::<Responder>();
        send::<crate::server::RpcServer>();
        send::<crate::config::ConfigLoader>();
    }

    /// Arbitrary JSON, biased towards the keys and types `P` expects.
    pub(crate) fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            // Quarters print and parse back exactly.
            (-1_000_000i32..1_000_000).prop_map(|i| Value::from(f64::from(i) / 4.0)),
            "(name|size|[a-z]{0,4}|.{0,8})".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                prop::collection::vec(("(name|size|inner|[a-z]{0,3})", inner), 0..6)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn typed_decoding_never_panics(v in arb_json(), absent in any::<bool>()) {
            let params = if absent { None } else { Some(v.clone()) };
            match decode_params::<P>(params) {
                Ok(p) => {
                    // Only a well-formed object decodes, and it decodes to what it holds.
                    prop_assert_eq!(&v["name"], &json!(p.name));
                    prop_assert!(v.get("size").is_none_or(|s| s == &json!(p.size)));
                }
                Err(e) => prop_assert_eq!(e.code(), -32602),
            }
            if let Err(e) = decode_params::<Nested>(Some(v)) {
                prop_assert_eq!(e.code(), -32602);
            }
        }
    }
}
