//! Sidecar injection end to end: AdmissionReview v1 over HTTP in, JSON patch out, for the book's Deployments
//! (`chapter-3/fruits-api.yml`, `chapter-4-5/juice-shop-api.yml`); applying the patch gives the sidecar and the
//! init container; a second review of the injected pod patches nothing; opted-out, unlabelled-namespace and
//! hostNetwork pods are left alone. `rudder kube-inject` output parses as Kubernetes objects.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use rudder::config::Object;
use rudder::config::parse::yaml_value;
use rudder::config::store::{Change, Store};
use rudder::inject::webhook::{WebhookState, router};
use rudder::test_helpers::process::output_with_stdin;
use serde_json::{Value, json};

fn book(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/book/manifests")
        .join(path)
}

fn docs(text: &str) -> Vec<Value> {
    text.split("\n---")
        .map(|d| d.trim_start_matches("---"))
        .filter(|d| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .map(|d| yaml_value(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// The Pod a Deployment's ReplicaSet would create (what the API server sends the webhook).
fn pod_of(deployment: &Value) -> Value {
    let t = &deployment["spec"]["template"];
    let mut meta = t["metadata"].clone();
    meta["generateName"] = json!(format!(
        "{}-",
        deployment["metadata"]["name"].as_str().unwrap()
    ));
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": t["spec"]})
}

fn review(pod: &Value, namespace: &str) -> Value {
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "7d8e1c2a", "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": namespace, "operation": "CREATE", "object": pod}})
}

fn unbase64(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("bad base64 {c}"),
        }
    };
    let mut out = Vec::new();
    for chunk in s.as_bytes().chunks(4) {
        let pad = chunk.iter().filter(|c| **c == b'=').count();
        let n = chunk
            .iter()
            .filter(|c| **c != b'=')
            .enumerate()
            .fold(0u32, |n, (i, c)| n | (val(*c) << (18 - 6 * i)));
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    out
}

/// Applies an RFC 6902 patch of `add`/`replace`/`remove` operations.
fn apply_patch(doc: &mut Value, patch: &[Value]) {
    for op in patch {
        let path = op["path"].as_str().unwrap();
        let parts: Vec<String> = path
            .split('/')
            .skip(1)
            .map(|p| p.replace("~1", "/").replace("~0", "~"))
            .collect();
        let (last, parents) = parts.split_last().unwrap();
        let mut cur = &mut *doc;
        for p in parents {
            cur = match cur {
                Value::Array(a) => &mut a[p.parse::<usize>().unwrap()],
                v => &mut v[p.as_str()],
            };
        }
        match (op["op"].as_str().unwrap(), cur) {
            ("add", Value::Array(a)) if last == "-" => a.push(op["value"].clone()),
            ("add" | "replace", Value::Object(m)) => {
                m.insert(last.clone(), op["value"].clone());
            }
            ("remove", Value::Object(m)) => {
                m.remove(last);
            }
            (o, c) => panic!("unsupported {o} at {path} on {c}"),
        }
    }
}

struct Webhook {
    url: String,
    client: reqwest::Client,
}

impl Webhook {
    async fn start(store: Arc<Store>) -> Webhook {
        let state = Arc::new(WebhookState {
            store: Some(store),
            ..Default::default()
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router(state)).await });
        Webhook {
            url: format!("http://{addr}"),
            client: reqwest::Client::new(),
        }
    }

    async fn post(&self, path: &str, body: &Value) -> Value {
        let resp = self
            .client
            .post(format!("{}{path}", self.url))
            .json(body)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{}", resp.status());
        resp.json().await.unwrap()
    }
}

fn namespace(name: &str, labels: &[(&str, &str)]) -> Change {
    let mut ns = Namespace::default();
    ns.metadata.name = Some(name.into());
    ns.metadata.labels = Some(
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
    );
    Change::Upsert(Object::Namespace(Arc::new(ns)))
}

