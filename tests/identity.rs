//! Identity end to end: rudder's TLS xDS server (15012) authenticates proxies by service-account token and
//! serves `default` + `ROOTCA` over SDS only to the rightful proxy; the plaintext server never serves secrets.
//! Real Envoy 1.40 gets its certificate with the stock `google_grpc` + file-based-metadata bootstrap and two
//! Envoys speak mTLS with rudder-issued SPIFFE certificates.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use rudder::security::CaSource;
use rudder::security::bootstrap::{sds_over_ads, tls_ads_grpc_service, use_tls_ads};
use rudder::security::testing::{TestIssuer, TokenSpec};
use rudder::test_helpers::envoy::{
    ADMIN_TIMEOUT, AdsApi, Envoy, bootstrap, cert_serials, dump_entries, envoy_binary,
};
use rudder::test_helpers::identity::{IdentityMesh, SERVING_NAME, secret_names};
use rudder::test_helpers::loopback::{http_client, until_ok};
use rudder::test_helpers::mesh::free_port;
use rudder::xds::type_url::SECRET;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

fn mesh_yaml() -> &'static str {
    r#"
apiVersion: v1
kind: Pod
metadata: {name: sleep-1, namespace: default, labels: {app: sleep}}
spec:
  serviceAccountName: sleep
  containers: [{name: sleep}]
status: {phase: Running, podIP: 127.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: httpbin-1, namespace: default, labels: {app: httpbin}}
spec:
  serviceAccountName: httpbin
  containers: [{name: httpbin}]
status: {phase: Running, podIP: 127.0.0.1}
"#
}

/// rudder with identity on under `dir` (workload certificates live `workload_ttl`), the two pods loaded.
async fn start_mesh(dir: &Path, workload_ttl: Duration) -> IdentityMesh {
    IdentityMesh::start(dir, &[("mesh.yaml", mesh_yaml())], |identity| {
        identity.workload_ttl = workload_ttl;
        assert!(matches!(identity.ca, CaSource::SelfSigned { .. }));
    })
    .await
}

fn node_id(pod: &str, ns: &str) -> String {
    format!("sidecar~127.0.0.1~{pod}.{ns}~{ns}.svc.cluster.local")
}

async fn channel(addr: SocketAddr, root_pem: Option<&str>) -> Channel {
    match root_pem {
        Some(root) => {
            let tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(root))
                .domain_name(SERVING_NAME);
            Endpoint::from_shared(format!("https://{addr}"))
                .unwrap()
                .tls_config(tls)
                .unwrap()
                .connect()
                .await
                .unwrap()
        }
        None => Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    }
}

