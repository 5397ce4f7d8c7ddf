//! The one place components are built and wired together: store, sources, snapshot builder (and, as they land,
//! the xDS and debug servers).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::FutureExt;
use tokio::sync::{Notify, watch};

use crate::config::source::file::FileSource;
use crate::config::source::kube::{KubeClient, KubeSource};
use crate::config::store::Store;
use crate::debug;
use crate::envoy::Generator;
use crate::envoy::generator::SecretSource;
use crate::inject::webhook;
use crate::model::builder::{self, Built, Debounce};
use crate::security::{self, SecretIssuer};
use crate::xds::{self, PushContext};

/// Settings for `rudder discovery`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Config {
    /// Config directory (the file source); `None` when only Kubernetes is used.
    pub config_dir: Option<PathBuf>,
    pub debounce: Debounce,
    /// How long the file watcher lets a burst of writes settle before reloading.
    pub file_settle: Duration,
    /// Plaintext ADS (istiod's 15010); `None` disables serving (e.g. `discovery --once`).
    pub xds_addr: Option<SocketAddr>,
    /// How many proxies may compute a push at once.
    pub push_concurrency: usize,
    /// Kubernetes API client (the kube source); `None` when only files are used.
    #[serde(skip)]
    pub kube: Option<KubeClient>,
    /// TLS ADS (istiod's 15012) with the CA, SDS secrets and proxy authentication; `None` disables it.
    pub identity: Option<security::Config>,
    /// Debug REST API and metrics (istiod's 15014); `None` disables it.
    pub debug_addr: Option<SocketAddr>,
    /// The same debug API on a second address (istiod's 8080, for `kubectl port-forward` habits). A convenience:
    /// failing to bind it is logged, not fatal.
    pub debug_alt_addr: Option<SocketAddr>,
    /// Injection and validation webhooks over HTTPS (istiod's 15017); `None` disables them.
    pub webhook: Option<WebhookConfig>,
}

/// Where and with which serving certificate the admission webhooks are served.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WebhookConfig {
    pub addr: SocketAddr,
    /// PEM chain (serving certificate first) and PEM private key.
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            config_dir: None,
            debounce: Debounce::default(),
            file_settle: Duration::from_millis(50),
            xds_addr: Some(SocketAddr::from(([0, 0, 0, 0], 15010))),
            push_concurrency: 100,
            kube: None,
            identity: None,
            debug_addr: None,
            debug_alt_addr: None,
            webhook: None,
        }
    }
}

/// A running control plane.
pub struct Bound {
    pub store: Arc<Store>,
    /// The latest snapshot; every consumer subscribes here.
    pub snapshots: watch::Receiver<Arc<Built>>,
    /// Where ADS is served, when it is.
    pub xds_addr: Option<SocketAddr>,
    /// Connection state of every proxy (for the debug API and tests).
    pub xds_registry: Option<Arc<xds::Registry>>,
    pub xds_metrics: Option<Arc<xds::Metrics>>,
    /// Where TLS ADS (the only server that serves secrets) is served, when identity is on.
    pub xds_tls_addr: Option<SocketAddr>,
    /// Connection state of the TLS server's proxies.
    pub xds_tls_registry: Option<Arc<xds::Registry>>,
    /// The CA and the proxies' certificates, when identity is on.
    pub secret_issuer: Option<Arc<SecretIssuer>>,
    /// Where the debug API is served, when it is.
    pub debug_addr: Option<SocketAddr>,
    /// Where the admission webhooks are served, when they are.
    pub webhook_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: tokio::task::JoinSet<anyhow::Result<()>>,
}

