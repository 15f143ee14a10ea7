//! Validation of a `v1` Service into a [`model::Service`].
//!
//! A Service that kproxy does not program (another proxy's, ExternalName, headless, no
//! cluster IP yet) is valid with a [`SkipReason`] and is not checked further, as upstream
//! kube-proxy never looks at it either; its lists are then empty.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use kproxy_dataplane::plan::{IpFamily, Protocol};

use super::{
    FieldError, PORT_RANGE, ValidationOptions, check_name, finish, object_key, parse_family,
    parse_ip, parse_protocol, port_in,
};
use crate::model::{self, ObjectKey, SERVICE_PROXY_NAME_LABEL, ServicePortSpec, SkipReason};

#[cfg(test)]
mod tests;

/// Upstream's default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;
/// The largest session affinity timeout upstream accepts (one day).
const MAX_AFFINITY_TIMEOUT: i32 = 86400;

/// `spec.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServiceType {
    ClusterIp,
    NodePort,
    LoadBalancer,
    ExternalName,
}

impl ServiceType {
    /// Whether the Service has NodePorts (NodePort and LoadBalancer).
    fn has_node_ports(self) -> bool {
        matches!(self, ServiceType::NodePort | ServiceType::LoadBalancer)
    }
}

/// Validates a Service.
///
/// Returns every error of the Service at once; on any error the Service must be skipped.
/// A Service kproxy does not program is `Ok` with `skip` set.
pub fn validate_service(
    service: &Service,
    opts: &ValidationOptions,
) -> Result<model::Service, Vec<FieldError>> {
    let key = object_key(&service.metadata, true);
    let mut errors = Vec::new();
    check_name(&key, &mut errors);
    if let Some(proxy) = other_proxy(service) {
        return finish(skipped(key, SkipReason::OtherProxy(proxy)), errors);
    }
    let default_spec = ServiceSpec::default();
    let spec = service.spec.as_ref().unwrap_or(&default_spec);
    let service_type = parse_type(spec.type_.as_deref(), &mut errors);
    if service_type == ServiceType::ExternalName {
        return finish(skipped(key, SkipReason::ExternalName), errors);
    }
    let cluster_ips = match cluster_ips(spec, &mut errors) {
        ClusterIps::Headless => return finish(skipped(key, SkipReason::Headless), errors),
        ClusterIps::Unset => return finish(skipped(key, SkipReason::NoClusterIp), errors),
        ClusterIps::Ips(ips) => ips,
    };
    let validated = programmed(
        key,
        service,
        spec,
        service_type,
        cluster_ips,
        opts,
        &mut errors,
    );
    finish(validated, errors)
}

/// The fields of a Service kproxy programs.
fn programmed(
    key: ObjectKey,
    service: &Service,
    spec: &ServiceSpec,
    service_type: ServiceType,
    cluster_ips: Vec<IpAddr>,
    opts: &ValidationOptions,
    errors: &mut Vec<FieldError>,
) -> model::Service {
    let ports = ports(spec, service_type, opts, errors);
    let external_ips = external_ips(spec, errors);
    let external_local = external_policy_local(spec, errors);
    let externally_accessible = service_type.has_node_ports() || !external_ips.is_empty();
    let lb = service_type == ServiceType::LoadBalancer;
    model::Service {
        key,
        skip: None,
        cluster_ips,
        ports,
        external_ips,
        load_balancer_ips: if lb {
            ingress_ips(service, errors)
        } else {
            Vec::new()
        },
        load_balancer_source_ranges: source_ranges(spec, errors),
        session_affinity_timeout: session_affinity(spec, errors),
        external_policy_local: external_local && externally_accessible,
        internal_policy_local: internal_policy_local(spec, errors),
        health_check_node_port: if lb && external_local {
            health_check_node_port(spec, errors)
        } else {
            None
        },
    }
}

