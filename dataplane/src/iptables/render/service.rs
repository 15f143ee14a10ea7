//! The rules of one service port: its dispatch rules in the top-level chains, and its own
//! `KUBE-SVC-`/`KUBE-SVL-`/`KUBE-EXT-`/`KUBE-FW-`/`KUBE-SEP-` chains.
//!
//! This is a translation of upstream's per-service block of `syncProxyRules`, decision for
//! decision: which chain traffic of each kind (cluster IP, external IP, LB IP, NodePort)
//! jumps to, and which REJECT/DROP replaces it when there is no endpoint for it.

use crate::plan::{Endpoint, FamilyContext, NodeContext, ServicePortPlan};

use super::super::names::*;
use super::super::nfacct::LOCALHOST_NODEPORTS_ACCEPTED;
use super::super::ruleset::{Rule, Ruleset, Table};

/// Node facts the per-service rules depend on.
pub(super) struct Env<'a> {
    pub node: &'a NodeContext,
    pub family: &'a FamilyContext,
    /// Comment the per-endpoint rules (off in large clusters, see `render`).
    pub endpoint_comments: bool,
    /// Count the packets of NodePorts on 127.0.0.0/8 with the nfacct counter (IPv4 with
    /// localhost NodePorts, when the counters exist).
    pub localhost_counter: bool,
}

/// What happens to traffic that has no endpoint to go to.
struct NoEndpointVerdict {
    target: &'static str,
    comment: String,
}

pub(super) fn render_service_port(rs: &mut Ruleset, env: &Env, svc: &ServicePortPlan) {
    let name = svc.name.to_string();
    let chains = ServiceChains::of(&svc.name);
    let proto = svc.name.protocol;

    let has_endpoints = svc.has_any_endpoints;
    let uses_cluster_chain = !svc.cluster_endpoints.is_empty() && svc.uses_cluster_endpoints();
    let uses_local_chain = !svc.local_endpoints.is_empty() && svc.uses_local_endpoints();
    let internal_chain = chains.dispatch(svc.internal_set());
    let external_policy_chain = chains.dispatch(svc.external_set());
    let has_internal = svc.has_internal_endpoints();
    let has_external = svc.has_external_endpoints();
    let uses_external_chain = has_endpoints && svc.externally_accessible();
    let uses_fw_chain = has_endpoints
        && !svc.load_balancer_ips.is_empty()
        && !svc.load_balancer_source_ranges.is_empty();
    let lb_chain = if uses_fw_chain {
        &chains.firewall
    } else {
        &chains.external
    };

    // Upstream uses the same verdict for internal and external traffic.
    let verdict = no_endpoint_verdict(&name, has_endpoints);
    let capture = |dst: &std::net::IpAddr, comment: &str| {
        Rule::new()
            .comment(comment)
            .protocol(proto)
            .dst(dst)
            .dport(svc.port)
    };

    // Cluster IP.
    let cluster_comment = format!("{name} cluster IP");
    if has_internal {
        rs.append(
            Table::Nat,
            KUBE_SERVICES,
            capture(&svc.cluster_ip, &cluster_comment).jump(internal_chain),
        );
    } else {
        rs.append(
            Table::Filter,
            KUBE_SERVICES,
            capture(&svc.cluster_ip, &verdict.comment).jump(verdict.target),
        );
    }

    // External IPs.
    for ip in &svc.external_ips {
        if has_endpoints {
            rs.append(
                Table::Nat,
                KUBE_SERVICES,
                capture(ip, &format!("{name} external IP")).jump(&chains.external),
            );
        }
        if !has_external {
            rs.append(
                Table::Filter,
                KUBE_EXTERNAL_SERVICES,
                capture(ip, &verdict.comment).jump(verdict.target),
            );
        }
    }

    // Load-balancer IPs.
    for ip in &svc.load_balancer_ips {
        if has_endpoints {
            rs.append(
                Table::Nat,
                KUBE_SERVICES,
                capture(ip, &format!("{name} loadbalancer IP")).jump(lb_chain),
            );
        }
        if uses_fw_chain {
            rs.append(
                Table::Filter,
                KUBE_PROXY_FIREWALL,
                capture(
                    ip,
                    &format!("{name} traffic not accepted by {}", chains.firewall),
                )
                .jump("DROP"),
            );
        }
    }
    if !has_external {
        for ip in &svc.load_balancer_ips {
            rs.append(
                Table::Filter,
                KUBE_EXTERNAL_SERVICES,
                capture(ip, &verdict.comment).jump(verdict.target),
            );
        }
    }

    // NodePort.
    if let Some(node_port) = svc.node_port {
        if has_endpoints {
            let jump = |localhost: bool| {
                let rule = Rule::new().comment(&name).protocol(proto);
                if !localhost {
                    return rule.dport(node_port).jump(&chains.external);
                }
                rule.args("-d 127.0.0.0/8")
                    .dport(node_port)
                    .args(&format!(
                        "-m nfacct --nfacct-name {LOCALHOST_NODEPORTS_ACCEPTED}"
                    ))
                    .jump(&chains.external)
            };
            // As upstream: with the counters, the same jump for 127.0.0.0/8 first, counted.
            if env.localhost_counter {
                rs.append(Table::Nat, KUBE_NODEPORTS, jump(true));
            }
            rs.append(Table::Nat, KUBE_NODEPORTS, jump(false));
        }
        if !has_external {
            rs.append(
                Table::Filter,
                KUBE_EXTERNAL_SERVICES,
                Rule::new()
                    .comment(&verdict.comment)
                    .args("-m addrtype --dst-type LOCAL")
                    .protocol(proto)
                    .dport(node_port)
                    .jump(verdict.target),
            );
        }
    }

    // Health-check NodePort: accepted whether or not this node has local endpoints.
    if let Some(hc) = svc.health_check_node_port {
        rs.append(
            Table::Filter,
            KUBE_NODEPORTS,
            Rule::new()
                .comment(&format!("{name} health check node port"))
                .args("-m tcp -p tcp")
                .dport(hc)
                .jump("ACCEPT"),
        );
    }

    // Masquerade off-node traffic to the cluster IP (it may have been routed here).
    if has_internal {
        let rule = capture(&svc.cluster_ip, &cluster_comment);
        if env.node.masquerade_all {
            rs.append(Table::Nat, internal_chain, rule.jump(KUBE_MARK_MASQ));
        } else if let Some(not_local) = env.family.local_detector.iptables_match(false) {
            rs.append(
                Table::Nat,
                internal_chain,
                rule.args(&not_local).jump(KUBE_MARK_MASQ),
            );
        }
    }

    if uses_external_chain {
        render_external_chain(rs, env, svc, &chains, external_policy_chain, has_external);
    }
    if uses_fw_chain {
        render_firewall_chain(rs, env, svc, &chains);
    }
    if uses_cluster_chain {
        render_dispatch(rs, env, svc, &chains.cluster, &svc.cluster_endpoints);
    }
    if uses_local_chain {
        render_dispatch(rs, env, svc, &chains.local, &svc.local_endpoints);
    }
    for ep in svc.reachable_endpoints() {
        render_endpoint_chain(rs, env, svc, ep);
    }
}

