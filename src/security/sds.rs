//! SDS secrets for authenticated proxies: `default` (the workload certificate chain and its private key) and
//! `ROOTCA` (the trust bundle), as Envoy `Secret`s — istio-agent's names, served by rudder itself.
//!
//! [`SecretIssuer`] keeps one certificate per (pod, service account) and re-issues it at half-life; the
//! generator asks it on every push, so an unchanged certificate is the same bytes (no response) and a renewed
//! one is pushed. [`SecretIssuer::run_rotation`] wakes the push pipeline when a certificate is due or the CA
//! files changed. The private key is only ever inside the encoded `Secret`; nothing here logs it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use envoy_types::pb::envoy::config::core::v3::DataSource;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, secret,
};
use parking_lot::{Mutex, RwLock};

use super::ca::{Ca, CaSource, Issued};
use crate::envoy::generator::SecretSource;
use crate::model::proxy::ProxyScope;
use crate::xds::{PeerIdentity, Proxy, XdsResource};

/// Name of the workload certificate secret.
pub const DEFAULT_SECRET: &str = "default";
/// Name of the trust bundle secret.
pub const ROOT_SECRET: &str = "ROOTCA";

/// How often the rotation task looks for due certificates and changed CA files when nothing is due sooner.
const ROTATION_TICK: Duration = Duration::from_secs(30);

/// The `default` secret: chain and key, inline.
pub fn workload_secret(issued: &Issued) -> Secret {
    Secret {
        name: DEFAULT_SECRET.to_owned(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: Some(inline(&issued.chain_pem)),
            private_key: Some(inline(&issued.key_pem)),
            ..Default::default()
        })),
    }
}

/// The `ROOTCA` secret: the trust bundle as a validation context.
pub fn root_secret(root_pem: &str) -> Secret {
    Secret {
        name: ROOT_SECRET.to_owned(),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                trusted_ca: Some(inline(root_pem)),
                ..Default::default()
            },
        )),
    }
}

fn inline(pem: &str) -> DataSource {
    DataSource {
        specifier: Some(Specifier::InlineBytes(pem.as_bytes().to_vec())),
        ..Default::default()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    pod: String,
    namespace: String,
    service_account: String,
}

struct Entry {
    refresh_at: SystemTime,
    not_after: SystemTime,
    resources: Vec<Arc<XdsResource>>,
}

/// Issues, caches and rotates the secrets of authenticated proxies.
pub struct SecretIssuer {
    source: Option<CaSource>,
    ca: RwLock<Arc<Ca>>,
    cache: Mutex<HashMap<Key, Entry>>,
    /// Streams already warned about, so a refused proxy is logged once, not on every push.
    warned: Mutex<HashSet<u64>>,
    /// Signalled on every issuance, so the rotation task re-plans its wake-up for the new certificate.
    issued: tokio::sync::Notify,
}

impl std::fmt::Debug for SecretIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretIssuer")
            .field("source", &self.source)
            .field("cached", &self.cache.lock().len())
            .finish_non_exhaustive()
    }
}

impl SecretIssuer {
    /// An issuer over `ca`; with `source`, [`Self::run_rotation`] also reloads the CA when its files change.
    pub fn new(ca: Ca, source: Option<CaSource>) -> Self {
        SecretIssuer {
            source,
            ca: RwLock::new(Arc::new(ca)),
            cache: Mutex::new(HashMap::new()),
            warned: Mutex::new(HashSet::new()),
            issued: tokio::sync::Notify::new(),
        }
    }

    /// The current CA.
    pub fn ca(&self) -> Arc<Ca> {
        self.ca.read().clone()
    }

    /// The secrets `proxy` may have: none unless its stream authenticated it; then `default` for the
    /// authenticated service account (never another) and `ROOTCA`. `pod_service_account` is the service account
    /// of the proxy's Pod when the snapshot knows it: a token for another account of the namespace gets nothing.
    pub fn secrets(
        &self,
        proxy: &Proxy,
        pod_service_account: Option<&str>,
    ) -> Vec<Arc<XdsResource>> {
        let Some(id) = &proxy.identity else {
            return Vec::new();
        };
        if let Some(reason) = refusal(proxy, id, pod_service_account) {
            if self.warned.lock().insert(proxy.conn_id) {
                tracing::warn!(node_id = %proxy.id, conn_id = proxy.conn_id, %reason,
                    "refusing to issue a certificate");
            }
            return Vec::new();
        }
        let key = Key {
            pod: proxy.id.pod.clone(),
            namespace: id.namespace.clone(),
            service_account: id.service_account.clone(),
        };
        let now = SystemTime::now();
        if let Some(e) = self.cache.lock().get(&key)
            && now < e.refresh_at
        {
            return e.resources.clone();
        }
        // Sign outside the lock; two streams of one pod racing here both sign, the last one is kept.
        let ca = self.ca();
        let issued = match ca.issue_workload(&id.namespace, &id.service_account) {
            Ok(issued) => issued,
            Err(e) => {
                tracing::warn!(node_id = %proxy.id, error = %e, "issuing a workload certificate failed");
                return Vec::new();
            }
        };
        tracing::info!(node_id = %proxy.id, namespace = %id.namespace, service_account = %id.service_account,
            not_after = ?issued.not_after, "issued workload certificate");
        let resources = vec![
            Arc::new(XdsResource::encode(
                DEFAULT_SECRET,
                &workload_secret(&issued),
            )),
            Arc::new(XdsResource::encode(
                ROOT_SECRET,
                &root_secret(ca.root_pem()),
            )),
        ];
        self.cache.lock().insert(
            key,
            Entry {
                refresh_at: issued.refresh_at,
                not_after: issued.not_after,
                resources: resources.clone(),
            },
        );
        self.issued.notify_one();
        resources
    }

