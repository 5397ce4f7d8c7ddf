//! Opaque, pre-encoded xDS resources and the [`Generate`] boundary to the translation code.
//!
//! A resource is encoded once and hashed once ([`XdsResource::encode`]); generators return `Arc`s so a resource
//! identical for many proxies is shared by every connection that sends it within a generation.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::Proxy;

/// Type URLs rudder serves, and their push order.
pub mod type_url {
    /// Clusters (CDS).
    pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    /// Endpoints (EDS).
    pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
    /// Listeners (LDS).
    pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    /// Route configurations (RDS).
    pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    /// Secrets (SDS).
    pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

    /// Make before break: clusters and their endpoints exist before listeners and routes point at them.
    pub const PUSH_ORDER: [&str; 5] = [CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET];

    /// Rank of a type in [`PUSH_ORDER`]; unknown types go last.
    pub fn push_rank(type_url: &str) -> usize {
        PUSH_ORDER
            .iter()
            .position(|t| same(t, type_url))
            .unwrap_or(PUSH_ORDER.len())
    }

    /// `a == b`, by address first: the server's per-push lookups pass these constants, and its state keeps
    /// them as keys ([`intern`]), so the 50 to 70 byte compare (the URLs differ in length, so only a match
    /// paid it) is skipped.
    pub fn same(a: &str, b: &str) -> bool {
        a.len() == b.len() && (std::ptr::eq(a.as_ptr(), b.as_ptr()) || a == b)
    }

    /// The constant of a known type URL, else the URL itself.
    pub fn intern(type_url: &str) -> std::borrow::Cow<'static, str> {
        match PUSH_ORDER.iter().find(|t| **t == type_url) {
            Some(t) => std::borrow::Cow::Borrowed(t),
            None => std::borrow::Cow::Owned(type_url.to_owned()),
        }
    }

    /// Whether an empty name list on the first SotW request means "everything" (the xDS wildcard types).
    pub fn is_wildcard_type(type_url: &str) -> bool {
        type_url == CLUSTER || type_url == LISTENER
    }

    /// Short name for metrics and logs (`cds`, `eds`, …, `other`).
    pub fn short(type_url: &str) -> &'static str {
        match type_url {
            CLUSTER => "cds",
            ENDPOINT => "eds",
            LISTENER => "lds",
            ROUTE => "rds",
            SECRET => "sds",
            _ => "other",
        }
    }
}

/// One named, encoded resource with its content version (xxh3 of the encoded bytes, hex).
#[derive(Clone, PartialEq, Eq)]
pub struct XdsResource {
    /// Resource name (cluster name, listener name, …).
    pub name: String,
    /// Full type URL of the encoded message.
    pub type_url: String,
    /// The encoded protobuf message (not wrapped in `Any`).
    pub bytes: Bytes,
    /// Content hash used as the delta-xDS resource version.
    pub version: String,
}

impl XdsResource {
    /// Encodes `msg` once and computes its version.
    pub fn encode<M: prost::Message + prost::Name>(name: impl Into<String>, msg: &M) -> Self {
        Self::from_bytes(name, M::type_url(), Bytes::from(msg.encode_to_vec()))
    }

    /// Wraps already-encoded bytes.
    pub fn from_bytes(name: impl Into<String>, type_url: impl Into<String>, bytes: Bytes) -> Self {
        let version = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&bytes));
        XdsResource {
            name: name.into(),
            type_url: type_url.into(),
            bytes,
            version,
        }
    }
}

impl fmt::Debug for XdsResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XdsResource")
            .field("name", &self.name)
            .field("type_url", &self.type_url)
            .field("len", &self.bytes.len())
            .field("version", &self.version)
            .finish()
    }
}

/// An immutable, name-sorted set of resources with a digest of its `(name, version)` pairs.
///
/// Cheap to clone (one `Arc`). A generator that hands the same set to many proxies lets the server skip a
/// proxy whose set is unchanged in O(1), by comparing digests.
#[derive(Clone, Debug, Default)]
pub struct ResourceSet {
    inner: Arc<SetInner>,
}

