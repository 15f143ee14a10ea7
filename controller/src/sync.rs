//! The sync loop: apply what the source reports to the store, re-plan what it touched,
//! and hand the plan and its one delta to the dataplane.
//!
//! - The loop sleeps until the source reports a change (inotify, a watch event) or the
//!   schedule has something due; a change is synced once `--iptables-min-sync-period`
//!   has passed since the last sync, so a burst of changes becomes one sync.
//! - The store says which Services a change touched; the [`Planner`] re-plans only those
//!   and returns the [`PlanDelta`] that the conntrack clean-up and the metrics consume.
//! - As upstream (`proxyutil.FullSyncPeriod`), a full sync (rewrites every kproxy chain,
//!   removes stale ones, repairs jump rules) runs at start, after any failure, after the
//!   canary found the rules flushed, and once every `--full-sync-period` (1 h); every
//!   `--iptables-sync-period` a partial sync re-reads the node's addresses. A pending
//!   change always goes first: it never waits behind a periodic rewrite.
//! - A failed sync is retried (fully) with a backoff capped at the sync period.
//! - After every sync the health-check NodePorts are updated from the same plan, and
//!   kproxy's own health (`/healthz`) and metrics learn what was queued and applied.
//! - Every few seconds the mode's canary is checked; if kproxy's rules were flushed from
//!   outside, the next sync (due at once) is a full one.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant, SystemTime};

use kproxy_dataplane::conntrack;
use kproxy_dataplane::plan::{IpFamily, PlanDelta, ProxyPlan};
use kproxy_dataplane::report::SyncReport;

use crate::cli::Settings;
use crate::healthcheck::ServiceHealthServer;
use crate::model::{ObjectKey, Snapshot, Touched};
use crate::node::{HostAddresses, node_context};
use crate::planner::{self, Planner};
use crate::servers::{Metrics, ProxyHealth};
use crate::source::{KubeSource, ManifestProblem, ManifestWatcher, SourceUpdate};
use kproxy_dataplane::backend::Backend;

/// The longest the loop sleeps without looking at its health and canary.
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// How often the loop looks again while the source has no complete view yet.
const NOT_READY_RECHECK: Duration = Duration::from_millis(50);

/// This node's context (reads the host's addresses) and zone for the planner.
pub fn node_inputs(
    settings: &Settings,
    node_name: &str,
    snapshot: &Snapshot,
) -> anyhow::Result<(kproxy_dataplane::plan::NodeContext, Option<String>)> {
    let host = HostAddresses::read()
        .map_err(|e| anyhow::anyhow!("cannot read this host's addresses: {e}"))?;
    let node = snapshot.nodes().get(node_name).map(|n| &**n);
    let cidrs = snapshot.service_cidr_ranges();
    let ctx = node_context(settings, node_name, node, &cidrs, &host);
    Ok((ctx, node.and_then(|n| n.zone()).map(str::to_owned)))
}

/// Plans this node's rules from a snapshot (reads the host's addresses).
pub fn plan_for(
    settings: &Settings,
    node_name: &str,
    snapshot: &Snapshot,
) -> anyhow::Result<ProxyPlan> {
    let (ctx, zone) = node_inputs(settings, node_name, snapshot)?;
    Ok(planner::plan(snapshot, &ctx, zone.as_deref()))
}

/// The IP families this node serves, from the same inputs as its plan (without planning:
/// at 100k endpoints a plan is ~25 MB).
pub fn node_families(
    settings: &Settings,
    node_name: &str,
    snapshot: &Snapshot,
) -> anyhow::Result<Vec<IpFamily>> {
    let (ctx, _) = node_inputs(settings, node_name, snapshot)?;
    Ok(ctx.families().collect())
}

