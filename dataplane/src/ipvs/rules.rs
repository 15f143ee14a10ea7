//! The small fixed iptables ruleset of IPVS mode (upstream's `writeIptablesRules`, nat and
//! filter): per-service data lives in the ipsets, so the rules do not grow with services,
//! except one DROP per load-balancer IP the node itself may not reach ([`no_node_access`]).
//! [`render_rules`] is pure and returns `iptables-restore --noflush` input that rewrites
//! kproxy's IPVS chains; [`JUMPS`] are the rules in built-in chains that lead into them.
//! [`apply_rules`] runs the tools.

use std::net::IpAddr;

use crate::iptables::ruleset::{Rule, Ruleset, Table};
use crate::plan::{IpFamily, Protocol, ProxyPlan};
use crate::tool::{Tool, ToolError};

use super::apply::IpvsError;
use super::ipset::{self, set_name};

/// nat: service traffic classification (marks for masquerade).
pub const KUBE_SERVICES: &str = "KUBE-SERVICES";
/// nat: NodePort traffic.
pub const KUBE_NODE_PORT: &str = "KUBE-NODE-PORT";
/// nat: load-balancer traffic.
pub const KUBE_LOAD_BALANCER: &str = "KUBE-LOAD-BALANCER";
/// nat: masquerades marked traffic and hairpin traffic.
pub const KUBE_POSTROUTING: &str = "KUBE-POSTROUTING";
/// nat: marks a packet for masquerade.
pub const KUBE_MARK_MASQ: &str = "KUBE-MARK-MASQ";
/// filter: accepts forwarded service traffic.
pub const KUBE_FORWARD: &str = "KUBE-FORWARD";
/// filter (same name as the nat chain): accepts health-check NodePorts.
pub const KUBE_NODE_PORT_FILTER: &str = "KUBE-NODE-PORT";
/// filter: sends load-balancer traffic with source ranges to the source check.
pub const KUBE_PROXY_FIREWALL: &str = "KUBE-PROXY-FIREWALL";
/// filter: returns allowed sources of a load-balancer IP, drops the rest.
pub const KUBE_SOURCE_RANGES_FIREWALL: &str = "KUBE-SOURCE-RANGES-FIREWALL";
/// filter: rejects new connections to a VIP on a port no service uses.
pub const KUBE_IPVS_FILTER: &str = "KUBE-IPVS-FILTER";
/// filter: drops the node's own connections to a load-balancer IP whose source ranges
/// exclude the node (IPVS schedules them in OUTPUT, so they never reach INPUT's firewall).
pub const KUBE_IPVS_OUT_FILTER: &str = "KUBE-IPVS-OUT-FILTER";

/// The nat chains kproxy's IPVS mode owns.
const NAT_CHAINS: [&str; 5] = [
    KUBE_SERVICES,
    KUBE_NODE_PORT,
    KUBE_LOAD_BALANCER,
    KUBE_POSTROUTING,
    KUBE_MARK_MASQ,
];
/// The filter chains kproxy's IPVS mode owns.
const FILTER_CHAINS: [&str; 6] = [
    KUBE_FORWARD,
    KUBE_NODE_PORT_FILTER,
    KUBE_PROXY_FIREWALL,
    KUBE_SOURCE_RANGES_FIREWALL,
    KUBE_IPVS_FILTER,
    KUBE_IPVS_OUT_FILTER,
];

/// A rule in a built-in chain jumping into one of kproxy's IPVS chains:
/// `(table, built-in chain, comment, target)`.
pub type Jump = (&'static str, &'static str, &'static str, &'static str);

