//! Plan fixtures shared by the renderers' golden tests.

use std::net::IpAddr;

use crate::plan::*;

/// An IP from a literal.
pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("fixture IP")
}

/// A ready endpoint.
pub fn endpoint(addr: &str, is_local: bool) -> Endpoint {
    Endpoint {
        addr: addr.parse().expect("fixture socket address"),
        is_local,
        ready: true,
        serving: true,
        terminating: false,
    }
}

/// A TCP ClusterIP service port `ns/name:port` with the given endpoints (all in the cluster
/// set; local ones also in the local set when a Local policy is set later).
pub fn service(
    ns: &str,
    name: &str,
    port_name: &str,
    cluster_ip: &str,
    port: u16,
) -> ServicePortPlan {
    let cluster_ip = ip(cluster_ip);
    ServicePortPlan {
        name: ServicePortName {
            namespace: ns.into(),
            name: name.into(),
            port: port_name.into(),
            protocol: Protocol::Tcp,
        },
        family: IpFamily::of(&cluster_ip),
        cluster_ip,
        port,
        node_port: None,
        external_ips: vec![],
        load_balancer_ips: vec![],
        load_balancer_source_ranges: vec![],
        session_affinity_timeout: None,
        external_policy_local: false,
        internal_policy_local: false,
        health_check_node_port: None,
        cluster_endpoints: vec![],
        local_endpoints: vec![],
        has_any_endpoints: false,
    }
}

/// Sets endpoints the way the planner would for the service's policies.
pub fn with_endpoints(mut svc: ServicePortPlan, endpoints: Vec<Endpoint>) -> ServicePortPlan {
    svc.has_any_endpoints = !endpoints.is_empty();
    svc.local_endpoints = if svc.uses_local_endpoints() {
        endpoints.iter().filter(|e| e.is_local).cloned().collect()
    } else {
        vec![]
    };
    svc.cluster_endpoints = if svc.uses_cluster_endpoints() {
        endpoints
    } else {
        vec![]
    };
    svc
}

/// A node `node-a` with IPv4 192.168.0.10 and pod CIDR detection on 10.0.0.0/8, and IPv6.
pub fn node() -> NodeContext {
    NodeContext {
        node_name: "node-a".into(),
        ipv4: Some(FamilyContext {
            node_ips: vec![ip("192.168.0.10")],
            nodeport_addresses: NodePortAddresses::All,
            local_detector: LocalTrafficDetector::ClusterCidr("10.0.0.0/8".parse().expect("cidr")),
        }),
        ipv6: Some(FamilyContext {
            node_ips: vec![ip("fd00::10")],
            nodeport_addresses: NodePortAddresses::All,
            local_detector: LocalTrafficDetector::ClusterCidr(
                "fd00:10::/64".parse().expect("cidr"),
            ),
        }),
        masquerade_all: false,
        masquerade_mark: 0x4000,
        localhost_nodeports: true,
    }
}
