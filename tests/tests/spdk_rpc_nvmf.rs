//! The NVMe-oF target's control plane driven by SPDK's own client: its built-in nvmf verbs
//! create the transport, subsystems, namespaces, hosts and listeners; the query methods answer
//! in SPDK's shapes; bad input gets SPDK-shaped errors; and save_config, given to a fresh
//! target, recreates the same target (same NSIDs and IDs) and saves back to the same config.

use serde_json::{Value, json};
use std::net::TcpStream;
use tests::{Target, free_port, require_spdk_rpc, tempdir};

const NQN: &str = "nqn.2016-06.io.spdk:cnode1";
const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:8d9e3f54-2d3c-4a4c-b0a1-36d5c1e2f7a1";

fn nvmf_config(config: &Value) -> Value {
    config["subsystems"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["subsystem"] == "nvmf")
        .map(|s| s["config"].clone())
        .unwrap_or(Value::Null)
}

#[test]
fn spdk_rpc_builds_a_target_and_save_config_recreates_it() {
    require_spdk_rpc!();
    let dir = tempdir();
    let d = dir.path();
    let port = free_port().to_string();
    let mut first = Target::start_in(d, "a", &[]);
    let mut s = first.cli().session();
    for args in [
        &["bdev_malloc_create", "-b", "Malloc0", "16", "512"][..],
        &["bdev_malloc_create", "-b", "Malloc1", "16", "4096"],
        &[
            "nvmf_create_transport",
            "-t",
            "TCP",
            "-c",
            "8192",
            "-q",
            "64",
        ],
        &[
            "nvmf_create_subsystem",
            NQN,
            "-s",
            "SPDK00000000000001",
            "-d",
            "pcache test controller",
        ],
        &["nvmf_subsystem_add_host", NQN, HOST],
        &[
            "nvmf_subsystem_add_listener",
            NQN,
            "-t",
            "tcp",
            "-a",
            "127.0.0.1",
            "-s",
            &port,
        ],
        &[
            "nvmf_subsystem_add_listener",
            "discovery",
            "-t",
            "tcp",
            "-a",
            "127.0.0.1",
            "-s",
            &port,
        ],
    ] {
        let out = s.run(args);
        assert!(out.ok(), "{args:?}: {}", out.stdout);
    }
    // add_ns answers with the NSID (SPDK's client does not print it): the lowest free one, or
    // the one asked for.
    let mut raw = first.raw();
    let add = raw.call(
        "nvmf_subsystem_add_ns",
        Some(json!({"nqn": NQN, "namespace": {"bdev_name": "Malloc0"}})),
    );
    assert_eq!(add["result"], json!(1), "{add}");
    let nguid = "0123456789ABCDEF0123456789ABCDEF";
    assert!(
        s.run(&[
            "nvmf_subsystem_add_ns",
            NQN,
            "Malloc1",
            "-n",
            "7",
            "-g",
            nguid
        ])
        .ok()
    );
    TcpStream::connect(format!("127.0.0.1:{port}")).expect("the listener accepts");

    let transports = s.json(&["nvmf_get_transports"]);
    assert_eq!(transports[0]["trtype"], "TCP");
    assert_eq!(transports[0]["in_capsule_data_size"], 8192);
    assert_eq!(transports[0]["max_queue_depth"], 64);
    assert_eq!(transports[0]["max_io_size"], 131072);

    let subsystems = s.json(&["nvmf_get_subsystems"]);
    assert_eq!(subsystems[0]["nqn"], "nqn.2014-08.org.nvmexpress.discovery");
    assert_eq!(subsystems[0]["subtype"], "Discovery");
    let sub = &subsystems[1];
    assert_eq!(sub["nqn"], NQN);
    assert_eq!(sub["subtype"], "NVMe");
    assert_eq!(sub["allow_any_host"], false);
    assert_eq!(sub["hosts"], json!([{"nqn": HOST}]));
    assert_eq!(sub["serial_number"], "SPDK00000000000001");
    assert_eq!(sub["model_number"], "pcache test controller");
    assert_eq!(
        sub["listen_addresses"],
        json!([{"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port}])
    );
    let ns = sub["namespaces"].as_array().cloned().unwrap_or_default();
    assert_eq!(ns.len(), 2, "{sub}");
    assert_eq!(
        (ns[0]["nsid"].clone(), ns[0]["bdev_name"].clone()),
        (json!(1), json!("Malloc0"))
    );
    assert_eq!(
        (ns[1]["nsid"].clone(), ns[1]["nguid"].clone()),
        (json!(7), json!(nguid))
    );
    assert_eq!(
        s.json(&["nvmf_subsystem_get_listeners", NQN]),
        json!([{"address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1",
                            "trsvcid": port}}])
    );
    assert_eq!(s.json(&["nvmf_subsystem_get_controllers", NQN]), json!([]));
    assert_eq!(s.json(&["nvmf_subsystem_get_qpairs", NQN]), json!([]));
    let stats = s.json(&["nvmf_get_stats"]);
    assert!(
        stats["tick_rate"].as_u64().is_some_and(|t| t > 0),
        "{stats}"
    );
    assert!(stats["poll_groups"].is_array(), "{stats}");

    // The saved config starts with SPDK's start-up settings and recreates everything.
    let saved = s.json(&["save_config"]);
    let nvmf = nvmf_config(&saved);
    let methods: Vec<&str> = nvmf
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["method"].as_str())
        .collect();
    assert_eq!(
        methods,
        [
            "nvmf_set_config",
            "nvmf_set_max_subsystems",
            "nvmf_set_crdt",
            "nvmf_create_transport",
            "nvmf_subsystem_add_listener",
            "nvmf_create_subsystem",
            "nvmf_subsystem_add_host",
            "nvmf_subsystem_add_ns",
            "nvmf_subsystem_add_ns",
            "nvmf_subsystem_add_listener",
        ]
    );
    let file = d.join("saved.json");
    std::fs::write(&file, saved.to_string()).expect("write the config");
    drop((s, raw));
    assert_eq!(first.terminate(), 0, "{}", first.log_text());

    let second = Target::start_in(d, "b", &["-c", file.to_str().unwrap_or("")]);
    let mut s2 = second.cli().session();
    assert_eq!(s2.json(&["nvmf_get_subsystems"]), subsystems);
    assert_eq!(nvmf_config(&s2.json(&["save_config"])), nvmf);
    TcpStream::connect(format!("127.0.0.1:{port}")).expect("the restarted target listens");
}

#[test]
fn bad_nvmf_requests_get_clear_errors_and_change_nothing() {
    require_spdk_rpc!();
    let t = Target::start();
    let mut s = t.cli().session();
    assert!(
        s.run(&["bdev_malloc_create", "-b", "Malloc0", "16", "512"])
            .ok()
    );
    let port = free_port().to_string();

    // Listeners need the transport first.
    assert!(
        s.run(&["nvmf_create_subsystem", NQN, "-a"]).ok(),
        "no transport needed"
    );
    let (code, msg) = s.error(&[
        "nvmf_subsystem_add_listener",
        NQN,
        "-t",
        "tcp",
        "-a",
        "127.0.0.1",
        "-s",
        &port,
    ]);
    assert_eq!(code, -32602);
    assert!(msg.contains("nvmf_create_transport"), "{msg}");

    assert!(s.run(&["nvmf_create_transport", "-t", "TCP"]).ok());
    let (code, msg) = s.error(&["nvmf_create_transport", "-t", "TCP"]);
    assert_eq!(code, -libc::EEXIST as i64, "{msg}");
    let (code, msg) = s.error(&["nvmf_create_transport", "-t", "RDMA"]);
    assert_eq!(code, -32602);
    assert!(msg.contains("RDMA"), "{msg}");

    let (code, msg) = s.error(&["nvmf_create_subsystem", NQN]);
    assert_eq!(code, -libc::EEXIST as i64, "{msg}");
    let (code, msg) = s.error(&["nvmf_create_subsystem", "cnode2"]);
    assert_eq!(code, -32602);
    assert!(msg.contains("nqn."), "{msg}");
    let (code, msg) = s.error(&[
        "nvmf_subsystem_add_ns",
        "nqn.2016-06.io.spdk:nope",
        "Malloc0",
    ]);
    assert_eq!(code, -32602);
    assert!(msg.contains("nqn.2016-06.io.spdk:nope"), "{msg}");
    let (code, msg) = s.error(&["nvmf_subsystem_add_ns", NQN, "Nope0"]);
    assert_eq!(code, -libc::ENODEV as i64, "{msg}");
    assert!(msg.contains("Nope0"), "{msg}");
    assert!(s.run(&["nvmf_subsystem_add_ns", NQN, "Malloc0"]).ok());
    // A namespace claims its bdev: a second subsystem cannot export it too.
    assert!(
        s.run(&["nvmf_create_subsystem", "nqn.2016-06.io.spdk:cnode2", "-a"])
            .ok()
    );
    let (code, msg) = s.error(&[
        "nvmf_subsystem_add_ns",
        "nqn.2016-06.io.spdk:cnode2",
        "Malloc0",
    ]);
    assert_eq!(code, -libc::EPERM as i64, "{msg}");
    let (code, msg) = s.error(&[
        "nvmf_subsystem_add_listener",
        NQN,
        "-t",
        "tcp",
        "-a",
        "localhost",
        "-s",
        &port,
    ]);
    assert_eq!(code, -32602);
    assert!(msg.contains("localhost"), "{msg}");
    let (code, _) = s.error(&["nvmf_subsystem_remove_ns", NQN, "9"]);
    assert_eq!(code, -32602);
    let (code, _) = s.error(&[
        "nvmf_delete_subsystem",
        "nqn.2014-08.org.nvmexpress.discovery",
    ]);
    assert_eq!(code, -32602);
    let subs = s.json(&["nvmf_get_subsystems"]);
    assert_eq!(subs.as_array().map(Vec::len), Some(3), "{subs}");

    // Deleting the exported bdev removes the namespace; deleting the subsystem frees the rest.
    assert!(s.run(&["bdev_malloc_delete", "Malloc0"]).ok());
    let sub = s.json(&["nvmf_get_subsystems", NQN]);
    assert_eq!(sub[0]["namespaces"], json!([]), "{sub}");
    assert!(s.run(&["nvmf_delete_subsystem", NQN]).ok());
    assert!(s.error(&["nvmf_get_subsystems", NQN]).0 == -32602);
}
