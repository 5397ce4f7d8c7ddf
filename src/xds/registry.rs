//! Read-only view of every ADS connection for the debug API (`/debug/syncz`, `/debug/config_dump`).
//!
//! Each connection task owns its state and publishes a cheap copy (big fields are `Arc`s) here after every
//! event it handles; readers never block a stream for longer than a map clone.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::RwLock;
use tokio::sync::watch;

use super::{Proxy, XdsResource};

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
    pub sent: Arc<BTreeMap<String, SentResource>>,
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

/// All live connections, keyed by stream id.
#[derive(Debug)]
pub struct Registry {
    conns: RwLock<BTreeMap<u64, ConnectionStatus>>,
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
        self.conns.read().values().cloned().collect()
    }

    /// Connections of the proxy `<pod>.<namespace>` (several while a proxy reconnects).
    pub fn by_pod(&self, pod_key: &str) -> Vec<ConnectionStatus> {
        self.conns
            .read()
            .values()
            .filter(|c| c.proxy.id.pod_key() == pod_key)
            .cloned()
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

    pub(crate) fn upsert(&self, status: ConnectionStatus) {
        self.conns.write().insert(status.conn_id, status);
        self.changes.send_modify(|n| *n += 1);
    }

    pub(crate) fn remove(&self, conn_id: u64) {
        self.conns.write().remove(&conn_id);
        self.changes.send_modify(|n| *n += 1);
    }
}
