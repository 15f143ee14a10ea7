//! nftables canary (root only): full syncs create a tiny canary table
//! per family (`ip kproxy-canary`); `canary_intact` notices an external
//! `nft delete table ip kproxy` or `nft flush ruleset`, and the next sync (even one asked
//! to be partial) recreates everything, leaving foreign tables alone. Each test runs the
//! proxier in-process on a thread that `setns`'d into its own network namespace (deleted
//! on drop).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use kproxy_dataplane::nftables::proxier::NftablesProxier;
use kproxy_dataplane::plan::*;
use kproxy_dataplane::report::SyncReport;

mod support;

use support::{Netns, block_on, require_root};

fn v4(base: Ipv4Addr, offset: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(u32::from(base) + offset as u32))
}

/// `n` ClusterIP services (172.16.0.1, ...) × 3 endpoints; the first 2000 with a NodePort
/// (the sync bench's synthetic plan).
fn plan(n: usize) -> ProxyPlan {
    let services = (0..n)
        .map(|i| {
            let eps: Vec<Endpoint> = (0..3)
                .map(|j| Endpoint {
                    addr: SocketAddr::new(v4(Ipv4Addr::new(10, 128, 0, 0), i * 3 + j), 8080),
                    is_local: false,
                    ready: true,
                    serving: true,
                    terminating: false,
                })
                .collect();
            ServicePortPlan {
                name: ServicePortName {
                    namespace: format!("ns{}", i / 100),
                    name: format!("svc{i}"),
                    port: "http".into(),
                    protocol: Protocol::Tcp,
                },
                family: IpFamily::V4,
                cluster_ip: v4(Ipv4Addr::new(172, 16, 0, 0), i + 1),
                port: 80,
                node_port: (i < 2000).then(|| 30000 + i as u16),
                external_ips: vec![],
                load_balancer_ips: vec![],
                load_balancer_source_ranges: vec![],
                session_affinity_timeout: None,
                external_policy_local: false,
                internal_policy_local: false,
                health_check_node_port: None,
                has_any_endpoints: true,
                cluster_endpoints: eps,
                local_endpoints: vec![],
            }
        })
        .collect();
    ProxyPlan {
        node: NodeContext {
            node_name: "node".into(),
            ipv4: Some(FamilyContext {
                node_ips: vec!["192.168.0.10".parse().expect("ip")],
                nodeport_addresses: NodePortAddresses::All,
                local_detector: LocalTrafficDetector::ClusterCidr(
                    "10.128.0.0/9".parse().expect("cidr"),
                ),
            }),
            ipv6: None,
            masquerade_all: false,
            masquerade_mark: 0x4000,
            localhost_nodeports: false,
        },
        services,
    }
}

fn new_proxier(node: &Netns) -> NftablesProxier {
    node.run(|| block_on(NftablesProxier::new([IpFamily::V4])).expect("nftables works"))
}

fn sync(
    node: &Netns,
    proxier: NftablesProxier,
    plan: &ProxyPlan,
    full: bool,
) -> (NftablesProxier, SyncReport) {
    let plan = plan.clone();
    node.run(move || {
        block_on(async move {
            let mut p = proxier;
            let mut reports = p.sync(&plan, full).await.expect("sync");
            (p, reports.remove(0))
        })
    })
}

fn canary_intact(node: &Netns, proxier: NftablesProxier) -> (NftablesProxier, bool) {
    node.run(move || {
        block_on(async move {
            let intact = proxier.canary_intact().await;
            (proxier, intact)
        })
    })
}

fn tables(node: &Netns) -> Vec<String> {
    let mut t: Vec<String> = node
        .exec(&["nft", "list", "tables"])
        .lines()
        .map(str::to_owned)
        .collect();
    t.sort();
    t
}

const FOREIGN: &str = "table inet filter {\n\tchain input {\n\t\ttype filter hook input priority 0;\n\t\ttcp dport 22 accept\n\t}\n}\n";

fn add_foreign(node: &Netns) -> String {
    let path = std::env::temp_dir().join(format!("{}-foreign.nft", node.name()));
    std::fs::write(&path, FOREIGN).expect("write foreign table");
    node.exec(&["nft", "-f", &path.display().to_string()]);
    std::fs::remove_file(&path).ok();
    node.exec(&["nft", "list", "table", "inet", "filter"])
}

