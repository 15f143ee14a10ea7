//! Tests of manifest loading: documents, Lists, kinds, duplicates, limits, directories.

use std::path::Path;

use super::*;
use crate::model::SkipReason;
use crate::source::MAX_DOCUMENT_BYTES;
use crate::source::test_support::TestDir;

const SERVICE: &str = r#"apiVersion: v1
kind: Service
metadata:
  labels:
    app: web
  name: web
  namespace: default
spec:
  clusterIP: 10.96.12.34
  clusterIPs:
  - 10.96.12.34
  ipFamilies:
  - IPv4
  ports:
  - name: http
    port: 80
    protocol: TCP
    targetPort: 8080
  - name: metrics
    port: 9090
    protocol: TCP
    targetPort: 9090
  selector:
    app: web
  type: ClusterIP
"#;

const SLICE: &str = r#"addressType: IPv4
apiVersion: discovery.k8s.io/v1
endpoints:
- addresses:
  - 10.244.1.5
  conditions:
    ready: true
  nodeName: node-a
kind: EndpointSlice
metadata:
  labels:
    kubernetes.io/service-name: web
  name: web-x7k2p
  namespace: default
ports:
- name: http
  port: 8080
  protocol: TCP
"#;

const NODE: &str = r#"apiVersion: v1
kind: Node
metadata:
  labels:
    topology.kubernetes.io/zone: zone-a
  name: node-a
status:
  addresses:
  - address: 192.168.10.21
    type: InternalIP
"#;

fn load(path: &Path) -> Loaded {
    load_manifests(path)
}

fn shown(loaded: &Loaded) -> Vec<String> {
    loaded.problems.iter().map(ToString::to_string).collect()
}

fn service_key() -> ObjectKey {
    ObjectKey::new("default", "web")
}

#[test]
fn a_broken_document_does_not_hide_the_others() {
    let dir = TestDir::new("broken-doc");
    let text = format!("{SERVICE}---\nkind: Service\nspec: [1, 2\n---\n{SLICE}---\n{NODE}");
    let path = dir.write("web.yaml", &text);
    let loaded = load(&path);
    assert!(loaded.snapshot.services().contains_key(&service_key()));
    assert_eq!(loaded.snapshot.endpoint_slices().len(), 1);
    assert!(loaded.snapshot.nodes().contains_key("node-a"));
    assert_eq!(loaded.problems.len(), 1, "{:?}", shown(&loaded));
    let problem = &loaded.problems[0];
    assert_eq!(problem.location, ManifestLocation::document(&path, 2));
    assert!(matches!(problem.kind, ProblemKind::Syntax(_)));
    let message = problem.to_string();
    let prefix = format!("{} document 2: invalid YAML: ", path.display());
    assert!(message.starts_with(&prefix), "{message}");
    // The service is 25 lines long: the broken flow sequence starts on line 28.
    assert!(
        message.contains("28"),
        "line of the file expected: {message}"
    );
}

#[test]
fn invalid_objects_are_reported_with_file_document_and_name() {
    let dir = TestDir::new("invalid");
    let bad = SERVICE.replace("port: 9090", "port: 0");
    let path = dir.write("web.yaml", &format!("---\n{NODE}---\n{bad}"));
    let loaded = load(&path);
    assert_eq!(
        shown(&loaded),
        [format!(
            "{} document 2: Service default/web: spec.ports[1].port: 0 is not in 1-65535; this port is left out",
            path.display()
        )]
    );
    let service = &loaded.snapshot.services()[&service_key()];
    let ports: Vec<&str> = service.ports.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(ports, ["http"], "the other port is still programmed");
    assert_eq!(loaded.snapshot.nodes().len(), 1);
}

#[test]
fn objects_that_do_not_decode_are_reported_by_name() {
    let dir = TestDir::new("decode");
    let bad = SERVICE.replace("port: 80\n", "port: eighty\n");
    let path = dir.write("web.yaml", &bad);
    let loaded = load(&path);
    assert_eq!(loaded.problems.len(), 1);
    let problem = &loaded.problems[0];
    assert!(matches!(problem.kind, ProblemKind::Decode(_)), "{problem}");
    let prefix = format!(
        "{} document 1: Service default/web: does not decode: ",
        path.display()
    );
    assert!(problem.to_string().starts_with(&prefix), "{problem}");
}

