//! Conntrack cleanup: deleting the UDP/SCTP conntrack entries that a sync left pointing at
//! endpoints a service no longer has.
//!
//! Split like every backend: [`filter`] decides from a [`ProxyPlan`] and a dump which
//! entries are stale (pure), [`netlink`] dumps the table and deletes entries by their
//! original tuple over ctnetlink (the only kernel I/O). [`cleanup_stale`] runs both for one
//! family, after each successful sync.

pub mod filter;
pub mod flow;
pub mod netlink;

pub use filter::{FlowToDelete, Frontend, StaleFlowFilter, cleanup_needed, filter};
pub use flow::{Flow, FlowTuple};
pub use netlink::{ConntrackError, ConntrackSocket};

use std::time::{Duration, Instant};

use crate::plan::{IpFamily, ProxyPlan};

/// What one cleanup did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// UDP/SCTP entries of the family the dump returned.
    pub flows_seen: usize,
    /// Entries found stale.
    pub stale: usize,
    /// Stale entries the kernel deleted.
    pub deleted: usize,
    /// Stale entries already gone when the delete arrived (expired or deleted meanwhile).
    pub already_gone: usize,
    /// Time the whole cleanup took.
    pub took: Duration,
}

/// Deletes every stale UDP/SCTP conntrack entry of `family` for `plan`, in the calling
/// thread's network namespace: one dump per protocol with services of that protocol, then
/// batched deletes, all over one netlink socket.
///
/// Synchronous (blocking, but the kernel answers within the send/receive calls): call it
/// from the thread that owns the node's namespace, e.g. inline after a successful
/// `dataplane.sync` or in `tokio::task::block_in_place`. A delete the kernel refuses (other
/// than "no such entry") fails the cleanup with an error naming the flow, after the rest of
/// the batch was tried.
pub fn cleanup_stale(plan: &ProxyPlan, family: IpFamily) -> Result<CleanupReport, ConntrackError> {
    let start = Instant::now();
    let stale_filter = StaleFlowFilter::new(plan, family);
    let mut report = CleanupReport::default();
    let protocols = stale_filter.protocols();
    if protocols.is_empty() {
        report.took = start.elapsed();
        return Ok(report);
    }
    let mut socket = ConntrackSocket::open()?;
    let mut stale = Vec::new();
    for protocol in protocols {
        socket.dump_each(family, Some(protocol), |flow| {
            report.flows_seen += 1;
            if let Some(d) = stale_filter.check(&flow) {
                tracing::debug!(flow = %d.flow, service = %d.service, frontend = %d.frontend, "deleting stale conntrack entry");
                stale.push(d);
            }
        })?;
    }
    report.stale = stale.len();
    let outcome = socket.delete(&stale);
    report.deleted = outcome.deleted;
    report.already_gone = outcome.already_gone;
    report.took = start.elapsed();
    if report.stale > 0 {
        tracing::info!(
            %family,
            flows = report.flows_seen,
            stale = report.stale,
            deleted = report.deleted,
            already_gone = report.already_gone,
            failed = outcome.errors.len(),
            took_ms = report.took.as_millis() as u64,
            "deleted stale conntrack entries"
        );
    }
    let others = outcome.errors.len().saturating_sub(1);
    match outcome.errors.into_iter().next() {
        Some((flow, source)) => Err(ConntrackError::Delete {
            flow: Box::new(flow),
            source,
            others,
            deleted: report.deleted,
        }),
        None => Ok(report),
    }
}
