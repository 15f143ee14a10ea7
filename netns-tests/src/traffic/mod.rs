//! Traffic generators that are not the kernel's own sockets, for tests that must see what the
//! kernel does to a packet on its way (run as root, inside [`Netns`](crate::netns::Netns)
//! namespaces).
//!
//! - [`capture`]: captures on an interface inside a namespace, by direction, with a
//!   filter; the evidence side of [`probe`].
//! - [`probe`]: crafted IPv4 packets (TCP SYN or UDP) sent with [pnet] from a pod namespace
//!   through a raw socket, and a capture on a node's interface. This is the proof that
//!   kube-proxy's promise holds: a packet to a ClusterIP already carries the chosen endpoint
//!   as its destination when it leaves the node it started on.
//! - [`tcp_over_tun`]: whole TCP connections from a [smoltcp] stack behind a TUN device, a
//!   client that shares nothing with the kernel it talks to (its own ISNs, ports, timers),
//!   which tells a refused connection (RST) and an ICMP reject apart from a timeout.
//!
//! # Design
//!
//! Both generators follow the namespace rule of the rig: `setns` only ever happens on a
//! dedicated OS thread ([`Netns::spawn`](crate::netns::Netns::spawn)), and a socket or a TUN
//! file descriptor keeps the namespace it was created in. Each capture, each send and each
//! smoltcp stack therefore lives on its own thread, and the calling test thread never changes
//! namespace.
//!
//! Every wait is bounded twice, in time (a deadline) and in count (a maximum number of loop
//! turns), so a broken topology fails a test with an error naming what was missing instead of
//! hanging it. Randomness (TCP sequence numbers, IP identifiers, source ports, smoltcp's seed)
//! comes from [`random`], a small generator seeded from std's randomly keyed hasher, the
//! clock, the pid and a counter: a fixed seed or a fixed local port makes a second run collide
//! with the first one's TIME_WAIT state in the kernel.

pub mod capture;
mod icmp_watch;
pub mod probe;
pub mod random;
pub mod tcp_over_tun;
