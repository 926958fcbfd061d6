//! The target's model: subsystems, their namespaces (each an open, claimed bdev), allowed hosts,
//! listen addresses and live controllers. Changed only on the control path (RPC, hot-remove),
//! under a short mutex; the data path reads a namespace table a poll group refreshes when a
//! subsystem's generation moves (one atomic load per poll), so I/O never takes the lock.

use crate::target::TargetError;
use bdev::{BdevDesc, BdevEvent};
use poller::ThreadHandle;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use uuid::Uuid;

/// The well-known NQN of the discovery subsystem.
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";
/// The module name namespace bdevs are claimed with.
pub const CLAIM_MODULE: &str = "nvmf";
/// Largest valid NSID (0xFFFFFFFF means "all namespaces").
const NSID_MAX: u32 = 0xFFFF_FFFE;

/// A transport address, as `listen_address` in SPDK's RPCs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenAddress {
    /// "TCP".
    pub trtype: String,
    /// "IPv4" or "IPv6".
    pub adrfam: String,
    pub traddr: String,
    pub trsvcid: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenAddressParams {
    trtype: String,
    #[serde(default)]
    adrfam: Option<String>,
    traddr: String,
    #[serde(default)]
    trsvcid: Option<String>,
}

impl ListenAddress {
    /// Checks an RPC's `listen_address` object (trtype and adrfam in any case).
    pub fn from_json(v: &Value) -> Result<ListenAddress, TargetError> {
        let p: ListenAddressParams = serde_json::from_value(v.clone())
            .map_err(|e| TargetError::invalid(format!("listen_address: {e}")))?;
        if !p.trtype.eq_ignore_ascii_case("tcp") {
            return Err(TargetError::invalid(format!(
                "listen_address: trtype {} is not supported (only TCP)",
                p.trtype
            )));
        }
        let ip: IpAddr = p.traddr.parse().map_err(|_| {
            TargetError::invalid(format!(
                "listen_address: traddr {} is not an IP address",
                p.traddr
            ))
        })?;
        let adrfam = match p.adrfam.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None => {
                if ip.is_ipv4() {
                    "IPv4"
                } else {
                    "IPv6"
                }
            }
            Some("ipv4") if ip.is_ipv4() => "IPv4",
            Some("ipv6") if ip.is_ipv6() => "IPv6",
            Some(f) => {
                return Err(TargetError::invalid(format!(
                    "listen_address: adrfam {f} does not match traddr {}",
                    p.traddr
                )));
            }
        };
        let trsvcid = p
            .trsvcid
            .ok_or_else(|| TargetError::invalid("listen_address: trsvcid is required for TCP"))?;
        trsvcid.parse::<u16>().map_err(|_| {
            TargetError::invalid(format!("listen_address: trsvcid {trsvcid} is not a port"))
        })?;
        Ok(ListenAddress {
            trtype: "TCP".into(),
            adrfam: adrfam.into(),
            traddr: ip.to_string(),
            trsvcid,
        })
    }

    /// The address of a socket (a qpair's local or peer end).
    pub fn of_socket(addr: SocketAddr) -> ListenAddress {
        ListenAddress {
            trtype: "TCP".into(),
            adrfam: if addr.is_ipv4() { "IPv4" } else { "IPv6" }.into(),
            traddr: addr.ip().to_string(),
            trsvcid: addr.port().to_string(),
        }
    }

    pub fn socket_addr(&self) -> Option<SocketAddr> {
        Some(SocketAddr::new(
            self.traddr.parse().ok()?,
            self.trsvcid.parse().ok()?,
        ))
    }

    pub fn to_json(&self) -> Value {
        json!({"trtype": self.trtype, "adrfam": self.adrfam, "traddr": self.traddr,
               "trsvcid": self.trsvcid})
    }
}

