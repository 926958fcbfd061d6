//! The initiator when the target goes away. SIGKILLed and restarted on the same port with the
//! same config (a file-backed or a durable pcache namespace, so its data survives) while bdevperf writes through
//! the initiator: the I/O waits, resumes on the new connection, and every block reads back.
//! Not back within `ctrlr_loss_timeout_sec`: waiting I/O fails with EIO (after
//! `fast_io_fail_timeout_sec`), the controller and its bdev are deleted, with clear logs.
//! `ctrlr_loss_timeout_sec` 0 (the default): deleted at the first failure.

mod common;

use common::host::*;
use serde_json::json;
use std::time::{Duration, Instant};

/// Writes pattern 21 over all `blocks` of the export's namespace through the initiator,
/// SIGKILLs and restarts the target mid-run, and checks every block from a new process.
fn restart_mid_write(mut e: Export, blocks: u64) {
    let dir = tests::tempdir();
    let cfg = e.client_config(
        "Nvme0",
        json!({"ctrlr_loss_timeout_sec": 60, "reconnect_delay_sec": 1}),
    );
    let perf = Perf::spawn(
        dir.path(),
        "write",
        &cfg,
        &[
            "-T",
            "Nvme0n1",
            "-q",
            "32",
            "-o",
            "4k",
            "-w",
            "write",
            "--pattern",
            "21",
        ],
    );
    // Kill it with writes in flight: well into the run, well before its end.
    poll_until(LONG, "writes through the initiator", || {
        perf.ops("Nvme0n1", "num_write_ops")
            .filter(|&n| n >= blocks / 16)
    });
    e.kill9();
    let lost = Instant::now();
    poll_until(
        Duration::from_secs(20),
        "the initiator to see the loss",
        || perf.ctrlr_state("Nvme0").filter(|s| s != "enabled"),
    );
    let before = perf.ops("Nvme0n1", "num_write_ops").unwrap_or(0);
    e.restart();
    poll_until(
        Duration::from_secs(30),
        "the controller to come back",
        || perf.ctrlr_state("Nvme0").filter(|s| s == "enabled"),
    );
    let back_in = lost.elapsed();
    let r = perf.finish(LONG);
    let j = r.ok();
    assert_eq!(j["blocks_covered"], blocks, "{j:#}");
    assert!(
        before < blocks,
        "the kill came after the run ended ({before})"
    );
    // Whichever queue sees the loss first says so.
    assert!(
        r.output.contains("connection lost") || r.output.contains("I/O qpair failed"),
        "{}",
        r.output
    );
    for line in [
        "reconnecting (ctrlr_loss_timeout_sec 60, reconnect_delay_sec 1",
        "I/O waiting for the controller to come back",
        "reconnected to",
    ] {
        assert!(r.output.contains(line), "no {line:?} in:\n{}", r.output);
    }
    assert!(back_in < Duration::from_secs(30), "{back_in:?}");

    // Everything bdevperf was told is written reads back, from a new process.
    let c = Perf::run(
        dir.path(),
        "check",
        &e.client_config("Nvme0", json!({})),
        &[
            "-T",
            "Nvme0n1",
            "-q",
            "32",
            "-o",
            "64k",
            "-w",
            "check",
            "--pattern",
            "21",
        ],
    );
    let cj = c.ok();
    assert_eq!(
        (cj["blocks_matching"].clone(), cj["blocks_foreign"].clone()),
        (json!(blocks), json!(0)),
        "{cj:#}"
    );
}

#[test]
fn target_restart_loses_nothing() {
    const BLOCKS: u64 = 32768; // 128 MiB of 4 KiB blocks
    let data = tests::tempdir();
    let file = data.path().join("ns.img");
    let e = Export::start(
        vec![uring_on_file("Uring0", &file, BLOCKS * 4096, 4096)],
        "Uring0",
    );
    restart_mid_write(e, BLOCKS);
}

