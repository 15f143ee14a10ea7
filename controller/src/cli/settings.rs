//! The merge of flags and `--config` into [`Settings`], as upstream's `Options.Complete`:
//! without `--config` the flags set the fields of a defaulted `KubeProxyConfiguration`;
//! with it the file (defaulted) replaces them, and only `--hostname-override`, `--master`,
//! the logging flags and kproxy's own flags apply on top. Then upstream's platform
//! defaults and validation, and the values the rest of kproxy reads.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use kproxy_dataplane::iptables::apply::BackendChoice;
use serde_json::{Value, json};

use super::ProxyMode;
use super::flags::ProxyArgs;
use crate::config::{
    self, GoDuration, KubeProxyConfiguration, NodePortAddresses, format_duration, parse_duration,
};

/// How pod traffic is told apart from other traffic (`detectLocalMode`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DetectLocal {
    /// From the cluster CIDRs (`clusterCIDR`), at most one per family.
    ClusterCidr(Vec<IpNet>),
    /// From this Node's `spec.podCIDRs`.
    NodeCidr,
    /// Arriving on this bridge.
    BridgeInterface(String),
    /// Arriving on an interface whose name starts with this.
    InterfaceNamePrefix(String),
}

/// The conntrack sysctls to set at start (`None`/zero: leave the kernel's value).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConntrackSettings {
    /// `nf_conntrack_max` per CPU (0: leave the limit alone).
    pub max_per_core: u32,
    /// The least `nf_conntrack_max`.
    pub min: u32,
    /// `nf_conntrack_tcp_timeout_established`.
    pub tcp_established_timeout: Duration,
    /// `nf_conntrack_tcp_timeout_close_wait`.
    pub tcp_close_wait_timeout: Duration,
    /// `nf_conntrack_tcp_be_liberal`.
    pub tcp_be_liberal: bool,
    /// `nf_conntrack_udp_timeout`.
    pub udp_timeout: Duration,
    /// `nf_conntrack_udp_timeout_stream`.
    pub udp_stream_timeout: Duration,
}

/// Every setting, merged and checked.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The effective `KubeProxyConfiguration` (defaulted, platform defaults applied).
    pub config: KubeProxyConfiguration,
    /// The `--config` file, if any.
    pub config_file: Option<PathBuf>,
    /// Proxy mode.
    pub mode: ProxyMode,
    /// Manifest path (`None`: watch the Kubernetes API).
    pub manifests: Option<PathBuf>,
    /// The kubeconfig (`clientConnection.kubeconfig`, `--kubeconfig`).
    pub kubeconfig: Option<PathBuf>,
    /// `--master`.
    pub master: Option<String>,
    /// API requests per second (`clientConnection.qps`).
    pub api_qps: f32,
    /// API request burst (`clientConnection.burst`).
    pub api_burst: u32,
    /// Node name override (trimmed, lower-cased).
    pub hostname_override: Option<String>,
    /// Pod CIDRs from `clusterCIDR`, at most one per family.
    pub cluster_cidrs: Vec<IpNet>,
    /// How pod traffic is detected.
    pub detect_local: DetectLocal,
    /// `masqueradeAll` of the mode.
    pub masquerade_all: bool,
    /// NodePort addresses.
    pub nodeport_addresses: NodePortAddresses,
    /// NodePorts on 127.0.0.1 (iptables mode only).
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
    /// The health server's address (`None`: disabled by `--healthz-port=0`).
    pub healthz_bind_address: Option<SocketAddr>,
    /// The metrics server's address.
    pub metrics_bind_address: Option<SocketAddr>,
    /// Exit when a server cannot bind (else retry every 5 s).
    pub bind_address_hard_fail: bool,
    /// Conntrack sysctls.
    pub conntrack: ConntrackSettings,
    /// The process's `oom_score_adj`.
    pub oom_score_adj: Option<i32>,
    /// IPVS scheduler.
    pub ipvs_scheduler: String,
    /// IPVS strict ARP.
    pub ipvs_strict_arp: bool,
    /// IPVS excluded CIDRs.
    pub ipvs_exclude_cidrs: Vec<IpNet>,
    /// IPVS TCP timeout (whole seconds; zero: leave the kernel's value).
    pub ipvs_tcp_timeout: Duration,
    /// IPVS TCP FIN timeout (whole seconds; zero: leave the kernel's value).
    pub ipvs_tcp_fin_timeout: Duration,
    /// IPVS UDP timeout (whole seconds; zero: leave the kernel's value).
    pub ipvs_udp_timeout: Duration,
    /// `--userspace-scheduler`.
    pub userspace_scheduler: String,
    /// `--userspace-masquerade-address`.
    pub userspace_masquerade_address: Option<std::net::Ipv4Addr>,
    /// JSON logs (`logging.format: json`).
    pub log_json: bool,
    /// Log verbosity (`-v`, `logging.verbosity`).
    pub verbosity: u32,
    /// Warnings met while merging (flags ignored, fields unknown, features kproxy does not
    /// have), to be logged once logging is set up.
    pub warnings: Vec<String>,
}

