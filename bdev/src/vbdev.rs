//! What every virtual bdev needs besides its I/O: the configurations it was asked for (kept while
//! their base is missing, so examine can attach them when it appears), create and delete by
//! name, its claimed base with the geometry it inherits, the base's hot-remove taking the vbdev
//! with it, and the resubmit and completion steps of a plain forward. passthru shows how the
//! pieces are used; delay, error and the pcache bdev use the same ones.

use crate::module::{BdevChannelOps, BdevModule};
use crate::{Bdev, BdevChannel, BdevDesc, BdevError, BdevEvent, BdevIo, BdevProps, IoCtx};
use poller::IoDevice;
use serde_json::Value;
use std::rc::Rc;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

/// A vbdev module's create parameters, as the configuration list needs them.
pub trait VbdevConfig: Clone + Send + 'static {
    /// The name the vbdev registers under.
    fn vbdev_name(&self) -> String;
    /// The bdev it stacks on.
    fn base_name(&self) -> &str;
}

struct Entry<C, N> {
    config: C,
    /// Set once attached, so RPCs reach the live node.
    node: Weak<N>,
}

/// A module's configured vbdevs, in creation order. `N` is the module's per-vbdev node.
pub struct VbdevConfigs<C, N> {
    module: &'static str,
    entries: Mutex<Vec<Entry<C, N>>>,
}

impl<C: VbdevConfig, N> VbdevConfigs<C, N> {
    pub const fn new(module: &'static str) -> Self {
        VbdevConfigs {
            module,
            entries: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Entry<C, N>>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `config` and attaches it; `Ok(None)` when its base does not exist yet (examine
    /// attaches it on arrival). A name in use by a bdev or a configuration is refused.
    pub fn create(
        &self,
        config: C,
        attach: impl FnOnce(&C) -> Result<Bdev, BdevError>,
    ) -> Result<Option<Bdev>, BdevError> {
        let name = config.vbdev_name();
        let taken = Bdev::lookup(&name).is_some();
        {
            let mut entries = self.lock();
            if taken || entries.iter().any(|e| e.config.vbdev_name() == name) {
                return Err(BdevError::Exists(name));
            }
            entries.push(Entry {
                config: config.clone(),
                node: Weak::new(),
            });
        }
        match attach(&config) {
            Ok(b) => Ok(Some(b)),
            Err(BdevError::NoSuchDevice(_) | BdevError::Removing(_)) => {
                tracing::info!(
                    module = self.module,
                    vbdev = name,
                    "waiting for base bdev {}",
                    config.base_name()
                );
                Ok(None)
            }
            Err(e) => {
                self.forget(&name);
                Err(e)
            }
        }
    }

    /// Attaches every configuration waiting for `bdev` (the module's `examine`).
    pub fn examine(&self, bdev: &Bdev, attach: impl Fn(&C) -> Result<Bdev, BdevError>) {
        let waiting: Vec<C> = self
            .lock()
            .iter()
            .filter(|e| e.config.base_name() == bdev.name())
            .map(|e| e.config.clone())
            .collect();
        for c in waiting {
            if let Err(e) = attach(&c) {
                tracing::error!(
                    module = self.module,
                    vbdev = c.vbdev_name(),
                    base = bdev.name(),
                    "cannot attach: {e}"
                );
            }
        }
    }

    /// Deletes the vbdev `name` (or its configuration still waiting for a base); `done` runs
    /// once it is unregistered.
    pub fn delete(&self, name: &str, done: impl FnOnce(Result<(), BdevError>) + Send + 'static) {
        let bdev = Bdev::lookup(name).filter(|b| b.module() == self.module);
        let key = bdev.as_ref().map_or(name, |b| b.name()).to_string();
        let configured = self.forget(&key);
        match bdev {
            Some(b) => b.unregister(done),
            None if configured => done(Ok(())),
            None => done(Err(BdevError::NoSuchDevice(name.to_string()))),
        }
    }

    /// Drops the configuration of `name`; true if there was one.
    pub fn forget(&self, name: &str) -> bool {
        let mut entries = self.lock();
        let before = entries.len();
        entries.retain(|e| e.config.vbdev_name() != name);
        entries.len() != before
    }

    /// Remembers the node `name` attached with.
    pub fn set_node(&self, name: &str, node: &Arc<N>) {
        if let Some(e) = self
            .lock()
            .iter_mut()
            .find(|e| e.config.vbdev_name() == name)
        {
            e.node = Arc::downgrade(node);
        }
    }

    /// The live node of the registered vbdev `name` (by name, alias or UUID).
    pub fn node(&self, name: &str) -> Result<Arc<N>, BdevError> {
        let missing = || BdevError::NoSuchDevice(name.to_string());
        let bdev = Bdev::lookup(name)
            .filter(|b| b.module() == self.module)
            .ok_or_else(missing)?;
        let node = self
            .lock()
            .iter()
            .find(|e| e.config.vbdev_name() == bdev.name())
            .and_then(|e| e.node.upgrade());
        node.ok_or_else(missing)
    }

    /// Every configuration with its live node, for save_config (taken under the lock, used after).
    pub fn entries(&self) -> Vec<(C, Option<Arc<N>>)> {
        self.lock()
            .iter()
            .map(|e| (e.config.clone(), e.node.upgrade()))
            .collect()
    }

    /// Forgets everything (the module's `fini`).
    pub fn clear(&self) {
        self.lock().clear();
    }
}

/// The `BdevModule` of a vbdev module: examine attaches the configurations waiting for a new
/// bdev, fini forgets them, save_config takes the module's entries.
pub struct VbdevModule<C: 'static, N: 'static> {
    pub configs: &'static VbdevConfigs<C, N>,
    pub attach: fn(&C) -> Result<Bdev, BdevError>,
    pub config_json: fn() -> Vec<Value>,
}

impl<C: VbdevConfig, N: Send + Sync + 'static> BdevModule for VbdevModule<C, N> {
    fn name(&self) -> &'static str {
        self.configs.module
    }

    fn examine(&self, bdev: &Bdev) {
        self.configs.examine(bdev, self.attach);
    }

    fn config_json(&self) -> Vec<Value> {
        (self.config_json)()
    }

    fn fini(&self) {
        self.configs.clear();
    }
}

/// A vbdev's base: open for writing and claimed by the module. Removing the base removes the
/// vbdev; `close` (from the vbdev's `destruct`) releases it.
pub struct VbdevBase {
    bdev: Bdev,
    desc: Mutex<Option<BdevDesc>>,
}

impl VbdevBase {
    /// Opens and claims `base_name` for `module`, on behalf of the vbdev `vbdev_name`.
    pub fn open(
        module: &'static str,
        vbdev_name: &str,
        base_name: &str,
    ) -> Result<VbdevBase, BdevError> {
        let vbdev = vbdev_name.to_string();
        let desc = BdevDesc::open(base_name, true, move |event| match event {
            BdevEvent::Remove => {
                if let Some(b) = Bdev::lookup(&vbdev).filter(|b| b.module() == module) {
                    tracing::info!(vbdev, "its base is going away: removing it too");
                    b.unregister(|_| {});
                }
            }
        })?;
        desc.claim(module)?;
        Ok(VbdevBase {
            bdev: desc.bdev().clone(),
            desc: Mutex::new(Some(desc)),
        })
    }

