//! The flags: every flag of upstream's `cmd/kube-proxy/app/options.go` (1.33-1.37) and
//! kproxy's own.
//!
//! Upstream's flags come in three groups, which decide how they meet `--config`
//! ([`ProxyArgs::config_flags_given`]):
//! - flags that set a field of the configuration: ignored when `--config` is given, as
//!   upstream (the file replaces the configuration they build);
//! - `--hostname-override`, `--master`, the logging flags and the actions (`--cleanup`,
//!   `--init-only`, `--write-config-to`): always apply;
//! - Windows and cadvisor flags: accepted so that any kube-proxy command line starts, and
//!   named in a warning.
//!
//! kproxy's own flags (`--manifests`, `--once`, `--full-sync-period`, ...) always apply.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use clap::Args;
use kproxy_dataplane::iptables::apply::BackendChoice;

/// Flags shared by running the proxy and `kproxy render`.
#[derive(Debug, Clone, Default, Args)]
pub struct ProxyArgs {
    // ---- kproxy's own ----
    /// A file or directory of YAML/JSON manifests (v1 Service, discovery.k8s.io/v1
    /// EndpointSlice, v1 Node, networking.k8s.io/v1 ServiceCIDR; multi-document files and
    /// Lists welcome) to use instead of the Kubernetes API. kproxy watches it and re-syncs when it changes.
    #[arg(long, value_name = "PATH")]
    pub manifests: Option<PathBuf>,

    /// Do one full sync and exit: 0 when the rules are live, non-zero with the reason
    /// otherwise. The rules stay.
    #[arg(long)]
    pub once: bool,

    /// Period of the periodic sync in every mode, e.g. 30s (changes sync at once). Wins
    /// over the configuration's.
    #[arg(long, value_name = "DURATION")]
    pub sync_period: Option<String>,

    /// Minimum interval between syncs in every mode. Wins over the configuration's.
    #[arg(long, value_name = "DURATION")]
    pub min_sync_period: Option<String>,

    /// Period of full syncs (rewrite everything kproxy owns, repair drift), as upstream's
    /// fixed FullSyncPeriod. Default: 1h.
    #[arg(long, value_name = "DURATION")]
    pub full_sync_period: Option<String>,

    /// iptables implementation: legacy, nft, or auto (the one already holding Kubernetes
    /// chains, else the one with more rules, else nft).
    #[arg(long, default_value = "auto", value_name = "legacy|nft|auto")]
    pub iptables_backend: BackendChoice,

    /// Userspace mode's load-balancing algorithm: random, rr, wrr, lc, sh or mh (Maglev).
    /// Default: random.
    #[arg(long, value_name = "NAME")]
    pub userspace_scheduler: Option<String>,

    /// Userspace mode's masquerade address (IPv4), unique per node and routed back to it.
    /// Default: 169.254.42.1.
    #[arg(long, value_name = "IPV4")]
    pub userspace_masquerade_address: Option<Ipv4Addr>,

    // ---- upstream's, always applied ----
    /// A KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1) file. As kube-proxy,
    /// it replaces the configuration flags would set: only --hostname-override, --master,
    /// the logging flags, the actions and kproxy's own flags still apply.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Write the effective configuration (KubeProxyConfiguration YAML) to this file and
    /// exit.
    #[arg(long, value_name = "FILE")]
    pub write_config_to: Option<PathBuf>,

    /// Remove everything kproxy owns in every mode (iptables chains and jump rules,
    /// nftables tables, IPVS), nothing else, then exit.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub cleanup: Option<bool>,

    /// Do the privileged set-up (conntrack sysctls, OOM score) and exit.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub init_only: Option<bool>,

    /// The name of this node (default: the hostname); trimmed and lower-cased. Applies
    /// over --config.
    #[arg(long)]
    pub hostname_override: Option<String>,

    /// The API server's URL (overrides the kubeconfig's server).
    #[arg(long, value_name = "URL")]
    pub master: Option<String>,

    /// Log verbosity as kube-proxy's -v: 0-1 info, 2-3 debug, 4+ trace (RUST_LOG wins).
    #[arg(short = 'v', long = "v", value_name = "N")]
    pub verbosity: Option<u8>,

    /// Log format: text or json.
    #[arg(long, value_name = "text|json")]
    pub logging_format: Option<String>,

    /// Per-file verbosity (accepted; kproxy has no per-file levels).
    #[arg(long, value_name = "PATTERN=N,...")]
    pub vmodule: Option<String>,

    /// Accepted for compatibility (kproxy flushes every line).
    #[arg(long, value_name = "DURATION")]
    pub log_flush_frequency: Option<String>,

    /// Accepted for compatibility (alpha upstream).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub log_text_split_stream: Option<bool>,

