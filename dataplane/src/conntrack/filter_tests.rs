//! Unit tests of the stale-flow planner.

use super::*;
use crate::conntrack::flow::FlowTuple;
use crate::fixtures::{endpoint, ip, plan, service, with_endpoints};
use crate::plan::{Endpoint, ServicePortPlan};

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

/// A flow from `client` to `frontend`, DNATed to `reply_src`.
fn flow(protocol: Protocol, client: &str, frontend: &str, reply_src: &str) -> Flow {
    let client = sa(client);
    Flow {
        protocol,
        original: FlowTuple {
            src: client,
            dst: sa(frontend),
        },
        reply: FlowTuple {
            src: sa(reply_src),
            dst: client,
        },
        zone: 0,
    }
}

fn udp(client: &str, frontend: &str, reply_src: &str) -> Flow {
    flow(Protocol::Udp, client, frontend, reply_src)
}

fn eps(addrs: &[&str]) -> Vec<Endpoint> {
    addrs.iter().map(|a| endpoint(a, false)).collect()
}

/// `ns/dns:dns`, UDP 172.30.0.10:53 with NodePort 30053, external IP 192.0.2.53 and LB IP
/// 203.0.113.53.
fn dns(endpoints: &[&str]) -> ServicePortPlan {
    let mut svc = service("ns", "dns", "dns", "172.30.0.10", 53);
    svc.name.protocol = Protocol::Udp;
    svc.node_port = Some(30053);
    svc.external_ips = vec![ip("192.0.2.53")];
    svc.load_balancer_ips = vec![ip("203.0.113.53")];
    with_endpoints(svc, eps(endpoints))
}

fn deleted(plan: &ProxyPlan, flows: &[Flow]) -> Vec<Flow> {
    filter(plan, IpFamily::V4, flows)
        .into_iter()
        .map(|d| d.flow)
        .collect()
}

#[test]
fn flow_to_a_removed_endpoint_is_stale_on_every_frontend() {
    let p = plan(vec![dns(&["10.1.0.2:5353"])]);
    let flows = [
        udp("10.2.0.1:40000", "172.30.0.10:53", "10.1.0.1:5353"),
        udp("198.51.100.1:40000", "192.0.2.53:53", "10.1.0.1:5353"),
        udp("198.51.100.1:40001", "203.0.113.53:53", "10.1.0.1:5353"),
        udp("198.51.100.1:40002", "192.168.0.10:30053", "10.1.0.1:5353"),
    ];
    let stale = filter(&p, IpFamily::V4, &flows);
    assert_eq!(stale.len(), 4);
    assert_eq!(stale[0].frontend, Frontend::ServiceIp(sa("172.30.0.10:53")));
    assert_eq!(stale[1].frontend, Frontend::ServiceIp(sa("192.0.2.53:53")));
    assert_eq!(
        stale[2].frontend,
        Frontend::ServiceIp(sa("203.0.113.53:53"))
    );
    assert_eq!(stale[3].frontend, Frontend::NodePort(30053));
    assert!(stale.iter().all(|d| d.service.to_string() == "ns/dns:dns"));
}

#[test]
fn flow_to_a_current_endpoint_is_kept() {
    let p = plan(vec![dns(&["10.1.0.1:5353", "10.1.0.2:5353"])]);
    let flows = [
        udp("10.2.0.1:40000", "172.30.0.10:53", "10.1.0.1:5353"),
        udp("10.2.0.1:40001", "172.30.0.10:53", "10.1.0.2:5353"),
        udp("198.51.100.1:40002", "192.168.0.10:30053", "10.1.0.2:5353"),
    ];
    assert!(deleted(&p, &flows).is_empty());
}

#[test]
fn blackholed_flow_is_stale_once_the_service_has_endpoints() {
    // Sent while the service had no endpoint: never DNATed, replies "from" the cluster IP.
    let blackholed = udp("10.2.0.1:40000", "172.30.0.10:53", "172.30.0.10:53");
    let empty = plan(vec![dns(&[])]);
    assert!(deleted(&empty, &[blackholed]).is_empty());
    let now = plan(vec![dns(&["10.1.0.1:5353"])]);
    assert_eq!(deleted(&now, &[blackholed]), vec![blackholed]);
}

#[test]
fn service_without_endpoints_is_left_alone() {
    let p = plan(vec![dns(&[])]);
    let flows = [udp("10.2.0.1:40000", "172.30.0.10:53", "10.1.0.1:5353")];
    assert!(deleted(&p, &flows).is_empty());
}

#[test]
fn endpoint_port_change_is_stale() {
    let p = plan(vec![dns(&["10.1.0.1:5354"])]);
    let f = udp("10.2.0.1:40000", "172.30.0.10:53", "10.1.0.1:5353");
    assert_eq!(deleted(&p, &[f]), vec![f]);
}

