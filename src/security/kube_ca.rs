//! The CA in Kubernetes mode, kept where istiod keeps it so replicas share one root and a restart keeps it:
//!
//! ```text
//!  Secret cacerts (plugged-in CA, wins) ──┐
//!                                         ├──▶ load ──▶ Ca ──▶ SecretIssuer ──▶ roots (watch) ──▶ ConfigMaps,
//!  Secret istio-ca-secret (self-signed) ──┘    ▲                                                   caBundle,
//!     created on first start; a replica         └── reloaded every RELOAD_EVERY                    webhook cert
//!     that loses the create race reads it back
//! ```
//!
//! Keys are istiod's: `cacerts` holds `ca-cert.pem`, `ca-key.pem`, `root-cert.pem` and optionally
//! `cert-chain.pem` (the `cacerts` files); `istio-ca-secret` (type `istio.io/ca-root`) holds the root in
//! `ca-cert.pem`/`ca-key.pem`, and `cert-chain.pem`, `key.pem`, `root-cert.pem` empty, so rudder and istiod can
//! take over each other's root.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use tokio::sync::watch;

use super::ca::{self, Ca, PluggedPems};
use super::{Error, SecretIssuer};

/// istiod's self-signed root Secret.
pub const CA_SECRET: &str = "istio-ca-secret";
/// Istio's plugged-in CA Secret.
pub const CACERTS_SECRET: &str = "cacerts";
/// Type of [`CA_SECRET`], as istiod writes it.
pub const CA_SECRET_TYPE: &str = "istio.io/ca-root";
/// `key.pem`: empty in [`CA_SECRET`] (istiod's `PrivateKeyID`).
pub const KEY: &str = "key.pem";
/// How often the Secrets are read again (a plugged-in CA may be added or rotated while running).
pub const RELOAD_EVERY: Duration = Duration::from_secs(30);

/// Where the CA was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Secret `cacerts`.
    Plugged,
    /// Secret `istio-ca-secret`, existing.
    SelfSigned,
    /// Secret `istio-ca-secret`, created now by this replica.
    Created,
}

/// Loads the CA from `namespace`: `cacerts` if present, else `istio-ca-secret`, created with a new root when
/// absent. When another replica creates it first (409 AlreadyExists), its root is read back and used, so all
/// replicas sign with the same root.
pub async fn load(
    client: &kube::Client,
    namespace: &str,
    trust_domain: &str,
    workload_ttl: Duration,
) -> Result<(Ca, Origin), Error> {
    if let Some(found) = read(client, namespace, trust_domain, workload_ttl).await? {
        return Ok(found);
    }
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let err = |e: kube::Error| Error::Kube(namespace.to_owned(), e.to_string());
    let (cert_pem, key_pem) = ca::new_root(trust_domain)?;
    match api
        .create(
            &PostParams::default(),
            &ca_secret(namespace, &cert_pem, &key_pem),
        )
        .await
    {
        Ok(_) => {
            tracing::info!(%namespace, secret = CA_SECRET, "created self-signed root CA");
            let at = secret_path(namespace, CA_SECRET);
            let ca = Ca::self_signed_from_pem(
                &cert_pem,
                &key_pem,
                &at.join(ca::CA_CERT),
                &at.join(ca::CA_KEY),
                trust_domain,
                workload_ttl,
            )?;
            Ok((ca, Origin::Created))
        }
        // Another replica won the race: its root is the one everybody uses.
        Err(kube::Error::Api(s)) if s.code == 409 => {
            tracing::info!(%namespace, secret = CA_SECRET, "another replica created the root CA; using it");
            let s = api.get(CA_SECRET).await.map_err(err)?;
            Ok((
                self_signed(&s, namespace, trust_domain, workload_ttl)?,
                Origin::SelfSigned,
            ))
        }
        Err(e) => Err(err(e)),
    }
}

/// The CA from `cacerts` or `istio-ca-secret`, whichever exists first in that order; `None` when neither does.
pub async fn read(
    client: &kube::Client,
    namespace: &str,
    trust_domain: &str,
    workload_ttl: Duration,
) -> Result<Option<(Ca, Origin)>, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let err = |e: kube::Error| Error::Kube(namespace.to_owned(), e.to_string());
    if let Some(s) = api.get_opt(CACERTS_SECRET).await.map_err(err)? {
        let pems = PluggedPems {
            ca_cert: text(&s, ca::CA_CERT),
            ca_key: text(&s, ca::CA_KEY),
            root_cert: text(&s, ca::ROOT_CERT),
            cert_chain: Some(text(&s, ca::CERT_CHAIN)).filter(|c| !c.trim().is_empty()),
        };
        let at = secret_path(namespace, CACERTS_SECRET);
        let ca = Ca::plugged_from_pem(&pems, &at, trust_domain, workload_ttl)?;
        return Ok(Some((ca, Origin::Plugged)));
    }
    match api.get_opt(CA_SECRET).await.map_err(err)? {
        Some(s) => Ok(Some((
            self_signed(&s, namespace, trust_domain, workload_ttl)?,
            Origin::SelfSigned,
        ))),
        None => Ok(None),
    }
}

