//! Token verification keys from the Kubernetes API server: the service-account issuer's JWKS
//! (`GET /openid/v1/jwks`) and its issuer (`GET /.well-known/openid-configuration`), fetched with rudder's own
//! client, so identity in a cluster needs no `--jwks` file.
//!
//! The API server rotates its signing key without notice, so [`run_refresh`] fetches the set again every
//! [`REFRESH_EVERY`], and early (at most once per [`MIN_GAP`]) when a token names a `kid` the set lacks. A failed
//! or empty fetch keeps the last good set: a flaky API server must not lock every proxy out.
//!
//! RBAC: `get` on the non-resource URLs `/openid/v1/jwks` and `/.well-known/openid-configuration` (the
//! `system:service-account-issuer-discovery` ClusterRole grants exactly these).

use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use serde::Deserialize;
use tokio::time::Instant;

use super::{Error, JwtAuthenticator};

/// Where the API server serves the issuer's public keys.
pub const JWKS_PATH: &str = "/openid/v1/jwks";
/// Where the API server serves the issuer's OIDC discovery document.
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
/// How often the key set is fetched again.
pub const REFRESH_EVERY: Duration = Duration::from_secs(300);
/// The least time between two fetches triggered by unknown `kid`s (a stream of forged tokens must not turn into
/// a stream of API requests).
pub const MIN_GAP: Duration = Duration::from_secs(60);

fn bad(path: &str, msg: impl ToString) -> Error {
    Error::BadJwks(PathBuf::from(path), msg.to_string())
}

async fn get(client: &kube::Client, path: &str) -> Result<String, Error> {
    let req = http::Request::get(path)
        .body(Vec::new())
        .map_err(|e| bad(path, e))?;
    client
        .request_text(req)
        .await
        .map_err(|e| bad(path, format!("API server: {e}")))
}

/// The issuer's key set; an empty set is an error.
pub async fn fetch(client: &kube::Client) -> Result<JwkSet, Error> {
    let text = get(client, JWKS_PATH).await?;
    let jwks: JwkSet = serde_json::from_str(&text).map_err(|e| bad(JWKS_PATH, e))?;
    if jwks.keys.is_empty() {
        return Err(bad(JWKS_PATH, "no keys"));
    }
    Ok(jwks)
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
}

/// The service-account issuer (`iss` of the tokens the API server mints).
pub async fn issuer(client: &kube::Client) -> Result<String, Error> {
    let text = get(client, DISCOVERY_PATH).await?;
    let doc: Discovery = serde_json::from_str(&text).map_err(|e| bad(DISCOVERY_PATH, e))?;
    Ok(doc.issuer)
}

/// An authenticator with the API server's keys. The issuer is `issuer` when given; otherwise the API server's
/// discovery document names it, and when that cannot be read `iss` goes unchecked (the keys are the cluster's
/// own, so the signature already proves the API server minted the token).
pub async fn authenticator(
    client: &kube::Client,
    audiences: Vec<String>,
    issuer: Option<String>,
) -> Result<JwtAuthenticator, Error> {
    let jwks = fetch(client).await?;
    let issuer = match issuer {
        Some(iss) => Some(iss),
        None => match self::issuer(client).await {
            Ok(iss) => Some(iss),
            Err(e) => {
                tracing::warn!(error = %e, "service-account issuer unknown; token iss not checked");
                None
            }
        },
    };
    tracing::info!(keys = jwks.keys.len(), issuer = ?issuer, "token keys loaded from the API server");
    Ok(JwtAuthenticator::new(jwks, audiences, issuer))
}

