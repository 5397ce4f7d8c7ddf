//! Mesh mTLS with real Envoy 1.40: rudder (identity on, TLS ADS) configures a server sidecar (`httpbin`, full
//! LDS/CDS/EDS/SDS from rudder) and a client sidecar (`sleep`: CDS/EDS/SDS from rudder, one plaintext listener
//! from a file that routes to rudder's outbound cluster). The server's app echoes `x-forwarded-client-cert`.
//!
//! Both sidecars share loopback, so the test runs in its own network namespace (`unshare -n`, the test binary
//! re-executing itself): there `virtualInbound` may bind 15006, and one iptables rule redirects the client's
//! connections to the server pod's address (127.0.0.10:20080) to it, as istio-init would. Needs root, unshare
//! and iptables; skips (passes with a message) otherwise.
//!
//! Proves: STRICT + auto-mTLS → the app sees `URI=spiffe://cluster.local/ns/default/sa/sleep`; STRICT + a
//! plaintext client (DestinationRule `tls.mode: DISABLE`) → refused before the app; PERMISSIVE → plaintext and
//! mTLS both get through; and neither Envoy rejects any generated shape (PERMISSIVE TCP chains, port-level
//! passthrough chains, ISTIO_MUTUAL subset and HTTP/2 clusters) — no NACK on rudder's side, no rejected update
//! in Envoy's stats.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rudder::security::testing::TokenSpec;
use rudder::test_helpers::envoy::{ADMIN_TIMEOUT, Envoy, dumped};
use rudder::test_helpers::identity::IdentityMesh;
use rudder::test_helpers::loopback::{http_client, until_ok};
use rudder::test_helpers::mesh::free_port;
use rudder::test_helpers::netns;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SERVER_IP: &str = "127.0.0.10";
const CLIENT_IP: &str = "127.0.0.20";
const APP_PORT: u16 = 20080;
const CLUSTER: &str = "outbound|20080||httpbin.default.svc.cluster.local";
const SLEEP_ID: &str = "URI=spiffe://cluster.local/ns/default/sa/sleep";
const GATEWAY_IP: &str = "127.0.0.40";
const GATEWAY_PORT: u16 = 20180;
const GATEWAY_SA: &str = "istio-ingressgateway-service-account";

fn mesh_yaml() -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: sleep-1, namespace: default, labels: {{app: sleep}}}}
spec:
  serviceAccountName: sleep
  containers: [{{name: sleep}}, {{name: istio-proxy}}]
status: {{phase: Running, podIP: {CLIENT_IP}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: httpbin-1, namespace: default, labels: {{app: httpbin}}}}
spec:
  serviceAccountName: httpbin
  containers:
  - name: httpbin
    ports: [{{name: http, containerPort: {APP_PORT}}}, {{name: tcp-echo, containerPort: 20081}}]
  - name: istio-proxy
status: {{phase: Running, podIP: {SERVER_IP}}}
---
apiVersion: v1
kind: Service
metadata: {{name: httpbin, namespace: default}}
spec:
  clusterIP: 127.0.0.100
  selector: {{app: httpbin}}
  ports:
  - {{name: http, port: {APP_PORT}}}
  - {{name: tcp-echo, port: 20081}}
---
apiVersion: v1
kind: Pod
metadata: {{name: reviews-v1, namespace: default, labels: {{app: reviews, version: v1}}}}
spec:
  serviceAccountName: reviews
  containers: [{{name: reviews, ports: [{{containerPort: 20090}}]}}, {{name: istio-proxy}}]
status: {{phase: Running, podIP: 127.0.0.30}}
---
apiVersion: v1
kind: Service
metadata: {{name: reviews, namespace: default}}
spec:
  clusterIP: 127.0.0.101
  selector: {{app: reviews}}
  ports: [{{name: grpc, port: 20090}}, {{name: http, port: 20091, targetPort: 20090}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: ingress-1, namespace: istio-system, labels: {{istio: ingressgateway}}}}
spec:
  serviceAccountName: {GATEWAY_SA}
  containers: [{{name: istio-proxy}}]
status: {{phase: Running, podIP: {GATEWAY_IP}}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: web, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {GATEWAY_PORT}, name: http, protocol: HTTP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: httpbin, namespace: default}}
spec:
  hosts: ["*"]
  gateways: [web]
  http:
  - route:
    - destination: {{host: httpbin, port: {{number: {APP_PORT}}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: default}}
spec:
  host: reviews
  trafficPolicy:
    tls: {{mode: ISTIO_MUTUAL}}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
"#
    )
}

/// Namespace-wide mode for `default`, plus a workload policy with port-level modes (one for a port no service
/// declares) so their chain shapes are exercised too.
fn peer_auth(mode: &str) -> String {
    format!(
        r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: default}}
spec:
  mtls: {{mode: {mode}}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: httpbin, namespace: default}}
spec:
  selector: {{matchLabels: {{app: httpbin}}}}
  portLevelMtls:
    20081: {{mode: UNSET}}
    20099: {{mode: DISABLE}}
"#
    )
}

