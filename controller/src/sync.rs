//! The sync loop: watch the source, plan, and hand plans to the dataplane.
//!
//! - A change is synced once `--iptables-min-sync-period` has passed since the last sync,
//!   so a burst of changes becomes one sync.
//! - Every `--iptables-sync-period` the sync is a full one (rewrites every kproxy chain,
//!   removes stale ones, repairs jump rules), and so is the first sync and any sync after a
//!   failure; a failed sync is retried with a backoff capped at the sync period.
//! - After every sync the health-check NodePorts are updated from the same plan, and
//!   kproxy's own health (`/healthz`) and metrics learn what was queued and applied.
//! - Every few seconds the mode's canary is checked; if kproxy's rules were flushed from
//!   outside, the next sync (due at once) is a full one.
//! - A source that disappears (the manifest path is gone) keeps the last good snapshot
//!   programmed instead of removing every service.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime};

use kproxy_dataplane::conntrack;
use kproxy_dataplane::plan::IpFamily;
use kproxy_dataplane::plan::ProxyPlan;
use kproxy_dataplane::report::SyncReport;

use crate::cli::Settings;
use crate::dataplane::Dataplane;
use crate::healthcheck::ServiceHealthServer;
use crate::model::{ObjectKey, Snapshot};
use crate::node::{HostAddresses, node_context};
use crate::planner;
use crate::servers::{Metrics, ProxyHealth};
use crate::source::{KubeSource, Loaded, ManifestWatcher};

/// How often the manifest source is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Plans this node's rules from a snapshot (reads the host's addresses).
pub fn plan_for(
    settings: &Settings,
    node_name: &str,
    snapshot: &Snapshot,
) -> anyhow::Result<ProxyPlan> {
    let host = HostAddresses::read()
        .map_err(|e| anyhow::anyhow!("cannot read this host's addresses: {e}"))?;
    let node = snapshot.nodes.get(node_name);
    let ctx = node_context(settings, node_name, node, &host);
    Ok(planner::plan(snapshot, &ctx, node.and_then(|n| n.zone())))
}

/// Logs every problem of a load (each names its file, document and object).
pub fn report_problems(loaded: &Loaded) {
    for problem in &loaded.problems {
        tracing::warn!("skipped: {problem}");
    }
    tracing::info!(
        services = loaded.snapshot.services.len(),
        endpoint_slices = loaded.snapshot.endpoint_slices.len(),
        nodes = loaded.snapshot.nodes.len(),
        problems = loaded.problems.len(),
        "objects loaded"
    );
}

/// Logs what a sync did.
pub fn log_reports(reports: &[SyncReport]) {
    reports.iter().for_each(SyncReport::log);
}

/// When the next sync may and must happen.
#[derive(Debug)]
struct Schedule {
    min_sync_period: Duration,
    sync_period: Duration,
    last_sync: Option<Instant>,
    last_full: Option<Instant>,
    need_full: bool,
    dirty: bool,
    failures: u32,
    retry_at: Option<Instant>,
}

impl Schedule {
    fn new(settings: &Settings) -> Self {
        Schedule {
            min_sync_period: settings.min_sync_period,
            sync_period: settings.sync_period,
            last_sync: None,
            last_full: None,
            need_full: true,
            dirty: true,
            failures: 0,
            retry_at: None,
        }
    }

    /// `Some(full)` when a sync is due now.
    fn due(&self, now: Instant) -> Option<bool> {
        let full_due = self.need_full
            || self
                .last_full
                .is_none_or(|t| now.duration_since(t) >= self.sync_period);
        let wanted = self.dirty || full_due;
        let debounced = self
            .last_sync
            .is_none_or(|t| now.duration_since(t) >= self.min_sync_period);
        let retry_ok = self.retry_at.is_none_or(|t| now >= t);
        (wanted && debounced && retry_ok).then_some(full_due)
    }

