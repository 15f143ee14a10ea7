//! The planner: turns a validated [`Snapshot`] into the [`ProxyPlan`] of this node.
//!
//! It owns every policy decision a backend must not make: which Services are programmed,
//! which IP families each service port gets, which endpoints belong to a service port
//! (slice/port matching, de-duplication) and which of them this node may use (upstream's
//! `CategorizeEndpoints`: ready first, serving+terminating fallback, topology hints,
//! external and internal traffic policy Local). It is pure and never fails.
//!
//! [`Planner`] keeps the last plan and re-plans only the Services a change touched (their
//! own object or one of their EndpointSlices), or everything when the node changed; each
//! update returns the one [`PlanDelta`] the rest of the sync consumes. A property test
//! shows that any sequence of updates gives the plan [`plan`] gives from scratch.

mod categorize;
mod endpoints;
mod explain;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_matching;

use std::net::IpAddr;

use ipnet::IpNet;
use std::collections::BTreeSet;

use kproxy_dataplane::plan::{
    IpFamily, NodeContext, PlanDelta, ProxyPlan, ServicePortName, ServicePortPlan,
};

pub use self::explain::{EndpointUse as ExplainedEndpoint, endpoint_uses};

use self::categorize::{EndpointUse, Locality, categorize};
use self::endpoints::{PortQuery, gather};
use crate::model::{ObjectKey, Service, ServicePortSpec, Snapshot};

/// Plans what this node programs. Pure: same inputs, same output.
pub fn plan(snapshot: &Snapshot, node: &NodeContext, zone: Option<&str>) -> ProxyPlan {
    // At most one entry per port and cluster IP: sized once, not grown by doubling (at
    // 100k endpoints the plan is ~16 MB).
    let most: usize = snapshot
        .services()
        .values()
        .map(|svc| svc.ports.len() * svc.cluster_ips.len())
        .sum();
    let mut services: Vec<ServicePortPlan> = Vec::with_capacity(most);
    services.extend(
        snapshot
            .services()
            .values()
            .flat_map(|svc| service_entries(snapshot, svc, node, zone)),
    );
    services.shrink_to_fit();
    debug_assert!(services.is_sorted_by(|a, b| entry_order(a) <= entry_order(b)));
    ProxyPlan {
        node: node.clone(),
        services,
    }
}

/// The plan of this node, kept between syncs and updated by re-planning only the Services
/// that changed.
#[derive(Debug, Clone)]
pub struct Planner {
    plan: ProxyPlan,
    zone: Option<String>,
}

impl Planner {
    /// Plans everything; the delta adds every entry.
    pub fn new(
        snapshot: &Snapshot,
        node: &NodeContext,
        zone: Option<&str>,
    ) -> (Planner, PlanDelta) {
        let plan = plan(snapshot, node, zone);
        let delta = PlanDelta::everything(&plan);
        let planner = Planner {
            plan,
            zone: zone.map(str::to_owned),
        };
        (planner, delta)
    }

    /// The current plan.
    pub fn plan(&self) -> &ProxyPlan {
        &self.plan
    }

    /// The zone it was planned for.
    pub fn zone(&self) -> Option<&str> {
        self.zone.as_deref()
    }

    /// Re-plans the Services in `touched` (their object or one of their slices changed),
    /// or every Service when the node context or zone changed, and returns what changed.
    pub fn update(
        &mut self,
        snapshot: &Snapshot,
        touched: &BTreeSet<ObjectKey>,
        node: &NodeContext,
        zone: Option<&str>,
    ) -> PlanDelta {
        if self.plan.node != *node || self.zone.as_deref() != zone {
            let next = plan(snapshot, node, zone);
            let delta = PlanDelta::between(&self.plan, &next);
            self.plan = next;
            self.zone = zone.map(str::to_owned);
            return delta;
        }
        let mut delta = PlanDelta::default();
        for key in touched {
            let fresh: Vec<ServicePortPlan> = snapshot
                .services()
                .get(key)
                .map(|svc| service_entries(snapshot, svc, node, zone))
                .unwrap_or_default();
            let range = entries_of(&self.plan.services, key);
            delta.add_entries(&self.plan.services[range.clone()], &fresh);
            self.plan.services.splice(range, fresh);
        }
        delta
    }
}

/// The sort order of plan entries: by service port name, then family.
fn entry_order(e: &ServicePortPlan) -> (&ServicePortName, IpFamily) {
    (&e.name, e.family)
}

