//! Validation of a `v1` Service into a [`model::Service`].
//!
//! A Service that kproxy does not program (another proxy's, ExternalName, headless, no
//! cluster IP yet) is valid with a [`SkipReason`] and is not checked further, as upstream
//! kube-proxy never looks at it either; its lists are then empty.
//!
//! Everything else is read as kube-proxy's `newBaseServiceInfo` reads it: a NodePort is
//! programmed whenever it is set (whatever the type, and in any range: the range is the API
//! server's allocation policy, not kube-proxy's), load-balancer ingress IPs whatever the
//! type, unknown enumeration values as their default. Only what cannot be programmed is
//! left out, at the smallest scope: one cluster IP, one port, one NodePort, one address.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use kproxy_dataplane::plan::{IpFamily, Protocol};

use super::{
    Checked, FieldError, check_name, object_key, parse_cidr, parse_ip, parse_port, parse_protocol,
};
use crate::model::{self, ObjectKey, SERVICE_PROXY_NAME_LABEL, ServicePortSpec, SkipReason};

#[cfg(test)]
mod tests;

/// Upstream's default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;
/// The largest session affinity timeout the API server admits (one day).
const MAX_AFFINITY_TIMEOUT: u32 = 86400;

/// `spec.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServiceType {
    ClusterIp,
    NodePort,
    LoadBalancer,
    ExternalName,
}

/// Validates a Service: what kproxy programs of it, and what is wrong with the rest.
pub fn validate_service(service: &Service) -> Checked<model::Service> {
    let key = object_key(&service.metadata, true);
    let mut problems = Vec::new();
    if !check_name(&key, &mut problems) {
        return Checked::skipped(problems);
    }
    if let Some(proxy) = other_proxy(service) {
        return Checked::with(skipped(key, SkipReason::OtherProxy(proxy)), problems);
    }
    let default_spec = ServiceSpec::default();
    let spec = service.spec.as_ref().unwrap_or(&default_spec);
    let service_type = parse_type(spec.type_.as_deref(), &mut problems);
    if service_type == ServiceType::ExternalName {
        return Checked::with(skipped(key, SkipReason::ExternalName), problems);
    }
    match cluster_ips(spec, &mut problems) {
        ClusterIps::Headless => Checked::with(skipped(key, SkipReason::Headless), problems),
        ClusterIps::Unset => Checked::with(skipped(key, SkipReason::NoClusterIp), problems),
        ClusterIps::Ips(ips) if ips.is_empty() => {
            problems.push(FieldError::new(
                "spec.clusterIPs",
                "has no usable address; the Service is skipped",
            ));
            Checked::skipped(problems)
        }
        ClusterIps::Ips(ips) => {
            let service = programmed(key, service, spec, service_type, ips, &mut problems);
            Checked::with(service, problems)
        }
    }
}