/// A namespace: an open bdev claimed for this subsystem.
pub struct Namespace {
    pub nsid: u32,
    pub bdev_name: String,
    pub uuid: Uuid,
    pub nguid: [u8; 16],
    pub eui64: Option<[u8; 8]>,
    pub block_size: u32,
    pub num_blocks: u64,
    /// The bdev has a volatile write cache: the controller advertises VWC and honours FLUSH.
    pub volatile_cache: bool,
    pub desc: BdevDesc,
}

impl Namespace {
    pub fn to_json(&self) -> Value {
        let mut v = json!({"nsid": self.nsid, "bdev_name": self.bdev_name, "name": self.bdev_name,
                           "nguid": hex_upper(&self.nguid), "uuid": self.uuid.to_string()});
        if let Some(e) = &self.eui64 {
            v["eui64"] = json!(hex_upper(e));
        }
        v
    }
}

fn hex_upper(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

fn parse_hex<const N: usize>(field: &str, s: &str) -> Result<[u8; N], TargetError> {
    let s: String = s.chars().filter(|c| *c != '-').collect();
    let bad = || TargetError::invalid(format!("{field} {s} is not {} hex digits", N * 2));
    if s.len() != N * 2 || !s.is_ascii() {
        return Err(bad());
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(i * 2..i * 2 + 2).ok_or_else(bad)?, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// What a live controller offers the control plane: implemented by the data plane, whose
/// controller lives on one poll group thread; each call may come from any thread and must only
/// message that thread or take a short lock.
pub trait ControllerEvents: Send + Sync {
    /// Namespace `nsid` was added, removed or resized: note it in the changed namespace list
    /// and complete an outstanding Asynchronous Event Request.
    fn namespace_changed(&self, nsid: u32);
    /// The host lost access (subsystem deleted, host removed): disconnect every qpair.
    fn disconnect(&self);
    /// The controller's qpairs, for `nvmf_subsystem_get_qpairs`.
    fn qpairs(&self) -> Vec<QpairInfo>;
    /// I/O qpairs connected now.
    fn num_io_qpairs(&self) -> u32;
}

/// One qpair, as `nvmf_subsystem_get_qpairs` shows it.
#[derive(Clone, Debug)]
pub struct QpairInfo {
    pub cntlid: u16,
    pub qid: u16,
    pub state: &'static str,
    pub thread: String,
    pub hostnqn: String,
    pub listen: ListenAddress,
    pub peer: ListenAddress,
}

impl QpairInfo {
    pub fn to_json(&self) -> Value {
        json!({"cntlid": self.cntlid, "qid": self.qid, "state": self.state,
               "thread": self.thread, "hostnqn": self.hostnqn,
               "listen_address": self.listen.to_json(), "peer_address": self.peer.to_json()})
    }
}

/// A controller registered in its subsystem at admin Connect, removed when it goes.
pub struct ControllerEntry {
    pub cntlid: u16,
    pub hostnqn: String,
    pub hostid: Uuid,
    pub discovery: bool,
    /// The poll group thread that owns the controller (its admin qpair's).
    pub thread: ThreadHandle,
    pub events: Arc<dyn ControllerEvents>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubsystemType {
    Discovery,
    Nvme,
}

/// `nvmf_create_subsystem`'s parameters.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSubsystemParams {
    pub nqn: String,
    #[serde(default)]
    pub tgt_name: Option<String>,
    #[serde(default = "d_serial")]
    pub serial_number: String,
    #[serde(default = "d_model")]
    pub model_number: String,
    #[serde(default)]
    pub admin_label: Option<String>,
    #[serde(default = "d_max_ns")]
    pub max_namespaces: u32,
    #[serde(default)]
    pub allow_any_host: bool,
    #[serde(default)]
    pub ana_reporting: bool,
    #[serde(default = "d_min_cntlid")]
    pub min_cntlid: u16,
    #[serde(default = "d_max_cntlid")]
    pub max_cntlid: u16,
    #[serde(default)]
    pub dmrsl: u32,
    #[serde(default)]
    pub wzsl: u8,
    #[serde(default)]
    pub passthrough: bool,
    #[serde(default)]
    pub enable_nssr: bool,
}

fn d_serial() -> String {
    "00000000000000000000".into()
}
fn d_model() -> String {
    "SPDK bdev Controller".into()
}
fn d_max_ns() -> u32 {
    32
}
fn d_min_cntlid() -> u16 {
    1
}
fn d_max_cntlid() -> u16 {
    0xFFEF
}

/// `nvmf_subsystem_add_ns`'s `namespace` object.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceParams {
    #[serde(default)]
    pub nsid: u32,
    pub bdev_name: String,
    #[serde(default)]
    pub nguid: Option<String>,
    #[serde(default)]
    pub eui64: Option<String>,
    #[serde(default)]
    pub uuid: Option<String>,
    #[serde(default)]
    pub ptpl_file: Option<String>,
    #[serde(default)]
    pub anagrpid: Option<u32>,
    #[serde(default)]
    pub no_auto_visible: bool,
    #[serde(default)]
    pub hide_metadata: bool,
}

/// A subsystem's state, behind its mutex.
pub struct SubsystemState {
    pub nqn: String,
    pub subtype: SubsystemType,
    pub params: CreateSubsystemParams,
    pub allow_any_host: bool,
    pub hosts: Vec<String>,
    pub listeners: Vec<ListenAddress>,
    pub namespaces: BTreeMap<u32, Arc<Namespace>>,
    pub controllers: Vec<ControllerEntry>,
    next_cntlid: u16,
    /// Set by nvmf_delete_subsystem; the data plane drops its tables for it.
    pub deleted: bool,
}

/// A subsystem, shared by the control plane and every poll group.
pub struct Subsystem {
    state: Mutex<SubsystemState>,
    /// Bumped by every change the data plane must see (namespaces, hosts, deletion).
    generation: AtomicU64,
}

impl Subsystem {
    fn new(nqn: &str, subtype: SubsystemType, params: CreateSubsystemParams) -> Arc<Subsystem> {
        Arc::new(Subsystem {
            state: Mutex::new(SubsystemState {
                nqn: nqn.into(),
                subtype,
                allow_any_host: params.allow_any_host || subtype == SubsystemType::Discovery,
                next_cntlid: params.min_cntlid,
                params,
                hosts: Vec::new(),
                listeners: Vec::new(),
                namespaces: BTreeMap::new(),
                controllers: Vec::new(),
                deleted: false,
            }),
            generation: AtomicU64::new(1),
        })
    }

    /// The state, for a short look or change (never held across I/O or a message wait).
    pub fn lock(&self) -> MutexGuard<'_, SubsystemState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes every time the data plane must refresh what it caches of this subsystem.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn bump(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub fn nqn(&self) -> String {
        self.lock().nqn.clone()
    }

    pub fn is_discovery(&self) -> bool {
        self.lock().subtype == SubsystemType::Discovery
    }
}

impl SubsystemState {
    /// May `hostnqn` connect?
    pub fn allows_host(&self, hostnqn: &str) -> bool {
        self.allow_any_host || self.hosts.iter().any(|h| h == hostnqn)
    }

    /// May a host connect to this subsystem through a connection accepted at `listen`? The
    /// discovery subsystem answers on every listener (as SPDK's does).
    pub fn allows_listener(&self, listen: &ListenAddress) -> bool {
        self.subtype == SubsystemType::Discovery || self.listeners.contains(listen)
    }

    /// A free controller ID in min_cntlid..=max_cntlid, in turn.
    pub fn allocate_cntlid(&mut self) -> Option<u16> {
        let (lo, hi) = (self.params.min_cntlid, self.params.max_cntlid);
        let span = u32::from(hi - lo) + 1;
        for _ in 0..span {
            let id = self.next_cntlid;
            self.next_cntlid = if id >= hi { lo } else { id + 1 };
            if !self.controllers.iter().any(|c| c.cntlid == id) {
                return Some(id);
            }
        }
        None
    }

    /// The highest NSID the controller reports (Identify's NN).
    pub fn max_nsid(&self) -> u32 {
        self.params
            .max_namespaces
            .max(self.namespaces.keys().next_back().copied().unwrap_or(0))
    }

    pub fn to_json(&self) -> Value {
        let listen: Vec<Value> = self.listeners.iter().map(ListenAddress::to_json).collect();
        let hosts: Vec<Value> = self.hosts.iter().map(|h| json!({"nqn": h})).collect();
        match self.subtype {
            SubsystemType::Discovery => json!({
                "nqn": self.nqn, "subtype": "Discovery", "listen_addresses": listen,
                "allow_any_host": self.allow_any_host, "hosts": hosts,
            }),
            SubsystemType::Nvme => {
                let p = &self.params;
                let mut v = json!({
                    "nqn": self.nqn, "subtype": "NVMe", "listen_addresses": listen,
                    "allow_any_host": self.allow_any_host, "hosts": hosts,
                    "serial_number": p.serial_number, "model_number": p.model_number,
                });
                if let Some(l) = &p.admin_label {
                    v["admin_label"] = json!(l);
                }
                if p.max_namespaces != 0 {
                    v["max_namespaces"] = json!(p.max_namespaces);
                }
                v["passthrough"] = json!(p.passthrough);
                v["min_cntlid"] = json!(p.min_cntlid);
                v["max_cntlid"] = json!(p.max_cntlid);
                v["dmrsl"] = json!(p.dmrsl);
                v["wzsl"] = json!(p.wzsl);
                v["namespaces"] = json!(
                    self.namespaces
                        .values()
                        .map(|n| n.to_json())
                        .collect::<Vec<_>>()
                );
                v
            }
        }
    }
}

/// The target: every subsystem, the discovery subsystem first.
pub struct Target {
    subsystems: Mutex<Vec<Arc<Subsystem>>>,
    /// Bumped when a subsystem or listener comes or goes (the discovery log's GENCTR).
    discovery_generation: AtomicU64,
    pub max_subsystems: AtomicU64,
}

impl Target {
    /// The process's target.
    pub fn get() -> &'static Target {
        static TARGET: std::sync::OnceLock<Target> = std::sync::OnceLock::new();
        TARGET.get_or_init(|| {
            let discovery = Subsystem::new(
                DISCOVERY_NQN,
                SubsystemType::Discovery,
                serde_json::from_value(json!({"nqn": DISCOVERY_NQN}))
                    .unwrap_or_else(|_| unreachable!("static parameters")),
            );
            Target {
                subsystems: Mutex::new(vec![discovery]),
                discovery_generation: AtomicU64::new(1),
                max_subsystems: AtomicU64::new(1024),
            }
        })
    }

    fn list(&self) -> MutexGuard<'_, Vec<Arc<Subsystem>>> {
        self.subsystems.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn subsystems(&self) -> Vec<Arc<Subsystem>> {
        self.list().clone()
    }

    pub fn find(&self, nqn: &str) -> Option<Arc<Subsystem>> {
        self.list().iter().find(|s| s.lock().nqn == nqn).cloned()
    }

    /// `find`, or the RPC error SPDK gives for an unknown NQN.
    pub fn get_subsystem(&self, nqn: &str) -> Result<Arc<Subsystem>, TargetError> {
        // "discovery" is SPDK's shorthand for the discovery subsystem's NQN.
        let nqn = if nqn == "discovery" {
            DISCOVERY_NQN
        } else {
            nqn
        };
        self.find(nqn).ok_or_else(|| {
            TargetError::not_found(format!("Unable to find subsystem with NQN {nqn}"))
        })
    }

    pub fn discovery_generation(&self) -> u64 {
        self.discovery_generation.load(Ordering::Acquire)
    }

    /// Something the discovery log shows changed: bump GENCTR and tell discovery controllers.
    pub fn discovery_changed(&self) {
        self.discovery_generation.fetch_add(1, Ordering::AcqRel);
        if let Some(d) = self.find(DISCOVERY_NQN) {
            for c in &d.lock().controllers {
                c.events.namespace_changed(0);
            }
        }
    }

    pub fn create_subsystem(&self, p: CreateSubsystemParams) -> Result<(), TargetError> {
        check_nqn(&p.nqn)?;
        if p.tgt_name.is_some() {
            return Err(TargetError::invalid(
                "tgt_name: only the default target exists",
            ));
        }
        if p.nqn == DISCOVERY_NQN {
            return Err(TargetError::Exists(format!(
                "Subsystem NQN '{}' already exists",
                p.nqn
            )));
        }
        check_ascii_field("serial_number", &p.serial_number, 20)?;
        check_ascii_field("model_number", &p.model_number, 40)?;
        if p.min_cntlid == 0 || p.min_cntlid > p.max_cntlid || p.max_cntlid > 0xFFEF {
            return Err(TargetError::invalid(format!(
                "min_cntlid {} / max_cntlid {} must satisfy 1 <= min <= max <= 65519",
                p.min_cntlid, p.max_cntlid
            )));
        }
        if p.ana_reporting || p.passthrough || p.enable_nssr {
            return Err(TargetError::invalid(
                "ana_reporting, passthrough and enable_nssr are not supported",
            ));
        }
        let mut list = self.list();
        if list.iter().any(|s| s.lock().nqn == p.nqn) {
            return Err(TargetError::Exists(format!(
                "Subsystem NQN '{}' already exists",
                p.nqn
            )));
        }
        // The discovery subsystem does not count.
        if (list.len() as u64) > self.max_subsystems.load(Ordering::Relaxed) {
            return Err(TargetError::Busy(format!(
                "max_subsystems ({}) reached",
                self.max_subsystems.load(Ordering::Relaxed)
            )));
        }
        let nqn = p.nqn.clone();
        list.push(Subsystem::new(&nqn, SubsystemType::Nvme, p));
        drop(list);
        self.discovery_changed();
        Ok(())
    }

    /// Deletes a subsystem: its controllers are disconnected and its namespaces released once
    /// the poll groups drop what they hold.
    pub fn delete_subsystem(&self, nqn: &str) -> Result<(), TargetError> {
        let s = self.get_subsystem(nqn)?;
        if s.is_discovery() {
            return Err(TargetError::invalid(
                "the discovery subsystem cannot be deleted",
            ));
        }
        self.list().retain(|x| !Arc::ptr_eq(x, &s));
        let namespaces = {
            let mut st = s.lock();
            st.deleted = true;
            for c in &st.controllers {
                c.events.disconnect();
            }
            std::mem::take(&mut st.namespaces)
        };
        s.bump();
        drop(namespaces);
        crate::target::listener::release_all(&s);
        self.discovery_changed();
        Ok(())
    }

    /// Adds a namespace; returns its NSID (the lowest free one when none is asked for).
    pub fn add_namespace(&self, nqn: &str, p: NamespaceParams) -> Result<u32, TargetError> {
        let s = self.get_subsystem(nqn)?;
        if s.is_discovery() {
            return Err(TargetError::invalid(
                "the discovery subsystem has no namespaces",
            ));
        }
        if p.ptpl_file.is_some() || p.anagrpid.is_some_and(|a| a != 0) || p.no_auto_visible {
            return Err(TargetError::invalid(
                "ptpl_file, anagrpid and no_auto_visible are not supported",
            ));
        }
        let nguid = p
            .nguid
            .as_deref()
            .map(|g| parse_hex::<16>("nguid", g))
            .transpose()?;
        let eui64 = p
            .eui64
            .as_deref()
            .map(|g| parse_hex::<8>("eui64", g))
            .transpose()?;
        let uuid = p
            .uuid
            .as_deref()
            .map(|u| {
                Uuid::parse_str(u)
                    .map_err(|_| TargetError::invalid(format!("uuid {u} is not a UUID")))
            })
            .transpose()?;
        {
            let st = s.lock();
            let max = st.params.max_namespaces;
            if max != 0 && st.namespaces.len() as u32 >= max {
                return Err(TargetError::Busy(format!(
                    "subsystem {nqn} has its max_namespaces ({max}) already"
                )));
            }
            if p.nsid > NSID_MAX || (max != 0 && p.nsid > max) {
                return Err(TargetError::invalid(format!(
                    "nsid {} is out of range",
                    p.nsid
                )));
            }
            if p.nsid != 0 && st.namespaces.contains_key(&p.nsid) {
                return Err(TargetError::Exists(format!(
                    "Requested NSID {} already in use",
                    p.nsid
                )));
            }
        }
        let weak = Arc::downgrade(&s);
        let bdev_name = p.bdev_name.clone();
        let desc = BdevDesc::open(&p.bdev_name, true, move |ev| {
            if let BdevEvent::Remove = ev
                && let Some(s) = weak.upgrade()
            {
                hot_remove(&s, &bdev_name);
            }
        })?;
        desc.claim(CLAIM_MODULE)?;
        let b = desc.bdev().clone();
        let uuid = uuid.unwrap_or_else(|| b.uuid());
        let ns_nguid = nguid.unwrap_or(*uuid.as_bytes());
        let volatile_cache = b.props().write_cache;
        let mut st = s.lock();
        let nsid = match p.nsid {
            0 => (1..=NSID_MAX)
                .find(|n| !st.namespaces.contains_key(n))
                .ok_or_else(|| TargetError::Busy("no free NSID".into()))?,
            n => n,
        };
        if st.namespaces.contains_key(&nsid) {
            return Err(TargetError::Exists(format!(
                "Requested NSID {nsid} already in use"
            )));
        }
        let ns = Namespace {
            nsid,
            bdev_name: b.name().to_string(),
            uuid,
            nguid: ns_nguid,
            eui64,
            block_size: b.block_size(),
            num_blocks: b.num_blocks(),
            volatile_cache,
            desc,
        };
        st.namespaces.insert(nsid, Arc::new(ns));
        for c in &st.controllers {
            c.events.namespace_changed(nsid);
        }
        drop(st);
        s.bump();
        Ok(nsid)
    }

    pub fn remove_namespace(&self, nqn: &str, nsid: u32) -> Result<(), TargetError> {
        let s = self.get_subsystem(nqn)?;
        let removed = {
            let mut st = s.lock();
            let ns = st.namespaces.remove(&nsid).ok_or_else(|| {
                TargetError::not_found(format!("Invalid parameters: no namespace {nsid} in {nqn}"))
            })?;
            for c in &st.controllers {
                c.events.namespace_changed(nsid);
            }
            ns
        };
        s.bump();
        // The descriptor closes once the poll groups drop their references too.
        drop(removed);
        Ok(())
    }

    pub fn add_host(&self, nqn: &str, host: &str) -> Result<(), TargetError> {
        check_nqn(host)?;
        let s = self.get_subsystem(nqn)?;
        let mut st = s.lock();
        if st.hosts.iter().any(|h| h == host) {
            return Err(TargetError::Exists(format!(
                "Host {host} is already allowed"
            )));
        }
        st.hosts.push(host.into());
        drop(st);
        s.bump();
        self.discovery_changed();
        Ok(())
    }

    /// Removes a host; its controllers on this subsystem are disconnected (as SPDK does).
    pub fn remove_host(&self, nqn: &str, host: &str) -> Result<(), TargetError> {
        let s = self.get_subsystem(nqn)?;
        let mut st = s.lock();
        let before = st.hosts.len();
        st.hosts.retain(|h| h != host);
        if st.hosts.len() == before {
            return Err(TargetError::not_found(format!(
                "Host {host} is not allowed on {nqn}"
            )));
        }
        if !st.allow_any_host {
            for c in st.controllers.iter().filter(|c| c.hostnqn == host) {
                c.events.disconnect();
            }
        }
        drop(st);
        s.bump();
        self.discovery_changed();
        Ok(())
    }

    pub fn allow_any_host(&self, nqn: &str, allow: bool) -> Result<(), TargetError> {
        let s = self.get_subsystem(nqn)?;
        if s.is_discovery() {
            return Err(TargetError::invalid(
                "the discovery subsystem allows any host",
            ));
        }
        s.lock().allow_any_host = allow;
        s.bump();
        self.discovery_changed();
        Ok(())
    }
}

