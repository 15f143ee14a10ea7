//! What the rules of a plan do to one new connection, decided from the plan alone: which
//! service port it matches and how, the verdict, the endpoints it may go to, whether it is
//! masqueraded, and why. Every mode programs these decisions (upstream's iptables layout is
//! the reference: `KUBE-SERVICES`, `KUBE-EXT-`, `KUBE-FW-`, `KUBE-SEP-`), so one pure
//! function answers for all of them; `kproxy explain` prints its answer.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::plan::{
    Endpoint, EndpointSet, FamilyContext, IpFamily, LocalTrafficDetector, NodeContext,
    NodePortAddresses, Protocol, ProxyPlan, ServicePortName, ServicePortPlan,
};

/// Where a mode's rules differ from upstream's iptables layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rules {
    /// The iptables layout; userspace mode decides the same.
    #[default]
    Iptables,
    /// nftables, as upstream's nftables mode: the iptables layout's decisions, and traffic
    /// to a cluster IP on a port no service has is rejected, to an unallocated address of
    /// a service CIDR dropped.
    Nftables,
    /// IPVS: a virtual server without real servers for the traffic answers ICMP port
    /// unreachable (a refusal, where the iptables layout drops), pod traffic is not
    /// exempt from `externalTrafficPolicy: Local` (the detector only decides cluster-IP
    /// masquerading), and new connections to another port of an address bound to
    /// `kube-ipvs0` are rejected (`KUBE-IPVS-FILTER`), as upstream's IPVS mode.
    Ipvs,
}

/// A new connection as the node's rules see its first packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// The source address.
    pub from: IpAddr,
    /// The destination.
    pub to: SocketAddr,
    /// The protocol.
    pub protocol: Protocol,
    /// Sent by the node itself (the source is one of its addresses, loopback included),
    /// else arriving from outside (another host or a pod).
    pub from_node: bool,
    /// The destination is one of the node's own addresses (`-m addrtype --dst-type LOCAL`:
    /// NodePorts answer there without `--nodeport-addresses`).
    pub to_node: bool,
    /// The interface it arrives on (for local-traffic detection by interface), if known.
    pub in_interface: Option<String>,
}

/// How a packet reached a service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frontend {
    /// Its cluster IP (internal traffic).
    ClusterIp,
    /// One of its external IPs.
    ExternalIp,
    /// One of its load-balancer IPs.
    LoadBalancerIp,
    /// Its NodePort on a NodePort address of this node.
    NodePort,
}

impl Frontend {
    /// The name used in explanations and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Frontend::ClusterIp => "cluster IP",
            Frontend::ExternalIp => "external IP",
            Frontend::LoadBalancerIp => "load-balancer IP",
            Frontend::NodePort => "NodePort",
        }
    }
}

/// What happens to the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// DNATed to one of the endpoints.
    Dnat,
    /// Rejected (TCP RST / ICMP unreachable): the service has no endpoints.
    Reject,
    /// Dropped silently.
    Drop,
    /// No service rule applies: the packet goes on untouched.
    Accept,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Dnat => "dnat",
            Verdict::Reject => "reject",
            Verdict::Drop => "drop",
            Verdict::Accept => "accept",
        })
    }
}

/// The service port a packet matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    /// The service port.
    pub name: ServicePortName,
    /// Its family.
    pub family: IpFamily,
    /// How the packet reached it.
    pub frontend: Frontend,
    /// The endpoint set the packet's traffic uses (`None` when it is not DNATed).
    pub set: Option<EndpointSet>,
}

/// What the rules do to a packet, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    /// The service port matched, if any.
    pub matched: Option<Matched>,
    /// The verdict.
    pub verdict: Verdict,
    /// The endpoints a DNAT picks from.
    pub endpoints: Vec<Endpoint>,
    /// Whether the packet leaves with the node's address as source (for every endpoint).
    pub masquerade: bool,
    /// Why, step by step, in the order the rules decide.
    pub reasons: Vec<String>,
}

