//! The cache info record: the cache's settings, kept in a dual slot.

use super::bytes::Fields;
use super::error::{Broken, FormatError, broken};

/// Bytes of the cache info payload this version writes (slot offsets 16 … 56).
pub const INFO_PAYLOAD_LEN: usize = 40;

// Payload offsets: the spec's slot offsets minus the 16-byte slot header.
const MODE: usize = 0;
const FLAGS: usize = 4;
const GC_PERCENT: usize = 8;
const PROMOTION: usize = 12;
const SEQ_CUTOFF: usize = 16;
const WB_TARGET: usize = 24;
const WB_RATE: usize = 32;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CacheMode {
    #[default]
    WriteBack,
    WriteThrough,
    WriteAround,
    PassThrough,
}

impl CacheMode {
    pub fn to_raw(self) -> u32 {
        match self {
            Self::WriteBack => 0,
            Self::WriteThrough => 1,
            Self::WriteAround => 2,
            Self::PassThrough => 3,
        }
    }

    pub fn from_raw(raw: u32) -> Option<Self> {
        Some(match raw {
            0 => Self::WriteBack,
            1 => Self::WriteThrough,
            2 => Self::WriteAround,
            3 => Self::PassThrough,
            _ => return None,
        })
    }
}

/// The cache's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheInfo {
    pub mode: CacheMode,
    /// [`CacheInfo::DATA_CRC`], [`CacheInfo::CLEAN_SHUTDOWN`], [`CacheInfo::DURABLE`].
    pub flags: u32,
    /// Start reclaiming when this percentage of segments is in use (0 … 90).
    pub gc_percent: u32,
    /// 0: cache on the first miss; n: after n misses.
    pub promotion: u32,
    /// Sequential streams longer than this many bytes bypass the cache; 0: off.
    pub seq_cutoff: u64,
    /// Writeback aims to keep dirty data at this share of capacity, in percent × 100.
    pub writeback_target: u64,
    /// Writeback bytes per second; 0: unlimited.
    pub writeback_rate: u64,
}

impl Default for CacheInfo {
    fn default() -> Self {
        Self {
            mode: CacheMode::WriteBack,
            flags: 0,
            gc_percent: 70,
            promotion: 0,
            seq_cutoff: 0,
            writeback_target: 0,
            writeback_rate: 0,
        }
    }
}

impl CacheInfo {
    /// Keys carry a crc32c of their data.
    pub const DATA_CRC: u32 = 1 << 0;
    /// Set after a clean stop (every lane sealed, tails persisted); cleared on the first
    /// write after start.
    pub const CLEAN_SHUTDOWN: u32 = 1 << 1;
    /// Every completed write is durable (no volatile write cache advertised).
    pub const DURABLE: u32 = 1 << 2;
    pub const KNOWN_FLAGS: u32 = Self::DATA_CRC | Self::CLEAN_SHUTDOWN | Self::DURABLE;
    pub const MAX_GC_PERCENT: u32 = 90;
    /// 100 % in the writeback target's unit.
    pub const MAX_WRITEBACK_TARGET: u64 = 10_000;

    pub fn has(&self, flag: u32) -> bool {
        self.flags & flag == flag
    }

    pub fn encode(&self) -> [u8; INFO_PAYLOAD_LEN] {
        let mut b = [0u8; INFO_PAYLOAD_LEN];
        b.put_u32::<MODE>(self.mode.to_raw());
        b.put_u32::<FLAGS>(self.flags);
        b.put_u32::<GC_PERCENT>(self.gc_percent);
        b.put_u32::<PROMOTION>(self.promotion);
        b.put_u64::<SEQ_CUTOFF>(self.seq_cutoff);
        b.put_u64::<WB_TARGET>(self.writeback_target);
        b.put_u64::<WB_RATE>(self.writeback_rate);
        b
    }

    /// Decode a cache info payload. A longer payload comes from a later minor version; its
    /// extra bytes are ignored.
    pub fn decode(payload: &[u8]) -> Result<Self, FormatError> {
        let b: &[u8; INFO_PAYLOAD_LEN] = payload.first_chunk().ok_or_else(|| {
            FormatError::corrupt(
                "cache info",
                format!(
                    "payload of {} bytes, {INFO_PAYLOAD_LEN} needed",
                    payload.len()
                ),
            )
        })?;
        let raw_mode = b.u32_at::<MODE>();
        let mode = CacheMode::from_raw(raw_mode)
            .ok_or_else(|| FormatError::corrupt("cache info", format!("mode {raw_mode}")))?;
        let info = Self {
            mode,
            flags: b.u32_at::<FLAGS>(),
            gc_percent: b.u32_at::<GC_PERCENT>(),
            promotion: b.u32_at::<PROMOTION>(),
            seq_cutoff: b.u64_at::<SEQ_CUTOFF>(),
            writeback_target: b.u64_at::<WB_TARGET>(),
            writeback_rate: b.u64_at::<WB_RATE>(),
        };
        info.check()
            .map_err(|why| FormatError::corrupt("cache info", why))?;
        Ok(info)
    }

    /// The value rules; `Err` says which is broken.
    pub(crate) fn check(&self) -> Result<(), Broken> {
        if self.flags & !Self::KNOWN_FLAGS != 0 {
            return Err(broken!(
                "unknown flags {:#x}",
                self.flags & !Self::KNOWN_FLAGS
            ));
        }
        if self.gc_percent > Self::MAX_GC_PERCENT {
            return Err(broken!(
                "gc_percent {} above {}",
                self.gc_percent,
                Self::MAX_GC_PERCENT
            ));
        }
        if self.writeback_target > Self::MAX_WRITEBACK_TARGET {
            return Err(broken!(
                "writeback target {} above {} (100 %)",
                self.writeback_target,
                Self::MAX_WRITEBACK_TARGET
            ));
        }
        Ok(())
    }

    /// Check the settings before they are written: [`FormatError::Invalid`] naming the rule.
    pub fn validate(&self) -> Result<(), FormatError> {
        self.check()
            .map_err(|why| FormatError::invalid("cache info", why))
    }
}
