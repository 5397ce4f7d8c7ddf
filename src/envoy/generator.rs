//! Adapts the pure generators to the xDS server: one `Generator` per snapshot, encoding each resource once,
//! sharing the encoded set between proxies whose view is the same, and carrying sets over from the previous
//! snapshot's generator when only endpoints moved.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

use envoy_types::pb::google::protobuf::value::Kind as ValueKind;
use parking_lot::Mutex;

use super::{cluster, endpoint, listener, route};
use crate::model::Snapshot;
use crate::model::proxy::{ProxyKind, ProxyMeta, ProxyScope};
use crate::model::registry::MovedService;
use crate::model::service::Service;
use crate::model::workload::Workload;
use crate::xds::{Generate, Proxy, ProxyType, ResourceSet, XdsResource, type_url};

/// What a proxy's resources depend on besides the snapshot: proxies that agree on it share one encoded set
/// of every type. Pods of one deployment (same labels, ports and service account) agree.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ViewKey {
    kind: ProxyKind,
    namespace: String,
    /// The Pod's labels, else the node metadata's.
    labels: BTreeMap<String, String>,
    /// Whether the proxy can do mTLS (has an identity, so gets SDS secrets): changes listeners and clusters.
    mtls: bool,
    /// The proxy's Pod without its name and address: its ports, service account and locality shape the
    /// inbound side.
    workload: Option<Workload>,
    /// Gateways only: the pod's address. A gateway listens on the target ports of its own endpoints
    /// (`ProxyScope::gateway_ports`), so each replica is its own view (there are few).
    address: Option<String>,
}

impl ViewKey {
    fn of(snapshot: &Snapshot, meta: &ProxyMeta) -> ViewKey {
        let workload = ProxyScope::workload_of(snapshot, meta);
        let labels = ProxyScope::labels_of(workload.as_deref(), meta).clone();
        let address = (meta.kind == ProxyKind::Router)
            .then(|| workload.as_ref().map_or(meta.ip.clone(), |w| w.ip.clone()));
        ViewKey {
            kind: meta.kind,
            namespace: meta.namespace.clone(),
            labels,
            mtls: meta.mtls,
            workload: workload.map(|w| Workload {
                name: String::new(),
                ip: String::new(),
                ..(*w).clone()
            }),
            address,
        }
    }
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
    /// What the previous generator knew, read without a lock.
    known: Known,
    /// What this generator works out itself.
    cache: Mutex<Cache>,
    secrets: Option<Arc<dyn SecretSource>>,
}

/// Number of a [`ViewKey`] within one generator.
type ViewId = u32;

/// The types generated per view, in [`type_url::PUSH_ORDER`] (secrets are per proxy).
const VIEW_TYPES: [&str; 4] = [
    type_url::CLUSTER,
    type_url::ENDPOINT,
    type_url::LISTENER,
    type_url::ROUTE,
];

/// A view's set of each of [`VIEW_TYPES`], filled by the first stream that asks; the others that ask
/// meanwhile wait for it rather than repeat the work.
type Slots = [Arc<OnceLock<ResourceSet>>; 4];

/// Hashes stream ids (small sequential numbers) with one multiplication: the streams' views are looked up on
/// every push of every stream, where SipHash showed.
#[derive(Default)]
struct ConnIdHasher(u64);

impl Hasher for ConnIdHasher {
    fn finish(&self) -> u64 {
        // Fibonacci hashing: the high bits, which the table's probing uses, mix every bit of the id.
        self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id;
    }
}

type ByConnId<V> = HashMap<u64, V, BuildHasherDefault<ConnIdHasher>>;

/// The views and streams a generator takes over from the previous one when the pods are the same (a
/// stream's view depends on nothing else). Fixed once the generator is made, so the push of every stream
/// finds its view and sets without a lock: with one lock, the workers pushing at once queued on it.
#[derive(Default)]
struct Known {
    /// The first views, by [`ViewId`]; [`Cache::views`] holds the ones after them.
    views: Vec<(ViewKey, Slots)>,
    /// The previous generator's streams, and whether each asked this generator: only those that did are
    /// taken over by the next one, so streams gone are forgotten.
    streams: ByConnId<(ViewId, AtomicBool)>,
}

