//! The pmem bdev: a block device over persistent memory (a DAX file, an emulated pmem file, or a
//! `Pmem` handed in by code such as a test's crash-simulating double).
//!
//! Reads copy out of the mapping. Writes copy in with non-temporal stores and fence before they
//! complete, so a completed write is durable and the bdev needs no FLUSH — except in msync mode,
//! where the mapping is a plain file that only msync makes durable: that mode advertises a
//! volatile write cache, FLUSH runs msync and FUA writes run it too.
//!
//! The pcache cache bdev stacks on a pmem bdev but uses the mapping itself, not I/O:
//! [`pmem_of`] hands it out.

pub mod rpc;

use crate::iov::{self, IoVec};
use crate::{Bdev, BdevChannelOps, BdevError, BdevIo, BdevOps, BdevProps, IoType};
use ::pmem::{FileLock, MapMode, Pmem, PmemError, PmemFile, PmemKind};
use rpc::{PmemCreateParams, PmemMode};
use serde_json::{Value, json};
use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

pub const MODULE: &str = "pmem";
const PRODUCT_NAME: &str = "pmem bdev";

/// Bytes a channel copies at a time from a device that has no pointer to read through.
const BOUNCE: usize = 64 * 1024;

/// Source of write_zeroes and unmap data.
static ZEROES: [u8; 4096] = [0; 4096];

struct PmemDisk {
    name: String,
    pmem: Arc<dyn Pmem>,
    block_size: u32,
    num_blocks: u64,
    uuid: Uuid,
    /// None for a bdev built by `create_with` (no file, so no RPC recreates it).
    file: Option<String>,
    mode: PmemMode,
    /// The file's exclusive lock, held from create to delete (`destruct`), even if a stacked
    /// module still holds the mapping a moment longer.
    lock: Mutex<Option<FileLock>>,
}

impl PmemDisk {
    /// Whether completed writes still need a sync to be durable.
    fn needs_sync(&self) -> bool {
        self.pmem.kind() == PmemKind::Msync
    }
}

struct PmemChannel {
    disk: Arc<PmemDisk>,
    /// Staging for reads from a device without a pointer (the crash double); empty otherwise.
    bounce: RefCell<Vec<u8>>,
    segs: RefCell<Vec<IoVec>>,
}

impl PmemChannel {
    fn execute(&self, io: &BdevIo) -> Result<(), PmemError> {
        let (off, len) = io.byte_range();
        let pmem = &*self.disk.pmem;
        match io.io_type() {
            IoType::Read => self.read(io, off, len),
            IoType::Write => {
                let mut pos = off;
                let mut res = Ok(());
                iov::for_each_slice(io.iovs(), |s| {
                    if res.is_ok() {
                        res = pmem.write_nt(pos, s);
                        pos += s.len() as u64;
                    }
                });
                res?;
                pmem.fence();
                if io.flags().fua && self.disk.needs_sync() {
                    pmem.sync()?;
                }
                Ok(())
            }
            IoType::Unmap | IoType::WriteZeroes => {
                let mut done = 0;
                while done < len {
                    let n = (len - done).min(ZEROES.len() as u64);
                    pmem.write_nt(off + done, &ZEROES[..n as usize])?;
                    done += n;
                }
                pmem.fence();
                Ok(())
            }
            IoType::Flush => {
                if self.disk.needs_sync() {
                    pmem.sync()?;
                }
                Ok(())
            }
            IoType::Reset => Ok(()),
        }
    }

    fn read(&self, io: &BdevIo, off: u64, len: u64) -> Result<(), PmemError> {
        let pmem = &*self.disk.pmem;
        let size = pmem.len();
        if off.checked_add(len).is_none_or(|end| end > size) {
            return Err(PmemError::OutOfRange { off, len, size });
        }
        if let Some(base) = pmem.as_ptr() {
            // SAFETY: `base` maps `size` bytes that live as long as `pmem`, and off+len <= size
            // (checked above, so it also fits in usize). The segments are the caller's, valid and
            // exclusive for the I/O, and never inside the mapping.
            unsafe { iov::copy_ptr_to_iovs(io.iovs(), base.add(off as usize), len as usize) };
            return Ok(());
        }
        let mut bounce = self.bounce.borrow_mut();
        let mut segs = self.segs.borrow_mut();
        let mut done = 0;
        while done < len {
            let n = (len - done).min(bounce.len() as u64) as usize;
            pmem.read(off + done, &mut bounce[..n])?;
            segs.clear();
            iov::slice_into(io.iovs(), done as usize, n, &mut segs);
            iov::copy_to_iovs(&segs, &bounce[..n]);
            done += n as u64;
        }
        Ok(())
    }
}

