//! Every method of issue 3 driven with SPDK's own `spdk-rpc`, answers compared with the shapes and
//! texts SPDK v26.05's spdk_tgt gave for the same calls (tests/golden/spdk/).

use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;
use tests::{
    Target, assert_shape, error_of, golden, golden_text, require_spdk_rpc, sparse_file, tempdir,
};

const NOT_INITIALIZED: &str =
    "Method may only be called after framework is initialized using framework_start_init RPC.";
const ALREADY_INITIALIZED: &str = "Method may only be called before framework is initialized. \
     Use --wait-for-rpc command line parameter and then issue this RPC before the \
     framework_start_init RPC.";

/// Keys pcache adds to SPDK's bdev_get_bdevs: whether the bdev has a volatile write cache.
const BDEV_EXTRA_KEYS: &[&str] = &["write_cache"];

/// Methods of pcache's own modules that SPDK v26.05's build did not list.
const PCACHE_ONLY: &[&str] = &[
    "bdev_uring_create",
    "bdev_uring_delete",
    "bdev_pmem_create",
    "bdev_pmem_delete",
];

fn names(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn plugin_path() -> String {
    tests::workspace_root()
        .join("python")
        .to_string_lossy()
        .into_owned()
}

#[test]
fn method_lists_and_states_match_spdk() {
    require_spdk_rpc!();
    let (runtime, startup) = (Target::start(), Target::start_args(&["--wait-for-rpc"]));
    let mut rt = runtime.cli().session();
    let mut st = startup.cli().session();

    let version = rt.json(&["spdk_get_version"]);
    let mut expected = golden("spdk_get_version.json");
    let text = version["version"].as_str().unwrap_or_default();
    assert!(text.starts_with("pcache v0."), "{text}");
    match version["fields"]["commit"].as_str() {
        Some(commit) => assert!(text.ends_with(&format!(" git sha1 {commit}")), "{text}"),
        // As SPDK, no commit field when built outside a git checkout.
        None => {
            if let Some(f) = expected["fields"].as_object_mut() {
                f.remove("commit");
            }
        }
    }
    assert_shape("spdk_get_version", &expected, &version, &[]);

    let all = rt.json(&["rpc_get_methods"]);
    assert_shape(
        "rpc_get_methods",
        &golden("rpc_get_methods.json"),
        &all,
        &[],
    );
    let all = names(&all);
    let current = names(&rt.json(&["rpc_get_methods", "--current"]));
    let startup_current = names(&st.json(&["rpc_get_methods", "--current"]));
    assert_eq!(
        names(&st.json(&["rpc_get_methods"])),
        all,
        "the full list does not depend on the state"
    );

    for m in [
        "spdk_get_version",
        "rpc_get_methods",
        "framework_start_init",
        "framework_wait_init",
        "framework_get_subsystems",
        "framework_get_config",
        "framework_get_reactors",
        "thread_get_stats",
        "spdk_kill_instance",
        "bdev_get_bdevs",
        "bdev_get_iostat",
        "bdev_wait_for_examine",
        "bdev_set_options",
        "bdev_malloc_create",
        "bdev_malloc_delete",
        "bdev_null_create",
        "bdev_null_delete",
        "bdev_uring_create",
        "bdev_uring_delete",
        "bdev_pmem_create",
        "bdev_pmem_delete",
        "bdev_passthru_create",
        "bdev_passthru_delete",
        "bdev_delay_create",
        "bdev_delay_delete",
        "bdev_error_create",
        "bdev_error_delete",
        "bdev_error_inject_error",
    ] {
        assert!(all.contains(m), "rpc_get_methods lacks {m}");
    }
    // Only SPDK's names (or pcache's own modules), and each callable in the states SPDK allows.
    let spdk_all = names(&golden("rpc_get_methods.json"));
    let spdk_runtime = names(&golden("rpc_get_methods_current.json"));
    let spdk_startup = names(&golden("rpc_get_methods_current_startup.json"));
    for m in &all {
        // pcache's own modules: the uring and pmem bdevs and every bdev_pcache_* method.
        if PCACHE_ONLY.contains(&m.as_str()) || m.starts_with("bdev_pcache_") {
            assert!(current.contains(m) && !startup_current.contains(m), "{m}");
            continue;
        }
        assert!(spdk_all.contains(m), "{m} is not an SPDK method");
        assert_eq!(
            current.contains(m),
            spdk_runtime.contains(m),
            "{m} callable at runtime?"
        );
        assert_eq!(
            startup_current.contains(m),
            spdk_startup.contains(m),
            "{m} callable at startup?"
        );
    }
    assert!(!current.contains("framework_start_init"));
    assert!(startup_current.contains("framework_start_init"));
    assert!(current.is_subset(&all) && startup_current.is_subset(&all));
}

#[test]
fn startup_state_and_framework_init() {
    require_spdk_rpc!();
    let t = Target::start_args(&["--wait-for-rpc"]);
    let cli = t.cli();
    // The whole client output is SPDK's, byte for byte.
    let out = cli.run(&["bdev_malloc_create", "-b", "M", "8", "512"]);
    assert_eq!(out.code, 1);
    assert_eq!(
        out.stdout.trim(),
        golden_text("error_startup_call.txt").trim()
    );

    let mut s = cli.session();
    for call in [
        &["framework_get_subsystems"][..],
        &["bdev_get_bdevs"],
        &["spdk_kill_instance", "SIGTERM"],
    ] {
        assert_eq!(s.error(call), (-1, NOT_INITIALIZED.into()), "{call:?}");
    }

    // framework_wait_init blocks until framework_start_init completes.
    let waiter = {
        let cli = t.cli();
        std::thread::spawn(move || cli.run(&["framework_wait_init"]))
    };
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !waiter.is_finished(),
        "framework_wait_init answered before init"
    );

    assert!(s.run(&["bdev_set_options", "-p", "8192", "-c", "256"]).ok());
    assert!(s.run(&["framework_start_init"]).ok());
    let waited = waiter.join().expect("waiter thread");
    assert!(waited.ok(), "{waited:?}");

    let current = names(&s.json(&["rpc_get_methods", "--current"]));
    assert!(!current.contains("framework_start_init"));
    assert!(current.contains("bdev_get_bdevs") && !current.contains("bdev_set_options"));
    assert_eq!(
        s.error(&["framework_start_init"]),
        (-1, ALREADY_INITIALIZED.into())
    );
    assert_eq!(
        s.error(&["bdev_set_options", "-c", "128"]),
        (-1, ALREADY_INITIALIZED.into())
    );
    assert!(s.run(&["framework_wait_init"]).ok());
    let config = s.json(&["framework_get_config", "bdev"]);
    assert_eq!(config[0]["method"], "bdev_set_options");
    assert_eq!(config[0]["params"]["bdev_io_pool_size"], 8192);
    assert_eq!(config[0]["params"]["bdev_io_cache_size"], 256);
    assert_eq!(config[0]["params"]["bdev_auto_examine"], true);
}

