use crate::fixtures::*;
use crate::nftables::render::{RenderOptions, render};
use crate::nftables::table::NftTable;
use crate::plan::*;

use super::*;

fn table(plan: &ProxyPlan, layout: Option<&NftTable>) -> NftTable {
    render(plan, IpFamily::V4, &RenderOptions::default(), layout).expect("v4 served")
}

fn commands(tx: &Transaction) -> Vec<&str> {
    tx.text
        .lines()
        .filter(|l| !l.starts_with('\t') && *l != "}")
        .collect()
}

fn two_services(web_endpoints: &[&str]) -> ProxyPlan {
    let mut services = external();
    services.push(web(web_endpoints));
    plan(services)
}

const WEB3: [&str; 3] = ["10.180.0.1:8080", "10.180.1.1:8080", "10.180.2.1:8080"];

#[test]
fn unchanged_plan_is_an_empty_transaction() {
    let prev = table(&two_services(&WEB3), None);
    let next = table(&two_services(&WEB3), Some(&prev));
    let tx = update(&prev, &next).expect("compatible");
    assert!(tx.is_empty(), "{}", tx.text);
    assert_eq!((tx.objects_written, tx.objects_deleted), (0, 0));
}

#[test]
fn one_endpoint_change_is_element_changes_only() {
    let prev = table(&two_services(&WEB3), None);
    let changed = ["10.180.0.1:8080", "10.180.9.9:8080", "10.180.2.1:8080"];
    let next = table(&two_services(&changed), Some(&prev));
    let tx = update(&prev, &next).expect("compatible");
    assert_eq!(
        commands(&tx),
        [
            "delete element ip kproxy ep-cluster-vip-1 {",
            "delete element ip kproxy hairpin {",
            "add element ip kproxy ep-cluster-vip-1 {",
            "add element ip kproxy hairpin {",
        ],
        "{}",
        tx.text
    );
    assert!(
        tx.text
            .contains("\t172.30.0.41 . tcp . 80 : 10.180.9.9 . 8080\n")
    );
    assert!(tx.text.contains("\t10.180.1.1 . 10.180.1.1\n"));
    assert_eq!((tx.objects_written, tx.objects_deleted), (2, 2));
}

#[test]
fn removed_endpoint_keeps_the_others_in_their_slots() {
    let prev = table(&two_services(&WEB3), None);
    let next = table(&two_services(&WEB3[1..]), Some(&prev));
    let tx = update(&prev, &next).expect("compatible");
    // 10.180.2.1 moves from slot 2 (gone) into slot 0; 10.180.1.1 stays in slot 1. The
    // service moves to the two-endpoint chains, which other services already use.
    let text = &tx.text;
    assert!(text.contains("add element ip kproxy ep-cluster-vip-0 {\n\t172.30.0.41 . tcp . 80 : 10.180.2.1 . 8080\n}"), "{text}");
    assert!(!text.contains("ep-cluster-vip-1"), "{text}");
    assert!(
        text.contains("172.30.0.41 . tcp . 80 : goto cluster-ip-cluster-2"),
        "{text}"
    );
    // The three-endpoint chains and the slot-2 map are no longer used by anyone.
    assert!(
        text.contains("delete chain ip kproxy pick-cluster-vip-3\n"),
        "{text}"
    );
    assert!(
        text.contains("delete chain ip kproxy cluster-ip-cluster-3\n"),
        "{text}"
    );
    assert!(
        text.contains("delete chain ip kproxy slot-cluster-vip-2\n"),
        "{text}"
    );
    assert!(
        text.contains("delete map ip kproxy ep-cluster-vip-2\n"),
        "{text}"
    );
    // Element deletions and chain flushes come before the chain deletions.
    let flush = text
        .find("flush chain ip kproxy slot-cluster-vip-2")
        .expect("flush");
    let delete = text
        .find("delete chain ip kproxy slot-cluster-vip-2")
        .expect("delete");
    let unmap = text
        .find("delete element ip kproxy service-ips")
        .expect("element");
    assert!(unmap < flush && flush < delete, "{text}");
}

