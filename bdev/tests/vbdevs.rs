//! The passthru, delay and error vbdevs over malloc, under the deterministic harness: data round
//! trips, examine, claims, hot-remove, the wait list, held completions under the virtual clock,
//! every error injection, and the SPDK shapes of their RPCs, driver_specific and save_config.

use bdev::delay::{self, rpc::DelayCreateParams};
use bdev::error_inject::{
    self as error,
    rpc::{ErrorCreateParams, ErrorInjectParams, ErrorType, InjectIoType},
};
use bdev::malloc::{self, rpc::MallocCreateParams};
use bdev::passthru::{self, rpc::PassthruCreateParams};
use bdev::{Bdev, BdevDesc, DmaBuf, IoCtx, IoFlags, IoType};
use poller::Harness;
use rpc::RpcError;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

mod common;
use common::{done, iov, open, pattern, read, record, write};

fn malloc(h: &Harness, name: &str, blocks: u64, bs: u32, uuid: Option<&str>) -> Bdev {
    let mut p = MallocCreateParams::new(name, blocks, bs);
    p.uuid = uuid.map(|u| u.parse().unwrap());
    h.run_on(0, || malloc::create(p).unwrap())
}

/// Unregisters a bdev and polls until it is gone.
fn remove(h: &Harness, b: Bdev) {
    let name = b.name().to_string();
    h.run_on(0, || b.unregister(|r| r.unwrap()));
    h.poll_until_idle(100);
    assert!(Bdev::lookup(&name).is_none());
}

fn setup_rpcs() {
    passthru::rpc::register_rpcs();
    delay::rpc::register_rpcs();
    error::rpc::register_rpcs();
    rpc::set_state(rpc::AppState::Runtime);
}

fn call(h: &Harness, method: &str, params: Value) -> Result<Value, RpcError> {
    setup_rpcs();
    common::call(h, method, params)
}

fn module_config(module: &str) -> Vec<Value> {
    bdev::modules()
        .into_iter()
        .find(|m| m.name() == module)
        .map(|m| m.config_json())
        .unwrap_or_default()
}

fn config_entry(module: &str, key: &str, value: &str) -> Option<String> {
    module_config(module)
        .into_iter()
        .find(|e| e["params"][key] == value)
        .map(|e| e.to_string())
}

// ---------------------------------------------------------------- passthru

#[test]
fn passthru_round_trips_at_qd32_and_data_lands_on_the_base() {
    let h = Harness::new(1);
    let base = malloc(&h, "pt_rt_base", 1024, 512, None);
    let pt = h
        .run_on(0, || {
            passthru::create(PassthruCreateParams::new("pt_rt", "pt_rt_base"))
        })
        .unwrap()
        .unwrap();
    assert_eq!(
        (pt.block_size(), pt.num_blocks(), pt.props().write_cache),
        (512, 1024, base.props().write_cache)
    );
    let (desc, ch) = open(&h, "pt_rt", true);
    let bufs: Vec<DmaBuf> = (0..32).map(|i| pattern(4 * 512, i as u8)).collect();
    for (i, b) in bufs.iter().enumerate() {
        write(&h, &ch, b, i as u64 * 4, i);
    }
    assert!(done().is_empty(), "completions are deferred");
    h.poll_until_idle(100);
    assert_eq!(done(), (0..32).map(|i| (i, true)).collect::<Vec<_>>());

    // The data is on the base (read past the claim through a read-only descriptor).
    let (bdesc, bch) = open(&h, "pt_rt_base", false);
    let all = DmaBuf::new(32 * 4 * 512, 4096).unwrap();
    read(&h, &bch, &all, 0, 100);
    h.poll_until_idle(100);
    assert_eq!(done(), vec![(100, true)]);
    for (i, b) in bufs.iter().enumerate() {
        assert_eq!(&all.as_slice()[i * 2048..(i + 1) * 2048], b.as_slice());
    }

    // And reads back through the passthru at QD 32.
    let rbufs: Vec<DmaBuf> = (0..32)
        .map(|_| DmaBuf::new(4 * 512, 4096).unwrap())
        .collect();
    for (i, b) in rbufs.iter().enumerate() {
        read(&h, &ch, b, i as u64 * 4, i);
    }
    h.poll_until_idle(100);
    assert_eq!(done().len(), 32);
    for (r, w) in rbufs.iter().zip(&bufs) {
        assert_eq!(r.as_slice(), w.as_slice());
    }
    // Flush, unmap, write_zeroes and reset go down too.
    h.run_on(0, || {
        ch.flush(0, 8, record, IoCtx::Word(1)).unwrap();
        ch.unmap(0, 4, record, IoCtx::Word(2)).unwrap();
        ch.write_zeroes(4, 4, record, IoCtx::Word(3)).unwrap();
        ch.reset(record, IoCtx::Word(4)).unwrap();
    });
    h.poll_until_idle(100);
    assert_eq!(done(), vec![(1, true), (2, true), (3, true), (4, true)]);
    read(&h, &bch, &all, 0, 5);
    h.poll_until_idle(100);
    assert!(all.as_slice()[..8 * 512].iter().all(|b| *b == 0));
    let (st, bst) = (ch.stat(), bch.stat());
    assert_eq!((st.write.ops, st.read.ops, st.num_flush_ops), (32, 32, 1));
    // The base's channel on this thread counts the passthru's children and our own reads.
    assert_eq!((bst.write.ops, bst.read.ops), (32, 32 + 2));
    drop((ch, desc, bch, bdesc));
    remove(&h, pt);
    assert!(base.claimed_by().is_none(), "destruct released the claim");
    remove(&h, base);
}

