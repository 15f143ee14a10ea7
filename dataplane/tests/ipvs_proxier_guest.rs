//! `IpvsProxier` against a real IPVS kernel: a ClusterIP connection through IPVS to echo
//! servers in network namespaces, graceful termination, sync times, cleanup.
//!
//! Built only with the `ipvs-guest` feature, for the qemu guest of `scripts/run-ipvs-vm.sh`;
//! a kernel without IPVS fails them (`tests/unsupported_ipvs.rs` checks the start-up error
//! on such a kernel).

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use kproxy_dataplane::fixtures::{
    self, detecting_pods, endpoint, ip, single_family_node, with_endpoints,
};
use kproxy_dataplane::ipvs::netlink::consts::IPPROTO_TCP;
use kproxy_dataplane::ipvs::netlink::{Destination, IpvsSocket, Service, ServiceKey, Timeouts};
use kproxy_dataplane::ipvs::proxier::kernel_has_ipvs;
use kproxy_dataplane::ipvs::{IpvsOptions, IpvsProxier, Scheduler};
use kproxy_dataplane::plan::*;

fn require_ipvs(test: &str) {
    assert!(
        kernel_has_ipvs(),
        "{test}: this kernel has no IPVS (run it with scripts/run-ipvs-vm.sh)"
    );
}

