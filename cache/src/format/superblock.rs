//! The superblock (offset 0, written once at format) and the origin identity it records.

use std::fmt;

use uuid::Uuid;

use super::bytes::{Fields, zero_from};
use super::error::{Broken, FormatError, broken};
use super::layout::{Layout, MIN_SEGMENTS, SB_SIZE, base_for, check_block_size, check_sizes};

/// "PCACHESB" read as a little-endian u64.
pub const SB_MAGIC: u64 = 0x4253_4548_4341_4350;
pub const VERSION_MAJOR: u16 = 1;
pub const VERSION_MINOR: u16 = 0;
/// Feature bits this version knows; none are defined in 1.0.
pub const INCOMPAT_KNOWN: u64 = 0;
pub const RO_COMPAT_KNOWN: u64 = 0;
pub const COMPAT_KNOWN: u64 = 0;

// Field offsets (docs/format.md, "Superblock").
const MAGIC: usize = 0;
const MAJOR: usize = 8;
const MINOR: usize = 10;
pub(crate) const CRC: usize = 12;
const INCOMPAT: usize = 16;
const RO_COMPAT: usize = 24;
const COMPAT: usize = 32;
const CACHE_UUID: usize = 40;
const ORIGIN_UUID: usize = 56;
const ORIGIN_BLOCKS: usize = 72;
const BLOCK_SIZE: usize = 80;
const SEGMENT_SIZE: usize = 84;
const SEGMENT_COUNT: usize = 88;
const RESERVED: usize = 92;
const SEGMENT_BASE: usize = 96;
const FORMAT_TIME: usize = 104;
const FORMAT_ID: usize = 112;
/// First byte of the zero tail.
const END: usize = 120;

/// Which origin a cache belongs to: it is refused in front of any other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OriginId {
    pub uuid: Uuid,
    /// Size in blocks of `block_size`.
    pub blocks: u64,
    /// The origin's block size in bytes, which is also the cache's.
    pub block_size: u32,
}

impl fmt::Display for OriginId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "origin {} ({} blocks of {} bytes)",
            self.uuid, self.blocks, self.block_size
        )
    }
}

impl OriginId {
    /// Block size in range and the byte size representable; `Err` says why not.
    pub(crate) fn check(&self) -> Result<(), Broken> {
        check_block_size(self.block_size)?;
        if self.blocks == 0 {
            return Err("origin of 0 blocks".into());
        }
        if self
            .blocks
            .checked_mul(u64::from(self.block_size))
            .is_none()
        {
            return Err(broken!(
                "{} blocks of {} bytes overflow a byte offset",
                self.blocks,
                self.block_size
            ));
        }
        Ok(())
    }
}

/// The superblock's fields; the magic, major version and crc are implied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Superblock {
    pub minor_version: u16,
    pub incompat: u64,
    pub ro_compat: u64,
    pub compat: u64,
    pub cache_uuid: Uuid,
    pub origin: OriginId,
    pub segment_size: u32,
    pub segment_count: u32,
    pub segment_base: u64,
    /// Seconds since the epoch.
    pub format_time: u64,
    /// Random, new at every format; key-sets carry it, so none from an earlier format of
    /// the same device is ever taken for a current one.
    pub format_id: u64,
}

impl Superblock {
    pub fn encode(&self) -> [u8; SB_SIZE] {
        let mut b = [0u8; SB_SIZE];
        b.put_u64::<MAGIC>(SB_MAGIC);
        b.put_u16::<MAJOR>(VERSION_MAJOR);
        b.put_u16::<MINOR>(self.minor_version);
        b.put_u64::<INCOMPAT>(self.incompat);
        b.put_u64::<RO_COMPAT>(self.ro_compat);
        b.put_u64::<COMPAT>(self.compat);
        b.put_bytes::<CACHE_UUID, 16>(self.cache_uuid.into_bytes());
        b.put_bytes::<ORIGIN_UUID, 16>(self.origin.uuid.into_bytes());
        b.put_u64::<ORIGIN_BLOCKS>(self.origin.blocks);
        b.put_u32::<BLOCK_SIZE>(self.origin.block_size);
        b.put_u32::<SEGMENT_SIZE>(self.segment_size);
        b.put_u32::<SEGMENT_COUNT>(self.segment_count);
        b.put_u64::<SEGMENT_BASE>(self.segment_base);
        b.put_u64::<FORMAT_TIME>(self.format_time);
        b.put_u64::<FORMAT_ID>(self.format_id);
        let crc = b.crc_skip::<CRC>();
        b.put_u32::<CRC>(crc);
        b
    }

