//! Unit tests of endpoint selection: readiness, traffic policies, topology hints.

use super::fixtures::*;

#[test]
fn ready_endpoints_exclude_terminating_ones() {
    let eps = vec![ep("10.1.0.1"), ep("10.1.0.2").terminating(true)];
    let p = plan_one(service("web", "10.0.0.1"), vec![slice("web-1", "web", eps)]);
    assert_eq!(addrs(&p.cluster_endpoints), ["10.1.0.1:8080"]);
    assert!(p.local_endpoints.is_empty());
    assert!(p.has_any_endpoints);
}

#[test]
fn falls_back_to_serving_terminating_when_nothing_is_ready() {
    let eps = vec![
        ep("10.1.0.1").terminating(true),
        ep("10.1.0.2").terminating(false),
        ep("10.1.0.3").not_ready(),
    ];
    let p = plan_one(service("web", "10.0.0.1"), vec![slice("web-1", "web", eps)]);
    assert_eq!(addrs(&p.cluster_endpoints), ["10.1.0.1:8080"]);
    assert!(p.cluster_endpoints[0].terminating && p.cluster_endpoints[0].serving);
    assert!(p.has_any_endpoints);
}

#[test]
fn no_usable_endpoint_means_no_endpoints() {
    let eps = vec![
        ep("10.1.0.1").not_ready(),
        ep("10.1.0.2").terminating(false),
    ];
    let p = plan_one(service("web", "10.0.0.1"), vec![slice("web-1", "web", eps)]);
    assert!(p.cluster_endpoints.is_empty());
    assert!(!p.has_any_endpoints);
}

#[test]
fn external_policy_local_fills_local_set_with_local_ready_endpoints() {
    let mut svc = node_port_service("web");
    svc.external_policy_local = true;
    svc.health_check_node_port = Some(31000);
    let eps = vec![ep("10.1.0.1").on(NODE), ep("10.1.0.2").on("node-b")];
    let p = plan_one(svc, vec![slice("web-1", "web", eps)]);
    assert_eq!(
        addrs(&p.cluster_endpoints),
        ["10.1.0.1:8080", "10.1.0.2:8080"]
    );
    assert_eq!(addrs(&p.local_endpoints), ["10.1.0.1:8080"]);
    assert!(p.local_endpoints[0].is_local);
    assert_eq!(p.health_check_node_port, Some(31000));
    assert!(p.has_any_endpoints);
}

#[test]
fn external_policy_local_without_external_access_uses_no_local_set() {
    let mut svc = service("web", "10.0.0.1");
    svc.external_policy_local = true;
    let p = plan_one(
        svc,
        vec![slice("web-1", "web", vec![ep("10.1.0.1").on(NODE)])],
    );
    assert_eq!(addrs(&p.cluster_endpoints), ["10.1.0.1:8080"]);
    assert!(p.local_endpoints.is_empty());
}

#[test]
fn internal_policy_local_uses_only_local_set() {
    let mut svc = service("web", "10.0.0.1");
    svc.internal_policy_local = true;
    let eps = vec![ep("10.1.0.2").on("node-b")];
    let p = plan_one(svc, vec![slice("web-1", "web", eps)]);
    assert!(p.cluster_endpoints.is_empty());
    assert!(p.local_endpoints.is_empty());
    assert!(p.has_any_endpoints, "a remote ready endpoint still counts");
}

#[test]
fn local_set_falls_back_to_local_serving_terminating() {
    let mut svc = service("web", "10.0.0.1");
    svc.internal_policy_local = true;
    let eps = vec![
        ep("10.1.0.1").on(NODE).terminating(true),
        ep("10.1.0.2").on("node-b"),
        ep("10.1.0.3").on(NODE).terminating(false),
    ];
    let p = plan_one(svc, vec![slice("web-1", "web", eps)]);
    assert_eq!(addrs(&p.local_endpoints), ["10.1.0.1:8080"]);
    assert!(p.has_any_endpoints);
}

#[test]
fn both_policies_local_without_external_access_use_only_local_set() {
    let mut svc = service("web", "10.0.0.1");
    svc.internal_policy_local = true;
    svc.external_policy_local = true;
    let eps = vec![ep("10.1.0.1").on(NODE), ep("10.1.0.2").on("node-b")];
    let p = plan_one(svc, vec![slice("web-1", "web", eps)]);
    assert!(p.cluster_endpoints.is_empty());
    assert_eq!(addrs(&p.local_endpoints), ["10.1.0.1:8080"]);
}

/// Upstream's `UsesClusterEndpoints`: any externally accessible port needs the cluster set,
/// even with eTP Local, for short-circuiting traffic from pods and the node itself.
#[test]
fn both_policies_local_with_node_port_still_fill_cluster_set() {
    let mut svc = node_port_service("web");
    svc.internal_policy_local = true;
    svc.external_policy_local = true;
    let eps = vec![ep("10.1.0.1").on(NODE), ep("10.1.0.2").on("node-b")];
    let p = plan_one(svc, vec![slice("web-1", "web", eps)]);
    assert_eq!(
        addrs(&p.cluster_endpoints),
        ["10.1.0.1:8080", "10.1.0.2:8080"]
    );
    assert_eq!(addrs(&p.local_endpoints), ["10.1.0.1:8080"]);
}