/// Traces `packet` through the `rules` of `plan`.
pub fn trace(plan: &ProxyPlan, packet: &Packet, rules: Rules) -> Trace {
    let family = IpFamily::of(&packet.to.ip());
    let mut trace = Trace {
        matched: None,
        verdict: Verdict::Accept,
        endpoints: Vec::new(),
        masquerade: false,
        reasons: Vec::new(),
    };
    let Some(fam) = plan.node.family(family) else {
        trace
            .reasons
            .push(format!("this node does not serve {family}"));
        return trace;
    };
    let Some((svc, frontend)) = find(plan, fam, packet, family) else {
        trace.reasons.push(format!(
            "no service port of this node has {} {}",
            packet.protocol.as_lower(),
            packet.to
        ));
        unmatched(&mut trace, plan, fam, packet, rules);
        return trace;
    };
    trace.reasons.push(format!(
        "{} {} is the {} of {}",
        packet.protocol.as_lower(),
        packet.to,
        frontend.name(),
        svc.name
    ));
    trace.matched = Some(Matched {
        name: svc.name.clone(),
        family,
        frontend,
        set: None,
    });
    let origin = origin(&fam.local_detector, packet);
    if frontend == Frontend::ClusterIp {
        internal(&mut trace, &plan.node, svc, origin, packet.from, rules);
    } else {
        external(&mut trace, fam, svc, origin, packet, rules);
    }
    if trace.verdict == Verdict::Dnat {
        dnat_details(&mut trace, svc, packet);
    }
    trace
}

/// What the mode does with a packet no service port captures: nftables rejects it on a
/// cluster IP and drops it on an unallocated address of a service CIDR; IPVS rejects a new
/// connection to an address bound to `kube-ipvs0`; else it goes on untouched.
fn unmatched(
    trace: &mut Trace,
    plan: &ProxyPlan,
    fam: &FamilyContext,
    packet: &Packet,
    rules: Rules,
) {
    let ip = packet.to.ip();
    let family = IpFamily::of(&ip);
    let mut services = plan.services_of(family);
    match rules {
        Rules::Nftables => {
            if services.any(|s| s.cluster_ip == ip) {
                trace.verdict = Verdict::Reject;
                trace.reasons.push(format!(
                    "{ip} is a cluster IP: traffic to its other ports is rejected"
                ));
            } else if let Some(cidr) = fam.service_cidrs.iter().find(|c| c.contains(&ip)) {
                trace.verdict = Verdict::Drop;
                trace.reasons.push(format!(
                    "{ip} is an unallocated address of the service CIDR {cidr}: dropped"
                ));
            }
        }
        Rules::Ipvs => {
            let bound = services.any(|s| {
                s.cluster_ip == ip
                    || s.external_ips.contains(&ip)
                    || s.load_balancer_ips.contains(&ip)
            });
            if bound {
                trace.verdict = Verdict::Reject;
                trace.reasons.push(format!(
                    "{ip} is bound to kube-ipvs0: new connections to its other ports are \
                     rejected (KUBE-IPVS-FILTER)"
                ));
            }
        }
        Rules::Iptables => {}
    }
}

/// The service port whose rules capture the packet, and how: cluster IPs, external IPs and
/// load-balancer IPs in `KUBE-SERVICES` order, then NodePorts.
fn find<'p>(
    plan: &'p ProxyPlan,
    fam: &FamilyContext,
    packet: &Packet,
    family: IpFamily,
) -> Option<(&'p ServicePortPlan, Frontend)> {
    let (ip, port) = (packet.to.ip(), packet.to.port());
    let ours = || {
        plan.services_of(family)
            .filter(move |s| s.name.protocol == packet.protocol)
    };
    let by_ip = ours().filter(|s| s.port == port).find_map(|s| {
        if s.cluster_ip == ip {
            Some((s, Frontend::ClusterIp))
        } else if s.external_ips.contains(&ip) {
            Some((s, Frontend::ExternalIp))
        } else if s.load_balancer_ips.contains(&ip) {
            Some((s, Frontend::LoadBalancerIp))
        } else {
            None
        }
    });
    by_ip.or_else(|| {
        is_nodeport_address(plan, fam, packet)
            .then(|| ours().find(|s| s.node_port == Some(port)))
            .flatten()
            .map(|s| (s, Frontend::NodePort))
    })
}

