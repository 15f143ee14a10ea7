//! Tests of [`KubeSource`] against the [`TestApiServer`]: initial sync, watch events,
//! a dropped watch connection, both forms of `410 Gone`, bookmarks, selectors, bad objects
//! and connecting through a kubeconfig file or `--master`. Every wait is bounded.

use std::time::{Duration, Instant};

use ::kube::Client;
use serde_json::{Value, json};

use super::test_server::{Collection, GoneMode, TestApiServer};
use super::*;
use crate::model::{ObjectKey, Snapshot};
use crate::source::test_support::TestDir;

/// The longest any condition is waited for (the watcher's first retry is 0.8 s).
const WAIT: Duration = Duration::from_secs(20);
const NODE: &str = "node-a";

fn service(namespace: &str, name: &str, cluster_ip: &str, port: u16) -> Value {
    json!({
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ip,
            "clusterIPs": [cluster_ip],
            "ipFamilies": ["IPv4"],
            "ports": [{"name": "http", "port": port, "protocol": "TCP", "targetPort": 8080}],
            "selector": {"app": name},
        },
    })
}

fn slice(namespace: &str, name: &str, service: &str, addresses: &[&str]) -> Value {
    let endpoints: Vec<Value> = addresses
        .iter()
        .map(|a| json!({"addresses": [a], "conditions": {"ready": true}, "nodeName": NODE}))
        .collect();
    json!({
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    })
}

fn node(name: &str, address: &str) -> Value {
    json!({
        "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": "zone-a"}},
        "status": {"addresses": [{"type": "InternalIP", "address": address}]},
    })
}

fn labelled(mut object: Value, label: &str, value: &str) -> Value {
    object["metadata"]["labels"][label] = json!(value);
    object
}

/// A server with one valid Service and its slice, plus this node and another.
async fn server() -> TestApiServer {
    let server = TestApiServer::start().await;
    server.apply(
        Collection::Services,
        service("shop", "web", "10.96.0.10", 80),
    );
    server.apply(
        Collection::EndpointSlices,
        slice("shop", "web-abc", "web", &["10.244.1.5"]),
    );
    server.apply(Collection::Nodes, node(NODE, "192.168.0.10"));
    server.apply(Collection::Nodes, node("node-b", "192.168.0.11"));
    server
}

fn client(server: &TestApiServer) -> Client {
    let url = server.url().parse().expect("url");
    Client::try_from(::kube::Config::new(url)).expect("client")
}

fn source(server: &TestApiServer) -> Mirrored {
    Mirrored::from(KubeSource::start(client(server), NODE))
}

/// A source and the snapshot its updates build, as the sync loop keeps it.
struct Mirrored {
    source: KubeSource,
    snapshot: Snapshot,
    /// How many changes the last update carried.
    last_changes: usize,
}

impl From<KubeSource> for Mirrored {
    fn from(source: KubeSource) -> Self {
        Mirrored {
            source,
            snapshot: Snapshot::default(),
            last_changes: 0,
        }
    }
}

impl Mirrored {
    /// The whole view after the next update, with that update's problems.
    fn poll(&mut self) -> Option<Loaded> {
        let update = self.source.poll()?;
        self.last_changes = update.changes.len();
        self.snapshot.apply(update.changes);
        Some(Loaded {
            snapshot: self.snapshot.clone(),
            problems: update.problems,
        })
    }

    fn synced(&self) -> bool {
        self.source.synced()
    }
}

