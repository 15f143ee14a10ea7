//! Userspace mode's side of `kproxy explain --live`: the kernel objects that bring one
//! service port's traffic to the forwarder (host routes of its frontends into the TUN
//! device, the NodePort DNAT rules) and its backends' replies back (reply-steering
//! elements), next to what the computed [`Changes`] want. The forwarder's own table lives
//! in the running kproxy's memory, not in the kernel.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::iptables::apply::IptablesTool;
use crate::iptables::live::check;
use crate::iptables::ruleset::Table;
use crate::live::{LiveObject, Presence};
use crate::nftables::live::parse_listing;
use crate::plan::{IpFamily, ServicePortPlan};
use crate::tool::{Tool, ToolError};

use super::changes::{Changes, nodeport_ip};
use super::nodeports::CHAIN;
use super::proxier::UserspaceConfig;
use super::routes::{REPLY_TABLE, reply_set};
use super::services::proto_number;

/// `ip` (iproute2).
const IP: Tool<'static> = Tool::new("ip", "iproute2");
/// `nft`.
const NFT: Tool<'static> = Tool::new("nft", "nftables");

/// What the kernel has of `svc`'s routes, NodePort rules (through `tool`) and reply
/// elements in `family`, as `changes` (computed for the whole plan) want them.
pub async fn inspect(
    changes: &Changes,
    config: &UserspaceConfig,
    tool: &IptablesTool,
    svc: &ServicePortPlan,
) -> Result<Vec<LiveObject>, ToolError> {
    let family = svc.family;
    let dev = &config.device;
    let fam = match family {
        IpFamily::V4 => "-4",
        IpFamily::V6 => "-6",
    };
    let routes: BTreeSet<IpNet> = IP
        .run(&[fam, "-o", "route", "show", "dev", dev], None)
        .await
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|dst| {
            dst.parse::<IpNet>()
                .ok()
                .or_else(|| dst.parse::<IpAddr>().ok().map(IpNet::from))
        })
        .collect();
    let mut objects = Vec::new();
    let frontends = std::iter::once(&svc.cluster_ip)
        .chain(&svc.external_ips)
        .chain(&svc.load_balancer_ips)
        .copied()
        .chain(svc.node_port.and(nodeport_ip(config, family)));
    for ip in frontends {
        let net = IpNet::from(ip);
        if !changes.steering.routes.contains(&net) {
            continue;
        }
        let presence = if routes.contains(&net) {
            Presence::Present
        } else {
            Presence::Missing
        };
        objects.push(LiveObject::new(format!("route {net} dev {dev}"), presence));
    }
    if let Some(node_port) = svc.node_port
        && let Some(change) = changes.nodeports.iter().find(|c| c.family == family)
        && let Some(rules) = change.chains.table(Table::Nat).get(CHAIN)
    {
        let dport = format!("--dport {node_port} ");
        for rule in rules.iter().filter(|r| r.contains(&dport)) {
            let presence = check(tool, Table::Nat, CHAIN, rule).await?;
            objects.push(LiveObject::new(
                format!("-t nat -A {CHAIN} {rule}"),
                presence,
            ));
        }
    }
    let Some(proto) = proto_number(svc.name.protocol) else {
        return Ok(objects);
    };
    let set = reply_set(family);
    let listed = NFT
        .run(&["list", "set", "inet", REPLY_TABLE, set], None)
        .await
        .unwrap_or_default();
    let listed: BTreeSet<String> = parse_listing(&listed)
        .remove(set)
        .unwrap_or_default()
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    let proto_name = svc.name.protocol.as_lower();
    for ep in svc.reachable_endpoints() {
        let wanted = changes
            .steering
            .rules
            .iter()
            .any(|r| r.from == ep.ip() && r.proto == proto && r.sport == ep.addr.port());
        if !wanted {
            continue;
        }
        let element = format!("{} . {proto_name} . {}", ep.ip(), ep.addr.port());
        let presence = if listed.contains(&element) {
            Presence::Present
        } else {
            Presence::Missing
        };
        objects.push(LiveObject::new(
            format!("element inet {REPLY_TABLE} {set} {{ {element} }}"),
            presence,
        ));
    }
    Ok(objects)
}
