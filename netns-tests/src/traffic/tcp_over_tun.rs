//! Whole TCP connections from a userspace stack: [smoltcp] behind a TUN device.
//!
//! A [`TunClient`] is an external client that is not the kernel: a smoltcp [`Interface`] on a
//! TUN device (`Medium::Ip`) inside a namespace, with its own address, sequence numbers,
//! ports and timers. The kernel of that namespace sees the stack as a neighbour behind the TUN
//! device and routes its packets onwards (it sets `ip_forward=1`), so they enter the rest of
//! the topology exactly like packets from another machine.
//!
//! ```no_run
//! # use std::time::Duration;
//! # use kproxy_netns_tests::{netns::Netns, traffic::tcp_over_tun::*};
//! # fn demo(ns: &Netns) -> anyhow::Result<()> {
//! let mut client = TunClient::new(ns, "kptun0", [198, 18, 0, 1].into(), [198, 18, 0, 2].into(), 24)?;
//! let line = client.request("10.2.0.2:8080".parse()?, b"", Duration::from_secs(3))?;
//! match client.request("10.2.0.2:9".parse()?, b"", Duration::from_secs(3)) {
//!     Err(e) if matches!(e.downcast_ref(), Some(TcpFailure::Refused { .. })) => {}
//!     other => panic!("expected a refusal, got {other:?}"),
//! }
//! # Ok(()) }
//! ```
//!
//! # How
//!
//! - **One thread owns the stack.** smoltcp's device and interface are not `Send`, and the TUN
//!   device must be created inside the namespace: a worker thread enters the namespace, opens
//!   [`TunTapInterface`] there (the descriptor keeps the namespace) and serves
//!   [`TunClient::request`] calls sent to it over a channel. Dropping the client stops the
//!   worker, which closes the descriptor and so deletes the device.
//! - **Kernel side once**: the address, link state and `ip_forward` are set with `ip` and
//!   `sysctl` when the client is made, never per connection.
//! - **Never the same connection twice**: the interface gets a fresh random seed (its initial
//!   sequence numbers), and every connection a fresh local port from the ephemeral range
//!   (49152..65536, cycled process-wide from a random start, so a port comes back only after
//!   16384 connections). A repeated port and sequence number would meet the peer's TIME_WAIT
//!   state and cost a retransmission.
//! - **Poll loop**: `poll`, act on the socket, then [`phy::wait`] for the descriptor or for
//!   smoltcp's next timer, capped at 50 ms (`phy::wait` mishandles waits of a second or
//!   more) and at the request's deadline; the loop also has a maximum number of turns.
//! - **Failures are told apart** ([`TcpFailure`]): smoltcp closes a connecting socket when a
//!   RST answers its SYN, which becomes [`TcpFailure::Refused`] at once. smoltcp ignores ICMP
//!   errors for TCP (it would retransmit the SYN until the deadline), so the device is wrapped
//!   to note every ICMP destination-unreachable quoting one of our SYNs, which becomes
//!   [`TcpFailure::Unreachable`] at once (iptables' `REJECT` default, nftables' `reject`).
//!   Only silence is a [`TcpFailure::TimedOut`].
//! - **A device failure is an error, not a dead client**: smoltcp's TUN device panics when a
//!   write fails, which it does (EIO) while the link is down. The panic is caught per
//!   request, the request fails saying so, and the stack works again once the link is up.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, RawFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Medium, TunTapInterface};
use smoltcp::socket::tcp::{self, State};
use smoltcp::time::{Duration as SmolDuration, Instant as SmolInstant};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};

use super::icmp_watch::Watched;
use super::random;
use crate::netns::Netns;

/// The longest a closing handshake is waited for once the reply is complete; after it, the
/// connection is aborted (RST) and the reply returned anyway.
pub const CLOSE_LIMIT: Duration = Duration::from_secs(1);
/// First port of the range local ports are drawn from.
const EPHEMERAL_START: u16 = 49152;
/// How many local ports the range holds (49152..65536).
const EPHEMERAL_COUNT: u16 = 16384;
/// The longest single wait in the poll loop.
const MAX_WAIT: Duration = Duration::from_millis(50);
/// The most poll-loop turns of one request.
const MAX_TURNS: usize = 1_000_000;
/// The most bytes one reply may have.
const MAX_REPLY: usize = 1 << 20;
/// The socket buffers of one connection.
const SOCKET_BUFFER: usize = 64 * 1024;
/// A worker without a request for this long stops.
const MAX_IDLE: Duration = Duration::from_secs(600);
/// The most requests one worker serves.
const MAX_REQUESTS: usize = 1_000_000;

