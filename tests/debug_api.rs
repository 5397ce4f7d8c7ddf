//! The debug REST API and the debug CLI against the whole control plane with real Envoys (a sidecar over SotW,
//! a gateway over delta): every endpoint's JSON, `/debug/config_dump` equal to Envoy's own `/config_dump`
//! section by section, `rudder wait` across both proxies (and naming a frozen one), and a forced NACK visible in
//! `/debug/nackz`, `proxy-status` and the reject metrics.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use rudder::app;
use rudder::config::store::Store;
use rudder::config::{Kind, ObjectKey};
use rudder::test_helpers::envoy::{ADMIN_TIMEOUT, AdsApi, Envoy, bootstrap};
use rudder::test_helpers::mesh::{free_port, wait_acked};
use rudder::xds::type_url::{CLUSTER, LISTENER, ROUTE};
use serde_json::Value;

const SIDECAR: &str = "app-1.shop";
const GATEWAY: &str = "ingress-1.istio-system";
const SIDECAR_NODE: &str = "sidecar~127.0.0.1~app-1.shop~shop.svc.cluster.local";
const GATEWAY_NODE: &str = "router~127.0.0.2~ingress-1.istio-system~istio-system.svc.cluster.local";
/// A Secret value that must never appear in debug output.
const SECRET_B64: &str = "dG9wLXNlY3JldC1rZXk=";

fn mesh_yaml(gw_port: u16) -> String {
    format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: shop}}
---
apiVersion: v1
kind: Pod
metadata: {{name: app-1, namespace: shop, labels: {{app: app, version: v1}}}}
spec:
  containers:
  - name: app
    ports:
    - {{name: http-web, containerPort: 20901}}
status: {{phase: Running, podIP: 127.0.0.1}}
---
apiVersion: v1
kind: Pod
metadata: {{name: ingress-1, namespace: istio-system, labels: {{istio: ingressgateway}}}}
spec:
  containers:
  - name: istio-proxy
status: {{phase: Running, podIP: 127.0.0.2}}
---
apiVersion: v1
kind: Service
metadata: {{name: app, namespace: shop}}
spec:
  clusterIP: 127.0.0.10
  selector: {{app: app}}
  ports:
  - {{name: http, port: 20080, targetPort: http-web}}
---
apiVersion: v1
kind: Service
metadata: {{name: db, namespace: shop}}
spec:
  clusterIP: 127.0.0.20
  selector: {{app: db}}
  ports:
  - {{name: tcp-db, port: 20306}}
---
apiVersion: v1
kind: Secret
metadata: {{name: app-tls, namespace: shop}}
type: kubernetes.io/tls
data:
  tls.key: {SECRET_B64}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: app, namespace: shop}}
spec:
  host: app
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: shop-gw, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {gw_port}, name: http, protocol: HTTP}}
    hosts: ["*"]
"#
    )
}

/// The VirtualService both proxies carry (sidecar route `20080`, gateway route `http.<port>`).
fn vs_yaml(timeout: &str) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: app, namespace: shop}}
spec:
  hosts: [app, app.example.com]
  gateways: [mesh, istio-system/shop-gw]
  http:
  - timeout: {timeout}
    route:
    - destination: {{host: app, subset: v1, port: {{number: 20080}}}}
"#
    )
}

