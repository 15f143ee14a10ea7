//! Chain names, exactly as upstream kube-proxy spells them, so that operators (and their
//! tooling) read kproxy's rules as they always read kube-proxy's.
//!
//! Per-service chains are `PREFIX + first 16 chars of base32(sha256(name + protocol))`, with
//! `name` upstream's `ServicePortName.String()` (`ns/svc:port`) and the protocol in lower
//! case; endpoint chains hash `name + protocol + "ip:port"`.

use data_encoding::BASE32;
use sha2::{Digest, Sha256};

use crate::plan::{Endpoint, EndpointSet, ServicePortName};

/// Dispatch of cluster IPs, external IPs and LB IPs (nat), and REJECT/DROP of cluster IPs
/// without endpoints (filter).
pub const KUBE_SERVICES: &str = "KUBE-SERVICES";
/// NodePort dispatch (nat) and health-check NodePort ACCEPTs (filter).
pub const KUBE_NODEPORTS: &str = "KUBE-NODEPORTS";
/// Masquerades marked packets (nat).
pub const KUBE_POSTROUTING: &str = "KUBE-POSTROUTING";
/// Sets the masquerade mark (nat).
pub const KUBE_MARK_MASQ: &str = "KUBE-MARK-MASQ";
/// REJECT/DROP for external destinations without (local) endpoints (filter).
pub const KUBE_EXTERNAL_SERVICES: &str = "KUBE-EXTERNAL-SERVICES";
/// Accepts forwarded service traffic (filter).
pub const KUBE_FORWARD: &str = "KUBE-FORWARD";
/// Drops LB traffic not accepted by `loadBalancerSourceRanges` (filter).
pub const KUBE_PROXY_FIREWALL: &str = "KUBE-PROXY-FIREWALL";
/// Empty chain in mangle, nat and filter whose disappearance reveals an external flush
/// (`iptables -F`/`-X`, a firewalld reload): upstream's canary.
pub const KUBE_PROXY_CANARY: &str = "KUBE-PROXY-CANARY";
/// The tables that hold [`KUBE_PROXY_CANARY`], smallest (cheapest to check) first. kproxy
/// writes nothing else to `mangle`.
pub const CANARY_TABLES: [&str; 3] = ["mangle", "filter", "nat"];

/// Prefixes of the per-service and per-endpoint chains.
pub const SERVICE_CHAIN_PREFIXES: [&str; 5] = [
    "KUBE-SVC-",
    "KUBE-SVL-",
    "KUBE-EXT-",
    "KUBE-FW-",
    "KUBE-SEP-",
];

/// Is this one of the per-service or per-endpoint chains kproxy (or kube-proxy) writes?
pub fn is_service_chain(chain: &str) -> bool {
    SERVICE_CHAIN_PREFIXES.iter().any(|p| chain.starts_with(p))
}

fn hash16(input: &str) -> String {
    let digest = Sha256::digest(input.as_bytes());
    let mut encoded = BASE32.encode(&digest);
    encoded.truncate(16);
    encoded
}

fn port_proto_hash(name: &ServicePortName) -> String {
    hash16(&format!("{name}{}", name.protocol.as_lower()))
}

/// The per-service chain names of one service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceChains {
    /// `KUBE-SVC-…`: dispatch to the "Cluster" endpoint set.
    pub cluster: String,
    /// `KUBE-SVL-…`: dispatch to the "Local" endpoint set.
    pub local: String,
    /// `KUBE-EXT-…`: entry for external destinations (NodePort, external and LB IPs).
    pub external: String,
    /// `KUBE-FW-…`: `loadBalancerSourceRanges` filter.
    pub firewall: String,
}

impl ServiceChains {
    /// The chains of `name`.
    pub fn of(name: &ServicePortName) -> Self {
        let hash = port_proto_hash(name);
        ServiceChains {
            cluster: format!("KUBE-SVC-{hash}"),
            local: format!("KUBE-SVL-{hash}"),
            external: format!("KUBE-EXT-{hash}"),
            firewall: format!("KUBE-FW-{hash}"),
        }
    }

    /// The dispatch chain of endpoint set `set`.
    pub fn dispatch(&self, set: EndpointSet) -> &str {
        match set {
            EndpointSet::Cluster => &self.cluster,
            EndpointSet::Local => &self.local,
        }
    }
}

/// `KUBE-SEP-…`: the DNAT chain of one endpoint of one service port.
pub fn endpoint_chain(name: &ServicePortName, endpoint: &Endpoint) -> String {
    format!(
        "KUBE-SEP-{}",
        hash16(&format!("{name}{}{endpoint}", name.protocol.as_lower()))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Protocol;

    fn spn(ns: &str, name: &str, port: &str) -> ServicePortName {
        ServicePortName {
            namespace: ns.into(),
            name: name.into(),
            port: port.into(),
            protocol: Protocol::Tcp,
        }
    }

    /// Chain names copied from upstream kube-proxy's proxier_test.go expectations.
    #[test]
    fn matches_upstream_service_chain_names() {
        assert_eq!(
            ServiceChains::of(&spn("ns2", "svc2", "p80")).cluster,
            "KUBE-SVC-GNZBNJ2PO5MGZ6GT"
        );
        assert_eq!(
            ServiceChains::of(&spn("ns5", "svc5", "p80")).external,
            "KUBE-EXT-NUKIZ6OKUXPJNT4C"
        );
        assert_eq!(
            ServiceChains::of(&spn("ns3", "svc3", "p80")).external,
            "KUBE-EXT-X27LE4BHSL4DOUIK"
        );
    }

    #[test]
    fn matches_upstream_endpoint_chain_names() {
        let ep = |s: &str| crate::fixtures::endpoint(s, false);
        assert_eq!(
            endpoint_chain(&spn("ns2", "svc2", "p80"), &ep("10.180.0.2:80")),
            "KUBE-SEP-RS4RBKLTHTF2IUXJ"
        );
        assert_eq!(
            endpoint_chain(&spn("ns4", "svc4", "p80"), &ep("10.180.0.5:80")),
            "KUBE-SEP-C6EBXVWJJZMIWKLZ"
        );
    }

    #[test]
    fn recognises_service_chains() {
        assert!(is_service_chain("KUBE-SEP-RS4RBKLTHTF2IUXJ"));
        assert!(is_service_chain("KUBE-FW-GNZBNJ2PO5MGZ6GT"));
        assert!(!is_service_chain(KUBE_SERVICES));
        assert!(!is_service_chain("DOCKER"));
    }
}
