//! The end-to-end suite: every Service feature kproxy implements, proven with real packets
//! in a 3-node rig, once per proxy mode. Each scenario is a function of the mode; the
//! `suite!` macro instantiates all of them for a mode, so a new mode gets the whole suite
//! with one line. Needs root.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use kproxy_netns_tests::echo::{Outcome, try_ask};
use kproxy_netns_tests::http::http_get;
use kproxy_netns_tests::manifests::{PortSpec, ServiceSpec, ServiceType};
use kproxy_netns_tests::rig::{EXTERNAL_IP, UPLINK};
use kproxy_netns_tests::scenario::{BACKEND_PORT, Cluster, DROP_TIMEOUT};
use kproxy_netns_tests::stats::{assert_uniform, samples_to_detect_skew};
use kproxy_netns_tests::traffic::probe::ProbeProtocol;
use kproxy_netns_tests::traffic::tcp_over_tun::TunClient;

type Result = anyhow::Result<()>;

fn ip(a: u8, b: u8, c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(a, b, c, d)
}

fn sock(addr: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(addr), port)
}

fn web(endpoints: Vec<kproxy_netns_tests::manifests::EndpointSpec>) -> ServiceSpec {
    let mut spec = ServiceSpec::new(
        "web",
        ip(10, 96, 0, 10),
        vec![PortSpec::tcp("http", 80, BACKEND_PORT)],
    );
    spec.endpoints = endpoints;
    spec
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn backends_hit(hits: &kproxy_netns_tests::scenario::Hits) -> BTreeSet<String> {
    hits.per_pod.keys().cloned().collect()
}

/// `kproxy explain` on `node` agrees with what the probes saw: the verdict, and for a DNAT
/// the pods the connections reached (`hit`, when every eligible pod was reached; else only
/// a subset of the explained ones) and whether the source was masqueraded.
fn assert_explained(
    c: &Cluster,
    node: usize,
    from: Ipv4Addr,
    to: SocketAddr,
    verdict: &str,
    hit: Option<&BTreeSet<String>>,
    masquerade: Option<bool>,
) -> Result {
    let e = c.explain(node, from, to)?;
    assert_eq!(
        e.verdict, verdict,
        "explain {from} -> {to} on node-{node}: {:#}",
        e.json
    );
    if let Some(hit) = hit {
        assert!(
            hit.is_subset(&e.pods) && !hit.is_empty(),
            "explain {from} -> {to} on node-{node}: probes reached {hit:?}: {:#}",
            e.json
        );
    }
    if let Some(masquerade) = masquerade {
        assert_eq!(
            e.masquerade, masquerade,
            "explain {from} -> {to} on node-{node}: {:#}",
            e.json
        );
    }
    Ok(())
}

/// ClusterIP from a pod on another node and from a pod on the same node as an endpoint:
/// every connection reaches an endpoint, evenly (chi-square), the client's address is
/// kept, and the packet leaves the source node already DNATed (pnet capture).
fn cluster_ip(mode: &str) -> Result {
    let mut c = Cluster::start(mode, 3, 2, &[], &[])?;
    let endpoints = ["pod-1-0", "pod-2-0", "pod-2-1"];
    let spec = web(endpoints
        .iter()
        .map(|p| c.endpoint(p))
        .collect::<anyhow::Result<_>>()?);
    c.apply(&spec)?;
    let vip = sock(ip(10, 96, 0, 10), 80);
    let n = samples_to_detect_skew(endpoints.len());
    for client in ["pod-0-0", "pod-1-1"] {
        let hits = c.tcp_hits(c.pod_ns(client)?, vip, n);
        assert_eq!(hits.failures, 0, "from {client}: {hits:?}");
        assert_uniform(&hits.per_pod, &endpoints);
        let own = c.pod_ip(client)?.to_string();
        assert_eq!(
            hits.peers.keys().collect::<Vec<_>>(),
            vec![&own],
            "pod source kept from {client}"
        );
        let e = c.explain(c.node_of(client)?, c.pod_ip(client)?, vip)?;
        assert_eq!(
            (e.verdict.as_str(), &e.pods, e.masquerade),
            ("dnat", &backends_hit(&hits), false),
            "explain from {client}: {:#}",
            e.json
        );
    }
    let dst = SocketAddrV4::new(ip(10, 96, 0, 10), 80);
    assert!(
        c.dnat_on_source("pod-0-0", dst, ProbeProtocol::TcpSyn, &endpoints, 20)?,
        "TCP DNAT on the source node"
    );
    // Another port of the cluster IP: refused exactly where explain says rejected
    // (nftables and IPVS mode), not answered elsewhere.
    let other_port = sock(ip(10, 96, 0, 10), 81);
    let outcome = try_ask(c.pod_ns("pod-0-0")?, None, other_port, DROP_TIMEOUT);
    let e = c.explain(0, c.pod_ip("pod-0-0")?, other_port)?;
    assert_eq!(
        e.verdict == "reject",
        matches!(outcome, Outcome::Refused),
        "{outcome:?}: {:#}",
        e.json
    );
    assert!(!matches!(outcome, Outcome::Replied(_)), "{outcome:?}");
    Ok(())
}

/// A NodePort outside the API server's default range (30000-32767): clusters widen the
/// range with `--service-node-port-range`, and kube-proxy programs whatever was admitted.
const LOW_NODE_PORT: u16 = 3001;

/// NodePort (externalTrafficPolicy: Cluster) from outside through every node, kernel
/// sockets and the smoltcp client: always answered, source masqueraded. A second port
/// has a NodePort outside the default range, and works the same.
fn node_port(mode: &str) -> Result {
    let mut c = Cluster::start(mode, 3, 2, &[], &[])?;
    let mut spec = web(vec![c.endpoint("pod-1-0")?, c.endpoint("pod-2-1")?]);
    spec.service_type = ServiceType::NodePort;
    spec.ports = vec![
        PortSpec::tcp("http", 80, BACKEND_PORT).node_port(30080),
        PortSpec::tcp("low", 81, BACKEND_PORT).node_port(LOW_NODE_PORT),
    ];
    c.apply(&spec)?;
    for node in 0..3 {
        let hits = c.tcp_hits(&c.rig.external, sock(c.node_ip(node), LOW_NODE_PORT), 3);
        assert_eq!(
            hits.failures, 0,
            "NodePort {LOW_NODE_PORT} via node-{node}: {hits:?}"
        );
    }
    let mut tun = TunClient::new(
        &c.rig.external,
        "kptun0",
        ip(198, 18, 0, 1),
        ip(198, 18, 0, 2),
        24,
    )?;
    for node in 0..3 {
        let hits = c.tcp_hits(&c.rig.external, sock(c.node_ip(node), 30080), 6);
        assert_eq!(hits.failures, 0, "via node-{node}: {hits:?}");
        assert!(
            !hits.peers.contains_key(&EXTERNAL_IP.to_string()),
            "eTP Cluster masquerades: {hits:?}"
        );
        assert_explained(
            &c,
            node,
            EXTERNAL_IP,
            sock(c.node_ip(node), 30080),
            "dnat",
            Some(&backends_hit(&hits)),
            Some(true),
        )?;
        let line = tun.request(
            SocketAddrV4::new(c.node_ip(node), 30080),
            b"",
            Duration::from_secs(3),
        )?;
        assert!(
            line.starts_with("pod-1-0 ") || line.starts_with("pod-2-1 "),
            "smoltcp via node-{node}: {line:?}"
        );
    }
    Ok(())
}

/// externalIPs: the external client reaches the Service through an external IP routed to a
/// node.
fn external_ips(mode: &str) -> Result {
    let mut c = Cluster::start(mode, 3, 2, &[], &[])?;
    let mut spec = web(vec![c.endpoint("pod-1-0")?, c.endpoint("pod-2-0")?]);
    spec.external_ips = vec![ip(203, 0, 113, 20)];
    c.apply(&spec)?;
    c.rig.route_vips_via(2)?;
    let hits = c.tcp_hits(&c.rig.external, sock(ip(203, 0, 113, 20), 80), 6);
    assert_eq!(hits.failures, 0, "{hits:?}");
    assert!(backends_hit(&hits).is_subset(&names(&["pod-1-0", "pod-2-0"])));
    let e = c.explain(2, EXTERNAL_IP, sock(ip(203, 0, 113, 20), 80))?;
    assert_eq!(
        (e.verdict.as_str(), &e.pods, e.masquerade),
        ("dnat", &names(&["pod-1-0", "pod-2-0"]), true),
        "{:#}",
        e.json
    );
    let mut tun = TunClient::new(
        &c.rig.external,
        "kptun0",
        ip(198, 18, 0, 1),
        ip(198, 18, 0, 2),
        24,
    )?;
    let line = tun.request(
        SocketAddrV4::new(ip(203, 0, 113, 20), 80),
        b"",
        Duration::from_secs(3),
    )?;
    assert!(line.starts_with("pod-"), "smoltcp to external IP: {line:?}");
    Ok(())
}

/// LoadBalancer IP with loadBalancerSourceRanges: a source inside the range is served, one
/// outside (the smoltcp client's network) is dropped.
fn load_balancer_source_ranges(mode: &str) -> Result {
    let mut c = Cluster::start(mode, 3, 2, &[], &[])?;
    let mut spec = web(vec![c.endpoint("pod-1-0")?, c.endpoint("pod-2-0")?]);
    spec.service_type = ServiceType::LoadBalancer;
    spec.ports = vec![PortSpec::tcp("http", 80, BACKEND_PORT).node_port(30081)];
    spec.load_balancer_ips = vec![ip(203, 0, 113, 30)];
    spec.source_ranges = vec!["192.168.50.0/24".into()];
    c.apply(&spec)?;
    let lb = sock(ip(203, 0, 113, 30), 80);
    let hits = c.tcp_hits(&c.rig.external, lb, 4);
    assert_eq!(hits.failures, 0, "allowed source: {hits:?}");
    let mut tun = TunClient::new(
        &c.rig.external,
        "kptun0",
        ip(198, 18, 0, 1),
        ip(198, 18, 0, 2),
        24,
    )?;
    let refused = tun.request(
        SocketAddrV4::new(ip(203, 0, 113, 30), 80),
        b"",
        DROP_TIMEOUT,
    );
    assert!(
        refused.is_err(),
        "198.18.0.2 is outside loadBalancerSourceRanges: {refused:?}"
    );
    for node in 0..3 {
        assert_explained(&c, node, ip(198, 18, 0, 2), lb, "drop", None, None)?;
        assert_explained(
            &c,
            node,
            EXTERNAL_IP,
            lb,
            "dnat",
            Some(&backends_hit(&hits)),
            None,
        )?;
    }
    // Without source ranges the same client gets through: the test can tell.
    spec.source_ranges.clear();
    c.apply(&spec)?;
    let line = tun.request(
        SocketAddrV4::new(ip(203, 0, 113, 30), 80),
        b"",
        Duration::from_secs(3),
    )?;
    assert!(line.starts_with("pod-"), "{line:?}");
    Ok(())
}

/// externalTrafficPolicy: Local: only local endpoints, client source preserved, nodes
/// without local endpoints drop, and the health-check NodePort answers 200/503 with the
/// local endpoint count.
fn external_traffic_policy_local(mode: &str) -> Result {
    let mut c = Cluster::start(mode, 3, 2, &[], &[])?;
    let mut spec = web(vec![
        c.endpoint("pod-1-0")?,
        c.endpoint("pod-1-1")?,
        c.endpoint("pod-2-0")?,
    ]);
    spec.service_type = ServiceType::LoadBalancer;
    spec.ports = vec![PortSpec::tcp("http", 80, BACKEND_PORT).node_port(30090)];
    spec.external_local = true;
    spec.health_check_node_port = Some(32090);
    c.apply(&spec)?;

    let hits = c.tcp_hits(&c.rig.external, sock(c.node_ip(1), 30090), 12);
    assert_eq!(hits.failures, 0, "{hits:?}");
    assert_eq!(
        backends_hit(&hits),
        names(&["pod-1-0", "pod-1-1"]),
        "only node-1's endpoints"
    );
    assert_eq!(
        hits.peers.keys().collect::<Vec<_>>(),
        vec![&EXTERNAL_IP.to_string()],
        "source preserved"
    );
    let e = c.explain(1, EXTERNAL_IP, sock(c.node_ip(1), 30090))?;
    assert_eq!(
        (e.verdict.as_str(), &e.pods, e.masquerade),
        ("dnat", &backends_hit(&hits), false),
        "{:#}",
        e.json
    );
    let mut tun = TunClient::new(
        &c.rig.external,
        "kptun0",
        ip(198, 18, 0, 1),
        ip(198, 18, 0, 2),
        24,
    )?;
    let line = tun.request(
        SocketAddrV4::new(c.node_ip(2), 30090),
        b"",
        Duration::from_secs(3),
    )?;
    assert_eq!(
        line.trim(),
        "pod-2-0 198.18.0.2",
        "smoltcp client's address preserved"
    );
    let outcome = try_ask(
        &c.rig.external,
        None,
        sock(c.node_ip(0), 30090),
        DROP_TIMEOUT,
    );
    assert!(
        turned_away_without_local_endpoint(mode, &outcome),
        "node-0 has no local endpoint: got {outcome:?}"
    );
    let turned_away = if mode == "ipvs" { "reject" } else { "drop" };
    assert_explained(
        &c,
        0,
        EXTERNAL_IP,
        sock(c.node_ip(0), 30090),
        turned_away,
        None,
        None,
    )?;

    let health = |node: usize| http_get(&c.rig.external, sock(c.node_ip(node), 32090), "/");
    let (status, body) = health(1)?;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"localEndpoints\":2"), "{body}");
    let (status, body) = health(0)?;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"localEndpoints\":0"), "{body}");
    Ok(())
}

