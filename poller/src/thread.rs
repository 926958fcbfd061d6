//! Lightweight threads: the unit of ownership.
//!
//! A `Thread` runs on exactly one reactor (or on a test harness) and owns everything created on it:
//! pollers, I/O channels and per-thread state. Other threads reach it only through its
//! `ThreadHandle`, by message. A message is a closure (control path) or a function pointer plus a
//! word (data path: no allocation). Messages travel over a lock-free queue.

use crate::poller::{PollStatus, PollerInner};
use crossbeam_queue::SegQueue;
use std::any::{Any, TypeId};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// At most this many messages are run per poll, so pollers are not starved by a message flood.
const MSG_BATCH: usize = 256;

static NEXT_THREAD_ID: AtomicU64 = AtomicU64::new(1);

pub(crate) enum Msg {
    Closure(Box<dyn FnOnce() + Send>),
    Raw(fn(usize), usize),
}

/// Wakes the reactor that runs a thread when it has backed off to sleep.
#[derive(Default)]
pub struct Waker {
    pub(crate) sleeping: AtomicBool,
    pub(crate) os_thread: Mutex<Option<std::thread::Thread>>,
}

impl Waker {
    pub(crate) fn wake(&self) {
        if self.sleeping.load(Ordering::SeqCst)
            && let Ok(t) = self.os_thread.lock()
            && let Some(t) = t.as_ref()
        {
            t.unpark();
        }
    }
}

/// Counters a thread publishes for `thread_get_stats`.
#[derive(Default)]
pub struct ThreadCounters {
    pub busy_ticks: AtomicU64,
    pub idle_ticks: AtomicU64,
    pub active_pollers: AtomicU64,
    pub timed_pollers: AtomicU64,
    pub paused_pollers: AtomicU64,
}

/// The `Send` part of a thread: its identity, mailbox and counters.
pub(crate) struct ThreadShared {
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) core: u32,
    pub(crate) queue: SegQueue<Msg>,
    pub(crate) waker: Arc<Waker>,
    pub(crate) counters: ThreadCounters,
    pub(crate) exited: AtomicBool,
}

/// A set of threads that see each other (one application's reactors, or one test harness);
/// `for_each_channel` walks the threads of the caller's group.
#[derive(Default)]
pub struct Group {
    pub(crate) threads: Mutex<Vec<ThreadHandle>>,
}

impl Group {
    pub fn new() -> Arc<Group> {
        Arc::new(Group::default())
    }

    /// Handles of the live threads, in creation order.
    pub fn threads(&self) -> Vec<ThreadHandle> {
        self.threads.lock().map(|t| t.clone()).unwrap_or_default()
    }

    pub(crate) fn add(&self, h: &ThreadHandle) {
        if let Ok(mut t) = self.threads.lock() {
            t.push(h.clone());
        }
    }

    fn remove(&self, id: u64) {
        if let Ok(mut t) = self.threads.lock() {
            t.retain(|h| h.id() != id);
        }
    }
}

/// A `Send + Sync` reference to a thread, used to send it messages.
#[derive(Clone)]
pub struct ThreadHandle {
    pub(crate) shared: Arc<ThreadShared>,
}

impl ThreadHandle {
    /// A handle whose thread is not built yet: messages queue until its reactor attaches it.
    pub(crate) fn new_detached(name: &str, core: u32, waker: Arc<Waker>) -> ThreadHandle {
        ThreadHandle {
            shared: Arc::new(ThreadShared {
                id: NEXT_THREAD_ID.fetch_add(1, Ordering::Relaxed),
                name: name.to_string(),
                core,
                queue: SegQueue::new(),
                waker,
                counters: ThreadCounters::default(),
                exited: AtomicBool::new(false),
            }),
        }
    }

