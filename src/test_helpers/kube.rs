//! An in-process fake Kubernetes API server for tests: an axum router handed to `kube::Client::new`.
//!
//! It speaks the API server's JSON for what rudder does: lists with a `resourceVersion`; watches that replay
//! history after a version and then stream, `BOOKMARK`s when `allowWatchBookmarks=true`, and a `410 Gone` ERROR
//! event for a version older than the compaction point (kube-rs then relists); GET of one object; POST (create,
//! `409 AlreadyExists` when taken); PUT (replace); PATCH (JSON merge patch and JSON patch with `add`, `replace`,
//! `remove` and `test`). Only collections listed as served answer; everything else is `404 NotFound`, as for a
//! CRD that is not installed. Tests change objects through [`Fake`] and read back what rudder wrote.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

/// `(group, version, plural)`.
pub type Coll = (String, String, String);

/// The fake's data.
#[derive(Default)]
pub struct Db {
    /// Collections that exist.
    pub served: BTreeSet<Coll>,
    /// Collections that exist but this client may not read (403 Forbidden, as with missing RBAC).
    pub forbidden: BTreeSet<Coll>,
    /// Objects by collection, namespace, name.
    pub objects: BTreeMap<(Coll, String, String), Value>,
    /// The global resource version, bumped on every write.
    pub rv: u64,
    /// `(rv, collection, event type, object)`.
    pub history: Vec<(u64, Coll, &'static str, Value)>,
    /// Watches from a version older than this get 410 Gone.
    pub compacted: u64,
    /// Every request's path and query, in order.
    pub requests: Vec<String>,
    /// Every write as `METHOD path`, in order.
    pub writes: Vec<String>,
    /// Objects that appear just before the next create of the same object (another writer won a race).
    pub create_races: Vec<(Coll, Value)>,
    /// Non-resource paths (`/openid/v1/jwks`, `/.well-known/openid-configuration`) answered with a fixed
    /// status and JSON body.
    pub raw: BTreeMap<String, (u16, Value)>,
}

/// A fake API server; clones share the data.
#[derive(Clone)]
pub struct Fake {
    /// The data, for tests that change it directly.
    pub db: Arc<Mutex<Db>>,
    /// Bumped on every write: open watches look at the history again.
    pub written: Arc<watch::Sender<u64>>,
    /// Bumped to end every open watch (as an API server restart or timeout would).
    pub disconnect: Arc<watch::Sender<u64>>,
    /// Bumped on every request (reads included).
    pub requested: Arc<watch::Sender<u64>>,
}

/// A collection key.
pub fn coll(group: &str, version: &str, plural: &str) -> Coll {
    (group.into(), version.into(), plural.into())
}

/// A core (`v1`) collection.
pub fn core(plural: &str) -> Coll {
    coll("", "v1", plural)
}

/// An `admissionregistration.k8s.io/v1` collection.
pub fn admission(plural: &str) -> Coll {
    coll("admissionregistration.k8s.io", "v1", plural)
}

impl Fake {
    /// A fake serving `served`, empty.
    pub fn new(served: &[Coll]) -> Fake {
        let db = Db {
            served: served.iter().cloned().collect(),
            rv: 100,
            ..Db::default()
        };
        Fake {
            db: Arc::new(Mutex::new(db)),
            written: Arc::new(watch::channel(0).0),
            disconnect: Arc::new(watch::channel(0).0),
            requested: Arc::new(watch::channel(0).0),
        }
    }

    /// A client talking to this fake.
    pub fn client(&self) -> kube::Client {
        let router = axum::Router::new()
            .fallback(handle)
            .with_state(self.clone());
        kube::Client::new(router, "default")
    }

    /// Creates or replaces an object, recording the event.
    pub fn put(&self, c: &Coll, obj: Value) {
        let mut db = self.db.lock();
        store(&mut db, c, obj);
        drop(db);
        self.written.send_modify(|g| *g += 1);
    }

