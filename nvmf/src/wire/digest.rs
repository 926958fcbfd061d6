//! NVMe/TCP header and data digests: CRC32C (Castagnoli) with the initial value and the final
//! value inverted, sent as 4 little-endian bytes right after what they cover.
//!
//! The `crc32c` crate's `crc32c()` already starts from `!0` and inverts the result, and
//! `crc32c_append` continues a finished value, so a digest over data split across buffers is
//! the same as over the joined bytes.

use super::le::{self, WireError};

/// Bytes of a header or data digest on the wire.
pub const DIGEST_LEN: usize = 4;

/// The digest of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// The digest of the concatenation of `parts` (data that sits in several buffers).
pub fn crc32c_slices<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> u32 {
    let mut crc = Crc32c::new();
    for part in parts {
        crc.update(part);
    }
    crc.value()
}

/// A digest computed as the bytes arrive, for data received straight into I/O buffers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Crc32c(u32);

impl Crc32c {
    /// The digest of nothing yet.
    pub fn new() -> Self {
        Self(0)
    }

    /// Adds the next bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.0 = crc32c::crc32c_append(self.0, data);
    }

    /// The digest of everything added so far (adding more afterwards is fine).
    pub fn value(&self) -> u32 {
        self.0
    }
}

/// A received digest that does not match the bytes it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("digest mismatch: computed {computed:#010x}, received {received:#010x}")]
pub struct DigestMismatch {
    pub computed: u32,
    pub received: u32,
}

/// Writes `digest` little-endian at `off`.
pub fn put(b: &mut [u8], off: usize, digest: u32) -> Result<(), WireError> {
    le::put_u32(b, off, digest)
}

/// The digest stored at `off`.
pub fn get(b: &[u8], off: usize) -> Result<u32, WireError> {
    le::get_u32(b, off)
}

/// `Ok(())` when the digest received matches the one computed.
pub fn check(computed: u32, received: u32) -> Result<(), DigestMismatch> {
    if computed == received {
        Ok(())
    } else {
        Err(DigestMismatch { computed, received })
    }
}

/// Computes the digest of `b[..len]` and stores it at `b[len..len + 4]` (a header digest).
pub fn seal(b: &mut [u8], len: usize) -> Result<(), WireError> {
    let covered = le::get_bytes(b, 0, len)?;
    let digest = crc32c(covered);
    put(b, len, digest)
}

/// Checks the digest at `b[len..len + 4]` against `b[..len]`. `Short` when the digest is not
/// all there; the inner result says whether it matches.
pub fn verify(b: &[u8], len: usize) -> Result<Result<(), DigestMismatch>, WireError> {
    let received = get(b, len)?;
    let covered = le::get_bytes(b, 0, len)?;
    Ok(check(crc32c(covered), received))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_value_matches_the_crc32c_catalogue() {
        // CRC-32C (iSCSI / NVMe/TCP) check value for the ASCII digits 1..9.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
        // 32 bytes of zeroes, the first vector of RFC 3720 B.4.
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        // 32 bytes of 0xFF, the second.
        assert_eq!(crc32c(&[0xFFu8; 32]), 0x62A8_AB43);
    }

    #[test]
    fn split_data_gives_the_same_digest() {
        let data: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
        let whole = crc32c(&data);
        for cut in [0, 1, 3, 4, 100, 2999, 3000] {
            let (a, b) = data.split_at(cut);
            assert_eq!(crc32c_slices([a, b]), whole, "cut at {cut}");
            let mut running = Crc32c::new();
            running.update(a);
            running.update(&[]);
            running.update(b);
            assert_eq!(running.value(), whole);
        }
        let parts: Vec<&[u8]> = data.chunks(7).collect();
        assert_eq!(crc32c_slices(parts), whole);
        assert_eq!(crc32c_slices(core::iter::empty()), 0);
    }

    #[test]
    fn digests_are_little_endian_on_the_wire() {
        let mut b = *b"123456789\0\0\0\0";
        seal(&mut b, 9).unwrap();
        assert_eq!(&b[9..], &[0x83, 0x92, 0x06, 0xE3]);
        assert_eq!(get(&b, 9), Ok(0xE306_9283));
        assert_eq!(verify(&b, 9), Ok(Ok(())));
        b[0] ^= 1;
        let computed = crc32c(&b[..9]);
        assert_eq!(
            verify(&b, 9),
            Ok(Err(DigestMismatch {
                computed,
                received: 0xE306_9283
            }))
        );
        assert!(verify(&b, 10).is_err());
        assert!(seal(&mut b, 10).is_err());
        assert!(seal(&mut b, 100).is_err());
        let mut out = [0u8; 6];
        put(&mut out, 2, 0x0403_0201).unwrap();
        assert_eq!(out, [0, 0, 1, 2, 3, 4]);
        assert!(put(&mut out, 3, 1).is_err());
        assert_eq!(check(5, 5), Ok(()));
        assert!(check(5, 6).is_err());
    }
}
