//! A multi-node cluster on one machine, built over rtnetlink.
//!
//! ```text
//!                      external  eth0 192.168.50.2/24   (ip_forward=1; routes
//!                         │                              203.0.113.0/24 via a node,
//!                         │ vx                           198.18.0.0/24 is behind it)
//!   underlay ─────────── br0 ─────────────────────────────┐
//!             vn0 │                 vn1 │                 │ vn2 ...
//!            eth0 │ .10            eth0 │ .11             │ .12
//!   node-0 ───────┴───────┐  node-1 ────┴────────┐   node-2 ...
//!   cbr0 10.244.0.1/24    │  cbr0 10.244.1.1/24  │
//!     vp0 │      vp1 │    │    vp0 │    vp1 │    │
//!    eth0 │     eth0 │    │   eth0 │   eth0 │    │
//!   pod-0-0      pod-0-1  │  pod-1-0   pod-1-1   │
//!   10.244.0.10  .0.11    │  10.244.1.10 .1.11   │
//! ```
//!
//! - The underlay namespace is a plain L2 switch (`br0`); each node's uplink `eth0` is
//!   `192.168.50.(10+i)/24`, the external client's `eth0` is `192.168.50.2/24`.
//! - Node *i* has a bridge `cbr0` `10.244.i.1/24` (fixed MAC), `ip_forward=1`,
//!   `bridge-nf-call-iptables=1` (as a CNI sets it), a route to every other node's pod CIDR
//!   via that node's uplink IP, `198.18.0.0/24 via 192.168.50.2` (a simulated client
//!   network behind the external namespace) and a default route via `192.168.50.2`, so
//!   unknown destinations are routed (and meet the filter table) rather than unreachable.
//!   Zones alternate `zone-a`, `zone-b`.
//! - Pod *j* of node *i* (`pod-i-j`) has `eth0` `10.244.i.(10+j)/24`, default route via
//!   `10.244.i.1`; its node-side port `vp<j>` is on `cbr0` with hairpin on.
//! - The external namespace routes the test VIP range `203.0.113.0/24` via node 0 (a
//!   stand-in load balancer, see [`Rig::route_vips_via`]); it has no route to pod IPs.
//!
//! Namespaces are named `<prefix>-u`, `<prefix>-x`, `<prefix>-n<i>` and
//! `<prefix>-n<i>p<j>` with a prefix unique per rig and process
//! ([`unique_prefix`]), so rigs may be built in parallel.
//! Everything (servers, kproxy processes, namespaces, the scratch directory) goes away on
//! drop, also while a panicking test unwinds; `scripts/netns-clean.sh` removes what a
//! killed test process left behind.

mod cluster;
mod netlink;
mod udp;

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::echo::EchoServer;
use crate::kproxy::KproxyProcess;
use crate::netns::{Netns, unique_prefix};

pub use cluster::{SYNC_LINES, SYNC_TIMEOUT, sync_timeout};
pub use udp::{UdpEchoServer, udp_ask, udp_ask_from, udp_ask_here};

/// The external client's address on the underlay.
pub const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 2);
/// The cluster's pod CIDR (`--cluster-cidr`).
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The test VIP range (LoadBalancer and external IPs) the external namespace routes to a node.
pub const VIP_RANGE: (Ipv4Addr, u8) = (Ipv4Addr::new(203, 0, 113, 0), 24);
/// The simulated client network behind the external namespace (nodes route it there).
pub const CLIENT_NET: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 0, 0), 24);
/// The name of the node-side interface facing the underlay.
pub const UPLINK: &str = "eth0";

/// How big a rig to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RigSpec {
    /// Number of nodes (at most 200).
    pub nodes: usize,
    /// Pods on each node (at most 200).
    pub pods_per_node: usize,
}

/// One node: a namespace with a pod bridge and an uplink into the underlay.
#[derive(Debug)]
pub struct RigNode {
    /// Its name in manifests (`node-<i>`).
    pub name: String,
    /// Its namespace.
    pub ns: Netns,
    /// Its uplink address (`192.168.50.(10+i)`).
    pub ip: Ipv4Addr,
    /// Its pod CIDR (`10.244.i.0`, 24).
    pub pod_cidr: (Ipv4Addr, u8),
    /// The bridge's address, the pods' gateway (`10.244.i.1`).
    pub bridge_ip: Ipv4Addr,
    /// The interface facing the underlay ([`UPLINK`]).
    pub uplink: String,
    /// Its `topology.kubernetes.io/zone` (`zone-a`, `zone-b`, alternating).
    pub zone: String,
}

/// One pod: a namespace with a veth on its node's bridge.
#[derive(Debug)]
pub struct RigPod {
    /// Its name (`pod-<node>-<j>`), what its echo servers answer.
    pub name: String,
    /// The index of its node in [`Rig::nodes`].
    pub node: usize,
    /// Its address (`10.244.node.(10+j)`).
    pub ip: Ipv4Addr,
    /// Its namespace.
    pub ns: Netns,
}

