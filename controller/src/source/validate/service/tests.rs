//! Tests of Service validation, one or more per rule, on manifests as `kubectl get -o yaml`
//! prints them.

use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;
use kproxy_dataplane::plan::Protocol;
use serde_json::{Value, json};

use super::super::{ValidationOptions, validate_service};
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

fn validate(value: &Value) -> Result<model::Service, Vec<String>> {
    validate_with(value, &ValidationOptions::default())
}

fn validate_with(value: &Value, opts: &ValidationOptions) -> Result<model::Service, Vec<String>> {
    let service: Service = serde_json::from_value(value.clone()).expect("decodes");
    validate_service(&service, opts).map_err(|e| e.iter().map(ToString::to_string).collect())
}

fn ok(base: &str, patches: &[(&str, Value)]) -> model::Service {
    validate(&patched(base, patches)).expect("valid")
}

fn errors(base: &str, patches: &[(&str, Value)]) -> Vec<String> {
    validate(&patched(base, patches)).expect_err("invalid")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test IP")
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
fn missing_namespace_defaults_and_missing_name_is_an_error() {
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
        validate(&value).expect_err("invalid"),
        ["metadata.name: is required"]
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
fn unknown_type_is_an_error() {
    assert_eq!(
        errors(CLUSTER_IP, &[("/spec/type", json!("Internal"))]),
        ["spec.type: \"Internal\" is not one of ClusterIP, NodePort, LoadBalancer, ExternalName"]
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
    assert_eq!(
        errors(
            CLUSTER_IP,
            &[
                ("/spec/clusterIPs", json!(null)),
                ("/spec/clusterIP", json!("10.96.12"))
            ]
        ),
        ["spec.clusterIP: \"10.96.12\" is not an IP address"]
    );
}

#[test]
fn bad_cluster_ips_are_errors() {
    assert_eq!(
        errors(
            CLUSTER_IP,
            &[("/spec/clusterIPs", json!(["10.96.12.34", "fd00::x"]))]
        ),
        ["spec.clusterIPs[1]: \"fd00::x\" is not an IP address"]
    );
    assert_eq!(
        errors(
            CLUSTER_IP,
            &[("/spec/clusterIPs", json!(["10.96.12.34", "10.96.12.35"]))]
        ),
        [
            "spec.clusterIPs[1]: 10.96.12.35 is IPv4 like an earlier cluster IP: at most one per family"
        ]
    );
    let three = json!(["10.96.12.34", "fd00::1", "fd00::2"]);
    let found = errors(
        CLUSTER_IP,
        &[
            ("/spec/clusterIPs", three),
            ("/spec/ipFamilies", json!(null)),
        ],
    );
    assert_eq!(
        found[0],
        "spec.clusterIPs: has 3 addresses, at most 2 (one per family)"
    );
    assert_eq!(
        errors(CLUSTER_IP, &[("/spec/clusterIP", json!("10.96.0.1"))]),
        ["spec.clusterIP: \"10.96.0.1\" differs from spec.clusterIPs[0] \"10.96.12.34\""]
    );
}

#[test]
fn cluster_ips_must_match_ip_families() {
    assert_eq!(
        errors(CLUSTER_IP, &[("/spec/ipFamilies", json!(["IPv6"]))]),
        ["spec.clusterIPs[0]: 10.96.12.34 is IPv4 but spec.ipFamilies[0] is IPv6"]
    );
    assert_eq!(
        errors(CLUSTER_IP, &[("/spec/ipFamilies", json!(["IPv4", "IPv4"]))]),
        ["spec.ipFamilies[1]: \"IPv4\" repeats spec.ipFamilies[0]"]
    );
    assert_eq!(
        errors(CLUSTER_IP, &[("/spec/ipFamilies", json!(["v4"]))]),
        ["spec.ipFamilies[0]: \"v4\" is not one of IPv4, IPv6"]
    );
}

#[test]
fn ports_are_required_and_in_range() {
    assert_eq!(
        errors(CLUSTER_IP, &[("/spec/ports", json!([]))]),
        ["spec.ports: at least one port is required"]
    );
    let ports = json!([{"name": "http", "port": 80}, {"name": "admin", "port": 0}]);
    assert_eq!(
        errors(CLUSTER_IP, &[("/spec/ports", ports)]),
        ["spec.ports[1].port: 0 is not in 1-65535"]
    );
    let ports = json!([{"name": "http", "port": 65536}]);
    assert_eq!(
        errors(CLUSTER_IP, &[("/spec/ports", ports)]),
        ["spec.ports[0].port: 65536 is not in 1-65535"]
    );
}

#[test]
fn protocols_default_to_tcp_and_must_be_known() {
    let ports = json!([
        {"name": "a", "port": 1},
        {"name": "b", "port": 2, "protocol": "UDP"},
        {"name": "c", "port": 3, "protocol": "SCTP"},
    ]);
    let service = ok(CLUSTER_IP, &[("/spec/ports", ports)]);
    let protocols: Vec<Protocol> = service.ports.iter().map(|p| p.protocol).collect();
    assert_eq!(protocols, [Protocol::Tcp, Protocol::Udp, Protocol::Sctp]);
    for bad in ["HTTP", "tcp", ""] {
        let ports = json!([{"port": 80, "protocol": bad}]);
        assert_eq!(
            errors(CLUSTER_IP, &[("/spec/ports", ports)]),
            [format!(
                "spec.ports[0].protocol: {bad:?} is not one of TCP, UDP, SCTP"
            )]
        );
    }
}

#[test]
fn port_names_are_required_with_several_ports_and_unique() {
    let service = ok(CLUSTER_IP, &[("/spec/ports", json!([{"port": 80}]))]);
    assert_eq!(service.ports, [port("", Protocol::Tcp, 80, None)]);
    let ports = json!([{"name": "http", "port": 80}, {"port": 81}]);
    assert_eq!(
        errors(CLUSTER_IP, &[("/spec/ports", ports)]),
        ["spec.ports[1].name: is required when the Service has more than one port"]
    );
    let ports = json!([{"name": "http", "port": 80}, {"name": "http", "port": 81}]);
    assert_eq!(
        errors(CLUSTER_IP, &[("/spec/ports", ports)]),
        ["spec.ports[1].name: \"http\" is also the name of spec.ports[0]"]
    );
}

#[test]
fn port_and_protocol_pairs_are_unique() {
    let ports = json!([
        {"name": "dns", "port": 53, "protocol": "UDP"},
        {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
    ]);
    assert_eq!(ok(CLUSTER_IP, &[("/spec/ports", ports)]).ports.len(), 2);
    let ports = json!([{"name": "a", "port": 53}, {"name": "b", "port": 53}]);
    assert_eq!(
        errors(CLUSTER_IP, &[("/spec/ports", ports)]),
        ["spec.ports[1].port: 53/TCP is also used by spec.ports[0]"]
    );
}

#[test]
fn node_ports_are_used_only_by_node_port_and_load_balancer_services() {
    let ports = json!([{"name": "http", "port": 80, "nodePort": 8080}]);
    let service = ok(CLUSTER_IP, &[("/spec/ports", ports.clone())]);
    assert_eq!(service.ports[0].node_port, None);
    let node_port = [("/spec/type", json!("NodePort")), ("/spec/ports", ports)];
    assert_eq!(
        errors(CLUSTER_IP, &node_port),
        ["spec.ports[0].nodePort: 8080 is not in 30000-32767"]
    );
    let opts = ValidationOptions {
        node_port_range: 8000..=9000,
    };
    let service = validate_with(&patched(CLUSTER_IP, &node_port), &opts).expect("valid");
    assert_eq!(service.ports[0].node_port, Some(8080));
}

#[test]
fn node_port_and_protocol_pairs_are_unique() {
    let ports = json!([
        {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053},
        {"name": "dns-tcp", "port": 53, "protocol": "TCP", "nodePort": 30053},
        {"name": "alt", "port": 5353, "protocol": "UDP", "nodePort": 30053},
    ]);
    assert_eq!(
        errors(
            CLUSTER_IP,
            &[("/spec/type", json!("NodePort")), ("/spec/ports", ports)]
        ),
        ["spec.ports[2].nodePort: 30053/UDP is also used by spec.ports[0]"]
    );
}

#[test]
fn external_ips_must_parse() {
    let service = ok(
        CLUSTER_IP,
        &[("/spec/externalIPs", json!(["192.0.2.7", "2001:db8::7"]))],
    );
    assert_eq!(service.external_ips, [ip("192.0.2.7"), ip("2001:db8::7")]);
    assert_eq!(
        errors(
            CLUSTER_IP,
            &[("/spec/externalIPs", json!(["192.0.2.7", "example.com"]))]
        ),
        ["spec.externalIPs[1]: \"example.com\" is not an IP address"]
    );
}

#[test]
fn load_balancer_ingress_ips_are_read_only_for_load_balancers() {
    let bad = json!([{"ip": "198.51.100.300"}]);
    assert_eq!(
        errors(
            LOAD_BALANCER,
            &[("/status/loadBalancer/ingress", bad.clone())]
        ),
        ["status.loadBalancer.ingress[0].ip: \"198.51.100.300\" is not an IP address"]
    );
    let service = ok(CLUSTER_IP, &[("/status/loadBalancer/ingress", bad)]);
    assert!(service.load_balancer_ips.is_empty());
}

#[test]
fn source_ranges_are_cidrs_or_bare_addresses() {
    let ranges = json!([" 10.0.0.0/8 ", "192.0.2.7", "2001:db8::1", "172.16.5.4/12"]);
    let service = ok(LOAD_BALANCER, &[("/spec/loadBalancerSourceRanges", ranges)]);
    let expected: Vec<IpNet> = [
        "10.0.0.0/8",
        "192.0.2.7/32",
        "2001:db8::1/128",
        "172.16.0.0/12",
    ]
    .iter()
    .map(|s| s.parse().expect("net"))
    .collect();
    assert_eq!(service.load_balancer_source_ranges, expected);
    assert_eq!(
        errors(
            LOAD_BALANCER,
            &[("/spec/loadBalancerSourceRanges", json!(["10.0.0.0/33"]))]
        ),
        ["spec.loadBalancerSourceRanges[0]: \"10.0.0.0/33\" is not a CIDR"]
    );
}

#[test]
fn client_ip_affinity_has_a_bounded_timeout() {
    let service = ok(CLUSTER_IP, &[("/spec/sessionAffinity", json!("ClientIP"))]);
    assert_eq!(service.session_affinity_timeout, Some(10800));
    let config = |seconds: i64| json!({"clientIP": {"timeoutSeconds": seconds}});
    let affinity = ("/spec/sessionAffinity", json!("ClientIP"));
    let service = ok(
        CLUSTER_IP,
        &[
            affinity.clone(),
            ("/spec/sessionAffinityConfig", config(60)),
        ],
    );
    assert_eq!(service.session_affinity_timeout, Some(60));
    for bad in [0, 86401] {
        assert_eq!(
            errors(
                CLUSTER_IP,
                &[
                    affinity.clone(),
                    ("/spec/sessionAffinityConfig", config(bad))
                ]
            ),
            [format!(
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds: {bad} is not in 1-86400"
            )]
        );
    }
    let service = ok(CLUSTER_IP, &[("/spec/sessionAffinityConfig", config(0))]);
    assert_eq!(service.session_affinity_timeout, None);
    assert_eq!(
        errors(CLUSTER_IP, &[("/spec/sessionAffinity", json!("Cookie"))]),
        ["spec.sessionAffinity: \"Cookie\" is not one of None, ClientIP"]
    );
}

#[test]
fn external_policy_local_counts_only_for_externally_accessible_services() {
    let local = ("/spec/externalTrafficPolicy", json!("Local"));
    assert!(!ok(CLUSTER_IP, std::slice::from_ref(&local)).external_policy_local);
    let external_ip = ("/spec/externalIPs", json!(["192.0.2.7"]));
    assert!(ok(CLUSTER_IP, &[local.clone(), external_ip]).external_policy_local);
    let node_port = ("/spec/type", json!("NodePort"));
    assert!(ok(CLUSTER_IP, &[local, node_port]).external_policy_local);
    let cluster = ("/spec/externalTrafficPolicy", json!("Cluster"));
    assert!(!ok(LOAD_BALANCER, &[cluster]).external_policy_local);
    assert_eq!(
        errors(
            LOAD_BALANCER,
            &[("/spec/externalTrafficPolicy", json!("Global"))]
        ),
        ["spec.externalTrafficPolicy: \"Global\" is not one of Cluster, Local"]
    );
}

#[test]
fn internal_policy_local() {
    let service = ok(
        CLUSTER_IP,
        &[("/spec/internalTrafficPolicy", json!("Local"))],
    );
    assert!(service.internal_policy_local);
    assert_eq!(
        errors(
            CLUSTER_IP,
            &[("/spec/internalTrafficPolicy", json!("Node"))]
        ),
        ["spec.internalTrafficPolicy: \"Node\" is not one of Cluster, Local"]
    );
}

#[test]
fn health_check_node_port_is_kept_only_for_local_load_balancers() {
    let cluster = ("/spec/externalTrafficPolicy", json!("Cluster"));
    assert_eq!(ok(LOAD_BALANCER, &[cluster]).health_check_node_port, None);
    let node_port = ("/spec/type", json!("NodePort"));
    assert_eq!(ok(LOAD_BALANCER, &[node_port]).health_check_node_port, None);
    assert_eq!(
        errors(
            LOAD_BALANCER,
            &[("/spec/healthCheckNodePort", json!(70000))]
        ),
        ["spec.healthCheckNodePort: 70000 is not in 1-65535"]
    );
    let absent = ok(LOAD_BALANCER, &[("/spec/healthCheckNodePort", json!(null))]);
    assert_eq!(absent.health_check_node_port, None);
}

#[test]
fn all_errors_of_a_service_are_reported_together() {
    let ports = json!([{"name": "http", "port": 0, "protocol": "ICMP", "nodePort": 1}]);
    let found = errors(
        LOAD_BALANCER,
        &[
            ("/spec/ports", ports),
            ("/spec/externalIPs", json!(["nope"])),
            ("/spec/sessionAffinity", json!("Sticky")),
        ],
    );
    assert_eq!(
        found,
        [
            "spec.ports[0].port: 0 is not in 1-65535",
            "spec.ports[0].protocol: \"ICMP\" is not one of TCP, UDP, SCTP",
            "spec.ports[0].nodePort: 1 is not in 30000-32767",
            "spec.externalIPs[0]: \"nope\" is not an IP address",
            "spec.sessionAffinity: \"Sticky\" is not one of None, ClientIP",
        ]
    );
}
