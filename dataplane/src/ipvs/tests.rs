//! Unit tests of the pure parts of IPVS mode: render and diff (graceful termination).

use std::collections::BTreeSet;

use crate::fixtures::*;
use crate::plan::{IpFamily, ProxyPlan};

use super::diff::{IpvsOp, KernelService, KernelState, advance, diff};
use super::ipset::{KUBE_CLUSTER_IP, KUBE_LOOP_BACK, KUBE_NODE_PORT_TCP};
use super::netlink::consts::{IPPROTO_TCP, IPPROTO_UDP, SVC_F_PERSISTENT};
use super::netlink::{DestConns, Destination, ServiceKey};
use super::state::{RenderOptions, Scheduler, render};

fn plan() -> ProxyPlan {
    let mut web = with_endpoints(
        service("default", "web", "http", "10.96.0.10", 80),
        vec![
            endpoint("10.244.0.11:8080", true),
            endpoint("10.244.1.12:8080", false),
        ],
    );
    web.node_port = Some(30080);
    web.session_affinity_timeout = Some(10800);
    let mut dns = with_endpoints(
        service("kube-system", "dns", "dns", "10.96.0.53", 53),
        vec![endpoint("10.244.1.20:53", false)],
    );
    dns.name.protocol = crate::plan::Protocol::Udp;
    ProxyPlan {
        node: node(),
        services: vec![web, dns],
    }
}

fn key(addr: &str, port: u16, protocol: u16) -> ServiceKey {
    ServiceKey::Addr {
        protocol,
        addr: ip(addr),
        port,
    }
}

fn opts(s: Scheduler) -> RenderOptions {
    RenderOptions { scheduler: s }
}

#[test]
fn renders_cluster_ip_nodeport_and_affinity() {
    let state = render(&plan(), IpFamily::V4, &opts(Scheduler::Mh)).expect("v4");
    let keys: Vec<String> = state
        .virtual_servers
        .keys()
        .map(|k| k.to_string())
        .collect();
    assert_eq!(
        keys,
        [
            "TCP 10.96.0.10:80",
            "TCP 192.168.0.10:30080",
            "UDP 10.96.0.53:53"
        ]
    );
    let web = &state.virtual_servers[&key("10.96.0.10", 80, IPPROTO_TCP)];
    assert_eq!(web.service.scheduler, "mh");
    assert_eq!(web.service.flags, SVC_F_PERSISTENT);
    assert_eq!(web.service.timeout, 10800);
    assert_eq!(web.real_servers.len(), 2);
    assert_eq!(web.owner, "default/web:http");
    assert_eq!(
        state.bound_addresses,
        BTreeSet::from([ip("10.96.0.10"), ip("10.96.0.53")])
    );
    assert!(state.ipsets[KUBE_CLUSTER_IP].contains("10.96.0.10,tcp:80"));
    assert!(state.ipsets[KUBE_CLUSTER_IP].contains("10.96.0.53,udp:53"));
    assert!(state.ipsets[KUBE_NODE_PORT_TCP].contains("30080"));
    assert!(state.ipsets[KUBE_LOOP_BACK].contains("10.244.0.11,tcp:8080,10.244.0.11"));
    assert!(
        render(&plan(), IpFamily::V6, &opts(Scheduler::Rr))
            .expect("v6")
            .virtual_servers
            .is_empty()
    );
}

#[test]
fn scheduler_names_parse() {
    for s in Scheduler::ALL {
        assert_eq!(s.name().parse::<Scheduler>(), Ok(s));
    }
    assert_eq!("".parse::<Scheduler>(), Ok(Scheduler::Rr));
    assert!("fifo".parse::<Scheduler>().is_err());
}

fn kernel_from(state: &super::state::IpvsState) -> KernelState {
    let mut k = KernelState::new();
    let ops = diff(state, &k, &BTreeSet::new()).ops;
    advance(&mut k, &ops);
    k
}

#[test]
fn diff_from_empty_then_converged() {
    let wanted = render(&plan(), IpFamily::V4, &opts(Scheduler::Rr)).expect("v4");
    let changes = diff(
        &wanted,
        &KernelState::new(),
        &BTreeSet::from([ip("10.96.0.99")]),
    );
    assert_eq!(changes.add_addresses.len(), 2);
    assert_eq!(changes.del_addresses, vec![ip("10.96.0.99")]);
    let adds = changes
        .ops
        .iter()
        .filter(|o| matches!(o, IpvsOp::AddService(_)))
        .count();
    assert_eq!(adds, 3);
    let kernel = kernel_from(&wanted);
    assert!(diff(&wanted, &kernel, &wanted.bound_addresses).is_empty());
}