#[test]
fn framework_reactors_threads_and_subsystems() {
    require_spdk_rpc!();
    let t = Target::start();
    let mut s = t.cli().session();

    let subsystems = s.json(&["framework_get_subsystems"]);
    assert_shape(
        "framework_get_subsystems",
        &golden("framework_get_subsystems.json"),
        &subsystems,
        &[],
    );
    let list = subsystems.as_array().cloned().unwrap_or_default();
    assert!(
        list.iter().any(|e| e["subsystem"] == "bdev"),
        "{subsystems}"
    );
    // Dependencies first: SPDK's save_config resolves them in list order.
    for (i, e) in list.iter().enumerate() {
        for d in e["depends_on"].as_array().into_iter().flatten() {
            assert!(
                list[..i].iter().any(|p| &p["subsystem"] == d),
                "{d} after its dependent"
            );
        }
    }

    let config = s.json(&["framework_get_config", "bdev"]);
    let entries = config.as_array().cloned().unwrap_or_default();
    assert_eq!(
        entries.first().map(|e| e["method"].clone()),
        Some(json!("bdev_set_options"))
    );
    assert_eq!(
        entries.last(),
        Some(&json!({"method": "bdev_wait_for_examine"}))
    );
    assert_eq!(
        s.error(&["framework_get_config", "nope"]),
        (-32602, "Subsystem 'nope' not found".into())
    );

    let reactors = s.json(&["framework_get_reactors"]);
    assert_shape(
        "framework_get_reactors",
        &golden("framework_get_reactors.json"),
        &reactors,
        &[],
    );
    assert_eq!(reactors["pid"], t.pid());
    let r0 = &reactors["reactors"][0];
    assert_eq!(
        (r0["lcore"].clone(), r0["tid"].clone()),
        (json!(0), json!(t.pid()))
    );
    assert_eq!(r0["lw_threads"][0]["name"], "app_thread");
    assert_eq!(r0["lw_threads"][0]["cpumask"], "1");

    let threads = s.json(&["thread_get_stats"]);
    assert_shape(
        "thread_get_stats",
        &golden("thread_get_stats.json"),
        &threads,
        &[],
    );
    assert_eq!(threads["threads"][0]["name"], "app_thread");
    assert_eq!(threads["threads"][0]["cpumask"], "1");
    assert!(threads["tick_rate"].as_u64().unwrap_or(0) > 0);
}