    /// Deletes an object, recording the event.
    pub fn delete(&self, c: &Coll, ns: &str, name: &str) {
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

    /// One object, if it exists.
    pub fn get(&self, c: &Coll, ns: &str, name: &str) -> Option<Value> {
        self.db
            .lock()
            .objects
            .get(&(c.clone(), ns.into(), name.into()))
            .cloned()
    }

    /// Answers GET `path` (a non-resource URL) with `status` and `body` from now on.
    pub fn serve_raw(&self, path: &str, status: u16, body: Value) {
        self.db.lock().raw.insert(path.into(), (status, body));
    }

    /// Makes `obj` appear right before the next create of the same collection/namespace/name, as if another
    /// replica created it first (the create then fails with 409).
    pub fn race_next_create(&self, c: &Coll, obj: Value) {
        self.db.lock().create_races.push((c.clone(), obj));
    }

    /// Applies `change` while no watch can see it, forgets all history, and drops every open watch: the
    /// watchers' next watch is from a compacted version, gets 410 Gone, and must relist to see `change`.
    pub fn compact_and_disconnect(&self, change: impl FnOnce(&mut Db)) {
        let mut db = self.db.lock();
        let before = db.history.len();
        change(&mut db);
        db.history.truncate(before);
        db.rv += 1;
        db.compacted = db.rv;
        drop(db);
        self.disconnect.send_modify(|g| *g += 1);
    }

    /// Every request's path and query so far.
    pub fn requests(&self) -> Vec<String> {
        self.db.lock().requests.clone()
    }

    /// Every write (`METHOD path`) so far.
    pub fn writes(&self) -> Vec<String> {
        self.db.lock().writes.clone()
    }

    /// Awaits `cond` on the fake's data, re-checking after every write; `false` after `timeout`.
    pub async fn wait_for(
        &self,
        timeout: std::time::Duration,
        cond: impl Fn(&Fake) -> bool,
    ) -> bool {
        self.wait_on(&self.written, timeout, cond).await
    }

    /// Awaits `cond`, re-checking after every request (reads included); `false` after `timeout`.
    pub async fn wait_requests(
        &self,
        timeout: std::time::Duration,
        cond: impl Fn(&Fake) -> bool,
    ) -> bool {
        self.wait_on(&self.requested, timeout, cond).await
    }

    async fn wait_on(
        &self,
        bumps: &watch::Sender<u64>,
        timeout: std::time::Duration,
        cond: impl Fn(&Fake) -> bool,
    ) -> bool {
        let mut rx = bumps.subscribe();
        tokio::time::timeout(timeout, async {
            loop {
                rx.borrow_and_update();
                if cond(self) {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await
        .is_ok()
            && cond(self)
    }
}

/// Stores `obj` with a new resource version and records the event.
fn store(db: &mut Db, c: &Coll, mut obj: Value) -> Value {
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
    db.history.push((rv, c.clone(), ty, obj.clone()));
    obj
}

fn ids(obj: &Value) -> (String, String) {
    let m = &obj["metadata"];
    (
        m["namespace"].as_str().unwrap_or_default().to_string(),
        m["name"].as_str().unwrap_or_default().to_string(),
    )
}

/// A `Status` failure body.
pub fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn fail(code: u16, reason: &str, message: &str) -> Response {
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        axum::Json(status(code, reason, message)),
    )
        .into_response()
}

/// What a path names.
struct Target {
    coll: Coll,
    namespace: Option<String>,
    name: Option<String>,
}

/// Parses `/api/v1[/namespaces/NS]/PLURAL[/NAME]` and `/apis/G/V[/namespaces/NS]/PLURAL[/NAME]`.
fn route(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let t = |plural: &str, ns: Option<&str>, name: Option<&str>| Target {
        coll: coll(group, version, plural),
        namespace: ns.map(str::to_string),
        name: name.map(str::to_string),
    };
    match rest {
        [plural] => Some(t(plural, None, None)),
        ["namespaces", ns, plural] => Some(t(plural, Some(ns), None)),
        ["namespaces", ns, plural, name] => Some(t(plural, Some(ns), Some(name))),
        [plural, name] => Some(t(plural, None, Some(name))),
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
    let method = req.method().clone();
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let query: BTreeMap<String, String> = uri.query().map(url_pairs).unwrap_or_default();
    fake.db.lock().requests.push(uri.to_string());
    fake.requested.send_modify(|g| *g += 1);
    let raw = fake.db.lock().raw.get(uri.path()).cloned();
    if let (Some((code, body)), &Method::GET) = (raw, &method) {
        let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return (code, axum::Json(body)).into_response();
    }
    let Some(target) = route(uri.path()) else {
        return fail(404, "NotFound", "no route");
    };
    if !fake.db.lock().served.contains(&target.coll) {
        return fail(
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
    }
    if fake.db.lock().forbidden.contains(&target.coll) {
        return fail(403, "Forbidden", "forbidden by the fake's RBAC");
    }
    if method != Method::GET {
        let body = match axum::body::to_bytes(req.into_body(), 1 << 20).await {
            Ok(b) => b,
            Err(e) => return fail(400, "BadRequest", &e.to_string()),
        };
        fake.db
            .lock()
            .writes
            .push(format!("{method} {}", uri.path()));
        let resp = write(&fake, &method, &content_type, target, &body);
        fake.written.send_modify(|g| *g += 1);
        return resp;
    }
    let fields = query.get("fieldSelector").cloned();
    if let Some(name) = &target.name {
        let key = (
            target.coll.clone(),
            target.namespace.clone().unwrap_or_default(),
            name.clone(),
        );
        return match fake.db.lock().objects.get(&key) {
            Some(o) => axum::Json(o.clone()).into_response(),
            None => fail(
                404,
                "NotFound",
                &format!("{} \"{name}\" not found", key.0.2),
            ),
        };
    }
    if query.get("watch").map(String::as_str) == Some("true") {
        let from: u64 = query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let bookmarks = query.get("allowWatchBookmarks").map(String::as_str) == Some("true");
        return watch_response(fake, target.coll, target.namespace, fields, from, bookmarks);
    }
    let c = target.coll;
    let ns = target.namespace;
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

/// POST, PUT and PATCH.
fn write(fake: &Fake, method: &Method, content_type: &str, t: Target, body: &[u8]) -> Response {
    let body: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return fail(400, "BadRequest", &e.to_string()),
    };
    let ns = t.namespace.clone().unwrap_or_default();
    let mut db = fake.db.lock();
    match (method, &t.name) {
        (&Method::POST, None) => {
            let mut obj = body;
            if t.namespace.is_some() {
                obj["metadata"]["namespace"] = json!(ns);
            }
            let name = obj["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let key = (t.coll.clone(), ns.clone(), name.clone());
            if let Some(i) = db
                .create_races
                .iter()
                .position(|(c, o)| *c == t.coll && ids(o) == (ns.clone(), name.clone()))
            {
                let (c, o) = db.create_races.remove(i);
                store(&mut db, &c, o);
            }
            if db.objects.contains_key(&key) {
                return fail(
                    409,
                    "AlreadyExists",
                    &format!("{} \"{name}\" already exists", t.coll.2),
                );
            }
            (
                StatusCode::CREATED,
                axum::Json(store(&mut db, &t.coll, obj)),
            )
                .into_response()
        }
        (&Method::PUT, Some(name)) => {
            let key = (t.coll.clone(), ns.clone(), name.clone());
            let Some(current) = db.objects.get(&key) else {
                return fail(404, "NotFound", &format!("\"{name}\" not found"));
            };
            let sent_rv = body["metadata"]["resourceVersion"].as_str();
            if sent_rv.is_some_and(|rv| Some(rv) != current["metadata"]["resourceVersion"].as_str())
            {
                return fail(409, "Conflict", "the object has been modified");
            }
            axum::Json(store(&mut db, &t.coll, body)).into_response()
        }
        (&Method::PATCH, Some(name)) => {
            let key = (t.coll.clone(), ns.clone(), name.clone());
            let Some(mut obj) = db.objects.get(&key).cloned() else {
                return fail(404, "NotFound", &format!("\"{name}\" not found"));
            };
            if content_type.starts_with("application/json-patch+json") {
                if let Err(e) = json_patch(&mut obj, &body) {
                    return fail(422, "Invalid", &e);
                }
            } else {
                merge_patch(&mut obj, &body);
            }
            axum::Json(store(&mut db, &t.coll, obj)).into_response()
        }
        _ => fail(405, "MethodNotAllowed", "not supported by the fake"),
    }
}

/// RFC 7386.
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// The subset of RFC 6902 rudder sends.
fn json_patch(target: &mut Value, ops: &Value) -> Result<(), String> {
    let mut out = target.clone();
    for op in ops.as_array().ok_or("patch is not an array")? {
        let path = op["path"].as_str().ok_or("no path")?;
        let (parent, last) = path.rsplit_once('/').ok_or("bad path")?;
        let last = last.replace("~1", "/").replace("~0", "~");
        match op["op"].as_str() {
            Some("test") => {
                if out.pointer(path) != Some(&op["value"]) {
                    return Err(format!("test failed at {path}"));
                }
            }
            Some("add") | Some("replace") => {
                let p = out
                    .pointer_mut(parent)
                    .ok_or(format!("no parent {parent}"))?;
                match p {
                    Value::Object(m) => {
                        m.insert(last, op["value"].clone());
                    }
                    Value::Array(a) => {
                        let i: usize = last.parse().map_err(|_| "bad index")?;
                        if i >= a.len() {
                            return Err(format!("index out of range at {path}"));
                        }
                        a[i] = op["value"].clone();
                    }
                    _ => return Err(format!("not a container at {parent}")),
                }
            }
            Some("remove") => {
                if let Some(Value::Object(m)) = out.pointer_mut(parent) {
                    m.remove(&last);
                }
            }
            other => return Err(format!("unsupported op {other:?}")),
        }
    }
    *target = out;
    Ok(())
}

/// A minimal `application/x-www-form-urlencoded` decoder (the selectors contain `=` and `%`).
fn url_pairs(q: &str) -> BTreeMap<String, String> {
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
    // Small: a watcher reads as fast as we write; the sender waits otherwise.
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
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patches() {
        let mut o = json!({"a": {"b": 1, "c": [1, 2]}, "w": [{"n": "x", "cc": {}}]});
        merge_patch(&mut o, &json!({"a": {"b": null, "d": 2}}));
        assert_eq!(o["a"], json!({"c": [1, 2], "d": 2}));
        json_patch(
            &mut o,
            &json!([{"op": "test", "path": "/w/0/n", "value": "x"},
                    {"op": "add", "path": "/w/0/cc/caBundle", "value": "Zg=="}]),
        )
        .unwrap();
        assert_eq!(o["w"][0]["cc"]["caBundle"], "Zg==");
        assert!(
            json_patch(
                &mut o,
                &json!([{"op": "test", "path": "/w/0/n", "value": "y"}])
            )
            .is_err()
        );
    }
}
