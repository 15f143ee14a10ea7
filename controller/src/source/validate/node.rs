//! Validation of a `v1` Node into a [`NodeInfo`].

use std::net::IpAddr;

use ipnet::IpNet;

use k8s_openapi::api::core::v1::{Node, NodeAddress};

use super::{Checked, FieldError, check_name, object_key, parse_cidr, parse_ip};
use crate::model::NodeInfo;

/// The address types kproxy uses, in the order it lists them.
const ADDRESS_TYPES: [&str; 2] = ["InternalIP", "ExternalIP"];

/// Validates a Node: its name, labels and `status.addresses` of type InternalIP then
/// ExternalIP (each in manifest order). An address of those types that does not parse is
/// left out (as kube-proxy's node address lookup skips it); other address types
/// (Hostname, InternalDNS...) are ignored.
pub fn validate_node(node: &Node) -> Checked<NodeInfo> {
    let key = object_key(&node.metadata, false);
    let mut problems = Vec::new();
    if !check_name(&key, &mut problems) {
        return Checked::skipped(problems);
    }
    let raw = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_deref())
        .unwrap_or_default();
    let addresses = ADDRESS_TYPES
        .iter()
        .flat_map(|wanted| addresses_of_type(raw, wanted, &mut problems))
        .collect();
    let info = NodeInfo {
        name: key.name.to_string(),
        labels: node.metadata.labels.clone().unwrap_or_default(),
        addresses,
        pod_cidrs: pod_cidrs(node, &mut problems),
    };
    Checked::with(info, problems)
}

/// `spec.podCIDRs` (else `spec.podCIDR`), without the ones that do not parse.
fn pod_cidrs(node: &Node, problems: &mut Vec<FieldError>) -> Vec<IpNet> {
    let spec = node.spec.as_ref();
    let listed = spec
        .and_then(|s| s.pod_cidrs.clone())
        .filter(|l| !l.is_empty());
    let (field, raw) = match listed {
        Some(list) => ("spec.podCIDRs", list),
        None => (
            "spec.podCIDR",
            spec.and_then(|s| s.pod_cidr.clone()).into_iter().collect(),
        ),
    };
    let mut cidrs = Vec::with_capacity(raw.len());
    for (i, text) in raw.iter().enumerate() {
        match parse_cidr(text) {
            Ok(cidr) => cidrs.push(cidr),
            Err(message) => problems.push(FieldError::left_out(
                if field == "spec.podCIDRs" {
                    format!("{field}[{i}]")
                } else {
                    field.to_string()
                },
                message,
                "this pod CIDR",
            )),
        }
    }
    cidrs
}

/// The parsed addresses of one type, in manifest order.
fn addresses_of_type(
    raw: &[NodeAddress],
    wanted: &str,
    problems: &mut Vec<FieldError>,
) -> Vec<IpAddr> {
    let mut addresses = Vec::new();
    for (i, address) in raw.iter().enumerate().filter(|(_, a)| a.type_ == wanted) {
        match parse_ip(&address.address) {
            Ok(ip) => addresses.push(ip),
            Err(message) => problems.push(FieldError::left_out(
                format!("status.addresses[{i}].address"),
                message,
                "this address",
            )),
        }
    }
    addresses
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::source::test_support::patched;

    const NODE: &str = r#"
apiVersion: v1
kind: Node
metadata:
  annotations:
    node.alpha.kubernetes.io/ttl: "0"
  creationTimestamp: "2025-02-20T08:00:00Z"
  labels:
    kubernetes.io/arch: amd64
    kubernetes.io/hostname: node-a
    kubernetes.io/os: linux
    topology.kubernetes.io/zone: zone-a
  name: node-a
  resourceVersion: "991"
  uid: 3a4b5c6d-7e8f-4a0b-9c1d-2e3f4a5b6c7d
spec:
  podCIDR: 10.244.1.0/24
  podCIDRs:
  - 10.244.1.0/24
  - fd00:10:244:1::/64
status:
  addresses:
  - address: 203.0.113.21
    type: ExternalIP
  - address: 192.168.10.21
    type: InternalIP
  - address: node-a
    type: Hostname
  - address: fd00:192:168:10::21
    type: InternalIP
  capacity:
    cpu: "4"
    memory: 16393360Ki
    pods: "110"
"#;

    fn validate(value: &Value) -> Result<NodeInfo, Vec<String>> {
        let node: Node = serde_json::from_value(value.clone()).expect("decodes");
        let checked = validate_node(&node);
        match checked.strict() {
            Ok(node) => Ok(node.expect("a node is always used")),
            Err(problems) => Err(problems.iter().map(ToString::to_string).collect()),
        }
    }

    fn checked(value: &Value) -> (Option<NodeInfo>, Vec<String>) {
        let node: Node = serde_json::from_value(value.clone()).expect("decodes");
        let checked = validate_node(&node);
        let shown = checked.problems.iter().map(ToString::to_string).collect();
        (checked.value, shown)
    }

    #[test]
    fn node_validates_with_internal_then_external_addresses() {
        let node = validate(&patched(NODE, &[])).expect("valid");
        assert_eq!(node.name, "node-a");
        assert_eq!(node.zone(), Some("zone-a"));
        assert_eq!(node.labels.len(), 4);
        let addresses: Vec<String> = node.addresses.iter().map(ToString::to_string).collect();
        assert_eq!(
            addresses,
            ["192.168.10.21", "fd00:192:168:10::21", "203.0.113.21"]
        );
    }

    #[test]
    fn pod_cidrs_are_read_for_node_cidr_detection() {
        let node = validate(&patched(NODE, &[])).expect("valid");
        let cidrs: Vec<String> = node.pod_cidrs.iter().map(ToString::to_string).collect();
        assert_eq!(cidrs, ["10.244.1.0/24", "fd00:10:244:1::/64"]);
        let single = patched(NODE, &[("/spec/podCIDRs", json!(null))]);
        let node = validate(&single).expect("valid");
        assert_eq!(node.pod_cidrs.len(), 1, "spec.podCIDR alone");
        let (node, problems) = checked(&patched(NODE, &[("/spec/podCIDRs/1", json!("x"))]));
        assert_eq!(node.expect("kept").pod_cidrs.len(), 1);
        assert_eq!(
            problems,
            ["spec.podCIDRs[1]: \"x\" is not a CIDR; this pod CIDR is left out"]
        );
    }

    #[test]
    fn node_without_status_has_no_addresses() {
        let node = validate(&patched(NODE, &[("/status", json!(null))])).expect("valid");
        assert!(node.addresses.is_empty());
    }

    #[test]
    fn an_unparsable_address_is_left_out_alone() {
        let bad = json!({"address": "192.168.10.300", "type": "InternalIP"});
        let (node, problems) = checked(&patched(NODE, &[("/status/addresses/3", bad)]));
        let addresses: Vec<String> = node
            .expect("the node is kept")
            .addresses
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(addresses, ["192.168.10.21", "203.0.113.21"]);
        assert_eq!(
            problems,
            [
                "status.addresses[3].address: \"192.168.10.300\" is not an IP address; this address is left out"
            ]
        );
    }

    #[test]
    fn node_name_is_required() {
        let (node, problems) = checked(&patched(NODE, &[("/metadata/name", json!(""))]));
        assert_eq!(node, None);
        assert_eq!(
            problems,
            ["metadata.name: is required; the object is skipped"]
        );
    }
}