const PLAINTEXT_CLIENT: &str = r#"
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: httpbin, namespace: default}
spec:
  host: httpbin
  trafficPolicy:
    tls: {mode: DISABLE}
"#;

#[test]
fn mtls_between_real_sidecars() {
    netns::run_isolated("mtls_between_real_sidecars", &["iptables", "ip"], || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(scenario())
    });
}

/// rudder with identity on under `dir`, the mesh loaded with a STRICT namespace policy.
async fn start_mesh(dir: &Path) -> IdentityMesh {
    IdentityMesh::start(
        dir,
        &[
            ("mesh.yaml", &mesh_yaml()),
            ("policy.yaml", &peer_auth("STRICT")),
        ],
        |_| {},
    )
    .await
}

/// Replaces the policy file: written beside the config directory, then renamed in, so the file source never
/// reads it half-written.
fn set_policy(mesh: &IdentityMesh, yaml: &str) {
    let tmp = mesh.dir.join("policy.yaml.tmp");
    std::fs::write(&tmp, yaml).unwrap();
    std::fs::rename(&tmp, mesh.config.join("policy.yaml")).unwrap();
}

/// A stock-Envoy bootstrap for a `kind` (`sidecar`/`router`) proxy `pod` in namespace `ns` (service account
/// `sa`) on the TLS ADS server with a minted token.
fn proxy_bootstrap(
    mesh: &IdentityMesh,
    kind: &str,
    pod: &str,
    ns: &str,
    ip: &str,
    sa: &str,
) -> Value {
    let token = mesh.token_file(&format!("{sa}-token"), &TokenSpec::new(ns, sa));
    let node = format!("{kind}~{ip}~{pod}.{ns}~{ns}.svc.cluster.local");
    mesh.tls_bootstrap(&node, pod, &token)
}

/// The same for a sidecar in `default`.
fn sidecar_bootstrap(mesh: &IdentityMesh, pod: &str, ip: &str, sa: &str) -> Value {
    proxy_bootstrap(mesh, "sidecar", pod, "default", ip, sa)
}

/// The client's only listener: plaintext HTTP in on `port`, routed to rudder's outbound cluster for httpbin.
fn client_listener_file(dir: &Path, port: u16) -> Value {
    let listener = json!({
        "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
        "name": "client_in",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "client_in",
                "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                    {"match": {"prefix": "/"}, "route": {"cluster": CLUSTER}}
                ]}]},
                "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
            }
        }]}]
    });
    let path = dir.join("client-lds.json");
    std::fs::write(&path, json!({"resources": [listener]}).to_string()).unwrap();
    json!({"path_config_source": {"path": path}, "resource_api_version": "V3"})
}

/// The httpbin stand-in on 127.0.0.1:20080: answers every request with its `x-forwarded-client-cert` header,
/// counting requests (a refused connection must never reach it).
async fn start_app(hits: Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", APP_PORT))
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let hits = hits.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                hits.fetch_add(1, Ordering::SeqCst);
                let head = String::from_utf8_lossy(&buf);
                let xfcc = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("x-forwarded-client-cert")
                            .then(|| v.trim().to_owned())
                    })
                    .unwrap_or_default();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{xfcc}",
                    xfcc.len()
                );
                let _ = conn.write_all(resp.as_bytes()).await;
            });
        }
    });
}

/// One request through the client sidecar (or gateway) on `port`: `Ok(body)` (the XFCC the app saw) for a 200,
/// `Err` otherwise.
async fn request(port: u16) -> Result<String, String> {
    let client = http_client(Duration::from_secs(3));
    let resp = client
        .get(format!("http://127.0.0.1:{port}/get"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp.text().await.map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("status {status}: {body}"));
    }
    Ok(body)
}

/// Retries until a request succeeds (config changes take a moment to reach both Envoys).
async fn wait_ok(port: u16, client: &Envoy, server: &Envoy) -> String {
    until_ok(ADMIN_TIMEOUT, || request(port))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "no path through the sidecars: {e}\nclient log:\n{}\nserver log:\n{}",
                client.log_tail(30),
                server.log_tail(30)
            )
        })
}