async fn start(dir: &Path) -> app::Bound {
    app::build(app::Config {
        config_dir: Some(dir.to_path_buf()),
        xds_addr: Some("127.0.0.1:0".parse().unwrap()),
        debug_addr: Some("127.0.0.1:0".parse().unwrap()),
        ..Default::default()
    })
    .await
    .expect("rudder starts")
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let resp = reqwest::get(format!("http://{addr}{path}"))
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

async fn get_json(addr: SocketAddr, path: &str) -> Value {
    let (status, body) = get(addr, path).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

/// Section `field` of a config dump (`dynamic_active_clusters`, …) as name → resource JSON.
fn section(dump: &Value, field: &str, inner: &str, name_key: &str) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for c in dump["configs"].as_array().into_iter().flatten() {
        for item in c[field].as_array().into_iter().flatten() {
            let Some(body) = item.pointer(inner).or_else(|| {
                // A listener still warming in Envoy has its config under warming_state.
                item.pointer(&inner.replace("active_state", "warming_state"))
            }) else {
                continue;
            };
            let name = body[name_key].as_str().unwrap_or_default().to_owned();
            out.insert(name, normalize(body));
        }
    }
    out
}

/// JSON numbers as f64 (Envoy prints `100`, prost-reflect `100.0` for doubles).
fn normalize(v: &Value) -> Value {
    match v {
        Value::Number(n) => serde_json::json!(n.as_f64()),
        Value::Array(a) => Value::Array(a.iter().map(normalize).collect()),
        Value::Object(m) => {
            Value::Object(m.iter().map(|(k, v)| (k.clone(), normalize(v))).collect())
        }
        other => other.clone(),
    }
}

const SECTIONS: [(&str, &str, &str); 3] = [
    ("dynamic_active_clusters", "/cluster", "name"),
    ("dynamic_listeners", "/active_state/listener", "name"),
    ("dynamic_route_configs", "/route_config", "name"),
];

/// rudder's `/debug/config_dump` for `proxy` equals Envoy's own dump, per section and resource.
async fn assert_dumps_equal(debug: SocketAddr, proxy: &str, envoy: &Envoy) {
    let ours = get_json(debug, &format!("/debug/config_dump?proxyID={proxy}")).await;
    let deadline = tokio::time::Instant::now() + ADMIN_TIMEOUT;
    loop {
        let theirs = envoy.config_dump().await;
        let mut diffs = Vec::new();
        for (field, inner, key) in SECTIONS {
            let a = section(&ours, field, inner, key);
            let b = section(&theirs, field, inner, key);
            assert!(
                !a.is_empty(),
                "{proxy}: rudder's dump has no {field}: {ours:#}"
            );
            if a.keys().ne(b.keys()) {
                diffs.push(format!(
                    "{field}: rudder {:?} vs Envoy {:?}",
                    a.keys(),
                    b.keys()
                ));
                continue;
            }
            for (name, body) in &a {
                if body != &b[name] {
                    diffs.push(format!(
                        "{field} {name}:\nrudder {body:#}\nEnvoy  {:#}",
                        b[name]
                    ));
                }
            }
        }
        if diffs.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{proxy}: config dumps differ:\n{}",
            diffs.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the store's VirtualService `shop/app` has route timeout `timeout`.
async fn wait_store_has(store: &Store, timeout: &str) {
    let key = ObjectKey::new(Kind::VirtualService, "shop", "app");
    let mut rx = store.subscribe();
    let has = |store: &Store| {
        store
            .get(&key)
            .is_some_and(|o| o.to_json()["spec"]["http"][0]["timeout"] == timeout)
    };
    tokio::time::timeout(ADMIN_TIMEOUT, async {
        while !has(store) {
            rx.changed().await.expect("store alive");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the store never got timeout {timeout}"));
}

/// Runs the `rudder` binary; returns (exit code, stdout, stderr).
fn cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rudder"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run rudder");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn cli_async(args: Vec<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        cli(&a)
    })
    .await
    .unwrap()
}

/// The pid of the Envoy whose files live in `envoy.dir()` (a process this test started).
fn envoy_pid(envoy: &Envoy) -> u32 {
    let dir = envoy.dir().display().to_string();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&dir) {
            return pid;
        }
    }
    panic!("no process for Envoy in {dir}");
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_api_and_cli_with_real_envoys() {
    let gw_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), mesh_yaml(gw_port)).unwrap();
    std::fs::write(dir.path().join("vs.yaml"), vs_yaml("5s")).unwrap();
    let bound = start(dir.path()).await;
    let debug = bound.debug_addr.expect("debug API bound");
    let xds = bound.xds_addr.unwrap();
    let registry = bound.xds_registry.clone().unwrap();
    let sidecar = Envoy::start(&bootstrap(SIDECAR_NODE, "app.shop", xds, AdsApi::Grpc)).await;
    let gateway = Envoy::start(&bootstrap(
        GATEWAY_NODE,
        "istio-ingressgateway.istio-system",
        xds,
        AdsApi::DeltaGrpc,
    ))
    .await;
    // Both proxies ACKed CDS, LDS and RDS without a NACK.
    for pod in ["app-1", "ingress-1"] {
        wait_acked(&registry, pod, &[CLUSTER, LISTENER, ROUTE], |_| true).await;
    }
    let addr = debug.to_string();

    // /debug/syncz: istiod's shape, nonces sent == acked per type.
    let syncz = get_json(debug, "/debug/syncz").await;
    let list = syncz.as_array().unwrap();
    assert_eq!(list.len(), 2, "{syncz:#}");
    let side = list
        .iter()
        .find(|s| s["proxy"] == SIDECAR)
        .expect("sidecar in syncz");
    assert_eq!(side["proxy_type"], "sidecar");
    assert_eq!(side["cluster_id"], "Kubernetes");
    for t in ["cluster", "listener", "route"] {
        let sent = side[format!("{t}_sent")].as_str().unwrap();
        assert!(!sent.is_empty(), "{t}: {side:#}");
        assert_eq!(side[format!("{t}_acked")], sent, "{t}: {side:#}");
    }
    let gw = list
        .iter()
        .find(|s| s["proxy"] == GATEWAY)
        .expect("gateway in syncz");
    assert_eq!(gw["proxy_type"], "router");
    assert!(gw.get("nacks").is_none(), "{gw:#}");

    // /debug/config_dump equals each Envoy's own dump, section by section.
    assert_dumps_equal(debug, SIDECAR, &sidecar).await;
    assert_dumps_equal(debug, GATEWAY, &gateway).await;
    let only_cds = get_json(
        debug,
        &format!("/debug/config_dump?proxyID={SIDECAR}&types=cds"),
    )
    .await;
    let configs = only_cds["configs"].as_array().unwrap();
    assert_eq!(configs.len(), 1);
    assert_eq!(
        configs[0]["@type"],
        "type.googleapis.com/envoy.admin.v3.ClustersConfigDump"
    );
    let cluster = section(&only_cds, "dynamic_active_clusters", "/cluster", "name");
    let subset = &cluster["outbound|20080|v1|app.shop.svc.cluster.local"];
    assert_eq!(
        subset["@type"],
        "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    );
    // Delta: the version Envoy records is the resource's own; it matches Envoy's.
    let gw_dump = get_json(
        debug,
        &format!("/debug/config_dump?proxyID={GATEWAY}&types=cds"),
    )
    .await;
    let ours_v = &gw_dump["configs"][0]["dynamic_active_clusters"][0];
    let theirs = gateway.config_dump().await;
    let theirs_v = theirs["configs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| {
            c["dynamic_active_clusters"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .find(|c| c["cluster"]["name"] == ours_v["cluster"]["name"])
        .expect("same cluster in Envoy");
    assert_eq!(ours_v["version_info"], theirs_v["version_info"]);
    // Unknown proxy: 404 naming the connected ones.
    let (status, body) = get(debug, "/debug/config_dump?proxyID=nope.shop").await;
    assert_eq!(status, 404);
    assert!(body.contains(SIDECAR) && body.contains(GATEWAY), "{body}");

    // /debug/adsz: both streams with node ids and watches.
    let adsz = get_json(debug, "/debug/adsz").await;
    assert_eq!(adsz["totalClients"], 2);
    let c = adsz["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["proxy"] == SIDECAR)
        .unwrap();
    assert_eq!(c["node_id"], SIDECAR_NODE);
    assert_eq!(c["protocol"], "sotw");
    assert_eq!(c["watches"][CLUSTER][0], "*");
    assert_eq!(c["watches"][ROUTE][0], "20080", "{c:#}");

    // Registry, endpoints, config, push status, mesh.
    let reg = get_json(debug, "/debug/registryz").await;
    let hosts: Vec<&str> = reg
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["hostname"].as_str())
        .collect();
    assert!(
        hosts.contains(&"app.shop.svc.cluster.local")
            && hosts.contains(&"db.shop.svc.cluster.local"),
        "{hosts:?}"
    );
    let eps = get_json(debug, "/debug/endpointz").await;
    let app_eps = eps
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["service"] == "app.shop.svc.cluster.local" && e["port"] == 20080)
        .expect("app endpoints");
    assert_eq!(app_eps["endpoints"][0]["address"], "127.0.0.1");
    assert_eq!(app_eps["endpoints"][0]["port"], 20901);
    let (_, configz) = get(debug, "/debug/configz").await;
    assert!(!configz.contains(SECRET_B64), "secret leaked in configz");
    let configz: Value = serde_json::from_str(&configz).unwrap();
    let secret = configz
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["kind"] == "Secret")
        .expect("the Secret is listed");
    assert_eq!(secret["data"]["tls.key"], "<redacted>");
    assert!(
        configz
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["kind"] == "VirtualService")
    );
    let push = get_json(debug, "/debug/push_status").await;
    assert!(push["version"].as_u64().unwrap() >= 1);
    assert_eq!(push["errors"], serde_json::json!([]), "{push:#}");
    assert_eq!(push["summary"]["services"], 2);
    let mesh = get_json(debug, "/debug/mesh").await;
    assert!(
        mesh.is_object() && mesh.get("rootNamespace").is_some(),
        "{mesh:#}"
    );
    let (status, ready) = get(debug, "/ready").await;
    assert_eq!(status, 200, "{ready}");

    // /metrics: istiod's names as scraped.
    let (_, metrics) = get(debug, "/metrics").await;
    for needle in [
        "pilot_xds 2\n",
        "pilot_xds_pushes{type=\"cds\"} ",
        "pilot_total_xds_rejects{type=\"cds\"} 0\n",
        "pilot_xds_cds_reject 0\n",
        "pilot_xds_expired_nonce ",
        "pilot_proxy_convergence_time_count ",
        "pilot_xds_push_time_count ",
        "pilot_services 2\n",
        "pilot_pushcontext_init_seconds_count ",
        "pilot_debounce_time_count ",
        "process_resident_memory_bytes ",
        "process_open_fds ",
    ] {
        assert!(
            metrics.contains(needle),
            "missing {needle:?} in:\n{metrics}"
        );
    }

    // CLI: proxy-status, proxy-config, errors that say what to do.
    let (code, out, err) = cli_async(vec![
        "proxy-status".into(),
        "--debug-addr".into(),
        addr.clone(),
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let row = out
        .lines()
        .find(|l| l.starts_with(SIDECAR))
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(row.split_whitespace().nth(1), Some("sidecar"), "{out}");
    assert_eq!(
        row.matches("SYNCED").count(),
        4,
        "cds lds eds rds synced: {out}"
    );
    assert!(row.contains("NOT SENT"), "sds is not served yet: {out}");
    // With a proxy and its Envoy's admin: rudder's dump diffed with Envoy's, every section in sync.
    let (code, out, err) = cli_async(vec![
        "proxy-status".into(),
        SIDECAR.into(),
        "--envoy-admin".into(),
        sidecar.admin.to_string(),
        "--debug-addr".into(),
        addr.clone(),
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    for section in ["clusters", "endpoints", "listeners", "routes"] {
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{section}:")))
            .unwrap_or_else(|| panic!("no {section} line: {out}"));
        assert!(line.ends_with("in sync"), "{line}\n{out}");
    }
    let (code, out, err) = cli_async(vec![
        "proxy-config".into(),
        "clusters".into(),
        SIDECAR.into(),
        "--debug-addr".into(),
        addr.clone(),
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("app.shop.svc.cluster.local") && l.contains(" v1 "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains("outbound")
            && line.contains("EDS")
            && line.contains("DestinationRule shop/app"),
        "{line}"
    );
    let (code, out, _) = cli_async(vec![
        "proxy-config".into(),
        "listeners".into(),
        SIDECAR.into(),
        "-o".into(),
        "json".into(),
        "--debug-addr".into(),
        addr.clone(),
    ])
    .await;
    assert_eq!(code, 0);
    let listeners: Value = serde_json::from_str(&out).unwrap();
    assert!(
        listeners
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["name"] == "virtualOutbound")
    );
    let (code, out, _) = cli_async(vec![
        "proxy-config".into(),
        "routes".into(),
        GATEWAY.into(),
        "--debug-addr".into(),
        addr.clone(),
    ])
    .await;
    assert_eq!(code, 0);
    assert!(out.contains(&format!("http.{gw_port}")), "{out}");
    let (code, _, err) = cli_async(vec![
        "proxy-config".into(),
        "clusters".into(),
        "nope.shop".into(),
        "--debug-addr".into(),
        addr.clone(),
    ])
    .await;
    assert_eq!(code, 1);
    assert!(
        err.contains("connected proxies") && err.contains(SIDECAR),
        "{err}"
    );
    let (code, _, err) = cli_async(vec![
        "proxy-status".into(),
        "--debug-addr".into(),
        format!("127.0.0.1:{}", free_port()),
    ])
    .await;
    assert_eq!(code, 1);
    assert!(
        err.contains("is rudder running? pass --debug-addr"),
        "{err}"
    );

    // config_status and `rudder wait`: the VirtualService shapes both proxies' routes.
    let st = get_json(
        debug,
        "/debug/config_status?kind=VirtualService&namespace=shop&name=app",
    )
    .await;
    assert_eq!(st["object"], "VirtualService shop/app");
    assert_eq!(st["synced"], true, "{st:#}");
    let proxies: Vec<&str> = st["proxies"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["proxy"].as_str())
        .collect();
    assert_eq!(proxies, [SIDECAR, GATEWAY], "{st:#}");
    let (status, body) = get(
        debug,
        "/debug/config_status?kind=VirtualService&namespace=shop&name=nope",
    )
    .await;
    assert_eq!(status, 404, "{body}");

    // An edit: `wait` returns once both Envoys ACKed it.
    std::fs::write(dir.path().join("vs.yaml"), vs_yaml("7s")).unwrap();
    // `wait` checks what the store holds (as `istioctl wait` checks a resource version): let the watcher load it.
    wait_store_has(&bound.store, "7s").await;
    let wait_args = |timeout: &str| {
        vec![
            "wait".to_string(),
            "VirtualService/shop/app".into(),
            "--timeout".into(),
            timeout.into(),
            "--debug-addr".into(),
            addr.clone(),
        ]
    };
    let (code, out, err) = cli_async(wait_args("20s")).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ACKed by 2 affected proxies"), "{out}");
    for (proxy, envoy) in [(SIDECAR, &sidecar), (GATEWAY, &gateway)] {
        let dump = envoy.config_dump().await;
        assert!(
            dump.to_string().contains("\"timeout\":\"7s\""),
            "{proxy} lacks the edit after wait"
        );
    }

    // With the gateway frozen, `wait` times out naming it.
    let pid = envoy_pid(&gateway);
    signal(pid, "-STOP");
    std::fs::write(dir.path().join("vs.yaml"), vs_yaml("9s")).unwrap();
    wait_store_has(&bound.store, "9s").await;
    let (code, out, err) = cli_async(wait_args("3s")).await;
    signal(pid, "-CONT");
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(GATEWAY) && !err.contains(&format!("  {SIDECAR}:")),
        "{err}"
    );
    assert!(
        err.contains(&format!("rds http.{gw_port} PENDING")),
        "{err}"
    );

    drop((sidecar, gateway));
    bound.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_nack_shows_in_nackz_proxy_status_and_metrics() {
    let gw_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), mesh_yaml(gw_port)).unwrap();
    let bound = start(dir.path()).await;
    let debug = bound.debug_addr.unwrap();
    let registry = bound.xds_registry.clone().unwrap();
    let _sidecar = Envoy::start(&bootstrap(
        SIDECAR_NODE,
        "app.shop",
        bound.xds_addr.unwrap(),
        AdsApi::Grpc,
    ))
    .await;
    registry
        .wait_for(ADMIN_TIMEOUT, |cs| {
            cs.iter()
                .any(|c| c.types.get(CLUSTER).is_some_and(|t| t.is_acked()))
        })
        .await
        .unwrap_or_else(|last| panic!("CDS never ACKed: {last:#?}"));

    // A DestinationRule whose CA file does not exist: valid Istio config, a cluster Envoy rejects. And a
    // VirtualService rudder's validation refuses.
    std::fs::write(
        dir.path().join("bad.yaml"),
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db, namespace: shop}
spec:
  host: db
  trafficPolicy:
    tls: {mode: SIMPLE, caCertificates: /nonexistent/rudder-test/ca.pem}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: broken, namespace: shop}
spec:
  hosts: []
"#,
    )
    .unwrap();
    let conns = registry
        .wait_for(ADMIN_TIMEOUT, |cs| {
            cs.iter()
                .any(|c| c.types.get(CLUSTER).is_some_and(|t| t.last_nack.is_some()))
        })
        .await
        .unwrap_or_else(|last| panic!("no CDS NACK: {last:#?}"));
    let envoy_text = conns[0].types[CLUSTER].last_nack.clone().unwrap().message;

    // Visible at once (no polling): the registry already holds it.
    let nackz = get_json(debug, "/debug/nackz").await;
    let p = &nackz["proxies"][0];
    assert_eq!(p["proxy"], SIDECAR, "{nackz:#}");
    let n = &p["nacks"][0];
    assert_eq!(n["type"], "cds");
    assert_eq!(n["message"], envoy_text.as_str());
    let res = n["resources"].as_array().unwrap();
    let db = res
        .iter()
        .find(|r| r["name"] == "outbound|20306||db.shop.svc.cluster.local")
        .unwrap_or_else(|| panic!("the db cluster is blamed: {nackz:#}"));
    assert_eq!(db["config"], serde_json::json!(["DestinationRule shop/db"]));
    let rejected: Vec<&str> = nackz["rejected_config"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        rejected
            .iter()
            .any(|l| l.starts_with("VirtualService shop/broken: ")),
        "{rejected:?}"
    );

    let syncz = get_json(debug, "/debug/syncz").await;
    assert_eq!(syncz[0]["nacks"]["cds"], envoy_text.as_str());

    let (_, metrics) = get(debug, "/metrics").await;
    assert!(
        metrics.contains("pilot_total_xds_rejects{type=\"cds\"} 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("pilot_xds_cds_reject 1\n"), "{metrics}");
    assert!(
        metrics.contains("rudder_config_rejected{kind=\"VirtualService\"} 1\n"),
        "{metrics}"
    );

    let addr = debug.to_string();
    let (code, out, err) = cli_async(vec![
        "proxy-status".into(),
        SIDECAR.into(),
        "--debug-addr".into(),
        addr,
    ])
    .await;
    assert_eq!(code, 1, "NACKED exits non-zero: {out}{err}");
    assert!(out.contains("NACKED"), "{out}");
    let first_line = envoy_text.lines().next().unwrap();
    assert!(
        out.contains(&format!("{SIDECAR} CDS NACKED: {first_line}")),
        "{out}"
    );
    assert!(
        out.contains(
            "rejected outbound|20306||db.shop.svc.cluster.local (from DestinationRule shop/db)"
        ),
        "{out}"
    );

    bound.shutdown().await;
}
