//! Istio's own benchmark configurations (`shared/istio/benchmarks/*.yaml`, istiod's
//! `pilot/pkg/networking/core/testdata/benchmarks`) through rudder into real Envoy 1.40.
//!
//! Each template is rendered at `Services=10` (`Instances=10`) with the Go-template subset renderer
//! (`test_helpers::gotmpl`), written into a config directory next to the two proxies istiod's benchmark assumes —
//! a sidecar at 1.1.1.1 and a gateway, both labelled `istio.io/benchmark: "true"` — and served by the whole
//! control plane (`app::build`). A real sidecar Envoy and a real gateway Envoy must then ACK every type (no NACK in
//! rudder's xDS registry) and show every listener, cluster, route configuration and load assignment rudder sent
//! as active in their `/config_dump`.
//!
//! The gateway binds its Gateway servers' ports for real (80, 443, 8081: the tests run as root, as CI does); a port
//! that cannot be bound here is moved to a free one in the Gateway objects only, so the config stays the template's.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use rudder::config::parse::{Document, parse_documents};
use rudder::config::validate::validate;
use rudder::config::{Object, Severity};
use rudder::model::Snapshot;
use rudder::test_helpers::envoy::{
    ADMIN_TIMEOUT, AdsApi, Dumped, Envoy, bootstrap, dynamic_resources,
};
use rudder::test_helpers::gotmpl;
use rudder::test_helpers::mesh::{free_port, start_rudder};
use rudder::xds::Registry;
use rudder::xds::type_url::{CLUSTER, ENDPOINT, LISTENER, ROUTE};

/// Envoy sidecars bind 15001/15006 and the gateway the template's ports: one template at a time.
static ENVOY_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const SIDECAR_POD: &str = "benchmark-sidecar";
const SIDECAR_IP: &str = "1.1.1.1";
const GATEWAY_POD: &str = "benchmark-gateway";
const GATEWAY_IP: &str = "127.0.0.2";

/// The templates, as in istiod's benchmark directory.
const TEMPLATES: [&str; 16] = [
    "authorizationpolicy.yaml",
    "auto.yaml",
    "disabled.yaml",
    "empty.yaml",
    "externalname.yaml",
    "gateways-shared.yaml",
    "gateways.yaml",
    "http.yaml",
    "knative-gateway.yaml",
    "secrets.yaml",
    "serviceentry-workloadentry.yaml",
    "strict.yaml",
    "tcp.yaml",
    "telemetry-api.yaml",
    "tls.yaml",
    "virtualservice.yaml",
];

/// `waypoint.yaml` is the 17th file: ambient (a Kubernetes Gateway of class `istio-waypoint`, HBONE), which
/// rudder does not serve; its ServiceEntries still load and go to the sidecar.
const AMBIENT_TEMPLATE: &str = "waypoint.yaml";

fn template(file: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/istio/benchmarks")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn rendered(file: &str) -> String {
    let data = BTreeMap::from([("Services", 10), ("Instances", 10)]);
    let out = gotmpl::render(&template(file), &data).unwrap_or_else(|e| panic!("{file}: {e}"));
    if file == "knative-gateway.yaml" {
        // The template's range has no `---` at its end, so iteration i+1's first VirtualService is glued to
        // iteration i's last one: a document with every key twice. Go's YAML decoder keeps the last value (istiod's
        // benchmark silently loses 9 of the 20 VirtualServices); rudder refuses duplicate keys. Put the separator
        // back so all 20 are served.
        let glued = "weight: 100\napiVersion:";
        assert_eq!(out.matches(glued).count(), 9, "{file}: template changed");
        return out.replace(glued, "weight: 100\n---\napiVersion:");
    }
    out
}

/// The two proxies istiod's benchmark simulates.
fn proxies() -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {SIDECAR_POD}, namespace: default, labels: {{istio.io/benchmark: "true", app: benchmark}}}}
spec:
  containers: [{{name: app}}]
status: {{phase: Running, podIP: {SIDECAR_IP}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: {GATEWAY_POD}, namespace: istio-system, labels: {{istio.io/benchmark: "true"}}}}
spec:
  containers: [{{name: istio-proxy}}]
status: {{phase: Running, podIP: {GATEWAY_IP}}}
"#
    )
}

