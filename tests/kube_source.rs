//! The Kubernetes source against an in-process fake API server.
//!
//! The fake is an axum router handed to `kube::Client::new` as its service. It speaks the API server's list and
//! watch JSON: collections with a `resourceVersion`, watches that replay history after a version and then stream,
//! `BOOKMARK` events when `allowWatchBookmarks=true`, and a `410 Gone` ERROR event for a version older than the
//! compaction point, which makes kube-rs relist. Tests change the fake's objects and await the store.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use rudder::config::source::kube::{KubeSource, Options, Running};
use rudder::config::store::Store;
use rudder::config::{Kind, ObjectKey};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

/// `(group, version, plural)`.
type Coll = (String, String, String);

#[derive(Default)]
struct Db {
    served: BTreeSet<Coll>,
    /// Objects by collection, namespace, name.
    objects: BTreeMap<(Coll, String, String), Value>,
    rv: u64,
    /// `(rv, collection, event type, object)`.
    history: Vec<(u64, Coll, &'static str, Value)>,
    /// Watches from a version older than this get 410 Gone.
    compacted: u64,
    /// Every request's path and query, in order.
    requests: Vec<String>,
}

#[derive(Clone)]
struct Fake {
    db: Arc<Mutex<Db>>,
    /// Bumped on every write: open watches look at the history again.
    written: Arc<watch::Sender<u64>>,
    /// Bumped to end every open watch (as an API server restart or timeout would).
    disconnect: Arc<watch::Sender<u64>>,
}

fn coll(group: &str, version: &str, plural: &str) -> Coll {
    (group.into(), version.into(), plural.into())
}

impl Fake {
    fn new(served: &[Coll]) -> Fake {
        let db = Db {
            served: served.iter().cloned().collect(),
            rv: 100,
            ..Db::default()
        };
        Fake {
            db: Arc::new(Mutex::new(db)),
            written: Arc::new(watch::channel(0).0),
            disconnect: Arc::new(watch::channel(0).0),
        }
    }

    fn client(&self) -> kube::Client {
        let router = axum::Router::new()
            .fallback(handle)
            .with_state(self.clone());
        kube::Client::new(router, "default")
    }

    /// Creates or replaces an object, recording the event.
    fn put(&self, c: &Coll, mut obj: Value) {
        let mut db = self.db.lock();
        db.rv += 1;
        let rv = db.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let id = ids(&obj);
        let key = (c.clone(), id.0, id.1);
        let ty = if db.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        db.objects.insert(key, obj.clone());
        db.history.push((rv, c.clone(), ty, obj));
        drop(db);
        self.written.send_modify(|g| *g += 1);
    }

    fn delete(&self, c: &Coll, ns: &str, name: &str) {
        let mut db = self.db.lock();
        let Some(mut obj) = db.objects.remove(&(c.clone(), ns.into(), name.into())) else {
            return;
        };
        db.rv += 1;
        let rv = db.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        db.history.push((rv, c.clone(), "DELETED", obj));
        drop(db);
        self.written.send_modify(|g| *g += 1);
    }

    /// Applies `change` while no watch can see it, forgets all history, and drops every open watch: the
    /// watchers' next watch is from a compacted version, gets 410 Gone, and must relist to see `change`.
    fn compact_and_disconnect(&self, change: impl FnOnce(&mut Db)) {
        let mut db = self.db.lock();
        let before = db.history.len();
        change(&mut db);
        db.history.truncate(before);
        db.rv += 1;
        db.compacted = db.rv;
        drop(db);
        self.disconnect.send_modify(|g| *g += 1);
    }

