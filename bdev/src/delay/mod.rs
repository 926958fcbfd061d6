//! The delay vbdev: passes I/O to its base like passthru, then holds each completed read or write
//! until its latency has passed, to emulate a slower disk or to trip an initiator's timeouts.
//! About one I/O in a hundred gets the p99 latency instead of the average. Other I/O types
//! complete as soon as the base completes them (as in SPDK).
//!
//! Built like `passthru` (read that first); what is new here is the per-channel hold queues and
//! the poller that releases them, and a reset that aborts what every channel holds.

pub mod rpc;

use crate::vbdev::{self, VbdevBase, VbdevConfig, VbdevConfigs, VbdevModule};
use crate::{
    Bdev, BdevChannel, BdevChannelOps, BdevError, BdevIo, BdevOps, IoCtx, IoStatus, IoType,
};
use poller::{IoChannel, IoDevice, PollStatus, Poller, Thread};
use rpc::{DelayCreateParams, LatencyType};
use serde_json::{Value, json};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::{Rc, Weak as RcWeak};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

pub const MODULE: &str = "delay";

/// SPDK's namespace for delay UUIDs derived from the base's (BDEV_DELAY_NAMESPACE_UUID).
const UUID_NAMESPACE: ::uuid::Uuid =
    ::uuid::Uuid::from_u128(0x4009b574_6430_4f1b_bc40_ace811091027);

/// Hold-queue index per latency class (`LatencyType` order); NONE completes without a hold.
const AVG_READ: u64 = 0;
const AVG_WRITE: u64 = 2;
const NONE: u64 = 4;

// --- Module registration. ---

pub fn register_module() {
    crate::register_module(Arc::new(VbdevModule {
        configs: &CONFIGS,
        attach,
        config_json: write_config_json,
    }));
}

// --- Configured delay bdevs, with their node once attached. ---

impl VbdevConfig for DelayCreateParams {
    fn vbdev_name(&self) -> String {
        self.name.clone()
    }

    fn base_name(&self) -> &str {
        &self.base_bdev_name
    }
}

static CONFIGS: VbdevConfigs<DelayCreateParams, DelayNode> = VbdevConfigs::new(MODULE);

// --- Per-vbdev node. ---

struct DelayNode {
    name: String,
    uuid: ::uuid::Uuid,
    base: VbdevBase,
    /// Per class (`LatencyType` order): as configured (reported back as given), and in ticks.
    latency_us: [AtomicU64; 4],
    latency_ticks: [AtomicU64; 4],
    /// Our own device over the module channels, so a reset can reach every thread's holds.
    channels: IoDevice<DelayChannel>,
}

impl DelayNode {
    fn set_latency(&self, class: usize, us: u64) {
        self.latency_us[class].store(us, Ordering::Relaxed);
        self.latency_ticks[class].store(poller::time::us_to_ticks(us), Ordering::Relaxed);
    }

    fn params(&self) -> DelayCreateParams {
        let us = |i: usize| self.latency_us[i].load(Ordering::Relaxed);
        DelayCreateParams {
            name: self.name.clone(),
            base_bdev_name: self.base.bdev().name().to_string(),
            uuid: Some(self.uuid),
            avg_read_latency: us(0),
            p99_read_latency: us(1),
            avg_write_latency: us(2),
            p99_write_latency: us(3),
        }
    }
}

// --- Channel context: the base channel, the hold queues and the poller that drains them. ---

struct DelayChannel {
    node: Arc<DelayNode>,
    base: BdevChannel,
    held: Rc<HoldQueues>,
    poller: Poller,
    /// xorshift state for the one-in-a-hundred p99 pick.
    rand: Cell<u64>,
    /// Resets waiting for the abort walk over every channel to come back.
    resets: RefCell<VecDeque<BdevIo>>,
}

/// One queue per class: a fixed latency makes deadlines arrive in order, so only fronts are due.
struct HoldQueues([RefCell<VecDeque<Held>>; 4]);

