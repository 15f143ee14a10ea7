//! Golden tests: the full-sync transaction of each fixture must equal its file
//! `dataplane/tests/golden/nft-*.txt`. Set `KPROXY_UPDATE_GOLDEN=1` to rewrite the files,
//! then review the diff as you would review rules on a node.

use crate::fixtures::*;
use crate::nftables::transaction::recreate;
use crate::plan::*;

use super::{RenderOptions, render};

fn check(name: &str, plan: &ProxyPlan, family: IpFamily, opts: RenderOptions) {
    let table = render(plan, family, &opts, None).expect("family served");
    let got = recreate(&table).text;
    let path = format!("{}/tests/golden/{name}.txt", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("KPROXY_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &got).expect("write golden");
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    if got != want {
        panic!("{name}: rendered transaction differs from {path}\n--- got ---\n{got}");
    }
}

#[test]
fn cluster_ip_with_three_endpoints() {
    let svc = web(&["10.180.0.1:8080", "10.180.1.1:8080", "10.180.2.1:8080"]);
    check(
        "nft-cluster-ip",
        &plan(vec![svc]),
        IpFamily::V4,
        RenderOptions::default(),
    );
}

#[test]
fn nodeport_load_balancer_external_ips() {
    let opts = RenderOptions {
        conntrack_tcp_be_liberal: true,
    };
    check("nft-external", &plan(external()), IpFamily::V4, opts);
}

#[test]
fn services_without_usable_endpoints() {
    // No endpoints at all: REJECT everywhere.
    let mut none = service("ns5", "empty", "p", "172.30.0.45", 80);
    none.node_port = Some(30045);
    none.external_ips = vec![ip("192.0.2.5")];
    let none = with_endpoints(none, vec![]);

    // eTP Local with only remote endpoints: external traffic dropped, cluster IP still works.
    let mut remote = service("ns6", "remote", "p", "172.30.0.46", 80);
    remote.node_port = Some(30046);
    remote.external_policy_local = true;
    let remote = with_endpoints(remote, vec![endpoint("10.180.1.6:80", false)]);

    // iTP Local with only remote endpoints: cluster IP dropped.
    let mut itp = service("ns7", "itp", "p", "172.30.0.47", 80);
    itp.internal_policy_local = true;
    let itp = with_endpoints(itp, vec![endpoint("10.180.1.7:80", false)]);

    check(
        "nft-no-endpoints",
        &plan(vec![none, remote, itp]),
        IpFamily::V4,
        RenderOptions::default(),
    );
}

#[test]
fn session_affinity_and_masquerade_all() {
    let mut svc = service("ns8", "sticky", "p", "172.30.0.48", 80);
    svc.session_affinity_timeout = Some(10800);
    svc.node_port = Some(30048);
    let svc = with_endpoints(
        svc,
        vec![
            endpoint("10.180.0.8:80", true),
            endpoint("10.180.1.8:80", false),
        ],
    );
    let mut p = plan(vec![svc]);
    p.node.masquerade_all = true;
    if let Some(v4) = p.node.ipv4.as_mut() {
        v4.nodeport_addresses = NodePortAddresses::Only(vec![ip("192.168.0.10"), ip("127.0.0.1")]);
    }
    check("nft-affinity", &p, IpFamily::V4, RenderOptions::default());
}

#[test]
fn ipv6_table() {
    let mut svc = service("ns9", "v6", "p", "fd00:30::49", 80);
    svc.node_port = Some(30049);
    let svc = with_endpoints(svc, vec![endpoint("[fd00:10::9]:8080", true)]);
    check(
        "nft-ip6",
        &plan(vec![svc]),
        IpFamily::V6,
        RenderOptions::default(),
    );
}

#[test]
fn family_not_served_renders_nothing() {
    let mut p = plan(vec![]);
    p.node.ipv6 = None;
    assert!(render(&p, IpFamily::V6, &RenderOptions::default(), None).is_none());
}

#[test]
fn services_share_chains() {
    // 100 services of the same shape add elements, not chains.
    let one = render(
        &plan(vec![web(&["10.1.0.1:80", "10.1.0.2:80"])]),
        IpFamily::V4,
        &RenderOptions::default(),
        None,
    )
    .expect("v4");
    let many: Vec<_> = (0..100)
        .map(|i| {
            with_endpoints(
                service("ns", &format!("s{i}"), "p", &format!("172.30.1.{i}"), 80),
                vec![
                    endpoint(&format!("10.2.{i}.1:80"), false),
                    endpoint(&format!("10.2.{i}.2:80"), false),
                ],
            )
        })
        .collect();
    let many = render(&plan(many), IpFamily::V4, &RenderOptions::default(), None).expect("v4");
    assert_eq!(
        one.chains.keys().collect::<Vec<_>>(),
        many.chains.keys().collect::<Vec<_>>()
    );
    assert_eq!(many.sets["service-ips"].len(), 100);
    assert_eq!(many.sets["ep-cluster-vip-1"].len(), 100);
    assert_eq!(many.sets["hairpin"].len(), 200);
}
