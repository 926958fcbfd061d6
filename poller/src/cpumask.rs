//! Core masks as spdk_tgt takes them: `-m 0x3`, `-m 3`, `-m [0,1]`, `-m [0-3,6]`.

use crate::PollerError;

/// A sorted, duplicate-free list of cores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuMask(Vec<u32>);

impl CpuMask {
    pub fn parse(s: &str) -> Result<CpuMask, PollerError> {
        let s = s.trim();
        let bad = || PollerError::InvalidCpuMask(s.to_string());
        let mut cores = Vec::new();
        if let Some(list) = s.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let (a, b) = match part.split_once('-') {
                    Some((a, b)) => (a.trim(), b.trim()),
                    None => (part, part),
                };
                let a: u32 = a.parse().map_err(|_| bad())?;
                let b: u32 = b.parse().map_err(|_| bad())?;
                if a > b || b >= 1024 {
                    return Err(bad());
                }
                cores.extend(a..=b);
            }
        } else {
            let hex = s
                .strip_prefix("0x")
                .or_else(|| s.strip_prefix("0X"))
                .unwrap_or(s);
            if hex.is_empty() || hex.len() > 32 {
                return Err(bad());
            }
            let mask = u128::from_str_radix(hex, 16).map_err(|_| bad())?;
            cores.extend((0..128u32).filter(|c| mask & (1u128 << c) != 0));
        }
        cores.sort_unstable();
        cores.dedup();
        if cores.is_empty() {
            return Err(bad());
        }
        Ok(CpuMask(cores))
    }

    pub fn single(core: u32) -> CpuMask {
        CpuMask(vec![core])
    }

    pub fn cores(&self) -> &[u32] {
        &self.0
    }

    /// SPDK's hex rendering, as in `framework_get_reactors` ("0x3").
    pub fn to_hex(&self) -> String {
        let mut digits = vec![0u8; (self.0.last().copied().unwrap_or(0) as usize / 4) + 1];
        for &c in &self.0 {
            digits[c as usize / 4] |= 1 << (c % 4);
        }
        let s: String = digits
            .iter()
            .rev()
            .map(|d| char::from_digit(*d as u32, 16).unwrap_or('0'))
            .collect();
        format!(
            "0x{}",
            s.trim_start_matches('0').to_string() + if self.0.is_empty() { "0" } else { "" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_spdk_forms() {
        assert_eq!(CpuMask::parse("0x3").unwrap().cores(), &[0, 1]);
        assert_eq!(CpuMask::parse("2").unwrap().cores(), &[1]);
        assert_eq!(CpuMask::parse("[0-2,5]").unwrap().cores(), &[0, 1, 2, 5]);
        assert_eq!(CpuMask::parse("0x30").unwrap().to_hex(), "0x30");
        assert_eq!(CpuMask::parse("[0,1]").unwrap().to_hex(), "0x3");
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "0x", "zz", "0x0", "[]", "[3-1]", "[a]", "[0-5000]"] {
            assert!(CpuMask::parse(bad).is_err(), "{bad}");
        }
    }
}