fn no_endpoint_verdict(name: &str, has_endpoints: bool) -> NoEndpointVerdict {
    if has_endpoints {
        // Only the traffic policy leaves this traffic without an endpoint: drop it silently,
        // as a remote load balancer then retries another node.
        NoEndpointVerdict {
            target: "DROP",
            comment: format!("{name} has no local endpoints"),
        }
    } else {
        NoEndpointVerdict {
            target: "REJECT",
            comment: format!("{name} has no endpoints"),
        }
    }
}

fn render_external_chain(
    rs: &mut Ruleset,
    env: &Env,
    svc: &ServicePortPlan,
    chains: &ServiceChains,
    external_policy_chain: &str,
    has_external: bool,
) {
    let name = &svc.name;
    let ext = &chains.external;
    rs.chain(Table::Nat, ext);
    if !svc.external_policy_local {
        // Endpoints may be on another node: masquerade so replies come back through us.
        rs.append(
            Table::Nat,
            ext,
            Rule::new()
                .comment(&format!(
                    "masquerade traffic for {name} external destinations"
                ))
                .jump(KUBE_MARK_MASQ),
        );
    } else {
        // Pods and the node itself reach external destinations as if through an external
        // load balancer: they are not subject to the Local policy.
        if let Some(local) = env.family.local_detector.iptables_match(true) {
            rs.append(
                Table::Nat,
                ext,
                Rule::new()
                    .comment(&format!("pod traffic for {name} external destinations"))
                    .args(&local)
                    .jump(&chains.cluster),
            );
        }
        rs.append(
            Table::Nat,
            ext,
            Rule::new()
                .comment(&format!(
                    "masquerade LOCAL traffic for {name} external destinations"
                ))
                .args("-m addrtype --src-type LOCAL")
                .jump(KUBE_MARK_MASQ),
        );
        rs.append(
            Table::Nat,
            ext,
            Rule::new()
                .comment(&format!(
                    "route LOCAL traffic for {name} external destinations"
                ))
                .args("-m addrtype --src-type LOCAL")
                .jump(&chains.cluster),
        );
    }
    if has_external {
        rs.append(Table::Nat, ext, Rule::new().jump(external_policy_chain));
    }
}

