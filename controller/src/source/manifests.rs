//! Loading a manifest file or directory into a validated [`Snapshot`].
//!
//! Each document is parsed on its own into a JSON value, its `apiVersion`/`kind` read, and
//! then decoded into the k8s-openapi type (`v1` Service, `discovery.k8s.io/v1`
//! EndpointSlice, `v1` Node, `networking.k8s.io/v1` ServiceCIDR) and validated. Lists (`v1`
//! List, ServiceList, EndpointSliceList, NodeList, ServiceCIDRList) expand to their items; other kinds are ignored. A problem
//! skips only the file, document or object it concerns. Of two objects with the same kind,
//! namespace and name, the first in path order wins even when it is invalid (so that the
//! second never silently stands in for a broken first); the second is reported.

use std::path::Path;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::documents::{parse_json, parse_yaml, split_documents};
use super::files::{SourceFile, read_sources};
use super::manifest_set::ManifestSet;
use super::problem::{ManifestLocation, ManifestProblem, ObjectKind, ObjectRef, ProblemKind};
use super::validate::{
    Checked, DEFAULT_NAMESPACE, validate_endpoint_slice, validate_node, validate_service,
    validate_service_cidr,
};
use crate::model::{self, ObjectChange, ObjectKey, Snapshot};

/// What a load produced: the valid objects, and every problem met on the way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loaded {
    /// The valid objects.
    pub snapshot: Snapshot,
    /// The skipped files, documents and objects, in the order met. The caller logs them.
    pub problems: Vec<ManifestProblem>,
}

/// What a source reports when something changed since its last report: the objects that
/// changed, and the problems found in what it read again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceUpdate {
    /// New values of changed objects (`None`: gone or no longer valid).
    pub changes: Vec<ObjectChange>,
    /// Problems of the files, documents and objects read for this update.
    pub problems: Vec<ManifestProblem>,
}

impl SourceUpdate {
    /// A whole load as the update that builds it from nothing.
    pub fn into_loaded(self) -> Loaded {
        let mut snapshot = Snapshot::default();
        snapshot.apply(self.changes);
        Loaded {
            snapshot,
            problems: self.problems,
        }
    }
}

/// Loads the manifest file at `path`, or every manifest file under the directory at `path`
/// (recursively: files ending `.yaml`, `.yml` or `.json`, hidden names skipped, symbolic
/// links followed), in path order.
///
/// Never fails: an unreadable path, a broken document or an invalid object becomes a
/// problem and the rest still loads.
pub fn load_manifests(path: &Path) -> Loaded {
    load_sources(&read_sources(path))
}

/// Loads files already read.
pub(crate) fn load_sources(files: &[SourceFile]) -> Loaded {
    let mut set = ManifestSet::default();
    let files = files
        .iter()
        .map(|file| (file.path.clone(), Some(file_entries(file))));
    set.update(files).into_loaded()
}

/// A validated object kproxy uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Validated {
    Service(Arc<model::Service>),
    EndpointSlice(Arc<model::EndpointSlice>),
    Node(Arc<model::NodeInfo>),
    ServiceCidr(Arc<model::ServiceCidr>),
}

impl Validated {
    pub(crate) fn service(service: model::Service) -> Self {
        Validated::Service(Arc::new(service))
    }

    pub(crate) fn endpoint_slice(slice: model::EndpointSlice) -> Self {
        Validated::EndpointSlice(Arc::new(slice))
    }

    pub(crate) fn node(node: model::NodeInfo) -> Self {
        Validated::Node(Arc::new(node))
    }

    pub(crate) fn service_cidr(cidr: model::ServiceCidr) -> Self {
        Validated::ServiceCidr(Arc::new(cidr))
    }
}

/// The change that makes `object` hold `value` (`None`: gone).
pub(crate) fn change_of(object: &ObjectRef, value: Option<&Validated>) -> ObjectChange {
    let key = object.key.clone();
    match object.kind {
        ObjectKind::Service => ObjectChange::Service(
            key,
            match value {
                Some(Validated::Service(s)) => Some(s.clone()),
                _ => None,
            },
        ),
        ObjectKind::EndpointSlice => ObjectChange::EndpointSlice(
            key,
            match value {
                Some(Validated::EndpointSlice(s)) => Some(s.clone()),
                _ => None,
            },
        ),
        ObjectKind::Node => ObjectChange::Node(
            key.name.to_string(),
            match value {
                Some(Validated::Node(n)) => Some(n.clone()),
                _ => None,
            },
        ),
        ObjectKind::ServiceCidr => ObjectChange::ServiceCidr(
            key.name.to_string(),
            match value {
                Some(Validated::ServiceCidr(c)) => Some(c.clone()),
                _ => None,
            },
        ),
    }
}

