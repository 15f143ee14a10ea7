//! Unit tests of what the planner emits: slice/port matching, de-duplication, families,
//! skipped Services and output order.

use kproxy_dataplane::plan::{IpFamily, Protocol};

use super::fixtures::*;
use super::plan;
use crate::model::{Service, SkipReason};

#[test]
fn duplicates_across_slices_prefer_the_ready_copy() {
    let slices = vec![
        slice("web-a", "web", vec![ep("10.1.0.1").terminating(true)]),
        slice("web-b", "web", vec![ep("10.1.0.1").on(NODE)]),
    ];
    let p = plan_one(service("web", "10.0.0.1"), slices);
    assert_eq!(addrs(&p.cluster_endpoints), ["10.1.0.1:8080"]);
    assert!(p.cluster_endpoints[0].ready && p.cluster_endpoints[0].is_local);
}

#[test]
fn duplicates_of_equal_readiness_keep_the_first_slice_by_name() {
    let slices = vec![
        slice("web-b", "web", vec![ep("10.1.0.1").on("node-b")]),
        slice("web-a", "web", vec![ep("10.1.0.1").on(NODE)]),
    ];
    let p = plan_one(service("web", "10.0.0.1"), slices);
    assert_eq!(p.cluster_endpoints.len(), 1);
    assert!(p.cluster_endpoints[0].is_local, "web-a sorts first");
}

#[test]
fn same_address_on_different_target_ports_is_not_a_duplicate() {
    let mut other_port = slice("web-b", "web", vec![ep("10.1.0.1")]);
    other_port.ports[0].port = 9090;
    let slices = vec![slice("web-a", "web", vec![ep("10.1.0.1")]), other_port];
    let p = plan_one(service("web", "10.0.0.1"), slices);
    assert_eq!(
        addrs(&p.cluster_endpoints),
        ["10.1.0.1:8080", "10.1.0.1:9090"]
    );
}

#[test]
fn slice_ports_match_by_name_and_protocol() {
    let mut svc = service("dns", "10.0.0.10");
    svc.ports = vec![
        port("dns", Protocol::Udp, 53),
        port("dns-tcp", Protocol::Tcp, 53),
    ];
    let mut s = slice("dns-1", "dns", vec![ep("10.1.0.1")]);
    s.ports = vec![
        slice_port("dns", Protocol::Tcp, 1111),
        slice_port("dns", Protocol::Udp, 5353),
        slice_port("dns-tcp", Protocol::Tcp, 5354),
        slice_port("other", Protocol::Udp, 2222),
    ];
    let p = plan(&snapshot(vec![svc], vec![s]), &node_ctx(true, false), None);
    let by_port: Vec<_> = p
        .services
        .iter()
        .map(|s| (s.name.port.as_str(), addrs(&s.cluster_endpoints)))
        .collect();
    assert_eq!(
        by_port,
        [
            ("dns", vec!["10.1.0.1:5353".to_string()]),
            ("dns-tcp", vec!["10.1.0.1:5354".to_string()]),
        ]
    );
}

#[test]
fn unnamed_port_matches_unnamed_slice_port_only() {
    let mut svc = service("web", "10.0.0.1");
    svc.ports = vec![port("", Protocol::Tcp, 80)];
    let mut s = slice("web-1", "web", vec![ep("10.1.0.1")]);
    s.ports = vec![
        slice_port("", Protocol::Tcp, 8080),
        slice_port("http", Protocol::Tcp, 1),
    ];
    let p = plan_one(svc, vec![s]);
    assert_eq!(addrs(&p.cluster_endpoints), ["10.1.0.1:8080"]);
    assert_eq!(p.name.to_string(), "ns/web:");
}

#[test]
fn endpoints_of_other_services_are_ignored() {
    let slices = vec![
        slice("web-1", "web", vec![ep("10.1.0.1")]),
        slice("api-1", "api", vec![ep("10.1.0.2")]),
    ];
    let p = plan_one(service("web", "10.0.0.1"), slices);
    assert_eq!(addrs(&p.cluster_endpoints), ["10.1.0.1:8080"]);
}

