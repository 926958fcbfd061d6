//! The pcache bdev: creation (format or reattach with replay), the bdev operations, clean shutdown
//! at delete, and its place in save_config.

use crate::channel::CacheBdevChannel;
use crate::error::CacheError;
use crate::format::{
    self, CacheInfo, FormatError, FormatParams, LogPos, MetaWriter, OriginId, SlotWriter,
};
use crate::index::{Index, IndexConfig};
use crate::instance::Cache;
use crate::lane::Lane;
use crate::lane_channel::{LaneChannel, lane_device};
use crate::log::LaneLog;
use crate::params::CreateParams;
use crate::segments::SegmentTable;
use bdev::vbdev::VbdevBase;
use bdev::{Bdev, BdevChannelOps, BdevError, BdevModule, BdevOps, BdevProps, IoType};
use poller::IoDevice;
use serde_json::{Value, json};
use std::rc::Rc;
use std::sync::Arc;

pub const MODULE: &str = "pcache";

/// pcache's namespace for bdev UUIDs derived from the origin's.
const UUID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x9c1d_5a7e_0b42_4e8f_a3d6_1f27_c84b_e590);

/// Lanes made at format; a thread that finds no free lane adds one (`Cache::take_lane`), so
/// only threads that use the cache take key space from it.
const FORMAT_LANES: u32 = 1;

pub struct PcacheModule;

impl BdevModule for PcacheModule {
    fn name(&self) -> &'static str {
        MODULE
    }
}

struct PcacheOps {
    cache: Arc<Cache>,
    lanes: IoDevice<LaneChannel>,
}

impl BdevOps for PcacheOps {
    fn io_type_supported(&self, t: IoType) -> bool {
        matches!(
            t,
            IoType::Read
                | IoType::Write
                | IoType::Flush
                | IoType::Reset
                | IoType::Unmap
                | IoType::WriteZeroes
        )
    }

    fn create_channel(&self) -> Result<Rc<dyn BdevChannelOps>, BdevError> {
        let cache = self.cache.clone();
        let origin = cache.origin_channel()?;
        let lane = self
            .lanes
            .get_channel()
            .map_err(|e| BdevError::io(e, "no lane channel"))?;
        if lane.lane.borrow().is_none() {
            return Err(BdevError::io(
                libc::EBUSY,
                format!("{}: every lane is taken by another thread", cache.name()),
            ));
        }
        lane.rc().start_poller(crate::io::resume_deferred);
        Ok(Rc::new(CacheBdevChannel {
            cache,
            origin,
            lane,
            lanes: self.lanes.clone(),
            streams: Default::default(),
            at_origin: Default::default(),
        }))
    }

    fn dump_info_json(&self) -> Value {
        json!({ "pcache": info_json(&self.cache) })
    }

    fn write_config_json(&self) -> Option<Value> {
        Some(json!({"method": "bdev_pcache_create", "params": self.cache.params()}))
    }

    fn destruct(&self) {
        shutdown(&self.cache);
    }
}

fn info_json(cache: &Cache) -> Value {
    let p = cache.params();
    json!({
        "name": cache.name(),
        "cache_bdev": p.cache_bdev,
        "origin_bdev": p.origin_bdev,
        "mode": cache.mode(),
        "data_crc": cache.data_crc(),
        "durable": cache.durable(),
        "gc_percent": p.gc_percent,
        "promotion_threshold": p.promotion_threshold,
        "sequential_cutoff": p.sequential_cutoff,
        "writeback_dirty_target": p.writeback_dirty_target,
        "writeback_rate_limit": p.writeback_rate_limit,
        "segment_size": cache.layout().segment_size(),
        "segment_count": cache.layout().segment_count(),
    })
}