#[test]
fn passthru_configured_before_its_base_attaches_on_examine() {
    let h = Harness::new(1);
    let r = call(
        &h,
        "bdev_passthru_create",
        json!({"base_bdev_name": "pt_late_base", "name": "pt_late"}),
    );
    assert_eq!(
        r,
        Ok(json!("pt_late")),
        "accepted while the base is missing"
    );
    assert!(Bdev::lookup("pt_late").is_none());
    assert!(
        config_entry("passthru", "name", "pt_late").is_some(),
        "a waiting configuration is saved"
    );
    let base = malloc(&h, "pt_late_base", 64, 512, None);
    let pt = Bdev::lookup("pt_late").expect("attached when the base registered");
    assert_eq!(base.claimed_by().as_deref(), Some("passthru"));
    assert_eq!(pt.num_blocks(), 64);
    assert_eq!(
        call(&h, "bdev_passthru_delete", json!({"name": "pt_late"})),
        Ok(json!(true))
    );
    assert!(Bdev::lookup("pt_late").is_none());
    assert!(base.claimed_by().is_none());
    assert!(config_entry("passthru", "name", "pt_late").is_none());

    // A waiting configuration can be deleted too.
    passthru::create(PassthruCreateParams::new("pt_never", "pt_never_base")).unwrap();
    assert_eq!(
        call(&h, "bdev_passthru_delete", json!({"name": "pt_never"})),
        Ok(json!(true))
    );
    let e = call(&h, "bdev_passthru_delete", json!({"name": "pt_never"})).unwrap_err();
    assert_eq!((e.code(), e.message().as_str()), (-19, "No such device"));
    remove(&h, base);
}

#[test]
fn passthru_claim_prevents_a_second_vbdev_on_the_same_base() {
    let h = Harness::new(1);
    let base = malloc(&h, "pt_claim_base", 64, 512, None);
    let r = call(
        &h,
        "bdev_passthru_create",
        json!({"base_bdev_name": "pt_claim_base", "name": "pt_claim_a"}),
    );
    assert_eq!(r, Ok(json!("pt_claim_a")));
    let e = h
        .run_on(0, || {
            passthru::create(PassthruCreateParams::new("pt_claim_b", "pt_claim_base"))
        })
        .unwrap_err();
    assert_eq!(e.errno(), libc::EPERM);
    assert!(Bdev::lookup("pt_claim_b").is_none());
    // The refused configuration was not kept: the same name is refused for the claim again.
    let e = call(
        &h,
        "bdev_passthru_create",
        json!({"base_bdev_name": "pt_claim_base", "name": "pt_claim_b"}),
    )
    .unwrap_err();
    assert_eq!(
        (e.code(), e.message().as_str()),
        (-1, "Operation not permitted")
    );
    let e = call(
        &h,
        "bdev_passthru_create",
        json!({"base_bdev_name": "pt_claim_base", "name": "pt_claim_a"}),
    )
    .unwrap_err();
    assert_eq!((e.code(), e.message().as_str()), (-17, "File exists"));
    let e = call(&h, "bdev_passthru_create", json!({"name": "x"})).unwrap_err();
    assert_eq!(e.code(), -32602);
    let e = call(&h, "bdev_passthru_delete", json!({"name": "pt_claim_base"})).unwrap_err();
    assert_eq!(e.code(), -19, "not a passthru bdev");
    assert_eq!(
        call(&h, "bdev_passthru_delete", json!({"name": "pt_claim_a"})),
        Ok(json!(true))
    );
    remove(&h, base);
}

