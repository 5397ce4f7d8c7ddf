//! RDS: route configurations for sidecar HTTP ports (`"<port>"`) and gateway HTTP servers (`http.<port>`), from
//! services and VirtualServices.

use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;

use crate::model::proxy::ProxyScope;

/// Every route configuration the proxy can see (the server filters by subscription).
pub fn route_configs(_scope: &ProxyScope<'_>) -> Vec<RouteConfiguration> {
    Vec::new()
}
