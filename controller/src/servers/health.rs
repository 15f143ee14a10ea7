//! The proxy's own health (`--healthz-bind-address`, `/healthz` and `/livez`), with
//! upstream kube-proxy's semantics:
//!
//! - each IP family's proxier reports [`ProxyHealth::queued_update`] when a change is
//!   waiting to be programmed and [`ProxyHealth::updated`] when its rules are live;
//! - the proxy is unhealthy once some family has had an update queued for longer than the
//!   health timeout (2 × `--sync-period`) without syncing since;
//! - `/healthz` also fails while this Node is being deleted (deletionTimestamp set, or the
//!   cluster autoscaler's `ToBeDeletedByClusterAutoscaler` taint); `/livez` ignores the Node.
//!
//! Both answer JSON (`lastUpdated`, `currentTime`, and `nodeEligible` for `/healthz`) with
//! 200 or 503, and count their answers in `kubeproxy_proxy_{healthz,livez}_total`.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kproxy_dataplane::plan::IpFamily;

use super::clock::{Clock, SystemClock, go_time_string};
use super::metrics::Metrics;

/// The taint the cluster autoscaler puts on a Node it is about to delete.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

#[derive(Debug)]
struct HealthState {
    last_updated: BTreeMap<IpFamily, SystemTime>,
    oldest_pending: BTreeMap<IpFamily, SystemTime>,
    node_eligible: bool,
}

struct Inner {
    clock: Arc<dyn Clock>,
    health_timeout: Duration,
    state: RwLock<HealthState>,
}

/// The proxy's health state, shared by the sync loop (which reports) and the health
/// server (which answers). Clones share the same state.
#[derive(Clone)]
pub struct ProxyHealth {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ProxyHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyHealth")
            .field("health_timeout", &self.inner.health_timeout)
            .field("state", &*self.read())
            .finish()
    }
}

/// The answer to a health probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthAnswer {
    /// 200 or 503.
    pub status: u16,
    /// Upstream's JSON body.
    pub body: String,
}

impl ProxyHealth {
    /// Health on the system clock, unhealthy after an update stays queued for
    /// 2 × `sync_period` (as kube-proxy).
    pub fn new(sync_period: Duration) -> Self {
        Self::with_clock(sync_period.saturating_mul(2), Arc::new(SystemClock))
    }

