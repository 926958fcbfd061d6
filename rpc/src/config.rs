//! Loading SPDK's JSON config (`{"subsystems":[{"subsystem":..,"config":[{"method":..,
//! "params":{..}}]}]}`) the way spdk_tgt does at start: every entry allowed in STARTUP in file
//! order, then `framework_start_init`, then every remaining entry in file order.

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::error::RpcError;
use crate::registry::{AppState, Registry, Responder};

/// One `{"method":..,"params":..}` of a subsystem's config. Entries of a nested batch array
/// (SPDK's `--with-batches` output) are flattened and share their array's `index`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigEntry {
    pub subsystem: String,
    /// Position in the subsystem's `config` array.
    pub index: usize,
    pub method: String,
    pub params: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid JSON config: {0}")]
    Json(String),
    /// A structural problem, e.g. `subsystems[0].config[2]: missing "method"`.
    #[error("{0}")]
    Structure(String),
    #[error("{subsystem} config entry {index} ({method}): {} ({})", error.message(), error.code())]
    Entry {
        subsystem: String,
        index: usize,
        method: String,
        error: RpcError,
    },
    #[error("framework_start_init: {} ({})", .0.message(), .0.code())]
    StartInit(RpcError),
    #[error("config loading was abandoned before it finished")]
    Abandoned,
}

/// Parses and checks the structure of a config; methods and params are checked when applied.
pub fn parse_config(text: &str) -> Result<Vec<ConfigEntry>, ConfigError> {
    let top: Value = serde_json::from_str(text).map_err(|e| ConfigError::Json(e.to_string()))?;
    let Value::Object(mut top) = top else {
        return Err(bad("top level: expected an object"));
    };
    let subsystems = match top.remove("subsystems") {
        None => return Err(bad("missing \"subsystems\"")),
        Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(bad("\"subsystems\" must be an array")),
    };
    let mut entries = Vec::new();
    for (i, s) in subsystems.into_iter().enumerate() {
        let at = format!("subsystems[{i}]");
        let mut s = object(s, &at)?;
        let name = match s.remove("subsystem") {
            Some(Value::String(n)) => n,
            Some(_) => return Err(bad(format!("{at}: \"subsystem\" must be a string"))),
            None => return Err(bad(format!("{at}: missing \"subsystem\""))),
        };
        let config = match s.remove("config") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(c)) => c,
            Some(_) => return Err(bad(format!("{at}: \"config\" must be an array or null"))),
        };
        no_more_keys(&s, &at)?;
        for (j, e) in config.into_iter().enumerate() {
            let at = format!("{at}.config[{j}]");
            match e {
                Value::Array(batch) => {
                    for (k, e) in batch.into_iter().enumerate() {
                        entries.push(parse_entry(&name, j, e, &format!("{at}[{k}]"))?);
                    }
                }
                e => entries.push(parse_entry(&name, j, e, &at)?),
            }
        }
    }
    Ok(entries)
}

fn parse_entry(
    subsystem: &str,
    index: usize,
    e: Value,
    at: &str,
) -> Result<ConfigEntry, ConfigError> {
    let mut e = object(e, at)?;
    let method = match e.remove("method") {
        Some(Value::String(m)) => m,
        Some(_) => return Err(bad(format!("{at}: \"method\" must be a string"))),
        None => return Err(bad(format!("{at}: missing \"method\""))),
    };
    let params = match e.remove("params") {
        None | Some(Value::Null) => None,
        Some(p @ (Value::Object(_) | Value::Array(_))) => Some(p),
        Some(_) => return Err(bad(format!("{at}: \"params\" must be an object or array"))),
    };
    no_more_keys(&e, at)?;
    Ok(ConfigEntry {
        subsystem: subsystem.to_owned(),
        index,
        method,
        params,
    })
}

fn object(v: Value, at: &str) -> Result<Map<String, Value>, ConfigError> {
    match v {
        Value::Object(o) => Ok(o),
        _ => Err(bad(format!("{at}: expected an object"))),
    }
}

fn no_more_keys(o: &Map<String, Value>, at: &str) -> Result<(), ConfigError> {
    match o.keys().next() {
        Some(k) => Err(bad(format!("{at}: unknown key \"{k}\""))),
        None => Ok(()),
    }
}