#[test]
fn passthru_goes_away_with_its_base_and_comes_back_with_it() {
    let h = Harness::new(2);
    let base = malloc(&h, "pt_hot_base", 64, 512, None);
    h.run_on(0, || {
        passthru::create(PassthruCreateParams::new("pt_hot", "pt_hot_base"))
    })
    .unwrap();
    // A user of the passthru on thread 1 closes its descriptor when told to.
    let slot: Arc<Mutex<Option<BdevDesc>>> = Arc::new(Mutex::new(None));
    let s = slot.clone();
    let d = h.run_on(1, || {
        BdevDesc::open("pt_hot", true, move |_| drop(s.lock().unwrap().take())).unwrap()
    });
    *slot.lock().unwrap() = Some(d);
    let removed = Arc::new(Mutex::new(None));
    let r = removed.clone();
    h.run_on(0, || {
        malloc::delete("pt_hot_base", move |res| *r.lock().unwrap() = Some(res))
    });
    h.poll_until_idle(100);
    assert_eq!(
        *removed.lock().unwrap(),
        Some(Ok(())),
        "the base's removal finished"
    );
    assert!(Bdev::lookup("pt_hot").is_none());
    assert!(slot.lock().unwrap().is_none(), "the user was told");
    drop(base);
    // The configuration stays (as SPDK): the base coming back brings the passthru back.
    let base = malloc(&h, "pt_hot_base", 64, 512, None);
    let pt = Bdev::lookup("pt_hot").expect("re-attached");
    remove(&h, pt);
    passthru::delete("pt_hot", |r| r.unwrap());
    remove(&h, base);
}

#[test]
fn passthru_queues_on_no_memory_and_retries() {
    let h = Harness::new(1);
    let base = malloc(&h, "pt_nomem_base", 64, 512, None);
    let pt = h
        .run_on(0, || {
            passthru::create(PassthruCreateParams::new("pt_nomem", "pt_nomem_base"))
        })
        .unwrap()
        .unwrap();
    let (bdesc, bch) = open(&h, "pt_nomem_base", false);
    let (pdesc, pch) = open(&h, "pt_nomem", true);
    let w = pattern(512, 9);
    write(&h, &pch, &w, 3, 0);
    h.poll_until_idle(100);
    assert_eq!(done(), vec![(0, true)]);
    // Leave exactly one I/O in this thread's pool: the parent gets it, its child cannot.
    let pool = bdev::options().bdev_io_cache_size as usize;
    let scratch = DmaBuf::new(512, 4096).unwrap();
    for i in 0..pool - 1 {
        read(&h, &bch, &scratch, 0, 1000 + i);
    }
    let r = DmaBuf::new(512, 4096).unwrap();
    read(&h, &pch, &r, 3, 1);
    h.poll_until_idle(100);
    let d = done();
    assert_eq!(d.len(), pool);
    assert!(d.iter().all(|(_, ok)| *ok));
    assert_eq!(r.as_slice(), w.as_slice(), "the retried read went through");
    drop((bch, bdesc, pch, pdesc));
    remove(&h, pt);
    remove(&h, base);
}

