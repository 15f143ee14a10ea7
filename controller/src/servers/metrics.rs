//! The metrics registry (upstream kube-proxy's names, types, labels and buckets, on a
//! prometheus-client [`Registry`] of our own, never a global one) and the metrics server
//! (`--metrics-bind-address`): `/metrics`, `/proxyMode`, `/configz`, `/healthz`, `/livez`.
//!
//! The sync loop only calls methods of [`Metrics`] with kproxy's own types; no Prometheus
//! type leaves this module.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kproxy_dataplane::plan::{IpFamily, ProxyPlan};
use kproxy_dataplane::report::SyncReport;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::clock::{Clock, SystemClock, unix_seconds};
use super::exposition::{
    OPENMETRICS_CONTENT_TYPE, PROMETHEUS_TEXT_CONTENT_TYPE, to_prometheus_text, wants_openmetrics,
};
use crate::cli::ProxyMode;

/// The key `/configz` files the configuration under, as kube-proxy.
pub const CONFIGZ_KEY: &str = crate::config::GROUP;

type FamilyLabel = [(&'static str, &'static str); 1];
type TwoLabels = [(&'static str, &'static str); 2];
type CodeLabel = [(&'static str, String); 1];
type HistogramFamily = Family<FamilyLabel, Histogram, fn() -> Histogram>;
type TimestampFamily = Family<FamilyLabel, Gauge<f64, AtomicU64>>;

/// Upstream's sync-duration buckets: 1 ms doubling 15 times (up to ~16 s).
fn sync_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// Upstream's network-programming buckets: 0 (upstream's merge starts with a zero
/// bucket), 0.25 s, 0.5 s, 1..=59 s, 60..=115 s by 5 s, 120..=300 s by 30 s.
pub fn network_programming_buckets() -> Vec<f64> {
    let mut buckets = vec![0.0, 0.25, 0.5];
    buckets.extend((1..=59).map(f64::from));
    buckets.extend((0..12).map(|i| 60.0 + 5.0 * f64::from(i)));
    buckets.extend((0..7).map(|i| 120.0 + 30.0 * f64::from(i)));
    buckets
}

fn programming_histogram() -> Histogram {
    Histogram::new(network_programming_buckets())
}

fn family_label(family: IpFamily) -> FamilyLabel {
    [("ip_family", family_name(family))]
}

fn family_name(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "IPv4",
        IpFamily::V6 => "IPv6",
    }
}

struct Inner {
    registry: Registry,
    clock: Arc<dyn Clock>,
    mode: ProxyMode,
    sync_duration: HistogramFamily,
    sync_full_duration: HistogramFamily,
    sync_partial_duration: HistogramFamily,
    network_programming: HistogramFamily,
    last_timestamp: TimestampFamily,
    last_queued_timestamp: TimestampFamily,
    endpoint_changes_total: Counter,
    endpoint_changes_pending: Gauge,
    service_changes_total: Counter,
    service_changes_pending: Gauge,
    iptables_total: Family<TwoLabels, Gauge>,
    iptables_last: Family<TwoLabels, Gauge>,
    iptables_restore_failures: Family<FamilyLabel, Counter>,
    iptables_partial_restore_failures: Family<FamilyLabel, Counter>,
    nftables_sync_failures: Family<FamilyLabel, Counter>,
    nftables_cleanup_failures: Family<FamilyLabel, Counter>,
    no_local_endpoints: Family<TwoLabels, Gauge>,
    healthz_total: Family<CodeLabel, Counter>,
    livez_total: Family<CodeLabel, Counter>,
    conntrack_duration: HistogramFamily,
    conntrack_deleted: Family<FamilyLabel, Counter>,
    build_info: Family<BuildLabels, Gauge>,
}

/// The labels of `kubernetes_build_info`.
type BuildLabels = [(&'static str, String); 9];

/// `kubernetes_build_info`'s labels for this kproxy build: upstream's names, kproxy's
/// values (its version, the Rust compiler, the platform as Go names it).
fn build_labels() -> BuildLabels {
    let version = env!("CARGO_PKG_VERSION");
    let mut parts = version.split('.');
    let major = parts.next().unwrap_or_default().to_owned();
    let minor = parts.next().unwrap_or_default().to_owned();
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    [
        ("major", major),
        ("minor", minor),
        ("git_version", format!("v{version}")),
        (
            "git_commit",
            option_env!("KPROXY_GIT_COMMIT").unwrap_or("").to_owned(),
        ),
        ("git_tree_state", String::new()),
        ("build_date", String::new()),
        ("go_version", String::new()),
        ("compiler", "rustc".to_owned()),
        ("platform", format!("{}/{arch}", std::env::consts::OS)),
    ]
}

/// kube-proxy's metrics for one proxy mode. Clones share the same registry.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("mode", &self.inner.mode)
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// The metrics of `mode` on the system clock.
    pub fn new(mode: ProxyMode) -> Self {
        Self::with_clock(mode, Arc::new(SystemClock))
    }

    /// The metrics of `mode`, timestamps read from `clock`. Registers what upstream
    /// registers for the mode: the core set for every mode, plus the iptables or nftables
    /// counters. The full/partial sync histograms are registered in nftables mode too,
    /// since kproxy's nftables syncs are incremental as well (upstream: iptables only).
    pub fn with_clock(mode: ProxyMode, clock: Arc<dyn Clock>) -> Self {
        let new_sync_family =
            || HistogramFamily::new_with_constructor(sync_histogram as fn() -> Histogram);
        let mut inner = Inner {
            registry: Registry::default(),
            clock,
            mode,
            sync_duration: new_sync_family(),
            sync_full_duration: new_sync_family(),
            sync_partial_duration: new_sync_family(),
            network_programming: HistogramFamily::new_with_constructor(
                programming_histogram as fn() -> Histogram,
            ),
            last_timestamp: TimestampFamily::default(),
            last_queued_timestamp: TimestampFamily::default(),
            endpoint_changes_total: Counter::default(),
            endpoint_changes_pending: Gauge::default(),
            service_changes_total: Counter::default(),
            service_changes_pending: Gauge::default(),
            iptables_total: Family::default(),
            iptables_last: Family::default(),
            iptables_restore_failures: Family::default(),
            iptables_partial_restore_failures: Family::default(),
            nftables_sync_failures: Family::default(),
            nftables_cleanup_failures: Family::default(),
            no_local_endpoints: Family::default(),
            healthz_total: Family::default(),
            livez_total: Family::default(),
            conntrack_duration: new_sync_family(),
            conntrack_deleted: Family::default(),
            build_info: Family::default(),
        };
        inner.build_info.get_or_create(&build_labels()).set(1);
        register(&mut inner);
        Metrics {
            inner: Arc::new(inner),
        }
    }

    /// The proxy mode these metrics describe.
    pub fn mode(&self) -> ProxyMode {
        self.inner.mode
    }

    fn now_seconds(&self) -> f64 {
        unix_seconds(self.inner.clock.now())
    }

    /// Records one family's successful sync: the duration histograms (all syncs, and
    /// full or partial) and `..._last_timestamp_seconds`.
    pub fn record_sync(&self, report: &SyncReport) {
        let i = &self.inner;
        let label = family_label(report.family);
        let took = report.took.as_secs_f64();
        i.sync_duration.get_or_create(&label).observe(took);
        let by_kind = if report.full {
            &i.sync_full_duration
        } else {
            &i.sync_partial_duration
        };
        by_kind.get_or_create(&label).observe(took);
        i.last_timestamp
            .get_or_create(&label)
            .set(self.now_seconds());
    }

    /// Records a successful sync of every family ([`Metrics::record_sync`] for each
    /// report) and sets the pending-change gauges back to 0: everything queued is live.
    pub fn record_syncs(&self, reports: &[SyncReport]) {
        reports.iter().for_each(|r| self.record_sync(r));
        self.inner.service_changes_pending.set(0);
        self.inner.endpoint_changes_pending.set(0);
    }

    /// Records a failed apply of one family: iptables counts a restore failure (and a
    /// partial-restore failure when `full` is false); nftables a sync failure.
    pub fn record_failure(&self, family: IpFamily, full: bool) {
        let i = &self.inner;
        let label = family_label(family);
        match i.mode {
            ProxyMode::Iptables => {
                i.iptables_restore_failures.get_or_create(&label).inc();
                if !full {
                    i.iptables_partial_restore_failures
                        .get_or_create(&label)
                        .inc();
                }
            }
            ProxyMode::Nftables => {
                i.nftables_sync_failures.get_or_create(&label).inc();
            }
            // Upstream exports no failure counter for these modes; a failure shows in the
            // log and, when it lasts, in /healthz.
            ProxyMode::Ipvs | ProxyMode::Userspace => {}
        }
    }

    /// Records a failure to remove stale nftables chains (nftables mode).
    pub fn record_nftables_cleanup_failure(&self, family: IpFamily) {
        self.inner
            .nftables_cleanup_failures
            .get_or_create(&family_label(family))
            .inc();
    }

    /// Counts changes seen (Services and EndpointSlices added, updated or deleted): adds
    /// to the `..._changes_total` counters and to the `..._changes_pending` gauges.
    pub fn record_changes(&self, services: u64, endpoints: u64) {
        let i = &self.inner;
        i.service_changes_total.inc_by(services);
        i.endpoint_changes_total.inc_by(endpoints);
        i.service_changes_pending
            .inc_by(i64::try_from(services).unwrap_or(i64::MAX));
        i.endpoint_changes_pending
            .inc_by(i64::try_from(endpoints).unwrap_or(i64::MAX));
    }

    /// Sets `..._last_queued_timestamp_seconds` of a family to now: a sync was requested.
    pub fn set_queued_now(&self, family: IpFamily) {
        self.inner
            .last_queued_timestamp
            .get_or_create(&family_label(family))
            .set(self.now_seconds());
    }

    /// Observes one network-programming latency: from an EndpointSlice's
    /// `endpoints.kubernetes.io/last-change-trigger-time` to its rules being live.
    pub fn observe_programming_latency(&self, family: IpFamily, latency: Duration) {
        self.inner
            .network_programming
            .get_or_create(&family_label(family))
            .observe(latency.as_secs_f64());
    }

    /// Sets the rules kproxy owns in one iptables table (`nat`, `filter`) of a family and
    /// how many of them the last sync wrote.
    pub fn set_iptables_rules(
        &self,
        family: IpFamily,
        table: &'static str,
        total: usize,
        written: usize,
    ) {
        let labels = [("ip_family", family_name(family)), ("table", table)];
        let i = &self.inner;
        i.iptables_total
            .get_or_create(&labels)
            .set(i64::try_from(total).unwrap_or(i64::MAX));
        i.iptables_last
            .get_or_create(&labels)
            .set(i64::try_from(written).unwrap_or(i64::MAX));
    }

    /// Sets `..._no_local_endpoints_total` from a plan: per family, the service ports with
    /// `internalTrafficPolicy: Local` and no endpoint for cluster-IP traffic
    /// (`traffic_policy="internal"`), and the externally reachable ones with
    /// `externalTrafficPolicy: Local` and no local endpoint (`"external"`).
    pub fn record_no_local_endpoints(&self, plan: &ProxyPlan) {
        let mut counts = [[0i64; 2]; 2];
        for svc in &plan.services {
            let f = usize::from(svc.family == IpFamily::V6);
            if svc.internal_policy_local && !svc.has_internal_endpoints() {
                counts[f][0] += 1;
            }
            if svc.external_policy_local
                && svc.externally_accessible()
                && !svc.has_external_endpoints()
            {
                counts[f][1] += 1;
            }
        }
        for family in plan.node.families() {
            let f = usize::from(family == IpFamily::V6);
            for (p, policy) in ["internal", "external"].into_iter().enumerate() {
                let labels = [
                    ("ip_family", family_name(family)),
                    ("traffic_policy", policy),
                ];
                self.inner
                    .no_local_endpoints
                    .get_or_create(&labels)
                    .set(counts[f][p]);
            }
        }
    }

    /// Records one conntrack cleanup of a family: how long it took and how many flows it
    /// deleted.
    pub fn record_conntrack_cleanup(&self, family: IpFamily, took: Duration, deleted: u64) {
        let label = family_label(family);
        self.inner
            .conntrack_duration
            .get_or_create(&label)
            .observe(took.as_secs_f64());
        self.inner
            .conntrack_deleted
            .get_or_create(&label)
            .inc_by(deleted);
    }

    /// Counts one `/healthz` answer by HTTP status.
    pub fn count_healthz(&self, status: u16) {
        self.inner
            .healthz_total
            .get_or_create(&[("code", status.to_string())])
            .inc();
    }

    /// Counts one `/livez` answer by HTTP status.
    pub fn count_livez(&self, status: u16) {
        self.inner
            .livez_total
            .get_or_create(&[("code", status.to_string())])
            .inc();
    }

    /// The registry in OpenMetrics text ([`OPENMETRICS_CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if let Err(err) = encode(&mut text, &self.inner.registry) {
            tracing::error!(%err, "cannot encode metrics");
        }
        text
    }
}

