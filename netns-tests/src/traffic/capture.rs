//! Captures on an interface inside a namespace: which IPv4 TCP/UDP packets pass it, with
//! which addresses.
//!
//! A [`Capture`] names an interface in a (node) namespace and a [`Direction`];
//! [`Capture::start`] opens it and returns a [`RunningCapture`] once the socket is bound, so
//! that traffic sent afterwards is seen; [`RunningCapture::finish`] returns the [`Seen`]
//! packets the filter accepted. [`capture_only`] is the blocking form, for "nothing of this
//! kind passes here" checks; [`send_and_capture`](super::probe::send_and_capture) combines a
//! capture with crafted probes.
//!
//! # How
//!
//! - A pnet datalink channel, opened on a thread inside the namespace. Its `AF_PACKET` socket
//!   is made here with protocol 0: it receives nothing until pnet binds it to the interface
//!   (with `ETH_P_ALL`), so no frame of another interface queued before the bind slips in.
//! - The socket gets an 8 MiB receive buffer (`SO_RCVBUFFORCE`; the default holds only a few
//!   hundred small frames), no promiscuous mode (a capture must not change the bridge it
//!   watches) and, unless [`Direction::Both`], a classic BPF filter on the packet type, so
//!   [`Direction::Outgoing`] means exactly "transmitted by this interface" (pnet itself does
//!   not report a frame's direction).
//! - Frames are Ethernet, or bare IP on point-to-point devices (TUN). Only first fragments
//!   are parsed; ARP, IPv6 and other protocols are skipped.
//! - Reads time out every 20 ms, so a stop request is seen quickly; a capture also ends after
//!   two minutes or two million frames, whatever its caller does.

use std::collections::HashSet;
use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::libc;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, setsockopt, socket, sockopt};
use pnet::datalink::{self, Channel, DataLinkReceiver};
use pnet::packet::Packet;
use pnet::packet::ethernet::{EtherTypes, EthernetPacket};
use pnet::packet::ip::IpNextHeaderProtocols;
use pnet::packet::ipv4::Ipv4Packet;
use pnet::packet::tcp::{TcpFlags, TcpPacket};
use pnet::packet::udp::UdpPacket;

use super::probe::ProbeProtocol;
use crate::netns::Netns;

/// How long a capture reads after every expected source was seen, for late duplicates.
const GRACE: Duration = Duration::from_millis(50);
/// The longest any capture runs, whatever its caller does.
const MAX_CAPTURE: Duration = Duration::from_secs(120);
/// The most frames one capture reads.
const MAX_FRAMES: usize = 2_000_000;
/// One read waits at most this long, so stop requests are noticed quickly.
const READ_TIMEOUT: Duration = Duration::from_millis(20);
/// The capture socket's receive buffer (set with `SO_RCVBUFFORCE`, root only).
const CAPTURE_BUFFER: usize = 8 << 20;

/// Which frames of an interface a capture sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Frames the interface transmits (leaving the namespace).
    Outgoing,
    /// Frames the interface receives.
    Incoming,
    /// Both.
    Both,
}

/// Where to capture: an interface inside a (node) namespace.
#[derive(Debug, Clone)]
pub struct Capture<'a> {
    /// The namespace holding the interface.
    pub ns: &'a Netns,
    /// The interface's name in that namespace (e.g. `eth0`, a veth towards another node).
    pub interface: String,
    /// Which direction of traffic to record.
    pub direction: Direction,
}

impl<'a> Capture<'a> {
    /// Captures what leaves `ns` through `interface`.
    pub fn outgoing(ns: &'a Netns, interface: &str) -> Self {
        Capture {
            ns,
            interface: interface.to_owned(),
            direction: Direction::Outgoing,
        }
    }

    /// Captures what arrives in `ns` through `interface`.
    pub fn incoming(ns: &'a Netns, interface: &str) -> Self {
        Capture {
            ns,
            interface: interface.to_owned(),
            direction: Direction::Incoming,
        }
    }

    /// Opens the capture and starts recording the IPv4 TCP/UDP packets `filter` accepts.
    /// The socket is bound when this returns, so traffic sent afterwards is seen.
    pub fn start<F>(&self, filter: F) -> anyhow::Result<RunningCapture>
    where
        F: FnMut(&Seen) -> bool + Send + 'static,
    {
        self.start_expecting(filter, None)
    }

