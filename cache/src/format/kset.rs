//! Key-sets: the records of a lane's key log, a 64-byte header and up to 100 keys.
//!
//! Encoding writes into a caller's buffer and decoding borrows the caller's bytes: neither
//! allocates, as both run on the data path.

use super::bytes::{Fields, crc_skip_slice, zero_from};
use super::error::{Broken, FormatError, KsetEnd, KsetError, broken};
use super::key::{KEY_SIZE, Key};
use super::layout::Layout;
use super::tails::MAX_LANES;

/// "PCKEYSET" read as a little-endian u64.
pub const KSET_MAGIC: u64 = 0x5445_5359_454b_4350;
pub const KSET_HEADER: usize = 64;
pub const MAX_KEYS_PER_KSET: usize = 100;
/// Key-sets start at multiples of this, and their sizes are rounded up to it.
pub const KSET_ALIGN: usize = 64;
/// A key-set of [`MAX_KEYS_PER_KSET`] keys: 64 + 4000 bytes rounded up.
pub const MAX_KSET_SIZE: usize = 4096;
/// Header flag: no keys; the log continues at offset 0 of `next_segment`.
pub const KSET_LAST: u16 = 1 << 0;

const MAGIC: usize = 0;
const CRC: usize = 8;
const COUNT: usize = 12;
const FLAGS: usize = 14;
const SEG_GEN: usize = 16;
const LANE: usize = 20;
const LANE_SEQ: usize = 24;
const NEXT_SEGMENT: usize = 32;
const NEXT_GEN: usize = 36;
const FORMAT_ID: usize = 40;
/// Reserved, zero, up to the end of the header.
const RESERVED: usize = 48;

const _: () = assert!(MAX_KSET_SIZE == KSET_HEADER + MAX_KEYS_PER_KSET * KEY_SIZE + 32);

/// Bytes a key-set of `keys` keys occupies: 64 + 40 per key, rounded up to 64.
pub fn kset_size(keys: usize) -> usize {
    keys.saturating_mul(KEY_SIZE)
        .saturating_add(KSET_HEADER)
        .checked_next_multiple_of(KSET_ALIGN)
        .unwrap_or(usize::MAX)
}

/// Which key-set belongs at a log position: the encoder writes these values and the
/// decoder accepts only a key-set that carries them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KsetId {
    /// The superblock's format id.
    pub format_id: u64,
    pub lane: u32,
    /// 1, 2, 3 … along the lane's log.
    pub lane_seq: u64,
    /// Current generation of the segment holding the key-set.
    pub seg_gen: u32,
}

/// What [`decode_kset`] expects at a position.
pub type KsetExpect = KsetId;

/// A key-set header's fields; the magic is implied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeySetHeader {
    /// CRC-32C over the whole key-set (header, keys, padding) with this field zero.
    pub crc: u32,
    pub count: u16,
    pub flags: u16,
    pub seg_gen: u32,
    pub lane: u32,
    pub lane_seq: u64,
    /// LAST only: where the log continues, and that segment's generation.
    pub next_segment: u32,
    pub next_gen: u32,
    pub format_id: u64,
}

impl KeySetHeader {
    pub fn is_last(&self) -> bool {
        self.flags & KSET_LAST != 0
    }

    pub fn encode(&self) -> [u8; KSET_HEADER] {
        let mut b = [0u8; KSET_HEADER];
        b.put_u64::<MAGIC>(KSET_MAGIC);
        b.put_u32::<CRC>(self.crc);
        b.put_u16::<COUNT>(self.count);
        b.put_u16::<FLAGS>(self.flags);
        b.put_u32::<SEG_GEN>(self.seg_gen);
        b.put_u32::<LANE>(self.lane);
        b.put_u64::<LANE_SEQ>(self.lane_seq);
        b.put_u32::<NEXT_SEGMENT>(self.next_segment);
        b.put_u32::<NEXT_GEN>(self.next_gen);
        b.put_u64::<FORMAT_ID>(self.format_id);
        b
    }