/// Upstream's IPVS-mode jump rules.
pub const JUMPS: [Jump; 9] = [
    (
        "nat",
        "PREROUTING",
        "kubernetes service portals",
        KUBE_SERVICES,
    ),
    ("nat", "OUTPUT", "kubernetes service portals", KUBE_SERVICES),
    (
        "nat",
        "POSTROUTING",
        "kubernetes postrouting rules",
        KUBE_POSTROUTING,
    ),
    (
        "filter",
        "FORWARD",
        "kubernetes forwarding rules",
        KUBE_FORWARD,
    ),
    (
        "filter",
        "INPUT",
        "kubernetes health check rules",
        KUBE_NODE_PORT_FILTER,
    ),
    (
        "filter",
        "INPUT",
        "kube-proxy firewall rules",
        KUBE_PROXY_FIREWALL,
    ),
    (
        "filter",
        "FORWARD",
        "kube-proxy firewall rules",
        KUBE_PROXY_FIREWALL,
    ),
    (
        "filter",
        "INPUT",
        "kubernetes ipvs access filter",
        KUBE_IPVS_FILTER,
    ),
    (
        "filter",
        "OUTPUT",
        "kubernetes ipvs access filter",
        KUBE_IPVS_OUT_FILTER,
    ),
];

/// A load-balancer IP and port the node itself may not reach: its service has source
/// ranges, none of which holds a node address.
pub type NoNodeAccess = (IpAddr, Protocol, u16);

/// Every [`NoNodeAccess`] of `family` in `plan`, in plan order: the only part of the
/// ruleset that depends on services.
pub fn no_node_access(plan: &ProxyPlan, family: IpFamily) -> Vec<NoNodeAccess> {
    let node_ips = plan
        .node
        .family(family)
        .map(|ctx| ctx.node_ips.as_slice())
        .unwrap_or_default();
    plan.services_of(family)
        .filter(|svc| {
            !svc.load_balancer_source_ranges.is_empty()
                && !svc
                    .load_balancer_source_ranges
                    .iter()
                    .any(|net| node_ips.iter().any(|ip| net.contains(ip)))
        })
        .flat_map(|svc| {
            svc.load_balancer_ips
                .iter()
                .map(move |ip| (*ip, svc.name.protocol, svc.port))
        })
        .collect()
}

/// Options of the ruleset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RuleOptions {
    /// `MASQUERADE --random-fully` is supported.
    pub random_fully: bool,
}