/// Which golden bdev a bdev of ours is compared with, by product name.
fn golden_bdev(product: &str) -> Value {
    let spdk_name = match product {
        "Malloc disk" => "Malloc0",
        "Null disk" => "Null0",
        "passthru" => "Pass0",
        "delay" => "Delay0",
        "Error Injection Disk" => "EE_Malloc2",
        // File-backed bdevs have no golden of their own; SPDK's AIO bdev is their nearest kin.
        _ => "Aio0",
    };
    golden("bdev_get_bdevs.json")
        .as_array()
        .and_then(|a| a.iter().find(|b| b["name"] == spdk_name).cloned())
        .unwrap_or_default()
}

fn check_bdev_shape(b: &Value) {
    let product = b["product_name"].as_str().unwrap_or_default();
    let mut expected = golden_bdev(product);
    if expected["product_name"] == "AIO disk" {
        // Compare the common part; the module's own driver_specific is checked by the caller.
        expected["driver_specific"] = json!({});
    }
    // SPDK names the claim only on a claimed bdev; a vbdev has numa_id when its base has one.
    let vbdev = ["passthru", "delay", "Error Injection Disk"].contains(&product);
    if let Some(e) = expected.as_object_mut() {
        if vbdev && b.get("numa_id").is_none() {
            e.remove("numa_id");
        }
        if b["claimed"] == true {
            e.insert("claim_type".into(), json!("exclusive_write"));
        } else {
            e.remove("claim_type");
        }
    }
    assert_shape(
        &format!("bdev_get_bdevs {}", b["name"]),
        &expected,
        b,
        BDEV_EXTRA_KEYS,
    );
}

