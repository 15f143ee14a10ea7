//! Connection tracking: the forwarder's table of NATed flows, with per-protocol timeouts
//! and a TCP state machine.
//!
//! A flow is stored once (in a slab) and indexed twice, by its *original* tuple (client →
//! service, as the client sent it) and by its *reply* tuple (backend → client or masquerade
//! address, as the backend answers), so both directions resolve in one hash lookup. The slab
//! and the index are allocated for `capacity` flows up front, so inserting and looking up
//! flows does not allocate; when the table is full, new flows are refused (the packet is
//! dropped), as the kernel does when `nf_conntrack_max` is reached.
//!
//! Timeouts follow kube-proxy's conntrack settings and the kernel's defaults: TCP SYN_SENT
//! 120 s, SYN_RECV 60 s, ESTABLISHED 24 h (`--conntrack-tcp-timeout-established`),
//! FIN_WAIT/CLOSE_WAIT 1 h (`--conntrack-tcp-timeout-close-wait`), TIME_WAIT 120 s, CLOSE
//! (after RST) 10 s; UDP 30 s until the backend replies, 120 s after (`--conntrack-udp-timeout`
//! and `-stream`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use thiserror::Error;

use super::packet::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

/// A flow's 5-tuple as seen in one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// IP protocol number.
    pub proto: u8,
    /// Source address and port.
    pub src: SocketAddr,
    /// Destination address and port.
    pub dst: SocketAddr,
}

/// Which direction a packet travels relative to the flow's first packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client → service.
    Original,
    /// Backend → client.
    Reply,
}

/// TCP connection state, as far as NAT needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpState {
    /// The client sent a SYN.
    SynSent,
    /// The backend answered SYN-ACK.
    SynRecv,
    /// The handshake completed.
    Established,
    /// One side sent FIN.
    FinWait,
    /// Both sides sent FIN.
    TimeWait,
    /// A side sent RST.
    Close,
}

/// Per-protocol timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP after the client's SYN.
    pub tcp_syn_sent: Duration,
    /// TCP after the backend's SYN-ACK.
    pub tcp_syn_recv: Duration,
    /// TCP established.
    pub tcp_established: Duration,
    /// TCP after one FIN.
    pub tcp_fin_wait: Duration,
    /// TCP after both FINs.
    pub tcp_time_wait: Duration,
    /// TCP after RST.
    pub tcp_close: Duration,
    /// UDP before the backend replied.
    pub udp: Duration,
    /// UDP after the backend replied.
    pub udp_stream: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_syn_sent: Duration::from_secs(120),
            tcp_syn_recv: Duration::from_secs(60),
            tcp_established: Duration::from_secs(86_400),
            tcp_fin_wait: Duration::from_secs(3_600),
            tcp_time_wait: Duration::from_secs(120),
            tcp_close: Duration::from_secs(10),
            udp: Duration::from_secs(30),
            udp_stream: Duration::from_secs(120),
        }
    }
}

/// A tracked, NATed flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// The tuple the client sent (destination: the service address).
    pub original: FlowKey,
    /// The tuple the backend answers with (source: the backend; destination: the client or
    /// the masquerade address).
    pub reply: FlowKey,
    /// Index of the service frontend the flow was balanced by.
    pub service: u32,
    /// The backend was chosen from the service's "Local" set (else "Cluster").
    pub local_set: bool,
    /// TCP state (`Established` stands for "replied" for UDP).
    pub state: TcpState,
    /// When the flow expires unless refreshed.
    pub expires: Duration,
}

impl Flow {
    /// The backend the flow was sent to.
    pub fn backend(&self) -> SocketAddr {
        self.reply.src
    }

    /// Whether the client's source was rewritten (masqueraded).
    pub fn masqueraded(&self) -> bool {
        self.reply.dst != self.original.src
    }
}

/// The table is at capacity.
#[derive(Debug, Clone, Copy, Error, PartialEq, Eq)]
#[error("conntrack table full ({capacity} flows): flow {src} -> {dst} refused")]
pub struct TableFull {
    /// The table's capacity.
    pub capacity: usize,
    /// The refused flow's source.
    pub src: SocketAddr,
    /// The refused flow's destination.
    pub dst: SocketAddr,
}

/// A handle to a flow in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowId(u32);

/// The connection-tracking table.
#[derive(Debug)]
pub struct Conntrack {
    timeouts: Timeouts,
    slots: Vec<Option<Flow>>,
    free: Vec<u32>,
    index: HashMap<FlowKey, (FlowId, Direction)>,
    /// Next slot the incremental expiry sweep looks at.
    sweep: usize,
}

impl Conntrack {
    /// A table for at most `capacity` flows (at least 1), preallocated.
    pub fn new(capacity: usize, timeouts: Timeouts) -> Self {
        let capacity = capacity.clamp(1, u32::MAX as usize);
        Conntrack {
            timeouts,
            slots: vec![None; capacity],
            free: (0..capacity as u32).rev().collect(),
            index: HashMap::with_capacity(capacity * 2),
            sweep: 0,
        }
    }

    /// The number of flows held.
    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// No flow is held.
    pub fn is_empty(&self) -> bool {
        self.free.len() == self.slots.len()
    }

    /// The flow a packet with tuple `key` belongs to, if it is tracked and not expired.
    pub fn lookup(&self, key: &FlowKey, now: Duration) -> Option<(FlowId, Direction, &Flow)> {
        let (id, dir) = *self.index.get(key)?;
        let flow = self.slots.get(id.0 as usize)?.as_ref()?;
        (flow.expires > now).then_some((id, dir, flow))
    }