/// Clean shutdown: every lane sealed, then the cache info marked clean. Dirty data stays in pmem
/// and is found again by the next create.
fn shutdown(cache: &Cache) {
    // Writeback submits and persists nothing more; its poller goes once its I/O has completed.
    cache.wb().stop();
    if let Err(e) = cache.seal_free_lanes() {
        tracing::error!(cache = %cache.name(), "sealing lanes at shutdown failed: {e}");
        return;
    }
    let mut meta = cache.meta();
    meta.info.flags |= CacheInfo::CLEAN_SHUTDOWN;
    let info = meta.info.encode();
    if let Err(e) = meta.info_slot.write(cache.pmem(), &info) {
        tracing::error!(cache = %cache.name(), "recording the clean shutdown failed: {e}");
    }
    drop(meta);
    cache.close_bases();
    tracing::info!(cache = %cache.name(), "pcache stopped cleanly");
}

/// A segment size the cache can hold at least 32 of (never below 1 MiB, never above the asked one).
fn fitting_segment_size(device: u64, asked: u32) -> u32 {
    let mut s = asked;
    while s > format::MIN_SEGMENT_SIZE && device / u64::from(s) < 32 {
        s /= 2;
    }
    s
}

/// `bdev_pcache_create`: claims the cache (a pmem bdev) and the origin, formats the cache or
/// reattaches to it (replaying its log), and registers the pcache bdev.
pub fn create(params: CreateParams) -> Result<Bdev, CacheError> {
    params.check()?;
    if Bdev::lookup(&params.name).is_some() {
        return Err(BdevError::Exists(params.name.clone()).into());
    }
    let cache_bdev = Bdev::lookup(&params.cache_bdev)
        .ok_or_else(|| BdevError::NoSuchDevice(params.cache_bdev.clone()))?;
    let pmem = bdev::pmem::pmem_of(&cache_bdev).ok_or_else(|| {
        CacheError::InvalidParam(format!(
            "cache_bdev {} is not a pmem bdev",
            params.cache_bdev
        ))
    })?;
    let origin_bdev = Bdev::lookup(&params.origin_bdev)
        .ok_or_else(|| BdevError::NoSuchDevice(params.origin_bdev.clone()))?;
    let origin = OriginId {
        uuid: origin_bdev.uuid(),
        blocks: origin_bdev.num_blocks(),
        block_size: origin_bdev.block_size(),
    };
    if origin.block_size > format::MAX_BLOCK_SIZE {
        return Err(CacheError::InvalidParam(format!(
            "origin block size {} is over 4096",
            origin.block_size
        )));
    }
    let cache_base = VbdevBase::open(MODULE, &params.name, cache_bdev.name())?;
    let origin_base = VbdevBase::open(MODULE, &params.name, origin_bdev.name())?;

    let cache = attach(&params, pmem, origin, origin_bdev.name())?;
    cache.set_bases(origin_base, cache_base);
    let lanes = lane_device(&cache);
    // Writeback runs on this (the management) thread until shutdown stops it.
    crate::writeback::start(&cache, lanes.clone())?;
    // GC too; both stop at shutdown (`WritebackShared::stop`).
    if let Err(e) = crate::gc::start(&cache, lanes.clone()) {
        cache.wb().stop();
        return Err(e);
    }
    // Reattached in a mode that writes around the cache: what is still dirty must be cleaned.
    if params.mode != crate::params::CacheMode::Writeback && cache.dirty_bytes() > 0 {
        cache.flush_start();
    }

    let mut props = BdevProps::new(
        &params.name,
        MODULE,
        "pcache",
        origin.block_size,
        origin.blocks,
    );
    // Like SPDK's vbdevs, a UUID derived from the base's (here the origin's: the bdev shows its
    // data) unless one is given, so it stays the same at every start.
    props.uuid = Some(
        params
            .uuid
            .unwrap_or_else(|| uuid::Uuid::new_v5(&UUID_NAMESPACE, origin.uuid.as_bytes())),
    );
    props.write_cache = !params.durable;
    Ok(Bdev::register(props, Arc::new(PcacheOps { cache, lanes }))?)
}

