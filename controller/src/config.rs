//! `--config`: the subset of kube-proxy's `KubeProxyConfiguration`
//! (`kubeproxy.config.k8s.io/v1alpha1`) that applies to kproxy, and Go-style durations.
//!
//! Fields kproxy does not implement are reported (by name) and otherwise ignored, so an
//! existing kube-proxy config file can be used as it is.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

/// The API version kproxy reads.
pub const API_VERSION: &str = "kubeproxy.config.k8s.io/v1alpha1";

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
    /// The file is not a valid KubeProxyConfiguration.
    #[error("config file {path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// `iptables:` and `nftables:` of KubeProxyConfiguration (nftables has no
/// `localhostNodePorts`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ModeConfig {
    /// `masqueradeAll`.
    pub masquerade_all: Option<bool>,
    /// `masqueradeBit`.
    pub masquerade_bit: Option<u32>,
    /// `localhostNodePorts`.
    pub localhost_node_ports: Option<bool>,
    /// `syncPeriod` (Go duration).
    pub sync_period: Option<String>,
    /// `minSyncPeriod` (Go duration).
    pub min_sync_period: Option<String>,
}

/// `ipvs:` of KubeProxyConfiguration.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IpvsConfig {
    /// `scheduler`.
    pub scheduler: Option<String>,
    /// `strictARP`.
    #[serde(rename = "strictARP")]
    pub strict_arp: Option<bool>,
    /// `excludeCIDRs`: virtual services on these addresses are left alone.
    #[serde(rename = "excludeCIDRs")]
    pub exclude_cidrs: Option<Vec<String>>,
    /// `tcpTimeout` (Go duration; 0 leaves the kernel's value).
    pub tcp_timeout: Option<String>,
    /// `tcpFinTimeout` (Go duration; 0 leaves the kernel's value).
    pub tcp_fin_timeout: Option<String>,
    /// `udpTimeout` (Go duration; 0 leaves the kernel's value).
    pub udp_timeout: Option<String>,
    /// `syncPeriod` and `minSyncPeriod` (masquerade fields are not part of `ipvs:`).
    #[serde(flatten)]
    pub sync: ModeConfig,
}

/// The fields of KubeProxyConfiguration kproxy uses; every one optional (flags win).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KubeProxyConfiguration {
    /// `apiVersion`.
    pub api_version: Option<String>,
    /// `kind`.
    pub kind: Option<String>,
    /// `mode`.
    pub mode: Option<String>,
    /// `hostnameOverride`.
    pub hostname_override: Option<String>,
    /// `clusterCIDR` (comma-separated).
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: Option<String>,
    /// `nodePortAddresses`.
    pub node_port_addresses: Option<Vec<String>>,
    /// `healthzBindAddress`.
    pub healthz_bind_address: Option<String>,
    /// `metricsBindAddress`.
    pub metrics_bind_address: Option<String>,
    /// `iptables`.
    #[serde(default)]
    pub iptables: ModeConfig,
    /// `nftables`.
    #[serde(default)]
    pub nftables: ModeConfig,
    /// `ipvs`.
    #[serde(default)]
    pub ipvs: IpvsConfig,
}

/// Top-level fields kproxy reads; others are reported as ignored.
const KNOWN_FIELDS: [&str; 11] = [
    "apiVersion",
    "kind",
    "mode",
    "hostnameOverride",
    "clusterCIDR",
    "nodePortAddresses",
    "iptables",
    "nftables",
    "healthzBindAddress",
    "metricsBindAddress",
    "ipvs",
];

impl KubeProxyConfiguration {
    /// Reads and checks a config file. Returns the config and the names of ignored fields.
    pub fn load(path: &Path) -> Result<(Self, Vec<String>), ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text).map_err(|message| ConfigError::Invalid {
            path: shown,
            message,
        })
    }

    /// Parses the YAML text of a config file.
    pub fn parse(text: &str) -> Result<(Self, Vec<String>), String> {
        let value: serde_json::Value =
            serde_saphyr::from_str(text).map_err(|e| format!("not valid YAML: {e}"))?;
        let ignored = match &value {
            serde_json::Value::Object(map) => map
                .keys()
                .filter(|k| !KNOWN_FIELDS.contains(&k.as_str()))
                .cloned()
                .collect(),
            _ => return Err("expected a KubeProxyConfiguration mapping".into()),
        };
        let config: Self = serde_json::from_value(value).map_err(|e| e.to_string())?;
        if config
            .kind
            .as_deref()
            .is_some_and(|k| k != "KubeProxyConfiguration")
        {
            return Err(format!(
                "kind is {:?}, expected KubeProxyConfiguration",
                config.kind
            ));
        }
        if config
            .api_version
            .as_deref()
            .is_some_and(|v| v != API_VERSION)
        {
            return Err(format!(
                "apiVersion is {:?}, expected {API_VERSION}",
                config.api_version
            ));
        }
        Ok((config, ignored))
    }
}