fn sh(script: &str) {
    let out = Command::new("bash")
        .args(["-ec", script])
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Node `guest` at 10.0.0.1 (its only NodePort address), pods in 10.244.0.0/16.
fn node() -> NodeContext {
    let mut node = detecting_pods(single_family_node("guest", "10.0.0.1"), "10.244.0.0/16");
    if let Some(v4) = node.ipv4.as_mut() {
        v4.nodeport_addresses = NodePortAddresses::Only(vec![ip("10.0.0.1")]);
    }
    node
}

/// `default/NAME:http` on `cluster_ip:port` with local endpoints.
fn service(name: &str, cluster_ip: IpAddr, port: u16, endpoints: &[&str]) -> ServicePortPlan {
    with_endpoints(
        fixtures::service("default", name, "http", &cluster_ip.to_string(), port),
        endpoints.iter().map(|e| endpoint(e, true)).collect(),
    )
}

/// HTTP GET through `addr`, returning the body's last line (the pod name).
fn get(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("send");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.lines().last().unwrap_or("").trim().to_string()
}

#[test]
fn cluster_ip_through_ipvs_with_graceful_termination() {
    require_ipvs("cluster_ip_through_ipvs_with_graceful_termination");
    sh(r#"
        sysctl -qw net.ipv4.ip_forward=1
        sysctl -qw net.bridge.bridge-nf-call-iptables=1
        ip link add cbr0 type bridge && ip addr add 10.244.0.1/24 dev cbr0 && ip link set cbr0 up
        for i in 1 2; do
          ip netns add pod$i
          ip link add veth-pod$i type veth peer name eth0 netns pod$i
          ip link set veth-pod$i master cbr0 up
          ip link set veth-pod$i type bridge_slave hairpin on
          ip -n pod$i link set lo up
          ip -n pod$i addr add 10.244.0.1$i/24 dev eth0
          ip -n pod$i link set eth0 up
          ip -n pod$i route add default via 10.244.0.1
          mkdir -p /tmp/www/pod$i && echo pod$i > /tmp/www/pod$i/index.html
          ip netns exec pod$i busybox httpd -p 80 -h /tmp/www/pod$i
        done
    "#);
    let vip = ip("10.96.0.10");
    let mut plan = ProxyPlan {
        node: node(),
        services: vec![service(
            "web",
            vip,
            80,
            &["10.244.0.11:80", "10.244.0.12:80"],
        )],
    };
    let mut proxier = IpvsProxier::new(
        IpvsOptions {
            scheduler: Scheduler::Rr,
            strict_arp: true,
            iptables: Some("iptables-nft".into()),
            random_fully: true,
            ..IpvsOptions::default()
        },
        [IpFamily::V4],
    )
    .expect("IPVS proxier");
    let reports = proxier.sync(&plan, true).expect("first sync");
    eprintln!("first sync: {reports:?}");
    let sets = Command::new("ipset")
        .args(["list", "KUBE-CLUSTER-IP"])
        .output()
        .expect("ipset");
    let sets = String::from_utf8_lossy(&sets.stdout);
    assert!(sets.contains("10.96.0.10,tcp:80"), "{sets}");
    let vip_port = SocketAddr::new(vip, 80);
    let seq: Vec<String> = (0..4).map(|_| get(vip_port)).collect();
    eprintln!("rr through {vip_port}: {seq:?}");
    assert!(
        seq == ["pod1", "pod2", "pod1", "pod2"] || seq == ["pod2", "pod1", "pod2", "pod1"],
        "{seq:?}"
    );

    // Hairpin: a pod reaching itself through the VIP needs the KUBE-LOOP-BACK masquerade.
    let mut hairpin = Vec::new();
    for _ in 0..4 {
        let out = Command::new("bash")
            .args([
                "-c",
                "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | ip netns exec pod1 busybox nc -w 5 10.96.0.10 80 | tail -n1",
            ])
            .output()
            .expect("nc");
        hairpin.push(String::from_utf8_lossy(&out.stdout).trim().to_string());
    }
    eprintln!("pod1 -> VIP: {hairpin:?}");
    assert!(
        hairpin.iter().any(|p| p == "pod1"),
        "hairpin to itself: {hairpin:?}"
    );
    assert!(hairpin.iter().any(|p| p == "pod2"), "{hairpin:?}");

    // Second sync of the same plan changes nothing.
    let again = proxier.sync(&plan, false).expect("idle sync");
    assert_eq!(
        (again[0].objects_written, again[0].objects_deleted),
        (0, 0),
        "{again:?}"
    );

    // pod2 leaves while a connection to it is open: weight 0, the connection survives,
    // new connections go to pod1.
    let mut held = None;
    for _ in 0..4 {
        let s = TcpStream::connect_timeout(&vip_port, Duration::from_secs(3)).expect("connect");
        let key = ServiceKey::Addr {
            protocol: IPPROTO_TCP,
            addr: vip,
            port: 80,
        };
        let mut sock = IpvsSocket::open().expect("socket");
        let on_pod2 = sock
            .destinations(&key)
            .expect("dests")
            .iter()
            .any(|d| d.addr == ip("10.244.0.12") && d.conns.active > 0);
        if on_pod2 {
            held = Some(s);
            break;
        }
    }
    let mut held = held.expect("a connection to pod2");
    plan.services[0]
        .cluster_endpoints
        .retain(|e| e.addr.port() == 80 && e.addr.ip() == ip("10.244.0.11"));
    proxier.sync(&plan, false).expect("sync without pod2");
    let listing = String::from_utf8_lossy(
        &Command::new("ipvsadm")
            .arg("-Ln")
            .output()
            .expect("ipvsadm")
            .stdout,
    )
    .into_owned();
    eprintln!("{listing}");
    assert!(
        listing.contains("10.244.0.12:80"),
        "pod2 kept while draining: {listing}"
    );
    let seq: Vec<String> = (0..3).map(|_| get(vip_port)).collect();
    assert_eq!(seq, ["pod1", "pod1", "pod1"]);
    held.write_all(b"GET / HTTP/1.0\r\n\r\n")
        .expect("held connection still writable");
    let mut body = String::new();
    held.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let _ = held.read_to_string(&mut body);
    assert!(
        body.contains("pod2"),
        "established connection to pod2 kept: {body:?}"
    );
    drop(held);

    // 1k services: full and idle sync times.
    // KPROXY_IPVS_SCALE=1000,10000 measures more sizes (10k takes minutes under TCG).
    let sizes: Vec<usize> = std::env::var("KPROXY_IPVS_SCALE")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1000]);
    for n in sizes.into_iter().filter(|n| *n <= 60_000) {
        let services: Vec<ServicePortPlan> = (0..n)
            .map(|i| {
                let addr = IpAddr::from([10, 100 + (i >> 16) as u8, (i >> 8) as u8, i as u8]);
                service(
                    &format!("s{i}"),
                    addr,
                    80,
                    &["10.244.0.11:80", "10.244.0.12:80"],
                )
            })
            .collect();
        let big = ProxyPlan {
            node: node(),
            services,
        };
        let t = Instant::now();
        let r = proxier.sync(&big, true).expect("big sync");
        let full = t.elapsed();
        let t = Instant::now();
        proxier.sync(&big, false).expect("idle big sync");
        let idle = t.elapsed();
        let t = Instant::now();
        proxier.sync(&big, true).expect("full resync");
        eprintln!(
            "IPVS-SYNC-TIME: {n} services x 2 real servers: first sync {full:?} ({} objects), \
             incremental no-op {idle:?}, full re-read no-op {:?}",
            r[0].objects_written,
            t.elapsed()
        );
    }

    let deleted = proxier.cleanup(Some(&plan)).expect("cleanup");
    assert!(deleted >= 1);
    let sets = Command::new("ipset")
        .args(["list", "-n"])
        .output()
        .expect("ipset");
    assert!(
        !String::from_utf8_lossy(&sets.stdout).contains("KUBE-"),
        "sets destroyed"
    );
    assert!(
        IpvsSocket::open()
            .expect("socket")
            .services()
            .expect("dump")
            .is_empty()
    );
    assert!(
        !Command::new("ip")
            .args(["link", "show", "kube-ipvs0"])
            .output()
            .expect("ip")
            .status
            .success()
    );
}

