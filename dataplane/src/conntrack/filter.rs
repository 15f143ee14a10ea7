//! The pure half of conntrack cleanup: which conntrack entries are stale for a plan.
//!
//! UDP and SCTP have no connection teardown the kernel could see, so a conntrack entry keeps
//! steering a client's datagrams to the endpoint chosen for its first packet for as long as
//! the client keeps sending (upstream kubernetes#48370, #125467). After a sync, every UDP or
//! SCTP entry whose original destination is a service frontend (cluster IP, external IP or
//! load-balancer IP with the service port, or a NodePort) and whose reply source is not an
//! endpoint of that service in the plan must go. That one rule covers:
//!
//! - an endpoint that was removed or replaced (the entry points at the old one);
//! - a service that had no endpoints and now has some (the entry was never DNATed: its
//!   reply source is the frontend itself, which is no endpoint);
//! - an endpoint whose target port changed (the reply source port no longer matches).
//!
//! Like upstream, a service without any endpoint in the plan is left alone (there is nothing
//! better to send its flows to), and traffic policies do not matter: an entry to any endpoint
//! some rule of the service may DNAT to (cluster or local set) is kept, so a policy change
//! alone does not move working flows. Unlike upstream the endpoint port is compared too.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::plan::{
    FamilyContext, IpFamily, NodePortAddresses, PlanDelta, Protocol, ProxyPlan, ServicePortName,
};

use super::flow::Flow;

/// The service frontend a stale flow was addressed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Frontend {
    /// A cluster, external or load-balancer IP with the service port.
    ServiceIp(SocketAddr),
    /// A NodePort (on any accepted node address).
    NodePort(u16),
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Frontend::ServiceIp(addr) => addr.fmt(f),
            Frontend::NodePort(port) => write!(f, "NodePort {port}"),
        }
    }
}

/// A conntrack entry to delete and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowToDelete {
    /// The entry (deleted by its original tuple).
    pub flow: Flow,
    /// The service port whose frontend the flow was addressed to.
    pub service: ServicePortName,
    /// That frontend.
    pub frontend: Frontend,
}

impl fmt::Display for FlowToDelete {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of service {} ({}), reply source is no endpoint",
            self.flow, self.service, self.frontend
        )
    }
}

/// The protocols whose stale entries are cleaned.
pub fn is_cleaned(protocol: Protocol) -> bool {
    matches!(protocol, Protocol::Udp | Protocol::Sctp)
}

/// Endpoints of one service port as a set of addresses (empty: no endpoint).
type EndpointSet<'a> = (&'a ServicePortName, BTreeSet<SocketAddr>);

/// The frontends of the UDP/SCTP services of one family with their endpoint sets,
/// services without endpoints included (with an empty set).
struct Frontends<'a> {
    by_ip: HashMap<(Protocol, SocketAddr), EndpointSet<'a>>,
    by_node_port: HashMap<(Protocol, u16), EndpointSet<'a>>,
}

impl<'a> Frontends<'a> {
    fn of(plan: &'a ProxyPlan, family: IpFamily) -> Frontends<'a> {
        let mut by_ip = HashMap::new();
        let mut by_node_port = HashMap::new();
        for svc in plan.services_of(family) {
            let protocol = svc.name.protocol;
            if !is_cleaned(protocol) {
                continue;
            }
            let endpoints: BTreeSet<SocketAddr> =
                svc.reachable_endpoints().iter().map(|e| e.addr).collect();
            let ips = std::iter::once(svc.cluster_ip)
                .chain(svc.external_ips.iter().copied())
                .chain(svc.load_balancer_ips.iter().copied());
            for ip in ips {
                by_ip.insert(
                    (protocol, SocketAddr::new(ip, svc.port)),
                    (&svc.name, endpoints.clone()),
                );
            }
            if let Some(port) = svc.node_port {
                by_node_port.insert((protocol, port), (&svc.name, endpoints.clone()));
            }
        }
        Frontends {
            by_ip,
            by_node_port,
        }
    }
}

/// Whether a flow to `dst` on a NodePort can be NodePort traffic of this node.
///
/// With `--nodeport-addresses` set, only those addresses (and 127.0.0.0/8 with
/// localhost NodePorts) accept NodePorts. Otherwise every local address does, which the plan
/// does not list: a flow then counts when it was DNATed or is addressed to a known node IP,
/// so that a flow from this node to some remote server on the same port is left alone.
fn accepts_node_port(
    ctx: Option<&FamilyContext>,
    localhost_nodeports: bool,
    dst: IpAddr,
    dnat: bool,
) -> bool {
    let loopback_v4 = matches!(dst, IpAddr::V4(v4) if v4.is_loopback());
    if loopback_v4 && localhost_nodeports {
        return true;
    }
    match ctx.map(|c| &c.nodeport_addresses) {
        Some(NodePortAddresses::Only(addrs)) => addrs.contains(&dst),
        Some(NodePortAddresses::All) | None => {
            dnat || ctx.is_some_and(|c| c.node_ips.contains(&dst))
        }
    }
}

/// Decides, one flow at a time, which flows are stale for a plan (the frontends are indexed
/// once, so a dump can be filtered as it streams in).
pub struct StaleFlowFilter<'a> {
    plan: &'a ProxyPlan,
    family: IpFamily,
    frontends: Frontends<'a>,
}

