//! Read-only view of every ADS connection for the debug API (`/debug/syncz`, `/debug/config_dump`).
//!
//! Each stream keeps its state in its own entry here and works on it under the entry's lock, which nobody else
//! holds but a reader copying it out: nothing is copied per request or push (a copy after each one was a
//! few percent of a busy server's CPU, mostly cache misses on the copy). Readers lock one entry at a time
//! and never block a stream for longer than one entry's copy.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

use super::type_state::TypeStates;
use super::{Proxy, ResourceSet, XdsResource};

/// Which ADS flavour a stream speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// `StreamAggregatedResources` (state of the world).
    Sotw,
    /// `DeltaAggregatedResources` (incremental).
    Delta,
}

/// What the server believes a client holds for one resource name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SentResource {
    /// Sent on this stream.
    Sent(Arc<XdsResource>),
    /// Declared by the client in delta `initial_resource_versions` (sent by an earlier stream).
    Claimed {
        /// The version the client says it has.
        version: String,
    },
}

impl SentResource {
    /// The resource version the client holds.
    pub fn version(&self) -> &str {
        match self {
            SentResource::Sent(r) => &r.version,
            SentResource::Claimed { version } => version,
        }
    }
}

/// What a client holds of one type, by name.
///
/// Usually exactly the resources of its last response's selection, which for most proxies is a generation's
/// whole [`ResourceSet`], shared with every proxy of the same view: the common case costs one `Arc` per
/// connection instead of a map entry per resource. Versions claimed on reconnect, and partial states, use a map.
#[derive(Clone, Debug, Default)]
pub struct Held(HeldRepr);

#[derive(Clone, Debug)]
enum HeldRepr {
    /// A generation's whole set.
    Set(ResourceSet),
    /// A name-sorted selection.
    List(Arc<[Arc<XdsResource>]>),
    /// The general case.
    Map(Arc<BTreeMap<String, SentResource>>),
}

impl Default for HeldRepr {
    fn default() -> Self {
        HeldRepr::List(Arc::new([]))
    }
}

impl Held {
    /// Holding exactly `chosen`.
    pub(crate) fn exactly(chosen: Chosen) -> Held {
        Held(match chosen {
            Chosen::All(set) => HeldRepr::Set(set),
            Chosen::Some(list) => HeldRepr::List(list),
        })
    }

    /// The whole set held, when that is what is held.
    pub(crate) fn as_set(&self) -> Option<&ResourceSet> {
        match &self.0 {
            HeldRepr::Set(s) => Some(s),
            _ => None,
        }
    }

    /// Number of resources held.
    pub fn len(&self) -> usize {
        match &self.0 {
            HeldRepr::Set(s) => s.len(),
            HeldRepr::List(l) => l.len(),
            HeldRepr::Map(m) => m.len(),
        }
    }

    /// Nothing held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What is held under `name`.
    pub fn get(&self, name: &str) -> Option<SentResource> {
        match &self.0 {
            HeldRepr::Set(s) => s.get(name).cloned().map(SentResource::Sent),
            HeldRepr::List(l) => find(l, name).cloned().map(SentResource::Sent),
            HeldRepr::Map(m) => m.get(name).cloned(),
        }
    }

    /// Whether something is held under `name`.
    pub fn contains_key(&self, name: &str) -> bool {
        match &self.0 {
            HeldRepr::Set(s) => s.get(name).is_some(),
            HeldRepr::List(l) => find(l, name).is_some(),
            HeldRepr::Map(m) => m.contains_key(name),
        }
    }