impl Settings {
    /// `/configz`: upstream's effective configuration under its group, and kproxy's own
    /// settings under `kproxy`.
    pub fn configz(&self) -> Value {
        json!({
            config::GROUP: config::configz(&self.config),
            "kproxy": {
                "manifests": self.manifests.as_ref().map(|p| p.display().to_string()),
                "master": self.master,
                "syncPeriod": format_duration(self.sync_period),
                "minSyncPeriod": format_duration(self.min_sync_period),
                "fullSyncPeriod": format_duration(self.full_sync_period),
                "iptablesBackend": format!("{:?}", self.iptables_backend).to_lowercase(),
                "userspace": {
                    "scheduler": self.userspace_scheduler,
                    "masqueradeAddress": self.userspace_masquerade_address,
                },
            },
        })
    }
}

impl ProxyArgs {
    /// Merges flags and the config file into checked settings.
    pub fn settings(&self) -> anyhow::Result<Settings> {
        let mut warnings = Vec::new();
        let mut config = match &self.config {
            Some(path) => {
                let decoded = config::load(path)?;
                if !decoded.unknown_fields.is_empty() {
                    warnings.push(format!(
                        "config file {}: unknown fields ignored (as kube-proxy's lenient decoding): {}",
                        path.display(),
                        decoded.unknown_fields.join(", ")
                    ));
                }
                let ignored = self.config_flags_given();
                if !ignored.is_empty() {
                    warnings.push(format!(
                        "flags ignored because --config is given, as kube-proxy does (set them in the file): {}",
                        ignored.join(", ")
                    ));
                }
                let mut config = decoded.config;
                config.set_defaults();
                config
            }
            None => self.flags_config()?,
        };
        if let Some(name) = &self.hostname_override {
            let name = name.trim();
            anyhow::ensure!(
                !name.is_empty(),
                "--hostname-override: empty after trimming"
            );
            config.hostname_override = name.to_lowercase();
        }
        if let Some(format) = &self.logging_format {
            config.logging.format = format.clone();
        }
        if let Some(v) = self.verbosity {
            config.logging.verbosity = u32::from(v);
        }
        // kproxy's own period flags win, and show in the configuration.
        let ours = |flag: &str, value: &Option<String>| {
            value
                .as_deref()
                .map(|text| parse_duration(text).map_err(|e| anyhow::anyhow!("{flag}: {e}")))
                .transpose()
        };
        let sync = ours("--sync-period", &self.sync_period)?;
        let min_sync = ours("--min-sync-period", &self.min_sync_period)?;
        config.apply_platform_defaults();
        config.set_sync_periods(sync, min_sync);
        let errors = config::validate(&config);
        anyhow::ensure!(
            errors.is_empty(),
            "invalid configuration{}: {}",
            self.config
                .as_ref()
                .map(|p| format!(" (--config {})", p.display()))
                .unwrap_or_default(),
            errors.join("; ")
        );
        let unused = self.unused_flags_given();
        if !unused.is_empty() {
            warnings.push(format!(
                "flags accepted for compatibility and not used by kproxy: {}",
                unused.join(", ")
            ));
        }
        warnings.extend(unimplemented(&config));
        self.finish(config, warnings)
    }

