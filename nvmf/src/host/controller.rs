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

use crate::host::channel::IoQueue;
use crate::host::error::HostError;
use crate::host::options::{self, MultipathOpts};
use crate::host::qpair::{ADMIN_ICD, Command, HANDSHAKE_SECS, OWN_LEN, Qpair, QpairParams, Src};
use crate::host::reconnect::{Action, Phase as PolicyPhase, Policy, ReconnectParams};
use crate::wire::command::{Cqe, Sqe, Xfer, admin};
use crate::wire::fabrics::{
    CATTR_DISABLE_SQ_FLOW_CONTROL, Cap, Cc, Csts, Nqn, PropertyGet, PropertySet, reg, shutdown,
};
use crate::wire::features::{AsyncEvent, FeatureCommand, NumberOfQueues, aec, fid};
use crate::wire::identify::{
    self, IdentifyCommand, IdentifyController, IdentifyNamespace, NsIdDescriptor, NsIdDescriptors,
    NsList, cns,
};
use crate::wire::log::{GetLogPage, lid};
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

/// One step of the sequence that (re)builds the association.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Connecting,
    GetCap,
    GetVs,
    GetCc,
    SetCc,
    WaitRdy,
    IdentifyCtrl,
    SetAec,
    GetKato,
    SetQueues,
    ActiveNs,
    IdentifyNs(usize),
    NsDesc(usize),
    Ready,
    /// No association (lost, waiting for the next attempt, or deleted).
    Down,
    /// CC.SHN sent; waiting for CSTS.SHST.
    ShutdownSent,
    ShutdownWait,
}

/// What a scan found for one active namespace.
#[derive(Clone, Debug, PartialEq)]
pub struct NsFound {
    pub nsid: u32,
    pub block_size: u32,
    pub num_blocks: u64,
    pub uuid: Option<Uuid>,
    pub nguid: [u8; 16],
    pub eui64: [u8; 8],
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
        }
    }
    lock(&REGISTRY).clear();
}

fn identify_sqe(cns: u8, nsid: u32) -> Sqe {
    IdentifyCommand {
        cns,
        ..IdentifyCommand::default()
    }
    .to_sqe(0, nsid, crate::wire::command::Sgl::transport(0))
}

fn set_features_sqe(fid: u8, value: u32) -> Sqe {
    FeatureCommand {
        fid,
        cdw11: value,
        ..FeatureCommand::default()
    }
    .to_set_sqe(0, 0)
}

fn get_features_sqe(fid: u8) -> Sqe {
    FeatureCommand {
        fid,
        ..FeatureCommand::default()
    }
    .to_get_sqe(0, 0)
}