    /// Every held entry, by name.
    pub fn iter(&self) -> Box<dyn Iterator<Item = (&str, SentResource)> + '_> {
        fn sent(r: &Arc<XdsResource>) -> (&str, SentResource) {
            (r.name.as_str(), SentResource::Sent(r.clone()))
        }
        match &self.0 {
            HeldRepr::Set(s) => Box::new(s.items().iter().map(sent)),
            HeldRepr::List(l) => Box::new(l.iter().map(sent)),
            HeldRepr::Map(m) => Box::new(m.iter().map(|(n, r)| (n.as_str(), r.clone()))),
        }
    }

    /// Every held name, sorted.
    pub fn names(&self) -> Vec<&str> {
        match &self.0 {
            HeldRepr::Set(s) => s.items().iter().map(|r| r.name.as_str()).collect(),
            HeldRepr::List(l) => l.iter().map(|r| r.name.as_str()).collect(),
            HeldRepr::Map(m) => m.keys().map(String::as_str).collect(),
        }
    }

    /// Name and version of every entry, sorted by name, without cloning anything.
    pub(crate) fn versions(&self) -> Box<dyn Iterator<Item = (&str, &str)> + '_> {
        fn pair(r: &Arc<XdsResource>) -> (&str, &str) {
            (r.name.as_str(), r.version.as_str())
        }
        match &self.0 {
            HeldRepr::Set(s) => Box::new(s.items().iter().map(pair)),
            HeldRepr::List(l) => Box::new(l.iter().map(pair)),
            HeldRepr::Map(m) => Box::new(m.iter().map(|(n, r)| (n.as_str(), r.version()))),
        }
    }

    /// The general form, to edit entry by entry.
    pub(crate) fn make_map(&mut self) -> &mut BTreeMap<String, SentResource> {
        if !matches!(self.0, HeldRepr::Map(_)) {
            let map = self.iter().map(|(n, r)| (n.to_owned(), r)).collect();
            self.0 = HeldRepr::Map(Arc::new(map));
        }
        match &mut self.0 {
            HeldRepr::Map(m) => Arc::make_mut(m),
            _ => unreachable!("converted above"),
        }
    }

    /// Keeps only the names `keep` accepts.
    pub(crate) fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        if self.versions().all(|(n, _)| keep(n)) {
            return;
        }
        self.make_map().retain(|n, _| keep(n));
    }
}

fn find<'a>(list: &'a [Arc<XdsResource>], name: &str) -> Option<&'a Arc<XdsResource>> {
    list.binary_search_by(|r| r.name.as_str().cmp(name))
        .ok()
        .map(|i| &list[i])
}

/// The resources of a set one subscription asks for, name-sorted: the whole set (shared) or a selection.
#[derive(Clone, Debug)]
pub(crate) enum Chosen {
    All(ResourceSet),
    Some(Arc<[Arc<XdsResource>]>),
}

impl Chosen {
    pub fn as_slice(&self) -> &[Arc<XdsResource>] {
        match self {
            Chosen::All(s) => s.items(),
            Chosen::Some(v) => v,
        }
    }
}

/// A rejected response, as reported by Envoy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nack {
    /// Nonce of the rejected response.
    pub nonce: String,
    /// Version of the rejected response.
    pub version: String,
    /// `error_detail.code`.
    pub code: i32,
    /// `error_detail.message`: Envoy's reason.
    pub message: String,
    /// Resource names carried by the rejected response (added/changed and removed, for delta).
    pub names: Vec<String>,
    /// When the NACK arrived.
    pub at: SystemTime,
}

/// Per type URL state of one connection.
#[derive(Clone, Debug, Default)]
pub struct TypeStatus {
    /// Subscribed to everything of this type.
    pub wildcard: bool,
    /// Explicitly subscribed names (not including `*`).
    pub names: Arc<BTreeSet<String>>,
    /// What the client holds, as far as the server knows (the union of what was sent and not removed).
    pub sent: Held,
    /// Nonce of the last response.
    pub nonce_sent: Option<String>,
    /// Version of the last response.
    pub version_sent: Option<String>,
    /// Nonce of the last ACKed response.
    pub acked_nonce: Option<String>,
    /// Version of the last ACKed response.
    pub acked_version: Option<String>,
    /// The last NACK, cleared by the next ACK.
    pub last_nack: Option<Nack>,
    /// Responses sent for this type on this stream.
    pub responses: u64,
}

