//! One ADS stream: a future (run by its HTTP/2 connection's task, [`super::http2`]) that owns the stream's
//! per-type state (subscriptions, nonces, ACKs, NACKs, what was sent), answers requests, and applies new
//! generations when the push gate lets it.
//!
//! The loop `select!`s over, in priority order: drain, the next request, the end of the initial-sync hold, a
//! granted push permit, and a new generation on the `watch` (which then asks for a permit). The watch keeps only
//! the latest generation, so pushes pending for one connection merge; one semaphore bounds how many connections
//! compute a push at once, another how many new streams are in their initial sync.
//! A stream is a member of the server's fan-outs ([`super::fanout`]) from its steady loop on: it marks each
//! generation it takes, which its connection reads to know when to hold off reading.
//! SotW and delta differ only in how a request changes the state and how a response is built ([`Flavor`]).
//! The per type URL state lives in [`super::type_state`].

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::{Instant, SystemTime};

use envoy_types::pb::envoy::config::core::v3::{ControlPlane, Node};
use parking_lot::MutexGuard;
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore, TryAcquireError, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::WatchStream;
use tonic::Status;
use tracing::{Instrument, debug, info, info_span, warn};

use super::fanout::{Fanout, Mark};
use super::grpc::{RequestStream, ResponseSink, Wire};
use super::registry::{Chosen, Entry, Held, Live, Protocol, Registry};
use super::server::SYNC_HOLD;
pub(crate) use super::type_state::{NonceCheck, TypeState, TypeStates};
use super::watch_gate::{Gated, drained};
use super::{Authenticate, Metrics, Proxy, PushContext, XdsResource};

/// State shared by every stream of one server.
pub(crate) struct Shared {
    /// Latest generation; `None` until the first snapshot (streams wait, they don't get empty config).
    pub ctx_rx: watch::Receiver<Option<Arc<PushContext>>>,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    /// Bounds how many connections compute a push at once; `None` when the bound is no smaller than the
    /// runtime's workers. A push is computed within one poll (its permit is let go before anything is
    /// sent), so no more run at once than there are workers, and a semaphore that never makes anyone wait
    /// costs two updates of a count every worker shares on every push.
    pub push_permits: Option<Arc<Semaphore>>,
    /// Bounds how many new streams are in their initial sync at once.
    pub sync_permits: Arc<Semaphore>,
    /// Becomes `true` (or closes) when the server drains: streams end so Envoy reconnects elsewhere.
    pub drain: watch::Receiver<bool>,
    /// The fan-out of the latest generation: connections hold off reading until every stream has had it.
    pub fanout: Arc<Fanout>,
    /// Authenticates streams (TLS server only).
    pub authenticator: Option<Arc<dyn Authenticate>>,
    /// Subscribed-name sets by content hash, so streams subscribed to the same names share one set.
    pub name_sets: parking_lot::Mutex<NameSets>,
}

/// A subscription change applied once: the set before and the set after.
type NameChange = (Weak<BTreeSet<String>>, Weak<BTreeSet<String>>);

/// Weak references to the subscribed-name sets in use, by content hash, and the subscription changes
/// already applied to them.
#[derive(Default)]
pub(crate) struct NameSets {
    by_hash: HashMap<u64, Vec<Weak<BTreeSet<String>>>>,
    /// Entry count above which dead entries are swept.
    sweep_at: usize,
    /// (set before, hash of the change) → set after. The weak "before" keeps its address from being reused
    /// while the entry exists, so a matching pointer is the same set.
    changes: HashMap<(usize, u64), NameChange>,
    /// Change count above which dead entries are swept.
    changes_sweep_at: usize,
}

