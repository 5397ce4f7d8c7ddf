//! The admission webhooks istiod serves on 15017: `/inject` (sidecar injection, a JSON patch) and `/validate`
//! (the same rules as `rudder validate`). Both take and return `admission.k8s.io/v1` AdmissionReviews; every
//! answer is a review (a bad request is denied inside one, never a 500).
//!
//! The handlers are thin: `review_inject` and `review_validate` are pure functions over JSON, and the router
//! only adapts them to HTTP.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::routing::post;
use serde_json::{Value, json};

use crate::config::parse::decode_value;
use crate::config::store::Store;
use crate::config::validate::check_document;
use crate::config::{Kind, ObjectKey, Severity};
use crate::inject::pod::{self, Template};

/// What the webhook needs: the injection template and, when running with a store, namespace labels.
#[derive(Clone, Default)]
pub struct WebhookState {
    /// Injection settings.
    pub template: Template,
    /// The config store, for namespace labels (`None`: trust the webhook's namespaceSelector).
    pub store: Option<Arc<Store>>,
}

/// The webhook routes (`POST /inject`, `POST /validate`).
pub fn router(state: Arc<WebhookState>) -> axum::Router {
    axum::Router::new()
        .route("/inject", post(inject_handler))
        .route("/validate", post(validate_handler))
        .with_state(state)
}

async fn inject_handler(
    State(state): State<Arc<WebhookState>>,
    Json(review): Json<Value>,
) -> Json<Value> {
    let labels = |ns: &str| -> Option<BTreeMap<String, String>> {
        let store = state.store.as_ref()?;
        let obj = store.get(&ObjectKey::new(Kind::Namespace, "", ns))?;
        Some(obj.meta().labels.clone().unwrap_or_default())
    };
    let template = match state.store.as_ref().and_then(|s| mesh_config(s)) {
        Some(mesh) => state.template.clone().with_mesh(&mesh),
        None => state.template.clone(),
    };
    Json(review_inject(&review, &template, &labels))
}

/// The mesh config (`istio` ConfigMap in the root namespace) in the store, when present and valid: its
/// `defaultConfig` is what `proxy.istio.io/config` annotations override.
fn mesh_config(store: &Store) -> Option<crate::config::mesh::MeshConfig> {
    let (ns, name) = crate::model::snapshot::MESH_CONFIGMAP;
    match store.get(&ObjectKey::new(Kind::ConfigMap, ns, name))? {
        crate::config::Object::ConfigMap(cm) => {
            crate::config::mesh::MeshConfig::from_configmap(&cm).ok()
        }
        _ => None,
    }
}

async fn validate_handler(Json(review): Json<Value>) -> Json<Value> {
    Json(review_validate(&review))
}

/// A review answering `request` (echoing its uid).
fn response(review: &Value, allowed: bool) -> Value {
    let uid = review["request"]["uid"].clone();
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {"uid": uid, "allowed": allowed},
    })
}

fn deny(review: &Value, code: u16, message: String) -> Value {
    let mut r = response(review, false);
    r["response"]["status"] = json!({"code": code, "message": message});
    r
}

/// Answers an injection review: allowed always, with a JSON patch when the pod is injected. `namespace_labels`
/// looks a namespace's labels up (`None` when unknown).
pub fn review_inject(
    review: &Value,
    template: &Template,
    namespace_labels: &dyn Fn(&str) -> Option<BTreeMap<String, String>>,
) -> Value {
    let req = &review["request"];
    if req["kind"]["kind"] != "Pod" || req["object"].is_null() {
        return response(review, true);
    }
    let mut pod = req["object"].clone();
    let namespace = req["namespace"]
        .as_str()
        .or_else(|| pod["metadata"]["namespace"].as_str())
        .unwrap_or("default")
        .to_string();
    // On CREATE the pod often has no namespace (and no name yet); the request carries it.
    if pod["metadata"]["namespace"].is_null() {
        pod["metadata"]["namespace"] = namespace.clone().into();
    }
    let labels = namespace_labels(&namespace);
    match pod::inject_pod(&pod, labels.as_ref(), template) {
        Ok(injected) => {
            let mut patch = pod::diff(&req["object"], &injected);
            // The namespace was filled in only for the injector's benefit.
            patch.retain(|op| op["path"] != "/metadata/namespace");
            let mut r = response(review, true);
            r["response"]["patchType"] = "JSONPatch".into();
            r["response"]["patch"] =
                base64(serde_json::to_string(&patch).unwrap_or_default().as_bytes()).into();
            r
        }
        Err(skip) => {
            tracing::debug!(namespace, reason = %skip, "not injecting");
            response(review, true)
        }
    }
}

/// Answers a validation review with the rules of `rudder validate` (strict: unknown fields are errors).
/// Kinds rudder does not read, and deletes, are allowed.
pub fn review_validate(review: &Value) -> Value {
    let req = &review["request"];
    let obj = &req["object"];
    if obj.is_null() || req["operation"] == "DELETE" {
        return response(review, true);
    }
    let namespace = req["namespace"].as_str().unwrap_or("default");
    let checked = check_document(
        decode_value("admission request", obj.clone(), namespace),
        true,
    );
    if checked.skipped.is_some() {
        return response(review, true);
    }
    let errors: Vec<String> = checked
        .problems
        .iter()
        .filter(|p| p.severity == Severity::Error)
        .map(|p| p.to_string())
        .collect();
    let warnings: Vec<String> = checked
        .problems
        .iter()
        .filter(|p| p.severity == Severity::Warning)
        .map(|p| p.to_string())
        .collect();
    let mut r = if errors.is_empty() {
        response(review, true)
    } else {
        deny(review, 400, errors.join("\n"))
    };
    if !warnings.is_empty() {
        r["response"]["warnings"] = warnings.into();
    }
    r
}