/// Loads the sources, builds the first snapshot and starts the background tasks.
pub async fn build(cfg: Config) -> anyhow::Result<Bound> {
    let store = Arc::new(Store::new());
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(dir) = &cfg.config_dir {
        let mut source = FileSource::new(dir, store.clone());
        let loaded = source.load_all().context("file source starts")?;
        tracing::info!(
            dir = %dir.display(),
            files = loaded.files,
            objects = loaded.objects,
            errors = loaded.errors,
            warnings = loaded.warnings,
            skipped = loaded.skipped,
            "loaded config directory"
        );
        let settle = cfg.file_settle;
        tasks.spawn(async move { source.watch(settle).await.context("file watcher") });
    }
    if let Some(KubeClient(client)) = cfg.kube.clone() {
        let mut running = KubeSource::new(client, store.clone(), Default::default()).spawn();
        tracing::info!(kinds = running.slots, "watching Kubernetes");
        tasks.spawn(async move {
            while let Some(done) = running.tasks.join_next().await {
                done.context("kube watcher")?;
            }
            Ok(())
        });
    }
    let first = builder::build_now(&store, 1);
    tracing::info!(
        build_ms = first.build_time.as_millis() as u64,
        "{}",
        first.snapshot.summary()
    );
    let (tx, rx) = watch::channel(Arc::new(first));
    let debounce = cfg.debounce;
    let s = store.clone();
    tasks.spawn(async move {
        builder::run(s, debounce, tx).await;
        Ok(())
    });
    let (shutdown, _) = watch::channel(false);
    let (mut xds_addr, mut xds_registry, mut xds_metrics) = (None, None, None);
    let identity = cfg
        .identity
        .as_ref()
        .map(security::load)
        .transpose()
        .context("identity (CA, JWKS) loads")?;
    let (ctx_tx, ctx_rx) = watch::channel(None);
    // Wakes the publisher without a new snapshot: certificate rotation and CA changes.
    let republish = Arc::new(Notify::new());
    if cfg.xds_addr.is_some() || identity.is_some() {
        let secrets = identity
            .as_ref()
            .map(|i| i.issuer.clone() as Arc<dyn SecretSource>);
        tasks.spawn(publish_push_contexts(
            rx.clone(),
            ctx_tx,
            secrets,
            republish.clone(),
        ));
    }
    if let Some(addr) = cfg.xds_addr {
        let server = xds::Server::new(
            xds::Config {
                addr,
                push_concurrency: cfg.push_concurrency,
                ..Default::default()
            },
            ctx_rx.clone(),
        );
        let (listener, bound) = server.bind().await?;
        tracing::info!(addr = %bound, "serving ADS (plaintext)");
        xds_addr = Some(bound);
        xds_registry = Some(server.registry());
        xds_metrics = Some(server.metrics());
        let mut stop = shutdown.subscribe();
        tasks.spawn(async move {
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            server.serve(listener, stopped).await.context("xDS server")
        });
    }
    let (mut xds_tls_addr, mut xds_tls_registry, mut secret_issuer) = (None, None, None);
    if let (Some(id_cfg), Some(loaded)) = (&cfg.identity, identity) {
        let issuer = loaded.issuer.clone();
        let server = xds::Server::new(
            xds::Config {
                addr: id_cfg.tls_addr,
                push_concurrency: cfg.push_concurrency,
                tls: Some(loaded.tls),
                authenticator: Some(loaded.authenticator),
            },
            ctx_rx,
        );
        let (listener, bound) = server.bind().await?;
        tracing::info!(addr = %bound, "serving ADS (TLS, secrets to authenticated proxies)");
        xds_tls_addr = Some(bound);
        xds_tls_registry = Some(server.registry());
        secret_issuer = Some(issuer.clone());
        let mut stop = shutdown.subscribe();
        tasks.spawn(async move {
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            server
                .serve(listener, stopped)
                .await
                .context("TLS xDS server")
        });
        let wake = republish.clone();
        tasks.spawn(async move {
            issuer.run_rotation(move || wake.notify_one()).await;
            Ok(())
        });
    }
    let debug_addr = match cfg.debug_addr {
        Some(addr) => Some(
            start_debug(
                addr,
                cfg.debug_alt_addr,
                debug::State {
                    store: store.clone(),
                    snapshots: rx.clone(),
                    xds_registry: xds_registry.clone(),
                    xds_metrics: xds_metrics.clone(),
                    build_metrics: Default::default(),
                },
                &shutdown,
                &mut tasks,
            )
            .await?,
        ),
        None => None,
    };
    let webhook_addr = match &cfg.webhook {
        Some(w) => Some(start_webhook(w, store.clone(), &shutdown, &mut tasks).await?),
        None => None,
    };
    Ok(Bound {
        webhook_addr,
        store,
        snapshots: rx,
        xds_addr,
        xds_registry,
        xds_metrics,
        xds_tls_addr,
        xds_tls_registry,
        secret_issuer,
        debug_addr,
        shutdown,
        tasks,
    })
}

