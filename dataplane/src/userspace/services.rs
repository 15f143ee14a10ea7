//! The forwarder's view of a [`ProxyPlan`]: service frontends indexed by address, their
//! backend sets with a balancer each, and the NAT decision for a new flow.
//!
//! [`ServiceTable::decide`] is the userspace translation of the iptables renderer
//! (`iptables/render/service.rs`), rule for rule:
//!
//! * **Cluster IP**: no internal endpoint → REJECT when the service has no endpoint at all,
//!   DROP when only `internalTrafficPolicy: Local` leaves none. Otherwise the cluster set (or
//!   the local set under iTP Local); masquerade with `--masquerade-all`, or when the source
//!   is outside the cluster CIDR (traffic routed here from off-node).
//! * **External** (NodePort, external IP, load-balancer IP): LB source
//!   ranges first (a node address in a range also admits the LB IP itself as source). eTP
//!   Cluster → masquerade, cluster set. eTP Local → pod sources (cluster CIDR) use the
//!   cluster set unmasqueraded; node-local sources use the cluster set masqueraded; the
//!   rest use the local set. An empty set gives REJECT without endpoints, DROP otherwise.
//! * **Hairpin**: a backend reaching itself through the service is masqueraded.
//! * **Affinity** (`sessionAffinity: ClientIP`): a client bound to a backend still in the
//!   chosen set keeps it; otherwise the balancer picks and the binding is recorded.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;

use crate::lb::{AffinityTable, Algorithm, Balancer, Member, stable_hash};
use crate::plan::{
    Endpoint, EndpointSet, IpFamily, LocalTrafficDetector, Protocol, ProxyPlan, ServicePortPlan,
};

use super::packet::{PROTO_TCP, PROTO_UDP};

/// The IP protocol number of a Service protocol, `None` for SCTP (not forwarded).
pub fn proto_number(p: Protocol) -> Option<u8> {
    match p {
        Protocol::Tcp => Some(PROTO_TCP),
        Protocol::Udp => Some(PROTO_UDP),
        Protocol::Sctp => None,
    }
}

/// One backend set of a service with its balancer.
#[derive(Debug, Clone)]
pub struct BackendSet {
    /// Backend addresses, in plan order.
    pub addrs: Vec<SocketAddr>,
    balancer: Balancer,
}

impl BackendSet {
    fn new(endpoints: &[Endpoint], algorithm: Algorithm, seed: u64) -> Self {
        let addrs: Vec<SocketAddr> = endpoints.iter().map(|e| e.addr).collect();
        let members: Vec<Member> = addrs
            .iter()
            .map(|a| Member {
                id: stable_hash(a, 0),
                weight: 1,
            })
            .collect();
        BackendSet {
            balancer: Balancer::new(algorithm, &members, seed),
            addrs,
        }
    }
}

/// One service port (of one family) as the forwarder serves it.
#[derive(Debug)]
pub struct ServiceEntry {
    /// The plan entry.
    pub plan: ServicePortPlan,
    /// The "Cluster" endpoint set.
    pub cluster: BackendSet,
    /// The "Local" endpoint set.
    pub local: BackendSet,
    affinity: Option<AffinityTable<IpAddr, SocketAddr>>,
    /// Source ranges admit the node, so the LB IP itself is an allowed source.
    lb_admits_node: bool,
}

impl ServiceEntry {
    /// Whether `backend` is in one of this service's sets.
    pub fn serves(&self, backend: SocketAddr) -> bool {
        self.cluster.addrs.contains(&backend) || self.local.addrs.contains(&backend)
    }
}

/// What to do with the first packet of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not addressed to a service: pass it on untouched.
    NotService,
    /// Drop silently.
    Drop,
    /// Reject: TCP RST or ICMP port unreachable.
    Reject,
    /// Translate the destination to `backend`, masquerading the source if asked.
    Dnat {
        /// Service index in the table.
        service: u32,
        /// The backend was chosen from the "Local" set (else the "Cluster" set).
        local_set: bool,
        /// The backend.
        backend: SocketAddr,
        /// Rewrite the source to the masquerade address.
        masquerade: bool,
    },
}

#[derive(Debug, Clone, Copy)]
struct Frontend {
    service: u32,
    external: bool,
}

#[derive(Debug, Clone, Default)]
struct FamilyFacts {
    node_ips: Vec<IpAddr>,
    cluster_cidr: Option<IpNet>,
}

/// Frontend index and service entries built from one plan.
#[derive(Debug)]
pub struct ServiceTable {
    frontends: HashMap<(u8, IpAddr, u16), Frontend>,
    frontend_addrs: HashSet<IpAddr>,
    services: Vec<ServiceEntry>,
    v4: FamilyFacts,
    v6: FamilyFacts,
    masquerade_all: bool,
}