#[test]
fn tcp_services_and_tcp_flows_are_not_touched() {
    let mut tcp = dns(&["10.1.0.2:5353"]);
    tcp.name.protocol = Protocol::Tcp;
    let p = plan(vec![tcp]);
    let f = flow(
        Protocol::Tcp,
        "10.2.0.1:40000",
        "172.30.0.10:53",
        "10.1.0.1:5353",
    );
    assert!(deleted(&p, &[f]).is_empty());
    // A TCP flow to a UDP service's frontend is not that service's.
    let p = plan(vec![dns(&["10.1.0.2:5353"])]);
    assert!(deleted(&p, &[f]).is_empty());
}

#[test]
fn sctp_is_cleaned_like_udp() {
    let mut svc = dns(&["10.1.0.2:5353"]);
    svc.name.protocol = Protocol::Sctp;
    let p = plan(vec![svc]);
    let f = flow(
        Protocol::Sctp,
        "10.2.0.1:40000",
        "172.30.0.10:53",
        "10.1.0.1:5353",
    );
    assert_eq!(deleted(&p, &[f]), vec![f]);
    // A UDP flow is not the SCTP service's.
    let u = udp("10.2.0.1:40000", "172.30.0.10:53", "10.1.0.1:5353");
    assert!(deleted(&p, &[u]).is_empty());
}

#[test]
fn other_ports_and_addresses_are_not_touched() {
    let p = plan(vec![dns(&["10.1.0.2:5353"])]);
    let flows = [
        // The cluster IP on another port.
        udp("10.2.0.1:40000", "172.30.0.10:54", "10.1.0.1:5353"),
        // Plain pod-to-pod traffic.
        udp("10.2.0.1:40000", "10.1.0.1:5353", "10.1.0.1:5353"),
        // From this node to a remote server that happens to use the NodePort number.
        udp(
            "192.168.0.10:40000",
            "198.51.100.7:30053",
            "198.51.100.7:30053",
        ),
    ];
    assert!(deleted(&p, &flows).is_empty());
}

#[test]
fn node_port_respects_nodeport_addresses() {
    let mut p = plan(vec![dns(&["10.1.0.2:5353"])]);
    let on_node = udp("198.51.100.1:40000", "192.168.0.10:30053", "10.1.0.1:5353");
    let on_other = udp("198.51.100.1:40000", "192.168.1.10:30053", "10.1.0.1:5353");
    let on_lo = udp("127.0.0.1:40000", "127.0.0.1:30053", "10.1.0.1:5353");
    // All addresses: any DNATed flow to the NodePort.
    assert_eq!(deleted(&p, &[on_node, on_other, on_lo]).len(), 3);
    p.node.ipv4.as_mut().unwrap().nodeport_addresses =
        NodePortAddresses::Only(vec![ip("192.168.0.10")]);
    assert_eq!(
        deleted(&p, &[on_node, on_other, on_lo]),
        vec![on_node, on_lo]
    );
    p.node.localhost_nodeports = false;
    assert_eq!(deleted(&p, &[on_node, on_other, on_lo]), vec![on_node]);
}

#[test]
fn blackholed_node_port_flow_to_a_node_ip_is_stale() {
    let p = plan(vec![dns(&["10.1.0.2:5353"])]);
    let f = udp(
        "198.51.100.1:40000",
        "192.168.0.10:30053",
        "192.168.0.10:30053",
    );
    assert_eq!(deleted(&p, &[f]), vec![f]);
}

#[test]
fn local_and_cluster_sets_both_count_regardless_of_policy() {
    let mut svc = service("ns", "dns", "dns", "172.30.0.10", 53);
    svc.name.protocol = Protocol::Udp;
    svc.node_port = Some(30053);
    svc.external_policy_local = true;
    let svc = with_endpoints(
        svc,
        vec![
            endpoint("10.1.0.1:53", true),
            endpoint("10.1.1.1:53", false),
        ],
    );
    let p = plan(vec![svc]);
    let flows = [
        udp("10.2.0.1:40000", "172.30.0.10:53", "10.1.0.1:53"),
        udp("10.2.0.1:40001", "172.30.0.10:53", "10.1.1.1:53"),
        udp("198.51.100.1:40000", "192.168.0.10:30053", "10.1.1.1:53"),
    ];
    assert!(deleted(&p, &flows).is_empty());
}

#[test]
fn other_family_is_ignored() {
    let mut v6 = service("ns", "dns6", "dns", "fd00:30::10", 53);
    v6.name.protocol = Protocol::Udp;
    let v6 = with_endpoints(v6, eps(&["[fd00:1::2]:5353"]));
    let p = plan(vec![dns(&["10.1.0.2:5353"]), v6]);
    let f4 = udp("10.2.0.1:40000", "172.30.0.10:53", "10.1.0.1:5353");
    let f6 = udp("[fd00:2::1]:40000", "[fd00:30::10]:53", "[fd00:1::1]:5353");
    assert_eq!(deleted(&p, &[f4, f6]), vec![f4]);
    let v6_stale: Vec<Flow> = filter(&p, IpFamily::V6, &[f4, f6])
        .into_iter()
        .map(|d| d.flow)
        .collect();
    assert_eq!(v6_stale, vec![f6]);
}