/// What one generator works out itself: the views and streams that are new to it. Every push asks the
/// generator for every stream and type, so a stream's view is worked out once (its Pod's labels, the key)
/// and afterwards found by stream id, and a set by the type's index.
#[derive(Default)]
struct Cache {
    /// Every view's id, those of [`Known::views`] too.
    ids: HashMap<ViewKey, ViewId>,
    /// The views from [`ViewId`] `Known::views.len()` on.
    views: Vec<(ViewKey, Slots)>,
    /// The streams new to this generator ([`Proxy::conn_id`]).
    streams: ByConnId<ViewId>,
    /// The previous generator's sets when this snapshot only moved endpoints, taken out as they are used.
    earlier: Option<Earlier>,
}

/// What a generator inherits from the one before it.
struct Earlier {
    sets: HashMap<ViewKey, [Option<ResourceSet>; 4]>,
    /// The services whose endpoints differ.
    moved: Vec<MovedService>,
}

impl Cache {
    /// The id of view `key`; views from `first` on are kept here.
    fn id(&mut self, key: ViewKey, first: usize) -> ViewId {
        if let Some(&id) = self.ids.get(&key) {
            return id;
        }
        let id = (first + self.views.len()) as ViewId;
        self.views.push((key.clone(), Slots::default()));
        self.ids.insert(key, id);
        id
    }

    /// What the earlier generator left for type `t` (of [`VIEW_TYPES`]) in view `key`, and how it carries
    /// over.
    fn carried(&mut self, t: usize, key: &ViewKey) -> Option<(ResourceSet, Carry)> {
        let earlier = self.earlier.as_mut()?;
        let set = earlier.sets.get_mut(key)?[t].take()?;
        Some((set, carry(VIEW_TYPES[t], key, &earlier.moved)))
    }
}

/// How a set of the earlier generator carries over, when only endpoints moved.
enum Carry {
    /// Unchanged: the same set (so the server sends nothing, in O(1)).
    Same,
    /// The load assignments of these services are regenerated, the others kept.
    Endpoints(Vec<MovedService>),
    Regenerate,
}

/// Resources read endpoints only through the registry, in these places: load assignments (EDS, and the inline
/// ones of DNS clusters), the SANs a cluster accepts (the endpoints' service accounts), a headless service's
/// per-endpoint listeners, and a gateway's listen ports.
fn carry(type_url: &str, key: &ViewKey, moved: &[MovedService]) -> Carry {
    if key.kind == ProxyKind::Router {
        return Carry::Regenerate;
    }
    let any = |f: fn(&MovedService) -> bool| moved.iter().any(f);
    match type_url {
        type_url::ROUTE => Carry::Same,
        type_url::LISTENER if any(|m| listener::lists_endpoints(&m.service)) => Carry::Regenerate,
        type_url::LISTENER => Carry::Same,
        type_url::CLUSTER
            if any(|m| m.identities_changed || cluster::inlines_endpoints(&m.service)) =>
        {
            Carry::Regenerate
        }
        type_url::CLUSTER => Carry::Same,
        type_url::ENDPOINT if moved.is_empty() => Carry::Same,
        type_url::ENDPOINT => Carry::Endpoints(moved.to_vec()),
        _ => Carry::Regenerate,
    }
}

impl Generator {
    /// A generator over `snapshot`.
    pub fn new(snapshot: Arc<Snapshot>) -> Self {
        Generator {
            snapshot,
            known: Known::default(),
            cache: Mutex::default(),
            secrets: None,
        }
    }

    /// Serves SDS secrets from `source` (per proxy, never cached here: they depend on the proxy's identity).
    pub fn with_secrets(mut self, source: Option<Arc<dyn SecretSource>>) -> Self {
        self.secrets = source;
        self
    }

    /// Reuses what `previous` generated when this snapshot differs from its snapshot only in endpoints (and
    /// pods): sets that do not read the moved endpoints are carried over as they are, and a view's load
    /// assignments are regenerated only for the services that moved. Otherwise everything is generated anew.
    ///
    /// When the pods are the same, each stream's view is carried over too (found by stream id, not worked
    /// out again from the proxy's node and Pod).
    pub fn following(mut self, previous: &Generator) -> Self {
        let moved = self.snapshot.moved_since(&previous.snapshot);
        let same_pods = self.snapshot.workloads == previous.snapshot.workloads;
        let prev = previous.cache.lock();
        let prev_views = || previous.known.views.iter().chain(&prev.views);
        let cache = self.cache.get_mut();
        if same_pods {
            // Every view keeps its id, so the streams keep theirs.
            cache.ids = prev.ids.clone();
            self.known.views = prev_views()
                .map(|(key, _)| (key.clone(), Slots::default()))
                .collect();
            let asked = (previous.known.streams.iter())
                .filter(|(_, (_, asked))| asked.load(Relaxed))
                .map(|(conn, (id, _))| (*conn, *id));
            self.known.streams = asked
                .chain(prev.streams.iter().map(|(conn, id)| (*conn, *id)))
                .map(|(conn, id)| (conn, (id, AtomicBool::new(false))))
                .collect();
        }
        if let Some(moved) = moved {
            let sets = prev_views()
                .map(|(key, slots)| (key.clone(), slots.each_ref().map(|s| s.get().cloned())))
                .collect();
            cache.earlier = Some(Earlier { sets, moved });
        }
        drop(prev);
        self
    }

