//! Poll groups: one lightweight thread per reactor core of the mask ("nvmf_tgt_poll_group_000",
//! ...), created on first use. Each owns the connections assigned to it (round robin at
//! accept) and everything they hold: request slots, its pool of large buffers, and per
//! subsystem a view of the namespaces with this thread's bdev channels. Other threads reach a
//! group only by message.
//!
//! A group's poller, every iteration: refresh the namespace views whose subsystem generation
//! moved (one atomic load each), write the responses completions queued, `epoll_wait` (no
//! timeout) and read every ready socket, hand freed buffers to waiting requests, free the
//! connections that finished closing. A timer (10 ms) enforces keep alive and other
//! deadlines.

use crate::target::buffers::BufferPool;
use crate::target::connection::Connection;
use crate::target::options::TransportOptions;
use crate::target::subsystem::{ListenAddress, Namespace, Subsystem};
use crate::target::{listener, transport};
use crate::wire::status::Status;
use bdev::{BdevChannel, IoType};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use poller::{PollStatus, Poller, Thread, ThreadHandle};
use serde_json::{Value, json};
use std::cell::RefCell;
use std::net::TcpStream;
use std::sync::{Arc, Mutex, MutexGuard};

/// Period of the keep alive / deadline timer.
const TIMER_US: u64 = 10_000;
/// Readiness events taken per `epoll_wait`.
const EVENTS: usize = 64;
/// Large buffers made when a group starts (the rest as the pool first needs them).
const PREALLOC_BUFFERS: usize = 4;

// ---------------------------------------------------------------------------------------------
// The process-wide list of groups (control path).

struct Handle {
    core: u32,
    name: String,
    thread: ThreadHandle,
}

struct Registry {
    groups: Vec<Handle>,
    /// Cores new connections go to (nvmf_set_config's poll_groups_mask); None: every reactor.
    mask: Option<Vec<u32>>,
    next: usize,
    shut: bool,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    groups: Vec::new(),
    mask: None,
    next: 0,
    shut: false,
});

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

impl Registry {
    /// The group for the next connection (created on its core the first time).
    fn pick(&mut self, opts: &Arc<TransportOptions>) -> Option<(usize, ThreadHandle)> {
        let cores = match &self.mask {
            Some(m) if !m.is_empty() => m.clone(),
            _ => poller::reactor_cores(),
        };
        if cores.is_empty() {
            return None;
        }
        let core = cores[self.next % cores.len()];
        self.next = self.next.wrapping_add(1);
        if let Some(i) = self.groups.iter().position(|g| g.core == core) {
            return Some((i, self.groups[i].thread.clone()));
        }
        let gi = self.groups.len();
        let name = format!("nvmf_tgt_poll_group_{gi:03}");
        let thread = match poller::spawn_thread(&name, Some(core)) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!("cannot start poll group {name} on core {core}: {e}");
                return None;
            }
        };
        // Groups share the buffers out; each keeps at least a few.
        let share = (opts.num_shared_buffers as usize / cores.len().max(1)).max(1);
        let (o, n) = (opts.clone(), name.clone());
        thread.send_msg(move || start_group(gi, n, o, share));
        self.groups.push(Handle {
            core,
            name,
            thread: thread.clone(),
        });
        Some((gi, thread))
    }
}

/// Hands an accepted connection to a poll group (called on the app thread).
pub fn accept(stream: TcpStream, listen: ListenAddress) {
    let Some(opts) = transport::options() else {
        tracing::warn!("NVMe/TCP connection without a transport: closing it");
        return;
    };
    let picked = {
        let mut reg = registry();
        if reg.shut { None } else { reg.pick(&opts) }
    };
    let Some((gi, thread)) = picked else {
        tracing::warn!(
            "no poll group for a connection on {}:{}: closing it",
            listen.traddr,
            listen.trsvcid
        );
        return;
    };
    thread.send_msg(move || {
        with_group(gi, |g| g.add_conn(stream, listen));
    });
}

