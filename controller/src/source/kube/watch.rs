//! One list+watch of one kind into a reflector store, run as a tokio task.
//!
//! kube-runtime's [`watcher`] does the protocol: list (paginated), then watch from the
//! list's `resourceVersion` with bookmarks, resume from the last seen version when a watch
//! ends or the connection drops, and relist on an `ERROR` event with code 410. This task
//! adds what it leaves to its user: every error is logged and followed by a capped
//! exponential backoff (never fatal), and a `410 Gone` answered to the watch request
//! itself (which the watcher would retry with the same stale version forever) restarts
//! the watcher, so it relists.

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ::kube::Api;
use ::kube::Resource;
use ::kube::runtime::reflector::store::Writer;
use ::kube::runtime::watcher::{self, Event, watcher};
use futures::StreamExt;
use serde::de::DeserializeOwned;

use crate::source::{ObjectKind, ObjectRef};

/// The first delay after a failure.
const BACKOFF_MIN: Duration = Duration::from_millis(800);
/// The longest delay between retries.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What the watch tasks tell the [`super::KubeSource`]: a change counter and which kinds
/// have completed their first list.
#[derive(Debug, Default)]
pub(super) struct Progress {
    changes: AtomicU64,
    synced: [AtomicBool; 4],
    /// Wakes the sync loop.
    wake: tokio::sync::Notify,
    /// What the watches delivered since the source last looked.
    delivered: std::sync::Mutex<Delivered>,
}

/// Objects the watches saw change, so that a poll validates only those; a (re)list
/// replaces a whole store, so it asks for a look at everything instead.
#[derive(Debug, Default)]
pub(super) struct Delivered {
    /// Objects added, changed or deleted.
    pub objects: std::collections::BTreeSet<ObjectRef>,
    /// A list (first or after `410 Gone`) completed: compare whole stores.
    pub relisted: bool,
}

impl Progress {
    fn index(kind: ObjectKind) -> usize {
        match kind {
            ObjectKind::Service => 0,
            ObjectKind::EndpointSlice => 1,
            ObjectKind::Node => 2,
            ObjectKind::ServiceCidr => 3,
        }
    }

    /// The kinds the source must have listed before it has a complete view (as upstream,
    /// whose readiness waits for Services and EndpointSlices; ServiceCIDRs only refine
    /// what is dropped).
    const REQUIRED: [ObjectKind; 3] = [
        ObjectKind::Service,
        ObjectKind::EndpointSlice,
        ObjectKind::Node,
    ];

    /// How many store changes happened so far.
    pub(super) fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    /// Whether every required kind has completed its first list.
    pub(super) fn all_synced(&self) -> bool {
        Self::REQUIRED.iter().all(|kind| self.synced(*kind))
    }

    /// Whether `kind` has completed its first list.
    pub(super) fn synced(&self, kind: ObjectKind) -> bool {
        self.synced[Self::index(kind)].load(Ordering::Acquire)
    }

    fn changed(&self) {
        self.changes.fetch_add(1, Ordering::AcqRel);
        self.wake.notify_one();
    }

    fn delivered(&self) -> std::sync::MutexGuard<'_, Delivered> {
        self.delivered.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes what was delivered since the last call.
    pub(super) fn take_delivered(&self) -> Delivered {
        std::mem::take(&mut *self.delivered())
    }

    /// Resolves after the next change (or at once if one happened since the last wait).
    pub(super) async fn wait(&self) {
        self.wake.notified().await
    }

    fn mark_synced(&self, kind: ObjectKind) {
        self.synced[Self::index(kind)].store(true, Ordering::Release);
    }
}

/// Capped exponential backoff, reset by progress.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    fn next_delay(&mut self) -> Duration {
        let delay = BACKOFF_MIN
            .saturating_mul(1 << self.failures.min(6))
            .min(BACKOFF_MAX);
        self.failures = self.failures.saturating_add(1);
        delay
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

