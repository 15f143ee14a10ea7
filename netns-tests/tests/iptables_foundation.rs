//! End-to-end checks of iptables mode with real packets in network namespaces (root only):
//! `kproxy --once` makes ClusterIPs and NodePorts work, foreign rules survive every kind of
//! sync and `--cleanup`, and a bad field is named and left out without hurting the rest.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use kproxy_netns_tests::echo::{ask, ask_here, ask_many};
use kproxy_netns_tests::http::http_get;
use kproxy_netns_tests::kproxy::{KproxyProcess, run, run_ok};
use kproxy_netns_tests::netns::Netns;
use kproxy_netns_tests::node::*;

const WEB_CLUSTER_IP: &str = "10.96.0.10";
const WEB_NODE_PORT: u16 = 30080;
/// A Service without endpoints.
const EMPTY_CLUSTER_IP: &str = "10.96.0.11";

fn cluster_ip() -> SocketAddr {
    SocketAddr::new(WEB_CLUSTER_IP.parse().expect("ip"), 80)
}

fn node_port() -> SocketAddr {
    SocketAddr::new(NODE_IP.parse().expect("ip"), WEB_NODE_PORT)
}

/// A cluster with two backends and the `web` NodePort Service pointing at both.
fn web_cluster() -> anyhow::Result<OneNodeCluster> {
    let cluster = OneNodeCluster::new(2)?;
    let ips: Vec<_> = cluster.pods.iter().map(|p| p.ip).collect();
    cluster.write_manifest("node.yaml", &node_yaml())?;
    cluster.write_manifest(
        "web.yaml",
        &service_yaml("web", WEB_CLUSTER_IP, 80, Some(WEB_NODE_PORT)),
    )?;
    cluster.write_manifest("web-slice.yaml", &slice_yaml("web", &ips))?;
    let empty = service_yaml("empty", EMPTY_CLUSTER_IP, 80, None);
    cluster.write_manifest("empty.yaml", &empty)?;
    Ok(cluster)
}

fn args(cluster: &OneNodeCluster, extra: &[&str]) -> Vec<String> {
    let mut args = cluster.kproxy_args(&cluster.manifests());
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

fn once_reaches_backends(backend: &str) -> anyhow::Result<()> {
    let cluster = web_cluster()?;
    let a = args(&cluster, &["--once", "--iptables-backend", backend]);
    run_ok(&cluster.node, &strs(&a))?;

    // Pod → ClusterIP: DNATed on the node to a backend; the pod's own address is kept.
    let replies = ask_many(&cluster.client, cluster_ip(), 20)?;
    let pods: BTreeSet<_> = replies.iter().map(|r| r.pod.as_str()).collect();
    assert_eq!(
        pods,
        BTreeSet::from(["pod-0", "pod-1"]),
        "both endpoints get traffic"
    );
    assert!(
        replies.iter().all(|r| r.peer == "10.244.1.100"),
        "pod source kept: {replies:?}"
    );

    // External client → NodePort: eTP Cluster masquerades to the node's address.
    let reply = ask(&cluster.external, node_port())?;
    assert!(reply.pod.starts_with("pod-"), "{reply:?}");
    assert_eq!(
        reply.peer, "10.244.1.1",
        "NodePort traffic is masqueraded: {reply:?}"
    );

    // The node itself → 127.0.0.1:NodePort (localhost NodePorts need route_localnet).
    let localhost = SocketAddr::new("127.0.0.1".parse()?, WEB_NODE_PORT);
    let reply = cluster.node.run_in(move || ask_here(localhost))?;
    assert!(
        reply.pod.starts_with("pod-"),
        "localhost NodePort: {reply:?}"
    );

    // A Service without endpoints is refused at once (REJECT), not left to time out.
    let started = std::time::Instant::now();
    let err = ask(
        &cluster.client,
        SocketAddr::new(EMPTY_CLUSTER_IP.parse()?, 80),
    )
    .expect_err("no endpoints: must fail");
    let refused = err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
    });
    assert!(refused, "expected connection refused, got {err:#}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "REJECT answers at once"
    );
    Ok(())
}