/// A Service kproxy does not program.
fn skipped(key: ObjectKey, reason: SkipReason) -> model::Service {
    model::Service {
        key,
        skip: Some(reason),
        cluster_ips: Vec::new(),
        ports: Vec::new(),
        external_ips: Vec::new(),
        load_balancer_ips: Vec::new(),
        load_balancer_source_ranges: Vec::new(),
        session_affinity_timeout: None,
        external_policy_local: false,
        internal_policy_local: false,
        health_check_node_port: None,
    }
}

/// The value of the service-proxy-name label, if set (to any value, as upstream).
fn other_proxy(service: &Service) -> Option<String> {
    service
        .metadata
        .labels
        .as_ref()?
        .get(SERVICE_PROXY_NAME_LABEL)
        .cloned()
}

fn parse_type(value: Option<&str>, errors: &mut Vec<FieldError>) -> ServiceType {
    match value {
        None | Some("ClusterIP") => ServiceType::ClusterIp,
        Some("NodePort") => ServiceType::NodePort,
        Some("LoadBalancer") => ServiceType::LoadBalancer,
        Some("ExternalName") => ServiceType::ExternalName,
        Some(other) => {
            errors.push(FieldError::new(
                "spec.type",
                format!("{other:?} is not one of ClusterIP, NodePort, LoadBalancer, ExternalName"),
            ));
            ServiceType::ClusterIp
        }
    }
}

/// What `spec.clusterIPs` / `spec.clusterIP` say.
enum ClusterIps {
    /// `None`.
    Headless,
    /// Empty or unset.
    Unset,
    /// Parsed addresses (possibly fewer than given, when some had errors).
    Ips(Vec<IpAddr>),
}

/// The raw cluster IPs with their field paths: `spec.clusterIPs`, else `spec.clusterIP`.
fn raw_cluster_ips(spec: &ServiceSpec, errors: &mut Vec<FieldError>) -> Vec<(String, String)> {
    let single = spec.cluster_ip.as_deref().unwrap_or("");
    match spec.cluster_ips.as_deref() {
        Some(list) if !list.is_empty() => {
            if !single.is_empty() && single != list[0] {
                errors.push(FieldError::new(
                    "spec.clusterIP",
                    format!("{single:?} differs from spec.clusterIPs[0] {:?}", list[0]),
                ));
            }
            list.iter()
                .enumerate()
                .map(|(i, ip)| (format!("spec.clusterIPs[{i}]"), ip.clone()))
                .collect()
        }
        _ if single.is_empty() => Vec::new(),
        _ => vec![("spec.clusterIP".to_string(), single.to_string())],
    }
}

fn cluster_ips(spec: &ServiceSpec, errors: &mut Vec<FieldError>) -> ClusterIps {
    let raw = raw_cluster_ips(spec, errors);
    match raw.first().map(|(_, ip)| ip.as_str()) {
        None | Some("") => return ClusterIps::Unset,
        Some("None") => return ClusterIps::Headless,
        Some(_) => {}
    }
    if raw.len() > 2 {
        errors.push(FieldError::new(
            "spec.clusterIPs",
            format!("has {} addresses, at most 2 (one per family)", raw.len()),
        ));
    }
    let families = ip_families(spec, errors);
    let mut ips: Vec<IpAddr> = Vec::new();
    for (i, (field, value)) in raw.iter().enumerate() {
        let Some(ip) = parse_ip(field, value, errors) else {
            continue;
        };
        let family = IpFamily::of(&ip);
        if let Some(Some(wanted)) = families.get(i)
            && *wanted != family
        {
            errors.push(FieldError::new(
                field.as_str(),
                format!("{ip} is {family} but spec.ipFamilies[{i}] is {wanted}"),
            ));
        }
        if ips.iter().any(|other| IpFamily::of(other) == family) {
            errors.push(FieldError::new(
                field.as_str(),
                format!("{ip} is {family} like an earlier cluster IP: at most one per family"),
            ));
            continue;
        }
        ips.push(ip);
    }
    ClusterIps::Ips(ips)
}

