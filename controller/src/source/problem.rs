//! Problems found while loading manifests: where they are and what is wrong.
//!
//! A [`ManifestProblem`] always names the file, the document (1-based, counting the
//! non-empty documents of the file) and the object when known, so that its `Display` reads
//! like `examples/web.yaml document 2: Service default/web: spec.ports[1].port: 0 is not in
//! 1-65535`. Loading never stops at a problem: the object, document or file concerned is
//! skipped and the others still load.

use std::fmt;
use std::path::PathBuf;

use super::validate::FieldError;
use crate::model::ObjectKey;

/// Where in the manifests something is: a file, and a document and `items[]` entry in it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ManifestLocation {
    /// The file, as reached from the path given to the loader.
    pub file: PathBuf,
    /// The document in the file (1-based, counting non-empty documents), if the problem
    /// concerns one.
    pub document: Option<usize>,
    /// The 0-based index in a List's `items`, if the object came from a List.
    pub item: Option<usize>,
}

impl ManifestLocation {
    /// A whole file.
    pub fn file(file: impl Into<PathBuf>) -> Self {
        ManifestLocation {
            file: file.into(),
            document: None,
            item: None,
        }
    }

    /// One document of a file.
    pub fn document(file: impl Into<PathBuf>, document: usize) -> Self {
        ManifestLocation {
            document: Some(document),
            ..ManifestLocation::file(file)
        }
    }

    /// The same location, at entry `item` of a List's `items`.
    pub fn with_item(&self, item: usize) -> Self {
        ManifestLocation {
            item: Some(item),
            ..self.clone()
        }
    }
}

impl fmt::Display for ManifestLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(document) = self.document {
            write!(f, " document {document}")?;
        }
        if let Some(item) = self.item {
            write!(f, " items[{item}]")?;
        }
        Ok(())
    }
}

/// The kinds of object kproxy reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKind {
    /// `v1` Service.
    Service,
    /// `discovery.k8s.io/v1` EndpointSlice.
    EndpointSlice,
    /// `v1` Node.
    Node,
    /// `networking.k8s.io/v1` ServiceCIDR.
    ServiceCidr,
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ObjectKind::Service => "Service",
            ObjectKind::EndpointSlice => "EndpointSlice",
            ObjectKind::Node => "Node",
            ObjectKind::ServiceCidr => "ServiceCIDR",
        })
    }
}

/// Names one object: `Service default/web`, `Node node-1`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    /// Its kind.
    pub kind: ObjectKind,
    /// Its namespace (defaulted; empty for a Node) and name (empty when missing).
    pub key: ObjectKey,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.name.is_empty() {
            write!(f, "{} without a name", self.kind)
        } else {
            write!(f, "{} {}", self.kind, self.key)
        }
    }
}

/// What is wrong with a file, document or object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProblemKind {
    /// The path cannot be read (missing, unreadable, not a file or directory).
    #[error("cannot read: {0}")]
    Unreadable(String),
    /// The file is larger than [`super::MAX_FILE_BYTES`].
    #[error("file is larger than the limit of {}", human_size(*.limit))]
    FileTooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The file is not UTF-8 text.
    #[error("not UTF-8 text: {0}")]
    NotUtf8(String),
    /// The document is larger than [`super::MAX_DOCUMENT_BYTES`].
    #[error("document is {size} bytes, larger than the limit of {}", human_size(*.limit as u64))]
    DocumentTooLarge {
        /// The document's size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// The document is not valid YAML (or JSON).
    #[error("invalid YAML: {0}")]
    Syntax(String),
    /// The document (or a List item) is not a mapping.
    #[error("not an object (a mapping with apiVersion and kind)")]
    NotAnObject,
    /// `apiVersion` or `kind` is missing or not a string.
    #[error("apiVersion and kind must be set (strings)")]
    NoTypeInformation,
    /// A List whose `items` is not a sequence.
    #[error("items of {0} is not a sequence")]
    BadItems(String),
    /// The object does not decode into its Kubernetes type (a field of the wrong type).
    #[error("does not decode: {0}")]
    Decode(String),
    /// The object decodes but has problems; each says what kproxy does about it (leaves
    /// out a port, an address or the whole object, or programs a value as kube-proxy would).
    #[error("{}", join_errors(.0))]
    Invalid(Vec<FieldError>),
    /// An object of the same kind, namespace and name was already loaded; the first one is
    /// kept and this one is skipped.
    #[error("duplicate of the object at {first}, which is kept")]
    Duplicate {
        /// Where the object that is kept was found.
        first: ManifestLocation,
    },
}

/// A size in MiB when it is a whole number of them, else in bytes.
fn human_size(bytes: u64) -> String {
    const MIB: u64 = 1024 * 1024;
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{bytes} bytes")
    }
}

fn join_errors(errors: &[FieldError]) -> String {
    let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
    shown.join("; ")
}

/// One problem found while loading manifests. The affected file, document or object is
/// skipped; everything else still loads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}{}: {kind}", object_part(.object))]
pub struct ManifestProblem {
    /// Where it is.
    pub location: ManifestLocation,
    /// The object it concerns, when known.
    pub object: Option<ObjectRef>,
    /// What is wrong.
    pub kind: ProblemKind,
}

fn object_part(object: &Option<ObjectRef>) -> String {
    object
        .as_ref()
        .map(|o| format!(": {o}"))
        .unwrap_or_default()
}

impl ManifestProblem {
    /// A problem of a file, document or item that names no object.
    pub fn at(location: ManifestLocation, kind: ProblemKind) -> Self {
        ManifestProblem {
            location,
            object: None,
            kind,
        }
    }

    /// A problem of one object.
    pub fn of_object(location: ManifestLocation, object: ObjectRef, kind: ProblemKind) -> Self {
        ManifestProblem {
            location,
            object: Some(object),
            kind,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_file_document_and_object() {
        let problem = ManifestProblem::of_object(
            ManifestLocation::document("examples/web.yaml", 2),
            ObjectRef {
                kind: ObjectKind::Service,
                key: ObjectKey::new("default", "web"),
            },
            ProblemKind::Invalid(vec![FieldError::new(
                "spec.ports[1].port",
                "0 is not in 1-65535",
            )]),
        );
        assert_eq!(
            problem.to_string(),
            "examples/web.yaml document 2: Service default/web: spec.ports[1].port: 0 is not in 1-65535"
        );
    }

    #[test]
    fn display_without_object_or_document() {
        let problem = ManifestProblem::at(
            ManifestLocation::file("m/x.yaml"),
            ProblemKind::FileTooLarge { limit: 10 },
        );
        assert_eq!(
            problem.to_string(),
            "m/x.yaml: file is larger than the limit of 10 bytes"
        );
        let node = ObjectRef {
            kind: ObjectKind::Node,
            key: ObjectKey::new("", "node-1"),
        };
        let problem = ManifestProblem::of_object(
            ManifestLocation::document("n.yaml", 1).with_item(3),
            node,
            ProblemKind::Invalid(vec![FieldError::new("a", "x"), FieldError::new("b", "y")]),
        );
        assert_eq!(
            problem.to_string(),
            "n.yaml document 1 items[3]: Node node-1: a: x; b: y"
        );
        let too_large = ProblemKind::DocumentTooLarge {
            size: 3_145_729,
            limit: 3 * 1024 * 1024,
        };
        assert_eq!(
            too_large.to_string(),
            "document is 3145729 bytes, larger than the limit of 3 MiB"
        );
    }
}
