//! The netlink socket under both kernel families kproxy speaks over netlink (ctnetlink for
//! [`crate::conntrack`], generic-netlink IPVS for [`crate::ipvs`]), and the one error type
//! of a netlink request. What the messages mean stays with each family.
//!
//! The socket is non-blocking: the kernel answers these requests (and produces every dump
//! batch) within `sendmsg`/`recvmsg`, so an empty socket means the answer is complete or
//! lost; waiting for it is bounded by a deadline the caller sets from [`REPLY_TIMEOUT`].

use std::io;
use std::thread;
use std::time::{Duration, Instant};

use netlink_packet_core::DecodeError;
use netlink_sys::{Socket, SocketAddr};

/// How long one request may wait for its complete answer (or for its next dump batch).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

const RECV_BUF_LEN: usize = 1 << 18;

/// A netlink request's failure, naming the request.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// A socket call failed.
    #[error("netlink socket error during {what}: {source}")]
    Io {
        /// The request.
        what: String,
        /// The cause.
        source: io::Error,
    },
    /// The kernel refused the request.
    #[error("kernel refused {what}: {source}")]
    Kernel {
        /// The request.
        what: String,
        /// The errno the kernel answered, as an I/O error.
        source: io::Error,
    },
    /// An answer could not be decoded.
    #[error("cannot decode the kernel's answer to {what}: {source}")]
    Decode {
        /// The request.
        what: String,
        /// The cause.
        source: DecodeError,
    },
    /// The answer did not complete in time.
    #[error("no complete answer to {what} within {REPLY_TIMEOUT:?}")]
    Incomplete {
        /// The request.
        what: String,
    },
}

impl NetlinkError {
    /// The errno the kernel refused the request with.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// The kernel's refusal of `what` with `errno`.
    pub fn kernel(what: impl Into<String>, errno: i32) -> Self {
        NetlinkError::Kernel {
            what: what.into(),
            source: io::Error::from_raw_os_error(errno),
        }
    }
}

/// A non-blocking netlink socket of one protocol in the network namespace of the thread
/// that opened it, with its sequence numbers and receive buffer.
pub struct NetlinkSocket {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl NetlinkSocket {
    /// Opens, binds and connects a socket of `protocol` (`NETLINK_NETFILTER`,
    /// `NETLINK_GENERIC`); `what` names it in errors.
    pub fn open(protocol: isize, what: &str) -> Result<Self, NetlinkError> {
        let io = |source| NetlinkError::Io {
            what: format!("opening the {what} netlink socket"),
            source,
        };
        let mut socket = Socket::new(protocol).map_err(io)?;
        socket.bind_auto().map_err(io)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(io)?;
        socket.set_non_blocking(true).map_err(io)?;
        Ok(NetlinkSocket {
            socket,
            seq: 0,
            buf: vec![0u8; RECV_BUF_LEN],
        })
    }

    /// The next request's sequence number.
    pub fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends `request` (one or more serialized messages) for `what`.
    pub fn send(&self, request: &[u8], what: &str) -> Result<(), NetlinkError> {
        self.socket
            .send(request, 0)
            .map(drop)
            .map_err(|source| NetlinkError::Io {
                what: what.to_owned(),
                source,
            })
    }

    /// Receives one buffer of messages, waiting until `deadline`; `None` when the deadline
    /// passed with nothing to read.
    pub fn recv(&mut self, deadline: Instant, what: &str) -> Result<Option<&[u8]>, NetlinkError> {
        loop {
            match self.socket.recv(&mut &mut self.buf[..], 0) {
                Ok(n) => return Ok(Some(&self.buf[..n])),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return Ok(None);
                    }
                    thread::sleep(Duration::from_millis(1));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(NetlinkError::Io {
                        what: what.to_owned(),
                        source,
                    });
                }
            }
        }
    }
}

/// The length of a netlink message rounded up to the 4-byte alignment of the next one.
pub fn align(len: usize) -> usize {
    (len + 3) & !3
}
