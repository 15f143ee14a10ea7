//! One conntrack entry as kproxy sees it: protocol, the original and reply tuples, and the
//! zone. Only port-carrying protocols (TCP, UDP, SCTP) are represented; other entries are
//! skipped when a dump is decoded.

use std::fmt;
use std::net::SocketAddr;

use crate::plan::{IpFamily, Protocol};

/// The IANA protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// The IANA protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
/// The IANA protocol number of SCTP.
pub const IPPROTO_SCTP: u8 = 132;

/// The IANA protocol number of a service protocol.
pub fn ipproto(protocol: Protocol) -> u8 {
    match protocol {
        Protocol::Tcp => IPPROTO_TCP,
        Protocol::Udp => IPPROTO_UDP,
        Protocol::Sctp => IPPROTO_SCTP,
    }
}

/// The service protocol of an IANA protocol number, if it is one.
pub fn protocol_of(ipproto: u8) -> Option<Protocol> {
    match ipproto {
        IPPROTO_TCP => Some(Protocol::Tcp),
        IPPROTO_UDP => Some(Protocol::Udp),
        IPPROTO_SCTP => Some(Protocol::Sctp),
        _ => None,
    }
}

/// One direction of a connection: source and destination address and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlowTuple {
    /// Source address and port.
    pub src: SocketAddr,
    /// Destination address and port.
    pub dst: SocketAddr,
}

impl fmt::Display for FlowTuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.src, self.dst)
    }
}

/// One conntrack entry.
///
/// For a DNATed service flow, `original.dst` is the service frontend (cluster IP:port,
/// external/LB IP:port or node IP:NodePort) and `reply.src` is the endpoint the kernel
/// chose. A flow that was not DNATed has `reply.src == original.dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Flow {
    /// Transport protocol.
    pub protocol: Protocol,
    /// The tuple of the first packet, as it entered conntrack (before DNAT).
    pub original: FlowTuple,
    /// The tuple replies are expected with (after NAT).
    pub reply: FlowTuple,
    /// The conntrack zone (0 is the default zone).
    pub zone: u16,
}

impl Flow {
    /// The IP family of the flow (of its original destination).
    pub fn family(&self) -> IpFamily {
        IpFamily::of(&self.original.dst.ip())
    }

    /// The flow was DNATed: replies come from somewhere else than the original destination.
    pub fn is_dnat(&self) -> bool {
        self.reply.src != self.original.dst
    }
}

impl fmt::Display for Flow {
    /// `UDP 10.0.0.1:40000 -> 10.96.0.10:53 (reply 10.244.1.5:5353 -> 10.0.0.1:40000)`,
    /// with ` zone N` appended for a non-default zone.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} (reply {})",
            self.protocol, self.original, self.reply
        )?;
        if self.zone != 0 {
            write!(f, " zone {}", self.zone)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_numbers_round_trip() {
        for p in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
            assert_eq!(protocol_of(ipproto(p)), Some(p));
        }
        assert_eq!(protocol_of(1), None);
    }

    #[test]
    fn display_names_both_tuples() {
        let flow = Flow {
            protocol: Protocol::Udp,
            original: FlowTuple {
                src: "10.0.0.1:40000".parse().unwrap(),
                dst: "10.96.0.10:53".parse().unwrap(),
            },
            reply: FlowTuple {
                src: "10.244.1.5:5353".parse().unwrap(),
                dst: "10.0.0.1:40000".parse().unwrap(),
            },
            zone: 0,
        };
        assert_eq!(
            flow.to_string(),
            "UDP 10.0.0.1:40000 -> 10.96.0.10:53 (reply 10.244.1.5:5353 -> 10.0.0.1:40000)"
        );
        assert!(flow.is_dnat());
        assert_eq!(flow.family(), IpFamily::V4);
        let zoned = Flow { zone: 7, ..flow };
        assert!(zoned.to_string().ends_with(" zone 7"));
    }
}
