//! The ipset entries of IPVS mode (upstream's `KUBE-CLUSTER-IP`, `KUBE-EXTERNAL-IP*`,
//! `KUBE-LOAD-BALANCER*`, `KUBE-NODE-PORT-*`, `KUBE-HEALTH-CHECK-NODE-PORT`,
//! `KUBE-LOOP-BACK`, `KUBE-IPVS-IPS`), rendered from a plan as `ipset` entry strings, and
//! the `ipset restore` input that programs them. Pure.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::plan::{IpFamily, Protocol, ProxyPlan, ServicePortPlan};

/// Entries by set name.
pub type IpsetEntries = BTreeMap<&'static str, BTreeSet<String>>;

/// `hash:ip,port`: every cluster IP and port.
pub const KUBE_CLUSTER_IP: &str = "KUBE-CLUSTER-IP";
/// `hash:ip,port`: every external IP and port.
pub const KUBE_EXTERNAL_IP: &str = "KUBE-EXTERNAL-IP";
/// `hash:ip,port`: external IPs of `externalTrafficPolicy: Local` services.
pub const KUBE_EXTERNAL_IP_LOCAL: &str = "KUBE-EXTERNAL-IP-LOCAL";
/// `hash:ip,port`: every load-balancer IP and port.
pub const KUBE_LOAD_BALANCER: &str = "KUBE-LOAD-BALANCER";
/// `hash:ip,port`: load-balancer IPs of `externalTrafficPolicy: Local` services.
pub const KUBE_LOAD_BALANCER_LOCAL: &str = "KUBE-LOAD-BALANCER-LOCAL";
/// `hash:ip,port`: load-balancer IPs with source ranges.
pub const KUBE_LOAD_BALANCER_FW: &str = "KUBE-LOAD-BALANCER-FW";
/// `hash:ip,port,net`: allowed source ranges per load-balancer IP.
pub const KUBE_LOAD_BALANCER_SOURCE_CIDR: &str = "KUBE-LOAD-BALANCER-SOURCE-CIDR";
/// `hash:ip,port,ip`: a load-balancer IP as the source of a request to itself, allowed
/// when the node is inside the source ranges (the node reaches a local VIP from the VIP).
pub const KUBE_LOAD_BALANCER_SOURCE_IP: &str = "KUBE-LOAD-BALANCER-SOURCE-IP";
/// `bitmap:port`: TCP NodePorts.
pub const KUBE_NODE_PORT_TCP: &str = "KUBE-NODE-PORT-TCP";
/// `bitmap:port`: UDP NodePorts.
pub const KUBE_NODE_PORT_UDP: &str = "KUBE-NODE-PORT-UDP";
/// `hash:ip,port`: SCTP NodePorts, per node address.
pub const KUBE_NODE_PORT_SCTP: &str = "KUBE-NODE-PORT-SCTP-HASH";
/// `bitmap:port`: TCP NodePorts of `externalTrafficPolicy: Local` services.
pub const KUBE_NODE_PORT_LOCAL_TCP: &str = "KUBE-NODE-PORT-LOCAL-TCP";
/// `bitmap:port`: UDP NodePorts of `externalTrafficPolicy: Local` services.
pub const KUBE_NODE_PORT_LOCAL_UDP: &str = "KUBE-NODE-PORT-LOCAL-UDP";
/// `hash:ip,port,ip`: local endpoints reaching themselves through a service (hairpin).
pub const KUBE_LOOP_BACK: &str = "KUBE-LOOP-BACK";
/// `bitmap:port`: health-check NodePorts (accepted in filter, for hosts that drop input).
pub const KUBE_HEALTH_CHECK_NODE_PORT: &str = "KUBE-HEALTH-CHECK-NODE-PORT";
/// `hash:ip`: every address bound to `kube-ipvs0`; new connections to them that match no
/// service are rejected, so a VIP does not expose the node's own ports.
pub const KUBE_IPVS_IPS: &str = "KUBE-IPVS-IPS";