    /// Whether some live flow already uses `key` in either direction (for choosing
    /// masquerade ports).
    pub fn in_use(&self, key: &FlowKey) -> bool {
        self.index.contains_key(key)
    }

    /// Tracks a new flow (state `SynSent`, for UDP "unreplied"); a flow holding either tuple
    /// is replaced.
    pub fn insert(
        &mut self,
        original: FlowKey,
        reply: FlowKey,
        service: u32,
        local_set: bool,
        now: Duration,
    ) -> Result<FlowId, TableFull> {
        for key in [original, reply] {
            if let Some((id, _)) = self.index.get(&key).copied() {
                self.remove(id);
            }
        }
        let Some(slot) = self.free.pop() else {
            return Err(TableFull {
                capacity: self.slots.len(),
                src: original.src,
                dst: original.dst,
            });
        };
        let (state, ttl) = if original.proto == super::packet::PROTO_TCP {
            (TcpState::SynSent, self.timeouts.tcp_syn_sent)
        } else {
            (TcpState::SynSent, self.timeouts.udp)
        };
        let id = FlowId(slot);
        self.slots[slot as usize] = Some(Flow {
            original,
            reply,
            service,
            local_set,
            state,
            expires: now + ttl,
        });
        self.index.insert(original, (id, Direction::Original));
        self.index.insert(reply, (id, Direction::Reply));
        Ok(id)
    }

    /// Advances a flow's state for a packet in `dir` with TCP flags `flags` (ignored for
    /// UDP) and refreshes its timeout.
    pub fn update(&mut self, id: FlowId, dir: Direction, flags: u8, now: Duration) {
        let t = self.timeouts;
        let Some(Some(flow)) = self.slots.get_mut(id.0 as usize) else {
            return;
        };
        if flow.original.proto != super::packet::PROTO_TCP {
            if dir == Direction::Reply {
                flow.state = TcpState::Established;
            }
            let ttl = if flow.state == TcpState::Established {
                t.udp_stream
            } else {
                t.udp
            };
            flow.expires = now + ttl;
            return;
        }
        flow.state = next_tcp_state(flow.state, dir, flags);
        let ttl = match flow.state {
            TcpState::SynSent => t.tcp_syn_sent,
            TcpState::SynRecv => t.tcp_syn_recv,
            TcpState::Established => t.tcp_established,
            TcpState::FinWait => t.tcp_fin_wait,
            TcpState::TimeWait => t.tcp_time_wait,
            TcpState::Close => t.tcp_close,
        };
        flow.expires = now + ttl;
    }

    /// Removes a flow.
    pub fn remove(&mut self, id: FlowId) -> Option<Flow> {
        let flow = self.slots.get_mut(id.0 as usize)?.take()?;
        self.index.remove(&flow.original);
        self.index.remove(&flow.reply);
        self.free.push(id.0);
        Some(flow)
    }

    /// Looks at up to `budget` slots (continuing where the last sweep stopped) and removes the
    /// flows that expired at `now`, passing each to `on_removed`. Returns how many it removed.
    pub fn expire(
        &mut self,
        now: Duration,
        budget: usize,
        mut on_removed: impl FnMut(&Flow),
    ) -> usize {
        let n = self.slots.len();
        let mut removed = 0;
        for _ in 0..budget.min(n) {
            let i = self.sweep % n;
            self.sweep = (i + 1) % n;
            if let Some(f) = self.slots[i]
                && f.expires <= now
            {
                self.remove(FlowId(i as u32));
                on_removed(&f);
                removed += 1;
            }
        }
        removed
    }

    /// Removes every flow for which `keep` is false (e.g. flows whose backend left the
    /// plan), passing each to `on_removed`. Visits every slot once.
    pub fn retain(
        &mut self,
        mut keep: impl FnMut(&Flow) -> bool,
        mut on_removed: impl FnMut(&Flow),
    ) -> usize {
        let mut removed = 0;
        for i in 0..self.slots.len() {
            if let Some(f) = self.slots[i]
                && !keep(&f)
            {
                self.remove(FlowId(i as u32));
                on_removed(&f);
                removed += 1;
            }
        }
        removed
    }

    /// Rewrites the service index of every flow (after a plan swap renumbered them).
    pub fn reindex(&mut self, mut map: impl FnMut(&Flow) -> Option<u32>) {
        for f in self.slots.iter_mut().flatten() {
            if let Some(s) = map(f) {
                f.service = s;
            }
        }
    }
}

/// The TCP state after a packet with `flags` in direction `dir`.
pub fn next_tcp_state(state: TcpState, dir: Direction, flags: u8) -> TcpState {
    use TcpState::*;
    if flags & TCP_RST != 0 {
        return Close;
    }
    match (state, dir) {
        (SynSent, Direction::Reply) if flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK => SynRecv,
        (SynRecv, Direction::Original) if flags & TCP_ACK != 0 && flags & TCP_SYN == 0 => {
            if flags & TCP_FIN != 0 {
                FinWait
            } else {
                Established
            }
        }
        (Established, _) if flags & TCP_FIN != 0 => FinWait,
        (FinWait, _) if flags & TCP_FIN != 0 => TimeWait,
        (Close, _) if flags & TCP_SYN != 0 && dir == Direction::Original => SynSent,
        (TimeWait, _) if flags & TCP_SYN != 0 && dir == Direction::Original => SynSent,
        (s, _) => s,
    }
}
