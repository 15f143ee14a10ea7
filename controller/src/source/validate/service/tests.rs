//! Tests of Service validation on manifests as `kubectl get -o yaml` prints them: what is
//! programmed, and a table of every rule with the upstream rule it mirrors.

use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;
use kproxy_dataplane::plan::Protocol;
use serde_json::{Value, json};

use super::super::validate_service;
use crate::model::{self, ObjectKey, ServicePortSpec, SkipReason};
use crate::source::test_support::{patched, yaml};

const CLUSTER_IP: &str = r#"
apiVersion: v1
kind: Service
metadata:
  creationTimestamp: "2025-03-01T10:00:00Z"
  labels:
    app: web
  name: web
  namespace: shop
  resourceVersion: "1234"
  uid: 6f1c2c55-1d7e-4c7e-9a55-2f1f0e7c8a11
spec:
  clusterIP: 10.96.12.34
  clusterIPs:
  - 10.96.12.34
  internalTrafficPolicy: Cluster
  ipFamilies:
  - IPv4
  ipFamilyPolicy: SingleStack
  ports:
  - name: http
    port: 80
    protocol: TCP
    targetPort: 8080
  selector:
    app: web
  sessionAffinity: None
  type: ClusterIP
status:
  loadBalancer: {}
"#;

const LOAD_BALANCER: &str = r#"
apiVersion: v1
kind: Service
metadata:
  annotations:
    metallb.universe.tf/ip-allocated-from-pool: public
  name: shop-lb
  namespace: shop
spec:
  allocateLoadBalancerNodePorts: true
  clusterIP: 10.96.200.7
  clusterIPs:
  - 10.96.200.7
  externalTrafficPolicy: Local
  healthCheckNodePort: 31234
  internalTrafficPolicy: Cluster
  ipFamilies:
  - IPv4
  ipFamilyPolicy: SingleStack
  loadBalancerSourceRanges:
  - 203.0.113.0/24
  ports:
  - name: https
    nodePort: 30443
    port: 443
    protocol: TCP
    targetPort: 8443
  - name: dns
    nodePort: 30053
    port: 53
    protocol: UDP
    targetPort: 5353
  selector:
    app: shop
  sessionAffinity: None
  type: LoadBalancer
status:
  loadBalancer:
    ingress:
    - ip: 198.51.100.10
      ipMode: VIP
    - hostname: lb.example.com
    - ip: 198.51.100.11
      ipMode: Proxy
"#;

/// What kproxy programs of a Service, and its problems as displayed.
fn checked(value: &Value) -> (Option<model::Service>, Vec<String>) {
    let service: Service = serde_json::from_value(value.clone()).expect("decodes");
    let checked = validate_service(&service);
    let shown = checked.problems.iter().map(ToString::to_string).collect();
    (checked.value, shown)
}

fn validate(value: &Value) -> Result<model::Service, Vec<String>> {
    match checked(value) {
        (Some(service), problems) if problems.is_empty() => Ok(service),
        (_, problems) => Err(problems),
    }
}

/// A Service without problems.
fn ok(base: &str, patches: &[(&str, Value)]) -> model::Service {
    validate(&patched(base, patches)).expect("valid")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test IP")
}

fn net(s: &str) -> IpNet {
    s.parse().expect("test CIDR")
}

fn port(name: &str, protocol: Protocol, port: u16, node_port: Option<u16>) -> ServicePortSpec {
    ServicePortSpec {
        name: name.into(),
        protocol,
        port,
        node_port,
    }
}

#[test]
fn cluster_ip_service_validates() {
    let service = ok(CLUSTER_IP, &[]);
    let expected = model::Service {
        key: ObjectKey::new("shop", "web"),
        skip: None,
        cluster_ips: vec![ip("10.96.12.34")],
        ports: vec![port("http", Protocol::Tcp, 80, None)],
        external_ips: vec![],
        load_balancer_ips: vec![],
        load_balancer_source_ranges: vec![],
        session_affinity_timeout: None,
        external_policy_local: false,
        internal_policy_local: false,
        health_check_node_port: None,
    };
    assert_eq!(service, expected);
}