#[test]
fn every_module_create_inspect_delete() {
    require_spdk_rpc!();
    let t = Target::start();
    let dir = tempdir();
    let file = dir.path().join("uring.img");
    sparse_file(&file, 64 << 20);
    // UringF's own: one bdev at a time opens a file.
    let file_f = dir.path().join("uring-f.img");
    sparse_file(&file_f, 1 << 20);
    let pmem_file = dir.path().join("pmem.img");
    let (file, file_f, pmem_file) = (
        file.to_str().unwrap_or(""),
        file_f.to_str().unwrap_or(""),
        pmem_file.to_str().unwrap_or(""),
    );
    let cli = t.cli();
    let mut s = t.cli().env("PYTHONPATH", &plugin_path()).session();

    // bdev_get_bdevs -b waits for a bdev that appears within its timeout.
    let late = {
        let cli = t.cli();
        std::thread::spawn(move || cli.run(&["bdev_get_bdevs", "-b", "Late", "-t", "5000"]))
    };

    let created = [
        (
            &["bdev_malloc_create", "-b", "Malloc0", "64", "512"][..],
            "Malloc0",
        ),
        (&["bdev_null_create", "Null0", "64", "4096"], "Null0"),
        (
            &["bdev_passthru_create", "-b", "Malloc0", "-p", "Pass0"],
            "Pass0",
        ),
        (
            &["bdev_malloc_create", "-b", "Malloc1", "32", "4096"],
            "Malloc1",
        ),
        (
            &[
                "bdev_delay_create",
                "-b",
                "Malloc1",
                "-d",
                "Delay0",
                "-r",
                "10",
                "-t",
                "20",
                "-w",
                "30",
                "-n",
                "40",
            ],
            "Delay0",
        ),
        (
            &["bdev_malloc_create", "-b", "Malloc2", "32", "4096"],
            "Malloc2",
        ),
        // SPDK answers true here, not the name.
        (&["bdev_error_create", "Malloc2"], "true"),
        (&["bdev_uring_create", file, "Uring0", "4096"], "Uring0"),
        (
            &[
                "--plugin",
                "pcache_rpc_plugin",
                "bdev_pmem_create",
                pmem_file,
                "-n",
                "Pmem0",
                "--total-size",
                "16",
                "--block-size",
                "4096",
            ],
            "Pmem0",
        ),
    ];
    for (args, answer) in created {
        let out = s.run(args);
        assert!(out.ok(), "{args:?}: {out:?}");
        assert_eq!(out.stdout.trim(), answer, "{args:?}");
    }

    // Every bdev shaped as SPDK's bdev of the same module.
    let bdevs = s.json(&["bdev_get_bdevs"]);
    let list = bdevs.as_array().cloned().unwrap_or_default();
    assert_eq!(list.len(), 9, "{bdevs:#}");
    for b in &list {
        check_bdev_shape(b);
    }
    let by_name = |n: &str| {
        list.iter()
            .find(|b| b["name"] == n)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(by_name("Malloc0")["num_blocks"], 131072);
    assert_eq!(by_name("Malloc0")["claim_type"], "exclusive_write");
    assert_eq!(
        by_name("Pass0")["driver_specific"],
        json!({"passthru": {"name": "Pass0", "base_bdev_name": "Malloc0"}})
    );
    assert_eq!(
        by_name("Delay0")["driver_specific"]["delay"]["p99_write_latency"],
        40
    );
    assert_eq!(
        by_name("EE_Malloc2")["driver_specific"],
        json!({"error_disk": {"base_bdev": "Malloc2"}})
    );
    assert_eq!(
        by_name("Uring0")["driver_specific"],
        json!({"uring": {"filename": file}})
    );
    assert_eq!(by_name("Uring0")["num_blocks"], 16384);
    assert_eq!(
        by_name("Pmem0")["driver_specific"]["pmem"]["pmem_file"],
        pmem_file
    );
    assert_eq!(by_name("Pmem0")["num_blocks"], 4096);
    assert_eq!(
        s.json(&["bdev_get_bdevs", "-b", "Pass0"]),
        json!([by_name("Pass0")])
    );

    // A missing bdev: the whole client output is SPDK's.
    let out = cli.run(&["bdev_get_bdevs", "-b", "Nope"]);
    assert_eq!(out.stdout.trim(), golden_text("error_nope.txt").trim());
    // A duplicate name: the same.
    let out = cli.run(&["bdev_malloc_create", "-b", "Malloc0", "64", "512"]);
    assert_eq!(out.stdout.trim(), golden_text("error_dup.txt").trim());
    for dup in [
        &["bdev_null_create", "Null0", "64", "4096"][..],
        &["bdev_malloc_create", "-b", "Null0", "8", "512"],
        &["bdev_passthru_create", "-b", "Null0", "-p", "Pass0"],
        &[
            "bdev_delay_create",
            "-b",
            "Null0",
            "-d",
            "Delay0",
            "-r",
            "1",
            "-t",
            "1",
            "-w",
            "1",
            "-n",
            "1",
        ],
        &["bdev_uring_create", file, "Uring0"],
        &[
            "--plugin",
            "pcache_rpc_plugin",
            "bdev_pmem_create",
            pmem_file,
            "-n",
            "Pmem0",
        ],
    ] {
        assert_eq!(s.error(dup), (-17, "File exists".into()), "{dup:?}");
    }
    // A file another bdev has open is busy, whatever the new bdev's name.
    for busy in [
        &["bdev_uring_create", file, "UringBusy"][..],
        &[
            "--plugin",
            "pcache_rpc_plugin",
            "bdev_pmem_create",
            pmem_file,
            "-n",
            "PmemBusy",
        ],
    ] {
        let (code, msg) = s.error(busy);
        assert_eq!(code, -16, "{busy:?}: {msg}");
        assert!(msg.contains("is in use"), "{busy:?}: {msg}");
    }

    let iostat = s.json(&["bdev_get_iostat"]);
    assert_shape(
        "bdev_get_iostat",
        &golden("bdev_get_iostat.json"),
        &iostat,
        &[],
    );
    assert_eq!(iostat["bdevs"].as_array().map(Vec::len), Some(9));
    let two = s.json(&["bdev_get_iostat", "--names", "Null0,Malloc0"]);
    assert_eq!(two["bdevs"][0]["name"], "Null0");
    assert_eq!(two["bdevs"][1]["name"], "Malloc0");
    assert!(
        s.run(&[
            "bdev_get_iostat",
            "--names",
            "Pass0",
            "-c",
            "--reset-mode",
            "all"
        ])
        .ok()
    );
    assert_eq!(
        s.error(&["bdev_get_iostat", "--names", "Null0,Nope"]).0,
        -19
    );
    assert!(s.run(&["bdev_wait_for_examine"]).ok());

    std::thread::sleep(Duration::from_millis(200));
    assert!(!late.is_finished(), "bdev_get_bdevs -t did not wait");
    assert_eq!(
        s.run(&["bdev_malloc_create", "-b", "Late", "8", "512"])
            .stdout
            .trim(),
        "Late"
    );
    let late = late.join().expect("waiter thread");
    assert_eq!(late.json()[0]["name"], "Late", "{late:?}");
    check_bdev_shape(&late.json()[0]);

    // Every option SPDK's CLI has for these verbs reaches a server that knows its parameter.
    for (args, answer) in [
        (
            &[
                "bdev_malloc_create",
                "-b",
                "MallocF",
                "-u",
                "11111111-2222-4333-8444-555555555555",
                "-p",
                "4096",
                "-o",
                "8",
                "-m",
                "0",
                "-t",
                "0",
                "-f",
                "0",
                "-n",
                "-1",
                "16",
                "4096",
            ][..],
            "MallocF",
        ),
        (
            &[
                "bdev_null_create",
                "NullF",
                "-u",
                "11111111-2222-4333-8444-555555555556",
                "-p",
                "4096",
                "-m",
                "0",
                "-t",
                "0",
                "-f",
                "0",
                "-a",
                "0",
                "-g",
                "0",
                "-s",
                "0",
                "-c",
                "0",
                "-r",
                "0",
                "16",
                "4096",
            ],
            "NullF",
        ),
        (
            &[
                "bdev_uring_create",
                "-u",
                "11111111-2222-4333-8444-555555555557",
                file_f,
                "UringF",
                "512",
            ],
            "UringF",
        ),
        (
            &[
                "bdev_delay_create",
                "-b",
                "NullF",
                "-d",
                "DelayF",
                "-u",
                "11111111-2222-4333-8444-555555555558",
                "-r",
                "1",
                "-t",
                "2",
                "-w",
                "3",
                "-n",
                "4",
            ],
            "DelayF",
        ),
        (
            &[
                "bdev_passthru_create",
                "-b",
                "DelayF",
                "-p",
                "PassF",
                "-u",
                "11111111-2222-4333-8444-555555555559",
            ],
            "PassF",
        ),
        (
            &[
                "bdev_error_create",
                "MallocF",
                "--uuid",
                "11111111-2222-4333-8444-55555555555a",
            ],
            "true",
        ),
        (
            &[
                "bdev_error_inject_error",
                "EE_MallocF",
                "write",
                "nvme_failure",
                "--nvme-sct",
                "1",
                "--nvme-sc",
                "2",
                "-n",
                "3",
                "-q",
                "0",
                "-o",
                "0",
                "-v",
                "1",
            ],
            "",
        ),
        (&["bdev_get_iostat", "--names", "PassF"], "*"),
    ] {
        let out = s.run(args);
        assert!(out.ok(), "{out:?}");
        assert!(answer == "*" || out.stdout.trim() == answer, "{out:?}");
    }
    let f = s.json(&["bdev_get_bdevs", "-b", "PassF"]);
    assert_eq!(f[0]["uuid"], "11111111-2222-4333-8444-555555555559");
    for b in s.json(&["bdev_get_bdevs"]).as_array().into_iter().flatten() {
        check_bdev_shape(b);
    }
    for d in [
        &["bdev_passthru_delete", "PassF"][..],
        &["bdev_delay_delete", "DelayF"],
        &["bdev_null_delete", "NullF"],
        &["bdev_error_delete", "EE_MallocF"],
        &["bdev_malloc_delete", "MallocF"],
        &["bdev_uring_delete", "UringF"],
    ] {
        assert!(s.run(d).ok(), "{d:?}");
    }

    // Module controls.
    for ok in [
        &["bdev_delay_update_latency", "Delay0", "avg_read", "15"][..],
        &[
            "bdev_error_inject_error",
            "EE_Malloc2",
            "read",
            "failure",
            "-n",
            "1",
        ],
        &[
            "bdev_error_inject_error",
            "EE_Malloc2",
            "all",
            "pending",
            "-n",
            "2",
            "-q",
            "4",
        ],
        &[
            "bdev_error_inject_error",
            "EE_Malloc2",
            "write",
            "corrupt_data",
            "-o",
            "7",
            "-v",
            "255",
        ],
        &["bdev_error_inject_error", "EE_Malloc2", "clear", "failure"],
        &["bdev_error_resume_pending", "EE_Malloc2"],
    ] {
        let out = s.run(ok);
        assert!(out.ok(), "{ok:?}: {out:?}");
    }
    let delay = s.json(&["bdev_get_bdevs", "-b", "Delay0"]);
    assert_eq!(delay[0]["driver_specific"]["delay"]["avg_read_latency"], 15);
    assert_eq!(
        s.error(&["bdev_error_inject_error", "Nope", "read", "failure"])
            .0,
        -19
    );

    // Deleting a base takes the bdev stacked on it away too.
    let deletes = [
        &["bdev_passthru_delete", "Pass0"][..],
        &["bdev_malloc_delete", "Malloc0"],
        &["bdev_null_delete", "Null0"],
        &["bdev_malloc_delete", "Malloc1"],
        &["bdev_error_delete", "EE_Malloc2"],
        &["bdev_malloc_delete", "Malloc2"],
        &["bdev_uring_delete", "Uring0"],
        &["--plugin", "pcache_rpc_plugin", "bdev_pmem_delete", "Pmem0"],
        &["bdev_malloc_delete", "Late"],
    ];
    for d in deletes {
        let out = s.run(d);
        assert!(out.ok(), "{d:?}: {out:?}");
    }
    assert_eq!(s.json(&["bdev_get_bdevs"]), json!([]));
    // Delay0 went with Malloc1 but its entry waits for Malloc1 to come back (SPDK's examine);
    // deleting it drops that entry. (SPDK drops it too, yet answers -19.)
    let waiting = s.json(&["framework_get_config", "bdev"]);
    assert!(waiting.to_string().contains("\"Delay0\""), "{waiting}");
    assert!(s.run(&["bdev_delay_delete", "Delay0"]).ok());
    assert_eq!(
        s.json(&["framework_get_config", "bdev"])
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    for missing in [
        &["bdev_malloc_delete", "Malloc0"][..],
        &["bdev_null_delete", "Null0"],
        &["bdev_passthru_delete", "Pass0"],
        &["bdev_delay_delete", "Delay0"],
        &["bdev_error_delete", "EE_Malloc2"],
        &["bdev_uring_delete", "Uring0"],
        &["--plugin", "pcache_rpc_plugin", "bdev_pmem_delete", "Pmem0"],
    ] {
        assert_eq!(
            s.error(missing),
            (-19, "No such device".into()),
            "{missing:?}"
        );
    }
}

#[test]
fn every_error_class() {
    require_spdk_rpc!();
    let t = Target::start();
    let mut c = t.raw();
    let call = |c: &mut tests::RawClient, m: &str, p: Value| error_of(&c.call(m, Some(p)));

    assert_eq!(
        error_of(&c.call("nope", None)),
        (-32601, "Method not found".into())
    );
    // -32602 names the field: unknown, missing, mistyped.
    let malloc = |extra: Value| {
        let mut p = json!({"name": "M", "num_blocks": 8, "block_size": 512});
        if let (Some(p), Some(e)) = (p.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                if v.is_null() {
                    p.remove(k);
                } else {
                    p.insert(k.clone(), v.clone());
                }
            }
        }
        p
    };
    for (params, field) in [
        (malloc(json!({"bogus": 1})), "bogus"),
        (malloc(json!({"num_blocks": null})), "num_blocks"),
        (malloc(json!({"block_size": "512"})), "block_size"),
        (malloc(json!({"uuid": "not-a-uuid"})), "uuid"),
        (malloc(json!({"num_blocks": -1})), "num_blocks"),
    ] {
        let (code, msg) = call(&mut c, "bdev_malloc_create", params.clone());
        assert_eq!(code, -32602, "{params}: {msg}");
        assert!(
            msg.contains(field),
            "{params}: {msg:?} does not name {field}"
        );
    }
    let (code, msg) = call(&mut c, "bdev_get_bdevs", json!({"name": 5}));
    assert!(code == -32602 && msg.contains("name"), "{msg}");
    let (code, msg) = call(
        &mut c,
        "bdev_error_inject_error",
        json!({"name": "E", "io_type": "sideways", "error_type": "failure"}),
    );
    assert!(code == -32602 && msg.contains("io_type"), "{msg}");
    assert_eq!(call(&mut c, "bdev_get_bdevs", json!([1])).0, -32602);
    assert_eq!(call(&mut c, "spdk_get_version", json!({"x": 1})).0, -32602);
    // Every param SPDK's CLI sends is known (the client's own dry-run values).
    let a = c.call(
        "bdev_malloc_create",
        Some(json!({"num_blocks": 16, "block_size": 512, "name": "M1", "md_interleave": false, "dif_is_head_of_md": false})),
    );
    assert_eq!(a["result"], "M1", "{a}");
    let a = c.call(
        "bdev_get_bdevs",
        Some(json!({"name": "M1", "timeout": 10.0})),
    );
    assert_eq!(a["result"][0]["name"], "M1", "{a}");
    let a = c.call(
        "framework_get_config",
        Some(json!({"name": "bdev", "with_batches": false})),
    );
    assert!(a["result"].is_array(), "{a}");
    let a = c.call(
        "rpc_get_methods",
        Some(json!({"current": false, "include_aliases": false})),
    );
    assert!(a["result"].is_array(), "{a}");

    // -32600 keeps the id it could read.
    for (req, id) in [
        (r#"{"jsonrpc":"2.0","id":7}"#, json!(7)),
        (
            r#"{"jsonrpc":"1.0","method":"spdk_get_version","id":8}"#,
            json!(8),
        ),
        (r#"{"jsonrpc":"2.0","method":5,"id":"x"}"#, json!("x")),
        (
            r#"{"jsonrpc":"2.0","method":"spdk_get_version","params":3,"id":9}"#,
            json!(9),
        ),
        (
            r#"{"jsonrpc":"2.0","method":"spdk_get_version","id":{"a":1}}"#,
            Value::Null,
        ),
        // A top-level number ends at the next delimiter.
        ("42 ", Value::Null),
        (r#""text""#, Value::Null),
        ("[]", Value::Null),
    ] {
        c.send(req.as_bytes()).expect("send");
        let a = c.recv();
        assert_eq!(error_of(&a), (-32600, "Invalid request".into()), "{req}");
        assert_eq!(a["id"], id, "{req}");
    }
    // Answers are ASCII whatever the request held.
    c.send("{\"jsonrpc\":\"2.0\",\"method\":\"\u{e9}t\u{e9}\",\"id\":\"\u{fc}\"}".as_bytes())
        .expect("send");
    let (_, text) = c.recv_text();
    assert!(
        text.is_ascii() && text.contains(r#""id":"\u00fc""#),
        "{text}"
    );
    // -32700: answered with a null id, then the connection is closed (no resync point).
    c.send(b"{\"jsonrpc\": nope}").expect("send");
    let a = c.recv();
    assert_eq!(error_of(&a), (-32700, "Parse error".into()));
    assert_eq!(a["id"], Value::Null);
    assert!(c.closed_within(Duration::from_secs(5)));
    // The server goes on.
    assert_eq!(
        t.raw().call("spdk_get_version", None)["result"]["fields"]["major"],
        0
    );
}

#[test]
fn script_and_batch_modes_and_notifications() {
    require_spdk_rpc!();
    let t = Target::start();
    let cli = t.cli();
    // Script mode leaks the global -t into bdev_get_bdevs as "timeout": 10.0.
    let out = cli.run_stdin(
        &["-t", "10"],
        Some("bdev_malloc_create -b M0 8 512\nbdev_get_bdevs -b M0\n"),
    );
    assert!(out.ok(), "{out:?}");
    assert!(out.stdout.contains("\"name\": \"M0\""), "{out:?}");
    // Batch mode: one JSON array, one array back.
    let out = cli.run_stdin(
        &["-b"],
        Some("bdev_malloc_create -b M1 8 512\nbdev_get_bdevs -b M1\nspdk_get_version\n"),
    );
    assert!(out.ok(), "{out:?}");
    assert!(out.stdout.contains("\"M1\"\n"), "{out:?}");
    assert!(out.stdout.contains("\"version\": \"pcache v"), "{out:?}");

    let mut c = t.raw();
    // A notification gets no answer: the next answer is the request's.
    c.send(br#"{"jsonrpc":"2.0","method":"spdk_get_version"}"#)
        .expect("send");
    c.send(br#"{"jsonrpc":"2.0","method":"nope"}"#)
        .expect("send");
    assert_eq!(
        c.call("bdev_get_bdevs", Some(json!({"name": "M1"})))["result"][0]["name"],
        "M1"
    );
    // A raw batch: answers in request order, none for notifications, invalid entries in place.
    c.send(
        br#"[{"jsonrpc":"2.0","method":"bdev_get_bdevs","params":{"name":"M0"},"id":1},
            {"jsonrpc":"2.0","method":"spdk_get_version"},
            {"jsonrpc":"2.0","method":"nope","id":2},
            7,
            {"jsonrpc":"2.0","method":"bdev_malloc_create","params":{"name":"M0","num_blocks":8,"block_size":512},"id":3}]"#,
    )
    .expect("send");
    let a = c.recv();
    let a = a.as_array().cloned().unwrap_or_default();
    assert_eq!(a.len(), 4, "{a:?}");
    assert_eq!(a[0]["result"][0]["name"], "M0");
    assert_eq!((a[1]["id"].clone(), error_of(&a[1]).0), (json!(2), -32601));
    assert_eq!(
        (a[2]["id"].clone(), error_of(&a[2]).0),
        (Value::Null, -32600)
    );
    assert_eq!((a[3]["id"].clone(), error_of(&a[3]).0), (json!(3), -17));
}

#[test]
fn kill_instance_stops_the_target() {
    require_spdk_rpc!();
    let mut t = Target::start();
    let out = t.cli().run(&["spdk_kill_instance", "SIGTERM"]);
    assert!(out.ok(), "{out:?}");
    assert_eq!(t.wait_exit(), 0, "{}", t.log_text());
    assert!(!t.sock.exists(), "socket file left behind");
    assert!(t.log_text().contains("shutting down"));
}
