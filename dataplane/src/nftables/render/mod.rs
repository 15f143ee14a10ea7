//! `ProxyPlan` → [`NftTable`] for one IP family. Pure.
//!
//! The node-wide objects (base chains, `services`, the no-endpoint and firewall checks,
//! masquerading, forward filtering and their maps) are written here; what one service port
//! adds (map and set elements, and the shared chains its shape needs) is in `service`; the
//! shared entry/pick/slot chains are in `shared`; the slot each endpoint occupies is chosen
//! by `layout`; [`state`] assembles the table and updates it incrementally. Output is
//! deterministic: the same plan and layout give the same table, so two renders diff to
//! nothing.

mod layout;
mod service;
mod shared;
pub mod state;

pub use state::{Changes, ElementDelta, RenderState};

use crate::plan::{FamilyContext, IpFamily, NodeContext, NodePortAddresses, ProxyPlan};

use super::names::*;
use super::table::{BaseChain, NftTable, Set};

/// What the node allows (probed by the proxier, never by the renderer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RenderOptions {
    /// `net.netfilter.nf_conntrack_tcp_be_liberal` is set: no need to drop INVALID packets.
    pub conntrack_tcp_be_liberal: bool,
}

/// What the per-service renderers need to know about the node and family.
#[derive(Clone, Copy)]
pub(crate) struct Ctx<'a> {
    /// The family.
    pub family: IpFamily,
    /// `ip` or `ip6`.
    pub ip: &'static str,
    /// Node-wide settings.
    pub node: &'a NodeContext,
    /// Facts of this family.
    pub fam: &'a FamilyContext,
    /// The table a previous sync wrote, whose endpoint slots are kept where possible.
    pub layout: Option<&'a NftTable>,
}

/// Renders the table of `family`, or `None` if the node does not serve that family.
///
/// `layout` is the table the previous sync wrote (if any): endpoints that are still there
/// keep their slots, so that a one-endpoint change is a one-element change and
/// session-affinity entries keep pointing at the same endpoint.
pub fn render(
    plan: &ProxyPlan,
    family: IpFamily,
    opts: &RenderOptions,
    layout: Option<&NftTable>,
) -> Option<NftTable> {
    plan.node.family(family)?;
    Some(RenderState::new(plan, family, opts, layout).into_table())
}

/// The node-wide part of the table.
pub(crate) fn render_node(ctx: &Ctx, opts: &RenderOptions) -> NftTable {
    let mut table = NftTable::new(ctx.family);
    write_base_chains(&mut table);
    declare_node_maps(&mut table, ctx.family);
    write_dispatch(&mut table, ctx);
    write_firewall_check(&mut table, ctx);
    write_cluster_ips_check(&mut table, ctx);
    write_masquerading(&mut table, ctx);
    write_forward(&mut table, ctx.node.masquerade_mark, opts);
    table
}

/// Base chains: filter chains at `dstnat - 10` (-110) see pre-DNAT destinations (firewall),
/// the ones after DNAT (input, forward, `output-post-dnat` at `dstnat + 10`) see services
/// that were not DNATed (no endpoints, a port no Service has, an unallocated address); nat chains dispatch (`dstnat`, -100) and masquerade
/// (`srcnat`, 100). Priorities are numeric: nft 1.0.6 refuses `dstnat` on the output hook.
const BASE_CHAINS: [(&str, BaseChain, &[&str]); 8] = [
    (
        "filter-prerouting",
        base("filter", "prerouting", "-110"),
        &["ct state new jump firewall-check"],
    ),
    (
        "filter-input",
        base("filter", "input", "-110"),
        &["ct state new jump endpoints-check"],
    ),
    (
        "filter-forward",
        base("filter", "forward", "-110"),
        &[
            "ct state new jump endpoints-check",
            "ct state new jump cluster-ips-check",
            "jump forward",
        ],
    ),
    (
        "filter-output",
        base("filter", "output", "-110"),
        &["ct state new jump firewall-check"],
    ),
    (
        "filter-output-post-dnat",
        base("filter", "output", "-90"),
        &[
            "ct state new jump endpoints-check",
            "ct state new jump cluster-ips-check",
        ],
    ),
    (
        "nat-prerouting",
        base("nat", "prerouting", "-100"),
        &["jump services"],
    ),
    (
        "nat-output",
        base("nat", "output", "-100"),
        &["jump services"],
    ),
    (
        "nat-postrouting",
        base("nat", "postrouting", "100"),
        &["jump masquerading"],
    ),
];

const fn base(kind: &'static str, hook: &'static str, priority: &'static str) -> BaseChain {
    BaseChain {
        kind,
        hook,
        priority,
    }
}

fn write_base_chains(table: &mut NftTable) {
    for (name, spec, rules) in BASE_CHAINS {
        let chain = table.base_chain(name, spec);
        chain.extend(rules.iter().map(|r| (*r).to_owned()));
    }
}

fn declare_node_maps(table: &mut NftTable, family: IpFamily) {
    let vip = KeyKind::Vip.key_type(family);
    let np = KeyKind::NodePort.key_type(family);
    let addr = addr_type(family);
    for (name, key) in [
        (SERVICE_IPS, &vip),
        (SERVICE_NODEPORTS, &np),
        (NO_ENDPOINT_SERVICES, &vip),
        (NO_ENDPOINT_NODEPORTS, &np),
    ] {
        table.declare(name, || {
            Set::managed("map", format!("type {key} : verdict;"))
        });
    }
    table.declare(FIREWALL_IPS, || Set::managed("set", format!("type {vip};")));
    table.declare(FIREWALL_ALLOW, || {
        Set::managed("set", format!("type {vip} . {addr}; flags interval;"))
    });
    table.declare(HAIRPIN, || {
        Set::managed("set", format!("type {addr} . {addr};"))
    });
    table.declare(CLUSTER_IPS, || Set::managed("set", format!("type {addr};")));
}