#[test]
fn removed_service_removes_its_elements() {
    let prev = table(&two_services(&WEB3), None);
    let next = table(&plan(external()), Some(&prev));
    let tx = update(&prev, &next).expect("compatible");
    assert!(!tx.text.contains("add "), "{}", tx.text);
    for gone in [
        "\t172.30.0.41 . tcp . 80\n",
        "\t10.180.0.1 . 10.180.0.1",
        "\t10.180.2.1 . 10.180.2.1",
    ] {
        assert!(tx.text.contains(gone), "{gone} not deleted:\n{}", tx.text);
    }
    assert!(tx.text.contains("delete map ip kproxy ep-cluster-vip-2\n"));
    // Applying the diff gives the same result as rendering from scratch.
    let fresh = table(&plan(external()), None);
    assert_eq!(fresh, next);
}

#[test]
fn rewrite_keeps_affinity_sets_and_deletes_stale_objects() {
    let mut sticky = web(&WEB3);
    sticky.session_affinity_timeout = Some(60);
    let prev = table(&plan(vec![sticky]), None);
    assert!(prev.sets.contains_key("aff-cluster-vip-2"));
    let next = table(&plan(vec![web(&WEB3)]), Some(&prev));
    let tx = rewrite(&prev.shape(), &next).expect("compatible");
    let text = &tx.text;
    assert!(
        text.starts_with("add table ip kproxy\nflush table ip kproxy\n"),
        "{text}"
    );
    assert!(
        text.contains("flush map ip kproxy ep-cluster-vip-0\n"),
        "{text}"
    );
    assert!(
        text.contains("delete set ip kproxy aff-cluster-vip-0\n"),
        "{text}"
    );
    assert!(
        text.contains("delete chain ip kproxy pick-cluster-vip-3-aff60\n"),
        "{text}"
    );
    assert!(!text.contains("delete table"), "{text}");

    // Rewriting a table that keeps its affinity sets neither flushes nor deletes them.
    let again = table(
        &plan(vec![{
            let mut s = web(&WEB3);
            s.session_affinity_timeout = Some(60);
            s
        }]),
        Some(&prev),
    );
    let tx = rewrite(&prev.shape(), &again).expect("compatible");
    assert!(!tx.text.contains("flush set ip kproxy aff-"), "{}", tx.text);
    assert!(
        !tx.text.contains("delete set ip kproxy aff-"),
        "{}",
        tx.text
    );
}

#[test]
fn changed_declaration_needs_a_recreate() {
    let prev = table(&two_services(&WEB3), None);
    let mut next = prev.clone();
    if let Some(set) = next.sets.get_mut("hairpin") {
        set.spec = "type ipv4_addr;".into();
    }
    assert!(update(&prev, &next).is_none());
    assert!(rewrite(&prev.shape(), &next).is_none());
    let tx = recreate(&next);
    assert!(
        tx.text
            .starts_with("add table ip kproxy\ndelete table ip kproxy\n")
    );
}

#[test]
fn recreate_counts_objects_and_lines() {
    let next = table(&two_services(&WEB3), None);
    let tx = recreate(&next);
    assert_eq!(
        tx.objects_written,
        next.chains.len() + next.sets.len() + next.element_count()
    );
    assert_eq!(tx.lines_written, next.rule_count() + next.element_count());
    // Every command that refers to a chain comes after the chain's declaration.
    let declared = tx
        .text
        .find("add chain ip kproxy pick-cluster-vip-3\n")
        .expect("chain");
    let used = tx.text.find("goto pick-cluster-vip-3").expect("use");
    assert!(declared < used);
}