    fn succeeded(&mut self, now: Instant, full: bool) {
        self.last_sync = Some(now);
        if full {
            self.last_full = Some(now);
        }
        self.need_full = false;
        self.dirty = false;
        self.failures = 0;
        self.retry_at = None;
    }

    fn failed(&mut self, now: Instant) {
        self.last_sync = Some(now);
        self.need_full = true;
        self.failures = self.failures.saturating_add(1);
        let backoff = Duration::from_millis(500)
            .saturating_mul(1 << self.failures.min(8))
            .min(self.sync_period.max(Duration::from_secs(1)));
        self.retry_at = Some(now + backoff);
    }
}

/// Who watches the sync loop: kproxy's own health (`/healthz`) and its metrics.
pub struct Observers {
    /// Proxy health: updates queued and applied, per family.
    pub health: ProxyHealth,
    /// Prometheus metrics.
    pub metrics: Metrics,
}

/// How many Services and EndpointSlices differ between two snapshots (added, removed or
/// changed).
pub fn count_changes(old: &Snapshot, new: &Snapshot) -> (usize, usize) {
    fn diff<K: Ord, V: PartialEq>(a: &BTreeMap<K, V>, b: &BTreeMap<K, V>) -> usize {
        let changed_or_removed = a.iter().filter(|(k, v)| b.get(*k) != Some(*v)).count();
        let added = b.keys().filter(|k| !a.contains_key(*k)).count();
        changed_or_removed + added
    }
    (
        diff(&old.services, &new.services),
        diff(&old.endpoint_slices, &new.endpoint_slices),
    )
}

/// Network programming latency: from an EndpointSlice's
/// `endpoints.kubernetes.io/last-change-trigger-time` to the sync that made it live,
/// observed once per trigger. Triggers from before kproxy started are skipped (their
/// "latency" would be kproxy's downtime), as upstream's change tracker does.
struct ProgrammingLatency {
    started: SystemTime,
    observed: HashMap<ObjectKey, SystemTime>,
}

impl ProgrammingLatency {
    fn new() -> Self {
        ProgrammingLatency {
            started: SystemTime::now(),
            observed: HashMap::new(),
        }
    }

    /// Called after a successful sync of `snapshot`.
    fn observe(&mut self, snapshot: &Snapshot, metrics: &Metrics) {
        let now = SystemTime::now();
        self.observed
            .retain(|key, _| snapshot.endpoint_slices.contains_key(key));
        for (key, slice) in &snapshot.endpoint_slices {
            let Some(trigger) = slice.last_change_trigger_time else {
                continue;
            };
            if trigger < self.started || self.observed.get(key) == Some(&trigger) {
                continue;
            }
            self.observed.insert(key.clone(), trigger);
            if let Ok(latency) = now.duration_since(trigger) {
                metrics.observe_programming_latency(slice.family, latency);
            }
        }
    }
}

/// Deletes conntrack entries of UDP/SCTP flows still pointing at endpoints the plan no
/// longer has (or at nothing, for services that just got endpoints), so those clients are
/// not black-holed; skipped when nothing relevant changed since the last clean-up. A
/// failure is logged and retried on the next sync; it never fails the sync.
fn clean_conntrack(plan: &ProxyPlan, last_cleaned: &mut Option<ProxyPlan>, metrics: &Metrics) {
    let mut ok = true;
    for family in plan.node.families() {
        if !conntrack::cleanup_needed(last_cleaned.as_ref(), plan, family) {
            continue;
        }
        match conntrack::cleanup_stale(plan, family) {
            Ok(report) => {
                metrics.record_conntrack_cleanup(family, report.took, report.deleted as u64);
                if report.deleted > 0 {
                    tracing::info!(%family, deleted = report.deleted, stale = report.stale, "deleted stale conntrack entries");
                }
            }
            Err(err) => {
                ok = false;
                tracing::warn!(%family, "conntrack cleanup failed (retried next sync): {err}");
            }
        }
    }
    if ok {
        *last_cleaned = Some(plan.clone());
    }
}