/// Opens an ADS stream (with `token` as bearer credentials), asks for `default` and `ROOTCA`, and returns the
/// first response.
async fn ask_secrets(ch: Channel, node: &str, token: Option<String>) -> DiscoveryResponse {
    let mut client = AggregatedDiscoveryServiceClient::with_interceptor(
        ch,
        move |mut req: tonic::Request<()>| {
            if let Some(t) = &token {
                req.metadata_mut()
                    .insert("authorization", format!("Bearer {t}").parse().unwrap());
            }
            Ok(req)
        },
    );
    let (tx, rx) = mpsc::channel(4);
    tx.send(DiscoveryRequest {
        node: Some(Node {
            id: node.to_owned(),
            ..Default::default()
        }),
        type_url: SECRET.to_owned(),
        resource_names: vec!["default".into(), "ROOTCA".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut stream = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let resp = match tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a response in time")
    {
        Ok(resp) => resp.expect("a response"),
        // The TLS server refuses a stream whose proxy fails authentication: no secrets (and no config).
        Err(status) if status.code() == tonic::Code::Unauthenticated => {
            assert!(
                status
                    .message()
                    .starts_with("proxy authentication failed: "),
                "{status}"
            );
            return DiscoveryResponse::default();
        }
        Err(status) => panic!("stream failed: {status}"),
    };
    drop(tx);
    resp
}

#[tokio::test]
async fn secrets_only_for_the_rightful_proxy_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = start_mesh(dir.path(), Duration::from_secs(3600)).await;
    let root = mesh
        .bound
        .secret_issuer
        .as_ref()
        .unwrap()
        .ca()
        .root_pem()
        .to_owned();
    let tls = mesh.tls_addr();
    let token = |spec: TokenSpec| Some(mesh.tokens.token(&spec));
    let sleep = node_id("sleep-1", "default");

    // The rightful proxy: its own namespace and its pod's service account.
    let ok = ask_secrets(
        channel(tls, Some(&root)).await,
        &sleep,
        token(TokenSpec::new("default", "sleep")),
    )
    .await;
    assert_eq!(secret_names(&ok), ["ROOTCA", "default"]);

    let forger = TestIssuer::new(&mesh.tokens.kid);
    let cases: Vec<(&str, String, Option<String>)> = vec![
        ("no token", sleep.clone(), None),
        (
            "namespace A token, node id in namespace B",
            node_id("sleep-1", "other"),
            token(TokenSpec::new("default", "sleep")),
        ),
        (
            "another service account of the namespace",
            sleep.clone(),
            token(TokenSpec::new("default", "httpbin")),
        ),
        (
            "forged",
            sleep.clone(),
            Some(forger.token(&TokenSpec::new("default", "sleep"))),
        ),
        (
            "expired",
            sleep.clone(),
            token(TokenSpec {
                expires_in: -600,
                ..TokenSpec::new("default", "sleep")
            }),
        ),
        (
            "wrong audience",
            sleep.clone(),
            token(TokenSpec {
                audience: "kubernetes".into(),
                ..TokenSpec::new("default", "sleep")
            }),
        ),
    ];
    for (case, node, tok) in cases {
        let resp = ask_secrets(channel(tls, Some(&root)).await, &node, tok).await;
        assert!(
            resp.resources.is_empty(),
            "{case}: got {:?}",
            secret_names(&resp)
        );
    }

    // The plaintext server never serves a secret, even with a valid token.
    let plain = ask_secrets(
        channel(mesh.bound.xds_addr.unwrap(), None).await,
        &sleep,
        token(TokenSpec::new("default", "sleep")),
    )
    .await;
    assert!(
        plain.resources.is_empty(),
        "15010 served {:?}",
        secret_names(&plain)
    );
    mesh.bound.shutdown().await;
}

/// SDS-fed TLS context: rudder's `default` certificate, peers validated against `ROOTCA` and `san`.
fn common_tls(san_match: Value) -> Value {
    json!({
        "tls_certificate_sds_secret_configs": [sds_over_ads("default")],
        "combined_validation_context": {
            "default_validation_context": {"match_typed_subject_alt_names": [
                {"san_type": "URI", "matcher": san_match}
            ]},
            "validation_context_sds_secret_config": sds_over_ads("ROOTCA")
        }
    })
}

fn hcm(stat: &str, route: Value) -> Value {
    json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": stat,
            "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [route]}]},
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
        }
    })
}

/// A stock-Envoy bootstrap for `pod` whose only ADS resources are its SDS secrets over TLS. Listeners and
/// clusters come from files (dynamic, like rudder's LDS/CDS): Envoy 1.40 crashes on *static* resources that
/// reference SDS over ADS, since the ADS mux does not exist yet when they load.
fn envoy_bootstrap(
    mesh: &IdentityMesh,
    pod: &str,
    token: &Path,
    listeners: Value,
    clusters: Value,
) -> Value {
    let mut b = mesh.tls_bootstrap(&node_id(pod, "default"), pod, token);
    let file = |kind: &str, type_url: &str, resources: Value| {
        let resources: Vec<Value> = resources
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r["@type"] = json!(type_url);
                r
            })
            .collect();
        let path = mesh.dir.join(format!("{pod}-{kind}.json"));
        std::fs::write(&path, json!({"resources": resources}).to_string()).unwrap();
        json!({"path_config_source": {"path": path}, "resource_api_version": "V3"})
    };
    b["dynamic_resources"]["lds_config"] = file(
        "lds",
        "type.googleapis.com/envoy.config.listener.v3.Listener",
        listeners,
    );
    b["dynamic_resources"]["cds_config"] = file(
        "cds",
        "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        clusters,
    );
    b
}

