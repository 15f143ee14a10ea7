//! The real-kernel harness shared by the dataplane's network-namespace tests (root only):
//! commands, namespaces deleted on drop, threads that enter a namespace, a runtime to
//! drive a proxier in-process, and the synthetic N-service plan of the sync benchmark. Each test target includes it with `mod support;`, and not
//! every target uses every item.
#![allow(dead_code)]

use std::fs::File;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use nix::sched::{CloneFlags, setns};

/// These tests program the kernel: without root they fail with this message instead of
/// passing without testing anything.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "network-namespace tests need root: run `sudo cargo test --workspace` (or scripts/test.sh)"
    );
}

/// Runs `args`; its stdout, or `Err(stderr)` if it failed.
pub fn try_sh(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Runs `args` and returns its stdout; panics with its stderr if it failed.
pub fn sh(args: &[&str]) -> String {
    try_sh(args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// Drives `f` on a fresh current-thread runtime (the proxiers are async).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// Moves the calling thread into namespace `name` (only ever call it on a thread of its
/// own: `setns` changes just that thread).
pub fn enter(name: &str) {
    let file = File::open(format!("/run/netns/{name}")).expect("open netns");
    setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
}

/// Spawns `f` on a new thread that entered namespace `name` (a socket or proxier created
/// there keeps that namespace).
pub fn spawn_in<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let name = name.to_owned();
    std::thread::spawn(move || {
        enter(&name);
        f()
    })
}

/// Runs `f` on a new thread inside namespace `name` and waits for it.
pub fn in_ns<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    spawn_in(name, f).join().expect("namespace thread")
}

/// A named network namespace with `lo` up, deleted on drop. Named `kp<pid>x<n>-<tag>`, so
/// `scripts/netns-clean.sh` recognises a leftover of a killed test.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace.
    pub fn new(tag: &str) -> Netns {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "kp{}x{}-{tag}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `f` on a new thread inside the namespace and waits for it.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        in_ns(&self.name, f)
    }

    /// Spawns `f` on a new thread inside the namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        spawn_in(&self.name, f)
    }

    /// Runs a command inside the namespace; its stdout (panics on failure).
    pub fn exec(&self, args: &[&str]) -> String {
        sh(&self.command(args))
    }

    /// Runs a command inside the namespace; its stdout or `Err(stderr)`.
    pub fn try_exec(&self, args: &[&str]) -> Result<String, String> {
        try_sh(&self.command(args))
    }

    fn command<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut full = vec!["ip", "netns", "exec", self.name.as_str()];
        full.extend_from_slice(args);
        full
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Three namespaces routed in a line:
///
/// ```text
/// client 10.244.1.2 ──c0|c1── 10.244.1.1  node  10.244.2.1 ──b1|b0── 10.244.2.2 backend
/// ```
///
/// The node forwards; client and backend route everything via the node.
pub struct Routed {
    /// The client.
    pub client: Netns,
    /// The router in the middle, where a proxy runs.
    pub node: Netns,
    /// The backend.
    pub backend: Netns,
}

impl Routed {
    /// Builds the three namespaces.
    pub fn new(tag: &str) -> Routed {
        let routed = Routed {
            client: Netns::new(&format!("{tag}-c")),
            node: Netns::new(&format!("{tag}-n")),
            backend: Netns::new(&format!("{tag}-b")),
        };
        let (c, n, b) = (
            routed.client.name(),
            routed.node.name(),
            routed.backend.name(),
        );
        sh(&[
            "ip", "link", "add", "c0", "netns", c, "type", "veth", "peer", "c1", "netns", n,
        ]);
        sh(&[
            "ip", "link", "add", "b0", "netns", b, "type", "veth", "peer", "b1", "netns", n,
        ]);
        for (ns, dev, addr) in [
            (c, "c0", "10.244.1.2/24"),
            (n, "c1", "10.244.1.1/24"),
            (b, "b0", "10.244.2.2/24"),
            (n, "b1", "10.244.2.1/24"),
        ] {
            sh(&["ip", "-n", ns, "addr", "add", addr, "dev", dev]);
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        sh(&[
            "ip",
            "-n",
            c,
            "route",
            "add",
            "default",
            "via",
            "10.244.1.1",
        ]);
        sh(&[
            "ip",
            "-n",
            b,
            "route",
            "add",
            "default",
            "via",
            "10.244.2.1",
        ]);
        routed
            .node
            .exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        routed
    }
}

/// The address `offset` after `base`.
fn v4_after(base: std::net::Ipv4Addr, offset: usize) -> std::net::IpAddr {
    std::net::IpAddr::V4(std::net::Ipv4Addr::from(u32::from(base) + offset as u32))
}

/// Endpoint `j` of synthetic service `service`; a new `generation` gives a fresh address.
pub fn synthetic_endpoint(
    service: usize,
    j: usize,
    per_service: usize,
    generation: usize,
) -> kproxy_dataplane::plan::Endpoint {
    let pod = v4_after(
        std::net::Ipv4Addr::new(10, 128, 0, 0),
        service * per_service + j + generation * 3_000_000,
    );
    kproxy_dataplane::plan::Endpoint {
        addr: std::net::SocketAddr::new(pod, 8080),
        is_local: false,
        ready: true,
        serving: true,
        terminating: false,
    }
}

/// `n` ClusterIP services (172.16.0.1, ...) × `per_service` endpoints; the first 2000 with
/// a NodePort.
pub fn synthetic_plan(n: usize, per_service: usize) -> kproxy_dataplane::plan::ProxyPlan {
    use kproxy_dataplane::plan::*;
    let services = (0..n)
        .map(|i| {
            let eps: Vec<Endpoint> = (0..per_service)
                .map(|j| synthetic_endpoint(i, j, per_service, 0))
                .collect();
            ServicePortPlan {
                name: ServicePortName {
                    namespace: format!("ns{}", i / 100),
                    name: format!("svc{i}"),
                    port: "http".into(),
                    protocol: Protocol::Tcp,
                },
                family: IpFamily::V4,
                cluster_ip: v4_after(std::net::Ipv4Addr::new(172, 16, 0, 0), i + 1),
                port: 80,
                node_port: (i < 2000).then(|| 30000 + i as u16),
                external_ips: vec![],
                load_balancer_ips: vec![],
                load_balancer_source_ranges: vec![],
                session_affinity_timeout: None,
                external_policy_local: false,
                internal_policy_local: false,
                health_check_node_port: None,
                has_any_endpoints: !eps.is_empty(),
                cluster_endpoints: eps,
                local_endpoints: vec![],
            }
        })
        .collect();
    ProxyPlan {
        node: NodeContext {
            node_name: "node-a".into(),
            ipv4: Some(FamilyContext {
                service_cidrs: Vec::new(),
                node_ips: vec!["192.168.0.10".parse().expect("ip")],
                nodeport_addresses: NodePortAddresses::All,
                local_detector: LocalTrafficDetector::ClusterCidr(
                    "10.128.0.0/9".parse().expect("cidr"),
                ),
            }),
            ipv6: None,
            masquerade_all: false,
            masquerade_mark: 0x4000,
            localhost_nodeports: false,
        },
        services,
    }
}
