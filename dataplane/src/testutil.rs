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

/// A node `node-a` with IPv4 192.168.0.10, pod CIDR detection on 10.0.0.0/8 and the
/// service CIDR 172.30.0.0/16 (upstream's test values), and IPv6.
pub fn node() -> NodeContext {
    NodeContext {
        node_name: "node-a".into(),
        ipv4: Some(FamilyContext {
            node_ips: vec![ip("192.168.0.10")],
            nodeport_addresses: NodePortAddresses::All,
            local_detector: LocalTrafficDetector::ClusterCidr("10.0.0.0/8".parse().expect("cidr")),
            service_cidrs: vec!["172.30.0.0/16".parse().expect("cidr")],
        }),
        ipv6: Some(FamilyContext {
            node_ips: vec![ip("fd00::10")],
            nodeport_addresses: NodePortAddresses::All,
            local_detector: LocalTrafficDetector::ClusterCidr(
                "fd00:10::/64".parse().expect("cidr"),
            ),
            service_cidrs: vec!["fd00:10:96::/112".parse().expect("cidr")],
        }),
        masquerade_all: false,
        masquerade_mark: 0x4000,
        localhost_nodeports: true,
    }
}

// Scenario plans shared by every renderer's golden tests.
/// A plan of `services` on the standard test node, sorted as the planner sorts.
pub fn plan(services: Vec<ServicePortPlan>) -> ProxyPlan {
    let mut services = services;
    services.sort_by(|a, b| (&a.name, a.family).cmp(&(&b.name, b.family)));
    ProxyPlan {
        node: node(),
        services,
    }
}

/// `ns1/web:http`, a ClusterIP with three endpoints.
pub fn web(endpoints: &[&str]) -> ServicePortPlan {
    with_endpoints(
        service("ns1", "web", "http", "172.30.0.41", 80),
        endpoints.iter().map(|e| endpoint(e, false)).collect(),
    )
}

/// NodePort, LoadBalancer with source ranges and eTP Local, UDP external IP.
pub fn external() -> Vec<ServicePortPlan> {
    let mut np = service("ns2", "svc2", "p80", "172.30.0.42", 80);
    np.node_port = Some(30080);
    let np = with_endpoints(np, vec![endpoint("10.180.0.2:80", true)]);

    let mut lb = service("ns3", "lb", "", "172.30.0.43", 443);
    lb.node_port = Some(30443);
    lb.load_balancer_ips = vec![ip("203.0.113.7")];
    lb.load_balancer_source_ranges = vec![
        "203.0.113.0/25".parse().expect("cidr"),
        "203.0.113.64/26".parse().expect("cidr"),
        "192.168.0.0/24".parse().expect("cidr"),
    ];
    lb.external_policy_local = true;
    lb.health_check_node_port = Some(32000);
    let lb = with_endpoints(
        lb,
        vec![
            endpoint("10.180.0.3:8443", true),
            endpoint("10.180.1.3:8443", false),
        ],
    );

    let mut ext = service("ns4", "ext", "dns", "172.30.0.44", 53);
    ext.name.protocol = Protocol::Udp;
    ext.external_ips = vec![ip("192.0.2.4")];
    let ext = with_endpoints(ext, vec![endpoint("10.180.1.4:5353", false)]);
    vec![np, lb, ext]
}
