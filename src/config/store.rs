//! The config store: typed, validated objects keyed by (kind, namespace, name), the problems each source reported,
//! and a change signal. Sources write batches; the snapshot builder reads.
//!
//! Lock rule: the lock is never held across `.await`, and values handed out are cheap `Arc` clones.

use std::collections::{BTreeMap, BTreeSet};

use parking_lot::RwLock;
use tokio::sync::watch;

use super::{ConfigError, Kind, Object, ObjectKey, Severity};

/// One write to the store.
#[derive(Debug, Clone)]
pub enum Change {
    /// Add or replace an object. A replace with an equal object is not a change.
    Upsert(Object),
    /// Remove an object if present.
    Delete(ObjectKey),
}

/// What changed since the last `take_changes`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Kinds with at least one added, updated or deleted object.
    pub kinds: BTreeSet<Kind>,
    /// The keys concerned.
    pub keys: BTreeSet<ObjectKey>,
}

impl Changes {
    /// True when only endpoints moved (the push pipeline's fast path).
    pub fn endpoints_only(&self) -> bool {
        !self.kinds.is_empty() && self.kinds.iter().all(|k| k.is_endpoint_only())
    }
}

#[derive(Default)]
struct Inner {
    objects: BTreeMap<ObjectKey, Object>,
    /// Problems by origin (a file path, `kube:<kind>`…). Replaced whole on each report from that origin.
    problems: BTreeMap<String, Vec<ConfigError>>,
    pending: Changes,
}

/// The shared config store.
pub struct Store {
    inner: RwLock<Inner>,
    /// Bumped once per batch that changed something. Receivers only need the latest value.
    generation: watch::Sender<u64>,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            inner: RwLock::new(Inner::default()),
            generation: watch::channel(0).0,
        }
    }
}

impl Store {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies a batch and signals once if anything changed. Returns how many changes took effect.
    pub fn apply(&self, batch: impl IntoIterator<Item = Change>) -> usize {
        let mut applied = 0;
        {
            let mut inner = self.inner.write();
            for change in batch {
                let key = match &change {
                    Change::Upsert(o) => o.key(),
                    Change::Delete(k) => k.clone(),
                };
                let changed = match change {
                    Change::Upsert(obj) => match inner.objects.get(&key) {
                        Some(old) if *old == obj => false,
                        _ => {
                            inner.objects.insert(key.clone(), obj);
                            true
                        }
                    },
                    Change::Delete(_) => inner.objects.remove(&key).is_some(),
                };
                if changed {
                    applied += 1;
                    inner.pending.kinds.insert(key.kind);
                    inner.pending.keys.insert(key);
                }
            }
        }
        if applied > 0 {
            self.generation.send_modify(|g| *g += 1);
        }
        applied
    }

    /// Replaces the problems reported by `origin` (empty clears them).
    pub fn set_problems(&self, origin: &str, problems: Vec<ConfigError>) {
        let mut inner = self.inner.write();
        let same = inner
            .problems
            .get(origin)
            .map(|p| *p == problems)
            .unwrap_or(problems.is_empty());
        if problems.is_empty() {
            inner.problems.remove(origin);
        } else {
            inner.problems.insert(origin.to_string(), problems);
        }
        drop(inner);
        if !same {
            // Problems are part of what the debug API shows from the snapshot, so a change is worth a rebuild.
            self.generation.send_modify(|g| *g += 1);
        }
    }

    /// A receiver that changes whenever the store does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Takes (and resets) the set of changes since the last call.
    pub fn take_changes(&self) -> Changes {
        std::mem::take(&mut self.inner.write().pending)
    }

    /// Takes (and resets) the changes since the last call together with every stored object, at one instant:
    /// the objects are exactly the earlier ones with the changes applied.
    pub fn take_changes_and_objects(&self) -> (Changes, Vec<Object>) {
        let mut inner = self.inner.write();
        let changes = std::mem::take(&mut inner.pending);
        (changes, inner.objects.values().cloned().collect())
    }

    /// The changes accumulated since the last `take_changes`, without resetting them.
    pub fn peek_changes(&self) -> Changes {
        self.inner.read().pending.clone()
    }

    /// Every stored object, in key order.
    pub fn objects(&self) -> Vec<Object> {
        self.inner.read().objects.values().cloned().collect()
    }

    /// Objects of one kind, in key order.
    pub fn list(&self, kind: Kind) -> Vec<Object> {
        let inner = self.inner.read();
        inner
            .objects
            .iter()
            .filter(|(k, _)| k.kind == kind)
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// One object.
    pub fn get(&self, key: &ObjectKey) -> Option<Object> {
        self.inner.read().objects.get(key).cloned()
    }

    /// Every problem currently reported, by origin order.
    pub fn problems(&self) -> Vec<ConfigError> {
        self.inner
            .read()
            .problems
            .values()
            .flatten()
            .cloned()
            .collect()
    }

    /// Number of objects (for summaries and metrics).
    pub fn len(&self) -> usize {
        self.inner.read().objects.len()
    }

    /// Whether the store holds no object.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Count of error-level problems.
    pub fn error_count(&self) -> usize {
        self.inner
            .read()
            .problems
            .values()
            .flatten()
            .filter(|p| p.severity == Severity::Error)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use k8s_openapi::api::core::v1::Namespace;

    use super::*;

    fn ns(name: &str, label: &str) -> Object {
        let mut n = Namespace::default();
        n.metadata.name = Some(name.into());
        n.metadata.labels = Some([("l".to_string(), label.to_string())].into());
        Object::Namespace(Arc::new(n))
    }

    #[test]
    fn equal_upserts_are_not_changes() {
        let store = Store::new();
        let rx = store.subscribe();
        assert_eq!(store.apply([Change::Upsert(ns("a", "1"))]), 1);
        assert!(rx.has_changed().unwrap());
        let mut rx = store.subscribe();
        rx.borrow_and_update();
        assert_eq!(store.apply([Change::Upsert(ns("a", "1"))]), 0);
        assert!(!rx.has_changed().unwrap());
        assert_eq!(store.apply([Change::Upsert(ns("a", "2"))]), 1);
        assert!(rx.has_changed().unwrap());
        let changes = store.take_changes();
        assert_eq!(changes.kinds, [Kind::Namespace].into());
        assert!(!changes.endpoints_only());
        assert_eq!(store.take_changes(), Changes::default());
        assert_eq!(
            store.apply([Change::Delete(ObjectKey::new(Kind::Namespace, "", "a"))]),
            1
        );
        assert!(store.is_empty());
    }

    #[test]
    fn problems_replace_per_origin() {
        let store = Store::new();
        store.set_problems("a.yaml", vec![ConfigError::new("a.yaml", "", "bad")]);
        store.set_problems("b.yaml", vec![ConfigError::new("b.yaml", "", "bad")]);
        assert_eq!(store.error_count(), 2);
        store.set_problems("a.yaml", vec![]);
        assert_eq!(store.problems().len(), 1);
    }
}