/// The ruleset of `family`: every IPVS chain kproxy owns, declared (so that restoring it
/// flushes them), and its rules. `None` when the node does not serve the family.
pub fn render_rules(plan: &ProxyPlan, family: IpFamily, opts: RuleOptions) -> Option<Ruleset> {
    let ctx = plan.node.family(family)?;
    let mark = plan.node.masquerade_mark;
    let set = |s: &str| set_name(s, family);
    let mut rs = Ruleset::new(family);
    for chain in NAT_CHAINS {
        rs.chain(Table::Nat, chain);
    }
    for chain in FILTER_CHAINS {
        rs.chain(Table::Filter, chain);
    }
    let mut add = |chain: &str, rule: String| rs.append(Table::Nat, chain, Rule::new().args(&rule));
    let cluster = set(ipset::KUBE_CLUSTER_IP);
    if plan.node.masquerade_all {
        add(
            KUBE_SERVICES,
            format!(
                "-m comment --comment \"Kubernetes service cluster ip + port for masquerade purpose\" -m set --match-set {cluster} dst,dst -j {KUBE_MARK_MASQ}"
            ),
        );
    } else if let Some(not_local) = ctx.local_detector.iptables_match(false) {
        add(
            KUBE_SERVICES,
            format!(
                "-m comment --comment \"Kubernetes service cluster ip + port for masquerade purpose\" -m set --match-set {cluster} dst,dst {not_local} -j {KUBE_MARK_MASQ}"
            ),
        );
    }
    let ext = set(ipset::KUBE_EXTERNAL_IP);
    let ext_local = set(ipset::KUBE_EXTERNAL_IP_LOCAL);
    add(
        KUBE_SERVICES,
        format!(
            "-m comment --comment \"Kubernetes service external ip + port with externalTrafficPolicy=local\" -m set --match-set {ext_local} dst,dst -j ACCEPT"
        ),
    );
    add(
        KUBE_SERVICES,
        format!(
            "-m comment --comment \"Kubernetes service external ip + port for masquerade and filter purpose\" -m set --match-set {ext} dst,dst -j {KUBE_MARK_MASQ}"
        ),
    );
    add(
        KUBE_SERVICES,
        format!(
            "-m comment --comment \"Kubernetes service lb portal\" -m set --match-set {} dst,dst -j {KUBE_LOAD_BALANCER}",
            set(ipset::KUBE_LOAD_BALANCER)
        ),
    );
    add(
        KUBE_LOAD_BALANCER,
        format!(
            "-m set --match-set {} dst,dst -j RETURN",
            set(ipset::KUBE_LOAD_BALANCER_LOCAL)
        ),
    );
    add(KUBE_LOAD_BALANCER, format!("-j {KUBE_MARK_MASQ}"));
    for (proto, all, local) in [
        (
            "tcp",
            ipset::KUBE_NODE_PORT_TCP,
            ipset::KUBE_NODE_PORT_LOCAL_TCP,
        ),
        (
            "udp",
            ipset::KUBE_NODE_PORT_UDP,
            ipset::KUBE_NODE_PORT_LOCAL_UDP,
        ),
    ] {
        add(
            KUBE_NODE_PORT,
            format!("-p {proto} -m set --match-set {} dst -j RETURN", set(local)),
        );
        add(
            KUBE_NODE_PORT,
            format!(
                "-p {proto} -m set --match-set {} dst -j {KUBE_MARK_MASQ}",
                set(all)
            ),
        );
    }
    add(
        KUBE_NODE_PORT,
        format!(
            "-p sctp -m set --match-set {} dst,dst -j {KUBE_MARK_MASQ}",
            set(ipset::KUBE_NODE_PORT_SCTP)
        ),
    );
    add(
        KUBE_SERVICES,
        format!("-m set --match-set {cluster} dst,dst -j ACCEPT"),
    );
    add(
        KUBE_SERVICES,
        format!("-m addrtype --dst-type LOCAL -j {KUBE_NODE_PORT}"),
    );
    add(
        KUBE_POSTROUTING,
        format!(
            "-m comment --comment \"Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose\" -m set --match-set {} dst,dst,src -j MASQUERADE",
            set(ipset::KUBE_LOOP_BACK)
        ),
    );
    add(
        KUBE_POSTROUTING,
        format!("-m mark ! --mark {mark:#x}/{mark:#x} -j RETURN"),
    );
    add(KUBE_POSTROUTING, format!("-j MARK --xor-mark {mark:#x}"));
    let fully = if opts.random_fully {
        " --random-fully"
    } else {
        ""
    };
    add(
        KUBE_POSTROUTING,
        format!(
            "-m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE{fully}"
        ),
    );
    add(KUBE_MARK_MASQ, format!("-j MARK --or-mark {mark:#x}"));

    let mut add =
        |chain: &str, rule: String| rs.append(Table::Filter, chain, Rule::new().args(&rule));
    add(
        KUBE_FORWARD,
        "-m conntrack --ctstate INVALID -j DROP".into(),
    );
    add(
        KUBE_FORWARD,
        format!(
            "-m comment --comment \"kubernetes forwarding rules\" -m mark --mark {mark:#x}/{mark:#x} -j ACCEPT"
        ),
    );
    add(
        KUBE_FORWARD,
        "-m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT".into(),
    );
    let health = set(ipset::KUBE_HEALTH_CHECK_NODE_PORT);
    add(
        KUBE_NODE_PORT_FILTER,
        format!(
            "-m comment --comment \"Kubernetes health check node port\" -m set --match-set {health} dst -j ACCEPT"
        ),
    );
    add(
        KUBE_PROXY_FIREWALL,
        format!(
            "-m comment --comment \"Kubernetes service load balancer ip + port for load balancer with sourceRange\" -m set --match-set {} dst,dst -j {KUBE_SOURCE_RANGES_FIREWALL}",
            set(ipset::KUBE_LOAD_BALANCER_FW)
        ),
    );
    add(
        KUBE_SOURCE_RANGES_FIREWALL,
        format!(
            "-m comment --comment \"Kubernetes service load balancer ip + port + source cidr for packet filter purpose\" -m set --match-set {} dst,dst,src -j RETURN",
            set(ipset::KUBE_LOAD_BALANCER_SOURCE_CIDR)
        ),
    );
    add(
        KUBE_SOURCE_RANGES_FIREWALL,
        format!(
            "-m comment --comment \"Kubernetes service load balancer ip + port + source IP for packet filter purpose to allow traffic from the node\" -m set --match-set {} dst,dst,src -j RETURN",
            set(ipset::KUBE_LOAD_BALANCER_SOURCE_IP)
        ),
    );
    add(KUBE_SOURCE_RANGES_FIREWALL, "-j DROP".into());
    // A VIP is a local address: without this, it would expose every port the node listens
    // on (kubernetes/kubernetes#72236).
    for (name, dir) in [
        (ipset::KUBE_LOAD_BALANCER, "dst,dst"),
        (ipset::KUBE_CLUSTER_IP, "dst,dst"),
        (ipset::KUBE_EXTERNAL_IP, "dst,dst"),
        (ipset::KUBE_EXTERNAL_IP_LOCAL, "dst,dst"),
        (ipset::KUBE_HEALTH_CHECK_NODE_PORT, "dst"),
    ] {
        add(
            KUBE_IPVS_FILTER,
            format!("-m set --match-set {} {dir} -j RETURN", set(name)),
        );
    }
    add(
        KUBE_IPVS_FILTER,
        format!(
            "-m conntrack --ctstate NEW -m set --match-set {} dst -j REJECT",
            set(ipset::KUBE_IPVS_IPS)
        ),
    );
    // A connection from the node to a local VIP has the VIP as its source.
    for (ip, protocol, port) in no_node_access(plan, family) {
        add(
            KUBE_IPVS_OUT_FILTER,
            format!(
                "-s {ip} -m ipvs --vaddr {ip} --vproto {} -m ipvs --vport {port} -j DROP",
                protocol.as_lower()
            ),
        );
    }
    Some(rs)
}

