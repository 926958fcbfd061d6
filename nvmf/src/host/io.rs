//! A bdev I/O as NVMe commands: which command carries the next piece of it. Reads and writes
//! longer than the controller's transfer limit (or 65536 blocks), Write Zeroes over 65536
//! blocks and unmaps over 256 DSM ranges go as a series of commands, one after another, each
//! resuming where the last one completed (so a reconnect resends only what was not done).

use crate::host::qpair::{Command, OWN_LEN, Src};
use crate::wire::command::{DSM_RANGE_LEN, DsmRange, Sqe, Xfer, dsm, io as op};
use bdev::IoType;

/// Blocks one Read / Write / Write Zeroes may carry (NLB is 16 bits, 0's based).
pub const MAX_NLB: u64 = 0x1_0000;
/// Blocks one DSM range may carry.
const MAX_RANGE_BLOCKS: u64 = u32::MAX as u64;
/// DSM ranges one command carries (the slot's own buffer holds 256).
pub const MAX_RANGES: u64 = (OWN_LEN / DSM_RANGE_LEN) as u64;

/// What the next piece of an I/O is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    pub cmd: Command,
    /// Blocks this command covers (what completes when it succeeds).
    pub blocks: u64,
    /// For an unmap: the first block and the block count its ranges cover.
    pub dsm: Option<(u64, u64)>,
}

/// The I/O as this module needs it.
#[derive(Clone, Copy, Debug)]
pub struct IoShape {
    pub io_type: IoType,
    pub offset: u64,
    pub blocks: u64,
    pub block_size: u32,
    pub fua: bool,
    pub nsid: u32,
    /// The namespace has a volatile write cache (FLUSH has something to do).
    pub vwc: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Send this.
    Send(Piece),
    /// Nothing to send: done (a FLUSH without a volatile cache, an empty range).
    Done,
    /// The I/O cannot be expressed (errno).
    Invalid(i32),
}

impl PartialEq for Command {
    fn eq(&self, o: &Command) -> bool {
        self.sqe == o.sqe && self.xfer == o.xfer && self.len == o.len && self.src == o.src
    }
}
impl Eq for Command {}

/// The command for the piece of `io` after `done` blocks; `max_transfer` bytes per command.
pub fn plan(io: &IoShape, done: u64, max_transfer: u64) -> Plan {
    let bs = u64::from(io.block_size);
    if bs == 0 {
        return Plan::Invalid(libc::EINVAL);
    }
    let left = io.blocks.saturating_sub(done);
    let slba = io.offset.saturating_add(done);
    match io.io_type {
        IoType::Flush => {
            if !io.vwc || done > 0 {
                return Plan::Done;
            }
            Plan::Send(Piece {
                cmd: Command {
                    sqe: Sqe::new(op::FLUSH, 0, io.nsid),
                    xfer: Xfer::None,
                    len: 0,
                    src: Src::None,
                },
                blocks: io.blocks.max(1),
                dsm: None,
            })
        }
        IoType::Read | IoType::Write => {
            if left == 0 {
                return Plan::Done;
            }
            let n = left.min((max_transfer / bs).max(1)).min(MAX_NLB);
            let write = io.io_type == IoType::Write;
            let mut sqe = Sqe::new(if write { op::WRITE } else { op::READ }, 0, io.nsid);
            if sqe.set_lba_range(slba, n as u32).is_err() {
                return Plan::Invalid(libc::EINVAL);
            }
            sqe.set_fua(write && io.fua);
            let Ok(len) = usize::try_from(n * bs) else {
                return Plan::Invalid(libc::EINVAL);
            };
            let Ok(off) = usize::try_from(done * bs) else {
                return Plan::Invalid(libc::EINVAL);
            };
            Plan::Send(Piece {
                cmd: Command {
                    sqe,
                    xfer: if write {
                        Xfer::HostToController
                    } else {
                        Xfer::ControllerToHost
                    },
                    len,
                    src: Src::Iovs(off),
                },
                blocks: n,
                dsm: None,
            })
        }
        IoType::WriteZeroes => {
            if left == 0 {
                return Plan::Done;
            }
            let n = left.min(MAX_NLB);
            let mut sqe = Sqe::new(op::WRITE_ZEROES, 0, io.nsid);
            if sqe.set_lba_range(slba, n as u32).is_err() {
                return Plan::Invalid(libc::EINVAL);
            }
            Plan::Send(Piece {
                cmd: Command {
                    sqe,
                    xfer: Xfer::None,
                    len: 0,
                    src: Src::None,
                },
                blocks: n,
                dsm: None,
            })
        }
        IoType::Unmap => {
            if left == 0 {
                return Plan::Done;
            }
            let n = left.min(MAX_RANGES * MAX_RANGE_BLOCKS);
            let ranges = n.div_ceil(MAX_RANGE_BLOCKS);
            let mut sqe = Sqe::new(op::DATASET_MANAGEMENT, 0, io.nsid);
            if sqe.set_dsm(ranges as usize, dsm::AD).is_err() {
                return Plan::Invalid(libc::EINVAL);
            }
            Plan::Send(Piece {
                cmd: Command {
                    sqe,
                    xfer: Xfer::HostToController,
                    len: ranges as usize * DSM_RANGE_LEN,
                    src: Src::Own,
                },
                blocks: n,
                dsm: Some((slba, n)),
            })
        }
        IoType::Reset => Plan::Invalid(libc::ENOTSUP),
    }
}

