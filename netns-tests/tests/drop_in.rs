//! kproxy as a drop-in for kube-proxy, with real packets (root only): started with the
//! arguments of kubeadm's DaemonSet and the ConfigMap kubeadm generates, it dials the API
//! server named in the kubeconfig, posts the `Starting` Event about its Node, serves
//! upstream's default ports, sets the conntrack sysctls of the node's network namespace,
//! programs what the API server holds, and exits when its config file changes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kproxy::source::kube::test_server::Collection;
use kproxy_netns_tests::api::NodeApiServer;
use kproxy_netns_tests::echo::{EchoServer, Outcome, ask, try_ask};
use kproxy_netns_tests::http::http_get;
use kproxy_netns_tests::kproxy::{KproxyProcess, run};
use kproxy_netns_tests::netns::Netns;
use kproxy_netns_tests::node::*;

const WEB_CLUSTER_IP: &str = "10.96.0.10";

/// The fixtures kubeadm generates (`kubectl -n kube-system get cm kube-proxy`).
fn fixture(name: &str) -> anyhow::Result<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../controller/src/config/testdata")
        .join(name);
    Ok(std::fs::read_to_string(path)?)
}

/// kubeadm's ConfigMap as mounted at /var/lib/kube-proxy, with the API server's address
/// and the service account token of this rig; `edit` changes config.conf further.
fn kubeadm_configmap(
    dir: &Path,
    api: &NodeApiServer,
    edit: impl Fn(String) -> String,
) -> anyhow::Result<PathBuf> {
    let token = dir.join("token");
    std::fs::write(&token, "service-account-token")?;
    // The in-suite server speaks plain HTTP: no certificate authority.
    let kubeconfig: Vec<String> = fixture("kubeadm-kubeconfig.conf")?
        .lines()
        .filter(|l| !l.contains("certificate-authority"))
        .map(|l| {
            l.replace("https://10.128.0.16:6443", &api.url).replace(
                "/var/run/secrets/kubernetes.io/serviceaccount/token",
                &token.display().to_string(),
            )
        })
        .collect();
    let kubeconfig_path = dir.join("kubeconfig.conf");
    std::fs::write(&kubeconfig_path, kubeconfig.join("\n"))?;
    let config = fixture("kubeadm-config.conf")?
        .replace(
            "kubeconfig: /var/lib/kube-proxy/kubeconfig.conf",
            &format!("kubeconfig: {}", kubeconfig_path.display()),
        )
        .replace(
            "clusterCIDR: 10.244.0.0/16",
            &format!("clusterCIDR: {CLUSTER_CIDR}"),
        );
    let path = dir.join("config.conf");
    std::fs::write(&path, edit(config))?;
    Ok(path)
}

/// The node, the web Service and its slice in the API server.
fn cluster_objects(api: &NodeApiServer, cluster: &OneNodeCluster) -> anyhow::Result<()> {
    let ips: Vec<_> = cluster.pods.iter().map(|p| p.ip).collect();
    api.apply_yaml(Collection::Nodes, &node_yaml())?;
    api.apply_yaml(
        Collection::Services,
        &service_yaml("web", WEB_CLUSTER_IP, 80, None),
    )?;
    api.apply_yaml(Collection::EndpointSlices, &slice_yaml("web", &ips))?;
    Ok(())
}

/// kubeadm's DaemonSet command line.
fn kubeadm_args(config: &Path) -> Vec<String> {
    vec![
        format!("--config={}", config.display()),
        format!("--hostname-override={NODE_NAME}"),
    ]
}

