//! The tracer against the golden tests' scenario plans: every verdict, frontend, endpoint
//! set and masquerade reason.

use super::*;
use crate::fixtures::*;

/// The golden scenarios: `ns1/web` (ClusterIP, three remote endpoints) and
/// [`external`]: a NodePort, a load balancer with source ranges and
/// `externalTrafficPolicy: Local`, and a UDP external IP.
fn scenarios() -> ProxyPlan {
    let mut services = crate::fixtures::external();
    services.push(web(&[
        "10.180.0.1:8080",
        "10.180.1.1:8080",
        "10.180.2.1:8080",
    ]));
    plan(services)
}

/// The iptables layout's answer.
fn trace(plan: &ProxyPlan, packet: &Packet) -> Trace {
    super::trace(plan, packet, Rules::Iptables)
}

fn tcp(from: &str, to: &str) -> Packet {
    Packet {
        from: ip(from),
        to: sock(to),
        protocol: Protocol::Tcp,
        from_node: false,
        to_node: false,
        in_interface: None,
    }
}

fn addrs(trace: &Trace) -> Vec<String> {
    trace.endpoints.iter().map(|e| e.addr.to_string()).collect()
}

fn frontend(trace: &Trace) -> Option<Frontend> {
    trace.matched.as_ref().map(|m| m.frontend)
}

#[test]
fn a_pod_reaches_a_cluster_ip_unmasqueraded() {
    let t = trace(&scenarios(), &tcp("10.0.5.5", "172.30.0.41:80"));
    assert_eq!(t.verdict, Verdict::Dnat, "{t:#?}");
    assert_eq!(frontend(&t), Some(Frontend::ClusterIp));
    assert_eq!(
        t.matched.as_ref().map(|m| m.name.to_string()),
        Some("ns1/web:http".into())
    );
    assert_eq!(addrs(&t).len(), 3);
    assert!(!t.masquerade, "{t:#?}");
}

#[test]
fn off_cluster_traffic_to_a_cluster_ip_is_masqueraded() {
    let t = trace(&scenarios(), &tcp("192.168.7.7", "172.30.0.41:80"));
    assert_eq!(t.verdict, Verdict::Dnat);
    assert!(t.masquerade, "{t:#?}");
    let mut all = scenarios();
    all.node.masquerade_all = true;
    let t = trace(&all, &tcp("10.0.5.5", "172.30.0.41:80"));
    assert!(t.masquerade && t.reasons.iter().any(|r| r.contains("masquerade-all")));
}

#[test]
fn no_endpoints_rejects_and_a_local_policy_without_local_endpoints_drops() {
    let mut p = scenarios();
    p.services
        .push(service("ns9", "empty", "", "172.30.0.99", 80));
    let t = trace(&p, &tcp("10.0.5.5", "172.30.0.99:80"));
    assert_eq!(t.verdict, Verdict::Reject, "{t:#?}");
    assert!(t.endpoints.is_empty());

    let mut itp = service("ns9", "itp", "", "172.30.0.98", 80);
    itp.internal_policy_local = true;
    p.services
        .push(with_endpoints(itp, vec![endpoint("10.180.3.3:80", false)]));
    let t = trace(&p, &tcp("10.0.5.5", "172.30.0.98:80"));
    assert_eq!(t.verdict, Verdict::Drop, "{t:#?}");
}

#[test]
fn load_balancer_source_ranges_and_the_local_policy() {
    let p = scenarios();
    // Outside every range: dropped, whoever sends it.
    let t = trace(&p, &tcp("198.51.100.1", "203.0.113.7:443"));
    assert_eq!(t.verdict, Verdict::Drop, "{t:#?}");
    assert_eq!(frontend(&t), Some(Frontend::LoadBalancerIp));
    // Allowed, from outside: the local endpoint only, source kept.
    let t = trace(&p, &tcp("203.0.113.9", "203.0.113.7:443"));
    assert_eq!(t.verdict, Verdict::Dnat, "{t:#?}");
    assert_eq!(addrs(&t), ["10.180.0.3:8443"]);
    assert_eq!(
        t.matched.as_ref().and_then(|m| m.set),
        Some(EndpointSet::Local)
    );
    assert!(!t.masquerade);
    // Allowed, from the node itself: every endpoint, masqueraded.
    let t = trace(
        &p,
        &Packet {
            from_node: true,
            ..tcp("192.168.0.10", "203.0.113.7:443")
        },
    );
    assert_eq!(addrs(&t), ["10.180.0.3:8443", "10.180.1.3:8443"], "{t:#?}");
    assert!(t.masquerade);
}

#[test]
fn node_ports_answer_on_node_addresses_and_loopback_from_the_node() {
    let p = scenarios();
    let t = trace(&p, &tcp("198.51.100.1", "192.168.0.10:30080"));
    assert_eq!(frontend(&t), Some(Frontend::NodePort), "{t:#?}");
    assert_eq!(addrs(&t), ["10.180.0.2:80"]);
    assert!(t.masquerade, "Cluster policy: may leave the node");
    let local = Packet {
        from_node: true,
        ..tcp("127.0.0.1", "127.0.0.1:30080")
    };
    assert_eq!(trace(&p, &local).verdict, Verdict::Dnat);
    let t = trace(&p, &tcp("198.51.100.1", "127.0.0.1:30080"));
    assert_eq!(t.verdict, Verdict::Accept, "{t:#?}");
    let t = trace(&p, &tcp("198.51.100.1", "192.168.0.99:30080"));
    assert_eq!(t.verdict, Verdict::Accept, "not a NodePort address: {t:#?}");
}

