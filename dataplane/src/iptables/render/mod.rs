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
}

/// Renders the ruleset of `family`, or `None` if the node does not serve that family.
pub fn render(plan: &ProxyPlan, family: IpFamily, opts: &RenderOptions) -> Option<Ruleset> {
    render_cached(plan, family, opts, &mut RenderCache::default())
}

/// Per-service rendering results kept between syncs, so that a sync renders only the
/// services whose plan changed (at 10k services a full render costs ~150 ms of CPU; most
/// syncs change one service). Pure memoization: [`render_cached`] returns exactly what
/// [`render`] returns for the same plan.
#[derive(Debug, Default)]
pub struct RenderCache {
    /// What every fragment was rendered under; any change invalidates them all.
    context: Option<(FamilyContext, bool, bool)>,
    fragments: HashMap<ServicePortName, (ServicePortPlan, Ruleset)>,
}

/// [`render`], reusing the fragments in `cache` of services whose plan is unchanged.
pub fn render_cached(
    plan: &ProxyPlan,
    family: IpFamily,
    opts: &RenderOptions,
    cache: &mut RenderCache,
) -> Option<Ruleset> {
    let ctx = plan.node.family(family)?;
    let mut rs = Ruleset::new(family);
    declare_top_level_chains(&mut rs);
    write_masquerade_chains(&mut rs, plan.node.masquerade_mark, opts);
    if family == IpFamily::V4 && plan.node.localhost_nodeports {
        write_localnet_guard(&mut rs);
    }
    let endpoints: usize = plan
        .services_of(family)
        .map(|s| s.reachable_endpoints().len())
        .sum();
    let env = service::Env {
        node: &plan.node,
        family: ctx,
        endpoint_comments: endpoints <= LARGE_CLUSTER_ENDPOINTS,
    };
    let context = (ctx.clone(), plan.node.masquerade_all, env.endpoint_comments);
    if cache.context.as_ref() != Some(&context) {
        cache.fragments.clear();
        cache.context = Some(context);
    }
    let mut fragments = HashMap::with_capacity(cache.fragments.len());
    for svc in plan.services_of(family) {
        let fragment = match cache.fragments.remove(&svc.name) {
            Some((old, fragment)) if old == *svc => fragment,
            _ => {
                let mut fragment = Ruleset::new(family);
                service::render_service_port(&mut fragment, &env, svc);
                fragment
            }
        };
        rs.extend(&fragment);
        fragments.insert(svc.name.clone(), (svc.clone(), fragment));
    }
    cache.fragments = fragments;
    write_nodeports_jump(
        &mut rs,
        family,
        &ctx.nodeport_addresses,
        plan.node.localhost_nodeports,
    );
    write_forward_chain(&mut rs, plan.node.masquerade_mark, opts);
    Some(rs)
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
        rs.append(
            Table::Filter,
            KUBE_FORWARD,
            Rule::new()
                .args("-m conntrack --ctstate INVALID")
                .jump("DROP"),
        );
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
