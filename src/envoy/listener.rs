//! LDS: sidecar listeners (virtualOutbound, per-port outbound, virtualInbound) and gateway listeners.

use envoy_types::pb::envoy::config::listener::v3::Listener;

use crate::model::proxy::ProxyScope;

/// Every listener of the proxy.
pub fn listeners(_scope: &ProxyScope<'_>) -> Vec<Listener> {
    Vec::new()
}
