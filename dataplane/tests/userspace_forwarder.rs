//! The userspace forwarder's packet path without a device: DNAT and un-NAT, masquerade,
//! REJECT, affinity, and plan swaps that keep established flows.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use kproxy_dataplane::fixtures::{
    self, detecting_pods, endpoint, plan_on, service_at, single_family_node, sock as sa,
    with_endpoints,
};
use kproxy_dataplane::lb::Algorithm;
use kproxy_dataplane::plan::{Endpoint, Protocol, ProxyPlan, ServicePortPlan};
use kproxy_dataplane::userspace::forwarder::{Action, Forwarder, ForwarderConfig};
use kproxy_dataplane::userspace::packet::{
    PROTO_ICMP, PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_RST, TCP_SYN, fill_checksums, parse,
};
use kproxy_dataplane::userspace::services::ServiceTable;

/// An IPv4 TCP (with `flags`) or UDP packet with valid checksums.
fn packet(src: SocketAddr, dst: SocketAddr, proto: u8, flags: u8) -> Vec<u8> {
    fixtures::packet(src, dst, proto, flags, b"ping")
}

/// `default/NAME` on `vip` (`IP:PORT`) with these endpoints.
fn service(name: &str, proto: Protocol, vip: &str, endpoints: Vec<Endpoint>) -> ServicePortPlan {
    with_endpoints(service_at("default", name, proto, vip), endpoints)
}

/// The services on node `node-a` (192.168.0.10, pods in 10.244.0.0/16).
fn plan(services: Vec<ServicePortPlan>) -> ProxyPlan {
    plan_on(
        detecting_pods(
            single_family_node("node-a", "192.168.0.10"),
            "10.244.0.0/16",
        ),
        services,
    )
}

fn forwarder(p: &ProxyPlan, algorithm: Algorithm) -> Forwarder {
    let config = ForwarderConfig {
        masquerade_v4: Some("169.254.20.1".parse().expect("ip")),
        ..ForwarderConfig::default()
    };
    Forwarder::new(config, ServiceTable::build(p, algorithm, 1))
}

const T0: Duration = Duration::from_secs(10);

fn web() -> ServicePortPlan {
    service(
        "web",
        Protocol::Tcp,
        "10.96.0.10:80",
        vec![
            endpoint("10.244.1.5:8080", true),
            endpoint("10.244.2.7:8080", false),
        ],
    )
}

#[test]
fn tcp_flow_is_dnated_and_replies_un_natted() {
    let p = plan(vec![web()]);
    let mut fw = forwarder(&p, Algorithm::RoundRobin);
    let mut reply = [0u8; 1500];
    let client = sa("10.244.1.9:40000");
    let mut syn = packet(client, sa("10.96.0.10:80"), PROTO_TCP, TCP_SYN);
    assert_eq!(fw.process(&mut syn, &mut reply, T0), Action::Forward);
    let m = parse(&syn).expect("parses");
    assert_eq!(m.destination(), sa("10.244.1.5:8080"));
    assert_eq!(
        m.source(),
        client,
        "pod traffic to a cluster IP is not masqueraded"
    );
    let mut synack = packet(sa("10.244.1.5:8080"), client, PROTO_TCP, TCP_SYN | TCP_ACK);
    assert_eq!(fw.process(&mut synack, &mut reply, T0), Action::Forward);
    let m = parse(&synack).expect("parses");
    assert_eq!(m.source(), sa("10.96.0.10:80"));
    assert_eq!(m.destination(), client);
    // The second connection goes to the other backend (round robin).
    let mut syn2 = packet(
        sa("10.244.1.9:40001"),
        sa("10.96.0.10:80"),
        PROTO_TCP,
        TCP_SYN,
    );
    assert_eq!(fw.process(&mut syn2, &mut reply, T0), Action::Forward);
    assert_eq!(
        parse(&syn2).expect("parses").destination(),
        sa("10.244.2.7:8080")
    );
    assert_eq!(fw.stats().new_flows, 2);
}