/// A manifest as an entry of a YAML sequence.
fn list_item(manifest: &str) -> String {
    let lines: Vec<String> = manifest
        .lines()
        .enumerate()
        .map(|(i, line)| format!("{}{line}\n", if i == 0 { "- " } else { "  " }))
        .collect();
    lines.concat()
}

#[test]
fn lists_expand_to_their_items() {
    let dir = TestDir::new("list");
    let list = format!(
        "apiVersion: v1\nitems:\n{}{}- apiVersion: v1\n  kind: ConfigMap\n  metadata:\n    name: settings\n- 42\nkind: List\nmetadata:\n  resourceVersion: \"\"\n",
        list_item(SERVICE),
        list_item(SLICE),
    );
    let path = dir.write("all.yaml", &list);
    let loaded = load(&path);
    assert!(loaded.snapshot.services().contains_key(&service_key()));
    assert_eq!(loaded.snapshot.endpoint_slices().len(), 1);
    assert_eq!(
        shown(&loaded),
        [format!(
            "{} document 1 items[3]: not an object (a mapping with apiVersion and kind)",
            path.display()
        )]
    );
}

#[test]
fn typed_lists_give_their_items_a_type() {
    let dir = TestDir::new("typed-list");
    let json = r#"{"apiVersion": "v1", "kind": "NodeList", "metadata": {"resourceVersion": "77"},
        "items": [{"metadata": {"name": "node-b"}, "status": {"addresses": [
            {"type": "InternalIP", "address": "192.168.10.22"}]}}]}"#;
    dir.write("nodes.json", json);
    dir.write(
        "empty.yaml",
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSliceList\nitems: null\n",
    );
    dir.write("bad.yaml", "apiVersion: v1\nkind: ServiceList\nitems: {}\n");
    let loaded = load(dir.path());
    assert!(loaded.snapshot.nodes().contains_key("node-b"));
    assert_eq!(
        shown(&loaded),
        [format!(
            "{}: items of ServiceList is not a sequence",
            ManifestLocation::document(dir.path().join("bad.yaml"), 1)
        )]
    );
}

#[test]
fn unknown_kinds_are_ignored() {
    let dir = TestDir::new("unknown");
    let text = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: web
data:
  port: "80"
---
apiVersion: discovery.k8s.io/v1beta1
kind: EndpointSlice
metadata:
  name: old
addressType: IPv4
"#;
    let path = dir.write("other.yaml", text);
    assert_eq!(load(&path), Loaded::default());
}

#[test]
fn documents_need_a_mapping_with_type_information() {
    let dir = TestDir::new("typeless");
    let path = dir.write(
        "x.yaml",
        "metadata:\n  name: web\n---\n- a\n- b\n---\nnull\n",
    );
    let loaded = load(&path);
    assert_eq!(
        shown(&loaded),
        [
            format!(
                "{} document 1: apiVersion and kind must be set (strings)",
                path.display()
            ),
            format!(
                "{} document 2: not an object (a mapping with apiVersion and kind)",
                path.display()
            ),
        ]
    );
}

#[test]
fn duplicates_keep_the_first_and_name_both_places() {
    let dir = TestDir::new("duplicates");
    let first = dir.write("a.yaml", SERVICE);
    let moved = SERVICE
        .replace("10.96.12.34", "10.96.99.99")
        .replace("  namespace: default\n", "");
    let second = dir.write("b.yaml", &format!("{NODE}---\n{moved}---\n{NODE}"));
    let other_namespace = SERVICE.replace("namespace: default", "namespace: shop");
    dir.write("c.yaml", &other_namespace);
    let loaded = load(dir.path());
    let kept = &loaded.snapshot.services()[&service_key()];
    assert_eq!(
        kept.cluster_ips,
        ["10.96.12.34".parse::<std::net::IpAddr>().expect("ip")]
    );
    assert!(
        loaded
            .snapshot
            .services()
            .contains_key(&ObjectKey::new("shop", "web"))
    );
    assert_eq!(
        shown(&loaded),
        [
            format!(
                "{} document 2: Service default/web: duplicate of the object at {} document 1, which is kept",
                second.display(),
                first.display()
            ),
            format!(
                "{} document 3: Node node-a: duplicate of the object at {} document 1, which is kept",
                second.display(),
                second.display()
            ),
        ]
    );
}

