//! kube-proxy's configuration: the `--config` file (`KubeProxyConfiguration` v1alpha1),
//! upstream's defaulting and validation, and the effective configuration `/configz` shows.
//!
//! As upstream: a config file replaces the configuration the flags would build (only
//! `--hostname-override`, `--master`, the logging flags and the action flags still apply;
//! see [`crate::cli`]); zero values are defaulted before anything reads them; the file's
//! sync periods and `masqueradeAll` come from the block of the mode in use.

pub mod duration;
pub mod v1alpha1;
pub mod watch;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use ipnet::IpNet;
use serde_json::{Value, json};
use thiserror::Error;

pub use self::duration::{GoDuration, format_duration, parse_duration};
pub use self::v1alpha1::{Decoded, KubeProxyConfiguration};
use crate::source::{parse_cidr_sloppy, parse_ip_sloppy};

/// The API group of the configuration, the key of `/configz`.
pub const GROUP: &str = "kubeproxy.config.k8s.io";

/// The modes kproxy runs (upstream's Linux modes, and kproxy's own userspace forwarder).
pub const MODES: [&str; 4] = ["iptables", "ipvs", "nftables", "userspace"];

/// The `detectLocalMode` values.
pub const DETECT_LOCAL_MODES: [&str; 4] = [
    "ClusterCIDR",
    "NodeCIDR",
    "BridgeInterface",
    "InterfaceNamePrefix",
];

/// An error reading the configuration file.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a KubeProxyConfiguration.
    #[error("config file {path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// Reads and decodes a config file (not yet defaulted).
pub fn load(path: &Path) -> Result<Decoded, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: shown.clone(),
        source,
    })?;
    KubeProxyConfiguration::decode(&text).map_err(|message| ConfigError::Invalid {
        path: shown,
        message,
    })
}

/// Upstream's `Validate` of the effective configuration (defaulted, platform defaults
/// applied): every error, each naming its field.
pub fn validate(config: &KubeProxyConfiguration) -> Vec<String> {
    let mut errors = Vec::new();
    let mut check = |ok: bool, message: String| {
        if !ok {
            errors.push(message);
        }
    };
    let (sync, min_sync) = config.sync_periods();
    let block = match config.mode.as_str() {
        "ipvs" | "nftables" => config.mode.as_str(),
        _ => "iptables",
    };
    check(
        !sync.is_zero(),
        format!("{block}.syncPeriod: must be greater than 0"),
    );
    check(
        min_sync <= sync,
        format!(
            "{block}.minSyncPeriod: {} must be less than or equal to {block}.syncPeriod {}",
            format_duration(min_sync),
            format_duration(sync)
        ),
    );
    check(
        !config.config_sync_period.is_zero(),
        "configSyncPeriod: must be greater than 0".into(),
    );
    check(
        parse_ip_sloppy(&config.bind_address).is_ok(),
        format!(
            "bindAddress: {:?} is not a valid IP address",
            config.bind_address
        ),
    );
    if !config.healthz_bind_address.is_empty() {
        check_host_port(
            &mut check,
            "healthzBindAddress",
            &config.healthz_bind_address,
        );
    }
    check_host_port(
        &mut check,
        "metricsBindAddress",
        &config.metrics_bind_address,
    );
    check(
        (0..=31).contains(&config.masquerade_bit()),
        format!(
            "{block}.masqueradeBit: {} must be within the range [0, 31]",
            config.masquerade_bit()
        ),
    );
    if let Some(adj) = config.oom_score_adj {
        check(
            (-1000..=1000).contains(&adj),
            format!("oomScoreAdj: {adj} must be within the range [-1000, 1000]"),
        );
    }
    let conntrack = &config.conntrack;
    for (field, value) in [
        ("conntrack.maxPerCore", conntrack.max_per_core),
        ("conntrack.min", conntrack.min),
    ] {
        if let Some(value) = value {
            check(
                value >= 0,
                format!("{field}: {value} must be greater than or equal to 0"),
            );
        }
    }
    check(
        MODES.contains(&config.mode.as_str()),
        format!(
            "mode: {:?} is not one of {} (kernelspace is Windows only)",
            config.mode,
            MODES.join(", ")
        ),
    );
    check_detect_local(&mut check, config);
    check(
        config.client_connection.burst >= 0,
        "clientConnection.burst: must be greater than or equal to 0".into(),
    );
    check(
        config.client_connection.qps >= 0.0,
        "clientConnection.qps: must be greater than or equal to 0".into(),
    );
    check(
        matches!(config.logging.format.as_str(), "text" | "json"),
        format!(
            "logging.format: {:?} is not one of text, json",
            config.logging.format
        ),
    );
    if let Err(message) = node_port_addresses(config.node_port_addresses.as_deref().unwrap_or(&[]))
    {
        check(false, format!("nodePortAddresses: {message}"));
    }
    if config.mode == "ipvs" {
        for cidr in config.ipvs.exclude_cidrs.iter().flatten() {
            check(
                cidr.parse::<IpNet>().is_ok(),
                format!("ipvs.excludeCIDRs: {cidr:?} must be a valid CIDR"),
            );
        }
    }
    errors
}