#[test]
fn canary_detects_deleted_kproxy_table_and_full_sync_repairs() {
    require_root();
    let node = Netns::new("nd");
    let foreign = add_foreign(&node);
    let proxier = new_proxier(&node);
    let (proxier, intact) = canary_intact(&node, proxier);
    assert!(intact, "nothing synced yet: nothing to miss");
    let plan = plan(3);
    let (proxier, report) = sync(&node, proxier, &plan, true);
    assert!(report.full);
    assert_eq!(
        tables(&node),
        [
            "table inet filter",
            "table ip kproxy",
            "table ip kproxy-canary"
        ]
    );
    let listed = node.exec(&["nft", "list", "table", "ip", "kproxy"]);
    assert!(listed.contains("172.16.0.1 . tcp . 80"), "{listed}");
    let (proxier, intact) = canary_intact(&node, proxier);
    assert!(intact, "after a full sync");

    // A partial sync keeps it, and so does a full resync in place.
    let (proxier, report) = sync(&node, proxier, &plan, false);
    assert!(!report.full);
    let (proxier, report) = sync(&node, proxier, &plan, true);
    assert!(report.full);
    let (proxier, intact) = canary_intact(&node, proxier);
    assert!(intact, "after partial and full resyncs");

    // Someone deletes kproxy's table: the canary table survives, the check still notices.
    node.exec(&["nft", "delete", "table", "ip", "kproxy"]);
    let (proxier, intact) = canary_intact(&node, proxier);
    assert!(!intact, "kproxy table gone");
    let (proxier, report) = sync(&node, proxier, &plan, false);
    assert!(report.full, "{report:?}");
    assert_eq!(node.exec(&["nft", "list", "table", "ip", "kproxy"]), listed);
    let (proxier, intact) = canary_intact(&node, proxier);
    assert!(intact, "after the repair");
    assert_eq!(
        node.exec(&["nft", "list", "table", "inet", "filter"]),
        foreign
    );

    // Someone deletes only the canary table.
    node.exec(&["nft", "delete", "table", "ip", "kproxy-canary"]);
    let (proxier, intact) = canary_intact(&node, proxier);
    assert!(!intact, "canary table gone");
    let (proxier, report) = sync(&node, proxier, &plan, false);
    assert!(report.full);
    let (proxier, intact) = canary_intact(&node, proxier);
    assert!(intact);

    // Cleanup removes both of kproxy's tables and nothing else.
    let deleted = node.run(move || {
        block_on(async move {
            let mut p = proxier;
            p.cleanup().await.expect("cleanup")
        })
    });
    assert_eq!(deleted, 1);
    assert_eq!(tables(&node), ["table inet filter"]);
    assert_eq!(
        node.exec(&["nft", "list", "table", "inet", "filter"]),
        foreign
    );
}

#[test]
fn canary_detects_flushed_ruleset_and_full_sync_repairs() {
    require_root();
    let node = Netns::new("nf");
    let proxier = new_proxier(&node);
    let plan = plan(3);
    let (proxier, _) = sync(&node, proxier, &plan, true);
    let listed = node.exec(&["nft", "list", "table", "ip", "kproxy"]);
    let (proxier, intact) = canary_intact(&node, proxier);
    assert!(intact);

    node.exec(&["nft", "flush", "ruleset"]);
    assert!(tables(&node).is_empty());
    let (proxier, intact) = canary_intact(&node, proxier);
    assert!(!intact, "ruleset flushed");
    // Checking again before the repair still says so (and still forces the full sync).
    let (proxier, intact) = canary_intact(&node, proxier);
    assert!(!intact);
    let (proxier, report) = sync(&node, proxier, &plan, false);
    assert!(report.full, "{report:?}");
    assert_eq!(node.exec(&["nft", "list", "table", "ip", "kproxy"]), listed);
    assert_eq!(tables(&node), ["table ip kproxy", "table ip kproxy-canary"]);
    let (proxier, intact) = canary_intact(&node, proxier);
    assert!(intact, "after the repair");
    // Back to partial syncs.
    let (_, report) = sync(&node, proxier, &plan, false);
    assert!(!report.full);
}
