//! A remote controller: its admin queue on the app thread, the attach sequence (run again at
//! every reconnect), keep alive, the namespace-changed AEN, the reconnect policy and deletion.
//!
//! Everything here runs on the app thread, polled, never blocking: the admin qpair connects
//! like any qpair (`qpair.rs`), then each step of the sequence is one admin command whose
//! completion starts the next:
//!
//! ```text
//! Connect (qpair) → Property Get CAP, VS, CC → Property Set CC.EN=1 → Property Get CSTS until
//! RDY (within CAP.TO) → Identify Controller → Set Features Async Event Config (if OAES has
//! namespace notices) → Get Features Keep Alive Timer → Set Features Number of Queues →
//! Identify Active Namespace List → for each: Identify Namespace, Namespace ID Descriptors
//! → ready: bdevs registered (first time) or I/O qpairs reconnected (generation + 1), an AER
//! outstanding
//! ```
//!
//! The I/O qpairs live on the threads that use the bdevs (`channel.rs`); they see the
//! controller through `Shared`: its state, the generation of the association they must
//! connect to, and the fast-fail flag. A qpair error on any thread is reported here by message
//! and starts the reset.
//!
//! ```text
//! mod.rs       the controller's life: attach, the admin poll, loss → reconnect policy, delete
//! sequence.rs  the steps above, Identify checks, namespaces and their bdevs
//! events.rs    the AER kept outstanding, the Keep Alive period
//! ```

mod events;
mod sequence;

pub use sequence::NsFound;
use sequence::Step;

use crate::host::channel::IoQueue;
use crate::host::error::HostError;
use crate::host::options::{self, MultipathOpts};
use crate::host::qpair::{ADMIN_ICD, Command, HANDSHAKE_SECS, OWN_LEN, Qpair, QpairParams, Src};
use crate::host::reconnect::{Action, Phase as PolicyPhase, Policy, ReconnectParams};
use crate::wire::command::{Cqe, Sqe, Xfer, admin};
use crate::wire::fabrics::{CATTR_DISABLE_SQ_FLOW_CONTROL, Cap, Nqn};
use crate::wire::identify::IdentifyController;
use bdev::Bdev;
use poller::{IoDevice, PollStatus, Poller, Thread, ThreadHandle};
use serde_json::{Value, json};
use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use uuid::Uuid;

/// Admin queue: 32 entries (SQSIZE 31, as Linux and SPDK), a few slots used.
const ADMIN_ENTRIES: u16 = 32;
const ADMIN_SLOTS: u16 = 8;
/// SPDK's default I/O queue size, before the controller's limits.
const IO_QUEUE_SIZE: u32 = 256;
/// Transfers are cut at 1 MiB when the controller sets no lower limit (MDTS 0).
const MAX_TRANSFER_CAP: u64 = 1 << 20;
/// Poll the admin queue this often while a step waits on the controller.
const STEP_TIMEOUT_SECS: u64 = 10;
/// Between CSTS polls while waiting for RDY or the shutdown.
const CSTS_POLL_US: u64 = 1000;
/// How long a clean shutdown (CC.SHN) may take before the connection is closed anyway.
const SHUTDOWN_SECS: u64 = 2;

/// What identifies the path: SPDK's transport ID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trid {
    pub adrfam: String,
    pub traddr: String,
    pub trsvcid: String,
    pub subnqn: String,
}

impl Trid {
    pub fn to_json(&self) -> Value {
        json!({
            "trtype": "TCP",
            "adrfam": self.adrfam,
            "traddr": self.traddr,
            "trsvcid": self.trsvcid,
            "subnqn": self.subnqn,
        })
    }
}

/// Everything `bdev_nvme_attach_controller` decided, as save_config writes it back.
#[derive(Clone, Debug)]
pub struct Spec {
    pub name: String,
    pub trid: Trid,
    pub addr: SocketAddr,
    pub hostnqn: String,
    pub hostid: [u8; 16],
    pub hostaddr: Option<String>,
    pub hostsvcid: Option<String>,
    pub src: Option<SocketAddr>,
    pub hdgst: bool,
    pub ddgst: bool,
    pub fabrics_connect_timeout_us: u64,
    pub num_io_queues: u32,
    pub reconnect: ReconnectParams,
    pub max_bdevs: u32,
    pub multipath: String,
    pub multipath_opts: MultipathOpts,
    pub disable_sq_flow_control: bool,
}