fn bad(msg: impl Into<String>) -> ConfigError {
    ConfigError::Structure(msg.into())
}

/// Runs a closure on the app thread later; it must queue, not run the closure inline.
pub type Spawn = Arc<dyn Fn(Box<dyn FnOnce() + Send>) + Send + Sync>;

type Done = Box<dyn FnOnce(Result<(), ConfigError>) + Send>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Startup,
    StartInit,
    Runtime,
}

/// Applies config entries through the registry, one at a time. Each answer continues the
/// loading through `spawn`, so handlers may answer late and from any thread, and the stack
/// never grows with the number of entries.
pub struct ConfigLoader {
    registry: Arc<Registry>,
    entries: Vec<ConfigEntry>,
    ran: Vec<bool>,
    pos: usize,
    phase: Phase,
    spawn: Spawn,
    done: Option<Done>,
}

impl ConfigLoader {
    /// Loads into the global registry; `done` is called once, on the app thread.
    pub fn run(
        entries: Vec<ConfigEntry>,
        spawn: Spawn,
        done: impl FnOnce(Result<(), ConfigError>) + Send + 'static,
    ) {
        Self::run_with(Registry::global().clone(), entries, spawn, done);
    }

    /// As [`ConfigLoader::run`], for a given registry. If it is already in RUNTIME, the
    /// entries simply run in file order.
    pub fn run_with(
        registry: Arc<Registry>,
        entries: Vec<ConfigEntry>,
        spawn: Spawn,
        done: impl FnOnce(Result<(), ConfigError>) + Send + 'static,
    ) {
        let phase = match registry.state() {
            AppState::Startup => Phase::Startup,
            AppState::Runtime => Phase::Runtime,
        };
        let loader = Box::new(ConfigLoader {
            registry,
            ran: vec![false; entries.len()],
            entries,
            pos: 0,
            phase,
            spawn: spawn.clone(),
            done: Some(Box::new(done)),
        });
        spawn(Box::new(move || loader.step()));
    }

    fn step(mut self: Box<Self>) {
        loop {
            match self.phase {
                Phase::Startup => {
                    while let Some(e) = self.entries.get(self.pos) {
                        match self.registry.state_mask(&e.method) {
                            None => {
                                let i = self.pos;
                                return self.fail_entry(i, RpcError::MethodNotFound);
                            }
                            Some(m) if m.allows(AppState::Startup) => break,
                            Some(_) => self.pos += 1,
                        }
                    }
                    if self.pos == self.entries.len() {
                        self.phase = Phase::StartInit;
                        continue;
                    }
                    return self.call_entry();
                }
                Phase::StartInit => return self.start_init(),
                Phase::Runtime => {
                    while self.ran.get(self.pos) == Some(&true) {
                        self.pos += 1;
                    }
                    if self.pos == self.entries.len() {
                        return self.finish(Ok(()));
                    }
                    return self.call_entry();
                }
            }
        }
    }

    fn call_entry(mut self: Box<Self>) {
        let i = self.pos;
        self.pos += 1;
        self.ran[i] = true;
        let (registry, spawn) = (self.registry.clone(), self.spawn.clone());
        let method = self.entries[i].method.clone();
        let params = self.entries[i].params.take();
        tracing::debug!(subsystem = %self.entries[i].subsystem, method, "applying config entry");
        let responder = Responder::new(move |r| match r {
            Ok(_) => spawn(Box::new(move || self.step())),
            Err(e) => spawn(Box::new(move || self.fail_entry(i, e))),
        });
        registry.call(&method, params, responder);
    }

    fn start_init(mut self: Box<Self>) {
        self.phase = Phase::Runtime;
        self.pos = 0;
        let (registry, spawn) = (self.registry.clone(), self.spawn.clone());
        let responder = Responder::new(move |r| match r {
            Ok(_) => spawn(Box::new(move || self.step())),
            Err(e) => spawn(Box::new(move || {
                self.finish(Err(ConfigError::StartInit(e)))
            })),
        });
        registry.call("framework_start_init", None, responder);
    }