impl ServiceTable {
    /// The table as text (what `kproxy render` prints): per frontend (`proto ip:port`,
    /// sorted), its service port, whether traffic to it is external, and the backend sets.
    pub fn listing(&self) -> String {
        let mut frontends: Vec<(&(u8, IpAddr, u16), &Frontend)> = self.frontends.iter().collect();
        frontends.sort_by_key(|(key, _)| **key);
        let mut out = String::new();
        for ((proto, ip, port), frontend) in frontends {
            let Some(entry) = self.services.get(frontend.service as usize) else {
                continue;
            };
            let proto = match *proto {
                PROTO_TCP => "tcp",
                PROTO_UDP => "udp",
                _ => "?",
            };
            let traffic = if frontend.external {
                "external"
            } else {
                "internal"
            };
            let set = |addrs: &[SocketAddr]| {
                addrs
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            out.push_str(&format!(
                "{proto} {} ({}, {traffic}): cluster [{}] local [{}]\n",
                SocketAddr::new(*ip, *port),
                entry.plan.name,
                set(&entry.cluster.addrs),
                set(&entry.local.addrs)
            ));
        }
        out
    }

    /// Builds the table for `plan`, balancing every set with `algorithm` (random seeded
    /// from `seed`). SCTP service ports are skipped; NodePorts are not served (see
    /// [`ServiceTable::build_with_nodeports`]).
    pub fn build(plan: &ProxyPlan, algorithm: Algorithm, seed: u64) -> Self {
        Self::build_with_nodeports(plan, algorithm, seed, &[])
    }

    /// [`ServiceTable::build`], also serving every NodePort on each of `nodeport_addrs` of its
    /// family: the TUN-routed addresses the kernel DNATs NodePort traffic to (see
    /// [`super::nodeports`]). Which node addresses accept NodePorts is decided by that DNAT
    /// rule, not here.
    pub fn build_with_nodeports(
        plan: &ProxyPlan,
        algorithm: Algorithm,
        seed: u64,
        nodeport_addrs: &[IpAddr],
    ) -> Self {
        let facts = |f: Option<&crate::plan::FamilyContext>| FamilyFacts {
            node_ips: f.map(|c| c.node_ips.clone()).unwrap_or_default(),
            // The forwarder sees packets after routing into its TUN device: it can tell
            // pod traffic by source address only (the settings refuse the interface modes).
            cluster_cidr: f.and_then(|c| match &c.local_detector {
                LocalTrafficDetector::ClusterCidr(n) => Some(*n),
                _ => None,
            }),
        };
        let mut table = ServiceTable {
            frontends: HashMap::new(),
            frontend_addrs: HashSet::new(),
            services: Vec::new(),
            v4: facts(plan.node.ipv4.as_ref()),
            v6: facts(plan.node.ipv6.as_ref()),
            masquerade_all: plan.node.masquerade_all,
        };
        for svc in &plan.services {
            let Some(proto) = proto_number(svc.name.protocol) else {
                continue;
            };
            let index = table.services.len() as u32;
            let seed = seed ^ stable_hash(&svc.name, 0);
            let family = plan.node.family(svc.family);
            let mut add = |ip: IpAddr, port: u16, external: bool| {
                table
                    .frontends
                    .entry((proto, ip, port))
                    .or_insert(Frontend {
                        service: index,
                        external,
                    });
            };
            add(svc.cluster_ip, svc.port, false);
            for ip in svc.external_ips.iter().chain(&svc.load_balancer_ips) {
                add(*ip, svc.port, true);
            }
            if let Some(np) = svc.node_port {
                for ip in nodeport_addrs {
                    if IpFamily::of(ip) == svc.family {
                        add(*ip, np, true);
                    }
                }
            }
            let lb_admits_node = family.is_some_and(|f| {
                svc.load_balancer_source_ranges
                    .iter()
                    .any(|r| f.node_ips.iter().any(|ip| r.contains(ip)))
            });
            table.services.push(ServiceEntry {
                cluster: BackendSet::new(&svc.cluster_endpoints, algorithm, seed),
                local: BackendSet::new(&svc.local_endpoints, algorithm, seed ^ 1),
                affinity: svc.session_affinity_timeout.map(|t| {
                    AffinityTable::new(
                        Duration::from_secs(u64::from(t)),
                        AffinityTable::<IpAddr, SocketAddr>::DEFAULT_CAPACITY,
                    )
                }),
                lb_admits_node,
                plan: svc.clone(),
            });
        }
        table.frontend_addrs = table.frontends.keys().map(|(_, ip, _)| *ip).collect();
        table
    }

    /// The service entries, indexed by [`Verdict::Dnat::service`].
    pub fn services(&self) -> &[ServiceEntry] {
        &self.services
    }

    /// The number of frontends (address, port, protocol) the table answers for.
    pub fn frontend_count(&self) -> usize {
        self.frontends.len()
    }

    /// Every frontend address (for steering routes), without duplicates.
    pub fn frontend_ips(&self) -> Vec<IpAddr> {
        let mut ips: Vec<IpAddr> = self.frontends.keys().map(|(_, ip, _)| *ip).collect();
        ips.sort();
        ips.dedup();
        ips
    }

    /// Whether `ip` is the address of some frontend (so unmatched traffic to it is dropped
    /// rather than passed through).
    pub fn is_frontend_ip(&self, ip: IpAddr) -> bool {
        self.frontend_addrs.contains(&ip)
    }

    /// The service index serving `(proto, name, family)` of `entry`, for carrying state
    /// across a plan swap.
    pub fn find(&self, entry: &ServiceEntry) -> Option<u32> {
        self.services
            .iter()
            .position(|s| s.plan.name == entry.plan.name && s.plan.family == entry.plan.family)
            .map(|i| i as u32)
    }

    /// Carries the affinity bindings of `old` whose backends this table still serves.
    pub fn adopt_affinity(&mut self, old: &mut ServiceTable) {
        for i in 0..old.services.len() {
            let Some(j) = self.find(&old.services[i]) else {
                continue;
            };
            let new = &mut self.services[j as usize];
            if let (Some(mut aff), Some(_)) = (old.services[i].affinity.take(), &new.affinity) {
                let (cluster, local) = (&new.cluster.addrs, &new.local.addrs);
                aff.retain_backends(|b| cluster.contains(b) || local.contains(b));
                new.affinity = Some(aff);
            }
        }
    }

    fn facts(&self, ip: &IpAddr) -> &FamilyFacts {
        if ip.is_ipv4() { &self.v4 } else { &self.v6 }
    }

    /// Decides the fate of a new flow `src → dst` of protocol `proto` at `now`.
    pub fn decide(&mut self, proto: u8, src: IpAddr, dst: SocketAddr, now: Duration) -> Verdict {
        let Some(fe) = self.frontends.get(&(proto, dst.ip(), dst.port())).copied() else {
            return Verdict::NotService;
        };
        let facts = self.facts(&src);
        let from_pod = facts.cluster_cidr.is_some_and(|c| c.contains(&src));
        let from_node = facts.node_ips.contains(&src);
        let cidr_known = facts.cluster_cidr.is_some();
        let masquerade_all = self.masquerade_all;
        let Some(svc) = self.services.get_mut(fe.service as usize) else {
            return Verdict::Drop;
        };
        let p = &svc.plan;
        let (set, mut masquerade) = if !fe.external {
            if !p.has_internal_endpoints() {
                return no_endpoint(p);
            }
            (
                p.internal_set(),
                masquerade_all || (cidr_known && !from_pod),
            )
        } else {
            let firewalled = p.load_balancer_ips.contains(&dst.ip())
                && !p.load_balancer_source_ranges.is_empty();
            let admitted = p
                .load_balancer_source_ranges
                .iter()
                .any(|r| r.contains(&src))
                || (svc.lb_admits_node && p.load_balancer_ips.contains(&src));
            if firewalled && !admitted {
                return Verdict::Drop;
            }
            // Pods and the node itself short-circuit to the cluster set.
            match p.external_set() {
                EndpointSet::Cluster => (EndpointSet::Cluster, true),
                EndpointSet::Local if from_pod => (EndpointSet::Cluster, false),
                EndpointSet::Local if from_node => (EndpointSet::Cluster, true),
                EndpointSet::Local => (EndpointSet::Local, false),
            }
        };
        let use_local = set == EndpointSet::Local;
        let set = match set {
            EndpointSet::Local => &mut svc.local,
            EndpointSet::Cluster => &mut svc.cluster,
        };
        if set.addrs.is_empty() {
            return no_endpoint(p);
        }
        let bound = svc.affinity.as_mut().and_then(|a| a.lookup(&src, now));
        let index = match bound.and_then(|b| set.addrs.iter().position(|a| *a == b)) {
            Some(i) => Some(i),
            None => set.balancer.pick(stable_hash(&src, 0)),
        };
        let Some(index) = index.filter(|i| *i < set.addrs.len()) else {
            return no_endpoint(p);
        };
        let backend = set.addrs[index];
        if let Some(a) = svc.affinity.as_mut() {
            a.record(src, backend, now);
        }
        masquerade |= backend.ip() == src;
        Verdict::Dnat {
            service: fe.service,
            local_set: use_local,
            backend,
            masquerade,
        }
    }

    /// Reports the end of a flow to the balancer of the set it was chosen from (least
    /// connections counts them).
    pub fn release(&mut self, service: u32, backend: SocketAddr, local_set: bool) {
        if let Some(svc) = self.services.get_mut(service as usize) {
            let set = if local_set {
                &mut svc.local
            } else {
                &mut svc.cluster
            };
            if let Some(i) = set.addrs.iter().position(|a| *a == backend) {
                set.balancer.release(i);
            }
        }
    }
}

fn no_endpoint(p: &ServicePortPlan) -> Verdict {
    if p.has_any_endpoints {
        Verdict::Drop
    } else {
        Verdict::Reject
    }
}