/// Restricts the poll groups to these cores (nvmf_set_config's poll_groups_mask).
pub fn set_mask(cores: Vec<u32>) {
    registry().mask = Some(cores);
}

/// `nvmf_get_stats`'s answer, given to `done` once every poll group has reported.
pub fn stats_json(done: impl FnOnce(Value) + Send + 'static) {
    let groups: Vec<(usize, String, ThreadHandle)> = registry()
        .groups
        .iter()
        .enumerate()
        .map(|(i, g)| (i, g.name.clone(), g.thread.clone()))
        .collect();
    let tick_rate = poller::time::ticks_hz();
    if groups.is_empty() {
        done(json!({"tick_rate": tick_rate, "poll_groups": []}));
        return;
    }
    struct Collect {
        vals: Vec<Value>,
        left: usize,
        done: Option<Box<dyn FnOnce(Value) + Send>>,
    }
    let n = groups.len();
    let c = Arc::new(Mutex::new(Collect {
        vals: vec![Value::Null; n],
        left: n,
        done: Some(Box::new(done)),
    }));
    for (gi, name, thread) in groups {
        let c = c.clone();
        thread.send_msg(move || {
            let v = with_group(gi, |g| g.stats_json()).unwrap_or_else(|| empty_stats(&name));
            let mut st = c.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(slot) = st.vals.get_mut(gi) {
                *slot = v;
            }
            st.left -= 1;
            if st.left == 0 {
                let vals = std::mem::take(&mut st.vals);
                let done = st.done.take();
                drop(st);
                if let Some(d) = done {
                    d(json!({"tick_rate": tick_rate, "poll_groups": vals}));
                }
            }
        });
    }
}

fn empty_stats(name: &str) -> Value {
    json!({"name": name, "admin_qpairs": 0, "io_qpairs": 0, "current_admin_qpairs": 0,
           "current_io_qpairs": 0, "current_unassociated_qpairs": 0, "pending_bdev_io": 0,
           "completed_nvme_io": 0, "transports": [{"trtype": "TCP"}]})
}

/// Target shutdown: stops listening, disconnects every connection, waits for their I/O and
/// lets go of every namespace (so the bdevs can be unregistered), then calls `done`.
pub fn shutdown(done: impl FnOnce() + Send + 'static) {
    listener::close_all();
    let groups: Vec<(usize, ThreadHandle)> = {
        let mut reg = registry();
        reg.shut = true;
        reg.groups
            .iter()
            .enumerate()
            .map(|(i, g)| (i, g.thread.clone()))
            .collect()
    };
    if groups.is_empty() {
        done();
        return;
    }
    type Done = Box<dyn FnOnce() + Send>;
    let left: Arc<Mutex<(usize, Option<Done>)>> =
        Arc::new(Mutex::new((groups.len(), Some(Box::new(done)))));
    for (gi, thread) in groups {
        let left = left.clone();
        thread.send_msg(move || {
            let one: Done = Box::new(move || {
                let mut l = left.lock().unwrap_or_else(|p| p.into_inner());
                l.0 -= 1;
                if l.0 == 0 {
                    let d = l.1.take();
                    drop(l);
                    if let Some(d) = d {
                        d();
                    }
                }
            });
            let mut one = Some(one);
            with_group(gi, |g| g.begin_shutdown(one.take()));
            if let Some(f) = one {
                f();
            }
        });
    }
}

// ---------------------------------------------------------------------------------------------
// The groups of this OS thread.