#[test]
fn load_balancer_service_validates() {
    let service = ok(LOAD_BALANCER, &[]);
    assert_eq!(service.skip, None);
    assert_eq!(
        service.ports,
        [
            port("https", Protocol::Tcp, 443, Some(30443)),
            port("dns", Protocol::Udp, 53, Some(30053)),
        ]
    );
    assert_eq!(service.load_balancer_ips, [ip("198.51.100.10")]);
    let range: IpNet = "203.0.113.0/24".parse().expect("net");
    assert_eq!(service.load_balancer_source_ranges, [range]);
    assert!(service.external_policy_local);
    assert_eq!(service.health_check_node_port, Some(31234));
}

#[test]
fn missing_namespace_defaults_and_missing_name_skips_the_service() {
    let mut value = yaml(CLUSTER_IP);
    value["metadata"]
        .as_object_mut()
        .expect("map")
        .remove("namespace");
    assert_eq!(
        validate(&value).expect("valid").key,
        ObjectKey::new("default", "web")
    );
    value["metadata"]
        .as_object_mut()
        .expect("map")
        .remove("name");
    assert_eq!(
        checked(&value),
        (
            None,
            vec!["metadata.name: is required; the object is skipped".into()]
        )
    );
}

#[test]
fn other_proxys_services_are_skipped_unchecked() {
    let service = ok(
        CLUSTER_IP,
        &[
            (
                "/metadata/labels/service.kubernetes.io~1service-proxy-name",
                json!("cilium"),
            ),
            ("/spec/type", json!("Bogus")),
        ],
    );
    assert_eq!(service.skip, Some(SkipReason::OtherProxy("cilium".into())));
    assert!(service.ports.is_empty());
}

#[test]
fn external_name_services_are_skipped() {
    let value = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "db", "namespace": "shop"},
        "spec": {"type": "ExternalName", "externalName": "db.example.com"},
    });
    assert_eq!(
        validate(&value).expect("valid").skip,
        Some(SkipReason::ExternalName)
    );
}

#[test]
fn headless_services_are_skipped() {
    let service = ok(
        CLUSTER_IP,
        &[
            ("/spec/clusterIP", json!("None")),
            ("/spec/clusterIPs", json!(["None"])),
        ],
    );
    assert_eq!(service.skip, Some(SkipReason::Headless));
    let service = ok(
        CLUSTER_IP,
        &[
            ("/spec/clusterIP", json!("None")),
            ("/spec/clusterIPs", json!(null)),
        ],
    );
    assert_eq!(service.skip, Some(SkipReason::Headless));
}

#[test]
fn services_without_cluster_ip_are_skipped_and_need_no_ports() {
    let service = ok(
        CLUSTER_IP,
        &[
            ("/spec/clusterIP", json!(null)),
            ("/spec/clusterIPs", json!(null)),
            ("/spec/ports", json!([])),
        ],
    );
    assert_eq!(service.skip, Some(SkipReason::NoClusterIp));
    let value = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}});
    assert_eq!(
        validate(&value).expect("valid").skip,
        Some(SkipReason::NoClusterIp)
    );
}

#[test]
fn dual_stack_cluster_ips_keep_their_order() {
    let service = ok(
        CLUSTER_IP,
        &[
            ("/spec/clusterIP", json!("fd00:10:96::1a")),
            ("/spec/clusterIPs", json!(["fd00:10:96::1a", "10.96.12.34"])),
            ("/spec/ipFamilies", json!(["IPv6", "IPv4"])),
            ("/spec/ipFamilyPolicy", json!("PreferDualStack")),
        ],
    );
    assert_eq!(
        service.cluster_ips,
        [ip("fd00:10:96::1a"), ip("10.96.12.34")]
    );
}

/// How a row expects the programmed Service to differ from the unpatched one.
enum Expect {
    /// Programmed as the base, changed by this function.
    Programmed(fn(&mut model::Service)),
    /// Nothing of it is programmed.
    Skipped,
}

/// One rule: a patch of a base manifest, what kproxy programs, the problems it reports,
/// and the upstream rule this mirrors.
struct Row {
    rule: &'static str,
    base: &'static str,
    patches: Vec<(&'static str, Value)>,
    expect: Expect,
    problems: &'static [&'static str],
}