    pub fn id(&self) -> u64 {
        self.shared.id
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The core of the reactor this thread runs on.
    pub fn core(&self) -> u32 {
        self.shared.core
    }

    pub fn counters(&self) -> &ThreadCounters {
        &self.shared.counters
    }

    /// Runs `f` on the thread. Messages from one sender arrive in order.
    pub fn send_msg(&self, f: impl FnOnce() + Send + 'static) {
        self.push(Msg::Closure(Box::new(f)));
    }

    /// Runs `f(arg)` on the thread without allocating (for the data path).
    pub fn send_raw(&self, f: fn(usize), arg: usize) {
        self.push(Msg::Raw(f, arg));
    }

    fn push(&self, m: Msg) {
        self.shared.queue.push(m);
        self.shared.waker.wake();
    }

    pub fn has_exited(&self) -> bool {
        self.shared.exited.load(Ordering::Acquire)
    }
}

impl std::fmt::Debug for ThreadHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Thread({}, {})", self.shared.id, self.shared.name)
    }
}

pub(crate) struct ThreadInner {
    pub(crate) shared: Arc<ThreadShared>,
    pub(crate) group: Arc<Group>,
    pub(crate) pollers: RefCell<Vec<Rc<PollerInner>>>,
    pub(crate) pollers_removed: Cell<bool>,
    /// The tick count at the start of the current poll; timed pollers schedule from it.
    pub(crate) now: Cell<u64>,
    /// Per-thread state of other crates, keyed by type.
    locals: RefCell<HashMap<TypeId, Rc<dyn Any>>>,
    /// I/O channels alive on this thread, by io_device id.
    pub(crate) channels: RefCell<HashMap<u64, Weak<dyn Any>>>,
    exit_requested: Cell<bool>,
}

/// A lightweight thread, owned by the reactor (or harness) that polls it. `!Send` by design.
#[derive(Clone)]
pub struct Thread {
    pub(crate) inner: Rc<ThreadInner>,
}

thread_local! {
    static CURRENT: RefCell<Option<Thread>> = const { RefCell::new(None) };
}

impl Thread {
    /// Creates a thread in `group`; it runs when its owner polls it.
    pub fn new(name: &str, core: u32, group: &Arc<Group>, waker: Arc<Waker>) -> Thread {
        let handle = ThreadHandle::new_detached(name, core, waker);
        group.add(&handle);
        Thread::attach(handle, group)
    }

    /// Builds the thread for a handle made by `ThreadHandle::new_detached` (on the OS thread that
    /// will poll it).
    pub(crate) fn attach(handle: ThreadHandle, group: &Arc<Group>) -> Thread {
        Thread {
            inner: Rc::new(ThreadInner {
                shared: handle.shared,
                group: group.clone(),
                pollers: RefCell::new(Vec::new()),
                pollers_removed: Cell::new(false),
                now: Cell::new(crate::time::ticks()),
                locals: RefCell::new(HashMap::new()),
                channels: RefCell::new(HashMap::new()),
                exit_requested: Cell::new(false),
            }),
        }
    }

    /// The thread being polled on this OS thread, if any.
    pub fn current() -> Option<Thread> {
        CURRENT.with(|c| c.borrow().clone())
    }

    /// Handle of the current thread. Panics only on a programming error (called off any thread).
    pub fn current_handle() -> Option<ThreadHandle> {
        CURRENT.with(|c| c.borrow().as_ref().map(|t| t.handle()))
    }

    pub fn handle(&self) -> ThreadHandle {
        ThreadHandle {
            shared: self.inner.shared.clone(),
        }
    }

    pub fn id(&self) -> u64 {
        self.inner.shared.id
    }

    pub fn name(&self) -> &str {
        &self.inner.shared.name
    }

    pub fn group(&self) -> &Arc<Group> {
        &self.inner.group
    }

    /// Tick count at the start of the current poll.
    pub fn now(&self) -> u64 {
        self.inner.now.get()
    }

    pub(crate) fn set_now(&self, now: u64) {
        self.inner.now.set(now);
    }

    /// Runs `f` with this thread as the current one (used by owners and by the test harness).
    pub fn enter<R>(&self, f: impl FnOnce() -> R) -> R {
        let prev = CURRENT.with(|c| c.replace(Some(self.clone())));
        struct Restore(Option<Thread>);
        impl Drop for Restore {
            fn drop(&mut self) {
                let prev = self.0.take();
                CURRENT.with(|c| *c.borrow_mut() = prev);
            }
        }
        let _restore = Restore(prev);
        f()
    }

