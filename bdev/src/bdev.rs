//! A registered block device: its properties, the module's operations, its open descriptors, and
//! the global registry. The `Bdev` value is shared by every thread (`Arc`); per-thread state lives
//! in its channels.

use crate::channel::ChannelInner;
use crate::error::BdevError;
use crate::io::IoType;
use crate::module::BdevOps;
use crate::stat::IoStat;
use poller::{IoDevice, Thread, ThreadHandle};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex, Weak};
use uuid::Uuid;

/// What a module declares when it registers a bdev.
#[derive(Clone, Debug)]
pub struct BdevProps {
    pub name: String,
    pub aliases: Vec<String>,
    /// Generated at random when None.
    pub uuid: Option<Uuid>,
    pub product_name: String,
    pub module: &'static str,
    pub block_size: u32,
    pub num_blocks: u64,
    /// The bdev has a volatile write cache: FLUSH is needed for durability.
    pub write_cache: bool,
    pub optimal_io_boundary: u32,
    pub split_on_optimal_io_boundary: bool,
    /// The NUMA node reported as `numa_id` (-1: any); None when the module does not say, and
    /// then, as in SPDK, bdev_get_bdevs leaves the field out.
    pub numa_id: Option<i32>,
}

impl BdevProps {
    pub fn new(
        name: &str,
        module: &'static str,
        product_name: &str,
        block_size: u32,
        num_blocks: u64,
    ) -> Self {
        BdevProps {
            name: name.to_string(),
            aliases: Vec::new(),
            uuid: None,
            product_name: product_name.to_string(),
            module,
            block_size,
            num_blocks,
            write_cache: false,
            optimal_io_boundary: 0,
            split_on_optimal_io_boundary: false,
            numa_id: None,
        }
    }
}

/// Events delivered to descriptor holders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BdevEvent {
    /// The bdev is going away: close the descriptor (and stop using its channels).
    Remove,
}

pub(crate) type EventFn = Arc<dyn Fn(BdevEvent) + Send + Sync>;
type DoneFn = Box<dyn FnOnce(Result<(), BdevError>) + Send>;

pub(crate) struct DescEntry {
    pub(crate) id: u64,
    pub(crate) write: bool,
    pub(crate) thread: Option<ThreadHandle>,
    pub(crate) event: EventFn,
}

#[derive(Default)]
pub(crate) struct BdevState {
    pub(crate) descs: Vec<DescEntry>,
    /// (module, descriptor id) holding the exclusive write claim.
    pub(crate) claim: Option<(String, u64)>,
    pub(crate) removing: bool,
    unregister_done: Vec<(Option<ThreadHandle>, DoneFn)>,
}

pub(crate) struct BdevInner {
    pub(crate) props: BdevProps,
    pub(crate) uuid: Uuid,
    pub(crate) ops: Arc<dyn BdevOps>,
    pub(crate) io_device: IoDevice<ChannelInner>,
    pub(crate) state: Mutex<BdevState>,
    pub(crate) retired_stat: Mutex<IoStat>,
}

/// A registered bdev.
#[derive(Clone)]
pub struct Bdev(pub(crate) Arc<BdevInner>);

static REGISTRY: Mutex<Vec<Bdev>> = Mutex::new(Vec::new());

fn registry() -> std::sync::MutexGuard<'static, Vec<Bdev>> {
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

impl Bdev {
    /// Registers a bdev and lets every module examine it.
    pub fn register(props: BdevProps, ops: Arc<dyn BdevOps>) -> Result<Bdev, BdevError> {
        validate(&props)?;
        let uuid = props.uuid.unwrap_or_else(Uuid::new_v4);
        let bdev = {
            let mut reg = registry();
            let mut names = vec![props.name.clone(), uuid.to_string()];
            names.extend(props.aliases.iter().cloned());
            if let Some(dup) = names.iter().find(|n| reg.iter().any(|b| b.answers_to(n))) {
                return Err(BdevError::Exists(dup.clone()));
            }
            let bdev = Bdev(Arc::new_cyclic(|weak: &Weak<BdevInner>| {
                let weak = weak.clone();
                BdevInner {
                    io_device: IoDevice::new(&props.name, move || create_channel(&weak)),
                    props,
                    uuid,
                    ops,
                    state: Mutex::new(BdevState::default()),
                    retired_stat: Mutex::new(IoStat::default()),
                }
            }));
            reg.push(bdev.clone());
            bdev
        };
        tracing::info!(
            bdev = bdev.name(),
            module = bdev.module(),
            "bdev registered"
        );
        crate::module::examine(&bdev);
        Ok(bdev)
    }

