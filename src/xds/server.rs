//! The tonic ADS service and its lifecycle: bind, serve, drain.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, info, info_span, warn};

use super::connection::{self, Shared};
use super::delta::Delta;
use super::sotw::Sotw;
use super::{Authenticate, Error, Metrics, PushContext, Registry};

/// Responses queued per stream before the stream task waits for Envoy to read: one per type in a push
/// (five) plus a request-triggered one, with slack; a slow Envoy then slows only its own task.
const RESPONSE_QUEUE: usize = 8;

/// Envoy messages can be large (a gateway's route table); tonic's 4 MiB default rejects them.
const MAX_MESSAGE_SIZE: usize = 64 << 20;

/// How long [`Server::serve`] waits for streams to close after the drain signal.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Server settings.
#[derive(Clone)]
pub struct Config {
    /// Address to bind (`0.0.0.0:15010`; port 0 in tests).
    pub addr: SocketAddr,
    /// How many connections may compute a push at once.
    pub push_concurrency: usize,
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
            drain: drain_rx,
            ids: AtomicU64::new(0),
        });
        let svc = AggregatedDiscoveryServiceServer::new(AdsService { shared })
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
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
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), signal)
            .await
            .map_err(Error::Serve)
    }
}

/// The gRPC service: spawns one task per stream.
struct AdsService {
    shared: Arc<Shared>,
}

impl AdsService {
    /// New streams are refused once draining (or once the serving future is gone), so Envoy goes elsewhere.
    fn check_open(&self) -> Result<(), Status> {
        if *self.shared.drain.borrow() || self.shared.drain.has_changed().is_err() {
            return Err(Status::unavailable("xDS server is draining"));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsService {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        self.check_open()?;
        let (tx, rx) = mpsc::channel(RESPONSE_QUEUE);
        // The task ends with the stream (client gone, drain, or server dropped); the registry tracks it.
        let metadata = request.metadata().clone();
        let task = connection::run::<Sotw>(self.shared.clone(), metadata, request.into_inner(), tx);
        tokio::spawn(task.instrument(info_span!("ads_stream")));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        self.check_open()?;
        let (tx, rx) = mpsc::channel(RESPONSE_QUEUE);
        let metadata = request.metadata().clone();
        let task =
            connection::run::<Delta>(self.shared.clone(), metadata, request.into_inner(), tx);
        tokio::spawn(task.instrument(info_span!("ads_stream")));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
