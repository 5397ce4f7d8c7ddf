//! Applies one watcher's events to the store: decode and validate each object like a file document, buffer the
//! initial list and swap it in at `InitDone` (so no half-listed snapshot is published), and keep the problems of
//! this kind's bad objects under one origin.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use kube::api::{ApiResource, DynamicObject};
use kube::runtime::watcher::Event;

use crate::config::parse::decode_value;
use crate::config::store::{Change, Store};
use crate::config::validate::check_document;
use crate::config::{ConfigError, Kind, ObjectKey};

/// Namespace given to a namespaced object that arrives without one (the API server always sets it).
const DEFAULT_NAMESPACE: &str = "default";

/// The store-facing state of one watched kind.
pub struct KindSync {
    store: Arc<Store>,
    kind: Kind,
    ar: ApiResource,
    origin: String,
    /// Keys this watcher put in the store (and so may remove on a relist).
    known: BTreeSet<ObjectKey>,
    /// Problems of objects by namespace/name; replaced whole in the store on every change.
    problems: BTreeMap<(String, String), Vec<ConfigError>>,
    /// The initial list being received, between `Init` and `InitDone`.
    buffer: Option<Vec<DynamicObject>>,
    /// Whether a complete list has been applied.
    synced: bool,
}

/// What decoding one object gave.
enum Decoded {
    Valid(crate::config::Object, Vec<ConfigError>),
    Invalid(Vec<ConfigError>),
}

impl KindSync {
    /// State for `kind`, watched as `ar`, reporting problems as `origin`.
    pub fn new(store: Arc<Store>, kind: Kind, ar: ApiResource, origin: String) -> Self {
        KindSync {
            store,
            kind,
            ar,
            origin,
            known: BTreeSet::new(),
            problems: BTreeMap::new(),
            buffer: None,
            synced: false,
        }
    }

    /// Whether the initial list has been applied.
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// Applies one watcher event.
    pub fn handle(&mut self, event: Event<DynamicObject>) {
        match event {
            Event::Init => self.buffer = Some(Vec::new()),
            Event::InitApply(obj) => self.buffer.get_or_insert_with(Vec::new).push(obj),
            Event::InitDone => {
                let listed = self.buffer.take().unwrap_or_default();
                self.replace_all(listed);
                self.synced = true;
            }
            Event::Apply(obj) => {
                let id = object_id(&obj);
                let mut batch = Vec::new();
                match self.decode(obj) {
                    Decoded::Valid(object, warnings) => {
                        self.known.insert(object.key());
                        batch.push(Change::Upsert(object));
                        self.set_object_problems(id, warnings);
                    }
                    // The last valid version (if any) stays in the store, as with a bad edit of a file.
                    Decoded::Invalid(errors) => self.set_object_problems(id, errors),
                }
                self.store.apply(batch);
                self.publish_problems();
            }
            Event::Delete(obj) => {
                let id = object_id(&obj);
                let key = ObjectKey::new(self.kind, id.0.clone(), id.1.clone());
                self.known.remove(&key);
                self.problems.remove(&id);
                self.store.apply([Change::Delete(key)]);
                self.publish_problems();
            }
        }
    }

    /// Makes the store's objects of this watcher exactly the listed ones, in one batch.
    fn replace_all(&mut self, listed: Vec<DynamicObject>) {
        let mut batch = Vec::new();
        let mut known = BTreeSet::new();
        let mut problems = BTreeMap::new();
        for obj in listed {
            let id = object_id(&obj);
            match self.decode(obj) {
                Decoded::Valid(object, warnings) => {
                    known.insert(object.key());
                    batch.push(Change::Upsert(object));
                    if !warnings.is_empty() {
                        problems.insert(id, warnings);
                    }
                }
                Decoded::Invalid(errors) => {
                    let key = ObjectKey::new(self.kind, id.0.clone(), id.1.clone());
                    if self.known.contains(&key) {
                        known.insert(key);
                    }
                    problems.insert(id, errors);
                }
            }
        }
        batch.extend(
            self.known
                .difference(&known)
                .map(|k| Change::Delete(k.clone())),
        );
        self.known = known;
        self.problems = problems;
        let applied = self.store.apply(batch);
        tracing::debug!(kind = %self.kind, objects = self.known.len(), applied, "listed");
        self.publish_problems();
    }