/// Every set kproxy's IPVS mode owns (upstream's names, IPv4 spelling).
pub const ALL_SETS: [&str; 16] = [
    KUBE_CLUSTER_IP,
    KUBE_EXTERNAL_IP,
    KUBE_EXTERNAL_IP_LOCAL,
    KUBE_LOAD_BALANCER,
    KUBE_LOAD_BALANCER_LOCAL,
    KUBE_LOAD_BALANCER_FW,
    KUBE_LOAD_BALANCER_SOURCE_CIDR,
    KUBE_LOAD_BALANCER_SOURCE_IP,
    KUBE_NODE_PORT_TCP,
    KUBE_NODE_PORT_UDP,
    KUBE_NODE_PORT_SCTP,
    KUBE_NODE_PORT_LOCAL_TCP,
    KUBE_NODE_PORT_LOCAL_UDP,
    KUBE_LOOP_BACK,
    KUBE_HEALTH_CHECK_NODE_PORT,
    KUBE_IPVS_IPS,
];

fn ip_port(ip: &IpAddr, p: Protocol, port: u16) -> String {
    format!("{ip},{}:{port}", p.as_lower())
}

/// Every set kproxy owns, without entries.
pub fn empty_sets() -> IpsetEntries {
    ALL_SETS
        .into_iter()
        .map(|name| (name, BTreeSet::new()))
        .collect()
}

/// Renders every set's entries for `family`; `nodeport_ips` are the addresses NodePorts
/// are served on. Empty sets are present (with no entries) so the apply layer creates them.
pub fn render_ipsets(plan: &ProxyPlan, family: IpFamily, nodeport_ips: &[IpAddr]) -> IpsetEntries {
    let mut sets = empty_sets();
    let own_ips = plan
        .node
        .family(family)
        .map(|ctx| ctx.node_ips.as_slice())
        .unwrap_or_default();
    for svc in plan.services_of(family) {
        render_service(svc, nodeport_ips, own_ips, &mut sets);
    }
    sets
}

/// Adds one service port's entries to `sets`; `own_ips` are the node's addresses.
pub(super) fn render_service(
    svc: &ServicePortPlan,
    nodeport_ips: &[IpAddr],
    own_ips: &[IpAddr],
    sets: &mut IpsetEntries,
) {
    let p = svc.name.protocol;
    let mut put = |set: &'static str, entry: String| {
        sets.entry(set).or_default().insert(entry);
    };
    put(KUBE_CLUSTER_IP, ip_port(&svc.cluster_ip, p, svc.port));
    for ip in std::iter::once(&svc.cluster_ip)
        .chain(&svc.external_ips)
        .chain(&svc.load_balancer_ips)
    {
        put(KUBE_IPVS_IPS, ip.to_string());
    }
    if let Some(port) = svc.health_check_node_port {
        put(KUBE_HEALTH_CHECK_NODE_PORT, port.to_string());
    }
    for ep in svc.reachable_endpoints().into_iter().filter(|e| e.is_local) {
        let ip = ep.ip();
        put(
            KUBE_LOOP_BACK,
            format!("{ip},{}:{},{ip}", p.as_lower(), ep.addr.port()),
        );
    }
    for ip in &svc.external_ips {
        put(KUBE_EXTERNAL_IP, ip_port(ip, p, svc.port));
        if svc.external_policy_local {
            put(KUBE_EXTERNAL_IP_LOCAL, ip_port(ip, p, svc.port));
        }
    }
    for ip in &svc.load_balancer_ips {
        put(KUBE_LOAD_BALANCER, ip_port(ip, p, svc.port));
        if svc.external_policy_local {
            put(KUBE_LOAD_BALANCER_LOCAL, ip_port(ip, p, svc.port));
        }
        if !svc.load_balancer_source_ranges.is_empty() {
            put(KUBE_LOAD_BALANCER_FW, ip_port(ip, p, svc.port));
            for net in &svc.load_balancer_source_ranges {
                put(
                    KUBE_LOAD_BALANCER_SOURCE_CIDR,
                    format!("{},{net}", ip_port(ip, p, svc.port)),
                );
            }
            let node_allowed = svc
                .load_balancer_source_ranges
                .iter()
                .any(|net| own_ips.iter().any(|own| net.contains(own)));
            if node_allowed {
                put(
                    KUBE_LOAD_BALANCER_SOURCE_IP,
                    format!("{},{ip}", ip_port(ip, p, svc.port)),
                );
            }
        }
    }
    if let Some(np) = svc.node_port {
        let (all, local) = match p {
            Protocol::Tcp => (KUBE_NODE_PORT_TCP, Some(KUBE_NODE_PORT_LOCAL_TCP)),
            Protocol::Udp => (KUBE_NODE_PORT_UDP, Some(KUBE_NODE_PORT_LOCAL_UDP)),
            Protocol::Sctp => (KUBE_NODE_PORT_SCTP, None),
        };
        if p == Protocol::Sctp {
            for ip in nodeport_ips {
                put(all, ip_port(ip, p, np));
            }
        } else {
            put(all, np.to_string());
        }
        if let (true, Some(local)) = (svc.external_policy_local, local) {
            put(local, np.to_string());
        }
    }
}

