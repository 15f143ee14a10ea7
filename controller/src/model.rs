//! The validated, Kubernetes-shaped model the planner reads.
//!
//! Sources (a manifest directory, later the API server) turn k8s-openapi objects into these
//! values through `validate`, which is the only place that checks them: once a value of
//! this module exists, every address parses, every port is in range and every protocol is
//! known. The planner therefore never fails.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

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

/// `namespace/name` of an object. The parts are shared strings: a key is copied into
/// every index that names the object (the store's maps, the slice→Service index, the
/// manifest set's claims), and a copy costs a reference count, not two allocations.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// Namespace (empty for cluster-scoped objects such as Nodes).
    pub namespace: Arc<str>,
    /// Name.
    pub name: Arc<str>,
}

impl ObjectKey {
    /// A key from its parts.
    pub fn new(namespace: impl Into<Arc<str>>, name: impl Into<Arc<str>>) -> Self {
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
    /// `spec.podCIDRs` (else `spec.podCIDR`): this node's pod ranges, for
    /// `detectLocalMode: NodeCIDR`.
    pub pod_cidrs: Vec<IpNet>,
}

impl NodeInfo {
    /// The node's zone label, if any.
    pub fn zone(&self) -> Option<&str> {
        self.labels.get(ZONE_LABEL).map(String::as_str)
    }
}

/// A `networking.k8s.io/v1` ServiceCIDR: ranges the API server allocates cluster IPs
/// from. Traffic to an address inside one that no Service has is dropped (nftables mode,
/// as upstream).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceCidr {
    /// Its name (cluster-scoped).
    pub name: String,
    /// `spec.cidrs` (host bits cleared).
    pub cidrs: Vec<IpNet>,
}

/// One change to the objects a source knows: the new validated value of an object, or
/// `None` when it is gone (deleted, or no longer valid).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectChange {
    /// A Service was added, changed or removed.
    Service(ObjectKey, Option<Arc<Service>>),
    /// An EndpointSlice was added, changed or removed.
    EndpointSlice(ObjectKey, Option<Arc<EndpointSlice>>),
    /// A Node was added, changed or removed.
    Node(String, Option<Arc<NodeInfo>>),
    /// A ServiceCIDR was added, changed or removed.
    ServiceCidr(String, Option<Arc<ServiceCidr>>),
}

/// What applying changes to a [`Snapshot`] touched: the input of an incremental re-plan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touched {
    /// Services whose own object or one of whose EndpointSlices changed.
    pub services: BTreeSet<ObjectKey>,
    /// Nodes whose object changed.
    pub nodes: BTreeSet<String>,
    /// How many Service objects changed (for metrics).
    pub service_objects: usize,
    /// The EndpointSlices whose object changed (added, changed or removed).
    pub slice_objects: BTreeSet<ObjectKey>,
    /// The service CIDRs changed (node-wide: everything is re-planned).
    pub service_cidrs: bool,
}

impl Touched {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.nodes.is_empty() && !self.service_cidrs
    }
}

/// The indexed store of everything the sources know: Services, EndpointSlices (also
/// indexed by the Service they belong to, so that the planner reads one Service's slices
/// without scanning the others) and Nodes. Changed only through [`Snapshot::apply`],
/// which keeps the index true and says which Services a change touched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    services: BTreeMap<ObjectKey, Arc<Service>>,
    endpoint_slices: BTreeMap<ObjectKey, Arc<EndpointSlice>>,
    /// Slice keys by the Service they name, sorted (a Service has one or a few slices; a
    /// sorted vector costs a fraction of a B-tree node).
    slices_by_service: BTreeMap<ObjectKey, Vec<ObjectKey>>,
    nodes: BTreeMap<String, Arc<NodeInfo>>,
    service_cidrs: BTreeMap<String, Arc<ServiceCidr>>,
}

impl Snapshot {
    /// A snapshot holding exactly these objects (later ones of the same key win).
    pub fn from_objects(
        services: impl IntoIterator<Item = Service>,
        slices: impl IntoIterator<Item = EndpointSlice>,
        nodes: impl IntoIterator<Item = NodeInfo>,
    ) -> Self {
        let mut snapshot = Snapshot::default();
        let changes = services
            .into_iter()
            .map(|s| ObjectChange::Service(s.key.clone(), Some(Arc::new(s))))
            .chain(
                slices
                    .into_iter()
                    .map(|s| ObjectChange::EndpointSlice(s.key.clone(), Some(Arc::new(s)))),
            )
            .chain(
                nodes
                    .into_iter()
                    .map(|n| ObjectChange::Node(n.name.clone(), Some(Arc::new(n)))),
            );
        snapshot.apply(changes);
        snapshot
    }