    /// The view of the stream `conn`, if this generator has it from the previous one; no lock.
    fn known_view(&self, conn: u64) -> Option<ViewId> {
        let (id, asked) = self.known.streams.get(&conn)?;
        // Read first: a store on every ask would have the workers' caches pass the line back and forth.
        if !asked.load(Relaxed) {
            asked.store(true, Relaxed);
        }
        Some(*id)
    }

    /// `f` of view `id`: a view taken over, without a lock; one new to this generator, under it.
    fn with_view<R>(&self, id: ViewId, f: impl FnOnce(&(ViewKey, Slots)) -> R) -> R {
        match self.known.views.get(id as usize) {
            Some(view) => f(view),
            None => f(&self.cache.lock().views[id as usize - self.known.views.len()]),
        }
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
        type_url::CLUSTER => encoded(cluster::each_cluster(scope), |c| &c.name),
        type_url::ENDPOINT => encoded(endpoint::load_assignments(scope), |c| &c.cluster_name),
        type_url::LISTENER => encoded(listener::listeners(scope), |l| &l.name),
        type_url::ROUTE => encoded(route::route_configs(scope), |r| &r.name),
        // Secrets are per proxy identity (see `SecretSource`); never generated without one.
        _ => Vec::new(),
    }
}

/// Encodes each message of `items` as it comes, named by `name`: name-sorted, the first of a name kept (as
/// `cluster::clusters` keeps it; Envoy rejects duplicate names). The generators' lists come sorted already.
fn encoded<M: prost::Message + prost::Name>(
    items: impl IntoIterator<Item = M>,
    name: impl Fn(&M) -> &String,
) -> Vec<Arc<XdsResource>> {
    let mut out: Vec<Arc<XdsResource>> = (items.into_iter())
        .map(|m| Arc::new(XdsResource::encode(name(&m).clone(), &m)))
        .collect();
    // Stable: the first of a name stays first.
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out.dedup_by(|later, first| later.name == first.name);
    out
}

impl Generator {
    /// The set of type `t` (of [`VIEW_TYPES`]) for view `id`, whose first asker is described by `meta`: carried over from the
    /// earlier generator where the moved endpoints leave it alone, else generated.
    fn view_set(&self, t: usize, key: &ViewKey, meta: ProxyMeta) -> ResourceSet {
        let carried = self.cache.lock().carried(t, key);
        match carried {
            Some((set, Carry::Same)) => set,
            Some((set, Carry::Endpoints(moved))) => {
                // Only the moved services' hostnames matter here, and a scope of just those is cheap.
                let scope = ProxyScope::seeing(&self.snapshot, meta, |s| {
                    moved.iter().any(|m| m.service.hostname == s.hostname)
                });
                let is_moved = |s: &Service| {
                    moved.iter().any(|m| {
                        m.service.hostname == s.hostname && m.service.namespace == s.namespace
                    })
                };
                let fresh = encoded(endpoint::load_assignments_of(&scope, is_moved), |c| {
                    &c.cluster_name
                });
                // The first of a name wins: the regenerated assignment over the earlier one.
                ResourceSet::new(
                    fresh
                        .into_iter()
                        .chain(set.items().iter().cloned())
                        .collect(),
                )
            }
            _ => ResourceSet::new(encode_all(
                &ProxyScope::new(&self.snapshot, meta),
                VIEW_TYPES[t],
            )),
        }
    }
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
        let Some(t) = VIEW_TYPES.iter().position(|v| type_url::same(v, type_url)) else {
            return ResourceSet::default();
        };
        // The usual case: a stream the previous generator knew, asking for a set made already.
        let known = self.known_view(proxy.conn_id);
        if let Some(id) = known
            && let Some((_, slots)) = self.known.views.get(id as usize)
            && let Some(set) = slots[t].get()
        {
            return set.clone();
        }
        let first = self.known.views.len();
        let found = match known {
            Some(id) => Some((id, self.with_view(id, |(_, slots)| slots[t].clone()))),
            // A stream new to this generator, asking again: one lock finds its view and the slot.
            None => {
                let cache = self.cache.lock();
                let id = cache.streams.get(&proxy.conn_id).copied();
                id.map(|id| {
                    let slots = match self.known.views.get(id as usize) {
                        Some((_, slots)) => slots,
                        None => &cache.views[id as usize - first].1,
                    };
                    (id, slots[t].clone())
                })
            }
        };
        let (id, slot) = match found {
            Some(found) => found,
            None => {
                let key = ViewKey::of(&self.snapshot, &proxy_meta(proxy));
                let id = {
                    let mut cache = self.cache.lock();
                    let id = cache.id(key, first);
                    cache.streams.insert(proxy.conn_id, id);
                    id
                };
                (id, self.with_view(id, |(_, slots)| slots[t].clone()))
            }
        };
        // Generated outside the cache lock. A stream asking for the same view meanwhile waits on the slot: a
        // push asks for every stream at once, and the work is the same for all of them. Only the stream that
        // generates works out the proxy's description and copies the view's key.
        slot.get_or_init(|| {
            self.view_set(
                t,
                &self.with_view(id, |(key, _)| key.clone()),
                proxy_meta(proxy),
            )
        })
        .clone()
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3::Node;

