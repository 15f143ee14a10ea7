//! Validation of Kubernetes objects into the [`crate::model`] types.
//!
//! This module owns every check between a k8s-openapi object and the planner: addresses
//! parse and have the right family, ports and protocols are in range, names are unique and
//! the few enumerations kproxy reads have a known value. A failed check becomes a
//! [`FieldError`] naming the field path (`spec.ports[1].nodePort`) and the bad value; all
//! errors of one object are returned together and the object is then skipped as a whole.
//!
//! The rules per kind live in [`service`], [`endpoint_slice`] and [`node`]; the helpers
//! shared by them live here.

mod endpoint_slice;
mod node;
mod service;

use std::fmt;
use std::net::IpAddr;
use std::ops::RangeInclusive;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kproxy_dataplane::plan::{IpFamily, Protocol};

use crate::model::ObjectKey;

pub use self::endpoint_slice::validate_endpoint_slice;
pub use self::node::validate_node;
pub use self::service::validate_service;

/// The namespace of a namespaced object whose manifest names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Settings the validation rules depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationOptions {
    /// The range a Service's `nodePort` must fall in (the API server's
    /// `--service-node-port-range`).
    pub node_port_range: RangeInclusive<u16>,
}

impl Default for ValidationOptions {
    fn default() -> Self {
        ValidationOptions {
            node_port_range: 30000..=32767,
        }
    }
}

/// One failed check of one field of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field path, as in the manifest (`spec.ports[1].nodePort`).
    pub field: String,
    /// What is wrong, quoting the bad value (`0 is not in 1-65535`).
    pub message: String,
}

impl FieldError {
    /// An error of `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for FieldError {}

/// The key of an object: its namespace (defaulted to `default` when `namespaced` and unset)
/// and name. Cluster-scoped objects get an empty namespace.
pub(crate) fn object_key(meta: &ObjectMeta, namespaced: bool) -> ObjectKey {
    let namespace = match (namespaced, meta.namespace.as_deref()) {
        (false, _) => "",
        (true, None | Some("")) => DEFAULT_NAMESPACE,
        (true, Some(ns)) => ns,
    };
    ObjectKey::new(namespace, meta.name.clone().unwrap_or_default())
}

/// Checks that `metadata.name` is set.
pub(crate) fn check_name(key: &ObjectKey, errors: &mut Vec<FieldError>) {
    if key.name.is_empty() {
        errors.push(FieldError::new("metadata.name", "is required"));
    }
}

/// Parses an IP address, or records why it does not parse.
pub(crate) fn parse_ip(field: &str, value: &str, errors: &mut Vec<FieldError>) -> Option<IpAddr> {
    match value.parse::<IpAddr>() {
        Ok(ip) => Some(ip),
        Err(_) => {
            errors.push(FieldError::new(
                field,
                format!("{value:?} is not an IP address"),
            ));
            None
        }
    }
}

/// Parses a protocol (`TCP` when unset), or records why it is not one kproxy knows.
pub(crate) fn parse_protocol(
    field: &str,
    value: Option<&str>,
    errors: &mut Vec<FieldError>,
) -> Option<Protocol> {
    match value {
        None | Some("TCP") => Some(Protocol::Tcp),
        Some("UDP") => Some(Protocol::Udp),
        Some("SCTP") => Some(Protocol::Sctp),
        Some(other) => {
            errors.push(FieldError::new(
                field,
                format!("{other:?} is not one of TCP, UDP, SCTP"),
            ));
            None
        }
    }
}

/// Converts a port number to `u16` if it is in `range`, or records why it is not.
pub(crate) fn port_in(
    field: &str,
    value: i32,
    range: &RangeInclusive<u16>,
    errors: &mut Vec<FieldError>,
) -> Option<u16> {
    match u16::try_from(value) {
        Ok(port) if range.contains(&port) => Some(port),
        _ => {
            errors.push(FieldError::new(
                field,
                format!("{value} is not in {}-{}", range.start(), range.end()),
            ));
            None
        }
    }
}

/// The range of a valid TCP/UDP/SCTP port number.
pub(crate) const PORT_RANGE: RangeInclusive<u16> = 1..=65535;

/// Parses an IP family name (`IPv4`/`IPv6`), or records why it is not one.
pub(crate) fn parse_family(
    field: &str,
    value: &str,
    errors: &mut Vec<FieldError>,
) -> Option<IpFamily> {
    match value {
        "IPv4" => Some(IpFamily::V4),
        "IPv6" => Some(IpFamily::V6),
        other => {
            errors.push(FieldError::new(
                field,
                format!("{other:?} is not one of IPv4, IPv6"),
            ));
            None
        }
    }
}

/// Ok when no error was recorded.
pub(crate) fn finish<T>(value: T, errors: Vec<FieldError>) -> Result<T, Vec<FieldError>> {
    if errors.is_empty() {
        Ok(value)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_node_port_range_is_upstreams() {
        assert_eq!(ValidationOptions::default().node_port_range, 30000..=32767);
    }

    #[test]
    fn namespace_defaults_only_for_namespaced_objects() {
        let meta = ObjectMeta {
            name: Some("web".into()),
            ..ObjectMeta::default()
        };
        assert_eq!(object_key(&meta, true), ObjectKey::new("default", "web"));
        assert_eq!(object_key(&meta, false), ObjectKey::new("", "web"));
        let meta = ObjectMeta {
            namespace: Some("prod".into()),
            ..meta
        };
        assert_eq!(object_key(&meta, true), ObjectKey::new("prod", "web"));
        assert_eq!(object_key(&meta, false), ObjectKey::new("", "web"));
    }

    #[test]
    fn helpers_quote_the_bad_value() {
        let mut errors = Vec::new();
        assert_eq!(
            parse_ip("a", "10.0.0.1", &mut errors),
            "10.0.0.1".parse().ok()
        );
        assert_eq!(parse_ip("b", "10.0.0.300", &mut errors), None);
        assert_eq!(parse_protocol("c", None, &mut errors), Some(Protocol::Tcp));
        assert_eq!(parse_protocol("d", Some("tcp"), &mut errors), None);
        assert_eq!(port_in("e", 65535, &PORT_RANGE, &mut errors), Some(65535));
        assert_eq!(port_in("f", 65536, &PORT_RANGE, &mut errors), None);
        assert_eq!(port_in("g", -1, &PORT_RANGE, &mut errors), None);
        assert_eq!(parse_family("h", "IPv6", &mut errors), Some(IpFamily::V6));
        assert_eq!(parse_family("i", "ipv4", &mut errors), None);
        let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "b: \"10.0.0.300\" is not an IP address",
                "d: \"tcp\" is not one of TCP, UDP, SCTP",
                "f: 65536 is not in 1-65535",
                "g: -1 is not in 1-65535",
                "i: \"ipv4\" is not one of IPv4, IPv6",
            ]
        );
    }
}