    /// Looks up a bdev by name, alias or UUID.
    pub fn lookup(name: &str) -> Option<Bdev> {
        registry().iter().find(|b| b.answers_to(name)).cloned()
    }

    /// Every registered bdev, in registration order.
    pub fn all() -> Vec<Bdev> {
        registry().clone()
    }

    fn answers_to(&self, name: &str) -> bool {
        let p = &self.0.props;
        p.name == name || p.aliases.iter().any(|a| a == name) || self.0.uuid.to_string() == name
    }

    pub fn name(&self) -> &str {
        &self.0.props.name
    }

    pub fn uuid(&self) -> Uuid {
        self.0.uuid
    }

    pub fn module(&self) -> &'static str {
        self.0.props.module
    }

    pub fn block_size(&self) -> u32 {
        self.0.props.block_size
    }

    pub fn num_blocks(&self) -> u64 {
        self.0.props.num_blocks
    }

    pub fn props(&self) -> &BdevProps {
        &self.0.props
    }

    pub fn ops(&self) -> &Arc<dyn BdevOps> {
        &self.0.ops
    }

    pub fn io_type_supported(&self, t: IoType) -> bool {
        self.0.ops.io_type_supported(t)
    }

    /// The module's ops object, if it is a `T` (a vbdev reaching into the module below it).
    pub fn ops_as<T: 'static>(&self) -> Option<&T> {
        // Through `&dyn BdevOps`, so the call reaches the ops object and not the Arc around it.
        let ops: &dyn BdevOps = &*self.0.ops;
        ops.as_any().downcast_ref::<T>()
    }

    pub fn ptr_eq(&self, other: &Bdev) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The module holding the exclusive write claim, if any.
    pub fn claimed_by(&self) -> Option<String> {
        self.state().claim.as_ref().map(|(m, _)| m.clone())
    }

    pub fn is_removing(&self) -> bool {
        self.state().removing
    }

    pub(crate) fn state(&self) -> std::sync::MutexGuard<'_, BdevState> {
        self.0.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Removes the bdev: every descriptor holder gets `BdevEvent::Remove` on its thread; once the
    /// last descriptor closes the module's `destruct` runs and `done` is called (on the calling
    /// thread when there is one).
    pub fn unregister(&self, done: impl FnOnce(Result<(), BdevError>) + Send + 'static) {
        let caller = Thread::current_handle();
        let (events, finish_now) = {
            let mut st = self.state();
            st.unregister_done.push((caller, Box::new(done)));
            if st.removing {
                return;
            }
            st.removing = true;
            let events: Vec<(Option<ThreadHandle>, EventFn)> = st
                .descs
                .iter()
                .map(|d| (d.thread.clone(), d.event.clone()))
                .collect();
            (events, st.descs.is_empty())
        };
        tracing::info!(bdev = self.name(), "bdev unregistering");
        if finish_now {
            self.finish_unregister();
            return;
        }
        for (thread, event) in events {
            match thread {
                Some(t) => t.send_msg(move || event(BdevEvent::Remove)),
                None => event(BdevEvent::Remove),
            }
        }
    }

    /// Unregisters `name` if `module` registered it (a module's delete), else answers ENODEV.
    pub fn unregister_module_bdev(
        module: &str,
        name: &str,
        done: impl FnOnce(Result<(), BdevError>) + Send + 'static,
    ) {
        match Bdev::lookup(name) {
            Some(b) if b.module() == module => b.unregister(done),
            _ => done(Err(BdevError::NoSuchDevice(name.to_string()))),
        }
    }

    /// Called when the last descriptor of a removing bdev closes.
    pub(crate) fn finish_unregister(&self) {
        registry().retain(|b| !b.ptr_eq(self));
        self.0.ops.destruct();
        let done = std::mem::take(&mut self.state().unregister_done);
        tracing::info!(bdev = self.name(), "bdev unregistered");
        for (thread, f) in done {
            match thread {
                Some(t) => t.send_msg(move || f(Ok(()))),
                None => f(Ok(())),
            }
        }
    }

    /// Sums the statistics of every channel (visiting each thread), then calls `done` on the caller.
    pub fn get_iostat(&self, done: impl FnOnce(IoStat) + Send + 'static) {
        let sum = Arc::new(Mutex::new(
            self.0
                .retired_stat
                .lock()
                .map(|s| s.clone())
                .unwrap_or_default(),
        ));
        let s = sum.clone();
        self.0.io_device.for_each_channel(
            move |ch| {
                if let Ok(mut total) = s.lock() {
                    total.add(&ch.stat.borrow());
                }
            },
            move || done(sum.lock().map(|s| s.clone()).unwrap_or_default()),
        );
    }

    /// SPDK's `bdev_get_bdevs` entry.
    pub fn info_json(&self) -> Value {
        let p = &self.0.props;
        let claim = self.claimed_by();
        let mut aliases = vec![self.0.uuid.to_string()];
        aliases.extend(p.aliases.iter().cloned());
        let mut supported = serde_json::Map::new();
        for name in [
            "read",
            "write",
            "unmap",
            "flush",
            "reset",
            "nvme_admin",
            "nvme_io",
            "nvme_io_md",
            "write_zeroes",
            "zcopy",
            "get_zone_info",
            "zone_management",
            "zone_append",
            "compare",
            "compare_and_write",
            "abort",
            "seek_hole",
            "seek_data",
            "copy",
            "nvme_iov_md",
            "nvme_nssr",
            "write_uncorrectable",
        ] {
            let yes = IoType::ALL
                .iter()
                .any(|t| t.name() == name && self.io_type_supported(*t));
            supported.insert(name.to_string(), json!(yes));
        }
        let mut v = json!({
            "name": p.name,
            "aliases": aliases,
            "product_name": p.product_name,
            "block_size": p.block_size,
            "num_blocks": p.num_blocks,
            "preferred_write_alignment": 0,
            "preferred_write_granularity": 0,
            "optimal_write_size": 0,
            "preferred_unmap_alignment": 0,
            "preferred_unmap_granularity": 0,
            "uuid": self.0.uuid.to_string(),
        });
        if let Some(o) = v.as_object_mut() {
            if let Some(numa) = p.numa_id {
                o.insert("numa_id".into(), json!(numa));
            }
            o.insert(
                "assigned_rate_limits".into(),
                json!({
                    "rw_ios_per_sec": 0, "rw_mbytes_per_sec": 0, "r_mbytes_per_sec": 0, "w_mbytes_per_sec": 0
                }),
            );
            o.insert("claimed".into(), json!(claim.is_some()));
            if claim.is_some() {
                o.insert("claim_type".into(), json!("exclusive_write"));
            }
            o.insert("zoned".into(), json!(false));
            o.insert("write_cache".into(), json!(p.write_cache));
            o.insert("supported_io_types".into(), Value::Object(supported));
            o.insert("driver_specific".into(), self.0.ops.dump_info_json());
        }
        v
    }
}

impl std::fmt::Debug for Bdev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bdev({})", self.name())
    }
}

fn validate(p: &BdevProps) -> Result<(), BdevError> {
    if p.name.is_empty() || p.name.len() > 255 {
        return Err(BdevError::invalid("bdev name must be 1 to 255 characters"));
    }
    if !p.block_size.is_power_of_two() || !(512..=65536).contains(&p.block_size) {
        return Err(BdevError::invalid(format!(
            "block size {} is not a power of two in 512..65536",
            p.block_size
        )));
    }
    if p.num_blocks == 0 {
        return Err(BdevError::invalid("a bdev needs at least one block"));
    }
    if p.num_blocks.checked_mul(p.block_size as u64).is_none() {
        return Err(BdevError::invalid("bdev size overflows"));
    }
    Ok(())
}

fn create_channel(weak: &Weak<BdevInner>) -> Result<ChannelInner, i32> {
    let inner = weak.upgrade().ok_or(libc::ENODEV)?;
    let thread = Thread::current().ok_or(libc::ENXIO)?;
    ChannelInner::new(&inner, &thread)
}
