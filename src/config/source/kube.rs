//! The Kubernetes source: one kube-rs watcher per kind feeding the same store as the file source.
//!
//! ```text
//!  API server ──list/watch──▶ watcher (one per slot, default_backoff) ──▶ KindSync ──▶ Store
//!                             relists, 410 Gone, bookmarks: kube-rs      decode + validate like a file,
//!                                                                        buffer Init…InitDone, problems
//! ```
//!
//! Every object goes through the same decode and validation as a file document, so a bad object is reported as
//! `Kind ns/name: path: reason` on the store (origin `kube:<Kind>`) and the rest keeps flowing. A kind whose CRD
//! is not installed is logged once and probed again later; it never stops the source.

pub mod resource;
pub mod sync;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;
use tracing::Instrument;

use crate::config::Kind;
use crate::config::store::Store;
use resource::Slot;
use sync::KindSync;

/// Errors that stop the Kubernetes source from starting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kubeconfig file could not be read or used.
    #[error("kubeconfig {0}: {1}")]
    Kubeconfig(String, #[source] kube::config::KubeconfigError),
    /// No kubeconfig and no in-cluster service account.
    #[error("no Kubernetes config (KUBECONFIG, ~/.kube/config or in-cluster): {0}")]
    Infer(#[source] kube::config::InferConfigError),
    /// The client could not be built from the config (TLS, proxy).
    #[error("Kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

/// A kube client that can sit in `app::Config` (which is `Debug`).
#[derive(Clone)]
pub struct KubeClient(pub kube::Client);

impl std::fmt::Debug for KubeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KubeClient")
    }
}

/// Builds a client from an explicit kubeconfig, or infers one (`KUBECONFIG`, `~/.kube/config`, in-cluster).
pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client, Error> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| Error::Kubeconfig(path.display().to_string(), e))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| Error::Kubeconfig(path.display().to_string(), e))?
        }
        None => kube::Config::infer().await.map_err(Error::Infer)?,
    };
    kube::Client::try_from(config).map_err(Error::Client)
}

/// Whether a Kubernetes config is available without contacting anything: `KUBECONFIG`, `~/.kube/config`, or
/// the in-cluster service account environment.
pub fn config_available() -> bool {
    let env_file = std::env::var_os("KUBECONFIG").is_some_and(|v| !v.is_empty());
    let home_file = std::env::var_os("HOME")
        .map(|h| Path::new(&h).join(".kube/config").is_file())
        .unwrap_or(false);
    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
        && Path::new("/var/run/secrets/kubernetes.io/serviceaccount/token").is_file();
    env_file || home_file || in_cluster
}

/// Settings of the Kubernetes source.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the mesh ConfigMap `istio` lives.
    pub root_namespace: String,
    /// How long to wait before probing again for a CRD that is not installed.
    pub missing_retry: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            root_namespace: "istio-system".into(),
            missing_retry: Duration::from_secs(30),
        }
    }
}

/// Watches a cluster into a store.
pub struct KubeSource {
    client: kube::Client,
    store: Arc<Store>,
    options: Options,
}

/// The running watchers.
pub struct Running {
    /// Kinds whose initial list has reached the store.
    pub synced: watch::Receiver<BTreeSet<Kind>>,
    /// Kinds that are settled for readiness: synced, or found not served by the API server (a CRD that is not
    /// installed has nothing to wait for). A kind that cannot be listed (forbidden, unreachable) never settles.
    pub settled: watch::Receiver<BTreeSet<Kind>>,
    /// How many kinds are watched or waited for.
    pub slots: usize,
    /// The kind of each slot (its preferred candidate), as the sets above name them.
    pub kinds: Vec<Kind>,
    /// The watcher tasks; they run until aborted (dropping this aborts them).
    pub tasks: tokio::task::JoinSet<()>,
}

impl KubeSource {
    /// A source for `client`; nothing is watched until `spawn`.
    pub fn new(client: kube::Client, store: Arc<Store>, options: Options) -> Self {
        KubeSource {
            client,
            store,
            options,
        }
    }