/// A namespace's bdev is going away: remove the namespace (hosts get the AEN); its in-flight
/// I/O completes through the bdev layer, and the descriptor closes when the poll groups let go.
fn hot_remove(s: &Arc<Subsystem>, bdev_name: &str) {
    let (nqn, nsids): (String, Vec<u32>) = {
        let st = s.lock();
        let ids = st
            .namespaces
            .values()
            .filter(|n| n.bdev_name == bdev_name)
            .map(|n| n.nsid)
            .collect();
        (st.nqn.clone(), ids)
    };
    for nsid in nsids {
        tracing::info!(subsystem = %nqn, nsid, bdev = bdev_name, "namespace removed with its bdev");
        if let Err(e) = Target::get().remove_namespace(&nqn, nsid) {
            tracing::warn!("removing namespace {nsid} of {nqn}: {e}");
        }
    }
}

/// NQNs are UTF-8 strings of at most 223 bytes ("nqn." + a date and a domain, or a UUID form).
pub fn check_nqn(nqn: &str) -> Result<(), TargetError> {
    if nqn.is_empty() || nqn.len() > 223 {
        return Err(TargetError::invalid(format!(
            "Invalid NQN \"{nqn}\": length must be 1..223"
        )));
    }
    if !nqn.starts_with("nqn.") {
        return Err(TargetError::invalid(format!(
            "Invalid NQN \"{nqn}\": must start with \"nqn.\""
        )));
    }
    if nqn.chars().any(|c| c.is_control()) {
        return Err(TargetError::invalid(format!(
            "Invalid NQN \"{nqn}\": control characters"
        )));
    }
    Ok(())
}