    fn requests(&self) -> Vec<String> {
        self.db.lock().requests.clone()
    }
}

fn ids(obj: &Value) -> (String, String) {
    let m = &obj["metadata"];
    (
        m["namespace"].as_str().unwrap_or_default().to_string(),
        m["name"].as_str().unwrap_or_default().to_string(),
    )
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

/// Parses `/api/v1[/namespaces/NS]/PLURAL` and `/apis/G/V[/namespaces/NS]/PLURAL`.
fn route(path: &str) -> Option<(Coll, Option<String>)> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    match rest {
        [plural] => Some((coll(group, version, plural), None)),
        ["namespaces", ns, plural] => Some((coll(group, version, plural), Some(ns.to_string()))),
        _ => None,
    }
}

fn matches(obj: &Value, ns: &Option<String>, fields: &Option<String>) -> bool {
    let (ons, name) = ids(obj);
    if ns.as_ref().is_some_and(|n| *n != ons) {
        return false;
    }
    match fields
        .as_deref()
        .and_then(|f| f.strip_prefix("metadata.name="))
    {
        Some(want) => want == name,
        None => true,
    }
}

async fn handle(State(fake): State<Fake>, req: Request) -> Response {
    let uri = req.uri().clone();
    let query: BTreeMap<String, String> = uri
        .query()
        .map(|q| {
            url_pairs(q)
                .into_iter()
                .collect::<BTreeMap<String, String>>()
        })
        .unwrap_or_default();
    fake.db.lock().requests.push(uri.to_string());
    let Some((c, ns)) = route(uri.path()) else {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(status(404, "NotFound", "no route")),
        )
            .into_response();
    };
    if !fake.db.lock().served.contains(&c) {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            )),
        )
            .into_response();
    }
    let fields = query.get("fieldSelector").cloned();
    if query.get("watch").map(String::as_str) == Some("true") {
        let from: u64 = query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let bookmarks = query.get("allowWatchBookmarks").map(String::as_str) == Some("true");
        return watch_response(fake, c, ns, fields, from, bookmarks);
    }
    let db = fake.db.lock();
    let items: Vec<Value> = db
        .objects
        .iter()
        .filter(|((oc, _, _), o)| *oc == c && matches(o, &ns, &fields))
        .map(|(_, o)| {
            // A real list's items carry no apiVersion/kind.
            let mut o = o.clone();
            if let Some(m) = o.as_object_mut() {
                m.remove("apiVersion");
                m.remove("kind");
            }
            o
        })
        .collect();
    let api_version = if c.0.is_empty() {
        c.1.clone()
    } else {
        format!("{}/{}", c.0, c.1)
    };
    axum::Json(json!({
        "apiVersion": api_version, "kind": "List",
        "metadata": {"resourceVersion": db.rv.to_string()},
        "items": items,
    }))
    .into_response()
}

/// A minimal `application/x-www-form-urlencoded` decoder (the selectors contain `=` and `%`).
fn url_pairs(q: &str) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'%' if i + 2 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                    out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                    i += 3;
                }
                b'+' => {
                    out.push(b' ');
                    i += 1;
                }
                b => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

fn watch_response(
    fake: Fake,
    c: Coll,
    ns: Option<String>,
    fields: Option<String>,
    from: u64,
    bookmarks: bool,
) -> Response {
    let (tx, rx) = mpsc::channel::<Result<bytes::Bytes, std::convert::Infallible>>(64);
    let line = |v: Value| Ok(bytes::Bytes::from(format!("{v}\n")));
    tokio::spawn(async move {
        let mut written = fake.written.subscribe();
        let mut disconnect = fake.disconnect.subscribe();
        disconnect.borrow_and_update();
        if from < fake.db.lock().compacted {
            let _ = tx
                .send(line(json!({"type": "ERROR",
                    "object": status(410, "Expired", "too old resource version")})))
                .await;
            return;
        }
        let mut sent = from;
        loop {
            written.borrow_and_update();
            let (events, rv) = {
                let db = fake.db.lock();
                let events: Vec<Value> = db
                    .history
                    .iter()
                    .filter(|(rv, hc, _, o)| *rv > sent && *hc == c && matches(o, &ns, &fields))
                    .map(|(_, _, ty, o)| json!({"type": ty, "object": o}))
                    .collect();
                (events, db.rv)
            };
            for e in events {
                if tx.send(line(e)).await.is_err() {
                    return;
                }
            }
            sent = rv;
            if bookmarks {
                let bm = json!({"type": "BOOKMARK", "object": {
                    "apiVersion": "v1", "kind": "Bookmark",
                    "metadata": {"resourceVersion": rv.to_string()}}});
                if tx.send(line(bm)).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                r = written.changed() => if r.is_err() { return },
                _ = disconnect.changed() => return,
                _ = tx.closed() => return,
            }
        }
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .unwrap()
}

// ---- fixtures ----

fn core(plural: &str) -> Coll {
    coll("", "v1", plural)
}

fn net(version: &str, plural: &str) -> Coll {
    coll("networking.istio.io", version, plural)
}

fn vs(name: &str, host: &str) -> Value {
    json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
           "metadata": {"name": name, "namespace": "default"},
           "spec": {"hosts": [host], "http": [{"route": [{"destination": {"host": host}}]}]}})
}

fn standard_fake() -> Fake {
    Fake::new(&[
        core("namespaces"),
        core("services"),
        core("pods"),
        core("secrets"),
        core("configmaps"),
        coll("discovery.k8s.io", "v1", "endpointslices"),
        net("v1", "virtualservices"),
        net("v1", "destinationrules"),
        net("v1", "gateways"),
    ])
}