impl Shared {
    /// `names` with `subscribe` added, then `unsubscribe` removed (`*` ignored: the caller tracks the
    /// wildcard), as a set shared with other streams. When thousands of proxies make the same change to the
    /// same set (every proxy of a view subscribing to a new cluster's endpoints), the first computes it and
    /// the others reuse it, instead of each copying the whole set.
    pub(crate) fn change_names(
        &self,
        names: &Arc<BTreeSet<String>>,
        subscribe: &[String],
        unsubscribe: &[String],
    ) -> Arc<BTreeSet<String>> {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for n in subscribe {
            h.update(n.as_bytes());
            h.update(&[0]);
        }
        h.update(&[1]);
        for n in unsubscribe {
            h.update(n.as_bytes());
            h.update(&[0]);
        }
        let key = (Arc::as_ptr(names) as usize, h.digest());
        if let Some((before, after)) = self.name_sets.lock().changes.get(&key)
            && before.upgrade().is_some_and(|b| Arc::ptr_eq(&b, names))
            && let Some(after) = after.upgrade()
        {
            return after;
        }
        let mut next = (**names).clone();
        next.extend(subscribe.iter().filter(|n| *n != "*").cloned());
        for n in unsubscribe {
            next.remove(n);
        }
        let mut next = Arc::new(next);
        self.share_names(&mut next);
        let mut sets = self.name_sets.lock();
        sets.changes
            .insert(key, (Arc::downgrade(names), Arc::downgrade(&next)));
        if sets.changes.len() > sets.changes_sweep_at {
            sets.changes
                .retain(|_, (b, a)| b.strong_count() > 0 && a.strong_count() > 0);
            sets.changes_sweep_at = (sets.changes.len() * 2).max(64);
        }
        next
    }

    /// Replaces `names` by an equal set already in use by another stream, if there is one. Many proxies
    /// subscribe to the same EDS/RDS names (every proxy of a view); one copy instead of one per stream is
    /// most of a stream's memory at thousands of proxies.
    pub(crate) fn share_names(&self, names: &mut Arc<BTreeSet<String>>) {
        if names.is_empty() {
            return;
        }
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for n in names.iter() {
            h.update(n.as_bytes());
            h.update(&[0]);
        }
        let hash = h.digest();
        let mut sets = self.name_sets.lock();
        let bucket = sets.by_hash.entry(hash).or_default();
        for weak in bucket.iter() {
            if let Some(existing) = weak.upgrade() {
                if Arc::ptr_eq(&existing, names) {
                    return;
                }
                if *existing == **names {
                    *names = existing;
                    return;
                }
            }
        }
        bucket.push(Arc::downgrade(names));
        let entries: usize = sets.by_hash.values().map(Vec::len).sum();
        if entries > sets.sweep_at {
            sets.by_hash.retain(|_, b| {
                b.retain(|w| w.strong_count() > 0);
                !b.is_empty()
            });
            let live: usize = sets.by_hash.values().map(Vec::len).sum();
            sets.sweep_at = (live * 2).max(64);
        }
    }

    fn next_id(&self) -> u64 {
        // One sequence for the whole process: a stream id names one proxy to a generator shared by every
        // server (plaintext and TLS), which may remember per-stream facts by it.
        static IDS: AtomicU64 = AtomicU64::new(0);
        IDS.fetch_add(1, Relaxed) + 1
    }

    pub(crate) fn next_nonce(&self) -> String {
        format!("{:x}", self.next_id())
    }
}

/// A running stream: its proxy, its state (in its registry entry), and its part in fan-outs.
struct Stream {
    proxy: Arc<Proxy>,
    /// This stream's state, kept in its registry entry (see [`super::registry`]).
    live: Entry,
    shared: Arc<Shared>,
    /// This stream's part in fan-outs, read by its connection.
    mark: Arc<Mark>,
}

/// What a request or a push works on: the stream's state, locked, and what it needs alongside.
pub(crate) struct ConnState<'a> {
    pub proxy: &'a Arc<Proxy>,
    pub shared: &'a Shared,
    pub live: MutexGuard<'a, Live>,
}

impl ConnState<'_> {
    /// The state of `type_url`, created on first use; `true` if it was just created.
    pub fn type_state(&mut self, type_url: &str) -> (&mut TypeState, bool) {
        self.live.types.get_or_insert(type_url)
    }
}

impl Stream {
    fn state(&self) -> ConnState<'_> {
        ConnState {
            proxy: &self.proxy,
            shared: &self.shared,
            live: self.live.lock(),
        }
    }
}

