//! python/pcache_rpc_plugin.py through SPDK's `spdk-rpc --plugin`: pcache's own verbs with help
//! text, and SPDK's verbs unharmed.

use serde_json::json;
use std::path::PathBuf;
use tests::{Target, require_spdk_rpc, run_process, tempdir};

fn python_dir() -> String {
    tests::workspace_root()
        .join("python")
        .to_string_lossy()
        .into_owned()
}

fn plugin_cli(t: &Target) -> tests::SpdkRpc {
    t.cli().env("PYTHONPATH", &python_dir())
}

#[test]
fn plugin_adds_pmem_verbs() {
    require_spdk_rpc!();
    let t = Target::start();
    let cli = plugin_cli(&t);
    let dir = tempdir();
    let file = dir.path().join("pmem0.img");
    let file = file.to_str().unwrap_or("");
    let p = |args: &[&str]| {
        let mut full = vec!["--plugin", "pcache_rpc_plugin"];
        full.extend_from_slice(args);
        cli.run(&full)
    };

    let help = p(&["bdev_pmem_create", "--help"]);
    assert!(help.ok(), "{help:?}");
    for text in [
        "--mode {auto,emulated,msync}",
        "--total-size",
        "--num-blocks",
        "--block-size",
        "pmem_file",
        "MAP_SYNC",
    ] {
        assert!(
            help.stdout.contains(text),
            "help lacks {text}:\n{}",
            help.stdout
        );
    }
    let list = p(&["--help"]);
    assert!(
        list.stdout.contains("bdev_pmem_delete") && list.stdout.contains("bdev_malloc_create"),
        "{list:?}"
    );

    let out = p(&[
        "bdev_pmem_create",
        file,
        "-n",
        "Pmem0",
        "--num-blocks",
        "2048",
        "--block-size",
        "4096",
        "-m",
        "emulated",
    ]);
    assert_eq!((out.code, out.stdout.trim()), (0, "Pmem0"), "{out:?}");
    let b = cli.json(&["bdev_get_bdevs", "-b", "Pmem0"]);
    assert_eq!(
        (b[0]["num_blocks"].clone(), b[0]["block_size"].clone()),
        (json!(2048), json!(4096))
    );
    assert_eq!(b[0]["driver_specific"]["pmem"]["mode"], "emulated");
    // The exact request the verb sends.
    let dry = p(&[
        "--dry-run",
        "bdev_pmem_create",
        file,
        "-n",
        "P",
        "--total-size",
        "4",
        "-u",
        "0b5c3d4e-1a2b-4c3d-8e9f-0a1b2c3d4e5f",
    ]);
    let req: serde_json::Value =
        serde_json::from_str(dry.stdout.trim_start_matches("Request:\n")).unwrap_or_default();
    assert_eq!(
        req["params"],
        json!({"name": "P", "pmem_file": file, "block_size": 4096, "num_blocks": 1024, "uuid": "0b5c3d4e-1a2b-4c3d-8e9f-0a1b2c3d4e5f"}),
        "{dry:?}"
    );

    // Errors as SPDK prints them; SPDK's verbs still work with the plugin loaded.
    assert_eq!(
        p(&["bdev_pmem_create", file, "-n", "Pmem0"]).error(),
        (-17, "File exists".into())
    );
    let out = p(&["bdev_malloc_create", "-b", "Malloc0", "8", "512"]);
    assert_eq!(out.stdout.trim(), "Malloc0", "{out:?}");
    let out = p(&["bdev_pmem_delete", "Pmem0"]);
    assert!(out.ok() && out.stdout.is_empty(), "{out:?}");
    assert_eq!(
        p(&["bdev_pmem_delete", "Pmem0"]).error(),
        (-19, "No such device".into())
    );
    // The file is kept and opens again as it is.
    let out = p(&["bdev_pmem_create", file, "-n", "Pmem1"]);
    assert_eq!(out.stdout.trim(), "Pmem1", "{out:?}");
    assert_eq!(
        cli.json(&["bdev_get_bdevs", "-b", "Pmem1"])[0]["num_blocks"],
        2048
    );
}

