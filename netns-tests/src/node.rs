//! A one-node cluster: a node namespace with a pod bridge, backend pods running echo
//! servers, a client pod on the same bridge, and an external client on the node's uplink.
//!
//! ```text
//!  external (192.168.50.1) ──veth── node (192.168.50.2, cbr0 10.244.1.1/24)
//!                                      ├── pod 0 (10.244.1.10)
//!                                      ├── ...
//!                                      └── client pod (10.244.1.100)
//! ```
//!
//! Every link is dual-stack: the same layout in IPv6 is `fd00:50::1` / `fd00:50::2` on the
//! uplink and `fd00:244:1::/64` on the bridge (pod *i* at `fd00:244:1::(10+i)`).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use crate::echo::EchoServer;
use crate::netns::{Netns, unique_prefix, veth};

/// The node's name in manifests.
pub const NODE_NAME: &str = "node-a";
/// The node's address on its uplink.
pub const NODE_IP: &str = "192.168.50.2";
/// The external client's address.
pub const EXTERNAL_IP: &str = "192.168.50.1";
/// The pod CIDR of the cluster (`--cluster-cidr`).
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The node's IPv6 address on its uplink.
pub const NODE_IP6: &str = "fd00:50::2";
/// The external client's IPv6 address.
pub const EXTERNAL_IP6: &str = "fd00:50::1";
/// The IPv6 pod CIDR of the cluster.
pub const CLUSTER_CIDR6: &str = "fd00:244::/32";
/// The port every backend listens on.
pub const BACKEND_PORT: u16 = 8080;

/// A backend pod.
pub struct Pod {
    /// Its name (what its echo server answers).
    pub name: String,
    /// Its IPv4 address.
    pub ip: IpAddr,
    /// Its IPv6 address.
    pub ip6: IpAddr,
    /// Its namespace.
    pub ns: Netns,
}

/// A one-node cluster; everything is torn down on drop.
pub struct OneNodeCluster {
    // Fields drop in order: servers before the namespaces they live in.
    servers: Vec<EchoServer>,
    /// Backend pods.
    pub pods: Vec<Pod>,
    /// A pod without a server, for pod → service traffic.
    pub client: Netns,
    /// A client outside the cluster, on the node's uplink.
    pub external: Netns,
    /// The node.
    pub node: Netns,
    /// A scratch directory for manifests and logs, removed on drop.
    pub dir: PathBuf,
}

impl OneNodeCluster {
    /// Builds the cluster with `backends` pods, each serving on [`BACKEND_PORT`].
    pub fn new(backends: usize) -> anyhow::Result<Self> {
        let prefix = unique_prefix();
        let dir = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&dir)?;
        let node = Netns::new(&format!("{prefix}-node"))?;
        let external = Netns::new(&format!("{prefix}-ext"))?;
        node.sysctl("net.ipv4.ip_forward=1")?;
        node.sysctl("net.ipv6.conf.all.forwarding=1")?;
        node.ip(&["link", "add", "cbr0", "type", "bridge"])?;
        node.ip(&["addr", "add", "10.244.1.1/24", "dev", "cbr0"])?;
        node.ip(&["addr", "add", "fd00:244:1::1/64", "dev", "cbr0", "nodad"])?;
        node.ip(&["link", "set", "cbr0", "up"])?;
        // As a CNI plugin does: bridged pod-to-pod replies must pass through conntrack.
        node.sysctl("net.bridge.bridge-nf-call-iptables=1")?;
        node.sysctl("net.bridge.bridge-nf-call-ip6tables=1")?;
        veth(
            &node,
            "eth0",
            &format!("{NODE_IP}/24"),
            &external,
            "eth0",
            &format!("{EXTERNAL_IP}/24"),
        )?;
        node.ip(&[
            "addr",
            "add",
            &format!("{NODE_IP6}/64"),
            "dev",
            "eth0",
            "nodad",
        ])?;
        external.ip(&[
            "addr",
            "add",
            &format!("{EXTERNAL_IP6}/64"),
            "dev",
            "eth0",
            "nodad",
        ])?;
        // Like a real node, a default route: traffic to unknown addresses (such as a
        // ClusterIP without rules) is routed, so it meets the filter table.
        node.ip(&["route", "add", "default", "via", EXTERNAL_IP])?;

