//! nftables canary (root only): full syncs create a tiny canary table
//! per family (`ip kproxy-canary`); `canary_intact` notices an external
//! `nft delete table ip kproxy` or `nft flush ruleset`, and the next sync (even one asked
//! to be partial) recreates everything, leaving foreign tables alone. Each test runs the
//! proxier in-process on a thread that `setns`'d into its own network namespace (deleted
//! on drop).

use kproxy_dataplane::nftables::proxier::NftablesProxier;
use kproxy_dataplane::plan::*;
use kproxy_dataplane::report::SyncReport;

mod support;

use kproxy_dataplane::fixtures::synthetic_plan;
use support::{Netns, block_on, require_root};

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
            let mut proxier = proxier;
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
    let plan = synthetic_plan(3, 3);
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
    let plan = synthetic_plan(3, 3);
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