#[test]
fn graceful_termination_tcp_then_udp_immediately() {
    let old = render(&plan(), IpFamily::V4, &opts(Scheduler::Rr)).expect("v4");
    let mut kernel = kernel_from(&old);
    let mut p = plan();
    p.services[0]
        .cluster_endpoints
        .retain(|e| e.addr.port() == 8080 && e.is_local);
    p.services[1].cluster_endpoints.clear();
    let new = render(&p, IpFamily::V4, &opts(Scheduler::Rr)).expect("v4");

    let web = key("10.96.0.10", 80, IPPROTO_TCP);
    let dns = key("10.96.0.53", 53, IPPROTO_UDP);
    let gone = Destination::masq(ip("10.244.1.12"), 8080);
    let changes = diff(&new, &kernel, &new.bound_addresses);
    assert!(changes.ops.contains(&IpvsOp::UpdateDest(
        web,
        Destination {
            weight: 0,
            ..gone.clone()
        }
    )));
    assert!(changes.ops.contains(&IpvsOp::DelDest(
        dns,
        Destination::masq(ip("10.244.1.20"), 53)
    )));
    assert_eq!(changes.draining, 2, "web via cluster IP and NodePort");
    advance(&mut kernel, &changes.ops);

    // Still connected: stays at weight 0.
    let set_conns = |k: &mut KernelState, active| {
        for svc in k.values_mut() {
            for d in &mut svc.destinations {
                if d.addr == gone.addr {
                    d.conns = DestConns {
                        active,
                        inactive: 0,
                        persistent: 0,
                    };
                }
            }
        }
    };
    set_conns(&mut kernel, 1);
    let changes = diff(&new, &kernel, &new.bound_addresses);
    assert!(changes.ops.is_empty(), "{:?}", changes.ops);
    assert_eq!(changes.draining, 2);
    // Drained: deleted.
    set_conns(&mut kernel, 0);
    let changes = diff(&new, &kernel, &new.bound_addresses);
    assert!(changes.ops.contains(&IpvsOp::DelDest(
        web,
        Destination {
            weight: 0,
            ..gone.clone()
        }
    )));

    // Coming back while draining restores the weight.
    let mut k2 = kernel_from(&old);
    let ops = diff(&new, &k2, &new.bound_addresses).ops;
    advance(&mut k2, &ops);
    let back = diff(&old, &k2, &old.bound_addresses);
    assert!(back.ops.contains(&IpvsOp::UpdateDest(web, gone)));
}

#[test]
fn removed_service_and_scheduler_change() {
    let old = render(&plan(), IpFamily::V4, &opts(Scheduler::Rr)).expect("v4");
    let kernel: KernelState = kernel_from(&old)
        .into_iter()
        .map(|(k, v)| (k, KernelService { ..v }))
        .collect();
    let mut p = plan();
    p.services.truncate(1);
    let new = render(&p, IpFamily::V4, &opts(Scheduler::Sh)).expect("v4");
    let changes = diff(&new, &kernel, &old.bound_addresses);
    assert!(
        changes
            .ops
            .contains(&IpvsOp::DelService(key("10.96.0.53", 53, IPPROTO_UDP)))
    );
    let updates = changes
        .ops
        .iter()
        .filter(|o| matches!(o, IpvsOp::UpdateService(s) if s.scheduler == "sh"))
        .count();
    assert_eq!(updates, 2);
    assert_eq!(changes.del_addresses, vec![ip("10.96.0.53")]);
}

#[test]
fn ipset_restore_full_then_incremental() {
    use super::ipset::{restore_input, set_name};
    let wanted = render(&plan(), IpFamily::V4, &opts(Scheduler::Rr)).expect("v4");
    let (full, lines) = restore_input(&wanted.ipsets, None, IpFamily::V4);
    assert!(full.contains("create KUBE-NODE-PORT-TCP bitmap:port range 0-65535 -exist\n"));
    assert!(full.contains("create KUBE-IPVS-IPS hash:ip family inet -exist\n"));
    // A full sync fills a scratch set and swaps it in: never a flush of a live set.
    assert!(!full.contains("flush"), "{full}");
    assert!(
        full.contains(
            "create KUBE-CLUSTER-IP hash:ip,port family inet -exist\n\
             create KPROXY-SWAP hash:ip,port family inet -exist\n\
             add KPROXY-SWAP 10.96.0.10,tcp:80\n\
             add KPROXY-SWAP 10.96.0.53,udp:53\n\
             swap KPROXY-SWAP KUBE-CLUSTER-IP\n\
             destroy KPROXY-SWAP\n"
        ),
        "{full}"
    );
    // Two cluster IPs, their VIPs, one NodePort, one hairpin entry.
    assert_eq!(lines, 6, "{full}");
    let (same, lines) = restore_input(&wanted.ipsets, Some(&wanted.ipsets), IpFamily::V4);
    assert_eq!((same.as_str(), lines), ("", 0));
    let mut p = plan();
    p.services.truncate(1);
    let fewer = render(&p, IpFamily::V4, &opts(Scheduler::Rr)).expect("v4");
    let (delta, lines) = restore_input(&fewer.ipsets, Some(&wanted.ipsets), IpFamily::V4);
    assert_eq!(
        delta,
        "del KUBE-CLUSTER-IP 10.96.0.53,udp:53 -exist\ndel KUBE-IPVS-IPS 10.96.0.53 -exist\n"
    );
    assert_eq!(lines, 2);
    assert_eq!(
        set_name("KUBE-CLUSTER-IP", IpFamily::V6),
        "KUBE-6-CLUSTER-IP"
    );
    // The kernel takes at most 31 characters: cut as upstream does.
    assert_eq!(
        set_name("KUBE-LOAD-BALANCER-SOURCE-CIDR", IpFamily::V6),
        "KUBE-6-LOAD-BALANCER-SOURCE-CID"
    );
    for family in [IpFamily::V4, IpFamily::V6] {
        for set in super::ipset::ALL_SETS {
            assert!(set_name(set, family).len() <= super::ipset::MAX_SET_NAME);
        }
    }
}

