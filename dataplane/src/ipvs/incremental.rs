//! Incremental rendering of IPVS state: the same [`IpvsState`] as [`render`], but a sync
//! re-renders only the service ports whose plan changed, so a one-endpoint change costs
//! O(changed services) to render instead of O(all services).
//!
//! Every service port contributes a [`Fragment`]: its virtual servers, the addresses it
//! binds to `kube-ipvs0`, and its ipset entries, rendered by the same functions as the full
//! render. The assembled state is the union of the fragments, with what several fragments
//! share reference-counted: an address bound for two ports of one service, an entry of
//! `KUBE-IPVS-IPS`, a virtual server two services claim. Where two service ports claim the
//! same virtual server, the one last in plan order wins, as in the full render (the
//! planner sorts service ports by name, so that is the greatest name).
//!
//! Anything the fragments depend on besides their own plan — the node's family context
//! (its addresses, NodePort addresses) — changing drops every fragment, and the next
//! render is a full one. Equivalence with [`render`] is property-tested.
//!
//! [`render`]: super::state::render

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use crate::plan::{FamilyContext, IpFamily, ProxyPlan, ServicePortName, ServicePortPlan};

use super::ipset::{self, IpsetEntries};
use super::netlink::ServiceKey;
use super::state::{self, IpvsState, RenderOptions, VirtualServer, nodeport_ips};

/// What one service port contributes to the state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Fragment {
    virtual_servers: BTreeMap<ServiceKey, VirtualServer>,
    bound_addresses: BTreeSet<IpAddr>,
    entries: Vec<(&'static str, String)>,
}

impl Fragment {
    fn of(
        svc: &ServicePortPlan,
        nodeport_ips: &[IpAddr],
        own_ips: &[IpAddr],
        opts: &RenderOptions,
    ) -> Fragment {
        let mut one = IpvsState::default();
        state::render_service(svc, nodeport_ips, opts, &mut one);
        let mut sets = IpsetEntries::new();
        ipset::render_service(svc, nodeport_ips, own_ips, &mut sets);
        Fragment {
            virtual_servers: one.virtual_servers,
            bound_addresses: one.bound_addresses,
            entries: sets
                .into_iter()
                .flat_map(|(set, entries)| entries.into_iter().map(move |e| (set, e)))
                .collect(),
        }
    }
}

/// An [`IpvsState`] kept up to date from successive plans of one IP family.
#[derive(Debug)]
pub struct IncrementalRender {
    family: IpFamily,
    opts: RenderOptions,
    /// The family context the fragments were rendered under.
    context: Option<FamilyContext>,
    /// Per service port: the plan its fragment was rendered from, and the fragment.
    fragments: HashMap<ServicePortName, (ServicePortPlan, Fragment)>,
    /// Per virtual server: the service ports claiming it (the last one wins).
    claims: BTreeMap<ServiceKey, BTreeSet<ServicePortName>>,
    /// How many fragments bind each address.
    address_refs: HashMap<IpAddr, usize>,
    /// How many fragments hold each ipset entry.
    entry_refs: HashMap<(&'static str, String), usize>,
    /// The sets whose entries changed since [`take_changed_sets`](Self::take_changed_sets).
    changed_sets: BTreeSet<&'static str>,
    state: IpvsState,
}

impl IncrementalRender {
    /// A renderer for `family` with nothing rendered yet.
    pub fn new(family: IpFamily, opts: RenderOptions) -> IncrementalRender {
        IncrementalRender {
            family,
            opts,
            context: None,
            fragments: HashMap::new(),
            claims: BTreeMap::new(),
            address_refs: HashMap::new(),
            entry_refs: HashMap::new(),
            changed_sets: ipset::ALL_SETS.into_iter().collect(),
            state: empty_state(),
        }
    }

    /// The names of the sets whose entries changed since the last call (every set after a
    /// reset): the others need not be compared with what the kernel holds.
    pub fn take_changed_sets(&mut self) -> BTreeSet<&'static str> {
        std::mem::take(&mut self.changed_sets)
    }

    /// The state `plan` wants ([`render`](super::state::render)'s result), re-rendering
    /// only the service ports that changed since the last call. `None` when the node does
    /// not serve the family.
    pub fn render(&mut self, plan: &ProxyPlan) -> Option<&IpvsState> {
        let Some(ctx) = plan.node.family(self.family) else {
            self.reset(None);
            return None;
        };
        if self.context.as_ref() != Some(ctx) {
            self.reset(Some(ctx.clone()));
        }
        let nodeport_ips = nodeport_ips(plan, self.family);
        let mut present: HashSet<&ServicePortName> = HashSet::new();
        for svc in plan.services_of(self.family) {
            present.insert(&svc.name);
            if self
                .fragments
                .get(&svc.name)
                .is_some_and(|(rendered, _)| rendered == svc)
            {
                continue;
            }
            self.withdraw(&svc.name);
            let fragment = Fragment::of(svc, &nodeport_ips, &ctx.node_ips, &self.opts);
            self.contribute(svc, fragment);
        }
        let gone: Vec<ServicePortName> = self
            .fragments
            .keys()
            .filter(|name| !present.contains(name))
            .cloned()
            .collect();
        for name in &gone {
            self.withdraw(name);
        }
        Some(&self.state)
    }

