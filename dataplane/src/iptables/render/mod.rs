//! `ProxyPlan` → [`Ruleset`] for one IP family, in upstream kube-proxy's layout. Pure.
//!
//! The node-wide chains (`KUBE-POSTROUTING`, `KUBE-MARK-MASQ`, `KUBE-FORWARD`, the
//! NodePort tail of `KUBE-SERVICES`) are written here; everything that belongs to one
//! service port is in [`service`]. Output is deterministic: services in plan order, chains
//! sorted by name, so that two renders of the same plan diff to nothing.

mod service;

use std::collections::HashMap;

use crate::plan::{
    FamilyContext, IpFamily, NodePortAddresses, ProxyPlan, ServicePortName, ServicePortPlan,
};

use super::names::*;
use super::nfacct::CT_STATE_INVALID_DROPPED;
use super::ruleset::{Rule, Ruleset, Table};

/// Above this many endpoints (of one family), per-endpoint rules carry no comment, as in
/// upstream's "large cluster mode": every `-m comment` adds a fixed 256-byte field to the
/// rule, and iptables-legacy copies the whole table in and out of the kernel on every
/// restore, so at tens of thousands of endpoints comments roughly double each sync's cost.
pub const LARGE_CLUSTER_ENDPOINTS: usize = 1000;

/// What the installed iptables can do (probed by the apply layer, never by the renderer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RenderOptions {
    /// `MASQUERADE --random-fully` is supported.
    pub random_fully: bool,
    /// `net.netfilter.nf_conntrack_tcp_be_liberal` is set: no need to drop INVALID packets.
    pub conntrack_tcp_be_liberal: bool,
    /// The nfacct counters exist: count INVALID drops and localhost NodePort packets with
    /// them, as upstream (`super::nfacct`).
    pub nfacct: bool,
}

/// Renders the ruleset of `family`, or `None` if the node does not serve that family.
pub fn render(plan: &ProxyPlan, family: IpFamily, opts: &RenderOptions) -> Option<Ruleset> {
    render_cached(plan, family, opts, &mut RenderCache::default())
}

/// Per-service rendering results kept between syncs, and the ruleset they make up, so
/// that a sync renders only the services whose plan changed and, when only per-service
/// chains changed (an endpoint came or went: the common case), patches those chains into
/// the ruleset instead of rebuilding and diffing it (at 10k services that rebuild and diff
/// cost ~100 ms of every sync). [`render_cached`] returns exactly what [`render`] returns
/// for the same plan.
#[derive(Debug, Default)]
pub struct RenderCache {
    /// What every fragment was rendered under (family facts, masquerade-all, endpoint
    /// comments, localhost NodePort counting); any change invalidates them all.
    context: Option<(FamilyContext, bool, bool, bool)>,
    fragments: HashMap<ServicePortName, (ServicePortPlan, Ruleset)>,
    /// The ruleset of the last render.
    ruleset: Option<Ruleset>,
}

impl RenderCache {
    /// The ruleset of the last render (`None` before the first, or when the node does not
    /// serve the family).
    pub fn ruleset(&self) -> Option<&Ruleset> {
        self.ruleset.as_ref()
    }
}

/// How [`render_update`] changed the cached ruleset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenderUpdate {
    /// The ruleset was rebuilt; compare it with `previous` (`None`: there was none).
    Rebuilt {
        /// The ruleset before.
        previous: Option<Ruleset>,
    },
    /// Only these per-service chains changed.
    Chains(ChainChanges),
}

/// Per-service chains a render wrote (new content) or removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainChanges {
    /// Chains whose rules are new or different.
    pub write: Vec<(Table, String)>,
    /// Chains that are gone.
    pub delete: Vec<(Table, String)>,
}

/// [`render`], reusing the fragments in `cache` of services whose plan is unchanged.
pub fn render_cached(
    plan: &ProxyPlan,
    family: IpFamily,
    opts: &RenderOptions,
    cache: &mut RenderCache,
) -> Option<Ruleset> {
    render_update(plan, family, opts, cache);
    cache.ruleset.clone()
}

/// Brings the cached ruleset of `family` to `plan` and says how it changed. When the node
/// does not serve the family, the cache is emptied (no ruleset: nothing to program) and
/// the update is a rebuild from the previous ruleset.
pub fn render_update(
    plan: &ProxyPlan,
    family: IpFamily,
    opts: &RenderOptions,
    cache: &mut RenderCache,
) -> RenderUpdate {
    let Some(ctx) = plan.node.family(family) else {
        let previous = cache.ruleset.take();
        *cache = RenderCache::default();
        return RenderUpdate::Rebuilt { previous };
    };
    let endpoints: usize = plan
        .services_of(family)
        .map(|s| s.reachable_endpoints().len())
        .sum();
    let env = service::Env {
        node: &plan.node,
        family: ctx,
        endpoint_comments: endpoints <= LARGE_CLUSTER_ENDPOINTS,
        localhost_counter: opts.nfacct && family == IpFamily::V4 && plan.node.localhost_nodeports,
    };
    let context = (
        ctx.clone(),
        plan.node.masquerade_all,
        env.endpoint_comments,
        env.localhost_counter,
    );
    if cache.context.as_ref() != Some(&context) {
        cache.fragments.clear();
        cache.context = Some(context);
    } else if cache.ruleset.is_some()
        && let Some(changes) = patch_service_chains(plan, family, &env, cache)
    {
        return RenderUpdate::Chains(changes);
    }
    let previous = cache.ruleset.take();
    cache.ruleset = Some(rebuild(plan, family, opts, &env, cache));
    RenderUpdate::Rebuilt { previous }
}

