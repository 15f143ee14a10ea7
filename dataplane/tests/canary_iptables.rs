//! iptables canary (root only): a full sync declares `KUBE-PROXY-CANARY`
//! in mangle, filter and nat; `canary_intact` notices when an external flush removed one,
//! and the next sync (even one asked to be partial) is full and repairs everything, leaving
//! foreign rules alone. Each test runs the proxier in-process on a thread that `setns`'d
//! into its own network namespace (deleted on drop).

use kproxy_dataplane::iptables::apply::BackendChoice;
use kproxy_dataplane::iptables::proxier::IptablesProxier;
use kproxy_dataplane::plan::*;
use kproxy_dataplane::report::SyncReport;

mod support;

use kproxy_dataplane::fixtures::synthetic_plan;
use support::{Netns, block_on, require_root};

fn new_proxier(node: &Netns, backend: &str) -> IptablesProxier {
    let choice: BackendChoice = backend.parse().expect("backend");
    node.run(move || {
        block_on(IptablesProxier::new(choice, [IpFamily::V4])).expect("iptables works")
    })
}

fn sync(
    node: &Netns,
    proxier: IptablesProxier,
    plan: &ProxyPlan,
    full: bool,
) -> (IptablesProxier, SyncReport) {
    let plan = plan.clone();
    node.run(move || {
        block_on(async move {
            let mut p = proxier;
            let mut reports = p.sync(&plan, full).await.expect("sync");
            (p, reports.remove(0))
        })
    })
}

fn canary_intact(node: &Netns, proxier: IptablesProxier) -> (IptablesProxier, bool) {
    node.run(move || {
        block_on(async move {
            let mut proxier = proxier;
            let intact = proxier.canary_intact().await;
            (proxier, intact)
        })
    })
}

/// Which of mangle, filter and nat hold `KUBE-PROXY-CANARY`.
fn canary_tables(node: &Netns, backend: &str) -> Vec<&'static str> {
    let ipt = format!("iptables-{backend}");
    ["mangle", "filter", "nat"]
        .into_iter()
        .filter(|t| {
            node.try_exec(&[&ipt, "-w", "5", "-t", t, "-S", "KUBE-PROXY-CANARY"])
                .is_ok()
        })
        .collect()
}

/// `iptables-save` lines (counters stripped) that satisfy `keep`.
fn save_lines(node: &Netns, backend: &str, keep: impl Fn(&str) -> bool) -> Vec<String> {
    node.exec(&[&format!("iptables-{backend}-save")])
        .lines()
        .filter(|l| !l.starts_with('#') && keep(l))
        .map(|l| match l.rfind(" [") {
            Some(i) if l.starts_with(':') => l[..i].to_owned(),
            _ => l.to_owned(),
        })
        .collect()
}

fn kube_lines(node: &Netns, backend: &str) -> Vec<String> {
    save_lines(node, backend, |l| l.contains("KUBE-"))
}

fn foreign_lines(node: &Netns, backend: &str) -> Vec<String> {
    save_lines(node, backend, |l| !l.contains("KUBE-"))
}

