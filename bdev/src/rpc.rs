//! The bdev layer's own RPC methods and the "bdev" subsystem's save_config.

use crate::{Bdev, BdevError, BdevOptions, IoStat};
use rpc::{Responder, RpcError, StateMask};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

impl From<BdevError> for RpcError {
    fn from(e: BdevError) -> Self {
        rpc::RpcError::errno(e.errno())
    }
}

/// For modules whose failures are about the request itself (a bad file, a size mismatch): the
/// errno with a message saying what was wrong; existence errors keep SPDK's strerror text.
pub fn detailed_error(e: &BdevError) -> RpcError {
    tracing::error!("{e}");
    match e {
        BdevError::Exists(_) | BdevError::NoSuchDevice(_) => RpcError::errno(e.errno()),
        _ => RpcError::errno_msg(e.errno(), e.to_string()),
    }
}

/// The SPDK-shaped error for a failed create/delete: the errno with its strerror text.
pub fn answer<T: Into<Value>>(r: Responder, result: Result<T, BdevError>) {
    match result {
        Ok(v) => r.ok(v.into()),
        Err(e) => {
            tracing::error!("{e}");
            r.err(e.into())
        }
    }
}

/// How a module's create answers a failure.
#[derive(Clone, Copy)]
pub enum CreateErrors {
    /// The errno with its strerror text (SPDK's answer for most modules).
    Strerror,
    /// The errno with what was wrong with the request (`detailed_error`).
    Detailed,
}

/// Registers a base module's `create` method: decode, create, answer the new bdev's name.
pub fn register_create<P: DeserializeOwned + 'static>(
    method: &str,
    create: fn(P) -> Result<Bdev, BdevError>,
    errors: CreateErrors,
) {
    rpc::register(
        method,
        StateMask::RUNTIME,
        move |p: P, r: Responder| match (create(p), errors) {
            (Ok(b), _) => r.ok(json!(b.name())),
            (Err(e), CreateErrors::Strerror) => answer::<Value>(r, Err(e)),
            (Err(e), CreateErrors::Detailed) => r.err(detailed_error(&e)),
        },
    );
}

/// The parameters of every module's `delete` method.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteParams {
    pub name: String,
}

pub type DeleteDone = Box<dyn FnOnce(Result<(), BdevError>) + Send>;

