//! Tests of the restore builder: what a full, a partial and a cleanup sync write.

use crate::fixtures::*;
use crate::iptables::render::{RenderOptions, render};
use crate::plan::*;

use super::*;

fn ruleset(endpoints: Vec<Endpoint>) -> Ruleset {
    let svc = with_endpoints(service("ns", "web", "http", "172.30.0.10", 80), endpoints);
    let plan = ProxyPlan {
        node: node(),
        services: vec![svc],
    };
    render(&plan, IpFamily::V4, &RenderOptions::default()).expect("v4 served")
}

const FOREIGN: &str = "\
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A DOCKER-USER -s 10.9.0.0/16 -j RETURN
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:KUBE-SEP-STALESTALESTALE1 - [0:0]
-A POSTROUTING -s 172.17.0.0/16 -j MASQUERADE
-A KUBE-SEP-STALESTALESTALE1 -j DNAT --to-destination 10.1.1.1:80
COMMIT
";

#[test]
fn parses_iptables_save() {
    let saved = parse_save(FOREIGN);
    let nat = &saved[&Table::Nat];
    assert!(nat.chains.contains("DOCKER"));
    assert!(nat.chains.contains("PREROUTING"));
    assert_eq!(
        nat.rules[0],
        (
            "POSTROUTING".to_owned(),
            "-s 172.17.0.0/16 -j MASQUERADE".to_owned()
        )
    );
    assert_eq!(saved[&Table::Filter].rules.len(), 2);
}

#[test]
fn full_sync_never_declares_foreign_or_builtin_chains() {
    let input = full_sync(
        &ruleset(vec![endpoint("10.1.0.1:8080", false)]),
        &parse_save(FOREIGN),
    );
    for line in input.text.lines().filter(|l| l.starts_with(':')) {
        assert!(
            line.starts_with(":KUBE-"),
            "declares a chain kproxy does not own: {line}"
        );
    }
    // The stale endpoint chain of a previous run is flushed and deleted.
    assert!(input.text.contains(":KUBE-SEP-STALESTALESTALE1 - [0:0]"));
    assert!(input.text.contains("-X KUBE-SEP-STALESTALESTALE1"));
    assert!(!input.text.contains("DOCKER"));
    // Every jump rule is missing, so every one is inserted at the top of its chain.
    assert_eq!(
        input.text.matches("\n-I ").count(),
        super::super::jumps::JUMP_RULES.len()
    );
    assert!(input.text.contains(
        "-I PREROUTING 1 -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
    ));
}

#[test]
fn full_sync_keeps_existing_jump_rules() {
    let saved_text = "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n\
        -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\nCOMMIT\n";
    let input = full_sync(&ruleset(vec![]), &parse_save(saved_text));
    assert!(!input.text.contains("-I PREROUTING"));
    assert!(input.text.contains("-I OUTPUT 1"));
}

#[test]
fn partial_sync_of_unchanged_ruleset_is_empty() {
    let rs = ruleset(vec![endpoint("10.1.0.1:8080", false)]);
    assert!(partial_sync(&rs, &rs.clone()).is_empty());
}

#[test]
fn one_endpoint_change_rewrites_only_its_service_chains() {
    let before = ruleset(vec![
        endpoint("10.1.0.1:8080", false),
        endpoint("10.1.0.2:8080", false),
    ]);
    let after = ruleset(vec![
        endpoint("10.1.0.1:8080", false),
        endpoint("10.1.0.3:8080", false),
    ]);
    let input = partial_sync(&before, &after);
    let declared: Vec<&str> = input.text.lines().filter(|l| l.starts_with(':')).collect();
    // The service chain, the new endpoint chain, and the old one (flushed, then deleted).
    assert_eq!(declared.len(), 3, "{}", input.text);
    assert!(declared.iter().any(|l| l.starts_with(":KUBE-SVC-")));
    assert_eq!(input.chains_deleted, 1);
    assert!(
        !input.text.contains(":KUBE-SERVICES"),
        "KUBE-SERVICES rewritten:\n{}",
        input.text
    );
    assert!(
        !input.text.contains("*filter"),
        "filter table touched:\n{}",
        input.text
    );
}

#[test]
fn losing_all_endpoints_moves_the_service_to_reject() {
    let before = ruleset(vec![endpoint("10.1.0.1:8080", false)]);
    let after = ruleset(vec![]);
    let input = partial_sync(&before, &after);
    assert!(input.text.contains("-j REJECT"));
    assert!(input.text.contains("-X KUBE-SVC-"));
    assert!(input.text.contains("-X KUBE-SEP-"));
}

#[test]
fn cleanup_removes_only_kproxy_chains_and_jumps() {
    let saved = format!(
        "{FOREIGN}*filter\n:KUBE-FORWARD - [0:0]\n:KUBE-FIREWALL - [0:0]\n\
         -A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n\
         -A INPUT -j KUBE-FIREWALL\nCOMMIT\n"
    );
    let input = cleanup(&parse_save(&saved), false);
    assert!(input.text.contains(
        "-D FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD"
    ));
    assert!(input.text.contains("-X KUBE-FORWARD"));
    assert!(input.text.contains("-X KUBE-SEP-STALESTALESTALE1"));
    // kubelet's KUBE-FIREWALL and Docker's chains are not kproxy's.
    assert!(!input.text.contains("KUBE-FIREWALL"));
    assert!(!input.text.contains("DOCKER"));
}

#[test]
fn full_sync_declares_the_canary_in_mangle_nat_and_filter_and_keeps_it() {
    let saved = format!("{FOREIGN}*nat\n:KUBE-PROXY-CANARY - [0:0]\nCOMMIT\n");
    let input = full_sync(&ruleset(vec![]), &parse_save(&saved));
    assert!(
        input
            .text
            .starts_with("*mangle\n:KUBE-PROXY-CANARY - [0:0]\nCOMMIT\n")
    );
    assert_eq!(
        input.text.matches(":KUBE-PROXY-CANARY - [0:0]").count(),
        3,
        "{}",
        input.text
    );
    assert!(
        !input.text.contains("-X KUBE-PROXY-CANARY"),
        "{}",
        input.text
    );
    // Partial syncs never touch it.
    let rs = ruleset(vec![endpoint("10.1.0.1:8080", false)]);
    assert!(!partial_sync(&ruleset(vec![]), &rs).text.contains("CANARY"));
}

#[test]
fn cleanup_removes_the_canaries() {
    let saved = format!(
        "{FOREIGN}*filter\n:KUBE-PROXY-CANARY - [0:0]\nCOMMIT\n*nat\n:KUBE-PROXY-CANARY - [0:0]\nCOMMIT\n"
    );
    let input = cleanup(&parse_save(&saved), true);
    assert_eq!(
        input.text.matches("-X KUBE-PROXY-CANARY").count(),
        3,
        "{}",
        input.text
    );
    assert!(input.text.starts_with("*mangle\n"));
    let input = cleanup(&parse_save(&saved), false);
    assert_eq!(input.text.matches("-X KUBE-PROXY-CANARY").count(), 2);
    assert!(!input.text.contains("*mangle"));
}

#[test]
fn rule_targets() {
    assert_eq!(
        rule_target("-m comment --comment x -j KUBE-SERVICES"),
        Some("KUBE-SERVICES")
    );
    assert_eq!(
        rule_target("-j DNAT --to-destination 1.2.3.4:80"),
        Some("DNAT")
    );
    assert_eq!(rule_target("-m comment --comment \"only a comment\""), None);
}
