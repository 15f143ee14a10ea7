//! The one way tests build plans: ready endpoints, TCP ClusterIP service ports, the
//! standard test node and the scenario plans of the renderers' golden tests, plus the
//! synthetic N-service plan of the benchmarks. Unit tests use it directly; integration tests,
//! benches and the controller's tests through the `fixtures` feature. Fixture literals are
//! the tests' own constants, so a literal that does not parse panics with its name.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ipnet::IpNet;

use crate::plan::*;
use crate::userspace::packet::{PROTO_TCP, fill_checksums, parse};

/// An IP from a literal.
pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("fixture IP")
}

/// A socket address from a literal (`IP:PORT`, `[IPv6]:PORT`).
pub fn sock(s: &str) -> SocketAddr {
    s.parse().expect("fixture socket address")
}

/// A ready endpoint.
pub fn endpoint(addr: &str, is_local: bool) -> Endpoint {
    Endpoint {
        addr: sock(addr),
        is_local,
        ready: true,
        serving: true,
        terminating: false,
    }
}

/// A ClusterIP service port `ns/name` (unnamed port) of `protocol` on `vip` (`IP:PORT`),
/// without endpoints.
pub fn service_at(ns: &str, name: &str, protocol: Protocol, vip: &str) -> ServicePortPlan {
    let vip = sock(vip);
    let mut svc = service(ns, name, "", &vip.ip().to_string(), vip.port());
    svc.name.protocol = protocol;
    svc
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

/// A node `name` of one family, the family of its one node IP, and nothing else: no
/// service CIDRs, no local-traffic detector, NodePorts on every address, upstream's
/// masquerade mark. Tests of one topology set the fields their topology needs.
pub fn single_family_node(name: &str, node_ip: &str) -> NodeContext {
    let node_ip = ip(node_ip);
    let family = Some(FamilyContext {
        node_ips: vec![node_ip],
        ..FamilyContext::default()
    });
    let (ipv4, ipv6) = match node_ip {
        IpAddr::V4(_) => (family, None),
        IpAddr::V6(_) => (None, family),
    };
    NodeContext {
        node_name: name.into(),
        ipv4,
        ipv6,
        masquerade_all: false,
        masquerade_mark: 0x4000,
        localhost_nodeports: false,
    }
}

/// `node` with pod traffic detected by `cidr` in the family of its only node IP.
pub fn detecting_pods(mut node: NodeContext, cidr: &str) -> NodeContext {
    let cidr: IpNet = cidr.parse().expect("fixture CIDR");
    let family = match cidr {
        IpNet::V4(_) => node.ipv4.as_mut(),
        IpNet::V6(_) => node.ipv6.as_mut(),
    };
    family.expect("a node of the CIDR's family").local_detector =
        LocalTrafficDetector::ClusterCidr(cidr);
    node
}

/// A plan of `services` on `node`, sorted as the planner sorts.
pub fn plan_on(node: NodeContext, services: Vec<ServicePortPlan>) -> ProxyPlan {
    let mut services = services;
    services.sort_by(|a, b| (&a.name, a.family).cmp(&(&b.name, b.family)));
    ProxyPlan { node, services }
}

// Scenario plans shared by every renderer's golden tests.
/// A plan of `services` on the standard test node, sorted as the planner sorts.
pub fn plan(services: Vec<ServicePortPlan>) -> ProxyPlan {
    plan_on(node(), services)
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

// Packets for the userspace forwarder's tests.
/// The sequence number of every TCP segment [`packet`] builds.
pub const PACKET_SEQ: u32 = 7;

/// An IPv4 or IPv6 packet from `src` to `dst` with valid checksums: TCP (`proto` is
/// [`PROTO_TCP`]) with `flags` and sequence number [`PACKET_SEQ`], or UDP otherwise,
/// carrying `payload`.
pub fn packet(src: SocketAddr, dst: SocketAddr, proto: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let l4_len = if proto == PROTO_TCP { 20 } else { 8 } + payload.len();
    let mut buf = Vec::with_capacity(40 + l4_len);
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            buf.extend_from_slice(&[0x45, 0]);
            buf.extend_from_slice(&((20 + l4_len) as u16).to_be_bytes());
            buf.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, proto, 0, 0]);
            buf.extend_from_slice(&s.octets());
            buf.extend_from_slice(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            buf.extend_from_slice(&[0x60, 0, 0, 0]);
            buf.extend_from_slice(&(l4_len as u16).to_be_bytes());
            buf.extend_from_slice(&[proto, 64]);
            buf.extend_from_slice(&s.octets());
            buf.extend_from_slice(&d.octets());
        }
        _ => panic!("fixture packet from {src} to {dst}: mixed families"),
    }
    buf.extend_from_slice(&src.port().to_be_bytes());
    buf.extend_from_slice(&dst.port().to_be_bytes());
    if proto == PROTO_TCP {
        buf.extend_from_slice(&PACKET_SEQ.to_be_bytes());
        buf.extend_from_slice(&[0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    } else {
        buf.extend_from_slice(&(l4_len as u16).to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
    }
    buf.extend_from_slice(payload);
    let meta = parse(&buf).expect("fixture packet parses");
    fill_checksums(&mut buf, &meta);
    buf
}

// The synthetic plan of the sync and end-to-end benchmarks.
/// The address `offset` after `base`.
fn v4_after(base: Ipv4Addr, offset: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(u32::from(base).wrapping_add(offset as u32)))
}

/// Endpoint `j` of synthetic service `service`; a new `generation` gives a fresh address.
pub fn synthetic_endpoint(
    service: usize,
    j: usize,
    per_service: usize,
    generation: usize,
) -> Endpoint {
    let pod = v4_after(
        Ipv4Addr::new(10, 128, 0, 0),
        service * per_service + j + generation * 3_000_000,
    );
    Endpoint {
        addr: SocketAddr::new(pod, 8080),
        is_local: false,
        ready: true,
        serving: true,
        terminating: false,
    }
}

/// `n` ClusterIP services `ns{i/100}/svc{i}:http` (172.16.0.1, ...) × `per_service`
/// endpoints; the first 2000 with a NodePort; on node `node-a` (192.168.0.10, pods in
/// 10.128.0.0/9). Service `i` is `services[i]` (index order, not the planner's).
pub fn synthetic_plan(n: usize, per_service: usize) -> ProxyPlan {
    let services = (0..n)
        .map(|i| {
            let mut svc = service(
                &format!("ns{}", i / 100),
                &format!("svc{i}"),
                "http",
                "172.16.0.0",
                80,
            );
            svc.cluster_ip = v4_after(Ipv4Addr::new(172, 16, 0, 0), i + 1);
            svc.node_port = (i < 2000).then(|| 30000 + i as u16);
            let endpoints = (0..per_service)
                .map(|j| synthetic_endpoint(i, j, per_service, 0))
                .collect();
            with_endpoints(svc, endpoints)
        })
        .collect();
    ProxyPlan {
        node: detecting_pods(single_family_node("node-a", "192.168.0.10"), "10.128.0.0/9"),
        services,
    }
}