/// Errors starting the HTTPS webhook server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The certificate chain or key PEM could not be read.
    #[error("webhook serving certificate: {0}")]
    Pem(String),
    /// rustls refused the certificate/key pair.
    #[error("webhook TLS config: {0}")]
    Tls(#[source] tokio_rustls::rustls::Error),
}

/// A TLS server config (ring) from a PEM chain (leaf first) and a PEM private key.
pub fn tls_config(
    chain_pem: &[u8],
    key_pem: &[u8],
) -> Result<tokio_rustls::rustls::ServerConfig, Error> {
    let cert = ServingCert::new(chain_pem, key_pem)?;
    tls_config_with(Arc::new(cert))
}

/// A TLS server config (ring) whose certificate comes from `cert`, which can be swapped while serving.
pub fn tls_config_with(
    cert: Arc<ServingCert>,
) -> Result<tokio_rustls::rustls::ServerConfig, Error> {
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(Error::Tls)?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn provider() -> Arc<tokio_rustls::rustls::crypto::CryptoProvider> {
    Arc::new(tokio_rustls::rustls::crypto::ring::default_provider())
}

/// The webhook serving certificate. In Kubernetes mode rudder issues it from its CA and replaces it when the
/// CA changes, so it always chains to the `caBundle` rudder patches into the webhook configurations.
pub struct ServingCert(parking_lot::RwLock<Arc<tokio_rustls::rustls::sign::CertifiedKey>>);

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServingCert")
    }
}

impl ServingCert {
    /// A certificate from a PEM chain (leaf first) and a PEM private key.
    pub fn new(chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, Error> {
        Ok(ServingCert(parking_lot::RwLock::new(Arc::new(
            certified_key(chain_pem, key_pem)?,
        ))))
    }

    /// Serves `chain_pem`/`key_pem` from the next handshake on.
    pub fn replace(&self, chain_pem: &[u8], key_pem: &[u8]) -> Result<(), Error> {
        *self.0.write() = Arc::new(certified_key(chain_pem, key_pem)?);
        Ok(())
    }
}

impl tokio_rustls::rustls::server::ResolvesServerCert for ServingCert {
    fn resolve(
        &self,
        _hello: tokio_rustls::rustls::server::ClientHello<'_>,
    ) -> Option<Arc<tokio_rustls::rustls::sign::CertifiedKey>> {
        Some(self.0.read().clone())
    }
}

fn certified_key(
    chain_pem: &[u8],
    key_pem: &[u8],
) -> Result<tokio_rustls::rustls::sign::CertifiedKey, Error> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(Error::Pem("no certificate in the chain PEM".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| Error::Pem(e.to_string()))?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(Error::Tls)?;
    let ck = tokio_rustls::rustls::sign::CertifiedKey::new(certs, signing);
    // The key must belong to the leaf, as with_single_cert checks.
    ck.keys_match().map_err(Error::Tls)?;
    Ok(ck)
}

/// A TCP listener that completes a TLS handshake before handing a connection to axum. A client that fails or
/// stalls its handshake is dropped (after 10 s at most) without stopping the others' accepts for long.
pub struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl TlsListener {
    /// Wraps a bound listener with `config`.
    pub fn new(tcp: tokio::net::TcpListener, config: tokio_rustls::rustls::ServerConfig) -> Self {
        TlsListener {
            tcp,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, addr) = match self.tcp.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook accept failed");
                    continue;
                }
            };
            let handshake = self.acceptor.accept(stream);
            match tokio::time::timeout(std::time::Duration::from_secs(10), handshake).await {
                Ok(Ok(tls)) => return (tls, addr),
                Ok(Err(e)) => tracing::debug!(%addr, error = %e, "webhook TLS handshake failed"),
                Err(_) => tracing::debug!(%addr, "webhook TLS handshake timed out"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// Serves the webhooks over HTTPS (istiod's 15017) until `shutdown` completes.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    config: tokio_rustls::rustls::ServerConfig,
    state: Arc<WebhookState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(TlsListener::new(listener, config), router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Standard base64 with padding (the `patch` field's encoding).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    fn review(object: Value) -> Value {
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": "u-1", "kind": {"group": "networking.istio.io", "version": "v1", "kind": "VirtualService"},
            "namespace": "shop", "operation": "CREATE", "object": object}})
    }

    #[test]
    fn validate_denies_with_object_lines_and_allows_unknown_kinds() {
        let bad = json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "r", "namespace": "shop"},
            "spec": {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": ""}}]}]}});
        let r = review_validate(&review(bad));
        assert_eq!(r["response"]["uid"], "u-1");
        assert_eq!(r["response"]["allowed"], false);
        assert_eq!(
            r["response"]["status"]["message"],
            "VirtualService shop/r: spec.http[0].route[0].destination.host: required"
        );
        let unknown =
            json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}});
        assert_eq!(
            review_validate(&review(unknown))["response"]["allowed"],
            true
        );
        let good = json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "r", "namespace": "shop"},
            "spec": {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]}});
        assert_eq!(review_validate(&review(good))["response"]["allowed"], true);
    }
}