/// Logs problems (each names its file, document and object).
pub fn report_problems(problems: &[ManifestProblem]) {
    for problem in problems {
        tracing::warn!("{problem}");
    }
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
    /// How often a full sync rewrites everything although nothing asked for one
    /// (upstream's `proxyutil.FullSyncPeriod`, 1 h): partial syncs keep the rules right in
    /// between, and a full rewrite at 10k Services takes tens of seconds with iptables-nft.
    full_sync_period: Duration,
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
            full_sync_period: settings.full_sync_period,
            last_sync: None,
            last_full: None,
            need_full: true,
            dirty: true,
            failures: 0,
            retry_at: None,
        }
    }

    /// The earliest time a sync may start (min-sync-period and retry backoff).
    fn earliest(&self) -> Option<Instant> {
        let debounce = self.last_sync.map(|t| t + self.min_sync_period);
        debounce.max(self.retry_at)
    }

    /// `Some(full)` when a sync is due now. A pending change goes first as a partial
    /// sync even when the periodic full sync is due too; that one follows.
    fn due(&self, now: Instant) -> Option<bool> {
        if self.earliest().is_some_and(|t| now < t) {
            return None;
        }
        let elapsed =
            |t: Option<Instant>, period| t.is_none_or(|t| now.duration_since(t) >= period);
        if self.need_full {
            Some(true)
        } else if self.dirty {
            Some(false)
        } else if elapsed(self.last_full, self.full_sync_period) {
            Some(true)
        } else if elapsed(self.last_sync, self.sync_period) {
            Some(false)
        } else {
            None
        }
    }

    /// When the loop should look again if nothing wakes it.
    fn next_check(&self, now: Instant) -> Instant {
        let mut next = now + HOUSEKEEPING;
        if self.dirty || self.need_full {
            next = next.min(self.earliest().unwrap_or(now).max(now));
        }
        next
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
    /// The `--config` file, whose change ends the run (as upstream).
    pub config_watch: crate::config::watch::ConfigFileWatch,
    /// Told once the first sync succeeded (the rules are live).
    pub first_sync: Option<tokio::sync::oneshot::Sender<()>>,
    /// Questions for `/explain`, answered between syncs from the last plan.
    pub explain: tokio::sync::mpsc::Receiver<crate::explain::Asked>,
}

/// Network programming latency: from an EndpointSlice's
/// `endpoints.kubernetes.io/last-change-trigger-time` to the sync that made it live,
/// observed once per trigger. Triggers from before kproxy started are skipped (their
/// "latency" would be kproxy's downtime), as upstream's change tracker does.
struct ProgrammingLatency {
    started: SystemTime,
    observed: HashMap<ObjectKey, SystemTime>,
    /// Slices changed since the last successful sync.
    pending: BTreeSet<ObjectKey>,
}

impl ProgrammingLatency {
    fn new() -> Self {
        ProgrammingLatency {
            started: SystemTime::now(),
            observed: HashMap::new(),
            pending: BTreeSet::new(),
        }
    }

    /// Notes slices that changed (their triggers count once a sync succeeds).
    fn changed(&mut self, slices: &BTreeSet<ObjectKey>) {
        self.pending.extend(slices.iter().cloned());
    }

    /// Called after a successful sync of `snapshot`.
    fn observe(&mut self, snapshot: &Snapshot, metrics: &Metrics) {
        let now = SystemTime::now();
        for key in std::mem::take(&mut self.pending) {
            let Some(slice) = snapshot.endpoint_slices().get(&key) else {
                self.observed.remove(&key);
                continue;
            };
            let Some(trigger) = slice.last_change_trigger_time else {
                continue;
            };
            if trigger < self.started || self.observed.get(&key) == Some(&trigger) {
                continue;
            }
            self.observed.insert(key, trigger);
            if let Ok(latency) = now.duration_since(trigger) {
                metrics.observe_programming_latency(slice.family, latency);
            }
        }
    }
}

