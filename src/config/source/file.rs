//! The file source (istiod's `fs://`): a directory tree of multi-document YAML, loaded and watched.
//!
//! Each file is the unit of reload. A bad document is reported and skipped while the rest of the file loads; an
//! object whose new version is invalid keeps its last valid version in the store, with the error visible.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::config::store::{Change, Store};
use crate::config::validate::{self, Checked};
use crate::config::{ConfigError, ObjectKey, Severity};

/// Namespace given to namespaced objects written without one (what `kubectl apply` does).
pub const DEFAULT_NAMESPACE: &str = "default";

/// Errors that stop the file source as a whole (a single bad file never does).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configured directory cannot be read.
    #[error("config directory {0}: {1}")]
    Root(PathBuf, #[source] std::io::Error),
    /// The OS watcher could not be set up.
    #[error("watching {0}: {1}")]
    Watch(PathBuf, #[source] notify::Error),
}

/// What one (re)load did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoadSummary {
    /// Files read.
    pub files: usize,
    /// Objects accepted (new or unchanged) across those files.
    pub objects: usize,
    /// Error-level problems reported.
    pub errors: usize,
    /// Warnings reported.
    pub warnings: usize,
    /// Documents of kinds rudder does not read.
    pub skipped: usize,
}

/// Loads a directory tree into a store and keeps it in sync.
pub struct FileSource {
    root: PathBuf,
    store: Arc<Store>,
    /// Keys each file defined on its last load (valid or kept-last-good).
    files: HashMap<PathBuf, BTreeSet<ObjectKey>>,
}

impl FileSource {
    /// A source for `root`; nothing is read until `load_all`.
    pub fn new(root: impl Into<PathBuf>, store: Arc<Store>) -> Self {
        FileSource {
            root: root.into(),
            store,
            files: HashMap::new(),
        }
    }

    /// The watched directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Reads every config file under the root.
    pub fn load_all(&mut self) -> Result<LoadSummary, Error> {
        std::fs::metadata(&self.root).map_err(|e| Error::Root(self.root.clone(), e))?;
        let root = self.root.clone();
        Ok(self.load_tree(&root))
    }

    fn load_tree(&mut self, dir: &Path) -> LoadSummary {
        let mut total = LoadSummary::default();
        for file in config_files(dir) {
            let s = self.load_file(&file);
            total.files += s.files;
            total.objects += s.objects;
            total.errors += s.errors;
            total.warnings += s.warnings;
            total.skipped += s.skipped;
        }
        total
    }

    /// (Re)loads one file: upserts its valid objects, deletes objects it no longer defines, records problems.
    pub fn load_file(&mut self, path: &Path) -> LoadSummary {
        let origin = self.origin(path);
        let text = match read_limited(path) {
            Ok(t) => t,
            Err(msg) => {
                // Unreadable now (e.g. mid-write): keep what the file defined before, show why.
                self.store
                    .set_problems(&origin, vec![ConfigError::new(&origin, "", msg)]);
                return LoadSummary {
                    files: 1,
                    errors: 1,
                    ..Default::default()
                };
            }
        };
        let checked = validate::check_file(&origin, &text, DEFAULT_NAMESPACE, false);
        let (changes, keys, problems, summary) = plan_file(checked, self.files.get(path));
        for p in &problems {
            match p.severity {
                Severity::Error => tracing::warn!(file = %origin, "{p}"),
                Severity::Warning => tracing::debug!(file = %origin, "{p}"),
            }
        }
        self.store.set_problems(&origin, problems);
        self.store.apply(changes);
        self.files.insert(path.to_path_buf(), keys);
        summary
    }