#[test]
fn pcache_namespace_survives_target_restart() {
    // A durable pcache (every completed write is in the cache's log) over a file origin.
    const BLOCKS: u64 = 16384; // 64 MiB origin, 128 MiB cache
    let data = tests::tempdir();
    let origin = data.path().join("origin.img");
    let pmem = data.path().join("cache.pmem");
    let e = Export::start(
        vec![
            json!({"method": "bdev_pmem_create", "params": {"name": "Pmem0",
                   "pmem_file": pmem.to_str().unwrap_or_default(), "block_size": 4096,
                   "num_blocks": 32768, "mode": "emulated"}}),
            uring_on_file("Origin0", &origin, BLOCKS * 4096, 4096),
            json!({"method": "bdev_pcache_create", "params": {"name": "Pcache0",
                   "cache_bdev": "Pmem0", "origin_bdev": "Origin0", "mode": "writeback",
                   "durable": true, "data_crc": true}}),
        ],
        "Pcache0",
    );
    restart_mid_write(e, BLOCKS);
}

#[test]
fn loss_timeout_fails_io_with_eio_and_removes_the_bdev() {
    let mut e = Export::start(vec![malloc("Malloc0", 8192, 4096)], "Malloc0");
    let dir = tests::tempdir();
    let params = json!({"ctrlr_loss_timeout_sec": 4, "reconnect_delay_sec": 1,
                        "fast_io_fail_timeout_sec": 2});
    // A pcache_tgt to watch the controller's states, and bdevperf doing I/O, both attached.
    let watch = Client::start(
        dir.path(),
        "watch",
        &e.client_config("Nvme0", params.clone()),
    );
    let perf = Perf::spawn(
        dir.path(),
        "randwrite",
        &e.client_config("Nvme0", params),
        &[
            "-T",
            "Nvme0n1",
            "-q",
            "16",
            "-o",
            "4k",
            "-w",
            "randwrite",
            "-t",
            "60",
            "-f",
        ],
    );
    poll_until(LONG, "writes through the initiator", || {
        perf.ops("Nvme0n1", "num_write_ops").filter(|&n| n >= 500)
    });
    e.kill9();
    let lost = Instant::now();
    let state = |c: &Client| c.call("bdev_nvme_get_controllers", json!({}));
    poll_until(Duration::from_secs(10), "reconnect attempts", || {
        let s = state(&watch);
        let st = s[0]["ctrlrs"][0]["state"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        (st == "resetting" || st == "reconnect_is_delayed").then_some(())
    });
    // The bdev goes after the loss timeout, not before.
    poll_until(
        Duration::from_secs(20),
        "the controller to be deleted",
        || (state(&watch) == json!([])).then_some(()),
    );
    let gone_after = lost.elapsed();
    assert!(
        gone_after >= Duration::from_millis(3500) && gone_after < Duration::from_secs(15),
        "deleted after {gone_after:?}"
    );
    let (code, _) = watch.call_err("bdev_get_bdevs", json!({"name": "Nvme0n1"}));
    assert_eq!(code, -libc::ENODEV as i64);
    let wlog = watch.proc.text();
    for line in [
        "reconnecting (ctrlr_loss_timeout_sec 4, reconnect_delay_sec 1, fast_io_fail_timeout_sec 2)",
        "giving up, deleting the controller and its bdevs (Nvme0n1); their I/O fails with EIO",
    ] {
        assert!(wlog.contains(line), "no {line:?} in:\n{wlog}");
    }

    // bdevperf: I/O failed (EIO after fast_io_fail_timeout_sec), then its bdev was removed.
    let r = perf.finish(LONG);
    let j = &r.json["results"][0];
    assert!(
        j["io_failed"].as_u64().is_some_and(|n| n > 0),
        "no failed I/O:\n{}\n{:#}",
        r.output,
        r.json
    );
    assert!(
        r.output
            .contains("failing its I/O with EIO while reconnecting goes on"),
        "{}",
        r.output
    );
}

#[test]
fn loss_timeout_zero_deletes_at_the_first_failure() {
    let mut e = Export::start(vec![malloc("Malloc0", 1024, 4096)], "Malloc0");
    let dir = tests::tempdir();
    let c = Client::start(dir.path(), "client", &e.client_config("Nvme0", json!({})));
    assert_eq!(
        c.call("bdev_get_bdevs", json!({"name": "Nvme0n1"}))[0]["num_blocks"],
        1024
    );
    e.kill9();
    poll_until(
        Duration::from_secs(10),
        "the controller to be deleted",
        || (c.call("bdev_nvme_get_controllers", json!({})) == json!([])).then_some(()),
    );
    let (code, _) = c.call_err("bdev_get_bdevs", json!({"name": "Nvme0n1"}));
    assert_eq!(code, -libc::ENODEV as i64);
    assert!(
        c.proc
            .text()
            .contains("ctrlr_loss_timeout_sec is 0: deleting"),
        "{}",
        c.proc.text()
    );
}

#[test]
fn keep_alive_holds_an_idle_controller_and_notices_a_silent_target() {
    // KATO 1 s on both sides: Keep Alive every 500 ms.
    let e = Export::start_with(
        vec![malloc("Malloc0", 1024, 4096)],
        "Malloc0",
        json!({"trtype": "TCP", "min_kato": 1000}),
    );
    let dir = tests::tempdir();
    let mut cfg = e.client_config(
        "Nvme0",
        json!({"ctrlr_loss_timeout_sec": -1, "reconnect_delay_sec": 1}),
    );
    if let Some(list) = cfg["subsystems"][0]["config"].as_array_mut() {
        list.insert(
            0,
            json!({"method": "bdev_nvme_set_options", "params": {"keep_alive_timeout_ms": 1000}}),
        );
    }
    let c = Client::start(dir.path(), "client", &cfg);
    // Idle for three KATOs: the target keeps the controller (keep alives arrive).
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        let n = e
            .call("nvmf_subsystem_get_controllers", json!({"nqn": SUBNQN}))
            .as_array()
            .map_or(0, Vec::len);
        assert_eq!(n, 1, "the target dropped the idle controller:\n{}", e.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    // The target stops answering with its connections open: our keep alive times out.
    e.signal(libc::SIGSTOP);
    let mut proc_log = String::new();
    poll_until(Duration::from_secs(10), "the keep alive timeout", || {
        proc_log = c.proc.text();
        proc_log.contains("keep alive timeout").then_some(())
    });
    e.signal(libc::SIGCONT);
    poll_until(Duration::from_secs(30), "the reconnect", || {
        let s = c.call("bdev_nvme_get_controllers", json!({}));
        (s[0]["ctrlrs"][0]["state"] == "enabled" && c.proc.text().contains("reconnected to"))
            .then_some(())
    });
    assert_eq!(
        c.call("bdev_get_bdevs", json!({"name": "Nvme0n1"}))[0]["num_blocks"],
        1024
    );
}

#[test]
fn detach_while_reconnecting() {
    let mut e = Export::start(vec![malloc("Malloc0", 1024, 4096)], "Malloc0");
    let dir = tests::tempdir();
    let c = Client::start(
        dir.path(),
        "client",
        &e.client_config(
            "Nvme0",
            json!({"ctrlr_loss_timeout_sec": -1, "reconnect_delay_sec": 1}),
        ),
    );
    e.kill9();
    poll_until(Duration::from_secs(10), "reconnect attempts", || {
        let s = c.call("bdev_nvme_get_controllers", json!({}));
        (s[0]["ctrlrs"][0]["state"] == "reconnect_is_delayed").then_some(())
    });
    assert_eq!(
        c.call("bdev_nvme_detach_controller", json!({"name": "Nvme0"})),
        json!(true)
    );
    assert_eq!(c.call("bdev_nvme_get_controllers", json!({})), json!([]));
    let (code, _) = c.call_err("bdev_get_bdevs", json!({"name": "Nvme0n1"}));
    assert_eq!(code, -libc::ENODEV as i64);
}