impl BdevChannelOps for PmemChannel {
    fn submit_request(&self, io: BdevIo) {
        match self.execute(&io) {
            Ok(()) => io.complete_ok(),
            Err(e) => {
                tracing::error!("pmem bdev {}: {e}", self.disk.name);
                io.fail(e.errno())
            }
        }
    }
}

struct PmemOps(Arc<PmemDisk>);

impl BdevOps for PmemOps {
    fn io_type_supported(&self, _t: IoType) -> bool {
        true
    }

    fn create_channel(&self) -> Result<Rc<dyn BdevChannelOps>, BdevError> {
        let bounce = if self.0.pmem.as_ptr().is_some() {
            Vec::new()
        } else {
            vec![0; BOUNCE]
        };
        Ok(Rc::new(PmemChannel {
            disk: self.0.clone(),
            bounce: RefCell::new(bounce),
            segs: RefCell::new(Vec::with_capacity(16)),
        }))
    }

    fn dump_info_json(&self) -> Value {
        let d = &self.0;
        json!({"pmem": {
            "pmem_file": d.file,
            "mode": d.mode,
            "kind": d.pmem.kind().to_string(),
        }})
    }

    fn destruct(&self) {
        let mut lock = self.0.lock.lock().unwrap_or_else(|p| p.into_inner());
        drop(lock.take());
    }

    fn write_config_json(&self) -> Option<Value> {
        let d = &self.0;
        let mut params = json!({
            "name": d.name,
            "pmem_file": d.file.as_ref()?,
            "block_size": d.block_size,
            "num_blocks": d.num_blocks,
            "uuid": d.uuid.to_string(),
        });
        if d.mode != PmemMode::Auto
            && let Some(p) = params.as_object_mut()
        {
            p.insert("mode".into(), json!(d.mode));
        }
        Some(json!({"method": "bdev_pmem_create", "params": params}))
    }
}

/// The mapping under a pmem bdev, for a module that stacks on it and works on the memory itself.
/// None for other modules' bdevs and for a bdev being (or already) unregistered.
pub fn pmem_of(bdev: &Bdev) -> Option<Arc<dyn Pmem>> {
    if bdev.is_removing() {
        return None;
    }
    bdev.ops_as::<PmemOps>().map(|ops| ops.0.pmem.clone())
}