/// Pods `{prefix}1`, `{prefix}2` (10.{net}.0.11, .12) serving their name over HTTP on a
/// bridge `br-{prefix}` (10.{net}.0.1/24).
fn setup_pods(prefix: &str, net: u8) {
    sh(&format!(
        r#"
        sysctl -qw net.ipv4.ip_forward=1
        ip link add br-{prefix} type bridge && ip addr add 10.{net}.0.1/24 dev br-{prefix}
        ip link set br-{prefix} up
        for i in 1 2; do
          ip netns add {prefix}$i
          ip link add v-{prefix}$i type veth peer name eth0 netns {prefix}$i
          ip link set v-{prefix}$i master br-{prefix} up
          ip -n {prefix}$i link set lo up
          ip -n {prefix}$i addr add 10.{net}.0.1$i/24 dev eth0
          ip -n {prefix}$i link set eth0 up
          ip -n {prefix}$i route add default via 10.{net}.0.1
          mkdir -p /tmp/www/{prefix}$i && echo {prefix}$i > /tmp/www/{prefix}$i/index.html
          ip netns exec {prefix}$i busybox httpd -p 80 -h /tmp/www/{prefix}$i
        done
    "#
    ));
}

#[test]
fn schedulers_sh_and_mh_stick_to_one_backend() {
    require_ipvs("schedulers_sh_and_mh_stick_to_one_backend");
    setup_pods("q", 245);
    let vip = ip("10.96.1.10");
    let plan = ProxyPlan {
        node: node(),
        services: vec![service(
            "sticky",
            vip,
            80,
            &["10.245.0.11:80", "10.245.0.12:80"],
        )],
    };
    for scheduler in [Scheduler::Sh, Scheduler::Mh, Scheduler::Rr] {
        let mut proxier = IpvsProxier::new(
            IpvsOptions {
                scheduler,
                ..IpvsOptions::default()
            },
            [IpFamily::V4],
        )
        .expect("IPVS proxier");
        proxier.sync(&plan, true).expect("sync");
        let seq: Vec<String> = (0..6).map(|_| get(SocketAddr::new(vip, 80))).collect();
        eprintln!("{scheduler} through {vip}: {seq:?}");
        assert!(seq.iter().all(|p| p == "q1" || p == "q2"), "{seq:?}");
        let distinct: std::collections::BTreeSet<&String> = seq.iter().collect();
        match scheduler {
            Scheduler::Rr => assert_eq!(distinct.len(), 2, "rr alternates: {seq:?}"),
            _ => assert_eq!(distinct.len(), 1, "{scheduler} sticks: {seq:?}"),
        }
        proxier.cleanup(Some(&plan)).expect("cleanup");
    }
}

/// How many of `n` HTTP requests to `addr` each pod answered.
fn spread(addr: SocketAddr, n: usize) -> std::collections::BTreeMap<String, usize> {
    let mut hits = std::collections::BTreeMap::new();
    for _ in 0..n {
        *hits.entry(get(addr)).or_insert(0) += 1;
    }
    hits
}

