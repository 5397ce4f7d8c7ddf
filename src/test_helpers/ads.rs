//! A scriptable fake Envoy: SotW and delta ADS clients over tonic, plus an in-process xDS server on port 0.
//!
//! Every receive is bounded by a timeout and panics with context; [`SotwClient::expect_none`] proves that
//! nothing more came within a short window.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use crate::xds::fanout::{Fanout, Mark};
use crate::xds::{Config, Metrics, PushContext, Registry, Server};

/// How long a receive waits before the test fails.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(10);
/// How long "nothing more came" waits.
pub const QUIET: Duration = Duration::from_millis(300);

/// Requests a fake client may queue: tests send a few at a time.
const REQUEST_QUEUE: usize = 16;

/// A node id for pod `<pod>.<ns>`.
pub fn node_id(pod: &str, ns: &str) -> String {
    format!("sidecar~10.0.0.1~{pod}.{ns}~{ns}.svc.cluster.local")
}

/// An xDS server running in the test's runtime on 127.0.0.1:0.
#[derive(Debug)]
pub struct TestServer {
    /// The bound address.
    pub addr: SocketAddr,
    /// The server's registry.
    pub registry: Arc<Registry>,
    /// The server's metrics.
    pub metrics: Arc<Metrics>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    fanout: Arc<Fanout>,
}

/// A member of a server's fan-outs that never takes a generation: while it lives, a fan-out that starts goes
/// on until its deadline, and connections whose streams have had their push leave their ACKs unread.
#[derive(Debug)]
pub struct StalledStream {
    fanout: Arc<Fanout>,
    mark: Mark,
}

impl Drop for StalledStream {
    fn drop(&mut self) {
        self.fanout.leave(&self.mark);
    }
}

impl TestServer {
    /// Starts a server on `addr` (port 0 for any) fed by `rx`.
    pub async fn start_on(
        addr: SocketAddr,
        rx: watch::Receiver<Option<Arc<PushContext>>>,
        push_concurrency: usize,
    ) -> Self {
        let cfg = Config {
            addr,
            push_concurrency,
            ..Default::default()
        };
        Self::start_with(cfg, rx).await
    }

    /// Starts a server with `cfg` (plaintext) fed by `rx`.
    pub async fn start_with(cfg: Config, rx: watch::Receiver<Option<Arc<PushContext>>>) -> Self {
        let server = Server::new(cfg, rx);
        let (listener, addr) = server.bind().await.expect("bind xDS server");
        let (registry, metrics, fanout) = (server.registry(), server.metrics(), server.fanout());
        let (tx, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .serve(listener, async {
                    let _ = stop.await;
                })
                .await
                .expect("xDS server failed");
        });
        TestServer {
            addr,
            registry,
            metrics,
            shutdown: Some(tx),
            task,
            fanout,
        }
    }

    /// Joins the server's fan-outs with a stream that never takes a generation (see [`StalledStream`]).
    pub fn stall_fanouts(&self) -> StalledStream {
        let mark = Mark::default();
        self.fanout.join(&mark);
        StalledStream {
            fanout: self.fanout.clone(),
            mark,
        }
    }

    /// Starts a server on 127.0.0.1:0.
    pub async fn start(rx: watch::Receiver<Option<Arc<PushContext>>>) -> Self {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), rx, 16).await
    }

    /// Drains and stops the server, waiting for it to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(RECV_TIMEOUT, &mut self.task)
            .await
            .expect("server stops in time")
            .expect("server task");
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An ADS client on one HTTP/2 connection.
pub type AdsClient = AggregatedDiscoveryServiceClient<tonic::transport::Channel>;

/// A connection to the xDS server at `addr` (for [`SotwClient::on`]).
pub async fn connection(addr: SocketAddr) -> AdsClient {
    AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect to xDS server")
        .max_decoding_message_size(64 << 20)
}

fn node(id: &str) -> Node {
    Node {
        id: id.to_owned(),
        cluster: "test".to_owned(),
        ..Default::default()
    }
}

fn nack_status(message: &str) -> Option<RpcStatus> {
    Some(RpcStatus {
        code: 3,
        message: message.to_owned(),
        details: vec![],
    })
}

/// A fake Envoy on a SotW ADS stream.
#[derive(Debug)]
pub struct SotwClient {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
    node: Option<Node>,
}

impl SotwClient {
    /// Opens a stream for `node_id`; the node goes on the first request.
    pub async fn connect(addr: SocketAddr, node_id: &str) -> Self {
        Self::connect_with(addr, Some(node(node_id))).await
    }

    /// Opens a stream whose first request carries `node` (`None` to test the missing-node error).
    pub async fn connect_with(addr: SocketAddr, node: Option<Node>) -> Self {
        Self::open(&mut connection(addr).await, node).await
    }

    /// Opens a stream for `node_id` on `client`'s HTTP/2 connection (several streams can share one, as
    /// gRPC clients do). [`connection`] makes one.
    pub async fn on(client: &mut AdsClient, node_id: &str) -> Self {
        Self::open(client, Some(node(node_id))).await
    }

    async fn open(client: &mut AdsClient, node: Option<Node>) -> Self {
        let (tx, rx) = mpsc::channel(REQUEST_QUEUE);
        let resp = client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await;
        SotwClient {
            tx,
            rx: resp.expect("open SotW stream").into_inner(),
            node,
        }
    }

    /// Sends a raw request (the node is added to the first one).
    pub async fn send(&mut self, mut req: DiscoveryRequest) {
        if let Some(n) = self.node.take() {
            req.node = Some(n);
        }
        self.tx.send(req).await.expect("request stream open");
    }