    /// The configuration the flags build (no `--config`): upstream's defaults with every
    /// given flag applied, as upstream's flag parsing into the defaulted object and its
    /// `processV1Alpha1Flags`.
    fn flags_config(&self) -> anyhow::Result<KubeProxyConfiguration> {
        let mut config = KubeProxyConfiguration::default();
        config.set_defaults();
        // Upstream's flag defaults are its internal defaults: 30s/1s whatever the mode.
        config.nftables.sync_period = config.iptables.sync_period;
        config.nftables.min_sync_period = config.iptables.min_sync_period;
        config.ipvs.sync_period = config.iptables.sync_period;
        config.ipvs.min_sync_period = config.iptables.min_sync_period;
        let duration = |flag: &str, value: &Option<String>| -> anyhow::Result<Option<GoDuration>> {
            value
                .as_deref()
                .map(|text| {
                    parse_duration(text)
                        .map(GoDuration)
                        .map_err(|e| anyhow::anyhow!("{flag}: {e}"))
                })
                .transpose()
        };
        if let Some(mode) = &self.proxy_mode {
            config.mode = mode.clone();
        }
        let client = &mut config.client_connection;
        set(
            &mut client.kubeconfig,
            self.kubeconfig.as_ref().map(|p| p.display().to_string()),
        );
        set(&mut client.content_type, self.kube_api_content_type.clone());
        set(&mut client.qps, self.kube_api_qps);
        set(&mut client.burst, self.kube_api_burst);
        set(&mut config.bind_address, self.bind_address.clone());
        // An empty address leaves the default (upstream's IPPortVar ignores "").
        set(
            &mut config.healthz_bind_address,
            self.healthz_bind_address.clone().filter(|s| !s.is_empty()),
        );
        set(
            &mut config.metrics_bind_address,
            self.metrics_bind_address.clone().filter(|s| !s.is_empty()),
        );
        set(
            &mut config.bind_address_hard_fail,
            self.bind_address_hard_fail,
        );
        set(&mut config.enable_profiling, self.profiling);
        set(
            &mut config.show_hidden_metrics_for_version,
            self.show_hidden_metrics_for_version.clone(),
        );
        if let Some(gates) = &self.feature_gates {
            config.feature_gates = feature_gates(gates)?;
        }
        set(&mut config.cluster_cidr, self.cluster_cidr.clone());
        set(
            &mut config.detect_local_mode,
            self.detect_local_mode.clone(),
        );
        set(
            &mut config.detect_local.bridge_interface,
            self.pod_bridge_interface.clone(),
        );
        set(
            &mut config.detect_local.interface_name_prefix,
            self.pod_interface_name_prefix.clone(),
        );
        if let Some(value) = self.masquerade_all {
            config.set_masquerade_all(value);
        }
        if let Some(list) = &self.nodeport_addresses {
            config.node_port_addresses = Some(split_list(list));
        }
        if let Some(value) = self.iptables_localhost_nodeports {
            config.iptables.localhost_node_ports = Some(value);
        }
        if let Some(bit) = self.iptables_masquerade_bit {
            config.iptables.masquerade_bit = Some(bit);
        }
        // The mode's period flags (processV1Alpha1Flags): --ipvs-* in IPVS mode,
        // --iptables-* in every other mode.
        let (sync_flag, min_sync_flag) = if config.mode == "ipvs" {
            (
                ("--ipvs-sync-period", &self.ipvs_sync_period),
                ("--ipvs-min-sync-period", &self.ipvs_min_sync_period),
            )
        } else {
            (
                ("--iptables-sync-period", &self.iptables_sync_period),
                ("--iptables-min-sync-period", &self.iptables_min_sync_period),
            )
        };
        let sync = duration(sync_flag.0, sync_flag.1)?;
        let min_sync = duration(min_sync_flag.0, min_sync_flag.1)?;
        config.set_sync_periods(sync.map(|d| d.0), min_sync.map(|d| d.0));
        let ipvs = &mut config.ipvs;
        set(&mut ipvs.scheduler, self.ipvs_scheduler.clone());
        if let Some(list) = &self.ipvs_exclude_cidrs {
            ipvs.exclude_cidrs = Some(split_list(list));
        }
        set(&mut ipvs.strict_arp, self.ipvs_strict_arp);
        set(
            &mut ipvs.tcp_timeout,
            duration("--ipvs-tcp-timeout", &self.ipvs_tcp_timeout)?,
        );
        set(
            &mut ipvs.tcp_fin_timeout,
            duration("--ipvs-tcpfin-timeout", &self.ipvs_tcpfin_timeout)?,
        );
        set(
            &mut ipvs.udp_timeout,
            duration("--ipvs-udp-timeout", &self.ipvs_udp_timeout)?,
        );
        let conntrack = &mut config.conntrack;
        if let Some(n) = self.conntrack_max_per_core {
            conntrack.max_per_core = Some(n);
        }
        if let Some(n) = self.conntrack_min {
            conntrack.min = Some(n);
        }
        if let Some(d) = duration(
            "--conntrack-tcp-timeout-established",
            &self.conntrack_tcp_timeout_established,
        )? {
            conntrack.tcp_established_timeout = Some(d);
        }
        if let Some(d) = duration(
            "--conntrack-tcp-timeout-close-wait",
            &self.conntrack_tcp_timeout_close_wait,
        )? {
            conntrack.tcp_close_wait_timeout = Some(d);
        }
        set(&mut conntrack.tcp_be_liberal, self.conntrack_tcp_be_liberal);
        set(
            &mut conntrack.udp_timeout,
            duration("--conntrack-udp-timeout", &self.conntrack_udp_timeout)?,
        );
        set(
            &mut conntrack.udp_stream_timeout,
            duration(
                "--conntrack-udp-timeout-stream",
                &self.conntrack_udp_timeout_stream,
            )?,
        );
        if let Some(adj) = self.oom_score_adj {
            config.oom_score_adj = Some(adj);
        }
        set(
            &mut config.config_sync_period,
            duration("--config-sync-period", &self.config_sync_period)?,
        );
        // The deprecated ports (addressFromDeprecatedFlags, defaults 10256 and 10249): 0
        // disables, else the port joins an address that has none.
        let healthz_port = self
            .healthz_port
            .unwrap_or(config::v1alpha1::HEALTHZ_PORT.into());
        config.healthz_bind_address =
            port_flag(&config.healthz_bind_address, healthz_port, "--healthz-port")?;
        let metrics_port = self
            .metrics_port
            .unwrap_or(config::v1alpha1::METRICS_PORT.into());
        config.metrics_bind_address =
            port_flag(&config.metrics_bind_address, metrics_port, "--metrics-port")?;
        Ok(config)
    }