/// `spec.ipFamilies`, `None` for an entry that does not parse.
fn ip_families(spec: &ServiceSpec, errors: &mut Vec<FieldError>) -> Vec<Option<IpFamily>> {
    let families = spec.ip_families.as_deref().unwrap_or_default();
    let parsed: Vec<Option<IpFamily>> = families
        .iter()
        .enumerate()
        .map(|(i, f)| parse_family(&format!("spec.ipFamilies[{i}]"), f, errors))
        .collect();
    if parsed.len() == 2 && parsed[0].is_some() && parsed[0] == parsed[1] {
        errors.push(FieldError::new(
            "spec.ipFamilies[1]",
            format!("{:?} repeats spec.ipFamilies[0]", families[1]),
        ));
    }
    if parsed.len() > 2 {
        errors.push(FieldError::new(
            "spec.ipFamilies",
            format!("has {} entries, at most 2", parsed.len()),
        ));
    }
    parsed
}

fn ports(
    spec: &ServiceSpec,
    service_type: ServiceType,
    opts: &ValidationOptions,
    errors: &mut Vec<FieldError>,
) -> Vec<ServicePortSpec> {
    let raw = spec.ports.as_deref().unwrap_or_default();
    if raw.is_empty() {
        errors.push(FieldError::new(
            "spec.ports",
            "at least one port is required",
        ));
    }
    let mut ports = Vec::with_capacity(raw.len());
    let mut uniques = PortUniqueness::default();
    for (i, port) in raw.iter().enumerate() {
        let Some(valid) = service_port(i, port, raw.len(), service_type, opts, errors) else {
            continue;
        };
        uniques.check(i, &valid, errors);
        ports.push(valid);
    }
    ports
}

/// One entry of `spec.ports`, `None` when it has errors.
fn service_port(
    i: usize,
    port: &ServicePort,
    count: usize,
    service_type: ServiceType,
    opts: &ValidationOptions,
    errors: &mut Vec<FieldError>,
) -> Option<ServicePortSpec> {
    let before = errors.len();
    let field = |name: &str| format!("spec.ports[{i}].{name}");
    let name = port.name.clone().unwrap_or_default();
    if name.is_empty() && count > 1 {
        errors.push(FieldError::new(
            field("name"),
            "is required when the Service has more than one port",
        ));
    }
    let number = port_in(&field("port"), port.port, &PORT_RANGE, errors);
    let protocol = parse_protocol(&field("protocol"), port.protocol.as_deref(), errors);
    let node_port = match port.node_port {
        Some(n) if n != 0 && service_type.has_node_ports() => {
            port_in(&field("nodePort"), n, &opts.node_port_range, errors)
        }
        _ => None,
    };
    if errors.len() > before {
        return None;
    }
    Some(ServicePortSpec {
        name,
        protocol: protocol?,
        port: number?,
        node_port,
    })
}

/// Tracks which names, ports and NodePorts earlier entries of `spec.ports` used.
#[derive(Default)]
struct PortUniqueness {
    names: HashMap<String, usize>,
    ports: HashMap<(u16, Protocol), usize>,
    node_ports: HashMap<(u16, Protocol), usize>,
}

impl PortUniqueness {
    fn check(&mut self, i: usize, port: &ServicePortSpec, errors: &mut Vec<FieldError>) {
        if !port.name.is_empty()
            && let Some(first) = self.names.insert(port.name.clone(), i)
        {
            errors.push(FieldError::new(
                format!("spec.ports[{i}].name"),
                format!("{:?} is also the name of spec.ports[{first}]", port.name),
            ));
        }
        if let Some(first) = self.ports.insert((port.port, port.protocol), i) {
            errors.push(FieldError::new(
                format!("spec.ports[{i}].port"),
                format!(
                    "{}/{} is also used by spec.ports[{first}]",
                    port.port, port.protocol
                ),
            ));
        }
        if let Some(node_port) = port.node_port
            && let Some(first) = self.node_ports.insert((node_port, port.protocol), i)
        {
            errors.push(FieldError::new(
                format!("spec.ports[{i}].nodePort"),
                format!(
                    "{node_port}/{} is also used by spec.ports[{first}]",
                    port.protocol
                ),
            ));
        }
    }
}