/// Retries `get` until it answers 200 (bounded).
fn wait_ok(
    ns: &Netns,
    addr: SocketAddr,
    path: &str,
    kproxy: &KproxyProcess,
) -> anyhow::Result<String> {
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        if let Ok((200, body)) = http_get(ns, addr, path) {
            return Ok(body);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    anyhow::bail!("{path} on {addr} never answered 200:\n{}", kproxy.log())
}

fn sysctl(ns: &Netns, name: &str) -> anyhow::Result<String> {
    let path = format!("/proc/sys/net/netfilter/{name}");
    Ok(ns.exec("cat", &[&path])?.trim().to_owned())
}

#[test]
fn kubeadms_daemonset_args_and_configmap_run_kproxy() -> anyhow::Result<()> {
    let cluster = OneNodeCluster::new(2)?;
    let api = NodeApiServer::start(&cluster.node)?;
    cluster_objects(&api, &cluster)?;
    let host_established =
        std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established")?;

    // As generated, the config asks for nf_conntrack_max, which a node namespace cannot
    // set (it belongs to the host): kproxy says so and how to leave it alone.
    let config = kubeadm_configmap(&cluster.dir, &api, |c| c)?;
    let mut once = kubeadm_args(&config);
    once.push("--once".into());
    let once: Vec<&str> = once.iter().map(String::as_str).collect();
    let out = run(&cluster.node, &once)?;
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "nf_conntrack_max is read-only here:\n{log}"
    );
    assert!(
        log.contains("nf_conntrack_max") && log.contains("conntrack.maxPerCore: 0"),
        "names the sysctl and the way out:\n{log}"
    );

    // With `maxPerCore: 0` (as kind writes it) everything else is kubeadm's.
    let config = kubeadm_configmap(&cluster.dir, &api, |c| {
        c.replace("maxPerCore: null", "maxPerCore: 0")
    })?;
    let args = kubeadm_args(&config);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut kproxy = KproxyProcess::start(&cluster.node, &args, cluster.dir.join("kproxy.log"))?;
    let metrics: SocketAddr = "127.0.0.1:10249".parse()?;
    let healthz: SocketAddr = format!("{NODE_IP}:10256").parse()?;
    assert_eq!(
        wait_ok(&cluster.node, metrics, "/proxyMode", &kproxy)?,
        "iptables"
    );
    wait_ok(&cluster.node, healthz, "/healthz", &kproxy)?;
    // The Starting event about the Node, as kube-proxy posts it.
    let start = std::time::Instant::now();
    let starting = loop {
        let found = api
            .server
            .events()
            .into_iter()
            .find(|e| e["reason"] == "Starting");
        match found {
            Some(event) => break event,
            None if start.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(50))
            }
            None => anyhow::bail!("no Starting event:\n{}", kproxy.log()),
        }
    };
    assert_eq!(starting["action"], "StartKubeProxy");
    assert_eq!(starting["type"], "Normal");
    assert_eq!(starting["regarding"]["kind"], "Node");
    assert_eq!(starting["regarding"]["name"], NODE_NAME);
    assert_eq!(starting["reportingController"], "kube-proxy");
    let configz: serde_json::Value =
        serde_json::from_str(&wait_ok(&cluster.node, metrics, "/configz", &kproxy)?)?;
    let effective = &configz["kubeproxy.config.k8s.io"];
    assert_eq!(effective["HealthzBindAddress"], "0.0.0.0:10256");
    assert_eq!(effective["MetricsBindAddress"], "127.0.0.1:10249");
    assert_eq!(
        effective["Linux"]["Conntrack"]["TCPEstablishedTimeout"],
        "24h0m0s"
    );

    // The Service from the API server works, and the node namespace's own conntrack
    // timeout is upstream's default while the host's is untouched.
    let web = SocketAddr::new(WEB_CLUSTER_IP.parse()?, 80);
    let start = std::time::Instant::now();
    let reply = loop {
        match ask(&cluster.client, web) {
            Ok(reply) => break reply,
            Err(_) if start.elapsed() < Duration::from_secs(15) => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => anyhow::bail!("{e:#}\n{}", kproxy.log()),
        }
    };
    assert!(reply.pod.starts_with("pod-"), "{reply:?}");
    assert_eq!(
        sysctl(&cluster.node, "nf_conntrack_tcp_timeout_established")?,
        "86400"
    );
    assert_eq!(
        sysctl(&cluster.node, "nf_conntrack_tcp_timeout_close_wait")?,
        "3600"
    );
    let host_now =
        std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established")?;
    assert_eq!(host_now, host_established, "the host's value is its own");

    // A ConfigMap update ends the run, to be restarted with it (as kube-proxy).
    let updated =
        std::fs::read_to_string(&config)?.replace("oomScoreAdj: null", "oomScoreAdj: -998");
    std::fs::write(&config, updated)?;
    let status = kproxy.wait_exit(Duration::from_secs(10))?;
    assert!(!status.success());
    let log = kproxy.log();
    assert!(log.contains("was updated"), "says why it exits:\n{log}");
    Ok(())
}

#[test]
fn write_config_to_prints_the_effective_configuration() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("kproxy-write-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("config.conf");
    std::fs::write(&config, fixture("kubeadm-config.conf")?)?;
    let written = dir.join("written.yaml");
    let bin = kproxy_netns_tests::kproxy::kproxy_bin()?;
    let out = std::process::Command::new(bin)
        .arg(format!("--config={}", config.display()))
        .arg(format!("--write-config-to={}", written.display()))
        .output()?;
    let text = std::fs::read_to_string(&written).unwrap_or_default();
    std::fs::remove_dir_all(&dir).ok();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "healthzBindAddress: 0.0.0.0:10256",
        "metricsBindAddress: 127.0.0.1:10249",
        "mode: iptables",
        "detectLocalMode: ClusterCIDR",
        "maxPerCore: 32768",
    ] {
        assert!(text.contains(line), "{line:?} in:\n{text}");
    }
    Ok(())
}