/// Polls as the sync loop does (every 50 ms) until a load satisfies `done`.
async fn poll_until(source: &mut Mirrored, what: &str, done: impl Fn(&Loaded) -> bool) -> Loaded {
    let deadline = Instant::now() + WAIT;
    let mut last = None;
    loop {
        if let Some(loaded) = source.poll() {
            if done(&loaded) {
                return loaded;
            }
            last = Some(loaded);
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last load: {last:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `done` holds of the server's request log.
async fn wait_for_requests(
    server: &TestApiServer,
    what: &str,
    done: impl Fn(&TestApiServer) -> bool,
) {
    let deadline = Instant::now() + WAIT;
    while !done(server) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {:#?}",
            server.requests()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn web() -> ObjectKey {
    ObjectKey::new("shop", "web")
}

fn web_port(loaded: &Loaded) -> Option<u16> {
    Some(loaded.snapshot.services().get(&web())?.ports.first()?.port)
}

fn slice_count(loaded: &Loaded) -> usize {
    loaded.snapshot.endpoint_slices().len()
}

#[tokio::test]
async fn initial_sync_yields_the_selected_objects() {
    let server = server().await;
    server.apply(
        Collection::Services,
        labelled(
            service("shop", "mesh", "10.96.0.11", 80),
            SERVICE_PROXY_NAME_LABEL,
            "other",
        ),
    );
    server.apply(
        Collection::EndpointSlices,
        labelled(
            slice("shop", "db-xyz", "db", &["10.244.1.9"]),
            HEADLESS_LABEL,
            "",
        ),
    );
    let mut source = source(&server);
    assert!(!source.synced());
    assert_eq!(source.poll(), None, "nothing before the first lists");
    let loaded = poll_until(&mut source, "the initial lists", |_| true).await;
    assert!(source.synced());
    assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
    let snapshot = &loaded.snapshot;
    assert_eq!(snapshot.services().keys().collect::<Vec<_>>(), [&web()]);
    assert_eq!(
        snapshot.services()[&web()].cluster_ips,
        ["10.96.0.10".parse::<std::net::IpAddr>().unwrap()]
    );
    let slices: Vec<_> = snapshot.endpoint_slices().keys().collect();
    assert_eq!(slices, [&ObjectKey::new("shop", "web-abc")]);
    assert_eq!(
        snapshot.endpoint_slices().values().next().unwrap().service,
        web()
    );
    assert_eq!(snapshot.nodes().keys().collect::<Vec<_>>(), [NODE]);
    assert_eq!(snapshot.nodes()[NODE].zone(), Some("zone-a"));
    assert_eq!(source.poll(), None, "quiet until something changes");

    // The requests are kube-proxy's: selectors on every list and watch, bookmarks asked for.
    wait_for_requests(&server, "three watches", |s| {
        [
            Collection::Services,
            Collection::EndpointSlices,
            Collection::Nodes,
        ]
        .iter()
        .all(|c| s.count(*c, true) >= 1)
    })
    .await;
    for request in server.requests() {
        let get = |k: &str| request.query.get(k).map(String::as_str);
        match request.collection {
            Collection::Nodes => assert_eq!(get("fieldSelector"), Some("metadata.name=node-a")),
            _ => assert_eq!(get("labelSelector"), Some(proxy_label_selector().as_str())),
        }
        if request.watch {
            assert_eq!(get("allowWatchBookmarks"), Some("true"), "{request:?}");
            assert!(
                get("resourceVersion").is_some_and(|v| v != "0"),
                "{request:?}"
            );
        }
    }
}

#[tokio::test]
async fn watch_events_show_up_in_the_next_poll() {
    let server = server().await;
    let mut source = source(&server);
    poll_until(&mut source, "the initial lists", |_| true).await;
    server.apply(
        Collection::EndpointSlices,
        slice("shop", "web-abc", "web", &["10.244.1.5", "10.244.1.6"]),
    );
    let loaded = poll_until(&mut source, "the MODIFIED slice", |l| {
        l.snapshot
            .endpoint_slices()
            .values()
            .any(|s| s.endpoints.len() == 2)
    })
    .await;
    assert_eq!(web_port(&loaded), Some(80));
    assert_eq!(
        source.last_changes, 1,
        "only the delivered slice is looked at"
    );
    server.apply(
        Collection::Services,
        service("shop", "api", "10.96.0.12", 443),
    );
    poll_until(&mut source, "the ADDED service", |l| {
        l.snapshot.services().len() == 2
    })
    .await;
    server.delete(Collection::Services, "shop", "web");
    let loaded = poll_until(&mut source, "the DELETED service", |l| {
        web_port(l).is_none()
    })
    .await;
    assert_eq!(loaded.snapshot.services().len(), 1);
    assert_eq!(source.last_changes, 1, "only the deleted Service");
    server.apply(
        Collection::Nodes,
        labelled(node(NODE, "192.168.0.10"), "role", "edge"),
    );
    poll_until(&mut source, "the MODIFIED node", |l| {
        l.snapshot.nodes()[NODE]
            .labels
            .get("role")
            .map(String::as_str)
            == Some("edge")
    })
    .await;
    assert_eq!(
        server.count(Collection::Services, false),
        1,
        "no relist was needed"
    );
}

#[tokio::test]
async fn a_dropped_watch_resumes_without_losing_an_update() {
    let server = server().await;
    let mut source = source(&server);
    poll_until(&mut source, "the initial lists", |_| true).await;
    wait_for_requests(&server, "the first service watch", |s| {
        s.count(Collection::Services, true) == 1
    })
    .await;
    // The connection drops, and the Service changes before the client is back.
    server.disconnect_watches();
    server.apply(
        Collection::Services,
        service("shop", "web", "10.96.0.10", 81),
    );
    let loaded = poll_until(&mut source, "the update made while disconnected", |l| {
        web_port(l) == Some(81)
    })
    .await;
    assert_eq!(slice_count(&loaded), 1);
    assert!(
        server.count(Collection::Services, true) >= 2,
        "watched again"
    );
    assert_eq!(
        server.count(Collection::Services, false),
        1,
        "resumed, not relisted"
    );
}

async fn gone_forces_a_relist(mode: GoneMode) {
    let server = server().await;
    let mut source = source(&server);
    poll_until(&mut source, "the initial lists", |_| true).await;
    wait_for_requests(&server, "the first watches", |s| {
        s.count(Collection::Services, true) == 1 && s.count(Collection::EndpointSlices, true) == 1
    })
    .await;
    // Changes whose events are compacted away: only a relist can see them.
    server.compact(
        mode,
        vec![(
            Collection::Services,
            service("shop", "web", "10.96.0.10", 8443),
        )],
        vec![(Collection::EndpointSlices, "shop", "web-abc")],
    );
    let loaded = poll_until(&mut source, "the relisted state", |l| {
        web_port(l) == Some(8443) && slice_count(l) == 0
    })
    .await;
    assert!(
        loaded.snapshot.nodes().contains_key(NODE),
        "the node store was kept"
    );
    assert!(server.count(Collection::Services, false) >= 2, "relisted");
    assert!(
        server.count(Collection::EndpointSlices, false) >= 2,
        "relisted"
    );
    // And it is watching again: a later event arrives.
    server.apply(
        Collection::Services,
        service("shop", "web", "10.96.0.10", 9443),
    );
    poll_until(&mut source, "an event after the relist", |l| {
        web_port(l) == Some(9443)
    })
    .await;
}

#[tokio::test]
async fn http_410_gone_forces_a_relist() {
    gone_forces_a_relist(GoneMode::HttpStatus).await;
}

#[tokio::test]
async fn error_event_410_forces_a_relist() {
    gone_forces_a_relist(GoneMode::ErrorEvent).await;
}

#[tokio::test]
async fn service_cidrs_come_through_and_follow_changes() {
    let server = server().await;
    let cidr = |name: &str, cidrs: &[&str]| {
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
            "metadata": {"name": name},
            "spec": {"cidrs": cidrs},
        })
    };
    server.apply(
        Collection::ServiceCidrs,
        cidr("kubernetes", &["10.96.0.0/16"]),
    );
    let mut source = source(&server);
    let loaded = poll_until(&mut source, "the initial lists", |l| {
        !l.snapshot.service_cidrs().is_empty()
    })
    .await;
    let ranges: Vec<String> = loaded
        .snapshot
        .service_cidr_ranges()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(ranges, ["10.96.0.0/16"]);
    server.apply(
        Collection::ServiceCidrs,
        cidr("extra", &["10.97.0.0/16", "fd00:10:96::/112"]),
    );
    let loaded = poll_until(&mut source, "the second ServiceCIDR", |l| {
        l.snapshot.service_cidrs().len() == 2
    })
    .await;
    assert_eq!(loaded.snapshot.service_cidr_ranges().len(), 3);
}

#[tokio::test]
async fn bookmarks_move_the_resume_version() {
    let server = server().await;
    let mut source = source(&server);
    poll_until(&mut source, "the initial lists", |_| true).await;
    let collections = [
        Collection::Services,
        Collection::EndpointSlices,
        Collection::Nodes,
        Collection::ServiceCidrs,
    ];
    wait_for_requests(&server, "the first watch of every collection", |s| {
        collections.iter().all(|c| s.count(*c, true) == 1)
    })
    .await;
    let bookmark = server.bookmark();
    // Once the bookmarks are queued on the four watches, the connections drop behind them.
    wait_for_requests(&server, "the bookmarks to be sent", |s| {
        s.bookmarks_sent() == collections.len()
    })
    .await;
    server.disconnect_watches();
    wait_for_requests(&server, "the service watch to resume", |s| {
        s.count(Collection::Services, true) == 2
    })
    .await;
    let resumed = server
        .requests()
        .into_iter()
        .rfind(|r| r.collection == Collection::Services && r.watch)
        .expect("a watch");
    assert_eq!(
        resumed.query.get("resourceVersion"),
        Some(&bookmark.to_string()),
        "resumed from the bookmark"
    );
    assert_eq!(source.poll(), None, "a bookmark is not a change");
}

#[tokio::test]
async fn a_bad_object_is_reported_and_the_others_come_through() {
    let server = server().await;
    server.apply(
        Collection::Services,
        service("shop", "bad", "10.96.0.300", 80),
    );
    server.apply(
        Collection::EndpointSlices,
        slice("shop", "bad-1", "bad", &["not-an-ip"]),
    );
    let mut source = source(&server);
    let loaded = poll_until(&mut source, "the initial lists", |_| true).await;
    assert_eq!(web_port(&loaded), Some(80));
    // The Service has no usable cluster IP and is skipped; the slice is kept without its
    // one bad endpoint.
    assert_eq!(loaded.snapshot.services().len(), 1);
    assert_eq!(slice_count(&loaded), 2);
    let bad_slice = loaded
        .snapshot
        .endpoint_slices()
        .get(&ObjectKey::new("shop", "bad-1"))
        .expect("the bad slice is kept");
    assert!(bad_slice.endpoints.is_empty());
    let problems: Vec<String> = loaded.problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        problems,
        [
            "kubernetes API: Service shop/bad: spec.clusterIPs[0]: \"10.96.0.300\" is not an IP address; this cluster IP is left out; spec.clusterIPs: has no usable address; the Service is skipped",
            "kubernetes API: EndpointSlice shop/bad-1: endpoints[0].addresses[0]: \"not-an-ip\" is not an IP address; this endpoint is left out",
        ]
    );
    // Fixing it brings the Service in; a problem is reported once per object version, so
    // the unchanged bad slice is not reported again.
    server.apply(
        Collection::Services,
        service("shop", "bad", "10.96.0.30", 80),
    );
    let loaded = poll_until(&mut source, "the fixed service", |l| {
        l.snapshot.services().len() == 2
    })
    .await;
    assert_eq!(loaded.problems, []);
}

#[tokio::test]
async fn connects_through_a_kubeconfig_file_or_master() {
    let server = server().await;
    let dir = TestDir::new("kubeconfig");
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n\
         contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n\
         current-context: test\nusers:\n- name: test\n  user:\n    token: secret\n",
        server.url()
    );
    let path = dir.write("kubeconfig", &kubeconfig);
    let options = ConnectOptions {
        kubeconfig: Some(path),
        ..ConnectOptions::default()
    };
    let mut source = Mirrored::from(KubeSource::connect(&options, NODE).await.expect("connect"));
    poll_until(&mut source, "the lists through a kubeconfig", |l| {
        web_port(l) == Some(80)
    })
    .await;
    // kubeadm's kubeconfig.conf (a service account token file), pointed at the test
    // server (plain HTTP, so without its certificate-authority line).
    let fixture = include_str!("../../config/testdata/kubeadm-kubeconfig.conf");
    let token = dir.write("token", "service-account-token");
    let kubeadm: String = fixture
        .lines()
        .filter(|l| !l.contains("certificate-authority"))
        .map(|l| {
            l.replace("https://10.128.0.16:6443", &server.url())
                .replace(
                    "/var/run/secrets/kubernetes.io/serviceaccount/token",
                    &token.display().to_string(),
                )
        })
        .collect::<Vec<_>>()
        .join("\n");
    let options = ConnectOptions {
        kubeconfig: Some(dir.write("kubeconfig.conf", &kubeadm)),
        ..ConnectOptions::default()
    };
    let mut source = Mirrored::from(KubeSource::connect(&options, NODE).await.expect("connect"));
    poll_until(&mut source, "the lists through kubeadm's kubeconfig", |l| {
        web_port(l) == Some(80)
    })
    .await;
    let options = ConnectOptions {
        master: Some(server.url()),
        qps: 5.0,
        burst: 10,
        ..ConnectOptions::default()
    };
    let mut source = Mirrored::from(KubeSource::connect(&options, NODE).await.expect("connect"));
    poll_until(&mut source, "the lists through --master", |l| {
        web_port(l) == Some(80)
    })
    .await;
    let missing = ConnectOptions {
        kubeconfig: Some(dir.path().join("missing")),
        ..ConnectOptions::default()
    };
    let err = KubeSource::connect(&missing, NODE)
        .await
        .expect_err("missing kubeconfig");
    assert!(err.to_string().starts_with("kubeconfig "), "{err}");
    let bad = ConnectOptions {
        master: Some("http://[::1".into()),
        ..ConnectOptions::default()
    };
    assert!(matches!(
        client_config(&bad).await,
        Err(ConnectError::Master { .. })
    ));
}

#[tokio::test]
async fn an_unreachable_server_is_retried_not_fatal() {
    // Nothing listens on the port of a server that was stopped.
    let url = {
        let server = TestApiServer::start().await;
        server.url()
    };
    let client = Client::try_from(::kube::Config::new(url.parse().unwrap())).unwrap();
    let mut source = Mirrored::from(KubeSource::start(client, NODE));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(!source.synced());
    assert_eq!(source.poll(), None);
    assert!(
        source.source.tasks.iter().all(|t| !t.is_finished()),
        "the watches keep retrying"
    );
}