#[test]
fn once_reaches_backends_via_cluster_ip_and_nodeport_nft() -> anyhow::Result<()> {
    once_reaches_backends("nft")
}

#[test]
fn once_reaches_backends_via_cluster_ip_and_nodeport_legacy() -> anyhow::Result<()> {
    once_reaches_backends("legacy")
}

/// Rules that other software put into nat and filter before kproxy ran.
const FOREIGN_RULES: &str = "\
*nat
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A DOCKER -p tcp -m tcp --dport 8443 -j DNAT --to-destination 172.17.0.2:443
COMMIT
*filter
:FORWARD DROP [0:0]
:DOCKER-USER - [0:0]
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
-A FORWARD -j DOCKER-USER
-A FORWARD -s 10.244.0.0/16 -m comment --comment \"cni: pod traffic\" -j ACCEPT
-A DOCKER-USER -j RETURN
COMMIT
";

/// `iptables-save` of nat and filter without kproxy's chains and rules, counters and
/// save comments: what must stay byte-identical.
fn foreign_rules(node: &Netns, backend: &str) -> anyhow::Result<String> {
    // The foreign rules live in nat and filter; kproxy's only other object is its
    // KUBE-PROXY-CANARY chain in mangle (checked by `kube_lines`).
    let mut save = String::new();
    for table in ["filter", "nat"] {
        save.push_str(&node.exec(&format!("iptables-{backend}-save"), &["-t", table])?);
    }
    Ok(save
        .lines()
        .filter(|l| !l.starts_with('#') && !l.contains("KUBE-"))
        .map(|l| match l.rfind(" [") {
            Some(i) if l.starts_with(':') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n"))
}

fn kube_lines(node: &Netns, backend: &str) -> anyhow::Result<Vec<String>> {
    let save = node.exec(&format!("iptables-{backend}-save"), &[])?;
    Ok(save
        .lines()
        .filter(|l| l.contains("KUBE-"))
        .map(str::to_owned)
        .collect())
}

fn foreign_rules_survive(backend: &str) -> anyhow::Result<()> {
    let mut cluster = web_cluster()?;
    let restore = format!("iptables-{backend}-restore");
    let input = std::env::temp_dir().join(format!("{}-foreign", cluster.node.name()));
    std::fs::write(&input, FOREIGN_RULES)?;
    let loaded = cluster
        .node
        .exec(&restore, &["--noflush", &input.display().to_string()]);
    std::fs::remove_file(&input).ok();
    loaded?;
    let before = foreign_rules(&cluster.node, backend)?;
    assert!(
        before.contains("DOCKER-USER") && before.contains(":FORWARD DROP"),
        "{before}"
    );

    // Full sync by a long-running kproxy.
    let a = args(
        &cluster,
        &[
            "--iptables-backend",
            backend,
            "--iptables-min-sync-period",
            "100ms",
            "--iptables-sync-period",
            "1h",
        ],
    );
    let log = cluster.dir.join("kproxy.log");
    let proxy = KproxyProcess::start(&cluster.node, &strs(&a), log)?;
    proxy.wait_for_log("synced rules", 1, Duration::from_secs(20))?;
    assert_eq!(
        foreign_rules(&cluster.node, backend)?,
        before,
        "after the full sync"
    );
    // FORWARD policy is DROP: NodePort traffic passes thanks to KUBE-FORWARD.
    assert!(ask(&cluster.external, node_port())?.pod.starts_with("pod-"));

    // Partial sync: pod-0 leaves the Service.
    let only_pod1 = [cluster.pods[1].ip];
    cluster.write_manifest("web-slice.yaml", &slice_yaml("web", &only_pod1))?;
    proxy.wait_for_log("synced rules", 2, Duration::from_secs(20))?;
    let log = proxy.log();
    let second = log
        .lines()
        .filter(|l| l.contains("synced rules"))
        .nth(1)
        .unwrap_or_default();
    assert!(
        second.contains("full=false"),
        "second sync must be partial: {second}"
    );
    assert_eq!(
        foreign_rules(&cluster.node, backend)?,
        before,
        "after the partial sync"
    );
    let replies = ask_many(&cluster.client, cluster_ip(), 10)?;
    assert!(
        replies.iter().all(|r| r.pod == "pod-1"),
        "traffic follows the change: {replies:?}"
    );
    drop(proxy);

    // Rules stay after kproxy exits; --cleanup removes them and nothing else.
    assert!(
        !kube_lines(&cluster.node, backend)?.is_empty(),
        "rules stay when kproxy exits"
    );
    run_ok(&cluster.node, &["--cleanup", "--iptables-backend", backend])?;
    assert_eq!(
        foreign_rules(&cluster.node, backend)?,
        before,
        "after --cleanup"
    );
    assert_eq!(
        kube_lines(&cluster.node, backend)?,
        Vec::<String>::new(),
        "no KUBE- chain or rule remains"
    );
    cluster.stop_servers();
    Ok(())
}

#[test]
fn foreign_rules_survive_sync_partial_sync_and_cleanup_nft() -> anyhow::Result<()> {
    foreign_rules_survive("nft")
}

#[test]
fn foreign_rules_survive_sync_partial_sync_and_cleanup_legacy() -> anyhow::Result<()> {
    foreign_rules_survive("legacy")
}

/// Upstream's two nfacct-based metrics: the kernel's counters, created at start, count
/// NodePort packets to 127.0.0.1 and are read on every scrape of /metrics.
#[test]
fn nfacct_counters_count_localhost_nodeport_packets() -> anyhow::Result<()> {
    let cluster = web_cluster()?;
    let a = args(&cluster, &["--iptables-backend", "nft"]);
    let proxy = KproxyProcess::start(&cluster.node, &strs(&a), cluster.dir.join("kproxy.log"))?;
    proxy.wait_for_log("synced rules", 1, Duration::from_secs(20))?;
    let metric = |name: &str| -> anyhow::Result<Option<f64>> {
        let metrics = "127.0.0.1:10249".parse()?;
        let (_, text) = http_get(&cluster.node, metrics, "/metrics")?;
        let sample = format!("{name} ");
        Ok(text
            .lines()
            .find_map(|l| l.strip_prefix(&sample))
            .and_then(|v| v.trim().parse().ok()))
    };
    const LOCALHOST: &str = "kubeproxy_iptables_localhost_nodeports_accepted_packets_total";
    const INVALID: &str = "kubeproxy_iptables_ct_state_invalid_dropped_packets_total";
    assert_eq!(metric(LOCALHOST)?, Some(0.0));
    assert_eq!(metric(INVALID)?, Some(0.0));
    let localhost = SocketAddr::new("127.0.0.1".parse()?, WEB_NODE_PORT);
    for _ in 0..3 {
        let reply = cluster.node.run_in(move || ask_here(localhost))?;
        assert!(reply.pod.starts_with("pod-"), "{reply:?}");
    }
    let counted = metric(LOCALHOST)?.unwrap_or_default();
    assert!(
        counted >= 3.0,
        "three connections, one new packet each: {counted}"
    );
    Ok(())
}

/// A NodePort outside the API server's default range, as a cluster with a wider
/// `--service-node-port-range` admits it.
const LOW_NODE_PORT: u16 = 3001;

#[test]
fn bad_objects_are_named_and_the_others_still_work() -> anyhow::Result<()> {
    let cluster = web_cluster()?;
    let ips: Vec<_> = cluster.pods.iter().map(|p| p.ip).collect();
    let bad = format!(
        "{}---\nthis: is: not: yaml: [\n---\n{}---\n{}",
        service_yaml("broken", "10.96.0.66", 0, None),
        service_yaml("low", "10.96.0.77", 80, Some(LOW_NODE_PORT)),
        slice_yaml("low", &ips),
    );
    cluster.write_manifest("bad.yaml", &bad)?;
    let a = args(&cluster, &["--once"]);
    let out = run(&cluster.node, &strs(&a))?;
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "a bad object must not fail the sync:\n{log}"
    );
    assert!(
        log.contains("default/broken") && log.contains("spec.ports[0].port: 0 is not in 1-65535"),
        "names the bad Service and field:\n{log}"
    );
    assert!(
        !log.contains("default/low"),
        "a NodePort outside 30000-32767 is no problem:\n{log}"
    );
    assert!(
        log.contains("bad.yaml document 2"),
        "names the broken document:\n{log}"
    );

    let reply = ask(&cluster.client, cluster_ip())?;
    assert!(
        reply.pod.starts_with("pod-"),
        "the good Service works: {reply:?}"
    );
    let low = SocketAddr::new(NODE_IP.parse()?, LOW_NODE_PORT);
    let reply = ask(&cluster.external, low)?;
    assert!(
        reply.pod.starts_with("pod-"),
        "NodePort {LOW_NODE_PORT} is programmed: {reply:?}"
    );
    let save = cluster.node.exec("iptables-save", &[])?;
    assert!(
        !save.contains("10.96.0.66"),
        "a Service without a usable port has no rules"
    );
    Ok(())
}

#[test]
fn dual_stack_service_is_programmed_in_both_families() -> anyhow::Result<()> {
    let cluster = OneNodeCluster::new(2)?;
    let node = format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {NODE_NAME}\nstatus:\n  addresses:\n    - type: InternalIP\n      address: {NODE_IP}\n    - type: InternalIP\n      address: {NODE_IP6}\n"
    );
    let service = "apiVersion: v1\nkind: Service\nmetadata:\n  name: dual\n  namespace: default\nspec:\n  type: NodePort\n  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv4, IPv6]\n  clusterIP: 10.96.0.30\n  clusterIPs: [10.96.0.30, \"fd00:96::30\"]\n  ports:\n    - name: http\n      port: 80\n      targetPort: 8080\n      nodePort: 30090\n";
    let v4: Vec<_> = cluster.pods.iter().map(|p| p.ip).collect();
    let v6: Vec<_> = cluster.pods.iter().map(|p| p.ip6).collect();
    cluster.write_manifest("node.yaml", &node)?;
    cluster.write_manifest("dual.yaml", service)?;
    cluster.write_manifest("dual-v4.yaml", &family_slice_yaml("dual", "IPv4", &v4))?;
    cluster.write_manifest("dual-v6.yaml", &family_slice_yaml("dual", "IPv6", &v6))?;
    run_ok(&cluster.node, &strs(&args(&cluster, &["--once"])))?;

    // Pod → IPv6 ClusterIP keeps the pod's IPv6 source; IPv4 still works beside it.
    let reply = ask(&cluster.client, "[fd00:96::30]:80".parse()?)?;
    assert!(reply.pod.starts_with("pod-"), "{reply:?}");
    assert_eq!(
        reply.peer, "fd00:244:1::100",
        "pod source kept over IPv6: {reply:?}"
    );
    assert!(
        ask(&cluster.client, "10.96.0.30:80".parse()?)?
            .pod
            .starts_with("pod-")
    );
    // External → IPv6 NodePort, masqueraded to the node's bridge address.
    let reply = ask(&cluster.external, format!("[{NODE_IP6}]:30090").parse()?)?;
    assert_eq!(reply.peer, "fd00:244:1::1", "{reply:?}");
    let v6_rules = cluster.node.exec("ip6tables-save", &["-t", "nat"])?;
    assert!(
        v6_rules.contains("fd00:96::30"),
        "ip6tables has the IPv6 ClusterIP:\n{v6_rules}"
    );
    let v4_rules = cluster.node.exec("iptables-save", &["-t", "nat"])?;
    assert!(
        !v4_rules.contains("fd00:"),
        "no IPv6 address in the IPv4 ruleset"
    );
    Ok(())
}
