//! The userspace dataplane: a service load balancer that forwards packets itself.
//!
//! Routes (and, for NodePorts, one small iptables chain) steer service traffic into a TUN
//! device; a forwarder thread reads each packet, tracks its flow, picks a backend with the
//! [`crate::lb`] algorithms, rewrites addresses in place with incremental checksums and
//! writes the packet back for the kernel to route on. Replies come back through the device
//! by a policy rule (unmasqueraded flows) or a host route to the masquerade address, and are
//! translated back. A new plan is built into a [`services::ServiceTable`] on the caller's
//! thread and swapped in between packet batches; established flows keep their backend while
//! the new plan still has it.
//!
//! Masqueraded flows leave the forwarder from a masquerade address (link-local
//! 169.254.42.1 and fd00:6b70::1 by default, routed back into the TUN) that the kernel then
//! `MASQUERADE`s to the address of the egress interface ([`nodeports`]), so backends on
//! other nodes answer this node's address, as in iptables mode. Replies of unmasqueraded
//! flows to a client on the backend's own pod bridge are pulled off the bridge by
//! [`bridges`].
//!
//! Limits: SCTP and IPv6 extension headers are not translated.
//!
//! Pure, testable pieces first, after smoltcp's split of wire views and parsed
//! representations:
//!
//! * [`bridges`]: the nftables bridge table pulling replies of on-node backends off the
//!   pod bridges into IP routing.
//! * [`changes`]: one sync as data: what the host has and the changes a plan needs.
//! * [`checksum`]: the Internet checksum and RFC 1624 incremental updates.
//! * [`conntrack`]: the flow table, per-protocol timeouts and TCP state.
//! * [`device`]: the forwarder thread reading and writing the TUN device.
//! * [`forwarder`]: the packet path (conntrack + NAT, one packet in, one action out).
//! * [`icmp`]: translating ICMP errors about NATed flows.
//! * [`nodeports`]: the small iptables chains that DNAT NodePorts into the TUN and
//!   masquerade the masquerade address.
//! * [`packet`]: parsing and in-place NAT rewriting of IPv4/IPv6 TCP/UDP packets.
//! * [`proxier`]: `UserspaceProxier { new, sync, cleanup }`, the backend the controller drives.
//! * [`reject`]: TCP RST and ICMP port-unreachable answers for services without endpoints.
//! * [`routes`]: the routes and policy rules steering service traffic into the TUN.
//! * [`services`]: the plan as frontends and backend sets, and the NAT decision per flow.
pub mod bridges;
pub mod changes;
pub mod checksum;
pub mod conntrack;
pub mod device;
pub mod forwarder;
pub mod icmp;
pub mod live;
pub mod nodeports;
pub mod packet;
pub mod proxier;
pub mod reject;
pub mod routes;
pub mod services;

pub use proxier::{UserspaceConfig, UserspaceError, UserspaceProxier, cleanup_leftovers};
