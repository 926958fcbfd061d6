//! Little-endian fields at fixed offsets of fixed-size records, and the CRC the spec uses.
//!
//! Field offsets are const generics checked when the code is compiled (the field lies inside
//! the record and is naturally aligned), so no field access can go out of range at run time.

/// Typed access to the fields of a fixed-size on-media record.
pub(crate) trait Fields {
    fn bytes_at<const OFF: usize, const W: usize>(&self) -> [u8; W];
    fn put_bytes<const OFF: usize, const W: usize>(&mut self, v: [u8; W]);
    /// CRC-32C of the whole record with its crc field (4 bytes at `OFF`) read as zero.
    fn crc_skip<const OFF: usize>(&self) -> u32;

    fn u16_at<const OFF: usize>(&self) -> u16 {
        const { assert!(OFF.is_multiple_of(2), "u16 field not naturally aligned") };
        u16::from_le_bytes(self.bytes_at::<OFF, 2>())
    }
    fn u32_at<const OFF: usize>(&self) -> u32 {
        const { assert!(OFF.is_multiple_of(4), "u32 field not naturally aligned") };
        u32::from_le_bytes(self.bytes_at::<OFF, 4>())
    }
    fn u64_at<const OFF: usize>(&self) -> u64 {
        const { assert!(OFF.is_multiple_of(8), "u64 field not naturally aligned") };
        u64::from_le_bytes(self.bytes_at::<OFF, 8>())
    }
    fn put_u16<const OFF: usize>(&mut self, v: u16) {
        const { assert!(OFF.is_multiple_of(2), "u16 field not naturally aligned") };
        self.put_bytes::<OFF, 2>(v.to_le_bytes());
    }
    fn put_u32<const OFF: usize>(&mut self, v: u32) {
        const { assert!(OFF.is_multiple_of(4), "u32 field not naturally aligned") };
        self.put_bytes::<OFF, 4>(v.to_le_bytes());
    }
    fn put_u64<const OFF: usize>(&mut self, v: u64) {
        const { assert!(OFF.is_multiple_of(8), "u64 field not naturally aligned") };
        self.put_bytes::<OFF, 8>(v.to_le_bytes());
    }
}

// Indexing below is in range: each `const` block proves it at compile time.
#[allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)]
impl<const N: usize> Fields for [u8; N] {
    fn bytes_at<const OFF: usize, const W: usize>(&self) -> [u8; W] {
        const { assert!(OFF + W <= N, "field lies past the end of the record") };
        let mut v = [0; W];
        v.copy_from_slice(&self[OFF..OFF + W]);
        v
    }

    fn put_bytes<const OFF: usize, const W: usize>(&mut self, v: [u8; W]) {
        const { assert!(OFF + W <= N, "field lies past the end of the record") };
        self[OFF..OFF + W].copy_from_slice(&v);
    }

    fn crc_skip<const OFF: usize>(&self) -> u32 {
        const {
            assert!(
                OFF + 4 <= N && OFF.is_multiple_of(4),
                "crc field out of the record"
            )
        };
        crc_parts(&self[..OFF], &self[OFF + 4..])
    }
}

/// CRC-32C of `b` with the four bytes at `off` read as zero; `None` if `b` is too short.
pub(crate) fn crc_skip_slice(b: &[u8], off: usize) -> Option<u32> {
    let (head, rest) = b.split_at_checked(off)?;
    let (_, tail) = rest.split_at_checked(4)?;
    Some(crc_parts(head, tail))
}

/// CRC-32C (seed `!0`, final xor `!0`) of `head ‖ 0u32 ‖ tail`, without copying.
fn crc_parts(head: &[u8], tail: &[u8]) -> u32 {
    let c = crc32c::crc32c(head);
    let c = crc32c::crc32c_append(c, &[0; 4]);
    crc32c::crc32c_append(c, tail)
}

/// True if every byte of `b` from `from` on is zero (reserved space).
pub(crate) fn zero_from(b: &[u8], from: usize) -> bool {
    b.iter().skip(from).all(|&x| x == 0)
}

/// `v` rounded up to a multiple of the power of two `align`; `None` on overflow.
pub(crate) fn round_up(v: u64, align: u64) -> Option<u64> {
    let mask = align.checked_sub(1)?;
    Some(v.checked_add(mask)? & !mask)
}