impl Spec {
    /// The `bdev_nvme_attach_controller` entry of save_config (SPDK's members).
    pub fn to_config_json(&self) -> Value {
        let mut p = serde_json::Map::new();
        p.insert("name".into(), json!(self.name));
        if let Value::Object(t) = self.trid.to_json() {
            p.extend(t);
        }
        p.insert("prchk_reftag".into(), json!(false));
        p.insert("prchk_guard".into(), json!(false));
        p.insert(
            "ctrlr_loss_timeout_sec".into(),
            json!(self.reconnect.ctrlr_loss_timeout_sec),
        );
        p.insert(
            "reconnect_delay_sec".into(),
            json!(self.reconnect.reconnect_delay_sec),
        );
        p.insert(
            "fast_io_fail_timeout_sec".into(),
            json!(self.reconnect.fast_io_fail_timeout_sec),
        );
        p.insert("hostnqn".into(), json!(self.hostnqn));
        p.insert("hdgst".into(), json!(self.hdgst));
        p.insert("ddgst".into(), json!(self.ddgst));
        if let Some(a) = &self.hostaddr {
            p.insert("hostaddr".into(), json!(a));
        }
        if let Some(s) = &self.hostsvcid {
            p.insert("hostsvcid".into(), json!(s));
        }
        if self.multipath == "multipath" {
            p.insert("multipath".into(), json!("multipath"));
        }
        p.insert(
            "fabrics_connect_timeout_us".into(),
            json!(self.fabrics_connect_timeout_us),
        );
        p.insert("num_io_queues".into(), json!(self.num_io_queues));
        p.insert(
            "disable_sq_flow_control".into(),
            json!(self.disable_sq_flow_control),
        );
        p.insert("multipath_opts".into(), self.multipath_opts.to_json());
        json!({"method": "bdev_nvme_attach_controller", "params": Value::Object(p)})
    }

    fn place(&self) -> String {
        format!("{} ({})", self.addr, self.trid.subnqn)
    }
}

/// The controller's state as the I/O threads and get_controllers see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Attaching for the first time.
    Attaching = 0,
    Enabled = 1,
    Resetting = 2,
    ReconnectDelayed = 3,
    Deleting = 4,
}

impl State {
    fn from_u8(v: u8) -> State {
        match v {
            1 => State::Enabled,
            2 => State::Resetting,
            3 => State::ReconnectDelayed,
            4 => State::Deleting,
            _ => State::Attaching,
        }
    }

    /// SPDK's names in bdev_nvme_get_controllers.
    pub fn name(self) -> &'static str {
        match self {
            State::Attaching | State::Resetting => "resetting",
            State::Enabled => "enabled",
            State::ReconnectDelayed => "reconnect_is_delayed",
            State::Deleting => "deleting",
        }
    }
}

/// What an I/O qpair needs to connect to the current association.
#[derive(Clone, Debug)]
pub struct IoConnInfo {
    /// The qpair parameters with qid 0 (set per queue).
    pub params: QpairParams,
    /// I/O queues the controller granted.
    pub max_queues: u16,
    /// Largest transfer of one command, in bytes.
    pub max_transfer: u64,
}

/// The controller as every thread sees it.
pub struct Shared {
    pub spec: Spec,
    state: AtomicU8,
    assoc: AtomicU64,
    fast_fail: AtomicBool,
    cntlid: AtomicU64,
    conn: Mutex<Option<IoConnInfo>>,
    qids: Mutex<Vec<bool>>,
    pub(crate) io_device: IoDevice<IoQueue>,
    app: ThreadHandle,
}

impl Shared {
    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    fn set_state(&self, s: State) {
        self.state.store(s as u8, Ordering::Release);
    }

    /// The association I/O qpairs must connect to (0: none yet).
    pub fn generation(&self) -> u64 {
        self.assoc.load(Ordering::Acquire)
    }

    pub fn fast_failing(&self) -> bool {
        self.fast_fail.load(Ordering::Acquire)
    }

    pub fn conn_info(&self) -> Option<IoConnInfo> {
        lock(&self.conn).clone()
    }

    /// An unused I/O queue id, or None when every granted queue is taken.
    pub fn take_qid(&self) -> Option<u16> {
        let max = lock(&self.conn).as_ref().map_or(0, |c| c.max_queues);
        let mut q = lock(&self.qids);
        if q.len() < usize::from(max) {
            q.resize(usize::from(max), false);
        }
        let i = q.iter().take(usize::from(max)).position(|used| !used)?;
        q[i] = true;
        u16::try_from(i + 1).ok()
    }

