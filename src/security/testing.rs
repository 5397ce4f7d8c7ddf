//! A stand-in Kubernetes token issuer for tests and the local mesh: an ES256 key, its JWKS, and service-account
//! tokens shaped like the kubelet's projected ones (feature `testing`).

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PublicKeyData};
use serde_json::{Value, json};

/// Signs service-account tokens with its own P-256 key.
pub struct TestIssuer {
    key: KeyPair,
    /// The `kid` of the key (header and JWKS).
    pub kid: String,
    /// The `iss` claim.
    pub issuer: String,
}

/// What to put in a token.
#[derive(Clone, Debug)]
pub struct TokenSpec {
    /// Namespace of the service account.
    pub namespace: String,
    /// Service account name.
    pub service_account: String,
    /// `aud`.
    pub audience: String,
    /// Seconds from now until `exp` (negative: already expired).
    pub expires_in: i64,
}

impl TokenSpec {
    /// A valid `istio-ca` token for `ns/sa`, one hour long.
    pub fn new(ns: &str, sa: &str) -> Self {
        TokenSpec {
            namespace: ns.into(),
            service_account: sa.into(),
            audience: "istio-ca".into(),
            expires_in: 3600,
        }
    }
}

impl Default for TestIssuer {
    fn default() -> Self {
        Self::new("test-key")
    }
}

impl TestIssuer {
    /// A new issuer whose key has id `kid`.
    pub fn new(kid: &str) -> Self {
        TestIssuer {
            key: KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("P-256 key generation"),
            kid: kid.into(),
            issuer: "https://kubernetes.default.svc.cluster.local".into(),
        }
    }

    /// The JWKS with this issuer's public key.
    pub fn jwks(&self) -> Value {
        // Uncompressed point: 0x04 || x || y.
        let raw = self.key.der_bytes();
        let (x, y) = raw[1..].split_at(32);
        json!({"keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
        }]})
    }

    /// A signed token as the kubelet projects it (no trailing newline).
    pub fn token(&self, spec: &TokenSpec) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs() as i64;
        let claims = json!({
            "aud": [spec.audience],
            "exp": now + spec.expires_in,
            "iat": now.min(now + spec.expires_in - 60),
            "nbf": now.min(now + spec.expires_in - 60),
            "iss": self.issuer,
            "sub": format!("system:serviceaccount:{}:{}", spec.namespace, spec.service_account),
            "kubernetes.io": {
                "namespace": spec.namespace,
                "serviceaccount": {"name": spec.service_account, "uid": "00000000-0000-0000-0000-000000000000"},
            },
        });
        self.sign(&claims)
    }

    /// Signs arbitrary claims (for malformed-claim cases).
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        let key = EncodingKey::from_ec_pem(self.key.serialize_pem().as_bytes())
            .expect("rcgen writes PKCS#8 PEM");
        jsonwebtoken::encode(&header, claims, &key).expect("signing a token")
    }
}
