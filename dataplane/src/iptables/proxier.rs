//! The iptables-mode sync engine: per IP family, bring the cached ruleset to the plan
//! (patching only the per-service chains that changed, when it can), and apply the
//! difference to what the last sync wrote (or, on a full sync, to `iptables-save`) in one
//! `iptables-restore`.
//!
//! After any failure the cached ruleset is no longer trusted, so the next sync is a full one.
//!
//! Full syncs also declare an empty `KUBE-PROXY-CANARY` chain in mangle, filter and nat;
//! [`IptablesProxier::canary_intact`] checks they still exist, which reveals an external
//! flush (`iptables -F`/`-X`, a firewalld reload) that a partial sync would not repair.

use std::time::{Duration, Instant};

use crate::backend::{Backend, BackendError, BoxFuture};
use crate::plan::{IpFamily, NodePortAddresses, ProxyPlan};
use crate::report::SyncReport;
use crate::tool::ToolError;

use super::apply::{
    BackendChoice, IptablesBackend, IptablesTool, conntrack_tcp_be_liberal, enable_route_localnet,
    resolve_backend,
};
use super::names::{CANARY_TABLES, KUBE_PROXY_CANARY};
use super::render::{RenderCache, RenderOptions, RenderUpdate, render, render_update};
use super::restore::{self, RestoreInput, parse_save};
use super::ruleset::{Ruleset, Table};

struct FamilyState {
    tool: IptablesTool,
    options: RenderOptions,
    /// Per-service render results and the ruleset of the last render.
    cache: RenderCache,
    /// The last sync succeeded and no canary check found a flush since: the kernel has
    /// the cache's ruleset.
    trusted: bool,
}

/// Programs iptables (and ip6tables) from plans.
pub struct IptablesProxier {
    families: Vec<FamilyState>,
}

impl IptablesProxier {
    /// A proxier for `families`, with the backend resolved and capabilities probed.
    pub async fn new(
        choice: BackendChoice,
        families: impl IntoIterator<Item = IpFamily>,
    ) -> Result<Self, ToolError> {
        let mut states = Vec::new();
        for family in families {
            let backend = resolve_backend(choice, family).await?;
            let tool = IptablesTool { family, backend };
            let options = RenderOptions {
                random_fully: tool.supports_random_fully().await,
                conntrack_tcp_be_liberal: conntrack_tcp_be_liberal(),
                nfacct: super::nfacct::counters_exist(),
            };
            tracing::info!(%family, %backend, random_fully = options.random_fully, "iptables backend");
            states.push(FamilyState {
                tool,
                options,
                cache: RenderCache::default(),
                trusted: false,
            });
        }
        Ok(IptablesProxier { families: states })
    }

    /// The tools in use, one per family.
    pub fn tools(&self) -> impl Iterator<Item = &IptablesTool> {
        self.families.iter().map(|f| &f.tool)
    }

    /// Renders what a sync of `plan` would program, per family, touching nothing.
    pub fn render(&self, plan: &ProxyPlan) -> Vec<Ruleset> {
        self.families
            .iter()
            .filter_map(|f| render(plan, f.tool.family, &f.options))
            .collect()
    }

    /// Syncs every family. `full` forces a full sync; a family that has never synced, or
    /// whose last sync failed, is always synced fully.
    pub async fn sync(
        &mut self,
        plan: &ProxyPlan,
        full: bool,
    ) -> Result<Vec<SyncReport>, ToolError> {
        let mut reports = Vec::new();
        for state in &mut self.families {
            let start = Instant::now();
            let family = state.tool.family;
            let update = render_update(plan, family, &state.options, &mut state.cache);
            let empty = Ruleset::new(family);
            let full = full || !state.trusted;
            // The cache now holds the new ruleset; until the kernel has it too, the next
            // sync must not trust a diff against the cache.
            state.trusted = false;
            let wanted = state.cache.ruleset().unwrap_or(&empty);
            let input = match &update {
                RenderUpdate::Chains(changes) if !full => restore::chains_sync(wanted, changes),
                RenderUpdate::Rebuilt { previous } if !full => {
                    restore::partial_sync(previous.as_ref().unwrap_or(&empty), wanted)
                }
                _ => {
                    if family == IpFamily::V4
                        && needs_route_localnet(plan)
                        && let Err(err) = enable_route_localnet()
                    {
                        tracing::warn!(%err, "cannot set route_localnet: localhost NodePorts will not work");
                    }
                    let saved = parse_save(&state.tool.save().await?);
                    restore::full_sync(wanted, &saved)
                }
            };
            let rendered = start.elapsed();
            state.tool.restore(&input).await?;
            state.trusted = true;
            tracing::debug!(
                %family,
                render_and_diff_ms = rendered.as_secs_f64() * 1e3,
                restore_ms = (start.elapsed() - rendered).as_secs_f64() * 1e3,
                "iptables sync stages"
            );
            reports.push(report(family, full, &input, wanted, start.elapsed()));
        }
        Ok(reports)
    }

