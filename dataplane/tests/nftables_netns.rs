//! nftables mode with real packets in network namespaces (root only).
//!
//! Each test builds its own namespaces with `ip netns` and veths: a node (where the
//! `NftablesProxier` runs, in-process, on a thread that `setns`'d into it), a backend pod
//! with a TCP echo server, and a client routed through the node. The namespaces are deleted
//! on drop, so tests may run in parallel.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use kproxy_dataplane::fixtures::{
    detecting_pods, endpoint, service, single_family_node, with_endpoints,
};
use kproxy_dataplane::nftables::proxier::NftablesProxier;
use kproxy_dataplane::plan::*;
use kproxy_dataplane::report::SyncReport;

const NODE_IP: &str = "10.77.2.1";
const BACKEND_IP: &str = "10.77.1.2";
const WEB_IP: &str = "10.96.0.10";
const EMPTY_IP: &str = "10.96.0.11";
const NODE_PORT: u16 = 30080;

mod support;

use support::{block_on, in_ns, require_root, sh};

/// A node, a backend and a client namespace; deleted on drop.
struct Cluster {
    node: String,
    backend: String,
    client: String,
    stop: Arc<AtomicBool>,
}

impl Cluster {
    fn new() -> Cluster {
        static N: AtomicUsize = AtomicUsize::new(0);
        let id = format!(
            "{}x{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let c = Cluster {
            node: format!("kpn-{id}-n"),
            backend: format!("kpn-{id}-b"),
            client: format!("kpn-{id}-c"),
            stop: Arc::new(AtomicBool::new(false)),
        };
        for ns in [&c.node, &c.backend, &c.client] {
            sh(&["ip", "netns", "add", ns]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        c.link(
            &c.backend,
            &format!("vb{id}"),
            "10.77.1.1/24",
            "10.77.1.2/24",
        );
        // A second backend address on the same pod: two endpoints, one server.
        let backend_dev = format!("vb{id}p");
        sh(&[
            "ip",
            "-n",
            &c.backend,
            "addr",
            "add",
            "10.77.1.3/24",
            "dev",
            &backend_dev,
        ]);
        c.link(
            &c.client,
            &format!("vc{id}"),
            "10.77.2.1/24",
            "10.77.2.2/24",
        );
        sh(&[
            "ip",
            "netns",
            "exec",
            &c.node,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
        // Like a real node, route everything somewhere: a service IP without endpoints must
        // be refused by kproxy's REJECT, not by "network unreachable".
        sh(&[
            "ip",
            "-n",
            &c.node,
            "route",
            "add",
            "default",
            "via",
            "10.77.1.2",
        ]);
        c.start_echo();
        c
    }

    /// A veth from the node (`node_addr`) to `peer_ns` (`peer_addr`, default route back).
    fn link(&self, peer_ns: &str, name: &str, node_addr: &str, peer_addr: &str) {
        let peer = format!("{name}p");
        sh(&[
            "ip", "-n", &self.node, "link", "add", name, "type", "veth", "peer", "name", &peer,
        ]);
        sh(&[
            "ip", "-n", &self.node, "link", "set", &peer, "netns", peer_ns,
        ]);
        sh(&[
            "ip", "-n", &self.node, "addr", "add", node_addr, "dev", name,
        ]);
        sh(&["ip", "-n", &self.node, "link", "set", name, "up"]);
        sh(&["ip", "-n", peer_ns, "addr", "add", peer_addr, "dev", &peer]);
        sh(&["ip", "-n", peer_ns, "link", "set", &peer, "up"]);
        let gw = node_addr.split('/').next().expect("address");
        sh(&["ip", "-n", peer_ns, "route", "add", "default", "via", gw]);
    }

    /// A TCP server on the backend's port 8080 that answers `<peer> <local address>` and
    /// closes.
    fn start_echo(&self) {
        let stop = self.stop.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let path = format!("/var/run/netns/{}", self.backend);
        std::thread::spawn(move || {
            let fd = File::open(&path).expect("open netns");
            nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let listener = TcpListener::bind("0.0.0.0:8080").expect("bind echo");
            listener.set_nonblocking(true).expect("nonblocking");
            let _ = ready_tx.send(());
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, peer)) => {
                        let local = conn.local_addr().map(|a| a.ip().to_string());
                        let local = local.unwrap_or_default();
                        let _ = writeln!(conn, "{} {local}", peer.ip());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        ready_rx.recv().expect("echo server ready");
    }

    /// Connects from the client namespace; `Ok(peer the backend saw)` or the connect
    /// error's kind.
    fn ask(&self, ip: &str, port: u16) -> Result<String, std::io::ErrorKind> {
        self.ask_from(&self.client, ip, port)
            .map(|r| r.split(' ').next().unwrap_or_default().to_owned())
    }

    /// Connects from the client namespace; the backend address that answered.
    fn backend_reached(&self, ip: &str, port: u16) -> String {
        let reply = self.ask_from(&self.client, ip, port).expect("reply");
        reply.split(' ').nth(1).unwrap_or_default().to_owned()
    }

    /// Connects from namespace `ns`.
    fn ask_from(&self, ns: &str, ip: &str, port: u16) -> Result<String, std::io::ErrorKind> {
        let addr = SocketAddr::new(ip.parse().expect("ip"), port);
        in_ns(ns, move || {
            let mut conn =
                TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.kind())?;
            conn.set_read_timeout(Some(Duration::from_secs(2)))
                .map_err(|e| e.kind())?;
            let mut reply = String::new();
            conn.read_to_string(&mut reply).map_err(|e| e.kind())?;
            Ok(reply.trim().to_owned())
        })
    }

    fn nft(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.node, "nft"];
        full.extend_from_slice(args);
        sh(&full)
    }

    fn new_proxier(&self, families: Vec<IpFamily>) -> NftablesProxier {
        in_ns(&self.node, move || {
            block_on(NftablesProxier::new(families)).expect("nftables works")
        })
    }

    fn sync(
        &self,
        proxier: NftablesProxier,
        plan: &ProxyPlan,
        full: bool,
    ) -> (NftablesProxier, Vec<SyncReport>) {
        let plan = plan.clone();
        in_ns(&self.node, move || {
            block_on(async move {
                let mut p = proxier;
                let reports = p.sync(&plan, full).await.expect("sync");
                (p, reports)
            })
        })
    }

    fn cleanup(&self, proxier: NftablesProxier) -> usize {
        in_ns(&self.node, move || {
            block_on(async move {
                let mut p = proxier;
                p.cleanup().await.expect("cleanup")
            })
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for ns in [&self.node, &self.backend, &self.client] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

fn ep(addr: &str) -> Endpoint {
    endpoint(addr, true)
}

/// `default/NAME` on `ip:80`.
fn svc(name: &str, ip: &str, node_port: Option<u16>, endpoints: Vec<Endpoint>) -> ServicePortPlan {
    let mut svc = service("default", name, "", ip, 80);
    svc.node_port = node_port;
    with_endpoints(svc, endpoints)
}

/// Node `node` at [`NODE_IP`], pods in 10.77.0.0/16.
fn node_context() -> NodeContext {
    detecting_pods(single_family_node("node", NODE_IP), "10.77.0.0/16")
}

fn web_plan(web_endpoints: Vec<Endpoint>) -> ProxyPlan {
    ProxyPlan {
        node: node_context(),
        services: vec![
            svc("empty", EMPTY_IP, None, vec![]),
            svc("web", WEB_IP, Some(NODE_PORT), web_endpoints),
        ],
    }
}

fn backend() -> Vec<Endpoint> {
    vec![ep(&format!("{BACKEND_IP}:8080"))]
}

#[test]
fn cluster_ip_and_nodeport_reach_the_backend_and_no_endpoints_is_refused() {
    require_root();
    let cluster = Cluster::new();
    let proxier = cluster.new_proxier(vec![IpFamily::V4]);
    let (proxier, reports) = cluster.sync(proxier, &web_plan(backend()), true);
    assert!(reports[0].full && reports[0].mode == "nftables");

    // Client → ClusterIP: DNATed on the node; the client is in the pod CIDR: not masqueraded.
    assert_eq!(cluster.ask(WEB_IP, 80), Ok("10.77.2.2".into()));
    // Client → NodePort: eTP Cluster masquerades to the node's address towards the backend.
    assert_eq!(cluster.ask(NODE_IP, NODE_PORT), Ok("10.77.1.1".into()));
    // Hairpin: the backend reaching itself through its service is masqueraded, else its
    // reply would not match the connection.
    assert_eq!(
        cluster.ask_from(&cluster.backend, WEB_IP, 80),
        Ok("10.77.1.1 10.77.1.2".into())
    );
    // No endpoints: REJECT.
    assert_eq!(
        cluster.ask(EMPTY_IP, 80),
        Err(std::io::ErrorKind::ConnectionRefused)
    );

    // Partial sync: the backend leaves; the service is refused, by elements only.
    let (proxier, reports) = cluster.sync(proxier, &web_plan(vec![]), false);
    assert!(!reports[0].full, "{reports:?}");
    assert_eq!(
        cluster.ask(WEB_IP, 80),
        Err(std::io::ErrorKind::ConnectionRefused)
    );
    assert_eq!(
        cluster.ask(NODE_IP, NODE_PORT),
        Err(std::io::ErrorKind::ConnectionRefused)
    );

    // And comes back.
    let (proxier, _) = cluster.sync(proxier, &web_plan(backend()), false);
    assert_eq!(cluster.ask(WEB_IP, 80), Ok("10.77.2.2".into()));
    assert_eq!(cluster.cleanup(proxier), 1);
}

/// `nft list tables` of the node, one table per line.
fn tables(cluster: &Cluster) -> Vec<String> {
    cluster
        .nft(&["list", "tables"])
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn foreign_table_is_untouched_by_syncs_and_cleanup() {
    require_root();
    let cluster = Cluster::new();
    let foreign = "table inet filter {\n\tchain input {\n\t\ttype filter hook input priority 0;\n\t\ttcp dport 22 accept\n\t}\n}\n";
    let path = std::env::temp_dir().join(format!("{}-foreign.nft", cluster.node));
    std::fs::write(&path, foreign).expect("write foreign table");
    cluster.nft(&["-f", &path.display().to_string()]);
    std::fs::remove_file(&path).ok();
    let before = cluster.nft(&["list", "table", "inet", "filter"]);
    assert!(before.contains("tcp dport 22 accept"), "{before}");

    let proxier = cluster.new_proxier(vec![IpFamily::V4]);
    let (proxier, _) = cluster.sync(proxier, &web_plan(backend()), true);
    assert_eq!(
        cluster.nft(&["list", "table", "inet", "filter"]),
        before,
        "after full sync"
    );
    assert_eq!(cluster.ask(WEB_IP, 80), Ok("10.77.2.2".into()));

    let (proxier, reports) = cluster.sync(proxier, &web_plan(vec![]), false);
    assert!(!reports[0].full);
    assert_eq!(
        cluster.nft(&["list", "table", "inet", "filter"]),
        before,
        "after partial sync"
    );

    // A full sync over a trusted record rewrites in place.
    let (proxier, reports) = cluster.sync(proxier, &web_plan(backend()), true);
    assert!(reports[0].full);
    assert_eq!(
        cluster.nft(&["list", "table", "inet", "filter"]),
        before,
        "after full resync"
    );
    assert_eq!(cluster.ask(WEB_IP, 80), Ok("10.77.2.2".into()));

    assert_eq!(cluster.cleanup(proxier), 1);
    assert_eq!(
        cluster.nft(&["list", "table", "inet", "filter"]),
        before,
        "after cleanup"
    );
    let left = tables(&cluster);
    assert_eq!(
        left,
        ["table inet filter"],
        "only the foreign table is left"
    );
}

/// Every feature at once, in both families: the kernel accepts what the renderer writes,
/// for full, partial and in-place full syncs.
#[test]
fn rich_dual_stack_plan_applies() {
    require_root();
    let cluster = Cluster::new();
    let mut node = node_context();
    node.ipv6 = Some(FamilyContext {
        service_cidrs: Vec::new(),
        node_ips: vec!["fd00:77::1".parse().expect("ip")],
        nodeport_addresses: NodePortAddresses::Only(vec!["fd00:77::1".parse().expect("ip")]),
        local_detector: LocalTrafficDetector::None,
    });
    let mut lb = svc("lb", "10.96.0.20", Some(30443), backend());
    lb.load_balancer_ips = vec!["203.0.113.7".parse().expect("ip")];
    lb.load_balancer_source_ranges = vec![
        "203.0.113.0/25".parse().expect("cidr"),
        "203.0.113.64/26".parse().expect("cidr"),
        "10.77.2.0/24".parse().expect("cidr"),
    ];
    lb.external_policy_local = true;
    lb.local_endpoints = lb.cluster_endpoints.clone();
    lb.session_affinity_timeout = Some(600);
    let mut ext = svc("dns", "10.96.0.21", None, backend());
    ext.name.protocol = Protocol::Udp;
    ext.external_ips = vec!["192.0.2.4".parse().expect("ip")];
    let mut itp = svc("itp", "10.96.0.22", None, vec![ep("10.77.9.9:80")]);
    itp.internal_policy_local = true;
    let v6 = svc(
        "v6",
        "fd00:96::10",
        Some(30600),
        vec![ep("[fd00:77::2]:8080"), ep("[fd00:77::3]:8080")],
    );
    let mut plan = ProxyPlan {
        node,
        services: vec![
            lb,
            ext,
            itp,
            v6,
            svc("web", WEB_IP, Some(NODE_PORT), backend()),
        ],
    };

    let proxier = cluster.new_proxier(vec![IpFamily::V4, IpFamily::V6]);
    let (proxier, reports) = cluster.sync(proxier, &plan, true);
    assert_eq!(reports.len(), 2);
    let listed = cluster.nft(&["list", "table", "ip", "kproxy"]);
    assert!(
        listed.contains("203.0.113.7 . tcp . 80 . 203.0.113.0/25"),
        "{listed}"
    );
    assert!(listed.contains("flags dynamic,timeout"), "{listed}");
    assert!(
        cluster
            .nft(&["list", "table", "ip6", "kproxy"])
            .contains("fd00:96::10 . tcp . 80")
    );
    assert_eq!(cluster.ask(WEB_IP, 80), Ok("10.77.2.2".into()));

    // Partial: the v6 service loses an endpoint, the LB service gains one.
    plan.services[3].cluster_endpoints.pop();
    plan.services[0]
        .cluster_endpoints
        .push(ep("10.77.9.10:8080"));
    let (proxier, reports) = cluster.sync(proxier, &plan, false);
    assert!(reports.iter().all(|r| !r.full), "{reports:?}");
    let (proxier, reports) = cluster.sync(proxier, &plan, true);
    assert!(reports.iter().all(|r| r.full));
    assert_eq!(cluster.ask(WEB_IP, 80), Ok("10.77.2.2".into()));
    assert_eq!(cluster.cleanup(proxier), 2);
    assert!(tables(&cluster).is_empty());
}

#[test]
fn load_balancer_source_ranges_and_session_affinity() {
    require_root();
    let cluster = Cluster::new();
    let two = || vec![ep("10.77.1.2:8080"), ep("10.77.1.3:8080")];
    let lb_ip = "203.0.113.7";
    let plan = |ranges: &[&str], affinity: Option<u32>| {
        let mut lb = svc("lb", "10.96.0.20", None, two());
        lb.load_balancer_ips = vec![lb_ip.parse().expect("ip")];
        lb.load_balancer_source_ranges = ranges.iter().map(|r| r.parse().expect("cidr")).collect();
        let mut sticky = svc("sticky", "10.96.0.30", None, two());
        sticky.session_affinity_timeout = affinity;
        ProxyPlan {
            node: node_context(),
            services: vec![lb, sticky],
        }
    };
    // The client routes the LB IP through the node (default route).
    let proxier = cluster.new_proxier(vec![IpFamily::V4]);
    let (proxier, _) = cluster.sync(proxier, &plan(&["10.77.2.0/24"], Some(60)), true);
    assert!(cluster.ask(lb_ip, 80).is_ok(), "allowed source");

    // Only another range allowed: the client's new connections are dropped (time out).
    let (proxier, _) = cluster.sync(proxier, &plan(&["192.0.2.0/24"], Some(60)), false);
    assert_eq!(cluster.ask(lb_ip, 80), Err(std::io::ErrorKind::TimedOut));

    // Session affinity: every connection of the client reaches the same endpoint...
    let reached: std::collections::BTreeSet<String> = (0..12)
        .map(|_| cluster.backend_reached("10.96.0.30", 80))
        .collect();
    assert_eq!(reached.len(), 1, "{reached:?}");
    // ...and without it, both endpoints get traffic.
    let (proxier, _) = cluster.sync(proxier, &plan(&["192.0.2.0/24"], None), false);
    let reached: std::collections::BTreeSet<String> = (0..40)
        .map(|_| cluster.backend_reached("10.96.0.30", 80))
        .collect();
    assert_eq!(reached.len(), 2, "{reached:?}");
    assert_eq!(cluster.cleanup(proxier), 1);
}
