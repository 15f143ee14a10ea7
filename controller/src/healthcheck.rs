//! Health-check NodePorts: for every Service with `externalTrafficPolicy: Local` and a
//! `healthCheckNodePort`, an HTTP server on that port tells an external load balancer
//! whether this node has local endpoints, exactly as upstream's service health server:
//! `200` with `localEndpoints > 0`, `503` otherwise, and a JSON body
//! `{"service":{"namespace":..,"name":..},"localEndpoints":N,"serviceProxyHealthy":B}`.
//!
//! What each port reports is computed purely from the plan ([`health_entries`]); the
//! server only opens and closes listeners to match and answers from shared state.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use kproxy_dataplane::plan::{NodePortAddresses, ProxyPlan};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What one health-check port reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthEntry {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// Distinct local ready endpoint IPs of the Service (all ports, all families).
    pub local_endpoints: usize,
}

/// The health-check ports of a plan and what each reports.
pub fn health_entries(plan: &ProxyPlan) -> BTreeMap<u16, HealthEntry> {
    let mut ips: BTreeMap<u16, (HealthEntry, BTreeSet<IpAddr>)> = BTreeMap::new();
    for svc in &plan.services {
        let Some(port) = svc.health_check_node_port else {
            continue;
        };
        let (_, set) = ips.entry(port).or_insert_with(|| {
            let entry = HealthEntry {
                namespace: svc.name.namespace.clone(),
                name: svc.name.name.clone(),
                local_endpoints: 0,
            };
            (entry, BTreeSet::new())
        });
        set.extend(
            svc.local_endpoints
                .iter()
                .filter(|e| e.is_local && e.ready)
                .map(|e| e.ip()),
        );
    }
    ips.into_iter()
        .map(|(port, (mut entry, set))| {
            entry.local_endpoints = set.len();
            (port, entry)
        })
        .collect()
}

/// The HTTP status and JSON body for one entry.
pub fn response(entry: &HealthEntry, proxy_healthy: bool) -> (u16, String) {
    let status = if entry.local_endpoints > 0 && proxy_healthy {
        200
    } else {
        503
    };
    let body = serde_json::json!({
        "service": { "namespace": entry.namespace, "name": entry.name },
        "localEndpoints": entry.local_endpoints,
        "serviceProxyHealthy": proxy_healthy,
    });
    (status, body.to_string())
}

#[derive(Debug, Default)]
struct Shared {
    entries: BTreeMap<u16, HealthEntry>,
    proxy_healthy: bool,
}

/// Serves every health-check NodePort of the current plan.
#[derive(Default)]
pub struct ServiceHealthServer {
    shared: Arc<RwLock<Shared>>,
    listeners: BTreeMap<u16, Vec<JoinHandle<()>>>,
}

impl ServiceHealthServer {
    /// A server with no ports open.
    pub fn new() -> Self {
        Self::default()
    }

    /// Opens and closes listeners to match `plan` and updates what each port reports.
    /// Must be called from within a tokio runtime.
    pub fn sync(&mut self, plan: &ProxyPlan, proxy_healthy: bool) {
        let entries = health_entries(plan);
        let wanted: BTreeSet<u16> = entries.keys().copied().collect();
        if let Ok(mut shared) = self.shared.write() {
            shared.entries = entries;
            shared.proxy_healthy = proxy_healthy;
        }
        self.listeners.retain(|port, tasks| {
            let keep = wanted.contains(port);
            if !keep {
                tasks.iter().for_each(JoinHandle::abort);
            }
            keep
        });
        for port in wanted {
            if self.listeners.contains_key(&port) {
                continue;
            }
            let tasks: Vec<_> = bind_addresses(plan)
                .into_iter()
                .filter_map(|ip| self.listen(SocketAddr::new(ip, port)))
                .collect();
            if !tasks.is_empty() {
                self.listeners.insert(port, tasks);
            }
        }
    }

    /// The ports currently served.
    pub fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.listeners.keys().copied()
    }

    fn listen(&self, addr: SocketAddr) -> Option<JoinHandle<()>> {
        let std_listener = match std::net::TcpListener::bind(addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
        {
            Ok(l) => l,
            Err(err) => {
                tracing::error!(%addr, %err, "cannot serve health-check NodePort (retried on the next sync)");
                return None;
            }
        };
        let listener = TcpListener::from_std(std_listener).ok()?;
        let shared = self.shared.clone();
        let port = addr.port();
        tracing::info!(%addr, "serving health-check NodePort");
        Some(tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(5), answer(conn, port, &shared))
                            .await;
                });
            }
        }))
    }
}

impl Drop for ServiceHealthServer {
    fn drop(&mut self) {
        self.listeners
            .values()
            .flatten()
            .for_each(JoinHandle::abort);
    }
}