/// Renders the whole ruleset from the cached fragments (rendering the missing and stale
/// ones), keeping the fragments of this plan.
fn rebuild(
    plan: &ProxyPlan,
    family: IpFamily,
    opts: &RenderOptions,
    env: &service::Env<'_>,
    cache: &mut RenderCache,
) -> Ruleset {
    let mut rs = Ruleset::new(family);
    declare_top_level_chains(&mut rs);
    write_masquerade_chains(&mut rs, plan.node.masquerade_mark, opts);
    if family == IpFamily::V4 && plan.node.localhost_nodeports {
        write_localnet_guard(&mut rs);
    }
    let mut fragments = HashMap::with_capacity(cache.fragments.len());
    for svc in plan.services_of(family) {
        let fragment = match cache.fragments.remove(&svc.name) {
            Some((old, fragment)) if old == *svc => fragment,
            _ => render_fragment(family, env, svc),
        };
        rs.extend(&fragment);
        fragments.insert(svc.name.clone(), (svc.clone(), fragment));
    }
    cache.fragments = fragments;
    write_nodeports_jump(
        &mut rs,
        family,
        &env.family.nodeport_addresses,
        plan.node.localhost_nodeports,
    );
    write_forward_chain(&mut rs, plan.node.masquerade_mark, opts);
    rs
}

fn render_fragment(family: IpFamily, env: &service::Env<'_>, svc: &ServicePortPlan) -> Ruleset {
    let mut fragment = Ruleset::new(family);
    service::render_service_port(&mut fragment, env, svc);
    fragment
}

/// The fast path: when the same services are planned and every changed one contributes
/// the same rules to the shared chains (`KUBE-SERVICES`, `KUBE-NODEPORTS`, ...), swaps
/// the changed services' own chains (`KUBE-SVC-`, `KUBE-SEP-`, ...) in the cached ruleset
/// and returns them. `None` (nothing changed in the cache) when a rebuild is needed.
fn patch_service_chains(
    plan: &ProxyPlan,
    family: IpFamily,
    env: &service::Env<'_>,
    cache: &mut RenderCache,
) -> Option<ChainChanges> {
    let mut changed = Vec::new();
    let mut seen = 0;
    for svc in plan.services_of(family) {
        let (old, fragment) = cache.fragments.get(&svc.name)?;
        seen += 1;
        if old != svc {
            let new = render_fragment(family, env, svc);
            if !same_shared_rules(fragment, &new) {
                return None;
            }
            changed.push((svc, new));
        }
    }
    if seen != cache.fragments.len() {
        return None;
    }
    let rs = cache.ruleset.as_mut()?;
    let mut changes = ChainChanges::default();
    for (svc, new) in changed {
        let old = cache
            .fragments
            .insert(svc.name.clone(), (svc.clone(), new))
            .map(|(_, fragment)| fragment)
            .unwrap_or_else(|| Ruleset::new(family));
        let Some((_, new)) = cache.fragments.get(&svc.name) else {
            continue;
        };
        for table in Table::ALL {
            let (before, after) = (old.table(table), new.table(table));
            for name in before.keys().filter(|n| is_service_chain(n)) {
                if !after.contains_key(name) {
                    rs.table_mut(table).remove(name);
                    changes.delete.push((table, name.clone()));
                }
            }
            for (name, rules) in after.iter().filter(|(n, _)| is_service_chain(n)) {
                if before.get(name) != Some(rules) {
                    rs.table_mut(table).insert(name.clone(), rules.clone());
                    changes.write.push((table, name.clone()));
                }
            }
        }
    }
    Some(changes)
}

/// Whether two fragments add the same rules to the chains services share.
fn same_shared_rules(a: &Ruleset, b: &Ruleset) -> bool {
    fn shared(rs: &Ruleset, table: Table) -> impl Iterator<Item = (&String, &Vec<String>)> {
        rs.table(table).iter().filter(|(n, _)| !is_service_chain(n))
    }
    Table::ALL
        .into_iter()
        .all(|table| shared(a, table).eq(shared(b, table)))
}