/// Why a TCP request failed, as far as the wire tells. Reach it with
/// `error.downcast_ref::<TcpFailure>()` on the error of [`TunClient::request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpFailure {
    /// The SYN was answered with a RST: nothing listens, or `REJECT --reject-with tcp-reset`.
    Refused {
        /// The destination that refused.
        dst: SocketAddrV4,
    },
    /// The SYN was answered with an ICMP destination unreachable (code 3 is port
    /// unreachable, iptables' default `REJECT`; 1 host, 13 administratively prohibited).
    Unreachable {
        /// The destination the SYN was sent to.
        dst: SocketAddrV4,
        /// The ICMP code.
        code: u8,
    },
    /// The connection was reset after it was established, before any reply byte arrived.
    Reset {
        /// The destination that reset.
        dst: SocketAddrV4,
    },
    /// Nothing decisive arrived before the deadline.
    TimedOut {
        /// The destination.
        dst: SocketAddrV4,
        /// What was waited for: `"connect"` or `"reply"`.
        phase: &'static str,
    },
}

impl std::fmt::Display for TcpFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TcpFailure::Refused { dst } => write!(f, "connection to {dst} refused (RST)"),
            TcpFailure::Unreachable { dst, code } => {
                write!(f, "{dst} unreachable (ICMP code {code})")
            }
            TcpFailure::Reset { dst } => write!(f, "connection to {dst} reset"),
            TcpFailure::TimedOut { dst, phase } => write!(f, "{dst}: timed out waiting ({phase})"),
        }
    }
}

impl std::error::Error for TcpFailure {}

/// One request handed to the worker.
struct Job {
    dst: SocketAddrV4,
    request: Vec<u8>,
    timeout: Duration,
    reply: mpsc::Sender<anyhow::Result<String>>,
}

/// A smoltcp TCP client behind a TUN device in a namespace; the device lives as long as this.
#[derive(Debug)]
pub struct TunClient {
    name: String,
    stack_ip: Ipv4Addr,
    jobs: Option<mpsc::Sender<Job>>,
    worker: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TunClient {
    /// Creates TUN device `name` in `ns` with the kernel side at `kernel_ip/prefix` and the
    /// smoltcp stack at `stack_ip/prefix` (default route via `kernel_ip`), brings it up and
    /// sets `ip_forward=1` in `ns`. `ns` must already route to the destinations, and they
    /// must route back to `stack_ip`'s network.
    pub fn new(
        ns: &Netns,
        name: &str,
        kernel_ip: Ipv4Addr,
        stack_ip: Ipv4Addr,
        prefix: u8,
    ) -> anyhow::Result<Self> {
        ensure!(prefix <= 32, "prefix /{prefix} is not an IPv4 prefix");
        ensure!(kernel_ip != stack_ip, "kernel and stack need two addresses");
        let (ready_tx, ready_rx) = mpsc::channel();
        let (jobs_tx, jobs_rx) = mpsc::channel();
        let tun = name.to_owned();
        let worker = ns.spawn(move || {
            let mut stack = match Stack::open(&tun, kernel_ip, stack_ip, prefix) {
                Ok(stack) => {
                    let _ = ready_tx.send(Ok(()));
                    stack
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("{e:#}")));
                    return Err(e);
                }
            };
            stack.serve(&jobs_rx);
            Ok(())
        })?;
        let what = format!("TUN {name} in {}", ns.name());
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("{what}: {e}"),
            Err(_) => bail!("{what}: the stack did not start within 5 s"),
        }
        // Built before the kernel side, so that a failure below stops the worker (Drop).
        let client = TunClient {
            name: name.to_owned(),
            stack_ip,
            jobs: Some(jobs_tx),
            worker: Some(worker),
        };
        let cidr = format!("{kernel_ip}/{prefix}");
        ns.ip(&["addr", "add", &cidr, "dev", name])
            .with_context(|| format!("{what}: address"))?;
        ns.ip(&["link", "set", name, "up"])
            .with_context(|| format!("{what}: link up"))?;
        ns.sysctl("net.ipv4.ip_forward=1")
            .with_context(|| format!("{what}: ip_forward"))?;
        Ok(client)
    }

    /// The TUN device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The smoltcp stack's address (the source of its connections).
    pub fn stack_ip(&self) -> Ipv4Addr {
        self.stack_ip
    }

    /// One whole TCP connection: connects to `dst`, sends `request` (may be empty), reads
    /// until a newline or until the peer closes, closes (bounded by [`CLOSE_LIMIT`]) and
    /// returns what was read. Connecting and reading are bounded by `timeout`; a failure the
    /// wire explains is a [`TcpFailure`] inside the error.
    pub fn request(
        &mut self,
        dst: SocketAddrV4,
        request: &[u8],
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let jobs = self.jobs.as_ref().context("the stack was stopped")?;
        let (reply_tx, reply_rx) = mpsc::channel();
        let job = Job {
            dst,
            request: request.to_vec(),
            timeout,
            reply: reply_tx,
        };
        jobs.send(job)
            .map_err(|_| anyhow!("the smoltcp stack on {} stopped", self.name))?;
        match reply_rx.recv_timeout(timeout + CLOSE_LIMIT + Duration::from_secs(2)) {
            Ok(result) => result,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                bail!("the smoltcp stack on {} died", self.name)
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                bail!("the smoltcp stack on {} did not answer", self.name)
            }
        }
    }
}

