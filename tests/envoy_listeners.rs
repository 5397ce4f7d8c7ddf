//! Real Envoy 1.40 against the whole control plane (`app::build` over a config directory): every listener
//! rudder generates for a sidecar is accepted, the outbound capture listener follows the mesh's outbound
//! policy as it changes, and a gateway routes real traffic on loopback to a local HTTP server.

use std::path::Path;
use std::time::Duration;

use rudder::test_helpers::envoy::{ADMIN_TIMEOUT, AdsApi, Envoy, bootstrap, dump_entries};
use rudder::test_helpers::loopback::{http_client, http_server, tcp_named};
use rudder::test_helpers::mesh::{free_port, start_rudder as start, wait_acked};
use rudder::test_helpers::netns;
use rudder::xds::Registry;
use rudder::xds::type_url::LISTENER;
use serde_json::Value;

/// Pods and services on loopback: the sidecar's pod is 127.0.0.1, services use 127.0.0.x VIPs and ports ≥ 20000
/// so nothing collides with the machine's own listeners (the per-port outbound listeners don't bind anyway).
fn mesh_yaml(app_port: u16, policy: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: shop}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: istio, namespace: istio-system}}
data:
  mesh: |
    accessLogFile: /dev/stdout
    outboundTrafficPolicy:
      mode: {policy}
---
apiVersion: v1
kind: Pod
metadata: {{name: app-1, namespace: shop, labels: {{app: app, version: v1}}}}
spec:
  containers:
  - name: app
    ports:
    - {{name: http-web, containerPort: {app_port}}}
    - {{name: tcp-admin, containerPort: 20901}}
    - {{name: grpc-api, containerPort: 20902}}
status: {{phase: Running, podIP: 127.0.0.1}}
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
kind: Service
metadata: {{name: legacy, namespace: shop}}
spec:
  clusterIP: 127.0.0.21
  selector: {{app: legacy}}
  ports:
  - {{name: tcp-legacy, port: 20080}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: example-api, namespace: shop}}
spec:
  hosts: [api.example.com]
  location: MESH_EXTERNAL
  ports: [{{number: 20443, name: tls, protocol: TLS}}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: mongo, namespace: shop}}
spec:
  hosts: [mongo.internal]
  addresses: [127.10.0.0/16]
  location: MESH_EXTERNAL
  ports: [{{number: 20017, name: mongo, protocol: MONGO}}]
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: db, namespace: shop}}
spec:
  host: db
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: db-split, namespace: shop}}
spec:
  hosts: [db]
  tcp:
  - match:
    - port: 20306
      destinationSubnets: [127.0.0.20/32]
    route:
    - destination: {{host: db, subset: v1}}
      weight: 75
    - destination: {{host: db, subset: v2}}
      weight: 25
  - route:
    - destination: {{host: db, subset: v1}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: example-tls, namespace: shop}}
spec:
  hosts: [api.example.com]
  tls:
  - match:
    - port: 20443
      sniHosts: [api.example.com]
    route:
    - destination: {{host: api.example.com, port: {{number: 20443}}}}
"#
    )
}

const SIDECAR_NODE: &str = "sidecar~127.0.0.1~app-1.shop~shop.svc.cluster.local";

/// The sidecar's expected listeners (the `app` Service is HTTP: it is served by `0.0.0.0_20080`, not a VIP).
const SIDECAR_LISTENERS: [&str; 7] = [
    "0.0.0.0_20017",
    "0.0.0.0_20080",
    "0.0.0.0_20443",
    "127.0.0.20_20306",
    "127.0.0.21_20080",
    "virtualInbound",
    "virtualOutbound",
];

/// A dynamic listener as Envoy holds it.
#[derive(Debug)]
struct Held {
    name: String,
    /// The active config, else the warming one.
    config: Value,
    /// Set when Envoy failed to apply an update.
    error: Option<Value>,
    /// Warm (its RDS route arrived) and serving.
    active: bool,
}

/// Every dynamic listener in a config dump, active or warming.
fn dumped_listeners(dump: &Value) -> Vec<Held> {
    dump_entries(dump, "ListenersConfigDump", "dynamic_listeners")
        .into_iter()
        .map(|l| {
            let active = !l["active_state"].is_null();
            let state = if active {
                &l["active_state"]
            } else {
                &l["warming_state"]
            };
            Held {
                name: l["name"].as_str().unwrap_or_default().to_owned(),
                config: state["listener"].clone(),
                error: (!l["error_state"].is_null()).then(|| l["error_state"].clone()),
                active,
            }
        })
        .collect()
}