/// internalTrafficPolicy: Local: pods reach only endpoints on their own node; a node
/// without local endpoints drops.
fn internal_traffic_policy_local(mode: &str) -> Result {
    let mut c = Cluster::start(mode, 3, 2, &[], &[])?;
    let mut spec = web(vec![c.endpoint("pod-1-0")?, c.endpoint("pod-2-0")?]);
    spec.internal_local = true;
    c.apply(&spec)?;
    let vip = sock(ip(10, 96, 0, 10), 80);
    let hits = c.tcp_hits(c.pod_ns("pod-1-1")?, vip, 8);
    assert_eq!(hits.failures, 0, "{hits:?}");
    assert_eq!(backends_hit(&hits), names(&["pod-1-0"]));
    let e = c.explain(1, c.pod_ip("pod-1-1")?, vip)?;
    assert_eq!(e.pods, names(&["pod-1-0"]), "{:#}", e.json);
    let outcome = try_ask(c.pod_ns("pod-0-0")?, None, vip, DROP_TIMEOUT);
    assert!(
        turned_away_without_local_endpoint(mode, &outcome),
        "node-0 has no local endpoint: got {outcome:?}"
    );
    let turned_away = if mode == "ipvs" { "reject" } else { "drop" };
    assert_explained(&c, 0, c.pod_ip("pod-0-0")?, vip, turned_away, None, None)?;
    Ok(())
}

