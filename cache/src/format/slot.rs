//! Dual-slot records (cache info, tails): two 4 KiB copies, the newer valid one counts, and
//! a writer never overwrites the current copy.
//!
//! A write goes to the other slot in two persisted steps: the whole slot with sequence 0
//! (not yet a record), then the sequence word alone. The sequence is one aligned 8-byte
//! store, so a power cut leaves the slot either without a record (sequence 0, or the
//! previous record's sequence over a torn body) or with the complete new one. Hence a slot
//! whose crc fails while its sequence is not just below the other slot's cannot come from a
//! power cut: the reader reports it as corruption rather than quietly going back in time.

use std::fmt;

use pmem::Pmem;

use super::bytes::{Fields, zero_from};
use super::error::{Broken, FormatError, broken};
use super::layout::{INFO_OFFSET, SLOT_SIZE, TAILS_OFFSET};

pub const SLOT_HEADER: usize = 16;
pub const SLOT_PAYLOAD_MAX: usize = SLOT_SIZE - SLOT_HEADER;

const SEQ: usize = 0;
const CRC: usize = 8;
const LEN: usize = 12;

/// One of the two copies of a dual-slot record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    Zero,
    One,
}

impl Slot {
    pub fn index(self) -> usize {
        match self {
            Self::Zero => 0,
            Self::One => 1,
        }
    }

    pub fn other(self) -> Self {
        match self {
            Self::Zero => Self::One,
            Self::One => Self::Zero,
        }
    }

    /// Device offset of this slot of the record at `base`.
    pub fn offset(self, base: u64) -> Result<u64, FormatError> {
        let step = match self {
            Self::Zero => 0,
            Self::One => SLOT_SIZE as u64,
        };
        base.checked_add(step)
            .ok_or_else(|| FormatError::invalid("slot offset", format!("{base} overflows")))
    }
}

/// The payload of a valid slot (bytes 16 … 16 + payload length).
#[derive(Clone)]
pub struct SlotRecord {
    len: usize,
    buf: [u8; SLOT_PAYLOAD_MAX],
}

impl SlotRecord {
    pub fn payload(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }
}

impl fmt::Debug for SlotRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlotRecord")
            .field("payload_len", &self.len)
            .finish_non_exhaustive()
    }
}

impl PartialEq for SlotRecord {
    fn eq(&self, other: &Self) -> bool {
        self.payload() == other.payload()
    }
}

impl Eq for SlotRecord {}

/// A full 4 KiB slot holding `payload` at sequence `seq`, zero past the payload.
pub fn encode_slot(seq: u64, payload: &[u8]) -> Result<[u8; SLOT_SIZE], FormatError> {
    if seq == 0 {
        return Err(FormatError::invalid(
            "slot sequence",
            "0 marks an empty slot",
        ));
    }
    let mut b = [0u8; SLOT_SIZE];
    let dst = b
        .get_mut(SLOT_HEADER..)
        .and_then(|body| body.get_mut(..payload.len()))
        .ok_or_else(|| FormatError::TooBig {
            what: "slot payload",
            why: format!("{} bytes, a slot holds {SLOT_PAYLOAD_MAX}", payload.len()),
        })?;
    dst.copy_from_slice(payload);
    b.put_u64::<SEQ>(seq);
    // Fits: at most SLOT_PAYLOAD_MAX, checked just above.
    b.put_u32::<LEN>(payload.len() as u32);
    let crc = b.crc_skip::<CRC>();
    b.put_u32::<CRC>(crc);
    Ok(b)
}

/// What one slot holds.
#[allow(clippy::large_enum_variant)] // short-lived, on the control path
enum State {
    /// Sequence 0: never written, or a write that did not reach its last step.
    Empty,
    Valid(SlotRecord, u64),
    /// Nonzero sequence, bad crc.
    Damaged(u64),
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("empty"),
            Self::Valid(_, seq) => write!(f, "valid at sequence {seq}"),
            Self::Damaged(seq) => write!(f, "bad crc at sequence {seq}"),
        }
    }
}

/// Classify a slot; `Err` for a slot whose crc holds but whose header breaks the rules,
/// which no power cut produces.
fn decode_slot(b: &[u8; SLOT_SIZE]) -> Result<State, Broken> {
    let seq = b.u64_at::<SEQ>();
    if seq == 0 {
        return Ok(State::Empty);
    }
    if b.u32_at::<CRC>() != b.crc_skip::<CRC>() {
        return Ok(State::Damaged(seq));
    }
    let len = b.u32_at::<LEN>();
    let body = b.get(SLOT_HEADER..).unwrap_or(&[]);
    let payload = usize::try_from(len)
        .ok()
        .and_then(|n| body.get(..n))
        .ok_or_else(|| broken!("payload length {len} exceeds {SLOT_PAYLOAD_MAX}"))?;
    if !zero_from(body, payload.len()) {
        return Err(broken!("bytes past the {len}-byte payload are not zero"));
    }
    let mut rec = SlotRecord {
        len: payload.len(),
        buf: [0; SLOT_PAYLOAD_MAX],
    };
    if let Some(dst) = rec.buf.get_mut(..payload.len()) {
        dst.copy_from_slice(payload);
    }
    Ok(State::Valid(rec, seq))
}