/// The ipset type of one of kproxy's sets.
pub fn set_type(set: &str) -> &'static str {
    match set {
        KUBE_LOOP_BACK | KUBE_LOAD_BALANCER_SOURCE_IP => "hash:ip,port,ip",
        KUBE_LOAD_BALANCER_SOURCE_CIDR => "hash:ip,port,net",
        KUBE_IPVS_IPS => "hash:ip",
        KUBE_NODE_PORT_TCP
        | KUBE_NODE_PORT_UDP
        | KUBE_NODE_PORT_LOCAL_TCP
        | KUBE_NODE_PORT_LOCAL_UDP
        | KUBE_HEALTH_CHECK_NODE_PORT => "bitmap:port",
        _ => "hash:ip,port",
    }
}

/// The longest set name the kernel accepts (`IPSET_MAXNAMELEN` less the NUL).
pub const MAX_SET_NAME: usize = 31;

/// The scratch set a full sync fills before swapping it with a live one. Only ever exists
/// during one `ipset restore`; a leftover (a crash mid-restore) is destroyed first.
pub const SWAP_SET: &str = "KPROXY-SWAP";

/// The kernel name of a set: upstream's name for IPv4, `KUBE-6-...` for IPv6, cut to
/// [`MAX_SET_NAME`] as upstream does (`KUBE-6-LOAD-BALANCER-SOURCE-CID`).
pub fn set_name(set: &str, family: IpFamily) -> String {
    let mut name = match family {
        IpFamily::V4 => set.to_string(),
        IpFamily::V6 => set.replacen("KUBE-", "KUBE-6-", 1),
    };
    name.truncate(MAX_SET_NAME);
    name
}

fn create_line(name: &str, ty: &str, inet: &str) -> String {
    if ty == "bitmap:port" {
        format!("create {name} {ty} range 0-65535 -exist\n")
    } else {
        format!("create {name} {ty} family {inet} -exist\n")
    }
}

/// `entries` as `ipset restore` input that creates each set and adds its entries (what
/// `kproxy render` prints).
pub fn listing(entries: &IpsetEntries, family: IpFamily) -> String {
    let inet = match family {
        IpFamily::V4 => "inet",
        IpFamily::V6 => "inet6",
    };
    let mut out = String::new();
    for (set, members) in entries {
        let name = set_name(set, family);
        out.push_str(&create_line(&name, set_type(set), inet));
        for member in members {
            out.push_str(&format!("add {name} {member}\n"));
        }
    }
    out
}

/// The `ipset restore` input that creates every set (if missing) and moves its entries
/// from `current` (what the last sync wrote) to `wanted`. Returns the text and the number
/// of entry lines.
///
/// With `current` unknown (`None`: a full sync), each set is rebuilt in [`SWAP_SET`] and
/// swapped in: a set is never seen empty or half-filled by packets (a flush and refill
/// would, for a moment, stop masquerading and reject new connections to every VIP).
pub fn restore_input(
    wanted: &IpsetEntries,
    current: Option<&IpsetEntries>,
    family: IpFamily,
) -> (String, usize) {
    let mut out = String::new();
    let mut lines = 0;
    let inet = match family {
        IpFamily::V4 => "inet",
        IpFamily::V6 => "inet6",
    };
    let empty = BTreeSet::new();
    for (set, entries) in wanted {
        let name = set_name(set, family);
        let ty = set_type(set);
        let Some(current) = current else {
            out.push_str(&create_line(&name, ty, inet));
            out.push_str(&create_line(SWAP_SET, ty, inet));
            for e in entries {
                out.push_str(&format!("add {SWAP_SET} {e}\n"));
                lines += 1;
            }
            out.push_str(&format!("swap {SWAP_SET} {name}\ndestroy {SWAP_SET}\n"));
            continue;
        };
        let have = current.get(set).unwrap_or(&empty);
        for e in entries.difference(have) {
            out.push_str(&format!("add {name} {e} -exist\n"));
            lines += 1;
        }
        for e in have.difference(entries) {
            out.push_str(&format!("del {name} {e} -exist\n"));
            lines += 1;
        }
    }
    (out, lines)
}