/// The `iptables-restore --noflush` input that deletes kproxy's IPVS chains (after their
/// jump rules are gone).
pub fn cleanup_input() -> String {
    let mut out = String::new();
    for (table, chains) in [("nat", &NAT_CHAINS[..]), ("filter", &FILTER_CHAINS[..])] {
        out.push_str(&format!("*{table}\n"));
        for c in chains {
            out.push_str(&format!(":{c} - [0:0]\n"));
        }
        // Flushed (declared) first, deleted second: chains may jump to each other.
        for c in chains {
            out.push_str(&format!("-X {c}\n"));
        }
        out.push_str("COMMIT\n");
    }
    out
}

fn jump_args(verb: &str, j: &Jump) -> Vec<String> {
    let (table, chain, comment, target) = *j;
    [
        "-w",
        "-t",
        table,
        verb,
        chain,
        "-m",
        "comment",
        "--comment",
        comment,
        "-j",
        target,
    ]
    .into_iter()
    .map(str::to_string)
    .collect()
}

/// Runs `bin args`: `Ok(false)` when a check or edit without input exits unsuccessfully
/// (`-C` of a missing rule, `-D` of a deleted one); an error when input was refused or the
/// tool could not run.
fn run(bin: &str, args: &[String], stdin: Option<&str>) -> Result<bool, IpvsError> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match Tool::new(bin, "iptables").run_blocking(&args, stdin) {
        Ok(_) => Ok(true),
        Err(ToolError::Failed { .. }) if stdin.is_none() => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Writes `rules` with `<iptables>-restore --noflush` and inserts missing jump rules.
/// `iptables` is the family's binary (`iptables-nft`, `ip6tables-legacy`, ...).
pub fn apply_rules(iptables: &str, rules: &Ruleset) -> Result<(), IpvsError> {
    run(
        &format!("{iptables}-restore"),
        &["-w".into(), "--noflush".into()],
        Some(&rules.to_restore_text()),
    )?;
    for j in &JUMPS {
        if !run(iptables, &jump_args("-C", j), None)? {
            let args: Vec<String> = jump_args("-I", j);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Tool::new(iptables, "iptables").run_blocking(&args, None)?;
        }
    }
    Ok(())
}

/// Removes the jump rules and kproxy's IPVS chains.
pub fn cleanup_rules(iptables: &str) -> Result<(), IpvsError> {
    for j in &JUMPS {
        for _ in 0..8 {
            if !run(iptables, &jump_args("-D", j), None)? {
                break;
            }
        }
    }
    let _ = run(
        &format!("{iptables}-restore"),
        &["-w".into(), "--noflush".into()],
        Some(&cleanup_input()),
    );
    Ok(())
}