/// `control_plane` of every response, so Envoy's config dump says who sent it.
pub(crate) fn control_plane() -> Option<ControlPlane> {
    Some(ControlPlane {
        identifier: "rudder".to_owned(),
    })
}

/// How one ADS flavour reads requests and builds responses.
pub(crate) trait Flavor: Send + 'static {
    type Request: prost::Message + Default + Send + 'static;
    type Response: super::grpc::Wire;
    const PROTOCOL: Protocol;

    fn node(req: &Self::Request) -> Option<&Node>;

    /// Applies a request to the state. Returns the request's type URL, and whether the protocol owes a
    /// response for it now.
    fn apply(conn: &mut ConnState<'_>, req: Self::Request) -> Result<(String, bool), Status>;

    /// Builds the response for `type_url` from `ctx`, or `None` when the client's view did not change and no
    /// response is owed. `push` is the generation's publication time when a push (not a request) causes it.
    fn build(
        conn: &mut ConnState<'_>,
        type_url: &str,
        ctx: &PushContext,
        push: Option<Instant>,
    ) -> Option<Self::Response>;
}

type Out<F> = ResponseSink<<F as Flavor>::Response>;
type PermitFuture =
    Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// Removes the stream from the registry and the connected gauge however the task ends.
struct Registered {
    shared: Arc<Shared>,
    conn_id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.shared.registry.remove(self.conn_id);
        self.shared.metrics.connected.fetch_sub(1, Relaxed);
    }
}

/// A stream's membership of the server's fan-outs, from its steady loop on; it leaves however the stream ends.
struct Member {
    shared: Arc<Shared>,
    mark: Arc<Mark>,
}

