//! NodePorts and masquerading in userspace mode: two small kproxy-owned iptables nat chains
//! per family.
//!
//! A NodePort's destination is one of the node's own addresses, and the kernel consults the
//! `local` routing table (rule priority 0) before any policy rule kproxy could add, so such
//! packets are delivered to the local stack and never reach a route into the TUN. Moving
//! rule 0 would change routing for the whole host; instead chain
//! [`CHAIN`] in the nat table (jumped to from `PREROUTING` and `OUTPUT`) DNATs NodePort
//! traffic to the family's *NodePort address*, an address routed into the TUN where the
//! forwarder serves every NodePort. The kernel's conntrack un-DNATs the replies to the node
//! address the client used, so the forwarder never needs to know it. `--nodeport-addresses`
//! becomes `-d <ip>` matches (or `-m addrtype --dst-type LOCAL` for all addresses, loopback
//! excluded). The chain is replaced as a whole with one `iptables-restore --noflush`.
//!
//! Masquerading is decided by the forwarder (as the iptables renderer marks for
//! masquerade), which rewrites the source to the family's masquerade address; chain
//! [`POSTROUTING_CHAIN`] (jumped to from `POSTROUTING`) then lets the kernel `MASQUERADE`
//! that address to the address of the interface the packet leaves by, exactly what
//! `KUBE-POSTROUTING` does for marked packets in iptables mode. A backend on another node
//! so sees (and answers) this node's address, a hairpinned pod its bridge's address; the
//! kernel un-SNATs the reply back to the masquerade address, which is routed into the TUN.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::iptables::ruleset::{Rule, Ruleset, Table};
use crate::plan::{IpFamily, NodePortAddresses, ProxyPlan};

use super::services::proto_number;

/// The nat chain kproxy's userspace mode owns.
pub const CHAIN: &str = "KPROXY-USERSPACE-NODEPORTS";
/// The nat chain (jumped to from `POSTROUTING`) masquerading the masquerade address.
pub const POSTROUTING_CHAIN: &str = "KPROXY-USERSPACE-POSTROUTING";

/// Userspace mode's nat chains of `family`: [`CHAIN`] DNATs every NodePort of `plan` to
/// `nodeport_to` (declared only when there is a NodePort address), [`POSTROUTING_CHAIN`]
/// masquerades packets the forwarder sent from `masquerade` (empty when `None`). Written
/// with one `iptables-restore --noflush`, which replaces both chains.
pub fn render(
    plan: &ProxyPlan,
    family: IpFamily,
    nodeport_to: Option<IpAddr>,
    masquerade: Option<IpAddr>,
) -> Ruleset {
    let mut rs = Ruleset::new(family);
    if let Some(to) = nodeport_to {
        rs.chain(Table::Nat, CHAIN);
        render_nodeports(&mut rs, plan, family, to);
    }
    rs.chain(Table::Nat, POSTROUTING_CHAIN);
    if let Some(ip) = masquerade {
        rs.append(
            Table::Nat,
            POSTROUTING_CHAIN,
            Rule::new()
                .src_net(&IpNet::from(ip))
                .comment("kproxy userspace masquerade")
                .jump("MASQUERADE"),
        );
    }
    rs
}

fn render_nodeports(rs: &mut Ruleset, plan: &ProxyPlan, family: IpFamily, to: IpAddr) {
    let Some(ctx) = plan.node.family(family) else {
        return;
    };
    let dests: Vec<String> = match &ctx.nodeport_addresses {
        NodePortAddresses::All => {
            let lo = family.loopback_net();
            vec![format!("-m addrtype --dst-type LOCAL ! -d {lo}")]
        }
        NodePortAddresses::Only(ips) => ips
            .iter()
            .filter(|ip| IpFamily::of(ip) == family)
            .map(|ip| format!("-d {ip}"))
            .collect(),
    };
    let target = |port: u16| match to {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    };
    for svc in plan.services_of(family) {
        let (Some(np), Some(_)) = (svc.node_port, proto_number(svc.name.protocol)) else {
            continue;
        };
        for d in &dests {
            let rule = Rule::new()
                .args(d)
                .protocol(svc.name.protocol)
                .dport(np)
                .comment(&format!("{} nodePort", svc.name))
                .jump("DNAT")
                .args(&format!("--to-destination {}", target(np)));
            rs.append(Table::Nat, CHAIN, rule);
        }
    }
}
