//! `kubeproxy.config.k8s.io/v1alpha1` `KubeProxyConfiguration`: the wire type with every
//! field of upstream's (k8s.io/kube-proxy/config/v1alpha1, the same from 1.31 to 1.37),
//! its decoding and upstream's defaulting (`SetDefaults_KubeProxyConfiguration`).
//!
//! Decoding is upstream's: `null` is the same as an absent field, and a file with fields
//! kproxy does not know (a typo, a newer release's field, kind's `metadata:`) still loads,
//! with those fields named, as upstream falls back to lenient decoding with a warning.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::duration::GoDuration;
use crate::source::parse_ip_sloppy;

/// The API version of the file.
pub const API_VERSION: &str = "kubeproxy.config.k8s.io/v1alpha1";
/// The kind of the file.
pub const KIND: &str = "KubeProxyConfiguration";

/// Upstream's `ports.ProxyHealthzPort`.
pub const HEALTHZ_PORT: u16 = 10256;
/// Upstream's `ports.ProxyStatusPort`.
pub const METRICS_PORT: u16 = 10249;

/// `clientConnection` (component-base `ClientConnectionConfiguration`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ClientConnection {
    /// The kubeconfig file (empty: in-cluster).
    pub kubeconfig: String,
    /// The Accept header.
    pub accept_content_types: String,
    /// The content type of requests.
    pub content_type: String,
    /// Queries per second to the API server.
    pub qps: f32,
    /// Burst of queries above `qps`.
    pub burst: i32,
}

/// `logging` (component-base `LoggingConfiguration`); kproxy reads `format` and
/// `verbosity`, the rest round-trips.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Logging {
    /// `text` or `json`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub format: String,
    /// Nanoseconds (a number) or a duration string.
    pub flush_frequency: Value,
    /// The `-v` level.
    pub verbosity: u32,
    /// Per-file verbosity.
    #[serde(skip_serializing_if = "Value::is_null")]
    pub vmodule: Value,
    /// Format options (alpha upstream).
    pub options: Value,
}

/// `iptables`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Iptables {
    /// The mark bit of packets to masquerade.
    pub masquerade_bit: Option<i32>,
    /// Masquerade all Service traffic (read in iptables and IPVS mode).
    pub masquerade_all: bool,
    /// NodePorts on 127.0.0.1.
    pub localhost_node_ports: Option<bool>,
    /// Periodic sync (read in iptables mode).
    pub sync_period: GoDuration,
    /// Minimum time between syncs (read in iptables mode).
    pub min_sync_period: GoDuration,
}

/// `ipvs`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Ipvs {
    /// Periodic sync (read in IPVS mode).
    pub sync_period: GoDuration,
    /// Minimum time between syncs (read in IPVS mode).
    pub min_sync_period: GoDuration,
    /// The scheduler.
    pub scheduler: String,
    /// Virtual servers on these CIDRs are left alone.
    #[serde(rename = "excludeCIDRs")]
    pub exclude_cidrs: Option<Vec<String>>,
    /// `arp_ignore`/`arp_announce`.
    #[serde(rename = "strictARP")]
    pub strict_arp: bool,
    /// Idle timeout of established TCP connections.
    pub tcp_timeout: GoDuration,
    /// Timeout after a FIN.
    pub tcp_fin_timeout: GoDuration,
    /// UDP timeout.
    pub udp_timeout: GoDuration,
}

/// `nftables`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Nftables {
    /// The mark bit of packets to masquerade.
    pub masquerade_bit: Option<i32>,
    /// Masquerade all Service traffic (read in nftables mode).
    pub masquerade_all: bool,
    /// Periodic sync (read in nftables mode).
    pub sync_period: GoDuration,
    /// Minimum time between syncs (read in nftables mode).
    pub min_sync_period: GoDuration,
}

/// `winkernel` (Windows only; round-trips).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Winkernel {
    /// HNS network name.
    pub network_name: String,
    /// Source VIP.
    pub source_vip: String,
    /// Direct server return.
    #[serde(rename = "enableDSR")]
    pub enable_dsr: bool,
    /// Root HNS endpoint.
    pub root_hns_endpoint_name: String,
    /// Forward the health check VIP.
    pub forward_health_check_vip: bool,
}

