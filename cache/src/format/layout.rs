//! Where the regions of a cache device lie (docs/format.md, "Regions").

use super::bytes::round_up;
use super::error::{Broken, FormatError, broken};
use super::generation::GEN_ENTRY_SIZE;

pub const SB_OFFSET: u64 = 0;
pub const SB_SIZE: usize = 4096;
/// One copy of a dual-slot record.
pub const SLOT_SIZE: usize = 4096;
/// Cache info, slots 0 and 1.
pub const INFO_OFFSET: u64 = 4096;
/// Tails, slots 0 and 1.
pub const TAILS_OFFSET: u64 = 12288;
pub const GEN_TABLE_OFFSET: u64 = 20480;
/// The generation table is rounded up to this, and the segments start at a multiple of
/// [`SEGMENT_BASE_ALIGN`].
const GEN_TABLE_ALIGN: u64 = 4096;
pub const SEGMENT_BASE_ALIGN: u64 = 64 << 10;

pub const MIN_SEGMENTS: u32 = 8;
pub const MIN_SEGMENT_SIZE: u32 = 1 << 20;
pub const MAX_SEGMENT_SIZE: u32 = 1 << 30;
pub const DEFAULT_SEGMENT_SIZE: u32 = 16 << 20;
pub const MIN_BLOCK_SIZE: u32 = 512;
pub const MAX_BLOCK_SIZE: u32 = 4096;

/// The geometry of a cache device: region offsets and the segment array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    device_size: u64,
    segment_size: u32,
    block_size: u32,
    segment_count: u32,
    segment_base: u64,
}

impl Layout {
    /// The layout format gives a device of `device_size` bytes: as many segments as fit
    /// after the metadata, at least [`MIN_SEGMENTS`].
    pub fn new(device_size: u64, segment_size: u32, block_size: u32) -> Result<Self, FormatError> {
        check_sizes(segment_size, block_size)
            .map_err(|why| FormatError::invalid("geometry", why))?;
        let seg = u64::from(segment_size);
        // The table grows with the count, so start from a count that surely fits (table
        // overhead bounded by 8 bytes per segment plus the two roundings) and add while the
        // next one still fits: at most a couple of steps.
        let slack = GEN_TABLE_OFFSET + GEN_TABLE_ALIGN + SEGMENT_BASE_ALIGN;
        let mut count = device_size
            .saturating_sub(slack)
            .checked_div(seg.saturating_add(GEN_ENTRY_SIZE))
            .unwrap_or(0);
        while count
            .checked_add(1)
            .and_then(|c| end_for(c, seg))
            .is_some_and(|end| end <= device_size)
        {
            count = count.saturating_add(1);
        }
        if count < u64::from(MIN_SEGMENTS) {
            return Err(FormatError::NoSpace(format!(
                "a {device_size}-byte device holds {count} segments of {segment_size} bytes \
                 after the metadata; at least {MIN_SEGMENTS} are needed"
            )));
        }
        let segment_count = u32::try_from(count).map_err(|_| FormatError::TooBig {
            what: "device",
            why: format!(
                "{count} segments of {segment_size} bytes exceed the 32-bit segment number; \
                 use larger segments"
            ),
        })?;
        Self::with_count(device_size, segment_size, block_size, segment_count)
    }

    /// The layout of an existing format: `segment_count` segments (recorded in the
    /// superblock) on a device of `device_size` bytes, which must hold them. A device that
    /// grew since keeps its formatted geometry.
    pub fn with_count(
        device_size: u64,
        segment_size: u32,
        block_size: u32,
        segment_count: u32,
    ) -> Result<Self, FormatError> {
        check_sizes(segment_size, block_size)
            .map_err(|why| FormatError::invalid("geometry", why))?;
        if segment_count < MIN_SEGMENTS {
            return Err(FormatError::invalid(
                "geometry",
                format!("{segment_count} segments, at least {MIN_SEGMENTS} needed"),
            ));
        }
        let seg = u64::from(segment_size);
        let count = u64::from(segment_count);
        let (Some(segment_base), Some(end)) = (base_for(count), end_for(count, seg)) else {
            return Err(FormatError::invalid("geometry", "size overflows"));
        };
        if end > device_size {
            return Err(FormatError::NoSpace(format!(
                "{segment_count} segments of {segment_size} bytes need a {end}-byte device, \
                 this one has {device_size} bytes"
            )));
        }
        Ok(Self {
            device_size,
            segment_size,
            block_size,
            segment_count,
            segment_base,
        })
    }

