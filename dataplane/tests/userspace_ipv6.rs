//! The forwarder with IPv6: DNAT and un-NAT, and REJECT as a TCP RST or an ICMPv6 port
//! unreachable with valid checksums.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use kproxy_dataplane::lb::Algorithm;
use kproxy_dataplane::plan::{
    Endpoint, FamilyContext, IpFamily, LocalTrafficDetector, NodeContext, NodePortAddresses,
    Protocol, ProxyPlan, ServicePortName, ServicePortPlan,
};
use kproxy_dataplane::userspace::forwarder::{Action, Forwarder, ForwarderConfig};
use kproxy_dataplane::userspace::packet::{
    PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_RST, TCP_SYN, fill_checksums, parse,
};
use kproxy_dataplane::userspace::services::ServiceTable;

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

fn packet6(src: SocketAddr, dst: SocketAddr, proto: u8, flags: u8) -> Vec<u8> {
    let (IpAddr::V6(s), IpAddr::V6(d)) = (src.ip(), dst.ip()) else {
        panic!("IPv6 only");
    };
    let l4 = if proto == PROTO_TCP { 20 } else { 8 } + 3;
    let mut b = vec![0x60, 0, 0, 0];
    b.extend_from_slice(&(l4 as u16).to_be_bytes());
    b.extend_from_slice(&[proto, 64]);
    b.extend_from_slice(&s.octets());
    b.extend_from_slice(&d.octets());
    b.extend_from_slice(&src.port().to_be_bytes());
    b.extend_from_slice(&dst.port().to_be_bytes());
    if proto == PROTO_TCP {
        b.extend_from_slice(&[0, 0, 0, 7, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    } else {
        b.extend_from_slice(&(l4 as u16).to_be_bytes());
        b.extend_from_slice(&[0, 0]);
    }
    b.extend_from_slice(b"abc");
    let m = parse(&b).expect("parses");
    fill_checksums(&mut b, &m);
    b
}

fn service(proto: Protocol, vip: &str, endpoints: &[&str]) -> ServicePortPlan {
    let vip = sa(vip);
    let eps: Vec<Endpoint> = endpoints
        .iter()
        .map(|e| Endpoint {
            addr: sa(e),
            is_local: false,
            ready: true,
            serving: true,
            terminating: false,
        })
        .collect();
    ServicePortPlan {
        name: ServicePortName {
            namespace: "default".into(),
            name: format!("svc-{}", vip.port()),
            port: String::new(),
            protocol: proto,
        },
        family: IpFamily::V6,
        cluster_ip: vip.ip(),
        port: vip.port(),
        node_port: None,
        external_ips: vec![],
        load_balancer_ips: vec![],
        load_balancer_source_ranges: vec![],
        session_affinity_timeout: None,
        external_policy_local: false,
        internal_policy_local: false,
        health_check_node_port: None,
        has_any_endpoints: !eps.is_empty(),
        cluster_endpoints: eps,
        local_endpoints: vec![],
    }
}

fn forwarder() -> Forwarder {
    let plan = ProxyPlan {
        node: NodeContext {
            node_name: "n".into(),
            ipv4: None,
            ipv6: Some(FamilyContext {
                service_cidrs: Vec::new(),
                node_ips: vec!["fd00::1".parse().expect("ip")],
                nodeport_addresses: NodePortAddresses::All,
                local_detector: LocalTrafficDetector::ClusterCidr(
                    "fd10::/64".parse().expect("cidr"),
                ),
            }),
            masquerade_all: false,
            masquerade_mark: 1 << 14,
            localhost_nodeports: false,
        },
        services: vec![
            service(Protocol::Tcp, "[fd20::10]:80", &["[fd10::5]:8080"]),
            service(Protocol::Tcp, "[fd20::11]:80", &[]),
            service(Protocol::Udp, "[fd20::12]:53", &[]),
        ],
    };
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
        &11u32.to_be_bytes(),
        "ack = seq 7 + 3 data bytes + SYN"
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
