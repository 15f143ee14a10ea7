//! Why each endpoint of a service port is or is not used by some traffic: the planner's
//! own selection ([`super::categorize`]) told endpoint by endpoint, for `kproxy explain`.

use std::net::SocketAddr;

use kproxy_dataplane::plan::{EndpointSet, IpFamily, NodeContext, ServicePortName};

use super::categorize::{Locality, exclusions};
use super::endpoints::{PortQuery, gather};
use crate::model::{ObjectKey, Snapshot};

/// One endpoint of a service port and why a set leaves it out (`None`: it is in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointUse {
    /// Pod IP and target port.
    pub addr: SocketAddr,
    /// Why the set leaves it out.
    pub excluded: Option<String>,
}

/// Every endpoint of service port `name` in the EndpointSlices, both families, and why the
/// `set` of `family` (as this node and zone see it) leaves each out. Empty when the Service
/// or the port is unknown.
pub fn endpoint_uses(
    snapshot: &Snapshot,
    node: &NodeContext,
    zone: Option<&str>,
    name: &ServicePortName,
    family: IpFamily,
    set: EndpointSet,
) -> Vec<EndpointUse> {
    let key = ObjectKey::new(name.namespace.as_str(), name.name.as_str());
    let Some(port) = snapshot.services().get(&key).and_then(|svc| {
        svc.ports
            .iter()
            .find(|p| p.name == name.port && p.protocol == name.protocol)
    }) else {
        return Vec::new();
    };
    let locality = Locality {
        node_name: &node.node_name,
        zone,
    };
    let mut uses = Vec::new();
    for fam in [IpFamily::V4, IpFamily::V6] {
        let query = PortQuery {
            service: &key,
            port,
            family: fam,
            node_name: &node.node_name,
        };
        let candidates = gather(snapshot, query);
        if fam != family {
            uses.extend(candidates.iter().map(|c| EndpointUse {
                addr: c.endpoint.addr,
                excluded: Some(format!("other family ({fam})")),
            }));
            continue;
        }
        let why = exclusions(&candidates, set == EndpointSet::Local, locality);
        uses.extend(candidates.iter().zip(why).map(|(c, why)| EndpointUse {
            addr: c.endpoint.addr,
            excluded: why.map(|w| w.to_string()),
        }));
    }
    uses
}