/// Polls the dump until `cond` holds on its listeners.
async fn wait_listeners(envoy: &Envoy, what: &str, cond: impl Fn(&[Held]) -> bool) -> Vec<Held> {
    envoy
        .wait_dump(what, ADMIN_TIMEOUT, |dump| {
            let ls = dumped_listeners(dump);
            if cond(&ls) {
                return Ok(ls);
            }
            Err(format!(
                "listeners: {:#?}",
                ls.iter().map(|l| (&l.name, l.active)).collect::<Vec<_>>()
            ))
        })
        .await
}

/// The cluster of `virtualOutbound`'s default chain as Envoy holds it.
fn outbound_fallthrough(ls: &[Held]) -> Option<String> {
    let l = &ls.iter().find(|l| l.name == "virtualOutbound")?.config;
    l["default_filter_chain"]["filters"][0]["typed_config"]["cluster"]
        .as_str()
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_accepts_every_sidecar_listener_and_follows_the_outbound_policy() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), mesh_yaml(20900, "ALLOW_ANY")).unwrap();
    let bound = start(dir.path()).await;
    let registry = bound.xds_registry.clone().unwrap();
    let envoy = Envoy::start(&bootstrap(
        SIDECAR_NODE,
        "app.shop",
        bound.xds_addr.unwrap(),
        AdsApi::Grpc,
    ))
    .await;

    // (a) Every listener is ACKed: none NACKed in rudder's registry, none in error in Envoy's dump.
    let conn = wait_acked(&registry, "app-1", &[LISTENER], |_| true).await;
    let mut sent: Vec<&str> = conn.types[LISTENER].sent.names();
    sent.sort();
    let mut expected = SIDECAR_LISTENERS.to_vec();
    expected.sort();
    assert_eq!(sent, expected);
    // Active, not just accepted: the HTTP listeners' RDS routes arrived too.
    let ls = wait_listeners(&envoy, "every sidecar listener active", |ls| {
        SIDECAR_LISTENERS
            .iter()
            .all(|n| ls.iter().any(|l| l.name == *n && l.active))
    })
    .await;
    for l in &ls {
        assert!(
            l.error.is_none(),
            "listener {} in error: {:?}",
            l.name,
            l.error
        );
    }
    // What Envoy holds is what rudder meant: the TCP split and the inbound chains survived the round trip.
    let db = &ls
        .iter()
        .find(|l| l.name == "127.0.0.20_20306")
        .unwrap()
        .config;
    let weighted =
        &db["filter_chains"][0]["filters"][0]["typed_config"]["weighted_clusters"]["clusters"];
    assert_eq!(
        weighted[0]["name"], "outbound|20306|v1|db.shop.svc.cluster.local",
        "{db:#}"
    );
    assert_eq!(weighted[1]["weight"], 25);
    let inbound = &ls
        .iter()
        .find(|l| l.name == "virtualInbound")
        .unwrap()
        .config;
    let chains: Vec<&str> = inbound["filter_chains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        chains,
        [
            "virtualInbound-blackhole",
            "0.0.0.0_20900",
            "0.0.0.0_20901",
            "0.0.0.0_20902"
        ]
    );
    let log = envoy.log_tail(400);
    assert!(
        !log.contains("rejected") && !log.contains("error adding listener"),
        "{log}"
    );

    // (c) ALLOW_ANY: unknown destinations pass through.
    assert_eq!(
        outbound_fallthrough(&ls).as_deref(),
        Some("PassthroughCluster")
    );
    // REGISTRY_ONLY (the mesh config changes on disk): they go to the black hole.
    std::fs::write(
        dir.path().join("mesh.yaml"),
        mesh_yaml(20900, "REGISTRY_ONLY"),
    )
    .unwrap();
    let ls = wait_listeners(&envoy, "virtualOutbound to BlackHoleCluster", |ls| {
        outbound_fallthrough(ls).as_deref() == Some("BlackHoleCluster")
    })
    .await;
    for l in &ls {
        assert!(
            l.error.is_none(),
            "listener {} in error: {:?}",
            l.name,
            l.error
        );
    }
    assert!(
        registry
            .connections()
            .iter()
            .all(|c| { c.types.get(LISTENER).is_none_or(|t| t.last_nack.is_none()) })
    );

    drop(envoy);
    bound.shutdown().await;
}

fn gateway_yaml(app_port: u16, gw_port: u16) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: ingress-1, namespace: istio-system, labels: {{istio: ingressgateway}}}}
spec:
  containers:
  - name: istio-proxy
