//! Finding and reading manifest files.
//!
//! A path is a file (read whatever its name) or a directory, walked recursively for files
//! ending `.yaml`, `.yml` or `.json`, skipping hidden entries (names starting with `.`, such
//! as the `..data` directory of a mounted ConfigMap) and following symbolic links (the
//! visible names of a mounted ConfigMap are links) without looping. Files come back sorted
//! by path with their whole content, so that loading and change detection see the same
//! bytes. Nothing here fails: a file or directory that cannot be read is returned with its
//! problem.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};

use super::problem::ProblemKind;

/// The largest manifest file read.
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// The file name endings of manifest files in a directory.
const MANIFEST_EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

/// One file found under the path, with its text or why it could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SourceFile {
    /// The file (or the directory that could not be listed).
    pub path: PathBuf,
    /// Its text (a leading byte order mark removed), or why it is unusable.
    pub content: Result<String, ProblemKind>,
}

impl SourceFile {
    fn failed(path: &Path, problem: ProblemKind) -> Self {
        SourceFile {
            path: path.to_path_buf(),
            content: Err(problem),
        }
    }

    /// Whether the file holds JSON (by its name) rather than YAML.
    pub fn is_json(&self) -> bool {
        self.path.extension().is_some_and(|e| e == "json")
    }
}

/// Reads the file at `path`, or every manifest file under the directory at `path`.
pub(crate) fn read_sources(path: &Path) -> Vec<SourceFile> {
    read_sources_limited(path, MAX_FILE_BYTES)
}

/// [`read_sources`] with a file size limit.
fn read_sources_limited(path: &Path, limit: u64) -> Vec<SourceFile> {
    manifest_paths(path)
        .into_iter()
        .map(|found| match found.meta {
            Ok(_) => read_file(&found.path, limit),
            Err(problem) => SourceFile::failed(&found.path, problem),
        })
        .collect()
}

/// A manifest file found under the path (or a file or directory that could not be read),
/// with its metadata: what a walk learns without reading any content.
pub(crate) struct Found {
    /// The file (or the directory that could not be listed).
    pub path: PathBuf,
    /// Its metadata (links followed), or why it could not be read.
    pub meta: Result<fs::Metadata, ProblemKind>,
}

impl Found {
    /// What a stat says about the file's content: a changed value means the content may
    /// have changed (same size, modification time and inode can still hide an in-place
    /// edit within one timestamp tick, which a file event or a content check catches).
    pub fn stat(&self) -> FileStat {
        use std::os::unix::fs::MetadataExt;
        match &self.meta {
            Ok(meta) => FileStat::Seen {
                len: meta.len(),
                modified: meta.modified().ok(),
                inode: (meta.dev(), meta.ino()),
            },
            Err(problem) => FileStat::Failed(problem.to_string()),
        }
    }

    /// Reads the file (or returns the problem found while walking).
    pub fn read(&self) -> SourceFile {
        match &self.meta {
            Ok(_) => read_file(&self.path, MAX_FILE_BYTES),
            Err(problem) => SourceFile::failed(&self.path, problem.clone()),
        }
    }
}

/// See [`Found::stat`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FileStat {
    /// Size, modification time and (device, inode).
    Seen {
        len: u64,
        modified: Option<std::time::SystemTime>,
        inode: (u64, u64),
    },
    /// Why it could not be read.
    Failed(String),
}

/// Every manifest file at or under `path`, sorted by path.
pub(crate) fn manifest_paths(path: &Path) -> Vec<Found> {
    match fs::metadata(path) {
        Err(e) => vec![Found {
            path: path.to_path_buf(),
            meta: Err(unreadable(e)),
        }],
        Ok(meta) if meta.is_dir() => {
            let mut found = Vec::new();
            walk(path, &mut HashSet::new(), &mut found);
            found.sort_by(|a, b| a.path.cmp(&b.path));
            found
        }
        Ok(meta) => vec![Found {
            path: path.to_path_buf(),
            meta: Ok(meta),
        }],
    }
}

fn walk(dir: &Path, visited: &mut HashSet<PathBuf>, found: &mut Vec<Found>) {
    if let Ok(real) = fs::canonicalize(dir)
        && !visited.insert(real)
    {
        return;
    }
    let failed = |e| Found {
        path: dir.to_path_buf(),
        meta: Err(unreadable(e)),
    };
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => return found.push(failed(e)),
    };
    let mut paths = Vec::new();
    for entry in entries {
        match entry {
            Ok(entry) => paths.push(entry.path()),
            Err(e) => found.push(failed(e)),
        }
    }
    // Sorted, so that which of two links to one directory is followed does not vary.
    paths.sort();
    for path in paths {
        visit(&path, visited, found);
    }
}