    pub fn bdev(&self) -> &Bdev {
        &self.bdev
    }

    /// The calling thread's channel to the base (for the vbdev's channel).
    pub fn channel(&self) -> Result<BdevChannel, BdevError> {
        let desc = self.desc.lock().unwrap_or_else(|p| p.into_inner());
        desc.as_ref()
            .ok_or_else(|| BdevError::Removing(self.bdev.name().to_string()))?
            .get_io_channel()
    }

    /// The properties of a vbdev showing the base's blocks: its geometry, write cache, I/O
    /// boundary and NUMA node.
    pub fn props(&self, name: &str, module: &'static str, product_name: &str) -> BdevProps {
        let base = self.bdev.props();
        let mut props =
            BdevProps::new(name, module, product_name, base.block_size, base.num_blocks);
        props.write_cache = base.write_cache;
        props.optimal_io_boundary = base.optimal_io_boundary;
        props.numa_id = base.numa_id;
        props
    }

    /// Closes the base, which releases the claim.
    pub fn close(&self) {
        let desc = self.desc.lock().unwrap_or_else(|p| p.into_inner()).take();
        drop(desc);
    }
}

/// The calling thread's channel of a vbdev that keeps its channels in an `IoDevice` of its own
/// (to reach every thread's channel from one, as a reset does).
pub fn own_channel<T: BdevChannelOps + 'static>(
    device: &IoDevice<T>,
) -> Result<Rc<dyn BdevChannelOps>, BdevError> {
    let ch = device
        .get_channel()
        .map_err(|e| BdevError::io(e, format!("cannot create a channel for {}", device.name())))?;
    Ok(ch.rc().clone())
}

/// SPDK's UUID for a vbdev derived from its base's: v5 of the base UUID in the module's namespace.
pub fn derived_uuid(namespace: &uuid::Uuid, base: &Bdev) -> uuid::Uuid {
    uuid::Uuid::new_v5(namespace, base.uuid().as_bytes())
}

/// `BdevChannel::forward`'s retry step for a vbdev whose channel is `T`: the parent goes through
/// the vbdev's `submit_request` again once the base has an I/O free.
pub fn resubmit<T: BdevChannelOps + 'static>(ctx: IoCtx) {
    let IoCtx::Io(io) = ctx else { return };
    match io.module_channel::<T>() {
        Some(ch) => ch.submit_request(io),
        None => io.fail(libc::EIO),
    }
}

/// The child of a plain forward finished: recycle it, complete the parent with its status.
pub fn complete_parent(child: BdevIo, _ok: bool, ctx: IoCtx) {
    let status = child.status();
    drop(child);
    if let IoCtx::Io(parent) = ctx {
        parent.complete(status);
    }
}