/// `detectLocal`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct DetectLocal {
    /// For `detectLocalMode: BridgeInterface`.
    pub bridge_interface: String,
    /// For `detectLocalMode: InterfaceNamePrefix`.
    pub interface_name_prefix: String,
}

/// `conntrack`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Conntrack {
    /// `nf_conntrack_max` per CPU (0: leave it alone).
    pub max_per_core: Option<i32>,
    /// The least `nf_conntrack_max`.
    pub min: Option<i32>,
    /// `nf_conntrack_tcp_timeout_established` (0: leave it alone).
    pub tcp_established_timeout: Option<GoDuration>,
    /// `nf_conntrack_tcp_timeout_close_wait` (0: leave it alone).
    pub tcp_close_wait_timeout: Option<GoDuration>,
    /// `nf_conntrack_tcp_be_liberal`.
    pub tcp_be_liberal: bool,
    /// `nf_conntrack_udp_timeout` (0: leave it alone).
    pub udp_timeout: GoDuration,
    /// `nf_conntrack_udp_timeout_stream` (0: leave it alone).
    pub udp_stream_timeout: GoDuration,
}

/// The whole file, field for field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct KubeProxyConfiguration {
    /// `kubeproxy.config.k8s.io/v1alpha1`.
    pub api_version: String,
    /// `KubeProxyConfiguration`.
    pub kind: String,
    /// Feature gates.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub feature_gates: BTreeMap<String, bool>,
    /// The API client.
    pub client_connection: ClientConnection,
    /// Logging.
    pub logging: Logging,
    /// The node name (empty: the hostname).
    pub hostname_override: String,
    /// The address the defaults of the two servers derive from; its family picks them.
    pub bind_address: String,
    /// The health server's `IP:port` (an IP alone gets port 10256).
    pub healthz_bind_address: String,
    /// The metrics server's `IP:port` (an IP alone gets port 10249).
    pub metrics_bind_address: String,
    /// Exit when a server cannot bind (else retry).
    pub bind_address_hard_fail: bool,
    /// `/debug/pprof`.
    pub enable_profiling: bool,
    /// Deprecated metrics to show.
    pub show_hidden_metrics_for_version: String,
    /// The proxy mode (empty: iptables).
    pub mode: String,
    /// `iptables`.
    pub iptables: Iptables,
    /// `ipvs`.
    pub ipvs: Ipvs,
    /// `nftables`.
    pub nftables: Nftables,
    /// `winkernel`.
    pub winkernel: Winkernel,
    /// How local (pod) traffic is told apart (empty: ClusterCIDR).
    pub detect_local_mode: String,
    /// `detectLocal`.
    pub detect_local: DetectLocal,
    /// The pod CIDRs, comma-separated.
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: String,
    /// Where NodePorts are served.
    pub node_port_addresses: Option<Vec<String>>,
    /// The process's `oom_score_adj`.
    pub oom_score_adj: Option<i32>,
    /// Conntrack sysctls.
    pub conntrack: Conntrack,
    /// Informer resync period.
    pub config_sync_period: GoDuration,
    /// Unused (the old userspace proxier's).
    pub port_range: String,
    /// Windows only.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub windows_run_as_service: bool,
}

/// A decoded file and the fields of it kproxy does not know.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The configuration, not yet defaulted.
    pub config: KubeProxyConfiguration,
    /// Paths of the fields that are not part of v1alpha1 (`metadata`, `iptables.foo`).
    pub unknown_fields: Vec<String>,
}

impl KubeProxyConfiguration {
    /// Decodes the YAML (or JSON) text of a config file.
    pub fn decode(text: &str) -> Result<Decoded, String> {
        let mut value: Value =
            serde_saphyr::from_str(text).map_err(|e| format!("not valid YAML: {e}"))?;
        if !value.is_object() {
            return Err("expected a KubeProxyConfiguration mapping".into());
        }
        remove_nulls(&mut value);
        for (field, wanted) in [("apiVersion", API_VERSION), ("kind", KIND)] {
            match value.get(field) {
                None => {}
                Some(Value::String(given)) if given == wanted => {}
                Some(other) => return Err(format!("{field} is {other}, expected {wanted}")),
            }
        }
        let mut unknown_fields = Vec::new();
        let config: Self = serde_ignored::deserialize(value, |path| {
            unknown_fields.push(path.to_string());
        })
        .map_err(|e| e.to_string())?;
        unknown_fields.sort();
        Ok(Decoded {
            config,
            unknown_fields,
        })
    }