/// One directory entry: recurse into a directory, note a manifest file, skip the rest.
fn visit(path: &Path, visited: &mut HashSet<PathBuf>, found: &mut Vec<Found>) {
    let hidden = path
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with('.'));
    if hidden {
        return;
    }
    match fs::metadata(path) {
        Ok(meta) if meta.is_dir() => walk(path, visited, found),
        Ok(meta) if meta.is_file() && is_manifest_name(path) => {
            found.push(Found {
                path: path.to_path_buf(),
                meta: Ok(meta),
            });
        }
        Ok(_) => {}
        // A dangling link with a manifest's name is worth reporting.
        Err(e) if is_manifest_name(path) => {
            found.push(Found {
                path: path.to_path_buf(),
                meta: Err(unreadable(e)),
            });
        }
        Err(_) => {}
    }
}

fn is_manifest_name(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| MANIFEST_EXTENSIONS.contains(&e))
}

fn read_file(path: &Path, limit: u64) -> SourceFile {
    SourceFile {
        path: path.to_path_buf(),
        content: read_limited(path, limit).and_then(decode_text),
    }
}

/// Reads at most `limit` bytes; a larger file is an error, even one that grew meanwhile.
fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, ProblemKind> {
    let file = File::open(path).map_err(unreadable)?;
    let too_large = ProblemKind::FileTooLarge { limit };
    if file.metadata().map_err(unreadable)?.len() > limit {
        return Err(too_large);
    }
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > limit {
        return Err(too_large);
    }
    Ok(bytes)
}

fn decode_text(bytes: Vec<u8>) -> Result<String, ProblemKind> {
    let text = String::from_utf8(bytes).map_err(|e| ProblemKind::NotUtf8(e.to_string()))?;
    Ok(match text.strip_prefix('\u{FEFF}') {
        Some(rest) => rest.to_string(),
        None => text,
    })
}

fn unreadable(error: std::io::Error) -> ProblemKind {
    ProblemKind::Unreadable(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::test_support::TestDir;

    fn names(files: &[SourceFile], root: &Path) -> Vec<String> {
        files
            .iter()
            .map(|f| {
                f.path
                    .strip_prefix(root)
                    .unwrap_or(&f.path)
                    .display()
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn walks_directories_sorted_skipping_hidden_and_other_files() {
        let dir = TestDir::new("walk");
        dir.write("b.yaml", "b: 1\n");
        dir.write("a/z.yml", "z: 1\n");
        dir.write("a/y.json", "{}");
        dir.write("a/notes.txt", "not a manifest");
        dir.write(".hidden.yaml", "h: 1\n");
        dir.write(".git/config.yaml", "g: 1\n");
        dir.write("c/.secret/s.yaml", "s: 1\n");
        let files = read_sources(dir.path());
        assert_eq!(names(&files, dir.path()), ["a/y.json", "a/z.yml", "b.yaml"]);
        assert_eq!(files[2].content, Ok("b: 1\n".to_string()));
        assert!(files[0].is_json());
    }

    #[test]
    fn a_file_path_is_read_whatever_its_name() {
        let dir = TestDir::new("single");
        let path = dir.write("manifest.txt", "\u{FEFF}a: 1\n");
        let files = read_sources(&path);
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].content, Ok("a: 1\n".to_string()));
    }

    #[test]
    fn missing_path_is_a_problem_not_a_panic() {
        let dir = TestDir::new("missing");
        let files = read_sources(&dir.path().join("nope"));
        assert_eq!(files.len(), 1);
        assert!(matches!(files[0].content, Err(ProblemKind::Unreadable(_))));
    }

    #[test]
    fn oversize_and_binary_files_are_problems() {
        let dir = TestDir::new("limits");
        dir.write("big.yaml", &"x".repeat(101));
        dir.write("ok.yaml", &"x".repeat(100));
        std::fs::write(dir.path().join("bin.yaml"), [0xff, 0xfe, 0x00]).expect("write");
        let files = read_sources_limited(dir.path(), 100);
        assert_eq!(
            names(&files, dir.path()),
            ["big.yaml", "bin.yaml", "ok.yaml"]
        );
        assert_eq!(
            files[0].content,
            Err(ProblemKind::FileTooLarge { limit: 100 })
        );
        assert!(matches!(files[1].content, Err(ProblemKind::NotUtf8(_))));
        assert!(files[2].content.is_ok());
    }

    #[cfg(unix)]
    #[test]
    fn follows_links_without_looping() {
        let dir = TestDir::new("links");
        dir.write("..data/svc.yaml", "a: 1\n");
        std::os::unix::fs::symlink("..data/svc.yaml", dir.path().join("svc.yaml")).expect("link");
        std::os::unix::fs::symlink(".", dir.path().join("loop")).expect("link");
        let files = read_sources(dir.path());
        assert_eq!(names(&files, dir.path()), ["svc.yaml"]);
    }
}
