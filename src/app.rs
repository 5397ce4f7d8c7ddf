//! The one place components are built and wired together: store, sources, snapshot builder (and, as they land,
//! the xDS and debug servers).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::FutureExt;
use tokio::sync::{Notify, watch};

use crate::config::Kind;
use crate::config::source::file::FileSource;
use crate::config::source::kube::{self as kube_source, KubeClient, KubeSource};
use crate::config::store::Store;
use crate::debug;
use crate::envoy::Generator;
use crate::envoy::generator::SecretSource;
use crate::inject::webhook;
use crate::model::builder::{self, Built, Debounce};
use crate::security::{self, CaSource, SecretIssuer, kube_ca, kube_trust};
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
    /// Kubernetes mode: how long the first snapshot waits for every watcher's initial list before serving
    /// what it has (and logging the kinds still missing).
    pub kube_sync_timeout: Duration,
}

/// Where and with which serving certificate the admission webhooks are served.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WebhookConfig {
    pub addr: SocketAddr,
    /// PEM chain (serving certificate first) and PEM private key. `None`: issued by rudder's CA (identity must
    /// be on) for `istiod.<ns>.svc`, `istiod.<ns>.svc.cluster.local` and `rudder.<ns>.svc`, and re-issued when
    /// the CA changes.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
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
            kube_sync_timeout: Duration::from_secs(60),
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
        // No half-empty first push: the first snapshot (and so /ready and ADS) waits for the initial lists.
        let missing = kube_source::wait_settled(&running, cfg.kube_sync_timeout).await;
        if missing.is_empty() {
            tracing::info!("Kubernetes initial lists synced");
        } else {
            let missing: Vec<String> = missing.iter().map(|k| k.to_string()).collect();
            tracing::warn!(timeout = ?cfg.kube_sync_timeout, ?missing,
                "Kubernetes initial lists incomplete; serving what is synced");
        }
        tasks.spawn(async move {
            while let Some(done) = running.tasks.join_next().await {
                done.context("kube watcher")?;
            }
            Ok(())
        });
    }
    let first = builder::build_now(&store, 1, None);
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
    // One trust domain: the CA's SPIFFE ids and the generators' SAN checks both follow the mesh config unless
    // the CA's is set explicitly.
    let id_cfg = cfg.identity.as_ref().map(|id| {
        let mesh_td = rx.borrow().snapshot.mesh.trust_domain.clone();
        resolve_trust_domain(id, &mesh_td)
    });
    let identity = match &id_cfg {
        Some(id) => Some(load_identity(id, cfg.kube.as_ref()).await?),
        None => None,
    };
    if let Some(id) = &id_cfg {
        tasks.spawn(warn_trust_domain_drift(
            id.trust_domain_or_default().to_owned(),
            rx.clone(),
        ));
    }
    // The current root, for what publishes it (ConfigMaps, caBundle) and the webhook serving certificate.
    let roots = identity
        .as_ref()
        .map(|i| watch::channel(i.issuer.ca().root_pem().to_owned()).0);
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
    if let (Some(id_cfg), Some(loaded)) = (&id_cfg, identity) {
        let issuer = loaded.issuer.clone();
        let server = xds::Server::new(
            xds::Config {
                addr: id_cfg.tls_addr,
                push_concurrency: cfg.push_concurrency,
                tls: Some(loaded.tls),
                authenticator: Some(loaded.authenticator.clone()),
                ..Default::default()
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
        if let (None, Some(KubeClient(client))) = (&id_cfg.jwks, &cfg.kube) {
            tasks.spawn(
                security::kube_jwks::run_refresh(
                    client.clone(),
                    loaded.authenticator.as_ref().clone(),
                    id_cfg.jwks_refresh.0,
                    id_cfg.jwks_refresh.1,
                )
                .map(Ok),
            );
        }
        let wake = republish.clone();
        let rotating = issuer.clone();
        tasks.spawn(async move {
            rotating.run_rotation(move || wake.notify_one()).await;
            Ok(())
        });
        if let (Some(KubeClient(client)), Some(roots)) = (&cfg.kube, &roots) {
            if let CaSource::Kube { namespace } = &id_cfg.ca {
                let wake = republish.clone();
                tasks.spawn(
                    kube_ca::run_reload(
                        client.clone(),
                        namespace.clone(),
                        issuer.clone(),
                        roots.clone(),
                        kube_ca::RELOAD_EVERY,
                        move || wake.notify_one(),
                    )
                    .map(Ok),
                );
            }
            let nss = namespaces(&store, &mut tasks);
            tasks.spawn(
                kube_trust::run(
                    client.clone(),
                    kube_trust::Targets::istio(&id_cfg.root_namespace),
                    roots.subscribe(),
                    nss,
                )
                .map(Ok),
            );
        }
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
        Some(w) => {
            let cert = webhook_cert(
                w,
                id_cfg.as_ref(),
                secret_issuer.as_ref(),
                roots.as_ref(),
                &mut tasks,
            )?;
            Some(start_webhook(w.addr, cert, store.clone(), &shutdown, &mut tasks).await?)
        }
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

/// `id` with its trust domain resolved: the explicit one, else the mesh config's. A difference is logged: the
/// generators check peers' SANs against the mesh config's trust domain, so certificates of another one fail mTLS.
pub fn resolve_trust_domain(id: &security::Config, mesh_trust_domain: &str) -> security::Config {
    let mut id = id.clone();
    match &id.trust_domain {
        Some(explicit) if explicit != mesh_trust_domain => tracing::warn!(
            ca = %explicit, mesh = %mesh_trust_domain,
            "the CA's trust domain differs from the mesh config's trustDomain: proxies check peer SANs \
             against the mesh config's, so mTLS between them will fail"
        ),
        Some(_) => {}
        None => id.trust_domain = Some(mesh_trust_domain.to_owned()),
    }
    tracing::info!(trust_domain = %id.trust_domain_or_default(), "CA trust domain");
    id
}

/// Warns whenever the mesh config's trust domain moves away from the CA's (which is fixed at start: issued
/// certificates cannot follow a live change).
async fn warn_trust_domain_drift(
    ca_td: String,
    mut snapshots: watch::Receiver<Arc<Built>>,
) -> anyhow::Result<()> {
    let mut warned_for: Option<String> = None;
    loop {
        let mesh_td = snapshots
            .borrow_and_update()
            .snapshot
            .mesh
            .trust_domain
            .clone();
        if mesh_td != ca_td && warned_for.as_deref() != Some(&mesh_td) {
            tracing::warn!(ca = %ca_td, mesh = %mesh_td,
                "the mesh config's trustDomain changed away from the CA's; restart rudder to re-issue \
                 certificates in the new trust domain");
            warned_for = Some(mesh_td);
        } else if mesh_td == ca_td {
            warned_for = None;
        }
        if snapshots.changed().await.is_err() {
            return Ok(());
        }
    }
}

/// Loads the CA (from Secrets in Kubernetes mode), the token keys (a JWKS file, or the API server's), and issues
/// the xDS serving certificate.
async fn load_identity(
    id: &security::Config,
    kube: Option<&KubeClient>,
) -> anyhow::Result<security::Loaded> {
    let ca = match &id.ca {
        CaSource::Kube { namespace } => {
            let KubeClient(client) =
                kube.context("the CA in Kubernetes Secrets needs Kubernetes")?;
            let (ca, origin) = kube_ca::load(
                client,
                namespace,
                id.trust_domain_or_default(),
                id.workload_ttl,
            )
            .await
            .context("CA loads from Kubernetes")?;
            tracing::info!(%namespace, ?origin, "CA loaded from Kubernetes Secrets");
            ca
        }
        source => security::Ca::load(source, id.trust_domain_or_default(), id.workload_ttl)
            .context("CA loads")?,
    };
    let loaded = match (&id.jwks, kube) {
        (Some(_), _) => security::load_with_ca(id, ca),
        (None, Some(KubeClient(client))) => {
            let auth =
                security::kube_jwks::authenticator(client, id.audiences.clone(), id.issuer.clone())
                    .await
                    .context(
                        "token keys from the API server (needs RBAC get on /openid/v1/jwks; or pass --jwks)",
                    )?;
            security::load_with(id, ca, auth)
        }
        (None, None) => anyhow::bail!("identity needs --jwks outside Kubernetes"),
    };
    loaded.context("identity (CA, JWKS) loads")
}

/// The namespaces in the store, updated (only when they change) by a task in `tasks`.
fn namespaces(
    store: &Arc<Store>,
    tasks: &mut tokio::task::JoinSet<anyhow::Result<()>>,
) -> watch::Receiver<std::collections::BTreeSet<String>> {
    let names = |s: &Store| {
        s.list(Kind::Namespace)
            .iter()
            .filter_map(|o| o.meta().name.clone())
            .collect::<std::collections::BTreeSet<String>>()
    };
    let (tx, rx) = watch::channel(names(store));
    let store = store.clone();
    let mut changes = store.subscribe();
    tasks.spawn(async move {
        while changes.changed().await.is_ok() {
            let now = names(&store);
            tx.send_if_modified(|cur| {
                let differs = *cur != now;
                if differs {
                    *cur = now;
                }
                differs
            });
        }
        Ok(())
    });
    rx
}

/// The webhook serving certificate: from files, or issued by the CA (and re-issued whenever the root changes,
/// so it always chains to the `caBundle` rudder publishes).
fn webhook_cert(
    w: &WebhookConfig,
    identity: Option<&security::Config>,
    issuer: Option<&Arc<SecretIssuer>>,
    roots: Option<&watch::Sender<String>>,
    tasks: &mut tokio::task::JoinSet<anyhow::Result<()>>,
) -> anyhow::Result<Arc<webhook::ServingCert>> {
    if let (Some(cert), Some(key)) = (&w.cert, &w.key) {
        let chain =
            std::fs::read(cert).with_context(|| format!("webhook cert {}", cert.display()))?;
        let key = std::fs::read(key).with_context(|| format!("webhook key {}", key.display()))?;
        return Ok(Arc::new(webhook::ServingCert::new(&chain, &key)?));
    }
    let (Some(id), Some(issuer), Some(roots)) = (identity, issuer, roots) else {
        anyhow::bail!(
            "webhooks need --webhook-cert/--webhook-key, or identity on to issue them from the CA"
        );
    };
    let names = webhook_serving_names(&id.root_namespace);
    let issued = issuer
        .ca()
        .issue_serving(&names)
        .context("webhook serving certificate")?;
    let cert = Arc::new(webhook::ServingCert::new(
        issued.chain_pem.as_bytes(),
        issued.key_pem.as_bytes(),
    )?);
    let (swap, issuer, mut roots) = (cert.clone(), issuer.clone(), roots.subscribe());
    tasks.spawn(async move {
        roots.borrow_and_update();
        while roots.changed().await.is_ok() {
            let fresh = issuer.ca().issue_serving(&names);
            match fresh
                .map_err(anyhow::Error::from)
                .and_then(|i| Ok(swap.replace(i.chain_pem.as_bytes(), i.key_pem.as_bytes())?))
            {
                Ok(()) => tracing::info!("webhook serving certificate re-issued by the new CA"),
                Err(e) => {
                    tracing::warn!(error = %e, "re-issuing the webhook serving certificate failed")
                }
            }
        }
        Ok(())
    });
    Ok(cert)
}

/// DNS names of the webhook serving certificate: the Service the webhook configurations call.
pub fn webhook_serving_names(namespace: &str) -> Vec<String> {
    vec![
        format!("istiod.{namespace}.svc"),
        format!("istiod.{namespace}.svc.cluster.local"),
        format!("rudder.{namespace}.svc"),
    ]
}

/// Binds the HTTPS admission webhooks (`/inject`, `/validate`) and serves them until shutdown.
async fn start_webhook(
    addr: SocketAddr,
    cert: Arc<webhook::ServingCert>,
    store: Arc<Store>,
    shutdown: &watch::Sender<bool>,
    tasks: &mut tokio::task::JoinSet<anyhow::Result<()>>,
) -> anyhow::Result<SocketAddr> {
    let tls = webhook::tls_config_with(cert)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("webhook bind {addr}"))?;
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
    let mut previous: Option<Arc<Generator>> = None;
    loop {
        let built = snapshots.borrow_and_update().clone();
        let mut generator = Generator::new(built.snapshot.clone()).with_secrets(secrets.clone());
        if let Some(previous) = &previous {
            generator = generator.following(previous);
        }
        let generator = Arc::new(generator);
        previous = Some(generator.clone());
        let ctx = PushContext::new(built.snapshot.version, generator.clone());
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
                    let ctx = PushContext::new(built.snapshot.version, generator.clone());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::testing::TestIssuer;

    const MESH_EXAMPLE_ORG: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    trustDomain: example.org
"#;

    /// Builds the app over a config directory holding `mesh_yaml`, with identity on (`trust_domain` explicit or
    /// not), and returns the CA's trust domain, the mesh config's, and the SPIFFE id of an issued certificate.
    async fn trust_domains(mesh_yaml: &str, explicit: Option<&str>) -> (String, String, String) {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config");
        std::fs::create_dir(&config).unwrap();
        std::fs::write(config.join("mesh.yaml"), mesh_yaml).unwrap();
        let jwks = dir.path().join("jwks.json");
        std::fs::write(&jwks, TestIssuer::default().jwks().to_string()).unwrap();
        let mut identity = security::Config::new(dir.path().join("ca"), jwks);
        identity.trust_domain = explicit.map(str::to_owned);
        identity.tls_addr = "127.0.0.1:0".parse().unwrap();
        let bound = build(Config {
            config_dir: Some(config),
            xds_addr: None,
            identity: Some(identity),
            ..Default::default()
        })
        .await
        .unwrap();
        let mesh_td = bound.snapshots.borrow().snapshot.mesh.trust_domain.clone();
        let ca = bound.secret_issuer.as_ref().unwrap().ca();
        let issued = ca.issue_workload("shop", "cart").unwrap();
        let der = first_cert_der(&issued.chain_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let san = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .find_map(|n| match n {
                x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
                _ => None,
            })
            .unwrap();
        let ca_td = ca.trust_domain().to_owned();
        bound.shutdown().await;
        (ca_td, mesh_td, san)
    }

    fn first_cert_der(pem: &str) -> Vec<u8> {
        x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .unwrap()
            .1
            .contents
    }

    #[tokio::test]
    async fn the_ca_trust_domain_follows_the_mesh_config_unless_overridden() {
        let (ca, mesh, san) = trust_domains(MESH_EXAMPLE_ORG, None).await;
        assert_eq!((ca.as_str(), mesh.as_str()), ("example.org", "example.org"));
        assert_eq!(san, "spiffe://example.org/ns/shop/sa/cart");
        // Without a mesh config both are Istio's default.
        let (ca, mesh, san) = trust_domains("", None).await;
        assert_eq!(
            (ca.as_str(), mesh.as_str()),
            ("cluster.local", "cluster.local")
        );
        assert_eq!(san, "spiffe://cluster.local/ns/shop/sa/cart");
        // An explicit trust domain wins (and is warned about when it differs).
        let (ca, mesh, san) = trust_domains(MESH_EXAMPLE_ORG, Some("other.org")).await;
        assert_eq!((ca.as_str(), mesh.as_str()), ("other.org", "example.org"));
        assert_eq!(san, "spiffe://other.org/ns/shop/sa/cart");
    }

    #[test]
    fn resolve_keeps_an_explicit_trust_domain_and_fills_a_missing_one() {
        let mut id = security::Config::new("/x".into(), PathBuf::from("/j"));
        assert_eq!(
            resolve_trust_domain(&id, "example.org")
                .trust_domain
                .as_deref(),
            Some("example.org")
        );
        id.trust_domain = Some("other.org".into());
        assert_eq!(
            resolve_trust_domain(&id, "example.org")
                .trust_domain
                .as_deref(),
            Some("other.org")
        );
    }
}