/// The index range of the entries of one Service in a sorted entry list (all ports of a
/// Service sort together, because a port name sorts by namespace and name first).
fn entries_of(entries: &[ServicePortPlan], key: &ObjectKey) -> std::ops::Range<usize> {
    fn of(e: &ServicePortPlan) -> (&str, &str) {
        (&e.name.namespace, &e.name.name)
    }
    let wanted = (&*key.namespace, &*key.name);
    let start = entries.partition_point(|e| of(e) < wanted);
    let end = start + entries[start..].partition_point(|e| of(e) == wanted);
    start..end
}

/// The sorted plan entries of one Service (none when kproxy does not program it).
fn service_entries(
    snapshot: &Snapshot,
    svc: &Service,
    node: &NodeContext,
    zone: Option<&str>,
) -> Vec<ServicePortPlan> {
    if !is_programmed(svc) {
        return Vec::new();
    }
    let mut entries = plan_service(snapshot, svc, node, zone);
    entries.sort_by(|a, b| entry_order(a).cmp(&entry_order(b)));
    entries
}

/// Whether kproxy programs the Service; logs why not.
fn is_programmed(svc: &Service) -> bool {
    match &svc.skip {
        None => true,
        Some(reason) => {
            tracing::debug!(service = %svc.key, reason = %reason, "skipping service");
            false
        }
    }
}

/// The plans of every port of one Service, in every family it has and this node serves.
fn plan_service(
    snapshot: &Snapshot,
    svc: &Service,
    node: &NodeContext,
    zone: Option<&str>,
) -> Vec<ServicePortPlan> {
    let mut plans = Vec::new();
    for (family, cluster_ip) in served_cluster_ips(svc, node) {
        for port in &svc.ports {
            let skeleton = port_skeleton(svc, port, family, cluster_ip);
            plans.push(with_endpoints(snapshot, svc, port, skeleton, node, zone));
        }
    }
    plans
}

/// The first cluster IP of each family the node serves.
fn served_cluster_ips(svc: &Service, node: &NodeContext) -> Vec<(IpFamily, IpAddr)> {
    node.families()
        .filter_map(|f| {
            let ip = svc.cluster_ips.iter().find(|ip| IpFamily::of(ip) == f)?;
            Some((f, *ip))
        })
        .collect()
}

/// A service port's plan in one family, with empty endpoint sets.
fn port_skeleton(
    svc: &Service,
    port: &ServicePortSpec,
    family: IpFamily,
    cluster_ip: IpAddr,
) -> ServicePortPlan {
    ServicePortPlan {
        name: ServicePortName {
            namespace: svc.key.namespace.to_string(),
            name: svc.key.name.to_string(),
            port: port.name.clone(),
            protocol: port.protocol,
        },
        family,
        cluster_ip,
        port: port.port,
        node_port: port.node_port,
        external_ips: ips_of(&svc.external_ips, family),
        load_balancer_ips: ips_of(&svc.load_balancer_ips, family),
        load_balancer_source_ranges: nets_of(&svc.load_balancer_source_ranges, family),
        session_affinity_timeout: svc.session_affinity_timeout,
        external_policy_local: svc.external_policy_local,
        internal_policy_local: svc.internal_policy_local,
        health_check_node_port: svc.health_check_node_port,
        cluster_endpoints: Vec::new(),
        local_endpoints: Vec::new(),
        has_any_endpoints: false,
    }
}

/// Fills the endpoint sets of a skeleton plan.
fn with_endpoints(
    snapshot: &Snapshot,
    svc: &Service,
    port: &ServicePortSpec,
    mut plan: ServicePortPlan,
    node: &NodeContext,
    zone: Option<&str>,
) -> ServicePortPlan {
    let query = PortQuery {
        service: &svc.key,
        port,
        family: plan.family,
        node_name: &node.node_name,
    };
    let candidates = gather(snapshot, query);
    let uses = EndpointUse {
        cluster: plan.uses_cluster_endpoints(),
        local: plan.uses_local_endpoints(),
    };
    let locality = Locality {
        node_name: &node.node_name,
        zone,
    };
    let selection = categorize(&candidates, uses, locality);
    plan.cluster_endpoints = selection.cluster;
    plan.local_endpoints = selection.local;
    plan.has_any_endpoints = selection.has_any;
    plan
}

/// The addresses of one family, in order.
fn ips_of(ips: &[IpAddr], family: IpFamily) -> Vec<IpAddr> {
    ips.iter()
        .copied()
        .filter(|ip| IpFamily::of(ip) == family)
        .collect()
}

/// The networks of one family, in order.
fn nets_of(nets: &[IpNet], family: IpFamily) -> Vec<IpNet> {
    nets.iter()
        .copied()
        .filter(|net| IpFamily::of_net(net) == family)
        .collect()
}
