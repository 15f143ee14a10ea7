//! Validation of a `discovery.k8s.io/v1` EndpointSlice into a [`model::EndpointSlice`].
//!
//! Endpoint conditions are defaulted as upstream's endpointslicecache does (`ready` and
//! `serving` nil mean true, `terminating` nil means false), and only an
//! endpoint's first address is used. Slices of address type FQDN are valid but not used.

use std::collections::{BTreeSet, HashMap};

use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};
use kproxy_dataplane::plan::{IpFamily, Protocol};

use super::{Checked, FieldError, check_name, object_key, parse_ip, parse_port, parse_protocol};
use crate::model::{self, ObjectKey, SERVICE_NAME_LABEL, SliceEndpoint, SlicePort};

/// What `addressType` says.
enum AddressType {
    Ip(IpFamily),
    Fqdn,
}

/// The `last-change-trigger-time` annotation (RFC 3339). An unparsable value only loses
/// the latency measurement, so it is ignored rather than rejecting the slice, as upstream.
fn trigger_time(slice: &EndpointSlice) -> Option<std::time::SystemTime> {
    let text = slice
        .metadata
        .annotations
        .as_ref()?
        .get(model::LAST_CHANGE_TRIGGER_TIME)?;
    let ts: k8s_openapi::jiff::Timestamp = text.parse().ok()?;
    Some(std::time::SystemTime::from(ts))
}

/// Validates an EndpointSlice.
///
/// `value: None` without problems for a slice of address type FQDN, which kproxy does not
/// use. The slice is skipped only when it cannot be placed (no name, no Service label, an
/// unknown address type); a bad port or endpoint is left out alone, as kube-proxy's
/// endpointslicecache ignores it.
pub fn validate_endpoint_slice(slice: &EndpointSlice) -> Checked<model::EndpointSlice> {
    let key = object_key(&slice.metadata, true);
    let mut problems = Vec::new();
    let named = check_name(&key, &mut problems);
    let family = match address_type(&slice.address_type, &mut problems) {
        Some(AddressType::Fqdn) if named => return Checked::skipped(problems),
        Some(AddressType::Ip(family)) => Some(family),
        _ => None,
    };
    let service = service_key(slice, &key, &mut problems);
    let (Some(family), Some(service), true) = (family, service, named) else {
        return Checked::skipped(problems);
    };
    let ports = ports(slice.ports.as_deref().unwrap_or_default(), &mut problems);
    let endpoints = endpoints(&slice.endpoints, family, &mut problems);
    let validated = model::EndpointSlice {
        key,
        service,
        family,
        ports,
        endpoints,
        last_change_trigger_time: trigger_time(slice),
    };
    Checked::with(validated, problems)
}

fn address_type(value: &str, problems: &mut Vec<FieldError>) -> Option<AddressType> {
    match value {
        "IPv4" => Some(AddressType::Ip(IpFamily::V4)),
        "IPv6" => Some(AddressType::Ip(IpFamily::V6)),
        "FQDN" => Some(AddressType::Fqdn),
        other => {
            problems.push(FieldError::new(
                "addressType",
                format!("{other:?} is not one of IPv4, IPv6, FQDN; the slice is skipped"),
            ));
            None
        }
    }
}

/// The Service the slice belongs to, from its `kubernetes.io/service-name` label.
fn service_key(
    slice: &EndpointSlice,
    key: &ObjectKey,
    problems: &mut Vec<FieldError>,
) -> Option<ObjectKey> {
    let labels = slice.metadata.labels.as_ref();
    let name = labels
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .map_or("", String::as_str);
    if name.is_empty() {
        problems.push(FieldError::new(
            format!("metadata.labels[{SERVICE_NAME_LABEL:?}]"),
            "is required (the name of the Service the slice belongs to); the slice is skipped",
        ));
        return None;
    }
    Some(ObjectKey::new(key.namespace.clone(), name))
}