/// `(transport_protocol, terminates TLS)` of the server's `virtualInbound` chains for the app port.
fn app_port_chains(dump: &Value) -> Vec<(String, bool)> {
    let Some(l) = dumped(dump, "listener", "virtualInbound") else {
        return Vec::new();
    };
    l["filter_chains"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["filter_chain_match"]["destination_port"] == json!(APP_PORT))
        .map(|c| {
            (
                c["filter_chain_match"]["transport_protocol"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                !c["transport_socket"].is_null(),
            )
        })
        .collect()
}

/// Whether the client's httpbin cluster uses auto-mTLS socket matches.
fn client_auto_mtls(dump: &Value) -> Option<bool> {
    let c = dumped(dump, "cluster", CLUSTER)?;
    Some(
        c["transport_socket_matches"]
            .as_array()
            .is_some_and(|m| m.len() == 2),
    )
}

async fn wait_dump(envoy: &Envoy, what: &str, cond: impl Fn(&Value) -> bool) {
    envoy
        .wait_dump(what, ADMIN_TIMEOUT, |dump| {
            if cond(dump) {
                return Ok(());
            }
            Err(format!(
                "cluster: {:#}",
                dumped(dump, "cluster", CLUSTER)
                    .cloned()
                    .unwrap_or_default()
            ))
        })
        .await
}

/// Envoy's own count of rejected LDS/CDS/SDS updates (cumulative, unlike rudder's last NACK).
async fn rejected_updates(envoy: &Envoy) -> Vec<String> {
    envoy
        .admin_get("/stats?filter=update_rejected")
        .await
        .lines()
        .filter(|l| !l.trim_end().ends_with(": 0"))
        .map(str::to_owned)
        .collect()
}

async fn scenario() {
    // istio-init's job for the server pod: its inbound traffic goes to virtualInbound.
    netns::redirect(SERVER_IP, Some(APP_PORT), 15006);
    let hits = Arc::new(AtomicUsize::new(0));
    start_app(hits.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let mesh = start_mesh(dir.path()).await;

    let server = Envoy::start(&sidecar_bootstrap(&mesh, "httpbin-1", SERVER_IP, "httpbin")).await;
    let port = free_port();
    let mut client_cfg = sidecar_bootstrap(&mesh, "sleep-1", CLIENT_IP, "sleep");
    client_cfg["dynamic_resources"]["lds_config"] = client_listener_file(&mesh.dir, port);
    let client = Envoy::start(&client_cfg).await;

    // 1. STRICT + auto-mTLS: the app sees the client's SPIFFE id.
    wait_dump(&server, "STRICT chains", |d| {
        app_port_chains(d) == [("tls".to_owned(), true)]
    })
    .await;
    wait_dump(&client, "auto-mTLS cluster", |d| {
        client_auto_mtls(d) == Some(true)
    })
    .await;
    let xfcc = wait_ok(port, &client, &server).await;
    assert!(xfcc.contains(SLEEP_ID), "app saw XFCC {xfcc:?}");
    // The book's S15: the ingress gateway (with identity) reaches the STRICT sidecar over auto-mTLS too.
    let gateway = Envoy::start(&proxy_bootstrap(
        &mesh,
        "router",
        "ingress-1",
        "istio-system",
        GATEWAY_IP,
        GATEWAY_SA,
    ))
    .await;
    let xfcc = wait_ok(GATEWAY_PORT, &gateway, &server).await;
    assert!(
        xfcc.contains(&format!(
            "URI=spiffe://cluster.local/ns/istio-system/sa/{GATEWAY_SA}"
        )),
        "app saw XFCC {xfcc:?} through the gateway"
    );
    assert!(mesh.nacks().is_empty(), "NACKs: {:?}", mesh.nacks());

    // 2. STRICT + a plaintext client (DestinationRule DISABLE): refused by the server sidecar.
    set_policy(&mesh, &(peer_auth("STRICT") + PLAINTEXT_CLIENT));
    wait_dump(&client, "plaintext cluster", |d| {
        client_auto_mtls(d) == Some(false)
    })
    .await;
    let before = hits.load(Ordering::SeqCst);
    for _ in 0..3 {
        let r = request(port).await;
        assert!(r.is_err(), "plaintext got through STRICT: {r:?}");
    }
    assert_eq!(hits.load(Ordering::SeqCst), before, "the app was reached");
    assert!(mesh.nacks().is_empty(), "NACKs: {:?}", mesh.nacks());

    // 3. PERMISSIVE: the plaintext client gets through (no peer identity) ...
    set_policy(&mesh, &(peer_auth("PERMISSIVE") + PLAINTEXT_CLIENT));
    wait_dump(&server, "PERMISSIVE chains", |d| {
        app_port_chains(d) == [("tls".to_owned(), true), ("raw_buffer".to_owned(), false)]
    })
    .await;
    let xfcc = wait_ok(port, &client, &server).await;
    assert!(!xfcc.contains("URI="), "plaintext request carried {xfcc:?}");
    // ... and so does mTLS once the client uses auto-mTLS again.
    set_policy(&mesh, &peer_auth("PERMISSIVE"));
    wait_dump(&client, "auto-mTLS cluster", |d| {
        client_auto_mtls(d) == Some(true)
    })
    .await;
    let xfcc = wait_ok(port, &client, &server).await;
    assert!(xfcc.contains(SLEEP_ID), "app saw XFCC {xfcc:?}");

    assert!(mesh.nacks().is_empty(), "NACKs: {:?}", mesh.nacks());
    for (who, envoy) in [
        ("server", &server),
        ("client", &client),
        ("gateway", &gateway),
    ] {
        let rejected = rejected_updates(envoy).await;
        assert!(rejected.is_empty(), "{who} rejected updates: {rejected:?}");
        // Nothing is stuck warming: every listener/cluster got its secrets.
        let dump = envoy.config_dump().await.to_string();
        assert!(
            !dump.contains("warming_state"),
            "{who} has warming listeners"
        );
        assert!(
            !dump.contains("dynamic_warming_clusters"),
            "{who} has warming clusters"
        );
    }
    drop((client, server, gateway));
    mesh.bound.shutdown().await;
}