    /// The state of the last [`render`](Self::render) (empty before the first, and when
    /// the node does not serve the family).
    pub fn state(&self) -> &IpvsState {
        &self.state
    }

    /// Forgets everything rendered (the next render is a full one).
    fn reset(&mut self, context: Option<FamilyContext>) {
        self.context = context;
        self.fragments.clear();
        self.claims.clear();
        self.address_refs.clear();
        self.entry_refs.clear();
        self.changed_sets = ipset::ALL_SETS.into_iter().collect();
        self.state = empty_state();
    }

    /// Adds `svc`'s fragment to the state.
    fn contribute(&mut self, svc: &ServicePortPlan, fragment: Fragment) {
        let name = &svc.name;
        for key in fragment.virtual_servers.keys() {
            self.claims.entry(*key).or_default().insert(name.clone());
        }
        for ip in &fragment.bound_addresses {
            *self.address_refs.entry(*ip).or_default() += 1;
            self.state.bound_addresses.insert(*ip);
        }
        for (set, entry) in &fragment.entries {
            *self.entry_refs.entry((*set, entry.clone())).or_default() += 1;
            if self
                .state
                .ipsets
                .entry(set)
                .or_default()
                .insert(entry.clone())
            {
                self.changed_sets.insert(set);
            }
        }
        let keys: Vec<ServiceKey> = fragment.virtual_servers.keys().copied().collect();
        self.fragments.insert(name.clone(), (svc.clone(), fragment));
        for key in keys {
            self.settle(key);
        }
    }

    /// Removes `name`'s fragment (if any) from the state.
    fn withdraw(&mut self, name: &ServicePortName) {
        let Some((_, fragment)) = self.fragments.remove(name) else {
            return;
        };
        for key in fragment.virtual_servers.keys() {
            if let Some(claimants) = self.claims.get_mut(key) {
                claimants.remove(name);
            }
            self.settle(*key);
        }
        for ip in &fragment.bound_addresses {
            if release(&mut self.address_refs, *ip) {
                self.state.bound_addresses.remove(ip);
            }
        }
        for (set, entry) in fragment.entries {
            if release(&mut self.entry_refs, (set, entry.clone()))
                && let Some(entries) = self.state.ipsets.get_mut(set)
                && entries.remove(&entry)
            {
                self.changed_sets.insert(set);
            }
        }
    }

    /// Makes the state's virtual server `key` the last claimant's, or removes it.
    fn settle(&mut self, key: ServiceKey) {
        let winner = self
            .claims
            .get(&key)
            .and_then(|claimants| claimants.last())
            .and_then(|name| self.fragments.get(name))
            .and_then(|(_, fragment)| fragment.virtual_servers.get(&key));
        match winner {
            Some(vs) => {
                self.state.virtual_servers.insert(key, vs.clone());
            }
            None => {
                self.claims.remove(&key);
                self.state.virtual_servers.remove(&key);
            }
        }
    }
}

/// Decrements `key`'s count; `true` when it reached zero (and was removed).
fn release<K: std::hash::Hash + Eq>(refs: &mut HashMap<K, usize>, key: K) -> bool {
    match refs.get_mut(&key) {
        Some(n) if *n > 1 => {
            *n -= 1;
            false
        }
        Some(_) => {
            refs.remove(&key);
            true
        }
        None => false,
    }
}

