//! The ADS server's lifecycle: bind, serve (tonic's HTTP/2 server with the wire-level service of
//! [`super::grpc`]), drain.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tonic::transport::server::TcpIncoming;
use tracing::{info, warn};

use super::connection::Shared;
use super::grpc::AdsGrpc;
use super::{Authenticate, Error, Metrics, PushContext, Registry};

/// Responses queued per stream before the stream task waits for Envoy to read: one per type in a push
/// (five) plus a request-triggered one, with slack; a slow Envoy then slows only its own task.
const RESPONSE_QUEUE: usize = 8;

/// Envoy messages can be large (a gateway's route table); tonic's 4 MiB default rejects them.
const MAX_MESSAGE_SIZE: usize = 64 << 20;

/// The longest a stream keeps its initial-sync permit: a client that never ACKs does not hold up the others.
pub(crate) const SYNC_HOLD: Duration = Duration::from_secs(5);

/// How long [`Server::serve`] waits for streams to close after the drain signal.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Server settings.
#[derive(Clone)]
pub struct Config {
    /// Address to bind (`0.0.0.0:15010`; port 0 in tests).
    pub addr: SocketAddr,
    /// How many connections may compute a push at once.
    pub push_concurrency: usize,
    /// How many new streams may be in their initial sync at once (first request until every response is
    /// ACKed, or 5 s). A fleet reconnecting at once (after a restart) otherwise has every full
    /// response encoded and in flight together: memory grows with the herd, not with the mesh.
    pub sync_concurrency: usize,
    /// Serve over TLS with this serving certificate (istiod's 15012); `None` is plaintext (15010).
    pub tls: Option<tonic::transport::ServerTlsConfig>,
    /// Authenticates each stream ([`Proxy::identity`](super::Proxy::identity)). Only honoured with `tls`:
    /// credentials on a plaintext connection prove nothing, so a plaintext server never authenticates (and
    /// so never serves secrets).
    pub authenticator: Option<Arc<dyn Authenticate>>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("addr", &self.addr)
            .field("push_concurrency", &self.push_concurrency)
            .field("sync_concurrency", &self.sync_concurrency)
            .field("tls", &self.tls.is_some())
            .field("authenticator", &self.authenticator.is_some())
            .finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: SocketAddr::from(([0, 0, 0, 0], 15010)),
            push_concurrency: 100,
            sync_concurrency: 100,
            tls: None,
            authenticator: None,
        }
    }
}

/// The ADS server. Build it, hand [`Server::registry`] and [`Server::metrics`] to the debug API, then
/// [`Server::serve`] it.
pub struct Server {
    cfg: Config,
    ctx_rx: watch::Receiver<Option<Arc<PushContext>>>,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
}

impl Server {
    /// A server fed by `ctx_rx`; `None` there means "no snapshot yet" and streams wait for the first one.
    pub fn new(cfg: Config, ctx_rx: watch::Receiver<Option<Arc<PushContext>>>) -> Self {
        Server {
            cfg,
            ctx_rx,
            registry: Arc::default(),
            metrics: Arc::default(),
        }
    }

    /// The read-only connection registry.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// The server's counters.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Binds the configured address.
    pub async fn bind(&self) -> Result<(TcpListener, SocketAddr), Error> {
        let listener = TcpListener::bind(self.cfg.addr)
            .await
            .map_err(|e| Error::Bind(self.cfg.addr, e))?;
        let addr = listener.local_addr().map_err(Error::LocalAddr)?;
        Ok((listener, addr))
    }

    /// Serves ADS on `listener` until `shutdown` resolves, then drains: every stream is closed (Envoy
    /// reconnects to another replica) and the future returns once they are gone or after a grace period.
    /// Dropping the future also closes every stream.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), Error> {
        let addr = listener.local_addr().map_err(Error::LocalAddr)?;
        let (drain_tx, drain_rx) = watch::channel(false);
        let authenticator = match (&self.cfg.tls, self.cfg.authenticator) {
            (Some(_), auth) => auth,
            (None, Some(_)) => {
                warn!(%addr, "ignoring the authenticator of a plaintext xDS server: it never serves secrets");
                None
            }
            (None, None) => None,
        };
        let shared = Arc::new(Shared {
            authenticator,
            ctx_rx: self.ctx_rx,
            registry: self.registry.clone(),
            metrics: self.metrics,
            push_permits: Arc::new(Semaphore::new(self.cfg.push_concurrency.max(1))),
            sync_permits: Arc::new(Semaphore::new(self.cfg.sync_concurrency.max(1))),
            drain: drain_rx,
            ids: AtomicU64::new(0),
            name_sets: Default::default(),
        });
        let svc = AdsGrpc {
            shared,
            max_message: MAX_MESSAGE_SIZE,
            queue: RESPONSE_QUEUE,
        };
        info!(%addr, tls = self.cfg.tls.is_some(), "xDS server listening");
        let registry = self.registry;
        let signal = async move {
            shutdown.await;
            info!(streams = registry.len(), "xDS server draining");
            // Streams end first, so tonic's graceful shutdown has no open stream to wait for.
            let _ = drain_tx.send(true);
            if registry
                .wait_for(DRAIN_GRACE, |c| c.is_empty())
                .await
                .is_err()
            {
                warn!(
                    streams = registry.len(),
                    "xDS streams still open after the drain grace period"
                );
            }
        };
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = self.cfg.tls {
            builder = builder.tls_config(tls).map_err(Error::Serve)?;
        }
        builder
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_service(svc)
            .serve_with_incoming_shutdown(incoming(listener), signal)
            .await
            .map_err(Error::Serve)
    }
}

/// Accepted connections with `TCP_NODELAY` (tonic sets it only on listeners it binds itself). Without it,
/// Nagle's algorithm holds back a small response written while an earlier one is unacknowledged (CDS then
/// EDS then RDS in one push) until the client's delayed ACK: tens of milliseconds per push.
fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}