/// `IP:port` with a port in 1-65535.
fn check_host_port(check: &mut impl FnMut(bool, String), field: &str, value: &str) {
    let ok = value
        .parse::<SocketAddr>()
        .is_ok_and(|addr| addr.port() != 0);
    check(
        ok,
        format!("{field}: {value:?} must be IP:port with a port in 1-65535"),
    );
}

fn check_detect_local(check: &mut impl FnMut(bool, String), config: &KubeProxyConfiguration) {
    let mode = config.detect_local_mode.as_str();
    check(
        DETECT_LOCAL_MODES.contains(&mode),
        format!(
            "detectLocalMode: {mode:?} is not one of {}",
            DETECT_LOCAL_MODES.join(", ")
        ),
    );
    let detect = &config.detect_local;
    match mode {
        "BridgeInterface" => check(
            !detect.bridge_interface.is_empty(),
            "detectLocal.bridgeInterface: required with detectLocalMode BridgeInterface".into(),
        ),
        "InterfaceNamePrefix" => check(
            !detect.interface_name_prefix.is_empty(),
            "detectLocal.interfaceNamePrefix: required with detectLocalMode InterfaceNamePrefix"
                .into(),
        ),
        _ => {}
    }
    if let Err(message) = cluster_cidrs(&config.cluster_cidr) {
        check(false, format!("clusterCIDR: {message}"));
    }
}

/// `clusterCIDR`: comma-separated, one CIDR or a dual-stack pair.
pub fn cluster_cidrs(text: &str) -> Result<Vec<IpNet>, String> {
    let mut cidrs: Vec<IpNet> = Vec::new();
    for part in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let cidr = parse_cidr_sloppy(part)?;
        if cidrs
            .iter()
            .any(|c| c.addr().is_ipv4() == cidr.addr().is_ipv4())
        {
            return Err(format!("{text:?}: at most one CIDR per IP family"));
        }
        cidrs.push(cidr);
    }
    Ok(cidrs)
}

/// Where NodePorts are served, from `nodePortAddresses` with upstream's (1.37) keywords.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodePortAddresses {
    /// `primary`: the node's primary IP of each family.
    pub primary: bool,
    /// CIDRs, with `localhost` (127.0.0.0/8, ::1/128) and `all` (0.0.0.0/0, ::/0)
    /// expanded.
    pub cidrs: Vec<IpNet>,
}

impl NodePortAddresses {
    /// Nothing configured: every local address.
    pub fn is_all_local(&self) -> bool {
        !self.primary && self.cidrs.is_empty()
    }
}

/// Parses `nodePortAddresses`: CIDRs and the keywords `primary`, `localhost` and `all`,
/// freely mixed, none twice (empty items skipped).
pub fn node_port_addresses(items: &[String]) -> Result<NodePortAddresses, String> {
    let mut parsed = NodePortAddresses::default();
    let mut seen: Vec<&str> = Vec::new();
    for item in items.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        if seen.contains(&item) {
            return Err(format!("{item:?} is given twice"));
        }
        seen.push(item);
        match item {
            "primary" => parsed.primary = true,
            "localhost" => parsed.cidrs.extend(LOCALHOST),
            "all" => parsed.cidrs.extend(ALL),
            cidr => parsed.cidrs.push(parse_cidr_sloppy(cidr).map_err(|_| {
                format!("{cidr:?} must be a valid CIDR or one of the keywords 'primary', 'localhost', 'all'")
            })?),
        }
    }
    Ok(parsed)
}

