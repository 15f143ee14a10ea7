//! Validating the reflector stores into the changes since the last look, reusing the
//! result for every object whose `resourceVersion` did not change.
//!
//! Each look walks the stores (cheap `Arc` clones), but validates only new or changed
//! objects, and reports only those and the deleted ones, as the changes the sync loop
//! applies to its store.

use std::collections::HashMap;
use std::sync::Arc;

use ::kube::Resource;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;

use super::super::manifests::{SourceUpdate, Validated, change_of, checked_value};
use super::super::problem::{
    ManifestLocation, ManifestProblem, ObjectKind, ObjectRef, ProblemKind,
};
use super::super::validate::{
    object_key, validate_endpoint_slice, validate_node, validate_service, validate_service_cidr,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::model::ObjectKey;

/// The location problems of API objects are reported at.
pub const API_LOCATION: &str = "kubernetes API";

/// The validation outcome of one object: what kproxy uses of it (`None` for an object that
/// is skipped or that kproxy does not use, such as an FQDN slice), and its problems.
type Outcome = (Option<Validated>, Option<Box<ManifestProblem>>);

/// Finds the current object of a key in the reflector stores.
pub(super) struct Lookup<'a> {
    pub service: &'a dyn Fn(&ObjectKey) -> Option<Arc<Service>>,
    pub slice: &'a dyn Fn(&ObjectKey) -> Option<Arc<EndpointSlice>>,
    pub node: &'a dyn Fn(&ObjectKey) -> Option<Arc<Node>>,
    pub service_cidr: &'a dyn Fn(&ObjectKey) -> Option<Arc<ServiceCIDR>>,
}

/// Validated objects by kind and key, with the resource version they were validated at.
#[derive(Debug, Default)]
pub(super) struct ValidationCache {
    entries: HashMap<ObjectRef, (Option<String>, Outcome)>,
}

impl ValidationCache {
    /// The changes since the last call (everything on the first): new, changed (by
    /// resource version) and deleted objects of the three stores, with the problems of
    /// the objects validated this time.
    pub(super) fn update(
        &mut self,
        services: &[Arc<Service>],
        endpoint_slices: &[Arc<EndpointSlice>],
        nodes: &[Arc<Node>],
        service_cidrs: &[Arc<ServiceCIDR>],
    ) -> SourceUpdate {
        let mut old = std::mem::take(&mut self.entries);
        let mut update = SourceUpdate::default();
        for s in services {
            let kind = ObjectKind::Service;
            self.refresh(&mut old, &mut update, kind, &s.metadata, || service(s));
        }
        for s in endpoint_slices {
            let kind = ObjectKind::EndpointSlice;
            self.refresh(&mut old, &mut update, kind, &s.metadata, || slice(s));
        }
        for n in nodes {
            let kind = ObjectKind::Node;
            self.refresh(&mut old, &mut update, kind, &n.metadata, || node(n));
        }
        for c in service_cidrs {
            let kind = ObjectKind::ServiceCidr;
            self.refresh(&mut old, &mut update, kind, &c.metadata, || service_cidr(c));
        }
        for gone in old.into_keys() {
            update.changes.push(change_of(&gone, None));
        }
        update.problems.sort_by(|a, b| a.object.cmp(&b.object));
        update
    }

    /// The changes of the objects in `objects` only (each looked up by `lookup`, `None`
    /// when deleted), for polls after watch events: no walk over the stores.
    pub(super) fn update_objects(
        &mut self,
        objects: impl IntoIterator<Item = ObjectRef>,
        lookup: &Lookup<'_>,
    ) -> SourceUpdate {
        let mut update = SourceUpdate::default();
        for object in objects {
            let mut old = HashMap::new();
            if let Some(cached) = self.entries.remove(&object) {
                old.insert(object.clone(), cached);
            }
            let kind = object.kind;
            let found = match kind {
                ObjectKind::Service => (lookup.service)(&object.key).map(|s| {
                    self.refresh(&mut old, &mut update, kind, &s.metadata, || service(&s))
                }),
                ObjectKind::EndpointSlice => (lookup.slice)(&object.key)
                    .map(|s| self.refresh(&mut old, &mut update, kind, &s.metadata, || slice(&s))),
                ObjectKind::Node => (lookup.node)(&object.key)
                    .map(|n| self.refresh(&mut old, &mut update, kind, &n.metadata, || node(&n))),
                ObjectKind::ServiceCidr => (lookup.service_cidr)(&object.key).map(|c| {
                    self.refresh(&mut old, &mut update, kind, &c.metadata, || {
                        service_cidr(&c)
                    })
                }),
            };
            if found.is_none() && old.remove(&object).is_some() {
                update.changes.push(change_of(&object, None));
            }
        }
        update
    }

