//! The parsed contents of a manifest tree, updated one file at a time.
//!
//! Owns which object wins when several files (or documents) name the same kind,
//! namespace and name: the first in path order, then document order, even when it is
//! invalid (so that a later copy never silently stands in for a broken first one); every
//! other copy is reported as a duplicate. Replacing or removing a file re-decides only the
//! objects that file names, and the update lists only their new values: a change to one
//! file of a large tree costs that file, not the tree.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::manifests::{Entry, SourceUpdate, change_of};
use super::problem::{ManifestLocation, ManifestProblem, ObjectRef, ProblemKind};

/// Where an entry is: its file and its index among the file's entries (so positions sort
/// in path order, then document order).
type Position = (Arc<Path>, usize);

/// Every manifest file's entries, and which entries claim each object.
#[derive(Debug, Default)]
pub(crate) struct ManifestSet {
    files: BTreeMap<Arc<Path>, Vec<Entry>>,
    /// Positions claiming each object, sorted (almost always one: a vector, not a B-tree
    /// node per object).
    claims: HashMap<ObjectRef, Vec<Position>>,
}

impl ManifestSet {
    /// Replaces the entries of each file (`Some`) or forgets the file (`None`), and returns
    /// the new value of every object whose winner or value may have changed, with the
    /// problems of the given files (in file, then entry order) and the duplicates the
    /// change created elsewhere.
    pub(crate) fn update(
        &mut self,
        files: impl IntoIterator<Item = (PathBuf, Option<Vec<Entry>>)>,
    ) -> SourceUpdate {
        let mut affected: BTreeSet<ObjectRef> = BTreeSet::new();
        let mut updated: BTreeSet<Arc<Path>> = BTreeSet::new();
        for (path, entries) in files {
            let path: Arc<Path> = Arc::from(path.as_path());
            self.forget(&path, &mut affected);
            if let Some(entries) = entries {
                for (i, entry) in entries.iter().enumerate() {
                    if let Some(object) = entry.claim() {
                        let positions = self.claims.entry(object.clone()).or_default();
                        let position = (path.clone(), i);
                        if let Err(at) = positions.binary_search(&position) {
                            // An object is nearly always claimed once.
                            positions.reserve_exact(1);
                            positions.insert(at, position);
                        }
                        affected.insert(object.clone());
                    }
                }
                self.files.insert(path.clone(), entries);
                updated.insert(path);
            }
        }
        let changes = affected
            .iter()
            .map(|object| change_of(object, self.winner(object)))
            .collect();
        let mut problems = Vec::new();
        for path in &updated {
            self.file_problems(path, &mut problems);
        }
        for object in &affected {
            self.duplicates_outside(object, &updated, &mut problems);
        }
        SourceUpdate { changes, problems }
    }

    /// The files currently known.
    pub(crate) fn paths(&self) -> impl Iterator<Item = &Path> {
        self.files.keys().map(|p| &**p)
    }

    /// Drops the entries of `path` and their claims.
    fn forget(&mut self, path: &Arc<Path>, affected: &mut BTreeSet<ObjectRef>) {
        let Some(old) = self.files.remove(path) else {
            return;
        };
        for (i, entry) in old.iter().enumerate() {
            let Some(object) = entry.claim() else {
                continue;
            };
            if let Some(positions) = self.claims.get_mut(object) {
                positions.retain(|p| *p != (path.clone(), i));
                if positions.is_empty() {
                    self.claims.remove(object);
                }
            }
            affected.insert(object.clone());
        }
    }

    fn entry(&self, (path, i): &Position) -> Option<&Entry> {
        self.files.get(path)?.get(*i)
    }

    fn location(&self, position: &Position) -> Option<ManifestLocation> {
        Some(self.entry(position)?.location(&position.0))
    }

    /// The first claim of `object`, if any.
    fn first(&self, object: &ObjectRef) -> Option<&Position> {
        self.claims.get(object)?.first()
    }

    /// The value of the winning copy of `object` (`None`: no copy, or the first is invalid
    /// or unused).
    fn winner(&self, object: &ObjectRef) -> Option<&super::manifests::Validated> {
        let entry = self.entry(self.first(object)?)?;
        entry.value.as_ref()
    }

    /// The problems of one file's entries: its invalid documents and objects, and its
    /// copies of objects a file or document before it already has.
    fn file_problems(&self, path: &Arc<Path>, problems: &mut Vec<ManifestProblem>) {
        let Some(entries) = self.files.get(path) else {
            return;
        };
        for (i, entry) in entries.iter().enumerate() {
            let duplicate_of = entry
                .claim()
                .and_then(|object| self.first(object))
                .filter(|first| **first != (path.clone(), i));
            if let Some(first) = duplicate_of.and_then(|p| self.location(p)) {
                problems.push(ManifestProblem {
                    location: entry.location(path),
                    object: entry.object.clone(),
                    kind: ProblemKind::Duplicate { first },
                });
            } else if let Some(kind) = &entry.problem {
                problems.push(ManifestProblem {
                    location: entry.location(path),
                    object: entry.object.clone(),
                    kind: (**kind).clone(),
                });
            }
        }
    }

    /// Reports the copies of `object` in files that were not updated and that are not its
    /// winner (an update of an earlier file may have shadowed them).
    fn duplicates_outside(
        &self,
        object: &ObjectRef,
        updated: &BTreeSet<Arc<Path>>,
        problems: &mut Vec<ManifestProblem>,
    ) {
        let Some(positions) = self.claims.get(object) else {
            return;
        };
        let Some(first) = positions.first().and_then(|p| self.location(p)) else {
            return;
        };
        for position in positions.iter().skip(1) {
            if updated.contains(&position.0) {
                continue;
            }
            if let Some(entry) = self.entry(position) {
                problems.push(ManifestProblem {
                    location: entry.location(&position.0),
                    object: entry.object.clone(),
                    kind: ProblemKind::Duplicate {
                        first: first.clone(),
                    },
                });
            }
        }
    }
}
