//! The passthru vbdev: forwards every I/O to the bdev beneath it, unchanged.
//!
//! It does nothing useful on purpose: it is the template for every virtual bdev, walking through the
//! vbdev API in SPDK's order: module registration, configured names for examine, the per-vbdev
//! node, the channel context, the per-I/O context, submit_request by type, io_type_supported,
//! get_io_channel, hot-remove, create/delete, write_config_json; the RPCs are in `rpc.rs`.

pub mod rpc;

use crate::{
    Bdev, BdevChannel, BdevChannelOps, BdevDesc, BdevError, BdevEvent, BdevIo, BdevModule, BdevOps,
    BdevProps, IoCtx, IoType,
};
use rpc::PassthruCreateParams;
use serde_json::{Value, json};
use std::rc::Rc;
use std::sync::{Arc, Mutex, MutexGuard};

pub const MODULE: &str = "passthru";

/// SPDK's namespace for passthru UUIDs derived from the base's (BDEV_PASSTHRU_NAMESPACE_UUID).
const UUID_NAMESPACE: ::uuid::Uuid =
    ::uuid::Uuid::from_u128(0x7e25812e_c8c0_4d3f_8599_16d790555b85);

// --- Module registration: the bdev layer calls examine for every new bdev, and config_json. ---

struct PassthruModule;

impl BdevModule for PassthruModule {
    fn name(&self) -> &'static str {
        MODULE
    }

    /// A new bdev may be the base a configured passthru was waiting for.
    fn examine(&self, bdev: &Bdev) {
        let waiting: Vec<_> = config()
            .iter()
            .filter(|c| c.base_bdev_name == bdev.name())
            .cloned()
            .collect();
        for c in waiting {
            if let Err(e) = attach(&c) {
                tracing::error!(passthru = c.name, base = bdev.name(), "cannot attach: {e}");
            }
        }
    }

    fn config_json(&self) -> Vec<Value> {
        write_config_json()
    }

    fn fini(&self) {
        config().clear();
    }
}

/// Registers the module with the bdev layer (once; later calls do nothing).
pub fn register_module() {
    crate::register_module(Arc::new(PassthruModule));
}

// --- Configured (name, base) pairs: kept even while the base is missing, for examine. ---

static CONFIG: Mutex<Vec<PassthruCreateParams>> = Mutex::new(Vec::new());

fn config() -> MutexGuard<'static, Vec<PassthruCreateParams>> {
    CONFIG.lock().unwrap_or_else(|p| p.into_inner())
}

// --- Per-vbdev node: the base bdev and our claimed descriptor on it. ---

struct PtNode {
    name: String,
    base: Bdev,
    /// Taken (closed) by destruct.
    base_desc: Mutex<Option<BdevDesc>>,
}

// --- Channel context: this thread's channel to the base. ---

struct PtChannel {
    base: BdevChannel,
}

// --- Per-I/O context: the parent I/O rides in the child's `IoCtx::Io` until the child completes;
// --- nothing else is needed, so `driver_ctx` stays unused here.

// --- submit_request by type: each parent becomes one child on the base. ---

impl BdevChannelOps for PtChannel {
    fn submit_request(&self, io: BdevIo) {
        self.base.forward(io, complete, resubmit);
    }
}

impl PtChannel {}

fn resubmit(ctx: IoCtx) {
    let IoCtx::Io(io) = ctx else { return };
    match io.module_channel::<PtChannel>() {
        Some(ch) => ch.submit_request(io),
        None => io.fail(libc::EIO),
    }
}

/// The child finished: recycle it, then complete the parent with the child's status.
fn complete(child: BdevIo, _ok: bool, ctx: IoCtx) {
    let status = child.status();
    drop(child);
    if let IoCtx::Io(parent) = ctx {
        parent.complete(status);
    }
}

// --- io_type_supported, get_io_channel, dump_info_json, destruct. ---

impl BdevOps for PtNode {
    /// Whatever the base supports.
    fn io_type_supported(&self, t: IoType) -> bool {
        self.base.io_type_supported(t)
    }

    /// Called on each thread that does I/O to us: take that thread's channel to the base.
    fn create_channel(&self) -> Result<Rc<dyn BdevChannelOps>, BdevError> {
        let desc = self.base_desc.lock().unwrap_or_else(|p| p.into_inner());
        let desc = desc
            .as_ref()
            .ok_or_else(|| BdevError::Removing(self.name.clone()))?;
        Ok(Rc::new(PtChannel {
            base: desc.get_io_channel()?,
        }))
    }

