//! What a module implements, kept apart from the user API in `bdev.rs` (SPDK's bdev_module.h):
//! the per-bdev operations (`BdevOps`, SPDK's fn_table), the per-thread channel (`BdevChannelOps`),
//! and the module itself (`BdevModule`) with its registry: each module registers once, is
//! initialised at start-up, examines new bdevs (a vbdev configured on a base that does not exist
//! yet attaches when the base appears), writes its module-level configuration, and is finalised at
//! shutdown in reverse order.

use crate::bdev::Bdev;
use crate::error::BdevError;
use crate::io::{BdevIo, IoType};
use serde_json::{Value, json};
use std::any::Any;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

/// Converts an `Rc` of a module channel into `Rc<dyn Any>` so it can be downcast.
pub trait AsAnyRc {
    fn into_any_rc(self: Rc<Self>) -> Rc<dyn Any>;
}

impl<T: 'static> AsAnyRc for T {
    fn into_any_rc(self: Rc<Self>) -> Rc<dyn Any> {
        self
    }
}

/// A module's per-thread channel: where the bdev layer hands it I/O.
pub trait BdevChannelOps: AsAnyRc {
    /// Executes `io` and eventually completes it (`io.complete(..)`), on this thread.
    fn submit_request(&self, io: BdevIo);

    /// What this channel's I/O is waiting for, when the bdev layer finds it has made no progress
    /// for seconds while I/O is outstanding (logged with the bdev's name).
    fn stall_report(&self) -> Option<String> {
        None
    }
}

/// Lets a stacked module recognise a base bdev's ops type (`Bdev::ops_as`).
pub trait AsAny {
    fn as_any(&self) -> &dyn Any;
}

impl<T: 'static> AsAny for T {
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A module's per-bdev operations (SPDK's fn_table).
pub trait BdevOps: AsAny + Send + Sync + 'static {
    fn io_type_supported(&self, io_type: IoType) -> bool;
    /// Builds the calling thread's channel.
    fn create_channel(&self) -> Result<Rc<dyn BdevChannelOps>, BdevError>;
    /// Members of `driver_specific` in `bdev_get_bdevs`, e.g. `{"passthru": {...}}`.
    fn dump_info_json(&self) -> Value {
        json!({})
    }
    /// The RPC call that recreates this bdev, or None if it is not created by an RPC.
    fn write_config_json(&self) -> Option<Value> {
        None
    }
    /// Called once the bdev is unregistered and its last descriptor closed: release base bdevs.
    fn destruct(&self) {}
}

pub trait BdevModule: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn init(&self) -> Result<(), BdevError> {
        Ok(())
    }
    fn fini(&self) {}
    /// A bdev was registered: attach to it if a pending configuration names it.
    fn examine(&self, _bdev: &Bdev) {}
    /// Module-level entries for save_config (options, configurations waiting for their base).
    fn config_json(&self) -> Vec<Value> {
        Vec::new()
    }
}

static MODULES: Mutex<Vec<Arc<dyn BdevModule>>> = Mutex::new(Vec::new());

fn modules_lock() -> std::sync::MutexGuard<'static, Vec<Arc<dyn BdevModule>>> {
    MODULES.lock().unwrap_or_else(|p| p.into_inner())
}

/// Registers a module (once per name; later registrations of the same name are ignored).
pub fn register_module(m: Arc<dyn BdevModule>) {
    let mut mods = modules_lock();
    if !mods.iter().any(|x| x.name() == m.name()) {
        mods.push(m);
    }
}

pub fn modules() -> Vec<Arc<dyn BdevModule>> {
    modules_lock().clone()
}

pub(crate) fn examine(bdev: &Bdev) {
    if !crate::options().bdev_auto_examine {
        return;
    }
    for m in modules() {
        m.examine(bdev);
    }
}
