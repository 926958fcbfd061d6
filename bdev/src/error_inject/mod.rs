//! The error-injection vbdev (SPDK's `error` module): `EE_<base>` passes I/O to its base except
//! the ones an operator arms it to fail, hold, corrupt or bounce with "no memory"
//! (`bdev_error_inject_error`), to test how the layers above cope.
//!
//! Built like `passthru` (read that first). The injection state is per bdev and shared by every
//! channel: one atomic countdown per I/O type, so exactly `num` I/Os are affected whichever
//! threads submit them.

pub mod rpc;

use crate::iov;
use crate::vbdev::{self, VbdevBase, VbdevConfig, VbdevConfigs, VbdevModule};
use crate::{
    Bdev, BdevChannel, BdevChannelOps, BdevError, BdevIo, BdevOps, IoCtx, IoStatus, IoType, IoVec,
    SubmitError, SubmitResult,
};
use poller::{IoChannel, IoDevice, Thread};
use rpc::{ErrorCreateParams, ErrorInjectParams, ErrorType, InjectIoType};
use serde_json::{Value, json};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

pub const MODULE: &str = "error";

/// SPDK builds error bdevs as partitions; this is its partition namespace (BDEV_PART_NAMESPACE_UUID).
const UUID_NAMESPACE: ::uuid::Uuid =
    ::uuid::Uuid::from_u128(0x976b899e_3e1e_4d71_ab69_c2b08e9df8b8);

/// The I/O types that can be armed, in this order.
const ARMABLE: [IoType; 4] = [IoType::Read, IoType::Write, IoType::Unmap, IoType::Flush];

const ERROR_TYPES: [ErrorType; 5] = [
    ErrorType::Failure,
    ErrorType::NvmeFailure,
    ErrorType::Pending,
    ErrorType::CorruptData,
    ErrorType::Nomem,
];

/// driver_ctx[0] of an I/O whose data we XOR (driver_ctx[1] = offset, [2] = value).
const CORRUPT_READ: u64 = 1;
const CORRUPT_WRITE: u64 = 2;

pub fn error_bdev_name(base_name: &str) -> String {
    format!("EE_{base_name}")
}

// --- Module registration. ---

pub fn register_module() {
    crate::register_module(Arc::new(VbdevModule {
        configs: &CONFIGS,
        attach,
        config_json,
    }));
}

fn config_json() -> Vec<Value> {
    CONFIGS
        .entries()
        .into_iter()
        .map(|(params, _)| json!({"method": "bdev_error_create", "params": params}))
        .collect()
}

// --- Configured error bdevs (named after their base), with their node once attached. ---

impl VbdevConfig for ErrorCreateParams {
    fn vbdev_name(&self) -> String {
        error_bdev_name(&self.base_name)
    }

    fn base_name(&self) -> &str {
        &self.base_name
    }
}

static CONFIGS: VbdevConfigs<ErrorCreateParams, ErrorNode> = VbdevConfigs::new(MODULE);

// --- Injection state of one I/O type. The countdown is the only thing channels race on. ---

#[derive(Default)]
struct Injection {
    error_type: AtomicU8,
    num: AtomicU32,
    queue_depth: AtomicU64,
    corrupt_offset: AtomicU64,
    corrupt_value: AtomicU8,
}

impl Injection {
    fn arm(&self, p: &ErrorInjectParams) {
        self.error_type.store(p.error_type as u8, Ordering::Relaxed);
        self.queue_depth.store(p.queue_depth, Ordering::Relaxed);
        self.corrupt_offset
            .store(p.corrupt_offset, Ordering::Relaxed);
        self.corrupt_value.store(p.corrupt_value, Ordering::Relaxed);
        self.num.store(p.num, Ordering::Release);
    }

    /// Whether this I/O is affected (and how): takes one from the countdown if so.
    fn take(&self, inflight: u64) -> Option<ErrorType> {
        if inflight < self.queue_depth.load(Ordering::Relaxed) {
            return None;
        }
        self.num
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .ok()?;
        let t = self.error_type.load(Ordering::Relaxed);
        Some(
            ERROR_TYPES
                .into_iter()
                .find(|e| *e as u8 == t)
                .unwrap_or(ErrorType::Failure),
        )
    }
}