    /// Decode and validate a 4 KiB superblock. No magic is [`FormatError::NotFormatted`];
    /// another major version or unknown incompat bits are refused; everything else wrong
    /// is corruption.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let b: &[u8; SB_SIZE] = bytes
            .try_into()
            .map_err(|_| FormatError::short("superblock", bytes.len(), SB_SIZE))?;
        if b.u64_at::<MAGIC>() != SB_MAGIC {
            return Err(FormatError::NotFormatted);
        }
        // Before the crc: a later major version may checksum differently.
        let major = b.u16_at::<MAJOR>();
        if major != VERSION_MAJOR {
            return Err(FormatError::Unsupported {
                why: format!("major version {major}, this reader knows {VERSION_MAJOR}"),
            });
        }
        let (stored, computed) = (b.u32_at::<CRC>(), b.crc_skip::<CRC>());
        if stored != computed {
            return Err(corrupt(format!(
                "crc {stored:#010x} stored, {computed:#010x} computed"
            )));
        }
        let incompat = b.u64_at::<INCOMPAT>();
        if incompat & !INCOMPAT_KNOWN != 0 {
            return Err(FormatError::UnknownIncompat {
                bits: incompat & !INCOMPAT_KNOWN,
            });
        }
        let minor_version = b.u16_at::<MINOR>();
        // A later minor version may use reserved space, which this reader then ignores.
        let newer_minor = minor_version > VERSION_MINOR;
        if !newer_minor && (b.u32_at::<RESERVED>() != 0 || !zero_from(b, END)) {
            return Err(corrupt("reserved bytes are not zero"));
        }
        let sb = Self {
            minor_version,
            incompat,
            ro_compat: b.u64_at::<RO_COMPAT>(),
            compat: b.u64_at::<COMPAT>(),
            cache_uuid: Uuid::from_bytes(b.bytes_at::<CACHE_UUID, 16>()),
            origin: OriginId {
                uuid: Uuid::from_bytes(b.bytes_at::<ORIGIN_UUID, 16>()),
                blocks: b.u64_at::<ORIGIN_BLOCKS>(),
                block_size: b.u32_at::<BLOCK_SIZE>(),
            },
            segment_size: b.u32_at::<SEGMENT_SIZE>(),
            segment_count: b.u32_at::<SEGMENT_COUNT>(),
            segment_base: b.u64_at::<SEGMENT_BASE>(),
            format_time: b.u64_at::<FORMAT_TIME>(),
            format_id: b.u64_at::<FORMAT_ID>(),
        };
        sb.check().map_err(corrupt)?;
        Ok(sb)
    }

    /// The rules a superblock's own fields obey, apart from the device; `Err` says why not.
    pub(crate) fn check(&self) -> Result<(), Broken> {
        if self.cache_uuid.is_nil() {
            return Err("nil cache UUID".into());
        }
        if self.format_id == 0 {
            return Err("format id 0".into());
        }
        self.origin.check()?;
        check_sizes(self.segment_size, self.origin.block_size)?;
        if self.segment_count < MIN_SEGMENTS {
            return Err(broken!(
                "{} segments, at least {MIN_SEGMENTS} needed",
                self.segment_count
            ));
        }
        let base = base_for(u64::from(self.segment_count));
        if base != Some(self.segment_base) {
            return Err(broken!(
                "segment base {} does not follow from {} segments (expected {})",
                self.segment_base,
                self.segment_count,
                base.unwrap_or(0)
            ));
        }
        Ok(())
    }

    /// The layout this superblock describes on a device of `device_size` bytes, which must
    /// hold it.
    pub fn layout(&self, device_size: u64) -> Result<Layout, FormatError> {
        Layout::with_count(
            device_size,
            self.segment_size,
            self.origin.block_size,
            self.segment_count,
        )
        .map_err(|e| match e {
            FormatError::NoSpace(why) => {
                FormatError::invalid("pmem device", format!("smaller than its format: {why}"))
            }
            other => other,
        })
    }

    /// Unknown ro_compat bits: the device may be read but never written.
    pub fn read_only(&self) -> bool {
        self.ro_compat & !RO_COMPAT_KNOWN != 0
    }
}

fn corrupt(why: impl Into<String>) -> FormatError {
    FormatError::corrupt("superblock", why)
}
