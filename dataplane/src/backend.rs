//! The one contract every proxy mode implements, so that the controller's sync loop, its
//! `--once` and `--cleanup` paths drive iptables, nftables, IPVS and userspace mode alike.
//!
//! Who decides what:
//! - **When to rewrite everything** belongs to the caller alone (its schedule): the first
//!   sync, the retry after a failure, the sync after [`Backend::check_canary`] found the
//!   rules flushed, and one every full-sync period ask for `full`; every other sync is
//!   partial.
//! - **How** belongs to the backend: a full sync starts from what the host has (it reads
//!   the kernel, or recreates what it owns), a partial one from the record of its last
//!   successful sync. A backend whose last sync failed no longer trusts that record and
//!   syncs fully whatever `full` says: that is a fact about its record, not a schedule.
//! - **What** belongs to the planner: the plan carries the endpoint sets ready-made; a
//!   backend only translates them.
//!
//! Every sync of every mode has the same shape: observe what the host has (the record, or
//! the kernel on a full sync), compute the changes as plain data, apply them once.

use std::error::Error;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::plan::ProxyPlan;
use crate::report::SyncReport;

/// A boxed future, so that [`Backend`] can be used as `dyn Backend`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A backend's failure: the mode's own error, which names the object and the tool or
/// netlink request concerned.
pub type BackendError = Box<dyn Error + Send + Sync>;

/// One proxy mode's backend.
pub trait Backend: Send {
    /// The mode, as `--proxy-mode` names it.
    fn mode(&self) -> &'static str;

    /// Programs `plan`, one [`SyncReport`] per IP family. `full`: rewrite everything from
    /// what the host has; otherwise apply what changed since the last successful sync.
    fn sync<'a>(
        &'a mut self,
        plan: &'a ProxyPlan,
        full: bool,
    ) -> BoxFuture<'a, Result<Vec<SyncReport>, BackendError>>;

    /// Whether what the last sync programmed is still there (upstream's canary). `false`
    /// after an external flush: the backend stops trusting its record, and the caller
    /// should sync fully. A check that could not be answered counts as intact.
    fn check_canary(&mut self) -> BoxFuture<'_, bool>;

    /// How often [`Backend::check_canary`] is worth what it costs in this mode.
    fn canary_period(&self) -> Duration;

    /// Whether the kernel's conntrack NATs service traffic (so stale UDP entries must be
    /// cleaned after endpoints go); userspace mode tracks its own flows.
    fn uses_kernel_nat(&self) -> bool {
        true
    }

    /// Removes everything this mode owns on the node, and nothing else; says what it
    /// removed.
    fn cleanup(&mut self) -> BoxFuture<'_, Result<String, BackendError>>;
}
