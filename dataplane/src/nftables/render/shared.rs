//! The chains shared by every service of the same shape, and the per-slot maps they read.
//!
//! A service never gets a chain of its own. Its verdict-map element jumps to an *entry*
//! chain named after the service's shape (traffic kind, traffic policy, endpoint counts,
//! affinity timeout); the entry chain applies the masquerade and short-circuit rules of that
//! shape and goes to a *pick* chain, which draws a slot with `numgen random mod N` (or takes
//! the slot session affinity remembers) and goes to a *slot* chain, which DNATs to
//! `ep-<set>-<kind>-<slot>[packet's key]`. The packet's own destination (`daddr . l4proto .
//! dport`, or `l4proto . dport` for NodePorts) is the key all the way down, so no register
//! or mark carries per-service data.

use std::collections::{BTreeMap, BTreeSet};

use super::super::names::*;
use super::super::table::{NftTable, Set};
use super::Ctx;
use super::service::Fragment;
use crate::plan::EndpointSet;

/// Kernel limit of entries of each affinity set (shared by all services using that slot).
pub const AFFINITY_SET_SIZE: u32 = 1 << 20;

/// The first chain a service's verdict-map element jumps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Entry {
    /// Cluster-IP traffic: masquerade off-cluster sources (or everything with
    /// `--masquerade-all`), then pick from the internal set.
    ClusterIp(Selection),
    /// External traffic with `externalTrafficPolicy: Cluster`: masquerade, then pick from
    /// the cluster set.
    External(Selection),
    /// External traffic with `externalTrafficPolicy: Local`: pod and node sources
    /// short-circuit to the cluster set, the rest picks from the local set (or falls
    /// through, to be dropped by `endpoints-check`, when there is no local endpoint).
    ExternalLocal {
        /// The key of the destinations.
        kind: KeyKind,
        /// Session-affinity timeout.
        affinity: Option<u32>,
        /// Number of cluster endpoints.
        cluster: usize,
        /// Number of local endpoints.
        local: usize,
    },
}

impl Entry {
    /// The chain's name.
    pub fn chain_name(&self) -> String {
        let aff = |a: Option<u32>| a.map(|t| format!("-aff{t}")).unwrap_or_default();
        match self {
            Entry::ClusterIp(sel) => {
                format!("cluster-ip-{}-{}{}", sel.set, sel.count, aff(sel.affinity))
            }
            Entry::External(sel) => format!(
                "external-{}-{}{}",
                sel.kind.as_str(),
                sel.count,
                aff(sel.affinity)
            ),
            Entry::ExternalLocal {
                kind,
                affinity,
                cluster,
                local,
            } => format!(
                "external-local-{}-{cluster}-{local}{}",
                kind.as_str(),
                aff(*affinity)
            ),
        }
    }

    fn selections(&self) -> (Option<Selection>, Option<Selection>) {
        match *self {
            Entry::ClusterIp(sel) | Entry::External(sel) => (Some(sel), None),
            Entry::ExternalLocal {
                kind,
                affinity,
                cluster,
                local,
            } => {
                let sel = |set, count| {
                    (count > 0).then_some(Selection {
                        set,
                        kind,
                        count,
                        affinity,
                    })
                };
                (
                    sel(EndpointSet::Cluster, cluster),
                    sel(EndpointSet::Local, local),
                )
            }
        }
    }
}

/// How many service fragments use each entry chain and each pick chain directly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct SharedUse {
    entries: BTreeMap<Entry, usize>,
    picks: BTreeMap<Selection, usize>,
}

impl SharedUse {
    /// Counts the chains a fragment uses.
    pub fn add(&mut self, frag: &Fragment) {
        for e in &frag.entries {
            *self.entries.entry(*e).or_default() += 1;
        }
        for p in &frag.picks {
            *self.picks.entry(*p).or_default() += 1;
        }
    }

    /// Uncounts the chains a fragment used.
    pub fn remove(&mut self, frag: &Fragment) {
        fn dec<K: Ord>(map: &mut BTreeMap<K, usize>, key: &K) {
            if let Some(n) = map.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    map.remove(key);
                }
            }
        }
        for e in &frag.entries {
            dec(&mut self.entries, e);
        }
        for p in &frag.picks {
            dec(&mut self.picks, p);
        }
    }

    /// Every used entry, pick and slot chain, and the declarations of the maps and sets
    /// they read (without elements), as a partial table.
    pub fn render(&self, ctx: &Ctx) -> NftTable {
        let mut part = NftTable::new(ctx.family);
        let mut picks: BTreeSet<Selection> = self.picks.keys().copied().collect();
        for entry in self.entries.keys() {
            write_entry(&mut part, ctx, entry);
            let (a, b) = entry.selections();
            picks.extend(a.into_iter().chain(b));
        }
        for sel in &picks {
            write_pick(&mut part, ctx, sel);
        }
        part
    }
}