    /// ServiceCIDRs by name.
    pub fn service_cidrs(&self) -> &BTreeMap<String, Arc<ServiceCidr>> {
        &self.service_cidrs
    }

    /// Every range of every ServiceCIDR, sorted, without repeats.
    pub fn service_cidr_ranges(&self) -> Vec<IpNet> {
        let ranges: BTreeSet<IpNet> = self
            .service_cidrs
            .values()
            .flat_map(|c| c.cidrs.iter().copied())
            .collect();
        ranges.into_iter().collect()
    }

    /// Services by namespace/name.
    pub fn services(&self) -> &BTreeMap<ObjectKey, Arc<Service>> {
        &self.services
    }

    /// EndpointSlices by their own namespace/name.
    pub fn endpoint_slices(&self) -> &BTreeMap<ObjectKey, Arc<EndpointSlice>> {
        &self.endpoint_slices
    }

    /// Nodes by name.
    pub fn nodes(&self) -> &BTreeMap<String, Arc<NodeInfo>> {
        &self.nodes
    }

    /// The slices of one Service, in slice-name order (an index lookup, no scan).
    pub fn slices_of<'a>(
        &'a self,
        service: &ObjectKey,
    ) -> impl Iterator<Item = &'a EndpointSlice> + 'a {
        self.slices_by_service
            .get(service)
            .into_iter()
            .flatten()
            .filter_map(|key| self.endpoint_slices.get(key).map(|s| &**s))
    }

    /// Applies changes; returns what they touched. A change that leaves an object as it
    /// was touches nothing.
    pub fn apply(&mut self, changes: impl IntoIterator<Item = ObjectChange>) -> Touched {
        let mut touched = Touched::default();
        for change in changes {
            match change {
                ObjectChange::Service(key, new) => {
                    let old = match new {
                        Some(svc) => self.services.insert(key.clone(), svc),
                        None => self.services.remove(&key),
                    };
                    if old.as_ref() != self.services.get(&key) {
                        touched.service_objects += 1;
                        touched.services.insert(key);
                    }
                }
                ObjectChange::EndpointSlice(key, new) => self.apply_slice(key, new, &mut touched),
                ObjectChange::ServiceCidr(name, new) => {
                    let old = match new {
                        Some(cidr) => self.service_cidrs.insert(name.clone(), cidr),
                        None => self.service_cidrs.remove(&name),
                    };
                    touched.service_cidrs |= old.as_ref() != self.service_cidrs.get(&name);
                }
                ObjectChange::Node(name, new) => {
                    let old = match new {
                        Some(node) => self.nodes.insert(name.clone(), node),
                        None => self.nodes.remove(&name),
                    };
                    if old.as_ref() != self.nodes.get(&name) {
                        touched.nodes.insert(name);
                    }
                }
            }
        }
        touched
    }

    fn apply_slice(
        &mut self,
        key: ObjectKey,
        new: Option<Arc<EndpointSlice>>,
        touched: &mut Touched,
    ) {
        if self.endpoint_slices.get(&key) == new.as_ref() {
            return;
        }
        if let Some(old) = self.endpoint_slices.remove(&key) {
            if let Some(keys) = self.slices_by_service.get_mut(&old.service) {
                keys.retain(|k| *k != key);
                if keys.is_empty() {
                    self.slices_by_service.remove(&old.service);
                }
            }
            touched.services.insert(old.service.clone());
        }
        touched.slice_objects.insert(key.clone());
        let Some(slice) = new else {
            return;
        };
        touched.services.insert(slice.service.clone());
        let keys = self
            .slices_by_service
            .entry(slice.service.clone())
            .or_default();
        if let Err(at) = keys.binary_search(&key) {
            // Nearly every Service has one slice: grow one at a time, not by four.
            keys.reserve_exact(1);
            keys.insert(at, key.clone());
        }
        self.endpoint_slices.insert(key, slice);
    }
}