/// What loading a rendered template gives: the typed objects, and the documents the parser skipped
/// (`apiVersion/kind` rudder does not know).
fn load(file: &str, yaml: &str) -> (Vec<Object>, Vec<String>) {
    let mut objects = Vec::new();
    let mut skipped = Vec::new();
    for doc in parse_documents(file, yaml.as_bytes(), "default") {
        match doc {
            Document::Object { object, warnings } => {
                assert!(warnings.is_empty(), "{file}: unknown fields {warnings:?}");
                let errors: Vec<_> = validate(&object)
                    .into_iter()
                    .filter(|e| e.severity == Severity::Error)
                    .collect();
                assert!(errors.is_empty(), "{file}: rudder rejects {errors:?}");
                objects.push(object);
            }
            Document::Skipped { api_version, kind } => {
                skipped.push(format!("{api_version}/{kind}"))
            }
            other => panic!("{file}: does not load: {other:?}"),
        }
    }
    (objects, skipped)
}

/// Moves Gateway server ports that cannot be bound here (not root, or taken) to free ones. Returns the YAML and
/// the port map (template port → bound port).
fn bindable_gateway_ports(yaml: &str) -> (String, BTreeMap<u32, u32>) {
    let number = regex::Regex::new(r"number: (\d+)").unwrap();
    let mut map = BTreeMap::new();
    let docs: Vec<String> = yaml
        .split("\n---")
        .map(|doc| {
            let is_gateway =
                doc.contains("kind: Gateway") && doc.contains("apiVersion: networking.istio.io");
            if !is_gateway {
                return doc.to_owned();
            }
            number
                .replace_all(doc, |c: &regex::Captures| {
                    let port: u32 = c[1].parse().unwrap();
                    let to = *map.entry(port).or_insert_with(|| {
                        if std::net::TcpListener::bind(("0.0.0.0", port as u16)).is_ok() {
                            port
                        } else {
                            u32::from(free_port())
                        }
                    });
                    format!("number: {to}")
                })
                .into_owned()
        })
        .collect();
    (docs.join("\n---"), map)
}

#[test]
fn every_template_renders_and_loads() {
    for file in TEMPLATES.iter().chain([&AMBIENT_TEMPLATE]) {
        let yaml = rendered(file);
        assert!(!yaml.contains("{{"), "{file}: unrendered action");
        let (objects, skipped) = load(file, &yaml);
        // A template with a range holds at least its 10 generated objects.
        let min = if template(file).contains("range") {
            10
        } else {
            2
        };
        assert!(objects.len() >= min, "{file}: {} objects", objects.len());
        let expected_skips: &[&str] = match *file {
            "waypoint.yaml" => &["gateway.networking.k8s.io/v1/Gateway"],
            _ => &[],
        };
        assert_eq!(skipped, expected_skips, "{file}");
        // Kinds rudder does not translate yet are kept out of the proxies' config with a warning naming each
        // object; nothing else in the templates is a problem.
        let snap = Snapshot::build(1, &objects, Vec::new());
        let problems: Vec<String> = snap.problems.iter().map(|p| p.to_string()).collect();
        let untranslated = match *file {
            "authorizationpolicy.yaml" => 10,
            "telemetry-api.yaml" => 1,
            _ => 0,
        };
        assert_eq!(problems.len(), untranslated, "{file}: {problems:#?}");
        for p in &snap.problems {
            assert_eq!(p.severity, Severity::Warning, "{file}: {p}");
            assert!(p.message.starts_with("loaded but not translated"), "{p}");
        }
        if *file == "authorizationpolicy.yaml" {
            assert!(
                problems.contains(
                    &"AuthorizationPolicy default/authn-9: loaded but not translated: rudder enforces no \
                      AuthorizationPolicy yet; requests are not filtered"
                        .to_string()
                ),
                "{problems:#?}"
            );
        }
    }
    // The generated names and addresses are the ones istiod's benchmark would make.
    let http = rendered("http.yaml");
    assert!(http.contains("name: service-9\n"), "{http}");
    assert!(http.contains("- 240.240.0.9\n"));
    assert!(!http.contains("service-10"));
    let we = rendered("serviceentry-workloadentry.yaml");
    assert!(we.contains("name: random-9\n") && we.contains("app: random-9\n"));
}

// ---- real Envoys -----------------------------------------------------------------------------------------------

/// What one proxy was sent (per type URL, the names rudder holds as sent), once every type is ACKed.
type Sent = BTreeMap<String, BTreeSet<String>>;

