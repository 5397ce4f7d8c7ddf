//! Real Envoy 1.40 and rudder's route configurations.
//!
//! - Static validation: every RouteConfiguration rudder generates for the book's chapter 3 and 4–5 scenarios and
//!   for a fixture using every VirtualService feature is embedded in a static listener and checked by
//!   `envoy --mode validate` (the same checks Envoy runs on an RDS update).
//! - Over ADS: the whole control plane (`app::build` over a config directory holding each book scenario) serves a
//!   real sidecar and a real ingress gateway; both ACK their route configurations (no NACK in rudder's registry)
//!   and `/config_dump` shows them with what rudder meant (vhosts, weights, fault filter config).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use envoy_types::pb::envoy::config::bootstrap::v3::{Bootstrap, bootstrap::StaticResources};
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address, socket_address};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::Cors;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_connection_manager::RouteSpecifier, http_filter,
};
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

use rudder::config::parse::{Document, parse_documents};
use rudder::envoy::route::{CORS_FILTER, FAULT_FILTER, ROUTER_FILTER, route_configs};
use rudder::model::Snapshot;
use rudder::test_helpers::envoy::{
    ADMIN_TIMEOUT, AdsApi, Envoy, bootstrap, dump_entries, envoy_binary,
};
use rudder::test_helpers::loopback::http_named;
use rudder::test_helpers::mesh::{free_port, start_rudder as start, wait_acked};
use rudder::test_helpers::mesh::{router, sidecar};
use rudder::xds::type_url::ROUTE;
use serde_json::Value;

/// Envoy sidecars bind 15001/15006: tests that start one run one at a time.
static ENVOY_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const NS: &str = "micro-shake-factory";
const SIDECAR_POD: &str = "juice-shop-1";
const GATEWAY_POD: &str = "ingress-1";

/// The book's scenarios: the manifests applied together (each scenario replaces the previous one, as the book's
/// `kubectl delete namespace` + `apply` steps do).
const SCENARIOS: [(&str, &[&str]); 6] = [
    (
        "chapter 3: gateways and single-version services",
        &[
            "chapter-3/fruits-api.yml",
            "chapter-3/fruits-api-vs-gw.yml",
            "chapter-3/juice-shop-api-no-sidecar.yml",
            "chapter-3/juice-shop-api-vs-gw.yml",
        ],
    ),
    (
        "S9 header routing (+ exotic fruits ServiceEntry)",
        &[
            "chapter-4-5/fruits-api-versioned.yml",
            "chapter-4-5/fruits-api-dr-vs-gw.yml",
            "chapter-4-5/juice-shop-api.yml",
            "chapter-4-5/juice-shop-api-vs-gw.yml",
            "chapter-4-5/exotic-fruits-se.yml",
        ],
    ),
    (
        "S10 fault injection",
        &[
            "chapter-4-5/fruits-api-versioned.yml",
            "chapter-4-5/fruits-api-dr-vs-gw-test-fault.yml",
            "chapter-4-5/juice-shop-api.yml",
        ],
    ),
    (
        "S11 canary",
        &[
            "chapter-4-5/fruits-api-versioned.yml",
            "chapter-4-5/fruits-api-dr-vs-gw-canary.yml",
            "chapter-4-5/juice-shop-api.yml",
        ],
    ),
    (
        "S12 resilience",
        &[
            "chapter-4-5/juice-shop-api.yml",
            "chapter-4-5/juice-shop-api-dr-vs-gw-resilience.yml",
            "chapter-4-5/fruits-api.yml",
        ],
    ),
    (
        "mesh-bound VirtualService",
        &[
            "chapter-4-5/fruits-api.yml",
            "chapter-4-5/fruits-api-vs.yml",
            "chapter-4-5/juice-shop-api.yml",
        ],
    ),
];

fn book(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/book/manifests")
        .join(file)
}

/// Pods for the sidecar (juice-shop, 127.0.0.1) and the ingress gateway (127.0.0.2), which the book's Deployments
/// would create, plus ClusterIPs on loopback for the book's Services.
fn fixtures() -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {SIDECAR_POD}, namespace: {NS}, labels: {{app: juice-shop-api}}}}
spec:
  containers:
  - name: juice-shop-api
    ports: [{{name: http-js-api, containerPort: 20301}}]
status: {{phase: Running, podIP: 127.0.0.1}}
---
apiVersion: v1
kind: Pod
metadata: {{name: {GATEWAY_POD}, namespace: istio-system, labels: {{istio: ingressgateway}}}}
spec:
  containers: [{{name: istio-proxy}}]
status: {{phase: Running, podIP: 127.0.0.2}}
"#
    )
}

