//! Formatting a cache device and opening a formatted one.

use std::time::{SystemTime, UNIX_EPOCH};

use pmem::Pmem;
use uuid::Uuid;

use super::bytes::Fields;
use super::error::FormatError;
use super::generation::{GEN_FIRST, read_gen_table, write_gen_table};
use super::info::CacheInfo;
use super::layout::{
    DEFAULT_SEGMENT_SIZE, INFO_OFFSET, Layout, SB_OFFSET, SB_SIZE, SLOT_SIZE, TAILS_OFFSET,
};
use super::slot::{SlotWriter, encode_slot, read_slots};
use super::superblock::{COMPAT_KNOWN, OriginId, SB_MAGIC, Superblock, VERSION_MINOR};
use super::tails::{LaneTails, LogPos, MAX_LANES, Tails};

/// What [`format`] needs to know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FormatParams {
    pub cache_uuid: Uuid,
    pub origin: OriginId,
    pub segment_size: u32,
    /// Key-log lanes (1 … 64); lane `i` starts its log at offset 0 of segment `i`. The
    /// device needs at least two segments per lane.
    pub lanes: u32,
    pub info: CacheInfo,
    /// Seconds since the epoch.
    pub format_time: u64,
    /// Nonzero and new for every format (see [`Superblock::format_id`]).
    pub format_id: u64,
}

impl FormatParams {
    /// Default segment size and settings, the current time and a random format id.
    pub fn new(cache_uuid: Uuid, origin: OriginId, lanes: u32) -> Self {
        Self {
            cache_uuid,
            origin,
            segment_size: DEFAULT_SEGMENT_SIZE,
            lanes,
            info: CacheInfo::default(),
            format_time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            format_id: Uuid::new_v4().as_u64_pair().0.max(1),
        }
    }
}

/// Everything [`open`] reads before replay.
#[derive(Clone, Debug)]
pub struct OpenedMeta {
    pub superblock: Superblock,
    pub layout: Layout,
    pub info: CacheInfo,
    /// Where the next cache info record goes.
    pub info_slot: SlotWriter,
    pub tails: Tails,
    /// Where the next tails record goes.
    pub tails_slot: SlotWriter,
    /// Every segment's generation, index = segment number.
    pub gens: Vec<u32>,
    /// The superblock has ro_compat bits this version does not know: never write.
    pub read_only: bool,
}

/// The metadata records a running cache rewrites (the tails after writeback, GC and lane adds;
/// the cache info when options change), each with the writer of its dual slot.
pub struct MetaWriter {
    pub info: CacheInfo,
    pub info_slot: SlotWriter,
    pub tails: Tails,
    pub tails_slot: SlotWriter,
}

/// Format `pmem` as an empty cache for `params.origin`.
///
/// Order (docs/format.md, "Superblock"): invalidate any old superblock by zeroing its magic
/// word, persist; write the cache info and tails (sequence 1 in slot 0, slot 1 zeroed), the
/// generation table (every segment at [`GEN_FIRST`]) and the superblock without its magic,
/// persist; write the magic, persist. A power cut before the last step leaves a device that
/// opens as [`FormatError::NotFormatted`], never a mix of two formats.
pub fn format(
    pmem: &dyn Pmem,
    params: &FormatParams,
) -> Result<(Superblock, CacheInfo, Tails), FormatError> {
    let (sb, layout, tails) = plan(pmem.len(), params)?;
    let info = params.info;

    pmem.write(SB_OFFSET, &[0; 8])?;
    pmem.persist(SB_OFFSET, 8)?;

    write_fresh_pair(pmem, INFO_OFFSET, &info.encode())?;
    let tails_bytes = tails.encode();
    let tails_payload = tails_bytes
        .get(..tails.encoded_len())
        .ok_or_else(|| FormatError::invalid("tails", "encoded length"))?;
    write_fresh_pair(pmem, TAILS_OFFSET, tails_payload)?;
    write_gen_table(pmem, &layout, GEN_FIRST)?;
    let mut sb_bytes = sb.encode();
    sb_bytes.put_u64::<0>(0);
    pmem.write(SB_OFFSET, &sb_bytes)?;
    pmem.flush(SB_OFFSET, SB_SIZE as u64)?;
    pmem.fence();

    pmem.write(SB_OFFSET, &SB_MAGIC.to_le_bytes())?;
    pmem.persist(SB_OFFSET, 8)?;
    tracing::info!(
        cache = %sb.cache_uuid,
        origin = %sb.origin,
        segments = sb.segment_count,
        segment_size = sb.segment_size,
        lanes = params.lanes,
        "formatted pcache device"
    );
    Ok((sb, info, tails))
}

