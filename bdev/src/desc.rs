//! Descriptors: an opener's handle on a bdev (read-only or read-write), the exclusive write claim a
//! vbdev takes on its base, and delivery of hot-remove events. Closing (or dropping) the descriptor
//! lets a removal in progress finish.

use crate::bdev::{Bdev, BdevEvent, DescEntry};
use crate::channel::BdevChannel;
use crate::error::BdevError;
use poller::Thread;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

static NEXT_DESC_ID: AtomicU64 = AtomicU64::new(1);

/// An open bdev. `Send + Sync`, so a vbdev can keep its base descriptor in its shared state.
pub struct BdevDesc {
    bdev: Bdev,
    id: u64,
    write: bool,
}

impl BdevDesc {
    /// Opens `name` (name, alias or UUID). `event` runs on the opening thread when the bdev is being
    /// removed; the holder must then close the descriptor.
    pub fn open(
        name: &str,
        write: bool,
        event: impl Fn(BdevEvent) + Send + Sync + 'static,
    ) -> Result<BdevDesc, BdevError> {
        let bdev = Bdev::lookup(name).ok_or_else(|| BdevError::NoSuchDevice(name.to_string()))?;
        let id = NEXT_DESC_ID.fetch_add(1, Ordering::Relaxed);
        {
            let mut st = bdev.state();
            if st.removing {
                return Err(BdevError::Removing(name.to_string()));
            }
            if write && let Some((module, _)) = &st.claim {
                return Err(BdevError::Claimed {
                    bdev: bdev.name().to_string(),
                    module: module.clone(),
                });
            }
            st.descs.push(DescEntry {
                id,
                write,
                thread: Thread::current_handle(),
                event: Arc::new(event),
            });
        }
        Ok(BdevDesc { bdev, id, write })
    }

    pub fn bdev(&self) -> &Bdev {
        &self.bdev
    }

    pub fn is_writable(&self) -> bool {
        self.write
    }

    /// Takes the exclusive write claim for `module`: no other descriptor may write while it holds.
    pub fn claim(&self, module: &str) -> Result<(), BdevError> {
        let mut st = self.bdev.state();
        let other_writer = st.descs.iter().any(|d| d.write && d.id != self.id);
        match &st.claim {
            Some((m, _)) => Err(BdevError::Claimed {
                bdev: self.bdev.name().to_string(),
                module: m.clone(),
            }),
            None if other_writer => Err(BdevError::Claimed {
                bdev: self.bdev.name().to_string(),
                module: "another writer".into(),
            }),
            None => {
                st.claim = Some((module.to_string(), self.id));
                Ok(())
            }
        }
    }

    /// The calling thread's channel for I/O through this descriptor.
    pub fn get_io_channel(&self) -> Result<BdevChannel, BdevError> {
        let ch = self
            .bdev
            .0
            .io_device
            .get_channel()
            .map_err(|errno| match errno {
                libc::ENXIO => BdevError::NoThread,
                e => BdevError::io(
                    e,
                    format!("cannot create a channel for {}", self.bdev.name()),
                ),
            })?;
        ch.thread.watch(ch.rc());
        Ok(BdevChannel {
            ch,
            writable: self.write,
        })
    }

    /// Closes the descriptor (same as dropping it).
    pub fn close(self) {}
}

impl Drop for BdevDesc {
    fn drop(&mut self) {
        let finish = {
            let mut st = self.bdev.state();
            st.descs.retain(|d| d.id != self.id);
            if st.claim.as_ref().is_some_and(|(_, id)| *id == self.id) {
                st.claim = None;
            }
            st.removing && st.descs.is_empty()
        };
        if finish {
            self.bdev.finish_unregister();
        }
    }
}