impl Member {
    fn join(shared: &Arc<Shared>, mark: &Arc<Mark>) -> Self {
        shared.fanout.join(mark);
        Member {
            shared: shared.clone(),
            mark: mark.clone(),
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.shared.fanout.leave(&self.mark);
    }
}

/// Runs one ADS stream to its end.
pub(crate) async fn run<F: Flavor>(
    shared: Arc<Shared>,
    metadata: tonic::metadata::MetadataMap,
    mut inbound: RequestStream<F::Request>,
    mut out: Out<F>,
    mark: Arc<Mark>,
) {
    // Waiting for the first request also ends on drain, so a silent client cannot hold shutdown up.
    let first = tokio::select! {
        _ = drained(shared.drain.clone()) => return,
        msg = inbound.message() => match msg {
            Ok(Some(req)) => req,
            Ok(None) => return,
            Err(status) => {
                debug!(%status, "ADS stream failed before its first request");
                return;
            }
        },
    };
    let conn_id = shared.next_id();
    let proxy = match F::node(&first) {
        None => Err(Status::invalid_argument(
            "the first request on an ADS stream must carry a node",
        )),
        Some(node) => {
            Proxy::from_node(node, conn_id).map_err(|e| Status::invalid_argument(e.to_string()))
        }
    };
    let proxy = match proxy {
        Ok(mut p) => {
            if let Some(auth) = &shared.authenticator {
                match auth.authenticate(&metadata, &p.id) {
                    Ok(id) => {
                        info!(node_id = %p.id, namespace = %id.namespace, service_account = %id.service_account,
                            "proxy authenticated");
                        p.identity = Some(id);
                    }
                    Err(reason) => {
                        // As istiod: the stream is refused, so Envoy retries (after its token is rotated,
                        // or rudder's keys are) instead of keeping a stream that never gets a certificate.
                        warn!(node_id = %p.id, %reason, "proxy authentication failed: stream refused");
                        let status = Status::unauthenticated(format!(
                            "proxy authentication failed: {reason}"
                        ));
                        out.close(&status);
                        return;
                    }
                }
            }
            Arc::new(p)
        }
        Err(status) => {
            info!(%status, "rejecting ADS stream");
            out.close(&status);
            return;
        }
    };
    let span = info_span!("ads", node_id = %proxy.id, conn_id, protocol = ?F::PROTOCOL);
    shared.metrics.connected.fetch_add(1, Relaxed);
    let live = shared.registry.insert(Live {
        conn_id,
        proxy: proxy.clone(),
        protocol: F::PROTOCOL,
        connected_at: SystemTime::now(),
        generation: None,
        types: TypeStates::default(),
    });
    let _registered = Registered {
        shared: shared.clone(),
        conn_id,
    };
    let stream = Stream {
        proxy,
        live,
        shared,
        mark,
    };
    stream
        .serve::<F>(first, inbound, out)
        .instrument(span)
        .await;
}

impl Stream {
    async fn serve<F: Flavor>(
        mut self,
        first: F::Request,
        mut inbound: RequestStream<F::Request>,
        mut out: Out<F>,
    ) {
        info!("ADS stream connected");
        let mut ctx_rx = self.shared.ctx_rx.clone();
        // Requests are answered from the generation current when they arrive; only later ones are pushes.
        let generation = ctx_rx.borrow_and_update().as_ref().map(|c| c.version);
        self.live.lock().generation = generation;
        // Both waits live as long as the stream: made anew on every turn of the loop, each would join and
        // leave its watch's waiter list (one lock shared by every stream) on every request.
        // And both are gated (`super::watch_gate`): a request's poll does not lock their waiter lists.
        let mut generations = Gated::new(WatchStream::from_changes(ctx_rx.clone()));
        let mut draining = drained(self.shared.drain.clone());
        // The initial sync waits its turn: see `Config::sync_concurrency`.
        let mut syncing = tokio::select! {
            biased;
            _ = &mut draining => return,
            permit = self.shared.sync_permits.clone().acquire_owned() => permit.ok(),
        };
        let sync_hold = tokio::time::sleep(SYNC_HOLD);
        tokio::pin!(sync_hold);
        // Handling a request and pushing are boxed where they are awaited: inline, this future (alive as long
        // as the stream) would keep room for their states between turns.
        if !Box::pin(self.handle::<F>(first, &ctx_rx, &mut out)).await {
            return;
        }
        let mut permit: Option<PermitFuture> = None;
        let _member = Member::join(&self.shared, &self.mark);
        loop {
            tokio::select! {
                biased;
                _ = &mut draining => {
                    info!("draining: closing ADS stream");
                    break;
                }
                msg = inbound.message() => match msg {
                    Ok(Some(req)) => {
                        if !Box::pin(self.handle::<F>(req, &ctx_rx, &mut out)).await {
                            break;
                        }
                        if syncing.is_some() && self.synced() {
                            debug!("initial sync done");
                            syncing = None;
                        }
                    }
                    Ok(None) => {
                        info!("ADS stream closed by the client");
                        break;
                    }
                    Err(status) => {
                        info!(%status, "ADS stream ended");
                        break;
                    }
                },
                _ = &mut sync_hold, if syncing.is_some() => {
                    debug!("initial sync not ACKed within {SYNC_HOLD:?}: letting the next stream start");
                    syncing = None;
                }
                granted = async {
                    match permit.as_mut() {
                        Some(p) => p.await,
                        None => std::future::pending().await,
                    }
                }, if permit.is_some() => {
                    permit = None;
                    let Ok(permit) = granted else { break };
                    if !Box::pin(self.push_latest::<F>(&mut ctx_rx, &mut out, Some(permit))).await {
                        break;
                    }
                }
                changed = generations.next(), if permit.is_none() => {
                    if changed.is_none() {
                        info!("config publisher gone: closing ADS stream");
                        break;
                    }
                    // Pushes are short, so a permit is usually free: take it without queueing.
                    let acquired = match &self.shared.push_permits {
                        None => None,
                        Some(permits) => match permits.clone().try_acquire_owned() {
                            Ok(permit) => Some(permit),
                            Err(TryAcquireError::NoPermits) => {
                                permit = Some(Box::pin(permits.clone().acquire_owned()));
                                continue;
                            }
                            Err(TryAcquireError::Closed) => break,
                        },
                    };
                    if !Box::pin(self.push_latest::<F>(&mut ctx_rx, &mut out, acquired)).await {
                        break;
                    }
                }
            }
        }
    }

    /// Every type subscribed so far got a response, and the client ACKed the last one.
    fn synced(&self) -> bool {
        let live = self.live.lock();
        !live.types.is_empty()
            && (live.types.iter()).all(|(_, t)| !t.must_respond && t.status.is_acked())
    }

