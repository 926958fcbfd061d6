//! The bdev_nvme_* RPCs with SPDK's names and parameters: decode, check, act, answer.
//! SPDK's whole parameter list is accepted; what this initiator does not implement (TLS,
//! DH-HMAC-CHAP, protection information, a second path, transports other than TCP) is refused
//! with a message naming it.

use crate::host::controller::{self, Spec, Trid};
use crate::host::error::HostError;
use crate::host::options::{self, MultipathOpts};
use crate::wire::fabrics::NQN_MAX_LEN;
use rpc::{Responder, RpcError, StateMask};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;

/// SPDK's `trtype` values; only TCP is implemented.
const TRTYPES: [&str; 6] = ["pcie", "rdma", "fc", "tcp", "vfiouser", "custom"];
/// The NVMe/TCP port when `trsvcid` is not given.
const DEFAULT_TRSVCID: &str = "4420";
/// SPDK's transport ID field sizes (with the terminating NUL).
const TRADDR_MAX: usize = 256;
const TRSVCID_MAX: usize = 32;
/// SPDK's fabrics_connect_timeout_us default (release builds).
const FABRICS_CONNECT_TIMEOUT_US: u64 = 500_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachParams {
    pub name: String,
    pub trtype: String,
    pub traddr: String,
    #[serde(default)]
    pub adrfam: Option<String>,
    #[serde(default)]
    pub trsvcid: Option<String>,
    #[serde(default)]
    pub priority: Option<String>,
    #[serde(default)]
    pub subnqn: Option<String>,
    #[serde(default)]
    pub hostnqn: Option<String>,
    #[serde(default)]
    pub hostaddr: Option<String>,
    #[serde(default)]
    pub hostsvcid: Option<String>,
    #[serde(default)]
    pub prchk_reftag: bool,
    #[serde(default)]
    pub prchk_guard: bool,
    #[serde(default)]
    pub hdgst: bool,
    #[serde(default)]
    pub ddgst: bool,
    #[serde(default)]
    pub fabrics_connect_timeout_us: Option<u64>,
    #[serde(default)]
    pub multipath: Option<String>,
    #[serde(default)]
    pub num_io_queues: Option<u32>,
    #[serde(default)]
    pub ctrlr_loss_timeout_sec: Option<i32>,
    #[serde(default)]
    pub reconnect_delay_sec: Option<u32>,
    #[serde(default)]
    pub fast_io_fail_timeout_sec: Option<u32>,
    #[serde(default)]
    pub psk: Option<String>,
    #[serde(default)]
    pub max_bdevs: Option<u32>,
    #[serde(default)]
    pub dhchap_key: Option<String>,
    #[serde(default)]
    pub dhchap_ctrlr_key: Option<String>,
    #[serde(default)]
    pub allow_unrecognized_csi: bool,
    #[serde(default)]
    pub multipath_opts: Option<MultipathOpts>,
    #[serde(default)]
    pub disable_sq_flow_control: bool,
}

fn check_len(what: &str, v: &str, max: usize) -> Result<(), HostError> {
    if v.len() >= max {
        Err(HostError::invalid(format!("{what} too long: {v}")))
    } else {
        Ok(())
    }
}

fn check_trtype(t: &str) -> Result<(), HostError> {
    let lower = t.to_ascii_lowercase();
    if lower == "tcp" {
        Ok(())
    } else if TRTYPES.contains(&lower.as_str()) {
        Err(HostError::Unsupported(format!(
            "trtype {t} is not supported: this initiator speaks NVMe/TCP only"
        )))
    } else {
        Err(HostError::invalid(format!("Failed to parse trtype: {t}")))
    }
}

/// SPDK's adrfam names (any case) as the names it prints; only IP families are usable.
fn parse_adrfam(a: &str) -> Result<&'static str, HostError> {
    match a.to_ascii_lowercase().as_str() {
        "ipv4" => Ok("IPv4"),
        "ipv6" => Ok("IPv6"),
        "ib" | "fc" | "intra_host" => Err(HostError::Unsupported(format!(
            "adrfam {a} is not supported over TCP"
        ))),
        _ => Err(HostError::invalid(format!("Failed to parse adrfam: {a}"))),
    }
}

fn parse_port(what: &str, s: &str) -> Result<u16, HostError> {
    s.parse::<u16>()
        .map_err(|_| HostError::invalid(format!("{what} {s} is not a TCP port number")))
}

