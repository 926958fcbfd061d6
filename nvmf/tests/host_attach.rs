//! The initiator's control path against our own target: bdev_nvme_attach_controller answers the
//! bdev names and the bdev has the namespace's geometry; get_controllers in SPDK's HEAD shape;
//! save_config writes an attach that a restart with it performs again; detach; and the
//! failures (nothing listening, an unknown subsystem, a second attach of a name, what is not
//! supported) answered with what failed.

mod common;

use common::host::*;
use serde_json::{Value, json};
use std::time::Duration;

fn bdev(c: &Client, name: &str) -> Value {
    c.call("bdev_get_bdevs", json!({"name": name}))[0].clone()
}

fn target_controllers(e: &Export) -> Vec<Value> {
    let mut rpc = tests::RawClient::connect(&e.sock());
    let a = rpc.call(
        "nvmf_subsystem_get_controllers",
        Some(json!({"nqn": SUBNQN})),
    );
    a["result"].as_array().cloned().unwrap_or_default()
}

#[test]
fn attach_get_controllers_save_config_detach() {
    let e = Export::start(vec![malloc("Malloc0", 32768, 512)], "Malloc0");
    let dir = tests::tempdir();
    let c = Client::start(dir.path(), "client", &config(vec![], vec![]));

    let names = c.call(
        "bdev_nvme_attach_controller",
        e.attach_params("Nvme0", json!({})),
    );
    assert_eq!(names, json!(["Nvme0n1"]));
    let b = bdev(&c, "Nvme0n1");
    assert_eq!(b["num_blocks"], 32768);
    assert_eq!(b["block_size"], 512);
    assert_eq!(b["product_name"], "NVMe disk");
    for t in ["read", "write", "flush"] {
        assert_eq!(b["supported_io_types"][t], true, "{t}: {b:#}");
    }
    assert_eq!(b["driver_specific"]["nvme"][0]["trid"]["subnqn"], SUBNQN);
    let log = c.proc.text();
    assert!(
        log.contains("nvme controller Nvme0 attached")
            && log.contains(&format!("127.0.0.1:{}", e.port))
            && log.contains("Nvme0n1 (32768 blocks of 512 bytes)"),
        "{log}"
    );

    // SPDK HEAD's shape.
    let ctrlrs = c.call("bdev_nvme_get_controllers", json!({}));
    let one = &ctrlrs[0];
    assert_eq!(one["name"], "Nvme0");
    let path = &one["ctrlrs"][0];
    assert_eq!(path["state"], "enabled");
    assert_eq!(
        path["trid"],
        json!({"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1",
               "trsvcid": e.port.to_string(), "subnqn": SUBNQN})
    );
    assert!(path["cntlid"].as_u64().is_some_and(|n| n > 0), "{path}");
    let hostnqn = path["host"]["nqn"].as_str().unwrap_or_default().to_string();
    assert!(hostnqn.starts_with("nqn.2014-08.org.nvmexpress:uuid:"));
    assert_eq!(path["host"]["addr"], "");
    assert_eq!(path["host"]["svcid"], "");
    assert_eq!(
        c.call("bdev_nvme_get_controllers", json!({"name": "Nvme0"})),
        ctrlrs
    );
    let (code, msg) = c.call_err("bdev_nvme_get_controllers", json!({"name": "Nvme9"}));
    assert_eq!(
        (code, msg.as_str()),
        (-22, "Controller Nvme9 does not exist")
    );
    // The target sees our host.
    let tc = target_controllers(&e);
    assert_eq!(tc.len(), 1, "{tc:?}");
    assert_eq!(tc[0]["hostnqn"], hostnqn.as_str());

    // A second attach of the name, and of an unsupported option.
    let (code, msg) = c.call_err(
        "bdev_nvme_attach_controller",
        e.attach_params("Nvme0", json!({})),
    );
    assert_eq!(code, -libc::EALREADY as i64, "{msg}");
    assert!(msg.contains("already exists"), "{msg}");
    let (code, msg) = c.call_err(
        "bdev_nvme_attach_controller",
        e.attach_params("Nvme1", json!({"psk": "key0"})),
    );
    assert_eq!(code, -libc::ENOTSUP as i64);
    assert!(msg.contains("TLS"), "{msg}");

    // save_config: the module's options first, then the attach with SPDK's members.
    let cfg = c.call("framework_get_config", json!({"name": "bdev"}));
    let entries = cfg.as_array().cloned().unwrap_or_default();
    let methods: Vec<&str> = entries
        .iter()
        .filter_map(|x| x["method"].as_str())
        .collect();
    let opts = methods.iter().position(|m| *m == "bdev_nvme_set_options");
    let att = methods
        .iter()
        .position(|m| *m == "bdev_nvme_attach_controller");
    assert!(opts.is_some() && att.is_some() && opts < att, "{methods:?}");
    let ap = &entries[att.unwrap_or_default()]["params"];
    for (k, v) in [
        ("name", json!("Nvme0")),
        ("trtype", json!("TCP")),
        ("adrfam", json!("IPv4")),
        ("traddr", json!("127.0.0.1")),
        ("trsvcid", json!(e.port.to_string())),
        ("subnqn", json!(SUBNQN)),
        ("hostnqn", json!(hostnqn)),
        ("prchk_reftag", json!(false)),
        ("prchk_guard", json!(false)),
        ("hdgst", json!(false)),
        ("ddgst", json!(false)),
        ("ctrlr_loss_timeout_sec", json!(0)),
        ("reconnect_delay_sec", json!(0)),
        ("fast_io_fail_timeout_sec", json!(0)),
        ("fabrics_connect_timeout_us", json!(500000)),
        ("num_io_queues", json!(1024)),
        ("disable_sq_flow_control", json!(false)),
    ] {
        assert_eq!(ap[k], v, "{k} in {ap:#}");
    }
    let saved = json!({"subsystems": [{"subsystem": "bdev", "config": cfg}]});
    let c2 = Client::start(dir.path(), "restarted", &saved);
    let b2 = bdev(&c2, "Nvme0n1");
    assert_eq!(
        (b2["num_blocks"].clone(), b2["block_size"].clone()),
        (json!(32768), json!(512))
    );
    let p2 = &c2.call("bdev_nvme_get_controllers", json!({}))[0]["ctrlrs"][0];
    assert_eq!(
        p2["host"]["nqn"],
        hostnqn.as_str(),
        "the saved hostnqn is used again"
    );
    drop(c2);

    // Detach: true once the bdev is gone and the connections are closed.
    let (code, _) = c.call_err("bdev_nvme_detach_controller", json!({"name": "Nvme9"}));
    assert_eq!(code, -libc::ENODEV as i64);
    let (code, _) = c.call_err(
        "bdev_nvme_detach_controller",
        json!({"name": "Nvme0", "trsvcid": "1"}),
    );
    assert_eq!(code, -libc::ENXIO as i64);
    assert_eq!(
        c.call(
            "bdev_nvme_detach_controller",
            json!({"name": "Nvme0", "traddr": "127.0.0.1"})
        ),
        json!(true)
    );
    let (code, _) = c.call_err("bdev_get_bdevs", json!({"name": "Nvme0n1"}));
    assert_eq!(code, -libc::ENODEV as i64);
    assert_eq!(c.call("bdev_nvme_get_controllers", json!({})), json!([]));
    poll_until(
        Duration::from_secs(20),
        "the target to drop the controller",
        || target_controllers(&e).is_empty().then_some(()),
    );
    // The name is free again.
    assert_eq!(
        c.call(
            "bdev_nvme_attach_controller",
            e.attach_params("Nvme0", json!({"hdgst": true, "ddgst": true}))
        ),
        json!(["Nvme0n1"])
    );
}

