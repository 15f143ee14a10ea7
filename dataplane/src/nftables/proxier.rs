//! The nftables-mode sync engine: per IP family, update the rendered table to the plan
//! (re-rendering only the service ports that changed), and apply the difference to what the
//! last sync wrote in one `nft -f -` transaction.
//!
//! A family's first sync, and any sync after a failure, recreates the table; a requested
//! full sync over a trusted record rewrites it in place (keeping session-affinity sets);
//! every other sync is partial. Nothing is listed from the kernel.
//!
//! Full syncs also create a tiny canary table per family (`ip kproxy-canary`);
//! [`NftablesProxier::canary_intact`] checks that it and kproxy's table still exist, which
//! reveals an external `nft flush ruleset` or `nft delete table ip kproxy` that a partial
//! sync would not repair.

use std::time::{Duration, Instant};

use crate::backend::{Backend, BackendError, BoxFuture};
use crate::iptables::apply::conntrack_tcp_be_liberal;
use crate::plan::{IpFamily, ProxyPlan};
use crate::report::SyncReport;

use super::apply::{self, NftError};
use super::render::{RenderOptions, RenderState};
use super::table::NftTable;
use super::transaction::{self, Transaction};

struct FamilyState {
    family: IpFamily,
    options: RenderOptions,
    /// What the last sync rendered. After a successful sync it is what the kernel has;
    /// after a failure it only serves as the slot layout of the next full render.
    rendered: Option<RenderState>,
    /// `rendered` is what the kernel has: the last sync succeeded, and no canary check
    /// found the canary or kproxy's table missing since.
    trusted: bool,
}

/// Programs kproxy's nftables tables (`ip kproxy`, `ip6 kproxy`) from plans.
pub struct NftablesProxier {
    families: Vec<FamilyState>,
}

impl NftablesProxier {
    /// A proxier for `families`; fails with a clear error when `nft` is missing or
    /// nf_tables (with nat) cannot be programmed here.
    pub async fn new(families: impl IntoIterator<Item = IpFamily>) -> Result<Self, NftError> {
        let families: Vec<IpFamily> = families.into_iter().collect();
        apply::check_available(&families).await?;
        let options = RenderOptions {
            conntrack_tcp_be_liberal: conntrack_tcp_be_liberal(),
        };
        Ok(NftablesProxier {
            families: families
                .into_iter()
                .map(|family| FamilyState {
                    family,
                    options,
                    rendered: None,
                    trusted: false,
                })
                .collect(),
        })
    }

    /// The families this proxier programs.
    pub fn families(&self) -> impl Iterator<Item = IpFamily> + '_ {
        self.families.iter().map(|f| f.family)
    }

    /// The full-sync transaction of `plan` per family (a family the plan does not serve
    /// gets an empty table), touching nothing.
    pub fn render(&self, plan: &ProxyPlan) -> Vec<(IpFamily, String)> {
        self.families
            .iter()
            .map(|f| {
                let layout = f.rendered.as_ref().map(RenderState::table);
                let state = RenderState::new(plan, f.family, &f.options, layout);
                (f.family, transaction::recreate(state.table()).text)
            })
            .collect()
    }

    /// Syncs every family. `full` forces a full sync; a family that has never synced, or
    /// whose last sync failed, is always recreated.
    pub async fn sync(
        &mut self,
        plan: &ProxyPlan,
        full: bool,
    ) -> Result<Vec<SyncReport>, NftError> {
        let mut reports = Vec::new();
        for state in &mut self.families {
            let start = Instant::now();
            let (mut tx, full) = state.prepare(plan, full);
            if full {
                tx.text.push_str(&transaction::canary(state.family));
            }
            state.trusted = false;
            apply::apply(state.family, &tx.text).await?;
            state.trusted = true;
            let table = state.rendered.as_ref().map(RenderState::table);
            reports.push(report(state.family, full, &tx, table, start.elapsed()));
        }
        Ok(reports)
    }

    /// Whether every family's canary table and kproxy's own table still exist, as the last
    /// sync left them. Cheap: per family two `nft list` commands of tiny objects (see
    /// [`apply::canary_intact`]). `false` means something deleted or flushed them: the
    /// record is no longer trusted, so the next [`sync`](Self::sync) recreates the table
    /// whatever `full` says, and the check keeps saying so until a sync repaired it. A check
    /// `nft` could not answer counts as intact; so does a family that has not synced yet.
    pub async fn canary_intact(&mut self) -> bool {
        let mut intact = true;
        for state in &mut self.families {
            if state.rendered.is_none() {
                // Nothing synced yet: nothing to miss.
                continue;
            }
            match apply::canary_intact(state.family).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(
                        family = %state.family,
                        "nftables canary or kproxy table is gone: rules were flushed, next sync recreates them"
                    );
                    state.trusted = false;
                    intact = false;
                }
                Err(err) => tracing::warn!(%err, "cannot check the nftables canary"),
            }
        }
        intact
    }

    /// Deletes kproxy's tables (`ip kproxy` and `ip6 kproxy`, whichever exist), its
    /// canary tables and upstream kube-proxy's (`ip kube-proxy`, `ip6 kube-proxy`), and
    /// nothing else; returns how many tables (canaries not counted) were deleted.
    pub async fn cleanup(&mut self) -> Result<usize, NftError> {
        for state in &mut self.families {
            state.rendered = None;
            state.trusted = false;
        }
        let mut deleted = 0;
        for family in IpFamily::ALL {
            for gone in [
                apply::delete_table(family).await?,
                apply::delete_upstream_table(family).await?,
            ] {
                deleted += usize::from(gone);
            }
            apply::delete_canary(family).await?;
        }
        Ok(deleted)
    }
}