/// Waits until `pod` has ACKed every type it subscribed to (CDS, EDS, LDS and, if it has routes, RDS); panics on
/// the first NACK.
async fn wait_all_acked(registry: &Registry, pod: &str, label: &str) -> Sent {
    let mut out = Sent::new();
    registry
        .wait_for(ADMIN_TIMEOUT, |cs| {
            let Some(c) = cs.iter().find(|c| c.proxy.id.pod == pod) else {
                return false;
            };
            for (ty, t) in &c.types {
                assert!(
                    t.last_nack.is_none(),
                    "{label}: {pod} NACKed {ty}: {:#?}",
                    t.last_nack
                );
            }
            let ready = [CLUSTER, LISTENER]
                .iter()
                .all(|ty| c.types.get(*ty).is_some_and(|t| t.is_acked()))
                && c.types
                    .values()
                    .all(|t| t.is_acked() || (t.names.is_empty() && !t.wildcard));
            if ready {
                out = c
                    .types
                    .iter()
                    .map(|(ty, t)| {
                        (
                            ty.clone(),
                            t.sent.iter().map(|(n, _)| n.to_string()).collect(),
                        )
                    })
                    .collect();
            }
            ready
        })
        .await
        .unwrap_or_else(|last| panic!("{label}: {pod} never ACKed everything: {last:#?}"));
    out
}