fn empty_state() -> IpvsState {
    IpvsState {
        ipsets: ipset::empty_sets(),
        ..IpvsState::default()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::fixtures::{endpoint, ip, node, service, with_endpoints};
    use crate::plan::Protocol;

    /// One service port drawn from small pools, so that service ports share cluster IPs,
    /// external and load-balancer IPs, NodePorts and endpoints, and claim the same virtual
    /// servers.
    fn service_port() -> impl Strategy<Value = ServicePortPlan> {
        (
            (0..6usize, 0..3usize, any::<bool>(), 0..2usize),
            (proptest::bits::u8::between(0, 4), any::<[bool; 4]>()),
            (
                proptest::option::of(0..2u16),
                proptest::bits::u8::between(0, 2),
            ),
            (
                proptest::bits::u8::between(0, 2),
                any::<bool>(),
                any::<bool>(),
            ),
            (any::<bool>(), any::<bool>(), proptest::option::of(0..2u16)),
        )
            .prop_map(
                |(
                    (name, cluster, udp, port),
                    (eps, local),
                    (node_port, externals),
                    (lbs, ranges, node_in_range),
                    (etp_local, itp_local, health),
                )| {
                    let mut svc = service(
                        "ns",
                        &format!("svc{name}"),
                        "p",
                        &format!("10.96.0.{}", cluster + 1),
                        [80, 443][port],
                    );
                    if udp {
                        svc.name.protocol = Protocol::Udp;
                    }
                    svc.node_port = node_port.map(|p| 30080 + p);
                    svc.external_ips = (0..2)
                        .filter(|i| externals & (1 << i) != 0)
                        .map(|i| ip(&format!("192.0.2.{}", i + 1)))
                        .collect();
                    svc.load_balancer_ips = (0..2)
                        .filter(|i| lbs & (1 << i) != 0)
                        .map(|i| ip(&format!("203.0.113.{}", i + 1)))
                        .collect();
                    if ranges {
                        let mut nets = vec!["198.51.100.0/24".parse().expect("cidr")];
                        if node_in_range {
                            nets.push("192.168.0.0/24".parse().expect("cidr"));
                        }
                        svc.load_balancer_source_ranges = nets;
                    }
                    svc.external_policy_local = etp_local;
                    svc.internal_policy_local = itp_local;
                    svc.health_check_node_port = health.map(|p| 32000 + p);
                    let endpoints = (0..4)
                        .filter(|i| eps & (1 << i) != 0)
                        .map(|i| endpoint(&format!("10.244.{i}.5:8080"), local[i]))
                        .collect();
                    with_endpoints(svc, endpoints)
                },
            )
    }

    /// A plan as the planner makes them: unique service port names, sorted; sometimes
    /// another node address (a context change), sometimes an IPv6 service port beside.
    fn plan() -> impl Strategy<Value = ProxyPlan> {
        (
            proptest::collection::vec(service_port(), 0..8),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(services, other_node_ip, v6)| {
                let mut by_name: BTreeMap<ServicePortName, ServicePortPlan> = BTreeMap::new();
                for svc in services {
                    by_name.insert(svc.name.clone(), svc);
                }
                let mut services: Vec<ServicePortPlan> = by_name.into_values().collect();
                if v6 {
                    services.push(with_endpoints(
                        service("ns", "svc6", "p", "fd00:96::1", 80),
                        vec![endpoint("[fd00:244::5]:8080", false)],
                    ));
                }
                services.sort_by(|a, b| (&a.name, a.family).cmp(&(&b.name, b.family)));
                let mut node = node();
                if other_node_ip && let Some(v4) = node.ipv4.as_mut() {
                    v4.node_ips = vec![ip("192.168.0.11")];
                }
                ProxyPlan { node, services }
            })
    }

    proptest! {
        /// After every plan of any sequence, the incremental state equals a full render.
        #[test]
        fn equals_a_full_render_after_every_plan(plans in proptest::collection::vec(plan(), 1..8)) {
            let opts = RenderOptions::default();
            let mut incremental = IncrementalRender::new(IpFamily::V4, opts.clone());
            let mut before = IpsetEntries::new();
            for plan in &plans {
                let full = state::render(plan, IpFamily::V4, &opts);
                prop_assert_eq!(incremental.render(plan), full.as_ref());
                // Every set whose entries differ from the last render's is reported.
                let after = full.map(|s| s.ipsets).unwrap_or_default();
                let changed = incremental.take_changed_sets();
                for set in ipset::ALL_SETS {
                    if before.get(set) != after.get(set) {
                        prop_assert!(changed.contains(set), "{} changed, not reported", set);
                    }
                }
                before = after;
            }
        }
    }

    #[test]
    fn an_unchanged_plan_rebuilds_nothing() {
        let mut incremental = IncrementalRender::new(IpFamily::V4, RenderOptions::default());
        let plan = ProxyPlan {
            node: node(),
            services: vec![with_endpoints(
                service("ns", "web", "p", "10.96.0.1", 80),
                vec![endpoint("10.244.0.5:8080", false)],
            )],
        };
        incremental.render(&plan);
        // A marker no fragment holds survives a render of the same plan: nothing was
        // rebuilt (a full render would drop it).
        incremental.state.bound_addresses.insert(ip("10.96.9.9"));
        let again = incremental.render(&plan).expect("v4");
        assert!(again.bound_addresses.contains(&ip("10.96.9.9")));
    }
}