#[test]
fn endpoint_change_of_an_ipv6_service() {
    let v6 = |eps: Vec<Endpoint>| {
        let mut p = plan(vec![with_endpoints(
            service("ns9", "v6", "p", "fd00:30::49", 80),
            eps,
        )]);
        p.node.ipv4 = None;
        render(&p, IpFamily::V6, &RenderOptions::default(), None).expect("v6")
    };
    let prev = v6(vec![endpoint("[fd00:10::9]:8080", true)]);
    let next = v6(vec![endpoint("[fd00:10::a]:8080", true)]);
    let tx = update(&prev, &next).expect("compatible");
    assert!(tx.text.contains("add element ip6 kproxy ep-cluster-vip-0 {\n\tfd00:30::49 . tcp . 80 : fd00:10::a . 8080\n}"), "{}", tx.text);
}

mod incremental {
    use super::*;
    use crate::nftables::render::RenderState;

    fn state(plan: &ProxyPlan) -> RenderState {
        RenderState::new(plan, IpFamily::V4, &RenderOptions::default(), None)
    }

    /// Updates `from` to `to` incrementally; checks the result against a full render with
    /// the same layout, and the transaction against the one a full comparison builds.
    fn check(from: &ProxyPlan, to: &ProxyPlan) -> Transaction {
        let mut s = state(from);
        let before = s.table().clone();
        let changes = s
            .update(to, &RenderOptions::default())
            .expect("incremental");
        let full = RenderState::new(to, IpFamily::V4, &RenderOptions::default(), Some(&before));
        assert_eq!(
            s.table(),
            full.table(),
            "incremental differs from full render"
        );
        let tx = update_from(&changes.before, s.table(), &changes.elements).expect("tx");
        let reference = update(&before, full.table()).expect("tx");
        assert_eq!(tx, reference);
        tx
    }

    #[test]
    fn endpoint_change_service_removal_and_addition_match_a_full_render() {
        let base = two_services(&WEB3);
        check(&base, &base);
        check(
            &base,
            &two_services(&["10.180.0.1:8080", "10.180.9.9:8080"]),
        );
        check(&base, &plan(external()));
        check(&plan(external()), &base);
        let mut sticky = web(&WEB3);
        sticky.session_affinity_timeout = Some(60);
        check(&base, &plan(vec![sticky]));
    }

    #[test]
    fn shared_hairpin_pairs_stay_while_any_service_uses_them() {
        // Two services with the same pod: removing one keeps the pod's hairpin pair.
        let other = with_endpoints(
            service("ns1", "other", "p", "172.30.0.99", 81),
            vec![endpoint("10.180.0.1:8080", false)],
        );
        let both = plan(vec![web(&WEB3), other.clone()]);
        let tx = check(&both, &plan(vec![other]));
        assert!(!tx.text.contains("10.180.0.1 . 10.180.0.1"), "{}", tx.text);
        assert!(tx.text.contains("10.180.1.1 . 10.180.1.1"), "{}", tx.text);
    }

    #[test]
    fn node_change_needs_a_full_render() {
        let base = two_services(&WEB3);
        let mut moved = base.clone();
        moved.node.masquerade_all = true;
        let mut s = state(&base);
        let table = s.table().clone();
        assert!(s.update(&moved, &RenderOptions::default()).is_none());
        assert_eq!(s.table(), &table, "state unchanged");
    }

    #[test]
    fn duplicate_names_render_both_and_update_fully() {
        let a = web(&WEB3);
        let mut b = web(&["10.9.9.9:80"]);
        b.cluster_ip = ip("172.30.0.77");
        let dup = plan(vec![a, b]);
        let mut s = state(&dup);
        assert!(
            s.table()
                .element_value("service-ips", "172.30.0.77 . tcp . 80")
                .is_some()
        );
        assert!(
            s.table()
                .element_value("service-ips", "172.30.0.41 . tcp . 80")
                .is_some()
        );
        assert!(s.update(&dup, &RenderOptions::default()).is_none());
    }
}
