//! Little-endian field access on byte slices, and the wire error type.
//!
//! Every NVMe, NVMe-oF and NVMe/TCP field is little-endian at a fixed offset. These helpers
//! check the bounds on every access, so a decoder written with them turns a short or hostile
//! buffer into [`WireError::Short`] instead of a panic. Offsets are plain `usize`s: the
//! structures are fixed-layout, so callers name each offset rather than walk a cursor.

/// What a wire decoder or encoder returns.
pub type Result<T> = core::result::Result<T, WireError>;

/// Why bytes could not be decoded, or a value could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The buffer ends before the field does (EPROTO: the peer sent too little).
    #[error("short buffer: {need} bytes needed, {have} present")]
    Short { need: usize, have: usize },

    /// A field holds a value the format does not allow (EPROTO).
    #[error("invalid {field}: {value:#x}")]
    Invalid { field: &'static str, value: u64 },

    /// A text field is not UTF-8, or a string to encode holds a NUL (EPROTO when decoding).
    #[error("{field} is not a valid text field")]
    NotText { field: &'static str },

    /// A value is longer than its fixed field (EINVAL: the caller handed it in).
    #[error("{field} is longer than {max} bytes")]
    TooLong { field: &'static str, max: usize },
}

impl WireError {
    /// Positive errno: what came off the wire is a protocol error, what a caller asked to
    /// encode is an invalid argument.
    pub fn errno(&self) -> i32 {
        match self {
            Self::Short { .. } | Self::Invalid { .. } | Self::NotText { .. } => libc::EPROTO,
            Self::TooLong { .. } => libc::EINVAL,
        }
    }
}

/// The `len` bytes at `off`, or `Short` (also when `off + len` overflows).
pub fn get_bytes(b: &[u8], off: usize, len: usize) -> Result<&[u8]> {
    let end = off.checked_add(len).ok_or(WireError::Short {
        need: usize::MAX,
        have: b.len(),
    })?;
    b.get(off..end).ok_or(WireError::Short {
        need: end,
        have: b.len(),
    })
}

/// The `len` bytes at `off` for writing, or `Short`.
pub fn get_bytes_mut(b: &mut [u8], off: usize, len: usize) -> Result<&mut [u8]> {
    let have = b.len();
    let end = off.checked_add(len).ok_or(WireError::Short {
        need: usize::MAX,
        have,
    })?;
    b.get_mut(off..end)
        .ok_or(WireError::Short { need: end, have })
}

/// A fixed-size copy of the `N` bytes at `off` (identifiers, SQEs, digests).
pub fn get_array<const N: usize>(b: &[u8], off: usize) -> Result<[u8; N]> {
    let mut out = [0u8; N];
    out.copy_from_slice(get_bytes(b, off, N)?);
    Ok(out)
}

/// `Ok(())` when `b` holds at least `len` bytes, so a decoder can check its whole structure once.
pub fn need(b: &[u8], len: usize) -> Result<()> {
    if b.len() >= len {
        Ok(())
    } else {
        Err(WireError::Short {
            need: len,
            have: b.len(),
        })
    }
}

/// The byte at `off`.
pub fn get_u8(b: &[u8], off: usize) -> Result<u8> {
    Ok(get_array::<1>(b, off)?[0])
}

/// The little-endian `u16` at `off`.
pub fn get_u16(b: &[u8], off: usize) -> Result<u16> {
    Ok(u16::from_le_bytes(get_array(b, off)?))
}

/// The little-endian `u32` at `off`.
pub fn get_u32(b: &[u8], off: usize) -> Result<u32> {
    Ok(u32::from_le_bytes(get_array(b, off)?))
}

/// The little-endian `u64` at `off`.
pub fn get_u64(b: &[u8], off: usize) -> Result<u64> {
    Ok(u64::from_le_bytes(get_array(b, off)?))
}

/// Copies `src` to `off`.
pub fn put_bytes(b: &mut [u8], off: usize, src: &[u8]) -> Result<()> {
    get_bytes_mut(b, off, src.len())?.copy_from_slice(src);
    Ok(())
}

/// Writes the byte `v` at `off`.
pub fn put_u8(b: &mut [u8], off: usize, v: u8) -> Result<()> {
    put_bytes(b, off, &[v])
}

/// Writes `v` little-endian at `off`.
pub fn put_u16(b: &mut [u8], off: usize, v: u16) -> Result<()> {
    put_bytes(b, off, &v.to_le_bytes())
}

/// Writes `v` little-endian at `off`.
pub fn put_u32(b: &mut [u8], off: usize, v: u32) -> Result<()> {
    put_bytes(b, off, &v.to_le_bytes())
}

/// Writes `v` little-endian at `off`.
pub fn put_u64(b: &mut [u8], off: usize, v: u64) -> Result<()> {
    put_bytes(b, off, &v.to_le_bytes())
}

/// Zeroes the `len` bytes at `off` (reserved ranges, or a structure before it is filled).
pub fn zero(b: &mut [u8], off: usize, len: usize) -> Result<()> {
    get_bytes_mut(b, off, len)?.fill(0);
    Ok(())
}

/// How a fixed-size text field is padded after its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pad {
    /// NUL-terminated and NUL-padded (NQNs): the text is at most `len - 1` bytes, so a reader
    /// that stops at the first NUL always finds one.
    Nul,
    /// Space-padded, no terminator (serial and model numbers, firmware revision, TRSVCID,
    /// TRADDR): the text may fill the whole field.
    Space,
}

/// The text in the `len`-byte field at `off`: up to the first NUL, trailing spaces dropped.
/// Reads both padding styles, since peers are not strict about which they use.
pub fn get_str<'a>(b: &'a [u8], off: usize, len: usize, field: &'static str) -> Result<&'a str> {
    let raw = get_bytes(b, off, len)?;
    let text = match raw.iter().position(|&c| c == 0) {
        Some(nul) => raw.get(..nul).unwrap_or(raw),
        None => raw,
    };
    let s = core::str::from_utf8(text).map_err(|_| WireError::NotText { field })?;
    Ok(s.trim_end_matches(' '))
}

/// Writes `s` into the `len`-byte field at `off` and pads the rest per `pad`. Too long a
/// string is `TooLong` (never silently cut), a NUL inside it `NotText`.
pub fn put_str(
    b: &mut [u8],
    off: usize,
    len: usize,
    s: &str,
    pad: Pad,
    field: &'static str,
) -> Result<()> {
    let max = match pad {
        Pad::Nul => len.saturating_sub(1),
        Pad::Space => len,
    };
    if s.len() > max {
        return Err(WireError::TooLong { field, max });
    }
    if s.as_bytes().contains(&0) {
        return Err(WireError::NotText { field });
    }
    let dst = get_bytes_mut(b, off, len)?;
    let (text, rest) = dst.split_at_mut(s.len());
    text.copy_from_slice(s.as_bytes());
    rest.fill(match pad {
        Pad::Nul => 0,
        Pad::Space => b' ',
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_little_endian_at_offsets() {
        let b = [0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09];
        assert_eq!(get_u8(&b, 8), Ok(0x09));
        assert_eq!(get_u16(&b, 1), Ok(0x0302));
        assert_eq!(get_u32(&b, 0), Ok(0x0403_0201));
        assert_eq!(get_u64(&b, 1), Ok(0x0908_0706_0504_0302));
        assert_eq!(get_array::<3>(&b, 6), Ok([7, 8, 9]));
    }

    #[test]
    fn short_reads_say_what_was_needed() {
        let b = [0u8; 4];
        assert_eq!(get_u32(&b, 1), Err(WireError::Short { need: 5, have: 4 }));
        assert_eq!(get_u8(&b, 4), Err(WireError::Short { need: 5, have: 4 }));
        assert_eq!(get_u64(&b, 0), Err(WireError::Short { need: 8, have: 4 }));
        assert!(get_u16(&b, usize::MAX).is_err());
        assert!(get_bytes(&b, usize::MAX - 1, 4).is_err());
        assert_eq!(need(&b, 4), Ok(()));
        assert_eq!(need(&b, 5), Err(WireError::Short { need: 5, have: 4 }));
        assert_eq!(get_u8(&[], 0).map_err(|e| e.errno()), Err(libc::EPROTO));
    }

    #[test]
    fn writes_little_endian_and_checks_bounds() {
        let mut b = [0u8; 16];
        put_u8(&mut b, 0, 0xAA).unwrap();
        put_u16(&mut b, 1, 0x0102).unwrap();
        put_u32(&mut b, 3, 0x0304_0506).unwrap();
        put_u64(&mut b, 7, 0x0708_090A_0B0C_0D0E).unwrap();
        assert_eq!(
            b,
            [
                0xAA, 0x02, 0x01, 0x06, 0x05, 0x04, 0x03, 0x0E, 0x0D, 0x0C, 0x0B, 0x0A, 0x09, 0x08,
                0x07, 0
            ]
        );
        assert_eq!(
            put_u16(&mut b, 15, 1),
            Err(WireError::Short { need: 17, have: 16 })
        );
        assert!(put_u64(&mut b, usize::MAX, 1).is_err());
        // A failed write leaves the buffer as it was.
        assert_eq!(b[15], 0);
        zero(&mut b, 0, 16).unwrap();
        assert_eq!(b, [0u8; 16]);
    }

    #[test]
    fn text_fields_trim_and_pad() {
        let mut b = [0xFFu8; 12];
        put_str(&mut b, 2, 8, "abc", Pad::Space, "sn").unwrap();
        assert_eq!(&b, b"\xFF\xFFabc     \xFF\xFF");
        assert_eq!(get_str(&b, 2, 8, "sn"), Ok("abc"));
        put_str(&mut b, 2, 8, "nqn", Pad::Nul, "nqn").unwrap();
        assert_eq!(&b, b"\xFF\xFFnqn\0\0\0\0\0\xFF\xFF");
        assert_eq!(get_str(&b, 2, 8, "nqn"), Ok("nqn"));
        // Full-width space-padded text has no terminator; NUL-padded needs one.
        put_str(&mut b, 2, 8, "12345678", Pad::Space, "sn").unwrap();
        assert_eq!(get_str(&b, 2, 8, "sn"), Ok("12345678"));
        assert_eq!(
            put_str(&mut b, 2, 8, "12345678", Pad::Nul, "nqn"),
            Err(WireError::TooLong {
                field: "nqn",
                max: 7
            })
        );
        assert_eq!(
            put_str(&mut b, 2, 8, "123456789", Pad::Space, "sn"),
            Err(WireError::TooLong {
                field: "sn",
                max: 8
            })
        );
        assert_eq!(
            put_str(&mut b, 2, 8, "a\0b", Pad::Space, "sn"),
            Err(WireError::NotText { field: "sn" })
        );
        assert!(put_str(&mut b, 6, 8, "a", Pad::Space, "sn").is_err());
        assert_eq!(
            put_str(&mut b, 0, 4, "toolong", Pad::Space, "x").map_err(|e| e.errno()),
            Err(libc::EINVAL)
        );
        // Text stops at the first NUL even when spaces or garbage follow it.
        assert_eq!(get_str(b"ab \0zz", 0, 6, "f"), Ok("ab"));
        assert_eq!(get_str(b"    ", 0, 4, "f"), Ok(""));
        assert_eq!(
            get_str(b"\xC3\x28", 0, 2, "f"),
            Err(WireError::NotText { field: "f" })
        );
        assert!(get_str(b"abc", 0, 4, "f").is_err());
    }
}