#[derive(Debug, Default)]
struct SetInner {
    items: Vec<Arc<XdsResource>>,
    digest: u64,
    memo: Memo,
}

/// Work that every proxy of a view would otherwise repeat on the same set: its selection for a
/// subscription, and its difference from the set a proxy held before. The first stream computes, the
/// others (often thousands) reuse: a push to an unchanged subscription then costs O(changes), not O(set).
#[derive(Default)]
struct Memo {
    /// Selections by (shared) subscribed-name set; `None` is the whole set. Read-write locks: every stream
    /// of a push reads them, from every worker at once, and only the first of a view writes.
    selections: parking_lot::RwLock<Vec<MemoSelection>>,
    /// Differences from earlier sets, by their digest (which fixes their names and versions).
    diffs: parking_lot::RwLock<Vec<(u64, Arc<SetDiff>)>>,
}

/// Some resources of a set, name-sorted, shared between the streams that asked for them.
pub type Selection = Arc<[Arc<XdsResource>]>;

/// A memoized selection: the subscription and what it selected (`None`: the whole set).
type MemoSelection = (Arc<BTreeSet<String>>, Option<Selection>);

/// Memo entries kept per kind: a set lives one generation, and proxies of one view share subscriptions.
const MEMO_LIMIT: usize = 32;

impl fmt::Debug for Memo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Memo").finish_non_exhaustive()
    }
}

/// How one set differs from an earlier one: resources new or at another version, and names gone.
#[derive(Debug, Default)]
pub struct SetDiff {
    pub changed: Vec<Arc<XdsResource>>,
    pub removed: Vec<String>,
}

impl ResourceSet {
    /// Sorts by name (the first of duplicate names wins) and computes the digest.
    pub fn new(mut items: Vec<Arc<XdsResource>>) -> Self {
        items.sort_by(|a, b| a.name.cmp(&b.name));
        items.dedup_by(|later, first| later.name == first.name);
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for r in &items {
            h.update(r.name.as_bytes());
            h.update(&[0]);
            h.update(r.version.as_bytes());
            h.update(&[0]);
        }
        ResourceSet {
            inner: Arc::new(SetInner {
                items,
                digest: h.digest(),
                memo: Memo::default(),
            }),
        }
    }

    /// The resources, sorted by name.
    pub fn items(&self) -> &[Arc<XdsResource>] {
        &self.inner.items
    }

    /// Digest of the `(name, version)` pairs.
    pub fn digest(&self) -> u64 {
        self.inner.digest
    }

    /// The resource called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<XdsResource>> {
        let items = &self.inner.items;
        items
            .binary_search_by(|r| r.name.as_str().cmp(name))
            .ok()
            .map(|i| &items[i])
    }

    /// Number of resources.
    pub fn len(&self) -> usize {
        self.inner.items.len()
    }

    /// No resources.
    pub fn is_empty(&self) -> bool {
        self.inner.items.is_empty()
    }

    /// Whether both are the same allocation (not just equal).
    pub fn ptr_eq(&self, other: &ResourceSet) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// The resources named in `names` (name-sorted), or `None` when that is every resource of the set.
    /// Memoized per name set, so streams sharing a subscription merge it once per generation.
    pub fn select(&self, names: &Arc<BTreeSet<String>>) -> Option<Selection> {
        let memo = &self.inner.memo.selections;
        if let Some((_, chosen)) = memo.read().iter().find(|(n, _)| Arc::ptr_eq(n, names)) {
            return chosen.clone();
        }
        // Merge the two name-sorted sequences instead of looking every resource up.
        let mut out = Vec::with_capacity(names.len().min(self.len()));
        let mut wanted = names.iter().peekable();
        for r in self.items() {
            while wanted.next_if(|n| n.as_str() < r.name.as_str()).is_some() {}
            match wanted.peek() {
                None => break,
                Some(n) if n.as_str() == r.name.as_str() => out.push(r.clone()),
                Some(_) => {}
            }
        }
        let chosen = (out.len() != self.len()).then(|| Arc::from(out));
        let mut memo = memo.write();
        if memo.len() < MEMO_LIMIT {
            memo.push((names.clone(), chosen.clone()));
        }
        chosen
    }

    /// What changed from `earlier` to this set. Memoized by `earlier`'s digest.
    pub fn diff_from(&self, earlier: &ResourceSet) -> Arc<SetDiff> {
        let memo = &self.inner.memo.diffs;
        let key = earlier.digest();
        if let Some((_, d)) = memo.read().iter().find(|(k, _)| *k == key) {
            return d.clone();
        }
        let mut d = SetDiff::default();
        let mut held = earlier.items().iter().peekable();
        for r in self.items() {
            while let Some(old) = held.next_if(|o| o.name < r.name) {
                d.removed.push(old.name.clone());
            }
            match held.next_if(|o| o.name == r.name) {
                Some(old) if old.version == r.version => {}
                _ => d.changed.push(r.clone()),
            }
        }
        d.removed.extend(held.map(|o| o.name.clone()));
        let d = Arc::new(d);
        let mut memo = memo.write();
        if memo.len() < MEMO_LIMIT {
            memo.push((key, d.clone()));
        }
        d
    }
}