/// The fields of a Service kproxy programs.
fn programmed(
    key: ObjectKey,
    service: &Service,
    spec: &ServiceSpec,
    service_type: ServiceType,
    cluster_ips: Vec<IpAddr>,
    problems: &mut Vec<FieldError>,
) -> model::Service {
    let ports = ports(spec, service_type, problems);
    let external_ips = addresses(
        "spec.externalIPs",
        spec.external_ips.as_deref().unwrap_or_default(),
        problems,
    );
    let external_local = external_policy_local(spec, problems);
    // kube-proxy's ExternallyAccessible: NodePort or LoadBalancer, or external IPs.
    let externally_accessible = matches!(
        service_type,
        ServiceType::NodePort | ServiceType::LoadBalancer
    ) || !external_ips.is_empty();
    let lb = service_type == ServiceType::LoadBalancer;
    let source_ranges = source_ranges(spec, problems);
    let load_balancer_ips = match source_ranges {
        SourceRanges::Usable(_) => ingress_ips(service, problems),
        SourceRanges::NoneUsable => Vec::new(),
    };
    model::Service {
        key,
        skip: None,
        cluster_ips,
        ports,
        external_ips,
        load_balancer_ips,
        load_balancer_source_ranges: match source_ranges {
            SourceRanges::Usable(ranges) => ranges,
            SourceRanges::NoneUsable => Vec::new(),
        },
        session_affinity_timeout: session_affinity(spec, problems),
        external_policy_local: external_local && externally_accessible,
        internal_policy_local: internal_policy_local(spec, problems),
        // kube-proxy's NeedsHealthCheck: a LoadBalancer with externalTrafficPolicy Local.
        health_check_node_port: if lb && external_local {
            health_check_node_port(spec, problems)
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

/// `spec.type`; an unknown value reads as ClusterIP (kube-proxy compares the type only with
/// ExternalName, NodePort and LoadBalancer).
fn parse_type(value: Option<&str>, problems: &mut Vec<FieldError>) -> ServiceType {
    match value {
        None | Some("ClusterIP") => ServiceType::ClusterIp,
        Some("NodePort") => ServiceType::NodePort,
        Some("LoadBalancer") => ServiceType::LoadBalancer,
        Some("ExternalName") => ServiceType::ExternalName,
        Some(other) => {
            problems.push(FieldError::tolerated(
                "spec.type",
                format!("{other:?} is not one of ClusterIP, NodePort, LoadBalancer, ExternalName"),
                "read as ClusterIP",
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
    /// The usable addresses, at most one per family, primary first.
    Ips(Vec<IpAddr>),
}

/// The raw cluster IPs with their field paths: `spec.clusterIPs`, else `spec.clusterIP`
/// (kube-proxy's `GetClusterIPByFamily` reads `clusterIPs` when it is set).
fn raw_cluster_ips(spec: &ServiceSpec, problems: &mut Vec<FieldError>) -> Vec<(String, String)> {
    let single = spec.cluster_ip.as_deref().unwrap_or("");
    match spec.cluster_ips.as_deref() {
        Some(list) if !list.is_empty() => {
            if !single.is_empty() && single != list[0] {
                problems.push(FieldError::tolerated(
                    "spec.clusterIP",
                    format!("{single:?} differs from spec.clusterIPs[0] {:?}", list[0]),
                    "spec.clusterIPs is used",
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

fn cluster_ips(spec: &ServiceSpec, problems: &mut Vec<FieldError>) -> ClusterIps {
    let raw = raw_cluster_ips(spec, problems);
    match raw.first().map(|(_, ip)| ip.as_str()) {
        None | Some("") => return ClusterIps::Unset,
        Some("None") => return ClusterIps::Headless,
        Some(_) => {}
    }
    let families = spec.ip_families.as_deref().unwrap_or_default();
    let mut ips: Vec<IpAddr> = Vec::new();
    for (i, (field, value)) in raw.iter().enumerate() {
        let ip = match parse_ip(value) {
            Ok(ip) => ip,
            Err(message) => {
                problems.push(FieldError::left_out(
                    field.as_str(),
                    message,
                    "this cluster IP",
                ));
                continue;
            }
        };
        let family = IpFamily::of(&ip);
        // GetClusterIPByFamily finds an address through ipFamilies, which the API server
        // keeps in step with clusterIPs; kproxy goes by the address itself.
        if let Some(declared) = families.get(i).filter(|f| **f != family.to_string()) {
            problems.push(FieldError::tolerated(
                field.as_str(),
                format!("{ip} is {family} but spec.ipFamilies[{i}] is {declared:?}"),
                &format!("programmed as {family}"),
            ));
        }
        if let Some(first) = ips.iter().find(|other| IpFamily::of(other) == family) {
            // GetClusterIPByFamily takes the first address of each family.
            problems.push(FieldError::tolerated(
                field.as_str(),
                format!("{ip} is a second {family} cluster IP"),
                &format!("only the first, {first}, is programmed"),
            ));
            continue;
        }
        ips.push(ip);
    }
    ClusterIps::Ips(ips)
}

fn ports(
    spec: &ServiceSpec,
    service_type: ServiceType,
    problems: &mut Vec<FieldError>,
) -> Vec<ServicePortSpec> {
    let raw = spec.ports.as_deref().unwrap_or_default();
    if raw.is_empty() {
        problems.push(FieldError::tolerated(
            "spec.ports",
            "is empty",
            "the Service has nothing to program",
        ));
    }
    let mut ports = Vec::with_capacity(raw.len());
    let mut uniques = PortUniqueness::default();
    for (i, port) in raw.iter().enumerate() {
        if port.name.as_deref().unwrap_or("").is_empty() && raw.len() > 1 {
            problems.push(FieldError::tolerated(
                format!("spec.ports[{i}].name"),
                "is required when the Service has more than one port",
                "programmed unnamed",
            ));
        }
        let Some(mut valid) = service_port(i, port, service_type, problems) else {
            continue;
        };
        if uniques.admit(i, &mut valid, problems) {
            ports.push(valid);
        }
    }
    ports
}

/// One entry of `spec.ports`, `None` when it cannot be programmed.
fn service_port(
    i: usize,
    port: &ServicePort,
    service_type: ServiceType,
    problems: &mut Vec<FieldError>,
) -> Option<ServicePortSpec> {
    const PART: &str = "this port";
    let field = |name: &str| format!("spec.ports[{i}].{name}");
    let number = parse_port(port.port)
        .map_err(|message| problems.push(FieldError::left_out(field("port"), message, PART)))
        .ok();
    let protocol = parse_protocol(port.protocol.as_deref())
        .map_err(|message| problems.push(FieldError::left_out(field("protocol"), message, PART)))
        .ok();
    let node_port = match port.node_port {
        None | Some(0) => None,
        Some(n) => node_port(&field("nodePort"), n, service_type, problems),
    };
    Some(ServicePortSpec {
        name: port.name.clone().unwrap_or_default(),
        protocol: protocol?,
        port: number?,
        node_port,
    })
}

/// A set `nodePort`: programmed whatever the type and range, as kube-proxy does.
fn node_port(
    field: &str,
    value: i32,
    service_type: ServiceType,
    problems: &mut Vec<FieldError>,
) -> Option<u16> {
    let port = parse_port(value)
        .map_err(|message| problems.push(FieldError::left_out(field, message, "this NodePort")))
        .ok()?;
    if service_type == ServiceType::ClusterIp {
        problems.push(FieldError::tolerated(
            field,
            format!("{port} is set on a Service of type ClusterIP"),
            "programmed, as kube-proxy does",
        ));
    }
    Some(port)
}

/// Which keys earlier entries of `spec.ports` took. kube-proxy keys a service port by
/// name and protocol, and two ports on one `port/protocol` or `nodePort/protocol` would
/// be two rules for one destination: the first entry keeps each key.
#[derive(Default)]
struct PortUniqueness {
    names: HashMap<(String, Protocol), usize>,
    ports: HashMap<(u16, Protocol), usize>,
    node_ports: HashMap<(u16, Protocol), usize>,
}

impl PortUniqueness {
    /// Whether `port` keeps its place (its NodePort may be dropped).
    fn admit(
        &mut self,
        i: usize,
        port: &mut ServicePortSpec,
        problems: &mut Vec<FieldError>,
    ) -> bool {
        const PART: &str = "this port";
        let protocol = port.protocol;
        if let Some(&first) = self.names.get(&(port.name.clone(), protocol)) {
            problems.push(FieldError::left_out(
                format!("spec.ports[{i}].name"),
                format!(
                    "{:?}/{protocol} is also the name of spec.ports[{first}]",
                    port.name
                ),
                PART,
            ));
            return false;
        }
        if let Some(&first) = self.ports.get(&(port.port, protocol)) {
            problems.push(FieldError::left_out(
                format!("spec.ports[{i}].port"),
                format!(
                    "{}/{protocol} is also used by spec.ports[{first}]",
                    port.port
                ),
                PART,
            ));
            return false;
        }
        if self.names.keys().any(|(name, _)| *name == port.name) {
            problems.push(FieldError::tolerated(
                format!("spec.ports[{i}].name"),
                format!("{:?} is also the name of an earlier port", port.name),
                "programmed, its protocol tells them apart",
            ));
        }
        self.names.insert((port.name.clone(), protocol), i);
        self.ports.insert((port.port, protocol), i);
        if let Some(node_port) = port.node_port {
            if let Some(&first) = self.node_ports.get(&(node_port, protocol)) {
                problems.push(FieldError::left_out(
                    format!("spec.ports[{i}].nodePort"),
                    format!("{node_port}/{protocol} is also used by spec.ports[{first}]"),
                    "this NodePort",
                ));
                port.node_port = None;
            } else {
                self.node_ports.insert((node_port, protocol), i);
            }
        }
        true
    }
}

/// A list of addresses (`spec.externalIPs`), without the ones that do not parse.
fn addresses(field: &str, raw: &[String], problems: &mut Vec<FieldError>) -> Vec<IpAddr> {
    let mut ips = Vec::with_capacity(raw.len());
    for (i, value) in raw.iter().enumerate() {
        if value.trim().is_empty() {
            continue; // MapIPsByIPFamily skips empty entries silently.
        }
        match parse_ip(value) {
            Ok(ip) => ips.push(ip),
            Err(message) => problems.push(FieldError::left_out(
                format!("{field}[{i}]"),
                message,
                "this address",
            )),
        }
    }
    ips
}

/// `status.loadBalancer.ingress[].ip`, without entries lacking an IP or with `ipMode:
/// Proxy` (kube-proxy's IsVIPMode), whatever the Service's type (as kube-proxy).
fn ingress_ips(service: &Service, problems: &mut Vec<FieldError>) -> Vec<IpAddr> {
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
        match parse_ip(ip) {
            Ok(ip) => ips.push(ip),
            Err(message) => problems.push(FieldError::left_out(
                format!("status.loadBalancer.ingress[{i}].ip"),
                message,
                "this address",
            )),
        }
    }
    ips
}

/// What `spec.loadBalancerSourceRanges` allows.
enum SourceRanges {
    /// These ranges (empty: every source).
    Usable(Vec<IpNet>),
    /// Ranges were given and none parses: rather than open the load balancer to every
    /// source, its IPs are left out.
    NoneUsable,
}

fn source_ranges(spec: &ServiceSpec, problems: &mut Vec<FieldError>) -> SourceRanges {
    let raw = spec
        .load_balancer_source_ranges
        .as_deref()
        .unwrap_or_default();
    let mut ranges = Vec::with_capacity(raw.len());
    for (i, range) in raw.iter().enumerate() {
        // Values are trimmed, as the API server and kube-proxy both do.
        let range = range.trim();
        let field = format!("spec.loadBalancerSourceRanges[{i}]");
        match (parse_cidr(range), parse_ip(range)) {
            (Ok(net), _) => ranges.push(net),
            (Err(_), Ok(ip)) => {
                let net = IpNet::from(ip);
                problems.push(FieldError::tolerated(
                    field,
                    format!("{range:?} is an address, not a CIDR"),
                    &format!("programmed as {net}"),
                ));
                ranges.push(net);
            }
            (Err(message), Err(_)) => {
                problems.push(FieldError::left_out(field, message, "this range"));
            }
        }
    }
    if ranges.is_empty() && !raw.is_empty() {
        problems.push(FieldError::left_out(
            "spec.loadBalancerSourceRanges",
            "has no usable range (an empty list would admit every source)",
            "every load-balancer IP of the Service",
        ));
        return SourceRanges::NoneUsable;
    }
    SourceRanges::Usable(ranges)
}

/// `sessionAffinity`: an unknown value reads as None (kube-proxy compares it with
/// ClientIP only).
fn session_affinity(spec: &ServiceSpec, problems: &mut Vec<FieldError>) -> Option<u32> {
    match spec.session_affinity.as_deref() {
        None | Some("None") => None,
        Some("ClientIP") => affinity_timeout(spec, problems),
        Some(other) => {
            problems.push(FieldError::tolerated(
                "spec.sessionAffinity",
                format!("{other:?} is not one of None, ClientIP"),
                "read as None",
            ));
            None
        }
    }
}

/// The ClientIP affinity timeout: the API server's default when unset, any positive
/// number of seconds (kube-proxy programs what it is given); below 1 there is no timeout
/// to program and affinity is left out.
fn affinity_timeout(spec: &ServiceSpec, problems: &mut Vec<FieldError>) -> Option<u32> {
    const FIELD: &str = "spec.sessionAffinityConfig.clientIP.timeoutSeconds";
    let configured = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds);
    let Some(seconds) = configured else {
        return Some(DEFAULT_AFFINITY_TIMEOUT);
    };
    match u32::try_from(seconds) {
        Ok(s) if (1..=MAX_AFFINITY_TIMEOUT).contains(&s) => Some(s),
        Ok(s) if s > MAX_AFFINITY_TIMEOUT => {
            problems.push(FieldError::tolerated(
                FIELD,
                format!("{s} is more than {MAX_AFFINITY_TIMEOUT}"),
                "programmed as given",
            ));
            Some(s)
        }
        _ => {
            problems.push(FieldError::left_out(
                FIELD,
                format!("{seconds} is not a positive number of seconds"),
                "session affinity",
            ));
            None
        }
    }
}

/// Whether a traffic policy field says `Local`: `Cluster` when unset or unknown (kube-proxy
/// compares it with Local only).
fn policy_local(field: &str, value: Option<&str>, problems: &mut Vec<FieldError>) -> bool {
    match value {
        None | Some("Cluster") => false,
        Some("Local") => true,
        Some(other) => {
            problems.push(FieldError::tolerated(
                field,
                format!("{other:?} is not one of Cluster, Local"),
                "read as Cluster",
            ));
            false
        }
    }
}

fn external_policy_local(spec: &ServiceSpec, problems: &mut Vec<FieldError>) -> bool {
    let value = spec.external_traffic_policy.as_deref();
    policy_local("spec.externalTrafficPolicy", value, problems)
}

fn internal_policy_local(spec: &ServiceSpec, problems: &mut Vec<FieldError>) -> bool {
    let value = spec.internal_traffic_policy.as_deref();
    policy_local("spec.internalTrafficPolicy", value, problems)
}

fn health_check_node_port(spec: &ServiceSpec, problems: &mut Vec<FieldError>) -> Option<u16> {
    let port = spec.health_check_node_port?;
    parse_port(port)
        .map_err(|message| {
            problems.push(FieldError::left_out(
                "spec.healthCheckNodePort",
                message,
                "the health check server of this Service",
            ))
        })
        .ok()
}
