//! save_config / load_config round trips with SPDK's client: a configured target's saved config
//! recreates the same bdevs (names, UUIDs, sizes) and saves back to the same bytes, whether it is
//! given at start (`pcache_tgt -c`) or loaded over RPC into a target waiting in STARTUP.

use serde_json::Value;
use tests::{Target, bdev_identities, require_spdk_rpc, sparse_file, tempdir};

#[test]
fn save_config_round_trips_through_json_config_and_load_config() {
    require_spdk_rpc!();
    let dir = tempdir();
    let d = dir.path();
    let uring = d.join("uring.img");
    sparse_file(&uring, 32 << 20);
    let pmem = d.join("pmem.img");
    let cache_pmem = d.join("cache.pmem");
    let (uring, pmem) = (uring.to_str().unwrap_or(""), pmem.to_str().unwrap_or(""));
    let cache_pmem = cache_pmem.to_str().unwrap_or("");
    let plugin = tests::workspace_root().join("python");

    // The original: a startup option, then every module, stacked two and three deep.
    let mut first = Target::start_in(d, "a", &["--wait-for-rpc"]);
    let mut s = first
        .cli()
        .env("PYTHONPATH", plugin.to_str().unwrap_or(""))
        .session();
    for args in [
        &["bdev_set_options", "-p", "32768", "-c", "512"][..],
        &["framework_start_init"],
        &["bdev_malloc_create", "-b", "Malloc0", "64", "512"],
        &["bdev_passthru_create", "-b", "Malloc0", "-p", "Pass0"],
        &["bdev_malloc_create", "-b", "Malloc1", "32", "4096"],
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
        &["bdev_passthru_create", "-b", "Delay0", "-p", "Pass1"],
        &["bdev_malloc_create", "-b", "Malloc2", "32", "4096"],
        &["bdev_error_create", "Malloc2"],
        &[
            "bdev_malloc_create",
            "-b",
            "Malloc3",
            "-u",
            "7f5c8a4e-3a52-4c1e-9b1a-2d0f6a8e4b10",
            "-o",
            "8",
            "8",
            "512",
        ],
        &["bdev_null_create", "Null0", "64", "4096"],
        &["bdev_uring_create", uring, "Uring0", "4096"],
        &[
            "--plugin",
            "pcache_rpc_plugin",
            "bdev_pmem_create",
            pmem,
            "-n",
            "Pmem0",
            "--total-size",
            "8",
            "--mode",
            "emulated",
        ],
        // A pcache bdev, its mode changed at runtime: saved as it is now, and reattached (not
        // formatted) by the targets started from the saved config.
        &[
            "--plugin",
            "pcache_rpc_plugin",
            "bdev_pmem_create",
            cache_pmem,
            "-n",
            "Pmem1",
            "--total-size",
            "32",
            "--mode",
            "emulated",
        ],
        &[
            "bdev_malloc_create",
            "-b",
            "Malloc4",
            "-u",
            "0c7e5b5a-64f1-4bb8-8d0a-4b3c2e1f0a99",
            "32",
            "4096",
        ],
        &[
            "--plugin",
            "pcache_rpc_plugin",
            "bdev_pcache_create",
            "-b",
            "Pcache0",
            "-c",
            "Pmem1",
            "-o",
            "Malloc4",
            "--data-crc",
            "--segment-size",
            "1048576",
        ],
        &[
            "--plugin",
            "pcache_rpc_plugin",
            "bdev_pcache_set_options",
            "Pcache0",
            "-m",
            "writethrough",
        ],
    ] {
        let out = s.run(args);
        assert!(out.ok(), "{args:?}: {out:?}");
    }
    let cli = first.cli();
    let bdevs = bdev_identities(&cli.json(&["bdev_get_bdevs"]));
    assert_eq!(bdevs.len(), 14, "{bdevs:?}");
    let saved = cli.run(&["save_config"]);
    assert!(saved.ok(), "{saved:?}");
    let a = saved.stdout;
    let config: Value = serde_json::from_str(&a).unwrap_or_default();
    let bdev_cfg = config["subsystems"]
        .as_array()
        .and_then(|l| l.iter().find(|s| s["subsystem"] == "bdev"))
        .map(|s| s["config"].clone())
        .unwrap_or_default();
    assert_eq!(bdev_cfg[0]["params"]["bdev_io_cache_size"], 512, "{a}");
    assert!(a.contains("\"mode\": \"emulated\""), "{a}");
    assert!(a.contains("\"mode\": \"writethrough\""), "{a}");
    assert!(
        !a.contains("\"format\""),
        "a saved config never formats: {a}"
    );
    let a_path = d.join("a.json");
    std::fs::write(&a_path, &a).expect("write a.json");
    drop(s);
    assert_eq!(first.terminate(), 0, "{}", first.log_text());

    // A fresh target started on the saved config.
    let mut second = Target::start_in(d, "b", &["-c", a_path.to_str().unwrap_or("")]);
    let cli = second.cli();
    assert_eq!(bdev_identities(&cli.json(&["bdev_get_bdevs"])), bdevs);
    let b = cli.run(&["save_config"]);
    assert!(b.ok(), "{b:?}");
    assert!(
        b.stdout == a,
        "pcache_tgt -c a.json saves a different config:\n{}\n--- a.json:\n{a}",
        b.stdout
    );
    let log = second.log_text();
    assert!(
        log.contains("log replayed") && !log.contains("cache formatted"),
        "the saved config reattaches the cache: {log}"
    );
    assert_eq!(second.terminate(), 0, "{}", second.log_text());

    // SPDK's client loads it into a target waiting for framework_start_init.
    let third = Target::start_in(d, "c", &["--wait-for-rpc"]);
    let cli = third.cli();
    let loaded = cli.run_stdin(&["load_config"], Some(&a));
    assert!(loaded.ok() && loaded.stdout.trim().is_empty(), "{loaded:?}");
    assert!(cli.run(&["framework_wait_init"]).ok());
    assert_eq!(bdev_identities(&cli.json(&["bdev_get_bdevs"])), bdevs);
    let c = cli.run(&["save_config"]);
    assert!(
        c.stdout == a,
        "load_config < a.json saves a different config:\n{}\n--- a.json:\n{a}",
        c.stdout
    );
    // load_subsystem_config of one saved bdev into the running target: a duplicate, refused.
    let malloc = bdev_cfg
        .as_array()
        .and_then(|l| l.iter().find(|e| e["method"] == "bdev_malloc_create"))
        .cloned()
        .unwrap_or_default();
    let bdev_only = serde_json::json!({"subsystem": "bdev", "config": [malloc]});
    let again = cli.run_stdin(&["load_subsystem_config"], Some(&bdev_only.to_string()));
    assert_eq!(again.error().0, -17, "{again:?}");
}

#[test]
fn load_config_of_an_empty_config_just_starts_the_framework() {
    require_spdk_rpc!();
    let t = Target::start_args(&["--wait-for-rpc"]);
    let cli = t.cli();
    let out = cli.run_stdin(
        &["load_config"],
        Some(r#"{"subsystems": [{"subsystem": "bdev", "config": []}]}"#),
    );
    assert!(out.ok(), "{out:?}");
    let current = cli.json(&["rpc_get_methods", "--current"]);
    assert!(
        !current.to_string().contains("framework_start_init"),
        "{current}"
    );
    // A config naming a method the target lacks is refused by the client before anything runs.
    let out = cli.run_stdin(
        &["load_config"],
        Some(r#"{"subsystems": [{"subsystem": "bdev", "config": [{"method": "bdev_nvme_start_discovery"}]}]}"#),
    );
    assert!(
        !out.ok() && out.stdout.contains("Unknown method"),
        "{out:?}"
    );
}