/// `ports`, without the entries that cannot be used.
fn ports(raw: &[EndpointPort], problems: &mut Vec<FieldError>) -> Vec<SlicePort> {
    // kube-proxy's endpointslicecache keys a slice port by name and protocol, as it keys
    // the Service's ports: one port per key, the first keeps it.
    let mut keys: HashMap<(&str, Protocol), usize> = HashMap::new();
    let mut ports = Vec::with_capacity(raw.len());
    for (i, port) in raw.iter().enumerate() {
        let Some(valid) = slice_port(i, port, problems) else {
            continue;
        };
        let name = port.name.as_deref().unwrap_or("");
        if let Some(first) = keys.get(&(name, valid.protocol)) {
            problems.push(FieldError::left_out(
                format!("ports[{i}].name"),
                format!(
                    "{name:?}/{} is also the name of ports[{first}]",
                    valid.protocol
                ),
                "this port",
            ));
            continue;
        }
        keys.insert((name, valid.protocol), i);
        ports.push(valid);
    }
    ports
}

/// One entry of `ports`, `None` when it cannot be used.
fn slice_port(i: usize, port: &EndpointPort, problems: &mut Vec<FieldError>) -> Option<SlicePort> {
    let field = |name: &str| format!("ports[{i}].{name}");
    let protocol = parse_protocol(port.protocol.as_deref())
        .map_err(|message| {
            problems.push(FieldError::left_out(
                field("protocol"),
                message,
                "this port",
            ))
        })
        .ok();
    let number = match port.port {
        None => Err("is required".to_string()),
        Some(number) => parse_port(number),
    }
    .map_err(|message| problems.push(FieldError::left_out(field("port"), message, "this port")))
    .ok();
    Some(SlicePort {
        name: port.name.clone().unwrap_or_default(),
        protocol: protocol?,
        port: number?,
    })
}

fn endpoints(
    raw: &[Endpoint],
    family: IpFamily,
    problems: &mut Vec<FieldError>,
) -> Vec<SliceEndpoint> {
    // Kept for as long as the slice is unchanged: no spare capacity.
    let mut endpoints = Vec::with_capacity(raw.len());
    endpoints.extend(
        raw.iter()
            .enumerate()
            .filter_map(|(i, endpoint)| slice_endpoint(i, endpoint, family, problems)),
    );
    endpoints.shrink_to_fit();
    endpoints
}

/// One entry of `endpoints`, `None` when it cannot be used.
fn slice_endpoint(
    i: usize,
    endpoint: &Endpoint,
    family: IpFamily,
    problems: &mut Vec<FieldError>,
) -> Option<SliceEndpoint> {
    const PART: &str = "this endpoint";
    let Some(first) = endpoint.addresses.first() else {
        problems.push(FieldError::left_out(
            format!("endpoints[{i}].addresses"),
            "must have at least one address",
            PART,
        ));
        return None;
    };
    let field = format!("endpoints[{i}].addresses[0]");
    let address = match parse_ip(first) {
        Ok(address) => address,
        Err(message) => {
            problems.push(FieldError::left_out(field, message, PART));
            return None;
        }
    };
    let actual = IpFamily::of(&address);
    if actual != family {
        problems.push(FieldError::left_out(
            field,
            format!("{address} is {actual} but the slice's addressType is {family}"),
            PART,
        ));
        return None;
    }
    let conditions = endpoint.conditions.as_ref();
    let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
    let hints = endpoint.hints.as_ref();
    Some(SliceEndpoint {
        address,
        ready,
        serving: conditions.and_then(|c| c.serving).unwrap_or(true),
        terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
        node_name: endpoint.node_name.clone().filter(|n| !n.is_empty()),
        zone_hints: hint_names(hints.and_then(|h| h.for_zones.as_deref()), |z| &z.name),
        node_hints: hint_names(hints.and_then(|h| h.for_nodes.as_deref()), |n| &n.name),
    })
}