async fn inject_book_deployment(file: &str, app_container: &str) {
    let store = Arc::new(Store::new());
    store.apply([namespace(
        "micro-shake-factory",
        &[("istio-injection", "enabled")],
    )]);
    let hook = Webhook::start(store).await;
    let text = std::fs::read_to_string(book(file)).unwrap();
    let deployment = docs(&text)
        .into_iter()
        .find(|d| d["kind"] == "Deployment")
        .unwrap();
    let pod = pod_of(&deployment);

    let answer = hook
        .post("/inject", &review(&pod, "micro-shake-factory"))
        .await;
    let resp = &answer["response"];
    assert_eq!(answer["kind"], "AdmissionReview");
    assert_eq!(resp["uid"], "7d8e1c2a");
    assert_eq!(resp["allowed"], true);
    assert_eq!(resp["patchType"], "JSONPatch");
    let patch: Vec<Value> =
        serde_json::from_slice(&unbase64(resp["patch"].as_str().unwrap())).unwrap();
    let mut injected = pod.clone();
    apply_patch(&mut injected, &patch);
    let typed: Pod = serde_json::from_value(injected.clone()).unwrap();
    let spec = typed.spec.unwrap();
    let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, [app_container, "istio-proxy"]);
    let proxy = &spec.containers[1];
    assert_eq!(proxy.image.as_deref(), Some("envoyproxy/envoy:v1.40.0"));
    assert_eq!(
        proxy.security_context.as_ref().unwrap().run_as_user,
        Some(1337)
    );
    let probe = proxy
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(probe.path.as_deref(), Some("/healthz/ready"));
    let args = proxy.args.as_ref().unwrap();
    let boot: Value =
        serde_json::from_str(&args[args.iter().position(|a| a == "--config-yaml").unwrap() + 1])
            .unwrap();
    assert!(
        boot["node"]["id"]
            .as_str()
            .unwrap()
            .contains("$(POD_NAME).$(POD_NAMESPACE)")
    );
    let init = &spec.init_containers.as_ref().unwrap()[0];
    assert_eq!(init.name, "istio-init");
    let caps = init
        .security_context
        .as_ref()
        .unwrap()
        .capabilities
        .as_ref()
        .unwrap();
    assert_eq!(
        caps.add.as_deref(),
        Some(&["NET_ADMIN".to_string(), "NET_RAW".to_string()][..])
    );
    let token = spec
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find_map(|v| v.projected.as_ref())
        .and_then(|p| p.sources.as_ref())
        .and_then(|s| s[0].service_account_token.clone())
        .unwrap();
    assert_eq!(token.audience.as_deref(), Some("istio-ca"));
    let ann = typed.metadata.annotations.unwrap();
    assert_eq!(ann["prometheus.io/port"], "15090");
    assert!(ann.contains_key("sidecar.istio.io/status"));

    // The injected pod is reviewed again (a re-invocation): nothing to patch.
    let again = hook
        .post("/inject", &review(&injected, "micro-shake-factory"))
        .await;
    assert_eq!(again["response"]["allowed"], true);
    assert!(again["response"].get("patch").is_none(), "{again}");
}

#[tokio::test]
async fn fruits_api_deployment_pod_is_injected_once() {
    inject_book_deployment("chapter-3/fruits-api.yml", "fruits-api").await;
}

#[tokio::test]
async fn juice_shop_api_deployment_pod_is_injected_once() {
    inject_book_deployment("chapter-4-5/juice-shop-api.yml", "juice-shop-api").await;
}

#[tokio::test]
async fn opted_out_unlabelled_and_host_network_pods_pass_untouched() {
    let store = Arc::new(Store::new());
    store.apply([
        namespace("on", &[("istio-injection", "enabled")]),
        namespace("off", &[]),
    ]);
    let hook = Webhook::start(store).await;
    let pod = |meta: Value, spec: Value| {
        let mut p = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "app", "image": "nginx"}]}});
        for (k, v) in meta.as_object().unwrap() {
            p["metadata"][k] = v.clone();
        }
        for (k, v) in spec.as_object().unwrap() {
            p["spec"][k] = v.clone();
        }
        p
    };
    let cases = [
        (
            "inject=false",
            pod(
                json!({"annotations": {"sidecar.istio.io/inject": "false"}}),
                json!({}),
            ),
            "on",
        ),
        ("unlabelled namespace", pod(json!({}), json!({})), "off"),
        (
            "hostNetwork",
            pod(json!({}), json!({"hostNetwork": true})),
            "on",
        ),
    ];
    for (what, p, ns) in cases {
        let answer = hook.post("/inject", &review(&p, ns)).await;
        assert_eq!(answer["response"]["allowed"], true, "{what}");
        assert!(
            answer["response"].get("patch").is_none(),
            "{what}: {answer}"
        );
    }
    // The control: the same plain pod in the enabled namespace is patched.
    let answer = hook
        .post("/inject", &review(&pod(json!({}), json!({})), "on"))
        .await;
    assert!(answer["response"]["patch"].is_string());
}

#[tokio::test]
async fn validate_denies_bad_istio_config_with_its_error_lines() {
    let hook = Webhook::start(Arc::new(Store::new())).await;
    let vs = json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "fruits", "namespace": "micro-shake-factory"},
        "spec": {"hosts": ["fruits"], "http": [{"route": [{"destination": {"host": ""}}]}]}});
    let mut r = review(&vs, "micro-shake-factory");
    r["request"]["kind"] =
        json!({"group": "networking.istio.io", "version": "v1", "kind": "VirtualService"});
    let answer = hook.post("/validate", &r).await;
    assert_eq!(answer["response"]["allowed"], false);
    let msg = answer["response"]["status"]["message"].as_str().unwrap();
    assert!(
        msg.starts_with("VirtualService micro-shake-factory/fruits: spec.http[0].route"),
        "{msg}"
    );
}

