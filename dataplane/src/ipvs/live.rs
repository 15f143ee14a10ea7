//! IPVS mode's side of `kproxy explain --live`: the virtual servers of one service port and
//! their real servers, as the kernel holds them (one generic-netlink dump each), next to the
//! rendered [`IpvsState`]; its addresses on `kube-ipvs0`; and its ipset entries, each
//! checked with `ipset test`. Real servers at weight 0 that kproxy does not want are
//! draining connections (graceful termination) and are listed as such, not as
//! disagreements.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::live::{LiveObject, Presence};
use crate::plan::{ProxyPlan, ServicePortPlan};
use crate::tool::{Tool, ToolError};

use super::ipset::{render_ipsets, set_name};
use super::netlink::{IpvsNetlinkError, IpvsSocket};
use super::state::{DUMMY_INTERFACE, IpvsState, nodeport_ips};

/// `ip` (iproute2).
const IP: Tool<'static> = Tool::new("ip", "iproute2");
/// `ipset`.
const IPSET: Tool<'static> = Tool::new("ipset", "ipset");

/// What the kernel has of `svc`'s addresses on [`DUMMY_INTERFACE`] and of its ipset
/// entries (those a plan of `svc` alone on `plan`'s node renders). Blocking.
pub fn inspect_bindings(
    plan: &ProxyPlan,
    svc: &ServicePortPlan,
) -> Result<Vec<LiveObject>, ToolError> {
    let family = svc.family;
    let mut objects = Vec::new();
    let listed = IP
        .run_blocking(&["-o", "addr", "show", "dev", DUMMY_INTERFACE], None)
        .unwrap_or_default();
    let bound: Vec<&str> = listed
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "inet" || *w == "inet6")?;
            words.next()?.split('/').next()
        })
        .collect();
    let addresses = std::iter::once(&svc.cluster_ip)
        .chain(&svc.external_ips)
        .chain(&svc.load_balancer_ips);
    for ip in addresses {
        let presence = if bound.contains(&ip.to_string().as_str()) {
            Presence::Present
        } else {
            Presence::Missing
        };
        objects.push(LiveObject::new(
            format!("address {ip} on {DUMMY_INTERFACE}"),
            presence,
        ));
    }
    let alone = ProxyPlan {
        node: plan.node.clone(),
        services: vec![svc.clone()],
    };
    let entries = render_ipsets(&alone, family, &nodeport_ips(plan, family));
    for (set, members) in &entries {
        let name = set_name(set, family);
        for member in members {
            let presence = match IPSET.run_blocking(&["test", &name, member], None) {
                Ok(_) => Presence::Present,
                Err(e) if e.exit_code() == Some(1) => Presence::Missing,
                Err(e) => return Err(e),
            };
            objects.push(LiveObject::new(format!("ipset {name} {member}"), presence));
        }
    }
    Ok(objects)
}

/// The virtual servers of service port `owner` (`ns/name:port`) in `expected`, and their
/// real servers, each with what the kernel has of it. Blocking (netlink).
pub fn inspect(expected: &IpvsState, owner: &str) -> Result<Vec<LiveObject>, IpvsNetlinkError> {
    let mut sock = IpvsSocket::open()?;
    let mut objects = Vec::new();
    for (key, vs) in expected
        .virtual_servers
        .iter()
        .filter(|(_, v)| v.owner == owner)
    {
        let persistence = if vs.service.timeout > 0 {
            format!(" persistent {}", vs.service.timeout)
        } else {
            String::new()
        };
        let object = format!("{key} {}{persistence}", vs.service.scheduler);
        let Some(kernel) = sock.service(key)? else {
            objects.push(LiveObject::new(object, Presence::Missing));
            objects.extend(vs.real_servers.iter().map(|(addr, weight)| {
                LiveObject::new(format!("  -> {addr} weight {weight}"), Presence::Missing)
            }));
            continue;
        };
        let presence =
            if kernel.scheduler == vs.service.scheduler && kernel.timeout == vs.service.timeout {
                Presence::Present
            } else {
                Presence::Differs(format!("{} timeout {}", kernel.scheduler, kernel.timeout))
            };
        objects.push(LiveObject::new(object, presence));
        let have: BTreeMap<SocketAddr, u32> = sock
            .destinations(key)?
            .iter()
            .map(|d| (d.socket_addr(), d.weight))
            .collect();
        for (addr, weight) in &vs.real_servers {
            let presence = match have.get(addr) {
                None => Presence::Missing,
                Some(w) if w == weight => Presence::Present,
                Some(w) => Presence::Differs(format!("weight {w}")),
            };
            objects.push(LiveObject::new(
                format!("  -> {addr} weight {weight}"),
                presence,
            ));
        }
        for (addr, weight) in have
            .iter()
            .filter(|(a, _)| !vs.real_servers.contains_key(a))
        {
            let (text, presence) = if *weight == 0 {
                (
                    format!("  -> {addr} weight 0 (draining)"),
                    Presence::Present,
                )
            } else {
                (format!("  -> {addr} weight {weight}"), Presence::Unexpected)
            };
            objects.push(LiveObject::new(text, presence));
        }
    }
    Ok(objects)
}
