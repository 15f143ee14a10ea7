//! Test helpers: a scratch directory removed on drop, and manifest editing.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A directory under `std::env::temp_dir()` that is removed when dropped.
pub(crate) struct TestDir {
    path: PathBuf,
}

impl TestDir {
    /// Creates a fresh, empty directory whose name contains `name`.
    pub fn new(name: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let unique = format!(
            "kproxy-source-{name}-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(unique);
        std::fs::create_dir_all(&path).expect("create test dir");
        TestDir { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `text` to `relative` (creating parent directories); returns the file's path.
    pub fn write(&self, relative: &str, text: &str) -> PathBuf {
        let path = self.path.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create parent dir");
        }
        std::fs::write(&path, text).expect("write test file");
        path
    }

    /// Removes `relative`.
    pub fn remove(&self, relative: &str) {
        std::fs::remove_file(self.path.join(relative)).expect("remove test file");
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Parses a test manifest into a JSON value, as the loader does.
pub(crate) fn yaml(text: &str) -> Value {
    serde_saphyr::from_str(text).expect("test YAML parses")
}

/// Sets the field at a JSON pointer (`/spec/ports/0/port`), creating it in its parent (an
/// index one past the end of an array appends).
pub(crate) fn set(value: &mut Value, pointer: &str, new: Value) {
    let (parent, key) = pointer.rsplit_once('/').expect("pointer has a parent");
    let key = key.replace("~1", "/").replace("~0", "~");
    match value.pointer_mut(parent).expect("parent exists") {
        Value::Object(map) => {
            map.insert(key, new);
        }
        Value::Array(items) => match key.parse::<usize>().expect("index") {
            // One past the end appends (as JSON Patch's "add").
            end if end == items.len() => items.push(new),
            index => items[index] = new,
        },
        other => panic!("cannot set {pointer} in {other}"),
    }
}

/// A manifest with some fields set.
pub(crate) fn patched(base: &str, patches: &[(&str, Value)]) -> Value {
    let mut value = yaml(base);
    for (pointer, new) in patches {
        set(&mut value, pointer, new.clone());
    }
    value
}