fn record_name(base: u64) -> &'static str {
    match base {
        INFO_OFFSET => "cache info",
        TAILS_OFFSET => "tails",
        _ => "dual-slot record",
    }
}

/// Read the dual-slot record at `base`: the valid slot with the higher sequence, which slot
/// that is, and its sequence.
pub fn read_slots(pmem: &dyn Pmem, base: u64) -> Result<(SlotRecord, Slot, u64), FormatError> {
    let what = record_name(base);
    let mut states = [State::Empty, State::Empty];
    for (slot, state) in [Slot::Zero, Slot::One].into_iter().zip(&mut states) {
        let off = slot.offset(base)?;
        let mut b = [0u8; SLOT_SIZE];
        pmem.read(off, &mut b)?;
        *state = decode_slot(&b).map_err(|why| {
            FormatError::corrupt(what, format!("slot {} at byte {off}: {why}", slot.index()))
        })?;
    }
    let [s0, s1] = states;
    let describe = |s0: &State, s1: &State| format!("slot 0 {s0}, slot 1 {s1}");
    let (current, rec, seq, other) = match (&s0, &s1) {
        (State::Valid(_, a), State::Valid(_, b)) if a == b => {
            return Err(FormatError::corrupt(what, describe(&s0, &s1)));
        }
        (State::Valid(r, a), other @ State::Valid(_, b)) if a > b => (Slot::Zero, r, *a, other),
        (State::Valid(r, a), other @ (State::Empty | State::Damaged(_))) => {
            (Slot::Zero, r, *a, other)
        }
        (other, State::Valid(r, b)) => (Slot::One, r, *b, other),
        _ => {
            return Err(FormatError::corrupt(
                what,
                format!("no valid copy: {}", describe(&s0, &s1)),
            ));
        }
    };
    if let State::Damaged(d) = other {
        // Only the copy a torn write was replacing (the previous record) may be damaged.
        if seq.checked_sub(1) != Some(*d) {
            return Err(FormatError::corrupt(
                what,
                format!(
                    "{}: the damaged copy is not the one before the valid one, a newer record may be lost",
                    describe(&s0, &s1)
                ),
            ));
        }
        tracing::debug!(what, seq, "ignoring the torn older copy");
    }
    Ok((rec.clone(), current, seq))
}

/// Write `payload` as the record after `current_seq` into the slot other than `current`,
/// persist it, and only then return it as the current one.
pub fn write_slot(
    pmem: &dyn Pmem,
    base: u64,
    current: Slot,
    current_seq: u64,
    payload: &[u8],
) -> Result<(Slot, u64), FormatError> {
    let seq = current_seq
        .checked_add(1)
        .ok_or_else(|| FormatError::invalid("slot sequence", "exhausted"))?;
    let target = current.other();
    let off = target.offset(base)?;
    let mut b = encode_slot(seq, payload)?;
    // Step 1: everything but the sequence, durable before the record can count.
    b.put_u64::<SEQ>(0);
    pmem.write(off, &b)?;
    pmem.persist(off, SLOT_SIZE as u64)?;
    // Step 2: the sequence, one atomic 8-byte store, makes it the current record.
    pmem.write(off, &seq.to_le_bytes())?;
    pmem.persist(off, 8)?;
    Ok((target, seq))
}

/// The writer's side of a dual-slot record: where it is and which copy is current.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotWriter {
    base: u64,
    slot: Slot,
    seq: u64,
}

impl SlotWriter {
    /// The record at `base`, whose current copy is `slot` at sequence `seq`.
    pub fn new(base: u64, slot: Slot, seq: u64) -> Self {
        Self { base, slot, seq }
    }

    pub fn base(&self) -> u64 {
        self.base
    }

    pub fn slot(&self) -> Slot {
        self.slot
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Replace the record with `payload`; returns the new sequence. On error the previous
    /// record stays current.
    pub fn write(&mut self, pmem: &dyn Pmem, payload: &[u8]) -> Result<u64, FormatError> {
        let (slot, seq) = write_slot(pmem, self.base, self.slot, self.seq, payload)?;
        (self.slot, self.seq) = (slot, seq);
        Ok(seq)
    }
}