#[test]
fn passthru_matches_spdk_uuid_info_and_save_config() {
    let h = Harness::new(1);
    let base = malloc(
        &h,
        "pt_gold_base",
        64,
        512,
        Some("f82268eb-a0e8-4787-a41a-cd1ad5667538"),
    );
    let pt = h
        .run_on(0, || {
            passthru::create(PassthruCreateParams::new("pt_gold", "pt_gold_base"))
        })
        .unwrap()
        .unwrap();
    // SPDK v26.05 gave Pass0 on this Malloc0 UUID exactly this UUID.
    assert_eq!(
        pt.uuid().to_string(),
        "58ba8c26-412d-59d4-815c-1666f5ceb579"
    );
    let info = pt.info_json();
    assert_eq!(info["product_name"], "passthru");
    assert_eq!(
        info["driver_specific"].to_string(),
        r#"{"passthru":{"name":"pt_gold","base_bdev_name":"pt_gold_base"}}"#
    );
    assert_eq!(
        info["supported_io_types"],
        base.info_json()["supported_io_types"]
    );
    assert_eq!(base.info_json()["claimed"], true);
    let saved = config_entry("passthru", "name", "pt_gold").unwrap();
    assert_eq!(
        saved,
        r#"{"method":"bdev_passthru_create","params":{"base_bdev_name":"pt_gold_base","name":"pt_gold","uuid":"58ba8c26-412d-59d4-815c-1666f5ceb579"}}"#
    );
    // Save, delete, restore from the saved entry: same bdev, same UUID.
    let params: Value = serde_json::from_str::<Value>(&saved).unwrap()["params"].clone();
    assert_eq!(
        call(&h, "bdev_passthru_delete", json!({"name": "pt_gold"})),
        Ok(json!(true))
    );
    assert_eq!(
        call(&h, "bdev_passthru_create", params),
        Ok(json!("pt_gold"))
    );
    let pt = Bdev::lookup("pt_gold").unwrap();
    assert_eq!(
        pt.uuid().to_string(),
        "58ba8c26-412d-59d4-815c-1666f5ceb579"
    );
    remove(&h, pt);
    passthru::delete("pt_gold", |r| r.unwrap());
    remove(&h, base);
}

// ---------------------------------------------------------------- delay

fn delay_over_malloc(h: &Harness, name: &str, read: (u64, u64), write: (u64, u64)) -> (Bdev, Bdev) {
    let base = malloc(h, &format!("{name}_base"), 64, 4096, None);
    let p = DelayCreateParams::new(name, base.name(), read, write);
    let d = h.run_on(0, || delay::create(p)).unwrap().unwrap();
    (base, d)
}

#[test]
fn delay_holds_each_completion_for_its_latency() {
    let mut h = Harness::new(1);
    let (base, dl) = delay_over_malloc(&h, "dl_hold", (100, 100), (300, 300));
    let (desc, ch) = open(&h, "dl_hold", true);
    let w = pattern(4096, 1);
    write(&h, &ch, &w, 7, 1);
    h.poll_until_idle(100);
    assert!(done().is_empty(), "the base is done, the write is held");
    h.advance_us(150);
    h.poll_until_idle(100);
    assert!(done().is_empty(), "150 of 300 us");
    h.advance_us(200);
    h.poll_until_idle(100);
    assert_eq!(done(), vec![(1, true)]);

    let r = DmaBuf::new(4096, 4096).unwrap();
    read(&h, &ch, &r, 7, 2);
    h.poll_until_idle(100);
    h.advance_us(60);
    h.poll_until_idle(100);
    assert!(done().is_empty(), "reads use the read latency (100 us)");
    h.advance_us(60);
    h.poll_until_idle(100);
    assert_eq!(done(), vec![(2, true)]);
    assert_eq!(r.as_slice(), w.as_slice());

    // Other types are not delayed (as SPDK).
    h.run_on(0, || ch.unmap(0, 1, record, IoCtx::Word(3)).unwrap());
    h.poll_until_idle(100);
    assert_eq!(done(), vec![(3, true)]);
    drop((ch, desc));
    remove(&h, dl);
    remove(&h, base);
}