    /// Decode a 64-byte header and check its fields. The crc covers the keys as well, so
    /// it is checked by [`decode_kset`], not here.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let b: &[u8; KSET_HEADER] = bytes
            .try_into()
            .map_err(|_| FormatError::short("key-set header", bytes.len(), KSET_HEADER))?;
        if b.u64_at::<MAGIC>() != KSET_MAGIC {
            return Err(FormatError::corrupt("key-set header", "no key-set magic"));
        }
        let h = Self::parse(b);
        h.check_bytes(b)
            .map_err(|why| FormatError::corrupt("key-set header", why))?;
        Ok(h)
    }

    fn parse(b: &[u8; KSET_HEADER]) -> Self {
        Self {
            crc: b.u32_at::<CRC>(),
            count: b.u16_at::<COUNT>(),
            flags: b.u16_at::<FLAGS>(),
            seg_gen: b.u32_at::<SEG_GEN>(),
            lane: b.u32_at::<LANE>(),
            lane_seq: b.u64_at::<LANE_SEQ>(),
            next_segment: b.u32_at::<NEXT_SEGMENT>(),
            next_gen: b.u32_at::<NEXT_GEN>(),
            format_id: b.u64_at::<FORMAT_ID>(),
        }
    }

    /// The field rules, and reserved bytes zero; `Err` says which is broken.
    fn check_bytes(&self, b: &[u8; KSET_HEADER]) -> Result<(), Broken> {
        if !zero_from(b, RESERVED) {
            return Err("reserved bytes are not zero".into());
        }
        self.check()
    }

    fn check(&self) -> Result<(), Broken> {
        if self.flags & !KSET_LAST != 0 {
            return Err(broken!("unknown flags {:#x}", self.flags & !KSET_LAST));
        }
        if usize::from(self.count) > MAX_KEYS_PER_KSET {
            return Err(broken!("{} keys, at most {MAX_KEYS_PER_KSET}", self.count));
        }
        if self.is_last() {
            if self.count != 0 {
                return Err(broken!("LAST key-set with {} keys", self.count));
            }
            if self.next_gen == 0 {
                return Err("LAST key-set names generation 0".into());
            }
        } else {
            if self.count == 0 {
                return Err("no keys".into());
            }
            if self.next_segment != 0 || self.next_gen != 0 {
                return Err("next segment set without LAST".into());
            }
        }
        if self.seg_gen == 0 {
            return Err("segment generation 0".into());
        }
        if self.lane >= MAX_LANES as u32 {
            return Err(broken!("lane {}, at most {}", self.lane, MAX_LANES - 1));
        }
        if self.lane_seq == 0 {
            return Err("lane sequence 0".into());
        }
        if self.format_id == 0 {
            return Err("format id 0".into());
        }
        Ok(())
    }

    fn from_id(id: KsetId) -> Self {
        Self {
            seg_gen: id.seg_gen,
            lane: id.lane,
            lane_seq: id.lane_seq,
            format_id: id.format_id,
            ..Self::default()
        }
    }
}

/// Encode a key-set of `keys` (1 … 100) into the front of `out`; returns its size, a
/// multiple of 64. Padding is zeroed; bytes of `out` past the size are untouched.
pub fn encode_kset(id: KsetId, keys: &[Key], out: &mut [u8]) -> Result<usize, FormatError> {
    if keys.len() > MAX_KEYS_PER_KSET {
        return Err(FormatError::TooBig {
            what: "key-set",
            why: format!("{} keys, at most {MAX_KEYS_PER_KSET}", keys.len()),
        });
    }
    let header = KeySetHeader {
        // Fits: at most 100.
        count: keys.len() as u16,
        ..KeySetHeader::from_id(id)
    };
    header
        .check()
        .map_err(|why| FormatError::invalid("key-set", why))?;
    for (i, k) in keys.iter().enumerate() {
        k.check()
            .map_err(|why| FormatError::invalid("key", format!("key {i}: {why}")))?;
    }
    write_kset(&header, keys, out)
}

/// Encode a LAST key-set: the lane's log continues at offset 0 of `next_segment`, whose
/// generation is `next_gen`.
pub fn encode_kset_last(
    id: KsetId,
    next_segment: u32,
    next_gen: u32,
    out: &mut [u8],
) -> Result<usize, FormatError> {
    let header = KeySetHeader {
        flags: KSET_LAST,
        next_segment,
        next_gen,
        ..KeySetHeader::from_id(id)
    };
    header
        .check()
        .map_err(|why| FormatError::invalid("key-set", why))?;
    write_kset(&header, &[], out)
}

fn write_kset(header: &KeySetHeader, keys: &[Key], out: &mut [u8]) -> Result<usize, FormatError> {
    let size = kset_size(keys.len());
    let have = out.len();
    let no_room = || {
        FormatError::NoSpace(format!(
            "a key-set of {} keys needs {size} bytes, the buffer has {have}",
            keys.len()
        ))
    };
    let buf = out.get_mut(..size).ok_or_else(no_room)?;
    buf.fill(0);
    let (head, body) = buf
        .split_first_chunk_mut::<KSET_HEADER>()
        .ok_or_else(no_room)?;
    *head = header.encode();
    head.put_u32::<CRC>(0);
    for (dst, k) in body.as_chunks_mut::<KEY_SIZE>().0.iter_mut().zip(keys) {
        *dst = k.encode();
    }
    let crc = crc_skip_slice(buf, CRC).ok_or_else(no_room)?;
    if let Some(head) = buf.first_chunk_mut::<KSET_HEADER>() {
        head.put_u32::<CRC>(crc);
    }
    Ok(size)
}