#[test]
fn off_cluster_source_is_masqueraded_and_replies_return() {
    let p = plan(vec![web()]);
    let mut fw = forwarder(&p, Algorithm::RoundRobin);
    let mut reply = [0u8; 1500];
    let client = sa("172.16.0.3:5555");
    let mut syn = packet(client, sa("10.96.0.10:80"), PROTO_TCP, TCP_SYN);
    assert_eq!(fw.process(&mut syn, &mut reply, T0), Action::Forward);
    let m = parse(&syn).expect("parses");
    assert_eq!(m.src, "169.254.20.1".parse::<IpAddr>().expect("ip"));
    let mut back = packet(m.destination(), m.source(), PROTO_TCP, TCP_SYN | TCP_ACK);
    assert_eq!(fw.process(&mut back, &mut reply, T0), Action::Forward);
    let r = parse(&back).expect("parses");
    assert_eq!((r.source(), r.destination()), (sa("10.96.0.10:80"), client));
}

#[test]
fn services_without_endpoints_reject() {
    let p = plan(vec![
        service("empty", Protocol::Tcp, "10.96.0.20:80", vec![]),
        service("dns", Protocol::Udp, "10.96.0.21:53", vec![]),
    ]);
    let mut fw = forwarder(&p, Algorithm::Random);
    let mut reply = [0u8; 1500];
    let client = sa("10.244.1.9:40000");
    let mut syn = packet(client, sa("10.96.0.20:80"), PROTO_TCP, TCP_SYN);
    let Action::Reply(n) = fw.process(&mut syn, &mut reply, T0) else {
        panic!("expected a RST");
    };
    let rst = parse(&reply[..n]).expect("RST parses");
    assert_eq!(
        (rst.source(), rst.destination()),
        (sa("10.96.0.20:80"), client)
    );
    assert_eq!(rst.tcp_flags, TCP_RST | TCP_ACK);
    let mut dgram = packet(client, sa("10.96.0.21:53"), PROTO_UDP, 0);
    let Action::Reply(n) = fw.process(&mut dgram, &mut reply, T0) else {
        panic!("expected ICMP");
    };
    let icmp = parse(&reply[..n]).expect("ICMP parses");
    assert_eq!(icmp.proto, PROTO_ICMP);
    assert_eq!(&reply[20..22], &[3, 3], "port unreachable");
    assert_eq!(fw.stats().rejected, 2);
}

#[test]
fn udp_flows_and_non_services() {
    let dns = service(
        "dns",
        Protocol::Udp,
        "10.96.0.21:53",
        vec![endpoint("10.244.2.2:5353", false)],
    );
    let mut fw = forwarder(&plan(vec![dns]), Algorithm::Maglev);
    let mut reply = [0u8; 1500];
    let client = sa("10.244.1.9:33333");
    let mut q = packet(client, sa("10.96.0.21:53"), PROTO_UDP, 0);
    assert_eq!(fw.process(&mut q, &mut reply, T0), Action::Forward);
    let mut a = packet(sa("10.244.2.2:5353"), client, PROTO_UDP, 0);
    assert_eq!(fw.process(&mut a, &mut reply, T0), Action::Forward);
    assert_eq!(parse(&a).expect("parses").source(), sa("10.96.0.21:53"));
    // Another port of a service address is dropped; traffic to other addresses (a reply
    // steered here for another node's flow) passes unchanged.
    let mut other = packet(client, sa("10.96.0.21:54"), PROTO_UDP, 0);
    assert_eq!(fw.process(&mut other, &mut reply, T0), Action::Drop);
    let mut transit = packet(sa("10.244.2.2:8080"), client, PROTO_TCP, TCP_ACK);
    let before = transit.clone();
    assert_eq!(fw.process(&mut transit, &mut reply, T0), Action::Forward);
    assert_eq!(transit, before);
    // A TCP segment of no tracked flow is dropped, not balanced.
    let mut stray = packet(client, sa("10.96.0.21:53"), PROTO_TCP, TCP_ACK);
    assert_eq!(fw.process(&mut stray, &mut reply, T0), Action::Drop);
    // The flow expires after the UDP stream timeout.
    assert_eq!(fw.maintain(T0 + Duration::from_secs(121), 1 << 20), 1);
}