fn dual_stack_service() -> Service {
    let mut svc = service("web", "10.0.0.1");
    svc.cluster_ips = vec![ip("fd00::1"), ip("10.0.0.1")];
    svc.external_ips = vec![ip("192.0.2.1"), ip("2001:db8::1")];
    svc.load_balancer_ips = vec![ip("2001:db8::2"), ip("192.0.2.2")];
    svc.load_balancer_source_ranges = vec![
        "198.51.100.0/24".parse().expect("net"),
        "2001:db8:1::/48".parse().expect("net"),
    ];
    svc.session_affinity_timeout = Some(600);
    svc
}

#[test]
fn dual_stack_service_is_split_per_family() {
    let slices = vec![
        slice("web-4", "web", vec![ep("10.1.0.1")]),
        slice("web-6", "web", vec![ep("fd01::1")]),
    ];
    let p = plan(
        &snapshot(vec![dual_stack_service()], slices),
        &node_ctx(true, true),
        None,
    );
    let [v4, v6] = p.services.as_slice() else {
        panic!("expected two plans: {p:?}");
    };
    assert_eq!((v4.family, v4.cluster_ip), (IpFamily::V4, ip("10.0.0.1")));
    assert_eq!(v4.external_ips, [ip("192.0.2.1")]);
    assert_eq!(v4.load_balancer_ips, [ip("192.0.2.2")]);
    assert_eq!(v4.load_balancer_source_ranges.len(), 1);
    assert_eq!(addrs(&v4.cluster_endpoints), ["10.1.0.1:8080"]);
    assert_eq!((v6.family, v6.cluster_ip), (IpFamily::V6, ip("fd00::1")));
    assert_eq!(v6.external_ips, [ip("2001:db8::1")]);
    assert_eq!(v6.load_balancer_ips, [ip("2001:db8::2")]);
    assert_eq!(addrs(&v6.cluster_endpoints), ["[fd01::1]:8080"]);
    assert!(
        p.services
            .iter()
            .all(|s| s.session_affinity_timeout == Some(600))
    );
}

#[test]
fn families_the_node_does_not_serve_are_absent() {
    let v6_only = service("v6", "fd00::2");
    let snap = snapshot(vec![dual_stack_service(), v6_only], vec![]);
    let p = plan(&snap, &node_ctx(true, false), None);
    let names: Vec<_> = p
        .services
        .iter()
        .map(|s| (s.name.name.as_str(), s.family))
        .collect();
    assert_eq!(names, [("web", IpFamily::V4)]);
}

#[test]
fn skipped_services_are_absent() {
    let mut headless = service("headless", "10.0.0.2");
    headless.skip = Some(SkipReason::Headless);
    let mut other = service("other", "10.0.0.3");
    other.skip = Some(SkipReason::OtherProxy("x".into()));
    let snap = snapshot(vec![headless, other, service("web", "10.0.0.1")], vec![]);
    let p = plan(&snap, &node_ctx(true, true), None);
    let names: Vec<_> = p.services.iter().map(|s| s.name.name.as_str()).collect();
    assert_eq!(names, ["web"]);
}

#[test]
fn output_is_sorted_and_carries_node_and_port_fields() {
    let mut a = dual_stack_service();
    a.ports = vec![port("b", Protocol::Tcp, 81), port("a", Protocol::Udp, 80)];
    a.ports[0].node_port = Some(30001);
    let snap = snapshot(vec![service("zz", "10.0.0.9"), a], vec![]);
    let node = node_ctx(true, true);
    let p = plan(&snap, &node, None);
    let keys: Vec<_> = p
        .services
        .iter()
        .map(|s| (s.name.to_string(), s.family, s.port, s.node_port))
        .collect();
    let expected = [
        ("ns/web:a", IpFamily::V4, 80, None),
        ("ns/web:a", IpFamily::V6, 80, None),
        ("ns/web:b", IpFamily::V4, 81, Some(30001)),
        ("ns/web:b", IpFamily::V6, 81, Some(30001)),
        ("ns/zz:http", IpFamily::V4, 80, None),
    ];
    let expected: Vec<_> = expected
        .iter()
        .map(|(n, f, p, np)| (n.to_string(), *f, *p, *np))
        .collect();
    assert_eq!(keys, expected);
    assert_eq!(p.node, node);
}
