//! Validation of Kubernetes objects into the [`crate::model`] types.
//!
//! This module owns every check between a k8s-openapi object and the planner. The rule is
//! kube-proxy's: program everything the API server admitted, and leave out only what
//! cannot be programmed, at the smallest scope (one port, one address, one endpoint; a
//! whole object only when it has no name or nothing of it can be used). What protects the
//! kernel stays strict: addresses must parse and have the right family, port numbers must
//! be 1-65535, protocols must be TCP, UDP or SCTP. Values an API server would refuse but
//! that kube-proxy programs anyway (which only manifests can carry) are programmed as
//! kube-proxy would and reported.
//!
//! Validating one object gives a [`Checked`]: the part kproxy programs and a
//! [`FieldError`] per problem, each naming the field path (`spec.ports[1].nodePort`), the
//! bad value, and what kproxy does about it.
//!
//! The rules per kind live in [`service`], [`endpoint_slice`] and [`node`]; the helpers
//! shared by them live here.

mod endpoint_slice;
mod node;
mod service;
mod service_cidr;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kproxy_dataplane::plan::Protocol;

use crate::model::ObjectKey;

pub use self::endpoint_slice::validate_endpoint_slice;
pub use self::node::validate_node;
pub use self::service::validate_service;
pub use self::service_cidr::validate_service_cidr;

/// The namespace of a namespaced object whose manifest names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// What validating one object gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked<T> {
    /// What kproxy programs. `None` with problems: nothing of the object can be used, it is
    /// skipped. `None` without problems: a valid object kproxy has no use for (an FQDN
    /// EndpointSlice).
    pub value: Option<T>,
    /// Every problem found, in field order. With a value, each says what was left out or
    /// how the value is programmed anyway.
    pub problems: Vec<FieldError>,
}

impl<T> Checked<T> {
    /// `value` with the problems found on the way to it.
    pub(crate) fn with(value: T, problems: Vec<FieldError>) -> Self {
        Checked {
            value: Some(value),
            problems,
        }
    }

    /// Nothing to program, for the reasons in `problems`.
    pub(crate) fn skipped(problems: Vec<FieldError>) -> Self {
        Checked {
            value: None,
            problems,
        }
    }

    /// The value when there were no problems, else the problems (for tests and callers
    /// that want all-or-nothing).
    pub fn strict(self) -> Result<Option<T>, Vec<FieldError>> {
        if self.problems.is_empty() {
            Ok(self.value)
        } else {
            Err(self.problems)
        }
    }
}

/// One problem with one field of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field path, as in the manifest (`spec.ports[1].nodePort`).
    pub field: String,
    /// What is wrong, quoting the bad value, and what kproxy does about it
    /// (`0 is not in 1-65535; this port is left out`).
    pub message: String,
}

impl FieldError {
    /// A problem of `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }

    /// A problem of `field` because of which `part` is not programmed.
    pub fn left_out(field: impl Into<String>, message: impl fmt::Display, part: &str) -> Self {
        FieldError::new(field, format!("{message}; {part} is left out"))
    }