/// Decode the key-set at the start of `bytes` (the rest of its segment from a log
/// position, or at least [`MAX_KSET_SIZE`] bytes of it) if it is the one `expect` names.
///
/// [`KsetError::End`] when it is not (no magic, bad crc, another format, generation, lane
/// or lane sequence, too few bytes): the normal end of a log. [`KsetError::Corrupt`] when
/// it is intact but breaks a rule of the format. Every key is checked here, so iterating
/// the result cannot fail.
pub fn decode_kset(bytes: &[u8], expect: KsetExpect) -> Result<KeySetView<'_>, KsetError> {
    let end = |e| Err(KsetError::End(e));
    let Some(h) = bytes.first_chunk::<KSET_HEADER>() else {
        return end(KsetEnd::Truncated {
            have: bytes.len(),
            need: KSET_HEADER,
        });
    };
    if h.u64_at::<MAGIC>() != KSET_MAGIC {
        return end(KsetEnd::BadMagic);
    }
    // The crc can only be checked over the length the header claims, so a count too large
    // for the bytes at hand cannot be told from a torn header: the end of the log.
    let count = usize::from(h.u16_at::<COUNT>());
    let size = kset_size(count);
    let Some(whole) = bytes.get(..size) else {
        return end(KsetEnd::Truncated {
            have: bytes.len(),
            need: size,
        });
    };
    let stored = h.u32_at::<CRC>();
    let computed = crc_skip_slice(whole, CRC).unwrap_or(!stored);
    if stored != computed {
        return end(KsetEnd::BadCrc { stored, computed });
    }
    let header = KeySetHeader::parse(h);
    if header.format_id != expect.format_id {
        return end(KsetEnd::OtherFormat {
            found: header.format_id,
        });
    }
    if header.seg_gen != expect.seg_gen {
        return end(KsetEnd::StaleGen {
            found: header.seg_gen,
            expected: expect.seg_gen,
        });
    }
    if header.lane != expect.lane {
        return end(KsetEnd::OtherLane { found: header.lane });
    }
    if header.lane_seq != expect.lane_seq {
        return end(KsetEnd::OutOfSequence {
            found: header.lane_seq,
            expected: expect.lane_seq,
        });
    }
    // Intact and ours: from here on, anything wrong is corruption.
    let corrupt = |why: String| {
        KsetError::Corrupt(FormatError::corrupt(
            "key-set",
            format!("lane {} sequence {}: {why}", header.lane, header.lane_seq),
        ))
    };
    header.check_bytes(h).map_err(|b| corrupt(b.0))?;
    let keys_len = count.saturating_mul(KEY_SIZE);
    let (raw, padding) = whole
        .get(KSET_HEADER..)
        .and_then(|w| w.split_at_checked(keys_len))
        .ok_or_else(|| corrupt("shorter than its keys".into()))?;
    if !padding.iter().all(|&b| b == 0) {
        return Err(corrupt("padding is not zero".into()));
    }
    let keys = raw.as_chunks::<KEY_SIZE>().0;
    for (i, k) in keys.iter().enumerate() {
        Key::parse(k)
            .check()
            .map_err(|why| corrupt(format!("key {i}: {why}")))?;
    }
    Ok(KeySetView { header, keys, size })
}

/// A decoded key-set borrowing the bytes it was decoded from.
#[derive(Clone, Copy, Debug)]
pub struct KeySetView<'a> {
    header: KeySetHeader,
    keys: &'a [[u8; KEY_SIZE]],
    size: usize,
}

impl<'a> KeySetView<'a> {
    pub fn header(&self) -> &KeySetHeader {
        &self.header
    }

    /// Bytes the key-set occupies: the next one starts this far on.
    pub fn size(&self) -> usize {
        self.size
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn is_last(&self) -> bool {
        self.header.is_last()
    }

    /// For a LAST key-set: the segment where the log continues (at offset 0) and the
    /// generation it must have.
    pub fn next_segment(&self) -> Option<(u32, u32)> {
        self.is_last()
            .then_some((self.header.next_segment, self.header.next_gen))
    }

    pub fn keys(&self) -> KeyIter<'a> {
        KeyIter {
            raw: self.keys.iter(),
        }
    }

    /// Every key lies inside the origin and the cache, and a LAST link names a segment
    /// of `layout`.
    pub fn check_bounds(&self, layout: &Layout, origin_blocks: u64) -> Result<(), FormatError> {
        if self.is_last() && self.header.next_segment >= layout.segment_count() {
            return Err(FormatError::corrupt(
                "key-set",
                format!(
                    "lane {} sequence {}: next segment {} of {}",
                    self.header.lane,
                    self.header.lane_seq,
                    self.header.next_segment,
                    layout.segment_count()
                ),
            ));
        }
        for k in self.keys() {
            k.check_bounds(layout, origin_blocks)?;
        }
        Ok(())
    }
}

/// The keys of a [`KeySetView`], decoded one by one as they are reached.
#[derive(Clone, Debug)]
pub struct KeyIter<'a> {
    raw: std::slice::Iter<'a, [u8; KEY_SIZE]>,
}

impl Iterator for KeyIter<'_> {
    type Item = Key;

    fn next(&mut self) -> Option<Key> {
        self.raw.next().map(Key::parse)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.raw.size_hint()
    }
}

impl ExactSizeIterator for KeyIter<'_> {}

impl DoubleEndedIterator for KeyIter<'_> {
    fn next_back(&mut self) -> Option<Key> {
        self.raw.next_back().map(Key::parse)
    }
}