    fn fail_entry(&mut self, i: usize, error: RpcError) {
        let e = &self.entries[i];
        let err = ConfigError::Entry {
            subsystem: e.subsystem.clone(),
            index: e.index,
            method: e.method.clone(),
            error,
        };
        self.finish(Err(err));
    }

    fn finish(&mut self, r: Result<(), ConfigError>) {
        if let Some(done) = self.done.take() {
            done(r);
        }
    }
}

impl Drop for ConfigLoader {
    // Dropped unfinished (e.g. `spawn` discarded the continuation): still report.
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            done(Err(ConfigError::Abandoned));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::VersionInfo;
    use crate::registry::StateMask;
    use serde_json::json;
    use std::sync::{Mutex, mpsc};

    #[test]
    fn structure_errors_name_the_place() {
        let cases = [
            ("[]", "top level: expected an object"),
            ("{}", "missing \"subsystems\""),
            (r#"{"subsystems":[1]}"#, "subsystems[0]: expected an object"),
            (
                r#"{"subsystems":[{"config":[]}]}"#,
                "subsystems[0]: missing \"subsystem\"",
            ),
            (
                r#"{"subsystems":[{"subsystem":"bdev","config":[{"method":"a"},{"method":"b"},{"params":{}}]}]}"#,
                "subsystems[0].config[2]: missing \"method\"",
            ),
            (
                r#"{"subsystems":[{"subsystem":"bdev","config":[{"method":"a","params":3}]}]}"#,
                "subsystems[0].config[0]: \"params\" must be an object or array",
            ),
            (
                r#"{"subsystems":[{"subsystem":"bdev","config":[{"method":"a","x":1}]}]}"#,
                "subsystems[0].config[0]: unknown key \"x\"",
            ),
            (
                r#"{"subsystems":[{"subsystem":"b","config":{}}]}"#,
                "subsystems[0]: \"config\" must be an array or null",
            ),
        ];
        for (text, msg) in cases {
            assert_eq!(
                parse_config(text),
                Err(ConfigError::Structure(msg.into())),
                "{text}"
            );
        }
        assert!(matches!(parse_config("{"), Err(ConfigError::Json(_))));
    }

    #[test]
    fn parses_entries_nulls_and_batches() {
        let text = r#"{"subsystems":[
            {"subsystem":"iobuf","config":null},
            {"subsystem":"keyring"},
            {"subsystem":"bdev","config":[
                {"method":"bdev_set_options","params":{"bdev_io_pool_size":65535}},
                [{"method":"x"},{"method":"y","params":null}],
                {"method":"bdev_wait_for_examine"}]}]}"#;
        let got: Vec<_> = parse_config(text)
            .unwrap_or_default()
            .into_iter()
            .map(|e| (e.subsystem, e.index, e.method, e.params))
            .collect();
        let b = |i, m: &str, p| ("bdev".to_string(), i, m.to_string(), p);
        assert_eq!(
            got,
            [
                b(
                    0,
                    "bdev_set_options",
                    Some(json!({"bdev_io_pool_size": 65535}))
                ),
                b(1, "x", None),
                b(1, "y", None),
                b(2, "bdev_wait_for_examine", None),
            ]
        );
        assert_eq!(parse_config(r#"{"subsystems":null}"#), Ok(vec![]));
    }

    /// A registry with fake methods that log their calls; "slow" answers from another thread.
    fn fake_registry(log: Arc<Mutex<Vec<String>>>) -> Arc<Registry> {
        let reg = Registry::new();
        reg.register_builtin_methods(&VersionInfo::default());
        for (name, states) in [
            ("set_opts", StateMask::STARTUP),
            ("both", StateMask::BOTH),
            ("create", StateMask::RUNTIME),
            ("slow", StateMask::RUNTIME),
        ] {
            let log = log.clone();
            reg.register_raw(
                name,
                states,
                Arc::new(move |params: Option<Value>, r: Responder| {
                    crate::registry::lock(&log)
                        .push(format!("{name} {}", params.unwrap_or_default()));
                    if name == "slow" {
                        std::thread::spawn(move || r.ok(json!(true)));
                    } else {
                        r.ok(json!(true));
                    }
                }),
            );
        }
        let log2 = log.clone();
        reg.register("fail", StateMask::RUNTIME, move |_: Value, r: Responder| {
            crate::registry::lock(&log2).push("fail".into());
            r.err(RpcError::errno(libc::EEXIST))
        });
        let log3 = log;
        reg.set_start_init_hook(move |r| {
            crate::registry::lock(&log3).push("framework_start_init".into());
            r.ok(json!(true))
        });
        reg
    }

    /// Runs the loader with a queue as the app thread and returns its result.
    fn load(reg: &Arc<Registry>, text: &str) -> Result<(), ConfigError> {
        let entries = parse_config(text)?;
        let (tx, rx) = mpsc::channel::<Box<dyn FnOnce() + Send>>();
        let tx = Mutex::new(tx);
        let spawn: Spawn = Arc::new(move |f| crate::registry::lock(&tx).send(f).unwrap_or(()));
        let result = Arc::new(Mutex::new(None));
        let out = result.clone();
        ConfigLoader::run_with(reg.clone(), entries, spawn, move |r| {
            *crate::registry::lock(&out) = Some(r);
        });
        while crate::registry::lock(&result).is_none() {
            match rx.recv_timeout(std::time::Duration::from_secs(10)) {
                Ok(f) => f(),
                Err(_) => return Err(ConfigError::Abandoned),
            }
        }
        crate::registry::lock(&result)
            .take()
            .unwrap_or(Err(ConfigError::Abandoned))
    }

    #[test]
    fn startup_entries_run_first_then_init_then_the_rest() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let reg = fake_registry(log.clone());
        let text = r#"{"subsystems":[
            {"subsystem":"bdev","config":[
                {"method":"create","params":{"name":"A"}},
                {"method":"slow","params":{"name":"B"}},
                {"method":"both"},
                {"method":"set_opts","params":{"x":1}},
                {"method":"create","params":{"name":"C"}}]},
            {"subsystem":"nvmf","config":null}]}"#;
        assert_eq!(load(&reg, text), Ok(()));
        assert_eq!(
            *crate::registry::lock(&log),
            [
                "both null",
                r#"set_opts {"x":1}"#,
                "framework_start_init",
                r#"create {"name":"A"}"#,
                r#"slow {"name":"B"}"#,
                r#"create {"name":"C"}"#,
            ]
        );
        assert_eq!(reg.state(), AppState::Runtime);
    }

    #[test]
    fn failing_and_unknown_entries_are_named() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let reg = fake_registry(log.clone());
        let text = r#"{"subsystems":[{"subsystem":"bdev","config":[
            {"method":"create"},{"method":"create"},{"method":"fail"},{"method":"create"}]}]}"#;
        let err = load(&reg, text).unwrap_err();
        assert_eq!(
            err.to_string(),
            "bdev config entry 2 (fail): File exists (-17)"
        );
        // Nothing after the failing entry ran.
        assert_eq!(crate::registry::lock(&log).len(), 4);

        let reg = fake_registry(log);
        let text = r#"{"subsystems":[{"subsystem":"bdev","config":[{"method":"nope"}]}]}"#;
        let err = load(&reg, text).unwrap_err();
        assert_eq!(
            err.to_string(),
            "bdev config entry 0 (nope): Method not found (-32601)"
        );
        assert_eq!(reg.state(), AppState::Startup);
    }

    #[test]
    fn already_running_registry_runs_entries_in_order() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let reg = fake_registry(log.clone());
        reg.set_state(AppState::Runtime);
        let text = r#"{"subsystems":[{"subsystem":"bdev","config":[
            {"method":"create"},{"method":"set_opts"}]}]}"#;
        let err = load(&reg, text).unwrap_err();
        assert!(
            matches!(err, ConfigError::Entry { index: 1, ref error, .. } if error.code() == -1)
        );
    }

    #[test]
    fn abandoned_loader_reports() {
        let reg = Registry::new();
        let (tx, rx) = mpsc::channel();
        let spawn: Spawn = Arc::new(drop);
        ConfigLoader::run_with(reg, Vec::new(), spawn, move |r| tx.send(r).unwrap_or(()));
        assert_eq!(rx.try_recv().ok(), Some(Err(ConfigError::Abandoned)));
    }
}
