//! Command-line flags (kube-proxy's names where they apply) and their merge with
//! `--config` into [`Settings`]: a flag given on the command line wins over the config
//! file, which wins over the default.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;
use kproxy_dataplane::iptables::apply::BackendChoice;
use kproxy_dataplane::plan::IpFamily;

use crate::config::{KubeProxyConfiguration, parse_duration};

/// kproxy: a Kubernetes service proxy (kube-proxy) in Rust.
///
/// Watches Services, EndpointSlices and this Node (from manifests) and programs the kernel
/// so that traffic to ClusterIPs, NodePorts, external IPs and load-balancer IPs is DNATed
/// to a backend pod on the node where it starts.
#[derive(Debug, Parser)]
#[command(name = "kproxy", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// What to do (default: run the proxy).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Proxy flags.
    #[command(flatten)]
    pub proxy: ProxyArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the rules a full sync would program (iptables-restore input, per IP family),
    /// without touching the kernel. Takes the same flags as running the proxy.
    Render(ProxyArgs),
}

/// The proxy mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProxyMode {
    /// Upstream kube-proxy's iptables chain layout, applied with iptables-restore.
    Iptables,
    /// One nftables table per family (`ip kproxy`, `ip6 kproxy`) with verdict maps and
    /// shared chains, applied as one `nft -f` transaction per sync.
    Nftables,
    /// IPVS virtual servers over generic netlink, service IPs on `kube-ipvs0`, ipsets and
    /// a small iptables ruleset (needs a kernel with IP_VS).
    Ipvs,
    /// kproxy's own forwarder: service traffic is routed into a TUN device, balanced,
    /// NATed and conntracked in userspace.
    Userspace,
}

impl ProxyMode {
    /// The mode's name as in `--proxy-mode` and the config file.
    pub fn name(self) -> &'static str {
        match self {
            ProxyMode::Iptables => "iptables",
            ProxyMode::Nftables => "nftables",
            ProxyMode::Ipvs => "ipvs",
            ProxyMode::Userspace => "userspace",
        }
    }
}

/// Flags shared by running the proxy and `kproxy render`.
#[derive(Debug, Clone, Args)]
pub struct ProxyArgs {
    /// Which proxy mode to use. Default: iptables (or `mode` from --config).
    #[arg(long, value_enum)]
    pub proxy_mode: Option<ProxyMode>,

    /// A file or directory of YAML/JSON manifests (v1 Service, discovery.k8s.io/v1
    /// EndpointSlice, v1 Node; multi-document files and Lists welcome) to use instead of
    /// the Kubernetes API. kproxy watches it and re-syncs when it changes. Invalid objects
    /// are reported and skipped.
    #[arg(long, value_name = "PATH")]
    pub manifests: Option<PathBuf>,

    /// Path to a kubeconfig file (API server address and credentials). Without it and
    /// without --manifests: $KUBECONFIG, ~/.kube/config, then the in-cluster service account.
    #[arg(long, value_name = "PATH", conflicts_with = "manifests")]
    pub kubeconfig: Option<PathBuf>,

    /// The Kubernetes API server's URL (overrides the server in --kubeconfig).
    #[arg(long, value_name = "URL", conflicts_with = "manifests")]
    pub master: Option<String>,

    /// The name of this node, matched against EndpointSlice nodeName and the Node object.
    /// Default: the hostname.
    #[arg(long)]
    pub hostname_override: Option<String>,

    /// The pod CIDR range(s) of the cluster, at most one per IP family, comma-separated.
    /// Traffic to a ClusterIP from outside this range is masqueraded; pod traffic to
    /// external destinations short-circuits externalTrafficPolicy: Local.
    #[arg(long, value_name = "CIDR[,CIDR]")]
    pub cluster_cidr: Option<String>,

    /// SNAT all traffic sent via Service cluster IPs. Default: false.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub masquerade_all: Option<bool>,

    /// Comma-separated CIDRs of the node addresses that accept NodePort traffic, or
    /// `primary` for the node's primary IP of each family. Default: all local addresses in
    /// iptables mode, `primary` in nftables mode (as kube-proxy).
    #[arg(long, value_name = "CIDRS|primary")]
    pub nodeport_addresses: Option<String>,

    /// Accept NodePort connections on 127.0.0.0/8 (IPv4; sets route_localnet). Default: true.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub iptables_localhost_nodeports: Option<bool>,

    /// Period of the periodic sync in every mode, e.g. 30s, 1m: a partial sync that also
    /// notices changed node addresses (changes themselves sync at once). Wins over the
    /// mode's own setting. Default: 30s.
    #[arg(long, value_name = "DURATION")]
    pub sync_period: Option<String>,