/// The names of a list of hints.
fn hint_names<T>(hints: Option<&[T]>, name: impl Fn(&T) -> &String) -> BTreeSet<String> {
    hints
        .unwrap_or_default()
        .iter()
        .map(|h| name(h).clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use serde_json::{Value, json};

    use super::*;
    use crate::source::test_support::{patched, yaml};

    const SLICE: &str = r#"
addressType: IPv4
apiVersion: discovery.k8s.io/v1
endpoints:
- addresses:
  - 10.244.1.5
  conditions:
    ready: true
    serving: true
    terminating: false
  hints:
    forZones:
    - name: zone-a
  nodeName: node-a
  targetRef:
    kind: Pod
    name: web-7d4b9c6f5-abcde
    namespace: shop
    uid: 0b1e5a77-3f0c-4d4e-8f57-1a2b3c4d5e6f
  zone: zone-a
- addresses:
  - 10.244.2.9
  conditions:
    ready: false
    serving: true
    terminating: true
  nodeName: node-b
  targetRef:
    kind: Pod
    name: web-7d4b9c6f5-fghij
    namespace: shop
    uid: 7c8d9e0f-1a2b-4c3d-9e8f-0a1b2c3d4e5f
  zone: zone-b
kind: EndpointSlice
metadata:
  creationTimestamp: "2025-03-01T10:00:05Z"
  generateName: web-
  generation: 3
  labels:
    endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
    kubernetes.io/service-name: web
  name: web-x7k2p
  namespace: shop
  ownerReferences:
  - apiVersion: v1
    blockOwnerDeletion: true
    controller: true
    kind: Service
    name: web
    uid: 6f1c2c55-1d7e-4c7e-9a55-2f1f0e7c8a11
  resourceVersion: "5678"
  uid: 2d3e4f50-6a7b-4c8d-9e0f-1a2b3c4d5e6f
ports:
- name: http
  port: 8080
  protocol: TCP
"#;

    fn checked(value: &Value) -> (Option<model::EndpointSlice>, Vec<String>) {
        let slice: EndpointSlice = serde_json::from_value(value.clone()).expect("decodes");
        let checked = validate_endpoint_slice(&slice);
        let shown = checked.problems.iter().map(ToString::to_string).collect();
        (checked.value, shown)
    }

    fn validate(value: &Value) -> Result<Option<model::EndpointSlice>, Vec<String>> {
        match checked(value) {
            (value, problems) if problems.is_empty() => Ok(value),
            (_, problems) => Err(problems),
        }
    }

    fn ok(patches: &[(&str, Value)]) -> model::EndpointSlice {
        validate(&patched(SLICE, patches))
            .expect("valid")
            .expect("not FQDN")
    }

    /// The problems of a slice that is skipped.
    fn skipped(value: &Value) -> Vec<String> {
        let (slice, problems) = checked(value);
        assert_eq!(slice, None, "skipped");
        problems
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test IP")
    }

    #[test]
    fn slice_validates() {
        let expected = model::EndpointSlice {
            key: ObjectKey::new("shop", "web-x7k2p"),
            service: ObjectKey::new("shop", "web"),
            family: IpFamily::V4,
            ports: vec![SlicePort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 8080,
            }],
            last_change_trigger_time: None,
            endpoints: vec![
                SliceEndpoint {
                    address: ip("10.244.1.5"),
                    ready: true,
                    serving: true,
                    terminating: false,
                    node_name: Some("node-a".into()),
                    zone_hints: BTreeSet::from(["zone-a".to_string()]),
                    node_hints: BTreeSet::new(),
                },
                SliceEndpoint {
                    address: ip("10.244.2.9"),
                    ready: false,
                    serving: true,
                    terminating: true,
                    node_name: Some("node-b".into()),
                    zone_hints: BTreeSet::new(),
                    node_hints: BTreeSet::new(),
                },
            ],
        };
        assert_eq!(ok(&[]), expected);
    }

    #[test]
    fn conditions_default_as_upstream() {
        let slice = ok(&[("/endpoints/0/conditions", json!({}))]);
        let e = &slice.endpoints[0];
        assert_eq!((e.ready, e.serving, e.terminating), (true, true, false));
        let slice = ok(&[("/endpoints/0/conditions", json!({"ready": false}))]);
        let e = &slice.endpoints[0];
        assert_eq!((e.ready, e.serving, e.terminating), (false, true, false));
        let mut value = yaml(SLICE);
        value["endpoints"][0]
            .as_object_mut()
            .expect("map")
            .remove("conditions");
        let slice = validate(&value).expect("valid").expect("IPv4");
        let e = &slice.endpoints[0];
        assert_eq!((e.ready, e.serving, e.terminating), (true, true, false));
    }

    #[test]
    fn node_hints_and_missing_node_name() {
        let hints = json!({"forNodes": [{"name": "node-a"}, {"name": "node-c"}]});
        let slice = ok(&[
            ("/endpoints/1/hints", hints),
            ("/endpoints/1/nodeName", json!(null)),
        ]);
        let e = &slice.endpoints[1];
        let nodes: Vec<&str> = e.node_hints.iter().map(String::as_str).collect();
        assert_eq!(nodes, ["node-a", "node-c"]);
        assert_eq!(e.node_name, None);
    }

    #[test]
    fn fqdn_slices_are_not_used() {
        let patches = [
            ("/addressType", json!("FQDN")),
            ("/endpoints", json!([{"addresses": ["db.example.com"]}])),
        ];
        assert_eq!(validate(&patched(SLICE, &patches)), Ok(None));
    }

    #[test]
    fn address_type_must_be_known() {
        assert_eq!(
            skipped(&patched(SLICE, &[("/addressType", json!("IPX"))])),
            ["addressType: \"IPX\" is not one of IPv4, IPv6, FQDN; the slice is skipped"]
        );
    }

    #[test]
    fn service_name_label_is_required() {
        let mut value = yaml(SLICE);
        let labels = value["metadata"]["labels"].as_object_mut().expect("labels");
        labels.remove("kubernetes.io/service-name");
        assert_eq!(
            skipped(&value),
            [
                "metadata.labels[\"kubernetes.io/service-name\"]: is required (the name of the Service the slice belongs to); the slice is skipped"
            ]
        );
    }

    #[test]
    fn namespace_defaults_for_slice_and_service() {
        let mut value = yaml(SLICE);
        value["metadata"]
            .as_object_mut()
            .expect("map")
            .remove("namespace");
        let slice = validate(&value).expect("valid").expect("IPv4");
        assert_eq!(slice.key, ObjectKey::new("default", "web-x7k2p"));
        assert_eq!(slice.service, ObjectKey::new("default", "web"));
    }

    #[test]
    fn null_endpoints_and_ports_are_empty() {
        let slice = ok(&[("/endpoints", json!(null)), ("/ports", json!(null))]);
        assert!(slice.endpoints.is_empty());
        assert!(slice.ports.is_empty());
    }

    #[test]
    fn ports_default_their_name_and_protocol() {
        let slice = ok(&[("/ports", json!([{"port": 53, "protocol": "UDP"}]))]);
        assert_eq!(
            slice.ports,
            [SlicePort {
                name: String::new(),
                protocol: Protocol::Udp,
                port: 53,
            }]
        );
    }

    /// How a row expects the slice to differ from the unpatched one.
    enum Expect {
        /// Used as the base, changed by this function.
        Kept(fn(&mut model::EndpointSlice)),
        /// Nothing of it is used.
        Skipped,
    }

    /// A rule: its upstream source, a patch, what kproxy uses, the problems reported.
    type Row = (
        &'static str,
        Vec<(&'static str, Value)>,
        Expect,
        &'static [&'static str],
    );

    /// Every rule of an EndpointSlice: a patch, what kproxy uses, the problems, and the
    /// upstream rule it mirrors. "API" is pkg/apis/discovery/validation/validation.go
    /// (ValidateEndpointSlice); "kube-proxy" is pkg/proxy/endpointslicecache.go
    /// (endpointInfoByServicePort, addEndpoints) and endpointschangetracker.go.
    fn rules() -> Vec<Row> {
        let http = json!({"name": "http", "port": 8080, "protocol": "TCP"});
        let second = |port: Value| json!([http.clone(), port]);
        vec![
            (
                "API: addresses must be IPs of the slice's family; kube-proxy uses addresses[0] \
                 only: a wrong-family one cannot be programmed, the others still are",
                vec![("/endpoints/1/addresses", json!(["fd00:10:244::9"]))],
                Expect::Kept(|s| {
                    s.endpoints.pop();
                }),
                &[
                    "endpoints[1].addresses[0]: fd00:10:244::9 is IPv6 but the slice's addressType is IPv4; this endpoint is left out",
                ],
            ),
            (
                "API: IsValidIPv4Address; kube-proxy parses addresses[0] with ParseIPSloppy",
                vec![("/endpoints/1/addresses", json!(["10.244.1"]))],
                Expect::Kept(|s| {
                    s.endpoints.pop();
                }),
                &[
                    "endpoints[1].addresses[0]: \"10.244.1\" is not an IP address; this endpoint is left out",
                ],
            ),
            (
                "API: 1-100 addresses; kube-proxy's addEndpoints skips an endpoint without one",
                vec![("/endpoints/1/addresses", json!([]))],
                Expect::Kept(|s| {
                    s.endpoints.pop();
                }),
                &[
                    "endpoints[1].addresses: must have at least one address; this endpoint is left out",
                ],
            ),
            (
                "kube-proxy's ParseIPSloppy: a legacy address with leading zeros is decimal",
                vec![("/endpoints/1/addresses", json!(["010.244.002.009"]))],
                Expect::Kept(|_| {}),
                &[],
            ),
            (
                "API: port may be nil; kube-proxy ignores a port without a number",
                vec![("/ports", second(json!({"name": "metrics"})))],
                Expect::Kept(|_| {}),
                &["ports[1].port: is required; this port is left out"],
            ),
            (
                "kube-proxy ignores port 0 (\"Ignoring invalid endpoint port\")",
                vec![("/ports", second(json!({"name": "metrics", "port": 0})))],
                Expect::Kept(|_| {}),
                &["ports[1].port: 0 is not in 1-65535; this port is left out"],
            ),
            (
                "no port number above 65535 fits the kernel's 16 bits",
                vec![("/ports", second(json!({"name": "metrics", "port": 70000})))],
                Expect::Kept(|_| {}),
                &["ports[1].port: 70000 is not in 1-65535; this port is left out"],
            ),
            (
                "API: protocol is TCP, UDP or SCTP",
                vec![(
                    "/ports",
                    second(json!({"name": "metrics", "port": 9090, "protocol": "QUIC"})),
                )],
                Expect::Kept(|_| {}),
                &[
                    "ports[1].protocol: \"QUIC\" is not one of TCP, UDP, SCTP; this port is left out",
                ],
            ),
            (
                "API: port names are unique; kube-proxy keys slice ports by name and protocol",
                vec![("/ports", second(json!({"name": "http", "port": 8081})))],
                Expect::Kept(|_| {}),
                &[
                    "ports[1].name: \"http\"/TCP is also the name of ports[0]; this port is left out",
                ],
            ),
            (
                "kube-proxy keys slice ports by name and protocol: another protocol is another key",
                vec![(
                    "/ports",
                    second(json!({"name": "http", "port": 8080, "protocol": "UDP"})),
                )],
                Expect::Kept(|s| {
                    s.ports.push(SlicePort {
                        name: "http".into(),
                        protocol: Protocol::Udp,
                        port: 8080,
                    })
                }),
                &[],
            ),
            (
                "API: addressType is IPv4, IPv6 or FQDN; kube-proxy ignores any other slice",
                vec![("/addressType", json!("IPX"))],
                Expect::Skipped,
                &["addressType: \"IPX\" is not one of IPv4, IPv6, FQDN; the slice is skipped"],
            ),
        ]
    }

    #[test]
    fn every_rule_leaves_out_the_least() {
        let base = ok(&[]);
        let mut failures = Vec::new();
        for (rule, patches, expect, problems) in rules() {
            let (value, found) = checked(&patched(SLICE, &patches));
            let expected = match expect {
                Expect::Skipped => None,
                Expect::Kept(change) => {
                    let mut slice = base.clone();
                    change(&mut slice);
                    Some(slice)
                }
            };
            if value != expected || found != problems {
                failures.push(format!(
                    "rule: {rule}\n  got: {value:?}\n  problems: {found:?}"
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    }
}

#[cfg(test)]
mod trigger_time_tests {
    use super::*;
    use serde_json::json;

    fn slice_with(annotation: Option<&str>) -> EndpointSlice {
        let mut v = json!({
            "metadata": {"name": "web-1", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "endpoints": [], "ports": [],
        });
        if let Some(a) = annotation {
            v["metadata"]["annotations"] = json!({model::LAST_CHANGE_TRIGGER_TIME: a});
        }
        serde_json::from_value(v).expect("slice")
    }

    #[test]
    fn reads_the_trigger_time_annotation() {
        let t = trigger_time(&slice_with(Some("2026-11-24T01:02:03.5Z"))).expect("parsed");
        let secs = t
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after epoch")
            .as_secs_f64();
        assert!((secs - 1_795_482_123.5).abs() < 1e-3, "{secs}");
        assert_eq!(trigger_time(&slice_with(None)), None);
        assert_eq!(
            trigger_time(&slice_with(Some("yesterday"))),
            None,
            "ignored, not fatal"
        );
    }
}