/// Whether `outcome` is what a client gets from a node without an endpoint for it under a
/// Local traffic policy. The rule-based modes drop (a timeout), as upstream's iptables and
/// nftables modes. IPVS answers a virtual server without real servers with ICMP port
/// unreachable, so in IPVS mode the client is refused, as with upstream's IPVS mode
/// (kubernetes/kubernetes#121371).
fn turned_away_without_local_endpoint(mode: &str, outcome: &Outcome) -> bool {
    match outcome {
        Outcome::TimedOut => mode != "ipvs",
        Outcome::Refused => mode == "ipvs",
        _ => false,
    }
}

/// detectLocalMode: pod traffic told apart by the node's pod CIDR (NodeCIDR), the pods'
/// bridge (BridgeInterface) or their ports' name prefix (InterfaceNamePrefix) instead of
/// the cluster CIDR. A pod reaches a ClusterIP backend with its own address; a pod on a
/// node without endpoints of an externalTrafficPolicy: Local NodePort is short-circuited to
/// the cluster's endpoints, while a client outside is turned away (IPVS, as upstream's,
/// uses the detector for cluster-IP masquerading only). Userspace mode tells pods by
/// address only: NodeCIDR.
fn detect_local_modes(mode: &str) -> Result {
    let detectors: &[&[&str]] = if mode == "userspace" {
        &[&["--detect-local-mode=NodeCIDR"]]
    } else {
        &[
            &["--detect-local-mode=NodeCIDR"],
            &[
                "--detect-local-mode=BridgeInterface",
                "--pod-bridge-interface=cbr0",
            ],
            // Bridged pod traffic enters the IP layer on the bridge, not on the pod's
            // port (`vp<j>`): the prefix that matches it here is the bridge's.
            &[
                "--detect-local-mode=InterfaceNamePrefix",
                "--pod-interface-name-prefix=cbr",
            ],
        ]
    };
    for args in detectors {
        let mut c = Cluster::start(mode, 2, 1, &[], args)?;
        let mut spec = web(vec![c.endpoint("pod-1-0")?]);
        spec.service_type = ServiceType::NodePort;
        spec.ports = vec![PortSpec::tcp("http", 80, BACKEND_PORT).node_port(30091)];
        spec.external_local = true;
        c.apply(&spec)?;
        let pod = c.pod_ns("pod-0-0")?;
        let own = c.pod_ip("pod-0-0")?.to_string();
        let hits = c.tcp_hits(pod, sock(ip(10, 96, 0, 10), 80), 3);
        assert_eq!(hits.failures, 0, "{args:?}: {hits:?}");
        assert_eq!(
            hits.peers.keys().collect::<Vec<_>>(),
            vec![&own],
            "{args:?}: pod source kept"
        );
        let pod_ip = c.pod_ip("pod-0-0")?;
        let e = c.explain(0, pod_ip, sock(ip(10, 96, 0, 10), 80))?;
        assert!(!e.masquerade, "{args:?}: {:#}", e.json);
        if mode != "ipvs" {
            let hits = c.tcp_hits(pod, sock(c.node_ip(0), 30091), 3);
            assert_eq!(
                hits.failures, 0,
                "{args:?}: pod traffic short-circuited: {hits:?}"
            );
            let e = c.explain(0, pod_ip, sock(c.node_ip(0), 30091))?;
            assert_eq!(
                (e.verdict.as_str(), &e.pods),
                ("dnat", &names(&["pod-1-0"])),
                "{args:?}: {:#}",
                e.json
            );
        }
        let outcome = try_ask(
            &c.rig.external,
            None,
            sock(c.node_ip(0), 30091),
            DROP_TIMEOUT,
        );
        assert!(
            turned_away_without_local_endpoint(mode, &outcome),
            "{args:?}: outside traffic is not pod traffic: got {outcome:?}"
        );
        let turned_away = if mode == "ipvs" { "reject" } else { "drop" };
        let e = c.explain(0, EXTERNAL_IP, sock(c.node_ip(0), 30091))?;
        assert_eq!(e.verdict, turned_away, "{args:?}: {:#}", e.json);
    }
    Ok(())
}