    /// Period of full syncs (rewrite everything kproxy owns, remove stale objects, repair
    /// drift), e.g. 1h. As upstream's fixed FullSyncPeriod; a full sync also runs at start,
    /// after a failed sync and when the canary finds the rules flushed. Default: 1h.
    #[arg(long, value_name = "DURATION")]
    pub full_sync_period: Option<String>,

    /// Minimum interval between syncs in every mode: bursts of changes within it become
    /// one sync. Wins over the mode's own setting. Default: 1s.
    #[arg(long, value_name = "DURATION")]
    pub min_sync_period: Option<String>,

    /// Period of the periodic sync in iptables mode (see --sync-period). Default: 30s.
    #[arg(long, value_name = "DURATION")]
    pub iptables_sync_period: Option<String>,

    /// Minimum interval between syncs in iptables mode (see --min-sync-period).
    /// Default: 1s.
    #[arg(long, value_name = "DURATION")]
    pub iptables_min_sync_period: Option<String>,

    /// The bit of the packet mark that requests masquerading (0-31). Default: 14.
    #[arg(long, value_name = "BIT")]
    pub iptables_masquerade_bit: Option<u32>,

    /// iptables implementation: legacy, nft, or auto (the one already holding Kubernetes
    /// chains, else the one with more rules, else nft).
    #[arg(long, default_value = "auto", value_name = "legacy|nft|auto")]
    pub iptables_backend: BackendChoice,

    /// A KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1) YAML file. Flags win.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// IPVS scheduler: rr, wrr, lc, wlc, sh, dh, sed, nq or mh. Default: rr.
    #[arg(long, value_name = "NAME")]
    pub ipvs_scheduler: Option<String>,

    /// Set arp_ignore=1 and arp_announce=2 so service IPs on kube-ipvs0 are not announced.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub ipvs_strict_arp: Option<bool>,

    /// Period of full syncs in IPVS mode (see --sync-period). Default: 30s.
    #[arg(long, value_name = "DURATION")]
    pub ipvs_sync_period: Option<String>,

    /// Minimum interval between syncs in IPVS mode (see --min-sync-period). Default: 1s.
    #[arg(long, value_name = "DURATION")]
    pub ipvs_min_sync_period: Option<String>,

    /// Comma-separated CIDRs the IPVS proxier does not touch when cleaning up IPVS rules:
    /// virtual services on these addresses that kproxy does not program are never deleted
    /// or changed, by a sync or by --cleanup.
    #[arg(long, value_name = "CIDR[,CIDR...]")]
    pub ipvs_exclude_cidrs: Option<String>,

    /// The IPVS timeout of idle established TCP connections, set at start (as
    /// `ipvsadm --set`), e.g. 900s. 0 leaves the kernel's value. Default: 0.
    #[arg(long, value_name = "DURATION")]
    pub ipvs_tcp_timeout: Option<String>,

    /// The IPVS timeout of TCP connections after receiving a FIN, set at start, e.g. 120s.
    /// 0 leaves the kernel's value. Default: 0.
    #[arg(long, value_name = "DURATION")]
    pub ipvs_tcpfin_timeout: Option<String>,

    /// The IPVS timeout of UDP flows, set at start, e.g. 300s. 0 leaves the kernel's value.
    /// Default: 0.
    #[arg(long, value_name = "DURATION")]
    pub ipvs_udp_timeout: Option<String>,

    /// Userspace mode's load-balancing algorithm: random, rr, wrr, lc, sh or mh (Maglev).
    /// Default: random.
    #[arg(long, value_name = "NAME")]
    pub userspace_scheduler: Option<String>,

    /// Userspace mode's masquerade address (IPv4), unique per node and routed back to it.
    /// Default: 169.254.42.1.
    #[arg(long, value_name = "IPV4")]
    pub userspace_masquerade_address: Option<std::net::Ipv4Addr>,

    /// Where to serve /healthz and /livez (IP:port); empty to disable.
    /// Default: 0.0.0.0:10256.
    #[arg(long, value_name = "IP:PORT")]
    pub healthz_bind_address: Option<String>,

    /// Where to serve /metrics, /proxyMode and /configz (IP:port); empty to disable.
    /// Default: 127.0.0.1:10249.
    #[arg(long, value_name = "IP:PORT")]
    pub metrics_bind_address: Option<String>,

    /// Remove everything kproxy owns in every mode (iptables chains and jump rules,
    /// nftables tables), nothing else, then exit.
    #[arg(long)]
    pub cleanup: bool,