/// `localhost` in `nodePortAddresses`.
const LOCALHOST: [IpNet; 2] = [
    IpNet::new_assert(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8),
    IpNet::new_assert(IpAddr::V6(Ipv6Addr::LOCALHOST), 128),
];

/// `all` in `nodePortAddresses`.
const ALL: [IpNet; 2] = [
    IpNet::new_assert(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
    IpNet::new_assert(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
];

/// The effective configuration as upstream's `/configz` shows it under [`GROUP`]: the
/// internal `KubeProxyConfiguration` (Go field names, the mode's sync periods at the top
/// level, `Linux` and `DetectLocal.ClusterCIDRs` as conversion makes them).
pub fn configz(config: &KubeProxyConfiguration) -> Value {
    let (sync, min_sync) = config.sync_periods();
    let client = &config.client_connection;
    let conntrack = &config.conntrack;
    let duration = |d: Option<GoDuration>| d.map(|d| d.to_string());
    let cluster_cidrs: Vec<&str> = config
        .cluster_cidr
        .split(',')
        .filter(|s| !s.is_empty())
        .collect();
    json!({
        "FeatureGates": config.feature_gates,
        "ClientConnection": {
            "Kubeconfig": client.kubeconfig,
            "AcceptContentTypes": client.accept_content_types,
            "ContentType": client.content_type,
            "QPS": client.qps,
            "Burst": client.burst,
        },
        "Logging": config.logging,
        "HostnameOverride": config.hostname_override,
        "BindAddress": config.bind_address,
        "HealthzBindAddress": config.healthz_bind_address,
        "MetricsBindAddress": config.metrics_bind_address,
        "BindAddressHardFail": config.bind_address_hard_fail,
        "EnableProfiling": config.enable_profiling,
        "ShowHiddenMetricsForVersion": config.show_hidden_metrics_for_version,
        "Mode": config.mode,
        "IPTables": {
            "MasqueradeBit": config.iptables.masquerade_bit,
            "LocalhostNodePorts": config.iptables.localhost_node_ports,
        },
        "IPVS": {
            "Scheduler": config.ipvs.scheduler,
            "ExcludeCIDRs": config.ipvs.exclude_cidrs,
            "StrictARP": config.ipvs.strict_arp,
            "TCPTimeout": config.ipvs.tcp_timeout,
            "TCPFinTimeout": config.ipvs.tcp_fin_timeout,
            "UDPTimeout": config.ipvs.udp_timeout,
        },
        "Winkernel": {
            "NetworkName": config.winkernel.network_name,
            "SourceVip": config.winkernel.source_vip,
            "EnableDSR": config.winkernel.enable_dsr,
            "RootHnsEndpointName": config.winkernel.root_hns_endpoint_name,
            "ForwardHealthCheckVip": config.winkernel.forward_health_check_vip,
        },
        "NFTables": {"MasqueradeBit": config.nftables.masquerade_bit},
        "DetectLocalMode": config.detect_local_mode,
        "DetectLocal": {
            "BridgeInterface": config.detect_local.bridge_interface,
            "ClusterCIDRs": cluster_cidrs,
            "InterfaceNamePrefix": config.detect_local.interface_name_prefix,
        },
        "NodePortAddresses": config.node_port_addresses,
        "SyncPeriod": format_duration(sync),
        "MinSyncPeriod": format_duration(min_sync),
        "ConfigSyncPeriod": config.config_sync_period,
        "Linux": {
            "Conntrack": {
                "MaxPerCore": conntrack.max_per_core,
                "Min": conntrack.min,
                "TCPEstablishedTimeout": duration(conntrack.tcp_established_timeout),
                "TCPCloseWaitTimeout": duration(conntrack.tcp_close_wait_timeout),
                "TCPBeLiberal": conntrack.tcp_be_liberal,
                "UDPTimeout": conntrack.udp_timeout,
                "UDPStreamTimeout": conntrack.udp_stream_timeout,
            },
            "MasqueradeAll": config.masquerade_all(),
            "OOMScoreAdj": config.oom_score_adj,
        },
        "Windows": {"RunAsService": config.windows_run_as_service},
    })
}