    pub fn give_qid(&self, qid: u16) {
        if let Some(slot) = lock(&self.qids).get_mut(usize::from(qid).wrapping_sub(1)) {
            *slot = false;
        }
    }

    /// An I/O qpair of association `assoc` failed (any thread): the controller resets.
    pub fn report_failure(self: &Arc<Self>, assoc: u64, why: String) {
        let sh = self.clone();
        self.app.send_msg(move || {
            with_ctrlr(&sh, |c| c.io_failed(assoc, &why));
        });
    }

    /// SPDK's bdev_nvme_get_controllers entry.
    pub fn info_json(&self) -> Value {
        json!({
            "name": self.spec.name,
            "ctrlrs": [{
                "state": self.state().name(),
                "trid": self.spec.trid.to_json(),
                "cntlid": self.cntlid.load(Ordering::Relaxed),
                "host": {
                    "nqn": self.spec.hostnqn,
                    "addr": self.spec.hostaddr.clone().unwrap_or_default(),
                    "svcid": self.spec.hostsvcid.clone().unwrap_or_default(),
                    "no_shn_notification": false,
                },
            }],
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Every controller, for lookups from any thread (get_controllers, save_config, names).
static REGISTRY: Mutex<Vec<Arc<Shared>>> = Mutex::new(Vec::new());

pub fn all() -> Vec<Arc<Shared>> {
    lock(&REGISTRY).clone()
}

pub fn lookup(name: &str) -> Option<Arc<Shared>> {
    lock(&REGISTRY)
        .iter()
        .find(|s| s.spec.name == name)
        .cloned()
}

thread_local! {
    /// The controllers themselves, on the app thread.
    static CTRLRS: RefCell<Vec<Rc<RefCell<Ctrlr>>>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on the controller behind `sh` (app thread).
fn with_ctrlr<R>(sh: &Arc<Shared>, f: impl FnOnce(&mut Ctrlr) -> R) -> Option<R> {
    let c = CTRLRS.with(|l| {
        l.borrow()
            .iter()
            .find(|c| c.try_borrow().is_ok_and(|c| Arc::ptr_eq(&c.sh, sh)))
            .cloned()
    })?;
    let mut c = c.try_borrow_mut().ok()?;
    Some(f(&mut c))
}

/// A namespace with its bdev.
struct Namespace {
    info: NsFound,
    bdev: Bdev,
}

/// Why the association is being (re)built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Attach,
    Reconnect,
    Running,
    Deleting,
}

type DetachDone = Box<dyn FnOnce(Result<(), HostError>) + Send>;
type AttachDone = Box<dyn FnOnce(Result<Vec<String>, HostError>)>;

pub(crate) struct Ctrlr {
    sh: Arc<Shared>,
    admin: Option<Qpair>,
    mode: Mode,
    step: Step,
    step_cid: Option<u16>,
    step_deadline: u64,
    /// A step waits until then before issuing its command (CSTS polling).
    step_not_before: u64,
    rdy_deadline: u64,
    policy: Policy,
    cap: Cap,
    vs: u32,
    cdata: Option<Box<IdentifyController>>,
    io_queues: u16,
    kato_ms: u32,
    ka_cid: Option<u16>,
    ka_sent: u64,
    ka_next: u64,
    aer_cid: Option<u16>,
    aer_wanted: bool,
    log_cid: Option<u16>,
    rescan_pending: bool,
    scan_list: Vec<u32>,
    scan_found: Vec<NsFound>,
    namespaces: Vec<Namespace>,
    attach_rsp: Option<AttachDone>,
    detach_done: Vec<DetachDone>,
    unregistering: Arc<AtomicUsize>,
    delete_reason: String,
    poller: Option<Poller>,
    next_admin_poll: u64,
    hz: u64,
    lost_at: u64,
    last_error: String,
    attempts: u32,
}

fn now() -> u64 {
    Thread::current().map_or_else(poller::time::ticks, |t| t.now())
}

fn us(hz: u64, us: u64) -> u64 {
    (u128::from(us) * u128::from(hz) / 1_000_000) as u64
}

/// The default host NQN: one per process, like SPDK's.
pub fn default_hostnqn() -> String {
    static ID: std::sync::OnceLock<Uuid> = std::sync::OnceLock::new();
    format!(
        "nqn.2014-08.org.nvmexpress:uuid:{}",
        ID.get_or_init(Uuid::new_v4)
    )
}

/// The host ID for `hostnqn`: its UUID when it is a UUID-based NQN, else a random one.
pub fn hostid_for(hostnqn: &str) -> [u8; 16] {
    hostnqn
        .strip_prefix("nqn.2014-08.org.nvmexpress:uuid:")
        .and_then(|u| Uuid::parse_str(u).ok())
        .unwrap_or_else(Uuid::new_v4)
        .into_bytes()
}

/// Starts attaching: `done` gets the bdev names (or what failed) on the app thread.
pub fn attach(
    spec: Spec,
    done: impl FnOnce(Result<Vec<String>, HostError>) + 'static,
) -> Result<(), HostError> {
    let thread = Thread::current().ok_or_else(|| HostError::Gone("not on a reactor".into()))?;
    if let Some(existing) = lookup(&spec.name) {
        return Err(exists_error(&existing.spec, &spec));
    }
    spec.reconnect.check().map_err(HostError::invalid)?;
    let hz = poller::time::ticks_hz();
    let app = thread.handle();
    let sh = Arc::new_cyclic(|weak: &std::sync::Weak<Shared>| {
        let weak = weak.clone();
        Shared {
            io_device: IoDevice::new(&format!("nvme_ctrlr_{}", spec.name), move || {
                IoQueue::new(weak.upgrade().ok_or(libc::ENODEV)?)
            }),
            spec,
            state: AtomicU8::new(State::Attaching as u8),
            assoc: AtomicU64::new(0),
            fast_fail: AtomicBool::new(false),
            cntlid: AtomicU64::new(0),
            conn: Mutex::new(None),
            qids: Mutex::new(Vec::new()),
            app,
        }
    });
    let mut c = Ctrlr {
        policy: Policy::new(sh.spec.reconnect, hz),
        sh: sh.clone(),
        admin: None,
        mode: Mode::Attach,
        step: Step::Down,
        step_cid: None,
        step_deadline: 0,
        step_not_before: 0,
        rdy_deadline: 0,
        cap: Cap::from_u64(0),
        vs: 0,
        cdata: None,
        io_queues: 0,
        kato_ms: 0,
        ka_cid: None,
        ka_sent: 0,
        ka_next: 0,
        aer_cid: None,
        aer_wanted: false,
        log_cid: None,
        rescan_pending: false,
        scan_list: Vec::new(),
        scan_found: Vec::new(),
        namespaces: Vec::new(),
        attach_rsp: Some(Box::new(done)),
        detach_done: Vec::new(),
        unregistering: Arc::new(AtomicUsize::new(0)),
        delete_reason: String::new(),
        poller: None,
        next_admin_poll: 0,
        hz,
        lost_at: 0,
        last_error: String::new(),
        attempts: 0,
    };
    c.begin_association(now())?;
    let c = Rc::new(RefCell::new(c));
    let weak = Rc::downgrade(&c);
    let poller = Poller::register("nvme_ctrlr_admin", 0, move || {
        let Some(c) = weak.upgrade() else {
            return PollStatus::Idle;
        };
        let Ok(mut c) = c.try_borrow_mut() else {
            return PollStatus::Idle;
        };
        c.poll()
    })
    .ok_or_else(|| HostError::Gone("not on a reactor".into()))?;
    c.borrow_mut().poller = Some(poller);
    lock(&REGISTRY).push(sh);
    CTRLRS.with(|l| l.borrow_mut().push(c));
    Ok(())
}

/// SPDK's answers for a second attach under an existing name (one path per controller here).
fn exists_error(existing: &Spec, new: &Spec) -> HostError {
    if new.multipath == "disable" {
        return HostError::Exists(format!(
            "A controller named {} already exists and multipath is disabled",
            new.name
        ));
    }
    if existing.trid.traddr == new.trid.traddr
        && existing.trid.trsvcid == new.trid.trsvcid
        && existing.hostaddr == new.hostaddr
        && existing.hostsvcid == new.hostsvcid
    {
        return HostError::Exists(format!(
            "A controller named {} already exists with the specified network path",
            new.name
        ));
    }
    if existing.trid.subnqn != new.trid.subnqn {
        return HostError::invalid(format!(
            "A controller named {} already exists, but uses a different subnqn ({})",
            new.name, existing.trid.subnqn
        ));
    }
    HostError::Unsupported(format!(
        "A controller named {} already exists: a second path (multipath or failover) is not supported",
        new.name
    ))
}

/// Detaches `name` (path selectors already checked): `done` runs once its bdevs are gone and
/// the connections closed.
pub fn detach(
    name: &str,
    done: impl FnOnce(Result<(), HostError>) + Send + 'static,
) -> Result<(), HostError> {
    let gone = || HostError::NotFound(format!("Controller {name} does not exist"));
    let sh = lookup(name).ok_or_else(gone)?;
    let mut done = Some(Box::new(done) as DetachDone);
    with_ctrlr(&sh, |c| {
        if let Some(d) = done.take() {
            c.detach_done.push(d);
        }
        c.delete("detached by request");
    })
    .ok_or_else(gone)
}

/// Deletes every controller at once (module fini): no clean shutdown, sockets closed.
pub fn fini() {
    let list: Vec<Rc<RefCell<Ctrlr>>> = CTRLRS.with(|l| std::mem::take(&mut *l.borrow_mut()));
    for c in list {
        if let Ok(mut c) = c.try_borrow_mut() {
            c.sh.set_state(State::Deleting);
            if let Some(mut a) = c.admin.take() {
                a.take_outstanding(|_, _| {});
                a.shutdown();
            }
            if let Some(p) = c.poller.take() {
                p.unregister();
            }
            if let Some(r) = c.attach_rsp.take() {
                r(Err(HostError::Gone(
                    "the application is shutting down".into(),
                )));
            }
            for d in c.detach_done.drain(..) {
                d(Ok(()));
            }
        }
    }
    lock(&REGISTRY).clear();
}

impl Ctrlr {
    fn secs(&self, s: u64) -> u64 {
        s.saturating_mul(self.hz)
    }

    fn admin_params(&self) -> QpairParams {
        let spec = &self.sh.spec;
        let opts = options::get();
        let tcp = match opts.tcp_connect_timeout_ms {
            0 => self.secs(HANDSHAKE_SECS),
            ms => us(self.hz, u64::from(ms) * 1000),
        };
        let connect = match spec.fabrics_connect_timeout_us {
            0 => self.secs(HANDSHAKE_SECS),
            t => us(self.hz, t),
        };
        QpairParams {
            addr: spec.addr,
            src: spec.src,
            qid: 0,
            entries: ADMIN_ENTRIES,
            slots: ADMIN_SLOTS,
            kato_ms: opts.keep_alive_timeout_ms,
            cattr: if spec.disable_sq_flow_control {
                CATTR_DISABLE_SQ_FLOW_CONTROL
            } else {
                0
            },
            hostnqn: Nqn::new(&spec.hostnqn).unwrap_or_default(),
            subnqn: Nqn::new(&spec.trid.subnqn).unwrap_or_default(),
            hostid: spec.hostid,
            cntlid: 0,
            hdgst: spec.hdgst,
            ddgst: spec.ddgst,
            max_icd: ADMIN_ICD,
            max_transfer: OWN_LEN as u32,
            tcp_timeout: tcp,
            ic_timeout: self.secs(HANDSHAKE_SECS),
            connect_timeout: connect,
        }
    }

    /// Opens a new admin queue and starts the sequence.
    fn begin_association(&mut self, now: u64) -> Result<(), HostError> {
        self.attempts += 1;
        let p = self.admin_params();
        let deadline = now
            .saturating_add(p.tcp_timeout)
            .saturating_add(p.ic_timeout)
            .saturating_add(p.connect_timeout);
        self.admin = Some(Qpair::connect(p, now)?);
        self.step = Step::Connecting;
        self.step_cid = None;
        self.step_deadline = deadline;
        self.ka_cid = None;
        self.aer_cid = None;
        self.log_cid = None;
        self.scan_found.clear();
        Ok(())
    }

    fn poll(&mut self) -> PollStatus {
        let now = now();
        let mut busy = false;
        // The reconnect policy's clocks first: they may delete the controller.
        while let Some(a) = self.policy.poll(now) {
            busy = true;
            self.policy_action(a, now);
        }
        if self.mode == Mode::Deleting {
            busy |= self.poll_deletion(now);
            return PollStatus::from(busy);
        }
        if self.admin.is_none() {
            return PollStatus::from(busy);
        }
        // Once ready, the admin queue is polled every nvme_adminq_poll_period_us.
        if self.step == Step::Ready && now < self.next_admin_poll {
            return PollStatus::from(busy);
        }
        let period = options::get().nvme_adminq_poll_period_us;
        self.next_admin_poll = now.saturating_add(us(self.hz, period));
        busy |= self.poll_admin(now);
        PollStatus::from(busy)
    }

    /// Polls the admin queue and runs what its completions, timers and the sequence ask.
    fn poll_admin(&mut self, now: u64) -> bool {
        let Some(qp) = self.admin.as_mut() else {
            return false;
        };
        let res = qp.poll(now);
        let mut busy = false;
        while let Some(qp) = self.admin.as_mut() {
            let Some((cid, cqe, data)) = qp.pop_completion(|c, own| (c.cid, c.cqe, own_copy(own)))
            else {
                break;
            };
            busy = true;
            if let Err(e) = self.completed(cid, cqe, &data, now) {
                self.association_failed(e, now);
                return true;
            }
        }
        match res {
            Err(e) => {
                self.association_failed(e, now);
                return true;
            }
            Ok(p) => {
                busy |= p.busy;
                if p.connected.is_some() && self.step == Step::Connecting {
                    if let Some(c) = p.connected {
                        self.sh.cntlid.store(u64::from(c), Ordering::Relaxed);
                    }
                    self.next_step(Step::GetCap, now);
                }
            }
        }
        if let Err(e) = self.timers(now) {
            self.association_failed(e, now);
            return true;
        }
        if let Some(qp) = self.admin.as_mut()
            && let Err(e) = qp.flush()
        {
            self.association_failed(e, now);
            return true;
        }
        busy
    }

    fn submit(&mut self, sqe: Sqe, xfer: Xfer, len: usize) -> Result<u16, HostError> {
        let qp = self
            .admin
            .as_mut()
            .ok_or_else(|| HostError::Gone("no admin queue".into()))?;
        let src = if len > 0 { Src::Own } else { Src::None };
        qp.submit(
            Command {
                sqe,
                xfer,
                len,
                src,
            },
            None,
            |_| {},
        )
        .map_err(|_| HostError::protocol("admin queue: no free command slot"))
    }

    fn completed(&mut self, cid: u16, cqe: Cqe, data: &[u8], now: u64) -> Result<(), HostError> {
        if self.step_cid == Some(cid) {
            self.step_cid = None;
            return self.step_done(cqe, data, now);
        }
        if self.ka_cid == Some(cid) {
            self.ka_cid = None;
            if !cqe.status.is_success() {
                tracing::warn!(
                    "nvme controller {}: Keep Alive failed: {}",
                    self.sh.spec.name,
                    cqe.status
                );
            }
            return Ok(());
        }
        if self.aer_cid == Some(cid) {
            self.aer_cid = None;
            return self.aer_done(cqe, now);
        }
        if self.log_cid == Some(cid) {
            self.log_cid = None;
            self.rescan_pending = true;
            return Ok(());
        }
        Ok(())
    }

    /// Step timeouts, delayed steps, keep alive and the rescan after a notice.
    fn timers(&mut self, now: u64) -> Result<(), HostError> {
        match self.step {
            Step::Ready => {
                if self.kato_ms != 0 {
                    if let Some(cid) = self.ka_cid {
                        let kato = us(self.hz, u64::from(self.kato_ms) * 1000);
                        if now.saturating_sub(self.ka_sent) > kato {
                            return Err(HostError::Timeout(format!(
                                "keep alive timeout: no answer to Keep Alive (command {cid}) in {} ms",
                                self.kato_ms
                            )));
                        }
                    } else if now >= self.ka_next {
                        let sqe = Sqe::new(admin::KEEP_ALIVE, 0, 0);
                        self.ka_cid = Some(self.submit(sqe, Xfer::None, 0)?);
                        self.ka_sent = now;
                        self.ka_next = now.saturating_add(self.ka_period());
                    }
                }
                if self.rescan_pending && self.log_cid.is_none() {
                    self.rescan_pending = false;
                    self.next_step(Step::ActiveNs, now);
                }
            }
            Step::Connecting | Step::Down => {
                if self.step == Step::Connecting && now > self.step_deadline {
                    return Err(HostError::Timeout(format!(
                        "no admin queue connection to {} in time",
                        self.sh.spec.addr
                    )));
                }
            }
            _ => {
                if self.step_cid.is_none() && now >= self.step_not_before {
                    self.issue_step(now)?;
                }
                if now > self.step_deadline {
                    if matches!(self.step, Step::ShutdownSent | Step::ShutdownWait) {
                        self.close_admin();
                        return Ok(());
                    }
                    return Err(HostError::Timeout(format!(
                        "no answer from {} to step {:?} within {STEP_TIMEOUT_SECS} s",
                        self.sh.spec.addr, self.step
                    )));
                }
            }
        }
        Ok(())
    }

    /// The association failed (during the sequence, or after it was ready).
    fn association_failed(&mut self, e: HostError, now: u64) {
        if let Some(mut a) = self.admin.take() {
            a.take_outstanding(|_, _| {});
            a.shutdown();
        }
        let was = self.step;
        self.step = Step::Down;
        self.step_cid = None;
        self.ka_cid = None;
        self.aer_cid = None;
        self.log_cid = None;
        self.last_error = e.to_string();
        let spec = &self.sh.spec;
        match self.mode {
            Mode::Attach => self.fail_attach(e),
            Mode::Deleting => {
                // The shutdown failed or timed out: the connection is closed, carry on.
            }
            Mode::Running => {
                tracing::error!(
                    "nvme controller {} ({}): connection lost: {e}",
                    spec.name,
                    spec.place()
                );
                self.lost(now);
            }
            Mode::Reconnect => {
                let next = self.sh.spec.reconnect.reconnect_delay_sec;
                tracing::warn!(
                    "nvme controller {}: reconnect attempt {} failed at {was:?}: {e}; next in {next} s",
                    spec.name,
                    self.attempts
                );
                self.sh.set_state(State::ReconnectDelayed);
                if let Some(a) = self.policy.attempt_failed(now) {
                    self.policy_action(a, now);
                }
            }
        }
    }

    /// An I/O qpair of association `assoc` failed.
    fn io_failed(&mut self, assoc: u64, why: &str) {
        if self.mode != Mode::Running || assoc != self.sh.generation() {
            return;
        }
        let now = now();
        tracing::error!(
            "nvme controller {} ({}): I/O qpair failed: {why}",
            self.sh.spec.name,
            self.sh.spec.place()
        );
        if let Some(mut a) = self.admin.take() {
            a.take_outstanding(|_, _| {});
            a.shutdown();
        }
        self.step = Step::Down;
        self.lost(now);
    }

    /// The controller was enabled and is lost: hand it to the reconnect policy.
    fn lost(&mut self, now: u64) {
        self.lost_at = now;
        self.attempts = 0;
        // I/O threads tear their qpairs down and hold their I/O.
        self.sh.set_state(State::Resetting);
        let p = self.sh.spec.reconnect;
        match self.policy.failed(now) {
            Some(Action::Delete) => {
                tracing::error!(
                    "nvme controller {}: ctrlr_loss_timeout_sec is 0: deleting the controller and its bdevs ({})",
                    self.sh.spec.name,
                    self.bdev_names()
                );
                self.delete("the connection was lost and ctrlr_loss_timeout_sec is 0");
            }
            Some(a) => {
                tracing::warn!(
                    "nvme controller {}: reconnecting (ctrlr_loss_timeout_sec {}, reconnect_delay_sec {}, fast_io_fail_timeout_sec {}); I/O waits",
                    self.sh.spec.name,
                    p.ctrlr_loss_timeout_sec,
                    p.reconnect_delay_sec,
                    p.fast_io_fail_timeout_sec
                );
                self.mode = Mode::Reconnect;
                self.policy_action(a, now);
            }
            None => {}
        }
    }

    fn policy_action(&mut self, a: Action, now: u64) {
        let secs = now.saturating_sub(self.lost_at) / self.hz.max(1);
        match a {
            Action::Reconnect => {
                if self.mode != Mode::Reconnect {
                    return;
                }
                self.sh.set_state(State::Resetting);
                if let Err(e) = self.begin_association(now) {
                    // Could not even open a socket: counts as a failed attempt.
                    self.association_failed(e, now);
                }
            }
            Action::FailFast => {
                tracing::error!(
                    "nvme controller {}: lost for {secs} s (fast_io_fail_timeout_sec): failing its I/O with EIO while reconnecting goes on",
                    self.sh.spec.name
                );
                self.sh.fast_fail.store(true, Ordering::Release);
            }
            Action::Delete => {
                tracing::error!(
                    "nvme controller {} ({}): not reconnected within ctrlr_loss_timeout_sec ({} s; last error: {}): giving up, deleting the controller and its bdevs ({}); their I/O fails with EIO",
                    self.sh.spec.name,
                    self.sh.spec.place(),
                    self.sh.spec.reconnect.ctrlr_loss_timeout_sec,
                    self.last_error,
                    self.bdev_names()
                );
                self.delete("ctrlr_loss_timeout_sec expired");
            }
        }
    }

    fn bdev_names(&self) -> String {
        let v: Vec<&str> = self.namespaces.iter().map(|n| n.bdev.name()).collect();
        if v.is_empty() {
            "no bdevs".into()
        } else {
            v.join(", ")
        }
    }

    fn fail_attach(&mut self, e: HostError) {
        tracing::error!(
            "nvme controller {}: cannot attach {}: {e}",
            self.sh.spec.name,
            self.sh.spec.place()
        );
        // The name is free again before the answer goes out.
        lock(&REGISTRY).retain(|s| !Arc::ptr_eq(s, &self.sh));
        if let Some(r) = self.attach_rsp.take() {
            r(Err(e));
        }
        self.delete("attach failed");
    }

    /// Starts deleting: bdevs unregistered, then a clean shutdown, then everything released.
    fn delete(&mut self, why: &str) {
        if self.mode == Mode::Deleting {
            return;
        }
        let from_attach = self.mode == Mode::Attach;
        if let Some(r) = self.attach_rsp.take() {
            r(Err(HostError::Gone(format!(
                "controller {} was deleted while attaching ({why})",
                self.sh.spec.name
            ))));
        }
        self.mode = Mode::Deleting;
        self.delete_reason = why.to_string();
        self.sh.set_state(State::Deleting);
        if !from_attach {
            tracing::info!("nvme controller {}: deleting ({why})", self.sh.spec.name);
        }
        let list = std::mem::take(&mut self.namespaces);
        self.unregistering.store(list.len(), Ordering::Release);
        for n in list {
            let pending = self.unregistering.clone();
            n.bdev.unregister(move |_| {
                pending.fetch_sub(1, Ordering::AcqRel);
            });
        }
        // Drop the AER and anything else outstanding; keep the queue for the shutdown.
        self.ka_cid = None;
        self.aer_cid = None;
        self.log_cid = None;
        if self.step != Step::Ready {
            self.close_admin();
        }
    }

    fn poll_deletion(&mut self, now: u64) -> bool {
        if self.unregistering.load(Ordering::Acquire) > 0 {
            // Keep the admin queue answering while the bdevs drain.
            if let Some(qp) = self.admin.as_mut()
                && qp.poll(now).is_err()
            {
                self.close_admin();
            }
            return false;
        }
        if self.admin.is_some() && self.step == Step::Ready {
            self.next_step(Step::ShutdownSent, now);
            return true;
        }
        if self.admin.is_some() {
            let busy = self.poll_admin(now);
            if self.admin.is_some() {
                return busy;
            }
        }
        self.finish_deletion();
        true
    }

    fn close_admin(&mut self) {
        if let Some(mut a) = self.admin.take() {
            a.take_outstanding(|_, _| {});
            a.shutdown();
        }
        self.step = Step::Down;
    }

    fn finish_deletion(&mut self) {
        if let Some(p) = self.poller.take() {
            p.unregister();
        }
        let name = self.sh.spec.name.clone();
        lock(&REGISTRY).retain(|s| !Arc::ptr_eq(s, &self.sh));
        let me: *const Ctrlr = self;
        CTRLRS.with(|l| l.borrow_mut().retain(|c| !std::ptr::eq(c.as_ptr(), me)));
        tracing::info!("nvme controller {name}: deleted ({})", self.delete_reason);
        for d in self.detach_done.drain(..) {
            d(Ok(()));
        }
    }
}

/// The own buffer's bytes a completion may need (admin data is at most a page).
fn own_copy(own: &[u8]) -> Vec<u8> {
    own.to_vec()
}

/// A controller's phase, for tests and logs.
pub fn policy_phase(name: &str) -> Option<PolicyPhase> {
    let sh = lookup(name)?;
    with_ctrlr(&sh, |c| c.policy.phase())
}