/// Whether NodePorts answer on the packet's destination: a NodePort address of this node,
/// or (IPv4, from the node itself, with localhost NodePorts) a loopback address.
fn is_nodeport_address(plan: &ProxyPlan, fam: &FamilyContext, packet: &Packet) -> bool {
    let ip = packet.to.ip();
    if ip.is_loopback() {
        return ip.is_ipv4() && packet.from_node && plan.node.localhost_nodeports;
    }
    match &fam.nodeport_addresses {
        NodePortAddresses::All => packet.to_node || fam.node_ips.contains(&ip),
        NodePortAddresses::Only(ips) => ips.contains(&ip),
    }
}

/// Where the local-traffic detector says a packet comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// One of the cluster's pods (the detector matches).
    Pod,
    /// Not a pod (the detector does not match).
    Other,
    /// No detection is configured.
    Undetected,
    /// Detection is by input interface, which an address does not tell.
    ByInterface,
}

/// What the family's local-traffic detector makes of the packet.
fn origin(detector: &LocalTrafficDetector, packet: &Packet) -> Origin {
    let by_interface =
        |matches: &dyn Fn(&str) -> bool| match (&packet.in_interface, packet.from_node) {
            // The node's own packets come from no interface.
            (_, true) => Origin::Other,
            (Some(iface), false) if matches(iface) => Origin::Pod,
            (Some(_), false) => Origin::Other,
            (None, false) => Origin::ByInterface,
        };
    match detector {
        LocalTrafficDetector::None => Origin::Undetected,
        LocalTrafficDetector::ClusterCidr(cidr) if cidr.contains(&packet.from) => Origin::Pod,
        LocalTrafficDetector::ClusterCidr(_) => Origin::Other,
        LocalTrafficDetector::BridgeInterface(name) => by_interface(&|iface| iface == name),
        LocalTrafficDetector::InterfaceNamePrefix(prefix) => {
            by_interface(&|iface| iface.starts_with(prefix.as_str()))
        }
    }
}

/// Cluster-IP traffic: the internal set, masqueraded when `--masquerade-all` or when the
/// detector sees it come from outside the cluster's pods.
fn internal(
    trace: &mut Trace,
    node: &NodeContext,
    svc: &ServicePortPlan,
    origin: Origin,
    from: IpAddr,
    rules: Rules,
) {
    if !svc.has_internal_endpoints() {
        no_endpoint(trace, svc, "internalTrafficPolicy: Local", rules);
        return;
    }
    use_set(trace, svc, svc.internal_set(), "internal");
    if node.masquerade_all {
        mark(trace, "masquerade-all is set");
        return;
    }
    match origin {
        Origin::Other => mark(
            trace,
            &format!(
                "the source {from} is not traffic of this cluster's pods (local-traffic detection)"
            ),
        ),
        Origin::ByInterface => trace.reasons.push(
            "masqueraded unless the packet arrives on a pod interface (local-traffic \
             detection by interface; the interface is not known)"
                .into(),
        ),
        Origin::Undetected => trace.reasons.push(
            "not masqueraded by source: no local-traffic detection (--cluster-cidr, \
             --detect-local-mode)"
                .into(),
        ),
        Origin::Pod => {}
    }
}

