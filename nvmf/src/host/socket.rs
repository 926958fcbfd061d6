//! The qpair's TCP socket: a non-blocking connect polled to completion (a reactor never waits
//! for a SYN), vectored sends straight from I/O buffers, and plain non-blocking reads.

use crate::host::error::HostError;
use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Most segments one `sendmsg` carries (well under IOV_MAX).
pub const MAX_IOV: usize = 64;

/// A TCP connection to the target, connecting or connected.
pub struct Socket {
    stream: TcpStream,
    peer: SocketAddr,
}

/// Where a non-blocking connect stands.
pub enum ConnectState {
    InProgress,
    Connected,
}

impl Socket {
    /// Starts a non-blocking connect to `peer` (bound to `src` first when given).
    pub fn connect(peer: SocketAddr, src: Option<SocketAddr>) -> Result<Socket, HostError> {
        let os_err = |what: String| {
            let e = std::io::Error::last_os_error();
            HostError::Io {
                errno: e.raw_os_error().unwrap_or(libc::EIO),
                msg: format!("{what}: {e}"),
            }
        };
        let family = match peer {
            SocketAddr::V4(_) => libc::AF_INET,
            SocketAddr::V6(_) => libc::AF_INET6,
        };
        // SAFETY: socket(2) takes no pointers; the result is checked below.
        let raw = unsafe {
            libc::socket(
                family,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if raw < 0 {
            return Err(os_err(format!("cannot open a socket for {peer}")));
        }
        // SAFETY: `raw` is a descriptor we just opened and own alone.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let one: libc::c_int = 1;
        // SAFETY: the option value is a live c_int whose size we pass.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                (&raw const one).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(os_err(format!("cannot set TCP_NODELAY for {peer}")));
        }
        if let Some(src) = src {
            let (sa, len) = sockaddr(src);
            // SAFETY: `sa` is a sockaddr_storage holding a valid address of `len` bytes.
            let rc = unsafe { libc::bind(fd.as_raw_fd(), (&raw const sa).cast(), len) };
            if rc != 0 {
                return Err(os_err(format!("cannot bind to host address {src}")));
            }
        }
        let (sa, len) = sockaddr(peer);
        // SAFETY: as for bind; a non-blocking connect returns at once.
        let rc = unsafe { libc::connect(fd.as_raw_fd(), (&raw const sa).cast(), len) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINPROGRESS) {
                return Err(HostError::io(&e, format!("cannot connect to {peer}")));
            }
        }
        Ok(Socket {
            stream: TcpStream::from(fd),
            peer,
        })
    }

    /// Polls the connect: done, still going, or the error (refused, unreachable...).
    pub fn poll_connect(&self) -> Result<ConnectState, HostError> {
        let what = || format!("connect to {}", self.peer);
        if let Some(e) = self
            .stream
            .take_error()
            .map_err(|e| HostError::io(&e, what()))?
        {
            return Err(HostError::io(&e, what()));
        }
        match self.stream.peer_addr() {
            Ok(_) => Ok(ConnectState::Connected),
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Ok(ConnectState::InProgress),
            Err(e) => Err(HostError::io(&e, what())),
        }
    }

    /// Sends what it can of `iov`; the bytes sent (0 when the socket is full).
    pub fn send(&self, iov: &[libc::iovec]) -> Result<usize, HostError> {
        if iov.is_empty() {
            return Ok(0);
        }
        // SAFETY: msghdr is plain data; zeroed is a valid empty header before we fill it.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_ptr().cast_mut();
        msg.msg_iovlen = iov.len().min(MAX_IOV);
        // SAFETY: every segment points at memory the caller keeps valid for the call: its own
        // PDU header buffers, or I/O buffers whose IoVec contract keeps them valid and
        // untouched until the I/O completes. sendmsg only reads them.
        let n = unsafe {
            libc::sendmsg(
                self.stream.as_raw_fd(),
                &msg,
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            return Ok(n.unsigned_abs());
        }
        let e = std::io::Error::last_os_error();
        match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::Interrupted => Ok(0),
            _ => Err(HostError::io(&e, format!("send to {}", self.peer))),
        }
    }