    /// Keeps the cached outcome of one object if validated at the same resource version,
    /// else validates it and records the change and its problem.
    fn refresh(
        &mut self,
        old: &mut HashMap<ObjectRef, (Option<String>, Outcome)>,
        update: &mut SourceUpdate,
        kind: ObjectKind,
        meta: &ObjectMeta,
        validate: impl FnOnce() -> Outcome,
    ) {
        let key = object_ref(kind, meta);
        let version = meta.resource_version.clone().filter(|v| !v.is_empty());
        let cached = old.remove(&key);
        if let Some(cached) = cached.filter(|(v, _)| version.is_some() && *v == version) {
            self.entries.insert(key, cached);
            return;
        }
        let outcome = validate();
        update.changes.push(change_of(&key, outcome.0.as_ref()));
        if let Some(problem) = &outcome.1 {
            update.problems.push((**problem).clone());
        }
        self.entries.insert(key, (version, outcome));
    }

    /// How many objects are cached.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}

pub(super) fn object_ref(kind: ObjectKind, meta: &ObjectMeta) -> ObjectRef {
    ObjectRef {
        kind,
        key: object_key(
            meta,
            !matches!(kind, ObjectKind::Node | ObjectKind::ServiceCidr),
        ),
    }
}

/// A validation result as the cached outcome, its problems reported at [`API_LOCATION`].
fn outcome<K: Resource>(
    kind: ObjectKind,
    object: &K,
    (value, problem): (Option<Validated>, Option<ProblemKind>),
) -> Outcome {
    let problem = problem.map(|problem| {
        Box::new(ManifestProblem::of_object(
            ManifestLocation::file(API_LOCATION),
            object_ref(kind, object.meta()),
            problem,
        ))
    });
    (value, problem)
}

fn service(s: &Service) -> Outcome {
    let checked = checked_value(validate_service(s), Validated::service);
    outcome(ObjectKind::Service, s, checked)
}

fn slice(s: &EndpointSlice) -> Outcome {
    let checked = checked_value(validate_endpoint_slice(s), Validated::endpoint_slice);
    outcome(ObjectKind::EndpointSlice, s, checked)
}

fn service_cidr(c: &ServiceCIDR) -> Outcome {
    let checked = checked_value(validate_service_cidr(c), Validated::service_cidr);
    outcome(ObjectKind::ServiceCidr, c, checked)
}

fn node(n: &Node) -> Outcome {
    let checked = checked_value(validate_node(n), Validated::node);
    outcome(ObjectKind::Node, n, checked)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::{ObjectKey, Snapshot};

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

    fn load(cache: &mut ValidationCache, services: &[Arc<Service>]) -> SourceUpdate {
        cache.update(services, &[], &[], &[])
    }

    #[test]
    fn reports_only_new_changed_and_deleted_objects() {
        let mut cache = ValidationCache::default();
        let mut store = Snapshot::default();
        let web = service("web", "5", "10.96.0.10");
        let bad = service("bad", "6", "10.96.0.300");
        let first = load(&mut cache, &[web.clone(), bad.clone()]);
        assert_eq!(first.changes.len(), 2, "web, and bad as absent");
        assert_eq!(first.problems.len(), 1);
        assert_eq!(
            first.problems[0].object.as_ref().map(|o| o.key.clone()),
            Some(ObjectKey::new("shop", "bad"))
        );
        store.apply(first.changes);
        assert_eq!(store.services().len(), 1);
        assert_eq!(cache.len(), 2);
        // Same version: nothing to report, even for a (test-only) different body.
        let same_version = service("web", "5", "10.96.0.99");
        let quiet = load(&mut cache, &[same_version, bad]);
        assert_eq!(quiet, SourceUpdate::default());
        // A new version is validated again; a deleted object is reported gone.
        let next = load(&mut cache, &[service("web", "7", "10.96.0.99")]);
        assert_eq!(next.changes.len(), 2, "web changed, bad deleted");
        assert!(next.problems.is_empty());
        store.apply(next.changes);
        let ip = store.services()[&ObjectKey::new("shop", "web")].cluster_ips[0];
        assert_eq!(ip.to_string(), "10.96.0.99");
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn objects_without_a_version_are_validated_every_time() {
        let mut cache = ValidationCache::default();
        let web = service("web", "", "10.96.0.10");
        assert_eq!(
            load(&mut cache, std::slice::from_ref(&web)).changes.len(),
            1
        );
        assert_eq!(load(&mut cache, &[web]).changes.len(), 1);
        assert_eq!(load(&mut cache, &[]).changes.len(), 1, "deleted");
    }
}
