//! A lane: what one thread needs to write into the cache without a lock — its key log and its data
//! head (the data segment it appends to). A lane is owned by one channel at a time; it goes back to
//! the cache's pool when the channel closes, and the next channel on any thread picks it up.

use crate::format::{FormatError, Layout};
use crate::log::{LaneLog, LogCtx, LogError};
use crate::segments::{SegUse, SegmentTable};

/// Where a lane appends data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataHead {
    pub seg: u32,
    pub gen_: u32,
    pub off: u32,
}

/// Space handed out for one key's data: `blocks` blocks at `off` in `seg`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataSpace {
    pub seg: u32,
    pub gen_: u32,
    pub off: u32,
    pub blocks: u32,
}

pub struct Lane {
    pub log: LaneLog,
    pub data: Option<DataHead>,
}

impl Lane {
    pub fn new(log: LaneLog, data: Option<DataHead>) -> Lane {
        Lane { log, data }
    }

    /// Up to `blocks` blocks of data space, contiguous in one segment (fewer at a segment's end;
    /// the caller makes one key per piece). None when no segment is free.
    pub fn alloc_data(
        &mut self,
        segments: &SegmentTable,
        layout: &Layout,
        blocks: u32,
    ) -> Option<DataSpace> {
        let bs = layout.block_size();
        let seg_size = layout.segment_size();
        let head = match self.data {
            Some(h) if h.off + bs <= seg_size => h,
            full => {
                let (seg, gen_) = segments.alloc_keeping(
                    SegUse::Data {
                        lane: self.log.lane() as u16,
                    },
                    crate::segments::KEY_RESERVE,
                )?;
                // The old head's own reference goes; its keys keep it alive until GC.
                if let Some(old) = full
                    && segments.put_ref(old.seg)
                {
                    segments.retire(old.seg);
                }
                DataHead { seg, gen_, off: 0 }
            }
        };
        let fit = (seg_size - head.off) / bs;
        let granted = blocks.min(fit);
        self.data = Some(DataHead {
            off: head.off + granted * bs,
            ..head
        });
        segments.get_ref(head.seg);
        Some(DataSpace {
            seg: head.seg,
            gen_: head.gen_,
            off: head.off,
            blocks: granted,
        })
    }

    pub fn seal(&mut self, ctx: &LogCtx) -> Result<(), LogError> {
        self.log.seal(ctx)
    }
}

impl From<LogError> for FormatError {
    fn from(e: LogError) -> Self {
        match e {
            LogError::Format(f) => f,
            LogError::Full(lane) => {
                FormatError::NoSpace(format!("no free segment for lane {lane}'s key log"))
            }
        }
    }
}
