//! Parsing and in-place NAT rewriting of IPv4/IPv6 TCP/UDP packets.
//!
//! After smoltcp's split: [`parse`] reads a raw buffer (the wire view) into a
//! [`PacketMeta`] (the representation: addresses, ports, protocol, offsets), and the
//! rewriters ([`set_source`], [`set_destination`]) patch the buffer in place, updating the IPv4
//! header checksum and the TCP/UDP checksum incrementally (RFC 1624; the pseudo-header covers
//! the addresses). Nothing here allocates.
//!
//! Handled: IPv4 without fragmentation (first fragments are parsed, later fragments are
//! [`PacketError::Fragment`]), IPv6 whose next header is TCP, UDP or ICMPv6 directly, and
//! ICMP/ICMPv6 (ports are zero for them). IPv4 UDP with checksum 0 ("none") keeps 0; a UDP
//! checksum that computes to 0 is sent as `0xffff` (RFC 768).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use thiserror::Error;

use super::checksum;

/// IP protocol number of ICMP.
pub const PROTO_ICMP: u8 = 1;
/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;
/// IP protocol number of ICMPv6.
pub const PROTO_ICMPV6: u8 = 58;

/// TCP flag FIN.
pub const TCP_FIN: u8 = 0x01;
/// TCP flag SYN.
pub const TCP_SYN: u8 = 0x02;
/// TCP flag RST.
pub const TCP_RST: u8 = 0x04;
/// TCP flag ACK.
pub const TCP_ACK: u8 = 0x10;

/// Why a buffer is not a packet the forwarder handles.
#[derive(Debug, Clone, Copy, Error, PartialEq, Eq)]
pub enum PacketError {
    /// Shorter than its headers claim.
    #[error("packet truncated: {len} bytes, headers need {need}")]
    Truncated {
        /// Bytes available.
        len: usize,
        /// Bytes the headers need.
        need: usize,
    },
    /// Not IP version 4 or 6.
    #[error("packet has IP version {0}")]
    Version(u8),
    /// A non-first IPv4 fragment (no transport header to translate).
    #[error("IPv4 fragment at offset {0}")]
    Fragment(u16),
    /// A transport protocol (or IPv6 extension header) the forwarder does not translate.
    #[error("unsupported IP protocol {0}")]
    Protocol(u8),
}

/// The parsed representation of a packet's headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketMeta {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol number (`PROTO_*`).
    pub proto: u8,
    /// Source port (0 for ICMP).
    pub src_port: u16,
    /// Destination port (0 for ICMP).
    pub dst_port: u16,
    /// TCP flags (0 for other protocols).
    pub tcp_flags: u8,
    /// Offset of the transport header.
    pub l4_offset: usize,
    /// Total packet length per the IP header.
    pub len: usize,
}

impl PacketMeta {
    /// Source address and port.
    pub fn source(&self) -> SocketAddr {
        SocketAddr::new(self.src, self.src_port)
    }

    /// Destination address and port.
    pub fn destination(&self) -> SocketAddr {
        SocketAddr::new(self.dst, self.dst_port)
    }

    /// Offset of the transport checksum, if the protocol has one we translate.
    fn l4_checksum_offset(&self) -> Option<usize> {
        match self.proto {
            PROTO_TCP => Some(self.l4_offset + 16),
            PROTO_UDP => Some(self.l4_offset + 6),
            _ => None,
        }
    }
}

fn need(buf: &[u8], n: usize) -> Result<(), PacketError> {
    if buf.len() < n {
        Err(PacketError::Truncated {
            len: buf.len(),
            need: n,
        })
    } else {
        Ok(())
    }
}

fn be16(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}

