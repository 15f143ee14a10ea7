//! Building REJECT answers in a caller-provided buffer: a TCP RST for TCP, an ICMP/ICMPv6
//! port unreachable for UDP, sent from the service address back to the client — what the
//! kernel's `REJECT` target does for a service without endpoints. Nothing here allocates.

use std::net::IpAddr;

use super::packet::{PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PacketMeta, TCP_ACK, TCP_RST};
use super::packet::{fill_checksums, parse};

/// ICMPv4 answers quote at most this much (RFC 1812: total ≤ 576 bytes).
const ICMP4_MAX: usize = 576;
/// ICMPv6 answers stay within the minimum MTU (RFC 4443).
const ICMP6_MAX: usize = 1280;

/// Writes the IP header of an answer from `meta.dst` to `meta.src` into `out`; returns the
/// transport offset.
fn ip_header(out: &mut [u8], meta: &PacketMeta, proto: u8, l4_len: usize) -> Option<usize> {
    match (meta.dst, meta.src) {
        (IpAddr::V4(from), IpAddr::V4(to)) => {
            let total = u16::try_from(20 + l4_len).ok()?;
            let h = out.get_mut(..20)?;
            h.copy_from_slice(&[
                0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ]);
            h[2..4].copy_from_slice(&total.to_be_bytes());
            h[12..16].copy_from_slice(&from.octets());
            h[16..20].copy_from_slice(&to.octets());
            Some(20)
        }
        (IpAddr::V6(from), IpAddr::V6(to)) => {
            let payload = u16::try_from(l4_len).ok()?;
            let h = out.get_mut(..40)?;
            h[..4].copy_from_slice(&[0x60, 0, 0, 0]);
            h[4..6].copy_from_slice(&payload.to_be_bytes());
            h[6] = proto;
            h[7] = 64;
            h[8..24].copy_from_slice(&from.octets());
            h[24..40].copy_from_slice(&to.octets());
            Some(40)
        }
        _ => None,
    }
}

/// Writes the answer rejecting `packet` (parsed as `meta`) into `out`; returns its length,
/// or `None` for packets that get no answer (a RST, an ICMP message) or a too-small `out`.
pub fn write_reject(packet: &[u8], meta: &PacketMeta, out: &mut [u8]) -> Option<usize> {
    if meta.proto == PROTO_TCP {
        write_rst(packet, meta, out)
    } else if meta.proto == PROTO_ICMP || meta.proto == PROTO_ICMPV6 {
        None
    } else {
        write_port_unreachable(packet, meta, out)
    }
}

fn write_rst(packet: &[u8], meta: &PacketMeta, out: &mut [u8]) -> Option<usize> {
    if meta.tcp_flags & TCP_RST != 0 {
        return None;
    }
    let l4 = packet.get(meta.l4_offset..meta.len)?;
    let seq = u32::from_be_bytes(l4.get(4..8)?.try_into().ok()?);
    let ack = u32::from_be_bytes(l4.get(8..12)?.try_into().ok()?);
    let data_off = usize::from(l4.get(12)? >> 4) * 4;
    let payload = l4.len().saturating_sub(data_off) as u32;
    let syn_fin = u32::from(meta.tcp_flags & 0x03 != 0) + u32::from(meta.tcp_flags & 0x03 == 0x03);
    let at = ip_header(out, meta, PROTO_TCP, 20)?;
    let tcp = out.get_mut(at..at + 20)?;
    tcp.fill(0);
    tcp[0..2].copy_from_slice(&meta.dst_port.to_be_bytes());
    tcp[2..4].copy_from_slice(&meta.src_port.to_be_bytes());
    // RFC 793: answer an ACK with seq = its ack; anything else with seq 0, ack = seq + len.
    let (rseq, rack, flags) = if meta.tcp_flags & TCP_ACK != 0 {
        (ack, 0, TCP_RST)
    } else {
        (0, seq.wrapping_add(payload + syn_fin), TCP_RST | TCP_ACK)
    };
    tcp[4..8].copy_from_slice(&rseq.to_be_bytes());
    tcp[8..12].copy_from_slice(&rack.to_be_bytes());
    tcp[12] = 0x50;
    tcp[13] = flags;
    finish(out, at + 20)
}

fn write_port_unreachable(packet: &[u8], meta: &PacketMeta, out: &mut [u8]) -> Option<usize> {
    let (proto, kind, code, hdr, max) = if meta.src.is_ipv4() {
        (PROTO_ICMP, 3u8, 3u8, 20usize, ICMP4_MAX)
    } else {
        (PROTO_ICMPV6, 1u8, 4u8, 40usize, ICMP6_MAX)
    };
    let quote = meta
        .len
        .min(max - hdr - 8)
        .min(out.len().saturating_sub(hdr + 8));
    let at = ip_header(out, meta, proto, 8 + quote)?;
    out.get_mut(at..at + 8)?
        .copy_from_slice(&[kind, code, 0, 0, 0, 0, 0, 0]);
    out.get_mut(at + 8..at + 8 + quote)?
        .copy_from_slice(packet.get(..quote)?);
    finish(out, at + 8 + quote)
}

fn finish(out: &mut [u8], len: usize) -> Option<usize> {
    let meta = parse(out.get(..len)?).ok()?;
    fill_checksums(out, &meta);
    Some(len)
}