    /// Do one full sync and exit: 0 when the rules are live, non-zero with the reason
    /// otherwise. The rules stay.
    #[arg(long)]
    pub once: bool,

    /// Log verbosity as kube-proxy's -v: 0-1 info, 2-3 debug, 4+ trace (RUST_LOG wins).
    #[arg(short = 'v', long = "v", default_value_t = 0, value_name = "N")]
    pub verbosity: u8,
}

/// Where NodePorts listen, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodePortAddressSpec {
    /// Every local address (nothing configured).
    All,
    /// The node's primary IP of each family.
    Primary,
    /// Local addresses inside these CIDRs.
    Cidrs(Vec<IpNet>),
}

/// Every setting, merged from flags, config file and defaults, and checked.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Proxy mode.
    pub mode: ProxyMode,
    /// Manifest path (`None`: watch the Kubernetes API).
    pub manifests: Option<PathBuf>,
    /// `--kubeconfig`.
    pub kubeconfig: Option<PathBuf>,
    /// `--master`.
    pub master: Option<String>,
    /// Node name override.
    pub hostname_override: Option<String>,
    /// Pod CIDRs, at most one per family.
    pub cluster_cidrs: Vec<IpNet>,
    /// `--masquerade-all`.
    pub masquerade_all: bool,
    /// NodePort addresses.
    pub nodeport_addresses: NodePortAddressSpec,
    /// `--iptables-localhost-nodeports`.
    pub localhost_nodeports: bool,
    /// Period of the periodic (partial) sync.
    pub sync_period: Duration,
    /// Period of full syncs.
    pub full_sync_period: Duration,
    /// Minimum time between syncs.
    pub min_sync_period: Duration,
    /// The masquerade mark (`1 << bit`).
    pub masquerade_mark: u32,
    /// iptables backend choice.
    pub iptables_backend: BackendChoice,
    /// `--healthz-bind-address` (None: disabled).
    pub healthz_bind_address: Option<SocketAddr>,
    /// `--metrics-bind-address` (None: disabled).
    pub metrics_bind_address: Option<SocketAddr>,
    /// `--ipvs-scheduler`.
    pub ipvs_scheduler: String,
    /// `--ipvs-strict-arp`.
    pub ipvs_strict_arp: bool,
    /// `--ipvs-exclude-cidrs`.
    pub ipvs_exclude_cidrs: Vec<IpNet>,
    /// `--ipvs-tcp-timeout` (whole seconds; zero: leave the kernel's value).
    pub ipvs_tcp_timeout: Duration,
    /// `--ipvs-tcpfin-timeout` (whole seconds; zero: leave the kernel's value).
    pub ipvs_tcp_fin_timeout: Duration,
    /// `--ipvs-udp-timeout` (whole seconds; zero: leave the kernel's value).
    pub ipvs_udp_timeout: Duration,
    /// `--userspace-scheduler`.
    pub userspace_scheduler: String,
    /// `--userspace-masquerade-address`.
    pub userspace_masquerade_address: Option<std::net::Ipv4Addr>,
}

impl Settings {
    /// The effective configuration as JSON, for `/configz`.
    pub fn to_json(&self) -> serde_json::Value {
        let nodeport_addresses = match &self.nodeport_addresses {
            NodePortAddressSpec::All => serde_json::json!([]),
            NodePortAddressSpec::Primary => serde_json::json!(["primary"]),
            NodePortAddressSpec::Cidrs(c) => {
                serde_json::json!(c.iter().map(ToString::to_string).collect::<Vec<_>>())
            }
        };
        serde_json::json!({
            "mode": self.mode.name(),
            "hostnameOverride": self.hostname_override,
            "clusterCIDR": self.cluster_cidrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
            "nodePortAddresses": nodeport_addresses,
            "masqueradeAll": self.masquerade_all,
            "masqueradeMark": format!("{:#x}", self.masquerade_mark),
            "localhostNodePorts": self.localhost_nodeports,
            "syncPeriod": format!("{:?}", self.sync_period),
            "fullSyncPeriod": format!("{:?}", self.full_sync_period),
            "minSyncPeriod": format!("{:?}", self.min_sync_period),
            "healthzBindAddress": self.healthz_bind_address.map(|a| a.to_string()).unwrap_or_default(),
            "metricsBindAddress": self.metrics_bind_address.map(|a| a.to_string()).unwrap_or_default(),
            "manifests": self.manifests.as_ref().map(|p| p.display().to_string()),
            "kubeconfig": self.kubeconfig.as_ref().map(|p| p.display().to_string()),
            "master": self.master,
            "ipvs": {
                "scheduler": self.ipvs_scheduler,
                "strictARP": self.ipvs_strict_arp,
                "excludeCIDRs": self.ipvs_exclude_cidrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "tcpTimeout": format!("{:?}", self.ipvs_tcp_timeout),
                "tcpFinTimeout": format!("{:?}", self.ipvs_tcp_fin_timeout),
                "udpTimeout": format!("{:?}", self.ipvs_udp_timeout),
            },
        })
    }
}