#[test]
fn a_service_and_its_slice_may_share_a_name() {
    let dir = TestDir::new("same-name");
    let slice = SLICE.replace("name: web-x7k2p", "name: web");
    let path = dir.write("web.yaml", &format!("{SERVICE}---\n{slice}"));
    let loaded = load(&path);
    assert!(loaded.problems.is_empty(), "{:?}", shown(&loaded));
    assert_eq!(loaded.snapshot.endpoint_slices().len(), 1);
}

#[test]
fn oversize_documents_are_rejected_and_the_others_load() {
    let dir = TestDir::new("oversize");
    let big = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: big\ndata:\n  blob: \"{}\"\n",
        "x".repeat(MAX_DOCUMENT_BYTES)
    );
    let path = dir.write("big.yaml", &format!("{SERVICE}---\n{big}---\n{NODE}"));
    let loaded = load(&path);
    assert_eq!(loaded.snapshot.services().len(), 1);
    assert_eq!(loaded.snapshot.nodes().len(), 1);
    assert_eq!(loaded.problems.len(), 1);
    assert_eq!(
        loaded.problems[0].location,
        ManifestLocation::document(&path, 2)
    );
    assert!(matches!(
        loaded.problems[0].kind,
        ProblemKind::DocumentTooLarge { .. }
    ));
}

#[test]
fn directories_are_walked_in_path_order() {
    let dir = TestDir::new("walk");
    dir.write("services/web.yaml", SERVICE);
    dir.write("services/.web.yaml.swp", "garbage: [");
    dir.write("slices/web.yml", SLICE);
    dir.write("README.md", "# not a manifest");
    let node_json = r#"{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-c"}}"#;
    dir.write("nodes/node-c.json", node_json);
    let loaded = load(dir.path());
    assert!(loaded.problems.is_empty(), "{:?}", shown(&loaded));
    assert_eq!(loaded.snapshot.services().len(), 1);
    assert_eq!(loaded.snapshot.endpoint_slices().len(), 1);
    assert!(loaded.snapshot.nodes().contains_key("node-c"));
}

#[test]
fn skipped_services_load_and_fqdn_slices_do_not() {
    let dir = TestDir::new("skipped");
    let external = "apiVersion: v1\nkind: Service\nmetadata:\n  name: db\nspec:\n  type: ExternalName\n  externalName: db.example.com\n";
    let fqdn = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: db-1\n  labels:\n    kubernetes.io/service-name: db\naddressType: FQDN\nendpoints:\n- addresses:\n  - db.example.com\n";
    let path = dir.write("db.yaml", &format!("{external}---\n{fqdn}"));
    let loaded = load(&path);
    assert!(loaded.problems.is_empty(), "{:?}", shown(&loaded));
    let db = &loaded.snapshot.services()[&ObjectKey::new("default", "db")];
    assert_eq!(db.skip, Some(SkipReason::ExternalName));
    assert!(loaded.snapshot.endpoint_slices().is_empty());
}

#[test]
fn unreadable_paths_are_problems() {
    let dir = TestDir::new("unreadable");
    let missing = dir.path().join("missing");
    let loaded = load(&missing);
    assert_eq!(loaded.snapshot, Snapshot::default());
    assert_eq!(loaded.problems.len(), 1);
    assert_eq!(
        loaded.problems[0].location,
        ManifestLocation::file(&missing)
    );
    assert!(matches!(
        loaded.problems[0].kind,
        ProblemKind::Unreadable(_)
    ));
    std::fs::write(dir.path().join("latin1.yaml"), b"name: caf\xe9\n").expect("write");
    let loaded = load(dir.path());
    assert!(matches!(loaded.problems[0].kind, ProblemKind::NotUtf8(_)));
}