/// Creates a pmem bdev over a file (`bdev_pmem_create`), creating the file when it is missing.
pub fn create(params: PmemCreateParams) -> Result<Bdev, BdevError> {
    check_name(&params.name)?;
    let file = params.pmem_file.as_str();
    let existing = match std::fs::metadata(file) {
        Ok(m) if m.is_file() => m.len(),
        Ok(_) => {
            return Err(BdevError::invalid(format!(
                "pmem_file {file} is not a regular file"
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => {
            return Err(BdevError::io(
                e.raw_os_error().unwrap_or(libc::EIO),
                format!("cannot stat {file}: {e}"),
            ));
        }
    };
    let (block_size, num_blocks) = geometry(file, existing, params.block_size, params.num_blocks)?;
    let size = u64::from(block_size) * num_blocks;
    let map_mode = match params.mode {
        PmemMode::Auto => MapMode::Auto,
        PmemMode::Emulated => MapMode::Emulated,
        PmemMode::Msync => MapMode::Msync,
    };
    // A file another process (or another bdev here) has open is EBUSY, naming it and its holder.
    let mut map = PmemFile::open(Path::new(file), size, map_mode)
        .map_err(|e| BdevError::io(e.errno(), e.to_string()))?;
    let lock = map.take_lock();
    let pmem: Arc<dyn Pmem> = Arc::new(map);
    log_kind(&params.name, file, pmem.kind());
    let disk = PmemDisk {
        name: params.name,
        pmem,
        block_size,
        num_blocks,
        uuid: params.uuid.unwrap_or_else(Uuid::new_v4),
        file: Some(params.pmem_file),
        mode: params.mode,
        lock: Mutex::new(lock),
    };
    register(disk)
}

/// Creates a pmem bdev over any `Pmem` (a test's `CrashPmem`, anonymous memory), using all of it
/// in whole blocks. It writes no configuration: nothing could recreate it by RPC.
pub fn create_with(name: &str, pmem: Arc<dyn Pmem>, block_size: u32) -> Result<Bdev, BdevError> {
    check_name(name)?;
    check_block_size(block_size)?;
    let num_blocks = pmem.len() / u64::from(block_size);
    if num_blocks == 0 {
        return Err(BdevError::invalid(format!(
            "a {}-byte pmem device holds no block of {block_size} bytes",
            pmem.len()
        )));
    }
    log_kind(name, "(memory)", pmem.kind());
    register(PmemDisk {
        name: name.to_string(),
        pmem,
        block_size,
        num_blocks,
        uuid: Uuid::new_v4(),
        file: None,
        mode: PmemMode::Auto,
        lock: Mutex::new(None),
    })
}

/// Unregisters the pmem bdev `name`; `done` runs once it is gone. The file stays.
pub fn delete(name: &str, done: impl FnOnce(Result<(), BdevError>) + Send + 'static) {
    Bdev::unregister_module_bdev(MODULE, name, done)
}

fn register(disk: PmemDisk) -> Result<Bdev, BdevError> {
    let mut props = BdevProps::new(
        &disk.name,
        MODULE,
        PRODUCT_NAME,
        disk.block_size,
        disk.num_blocks,
    );
    props.uuid = Some(disk.uuid);
    props.write_cache = disk.needs_sync();
    Bdev::register(props, Arc::new(PmemOps(Arc::new(disk))))
}

fn check_name(name: &str) -> Result<(), BdevError> {
    if name.is_empty() {
        return Err(BdevError::invalid("name must not be empty"));
    }
    if Bdev::lookup(name).is_some() {
        return Err(BdevError::Exists(name.to_string()));
    }
    Ok(())
}

fn check_block_size(bs: u32) -> Result<(), BdevError> {
    if !bs.is_power_of_two() || !(512..=65536).contains(&bs) {
        return Err(BdevError::invalid(format!(
            "block_size {bs} is not a power of two in 512..65536"
        )));
    }
    Ok(())
}

/// Block size and count for a file of `existing` bytes (0: missing or empty, to be created).
fn geometry(
    file: &str,
    existing: u64,
    block_size: Option<u32>,
    num_blocks: Option<u64>,
) -> Result<(u32, u64), BdevError> {
    if existing == 0 {
        let (Some(bs), Some(nb)) = (block_size, num_blocks) else {
            return Err(BdevError::invalid(format!(
                "pmem_file {file} does not exist or is empty: block_size and num_blocks are \
                 required to create it"
            )));
        };
        check_block_size(bs)?;
        if nb == 0 || nb.checked_mul(u64::from(bs)).is_none() {
            return Err(BdevError::invalid(format!(
                "num_blocks {nb} of {bs} bytes is not a valid size"
            )));
        }
        return Ok((bs, nb));
    }
    let bs = block_size.unwrap_or(4096);
    check_block_size(bs)?;
    match num_blocks {
        Some(nb) => {
            let wanted = nb.checked_mul(u64::from(bs));
            if wanted != Some(existing) {
                let wanted = wanted.map_or_else(|| "too many".to_string(), |w| w.to_string());
                return Err(BdevError::invalid(format!(
                    "pmem_file {file} is {existing} bytes but num_blocks {nb} * block_size {bs} \
                     is {wanted} bytes"
                )));
            }
            Ok((bs, nb))
        }
        None if !existing.is_multiple_of(u64::from(bs)) => Err(BdevError::invalid(format!(
            "pmem_file {file} is {existing} bytes, not a multiple of block_size {bs}"
        ))),
        None => Ok((bs, existing / u64::from(bs))),
    }
}

fn log_kind(name: &str, file: &str, kind: PmemKind) {
    match kind {
        PmemKind::Dax => tracing::info!(
            "pmem bdev {name}: {file} is real pmem (DAX, MAP_SYNC); completed writes survive power loss"
        ),
        PmemKind::Emulated => tracing::warn!(
            "pmem bdev {name}: {file} is emulated pmem; completed writes survive a process crash \
             but NOT a power cut"
        ),
        PmemKind::Msync => tracing::info!(
            "pmem bdev {name}: {file} is made durable by msync at FLUSH (volatile write cache)"
        ),
        PmemKind::CrashSim => {
            tracing::info!("pmem bdev {name}: crash-simulating test double")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_in_use_is_busy_until_its_bdev_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pmem");
        let file = file.to_str().unwrap();
        let params = |name| PmemCreateParams {
            mode: PmemMode::Emulated,
            ..PmemCreateParams::new(name, file, 4096, 16)
        };
        let first = create(params("LockPmem0")).unwrap();
        let e = create(params("LockPmem1")).unwrap_err();
        let msg = format!(
            "{file} is in use: this process (pid {})",
            std::process::id()
        );
        assert_eq!(e.errno(), libc::EBUSY, "{e}");
        assert!(e.to_string().contains(&msg), "{e}");
        assert!(Bdev::lookup("LockPmem1").is_none());
        // A stacked module may still hold the mapping after the delete; the file is free anyway.
        let mapping = pmem_of(&first).unwrap();
        // No reactor thread here: with no descriptor open the unregister completes at once.
        first.unregister(|r| r.unwrap());
        assert!(Bdev::lookup("LockPmem0").is_none());
        let again = create(params("LockPmem1")).unwrap();
        assert_eq!(again.num_blocks(), 16);
        drop(mapping);
        again.unregister(|r| r.unwrap());
    }
}