    pub(crate) fn exit_requested(&self) -> bool {
        self.inner.exit_requested.get()
    }

    pub(crate) fn has_pending_messages(&self) -> bool {
        !self.inner.shared.queue.is_empty()
    }

    /// Per-thread state of type `T`, created with `Default` on first use.
    pub fn local<T: Default + 'static>(&self) -> Rc<T> {
        let key = TypeId::of::<T>();
        if let Some(v) = self.inner.locals.borrow().get(&key)
            && let Ok(t) = v.clone().downcast::<T>()
        {
            return t;
        }
        let v = Rc::new(T::default());
        self.inner.locals.borrow_mut().insert(key, v.clone());
        v
    }

    /// Asks the thread to exit once it has no pollers and no channels left.
    pub fn request_exit(&self) {
        self.inner.exit_requested.set(true);
    }

    /// True once exit was requested and nothing is left on the thread.
    pub fn is_exited(&self) -> bool {
        let done = self.inner.exit_requested.get()
            && self.inner.shared.queue.is_empty()
            && self
                .inner
                .pollers
                .borrow()
                .iter()
                .all(|p| p.is_unregistered())
            && self
                .inner
                .channels
                .borrow()
                .values()
                .all(|w| w.strong_count() == 0);
        if done {
            self.inner.shared.exited.store(true, Ordering::Release);
            self.inner.group.remove(self.id());
        }
        done
    }

    /// One iteration: run queued messages, then every due poller. Returns whether any work was done.
    pub fn poll(&self, now: u64) -> bool {
        self.enter(|| self.poll_inner(now))
    }

    fn poll_inner(&self, now: u64) -> bool {
        let inner = &self.inner;
        inner.now.set(now);
        let mut busy = false;
        for _ in 0..MSG_BATCH {
            match inner.shared.queue.pop() {
                Some(Msg::Closure(f)) => f(),
                Some(Msg::Raw(f, arg)) => f(arg),
                None => break,
            }
            busy = true;
        }
        let count = inner.pollers.borrow().len();
        for i in 0..count {
            let p = match inner.pollers.borrow().get(i) {
                Some(p) => p.clone(),
                None => break,
            };
            if p.run_if_due(now) == PollStatus::Busy {
                busy = true;
            }
        }
        if inner.pollers_removed.replace(false) {
            let removed: Vec<_> = {
                let mut pollers = inner.pollers.borrow_mut();
                let (gone, kept) = pollers.drain(..).partition(|p| p.is_unregistered());
                *pollers = kept;
                gone
            };
            // Released outside the borrow: dropping a closure may unregister other pollers.
            removed.iter().for_each(|p| p.release());
            self.publish_poller_counts();
        }
        busy
    }

    /// Adds an iteration's duration to the thread's busy or idle time (the reactor measures it, so
    /// the clock is read once per thread per iteration). Only this thread writes its counters, so a
    /// plain load and store is enough.
    pub fn account(&self, busy: bool, ticks: u64) {
        let c = &self.inner.shared.counters;
        let counter = if busy { &c.busy_ticks } else { &c.idle_ticks };
        counter.store(counter.load(Ordering::Relaxed) + ticks, Ordering::Relaxed);
    }

    pub(crate) fn publish_poller_counts(&self) {
        let (mut active, mut timed, mut paused) = (0, 0, 0);
        for p in self.inner.pollers.borrow().iter() {
            if p.is_unregistered() {
                continue;
            }
            if p.is_paused() {
                paused += 1;
            } else if p.period_ticks() > 0 {
                timed += 1;
            } else {
                active += 1;
            }
        }
        let c = &self.inner.shared.counters;
        c.active_pollers.store(active, Ordering::Relaxed);
        c.timed_pollers.store(timed, Ordering::Relaxed);
        c.paused_pollers.store(paused, Ordering::Relaxed);
    }
}

impl Drop for ThreadInner {
    fn drop(&mut self) {
        self.shared.exited.store(true, Ordering::Release);
        self.group.remove(self.shared.id);
    }
}
