//! The malloc bdev: a RAM disk. Reads and writes copy between the caller's buffers and one
//! anonymous mapping shared by every thread.

pub mod rpc;

use crate::iov::{self, DmaBuf};
use crate::{Bdev, BdevChannelOps, BdevError, BdevIo, BdevOps, BdevProps, IoType};
use serde_json::{Value, json};
use std::rc::Rc;
use std::sync::Arc;

pub const MODULE: &str = "malloc";

pub struct MallocBdev {
    params: rpc::MallocCreateParams,
    mem: DiskMem,
    block_size: u64,
}

/// The disk's memory. Every thread's channel copies in and out of it through raw pointers only
/// (never references); overlapping concurrent I/O has no defined result, as on any disk.
struct DiskMem(DmaBuf);

// SAFETY: the memory is only reached through raw-pointer copies made by I/O (see above), so sharing
// the owner between threads creates no aliasing references.
unsafe impl Sync for DiskMem {}

struct MallocChannel(Arc<MallocBdev>);

impl MallocBdev {
    fn range(&self, io: &BdevIo) -> (usize, usize) {
        (
            (io.offset_blocks() * self.block_size) as usize,
            (io.num_blocks() * self.block_size) as usize,
        )
    }
}

impl BdevChannelOps for MallocChannel {
    fn submit_request(&self, io: BdevIo) {
        let disk = &self.0;
        // The bdev layer checked the range against the disk size before submitting.
        let (off, len) = disk.range(&io);
        let base = disk.mem.0.as_mut_ptr();
        match io.io_type() {
            // SAFETY: off+len lies inside the mapping (checked by the layer); the iovecs are valid
            // for the life of the I/O and never alias the disk's memory.
            IoType::Read => unsafe {
                iov::copy_ptr_to_iovs(io.iovs(), base.add(off), len);
            },
            // SAFETY: as above.
            IoType::Write => unsafe {
                iov::copy_iovs_to_ptr(io.iovs(), base.add(off), len);
            },
            // SAFETY: as above.
            IoType::Unmap | IoType::WriteZeroes => unsafe {
                std::ptr::write_bytes(base.add(off), 0, len)
            },
            IoType::Flush | IoType::Reset => {}
        }
        io.complete_ok();
    }
}

/// Each channel keeps an `Arc` of the disk, so the ops object wraps one too.
struct MallocOps(Arc<MallocBdev>);

impl BdevOps for MallocOps {
    fn io_type_supported(&self, _t: IoType) -> bool {
        true
    }

    fn create_channel(&self) -> Result<Rc<dyn BdevChannelOps>, BdevError> {
        Ok(Rc::new(MallocChannel(self.0.clone())))
    }

    fn write_config_json(&self) -> Option<Value> {
        Some(json!({"method": "bdev_malloc_create", "params": self.0.params}))
    }
}

pub fn create(mut params: rpc::MallocCreateParams) -> Result<Bdev, BdevError> {
    params.check()?;
    let name = params.name.clone().unwrap_or_else(next_name);
    let uuid = params.uuid.unwrap_or_else(uuid::Uuid::new_v4);
    params.name = Some(name.clone());
    params.uuid = Some(uuid);
    if Bdev::lookup(&name).is_some() {
        return Err(BdevError::Exists(name));
    }
    let bytes = params.num_blocks * params.block_size as u64;
    let mem = DmaBuf::new_prefaulted(bytes as usize)
        .ok_or_else(|| BdevError::io(libc::ENOMEM, format!("cannot allocate {bytes} bytes")))?;
    let mut props = BdevProps::new(
        &name,
        MODULE,
        "Malloc disk",
        params.block_size,
        params.num_blocks,
    );
    props.uuid = Some(uuid);
    props.optimal_io_boundary = params.optimal_io_boundary;
    props.split_on_optimal_io_boundary = params.optimal_io_boundary != 0;
    props.numa_id = Some(params.numa_id);
    let disk = Arc::new(MallocBdev {
        block_size: params.block_size as u64,
        params,
        mem: DiskMem(mem),
    });
    Bdev::register(props, Arc::new(MallocOps(disk)))
}

fn next_name() -> String {
    (0..)
        .map(|i| format!("Malloc{i}"))
        .find(|n| Bdev::lookup(n).is_none())
        .unwrap_or_default()
}

pub fn delete(name: &str, done: impl FnOnce(Result<(), BdevError>) + Send + 'static) {
    Bdev::unregister_module_bdev(MODULE, name, done)
}
