//! The 40-byte on-media key: an origin range and where its data lies in the cache.

use super::bytes::Fields;
use super::error::{Broken, FormatError, broken};
use super::layout::Layout;

pub const KEY_SIZE: usize = 40;

const SEQ: usize = 0;
const ORIGIN_OFF: usize = 8;
const LEN: usize = 16;
const DATA_OFF: usize = 20;
const DATA_SEG: usize = 24;
const DATA_GEN: usize = 28;
const DATA_CRC: usize = 32;
const FLAGS: usize = 36;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Key {
    /// Global write sequence (from 1); of overlapping keys the higher wins.
    pub seq: u64,
    /// First origin block.
    pub origin_off: u64,
    /// Length in blocks, at least 1.
    pub len: u32,
    /// Byte offset of the data in its segment (0 for UNMAP).
    pub data_off: u32,
    /// Data segment (0 for UNMAP).
    pub data_seg: u32,
    /// The data segment's generation when written, at least 1 (0 for UNMAP).
    pub data_gen: u32,
    /// crc32c of the data; 0 when data_crc is off (and for UNMAP).
    pub data_crc: u32,
    /// [`Key::DIRTY`], [`Key::UNMAP`].
    pub flags: u32,
}

impl Key {
    /// Not yet on the origin: writeback must copy it.
    pub const DIRTY: u32 = 1 << 0;
    /// A tombstone: no data in the cache; the range reads from the origin.
    pub const UNMAP: u32 = 1 << 1;
    pub const KNOWN_FLAGS: u32 = Self::DIRTY | Self::UNMAP;

    pub fn is_dirty(&self) -> bool {
        self.flags & Self::DIRTY != 0
    }

    pub fn is_unmap(&self) -> bool {
        self.flags & Self::UNMAP != 0
    }

    pub fn encode(&self) -> [u8; KEY_SIZE] {
        let mut b = [0u8; KEY_SIZE];
        b.put_u64::<SEQ>(self.seq);
        b.put_u64::<ORIGIN_OFF>(self.origin_off);
        b.put_u32::<LEN>(self.len);
        b.put_u32::<DATA_OFF>(self.data_off);
        b.put_u32::<DATA_SEG>(self.data_seg);
        b.put_u32::<DATA_GEN>(self.data_gen);
        b.put_u32::<DATA_CRC>(self.data_crc);
        b.put_u32::<FLAGS>(self.flags);
        b
    }

    /// Decode and check a key (exactly [`KEY_SIZE`] bytes).
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let b: &[u8; KEY_SIZE] = bytes
            .try_into()
            .map_err(|_| FormatError::short("key", bytes.len(), KEY_SIZE))?;
        let k = Self::parse(b);
        k.check().map_err(|why| FormatError::corrupt("key", why))?;
        Ok(k)
    }

    /// The fields, unchecked.
    pub(crate) fn parse(b: &[u8; KEY_SIZE]) -> Self {
        Self {
            seq: b.u64_at::<SEQ>(),
            origin_off: b.u64_at::<ORIGIN_OFF>(),
            len: b.u32_at::<LEN>(),
            data_off: b.u32_at::<DATA_OFF>(),
            data_seg: b.u32_at::<DATA_SEG>(),
            data_gen: b.u32_at::<DATA_GEN>(),
            data_crc: b.u32_at::<DATA_CRC>(),
            flags: b.u32_at::<FLAGS>(),
        }
    }

    /// The rules that need no geometry; `Err` says which is broken.
    pub(crate) fn check(&self) -> Result<(), Broken> {
        if self.flags & !Self::KNOWN_FLAGS != 0 {
            return Err(broken!(
                "unknown flags {:#x}",
                self.flags & !Self::KNOWN_FLAGS
            ));
        }
        if self.seq == 0 {
            return Err("sequence 0".into());
        }
        if self.len == 0 {
            return Err("length 0".into());
        }
        if self.origin_off.checked_add(u64::from(self.len)).is_none() {
            return Err(broken!(
                "origin range {}+{} overflows",
                self.origin_off,
                self.len
            ));
        }
        let data = (self.data_off, self.data_seg, self.data_gen, self.data_crc);
        if self.is_unmap() {
            if data != (0, 0, 0, 0) {
                return Err("UNMAP key names data".into());
            }
        } else if self.data_gen == 0 {
            return Err("data generation 0".into());
        }
        Ok(())
    }

    /// Check a key before it is written: [`FormatError::Invalid`] naming the rule.
    pub fn validate(&self) -> Result<(), FormatError> {
        self.check().map_err(|why| FormatError::invalid("key", why))
    }

    /// The origin range lies inside `origin_blocks`, and the data inside one segment of
    /// `layout`, block aligned.
    pub fn check_bounds(&self, layout: &Layout, origin_blocks: u64) -> Result<(), FormatError> {
        let corrupt = |why: String| FormatError::corrupt("key", why);
        let end = self.origin_off.checked_add(u64::from(self.len));
        if end.is_none_or(|e| e > origin_blocks) {
            return Err(corrupt(format!(
                "origin blocks {}+{} beyond the origin's {origin_blocks}",
                self.origin_off, self.len
            )));
        }
        if self.is_unmap() {
            return Ok(());
        }
        let bs = u64::from(layout.block_size());
        let data_end = u64::from(self.len)
            .checked_mul(bs)
            .and_then(|n| n.checked_add(u64::from(self.data_off)));
        if self.data_seg >= layout.segment_count()
            || !u64::from(self.data_off).is_multiple_of(bs)
            || data_end.is_none_or(|e| e > u64::from(layout.segment_size()))
        {
            return Err(corrupt(format!(
                "data {}:{}+{} blocks lies outside {} block-aligned segments of {} bytes",
                self.data_seg,
                self.data_off,
                self.len,
                layout.segment_count(),
                layout.segment_size()
            )));
        }
        Ok(())
    }
}