// --- Per-vbdev node. ---

struct ErrorNode {
    name: String,
    base: VbdevBase,
    inject: [Injection; 4],
    /// Our own device over the module channels, to reach every thread's pending I/Os.
    channels: IoDevice<ErrorChannel>,
}

impl ErrorNode {
    fn injection(&self, t: IoType) -> Option<&Injection> {
        let i = ARMABLE.iter().position(|a| *a == t)?;
        self.inject.get(i)
    }
}

// --- Channel context. ---

struct ErrorChannel {
    node: Arc<ErrorNode>,
    base: BdevChannel,
    /// I/Os submitted to the base and not back yet (for `queue_depth`).
    inflight: Cell<u64>,
    /// I/Os held by a `pending` injection.
    pending: RefCell<VecDeque<BdevIo>>,
    /// Resets waiting for the abort walk over every channel to come back.
    resets: RefCell<VecDeque<BdevIo>>,
    iovs: Cell<Vec<IoVec>>,
}

impl ErrorChannel {
    fn new(node: &Weak<ErrorNode>) -> Result<ErrorChannel, i32> {
        let node = node.upgrade().ok_or(libc::ENODEV)?;
        let base = node.base.channel().map_err(|e| e.errno())?;
        Ok(ErrorChannel {
            node,
            base,
            inflight: Cell::new(0),
            pending: RefCell::new(VecDeque::with_capacity(
                crate::options().bdev_io_cache_size as usize,
            )),
            resets: RefCell::new(VecDeque::new()),
            iovs: Cell::new(Vec::with_capacity(16)),
        })
    }

    /// XORs the byte at `offset` of the data with `value` (nothing past the end). Done twice, it
    /// restores the byte.
    fn flip(&self, iovs: &[IoVec], offset: u64, value: u8) {
        let mut one = self.iovs.take();
        one.clear();
        iov::slice_into(
            iovs,
            usize::try_from(offset).unwrap_or(usize::MAX),
            1,
            &mut one,
        );
        let mut b = [0u8];
        if iov::copy_from_iovs(&one, &mut b) == 1 {
            b[0] ^= value;
            iov::copy_to_iovs(&one, &b);
        }
        self.iovs.set(one);
    }
}

// --- submit_request: an armed injection decides first, the rest goes to the base. ---

impl BdevChannelOps for ErrorChannel {
    fn submit_request(&self, mut io: BdevIo) {
        if io.io_type() == IoType::Reset {
            self.reset(io);
            return;
        }
        io.driver_ctx()[0] = 0;
        let injected = self
            .node
            .injection(io.io_type())
            .and_then(|inj| inj.take(self.inflight.get()).map(|t| (t, inj)));
        match injected {
            None => self.forward(io),
            Some((ErrorType::Failure | ErrorType::NvmeFailure, _)) => io.fail(libc::EIO),
            Some((ErrorType::Nomem, _)) => io.complete(IoStatus::NoMemory),
            Some((ErrorType::Pending, _)) => self.pending.borrow_mut().push_back(io),
            Some((ErrorType::CorruptData, inj)) => {
                let offset = inj.corrupt_offset.load(Ordering::Relaxed);
                let value = inj.corrupt_value.load(Ordering::Relaxed);
                let mark = match io.io_type() {
                    IoType::Read => CORRUPT_READ,
                    IoType::Write => CORRUPT_WRITE,
                    _ => 0,
                };
                *io.driver_ctx() = [mark, offset, u64::from(value), 0];
                // SPDK writes a corrupted copy; flipping in place and back at completion looks
                // the same to the caller and needs no buffer.
                if mark == CORRUPT_WRITE {
                    self.flip(io.iovs(), offset, value);
                }
                self.forward(io);
            }
        }
    }
}

impl ErrorChannel {
    fn forward(&self, io: BdevIo) {
        self.inflight.set(self.inflight.get() + 1);
        let (offset, blocks) = (io.offset_blocks(), io.num_blocks());
        let result = match io.io_type() {
            IoType::Read | IoType::Write => self.forward_rw(io),
            IoType::Flush => self.base.flush(offset, blocks, complete, IoCtx::Io(io)),
            IoType::Unmap => self.base.unmap(offset, blocks, complete, IoCtx::Io(io)),
            IoType::WriteZeroes => self
                .base
                .write_zeroes(offset, blocks, complete, IoCtx::Io(io)),
            IoType::Reset => self.base.reset(complete, IoCtx::Io(io)),
        };
        if let Err(e) = result {
            self.inflight.set(self.inflight.get().saturating_sub(1));
            self.refused(e);
        }
    }

