//! Crafted probe packets and captures: where does the DNAT happen?
//!
//! kube-proxy promises that a packet to a ClusterIP is DNATed to an endpoint **on the node
//! where it starts**. [`send_and_capture`] checks exactly that: it sends [`Probe`] packets
//! (TCP SYNs or UDP datagrams built with [`pnet::packet`], correct checksums, a random source
//! port per packet) from a pod namespace through a raw IPv4 socket, and captures on a node's
//! interface ([`Capture`]) which of those packets leave it and with which destination. The
//! captured destination must be one of the endpoints, never the ClusterIP.
//!
//! ```no_run
//! # use kproxy_netns_tests::{netns::Netns, traffic::probe::*};
//! # fn demo(pod: &Netns, node: &Netns) -> anyhow::Result<()> {
//! let probe = Probe {
//!     from: pod,
//!     src: "10.1.0.2".parse()?,
//!     dst: "10.96.0.1:80".parse()?,
//!     protocol: ProbeProtocol::TcpSyn,
//!     count: 20,
//! };
//! let seen = send_and_capture(&probe, &Capture::outgoing(node, "eth0"))?;
//! assert!(seen.iter().all(|s| s.dst.ip().octets() != [10, 96, 0, 1]));
//! # Ok(()) }
//! ```
//!
//! # How
//!
//! - **Sending**: a pnet layer-3 transport channel (`SOCK_RAW` with `IP_HDRINCL`) created on a
//!   thread inside the pod's namespace. The kernel routes the packet as it routes the pod's
//!   own traffic, so it passes the pod's `nat OUTPUT` and the node's `nat PREROUTING`, and
//!   conntrack sees a new flow per probe. Packets are paced (a pause every few dozen) so the
//!   receiving veth's backlog does not drop them.
//! - **Capturing**: a [`Capture`] (see [`super::capture`]) on the interface, opened on a
//!   thread inside the node's namespace **before** the first probe is sent; with
//!   [`Direction::Outgoing`] it records only what the interface transmits.
//! - **Matching**: a probe flow is its source address and source port, drawn at random and
//!   distinct within a batch; everything else on the wire (ARP, replies, the RST the pod's
//!   kernel sends for an unexpected SYN-ACK) is ignored. The capture stops shortly after every
//!   flow was seen, or [`LINGER`] after the last send, whichever comes first.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use anyhow::{Context, ensure};
use pnet::packet::ip::IpNextHeaderProtocols;
use pnet::packet::ipv4::{self, Ipv4Flags, Ipv4Packet, MutableIpv4Packet};
use pnet::packet::tcp::{self, MutableTcpPacket, TcpFlags};
use pnet::packet::udp::{self, MutableUdpPacket};
use pnet::transport::{TransportChannelType, transport_channel};

pub use super::capture::{Capture, Direction, RunningCapture, Seen, capture_only};
use super::random::SplitMix64;
use crate::netns::Netns;

/// How long a capture keeps reading after the last probe was sent (when not every flow was
/// seen earlier).
pub const LINGER: Duration = Duration::from_secs(1);
/// The largest batch one [`Probe`] may send.
pub const MAX_PROBES: usize = 10_000;
/// A pause after this many probes, so that a veth backlog never overflows.
const PACE_EVERY: usize = 32;
/// Source ports of probes are drawn from the kernel's default ephemeral range.
const PROBE_PORTS: std::ops::Range<u16> = 32768..61000;
/// The payload of UDP probes.
const UDP_PAYLOAD: &[u8] = b"kproxy-probe\n";

/// What a probe packet is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeProtocol {
    /// A TCP segment with only SYN set (in a [`Seen`], any TCP segment: see
    /// [`Seen::tcp_flags`]).
    TcpSyn,
    /// A UDP datagram with a short payload.
    Udp,
}