/// The HTTP status of an error the API server answered, if it is one.
fn api_code(err: &watcher::Error) -> Option<u16> {
    match err {
        watcher::Error::InitialListFailed(::kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(::kube::Error::Api(status)) => Some(status.code),
        watcher::Error::WatchError(status) => Some(status.code),
        _ => None,
    }
}

/// Whether an error means the watcher's resource version is gone and it must relist.
fn is_gone(err: &watcher::Error) -> bool {
    match err {
        watcher::Error::WatchError(status) => status.code == 410,
        watcher::Error::WatchStartFailed(::kube::Error::Api(status)) => status.code == 410,
        _ => false,
    }
}

/// Spawns the task that keeps `writer`'s store equal to the API server's objects of
/// `kind` selected by `config`. It runs until aborted.
pub(super) fn spawn<K>(
    api: Api<K>,
    config: watcher::Config,
    kind: ObjectKind,
    writer: Writer<K>,
    progress: Arc<Progress>,
) -> tokio::task::JoinHandle<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    tokio::spawn(run(api, config, kind, writer, progress))
}

async fn run<K>(
    api: Api<K>,
    config: watcher::Config,
    kind: ObjectKind,
    mut writer: Writer<K>,
    progress: Arc<Progress>,
) where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let mut backoff = Backoff::default();
    loop {
        let mut stream = std::pin::pin!(watcher(api.clone(), config.clone()));
        while let Some(item) = stream.next().await {
            let event = match item {
                Ok(event) => event,
                Err(err) => {
                    let delay = backoff.next_delay();
                    if kind == ObjectKind::ServiceCidr && api_code(&err) == Some(404) {
                        tracing::info!(
                            "the API server has no networking.k8s.io/v1 ServiceCIDRs (before Kubernetes 1.33): not watched"
                        );
                        return;
                    }
                    if api_code(&err) == Some(403) {
                        tracing::warn!(%kind, error = %err, retry_in = ?delay, "list/watch forbidden: the credentials need list and watch (the ClusterRole system:node-proxier)");
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    let gone = is_gone(&err);
                    if gone {
                        tracing::info!(%kind, error = %err, retry_in = ?delay, "watch expired, relisting");
                    } else {
                        tracing::warn!(%kind, error = %err, retry_in = ?delay, "list/watch failed, retrying");
                    }
                    tokio::time::sleep(delay).await;
                    if gone {
                        break;
                    }
                    continue;
                }
            };
            writer.apply_watcher_event(&event);
            match event {
                Event::Apply(object) | Event::Delete(object) => {
                    backoff.reset();
                    progress
                        .delivered()
                        .objects
                        .insert(super::snapshot::object_ref(kind, object.meta()));
                    progress.changed();
                }
                Event::InitDone => {
                    backoff.reset();
                    if !progress.synced(kind) {
                        tracing::info!(%kind, "initial list done");
                    }
                    progress.mark_synced(kind);
                    progress.delivered().relisted = true;
                    progress.changed();
                }
                Event::Init | Event::InitApply(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_a_cap_and_resets() {
        let mut b = Backoff::default();
        let delays: Vec<Duration> = (0..9).map(|_| b.next_delay()).collect();
        assert_eq!(delays[0], BACKOFF_MIN);
        assert_eq!(delays[1], BACKOFF_MIN * 2);
        assert_eq!(delays[8], BACKOFF_MAX);
        b.reset();
        assert_eq!(b.next_delay(), BACKOFF_MIN);
    }

    #[test]
    fn progress_tracks_each_kind() {
        let p = Progress::default();
        assert!(!p.all_synced());
        p.mark_synced(ObjectKind::Service);
        p.mark_synced(ObjectKind::EndpointSlice);
        assert!(!p.all_synced());
        p.mark_synced(ObjectKind::Node);
        assert!(p.all_synced(), "ServiceCIDRs are not required");
        assert!(!p.synced(ObjectKind::ServiceCidr));
        p.changed();
        assert_eq!(p.changes(), 1);
    }
}
