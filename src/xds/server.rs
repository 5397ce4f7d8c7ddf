//! The ADS server's lifecycle: bind, accept (TLS when configured), one task per connection
//! ([`super::http2`]), drain.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tracing::{Instrument, debug, info, info_span, warn};

use super::connection::Shared;
use super::fanout::Fanout;
use super::http2::{self, Ads};
use super::{Authenticate, Error, Metrics, PushContext, Registry};

/// Envoy messages can be large (a gateway's route table); tonic's 4 MiB default rejects them.
const MAX_MESSAGE_SIZE: usize = 64 << 20;

/// How long a client has to complete its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TCP keepalive on accepted connections: the kernel finds a proxy that vanished (node gone, no FIN or RST)
/// within about a minute and a half, and its stream is freed, at no cost to live connections.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_RETRIES: u32 = 6;

/// The longest a stream keeps its initial-sync permit: a client that never ACKs does not hold up the others.
pub(crate) const SYNC_HOLD: Duration = Duration::from_secs(5);

/// How long [`Server::serve`] waits for streams to close after the drain signal.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Server settings.
#[derive(Clone)]
pub struct Config {
    /// Address to bind (`0.0.0.0:15010`; port 0 in tests).
    pub addr: SocketAddr,
    /// How many connections may compute a push at once (never more than the runtime has workers: a push is
    /// computed within one poll).
    pub push_concurrency: usize,
    /// How many new streams may be in their initial sync at once (first request until every response is
    /// ACKed, or 5 s). A fleet reconnecting at once (after a restart) otherwise has every full
    /// response encoded and in flight together: memory grows with the herd, not with the mesh.
    pub sync_concurrency: usize,
    /// Serve over TLS with this configuration (istiod's 15012); `None` is plaintext (15010). ALPN is set to
    /// `h2` by the server.
    pub tls: Option<Arc<ServerConfig>>,
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
    fanout: Arc<Fanout>,
}

impl Server {
    /// A server fed by `ctx_rx`; `None` there means "no snapshot yet" and streams wait for the first one.
    pub fn new(cfg: Config, ctx_rx: watch::Receiver<Option<Arc<PushContext>>>) -> Self {
        Server {
            cfg,
            ctx_rx,
            registry: Arc::default(),
            metrics: Arc::default(),
            fanout: Arc::default(),
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

    /// The server's fan-outs (tests hold one on with a member that never takes a generation).
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn fanout(&self) -> Arc<Fanout> {
        self.fanout.clone()
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
        let workers = tokio::runtime::Handle::current().metrics().num_workers();
        let shared = Arc::new(Shared {
            authenticator,
            ctx_rx: self.ctx_rx,
            registry: self.registry.clone(),
            metrics: self.metrics,
            push_permits: (self.cfg.push_concurrency < workers)
                .then(|| Arc::new(Semaphore::new(self.cfg.push_concurrency.max(1)))),
            sync_permits: Arc::new(Semaphore::new(self.cfg.sync_concurrency.max(1))),
            drain: drain_rx,
            name_sets: Default::default(),
            fanout: self.fanout.clone(),
        });
        let ads = Arc::new(Ads {
            shared,
            max_message: MAX_MESSAGE_SIZE,
        });
        let tls = self.cfg.tls.map(|tls| {
            let mut tls = (*tls).clone();
            tls.alpn_protocols = vec![b"h2".to_vec()];
            TlsAcceptor::from(Arc::new(tls))
        });
        info!(%addr, tls = tls.is_some(), "xDS server listening");
        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);
        let deadlines = self.fanout.clone().enforce_deadline();
        tokio::pin!(deadlines);
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                () = &mut deadlines => {}
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        let serving = connection(tcp, tls.clone(), ads.clone());
                        connections.spawn(serving.instrument(info_span!("xds_conn", %peer)));
                    }
                    // A connection reset before it was accepted, or out of descriptors for a moment.
                    Err(e) => {
                        warn!(error = %e, "xDS server: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(done) = connections.join_next(), if !connections.is_empty() => {
                    if let Err(e) = done
                        && e.is_panic()
                    {
                        warn!(error = %e, "xDS connection task panicked");
                    }
                }
            }
        }
        drop(listener);
        info!(streams = self.registry.len(), "xDS server draining");
        // Streams end and connections send GOAWAY: Envoy reconnects, to another replica if there is one.
        let _ = drain_tx.send(true);
        let drained = tokio::time::timeout(DRAIN_GRACE, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(
                streams = self.registry.len(),
                connections = connections.len(),
                "xDS connections still open after the drain grace period: closing them"
            );
        }
        // Dropping the set aborts what is left.
        Ok(())
    }
}

/// Serves one accepted connection: socket options, the TLS handshake if configured, then HTTP/2.
async fn connection(tcp: TcpStream, tls: Option<TlsAcceptor>, ads: Arc<Ads>) {
    // Without TCP_NODELAY, Nagle's algorithm holds back a small response written while an earlier one is
    // unacknowledged (CDS then EDS then RDS in one push) until the client's delayed ACK: tens of
    // milliseconds per push.
    if let Err(e) = tcp.set_nodelay(true) {
        debug!(error = %e, "cannot set TCP_NODELAY");
    }
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    if let Err(e) = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive) {
        debug!(error = %e, "cannot set TCP keepalive");
    }
    match tls {
        None => http2::serve(tcp, ads).await,
        // Boxed: a connection's task is as large as its largest state, and the TLS one (rustls inline)
        // would make every plaintext connection pay for it.
        Some(acceptor) => Box::pin(serve_tls(tcp, acceptor, ads)).await,
    }
}

async fn serve_tls(tcp: TcpStream, acceptor: TlsAcceptor, ads: Arc<Ads>) {
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => http2::serve(stream, ads).await,
        Ok(Err(e)) => debug!(error = %e, "TLS handshake failed"),
        Err(_) => debug!("TLS handshake timed out"),
    }
}