/// Top-level chains exist even when empty, so that the jump rules always have a target.
fn declare_top_level_chains(rs: &mut Ruleset) {
    for chain in [
        KUBE_SERVICES,
        KUBE_EXTERNAL_SERVICES,
        KUBE_FORWARD,
        KUBE_NODEPORTS,
        KUBE_PROXY_FIREWALL,
    ] {
        rs.chain(Table::Filter, chain);
    }
    for chain in [
        KUBE_SERVICES,
        KUBE_NODEPORTS,
        KUBE_POSTROUTING,
        KUBE_MARK_MASQ,
    ] {
        rs.chain(Table::Nat, chain);
    }
}

fn mark(mark: u32) -> String {
    format!("{mark:#x}")
}

fn write_masquerade_chains(rs: &mut Ruleset, masquerade_mark: u32, opts: &RenderOptions) {
    let m = mark(masquerade_mark);
    rs.append(
        Table::Nat,
        KUBE_POSTROUTING,
        Rule::new()
            .args(&format!("-m mark ! --mark {m}/{m}"))
            .jump("RETURN"),
    );
    // Clear the mark so a packet that re-traverses the stack is not masqueraded twice.
    rs.append(
        Table::Nat,
        KUBE_POSTROUTING,
        Rule::new().jump("MARK").args(&format!("--xor-mark {m}")),
    );
    let mut masquerade = Rule::new()
        .comment("kubernetes service traffic requiring SNAT")
        .jump("MASQUERADE");
    if opts.random_fully {
        masquerade = masquerade.args("--random-fully");
    }
    rs.append(Table::Nat, KUBE_POSTROUTING, masquerade);
    rs.append(
        Table::Nat,
        KUBE_MARK_MASQ,
        Rule::new().jump("MARK").args(&format!("--or-mark {m}")),
    );
}

/// `route_localnet` (needed for localhost NodePorts) lets martian packets to 127.0.0.0/8 in
/// from outside (kubernetes#90259). Upstream (and kubelet) block them in `KUBE-FIREWALL`;
/// kproxy keeps the same rule in its own `KUBE-PROXY-FIREWALL` (reached for every new
/// connection from INPUT), so that it never writes into a chain that kubelet owns.
fn write_localnet_guard(rs: &mut Ruleset) {
    rs.append(
        Table::Filter,
        KUBE_PROXY_FIREWALL,
        Rule::new()
            .comment("block incoming localnet connections")
            .args(
                "-d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT",
            )
            .jump("DROP"),
    );
}

const NODEPORTS_COMMENT: &str =
    "kubernetes service nodeports; NOTE: this must be the last rule in this chain";

fn write_nodeports_jump(
    rs: &mut Ruleset,
    family: IpFamily,
    addresses: &NodePortAddresses,
    localhost_nodeports: bool,
) {
    let localhost_ok = family == IpFamily::V4 && localhost_nodeports;
    match addresses {
        NodePortAddresses::All => {
            let mut rule = Rule::new()
                .comment(NODEPORTS_COMMENT)
                .args("-m addrtype --dst-type LOCAL");
            if !localhost_ok {
                rule = rule.args(&format!("! -d {}", family.loopback_net()));
            }
            rs.append(Table::Nat, KUBE_SERVICES, rule.jump(KUBE_NODEPORTS));
        }
        NodePortAddresses::Only(ips) => {
            for ip in ips.iter().filter(|ip| localhost_ok || !ip.is_loopback()) {
                rs.append(
                    Table::Nat,
                    KUBE_SERVICES,
                    Rule::new()
                        .comment(NODEPORTS_COMMENT)
                        .dst(ip)
                        .jump(KUBE_NODEPORTS),
                );
            }
        }
    }
}

fn write_forward_chain(rs: &mut Ruleset, masquerade_mark: u32, opts: &RenderOptions) {
    if !opts.conntrack_tcp_be_liberal {
        // Without tcp_be_liberal, out-of-window packets are INVALID and would escape DNAT
        // reversal, causing spurious resets (kubernetes#74839).
        let invalid = Rule::new().args("-m conntrack --ctstate INVALID");
        let invalid = if opts.nfacct {
            invalid.args(&format!(
                "-m nfacct --nfacct-name {CT_STATE_INVALID_DROPPED}"
            ))
        } else {
            invalid
        };
        rs.append(Table::Filter, KUBE_FORWARD, invalid.jump("DROP"));
    }
    let m = mark(masquerade_mark);
    rs.append(
        Table::Filter,
        KUBE_FORWARD,
        Rule::new()
            .comment("kubernetes forwarding rules")
            .args(&format!("-m mark --mark {m}/{m}"))
            .jump("ACCEPT"),
    );
    rs.append(
        Table::Filter,
        KUBE_FORWARD,
        Rule::new()
            .comment("kubernetes forwarding conntrack rule")
            .args("-m conntrack --ctstate RELATED,ESTABLISHED")
            .jump("ACCEPT"),
    );
}

#[cfg(test)]
mod golden_tests;