status: {{phase: Running, podIP: 127.0.0.2}}
---
apiVersion: v1
kind: Pod
metadata: {{name: fruits-1, namespace: shop, labels: {{app: fruits}}}}
spec:
  containers:
  - name: fruits
    ports:
    - {{name: http, containerPort: {app_port}}}
status: {{phase: Running, podIP: 127.0.0.1}}
---
apiVersion: v1
kind: Service
metadata: {{name: fruits, namespace: shop}}
spec:
  clusterIP: 127.0.0.30
  selector: {{app: fruits}}
  ports:
  - {{name: http, port: 20080, targetPort: http}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: fruits-gw, namespace: shop}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {gw_port}, name: http, protocol: HTTP}}
    hosts: [fruits.example.com]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: juice-gw, namespace: shop}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {gw_port}, name: http, protocol: HTTP}}
    hosts: [juice.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: fruits, namespace: shop}}
spec:
  hosts: [fruits.example.com]
  gateways: [fruits-gw]
  http:
  - route:
    - destination: {{host: fruits, port: {{number: 20080}}}}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_listener_routes_real_traffic_to_a_local_server() {
    let up = http_server("127.0.0.1", "hello from fruits").await;
    let gw_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mesh.yaml"),
        gateway_yaml(up.port(), gw_port),
    )
    .unwrap();
    let bound = start(dir.path()).await;
    let registry = bound.xds_registry.clone().unwrap();
    let envoy = Envoy::start(&bootstrap(
        "router~127.0.0.2~ingress-1.istio-system~istio-system.svc.cluster.local",
        "istio-ingressgateway.istio-system",
        bound.xds_addr.unwrap(),
        AdsApi::DeltaGrpc,
    ))
    .await;

    let conn = wait_acked(&registry, "ingress-1", &[LISTENER], |_| true).await;
    let name = format!("0.0.0.0_{gw_port}");
    assert_eq!(
        conn.types[LISTENER].sent.names(),
        [name.as_str()],
        "two Gateways on one port make one listener"
    );
    let ls = wait_listeners(&envoy, "the gateway listener", |ls| {
        ls.iter().any(|l| l.name == name)
    })
    .await;
    assert!(ls.iter().all(|l| l.error.is_none()), "{ls:#?}");

    // A request with the VirtualService's host goes through the gateway listener (RDS http.<port>) to the
    // upstream; another host has no route.
    let client = http_client(Duration::from_secs(2));
    let url = format!("http://127.0.0.1:{gw_port}/shake");
    let deadline = tokio::time::Instant::now() + ADMIN_TIMEOUT;
    loop {
        let got = client
            .get(&url)
            .header("host", "fruits.example.com")
            .send()
            .await;
        if let Ok(resp) = got {
            if resp.status() == 200 {
                assert_eq!(resp.text().await.unwrap(), "hello from fruits");
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "gateway answered {} ; log:\n{}",
                resp.status(),
                envoy.log_tail(40)
            );
        } else {
            assert!(
                tokio::time::Instant::now() < deadline,
                "gateway never answered: {got:?}; log:\n{}",
                envoy.log_tail(40)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let other = client
        .get(&url)
        .header("host", "unknown.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404);

    drop(envoy);
    bound.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_passthrough_and_tcp_listeners_are_accepted() {
    let (tls_port, tcp_port) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: ingress-1, namespace: istio-system, labels: {{istio: ingressgateway}}}}
spec:
  containers:
  - name: istio-proxy
status: {{phase: Running, podIP: 127.0.0.2}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: example-api, namespace: shop}}
spec:
  hosts: [api.example.com]
  location: MESH_EXTERNAL
  ports: [{{number: 20443, name: tls, protocol: TLS}}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge, namespace: shop}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {tls_port}, name: tls, protocol: TLS}}
    hosts: [api.example.com, "*.example.org"]
    tls: {{mode: PASSTHROUGH}}
  - port: {{number: {tcp_port}, name: tcp, protocol: TCP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: edge, namespace: shop}}
spec:
  hosts: [api.example.com, "*.example.org"]
  gateways: [edge]
  tls:
  - match:
    - port: {tls_port}
      sniHosts: [api.example.com]
    route:
    - destination: {{host: api.example.com, port: {{number: 20443}}}}
  - match:
    - port: {tls_port}
      sniHosts: ["*.example.org"]
    route:
    - destination: {{host: api.example.com, port: {{number: 20443}}}}
      weight: 50
    - destination: {{host: other.example.org, port: {{number: 20443}}}}
      weight: 50
  tcp:
  - match: [{{port: {tcp_port}}}]
    route:
    - destination: {{host: api.example.com, port: {{number: 20443}}}}
