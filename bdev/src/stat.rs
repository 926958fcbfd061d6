//! Per-channel I/O statistics with SPDK's `bdev_get_iostat` fields.

use crate::io::IoType;
use serde_json::{Value, json};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpStat {
    pub bytes: u64,
    pub ops: u64,
    pub latency_ticks: u64,
    pub max_latency_ticks: u64,
    /// 0 until the first operation.
    pub min_latency_ticks: u64,
}

impl OpStat {
    #[inline]
    fn record(&mut self, bytes: u64, ticks: u64) {
        self.bytes += bytes;
        self.ops += 1;
        self.latency_ticks += ticks;
        self.max_latency_ticks = self.max_latency_ticks.max(ticks);
        if self.min_latency_ticks == 0 || ticks < self.min_latency_ticks {
            self.min_latency_ticks = ticks;
        }
    }

    fn add(&mut self, o: &OpStat) {
        self.bytes += o.bytes;
        self.ops += o.ops;
        self.latency_ticks += o.latency_ticks;
        self.max_latency_ticks = self.max_latency_ticks.max(o.max_latency_ticks);
        if o.min_latency_ticks != 0
            && (self.min_latency_ticks == 0 || o.min_latency_ticks < self.min_latency_ticks)
        {
            self.min_latency_ticks = o.min_latency_ticks;
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IoStat {
    pub read: OpStat,
    pub write: OpStat,
    pub unmap: OpStat,
    pub copy: OpStat,
    pub num_write_zeroes_ops: u64,
    pub num_flush_ops: u64,
    pub num_reset_ops: u64,
    /// Failed I/O by errno.
    pub errors: Vec<(i32, u64)>,
}

impl IoStat {
    #[inline]
    pub(crate) fn record(&mut self, t: IoType, bytes: u64, ticks: u64) {
        match t {
            IoType::Read => self.read.record(bytes, ticks),
            IoType::Write => self.write.record(bytes, ticks),
            IoType::Unmap => self.unmap.record(bytes, ticks),
            IoType::WriteZeroes => self.num_write_zeroes_ops += 1,
            IoType::Flush => self.num_flush_ops += 1,
            IoType::Reset => self.num_reset_ops += 1,
        }
    }

    pub(crate) fn record_error(&mut self, errno: i32) {
        match self.errors.iter_mut().find(|(e, _)| *e == errno) {
            Some((_, n)) => *n += 1,
            None => self.errors.push((errno, 1)),
        }
    }

    pub fn add(&mut self, o: &IoStat) {
        self.read.add(&o.read);
        self.write.add(&o.write);
        self.unmap.add(&o.unmap);
        self.copy.add(&o.copy);
        self.num_write_zeroes_ops += o.num_write_zeroes_ops;
        self.num_flush_ops += o.num_flush_ops;
        self.num_reset_ops += o.num_reset_ops;
        for &(e, n) in &o.errors {
            match self.errors.iter_mut().find(|(x, _)| *x == e) {
                Some((_, m)) => *m += n,
                None => self.errors.push((e, n)),
            }
        }
    }

    /// The object SPDK's `bdev_get_iostat` reports for one bdev (member order as SPDK's).
    pub fn to_json(&self, name: &str) -> Value {
        let mut io_error = serde_json::Map::new();
        for (e, n) in &self.errors {
            io_error.insert(nix::errno::Errno::from_raw(*e).desc().to_string(), json!(n));
        }
        json!({
            "name": name,
            "bytes_read": self.read.bytes,
            "num_read_ops": self.read.ops,
            "bytes_written": self.write.bytes,
            "num_write_ops": self.write.ops,
            "bytes_unmapped": self.unmap.bytes,
            "num_unmap_ops": self.unmap.ops,
            "bytes_copied": self.copy.bytes,
            "num_copy_ops": self.copy.ops,
            "read_latency_ticks": self.read.latency_ticks,
            "max_read_latency_ticks": self.read.max_latency_ticks,
            "min_read_latency_ticks": self.read.min_latency_ticks,
            "write_latency_ticks": self.write.latency_ticks,
            "max_write_latency_ticks": self.write.max_latency_ticks,
            "min_write_latency_ticks": self.write.min_latency_ticks,
            "unmap_latency_ticks": self.unmap.latency_ticks,
            "max_unmap_latency_ticks": self.unmap.max_latency_ticks,
            "min_unmap_latency_ticks": self.unmap.min_latency_ticks,
            "copy_latency_ticks": self.copy.latency_ticks,
            "max_copy_latency_ticks": self.copy.max_latency_ticks,
            "min_copy_latency_ticks": self.copy.min_latency_ticks,
            "io_error": io_error,
        })
    }
}
