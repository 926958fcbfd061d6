//! Reactors: one OS thread per core of the mask, pinned, polling its lightweight threads in a loop.
//!
//! The first core's reactor runs on the caller's OS thread and hosts the app thread, where start-up,
//! RPC and shutdown run (as in SPDK). Reactors busy-poll by default; with `idle_backoff` they park
//! after a stretch of idle iterations and wake on any message (or after at most 1 ms, so timed
//! pollers and polled completions still run).

use crate::PollerError;
use crate::cpumask::CpuMask;
use crate::thread::{Group, Thread, ThreadHandle, Waker};
use crate::time::ticks;
use crossbeam_queue::SegQueue;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Idle iterations before an idle reactor parks (when back-off is on).
const IDLE_SPINS: u32 = 2000;
const MAX_PARK: Duration = Duration::from_millis(1);

#[derive(Clone, Debug)]
pub struct ReactorOptions {
    pub cpumask: CpuMask,
    /// Park when idle instead of spinning (for tests sharing two cores).
    pub idle_backoff: bool,
    /// Pin each reactor to its core (off only where affinity is not allowed).
    pub pin: bool,
}

impl Default for ReactorOptions {
    fn default() -> Self {
        ReactorOptions {
            cpumask: CpuMask::single(0),
            idle_backoff: false,
            pin: true,
        }
    }
}

/// What one reactor shares with the rest of the process.
pub struct ReactorShared {
    core: u32,
    waker: Arc<Waker>,
    spawn: SegQueue<ThreadHandle>,
    busy_ticks: AtomicU64,
    idle_ticks: AtomicU64,
    threads: Mutex<Vec<ThreadHandle>>,
}

/// Snapshot of a reactor for `framework_get_reactors`.
#[derive(Clone, Debug)]
pub struct ReactorInfo {
    pub core: u32,
    pub busy_ticks: u64,
    pub idle_ticks: u64,
    pub threads: Vec<ThreadHandle>,
}

struct Runtime {
    reactors: Vec<Arc<ReactorShared>>,
    group: Arc<Group>,
    stop: AtomicBool,
    next: AtomicUsize,
    app_thread: ThreadHandle,
    idle_backoff: bool,
}

static RUNTIME: Mutex<Option<Arc<Runtime>>> = Mutex::new(None);

fn runtime() -> Option<Arc<Runtime>> {
    RUNTIME.lock().ok()?.clone()
}

/// Starts a reactor on every core of the mask, runs `start` on the app thread, and returns when
/// `stop()` is called and every reactor has left its loop.
pub fn run(opts: ReactorOptions, start: impl FnOnce() + Send + 'static) -> Result<(), PollerError> {
    let cores = opts.cpumask.cores().to_vec();
    let reactors: Vec<Arc<ReactorShared>> = cores
        .iter()
        .map(|&core| {
            Arc::new(ReactorShared {
                core,
                waker: Arc::new(Waker::default()),
                spawn: SegQueue::new(),
                busy_ticks: AtomicU64::new(0),
                idle_ticks: AtomicU64::new(0),
                threads: Mutex::new(Vec::new()),
            })
        })
        .collect();
    let group = Group::new();
    let app_thread = ThreadHandle::new_detached("app_thread", cores[0], reactors[0].waker.clone());
    {
        let mut rt = RUNTIME.lock().map_err(|_| PollerError::Poisoned)?;
        if rt.is_some() {
            return Err(PollerError::AlreadyRunning);
        }
        *rt = Some(Arc::new(Runtime {
            reactors: reactors.clone(),
            group: group.clone(),
            stop: AtomicBool::new(false),
            next: AtomicUsize::new(0),
            app_thread: app_thread.clone(),
            idle_backoff: opts.idle_backoff,
        }));
    }
    crate::time::ticks_hz();
    place(&reactors[0], &group, app_thread.clone());
    app_thread.send_msg(start);

    let mut joins = Vec::new();
    for r in reactors.iter().skip(1).cloned() {
        let (group, opts) = (group.clone(), opts.clone());
        let join = std::thread::Builder::new()
            .name(format!("reactor_{}", r.core))
            .spawn(move || reactor_loop(&r, &group, &opts))
            .map_err(|e| PollerError::Spawn(e.to_string()))?;
        joins.push(join);
    }
    let first = reactor_loop(&reactors[0], &group, &opts);
    for j in joins {
        let _ = j.join();
    }
    if let Ok(mut rt) = RUNTIME.lock() {
        *rt = None;
    }
    first
}

fn place(r: &Arc<ReactorShared>, group: &Arc<Group>, h: ThreadHandle) {
    group.add(&h);
    if let Ok(mut t) = r.threads.lock() {
        t.push(h.clone());
    }
    r.spawn.push(h);
    r.waker.wake();
}