/// The scenario's manifests, with the gateways' port 80 moved to `gw_port` (a real gateway binds it) — the route
/// configuration is then `http.<gw_port>`.
fn scenario_yaml(files: &[&str], gw_port: u16) -> String {
    let gw_server = regex::Regex::new(r"number: 80(\s+name: http-[a-z-]+-gateway)").unwrap();
    let mut out = fixtures();
    for f in files {
        let text = std::fs::read_to_string(book(f))
            .unwrap_or_else(|e| panic!("the book's manifest {f}: {e}"));
        out.push_str("\n---\n");
        out.push_str(&gw_server.replace_all(&text, format!("number: {gw_port}$1")));
    }
    out
}

/// Whether the scenario declares a Gateway (else the gateway proxy gets no HTTP listener and no routes).
fn has_gateway(files: &[&str]) -> bool {
    files.iter().any(|f| f.contains("-gw"))
}

fn snapshot(yaml: &str) -> Snapshot {
    let objects: Vec<_> = parse_documents("test.yaml", yaml.as_bytes(), "default")
        .into_iter()
        .filter_map(|d| match d {
            Document::Object { object, .. } => Some(object),
            Document::Skipped { .. } => None,
            other => panic!("fixture does not load: {other:?}"),
        })
        .collect();
    Snapshot::build(1, &objects, Vec::new())
}

/// Every route configuration of the scenario's sidecar and gateway.
fn generated(snap: &Snapshot) -> Vec<RouteConfiguration> {
    let mut all = route_configs(&sidecar(snap, NS, SIDECAR_POD));
    all.extend(route_configs(&router(
        snap,
        "istio-system",
        GATEWAY_POD,
        &[],
    )));
    all
}

fn any<M: Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

