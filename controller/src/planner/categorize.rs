//! Endpoint selection for one service port in one family: upstream kube-proxy's
//! `CategorizeEndpoints` (`pkg/proxy/topology.go`) as one pure function.
//!
//! Given the de-duplicated endpoints of a service port, it chooses the "Cluster" set (ready
//! endpoints allowed by topology hints, else serving+terminating ones), the "Local" set
//! (local ready endpoints, else local serving+terminating ones) and whether the service has
//! any usable endpoint anywhere.

use std::collections::BTreeSet;

use kproxy_dataplane::plan::Endpoint;

/// An endpoint as the selection sees it: the plan endpoint plus its topology hints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Candidate<'a> {
    /// The endpoint as it would appear in the plan.
    pub endpoint: Endpoint,
    /// `hints.forZones[].name`.
    pub zone_hints: &'a BTreeSet<String>,
    /// `hints.forNodes[].name`.
    pub node_hints: &'a BTreeSet<String>,
}

impl Candidate<'_> {
    fn is_ready(&self) -> bool {
        self.endpoint.ready
    }

    fn is_serving_terminating(&self) -> bool {
        self.endpoint.serving && self.endpoint.terminating
    }

    fn is_local(&self) -> bool {
        self.endpoint.is_local
    }
}

/// Which endpoint sets the traffic policies of a service port use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct EndpointUse {
    /// Some traffic uses the "Cluster" set.
    pub cluster: bool,
    /// Some traffic uses the "Local" set.
    pub local: bool,
}

/// Where this node sits, for topology hints and locality.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Locality<'a> {
    /// This node's name.
    pub node_name: &'a str,
    /// This node's zone label, if any.
    pub zone: Option<&'a str>,
}

/// The outcome of [`categorize`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct EndpointSelection {
    /// Endpoints for "Cluster" traffic policy (empty when unused).
    pub cluster: Vec<Endpoint>,
    /// Endpoints for "Local" traffic policy (empty when unused).
    pub local: Vec<Endpoint>,
    /// The service port has a usable endpoint somewhere in the cluster.
    pub has_any: bool,
}

/// How topology hints restrict the cluster set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TopologyMode {
    /// No restriction.
    None,
    /// Keep endpoints hinted for this node.
    PreferSameNode,
    /// Keep endpoints hinted for this node's zone.
    PreferSameZone,
}

/// Chooses the cluster and local endpoint sets of one service port (upstream's
/// `CategorizeEndpoints`). Output order follows input order.
pub(super) fn categorize(
    candidates: &[Candidate<'_>],
    uses: EndpointUse,
    locality: Locality<'_>,
) -> EndpointSelection {
    let mut selection = EndpointSelection::default();
    if uses.cluster {
        selection.cluster = cluster_endpoints(candidates, locality);
        selection.has_any = !selection.cluster.is_empty();
    }
    if uses.local {
        selection.has_any |= candidates
            .iter()
            .any(|c| c.is_ready() || c.is_serving_terminating());
        selection.local = local_endpoints(candidates);
    }
    selection
}

/// Ready endpoints allowed by topology, else serving+terminating ones (topology ignored).
fn cluster_endpoints(candidates: &[Candidate<'_>], locality: Locality<'_>) -> Vec<Endpoint> {
    let mode = topology_mode(candidates, locality);
    let ready = select(candidates, |c| {
        c.is_ready() && allowed_by_topology(c, mode, locality)
    });
    if !ready.is_empty() {
        return ready;
    }
    select(candidates, |c| c.is_serving_terminating())
}

/// Local ready endpoints, else local serving+terminating ones.
fn local_endpoints(candidates: &[Candidate<'_>]) -> Vec<Endpoint> {
    let ready = select(candidates, |c| c.is_local() && c.is_ready());
    if !ready.is_empty() {
        return ready;
    }
    select(candidates, |c| c.is_local() && c.is_serving_terminating())
}

/// The endpoints of the candidates that pass `keep`, in order.
fn select(candidates: &[Candidate<'_>], keep: impl Fn(&Candidate<'_>) -> bool) -> Vec<Endpoint> {
    candidates
        .iter()
        .filter(|c| keep(c))
        .map(|c| c.endpoint.clone())
        .collect()
}

/// Upstream's `topologyModeFromHints`: hints count only when every ready endpoint has
/// them, and only when one of them names this node (or zone).
fn topology_mode(candidates: &[Candidate<'_>], locality: Locality<'_>) -> TopologyMode {
    let ready: Vec<&Candidate<'_>> = candidates.iter().filter(|c| c.is_ready()).collect();
    if hints_apply(&ready, |c| c.node_hints, locality.node_name) {
        return TopologyMode::PreferSameNode;
    }
    match locality.zone {
        Some(zone) if hints_apply(&ready, |c| c.zone_hints, zone) => TopologyMode::PreferSameZone,
        _ => TopologyMode::None,
    }
}

/// Every ready endpoint has hints of this kind and at least one names `name`.
fn hints_apply<'a>(
    ready: &[&Candidate<'a>],
    hints: impl Fn(&Candidate<'a>) -> &'a BTreeSet<String>,
    name: &str,
) -> bool {
    ready.iter().all(|c| !hints(c).is_empty()) && ready.iter().any(|c| hints(c).contains(name))
}

/// Whether topology mode `mode` lets this node use the candidate.
fn allowed_by_topology(c: &Candidate<'_>, mode: TopologyMode, locality: Locality<'_>) -> bool {
    match mode {
        TopologyMode::None => true,
        TopologyMode::PreferSameNode => c.node_hints.contains(locality.node_name),
        TopologyMode::PreferSameZone => locality.zone.is_some_and(|z| c.zone_hints.contains(z)),
    }
}

/// Why [`categorize`] leaves a candidate out of an endpoint set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exclusion {
    /// The Local set holds only endpoints on this node.
    NotLocal,
    /// Neither ready nor serving+terminating.
    NotReady,
    /// Serving and terminating, while ready endpoints exist (they are used first).
    Terminating,
    /// Ready, but its topology hints are for other zones or nodes.
    TopologyHints,
}

impl std::fmt::Display for Exclusion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Exclusion::NotLocal => "on another node (the Local set holds this node's only)",
            Exclusion::NotReady => "not ready",
            Exclusion::Terminating => "terminating (ready endpoints are used first)",
            Exclusion::TopologyHints => "its topology hints are for other zones or nodes",
        })
    }
}

/// Why each candidate is in (`None`) or out of the Local (`local`) or Cluster set, the same
/// decisions [`categorize`] makes, in candidate order.
pub(super) fn exclusions(
    candidates: &[Candidate<'_>],
    local: bool,
    locality: Locality<'_>,
) -> Vec<Option<Exclusion>> {
    let mode = topology_mode(candidates, locality);
    let in_scope = |c: &Candidate<'_>| !local || c.is_local();
    let usable_ready = |c: &Candidate<'_>| {
        in_scope(c) && c.is_ready() && (local || allowed_by_topology(c, mode, locality))
    };
    let ready_used = candidates.iter().any(usable_ready);
    candidates
        .iter()
        .map(|c| {
            if !in_scope(c) {
                Some(Exclusion::NotLocal)
            } else if ready_used {
                if usable_ready(c) {
                    None
                } else if c.is_ready() {
                    Some(Exclusion::TopologyHints)
                } else if c.is_serving_terminating() {
                    Some(Exclusion::Terminating)
                } else {
                    Some(Exclusion::NotReady)
                }
            } else if c.is_serving_terminating() {
                None
            } else {
                Some(Exclusion::NotReady)
            }
        })
        .collect()
}
