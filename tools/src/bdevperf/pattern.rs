//! Self-describing blocks: data a later run (or another tool) can verify without knowing what the
//! writer did, only the seed it used.
//!
//! Every block starts with a 40-byte little-endian header; the rest of the block is a deterministic
//! stream derived from (seed, lba, version):
//!
//! ```text
//!  0  magic       u64   "PCBPPAT1"
//!  8  seed        u64
//! 16  lba         u64   the block's own address, to catch misdirected writes
//! 24  version     u64   lets a rewrite of the same seed be told from the original
//! 32  block_size  u32
//! 36  crc32c      u32   over the whole block with this field zeroed, to catch torn blocks
//! ```

/// "PCBPPAT1" read as a little-endian u64.
pub const MAGIC: u64 = u64::from_le_bytes(*b"PCBPPAT1");
pub const HEADER_LEN: usize = 40;
const CRC_OFF: usize = 36;

/// The smallest block a pattern fits in (bdev block sizes start at 512).
pub const MIN_BLOCK: usize = 64;

/// What `--pattern` asks for: the writer's seed and version, and for a check the version expected
/// (None: any version of the seed matches).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PatternSpec {
    pub seed: u64,
    pub version: u64,
    pub check_version: bool,
}

/// How `check` classifies one block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockClass {
    /// A whole pattern block with the expected seed (and version) at the right LBA.
    Matching,
    /// A whole pattern block at the right LBA, but with another seed or version.
    OtherPattern,
    /// Anything else: zeroes, garbage, a torn block, a block written for another LBA.
    Foreign,
}

#[inline]
fn mix(mut z: u64) -> u64 {
    // splitmix64's finaliser: a cheap bijection with good avalanche.
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The body stream of one block: splitmix64 seeded from (seed, lba, version).
struct Body(u64);

impl Body {
    fn new(seed: u64, lba: u64, version: u64) -> Body {
        Body(mix(
            seed ^ mix(lba ^ mix(version.wrapping_add(0x9e37_79b9_7f4a_7c15)))
        ))
    }

    #[inline]
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }
}

fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

fn get_u64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

fn get_u32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}

/// CRC of the block as if its crc field were zero.
fn block_crc(block: &[u8]) -> u32 {
    let c = crc32c::crc32c(&block[..CRC_OFF]);
    let c = crc32c::crc32c_append(c, &[0u8; 4]);
    crc32c::crc32c_append(c, &block[CRC_OFF + 4..])
}