fn external_ips(spec: &ServiceSpec, errors: &mut Vec<FieldError>) -> Vec<IpAddr> {
    let raw = spec.external_ips.as_deref().unwrap_or_default();
    raw.iter()
        .enumerate()
        .filter_map(|(i, ip)| parse_ip(&format!("spec.externalIPs[{i}]"), ip, errors))
        .collect()
}

/// `status.loadBalancer.ingress[].ip`, without entries lacking an IP or with `ipMode: Proxy`.
fn ingress_ips(service: &Service, errors: &mut Vec<FieldError>) -> Vec<IpAddr> {
    let ingress = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref())
        .unwrap_or_default();
    let mut ips = Vec::new();
    for (i, entry) in ingress.iter().enumerate() {
        let ip = entry.ip.as_deref().unwrap_or("");
        if ip.is_empty() || entry.ip_mode.as_deref() == Some("Proxy") {
            continue;
        }
        let field = format!("status.loadBalancer.ingress[{i}].ip");
        ips.extend(parse_ip(&field, ip, errors));
    }
    ips
}

fn source_ranges(spec: &ServiceSpec, errors: &mut Vec<FieldError>) -> Vec<IpNet> {
    let raw = spec
        .load_balancer_source_ranges
        .as_deref()
        .unwrap_or_default();
    let mut ranges = Vec::with_capacity(raw.len());
    for (i, range) in raw.iter().enumerate() {
        match parse_cidr(range) {
            Some(net) => ranges.push(net),
            None => errors.push(FieldError::new(
                format!("spec.loadBalancerSourceRanges[{i}]"),
                format!("{range:?} is not a CIDR"),
            )),
        }
    }
    ranges
}

/// A CIDR (host bits cleared, as upstream), or a bare address as a /32 or /128.
fn parse_cidr(value: &str) -> Option<IpNet> {
    let value = value.trim();
    if let Ok(net) = value.parse::<IpNet>() {
        return Some(net.trunc());
    }
    value.parse::<IpAddr>().ok().map(IpNet::from)
}

fn session_affinity(spec: &ServiceSpec, errors: &mut Vec<FieldError>) -> Option<u32> {
    match spec.session_affinity.as_deref() {
        None | Some("None") => None,
        Some("ClientIP") => affinity_timeout(spec, errors),
        Some(other) => {
            errors.push(FieldError::new(
                "spec.sessionAffinity",
                format!("{other:?} is not one of None, ClientIP"),
            ));
            None
        }
    }
}

fn affinity_timeout(spec: &ServiceSpec, errors: &mut Vec<FieldError>) -> Option<u32> {
    let configured = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds);
    let Some(seconds) = configured else {
        return Some(DEFAULT_AFFINITY_TIMEOUT);
    };
    match u32::try_from(seconds) {
        Ok(s) if (1..=MAX_AFFINITY_TIMEOUT).contains(&seconds) => Some(s),
        _ => {
            errors.push(FieldError::new(
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                format!("{seconds} is not in 1-{MAX_AFFINITY_TIMEOUT}"),
            ));
            None
        }
    }
}

/// Whether a traffic policy field says `Local` (`Cluster` when unset).
fn policy_local(field: &str, value: Option<&str>, errors: &mut Vec<FieldError>) -> bool {
    match value {
        None | Some("Cluster") => false,
        Some("Local") => true,
        Some(other) => {
            errors.push(FieldError::new(
                field,
                format!("{other:?} is not one of Cluster, Local"),
            ));
            false
        }
    }
}

fn external_policy_local(spec: &ServiceSpec, errors: &mut Vec<FieldError>) -> bool {
    let value = spec.external_traffic_policy.as_deref();
    policy_local("spec.externalTrafficPolicy", value, errors)
}

fn internal_policy_local(spec: &ServiceSpec, errors: &mut Vec<FieldError>) -> bool {
    let value = spec.internal_traffic_policy.as_deref();
    policy_local("spec.internalTrafficPolicy", value, errors)
}

fn health_check_node_port(spec: &ServiceSpec, errors: &mut Vec<FieldError>) -> Option<u16> {
    let port = spec.health_check_node_port?;
    port_in("spec.healthCheckNodePort", port, &PORT_RANGE, errors)
}
