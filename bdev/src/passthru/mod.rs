//! The passthru vbdev: forwards every I/O to the bdev beneath it, unchanged.
//!
//! It does nothing useful on purpose: it is the template for every virtual bdev, walking through the
//! vbdev API in SPDK's order: module registration, configured names for examine, the per-vbdev
//! node, the channel context, the per-I/O context, submit_request by type, io_type_supported,
//! get_io_channel, hot-remove, create/delete, write_config_json; the RPCs are in `rpc.rs`.

pub mod rpc;

use crate::vbdev::{self, VbdevBase, VbdevConfig, VbdevConfigs, VbdevModule};
use crate::{Bdev, BdevChannel, BdevChannelOps, BdevError, BdevIo, BdevOps, IoType};
use rpc::PassthruCreateParams;
use serde_json::{Value, json};
use std::rc::Rc;
use std::sync::Arc;

pub const MODULE: &str = "passthru";

/// SPDK's namespace for passthru UUIDs derived from the base's (BDEV_PASSTHRU_NAMESPACE_UUID).
const UUID_NAMESPACE: ::uuid::Uuid =
    ::uuid::Uuid::from_u128(0x7e25812e_c8c0_4d3f_8599_16d790555b85);

// --- Module registration: the bdev layer calls examine for every new bdev (attaching the
// --- configurations waiting for it), config_json at save_config, fini at shutdown.

/// Registers the module with the bdev layer (once; later calls do nothing).
pub fn register_module() {
    crate::register_module(Arc::new(VbdevModule {
        configs: &CONFIGS,
        attach,
        config_json: write_config_json,
    }));
}

// --- Configured (name, base) pairs: kept even while the base is missing, for examine. ---

impl VbdevConfig for PassthruCreateParams {
    fn vbdev_name(&self) -> String {
        self.name.clone()
    }

    fn base_name(&self) -> &str {
        &self.base_bdev_name
    }
}

static CONFIGS: VbdevConfigs<PassthruCreateParams, PtNode> = VbdevConfigs::new(MODULE);

// --- Per-vbdev node: the claimed base. ---

struct PtNode {
    name: String,
    base: VbdevBase,
}

// --- Channel context: this thread's channel to the base. ---

struct PtChannel {
    base: BdevChannel,
}

// --- Per-I/O context: the parent I/O rides in the child's `IoCtx::Io` until the child completes;
// --- nothing else is needed, so `driver_ctx` stays unused here.

// --- submit_request by type: each parent becomes one child on the base; a child the base cannot
// --- give now is retried when it can, and the child's status completes the parent.

impl BdevChannelOps for PtChannel {
    fn submit_request(&self, io: BdevIo) {
        self.base
            .forward(io, vbdev::complete_parent, vbdev::resubmit::<PtChannel>);
    }
}

// --- io_type_supported, get_io_channel, dump_info_json, destruct. ---

impl BdevOps for PtNode {
    /// Whatever the base supports.
    fn io_type_supported(&self, t: IoType) -> bool {
        self.base.bdev().io_type_supported(t)
    }

    /// Called on each thread that does I/O to us: take that thread's channel to the base.
    fn create_channel(&self) -> Result<Rc<dyn BdevChannelOps>, BdevError> {
        Ok(Rc::new(PtChannel {
            base: self.base.channel()?,
        }))
    }

    fn dump_info_json(&self) -> Value {
        let base = self.base.bdev().name();
        json!({"passthru": {"name": self.name, "base_bdev_name": base}})
    }

    /// Unregistered and no longer open: close the base, which releases the claim.
    fn destruct(&self) {
        self.base.close();
    }
}

// --- Hot-remove: `VbdevBase` unregisters us when the base goes (the configuration stays, for
// --- examine to attach again if the base comes back).

// --- Create / delete. ---

/// Opens and claims the base, then registers the passthru bdev with the base's geometry.
fn attach(c: &PassthruCreateParams) -> Result<Bdev, BdevError> {
    let base = VbdevBase::open(MODULE, &c.name, &c.base_bdev_name)?;
    let mut props = base.props(&c.name, MODULE, "passthru");
    props.uuid = Some(
        c.uuid
            .unwrap_or_else(|| vbdev::derived_uuid(&UUID_NAMESPACE, base.bdev())),
    );
    // On failure the node drops here, closing the base descriptor.
    let name = c.name.clone();
    Bdev::register(props, Arc::new(PtNode { name, base }))
}

/// Creates a passthru bdev; `Ok(None)` when its base does not exist yet (it attaches on arrival).
pub fn create(params: PassthruCreateParams) -> Result<Option<Bdev>, BdevError> {
    register_module();
    if params.name.is_empty() {
        return Err(BdevError::invalid("name must not be empty"));
    }
    CONFIGS.create(params, attach)
}

/// Deletes a passthru bdev (or a configuration still waiting for its base); `done` runs once it
/// is unregistered.
pub fn delete(name: &str, done: impl FnOnce(Result<(), BdevError>) + Send + 'static) {
    CONFIGS.delete(name, done)
}

// --- write_config_json: one bdev_passthru_create per configuration (SPDK writes these per module,
// --- not per bdev), with the UUID in use so a restore keeps it.

fn write_config_json() -> Vec<Value> {
    CONFIGS
        .entries()
        .into_iter()
        .map(|(mut c, _)| {
            if let Some(b) = Bdev::lookup(&c.name).filter(|b| b.module() == MODULE) {
                c.uuid = Some(b.uuid());
            }
            json!({"method": "bdev_passthru_create", "params": c})
        })
        .collect()
}
