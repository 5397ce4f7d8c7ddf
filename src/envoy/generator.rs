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
/// one encoded set. A sidecar's inbound listener (and a gateway's listeners) also depend on the pod itself, so
/// they key on the pod; its outbound listeners are shared by the view.
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
    cache: Mutex<Cache>,
    secrets: Option<Arc<dyn SecretSource>>,
}

/// Number of a [`ViewKey`] within one generator.
type ViewId = u32;

/// What one generator has worked out: each view's resources, and each stream's views. Every push asks the
/// generator for every stream, so a stream's views are worked out once per snapshot (its Pod's labels, the
/// key) and afterwards found by stream id.
#[derive(Default)]
struct Cache {
    ids: HashMap<ViewKey, ViewId>,
    /// Per stream ([`Proxy::conn_id`]): its shared view and its own (listeners).
    streams: HashMap<u64, [ViewId; 2]>,
    sets: HashMap<(&'static str, ViewId), ResourceSet>,
}

impl Cache {
    fn id(&mut self, key: ViewKey) -> ViewId {
        let next = self.ids.len() as ViewId;
        *self.ids.entry(key).or_insert(next)
    }
}

impl Generator {
    /// A generator over `snapshot`.
    pub fn new(snapshot: Arc<Snapshot>) -> Self {
        Generator {
            snapshot,
            cache: Mutex::default(),
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
        type_url::CLUSTER => encoded(cluster::clusters(scope), |c| &c.name),
        type_url::ENDPOINT => encoded(endpoint::load_assignments(scope), |c| &c.cluster_name),
        type_url::LISTENER => encoded(listener::listeners(scope), |l| &l.name),
        type_url::ROUTE => encoded(route::route_configs(scope), |r| &r.name),
        // Secrets are per proxy identity (see `SecretSource`); never generated without one.
        _ => Vec::new(),
    }
}

/// Encodes each message of `items`, named by `name`.
fn encoded<M: prost::Message + prost::Name>(
    items: Vec<M>,
    name: impl Fn(&M) -> &String,
) -> Vec<Arc<XdsResource>> {
    items
        .iter()
        .map(|m| Arc::new(XdsResource::encode(name(m).clone(), m)))
        .collect()
}

/// Cache slot of the listeners a shared view's pods have in common.
const SHARED_LISTENERS: &str = "shared-listeners";

impl Generator {
    /// The listeners of shared view `view`, generated for its first pod.
    fn shared_listeners(&self, scope: &ProxyScope<'_>, view: ViewId) -> Vec<Arc<XdsResource>> {
        if let Some(hit) = self.cache.lock().sets.get(&(SHARED_LISTENERS, view)) {
            return hit.items().to_vec();
        }
        let set = ResourceSet::new(encoded(listener::shared_listeners(scope), |l| &l.name));
        let out = set.items().to_vec();
        self.cache.lock().sets.insert((SHARED_LISTENERS, view), set);
        out
    }
}

/// The views of a proxy: the one it shares with proxies of the same kind, namespace, labels and mTLS, and its
/// own (listeners, which also depend on the pod's ports and address).
fn view_keys(snapshot: &Snapshot, meta: &ProxyMeta) -> (ViewKey, ViewKey) {
    let workload = ProxyScope::workload_of(snapshot, meta);
    let shared = ViewKey::Shared {
        kind: meta.kind,
        namespace: meta.namespace.clone(),
        labels: ProxyScope::labels_of(workload.as_deref(), meta).clone(),
        mtls: meta.mtls,
    };
    let own = ViewKey::Pod {
        kind: meta.kind,
        namespace: meta.namespace.clone(),
        pod: meta.pod.clone(),
        ip: meta.ip.clone(),
        mtls: meta.mtls,
    };
    (shared, own)
}

impl Generate for Generator {
    fn generate(&self, proxy: &Proxy, type_url: &str) -> ResourceSet {
        if type_url == type_url::SECRET {
            return match (&self.secrets, &proxy.identity) {
                (Some(source), Some(_)) => {
                    let scope = ProxyScope::new(&self.snapshot, proxy_meta(proxy));
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
        let view = usize::from(static_type == type_url::LISTENER);
        let known = {
            let cache = self.cache.lock();
            let ids = cache.streams.get(&proxy.conn_id).copied();
            match ids.and_then(|ids| cache.sets.get(&(static_type, ids[view]))) {
                Some(hit) => return hit.clone(),
                None => ids,
            }
        };
        let meta = proxy_meta(proxy);
        let ids = match known {
            Some(ids) => ids,
            None => {
                let (shared, own) = view_keys(&self.snapshot, &meta);
                let mut cache = self.cache.lock();
                let ids = [cache.id(shared), cache.id(own)];
                cache.streams.insert(proxy.conn_id, ids);
                if let Some(hit) = cache.sets.get(&(static_type, ids[view])) {
                    return hit.clone();
                }
                ids
            }
        };
        // Generate outside the lock: two proxies racing on the same view do the work twice, which is harmless.
        let scope = ProxyScope::new(&self.snapshot, meta);
        let resources = match static_type == type_url::LISTENER {
            // A pod's listeners: its own, plus the outbound ones its view shares with other pods.
            true => {
                let mut all = self.shared_listeners(&scope, ids[0]);
                all.extend(encoded(listener::own_listeners(&scope), |l| &l.name));
                ResourceSet::new(all)
            }
            false => ResourceSet::new(encode_all(&scope, type_url)),
        };
        self.cache
            .lock()
            .sets
            .insert((static_type, ids[view]), resources.clone());
        resources
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3::Node;

    use super::*;
    use crate::test_helpers::mesh::snapshot_from_yaml;

    /// Two pods of one deployment (same labels) and a third with other labels, all in `shop`.
    const MESH: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: app-1, namespace: shop, labels: {app: app}}
spec: {containers: [{name: app, ports: [{containerPort: 8080}]}]}
status: {phase: Running, podIP: 10.0.0.5}
---
apiVersion: v1
kind: Pod
metadata: {name: app-2, namespace: shop, labels: {app: app}}
spec: {containers: [{name: app, ports: [{containerPort: 8080}]}]}
status: {phase: Running, podIP: 10.0.0.6}
---
apiVersion: v1
kind: Pod
metadata: {name: db-1, namespace: shop, labels: {app: db}}
spec: {containers: [{name: db, ports: [{containerPort: 5432}]}]}
status: {phase: Running, podIP: 10.0.0.7}
---
apiVersion: v1
kind: Service
metadata: {name: app, namespace: shop}
spec:
  clusterIP: 10.96.0.5
  selector: {app: app}
  ports: [{name: http, port: 80, targetPort: 8080}]
"#;

    fn proxy(pod: &str, ip: &str, conn_id: u64) -> Proxy {
        let node = Node {
            id: format!("sidecar~{ip}~{pod}.shop~shop.svc.cluster.local"),
            ..Default::default()
        };
        Proxy::from_node(&node, conn_id).unwrap()
    }

    #[test]
    fn pods_of_one_view_share_sets_and_outbound_listeners_but_not_inbound_ones() {
        let g = Generator::new(Arc::new(snapshot_from_yaml(MESH)));
        let (a1, a2, db) = (
            proxy("app-1", "10.0.0.5", 1),
            proxy("app-2", "10.0.0.6", 2),
            proxy("db-1", "10.0.0.7", 3),
        );
        let clusters = g.generate(&a1, type_url::CLUSTER);
        assert!(!clusters.is_empty());
        assert!(
            clusters.ptr_eq(&g.generate(&a2, type_url::CLUSTER)),
            "same view, one set"
        );
        assert!(
            clusters.ptr_eq(&g.generate(&a1, type_url::CLUSTER)),
            "a stream's second ask is the same set"
        );
        assert!(
            !clusters.ptr_eq(&g.generate(&db, type_url::CLUSTER)),
            "other labels, other view"
        );

        let (l1, l2) = (
            g.generate(&a1, type_url::LISTENER),
            g.generate(&a2, type_url::LISTENER),
        );
        assert!(!l1.ptr_eq(&l2), "listeners are per pod");
        let outbound = l1.get("virtualOutbound").unwrap();
        assert!(
            Arc::ptr_eq(outbound, l2.get("virtualOutbound").unwrap()),
            "outbound shared"
        );
        assert!(Arc::ptr_eq(
            l1.get("0.0.0.0_80").unwrap(),
            l2.get("0.0.0.0_80").unwrap()
        ));
        let (in1, in2) = (
            l1.get("virtualInbound").unwrap(),
            l2.get("virtualInbound").unwrap(),
        );
        assert!(!Arc::ptr_eq(in1, in2), "inbound is the pod's own");

        // The same listeners as generating the whole set for the pod.
        let whole = g.generate_for(proxy_meta(&a1), type_url::LISTENER);
        let names = |rs: Vec<&Arc<XdsResource>>| -> Vec<(String, String)> {
            rs.iter()
                .map(|r| (r.name.clone(), r.version.clone()))
                .collect()
        };
        assert_eq!(
            names(l1.items().iter().collect()),
            names(whole.iter().collect())
        );
    }
}
