//! The tails record: where each lane's key log starts (key tail) and where writeback
//! stands in it (dirty tail), kept in a dual slot.

use std::fmt;

use super::bytes::Fields;
use super::error::{Broken, FormatError, broken};
use super::kset::KSET_ALIGN;
use super::layout::Layout;

pub const MAX_LANES: usize = 64;
/// Payload bytes for [`MAX_LANES`] lanes.
pub const TAILS_PAYLOAD_MAX: usize = HEAD + MAX_LANES * LANE_SIZE;

// Payload offsets: the spec's slot offsets minus the 16-byte slot header.
const LANE_COUNT: usize = 0;
const RESERVED: usize = 4;
const WRITTEN_BACK: usize = 8;
const HEAD: usize = 16;
const LANE_SIZE: usize = 16;

/// A position in a lane's key log: a byte offset in a key segment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogPos {
    pub seg: u32,
    pub off: u32,
}

/// One lane's tail positions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LaneTails {
    /// The oldest key-set still needed; replay starts here and GC advances it.
    pub key_tail: LogPos,
    /// The oldest key-set not yet written back.
    pub dirty_tail: LogPos,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Tails {
    /// Every key with `seq` ≤ this is on the origin.
    pub written_back_seq: u64,
    lane_count: usize,
    // Lanes past `lane_count` stay default, so the derived equality is the logical one.
    lanes: [LaneTails; MAX_LANES],
}

impl Tails {
    /// Tails for `lanes.len()` lanes (1 … 64), offsets 64-byte aligned.
    pub fn new(written_back_seq: u64, lanes: &[LaneTails]) -> Result<Self, FormatError> {
        let mut t = Self {
            written_back_seq,
            lane_count: lanes.len(),
            lanes: [LaneTails::default(); MAX_LANES],
        };
        let dst = t
            .lanes
            .get_mut(..lanes.len())
            .filter(|_| !lanes.is_empty())
            .ok_or_else(|| {
                FormatError::invalid(
                    "lane count",
                    format!("{} lanes, 1 to {MAX_LANES} allowed", lanes.len()),
                )
            })?;
        dst.copy_from_slice(lanes);
        t.check()
            .map_err(|why| FormatError::invalid("tails", why))?;
        Ok(t)
    }

    pub fn lanes(&self) -> &[LaneTails] {
        self.lanes.get(..self.lane_count).unwrap_or(&[])
    }

    /// Positions can change, the lane count cannot.
    pub fn lanes_mut(&mut self) -> &mut [LaneTails] {
        self.lanes.get_mut(..self.lane_count).unwrap_or(&mut [])
    }

    /// Bytes of [`Tails::encode`]'s output that form the payload (16 + 16 per lane).
    pub fn encoded_len(&self) -> usize {
        HEAD.saturating_add(self.lane_count.saturating_mul(LANE_SIZE))
    }

    /// The payload in the first [`Tails::encoded_len`] bytes, zeros after.
    pub fn encode(&self) -> [u8; TAILS_PAYLOAD_MAX] {
        let mut b = [0u8; TAILS_PAYLOAD_MAX];
        // At most MAX_LANES.
        b.put_u32::<LANE_COUNT>(self.lane_count as u32);
        b.put_u64::<WRITTEN_BACK>(self.written_back_seq);
        if let Some((_, rest)) = b.split_first_chunk_mut::<HEAD>() {
            for (dst, lane) in rest
                .as_chunks_mut::<LANE_SIZE>()
                .0
                .iter_mut()
                .zip(self.lanes())
            {
                dst.put_u32::<0>(lane.key_tail.seg);
                dst.put_u32::<4>(lane.key_tail.off);
                dst.put_u32::<8>(lane.dirty_tail.seg);
                dst.put_u32::<12>(lane.dirty_tail.off);
            }
        }
        b
    }

    /// Decode a tails payload. A longer payload comes from a later minor version; its
    /// extra bytes are ignored.
    pub fn decode(payload: &[u8]) -> Result<Self, FormatError> {
        let (head, rest) = payload
            .split_first_chunk::<HEAD>()
            .ok_or_else(|| corrupt(format!("payload of {} bytes, {HEAD} needed", payload.len())))?;
        let count = head.u32_at::<LANE_COUNT>();
        if count == 0 || count > MAX_LANES as u32 {
            return Err(corrupt(format!("{count} lanes, 1 to {MAX_LANES} allowed")));
        }
        if head.u32_at::<RESERVED>() != 0 {
            return Err(corrupt("reserved field is not zero"));
        }
        let lane_count = count as usize;
        let raw = rest
            .as_chunks::<LANE_SIZE>()
            .0
            .get(..lane_count)
            .ok_or_else(|| {
                corrupt(format!(
                    "payload of {} bytes is too short for {count} lanes",
                    payload.len()
                ))
            })?;
        let mut t = Self {
            written_back_seq: head.u64_at::<WRITTEN_BACK>(),
            lane_count,
            lanes: [LaneTails::default(); MAX_LANES],
        };
        for (lane, r) in t.lanes.iter_mut().zip(raw) {
            *lane = LaneTails {
                key_tail: LogPos {
                    seg: r.u32_at::<0>(),
                    off: r.u32_at::<4>(),
                },
                dirty_tail: LogPos {
                    seg: r.u32_at::<8>(),
                    off: r.u32_at::<12>(),
                },
            };
        }
        t.check().map_err(corrupt)?;
        Ok(t)
    }

    fn check(&self) -> Result<(), Broken> {
        for (i, l) in self.lanes().iter().enumerate() {
            for (name, p) in [("key", l.key_tail), ("dirty", l.dirty_tail)] {
                if !p.off.is_multiple_of(KSET_ALIGN as u32) {
                    return Err(broken!(
                        "lane {i} {name} tail offset {} is not {KSET_ALIGN}-byte aligned",
                        p.off
                    ));
                }
            }
        }
        Ok(())
    }

    /// Every position names a segment of `layout` and lies inside it.
    pub fn check_bounds(&self, layout: &Layout) -> Result<(), FormatError> {
        for (i, l) in self.lanes().iter().enumerate() {
            for (name, p) in [("key", l.key_tail), ("dirty", l.dirty_tail)] {
                if p.seg >= layout.segment_count() || p.off >= layout.segment_size() {
                    return Err(corrupt(format!(
                        "lane {i} {name} tail {}:{} lies outside {} segments of {} bytes",
                        p.seg,
                        p.off,
                        layout.segment_count(),
                        layout.segment_size()
                    )));
                }
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Tails {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tails")
            .field("written_back_seq", &self.written_back_seq)
            .field("lanes", &self.lanes())
            .finish()
    }
}

fn corrupt(why: impl Into<String>) -> FormatError {
    FormatError::corrupt("tails", why)
}
