//! Watching a manifest file or directory, and loading only the files that changed.
//!
//! File events come from inotify (the `notify` crate), watching the directory tree (or
//! the directory holding a single manifest file, so that atomic renames are seen). An
//! event wakes [`ManifestWatcher::changed`]; [`ManifestWatcher::poll`] then walks the
//! tree with `stat` only, and reads and parses again just the files whose size,
//! modification time or inode changed, or that an event named (an in-place edit within one
//! timestamp tick keeps all three). Where inotify is unavailable the watcher polls every
//! [`POLL_INTERVAL`], and compares every file's content every [`CONTENT_RECHECK`].
//!
//! If the watched path disappears after the first load, the last good contents are kept
//! (nothing is reported) until it comes back: a vanished ConfigMap mount must not remove
//! every Service.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::files::{FileStat, manifest_paths};
use super::manifest_set::ManifestSet;
use super::manifests::{SourceUpdate, file_entries};

/// How often the tree is walked when inotify is unavailable.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Without inotify: how often every file's content is compared even when no stat changed.
pub const CONTENT_RECHECK: Duration = Duration::from_secs(2);

/// What a file looked like when it was last read.
#[derive(Debug, Clone)]
struct FileState {
    stat: FileStat,
    content: u64,
}

/// Paths named by file events since the last poll, shared with notify's thread.
#[derive(Debug, Default)]
struct Pending {
    paths: HashSet<PathBuf>,
    /// Events were lost (queue overflow, watch error): compare every file's content.
    rescan: bool,
}

/// The inotify side: the watch, what it reported, and the wake-up of the sync loop.
struct Events {
    _watcher: notify::RecommendedWatcher,
    pending: Arc<Mutex<Pending>>,
    wake: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").finish_non_exhaustive()
    }
}

/// Watches a manifest file or directory and reports what changed in it.
#[derive(Debug)]
pub struct ManifestWatcher {
    path: PathBuf,
    set: ManifestSet,
    files: BTreeMap<PathBuf, FileState>,
    /// `None`: polling.
    events: Option<Events>,
    /// The first poll has loaded everything.
    loaded: bool,
    /// When every file's content was last compared (polling only).
    last_content_check: Instant,
}

impl ManifestWatcher {
    /// A watcher of `path` (a file or a directory; it need not exist yet). Uses inotify
    /// when it can watch the path (or, for a file, its directory), else polls.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let events = match start_events(&path) {
            Ok(events) => Some(events),
            Err(err) => {
                tracing::info!(path = %path.display(), "no file events ({err}): polling every {POLL_INTERVAL:?}");
                None
            }
        };
        ManifestWatcher::with_events(path, events)
    }

    /// A watcher that polls (no inotify).
    pub fn polling(path: impl Into<PathBuf>) -> Self {
        ManifestWatcher::with_events(path.into(), None)
    }

    fn with_events(path: PathBuf, events: Option<Events>) -> Self {
        ManifestWatcher {
            path,
            set: ManifestSet::default(),
            files: BTreeMap::new(),
            events,
            loaded: false,
            last_content_check: Instant::now(),
        }
    }

    /// The watched path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether file events (inotify) drive this watcher.
    pub fn uses_events(&self) -> bool {
        self.events.is_some()
    }

    /// Resolves when something may have changed: a file event, or the next poll time.
    pub async fn changed(&self) {
        match &self.events {
            Some(events) => events.wake.notified().await,
            None => tokio::time::sleep(POLL_INTERVAL).await,
        }
    }

    /// Everything on the first call; afterwards the objects of the files that changed
    /// since the last call, or `None` when nothing did.
    ///
    /// Reads files (blocking I/O). A missing or unreadable path is reported as a problem
    /// on the first call; later it keeps the last contents.
    pub fn poll(&mut self) -> Option<SourceUpdate> {
        let (forced, rescan) = self.take_pending()?;
        if self.loaded && !self.path.exists() {
            return None;
        }
        let content_check = rescan
            || (self.events.is_none() && self.last_content_check.elapsed() >= CONTENT_RECHECK);
        if content_check {
            self.last_content_check = Instant::now();
        }
        let mut changed = Vec::new();
        let mut present = BTreeSet::new();
        for found in manifest_paths(&self.path) {
            let stat = found.stat();
            present.insert(found.path.clone());
            let known = self.files.get(&found.path);
            let same_stat = known.is_some_and(|k| k.stat == stat);
            if same_stat && !content_check && !forced.contains(&found.path) {
                continue;
            }
            let file = found.read();
            let content = content_hash(&file.content);
            if known.is_some_and(|k| k.content == content) {
                if let Some(known) = self.files.get_mut(&found.path) {
                    known.stat = stat;
                }
                continue;
            }
            let entries = file_entries(&file);
            self.files
                .insert(found.path.clone(), FileState { stat, content });
            changed.push((found.path, Some(entries)));
        }
        let removed: Vec<PathBuf> = self
            .set
            .paths()
            .filter(|p| !present.contains(*p))
            .map(Path::to_path_buf)
            .collect();
        for path in removed {
            self.files.remove(&path);
            changed.push((path, None));
        }
        let first = !self.loaded;
        self.loaded = true;
        if changed.is_empty() && !first {
            return None;
        }
        Some(self.set.update(changed))
    }

    /// The paths events named and whether to compare everything; `None` when an
    /// event-driven watcher has seen no event since the last poll (no need to walk).
    fn take_pending(&mut self) -> Option<(HashSet<PathBuf>, bool)> {
        let Some(events) = &self.events else {
            return Some((HashSet::new(), false));
        };
        let pending =
            std::mem::take(&mut *events.pending.lock().unwrap_or_else(|e| e.into_inner()));
        let anything = !pending.paths.is_empty() || pending.rescan;
        (anything || !self.loaded).then_some((pending.paths, pending.rescan))
    }
}