fn start(fake: &Fake, store: &Arc<Store>) -> Running {
    KubeSource::new(
        fake.client(),
        store.clone(),
        Options {
            root_namespace: "istio-system".into(),
            missing_retry: Duration::from_millis(200),
        },
    )
    .spawn()
}

/// Awaits `cond` on the store, failing with `what` and the store's contents after 10 s.
async fn until(store: &Store, what: &str, cond: impl Fn(&Store) -> bool) {
    let mut rx = store.subscribe();
    let ok = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if cond(store) {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    if ok.is_err() || !cond(store) {
        let keys: Vec<String> = store
            .objects()
            .iter()
            .map(|o| o.key().to_string())
            .collect();
        panic!(
            "timed out waiting for {what}; store: {keys:?}; problems: {:?}",
            store
                .problems()
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
        );
    }
}

fn has(store: &Store, kind: Kind, ns: &str, name: &str) -> bool {
    store.get(&ObjectKey::new(kind, ns, name)).is_some()
}

// ---- tests ----

#[tokio::test]
async fn objects_flow_updates_and_deletes_reach_the_store() {
    let fake = standard_fake();
    fake.put(
        &core("namespaces"),
        json!({"metadata": {"name": "default", "labels": {"istio-injection": "enabled"}}}),
    );
    fake.put(
        &core("services"),
        json!({"metadata": {"name": "fruits", "namespace": "default"},
               "spec": {"clusterIP": "10.0.0.10", "ports": [{"name": "http", "port": 80}]}}),
    );
    fake.put(
        &core("pods"),
        json!({"metadata": {"name": "fruits-1", "namespace": "default", "labels": {"app": "fruits"},
                            "managedFields": [{"manager": "kubelet"}]},
               "spec": {"containers": [{"name": "app", "image": "fruits"}]},
               "status": {"podIP": "10.1.0.5"}}),
    );
    fake.put(
        &core("configmaps"),
        json!({"metadata": {"name": "istio", "namespace": "istio-system"},
               "data": {"mesh": "rootNamespace: istio-system\n"}}),
    );
    // Not the mesh config: filtered out by the field selector.
    fake.put(
        &core("configmaps"),
        json!({"metadata": {"name": "other", "namespace": "istio-system"}, "data": {}}),
    );
    fake.put(
        &net("v1", "virtualservices"),
        vs("good", "fruits.default.svc.cluster.local"),
    );
    fake.put(&net("v1", "virtualservices"), vs("bad", ""));

    let store = Arc::new(Store::new());
    let running = start(&fake, &store);
    until(&store, "initial objects", |s| {
        has(s, Kind::VirtualService, "default", "good")
            && has(s, Kind::Pod, "default", "fruits-1")
            && has(s, Kind::Service, "default", "fruits")
            && has(s, Kind::Namespace, "", "default")
            && has(s, Kind::ConfigMap, "istio-system", "istio")
    })
    .await;
    assert!(!has(&store, Kind::VirtualService, "default", "bad"));
    assert!(!has(&store, Kind::ConfigMap, "istio-system", "other"));
    let problems: Vec<String> = store.problems().iter().map(|p| p.to_string()).collect();
    assert!(
        problems.contains(
            &"VirtualService default/bad: spec.http[0].route[0].destination.host: required"
                .to_string()
        ),
        "{problems:?}"
    );
    // Unused metadata is dropped before the object is stored.
    let pod = store
        .get(&ObjectKey::new(Kind::Pod, "default", "fruits-1"))
        .unwrap();
    assert!(pod.meta().managed_fields.is_none());

    // A watch event adds an object; fixing the bad one clears its problem; a delete removes.
    fake.put(
        &net("v1", "destinationrules"),
        json!({
        "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": "fruits", "namespace": "default"},
        "spec": {"host": "fruits", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}}),
    );
    fake.put(&net("v1", "virtualservices"), vs("bad", "fruits"));
    fake.delete(&core("pods"), "default", "fruits-1");
    until(&store, "watch events", |s| {
        has(s, Kind::DestinationRule, "default", "fruits")
            && has(s, Kind::VirtualService, "default", "bad")
            && !has(s, Kind::Pod, "default", "fruits-1")
            && s.problems().is_empty()
    })
    .await;

    // Every kind that is served finished its initial list; the missing CRDs did not stop the others.
    let synced = running.synced.borrow().clone();
    for kind in [
        Kind::Pod,
        Kind::VirtualService,
        Kind::EndpointSlice,
        Kind::ConfigMap,
    ] {
        assert!(synced.contains(&kind), "{kind} not synced: {synced:?}");
    }
    assert!(!synced.contains(&Kind::AuthorizationPolicy));
    let requests = fake.requests();
    assert!(
        requests.iter().any(|r| r.starts_with("/api/v1/pods?")
            && r.contains("watch=true")
            && r.contains("allowWatchBookmarks=true")),
        "{requests:?}"
    );
}