fn row(
    rule: &'static str,
    base: &'static str,
    patches: Vec<(&'static str, Value)>,
    expect: Expect,
    problems: &'static [&'static str],
) -> Row {
    Row {
        rule,
        base,
        patches,
        expect,
        problems,
    }
}

use Expect::{Programmed, Skipped};

/// Every validation rule of a Service. Sources (kubernetes/kubernetes): "API" is
/// pkg/apis/core/validation/validation.go (ValidateService and the functions it calls),
/// "allocator" is pkg/registry/core/service/portallocator, "kube-proxy" is
/// pkg/proxy/serviceport.go newBaseServiceInfo and pkg/proxy/util.
fn rules() -> Vec<Row> {
    vec![
        row(
            "allocator: the NodePort range is the API server's --service-node-port-range, \
             checked only when allocating; kube-proxy programs any nodePort (its own proxier \
             tests use 3001)",
            CLUSTER_IP,
            vec![
                ("/spec/type", json!("NodePort")),
                ("/spec/ports/0/nodePort", json!(3001)),
            ],
            Programmed(|s| s.ports[0].node_port = Some(3001)),
            &[],
        ),
        row(
            "API: IsValidPortNum(nodePort); a NodePort that is no port number cannot be \
             programmed, the port still is",
            CLUSTER_IP,
            vec![
                ("/spec/type", json!("NodePort")),
                ("/spec/ports/0/nodePort", json!(70000)),
            ],
            Programmed(|_| {}),
            &["spec.ports[0].nodePort: 70000 is not in 1-65535; this NodePort is left out"],
        ),
        row(
            "API: nodePort is Forbidden on type ClusterIP; kube-proxy reads port.NodePort \
             whatever the type",
            CLUSTER_IP,
            vec![("/spec/ports/0/nodePort", json!(30080))],
            Programmed(|s| s.ports[0].node_port = Some(30080)),
            &[
                "spec.ports[0].nodePort: 30080 is set on a Service of type ClusterIP (an API server would refuse it); programmed, as kube-proxy does",
            ],
        ),
        row(
            "API: nodePort 0 means unallocated (allocateLoadBalancerNodePorts: false)",
            LOAD_BALANCER,
            vec![("/spec/ports/1/nodePort", json!(0))],
            Programmed(|s| s.ports[1].node_port = None),
            &[],
        ),
        row(
            "API: IsValidPortNum(port); the other ports are still programmed",
            LOAD_BALANCER,
            vec![("/spec/ports/0/port", json!(0))],
            Programmed(|s| {
                s.ports.remove(0);
            }),
            &["spec.ports[0].port: 0 is not in 1-65535; this port is left out"],
        ),
        row(
            "API: IsValidPortNum(port) (65536 does not fit the kernel's 16 bits)",
            CLUSTER_IP,
            vec![("/spec/ports/0/port", json!(65536))],
            Programmed(|s| s.ports.clear()),
            &["spec.ports[0].port: 65536 is not in 1-65535; this port is left out"],
        ),
        row(
            "API: supportedPortProtocols (TCP, UDP, SCTP); no rule can match another",
            LOAD_BALANCER,
            vec![("/spec/ports/1/protocol", json!("ICMP"))],
            Programmed(|s| {
                s.ports.remove(1);
            }),
            &[
                "spec.ports[1].protocol: \"ICMP\" is not one of TCP, UDP, SCTP; this port is left out",
            ],
        ),
        row(
            "API: protocol values are case-sensitive",
            CLUSTER_IP,
            vec![("/spec/ports/0/protocol", json!("tcp"))],
            Programmed(|s| s.ports.clear()),
            &[
                "spec.ports[0].protocol: \"tcp\" is not one of TCP, UDP, SCTP; this port is left out",
            ],
        ),
        row(
            "API: ports must not be empty; kube-proxy has nothing to program",
            CLUSTER_IP,
            vec![("/spec/ports", json!([]))],
            Programmed(|s| s.ports.clear()),
            &[
                "spec.ports: is empty (an API server would refuse it); the Service has nothing to program",
            ],
        ),
        row(
            "API: port names are required when there are several; kube-proxy keys ports by \
             name and protocol, so an unnamed port still has a key",
            CLUSTER_IP,
            vec![("/spec/ports/1", json!({"port": 81}))],
            Programmed(|s| s.ports.push(port("", Protocol::Tcp, 81, None))),
            &[
                "spec.ports[1].name: is required when the Service has more than one port (an API server would refuse it); programmed unnamed",
            ],
        ),
        row(
            "API: duplicate port names; kube-proxy's ServicePortName is name and protocol, \
             one key per port: the first keeps it",
            CLUSTER_IP,
            vec![("/spec/ports/1", json!({"name": "http", "port": 81}))],
            Programmed(|_| {}),
            &[
                "spec.ports[1].name: \"http\"/TCP is also the name of spec.ports[0]; this port is left out",
            ],
        ),
        row(
            "API: duplicate port names; with another protocol the key differs",
            CLUSTER_IP,
            vec![(
                "/spec/ports/1",
                json!({"name": "http", "port": 80, "protocol": "UDP"}),
            )],
            Programmed(|s| s.ports.push(port("http", Protocol::Udp, 80, None))),
            &[
                "spec.ports[1].name: \"http\" is also the name of an earlier port (an API server would refuse it); programmed, its protocol tells them apart",
            ],
        ),
        row(
            "API: duplicate port/protocol pairs; two rules for one destination",
            CLUSTER_IP,
            vec![("/spec/ports/1", json!({"name": "alt", "port": 80}))],
            Programmed(|_| {}),
            &["spec.ports[1].port: 80/TCP is also used by spec.ports[0]; this port is left out"],
        ),
        row(
            "API: one port number for TCP and UDP is fine",
            CLUSTER_IP,
            vec![(
                "/spec/ports/1",
                json!({"name": "dns", "port": 80, "protocol": "UDP"}),
            )],
            Programmed(|s| s.ports.push(port("dns", Protocol::Udp, 80, None))),
            &[],
        ),
        row(
            "API: duplicate nodePort/protocol pairs; only that NodePort is left out",
            LOAD_BALANCER,
            vec![(
                "/spec/ports/1",
                json!({"name": "alt", "port": 444, "nodePort": 30443}),
            )],
            Programmed(|s| s.ports[1] = port("alt", Protocol::Tcp, 444, None)),
            &[
                "spec.ports[1].nodePort: 30443/TCP is also used by spec.ports[0]; this NodePort is left out",
            ],
        ),
        row(
            "API: one nodePort for TCP and UDP is fine (ValidateService allows it per protocol)",
            LOAD_BALANCER,
            vec![("/spec/ports/1/nodePort", json!(30443))],
            Programmed(|s| s.ports[1].node_port = Some(30443)),
            &[],
        ),
        row(
            "API: the type must be known; kube-proxy compares it only with ExternalName, \
             NodePort and LoadBalancer",
            CLUSTER_IP,
            vec![("/spec/type", json!("Internal"))],
            Programmed(|_| {}),
            &[
                "spec.type: \"Internal\" is not one of ClusterIP, NodePort, LoadBalancer, ExternalName (an API server would refuse it); read as ClusterIP",
            ],
        ),
        row(
            "API: clusterIPs[0] must equal clusterIP; kube-proxy's GetClusterIPByFamily reads \
             clusterIPs",
            CLUSTER_IP,
            vec![("/spec/clusterIP", json!("10.96.0.1"))],
            Programmed(|_| {}),
            &[
                "spec.clusterIP: \"10.96.0.1\" differs from spec.clusterIPs[0] \"10.96.12.34\" (an API server would refuse it); spec.clusterIPs is used",
            ],
        ),
        row(
            "API: ValidateServiceClusterIPsRelatedFields parses every cluster IP; a bad one \
             is left out, the other family still works",
            CLUSTER_IP,
            vec![
                ("/spec/clusterIP", json!("fd00::x")),
                ("/spec/clusterIPs", json!(["fd00::x", "10.96.12.34"])),
                ("/spec/ipFamilies", json!(["IPv6", "IPv4"])),
            ],
            Programmed(|_| {}),
            &["spec.clusterIPs[0]: \"fd00::x\" is not an IP address; this cluster IP is left out"],
        ),
        row(
            "API: at most one cluster IP per family; GetClusterIPByFamily takes the first",
            CLUSTER_IP,
            vec![("/spec/clusterIPs", json!(["10.96.12.34", "10.96.12.35"]))],
            Programmed(|_| {}),
            &[
                "spec.clusterIPs[1]: 10.96.12.35 is a second IPv4 cluster IP (an API server would refuse it); only the first, 10.96.12.34, is programmed",
            ],
        ),
        row(
            "API: clusterIPs[i] must match ipFamilies[i]; kube-proxy's GetClusterIPByFamily \
             relies on it, kproxy goes by the address",
            CLUSTER_IP,
            vec![("/spec/ipFamilies", json!(["IPv6"]))],
            Programmed(|_| {}),
            &[
                "spec.clusterIPs[0]: 10.96.12.34 is IPv4 but spec.ipFamilies[0] is \"IPv6\" (an API server would refuse it); programmed as IPv4",
            ],
        ),
        row(
            "k8s.io/utils/net ParseIPSloppy: legacy addresses with leading zeros (admitted \
             before StrictIPCIDRValidation) are decimal",
            CLUSTER_IP,
            vec![
                ("/spec/clusterIP", json!("010.096.012.034")),
                ("/spec/clusterIPs", json!(["010.096.012.034"])),
                ("/spec/externalIPs", json!(["192.000.002.007", ""])),
            ],
            Programmed(|s| s.external_ips = vec![ip("192.0.2.7")]),
            &[],
        ),
        row(
            "no cluster IP parses: nothing of the Service can be keyed",
            CLUSTER_IP,
            vec![
                ("/spec/clusterIP", json!("10.96.12")),
                ("/spec/clusterIPs", json!(null)),
            ],
            Skipped,
            &[
                "spec.clusterIP: \"10.96.12\" is not an IP address; this cluster IP is left out",
                "spec.clusterIPs: has no usable address; the Service is skipped",
            ],
        ),
        row(
            "API: ValidateNonSpecialIP / IsValidIP for externalIPs; kube-proxy's \
             MapIPsByIPFamily drops what does not parse",
            CLUSTER_IP,
            vec![(
                "/spec/externalIPs",
                json!(["192.0.2.7", "example.com", "2001:db8::7"]),
            )],
            Programmed(|s| s.external_ips = vec![ip("192.0.2.7"), ip("2001:db8::7")]),
            &[
                "spec.externalIPs[1]: \"example.com\" is not an IP address; this address is left out",
            ],
        ),
        row(
            "API: ValidateLoadBalancerStatus parses ingress IPs; the others still work",
            LOAD_BALANCER,
            vec![(
                "/status/loadBalancer/ingress",
                json!([{"ip": "198.51.100.300"}, {"ip": "198.51.100.12"}]),
            )],
            Programmed(|s| s.load_balancer_ips = vec![ip("198.51.100.12")]),
            &[
                "status.loadBalancer.ingress[0].ip: \"198.51.100.300\" is not an IP address; this address is left out",
            ],
        ),
        row(
            "kube-proxy reads status.loadBalancer.ingress whatever the type",
            CLUSTER_IP,
            vec![(
                "/status/loadBalancer/ingress",
                json!([{"ip": "198.51.100.12"}]),
            )],
            Programmed(|s| s.load_balancer_ips = vec![ip("198.51.100.12")]),
            &[],
        ),
        row(
            "kube-proxy: ingress with ipMode Proxy is not a VIP (IsVIPMode)",
            LOAD_BALANCER,
            vec![(
                "/status/loadBalancer/ingress",
                json!([{"ip": "198.51.100.12", "ipMode": "Proxy"}]),
            )],
            Programmed(|s| s.load_balancer_ips.clear()),
            &[],
        ),
        row(
            "API: ValidateLoadBalancerSourceRanges wants CIDRs (trimmed); kube-proxy's \
             MapCIDRsByIPFamily drops what does not parse, which narrows the allow list",
            LOAD_BALANCER,
            vec![(
                "/spec/loadBalancerSourceRanges",
                json!(["10.0.0.0/33", " 172.16.5.4/12 "]),
            )],
            Programmed(|s| s.load_balancer_source_ranges = vec![net("172.16.0.0/12")]),
            &[
                "spec.loadBalancerSourceRanges[0]: \"10.0.0.0/33\" is not a CIDR; this range is left out",
            ],
        ),
        row(
            "no source range parses: an empty list would open the load balancer to every \
             source, so its IPs are left out instead",
            LOAD_BALANCER,
            vec![("/spec/loadBalancerSourceRanges", json!(["nowhere"]))],
            Programmed(|s| {
                s.load_balancer_ips.clear();
                s.load_balancer_source_ranges.clear();
            }),
            &[
                "spec.loadBalancerSourceRanges[0]: \"nowhere\" is not a CIDR; this range is left out",
                "spec.loadBalancerSourceRanges: has no usable range (an empty list would admit every source); every load-balancer IP of the Service is left out",
            ],
        ),
        row(
            "API: sessionAffinity is None or ClientIP; kube-proxy compares it with ClientIP",
            CLUSTER_IP,
            vec![("/spec/sessionAffinity", json!("Cookie"))],
            Programmed(|_| {}),
            &[
                "spec.sessionAffinity: \"Cookie\" is not one of None, ClientIP (an API server would refuse it); read as None",
            ],
        ),
        row(
            "API defaulting: ClientIP timeoutSeconds defaults to 10800",
            CLUSTER_IP,
            vec![("/spec/sessionAffinity", json!("ClientIP"))],
            Programmed(|s| s.session_affinity_timeout = Some(10800)),
            &[],
        ),
        row(
            "API: timeoutSeconds is at most 86400; kube-proxy programs what it is given",
            CLUSTER_IP,
            vec![
                ("/spec/sessionAffinity", json!("ClientIP")),
                (
                    "/spec/sessionAffinityConfig",
                    json!({"clientIP": {"timeoutSeconds": 172800}}),
                ),
            ],
            Programmed(|s| s.session_affinity_timeout = Some(172_800)),
            &[
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds: 172800 is more than 86400 (an API server would refuse it); programmed as given",
            ],
        ),
        row(
            "API: timeoutSeconds is at least 1; no timeout of 0 can be programmed",
            CLUSTER_IP,
            vec![
                ("/spec/sessionAffinity", json!("ClientIP")),
                (
                    "/spec/sessionAffinityConfig",
                    json!({"clientIP": {"timeoutSeconds": 0}}),
                ),
            ],
            Programmed(|_| {}),
            &[
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds: 0 is not a positive number of seconds; session affinity is left out",
            ],
        ),
        row(
            "kube-proxy: a timeout without ClientIP affinity means nothing",
            CLUSTER_IP,
            vec![(
                "/spec/sessionAffinityConfig",
                json!({"clientIP": {"timeoutSeconds": 0}}),
            )],
            Programmed(|_| {}),
            &[],
        ),
        row(
            "API: externalTrafficPolicy is Cluster or Local; kube-proxy compares it with Local",
            LOAD_BALANCER,
            vec![("/spec/externalTrafficPolicy", json!("Global"))],
            Programmed(|s| {
                s.external_policy_local = false;
                s.health_check_node_port = None;
            }),
            &[
                "spec.externalTrafficPolicy: \"Global\" is not one of Cluster, Local (an API server would refuse it); read as Cluster",
            ],
        ),
        row(
            "kube-proxy ExternalPolicyLocal: only for externally accessible Services",
            CLUSTER_IP,
            vec![("/spec/externalTrafficPolicy", json!("Local"))],
            Programmed(|_| {}),
            &[],
        ),
        row(
            "kube-proxy ExternallyAccessible: external IPs make a ClusterIP Service external",
            CLUSTER_IP,
            vec![
                ("/spec/externalTrafficPolicy", json!("Local")),
                ("/spec/externalIPs", json!(["192.0.2.7"])),
            ],
            Programmed(|s| {
                s.external_policy_local = true;
                s.external_ips = vec![ip("192.0.2.7")];
            }),
            &[],
        ),
        row(
            "API: internalTrafficPolicy is Cluster or Local",
            CLUSTER_IP,
            vec![("/spec/internalTrafficPolicy", json!("Node"))],
            Programmed(|_| {}),
            &[
                "spec.internalTrafficPolicy: \"Node\" is not one of Cluster, Local (an API server would refuse it); read as Cluster",
            ],
        ),
        row(
            "API: IsValidPortNum(healthCheckNodePort); only the health check is lost",
            LOAD_BALANCER,
            vec![("/spec/healthCheckNodePort", json!(70000))],
            Programmed(|s| s.health_check_node_port = None),
            &[
                "spec.healthCheckNodePort: 70000 is not in 1-65535; the health check server of this Service is left out",
            ],
        ),
        row(
            "kube-proxy NeedsHealthCheck: LoadBalancer with externalTrafficPolicy Local only",
            LOAD_BALANCER,
            vec![("/spec/type", json!("NodePort"))],
            Programmed(|s| s.health_check_node_port = None),
            &[],
        ),
    ]
}