/// The Secret istiod writes for its self-signed root.
pub fn ca_secret(namespace: &str, cert_pem: &str, key_pem: &str) -> Secret {
    let data: BTreeMap<String, ByteString> = [
        (ca::CA_CERT, cert_pem),
        (ca::CA_KEY, key_pem),
        (ca::CERT_CHAIN, ""),
        (KEY, ""),
        (ca::ROOT_CERT, ""),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
    .collect();
    Secret {
        metadata: ObjectMeta {
            name: Some(CA_SECRET.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..Default::default()
        },
        type_: Some(CA_SECRET_TYPE.to_owned()),
        data: Some(data),
        ..Default::default()
    }
}

/// Re-reads the Secrets every `every`, and when the CA changed hands it to `issuer` (which drops the cached
/// workload certificates) and publishes the new root on `roots`. A read that fails, or finds neither Secret
/// (deleted while running), keeps the current CA: a new root is only ever made at startup.
pub async fn run_reload(
    client: kube::Client,
    namespace: String,
    issuer: Arc<SecretIssuer>,
    roots: watch::Sender<String>,
    every: Duration,
    on_change: impl Fn() + Send,
) {
    loop {
        tokio::time::sleep(every).await;
        let current = issuer.ca();
        match load(
            &client,
            &namespace,
            current.trust_domain(),
            current.workload_ttl(),
        )
        .await
        {
            Ok((ca, origin)) => {
                if issuer.replace_ca(ca) {
                    tracing::info!(?origin, "CA reloaded from Kubernetes");
                    let root = issuer.ca().root_pem().to_owned();
                    roots.send_replace(root);
                    on_change();
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the CA Secrets failed; keeping the current CA")
            }
        }
    }
}

fn self_signed(
    s: &Secret,
    namespace: &str,
    trust_domain: &str,
    workload_ttl: Duration,
) -> Result<Ca, Error> {
    let at = secret_path(namespace, CA_SECRET);
    Ca::self_signed_from_pem(
        &text(s, ca::CA_CERT),
        &text(s, ca::CA_KEY),
        &at.join(ca::CA_CERT),
        &at.join(ca::CA_KEY),
        trust_domain,
        workload_ttl,
    )
}

/// How errors name a Secret's key: `Secret istio-system/cacerts/ca-cert.pem`.
fn secret_path(namespace: &str, name: &str) -> PathBuf {
    PathBuf::from(format!("Secret {namespace}/{name}"))
}

fn text(s: &Secret, key: &str) -> String {
    s.data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_helpers::kube::{Fake, core};
    use serde_json::json;

    const NS: &str = "istio-system";
    const TTL: Duration = Duration::from_secs(3600);

    fn fake() -> Fake {
        Fake::new(&[core("secrets")])
    }

    fn secret_json(name: &str, data: &[(&str, &str)]) -> serde_json::Value {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let data: serde_json::Map<String, serde_json::Value> = data
            .iter()
            .map(|(k, v)| (k.to_string(), json!(b64.encode(v))))
            .collect();
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": name, "namespace": NS}, "data": data})
    }

    fn data(fake: &Fake, name: &str, key: &str) -> String {
        use base64::Engine;
        let s = fake.get(&core("secrets"), NS, name).expect("secret exists");
        let b = base64::engine::general_purpose::STANDARD
            .decode(s["data"][key].as_str().unwrap_or_default())
            .unwrap();
        String::from_utf8(b).unwrap()
    }

    #[tokio::test]
    async fn first_start_creates_istiods_secret_and_later_starts_reuse_it() {
        let fake = fake();
        let (ca, origin) = load(&fake.client(), NS, "cluster.local", TTL)
            .await
            .unwrap();
        assert_eq!(origin, Origin::Created);
        let s = fake.get(&core("secrets"), NS, CA_SECRET).unwrap();
        assert_eq!(s["type"], CA_SECRET_TYPE);
        assert_eq!(data(&fake, CA_SECRET, ca::CA_CERT), ca.root_pem());
        assert!(data(&fake, CA_SECRET, ca::CA_KEY).contains("PRIVATE KEY"));
        for empty in [ca::CERT_CHAIN, KEY, ca::ROOT_CERT] {
            assert_eq!(data(&fake, CA_SECRET, empty), "", "{empty}");
        }
        // A restart (or the second replica) reads the same root and writes nothing.
        let writes = fake.writes().len();
        let (again, origin) = load(&fake.client(), NS, "cluster.local", TTL)
            .await
            .unwrap();
        assert_eq!(origin, Origin::SelfSigned);
        assert_eq!(again.root_pem(), ca.root_pem());
        assert!(again.same_signer(&ca));
        assert_eq!(fake.writes().len(), writes);
    }

    #[tokio::test]
    async fn losing_the_create_race_uses_the_winners_root() {
        let fake = fake();
        let (winner_cert, winner_key) = ca::new_root("cluster.local").unwrap();
        let winner = serde_json::to_value(ca_secret(NS, &winner_cert, &winner_key)).unwrap();
        fake.race_next_create(&core("secrets"), winner);
        let (ca, origin) = load(&fake.client(), NS, "cluster.local", TTL)
            .await
            .unwrap();
        assert_eq!(origin, Origin::SelfSigned);
        assert_eq!(ca.root_pem(), winner_cert);
        assert_eq!(data(&fake, CA_SECRET, ca::CA_CERT), winner_cert);
        // Certificates it issues chain to the winner's root.
        let issued = ca.issue_workload("default", "sa").unwrap();
        assert!(issued.chain_pem.ends_with(&winner_cert));
    }

    #[tokio::test]
    async fn cacerts_takes_precedence_and_is_never_written() {
        let fake = fake();
        let (self_cert, self_key) = ca::new_root("cluster.local").unwrap();
        fake.put(
            &core("secrets"),
            serde_json::to_value(ca_secret(NS, &self_cert, &self_key)).unwrap(),
        );
        let (root_cert, root_key) = ca::new_root("cluster.local").unwrap();
        fake.put(
            &core("secrets"),
            secret_json(
                CACERTS_SECRET,
                &[
                    (ca::CA_CERT, &root_cert),
                    (ca::CA_KEY, &root_key),
                    (ca::ROOT_CERT, &root_cert),
                    (ca::CERT_CHAIN, &root_cert),
                ],
            ),
        );
        let (ca, origin) = load(&fake.client(), NS, "cluster.local", TTL)
            .await
            .unwrap();
        assert_eq!(origin, Origin::Plugged);
        assert_eq!(ca.root_pem(), root_cert);
        assert!(fake.writes().is_empty(), "{:?}", fake.writes());

        // A cacerts whose key is not the certificate's is refused with the Secret's name.
        let (other_cert, _) = ca::new_root("cluster.local").unwrap();
        fake.put(
            &core("secrets"),
            secret_json(
                CACERTS_SECRET,
                &[
                    (ca::CA_CERT, &other_cert),
                    (ca::CA_KEY, &root_key),
                    (ca::ROOT_CERT, &other_cert),
                ],
            ),
        );
        let err = load(&fake.client(), NS, "cluster.local", TTL)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("Secret istio-system/cacerts"), "{err}");
        assert!(err.contains("does not match"), "{err}");
    }

    #[tokio::test]
    async fn reload_picks_up_a_plugged_ca_added_later() {
        let fake = fake();
        let (ca, _) = load(&fake.client(), NS, "cluster.local", TTL)
            .await
            .unwrap();
        let issuer = Arc::new(SecretIssuer::new(ca, None));
        let (roots_tx, mut roots) = watch::channel(issuer.ca().root_pem().to_owned());
        let (pushed_tx, mut pushed) = tokio::sync::mpsc::channel(1);
        let task = tokio::spawn(run_reload(
            fake.client(),
            NS.into(),
            issuer.clone(),
            roots_tx,
            Duration::from_millis(20),
            move || {
                let _ = pushed_tx.try_send(());
            },
        ));
        let (root_cert, root_key) = ca::new_root("cluster.local").unwrap();
        fake.put(
            &core("secrets"),
            secret_json(
                CACERTS_SECRET,
                &[
                    (ca::CA_CERT, &root_cert),
                    (ca::CA_KEY, &root_key),
                    (ca::ROOT_CERT, &root_cert),
                ],
            ),
        );
        tokio::time::timeout(Duration::from_secs(10), roots.changed())
            .await
            .expect("new root published")
            .unwrap();
        assert_eq!(*roots.borrow(), root_cert);
        assert_eq!(issuer.ca().root_pem(), root_cert);
        tokio::time::timeout(Duration::from_secs(10), pushed.recv())
            .await
            .expect("push woken");
        task.abort();
    }
}