/// A ServiceCIDR with an address no Service has, where something outside the node
/// answers: reachable without the ServiceCIDR, dropped with it (nftables mode, as
/// upstream), reachable again once it is gone; a port no Service has on a live cluster
/// IP is rejected.
#[test]
fn service_cidrs_drop_unallocated_addresses_in_nftables_mode() -> anyhow::Result<()> {
    let cluster = OneNodeCluster::new(2)?;
    let ips: Vec<_> = cluster.pods.iter().map(|p| p.ip).collect();
    cluster.write_manifest("node.yaml", &node_yaml())?;
    cluster.write_manifest("web.yaml", &service_yaml("web", WEB_CLUSTER_IP, 80, None))?;
    cluster.write_manifest("web-slice.yaml", &slice_yaml("web", &ips))?;
    // 10.96.0.99 answers outside the node (routed there by the node's default route).
    let unallocated: SocketAddr = "10.96.0.99:8080".parse()?;
    cluster
        .external
        .ip(&["addr", "add", "10.96.0.99/32", "dev", "eth0"])?;
    cluster
        .external
        .ip(&["route", "add", "10.244.0.0/16", "via", NODE_IP])?;
    let _outside = EchoServer::start(&cluster.external, unallocated, "outside")?;
    let mut args = cluster.kproxy_args(&cluster.manifests());
    args.extend(["--proxy-mode".to_owned(), "nftables".to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let kproxy = KproxyProcess::start(&cluster.node, &args, cluster.dir.join("kproxy.log"))?;
    let ask_within = |addr: SocketAddr, want: fn(&Outcome) -> bool, what: &str| {
        let start = std::time::Instant::now();
        loop {
            let outcome = try_ask(&cluster.client, None, addr, Duration::from_millis(500));
            if want(&outcome) {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(15) {
                let ruleset = cluster
                    .node
                    .exec("nft", &["list", "ruleset"])
                    .unwrap_or_default();
                anyhow::bail!("{what}: last {outcome:?}\n{}\n{ruleset}", kproxy.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let replied = |o: &Outcome| matches!(o, Outcome::Replied(_));
    let web = SocketAddr::new(WEB_CLUSTER_IP.parse()?, 80);
    ask_within(web, replied, "the web Service")?;
    ask_within(
        unallocated,
        replied,
        "without a ServiceCIDR the address is not kproxy's",
    )?;
    let wrong_port = SocketAddr::new(WEB_CLUSTER_IP.parse()?, 81);
    ask_within(
        wrong_port,
        |o| matches!(o, Outcome::Refused),
        "a port no Service has on a cluster IP is rejected",
    )?;

    let service_cidr = "apiVersion: networking.k8s.io/v1\nkind: ServiceCIDR\nmetadata:\n  name: kubernetes\nspec:\n  cidrs: [10.96.0.0/16]\n";
    cluster.write_manifest("service-cidr.yaml", service_cidr)?;
    ask_within(
        unallocated,
        |o| matches!(o, Outcome::TimedOut),
        "an unallocated address of the ServiceCIDR is dropped",
    )?;
    ask_within(web, replied, "the web Service still works")?;
    std::fs::remove_file(cluster.manifests().join("service-cidr.yaml"))?;
    ask_within(unallocated, replied, "without the ServiceCIDR again")?;
    Ok(())
}

/// `--init-only` does the privileged set-up (the conntrack sysctls of the node's
/// namespace) and exits, programming nothing.
#[test]
fn init_only_sets_the_conntrack_sysctls_and_exits() -> anyhow::Result<()> {
    let cluster = OneNodeCluster::new(1)?;
    let out = run(
        &cluster.node,
        &[
            "--init-only",
            "--conntrack-max-per-core=0",
            "--conntrack-tcp-timeout-established=2h",
            "--conntrack-tcp-be-liberal",
        ],
    )?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        sysctl(&cluster.node, "nf_conntrack_tcp_timeout_established")?,
        "7200"
    );
    assert_eq!(sysctl(&cluster.node, "nf_conntrack_tcp_be_liberal")?, "1");
    let save = cluster.node.exec("iptables-nft-save", &[])?;
    assert!(!save.contains("KUBE-"), "nothing programmed:\n{save}");
    Ok(())
}