/// Formats (when asked, or when the device holds no cache) or opens and replays.
fn attach(
    params: &CreateParams,
    pmem: Arc<dyn pmem::Pmem>,
    origin: OriginId,
    origin_name: &str,
) -> Result<Arc<Cache>, CacheError> {
    let opened = if params.format {
        refuse_losing_dirty_data(params, &*pmem, &origin)?;
        None
    } else {
        match format::open(&*pmem, &origin) {
            Ok(m) => Some(m),
            Err(FormatError::NotFormatted) => None,
            Err(FormatError::OriginMismatch { on_media, given }) => {
                return Err(CacheError::OriginMismatch(mismatch_message(
                    params,
                    origin_name,
                    &on_media,
                    &given,
                    &*pmem,
                )));
            }
            Err(e) => return Err(e.into()),
        }
    };
    let meta = match opened {
        Some(m) => m,
        None => {
            let mut fp = FormatParams::new(uuid::Uuid::new_v4(), origin, FORMAT_LANES);
            fp.segment_size = fitting_segment_size(pmem.len(), params.segment_size);
            fp.info = crate::options::info_for(params);
            format::format(&*pmem, &fp)?;
            tracing::info!(pcache = %params.name, segment_size = fp.segment_size, "cache formatted");
            format::open(&*pmem, &origin)?
        }
    };
    if meta.read_only {
        return Err(CacheError::ReadOnly);
    }
    let layout = meta.layout;
    let index = Index::new(IndexConfig::for_origin(layout.block_size(), origin.blocks))?;
    let segments = SegmentTable::new(meta.gens.clone());
    let format_id = meta.superblock.format_id;
    if meta.info.has(CacheInfo::DATA_CRC) != params.data_crc {
        return Err(CacheError::InvalidParam(format!(
            "the cache was created with data_crc {}; reattach with the same setting or pass \"format\": true",
            meta.info.has(CacheInfo::DATA_CRC)
        )));
    }
    let (lanes, next_seq) = lanes_after_replay(&*pmem, &meta, &index, &segments, &params.name)?;
    let lanes = lanes
        .into_iter()
        .map(|(lane, head, head_gen, next)| {
            Lane::new(LaneLog::new(lane, format_id, head, head_gen, next), None)
        })
        .collect();
    // The tunables are the ones given now (a config or RPC wins over what pmem recorded); the
    // first write after this start makes the cache dirty again, so the clean flag goes now.
    let info = crate::options::info_for(params);
    let mut info_slot: SlotWriter = meta.info_slot;
    info_slot.write(&*pmem, &info.encode())?;
    let writer = MetaWriter {
        info,
        info_slot,
        tails: meta.tails,
        tails_slot: meta.tails_slot,
    };
    Ok(Cache::new(
        &params.name,
        pmem,
        layout,
        format_id,
        index,
        segments,
        next_seq,
        lanes,
        writer,
        // What save_config writes: a restart reattaches, it never formats.
        CreateParams {
            format: false,
            force: false,
            ..params.clone()
        },
    ))
}

/// Dirty bytes the cache on `pmem` holds for the origin it was formatted for (`recorded`): its
/// log replayed into a scratch index.
fn dirty_bytes_for(pmem: &dyn pmem::Pmem, recorded: &OriginId) -> Result<u64, CacheError> {
    let meta = format::open(pmem, recorded)?;
    let index = Index::new(IndexConfig::for_origin(
        meta.layout.block_size(),
        recorded.blocks,
    ))?;
    let segments = SegmentTable::new(meta.gens.clone());
    let r = crate::replay::replay(pmem, &meta, &index, &segments)?;
    Ok(r.dirty_blocks * u64::from(meta.layout.block_size()))
}