/// Writes the pattern block for (seed, lba, version) into `block` (its whole length).
pub fn fill_block(block: &mut [u8], seed: u64, lba: u64, version: u64) {
    debug_assert!(block.len() >= MIN_BLOCK);
    put_u64(block, 0, MAGIC);
    put_u64(block, 8, seed);
    put_u64(block, 16, lba);
    put_u64(block, 24, version);
    let len = block.len() as u32;
    block[32..36].copy_from_slice(&len.to_le_bytes());
    block[CRC_OFF..CRC_OFF + 4].fill(0);
    let mut body = Body::new(seed, lba, version);
    let mut words = block[HEADER_LEN..].chunks_exact_mut(8);
    for w in &mut words {
        w.copy_from_slice(&body.next().to_le_bytes());
    }
    let tail = words.into_remainder();
    let last = body.next().to_le_bytes();
    let n = tail.len();
    tail.copy_from_slice(&last[..n]);
    let crc = block_crc(block);
    block[CRC_OFF..CRC_OFF + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Fills consecutive blocks of `buf` starting at `first_lba`.
pub fn fill_blocks(buf: &mut [u8], block_size: usize, first_lba: u64, seed: u64, version: u64) {
    for (i, b) in buf.chunks_exact_mut(block_size).enumerate() {
        fill_block(b, seed, first_lba + i as u64, version);
    }
}

/// The header of a whole, well-formed pattern block (magic, size, CRC and body all check out).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub seed: u64,
    pub lba: u64,
    pub version: u64,
}

/// Parses `block` as a pattern block; None unless it is whole and exactly what the generator writes.
pub fn parse_block(block: &[u8]) -> Option<Header> {
    if block.len() < MIN_BLOCK
        || get_u64(block, 0) != MAGIC
        || get_u32(block, 32) as usize != block.len()
        || get_u32(block, CRC_OFF) != block_crc(block)
    {
        return None;
    }
    let h = Header {
        seed: get_u64(block, 8),
        lba: get_u64(block, 16),
        version: get_u64(block, 24),
    };
    // A valid CRC over bytes the generator would not write is still not ours.
    let mut body = Body::new(h.seed, h.lba, h.version);
    let mut words = block[HEADER_LEN..].chunks_exact(8);
    for w in &mut words {
        if w != body.next().to_le_bytes() {
            return None;
        }
    }
    let tail = words.remainder();
    if tail != &body.next().to_le_bytes()[..tail.len()] {
        return None;
    }
    Some(h)
}

/// Classifies the block read from `lba` against the pattern the check looks for.
pub fn classify(block: &[u8], lba: u64, spec: &PatternSpec) -> BlockClass {
    match parse_block(block) {
        Some(h) if h.lba != lba => BlockClass::Foreign,
        Some(h) if h.seed == spec.seed && (!spec.check_version || h.version == spec.version) => {
            BlockClass::Matching
        }
        Some(_) => BlockClass::OtherPattern,
        None => BlockClass::Foreign,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BS: usize = 4096;

    fn spec(seed: u64) -> PatternSpec {
        PatternSpec {
            seed,
            version: 1,
            check_version: true,
        }
    }

    fn block(seed: u64, lba: u64, version: u64) -> Vec<u8> {
        let mut b = vec![0u8; BS];
        fill_block(&mut b, seed, lba, version);
        b
    }

    #[test]
    fn a_written_block_matches_its_own_seed_and_lba() {
        let b = block(7, 42, 1);
        assert_eq!(classify(&b, 42, &spec(7)), BlockClass::Matching);
        let h = parse_block(&b).unwrap();
        assert_eq!((h.seed, h.lba, h.version), (7, 42, 1));
    }

    #[test]
    fn the_data_is_deterministic_and_differs_per_lba() {
        assert_eq!(block(7, 42, 1), block(7, 42, 1));
        assert_ne!(block(7, 42, 1)[HEADER_LEN..], block(7, 43, 1)[HEADER_LEN..]);
        assert_ne!(block(7, 42, 1)[HEADER_LEN..], block(7, 42, 2)[HEADER_LEN..]);
    }

    #[test]
    fn a_zero_block_is_foreign() {
        assert_eq!(classify(&[0u8; BS], 0, &spec(0)), BlockClass::Foreign);
    }

    #[test]
    fn garbage_is_foreign() {
        let mut g = vec![0u8; BS];
        let mut x = 0x1234_5678_9abc_def0u64;
        for b in g.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        assert_eq!(classify(&g, 3, &spec(7)), BlockClass::Foreign);
    }

    #[test]
    fn a_torn_block_is_foreign() {
        // First half of a new version over the second half of the old one, as a torn write leaves.
        let old = block(7, 9, 1);
        let new = block(7, 9, 2);
        let mut torn = new.clone();
        torn[BS / 2..].copy_from_slice(&old[BS / 2..]);
        assert_eq!(classify(&torn, 9, &spec(7)), BlockClass::Foreign);
        // A torn sector inside the body only.
        let mut torn = old.clone();
        torn[1024..1536].copy_from_slice(&new[1024..1536]);
        assert_eq!(classify(&torn, 9, &spec(7)), BlockClass::Foreign);
        // A single flipped bit.
        let mut flipped = old;
        flipped[BS - 1] ^= 1;
        assert_eq!(classify(&flipped, 9, &spec(7)), BlockClass::Foreign);
    }

    #[test]
    fn another_seed_or_version_is_another_pattern() {
        assert_eq!(
            classify(&block(8, 5, 1), 5, &spec(7)),
            BlockClass::OtherPattern
        );
        assert_eq!(
            classify(&block(7, 5, 2), 5, &spec(7)),
            BlockClass::OtherPattern
        );
        let any_version = PatternSpec {
            check_version: false,
            ..spec(7)
        };
        assert_eq!(
            classify(&block(7, 5, 2), 5, &any_version),
            BlockClass::Matching
        );
    }

    #[test]
    fn a_block_for_another_lba_is_foreign() {
        assert_eq!(classify(&block(7, 5, 1), 6, &spec(7)), BlockClass::Foreign);
        assert_eq!(classify(&block(8, 5, 1), 6, &spec(7)), BlockClass::Foreign);
    }

    #[test]
    fn a_block_of_another_size_is_foreign() {
        let small = {
            let mut b = vec![0u8; 512];
            fill_block(&mut b, 7, 5, 1);
            b
        };
        assert_eq!(classify(&small, 5, &spec(7)), BlockClass::Matching);
        let mut big = vec![0u8; 1024];
        big[..512].copy_from_slice(&small);
        assert_eq!(classify(&big, 5, &spec(7)), BlockClass::Foreign);
    }

    #[test]
    fn odd_block_sizes_round_trip() {
        for bs in [64usize, 100, 520, 4160] {
            let mut b = vec![0u8; bs];
            fill_block(&mut b, 1, 2, 3);
            assert_eq!(classify(&b, 2, &spec(1)), BlockClass::OtherPattern, "{bs}");
            let mut b2 = b.clone();
            b2[bs - 1] ^= 0x80;
            assert_eq!(classify(&b2, 2, &spec(1)), BlockClass::Foreign, "{bs}");
        }
    }

    #[test]
    fn fill_blocks_numbers_each_block() {
        let mut buf = vec![0u8; 4 * 512];
        fill_blocks(&mut buf, 512, 100, 9, 1);
        for (i, b) in buf.chunks(512).enumerate() {
            assert_eq!(parse_block(b).unwrap().lba, 100 + i as u64);
        }
    }
}