/// sessionAffinity: ClientIP: every connection of a client sticks to one backend; many
/// clients spread over all of them.
fn session_affinity(mode: &str) -> Result {
    let mut c = Cluster::start(mode, 3, 2, &[], &[])?;
    let mut spec = web(vec![
        c.endpoint("pod-1-0")?,
        c.endpoint("pod-1-1")?,
        c.endpoint("pod-2-0")?,
    ]);
    spec.affinity_timeout = Some(600);
    c.apply(&spec)?;
    let vip = sock(ip(10, 96, 0, 10), 80);
    // Twelve client addresses on one pod: a chance of 3^-11 that all pick one backend.
    let client = c.pod_ns("pod-0-0")?;
    for k in 0..12u8 {
        client.ip(&[
            "addr",
            "add",
            &format!("10.244.0.{}/24", 100 + k),
            "dev",
            "eth0",
        ])?;
    }
    let mut chosen = BTreeSet::new();
    for k in 0..12u8 {
        let src = IpAddr::V4(ip(10, 244, 0, 100 + k));
        let mut picks = BTreeSet::new();
        for _ in 0..5 {
            match try_ask(client, Some(src), vip, Duration::from_secs(3)) {
                Outcome::Replied(r) => {
                    assert_eq!(r.peer, src.to_string());
                    picks.insert(r.pod);
                }
                other => panic!("from {src}: {other:?}"),
            }
        }
        assert_eq!(
            picks.len(),
            1,
            "client {src} must stick to one backend: {picks:?}"
        );
        chosen.extend(picks);
    }
    assert!(chosen.len() > 1, "different clients spread: {chosen:?}");
    let e = c.explain(0, ip(10, 244, 0, 100), vip)?;
    let reasons = e.json["reasons"].to_string();
    assert!(reasons.contains("session affinity ClientIP"), "{reasons}");
    Ok(())
}

/// A Service without endpoints is refused at once (REJECT), from a pod and from outside.
fn no_endpoints_refused(mode: &str) -> Result {
    let mut c = Cluster::start(mode, 3, 2, &[], &[])?;
    let mut spec = web(vec![]);
    spec.service_type = ServiceType::NodePort;
    spec.ports = vec![PortSpec::tcp("http", 80, BACKEND_PORT).node_port(30082)];
    c.apply(&spec)?;
    for (client, target) in [
        (c.pod_ns("pod-0-0")?, sock(ip(10, 96, 0, 10), 80)),
        (&c.rig.external, sock(c.node_ip(1), 30082)),
    ] {
        let started = Instant::now();
        match try_ask(client, None, target, Duration::from_secs(3)) {
            Outcome::Refused => assert!(
                started.elapsed() < Duration::from_secs(1),
                "refused at once"
            ),
            other => panic!("{target} without endpoints: expected refused, got {other:?}"),
        }
    }
    assert_explained(
        &c,
        0,
        c.pod_ip("pod-0-0")?,
        sock(ip(10, 96, 0, 10), 80),
        "reject",
        None,
        None,
    )?;
    assert_explained(
        &c,
        1,
        EXTERNAL_IP,
        sock(c.node_ip(1), 30082),
        "reject",
        None,
        None,
    )?;
    Ok(())
}

/// Hairpin: a pod reaching itself through its Service is served, masqueraded to its node.
fn hairpin(mode: &str) -> Result {
    let mut c = Cluster::start(mode, 3, 2, &[], &[])?;
    c.apply(&web(vec![c.endpoint("pod-0-0")?]))?;
    let hits = c.tcp_hits(c.pod_ns("pod-0-0")?, sock(ip(10, 96, 0, 10), 80), 3);
    assert_eq!(hits.failures, 0, "{hits:?}");
    assert_eq!(backends_hit(&hits), names(&["pod-0-0"]));
    assert_eq!(
        hits.peers.keys().collect::<Vec<_>>(),
        vec!["10.244.0.1"],
        "hairpin is masqueraded"
    );
    assert_explained(
        &c,
        0,
        c.pod_ip("pod-0-0")?,
        sock(ip(10, 96, 0, 10), 80),
        "dnat",
        Some(&names(&["pod-0-0"])),
        Some(true),
    )?;
    Ok(())
}