/// Where Services, EndpointSlices and the Node come from.
pub enum ObjectSource {
    /// A manifest file or directory, polled.
    Manifests(ManifestWatcher),
    /// The Kubernetes API (list + watch).
    Api(KubeSource),
}

impl ObjectSource {
    /// A new snapshot if anything changed since the last call.
    pub fn poll(&mut self) -> Option<Loaded> {
        match self {
            ObjectSource::Manifests(w) => w.poll(),
            ObjectSource::Api(s) => s.poll(),
        }
    }

    /// Whether the first complete view has arrived (never program before that).
    pub fn ready(&self) -> bool {
        match self {
            ObjectSource::Manifests(_) => true,
            ObjectSource::Api(s) => s.synced(),
        }
    }

    /// The manifest path disappeared: keep the last rules rather than remove everything.
    fn gone(&self) -> bool {
        matches!(self, ObjectSource::Manifests(w) if !w.path().exists())
    }

    /// This Node is being deleted (it then fails /healthz, as upstream).
    fn node_being_deleted(&self) -> bool {
        matches!(self, ObjectSource::Api(s) if s.node_being_deleted())
    }
}

/// Runs until SIGINT or SIGTERM. The rules stay in place when kproxy exits, as with
/// kube-proxy: a restart must not interrupt traffic.
pub async fn run(
    settings: &Settings,
    node_name: &str,
    mut source: ObjectSource,
    mut dataplane: Dataplane,
    observers: Observers,
) -> anyhow::Result<()> {
    let Observers { health, metrics } = observers;
    let mut schedule = Schedule::new(settings);
    let mut service_health = ServiceHealthServer::new();
    let mut snapshot = Snapshot::default();
    let mut families: Vec<IpFamily> = Vec::new();
    let mut latencies = ProgrammingLatency::new();
    let canary_period = dataplane.canary_period();
    let mut last_canary = Instant::now();
    // The plan whose stale UDP/SCTP conntrack entries were last cleaned.
    let mut last_cleaned: Option<ProxyPlan> = None;
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
        if let Some(loaded) = source.poll() {
            if !source.gone() {
                report_problems(&loaded);
                let (services, slices) = count_changes(&snapshot, &loaded.snapshot);
                metrics.record_changes(services as u64, slices as u64);
                for f in &families {
                    health.queued_update(*f);
                    metrics.set_queued_now(*f);
                }
                snapshot = loaded.snapshot;
                schedule.dirty = true;
            } else {
                tracing::warn!("manifest path is gone: keeping the last rules");
            }
        }
        health.sync_node(source.node_being_deleted(), std::iter::empty::<&str>());
        if last_canary.elapsed() >= canary_period && schedule.last_full.is_some() {
            last_canary = Instant::now();
            if !dataplane.canary_intact().await {
                tracing::warn!(
                    "kproxy's rules were flushed from outside: re-programming everything"
                );
                schedule.need_full = true;
            }
        }
        if !source.ready() {
            continue;
        }
        let now = Instant::now();
        let Some(full) = schedule.due(now) else {
            continue;
        };
        let plan = match plan_for(settings, node_name, &snapshot) {
            Ok(plan) => plan,
            Err(err) => {
                tracing::error!("cannot plan, retrying: {err:#}");
                schedule.failed(now);
                continue;
            }
        };
        if families.is_empty() {
            // As upstream's SyncLoop: stamp "updated" at start and queue the first sync, so
            // that a first sync that never succeeds turns /healthz to 503.
            families = plan.node.families().collect();
            for f in &families {
                health.updated(*f);
                health.queued_update(*f);
                metrics.set_queued_now(*f);
            }
        }
        metrics.record_no_local_endpoints(&plan);
        match dataplane.sync(&plan, full).await {
            Ok(reports) => {
                log_reports(&reports);
                schedule.succeeded(now, full);
                for r in &reports {
                    health.updated(r.family);
                }
                metrics.record_syncs(&reports);
                latencies.observe(&snapshot, &metrics);
                if dataplane.uses_kernel_nat() {
                    clean_conntrack(&plan, &mut last_cleaned, &metrics);
                }
            }
            Err(err) => {
                tracing::error!("sync failed, retrying with a full sync: {err:#}");
                schedule.failed(now);
                for f in &families {
                    metrics.record_failure(*f, full);
                }
            }
        }
        service_health.sync(&plan, health.is_healthy());
    }
    tracing::info!("exiting; rules stay in place");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::Parser;

    fn schedule() -> Schedule {
        let settings = Cli::try_parse_from([
            "kproxy",
            "--iptables-min-sync-period",
            "1s",
            "--iptables-sync-period",
            "30s",
        ])
        .expect("flags")
        .proxy
        .settings()
        .expect("settings");
        Schedule::new(&settings)
    }

    #[test]
    fn first_sync_is_full_and_immediate() {
        let s = schedule();
        assert_eq!(s.due(Instant::now()), Some(true));
    }

    #[test]
    fn changes_are_debounced_by_min_sync_period_and_partial() {
        let mut s = schedule();
        let t0 = Instant::now();
        s.succeeded(t0, true);
        assert_eq!(
            s.due(t0 + Duration::from_millis(10)),
            None,
            "nothing changed"
        );
        s.dirty = true;
        assert_eq!(
            s.due(t0 + Duration::from_millis(500)),
            None,
            "within min-sync-period"
        );
        assert_eq!(
            s.due(t0 + Duration::from_secs(1)),
            Some(false),
            "partial sync"
        );
    }

    #[test]
    fn sync_period_forces_a_full_sync() {
        let mut s = schedule();
        let t0 = Instant::now();
        s.succeeded(t0, true);
        assert_eq!(s.due(t0 + Duration::from_secs(30)), Some(true));
    }

    #[test]
    fn failure_forces_a_full_retry_after_backoff() {
        let mut s = schedule();
        let t0 = Instant::now();
        s.succeeded(t0, true);
        s.dirty = true;
        s.failed(t0 + Duration::from_secs(2));
        assert_eq!(s.due(t0 + Duration::from_secs(2)), None, "backing off");
        assert_eq!(s.due(t0 + Duration::from_secs(5)), Some(true), "full retry");
    }
}