fn flush_is_detected_and_repaired(backend: &str) {
    let node = Netns::new(&format!("i{}", &backend[..1]));
    let ipt = format!("iptables-{backend}");
    let ipt = ipt.as_str();
    // A foreign chain and rule in filter, as a CNI or firewall would have.
    node.exec(&[ipt, "-w", "5", "-N", "FOREIGN-ALLOW"]);
    node.exec(&[
        ipt,
        "-w",
        "5",
        "-A",
        "FOREIGN-ALLOW",
        "-s",
        "10.9.0.0/16",
        "-j",
        "ACCEPT",
    ]);
    node.exec(&[ipt, "-w", "5", "-A", "INPUT", "-j", "FOREIGN-ALLOW"]);

    let proxier = new_proxier(&node, backend);
    let (proxier, intact) = canary_intact(&node, proxier);
    assert!(intact, "nothing synced yet: nothing to miss");
    let plan = synthetic_plan(3, 3);
    let (proxier, report) = sync(&node, proxier, &plan, true);
    assert!(report.full);
    assert_eq!(canary_tables(&node, backend), ["mangle", "filter", "nat"]);
    let (proxier, intact) = canary_intact(&node, proxier);
    assert!(intact, "after a full sync");
    let synced = kube_lines(&node, backend);
    assert!(
        synced.iter().any(|l| l.contains("-d 172.16.0.1/32")),
        "{synced:?}"
    );
    let foreign = foreign_lines(&node, backend);
    assert!(
        foreign.iter().any(|l| l.contains("FOREIGN-ALLOW")),
        "{foreign:?}"
    );

    // A partial sync keeps the canaries (it never writes them).
    let (proxier, report) = sync(&node, proxier, &plan, false);
    assert!(!report.full);
    let (proxier, intact) = canary_intact(&node, proxier);
    assert!(intact, "after a partial sync");

    // Someone flushes nat and deletes its chains (the KUBE- ones and the nat canary).
    node.exec(&[ipt, "-w", "5", "-t", "nat", "-F"]);
    node.exec(&[ipt, "-w", "5", "-t", "nat", "-X"]);
    assert!(
        !kube_lines(&node, backend)
            .iter()
            .any(|l| l.contains("172.16.0.1")),
        "flushed"
    );
    let (proxier, intact) = canary_intact(&node, proxier);
    assert!(!intact, "nat canary gone");
    // The proxier itself makes the next sync full, even when asked for a partial one.
    let (proxier, report) = sync(&node, proxier, &plan, false);
    assert!(report.full, "{report:?}");
    assert_eq!(kube_lines(&node, backend), synced, "rules restored");
    assert_eq!(canary_tables(&node, backend), ["mangle", "filter", "nat"]);
    let (proxier, intact) = canary_intact(&node, proxier);
    assert!(intact, "after the repair");
    assert_eq!(
        foreign_lines(&node, backend),
        foreign,
        "foreign rules untouched"
    );

    // Only the mangle canary goes (kproxy writes nothing else there).
    node.exec(&[ipt, "-w", "5", "-t", "mangle", "-X", "KUBE-PROXY-CANARY"]);
    let (proxier, intact) = canary_intact(&node, proxier);
    assert!(!intact, "mangle canary gone");
    let (proxier, report) = sync(&node, proxier, &plan, false);
    assert!(report.full);
    let (proxier, intact) = canary_intact(&node, proxier);
    assert!(intact);
    assert_eq!(kube_lines(&node, backend), synced);

    // The filter canary too (e.g. `iptables -F; iptables -X` of filter).
    node.exec(&[ipt, "-w", "5", "-t", "filter", "-F", "KUBE-PROXY-CANARY"]);
    node.exec(&[ipt, "-w", "5", "-t", "filter", "-X", "KUBE-PROXY-CANARY"]);
    let (proxier, intact) = canary_intact(&node, proxier);
    assert!(!intact, "filter canary gone");
    let (proxier, report) = sync(&node, proxier, &plan, false);
    assert!(report.full);

    // --cleanup removes the canaries with everything else of kproxy's, and nothing more.
    node.run(move || {
        block_on(async move {
            let mut p = proxier;
            p.cleanup().await.expect("cleanup");
        })
    });
    assert!(canary_tables(&node, backend).is_empty());
    assert_eq!(kube_lines(&node, backend), Vec::<String>::new());
    assert_eq!(foreign_lines(&node, backend), foreign, "after cleanup");
}

#[test]
fn canary_detects_external_flush_and_full_sync_repairs_nft() {
    require_root();
    flush_is_detected_and_repaired("nft");
}

#[test]
fn canary_detects_external_flush_and_full_sync_repairs_legacy() {
    require_root();
    flush_is_detected_and_repaired("legacy");
}
