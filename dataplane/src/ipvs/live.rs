//! IPVS mode's side of `kproxy explain --live`: the virtual servers of one service port and
//! their real servers, as the kernel holds them (one generic-netlink dump each), next to the
//! rendered [`IpvsState`]. Real servers at weight 0 that kproxy does not want are draining
//! connections (graceful termination) and are listed as such, not as disagreements.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::live::{LiveObject, Presence};

use super::netlink::{IpvsNetlinkError, IpvsSocket};
use super::state::IpvsState;

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