/// Parses a bind address flag: `IP:PORT`, empty for disabled.
fn bind_address(
    flag: &str,
    value: Option<&str>,
    default: &str,
) -> anyhow::Result<Option<SocketAddr>> {
    let text = value.unwrap_or(default).trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|_| anyhow::anyhow!("{flag}: {text:?} is not IP:PORT"))
}

impl ProxyArgs {
    /// Merges flags over the config file (if any) over defaults, checking every value.
    pub fn settings(&self) -> anyhow::Result<Settings> {
        let config = match &self.config {
            Some(path) => {
                let (config, ignored) = KubeProxyConfiguration::load(path)?;
                if !ignored.is_empty() {
                    tracing::info!(file = %path.display(), fields = ?ignored, "config fields kproxy does not use are ignored");
                }
                config
            }
            None => KubeProxyConfiguration::default(),
        };
        let mode = match (self.proxy_mode, config.mode.as_deref()) {
            (Some(mode), _) => mode,
            (None, None | Some("") | Some("iptables")) => ProxyMode::Iptables,
            (None, Some("nftables")) => ProxyMode::Nftables,
            (None, Some("ipvs")) => ProxyMode::Ipvs,
            (None, Some("userspace")) => ProxyMode::Userspace,
            (None, Some(other)) => anyhow::bail!(
                "config mode {other:?} is not supported by this kproxy (supported: iptables, nftables, ipvs, userspace)"
            ),
        };
        // The config section of the mode in use and the mode's own period flags
        // (--iptables-* in iptables mode, --ipvs-* in IPVS mode, as upstream).
        let no_section = crate::config::ModeConfig::default();
        let no_flag: Option<String> = None;
        let (section, section_name, sync_flag, min_sync_flag) = match mode {
            ProxyMode::Iptables => (
                &config.iptables,
                "iptables",
                ("--iptables-sync-period", &self.iptables_sync_period),
                ("--iptables-min-sync-period", &self.iptables_min_sync_period),
            ),
            ProxyMode::Nftables => (&config.nftables, "nftables", ("", &no_flag), ("", &no_flag)),
            ProxyMode::Ipvs => (
                &config.ipvs.sync,
                "ipvs",
                ("--ipvs-sync-period", &self.ipvs_sync_period),
                ("--ipvs-min-sync-period", &self.ipvs_min_sync_period),
            ),
            ProxyMode::Userspace => (&no_section, "", ("", &no_flag), ("", &no_flag)),
        };
        let cidr_text = self.cluster_cidr.clone().or(config.cluster_cidr.clone());
        let nodeports: Option<Vec<String>> = self
            .nodeport_addresses
            .as_ref()
            .map(|s| s.split(',').map(str::to_owned).collect())
            .or(config.node_port_addresses.clone());
        let nodeport_addresses = match (nodeports.as_deref(), mode) {
            (None, ProxyMode::Nftables) => NodePortAddressSpec::Primary,
            (list, _) => parse_nodeport_addresses(list.unwrap_or(&[]))?,
        };
        let bit = self
            .iptables_masquerade_bit
            .or(section.masquerade_bit)
            .unwrap_or(14);
        anyhow::ensure!(bit <= 31, "--iptables-masquerade-bit {bit} is not in 0-31");
        let sync_field = format!("{section_name}.syncPeriod in --config");
        let min_sync_field = format!("{section_name}.minSyncPeriod in --config");
        let sync_period = duration_setting(
            &[
                ("--sync-period", &self.sync_period),
                sync_flag,
                (&sync_field, &section.sync_period),
            ],
            Duration::from_secs(30),
        )
        .map_err(|e| anyhow::anyhow!("sync period: {e}"))?;
        let min_sync_period = duration_setting(
            &[
                ("--min-sync-period", &self.min_sync_period),
                min_sync_flag,
                (&min_sync_field, &section.min_sync_period),
            ],
            Duration::from_secs(1),
        )
        .map_err(|e| anyhow::anyhow!("min sync period: {e}"))?;
        let full_sync_period = duration_setting(
            &[("--full-sync-period", &self.full_sync_period)],
            Duration::from_secs(3600),
        )
        .map_err(|e| anyhow::anyhow!("full sync period: {e}"))?;
        let ipvs = &config.ipvs;
        let timeout = |flag: &str, value: &Option<String>, field: &str, conf: &Option<String>| {
            ipvs_timeout(&[(flag, value), (&format!("{field} in --config"), conf)])
        };
        Ok(Settings {
            mode,
            manifests: self.manifests.clone(),
            kubeconfig: self.kubeconfig.clone(),
            master: self.master.clone(),
            hostname_override: self
                .hostname_override
                .clone()
                .or(config.hostname_override.clone()),
            cluster_cidrs: parse_cluster_cidrs(cidr_text.as_deref().unwrap_or(""))?,
            masquerade_all: self
                .masquerade_all
                .or(section.masquerade_all)
                .unwrap_or(false),
            nodeport_addresses,
            // nftables mode does not support NodePorts on 127.0.0.1 (as kube-proxy).
            localhost_nodeports: mode == ProxyMode::Iptables
                && self
                    .iptables_localhost_nodeports
                    .or(config.iptables.localhost_node_ports)
                    .unwrap_or(true),
            sync_period,
            full_sync_period,
            min_sync_period,
            masquerade_mark: 1 << bit,
            iptables_backend: self.iptables_backend,
            healthz_bind_address: bind_address(
                "--healthz-bind-address",
                self.healthz_bind_address
                    .as_deref()
                    .or(config.healthz_bind_address.as_deref()),
                crate::servers::DEFAULT_HEALTHZ_BIND_ADDRESS,
            )?,
            ipvs_scheduler: self
                .ipvs_scheduler
                .clone()
                .or(config.ipvs.scheduler.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "rr".to_owned()),
            ipvs_strict_arp: self
                .ipvs_strict_arp
                .or(config.ipvs.strict_arp)
                .unwrap_or(false),
            ipvs_exclude_cidrs: match (&self.ipvs_exclude_cidrs, &ipvs.exclude_cidrs) {
                (Some(flag), _) => parse_exclude_cidrs("--ipvs-exclude-cidrs", flag.split(','))?,
                (None, Some(list)) => parse_exclude_cidrs(
                    "ipvs.excludeCIDRs in --config",
                    list.iter().map(String::as_str),
                )?,
                (None, None) => Vec::new(),
            },
            ipvs_tcp_timeout: timeout(
                "--ipvs-tcp-timeout",
                &self.ipvs_tcp_timeout,
                "ipvs.tcpTimeout",
                &ipvs.tcp_timeout,
            )?,
            ipvs_tcp_fin_timeout: timeout(
                "--ipvs-tcpfin-timeout",
                &self.ipvs_tcpfin_timeout,
                "ipvs.tcpFinTimeout",
                &ipvs.tcp_fin_timeout,
            )?,
            ipvs_udp_timeout: timeout(
                "--ipvs-udp-timeout",
                &self.ipvs_udp_timeout,
                "ipvs.udpTimeout",
                &ipvs.udp_timeout,
            )?,
            userspace_scheduler: self
                .userspace_scheduler
                .clone()
                .unwrap_or_else(|| "random".to_owned()),
            userspace_masquerade_address: self.userspace_masquerade_address,
            metrics_bind_address: bind_address(
                "--metrics-bind-address",
                self.metrics_bind_address
                    .as_deref()
                    .or(config.metrics_bind_address.as_deref()),
                crate::servers::DEFAULT_METRICS_BIND_ADDRESS,
            )?,
        })
    }
}