thread_local! {
    static LOCAL: RefCell<Vec<Option<Box<Group>>>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on group `gi` if this OS thread hosts it.
pub(crate) fn with_group<R>(gi: usize, f: impl FnOnce(&mut Group) -> R) -> Option<R> {
    LOCAL.with(|l| {
        let Ok(mut groups) = l.try_borrow_mut() else {
            tracing::error!("poll group {gi} entered again from inside itself");
            return None;
        };
        match groups.get_mut(gi) {
            Some(Some(g)) => Some(f(g)),
            _ => None,
        }
    })
}

/// Runs `f` on a connection of group `gi` (if it is still the same one), then lets the group
/// settle what that changed.
pub(crate) fn on_conn(
    gi: usize,
    conn: u16,
    epoch: u16,
    f: impl FnOnce(&mut Connection, &mut GroupShared),
) {
    with_group(gi, |g| g.with_conn(conn, epoch, f));
}

/// `IoCtx::Word` of a request: group, connection generation, connection, slot.
#[inline(always)]
pub(crate) fn word(gi: usize, conn: u16, epoch: u16, slot: u16) -> usize {
    (gi << 48) | (usize::from(epoch) << 32) | (usize::from(conn) << 16) | usize::from(slot)
}

#[inline(always)]
fn unword(w: usize) -> (usize, u16, u16, u16) {
    (w >> 48, (w >> 16) as u16, (w >> 32) as u16, w as u16)
}

/// A bdev I/O of a request finished.
pub(crate) fn io_done(w: usize, st: Status) {
    let (gi, conn, epoch, slot) = unword(w);
    on_conn(gi, conn, epoch, |c, sh| c.io_done(slot, st, sh));
}

/// A request that waited for a bdev_io may go.
pub(crate) fn io_retry(w: usize) {
    let (gi, conn, epoch, slot) = unword(w);
    on_conn(gi, conn, epoch, |c, sh| c.io_retry(slot, sh));
}

fn start_group(gi: usize, name: String, opts: Arc<TransportOptions>, buffers: usize) {
    let Some(thread) = Thread::current() else {
        return;
    };
    let epoll = match Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!("poll group {name}: epoll_create failed: {e}");
            return;
        }
    };
    let pool = BufferPool::new(opts.max_io_size as usize, buffers, PREALLOC_BUFFERS);
    let mut g = Group {
        sh: GroupShared {
            index: gi,
            name: name.clone(),
            thread: thread.handle(),
            opts,
            pool,
            views: Vec::new(),
            stats: Stats::default(),
            dirty: Vec::with_capacity(64),
            unblocked: Vec::with_capacity(16),
        },
        conns: Vec::new(),
        free_ids: Vec::new(),
        epochs: Vec::new(),
        epoll,
        events: vec![EpollEvent::empty(); EVENTS],
        spare: Vec::with_capacity(64),
        pollers: Vec::new(),
        shutdown: None,
        shut: false,
    };
    if let Some(p) = Poller::register("nvmf_tcp_poll_group", 0, move || {
        with_group(gi, Group::poll).unwrap_or(PollStatus::Idle)
    }) {
        g.pollers.push(p);
    }
    if let Some(p) = Poller::register("nvmf_tcp_timer", TIMER_US, move || {
        with_group(gi, Group::timer).unwrap_or(PollStatus::Idle)
    }) {
        g.pollers.push(p);
    }
    tracing::info!(
        "poll group {name} started on core {}",
        thread.handle().core()
    );
    LOCAL.with(|l| {
        let mut v = l.borrow_mut();
        if v.len() <= gi {
            v.resize_with(gi + 1, || None);
        }
        v[gi] = Some(Box::new(g));
    });
}

// ---------------------------------------------------------------------------------------------
// Namespace views.

/// A namespace as a poll group uses it: its bdev channel on this thread.
pub struct NsView {
    pub nsid: u32,
    pub ns: Arc<Namespace>,
    pub ch: BdevChannel,
    pub block_size: u32,
    pub num_blocks: u64,
    pub flush: bool,
    pub write_zeroes: bool,
    pub unmap: bool,
}

/// A subsystem's namespaces as a poll group sees them, refreshed when its generation moves.
pub struct SubsysView {
    pub sub: Arc<Subsystem>,
    generation: u64,
    /// By NSID.
    pub ns: Vec<NsView>,
    users: u32,
}

impl SubsysView {
    /// The namespace `nsid`: straight at `nsid - 1` when the NSIDs are dense, else searched.
    #[inline]
    pub fn find(&self, nsid: u32) -> Option<&NsView> {
        if let Some(n) = self.ns.get(nsid.wrapping_sub(1) as usize)
            && n.nsid == nsid
        {
            return Some(n);
        }
        self.ns
            .binary_search_by_key(&nsid, |n| n.nsid)
            .ok()
            .and_then(|i| self.ns.get(i))
    }

