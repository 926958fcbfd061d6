//! io_device / io_channel: per-thread context for a shared device.
//!
//! A device (a bdev, a cache instance, a transport) is shared by all threads, but the state used to
//! submit I/O to it (rings, queues, counters) must be per thread so the data path takes no lock.
//! `IoDevice<T>` creates a `T` on a thread the first time that thread asks for a channel, and all
//! later requests on that thread share it; the `T` is dropped (its destroy step) when the last
//! `IoChannel<T>` on that thread is dropped.

use crate::thread::{Thread, ThreadHandle};
use std::any::Any;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

static NEXT_DEVICE_ID: AtomicU64 = AtomicU64::new(1);

type VisitFn<T> = dyn Fn(&IoChannel<T>) + Send + Sync;
type CreateFn<T> = dyn Fn() -> Result<T, i32> + Send + Sync;

/// A device that hands out per-thread channels of type `T`.
pub struct IoDevice<T> {
    id: u64,
    name: Arc<str>,
    create: Arc<CreateFn<T>>,
}

impl<T> Clone for IoDevice<T> {
    fn clone(&self) -> Self {
        IoDevice {
            id: self.id,
            name: self.name.clone(),
            create: self.create.clone(),
        }
    }
}

/// A thread's reference to its channel of a device. Cheap to clone; `!Send`.
pub struct IoChannel<T> {
    inner: Rc<T>,
    device_id: u64,
}

impl<T> Clone for IoChannel<T> {
    fn clone(&self) -> Self {
        IoChannel {
            inner: self.inner.clone(),
            device_id: self.device_id,
        }
    }
}

impl<T> std::ops::Deref for IoChannel<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T> IoChannel<T> {
    pub fn device_id(&self) -> u64 {
        self.device_id
    }

    /// The shared pointer, for contexts that must keep the channel alive.
    pub fn rc(&self) -> &Rc<T> {
        &self.inner
    }
}

impl<T: 'static> IoDevice<T> {
    /// Registers a device; `create` builds a thread's channel context on that thread (an errno on
    /// failure).
    pub fn new(name: &str, create: impl Fn() -> Result<T, i32> + Send + Sync + 'static) -> Self {
        IoDevice {
            id: NEXT_DEVICE_ID.fetch_add(1, Ordering::Relaxed),
            name: name.into(),
            create: Arc::new(create),
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current thread's channel, created on first use. Fails with ENXIO off any thread.
    pub fn get_channel(&self) -> Result<IoChannel<T>, i32> {
        let thread = Thread::current().ok_or(libc::ENXIO)?;
        self.get_channel_on(&thread)
    }

    fn get_channel_on(&self, thread: &Thread) -> Result<IoChannel<T>, i32> {
        if let Some(ch) = self.existing_channel(thread) {
            return Ok(ch);
        }
        let ctx = Rc::new((self.create)()?);
        let erased: Rc<dyn Any> = ctx.clone();
        let mut channels = thread.inner.channels.borrow_mut();
        channels.retain(|_, w| w.strong_count() > 0);
        channels.insert(self.id, Rc::downgrade(&erased));
        Ok(IoChannel {
            inner: ctx,
            device_id: self.id,
        })
    }

    /// The current thread's channel if one exists (never creates one).
    pub fn existing_channel(&self, thread: &Thread) -> Option<IoChannel<T>> {
        let weak = thread.inner.channels.borrow().get(&self.id)?.clone();
        let inner = weak.upgrade()?.downcast::<T>().ok()?;
        Some(IoChannel {
            inner,
            device_id: self.id,
        })
    }

    /// Calls `f` on every thread of the caller's group that holds a channel of this device, one
    /// thread after another, then `done` on the calling thread (SPDK's for_each_channel).
    pub fn for_each_channel(
        &self,
        f: impl Fn(&IoChannel<T>) + Send + Sync + 'static,
        done: impl FnOnce() + Send + 'static,
    ) {
        let Some(caller) = Thread::current() else {
            return;
        };
        let walk = Arc::new(Walk {
            device: self.clone(),
            threads: caller.group().threads(),
            f: Box::new(f),
            caller: caller.handle(),
        });
        visit(walk, 0, Box::new(done));
    }
}

struct Walk<T> {
    device: IoDevice<T>,
    threads: Vec<ThreadHandle>,
    f: Box<VisitFn<T>>,
    caller: ThreadHandle,
}

fn visit<T: 'static>(walk: Arc<Walk<T>>, i: usize, done: Box<dyn FnOnce() + Send>) {
    match walk.threads.get(i).cloned() {
        Some(t) if !t.has_exited() => t.send_msg(move || {
            if let Some(cur) = Thread::current()
                && let Some(ch) = walk.device.existing_channel(&cur)
            {
                (walk.f)(&ch);
            }
            visit(walk, i + 1, done);
        }),
        Some(_) => visit(walk, i + 1, done),
        None => walk.caller.clone().send_msg(done),
    }
}
