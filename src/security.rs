//! Identity: the built-in CA, SPIFFE ids, proxy authentication and the SDS secrets served to stock Envoy.
//!
//! ```text
//!  Envoy ──TLS 15012, authorization: Bearer <SA token>──▶ xds server ──authenticator──▶ auth (JWKS check,
//!                                                          │                            node-id namespace)
//!                                                          ▼
//!                                             generator (SDS hook) ──▶ sds::SecretIssuer ──▶ ca::Ca
//!                                                                      (per-proxy cert cache,  (root, plugged
//!                                                                       half-life rotation)     or self-signed)
//! ```
//!
//! rudder has no istio-agent in the pod, so it issues the workload certificate itself and hands it to Envoy
//! over SDS — only on the TLS server, and only to a proxy whose service-account token proved its identity.
//! The plaintext server (15010) never authenticates anyone, so it never serves a secret.

pub mod auth;
pub mod bootstrap;
pub mod ca;
pub mod kube_ca;
pub mod kube_jwks;
pub mod kube_trust;
pub mod sds;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

pub use auth::JwtAuthenticator;
pub use ca::{Ca, CaSource, Issued};
pub use sds::SecretIssuer;

/// Istio's default trust domain.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// Identity settings: the TLS xDS server (istiod's 15012), the CA, and how proxies authenticate.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Config {
    /// Address of the TLS xDS server (`0.0.0.0:15012`).
    pub tls_addr: SocketAddr,
    /// Where the CA comes from.
    pub ca: CaSource,
    /// Trust domain of issued SPIFFE ids; `None`: the mesh config's `trustDomain` (what the generators' SAN
    /// checks use), resolved by the app at start.
    pub trust_domain: Option<String>,
    /// Workload certificate lifetime (renewed at half-life).
    pub workload_ttl: Duration,
    /// The cluster token issuer's JWKS (JSON file, e.g. from `/openid/v1/jwks`); `None`: fetched from the
    /// Kubernetes API server and refreshed ([`kube_jwks`]).
    pub jwks: Option<PathBuf>,
    /// How often keys fetched from the API server are fetched again, and the least time between two early
    /// fetches on an unknown `kid` (ignored with a JWKS file).
    pub jwks_refresh: (Duration, Duration),
    /// Accepted token audiences.
    pub audiences: Vec<String>,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Namespace rudder runs in: the serving certificate names `istiod.<ns>.svc` and `rudder.<ns>.svc`.
    pub root_namespace: String,
}

impl Config {
    /// Istio's defaults with the CA state kept in `state_dir`, tokens checked against `jwks`, and the trust
    /// domain of the mesh config.
    pub fn new(state_dir: PathBuf, jwks: impl Into<Option<PathBuf>>) -> Self {
        Config {
            tls_addr: SocketAddr::from(([0, 0, 0, 0], 15012)),
            ca: CaSource::SelfSigned { state_dir },
            trust_domain: None,
            workload_ttl: ca::DEFAULT_WORKLOAD_TTL,
            jwks: jwks.into(),
            jwks_refresh: (kube_jwks::REFRESH_EVERY, kube_jwks::MIN_GAP),
            audiences: vec![auth::DEFAULT_AUDIENCE.to_owned()],
            issuer: None,
            root_namespace: "istio-system".to_owned(),
        }
    }

    /// DNS names of the xDS serving certificate.
    pub fn serving_names(&self) -> Vec<String> {
        ["istiod", "rudder"]
            .iter()
            .map(|svc| format!("{svc}.{}.svc", self.root_namespace))
            .collect()
    }
}

impl Config {
    /// The CA's trust domain: the explicit one, else Istio's default (the app resolves `None` from the mesh
    /// config before loading).
    pub fn trust_domain_or_default(&self) -> &str {
        self.trust_domain.as_deref().unwrap_or(DEFAULT_TRUST_DOMAIN)
    }
}