    /// Applies one request and sends the response it calls for. `false` ends the stream.
    async fn handle<F: Flavor>(
        &mut self,
        req: F::Request,
        ctx_rx: &watch::Receiver<Option<Arc<PushContext>>>,
        out: &mut Out<F>,
    ) -> bool {
        // The state's lock is let go before anything is awaited.
        let applied = {
            let mut conn = self.state();
            F::apply(&mut conn, req).map(|(type_url, due)| {
                // Clone the Arc and drop the borrow at once: never hold a watch borrow across an await.
                let ctx = ctx_rx.borrow().clone();
                match (due, ctx) {
                    (true, Some(ctx)) => F::build(&mut conn, &type_url, &ctx, None),
                    // No snapshot yet: `must_respond` stays set and the first generation answers.
                    _ => None,
                }
            })
        };
        let resp = match applied {
            Ok(resp) => resp,
            Err(status) => {
                warn!(%status, "bad ADS request");
                out.close(&status);
                return false;
            }
        };
        self.shared.registry.changed();
        match resp {
            Some(resp) => self.send(out, &resp).await,
            None => true,
        }
    }

    /// Sends `resp`. A stream that has to wait for its client's flow control first is not a member of
    /// fan-outs meanwhile: a client that stops reading must not hold up the others' reads.
    async fn send<M: Wire>(&self, out: &mut ResponseSink<M>, resp: &M) -> bool {
        if !out.must_wait() {
            return out.send(resp).await;
        }
        let fanout = &self.shared.fanout;
        let member = fanout.leave(&self.mark);
        let sent = out.send(resp).await;
        if member {
            fanout.join(&self.mark);
        }
        sent
    }