    use super::*;
    use crate::test_helpers::mesh::snapshot_from_yaml;
    use crate::xds::PeerIdentity;

    fn pod(name: &str, app: &str, ip: &str, port: u16, sa: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop, labels: {{app: {app}}}}}\n\
             spec: {{serviceAccountName: {sa}, containers: [{{name: c, ports: [{{containerPort: {port}}}]}}]}}\n\
             status: {{phase: Running, podIP: {ip}}}\n---\n"
        )
    }

    /// Two pods of one deployment (same labels), a third with other labels, a fourth with the first two's
    /// labels but another port; `app` selects the first two.
    fn views_mesh() -> String {
        pod("app-1", "app", "10.0.0.5", 8080, "app")
            + &pod("app-2", "app", "10.0.0.6", 8080, "app")
            + &pod("db-1", "db", "10.0.0.7", 5432, "db")
            + &pod("odd-1", "app", "10.0.0.8", 9090, "app")
            + APP_SERVICE
    }

    const APP_SERVICE: &str = r#"
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

    fn with_identity(mut p: Proxy) -> Proxy {
        p.identity = Some(PeerIdentity {
            namespace: "shop".into(),
            service_account: "client".into(),
        });
        p
    }

    const TYPES: [&str; 4] = [
        type_url::CLUSTER,
        type_url::ENDPOINT,
        type_url::LISTENER,
        type_url::ROUTE,
    ];

    fn names(rs: &[Arc<XdsResource>]) -> Vec<(String, String)> {
        rs.iter()
            .map(|r| (r.name.clone(), r.version.clone()))
            .collect()
    }

    /// Every set `g` hands `p` is what generating it whole for `p` gives.
    fn assert_whole(g: &Generator, p: &Proxy) {
        for t in TYPES {
            assert_eq!(
                names(g.generate(p, t).items()),
                names(&g.generate_for(proxy_meta(p), t)),
                "{} {t}",
                p.id.pod
            );
        }
    }

    #[test]
    fn clusters_encoded_as_they_come_are_the_sorted_deduplicated_list() {
        // A ServiceEntry declaring the Kubernetes service's host again (one of the two is kept), and
        // subsets whose names sort apart from the order they are made in.
        let yaml = views_mesh()
            + r#"
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: again, namespace: shop}
spec:
  hosts: [app.shop.svc.cluster.local]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: app, namespace: shop}
spec:
  host: app.shop.svc.cluster.local
  subsets: [{name: v2, labels: {version: v2}}, {name: a1, labels: {version: v1}}]