/// The server side: an mTLS listener that requires a mesh certificate and answers with the peer's URI SAN.
fn server_listeners(port: u16) -> Value {
    json!([{
        "name": "mtls_in",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{
            "filters": [hcm("in", json!({
                "match": {"prefix": "/"},
                "direct_response": {"status": 200, "body": {"inline_string": "hello over mTLS"}},
                "response_headers_to_add": [{"header": {"key": "x-peer", "value": "%DOWNSTREAM_PEER_URI_SAN%"}}]
            }))],
            "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                "require_client_certificate": true,
                "common_tls_context": common_tls(json!({"prefix": "spiffe://cluster.local/"}))
            }}
        }]
    }])
}

/// The client side: plaintext in, mTLS out to the server, which must be `httpbin`.
fn client_listeners(port: u16) -> Value {
    json!([{
            "name": "plain_out",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [hcm("out", json!({"match": {"prefix": "/"}, "route": {"cluster": "httpbin"}}))]}]
    }])
}

fn client_clusters(server_port: u16) -> Value {
    json!([{
            "name": "httpbin",
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {"cluster_name": "httpbin", "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": server_port}}}}]}]},
            "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "common_tls_context": common_tls(json!({"exact": "spiffe://cluster.local/ns/default/sa/httpbin"}))
            }}
    }])
}

/// `(default, ROOTCA)` as Envoy holds them: `dynamic_active_secrets`.
fn active_secrets(dump: &Value) -> Vec<Value> {
    dump_entries(dump, "SecretsConfigDump", "dynamic_active_secrets")
        .into_iter()
        .cloned()
        .collect()
}

async fn wait_secrets(envoy: &Envoy) -> Vec<Value> {
    envoy
        .wait_dump("default and ROOTCA", ADMIN_TIMEOUT, |dump| {
            let secrets = active_secrets(dump);
            if secrets.len() == 2 {
                return Ok(secrets);
            }
            Err(format!("has {} secrets", secrets.len()))
        })
        .await
}

/// The peer identity `httpbin` saw for a request through `sleep`, once the path works.
async fn peer_through(port: u16) -> Result<String, String> {
    let client = http_client(Duration::from_secs(2));
    let resp = client
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if resp.status() != 200 {
        return Err(format!("status {}", resp.status()));
    }
    Ok(resp
        .headers()
        .get("x-peer")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned())
}

async fn wait_peer(port: u16, client: &Envoy, server: &Envoy) -> String {
    until_ok(ADMIN_TIMEOUT, || peer_through(port))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "no mTLS path: {e}\nclient log:\n{}\nserver log:\n{}",
                client.log_tail(30),
                server.log_tail(30)
            )
        })
}

