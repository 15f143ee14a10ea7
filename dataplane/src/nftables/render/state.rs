//! The render state a proxier keeps between syncs, so that a partial sync re-renders only
//! the service ports whose plan changed.
//!
//! The table is the node-wide objects, the shared chains of the shapes in use (counted per
//! fragment), and the elements every service fragment contributes. An update removes the
//! old fragments of changed and removed services, adds the new ones, re-renders the (small)
//! shared part from the counts, and reports the elements whose value changed: the
//! transaction builder never walks the whole table. A full render of the same plan gives
//! the same table (tested).

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};

use crate::plan::{IpFamily, NodeContext, ProxyPlan, ServicePortName, ServicePortPlan};

use super::super::names::family_keyword;
use super::super::table::{NftTable, Shape, Text};
use super::service::{Fragment, render_service_port};
use super::shared::SharedUse;
use super::{Ctx, RenderOptions, render_node};

/// Elements whose value changed, per set: key → (before, after).
pub type ElementDelta = BTreeMap<String, BTreeMap<String, (Option<String>, Option<String>)>>;

/// What an incremental update changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Chains and set declarations before the update.
    pub before: Shape,
    /// Elements whose value changed.
    pub elements: ElementDelta,
}

/// The 64-bit hash of a service port's name: the key of its cached fragment.
fn name_key(name: &ServicePortName) -> u64 {
    let mut h = DefaultHasher::new();
    name.hash(&mut h);
    h.finish()
}

/// The 64-bit hash of everything in a service port's plan. Comparing fingerprints instead
/// of plans keeps a partial sync from touching the memory of every unchanged service.
fn fingerprint(svc: &ServicePortPlan) -> u64 {
    // No `..`: a field added to the plan must be added here too.
    let ServicePortPlan {
        name,
        family,
        cluster_ip,
        port,
        node_port,
        external_ips,
        load_balancer_ips,
        load_balancer_source_ranges,
        session_affinity_timeout,
        external_policy_local,
        internal_policy_local,
        health_check_node_port,
        cluster_endpoints,
        local_endpoints,
        has_any_endpoints,
    } = svc;
    let mut h = DefaultHasher::new();
    (name, family, cluster_ip, port, node_port, external_ips).hash(&mut h);
    (
        load_balancer_ips,
        load_balancer_source_ranges,
        session_affinity_timeout,
    )
        .hash(&mut h);
    (
        external_policy_local,
        internal_policy_local,
        health_check_node_port,
    )
        .hash(&mut h);
    (cluster_endpoints, local_endpoints, has_any_endpoints).hash(&mut h);
    h.finish()
}

/// A service port's cached fragment.
#[derive(Debug, Clone)]
struct Cached {
    /// The fingerprint of the plan it was rendered from.
    plan: u64,
    /// The last update pass that saw the service port.
    seen: u64,
    frag: Fragment,
}

/// A rendered table and what is needed to update it incrementally.
#[derive(Debug, Clone)]
pub struct RenderState {
    table: NftTable,
    node: NodeContext,
    options: RenderOptions,
    /// Cached fragments by name key.
    services: HashMap<u64, Cached>,
    /// Update passes so far.
    pass: u64,
    /// Fragments of service ports whose name another one of the family already has; while
    /// there are any, updates re-render everything.
    duplicates: Vec<Fragment>,
    shared: SharedUse,
    /// The chains and declarations the shared part added.
    shared_part: Shape,
}

impl RenderState {
    /// Renders `plan` for `family` from scratch (an empty table if the node does not serve
    /// it); `layout` is a previous table whose endpoint slots are kept.
    pub fn new(
        plan: &ProxyPlan,
        family: IpFamily,
        options: &RenderOptions,
        layout: Option<&NftTable>,
    ) -> Self {
        let mut state = RenderState {
            table: NftTable::new(family),
            node: plan.node.clone(),
            options: *options,
            services: HashMap::with_capacity(plan.services_of(family).count()),
            pass: 0,
            duplicates: Vec::new(),
            shared: SharedUse::default(),
            shared_part: NftTable::new(family).shape(),
        };
        let Some(fam) = plan.node.family(family) else {
            return state;
        };
        let ctx = Ctx {
            family,
            ip: family_keyword(family),
            node: &plan.node,
            fam,
            layout,
        };
        state.table = render_node(&ctx, options);
        for svc in plan.services_of(family) {
            let frag = render_service_port(&ctx, svc);
            state.shared.add(&frag);
            let cached = Cached {
                plan: fingerprint(svc),
                seen: 0,
                frag,
            };
            // Two service ports with the same name key (the same name, or a hash collision)
            // are both rendered; updates then re-render everything.
            if let Some(first) = state.services.insert(name_key(&svc.name), cached) {
                state.duplicates.push(first.frag);
            }
        }
        let part = state.shared.render(&ctx);
        state.install_shared(part);
        let fragments = state
            .services
            .values()
            .map(|c| &c.frag)
            .chain(&state.duplicates);
        for frag in fragments {
            for (set, key, value) in &frag.elements {
                state.table.add_element(set, key.clone(), value.clone());
            }
        }
        state
    }

