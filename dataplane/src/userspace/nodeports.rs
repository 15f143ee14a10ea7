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

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::plan::{IpFamily, NodePortAddresses, ProxyPlan};

use super::services::proto_number;

/// The nat chain kproxy's userspace mode owns.
pub const CHAIN: &str = "KPROXY-USERSPACE-NODEPORTS";
/// The nat chain (jumped to from `POSTROUTING`) masquerading the masquerade address.
pub const POSTROUTING_CHAIN: &str = "KPROXY-USERSPACE-POSTROUTING";

/// The `iptables-restore --noflush` input that makes [`CHAIN`] DNAT every NodePort of
/// `family` in `plan` to `to` (an empty chain when there is none).
pub fn render(plan: &ProxyPlan, family: IpFamily, to: IpAddr) -> String {
    let mut out = format!("*nat\n:{CHAIN} - [0:0]\n");
    let Some(ctx) = plan.node.family(family) else {
        out.push_str("COMMIT\n");
        return out;
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
        let proto = svc.name.protocol.as_lower();
        for d in &dests {
            let _ = writeln!(
                out,
                "-A {CHAIN} {d} -p {proto} -m {proto} --dport {np} -m comment --comment \"{} nodePort\" -j DNAT --to-destination {}",
                svc.name,
                target(np)
            );
        }
    }
    out.push_str("COMMIT\n");
    out
}

/// The `iptables-restore --noflush` input that makes [`POSTROUTING_CHAIN`] `MASQUERADE`
/// packets the forwarder sent from `masquerade` (an empty chain when `None`).
pub fn render_postrouting(masquerade: Option<IpAddr>) -> String {
    let mut out = format!("*nat\n:{POSTROUTING_CHAIN} - [0:0]\n");
    if let Some(ip) = masquerade {
        let len = if ip.is_ipv4() { 32 } else { 128 };
        let _ = writeln!(
            out,
            "-A {POSTROUTING_CHAIN} -s {ip}/{len} -m comment --comment \"kproxy userspace masquerade\" -j MASQUERADE"
        );
    }
    out.push_str("COMMIT\n");
    out
}

/// The (restore binary, plain binary) of a family.
pub fn binaries(family: IpFamily) -> (&'static str, &'static str) {
    match family {
        IpFamily::V4 => ("iptables-restore", "iptables"),
        IpFamily::V6 => ("ip6tables-restore", "ip6tables"),
    }
}