fn render_firewall_chain(
    rs: &mut Ruleset,
    env: &Env,
    svc: &ServicePortPlan,
    chains: &ServiceChains,
) {
    let name = &svc.name;
    let fw = &chains.firewall;
    let comment = format!("{name} loadbalancer IP");
    let mut allow_from_node = false;
    for range in &svc.load_balancer_source_ranges {
        rs.append(
            Table::Nat,
            fw,
            Rule::new()
                .comment(&comment)
                .src_net(range)
                .jump(&chains.external),
        );
        allow_from_node |= env.family.node_ips.iter().any(|ip| range.contains(ip));
    }
    // A VIP-style LB IP is often local to the node: a request from the node to it loops back
    // with the VIP as source. Let it through when the node itself is allowed.
    if allow_from_node {
        for ip in &svc.load_balancer_ips {
            rs.append(
                Table::Nat,
                fw,
                Rule::new().comment(&comment).src(ip).jump(&chains.external),
            );
        }
    }
    // Whatever reaches the end is not DNATed, so KUBE-PROXY-FIREWALL drops it in filter.
    rs.append(
        Table::Nat,
        fw,
        Rule::new().comment(&format!(
            "other traffic to {name} will be dropped by KUBE-PROXY-FIREWALL"
        )),
    );
}

/// Session affinity first, then `1/(n-i)` random picks so each endpoint gets `1/n`.
fn render_dispatch(
    rs: &mut Ruleset,
    env: &Env,
    svc: &ServicePortPlan,
    chain: &str,
    endpoints: &[Endpoint],
) {
    rs.chain(Table::Nat, chain);
    if let Some(timeout) = svc.session_affinity_timeout {
        for ep in endpoints {
            let sep = endpoint_chain(&svc.name, ep);
            rs.append(
                Table::Nat,
                chain,
                endpoint_rule(env, &format!("{} -> {ep}", svc.name))
                    .args(&format!(
                        "-m recent --name {sep} --rcheck --seconds {timeout} --reap"
                    ))
                    .jump(&sep),
            );
        }
    }
    let n = endpoints.len();
    for (i, ep) in endpoints.iter().enumerate() {
        let mut rule = endpoint_rule(env, &format!("{} -> {ep}", svc.name));
        if i + 1 < n {
            rule = rule.args(&format!(
                "-m statistic --mode random --probability {}",
                probability(n - i)
            ));
        }
        rs.append(Table::Nat, chain, rule.jump(&endpoint_chain(&svc.name, ep)));
    }
}

/// `1/n` with upstream's ten decimals.
fn probability(n: usize) -> String {
    format!("{:.10}", 1.0 / n as f64)
}

/// A rule of the per-endpoint part, commented unless the cluster is large.
fn endpoint_rule(env: &Env, comment: &str) -> Rule {
    if env.endpoint_comments {
        Rule::new().comment(comment)
    } else {
        Rule::new()
    }
}

fn render_endpoint_chain(rs: &mut Ruleset, env: &Env, svc: &ServicePortPlan, ep: &Endpoint) {
    let sep = endpoint_chain(&svc.name, ep);
    let name = svc.name.to_string();
    // Hairpin: a pod reaching itself through the service must be masqueraded.
    rs.append(
        Table::Nat,
        &sep,
        endpoint_rule(env, &name).src(&ep.ip()).jump(KUBE_MARK_MASQ),
    );
    let mut dnat = endpoint_rule(env, &name);
    if svc.session_affinity_timeout.is_some() {
        dnat = dnat.args(&format!("-m recent --name {sep} --set"));
    }
    rs.append(
        Table::Nat,
        &sep,
        dnat.protocol(svc.name.protocol)
            .jump("DNAT")
            .args(&format!("--to-destination {ep}")),
    );
}