/// A multi-node cluster of namespaces; torn down on drop.
pub struct Rig {
    /// The prefix of every namespace name of this rig.
    pub prefix: String,
    /// Pods, node by node.
    pub pods: Vec<RigPod>,
    /// Nodes, in order (`node-0`, ...).
    pub nodes: Vec<RigNode>,
    /// The client outside the cluster (`192.168.50.2`).
    pub external: Netns,
    /// The L2 switch joining nodes and the external client.
    pub underlay: Netns,
    /// A scratch directory for manifests and logs, removed on drop.
    pub dir: PathBuf,
    build_time: Duration,
    tcp_servers: Vec<EchoServer>,
    udp_servers: Vec<UdpEchoServer>,
    kproxies: Vec<KproxyProcess>,
    /// The arguments every node's kproxy was started with.
    kproxy_args: Vec<Vec<String>>,
    /// Last: removed after the namespaces are gone.
    _scratch: Scratch,
}

impl Rig {
    /// Builds the cluster (see the module docs) and writes the Node objects to
    /// `manifests/nodes.yaml` in [`Rig::dir`].
    pub fn new(spec: RigSpec) -> anyhow::Result<Rig> {
        let started = Instant::now();
        anyhow::ensure!(
            (1..=200).contains(&spec.nodes) && spec.pods_per_node <= 200,
            "unsupported rig size {spec:?}"
        );
        let prefix = unique_prefix();
        let dir = std::env::temp_dir().join(&prefix);
        let scratch = Scratch(dir.clone());
        std::fs::create_dir_all(dir.join("manifests"))
            .with_context(|| format!("creating {}", dir.display()))?;

        let underlay = Netns::new(&format!("{prefix}-u"))?;
        let external = Netns::new(&format!("{prefix}-x"))?;
        let mut nodes = Vec::new();
        let mut pods = Vec::new();
        for i in 0..spec.nodes {
            let octet = u8::try_from(i)?;
            nodes.push(RigNode {
                name: format!("node-{i}"),
                ns: Netns::new(&format!("{prefix}-n{i}"))?,
                ip: Ipv4Addr::new(192, 168, 50, 10 + octet),
                pod_cidr: (Ipv4Addr::new(10, 244, octet, 0), 24),
                bridge_ip: Ipv4Addr::new(10, 244, octet, 1),
                uplink: UPLINK.to_owned(),
                zone: if i % 2 == 0 { "zone-a" } else { "zone-b" }.to_owned(),
            });
            for j in 0..spec.pods_per_node {
                pods.push(RigPod {
                    name: format!("pod-{i}-{j}"),
                    node: i,
                    ip: Ipv4Addr::new(10, 244, octet, 10 + u8::try_from(j)?),
                    ns: Netns::new(&format!("{prefix}-n{i}p{j}"))?,
                });
            }
        }
        links(&underlay, &external, &nodes, &pods)?;
        addresses(&external, &nodes, &pods)?;

        let rig = Rig {
            prefix,
            pods,
            nodes,
            external,
            underlay,
            dir,
            build_time: started.elapsed(),
            tcp_servers: Vec::new(),
            udp_servers: Vec::new(),
            kproxies: Vec::new(),
            kproxy_args: Vec::new(),
            _scratch: scratch,
        };
        rig.write_manifest("nodes.yaml", &rig.node_manifests())?;
        Ok(rig)
    }

    /// How long [`Rig::new`] took to build the namespaces and links.
    pub fn build_time(&self) -> Duration {
        self.build_time
    }

    /// Node `i`'s namespace (panics if there is no such node).
    pub fn node_ns(&self, i: usize) -> &Netns {
        &self.nodes[i].ns
    }

    /// The pod called `name`.
    pub fn pod(&self, name: &str) -> Option<&RigPod> {
        self.pods.iter().find(|p| p.name == name)
    }

    /// The pods of node `node`.
    pub fn pods_on(&self, node: usize) -> Vec<&RigPod> {
        self.pods.iter().filter(|p| p.node == node).collect()
    }

    /// Makes the external namespace send the VIP range ([`VIP_RANGE`]) to node `node`.
    pub fn route_vips_via(&self, node: usize) -> anyhow::Result<()> {
        let gw = self
            .nodes
            .get(node)
            .with_context(|| format!("no node {node}"))?
            .ip;
        netlink::run(&self.external, move |h| async move {
            netlink::route(&h, VIP_RANGE.0, VIP_RANGE.1, gw, true).await
        })
    }

    /// Starts a TCP and a UDP echo server on `pod_ip:port` in every pod; both answer
    /// `<pod name> <peer ip>`.
    pub fn start_backends(&mut self, port: u16) -> anyhow::Result<()> {
        for pod in &self.pods {
            let addr = SocketAddr::new(pod.ip.into(), port);
            self.tcp_servers
                .push(EchoServer::start(&pod.ns, addr, &pod.name)?);
            self.udp_servers
                .push(UdpEchoServer::start(&pod.ns, addr, &pod.name)?);
        }
        Ok(())
    }

