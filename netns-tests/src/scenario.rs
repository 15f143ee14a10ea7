//! A running test cluster: a 3-node [`Rig`] with echo backends in every pod and kproxy in
//! every node in one proxy mode, plus the measurements scenarios share (hits per backend
//! from a client, DNAT-on-source probes). The e2e suite and `run-netns` are both written
//! on top of it, so a scenario reads as: which Services, which client, what must happen.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::echo::{Outcome, try_ask};
use crate::manifests::{EndpointSpec, ServiceSpec};
use crate::netns::Netns;
use crate::rig::{Rig, RigSpec, UPLINK, udp_ask};
use crate::traffic::probe::{Capture, Probe, ProbeProtocol, send_and_capture};

/// The port every backend pod serves (TCP and UDP echo).
pub const BACKEND_PORT: u16 = 8080;

/// How long a client waits before calling a connection dropped.
pub const DROP_TIMEOUT: Duration = Duration::from_millis(1500);

/// A rig with backends and kproxy running in `mode`.
pub struct Cluster {
    /// The rig.
    pub rig: Rig,
    /// The proxy mode kproxy runs in.
    pub mode: String,
    synced: Vec<usize>,
}

impl Cluster {
    /// Builds a `nodes` × `pods_per_node` rig, starts backends, writes `services` and starts
    /// kproxy in `mode` (with `extra_args`) on every node, and waits for the first sync.
    pub fn start(
        mode: &str,
        nodes: usize,
        pods_per_node: usize,
        services: &[ServiceSpec],
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        let mut rig = Rig::new(RigSpec {
            nodes,
            pods_per_node,
        })?;
        rig.start_backends(BACKEND_PORT)?;
        for spec in services {
            rig.write_manifest(&file_of(spec), &spec.to_manifest())?;
        }
        let mut args = vec!["--proxy-mode", mode];
        args.extend_from_slice(extra_args);
        rig.start_kproxy(&args)?;
        let synced = rig.wait_synced(&vec![0; nodes]).context("first sync")?;
        Ok(Cluster {
            rig,
            mode: mode.to_owned(),
            synced,
        })
    }

    /// Writes (or rewrites) a Service and waits until every node synced it; returns how
    /// long that took.
    pub fn apply(&mut self, spec: &ServiceSpec) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let since = self.rig.sync_counts();
        self.rig
            .write_manifest(&file_of(spec), &spec.to_manifest())?;
        self.synced = self.rig.wait_synced(&since)?;
        Ok(started.elapsed())
    }

    /// The namespace of a pod by name.
    pub fn pod_ns(&self, name: &str) -> anyhow::Result<&Netns> {
        Ok(&self.pod(name)?.ns)
    }

    /// A pod's address by name.
    pub fn pod_ip(&self, name: &str) -> anyhow::Result<Ipv4Addr> {
        Ok(self.pod(name)?.ip)
    }

    fn pod(&self, name: &str) -> anyhow::Result<&crate::rig::RigPod> {
        self.rig.pod(name).with_context(|| format!("no pod {name}"))
    }

    /// A ready endpoint for pod `name`.
    pub fn endpoint(&self, name: &str) -> anyhow::Result<EndpointSpec> {
        let pod = self.pod(name)?;
        Ok(EndpointSpec::ready(pod.ip, &self.rig.nodes[pod.node].name))
    }

    /// A serving, terminating endpoint for pod `name`.
    pub fn terminating_endpoint(&self, name: &str) -> anyhow::Result<EndpointSpec> {
        let pod = self.pod(name)?;
        Ok(EndpointSpec::terminating(
            pod.ip,
            &self.rig.nodes[pod.node].name,
        ))
    }

    /// Node `i`'s uplink address.
    pub fn node_ip(&self, i: usize) -> Ipv4Addr {
        self.rig.nodes[i].ip
    }

    /// `n` TCP connections from `client` to `addr`: hits per backend pod and failures.
    pub fn tcp_hits(&self, client: &Netns, addr: SocketAddr, n: usize) -> Hits {
        let mut hits = Hits::default();
        for _ in 0..n {
            match try_ask(client, None, addr, DROP_TIMEOUT) {
                Outcome::Replied(reply) => hits.record(reply.pod, reply.peer),
                _ => hits.failures += 1,
            }
        }
        hits
    }

    /// `n` UDP requests from `client` to `addr`.
    pub fn udp_hits(&self, client: &Netns, addr: SocketAddr, n: usize) -> Hits {
        let mut hits = Hits::default();
        for _ in 0..n {
            match udp_ask(client, addr) {
                Ok(reply) => hits.record(reply.pod, reply.peer),
                Err(_) => hits.failures += 1,
            }
        }
        hits
    }

    /// Sends `count` TCP SYN (or UDP) probes from pod `from` to `dst` and captures them on
    /// the pod's node's uplink. `Ok(true)` when every probe that left the node was already
    /// DNATed to one of the `endpoints` pods (and at least one left), `Ok(false)` when any
    /// left with another destination (such as the ClusterIP itself).
    pub fn dnat_on_source(
        &self,
        from: &str,
        dst: SocketAddrV4,
        protocol: ProbeProtocol,
        endpoints: &[&str],
        count: usize,
    ) -> anyhow::Result<bool> {
        let targets: Vec<SocketAddrV4> = endpoints
            .iter()
            .map(|p| Ok(SocketAddrV4::new(self.pod_ip(p)?, BACKEND_PORT)))
            .collect::<anyhow::Result<_>>()?;
        let pod = self.pod(from)?;
        let node = &self.rig.nodes[pod.node];
        let probe = Probe {
            from: &pod.ns,
            src: pod.ip,
            dst,
            protocol,
            count,
        };
        let seen = send_and_capture(&probe, &Capture::outgoing(&node.ns, UPLINK))?;
        Ok(!seen.is_empty() && seen.iter().all(|s| targets.contains(&s.dst)))
    }
}