    fn forward_rw(&self, io: BdevIo) -> SubmitResult {
        let mut iovs = self.iovs.take();
        iovs.clear();
        iovs.extend_from_slice(io.iovs());
        let (offset, blocks, flags) = (io.offset_blocks(), io.num_blocks(), io.flags());
        let result = match io.io_type() {
            IoType::Read => self
                .base
                .read(&iovs, offset, blocks, complete, IoCtx::Io(io)),
            _ => self
                .base
                .write(&iovs, offset, blocks, flags, complete, IoCtx::Io(io)),
        };
        self.iovs.set(iovs);
        result
    }

    /// Out of I/Os: retry the forward later (the injection was already decided). Otherwise fail,
    /// putting back a byte we flipped in the caller's buffer.
    fn refused(&self, e: SubmitError) {
        let IoCtx::Io(mut io) = e.ctx else { return };
        match e.error {
            BdevError::NoMemory => self.base.queue_io_wait(resubmit, IoCtx::Io(io)),
            err => {
                if let [CORRUPT_WRITE, offset, value, _] = *io.driver_ctx() {
                    self.flip(io.iovs(), offset, value as u8);
                }
                io.fail(err.errno())
            }
        }
    }

    /// Aborts the pending I/Os of every channel, then completes the reset (as SPDK, the base is
    /// not reset).
    fn reset(&self, io: BdevIo) {
        self.resets.borrow_mut().push_back(io);
        let node = Arc::downgrade(&self.node);
        self.node.channels.for_each_channel(
            |ch: &IoChannel<ErrorChannel>| {
                loop {
                    let io = ch.pending.borrow_mut().pop_front();
                    let Some(io) = io else { break };
                    io.complete(IoStatus::Aborted);
                }
            },
            move || {
                let ch = node
                    .upgrade()
                    .zip(Thread::current())
                    .and_then(|(n, t)| n.channels.existing_channel(&t));
                let Some(ch) = ch else { return };
                let io = ch.resets.borrow_mut().pop_front();
                if let Some(io) = io {
                    io.complete_ok();
                }
            },
        );
    }

    /// Runs the I/Os held here through submit again (the pending injections are disarmed).
    fn resume(&self) {
        let held = self.pending.borrow().len();
        for _ in 0..held {
            let io = self.pending.borrow_mut().pop_front();
            let Some(io) = io else { break };
            self.submit_request(io);
        }
    }
}

fn resubmit(ctx: IoCtx) {
    let IoCtx::Io(io) = ctx else { return };
    match io.module_channel::<ErrorChannel>() {
        Some(ch) => ch.forward(io),
        None => io.fail(libc::EIO),
    }
}

/// The base is done: recycle the child, apply a read corruption or undo a write's, complete.
fn complete(child: BdevIo, _ok: bool, ctx: IoCtx) {
    let status = child.status();
    drop(child);
    let IoCtx::Io(mut parent) = ctx else { return };
    let Some(ch) = parent.module_channel::<ErrorChannel>() else {
        return parent.complete(status);
    };
    ch.inflight.set(ch.inflight.get().saturating_sub(1));
    match *parent.driver_ctx() {
        [CORRUPT_WRITE, offset, value, _] => ch.flip(parent.iovs(), offset, value as u8),
        [CORRUPT_READ, offset, value, _] if status == IoStatus::Success => {
            ch.flip(parent.iovs(), offset, value as u8)
        }
        _ => {}
    }
    parent.complete(status);
}

// --- io_type_supported, get_io_channel, dump_info_json, destruct. ---

impl BdevOps for ErrorNode {
    fn io_type_supported(&self, t: IoType) -> bool {
        self.base.bdev().io_type_supported(t)
    }

    fn create_channel(&self) -> Result<Rc<dyn BdevChannelOps>, BdevError> {
        vbdev::own_channel(&self.channels)
    }