/// Parses the IP and transport headers of `buf`.
pub fn parse(buf: &[u8]) -> Result<PacketMeta, PacketError> {
    need(buf, 1)?;
    let (src, dst, proto, l4_offset, len) = match buf[0] >> 4 {
        4 => {
            need(buf, 20)?;
            let ihl = usize::from(buf[0] & 0x0f) * 4;
            let len = usize::from(be16(buf, 2));
            need(buf, ihl.max(20).max(len))?;
            if ihl < 20 || len < ihl {
                return Err(PacketError::Truncated { len, need: ihl });
            }
            let frag = be16(buf, 6) & 0x1fff;
            if frag != 0 {
                return Err(PacketError::Fragment(frag * 8));
            }
            let src = Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]);
            let dst = Ipv4Addr::new(buf[16], buf[17], buf[18], buf[19]);
            (IpAddr::V4(src), IpAddr::V4(dst), buf[9], ihl, len)
        }
        6 => {
            need(buf, 40)?;
            let len = 40 + usize::from(be16(buf, 4));
            need(buf, len)?;
            let mut s = [0u8; 16];
            let mut d = [0u8; 16];
            s.copy_from_slice(&buf[8..24]);
            d.copy_from_slice(&buf[24..40]);
            let next = buf[6];
            (
                IpAddr::V6(Ipv6Addr::from(s)),
                IpAddr::V6(Ipv6Addr::from(d)),
                next,
                40,
                len,
            )
        }
        v => return Err(PacketError::Version(v)),
    };
    let l4 = &buf[l4_offset..len];
    let (src_port, dst_port, tcp_flags) = match proto {
        PROTO_TCP => {
            need(l4, 20).map_err(|_| PacketError::Truncated {
                len,
                need: l4_offset + 20,
            })?;
            (be16(l4, 0), be16(l4, 2), l4[13])
        }
        PROTO_UDP => {
            need(l4, 8).map_err(|_| PacketError::Truncated {
                len,
                need: l4_offset + 8,
            })?;
            (be16(l4, 0), be16(l4, 2), 0)
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            need(l4, 8).map_err(|_| PacketError::Truncated {
                len,
                need: l4_offset + 8,
            })?;
            (0, 0, 0)
        }
        p => return Err(PacketError::Protocol(p)),
    };
    Ok(PacketMeta {
        src,
        dst,
        proto,
        src_port,
        dst_port,
        tcp_flags,
        l4_offset,
        len,
    })
}

/// Which end of the packet a rewrite changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Source,
    Destination,
}

/// Rewrites the source address and port of a parsed packet in place (SNAT / un-DNAT).
/// The new address must be of the packet's family.
pub fn set_source(buf: &mut [u8], meta: &mut PacketMeta, to: SocketAddr) -> bool {
    rewrite(buf, meta, End::Source, to)
}

/// Rewrites the destination address and port of a parsed packet in place (DNAT / un-SNAT).
/// The new address must be of the packet's family.
pub fn set_destination(buf: &mut [u8], meta: &mut PacketMeta, to: SocketAddr) -> bool {
    rewrite(buf, meta, End::Destination, to)
}

