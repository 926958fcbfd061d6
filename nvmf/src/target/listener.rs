//! Listening sockets. One non-blocking socket per address, shared by every subsystem that
//! listens there (a reference per subsystem); the app thread accepts from all of them every
//! `acceptor_poll_rate` µs and hands each connection to a poll group. Nothing listens beyond
//! the addresses the RPCs gave.

use crate::target::subsystem::{ListenAddress, Subsystem};
use crate::target::{TargetError, poll_group, transport};
use poller::{PollStatus, Poller};
use std::net::TcpListener;
use std::sync::{Arc, Mutex, MutexGuard};

/// Connections accepted per listener per poll, so a flood cannot hold the app thread.
const ACCEPT_BURST: usize = 16;

struct Entry {
    addr: ListenAddress,
    socket: TcpListener,
    /// The subsystems listening here (by identity).
    users: Vec<usize>,
}

static LISTENERS: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

fn listeners() -> MutexGuard<'static, Vec<Entry>> {
    LISTENERS.lock().unwrap_or_else(|p| p.into_inner())
}

fn key(s: &Arc<Subsystem>) -> usize {
    Arc::as_ptr(s) as usize
}

/// Adds `addr` to the subsystem's listeners, opening the socket if nobody listens there yet.
pub fn add(s: &Arc<Subsystem>, addr: ListenAddress) -> Result<(), TargetError> {
    let Some(opts) = transport::options() else {
        return Err(TargetError::invalid(
            "Unable to find transport TCP: create it first (nvmf_create_transport -t TCP)",
        ));
    };
    if s.lock().listeners.contains(&addr) {
        return Err(TargetError::Exists(format!(
            "Listener {}:{} already exists on {}",
            addr.traddr,
            addr.trsvcid,
            s.nqn()
        )));
    }
    let mut list = listeners();
    match list.iter_mut().find(|e| e.addr == addr) {
        Some(e) => e.users.push(key(s)),
        None => {
            let sa = addr
                .socket_addr()
                .ok_or_else(|| TargetError::invalid("listen_address: bad address"))?;
            let socket = TcpListener::bind(sa).map_err(|e| TargetError::Io {
                errno: e.raw_os_error().unwrap_or(libc::EIO),
                msg: format!("cannot listen on {sa}: {e}"),
            })?;
            socket.set_nonblocking(true).map_err(|e| TargetError::Io {
                errno: e.raw_os_error().unwrap_or(libc::EIO),
                msg: format!("cannot make {sa} non-blocking: {e}"),
            })?;
            tracing::info!("NVMe/TCP target listening on {sa}");
            list.push(Entry {
                addr: addr.clone(),
                socket,
                users: vec![key(s)],
            });
            start_acceptor(opts.acceptor_poll_rate);
        }
    }
    drop(list);
    s.lock().listeners.push(addr);
    crate::target::subsystem::Target::get().discovery_changed();
    Ok(())
}

/// Removes `addr` from the subsystem's listeners; the socket closes with its last user.
/// Connections already made stay up (as in SPDK).
pub fn remove(s: &Arc<Subsystem>, addr: &ListenAddress) -> Result<(), TargetError> {
    {
        let mut st = s.lock();
        let before = st.listeners.len();
        st.listeners.retain(|a| a != addr);
        if st.listeners.len() == before {
            return Err(TargetError::not_found(format!(
                "Unable to find listener {}:{} on {}",
                addr.traddr, addr.trsvcid, st.nqn
            )));
        }
    }
    release(s, addr);
    crate::target::subsystem::Target::get().discovery_changed();
    Ok(())
}

fn release(s: &Arc<Subsystem>, addr: &ListenAddress) {
    let k = key(s);
    let mut list = listeners();
    for e in list.iter_mut().filter(|e| &e.addr == addr) {
        e.users.retain(|u| *u != k);
    }
    list.retain(|e| {
        let keep = !e.users.is_empty();
        if !keep {
            tracing::info!(
                "NVMe/TCP target stops listening on {}:{}",
                e.addr.traddr,
                e.addr.trsvcid
            );
        }
        keep
    });
}

/// A deleted subsystem's listeners.
pub fn release_all(s: &Arc<Subsystem>) {
    let addrs = std::mem::take(&mut s.lock().listeners);
    for a in &addrs {
        release(s, a);
    }
}

/// Closes every listening socket (target shutdown).
pub fn close_all() {
    listeners().clear();
}

thread_local! {
    static ACCEPTOR: std::cell::RefCell<Option<Poller>> = const { std::cell::RefCell::new(None) };
}

/// Starts the acceptor poller on the app thread once.
fn start_acceptor(period_us: u32) {
    let Some(app) = poller::app_thread() else {
        return;
    };
    app.send_msg(move || {
        ACCEPTOR.with(|a| {
            if a.borrow().as_ref().is_some_and(|p| p.is_registered()) {
                return;
            }
            *a.borrow_mut() =
                Poller::register("nvmf_tcp_accept", u64::from(period_us), accept_some);
        })
    });
}

fn accept_some() -> PollStatus {
    let mut accepted = Vec::new();
    {
        let list = listeners();
        for e in list.iter() {
            for _ in 0..ACCEPT_BURST {
                match e.socket.accept() {
                    Ok((stream, _)) => accepted.push((stream, e.addr.clone())),
                    Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(err) => {
                        tracing::warn!("accept on {}:{}: {err}", e.addr.traddr, e.addr.trsvcid);
                        break;
                    }
                }
            }
        }
    }
    let busy = !accepted.is_empty();
    for (stream, addr) in accepted {
        poll_group::accept(stream, addr);
    }
    PollStatus::from(busy)
}
