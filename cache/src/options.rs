//! `bdev_pcache_set_options`: the tunables checked, persisted in the cache info, kept for
//! save_config and applied to the running cache.

use crate::error::CacheError;
use crate::format::CacheInfo;
use crate::instance::Cache;
use crate::params::{CacheMode, CreateParams, SetOptionsParams};

/// The cache info on pmem for `p`: its mode, tunables and flags.
pub(crate) fn info_for(p: &CreateParams) -> CacheInfo {
    let mut info = CacheInfo {
        mode: p.mode.into(),
        gc_percent: p.gc_percent,
        promotion: p.promotion_threshold,
        seq_cutoff: p.sequential_cutoff,
        writeback_target: u64::from(p.writeback_dirty_target) * 100,
        writeback_rate: p.writeback_rate_limit,
        ..CacheInfo::default()
    };
    if p.data_crc {
        info.flags |= CacheInfo::DATA_CRC;
    }
    if p.durable {
        info.flags |= CacheInfo::DURABLE;
    }
    info
}

impl Cache {
    /// Applies `bdev_pcache_set_options`: the runtime values, the saved parameters
    /// (save_config) and the cache info on pmem. Leaving writeback starts a flush: the other
    /// modes write around the cache, so its dirty data must reach the origin (writes to blocks
    /// still dirty meanwhile keep going through the log, in order).
    pub fn set_options(&self, o: &SetOptionsParams) -> Result<(), CacheError> {
        let mut p = self.params_lock();
        let mut next = p.clone();
        next.mode = o.mode.unwrap_or(next.mode);
        next.gc_percent = o.gc_percent.unwrap_or(next.gc_percent);
        next.promotion_threshold = o.promotion_threshold.unwrap_or(next.promotion_threshold);
        next.sequential_cutoff = o.sequential_cutoff.unwrap_or(next.sequential_cutoff);
        next.writeback_dirty_target = o
            .writeback_dirty_target
            .unwrap_or(next.writeback_dirty_target);
        next.writeback_rate_limit = o.writeback_rate_limit.unwrap_or(next.writeback_rate_limit);
        next.check()?;
        {
            let mut meta = self.meta();
            let info = info_for(&next);
            // A pmem failure answers with its own errno (EIO), not as a bad parameter.
            meta.info_slot.write(self.pmem(), &info.encode())?;
            meta.info = info;
        }
        let leaving_writeback = p.mode == CacheMode::Writeback && next.mode != CacheMode::Writeback;
        self.set_mode(next.mode);
        self.gc().set_gc_percent(next.gc_percent);
        self.set_tunables(next.promotion_threshold, next.sequential_cutoff);
        *p = next;
        drop(p);
        if leaving_writeback {
            self.flush_start();
        }
        Ok(())
    }
}