impl FromIterator<Arc<XdsResource>> for ResourceSet {
    fn from_iter<I: IntoIterator<Item = Arc<XdsResource>>>(iter: I) -> Self {
        ResourceSet::new(iter.into_iter().collect())
    }
}

/// The boundary to the translation code: all resources of one type a proxy may see in one generation.
///
/// Implementations are pure and deterministic for a given generation. A resource identical for many proxies
/// should be built and encoded once per generation and handed out as the same `Arc`, and a whole set shared
/// by many proxies (same scope) as the same [`ResourceSet`]: cache them in the generator. The server compares
/// digests and versions and copies bytes; it never re-encodes.
pub trait Generate: Send + Sync {
    /// Every resource of `type_url` visible to `proxy` (the server filters by the proxy's subscription).
    fn generate(&self, proxy: &Proxy, type_url: &str) -> ResourceSet;
}

impl<G: Generate + ?Sized> Generate for Arc<G> {
    fn generate(&self, proxy: &Proxy, type_url: &str) -> ResourceSet {
        (**self).generate(proxy, type_url)
    }
}

/// One generation of configuration, published by the app on the server's `watch` channel.
#[derive(Clone)]
pub struct PushContext {
    /// Monotonic generation number; sent as the SotW `version_info` and delta `system_version_info`.
    pub version: u64,
    /// Produces the resources of this generation.
    pub generator: Arc<dyn Generate>,
    /// When the generation was published (start of the convergence-time measurement).
    pub published: Instant,
}

impl PushContext {
    /// A generation published now.
    pub fn new(version: u64, generator: Arc<dyn Generate>) -> Self {
        PushContext {
            version,
            generator,
            published: Instant::now(),
        }
    }
}

impl fmt::Debug for PushContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PushContext")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(name: &str, body: &'static [u8]) -> Arc<XdsResource> {
        Arc::new(XdsResource::from_bytes(
            name,
            type_url::CLUSTER,
            Bytes::from_static(body),
        ))
    }

    #[test]
    fn version_is_a_content_hash() {
        assert_eq!(res("a", b"x").version, res("b", b"x").version);
        assert_ne!(res("a", b"x").version, res("a", b"y").version);
        assert_eq!(res("a", b"x").version.len(), 16);
    }

    #[test]
    fn set_is_sorted_deduplicated_and_digested_by_name_and_version() {
        let set = ResourceSet::new(vec![res("b", b"1"), res("a", b"1"), res("b", b"2")]);
        let names: Vec<&str> = set.items().iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(
            set.get("b").unwrap().bytes.as_ref(),
            b"1",
            "first of duplicates wins"
        );
        let same = ResourceSet::new(vec![res("a", b"1"), res("b", b"1")]);
        assert_eq!(set.digest(), same.digest());
        let changed = ResourceSet::new(vec![res("a", b"1"), res("b", b"3")]);
        assert_ne!(set.digest(), changed.digest());
        assert_ne!(ResourceSet::default().digest(), set.digest());
    }
}