    /// A value an API server would refuse, programmed anyway as `how` (as kube-proxy
    /// would).
    pub fn tolerated(field: impl Into<String>, message: impl fmt::Display, how: &str) -> Self {
        FieldError::new(
            field,
            format!("{message} (an API server would refuse it); {how}"),
        )
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

/// Checks that `metadata.name` is set: without it the object cannot be keyed.
pub(crate) fn check_name(key: &ObjectKey, errors: &mut Vec<FieldError>) -> bool {
    if key.name.is_empty() {
        errors.push(FieldError::new(
            "metadata.name",
            "is required; the object is skipped",
        ));
        return false;
    }
    true
}

/// Parses an IP address as kube-proxy's `ParseIPSloppy` does: the parts of an IPv4
/// address may have leading zeros, read as decimal (`010.000.000.001` is 10.0.0.1, as API
/// servers admitted such values before strict IP validation), and an IPv4-mapped IPv6
/// address is IPv4. The error quotes the value.
pub(crate) fn parse_ip(value: &str) -> Result<IpAddr, String> {
    let parsed = value
        .parse::<IpAddr>()
        .ok()
        .or_else(|| parse_ipv4_leading_zeros(value).map(IpAddr::V4));
    match parsed {
        Some(IpAddr::V6(v6)) => Ok(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)),
        Some(ip) => Ok(ip),
        None => Err(format!("{value:?} is not an IP address")),
    }
}

/// A dotted-quad IPv4 address whose parts may have leading zeros (decimal).
fn parse_ipv4_leading_zeros(value: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = value.split('.');
    for octet in &mut octets {
        let part = parts.next().filter(|p| !p.is_empty())?;
        let mut number: u8 = 0;
        for digit in part.bytes() {
            if !digit.is_ascii_digit() {
                return None;
            }
            number = number.checked_mul(10)?.checked_add(digit - b'0')?;
        }
        *octet = number;
    }
    parts.next().is_none().then_some(Ipv4Addr::from(octets))
}

/// Parses a CIDR as kube-proxy's `ParseCIDRSloppy` does (leading zeros as in [`parse_ip`],
/// host bits cleared). The error quotes the value.
pub(crate) fn parse_cidr(value: &str) -> Result<IpNet, String> {
    let invalid = || format!("{value:?} is not a CIDR");
    let (address, prefix) = value.split_once('/').ok_or_else(invalid)?;
    let address = parse_ip(address).map_err(|_| invalid())?;
    let prefix =
        (!prefix.is_empty() && prefix.len() <= 3 && prefix.bytes().all(|b| b.is_ascii_digit()))
            .then(|| prefix.parse::<u8>().ok())
            .flatten()
            .ok_or_else(invalid)?;
    IpNet::new(address, prefix)
        .map(|net| net.trunc())
        .map_err(|_| invalid())
}

/// Parses a protocol (`TCP` when unset); the error quotes the value.
pub(crate) fn parse_protocol(value: Option<&str>) -> Result<Protocol, String> {
    match value {
        None | Some("TCP") => Ok(Protocol::Tcp),
        Some("UDP") => Ok(Protocol::Udp),
        Some("SCTP") => Ok(Protocol::Sctp),
        Some(other) => Err(format!("{other:?} is not one of TCP, UDP, SCTP")),
    }
}

/// Converts a port number to `u16` if it is in 1-65535; the error quotes the value.
pub(crate) fn parse_port(value: i32) -> Result<u16, String> {
    match u16::try_from(value) {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(format!("{value} is not in 1-65535")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            parse_ip("10.0.0.1"),
            Ok(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)))
        );
        assert_eq!(
            parse_ip("10.0.0.300"),
            Err("\"10.0.0.300\" is not an IP address".into())
        );
        assert_eq!(parse_protocol(None), Ok(Protocol::Tcp));
        assert_eq!(
            parse_protocol(Some("tcp")),
            Err("\"tcp\" is not one of TCP, UDP, SCTP".into())
        );
        assert_eq!(parse_port(65535), Ok(65535));
        assert_eq!(parse_port(65536), Err("65536 is not in 1-65535".into()));
        assert_eq!(parse_port(0), Err("0 is not in 1-65535".into()));
        assert_eq!(parse_port(-1), Err("-1 is not in 1-65535".into()));
    }

    #[test]
    fn addresses_parse_as_kube_proxys_parse_ip_sloppy() {
        // k8s.io/utils/net ParseIPSloppy: leading zeros are decimal; IPv4-mapped is IPv4.
        let cases = [
            ("010.000.000.001", Some("10.0.0.1")),
            ("10.96.0.010", Some("10.96.0.10")),
            ("0000192.168.1.1", Some("192.168.1.1")),
            ("::ffff:10.96.0.1", Some("10.96.0.1")),
            ("fd00::0010", Some("fd00::10")),
            ("256.0.0.1", None),
            ("10.0.0", None),
            ("10.0.0.1.", None),
            ("10..0.1", None),
            ("+10.0.0.1", None),
            (" 10.0.0.1", None),
            ("", None),
        ];
        for (text, expected) in cases {
            let parsed = parse_ip(text).ok().map(|ip| ip.to_string());
            assert_eq!(parsed.as_deref(), expected, "{text:?}");
        }
        let nets = [
            ("10.0.0.5/8", Some("10.0.0.0/8")),
            ("010.001.0.0/16", Some("10.1.0.0/16")),
            ("2001:db8::1/64", Some("2001:db8::/64")),
            ("10.0.0.0/33", None),
            ("10.0.0.0/", None),
            ("10.0.0.0/+8", None),
            ("10.0.0.1", None),
        ];
        for (text, expected) in nets {
            let parsed = parse_cidr(text).ok().map(|net| net.to_string());
            assert_eq!(parsed.as_deref(), expected, "{text:?}");
        }
    }

    #[test]
    fn problems_say_what_kproxy_does() {
        let left_out =
            FieldError::left_out("spec.ports[1].port", "0 is not in 1-65535", "this port");
        assert_eq!(
            left_out.to_string(),
            "spec.ports[1].port: 0 is not in 1-65535; this port is left out"
        );
        let tolerated =
            FieldError::tolerated("spec.type", "\"Foo\" is unknown", "read as ClusterIP");
        assert_eq!(
            tolerated.to_string(),
            "spec.type: \"Foo\" is unknown (an API server would refuse it); read as ClusterIP"
        );
    }
}