/// What `kproxy explain` answered, with endpoints as pod names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explained {
    /// `dnat`, `reject`, `drop` or `accept`.
    pub verdict: String,
    /// The pods a DNAT picks from.
    pub pods: BTreeSet<String>,
    /// Whether the packet leaves masqueraded.
    pub masquerade: bool,
    /// The whole answer, for messages.
    pub json: serde_json::Value,
}

impl Cluster {
    /// What node `node`'s rules do to a TCP connection from `from` to `to`, as
    /// `kproxy explain` says; the running kproxy's `/explain` (on the default metrics
    /// address) must say the same.
    pub fn explain(
        &self,
        node: usize,
        from: impl Into<std::net::IpAddr>,
        to: SocketAddr,
    ) -> anyhow::Result<Explained> {
        self.explain_to(node, from, &to.to_string())
    }

    /// [`Cluster::explain`] for any destination `kproxy explain --to` takes
    /// (`IP:PORT[/PROTO]`).
    pub fn explain_to(
        &self,
        node: usize,
        from: impl Into<std::net::IpAddr>,
        to: &str,
    ) -> anyhow::Result<Explained> {
        let from = from.into();
        let json = self.rig.explain(node, from, to)?;
        let metrics = SocketAddr::from(([127, 0, 0, 1], 10249));
        let path = format!("/explain?from={from}&to={to}&output=json");
        let (status, body) = crate::http::http_get(&self.rig.nodes[node].ns, metrics, &path)?;
        anyhow::ensure!(status == 200, "GET {path} on node-{node}: {status} {body}");
        let live: serde_json::Value =
            serde_json::from_str(&body).with_context(|| format!("GET {path}: {body}"))?;
        for key in [
            "service",
            "verdict",
            "endpoints",
            "masquerade",
            "unused_endpoints",
        ] {
            anyhow::ensure!(
                live[key] == json[key],
                "{key}: kproxy explain says {}, the running kproxy's /explain {}",
                json[key],
                live[key]
            );
        }
        let text = |key: &str| json[key].as_str().unwrap_or_default().to_owned();
        let pods = json["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                let addr: SocketAddr = e
                    .as_str()
                    .unwrap_or_default()
                    .parse()
                    .with_context(|| format!("endpoint {e} in {json}"))?;
                let pod = self
                    .rig
                    .pods
                    .iter()
                    .find(|p| std::net::IpAddr::V4(p.ip) == addr.ip());
                Ok(pod.map_or_else(|| addr.to_string(), |p| p.name.clone()))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Explained {
            verdict: text("verdict"),
            pods,
            masquerade: json["masquerade"].as_bool().unwrap_or_default(),
            json,
        })
    }

    /// The node of pod `name`.
    pub fn node_of(&self, name: &str) -> anyhow::Result<usize> {
        Ok(self.pod(name)?.node)
    }
}

/// Hits per backend pod, the source addresses the backends saw, and failures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hits {
    /// Replies per pod name.
    pub per_pod: BTreeMap<String, usize>,
    /// Source addresses seen by the backends.
    pub peers: BTreeMap<String, usize>,
    /// Requests without a reply.
    pub failures: usize,
}

impl Hits {
    fn record(&mut self, pod: String, peer: String) {
        *self.per_pod.entry(pod).or_default() += 1;
        *self.peers.entry(peer).or_default() += 1;
    }

    /// Total replies.
    pub fn total(&self) -> usize {
        self.per_pod.values().sum()
    }
}

fn file_of(spec: &ServiceSpec) -> String {
    format!("svc-{}.json", spec.name)
}
