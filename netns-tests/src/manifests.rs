//! Service and EndpointSlice manifests for test scenarios, built from a [`ServiceSpec`]
//! value instead of hand-written YAML.
//!
//! Output is JSON (valid YAML), one `v1` `List` per Service holding the Service and its
//! EndpointSlice, as `kubectl get -o json` would print them.

use std::net::Ipv4Addr;

use serde_json::{Value, json};

/// A Service's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServiceType {
    /// `ClusterIP`.
    #[default]
    ClusterIp,
    /// `NodePort`.
    NodePort,
    /// `LoadBalancer`.
    LoadBalancer,
}

/// One port of the Service (and the matching EndpointSlice port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    /// Port name.
    pub name: String,
    /// `TCP` or `UDP`.
    pub protocol: &'static str,
    /// Service port.
    pub port: u16,
    /// Target port on the pods.
    pub target_port: u16,
    /// NodePort, for NodePort and LoadBalancer Services.
    pub node_port: Option<u16>,
}

impl PortSpec {
    /// A TCP port.
    pub fn tcp(name: &str, port: u16, target_port: u16) -> Self {
        PortSpec {
            name: name.into(),
            protocol: "TCP",
            port,
            target_port,
            node_port: None,
        }
    }

    /// A UDP port.
    pub fn udp(name: &str, port: u16, target_port: u16) -> Self {
        PortSpec {
            protocol: "UDP",
            ..PortSpec::tcp(name, port, target_port)
        }
    }

    /// With a NodePort.
    pub fn node_port(mut self, node_port: u16) -> Self {
        self.node_port = Some(node_port);
        self
    }
}

/// One endpoint and its conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    /// Pod IP.
    pub ip: Ipv4Addr,
    /// The node it runs on.
    pub node: String,
    /// `conditions.ready`.
    pub ready: bool,
    /// `conditions.serving`.
    pub serving: bool,
    /// `conditions.terminating`.
    pub terminating: bool,
}

impl EndpointSpec {
    /// A ready endpoint.
    pub fn ready(ip: Ipv4Addr, node: &str) -> Self {
        EndpointSpec {
            ip,
            node: node.into(),
            ready: true,
            serving: true,
            terminating: false,
        }
    }

    /// A terminating endpoint that still serves (used only when nothing is ready).
    pub fn terminating(ip: Ipv4Addr, node: &str) -> Self {
        EndpointSpec {
            ready: false,
            serving: true,
            terminating: true,
            ..EndpointSpec::ready(ip, node)
        }
    }
}

/// A Service with its endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceSpec {
    /// Name (namespace `default`).
    pub name: String,
    /// Type.
    pub service_type: ServiceType,
    /// Cluster IP.
    pub cluster_ip: Option<Ipv4Addr>,
    /// Ports.
    pub ports: Vec<PortSpec>,
    /// `spec.externalIPs`.
    pub external_ips: Vec<Ipv4Addr>,
    /// `status.loadBalancer.ingress[].ip`.
    pub load_balancer_ips: Vec<Ipv4Addr>,
    /// `spec.loadBalancerSourceRanges`.
    pub source_ranges: Vec<String>,
    /// `externalTrafficPolicy: Local`.
    pub external_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_local: bool,
    /// `sessionAffinity: ClientIP` with this timeout.
    pub affinity_timeout: Option<u32>,
    /// `spec.healthCheckNodePort`.
    pub health_check_node_port: Option<u16>,
    /// Endpoints, in one IPv4 EndpointSlice.
    pub endpoints: Vec<EndpointSpec>,
}

impl ServiceSpec {
    /// A ClusterIP Service `name` at `cluster_ip` with the given ports.
    pub fn new(name: &str, cluster_ip: Ipv4Addr, ports: Vec<PortSpec>) -> Self {
        ServiceSpec {
            name: name.into(),
            cluster_ip: Some(cluster_ip),
            ports,
            ..ServiceSpec::default()
        }
    }