impl TypeStatus {
    /// The last response was ACKed (and not NACKed).
    pub fn is_acked(&self) -> bool {
        self.nonce_sent.is_some() && self.acked_nonce == self.nonce_sent
    }
}

/// One ADS stream.
#[derive(Clone, Debug)]
pub struct ConnectionStatus {
    /// Stream id, unique within the process.
    pub conn_id: u64,
    /// The proxy on the stream.
    pub proxy: Arc<Proxy>,
    /// SotW or delta.
    pub protocol: Protocol,
    /// When the stream was accepted.
    pub connected_at: SystemTime,
    /// Generation last pushed (or seen) by this stream.
    pub generation: Option<u64>,
    /// Per type URL state.
    pub types: BTreeMap<String, TypeStatus>,
}

/// One stream's state as the stream keeps it (see the module's doc).
#[derive(Debug)]
pub(crate) struct Live {
    pub conn_id: u64,
    pub proxy: Arc<Proxy>,
    pub protocol: Protocol,
    pub connected_at: SystemTime,
    /// Generation last pushed (or seen) by this stream.
    pub generation: Option<u64>,
    pub types: TypeStates,
}

impl Live {
    fn status(&self) -> ConnectionStatus {
        ConnectionStatus {
            conn_id: self.conn_id,
            proxy: self.proxy.clone(),
            protocol: self.protocol,
            connected_at: self.connected_at,
            generation: self.generation,
            types: (self.types.iter())
                .map(|(t, s)| (t.to_owned(), s.status.clone()))
                .collect(),
        }
    }
}

/// One stream's entry: written by its stream only.
pub(crate) type Entry = Arc<Mutex<Live>>;

/// All live connections, keyed by stream id.
#[derive(Debug)]
pub struct Registry {
    conns: RwLock<BTreeMap<u64, Entry>>,
    /// Bumped on every update so tests and the debug API can await a condition without polling.
    changes: watch::Sender<u64>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            conns: RwLock::new(BTreeMap::new()),
            changes: watch::Sender::new(0),
        }
    }
}

impl Registry {
    /// A copy of every connection's state, ordered by stream id.
    pub fn connections(&self) -> Vec<ConnectionStatus> {
        self.conns
            .read()
            .values()
            .map(|c| c.lock().status())
            .collect()
    }

    /// Connections of the proxy `<pod>.<namespace>` (several while a proxy reconnects).
    pub fn by_pod(&self, pod_key: &str) -> Vec<ConnectionStatus> {
        self.conns
            .read()
            .values()
            .map(|c| c.lock())
            .filter(|c| c.proxy.id.pod_key() == pod_key)
            .map(|c| c.status())
            .collect()
    }

    /// Number of live streams.
    pub fn len(&self) -> usize {
        self.conns.read().len()
    }

    /// No live stream.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until `cond` holds over the connections, up to `timeout`. Returns the connections that satisfied
    /// it, or `Err` with the last state seen.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut cond: impl FnMut(&[ConnectionStatus]) -> bool,
    ) -> Result<Vec<ConnectionStatus>, Vec<ConnectionStatus>> {
        // Subscribe before checking so no update slips between the check and the wait.
        let mut rx = self.changes.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            rx.borrow_and_update();
            let conns = self.connections();
            if cond(&conns) {
                return Ok(conns);
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return Err(self.connections());
            }
        }
    }

    /// Adds a connection; its stream then works on the returned entry and calls [`Registry::changed`].
    pub(crate) fn insert(&self, live: Live) -> Entry {
        let entry = Arc::new(Mutex::new(live));
        self.conns
            .write()
            .insert(entry.lock().conn_id, entry.clone());
        self.changed();
        entry
    }

    /// Wakes whoever waits for a condition ([`Registry::wait_for`]); nothing to do when nobody does.
    pub(crate) fn changed(&self) {
        if self.changes.receiver_count() > 0 {
            self.changes.send_modify(|n| *n += 1);
        }
    }

    pub(crate) fn remove(&self, conn_id: u64) {
        self.conns.write().remove(&conn_id);
        self.changed();
    }
}