/// Registers the families upstream registers for the mode (counters get their `_total`
/// suffix from the encoder).
fn register(i: &mut Inner) {
    let r = &mut i.registry;
    r.register(
        "kubernetes_build_info",
        "A metric with a constant '1' value labeled by major, minor, git version, git commit, git tree state, build date, Go version, and compiler from which Kubernetes was built, and platform on which it is running",
        i.build_info.clone(),
    );
    r.register(
        "kubeproxy_sync_proxy_rules_duration_seconds",
        "SyncProxyRules latency in seconds",
        i.sync_duration.clone(),
    );
    r.register(
        "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
        "The last time a sync of proxy rules was queued",
        i.last_queued_timestamp.clone(),
    );
    r.register(
        "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
        "The last time proxy rules were successfully synced",
        i.last_timestamp.clone(),
    );
    r.register(
        "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
        "Pending proxy rules Endpoint changes",
        i.endpoint_changes_pending.clone(),
    );
    r.register(
        "kubeproxy_sync_proxy_rules_endpoint_changes",
        "Cumulative proxy rules Endpoint changes",
        i.endpoint_changes_total.clone(),
    );
    r.register(
        "kubeproxy_sync_proxy_rules_service_changes_pending",
        "Pending proxy rules Service changes",
        i.service_changes_pending.clone(),
    );
    r.register(
        "kubeproxy_sync_proxy_rules_service_changes",
        "Cumulative proxy rules Service changes",
        i.service_changes_total.clone(),
    );
    r.register(
        "kubeproxy_proxy_healthz",
        "Cumulative proxy healthz HTTP status",
        i.healthz_total.clone(),
    );
    r.register(
        "kubeproxy_proxy_livez",
        "Cumulative proxy livez HTTP status",
        i.livez_total.clone(),
    );
    r.register(
        "kubeproxy_network_programming_duration_seconds",
        "In Cluster Network Programming Latency in seconds",
        i.network_programming.clone(),
    );
    r.register(
        "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
        "Number of services with a Local traffic policy and no endpoints",
        i.no_local_endpoints.clone(),
    );
    r.register(
        "kubeproxy_conntrack_reconciler_sync_duration_seconds",
        "ReconcileConntrackFlowsLatency latency in seconds",
        i.conntrack_duration.clone(),
    );
    r.register(
        "kubeproxy_conntrack_reconciler_deleted_entries",
        "Cumulative conntrack flows deleted by conntrack reconciler",
        i.conntrack_deleted.clone(),
    );
    r.register(
        "kubeproxy_sync_full_proxy_rules_duration_seconds",
        "SyncProxyRules latency in seconds for full resyncs",
        i.sync_full_duration.clone(),
    );
    r.register(
        "kubeproxy_sync_partial_proxy_rules_duration_seconds",
        "SyncProxyRules latency in seconds for partial resyncs",
        i.sync_partial_duration.clone(),
    );
    match i.mode {
        ProxyMode::Iptables => {
            r.register(
                "kubeproxy_sync_proxy_rules_iptables_restore_failures",
                "Cumulative proxy iptables restore failures",
                i.iptables_restore_failures.clone(),
            );
            r.register(
                "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures",
                "Cumulative proxy iptables partial restore failures",
                i.iptables_partial_restore_failures.clone(),
            );
            r.register(
                "kubeproxy_sync_proxy_rules_iptables_total",
                "Total number of iptables rules owned by kube-proxy",
                i.iptables_total.clone(),
            );
            r.register(
                "kubeproxy_sync_proxy_rules_iptables_last",
                "Number of iptables rules written by kube-proxy in last sync",
                i.iptables_last.clone(),
            );
            r.register_collector(Box::new(NfacctCounters));
        }
        ProxyMode::Nftables => {
            r.register(
                "kubeproxy_sync_proxy_rules_nftables_sync_failures",
                "Cumulative proxy nftables sync failures",
                i.nftables_sync_failures.clone(),
            );
            r.register(
                "kubeproxy_sync_proxy_rules_nftables_cleanup_failures",
                "Cumulative proxy nftables cleanup failures",
                i.nftables_cleanup_failures.clone(),
            );
        }
        // No mode-specific metrics upstream for these modes.
        ProxyMode::Ipvs | ProxyMode::Userspace => {}
    }
}