/// A UUID for a namespace from what it reports: its UUID, else its NGUID, else one derived
/// from the serial number (generate_uuids) or none.
fn ns_uuid(f: &NsFound, sn: &str, generate: bool) -> Option<Uuid> {
    if let Some(u) = f.uuid.filter(|u| !u.is_nil()) {
        return Some(u);
    }
    if f.nguid != [0; 16] {
        return Some(Uuid::from_bytes(f.nguid));
    }
    generate.then(|| Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("{sn}:{}", f.nsid).as_bytes()))
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

    /// Moves to `step` and issues its command (unless it waits for `step_not_before`).
    fn next_step(&mut self, step: Step, now: u64) {
        self.step = step;
        self.step_cid = None;
        self.step_deadline = now.saturating_add(self.secs(STEP_TIMEOUT_SECS));
        if let Err(e) = self.issue_step(now) {
            self.association_failed(e, now);
        }
    }

    fn issue_step(&mut self, now: u64) -> Result<(), HostError> {
        if now < self.step_not_before {
            return Ok(());
        }
        let page = OWN_LEN;
        let (sqe, xfer, len) = match self.step {
            Step::GetCap => (prop_get(reg::CAP, 8), Xfer::None, 0),
            Step::GetVs => (prop_get(reg::VS, 4), Xfer::None, 0),
            Step::GetCc => (prop_get(reg::CC, 4), Xfer::None, 0),
            Step::SetCc => {
                let cc = Cc {
                    en: true,
                    css: 0,
                    mps: 0,
                    ams: 0,
                    shn: 0,
                    iosqes: 6,
                    iocqes: 4,
                    crime: false,
                };
                (prop_set(reg::CC, cc.to_u32()), Xfer::None, 0)
            }
            Step::WaitRdy | Step::ShutdownWait => (prop_get(reg::CSTS, 4), Xfer::None, 0),
            Step::IdentifyCtrl => (
                identify_sqe(cns::CONTROLLER, 0),
                Xfer::ControllerToHost,
                page,
            ),
            Step::SetAec => (
                set_features_sqe(fid::ASYNC_EVENT_CONFIG, aec::NS_ATTR),
                Xfer::None,
                0,
            ),
            Step::GetKato => (get_features_sqe(fid::KEEP_ALIVE_TIMER), Xfer::None, 0),
            Step::SetQueues => {
                let n =
                    u16::try_from(self.sh.spec.num_io_queues.clamp(1, 65535)).unwrap_or(u16::MAX);
                let q = NumberOfQueues::from_counts(n, n);
                (
                    set_features_sqe(fid::NUMBER_OF_QUEUES, q.to_u32()),
                    Xfer::None,
                    0,
                )
            }
            Step::ActiveNs => (
                identify_sqe(cns::ACTIVE_NS_LIST, 0),
                Xfer::ControllerToHost,
                page,
            ),
            Step::IdentifyNs(i) => {
                let nsid = self.scan_list.get(i).copied().unwrap_or(0);
                (
                    identify_sqe(cns::NAMESPACE, nsid),
                    Xfer::ControllerToHost,
                    page,
                )
            }
            Step::NsDesc(i) => {
                let nsid = self.scan_found.get(i).map_or(0, |f| f.nsid);
                (
                    identify_sqe(cns::NS_ID_DESCRIPTORS, nsid),
                    Xfer::ControllerToHost,
                    page,
                )
            }
            Step::ShutdownSent => {
                let cc = Cc {
                    en: true,
                    iosqes: 6,
                    iocqes: 4,
                    shn: shutdown::SHN_NORMAL,
                    ..Cc::default()
                };
                (prop_set(reg::CC, cc.to_u32()), Xfer::None, 0)
            }
            Step::Connecting | Step::Ready | Step::Down => return Ok(()),
        };
        self.step_cid = Some(self.submit(sqe, xfer, len)?);
        Ok(())
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

    fn need(cqe: &Cqe, what: &str) -> Result<(), HostError> {
        if cqe.status.is_success() {
            Ok(())
        } else {
            Err(HostError::Status {
                what: what.to_string(),
                status: cqe.status,
            })
        }
    }

    fn step_done(&mut self, cqe: Cqe, data: &[u8], now: u64) -> Result<(), HostError> {
        match self.step {
            Step::GetCap => {
                Self::need(&cqe, "Property Get CAP")?;
                self.cap = Cap::from_u64(cqe.result_u64());
                self.next_step(Step::GetVs, now);
            }
            Step::GetVs => {
                Self::need(&cqe, "Property Get VS")?;
                self.vs = cqe.dw0;
                self.next_step(Step::GetCc, now);
            }
            Step::GetCc => {
                Self::need(&cqe, "Property Get CC")?;
                let cc = Cc::from_u32(cqe.dw0);
                // CAP.TO is in 500 ms units.
                self.rdy_deadline = now.saturating_add(
                    us(self.hz, 500_000).saturating_mul(u64::from(self.cap.to).max(1)),
                );
                self.next_step(if cc.en { Step::WaitRdy } else { Step::SetCc }, now);
            }
            Step::SetCc => {
                Self::need(&cqe, "Property Set CC.EN")?;
                self.next_step(Step::WaitRdy, now);
            }
            Step::WaitRdy => {
                Self::need(&cqe, "Property Get CSTS")?;
                let csts = Csts::from_u32(cqe.dw0);
                if csts.cfs {
                    return Err(HostError::protocol(
                        "the controller reports a fatal status (CSTS.CFS)",
                    ));
                }
                if csts.rdy {
                    self.next_step(Step::IdentifyCtrl, now);
                } else if now > self.rdy_deadline {
                    return Err(HostError::Timeout(format!(
                        "the controller did not become ready within CAP.TO ({} ms)",
                        u32::from(self.cap.to) * 500
                    )));
                } else {
                    self.step_not_before = now.saturating_add(us(self.hz, CSTS_POLL_US));
                    self.next_step(Step::WaitRdy, now);
                }
            }
            Step::IdentifyCtrl => {
                Self::need(&cqe, "Identify Controller")?;
                let cd = IdentifyController::decode(data)
                    .map_err(|e| HostError::protocol(format!("Identify Controller: {e}")))?;
                self.check_identify(&cd)?;
                let ns_notices = cd.oaes & identify::oaes::NS_ATTRIBUTE != 0;
                self.cdata = Some(Box::new(cd));
                self.aer_wanted = ns_notices;
                self.next_step(
                    if ns_notices {
                        Step::SetAec
                    } else {
                        Step::GetKato
                    },
                    now,
                );
            }
            Step::SetAec => {
                if !cqe.status.is_success() {
                    tracing::warn!(
                        "nvme controller {}: Set Features Async Event Configuration failed ({}); no namespace notices",
                        self.sh.spec.name,
                        cqe.status
                    );
                    self.aer_wanted = false;
                }
                self.next_step(Step::GetKato, now);
            }
            Step::GetKato => {
                let asked = options::get().keep_alive_timeout_ms;
                self.kato_ms = if cqe.status.is_success() && cqe.dw0 != 0 && asked != 0 {
                    cqe.dw0
                } else {
                    asked
                };
                self.next_step(Step::SetQueues, now);
            }
            Step::SetQueues => {
                Self::need(&cqe, "Set Features Number of Queues")?;
                let q = NumberOfQueues::from_u32(cqe.dw0);
                let granted = q.sq_count().min(q.cq_count());
                let asked = self.sh.spec.num_io_queues.clamp(1, 65535);
                self.io_queues = u16::try_from(granted.min(asked)).unwrap_or(u16::MAX);
                self.next_step(Step::ActiveNs, now);
            }
            Step::ActiveNs => {
                let nn = self.cdata.as_ref().map_or(0, |c| c.nn);
                self.scan_list = if cqe.status.is_success() {
                    NsList::decode(data)
                        .map(|l| l.collect())
                        .map_err(|e| HostError::protocol(format!("active namespace list: {e}")))?
                } else if cqe.status.dnr && nn <= 1024 {
                    // As Linux: without the list, every nsid up to NN.
                    (1..=nn).collect()
                } else {
                    return Err(HostError::Status {
                        what: "Identify Active Namespace List".into(),
                        status: cqe.status,
                    });
                };
                self.scan_found.clear();
                self.scan_next(0, now);
            }
            Step::IdentifyNs(i) => {
                let nsid = self.scan_list.get(i).copied().unwrap_or(0);
                if cqe.status.is_success() {
                    let ns = IdentifyNamespace::decode(data).map_err(|e| {
                        HostError::protocol(format!("Identify Namespace {nsid}: {e}"))
                    })?;
                    if let Some(found) = self.namespace_usable(nsid, &ns) {
                        self.scan_found.push(found);
                        if self.vs >= crate::wire::fabrics::VS_1_3 {
                            self.next_step(Step::NsDesc(self.scan_found.len() - 1), now);
                            return Ok(());
                        }
                    }
                } else {
                    tracing::warn!(
                        "nvme controller {}: Identify Namespace {nsid} failed: {}",
                        self.sh.spec.name,
                        cqe.status
                    );
                }
                self.scan_next(i + 1, now);
            }
            Step::NsDesc(j) => {
                if cqe.status.is_success()
                    && let Ok(descs) = NsIdDescriptors::decode(data)
                {
                    for d in descs.flatten() {
                        if let (NsIdDescriptor::Uuid(u), Some(f)) = (d, self.scan_found.get_mut(j))
                        {
                            f.uuid = Some(Uuid::from_bytes(u));
                        }
                    }
                }
                let nsid = self.scan_found.get(j).map_or(0, |f| f.nsid);
                let i = self
                    .scan_list
                    .iter()
                    .position(|&n| n == nsid)
                    .map_or(self.scan_list.len(), |p| p + 1);
                self.scan_next(i, now);
            }
            Step::ShutdownSent => {
                self.step_deadline = now.saturating_add(self.secs(SHUTDOWN_SECS));
                if cqe.status.is_success() {
                    self.next_step(Step::ShutdownWait, now);
                    self.step_deadline = now.saturating_add(self.secs(SHUTDOWN_SECS));
                } else {
                    self.close_admin();
                }
            }
            Step::ShutdownWait => {
                let csts = Csts::from_u32(cqe.dw0);
                if !cqe.status.is_success() || csts.shst == shutdown::SHST_COMPLETE {
                    self.close_admin();
                } else {
                    self.step_not_before = now.saturating_add(us(self.hz, CSTS_POLL_US));
                    let deadline = self.step_deadline;
                    self.next_step(Step::ShutdownWait, now);
                    self.step_deadline = deadline;
                }
            }
            Step::Connecting | Step::Ready | Step::Down => {}
        }
        Ok(())
    }

    /// Linux's checks of a fabrics controller's Identify data.
    fn check_identify(&self, cd: &IdentifyController) -> Result<(), HostError> {
        let connected = self.admin.as_ref().map_or(0, Qpair::cntlid);
        if cd.cntlid != connected {
            return Err(HostError::protocol(format!(
                "Identify Controller reports cntlid {}, the Connect gave {connected}",
                cd.cntlid
            )));
        }
        if cd.ioccsz < 4 {
            return Err(HostError::protocol(format!(
                "I/O command capsule size {} is under 4 (64 bytes)",
                cd.ioccsz
            )));
        }
        if cd.iorcsz < 1 {
            return Err(HostError::protocol("I/O response capsule size is 0"));
        }
        if cd.icdoff != 0 {
            return Err(HostError::Unsupported(format!(
                "in-capsule data offset {} is not supported",
                cd.icdoff
            )));
        }
        if cd.sgls & 3 == 0 {
            return Err(HostError::Unsupported(
                "Mandatory sgls are not supported".into(),
            ));
        }
        if cd.kas == 0 {
            return Err(HostError::protocol("keep alive support (KAS) is 0"));
        }
        if cd.maxcmd == 0 {
            tracing::warn!(
                "nvme controller {}: MAXCMD is 0, using the queue size",
                self.sh.spec.name
            );
        }
        Ok(())
    }

    fn namespace_usable(&self, nsid: u32, ns: &IdentifyNamespace) -> Option<NsFound> {
        let name = &self.sh.spec.name;
        if ns.ncap == 0 || ns.nsze == 0 {
            return None;
        }
        let Some(fmt) = ns.format() else {
            tracing::warn!("nvme controller {name}: namespace {nsid} has a bad FLBAS; skipped");
            return None;
        };
        if fmt.ms != 0 {
            tracing::warn!(
                "nvme controller {name}: namespace {nsid} has {} bytes of metadata per block, which is not supported; skipped",
                fmt.ms
            );
            return None;
        }
        let Some(bs) = fmt.block_size().filter(|b| (512..=65536).contains(b)) else {
            tracing::warn!(
                "nvme controller {name}: namespace {nsid} has an unusable block size; skipped"
            );
            return None;
        };
        Some(NsFound {
            nsid,
            block_size: bs,
            num_blocks: ns.nsze,
            uuid: None,
            nguid: ns.nguid,
            eui64: ns.eui64,
        })
    }

    fn scan_next(&mut self, i: usize, now: u64) {
        if i < self.scan_list.len() {
            self.next_step(Step::IdentifyNs(i), now);
        } else {
            self.association_ready(now);
        }
    }

    /// The sequence is done: publish the association, then register or update bdevs.
    fn association_ready(&mut self, now: u64) {
        let Some(cd) = self.cdata.as_deref().cloned() else {
            self.association_failed(HostError::protocol("no Identify data"), now);
            return;
        };
        let connected = self.admin.as_ref().map_or(0, Qpair::cntlid);
        let maxh2c = self.admin.as_ref().map_or(0, Qpair::maxh2cdata);
        let page = 1u64 << (12 + u32::from(self.cap.mpsmin).min(20));
        let max_transfer = cd
            .max_transfer(page)
            .unwrap_or(MAX_TRANSFER_CAP)
            .min(MAX_TRANSFER_CAP)
            .max(page);
        let mut entries = IO_QUEUE_SIZE.min(u32::from(self.cap.mqes) + 1);
        if cd.maxcmd != 0 {
            entries = entries.min(u32::from(cd.maxcmd));
        }
        let entries = u16::try_from(entries.max(2)).unwrap_or(u16::MAX);
        let opts = options::get();
        let slots = match opts.io_queue_requests {
            0 => entries,
            r => entries.min(u16::try_from(r).unwrap_or(u16::MAX)).max(1),
        };
        let mut params = self.admin_params();
        // hostsvcid is the admin queue's port; I/O queues bind the address alone.
        params.src = params.src.map(|a| SocketAddr::new(a.ip(), 0));
        params.entries = entries;
        params.slots = slots;
        params.kato_ms = 0;
        params.cntlid = connected;
        params.max_icd = (cd.ioccsz as usize * 16).saturating_sub(64);
        params.max_transfer = u32::try_from(max_transfer).unwrap_or(u32::MAX);
        *lock(&self.sh.conn) = Some(IoConnInfo {
            params,
            max_queues: self.io_queues,
            max_transfer,
        });
        let sh = self.sh.clone();
        let spec = &sh.spec;
        let found = std::mem::take(&mut self.scan_found);
        self.step = Step::Ready;
        self.step_not_before = 0;
        self.ka_next = now.saturating_add(self.ka_period());
        match self.mode {
            Mode::Attach => {
                let mut names = Vec::new();
                let mut err = None;
                for f in &found {
                    match self.register_ns(f, &cd) {
                        Ok(name) => names.push(name),
                        Err(e) => err = Some(e),
                    }
                }
                if let Some(e) = err {
                    self.fail_attach(e);
                    return;
                }
                if names.len() > spec.max_bdevs as usize {
                    self.fail_attach(HostError::Io {
                        errno: libc::ERANGE,
                        msg: format!(
                            "Maximum number of namespaces supported per NVMe controller is {}. Unable to return all names of created bdevs",
                            spec.max_bdevs
                        ),
                    });
                    return;
                }
                tracing::info!(
                    "nvme controller {} attached: {} cntlid {}, {} {} {}, {} I/O queues of {entries}, max transfer {max_transfer}, MAXH2CDATA {maxh2c}, digests header {} data {}; namespaces: {}",
                    spec.name,
                    spec.place(),
                    connected,
                    cd.mn,
                    cd.sn,
                    cd.fr,
                    self.io_queues,
                    spec.hdgst,
                    spec.ddgst,
                    self.ns_summary()
                );
                self.mode = Mode::Running;
                self.sh.assoc.fetch_add(1, Ordering::AcqRel);
                self.sh.set_state(State::Enabled);
                if let Some(r) = self.attach_rsp.take() {
                    r(Ok(names));
                }
            }
            Mode::Reconnect | Mode::Running => {
                let reconnect = self.mode == Mode::Reconnect;
                self.apply_scan(&found, &cd);
                if reconnect {
                    let secs = now.saturating_sub(self.lost_at) as f64 / self.hz as f64;
                    tracing::info!(
                        "nvme controller {}: reconnected to {} after {secs:.1} s ({} attempts), cntlid {connected}; resuming I/O",
                        spec.name,
                        spec.place(),
                        self.attempts
                    );
                    self.policy.connected();
                    self.mode = Mode::Running;
                    self.sh.fast_fail.store(false, Ordering::Release);
                    self.sh.assoc.fetch_add(1, Ordering::AcqRel);
                    self.sh.set_state(State::Enabled);
                }
            }
            Mode::Deleting => {}
        }
        self.attempts = 0;
        self.arm_aer();
    }

    fn ns_summary(&self) -> String {
        if self.namespaces.is_empty() {
            return "none".into();
        }
        self.namespaces
            .iter()
            .map(|n| {
                format!(
                    "{} ({} blocks of {} bytes)",
                    n.bdev.name(),
                    n.info.num_blocks,
                    n.info.block_size
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn register_ns(&mut self, f: &NsFound, cd: &IdentifyController) -> Result<String, HostError> {
        let generate = options::get().generate_uuids;
        let uuid = ns_uuid(f, cd.sn.as_str(), generate);
        let bdev = crate::host::register_bdev(&self.sh, f, uuid, cd)?;
        let name = bdev.name().to_string();
        self.namespaces.push(Namespace {
            info: f.clone(),
            bdev,
        });
        Ok(name)
    }

    /// After a reconnect or a namespace notice: new namespaces become bdevs, gone ones go.
    fn apply_scan(&mut self, found: &[NsFound], cd: &IdentifyController) {
        let name = self.sh.spec.name.clone();
        let gone: Vec<usize> = self
            .namespaces
            .iter()
            .enumerate()
            .filter(|(_, n)| !found.iter().any(|f| f.nsid == n.info.nsid))
            .map(|(i, _)| i)
            .collect();
        for i in gone.into_iter().rev() {
            let n = self.namespaces.remove(i);
            tracing::warn!(
                "nvme controller {name}: namespace {} is gone; removing {}",
                n.info.nsid,
                n.bdev.name()
            );
            n.bdev.unregister(|_| {});
        }
        for f in found {
            match self.namespaces.iter().find(|n| n.info.nsid == f.nsid) {
                Some(n) => {
                    if n.info.block_size != f.block_size || n.info.num_blocks != f.num_blocks {
                        tracing::warn!(
                            "nvme controller {name}: namespace {} changed geometry ({} x {} -> {} x {}); {} keeps the old one",
                            f.nsid,
                            n.info.num_blocks,
                            n.info.block_size,
                            f.num_blocks,
                            f.block_size,
                            n.bdev.name()
                        );
                    }
                }
                None => match self.register_ns(f, cd) {
                    Ok(b) => {
                        tracing::info!("nvme controller {name}: new namespace {}: {b}", f.nsid)
                    }
                    Err(e) => tracing::error!(
                        "nvme controller {name}: namespace {}: cannot register its bdev: {e}",
                        f.nsid
                    ),
                },
            }
        }
    }

    fn arm_aer(&mut self) {
        if !self.aer_wanted || self.aer_cid.is_some() || self.step != Step::Ready {
            return;
        }
        let sqe = Sqe::new(admin::ASYNC_EVENT_REQUEST, 0, 0);
        match self.submit(sqe, Xfer::None, 0) {
            Ok(cid) => self.aer_cid = Some(cid),
            Err(e) => tracing::warn!(
                "nvme controller {}: cannot send an AER: {e}",
                self.sh.spec.name
            ),
        }
    }

    fn aer_done(&mut self, cqe: Cqe, _now: u64) -> Result<(), HostError> {
        if !cqe.status.is_success() {
            // Aborted at a reset or refused: do not insist.
            tracing::debug!(
                "nvme controller {}: AER completed with {}",
                self.sh.spec.name,
                cqe.status
            );
            return Ok(());
        }
        let ev = AsyncEvent::from_dw0(cqe.dw0);
        tracing::info!(
            "nvme controller {}: asynchronous event type {} info {:#x} log page {:#x}",
            self.sh.spec.name,
            ev.event_type,
            ev.info,
            ev.log_page
        );
        if ev == AsyncEvent::NS_ATTR_CHANGED {
            // Reading the Changed Namespace List clears the event; then rescan.
            let sqe = GetLogPage::bytes(lid::CHANGED_NS, 0, OWN_LEN as u32).to_sqe(
                0,
                u32::MAX,
                crate::wire::command::Sgl::transport(0),
            );
            match self.submit(sqe, Xfer::ControllerToHost, OWN_LEN) {
                Ok(cid) => self.log_cid = Some(cid),
                Err(_) => self.rescan_pending = true,
            }
        } else if ev.log_page != 0 {
            // Read (and so clear) whatever log the event points at, so events keep coming.
            let sqe = GetLogPage::bytes(ev.log_page, 0, 512).to_sqe(
                0,
                u32::MAX,
                crate::wire::command::Sgl::transport(0),
            );
            let _ = self.submit(sqe, Xfer::ControllerToHost, 512);
        }
        self.arm_aer();
        Ok(())
    }

    fn ka_period(&self) -> u64 {
        if self.kato_ms == 0 {
            u64::MAX
        } else {
            us(self.hz, u64::from(self.kato_ms) * 500)
        }
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

fn prop_get(offset: u32, size: u8) -> Sqe {
    PropertyGet { size, offset }.to_sqe(0)
}

fn prop_set(offset: u32, value: u32) -> Sqe {
    PropertySet {
        size: 4,
        offset,
        value: u64::from(value),
    }
    .to_sqe(0)
}

/// A controller's phase, for tests and logs.
pub fn policy_phase(name: &str) -> Option<PolicyPhase> {
    let sh = lookup(name)?;
    with_ctrlr(&sh, |c| c.policy.phase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_and_host_ids() {
        let f = NsFound {
            nsid: 1,
            block_size: 512,
            num_blocks: 8,
            uuid: None,
            nguid: [0; 16],
            eui64: [0; 8],
        };
        assert_eq!(ns_uuid(&f, "SN", false), None);
        let g = ns_uuid(&f, "SN", true).unwrap();
        assert_eq!(ns_uuid(&f, "SN", true), Some(g));
        assert_ne!(ns_uuid(&f, "SN2", true), Some(g));
        let with_nguid = NsFound {
            nguid: [7; 16],
            ..f.clone()
        };
        assert_eq!(
            ns_uuid(&with_nguid, "SN", false),
            Some(Uuid::from_bytes([7; 16]))
        );
        let u = Uuid::new_v4();
        let with_uuid = NsFound {
            uuid: Some(u),
            ..with_nguid
        };
        assert_eq!(ns_uuid(&with_uuid, "SN", false), Some(u));

        let nqn = default_hostnqn();
        assert_eq!(nqn, default_hostnqn());
        let id = nqn.rsplit(':').next().unwrap();
        assert_eq!(hostid_for(&nqn), Uuid::parse_str(id).unwrap().into_bytes());
        assert_ne!(hostid_for("nqn.2016-06.io.spdk:host1"), [0; 16]);
    }
}
