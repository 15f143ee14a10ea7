//! The IPVS state a plan wants, as a value: virtual servers with their real servers, the
//! addresses bound to `kube-ipvs0`, and the ipset entries the iptables side matches on.
//! [`render`] is pure: `ProxyPlan` in, [`IpvsState`] out, as upstream's IPVS proxier
//! `syncService`/`syncEndpoint` would program it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::plan::{Endpoint, IpFamily, NodePortAddresses, Protocol, ProxyPlan, ServicePortPlan};

use super::ipset::{IpsetEntries, render_ipsets};
use super::netlink::consts::{IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP};
use super::netlink::{Service, ServiceKey};

/// The name of the dummy interface service IPs are bound to.
pub const DUMMY_INTERFACE: &str = "kube-ipvs0";

/// An IPVS scheduler (`--ipvs-scheduler`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scheduler {
    /// Round robin (upstream's default).
    #[default]
    Rr,
    /// Weighted round robin.
    Wrr,
    /// Least connection.
    Lc,
    /// Weighted least connection.
    Wlc,
    /// Source hashing.
    Sh,
    /// Destination hashing.
    Dh,
    /// Shortest expected delay.
    Sed,
    /// Never queue.
    Nq,
    /// Maglev hashing.
    Mh,
}

impl Scheduler {
    /// Every scheduler, in upstream's documentation order.
    pub const ALL: [Scheduler; 9] = [
        Scheduler::Rr,
        Scheduler::Wrr,
        Scheduler::Lc,
        Scheduler::Wlc,
        Scheduler::Sh,
        Scheduler::Dh,
        Scheduler::Sed,
        Scheduler::Nq,
        Scheduler::Mh,
    ];

    /// The kernel's name of the scheduler.
    pub fn name(self) -> &'static str {
        match self {
            Scheduler::Rr => "rr",
            Scheduler::Wrr => "wrr",
            Scheduler::Lc => "lc",
            Scheduler::Wlc => "wlc",
            Scheduler::Sh => "sh",
            Scheduler::Dh => "dh",
            Scheduler::Sed => "sed",
            Scheduler::Nq => "nq",
            Scheduler::Mh => "mh",
        }
    }
}

impl fmt::Display for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Scheduler {
    type Err = String;

    /// Parses a scheduler name; the empty string is upstream's default, `rr`.
    fn from_str(s: &str) -> Result<Scheduler, String> {
        if s.is_empty() {
            return Ok(Scheduler::Rr);
        }
        Scheduler::ALL
            .into_iter()
            .find(|sch| sch.name() == s)
            .ok_or_else(|| format!("unknown IPVS scheduler {s:?} (rr|wrr|lc|wlc|sh|dh|sed|nq|mh)"))
    }
}

/// Rendering options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RenderOptions {
    /// The scheduler of every virtual server.
    pub scheduler: Scheduler,
}

/// The IP protocol number of a service protocol.
pub fn protocol_number(p: Protocol) -> u16 {
    match p {
        Protocol::Tcp => IPPROTO_TCP,
        Protocol::Udp => IPPROTO_UDP,
        Protocol::Sctp => IPPROTO_SCTP,
    }
}

/// One wanted virtual server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualServer {
    /// The service as the kernel should hold it.
    pub service: Service,
    /// Wanted real servers and their weights.
    pub real_servers: BTreeMap<SocketAddr, u32>,
    /// The service port it belongs to (`ns/name:port`), for logs and errors.
    pub owner: String,
}

/// Everything IPVS mode programs for one IP family.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpvsState {
    /// Virtual servers by key.
    pub virtual_servers: BTreeMap<ServiceKey, VirtualServer>,
    /// Addresses bound to [`DUMMY_INTERFACE`] (cluster, external and load-balancer IPs).
    pub bound_addresses: BTreeSet<IpAddr>,
    /// ipset entries by set name.
    pub ipsets: IpsetEntries,
}

impl IpvsState {
    /// The virtual servers as `ipvsadm -Ln` lists them (what `kproxy render` prints).
    pub fn listing(&self) -> String {
        let mut out = String::from(
            "Prot LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port           Forward Weight\n",
        );
        for (key, vs) in &self.virtual_servers {
            let persistent = if vs.service.timeout > 0 {
                format!(" persistent {}", vs.service.timeout)
            } else {
                String::new()
            };
            let key = key.to_string().replacen(' ', "  ", 1);
            out.push_str(&format!("{key:<27} {}{persistent}\n", vs.service.scheduler));
            for (addr, weight) in &vs.real_servers {
                out.push_str(&format!("  -> {:<28} Masq    {weight}\n", addr.to_string()));
            }
        }
        out
    }

    /// Real servers over all virtual servers.
    pub fn real_server_count(&self) -> usize {
        self.virtual_servers
            .values()
            .map(|v| v.real_servers.len())
            .sum()
    }
}

/// The addresses NodePorts are served on, for a family.
pub fn nodeport_ips(plan: &ProxyPlan, family: IpFamily) -> Vec<IpAddr> {
    let Some(ctx) = plan.node.family(family) else {
        return vec![];
    };
    match &ctx.nodeport_addresses {
        NodePortAddresses::All => ctx.node_ips.clone(),
        NodePortAddresses::Only(ips) => ips
            .iter()
            .filter(|ip| IpFamily::of(ip) == family && !ip.is_loopback())
            .copied()
            .collect(),
    }
}

/// Renders the IPVS state of `family`; `None` when the node does not serve the family.
pub fn render(plan: &ProxyPlan, family: IpFamily, opts: &RenderOptions) -> Option<IpvsState> {
    plan.node.family(family)?;
    let mut state = IpvsState::default();
    let node_ips = nodeport_ips(plan, family);
    for svc in plan.services_of(family) {
        render_service(svc, &node_ips, opts, &mut state);
    }
    state.ipsets = render_ipsets(plan, family, &node_ips);
    Some(state)
}

fn real_servers(endpoints: &[Endpoint]) -> BTreeMap<SocketAddr, u32> {
    endpoints.iter().map(|ep| (ep.addr, 1)).collect()
}

/// Adds one service port's virtual servers and bound addresses to `state` (a later
/// virtual server with the same key replaces an earlier one).
pub(super) fn render_service(
    svc: &ServicePortPlan,
    node_ips: &[IpAddr],
    opts: &RenderOptions,
    state: &mut IpvsState,
) {
    let protocol = protocol_number(svc.name.protocol);
    let owner = svc.name.to_string();
    let mut add = |addr: IpAddr, port: u16, endpoints: &[Endpoint]| {
        let key = ServiceKey::Addr {
            protocol,
            addr,
            port,
        };
        let mut service = Service::new(key, opts.scheduler.name());
        if let Some(timeout) = svc.session_affinity_timeout {
            service = service.with_persistence(timeout);
        }
        state.virtual_servers.insert(
            key,
            VirtualServer {
                service,
                real_servers: real_servers(endpoints),
                owner: owner.clone(),
            },
        );
    };
    let (internal, external) = (svc.internal_endpoints(), svc.external_endpoints());
    add(svc.cluster_ip, svc.port, internal);
    state.bound_addresses.insert(svc.cluster_ip);
    for ip in svc.external_ips.iter().chain(&svc.load_balancer_ips) {
        add(*ip, svc.port, external);
        state.bound_addresses.insert(*ip);
    }
    if let Some(node_port) = svc.node_port {
        for ip in node_ips {
            add(*ip, node_port, external);
        }
    }
}
