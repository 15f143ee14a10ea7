//! Golden tests: the rendered ruleset of each fixture must equal its file under
//! `dataplane/tests/golden/`. Set `KPROXY_UPDATE_GOLDEN=1` to rewrite the files, then review
//! the diff as you would review rules on a node.

use crate::fixtures::*;
use crate::plan::*;

use super::{RenderOptions, render};

fn check(name: &str, plan: &ProxyPlan, family: IpFamily, opts: RenderOptions) {
    let got = render(plan, family, &opts)
        .expect("family served")
        .to_restore_text();
    let path = format!("{}/tests/golden/{name}.txt", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("KPROXY_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &got).expect("write golden");
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    if got != want {
        panic!("{name}: rendered rules differ from {path}\n--- got ---\n{got}");
    }
}

#[test]
fn cluster_ip_with_three_endpoints() {
    let svc = with_endpoints(
        service("ns1", "web", "http", "172.30.0.41", 80),
        vec![
            endpoint("10.180.0.1:8080", true),
            endpoint("10.180.1.1:8080", false),
            endpoint("10.180.2.1:8080", false),
        ],
    );
    check(
        "iptables-cluster-ip",
        &plan(vec![svc]),
        IpFamily::V4,
        RenderOptions::default(),
    );
}

#[test]
fn nodeport_load_balancer_external_ips() {
    // With the nfacct counters, as upstream's golden: INVALID drops and localhost NodePort
    // packets are counted.
    let opts = RenderOptions {
        random_fully: true,
        conntrack_tcp_be_liberal: false,
        nfacct: true,
    };
    check("iptables-external", &plan(external()), IpFamily::V4, opts);
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
        "iptables-no-endpoints",
        &plan(vec![none, remote, itp]),
        IpFamily::V4,
        RenderOptions::default(),
    );
}

#[test]
fn session_affinity_and_masquerade_all() {
    let mut svc = service("ns8", "sticky", "p", "172.30.0.48", 80);
    svc.session_affinity_timeout = Some(10800);
    let svc = with_endpoints(
        svc,
        vec![
            endpoint("10.180.0.8:80", true),
            endpoint("10.180.1.8:80", false),
        ],
    );
    let mut p = plan(vec![svc]);
    p.node.masquerade_all = true;
    p.node.localhost_nodeports = false;
    if let Some(v4) = p.node.ipv4.as_mut() {
        v4.nodeport_addresses = NodePortAddresses::Only(vec![ip("192.168.0.10"), ip("127.0.0.1")]);
    }
    check(
        "iptables-affinity",
        &p,
        IpFamily::V4,
        RenderOptions::default(),
    );
}

#[test]
fn ipv6_ruleset() {
    let mut svc = service("ns9", "v6", "p", "fd00:30::49", 80);
    svc.node_port = Some(30049);
    let svc = with_endpoints(svc, vec![endpoint("[fd00:10::9]:8080", true)]);
    check(
        "ip6tables",
        &plan(vec![svc]),
        IpFamily::V6,
        RenderOptions::default(),
    );
}

#[test]
fn family_not_served_renders_nothing() {
    let mut p = plan(vec![]);
    p.node.ipv6 = None;
    assert!(render(&p, IpFamily::V6, &RenderOptions::default()).is_none());
}

#[test]
fn probabilities_give_each_endpoint_one_nth() {
    let eps: Vec<_> = (0..7)
        .map(|i| endpoint(&format!("10.1.0.{i}:80"), false))
        .collect();
    let svc = with_endpoints(service("ns", "many", "p", "172.30.0.50", 80), eps);
    let rs = render(
        &plan(vec![svc.clone()]),
        IpFamily::V4,
        &RenderOptions::default(),
    )
    .expect("v4");
    let chain = crate::iptables::names::ServiceChains::of(&svc.name).cluster;
    let probs: Vec<f64> = rs.nat[&chain]
        .iter()
        .filter_map(|r| r.split("--probability ").nth(1))
        .filter_map(|p| p.split(' ').next()?.parse().ok())
        .collect();
    // Rule i matches with p_i given all earlier rules missed; the share is 1/7 for every i.
    let mut remaining = 1.0;
    for p in probs.iter().chain(std::iter::once(&1.0)) {
        let share = remaining * p;
        assert!((share - 1.0 / 7.0).abs() < 1e-9, "share {share}");
        remaining -= share;
    }
}

#[test]
fn large_clusters_drop_per_endpoint_comments_only() {
    let eps = |base: usize| -> Vec<Endpoint> {
        (0..3)
            .map(|i| endpoint(&format!("10.{}.{}.{i}:80", base / 250, base % 250), false))
            .collect()
    };
    let services: Vec<ServicePortPlan> = (0..400)
        .map(|n| {
            with_endpoints(
                service(
                    "ns",
                    &format!("svc{n}"),
                    "p",
                    &format!("172.30.{}.{}", n / 250, n % 250),
                    80,
                ),
                eps(n),
            )
        })
        .collect();
    let rs = render(&plan(services), IpFamily::V4, &RenderOptions::default()).expect("v4");
    let sep_rules: Vec<&String> = rs
        .nat
        .iter()
        .filter(|(c, _)| c.starts_with("KUBE-SEP-"))
        .flat_map(|(_, r)| r)
        .collect();
    assert_eq!(sep_rules.len(), 400 * 3 * 2);
    assert!(
        sep_rules.iter().all(|r| !r.contains("--comment")),
        "1200 endpoints: no SEP comments"
    );
    assert!(
        rs.nat["KUBE-SERVICES"]
            .iter()
            .all(|r| r.contains("--comment")),
        "dispatch rules keep theirs"
    );
    let small = with_endpoints(service("ns", "small", "p", "172.30.9.9", 80), eps(999));
    let rs = render(&plan(vec![small]), IpFamily::V4, &RenderOptions::default()).expect("v4");
    assert!(
        rs.nat
            .iter()
            .filter(|(c, _)| c.starts_with("KUBE-SEP-"))
            .flat_map(|(_, r)| r)
            .all(|r| r.contains("--comment"))
    );
}

/// The external Services and `web` with two endpoints.
fn web_and_external() -> ProxyPlan {
    let mut services = external();
    services.push(web(&["10.180.0.1:8080", "10.180.1.1:8080"]));
    plan(services)
}

/// Moves `web`'s first endpoint to another pod.
fn move_web_endpoint(p: &mut ProxyPlan) {
    let web = p
        .services
        .iter_mut()
        .find(|s| s.name.name == "web")
        .expect("web");
    web.cluster_endpoints[0].addr = "10.180.2.1:8080".parse().expect("addr");
}

#[test]
fn cached_rendering_equals_full_rendering_across_changes() {
    use super::{RenderCache, render_cached};
    let opts = RenderOptions::default();
    let mut cache = RenderCache::default();
    let mut p = web_and_external();
    let mut step = |p: &ProxyPlan, what: &str| {
        let cached = render_cached(p, IpFamily::V4, &opts, &mut cache).expect("v4");
        assert_eq!(
            cached,
            render(p, IpFamily::V4, &opts).expect("v4"),
            "after {what}"
        );
    };
    step(&p, "the first render");
    step(&p, "an unchanged plan");
    move_web_endpoint(&mut p);
    step(&p, "an endpoint change");
    p.node.masquerade_all = true;
    step(&p, "a node context change");
    p.services.retain(|s| s.name.name != "lb");
    step(&p, "a removed service");
    p.services.insert(
        0,
        with_endpoints(
            service("ns0", "new", "p", "172.30.0.99", 80),
            vec![endpoint("10.180.9.9:80", false)],
        ),
    );
    step(&p, "an added service");
}

#[test]
fn an_endpoint_change_patches_only_that_services_chains() {
    use super::super::names::is_service_chain;
    use super::super::restore;
    use super::{RenderCache, RenderUpdate, render_update};
    let opts = RenderOptions::default();
    let mut cache = RenderCache::default();
    let mut p = web_and_external();
    let first = render_update(&p, IpFamily::V4, &opts, &mut cache);
    assert_eq!(first, RenderUpdate::Rebuilt { previous: None });
    let before = render(&p, IpFamily::V4, &opts).expect("v4");
    move_web_endpoint(&mut p);
    let after = render(&p, IpFamily::V4, &opts).expect("v4");
    let RenderUpdate::Chains(changes) = render_update(&p, IpFamily::V4, &opts, &mut cache) else {
        panic!("an endpoint change takes the fast path");
    };
    assert_eq!(
        cache.ruleset(),
        Some(&after),
        "the patched ruleset is the full render"
    );
    assert!(
        changes
            .write
            .iter()
            .chain(&changes.delete)
            .all(|(_, chain)| is_service_chain(chain)),
        "{changes:?}"
    );
    assert_eq!(
        (changes.write.len(), changes.delete.len()),
        (2, 1),
        "{changes:?}"
    );
    // The restore input equals what diffing the two whole rulesets gives.
    assert_eq!(
        restore::chains_sync(&after, &changes),
        restore::partial_sync(&before, &after)
    );
    // Nothing changed: nothing to write.
    let RenderUpdate::Chains(none) = render_update(&p, IpFamily::V4, &opts, &mut cache) else {
        panic!("an unchanged plan takes the fast path");
    };
    assert_eq!(none, Default::default());
}