#[derive(Clone)]
struct Ctx {
    metrics: Metrics,
    configz: Arc<String>,
    explain: Option<crate::explain::Asker>,
}

/// The metrics server's routes: `/metrics` (OpenMetrics when the `Accept` header asks
/// for it, else Prometheus text 0.0.4), `/proxyMode` (the mode's name),
/// `/configz` (`configz`: `{"kubeproxy.config.k8s.io": ..., "kproxy": ...}`), and
/// `/healthz` and `/livez`
/// answering `ok` (the metrics port's generic checks, as kube-proxy's; the proxy's real
/// health is on the health server), and kproxy's `/explain?from=IP&to=IP:PORT[/PROTO]`
/// (`&output=json`), answered by the sync loop through `explain`.
pub fn router(
    metrics: Metrics,
    configz: serde_json::Value,
    explain: Option<crate::explain::Asker>,
) -> Router {
    let configz = configz.to_string();
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/proxyMode", get(proxy_mode))
        .route("/configz", get(configz_json))
        .route("/healthz", get(ok))
        .route("/livez", get(ok))
        .route("/explain", get(explain_answer))
        .with_state(Ctx {
            metrics,
            configz: Arc::new(configz),
            explain,
        })
}

/// How long `/explain` waits for the sync loop (which answers between syncs).
const EXPLAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