"#
    );
    std::fs::write(dir.path().join("mesh.yaml"), yaml).unwrap();
    let bound = start(dir.path()).await;
    let registry = bound.xds_registry.clone().unwrap();
    let envoy = Envoy::start(&bootstrap(
        "router~127.0.0.2~ingress-1.istio-system~istio-system.svc.cluster.local",
        "istio-ingressgateway.istio-system",
        bound.xds_addr.unwrap(),
        AdsApi::Grpc,
    ))
    .await;
    wait_acked(&registry, "ingress-1", &[LISTENER], |_| true).await;
    let names = [format!("0.0.0.0_{tls_port}"), format!("0.0.0.0_{tcp_port}")];
    let ls = wait_listeners(&envoy, "the passthrough and TCP listeners", |ls| {
        names.iter().all(|n| ls.iter().any(|l| l.name == *n))
    })
    .await;
    assert!(ls.iter().all(|l| l.error.is_none()), "{ls:#?}");
    let tls = &ls.iter().find(|l| l.name == names[0]).unwrap().config;
    let sni: Vec<&Value> = tls["filter_chains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["filter_chain_match"]["server_names"])
        .collect();
    assert_eq!(
        sni,
        [
            &serde_json::json!(["api.example.com"]),
            &serde_json::json!(["*.example.org"])
        ]
    );
    // Both listeners really bound: Envoy accepts connections on them.
    for port in [tls_port, tcp_port] {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| panic!("gateway port {port} not listening: {e}"));
    }

    drop(envoy);
    bound.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_accepts_the_book_example_sidecar_listeners() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/micro-shake-factory");
    let bound = start(&examples).await;
    let registry = bound.xds_registry.clone().unwrap();
    let pod = "juice-shop-api-deployment-5f6g7h8i9-uvwxy";
    let envoy = Envoy::start(&bootstrap(
        &format!(
            "sidecar~10.44.0.21~{pod}.micro-shake-factory~micro-shake-factory.svc.cluster.local"
        ),
        "juice-shop-api.micro-shake-factory",
        bound.xds_addr.unwrap(),
        AdsApi::DeltaGrpc,
    ))
    .await;
    let conn = wait_acked(&registry, pod, &[LISTENER], |_| true).await;
    let sent = &conn.types[LISTENER].sent;
    for name in [
        "virtualOutbound",
        "virtualInbound",
        "0.0.0.0_80",
        "0.0.0.0_443",
    ] {
        assert!(
            sent.contains_key(name),
            "{name} not sent: {:?}",
            sent.names()
        );
    }
    let ls = wait_listeners(&envoy, "every book listener active", |ls| {
        sent.names()
            .into_iter()
            .all(|n| ls.iter().any(|l| l.name == *n && l.active))
    })
    .await;
    assert!(ls.iter().all(|l| l.error.is_none()), "{ls:#?}");
    // The exotic-fruits ServiceEntry (TLS, no address) is reached by SNI on the wildcard listener (next to the
    // ingress gateway's https port, whose Service has no clusterIP in the book's manifests).
    let tls = &ls.iter().find(|l| l.name == "0.0.0.0_443").unwrap().config;
    let clusters: Vec<(&Value, &Value)> = tls["filter_chains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                &c["filter_chain_match"]["server_names"][0],
                &c["filters"][0]["typed_config"]["cluster"],
            )
        })
        .collect();
    assert!(
        clusters.contains(&(
            &serde_json::json!("raw.githubusercontent.com"),
            &serde_json::json!("outbound|443||raw.githubusercontent.com")
        )),
        "{tls:#}"
    );

    drop(envoy);
    bound.shutdown().await;
}

/// The backend that answered one connection to `ip:port` ("" when Envoy closed it without a backend).
async fn tcp_call(ip: &str, port: u16) -> String {
    use tokio::io::AsyncReadExt;
    let mut s = match tokio::net::TcpStream::connect((ip, port)).await {
        Ok(s) => s,
        Err(_) => return String::new(),
    };
    let mut out = String::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out)).await;
    if read.is_err() {
        return String::new();
    }
    out
}