#[test]
fn plan_swap_keeps_flows_unless_their_backend_left() {
    let p = plan(vec![web()]);
    let mut fw = forwarder(&p, Algorithm::RoundRobin);
    let mut reply = [0u8; 1500];
    let (c1, c2) = (sa("10.244.1.9:40000"), sa("10.244.1.9:40001"));
    for c in [c1, c2] {
        let mut syn = packet(c, sa("10.96.0.10:80"), PROTO_TCP, TCP_SYN);
        assert_eq!(fw.process(&mut syn, &mut reply, T0), Action::Forward);
    }
    // The new plan drops 10.244.2.7 (c2's backend) and adds a third backend first.
    let mut svc = web();
    svc.cluster_endpoints = vec![
        endpoint("10.244.3.3:8080", false),
        endpoint("10.244.1.5:8080", true),
    ];
    assert_eq!(
        fw.install(ServiceTable::build(
            &plan(vec![svc]),
            Algorithm::RoundRobin,
            2
        )),
        1
    );
    let mut ack = packet(c1, sa("10.96.0.10:80"), PROTO_TCP, TCP_ACK);
    assert_eq!(fw.process(&mut ack, &mut reply, T0), Action::Forward);
    assert_eq!(
        parse(&ack).expect("parses").destination(),
        sa("10.244.1.5:8080")
    );
    let mut ack2 = packet(c2, sa("10.96.0.10:80"), PROTO_TCP, TCP_ACK);
    assert_eq!(fw.process(&mut ack2, &mut reply, T0), Action::Drop);
}

#[test]
fn client_ip_affinity_sticks() {
    let mut svc = web();
    svc.session_affinity_timeout = Some(60);
    let mut fw = forwarder(&plan(vec![svc]), Algorithm::RoundRobin);
    let mut reply = [0u8; 1500];
    let mut seen = Vec::new();
    for port in 40000..40010u16 {
        let mut syn = packet(
            sa(&format!("10.244.1.9:{port}")),
            sa("10.96.0.10:80"),
            PROTO_TCP,
            TCP_SYN,
        );
        assert_eq!(fw.process(&mut syn, &mut reply, T0), Action::Forward);
        seen.push(parse(&syn).expect("parses").destination());
    }
    assert!(seen.iter().all(|b| *b == seen[0]), "{seen:?}");
}

/// An ICMP error (`fragmentation needed`) from the backend about a DNATed segment reaches
/// the client as if the service had sent it, quoting the segment the client sent.
#[test]
fn icmp_errors_are_translated_back() {
    let p = plan(vec![web()]);
    let mut fw = forwarder(&p, Algorithm::RoundRobin);
    let mut reply = [0u8; 1500];
    let client = sa("10.244.1.9:40000");
    let mut syn = packet(client, sa("10.96.0.10:80"), PROTO_TCP, TCP_SYN);
    assert_eq!(fw.process(&mut syn, &mut reply, T0), Action::Forward);
    // ICMP from the backend: type 3 code 4, quoting the first 28 bytes of the DNATed SYN.
    let quote = &syn[..28];
    let mut icmp = vec![0x45, 0];
    icmp.extend_from_slice(&((20 + 8 + quote.len()) as u16).to_be_bytes());
    icmp.extend_from_slice(&[
        0, 2, 0, 0, 64, PROTO_ICMP, 0, 0, 10, 244, 1, 5, 10, 244, 1, 9,
    ]);
    icmp.extend_from_slice(&[3, 4, 0, 0, 0, 0, 0x05, 0xdc]);
    icmp.extend_from_slice(quote);
    let m = parse(&icmp).expect("icmp parses");
    fill_checksums(&mut icmp, &m);
    assert_eq!(fw.process(&mut icmp, &mut reply, T0), Action::Forward);
    let out = parse(&icmp).expect("translated icmp parses");
    assert_eq!(out.src, "10.96.0.10".parse::<IpAddr>().expect("ip"));
    assert_eq!(out.dst, client.ip());
    // The quoted header is the client's original SYN header again.
    let original = packet(client, sa("10.96.0.10:80"), PROTO_TCP, TCP_SYN);
    assert_eq!(&icmp[28..48], &original[..20], "quoted IP header");
    assert_eq!(&icmp[48..52], &original[20..24], "quoted ports");
    let mut check = icmp.clone();
    fill_checksums(&mut check, &out);
    assert_eq!(check, icmp, "checksums valid");
}