#[tokio::test]
async fn real_envoys_get_svids_over_sds_and_speak_mtls() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = start_mesh(dir.path(), Duration::from_secs(3600)).await;
    let (client_port, server_port) = (free_port(), free_port());
    let server_token = mesh.token_file("httpbin-token", &TokenSpec::new("default", "httpbin"));
    let client_token = mesh.token_file("sleep-token", &TokenSpec::new("default", "sleep"));
    let server_cfg = envoy_bootstrap(
        &mesh,
        "httpbin-1",
        &server_token,
        server_listeners(server_port),
        json!([]),
    );
    let client_cfg = envoy_bootstrap(
        &mesh,
        "sleep-1",
        &client_token,
        client_listeners(client_port),
        client_clusters(server_port),
    );
    let server = Envoy::start(&server_cfg).await;
    let client = Envoy::start(&client_cfg).await;

    let secrets = wait_secrets(&client).await;
    let mut names: Vec<&str> = secrets.iter().filter_map(|s| s["name"].as_str()).collect();
    names.sort();
    assert_eq!(names, ["ROOTCA", "default"]);
    let default = secrets.iter().find(|s| s["name"] == "default").unwrap();
    let key = &default["secret"]["tls_certificate"]["private_key"]["inline_bytes"];
    // base64("[redacted]"): Envoy holds the key but never shows it.
    assert_eq!(key, "W3JlZGFjdGVkXQ==", "{default}");
    let root = secrets.iter().find(|s| s["name"] == "ROOTCA").unwrap();
    assert!(root["secret"]["validation_context"]["trusted_ca"]["inline_bytes"].is_string());
    wait_secrets(&server).await;

    let peer = wait_peer(client_port, &client, &server).await;
    assert_eq!(peer, "spiffe://cluster.local/ns/default/sa/sleep");

    // Every secret response was ACKed on the TLS server.
    let nacks = mesh.nacks();
    assert!(nacks.is_empty(), "NACKs: {nacks:?}");
    drop((client, server));
    mesh.bound.shutdown().await;
}

#[tokio::test]
async fn tls_ads_bootstrap_validates_with_envoy() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = bootstrap(
        &node_id("sleep-1", "default"),
        "sleep.default",
        "127.0.0.1:15012".parse().unwrap(),
        AdsApi::Grpc,
    );
    let (root, token) = (dir.path().join("root.pem"), dir.path().join("token"));
    std::fs::write(&root, "").unwrap();
    std::fs::write(&token, "x").unwrap();
    use_tls_ads(
        &mut b,
        tls_ads_grpc_service("istiod.istio-system.svc:15012", &root, &token, None),
    );
    let path = dir.path().join("bootstrap.json");
    std::fs::write(&path, b.to_string()).unwrap();
    let out = std::process::Command::new(envoy_binary())
        .args(["--mode", "validate", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "envoy --mode validate: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Serial numbers of the leaf certificates Envoy currently uses (admin `/certs`).
async fn leaf_serials(envoy: &Envoy) -> Vec<String> {
    cert_serials(&serde_json::from_str(&envoy.admin_get("/certs").await).unwrap())
}

#[tokio::test]
async fn certificates_rotate_at_half_life_under_traffic() {
    // A 6 s TTL renews every 3 s: the same path as 24 h, just faster.
    let dir = tempfile::tempdir().unwrap();
    let mesh = start_mesh(dir.path(), Duration::from_secs(6)).await;
    let (client_port, server_port) = (free_port(), free_port());
    let server_token = mesh.token_file("httpbin-token", &TokenSpec::new("default", "httpbin"));
    let client_token = mesh.token_file("sleep-token", &TokenSpec::new("default", "sleep"));
    let server = Envoy::start(&envoy_bootstrap(
        &mesh,
        "httpbin-1",
        &server_token,
        server_listeners(server_port),
        json!([]),
    ))
    .await;
    let client = Envoy::start(&envoy_bootstrap(
        &mesh,
        "sleep-1",
        &client_token,
        client_listeners(client_port),
        client_clusters(server_port),
    ))
    .await;
    wait_peer(client_port, &client, &server).await;
    let first = leaf_serials(&client).await;
    assert!(!first.is_empty(), "client has a certificate");

    // A bounded request loop across at least two renewals: every request must succeed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut seen = vec![first];
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut requests = 0;
    while seen.len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "certificate not renewed in time: {seen:?}\n{}",
            client.log_tail(30)
        );
        tick.tick().await;
        let peer = peer_through(client_port).await;
        assert_eq!(
            peer.as_deref(),
            Ok("spiffe://cluster.local/ns/default/sa/sleep"),
            "request {requests} failed during rotation"
        );
        requests += 1;
        let now = leaf_serials(&client).await;
        if !now.is_empty() && seen.last() != Some(&now) {
            seen.push(now);
        }
    }
    assert!(
        requests > 10,
        "the loop ran through the renewals ({requests} requests)"
    );
    drop((client, server));
    mesh.bound.shutdown().await;
}