    /// The settings the rest of kproxy reads, from the checked configuration.
    fn finish(
        &self,
        config: KubeProxyConfiguration,
        warnings: Vec<String>,
    ) -> anyhow::Result<Settings> {
        let mode = match config.mode.as_str() {
            "nftables" => ProxyMode::Nftables,
            "ipvs" => ProxyMode::Ipvs,
            "userspace" => ProxyMode::Userspace,
            _ => ProxyMode::Iptables,
        };
        let (sync_period, min_sync_period) = config.sync_periods();
        let full_sync_period = match &self.full_sync_period {
            Some(text) => {
                parse_duration(text).map_err(|e| anyhow::anyhow!("--full-sync-period: {e}"))?
            }
            None => Duration::from_secs(3600),
        };
        let cluster_cidrs = config::cluster_cidrs(&config.cluster_cidr)
            .map_err(|e| anyhow::anyhow!("clusterCIDR: {e}"))?;
        let detect_local = match config.detect_local_mode.as_str() {
            "NodeCIDR" => DetectLocal::NodeCidr,
            "BridgeInterface" => {
                DetectLocal::BridgeInterface(config.detect_local.bridge_interface.clone())
            }
            "InterfaceNamePrefix" => {
                DetectLocal::InterfaceNamePrefix(config.detect_local.interface_name_prefix.clone())
            }
            _ => DetectLocal::ClusterCidr(cluster_cidrs.clone()),
        };
        anyhow::ensure!(
            mode != ProxyMode::Userspace
                || matches!(
                    detect_local,
                    DetectLocal::ClusterCidr(_) | DetectLocal::NodeCidr
                ),
            "detectLocalMode {}: userspace mode tells pod traffic by source address only (ClusterCIDR or NodeCIDR); \
             its forwarder sees packets after they were routed into its TUN device",
            config.detect_local_mode
        );
        let nodeport_addresses =
            config::node_port_addresses(config.node_port_addresses.as_deref().unwrap_or(&[]))
                .map_err(|e| anyhow::anyhow!("nodePortAddresses: {e}"))?;
        let ipvs = &config.ipvs;
        let exclude = ipvs
            .exclude_cidrs
            .iter()
            .flatten()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty());
        let ipvs_exclude_cidrs = exclude
            .map(|s| {
                s.parse::<IpNet>().map(|n| n.trunc()).map_err(|_| {
                    anyhow::anyhow!(
                        "ipvs.excludeCIDRs: {s:?} is not a CIDR (expected e.g. 10.0.0.0/8)"
                    )
                })
            })
            .collect::<anyhow::Result<_>>()?;
        let conntrack = &config.conntrack;
        let non_negative =
            |value: Option<i32>| value.and_then(|v| u32::try_from(v).ok()).unwrap_or(0);
        let kubeconfig = Some(&config.client_connection.kubeconfig)
            .filter(|k| !k.is_empty())
            .map(PathBuf::from);
        Ok(Settings {
            config_file: self.config.clone(),
            mode,
            manifests: self.manifests.clone(),
            kubeconfig,
            master: self.master.clone().filter(|m| !m.is_empty()),
            api_qps: config.client_connection.qps,
            api_burst: u32::try_from(config.client_connection.burst).unwrap_or(0),
            hostname_override: Some(config.hostname_override.clone()).filter(|h| !h.is_empty()),
            cluster_cidrs,
            detect_local,
            masquerade_all: config.masquerade_all(),
            nodeport_addresses,
            // nftables mode does not support NodePorts on 127.0.0.1 (as kube-proxy).
            localhost_nodeports: mode == ProxyMode::Iptables
                && config.iptables.localhost_node_ports.unwrap_or(true),
            sync_period,
            full_sync_period,
            min_sync_period,
            masquerade_mark: 1 << config.masquerade_bit(),
            iptables_backend: self.iptables_backend,
            healthz_bind_address: server_address(
                "healthzBindAddress",
                &config.healthz_bind_address,
            )?,
            metrics_bind_address: server_address(
                "metricsBindAddress",
                &config.metrics_bind_address,
            )?,
            bind_address_hard_fail: config.bind_address_hard_fail,
            conntrack: ConntrackSettings {
                max_per_core: non_negative(conntrack.max_per_core),
                min: non_negative(conntrack.min),
                tcp_established_timeout: conntrack.tcp_established_timeout.unwrap_or_default().0,
                tcp_close_wait_timeout: conntrack.tcp_close_wait_timeout.unwrap_or_default().0,
                tcp_be_liberal: conntrack.tcp_be_liberal,
                udp_timeout: conntrack.udp_timeout.0,
                udp_stream_timeout: conntrack.udp_stream_timeout.0,
            },
            oom_score_adj: config.oom_score_adj,
            ipvs_scheduler: Some(ipvs.scheduler.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "rr".into()),
            ipvs_strict_arp: ipvs.strict_arp,
            ipvs_exclude_cidrs,
            ipvs_tcp_timeout: ipvs_timeout("ipvs.tcpTimeout", ipvs.tcp_timeout.0)?,
            ipvs_tcp_fin_timeout: ipvs_timeout("ipvs.tcpFinTimeout", ipvs.tcp_fin_timeout.0)?,
            ipvs_udp_timeout: ipvs_timeout("ipvs.udpTimeout", ipvs.udp_timeout.0)?,
            userspace_scheduler: self
                .userspace_scheduler
                .clone()
                .unwrap_or_else(|| "random".to_owned()),
            userspace_masquerade_address: self.userspace_masquerade_address,
            log_json: config.logging.format == "json",
            verbosity: config.logging.verbosity,
            warnings,
            config,
        })
    }
}