#[test]
fn delay_update_latency_applies_to_new_io() {
    let mut h = Harness::new(1);
    let (base, dl) = delay_over_malloc(&h, "dl_upd", (10, 10), (10, 10));
    for t in ["avg_read", "p99_read"] {
        let r = call(
            &h,
            "bdev_delay_update_latency",
            json!({"delay_bdev_name": "dl_upd", "latency_type": t, "latency_us": 1000}),
        );
        assert_eq!(r, Ok(json!(true)));
    }
    let info = dl.info_json()["driver_specific"]["delay"].clone();
    assert_eq!(
        (
            info["avg_read_latency"].clone(),
            info["p99_write_latency"].clone()
        ),
        (json!(1000), json!(10))
    );
    let (desc, ch) = open(&h, "dl_upd", false);
    let r = DmaBuf::new(4096, 4096).unwrap();
    read(&h, &ch, &r, 0, 1);
    h.poll_until_idle(100);
    h.advance_us(500);
    h.poll_until_idle(100);
    assert!(done().is_empty());
    h.advance_us(600);
    h.poll_until_idle(100);
    assert_eq!(done(), vec![(1, true)]);

    let e = call(
        &h,
        "bdev_delay_update_latency",
        json!({"delay_bdev_name": "nope", "latency_type": "avg_read", "latency_us": 1}),
    )
    .unwrap_err();
    assert_eq!(
        (e.code(), e.message().as_str()),
        (-32602, "The requested bdev does not exist.")
    );
    let e = call(
        &h,
        "bdev_delay_update_latency",
        json!({"delay_bdev_name": "dl_upd", "latency_type": "max_read", "latency_us": 1}),
    )
    .unwrap_err();
    assert_eq!(e.code(), -32602);
    let e = call(
        &h,
        "bdev_delay_create",
        json!({"base_bdev_name": "x", "name": "dl_bad", "avg_read_latency": 10,
               "p99_read_latency": 5, "avg_write_latency": 1, "p99_write_latency": 1}),
    )
    .unwrap_err();
    assert_eq!(e.code(), -22, "p99 below the average");
    drop((ch, desc));
    assert_eq!(
        call(&h, "bdev_delay_delete", json!({"name": "dl_upd"})),
        Ok(json!(true))
    );
    remove(&h, base);
}

#[test]
fn delay_applies_p99_to_about_one_io_in_a_hundred() {
    let mut h = Harness::new(1);
    let (base, dl) = delay_over_malloc(&h, "dl_p99", (10, 10_000), (10, 10));
    let (desc, ch) = open(&h, "dl_p99", false);
    let r = DmaBuf::new(4096, 4096).unwrap();
    for i in 0..400 {
        read(&h, &ch, &r, 0, i);
    }
    h.poll_until_idle(100);
    h.advance_us(20);
    h.poll_until_idle(100);
    let fast = done().len();
    assert!(
        (380..=400).contains(&fast),
        "{fast} of 400 got the average latency"
    );
    h.advance_us(10_000);
    h.poll_until_idle(100);
    assert_eq!(done().len(), 400 - fast);
    drop((ch, desc));
    remove(&h, dl);
    remove(&h, base);
}

#[test]
fn delay_reset_aborts_held_io() {
    let h = Harness::new(2);
    let (base, dl) = delay_over_malloc(&h, "dl_reset", (1_000_000, 1_000_000), (10, 10));
    let (desc, ch) = open(&h, "dl_reset", true);
    let r = DmaBuf::new(4096, 4096).unwrap();
    read(&h, &ch, &r, 0, 1);
    h.poll_until_idle(100);
    assert!(done().is_empty());
    h.run_on(0, || ch.reset(record, IoCtx::Word(2)).unwrap());
    h.poll_until_idle(100);
    assert_eq!(done(), vec![(1, false), (2, true)]);
    drop((ch, desc));
    remove(&h, dl);
    remove(&h, base);
}