/// Deletes conntrack entries of UDP/SCTP flows still pointing at endpoints the plan no
/// longer has (or at nothing, for services that just got endpoints), so those clients are
/// not black-holed. Runs for a family only when [`conntrack::cleanup_needed`] says the
/// delta may have left stale entries, or the last clean-up failed (`retry`). A failure is logged and
/// retried on the next sync; it never fails the sync.
fn clean_conntrack(plan: &ProxyPlan, delta: &PlanDelta, retry: &mut bool, metrics: &Metrics) {
    let mut ok = true;
    for family in plan.node.families() {
        if !(*retry || conntrack::cleanup_needed(delta, family)) {
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
    *retry = !ok;
}

/// Where Services, EndpointSlices and the Node come from.
pub enum ObjectSource {
    /// A manifest file or directory, watched with inotify.
    Manifests(ManifestWatcher),
    /// The Kubernetes API (list + watch).
    Api(KubeSource),
}

impl ObjectSource {
    /// The changes since the last call, if any.
    pub fn poll(&mut self) -> Option<SourceUpdate> {
        match self {
            ObjectSource::Manifests(w) => w.poll(),
            ObjectSource::Api(s) => s.poll(),
        }
    }

    /// Resolves when the source may have something new.
    pub async fn changed(&self) {
        match self {
            ObjectSource::Manifests(w) => w.changed().await,
            ObjectSource::Api(s) => s.changed().await,
        }
    }

    /// Whether the first complete view has arrived (never program before that).
    pub fn ready(&self) -> bool {
        match self {
            ObjectSource::Manifests(_) => true,
            ObjectSource::Api(s) => s.synced(),
        }
    }

    /// This Node is being deleted (it then fails /healthz, as upstream).
    fn node_being_deleted(&self) -> bool {
        matches!(self, ObjectSource::Api(s) if s.node_being_deleted())
    }
}

/// The sync loop's state besides the dataplane: the store, the planner and what is
/// pending for the next sync.
struct Pipeline {
    snapshot: Snapshot,
    planner: Option<Planner>,
    /// Services touched since the last plan.
    touched: BTreeSet<ObjectKey>,
    /// What changed in the plan since the last successful sync.
    delta: PlanDelta,
}

impl Pipeline {
    /// Re-plans what changed, adding its delta to the one since the last successful sync.
    fn replan(&mut self, settings: &Settings, node_name: &str) -> anyhow::Result<()> {
        let (ctx, zone) = node_inputs(settings, node_name, &self.snapshot)?;
        let touched = std::mem::take(&mut self.touched);
        let delta = match &mut self.planner {
            Some(planner) => planner.update(&self.snapshot, &touched, &ctx, zone.as_deref()),
            None => {
                let (planner, delta) = Planner::new(&self.snapshot, &ctx, zone.as_deref());
                self.planner = Some(planner);
                delta
            }
        };
        self.delta.merge(delta);
        Ok(())
    }
}

impl Pipeline {
    /// Answers an `/explain` question from the last plan (dropping the question, which
    /// the server reports, before the first plan).
    fn answer(&self, asked: crate::explain::Asked, mode: crate::cli::ProxyMode) {
        let Some(planner) = &self.planner else {
            return;
        };
        let answer = crate::explain::explain(
            &asked.question,
            planner.plan(),
            &self.snapshot,
            planner.zone(),
            &asked.host,
            mode,
        );
        let _ = asked.reply.send(answer);
    }
}

/// Runs until SIGINT or SIGTERM, starting from `snapshot` (the source's first complete
/// view). The rules stay in place when kproxy exits, as with kube-proxy: a restart must
/// not interrupt traffic.
pub async fn run(
    settings: &Settings,
    node_name: &str,
    mut source: ObjectSource,
    snapshot: Snapshot,
    mut dataplane: Box<dyn Backend>,
    observers: Observers,
) -> anyhow::Result<()> {
    let Observers {
        health,
        metrics,
        mut config_watch,
        mut first_sync,
        mut explain,
    } = observers;
    let mut schedule = Schedule::new(settings);
    let mut service_health = ServiceHealthServer::new();
    let mut pipeline = Pipeline {
        snapshot,
        planner: None,
        touched: BTreeSet::new(),
        delta: PlanDelta::default(),
    };
    let mut families: Vec<IpFamily> = Vec::new();
    let mut latencies = ProgrammingLatency::new();
    let canary_period = dataplane.canary_period();
    let mut last_canary = Instant::now();
    let mut conntrack_retry = true;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let now = Instant::now();
        // Until the source's first complete view nothing can sync: look again shortly.
        let wake = if source.ready() {
            schedule.next_check(now)
        } else {
            now + NOT_READY_RECHECK
        };
        tokio::select! {
            _ = source.changed() => {}
            _ = tokio::time::sleep_until(wake.into()) => {}
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
            reason = config_watch.updated() => anyhow::bail!(reason),
            Some(asked) = explain.recv() => {
                pipeline.answer(asked, settings.mode);
                continue;
            }
        }
        let polled = Instant::now();
        if let Some(update) = source.poll() {
            report_problems(&update.problems);
            let touched = pipeline.snapshot.apply(update.changes);
            tracing::debug!(
                services = touched.services.len(),
                took_ms = polled.elapsed().as_secs_f64() * 1e3,
                "source changes applied"
            );
            note_changes(&touched, &families, &health, &metrics);
            if !touched.is_empty() {
                latencies.changed(&touched.slice_objects);
                pipeline.touched.extend(touched.services);
                schedule.dirty = true;
            }
        }
        health.sync_node(source.node_being_deleted(), std::iter::empty::<&str>());
        if last_canary.elapsed() >= canary_period && schedule.last_full.is_some() {
            last_canary = Instant::now();
            if !dataplane.check_canary().await {
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
        if let Err(err) = pipeline.replan(settings, node_name) {
            tracing::error!("cannot plan, retrying: {err:#}");
            schedule.failed(now);
            continue;
        }
        tracing::debug!(
            entries = pipeline.delta.len(),
            took_ms = now.elapsed().as_secs_f64() * 1e3,
            "planned"
        );
        let Some(plan) = pipeline.planner.as_ref().map(Planner::plan) else {
            continue;
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
        metrics.record_no_local_endpoints(plan);
        match dataplane.sync(plan, full).await {
            Ok(reports) => {
                log_reports(&reports);
                schedule.succeeded(now, full);
                for r in &reports {
                    health.updated(r.family);
                }
                metrics.record_syncs(&reports);
                latencies.observe(&pipeline.snapshot, &metrics);
                if dataplane.uses_kernel_nat() {
                    clean_conntrack(plan, &pipeline.delta, &mut conntrack_retry, &metrics);
                }
                service_health.sync(plan, health.is_healthy());
                pipeline.delta = PlanDelta::default();
                if let Some(live) = first_sync.take() {
                    let _ = live.send(());
                }
            }
            Err(err) => {
                let err = crate::dataplane::backend_error(err);
                tracing::error!("sync failed, retrying with a full sync: {err:#}");
                schedule.failed(now);
                for f in &families {
                    metrics.record_failure(*f, full);
                }
                service_health.sync(plan, health.is_healthy());
            }
        }
    }
    tracing::info!("exiting; rules stay in place");
    Ok(())
}

/// Tells health and metrics that changes arrived and are queued.
fn note_changes(touched: &Touched, families: &[IpFamily], health: &ProxyHealth, metrics: &Metrics) {
    if touched.is_empty() {
        return;
    }
    metrics.record_changes(
        touched.service_objects as u64,
        touched.slice_objects.len() as u64,
    );
    for f in families {
        health.queued_update(*f);
        metrics.set_queued_now(*f);
    }
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
    fn sync_period_syncs_partially_and_the_full_sync_period_fully() {
        let mut s = schedule();
        let t0 = Instant::now();
        s.succeeded(t0, true);
        assert_eq!(s.due(t0 + Duration::from_secs(29)), None);
        assert_eq!(s.due(t0 + Duration::from_secs(30)), Some(false));
        s.succeeded(t0 + Duration::from_secs(30), false);
        assert_eq!(s.due(t0 + s.full_sync_period), Some(true));
    }

    #[test]
    fn a_change_never_waits_behind_a_periodic_full_sync() {
        let mut s = schedule();
        let t0 = Instant::now();
        s.succeeded(t0, true);
        s.dirty = true;
        let later = t0 + s.full_sync_period;
        assert_eq!(s.due(later), Some(false), "the change first, partially");
        s.succeeded(later, false);
        assert_eq!(
            s.due(later + Duration::from_secs(1)),
            Some(true),
            "then the full one"
        );
    }

    #[test]
    fn the_loop_wakes_when_a_debounced_change_is_due() {
        let mut s = schedule();
        let t0 = Instant::now();
        s.succeeded(t0, true);
        assert_eq!(s.next_check(t0), t0 + HOUSEKEEPING);
        s.dirty = true;
        let at = t0 + Duration::from_millis(200);
        assert_eq!(
            s.next_check(at),
            t0 + Duration::from_secs(1),
            "at min-sync-period"
        );
        let late = t0 + Duration::from_secs(5);
        assert_eq!(s.next_check(late), late, "at once when already allowed");
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

    fn key() -> ObjectKey {
        ObjectKey::new("ns", "web-1")
    }

    fn snapshot(trigger: Option<SystemTime>) -> Snapshot {
        let slice = EndpointSlice {
            key: key(),
            service: ObjectKey::new("ns", "web"),
            family: IpFamily::V4,
            ports: vec![],
            endpoints: vec![],
            last_change_trigger_time: trigger,
        };
        Snapshot::from_objects([], [slice], [])
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
        let changed = BTreeSet::from([key()]);
        latency.changed(&changed);
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
        latency.changed(&changed);
        latency.observe(&snapshot(Some(t)), &metrics);
        latency.changed(&changed);
        latency.observe(&snapshot(Some(t)), &metrics);
        assert_eq!(observations(&metrics), 1, "once per trigger");
        std::thread::sleep(Duration::from_millis(2));
        latency.observe(&snapshot(Some(SystemTime::now())), &metrics);
        assert_eq!(
            observations(&metrics),
            1,
            "only slices that changed are looked at"
        );
        latency.changed(&changed);
        latency.observe(&snapshot(Some(SystemTime::now())), &metrics);
        assert_eq!(observations(&metrics), 2, "a new trigger is observed");
    }
}