    /// Starts one watcher task per slot.
    pub fn spawn(self) -> Running {
        let slots = resource::slots(&self.options.root_namespace);
        let (synced_tx, synced) = watch::channel(BTreeSet::new());
        let (settled_tx, settled) = watch::channel(BTreeSet::new());
        let progress = Arc::new(Progress {
            synced: synced_tx,
            settled: settled_tx,
        });
        let mut tasks = tokio::task::JoinSet::new();
        let n = slots.len();
        let kinds = slots.iter().map(|s| s.candidates[0].0).collect();
        for slot in slots {
            let span = tracing::info_span!("kube", kind = %slot.candidates[0].0);
            tasks.spawn(
                run_slot(
                    self.client.clone(),
                    self.store.clone(),
                    slot,
                    self.options.missing_retry,
                    progress.clone(),
                )
                .instrument(span),
            );
        }
        Running {
            synced,
            settled,
            slots: n,
            kinds,
            tasks,
        }
    }
}

/// Readiness progress shared by the slot tasks.
struct Progress {
    synced: watch::Sender<BTreeSet<Kind>>,
    settled: watch::Sender<BTreeSet<Kind>>,
}

impl Progress {
    fn settle(&self, kind: Kind) {
        self.settled.send_if_modified(|s| s.insert(kind));
    }
}

/// Awaits until every slot of `running` settled (its initial list reached the store, or its kind is not
/// served), at most `bound`. Returns the kinds still missing (empty when all settled), for the caller to log:
/// serving what is there beats never serving.
pub async fn wait_settled(running: &Running, bound: Duration) -> Vec<Kind> {
    let mut settled = running.settled.clone();
    let n = running.slots;
    let _ = tokio::time::timeout(bound, settled.wait_for(|s| s.len() >= n)).await;
    let done = settled.borrow().clone();
    running
        .kinds
        .iter()
        .filter(|k| !done.contains(k))
        .copied()
        .collect()
}

/// Resolves which version of the slot's kind is served, then watches it forever.
async fn run_slot(
    client: kube::Client,
    store: Arc<Store>,
    slot: Slot,
    retry: Duration,
    progress: Arc<Progress>,
) {
    let first = slot.candidates[0].0;
    let mut reported = false;
    let (kind, ar) = loop {
        match resource::resolve(&client, &slot).await {
            Ok(Some(found)) => break found,
            Ok(None) => {
                // Nothing to list yet: readiness need not wait for a kind the cluster does not have.
                progress.settle(first);
                if !reported {
                    tracing::warn!(
                        origin = %slot.origin(),
                        "not served by the API server (CRD not installed?); will keep checking"
                    );
                    reported = true;
                }
            }
            Err(e) => {
                if !reported {
                    tracing::warn!(error = %e, "cannot list; will retry");
                    reported = true;
                }
            }
        }
        // A CRD may be installed later; probing is cheap and rare.
        tokio::time::sleep(retry).await;
    };
    tracing::info!(api_version = %ar.api_version, kind = %kind, "watching");
    let api = resource::api(&client, &slot, &ar);
    let mut config = watcher::Config::default();
    if let Some(f) = &slot.fields {
        config = config.fields(f);
    }
    let mut state = KindSync::new(store, kind, ar, slot.origin());
    let mut events = watcher(api, config).default_backoff().boxed();
    let mut failing = false;
    while let Some(event) = events.next().await {
        match event {
            Ok(event) => {
                failing = false;
                let was_synced = state.synced();
                state.handle(event);
                if !was_synced && state.synced() {
                    progress.synced.send_modify(|s| {
                        s.insert(first);
                    });
                    progress.settle(first);
                }
            }
            // kube-rs retries with backoff (and relists after 410 Gone); report the first of a run of failures.
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "watch failed; retrying");
                }
                failing = true;
            }
        }
    }
}