#[test]
fn report_names_flow_and_service() {
    let p = plan(vec![dns(&["10.1.0.2:5353"])]);
    let f = udp("10.2.0.1:40000", "172.30.0.10:53", "10.1.0.1:5353");
    let d = &filter(&p, IpFamily::V4, &[f])[0];
    let text = d.to_string();
    assert!(
        text.contains("UDP 10.2.0.1:40000 -> 172.30.0.10:53"),
        "{text}"
    );
    assert!(text.contains("ns/dns:dns"), "{text}");
}

#[test]
fn cleanup_needed_when_a_udp_service_port_appears_or_changes() {
    use crate::plan::PlanDelta;
    let needed = |old: &ProxyPlan, new: &ProxyPlan, family| {
        cleanup_needed(&PlanDelta::between(old, new), family)
    };
    let one = plan(vec![dns(&["10.1.0.1:5353"])]);
    let two = plan(vec![dns(&["10.1.0.1:5353", "10.1.0.2:5353"])]);
    let empty = plan(vec![]);
    assert!(
        cleanup_needed(&PlanDelta::everything(&one), IpFamily::V4),
        "the first sync"
    );
    assert!(!needed(&one, &one, IpFamily::V4), "nothing changed");
    assert!(needed(&two, &one, IpFamily::V4), "an endpoint went away");
    assert!(
        needed(&one, &two, IpFamily::V4),
        "conservative: an endpoint came"
    );
    assert!(
        needed(&empty, &one, IpFamily::V4),
        "a new service: old flows to its frontend"
    );
    assert!(
        !needed(&one, &empty, IpFamily::V4),
        "a removed service: nowhere to move flows"
    );
    assert!(
        !needed(&two, &one, IpFamily::V6),
        "the other family is unaffected"
    );
    let tcp = |eps: &[&str]| {
        let mut svc = dns(eps);
        svc.name.protocol = Protocol::Tcp;
        plan(vec![svc])
    };
    assert!(
        !needed(
            &tcp(&["10.1.0.1:5353"]),
            &tcp(&["10.1.0.2:5353"]),
            IpFamily::V4
        ),
        "TCP flows are never cleaned"
    );
    let mut moved = one.clone();
    moved.node.masquerade_all = true;
    assert!(needed(&one, &moved, IpFamily::V4), "the node changed");
}

#[test]
fn only_protocols_with_endpoints_are_dumped() {
    let mut sctp = dns(&[]);
    sctp.name.name = "sctp".into();
    sctp.name.protocol = Protocol::Sctp;
    sctp.cluster_ip = ip("172.30.0.11");
    let mut tcp = dns(&["10.1.0.1:5353"]);
    tcp.name.name = "tcp".into();
    tcp.name.protocol = Protocol::Tcp;
    let p = plan(vec![dns(&["10.1.0.1:5353"]), sctp, tcp]);
    let f = StaleFlowFilter::new(&p, IpFamily::V4);
    assert_eq!(
        f.protocols().into_iter().collect::<Vec<_>>(),
        vec![Protocol::Udp]
    );
    assert!(
        StaleFlowFilter::new(&p, IpFamily::V6)
            .protocols()
            .is_empty()
    );
}

#[test]
fn flows_in_order_and_each_once() {
    let p = plan(vec![dns(&["10.1.0.9:5353"])]);
    let flows: Vec<Flow> = (0..50)
        .map(|i| {
            udp(
                &format!("10.2.0.1:{}", 40000 + i),
                "172.30.0.10:53",
                "10.1.0.1:5353",
            )
        })
        .collect();
    assert_eq!(deleted(&p, &flows), flows);
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A flow is deleted iff it targets a frontend of a service with endpoints and its
        /// reply source is not one of them; deleting the result and filtering again finds
        /// nothing (idempotence).
        #[test]
        fn stale_iff_reply_source_is_no_endpoint(
            endpoints in proptest::collection::btree_set(1u8..6, 0..4),
            replies in proptest::collection::vec(1u8..8, 0..20),
        ) {
            let addrs: Vec<String> = endpoints.iter().map(|i| format!("10.1.0.{i}:5353")).collect();
            let refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
            let p = plan(vec![dns(&refs)]);
            let flows: Vec<Flow> = replies
                .iter()
                .enumerate()
                .map(|(n, r)| udp(&format!("10.2.0.1:{}", 40000 + n), "172.30.0.10:53", &format!("10.1.0.{r}:5353")))
                .collect();
            let stale = deleted(&p, &flows);
            for f in &flows {
                let is_ep = endpoints.contains(&match f.reply.src.ip() { IpAddr::V4(v4) => v4.octets()[3], IpAddr::V6(_) => 0 });
                prop_assert_eq!(stale.contains(f), !endpoints.is_empty() && !is_ep);
            }
            let kept: Vec<Flow> = flows.iter().filter(|f| !stale.contains(f)).copied().collect();
            prop_assert!(deleted(&p, &kept).is_empty());
        }
    }
}