fn check_ascii_field(field: &str, v: &str, max: usize) -> Result<(), TargetError> {
    if v.len() > max || !v.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(TargetError::invalid(format!(
            "{field} \"{v}\" must be printable ASCII of at most {max} characters"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_are_checked_and_normalised() {
        let a = ListenAddress::from_json(
            &json!({"trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": "4420"}),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            a.to_json(),
            json!({"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": "4420"})
        );
        for bad in [
            json!({"trtype": "RDMA", "traddr": "127.0.0.1", "trsvcid": "4420"}),
            json!({"trtype": "TCP", "traddr": "localhost", "trsvcid": "4420"}),
            json!({"trtype": "TCP", "traddr": "127.0.0.1"}),
            json!({"trtype": "TCP", "traddr": "127.0.0.1", "trsvcid": "x"}),
            json!({"trtype": "TCP", "adrfam": "IPv6", "traddr": "127.0.0.1", "trsvcid": "1"}),
        ] {
            assert!(ListenAddress::from_json(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn nqns_and_hex_ids() {
        assert!(check_nqn("nqn.2016-06.io.spdk:cnode1").is_ok());
        assert!(check_nqn("cnode1").is_err());
        assert!(check_nqn(&format!("nqn.{}", "a".repeat(300))).is_err());
        assert_eq!(
            parse_hex::<8>("eui64", "ABCDEF0123456789").ok(),
            Some([0xAB, 0xCD, 0xEF, 0x01, 0x23, 0x45, 0x67, 0x89])
        );
        assert!(parse_hex::<8>("eui64", "ABCD").is_err());
        assert!(parse_hex::<8>("eui64", "ZZCDEF0123456789").is_err());
    }
}
