//! Kubernetes mode end to end: `app::build` against the in-process fake API server with identity on.
//!
//! The first snapshot already holds what the fake lists (no half-empty first push); the self-signed root is
//! persisted in Secret `istio-ca-secret`; every namespace gets ConfigMap `istio-ca-root-cert`; the webhook
//! configurations get the root as `caBundle`; the webhooks serve a CA-issued certificate that verifies against
//! that published root; and a real Envoy, trusting only the published root and presenting a service-account
//! token, connects to the TLS xDS server and ACKs its configuration. The token keys come from the fake's
//! `/openid/v1/jwks` (no JWKS file), and the CA's trust domain from the mesh ConfigMap.

use std::time::Duration;

use base64::Engine;
use rudder::app::{self, WebhookConfig};
use rudder::config::source::kube::KubeClient;
use rudder::security::bootstrap::{tls_ads_grpc_service, use_tls_ads};
use rudder::security::testing::{TestIssuer, TokenSpec};
use rudder::security::{self, CaSource, kube_ca, kube_jwks, kube_trust};
use rudder::test_helpers::envoy::{AdsApi, Envoy, bootstrap};
use rudder::test_helpers::identity::{root_pem, secret_names};
use rudder::test_helpers::kube::{Fake, admission, coll, core};
use rudder::test_helpers::mesh::free_port;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);
const GW_SA: &str = "istio-ingressgateway-service-account";

fn net(plural: &str) -> rudder::test_helpers::kube::Coll {
    coll("networking.istio.io", "v1", plural)
}

fn cluster(gw_port: u16) -> Fake {
    let fake = Fake::new(&[
        core("namespaces"),
        core("services"),
        core("pods"),
        core("secrets"),
        core("configmaps"),
        coll("discovery.k8s.io", "v1", "endpointslices"),
        net("virtualservices"),
        net("destinationrules"),
        net("gateways"),
        admission("mutatingwebhookconfigurations"),
        admission("validatingwebhookconfigurations"),
    ]);
    for ns in ["default", "istio-system", "shop"] {
        fake.put(
            &core("namespaces"),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        );
    }
    fake.put(
        &core("services"),
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "fruits", "namespace": "default"},
               "spec": {"clusterIP": "10.0.0.10", "selector": {"app": "fruits"},
                        "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
    );
    fake.put(
        &core("pods"),
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "gw-1", "namespace": "istio-system",
                            "labels": {"istio": "ingressgateway", "app": "istio-ingressgateway"}},
               "spec": {"serviceAccountName": GW_SA, "containers": [{"name": "istio-proxy"}]},
               "status": {"phase": "Running", "podIP": "127.0.0.1"}}),
    );
    fake.put(
        &net("gateways"),
        json!({"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
               "metadata": {"name": "gw", "namespace": "istio-system"},
               "spec": {"selector": {"istio": "ingressgateway"},
                        "servers": [{"port": {"number": gw_port, "name": "http", "protocol": "HTTP"},
                                     "hosts": ["*"]}]}}),
    );
    fake.put(
        &net("virtualservices"),
        json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
               "metadata": {"name": "fruits", "namespace": "istio-system"},
               "spec": {"hosts": ["*"], "gateways": ["gw"],
                        "http": [{"route": [{"destination": {"host": "fruits.default.svc.cluster.local",
                                                             "port": {"number": 80}}}]}]}}),
    );
    let hook = |name: &str, path: &str| {
        json!({"name": name, "sideEffects": "None", "admissionReviewVersions": ["v1"],
               "clientConfig": {"service": {"name": "istiod", "namespace": "istio-system", "path": path}}})
    };
    fake.put(
        &admission("mutatingwebhookconfigurations"),
        json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
               "metadata": {"name": kube_trust::INJECTOR_WEBHOOK},
               "webhooks": [hook("namespace.sidecar-injector.istio.io", "/inject"),
                            hook("rev.namespace.sidecar-injector.istio.io", "/inject")]}),
    );
    fake.put(
        &admission("validatingwebhookconfigurations"),
        json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
               "metadata": {"name": "istio-validator-istio-system"},
               "webhooks": [hook("rev.validation.istio.io", "/validate")]}),
    );
    fake
}