#[test]
fn attach_failures_say_what_failed() {
    let e = Export::start(vec![malloc("Malloc0", 2048, 512)], "Malloc0");
    let dir = tests::tempdir();
    let c = Client::start(dir.path(), "client", &config(vec![], vec![]));

    // Nothing listens there.
    let dead = tests::free_port();
    let (code, msg) = c.call_err(
        "bdev_nvme_attach_controller",
        json!({"name": "Nvme0", "trtype": "TCP", "traddr": "127.0.0.1",
               "trsvcid": dead.to_string(), "subnqn": SUBNQN}),
    );
    assert_eq!(code, -libc::ECONNREFUSED as i64, "{msg}");
    assert!(
        msg.contains("Connection refused") && msg.contains(&dead.to_string()),
        "{msg}"
    );

    // The target does not know the subsystem: its Connect status.
    let (code, msg) = c.call_err(
        "bdev_nvme_attach_controller",
        e.attach_params("Nvme0", json!({"subnqn": "nqn.2016-06.io.spdk:nope"})),
    );
    assert!(msg.contains("Connect") && msg.contains("refused"), "{msg}");
    assert!(code < 0, "{code}");

    // Bad parameters, SPDK's constraints.
    let (code, msg) = c.call_err(
        "bdev_nvme_attach_controller",
        e.attach_params(
            "Nvme0",
            json!({"ctrlr_loss_timeout_sec": 2, "reconnect_delay_sec": 3}),
        ),
    );
    assert_eq!(
        (code, msg.as_str()),
        (
            -22,
            "reconnect_delay_sec can't be more than ctrlr_loss_timeout_sec."
        )
    );
    let (code, _) = c.call_err(
        "bdev_nvme_attach_controller",
        e.attach_params("Nvme0", json!({"trtype": "RDMA"})),
    );
    assert_eq!(code, -libc::ENOTSUP as i64);

    // None of that left anything behind; a good attach works under the same name.
    assert_eq!(c.call("bdev_nvme_get_controllers", json!({})), json!([]));
    assert_eq!(
        c.call(
            "bdev_nvme_attach_controller",
            e.attach_params("Nvme0", json!({}))
        ),
        json!(["Nvme0n1"])
    );
    // The host address and port the admin queue binds, as the target sees them.
    let hostsvcid = tests::free_port().to_string();
    assert_eq!(
        c.call(
            "bdev_nvme_attach_controller",
            e.attach_params(
                "Nvme1",
                json!({"hostaddr": "127.0.0.1", "hostsvcid": hostsvcid})
            )
        ),
        json!(["Nvme1n1"])
    );
    let host =
        &c.call("bdev_nvme_get_controllers", json!({"name": "Nvme1"}))[0]["ctrlrs"][0]["host"];
    assert_eq!(
        (host["addr"].clone(), host["svcid"].clone()),
        (json!("127.0.0.1"), json!(hostsvcid))
    );
    let qpairs = e.call("nvmf_subsystem_get_qpairs", json!({"nqn": SUBNQN}));
    assert!(
        qpairs.as_array().is_some_and(|q| q
            .iter()
            .any(|x| x["peer_address"]["trsvcid"] == hostsvcid.as_str())),
        "{qpairs:#}"
    );
    // bdev_nvme_set_options is refused once a controller exists (SPDK's rule).
    let (code, msg) = c.call_err(
        "bdev_nvme_set_options",
        json!({"keep_alive_timeout_ms": 5000}),
    );
    assert_eq!(code, -libc::EPERM as i64, "{msg}");
    assert!(c.proc.text().contains("cannot attach"), "{}", c.proc.text());
}