/// Runs `envoy --mode validate` on a static bootstrap holding each route configuration inline in its own
/// listener's HTTP connection manager, with the filter chain the listeners use (fault, CORS, router).
fn validate(routes: &[RouteConfiguration]) -> Result<(), String> {
    let http_filter = |name: &str, config: Any| HttpFilter {
        name: name.into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(config)),
        ..Default::default()
    };
    let listeners = routes
        .iter()
        .enumerate()
        .map(|(i, rc)| {
            let hcm = HttpConnectionManager {
                stat_prefix: format!("validate_{i}"),
                route_specifier: Some(RouteSpecifier::RouteConfig(rc.clone())),
                http_filters: vec![
                    http_filter(FAULT_FILTER, any(&HttpFault::default())),
                    http_filter(CORS_FILTER, any(&Cors::default())),
                    http_filter(ROUTER_FILTER, any(&Router::default())),
                ],
                ..Default::default()
            };
            Listener {
                name: format!("validate_{}", rc.name),
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: "127.0.0.1".into(),
                        port_specifier: Some(socket_address::PortSpecifier::PortValue(
                            30000 + i as u32,
                        )),
                        ..Default::default()
                    })),
                }),
                filter_chains: vec![FilterChain {
                    filters: vec![Filter {
                        name: "envoy.filters.network.http_connection_manager".into(),
                        config_type: Some(filter::ConfigType::TypedConfig(any(&hcm))),
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }
        })
        .collect();
    let boot = Bootstrap {
        static_resources: Some(StaticResources {
            listeners,
            ..Default::default()
        }),
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    // `.pb`: Envoy reads the bootstrap as a binary proto, exactly the bytes rudder would send.
    let path = dir.path().join("bootstrap.pb");
    std::fs::write(&path, boot.encode_to_vec()).unwrap();
    let out = Command::new(envoy_binary())
        .args(["--mode", "validate", "--log-level", "warn", "-c"])
        .arg(&path)
        .output()
        .expect("run envoy");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn envoy_validates(label: &str, routes: &[RouteConfiguration]) {
    assert!(!routes.is_empty(), "{label}: nothing to validate");
    if let Err(e) = validate(routes) {
        panic!(
            "{label}: Envoy rejects the route configurations {:?}:\n{e}",
            routes.iter().map(|r| &r.name).collect::<Vec<_>>()
        );
    }
}

/// The check itself can fail: Envoy refuses two virtual hosts sharing a domain, the mistake rudder's dedupe avoids.
#[test]
fn envoy_validation_rejects_duplicate_domains() {
    let snap = snapshot(FEATURES);
    let mut rc = route_configs(&sidecar(&snap, "shop", "app-1")).remove(0);
    let mut copy = rc.virtual_hosts[0].clone();
    copy.name = "copy".into();
    rc.virtual_hosts.insert(0, copy);
    let err = validate(&[rc]).expect_err("duplicate domains must be rejected");
    assert!(
        err.contains("Only unique values for domains are permitted"),
        "{err}"
    );
}

#[test]
fn envoy_validates_the_routes_of_every_book_scenario() {
    for (label, files) in SCENARIOS {
        let snap = snapshot(&scenario_yaml(files, 80));
        let routes = generated(&snap);
        let names: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
        assert!(names.contains(&"80"), "{label}: {names:?}");
        assert_eq!(
            names.contains(&"http.80"),
            has_gateway(files),
            "{label}: {names:?}"
        );
        envoy_validates(label, &routes);
    }
}

/// One VirtualService per feature, plus a delegate, a TrafficSplit and consistent-hash DestinationRules.
const FEATURES: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: app-1, namespace: shop, labels: {app: app, version: v1}}
spec:
  containers: [{name: app, ports: [{name: http, containerPort: 8080}]}]
status: {phase: Running, podIP: 10.0.0.5}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  selector: {app: reviews}
  ports: [{name: http, port: 9080}, {name: grpc-api, port: 9090}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.20
  ports: [{name: http, port: 8000}]
---
apiVersion: v1
kind: Service
metadata: {name: web-v1, namespace: shop}
spec:
  clusterIP: 10.96.0.21
  ports: [{name: http, port: 8000}]
---
apiVersion: v1
kind: Service
metadata: {name: web-v2, namespace: shop}
spec:
  clusterIP: 10.96.0.22
  ports: [{name: http, port: 8000}]
---
apiVersion: split.smi-spec.io/v1alpha1
kind: TrafficSplit
metadata: {name: split-sample, namespace: shop}
spec:
  service: web
  backends: [{service: web-v1, weight: 100}, {service: web-v2, weight: 900}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {consistentHash: {httpCookie: {name: session, ttl: 60s, path: /}}}
  subsets:
  - {name: v1, labels: {version: v1}}
  - name: v2
    labels: {version: v2}
    trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user}}}
  - name: v3
    labels: {version: v3}
    trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true}}}
  - name: v4
    labels: {version: v4}
    trafficPolicy: {loadBalancer: {consistentHash: {httpQueryParameterName: u}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - name: matches
    match:
    - {name: exact, uri: {exact: /exact}, method: {exact: GET}, scheme: {exact: http}, authority: {prefix: rev}}
    - uri: {regex: "/re/[0-9]+"}
      ignoreUriCase: true
      headers: {x-version: {exact: "2"}, x-present: {}, x-prefix: {prefix: a}, x-re: {regex: "j.*"}}
      withoutHeaders: {x-debug: {}, x-not: {exact: "1"}}
      queryParams: {q: {exact: v}, p: {}, r: {regex: "[a-z]+"}}
    route: [{destination: {host: reviews, subset: v2}}]
  - name: weighted
    match: [{uri: {prefix: /weighted}}]
    route:
    - {destination: {host: reviews, subset: v1}, weight: 90, headers: {request: {set: {x-w: "1"}}, response: {remove: [x-r]}}}
    - {destination: {host: reviews, subset: v3}, weight: 10}
  - name: rewrite
    match: [{uri: {prefix: /old/}}]
    rewrite: {uri: /new/, authority: new.example}
    route: [{destination: {host: reviews, subset: v4}}]
  - name: rewrite-exact
    match: [{uri: {exact: /exact-old}}]
    rewrite: {uri: /exact-new}
    route: [{destination: {host: reviews}}]
  - name: regex-match-rewrite
    match: [{uri: {regex: "/legacy/[a-z]+"}}]
    rewrite: {uri: /modern}
    route: [{destination: {host: reviews}}]
  - name: regex-rewrite
    match: [{uri: {prefix: /rx/}}]
    rewrite: {uriRegexRewrite: {match: "^/rx/(.*)$", rewrite: "/\\1"}}
    route: [{destination: {host: reviews}}]
  - name: redirect
    match: [{uri: {prefix: /redirect}}]
    redirect: {uri: /elsewhere, authority: other.example, scheme: https, port: 8443, redirectCode: 308}
  - name: direct
    match: [{uri: {prefix: /teapot}}]
    directResponse: {status: 418, body: {string: teapot}}
  - name: headers
    match: [{uri: {prefix: /headers}}]
    headers:
      request: {set: {x-set: a, host: rewritten.example}, add: {x-add: b}, remove: [x-remove]}
      response: {set: {x-resp: c}, add: {x-resp-add: d}, remove: [server-timing]}
    route: [{destination: {host: reviews}}]
  - name: fault
    match: [{uri: {prefix: /fault}}]
    fault:
      delay: {fixedDelay: 5s, percentage: {value: 40}}
      abort: {httpStatus: 500, percentage: {value: 60}}
    route: [{destination: {host: reviews}}]
  - name: grpc-fault
    match: [{uri: {prefix: /grpc-fault}}]
    fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 1.5}}}
    route: [{destination: {host: reviews}}]
  - name: resilience
    match: [{uri: {prefix: /resilience}}]
    timeout: 30s
    retries: {attempts: 10, perTryTimeout: 3s, retryOn: "5xx,connect-failure,refused-stream,503", retryRemoteLocalities: true}
    route: [{destination: {host: reviews}}]
  - name: no-retries
    match: [{uri: {prefix: /no-retries}}]
    retries: {attempts: 0}
    route: [{destination: {host: reviews}}]
  - name: mirror
    match: [{uri: {prefix: /mirror}}]
    mirror: {host: reviews, subset: v2}
    mirrorPercentage: {value: 12.5}
    mirrors: [{destination: {host: web}, percentage: {value: 50}}]
    route: [{destination: {host: reviews, subset: v1}}]
  - name: cors
    match: [{uri: {prefix: /cors}}]
    corsPolicy:
      allowOrigin: ["https://book.example"]
      allowOrigins: [{prefix: "https://app."}, {regex: "https://.*\\.dev"}]
      allowMethods: [GET, POST]
      allowHeaders: [x-a]
      exposeHeaders: [x-b]
      maxAge: 24h
      allowCredentials: true
    route: [{destination: {host: reviews}}]
  - name: delegated
    match: [{uri: {prefix: /team}}]
    delegate: {name: team, namespace: shop}
  - name: default
    route: [{destination: {host: reviews, subset: v1}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: team, namespace: shop}
spec:
  http:
  - match: [{uri: {prefix: /team/a}}]
    route: [{destination: {host: reviews, subset: v3}}]
  - route: [{destination: {host: reviews}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: external, namespace: shop}
spec:
  hosts: [fruits.example.io, "*.wild.example.io"]
  http:
  - route: [{destination: {host: reviews, port: {number: 9080}}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: shop}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*"]
  - port: {number: 8081, name: http-redirect, protocol: HTTP}
    hosts: ["*.example.io"]
    tls: {httpsRedirect: true}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge, namespace: shop}
spec:
  hosts: ["*.example.io", reviews.example.io]
  gateways: [edge]
  http:
  - match: [{uri: {prefix: /api}, gateways: [edge]}]
    rewrite: {uri: /}
    route: [{destination: {host: reviews}}]
  - route: [{destination: {host: web}, weight: 50}, {destination: {host: reviews}, weight: 50}]
---
apiVersion: v1
kind: Pod
metadata: {name: gw-1, namespace: istio-system, labels: {istio: ingressgateway}}
spec:
  containers: [{name: istio-proxy}]
status: {phase: Running, podIP: 10.0.0.9}
"#;

#[test]
fn envoy_validates_every_virtual_service_feature() {
    let snap = snapshot(FEATURES);
    let mut routes = route_configs(&sidecar(&snap, "shop", "app-1"));
    let names: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["8000", "9080", "9090"]);
    let rc9080 = &routes[1];
    let reviews = rc9080
        .virtual_hosts
        .iter()
        .find(|v| v.name == "reviews.shop.svc.cluster.local:9080")
        .unwrap();
    // Every rule made it (two matches for the first; the delegate brings two routes).
    assert_eq!(
        reviews.routes.len(),
        19,
        "{:#?}",
        reviews.routes.iter().map(|r| &r.name).collect::<Vec<_>>()
    );
    let gw = route_configs(&router(&snap, "istio-system", "gw-1", &[]));
    let gw_names: Vec<&str> = gw.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(gw_names, ["http.8080", "http.8081"]);
    routes.extend(gw);
    envoy_validates("features", &routes);
}

// ---- over ADS ------------------------------------------------------------------------------------------------

/// The dynamic route configurations in Envoy's dump, by name.
fn dumped_routes(dump: &Value) -> Vec<(String, Value)> {
    dump_entries(dump, "RoutesConfigDump", "dynamic_route_configs")
        .into_iter()
        .map(|r| {
            (
                r["route_config"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                r["route_config"].clone(),
            )
        })
        .collect()
}

async fn wait_dumped_routes(envoy: &Envoy, names: &[String]) -> Vec<(String, Value)> {
    envoy
        .wait_dump(&format!("routes {names:?}"), ADMIN_TIMEOUT, |dump| {
            let routes = dumped_routes(dump);
            if names.iter().all(|n| routes.iter().any(|r| &r.0 == n)) {
                return Ok(routes);
            }
            Err(format!(
                "has {:?}",
                routes.iter().map(|r| &r.0).collect::<Vec<_>>()
            ))
        })
        .await
}

fn vhost<'a>(rc: &'a Value, name: &str) -> &'a Value {
    rc["virtual_hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no vhost {name} in {rc:#}"))
}