    /// Takes the subsystem's namespaces again: channels kept for those still there, opened
    /// for new ones; the removed ones' channels and references drop here (so a removed
    /// bdev's descriptor can close).
    fn refresh(&mut self) {
        let generation = self.sub.generation();
        let (deleted, list): (bool, Vec<Arc<Namespace>>) = {
            let st = self.sub.lock();
            (st.deleted, st.namespaces.values().cloned().collect())
        };
        let mut old = std::mem::take(&mut self.ns);
        let mut new = Vec::with_capacity(list.len());
        if !deleted {
            for ns in list {
                if let Some(i) = old.iter().position(|o| Arc::ptr_eq(&o.ns, &ns)) {
                    new.push(old.swap_remove(i));
                    continue;
                }
                match ns.desc.get_io_channel() {
                    Ok(ch) => new.push(NsView {
                        nsid: ns.nsid,
                        block_size: ns.block_size,
                        num_blocks: ns.num_blocks,
                        flush: ch.io_type_supported(IoType::Flush),
                        write_zeroes: ch.io_type_supported(IoType::WriteZeroes),
                        unmap: ch.io_type_supported(IoType::Unmap),
                        ch,
                        ns,
                    }),
                    Err(e) => tracing::warn!(
                        "namespace {} ({}): no channel on this poll group: {e}",
                        ns.nsid,
                        ns.bdev_name
                    ),
                }
            }
        }
        new.sort_by_key(|n| n.nsid);
        self.ns = new;
        self.generation = generation;
        drop(old);
    }
}

// ---------------------------------------------------------------------------------------------
// A group.

/// `nvmf_get_stats`'s counters of a group.
#[derive(Default)]
pub struct Stats {
    pub admin_qpairs: u64,
    pub io_qpairs: u64,
    pub current_admin_qpairs: u64,
    pub current_io_qpairs: u64,
    pub current_unassociated_qpairs: u64,
    pub pending_bdev_io: u64,
    pub completed_nvme_io: u64,
}

/// What a connection may use of its group while the group holds the connection.
pub struct GroupShared {
    pub index: usize,
    pub name: String,
    pub thread: ThreadHandle,
    pub opts: Arc<TransportOptions>,
    pub pool: BufferPool,
    pub views: Vec<Option<SubsysView>>,
    pub stats: Stats,
    /// Connections with something queued to send.
    pub dirty: Vec<u16>,
    /// Connections whose input waited for a free slot and may go on.
    pub unblocked: Vec<u16>,
}

impl GroupShared {
    /// The view of `sub` (made now if no connection here uses it yet); released with
    /// `release_view`.
    pub fn view_for(&mut self, sub: Arc<Subsystem>) -> usize {
        if let Some(i) = self
            .views
            .iter()
            .position(|v| v.as_ref().is_some_and(|v| Arc::ptr_eq(&v.sub, &sub)))
        {
            if let Some(Some(v)) = self.views.get_mut(i) {
                v.users += 1;
            }
            return i;
        }
        let mut v = SubsysView {
            sub,
            generation: 0,
            ns: Vec::new(),
            users: 1,
        };
        v.refresh();
        match self.views.iter().position(Option::is_none) {
            Some(i) => {
                self.views[i] = Some(v);
                i
            }
            None => {
                self.views.push(Some(v));
                self.views.len() - 1
            }
        }
    }

    /// A connection stops using view `i`; the last one drops it with its channels.
    pub fn release_view(&mut self, i: usize) {
        let gone = match self.views.get_mut(i) {
            Some(Some(v)) => {
                v.users = v.users.saturating_sub(1);
                v.users == 0
            }
            _ => false,
        };
        if gone && let Some(slot) = self.views.get_mut(i) {
            drop(slot.take());
        }
    }
}

