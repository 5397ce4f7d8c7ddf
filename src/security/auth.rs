//! Proxy authentication: the Kubernetes service-account JWT a stock Envoy sends as `authorization: Bearer …`
//! on its ADS stream (file-based call credentials, re-read on every reconnect), verified against the cluster
//! issuer's JWKS.
//!
//! Checks: signature (RS256/ES256, key chosen by `kid`), `exp`/`nbf`, audience (`istio-ca`), issuer when
//! configured; the identity comes from the `kubernetes.io` claim or `sub` `system:serviceaccount:<ns>:<sa>`,
//! and its namespace must be the node id's. Every refusal names its reason (logged by the xDS server).
//!
//! The key set is swappable ([`JwtAuthenticator::replace_keys`]) so the cluster issuer's key rotation is
//! followed without a restart (Kubernetes mode: [`super::kube_jwks`]); a token with an unknown `kid` asks the
//! refresher for an early fetch ([`JwtAuthenticator::refresh_wanted`]).

use std::path::Path;
use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::RwLock;
use serde::Deserialize;
use tokio::sync::Notify;
use tonic::metadata::MetadataMap;

use super::Error;
use crate::xds::{Authenticate, PeerIdentity, ProxyId};

/// The audience istio-agent requests for its token, and istiod checks.
pub const DEFAULT_AUDIENCE: &str = "istio-ca";

/// Why a proxy's credentials were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `authorization: Bearer …` metadata on the stream.
    #[error("no bearer token on the stream (is the ADS cluster's call credential configured?)")]
    MissingToken,
    /// Not a JWT, or its header cannot be read.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// No key of the JWKS fits the token's `kid`/algorithm.
    #[error("no JWKS key for kid {kid:?} and algorithm {alg:?}")]
    UnknownKey {
        /// The token's key id.
        kid: Option<String>,
        /// The token's algorithm.
        alg: String,
    },
    /// The signature does not verify: forged or signed by another issuer.
    #[error("invalid signature")]
    BadSignature,
    /// `exp` is in the past.
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token not yet valid")]
    Immature,
    /// `aud` does not include an accepted audience.
    #[error("wrong audience (want one of {0:?})")]
    WrongAudience(Vec<String>),
    /// `iss` is not the configured issuer.
    #[error("wrong issuer")]
    WrongIssuer,
    /// Any other claim problem (missing `exp`, bad types, …).
    #[error("invalid claims: {0}")]
    Claims(String),
    /// The subject is not a service account.
    #[error("subject {0:?} is not system:serviceaccount:<ns>:<sa>")]
    NotServiceAccount(String),
    /// The token's namespace is not the node id's.
    #[error("token is for namespace {token:?} but the node id says {node:?}")]
    NamespaceMismatch {
        /// Namespace from the token.
        token: String,
        /// Namespace from the node id.
        node: String,
    },
}

/// Verifies service-account JWTs against a JWKS. Clones share the key set.
#[derive(Clone)]
pub struct JwtAuthenticator {
    /// The current key set; a verification reads one snapshot, a refresh swaps the whole set.
    keys: Arc<RwLock<Arc<Vec<Jwk>>>>,
    audiences: Vec<String>,
    issuer: Option<String>,
    /// Notified when a token names a `kid` the set lacks: the issuer may have rotated its key.
    refresh: Arc<Notify>,
}

impl std::fmt::Debug for JwtAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuthenticator")
            .field("keys", &self.keys.read().len())
            .field("audiences", &self.audiences)
            .field("issuer", &self.issuer)
            .finish()
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(rename = "kubernetes.io")]
    kubernetes: Option<KubernetesClaim>,
}

#[derive(Deserialize)]
struct KubernetesClaim {
    namespace: Option<String>,
    serviceaccount: Option<Named>,
}

#[derive(Deserialize)]
struct Named {
    name: String,
}

impl JwtAuthenticator {
    /// An authenticator trusting `jwks` (JSON), accepting `audiences`, and checking `iss` when `issuer` is set.
    pub fn new(jwks: JwkSet, audiences: Vec<String>, issuer: Option<String>) -> Self {
        JwtAuthenticator {
            keys: Arc::new(RwLock::new(Arc::new(jwks.keys))),
            audiences,
            issuer,
            refresh: Arc::new(Notify::new()),
        }
    }

    /// Replaces the key set (a refreshed JWKS); tokens are verified against it from now on. An empty set is
    /// refused (returns `false`) so a broken answer never locks every proxy out.
    pub fn replace_keys(&self, jwks: JwkSet) -> bool {
        if jwks.keys.is_empty() {
            return false;
        }
        *self.keys.write() = Arc::new(jwks.keys);
        true
    }