    /// Like [`start`](Self::start); with `expected_sources`, the capture ends early (after a
    /// short grace) once that many distinct sources were recorded and a stop was requested.
    pub(super) fn start_expecting<F>(
        &self,
        filter: F,
        expected_sources: Option<usize>,
    ) -> anyhow::Result<RunningCapture>
    where
        F: FnMut(&Seen) -> bool + Send + 'static,
    {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel();
        let interface = self.interface.clone();
        let direction = self.direction;
        let thread = self.ns.spawn(move || {
            let opened = open_capture(&interface, direction);
            let (rx, link) = match opened {
                Ok(ok) => {
                    let _ = ready_tx.send(Ok(()));
                    ok
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("{e:#}")));
                    return Err(e);
                }
            };
            capture_loop(rx, link, filter, expected_sources, &stop_rx)
        })?;
        let what = format!("capture on {} in {}", self.interface, self.ns.name());
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => Ok(RunningCapture {
                stop: Some(stop_tx),
                thread: Some(thread),
                what,
            }),
            Ok(Err(e)) => bail!("{what}: {e}"),
            Err(_) => bail!("{what} did not open within 5 s"),
        }
    }
}

/// A capture in progress; [`finish`](Self::finish) it to get what was seen (dropping it
/// stops it and discards the packets).
#[derive(Debug)]
pub struct RunningCapture {
    stop: Option<mpsc::Sender<Instant>>,
    thread: Option<JoinHandle<anyhow::Result<Vec<Seen>>>>,
    what: String,
}

impl RunningCapture {
    /// Keeps reading for `linger` more, then returns the recorded packets in arrival order.
    pub fn finish(mut self, linger: Duration) -> anyhow::Result<Vec<Seen>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(Instant::now() + linger);
        }
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result.with_context(|| self.what.clone()),
            Some(Err(_)) => bail!("{} panicked", self.what),
            None => bail!("{} was already finished", self.what),
        }
    }
}

impl Drop for RunningCapture {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One captured IPv4 TCP segment or UDP datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Seen {
    /// Source address and port as captured.
    pub src: SocketAddrV4,
    /// Destination address and port as captured (after any DNAT done before this point).
    pub dst: SocketAddrV4,
    /// [`ProbeProtocol::TcpSyn`] for every TCP segment, [`ProbeProtocol::Udp`] for UDP.
    pub protocol: ProbeProtocol,
    /// The TCP flags (`pnet::packet::tcp::TcpFlags`); 0 for UDP.
    pub tcp_flags: u8,
}

impl Seen {
    /// A connection request: a TCP segment with SYN and without ACK.
    pub fn is_syn(&self) -> bool {
        self.protocol == ProbeProtocol::TcpSyn
            && self.tcp_flags & TcpFlags::SYN != 0
            && self.tcp_flags & TcpFlags::ACK == 0
    }
}

/// Records for `duration` the packets passing `capture` that `filter` accepts, for
/// "nothing of this kind passes here" assertions. It blocks: send the traffic from another
/// thread, or use [`Capture::start`] and [`RunningCapture::finish`] around it.
pub fn capture_only<F>(
    capture: &Capture<'_>,
    duration: Duration,
    filter: F,
) -> anyhow::Result<Vec<Seen>>
where
    F: FnMut(&Seen) -> bool + Send + 'static,
{
    capture.start(filter)?.finish(duration)
}

/// How frames of an interface start.
#[derive(Debug, Clone, Copy)]
pub(super) enum Link {
    /// An Ethernet header (veth, bridge, loopback).
    Ethernet,
    /// The IP header itself (TUN and other point-to-point devices).
    RawIp,
}

/// Opens a datalink channel on `name` in the current thread's namespace.
fn open_capture(
    name: &str,
    direction: Direction,
) -> anyhow::Result<(Box<dyn DataLinkReceiver>, Link)> {
    let interface = datalink::interfaces()
        .into_iter()
        .find(|i| i.name == name)
        .with_context(|| format!("no interface {name}"))?;
    let link = if interface.is_point_to_point() {
        Link::RawIp
    } else {
        Link::Ethernet
    };
    let fd = packet_socket(direction)?;
    let config = datalink::Config {
        read_buffer_size: 65_600,
        read_timeout: Some(READ_TIMEOUT),
        promiscuous: false,
        // pnet owns (and closes) the descriptor from here on, also when binding fails.
        socket_fd: Some(fd.into_raw_fd()),
        ..datalink::Config::default()
    };
    match datalink::channel(&interface, config) {
        Ok(Channel::Ethernet(_tx, rx)) => Ok((rx, link)),
        Ok(_) => bail!("unexpected datalink channel type on {name}"),
        Err(e) => Err(e).with_context(|| format!("binding a packet socket to {name}")),
    }
}

/// An unbound `AF_PACKET` socket that receives nothing until bound, with a large buffer and,
/// unless `Both`, a BPF filter keeping one direction.
fn packet_socket(direction: Direction) -> anyhow::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Packet,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("socket(AF_PACKET) (needs root)")?;
    setsockopt(&fd, sockopt::RcvBufForce, &CAPTURE_BUFFER).context("SO_RCVBUFFORCE")?;
    // Classic BPF: load the packet type, keep or drop PACKET_OUTGOING.
    const LD_B_ABS: u16 = 0x30; // BPF_LD | BPF_B | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    let (jt, jf) = match direction {
        Direction::Both => return Ok(fd),
        Direction::Outgoing => (0, 1),
        Direction::Incoming => (1, 0),
    };
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let mut program = [
        op(
            LD_B_ABS,
            0,
            0,
            (libc::SKF_AD_OFF + libc::SKF_AD_PKTTYPE) as u32,
        ),
        op(JEQ_K, jt, jf, u32::from(libc::PACKET_OUTGOING)),
        op(RET_K, 0, 0, u32::MAX),
        op(RET_K, 0, 0, 0),
    ];
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: `fprog` points at `program`, both alive for the call; the kernel copies the
    // program and checks it. `fd` is a valid socket owned by this function.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("SO_ATTACH_FILTER");
    }
    Ok(fd)
}

