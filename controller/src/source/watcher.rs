//! Watching a manifest file or directory for changes by polling.
//!
//! Every poll walks the path and hashes each manifest file's path, size and modification
//! time (no reading), which is cheap enough to poll every few tens of milliseconds. Only
//! when that changes, or every [`CONTENT_RECHECK`], are the files read and their contents
//! compared with the last load's, so an edit is noticed even if it kept size and mtime,
//! and a file added, removed or renamed is noticed too.

use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

use super::files::{fingerprint, read_sources, stat_fingerprint};
use super::manifests::{Loaded, load_sources};
use super::validate::ValidationOptions;

/// How often the contents are compared even when no file's size or mtime changed.
pub const CONTENT_RECHECK: Duration = Duration::from_secs(2);

/// Polls a manifest file or directory and loads it again when it changed.
#[derive(Debug, Clone)]
pub struct ManifestWatcher {
    path: PathBuf,
    opts: ValidationOptions,
    /// The fingerprint of the files of the last load, `None` before the first poll.
    last: Option<u64>,
    /// The metadata fingerprint at the last content check, and when that was.
    last_stat: Option<(u64, Instant)>,
}

impl ManifestWatcher {
    /// A watcher of `path` (a file or a directory; it need not exist yet).
    pub fn new(path: impl Into<PathBuf>, opts: ValidationOptions) -> Self {
        ManifestWatcher {
            path: path.into(),
            opts,
            last: None,
            last_stat: None,
        }
    }

    /// The watched path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Loads the manifests if this is the first poll or if the set of files or any file's
    /// content changed since the last load; `None` when nothing changed.
    ///
    /// Reads every file (blocking I/O): call it from a blocking context. A missing or
    /// unreadable path loads as a [`Loaded`] with a problem.
    pub fn poll(&mut self) -> Option<Loaded> {
        let stat = stat_fingerprint(&self.path);
        if let Some((last, at)) = self.last_stat
            && last == stat
            && at.elapsed() < CONTENT_RECHECK
        {
            return None;
        }
        self.last_stat = Some((stat, Instant::now()));
        let files = read_sources(&self.path);
        let current = fingerprint(&files);
        if self.last == Some(current) {
            return None;
        }
        self.last = Some(current);
        Some(load_sources(&files, &self.opts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::test_support::TestDir;

    const NODE: &str = "apiVersion: v1\nkind: Node\nmetadata:\n  name: node-a\n";

    fn watcher(path: &Path) -> ManifestWatcher {
        ManifestWatcher::new(path, ValidationOptions::default())
    }

    #[test]
    fn first_poll_loads_then_quiet_until_a_change() {
        let dir = TestDir::new("watch");
        dir.write("nodes.yaml", NODE);
        let mut watcher = watcher(dir.path());
        let first = watcher.poll().expect("first poll loads");
        assert!(first.snapshot.nodes.contains_key("node-a"));
        assert_eq!(watcher.poll(), None);
        assert_eq!(watcher.poll(), None);
    }

    #[test]
    fn notices_edits_within_the_same_second() {
        let dir = TestDir::new("watch-edit");
        dir.write("nodes.yaml", NODE);
        let mut watcher = watcher(dir.path());
        assert!(watcher.poll().is_some());
        // Same length, same modification second: only the content differs.
        dir.write("nodes.yaml", &NODE.replace("node-a", "node-b"));
        let edited = watcher.poll().expect("edit noticed");
        assert!(edited.snapshot.nodes.contains_key("node-b"));
        dir.write("nodes.yaml", NODE);
        let reverted = watcher.poll().expect("second edit noticed");
        assert!(reverted.snapshot.nodes.contains_key("node-a"));
        assert_eq!(watcher.poll(), None);
    }

    #[test]
    fn notices_new_and_removed_files() {
        let dir = TestDir::new("watch-files");
        dir.write("a.yaml", NODE);
        let mut watcher = watcher(dir.path());
        assert!(watcher.poll().is_some());
        dir.write("sub/b.yaml", &NODE.replace("node-a", "node-b"));
        let added = watcher.poll().expect("new file noticed");
        assert_eq!(added.snapshot.nodes.len(), 2);
        assert_eq!(watcher.poll(), None);
        dir.remove("a.yaml");
        let removed = watcher.poll().expect("removal noticed");
        assert_eq!(removed.snapshot.nodes.len(), 1);
        dir.write("notes.txt", "ignored");
        assert_eq!(watcher.poll(), None);
    }

    #[test]
    fn a_missing_path_is_a_problem_until_it_appears() {
        let dir = TestDir::new("watch-missing");
        let path = dir.path().join("manifests.yaml");
        let mut watcher = watcher(&path);
        assert_eq!(watcher.path(), path);
        let missing = watcher.poll().expect("first poll loads");
        assert_eq!(missing.problems.len(), 1);
        assert_eq!(watcher.poll(), None);
        dir.write("manifests.yaml", NODE);
        let appeared = watcher.poll().expect("file noticed");
        assert!(appeared.problems.is_empty());
        assert_eq!(appeared.snapshot.nodes.len(), 1);
    }
}