#[test]
fn protocol_and_port_must_match() {
    let p = scenarios();
    let udp = Packet {
        protocol: Protocol::Udp,
        ..tcp("10.0.5.5", "192.0.2.4:53")
    };
    let t = trace(&p, &udp);
    assert_eq!(frontend(&t), Some(Frontend::ExternalIp), "{t:#?}");
    assert_eq!(addrs(&t), ["10.180.1.4:5353"]);
    assert_eq!(
        trace(&p, &tcp("10.0.5.5", "192.0.2.4:53")).verdict,
        Verdict::Accept
    );
    assert_eq!(
        trace(&p, &tcp("10.0.5.5", "172.30.0.41:81")).verdict,
        Verdict::Accept
    );
}

#[test]
fn hairpin_and_session_affinity() {
    let mut p = scenarios();
    let t = trace(&p, &tcp("10.180.0.2", "172.30.0.42:80"));
    assert!(t.masquerade, "the only endpoint is the source: {t:#?}");
    if let Some(web) = p.services.iter_mut().find(|s| s.name.name == "web") {
        web.session_affinity_timeout = Some(10800);
    }
    let t = trace(&p, &tcp("10.180.1.1", "172.30.0.41:80"));
    assert!(
        !t.masquerade,
        "hairpin for one endpoint of three only: {t:#?}"
    );
    assert!(t.reasons.iter().any(|r| r.contains("hairpin")));
    assert!(t.reasons.iter().any(|r| r.contains("10800 s")), "{t:#?}");
}

#[test]
fn a_family_the_node_does_not_serve_is_untouched() {
    let p = plan_on(single_family_node("n", "192.168.0.10"), vec![]);
    let t = trace(&p, &tcp("fd00::1", "[fd00:10:96::1]:80"));
    assert_eq!(t.verdict, Verdict::Accept);
    assert!(t.reasons[0].contains("does not serve"), "{t:#?}");
}

#[test]
fn ipvs_refuses_where_the_iptables_layout_drops_and_does_not_exempt_pods() {
    let mut p = scenarios();
    let mut itp = service("ns9", "itp", "", "172.30.0.98", 80);
    itp.internal_policy_local = true;
    p.services
        .push(with_endpoints(itp, vec![endpoint("10.180.3.3:80", false)]));
    let ipvs = |packet: &Packet| super::trace(&p, packet, Rules::Ipvs);
    assert_eq!(
        ipvs(&tcp("10.0.5.5", "172.30.0.98:80")).verdict,
        Verdict::Reject
    );
    // A pod of this cluster to the eTP Local load balancer, allowed by its ranges: the
    // iptables layout sends it to every endpoint, IPVS to the local ones only.
    let mut pod = tcp("10.0.5.5", "203.0.113.7:443");
    pod.from = ip("203.0.113.10");
    let mut detecting = p.clone();
    if let Some(v4) = detecting.node.ipv4.as_mut() {
        v4.local_detector =
            LocalTrafficDetector::ClusterCidr("203.0.113.0/24".parse().expect("cidr"));
    }
    assert_eq!(
        super::trace(&detecting, &pod, Rules::Iptables)
            .endpoints
            .len(),
        2
    );
    assert_eq!(
        super::trace(&detecting, &pod, Rules::Ipvs).endpoints.len(),
        1
    );
}

#[test]
fn detection_by_interface_uses_the_arrival_interface() {
    let mut p = scenarios();
    if let Some(v4) = p.node.ipv4.as_mut() {
        v4.local_detector = LocalTrafficDetector::BridgeInterface("cbr0".into());
    }
    let from = |iface: Option<&str>| Packet {
        in_interface: iface.map(str::to_owned),
        ..tcp("192.168.7.7", "172.30.0.41:80")
    };
    assert!(!trace(&p, &from(Some("cbr0"))).masquerade, "pod traffic");
    assert!(trace(&p, &from(Some("eth0"))).masquerade, "other traffic");
    let unknown = trace(&p, &from(None));
    assert!(
        unknown
            .reasons
            .iter()
            .any(|r| r.contains("interface is not known")),
        "{unknown:#?}"
    );
}

#[test]
fn other_ports_of_service_addresses_per_mode() {
    let p = scenarios();
    let other_port = tcp("10.0.5.5", "172.30.0.41:81");
    let unallocated = tcp("10.0.5.5", "172.30.9.9:80");
    let verdict = |packet: &Packet, rules| super::trace(&p, packet, rules).verdict;
    assert_eq!(verdict(&other_port, Rules::Iptables), Verdict::Accept);
    assert_eq!(verdict(&other_port, Rules::Nftables), Verdict::Reject);
    assert_eq!(verdict(&other_port, Rules::Ipvs), Verdict::Reject);
    assert_eq!(verdict(&unallocated, Rules::Iptables), Verdict::Accept);
    assert_eq!(verdict(&unallocated, Rules::Nftables), Verdict::Drop);
    assert_eq!(verdict(&unallocated, Rules::Ipvs), Verdict::Accept);
    let external_other_port = tcp("198.51.100.1", "203.0.113.7:80");
    assert_eq!(verdict(&external_other_port, Rules::Ipvs), Verdict::Reject);
    assert_eq!(
        verdict(&external_other_port, Rules::Nftables),
        Verdict::Accept
    );
}