async fn explain_answer(
    State(ctx): State<Ctx>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    use axum::http::StatusCode;
    let (question, json) = match crate::explain::parse_query(query.as_deref().unwrap_or("")) {
        Ok(parsed) => parsed,
        Err(err) => return (StatusCode::BAD_REQUEST, format!("{err:#}\n")).into_response(),
    };
    let unavailable =
        |why: &str| (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response();
    let Some(asker) = ctx.explain else {
        return unavailable("this kproxy does not answer /explain");
    };
    let from = question.from;
    let host = tokio::task::spawn_blocking(move || crate::explain::Host::read(from))
        .await
        .unwrap_or_default();
    let (reply, answer) = tokio::sync::oneshot::channel();
    if asker
        .send(crate::explain::Asked {
            question,
            host,
            reply,
        })
        .await
        .is_err()
    {
        return unavailable("kproxy is shutting down");
    }
    match tokio::time::timeout(EXPLAIN_TIMEOUT, answer).await {
        Ok(Ok(explanation)) if json => (
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_string_pretty(&explanation).unwrap_or_default() + "\n",
        )
            .into_response(),
        Ok(Ok(explanation)) => plain(explanation.to_text()),
        Ok(Err(_)) => unavailable("kproxy has not planned yet: ask again after its first sync"),
        Err(_) => unavailable("kproxy did not answer in 30 s (a sync is running)"),
    }
}

async fn metrics_text(State(ctx): State<Ctx>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let text = ctx.metrics.encode();
    if wants_openmetrics(accept) {
        ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], text).into_response()
    } else {
        (
            [(header::CONTENT_TYPE, PROMETHEUS_TEXT_CONTENT_TYPE)],
            to_prometheus_text(&text),
        )
            .into_response()
    }
}

async fn proxy_mode(State(ctx): State<Ctx>) -> Response {
    plain(ctx.metrics.mode().name().to_owned())
}

async fn configz_json(State(ctx): State<Ctx>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        ctx.configz.as_str().to_owned(),
    )
        .into_response()
}

async fn ok() -> Response {
    plain("ok".to_owned())
}

fn plain(body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;

/// Upstream's two nfacct-based iptables metrics, read from the kernel's counters on every
/// scrape (`kproxy_dataplane::iptables::nfacct`); a counter that cannot be read (no nfacct
/// in the kernel) has no sample, as upstream.
#[derive(Debug)]
struct NfacctCounters;

impl prometheus_client::collector::Collector for NfacctCounters {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        let described = [
            (
                "kubeproxy_iptables_ct_state_invalid_dropped_packets",
                "packets dropped by iptables to work around conntrack problems",
            ),
            (
                "kubeproxy_iptables_localhost_nodeports_accepted_packets",
                "Number of packets accepted on nodeports of loopback interface",
            ),
        ];
        let counters = kproxy_dataplane::iptables::nfacct::read_counters();
        for ((name, help), value) in described.into_iter().zip(counters) {
            let Some(value) = value else { continue };
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}