impl Drop for TunClient {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// A local port for a new connection: never the same twice in a row of 16384.
fn next_local_port() -> u16 {
    static NEXT: OnceLock<AtomicU16> = OnceLock::new();
    let next = NEXT.get_or_init(|| AtomicU16::new(random::seed() as u16));
    // 65536 is a multiple of the range's size, so the cycle stays even across wrap-around.
    EPHEMERAL_START + next.fetch_add(1, Ordering::Relaxed) % EPHEMERAL_COUNT
}

/// The error for a panic inside smoltcp's device.
fn device_failure(panic: &(dyn std::any::Any + Send), dst: SocketAddrV4) -> anyhow::Error {
    let text = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown");
    anyhow!("request to {dst}: the TUN device failed ({text}); is its link down?")
}

/// The worker's state: device, interface and socket set.
struct Stack {
    device: Watched<TunTapInterface>,
    fd: RawFd,
    iface: Interface,
    sockets: SocketSet<'static>,
}

impl Stack {
    /// Opens (creates) the TUN device in the current thread's namespace.
    fn open(name: &str, gateway: Ipv4Addr, ip: Ipv4Addr, prefix: u8) -> anyhow::Result<Self> {
        let tun = TunTapInterface::new(name, Medium::Ip)
            .with_context(|| format!("creating TUN device {name} (needs root)"))?;
        let fd = tun.as_raw_fd();
        let mut device = Watched::new(tun);
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = random::seed();
        let mut iface = Interface::new(config, &mut device, SmolInstant::now());
        let mut added = Ok(());
        iface.update_ip_addrs(|addrs| {
            added = addrs.push(IpCidr::new(IpAddress::Ipv4(ip), prefix));
        });
        added.map_err(|_| anyhow!("no room for address {ip}/{prefix}"))?;
        iface
            .routes_mut()
            .add_default_ipv4_route(gateway)
            .map_err(|_| anyhow!("no room for the default route"))?;
        Ok(Stack {
            device,
            fd,
            iface,
            sockets: SocketSet::new(Vec::new()),
        })
    }

    /// Answers jobs until the client is dropped (or idles for [`MAX_IDLE`]).
    fn serve(&mut self, jobs: &mpsc::Receiver<Job>) {
        for _ in 0..MAX_REQUESTS {
            let Ok(job) = jobs.recv_timeout(MAX_IDLE) else {
                return;
            };
            let result = self.request(job.dst, &job.request, job.timeout);
            let _ = job.reply.send(result);
        }
    }