/// Traffic to an external IP, a load-balancer IP or a NodePort.
fn external(
    trace: &mut Trace,
    fam: &FamilyContext,
    svc: &ServicePortPlan,
    origin: Origin,
    packet: &Packet,
    rules: Rules,
) {
    if !svc.has_any_endpoints {
        no_endpoint(trace, svc, "", rules);
        return;
    }
    let frontend = trace.matched.as_ref().map(|m| m.frontend);
    if frontend == Some(Frontend::LoadBalancerIp) && !svc.load_balancer_source_ranges.is_empty() {
        let allowed = svc
            .load_balancer_source_ranges
            .iter()
            .find(|r| r.contains(&packet.from));
        let from_node_ranges = svc
            .load_balancer_source_ranges
            .iter()
            .any(|r| fam.node_ips.iter().any(|ip| r.contains(ip)));
        match allowed {
            Some(range) => trace.reasons.push(format!(
                "the source {} is in loadBalancerSourceRanges ({range})",
                packet.from
            )),
            None if from_node_ranges && svc.load_balancer_ips.contains(&packet.from) => {
                trace.reasons.push(format!(
                    "the source {} is the load-balancer IP itself and a source range allows \
                     the node",
                    packet.from
                ));
            }
            None => {
                trace.verdict = Verdict::Drop;
                trace.reasons.push(format!(
                    "the source {} is in none of loadBalancerSourceRanges: dropped",
                    packet.from
                ));
                return;
            }
        }
    }
    if !svc.external_policy_local {
        use_set(trace, svc, EndpointSet::Cluster, "external");
        mark(
            trace,
            "external traffic with externalTrafficPolicy: Cluster may go to another node",
        );
        return;
    }
    if origin == Origin::Pod && rules != Rules::Ipvs {
        trace.reasons.push(format!(
            "the source {} is pod traffic (local-traffic detection): it bypasses \
             externalTrafficPolicy: Local",
            packet.from
        ));
        use_set(trace, svc, EndpointSet::Cluster, "cluster");
        return;
    }
    if packet.from_node {
        mark(
            trace,
            "the node itself reaches an external destination (not subject to \
             externalTrafficPolicy: Local)",
        );
        use_set(trace, svc, EndpointSet::Cluster, "cluster");
        return;
    }
    if origin == Origin::ByInterface && rules != Rules::Ipvs {
        trace.reasons.push(
            "a packet arriving on a pod interface would bypass externalTrafficPolicy: Local \
             (local-traffic detection by interface; the interface is not known); traced as \
             arriving from outside"
                .into(),
        );
    }
    if !svc.has_external_endpoints() {
        no_endpoint(trace, svc, "externalTrafficPolicy: Local", rules);
        return;
    }
    use_set(trace, svc, EndpointSet::Local, "external");
}

/// No endpoint for this traffic: REJECT when the service has none at all, DROP when only
/// the traffic policy (`policy`) leaves it without one (IPVS: refused either way).
fn no_endpoint(trace: &mut Trace, svc: &ServicePortPlan, policy: &str, rules: Rules) {
    if svc.has_any_endpoints && rules == Rules::Ipvs {
        trace.verdict = Verdict::Reject;
        trace.reasons.push(format!(
            "{} has no endpoint on this node under {policy}: its IPVS virtual server has no \
             real server and answers port unreachable",
            svc.name
        ));
    } else if svc.has_any_endpoints {
        trace.verdict = Verdict::Drop;
        trace.reasons.push(format!(
            "{} has no endpoint on this node under {policy}: dropped",
            svc.name
        ));
    } else {
        trace.verdict = Verdict::Reject;
        trace.reasons.push(format!(
            "{} has no usable endpoint anywhere: rejected",
            svc.name
        ));
    }
}

/// DNAT to the endpoints of `set`.
fn use_set(trace: &mut Trace, svc: &ServicePortPlan, set: EndpointSet, traffic: &str) {
    trace.verdict = Verdict::Dnat;
    trace.endpoints = svc.endpoints(set).to_vec();
    if let Some(m) = trace.matched.as_mut() {
        m.set = Some(set);
    }
    trace.reasons.push(format!(
        "{traffic} traffic uses the {set} endpoint set (endpoints: {})",
        trace.endpoints.len()
    ));
}

/// Masqueraded, because `why`.
fn mark(trace: &mut Trace, why: &str) {
    trace.masquerade = true;
    trace.reasons.push(format!("masqueraded: {why}"));
}

/// Hairpin and session affinity of a DNATed packet.
fn dnat_details(trace: &mut Trace, svc: &ServicePortPlan, packet: &Packet) {
    let hairpin: Vec<&Endpoint> = trace
        .endpoints
        .iter()
        .filter(|e| e.ip() == packet.from)
        .collect();
    if !hairpin.is_empty() && !trace.masquerade {
        let all = hairpin.len() == trace.endpoints.len();
        let which: Vec<String> = hairpin.iter().map(|e| e.addr.to_string()).collect();
        trace.reasons.push(format!(
            "masqueraded when DNATed to {} (hairpin: the pod reaches itself)",
            which.join(", ")
        ));
        trace.masquerade = all;
    }
    if let Some(timeout) = svc.session_affinity_timeout {
        trace.reasons.push(format!(
            "session affinity ClientIP: the source keeps its endpoint for {timeout} s after \
             its last connection"
        ));
    }
}

#[cfg(test)]
mod tests;