    /// Upstream's `SetDefaults_KubeProxyConfiguration`: every unset (zero) field that has a
    /// default gets it. Fields without a default (mode, detectLocalMode, nodePortAddresses,
    /// the UDP and IPVS timeouts) stay as they are; see [`Self::apply_platform_defaults`].
    pub fn set_defaults(&mut self) {
        self.api_version = API_VERSION.into();
        self.kind = KIND.into();
        if self.bind_address.is_empty() {
            self.bind_address = "0.0.0.0".into();
        }
        let (any, loopback) = default_addresses(&self.bind_address);
        self.healthz_bind_address =
            default_bind_address(&self.healthz_bind_address, any, HEALTHZ_PORT);
        self.metrics_bind_address =
            default_bind_address(&self.metrics_bind_address, loopback, METRICS_PORT);
        self.oom_score_adj.get_or_insert(-999);
        let iptables = &mut self.iptables;
        default_duration(&mut iptables.sync_period, 30);
        default_duration(&mut iptables.min_sync_period, 1);
        iptables.localhost_node_ports.get_or_insert(true);
        iptables.masquerade_bit.get_or_insert(14);
        default_duration(&mut self.ipvs.sync_period, 30);
        let nftables = &mut self.nftables;
        default_duration(&mut nftables.sync_period, 30);
        default_duration(&mut nftables.min_sync_period, 1);
        nftables.masquerade_bit.get_or_insert(14);
        let conntrack = &mut self.conntrack;
        conntrack.max_per_core.get_or_insert(32768);
        conntrack.min.get_or_insert(131072);
        conntrack
            .tcp_established_timeout
            .get_or_insert(GoDuration(Duration::from_secs(24 * 3600)));
        conntrack
            .tcp_close_wait_timeout
            .get_or_insert(GoDuration(Duration::from_secs(3600)));
        default_duration(&mut self.config_sync_period, 15 * 60);
        let client = &mut self.client_connection;
        if client.content_type.is_empty() {
            client.content_type = "application/vnd.kubernetes.protobuf".into();
        }
        if client.qps == 0.0 {
            client.qps = 5.0;
        }
        if client.burst == 0 {
            client.burst = 10;
        }
        let logging = &mut self.logging;
        if logging.format.is_empty() {
            logging.format = "text".into();
        }
        if logging.flush_frequency.is_null() || logging.flush_frequency == 0 {
            logging.flush_frequency = Value::from("5s");
        }
        if logging.options.is_null() {
            logging.options = serde_json::json!({
                "json": {"infoBufferSize": "0"},
                "text": {"infoBufferSize": "0"},
            });
        }
    }

    /// Upstream's `platformApplyDefaults` (Linux), run once flags and file are merged: mode
    /// `iptables`, `detectLocalMode` ClusterCIDR, and NodePorts on the primary IPs in
    /// nftables mode.
    pub fn apply_platform_defaults(&mut self) {
        if self.mode.is_empty() {
            self.mode = "iptables".into();
        }
        if self.mode == "nftables" && self.node_port_addresses.as_ref().is_none_or(Vec::is_empty) {
            self.node_port_addresses = Some(vec!["primary".into()]);
        }
        if self.detect_local_mode.is_empty() {
            self.detect_local_mode = "ClusterCIDR".into();
        }
    }

    /// The sync periods of the mode in use (upstream's conversion reads the `ipvs` block in
    /// IPVS mode, `nftables` in nftables mode, else `iptables`).
    pub fn sync_periods(&self) -> (Duration, Duration) {
        match self.mode.as_str() {
            "ipvs" => (self.ipvs.sync_period.0, self.ipvs.min_sync_period.0),
            "nftables" => (self.nftables.sync_period.0, self.nftables.min_sync_period.0),
            _ => (self.iptables.sync_period.0, self.iptables.min_sync_period.0),
        }
    }