/// Runs one scenario against a real sidecar and gateway; returns (sidecar routes, gateway routes) as dumped.
async fn serve_scenario(
    files: &[&str],
    gw_port: u16,
) -> (Vec<(String, Value)>, Vec<(String, Value)>) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("book.yaml"), scenario_yaml(files, gw_port)).unwrap();
    let bound = start(dir.path()).await;
    let registry = bound.xds_registry.clone().unwrap();
    let xds = bound.xds_addr.unwrap();
    let side = Envoy::start(&bootstrap(
        &format!("sidecar~127.0.0.1~{SIDECAR_POD}.{NS}~{NS}.svc.cluster.local"),
        "juice-shop-api.micro-shake-factory",
        xds,
        AdsApi::Grpc,
    ))
    .await;
    let gw = Envoy::start(&bootstrap(
        &format!("router~127.0.0.2~{GATEWAY_POD}.istio-system~istio-system.svc.cluster.local"),
        "istio-ingressgateway.istio-system",
        xds,
        AdsApi::DeltaGrpc,
    ))
    .await;
    let side_names = vec!["80".to_string()];
    let gw_names = if has_gateway(files) {
        vec![format!("http.{gw_port}")]
    } else {
        Vec::new()
    };
    wait_acked(&registry, SIDECAR_POD, &[ROUTE], |c| {
        side_names
            .iter()
            .all(|n| c.types[ROUTE].sent.contains_key(n))
    })
    .await;
    let side_routes = wait_dumped_routes(&side, &side_names).await;
    let gw_routes = if gw_names.is_empty() {
        Vec::new()
    } else {
        wait_acked(&registry, GATEWAY_POD, &[ROUTE], |c| {
            gw_names.iter().all(|n| c.types[ROUTE].sent.contains_key(n))
        })
        .await;
        wait_dumped_routes(&gw, &gw_names).await
    };
    // Nothing was NACKed by either proxy, for any type.
    for c in registry.connections() {
        for (ty, t) in &c.types {
            assert!(
                t.last_nack.is_none(),
                "{} NACKed {ty}: {:#?}",
                c.proxy.id.pod,
                t.last_nack
            );
        }
    }
    drop(side);
    drop(gw);
    bound.shutdown().await;
    (side_routes, gw_routes)
}