    pub fn device_size(&self) -> u64 {
        self.device_size
    }
    pub fn segment_size(&self) -> u32 {
        self.segment_size
    }
    /// The cache's block size: the origin's.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }
    pub fn segment_count(&self) -> u32 {
        self.segment_count
    }
    pub fn segment_base(&self) -> u64 {
        self.segment_base
    }

    /// Bytes of the generation table region (8 per segment, rounded up to 4 KiB).
    pub fn gen_table_len(&self) -> u64 {
        // Cannot overflow: at most 8 × u32::MAX bytes.
        table_len(u64::from(self.segment_count)).unwrap_or(u64::MAX)
    }

    /// Device offset of segment `seg`'s generation table entry.
    pub fn gen_entry_offset(&self, seg: u32) -> Result<u64, FormatError> {
        self.check_segment(seg)?;
        Ok(GEN_TABLE_OFFSET.saturating_add(u64::from(seg).saturating_mul(GEN_ENTRY_SIZE)))
    }

    /// Device offset of the first byte of segment `seg`.
    pub fn segment_offset(&self, seg: u32) -> Result<u64, FormatError> {
        self.check_segment(seg)?;
        // In range: `with_count` checked base + count × size against the device size.
        Ok(self
            .segment_base
            .saturating_add(u64::from(seg).saturating_mul(u64::from(self.segment_size))))
    }

    /// End of the last segment; bytes past it (a device grown since format) are unused.
    pub fn end(&self) -> u64 {
        end_for(u64::from(self.segment_count), u64::from(self.segment_size)).unwrap_or(u64::MAX)
    }

    pub fn blocks_per_segment(&self) -> u32 {
        self.segment_size.checked_div(self.block_size).unwrap_or(0)
    }

    fn check_segment(&self, seg: u32) -> Result<(), FormatError> {
        if seg >= self.segment_count {
            return Err(FormatError::invalid(
                "segment",
                format!(
                    "segment {seg} of a device with {} segments",
                    self.segment_count
                ),
            ));
        }
        Ok(())
    }
}

/// Segment and block size rules; `Err` says why not.
pub(crate) fn check_sizes(segment_size: u32, block_size: u32) -> Result<(), Broken> {
    if !segment_size.is_power_of_two()
        || !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&segment_size)
    {
        return Err(broken!(
            "segment size {segment_size} is not a power of two from {MIN_SEGMENT_SIZE} to {MAX_SEGMENT_SIZE}"
        ));
    }
    check_block_size(block_size)
}

pub(crate) fn check_block_size(block_size: u32) -> Result<(), Broken> {
    if !block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) {
        return Err(broken!(
            "block size {block_size} is not a power of two from {MIN_BLOCK_SIZE} to {MAX_BLOCK_SIZE}"
        ));
    }
    Ok(())
}

/// Generation table bytes for `count` segments.
fn table_len(count: u64) -> Option<u64> {
    round_up(count.checked_mul(GEN_ENTRY_SIZE)?, GEN_TABLE_ALIGN)
}

/// `segment_base` for `count` segments: the table's end rounded up to 64 KiB.
pub(crate) fn base_for(count: u64) -> Option<u64> {
    round_up(
        GEN_TABLE_OFFSET.checked_add(table_len(count)?)?,
        SEGMENT_BASE_ALIGN,
    )
}

/// End of the segment array for `count` segments of `seg` bytes.
fn end_for(count: u64, seg: u64) -> Option<u64> {
    base_for(count)?.checked_add(count.checked_mul(seg)?)
}