/// Terminating fallback: with only serving+terminating endpoints traffic still flows to
/// them; once a ready endpoint exists, only it is used.
fn terminating_fallback(mode: &str) -> Result {
    let mut c = Cluster::start(mode, 3, 2, &[], &[])?;
    let mut spec = web(vec![
        c.terminating_endpoint("pod-1-0")?,
        c.terminating_endpoint("pod-2-0")?,
    ]);
    c.apply(&spec)?;
    let vip = sock(ip(10, 96, 0, 10), 80);
    let hits = c.tcp_hits(c.pod_ns("pod-0-0")?, vip, 8);
    assert_eq!(hits.failures, 0, "{hits:?}");
    assert!(backends_hit(&hits).is_subset(&names(&["pod-1-0", "pod-2-0"])));
    spec.endpoints.push(c.endpoint("pod-0-1")?);
    c.apply(&spec)?;
    let hits = c.tcp_hits(c.pod_ns("pod-0-0")?, vip, 8);
    assert_eq!(
        backends_hit(&hits),
        names(&["pod-0-1"]),
        "ready endpoints win: {hits:?}"
    );
    let e = c.explain(0, c.pod_ip("pod-0-0")?, vip)?;
    assert_eq!(e.pods, names(&["pod-0-1"]), "{:#}", e.json);
    let unused = e.json["unused_endpoints"].to_string();
    assert!(
        unused.contains("terminating"),
        "why the others not: {unused}"
    );
    Ok(())
}

/// `kproxy explain --live` on a node: the kernel objects of a Service agree with the plan;
/// after one is deleted behind kproxy's back (iptables: the cluster-IP rule in
/// `KUBE-SERVICES`; nftables: its `service-ips` element; IPVS: its real server;
/// userspace: the host route of its cluster IP into the TUN device), it says which one is
/// missing, exits 3, and the probe fails as it says.
fn explain_live_catches_tampering(mode: &str) -> Result {
    let mut c = Cluster::start(mode, 2, 1, &[], &[])?;
    c.apply(&web(vec![c.endpoint("pod-1-0")?]))?;
    let vip = sock(ip(10, 96, 0, 10), 80);
    let from = IpAddr::V4(c.pod_ip("pod-0-0")?);
    let (status, json) = c.rig.explain_with(0, from, &vip.to_string(), &["--live"])?;
    assert_eq!(status, 0, "{json:#}");
    assert_eq!(json["live"]["agrees"], true, "{json:#}");
    let objects = json["live"]["objects"].as_array().map_or(0, Vec::len);
    assert!(
        objects >= 2,
        "the service's kernel objects are listed: {json:#}"
    );

    let node = &c.rig.nodes[0].ns;
    if mode == "userspace" {
        node.ip(&["route", "del", "10.96.0.10/32", "dev", "kproxy0"])?;
    } else if mode == "ipvs" {
        let backend = format!("{}:{BACKEND_PORT}", c.pod_ip("pod-1-0")?);
        node.exec("ipvsadm", &["-d", "-t", "10.96.0.10:80", "-r", &backend])?;
    } else if mode == "nftables" {
        node.exec(
            "nft",
            &[
                "delete",
                "element",
                "ip",
                "kproxy",
                "service-ips",
                "{ 10.96.0.10 . tcp . 80 }",
            ],
        )?;
    } else {
        let save = node.exec("iptables-save", &["-t", "nat"])?;
        let tampered =
            |l: &&str| l.starts_with("-A KUBE-SERVICES") && l.contains("web:http cluster IP");
        assert_eq!(save.lines().filter(tampered).count(), 1, "{save}");
        let kept: String = save
            .lines()
            .filter(|l| !tampered(l))
            .map(|l| format!("{l}\n"))
            .collect();
        let file = c.rig.dir.join("tampered-nat.rules");
        std::fs::write(&file, kept)?;
        node.exec("iptables-restore", &[&file.display().to_string()])?;
    }
    let (status, json) = c.rig.explain_with(0, from, &vip.to_string(), &["--live"])?;
    assert_eq!(status, 3, "{json:#}");
    assert_eq!(json["live"]["agrees"], false, "{json:#}");
    let missing: Vec<&str> = json["live"]["objects"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o.as_str())
        .filter(|o| o.starts_with("MISSING"))
        .collect();
    assert_eq!(missing.len(), 1, "exactly the deleted object: {json:#}");
    let hits = c.tcp_hits(c.pod_ns("pod-0-0")?, vip, 1);
    assert_eq!(
        hits.total(),
        0,
        "the tampered service no longer answers: {hits:?}"
    );
    Ok(())
}

/// An endpoint change is programmed on every node and traffic follows, within a bound.
fn endpoint_change_follows(mode: &str) -> Result {
    let mut c = Cluster::start(mode, 3, 2, &[], &[])?;
    let mut spec = web(vec![c.endpoint("pod-1-0")?, c.endpoint("pod-2-0")?]);
    c.apply(&spec)?;
    let vip = sock(ip(10, 96, 0, 10), 80);
    spec.endpoints = vec![c.endpoint("pod-2-1")?];
    let took = c.apply(&spec)?;
    eprintln!("{mode}: endpoint change synced on 3 nodes in {took:?}");
    assert!(took < Duration::from_secs(5), "bounded: {took:?}");
    let hits = c.tcp_hits(c.pod_ns("pod-0-1")?, vip, 8);
    assert_eq!(backends_hit(&hits), names(&["pod-2-1"]), "{hits:?}");
    let e = c.explain(0, c.pod_ip("pod-0-1")?, vip)?;
    assert_eq!(e.pods, names(&["pod-2-1"]), "{:#}", e.json);
    Ok(())
}

/// UDP: a UDP Service spreads evenly across nodes, and UDP probes are DNATed on the source
/// node too.
fn udp(mode: &str) -> Result {
    let mut c = Cluster::start(mode, 3, 2, &[], &[])?;
    let endpoints = ["pod-1-0", "pod-1-1", "pod-2-0"];
    let mut spec = ServiceSpec::new(
        "dns",
        ip(10, 96, 0, 53),
        vec![PortSpec::udp("dns", 53, BACKEND_PORT)],
    );
    spec.endpoints = endpoints
        .iter()
        .map(|p| c.endpoint(p))
        .collect::<anyhow::Result<_>>()?;
    c.apply(&spec)?;
    let hits = c.udp_hits(
        c.pod_ns("pod-0-0")?,
        sock(ip(10, 96, 0, 53), 53),
        samples_to_detect_skew(3),
    );
    assert_eq!(hits.failures, 0, "{hits:?}");
    assert_uniform(&hits.per_pod, &endpoints);
    let e = c.explain_to(0, c.pod_ip("pod-0-0")?, "10.96.0.53:53/udp")?;
    assert_eq!(
        (e.verdict.as_str(), &e.pods),
        ("dnat", &backends_hit(&hits)),
        "{:#}",
        e.json
    );
    let dst = SocketAddrV4::new(ip(10, 96, 0, 53), 53);
    assert!(
        c.dnat_on_source("pod-0-0", dst, ProbeProtocol::Udp, &endpoints, 20)?,
        "UDP DNAT on the source node"
    );
    Ok(())
}