/// The first given value of `sources` (`(name, value)`, highest precedence first; an
/// empty name marks a source that does not apply) parsed as a Go duration, else `default`.
/// Errors name the source and the value.
fn duration_setting(
    sources: &[(&str, &Option<String>)],
    default: Duration,
) -> anyhow::Result<Duration> {
    let given = sources
        .iter()
        .filter(|(name, _)| !name.is_empty())
        .find_map(|(name, value)| value.as_ref().map(|v| (*name, v)));
    match given {
        Some((name, text)) => parse_duration(text).map_err(|e| anyhow::anyhow!("{name}: {e}")),
        None => Ok(default),
    }
}

/// An IPVS connection timeout (`--ipvs-tcp-timeout` and co.) from the first given of
/// `sources`: a Go duration, at most `u32::MAX` seconds, cut to whole seconds (as upstream,
/// which hands the kernel seconds). Zero (the default) leaves the kernel's value.
fn ipvs_timeout(sources: &[(&str, &Option<String>)]) -> anyhow::Result<Duration> {
    let duration = duration_setting(sources, Duration::ZERO)?;
    let name = sources
        .iter()
        .find(|(_, v)| v.is_some())
        .map_or("", |(name, _)| *name);
    anyhow::ensure!(
        duration.as_secs() <= u64::from(u32::MAX),
        "{name}: {duration:?} is too long for an IPVS timeout (at most {} seconds)",
        u32::MAX
    );
    if duration.subsec_nanos() != 0 {
        tracing::warn!(
            setting = name,
            ?duration,
            "IPVS timeouts are whole seconds: the fraction is dropped"
        );
    }
    Ok(Duration::from_secs(duration.as_secs()))
}