    /// A request for `names` of `type_url` with the given version and nonce.
    pub async fn request(&mut self, type_url: &str, names: &[&str], version: &str, nonce: &str) {
        self.send(DiscoveryRequest {
            type_url: type_url.to_owned(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            version_info: version.to_owned(),
            response_nonce: nonce.to_owned(),
            ..Default::default()
        })
        .await;
    }

    /// ACKs `resp`, keeping `names` subscribed.
    pub async fn ack(&mut self, resp: &DiscoveryResponse, names: &[&str]) {
        self.request(&resp.type_url, names, &resp.version_info, &resp.nonce)
            .await;
    }

    /// NACKs `resp` with `message`, reporting `previous_version` as the one still applied.
    pub async fn nack(
        &mut self,
        resp: &DiscoveryResponse,
        names: &[&str],
        previous_version: &str,
        message: &str,
    ) {
        self.send(DiscoveryRequest {
            type_url: resp.type_url.clone(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            version_info: previous_version.to_owned(),
            response_nonce: resp.nonce.clone(),
            error_detail: nack_status(message),
            ..Default::default()
        })
        .await;
    }

    /// The next response; panics after [`RECV_TIMEOUT`] or on stream end.
    pub async fn recv(&mut self) -> DiscoveryResponse {
        match tokio::time::timeout(RECV_TIMEOUT, self.rx.message()).await {
            Err(_) => panic!("no SotW response within {RECV_TIMEOUT:?}"),
            Ok(Ok(Some(r))) => r,
            Ok(Ok(None)) => panic!("SotW stream ended"),
            Ok(Err(s)) => panic!("SotW stream failed: {s}"),
        }
    }

    /// The status the stream ends with (panics if a response or nothing comes).
    pub async fn recv_status(&mut self) -> tonic::Status {
        match tokio::time::timeout(RECV_TIMEOUT, self.rx.message()).await {
            Ok(Err(s)) => s,
            other => panic!("expected the stream to fail, got {other:?}"),
        }
    }

    /// `true` if the stream ended cleanly within the timeout.
    pub async fn ended(&mut self) -> bool {
        matches!(
            tokio::time::timeout(RECV_TIMEOUT, self.rx.message()).await,
            Ok(Ok(None)) | Ok(Err(_))
        )
    }

    /// Asserts no response arrives within `wait`.
    pub async fn expect_none(&mut self, wait: Duration) {
        if let Ok(r) = tokio::time::timeout(wait, self.rx.message()).await {
            panic!("expected no SotW response, got {r:?}");
        }
    }
}

/// A fake Envoy on a delta ADS stream.
#[derive(Debug)]
pub struct DeltaClient {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: Streaming<DeltaDiscoveryResponse>,
    node: Option<Node>,
}

impl DeltaClient {
    /// Opens a delta stream for `node_id`.
    pub async fn connect(addr: SocketAddr, node_id: &str) -> Self {
        let (tx, rx) = mpsc::channel(REQUEST_QUEUE);
        let resp = connection(addr)
            .await
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await;
        DeltaClient {
            tx,
            rx: resp.expect("open delta stream").into_inner(),
            node: Some(node(node_id)),
        }
    }

    /// Sends a raw request (the node is added to the first one).
    pub async fn send(&mut self, mut req: DeltaDiscoveryRequest) {
        if let Some(n) = self.node.take() {
            req.node = Some(n);
        }
        self.tx.send(req).await.expect("request stream open");
    }

    /// Subscribes to `names` of `type_url` (empty on a first request: legacy wildcard for CDS/LDS).
    pub async fn subscribe(&mut self, type_url: &str, names: &[&str]) {
        self.subscribe_with(type_url, names, &[]).await;
    }

    /// Subscribes, declaring resource versions kept from an earlier stream.
    pub async fn subscribe_with(
        &mut self,
        type_url: &str,
        names: &[&str],
        initial: &[(&str, &str)],
    ) {
        self.send(DeltaDiscoveryRequest {
            type_url: type_url.to_owned(),
            resource_names_subscribe: names.iter().map(|s| s.to_string()).collect(),
            initial_resource_versions: initial
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>(),
            ..Default::default()
        })
        .await;
    }

    /// Unsubscribes from `names`.
    pub async fn unsubscribe(&mut self, type_url: &str, names: &[&str]) {
        self.send(DeltaDiscoveryRequest {
            type_url: type_url.to_owned(),
            resource_names_unsubscribe: names.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .await;
    }

    /// ACKs `resp`.
    pub async fn ack(&mut self, resp: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            ..Default::default()
        })
        .await;
    }

    /// NACKs `resp` with `message`.
    pub async fn nack(&mut self, resp: &DeltaDiscoveryResponse, message: &str) {
        self.send(DeltaDiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            error_detail: nack_status(message),
            ..Default::default()
        })
        .await;
    }

    /// The next response; panics after [`RECV_TIMEOUT`] or on stream end.
    pub async fn recv(&mut self) -> DeltaDiscoveryResponse {
        self.recv_within(RECV_TIMEOUT).await
    }

    /// The next response; panics after `wait` or on stream end (benchmarks at scale wait longer).
    pub async fn recv_within(&mut self, wait: Duration) -> DeltaDiscoveryResponse {
        match tokio::time::timeout(wait, self.rx.message()).await {
            Err(_) => panic!("no delta response within {wait:?}"),
            Ok(Ok(Some(r))) => r,
            Ok(Ok(None)) => panic!("delta stream ended"),
            Ok(Err(s)) => panic!("delta stream failed: {s}"),
        }
    }

    /// Asserts no response arrives within `wait`.
    pub async fn expect_none(&mut self, wait: Duration) {
        if let Ok(r) = tokio::time::timeout(wait, self.rx.message()).await {
            panic!("expected no delta response, got {r:?}");
        }
    }
}