    fn dump_info_json(&self) -> Value {
        json!({"passthru": {"name": self.name, "base_bdev_name": self.base.name()}})
    }

    /// Unregistered and no longer open: close the base, which releases the claim.
    fn destruct(&self) {
        let desc = self
            .base_desc
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        drop(desc);
    }
}

// --- Hot-remove: the base is going away, so we go too (the configuration stays, for examine). ---

fn base_event(name: String) -> impl Fn(BdevEvent) + Send + Sync + 'static {
    move |event| match event {
        BdevEvent::Remove => {
            if let Some(b) = Bdev::lookup(&name).filter(|b| b.module() == MODULE) {
                b.unregister(|_| {});
            }
        }
    }
}

// --- Create / delete. ---

/// Opens and claims the base, then registers the passthru bdev with the base's geometry.
fn attach(c: &PassthruCreateParams) -> Result<Bdev, BdevError> {
    let desc = BdevDesc::open(&c.base_bdev_name, true, base_event(c.name.clone()))?;
    desc.claim(MODULE)?;
    let base = desc.bdev().clone();
    let mut props = BdevProps::new(
        &c.name,
        MODULE,
        "passthru",
        base.block_size(),
        base.num_blocks(),
    );
    props.uuid = Some(
        c.uuid
            .unwrap_or_else(|| ::uuid::Uuid::new_v5(&UUID_NAMESPACE, base.uuid().as_bytes())),
    );
    props.write_cache = base.props().write_cache;
    props.optimal_io_boundary = base.props().optimal_io_boundary;
    props.numa_id = base.props().numa_id;
    let node = PtNode {
        name: c.name.clone(),
        base,
        base_desc: Mutex::new(Some(desc)),
    };
    // On failure the node drops here, closing the base descriptor.
    Bdev::register(props, Arc::new(node))
}

/// Creates a passthru bdev; `Ok(None)` when its base does not exist yet (it attaches on arrival).
pub fn create(params: PassthruCreateParams) -> Result<Option<Bdev>, BdevError> {
    register_module();
    if params.name.is_empty() {
        return Err(BdevError::invalid("name must not be empty"));
    }
    let taken = Bdev::lookup(&params.name).is_some();
    {
        let mut cfg = config();
        if taken || cfg.iter().any(|c| c.name == params.name) {
            return Err(BdevError::Exists(params.name));
        }
        cfg.push(params.clone());
    }
    match attach(&params) {
        Ok(b) => Ok(Some(b)),
        Err(BdevError::NoSuchDevice(_) | BdevError::Removing(_)) => {
            tracing::info!(
                passthru = params.name,
                "waiting for base bdev {}",
                params.base_bdev_name
            );
            Ok(None)
        }
        Err(e) => {
            config().retain(|c| c.name != params.name);
            Err(e)
        }
    }
}

/// Deletes a passthru bdev (or a configuration still waiting for its base); `done` runs once it
/// is unregistered.
pub fn delete(name: &str, done: impl FnOnce(Result<(), BdevError>) + Send + 'static) {
    let bdev = Bdev::lookup(name).filter(|b| b.module() == MODULE);
    let key = bdev.as_ref().map_or(name, |b| b.name()).to_string();
    let configured = {
        let mut cfg = config();
        let before = cfg.len();
        cfg.retain(|c| c.name != key);
        cfg.len() != before
    };
    match bdev {
        Some(b) => b.unregister(done),
        None if configured => done(Ok(())),
        None => done(Err(BdevError::NoSuchDevice(name.to_string()))),
    }
}

// --- write_config_json: one bdev_passthru_create per configuration (SPDK writes these per module,
// --- not per bdev), with the UUID in use so a restore keeps it.

fn write_config_json() -> Vec<Value> {
    let cfg = config().clone();
    cfg.into_iter()
        .map(|mut c| {
            if let Some(b) = Bdev::lookup(&c.name).filter(|b| b.module() == MODULE) {
                c.uuid = Some(b.uuid());
            }
            json!({"method": "bdev_passthru_create", "params": c})
        })
        .collect()
}