#[test]
fn kube_inject_output_is_valid_kubernetes_objects_with_the_sidecar() {
    let out = Command::new(env!("CARGO_BIN_EXE_rudder"))
        .args(["kube-inject", "-f"])
        .arg(book("chapter-3/juice-shop-api-no-sidecar.yml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let docs = docs(&text);
    assert_eq!(docs.len(), 3);
    let _ns: Namespace = serde_json::from_value(docs[0].clone()).unwrap();
    let d: Deployment = serde_json::from_value(docs[1].clone()).unwrap();
    let svc: Service = serde_json::from_value(docs[2].clone()).unwrap();
    assert_eq!(svc.metadata.name.as_deref(), Some("juice-shop-api-service"));
    let spec = d.spec.template.spec.unwrap();
    let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["juice-shop-api", "istio-proxy"]);
    assert_eq!(spec.init_containers.unwrap()[0].name, "istio-init");
    // Unknown fields would be dropped by the typed decode; compare the round trip to catch any.
    let back = serde_json::to_value(Deployment {
        ..serde_json::from_value(docs[1].clone()).unwrap()
    })
    .unwrap();
    assert_eq!(back["spec"]["template"], docs[1]["spec"]["template"]);

    // Through stdin, and idempotent: injecting the output again gives the same output.
    let again = output_with_stdin(
        Command::new(env!("CARGO_BIN_EXE_rudder")).args(["kube-inject", "-f", "-"]),
        &text,
    );
    assert!(again.status.success());
    assert_eq!(String::from_utf8(again.stdout).unwrap(), text);
}

#[tokio::test]
async fn webhook_serves_https_with_a_cert_chaining_to_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = rudder::security::ca::Ca::self_signed(
        dir.path(),
        "cluster.local",
        std::time::Duration::from_secs(3600),
    )
    .unwrap();
    let host = "istiod.istio-system.svc";
    let issued = ca.issue_serving(&[host.to_string()]).unwrap();
    let config =
        rudder::inject::webhook::tls_config(issued.chain_pem.as_bytes(), issued.key_pem.as_bytes())
            .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(rudder::inject::webhook::serve_tls(
        listener,
        config,
        Arc::new(WebhookState::default()),
        async move {
            let _ = stopped.await;
        },
    ));
    // The API server's view: the Service name, verified against the CA bundle (caBundle) only.
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.root_pem().as_bytes()).unwrap())
        .resolve(host, addr)
        .build()
        .unwrap();
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "app", "image": "nginx"}]}});
    let resp = client
        .post(format!("https://{host}:{}/inject", addr.port()))
        .json(&review(&pod, "shop"))
        .send()
        .await
        .unwrap();
    let answer: Value = resp.json().await.unwrap();
    assert!(answer["response"]["patch"].is_string(), "{answer}");

    // A client that trusts another root refuses the connection.
    let other_dir = tempfile::tempdir().unwrap();
    let other = rudder::security::ca::Ca::self_signed(
        other_dir.path(),
        "cluster.local",
        std::time::Duration::from_secs(3600),
    )
    .unwrap();
    let stranger = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(other.root_pem().as_bytes()).unwrap())
        .resolve(host, addr)
        .build()
        .unwrap();
    assert!(
        stranger
            .post(format!("https://{host}:{}/inject", addr.port()))
            .json(&review(&pod, "shop"))
            .send()
            .await
            .is_err()
    );
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn mesh_default_config_and_pod_annotation_reach_the_webhook_injection() {
    let store = Arc::new(Store::new());
    let mut cm = k8s_openapi::api::core::v1::ConfigMap::default();
    cm.metadata.name = Some("istio".into());
    cm.metadata.namespace = Some("istio-system".into());
    cm.data = Some(
        [(
            "mesh".to_string(),
            "defaultConfig:\n  holdApplicationUntilProxyStarts: true\n  concurrency: 3\n"
                .to_string(),
        )]
        .into(),
    );
    store.apply([
        namespace("on", &[("istio-injection", "enabled")]),
        Change::Upsert(Object::ConfigMap(Arc::new(cm))),
    ]);
    let hook = Webhook::start(store).await;
    let pod = |annotations: Value| {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "p", "annotations": annotations},
               "spec": {"containers": [{"name": "app", "image": "nginx"}]}})
    };
    let injected = |p: &Value, answer: &Value| {
        let patch: Vec<Value> =
            serde_json::from_slice(&unbase64(answer["response"]["patch"].as_str().unwrap()))
                .unwrap();
        let mut doc = p.clone();
        apply_patch(&mut doc, &patch);
        doc
    };
    // The mesh holds apps until the proxy is ready: Envoy is a native sidecar with the mesh's concurrency.
    let plain = pod(json!({}));
    let out = injected(&plain, &hook.post("/inject", &review(&plain, "on")).await);
    let proxy = &out["spec"]["initContainers"][1];
    assert_eq!(proxy["name"], "istio-proxy", "{out}");
    assert_eq!(proxy["restartPolicy"], "Always");
    let args = proxy["args"].as_array().unwrap();
    let at = args.iter().position(|a| a == "--concurrency").unwrap();
    assert_eq!(args[at + 1], "3");
    // The pod's annotation overrides the mesh.
    let opted = pod(json!({"proxy.istio.io/config": "holdApplicationUntilProxyStarts: false"}));
    let out = injected(&opted, &hook.post("/inject", &review(&opted, "on")).await);
    assert_eq!(out["spec"]["containers"][1]["name"], "istio-proxy", "{out}");
    assert_eq!(out["spec"]["initContainers"].as_array().unwrap().len(), 1);
}