/// Where to listen: the NodePort addresses, or every address (`[::]` is dual-stack).
fn bind_addresses(plan: &ProxyPlan) -> Vec<IpAddr> {
    let mut all = false;
    let mut ips = Vec::new();
    for family in plan.node.families() {
        match plan.node.family(family).map(|f| &f.nodeport_addresses) {
            Some(NodePortAddresses::Only(list)) => ips.extend(list.iter().copied()),
            _ => all = true,
        }
    }
    if all {
        let ipv6 = std::path::Path::new("/proc/net/if_inet6").exists();
        return vec![if ipv6 {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        }];
    }
    ips
}

async fn answer(mut conn: TcpStream, port: u16, shared: &RwLock<Shared>) -> std::io::Result<()> {
    // Read the request head (bounded); any request gets the answer, as upstream's.
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    while head.len() < 8192 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let (status, body) = match shared.read() {
        Ok(s) => match s.entries.get(&port) {
            Some(entry) => response(entry, s.proxy_healthy),
            None => (503, "{}".to_owned()),
        },
        Err(_) => (503, "{}".to_owned()),
    };
    let reason = if status == 200 {
        "OK"
    } else {
        "Service Unavailable"
    };
    let weight = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["localEndpoints"].as_u64())
        .unwrap_or(0);
    let reply = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\n\
         X-Load-Balancing-Endpoint-Weight: {weight}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(reply.as_bytes()).await?;
    conn.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use kproxy_dataplane::fixtures::{
        endpoint, plan_on, service, single_family_node, with_endpoints,
    };
    use kproxy_dataplane::plan::*;

    /// An endpoint, terminating when not ready.
    fn ep(addr: &str, is_local: bool, ready: bool) -> Endpoint {
        Endpoint {
            ready,
            terminating: !ready,
            ..endpoint(addr, is_local)
        }
    }

    /// `ns/lb:PORT`, NodePort 30000 with `externalTrafficPolicy: Local`.
    fn svc(port: &str, hc: Option<u16>, endpoints: Vec<Endpoint>) -> ServicePortPlan {
        let mut svc = service("ns", "lb", port, "10.96.0.1", 80);
        svc.node_port = Some(30000);
        svc.external_policy_local = true;
        svc.health_check_node_port = hc;
        with_endpoints(svc, endpoints)
    }

    fn plan(services: Vec<ServicePortPlan>) -> ProxyPlan {
        plan_on(single_family_node("n", "10.0.0.100"), services)
    }

    #[test]
    fn counts_distinct_local_ready_ips_across_ports() {
        let p = plan(vec![
            svc(
                "http",
                Some(32000),
                vec![ep("10.0.0.1:80", true, true), ep("10.0.0.2:80", true, true)],
            ),
            svc("https", Some(32000), vec![ep("10.0.0.1:443", true, true)]),
            svc("x", None, vec![ep("10.0.0.9:80", true, true)]),
        ]);
        let entries = health_entries(&p);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[&32000].local_endpoints, 2);
        assert_eq!(entries[&32000].name, "lb");
    }

    #[test]
    fn terminating_local_endpoints_do_not_count() {
        let p = plan(vec![svc(
            "http",
            Some(32001),
            vec![ep("10.0.0.1:80", true, false)],
        )]);
        assert_eq!(health_entries(&p)[&32001].local_endpoints, 0);
    }

    #[test]
    fn answers_like_upstream() {
        let entry = HealthEntry {
            namespace: "ns".into(),
            name: "lb".into(),
            local_endpoints: 2,
        };
        let (status, body) = response(&entry, true);
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["service"]["namespace"], "ns");
        assert_eq!(v["localEndpoints"], 2);
        assert_eq!(v["serviceProxyHealthy"], true);
        assert_eq!(
            response(
                &HealthEntry {
                    local_endpoints: 0,
                    ..entry.clone()
                },
                true
            )
            .0,
            503
        );
        assert_eq!(
            response(&entry, false).0,
            503,
            "an unhealthy proxy fails the check"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn serves_and_closes_ports() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
            l.local_addr().expect("addr").port()
        };
        let mut p = plan(vec![svc(
            "http",
            Some(port),
            vec![ep("10.0.0.1:80", true, true)],
        )]);
        if let Some(v4) = p.node.ipv4.as_mut() {
            v4.nodeport_addresses = NodePortAddresses::Only(vec!["127.0.0.1".parse().expect("ip")]);
        }
        let mut server = ServiceHealthServer::new();
        server.sync(&p, true);
        let mut conn = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("send");
        let mut text = String::new();
        conn.read_to_string(&mut text).await.expect("read");
        assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
        assert!(text.contains("\"localEndpoints\":1"), "{text}");

        server.sync(&plan(vec![]), true);
        tokio::task::yield_now().await;
        assert_eq!(server.ports().count(), 0);
    }
}