fn find<'a>(routes: &'a [(String, Value)], name: &str) -> &'a Value {
    &routes.iter().find(|r| r.0 == name).unwrap().1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_envoys_ack_the_book_chapter_3_and_4_5_routes() {
    let _serial = ENVOY_LOCK.lock().await;
    for (label, files) in SCENARIOS {
        let gw_port = free_port();
        let (side, gw) = serve_scenario(files, gw_port).await;
        let side80 = find(&side, "80");
        let gw_name = format!("http.{gw_port}");
        let gw_rc = if has_gateway(files) {
            find(&gw, &gw_name).clone()
        } else {
            assert!(gw.is_empty(), "{label}: {gw:?}");
            Value::Null
        };
        let gw_rc = &gw_rc;
        // The sidecar routes the book's services by name; the gateway its public hosts.
        let juice = vhost(
            side80,
            "juice-shop-api-service.micro-shake-factory.svc.cluster.local:80",
        );
        assert!(
            juice["domains"]
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d == "juice-shop-api-service"),
            "{label}: {juice:#}"
        );
        let last = side80["virtual_hosts"].as_array().unwrap().last().unwrap();
        assert_eq!(last["name"], "allow_any", "{label}");
        match label {
            l if l.starts_with("chapter 3") => {
                let fruits = vhost(gw_rc, &format!("fruits.istio-succinctly.io:{gw_port}"));
                assert_eq!(
                    fruits["routes"][0]["route"]["cluster"],
                    "outbound|80||fruits-api-service.micro-shake-factory.svc.cluster.local",
                    "{label}: {fruits:#}"
                );
                vhost(gw_rc, &format!("juice-shop.istio-succinctly.io:{gw_port}"));
            }
            l if l.starts_with("S9") => {
                let fruits = vhost(gw_rc, &format!("fruits.istio-succinctly.io:{gw_port}"));
                let routes = fruits["routes"].as_array().unwrap();
                assert_eq!(
                    routes[0]["match"]["headers"][0]["name"], "version",
                    "{fruits:#}"
                );
                assert_eq!(
                    routes[0]["route"]["cluster"],
                    "outbound|80|v2|fruits-api-service.micro-shake-factory.svc.cluster.local"
                );
                assert_eq!(
                    routes[1]["route"]["cluster"],
                    "outbound|80|v1|fruits-api-service.micro-shake-factory.svc.cluster.local"
                );
            }
            l if l.starts_with("S10") => {
                let fruits = vhost(gw_rc, &format!("fruits.istio-succinctly.io:{gw_port}"));
                let fault = &fruits["routes"][1]["typed_per_filter_config"][FAULT_FILTER];
                assert_eq!(fault["abort"]["http_status"], 500, "{fruits:#}");
                assert_eq!(fault["abort"]["percentage"]["numerator"], 600000);
                assert_eq!(fault["delay"]["fixed_delay"], "5s");
            }
            l if l.starts_with("S11") => {
                let fruits = vhost(gw_rc, &format!("fruits.istio-succinctly.io:{gw_port}"));
                let clusters = fruits["routes"][0]["route"]["weighted_clusters"]["clusters"]
                    .as_array()
                    .unwrap_or_else(|| panic!("{fruits:#}"));
                let total: u64 = clusters.iter().map(|c| c["weight"].as_u64().unwrap()).sum();
                assert_eq!(total, 100);
                assert_eq!(clusters.len(), 2);
            }
            l if l.starts_with("S12") => {
                let js = vhost(gw_rc, &format!("juice-shop.istio-succinctly.io:{gw_port}"));
                let route = &js["routes"][0]["route"];
                assert_eq!(route["timeout"], "30s", "{js:#}");
                assert_eq!(route["retry_policy"]["num_retries"], 10);
                assert_eq!(route["retry_policy"]["per_try_timeout"], "3s");
                assert_eq!(
                    route["retry_policy"]["retry_on"],
                    "5xx,connect-failure,refused-stream"
                );
            }
            _ => {
                // A mesh-bound VirtualService for an external name: the sidecar routes it, the gateway has no
                // VirtualService bound and answers 404 (no vhost).
                let fruits = vhost(side80, "fruits.istio-succinctly.io:80");
                assert_eq!(
                    fruits["routes"][0]["route"]["cluster"],
                    "outbound|80||fruits-api-service.micro-shake-factory.svc.cluster.local"
                );
            }
        }
    }
}