#[test]
fn fixed_ruleset_masquerades_off_cluster_and_hairpin_traffic() {
    use super::rules::{RuleOptions, cleanup_input, render_rules};
    let text = render_rules(&plan(), IpFamily::V4, RuleOptions { random_fully: true })
        .expect("v4")
        .to_restore_text();
    for line in [
        "*nat",
        ":KUBE-SERVICES - [0:0]",
        "-A KUBE-SERVICES -m comment --comment \"Kubernetes service cluster ip + port for masquerade purpose\" -m set --match-set KUBE-CLUSTER-IP dst,dst ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ",
        "-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT",
        "-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT",
        "-A KUBE-NODE-PORT -p tcp -m set --match-set KUBE-NODE-PORT-TCP dst -j KUBE-MARK-MASQ",
        "-A KUBE-POSTROUTING -m comment --comment \"Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose\" -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE",
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully",
        "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000",
        "*filter",
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
    }
    let v6 = render_rules(&plan(), IpFamily::V6, RuleOptions::default())
        .expect("v6")
        .to_restore_text();
    assert!(v6.contains("--match-set KUBE-6-CLUSTER-IP dst,dst ! -s fd00:10::/64"));
    assert!(!v6.contains("--random-fully"));
    assert!(cleanup_input().contains("-X KUBE-POSTROUTING\n"));
    // The ruleset does not grow with services.
    let mut many = plan();
    let extra = many.services[0].clone();
    many.services.extend(std::iter::repeat_n(extra, 50));
    assert_eq!(
        render_rules(&many, IpFamily::V4, RuleOptions::default())
            .map(|r| r.to_restore_text().len()),
        render_rules(&plan(), IpFamily::V4, RuleOptions::default())
            .map(|r| r.to_restore_text().len())
    );
}