#[test]
fn namespaces_added_and_removed_on_the_target_follow_by_aen() {
    let e = Export::start(
        vec![malloc("Malloc0", 2048, 512), malloc("Malloc1", 4096, 4096)],
        "Malloc0",
    );
    let dir = tests::tempdir();
    let c = Client::start(dir.path(), "client", &e.client_config("Nvme0", json!({})));
    assert_eq!(bdev(&c, "Nvme0n1")["num_blocks"], 2048);

    // A namespace added on the target: the notice, the changed-namespace log, a rescan.
    e.call(
        "nvmf_subsystem_add_ns",
        json!({"nqn": SUBNQN, "namespace": {"bdev_name": "Malloc1", "nsid": 2}}),
    );
    let b = poll_until(Duration::from_secs(10), "Nvme0n2 to appear", || {
        let a = c
            .rpc()
            .call("bdev_get_bdevs", Some(json!({"name": "Nvme0n2"})));
        a.get("result").map(|r| r[0].clone())
    });
    assert_eq!(
        (b["num_blocks"].clone(), b["block_size"].clone()),
        (json!(4096), json!(4096))
    );

    // And removed: its bdev goes, the other stays.
    e.call(
        "nvmf_subsystem_remove_ns",
        json!({"nqn": SUBNQN, "nsid": 2}),
    );
    poll_until(Duration::from_secs(10), "Nvme0n2 to go", || {
        let a = c
            .rpc()
            .call("bdev_get_bdevs", Some(json!({"name": "Nvme0n2"})));
        a.get("error").map(|_| ())
    });
    assert_eq!(bdev(&c, "Nvme0n1")["num_blocks"], 2048);
    let log = c.proc.text();
    assert!(log.contains("new namespace 2: Nvme0n2"), "{log}");
    assert!(
        log.contains("namespace 2 is gone; removing Nvme0n2"),
        "{log}"
    );
}