#[test]
fn delay_matches_spdk_uuid_info_and_save_config() {
    let h = Harness::new(1);
    let base = malloc(
        &h,
        "dl_gold_base",
        32,
        4096,
        Some("76418454-efc6-4947-a651-13ee60eb79df"),
    );
    let r = call(
        &h,
        "bdev_delay_create",
        json!({"base_bdev_name": "dl_gold_base", "name": "dl_gold", "avg_read_latency": 10,
               "p99_read_latency": 20, "avg_write_latency": 30, "p99_write_latency": 40}),
    );
    assert_eq!(r, Ok(json!("dl_gold")));
    let dl = Bdev::lookup("dl_gold").unwrap();
    let uuid = "c6136b94-5e28-5f50-a0ba-cb36f37d3118";
    assert_eq!(dl.uuid().to_string(), uuid, "SPDK's UUID for this base");
    assert_eq!(dl.info_json()["product_name"], "delay");
    let params = format!(
        r#"{{"name":"dl_gold","base_bdev_name":"dl_gold_base","uuid":"{uuid}","avg_read_latency":10,"p99_read_latency":20,"avg_write_latency":30,"p99_write_latency":40}}"#
    );
    assert_eq!(
        dl.info_json()["driver_specific"].to_string(),
        format!(r#"{{"delay":{params}}}"#)
    );
    assert_eq!(
        config_entry("delay", "name", "dl_gold").unwrap(),
        format!(r#"{{"method":"bdev_delay_create","params":{params}}}"#)
    );
    let e = call(
        &h,
        "bdev_delay_create",
        json!({"base_bdev_name": "dl_gold_base", "name": "dl_gold", "avg_read_latency": 1,
               "p99_read_latency": 1, "avg_write_latency": 1, "p99_write_latency": 1}),
    )
    .unwrap_err();
    assert_eq!(e.code(), -17);
    assert_eq!(
        call(&h, "bdev_delay_delete", json!({"name": "dl_gold"})),
        Ok(json!(true))
    );
    assert!(config_entry("delay", "name", "dl_gold").is_none());
    remove(&h, base);
}

// ---------------------------------------------------------------- error injection

fn error_over_malloc(h: &Harness, base: &str) -> (Bdev, Bdev, String) {
    let b = malloc(h, base, 64, 512, None);
    let ee = h
        .run_on(0, || error::create(ErrorCreateParams::new(base)))
        .unwrap()
        .unwrap();
    let name = ee.name().to_string();
    assert_eq!(name, format!("EE_{base}"));
    (b, ee, name)
}

fn inject(name: &str, io: InjectIoType, t: ErrorType, num: u32) {
    error::inject_error(&ErrorInjectParams::new(name, io, t, num)).unwrap();
}

#[test]
fn error_failure_affects_exactly_num_ios_then_io_passes() {
    let h = Harness::new(1);
    let (base, ee, name) = error_over_malloc(&h, "ee_fail");
    let (desc, ch) = open(&h, &name, true);
    let buf = DmaBuf::new(512, 4096).unwrap();
    inject(&name, InjectIoType::Read, ErrorType::Failure, 3);
    assert_eq!(error::injections_left(&name, IoType::Read), Some(3));
    for i in 0..5 {
        read(&h, &ch, &buf, 0, i);
    }
    h.poll_until_idle(100);
    assert_eq!(
        done(),
        vec![(0, false), (1, false), (2, false), (3, true), (4, true)]
    );
    assert_eq!(error::injections_left(&name, IoType::Read), Some(0));
    write(&h, &ch, &buf, 0, 5);
    h.poll_until_idle(100);
    assert_eq!(done(), vec![(5, true)], "writes were never armed");

    // `all` arms read, write, unmap and flush; write_zeroes is never injected (as SPDK).
    let mut p = ErrorInjectParams::new(&name, InjectIoType::All, ErrorType::NvmeFailure, 1);
    p.nvme_sc = 2;
    error::inject_error(&p).unwrap();
    h.run_on(0, || {
        for w in 0..2 {
            ch.read(&[iov(&buf)], 0, 1, record, IoCtx::Word(10 + w))
                .unwrap();
            ch.write(
                &[iov(&buf)],
                0,
                1,
                IoFlags::default(),
                record,
                IoCtx::Word(20 + w),
            )
            .unwrap();
            ch.unmap(0, 1, record, IoCtx::Word(30 + w)).unwrap();
            ch.flush(0, 1, record, IoCtx::Word(40 + w)).unwrap();
            ch.write_zeroes(0, 1, record, IoCtx::Word(50 + w)).unwrap();
        }
    });
    h.poll_until_idle(100);
    let d = done();
    let failed: Vec<usize> = d.iter().filter(|(_, ok)| !ok).map(|(w, _)| *w).collect();
    assert_eq!(failed, vec![10, 20, 30, 40]);
    assert_eq!(d.len(), 10);

    // `clear` disarms everything.
    inject(&name, InjectIoType::Read, ErrorType::Failure, 100);
    inject(&name, InjectIoType::Clear, ErrorType::Failure, 1);
    read(&h, &ch, &buf, 0, 60);
    h.poll_until_idle(100);
    assert_eq!(done(), vec![(60, true)]);
    drop((ch, desc));
    remove(&h, ee);
    remove(&h, base);
}

#[test]
fn error_queue_depth_arms_only_under_load() {
    let h = Harness::new(1);
    let (base, ee, name) = error_over_malloc(&h, "ee_qd");
    let (desc, ch) = open(&h, &name, false);
    let buf = DmaBuf::new(512, 4096).unwrap();
    let mut p = ErrorInjectParams::new(&name, InjectIoType::Read, ErrorType::Failure, 1);
    p.queue_depth = 2;
    error::inject_error(&p).unwrap();
    for i in 0..3 {
        read(&h, &ch, &buf, 0, i);
    }
    h.poll_until_idle(100);
    assert_eq!(done(), vec![(0, true), (1, true), (2, false)]);
    drop((ch, desc));
    remove(&h, ee);
    remove(&h, base);
}

#[test]
fn error_pending_holds_num_ios_until_resumed_or_reset() {
    let h = Harness::new(2);
    let (base, ee, name) = error_over_malloc(&h, "ee_pend");
    let (desc, ch) = open(&h, &name, true);
    let buf = DmaBuf::new(512, 4096).unwrap();
    inject(&name, InjectIoType::Read, ErrorType::Pending, 2);
    for i in 0..4 {
        read(&h, &ch, &buf, 0, i);
    }
    h.poll_until_idle(100);
    assert_eq!(done(), vec![(2, true), (3, true)], "the first two are held");
    assert_eq!(
        call(&h, "bdev_error_resume_pending", json!({"name": name})),
        Ok(json!(true))
    );
    assert_eq!(done(), vec![(0, true), (1, true)]);

    inject(&name, InjectIoType::Read, ErrorType::Pending, 1);
    read(&h, &ch, &buf, 0, 5);
    h.poll_until_idle(100);
    assert!(done().is_empty());
    h.run_on(0, || ch.reset(record, IoCtx::Word(6)).unwrap());
    h.poll_until_idle(100);
    assert_eq!(
        done(),
        vec![(5, false), (6, true)],
        "a reset aborts held I/O"
    );
    let e = call(&h, "bdev_error_resume_pending", json!({"name": "nope"})).unwrap_err();
    assert_eq!(e.code(), -19);
    drop((ch, desc));
    remove(&h, ee);
    remove(&h, base);
}

#[test]
fn error_corrupt_data_flips_a_byte_on_the_way_down_or_up() {
    let h = Harness::new(1);
    let (base, ee, name) = error_over_malloc(&h, "ee_corrupt");
    let (desc, ch) = open(&h, &name, true);
    let (bdesc, bch) = open(&h, "ee_corrupt", false);
    let w = pattern(1024, 3);
    let mut p = ErrorInjectParams::new(&name, InjectIoType::Write, ErrorType::CorruptData, 1);
    (p.corrupt_offset, p.corrupt_value) = (5, 0xff);
    error::inject_error(&p).unwrap();
    write(&h, &ch, &w, 0, 1);
    h.poll_until_idle(100);
    assert_eq!(done(), vec![(1, true)]);
    assert_eq!(
        w.as_slice(),
        pattern(1024, 3).as_slice(),
        "the caller's buffer is intact"
    );
    let on_base = DmaBuf::new(1024, 4096).unwrap();
    read(&h, &bch, &on_base, 0, 2);
    h.poll_until_idle(100);
    done();
    let diff: Vec<usize> = (0..1024)
        .filter(|i| on_base.as_slice()[*i] != w.as_slice()[*i])
        .collect();
    assert_eq!(diff, vec![5]);
    assert_eq!(on_base.as_slice()[5], w.as_slice()[5] ^ 0xff);

    write(&h, &ch, &w, 0, 3);
    h.poll_until_idle(100);
    let mut p = ErrorInjectParams::new(&name, InjectIoType::Read, ErrorType::CorruptData, 1);
    (p.corrupt_offset, p.corrupt_value) = (700, 0x0f);
    error::inject_error(&p).unwrap();
    let r = DmaBuf::new(1024, 4096).unwrap();
    read(&h, &ch, &r, 0, 4);
    h.poll_until_idle(100);
    let diff: Vec<usize> = (0..1024)
        .filter(|i| r.as_slice()[*i] != w.as_slice()[*i])
        .collect();
    assert_eq!(diff, vec![700], "the read came back with one byte flipped");
    read(&h, &ch, &r, 0, 5);
    h.poll_until_idle(100);
    assert_eq!(r.as_slice(), w.as_slice(), "then reads are clean again");
    assert_eq!(done(), vec![(3, true), (4, true), (5, true)]);

    let e = call(
        &h,
        "bdev_error_inject_error",
        json!({"name": name, "io_type": "read", "error_type": "corrupt_data"}),
    )
    .unwrap_err();
    assert_eq!((e.code(), e.message().as_str()), (-22, "Invalid argument"));
    drop((ch, desc, bch, bdesc));
    remove(&h, ee);
    remove(&h, base);
}

#[test]
fn error_nomem_is_retried_until_it_completes() {
    let h = Harness::new(1);
    let (base, ee, name) = error_over_malloc(&h, "ee_nomem");
    let (desc, ch) = open(&h, &name, false);
    let (bdesc, bch) = open(&h, "ee_nomem", false);
    let r = call(
        &h,
        "bdev_error_inject_error",
        json!({"name": name, "io_type": "read", "error_type": "nomem", "num": 3}),
    );
    assert_eq!(r, Ok(json!(true)));
    let buf = DmaBuf::new(512, 4096).unwrap();
    read(&h, &ch, &buf, 0, 1);
    h.poll_until_idle(100);
    assert_eq!(done(), vec![(1, true)]);
    assert_eq!(
        error::injections_left(&name, IoType::Read),
        Some(0),
        "one I/O was bounced three times"
    );
    assert_eq!(ch.stat().read.ops, 1);
    drop((ch, desc, bch, bdesc));
    remove(&h, ee);
    remove(&h, base);
}

#[test]
fn error_matches_spdk_names_uuid_info_and_save_config() {
    let h = Harness::new(1);
    let base = malloc(
        &h,
        "ee_gold_base",
        8192,
        4096,
        Some("9be8a610-8724-455a-a136-a97f4e08d8fa"),
    );
    let r = call(
        &h,
        "bdev_error_create",
        json!({"base_name": "ee_gold_base"}),
    );
    assert_eq!(r, Ok(json!(true)), "SPDK answers true, not the name");
    let ee = Bdev::lookup("EE_ee_gold_base").unwrap();
    assert_eq!(
        ee.uuid().to_string(),
        "3958790e-3634-5c9c-871e-18a56c87493f"
    );
    let info = ee.info_json();
    assert_eq!(info["product_name"], "Error Injection Disk");
    assert_eq!(
        info["driver_specific"].to_string(),
        r#"{"error_disk":{"base_bdev":"ee_gold_base"}}"#
    );
    assert_eq!(base.claimed_by().as_deref(), Some("error"));
    assert_eq!(
        config_entry("error", "base_name", "ee_gold_base").unwrap(),
        r#"{"method":"bdev_error_create","params":{"base_name":"ee_gold_base"}}"#
    );
    let e = call(
        &h,
        "bdev_error_create",
        json!({"base_name": "ee_gold_base"}),
    )
    .unwrap_err();
    assert_eq!((e.code(), e.message().as_str()), (-17, "File exists"));
    let e = call(
        &h,
        "bdev_error_inject_error",
        json!({"name": "EE_nope", "io_type": "all", "error_type": "failure"}),
    )
    .unwrap_err();
    assert_eq!(e.code(), -19);
    let e = call(
        &h,
        "bdev_error_inject_error",
        json!({"name": "EE_ee_gold_base", "io_type": "all", "error_type": "nvme_failure"}),
    )
    .unwrap_err();
    assert_eq!(
        (e.code(), e.message().as_str()),
        (
            -22,
            "nvme_sct or nvme_sc should be specified for NVMe error injection"
        )
    );
    let e = call(
        &h,
        "bdev_error_inject_error",
        json!({"name": "EE_ee_gold_base", "io_type": "trim", "error_type": "failure"}),
    )
    .unwrap_err();
    assert_eq!(e.code(), -32602);
    assert_eq!(
        call(&h, "bdev_error_delete", json!({"name": "EE_ee_gold_base"})),
        Ok(json!(true))
    );
    assert!(config_entry("error", "base_name", "ee_gold_base").is_none());
    assert!(base.claimed_by().is_none());
    remove(&h, base);
}

#[test]
fn error_bdev_waits_for_its_base_and_leaves_with_it() {
    let h = Harness::new(1);
    assert_eq!(
        h.run_on(0, || error::create(ErrorCreateParams::new("ee_late")))
            .unwrap()
            .map(|b| b.name().to_string()),
        None
    );
    let base = malloc(&h, "ee_late", 64, 512, None);
    assert!(Bdev::lookup("EE_ee_late").is_some(), "attached on examine");
    h.run_on(0, || malloc::delete("ee_late", |r| r.unwrap()));
    h.poll_until_idle(100);
    assert!(Bdev::lookup("EE_ee_late").is_none());
    assert!(Bdev::lookup("ee_late").is_none());
    // As SPDK, a hot-removed error bdev forgets its configuration.
    assert!(config_entry("error", "base_name", "ee_late").is_none());
    drop(base);
}
