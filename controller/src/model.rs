//! The validated, Kubernetes-shaped model the planner reads.
//!
//! Sources (a manifest directory, later the API server) turn k8s-openapi objects into these
//! values through `validate`, which is the only place that checks them: once a value of
//! this module exists, every address parses, every port is in range and every protocol is
//! known. The planner therefore never fails.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use kproxy_dataplane::plan::{IpFamily, Protocol};

/// The label that hands a Service to another proxy (kproxy skips such Services).
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The EndpointSlice annotation saying when its last change was triggered.
pub const LAST_CHANGE_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";
/// The Node label holding the node's zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// `namespace/name` of an object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// Namespace (empty for cluster-scoped objects such as Nodes).
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectKey {
    /// A key from its parts.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// One port of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePortSpec {
    /// Port name (empty when the Service has a single unnamed port).
    pub name: String,
    /// Protocol.
    pub protocol: Protocol,
    /// The service port.
    pub port: u16,
    /// The NodePort, if allocated.
    pub node_port: Option<u16>,
}

/// Why a valid Service is not programmed by kproxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// `clusterIP: None`.
    Headless,
    /// `type: ExternalName`.
    ExternalName,
    /// Labelled `service.kubernetes.io/service-proxy-name` (another proxy owns it).
    OtherProxy(String),
    /// No cluster IP allocated yet.
    NoClusterIp,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::Headless => f.write_str("headless (clusterIP: None)"),
            SkipReason::ExternalName => f.write_str("type ExternalName"),
            SkipReason::OtherProxy(p) => write!(f, "handled by service proxy {p:?}"),
            SkipReason::NoClusterIp => f.write_str("no cluster IP allocated"),
        }
    }
}

/// A validated Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// namespace/name.
    pub key: ObjectKey,
    /// `None` when kproxy programs the Service, else why it does not.
    pub skip: Option<SkipReason>,
    /// `spec.clusterIPs` (at most one per family, primary first).
    pub cluster_ips: Vec<IpAddr>,
    /// `spec.ports`, names unique.
    pub ports: Vec<ServicePortSpec>,
    /// `spec.externalIPs`.
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip` (ingress with `ipMode: Proxy` excluded).
    pub load_balancer_ips: Vec<IpAddr>,
    /// `spec.loadBalancerSourceRanges`.
    pub load_balancer_source_ranges: Vec<IpNet>,
    /// `sessionAffinity: ClientIP` timeout in seconds (default 10800).
    pub session_affinity_timeout: Option<u32>,
    /// `externalTrafficPolicy: Local`; true only when the Service is externally reachable
    /// (type NodePort or LoadBalancer, or with externalIPs).
    pub external_policy_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_policy_local: bool,
    /// `spec.healthCheckNodePort`; set only for type LoadBalancer with eTP Local.
    pub health_check_node_port: Option<u16>,
}

/// One endpoint of an EndpointSlice, with upstream's defaulting of its conditions applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceEndpoint {
    /// `addresses[0]` (upstream uses only the first address).
    pub address: IpAddr,
    /// `conditions.ready` (nil means ready).
    pub ready: bool,
    /// `conditions.serving` (nil means serving, as upstream).
    pub serving: bool,
    /// `conditions.terminating` (nil means not terminating).
    pub terminating: bool,
    /// `nodeName`.
    pub node_name: Option<String>,
    /// `hints.forZones[].name`.
    pub zone_hints: BTreeSet<String>,
    /// `hints.forNodes[].name`.
    pub node_hints: BTreeSet<String>,
}

/// One port of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlicePort {
    /// Name, matching the Service port's name (empty for an unnamed port).
    pub name: String,
    /// Protocol.
    pub protocol: Protocol,
    /// The target port on the endpoints.
    pub port: u16,
}

/// A validated EndpointSlice of address type IPv4 or IPv6 (FQDN slices are skipped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSlice {
    /// namespace/name of the slice itself.
    pub key: ObjectKey,
    /// The Service it belongs to (label `kubernetes.io/service-name`, same namespace).
    pub service: ObjectKey,
    /// Address family of every endpoint.
    pub family: IpFamily,
    /// Ports.
    pub ports: Vec<SlicePort>,
    /// Endpoints (each with a valid address of `family`).
    pub endpoints: Vec<SliceEndpoint>,
    /// The `endpoints.kubernetes.io/last-change-trigger-time` annotation: when the change
    /// this slice carries was triggered (for the network programming latency metric).
    pub last_change_trigger_time: Option<std::time::SystemTime>,
}

/// What kproxy knows about the Node it runs on, from its `Node` object.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeInfo {
    /// Node name.
    pub name: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `status.addresses` of type InternalIP then ExternalIP, in order.
    pub addresses: Vec<IpAddr>,
}

impl NodeInfo {
    /// The node's zone label, if any.
    pub fn zone(&self) -> Option<&str> {
        self.labels.get(ZONE_LABEL).map(String::as_str)
    }
}

/// Everything the sources know, keyed for the planner.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Services by namespace/name.
    pub services: BTreeMap<ObjectKey, Service>,
    /// EndpointSlices by their own namespace/name.
    pub endpoint_slices: BTreeMap<ObjectKey, EndpointSlice>,
    /// Nodes by name.
    pub nodes: BTreeMap<String, NodeInfo>,
}

impl Snapshot {
    /// The slices of one Service, in slice-name order.
    pub fn slices_of<'a>(
        &'a self,
        service: &'a ObjectKey,
    ) -> impl Iterator<Item = &'a EndpointSlice> + 'a {
        self.endpoint_slices
            .values()
            .filter(move |s| &s.service == service)
    }
}