    /// Accepted for compatibility (alpha upstream).
    #[arg(long, value_name = "QUANTITY")]
    pub log_text_info_buffer_size: Option<String>,

    /// Accepted for compatibility (alpha upstream).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub log_json_split_stream: Option<bool>,

    /// Accepted for compatibility (alpha upstream).
    #[arg(long, value_name = "QUANTITY")]
    pub log_json_info_buffer_size: Option<String>,

    // ---- upstream's, setting the configuration (ignored with --config) ----
    /// Which proxy mode to use: iptables, ipvs, nftables, or kproxy's userspace.
    /// Default: iptables.
    #[arg(long, value_name = "MODE")]
    pub proxy_mode: Option<String>,

    /// Path to a kubeconfig file (API server address and credentials). Without it and
    /// without --manifests: $KUBECONFIG, ~/.kube/config, then the in-cluster service account.
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// Content type of requests to the API server (kproxy speaks JSON).
    #[arg(long, value_name = "TYPE")]
    pub kube_api_content_type: Option<String>,

    /// Queries per second to the API server. Default: 5.
    #[arg(long, value_name = "QPS")]
    pub kube_api_qps: Option<f32>,

    /// Burst of queries to the API server. Default: 10.
    #[arg(long, value_name = "N")]
    pub kube_api_burst: Option<i32>,

    /// The address the servers' defaults derive from (its family picks 0.0.0.0 or [::]).
    #[arg(long, value_name = "IP")]
    pub bind_address: Option<String>,

    /// Where to serve /healthz and /livez: IP:port, or an IP (port 10256).
    /// Default: 0.0.0.0:10256.
    #[arg(long, value_name = "IP[:PORT]")]
    pub healthz_bind_address: Option<String>,

    /// Where to serve /metrics, /proxyMode and /configz: IP:port, or an IP (port 10249).
    /// Default: 127.0.0.1:10249.
    #[arg(long, value_name = "IP[:PORT]")]
    pub metrics_bind_address: Option<String>,

    /// Exit when a server cannot bind its port (else keep retrying every 5 s).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub bind_address_hard_fail: Option<bool>,

    /// Deprecated upstream: the healthz port (0 disables the server).
    #[arg(long, value_name = "PORT")]
    pub healthz_port: Option<i32>,

    /// Deprecated upstream: the metrics port.
    #[arg(long, value_name = "PORT")]
    pub metrics_port: Option<i32>,

    /// Accepted for compatibility (kproxy has no pprof).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub profiling: Option<bool>,

    /// Accepted for compatibility.
    #[arg(long, value_name = "VERSION")]
    pub show_hidden_metrics_for_version: Option<String>,

    /// Feature gates (A=true,B=false); kproxy has none of upstream's.
    #[arg(long, value_name = "NAME=BOOL,...")]
    pub feature_gates: Option<String>,

    /// The pod CIDR range(s) of the cluster, at most one per IP family, comma-separated.
    #[arg(long, value_name = "CIDR[,CIDR]")]
    pub cluster_cidr: Option<String>,

    /// How pod traffic is told apart: ClusterCIDR (default), NodeCIDR (the Node's
    /// podCIDRs), BridgeInterface or InterfaceNamePrefix.
    #[arg(long, value_name = "MODE")]
    pub detect_local_mode: Option<String>,

    /// The bridge for --detect-local-mode=BridgeInterface.
    #[arg(long, value_name = "NAME")]
    pub pod_bridge_interface: Option<String>,

    /// The interface prefix for --detect-local-mode=InterfaceNamePrefix.
    #[arg(long, value_name = "PREFIX")]
    pub pod_interface_name_prefix: Option<String>,

    /// SNAT all traffic sent via Service cluster IPs. Default: false.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub masquerade_all: Option<bool>,

    /// Comma-separated CIDRs of the node addresses that accept NodePort traffic, and the
    /// keywords `primary` (the node's primary IPs), `localhost`, `all`. Default: all local
    /// addresses in iptables and IPVS mode, `primary` in nftables mode.
    #[arg(long, value_name = "CIDRS|KEYWORDS")]
    pub nodeport_addresses: Option<String>,

    /// Accept NodePort connections on 127.0.0.0/8 (iptables mode). Default: true.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub iptables_localhost_nodeports: Option<bool>,

    /// The bit of the packet mark that requests masquerading (0-31). Default: 14.
    #[arg(long, value_name = "BIT")]
    pub iptables_masquerade_bit: Option<i32>,

    /// Periodic sync in every mode but IPVS. Default: 30s.
    #[arg(long, value_name = "DURATION")]
    pub iptables_sync_period: Option<String>,

    /// Minimum interval between syncs in every mode but IPVS. Default: 1s.
    #[arg(long, value_name = "DURATION")]
    pub iptables_min_sync_period: Option<String>,

