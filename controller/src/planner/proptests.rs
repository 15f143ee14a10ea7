//! Property tests of the planner over random snapshots.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use kproxy_dataplane::plan::{Endpoint, IpFamily, NodeContext, Protocol, ServicePortPlan};
use proptest::prelude::*;
use proptest::sample::subsequence;

use super::fixtures::{NODE, NS, ip, node_ctx, port, service, slice_port};
use super::plan;
use crate::model::{
    EndpointSlice, ObjectKey, Service, SkipReason, SliceEndpoint, SlicePort, Snapshot,
};

const SERVICE_NAMES: [&str; 3] = ["a", "b", "c"];
/// Slices may also point at a Service that does not exist.
const SLICE_SERVICES: [&str; 4] = ["a", "b", "c", "missing"];
const PORT_NAMES: [&str; 3] = ["", "http", "dns"];
const NODES: [&str; 3] = [NODE, "node-b", "node-c"];
const ZONES: [&str; 2] = ["zone-a", "zone-b"];

fn protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![Just(Protocol::Tcp), Just(Protocol::Udp)]
}

fn family() -> impl Strategy<Value = IpFamily> {
    prop_oneof![Just(IpFamily::V4), Just(IpFamily::V6)]
}

/// The `n`th address of a small per-family pool, so addresses collide across slices.
fn pool_ip(family: IpFamily, prefix: &str, n: u8) -> IpAddr {
    match family {
        IpFamily::V4 => ip(&format!("{prefix}.{n}")),
        IpFamily::V6 => ip(&format!("fd{}::{n}", prefix.len())),
    }
}

fn names(pool: &'static [&'static str]) -> impl Strategy<Value = BTreeSet<String>> {
    subsequence(pool, 0..=pool.len()).prop_map(|v| v.iter().map(|s| s.to_string()).collect())
}

fn endpoint(family: IpFamily) -> impl Strategy<Value = SliceEndpoint> {
    let node = proptest::option::of(proptest::sample::select(&NODES[..]));
    let conditions = (any::<bool>(), any::<bool>(), any::<bool>());
    (1..=4u8, conditions, node, names(&ZONES), names(&NODES)).prop_map(
        move |(n, (ready, serving, terminating), node, zone_hints, node_hints)| SliceEndpoint {
            address: pool_ip(family, "10.1.0", n),
            ready,
            serving,
            terminating,
            node_name: node.map(str::to_string),
            zone_hints,
            node_hints,
        },
    )
}

fn slice_ports() -> impl Strategy<Value = Vec<SlicePort>> {
    let one = (
        proptest::sample::select(&PORT_NAMES[..]),
        protocol(),
        8080..8082u16,
    )
        .prop_map(|(name, proto, target)| slice_port(name, proto, target));
    prop::collection::vec(one, 0..4)
}

/// A slice without its name (given by its position in the generated list).
fn unnamed_slice() -> impl Strategy<Value = EndpointSlice> {
    let svc = proptest::sample::select(&SLICE_SERVICES[..]);
    (svc, family(), slice_ports()).prop_flat_map(|(svc, family, ports)| {
        prop::collection::vec(endpoint(family), 0..5).prop_map(move |endpoints| EndpointSlice {
            key: ObjectKey::new(NS, ""),
            service: ObjectKey::new(NS, svc),
            family,
            ports: ports.clone(),
            endpoints,
            last_change_trigger_time: None,
        })
    })
}

/// Slices named so that name order differs from generation order.
fn slices() -> impl Strategy<Value = Vec<EndpointSlice>> {
    let named = (
        unnamed_slice(),
        proptest::sample::select(&["x", "m", "b"][..]),
    );
    prop::collection::vec(named, 0..7).prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (mut s, prefix))| {
                s.key.name = format!("{prefix}-{i}").into();
                s
            })
            .collect()
    })
}

fn cluster_ips(i: u8) -> impl Strategy<Value = Vec<IpAddr>> {
    let v4 = pool_ip(IpFamily::V4, "10.0.0", i + 1);
    let v6 = pool_ip(IpFamily::V6, "fd00", i + 1);
    prop_oneof![
        Just(vec![v4]),
        Just(vec![v6]),
        Just(vec![v4, v6]),
        Just(vec![v6, v4])
    ]
}

fn service_ports() -> impl Strategy<Value = Vec<crate::model::ServicePortSpec>> {
    let specs = (protocol(), 1..100u16, proptest::option::of(30000..30003u16));
    (
        subsequence(&PORT_NAMES[..], 1..=3),
        prop::collection::vec(specs, 3),
    )
        .prop_map(|(names, specs)| {
            names
                .iter()
                .zip(specs)
                .map(|(name, (proto, p, node_port))| {
                    let mut spec = port(name, proto, p);
                    spec.node_port = node_port;
                    spec
                })
                .collect()
        })
}