    fn dump_info_json(&self) -> Value {
        json!({"error_disk": {"base_bdev": self.base.bdev().name()}})
    }

    /// Closes the base and, as SPDK, forgets the configuration (also after a hot-remove).
    fn destruct(&self) {
        self.base.close();
        CONFIGS.forget(&self.name);
    }
}

// --- Create / delete / inject / resume. ---

fn attach(p: &ErrorCreateParams) -> Result<Bdev, BdevError> {
    let name = error_bdev_name(&p.base_name);
    let base = VbdevBase::open(MODULE, &name, &p.base_name)?;
    let mut props = base.props(&name, MODULE, "Error Injection Disk");
    // SPDK's partition UUID: base UUID, then the block range (offset 0, every block), little-endian.
    let mut seed = [0u8; 32];
    seed[..16].copy_from_slice(base.bdev().uuid().as_bytes());
    seed[24..].copy_from_slice(&base.bdev().num_blocks().to_le_bytes());
    props.uuid = Some(
        p.uuid
            .unwrap_or_else(|| ::uuid::Uuid::new_v5(&UUID_NAMESPACE, &seed)),
    );
    let node = Arc::new_cyclic(|weak: &Weak<ErrorNode>| {
        let weak = weak.clone();
        ErrorNode {
            name: name.clone(),
            base,
            inject: Default::default(),
            channels: IoDevice::new(&name, move || ErrorChannel::new(&weak)),
        }
    });
    let bdev = Bdev::register(props, node.clone())?;
    CONFIGS.set_node(&name, &node);
    Ok(bdev)
}

/// Creates `EE_<base_name>`; `Ok(None)` when the base does not exist yet (it attaches on arrival).
pub fn create(params: ErrorCreateParams) -> Result<Option<Bdev>, BdevError> {
    register_module();
    if params.base_name.is_empty() {
        return Err(BdevError::invalid("base_name must not be empty"));
    }
    CONFIGS.create(params, attach)
}

/// Deletes an error bdev by its name (or a configuration still waiting for its base).
pub fn delete(name: &str, done: impl FnOnce(Result<(), BdevError>) + Send + 'static) {
    CONFIGS.delete(name, done)
}

/// Arms (or, with `clear` or `num` 0, disarms) an injection.
pub fn inject_error(p: &ErrorInjectParams) -> Result<(), BdevError> {
    let nvme = p.error_type == ErrorType::NvmeFailure;
    if nvme == (p.nvme_sct == 0 && p.nvme_sc == 0) {
        return Err(BdevError::invalid(
            "nvme_sct or nvme_sc should be specified for NVMe error injection",
        ));
    }
    if p.error_type == ErrorType::CorruptData && p.corrupt_value == 0 {
        return Err(BdevError::io(
            libc::EINVAL,
            "corrupt_value should be non-zero",
        ));
    }
    let node = CONFIGS.node(&p.name)?;
    let armed: &[IoType] = match p.io_type {
        InjectIoType::Clear => {
            node.inject
                .iter()
                .for_each(|i| i.num.store(0, Ordering::Release));
            return Ok(());
        }
        InjectIoType::All => &ARMABLE,
        InjectIoType::Read => &[IoType::Read],
        InjectIoType::Write => &[IoType::Write],
        InjectIoType::Unmap => &[IoType::Unmap],
        InjectIoType::Flush => &[IoType::Flush],
    };
    for t in armed {
        if let Some(inj) = node.injection(*t) {
            inj.arm(p);
        }
    }
    Ok(())
}

/// How many more I/Os of type `t` the armed injection will affect.
pub fn injections_left(name: &str, t: IoType) -> Option<u32> {
    let node = CONFIGS.node(name).ok()?;
    Some(node.injection(t)?.num.load(Ordering::Acquire))
}

/// Disarms `pending` injections and sends every held I/O through again, on every channel.
pub fn resume_pending(name: &str) -> Result<(), BdevError> {
    let node = CONFIGS.node(name)?;
    for inj in &node.inject {
        if inj.error_type.load(Ordering::Relaxed) == ErrorType::Pending as u8 {
            inj.num.store(0, Ordering::Release);
        }
    }
    node.channels
        .for_each_channel(|ch: &IoChannel<ErrorChannel>| ch.resume(), || {});
    Ok(())
}