#[cfg(test)]
mod latency_tests {
    use super::*;
    use crate::model::EndpointSlice;
    use kproxy_dataplane::plan::IpFamily;

    fn snapshot(trigger: Option<SystemTime>) -> Snapshot {
        let mut s = Snapshot::default();
        let key = ObjectKey::new("ns", "web-1");
        s.endpoint_slices.insert(
            key.clone(),
            EndpointSlice {
                key,
                service: ObjectKey::new("ns", "web"),
                family: IpFamily::V4,
                ports: vec![],
                endpoints: vec![],
                last_change_trigger_time: trigger,
            },
        );
        s
    }

    fn observations(metrics: &Metrics) -> u64 {
        let text = metrics.encode();
        text.lines()
            .find(|l| l.starts_with("kubeproxy_network_programming_duration_seconds_count"))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    }

    #[test]
    fn observes_each_trigger_once_and_skips_old_ones() {
        let metrics = Metrics::new(crate::cli::ProxyMode::Iptables);
        let mut latency = ProgrammingLatency::new();
        latency.observe(
            &snapshot(Some(latency.started - Duration::from_secs(5))),
            &metrics,
        );
        assert_eq!(
            observations(&metrics),
            0,
            "a trigger from before the start is skipped"
        );
        let t = SystemTime::now();
        latency.observe(&snapshot(Some(t)), &metrics);
        latency.observe(&snapshot(Some(t)), &metrics);
        assert_eq!(observations(&metrics), 1, "once per trigger");
        std::thread::sleep(Duration::from_millis(2));
        latency.observe(&snapshot(Some(SystemTime::now())), &metrics);
        assert_eq!(observations(&metrics), 2, "a new trigger is observed");
    }
}
