//! The names of kproxy's nftables objects and the family-specific words of nft's syntax.
//!
//! Everything lives in one table per family (`ip kproxy`, `ip6 kproxy`) that kproxy owns
//! outright, so names need no prefix. Node-wide objects have fixed names; the shared
//! dispatch chains and their maps are named after what they select (see [`Selection`]), never
//! after a service: per-service data lives only in map and set elements.

use crate::plan::EndpointSet;
use crate::plan::IpFamily;

/// The name of kproxy's table in both families.
pub const TABLE: &str = "kproxy";
/// The table of upstream kube-proxy's nftables mode (`ip kube-proxy`, `ip6 kube-proxy`):
/// kproxy deletes it when it takes a node over, and on `--cleanup`.
pub const UPSTREAM_TABLE: &str = "kube-proxy";
/// A tiny table per family (one empty chain, [`CANARY_CHAIN`]) that full syncs create and
/// whose disappearance reveals an external `nft flush ruleset`.
pub const CANARY_TABLE: &str = "kproxy-canary";
/// The canary table's only chain.
pub const CANARY_CHAIN: &str = "canary";

/// Every cluster IP of the family (`ipv4_addr` set).
pub const CLUSTER_IPS: &str = "cluster-ips";
/// Filter chain after DNAT: rejects traffic to a cluster IP on a port no Service has, and
/// drops traffic to an address of a service CIDR that no Service has.
pub const CLUSTER_IPS_CHECK: &str = "cluster-ips-check";
/// Entry of the nat hooks: dispatch by destination (`service-ips`, `service-nodeports`).
pub const SERVICES: &str = "services";
/// Filter chain that rejects or drops traffic to destinations without (usable) endpoints.
pub const ENDPOINTS_CHECK: &str = "endpoints-check";
/// Filter chain that enforces `loadBalancerSourceRanges` before DNAT.
pub const FIREWALL_CHECK: &str = "firewall-check";
/// Target of the `goto` verdicts of services without endpoints: `reject`.
pub const REJECT_CHAIN: &str = "reject-chain";
/// Forward filtering: INVALID drop and accept of service traffic.
pub const FORWARD: &str = "forward";
/// Sets the masquerade bit of the packet mark.
pub const MARK_MASQ: &str = "mark-for-masquerade";
/// Masquerades marked packets (nat postrouting).
pub const MASQUERADING: &str = "masquerading";

/// Verdict map `addr . proto . port` → entry chain, for cluster, external and LB IPs.
pub const SERVICE_IPS: &str = "service-ips";
/// Verdict map `proto . port` → entry chain, for NodePorts.
pub const SERVICE_NODEPORTS: &str = "service-nodeports";
/// Verdict map `addr . proto . port` → `drop` / `goto reject-chain`.
pub const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
/// Verdict map `proto . port` → `drop` / `goto reject-chain`, for NodePorts.
pub const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
/// Set of `addr . proto . port` subject to `loadBalancerSourceRanges`.
pub const FIREWALL_IPS: &str = "firewall-ips";
/// Interval set of `addr . proto . port . source` that `loadBalancerSourceRanges` allow.
pub const FIREWALL_ALLOW: &str = "firewall-allow";
/// Set of `endpoint . endpoint` address pairs: a DNATed packet whose source is its own
/// destination is a pod reaching itself through a service, and is masqueraded.
pub const HAIRPIN: &str = "hairpin";
/// Set of the node addresses that accept NodePorts (`--nodeport-addresses`).
pub const NODEPORT_IPS: &str = "nodeport-ips";

/// The nft family keyword of an IP family (`ip`, `ip6`).
pub fn family_keyword(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "ip",
        IpFamily::V6 => "ip6",
    }
}

/// The nft address type of an IP family (`ipv4_addr`, `ipv6_addr`).
pub fn addr_type(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "ipv4_addr",
        IpFamily::V6 => "ipv6_addr",
    }
}