pub struct Group {
    pub sh: GroupShared,
    conns: Vec<Option<Box<Connection>>>,
    epochs: Vec<u16>,
    free_ids: Vec<u16>,
    epoll: Epoll,
    events: Vec<EpollEvent>,
    spare: Vec<u16>,
    pollers: Vec<Poller>,
    /// Called once every connection is gone after `begin_shutdown`.
    shutdown: Option<Box<dyn FnOnce() + Send>>,
    shut: bool,
}

fn token(id: u16, epoch: u16) -> u64 {
    (u64::from(epoch) << 16) | u64::from(id)
}

impl Group {
    fn add_conn(&mut self, stream: TcpStream, listen: ListenAddress) {
        if self.shut || self.shutdown.is_some() {
            return;
        }
        let id = match self.free_ids.pop() {
            Some(id) => id,
            None if self.conns.len() < usize::from(u16::MAX) => {
                self.conns.push(None);
                self.epochs.push(0);
                (self.conns.len() - 1) as u16
            }
            None => {
                tracing::warn!("poll group {}: too many connections", self.sh.name);
                return;
            }
        };
        let epoch = self.epochs.get(usize::from(id)).copied().unwrap_or(0);
        let conn = match Connection::new(id, epoch, stream, listen, self.sh.opts.clone()) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("NVMe/TCP connection set-up failed: {e}");
                self.free_ids.push(id);
                return;
            }
        };
        let ev = EpollEvent::new(
            EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP,
            token(id, epoch),
        );
        if let Err(e) = self.epoll.add(conn.sock(), ev) {
            tracing::warn!("NVMe/TCP connection: epoll_ctl failed: {e}");
            self.free_ids.push(id);
            return;
        }
        self.sh.pool.add_slots(conn.slot_count());
        self.sh.stats.current_unassociated_qpairs += 1;
        if let Some(slot) = self.conns.get_mut(usize::from(id)) {
            *slot = Some(Box::new(conn));
        }
    }

    fn with_conn(
        &mut self,
        id: u16,
        epoch: u16,
        f: impl FnOnce(&mut Connection, &mut GroupShared),
    ) {
        if let Some(Some(c)) = self.conns.get_mut(usize::from(id))
            && c.epoch == epoch
        {
            f(c, &mut self.sh);
        }
        self.settle(id);
    }

    /// After something changed on connection `id`: free it if it is done, serve buffer
    /// waiters, go on with input that waited for a slot.
    fn settle(&mut self, id: u16) {
        if self
            .conns
            .get(usize::from(id))
            .is_some_and(|c| c.as_ref().is_some_and(|c| c.is_closing() && c.can_free()))
        {
            self.free(id);
        }
        if self.sh.pool.has_waiters() {
            self.serve_waiters();
        }
        if !self.sh.unblocked.is_empty() {
            self.process_unblocked();
        }
    }

    fn serve_waiters(&mut self) {
        while let Some((w, b)) = self.sh.pool.serve() {
            match self.conns.get_mut(usize::from(w.conn)) {
                Some(Some(c)) if c.epoch == w.epoch => c.buffer_ready(w.slot, b, &mut self.sh),
                _ => self.sh.pool.give(b),
            }
        }
    }

    fn process_unblocked(&mut self) {
        while let Some(id) = self.sh.unblocked.pop() {
            if let Some(Some(c)) = self.conns.get_mut(usize::from(id))
                && c.has_input()
            {
                c.process_input(&mut self.sh);
                c.flush(&mut self.sh);
            }
        }
    }

    fn free(&mut self, id: u16) {
        let Some(mut c) = self.conns.get_mut(usize::from(id)).and_then(Option::take) else {
            return;
        };
        let _ = self.epoll.delete(c.sock());
        c.on_free(&mut self.sh);
        if let Some(g) = self.epochs.get_mut(usize::from(id)) {
            *g = g.wrapping_add(1);
        }
        self.free_ids.push(id);
        drop(c);
        if self.shutdown.is_some() && self.conns.iter().all(Option::is_none) {
            self.finish_shutdown();
        }
    }

    /// Writes what completions queued since the last poll.
    fn flush_dirty(&mut self) -> bool {
        if self.sh.dirty.is_empty() {
            return false;
        }
        std::mem::swap(&mut self.spare, &mut self.sh.dirty);
        for k in 0..self.spare.len() {
            let id = self.spare[k];
            if let Some(Some(c)) = self.conns.get_mut(usize::from(id)) {
                c.dirty = false;
                c.flush(&mut self.sh);
                if c.is_closing() && c.can_free() {
                    self.free(id);
                }
            }
        }
        self.spare.clear();
        true
    }

    fn poll(&mut self) -> PollStatus {
        let mut busy = false;
        for v in self.sh.views.iter_mut().flatten() {
            if v.sub.generation() != v.generation {
                v.refresh();
                busy = true;
            }
        }
        busy |= self.flush_dirty();
        let n = self
            .epoll
            .wait(&mut self.events, EpollTimeout::ZERO)
            .unwrap_or(0);
        for i in 0..n.min(self.events.len()) {
            let t = self.events[i].data();
            let (id, epoch) = (t as u16, (t >> 16) as u16);
            let Some(Some(c)) = self.conns.get_mut(usize::from(id)) else {
                continue;
            };
            if c.epoch != epoch {
                continue;
            }
            busy = true;
            c.on_readable(&mut self.sh);
            c.flush(&mut self.sh);
            if c.is_closing() {
                if c.can_free() {
                    self.free(id);
                } else if !c.wants_input() {
                    let _ = self.epoll.delete(c.sock());
                }
            }
        }
        if self.sh.pool.has_waiters() {
            self.serve_waiters();
        }
        if !self.sh.unblocked.is_empty() {
            self.process_unblocked();
        }
        PollStatus::from(busy)
    }

    fn timer(&mut self) -> PollStatus {
        let now = poller::time::ticks();
        for id in 0..self.conns.len() {
            if let Some(Some(c)) = self.conns.get_mut(id) {
                c.timer(now, &mut self.sh);
                if c.is_closing() && c.can_free() {
                    self.free(id as u16);
                }
            }
        }
        PollStatus::Idle
    }

    fn stats_json(&mut self) -> Value {
        let s = &self.sh.stats;
        json!({"name": self.sh.name, "admin_qpairs": s.admin_qpairs, "io_qpairs": s.io_qpairs,
               "current_admin_qpairs": s.current_admin_qpairs,
               "current_io_qpairs": s.current_io_qpairs,
               "current_unassociated_qpairs": s.current_unassociated_qpairs,
               "pending_bdev_io": s.pending_bdev_io, "completed_nvme_io": s.completed_nvme_io,
               "transports": [{"trtype": "TCP"}]})
    }

    fn begin_shutdown(&mut self, done: Option<Box<dyn FnOnce() + Send>>) {
        self.shutdown = done;
        for id in 0..self.conns.len() {
            if let Some(Some(c)) = self.conns.get_mut(id) {
                c.begin_close(&mut self.sh, false, "target shutdown");
            }
        }
        for id in 0..self.conns.len() {
            if self.conns[id].as_ref().is_some_and(|c| c.can_free()) {
                self.free(id as u16);
            }
        }
        if self.conns.iter().all(Option::is_none) {
            self.finish_shutdown();
        }
    }

    fn finish_shutdown(&mut self) {
        self.shut = true;
        // The namespaces' channels and references go, so their bdevs can be unregistered.
        self.sh.views.clear();
        for p in self.pollers.drain(..) {
            p.unregister();
        }
        if let Some(done) = self.shutdown.take() {
            done();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_words_round_trip() {
        for (g, c, e, s) in [(0, 0, 0, 0), (3, 65535, 1, 127), (65535, 7, 65535, 65535)] {
            assert_eq!(unword(word(g, c, e, s)), (g, c, e, s));
        }
        assert_eq!(token(5, 9) & 0xFFFF, 5);
        assert_eq!(token(5, 9) >> 16, 9);
    }
}