    /// Health with an explicit timeout and clock (tests use a
    /// [`FakeClock`](super::clock::FakeClock)).
    pub fn with_clock(health_timeout: Duration, clock: Arc<dyn Clock>) -> Self {
        ProxyHealth {
            inner: Arc::new(Inner {
                clock,
                health_timeout,
                state: RwLock::new(HealthState {
                    last_updated: BTreeMap::new(),
                    oldest_pending: BTreeMap::new(),
                    // Eligible while starting up, until a Node says otherwise.
                    node_eligible: true,
                }),
            }),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HealthState> {
        self.inner
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HealthState> {
        self.inner
            .state
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The family's rules now reflect the current state: clears its queued update and
    /// records the time. Call it once per family when the sync loop starts (so a proxier
    /// whose first sync never succeeds turns unhealthy) and after each successful sync.
    pub fn updated(&self, family: IpFamily) {
        let now = self.inner.clock.now();
        let mut state = self.write();
        state.oldest_pending.remove(&family);
        state.last_updated.insert(family, now);
    }

    /// A change for this family is waiting to be programmed. Only the oldest queued time
    /// counts until [`ProxyHealth::updated`].
    pub fn queued_update(&self, family: IpFamily) {
        let now = self.inner.clock.now();
        self.write().oldest_pending.entry(family).or_insert(now);
    }

    /// Records whether this Node is being deleted: `deleting` when its
    /// `metadata.deletionTimestamp` is set; `taint_keys` are its `spec.taints` keys.
    pub fn sync_node<I, K>(&self, deleting: bool, taint_keys: I)
    where
        I: IntoIterator<Item = K>,
        K: AsRef<str>,
    {
        let eligible = !deleting
            && !taint_keys
                .into_iter()
                .any(|k| k.as_ref() == TO_BE_DELETED_TAINT);
        self.write().node_eligible = eligible;
    }

    /// Whether the Node is eligible (not being deleted) as last reported.
    pub fn node_eligible(&self) -> bool {
        self.read().node_eligible
    }

    /// The proxier's own health, ignoring the Node (what `/livez` reports and what the
    /// health-check NodePorts report as `serviceProxyHealthy`).
    pub fn is_healthy(&self) -> bool {
        self.health().0
    }

    /// Healthy, and the last-updated time to report.
    fn health(&self) -> (bool, Option<SystemTime>) {
        let now = self.inner.clock.now();
        let state = self.read();
        let mut last = None;
        for (family, &updated) in &state.last_updated {
            last = last.max(Some(updated));
            let Some(&queued) = state.oldest_pending.get(family) else {
                continue;
            };
            // A clock stepping back counts as "not late yet".
            let waited = now.duration_since(queued).unwrap_or_default();
            if waited >= self.inner.health_timeout {
                return (false, Some(updated));
            }
        }
        (true, last)
    }

    /// The `/healthz` answer: 503 when unhealthy or the Node is being deleted.
    pub fn healthz(&self) -> HealthAnswer {
        let node_eligible = self.node_eligible();
        let (healthy, last) = self.health();
        let now = self.inner.clock.now();
        let healthy = healthy && node_eligible;
        // As upstream: a healthy proxy reports lastUpdated = now (older releases reported
        // the last time the sync loop ran, even when nothing changed).
        let last = if healthy { Some(now) } else { last };
        HealthAnswer {
            status: if healthy { 200 } else { 503 },
            body: format!(
                r#"{{"lastUpdated": {},"currentTime": {}, "nodeEligible": {node_eligible}}}"#,
                json_string(&go_time_string(last)),
                json_string(&go_time_string(Some(now))),
            ),
        }
    }

    /// The `/livez` answer: 503 when unhealthy, whatever the Node.
    pub fn livez(&self) -> HealthAnswer {
        let (healthy, last) = self.health();
        let now = self.inner.clock.now();
        let last = if healthy { Some(now) } else { last };
        HealthAnswer {
            status: if healthy { 200 } else { 503 },
            body: format!(
                r#"{{"lastUpdated": {},"currentTime": {}}}"#,
                json_string(&go_time_string(last)),
                json_string(&go_time_string(Some(now))),
            ),
        }
    }
}

fn json_string(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

#[derive(Clone)]
struct Ctx {
    health: ProxyHealth,
    metrics: Option<Metrics>,
}

/// The health server's routes: `/healthz` and `/livez`. With `metrics`, each answer is
/// counted in `kubeproxy_proxy_healthz_total{code}` / `kubeproxy_proxy_livez_total{code}`.
pub fn router(health: ProxyHealth, metrics: Option<Metrics>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .with_state(Ctx { health, metrics })
}

async fn healthz(State(ctx): State<Ctx>) -> Response {
    let answer = ctx.health.healthz();
    if let Some(m) = &ctx.metrics {
        m.count_healthz(answer.status);
    }
    json_response(answer)
}

async fn livez(State(ctx): State<Ctx>) -> Response {
    let answer = ctx.health.livez();
    if let Some(m) = &ctx.metrics {
        m.count_livez(answer.status);
    }
    json_response(answer)
}

fn json_response(answer: HealthAnswer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        answer.body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::ProxyMode;
    use crate::servers::clock::FakeClock;
    use crate::servers::http::{serve, testing};
    use std::time::UNIX_EPOCH;

    const TIMEOUT: Duration = Duration::from_secs(60);

    fn health() -> (ProxyHealth, FakeClock) {
        let clock = FakeClock::new(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        (
            ProxyHealth::with_clock(TIMEOUT, Arc::new(clock.clone())),
            clock,
        )
    }

    #[test]
    fn healthy_while_starting_up() {
        let (h, clock) = health();
        assert!(h.is_healthy());
        h.queued_update(IpFamily::V4);
        clock.advance(TIMEOUT * 10);
        assert!(
            h.is_healthy(),
            "a family that never reported an update is not judged (upstream)"
        );
        let answer = h.healthz();
        assert_eq!(answer.status, 200);
    }

    #[test]
    fn a_queued_update_turns_unhealthy_after_the_timeout() {
        let (h, clock) = health();
        h.updated(IpFamily::V4);
        h.queued_update(IpFamily::V4);
        clock.advance(TIMEOUT - Duration::from_secs(1));
        assert!(h.is_healthy(), "queued but not late yet");
        h.queued_update(IpFamily::V4);
        clock.advance(Duration::from_secs(1));
        assert!(
            !h.is_healthy(),
            "the oldest queued time counts, not the latest"
        );
        h.updated(IpFamily::V4);
        assert!(h.is_healthy(), "an update clears the queue");
    }

    #[test]
    fn periodic_syncs_without_changes_stay_healthy() {
        let (h, clock) = health();
        for _ in 0..10 {
            h.updated(IpFamily::V4);
            clock.advance(TIMEOUT * 2);
        }
        assert!(h.is_healthy(), "nothing queued");
    }

    #[test]
    fn each_family_is_judged_on_its_own() {
        let (h, clock) = health();
        h.updated(IpFamily::V4);
        h.updated(IpFamily::V6);
        h.queued_update(IpFamily::V4);
        h.queued_update(IpFamily::V6);
        clock.advance(TIMEOUT / 2);
        h.updated(IpFamily::V4);
        clock.advance(TIMEOUT / 2);
        assert!(!h.is_healthy(), "IPv6 is late");
        h.updated(IpFamily::V6);
        assert!(h.is_healthy());
    }

    #[test]
    fn healthz_fails_while_the_node_is_deleted_but_livez_does_not() {
        let (h, _clock) = health();
        h.updated(IpFamily::V4);
        h.sync_node(true, Vec::<String>::new());
        assert!(!h.node_eligible());
        assert_eq!(h.healthz().status, 503);
        assert!(h.healthz().body.contains(r#""nodeEligible": false"#));
        assert_eq!(h.livez().status, 200);
        h.sync_node(false, ["node.kubernetes.io/unschedulable"]);
        assert_eq!(h.healthz().status, 200);
        h.sync_node(false, [TO_BE_DELETED_TAINT]);
        assert_eq!(h.healthz().status, 503, "the autoscaler's taint");
    }

    #[test]
    fn bodies_match_upstream() {
        let (h, clock) = health();
        h.updated(IpFamily::V4);
        let synced = clock.now();
        clock.advance(Duration::from_millis(1500));
        let answer = h.healthz();
        assert_eq!(
            answer.body,
            r#"{"lastUpdated": "2023-11-14 22:13:21.5 +0000 UTC","currentTime": "2023-11-14 22:13:21.5 +0000 UTC", "nodeEligible": true}"#
        );
        h.queued_update(IpFamily::V4);
        clock.advance(TIMEOUT);
        let answer = h.livez();
        assert_eq!(answer.status, 503);
        let v: serde_json::Value = serde_json::from_str(&answer.body).expect("json");
        assert_eq!(v["lastUpdated"], go_time_string(Some(synced)));
        assert_eq!(v["currentTime"], go_time_string(Some(clock.now())));
        assert!(v.get("nodeEligible").is_none());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn healthz_flips_to_503_when_updates_are_queued_but_never_applied() {
        let (h, clock) = health();
        let metrics = Metrics::with_clock(ProxyMode::Iptables, Arc::new(clock.clone()));
        let server = serve(
            "healthz-bind-address",
            "127.0.0.1:0".parse().expect("addr"),
            router(h.clone(), Some(metrics.clone())),
        )
        .expect("bind");
        let addr = server.local_addr();

        h.updated(IpFamily::V4);
        let ok = testing::get(addr, "/healthz").await;
        assert_eq!(ok.status, 200, "{ok:?}");
        assert_eq!(ok.header("content-type"), Some("application/json"));
        assert_eq!(ok.header("x-content-type-options"), Some("nosniff"));

        // Changes arrive, but the sync is blocked: nothing is ever applied.
        h.queued_update(IpFamily::V4);
        clock.advance(TIMEOUT / 2);
        h.queued_update(IpFamily::V4);
        assert_eq!(testing::get(addr, "/healthz").await.status, 200);
        clock.advance(TIMEOUT / 2);
        let failing = testing::get(addr, "/healthz").await;
        assert_eq!(failing.status, 503, "{failing:?}");
        let body: serde_json::Value = serde_json::from_str(&failing.body).expect("json body");
        assert_eq!(body["nodeEligible"], true);
        assert_eq!(testing::get(addr, "/livez").await.status, 503);

        h.updated(IpFamily::V4);
        assert_eq!(testing::get(addr, "/healthz").await.status, 200);
        let text = metrics.encode();
        assert!(
            text.contains(r#"kubeproxy_proxy_healthz_total{code="503"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"kubeproxy_proxy_healthz_total{code="200"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"kubeproxy_proxy_livez_total{code="503"} 1"#),
            "{text}"
        );
    }
}