// ---- real traffic through a gateway ---------------------------------------------------------------------------

/// A gateway whose routes need no upstream: direct responses, redirects, an injected abort, a CORS preflight,
/// wildcard hosts, an unknown host and an HTTPS-redirect server.
fn traffic_yaml(port: u16, redirect_port: u16) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {GATEWAY_POD}, namespace: istio-system, labels: {{istio: ingressgateway}}}}
spec:
  containers: [{{name: istio-proxy}}]
status: {{phase: Running, podIP: 127.0.0.2}}
---
apiVersion: v1
kind: Service
metadata: {{name: fruits, namespace: shop}}
spec:
  clusterIP: 127.0.0.30
  ports: [{{name: http, port: 20080}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge, namespace: shop}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {port}, name: http, protocol: HTTP}}
    hosts: [fruits.example.io, "*.juice.example.io"]
  - port: {{number: {redirect_port}, name: http-redirect, protocol: HTTP}}
    hosts: [secure.example.io]
    tls: {{httpsRedirect: true}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: fruits, namespace: shop}}
spec:
  hosts: [fruits.example.io]
  gateways: [edge]
  http:
  - match: [{{uri: {{exact: /teapot}}}}]
    directResponse: {{status: 418, body: {{string: short and stout}}}}
  - match: [{{uri: {{prefix: /old}}}}]
    redirect: {{uri: /new, authority: new.example.io}}
  - match: [{{headers: {{x-fault: {{exact: abort}}}}}}]
    fault: {{abort: {{httpStatus: 503, percentage: {{value: 100}}}}}}
    route: [{{destination: {{host: fruits}}}}]
  - match: [{{uri: {{prefix: /cors}}}}]
    corsPolicy:
      allowOrigins: [{{exact: "https://ok.example"}}]
      allowMethods: [GET]
    # Envoy's CORS filter only acts on forwarding routes; the preflight is answered before the router, so the
    # upstream need not exist.
    route: [{{destination: {{host: fruits}}}}]
  - directResponse: {{status: 200, body: {{string: fruits}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: juice, namespace: shop}}
spec:
  hosts: ["*.juice.example.io"]
  gateways: [edge]
  http:
  - directResponse: {{status: 200, body: {{string: juice}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: secure, namespace: shop}}
spec:
  hosts: [secure.example.io]
  gateways: [edge]
  http:
  - directResponse: {{status: 200, body: {{string: "plain http should have been redirected"}}}}
"#
    )
}

