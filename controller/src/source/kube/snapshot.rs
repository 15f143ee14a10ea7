//! Validating the reflector stores into a [`Loaded`], reusing the result for every object
//! whose `resourceVersion` did not change since the last load.
//!
//! Any change reloads the whole view (the sync loop wants a complete [`Snapshot`]), so on a
//! large cluster most objects are the same as last time; their validated form is kept by
//! kind, namespace/name and resource version, and only new or changed objects go through
//! the `validate_*` functions again.

use std::collections::HashMap;
use std::sync::Arc;

use ::kube::Resource;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::super::manifests::Loaded;
use super::super::problem::{
    ManifestLocation, ManifestProblem, ObjectKind, ObjectRef, ProblemKind,
};
use super::super::validate::{
    FieldError, ValidationOptions, object_key, validate_endpoint_slice, validate_node,
    validate_service,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::model::{self, NodeInfo, Snapshot};

/// The location problems of API objects are reported at.
pub const API_LOCATION: &str = "kubernetes API";

/// The validated form of one object.
#[derive(Debug, Clone)]
enum Validated {
    Service(model::Service),
    /// `None` for a slice kproxy does not use (address type FQDN).
    EndpointSlice(Option<model::EndpointSlice>),
    Node(NodeInfo),
    Invalid(ManifestProblem),
}

/// Validated objects by kind and key, with the resource version they were validated at.
#[derive(Debug, Default)]
pub(super) struct ValidationCache {
    entries: HashMap<ObjectRef, (String, Validated)>,
}

impl ValidationCache {
    /// Validates the objects of the three stores into a snapshot and its problems (in
    /// kind, then namespace/name order), and forgets the objects that are gone.
    pub(super) fn load(
        &mut self,
        opts: &ValidationOptions,
        services: &[Arc<Service>],
        endpoint_slices: &[Arc<EndpointSlice>],
        nodes: &[Arc<Node>],
    ) -> Loaded {
        let mut old = std::mem::take(&mut self.entries);
        let mut validated = Vec::with_capacity(services.len() + endpoint_slices.len() + 1);
        for s in services {
            let kind = ObjectKind::Service;
            validated.push(self.validated(&mut old, kind, &s.metadata, || service(s, opts)));
        }
        for s in endpoint_slices {
            let kind = ObjectKind::EndpointSlice;
            validated.push(self.validated(&mut old, kind, &s.metadata, || slice(s, opts)));
        }
        for n in nodes {
            let kind = ObjectKind::Node;
            validated.push(self.validated(&mut old, kind, &n.metadata, || node(n, opts)));
        }
        validated.sort_by(|a, b| a.0.cmp(&b.0));
        let mut loaded = Loaded::default();
        let snapshot: &mut Snapshot = &mut loaded.snapshot;
        for (_, value) in validated {
            match value {
                Validated::Service(s) => {
                    snapshot.services.insert(s.key.clone(), s);
                }
                Validated::EndpointSlice(Some(s)) => {
                    snapshot.endpoint_slices.insert(s.key.clone(), s);
                }
                Validated::EndpointSlice(None) => {}
                Validated::Node(n) => {
                    snapshot.nodes.insert(n.name.clone(), n);
                }
                Validated::Invalid(problem) => loaded.problems.push(problem),
            }
        }
        loaded
    }

    /// The validated form of one object: from `old` if validated at the same resource
    /// version, else from `validate`. Kept for the next load when the version is known.
    fn validated(
        &mut self,
        old: &mut HashMap<ObjectRef, (String, Validated)>,
        kind: ObjectKind,
        meta: &ObjectMeta,
        validate: impl FnOnce() -> Validated,
    ) -> (ObjectRef, Validated) {
        let key = object_ref(kind, meta);
        let version = meta.resource_version.clone().filter(|v| !v.is_empty());
        let value = match (old.remove(&key), &version) {
            (Some((cached, value)), Some(version)) if &cached == version => value,
            _ => validate(),
        };
        if let Some(version) = version {
            self.entries.insert(key.clone(), (version, value.clone()));
        }
        (key, value)
    }

    /// How many objects are cached.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}

fn object_ref(kind: ObjectKind, meta: &ObjectMeta) -> ObjectRef {
    ObjectRef {
        kind,
        key: object_key(meta, kind != ObjectKind::Node),
    }
}

fn invalid<K: Resource>(kind: ObjectKind, object: &K, errors: Vec<FieldError>) -> Validated {
    Validated::Invalid(ManifestProblem::of_object(
        ManifestLocation::file(API_LOCATION),
        object_ref(kind, object.meta()),
        ProblemKind::Invalid(errors),
    ))
}

fn service(s: &Service, opts: &ValidationOptions) -> Validated {
    match validate_service(s, opts) {
        Ok(v) => Validated::Service(v),
        Err(errors) => invalid(ObjectKind::Service, s, errors),
    }
}

fn slice(s: &EndpointSlice, opts: &ValidationOptions) -> Validated {
    match validate_endpoint_slice(s, opts) {
        Ok(v) => Validated::EndpointSlice(v),
        Err(errors) => invalid(ObjectKind::EndpointSlice, s, errors),
    }
}

fn node(n: &Node, opts: &ValidationOptions) -> Validated {
    match validate_node(n, opts) {
        Ok(v) => Validated::Node(v),
        Err(errors) => invalid(ObjectKind::Node, n, errors),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::ObjectKey;

    fn service(name: &str, version: &str, cluster_ip: &str) -> Arc<Service> {
        let value = json!({
            "metadata": {"name": name, "namespace": "shop", "resourceVersion": version},
            "spec": {
                "clusterIP": cluster_ip,
                "clusterIPs": [cluster_ip],
                "ports": [{"port": 80}],
            },
        });
        Arc::new(serde_json::from_value(value).expect("a Service"))
    }

    fn load(cache: &mut ValidationCache, services: &[Arc<Service>]) -> Loaded {
        cache.load(&ValidationOptions::default(), services, &[], &[])
    }

    #[test]
    fn reuses_results_by_resource_version_and_forgets_deleted_objects() {
        let mut cache = ValidationCache::default();
        let opts = ValidationOptions::default();
        let web = service("web", "5", "10.96.0.10");
        let bad = service("bad", "6", "10.96.0.300");
        let loaded = load(&mut cache, &[web.clone(), bad.clone()]);
        assert_eq!(loaded.snapshot.services.len(), 1);
        assert_eq!(loaded.problems.len(), 1);
        assert_eq!(
            loaded.problems[0].object.as_ref().map(|o| o.key.clone()),
            Some(ObjectKey::new("shop", "bad"))
        );
        assert_eq!(cache.len(), 2);
        // Same version: the cached result stands even for a (test-only) different body.
        let same_version = service("web", "5", "10.96.0.99");
        let loaded = load(&mut cache, &[same_version, bad]);
        let ip = loaded.snapshot.services[&ObjectKey::new("shop", "web")].cluster_ips[0];
        assert_eq!(ip.to_string(), "10.96.0.10");
        // A new version is validated again; a deleted object leaves the cache.
        let loaded = cache.load(&opts, &[service("web", "7", "10.96.0.99")], &[], &[]);
        let ip = loaded.snapshot.services[&ObjectKey::new("shop", "web")].cluster_ips[0];
        assert_eq!(ip.to_string(), "10.96.0.99");
        assert!(loaded.problems.is_empty());
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn objects_without_a_version_are_not_cached() {
        let mut cache = ValidationCache::default();
        let loaded = load(&mut cache, &[service("web", "", "10.96.0.10")]);
        assert_eq!(loaded.snapshot.services.len(), 1);
        assert_eq!(cache.len(), 0);
    }
}