#[test]
fn every_rule_programs_what_it_can() {
    let mut failures = Vec::new();
    for row in rules() {
        let (value, problems) = checked(&patched(row.base, &row.patches));
        let expected = match row.expect {
            Skipped => None,
            Programmed(change) => {
                let mut service = ok(row.base, &[]);
                change(&mut service);
                Some(service)
            }
        };
        if value != expected || problems != row.problems {
            failures.push(format!(
                "rule: {}\n  programmed: {value:?}\n  expected:   {expected:?}\n  problems: {problems:#?}",
                row.rule
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn all_problems_of_a_service_are_reported_together() {
    let ports = json!([
        {"name": "http", "port": 0, "protocol": "ICMP", "nodePort": 1},
        {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053},
    ]);
    let (service, problems) = checked(&patched(
        LOAD_BALANCER,
        &[
            ("/spec/ports", ports),
            ("/spec/externalIPs", json!(["nope"])),
            ("/spec/sessionAffinity", json!("Sticky")),
        ],
    ));
    assert_eq!(
        service.expect("programmed").ports,
        [port("dns", Protocol::Udp, 53, Some(30053))]
    );
    assert_eq!(
        problems,
        [
            "spec.ports[0].port: 0 is not in 1-65535; this port is left out",
            "spec.ports[0].protocol: \"ICMP\" is not one of TCP, UDP, SCTP; this port is left out",
            "spec.externalIPs[0]: \"nope\" is not an IP address; this address is left out",
            "spec.sessionAffinity: \"Sticky\" is not one of None, ClientIP (an API server would refuse it); read as None",
        ]
    );
}

#[test]
fn protocols_default_to_tcp() {
    let ports = json!([
        {"name": "a", "port": 1},
        {"name": "b", "port": 2, "protocol": "UDP"},
        {"name": "c", "port": 3, "protocol": "SCTP"},
    ]);
    let service = ok(CLUSTER_IP, &[("/spec/ports", ports)]);
    let protocols: Vec<Protocol> = service.ports.iter().map(|p| p.protocol).collect();
    assert_eq!(protocols, [Protocol::Tcp, Protocol::Udp, Protocol::Sctp]);
}

#[test]
fn source_ranges_are_trimmed_truncated_cidrs_or_bare_addresses() {
    let ranges = json!([" 10.0.0.0/8 ", "192.0.2.7", "2001:db8::1", "172.16.5.4/12"]);
    let (service, problems) = checked(&patched(
        LOAD_BALANCER,
        &[("/spec/loadBalancerSourceRanges", ranges)],
    ));
    let service = service.expect("programmed");
    assert_eq!(
        problems,
        [
            "spec.loadBalancerSourceRanges[1]: \"192.0.2.7\" is an address, not a CIDR (an API server would refuse it); programmed as 192.0.2.7/32",
            "spec.loadBalancerSourceRanges[2]: \"2001:db8::1\" is an address, not a CIDR (an API server would refuse it); programmed as 2001:db8::1/128",
        ]
    );
    let expected: Vec<IpNet> = [
        "10.0.0.0/8",
        "192.0.2.7/32",
        "2001:db8::1/128",
        "172.16.0.0/12",
    ]
    .iter()
    .map(|s| net(s))
    .collect();
    assert_eq!(service.load_balancer_source_ranges, expected);
}

#[test]
fn cluster_ip_alone_is_used_when_cluster_ips_is_unset() {
    let service = ok(
        CLUSTER_IP,
        &[
            ("/spec/clusterIPs", json!(null)),
            ("/spec/ipFamilies", json!(null)),
        ],
    );
    assert_eq!(service.cluster_ips, [ip("10.96.12.34")]);
}