    /// Reads what is there into `buf`: Some(bytes), None when nothing is, an error at EOF.
    pub fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, HostError> {
        match self.stream.read(buf) {
            Ok(0) if !buf.is_empty() => Err(HostError::Io {
                errno: libc::ECONNRESET,
                msg: format!("{} closed the connection", self.peer),
            }),
            Ok(n) => Ok(Some(n)),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                Ok(None)
            }
            Err(e) => Err(HostError::io(&e, format!("receive from {}", self.peer))),
        }
    }

    /// Reads what is there into the segments `iov`, in order; None when nothing is, an
    /// error at EOF.
    pub fn recv_vectored(&mut self, iov: &[libc::iovec]) -> Result<Option<usize>, HostError> {
        // SAFETY: every segment is writable memory the caller keeps valid and unaliased for
        // the call: its receive buffer, or I/O buffers whose IoVec contract hands them to this
        // I/O until it completes. readv writes at most each segment's length.
        let n = unsafe {
            libc::readv(
                self.stream.as_raw_fd(),
                iov.as_ptr(),
                iov.len().min(MAX_IOV) as libc::c_int,
            )
        };
        match n {
            0 => Err(HostError::Io {
                errno: libc::ECONNRESET,
                msg: format!("{} closed the connection", self.peer),
            }),
            n if n > 0 => Ok(Some(n.unsigned_abs())),
            _ => {
                let e = std::io::Error::last_os_error();
                match e.kind() {
                    ErrorKind::WouldBlock | ErrorKind::Interrupted => Ok(None),
                    _ => Err(HostError::io(&e, format!("receive from {}", self.peer))),
                }
            }
        }
    }

    /// Closes both directions at once (the target sees the connection end now).
    pub fn shutdown(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// `a` as the C socket address the kernel takes, and its length.
fn sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all zeroes is a valid (unspecified) address.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match a {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for any sockaddr type.
            unsafe { std::ptr::write((&raw mut ss).cast::<libc::sockaddr_in>(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: as above.
            unsafe { std::ptr::write((&raw mut ss).cast::<libc::sockaddr_in6>(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// A segment of `len` bytes at `base`, for `Socket::send`.
pub fn iovec(base: *const u8, len: usize) -> libc::iovec {
    libc::iovec {
        iov_base: base.cast_mut().cast(),
        iov_len: len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn wait_connected(s: &Socket) -> Result<(), HostError> {
        let start = Instant::now();
        loop {
            match s.poll_connect()? {
                ConnectState::Connected => return Ok(()),
                ConnectState::InProgress => {
                    assert!(start.elapsed() < Duration::from_secs(10), "connect hangs");
                    std::thread::yield_now();
                }
            }
        }
    }

    #[test]
    fn connect_send_receive_and_refusal() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let mut s = Socket::connect(addr, None).unwrap();
        wait_connected(&s).unwrap();
        let (mut peer, _) = l.accept().unwrap();
        let a = b"hello ";
        let b = b"world";
        let n = s
            .send(&[iovec(a.as_ptr(), a.len()), iovec(b.as_ptr(), b.len())])
            .unwrap();
        assert_eq!(n, 11);
        let mut got = [0u8; 11];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello world");
        let mut buf = [0u8; 16];
        assert_eq!(s.recv(&mut buf).unwrap(), None);
        std::io::Write::write_all(&mut peer, b"ok").unwrap();
        drop(peer);
        let start = Instant::now();
        let mut seen = Vec::new();
        let err = loop {
            match s.recv(&mut buf) {
                Ok(Some(n)) => seen.extend_from_slice(&buf[..n]),
                Ok(None) => {
                    assert!(start.elapsed() < Duration::from_secs(10));
                    std::thread::yield_now();
                }
                Err(e) => break e,
            }
        };
        assert_eq!(seen, b"ok");
        assert_eq!(err.errno(), libc::ECONNRESET);

        // Nobody listens on a port that was just released: refused, reported by the poll.
        drop(l);
        let s = Socket::connect(addr, None).unwrap();
        let e = wait_connected(&s).unwrap_err();
        assert_eq!(e.errno(), libc::ECONNREFUSED, "{e}");
        assert!(e.to_string().contains(&addr.to_string()), "{e}");
    }
}