/// A batch of crafted packets from one pod to one destination.
#[derive(Debug, Clone)]
pub struct Probe<'a> {
    /// The pod's namespace: the packets are sent from a raw socket inside it.
    pub from: &'a Netns,
    /// The source address written into every packet (the pod's IP).
    pub src: Ipv4Addr,
    /// The destination, typically a ClusterIP and service port.
    pub dst: SocketAddrV4,
    /// TCP SYN or UDP.
    pub protocol: ProbeProtocol,
    /// How many packets, each with its own random source port (1..=[`MAX_PROBES`]).
    pub count: usize,
}

/// Sends the probe packets and returns those of the probe's flows seen passing the capture
/// (for TCP only the SYNs themselves). Returns after every flow was seen, or [`LINGER`]
/// after the last send; a flow that never passed the capture is simply absent.
pub fn send_and_capture(probe: &Probe<'_>, capture: &Capture<'_>) -> anyhow::Result<Vec<Seen>> {
    ensure!(
        (1..=MAX_PROBES).contains(&probe.count),
        "a probe sends 1..={MAX_PROBES} packets, not {}",
        probe.count
    );
    let mut rng = SplitMix64::new();
    let ports = distinct_ports(&mut rng, probe.count)?;
    let packets = ports
        .iter()
        .map(|&port| {
            craft(
                probe.protocol,
                SocketAddrV4::new(probe.src, port),
                probe.dst,
                &mut rng,
            )
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let flows: HashSet<SocketAddrV4> = ports
        .iter()
        .map(|&port| SocketAddrV4::new(probe.src, port))
        .collect();
    let protocol = probe.protocol;
    let matches = move |s: &Seen| {
        flows.contains(&s.src)
            && s.protocol == protocol
            && (protocol == ProbeProtocol::Udp || s.is_syn())
    };
    let running = capture.start_expecting(matches, Some(probe.count))?;
    let dst = *probe.dst.ip();
    probe
        .from
        .run_in(move || send_packets(protocol, dst, &packets))
        .with_context(|| format!("sending probes from {} to {}", probe.from.name(), probe.dst))?;
    running.finish(LINGER)
}

/// `count` distinct random source ports.
fn distinct_ports(rng: &mut SplitMix64, count: usize) -> anyhow::Result<Vec<u16>> {
    let mut taken = HashSet::with_capacity(count);
    let mut ports = Vec::with_capacity(count);
    for _ in 0..count.saturating_mul(20) {
        if ports.len() == count {
            break;
        }
        let port = rng.in_range(PROBE_PORTS);
        if taken.insert(port) {
            ports.push(port);
        }
    }
    ensure!(
        ports.len() == count,
        "could not draw {count} distinct ports"
    );
    Ok(ports)
}

/// One probe packet, IPv4 header included.
fn craft(
    protocol: ProbeProtocol,
    from: SocketAddrV4,
    to: SocketAddrV4,
    rng: &mut SplitMix64,
) -> anyhow::Result<Vec<u8>> {
    const IP_HEADER: usize = 20;
    let (transport_len, next) = match protocol {
        ProbeProtocol::TcpSyn => (20, IpNextHeaderProtocols::Tcp),
        ProbeProtocol::Udp => (8 + UDP_PAYLOAD.len(), IpNextHeaderProtocols::Udp),
    };
    let (src, dst) = (*from.ip(), *to.ip());
    let mut buf = vec![0u8; IP_HEADER + transport_len];
    let transport = &mut buf[IP_HEADER..];
    match protocol {
        ProbeProtocol::TcpSyn => {
            let mut seg = MutableTcpPacket::new(transport).context("TCP buffer")?;
            seg.set_source(from.port());
            seg.set_destination(to.port());
            seg.set_sequence(rng.next_u32());
            seg.set_data_offset(5);
            seg.set_flags(TcpFlags::SYN);
            seg.set_window(64240);
            let sum = tcp::ipv4_checksum(&seg.to_immutable(), &src, &dst);
            seg.set_checksum(sum);
        }
        ProbeProtocol::Udp => {
            let mut dgram = MutableUdpPacket::new(transport).context("UDP buffer")?;
            dgram.set_source(from.port());
            dgram.set_destination(to.port());
            dgram.set_length(transport_len as u16);
            dgram.set_payload(UDP_PAYLOAD);
            let sum = udp::ipv4_checksum(&dgram.to_immutable(), &src, &dst);
            dgram.set_checksum(sum);
        }
    }
    let mut ip = MutableIpv4Packet::new(&mut buf).context("IPv4 buffer")?;
    ip.set_version(4);
    ip.set_header_length(5);
    ip.set_total_length((IP_HEADER + transport_len) as u16);
    ip.set_identification(rng.next_u32() as u16);
    ip.set_flags(Ipv4Flags::DontFragment);
    ip.set_ttl(64);
    ip.set_next_level_protocol(next);
    ip.set_source(src);
    ip.set_destination(dst);
    let sum = ipv4::checksum(&ip.to_immutable());
    ip.set_checksum(sum);
    Ok(buf)
}

/// Sends crafted packets through a raw socket of the current thread's namespace.
fn send_packets(protocol: ProbeProtocol, dst: Ipv4Addr, packets: &[Vec<u8>]) -> anyhow::Result<()> {
    let next = match protocol {
        ProbeProtocol::TcpSyn => IpNextHeaderProtocols::Tcp,
        ProbeProtocol::Udp => IpNextHeaderProtocols::Udp,
    };
    let (mut tx, _rx) = transport_channel(4096, TransportChannelType::Layer3(next))
        .context("opening a raw IPv4 socket (needs root)")?;
    for (i, bytes) in packets.iter().enumerate() {
        let packet = Ipv4Packet::new(bytes).context("crafted packet too short")?;
        tx.send_to(packet, IpAddr::V4(dst))
            .with_context(|| format!("sending probe {i}"))?;
        if (i + 1) % PACE_EVERY == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use pnet::packet::Packet;
    use pnet::packet::tcp::TcpPacket;
    use pnet::packet::udp::UdpPacket;

    use super::super::capture::{Link, parse};
    use super::*;

    #[test]
    fn crafted_packets_parse_back_with_valid_checksums() {
        let from = SocketAddrV4::new(Ipv4Addr::new(10, 1, 0, 2), 40000);
        let to = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 1), 80);
        let mut rng = SplitMix64::from_seed(1);
        for protocol in [ProbeProtocol::TcpSyn, ProbeProtocol::Udp] {
            let bytes = craft(protocol, from, to, &mut rng).expect("craft");
            let ip = Ipv4Packet::new(&bytes).expect("ip");
            assert_eq!(ipv4::checksum(&ip), ip.get_checksum());
            let seen = parse(&bytes, Link::RawIp).expect("parse");
            assert_eq!((seen.src, seen.dst, seen.protocol), (from, to, protocol));
            match protocol {
                ProbeProtocol::TcpSyn => {
                    assert!(seen.is_syn());
                    let seg = TcpPacket::new(ip.payload()).expect("tcp");
                    let sum = tcp::ipv4_checksum(&seg, from.ip(), to.ip());
                    assert_eq!(sum, seg.get_checksum());
                }
                ProbeProtocol::Udp => {
                    let dgram = UdpPacket::new(ip.payload()).expect("udp");
                    assert_eq!(dgram.payload(), UDP_PAYLOAD);
                    let sum = udp::ipv4_checksum(&dgram, from.ip(), to.ip());
                    assert_eq!(sum, dgram.get_checksum());
                }
            }
        }
    }

    #[test]
    fn ports_are_distinct() {
        let mut rng = SplitMix64::from_seed(3);
        let ports = distinct_ports(&mut rng, 5000).expect("ports");
        assert_eq!(ports.iter().collect::<HashSet<_>>().len(), 5000);
        assert!(ports.iter().all(|p| PROBE_PORTS.contains(p)));
    }
}