/// Waits until Envoy's dump shows every resource in `sent` as active (warming listeners do not count).
async fn wait_active(envoy: &Envoy, sent: &Sent, label: &str) -> Vec<Dumped> {
    let want: Vec<(&str, &String)> = [
        (CLUSTER, "cluster"),
        (ENDPOINT, "endpoint"),
        (LISTENER, "listener"),
        (ROUTE, "route"),
    ]
    .iter()
    .flat_map(|(ty, kind)| sent.get(*ty).into_iter().flatten().map(|n| (*kind, n)))
    .collect();
    let deadline = tokio::time::Instant::now() + ADMIN_TIMEOUT;
    loop {
        let dumped = dynamic_resources(&envoy.config_dump().await);
        let missing: Vec<_> = want
            .iter()
            .filter(|(k, n)| !dumped.iter().any(|d| d.kind == *k && &d.name == *n))
            .collect();
        if missing.is_empty() {
            return dumped;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{label}: Envoy never activated {missing:?}\nlog:\n{}",
            envoy.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn names<'a>(dumped: &'a [Dumped], kind: &str) -> BTreeSet<&'a str> {
    dumped
        .iter()
        .filter(|d| d.kind == kind)
        .map(|d| d.name.as_str())
        .collect()
}

/// What each proxy of one template ended up holding.
struct Served {
    sidecar: Vec<Dumped>,
    gateway: Vec<Dumped>,
    ports: BTreeMap<u32, u32>,
}

async fn serve(file: &str) -> Served {
    let (yaml, ports) = bindable_gateway_ports(&rendered(file));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("proxies.yaml"), proxies()).unwrap();
    std::fs::write(dir.path().join(file), yaml).unwrap();
    let bound = start_rudder(dir.path()).await;
    let registry = bound.xds_registry.clone().unwrap();
    let xds = bound.xds_addr.unwrap();
    let sidecar = Envoy::start(&bootstrap(
        &format!("sidecar~{SIDECAR_IP}~{SIDECAR_POD}.default~default.svc.cluster.local"),
        "benchmark.default",
        xds,
        AdsApi::DeltaGrpc,
    ))
    .await;
    let gateway = Envoy::start(&bootstrap(
        &format!("router~{GATEWAY_IP}~{GATEWAY_POD}.istio-system~istio-system.svc.cluster.local"),
        "benchmark-gateway.istio-system",
        xds,
        AdsApi::Grpc,
    ))
    .await;
    let label = format!("{file} sidecar");
    let sent = wait_all_acked(&registry, SIDECAR_POD, &label).await;
    let side = wait_active(&sidecar, &sent, &label).await;
    let label = format!("{file} gateway");
    let sent = wait_all_acked(&registry, GATEWAY_POD, &label).await;
    let gw = wait_active(&gateway, &sent, &label).await;
    // Still no NACK anywhere after both settled.
    for c in registry.connections() {
        for (ty, t) in &c.types {
            assert!(
                t.last_nack.is_none(),
                "{file}: {} NACKed {ty}: {:#?}",
                c.proxy.id.pod,
                t.last_nack
            );
        }
    }
    drop(sidecar);
    drop(gateway);
    bound.shutdown().await;
    Served {
        sidecar: side,
        gateway: gw,
        ports,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_envoys_accept_every_benchmark_template() {
    let _serial = ENVOY_LOCK.lock().await;
    for file in TEMPLATES.iter().chain([&AMBIENT_TEMPLATE]) {
        let served = serve(file).await;
        let side_listeners = names(&served.sidecar, "listener");
        let side_clusters = names(&served.sidecar, "cluster");
        let side_routes = names(&served.sidecar, "route");
        let gw_listeners = names(&served.gateway, "listener");
        let gw_clusters = names(&served.gateway, "cluster");
        let gw_routes = names(&served.gateway, "route");
        eprintln!(
            "{file}: sidecar {} listeners {} clusters {} routes; gateway {:?} {} clusters {:?}",
            side_listeners.len(),
            side_clusters.len(),
            side_routes.len(),
            gw_listeners,
            gw_clusters.len(),
            gw_routes
        );
        assert!(
            side_listeners.contains("virtualOutbound") && side_listeners.contains("virtualInbound"),
            "{file}: {side_listeners:?}"
        );
        for always in ["BlackHoleCluster", "PassthroughCluster"] {
            assert!(side_clusters.contains(always), "{file}: {side_clusters:?}");
        }
        assert!(!gw_clusters.is_empty(), "{file}: gateway has no clusters");
        let port = |p: u32| served.ports.get(&p).copied().unwrap_or(p);
        check_template(file, &served, port);
    }
}

/// The resources each template implies.
fn check_template(file: &str, s: &Served, port: impl Fn(u32) -> u32) {
    let side_l = names(&s.sidecar, "listener");
    let side_c = names(&s.sidecar, "cluster");
    let side_r = names(&s.sidecar, "route");
    let gw_l = names(&s.gateway, "listener");
    let gw_r = names(&s.gateway, "route");
    let has = |set: &BTreeSet<&str>, n: &str| set.contains(n);
    // Ten services with a port each: one outbound cluster per service and port.
    let outbound = |p: u32, host: &str| format!("outbound|{p}||{host}");
    match file {
        "http.yaml" | "virtualservice.yaml" => {
            for i in 0..10 {
                let c = outbound(80, &format!("random-{i}.host.example"));
                assert!(has(&side_c, &c), "{file}: {c} in {side_c:?}");
            }
            assert!(has(&side_r, "80"), "{file}: {side_r:?}");
            assert!(has(&side_l, "0.0.0.0_80"), "{file}: {side_l:?}");
        }
        "tcp.yaml" | "tls.yaml" | "auto.yaml" => {
            for i in 0..10 {
                let c = outbound(7070, &format!("random-{i}.host.example"));
                assert!(has(&side_c, &c), "{file}: {c} in {side_c:?}");
                // TCP/TLS services with a VIP get a `<vip>_<port>` listener.
                if file != "auto.yaml" {
                    let l = format!("240.240.0.{i}_7070");
                    assert!(has(&side_l, &l), "{file}: {l} in {side_l:?}");
                }
            }
        }
        "empty.yaml" | "serviceentry-workloadentry.yaml" | "telemetry-api.yaml" => {
            for i in 0..10 {
                for p in [80, 7070, 443, 9090] {
                    let c = outbound(p, &format!("random-{i}.host.example"));
                    assert!(has(&side_c, &c), "{file}: {c} in {side_c:?}");
                }
            }
            assert!(has(&side_r, "80"), "{file}: {side_r:?}");
        }
        "externalname.yaml" => {
            for i in 0..10 {
                let c = outbound(80, &format!("service-{i}.default.svc.cluster.local"));
                assert!(has(&side_c, &c), "{file}: {c} in {side_c:?}");
            }
        }
        "gateways.yaml" | "gateways-shared.yaml" => {
            let l80 = format!("0.0.0.0_{}", port(80));
            assert!(has(&gw_l, &l80), "{file}: {gw_l:?}");
            let r80 = format!("http.{}", port(80));
            assert!(has(&gw_r, &r80), "{file}: {gw_r:?}");
        }
        "knative-gateway.yaml" => {
            for p in [80, 8081] {
                let l = format!("0.0.0.0_{}", port(p));
                assert!(has(&gw_l, &l), "{file}: {gw_l:?}");
                let r = format!("http.{}", port(p));
                assert!(has(&gw_r, &r), "{file}: {gw_r:?}");
            }
        }
        _ => {}
    }
    // Templates without an Istio Gateway give the gateway no listeners (as istiod: nothing to serve).
    if !matches!(
        file,
        "gateways.yaml" | "gateways-shared.yaml" | "knative-gateway.yaml"
    ) {
        assert!(gw_l.is_empty(), "{file}: gateway listeners {gw_l:?}");
    }
}