/// Shared rewrite; returns `false` (and changes nothing) on a family mismatch.
fn rewrite(buf: &mut [u8], meta: &mut PacketMeta, end: End, to: SocketAddr) -> bool {
    let (addr_at, port_at) = match (meta.src, end) {
        (IpAddr::V4(_), End::Source) => (12, 0),
        (IpAddr::V4(_), End::Destination) => (16, 2),
        (IpAddr::V6(_), End::Source) => (8, 0),
        (IpAddr::V6(_), End::Destination) => (24, 2),
    };
    let l4_sum_at = meta.l4_checksum_offset();
    match (meta.src, to.ip()) {
        (IpAddr::V4(_), IpAddr::V4(new)) => {
            let new = new.octets();
            let mut old = [0u8; 4];
            old.copy_from_slice(&buf[addr_at..addr_at + 4]);
            buf[addr_at..addr_at + 4].copy_from_slice(&new);
            let hc = checksum::update(be16(buf, 10), &old, &new);
            buf[10..12].copy_from_slice(&hc.to_be_bytes());
            if let Some(at) = l4_sum_at {
                patch_l4(buf, meta.proto, at, &old, &new, true);
            }
        }
        (IpAddr::V6(_), IpAddr::V6(new)) => {
            let new = new.octets();
            let mut old = [0u8; 16];
            old.copy_from_slice(&buf[addr_at..addr_at + 16]);
            buf[addr_at..addr_at + 16].copy_from_slice(&new);
            if let Some(at) = l4_sum_at {
                patch_l4(buf, meta.proto, at, &old, &new, false);
            }
        }
        _ => return false,
    }
    if let Some(at) = l4_sum_at {
        let p = meta.l4_offset + port_at;
        let old = [buf[p], buf[p + 1]];
        let new = to.port().to_be_bytes();
        buf[p..p + 2].copy_from_slice(&new);
        patch_l4(buf, meta.proto, at, &old, &new, meta.src.is_ipv4());
    }
    match end {
        End::Source => {
            meta.src = to.ip();
            if l4_sum_at.is_some() {
                meta.src_port = to.port();
            }
        }
        End::Destination => {
            meta.dst = to.ip();
            if l4_sum_at.is_some() {
                meta.dst_port = to.port();
            }
        }
    }
    true
}

/// Patches a TCP/UDP checksum at `at` for `old` → `new` bytes of its coverage.
fn patch_l4(buf: &mut [u8], proto: u8, at: usize, old: &[u8], new: &[u8], v4: bool) {
    let stored = be16(buf, at);
    if proto == PROTO_UDP && v4 && stored == 0 {
        return; // IPv4 UDP without checksum.
    }
    let mut sum = checksum::update(stored, old, new);
    if proto == PROTO_UDP && sum == 0 {
        sum = 0xffff;
    }
    buf[at..at + 2].copy_from_slice(&sum.to_be_bytes());
}

/// The transport checksum a packet should carry, recomputed over pseudo-header and
/// payload (for tests and for packets the forwarder builds itself).
pub fn transport_checksum(buf: &[u8], meta: &PacketMeta) -> u16 {
    let l4 = &buf[meta.l4_offset..meta.len];
    let mut acc = 0u32;
    match (meta.src, meta.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            acc = checksum::sum_words(acc, &s.octets());
            acc = checksum::sum_words(acc, &d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            acc = checksum::sum_words(acc, &s.octets());
            acc = checksum::sum_words(acc, &d.octets());
        }
        _ => {}
    }
    // ICMPv4 has no pseudo-header.
    if meta.proto == PROTO_ICMP {
        acc = 0;
    } else {
        acc = acc.wrapping_add(u32::from(meta.proto));
        acc = acc.wrapping_add(l4.len() as u32);
    }
    let sum_at = match meta.proto {
        PROTO_TCP => 16,
        PROTO_UDP => 6,
        _ => 2,
    };
    acc = checksum::sum_words(acc, &l4[..sum_at]);
    acc = checksum::sum_words(acc, &l4[sum_at + 2..]);
    let sum = checksum::finish(acc);
    if meta.proto == PROTO_UDP && sum == 0 {
        0xffff
    } else {
        sum
    }
}

/// Writes the recomputed transport checksum (and, for IPv4, the header checksum) into the
/// packet.
pub fn fill_checksums(buf: &mut [u8], meta: &PacketMeta) {
    if meta.src.is_ipv4() {
        buf[10..12].copy_from_slice(&[0, 0]);
        let hc = checksum::checksum(&buf[..meta.l4_offset]);
        buf[10..12].copy_from_slice(&hc.to_be_bytes());
    }
    let sum = transport_checksum(buf, meta);
    let at = meta.l4_offset
        + match meta.proto {
            PROTO_TCP => 16,
            PROTO_UDP => 6,
            _ => 2,
        };
    buf[at..at + 2].copy_from_slice(&sum.to_be_bytes());
}