/// One thing found in a manifest file: a document-level problem (`object: None`), or an
/// object with its validated value (`None` for an object that is skipped or that kproxy
/// does not use, such as an FQDN slice) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Where it is in its file: document and List item (the file is known to the owner of
    /// the entries; not repeating its path in every entry saves memory on large trees).
    pub place: (Option<usize>, Option<usize>),
    /// The object, when the document got that far.
    pub object: Option<ObjectRef>,
    /// The object's validated value: what kproxy programs of it.
    pub value: Option<Validated>,
    /// What is wrong with the document or object (boxed: most entries have none).
    pub problem: Option<Box<ProblemKind>>,
}

impl Entry {
    /// Where the entry is, in file `file`.
    pub fn location(&self, file: &Path) -> ManifestLocation {
        ManifestLocation {
            file: file.to_path_buf(),
            document: self.place.0,
            item: self.place.1,
        }
    }

    /// The object this entry claims: a named object (an unnamed one claims nothing; it is
    /// reported as invalid).
    pub fn claim(&self) -> Option<&ObjectRef> {
        self.object.as_ref().filter(|o| !o.key.name.is_empty())
    }
}

/// Parses and validates every document of one file, in order.
pub(crate) fn file_entries(file: &SourceFile) -> Vec<Entry> {
    let mut collector = Collector {
        entries: Vec::new(),
    };
    collector.add_file(file);
    // Kept for as long as the file is unchanged.
    collector.entries.shrink_to_fit();
    collector.entries
}

/// `apiVersion` and `kind`.
type TypeMeta = (String, String);

/// What an `apiVersion`/`kind` pair is to the loader.
enum Handling {
    /// An object kproxy reads.
    Object(ObjectKind),
    /// A list whose items carry their own type, or default to the given one.
    List(Option<(&'static str, &'static str)>),
    /// Anything else.
    Ignored,
}

fn handling(api_version: &str, kind: &str) -> Handling {
    match (api_version, kind) {
        ("v1", "Service") => Handling::Object(ObjectKind::Service),
        ("discovery.k8s.io/v1", "EndpointSlice") => Handling::Object(ObjectKind::EndpointSlice),
        ("v1", "Node") => Handling::Object(ObjectKind::Node),
        ("networking.k8s.io/v1", "ServiceCIDR") => Handling::Object(ObjectKind::ServiceCidr),
        ("networking.k8s.io/v1", "ServiceCIDRList") => {
            Handling::List(Some(("networking.k8s.io/v1", "ServiceCIDR")))
        }
        ("v1", "List") => Handling::List(None),
        ("v1", "ServiceList") => Handling::List(Some(("v1", "Service"))),
        ("discovery.k8s.io/v1", "EndpointSliceList") => {
            Handling::List(Some(("discovery.k8s.io/v1", "EndpointSlice")))
        }
        ("v1", "NodeList") => Handling::List(Some(("v1", "Node"))),
        _ => Handling::Ignored,
    }
}

/// Accumulates the entries of one file.
struct Collector {
    entries: Vec<Entry>,
}

impl Collector {
    fn add_file(&mut self, file: &SourceFile) {
        let text = match &file.content {
            Ok(text) => text,
            Err(problem) => {
                let location = ManifestLocation::file(&file.path);
                return self.problem(location, None, problem.clone());
            }
        };
        if file.is_json() {
            if !text.trim().is_empty() {
                let location = ManifestLocation::document(&file.path, 1);
                self.add_parsed(location, parse_json(text));
            }
            return;
        }
        for document in split_documents(text) {
            let location = ManifestLocation::document(&file.path, document.index);
            self.add_parsed(location, parse_yaml(&document));
        }
    }

    fn add_parsed(&mut self, location: ManifestLocation, parsed: Result<Value, ProblemKind>) {
        match parsed {
            Ok(Value::Null) => {}
            Ok(value) => self.add_value(location, value, None),
            Err(problem) => self.problem(location, None, problem),
        }
    }