/// Writes the DSM ranges covering `nlb` blocks from `slba` into `buf`.
pub fn fill_dsm(buf: &mut [u8], slba: u64, nlb: u64) {
    let mut at = 0;
    let mut lba = slba;
    let mut left = nlb;
    while left > 0 {
        let n = left.min(MAX_RANGE_BLOCKS);
        let r = DsmRange {
            attributes: 0,
            nlb: n as u32,
            slba: lba,
        };
        let Some(d) = buf.get_mut(at..at + DSM_RANGE_LEN) else {
            return;
        };
        d.copy_from_slice(&r.to_bytes());
        at += DSM_RANGE_LEN;
        lba += n;
        left -= n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::command::DsmRanges;

    fn shape(io_type: IoType, offset: u64, blocks: u64) -> IoShape {
        IoShape {
            io_type,
            offset,
            blocks,
            block_size: 512,
            fua: false,
            nsid: 3,
            vwc: true,
        }
    }

    fn send(p: Plan) -> Piece {
        match p {
            Plan::Send(x) => x,
            other => panic!("expected a command, got {other:?}"),
        }
    }

    #[test]
    fn reads_and_writes_split_at_the_transfer_limit() {
        // 128 KiB limit, 512-byte blocks: 256 blocks per command.
        let io = shape(IoType::Read, 1000, 600);
        let p = send(plan(&io, 0, 128 * 1024));
        assert_eq!(p.blocks, 256);
        assert_eq!(p.cmd.sqe.opcode, op::READ);
        assert_eq!(p.cmd.sqe.nsid, 3);
        assert_eq!(p.cmd.sqe.slba(), 1000);
        assert_eq!(p.cmd.sqe.nlb(), 256);
        assert_eq!(p.cmd.len, 128 * 1024);
        assert_eq!(p.cmd.src, Src::Iovs(0));
        assert_eq!(p.cmd.xfer, Xfer::ControllerToHost);
        let p = send(plan(&io, 512, 128 * 1024));
        assert_eq!(p.blocks, 88);
        assert_eq!(p.cmd.sqe.slba(), 1512);
        assert_eq!(p.cmd.src, Src::Iovs(512 * 512));
        assert_eq!(plan(&io, 600, 128 * 1024), Plan::Done);

        let mut w = shape(IoType::Write, 0, 8);
        w.fua = true;
        let p = send(plan(&w, 0, 1 << 20));
        assert!(p.cmd.sqe.fua());
        assert_eq!(p.cmd.sqe.opcode, op::WRITE);
        assert_eq!(p.cmd.xfer, Xfer::HostToController);
        // NLB is 16 bits whatever the transfer limit.
        let big = shape(IoType::Write, 0, 1 << 20);
        assert_eq!(send(plan(&big, 0, u64::MAX)).blocks, MAX_NLB);
    }

    #[test]
    fn flush_write_zeroes_unmap() {
        let mut f = shape(IoType::Flush, 0, 0);
        let p = send(plan(&f, 0, 4096));
        assert_eq!(p.cmd.sqe.opcode, op::FLUSH);
        assert_eq!(p.cmd.len, 0);
        f.vwc = false;
        assert_eq!(plan(&f, 0, 4096), Plan::Done);

        let z = shape(IoType::WriteZeroes, 10, 70_000);
        let p = send(plan(&z, 0, 4096));
        assert_eq!((p.blocks, p.cmd.sqe.nlb()), (65536, 65536));
        let p = send(plan(&z, 65536, 4096));
        assert_eq!((p.blocks, p.cmd.sqe.slba()), (70_000 - 65536, 10 + 65536));

        let u = shape(IoType::Unmap, 5, (1 << 33) + 7);
        let p = send(plan(&u, 0, 4096));
        assert_eq!(p.cmd.sqe.opcode, op::DATASET_MANAGEMENT);
        assert_eq!(p.cmd.sqe.dsm_nr(), 3);
        assert!(p.cmd.sqe.dsm_deallocate());
        assert_eq!(p.cmd.len, 48);
        assert_eq!(p.cmd.src, Src::Own);
        assert_eq!(p.dsm, Some((5, (1 << 33) + 7)));
        let mut buf = [0u8; OWN_LEN];
        fill_dsm(&mut buf, 5, (1 << 33) + 7);
        let ranges: Vec<DsmRange> = DsmRanges::new(&buf[..48], 3).unwrap().collect();
        assert_eq!(ranges[0].slba, 5);
        assert_eq!(ranges[0].nlb, u32::MAX);
        assert_eq!(ranges[1].slba, 5 + u64::from(u32::MAX));
        assert_eq!(
            ranges[2].nlb,
            ((1u64 << 33) + 7 - 2 * u64::from(u32::MAX)) as u32
        );
        assert_eq!(
            ranges.iter().map(|r| u64::from(r.nlb)).sum::<u64>(),
            (1 << 33) + 7
        );
        assert_eq!(
            plan(&shape(IoType::Reset, 0, 0), 0, 1),
            Plan::Invalid(libc::ENOTSUP)
        );
    }
}
