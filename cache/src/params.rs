//! The cache's parameters as `bdev_pcache_create` and `bdev_pcache_set_options` take them, and the
//! modes. Names follow SPDK's conventions (snake_case, sizes in bytes, rates per second).

use crate::error::CacheError;
use serde::{Deserialize, Serialize};

fn invalid(msg: impl Into<String>) -> CacheError {
    CacheError::InvalidParam(msg.into())
}

/// How writes and read misses use the cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheMode {
    /// Writes complete once in pmem; the origin is updated in the background.
    #[default]
    Writeback,
    /// Writes go to the origin and the cache; they complete when the origin has them.
    Writethrough,
    /// Writes go to the origin only (cached copies of the range are dropped); reads are cached.
    Writearound,
    /// Nothing is cached; every I/O goes to the origin (dirty data is written back first).
    Passthrough,
}

impl From<CacheMode> for crate::format::CacheMode {
    fn from(m: CacheMode) -> Self {
        use crate::format::CacheMode as F;
        match m {
            CacheMode::Writeback => F::WriteBack,
            CacheMode::Writethrough => F::WriteThrough,
            CacheMode::Writearound => F::WriteAround,
            CacheMode::Passthrough => F::PassThrough,
        }
    }
}

impl From<crate::format::CacheMode> for CacheMode {
    fn from(m: crate::format::CacheMode) -> Self {
        use crate::format::CacheMode as F;
        match m {
            F::WriteBack => CacheMode::Writeback,
            F::WriteThrough => CacheMode::Writethrough,
            F::WriteAround => CacheMode::Writearound,
            F::PassThrough => CacheMode::Passthrough,
        }
    }
}

pub const DEFAULT_GC_PERCENT: u32 = 70;
pub const MAX_GC_PERCENT: u32 = 90;
pub const DEFAULT_SEGMENT_SIZE: u32 = crate::format::DEFAULT_SEGMENT_SIZE;

/// `bdev_pcache_create`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CreateParams {
    pub name: String,
    pub cache_bdev: String,
    pub origin_bdev: String,
    #[serde(default)]
    pub mode: CacheMode,
    #[serde(default)]
    pub data_crc: bool,
    #[serde(default = "default_gc_percent")]
    pub gc_percent: u32,
    /// Format the cache even if it holds a cache for another origin (its data is lost).
    #[serde(default, skip_serializing_if = "is_false")]
    pub format: bool,
    /// With `format`: format even over dirty data held for another origin (it is lost).
    #[serde(default, skip_serializing_if = "is_false")]
    pub force: bool,
    /// Every completed write is already persistent (key-sets group-committed per poll).
    #[serde(default)]
    pub durable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<uuid::Uuid>,
    /// Cache a read miss after this many misses on its range (0 or 1: always).
    #[serde(default)]
    pub promotion_threshold: u32,
    /// Sequential streams longer than this many bytes bypass the cache (0: off).
    #[serde(default)]
    pub sequential_cutoff: u64,
    /// Writeback aims to keep dirty data at this percent of the cache (0: write back everything;
    /// stored on media in hundredths of a percent).
    #[serde(default)]
    pub writeback_dirty_target: u32,
    /// Upper bound for writeback in bytes per second (0: unlimited).
    #[serde(default)]
    pub writeback_rate_limit: u64,
    /// Segment size at format time (bytes, power of two, 1 MiB..1 GiB); ignored when reattaching.
    #[serde(default = "default_segment_size")]
    pub segment_size: u32,
}

/// Options that can change at runtime (`bdev_pcache_set_options`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tunables {
    pub promotion_threshold: u32,
    pub sequential_cutoff: u64,
    pub writeback_dirty_target: u32,
    pub writeback_rate_limit: u64,
}

fn default_gc_percent() -> u32 {
    DEFAULT_GC_PERCENT
}

fn default_segment_size() -> u32 {
    DEFAULT_SEGMENT_SIZE
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl CreateParams {
    /// Checks ranges that serde cannot; the message names the parameter.
    pub fn check(&self) -> Result<(), CacheError> {
        if self.name.is_empty() {
            return Err(invalid("name must not be empty"));
        }
        if self.force && !self.format {
            return Err(invalid("force applies only with format"));
        }
        check_gc_percent(self.gc_percent)?;
        if !self.segment_size.is_power_of_two() || !(1 << 20..=1 << 30).contains(&self.segment_size)
        {
            return Err(invalid(format!(
                "segment_size {} is not a power of two between 1 MiB and 1 GiB",
                self.segment_size
            )));
        }
        self.tunables().check()
    }

    pub fn tunables(&self) -> Tunables {
        Tunables {
            promotion_threshold: self.promotion_threshold,
            sequential_cutoff: self.sequential_cutoff,
            writeback_dirty_target: self.writeback_dirty_target,
            writeback_rate_limit: self.writeback_rate_limit,
        }
    }
}

impl Tunables {
    pub fn check(&self) -> Result<(), CacheError> {
        if self.writeback_dirty_target > 100 {
            return Err(invalid(format!(
                "writeback_dirty_target {} is over 100",
                self.writeback_dirty_target
            )));
        }
        Ok(())
    }
}

pub fn check_gc_percent(p: u32) -> Result<(), CacheError> {
    if p > MAX_GC_PERCENT {
        return Err(invalid(format!("gc_percent {p} is over {MAX_GC_PERCENT}")));
    }
    Ok(())
}

/// `bdev_pcache_set_options`: every field optional, only the given ones change.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetOptionsParams {
    pub name: String,
    pub mode: Option<CacheMode>,
    pub gc_percent: Option<u32>,
    pub promotion_threshold: Option<u32>,
    pub sequential_cutoff: Option<u64>,
    pub writeback_dirty_target: Option<u32>,
    pub writeback_rate_limit: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_and_names_are_spdk_style() {
        let p: CreateParams = serde_json::from_value(json!({
            "name": "Pcache0", "cache_bdev": "Pmem0", "origin_bdev": "Origin0"
        }))
        .unwrap();
        assert_eq!(p.mode, CacheMode::Writeback);
        assert_eq!(
            (p.gc_percent, p.data_crc, p.format, p.durable),
            (70, false, false, false)
        );
        assert_eq!(p.segment_size, 16 << 20);
        p.check().unwrap();
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["mode"], "writeback");
        assert!(
            v.get("format").is_none(),
            "format is never saved: a restart must not reformat"
        );
        let back: CreateParams = serde_json::from_value(v).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn bad_values_are_refused_naming_the_parameter() {
        let bad = |extra: serde_json::Value| {
            let mut v = json!({"name": "P", "cache_bdev": "C", "origin_bdev": "O"});
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            match serde_json::from_value::<CreateParams>(v) {
                Err(e) => e.to_string(),
                Ok(p) => p.check().unwrap_err().to_string(),
            }
        };
        assert!(bad(json!({"gc_percent": 91})).contains("gc_percent"));
        assert!(bad(json!({"mode": "writeonly"})).contains("unknown variant"));
        assert!(bad(json!({"segment_size": 12345})).contains("segment_size"));
        assert!(bad(json!({"writeback_dirty_target": 101})).contains("writeback_dirty_target"));
        assert!(bad(json!({"bogus": 1})).contains("bogus"));
    }
}