    /// Periodic sync in IPVS mode. Default: 30s.
    #[arg(long, value_name = "DURATION")]
    pub ipvs_sync_period: Option<String>,

    /// Minimum interval between syncs in IPVS mode. Default: 1s.
    #[arg(long, value_name = "DURATION")]
    pub ipvs_min_sync_period: Option<String>,

    /// IPVS scheduler: rr, wrr, lc, wlc, sh, dh, sed, nq or mh. Default: rr.
    #[arg(long, value_name = "NAME")]
    pub ipvs_scheduler: Option<String>,

    /// Comma-separated CIDRs the IPVS proxier never touches.
    #[arg(long, value_name = "CIDR[,CIDR...]")]
    pub ipvs_exclude_cidrs: Option<String>,

    /// Set arp_ignore=1 and arp_announce=2 so service IPs on kube-ipvs0 are not announced.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub ipvs_strict_arp: Option<bool>,

    /// IPVS idle timeout of established TCP connections (0 leaves the kernel's value).
    #[arg(long, value_name = "DURATION")]
    pub ipvs_tcp_timeout: Option<String>,

    /// IPVS timeout of TCP connections after a FIN (0 leaves the kernel's value).
    #[arg(long, value_name = "DURATION")]
    pub ipvs_tcpfin_timeout: Option<String>,

    /// IPVS timeout of UDP flows (0 leaves the kernel's value).
    #[arg(long, value_name = "DURATION")]
    pub ipvs_udp_timeout: Option<String>,

    /// nf_conntrack_max per CPU (0 leaves the limit alone). Default: 32768.
    #[arg(long, value_name = "N")]
    pub conntrack_max_per_core: Option<i32>,

    /// The least nf_conntrack_max. Default: 131072.
    #[arg(long, value_name = "N")]
    pub conntrack_min: Option<i32>,

    /// nf_conntrack_tcp_timeout_established (0 leaves it alone). Default: 24h0m0s.
    #[arg(long, value_name = "DURATION")]
    pub conntrack_tcp_timeout_established: Option<String>,

    /// nf_conntrack_tcp_timeout_close_wait (0 leaves it alone). Default: 1h0m0s.
    #[arg(long, value_name = "DURATION")]
    pub conntrack_tcp_timeout_close_wait: Option<String>,

    /// Set nf_conntrack_tcp_be_liberal.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub conntrack_tcp_be_liberal: Option<bool>,

    /// nf_conntrack_udp_timeout (0 leaves it alone).
    #[arg(long, value_name = "DURATION")]
    pub conntrack_udp_timeout: Option<String>,

    /// nf_conntrack_udp_timeout_stream (0 leaves it alone).
    #[arg(long, value_name = "DURATION")]
    pub conntrack_udp_timeout_stream: Option<String>,

    /// The process's oom_score_adj (-1000..1000). Default: -999.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub oom_score_adj: Option<i32>,

    /// Informer resync period upstream (kproxy's full syncs cover it). Default: 15m0s.
    #[arg(long, value_name = "DURATION")]
    pub config_sync_period: Option<String>,

    // ---- upstream's on Windows, and cadvisor's: accepted, named in a warning ----
    /// Windows only.
    #[arg(long, hide = true, num_args = 0..=1, default_missing_value = "true")]
    pub windows_service: Option<bool>,
    /// Windows only.
    #[arg(long, hide = true)]
    pub source_vip: Option<String>,
    /// Windows only.
    #[arg(long, hide = true)]
    pub network_name: Option<String>,
    /// Windows only.
    #[arg(long, hide = true, num_args = 0..=1, default_missing_value = "true")]
    pub enable_dsr: Option<bool>,
    /// Windows only.
    #[arg(long, hide = true)]
    pub root_hnsendpoint_name: Option<String>,
    /// Windows only.
    #[arg(long, hide = true, num_args = 0..=1, default_missing_value = "true")]
    pub forward_healthcheck_vip: Option<bool>,
    /// cadvisor's.
    #[arg(long, hide = true)]
    pub boot_id_file: Option<String>,
    /// cadvisor's.
    #[arg(long, hide = true)]
    pub machine_id_file: Option<String>,
}

