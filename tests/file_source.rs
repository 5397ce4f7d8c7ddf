//! The file source against a real directory and the OS watcher: add, modify, delete, a bad edit (last good kept),
//! a file moved in; each must reach the store within 1 s.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rudder::config::source::file::FileSource;
use rudder::config::store::Store;
use rudder::config::{Kind, Object, ObjectKey};

const DEADLINE: Duration = Duration::from_secs(1);

fn write(dir: &Path, name: &str, text: &str) {
    // Write then rename, like editors and `kubectl cp` do, so the watcher never sees a half-written file.
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

fn service(name: &str, port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: shop\nspec:\n  ports:\n  - name: http\n    port: {port}\n"
    )
}

fn key(name: &str) -> ObjectKey {
    ObjectKey::new(Kind::Service, "shop", name)
}

fn port_of(store: &Store, name: &str) -> Option<i32> {
    match store.get(&key(name))? {
        Object::Service(s) => s.spec.as_ref()?.ports.as_ref()?.first().map(|p| p.port),
        _ => None,
    }
}

/// Awaits `cond` on every store change, failing with `what` after the deadline.
async fn eventually(store: &Store, what: &str, cond: impl Fn(&Store) -> bool) {
    let mut rx = store.subscribe();
    let wait = async {
        loop {
            if cond(store) {
                return;
            }
            rx.changed().await.unwrap();
        }
    };
    if tokio::time::timeout(DEADLINE, wait).await.is_err() {
        panic!(
            "not within {DEADLINE:?}: {what}; store has {:?}, problems {:?}",
            store.objects().iter().map(|o| o.key()).collect::<Vec<_>>(),
            store.problems()
        );
    }
}

async fn start(dir: &Path) -> Arc<Store> {
    let store = Arc::new(Store::new());
    let mut source = FileSource::new(dir, store.clone());
    source.load_all().unwrap();
    tokio::spawn(source.watch(Duration::from_millis(20)));
    // The watcher registers synchronously inside `watch`; give the task a moment to start it.
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    store
}

#[tokio::test]
async fn add_modify_delete_bad_edit_and_move_in() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", &service("a", 80));
    let store = start(dir.path()).await;
    assert_eq!(port_of(&store, "a"), Some(80), "initial load");

    write(dir.path(), "b.yaml", &service("b", 81));
    eventually(&store, "added file b.yaml loads", |s| {
        port_of(s, "b") == Some(81)
    })
    .await;

    write(dir.path(), "b.yaml", &service("b", 82));
    eventually(&store, "modified b.yaml updates", |s| {
        port_of(s, "b") == Some(82)
    })
    .await;

    // A bad edit: the port becomes invalid. The last good version stays and the error is visible.
    write(dir.path(), "b.yaml", &service("b", 0));
    eventually(&store, "bad edit reported", |s| {
        s.problems().iter().any(|p| {
            p.to_string()
                == "Service shop/b: spec.ports[0].port: port number 0 must be in the range 1..65535"
        })
    })
    .await;
    assert_eq!(port_of(&store, "b"), Some(82), "last good version kept");

    // Broken YAML: nothing can be identified, so nothing the file defined is deleted.
    write(
        dir.path(),
        "b.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: [\n",
    );
    eventually(&store, "syntax error reported", |s| {
        s.problems()
            .iter()
            .any(|p| p.message.starts_with("invalid YAML"))
    })
    .await;
    assert_eq!(
        port_of(&store, "b"),
        Some(82),
        "last good version kept after a syntax error"
    );

    // Fixing it clears the error.
    write(dir.path(), "b.yaml", &service("b", 83));
    eventually(&store, "fix clears the error", |s| {
        port_of(s, "b") == Some(83) && s.problems().is_empty()
    })
    .await;

    std::fs::remove_file(dir.path().join("b.yaml")).unwrap();
    eventually(&store, "deleted file removes its objects", |s| {
        s.get(&key("b")).is_none()
    })
    .await;
    assert_eq!(port_of(&store, "a"), Some(80), "other files untouched");

    // A file moved in from outside the watched tree, and a directory moved in.
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("c.yaml"), service("c", 90)).unwrap();
    std::fs::rename(outside.path().join("c.yaml"), dir.path().join("c.yaml")).unwrap();
    eventually(&store, "moved-in file loads", |s| {
        port_of(s, "c") == Some(90)
    })
    .await;

    let sub = outside.path().join("more");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(sub.join("d.yml"), service("d", 91)).unwrap();
    std::fs::rename(&sub, dir.path().join("more")).unwrap();
    eventually(&store, "moved-in directory loads", |s| {
        port_of(s, "d") == Some(91)
    })
    .await;

    std::fs::remove_dir_all(dir.path().join("more")).unwrap();
    eventually(&store, "removed directory unloads", |s| {
        s.get(&key("d")).is_none()
    })
    .await;
}

#[tokio::test]
async fn one_bad_document_does_not_block_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: bad, namespace: shop}}\nspec:\n  ports:\n  - port: 70000\n---\n{}",
        service("x", 80),
        service("y", 81)
    );
    write(dir.path(), "all.yaml", &text);
    let store = Arc::new(Store::new());
    let mut source = FileSource::new(dir.path(), store.clone());
    let summary = source.load_all().unwrap();
    assert_eq!((summary.objects, summary.errors), (2, 1));
    assert_eq!(port_of(&store, "x"), Some(80));
    assert_eq!(port_of(&store, "y"), Some(81));
    assert!(store.get(&key("bad")).is_none());
    let problems: Vec<String> = store.problems().iter().map(|p| p.to_string()).collect();
    assert_eq!(
        problems,
        ["Service shop/bad: spec.ports[0].port: port number 70000 must be in the range 1..65535"]
    );
}