    /// Forgets a file (or every file under a directory) and deletes the objects it defined.
    pub fn remove_path(&mut self, path: &Path) {
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|f| f.starts_with(path))
            .cloned()
            .collect();
        for file in gone {
            let keys = self.files.remove(&file).unwrap_or_default();
            let still_defined: BTreeSet<&ObjectKey> = self.files.values().flatten().collect();
            let deletes = keys
                .into_iter()
                .filter(|k| !still_defined.contains(k))
                .map(Change::Delete);
            self.store.apply(deletes);
            self.store.set_problems(&self.origin(&file), vec![]);
        }
    }

    /// Applies whatever happened at `path`: a file or directory appeared, changed, or disappeared.
    pub fn sync_path(&mut self, path: &Path) {
        if path.is_dir() {
            let known: Vec<PathBuf> = self
                .files
                .keys()
                .filter(|f| f.starts_with(path))
                .cloned()
                .collect();
            let present: BTreeSet<PathBuf> = config_files(path).into_iter().collect();
            for f in known.iter().filter(|f| !present.contains(*f)) {
                self.remove_path(f);
            }
            self.load_tree(path);
        } else if path.is_file() {
            if is_config_file(path) {
                self.load_file(path);
            }
        } else {
            self.remove_path(path);
        }
    }

    /// Watches the root and keeps the store in sync until the task is dropped. Changes are applied within
    /// `settle` (+ the OS notification latency) of the last write to a file.
    pub async fn watch(mut self, settle: Duration) -> Result<(), Error> {
        let pending: Arc<Mutex<BTreeSet<PathBuf>>> = Arc::default();
        let wake = Arc::new(Notify::new());
        let (p, w) = (pending.clone(), wake.clone());
        // The set of pending paths is bounded by the number of distinct paths touched, so bursts coalesce
        // without an unbounded channel.
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
                Ok(ev) => {
                    p.lock().extend(ev.paths);
                    w.notify_one();
                }
                Err(e) => tracing::warn!(error = %e, "file watcher error"),
            })
            .map_err(|e| Error::Watch(self.root.clone(), e))?;
        watcher
            .watch(&self.root, RecursiveMode::Recursive)
            .map_err(|e| Error::Watch(self.root.clone(), e))?;
        tracing::info!(dir = %self.root.display(), "watching config directory");
        loop {
            wake.notified().await;
            // Editors write in several steps (truncate, write, rename); let them finish.
            tokio::time::sleep(settle).await;
            let paths = std::mem::take(&mut *pending.lock());
            for path in minimal_paths(paths) {
                if is_hidden(&path) {
                    continue;
                }
                tracing::debug!(path = %path.display(), "config path changed");
                self.sync_path(&path);
            }
        }
    }

    fn origin(&self, path: &Path) -> String {
        path.strip_prefix(&self.root)
            .unwrap_or(path)
            .display()
            .to_string()
    }
}

/// Decides the store changes for one file's checked documents, given the keys it defined before.
fn plan_file(
    checked: Vec<Checked>,
    previous: Option<&BTreeSet<ObjectKey>>,
) -> (
    Vec<Change>,
    BTreeSet<ObjectKey>,
    Vec<ConfigError>,
    LoadSummary,
) {
    let mut summary = LoadSummary {
        files: 1,
        ..Default::default()
    };
    let mut changes = Vec::new();
    let mut keys = BTreeSet::new();
    let mut problems = Vec::new();
    // A document whose identity is unknown (broken YAML) may be the new text of any object the file defined:
    // keep them all rather than delete something that is only mis-typed.
    let mut unidentified = false;
    let mut seen: BTreeMap<ObjectKey, usize> = BTreeMap::new();
    for c in checked {
        if c.skipped.is_some() {
            summary.skipped += 1;
            continue;
        }
        let valid = c.is_valid();
        summary.errors += c
            .problems
            .iter()
            .filter(|p| p.severity == Severity::Error)
            .count();
        summary.warnings += c
            .problems
            .iter()
            .filter(|p| p.severity == Severity::Warning)
            .count();
        problems.extend(c.problems);
        match (c.key, c.object) {
            (Some(key), Some(object)) if valid => {
                *seen.entry(key.clone()).or_default() += 1;
                if seen[&key] > 1 {
                    problems.push(ConfigError::for_key(
                        &key,
                        "",
                        "defined more than once in this file; the last one wins",
                    ));
                }
                summary.objects += 1;
                keys.insert(key);
                changes.push(Change::Upsert(object));
            }
            // Invalid but identified: the store keeps its last valid version (if any).
            (Some(key), _) => {
                keys.insert(key);
            }
            (None, _) => unidentified = true,
        }
    }
    if let Some(prev) = previous {
        for key in prev.difference(&keys.clone()) {
            if unidentified {
                keys.insert(key.clone());
            } else {
                changes.push(Change::Delete(key.clone()));
            }
        }
    }
    (changes, keys, problems, summary)
}

fn read_limited(path: &Path) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    if meta.len() > crate::config::parse::MAX_FILE_BYTES as u64 {
        return Err(format!(
            "file is {} bytes, over the {} byte limit",
            meta.len(),
            crate::config::parse::MAX_FILE_BYTES
        ));
    }
    std::fs::read(path).map_err(|e| format!("cannot read: {e}"))
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.') || n.ends_with('~'))
}

fn is_config_file(path: &Path) -> bool {
    !is_hidden(path)
        && matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml") | Some("yml") | Some("json")
        )
}

/// Every config file under `dir`, sorted, skipping hidden files and directories (editor temp files,
/// Kubernetes' `..data` ConfigMap mount links).
pub fn config_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if is_hidden(&path) {
                continue;
            }
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(path),
                _ if is_config_file(&path) && path.is_file() => out.push(path),
                _ => {}
            }
        }
    }
    out.sort();
    out
}

/// Drops paths under another path of the set: syncing a directory covers its contents.
fn minimal_paths(paths: BTreeSet<PathBuf>) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for p in paths {
        if !out.iter().any(|q| p.starts_with(q) && q.is_dir()) {
            out.push(p);
        }
    }
    out
}