    /// Whether every family's `KUBE-PROXY-CANARY` chains (mangle, filter, nat) still exist,
    /// as the last full sync left them. Cheap: per family at most one
    /// `iptables -w 5 -t TABLE -S KUBE-PROXY-CANARY` per table, smallest table first,
    /// stopping at the first missing one; never an `iptables-save`. `false` means something
    /// flushed kproxy's rules: the family's cache is no longer trusted, so its next
    /// [`sync`](Self::sync) is full whatever `full` says, and the check keeps saying so
    /// until a sync repaired it. A check the tool could not answer (xtables lock busy)
    /// counts as intact; so does a family that has not synced yet.
    pub async fn canary_intact(&mut self) -> bool {
        let mut intact = true;
        for state in &mut self.families {
            if state.cache.ruleset().is_none() {
                // Nothing synced yet: nothing to miss.
                continue;
            }
            for table in CANARY_TABLES {
                match state.tool.chain_exists(table, KUBE_PROXY_CANARY).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(
                            family = %state.tool.family,
                            table,
                            "iptables canary chain {KUBE_PROXY_CANARY} is gone: rules were flushed, next sync is full"
                        );
                        state.trusted = false;
                        intact = false;
                        break;
                    }
                    Err(err) => {
                        tracing::warn!(%err, table, "cannot check the iptables canary");
                    }
                }
            }
        }
        intact
    }

    /// Removes every chain and jump rule kproxy owns (canaries included), in every family;
    /// touches nothing else.
    pub async fn cleanup(&mut self) -> Result<RestoreInput, ToolError> {
        let mut total = RestoreInput::default();
        for state in &mut self.families {
            state.trusted = false;
            let saved = parse_save(&state.tool.save().await?);
            let mangle_canary = state
                .tool
                .chain_exists(CANARY_TABLES[0], KUBE_PROXY_CANARY)
                .await?;
            let input = restore::cleanup(&saved, mangle_canary);
            state.tool.restore(&input).await?;
            total.text.push_str(&input.text);
            total.chains_deleted += input.chains_deleted;
            total.rules_written += input.rules_written;
        }
        Ok(total)
    }
}

impl Backend for IptablesProxier {
    fn mode(&self) -> &'static str {
        "iptables"
    }

    fn sync<'a>(
        &'a mut self,
        plan: &'a ProxyPlan,
        full: bool,
    ) -> BoxFuture<'a, Result<Vec<SyncReport>, BackendError>> {
        Box::pin(async move { Ok(IptablesProxier::sync(self, plan, full).await?) })
    }

    fn check_canary(&mut self) -> BoxFuture<'_, bool> {
        Box::pin(self.canary_intact())
    }

    /// A check costs ~4–6 ms with iptables-nft at 10k services, but ~225 ms with
    /// iptables-legacy (it fetches the whole table and holds the xtables lock meanwhile),
    /// which is checked less often.
    fn canary_period(&self) -> Duration {
        if self.tools().any(|t| t.backend == IptablesBackend::Legacy) {
            Duration::from_secs(30)
        } else {
            Duration::from_secs(5)
        }
    }

    fn cleanup(&mut self) -> BoxFuture<'_, Result<String, BackendError>> {
        Box::pin(async move {
            let removed = IptablesProxier::cleanup(self).await?;
            Ok(format!(
                "removed {} chains and {} jump rules",
                removed.chains_deleted, removed.rules_written
            ))
        })
    }
}

fn needs_route_localnet(plan: &ProxyPlan) -> bool {
    plan.node.localhost_nodeports
        && plan
            .node
            .ipv4
            .as_ref()
            .is_some_and(|ctx| match &ctx.nodeport_addresses {
                NodePortAddresses::All => true,
                NodePortAddresses::Only(ips) => ips.iter().any(|ip| ip.is_loopback()),
            })
}

fn report(
    family: IpFamily,
    full: bool,
    input: &RestoreInput,
    wanted: &Ruleset,
    took: Duration,
) -> SyncReport {
    SyncReport {
        mode: "iptables",
        family,
        full,
        objects_written: input.chains_written,
        objects_deleted: input.chains_deleted,
        lines_written: input.rules_written,
        rules_total: wanted.rule_count(Table::Nat) + wanted.rule_count(Table::Filter),
        took,
    }
}