fn reactor_loop(
    r: &ReactorShared,
    group: &Arc<Group>,
    opts: &ReactorOptions,
) -> Result<(), PollerError> {
    if opts.pin {
        pin_to_core(r.core)?;
    }
    if let Ok(mut t) = r.waker.os_thread.lock() {
        *t = Some(std::thread::current());
    }
    let rt = runtime().ok_or(PollerError::NotRunning)?;
    let mut threads: Vec<Thread> = Vec::new();
    let mut idle_iters = 0u32;
    let mut now = ticks();
    loop {
        while let Some(h) = r.spawn.pop() {
            threads.push(Thread::attach(h, group));
        }
        // One clock read per thread per iteration: the end of one thread's turn starts the next.
        let start = now;
        let mut busy = false;
        for t in &threads {
            let thread_busy = t.poll(now);
            let end = ticks();
            t.account(thread_busy, end.saturating_sub(now));
            busy |= thread_busy;
            now = end;
        }
        if threads.iter().any(|t| t.exit_requested()) {
            threads.retain(|t| !t.is_exited());
            if let Ok(mut hs) = r.threads.lock() {
                hs.retain(|h| !h.has_exited());
            }
        }
        if threads.is_empty() {
            now = ticks();
        }
        let counter = if busy { &r.busy_ticks } else { &r.idle_ticks };
        counter.store(
            counter.load(Ordering::Relaxed) + now.saturating_sub(start),
            Ordering::Relaxed,
        );
        if rt.stop.load(Ordering::Relaxed) {
            break;
        }
        if busy || !opts.idle_backoff {
            idle_iters = 0;
            continue;
        }
        idle_iters += 1;
        if idle_iters >= IDLE_SPINS {
            r.waker.sleeping.store(true, Ordering::SeqCst);
            if r.spawn.is_empty() && !threads.iter().any(|t| t.has_pending_messages()) {
                std::thread::park_timeout(MAX_PARK);
            }
            r.waker.sleeping.store(false, Ordering::SeqCst);
            // Time asleep is idle time; the next iteration starts from now.
            let woke = ticks();
            let idle = r.idle_ticks.load(Ordering::Relaxed) + woke.saturating_sub(now);
            r.idle_ticks.store(idle, Ordering::Relaxed);
            now = woke;
        }
    }
    // Threads (and their pollers and channels) are dropped here, on their own OS thread.
    drop(threads);
    Ok(())
}

fn pin_to_core(core: u32) -> Result<(), PollerError> {
    let mut set = nix::sched::CpuSet::new();
    set.set(core as usize)
        .map_err(|e| PollerError::Affinity(core, e.to_string()))?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .map_err(|e| PollerError::Affinity(core, e.to_string()))
}

/// Creates a lightweight thread on the reactor of `core` (round robin when None).
pub fn spawn_thread(name: &str, core: Option<u32>) -> Result<ThreadHandle, PollerError> {
    let rt = runtime().ok_or(PollerError::NotRunning)?;
    let r = match core {
        Some(c) => rt
            .reactors
            .iter()
            .find(|r| r.core == c)
            .ok_or(PollerError::NoSuchCore(c))?,
        None => &rt.reactors[rt.next.fetch_add(1, Ordering::Relaxed) % rt.reactors.len()],
    };
    let h = ThreadHandle::new_detached(name, r.core, r.waker.clone());
    place(r, &rt.group, h.clone());
    Ok(h)
}

/// Asks every reactor to leave its loop after the current iteration.
pub fn stop() {
    if let Some(rt) = runtime() {
        rt.stop.store(true, Ordering::SeqCst);
        for r in &rt.reactors {
            r.waker.wake();
        }
    }
}

/// The app thread (first core), where control-path work runs.
pub fn app_thread() -> Option<ThreadHandle> {
    runtime().map(|rt| rt.app_thread.clone())
}

/// Cores of the running reactors, in mask order.
pub fn reactor_cores() -> Vec<u32> {
    runtime()
        .map(|rt| rt.reactors.iter().map(|r| r.core).collect())
        .unwrap_or_default()
}

pub fn idle_backoff() -> bool {
    runtime().is_some_and(|rt| rt.idle_backoff)
}

pub fn reactors() -> Vec<ReactorInfo> {
    let Some(rt) = runtime() else {
        return Vec::new();
    };
    rt.reactors
        .iter()
        .map(|r| ReactorInfo {
            core: r.core,
            busy_ticks: r.busy_ticks.load(Ordering::Relaxed),
            idle_ticks: r.idle_ticks.load(Ordering::Relaxed),
            threads: r.threads.lock().map(|t| t.clone()).unwrap_or_default(),
        })
        .collect()
}

/// Every live thread of the running application.
pub fn threads() -> Vec<ThreadHandle> {
    runtime().map(|rt| rt.group.threads()).unwrap_or_default()
}
