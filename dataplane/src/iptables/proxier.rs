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

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::plan::{IpFamily, NodePortAddresses, ProxyPlan};
use crate::report::SyncReport;
use crate::tool::ToolError;

use super::apply::{
    BackendChoice, IptablesTool, conntrack_tcp_be_liberal, enable_route_localnet, resolve_backend,
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
    /// The last sync succeeded: the kernel has the cache's ruleset.
    trusted: bool,
    /// A canary check found a canary missing: the next sync must be full.
    canary_lost: AtomicBool,
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
                canary_lost: AtomicBool::new(false),
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
            let lost = state.canary_lost.swap(false, Ordering::Relaxed);
            let full = full || lost || !state.trusted;
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
    /// flushed kproxy's rules: the next [`sync`](Self::sync) is then full whatever `full`
    /// says. A check the tool could not answer (xtables lock busy) counts as intact. A
    /// family that has not synced yet counts as intact (its first sync is full anyway).
    pub async fn canary_intact(&self) -> bool {
        let mut intact = true;
        for state in &self.families {
            if !state.trusted {
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
                        state.canary_lost.store(true, Ordering::Relaxed);
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