    fn set_object_problems(&mut self, id: (String, String), problems: Vec<ConfigError>) {
        if problems.is_empty() {
            self.problems.remove(&id);
        } else {
            self.problems.insert(id, problems);
        }
    }

    fn publish_problems(&self) {
        let all: Vec<ConfigError> = self.problems.values().flatten().cloned().collect();
        self.store.set_problems(&self.origin, all);
    }

    /// Decodes and validates one object exactly as the file source does a document.
    fn decode(&self, obj: DynamicObject) -> Decoded {
        let id = object_id(&obj);
        let mut value = serde_json::to_value(&obj).unwrap_or_default();
        if let Some(map) = value.as_object_mut() {
            // List items come without apiVersion/kind; the watched resource says what they are.
            map.insert("apiVersion".into(), self.ar.api_version.clone().into());
            map.insert("kind".into(), self.ar.kind.clone().into());
            // Bulky and never read.
            if let Some(meta) = map.get_mut("metadata").and_then(|m| m.as_object_mut()) {
                meta.remove("managedFields");
            }
        }
        let origin = format!("{} {}/{}", self.kind, id.0, id.1);
        let checked = check_document(decode_value(&origin, value, DEFAULT_NAMESPACE), false);
        let valid = checked.is_valid();
        for p in &checked.problems {
            tracing::warn!(kind = %self.kind, "{p}");
        }
        match checked.object {
            Some(object) if valid => Decoded::Valid(object, checked.problems),
            _ => Decoded::Invalid(checked.problems),
        }
    }
}

fn object_id(obj: &DynamicObject) -> (String, String) {
    (
        obj.metadata.namespace.clone().unwrap_or_default(),
        obj.metadata.name.clone().unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::source::kube::resource::api_resource;

    fn vs(name: &str, host: &str) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "resourceVersion": "1",
                         "managedFields": [{"manager": "kubectl"}]},
            "spec": {"hosts": [host], "http": [{"route": [{"destination": {"host": host}}]}]}
        }))
        .unwrap()
    }

    fn sync(store: &Arc<Store>) -> KindSync {
        KindSync::new(
            store.clone(),
            Kind::VirtualService,
            api_resource(Kind::VirtualService, "v1"),
            "kube:VirtualService".into(),
        )
    }

    #[test]
    fn initial_list_is_applied_at_init_done_only() {
        let store = Arc::new(Store::new());
        let mut s = sync(&store);
        s.handle(Event::Init);
        s.handle(Event::InitApply(vs("a", "a.default.svc.cluster.local")));
        assert!(store.is_empty(), "half a list must not reach the store");
        assert!(!s.synced());
        s.handle(Event::InitDone);
        assert!(s.synced());
        assert_eq!(store.len(), 1);
        // A relist without `a` removes it; `b` arrives in the same batch.
        s.handle(Event::Init);
        s.handle(Event::InitApply(vs("b", "b.default.svc.cluster.local")));
        s.handle(Event::InitDone);
        let names: Vec<_> = store
            .objects()
            .iter()
            .map(|o| o.meta().name.clone().unwrap())
            .collect();
        assert_eq!(names, ["b"]);
    }

    #[test]
    fn bad_update_keeps_last_good_and_reports() {
        let store = Arc::new(Store::new());
        let mut s = sync(&store);
        s.handle(Event::Apply(vs("a", "a.default.svc.cluster.local")));
        s.handle(Event::Apply(vs("a", "")));
        assert_eq!(store.len(), 1);
        let problems = store.problems();
        assert!(
            problems
                .iter()
                .any(|p| p.to_string().starts_with("VirtualService default/a: ")),
            "{problems:?}"
        );
        s.handle(Event::Delete(vs("a", "")));
        assert!(store.is_empty());
        assert!(store.problems().is_empty());
    }
}