fn cm_root(fake: &Fake, ns: &str) -> Option<String> {
    fake.get(&core("configmaps"), ns, kube_trust::ROOT_CONFIGMAP)
        .and_then(|c| c["data"][kube_trust::ROOT_KEY].as_str().map(str::to_owned))
}

fn bundles(fake: &Fake, plural: &str, name: &str) -> Vec<String> {
    let w = fake
        .get(&admission(plural), "", name)
        .unwrap_or(Value::Null);
    w["webhooks"]
        .as_array()
        .map(|hs| {
            hs.iter()
                .map(|h| {
                    h["clientConfig"]["caBundle"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned()
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn kube_mode_publishes_the_ca_and_serves_envoy_over_tls() {
    let gw_port = free_port();
    let fake = cluster(gw_port);
    let dir = tempfile::tempdir().unwrap();
    let tokens = TestIssuer::default();
    // No JWKS file: the keys and the issuer come from the API server.
    fake.serve_raw(kube_jwks::JWKS_PATH, 200, tokens.jwks());
    fake.serve_raw(
        kube_jwks::DISCOVERY_PATH,
        200,
        json!({"issuer": tokens.issuer, "jwks_uri": "https://kubernetes.default.svc/openid/v1/jwks"}),
    );
    // The mesh config names the trust domain; the CA follows it.
    fake.put(
        &core("configmaps"),
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "istio", "namespace": "istio-system"},
               "data": {"mesh": "trustDomain: example.org\n"}}),
    );
    let mut identity = security::Config::new(dir.path().join("unused-ca-dir"), None);
    identity.ca = CaSource::Kube {
        namespace: "istio-system".into(),
    };
    identity.tls_addr = "127.0.0.1:0".parse().unwrap();
    let bound = app::build(app::Config {
        xds_addr: Some("127.0.0.1:0".parse().unwrap()),
        kube: Some(KubeClient(fake.client())),
        identity: Some(identity),
        webhook: Some(WebhookConfig {
            addr: "127.0.0.1:0".parse().unwrap(),
            cert: None,
            key: None,
        }),
        kube_sync_timeout: WAIT,
        ..Default::default()
    })
    .await
    .unwrap();

    // The very first snapshot already has what the API server listed.
    let first = bound.snapshots.borrow().clone();
    assert!(
        first
            .snapshot
            .registry
            .services()
            .iter()
            .any(|s| s.hostname == "fruits.default.svc.cluster.local"),
        "first snapshot: {}",
        first.snapshot.summary()
    );

    // One trust domain: the CA's is the mesh config's, which the generators' SAN checks use.
    assert_eq!(first.snapshot.mesh.trust_domain, "example.org");
    assert_eq!(
        bound.secret_issuer.as_ref().unwrap().ca().trust_domain(),
        "example.org"
    );
    assert!(
        fake.requests().iter().any(|r| r == kube_jwks::JWKS_PATH),
        "JWKS fetched from the API server: {:?}",
        fake.requests()
    );

    // The self-signed root was created in istio-ca-secret and is the one in use.
    let root = root_pem(&bound);
    let secret = fake
        .get(&core("secrets"), "istio-system", kube_ca::CA_SECRET)
        .expect("istio-ca-secret created");
    let b64 = base64::engine::general_purpose::STANDARD;
    let stored = b64
        .decode(secret["data"]["ca-cert.pem"].as_str().unwrap())
        .unwrap();
    assert_eq!(String::from_utf8(stored).unwrap(), root);

    // Root ConfigMaps in every namespace, caBundle on both webhook configurations.
    let want_bundle = b64.encode(&root);
    let published = fake
        .wait_for(WAIT, |f| {
            ["default", "istio-system", "shop"]
                .iter()
                .all(|ns| cm_root(f, ns).as_deref() == Some(root.as_str()))
                && bundles(f, "mutatingwebhookconfigurations", "istio-sidecar-injector")
                    == [want_bundle.clone(), want_bundle.clone()]
                && bundles(
                    f,
                    "validatingwebhookconfigurations",
                    "istio-validator-istio-system",
                ) == [want_bundle.clone()]
        })
        .await;
    assert!(published, "writes: {:?}", fake.writes());

    // The webhooks serve a certificate for istiod.istio-system.svc that the published root verifies.
    let published_root = cm_root(&fake, "shop").unwrap();
    let webhook = bound.webhook_addr.unwrap();
    let https = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(published_root.as_bytes()).unwrap())
        .resolve("istiod.istio-system.svc", webhook)
        .build()
        .unwrap();
    let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "u-1", "kind": {"group": "networking.istio.io", "version": "v1", "kind": "VirtualService"},
        "namespace": "shop", "operation": "CREATE",
        "object": {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                   "metadata": {"name": "r", "namespace": "shop"},
                   "spec": {"hosts": ["r"], "http": [{"route": [{"destination": {"host": ""}}]}]}}}});
    let answer: Value = https
        .post(format!(
            "https://istiod.istio-system.svc:{}/validate",
            webhook.port()
        ))
        .json(&review)
        .send()
        .await
        .expect("webhook TLS verifies against the published root")
        .json()
        .await
        .unwrap();
    assert_eq!(answer["response"]["allowed"], false, "{answer}");

    // A real Envoy trusting only the published root, with its service-account token, gets and ACKs config.
    let root_file = dir.path().join("root-cert.pem");
    std::fs::write(&root_file, &published_root).unwrap();
    let token_file = dir.path().join("istio-token");
    std::fs::write(
        &token_file,
        tokens.token(&TokenSpec::new("istio-system", GW_SA)),
    )
    .unwrap();
    let tls = bound.xds_tls_addr.unwrap();
    let node = "router~127.0.0.1~gw-1.istio-system~istio-system.svc.cluster.local";
    let mut b = bootstrap(node, "istio-ingressgateway", tls, AdsApi::Grpc);
    use_tls_ads(
        &mut b,
        tls_ads_grpc_service(
            &tls.to_string(),
            &root_file,
            &token_file,
            Some("istiod.istio-system.svc"),
        ),
    );
    b["static_resources"] = json!({});
    let envoy = Envoy::start(&b).await;
    let listener = format!("0.0.0.0_{gw_port}");
    envoy
        .wait_config("gateway listener and fruits cluster", WAIT, |d| {
            d.iter().any(|r| r.kind == "listener" && r.name == listener)
                && d.iter().any(|r| {
                    r.kind == "cluster" && r.name == "outbound|80||fruits.default.svc.cluster.local"
                })
        })
        .await;
    let registry = bound.xds_tls_registry.as_ref().unwrap();
    let conns = registry.connections();
    assert!(!conns.is_empty(), "Envoy is connected over TLS");
    for c in &conns {
        for (type_url, t) in &c.types {
            assert!(
                t.last_nack.is_none(),
                "{type_url} NACKed: {:?}",
                t.last_nack
            );
        }
    }
    assert!(
        conns
            .iter()
            .flat_map(|c| c.types.values())
            .any(|t| t.acked_version.is_some()),
        "nothing ACKed"
    );
    drop(envoy);
    bound.shutdown().await;
}

