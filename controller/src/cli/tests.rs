//! Tests of the flags and their merge with `--config`, against upstream's behaviour and
//! real configurations (kubeadm's generated ConfigMap, kind's, k3s's flags).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use ipnet::IpNet;

use super::*;
use crate::config::NodePortAddresses;

fn args(extra: &[&str]) -> ProxyArgs {
    let mut argv = vec!["kproxy"];
    argv.extend_from_slice(extra);
    Cli::try_parse_from(argv).expect("valid flags").proxy
}

fn settings(extra: &[&str]) -> Settings {
    args(extra).settings().expect("settings")
}

fn testdata(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/config/testdata")
        .join(name)
        .display()
        .to_string()
}

fn net(s: &str) -> IpNet {
    s.parse().expect("cidr literal")
}

fn addr(s: &str) -> Option<SocketAddr> {
    Some(s.parse().expect("address literal"))
}

/// A config file with `body` under apiVersion/kind, removed on drop.
struct ConfigFile(PathBuf);

impl ConfigFile {
    fn new(name: &str, body: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("kproxy-cli-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("config.conf");
        let text = format!(
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n{body}"
        );
        std::fs::write(&file, text).expect("write config");
        ConfigFile(file)
    }

    fn path(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[test]
fn defaults_match_kube_proxy() {
    let s = settings(&[]);
    assert_eq!(s.mode, ProxyMode::Iptables);
    assert_eq!(s.sync_period, Duration::from_secs(30));
    assert_eq!(s.min_sync_period, Duration::from_secs(1));
    assert_eq!(s.masquerade_mark, 0x4000);
    assert!(s.localhost_nodeports);
    assert!(!s.masquerade_all);
    assert_eq!(s.nodeport_addresses, NodePortAddresses::default());
    assert_eq!(s.healthz_bind_address, addr("0.0.0.0:10256"));
    assert_eq!(s.metrics_bind_address, addr("127.0.0.1:10249"));
    assert_eq!(s.oom_score_adj, Some(-999));
    assert_eq!((s.api_qps, s.api_burst), (5.0, 10));
    let conntrack = &s.conntrack;
    assert_eq!((conntrack.max_per_core, conntrack.min), (32768, 131072));
    assert_eq!(
        conntrack.tcp_established_timeout,
        Duration::from_secs(86400)
    );
    assert_eq!(conntrack.tcp_close_wait_timeout, Duration::from_secs(3600));
    assert_eq!(s.detect_local, DetectLocal::ClusterCidr(vec![]));
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
}

/// kubeadm's DaemonSet runs `kube-proxy --config=/var/lib/kube-proxy/config.conf
/// --hostname-override=$(NODE_NAME)` with the ConfigMap kubeadm generates, whose fields
/// are mostly zero values: upstream's defaulting makes them its defaults.
#[test]
fn kubeadms_generated_config_gets_upstreams_defaults() {
    let config = testdata("kubeadm-config.conf");
    let s = settings(&["--config", &config, "--hostname-override", " Node-A "]);
    assert_eq!(s.mode, ProxyMode::Iptables);
    assert_eq!(s.hostname_override.as_deref(), Some("node-a"));
    assert_eq!(
        s.kubeconfig,
        Some(PathBuf::from("/var/lib/kube-proxy/kubeconfig.conf"))
    );
    assert_eq!(s.healthz_bind_address, addr("0.0.0.0:10256"));
    assert_eq!(s.metrics_bind_address, addr("127.0.0.1:10249"));
    assert_eq!(s.cluster_cidrs, [net("10.244.0.0/16")]);
    assert_eq!(
        s.detect_local,
        DetectLocal::ClusterCidr(vec![net("10.244.0.0/16")])
    );
    assert_eq!(
        (s.sync_period, s.min_sync_period),
        (Duration::from_secs(30), Duration::from_secs(1))
    );
    assert_eq!(s.masquerade_mark, 1 << 14);
    assert!(s.localhost_nodeports);
    assert_eq!((s.api_qps, s.api_burst), (5.0, 10));
    assert_eq!(s.conntrack.max_per_core, 32768);
    assert_eq!(
        s.conntrack.tcp_established_timeout,
        Duration::from_secs(86400)
    );
    assert_eq!(s.oom_score_adj, Some(-999));
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    // /configz shows the defaulted configuration in upstream's (internal) shape.
    let configz = &s.configz()[crate::config::GROUP];
    assert_eq!(configz["Mode"], "iptables");
    assert_eq!(configz["HealthzBindAddress"], "0.0.0.0:10256");
    assert_eq!(configz["MetricsBindAddress"], "127.0.0.1:10249");
    assert_eq!(configz["SyncPeriod"], "30s");
    assert_eq!(configz["ConfigSyncPeriod"], "15m0s");
    assert_eq!(configz["DetectLocalMode"], "ClusterCIDR");
    assert_eq!(
        configz["DetectLocal"]["ClusterCIDRs"],
        serde_json::json!(["10.244.0.0/16"])
    );
    assert_eq!(
        configz["Linux"]["Conntrack"]["TCPEstablishedTimeout"],
        "24h0m0s"
    );
    assert_eq!(configz["Linux"]["OOMScoreAdj"], -999);
    assert_eq!(
        configz["ClientConnection"]["Kubeconfig"],
        "/var/lib/kube-proxy/kubeconfig.conf"
    );
    assert_eq!(configz["ClientConnection"]["QPS"], 5.0);
}

/// kind's nftables config: `maxPerCore: 0` leaves nf_conntrack_max alone, `metadata:` is
/// not a field (named, and otherwise ignored), NodePorts default to the primary IPs.
#[test]
fn kinds_config_leaves_the_conntrack_limit_alone() {
    let config = testdata("kind-config.conf");
    let s = settings(&["--config", &config]);
    assert_eq!(s.mode, ProxyMode::Nftables);
    assert_eq!(s.conntrack.max_per_core, 0);
    assert!(s.conntrack.tcp_be_liberal);
    assert_eq!(
        s.nodeport_addresses,
        NodePortAddresses {
            primary: true,
            cidrs: vec![]
        }
    );
    // nftables mode reads the nftables block: iptables.minSyncPeriod does not apply.
    assert_eq!(s.min_sync_period, Duration::from_secs(1));
    assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
    assert!(s.warnings[0].contains("metadata"), "{:?}", s.warnings);
}

/// k3s runs kube-proxy with flags only.
#[test]
fn k3s_flags_parse() {
    let s = settings(&[
        "--proxy-mode=iptables",
        "--healthz-bind-address=127.0.0.1",
        "--kubeconfig=/var/lib/rancher/k3s/agent/kubeproxy.kubeconfig",
        "--cluster-cidr=10.42.0.0/16,fd00:42::/56",
        "--conntrack-max-per-core=0",
        "--conntrack-tcp-timeout-established=0s",
        "--conntrack-tcp-timeout-close-wait=0s",
        "--hostname-override=k3s-server",
        "--v=2",
    ]);
    assert_eq!(
        s.healthz_bind_address,
        addr("127.0.0.1:10256"),
        "the port is appended"
    );
    assert_eq!(s.cluster_cidrs, [net("10.42.0.0/16"), net("fd00:42::/56")]);
    assert_eq!(
        s.conntrack,
        ConntrackSettings {
            min: 131072,
            ..ConntrackSettings::default()
        }
    );
    assert_eq!(s.verbosity, 2);
}

#[test]
fn a_config_file_replaces_the_flags_as_upstream() {
    let file = ConfigFile::new(
        "replace",
        "clusterCIDR: 10.244.0.0/16\niptables:\n  masqueradeAll: true\n  syncPeriod: 1m\n",
    );
    let s = settings(&[
        "--config",
        &file.path(),
        "--masquerade-all=false",
        "--iptables-min-sync-period",
        "250ms",
        "--hostname-override",
        "node-b",
        "--sync-period",
        "45s",
    ]);
    assert!(
        s.masquerade_all,
        "the file's value: --masquerade-all is ignored"
    );
    assert_eq!(
        s.min_sync_period,
        Duration::from_secs(1),
        "the file's (defaulted)"
    );
    assert_eq!(
        s.sync_period,
        Duration::from_secs(45),
        "kproxy's own flag applies"
    );
    assert_eq!(
        s.hostname_override.as_deref(),
        Some("node-b"),
        "--hostname-override applies"
    );
    assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
    assert!(
        s.warnings[0].contains("--masquerade-all, --iptables-min-sync-period"),
        "{:?}",
        s.warnings
    );
}

#[test]
fn every_upstream_flag_parses() {
    // Each flag of cmd/kube-proxy/app/options.go (1.33-1.37), with a value as upstream's
    // help shows it; Windows and cadvisor flags are accepted and named in a warning.
    let s = settings(&[
        "--bind-address=0.0.0.0",
        "--bind-address-hard-fail=false",
        "--cleanup=false",
        "--cluster-cidr=10.244.0.0/16",
        "--config-sync-period=15m0s",
        "--conntrack-max-per-core=32768",
        "--conntrack-min=131072",
        "--conntrack-tcp-be-liberal=false",
        "--conntrack-tcp-timeout-close-wait=1h0m0s",
        "--conntrack-tcp-timeout-established=24h0m0s",
        "--conntrack-udp-timeout=0s",
        "--conntrack-udp-timeout-stream=0s",
        "--detect-local-mode=ClusterCIDR",
        "--feature-gates=NFTablesProxyMode=true",
        "--healthz-bind-address=0.0.0.0:10256",
        "--healthz-port=10256",
        "--hostname-override=node-a",
        "--init-only=false",
        "--iptables-localhost-nodeports=true",
        "--iptables-masquerade-bit=14",
        "--iptables-min-sync-period=1s",
        "--iptables-sync-period=30s",
        "--ipvs-exclude-cidrs=",
        "--ipvs-min-sync-period=0s",
        "--ipvs-scheduler=",
        "--ipvs-strict-arp=false",
        "--ipvs-sync-period=30s",
        "--ipvs-tcp-timeout=0s",
        "--ipvs-tcpfin-timeout=0s",
        "--ipvs-udp-timeout=0s",
        "--kube-api-burst=10",
        "--kube-api-content-type=application/vnd.kubernetes.protobuf",
        "--kube-api-qps=5",
        "--kubeconfig=/var/lib/kube-proxy/kubeconfig.conf",
        "--log-flush-frequency=5s",
        "--log-json-info-buffer-size=0",
        "--log-json-split-stream=false",
        "--log-text-info-buffer-size=0",
        "--log-text-split-stream=false",
        "--logging-format=text",
        "--masquerade-all=false",
        "--master=https://10.0.0.1:6443",
        "--metrics-bind-address=127.0.0.1:10249",
        "--metrics-port=10249",
        "--nodeport-addresses=primary,127.0.0.0/8",
        "--oom-score-adj=-999",
        "--pod-bridge-interface=",
        "--pod-interface-name-prefix=",
        "--profiling=false",
        "--proxy-mode=iptables",
        "--show-hidden-metrics-for-version=",
        "--v=0",
        "--vmodule=",
        "--windows-service=false",
        "--source-vip=",
        "--network-name=",
        "--enable-dsr=false",
        "--root-hnsendpoint-name=cbr0",
        "--forward-healthcheck-vip=false",
        "--boot-id-file=/proc/sys/kernel/random/boot_id",
        "--machine-id-file=/etc/machine-id",
    ]);
    assert_eq!(s.master.as_deref(), Some("https://10.0.0.1:6443"));
    assert_eq!(
        s.nodeport_addresses,
        NodePortAddresses {
            primary: true,
            cidrs: vec![net("127.0.0.0/8")]
        }
    );
    let all = s.warnings.join("\n");
    assert!(
        all.contains("--windows-service") && all.contains("--boot-id-file"),
        "{all}"
    );
    assert!(
        all.contains("NFTablesProxyMode"),
        "feature gates are named: {all}"
    );
}

#[test]
fn server_flags_follow_upstream() {
    let s = settings(&["--healthz-port=0"]);
    assert_eq!(
        s.healthz_bind_address, None,
        "port 0 disables the health server"
    );
    let s = settings(&["--healthz-bind-address=", "--metrics-bind-address=10.0.0.5"]);
    assert_eq!(
        s.healthz_bind_address,
        addr("0.0.0.0:10256"),
        "empty keeps the default"
    );
    assert_eq!(s.metrics_bind_address, addr("10.0.0.5:10249"));
    // The servers' defaults follow bindAddress's family in a config file; the flags'
    // defaults were fixed when the flags were registered (upstream's quirk).
    let s = settings(&["--bind-address=::"]);
    assert_eq!(s.healthz_bind_address, addr("0.0.0.0:10256"));
    let file = ConfigFile::new("bind-v6", "bindAddress: '::'\n");
    let s = settings(&["--config", &file.path()]);
    assert_eq!(s.healthz_bind_address, addr("[::]:10256"));
    assert_eq!(s.metrics_bind_address, addr("[::1]:10249"));
    // As upstream, a port flag only joins an address that has none.
    let s = settings(&["--metrics-port=9999"]);
    assert_eq!(s.metrics_bind_address, addr("127.0.0.1:10249"));
    let s = settings(&["--metrics-port=9999", "--metrics-bind-address=0.0.0.0"]);
    assert_eq!(s.metrics_bind_address, addr("0.0.0.0:9999"));
}

#[test]
fn the_mode_picks_which_period_flags_apply() {
    let s = settings(&["--ipvs-sync-period", "10s", "--ipvs-min-sync-period", "3s"]);
    assert_eq!(s.mode, ProxyMode::Iptables);
    assert_eq!(
        (s.sync_period, s.min_sync_period),
        (Duration::from_secs(30), Duration::from_secs(1))
    );
    let s = settings(&["--proxy-mode", "ipvs", "--iptables-sync-period", "10s"]);
    assert_eq!(
        (s.sync_period, s.min_sync_period),
        (Duration::from_secs(30), Duration::from_secs(1))
    );
    let s = settings(&["--proxy-mode", "nftables", "--iptables-sync-period", "10s"]);
    assert_eq!(
        s.sync_period,
        Duration::from_secs(10),
        "--iptables-* apply in every mode but IPVS"
    );
    let s = settings(&[
        "--proxy-mode",
        "ipvs",
        "--ipvs-sync-period",
        "10s",
        "--ipvs-min-sync-period",
        "500ms",
    ]);
    assert_eq!(
        (s.sync_period, s.min_sync_period),
        (Duration::from_secs(10), Duration::from_millis(500))
    );
}

const IPVS_CONFIG: &str = "mode: ipvs\nipvs:\n  syncPeriod: 45s\n  minSyncPeriod: 2s\n  \
    excludeCIDRs: [192.168.100.0/24, 'fd00:1::/64']\n  tcpTimeout: 900s\n  \
    tcpFinTimeout: 2m\n  udpTimeout: 0s\n  scheduler: wrr\niptables:\n  syncPeriod: 1m\n";

#[test]
fn ipvs_config_fields_apply_in_ipvs_mode() {
    let file = ConfigFile::new("ipvs", IPVS_CONFIG);
    let s = settings(&["--config", &file.path()]);
    assert_eq!(s.mode, ProxyMode::Ipvs);
    assert_eq!(
        (s.sync_period, s.min_sync_period),
        (Duration::from_secs(45), Duration::from_secs(2))
    );
    assert_eq!(
        s.ipvs_exclude_cidrs,
        [net("192.168.100.0/24"), net("fd00:1::/64")]
    );
    assert_eq!(s.ipvs_tcp_timeout, Duration::from_secs(900));
    assert_eq!(s.ipvs_tcp_fin_timeout, Duration::from_secs(120));
    assert_eq!(s.ipvs_udp_timeout, Duration::ZERO);
    assert_eq!(s.ipvs_scheduler, "wrr");
    let configz = &s.configz()[crate::config::GROUP];
    assert_eq!(
        configz["IPVS"]["ExcludeCIDRs"],
        serde_json::json!(["192.168.100.0/24", "fd00:1::/64"])
    );
    assert_eq!(configz["IPVS"]["TCPFinTimeout"], "2m0s");
    assert_eq!(configz["SyncPeriod"], "45s");
}

#[test]
fn ipvs_flags_and_defaults() {
    let s = settings(&["--proxy-mode", "ipvs"]);
    assert!(s.ipvs_exclude_cidrs.is_empty());
    assert_eq!(s.ipvs_scheduler, "rr");
    assert_eq!(
        (s.sync_period, s.min_sync_period),
        (Duration::from_secs(30), Duration::from_secs(1))
    );
    let s = settings(&[
        "--proxy-mode=ipvs",
        "--ipvs-exclude-cidrs",
        "10.1.0.0/16, 10.2.3.0/24",
        "--ipvs-tcp-timeout",
        "1500ms",
        "--ipvs-udp-timeout",
        "300s",
    ]);
    assert_eq!(
        s.ipvs_exclude_cidrs,
        [net("10.1.0.0/16"), net("10.2.3.0/24")]
    );
    assert_eq!(s.ipvs_tcp_timeout, Duration::from_secs(1), "whole seconds");
    assert_eq!(s.ipvs_udp_timeout, Duration::from_secs(300));
}

#[test]
fn bad_values_name_their_field_or_flag() {
    let cases: [(&[&str], &[&str]); 9] = [
        (
            &["--cluster-cidr", "10.0.0.0/8,10.1.0.0/16"],
            &["clusterCIDR", "one CIDR per IP family"],
        ),
        (
            &["--nodeport-addresses", "primary,primary"],
            &["nodePortAddresses", "twice"],
        ),
        (
            &["--nodeport-addresses", "nonsense"],
            &["nodePortAddresses", "nonsense"],
        ),
        (
            &["--iptables-sync-period", "soon"],
            &["--iptables-sync-period", "soon"],
        ),
        (&["--proxy-mode", "bogus"], &["mode", "bogus"]),
        (
            &[
                "--proxy-mode",
                "ipvs",
                "--ipvs-exclude-cidrs",
                "10.0.0.0/33",
            ],
            &["ipvs.excludeCIDRs", "10.0.0.0/33"],
        ),
        (
            &["--iptables-masquerade-bit", "32"],
            &["masqueradeBit", "32"],
        ),
        (
            &["--detect-local-mode", "BridgeInterface"],
            &["detectLocal.bridgeInterface"],
        ),
        (
            &["--iptables-min-sync-period", "1m"],
            &["minSyncPeriod", "1m0s"],
        ),
    ];
    for (flags, wanted) in cases {
        let err = args(flags)
            .settings()
            .expect_err("invalid value")
            .to_string();
        for w in wanted {
            assert!(err.contains(w), "{flags:?}: {err}");
        }
    }
    let file = ConfigFile::new(
        "bad",
        "mode: ipvs\nipvs:\n  excludeCIDRs: [nonsense]\noomScoreAdj: 2000\n",
    );
    let err = args(&["--config", &file.path()])
        .settings()
        .expect_err("bad config")
        .to_string();
    for w in [
        "ipvs.excludeCIDRs",
        "nonsense",
        "oomScoreAdj",
        "2000",
        "--config",
    ] {
        assert!(err.contains(w), "{err}");
    }
    let err = args(&["--hostname-override", "  "])
        .settings()
        .expect_err("empty name");
    assert!(err.to_string().contains("--hostname-override"), "{err}");
}

#[test]
fn render_subcommand_takes_the_same_flags() {
    let cli = Cli::try_parse_from([
        "kproxy",
        "render",
        "--manifests",
        "x",
        "--cluster-cidr",
        "10.0.0.0/8",
    ])
    .expect("parse");
    assert!(matches!(cli.command, Some(Command::Render(ref a)) if a.manifests.is_some()));
}
