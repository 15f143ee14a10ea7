//! The userspace mode's steering (routes and policy rules) and NodePort chain, rendered
//! without touching the kernel.

use std::net::IpAddr;

use kproxy_dataplane::fixtures::{endpoint, plan_on, service, single_family_node, with_endpoints};
use kproxy_dataplane::lb::Algorithm;
use kproxy_dataplane::plan::{
    FamilyContext, IpFamily, NodePortAddresses, ProxyPlan, ServicePortPlan,
};
use kproxy_dataplane::userspace::nodeports;
use kproxy_dataplane::userspace::routes::Steering;
use kproxy_dataplane::userspace::services::ServiceTable;

/// `default/NAME` on `vip:80` with one local endpoint.
fn svc(name: &str, vip: &str, backend: &str, node_port: Option<u16>) -> ServicePortPlan {
    let mut svc = service("default", name, "", vip, 80);
    svc.node_port = node_port;
    with_endpoints(svc, vec![endpoint(backend, true)])
}

/// The services on node `n` (192.168.0.1), NodePorts on `addrs`.
fn plan(services: Vec<ServicePortPlan>, addrs: NodePortAddresses) -> ProxyPlan {
    let mut node = single_family_node("n", "192.168.0.1");
    if let Some(v4) = node.ipv4.as_mut() {
        v4.nodeport_addresses = addrs;
    }
    plan_on(node, services)
}

#[test]
fn full_then_partial_steering() {
    let masq: IpAddr = "169.254.42.1".parse().expect("ip");
    let two = plan(
        vec![
            svc("a", "10.96.0.1", "10.244.1.1:8080", None),
            svc("b", "10.96.0.2", "10.244.1.2:9090", None),
        ],
        NodePortAddresses::All,
    );
    let first = Steering::of(&ServiceTable::build(&two, Algorithm::Random, 0), &[masq]);
    let full = first.batch(None, "kp0", 1, &[IpFamily::V4]);
    assert_eq!((full.written.v4, full.deleted.v4), (5, 0));
    assert_eq!((full.written.v6, full.deleted.v6), (0, 0));
    assert_eq!(full.removals, Default::default(), "a full update only adds");
    assert_eq!(full.nft_removals, "");
    // The reply table is recreated with the backends as elements, in one transaction.
    assert!(
        full.nft_adds
            .starts_with("table inet kproxy_userspace_replies\ndelete table")
    );
    for element in [
        "add element inet kproxy_userspace_replies replies4 { 10.244.1.1 . 6 . 8080 }",
        "add element inet kproxy_userspace_replies replies4 { 10.244.1.2 . 6 . 9090 }",
    ] {
        assert!(
            full.nft_adds.lines().any(|l| l == element),
            "{}",
            full.nft_adds
        );
    }
    let full = full.adds;
    assert!(full.v6.is_empty());
    for line in [
        "rule del priority 4242",
        "rule add priority 4241 iif kp0 lookup main",
        "route replace default dev kp0 table 4242",
        "route replace 10.96.0.1/32 dev kp0",
        "route replace 169.254.42.1/32 dev kp0",
        "rule add priority 4242 fwmark 0x100000/0x100000 lookup 4242",
    ] {
        assert!(
            full.v4.lines().any(|l| l == line),
            "missing {line:?} in\n{}",
            full.v4
        );
    }
    assert!(
        !full.v4.contains("rule add priority 4242 from"),
        "no policy rule per backend: {}",
        full.v4
    );
    let one = plan(
        vec![svc("a", "10.96.0.1", "10.244.1.1:8080", None)],
        NodePortAddresses::All,
    );
    let second = Steering::of(&ServiceTable::build(&one, Algorithm::Random, 0), &[masq]);
    let partial = second.batch(Some(&first), "kp0", 0, &[IpFamily::V4]);
    assert_eq!((partial.written.v4, partial.deleted.v4), (0, 2));
    assert!(partial.adds.v4.is_empty(), "nothing to add");
    assert_eq!(partial.nft_adds, "");
    assert_eq!(partial.removals.v4, "route del 10.96.0.2/32 dev kp0\n");
    assert_eq!(
        partial.nft_removals,
        "delete element inet kproxy_userspace_replies replies4 { 10.244.1.2 . 6 . 9090 }\n"
    );
}

