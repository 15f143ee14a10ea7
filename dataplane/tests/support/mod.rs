//! The real-kernel harness shared by the dataplane's network-namespace tests (root only):
//! commands, namespaces deleted on drop, threads that enter a namespace, a runtime to
//! drive a proxier in-process, and the plan of the routed echo topology (other plans come
//! from `kproxy_dataplane::fixtures`). Each test target includes it with `mod support;`, and not
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

/// The service the [`Routed`] topology is made for: `default/echo` on 10.96.0.10, TCP 80
/// (NodePort 30080) and UDP 53 to the backend's echo servers (10.244.2.2:8080 and :5353),
/// and TCP 80 on 10.96.0.11 without endpoints; on node `node` (10.244.1.1, pods in
/// 10.244.0.0/16).
pub fn echo_plan() -> kproxy_dataplane::plan::ProxyPlan {
    use kproxy_dataplane::fixtures::*;
    use kproxy_dataplane::plan::Protocol;
    let echo = |protocol: Protocol, vip: &str, target: &str| {
        with_endpoints(
            service_at("default", "echo", protocol, vip),
            vec![endpoint(target, true)],
        )
    };
    let mut web = echo(Protocol::Tcp, "10.96.0.10:80", "10.244.2.2:8080");
    web.node_port = Some(30080);
    let mut empty = service_at("default", "echo", Protocol::Tcp, "10.96.0.11:80");
    empty.name.port = "empty".into();
    plan_on(
        detecting_pods(single_family_node("node", "10.244.1.1"), "10.244.0.0/16"),
        vec![
            web,
            echo(Protocol::Udp, "10.96.0.10:53", "10.244.2.2:5353"),
            empty,
        ],
    )
}
