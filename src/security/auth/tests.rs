use futures::FutureExt;
use serde_json::json;
use tonic::metadata::MetadataValue;

use super::*;
use crate::security::testing::{TestIssuer, TokenSpec};

fn authenticator(issuer: &TestIssuer) -> JwtAuthenticator {
    let jwks: JwkSet = serde_json::from_value(issuer.jwks()).unwrap();
    JwtAuthenticator::new(
        jwks,
        vec![DEFAULT_AUDIENCE.into()],
        Some(issuer.issuer.clone()),
    )
}

fn node(ns: &str) -> ProxyId {
    format!("sidecar~10.0.0.1~pod-1.{ns}~{ns}.svc.cluster.local")
        .parse()
        .unwrap()
}

fn metadata(value: &str) -> MetadataMap {
    let mut m = MetadataMap::new();
    m.insert("authorization", MetadataValue::try_from(value).unwrap());
    m
}

#[test]
fn valid_token_yields_its_service_account() {
    let issuer = TestIssuer::default();
    let auth = authenticator(&issuer);
    let token = issuer.token(&TokenSpec::new("bookinfo", "reviews"));
    let id = auth
        .authenticate_stream(&metadata(&format!("Bearer {token}")), &node("bookinfo"))
        .unwrap();
    assert_eq!(
        id,
        PeerIdentity {
            namespace: "bookinfo".into(),
            service_account: "reviews".into()
        }
    );
}

#[test]
fn subject_alone_is_enough() {
    let issuer = TestIssuer::default();
    let auth = authenticator(&issuer);
    let now = jsonwebtoken::get_current_timestamp();
    let token = issuer.sign(&json!({
        "aud": "istio-ca", "exp": now + 600, "iss": issuer.issuer,
        "sub": "system:serviceaccount:default:sleep",
    }));
    assert_eq!(auth.verify(&token).unwrap().service_account, "sleep");
}

#[test]
fn refusals_name_their_reason() {
    let issuer = TestIssuer::default();
    let auth = authenticator(&issuer);
    let forger = TestIssuer::new(&issuer.kid);
    let other_kid = TestIssuer::new("other");
    let now = jsonwebtoken::get_current_timestamp();
    let good = TokenSpec::new("a", "sa");
    let cases: Vec<(&str, MetadataMap, ProxyId, AuthError)> = vec![
        ("no header", MetadataMap::new(), node("a"), AuthError::MissingToken),
        (
            "not bearer",
            metadata(&format!("Basic {}", issuer.token(&good))),
            node("a"),
            AuthError::MissingToken,
        ),
        (
            "namespace A token, node in B",
            metadata(&format!("Bearer {}", issuer.token(&good))),
            node("b"),
            AuthError::NamespaceMismatch {
                token: "a".into(),
                node: "b".into(),
            },
        ),
        (
            "forged (same kid, other key)",
            metadata(&format!("Bearer {}", forger.token(&good))),
            node("a"),
            AuthError::BadSignature,
        ),
        (
            "unknown kid",
            metadata(&format!("Bearer {}", other_kid.token(&good))),
            node("a"),
            AuthError::UnknownKey {
                kid: Some("other".into()),
                alg: "ES256".into(),
            },
        ),
        (
            "expired",
            metadata(&format!(
                "Bearer {}",
                issuer.token(&TokenSpec {
                    expires_in: -3600,
                    ..good.clone()
                })
            )),
            node("a"),
            AuthError::Expired,
        ),
        (
            "wrong audience",
            metadata(&format!(
                "Bearer {}",
                issuer.token(&TokenSpec {
                    audience: "kubernetes".into(),
                    ..good.clone()
                })
            )),
            node("a"),
            AuthError::WrongAudience(vec!["istio-ca".into()]),
        ),
        (
            "not a service account",
            metadata(&format!(
                "Bearer {}",
                issuer.sign(&json!({"aud": "istio-ca", "exp": now + 600, "iss": issuer.issuer, "sub": "admin"}))
            )),
            node("a"),
            AuthError::NotServiceAccount("admin".into()),
        ),
        (
            "wrong issuer",
            metadata(&format!(
                "Bearer {}",
                issuer.sign(&json!({"aud": "istio-ca", "exp": now + 600, "iss": "evil",
                    "sub": "system:serviceaccount:a:sa"}))
            )),
            node("a"),
            AuthError::WrongIssuer,
        ),
        (
            "garbage",
            metadata("Bearer not.a.jwt"),
            node("a"),
            AuthError::Malformed(String::new()),
        ),
    ];
    for (name, md, node, want) in cases {
        let got = auth.authenticate_stream(&md, &node).unwrap_err();
        match (&got, &want) {
            (AuthError::Malformed(_), AuthError::Malformed(_)) => {}
            _ => assert_eq!(got, want, "{name}"),
        }
        assert!(!got.to_string().is_empty());
    }
}

#[test]
fn replaced_keys_verify_new_tokens_and_an_unknown_kid_asks_for_a_refresh() {
    let old = TestIssuer::new("old");
    let new = TestIssuer::new("new");
    let auth = authenticator(&old);
    let wanted = auth.refresh_wanted();
    let spec = TokenSpec::new("shop", "cart");
    // A token of the rotated key is unknown until the set is replaced, and says so to the refresher.
    assert!(matches!(
        auth.verify(&new.token(&spec)),
        Err(AuthError::UnknownKey { kid: Some(k), .. }) if k == "new"
    ));
    assert!(
        wanted.notified().now_or_never().is_some(),
        "unknown kid notifies"
    );
    let clone = auth.clone();
    assert!(auth.replace_keys(serde_json::from_value(new.jwks()).unwrap()));
    // Clones share the set.
    assert_eq!(
        clone.verify(&new.token(&spec)).unwrap().service_account,
        "cart"
    );
    assert_eq!(clone.key_ids(), vec![Some("new".to_string())]);
    assert!(matches!(
        auth.verify(&old.token(&spec)),
        Err(AuthError::UnknownKey { .. })
    ));
    assert!(
        wanted.notified().now_or_never().is_some(),
        "retired kid notifies"
    );
    // An empty set never replaces a working one.
    assert!(!auth.replace_keys(JwkSet { keys: vec![] }));
    assert_eq!(auth.verify(&new.token(&spec)).unwrap().namespace, "shop");
    // A bad signature from a known kid is not a reason to refresh.
    let forger = TestIssuer::new("new");
    assert_eq!(
        auth.verify(&forger.token(&spec)),
        Err(AuthError::BadSignature)
    );
    assert!(wanted.notified().now_or_never().is_none());
}
