//! The packet path: one packet in, one decision out, with conntrack and NAT.
//!
//! [`Forwarder::process`] takes a packet read from the TUN device, translates it in place
//! and says whether to write it back ([`Action::Forward`]), answer with a packet built in a
//! second buffer ([`Action::Reply`], a REJECT), or drop it. It does no I/O and no allocation
//! per packet (the conntrack table and its index are preallocated), so it is unit-testable
//! and benchmarkable on its own.
//!
//! * A packet of a tracked flow is translated with the flow's recorded tuples: DNAT (and
//!   SNAT when masqueraded) in the original direction, the reverse in the reply direction.
//! * The first packet of a new flow (a TCP SYN, any UDP datagram) asks the
//!   [`ServiceTable`] for a verdict; a DNAT verdict creates the flow. TCP packets to a
//!   service address without a flow that are not SYNs are dropped (their flow ended or its
//!   backend went away). Packets of no flow to other addresses (replies steered into the
//!   device for another node's flows) are passed on unchanged.
//! * ICMP errors about a tracked flow are translated back ([`super::icmp`]).
//! * Masqueraded flows take the family's masquerade address and a source port from
//!   [`ForwarderConfig::masquerade_ports`], keeping the client's port when it is free.
//! * [`Forwarder::install`] swaps in the table of a new plan: flows whose backend the new
//!   plan still serves for the same service keep it; the others are removed (as kube-proxy
//!   clears conntrack entries of removed UDP endpoints).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::time::Duration;

use super::conntrack::{Conntrack, Direction, FlowKey, TcpState, Timeouts};
use super::packet::{self, PROTO_TCP, TCP_ACK, TCP_SYN};
use super::reject::write_reject;
use super::services::{ServiceTable, Verdict};
use crate::lb::hash::fmix64;

/// How the forwarder runs.
#[derive(Debug, Clone)]
pub struct ForwarderConfig {
    /// Most flows tracked at once.
    pub conntrack_capacity: usize,
    /// Per-protocol timeouts.
    pub timeouts: Timeouts,
    /// The IPv4 source of masqueraded flows (replies to it must route back to the forwarder).
    pub masquerade_v4: Option<Ipv4Addr>,
    /// The IPv6 source of masqueraded flows.
    pub masquerade_v6: Option<Ipv6Addr>,
    /// Source ports for masqueraded flows.
    pub masquerade_ports: RangeInclusive<u16>,
}

impl Default for ForwarderConfig {
    fn default() -> Self {
        ForwarderConfig {
            conntrack_capacity: 262_144,
            timeouts: Timeouts::default(),
            masquerade_v4: None,
            masquerade_v6: None,
            masquerade_ports: 20_000..=32_767,
        }
    }
}

/// What to do with a processed packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Write the (translated) packet back to the device; its length is unchanged.
    Forward,
    /// Write the first `n` bytes of the reply buffer to the device instead.
    Reply(usize),
    /// Drop the packet.
    Drop,
}

/// Counters of the packet path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForwarderStats {
    /// Packets translated and forwarded.
    pub forwarded: u64,
    /// New flows created.
    pub new_flows: u64,
    /// REJECT answers sent.
    pub rejected: u64,
    /// Packets dropped (unparsable, no flow, no service, no endpoint, table full).
    pub dropped: u64,
}

/// The userspace NAT engine.
#[derive(Debug)]
pub struct Forwarder {
    config: ForwarderConfig,
    table: ServiceTable,
    conntrack: Conntrack,
    stats: ForwarderStats,
}

impl Forwarder {
    /// A forwarder serving `table`.
    pub fn new(config: ForwarderConfig, table: ServiceTable) -> Self {
        Forwarder {
            conntrack: Conntrack::new(config.conntrack_capacity, config.timeouts),
            config,
            table,
            stats: ForwarderStats::default(),
        }
    }

    /// The counters.
    pub fn stats(&self) -> ForwarderStats {
        self.stats
    }

    /// The tracked flows.
    pub fn conntrack(&self) -> &Conntrack {
        &self.conntrack
    }

    /// The table in use.
    pub fn table(&self) -> &ServiceTable {
        &self.table
    }

    /// Swaps in a new plan's table; returns how many flows were removed because the new
    /// plan no longer serves their backend.
    pub fn install(&mut self, mut new: ServiceTable) -> usize {
        new.adopt_affinity(&mut self.table);
        let old = std::mem::replace(&mut self.table, new);
        let table = &self.table;
        let removed = self.conntrack.retain(
            |f| {
                old.services()
                    .get(f.service as usize)
                    .and_then(|s| table.find(s))
                    .and_then(|j| table.services().get(j as usize))
                    .is_some_and(|s| s.serves(f.backend()))
            },
            |_| {},
        );
        self.conntrack.reindex(|f| {
            old.services()
                .get(f.service as usize)
                .and_then(|s| table.find(s))
        });
        removed
    }