/// Reads frames until stopped: see [`Capture::start_expecting`].
fn capture_loop<F>(
    mut rx: Box<dyn DataLinkReceiver>,
    link: Link,
    mut filter: F,
    expected_sources: Option<usize>,
    stop: &mpsc::Receiver<Instant>,
) -> anyhow::Result<Vec<Seen>>
where
    F: FnMut(&Seen) -> bool,
{
    let started = Instant::now();
    let mut stop_at: Option<Instant> = None;
    let mut seen = Vec::new();
    let mut sources = HashSet::new();
    for _ in 0..MAX_FRAMES {
        let now = Instant::now();
        match stop.try_recv() {
            Ok(at) => stop_at = Some(at),
            Err(mpsc::TryRecvError::Disconnected) => stop_at = stop_at.or(Some(now)),
            Err(mpsc::TryRecvError::Empty) => {}
        }
        if let (Some(at), Some(n)) = (stop_at, expected_sources)
            && sources.len() >= n
        {
            stop_at = Some(at.min(now + GRACE));
        }
        if stop_at.is_some_and(|at| now >= at) || now - started > MAX_CAPTURE {
            break;
        }
        match rx.next() {
            Ok(frame) => {
                if let Some(packet) = parse(frame, link).filter(|p| filter(p)) {
                    sources.insert(packet.src);
                    seen.push(packet);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::TimedOut | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e).context("reading captured frames"),
        }
    }
    Ok(seen)
}

/// The IPv4 TCP or UDP header of a frame, if it has one (first fragments only).
pub(super) fn parse(frame: &[u8], link: Link) -> Option<Seen> {
    let ip_bytes = match link {
        Link::RawIp => frame,
        Link::Ethernet => {
            let eth = EthernetPacket::new(frame)?;
            if eth.get_ethertype() != EtherTypes::Ipv4 {
                return None;
            }
            &frame[EthernetPacket::minimum_packet_size()..]
        }
    };
    let ip = Ipv4Packet::new(ip_bytes)?;
    if ip.get_version() != 4 || ip.get_fragment_offset() != 0 {
        return None;
    }
    let (src, dst) = (ip.get_source(), ip.get_destination());
    let payload = ip.payload();
    let (sport, dport, protocol, tcp_flags) = match ip.get_next_level_protocol() {
        IpNextHeaderProtocols::Tcp => {
            let seg = TcpPacket::new(payload)?;
            let ports = (seg.get_source(), seg.get_destination());
            (ports.0, ports.1, ProbeProtocol::TcpSyn, seg.get_flags())
        }
        IpNextHeaderProtocols::Udp => {
            let dgram = UdpPacket::new(payload)?;
            let ports = (dgram.get_source(), dgram.get_destination());
            (ports.0, ports.1, ProbeProtocol::Udp, 0)
        }
        _ => return None,
    };
    Some(Seen {
        src: SocketAddrV4::new(src, sport),
        dst: SocketAddrV4::new(dst, dport),
        protocol,
        tcp_flags,
    })
}