/// Sends `method path` with `Host: host` to the gateway on loopback, retrying while the listener is not up yet.
async fn send(
    client: &reqwest::Client,
    method: reqwest::Method,
    port: u16,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let deadline = tokio::time::Instant::now() + ADMIN_TIMEOUT;
    loop {
        let mut req = client
            .request(method.clone(), format!("http://127.0.0.1:{port}{path}"))
            .header("host", host);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        match req.send().await {
            Ok(resp) => return resp,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "gateway on {port} never answered: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_routes_answer_real_requests() {
    let _serial = ENVOY_LOCK.lock().await;
    let (port, redirect_port) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mesh.yaml"),
        traffic_yaml(port, redirect_port),
    )
    .unwrap();
    let bound = start(dir.path()).await;
    let registry = bound.xds_registry.clone().unwrap();
    let gw = Envoy::start(&bootstrap(
        &format!("router~127.0.0.2~{GATEWAY_POD}.istio-system~istio-system.svc.cluster.local"),
        "istio-ingressgateway.istio-system",
        bound.xds_addr.unwrap(),
        AdsApi::Grpc,
    ))
    .await;
    let names = vec![format!("http.{port}"), format!("http.{redirect_port}")];
    wait_acked(&registry, GATEWAY_POD, &[ROUTE], |c| {
        names.iter().all(|n| c.types[ROUTE].sent.contains_key(n))
    })
    .await;
    wait_dumped_routes(&gw, &names).await;

    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let get = reqwest::Method::GET;

    let r = send(
        &client,
        get.clone(),
        port,
        "fruits.example.io",
        "/teapot",
        &[],
    )
    .await;
    assert_eq!(r.status(), 418);
    assert_eq!(r.text().await.unwrap(), "short and stout");

    let r = send(
        &client,
        get.clone(),
        port,
        "fruits.example.io",
        "/old/x",
        &[],
    )
    .await;
    assert_eq!(r.status(), 301);
    assert_eq!(r.headers()["location"], "http://new.example.io/new");

    let r = send(
        &client,
        get.clone(),
        port,
        "fruits.example.io",
        "/",
        &[("x-fault", "abort")],
    )
    .await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.text().await.unwrap(), "fault filter abort");

    // CORS preflight answered by the CORS filter from the route's policy; a foreign origin gets no grant.
    let preflight =
        |origin: &'static str| [("origin", origin), ("access-control-request-method", "GET")];
    let r = send(
        &client,
        reqwest::Method::OPTIONS,
        port,
        "fruits.example.io",
        "/cors",
        &preflight("https://ok.example"),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://ok.example"
    );
    let r = send(
        &client,
        reqwest::Method::OPTIONS,
        port,
        "fruits.example.io",
        "/cors",
        &preflight("https://evil.example"),
    )
    .await;
    assert!(r.headers().get("access-control-allow-origin").is_none());

    // Host with port, a wildcard host, an unknown host.
    let r = send(
        &client,
        get.clone(),
        port,
        &format!("fruits.example.io:{port}"),
        "/",
        &[],
    )
    .await;
    assert_eq!(r.text().await.unwrap(), "fruits");
    let r = send(&client, get.clone(), port, "a.juice.example.io", "/", &[]).await;
    assert_eq!(r.text().await.unwrap(), "juice");
    let r = send(&client, get.clone(), port, "unknown.example.io", "/", &[]).await;
    assert_eq!(r.status(), 404);

    // `tls.httpsRedirect`: plain HTTP is sent to https.
    let r = send(
        &client,
        get,
        redirect_port,
        "secure.example.io",
        "/x?y=1",
        &[],
    )
    .await;
    assert_eq!(r.status(), 301);
    assert_eq!(r.headers()["location"], "https://secure.example.io/x?y=1");

    for c in registry.connections() {
        for (ty, t) in &c.types {
            assert!(t.last_nack.is_none(), "NACK on {ty}: {:#?}", t.last_nack);
        }
    }
    drop(gw);
    bound.shutdown().await;
}

// ---- delegate VirtualServices, end to end --------------------------------------------------------------------

/// A root VirtualService on a gateway delegates `/team` to a host-less VirtualService in another namespace (loaded
/// from the config directory: validation accepts delegates). Real requests reach the delegate's destinations, with
/// the root's header operation inherited; the root's other rule still answers the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegate_virtual_services_route_real_requests() {
    let _serial = ENVOY_LOCK.lock().await;
    let a_port = http_named("127.0.0.11", "a").await;
    let b_port = http_named("127.0.0.12", "b").await;
    let gw_port = free_port();
    let yaml = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {GATEWAY_POD}, namespace: istio-system, labels: {{istio: ingressgateway}}}}
spec:
  containers: [{{name: istio-proxy}}]
status: {{phase: Running, podIP: 127.0.0.2}}
---
apiVersion: v1
kind: Pod
metadata: {{name: team-a-1, namespace: shop, labels: {{app: team-a}}}}
spec:
  containers: [{{name: app, ports: [{{name: http, containerPort: {a_port}}}]}}]