/// Sets `field` when a flag gave a value.
fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *field = value;
    }
}

/// A comma-separated flag value as a list (upstream's string slices).
fn split_list(text: &str) -> Vec<String> {
    text.split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// `--feature-gates A=true,B=false`.
fn feature_gates(text: &str) -> anyhow::Result<std::collections::BTreeMap<String, bool>> {
    split_list(text)
        .into_iter()
        .map(|item| {
            let (name, value) = item
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--feature-gates: {item:?} is not NAME=BOOL"))?;
            let value = value
                .trim()
                .parse::<bool>()
                .map_err(|_| anyhow::anyhow!("--feature-gates: {item:?} is not NAME=BOOL"))?;
            Ok((name.trim().to_owned(), value))
        })
        .collect()
}

/// A deprecated port flag over an address (upstream's `addressFromDeprecatedFlags`).
fn port_flag(address: &str, port: i32, flag: &str) -> anyhow::Result<String> {
    if port == 0 {
        return Ok(String::new());
    }
    let port =
        u16::try_from(port).map_err(|_| anyhow::anyhow!("{flag}: {port} is not in 1-65535"))?;
    Ok(config::v1alpha1::append_port_if_needed(address, port))
}

/// A validated server address (`None` when empty: disabled).
fn server_address(field: &str, value: &str) -> anyhow::Result<Option<SocketAddr>> {
    if value.is_empty() {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .map_err(|_| anyhow::anyhow!("{field}: {value:?} is not IP:PORT"))
}

/// An IPVS connection timeout: at most `u32::MAX` seconds, cut to whole seconds (as
/// upstream, which hands the kernel seconds).
fn ipvs_timeout(field: &str, duration: Duration) -> anyhow::Result<Duration> {
    anyhow::ensure!(
        duration.as_secs() <= u64::from(u32::MAX),
        "{field}: {} is too long for an IPVS timeout (at most {} seconds)",
        format_duration(duration),
        u32::MAX
    );
    Ok(Duration::from_secs(duration.as_secs()))
}

/// Warnings for settings kproxy accepts and does not implement.
fn unimplemented(config: &KubeProxyConfiguration) -> Vec<String> {
    let mut warnings = Vec::new();
    if !config.feature_gates.is_empty() {
        let names: Vec<&str> = config.feature_gates.keys().map(String::as_str).collect();
        warnings.push(format!(
            "featureGates are upstream's and have no effect on kproxy: {}",
            names.join(", ")
        ));
    }
    if config.enable_profiling {
        warnings.push("enableProfiling: kproxy has no /debug/pprof".into());
    }
    if !config.show_hidden_metrics_for_version.is_empty() {
        warnings.push("showHiddenMetricsForVersion: kproxy has no hidden metrics".into());
    }
    if !matches!(
        config.client_connection.content_type.as_str(),
        "application/json" | "application/vnd.kubernetes.protobuf" | ""
    ) {
        warnings.push(format!(
            "clientConnection.contentType {:?}: kproxy speaks JSON",
            config.client_connection.content_type
        ));
    }
    if config
        .logging
        .vmodule
        .as_array()
        .is_some_and(|v| !v.is_empty())
    {
        warnings.push("logging.vmodule: kproxy has no per-file verbosity".into());
    }
    warnings
}

/// The primary IP upstream derives from `bindAddress` when it is not a wildcard (used
/// for `nodePortAddresses: primary`).
pub fn bind_address_ip(config: &KubeProxyConfiguration) -> Option<IpAddr> {
    crate::source::parse_ip_sloppy(&config.bind_address)
        .ok()
        .filter(|ip| !ip.is_unspecified())
}