    /// The Service object.
    pub fn service(&self) -> Value {
        let type_name = match self.service_type {
            ServiceType::ClusterIp => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        };
        let ports: Vec<Value> = self
            .ports
            .iter()
            .map(|p| {
                let mut port = json!({"name": p.name, "protocol": p.protocol, "port": p.port, "targetPort": p.target_port});
                if let Some(np) = p.node_port {
                    port["nodePort"] = json!(np);
                }
                port
            })
            .collect();
        let mut spec = json!({"type": type_name, "ports": ports});
        if let Some(ip) = self.cluster_ip {
            spec["clusterIP"] = json!(ip.to_string());
            spec["clusterIPs"] = json!([ip.to_string()]);
        }
        if !self.external_ips.is_empty() {
            spec["externalIPs"] = json!(
                self.external_ips
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
            );
        }
        if !self.source_ranges.is_empty() {
            spec["loadBalancerSourceRanges"] = json!(self.source_ranges);
        }
        if self.external_local {
            spec["externalTrafficPolicy"] = json!("Local");
        }
        if self.internal_local {
            spec["internalTrafficPolicy"] = json!("Local");
        }
        if let Some(timeout) = self.affinity_timeout {
            spec["sessionAffinity"] = json!("ClientIP");
            spec["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": timeout}});
        }
        if let Some(hc) = self.health_check_node_port {
            spec["healthCheckNodePort"] = json!(hc);
        }
        let ingress: Vec<Value> = self
            .load_balancer_ips
            .iter()
            .map(|ip| json!({"ip": ip.to_string()}))
            .collect();
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": self.name, "namespace": "default"},
            "spec": spec,
            "status": {"loadBalancer": {"ingress": ingress}},
        })
    }

    /// The EndpointSlice object.
    pub fn endpoint_slice(&self) -> Value {
        let ports: Vec<Value> = self
            .ports
            .iter()
            .map(|p| json!({"name": p.name, "protocol": p.protocol, "port": p.target_port}))
            .collect();
        let endpoints: Vec<Value> = self
            .endpoints
            .iter()
            .map(|e| {
                json!({
                    "addresses": [e.ip.to_string()],
                    "conditions": {"ready": e.ready, "serving": e.serving, "terminating": e.terminating},
                    "nodeName": e.node,
                })
            })
            .collect();
        json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": format!("{}-abcde", self.name),
                "namespace": "default",
                "labels": {"kubernetes.io/service-name": self.name},
            },
            "addressType": "IPv4",
            "ports": ports,
            "endpoints": endpoints,
        })
    }

    /// Service and EndpointSlice as one `v1` List document.
    pub fn to_manifest(&self) -> String {
        let list = json!({"apiVersion": "v1", "kind": "List", "items": [self.service(), self.endpoint_slice()]});
        format!("{list:#}\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_load_balancer_with_everything() {
        let mut spec = ServiceSpec::new(
            "lb",
            Ipv4Addr::new(10, 96, 0, 5),
            vec![PortSpec::tcp("http", 80, 8080).node_port(30080)],
        );
        spec.service_type = ServiceType::LoadBalancer;
        spec.load_balancer_ips = vec![Ipv4Addr::new(203, 0, 113, 5)];
        spec.source_ranges = vec!["192.168.50.0/24".into()];
        spec.external_local = true;
        spec.health_check_node_port = Some(32000);
        spec.endpoints = vec![EndpointSpec::ready(Ipv4Addr::new(10, 244, 0, 10), "node-0")];
        let svc = spec.service();
        assert_eq!(svc["spec"]["type"], "LoadBalancer");
        assert_eq!(svc["spec"]["ports"][0]["nodePort"], 30080);
        assert_eq!(
            svc["status"]["loadBalancer"]["ingress"][0]["ip"],
            "203.0.113.5"
        );
        assert_eq!(svc["spec"]["externalTrafficPolicy"], "Local");
        let slice = spec.endpoint_slice();
        assert_eq!(
            slice["metadata"]["labels"]["kubernetes.io/service-name"],
            "lb"
        );
        assert_eq!(slice["ports"][0]["port"], 8080);
        assert!(spec.to_manifest().contains("\"kind\": \"List\""));
    }
}
