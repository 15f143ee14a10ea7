//! Gathering the endpoints of one service port in one family from the EndpointSlices.
//!
//! Owns slice/port matching (same Service, same family, slice port with the service port's
//! name and protocol) and de-duplication across slices by `ip:port`.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::net::SocketAddr;

use kproxy_dataplane::plan::{Endpoint, IpFamily};

use super::categorize::Candidate;
use crate::model::{EndpointSlice, ObjectKey, ServicePortSpec, SliceEndpoint, Snapshot};

/// Which endpoints to gather: one port of one Service in one family, seen from one node.
#[derive(Debug, Clone, Copy)]
pub(super) struct PortQuery<'a> {
    /// The Service.
    pub service: &'a ObjectKey,
    /// The service port.
    pub port: &'a ServicePortSpec,
    /// The family.
    pub family: IpFamily,
    /// This node's name (decides `is_local`).
    pub node_name: &'a str,
}

/// The endpoints of a service port, de-duplicated by `ip:port` (a ready copy wins over a
/// non-ready one, else the first in slice-name order) and sorted by `ip:port`.
pub(super) fn gather<'a>(snapshot: &'a Snapshot, query: PortQuery<'_>) -> Vec<Candidate<'a>> {
    let mut by_addr: BTreeMap<SocketAddr, Candidate<'a>> = BTreeMap::new();
    let slices = snapshot
        .slices_of(query.service)
        .filter(|s| s.family == query.family);
    for slice in slices {
        for target_port in matching_ports(slice, query.port) {
            for ep in slice
                .endpoints
                .iter()
                .filter(|ep| in_family(ep, query.family))
            {
                merge(&mut by_addr, candidate(ep, target_port, query.node_name));
            }
        }
    }
    by_addr.into_values().collect()
}

/// The target ports of the slice ports that carry the service port (same name and
/// protocol).
fn matching_ports<'s>(
    slice: &'s EndpointSlice,
    port: &'s ServicePortSpec,
) -> impl Iterator<Item = u16> + 's {
    slice
        .ports
        .iter()
        .filter(move |p| p.name == port.name && p.protocol == port.protocol)
        .map(|p| p.port)
}

/// The endpoint's address has the family (always true for validated slices).
fn in_family(ep: &SliceEndpoint, family: IpFamily) -> bool {
    IpFamily::of(&ep.address) == family
}

/// One slice endpoint as a candidate on `target_port`.
fn candidate<'a>(ep: &'a SliceEndpoint, target_port: u16, node_name: &str) -> Candidate<'a> {
    Candidate {
        endpoint: Endpoint {
            addr: SocketAddr::new(ep.address, target_port),
            is_local: ep.node_name.as_deref() == Some(node_name),
            ready: ep.ready,
            serving: ep.serving,
            terminating: ep.terminating,
        },
        zone_hints: &ep.zone_hints,
        node_hints: &ep.node_hints,
    }
}

/// Adds a candidate unless its address is already present; a ready copy replaces a
/// non-ready one.
fn merge<'a>(by_addr: &mut BTreeMap<SocketAddr, Candidate<'a>>, new: Candidate<'a>) {
    match by_addr.entry(new.endpoint.addr) {
        Entry::Vacant(slot) => {
            slot.insert(new);
        }
        Entry::Occupied(mut slot) => {
            if new.endpoint.ready && !slot.get().endpoint.ready {
                slot.insert(new);
            }
        }
    }
}