    /// Adds a document or List item; `default_type` is a typed List's item type.
    fn add_value(
        &mut self,
        location: ManifestLocation,
        value: Value,
        default_type: Option<(&str, &str)>,
    ) {
        let Value::Object(mut object) = value else {
            return self.problem(location, None, ProblemKind::NotAnObject);
        };
        let Some((api_version, kind)) = type_meta(&mut object, default_type) else {
            return self.problem(location, None, ProblemKind::NoTypeInformation);
        };
        match handling(&api_version, &kind) {
            Handling::Object(kind) => self.add_object(location, kind, Value::Object(object)),
            Handling::List(item_type) => self.add_list(location, &kind, object, item_type),
            Handling::Ignored => tracing::debug!(
                location = %location,
                api_version,
                kind,
                "ignoring an object of a kind kproxy does not read"
            ),
        }
    }

    fn add_list(
        &mut self,
        location: ManifestLocation,
        kind: &str,
        mut list: Map<String, Value>,
        item_type: Option<(&str, &str)>,
    ) {
        let items = match list.remove("items") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items,
            Some(_) => return self.problem(location, None, ProblemKind::BadItems(kind.into())),
        };
        for (i, item) in items.into_iter().enumerate() {
            self.add_value(location.with_item(i), item, item_type);
        }
    }

    fn add_object(&mut self, location: ManifestLocation, kind: ObjectKind, value: Value) {
        let object = ObjectRef {
            kind,
            key: key_of(&value, kind),
        };
        let (value, problem) = match validated(kind, value) {
            Ok(checked) => checked,
            Err(problem) => (None, Some(problem)),
        };
        self.entries.push(Entry {
            place: (location.document, location.item),
            object: Some(object),
            value,
            problem: problem.map(Box::new),
        });
    }

    fn problem(
        &mut self,
        location: ManifestLocation,
        object: Option<ObjectRef>,
        kind: ProblemKind,
    ) {
        self.entries.push(Entry {
            place: (location.document, location.item),
            object,
            value: None,
            problem: Some(Box::new(kind)),
        });
    }
}

/// Decodes and validates one object: what kproxy uses of it, and its problems.
fn validated(
    kind: ObjectKind,
    value: Value,
) -> Result<(Option<Validated>, Option<ProblemKind>), ProblemKind> {
    Ok(match kind {
        ObjectKind::Service => checked_value(
            validate_service(&decode::<Service>(value)?),
            Validated::service,
        ),
        ObjectKind::EndpointSlice => checked_value(
            validate_endpoint_slice(&decode::<EndpointSlice>(value)?),
            Validated::endpoint_slice,
        ),
        ObjectKind::Node => checked_value(validate_node(&decode::<Node>(value)?), Validated::node),
        ObjectKind::ServiceCidr => checked_value(
            validate_service_cidr(&decode::<ServiceCIDR>(value)?),
            Validated::service_cidr,
        ),
    })
}

/// A validation result as the value kproxy uses and the problem to report.
pub(crate) fn checked_value<T>(
    checked: Checked<T>,
    wrap: impl FnOnce(T) -> Validated,
) -> (Option<Validated>, Option<ProblemKind>) {
    let problem = (!checked.problems.is_empty()).then_some(ProblemKind::Invalid(checked.problems));
    (checked.value.map(wrap), problem)
}

/// `apiVersion` and `kind` of an object, filling in a typed List's item type when the item
/// has none (as the API server omits them in list items).
fn type_meta(
    object: &mut Map<String, Value>,
    default_type: Option<(&str, &str)>,
) -> Option<TypeMeta> {
    if let Some((api_version, kind)) = default_type {
        for (field, value) in [("apiVersion", api_version), ("kind", kind)] {
            object
                .entry(field)
                .or_insert_with(|| Value::String(value.to_string()));
        }
    }
    let field = |name: &str| object.get(name)?.as_str().filter(|s| !s.is_empty());
    Some((field("apiVersion")?.to_string(), field("kind")?.to_string()))
}

/// The namespace (defaulted) and name of an object, read before decoding so that problems
/// can name it.
fn key_of(value: &Value, kind: ObjectKind) -> ObjectKey {
    let meta = |field: &str| value.get("metadata")?.get(field)?.as_str();
    let name = meta("name").unwrap_or("");
    let namespace = match (kind, meta("namespace")) {
        (ObjectKind::Node | ObjectKind::ServiceCidr, _) => "",
        (_, None | Some("")) => DEFAULT_NAMESPACE,
        (_, Some(namespace)) => namespace,
    };
    ObjectKey::new(namespace, name)
}

fn decode<T: DeserializeOwned>(value: Value) -> Result<T, ProblemKind> {
    serde_json::from_value(value).map_err(|e| ProblemKind::Decode(e.to_string()))
}

#[cfg(test)]
mod tests;