    /// Drops expired entries and returns the earliest renewal time of the others.
    pub fn next_refresh(&self) -> Option<SystemTime> {
        self.next_refresh_after(SystemTime::UNIX_EPOCH)
    }

    /// Drops expired entries and returns the earliest renewal time later than `after`.
    fn next_refresh_after(&self, after: SystemTime) -> Option<SystemTime> {
        let now = SystemTime::now();
        let mut cache = self.cache.lock();
        cache.retain(|_, e| e.not_after > now);
        cache
            .values()
            .map(|e| e.refresh_at)
            .filter(|t| *t > after)
            .min()
    }

    /// Whether a certificate reached half-life in `(after, until]`.
    fn due_between(&self, after: SystemTime, until: SystemTime) -> bool {
        self.cache
            .lock()
            .values()
            .any(|e| e.refresh_at > after && e.refresh_at <= until)
    }

    /// Re-reads the CA from its source; `true` when the trust bundle or signing chain changed, in which case
    /// every cached certificate is dropped (re-issued by the new CA on the next push).
    pub fn reload(&self) -> bool {
        let Some(source) = &self.source else {
            return false;
        };
        let current = self.ca();
        let fresh = match Ca::load(source, current.trust_domain(), current.workload_ttl()) {
            Ok(ca) => ca,
            Err(e) => {
                tracing::warn!(error = %e, "reloading the CA failed; keeping the current one");
                return false;
            }
        };
        if fresh.root_pem() == current.root_pem() && fresh.same_signer(&current) {
            return false;
        }
        tracing::info!("CA changed: re-issuing certificates and pushing the new trust bundle");
        *self.ca.write() = Arc::new(fresh);
        self.cache.lock().clear();
        true
    }

    /// Replaces the CA with one loaded elsewhere (Kubernetes mode); `true`, and every cached certificate is
    /// dropped, when the trust bundle or signing chain changed.
    pub fn replace_ca(&self, fresh: Ca) -> bool {
        let current = self.ca();
        if fresh.root_pem() == current.root_pem() && fresh.same_signer(&current) {
            return false;
        }
        tracing::info!("CA changed: re-issuing certificates and pushing the new trust bundle");
        *self.ca.write() = Arc::new(fresh);
        self.cache.lock().clear();
        true
    }

    /// Forgets the per-stream warning memo of a closed stream (bounded memory).
    pub fn forget_stream(&self, conn_id: u64) {
        self.warned.lock().remove(&conn_id);
    }

    /// Runs until dropped: wakes when a certificate reaches half-life or the CA files change, and calls `push`
    /// so every connected proxy's secrets are recomputed (only changed ones are sent).
    pub async fn run_rotation(self: Arc<Self>, push: impl Fn() + Send) {
        // Renewals due up to here were pushed. A certificate of a proxy that went away stays due until it
        // expires; remembering this keeps the loop from pushing for it again and again.
        let mut checked = SystemTime::now();
        loop {
            let wait = self
                .next_refresh_after(checked)
                .map(|t| t.duration_since(SystemTime::now()).unwrap_or_default())
                .unwrap_or(ROTATION_TICK)
                .min(ROTATION_TICK);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                // A new certificate may be due before the planned wake-up.
                _ = self.issued.notified() => continue,
            }
            let now = SystemTime::now();
            let due = self.due_between(checked, now);
            checked = now;
            if self.reload() || due {
                push();
            }
        }
    }
}

impl SecretSource for SecretIssuer {
    fn secrets(&self, proxy: &Proxy, scope: &ProxyScope<'_>) -> Vec<Arc<XdsResource>> {
        // Only a Pod found by its own name counts: the IP fallback of the scope could be another pod.
        let pod_sa = scope
            .workload
            .as_ref()
            .filter(|w| w.name == proxy.id.pod && w.namespace == proxy.id.namespace)
            .map(|w| match w.service_account.as_str() {
                "" => "default",
                sa => sa,
            });
        SecretIssuer::secrets(self, proxy, pod_sa)
    }
}

/// Why `proxy` authenticated as `id` must not get a certificate, if it must not.
fn refusal(proxy: &Proxy, id: &PeerIdentity, pod_sa: Option<&str>) -> Option<String> {
    if id.namespace != proxy.id.namespace {
        return Some(format!(
            "token namespace {:?} is not the node id's {:?}",
            id.namespace, proxy.id.namespace
        ));
    }
    match pod_sa {
        Some(sa) if sa != id.service_account => Some(format!(
            "token service account {:?} is not pod {}'s {sa:?}",
            id.service_account,
            proxy.id.pod_key()
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