/// A hash of a file's text (or of its problem).
fn content_hash(content: &Result<String, super::problem::ProblemKind>) -> u64 {
    let mut hasher = DefaultHasher::new();
    match content {
        Ok(text) => (0u8, text).hash(&mut hasher),
        Err(problem) => (1u8, problem.to_string()).hash(&mut hasher),
    }
    hasher.finish()
}

/// Whether an event may mean changed content: anything but opening a file or directory
/// and closing it unwritten.
fn changes_content(event: &notify::Event) -> bool {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode};
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => event.need_rescan(),
        _ => true,
    }
}

/// Watches `path` recursively (a directory) or its parent (a file, or a path that does
/// not exist yet).
fn start_events(path: &Path) -> notify::Result<Events> {
    use notify::{RecursiveMode, Watcher};
    let pending = Arc::new(Mutex::new(Pending::default()));
    let wake = Arc::new(tokio::sync::Notify::new());
    let (sink, waker) = (pending.clone(), wake.clone());
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        {
            let mut pending = sink.lock().unwrap_or_else(|e| e.into_inner());
            match event {
                // Opening or reading a file changes nothing (and the watcher's own walk
                // opens directories: counting those would wake it forever).
                Ok(event) if !changes_content(&event) => return,
                Ok(event) => {
                    pending.rescan |= event.need_rescan();
                    pending.paths.extend(event.paths);
                }
                Err(_) => pending.rescan = true,
            }
        }
        waker.notify_one();
    })?;
    if path.is_dir() {
        watcher.watch(path, RecursiveMode::Recursive)?;
    } else {
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        watcher.watch(parent, RecursiveMode::NonRecursive)?;
    }
    Ok(Events {
        _watcher: watcher,
        pending,
        wake,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Snapshot;
    use crate::source::test_support::TestDir;

    const NODE: &str = "apiVersion: v1\nkind: Node\nmetadata:\n  name: node-a\n";

    /// A watcher and the snapshot its updates build.
    struct Watched {
        watcher: ManifestWatcher,
        snapshot: Snapshot,
    }

    impl Watched {
        fn new(watcher: ManifestWatcher) -> Self {
            Watched {
                watcher,
                snapshot: Snapshot::default(),
            }
        }

        /// Polls (waiting up to 5 s for a file event first, when event-driven); returns
        /// how many objects changed, `None` when the poll saw no change.
        fn poll(&mut self) -> Option<usize> {
            if self.watcher.uses_events() {
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline {
                    let pending = self.watcher.events.as_ref().map(|e| {
                        let p = e.pending.lock().unwrap_or_else(|e| e.into_inner());
                        !p.paths.is_empty() || p.rescan
                    });
                    if pending == Some(true) || !self.watcher.loaded {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            let update = self.watcher.poll()?;
            let n = update.changes.len();
            self.snapshot.apply(update.changes);
            Some(n)
        }

        fn nodes(&self) -> Vec<&str> {
            self.snapshot.nodes().keys().map(String::as_str).collect()
        }
    }

    fn both(path: &Path) -> [Watched; 2] {
        [
            Watched::new(ManifestWatcher::new(path)),
            Watched::new(ManifestWatcher::polling(path)),
        ]
    }

    #[test]
    fn inotify_is_used_here() {
        let dir = TestDir::new("watch-inotify");
        let watcher = ManifestWatcher::new(dir.path());
        assert!(watcher.uses_events(), "this kernel has inotify");
    }

    #[test]
    fn reading_the_tree_wakes_nobody() {
        let dir = TestDir::new("watch-quiet");
        dir.write("nodes.yaml", NODE);
        let mut watcher = ManifestWatcher::new(dir.path());
        assert!(watcher.poll().is_some());
        // Reading files and listing directories (as every poll does) are not changes.
        let _ = std::fs::read_to_string(dir.path().join("nodes.yaml"));
        let _ = std::fs::read_dir(dir.path()).map(|d| d.count());
        std::thread::sleep(Duration::from_millis(100));
        let events = watcher.events.as_ref().expect("inotify");
        let pending = events.pending.lock().unwrap_or_else(|e| e.into_inner());
        assert!(
            pending.paths.is_empty() && !pending.rescan,
            "{:?}",
            pending.paths
        );
    }

    #[test]
    fn first_poll_loads_then_quiet_until_a_change() {
        let dir = TestDir::new("watch");
        dir.write("nodes.yaml", NODE);
        for mut w in both(dir.path()) {
            assert_eq!(w.poll(), Some(1));
            assert_eq!(w.nodes(), ["node-a"]);
            assert_eq!(w.watcher.poll().map(|u| u.changes.len()), None);
        }
    }

    #[test]
    fn notices_edits_within_the_same_timestamp_tick() {
        let dir = TestDir::new("watch-edit");
        dir.write("nodes.yaml", NODE);
        for mut w in both(dir.path()) {
            assert!(w.poll().is_some());
            // Same length, written in place right away: size and inode stay, and the
            // modification time may too. Events name the file; polling compares content.
            dir.write("nodes.yaml", &NODE.replace("node-a", "node-b"));
            if !w.watcher.uses_events() {
                w.watcher.last_content_check -= CONTENT_RECHECK;
            }
            assert_eq!(w.poll(), Some(2), "node-a removed, node-b added");
            assert_eq!(w.nodes(), ["node-b"]);
            dir.write("nodes.yaml", NODE);
            assert!(w.poll().is_some(), "second edit noticed");
            assert_eq!(w.nodes(), ["node-a"]);
        }
    }

    #[test]
    fn reads_only_changed_files_and_notices_new_and_removed_ones() {
        let dir = TestDir::new("watch-files");
        dir.write("a.yaml", NODE);
        for mut w in both(dir.path()) {
            assert!(w.poll().is_some());
            dir.write("sub/b.yaml", &NODE.replace("node-a", "node-b"));
            assert_eq!(w.poll(), Some(1), "only node-b is new");
            assert_eq!(w.nodes(), ["node-a", "node-b"]);
            dir.remove("a.yaml");
            assert_eq!(w.poll(), Some(1), "only node-a is gone");
            assert_eq!(w.nodes(), ["node-b"]);
            dir.write("notes.txt", "ignored");
            std::thread::sleep(Duration::from_millis(50));
            assert_eq!(w.watcher.poll(), None);
            dir.remove("sub/b.yaml");
            dir.write("a.yaml", NODE);
            assert!(w.poll().is_some());
        }
    }

    #[test]
    fn a_missing_path_is_a_problem_until_it_appears_and_a_vanished_one_keeps_the_last_load() {
        let dir = TestDir::new("watch-missing");
        let path = dir.path().join("manifests.yaml");
        for mut w in both(&path) {
            assert_eq!(w.watcher.path(), path);
            let missing = w.watcher.poll().expect("first poll loads");
            assert_eq!(missing.problems.len(), 1);
            dir.write("manifests.yaml", NODE);
            assert_eq!(w.poll(), Some(1), "file noticed");
            assert_eq!(w.nodes(), ["node-a"]);
            dir.remove("manifests.yaml");
            assert_eq!(w.poll(), None, "a vanished path keeps the last load");
            assert_eq!(w.nodes(), ["node-a"]);
        }
    }
}