status: {{phase: Running, podIP: 127.0.0.11}}
---
apiVersion: v1
kind: Pod
metadata: {{name: team-b-1, namespace: shop, labels: {{app: team-b}}}}
spec:
  containers: [{{name: app, ports: [{{name: http, containerPort: {b_port}}}]}}]
status: {{phase: Running, podIP: 127.0.0.12}}
---
apiVersion: v1
kind: Service
metadata: {{name: team-a, namespace: shop}}
spec:
  clusterIP: 127.0.0.51
  selector: {{app: team-a}}
  ports: [{{name: http, port: 20800, targetPort: http}}]
---
apiVersion: v1
kind: Service
metadata: {{name: team-b, namespace: shop}}
spec:
  clusterIP: 127.0.0.52
  selector: {{app: team-b}}
  ports: [{{name: http, port: 20800, targetPort: http}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge, namespace: shop}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {gw_port}, name: http, protocol: HTTP}}
    hosts: [shop.example.io]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: root, namespace: shop}}
spec:
  hosts: [shop.example.io]
  gateways: [edge]
  http:
  - name: team
    match: [{{uri: {{prefix: /team}}}}]
    headers: {{response: {{set: {{x-root: inherited}}}}}}
    delegate: {{name: team, namespace: teams}}
  - directResponse: {{status: 200, body: {{string: root}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: team, namespace: teams}}
spec:
  http:
  - name: a
    match: [{{uri: {{prefix: /team/a}}}}]
    route: [{{destination: {{host: team-a.shop.svc.cluster.local, port: {{number: 20800}}}}}}]
  - route: [{{destination: {{host: team-b.shop.svc.cluster.local, port: {{number: 20800}}}}}}]
"#
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), yaml).unwrap();
    let bound = start(dir.path()).await;
    // The file source took the delegate: it is in the store, not rejected.
    assert!(
        bound
            .store
            .get(&rudder::config::ObjectKey::new(
                rudder::config::Kind::VirtualService,
                "teams",
                "team"
            ))
            .is_some(),
        "the delegate VirtualService was not loaded"
    );
    let registry = bound.xds_registry.clone().unwrap();
    let gw = Envoy::start(&bootstrap(
        &format!("router~127.0.0.2~{GATEWAY_POD}.istio-system~istio-system.svc.cluster.local"),
        "istio-ingressgateway.istio-system",
        bound.xds_addr.unwrap(),
        AdsApi::DeltaGrpc,
    ))
    .await;
    let names = vec![format!("http.{gw_port}")];
    wait_acked(&registry, GATEWAY_POD, &[ROUTE], |c| {
        names.iter().all(|n| c.types[ROUTE].sent.contains_key(n))
    })
    .await;
    let routes = wait_dumped_routes(&gw, &names).await;
    let vh = vhost(
        find(&routes, &names[0]),
        &format!("shop.example.io:{gw_port}"),
    );
    let route_names: Vec<&str> = vh["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(route_names, ["team-a", "team", ""], "{vh:#}");

    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // Endpoints may trail the routes: retry until the delegate's first destination answers.
    let deadline = tokio::time::Instant::now() + ADMIN_TIMEOUT;
    let r = loop {
        let r = send(
            &client,
            reqwest::Method::GET,
            gw_port,
            "shop.example.io",
            "/team/a/x",
            &[],
        )
        .await;
        if r.status() == 200 || tokio::time::Instant::now() >= deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-root"], "inherited");
    assert_eq!(r.text().await.unwrap(), "a /team/a/x");
    let r = send(
        &client,
        reqwest::Method::GET,
        gw_port,
        "shop.example.io",
        "/team/zz",
        &[],
    )
    .await;
    assert_eq!(r.headers()["x-root"], "inherited");
    assert_eq!(r.text().await.unwrap(), "b /team/zz");
    let r = send(
        &client,
        reqwest::Method::GET,
        gw_port,
        "shop.example.io",
        "/other",
        &[],
    )
    .await;
    assert!(r.headers().get("x-root").is_none());
    assert_eq!(r.text().await.unwrap(), "root");
    // istiod's gateway domains match the host with any port (a load balancer's or a port-forward's).
    let r = send(
        &client,
        reqwest::Method::GET,
        gw_port,
        "shop.example.io:31380",
        "/other",
        &[],
    )
    .await;
    assert_eq!(r.text().await.unwrap(), "root");

    for c in registry.connections() {
        for (ty, t) in &c.types {
            assert!(t.last_nack.is_none(), "NACK on {ty}: {:#?}", t.last_nack);
        }
    }
    drop(gw);
    bound.shutdown().await;
}