#[test]
fn dual_stack_counts_each_family_once() {
    let mut v6 = svc("a", "fd00:96::1", "[fd00:244::1]:8080", None);
    v6.family = IpFamily::V6;
    let mut dual = plan(
        vec![svc("a", "10.96.0.1", "10.244.1.1:8080", None), v6],
        NodePortAddresses::All,
    );
    dual.node.ipv6 = Some(FamilyContext::default());
    let steering = Steering::of(&ServiceTable::build(&dual, Algorithm::Random, 0), &[]);
    let batch = steering.batch(None, "kp0", 0, &[IpFamily::V4, IpFamily::V6]);
    // One route (the cluster IP) and one reply rule (the backend) per family.
    assert_eq!((batch.written.v4, batch.written.v6), (2, 2), "{batch:?}");
    assert_eq!((batch.deleted.v4, batch.deleted.v6), (0, 0));
    assert_eq!(steering.count(IpFamily::V4), 2);
    assert_eq!(steering.count(IpFamily::V6), 2);
    assert!(batch.lines(IpFamily::V6) >= 2);
}

#[test]
fn a_new_backend_is_steered_before_the_old_one_is_removed() {
    let before = plan(
        vec![svc("a", "10.96.0.1", "10.244.1.1:8080", None)],
        NodePortAddresses::All,
    );
    let after = plan(
        vec![svc("a", "10.96.0.1", "10.244.1.2:8080", None)],
        NodePortAddresses::All,
    );
    let old = Steering::of(&ServiceTable::build(&before, Algorithm::Random, 0), &[]);
    let new = Steering::of(&ServiceTable::build(&after, Algorithm::Random, 0), &[]);
    let batch = new.batch(Some(&old), "kp0", 0, &[IpFamily::V4]);
    assert_eq!(
        batch.nft_adds,
        "add element inet kproxy_userspace_replies replies4 { 10.244.1.2 . 6 . 8080 }\n"
    );
    assert_eq!(
        batch.nft_removals,
        "delete element inet kproxy_userspace_replies replies4 { 10.244.1.1 . 6 . 8080 }\n"
    );
    assert!(batch.adds.v4.is_empty() && batch.removals.v4.is_empty());
}

#[test]
fn node_port_chain() {
    let to: IpAddr = "169.254.42.2".parse().expect("ip");
    let p = plan(
        vec![svc("a", "10.96.0.1", "10.244.1.1:8080", Some(30080))],
        NodePortAddresses::All,
    );
    let text = nodeports::render(&p, IpFamily::V4, Some(to), None).to_restore_text();
    assert!(text.contains(
        "-A KPROXY-USERSPACE-NODEPORTS -m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -m tcp -p tcp --dport 30080"
    ), "{text}");
    assert!(text.contains("-j DNAT --to-destination 169.254.42.2:30080"));
    let only = plan(
        vec![svc("a", "10.96.0.1", "10.244.1.1:8080", Some(30080))],
        NodePortAddresses::Only(vec!["192.168.0.1".parse().expect("ip")]),
    );
    let only = nodeports::render(&only, IpFamily::V4, Some(to), None).to_restore_text();
    assert!(
        only.contains("-d 192.168.0.1 -m tcp -p tcp --dport 30080"),
        "{only}"
    );
    // The NodePort is served on the NodePort address only, not on node IPs.
    let table = ServiceTable::build_with_nodeports(&p, Algorithm::Random, 0, &[to]);
    assert!(table.is_frontend_ip(to));
    assert!(!table.is_frontend_ip("192.168.0.1".parse().expect("ip")));
}

#[test]
fn masquerade_chain_masquerades_the_masquerade_address() {
    let plan = plan(Vec::new(), NodePortAddresses::All);
    let chains =
        |family, ip: Option<IpAddr>| nodeports::render(&plan, family, None, ip).to_restore_text();
    let v4: IpAddr = "169.254.42.1".parse().expect("ip");
    let text = chains(IpFamily::V4, Some(v4));
    assert!(
        text.contains("*nat\n:KPROXY-USERSPACE-POSTROUTING - [0:0]\n"),
        "{text}"
    );
    assert!(
        text.contains("-A KPROXY-USERSPACE-POSTROUTING -s 169.254.42.1/32 "),
        "{text}"
    );
    assert!(text.contains("-j MASQUERADE\nCOMMIT\n"), "{text}");
    assert!(
        !text.contains("KPROXY-USERSPACE-NODEPORTS"),
        "no NodePort address: {text}"
    );
    let v6: IpAddr = "fd00:6b70::1".parse().expect("ip");
    assert!(chains(IpFamily::V6, Some(v6)).contains("-s fd00:6b70::1/128 "));
    assert!(
        chains(IpFamily::V4, None)
            .ends_with("*nat\n:KPROXY-USERSPACE-POSTROUTING - [0:0]\nCOMMIT\n")
    );
}
