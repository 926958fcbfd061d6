//! The segment generation table: one self-checking u64 per segment.

use pmem::Pmem;

use super::error::FormatError;
use super::layout::{GEN_TABLE_OFFSET, Layout};

pub const GEN_ENTRY_SIZE: u64 = 8;
/// Every segment's generation after format. 0 is never a valid generation, so zeroed bytes
/// never name a live segment.
pub const GEN_FIRST: u32 = 1;

/// Entries read or written per pmem access when handling the whole table.
const CHUNK_ENTRIES: usize = 512;

/// The table entry for segment `seg` at generation `generation`: the generation in the low
/// half, `crc32c(seg LE ‖ generation LE)` in the high half. The segment number in the check
/// catches an entry written at the wrong place.
pub fn gen_entry_encode(seg: u32, generation: u32) -> u64 {
    (u64::from(check(seg, generation)) << 32) | u64::from(generation)
}

/// Segment `seg`'s generation from its raw entry; a failed check is media corruption.
pub fn gen_entry_decode(seg: u32, raw: u64) -> Result<u32, FormatError> {
    // Truncations intended: the entry is two u32 halves.
    let generation = raw as u32;
    let stored = (raw >> 32) as u32;
    if stored != check(seg, generation) {
        return Err(FormatError::corrupt(
            "generation table",
            format!("segment {seg}: entry {raw:#018x} fails its check"),
        ));
    }
    if generation == 0 {
        return Err(FormatError::corrupt(
            "generation table",
            format!("segment {seg}: generation 0"),
        ));
    }
    Ok(generation)
}

fn check(seg: u32, generation: u32) -> u32 {
    let mut b = [0u8; 8];
    let (s, g) = b.split_at_mut(4);
    s.copy_from_slice(&seg.to_le_bytes());
    g.copy_from_slice(&generation.to_le_bytes());
    crc32c::crc32c(&b)
}

/// Set segment `seg`'s generation: one aligned 8-byte store (atomic on pmem, so the entry is
/// always its old or its new value), then flush and fence.
pub fn write_gen(
    pmem: &dyn Pmem,
    layout: &Layout,
    seg: u32,
    generation: u32,
) -> Result<(), FormatError> {
    if generation == 0 {
        return Err(FormatError::invalid(
            "generation",
            "0 is never a valid generation",
        ));
    }
    let off = layout.gen_entry_offset(seg)?;
    pmem.write(off, &gen_entry_encode(seg, generation).to_le_bytes())?;
    pmem.persist(off, GEN_ENTRY_SIZE)?;
    Ok(())
}

/// Segment `seg`'s current generation.
pub fn read_gen(pmem: &dyn Pmem, layout: &Layout, seg: u32) -> Result<u32, FormatError> {
    let mut raw = [0u8; 8];
    pmem.read(layout.gen_entry_offset(seg)?, &mut raw)?;
    gen_entry_decode(seg, u64::from_le_bytes(raw))
}

/// Every segment's generation, index = segment number.
pub fn read_gen_table(pmem: &dyn Pmem, layout: &Layout) -> Result<Vec<u32>, FormatError> {
    let count = layout.segment_count();
    let mut gens = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    let mut buf = [0u8; CHUNK_ENTRIES * 8];
    let mut seg = 0u32;
    let mut off = GEN_TABLE_OFFSET;
    while seg < count {
        let n = count.saturating_sub(seg).min(CHUNK_ENTRIES as u32);
        let bytes = buf
            .get_mut(..(n as usize).saturating_mul(8))
            .ok_or_else(|| FormatError::invalid("generation table", "chunk size"))?;
        pmem.read(off, bytes)?;
        for raw in bytes.as_chunks::<8>().0 {
            gens.push(gen_entry_decode(seg, u64::from_le_bytes(*raw))?);
            seg = seg.saturating_add(1);
        }
        off = off.saturating_add(u64::from(n).saturating_mul(GEN_ENTRY_SIZE));
    }
    Ok(gens)
}

/// Write the whole table with every segment at `generation`, zero its padding, and flush it
/// (the caller fences).
pub(crate) fn write_gen_table(
    pmem: &dyn Pmem,
    layout: &Layout,
    generation: u32,
) -> Result<(), FormatError> {
    let count = layout.segment_count();
    let mut buf = [0u8; CHUNK_ENTRIES * 8];
    let mut seg = 0u32;
    let mut off = GEN_TABLE_OFFSET;
    let end = GEN_TABLE_OFFSET.saturating_add(layout.gen_table_len());
    while off < end {
        for raw in buf.as_chunks_mut::<8>().0 {
            *raw = if seg < count {
                gen_entry_encode(seg, generation).to_le_bytes()
            } else {
                [0; 8] // padding up to the 4 KiB boundary
            };
            seg = seg.saturating_add(1);
        }
        // The table length is a multiple of 4 KiB, the chunk size.
        pmem.write(off, &buf)?;
        off = off.saturating_add(buf.len() as u64);
    }
    pmem.flush(GEN_TABLE_OFFSET, layout.gen_table_len())?;
    Ok(())
}