#[test]
fn spdk_rpc_drives_the_initiator() {
    tests::require_spdk_rpc!();
    let e = Export::start(vec![malloc("Malloc0", 4096, 512)], "Malloc0");
    let dir = tests::tempdir();
    let c = Client::start(dir.path(), "client", &config(vec![], vec![]));
    let cli = tests::SpdkRpc::new(&c.sock);
    let mut s = cli.session();
    // SPDK's client sends every flag it knows (delay_cmd_submit, prchk_*, ...): all accepted.
    let out = s.run(&["bdev_nvme_set_options", "-k", "5000", "-r", "2"]);
    assert!(out.ok(), "{out:?}");
    let port = e.port.to_string();
    let out = s.run(&[
        "bdev_nvme_attach_controller",
        "-b",
        "Nvme0",
        "-t",
        "tcp",
        "-a",
        "127.0.0.1",
        "-f",
        "ipv4",
        "-s",
        &port,
        "-n",
        SUBNQN,
        "-l",
        "-1",
        "-o",
        "2",
    ]);
    assert!(out.ok(), "{out:?}");
    assert_eq!(out.stdout.trim(), "Nvme0n1");
    let ctrlrs = s.json(&["bdev_nvme_get_controllers"]);
    assert_eq!(ctrlrs[0]["ctrlrs"][0]["state"], "enabled", "{ctrlrs:#}");
    assert_eq!(ctrlrs[0]["ctrlrs"][0]["trid"]["trsvcid"], port.as_str());
    let (code, msg) = s.error(&["bdev_nvme_set_options", "-k", "6000"]);
    assert_eq!(
        (code, msg.as_str()),
        (
            -1,
            "RPC not permitted with nvme controllers already attached"
        )
    );
    let cfg = s.json(&["framework_get_config", "bdev"]);
    let opts = cfg
        .as_array()
        .and_then(|l| l.iter().find(|x| x["method"] == "bdev_nvme_set_options"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(opts["params"]["keep_alive_timeout_ms"], 5000, "{cfg:#}");
    assert_eq!(opts["params"]["bdev_retry_count"], 2);
    let att = cfg
        .as_array()
        .and_then(|l| {
            l.iter()
                .find(|x| x["method"] == "bdev_nvme_attach_controller")
        })
        .cloned()
        .unwrap_or_default();
    assert_eq!(att["params"]["ctrlr_loss_timeout_sec"], -1);
    assert_eq!(att["params"]["reconnect_delay_sec"], 2);
    assert!(s.run(&["bdev_nvme_detach_controller", "Nvme0"]).ok());
    assert_eq!(s.json(&["bdev_nvme_get_controllers"]), json!([]));
}