/// Checks the request and settles every default.
pub fn spec_of(p: AttachParams) -> Result<Spec, HostError> {
    if p.name.is_empty() {
        return Err(HostError::invalid("name must not be empty"));
    }
    check_trtype(&p.trtype)?;
    check_len("traddr", &p.traddr, TRADDR_MAX)?;
    if let Some(s) = &p.trsvcid {
        check_len("trsvcid", s, TRSVCID_MAX)?;
    }
    let Some(subnqn) = p.subnqn.clone() else {
        return Err(HostError::invalid(
            "subnqn is required: attaching a discovery controller is not supported",
        ));
    };
    if subnqn.len() > NQN_MAX_LEN {
        return Err(HostError::invalid(format!("subnqn too long: {subnqn}")));
    }
    if let Some(h) = &p.hostnqn
        && h.len() > NQN_MAX_LEN
    {
        return Err(HostError::invalid(format!("hostnqn too long: {h}")));
    }
    if p.prchk_reftag || p.prchk_guard {
        return Err(HostError::Unsupported(
            "protection information checks (prchk_reftag, prchk_guard) are not supported".into(),
        ));
    }
    if p.psk.is_some() {
        return Err(HostError::Unsupported(
            "psk: NVMe/TCP over TLS is not supported".into(),
        ));
    }
    if p.dhchap_key.is_some() || p.dhchap_ctrlr_key.is_some() {
        return Err(HostError::Unsupported(
            "dhchap_key / dhchap_ctrlr_key: DH-HMAC-CHAP authentication is not supported".into(),
        ));
    }
    let multipath = p.multipath.clone().unwrap_or_else(|| "multipath".into());
    if !["disable", "failover", "multipath"].contains(&multipath.as_str()) {
        return Err(HostError::invalid(format!(
            "multipath: expected disable, failover or multipath, got {multipath}"
        )));
    }
    let multipath_opts = p.multipath_opts.clone().unwrap_or_default();
    multipath_opts.check()?;
    let num_io_queues = p.num_io_queues.unwrap_or(1024);
    if num_io_queues == 0 || num_io_queues > u32::from(u16::MAX) + 1 {
        return Err(HostError::invalid(format!(
            "num_io_queues out of bounds, min: 1 max: {}",
            u32::from(u16::MAX) + 1
        )));
    }
    let max_bdevs = p.max_bdevs.unwrap_or(128);
    if max_bdevs == 0 {
        return Err(HostError::invalid("max_bdevs cannot be zero"));
    }
    let ip: IpAddr = p.traddr.parse().map_err(|_| {
        HostError::invalid(format!(
            "traddr {} is not an IPv4 or IPv6 address (names are not resolved)",
            p.traddr
        ))
    })?;
    let family = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
    let adrfam = match &p.adrfam {
        Some(a) => parse_adrfam(a)?,
        None => family,
    };
    if adrfam != family {
        return Err(HostError::invalid(format!(
            "traddr {} is not an {adrfam} address",
            p.traddr
        )));
    }
    let trsvcid = p
        .trsvcid
        .clone()
        .unwrap_or_else(|| DEFAULT_TRSVCID.to_string());
    let addr = SocketAddr::new(ip, parse_port("trsvcid", &trsvcid)?);
    let src = match (&p.hostaddr, &p.hostsvcid) {
        (None, None) => None,
        (a, s) => {
            let ip: IpAddr = match a {
                Some(a) => a.parse().map_err(|_| {
                    HostError::invalid(format!("hostaddr {a} is not an IP address"))
                })?,
                None if ip.is_ipv4() => IpAddr::from([0u8; 4]),
                None => IpAddr::from([0u16; 8]),
            };
            let port = match s {
                Some(s) => parse_port("hostsvcid", s)?,
                None => 0,
            };
            Some(SocketAddr::new(ip, port))
        }
    };
    if p.priority.is_some() {
        tracing::debug!(
            "bdev_nvme_attach_controller {}: priority is ignored",
            p.name
        );
    }
    let opts = options::get();
    let reconnect = crate::host::reconnect::ReconnectParams {
        ctrlr_loss_timeout_sec: p
            .ctrlr_loss_timeout_sec
            .unwrap_or(opts.ctrlr_loss_timeout_sec),
        reconnect_delay_sec: p.reconnect_delay_sec.unwrap_or(opts.reconnect_delay_sec),
        fast_io_fail_timeout_sec: p
            .fast_io_fail_timeout_sec
            .unwrap_or(opts.fast_io_fail_timeout_sec),
    };
    reconnect.check().map_err(HostError::invalid)?;
    let hostnqn = p
        .hostnqn
        .clone()
        .unwrap_or_else(controller::default_hostnqn);
    Ok(Spec {
        name: p.name,
        trid: Trid {
            adrfam: adrfam.to_string(),
            traddr: p.traddr,
            trsvcid,
            subnqn,
        },
        addr,
        hostid: controller::hostid_for(&hostnqn),
        hostnqn,
        hostaddr: p.hostaddr,
        hostsvcid: p.hostsvcid,
        src,
        hdgst: p.hdgst,
        ddgst: p.ddgst,
        fabrics_connect_timeout_us: p
            .fabrics_connect_timeout_us
            .unwrap_or(FABRICS_CONNECT_TIMEOUT_US),
        num_io_queues,
        reconnect,
        max_bdevs,
        multipath,
        multipath_opts,
        disable_sq_flow_control: p.disable_sq_flow_control,
    })
}

