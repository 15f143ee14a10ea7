//! The difference between the IPVS state a plan wants and what the kernel has, as a list of
//! netlink operations. Pure. Implements upstream's graceful termination: a real server
//! that is no longer wanted first gets weight 0 (no new connections), and is deleted once
//! it has no connections left; UDP real servers are deleted at once.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use super::netlink::consts::IPPROTO_UDP;
use super::netlink::{Destination, Service, ServiceKey};
use super::state::IpvsState;

/// A virtual service as read from the kernel, with its real servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelService {
    /// The service.
    pub service: Service,
    /// Its destinations, with connection counters.
    pub destinations: Vec<Destination>,
}

/// The kernel's virtual services that kproxy owns, by key.
pub type KernelState = BTreeMap<ServiceKey, KernelService>;

/// One netlink operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpvsOp {
    /// `NEW_SERVICE`.
    AddService(Service),
    /// `SET_SERVICE` (scheduler, persistence changed).
    UpdateService(Service),
    /// `DEL_SERVICE`.
    DelService(ServiceKey),
    /// `NEW_DEST`.
    AddDest(ServiceKey, Destination),
    /// `SET_DEST` (weight changed; weight 0 starts graceful termination).
    UpdateDest(ServiceKey, Destination),
    /// `DEL_DEST`.
    DelDest(ServiceKey, Destination),
}

/// What a sync changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpvsChanges {
    /// Netlink operations, in order.
    pub ops: Vec<IpvsOp>,
    /// Addresses to bind to `kube-ipvs0`.
    pub add_addresses: Vec<IpAddr>,
    /// Addresses to unbind from `kube-ipvs0`.
    pub del_addresses: Vec<IpAddr>,
    /// Real servers left draining (weight 0, connections still open).
    pub draining: usize,
}

impl IpvsChanges {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.add_addresses.is_empty() && self.del_addresses.is_empty()
    }
}

/// Computes the operations that move `current` (kernel services kproxy owns, and the
/// addresses on `kube-ipvs0`) to `wanted`.
pub fn diff(
    wanted: &IpvsState,
    current: &KernelState,
    current_addresses: &BTreeSet<IpAddr>,
) -> IpvsChanges {
    let mut changes = IpvsChanges {
        add_addresses: wanted
            .bound_addresses
            .difference(current_addresses)
            .copied()
            .collect(),
        del_addresses: current_addresses
            .difference(&wanted.bound_addresses)
            .copied()
            .collect(),
        ..IpvsChanges::default()
    };
    for (key, vs) in &wanted.virtual_servers {
        let existing = current.get(key);
        match existing {
            None => changes.ops.push(IpvsOp::AddService(vs.service.clone())),
            Some(k) if k.service != vs.service => {
                changes.ops.push(IpvsOp::UpdateService(vs.service.clone()))
            }
            Some(_) => {}
        }
        let have: BTreeMap<SocketAddr, &Destination> = existing
            .map(|k| {
                k.destinations
                    .iter()
                    .map(|d| (d.socket_addr(), d))
                    .collect()
            })
            .unwrap_or_default();
        for (addr, weight) in &vs.real_servers {
            let want = Destination {
                weight: *weight,
                ..Destination::masq(addr.ip(), addr.port())
            };
            match have.get(addr) {
                None => changes.ops.push(IpvsOp::AddDest(*key, want)),
                Some(d) if !same_config(d, &want) => {
                    changes.ops.push(IpvsOp::UpdateDest(*key, want))
                }
                Some(_) => {}
            }
        }
        for (addr, d) in &have {
            if !vs.real_servers.contains_key(addr) {
                terminate(*key, d, &mut changes);
            }
        }
    }
    for key in current.keys() {
        if !wanted.virtual_servers.contains_key(key) {
            changes.ops.push(IpvsOp::DelService(*key));
        }
    }
    changes
}

fn same_config(a: &Destination, b: &Destination) -> bool {
    a.weight == b.weight
        && a.fwd_method == b.fwd_method
        && a.u_thresh == b.u_thresh
        && a.l_thresh == b.l_thresh
}

fn terminate(key: ServiceKey, d: &Destination, changes: &mut IpvsChanges) {
    let udp = matches!(key, ServiceKey::Addr { protocol, .. } if protocol == IPPROTO_UDP);
    let plain = Destination {
        conns: Default::default(),
        ..d.clone()
    };
    if udp || (d.weight == 0 && d.conns.total() == 0) {
        changes.ops.push(IpvsOp::DelDest(key, plain));
    } else if d.weight != 0 {
        changes
            .ops
            .push(IpvsOp::UpdateDest(key, Destination { weight: 0, ..plain }));
        changes.draining += 1;
    } else {
        changes.draining += 1;
    }
}

/// What the kernel holds after `ops` were applied to `state` (for incremental syncs that
/// do not re-read the kernel). Connection counters of kept destinations are preserved.
pub fn advance(state: &mut KernelState, ops: &[IpvsOp]) {
    for op in ops {
        match op {
            IpvsOp::AddService(s) | IpvsOp::UpdateService(s) => {
                state
                    .entry(s.key)
                    .and_modify(|k| k.service = s.clone())
                    .or_insert_with(|| KernelService {
                        service: s.clone(),
                        destinations: vec![],
                    });
            }
            IpvsOp::DelService(k) => {
                state.remove(k);
            }
            IpvsOp::AddDest(k, d) | IpvsOp::UpdateDest(k, d) => {
                if let Some(svc) = state.get_mut(k) {
                    match svc
                        .destinations
                        .iter_mut()
                        .find(|x| x.socket_addr() == d.socket_addr())
                    {
                        Some(x) => {
                            let conns = x.conns;
                            *x = Destination { conns, ..d.clone() };
                        }
                        None => svc.destinations.push(d.clone()),
                    }
                }
            }
            IpvsOp::DelDest(k, d) => {
                if let Some(svc) = state.get_mut(k) {
                    svc.destinations
                        .retain(|x| x.socket_addr() != d.socket_addr());
                }
            }
        }
    }
}