    /// Sets the sync periods of the mode in use (where [`Self::sync_periods`] reads them).
    pub fn set_sync_periods(&mut self, sync: Option<Duration>, min_sync: Option<Duration>) {
        let (period, min_period) = match self.mode.as_str() {
            "ipvs" => (&mut self.ipvs.sync_period, &mut self.ipvs.min_sync_period),
            "nftables" => (
                &mut self.nftables.sync_period,
                &mut self.nftables.min_sync_period,
            ),
            _ => (
                &mut self.iptables.sync_period,
                &mut self.iptables.min_sync_period,
            ),
        };
        if let Some(sync) = sync {
            *period = GoDuration(sync);
        }
        if let Some(min_sync) = min_sync {
            *min_period = GoDuration(min_sync);
        }
    }

    /// `masqueradeAll` of the mode in use (`nftables` in nftables mode, else `iptables`).
    pub fn masquerade_all(&self) -> bool {
        match self.mode.as_str() {
            "nftables" => self.nftables.masquerade_all,
            _ => self.iptables.masquerade_all,
        }
    }

    /// Sets `masqueradeAll` where [`Self::masquerade_all`] reads it.
    pub fn set_masquerade_all(&mut self, value: bool) {
        match self.mode.as_str() {
            "nftables" => self.nftables.masquerade_all = value,
            _ => self.iptables.masquerade_all = value,
        }
    }

    /// The masquerade bit of the mode in use.
    pub fn masquerade_bit(&self) -> i32 {
        let bit = match self.mode.as_str() {
            "nftables" => self.nftables.masquerade_bit,
            _ => self.iptables.masquerade_bit,
        };
        bit.unwrap_or(14)
    }
}

/// Removes every `null` member, recursively: in Go, `null` leaves a field at its zero value
/// or nil, as if it were absent.
fn remove_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(remove_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(remove_nulls),
        _ => {}
    }
}

fn default_duration(field: &mut GoDuration, seconds: u64) {
    if field.is_zero() {
        *field = GoDuration(Duration::from_secs(seconds));
    }
}

/// Upstream's `getDefaultAddresses`: the wildcard and loopback of the bind address's
/// family (IPv6 when it does not parse as IPv4).
fn default_addresses(bind_address: &str) -> (&'static str, &'static str) {
    match parse_ip_sloppy(bind_address) {
        Ok(IpAddr::V4(_)) => ("0.0.0.0", "127.0.0.1"),
        _ => ("[::]", "[::1]"),
    }
}

/// A server address: `default:port` when empty, else upstream's `AppendPortIfNeeded`.
fn default_bind_address(value: &str, default_host: &str, port: u16) -> String {
    if value.is_empty() {
        return format!("{default_host}:{port}");
    }
    append_port_if_needed(value, port)
}