impl<'a> StaleFlowFilter<'a> {
    /// Indexes the UDP/SCTP frontends of `plan` in `family`.
    pub fn new(plan: &'a ProxyPlan, family: IpFamily) -> StaleFlowFilter<'a> {
        StaleFlowFilter {
            plan,
            family,
            frontends: Frontends::of(plan, family),
        }
    }

    /// The protocols that have a frontend with endpoints: only their entries can be stale.
    pub fn protocols(&self) -> BTreeSet<Protocol> {
        self.frontends
            .by_ip
            .iter()
            .map(|((p, _), set)| (*p, set))
            .chain(
                self.frontends
                    .by_node_port
                    .iter()
                    .map(|((p, _), set)| (*p, set)),
            )
            .filter(|(_, (_, endpoints))| !endpoints.is_empty())
            .map(|(p, _)| p)
            .collect()
    }

    /// `Some` when `flow` is stale: its original destination is a frontend of a UDP/SCTP
    /// service port of the family that has endpoints, and its reply source (the DNAT
    /// target) is not one of them.
    pub fn check(&self, flow: &Flow) -> Option<FlowToDelete> {
        if flow.family() != self.family || !is_cleaned(flow.protocol) {
            return None;
        }
        let dst = flow.original.dst;
        let (frontend, (service, endpoints)) =
            if let Some(set) = self.frontends.by_ip.get(&(flow.protocol, dst)) {
                (Frontend::ServiceIp(dst), set)
            } else if let Some(set) = self
                .frontends
                .by_node_port
                .get(&(flow.protocol, dst.port()))
                && accepts_node_port(
                    self.plan.node.family(self.family),
                    self.plan.node.localhost_nodeports,
                    dst.ip(),
                    flow.is_dnat(),
                )
            {
                (Frontend::NodePort(dst.port()), set)
            } else {
                return None;
            };
        (!endpoints.is_empty() && !endpoints.contains(&flow.reply.src)).then(|| FlowToDelete {
            flow: *flow,
            service: (*service).clone(),
            frontend,
        })
    }
}

/// The stale UDP/SCTP entries among `flows` for `plan` in `family`, in the order of
/// `flows` (see [`StaleFlowFilter::check`]).
pub fn filter(plan: &ProxyPlan, family: IpFamily, flows: &[Flow]) -> Vec<FlowToDelete> {
    let filter = StaleFlowFilter::new(plan, family);
    flows.iter().filter_map(|f| filter.check(f)).collect()
}

/// Whether a sync whose plan changed by `delta` can have left stale entries in `family`:
/// a UDP/SCTP service port of the family was added or changed (it may have lost an
/// endpoint, or just got its first), or the node changed. Removed service ports leave
/// nothing to move their flows to. Conservative: a change that only added endpoints also
/// counts (the delta does not say how an entry changed).
///
/// A sync loop may skip the conntrack dump when this is false and the last clean-up
/// succeeded.
pub fn cleanup_needed(delta: &PlanDelta, family: IpFamily) -> bool {
    delta.node_changed
        || delta
            .added
            .iter()
            .chain(&delta.changed)
            .any(|(name, f)| *f == family && is_cleaned(name.protocol))
}

#[cfg(test)]
#[path = "filter_tests.rs"]
mod tests;