/// `"format": true` over a cache that holds dirty data for another origin destroys writes that
/// were acknowledged and never reached that origin: refused (EBUSY) unless `"force": true`.
fn refuse_losing_dirty_data(
    params: &CreateParams,
    pmem: &dyn pmem::Pmem,
    origin: &OriginId,
) -> Result<(), CacheError> {
    if params.force {
        return Ok(());
    }
    let recorded = match format::open(pmem, origin) {
        Err(FormatError::OriginMismatch { on_media, .. }) => on_media,
        // Not a cache, or one for this origin: formatting it is what was asked.
        _ => return Ok(()),
    };
    let why = match dirty_bytes_for(pmem, &recorded) {
        Ok(0) => return Ok(()),
        Ok(n) => format!("it holds {n} dirty bytes for {recorded}"),
        Err(e) => format!("how much dirty data it holds for {recorded} cannot be read ({e})"),
    };
    Err(CacheError::DirtyData(format!(
        "refusing to format {}: {why}, written but not yet on that origin; they are lost if \
             it is formatted. Reattach to that origin to write them back (bdev_pcache_flush_start), \
             or pass \"force\": true with \"format\": true to drop them",
        params.cache_bdev
    )))
}

/// The answer when the cache was formatted for another origin: what it recorded, what it still
/// holds, how to keep the origin's identity, and what formatting would cost.
fn mismatch_message(
    params: &CreateParams,
    origin_name: &str,
    on_media: &OriginId,
    given: &OriginId,
    pmem: &dyn pmem::Pmem,
) -> String {
    let dirty = dirty_bytes_for(pmem, on_media);
    let head = format!(
        "the cache on {} was formatted for {on_media}, but {origin_name} is {given}",
        params.cache_bdev
    );
    let keep = if on_media.uuid == given.uuid {
        format!(
            "{origin_name} has the recorded uuid but another size: give it back {} blocks of {} \
             bytes to reattach",
            on_media.blocks, on_media.block_size
        )
    } else {
        format!(
            "if {origin_name} is that device, give it \"uuid\": \"{}\" in its create call \
             (save_config writes every bdev's uuid; a bdev created without one gets a new one at \
             every start)",
            on_media.uuid
        )
    };
    let drop = match dirty {
        Ok(0) => "it holds no dirty data: \"format\": true reformats it for this origin and \
                  loses no write"
            .to_string(),
        Ok(n) => format!(
            "it holds {n} dirty bytes not yet written to that origin: \"format\": true is \
             refused over them unless \"force\": true is given too, and then they are lost"
        ),
        Err(e) => format!(
            "its dirty data cannot be counted ({e}): \"format\": true needs \"force\": true \
             and loses whatever it holds"
        ),
    };
    format!("{head}; {keep}; {drop}")
}

/// Replays the log into the index and segment table; returns each lane's (lane, head, head
/// generation, next lane sequence) and the next write sequence.
type LaneStart = (u32, LogPos, u32, u64);

fn lanes_after_replay(
    pmem: &dyn pmem::Pmem,
    meta: &format::OpenedMeta,
    index: &Index,
    segments: &SegmentTable,
    name: &str,
) -> Result<(Vec<LaneStart>, u64), CacheError> {
    let r = crate::replay::replay(pmem, meta, index, segments)?;
    tracing::info!(
        pcache = %name,
        keys = r.keys,
        stale = r.stale_keys,
        dirty_blocks = r.dirty_blocks,
        keys_per_sec = r.keys_per_sec as u64,
        "log replayed"
    );
    let lanes = r
        .lanes
        .iter()
        .map(|l| (l.lane, l.head, l.head_gen, l.next_seq))
        .collect();
    Ok((lanes, r.max_seq + 1))
}

/// `bdev_pcache_delete`: unregisters the bdev; the clean shutdown runs when its users are gone.
pub fn delete(name: &str, done: impl FnOnce(Result<(), BdevError>) + Send + 'static) {
    Bdev::unregister_module_bdev(MODULE, name, done)
}

/// The cache behind a pcache bdev.
pub fn cache_of(bdev: &Bdev) -> Option<Arc<Cache>> {
    bdev.ops_as::<PcacheOps>().map(|o| o.cache.clone())
}

pub fn register_module() {
    bdev::register_module(Arc::new(PcacheModule));
}