fn extra_ips() -> impl Strategy<Value = Vec<IpAddr>> {
    subsequence(vec![ip("192.0.2.1"), ip("2001:db8::1")], 0..=2)
}

fn one_service(i: u8) -> impl Strategy<Value = Service> {
    let skip = prop_oneof![4 => Just(None), 1 => Just(Some(SkipReason::Headless))];
    let policies = (any::<bool>(), any::<bool>());
    (
        skip,
        cluster_ips(i),
        service_ports(),
        extra_ips(),
        extra_ips(),
        policies,
    )
        .prop_map(
            move |(skip, cluster_ips, ports, external_ips, lb_ips, (etp, itp))| {
                let mut svc = service(SERVICE_NAMES[usize::from(i)], "10.0.0.1");
                svc.skip = skip;
                svc.cluster_ips = cluster_ips;
                svc.ports = ports;
                svc.external_ips = external_ips;
                svc.load_balancer_ips = lb_ips;
                svc.external_policy_local = etp;
                svc.internal_policy_local = itp;
                svc
            },
        )
}

fn services() -> impl Strategy<Value = Vec<Service>> {
    let opt = |i| proptest::option::of(one_service(i));
    (opt(0), opt(1), opt(2)).prop_map(|(a, b, c)| [a, b, c].into_iter().flatten().collect())
}

/// A random world: services, slices (in generation order), node and zone.
#[derive(Debug, Clone)]
struct World {
    services: Vec<Service>,
    slices: Vec<EndpointSlice>,
    node: NodeContext,
    zone: Option<&'static str>,
}

impl World {
    fn snapshot(&self, slices: impl Iterator<Item = EndpointSlice>) -> Snapshot {
        Snapshot::from_objects(self.services.iter().cloned(), slices, [])
    }
}

fn world() -> impl Strategy<Value = World> {
    let zone = proptest::option::of(proptest::sample::select(&ZONES[..]));
    (services(), slices(), any::<(bool, bool)>(), zone).prop_map(
        |(services, slices, (v4, v6), zone)| World {
            services,
            slices,
            node: node_ctx(v4, v6),
            zone,
        },
    )
}

/// Every raw (unmerged) endpoint of a planned service port: address and its slice copy.
fn raw_endpoints<'a>(
    snap: &'a Snapshot,
    sp: &ServicePortPlan,
) -> Vec<(SocketAddr, &'a SliceEndpoint)> {
    let key = ObjectKey::new(sp.name.namespace.as_str(), sp.name.name.as_str());
    let mut raw = Vec::new();
    for slice in snap.endpoint_slices().values() {
        if slice.service != key || slice.family != sp.family {
            continue;
        }
        let ports = slice
            .ports
            .iter()
            .filter(|p| p.name == sp.name.port && p.protocol == sp.name.protocol);
        for p in ports {
            raw.extend(
                slice
                    .endpoints
                    .iter()
                    .map(|ep| (SocketAddr::new(ep.address, p.port), ep)),
            );
        }
    }
    raw
}

/// Some raw copy of the endpoint carries exactly its address, conditions and locality.
fn has_source(raw: &[(SocketAddr, &SliceEndpoint)], e: &Endpoint, node: &str) -> bool {
    raw.iter().any(|(addr, ep)| {
        *addr == e.addr
            && ep.ready == e.ready
            && ep.serving == e.serving
            && ep.terminating == e.terminating
            && (ep.node_name.as_deref() == Some(node)) == e.is_local
    })
}

fn implies(premise: bool, conclusion: bool) -> bool {
    !premise || conclusion
}

fn strictly_sorted(eps: &[Endpoint]) -> bool {
    eps.windows(2).all(|w| w[0].addr < w[1].addr)
}

/// The ready copies of each address that has one.
type ReadyCopies<'a> = BTreeMap<SocketAddr, Vec<&'a SliceEndpoint>>;

fn ready_copies<'a>(raw: &[(SocketAddr, &'a SliceEndpoint)]) -> ReadyCopies<'a> {
    let mut copies = ReadyCopies::new();
    for (addr, ep) in raw.iter().filter(|(_, ep)| ep.ready) {
        copies.entry(*addr).or_default().push(*ep);
    }
    copies
}

/// Some ready address has no ready copy with hints of this kind, which disables that
/// kind of hint for the whole service port.
fn some_lack(copies: &ReadyCopies<'_>, hints: fn(&SliceEndpoint) -> &BTreeSet<String>) -> bool {
    copies
        .values()
        .any(|eps| eps.iter().all(|ep| hints(ep).is_empty()))
}

