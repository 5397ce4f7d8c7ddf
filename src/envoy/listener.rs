//! LDS: the listeners of a proxy, with istiod's names and shapes.
//!
//! Sidecar (iptables sends outbound connections to 15001 and inbound ones to 15006):
//! ```text
//!  virtualOutbound 0.0.0.0:15001  use_original_dst ──▶ 0.0.0.0_<port>  HTTP → RDS "<port>"        (not bound)
//!        │ no listener for the destination            <vip>_<port>    TCP/TLS → tcp_proxy         (not bound)
//!        └▶ default chain: PassthroughCluster (ALLOW_ANY) | BlackHoleCluster (REGISTRY_ONLY)
//!  virtualInbound  0.0.0.0:15006  original_dst ──▶ chain per workload port → inbound|<port>||
//!                                                  default chain → InboundPassthroughCluster
//! ```
//! Gateway (router): one bound listener `0.0.0.0_<port>` per Gateway server port (RDS `http.<port>` for HTTP).
//!
//! Chains shaped by a VirtualService, and listeners shaped by a Gateway or Sidecar, carry
//! `filter_metadata.istio.config` back-references so a NACK can be blamed on the object.

mod filters;
mod gateway;
mod inbound;
mod l4;
mod mtls;
mod outbound;
#[cfg(test)]
mod tests;

use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address, socket_address};
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener};

use crate::model::proxy::{ProxyKind, ProxyScope};

pub use filters::{CORS_FILTER, FAULT_FILTER, ROUTER_FILTER};
pub use outbound::lists_endpoints;

/// Every listener of the proxy, sorted by name.
pub fn listeners(scope: &ProxyScope<'_>) -> Vec<Listener> {
    let mut out = match scope.meta.kind {
        ProxyKind::Sidecar => {
            let mut out = vec![
                outbound::virtual_outbound(scope),
                inbound::virtual_inbound(scope),
            ];
            out.extend(outbound::outbound_listeners(scope));
            out
        }
        ProxyKind::Router => gateway::gateway_listeners(scope),
    };
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// A listener named `name` on `ip:port` (TCP), everything else default.
fn listener_at(name: &str, ip: &str, port: u16) -> Listener {
    Listener {
        name: name.to_owned(),
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: ip.to_owned(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
                ..Default::default()
            })),
        }),
        ..Default::default()
    }
}

/// Adds a chain unless another chain of the listener already has the same match: Envoy rejects the whole
/// listener for duplicate matches, so the first claim wins and the other is logged (`owner` names it).
fn push_chain(listener: &mut Listener, chain: FilterChain, owner: &str) {
    let same = listener.filter_chains.iter().find(|c| {
        c.filter_chain_match.clone().unwrap_or_default()
            == chain.filter_chain_match.clone().unwrap_or_default()
    });
    if let Some(existing) = same {
        tracing::warn!(
            "listener {}: {owner}: chain {:?} matches the same connections as chain {:?}; skipped",
            listener.name,
            chain.name,
            existing.name
        );
        return;
    }
    listener.filter_chains.push(chain);
}
