//! The debug REST API (istiod's port 15014, and 8080 out of habit): what every proxy was sent, whether it
//! accepted it, and why not; the registry, the config store and the last snapshot's problems; Prometheus metrics.
//!
//! Paths and JSON shapes follow istiod where tools read them (`/debug/syncz` as `istioctl proxy-status` reads it,
//! `/debug/config_dump?proxyID=` shaped like Envoy's admin `/config_dump`, `/debug/adsz`, `/debug/registryz`,
//! `/debug/configz`, `/debug/push_status`). Beyond istiod: `/debug/nackz` (every NACK per resource with Envoy's
//! text and the Istio objects behind the resource) and `/debug/config_status` (which proxies a config object
//! affects and which of them ACKed it).
//!
//! Every handler reads shared state (store, latest snapshot, xDS registry) and computes its answer; nothing here
//! writes to the control plane.

mod config_dump;
pub mod diff;
pub mod metrics;
pub mod protojson;
mod registry_view;
pub mod sync;
mod time;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::store::Store;
use crate::model::builder::Built;
use crate::xds;

/// Errors of the debug server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Binding the listener failed.
    #[error(
        "debug server cannot bind {0}: {1} (is another process using the port? pass --debug-addr)"
    )]
    Bind(SocketAddr, #[source] std::io::Error),
    /// Reading the bound address failed.
    #[error("debug server cannot read its local address: {0}")]
    LocalAddr(#[source] std::io::Error),
    /// The HTTP server stopped with an error.
    #[error("debug server failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// What the handlers read.
pub struct State {
    /// The config store (configz, config_status).
    pub store: Arc<Store>,
    /// The latest snapshot.
    pub snapshots: watch::Receiver<Arc<Built>>,
    /// Connection state of every proxy, when ADS is served.
    pub xds_registry: Option<Arc<xds::Registry>>,
    /// ADS counters, when ADS is served.
    pub xds_metrics: Option<Arc<xds::Metrics>>,
    /// Snapshot build and debounce timings (`pilot_pushcontext_init_seconds`, `pilot_debounce_time`).
    pub build_metrics: Arc<metrics::BuildMetrics>,
}

impl State {
    fn built(&self) -> Arc<Built> {
        self.snapshots.borrow().clone()
    }

    fn connections(&self) -> Vec<xds::ConnectionStatus> {
        self.xds_registry
            .as_ref()
            .map(|r| r.connections())
            .unwrap_or_default()
    }
}

/// The routes of the debug API.
pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_handler))
        .route("/stats/prometheus", get(metrics_handler))
        .route("/debug/syncz", get(syncz))
        .route("/debug/adsz", get(adsz))
        .route("/debug/nackz", get(nackz))
        .route("/debug/config_dump", get(config_dump))
        .route("/debug/config_status", get(config_status))
        .route("/debug/registryz", get(registryz))
        .route("/debug/endpointz", get(endpointz))
        .route("/debug/configz", get(configz))
        .route("/debug/push_status", get(push_status))
        .route("/debug/mesh", get(mesh))
        .with_state(state)
}

/// Binds the debug listener.
pub async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), Error> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Bind(addr, e))?;
    let bound = listener.local_addr().map_err(Error::LocalAddr)?;
    Ok((listener, bound))
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(Error::Serve)
}

/// A JSON error body with a hint, e.g. the known proxies when the asked one is unknown.
fn error(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}

async fn ready(AxState(s): AxState<Arc<State>>) -> Response {
    // The first snapshot is built before the server starts; report its version so probes show progress.
    let v = s.built().snapshot.version;
    (StatusCode::OK, format!("ready (snapshot {v})\n")).into_response()
}

async fn metrics_handler(AxState(s): AxState<Arc<State>>) -> Response {
    let body = metrics::render(&s);
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn syncz(AxState(s): AxState<Arc<State>>) -> Response {
    axum::Json(sync::syncz(&s.connections())).into_response()
}

async fn adsz(AxState(s): AxState<Arc<State>>) -> Response {
    axum::Json(sync::adsz(&s.connections())).into_response()
}

async fn nackz(AxState(s): AxState<Arc<State>>) -> Response {
    let rejected = s.store.problems();
    axum::Json(sync::nackz(&s.connections(), &rejected)).into_response()
}

/// `?proxyID=<pod>.<ns>[&types=cds,eds,lds,rds,sds]`.
#[derive(Debug, Deserialize)]
struct DumpQuery {
    #[serde(rename = "proxyID")]
    proxy_id: Option<String>,
    types: Option<String>,
}

async fn config_dump(AxState(s): AxState<Arc<State>>, Query(q): Query<DumpQuery>) -> Response {
    let conns = s.connections();
    let Some(proxy) = q.proxy_id else {
        return error(
            StatusCode::BAD_REQUEST,
            serde_json::json!({
                "error": "missing ?proxyID=<pod>.<namespace>",
                "known_proxies": sync::known_proxies(&conns),
            }),
        );
    };
    let Some(conn) = sync::find_connection(&conns, &proxy) else {
        return unknown_proxy(&proxy, &conns);
    };
    let types = match config_dump::parse_types(q.types.as_deref()) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, serde_json::json!({"error": e})),
    };
    axum::Json(config_dump::dump(&conn, &types)).into_response()
}

fn unknown_proxy(proxy: &str, conns: &[xds::ConnectionStatus]) -> Response {
    error(
        StatusCode::NOT_FOUND,
        serde_json::json!({
            "error": format!("proxy {proxy:?} is not connected"),
            "known_proxies": sync::known_proxies(conns),
        }),
    )
}

/// `?kind=VirtualService&namespace=shop&name=reviews`.
#[derive(Debug, Deserialize)]
struct ConfigQuery {
    kind: String,
    #[serde(default)]
    namespace: String,
    name: String,
}

async fn config_status(AxState(s): AxState<Arc<State>>, Query(q): Query<ConfigQuery>) -> Response {
    let conns = s.connections();
    let store = s.store.clone();
    // Rebuilds two snapshots and generates for every proxy: keep it off the async workers.
    let res = tokio::task::spawn_blocking(move || {
        sync::config_status(&store, &conns, &q.kind, &q.namespace, &q.name)
    })
    .await;
    match res {
        Ok(Ok(status)) => axum::Json(status).into_response(),
        Ok(Err(e)) => error(StatusCode::NOT_FOUND, serde_json::json!({"error": e})),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({"error": e.to_string()}),
        ),
    }
}

async fn registryz(AxState(s): AxState<Arc<State>>) -> Response {
    axum::Json(registry_view::registryz(&s.built().snapshot)).into_response()
}

async fn endpointz(AxState(s): AxState<Arc<State>>) -> Response {
    axum::Json(registry_view::endpointz(&s.built().snapshot)).into_response()
}

async fn configz(AxState(s): AxState<Arc<State>>) -> Response {
    axum::Json(registry_view::configz(&s.store)).into_response()
}

async fn push_status(AxState(s): AxState<Arc<State>>) -> Response {
    axum::Json(registry_view::push_status(&s.built(), &s.store)).into_response()
}

async fn mesh(AxState(s): AxState<Arc<State>>) -> Response {
    axum::Json(s.built().snapshot.mesh.as_ref().clone()).into_response()
}