#[test]
fn internal_local_external_cluster_uses_both_sets() {
    let mut svc = node_port_service("web");
    svc.internal_policy_local = true;
    let eps = vec![ep("10.1.0.1").on(NODE), ep("10.1.0.2").on("node-b")];
    let p = plan_one(svc, vec![slice("web-1", "web", eps)]);
    assert_eq!(
        addrs(&p.cluster_endpoints),
        ["10.1.0.1:8080", "10.1.0.2:8080"]
    );
    assert_eq!(addrs(&p.local_endpoints), ["10.1.0.1:8080"]);
}

#[test]
fn zone_hints_prefer_same_zone() {
    let eps = vec![
        ep("10.1.0.1").zones(&[ZONE]),
        ep("10.1.0.2").zones(&["zone-b"]),
        ep("10.1.0.3").zones(&["zone-b", ZONE]),
    ];
    let p = plan_one(service("web", "10.0.0.1"), vec![slice("web-1", "web", eps)]);
    assert_eq!(
        addrs(&p.cluster_endpoints),
        ["10.1.0.1:8080", "10.1.0.3:8080"]
    );
}

#[test]
fn node_hints_prefer_same_node() {
    let eps = vec![
        ep("10.1.0.1").for_nodes(&["node-b"]).zones(&[ZONE]),
        ep("10.1.0.2").for_nodes(&[NODE]).zones(&["zone-b"]),
    ];
    let p = plan_one(service("web", "10.0.0.1"), vec![slice("web-1", "web", eps)]);
    assert_eq!(addrs(&p.cluster_endpoints), ["10.1.0.2:8080"]);
}

#[test]
fn node_hints_without_this_node_fall_back_to_zone_hints() {
    let eps = vec![
        ep("10.1.0.1").for_nodes(&["node-b"]).zones(&[ZONE]),
        ep("10.1.0.2").for_nodes(&["node-c"]).zones(&["zone-b"]),
    ];
    let p = plan_one(service("web", "10.0.0.1"), vec![slice("web-1", "web", eps)]);
    assert_eq!(addrs(&p.cluster_endpoints), ["10.1.0.1:8080"]);
}

#[test]
fn mixed_hints_are_ignored() {
    let eps = vec![
        ep("10.1.0.1").zones(&[ZONE]).for_nodes(&[NODE]),
        ep("10.1.0.2"),
    ];
    let p = plan_one(service("web", "10.0.0.1"), vec![slice("web-1", "web", eps)]);
    assert_eq!(
        addrs(&p.cluster_endpoints),
        ["10.1.0.1:8080", "10.1.0.2:8080"]
    );
}

#[test]
fn zone_hints_ignored_without_hint_for_this_zone_or_without_zone() {
    let eps = || {
        vec![
            ep("10.1.0.1").zones(&["zone-b"]),
            ep("10.1.0.2").zones(&[ZONE]),
        ]
    };
    let svc = || service("web", "10.0.0.1");
    let other_zone = plan_one_in(svc(), vec![slice("web-1", "web", eps())], Some("zone-c"));
    assert_eq!(other_zone.cluster_endpoints.len(), 2);
    let no_zone = plan_one_in(svc(), vec![slice("web-1", "web", eps())], None);
    assert_eq!(no_zone.cluster_endpoints.len(), 2);
}

#[test]
fn hints_of_non_ready_endpoints_do_not_matter() {
    let eps = vec![
        ep("10.1.0.1").zones(&[ZONE]),
        ep("10.1.0.2").zones(&["zone-b"]),
        ep("10.1.0.3").not_ready(),
    ];
    let p = plan_one(service("web", "10.0.0.1"), vec![slice("web-1", "web", eps)]);
    assert_eq!(addrs(&p.cluster_endpoints), ["10.1.0.1:8080"]);
}

#[test]
fn terminating_fallback_ignores_topology() {
    let eps = vec![
        ep("10.1.0.1").zones(&["zone-b"]).terminating(true),
        ep("10.1.0.2").zones(&[ZONE]).terminating(true),
    ];
    let p = plan_one(service("web", "10.0.0.1"), vec![slice("web-1", "web", eps)]);
    assert_eq!(p.cluster_endpoints.len(), 2);
}

#[test]
fn topology_does_not_restrict_local_set() {
    let mut svc = node_port_service("web");
    svc.external_policy_local = true;
    let eps = vec![
        ep("10.1.0.1").on(NODE).zones(&["zone-b"]),
        ep("10.1.0.2").on("node-b").zones(&[ZONE]),
    ];
    let p = plan_one(svc, vec![slice("web-1", "web", eps)]);
    assert_eq!(addrs(&p.cluster_endpoints), ["10.1.0.2:8080"]);
    assert_eq!(addrs(&p.local_endpoints), ["10.1.0.1:8080"]);
}