/// Binds the HTTPS admission webhooks (`/inject`, `/validate`) and serves them until shutdown.
async fn start_webhook(
    w: &WebhookConfig,
    store: Arc<Store>,
    shutdown: &watch::Sender<bool>,
    tasks: &mut tokio::task::JoinSet<anyhow::Result<()>>,
) -> anyhow::Result<SocketAddr> {
    let chain =
        std::fs::read(&w.cert).with_context(|| format!("webhook cert {}", w.cert.display()))?;
    let key = std::fs::read(&w.key).with_context(|| format!("webhook key {}", w.key.display()))?;
    let tls = webhook::tls_config(&chain, &key)?;
    let listener = tokio::net::TcpListener::bind(w.addr)
        .await
        .with_context(|| format!("webhook bind {}", w.addr))?;
    let bound = listener.local_addr()?;
    tracing::info!(addr = %bound, "serving injection and validation webhooks (HTTPS)");
    let state = Arc::new(webhook::WebhookState {
        store: Some(store),
        ..Default::default()
    });
    let mut stop = shutdown.subscribe();
    tasks.spawn(async move {
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        webhook::serve_tls(listener, tls, state, stopped)
            .await
            .context("webhook server")
    });
    Ok(bound)
}

/// Binds the debug API and starts serving it (and the snapshot timing observer) until shutdown.
async fn start_debug(
    addr: SocketAddr,
    alt_addr: Option<SocketAddr>,
    state: debug::State,
    shutdown: &watch::Sender<bool>,
    tasks: &mut tokio::task::JoinSet<anyhow::Result<()>>,
) -> anyhow::Result<SocketAddr> {
    let (listener, bound) = debug::bind(addr).await?;
    tracing::info!(addr = %bound, "serving debug API and metrics");
    tasks.spawn(
        state
            .build_metrics
            .clone()
            .observe(state.snapshots.clone())
            .map(Ok),
    );
    let router = debug::router(Arc::new(state));
    let mut listeners = vec![listener];
    if let Some(alt) = alt_addr {
        match debug::bind(alt).await {
            Ok((l, alt_bound)) => {
                tracing::info!(addr = %alt_bound, "serving debug API (alternate port)");
                listeners.push(l);
            }
            Err(e) => tracing::warn!(error = %e, "debug API alternate port not served"),
        }
    }
    for listener in listeners {
        let mut stop = shutdown.subscribe();
        let router = router.clone();
        tasks.spawn(async move {
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            debug::serve(listener, router, stopped)
                .await
                .context("debug server")
        });
    }
    Ok(bound)
}

/// Turns each new snapshot into a push generation for the xDS servers. `republish` re-sends the current
/// generation (same version and generator, so unchanged resources cost nothing) for secrets that changed
/// without a snapshot: a renewed certificate or a new CA.
async fn publish_push_contexts(
    mut snapshots: watch::Receiver<Arc<Built>>,
    tx: watch::Sender<Option<Arc<PushContext>>>,
    secrets: Option<Arc<dyn SecretSource>>,
    republish: Arc<Notify>,
) -> anyhow::Result<()> {
    loop {
        let built = snapshots.borrow_and_update().clone();
        let generator =
            Arc::new(Generator::new(built.snapshot.clone()).with_secrets(secrets.clone()));
        let ctx = PushContext::new(
            built.snapshot.version,
            generator.clone(),
            built.changes.endpoints_only(),
        );
        if tx.send(Some(Arc::new(ctx))).is_err() {
            return Ok(());
        }
        loop {
            tokio::select! {
                changed = snapshots.changed() => match changed {
                    Ok(()) => break,
                    Err(_) => return Ok(()),
                },
                _ = republish.notified() => {
                    let ctx = PushContext::new(built.snapshot.version, generator.clone(), false);
                    if tx.send(Some(Arc::new(ctx))).is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }
}

impl Bound {
    /// Stops serving: ADS streams are closed so proxies reconnect elsewhere.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }

    /// Runs until a task fails or the process is interrupted.
    pub async fn run(mut self) -> anyhow::Result<()> {
        tokio::select! {
            res = self.tasks.join_next() => match res {
                Some(Ok(Ok(()))) | None => Ok(()),
                Some(Ok(Err(e))) => Err(e),
                Some(Err(e)) => Err(e).context("task panicked"),
            },
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("interrupted, shutting down");
                Ok(())
            }
        }
    }
}