struct Held {
    deadline: u64,
    status: IoStatus,
    io: BdevIo,
}

/// The current poll's time: the virtual clock under the test harness.
fn now() -> u64 {
    Thread::current().map_or_else(poller::time::ticks, |t| t.now())
}

impl DelayChannel {
    fn new(node: &Weak<DelayNode>) -> Result<DelayChannel, i32> {
        let node = node.upgrade().ok_or(libc::ENODEV)?;
        let base = node.base.channel().map_err(|e| e.errno())?;
        // Sized for every I/O this thread can have, so holding one never allocates.
        let cap = crate::options().bdev_io_cache_size as usize;
        let held = Rc::new(HoldQueues(std::array::from_fn(|_| {
            RefCell::new(VecDeque::with_capacity(cap))
        })));
        let weak: RcWeak<HoldQueues> = Rc::downgrade(&held);
        let poller = Poller::register("delay_release", 0, move || {
            weak.upgrade()
                .map_or(PollStatus::Idle, |h| h.release(now()))
        })
        .ok_or(libc::ENXIO)?;
        Ok(DelayChannel {
            node,
            base,
            held,
            poller,
            rand: Cell::new(poller::time::ticks() | 1),
            resets: RefCell::new(VecDeque::new()),
        })
    }

    /// `avg`, or the p99 class right after it for about 1% of I/Os.
    fn pick(&self, avg: u64) -> u64 {
        let mut x = self.rand.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rand.set(x);
        avg + u64::from(x.is_multiple_of(100))
    }

    fn hold(&self, class: usize, status: IoStatus, io: BdevIo) {
        let latency = self.node.latency_ticks[class].load(Ordering::Relaxed);
        let deadline = now().saturating_add(latency);
        self.held.0[class].borrow_mut().push_back(Held {
            deadline,
            status,
            io,
        });
    }
}

impl Drop for DelayChannel {
    fn drop(&mut self) {
        self.poller.unregister();
    }
}

impl HoldQueues {
    /// Completes every held I/O whose deadline has passed.
    fn release(&self, now: u64) -> PollStatus {
        let mut released = false;
        for q in &self.0 {
            loop {
                let due = {
                    let mut q = q.borrow_mut();
                    match q.front() {
                        Some(h) if h.deadline <= now => q.pop_front(),
                        _ => None,
                    }
                };
                let Some(h) = due else { break };
                h.io.complete(h.status);
                released = true;
            }
        }
        PollStatus::from(released)
    }

    fn abort_all(&self) {
        for q in &self.0 {
            loop {
                let h = q.borrow_mut().pop_front();
                let Some(h) = h else { break };
                h.io.complete(IoStatus::Aborted);
            }
        }
    }
}

// --- submit_request by type. The per-I/O context is the class, in the parent's driver_ctx[0]. ---

impl BdevChannelOps for DelayChannel {
    fn submit_request(&self, mut io: BdevIo) {
        io.driver_ctx()[0] = match io.io_type() {
            IoType::Read => self.pick(AVG_READ),
            IoType::Write => self.pick(AVG_WRITE),
            _ => NONE,
        };
        if io.io_type() == IoType::Reset {
            self.reset(io);
        } else {
            self.base
                .forward(io, complete, vbdev::resubmit::<DelayChannel>);
        }
    }

    fn stall_report(&self) -> Option<String> {
        let held: usize = self.held.0.iter().map(|q| q.borrow().len()).sum();
        Some(format!("{held} I/Os held for their latency"))
    }
}

impl DelayChannel {
    /// Aborts the I/Os every channel holds, then resets the base (SPDK's order).
    fn reset(&self, io: BdevIo) {
        self.resets.borrow_mut().push_back(io);
        let node = Arc::downgrade(&self.node);
        self.node.channels.for_each_channel(
            |ch: &IoChannel<DelayChannel>| ch.held.abort_all(),
            move || {
                let ch = node
                    .upgrade()
                    .zip(Thread::current())
                    .and_then(|(n, t)| n.channels.existing_channel(&t));
                let Some(ch) = ch else { return };
                let io = ch.resets.borrow_mut().pop_front();
                if let Some(io) = io {
                    ch.base
                        .forward(io, complete, vbdev::resubmit::<DelayChannel>);
                }
            },
        );
    }
}