/// `--ipvs-exclude-cidrs` / `ipvs.excludeCIDRs`: CIDRs only (as upstream's validation);
/// empty items are skipped. `source` names the flag or field in errors.
pub fn parse_exclude_cidrs<'a>(
    source: &str,
    items: impl IntoIterator<Item = &'a str>,
) -> anyhow::Result<Vec<IpNet>> {
    items
        .into_iter()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<IpNet>().map(|net| net.trunc()).map_err(|_| {
                anyhow::anyhow!("{source}: {s:?} is not a CIDR (expected e.g. 10.0.0.0/8)")
            })
        })
        .collect()
}

/// `--cluster-cidr`: comma-separated, at most one per family.
pub fn parse_cluster_cidrs(text: &str) -> anyhow::Result<Vec<IpNet>> {
    let mut cidrs: Vec<IpNet> = Vec::new();
    for part in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let cidr: IpNet = part
            .parse()
            .map_err(|_| anyhow::anyhow!("--cluster-cidr: {part:?} is not a CIDR"))?;
        let family = IpFamily::of_net(&cidr);
        anyhow::ensure!(
            !cidrs.iter().any(|c| IpFamily::of_net(c) == family),
            "--cluster-cidr: more than one {family} CIDR ({part})"
        );
        cidrs.push(cidr.trunc());
    }
    Ok(cidrs)
}