/// `wrr` follows the real servers' weights. kproxy programs weight 1 per endpoint (an
/// EndpointSlice carries no weights; upstream does the same), so wrr alternates evenly;
/// weights 3:1 set on the real servers are followed exactly over two cycles; and the next
/// full sync puts kproxy's weights back, because kproxy owns the servers it programs.
#[test]
fn wrr_follows_weights_and_full_sync_restores_them() {
    require_ipvs("wrr_follows_weights_and_full_sync_restores_them");
    setup_pods("w", 246);
    let vip = ip("10.96.2.10");
    let addr = SocketAddr::new(vip, 80);
    let plan = ProxyPlan {
        node: node(),
        services: vec![service(
            "weighted",
            vip,
            80,
            &["10.246.0.11:80", "10.246.0.12:80"],
        )],
    };
    let mut proxier = IpvsProxier::new(
        IpvsOptions {
            scheduler: Scheduler::Wrr,
            ..IpvsOptions::default()
        },
        [IpFamily::V4],
    )
    .expect("IPVS proxier");
    proxier.sync(&plan, true).expect("sync");
    let even = std::collections::BTreeMap::from([("w1".to_string(), 4), ("w2".to_string(), 4)]);
    assert_eq!(spread(addr, 8), even, "equal weights");

    let key = ServiceKey::Addr {
        protocol: IPPROTO_TCP,
        addr: vip,
        port: 80,
    };
    let mut sock = IpvsSocket::open().expect("IPVS socket");
    for dest in sock.destinations(&key).expect("GET_DEST") {
        let weight = if dest.addr == ip("10.246.0.11") { 3 } else { 1 };
        sock.set_dest(&key, &Destination { weight, ..dest })
            .expect("SET_DEST");
    }
    let weighted = std::collections::BTreeMap::from([("w1".to_string(), 6), ("w2".to_string(), 2)]);
    assert_eq!(spread(addr, 8), weighted, "weights 3:1");

    proxier.sync(&plan, true).expect("full sync");
    let weights: Vec<u32> = sock
        .destinations(&key)
        .expect("GET_DEST")
        .iter()
        .map(|d| d.weight)
        .collect();
    assert_eq!(weights, [1, 1], "full sync restores kproxy's weights");
    assert_eq!(spread(addr, 8), even, "even again");
    proxier.cleanup(Some(&plan)).expect("cleanup");
}

/// Dual stack with every kind of set in use: the IPv6 sets get upstream's `KUBE-6-` names
/// within the kernel's 31 characters, and a periodic full sync rebuilds each set by swapping
/// in a filled copy (sets stay referenced by the iptables rules; contents unchanged; no
/// scratch set left).
#[test]
fn dual_stack_sets_survive_full_resync() {
    require_ipvs("dual_stack_sets_survive_full_resync");
    let mut node = node();
    node.ipv6 = Some(FamilyContext {
        service_cidrs: Vec::new(),
        node_ips: vec![ip("fd00::1")],
        nodeport_addresses: NodePortAddresses::Only(vec![ip("fd00::1")]),
        local_detector: LocalTrafficDetector::ClusterCidr("fd00:244::/64".parse().expect("cidr")),
    });
    let mut v4 = service("lb", ip("10.96.3.10"), 443, &["10.244.3.11:8443"]);
    v4.load_balancer_ips = vec![ip("203.0.113.9")];
    v4.load_balancer_source_ranges = vec!["10.0.0.0/24".parse().expect("cidr")];
    v4.node_port = Some(30443);
    v4.health_check_node_port = Some(32443);
    v4.external_policy_local = true;
    v4.local_endpoints = v4.cluster_endpoints.clone();
    let mut v6 = service("lb", ip("fd00:96::10"), 443, &["[fd00:244::11]:8443"]);
    v6.family = IpFamily::V6;
    v6.load_balancer_ips = vec![ip("2001:db8::9")];
    v6.load_balancer_source_ranges = vec!["fd00::/64".parse().expect("cidr")];
    v6.node_port = Some(30443);
    v6.local_endpoints = v6.cluster_endpoints.clone();
    let plan = ProxyPlan {
        node,
        services: vec![v4, v6],
    };
    let iptables = if Command::new("iptables-nft").arg("-V").output().is_ok() {
        "iptables-nft"
    } else {
        "iptables-legacy"
    };
    let mut proxier = IpvsProxier::new(
        IpvsOptions {
            iptables: Some(iptables.into()),
            ..IpvsOptions::default()
        },
        [IpFamily::V4, IpFamily::V6],
    )
    .expect("IPVS proxier");
    proxier.sync(&plan, true).expect("first sync");
    let save = || {
        let out = Command::new("ipset")
            .arg("save")
            .output()
            .expect("ipset save");
        assert!(out.status.success());
        let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("add "))
            .map(str::to_string)
            .collect();
        lines.sort();
        lines
    };
    let before = save();
    for line in [
        "add KUBE-6-LOAD-BALANCER-SOURCE-CID 2001:db8::9,tcp:443,fd00::/64",
        "add KUBE-LOAD-BALANCER-SOURCE-CIDR 203.0.113.9,tcp:443,10.0.0.0/24",
        "add KUBE-LOAD-BALANCER-SOURCE-IP 203.0.113.9,tcp:443,203.0.113.9",
        "add KUBE-HEALTH-CHECK-NODE-PORT 32443",
        "add KUBE-6-IPVS-IPS 2001:db8::9",
    ] {
        assert!(before.iter().any(|l| l == line), "{line} in {before:#?}");
    }
    proxier.sync(&plan, true).expect("full resync");
    assert_eq!(save(), before, "a full resync keeps every entry");
    let names = Command::new("ipset")
        .args(["list", "-n"])
        .output()
        .expect("ipset list");
    assert!(!String::from_utf8_lossy(&names.stdout).contains("KPROXY-SWAP"));
    let rules = Command::new(format!("{iptables}-save"))
        .output()
        .expect("iptables-save");
    assert!(
        String::from_utf8_lossy(&rules.stdout)
            .contains("--match-set KUBE-LOAD-BALANCER-FW dst,dst -j KUBE-SOURCE-RANGES-FIREWALL"),
        "rules still reference the swapped sets"
    );
    proxier.cleanup(Some(&plan)).expect("cleanup");
}