    /// One connection on a fresh socket, removed afterwards whatever happened.
    fn request(
        &mut self,
        dst: SocketAddrV4,
        request: &[u8],
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let port = next_local_port();
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; SOCKET_BUFFER]),
            tcp::SocketBuffer::new(vec![0; SOCKET_BUFFER]),
        );
        socket
            .connect(
                self.iface.context(),
                (IpAddress::Ipv4(*dst.ip()), dst.port()),
                port,
            )
            .map_err(|e| anyhow!("connect to {dst} from port {port}: {e}"))?;
        let handle = self.sockets.add(socket);
        // smoltcp's TUN device panics when a write fails (EIO once the link is down): that
        // fails this request, not the worker.
        let result = catch_unwind(AssertUnwindSafe(|| {
            self.converse(handle, dst, port, request, timeout)
        }))
        .unwrap_or_else(|panic| Err(device_failure(&panic, dst)));
        let socket = self.sockets.get_mut::<tcp::Socket>(handle);
        if !matches!(socket.state(), State::Closed | State::TimeWait) {
            // Unfinished: say so to the peer (one RST) instead of leaving it half-open.
            socket.abort();
            let _ = catch_unwind(AssertUnwindSafe(|| self.poll()));
        }
        self.sockets.remove(handle);
        result.map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Drives the socket through connect, send, read and close.
    fn converse(
        &mut self,
        handle: SocketHandle,
        dst: SocketAddrV4,
        port: u16,
        request: &[u8],
        timeout: Duration,
    ) -> anyhow::Result<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut close_by: Option<Instant> = None;
        let mut established = false;
        let mut sent = 0;
        let mut reply = Vec::new();
        let mut chunk = [0u8; 4096];
        for _ in 0..MAX_TURNS {
            self.poll();
            let now = Instant::now();
            let socket = self.sockets.get_mut::<tcp::Socket>(handle);
            let state = socket.state();
            if !established {
                if let Some(code) = self.device.unreachable_for(port, dst) {
                    return Err(TcpFailure::Unreachable { dst, code }.into());
                }
                match state {
                    State::Closed => return Err(TcpFailure::Refused { dst }.into()),
                    State::SynSent | State::SynReceived if now >= deadline => {
                        let phase = "connect";
                        return Err(TcpFailure::TimedOut { dst, phase }.into());
                    }
                    State::SynSent | State::SynReceived => {}
                    _ => established = true,
                }
            }
            if established && close_by.is_none() {
                while sent < request.len() && socket.can_send() {
                    sent += socket
                        .send_slice(&request[sent..])
                        .map_err(|e| anyhow!("send to {dst}: {e}"))?;
                }
                while socket.can_recv() && reply.len() < MAX_REPLY {
                    let n = socket
                        .recv_slice(&mut chunk)
                        .map_err(|e| anyhow!("receive from {dst}: {e}"))?;
                    reply.extend_from_slice(&chunk[..n]);
                }
                let peer_done = !socket.may_recv();
                if state == State::Closed && reply.is_empty() {
                    return Err(TcpFailure::Reset { dst }.into());
                }
                if reply.contains(&b'\n') || peer_done || reply.len() >= MAX_REPLY {
                    socket.close();
                    close_by = Some(now + CLOSE_LIMIT);
                    continue; // poll at once: the FIN goes out
                }
                if now >= deadline {
                    let phase = "reply";
                    return Err(TcpFailure::TimedOut { dst, phase }.into());
                }
            }
            if let Some(by) = close_by
                && (matches!(state, State::Closed | State::TimeWait) || now >= by)
            {
                return Ok(reply); // past the limit, `request` aborts the socket
            }
            let until = close_by.unwrap_or(deadline);
            self.wait(until.saturating_duration_since(now))?;
        }
        bail!("{dst}: more than {MAX_TURNS} poll turns")
    }

    /// Processes everything the device has and sends what the sockets have.
    fn poll(&mut self) {
        self.iface
            .poll(SmolInstant::now(), &mut self.device, &mut self.sockets);
    }

    /// Waits for the device or smoltcp's next timer, at most `left` and [`MAX_WAIT`].
    fn wait(&mut self, left: Duration) -> anyhow::Result<()> {
        let timer = self
            .iface
            .poll_delay(SmolInstant::now(), &self.sockets)
            .map(|d| Duration::from_micros(d.total_micros()))
            .unwrap_or(MAX_WAIT);
        let wait = timer.min(MAX_WAIT).min(left);
        let wait = SmolDuration::from_micros(wait.as_micros() as u64);
        phy::wait(self.fd, Some(wait)).context("waiting on the TUN device")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_ports_cycle_through_the_ephemeral_range() {
        let ports: Vec<u16> = (0..EPHEMERAL_COUNT).map(|_| next_local_port()).collect();
        let distinct: std::collections::HashSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), usize::from(EPHEMERAL_COUNT));
        assert!(ports.iter().all(|&p| p >= EPHEMERAL_START));
    }
}