/// Upstream's `AppendPortIfNeeded`: an address with a port is kept, an IP alone gets
/// `port` (`[v6]:port` for IPv6), anything else is kept for validation to reject.
pub fn append_port_if_needed(value: &str, port: u16) -> String {
    if value.parse::<std::net::SocketAddr>().is_ok() {
        return value.to_string();
    }
    match parse_ip_sloppy(value) {
        Ok(IpAddr::V4(ip)) => format!("{ip}:{port}"),
        Ok(IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
        Err(_) => value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Upstream's fully defaulted object (pkg/proxy/apis/config/scheme/testdata/
    /// KubeProxyConfiguration/roundtrip/default/v1alpha1.yaml), but with the sync periods
    /// of every mode's block, which the round trip through the internal type drops.
    const DEFAULTED: &str = include_str!("testdata/defaulted.yaml");

    #[test]
    fn an_empty_file_defaults_as_upstream() {
        let mut config = KubeProxyConfiguration::decode("kind: KubeProxyConfiguration\n")
            .expect("decodes")
            .config;
        config.set_defaults();
        let expected = KubeProxyConfiguration::decode(DEFAULTED).expect("decodes");
        assert_eq!(expected.unknown_fields, Vec::<String>::new());
        assert_eq!(config, expected.config);
    }

    #[test]
    fn nulls_are_absent_and_unknown_fields_are_named() {
        let text = "kind: KubeProxyConfiguration\nmetadata:\n  name: config\nconntrack:\n  maxPerCore: null\n  maxPerCpu: 3\nipvs:\n  excludeCIDRs: null\n";
        let decoded = KubeProxyConfiguration::decode(text).expect("decodes leniently");
        assert_eq!(decoded.unknown_fields, ["conntrack.maxPerCpu", "metadata"]);
        assert_eq!(decoded.config.conntrack.max_per_core, None);
    }

    #[test]
    fn wrong_kinds_types_and_yaml_are_errors() {
        let kinds = [
            "kind: KubeletConfiguration\n",
            "apiVersion: kubeproxy.config.k8s.io/v1alpha2\n",
        ];
        for text in kinds {
            assert!(KubeProxyConfiguration::decode(text).is_err(), "{text}");
        }
        assert!(KubeProxyConfiguration::decode("iptables: [unclosed\n").is_err());
        assert!(KubeProxyConfiguration::decode("- a list\n").is_err());
        let err = KubeProxyConfiguration::decode("iptables:\n  masqueradeAll: maybe\n")
            .expect_err("bad bool");
        assert!(err.contains("bool") || err.contains("maybe"), "{err}");
        let err = KubeProxyConfiguration::decode("iptables:\n  syncPeriod: 30\n")
            .expect_err("a duration is a string");
        assert!(err.contains("duration") || err.contains("string"), "{err}");
    }

    #[test]
    fn server_addresses_get_their_ports_and_family() {
        let cases = [
            ("", "", "0.0.0.0:10256", "127.0.0.1:10249"),
            ("::", "", "[::]:10256", "[::1]:10249"),
            ("0.0.0.0", "10.0.0.5", "0.0.0.0:10256", "10.0.0.5:10249"),
            ("0.0.0.0", "fd00::5", "0.0.0.0:10256", "[fd00::5]:10249"),
            ("0.0.0.0", "10.0.0.5:9000", "0.0.0.0:10256", "10.0.0.5:9000"),
        ];
        for (bind, metrics, healthz_expected, metrics_expected) in cases {
            let mut config = KubeProxyConfiguration {
                bind_address: bind.into(),
                metrics_bind_address: metrics.into(),
                ..KubeProxyConfiguration::default()
            };
            config.set_defaults();
            assert_eq!(config.healthz_bind_address, healthz_expected, "{bind:?}");
            assert_eq!(config.metrics_bind_address, metrics_expected, "{metrics:?}");
        }
    }

    #[test]
    fn explicit_zero_timeouts_stay_zero_and_zero_periods_default() {
        let text = "conntrack:\n  tcpEstablishedTimeout: 0s\n  maxPerCore: 0\niptables:\n  minSyncPeriod: 0s\n";
        let mut config = KubeProxyConfiguration::decode(text)
            .expect("decodes")
            .config;
        config.set_defaults();
        let conntrack = &config.conntrack;
        assert_eq!(
            conntrack.tcp_established_timeout,
            Some(GoDuration::default())
        );
        assert_eq!(conntrack.max_per_core, Some(0));
        assert_eq!(config.iptables.min_sync_period.0, Duration::from_secs(1));
    }

    #[test]
    fn the_mode_picks_the_block_periods_and_masquerade_come_from() {
        let text = "mode: nftables\niptables:\n  syncPeriod: 10s\n  masqueradeAll: true\nnftables:\n  syncPeriod: 20s\n";
        let mut config = KubeProxyConfiguration::decode(text)
            .expect("decodes")
            .config;
        config.set_defaults();
        config.apply_platform_defaults();
        assert_eq!(
            config.sync_periods(),
            (Duration::from_secs(20), Duration::from_secs(1))
        );
        assert!(!config.masquerade_all());
        assert_eq!(config.node_port_addresses, Some(vec!["primary".into()]));
        config.mode = "ipvs".into();
        assert_eq!(
            config.sync_periods(),
            (Duration::from_secs(30), Duration::ZERO)
        );
        assert!(
            config.masquerade_all(),
            "IPVS mode reads iptables.masqueradeAll"
        );
    }
}