/// A foreign virtual service (`addr:port`, TCP, one real server), created over netlink.
fn foreign_service(sock: &mut IpvsSocket, addr: &str, port: u16) -> ServiceKey {
    let key = ServiceKey::Addr {
        protocol: IPPROTO_TCP,
        addr: ip(addr),
        port,
    };
    sock.new_service(&Service::new(key, "wlc"))
        .expect("NEW_SERVICE (foreign)");
    sock.new_dest(&key, &Destination::masq(ip("192.0.2.50"), 8080))
        .expect("NEW_DEST (foreign)");
    key
}

/// The kernel's services, as keys.
fn service_keys(sock: &mut IpvsSocket) -> Vec<ServiceKey> {
    sock.services()
        .expect("GET_SERVICE dump")
        .into_iter()
        .map(|s| s.key)
        .collect()
}

/// A plan with one NodePort service (30080) on the node's NodePort addresses 10.0.0.1 and
/// 10.0.1.1.
fn nodeport_plan() -> ProxyPlan {
    let mut node = node();
    if let Some(v4) = node.ipv4.as_mut() {
        v4.node_ips = vec![ip("10.0.0.1"), ip("10.0.1.1")];
        v4.nodeport_addresses = NodePortAddresses::Only(v4.node_ips.clone());
    }
    let mut svc = service("np", ip("10.96.9.10"), 80, &["10.244.9.11:80"]);
    svc.node_port = Some(30080);
    ProxyPlan {
        node,
        services: vec![svc],
    }
}