/// `--nodeport-addresses`: CIDRs, or `primary` alone.
pub fn parse_nodeport_addresses(items: &[String]) -> anyhow::Result<NodePortAddressSpec> {
    let items: Vec<&str> = items
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect();
    if items.is_empty() {
        return Ok(NodePortAddressSpec::All);
    }
    if items.contains(&"primary") {
        anyhow::ensure!(
            items.len() == 1,
            "--nodeport-addresses: `primary` cannot be combined with CIDRs"
        );
        return Ok(NodePortAddressSpec::Primary);
    }
    let cidrs = items
        .iter()
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| anyhow::anyhow!("--nodeport-addresses: {s:?} is not a CIDR"))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(NodePortAddressSpec::Cidrs(cidrs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> ProxyArgs {
        let mut argv = vec!["kproxy"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).expect("valid flags").proxy
    }

    #[test]
    fn defaults_match_kube_proxy() {
        let s = args(&[]).settings().expect("settings");
        assert_eq!(s.mode, ProxyMode::Iptables);
        assert_eq!(s.sync_period, Duration::from_secs(30));
        assert_eq!(s.min_sync_period, Duration::from_secs(1));
        assert_eq!(s.masquerade_mark, 0x4000);
        assert!(s.localhost_nodeports);
        assert!(!s.masquerade_all);
        assert_eq!(s.nodeport_addresses, NodePortAddressSpec::All);
    }

    #[test]
    fn flags_win_over_config_file() {
        let dir = std::env::temp_dir().join(format!("kproxy-cli-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("config.yaml");
        std::fs::write(
            &file,
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n\
             clusterCIDR: 10.244.0.0/16\niptables:\n  masqueradeAll: true\n  syncPeriod: 1m\n",
        )
        .expect("write config");
        let config = file.to_string_lossy().into_owned();
        let s = args(&[
            "--config",
            &config,
            "--masquerade-all=false",
            "--iptables-min-sync-period",
            "250ms",
        ])
        .settings()
        .expect("settings");
        std::fs::remove_dir_all(&dir).ok();
        assert!(!s.masquerade_all, "flag must win");
        assert_eq!(s.sync_period, Duration::from_secs(60), "config applies");
        assert_eq!(s.min_sync_period, Duration::from_millis(250));
        assert_eq!(
            s.cluster_cidrs,
            vec!["10.244.0.0/16".parse::<IpNet>().expect("cidr")]
        );
    }

    #[test]
    fn rejects_bad_values_with_the_flag_name() {
        let err = args(&["--cluster-cidr", "10.0.0.0/8,10.1.0.0/16"])
            .settings()
            .expect_err("two v4");
        assert!(err.to_string().contains("--cluster-cidr"), "{err}");
        let err = args(&["--nodeport-addresses", "primary,10.0.0.0/8"])
            .settings()
            .expect_err("mix");
        assert!(err.to_string().contains("primary"), "{err}");
        let err = args(&["--iptables-sync-period", "soon"])
            .settings()
            .expect_err("duration");
        assert!(err.to_string().contains("sync period"), "{err}");
        assert!(Cli::try_parse_from(["kproxy", "--proxy-mode", "bogus"]).is_err());
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

    #[test]
    fn nodeport_address_forms() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse_nodeport_addresses(&v(&["primary"])).expect("ok"),
            NodePortAddressSpec::Primary
        );
        assert!(matches!(
            parse_nodeport_addresses(&v(&["192.168.0.0/16", "127.0.0.1"])).expect("ok"),
            NodePortAddressSpec::Cidrs(c) if c.len() == 2
        ));
        assert!(parse_nodeport_addresses(&v(&["nonsense"])).is_err());
    }

    /// Settings from `flags` over a config file with `body` (after apiVersion/kind).
    fn settings_with_config(name: &str, body: &str, flags: &[&str]) -> anyhow::Result<Settings> {
        let dir = std::env::temp_dir().join(format!("kproxy-cli-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("config.yaml");
        let text = format!(
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n{body}"
        );
        std::fs::write(&file, text).expect("write config");
        let config = file.to_string_lossy().into_owned();
        let mut argv = vec!["--config", config.as_str()];
        argv.extend_from_slice(flags);
        let result = args(&argv).settings();
        std::fs::remove_dir_all(&dir).ok();
        result
    }

    const IPVS_CONFIG: &str = "mode: ipvs\nipvs:\n  syncPeriod: 45s\n  minSyncPeriod: 2s\n  \
        excludeCIDRs: [192.168.100.0/24, 'fd00:1::/64']\n  tcpTimeout: 900s\n  \
        tcpFinTimeout: 2m\n  udpTimeout: 0s\niptables:\n  syncPeriod: 1m\n";

    fn net(s: &str) -> IpNet {
        s.parse().expect("cidr literal")
    }

    #[test]
    fn ipvs_defaults() {
        let s = args(&["--proxy-mode", "ipvs"])
            .settings()
            .expect("settings");
        assert!(s.ipvs_exclude_cidrs.is_empty());
        assert_eq!(s.ipvs_tcp_timeout, Duration::ZERO);
        assert_eq!(s.ipvs_tcp_fin_timeout, Duration::ZERO);
        assert_eq!(s.ipvs_udp_timeout, Duration::ZERO);
        assert_eq!(s.sync_period, Duration::from_secs(30));
        assert_eq!(s.min_sync_period, Duration::from_secs(1));
    }

    #[test]
    fn ipvs_config_fields_apply_in_ipvs_mode() {
        let s = settings_with_config("ipvs-config", IPVS_CONFIG, &[]).expect("settings");
        assert_eq!(s.mode, ProxyMode::Ipvs);
        assert_eq!(s.sync_period, Duration::from_secs(45), "ipvs.syncPeriod");
        assert_eq!(
            s.min_sync_period,
            Duration::from_secs(2),
            "ipvs.minSyncPeriod"
        );
        assert_eq!(
            s.ipvs_exclude_cidrs,
            vec![net("192.168.100.0/24"), net("fd00:1::/64")]
        );
        assert_eq!(s.ipvs_tcp_timeout, Duration::from_secs(900));
        assert_eq!(s.ipvs_tcp_fin_timeout, Duration::from_secs(120));
        assert_eq!(s.ipvs_udp_timeout, Duration::ZERO);
        // /configz shows them.
        let ipvs = &s.to_json()["ipvs"];
        assert_eq!(
            ipvs["excludeCIDRs"],
            serde_json::json!(["192.168.100.0/24", "fd00:1::/64"])
        );
        assert_eq!(ipvs["tcpFinTimeout"], "120s");
        assert_eq!(ipvs["scheduler"], "rr");
    }

    #[test]
    fn ipvs_flags_win_over_ipvs_config_fields() {
        let s = settings_with_config(
            "ipvs-flags",
            IPVS_CONFIG,
            &[
                "--ipvs-sync-period",
                "10s",
                "--ipvs-min-sync-period",
                "500ms",
                "--ipvs-exclude-cidrs",
                "10.1.0.0/16, 10.2.3.0/24",
                "--ipvs-tcp-timeout",
                "1h",
                "--ipvs-tcpfin-timeout",
                "30s",
                "--ipvs-udp-timeout",
                "300s",
                "--iptables-sync-period",
                "5s",
            ],
        )
        .expect("settings");
        assert_eq!(s.sync_period, Duration::from_secs(10));
        assert_eq!(s.min_sync_period, Duration::from_millis(500));
        assert_eq!(
            s.ipvs_exclude_cidrs,
            vec![net("10.1.0.0/16"), net("10.2.3.0/24")]
        );
        assert_eq!(s.ipvs_tcp_timeout, Duration::from_secs(3600));
        assert_eq!(s.ipvs_tcp_fin_timeout, Duration::from_secs(30));
        assert_eq!(s.ipvs_udp_timeout, Duration::from_secs(300));
        // The generic flag wins over the mode's; an empty list clears the config's.
        let s = settings_with_config(
            "ipvs-generic",
            IPVS_CONFIG,
            &[
                "--sync-period",
                "20s",
                "--ipvs-sync-period",
                "10s",
                "--ipvs-exclude-cidrs=",
            ],
        )
        .expect("settings");
        assert_eq!(s.sync_period, Duration::from_secs(20));
        assert!(s.ipvs_exclude_cidrs.is_empty());
    }

    #[test]
    fn mode_period_flags_apply_only_in_their_mode() {
        let s = args(&["--ipvs-sync-period", "10s", "--ipvs-min-sync-period", "3s"])
            .settings()
            .expect("settings");
        assert_eq!(s.mode, ProxyMode::Iptables);
        assert_eq!(s.sync_period, Duration::from_secs(30));
        assert_eq!(s.min_sync_period, Duration::from_secs(1));
        let s = args(&["--proxy-mode", "ipvs", "--iptables-sync-period", "10s"])
            .settings()
            .expect("settings");
        assert_eq!(s.sync_period, Duration::from_secs(30));
        // In iptables mode the iptables section applies, not the ipvs one.
        let s = settings_with_config("ipt-mode", IPVS_CONFIG, &["--proxy-mode", "iptables"])
            .expect("settings");
        assert_eq!(s.sync_period, Duration::from_secs(60));
    }

    #[test]
    fn ipvs_timeouts_are_whole_seconds() {
        let s = args(&["--ipvs-tcp-timeout", "1500ms", "--ipvs-udp-timeout", "0"])
            .settings()
            .expect("settings");
        assert_eq!(s.ipvs_tcp_timeout, Duration::from_secs(1));
        assert_eq!(s.ipvs_udp_timeout, Duration::ZERO);
        let err = args(&["--ipvs-udp-timeout", "2000000h"])
            .settings()
            .expect_err("too long");
        assert!(err.to_string().contains("--ipvs-udp-timeout"), "{err}");
    }

    #[test]
    fn rejects_bad_ipvs_values_naming_flag_and_value() {
        let cases: [(&[&str], &[&str]); 6] = [
            (
                &["--ipvs-exclude-cidrs", "10.0.0.0/8,10.0.0.1"],
                &["--ipvs-exclude-cidrs", "10.0.0.1"],
            ),
            (
                &["--ipvs-exclude-cidrs", "10.0.0.0/33"],
                &["--ipvs-exclude-cidrs", "10.0.0.0/33"],
            ),
            (
                &["--ipvs-tcp-timeout", "soon"],
                &["--ipvs-tcp-timeout", "soon"],
            ),
            (
                &["--ipvs-tcpfin-timeout=-5s"],
                &["--ipvs-tcpfin-timeout", "-5s"],
            ),
            (
                &["--proxy-mode", "ipvs", "--ipvs-sync-period", "1x"],
                &["--ipvs-sync-period", "1x"],
            ),
            (
                &["--proxy-mode", "ipvs", "--ipvs-min-sync-period", "later"],
                &["--ipvs-min-sync-period", "later"],
            ),
        ];
        for (flags, wanted) in cases {
            let err = args(flags).settings().expect_err("invalid value");
            for w in wanted {
                assert!(err.to_string().contains(w), "{flags:?}: {err}");
            }
        }
        let err = settings_with_config("bad-cidr", "ipvs:\n  excludeCIDRs: [nonsense]\n", &[])
            .expect_err("bad config cidr");
        assert!(err.to_string().contains("ipvs.excludeCIDRs"), "{err}");
        assert!(err.to_string().contains("nonsense"), "{err}");
        let err = settings_with_config("bad-udp", "ipvs:\n  udpTimeout: forever\n", &[])
            .expect_err("bad config timeout");
        assert!(err.to_string().contains("ipvs.udpTimeout"), "{err}");
        assert!(err.to_string().contains("forever"), "{err}");
    }
}