/// Keeps `auth`'s keys current: fetches every `every`, and on an unknown `kid` no sooner than `min_gap` after
/// the previous fetch. Errors keep the last good set. Runs until the task is dropped.
pub async fn run_refresh(
    client: kube::Client,
    auth: JwtAuthenticator,
    every: Duration,
    min_gap: Duration,
) {
    let wanted = auth.refresh_wanted();
    let mut last = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(last + every) => {}
            _ = wanted.notified() => {
                // Early, but not more often than min_gap.
                tokio::time::sleep_until(last + min_gap).await;
            }
        }
        last = Instant::now();
        match fetch(&client).await {
            Ok(jwks) => {
                let before = auth.key_ids();
                let kids: Vec<Option<String>> =
                    jwks.keys.iter().map(|k| k.common.key_id.clone()).collect();
                auth.replace_keys(jwks);
                if before != kids {
                    tracing::info!(?kids, "service-account issuer keys changed");
                }
            }
            Err(e) => tracing::warn!(error = %e, "JWKS refresh failed; keeping the last good keys"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::auth::AuthError;
    use crate::security::testing::{TestIssuer, TokenSpec};
    use crate::test_helpers::kube::Fake;

    fn serve(fake: &Fake, path: &str, status: u16, body: serde_json::Value) {
        fake.serve_raw(path, status, body);
    }

    async fn until(what: &str, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ok() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn keys_and_issuer_come_from_the_api_server_and_follow_rotation() {
        let fake = Fake::new(&[]);
        let (mut old, new) = (TestIssuer::new("old"), TestIssuer::new("new"));
        serve(&fake, JWKS_PATH, 200, old.jwks());
        serve(
            &fake,
            DISCOVERY_PATH,
            200,
            serde_json::json!({"issuer": old.issuer, "jwks_uri": "https://x/openid/v1/jwks"}),
        );
        let client = fake.client();
        let auth = authenticator(&client, vec!["istio-ca".into()], None)
            .await
            .unwrap();
        let spec = TokenSpec::new("shop", "cart");
        assert_eq!(
            auth.verify(&old.token(&spec)).unwrap().service_account,
            "cart"
        );
        // The discovered issuer is enforced.
        let cluster_issuer = std::mem::replace(&mut old.issuer, "https://elsewhere".into());
        assert_eq!(auth.verify(&old.token(&spec)), Err(AuthError::WrongIssuer));
        old.issuer = cluster_issuer;

        let refresher = tokio::spawn(run_refresh(
            client,
            auth.clone(),
            Duration::from_secs(3600),
            Duration::from_millis(50),
        ));
        // The endpoint fails: an unknown kid triggers a fetch, which keeps the old set.
        serve(
            &fake,
            JWKS_PATH,
            500,
            serde_json::json!({"kind": "Status", "code": 500}),
        );
        let jwks_gets = || {
            fake.requests()
                .iter()
                .filter(|r| r.as_str() == JWKS_PATH)
                .count()
        };
        let before = jwks_gets();
        assert!(auth.verify(&new.token(&spec)).is_err());
        until("a failed refresh", || jwks_gets() > before).await;
        assert_eq!(auth.key_ids(), vec![Some("old".to_string())]);
        assert!(auth.verify(&old.token(&spec)).is_ok(), "last good set kept");
        // An empty set is refused too.
        serve(&fake, JWKS_PATH, 200, serde_json::json!({"keys": []}));
        let before = jwks_gets();
        assert!(auth.verify(&new.token(&spec)).is_err());
        until("an empty refresh", || jwks_gets() > before).await;
        assert!(auth.verify(&old.token(&spec)).is_ok(), "last good set kept");
        // The key rotates: the new token is accepted after the refresh it triggered.
        serve(&fake, JWKS_PATH, 200, new.jwks());
        assert!(auth.verify(&new.token(&spec)).is_err());
        until("the rotated key", || auth.verify(&new.token(&spec)).is_ok()).await;
        assert!(auth.verify(&old.token(&spec)).is_err(), "old key retired");
        refresher.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn periodic_refresh_without_any_trigger() {
        let fake = Fake::new(&[]);
        let (old, new) = (TestIssuer::new("old"), TestIssuer::new("new"));
        serve(&fake, JWKS_PATH, 200, old.jwks());
        let client = fake.client();
        let auth = authenticator(&client, vec!["istio-ca".into()], Some(old.issuer.clone()))
            .await
            .unwrap();
        serve(&fake, JWKS_PATH, 200, new.jwks());
        let refresher = tokio::spawn(run_refresh(client, auth.clone(), REFRESH_EVERY, MIN_GAP));
        tokio::time::sleep(REFRESH_EVERY + Duration::from_secs(1)).await;
        assert_eq!(auth.key_ids(), vec![Some("new".to_string())]);
        refresher.abort();
    }

    #[tokio::test]
    async fn a_missing_endpoint_is_a_startup_error() {
        let fake = Fake::new(&[]);
        let err = authenticator(&fake.client(), vec!["istio-ca".into()], None)
            .await
            .unwrap_err();
        assert!(err.to_string().contains(JWKS_PATH), "{err}");
    }
}