/// `services` (nat) and `endpoints-check` (filter) look up the same keys: the first in the
/// dispatch maps, the second in the no-endpoint maps. NodePorts match on the node's
/// NodePort addresses (localhost NodePorts are not supported, as upstream's nftables mode).
fn write_dispatch(table: &mut NftTable, ctx: &Ctx) {
    let ip = ctx.ip;
    let vip = KeyKind::Vip.key_expr(ctx.family);
    table.rule(SERVICES, format!("{vip} vmap @{SERVICE_IPS}"));
    table.rule(
        ENDPOINTS_CHECK,
        format!("{vip} vmap @{NO_ENDPOINT_SERVICES}"),
    );
    let nodeport_match = match &ctx.fam.nodeport_addresses {
        NodePortAddresses::All => Some(format!(
            "fib daddr type local {ip} daddr != {}",
            ctx.family.loopback_net()
        )),
        NodePortAddresses::Only(ips) => {
            let ips: Vec<_> = ips.iter().filter(|ip| !ip.is_loopback()).collect();
            if ips.is_empty() {
                None
            } else {
                table.declare(NODEPORT_IPS, || {
                    Set::managed("set", format!("type {};", addr_type(ctx.family)))
                });
                for ip in ips {
                    table.add_element(NODEPORT_IPS, ip.to_string().into(), "".into());
                }
                Some(format!("{ip} daddr @{NODEPORT_IPS}"))
            }
        }
    };
    if let Some(m) = nodeport_match {
        let np = KeyKind::NodePort.key_expr(ctx.family);
        table.rule(SERVICES, format!("{m} {np} vmap @{SERVICE_NODEPORTS}"));
        table.rule(
            ENDPOINTS_CHECK,
            format!("{m} {np} vmap @{NO_ENDPOINT_NODEPORTS}"),
        );
    }
    table.rule(REJECT_CHAIN, "reject");
}

/// `loadBalancerSourceRanges`: before DNAT, a new connection to a firewalled LB IP is
/// dropped unless its source is allowed.
fn write_firewall_check(table: &mut NftTable, ctx: &Ctx) {
    let ip = ctx.ip;
    let vip = KeyKind::Vip.key_expr(ctx.family);
    table.rule(
        FIREWALL_CHECK,
        format!("{vip} . {ip} saddr @{FIREWALL_ALLOW} return"),
    );
    table.rule(
        FIREWALL_CHECK,
        format!(
            "{vip} @{FIREWALL_IPS} drop comment \"loadBalancerSourceRanges: source not allowed\""
        ),
    );
}

/// After DNAT (a Service's traffic no longer goes to its cluster IP), new connections to a
/// cluster IP on a port no Service has are rejected, and those to an unallocated address
/// of a service CIDR dropped, as upstream's nftables mode.
fn write_cluster_ips_check(table: &mut NftTable, ctx: &Ctx) {
    let ip = ctx.ip;
    table.rule(
        CLUSTER_IPS_CHECK,
        format!(
            "{ip} daddr @{CLUSTER_IPS} reject comment \"Reject traffic to invalid ports of ClusterIPs\""
        ),
    );
    if !ctx.fam.service_cidrs.is_empty() {
        let cidrs: Vec<String> = ctx
            .fam
            .service_cidrs
            .iter()
            .map(ToString::to_string)
            .collect();
        table.rule(
            CLUSTER_IPS_CHECK,
            format!(
                "{ip} daddr {{ {} }} drop comment \"Drop traffic to unallocated ClusterIPs\"",
                cidrs.join(", ")
            ),
        );
    }
}

fn write_masquerading(table: &mut NftTable, ctx: &Ctx) {
    let ip = ctx.ip;
    let m = format!("{:#x}", ctx.node.masquerade_mark);
    table.rule(MARK_MASQ, format!("meta mark set meta mark | {m}"));
    // Hairpin: after DNAT, a packet whose source is its destination is a pod that reached
    // itself through a service; masquerade it so the reply comes back through the node.
    table.rule(
        MASQUERADING,
        format!("ct status dnat {ip} saddr . {ip} daddr @{HAIRPIN} jump {MARK_MASQ}"),
    );
    table.rule(MASQUERADING, format!("meta mark & {m} == 0 return"));
    // Clear the mark so a packet that re-traverses the stack is not masqueraded twice.
    table.rule(MASQUERADING, format!("meta mark set meta mark ^ {m}"));
    table.rule(
        MASQUERADING,
        "masquerade fully-random comment \"kubernetes service traffic requiring SNAT\"",
    );
}

fn write_forward(table: &mut NftTable, masquerade_mark: u32, opts: &RenderOptions) {
    if !opts.conntrack_tcp_be_liberal {
        // Without tcp_be_liberal, out-of-window packets are INVALID and would escape DNAT
        // reversal, causing spurious resets (kubernetes#74839).
        table.rule(FORWARD, "ct state invalid drop");
    }
    let m = format!("{masquerade_mark:#x}");
    table.rule(
        FORWARD,
        format!("meta mark & {m} == {m} accept comment \"kubernetes forwarding rules\""),
    );
    table.rule(
        FORWARD,
        "ct state related,established accept comment \"kubernetes forwarding conntrack rule\"",
    );
}

#[cfg(test)]
pub(crate) mod golden_tests;