    /// Expires up to `budget` flows' worth of the table (call periodically).
    pub fn maintain(&mut self, now: Duration, budget: usize) -> usize {
        let table = &mut self.table;
        self.conntrack.expire(now, budget, |f| {
            table.release(f.service, f.backend(), f.local_set)
        })
    }

    /// Processes one packet in `buf` at time `now`; a REJECT answer is written to `reply`.
    pub fn process(&mut self, buf: &mut [u8], reply: &mut [u8], now: Duration) -> Action {
        let action = self.process_inner(buf, reply, now);
        match action {
            Action::Forward => self.stats.forwarded += 1,
            Action::Reply(_) => self.stats.rejected += 1,
            Action::Drop => self.stats.dropped += 1,
        }
        action
    }

    fn process_inner(&mut self, buf: &mut [u8], reply: &mut [u8], now: Duration) -> Action {
        let Ok(mut meta) = packet::parse(buf) else {
            return Action::Drop;
        };
        let key = FlowKey {
            proto: meta.proto,
            src: meta.source(),
            dst: meta.destination(),
        };
        if super::icmp::is_error(buf, &meta) {
            if super::icmp::translate_error(buf, &mut meta, &self.conntrack, now) {
                return Action::Forward;
            }
            return if self.table.is_frontend_ip(meta.dst) {
                Action::Drop
            } else {
                Action::Forward
            };
        }
        let is_syn = meta.proto == PROTO_TCP && meta.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
        if let Some((id, dir, flow)) = self.conntrack.lookup(&key, now) {
            let flow = *flow;
            let reusable = matches!(flow.state, TcpState::TimeWait | TcpState::Close);
            if !(is_syn && dir == Direction::Original && reusable) {
                let ok = match dir {
                    Direction::Original => {
                        packet::set_destination(buf, &mut meta, flow.reply.src)
                            && packet::set_source(buf, &mut meta, flow.reply.dst)
                    }
                    Direction::Reply => {
                        packet::set_source(buf, &mut meta, flow.original.dst)
                            && packet::set_destination(buf, &mut meta, flow.original.src)
                    }
                };
                self.conntrack.update(id, dir, meta.tcp_flags, now);
                return if ok { Action::Forward } else { Action::Drop };
            }
            self.conntrack.remove(id);
            self.table
                .release(flow.service, flow.backend(), flow.local_set);
        }
        if !self.table.is_frontend_ip(meta.dst) {
            // Not ours (e.g. a reply steered here for another node's flow): pass it on.
            return Action::Forward;
        }
        if meta.proto == PROTO_TCP && !is_syn {
            return Action::Drop;
        }
        match self.table.decide(meta.proto, meta.src, key.dst, now) {
            Verdict::NotService | Verdict::Drop => Action::Drop,
            Verdict::Reject => match write_reject(buf, &meta, reply) {
                Some(n) => Action::Reply(n),
                None => Action::Drop,
            },
            Verdict::Dnat {
                service,
                local_set,
                backend,
                masquerade,
            } => {
                let source = if masquerade {
                    match self.masquerade_source(&key, backend) {
                        Some(s) => s,
                        None => return Action::Drop,
                    }
                } else {
                    key.src
                };
                let reply_key = FlowKey {
                    proto: key.proto,
                    src: backend,
                    dst: source,
                };
                let Ok(id) = self
                    .conntrack
                    .insert(key, reply_key, service, local_set, now)
                else {
                    self.table.release(service, backend, local_set);
                    return Action::Drop;
                };
                self.stats.new_flows += 1;
                if !(packet::set_destination(buf, &mut meta, backend)
                    && packet::set_source(buf, &mut meta, source))
                {
                    self.conntrack.remove(id);
                    return Action::Drop;
                }
                self.conntrack
                    .update(id, Direction::Original, meta.tcp_flags, now);
                Action::Forward
            }
        }
    }

    /// A free masquerade source for a new flow to `backend` (≤ 64 probes).
    fn masquerade_source(&self, key: &FlowKey, backend: SocketAddr) -> Option<SocketAddr> {
        let ip: IpAddr = match key.src.ip() {
            IpAddr::V4(_) => IpAddr::V4(self.config.masquerade_v4?),
            IpAddr::V6(_) => IpAddr::V6(self.config.masquerade_v6?),
        };
        let (lo, hi) = (
            *self.config.masquerade_ports.start(),
            *self.config.masquerade_ports.end(),
        );
        let span = u64::from(hi.checked_sub(lo)?) + 1;
        let free = |port: u16| {
            let k = FlowKey {
                proto: key.proto,
                src: backend,
                dst: SocketAddr::new(ip, port),
            };
            (!self.conntrack.in_use(&k)).then_some(k.dst)
        };
        if (lo..=hi).contains(&key.src.port())
            && let Some(s) = free(key.src.port())
        {
            return Some(s);
        }
        let start = fmix64(u64::from(key.src.port()) ^ (u64::from(key.dst.port()) << 16));
        (0..64u64).find_map(|i| free(lo + ((start.wrapping_add(i)) % span) as u16))
    }
}
