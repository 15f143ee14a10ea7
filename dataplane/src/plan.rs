//! The proxy plan: what one node must program, with every policy decision already made.
//!
//! A [`ProxyPlan`] is the only input of every backend renderer. It is produced by the
//! controller's planner (a pure function of the Services, EndpointSlices and this Node) and
//! holds no Kubernetes types: one [`ServicePortPlan`] per service port *and IP family*, with
//! the endpoint sets the node may use already chosen (ready first, then serving+terminating,
//! topology, traffic policies), plus the [`NodeContext`] the rules depend on.
//!
//! Backends only translate a plan; if a renderer needs to make a choice about *which*
//! endpoints to use, that choice belongs in the planner instead.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

/// An IP family. Each family gets its own ruleset (iptables and ip6tables, `ip` and `ip6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpFamily {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl IpFamily {
    /// Both families, IPv4 first.
    pub const ALL: [IpFamily; 2] = [IpFamily::V4, IpFamily::V6];

    /// The family of an address.
    pub fn of(ip: &IpAddr) -> IpFamily {
        match ip {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }

    /// The family of a network.
    pub fn of_net(net: &IpNet) -> IpFamily {
        match net {
            IpNet::V4(_) => IpFamily::V4,
            IpNet::V6(_) => IpFamily::V6,
        }
    }

    /// The loopback network of this family (`127.0.0.0/8` or `::1/128`).
    pub fn loopback_net(self) -> &'static str {
        match self {
            IpFamily::V4 => "127.0.0.0/8",
            IpFamily::V6 => "::1/128",
        }
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        })
    }
}

/// A transport protocol a Service port can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// The lower-case name used by iptables, nft and upstream's chain-name hashes.
    pub fn as_lower(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

/// Names one port of one Service: `namespace/name:port` plus its protocol.
///
/// `Display` prints upstream's `ServicePortName.String()` (`ns/svc:port`, with an empty port
/// name for single-port Services: `ns/svc:`), which is also what chain-name hashes are
/// computed from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePortName {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// The port's name (empty for an unnamed port).
    pub port: String,
    /// The port's protocol.
    pub protocol: Protocol,
}

impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.namespace, self.name, self.port)
    }
}

/// One endpoint (pod address and target port) as a backend may use it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    /// Pod IP and target port.
    pub addr: SocketAddr,
    /// The endpoint runs on this node.
    pub is_local: bool,
    /// The endpoint is ready (may receive new connections normally).
    pub ready: bool,
    /// The endpoint is serving (may be used as a fallback when terminating).
    pub serving: bool,
    /// The endpoint is terminating.
    pub terminating: bool,
}

impl Endpoint {
    /// The endpoint's address.
    pub fn ip(&self) -> IpAddr {
        self.addr.ip()
    }
}

impl fmt::Display for Endpoint {
    /// `ip:port`, `[ip6]:port` for IPv6, as upstream's `BaseEndpointInfo.String()`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.addr.fmt(f)
    }
}

/// Which of a service port's two endpoint sets some traffic uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EndpointSet {
    /// The "Cluster" traffic-policy set ([`ServicePortPlan::cluster_endpoints`]).
    Cluster,
    /// The "Local" traffic-policy set ([`ServicePortPlan::local_endpoints`]).
    Local,
}

impl fmt::Display for EndpointSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EndpointSet::Cluster => "cluster",
            EndpointSet::Local => "local",
        })
    }
}