    /// Stops every echo server (TCP and UDP) of every pod.
    pub fn stop_backends(&mut self) {
        for s in &self.udp_servers {
            s.signal_stop();
        }
        self.udp_servers.clear();
        self.tcp_servers.clear();
    }
}

/// Phase 1, one thread per namespace: bridges, veths (each created with its peer directly
/// in the other namespace), bridge ports and hairpin, sysctls.
fn links(
    underlay: &Netns,
    external: &Netns,
    nodes: &[RigNode],
    pods: &[RigPod],
) -> anyhow::Result<()> {
    let mut jobs = Vec::new();
    let node_files = nodes
        .iter()
        .map(|n| netlink::ns_file(&n.ns))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let ext_file = netlink::ns_file(external)?;
    jobs.push(netlink::spawn(underlay, move |h| async move {
        // A plain switch: its frames need not meet netfilter.
        netlink::sysctl("net/bridge/bridge-nf-call-iptables", "0")?;
        let br = netlink::add_bridge(&h, "br0", [0x02, 0, 0xc0, 0xa8, 0x32, 0x01]).await?;
        for (i, file) in node_files.iter().enumerate() {
            let port = format!("vn{i}");
            netlink::add_veth_to(&h, &port, UPLINK, file.as_raw_fd(), br).await?;
        }
        netlink::add_veth_to(&h, "vx", "eth0", ext_file.as_raw_fd(), br).await?;
        Ok(())
    })?);
    jobs.push(netlink::spawn(external, |_| async {
        netlink::sysctl("net/ipv4/ip_forward", "1")
    })?);
    for (i, node) in nodes.iter().enumerate() {
        let pod_files = pods
            .iter()
            .filter(|p| p.node == i)
            .map(|p| netlink::ns_file(&p.ns))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let (bridge_ip, octet) = (node.bridge_ip, node.bridge_ip.octets()[2]);
        jobs.push(netlink::spawn(&node.ns, move |h| async move {
            netlink::sysctl("net/ipv4/ip_forward", "1")?;
            netlink::sysctl("net/bridge/bridge-nf-call-iptables", "1")?;
            let br = netlink::add_bridge(&h, "cbr0", [0x02, 0, 10, 244, octet, 1]).await?;
            h.address()
                .add(br, bridge_ip.into(), 24)
                .execute()
                .await
                .context("address of cbr0")?;
            let mut ports = Vec::new();
            for (j, file) in pod_files.iter().enumerate() {
                let port = format!("vp{j}");
                ports.push(netlink::add_veth_to(&h, &port, "eth0", file.as_raw_fd(), br).await?);
            }
            // As a CNI does, once the ports are enslaved.
            for port in ports {
                netlink::hairpin(&h, port).await?;
            }
            Ok(())
        })?);
    }
    netlink::join_all(jobs)
}

/// Phase 2, one thread per namespace: addresses on the veth ends that phase 1 moved in,
/// and routes.
fn addresses(external: &Netns, nodes: &[RigNode], pods: &[RigPod]) -> anyhow::Result<()> {
    let mut jobs = Vec::new();
    let first_node = nodes.first().map(|n| n.ip).context("a rig needs a node")?;
    jobs.push(netlink::spawn(external, move |h| async move {
        netlink::configure(&h, "eth0", EXTERNAL_IP, 24).await?;
        netlink::route(&h, VIP_RANGE.0, VIP_RANGE.1, first_node, false).await
    })?);
    let others: Vec<_> = nodes.iter().map(|n| (n.pod_cidr, n.ip)).collect();
    for node in nodes {
        let (ip, own_cidr, others) = (node.ip, node.pod_cidr, others.clone());
        jobs.push(netlink::spawn(&node.ns, move |h| async move {
            netlink::configure(&h, UPLINK, ip, 24).await?;
            for ((dst, len), gw) in others.into_iter().filter(|(c, _)| *c != own_cidr) {
                netlink::route(&h, dst, len, gw, false).await?;
            }
            netlink::route(&h, CLIENT_NET.0, CLIENT_NET.1, EXTERNAL_IP, false).await?;
            netlink::route(&h, Ipv4Addr::UNSPECIFIED, 0, EXTERNAL_IP, false).await
        })?);
    }
    for pod in pods {
        let (ip, gw) = (pod.ip, nodes[pod.node].bridge_ip);
        jobs.push(netlink::spawn(&pod.ns, move |h| async move {
            netlink::configure(&h, "eth0", ip, 24).await?;
            netlink::route(&h, Ipv4Addr::UNSPECIFIED, 0, gw, false).await
        })?);
    }
    netlink::join_all(jobs)
}

/// Removes a scratch directory when dropped (also when a rig fails to build).
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        // Processes first, then (as fields) the namespaces they live in, then the files.
        self.kproxies.clear();
        self.stop_backends();
    }
}