#[tokio::test]
async fn gone_forces_a_relist_that_removes_what_was_missed() {
    let fake = standard_fake();
    fake.put(
        &net("v1", "virtualservices"),
        vs("a", "a.default.svc.cluster.local"),
    );
    let store = Arc::new(Store::new());
    let _running = start(&fake, &store);
    until(&store, "a", |s| {
        has(s, Kind::VirtualService, "default", "a")
    })
    .await;
    let lists_before = fake
        .requests()
        .iter()
        .filter(|r| {
            r.starts_with("/apis/networking.istio.io/v1/virtualservices?")
                && !r.contains("watch=true")
        })
        .count();

    // While every watch is cut off, `a` goes away and `b` arrives; the history that would tell is compacted.
    fake.compact_and_disconnect(|db| {
        let c = net("v1", "virtualservices");
        db.objects
            .remove(&(c.clone(), "default".into(), "a".into()));
        db.rv += 1;
        let mut b = vs("b", "b.default.svc.cluster.local");
        b["metadata"]["resourceVersion"] = json!(db.rv.to_string());
        db.objects.insert((c, "default".into(), "b".into()), b);
    });
    until(&store, "relist after 410", |s| {
        has(s, Kind::VirtualService, "default", "b")
            && !has(s, Kind::VirtualService, "default", "a")
    })
    .await;
    let lists_after = fake
        .requests()
        .iter()
        .filter(|r| {
            r.starts_with("/apis/networking.istio.io/v1/virtualservices?")
                && !r.contains("watch=true")
        })
        .count();
    assert!(lists_after > lists_before, "no relist happened");
}

#[tokio::test]
async fn bookmarks_move_the_resume_point() {
    let fake = standard_fake();
    let store = Arc::new(Store::new());
    let running = start(&fake, &store);
    let mut synced = running.synced.clone();
    tokio::time::timeout(
        Duration::from_secs(10),
        synced.wait_for(|s| s.contains(&Kind::Gateway)),
    )
    .await
    .expect("gateways synced")
    .unwrap();
    // Writes to another collection move the global version; bookmarks tell the gateway watch about it.
    fake.put(
        &net("v1", "virtualservices"),
        vs("x", "x.default.svc.cluster.local"),
    );
    until(&store, "x", |s| {
        has(s, Kind::VirtualService, "default", "x")
    })
    .await;
    let rv = fake.db.lock().rv;
    fake.disconnect.send_modify(|g| *g += 1);
    let want = format!("resourceVersion={rv}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let found = fake.requests().iter().any(|r| {
            r.starts_with("/apis/networking.istio.io/v1/gateways?")
                && r.contains("watch=true")
                && r.contains(&want)
        });
        if found {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gateway watch did not resume from the bookmark {rv}: {:?}",
            fake.requests()
        );
        let mut w = fake.written.subscribe();
        let _ = tokio::time::timeout(Duration::from_millis(50), w.changed()).await;
    }
}

#[tokio::test]
async fn older_versions_and_endpoints_fallback_are_used_when_newer_are_not_served() {
    let fake = Fake::new(&[core("endpoints"), net("v1alpha3", "virtualservices")]);
    fake.put(
        &core("endpoints"),
        json!({"metadata": {"name": "fruits", "namespace": "default"},
        "subsets": [{"addresses": [{"ip": "10.1.0.5"}], "ports": [{"port": 8080}]}]}),
    );
    let mut old = vs("old", "fruits");
    old["apiVersion"] = json!("networking.istio.io/v1alpha3");
    fake.put(&net("v1alpha3", "virtualservices"), old);
    let store = Arc::new(Store::new());
    let _running = start(&fake, &store);
    until(&store, "v1alpha3 VirtualService and Endpoints", |s| {
        has(s, Kind::VirtualService, "default", "old")
            && has(s, Kind::Endpoints, "default", "fruits")
    })
    .await;
    assert!(
        !fake.requests().iter().any(
            |r| r.contains("/apis/networking.istio.io/v1/virtualservices")
                && r.contains("watch=true")
        ),
        "watched an unserved version"
    );
}
