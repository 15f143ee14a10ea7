//! A smoltcp device wrapper that notes ICMP destination-unreachable errors quoting a TCP
//! segment, on their way into the stack.
//!
//! smoltcp does not hand ICMP errors to TCP sockets: a SYN answered by iptables' default
//! `REJECT` (icmp-port-unreachable) or nftables' `reject` would be retransmitted until the
//! caller's deadline, indistinguishable from a drop. [`Watched`] looks at every received
//! packet before smoltcp consumes it and remembers the last few such errors, keyed by the
//! quoted local port and destination, for [`tcp_over_tun`](super::tcp_over_tun) to ask.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddrV4;
use std::rc::Rc;

use smoltcp::phy::{self, Device, DeviceCapabilities};
use smoltcp::time::Instant as SmolInstant;

/// How many ICMP errors are remembered.
const UNREACHABLE_LOG: usize = 64;

/// An ICMP destination-unreachable that quotes one of our TCP segments.
#[derive(Debug, Clone, Copy)]
pub(super) struct Unreachable {
    local_port: u16,
    dst: SocketAddrV4,
    code: u8,
}

/// A device that notes ICMP errors on their way into smoltcp (which ignores them for TCP).
pub(super) struct Watched<D> {
    inner: D,
    unreachable: Rc<RefCell<VecDeque<Unreachable>>>,
}

impl<D> Watched<D> {
    /// Wraps `inner`, remembering nothing yet.
    pub(super) fn new(inner: D) -> Self {
        Watched {
            inner,
            unreachable: Rc::default(),
        }
    }

    /// The ICMP code of an unreachable quoting a segment from `local_port` to `dst`.
    pub(super) fn unreachable_for(&self, local_port: u16, dst: SocketAddrV4) -> Option<u8> {
        let log = self.unreachable.borrow();
        let hit = log
            .iter()
            .find(|u| u.local_port == local_port && u.dst == dst);
        hit.map(|u| u.code)
    }
}

impl<D: Device> Device for Watched<D> {
    type RxToken<'a>
        = WatchedRx<D::RxToken<'a>>
    where
        Self: 'a;
    type TxToken<'a>
        = D::TxToken<'a>
    where
        Self: 'a;

    fn receive(&mut self, now: SmolInstant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let (rx, tx) = self.inner.receive(now)?;
        let log = self.unreachable.clone();
        Some((WatchedRx { inner: rx, log }, tx))
    }

    fn transmit(&mut self, now: SmolInstant) -> Option<Self::TxToken<'_>> {
        self.inner.transmit(now)
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.inner.capabilities()
    }
}

/// A received packet, inspected for ICMP errors before smoltcp consumes it.
pub(super) struct WatchedRx<R> {
    inner: R,
    log: Rc<RefCell<VecDeque<Unreachable>>>,
}

impl<R: phy::RxToken> phy::RxToken for WatchedRx<R> {
    fn consume<T, F>(self, f: F) -> T
    where
        F: FnOnce(&[u8]) -> T,
    {
        let log = self.log;
        self.inner.consume(|packet| {
            if let Some(hit) = parse_unreachable(packet) {
                let mut log = log.borrow_mut();
                if log.len() == UNREACHABLE_LOG {
                    log.pop_front();
                }
                log.push_back(hit);
            }
            f(packet)
        })
    }

    fn meta(&self) -> phy::PacketMeta {
        self.inner.meta()
    }
}

/// An IPv4 ICMP destination unreachable (type 3) quoting a TCP header.
fn parse_unreachable(packet: &[u8]) -> Option<Unreachable> {
    const ICMP: u8 = 1;
    const TCP: u8 = 6;
    const DEST_UNREACHABLE: u8 = 3;
    let ihl = usize::from(*packet.first()? & 0x0f) * 4;
    if packet.first()? >> 4 != 4 || *packet.get(9)? != ICMP || ihl < 20 {
        return None;
    }
    let icmp = packet.get(ihl..)?;
    if *icmp.first()? != DEST_UNREACHABLE {
        return None;
    }
    let code = *icmp.get(1)?;
    // The quoted datagram: its IPv4 header, then at least 8 bytes of the TCP header.
    let quoted = icmp.get(8..)?;
    let quoted_ihl = usize::from(*quoted.first()? & 0x0f) * 4;
    if *quoted.get(9)? != TCP || quoted_ihl < 20 {
        return None;
    }
    let dst: [u8; 4] = quoted.get(16..20)?.try_into().ok()?;
    let ports = quoted.get(quoted_ihl..quoted_ihl + 4)?;
    Some(Unreachable {
        local_port: u16::from_be_bytes([ports[0], ports[1]]),
        dst: SocketAddrV4::new(dst.into(), u16::from_be_bytes([ports[2], ports[3]])),
        code,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icmp_port_unreachable_is_recognised() {
        // IPv4 (20) + ICMP (8) + quoted IPv4 (20) + first 8 bytes of TCP.
        let mut packet = vec![0u8; 56];
        packet[0] = 0x45;
        packet[9] = 1;
        packet[20] = 3;
        packet[21] = 3;
        let quoted = &mut packet[28..];
        quoted[0] = 0x45;
        quoted[9] = 6;
        quoted[16..20].copy_from_slice(&[10, 96, 0, 1]);
        quoted[20..22].copy_from_slice(&50000u16.to_be_bytes());
        quoted[22..24].copy_from_slice(&80u16.to_be_bytes());
        let hit = parse_unreachable(&packet).expect("recognised");
        assert_eq!(hit.local_port, 50000);
        assert_eq!(hit.dst, "10.96.0.1:80".parse().expect("addr"));
        assert_eq!(hit.code, 3);
        assert!(parse_unreachable(&packet[..40]).is_none());
    }
}