/// The base is done: recycle the child and hold the parent (or complete it if not delayed).
fn complete(child: BdevIo, _ok: bool, ctx: IoCtx) {
    let status = child.status();
    drop(child);
    let IoCtx::Io(mut parent) = ctx else { return };
    let class = parent.driver_ctx()[0];
    match parent.module_channel::<DelayChannel>() {
        Some(ch) if class < NONE => ch.hold(class as usize, status, parent),
        _ => parent.complete(status),
    }
}

// --- io_type_supported, get_io_channel, dump_info_json, destruct. ---

impl BdevOps for DelayNode {
    fn io_type_supported(&self, t: IoType) -> bool {
        self.base.bdev().io_type_supported(t)
    }

    fn create_channel(&self) -> Result<Rc<dyn BdevChannelOps>, BdevError> {
        vbdev::own_channel(&self.channels)
    }

    fn dump_info_json(&self) -> Value {
        json!({"delay": self.params()})
    }

    fn destruct(&self) {
        self.base.close();
    }
}

// --- Create / delete / update_latency. ---

fn attach(p: &DelayCreateParams) -> Result<Bdev, BdevError> {
    let base = VbdevBase::open(MODULE, &p.name, &p.base_bdev_name)?;
    let uuid = p
        .uuid
        .unwrap_or_else(|| vbdev::derived_uuid(&UUID_NAMESPACE, base.bdev()));
    let mut props = base.props(&p.name, MODULE, "delay");
    props.uuid = Some(uuid);
    let node = Arc::new_cyclic(|weak: &Weak<DelayNode>| {
        let weak = weak.clone();
        DelayNode {
            name: p.name.clone(),
            uuid,
            base,
            latency_us: Default::default(),
            latency_ticks: Default::default(),
            channels: IoDevice::new(&p.name, move || DelayChannel::new(&weak)),
        }
    });
    let latencies = [
        p.avg_read_latency,
        p.p99_read_latency,
        p.avg_write_latency,
        p.p99_write_latency,
    ];
    for (class, us) in latencies.into_iter().enumerate() {
        node.set_latency(class, us);
    }
    let bdev = Bdev::register(props, node.clone())?;
    CONFIGS.set_node(&p.name, &node);
    Ok(bdev)
}

/// Creates a delay bdev; `Ok(None)` when its base does not exist yet (it attaches on arrival).
pub fn create(params: DelayCreateParams) -> Result<Option<Bdev>, BdevError> {
    register_module();
    if params.name.is_empty() {
        return Err(BdevError::invalid("name must not be empty"));
    }
    if params.p99_read_latency < params.avg_read_latency
        || params.p99_write_latency < params.avg_write_latency
    {
        return Err(BdevError::invalid(
            "p99 latency must not be less than the average latency",
        ));
    }
    CONFIGS.create(params, attach)
}

/// Deletes a delay bdev (or a configuration still waiting for its base).
pub fn delete(name: &str, done: impl FnOnce(Result<(), BdevError>) + Send + 'static) {
    CONFIGS.delete(name, done)
}

/// Changes one latency of a registered delay bdev; I/Os already held keep their deadline.
pub fn update_latency(name: &str, which: LatencyType, us: u64) -> Result<(), BdevError> {
    let node = CONFIGS.node(name)?;
    node.set_latency(which as usize, us);
    Ok(())
}

// --- write_config_json: one bdev_delay_create per configuration, with the latencies in force. ---

fn write_config_json() -> Vec<Value> {
    CONFIGS
        .entries()
        .into_iter()
        .map(|(params, node)| {
            let params = node.map_or(params, |n| n.params());
            json!({"method": "bdev_delay_create", "params": params})
        })
        .collect()
}
