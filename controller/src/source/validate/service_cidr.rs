//! Validation of a `networking.k8s.io/v1` ServiceCIDR into a [`ServiceCidr`].

use k8s_openapi::api::networking::v1::ServiceCIDR;

use super::{Checked, FieldError, check_name, object_key, parse_cidr};
use crate::model::ServiceCidr;

/// Validates a ServiceCIDR: its name and `spec.cidrs` (upstream reads only those, whatever
/// its status says). A range that does not parse is left out alone.
pub fn validate_service_cidr(object: &ServiceCIDR) -> Checked<ServiceCidr> {
    let key = object_key(&object.metadata, false);
    let mut problems = Vec::new();
    if !check_name(&key, &mut problems) {
        return Checked::skipped(problems);
    }
    let raw = object
        .spec
        .as_ref()
        .and_then(|s| s.cidrs.as_deref())
        .unwrap_or_default();
    let mut cidrs = Vec::with_capacity(raw.len());
    for (i, text) in raw.iter().enumerate() {
        match parse_cidr(text) {
            Ok(cidr) => cidrs.push(cidr),
            Err(message) => problems.push(FieldError::left_out(
                format!("spec.cidrs[{i}]"),
                message,
                "this range",
            )),
        }
    }
    Checked::with(
        ServiceCidr {
            name: key.name.to_string(),
            cidrs,
        },
        problems,
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn checked(value: serde_json::Value) -> (Option<ServiceCidr>, Vec<String>) {
        let object: ServiceCIDR = serde_json::from_value(value).expect("decodes");
        let checked = validate_service_cidr(&object);
        let shown = checked.problems.iter().map(ToString::to_string).collect();
        (checked.value, shown)
    }

    #[test]
    fn reads_the_ranges_and_leaves_out_a_bad_one() {
        let (cidr, problems) = checked(json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
            "metadata": {"name": "kubernetes"},
            "spec": {"cidrs": ["10.96.0.0/16", "fd00:10:96::/112", "10.96.0.0/33"]},
            "status": {"conditions": [{
                "type": "Ready", "status": "True", "reason": "", "message": "",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }]},
        }));
        let cidr = cidr.expect("kept");
        assert_eq!(cidr.name, "kubernetes");
        let shown: Vec<String> = cidr.cidrs.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["10.96.0.0/16", "fd00:10:96::/112"]);
        assert_eq!(
            problems,
            ["spec.cidrs[2]: \"10.96.0.0/33\" is not a CIDR; this range is left out"]
        );
        let (none, problems) = checked(json!({"metadata": {}, "spec": {"cidrs": []}}));
        assert_eq!(none, None);
        assert_eq!(problems.len(), 1);
    }
}
