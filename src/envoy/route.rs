//! RDS: route configurations for sidecar HTTP ports (`"<port>"`) and gateway HTTP servers (`http.<port>`), from
//! services, VirtualServices and SMI TrafficSplits.
//!
//! ```text
//!  services ─┐                                     ┌─ sidecar: one RouteConfiguration per outbound HTTP port,
//!  VirtualServices ─▶ virtual_service (merge,  ──▶ │  one vhost per service (+ VS-only hosts, allow_any/block_all)
//!  TrafficSplits ─┘    delegate, conflicts)        └─ gateway: `http.<port>` per server port, vhosts per host
//!                            │
//!                            ▼
//!                 http: rules → Envoy routes (matcher, action, policy, hash)
//! ```
//!
//! HTTP filters referenced by `typed_per_filter_config` (the listener's HCM chain must contain them):
//! [`FAULT_FILTER`], [`CORS_FILTER`], then [`ROUTER_FILTER`].

mod action;
mod domains;
mod gateway;
mod hash;
mod http;
mod matcher;
mod policy;
mod sidecar;
mod traffic_split;
mod virtual_service;

#[cfg(test)]
mod tests;

use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::google::protobuf::{Any, BoolValue};
use prost::Name;

use crate::model::proxy::{ProxyKind, ProxyScope};

pub use virtual_service::{Conflict, virtual_service_conflicts};

/// HTTP fault injection filter; routes carry its per-route `HTTPFault`.
pub const FAULT_FILTER: &str = "envoy.filters.http.fault";
/// CORS filter; routes carry its per-route `CorsPolicy`.
pub const CORS_FILTER: &str = "envoy.filters.http.cors";
/// The terminal router filter.
pub const ROUTER_FILTER: &str = "envoy.filters.http.router";

/// Every route configuration the proxy can see (the server filters by subscription), sorted by name.
pub fn route_configs(scope: &ProxyScope<'_>) -> Vec<RouteConfiguration> {
    let mut out = match scope.meta.kind {
        ProxyKind::Sidecar => sidecar::route_configs(scope),
        ProxyKind::Router => gateway::route_configs(scope),
    };
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Where rules are being translated: the proxy, the listener port, and the gateway (`None` for the sidecar's
/// `mesh` gateway).
#[derive(Clone, Copy)]
pub(crate) struct Ctx<'s, 'a> {
    pub scope: &'s ProxyScope<'a>,
    pub port: u16,
    pub gateway: Option<(&'s str, &'s str)>,
}

/// A typed config packed into `Any`.
pub(crate) fn any<M: Name>(msg: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: msg.encode_to_vec(),
    }
}

pub(crate) fn bool_value(value: bool) -> Option<BoolValue> {
    Some(BoolValue { value })
}

/// A std duration as a protobuf duration.
pub(crate) fn pb_duration(d: std::time::Duration) -> envoy_types::pb::google::protobuf::Duration {
    envoy_types::pb::google::protobuf::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}