"#;
        let snapshot = Arc::new(snapshot_from_yaml(&yaml));
        let p = proxy("app-1", "10.0.0.5", 1);
        let set = Generator::new(snapshot.clone()).generate(&p, type_url::CLUSTER);
        let want = cluster::clusters(&ProxyScope::new(&snapshot, proxy_meta(&p)));
        assert!(want.len() > 5, "{} clusters", want.len());
        assert_eq!(set.len(), want.len());
        for (got, c) in set.items().iter().zip(&want) {
            assert_eq!(got.name, c.name);
            assert_eq!(got.version, XdsResource::encode(c.name.clone(), c).version);
        }
    }

    #[test]
    fn pods_of_one_view_share_every_set() {
        let g = Generator::new(Arc::new(snapshot_from_yaml(&views_mesh())));
        let (a1, a2, db, odd) = (
            proxy("app-1", "10.0.0.5", 1),
            proxy("app-2", "10.0.0.6", 2),
            proxy("db-1", "10.0.0.7", 3),
            proxy("odd-1", "10.0.0.8", 4),
        );
        for t in TYPES {
            let set = g.generate(&a1, t);
            assert!(!set.is_empty(), "{t}");
            assert!(set.ptr_eq(&g.generate(&a2, t)), "same view, one set: {t}");
            assert!(set.ptr_eq(&g.generate(&a1, t)), "asked again: {t}");
        }
        let (clusters, listeners) = (
            g.generate(&a1, type_url::CLUSTER),
            g.generate(&a1, type_url::LISTENER),
        );
        assert!(!clusters.ptr_eq(&g.generate(&db, type_url::CLUSTER)));
        // Same labels, another port: its inbound side differs, so it is not the others' view.
        assert!(!clusters.ptr_eq(&g.generate(&odd, type_url::CLUSTER)));
        assert!(!listeners.ptr_eq(&g.generate(&odd, type_url::LISTENER)));
        assert!(
            g.generate(&odd, type_url::CLUSTER)
                .get("inbound|9090||")
                .is_some()
        );
        for p in [&a1, &a2, &db, &odd] {
            assert_whole(&g, p);
        }
    }

    #[test]
    fn a_stream_keeps_its_view_while_the_pods_stay_and_follows_its_pod_when_it_changes() {
        let mesh = |port: u16| pod("app-1", "app", "10.0.0.5", port, "app") + APP_SERVICE;
        let a1 = proxy("app-1", "10.0.0.5", 1);
        let g1 = generator(&mesh(8080), None);
        let c1 = g1.generate(&a1, type_url::CLUSTER);
        // The same pods (a config change elsewhere would do too): the stream's view is the one it had.
        let g2 = generator(&mesh(8080), Some(&g1));
        assert_eq!(g2.known_view(1), Some(0));
        let c2 = g2.generate(&a1, type_url::CLUSTER);
        assert_eq!(names(c2.items()), names(c1.items()));
        assert!(g2.cache.lock().streams.is_empty(), "found without the lock");
        // A stream new to the generator, of a view it took over: the same sets, asked once and again.
        let again = proxy("app-1", "10.0.0.5", 7);
        for _ in 0..2 {
            assert!(g2.generate(&again, type_url::CLUSTER).ptr_eq(&c2));
            assert!(
                g2.generate(&again, type_url::LISTENER)
                    .ptr_eq(&g2.generate(&a1, type_url::LISTENER))
            );
        }
        assert_eq!(g2.cache.lock().streams.get(&7), Some(&0));
        // A stream that does not ask a generator is not carried on by the next one.
        let g2b = generator(&mesh(8080), Some(&g2));
        assert!(generator(&mesh(8080), Some(&g2b)).known_view(1).is_none());
        assert_eq!(generator(&mesh(8080), Some(&g2)).known_view(1), Some(0));
        // Its Pod now declares another port: a new view, with that port's inbound cluster.
        let g3 = generator(&mesh(7070), Some(&g2));
        assert!(g3.known.streams.is_empty());
        assert!(
            g3.generate(&a1, type_url::CLUSTER)
                .get("inbound|7070||")
                .is_some()
        );
        assert_whole(&g3, &a1);
    }

    /// `web` (ClusterIP) and `db` (headless) with endpoints from slices; their pods set the service accounts.
    fn carry_mesh(web_ip: &str, web_sa: &str, db_ip: &str, extra: &str) -> String {
        let service = |name: &str, cluster_ip: &str, port: u16| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\n\
                 spec: {{clusterIP: {cluster_ip}, selector: {{app: {name}}}, ports: [{{name: tcp, port: {port}}}]}}\n---\n"
            )
        };
        let slice = |name: &str, ip: &str, port: u16| {
            format!(
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                 metadata: {{name: {name}-1, namespace: shop, labels: {{kubernetes.io/service-name: {name}}}}}\n\
                 addressType: IPv4\nports: [{{name: tcp, port: {port}}}]\n\
                 endpoints: [{{addresses: [\"{ip}\"], conditions: {{ready: true}}}}]\n---\n"
            )
        };
        pod("client-1", "client", "10.0.0.2", 8000, "client")
            + &pod("web-1", "web", web_ip, 8080, web_sa)
            + &pod("db-1", "db", db_ip, 5432, "db")
            + &service("web", "10.96.0.8", 8080)
            + &service("db", "None", 5432)
            + &slice("web", web_ip, 8080)
            + &slice("db", db_ip, 5432)
            + extra
    }

    fn generator(yaml: &str, previous: Option<&Generator>) -> Generator {
        let g = Generator::new(Arc::new(snapshot_from_yaml(yaml)));
        match previous {
            Some(p) => g.following(p),
            None => g,
        }
    }

    #[test]
    fn a_snapshot_that_only_moved_endpoints_keeps_what_they_do_not_touch() {
        let clients = [
            proxy("client-1", "10.0.0.2", 1),
            with_identity(proxy("client-1", "10.0.0.2", 2)),
        ];
        let all = |g: &Generator| -> Vec<Vec<ResourceSet>> {
            clients
                .iter()
                .map(|p| TYPES.iter().map(|t| g.generate(p, t)).collect())
                .collect()
        };
        let g1 = generator(&carry_mesh("10.1.0.1", "web", "10.2.0.1", ""), None);
        let s1 = all(&g1);
        let [cds, eds, lds, rds] = [0, 1, 2, 3];

        // web's endpoint moves: only EDS changes, and only web's assignment in it.
        let g2 = generator(&carry_mesh("10.1.0.9", "web", "10.2.0.1", ""), Some(&g1));
        let s2 = all(&g2);
        for (c, p) in clients.iter().enumerate() {
            for t in [cds, lds, rds] {
                assert!(s2[c][t].ptr_eq(&s1[c][t]), "{} carried over", TYPES[t]);
            }
            assert!(!s2[c][eds].ptr_eq(&s1[c][eds]));
            let web = "outbound|8080||web.shop.svc.cluster.local";
            assert_ne!(
                s2[c][eds].get(web).unwrap().version,
                s1[c][eds].get(web).unwrap().version
            );
            assert_eq!(s2[c][eds].len(), s1[c][eds].len());
            for (a, b) in s2[c][eds].items().iter().zip(s1[c][eds].items()) {
                assert!(a.name == web || Arc::ptr_eq(a, b), "{} kept", a.name);
            }
            assert_whole(&g2, p);
        }

        // The headless service's endpoint moves: its per-endpoint listener follows.
        let g3 = generator(&carry_mesh("10.1.0.9", "web", "10.2.0.7", ""), Some(&g2));
        let s3 = all(&g3);
        assert!(s3[0][cds].ptr_eq(&s2[0][cds]));
        assert!(!s3[0][lds].ptr_eq(&s2[0][lds]));
        assert!(s3[0][lds].get("10.2.0.7_5432").is_some());
        assert!(s3[0][lds].get("10.2.0.1_5432").is_none());
        clients.iter().for_each(|p| assert_whole(&g3, p));

        // web's pod runs as another service account: the identities its cluster accepts change (with mTLS).
        let g4 = generator(&carry_mesh("10.1.0.9", "web2", "10.2.0.7", ""), Some(&g3));
        let s4 = all(&g4);
        assert!(!s4[1][cds].ptr_eq(&s3[1][cds]));
        assert!(s4[1][lds].ptr_eq(&s3[1][lds]));
        assert_ne!(names(s4[1][cds].items()), names(s3[1][cds].items()));
        clients.iter().for_each(|p| assert_whole(&g4, p));

        // A config change: nothing is carried over.
        let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\n\
                  metadata: {name: web, namespace: shop}\n\
                  spec: {hosts: [web], tcp: [{route: [{destination: {host: web}}]}]}\n";
        let g5 = generator(&carry_mesh("10.1.0.9", "web2", "10.2.0.7", vs), Some(&g4));
        let s5 = all(&g5);
        for t in TYPES.iter().enumerate().map(|(i, _)| i) {
            assert!(!s5[0][t].ptr_eq(&s4[0][t]), "{}", TYPES[t]);
        }
        clients.iter().for_each(|p| assert_whole(&g5, p));
    }
}