/// Registers a module's `delete` method: answers true once the bdev is unregistered.
pub fn register_delete(method: &str, delete: fn(&str, DeleteDone)) {
    rpc::register(
        method,
        StateMask::RUNTIME,
        move |p: DeleteParams, r: Responder| {
            delete(&p.name, Box::new(move |res| answer(r, res.map(|()| true))))
        },
    );
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetBdevsParams {
    name: Option<String>,
    /// Milliseconds to wait for `name` to appear. SPDK's client may send a float here.
    #[serde(default)]
    timeout: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetIostatParams {
    /// SPDK's deprecated single-bdev form of `names`.
    name: Option<String>,
    names: Option<Vec<String>>,
    /// Accepted for SPDK's client; per-channel figures are not kept, so the answer always
    /// carries per-bdev totals.
    #[serde(default)]
    per_channel: bool,
    /// Accepted for SPDK's client; statistics are never reset by reading them.
    #[serde(default)]
    reset_mode: Option<ResetMode>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ResetMode {
    All,
    Maxmin,
    Error,
    None,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoParams {}

fn get_bdevs(p: GetBdevsParams, r: Responder) {
    let Some(name) = p.name else {
        r.ok(Value::Array(
            Bdev::all().iter().map(Bdev::info_json).collect(),
        ));
        return;
    };
    if let Some(b) = Bdev::lookup(&name) {
        r.ok(json!([b.info_json()]));
        return;
    }
    let timeout_ms = p.timeout.unwrap_or(0.0);
    if timeout_ms.is_nan() || timeout_ms <= 0.0 {
        r.err(RpcError::errno(libc::ENODEV));
        return;
    }
    // Wait for the bdev to appear, checking every millisecond until the timeout.
    let deadline =
        std::time::Instant::now() + std::time::Duration::from_micros((timeout_ms * 1000.0) as u64);
    let r = Mutex::new(Some(r));
    let _ = poller::Poller::register("bdev_get_bdevs_wait", 1000, move || {
        let found = Bdev::lookup(&name);
        if found.is_none() && std::time::Instant::now() < deadline {
            return poller::PollStatus::Idle;
        }
        if let Some(me) = poller::Poller::current() {
            me.unregister();
        }
        if let Some(r) = r.lock().ok().and_then(|mut r| r.take()) {
            match found {
                Some(b) => r.ok(json!([b.info_json()])),
                None => r.err(RpcError::errno(libc::ENODEV)),
            }
        }
        poller::PollStatus::Busy
    });
}

fn get_iostat(p: GetIostatParams, r: Responder) {
    let names = match (p.name, p.names) {
        // As SPDK: both forms at once is -EINVAL.
        (Some(_), Some(_)) => return r.err(RpcError::errno(libc::EINVAL)),
        (Some(n), None) => Some(vec![n]),
        (None, names) => names,
    };
    if p.per_channel && names.as_ref().is_none_or(|n| n.len() != 1) {
        return r.err(RpcError::errno(libc::EINVAL));
    }
    if p.per_channel {
        tracing::warn!("bdev_get_iostat: per-channel statistics are not kept; answering totals");
    }
    if p.reset_mode.is_some_and(|m| m != ResetMode::None) {
        tracing::warn!("bdev_get_iostat: reset_mode is not supported; statistics are kept");
    }
    let bdevs = match names {
        Some(names) => {
            let mut found = Vec::with_capacity(names.len());
            for n in &names {
                match Bdev::lookup(n) {
                    Some(b) => found.push(b),
                    None => return r.err(RpcError::errno(libc::ENODEV)),
                }
            }
            found
        }
        None => Bdev::all(),
    };
    let out: Arc<Mutex<Vec<Option<Value>>>> = Arc::new(Mutex::new(vec![None; bdevs.len()]));
    let r = Arc::new(Mutex::new(Some(r)));
    let remaining = Arc::new(std::sync::atomic::AtomicUsize::new(bdevs.len()));
    let finish = move |out: &Mutex<Vec<Option<Value>>>, r: &Mutex<Option<Responder>>| {
        let list: Vec<Value> = out
            .lock()
            .map(|o| o.iter().flatten().cloned().collect())
            .unwrap_or_default();
        if let Some(r) = r.lock().ok().and_then(|mut r| r.take()) {
            r.ok(json!({
                "tick_rate": poller::time::ticks_hz(),
                "ticks": poller::time::ticks(),
                "bdevs": list,
            }));
        }
    };
    if bdevs.is_empty() {
        finish(&out, &r);
        return;
    }
    for (i, b) in bdevs.into_iter().enumerate() {
        let (out, r, remaining) = (out.clone(), r.clone(), remaining.clone());
        let name = b.name().to_string();
        b.get_iostat(move |s: IoStat| {
            if let Ok(mut o) = out.lock() {
                o[i] = Some(s.to_json(&name));
            }
            if remaining.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
                finish(&out, &r);
            }
        });
    }
}

/// The bdev subsystem's configuration: layer options, each module's own entries, then every bdev
/// in registration order (a stacked bdev always after its base), then bdev_wait_for_examine.
pub fn write_config() -> Vec<Value> {
    let mut out = vec![json!({"method": "bdev_set_options", "params": crate::options()})];
    for m in crate::modules() {
        out.extend(m.config_json());
    }
    out.extend(
        Bdev::all()
            .iter()
            .filter_map(|b| b.ops().write_config_json()),
    );
    out.push(json!({"method": "bdev_wait_for_examine"}));
    out
}

/// Registers the layer's methods and the "bdev" subsystem.
pub fn register_layer_rpcs() {
    rpc::register("bdev_get_bdevs", StateMask::RUNTIME, get_bdevs);
    rpc::register("bdev_get_iostat", StateMask::RUNTIME, get_iostat);
    rpc::register(
        "bdev_wait_for_examine",
        StateMask::RUNTIME,
        |_: NoParams, r: Responder| r.ok(json!(true)),
    );
    rpc::register(
        "bdev_set_options",
        StateMask::STARTUP,
        |o: BdevOptions, r: Responder| answer(r, crate::set_options(o).map(|_| true)),
    );
    rpc::register_subsystem(rpc::Subsystem::new("bdev", &[], write_config));
}