/// The loaded identity components, ready to wire into the TLS xDS server and the generator.
pub struct Loaded {
    /// Issues and rotates the proxies' secrets.
    pub issuer: Arc<SecretIssuer>,
    /// Verifies the proxies' service-account tokens.
    pub authenticator: Arc<JwtAuthenticator>,
    /// TLS settings of the xDS server, with a serving certificate from the CA.
    pub tls: Arc<tokio_rustls::rustls::ServerConfig>,
}

/// Loads (or creates) the CA and the JWKS file and issues the serving certificate.
pub fn load(cfg: &Config) -> Result<Loaded, Error> {
    let ca = Ca::load(&cfg.ca, cfg.trust_domain_or_default(), cfg.workload_ttl)?;
    load_with_ca(cfg, ca)
}

/// [`load`] with a CA loaded elsewhere (Kubernetes mode: [`kube_ca::load`]). The issuer reloads a file CA
/// itself; a Kubernetes CA is replaced by [`kube_ca`]'s watch through [`SecretIssuer::replace_ca`].
pub fn load_with_ca(cfg: &Config, ca: Ca) -> Result<Loaded, Error> {
    let Some(jwks) = &cfg.jwks else {
        return Err(Error::BadJwks(
            PathBuf::from(kube_jwks::JWKS_PATH),
            "no JWKS file and no Kubernetes API server to fetch it from".into(),
        ));
    };
    let authenticator =
        JwtAuthenticator::from_file(jwks, cfg.audiences.clone(), cfg.issuer.clone())?;
    load_with(cfg, ca, authenticator)
}

/// [`load_with_ca`] with the token verifier built elsewhere (Kubernetes mode: [`kube_jwks::authenticator`]).
pub fn load_with(cfg: &Config, ca: Ca, authenticator: JwtAuthenticator) -> Result<Loaded, Error> {
    let serving = ca.issue_serving(&cfg.serving_names())?;
    let tls = Arc::new(
        crate::inject::webhook::tls_config(
            serving.chain_pem.as_bytes(),
            serving.key_pem.as_bytes(),
        )
        .map_err(|e| Error::Serving(e.to_string()))?,
    );
    Ok(Loaded {
        issuer: Arc::new(SecretIssuer::new(
            ca,
            Some(cfg.ca.clone()).filter(|s| !matches!(s, CaSource::Kube { .. })),
        )),
        authenticator: Arc::new(authenticator),
        tls,
    })
}

/// A SPIFFE id as Istio spells it: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    /// Trust domain (`cluster.local`).
    pub trust_domain: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// Kubernetes service account.
    pub service_account: String,
}

impl SpiffeId {
    /// The id of `namespace/service_account` in `trust_domain`.
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Self {
        SpiffeId {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for SpiffeId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || Error::BadSpiffeId(s.to_owned());
        let rest = s.strip_prefix("spiffe://").ok_or_else(bad)?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts[..] {
            [td, "ns", ns, "sa", sa] if !td.is_empty() && !ns.is_empty() && !sa.is_empty() => {
                Ok(SpiffeId::new(td, ns, sa))
            }
            _ => Err(bad()),
        }
    }
}

/// Errors of the security module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A string is not `spiffe://<td>/ns/<ns>/sa/<sa>`.
    #[error("invalid SPIFFE id {0:?} (expected spiffe://<trust-domain>/ns/<ns>/sa/<sa>)")]
    BadSpiffeId(String),
    /// Reading or writing a CA or JWKS file failed.
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    /// A PEM file holds no usable certificate or key.
    #[error("{0}: {1}")]
    BadPem(PathBuf, String),
    /// Generating or signing a certificate failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[source] rcgen::Error),
    /// The plugged-in CA files do not fit together.
    #[error("plugged-in CA in {0}: {1}")]
    BadCa(PathBuf, String),
    /// The CA Secrets in Kubernetes could not be read or written.
    #[error("CA in Kubernetes namespace {0}: {1}")]
    Kube(String, String),
    /// The JWKS file cannot be used.
    #[error("JWKS {0}: {1}")]
    BadJwks(PathBuf, String),
    /// The xDS server's TLS configuration cannot be built from its serving certificate.
    #[error("xDS serving certificate: {0}")]
    Serving(String),
}