fn write_entry(table: &mut NftTable, ctx: &Ctx, entry: &Entry) {
    let ip = ctx.ip;
    let name = entry.chain_name();
    let mut rules = Vec::new();
    let detector = &ctx.fam.local_detector;
    match entry {
        Entry::ClusterIp(sel) => {
            if ctx.node.masquerade_all {
                rules.push(format!("jump {MARK_MASQ}"));
            } else if let Some(not_local) = detector.nftables_match(ip, false) {
                rules.push(format!(
                    "{not_local} jump {MARK_MASQ} comment \"masquerade off-cluster traffic to cluster IPs\""
                ));
            }
            rules.push(format!("goto {}", sel.pick_chain()));
        }
        Entry::External(sel) => {
            // Endpoints may be on another node: masquerade so replies come back through us.
            rules.push(format!(
                "jump {MARK_MASQ} comment \"masquerade traffic for external destinations\""
            ));
            rules.push(format!("goto {}", sel.pick_chain()));
        }
        Entry::ExternalLocal { .. } => {
            let (cluster, local) = entry.selections();
            // Pods and the node itself reach external destinations as if through an
            // external load balancer: they are not subject to the Local policy.
            if let (Some(local), Some(c)) = (detector.nftables_match(ip, true), cluster) {
                rules.push(format!(
                    "{local} goto {} comment \"short-circuit pod traffic\"",
                    c.pick_chain()
                ));
            }
            rules.push(format!(
                "fib saddr type local jump {MARK_MASQ} comment \"masquerade local traffic\""
            ));
            if let Some(c) = cluster {
                rules.push(format!(
                    "fib saddr type local goto {} comment \"short-circuit local traffic\"",
                    c.pick_chain()
                ));
            }
            if let Some(l) = local {
                rules.push(format!("goto {}", l.pick_chain()));
            }
        }
    }
    table.chain(&name).extend(rules);
}

/// The pick chain of a selection, its slot chains, and the maps and sets they read.
fn write_pick(table: &mut NftTable, ctx: &Ctx, sel: &Selection) {
    let ip = ctx.ip;
    let key = sel.kind.key_expr(ctx.family);
    let key_type = sel.kind.key_type(ctx.family);
    let addr = addr_type(ctx.family);
    let mut rules = Vec::new();
    for slot in 0..sel.count {
        let map = endpoint_map(sel.set, sel.kind, slot);
        table.declare(&map, || {
            Set::managed("map", format!("type {key_type} : {addr} . inet_service;"))
        });
        let slot_chain = sel.slot_chain(slot);
        let mut slot_rules = Vec::new();
        if let Some(timeout) = sel.affinity {
            let aff = affinity_set(sel.set, sel.kind, slot);
            table.declare(&aff, || {
                Set::dynamic(format!(
                    "type {addr} . {key_type}; flags dynamic,timeout; size {AFFINITY_SET_SIZE};"
                ))
            });
            rules.push(format!("{ip} saddr . {key} @{aff} goto {slot_chain}"));
            slot_rules.push(format!(
                "update @{aff} {{ {ip} saddr . {key} timeout {timeout}s }}"
            ));
        }
        slot_rules.push(format!(
            "meta l4proto {{ tcp, udp, sctp }} dnat {ip} to {key} map @{map}"
        ));
        if !table.chains.contains_key(&slot_chain) {
            table.chain(&slot_chain).extend(slot_rules);
        }
    }
    if sel.count == 1 {
        rules.push(format!("goto {}", sel.slot_chain(0)));
    } else {
        let arms: Vec<String> = (0..sel.count)
            .map(|slot| format!("{slot} : goto {}", sel.slot_chain(slot)))
            .collect();
        rules.push(format!(
            "numgen random mod {} vmap {{ {} }}",
            sel.count,
            arms.join(", ")
        ));
    }
    table.chain(&sel.pick_chain()).extend(rules);
}