/// Parses a Go duration (`30s`, `1m30s`, `500ms`, `1h`, `0`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {text:?} (expected e.g. 30s, 1m0s, 500ms)");
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (number, tail) = rest.split_at(digits);
        let value: f64 = number.parse().map_err(|_| bad())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let seconds = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(bad()),
        };
        total += Duration::from_secs_f64(value * seconds);
        rest = tail;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn reads_a_kube_proxy_config_file() {
        let text = r#"
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clusterCIDR: 10.244.0.0/16
hostnameOverride: node-a
nodePortAddresses: ["primary"]
metricsBindAddress: 0.0.0.0:10249
oomScoreAdj: -999
iptables:
  masqueradeAll: true
  masqueradeBit: 14
  syncPeriod: 30s
  minSyncPeriod: 1s
"#;
        let (config, ignored) = KubeProxyConfiguration::parse(text).expect("valid");
        assert_eq!(config.mode.as_deref(), Some("iptables"));
        assert_eq!(config.cluster_cidr.as_deref(), Some("10.244.0.0/16"));
        assert_eq!(config.iptables.masquerade_all, Some(true));
        assert_eq!(config.iptables.sync_period.as_deref(), Some("30s"));
        assert_eq!(config.node_port_addresses, Some(vec!["primary".to_owned()]));
        assert_eq!(ignored, vec!["oomScoreAdj".to_owned()]);
        assert_eq!(
            config.metrics_bind_address.as_deref(),
            Some("0.0.0.0:10249")
        );
    }

    #[test]
    fn reads_the_ipvs_section() {
        let text = r#"
kind: KubeProxyConfiguration
mode: ipvs
ipvs:
  scheduler: wrr
  strictARP: true
  syncPeriod: 45s
  minSyncPeriod: 2s
  excludeCIDRs: ["192.168.100.0/24", "fd00:1::/64"]
  tcpTimeout: 900s
  tcpFinTimeout: 2m
  udpTimeout: 0s
"#;
        let (config, ignored) = KubeProxyConfiguration::parse(text).expect("valid");
        assert!(ignored.is_empty(), "{ignored:?}");
        let ipvs = &config.ipvs;
        assert_eq!(ipvs.scheduler.as_deref(), Some("wrr"));
        assert_eq!(ipvs.strict_arp, Some(true));
        assert_eq!(ipvs.sync.sync_period.as_deref(), Some("45s"));
        assert_eq!(ipvs.sync.min_sync_period.as_deref(), Some("2s"));
        assert_eq!(
            ipvs.exclude_cidrs,
            Some(vec![
                "192.168.100.0/24".to_owned(),
                "fd00:1::/64".to_owned()
            ])
        );
        assert_eq!(ipvs.tcp_timeout.as_deref(), Some("900s"));
        assert_eq!(ipvs.tcp_fin_timeout.as_deref(), Some("2m"));
        assert_eq!(ipvs.udp_timeout.as_deref(), Some("0s"));
    }

    #[test]
    fn rejects_other_kinds_and_bad_yaml() {
        assert!(KubeProxyConfiguration::parse("kind: KubeletConfiguration\n").is_err());
        assert!(KubeProxyConfiguration::parse("iptables: [unclosed\n").is_err());
        assert!(KubeProxyConfiguration::parse("- a list\n").is_err());
        let err = KubeProxyConfiguration::parse("iptables:\n  masqueradeAll: maybe\n")
            .expect_err("bad bool");
        assert!(
            err.contains("masqueradeAll") || err.contains("bool"),
            "{err}"
        );
    }
}