/// `--ipvs-exclude-cidrs`: a foreign virtual service on a NodePort address inside an
/// excluded CIDR survives full and partial syncs and cleanup with its real server
/// untouched, while one on a NodePort address outside it is deleted; without the
/// exclusion, a sync deletes it too.
#[test]
fn exclude_cidrs_protect_foreign_services() {
    require_ipvs("exclude_cidrs_protect_foreign_services");
    let mut sock = IpvsSocket::open().expect("socket");
    sock.flush().expect("flush");
    let plan = nodeport_plan();
    let kept = foreign_service(&mut sock, "10.0.0.1", 31999);
    let removed = foreign_service(&mut sock, "10.0.1.1", 31999);
    let kept_before = sock.destinations(&kept).expect("dests");
    let ours = ServiceKey::Addr {
        protocol: IPPROTO_TCP,
        addr: ip("10.0.0.1"),
        port: 30080,
    };
    let mut proxier = IpvsProxier::new(
        IpvsOptions {
            exclude_cidrs: vec!["10.0.0.0/24".parse().expect("cidr")],
            ..IpvsOptions::default()
        },
        [IpFamily::V4],
    )
    .expect("IPVS proxier");
    proxier.sync(&plan, true).expect("full sync");
    let keys = service_keys(&mut sock);
    assert!(
        keys.contains(&kept),
        "excluded foreign service kept: {keys:?}"
    );
    assert!(
        !keys.contains(&removed),
        "foreign service outside the exclusion deleted: {keys:?}"
    );
    assert!(
        keys.contains(&ours),
        "kproxy's NodePort inside the exclusion programmed: {keys:?}"
    );
    proxier.sync(&plan, false).expect("partial sync");
    proxier.sync(&plan, true).expect("second full sync");
    assert!(service_keys(&mut sock).contains(&kept));
    let services = sock.services().expect("dump");
    let svc = services
        .iter()
        .find(|s| s.key == kept)
        .expect("kept service");
    assert_eq!(svc.scheduler, "wlc", "excluded service not modified");
    assert_eq!(sock.destinations(&kept).expect("dests"), kept_before);

    let deleted = proxier.cleanup(Some(&plan)).expect("cleanup");
    let keys = service_keys(&mut sock);
    assert_eq!(
        keys,
        vec![kept],
        "cleanup deletes kproxy's ({deleted}), keeps the excluded one"
    );

    // Without the exclusion the same foreign service is kproxy's to delete.
    let mut proxier = IpvsProxier::new(IpvsOptions::default(), [IpFamily::V4]).expect("proxier");
    proxier.sync(&plan, true).expect("full sync");
    let keys = service_keys(&mut sock);
    assert!(
        !keys.contains(&kept),
        "deleted without --ipvs-exclude-cidrs: {keys:?}"
    );
    proxier.cleanup(Some(&plan)).expect("cleanup");
    sock.flush().expect("flush");
}

/// `IpvsProxier::new` sets the non-zero `--ipvs-*-timeout` values and leaves the others.
#[test]
fn proxier_sets_ipvs_timeouts_at_start() {
    require_ipvs("proxier_sets_ipvs_timeouts_at_start");
    let mut sock = IpvsSocket::open().expect("socket");
    let before = sock.timeouts().expect("GET_CONFIG");
    let wanted = Timeouts {
        tcp: 0,
        tcp_fin: 77,
        udp: 33,
    };
    let proxier = IpvsProxier::new(
        IpvsOptions {
            timeouts: wanted,
            ..IpvsOptions::default()
        },
        [IpFamily::V4],
    )
    .expect("IPVS proxier");
    drop(proxier);
    let after = sock.timeouts().expect("GET_CONFIG");
    assert_eq!(
        after,
        Timeouts {
            tcp: before.tcp,
            ..wanted
        }
    );
    sock.set_timeouts(&before).expect("restore");
}

/// A load-balancer IP whose source ranges exclude the node is not reachable from the node
/// itself (IPVS schedules the node's own connections in OUTPUT, so only upstream's
/// `KUBE-IPVS-OUT-FILTER` stops them), and is once the ranges include the node; the
/// ClusterIP works throughout.
#[test]
fn load_balancer_source_ranges_apply_to_the_node_itself() {
    require_ipvs("load_balancer_source_ranges_apply_to_the_node_itself");
    setup_pods("l", 247);
    let mut svc = service(
        "guarded",
        ip("10.96.5.10"),
        80,
        &["10.247.0.11:80", "10.247.0.12:80"],
    );
    svc.load_balancer_ips = vec![ip("203.0.113.45")];
    svc.load_balancer_source_ranges = vec!["198.51.100.0/24".parse().expect("cidr")];
    let mut plan = ProxyPlan {
        node: node(),
        services: vec![svc],
    };
    let mut proxier = IpvsProxier::new(
        IpvsOptions {
            iptables: Some("iptables-nft".into()),
            ..IpvsOptions::default()
        },
        [IpFamily::V4],
    )
    .expect("IPVS proxier");
    proxier.sync(&plan, true).expect("sync");
    let lb = SocketAddr::new(ip("203.0.113.45"), 80);
    let reaches =
        |addr: SocketAddr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok();
    assert!(reaches(SocketAddr::new(ip("10.96.5.10"), 80)), "ClusterIP");
    assert!(!reaches(lb), "the node is outside the source ranges");
    plan.services[0].load_balancer_source_ranges = vec!["10.0.0.0/24".parse().expect("cidr")];
    proxier.sync(&plan, false).expect("partial sync");
    assert!(reaches(lb), "the node is inside the source ranges");
    proxier.cleanup(Some(&plan)).expect("cleanup");
}