/// When neither node nor zone hints can apply, the cluster set is every ready address.
fn check_hints_ignored(
    raw: &[(SocketAddr, &SliceEndpoint)],
    world: &World,
    sp: &ServicePortPlan,
) -> Result<(), TestCaseError> {
    let copies = ready_copies(raw);
    let node_off = some_lack(&copies, |ep| &ep.node_hints);
    let zone_off = world.zone.is_none() || some_lack(&copies, |ep| &ep.zone_hints);
    if sp.uses_cluster_endpoints() && !copies.is_empty() && node_off && zone_off {
        let cluster: Vec<SocketAddr> = sp.cluster_endpoints.iter().map(|e| e.addr).collect();
        let ready: Vec<SocketAddr> = copies.keys().copied().collect();
        prop_assert_eq!(cluster, ready, "topology applied with incomplete hints");
    }
    Ok(())
}

fn check_port(snap: &Snapshot, world: &World, sp: &ServicePortPlan) -> Result<(), TestCaseError> {
    let node = world.node.node_name.as_str();
    let raw = raw_endpoints(snap, sp);
    check_hints_ignored(&raw, world, sp)?;
    let any_ready = raw.iter().any(|(_, ep)| ep.ready);
    let any_usable = raw
        .iter()
        .any(|(_, ep)| ep.ready || (ep.serving && ep.terminating));
    prop_assert!(world.node.family(sp.family).is_some());
    prop_assert_eq!(IpFamily::of(&sp.cluster_ip), sp.family);
    for e in sp.cluster_endpoints.iter().chain(&sp.local_endpoints) {
        prop_assert_eq!(IpFamily::of(&e.ip()), sp.family);
        prop_assert!(
            has_source(&raw, e, node),
            "{} has no source slice endpoint",
            e
        );
        prop_assert!(
            e.ready || (e.serving && e.terminating),
            "{} is not usable",
            e
        );
    }
    let all_ready = sp.cluster_endpoints.iter().all(|e| e.ready);
    let uses_cluster = sp.uses_cluster_endpoints();
    prop_assert!(
        sp.local_endpoints.iter().all(|e| e.is_local),
        "remote local endpoint"
    );
    prop_assert!(
        implies(any_ready, all_ready),
        "fallback despite a ready endpoint"
    );
    prop_assert!(
        implies(any_ready, sp.has_any_endpoints),
        "ready endpoint not counted"
    );
    prop_assert!(
        implies(sp.has_any_endpoints, any_usable),
        "has_any without endpoint"
    );
    prop_assert!(implies(
        any_ready && uses_cluster,
        !sp.cluster_endpoints.is_empty()
    ));
    prop_assert!(implies(!uses_cluster, sp.cluster_endpoints.is_empty()));
    prop_assert!(implies(
        !sp.uses_local_endpoints(),
        sp.local_endpoints.is_empty()
    ));
    prop_assert!(strictly_sorted(&sp.cluster_endpoints) && strictly_sorted(&sp.local_endpoints));
    Ok(())
}

/// The (service port, family) keys the plan must hold.
/// `kproxy explain`'s endpoints in each set are exactly the plan's, and every other
/// endpoint has a reason.
fn check_explained(
    snap: &Snapshot,
    world: &World,
    sp: &ServicePortPlan,
) -> Result<(), TestCaseError> {
    use kproxy_dataplane::plan::EndpointSet;
    for set in [EndpointSet::Cluster, EndpointSet::Local] {
        let used = match set {
            EndpointSet::Cluster => sp.uses_cluster_endpoints(),
            EndpointSet::Local => sp.uses_local_endpoints(),
        };
        if !used {
            continue;
        }
        let uses = super::endpoint_uses(snap, &world.node, world.zone, &sp.name, sp.family, set);
        let mut eligible: Vec<SocketAddr> = uses
            .iter()
            .filter(|u| u.excluded.is_none())
            .map(|u| u.addr)
            .collect();
        let mut planned: Vec<SocketAddr> = sp.endpoints(set).iter().map(|e| e.addr).collect();
        eligible.sort();
        planned.sort();
        prop_assert_eq!(eligible, planned, "{} {} set", sp.name, set);
    }
    Ok(())
}