/// Everything a backend needs to program one service port in one IP family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePortPlan {
    /// Which service port this is.
    pub name: ServicePortName,
    /// The family of every address in this plan.
    pub family: IpFamily,
    /// The cluster IP of this family.
    pub cluster_ip: IpAddr,
    /// The service port.
    pub port: u16,
    /// The NodePort, if the Service has one.
    pub node_port: Option<u16>,
    /// `spec.externalIPs` of this family.
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip` of this family (VIP-mode ingress only).
    pub load_balancer_ips: Vec<IpAddr>,
    /// `spec.loadBalancerSourceRanges` of this family.
    pub load_balancer_source_ranges: Vec<IpNet>,
    /// `sessionAffinity: ClientIP` timeout in seconds, `None` without affinity.
    pub session_affinity_timeout: Option<u32>,
    /// `externalTrafficPolicy: Local`.
    pub external_policy_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_policy_local: bool,
    /// `spec.healthCheckNodePort` (only set for eTP Local LoadBalancer Services).
    pub health_check_node_port: Option<u16>,
    /// The endpoints "Cluster" traffic policy uses (empty when no policy uses them).
    pub cluster_endpoints: Vec<Endpoint>,
    /// The endpoints "Local" traffic policy uses (empty when no policy uses them).
    pub local_endpoints: Vec<Endpoint>,
    /// Whether the service has any usable endpoint anywhere in the cluster.
    pub has_any_endpoints: bool,
}

impl ServicePortPlan {
    /// Reachable from outside through a NodePort, external IP or load-balancer IP.
    pub fn externally_accessible(&self) -> bool {
        self.node_port.is_some()
            || !self.external_ips.is_empty()
            || !self.load_balancer_ips.is_empty()
    }

    /// Some traffic of this service uses the "Cluster" endpoint set: cluster-IP traffic
    /// with `internalTrafficPolicy: Cluster`, and any external traffic (even with
    /// `externalTrafficPolicy: Local`, traffic from pods and from the node itself is
    /// short-circuited to the cluster set, as upstream does).
    pub fn uses_cluster_endpoints(&self) -> bool {
        !self.internal_policy_local || self.externally_accessible()
    }

    /// Some traffic of this service uses the "Local" endpoint set.
    pub fn uses_local_endpoints(&self) -> bool {
        self.internal_policy_local || (self.externally_accessible() && self.external_policy_local)
    }

    /// Cluster-IP traffic has an endpoint to go to.
    pub fn has_internal_endpoints(&self) -> bool {
        self.has_any_endpoints && (!self.internal_policy_local || !self.local_endpoints.is_empty())
    }

    /// External traffic (from outside the cluster) has an endpoint to go to.
    pub fn has_external_endpoints(&self) -> bool {
        self.has_any_endpoints && (!self.external_policy_local || !self.local_endpoints.is_empty())
    }

    /// The set cluster-IP traffic uses: the local set under `internalTrafficPolicy: Local`,
    /// else the cluster set. Every backend takes this choice from here.
    pub fn internal_set(&self) -> EndpointSet {
        if self.internal_policy_local {
            EndpointSet::Local
        } else {
            EndpointSet::Cluster
        }
    }

    /// The set traffic from outside the cluster uses (external IPs, load-balancer IPs,
    /// NodePorts): the local set under `externalTrafficPolicy: Local`, else the cluster
    /// set. Traffic from this node's pods and from the node itself always uses the cluster
    /// set, as upstream short-circuits it.
    pub fn external_set(&self) -> EndpointSet {
        if self.external_policy_local {
            EndpointSet::Local
        } else {
            EndpointSet::Cluster
        }
    }

    /// The endpoints of `set`.
    pub fn endpoints(&self, set: EndpointSet) -> &[Endpoint] {
        match set {
            EndpointSet::Cluster => &self.cluster_endpoints,
            EndpointSet::Local => &self.local_endpoints,
        }
    }

    /// The endpoints cluster-IP traffic uses ([`Self::internal_set`]).
    pub fn internal_endpoints(&self) -> &[Endpoint] {
        self.endpoints(self.internal_set())
    }

    /// The endpoints traffic from outside the cluster uses ([`Self::external_set`]).
    pub fn external_endpoints(&self) -> &[Endpoint] {
        self.endpoints(self.external_set())
    }

    /// Every endpoint some rule of this service may DNAT to: cluster then local, without
    /// duplicates.
    pub fn reachable_endpoints(&self) -> Vec<&Endpoint> {
        let mut seen = BTreeSet::new();
        self.cluster_endpoints
            .iter()
            .chain(&self.local_endpoints)
            .filter(|ep| seen.insert(ep.addr))
            .collect()
    }
}

/// How kproxy tells traffic from this node's pods apart from other traffic
/// (`detectLocalMode`), with the match each rule dialect writes for it (upstream's
/// `pkg/proxy/util/localdetector.go`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LocalTrafficDetector {
    /// No detection: cluster-IP traffic is not masqueraded by source.
    #[default]
    None,
    /// Pod traffic comes from this CIDR of this family (`ClusterCIDR`: the cluster's;
    /// `NodeCIDR`: the node's pod CIDR).
    ClusterCidr(IpNet),
    /// Pod traffic arrives on this bridge (`BridgeInterface`).
    BridgeInterface(String),
    /// Pod traffic arrives on interfaces whose name starts with this
    /// (`InterfaceNamePrefix`).
    InterfaceNamePrefix(String),
}

impl LocalTrafficDetector {
    /// Whether traffic can be told apart at all.
    pub fn is_some(&self) -> bool {
        !matches!(self, LocalTrafficDetector::None)
    }

    /// The iptables match of pod traffic (`local`) or of other traffic, `None` without
    /// detection.
    pub fn iptables_match(&self, local: bool) -> Option<String> {
        let not = if local { "" } else { "! " };
        match self {
            LocalTrafficDetector::None => None,
            LocalTrafficDetector::ClusterCidr(cidr) => Some(format!("{not}-s {cidr}")),
            LocalTrafficDetector::BridgeInterface(name) => Some(format!("{not}-i {name}")),
            LocalTrafficDetector::InterfaceNamePrefix(prefix) => Some(format!("{not}-i {prefix}+")),
        }
    }

    /// The nftables match of pod traffic (`local`) or of other traffic (`ip` is the
    /// family's `ip`/`ip6`), `None` without detection.
    pub fn nftables_match(&self, ip: &str, local: bool) -> Option<String> {
        let op = if local { "" } else { "!= " };
        match self {
            LocalTrafficDetector::None => None,
            LocalTrafficDetector::ClusterCidr(cidr) => Some(format!("{ip} saddr {op}{cidr}")),
            LocalTrafficDetector::BridgeInterface(name) => Some(format!("iifname {op}\"{name}\"")),
            LocalTrafficDetector::InterfaceNamePrefix(prefix) => {
                Some(format!("iifname {op}\"{prefix}*\""))
            }
        }
    }
}

/// Which destination addresses accept NodePort traffic.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum NodePortAddresses {
    /// Every local address (`--nodeport-addresses` unset).
    #[default]
    All,
    /// Exactly these node addresses (resolved from CIDRs or `primary`).
    Only(Vec<IpAddr>),
}

/// Per-family facts about this node that the rules depend on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FamilyContext {
    /// This node's addresses of the family (primary first).
    pub node_ips: Vec<IpAddr>,
    /// The addresses NodePorts listen on.
    pub nodeport_addresses: NodePortAddresses,
    /// How pod traffic is recognised.
    pub local_detector: LocalTrafficDetector,
    /// The service CIDRs of this family (ServiceCIDR objects): traffic to an address inside
    /// them that no Service has is dropped (nftables mode, as upstream's).
    pub service_cidrs: Vec<IpNet>,
}

/// Node-wide settings and per-family facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeContext {
    /// This node's name.
    pub node_name: String,
    /// IPv4 facts, `None` when the node does not serve IPv4.
    pub ipv4: Option<FamilyContext>,
    /// IPv6 facts, `None` when the node does not serve IPv6.
    pub ipv6: Option<FamilyContext>,
    /// `--masquerade-all`: SNAT all traffic to cluster IPs.
    pub masquerade_all: bool,
    /// The packet mark bit that requests masquerading (upstream: `1 << 14`).
    pub masquerade_mark: u32,
    /// `--iptables-localhost-nodeports`: accept NodePorts on 127.0.0.0/8 (IPv4 only).
    pub localhost_nodeports: bool,
}

impl NodeContext {
    /// The context of one family, if the node serves it.
    pub fn family(&self, family: IpFamily) -> Option<&FamilyContext> {
        match family {
            IpFamily::V4 => self.ipv4.as_ref(),
            IpFamily::V6 => self.ipv6.as_ref(),
        }
    }

    /// The families this node serves, IPv4 first.
    pub fn families(&self) -> impl Iterator<Item = IpFamily> + '_ {
        IpFamily::ALL
            .into_iter()
            .filter(|f| self.family(*f).is_some())
    }
}

/// What one node must program: node context and every service port, per family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyPlan {
    /// Node-wide settings.
    pub node: NodeContext,
    /// One entry per service port and family, sorted by (name, family).
    pub services: Vec<ServicePortPlan>,
}

impl ProxyPlan {
    /// The service ports of one family.
    pub fn services_of(&self, family: IpFamily) -> impl Iterator<Item = &ServicePortPlan> {
        self.services.iter().filter(move |s| s.family == family)
    }
}

/// Identifies one entry of a [`ProxyPlan`]: a service port in one family.
pub type PlanKey = (ServicePortName, IpFamily);

impl ServicePortPlan {
    /// The key of this entry.
    pub fn key(&self) -> PlanKey {
        (self.name.clone(), self.family)
    }
}

/// What changed from one plan to the next, computed once per sync by the planner and
/// handed to everything that reacts to changes (backends, conntrack clean-up, metrics).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanDelta {
    /// The node context changed (every rule may depend on it).
    pub node_changed: bool,
    /// Entries that are new.
    pub added: BTreeSet<PlanKey>,
    /// Entries whose plan changed.
    pub changed: BTreeSet<PlanKey>,
    /// Entries that are gone.
    pub removed: BTreeSet<PlanKey>,
}

impl PlanDelta {
    /// The delta between two plans, comparing every entry (what an incremental planner's
    /// delta must equal).
    pub fn between(old: &ProxyPlan, new: &ProxyPlan) -> PlanDelta {
        let mut delta = PlanDelta {
            node_changed: old.node != new.node,
            ..PlanDelta::default()
        };
        delta.add_entries(&old.services, &new.services);
        delta
    }

    /// Adds the differences between two sorted runs of entries (`old` replaced by `new`).
    pub fn add_entries(&mut self, old: &[ServicePortPlan], new: &[ServicePortPlan]) {
        let (mut i, mut j) = (0, 0);
        while i < old.len() || j < new.len() {
            let order = match (old.get(i), new.get(j)) {
                (Some(a), Some(b)) => (&a.name, a.family).cmp(&(&b.name, b.family)),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, _) => std::cmp::Ordering::Greater,
            };
            match order {
                std::cmp::Ordering::Less => {
                    self.removed.insert(old[i].key());
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    self.added.insert(new[j].key());
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    if old[i] != new[j] {
                        self.changed.insert(new[j].key());
                    }
                    i += 1;
                    j += 1;
                }
            }
        }
    }

    /// A delta that adds every entry of `plan` (the first plan).
    pub fn everything(plan: &ProxyPlan) -> PlanDelta {
        PlanDelta {
            node_changed: true,
            added: plan.services.iter().map(ServicePortPlan::key).collect(),
            ..PlanDelta::default()
        }
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        !self.node_changed
            && self.added.is_empty()
            && self.changed.is_empty()
            && self.removed.is_empty()
    }

    /// How many entries were added, changed or removed.
    pub fn len(&self) -> usize {
        self.added.len() + self.changed.len() + self.removed.len()
    }

    /// Adds what a later delta changed (so that a sync that could not consume a delta
    /// hands both to the next one).
    pub fn merge(&mut self, later: PlanDelta) {
        self.node_changed |= later.node_changed;
        for key in later.removed {
            if !self.added.remove(&key) {
                self.changed.remove(&key);
                self.removed.insert(key);
            }
        }
        for key in later.added {
            if self.removed.remove(&key) {
                self.changed.insert(key);
            } else {
                self.added.insert(key);
            }
        }
        for key in later.changed {
            if !self.added.contains(&key) {
                self.changed.insert(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_detectors_write_upstreams_matches() {
        let cidr = LocalTrafficDetector::ClusterCidr("10.244.0.0/16".parse().expect("cidr"));
        let bridge = LocalTrafficDetector::BridgeInterface("cbr0".into());
        let prefix = LocalTrafficDetector::InterfaceNamePrefix("cali".into());
        let iptables = |d: &LocalTrafficDetector| (d.iptables_match(true), d.iptables_match(false));
        let nft = |d: &LocalTrafficDetector| {
            (d.nftables_match("ip", true), d.nftables_match("ip", false))
        };
        let some = |a: &str, b: &str| (Some(a.to_owned()), Some(b.to_owned()));
        assert_eq!(
            iptables(&cidr),
            some("-s 10.244.0.0/16", "! -s 10.244.0.0/16")
        );
        assert_eq!(iptables(&bridge), some("-i cbr0", "! -i cbr0"));
        assert_eq!(iptables(&prefix), some("-i cali+", "! -i cali+"));
        assert_eq!(
            nft(&cidr),
            some("ip saddr 10.244.0.0/16", "ip saddr != 10.244.0.0/16")
        );
        assert_eq!(
            nft(&bridge),
            some("iifname \"cbr0\"", "iifname != \"cbr0\"")
        );
        assert_eq!(
            nft(&prefix),
            some("iifname \"cali*\"", "iifname != \"cali*\"")
        );
        assert_eq!(iptables(&LocalTrafficDetector::None), (None, None));
        assert!(!LocalTrafficDetector::None.is_some());
    }
}