/// What identifies a service to the shared chains: the packet's own destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyKind {
    /// `daddr . l4proto . dport`: cluster, external and load-balancer IPs.
    Vip,
    /// `l4proto . dport`: NodePorts on any NodePort address.
    NodePort,
}

impl KeyKind {
    /// The name fragment (`vip`, `np`).
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Vip => "vip",
            KeyKind::NodePort => "np",
        }
    }

    /// The nft type of the key (`ipv4_addr . inet_proto . inet_service`).
    pub fn key_type(self, family: IpFamily) -> String {
        match self {
            KeyKind::Vip => format!("{} . inet_proto . inet_service", addr_type(family)),
            KeyKind::NodePort => "inet_proto . inet_service".to_owned(),
        }
    }

    /// The packet expression of the key (`ip daddr . meta l4proto . th dport`).
    pub fn key_expr(self, family: IpFamily) -> String {
        match self {
            KeyKind::Vip => format!("{} daddr . meta l4proto . th dport", family_keyword(family)),
            KeyKind::NodePort => "meta l4proto . th dport".to_owned(),
        }
    }
}

/// A way of choosing an endpoint shared by every service with the same shape: which set,
/// which key, how many endpoints, and the session-affinity timeout if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selection {
    /// The endpoint set.
    pub set: EndpointSet,
    /// The key that identifies the service.
    pub kind: KeyKind,
    /// The number of endpoints (at least 1).
    pub count: usize,
    /// `sessionAffinity: ClientIP` timeout in seconds.
    pub affinity: Option<u32>,
}

impl Selection {
    fn suffix(&self) -> String {
        self.affinity
            .map(|t| format!("-aff{t}"))
            .unwrap_or_default()
    }

    /// `pick-cluster-vip-3[-aff10800]`: picks one of `count` slots.
    pub fn pick_chain(&self) -> String {
        format!(
            "pick-{}-{}-{}{}",
            self.set,
            self.kind.as_str(),
            self.count,
            self.suffix()
        )
    }

    /// `slot-cluster-vip-0[-aff10800]`: DNATs to the endpoint in slot `slot`.
    pub fn slot_chain(&self, slot: usize) -> String {
        format!(
            "slot-{}-{}-{slot}{}",
            self.set,
            self.kind.as_str(),
            self.suffix()
        )
    }
}

/// `ep-cluster-vip-0`: map `key → endpoint address . port` of one slot.
pub fn endpoint_map(set: EndpointSet, kind: KeyKind, slot: usize) -> String {
    format!("ep-{set}-{}-{slot}", kind.as_str())
}

/// `aff-cluster-vip-0`: dynamic set of `client . key` that stick to one slot.
pub fn affinity_set(set: EndpointSet, kind: KeyKind, slot: usize) -> String {
    format!("aff-{set}-{}-{slot}", kind.as_str())
}

/// Is `name` one of the dynamic affinity sets (whose elements the kernel owns)?
pub fn is_affinity_set(name: &str) -> bool {
    name.starts_with("aff-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_names() {
        let sel = Selection {
            set: EndpointSet::Local,
            kind: KeyKind::NodePort,
            count: 2,
            affinity: Some(60),
        };
        assert_eq!(sel.pick_chain(), "pick-local-np-2-aff60");
        assert_eq!(sel.slot_chain(1), "slot-local-np-1-aff60");
        assert_eq!(
            endpoint_map(EndpointSet::Cluster, KeyKind::Vip, 0),
            "ep-cluster-vip-0"
        );
        assert!(is_affinity_set(&affinity_set(
            EndpointSet::Cluster,
            KeyKind::Vip,
            3
        )));
    }

    #[test]
    fn family_words() {
        assert_eq!(family_keyword(IpFamily::V6), "ip6");
        assert_eq!(
            KeyKind::Vip.key_type(IpFamily::V6),
            "ipv6_addr . inet_proto . inet_service"
        );
        assert_eq!(
            KeyKind::NodePort.key_expr(IpFamily::V4),
            "meta l4proto . th dport"
        );
    }
}