    /// The key ids of the current set (for logs and tests).
    pub fn key_ids(&self) -> Vec<Option<String>> {
        self.keys
            .read()
            .iter()
            .map(|k| k.common.key_id.clone())
            .collect()
    }

    /// Notified whenever a token's `kid` is not in the set: a refresher may fetch the JWKS early.
    pub fn refresh_wanted(&self) -> Arc<Notify> {
        self.refresh.clone()
    }

    /// Reads the JWKS from a file (the cluster issuer's `/openid/v1/jwks`).
    pub fn from_file(
        path: &Path,
        audiences: Vec<String>,
        issuer: Option<String>,
    ) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Io(path.to_owned(), e))?;
        let jwks: JwkSet = serde_json::from_str(&text)
            .map_err(|e| Error::BadJwks(path.to_owned(), e.to_string()))?;
        if jwks.keys.is_empty() {
            return Err(Error::BadJwks(path.to_owned(), "no keys".into()));
        }
        Ok(Self::new(jwks, audiences, issuer))
    }

    /// Verifies `token` and returns the service account it was issued to.
    pub fn verify(&self, token: &str) -> Result<PeerIdentity, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Malformed(e.to_string()))?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(AuthError::UnknownKey {
                kid: header.kid,
                alg: format!("{:?}", header.alg),
            });
        }
        let mut validation = Validation::new(header.alg);
        validation.set_audience(&self.audiences);
        validation.set_required_spec_claims(&["exp", "aud", "sub"]);
        validation.validate_nbf = true;
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
        }
        let keys = self.keys.read().clone();
        let candidates = keys.iter().filter(|k| {
            header.kid.is_none() || k.common.key_id.is_none() || k.common.key_id == header.kid
        });
        let mut last = None;
        for jwk in candidates {
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            match jsonwebtoken::decode::<Claims>(token, &key, &validation) {
                Ok(data) => return identity(data.claims),
                // A key of the wrong type for this algorithm: try the next one.
                Err(e) if matches!(e.kind(), ErrorKind::InvalidAlgorithm) => continue,
                Err(e) => {
                    let err = self.classify(e.kind());
                    // Only a bad signature may be fixed by another key with the same kid.
                    if err != AuthError::BadSignature {
                        return Err(err);
                    }
                    last = Some(err);
                }
            }
        }
        if let Some(err) = last {
            return Err(err);
        }
        if header.kid.is_some() && !keys.iter().any(|k| k.common.key_id == header.kid) {
            self.refresh.notify_one();
        }
        Err(AuthError::UnknownKey {
            kid: header.kid,
            alg: format!("{:?}", header.alg),
        })
    }

    fn classify(&self, kind: &ErrorKind) -> AuthError {
        match kind {
            ErrorKind::InvalidSignature => AuthError::BadSignature,
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::Immature,
            ErrorKind::InvalidAudience => AuthError::WrongAudience(self.audiences.clone()),
            ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
            ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Json(_) => {
                AuthError::Malformed(format!("{kind:?}"))
            }
            other => AuthError::Claims(format!("{other:?}")),
        }
    }

    /// Extracts the bearer token from gRPC metadata, verifies it and checks it against the node id.
    pub fn authenticate_stream(
        &self,
        metadata: &MetadataMap,
        node: &ProxyId,
    ) -> Result<PeerIdentity, AuthError> {
        let token = bearer(metadata).ok_or(AuthError::MissingToken)?;
        let id = self.verify(token)?;
        if id.namespace != node.namespace {
            return Err(AuthError::NamespaceMismatch {
                token: id.namespace,
                node: node.namespace.clone(),
            });
        }
        Ok(id)
    }
}

impl Authenticate for JwtAuthenticator {
    fn authenticate(&self, metadata: &MetadataMap, node: &ProxyId) -> Result<PeerIdentity, String> {
        self.authenticate_stream(metadata, node)
            .map_err(|e| e.to_string())
    }
}

fn bearer(metadata: &MetadataMap) -> Option<&str> {
    let value = metadata.get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn identity(claims: Claims) -> Result<PeerIdentity, AuthError> {
    if let Some(k) = claims.kubernetes
        && let (Some(ns), Some(sa)) = (k.namespace, k.serviceaccount)
    {
        return Ok(PeerIdentity {
            namespace: ns,
            service_account: sa.name,
        });
    }
    match claims
        .sub
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
    {
        Some((ns, sa)) if !ns.is_empty() && !sa.is_empty() && !sa.contains(':') => {
            Ok(PeerIdentity {
                namespace: ns.to_owned(),
                service_account: sa.to_owned(),
            })
        }
        _ => Err(AuthError::NotServiceAccount(claims.sub)),
    }
}

#[cfg(test)]
mod tests;
