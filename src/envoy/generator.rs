//! Adapts the pure generators to the xDS server: one `Generator` per snapshot, encoding each resource once and
//! sharing the encoded set between proxies whose view is the same.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use envoy_types::pb::google::protobuf::value::Kind as ValueKind;
use parking_lot::Mutex;

use super::{cluster, endpoint, listener, route};
use crate::model::Snapshot;
use crate::model::proxy::{ProxyKind, ProxyMeta, ProxyScope};
use crate::xds::{Generate, Proxy, ProxyType, ResourceSet, XdsResource, type_url};

/// What a proxy's clusters, endpoints and routes depend on besides the snapshot: proxies that agree on it share
/// one encoded set. Listeners also depend on the workload's own ports and address, so they key on the pod.
/// Whether the proxy can do mTLS (has an identity, so gets SDS secrets) changes listeners and clusters alike.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ViewKey {
    Shared {
        kind: ProxyKind,
        namespace: String,
        labels: BTreeMap<String, String>,
        mtls: bool,
    },
    Pod {
        kind: ProxyKind,
        namespace: String,
        pod: String,
        ip: String,
        mtls: bool,
    },
}

/// Produces the SDS secrets of one proxy. Installed by the app only when the TLS xDS server runs; it is only
/// asked for proxies whose stream authenticated them ([`Proxy::identity`]).
pub trait SecretSource: Send + Sync {
    /// The secrets `proxy` (in `scope`) may have.
    fn secrets(&self, proxy: &Proxy, scope: &ProxyScope<'_>) -> Vec<Arc<XdsResource>>;
}

/// The `Generate` implementation for one snapshot.
pub struct Generator {
    snapshot: Arc<Snapshot>,
    cache: Mutex<HashMap<(&'static str, ViewKey), ResourceSet>>,
    secrets: Option<Arc<dyn SecretSource>>,
}

impl Generator {
    /// A generator over `snapshot`.
    pub fn new(snapshot: Arc<Snapshot>) -> Self {
        Generator {
            snapshot,
            cache: Mutex::new(HashMap::new()),
            secrets: None,
        }
    }

    /// Serves SDS secrets from `source` (per proxy, never cached here: they depend on the proxy's identity).
    pub fn with_secrets(mut self, source: Option<Arc<dyn SecretSource>>) -> Self {
        self.secrets = source;
        self
    }

    /// The snapshot this generator translates.
    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snapshot
    }

    /// Generates (uncached) the resources of `type_url` for a proxy described by `meta`. Used by the debug API
    /// and tests.
    pub fn generate_for(&self, meta: ProxyMeta, type_url: &str) -> Vec<Arc<XdsResource>> {
        let scope = ProxyScope::new(&self.snapshot, meta);
        encode_all(&scope, type_url)
    }
}

/// The proxy's description for scoping, from its parsed node id and metadata.
pub fn proxy_meta(proxy: &Proxy) -> ProxyMeta {
    let labels = proxy
        .metadata
        .as_ref()
        .and_then(|m| m.fields.get("LABELS"))
        .and_then(|v| match &v.kind {
            Some(ValueKind::StructValue(s)) => Some(s),
            _ => None,
        })
        .map(|s| {
            s.fields
                .iter()
                .filter_map(|(k, v)| match &v.kind {
                    Some(ValueKind::StringValue(s)) => Some((k.clone(), s.clone())),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    ProxyMeta {
        kind: match proxy.id.proxy_type {
            ProxyType::Sidecar => ProxyKind::Sidecar,
            ProxyType::Router => ProxyKind::Router,
        },
        ip: proxy.id.ip.to_string(),
        pod: proxy.id.pod.clone(),
        namespace: proxy.id.namespace.clone(),
        labels,
        // Only a proxy authenticated on the TLS xDS server is served `default`/`ROOTCA`.
        mtls: proxy.identity.is_some(),
    }
}

fn encode_all(scope: &ProxyScope<'_>, type_url: &str) -> Vec<Arc<XdsResource>> {
    match type_url {
        type_url::CLUSTER => cluster::clusters(scope)
            .iter()
            .map(|c| Arc::new(XdsResource::encode(c.name.clone(), c)))
            .collect(),
        type_url::ENDPOINT => endpoint::load_assignments(scope)
            .iter()
            .map(|c| Arc::new(XdsResource::encode(c.cluster_name.clone(), c)))
            .collect(),
        type_url::LISTENER => listener::listeners(scope)
            .iter()
            .map(|l| Arc::new(XdsResource::encode(l.name.clone(), l)))
            .collect(),
        type_url::ROUTE => route::route_configs(scope)
            .iter()
            .map(|r| Arc::new(XdsResource::encode(r.name.clone(), r)))
            .collect(),
        // Secrets are per proxy identity (see `SecretSource`); never generated without one.
        _ => Vec::new(),
    }
}

impl Generate for Generator {
    fn generate(&self, proxy: &Proxy, type_url: &str) -> ResourceSet {
        let meta = proxy_meta(proxy);
        if type_url == type_url::SECRET {
            return match (&self.secrets, &proxy.identity) {
                (Some(source), Some(_)) => {
                    let scope = ProxyScope::new(&self.snapshot, meta);
                    ResourceSet::new(source.secrets(proxy, &scope))
                }
                _ => ResourceSet::default(),
            };
        }
        let static_type = type_url::PUSH_ORDER
            .iter()
            .copied()
            .find(|t| *t == type_url);
        let Some(static_type) = static_type else {
            return ResourceSet::default();
        };
        // The scope resolves the pod's labels from the snapshot; compute it once and derive the key from it.
        let scope = ProxyScope::new(&self.snapshot, meta);
        let key = if static_type == type_url::LISTENER {
            ViewKey::Pod {
                kind: scope.meta.kind,
                namespace: scope.meta.namespace.clone(),
                pod: scope.meta.pod.clone(),
                ip: scope.meta.ip.clone(),
                mtls: scope.meta.mtls,
            }
        } else {
            ViewKey::Shared {
                kind: scope.meta.kind,
                namespace: scope.meta.namespace.clone(),
                labels: scope.labels.clone(),
                mtls: scope.meta.mtls,
            }
        };
        if let Some(hit) = self.cache.lock().get(&(static_type, key.clone())) {
            return hit.clone();
        }
        // Generate outside the lock: two proxies racing on the same key do the work twice, which is harmless.
        let resources = ResourceSet::new(encode_all(&scope, type_url));
        self.cache
            .lock()
            .insert((static_type, key), resources.clone());
        resources
    }
}