impl Backend for NftablesProxier {
    fn mode(&self) -> &'static str {
        "nftables"
    }

    fn sync<'a>(
        &'a mut self,
        plan: &'a ProxyPlan,
        full: bool,
    ) -> BoxFuture<'a, Result<Vec<SyncReport>, BackendError>> {
        Box::pin(async move { Ok(NftablesProxier::sync(self, plan, full).await?) })
    }

    fn check_canary(&mut self) -> BoxFuture<'_, bool> {
        Box::pin(self.canary_intact())
    }

    /// Two `nft list` commands of tiny objects per family: ~4–6 ms at 10k services.
    fn canary_period(&self) -> Duration {
        Duration::from_secs(5)
    }

    fn cleanup(&mut self) -> BoxFuture<'_, Result<String, BackendError>> {
        Box::pin(async move {
            let tables = NftablesProxier::cleanup(self).await?;
            Ok(format!("removed {tables} tables"))
        })
    }
}

impl FamilyState {
    /// Renders `plan` and builds the transaction from what the kernel has; returns it and
    /// whether it is a full sync.
    fn prepare(&mut self, plan: &ProxyPlan, full: bool) -> (Transaction, bool) {
        if self.trusted
            && !full
            && let Some(rendered) = self.rendered.as_mut()
            && let Some(changes) = rendered.update(plan, &self.options)
        {
            if let Some(tx) =
                transaction::update_from(&changes.before, rendered.table(), &changes.elements)
            {
                return (tx, false);
            }
            return (transaction::recreate(rendered.table()), true);
        }
        let previous = self.rendered.take();
        let layout = previous.as_ref().map(RenderState::table);
        let next = RenderState::new(plan, self.family, &self.options, layout);
        let tx = match previous.filter(|_| self.trusted) {
            // A partial sync the incremental update could not do (node context changed).
            Some(prev) if !full => transaction::update(prev.table(), next.table()),
            Some(prev) => transaction::rewrite(&prev.table().shape(), next.table()),
            None => None,
        };
        let (tx, full) = match tx {
            Some(tx) => (tx, full),
            None => (transaction::recreate(next.table()), true),
        };
        self.rendered = Some(next);
        (tx, full)
    }
}

fn report(
    family: IpFamily,
    full: bool,
    tx: &Transaction,
    table: Option<&NftTable>,
    took: Duration,
) -> SyncReport {
    SyncReport {
        mode: "nftables",
        family,
        full,
        objects_written: tx.objects_written,
        objects_deleted: tx.objects_deleted,
        lines_written: tx.lines_written,
        rules_total: table.map_or(0, |t| t.rule_count() + t.element_count()),
        took,
    }
}
