//! The Kubernetes source against an in-process fake API server.
//!
//! The fake (`rudder::test_helpers::kube`) is an axum router handed to `kube::Client::new` as its service. It speaks the API server's list and
//! watch JSON: collections with a `resourceVersion`, watches that replay history after a version and then stream,
//! `BOOKMARK` events when `allowWatchBookmarks=true`, and a `410 Gone` ERROR event for a version older than the
//! compaction point, which makes kube-rs relist. Tests change the fake's objects and await the store.

use std::sync::Arc;
use std::time::Duration;

use rudder::config::source::kube::{KubeSource, Options, Running, wait_settled};
use rudder::config::store::Store;
use rudder::config::{Kind, ObjectKey};
use rudder::test_helpers::kube::{Fake, coll, core};
use serde_json::{Value, json};

// ---- fixtures ----

fn net(version: &str, plural: &str) -> rudder::test_helpers::kube::Coll {
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

#[tokio::test]
async fn readiness_waits_for_every_initial_list_and_names_what_is_missing() {
    let fake = standard_fake();
    fake.put(
        &net("v1", "virtualservices"),
        vs("a", "a.default.svc.cluster.local"),
    );
    let store = Arc::new(Store::new());
    let running = start(&fake, &store);
    // Unserved CRDs (AuthorizationPolicy, ...) count as settled: nothing to wait for.
    let missing = wait_settled(&running, Duration::from_secs(10)).await;
    assert!(missing.is_empty(), "{missing:?}");
    assert!(has(&store, Kind::VirtualService, "default", "a"));
    assert!(
        running
            .settled
            .borrow()
            .contains(&Kind::AuthorizationPolicy)
    );
    assert!(!running.synced.borrow().contains(&Kind::AuthorizationPolicy));

    // A kind that cannot be listed never settles: the bound ends the wait and names it.
    let fake = standard_fake();
    fake.db
        .lock()
        .forbidden
        .insert(net("v1", "destinationrules"));
    let store = Arc::new(Store::new());
    let running = start(&fake, &store);
    let started = tokio::time::Instant::now();
    let missing = wait_settled(&running, Duration::from_millis(1500)).await;
    assert_eq!(missing, [Kind::DestinationRule]);
    assert!(started.elapsed() >= Duration::from_millis(1500));
    // Everything else was there by then.
    assert!(running.settled.borrow().contains(&Kind::Pod));
}