/// Check the parameters and work out the superblock, layout and initial tails.
fn plan(device_size: u64, p: &FormatParams) -> Result<(Superblock, Layout, Tails), FormatError> {
    if p.cache_uuid.is_nil() {
        return Err(FormatError::invalid("cache UUID", "nil"));
    }
    if p.format_id == 0 {
        return Err(FormatError::invalid("format id", "0"));
    }
    p.origin
        .check()
        .map_err(|why| FormatError::invalid("origin", why))?;
    p.info.validate()?;
    let lanes = usize::try_from(p.lanes)
        .ok()
        .filter(|n| (1..=MAX_LANES).contains(n))
        .ok_or_else(|| {
            FormatError::invalid("lanes", format!("{}, 1 to {MAX_LANES} allowed", p.lanes))
        })?;
    let layout = Layout::new(device_size, p.segment_size, p.origin.block_size)?;
    if p.lanes.saturating_mul(2) > layout.segment_count() {
        return Err(FormatError::NoSpace(format!(
            "{} lanes need at least {} segments, the device holds {}",
            p.lanes,
            p.lanes.saturating_mul(2),
            layout.segment_count()
        )));
    }
    let sb = Superblock {
        minor_version: VERSION_MINOR,
        incompat: 0,
        ro_compat: 0,
        compat: 0,
        cache_uuid: p.cache_uuid,
        origin: p.origin,
        segment_size: p.segment_size,
        segment_count: layout.segment_count(),
        segment_base: layout.segment_base(),
        format_time: p.format_time,
        format_id: p.format_id,
    };
    sb.check()
        .map_err(|why| FormatError::invalid("superblock", why))?;
    let mut lane_tails = [LaneTails::default(); MAX_LANES];
    for (seg, lane) in (0u32..).zip(&mut lane_tails) {
        let start = LogPos { seg, off: 0 };
        *lane = LaneTails {
            key_tail: start,
            dirty_tail: start,
        };
    }
    let tails = Tails::new(0, lane_tails.get(..lanes).unwrap_or(&[]))?;
    Ok((sb, layout, tails))
}

const PAIR_LEN: u64 = 2 * SLOT_SIZE as u64;

/// Slot 0 holds `payload` at sequence 1, slot 1 is zeroed; flushed, not fenced.
fn write_fresh_pair(pmem: &dyn Pmem, base: u64, payload: &[u8]) -> Result<(), FormatError> {
    let first = encode_slot(1, payload)?;
    pmem.write(base, &first)?;
    pmem.write(base.saturating_add(SLOT_SIZE as u64), &[0; SLOT_SIZE])?;
    pmem.flush(base, PAIR_LEN)?;
    Ok(())
}

/// Open a formatted device in front of `origin`: read and check the superblock, the newest
/// cache info and tails records and the generation table.
pub fn open(pmem: &dyn Pmem, origin: &OriginId) -> Result<OpenedMeta, FormatError> {
    if pmem.len() < SB_SIZE as u64 {
        return Err(FormatError::NotFormatted);
    }
    let mut b = [0u8; SB_SIZE];
    pmem.read(SB_OFFSET, &mut b)?;
    let superblock = Superblock::decode(&b)?;
    if superblock.origin != *origin {
        return Err(FormatError::OriginMismatch {
            on_media: superblock.origin,
            given: *origin,
        });
    }
    let layout = superblock.layout(pmem.len())?;

    let (rec, slot, seq) = read_slots(pmem, INFO_OFFSET)?;
    let info = CacheInfo::decode(rec.payload())?;
    let info_slot = SlotWriter::new(INFO_OFFSET, slot, seq);

    let (rec, slot, seq) = read_slots(pmem, TAILS_OFFSET)?;
    let tails = Tails::decode(rec.payload())?;
    tails.check_bounds(&layout)?;
    let tails_slot = SlotWriter::new(TAILS_OFFSET, slot, seq);

    let gens = read_gen_table(pmem, &layout)?;

    let read_only = superblock.read_only();
    if read_only {
        tracing::warn!(
            ro_compat = superblock.ro_compat,
            "pcache device has read-only-compatible features this version does not know: \
             opening it read-only"
        );
    }
    if superblock.compat & !COMPAT_KNOWN != 0 {
        tracing::info!(
            compat = superblock.compat,
            "ignoring unknown compatible features"
        );
    }
    Ok(OpenedMeta {
        superblock,
        layout,
        info,
        info_slot,
        tails,
        tails_slot,
        gens,
        read_only,
    })
}
