//! Builders for planner tests: Services, slices, endpoints and node contexts.

use std::collections::BTreeSet;
use std::net::IpAddr;

use kproxy_dataplane::plan::{
    Endpoint, FamilyContext, IpFamily, NodeContext, Protocol, ServicePortPlan,
};

use super::plan;
use crate::model::{
    EndpointSlice, ObjectKey, Service, ServicePortSpec, SliceEndpoint, SlicePort, Snapshot,
};

/// The node the tests plan for.
pub const NODE: &str = "node-a";
/// The zone of [`NODE`].
pub const ZONE: &str = "zone-a";
/// The namespace of every test object.
pub const NS: &str = "ns";

/// Parses a literal address.
pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address literal")
}

/// A node context for [`NODE`] serving the given families.
pub fn node_ctx(v4: bool, v6: bool) -> NodeContext {
    let fam = |on: bool| on.then(FamilyContext::default);
    NodeContext {
        node_name: NODE.to_string(),
        ipv4: fam(v4),
        ipv6: fam(v6),
        masquerade_all: false,
        masquerade_mark: 1 << 14,
        localhost_nodeports: false,
    }
}

/// A service port without NodePort.
pub fn port(name: &str, protocol: Protocol, port: u16) -> ServicePortSpec {
    ServicePortSpec {
        name: name.to_string(),
        protocol,
        port,
        node_port: None,
    }
}

/// A ClusterIP Service `ns/name` with one cluster IP and one port `http`/TCP/80.
pub fn service(name: &str, cluster_ip: &str) -> Service {
    Service {
        key: ObjectKey::new(NS, name),
        skip: None,
        cluster_ips: vec![ip(cluster_ip)],
        ports: vec![port("http", Protocol::Tcp, 80)],
        external_ips: Vec::new(),
        load_balancer_ips: Vec::new(),
        load_balancer_source_ranges: Vec::new(),
        session_affinity_timeout: None,
        external_policy_local: false,
        internal_policy_local: false,
        health_check_node_port: None,
    }
}

/// A slice port.
pub fn slice_port(name: &str, protocol: Protocol, port: u16) -> SlicePort {
    SlicePort {
        name: name.to_string(),
        protocol,
        port,
    }
}

/// A slice `ns/name` of Service `ns/service` with one port `http`/TCP/8080; the family is
/// taken from the first endpoint (IPv4 when empty).
pub fn slice(name: &str, service: &str, endpoints: Vec<SliceEndpoint>) -> EndpointSlice {
    let family = endpoints
        .first()
        .map_or(IpFamily::V4, |ep| IpFamily::of(&ep.address));
    EndpointSlice {
        key: ObjectKey::new(NS, name),
        service: ObjectKey::new(NS, service),
        family,
        ports: vec![slice_port("http", Protocol::Tcp, 8080)],
        endpoints,
        last_change_trigger_time: None,
    }
}

/// A ready, serving, non-terminating endpoint on no node, without hints.
pub fn ep(addr: &str) -> SliceEndpoint {
    SliceEndpoint {
        address: ip(addr),
        ready: true,
        serving: true,
        terminating: false,
        node_name: None,
        zone_hints: BTreeSet::new(),
        node_hints: BTreeSet::new(),
    }
}

/// Fluent changes to a test endpoint.
pub trait EpExt: Sized {
    /// Runs on `node`.
    fn on(self, node: &str) -> Self;
    /// Not ready; `serving` as given; terminating.
    fn terminating(self, serving: bool) -> Self;
    /// Not ready, not serving, not terminating.
    fn not_ready(self) -> Self;
    /// Zone hints.
    fn zones(self, zones: &[&str]) -> Self;
    /// Node hints.
    fn for_nodes(self, nodes: &[&str]) -> Self;
}

fn names(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

impl EpExt for SliceEndpoint {
    fn on(mut self, node: &str) -> Self {
        self.node_name = Some(node.to_string());
        self
    }
    fn terminating(mut self, serving: bool) -> Self {
        self.ready = false;
        self.serving = serving;
        self.terminating = true;
        self
    }
    fn not_ready(mut self) -> Self {
        self.ready = false;
        self.serving = false;
        self.terminating = false;
        self
    }
    fn zones(mut self, zones: &[&str]) -> Self {
        self.zone_hints = names(zones);
        self
    }
    fn for_nodes(mut self, nodes: &[&str]) -> Self {
        self.node_hints = names(nodes);
        self
    }
}

/// A snapshot of these Services and slices.
pub fn snapshot(services: Vec<Service>, slices: Vec<EndpointSlice>) -> Snapshot {
    Snapshot::from_objects(services, slices, [])
}

/// Plans for a dual-stack node in [`ZONE`] and returns the only service port plan.
pub fn plan_one(svc: Service, slices: Vec<EndpointSlice>) -> ServicePortPlan {
    plan_one_in(svc, slices, Some(ZONE))
}

/// Plans for a dual-stack node in `zone` and returns the only service port plan.
pub fn plan_one_in(
    svc: Service,
    slices: Vec<EndpointSlice>,
    zone: Option<&str>,
) -> ServicePortPlan {
    let mut p = plan(&snapshot(vec![svc], slices), &node_ctx(true, true), zone);
    assert_eq!(p.services.len(), 1, "expected one service port: {p:?}");
    p.services.remove(0)
}

/// The endpoints' `ip:port` strings, in order.
pub fn addrs(eps: &[Endpoint]) -> Vec<String> {
    eps.iter().map(|e| e.addr.to_string()).collect()
}

/// A Service like [`service`] whose port has NodePort 30080.
pub fn node_port_service(name: &str) -> Service {
    let mut svc = service(name, "10.0.0.1");
    svc.ports[0].node_port = Some(30080);
    svc
}