#[tokio::test]
async fn an_unlistable_kind_delays_readiness_only_up_to_the_bound() {
    let fake = cluster(free_port());
    fake.db.lock().forbidden.insert(net("destinationrules"));
    let started = tokio::time::Instant::now();
    let bound = app::build(app::Config {
        xds_addr: None,
        debug_addr: Some("127.0.0.1:0".parse().unwrap()),
        kube: Some(KubeClient(fake.client())),
        kube_sync_timeout: Duration::from_millis(1500),
        ..Default::default()
    })
    .await
    .unwrap();
    // Nothing was served before the bound; then what is synced is served.
    assert!(started.elapsed() >= Duration::from_millis(1500));
    let first = bound.snapshots.borrow().clone();
    assert!(
        first
            .snapshot
            .registry
            .services()
            .iter()
            .any(|s| s.hostname == "fruits.default.svc.cluster.local")
    );
    let ready = reqwest::get(format!("http://{}/ready", bound.debug_addr.unwrap()))
        .await
        .unwrap();
    assert!(ready.status().is_success());
    // Without identity nothing is written to the cluster.
    assert!(fake.writes().is_empty(), "{:?}", fake.writes());
    bound.shutdown().await;
}

/// The secrets rudder's TLS ADS answers a first SDS request for `default` + `ROOTCA` with, on a new stream
/// presenting `token` (none when the stream is not authenticated).
async fn secrets(tls: std::net::SocketAddr, root: &str, node: &str, token: String) -> Vec<String> {
    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
    use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

    let ch = Endpoint::from_shared(format!("https://{tls}"))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(root))
                .domain_name("istiod.istio-system.svc"),
        )
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = AggregatedDiscoveryServiceClient::with_interceptor(
        ch,
        move |mut req: tonic::Request<()>| {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            Ok(req)
        },
    );
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(DiscoveryRequest {
        node: Some(Node {
            id: node.to_owned(),
            ..Default::default()
        }),
        type_url: rudder::xds::type_url::SECRET.to_owned(),
        resource_names: vec!["default".into(), "ROOTCA".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut stream = client
        .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let resp = match tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("a response in time")
    {
        Ok(resp) => resp.expect("a response"),
        // A refused token refuses the stream: no secrets.
        Err(status) if status.code() == tonic::Code::Unauthenticated => return Vec::new(),
        Err(status) => panic!("stream failed: {status}"),
    };
    secret_names(&resp)
}

#[tokio::test]
async fn a_token_of_the_rotated_key_gets_secrets_once_the_keys_refresh() {
    let fake = cluster(free_port());
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (TestIssuer::new("old"), TestIssuer::new("new"));
    fake.serve_raw(kube_jwks::JWKS_PATH, 200, old.jwks());
    fake.serve_raw(
        kube_jwks::DISCOVERY_PATH,
        200,
        json!({"issuer": old.issuer}),
    );
    let mut identity = security::Config::new(dir.path().join("unused-ca-dir"), None);
    identity.ca = CaSource::Kube {
        namespace: "istio-system".into(),
    };
    identity.tls_addr = "127.0.0.1:0".parse().unwrap();
    // Periodic refresh effectively off: only the unknown kid triggers the fetch.
    identity.jwks_refresh = (Duration::from_secs(3600), Duration::from_millis(200));
    let bound = app::build(app::Config {
        xds_addr: None,
        kube: Some(KubeClient(fake.client())),
        identity: Some(identity),
        kube_sync_timeout: WAIT,
        ..Default::default()
    })
    .await
    .unwrap();
    let root = root_pem(&bound);
    let tls = bound.xds_tls_addr.unwrap();
    let node = "router~127.0.0.1~gw-1.istio-system~istio-system.svc.cluster.local";
    let spec = TokenSpec::new("istio-system", GW_SA);
    let both = ["ROOTCA".to_string(), "default".to_string()];
    assert_eq!(secrets(tls, &root, node, old.token(&spec)).await, both);
    // The API server rotates its signing key: the new key's token is refused (unknown kid) and triggers the
    // refresh; the endpoint fails first, so the old set stays.
    fake.serve_raw(
        kube_jwks::JWKS_PATH,
        500,
        json!({"kind": "Status", "code": 500}),
    );
    let gets = || {
        fake.requests()
            .iter()
            .filter(|r| r.as_str() == kube_jwks::JWKS_PATH)
            .count()
    };
    assert_eq!(gets(), 1);
    assert!(secrets(tls, &root, node, new.token(&spec)).await.is_empty());
    assert!(
        fake.wait_requests(WAIT, |_| gets() >= 2).await,
        "refresh on the unknown kid"
    );
    assert_eq!(
        secrets(tls, &root, node, old.token(&spec)).await,
        both,
        "last good keys kept"
    );
    // Now the new set is served: the next refresh picks it up and the new key's token gets secrets.
    fake.serve_raw(kube_jwks::JWKS_PATH, 200, new.jwks());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if secrets(tls, &root, node, new.token(&spec)).await == both {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rotated key never verified"
        );
        // Each refused attempt asks for a refresh, at most one per 200 ms: wait for the next fetch.
        let n = gets();
        assert!(fake.wait_requests(WAIT, |_| gets() > n).await, "no refresh");
    }
    assert!(
        secrets(tls, &root, node, old.token(&spec)).await.is_empty(),
        "old key retired"
    );
    bound.shutdown().await;
}