impl ProxyArgs {
    /// The flags given that set a field of the configuration (ignored with `--config`).
    pub fn config_flags_given(&self) -> Vec<&'static str> {
        let given = [
            ("--proxy-mode", self.proxy_mode.is_some()),
            ("--kubeconfig", self.kubeconfig.is_some()),
            (
                "--kube-api-content-type",
                self.kube_api_content_type.is_some(),
            ),
            ("--kube-api-qps", self.kube_api_qps.is_some()),
            ("--kube-api-burst", self.kube_api_burst.is_some()),
            ("--bind-address", self.bind_address.is_some()),
            (
                "--healthz-bind-address",
                self.healthz_bind_address.is_some(),
            ),
            (
                "--metrics-bind-address",
                self.metrics_bind_address.is_some(),
            ),
            (
                "--bind-address-hard-fail",
                self.bind_address_hard_fail.is_some(),
            ),
            ("--healthz-port", self.healthz_port.is_some()),
            ("--metrics-port", self.metrics_port.is_some()),
            ("--profiling", self.profiling.is_some()),
            (
                "--show-hidden-metrics-for-version",
                self.show_hidden_metrics_for_version.is_some(),
            ),
            ("--feature-gates", self.feature_gates.is_some()),
            ("--cluster-cidr", self.cluster_cidr.is_some()),
            ("--detect-local-mode", self.detect_local_mode.is_some()),
            (
                "--pod-bridge-interface",
                self.pod_bridge_interface.is_some(),
            ),
            (
                "--pod-interface-name-prefix",
                self.pod_interface_name_prefix.is_some(),
            ),
            ("--masquerade-all", self.masquerade_all.is_some()),
            ("--nodeport-addresses", self.nodeport_addresses.is_some()),
            (
                "--iptables-localhost-nodeports",
                self.iptables_localhost_nodeports.is_some(),
            ),
            (
                "--iptables-masquerade-bit",
                self.iptables_masquerade_bit.is_some(),
            ),
            (
                "--iptables-sync-period",
                self.iptables_sync_period.is_some(),
            ),
            (
                "--iptables-min-sync-period",
                self.iptables_min_sync_period.is_some(),
            ),
            ("--ipvs-sync-period", self.ipvs_sync_period.is_some()),
            (
                "--ipvs-min-sync-period",
                self.ipvs_min_sync_period.is_some(),
            ),
            ("--ipvs-scheduler", self.ipvs_scheduler.is_some()),
            ("--ipvs-exclude-cidrs", self.ipvs_exclude_cidrs.is_some()),
            ("--ipvs-strict-arp", self.ipvs_strict_arp.is_some()),
            ("--ipvs-tcp-timeout", self.ipvs_tcp_timeout.is_some()),
            ("--ipvs-tcpfin-timeout", self.ipvs_tcpfin_timeout.is_some()),
            ("--ipvs-udp-timeout", self.ipvs_udp_timeout.is_some()),
            (
                "--conntrack-max-per-core",
                self.conntrack_max_per_core.is_some(),
            ),
            ("--conntrack-min", self.conntrack_min.is_some()),
            (
                "--conntrack-tcp-timeout-established",
                self.conntrack_tcp_timeout_established.is_some(),
            ),
            (
                "--conntrack-tcp-timeout-close-wait",
                self.conntrack_tcp_timeout_close_wait.is_some(),
            ),
            (
                "--conntrack-tcp-be-liberal",
                self.conntrack_tcp_be_liberal.is_some(),
            ),
            (
                "--conntrack-udp-timeout",
                self.conntrack_udp_timeout.is_some(),
            ),
            (
                "--conntrack-udp-timeout-stream",
                self.conntrack_udp_timeout_stream.is_some(),
            ),
            ("--oom-score-adj", self.oom_score_adj.is_some()),
            ("--config-sync-period", self.config_sync_period.is_some()),
        ];
        given
            .into_iter()
            .filter_map(|(name, set)| set.then_some(name))
            .collect()
    }

    /// The flags given that kproxy accepts but has no use for (Windows, cadvisor, the
    /// logging options it does not implement).
    pub fn unused_flags_given(&self) -> Vec<&'static str> {
        let given = [
            ("--windows-service", self.windows_service.is_some()),
            ("--source-vip", self.source_vip.is_some()),
            ("--network-name", self.network_name.is_some()),
            ("--enable-dsr", self.enable_dsr.is_some()),
            (
                "--root-hnsendpoint-name",
                self.root_hnsendpoint_name.is_some(),
            ),
            (
                "--forward-healthcheck-vip",
                self.forward_healthcheck_vip.is_some(),
            ),
            ("--boot-id-file", self.boot_id_file.is_some()),
            ("--machine-id-file", self.machine_id_file.is_some()),
            ("--vmodule", self.vmodule.is_some()),
            ("--log-flush-frequency", self.log_flush_frequency.is_some()),
            (
                "--log-text-split-stream",
                self.log_text_split_stream.is_some(),
            ),
            (
                "--log-text-info-buffer-size",
                self.log_text_info_buffer_size.is_some(),
            ),
            (
                "--log-json-split-stream",
                self.log_json_split_stream.is_some(),
            ),
            (
                "--log-json-info-buffer-size",
                self.log_json_info_buffer_size.is_some(),
            ),
        ];
        given
            .into_iter()
            .filter_map(|(name, set)| set.then_some(name))
            .collect()
    }
}