/// A UDP flow (one client port, so one conntrack entry) sticks to its endpoint, and when
/// that endpoint is removed the flow moves to a remaining one within a few datagrams,
/// although the removed pod still answers: kproxy deletes the flow's conntrack entry
/// (IPVS: it also removes the real server at once, and `expire_nodest_conn` ends the IPVS
/// connection; userspace: the forwarder ends flows whose backend is gone). Otherwise the
/// flow would stay on the removed pod until its conntrack entry expired.
fn udp_flow_leaves_removed_endpoint(mode: &str) -> Result {
    use kproxy_netns_tests::rig::udp_ask_from;
    let mut c = Cluster::start(mode, 3, 2, &[], &[])?;
    let mut spec = ServiceSpec::new(
        "dns",
        ip(10, 96, 0, 53),
        vec![PortSpec::udp("dns", 53, BACKEND_PORT)],
    );
    let endpoints = ["pod-1-0", "pod-2-0"];
    spec.endpoints = endpoints
        .iter()
        .map(|p| c.endpoint(p))
        .collect::<anyhow::Result<_>>()?;
    c.apply(&spec)?;
    let vip = sock(ip(10, 96, 0, 53), 53);
    const PORT: u16 = 40053;
    let ask = |c: &Cluster| udp_ask_from(c.pod_ns("pod-0-0")?, PORT, vip);
    let first = ask(&c)?.pod;
    for _ in 0..3 {
        assert_eq!(ask(&c)?.pod, first, "the flow sticks");
    }
    let remaining = endpoints
        .into_iter()
        .find(|p| *p != first)
        .ok_or_else(|| anyhow::anyhow!("{first} is not an endpoint"))?;
    spec.endpoints = vec![c.endpoint(remaining)?];
    c.apply(&spec)?;
    let e = c.explain_to(0, c.pod_ip("pod-0-0")?, "10.96.0.53:53/udp")?;
    assert_eq!(e.pods, names(&[remaining]), "{:#}", e.json);
    let mut answers = Vec::new();
    for _ in 0..10 {
        // A datagram may be lost while the old flow ends (IPVS drops the packet that finds
        // its real server gone); a timeout is not a verdict.
        if let Ok(reply) = ask(&c) {
            if reply.pod == remaining {
                return Ok(());
            }
            answers.push(reply.pod);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    anyhow::bail!("the flow stayed off {remaining} after {first} was removed: {answers:?}")
}

/// The DNAT-on-source assertion can fail: with kproxy stopped on node-0 and node-0
/// routing the service range to node-1 (DNAT moved off the source node), the probe sees
/// the ClusterIP leave node-0 and reports it.
fn dnat_off_source_is_detected(mode: &str) -> Result {
    let mut c = Cluster::start(mode, 3, 2, &[], &[])?;
    let spec = web(vec![c.endpoint("pod-1-0")?, c.endpoint("pod-2-0")?]);
    c.apply(&spec)?;
    let targets = ["pod-1-0", "pod-2-0"];
    let dst = SocketAddrV4::new(ip(10, 96, 0, 10), 80);
    assert!(c.dnat_on_source("pod-0-0", dst, ProbeProtocol::TcpSyn, &targets, 10)?);
    // Move DNAT off node-0: stop kproxy (rules stay on every node), remove node-0's
    // rules, and route the service range from node-0 to node-1, which still DNATs.
    c.rig.stop_kproxy();
    let node0 = c.rig.node_ns(0);
    let out = kproxy_netns_tests::kproxy::run(node0, &["--cleanup"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    node0.ip(&[
        "route",
        "add",
        "10.96.0.0/16",
        "via",
        &c.node_ip(1).to_string(),
        "dev",
        UPLINK,
    ])?;
    assert!(
        !c.dnat_on_source("pod-0-0", dst, ProbeProtocol::TcpSyn, &targets, 10)?,
        "a probe leaving node-0 with the ClusterIP must be reported"
    );
    // explain --live on node-0 sees that the kernel has none of the Service's objects.
    let from = IpAddr::V4(c.pod_ip("pod-0-0")?);
    let (status, json) = c.rig.explain_with(0, from, "10.96.0.10:80", &["--live"])?;
    assert_eq!(status, 3, "{json:#}");
    let objects = json["live"]["objects"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        !objects.is_empty()
            && objects
                .iter()
                .all(|o| o.as_str().is_some_and(|o| o.starts_with("MISSING"))),
        "everything is gone after --cleanup: {json:#}"
    );
    Ok(())
}

macro_rules! suite {
    ($mode:ident) => {
        mod $mode {
            const MODE: &str = stringify!($mode);
            #[test]
            fn cluster_ip() -> super::Result {
                super::cluster_ip(MODE)
            }
            #[test]
            fn node_port() -> super::Result {
                super::node_port(MODE)
            }
            #[test]
            fn external_ips() -> super::Result {
                super::external_ips(MODE)
            }
            #[test]
            fn load_balancer_source_ranges() -> super::Result {
                super::load_balancer_source_ranges(MODE)
            }
            #[test]
            fn external_traffic_policy_local() -> super::Result {
                super::external_traffic_policy_local(MODE)
            }
            #[test]
            fn internal_traffic_policy_local() -> super::Result {
                super::internal_traffic_policy_local(MODE)
            }
            #[test]
            fn detect_local_modes() -> super::Result {
                super::detect_local_modes(MODE)
            }
            #[test]
            fn session_affinity() -> super::Result {
                super::session_affinity(MODE)
            }
            #[test]
            fn no_endpoints_refused() -> super::Result {
                super::no_endpoints_refused(MODE)
            }
            #[test]
            fn hairpin() -> super::Result {
                super::hairpin(MODE)
            }
            #[test]
            fn terminating_fallback() -> super::Result {
                super::terminating_fallback(MODE)
            }
            #[test]
            fn endpoint_change_follows() -> super::Result {
                super::endpoint_change_follows(MODE)
            }
            #[test]
            fn udp() -> super::Result {
                super::udp(MODE)
            }
            #[test]
            fn udp_flow_leaves_removed_endpoint() -> super::Result {
                super::udp_flow_leaves_removed_endpoint(MODE)
            }
            #[test]
            fn dnat_off_source_is_detected() -> super::Result {
                super::dnat_off_source_is_detected(MODE)
            }
        }
    };
}

suite!(iptables);
suite!(nftables);
suite!(userspace);
// IPVS needs a kernel with IP_VS: these run inside the qemu guest of
// `scripts/run-ipvs-vm.sh`, which builds this target with `--features ipvs-guest`.
#[cfg(feature = "ipvs-guest")]
suite!(ipvs);

/// IPVS mode binds every VIP to the node (`kube-ipvs0`), so a VIP would expose every port
/// the node listens on, were it not for upstream's `KUBE-IPVS-FILTER`
/// (kubernetes/kubernetes#72236). kproxy's own health server listens on 0.0.0.0:10256 on
/// every node: through the node's address a pod reaches it; through a ClusterIP, a new
/// connection to it is rejected while the service port still works.
#[cfg(feature = "ipvs-guest")]
#[test]
fn ipvs_vip_does_not_expose_node_ports() -> Result {
    use std::io::ErrorKind;
    let mut c = Cluster::start("ipvs", 3, 2, &[], &[])?;
    c.apply(&web(vec![c.endpoint("pod-1-0")?]))?;
    let connect = |addr: SocketAddr| {
        c.pod_ns("pod-0-0")?.run_in(move || {
            Ok(std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map(|_| ()))
        })
    };
    let node_health = sock(c.node_ip(0), 10256);
    assert!(
        connect(node_health)?.is_ok(),
        "health server via the node IP"
    );
    let vip_health = sock(ip(10, 96, 0, 10), 10256);
    match connect(vip_health)? {
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
        other => panic!("{vip_health} must be rejected, got {other:?}"),
    }
    let hits = c.tcp_hits(c.pod_ns("pod-0-0")?, sock(ip(10, 96, 0, 10), 80), 3);
    assert_eq!(hits.failures, 0, "{hits:?}");
    Ok(())
}

#[test]
fn explain_live_catches_tampering_iptables() -> Result {
    explain_live_catches_tampering("iptables")
}

#[test]
fn explain_live_catches_tampering_nftables() -> Result {
    explain_live_catches_tampering("nftables")
}

#[test]
fn explain_live_catches_tampering_userspace() -> Result {
    explain_live_catches_tampering("userspace")
}

#[cfg(feature = "ipvs-guest")]
#[test]
fn explain_live_catches_tampering_ipvs() -> Result {
    explain_live_catches_tampering("ipvs")
}

/// A node switches between IPVS and nftables mode by restarting kproxy: each start removes
/// the other mode's objects once its own rules are live (upstream's start-up cleanup), and
/// the Service answers in every mode.
#[cfg(feature = "ipvs-guest")]
#[test]
fn ipvs_and_nftables_switch_by_restart() -> Result {
    let mut c = Cluster::start("nftables", 2, 1, &[], &[])?;
    c.apply(&web(vec![c.endpoint("pod-1-0")?]))?;
    let vip = sock(ip(10, 96, 0, 10), 80);
    let node = c.rig.nodes[0].ns.name().to_owned();
    let has = |args: &[&str], needle: &str| -> anyhow::Result<bool> {
        let mut all = vec!["netns", "exec", node.as_str()];
        all.extend_from_slice(args);
        let out = std::process::Command::new("ip").args(&all).output()?;
        Ok(String::from_utf8_lossy(&out.stdout).contains(needle))
    };
    let nft_tables = ["nft", "list", "tables"];
    let ipvs_device = ["ip", "link", "show"];
    for mode in ["ipvs", "nftables", "ipvs"] {
        c.rig.start_kproxy(&["--proxy-mode", mode])?;
        c.rig.wait_synced(&[0, 0])?;
        let hits = c.tcp_hits(c.pod_ns("pod-0-0")?, vip, 3);
        assert_eq!(hits.failures, 0, "{mode}: {hits:?}");
        // The other mode's leftovers go once this mode's rules are live.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let leftover = match mode {
                "ipvs" => has(&nft_tables, "table ip kproxy")?,
                _ => has(&ipvs_device, "kube-ipvs0")?,
            };
            if !leftover {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{mode}: the other mode's objects stay"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// A long-lived TCP connection through a ClusterIP survives a restart of kproxy on every
/// node: rules stay while kproxy is down and the restart's full sync does not disturb
/// conntrack. Kernel modes only: userspace mode's flows live in the process.
fn restart_keeps_established_connections(mode: &str) -> Result {
    use std::io::{BufRead, BufReader, Write};
    use std::sync::mpsc::channel;
    let mut c = Cluster::start(mode, 3, 2, &[], &[])?;
    let mut spec = ServiceSpec::new(
        "persist",
        ip(10, 96, 0, 90),
        vec![PortSpec::tcp("p", 90, 9090)],
    );
    spec.endpoints = vec![c.endpoint("pod-1-0")?];
    c.apply(&spec)?;
    // A server that echoes every line of one connection (bounded to 60 s).
    let backend = SocketAddr::new(IpAddr::V4(c.pod_ip("pod-1-0")?), 9090);
    let (ready_tx, ready_rx) = channel::<()>();
    let server = c.pod_ns("pod-1-0")?.spawn(move || {
        let listener = std::net::TcpListener::bind(backend)?;
        ready_tx.send(())?;
        let (conn, _) = listener.accept()?;
        conn.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut writer = conn.try_clone()?;
        for line in BufReader::new(conn).lines().take(10) {
            writer.write_all(format!("echo {}\n", line?).as_bytes())?;
        }
        Ok(())
    })?;
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .map_err(|_| anyhow::anyhow!("the echo server did not start listening"))?;
    let (go_tx, go_rx) = channel::<()>();
    let (step_tx, step_rx) = channel::<String>();
    let vip = sock(ip(10, 96, 0, 90), 90);
    let client = c.pod_ns("pod-0-0")?.spawn(move || {
        let conn = std::net::TcpStream::connect_timeout(&vip, Duration::from_secs(5))?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut writer = conn.try_clone()?;
        let mut reader = BufReader::new(conn);
        let mut exchange = |word: &str| -> anyhow::Result<String> {
            writer.write_all(format!("{word}\n").as_bytes())?;
            let mut line = String::new();
            reader.read_line(&mut line)?;
            Ok(line.trim().to_owned())
        };
        step_tx.send(exchange("before")?)?;
        go_rx.recv_timeout(Duration::from_secs(60))?;
        step_tx.send(exchange("after")?)?;
        Ok(())
    })?;
    assert_eq!(
        step_rx.recv_timeout(Duration::from_secs(10))?,
        "echo before"
    );
    c.rig.stop_kproxy();
    c.rig.start_kproxy(&["--proxy-mode", mode])?;
    c.rig.wait_synced(&[0, 0, 0])?;
    go_tx.send(())?;
    assert_eq!(
        step_rx.recv_timeout(Duration::from_secs(15))?,
        "echo after",
        "the established connection survived the restart"
    );
    client
        .join()
        .map_err(|_| anyhow::anyhow!("client panicked"))??;
    drop(server);
    Ok(())
}

#[test]
fn restart_keeps_established_connections_iptables() -> Result {
    restart_keeps_established_connections("iptables")
}

#[test]
fn restart_keeps_established_connections_nftables() -> Result {
    restart_keeps_established_connections("nftables")
}

/// A burst of endpoint changes is debounced into a few syncs (min-sync-period), and the
/// last change is what ends up programmed.
#[test]
fn a_burst_of_changes_gives_a_few_syncs() -> Result {
    let mut c = Cluster::start("iptables", 3, 2, &[], &[])?;
    let pods = ["pod-1-0", "pod-1-1", "pod-2-0", "pod-2-1"];
    let mut spec = web(vec![c.endpoint(pods[0])?]);
    c.apply(&spec)?;
    let before = c.rig.sync_counts();
    let changes = 1000;
    let started = Instant::now();
    for i in 0..changes {
        spec.endpoints = vec![c.endpoint(pods[i % pods.len()])?, c.endpoint("pod-0-1")?];
        c.rig.write_manifest("svc-web.json", &spec.to_manifest())?;
    }
    let burst = started.elapsed();
    let last = pods[(changes - 1) % pods.len()];
    // Wait until traffic reaches the last change's endpoints only.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let hits = c.tcp_hits(c.pod_ns("pod-0-0")?, sock(ip(10, 96, 0, 10), 80), 8);
        if backends_hit(&hits).is_subset(&names(&[last, "pod-0-1"])) && hits.failures == 0 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the last change was not programmed: {hits:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let syncs: Vec<usize> = c
        .rig
        .sync_counts()
        .iter()
        .zip(&before)
        .map(|(a, b)| a - b)
        .collect();
    eprintln!("{changes} changes written in {burst:?} gave {syncs:?} syncs per node");
    assert!(
        syncs.iter().all(|n| (1..60).contains(n)),
        "debounced: {syncs:?}"
    );
    Ok(())
}

/// An external flush of kproxy's rules (iptables `-F`/`-X` of nat, deleting the nft
/// table, `ipvsadm -C`) is noticed by the canary and repaired within seconds, well before
/// the 30 s periodic full sync. The service is probed through node-0 twice: its ClusterIP
/// from a pod, and its NodePort from outside (with the endpoint on node-1, it needs
/// masquerading); the flush must break at least one of them.
fn flush_is_repaired(mode: &str, flush: &[&[&str]]) -> Result {
    let mut c = Cluster::start(mode, 3, 2, &[], &[])?;
    let mut spec = web(vec![c.endpoint("pod-1-0")?]);
    spec.service_type = ServiceType::NodePort;
    spec.ports = vec![PortSpec::tcp("http", 80, BACKEND_PORT).node_port(30080)];
    c.apply(&spec)?;
    let vip = sock(ip(10, 96, 0, 10), 80);
    let node_port = sock(c.node_ip(0), 30080);
    let failures = |c: &Cluster| -> anyhow::Result<usize> {
        Ok(c.tcp_hits(c.pod_ns("pod-0-0")?, vip, 1).failures
            + c.tcp_hits(&c.rig.external, node_port, 1).failures)
    };
    assert_eq!(failures(&c)?, 0);
    for command in flush {
        c.rig.node_ns(0).exec(command[0], &command[1..])?;
    }
    let flushed = Instant::now();
    assert!(failures(&c)? > 0, "the flush broke the service on node-0");
    loop {
        if failures(&c)? == 0 {
            break;
        }
        anyhow::ensure!(
            flushed.elapsed() < Duration::from_secs(15),
            "not repaired within 15 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("{mode}: repaired {:?} after the flush", flushed.elapsed());
    Ok(())
}

#[test]
fn iptables_flush_is_repaired() -> Result {
    flush_is_repaired(
        "iptables",
        &[
            &["iptables", "-t", "nat", "-F"],
            &["iptables", "-t", "nat", "-X"],
        ],
    )
}

#[test]
fn nftables_table_deletion_is_repaired() -> Result {
    flush_is_repaired("nftables", &[&["nft", "delete", "table", "ip", "kproxy"]])
}

#[cfg(feature = "ipvs-guest")]
#[test]
fn ipvs_clear_is_repaired() -> Result {
    flush_is_repaired("ipvs", &[&["ipvsadm", "-C"]])
}

#[cfg(feature = "ipvs-guest")]
#[test]
fn ipvs_nat_flush_is_repaired() -> Result {
    flush_is_repaired(
        "ipvs",
        &[
            &["iptables", "-t", "nat", "-F"],
            &["iptables", "-t", "nat", "-X"],
        ],
    )
}
