//! The forwarder with IPv6: DNAT and un-NAT, and REJECT as a TCP RST or an ICMPv6 port
//! unreachable with valid checksums.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use kproxy_dataplane::fixtures::{
    self, PACKET_SEQ, detecting_pods, endpoint, plan_on, service_at, single_family_node,
    sock as sa, with_endpoints,
};
use kproxy_dataplane::lb::Algorithm;
use kproxy_dataplane::plan::{Protocol, ServicePortPlan};
use kproxy_dataplane::userspace::forwarder::{Action, Forwarder, ForwarderConfig};
use kproxy_dataplane::userspace::packet::{
    PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_RST, TCP_SYN, fill_checksums, parse,
};
use kproxy_dataplane::userspace::services::ServiceTable;

/// An IPv6 TCP (with `flags`) or UDP packet carrying 3 bytes, with valid checksums.
fn packet6(src: SocketAddr, dst: SocketAddr, proto: u8, flags: u8) -> Vec<u8> {
    fixtures::packet(src, dst, proto, flags, b"abc")
}

/// `default/svc-PORT` on `vip` with remote endpoints.
fn service(proto: Protocol, vip: &str, endpoints: &[&str]) -> ServicePortPlan {
    let name = format!("svc-{}", sa(vip).port());
    with_endpoints(
        service_at("default", &name, proto, vip),
        endpoints.iter().map(|e| endpoint(e, false)).collect(),
    )
}

fn forwarder() -> Forwarder {
    let plan = plan_on(
        detecting_pods(single_family_node("n", "fd00::1"), "fd10::/64"),
        vec![
            service(Protocol::Tcp, "[fd20::10]:80", &["[fd10::5]:8080"]),
            service(Protocol::Tcp, "[fd20::11]:80", &[]),
            service(Protocol::Udp, "[fd20::12]:53", &[]),
        ],
    );
    let config = ForwarderConfig {
        masquerade_v6: Some("fd00:6b70::1".parse().expect("ip")),
        ..ForwarderConfig::default()
    };
    Forwarder::new(config, ServiceTable::build(&plan, Algorithm::Maglev, 3))
}

const NOW: Duration = Duration::from_secs(3);

#[test]
fn ipv6_dnat_round_trip() {
    let mut fw = forwarder();
    let mut reply = [0u8; 1500];
    let client = sa("[fd10::9]:40000");
    let mut syn = packet6(client, sa("[fd20::10]:80"), PROTO_TCP, TCP_SYN);
    assert_eq!(fw.process(&mut syn, &mut reply, NOW), Action::Forward);
    let m = parse(&syn).expect("parses");
    assert_eq!(
        (m.source(), m.destination()),
        (client, sa("[fd10::5]:8080"))
    );
    let mut check = syn.clone();
    fill_checksums(&mut check, &m);
    assert_eq!(check, syn, "incremental checksum is valid");
    let mut back = packet6(m.destination(), client, PROTO_TCP, TCP_SYN | TCP_ACK);
    assert_eq!(fw.process(&mut back, &mut reply, NOW), Action::Forward);
    assert_eq!(parse(&back).expect("parses").source(), sa("[fd20::10]:80"));
    // From outside the cluster CIDR: masqueraded to the IPv6 masquerade address.
    let mut ext = packet6(
        sa("[2001:db8::1]:5000"),
        sa("[fd20::10]:80"),
        PROTO_TCP,
        TCP_SYN,
    );
    assert_eq!(fw.process(&mut ext, &mut reply, NOW), Action::Forward);
    assert_eq!(
        parse(&ext).expect("parses").src,
        "fd00:6b70::1".parse::<IpAddr>().expect("ip")
    );
}

#[test]
fn ipv6_reject() {
    let mut fw = forwarder();
    let mut reply = [0u8; 1500];
    let client = sa("[fd10::9]:40000");
    let mut syn = packet6(client, sa("[fd20::11]:80"), PROTO_TCP, TCP_SYN);
    let Action::Reply(n) = fw.process(&mut syn, &mut reply, NOW) else {
        panic!("expected a RST");
    };
    let rst = parse(&reply[..n]).expect("RST parses");
    assert_eq!(
        (rst.source(), rst.destination()),
        (sa("[fd20::11]:80"), client)
    );
    assert_eq!(rst.tcp_flags, TCP_RST | TCP_ACK);
    assert_eq!(
        &reply[40 + 8..40 + 12],
        &(PACKET_SEQ + 3 + 1).to_be_bytes(),
        "ack = seq + 3 data bytes + SYN"
    );
    let mut dgram = packet6(client, sa("[fd20::12]:53"), PROTO_UDP, 0);
    let Action::Reply(n) = fw.process(&mut dgram, &mut reply, NOW) else {
        panic!("expected ICMPv6");
    };
    let icmp = parse(&reply[..n]).expect("ICMPv6 parses");
    assert_eq!(icmp.proto, PROTO_ICMPV6);
    assert_eq!(&reply[40..42], &[1, 4], "port unreachable");
    assert_eq!(
        &reply[48..48 + dgram.len()],
        &dgram[..],
        "quotes the datagram"
    );
    let mut check = reply[..n].to_vec();
    fill_checksums(&mut check, &icmp);
    assert_eq!(&check[..], &reply[..n], "ICMPv6 checksum is valid");
}