#[test]
fn plugin_keeps_a_verb_the_client_already_has() {
    require_spdk_rpc!();
    // As if SPDK's client still had its old bdev_pmem_create: the plugin keeps that parser, adds
    // pcache's options, and the command sends pcache's parameters.
    let python: PathBuf = tests::spdk_rpc_bin()
        .and_then(|b| b.parent().map(|d| d.join("python")))
        .unwrap_or_default();
    let script = r#"
import argparse, json, pcache_rpc_plugin as plugin
parser = argparse.ArgumentParser()
sub = parser.add_subparsers(dest="called_rpc_name")
old = sub.add_parser("bdev_pmem_create", help="SPDK's own")
old.add_argument("pmem_file")
old.add_argument("-n", "--name", required=True)
old.add_argument("-u", "--uuid")
old.add_argument("-m", "--md-size", type=int)
plugin.spdk_rpc_plugin_initialize(sub)
assert sub.choices["bdev_pmem_create"] is old
args = parser.parse_args(["bdev_pmem_create", "/f", "-n", "P", "--mode", "msync", "--total-size", "1"])
class Client:
    def call(self, method, params):
        print(json.dumps({"method": method, "params": params}, sort_keys=True))
        return params["name"]
args.client = Client()
args.func(args)
"#;
    let envs = [("PYTHONPATH".to_owned(), python_dir())];
    let out = run_process(&python, &["-c", script], &envs, None);
    assert!(out.ok(), "{out:?}");
    let first = out.stdout.lines().next().unwrap_or_default();
    let sent: serde_json::Value = serde_json::from_str(first).unwrap_or_default();
    assert_eq!(
        sent,
        json!({"method": "bdev_pmem_create", "params": {"name": "P", "pmem_file": "/f", "mode": "msync", "block_size": 4096, "num_blocks": 256}}),
        "{out:?}"
    );
}

#[test]
fn plugin_drives_a_pcache_bdev() {
    require_spdk_rpc!();
    let t = Target::start();
    let cli = plugin_cli(&t);
    let dir = tempdir();
    let file = dir.path().join("cache.pmem");
    let file = file.to_str().unwrap_or("");
    let p = |args: &[&str]| {
        let mut full = vec!["--plugin", "pcache_rpc_plugin"];
        full.extend_from_slice(args);
        cli.run(&full)
    };
    let help = p(&["bdev_pcache_create", "--help"]);
    for text in [
        "--cache-bdev",
        "--origin-bdev",
        "--data-crc",
        "--gc-percent",
        "writearound",
    ] {
        assert!(
            help.stdout.contains(text),
            "help lacks {text}:\n{}",
            help.stdout
        );
    }
    assert!(
        p(&[
            "bdev_pmem_create",
            file,
            "-n",
            "Pmem0",
            "--total-size",
            "64",
            "-m",
            "emulated"
        ])
        .ok()
    );
    assert!(p(&["bdev_malloc_create", "-b", "Origin0", "32", "4096"]).ok());
    let out = p(&[
        "bdev_pcache_create",
        "-b",
        "Pcache0",
        "-c",
        "Pmem0",
        "-o",
        "Origin0",
        "--data-crc",
    ]);
    assert_eq!((out.code, out.stdout.trim()), (0, "Pcache0"), "{out:?}");
    let b = cli.json(&["bdev_get_bdevs", "-b", "Pcache0"]);
    assert_eq!(b[0]["num_blocks"], json!(8192));
    assert_eq!(b[0]["driver_specific"]["pcache"]["data_crc"], json!(true));
    let stats = p(&["bdev_pcache_get_stats", "Pcache0"]);
    let s: serde_json::Value = serde_json::from_str(&stats.stdout).unwrap_or_default();
    assert_eq!(s["dirty_bytes"], json!(0), "{stats:?}");
    assert!(p(&["bdev_pcache_flush_start", "Pcache0"]).ok());
    let st = p(&["bdev_pcache_flush_status", "Pcache0"]);
    let st: serde_json::Value = serde_json::from_str(&st.stdout).unwrap_or_default();
    assert_eq!(st["dirty_bytes"], json!(0), "{st}");
    // Runtime options: the mode and tunables change, show in bdev_get_bdevs (so save_config
    // keeps them), and a bad value is refused naming the parameter.
    let out = p(&[
        "bdev_pcache_set_options",
        "Pcache0",
        "-m",
        "writethrough",
        "--sequential-cutoff",
        "4194304",
        "--promotion-threshold",
        "2",
    ]);
    assert!(out.ok(), "{out:?}");
    let b = cli.json(&["bdev_get_bdevs", "-b", "Pcache0"]);
    let pc = &b[0]["driver_specific"]["pcache"];
    assert_eq!(
        (
            &pc["mode"],
            &pc["sequential_cutoff"],
            &pc["promotion_threshold"]
        ),
        (&json!("writethrough"), &json!(4194304), &json!(2)),
        "{b}"
    );
    let (code, msg) = p(&["bdev_pcache_set_options", "Pcache0", "-g", "95"]).error();
    assert_eq!(code, -22, "{msg}");
    assert!(msg.contains("gc_percent"), "{msg}");
    let help = p(&["bdev_pcache_set_options", "--help"]);
    assert!(
        help.stdout.contains("--sequential-cutoff"),
        "{}",
        help.stdout
    );
    assert!(p(&["bdev_pcache_reset_stats", "Pcache0"]).ok());
    // The cache is claimed: a second cache on the same pmem is refused.
    let out = p(&[
        "bdev_pcache_create",
        "-b",
        "Pcache1",
        "-c",
        "Pmem0",
        "-o",
        "Origin0",
    ]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(p(&["bdev_pcache_delete", "Pcache0"]).ok());
    assert_eq!(
        p(&["bdev_pcache_delete", "Pcache0"]).error(),
        (-19, "No such device".into())
    );
}
