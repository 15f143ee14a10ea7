//! ICMP and ICMPv6 errors about NATed flows, translated like the kernel's conntrack does.
//!
//! An error (destination unreachable, time exceeded, parameter problem, ICMPv6 packet too
//! big) quotes the header of the packet that caused it. For a NATed flow that quoted packet
//! carries translated addresses the other end never saw, so the error is useless (or, for
//! "fragmentation needed", harmful: path MTU discovery breaks) unless it is translated back:
//! the quoted tuple is reversed into a flow key, looked up, and both the quoted header and
//! the outer addresses are rewritten to what the receiver of the error knows. The quoted
//! IPv4 header checksum and the ICMP checksum are recomputed (the message is at most a few
//! hundred bytes); the quoted transport checksum, when quoted, is patched incrementally.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use super::checksum;
use super::conntrack::{Conntrack, Direction, FlowKey};
use super::packet::{PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, PacketMeta, fill_checksums};

/// Whether `meta` is an ICMP/ICMPv6 error message.
pub fn is_error(buf: &[u8], meta: &PacketMeta) -> bool {
    let Some(kind) = buf.get(meta.l4_offset) else {
        return false;
    };
    match meta.proto {
        PROTO_ICMP => matches!(kind, 3 | 4 | 5 | 11 | 12),
        PROTO_ICMPV6 => (1..=4).contains(kind),
        _ => false,
    }
}

/// The quoted packet's header: where it starts, its addresses, protocol and ports.
#[derive(Debug, Clone, Copy)]
struct Quoted {
    at: usize,
    l4_at: usize,
    proto: u8,
    src: SocketAddr,
    dst: SocketAddr,
}

fn quoted(buf: &[u8], meta: &PacketMeta) -> Option<Quoted> {
    let at = meta.l4_offset + 8;
    let q = buf.get(at..meta.len)?;
    let (src, dst, proto, hl) = match q.first()? >> 4 {
        4 => {
            let hl = usize::from(q[0] & 0x0f) * 4;
            let s: [u8; 4] = q.get(12..16)?.try_into().ok()?;
            let d: [u8; 4] = q.get(16..20)?.try_into().ok()?;
            (
                IpAddr::V4(Ipv4Addr::from(s)),
                IpAddr::V4(Ipv4Addr::from(d)),
                *q.get(9)?,
                hl,
            )
        }
        6 => {
            let s: [u8; 16] = q.get(8..24)?.try_into().ok()?;
            let d: [u8; 16] = q.get(24..40)?.try_into().ok()?;
            (
                IpAddr::V6(Ipv6Addr::from(s)),
                IpAddr::V6(Ipv6Addr::from(d)),
                *q.get(6)?,
                40,
            )
        }
        _ => return None,
    };
    if hl < 20 || !(proto == PROTO_TCP || proto == PROTO_UDP) {
        return None;
    }
    let ports = q.get(hl..hl + 4)?;
    Some(Quoted {
        at,
        l4_at: at + hl,
        proto,
        src: SocketAddr::new(src, u16::from_be_bytes([ports[0], ports[1]])),
        dst: SocketAddr::new(dst, u16::from_be_bytes([ports[2], ports[3]])),
    })
}

/// Translates an ICMP error about a tracked flow in place; `false` when it concerns no
/// tracked flow (the buffer is then unchanged).
pub fn translate_error(
    buf: &mut [u8],
    meta: &mut PacketMeta,
    conntrack: &Conntrack,
    now: Duration,
) -> bool {
    let Some(q) = quoted(buf, meta).filter(|q| q.src.is_ipv4() == meta.src.is_ipv4()) else {
        return false;
    };
    let key = FlowKey {
        proto: q.proto,
        src: q.dst,
        dst: q.src,
    };
    let Some((_, dir, flow)) = conntrack.lookup(&key, now) else {
        return false;
    };
    // The quoted packet travelled opposite to the error; rewrite it (and the outer header)
    // to how the error's receiver saw that packet.
    let (q_src, q_dst, outer_dst, far_from, far_to) = match dir {
        Direction::Reply => (
            flow.original.src,
            flow.original.dst,
            flow.original.src.ip(),
            flow.reply.src.ip(),
            flow.original.dst.ip(),
        ),
        Direction::Original => (
            flow.reply.dst,
            flow.reply.src,
            flow.reply.src.ip(),
            flow.original.src.ip(),
            flow.reply.dst.ip(),
        ),
    };
    let v4 = meta.src.is_ipv4();
    let (s_at, d_at, alen) = if v4 { (12, 16, 4) } else { (8, 24, 16) };
    // Quoted header: addresses, then ports (patching the quoted transport checksum if it is
    // inside the quote), then the quoted IPv4 header checksum.
    let sum_at = q.l4_at + if q.proto == PROTO_TCP { 16 } else { 6 };
    for (off, new) in [(q.at + s_at, q_src), (q.at + d_at, q_dst)] {
        let bytes = ip_bytes(new.ip());
        let mut old = [0u8; 16];
        old[..alen].copy_from_slice(&buf[off..off + alen]);
        buf[off..off + alen].copy_from_slice(&bytes[..alen]);
        patch(buf, sum_at, meta.len, &old[..alen], &bytes[..alen]);
    }
    for (off, port) in [(q.l4_at, q_src.port()), (q.l4_at + 2, q_dst.port())] {
        let old = [buf[off], buf[off + 1]];
        buf[off..off + 2].copy_from_slice(&port.to_be_bytes());
        patch(buf, sum_at, meta.len, &old, &port.to_be_bytes());
    }
    if v4 {
        let hl = q.l4_at - q.at;
        buf[q.at + 10..q.at + 12].copy_from_slice(&[0, 0]);
        let c = checksum::checksum(&buf[q.at..q.at + hl]);
        buf[q.at + 10..q.at + 12].copy_from_slice(&c.to_be_bytes());
    }
    // Outer header: the error goes to the other end; if the far end generated it, it now
    // comes from the address the receiver knows.
    let outer_src = if meta.src == far_from {
        far_to
    } else {
        meta.src
    };
    buf[s_at..s_at + alen].copy_from_slice(&ip_bytes(outer_src)[..alen]);
    buf[d_at..d_at + alen].copy_from_slice(&ip_bytes(outer_dst)[..alen]);
    meta.src = outer_src;
    meta.dst = outer_dst;
    fill_checksums(buf, meta);
    true
}

fn ip_bytes(ip: IpAddr) -> [u8; 16] {
    let mut b = [0u8; 16];
    match ip {
        IpAddr::V4(a) => b[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => b.copy_from_slice(&a.octets()),
    }
    b
}

fn patch(buf: &mut [u8], at: usize, end: usize, old: &[u8], new: &[u8]) {
    if at + 2 > end {
        return;
    }
    let stored = u16::from_be_bytes([buf[at], buf[at + 1]]);
    if stored == 0 {
        return;
    }
    let c = checksum::update(stored, old, new);
    buf[at..at + 2].copy_from_slice(&c.to_be_bytes());
}
