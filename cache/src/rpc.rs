//! `bdev_pcache_*` RPC methods: decode, act, answer.

use crate::error::CacheError;
use crate::instance::Cache;
use crate::params::{CreateParams, SetOptionsParams};
use bdev::Bdev;
use rpc::{Responder, RpcError, StateMask};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameParams {
    name: String,
}

fn cache_named(name: &str) -> Result<std::sync::Arc<Cache>, RpcError> {
    Bdev::lookup(name)
        .and_then(|b| crate::vbdev::cache_of(&b))
        .ok_or_else(|| RpcError::errno(libc::ENODEV))
}

fn percent(part: u32, total: u32) -> f64 {
    if total == 0 {
        0.0
    } else {
        f64::from(part) * 100.0 / f64::from(total)
    }
}

/// The counters and log positions of `bdev_pcache_get_stats`. Occupancy: `occupancy_percent`
/// is every segment in use (data, the lanes' key logs, retiring) over all segments;
/// `data_occupancy_percent` the data segments alone; `metadata_bytes` the pmem that holds
/// metadata (the records before the first segment and the key segments).
pub fn stats_json(cache: &Cache) -> Value {
    let s = cache.stats();
    let g = |c: &crate::stats::Counter| c.get();
    let idx = cache.index().stats();
    let segs = cache.segments().counts();
    let bs = u64::from(cache.block_size());
    let meta = cache.meta();
    let tails: Vec<Value> = meta
        .tails
        .lanes()
        .iter()
        .enumerate()
        .map(|(i, t)| {
            json!({
                "lane": i,
                "key_tail": format!("{}:{}", t.key_tail.seg, t.key_tail.off),
                "dirty_tail": format!("{}:{}", t.dirty_tail.seg, t.dirty_tail.off),
            })
        })
        .collect();
    let heads: Vec<Value> = cache
        .persisted_heads()
        .iter()
        .map(|p| json!(format!("{}:{}", p.seg, p.off)))
        .collect();
    json!({
        "name": cache.name(),
        "mode": cache.mode(),
        "read_hits": g(&s.read_hits),
        "read_misses": g(&s.read_misses),
        "read_partial_hits": g(&s.read_partial_hits),
        "bytes_read_cache": g(&s.bytes_read_cache),
        "bytes_read_origin": g(&s.bytes_read_origin),
        "bytes_written_cache": g(&s.bytes_written_cache),
        "bytes_written_origin": g(&s.bytes_written_origin),
        "bytes_promoted": g(&s.bytes_promoted),
        "dirty_bytes": idx.dirty_blocks * bs,
        "cached_bytes": idx.cached_blocks * bs,
        "occupancy_percent": percent(segs.used, segs.total),
        "data_occupancy_percent": percent(segs.data, segs.total),
        "metadata_bytes": cache.layout().segment_base()
            + u64::from(segs.key) * u64::from(cache.layout().segment_size()),
        "segments_total": segs.total,
        "segments_used": segs.used,
        "segments_data": segs.data,
        "segments_key": segs.key,
        "index_entries": idx.entries,
        "index_memory_bytes": idx.memory_bytes,
        "keysets_sealed": g(&s.keysets_sealed),
        "deferred_writes": g(&s.deferred_writes),
        "written_back_seq": meta.tails.written_back_seq,
        "next_seq": cache.next_seq(),
        "key_heads": heads,
        "tails": tails,
        "sequential_bypassed": g(&s.sequential_bypassed),
        "bytes_invalidated": g(&s.bytes_invalidated),
        "promotion_threshold": cache.promotion_threshold(),
        "sequential_cutoff": cache.sequential_cutoff(),
        "crc_errors": g(&s.crc_errors),
        "origin_errors": g(&s.origin_errors),
        "origin_io_waits": g(&s.origin_io_waits),
        "writeback_bytes": g(&s.writeback_bytes),
        "writeback_batches": g(&s.writeback_batches),
        "writeback_keys": g(&s.writeback_keys),
        "writeback_rate": cache.wb().rate(),
        "gc_percent": cache.gc().gc_percent(),
        "gc_runs": g(&s.gc_runs),
        "gc_keys": g(&s.gc_keys),
        "gc_evicted_bytes": g(&s.gc_evicted_bytes),
        "gc_second_chance_bytes": g(&s.gc_second_chance_bytes),
        "gc_segments_freed": g(&s.gc_segments_freed),
        "segments_retiring": segs.retiring,
        "writes_deferred_now": cache.gc().deferred(),
        "flush_in_progress": cache.wb().flush_target().is_some_and(|t| t > meta.tails.written_back_seq),
    })
}

/// A failed method's answer: -errno and what was wrong (logged too).
fn answer_error(e: CacheError) -> RpcError {
    tracing::error!("{e}");
    e.into()
}

pub fn register_rpcs() {
    crate::vbdev::register_module();
    rpc::register(
        "bdev_pcache_create",
        StateMask::RUNTIME,
        |p: CreateParams, r: Responder| {
            r.result(
                crate::vbdev::create(p)
                    .map(|b| json!(b.name()))
                    .map_err(answer_error),
            )
        },
    );
    rpc::register(
        "bdev_pcache_delete",
        StateMask::RUNTIME,
        |p: NameParams, r: Responder| {
            crate::vbdev::delete(&p.name, move |res| bdev::rpc::answer(r, res.map(|_| true)))
        },
    );
    rpc::register(
        "bdev_pcache_get_stats",
        StateMask::RUNTIME,
        |p: NameParams, r: Responder| r.result(cache_named(&p.name).map(|c| stats_json(&c))),
    );
    rpc::register(
        "bdev_pcache_reset_stats",
        StateMask::RUNTIME,
        |p: NameParams, r: Responder| {
            r.result(cache_named(&p.name).map(|c| {
                c.stats().reset();
                json!(true)
            }))
        },
    );
    rpc::register(
        "bdev_pcache_set_options",
        StateMask::RUNTIME,
        |p: SetOptionsParams, r: Responder| {
            r.result(cache_named(&p.name).and_then(|c| {
                c.set_options(&p)
                    .map(|()| json!(true))
                    .map_err(answer_error)
            }))
        },
    );
    rpc::register(
        "bdev_pcache_flush_start",
        StateMask::RUNTIME,
        |p: NameParams, r: Responder| {
            r.result(cache_named(&p.name).map(|c| {
                c.flush_start();
                json!(true)
            }))
        },
    );
    rpc::register(
        "bdev_pcache_flush_status",
        StateMask::RUNTIME,
        |p: NameParams, r: Responder| r.result(cache_named(&p.name).map(|c| c.flush_status())),
    );
}
