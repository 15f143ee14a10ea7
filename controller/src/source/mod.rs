//! Sources of the objects kproxy proxies for: Kubernetes manifests read from disk.
//!
//! A source turns real Kubernetes objects (Services, EndpointSlices, Nodes, as k8s-openapi
//! types) into a validated [`crate::model::Snapshot`]; the `validate_*` functions are the only
//! place that checks them, so the planner never sees a bad value. Problems are returned, never logged
//! here, and never stop the other objects from loading.

mod documents;
mod files;
pub mod kube;
mod manifest_set;
mod manifests;
mod problem;
#[cfg(test)]
pub(crate) mod test_support;
mod validate;
mod watcher;

pub use self::documents::MAX_DOCUMENT_BYTES;
pub use self::files::MAX_FILE_BYTES;
pub use self::kube::{ConnectError, ConnectOptions, KubeSource};
pub use self::manifests::{Loaded, SourceUpdate, load_manifests};
pub use self::problem::{ManifestLocation, ManifestProblem, ObjectKind, ObjectRef, ProblemKind};
pub use self::validate::{
    Checked, DEFAULT_NAMESPACE, FieldError, validate_endpoint_slice, validate_node,
    validate_service,
};
pub(crate) use self::validate::{parse_cidr as parse_cidr_sloppy, parse_ip as parse_ip_sloppy};
pub use self::watcher::ManifestWatcher;