    /// The rendered table.
    pub fn table(&self) -> &NftTable {
        &self.table
    }

    /// The rendered table, taken.
    pub fn into_table(self) -> NftTable {
        self.table
    }

    /// Updates the table to `plan`, re-rendering only the service ports that changed.
    /// `None` when only a full render can tell (node context or options changed, duplicate
    /// names); the state is then unchanged.
    pub fn update(&mut self, plan: &ProxyPlan, options: &RenderOptions) -> Option<Changes> {
        if plan.node != self.node || *options != self.options || !self.duplicates.is_empty() {
            return None;
        }
        let family = self.table.family;
        let Some(fam) = plan.node.family(family) else {
            return Some(Changes {
                before: self.table.shape(),
                elements: ElementDelta::new(),
            });
        };
        let ctx = Ctx {
            family,
            ip: family_keyword(family),
            node: &plan.node,
            fam,
            layout: Some(&self.table),
        };
        // Classify: the plan's service ports that are new or changed get a new fragment.
        self.pass += 1;
        let pass = self.pass;
        let mut matched = 0;
        let mut fresh: Vec<(u64, u64, Fragment)> = Vec::new();
        let mut new_keys: HashSet<u64> = HashSet::new();
        for svc in plan.services_of(family) {
            let key = name_key(&svc.name);
            let plan_fp = fingerprint(svc);
            match self.services.get_mut(&key) {
                // Seen twice: a duplicate name or a collision; only a full render can tell.
                Some(cached) if cached.seen == pass => return None,
                Some(cached) => {
                    cached.seen = pass;
                    matched += 1;
                    if cached.plan != plan_fp {
                        fresh.push((key, plan_fp, render_service_port(&ctx, svc)));
                    }
                }
                None => {
                    if !new_keys.insert(key) {
                        return None;
                    }
                    fresh.push((key, plan_fp, render_service_port(&ctx, svc)));
                }
            }
        }
        let removed: Vec<u64> = if matched == self.services.len() {
            Vec::new()
        } else {
            self.services
                .iter()
                .filter(|(_, c)| c.seen != pass)
                .map(|(k, _)| *k)
                .collect()
        };
        let before = self.table.shape();
        if fresh.is_empty() && removed.is_empty() {
            return Some(Changes {
                before,
                elements: ElementDelta::new(),
            });
        }

        // Take out the old fragments of changed and removed services.
        let mut old: Vec<Fragment> = Vec::new();
        for key in fresh.iter().map(|(key, _, _)| key).chain(&removed) {
            if let Some(cached) = self.services.remove(key) {
                old.push(cached.frag);
            }
        }
        for frag in &old {
            self.shared.remove(frag);
        }
        for (_, _, frag) in &fresh {
            self.shared.add(frag);
        }
        let part = self.shared.render(&Ctx {
            layout: None,
            ..ctx
        });
        let old_part = self.install_shared(part);

        let mut touched: BTreeMap<(Text, Text), Option<String>> = BTreeMap::new();
        for frag in &old {
            for (set, key, value) in &frag.elements {
                let was = self.table.element_value(set, key).map(str::to_owned);
                touched.entry((set.clone(), key.clone())).or_insert(was);
                self.table.remove_element(set, key, value);
            }
        }
        for (_, _, frag) in &fresh {
            for (set, key, value) in &frag.elements {
                let was = self.table.element_value(set, key).map(str::to_owned);
                touched.entry((set.clone(), key.clone())).or_insert(was);
                self.table.add_element(set, key.clone(), value.clone());
            }
        }
        self.remove_stale_shared_sets(&old_part);

        let mut elements = ElementDelta::new();
        for ((set, key), was) in touched {
            let now = self.table.element_value(&set, &key).map(str::to_owned);
            if was != now {
                elements
                    .entry(set.to_string())
                    .or_default()
                    .insert(key.to_string(), (was, now));
            }
        }
        for (key, plan, frag) in fresh {
            let seen = pass;
            self.services.insert(key, Cached { plan, seen, frag });
        }
        Some(Changes { before, elements })
    }

    /// Replaces the shared chains with `part`'s and declares its sets (keeping the
    /// elements of sets that exist); returns the previous shared part.
    fn install_shared(&mut self, part: NftTable) -> Shape {
        let shape = part.shape();
        for name in self.shared_part.chains.keys() {
            if !shape.chains.contains_key(name) {
                self.table.chains.remove(name);
            }
        }
        self.table.chains.extend(part.chains);
        for (name, set) in part.sets {
            self.table.sets.entry(name).or_insert(set);
        }
        std::mem::replace(&mut self.shared_part, shape)
    }

    /// Deletes the sets the `old` shared part declared and the current one does not (their
    /// elements went with the fragments that contributed them).
    fn remove_stale_shared_sets(&mut self, old: &Shape) {
        for name in old.sets.keys() {
            if !self.shared_part.sets.contains_key(name) {
                self.table.sets.remove(name);
            }
        }
    }
}
