//! The module registry: each bdev module registers once, is initialised at start-up, examines new
//! bdevs (a vbdev configured on a base that does not exist yet attaches when the base appears),
//! writes its module-level configuration, and is finalised at shutdown in reverse order.

use crate::bdev::Bdev;
use crate::error::BdevError;
use serde_json::Value;
use std::sync::{Arc, Mutex};

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