/// The TCP routes of both tests through `envoy`, connecting to `ip`: once both backends answer through
/// `split_port` (endpoints arrive after the listeners), every connection to `only_b_port` reaches b only (the
/// port match), 200 connections to `split_port` split 75/25 (a: mean 150, sd ≈ 6; the gate is ±5 sd), and rudder
/// holds no NACK.
async fn assert_tcp_routes(
    envoy: &Envoy,
    registry: &Registry,
    ip: &str,
    split_port: u16,
    only_b_port: u16,
) {
    let deadline = tokio::time::Instant::now() + ADMIN_TIMEOUT;
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {seen:?} answered through {ip}:{split_port}; log:\n{}",
            envoy.log_tail(40)
        );
        let got = tcp_call(ip, split_port).await;
        if got.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        } else {
            seen.insert(got);
        }
    }
    for _ in 0..30 {
        assert_eq!(tcp_call(ip, only_b_port).await, "b", "port {only_b_port}");
    }
    let mut a = 0;
    for _ in 0..200 {
        match tcp_call(ip, split_port).await.as_str() {
            "a" => a += 1,
            "b" => {}
            other => panic!("connection answered {other:?}"),
        }
    }
    assert!((120..=180).contains(&a), "a got {a} of 200 (75% expected)");
    for c in registry.connections() {
        for (ty, t) in &c.types {
            assert!(t.last_nack.is_none(), "NACK on {ty}: {:#?}", t.last_nack);
        }
    }
}

/// Two TCP servers answering `a` and `b` (on 127.0.0.11 and .12), as Pods `echo-a-1`/`echo-b-1` behind
/// Services `echo-a`/`echo-b` (port 20700) in namespace `shop`: the backends of the TCP-route tests.
async fn tcp_echo_backends() -> String {
    let (a_port, b_port) = (
        tcp_named("127.0.0.11", "a").await,
        tcp_named("127.0.0.12", "b").await,
    );
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: echo-a-1, namespace: shop, labels: {{app: echo-a}}}}
spec:
  containers: [{{name: echo, ports: [{{name: tcp-echo, containerPort: {a_port}}}]}}]
status: {{phase: Running, podIP: 127.0.0.11}}
---
apiVersion: v1
kind: Pod
metadata: {{name: echo-b-1, namespace: shop, labels: {{app: echo-b}}}}
spec:
  containers: [{{name: echo, ports: [{{name: tcp-echo, containerPort: {b_port}}}]}}]
status: {{phase: Running, podIP: 127.0.0.12}}
---
apiVersion: v1
kind: Service
metadata: {{name: echo-a, namespace: shop}}
spec:
  clusterIP: 127.0.0.41
  selector: {{app: echo-a}}
  ports: [{{name: tcp-echo, port: 20700, targetPort: tcp-echo}}]
---
apiVersion: v1
kind: Service
metadata: {{name: echo-b, namespace: shop}}
spec:
  clusterIP: 127.0.0.42
  selector: {{app: echo-b}}
  ports: [{{name: tcp-echo, port: 20700, targetPort: tcp-echo}}]
---
"#
    )
}

/// VirtualService `tcp:` routes through a real gateway Envoy: the first rule matching the connection's port wins
/// (a rule for another port placed first must not catch it), and its weighted destinations split connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_routes_match_the_port_and_split_connections_by_weight() {
    let backends = tcp_echo_backends().await;
    let (split_port, only_b_port) = (free_port(), free_port());
    let yaml = format!(
        r#"{backends}
apiVersion: v1
kind: Pod
metadata: {{name: ingress-1, namespace: istio-system, labels: {{istio: ingressgateway}}}}
spec:
  containers: [{{name: istio-proxy}}]
status: {{phase: Running, podIP: 127.0.0.2}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge, namespace: shop}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {split_port}, name: tcp-split, protocol: TCP}}
    hosts: ["*"]
  - port: {{number: {only_b_port}, name: tcp-b, protocol: TCP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo, namespace: shop}}
spec:
  hosts: ["*"]
  gateways: [edge]
  tcp:
  - match: [{{port: {only_b_port}}}]
    route:
    - destination: {{host: echo-b, port: {{number: 20700}}}}
  - match: [{{port: {split_port}}}]
    route:
    - destination: {{host: echo-a, port: {{number: 20700}}}}
      weight: 75
    - destination: {{host: echo-b, port: {{number: 20700}}}}
      weight: 25