        let client = Netns::new(&format!("{prefix}-cli"))?;
        attach_pod(&node, &client, "vcli", 100)?;
        let mut pods = Vec::new();
        let mut servers = Vec::new();
        for i in 0..backends {
            let ns = Netns::new(&format!("{prefix}-p{i}"))?;
            let host = 10 + u8::try_from(i)?;
            attach_pod(&node, &ns, &format!("vp{i}"), host)?;
            let name = format!("pod-{i}");
            let ip: IpAddr = format!("10.244.1.{host}").parse()?;
            let ip6: IpAddr = format!("fd00:244:1::{host}").parse()?;
            for addr in [ip, ip6] {
                servers.push(EchoServer::start(
                    &ns,
                    SocketAddr::new(addr, BACKEND_PORT),
                    &name,
                )?);
            }
            pods.push(Pod { name, ip, ip6, ns });
        }
        Ok(OneNodeCluster {
            servers,
            pods,
            client,
            external,
            node,
            dir,
        })
    }

    /// The manifest directory (created empty).
    pub fn manifests(&self) -> PathBuf {
        let path = self.dir.join("manifests");
        let _ = std::fs::create_dir_all(&path);
        path
    }

    /// Writes one manifest file.
    pub fn write_manifest(&self, file: &str, text: &str) -> anyhow::Result<()> {
        let tmp = self.dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, self.manifests().join(file))?;
        Ok(())
    }

    /// The standard flags for kproxy on this node.
    pub fn kproxy_args(&self, manifests: &Path) -> Vec<String> {
        vec![
            "--manifests".into(),
            manifests.display().to_string(),
            "--hostname-override".into(),
            NODE_NAME.into(),
            "--cluster-cidr".into(),
            format!("{CLUSTER_CIDR},{CLUSTER_CIDR6}"),
            // nf_conntrack_max belongs to the host: leave it alone, as kind does.
            "--conntrack-max-per-core=0".into(),
        ]
    }

    /// Stops the echo servers (used by tests that take backends away).
    pub fn stop_servers(&mut self) {
        self.servers.clear();
    }
}

/// A pod with addresses `10.244.1.HOST` and `fd00:244:1::HOST` on the node's bridge; as a
/// CNI plugin does, the port joins the bridge before the pod's addresses are configured.
pub fn attach_pod(node: &Netns, pod: &Netns, node_if: &str, host: u8) -> anyhow::Result<()> {
    veth(node, node_if, "", pod, "eth0", "")?;
    node.ip(&["link", "set", node_if, "master", "cbr0"])?;
    pod.ip(&["addr", "add", &format!("10.244.1.{host}/24"), "dev", "eth0"])?;
    pod.ip(&[
        "addr",
        "add",
        &format!("fd00:244:1::{host}/64"),
        "dev",
        "eth0",
        "nodad",
    ])?;
    pod.ip(&["route", "add", "default", "via", "10.244.1.1"])?;
    pod.ip(&["-6", "route", "add", "default", "via", "fd00:244:1::1"])?;
    Ok(())
}

impl Drop for OneNodeCluster {
    fn drop(&mut self) {
        self.servers.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A ClusterIP or NodePort Service manifest with one TCP port named `http`.
pub fn service_yaml(name: &str, cluster_ip: &str, port: u16, node_port: Option<u16>) -> String {
    let (kind, node_port) = match node_port {
        Some(np) => ("NodePort", format!("\n      nodePort: {np}")),
        None => ("ClusterIP", String::new()),
    };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  type: {kind}\n  clusterIP: {cluster_ip}\n  ports:\n    - name: http\n      protocol: TCP\n      port: {port}\n      targetPort: {BACKEND_PORT}{node_port}\n"
    )
}

/// An IPv4 EndpointSlice of `service` with ready endpoints on this node.
pub fn slice_yaml(service: &str, endpoints: &[IpAddr]) -> String {
    family_slice_yaml(service, "IPv4", endpoints)
}

/// An EndpointSlice (`-1` for IPv4, `-2` for IPv6) of `service` with ready endpoints on
/// this node.
pub fn family_slice_yaml(service: &str, address_type: &str, endpoints: &[IpAddr]) -> String {
    let n = if address_type == "IPv6" { 2 } else { 1 };
    let mut text = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {service}-{n}\n  namespace: default\n  labels:\n    kubernetes.io/service-name: {service}\naddressType: {address_type}\nports:\n  - name: http\n    protocol: TCP\n    port: {BACKEND_PORT}\nendpoints:\n"
    );
    for ip in endpoints {
        text.push_str(&format!(
            "  - addresses: [\"{ip}\"]\n    conditions: {{ready: true}}\n    nodeName: {NODE_NAME}\n"
        ));
    }
    if endpoints.is_empty() {
        text = text.replace("endpoints:\n", "endpoints: []\n");
    }
    text
}

/// The Node manifest of this node.
pub fn node_yaml() -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {NODE_NAME}\n  labels:\n    topology.kubernetes.io/zone: zone-a\nstatus:\n  addresses:\n    - type: InternalIP\n      address: {NODE_IP}\n"
    )
}