fn attach(p: AttachParams, r: Responder) {
    let spec = match spec_of(p) {
        Ok(s) => s,
        Err(e) => return r.err(e.into()),
    };
    let name = spec.name.clone();
    // Answered once: by the attach when it ends, or here when it cannot start.
    let r = Rc::new(RefCell::new(Some(r)));
    let later = r.clone();
    let started = controller::attach(spec, move |res| {
        if let Some(r) = later.borrow_mut().take() {
            match res {
                Ok(names) => r.ok(json!(names)),
                Err(e) => r.err(e.into()),
            }
        }
    });
    if let Err(e) = started {
        tracing::error!("bdev_nvme_attach_controller {name}: {e}");
        if let Some(r) = r.borrow_mut().take() {
            r.err(e.into());
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DetachParams {
    name: String,
    #[serde(default)]
    trtype: Option<String>,
    #[serde(default)]
    traddr: Option<String>,
    #[serde(default)]
    adrfam: Option<String>,
    #[serde(default)]
    trsvcid: Option<String>,
    #[serde(default)]
    subnqn: Option<String>,
    #[serde(default)]
    hostaddr: Option<String>,
    #[serde(default)]
    hostsvcid: Option<String>,
}

/// Whether the path selectors of a detach name this controller's path.
fn path_matches(p: &DetachParams, s: &Spec) -> Result<bool, HostError> {
    if let Some(t) = &p.trtype {
        check_trtype(t)?;
    }
    let adrfam = match &p.adrfam {
        Some(a) => Some(parse_adrfam(a)?),
        None => None,
    };
    Ok(adrfam.is_none_or(|a| a == s.trid.adrfam)
        && p.traddr.as_ref().is_none_or(|a| *a == s.trid.traddr)
        && p.trsvcid.as_ref().is_none_or(|a| *a == s.trid.trsvcid)
        && p.subnqn.as_ref().is_none_or(|a| *a == s.trid.subnqn)
        && p.hostaddr
            .as_ref()
            .is_none_or(|a| Some(a) == s.hostaddr.as_ref())
        && p.hostsvcid
            .as_ref()
            .is_none_or(|a| Some(a) == s.hostsvcid.as_ref()))
}

fn detach(p: DetachParams, r: Responder) {
    let Some(sh) = controller::lookup(&p.name) else {
        return r.err(RpcError::errno(libc::ENODEV));
    };
    match path_matches(&p, &sh.spec) {
        Err(e) => return r.err(e.into()),
        Ok(false) => return r.err(RpcError::errno(libc::ENXIO)),
        Ok(true) => {}
    }
    let r = std::sync::Mutex::new(Some(r));
    let done = move |res: Result<(), HostError>| {
        if let Some(r) = r.lock().ok().and_then(|mut g| g.take()) {
            match res {
                Ok(()) => r.ok(json!(true)),
                Err(e) => r.err(e.into()),
            }
        }
    };
    if let Err(e) = controller::detach(&p.name, done) {
        tracing::error!("bdev_nvme_detach_controller {}: {e}", p.name);
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GetControllersParams {
    #[serde(default)]
    name: Option<String>,
}

fn get_controllers(p: GetControllersParams, r: Responder) {
    match p.name {
        Some(n) => match controller::lookup(&n) {
            Some(c) => r.ok(json!([c.info_json()])),
            None => r.err(RpcError::errno_msg(
                libc::EINVAL,
                format!("Controller {n} does not exist"),
            )),
        },
        None => r.ok(Value::Array(
            controller::all().iter().map(|c| c.info_json()).collect(),
        )),
    }
}

fn set_options(p: Map<String, Value>, r: Responder) {
    let merged = match options::get().merged(&p) {
        Ok(o) => o,
        Err(e) => return r.err(RpcError::invalid_params(e)),
    };
    if let Err(e) = merged.check() {
        return r.err(e.into());
    }
    if !controller::all().is_empty() {
        return r.err(RpcError::errno_msg(
            libc::EPERM,
            "RPC not permitted with nvme controllers already attached",
        ));
    }
    options::set(merged);
    r.ok(json!(true));
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HotplugParams {
    enable: bool,
    #[serde(default)]
    period_us: Option<u64>,
}

/// Accepted so SPDK's saved configs load: there is no PCIe to watch.
fn set_hotplug(p: HotplugParams, r: Responder) {
    if p.enable {
        return r.err(RpcError::errno_msg(
            libc::ENOTSUP,
            "hotplug watches PCIe NVMe devices, which this build does not drive",
        ));
    }
    if let Some(us) = p.period_us
        && us > 10_000_000
    {
        return r.err(RpcError::invalid_params("Invalid argument"));
    }
    r.ok(json!(true));
}

/// Registers the module and its methods.
pub fn register_rpcs() {
    crate::host::register_module();
    rpc::register("bdev_nvme_attach_controller", StateMask::RUNTIME, attach);
    rpc::register("bdev_nvme_detach_controller", StateMask::RUNTIME, detach);
    rpc::register(
        "bdev_nvme_get_controllers",
        StateMask::RUNTIME,
        get_controllers,
    );
    rpc::register("bdev_nvme_set_options", StateMask::BOTH, set_options);
    rpc::register("bdev_nvme_set_hotplug", StateMask::RUNTIME, set_hotplug);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(v: Value) -> Result<AttachParams, RpcError> {
        rpc::decode_params(Some(v))
    }

    fn base() -> Value {
        json!({"name": "Nvme0", "trtype": "tcp", "traddr": "127.0.0.1", "trsvcid": "4420",
               "subnqn": "nqn.2016-06.io.spdk:cnode1"})
    }

    fn with(extra: Value) -> Value {
        let mut b = base();
        if let (Some(m), Some(e)) = (b.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                m.insert(k.clone(), v.clone());
            }
        }
        b
    }

    fn err(extra: Value) -> (i32, String) {
        let e = spec_of(params(with(extra)).unwrap()).unwrap_err();
        (e.errno(), e.to_string())
    }

    #[test]
    fn attach_defaults_and_what_spdk_rpc_sends() {
        // spdk-rpc always sends the store_true flags.
        let s = spec_of(
            params(with(
                json!({"trtype": "TCP", "adrfam": "ipv4", "prchk_reftag": false,
                "prchk_guard": false, "hdgst": true, "ddgst": false,
                "allow_unrecognized_csi": false, "disable_sq_flow_control": false}),
            ))
            .unwrap(),
        )
        .unwrap();
        assert_eq!(s.addr, "127.0.0.1:4420".parse().unwrap());
        assert_eq!(s.trid.adrfam, "IPv4");
        assert!(s.hdgst && !s.ddgst);
        assert_eq!(s.num_io_queues, 1024);
        assert_eq!(s.max_bdevs, 128);
        assert_eq!(s.fabrics_connect_timeout_us, 500_000);
        assert_eq!(s.multipath, "multipath");
        assert!(s.hostnqn.starts_with("nqn.2014-08.org.nvmexpress:uuid:"));
        assert_eq!(s.reconnect, options::get().reconnect());
        let cfg = s.to_config_json();
        assert_eq!(cfg["method"], "bdev_nvme_attach_controller");
        let p = &cfg["params"];
        assert_eq!(p["trtype"], "TCP");
        assert_eq!(p["adrfam"], "IPv4");
        assert_eq!(p["traddr"], "127.0.0.1");
        assert_eq!(p["trsvcid"], "4420");
        assert_eq!(p["hostnqn"], s.hostnqn);
        assert_eq!(p["multipath"], "multipath");
        assert_eq!(p["multipath_opts"], json!({"policy": "active_passive"}));
        // What save_config writes is accepted back, unchanged.
        let again = spec_of(params(p.clone()).unwrap()).unwrap();
        assert_eq!(again.to_config_json(), cfg);

        let v6 = spec_of(params(with(json!({"traddr": "::1"}))).unwrap()).unwrap();
        assert_eq!(v6.trid.adrfam, "IPv6");
        let no_port = {
            let mut b = base();
            b.as_object_mut().unwrap().remove("trsvcid");
            spec_of(params(b).unwrap()).unwrap()
        };
        assert_eq!(no_port.addr.port(), 4420);
        let host = spec_of(
            params(with(
                json!({"hostaddr": "127.0.0.1", "hostnqn": "nqn.2016-06.io.spdk:host1"}),
            ))
            .unwrap(),
        )
        .unwrap();
        assert_eq!(host.src, Some("127.0.0.1:0".parse().unwrap()));
        assert_eq!(host.hostnqn, "nqn.2016-06.io.spdk:host1");
    }

    #[test]
    fn attach_refusals_name_what_is_wrong() {
        assert_eq!(err(json!({"trtype": "RDMA"})).0, libc::ENOTSUP);
        assert_eq!(
            err(json!({"trtype": "smoke"})),
            (libc::EINVAL, "Failed to parse trtype: smoke".into())
        );
        assert_eq!(
            err(json!({"adrfam": "ipx"})),
            (libc::EINVAL, "Failed to parse adrfam: ipx".into())
        );
        assert_eq!(err(json!({"adrfam": "ipv6"})).0, libc::EINVAL);
        assert_eq!(err(json!({"traddr": "localhost"})).0, libc::EINVAL);
        assert_eq!(err(json!({"trsvcid": "http"})).0, libc::EINVAL);
        assert_eq!(err(json!({"psk": "key0"})).0, libc::ENOTSUP);
        assert_eq!(err(json!({"dhchap_key": "key0"})).0, libc::ENOTSUP);
        assert_eq!(err(json!({"prchk_guard": true})).0, libc::ENOTSUP);
        assert_eq!(err(json!({"multipath": "sometimes"})).0, libc::EINVAL);
        assert_eq!(
            err(json!({"max_bdevs": 0})),
            (libc::EINVAL, "max_bdevs cannot be zero".into())
        );
        assert_eq!(
            err(json!({"num_io_queues": 0})),
            (
                libc::EINVAL,
                "num_io_queues out of bounds, min: 1 max: 65536".into()
            )
        );
        assert_eq!(
            err(json!({"reconnect_delay_sec": 2})),
            (
                libc::EINVAL,
                "Both reconnect_delay_sec and fast_io_fail_timeout_sec must be 0 if ctrlr_loss_timeout_sec is 0."
                    .into()
            )
        );
        assert_eq!(
            err(
                json!({"ctrlr_loss_timeout_sec": 5, "reconnect_delay_sec": 2,
                       "fast_io_fail_timeout_sec": 6})
            ),
            (
                libc::EINVAL,
                "fast_io_fail_timeout_sec can't be more than ctrlr_loss_timeout_sec.".into()
            )
        );
        let long = "x".repeat(300);
        assert_eq!(err(json!({"traddr": long})).0, libc::EINVAL);
        let mut b = base();
        b.as_object_mut().unwrap().remove("subnqn");
        assert_eq!(
            spec_of(params(b).unwrap()).unwrap_err().errno(),
            libc::EINVAL
        );
        // Unknown members are refused by name.
        let e = params(with(json!({"bogus": 1}))).unwrap_err();
        assert!(e.message().contains("unknown field `bogus`"), "{e}");
    }

    #[test]
    fn detach_selectors() {
        let s = spec_of(params(base()).unwrap()).unwrap();
        let d = |v: Value| -> DetachParams { rpc::decode_params(Some(v)).unwrap() };
        assert!(path_matches(&d(json!({"name": "Nvme0"})), &s).unwrap());
        assert!(
            path_matches(
                &d(json!({"name": "Nvme0", "trtype": "TCP", "adrfam": "IPv4",
                          "traddr": "127.0.0.1", "trsvcid": "4420",
                          "subnqn": "nqn.2016-06.io.spdk:cnode1"})),
                &s
            )
            .unwrap()
        );
        assert!(!path_matches(&d(json!({"name": "Nvme0", "trsvcid": "4421"})), &s).unwrap());
        assert!(!path_matches(&d(json!({"name": "Nvme0", "hostaddr": "127.0.0.1"})), &s).unwrap());
        assert!(path_matches(&d(json!({"name": "Nvme0", "trtype": "rdma"})), &s).is_err());
    }
}