"#
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), yaml).unwrap();
    let bound = start(dir.path()).await;
    let registry = bound.xds_registry.clone().unwrap();
    let envoy = Envoy::start(&bootstrap(
        "router~127.0.0.2~ingress-1.istio-system~istio-system.svc.cluster.local",
        "istio-ingressgateway.istio-system",
        bound.xds_addr.unwrap(),
        AdsApi::Grpc,
    ))
    .await;
    wait_acked(&registry, "ingress-1", &[LISTENER], |_| true).await;
    let names = [
        format!("0.0.0.0_{split_port}"),
        format!("0.0.0.0_{only_b_port}"),
    ];
    let ls = wait_listeners(&envoy, "the two TCP listeners", |ls| {
        names
            .iter()
            .all(|n| ls.iter().any(|l| l.name == *n && l.active))
    })
    .await;
    assert!(ls.iter().all(|l| l.error.is_none()), "{ls:#?}");
    let split = &ls.iter().find(|l| l.name == names[0]).unwrap().config;
    let tcp_proxy = &split["filter_chains"][0]["filters"][0]["typed_config"];
    let clusters: Vec<(&str, u64)> = tcp_proxy["weighted_clusters"]["clusters"]
        .as_array()
        .unwrap_or_else(|| panic!("no weighted clusters: {split:#}"))
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["weight"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        clusters,
        [
            ("outbound|20700||echo-a.shop.svc.cluster.local", 75),
            ("outbound|20700||echo-b.shop.svc.cluster.local", 25)
        ]
    );

    // Through the gateway's own ports on loopback.
    assert_tcp_routes(&envoy, &registry, "127.0.0.1", split_port, only_b_port).await;
    drop(envoy);
    bound.shutdown().await;
}

/// The same tcp routes through a real *sidecar*: the client's connections to the Service VIP are redirected to
/// `virtualOutbound` (15001) as istio-init does, whose original-destination hand-off reaches the `<vip>_<port>`
/// listener (not bound) and its weighted TCP proxy. iptables must not touch the machine's own tables, so the test
/// re-executes itself in a private network namespace (`unshare -n`, root only; skips with a message otherwise).
#[test]
fn sidecar_tcp_routes_split_redirected_connections() {
    netns::run_isolated(
        "sidecar_tcp_routes_split_redirected_connections",
        &["iptables", "ip"],
        || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap()
                .block_on(sidecar_tcp_scenario())
        },
    );
}

async fn sidecar_tcp_scenario() {
    const VIP: &str = "127.0.0.40";
    // istio-init's rule for the client pod, narrowed to the one Service VIP (Envoy's own upstream connections go
    // to the backends' pod addresses and are left alone).
    netns::redirect(VIP, None, 15001);
    let backends = tcp_echo_backends().await;
    let yaml = format!(
        r#"{backends}
apiVersion: v1
kind: Pod
metadata: {{name: client-1, namespace: shop, labels: {{app: client}}}}
spec:
  containers: [{{name: client}}]
status: {{phase: Running, podIP: 127.0.0.1}}
---
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: shop}}
spec:
  clusterIP: {VIP}
  ports: [{{name: tcp-split, port: 20700}}, {{name: tcp-b, port: 20701}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo, namespace: shop}}
spec:
  hosts: [echo]
  tcp:
  - match: [{{port: 20701}}]
    route:
    - destination: {{host: echo-b, port: {{number: 20700}}}}
  - match: [{{port: 20700}}]
    route:
    - destination: {{host: echo-a, port: {{number: 20700}}}}
      weight: 75
    - destination: {{host: echo-b, port: {{number: 20700}}}}
      weight: 25
"#
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), yaml).unwrap();
    let bound = start(dir.path()).await;
    let registry = bound.xds_registry.clone().unwrap();
    let envoy = Envoy::start(&bootstrap(
        "sidecar~127.0.0.1~client-1.shop~shop.svc.cluster.local",
        "client.shop",
        bound.xds_addr.unwrap(),
        AdsApi::DeltaGrpc,
    ))
    .await;
    wait_acked(&registry, "client-1", &[LISTENER], |_| true).await;
    let names = [
        "virtualOutbound".to_string(),
        format!("{VIP}_20700"),
        format!("{VIP}_20701"),
    ];
    let ls = wait_listeners(&envoy, "the outbound TCP listeners", |ls| {
        names
            .iter()
            .all(|n| ls.iter().any(|l| l.name == *n && l.active))
    })
    .await;
    assert!(ls.iter().all(|l| l.error.is_none()), "{ls:#?}");

    // Through the VIP on loopback: redirected to 15001, handed to the VIP's port listener.
    assert_tcp_routes(&envoy, &registry, VIP, 20700, 20701).await;
    drop(envoy);
    bound.shutdown().await;
}