    /// Pushes the latest generation, if there is one, under `permit`. `false` ends the stream.
    async fn push_latest<F: Flavor>(
        &mut self,
        ctx_rx: &mut watch::Receiver<Option<Arc<PushContext>>>,
        out: &mut Out<F>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> bool {
        let ctx = ctx_rx.borrow_and_update().clone();
        match ctx {
            Some(ctx) => self.push::<F>(&ctx, out, permit).await,
            None => true,
        }
    }

    /// Sends what generation `ctx` changes for this proxy, in push order. `false` ends the stream.
    ///
    /// The push permit bounds computing, not sending: it is let go once the responses are built, so a client
    /// that stops reading (its stream waits for HTTP/2 flow control) does not hold one up for the others.
    async fn push<F: Flavor>(
        &mut self,
        ctx: &PushContext,
        out: &mut Out<F>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> bool {
        let started = Instant::now();
        let responses = {
            let mut conn = self.state();
            conn.live.generation = Some(ctx.version);
            // Every subscribed type is asked: a generator hands back the very set it gave before for what
            // a change left alone, which costs a pointer compare here.
            let types = conn.live.types.to_push();
            (types.iter())
                .filter_map(|t| F::build(&mut conn, t, ctx, Some(ctx.published)))
                .collect::<Vec<_>>()
        };
        self.shared.metrics.push_time.observe(started.elapsed());
        debug!(version = ctx.version, responses = responses.len(), "push");
        self.shared.registry.changed();
        drop(permit);
        self.shared.fanout.took(&self.mark, ctx.version);
        for resp in &responses {
            if !self.send(out, resp).await {
                return false;
            }
        }
        true
    }
}

/// What the client must be told to go from `sent` to `chosen`: resources new or at another version, and
/// names it holds that are no longer chosen.
#[derive(Debug, Default)]
pub(crate) struct Diff {
    pub changed: Vec<Arc<XdsResource>>,
    pub removed: Vec<String>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.removed.is_empty()
    }
}

/// One merge pass over both name-sorted sequences (no lookups): this runs for every affected connection.
/// From one whole set to another (the usual case) the difference is computed once per generation and shared.
pub(crate) fn diff(sent: &Held, chosen: &Chosen) -> Diff {
    if let (Some(earlier), Chosen::All(set)) = (sent.as_set(), chosen) {
        if earlier.ptr_eq(set) {
            return Diff::default();
        }
        let d = set.diff_from(earlier);
        return Diff {
            changed: d.changed.clone(),
            removed: d.removed.clone(),
        };
    }
    let chosen = chosen.as_slice();
    let mut d = Diff::default();
    let mut held = sent.versions().peekable();
    for r in chosen {
        while let Some((name, _)) = held.next_if(|(n, _)| *n < r.name.as_str()) {
            d.removed.push(name.to_owned());
        }
        match held.next_if(|(n, _)| *n == r.name.as_str()) {
            Some((_, version)) if version == r.version => {}
            _ => d.changed.push(r.clone()),
        }
    }
    d.removed.extend(held.map(|(n, _)| n.to_owned()));
    d
}

/// Whether the name-sorted `chosen` holds `name`.
pub(crate) fn contains(chosen: &[Arc<XdsResource>], name: &str) -> bool {
    chosen
        .binary_search_by(|r| r.name.as_str().cmp(name))
        .is_ok()
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::xds::{ResourceSet, SentResource, type_url};

    fn res(name: &str, body: &'static [u8]) -> Arc<XdsResource> {
        Arc::new(XdsResource::from_bytes(
            name,
            type_url::CLUSTER,
            Bytes::from_static(body),
        ))
    }

    #[test]
    fn diff_finds_added_changed_and_removed_in_one_pass() {
        let (a, b, c) = (res("a", b"1"), res("b", b"1"), res("c", b"1"));
        let mut sent = Held::default();
        sent.make_map().extend([
            ("a".to_owned(), SentResource::Sent(a.clone())),
            (
                "b".to_owned(),
                SentResource::Claimed {
                    version: "old".to_owned(),
                },
            ),
            ("gone".to_owned(), SentResource::Sent(res("gone", b"1"))),
            ("0".to_owned(), SentResource::Sent(res("0", b"1"))),
        ]);
        let some = |v: Vec<Arc<XdsResource>>| Chosen::Some(v.into());
        let d = diff(&sent, &some(vec![a.clone(), b.clone(), c.clone()]));
        let changed: Vec<&str> = d.changed.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(changed, ["b", "c"]);
        assert_eq!(d.removed, ["0", "gone"]);
        // Same content, other allocation: no change.
        let d = diff(&sent, &some(vec![res("a", b"1")]));
        assert!(d.changed.is_empty());
        assert!(diff(&Held::default(), &some(vec![])).is_empty());
    }

    #[test]
    fn set_to_set_diff_is_computed_once_and_shared() {
        let (a, b, c) = (res("a", b"1"), res("b", b"1"), res("c", b"1"));
        let old = ResourceSet::new(vec![a.clone(), b.clone()]);
        let new = ResourceSet::new(vec![a.clone(), res("b", b"2"), c.clone()]);
        let held = Held::exactly(Chosen::All(old.clone()));
        let d = diff(&held, &Chosen::All(new.clone()));
        let changed: Vec<&str> = d.changed.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(changed, ["b", "c"]);
        assert!(d.removed.is_empty());
        assert!(Arc::ptr_eq(&new.diff_from(&old), &new.diff_from(&old)));
        let back = diff(&Held::exactly(Chosen::All(new.clone())), &Chosen::All(old));
        assert_eq!(back.removed, ["c"]);
        assert!(diff(&held, &Chosen::All(new.clone())).changed.len() == 2);
        // The general path agrees with the memoized one.
        let general = diff(&held, &Chosen::Some(new.items().to_vec().into()));
        assert_eq!(general.changed.len(), 2);
        // Selections are memoized per shared name set; all names selected is the whole set.
        let names = Arc::new(BTreeSet::from(["a".to_owned(), "c".to_owned()]));
        let picked = new.select(&names).unwrap();
        assert!(Arc::ptr_eq(&picked, &new.select(&names).unwrap()));
        assert_eq!(
            picked.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            ["a", "c"]
        );
        let all = Arc::new(BTreeSet::from([
            "a".into(),
            "b".into(),
            "c".into(),
            "z".into(),
        ]));
        assert!(new.select(&all).is_none());
    }
}