#[test]
fn source_ranges_health_checks_and_vip_filter() {
    use super::ipset::{
        KUBE_HEALTH_CHECK_NODE_PORT, KUBE_IPVS_IPS, KUBE_LOAD_BALANCER_FW,
        KUBE_LOAD_BALANCER_SOURCE_CIDR, KUBE_LOAD_BALANCER_SOURCE_IP,
    };
    use super::rules::{JUMPS, RuleOptions, cleanup_input, render_rules};
    let p = crate::fixtures::plan(external());
    let sets = render(&p, IpFamily::V4, &opts(Scheduler::Rr))
        .expect("v4")
        .ipsets;
    let entries = |name: &str| -> Vec<String> { sets[name].iter().cloned().collect() };
    assert_eq!(entries(KUBE_LOAD_BALANCER_FW), ["203.0.113.7,tcp:443"]);
    assert_eq!(
        entries(KUBE_LOAD_BALANCER_SOURCE_CIDR),
        [
            "203.0.113.7,tcp:443,192.168.0.0/24",
            "203.0.113.7,tcp:443,203.0.113.0/25",
            "203.0.113.7,tcp:443,203.0.113.64/26",
        ]
    );
    // 192.168.0.0/24 holds the node's address: the node may reach the VIP from the VIP.
    assert_eq!(
        entries(KUBE_LOAD_BALANCER_SOURCE_IP),
        ["203.0.113.7,tcp:443,203.0.113.7"]
    );
    assert_eq!(entries(KUBE_HEALTH_CHECK_NODE_PORT), ["32000"]);
    assert_eq!(
        entries(KUBE_IPVS_IPS),
        [
            "172.30.0.42",
            "172.30.0.43",
            "172.30.0.44",
            "192.0.2.4",
            "203.0.113.7"
        ]
    );
    // Without the node in the ranges, no VIP-sourced exception.
    let mut q = p.clone();
    for svc in &mut q.services {
        svc.load_balancer_source_ranges
            .retain(|net| !net.contains(&ip("192.168.0.10")));
    }
    let sets = render(&q, IpFamily::V4, &opts(Scheduler::Rr))
        .expect("v4")
        .ipsets;
    assert!(sets[KUBE_LOAD_BALANCER_SOURCE_IP].is_empty());
    // ... and the node's own connections to the VIP (scheduled by IPVS in OUTPUT, before
    // INPUT's firewall) are dropped.
    let excluded = render_rules(&q, IpFamily::V4, RuleOptions::default())
        .expect("v4")
        .to_restore_text();
    assert!(
        excluded.lines().any(|l| l
            == "-A KUBE-IPVS-OUT-FILTER -s 203.0.113.7 -m ipvs --vaddr 203.0.113.7 --vproto tcp -m ipvs --vport 443 -j DROP"),
        "{excluded}"
    );

    let text = render_rules(&p, IpFamily::V4, RuleOptions::default())
        .expect("v4")
        .to_restore_text();
    assert!(
        !text.contains("-A KUBE-IPVS-OUT-FILTER"),
        "the node is allowed"
    );
    let filter = text.split("*filter\n").nth(1).expect("filter table");
    for line in [
        ":KUBE-PROXY-FIREWALL - [0:0]",
        "-A KUBE-PROXY-FIREWALL -m comment --comment \"Kubernetes service load balancer ip + port for load balancer with sourceRange\" -m set --match-set KUBE-LOAD-BALANCER-FW dst,dst -j KUBE-SOURCE-RANGES-FIREWALL",
        "-A KUBE-SOURCE-RANGES-FIREWALL -m comment --comment \"Kubernetes service load balancer ip + port + source cidr for packet filter purpose\" -m set --match-set KUBE-LOAD-BALANCER-SOURCE-CIDR dst,dst,src -j RETURN",
        "-A KUBE-SOURCE-RANGES-FIREWALL -j DROP",
        "-A KUBE-NODE-PORT -m comment --comment \"Kubernetes health check node port\" -m set --match-set KUBE-HEALTH-CHECK-NODE-PORT dst -j ACCEPT",
        "-A KUBE-IPVS-FILTER -m set --match-set KUBE-CLUSTER-IP dst,dst -j RETURN",
        "-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set KUBE-IPVS-IPS dst -j REJECT",
    ] {
        assert!(
            filter.lines().any(|l| l == line),
            "missing {line}\n{filter}"
        );
    }
    // The allow rules come before the DROP and the RETURNs before the REJECT.
    let at = |needle: &str| filter.find(needle).expect(needle);
    assert!(
        at("KUBE-LOAD-BALANCER-SOURCE-IP dst,dst,src -j RETURN")
            < at("-A KUBE-SOURCE-RANGES-FIREWALL -j DROP")
    );
    assert!(at("KUBE-HEALTH-CHECK-NODE-PORT dst -j RETURN") < at("-j REJECT"));
    let v6 = render_rules(&p, IpFamily::V6, RuleOptions::default())
        .expect("v6")
        .to_restore_text();
    assert!(v6.contains("--match-set KUBE-6-IPVS-IPS dst -j REJECT"));
    // Every chain a jump leads to is declared, and cleanup deletes it.
    let cleanup = cleanup_input();
    for (table, _, _, target) in JUMPS {
        let section = text.split(&format!("*{table}\n")).nth(1).expect(table);
        assert!(section.contains(&format!(":{target} - [0:0]")), "{target}");
        let section = cleanup.split(&format!("*{table}\n")).nth(1).expect(table);
        assert!(section.contains(&format!("-X {target}\n")), "{target}");
    }
}

/// `kproxy render`'s listing reads like `ipvsadm -Ln`.
#[test]
fn virtual_servers_list_like_ipvsadm() {
    let state = render(&plan(), IpFamily::V4, &opts(Scheduler::Rr)).expect("v4");
    let listing = state.listing();
    let expected = "\
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight
TCP  10.96.0.10:80          rr persistent 10800
  -> 10.244.0.11:8080             Masq    1
  -> 10.244.1.12:8080             Masq    1
TCP  192.168.0.10:30080     rr persistent 10800
  -> 10.244.0.11:8080             Masq    1
  -> 10.244.1.12:8080             Masq    1
UDP  10.96.0.53:53          rr
  -> 10.244.1.20:53               Masq    1
";
    assert_eq!(listing, expected);
}