fn expected_keys(world: &World) -> BTreeSet<(String, String, Protocol, IpFamily)> {
    let mut keys = BTreeSet::new();
    for svc in world.services.iter().filter(|s| s.skip.is_none()) {
        let families = svc.cluster_ips.iter().map(IpFamily::of);
        for f in families.filter(|f| world.node.family(*f).is_some()) {
            for p in &svc.ports {
                keys.insert((svc.key.name.to_string(), p.name.clone(), p.protocol, f));
            }
        }
    }
    keys
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn plan_invariants(world in world()) {
        let snap = world.snapshot(world.slices.iter().cloned());
        let p = plan(&snap, &world.node, world.zone);
        for sp in &p.services {
            check_port(&snap, &world, sp)?;
        }
        for sp in &p.services {
            check_explained(&snap, &world, sp)?;
        }
        let sorted = p.services.windows(2).all(|w| (&w[0].name, w[0].family) < (&w[1].name, w[1].family));
        prop_assert!(sorted, "output not strictly sorted");
        let keys: BTreeSet<_> = p.services.iter()
            .map(|s| (s.name.name.clone(), s.name.port.clone(), s.name.protocol, s.family))
            .collect();
        prop_assert_eq!(keys, expected_keys(&world));
    }

    #[test]
    fn plan_is_deterministic_and_independent_of_slice_order(world in world()) {
        let forward = world.snapshot(world.slices.iter().cloned());
        let reverse = world.snapshot(world.slices.iter().rev().cloned());
        let first = plan(&forward, &world.node, world.zone);
        prop_assert_eq!(&first, &plan(&forward, &world.node, world.zone));
        prop_assert_eq!(&first, &plan(&reverse, &world.node, world.zone));
    }
}

/// One step of an incremental run: a world whose objects replace the current ones for
/// the chosen Service names and slice keys, and whether its node context is taken too.
#[derive(Debug, Clone)]
struct Step {
    world: World,
    services: BTreeSet<&'static str>,
    slices: BTreeSet<&'static str>,
    node: bool,
}

fn step() -> impl Strategy<Value = Step> {
    (
        world(),
        subsequence(&SERVICE_NAMES[..], 0..=SERVICE_NAMES.len()),
        subsequence(&SLICE_SERVICES[..], 0..=SLICE_SERVICES.len()),
        proptest::bool::weighted(0.2),
    )
        .prop_map(|(world, services, slices, node)| Step {
            world,
            services: services.into_iter().collect(),
            slices: slices.into_iter().collect(),
            node,
        })
}

/// The changes that make the chosen objects of `step` current: its chosen Services and
/// the slices of its chosen Services' names (upserted), and the chosen ones it lacks
/// (deleted).
fn step_changes(current: &Snapshot, step: &Step) -> Vec<crate::model::ObjectChange> {
    use crate::model::ObjectChange;
    use std::sync::Arc;
    let mut changes = Vec::new();
    for name in &step.services {
        let key = ObjectKey::new(NS, *name);
        let new = step.world.services.iter().find(|s| s.key == key);
        changes.push(ObjectChange::Service(key, new.cloned().map(Arc::new)));
    }
    let chosen = |s: &EndpointSlice| step.slices.contains(&*s.service.name);
    for old in current.endpoint_slices().values().filter(|s| chosen(s)) {
        changes.push(ObjectChange::EndpointSlice(old.key.clone(), None));
    }
    for new in step.world.slices.iter().filter(|s| chosen(s)) {
        changes.push(ObjectChange::EndpointSlice(
            new.key.clone(),
            Some(Arc::new(new.clone())),
        ));
    }
    changes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn incremental_planning_equals_a_full_plan(start in world(), steps in proptest::collection::vec(step(), 1..6)) {
        use super::Planner;
        use kproxy_dataplane::plan::PlanDelta;
        let mut snap = start.snapshot(start.slices.iter().cloned());
        let (mut node, mut zone) = (start.node.clone(), start.zone);
        let (mut planner, first) = Planner::new(&snap, &node, zone);
        prop_assert_eq!(&first, &PlanDelta::everything(planner.plan()));
        for step in &steps {
            let before = planner.plan().clone();
            let touched = snap.apply(step_changes(&snap, step));
            if step.node {
                node = step.world.node.clone();
                zone = step.world.zone;
            }
            let delta = planner.update(&snap, &touched.services, &node, zone);
            let full = plan(&snap, &node, zone);
            prop_assert_eq!(planner.plan(), &full, "incremental plan differs from a full plan");
            prop_assert_eq!(&delta, &PlanDelta::between(&before, &full));
        }
    }

    #[test]
    fn merged_deltas_equal_the_delta_over_both_steps(a in world(), b in world(), c in world()) {
        use kproxy_dataplane::plan::PlanDelta;
        let plan_of = |w: &World| plan(&w.snapshot(w.slices.iter().cloned()), &w.node, w.zone);
        let (pa, pb, pc) = (plan_of(&a), plan_of(&b), plan_of(&c));
        let mut merged = PlanDelta::between(&pa, &pb);
        merged.merge(PlanDelta::between(&pb, &pc));
        let direct = PlanDelta::between(&pa, &pc);
        // A merged delta may name an entry that changed and changed back; it never misses
        // one, and agrees on what was added and removed.
        prop_assert_eq!(&merged.added, &direct.added);
        prop_assert_eq!(&merged.removed, &direct.removed);
        prop_assert!(direct.changed.is_subset(&merged.changed));
        prop_assert!(merged.node_changed || !direct.node_changed);
    }
}
