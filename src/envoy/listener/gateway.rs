//! Gateway listeners: every server port of the Gateways selecting a router becomes one bound listener
//! `0.0.0.0_<port>`, merged across Gateways. As istiod, the port bound is the target port of the router's own
//! Service on the server port when there is one (`istio-ingressgateway` 80 → 8080 gives `0.0.0.0_8080`). HTTP servers get an HTTP connection manager on RDS `http.<port>`;
//! TLS PASSTHROUGH and TCP servers get chains from the VirtualServices bound to their Gateway. Terminated TLS
//! (SIMPLE, MUTUAL …) needs certificates over SDS and is skipped for now.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener};

use super::filters::{
    HcmRole, RouteSource, config_ref, hcm_filter, http_connection_manager, istio_config_metadata,
    tls_inspector_listener_filter,
};
use super::l4::{Binding, tcp_route_chains, tls_route_chains};
use super::{listener_at, push_chain};
use crate::config::istio::networking::{GatewaySpec, Server, ServerTlsMode};
use crate::envoy::names::{gateway_listener, gateway_route};
use crate::model::proxy::{Istio, ProxyScope};
use crate::model::service::Protocol;

/// How a server port handles connections; servers sharing a port must agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerKind {
    Http,
    TlsPassthrough,
    Tcp,
}

/// One server of one Gateway.
struct GatewayServer<'a> {
    gateway: &'a Istio<GatewaySpec>,
    index: usize,
    server: &'a Server,
    kind: ServerKind,
    /// The server's own port number (what VirtualService matches and default destination ports refer to); the
    /// listener may bind another one (`ProxyScope::gateway_ports`).
    port: u16,
}

impl GatewayServer<'_> {
    fn namespace(&self) -> &str {
        self.gateway
            .metadata
            .namespace
            .as_deref()
            .unwrap_or_default()
    }

    fn name(&self) -> &str {
        self.gateway.metadata.name.as_deref().unwrap_or_default()
    }

    /// The server's hosts without their `namespace/` part (what SNI and Host are matched against).
    fn hosts(&self) -> Vec<String> {
        self.server
            .hosts
            .iter()
            .map(|h| {
                h.split_once('/')
                    .map_or(h.as_str(), |(_, host)| host)
                    .to_owned()
            })
            .collect()
    }
}

/// The gateway listeners of a router proxy.
pub fn gateway_listeners(scope: &ProxyScope<'_>) -> Vec<Listener> {
    let gateways = scope.gateways();
    let mut by_port: BTreeMap<u16, Vec<GatewayServer<'_>>> = BTreeMap::new();
    for gateway in &gateways {
        for (index, server) in gateway.spec.servers.iter().enumerate() {
            if let Some((port, kind)) = classify(gateway, index, server) {
                for bind in scope.gateway_ports(port) {
                    by_port.entry(bind).or_default().push(GatewayServer {
                        gateway,
                        index,
                        server,
                        kind,
                        port,
                    });
                }
            }
        }
    }
    by_port
        .into_iter()
        .filter_map(|(port, servers)| port_listener(scope, port, servers))
        .collect()
}

/// The server's port and kind, or `None` (logged) when this server cannot be served (yet).
fn classify(
    gateway: &Istio<GatewaySpec>,
    index: usize,
    server: &Server,
) -> Option<(u16, ServerKind)> {
    let ns = gateway.metadata.namespace.as_deref().unwrap_or_default();
    let name = gateway.metadata.name.as_deref().unwrap_or_default();
    let port = server.port.as_ref()?;
    let Some(number) = port
        .number
        .and_then(|n| u16::try_from(n).ok())
        .filter(|n| *n > 0)
    else {
        tracing::warn!(
            "Gateway {ns}/{name}: servers[{index}].port.number is missing or out of range; server skipped"
        );
        return None;
    };
    let protocol_name = port.protocol.as_deref().unwrap_or_default();
    let Some(protocol) = Protocol::parse(protocol_name) else {
        tracing::warn!(
            "Gateway {ns}/{name}: servers[{index}].port.protocol {protocol_name:?} is not supported; server skipped"
        );
        return None;
    };
    let kind = if protocol.is_http() {
        ServerKind::Http
    } else if protocol.is_tls() {
        match server.tls.as_ref().and_then(|t| t.mode) {
            Some(ServerTlsMode::Passthrough) => ServerKind::TlsPassthrough,
            mode => {
                tracing::warn!(
                    "Gateway {ns}/{name}: servers[{index}] port {number} {protocol} with TLS mode {mode:?} needs \
                     TLS termination, which rudder does not serve yet; server skipped"
                );
                return None;
            }
        }
    } else if protocol == Protocol::Udp {
        tracing::warn!(
            "Gateway {ns}/{name}: servers[{index}] port {number} is UDP; server skipped"
        );
        return None;
    } else {
        ServerKind::Tcp
    };
    Some((number, kind))
}

/// One listener for every server on `port`. The first server (Gateway key order) decides the port's kind;
/// servers of another kind are skipped, as istiod does on a protocol conflict.
fn port_listener(
    scope: &ProxyScope<'_>,
    port: u16,
    servers: Vec<GatewayServer<'_>>,
) -> Option<Listener> {
    let kind = servers.first()?.kind;
    let (servers, conflicting): (Vec<_>, Vec<_>) =
        servers.into_iter().partition(|s| s.kind == kind);
    for s in conflicting {
        tracing::warn!(
            "Gateway {}/{}: servers[{}] on port {port} is {:?} but the port is already {kind:?}; server skipped",
            s.namespace(),
            s.name(),
            s.index,
            s.kind
        );
    }
    let name = gateway_listener(port);
    let mut l = listener_at(&name, "0.0.0.0", port);
    l.traffic_direction = TrafficDirection::Outbound as i32;
    let mut refs: Vec<String> = servers
        .iter()
        .map(|s| config_ref("gateway", s.namespace(), s.name()))
        .collect();
    refs.dedup();
    l.metadata = istio_config_metadata(&refs);
    match kind {
        ServerKind::Http => {
            let hcm = http_connection_manager(
                format!("outbound_{name}"),
                RouteSource::Rds(gateway_route(port)),
                HcmRole::Gateway,
                &scope.snapshot.mesh,
            );
            l.filter_chains = vec![FilterChain {
                filters: vec![hcm_filter(&hcm)],
                ..Default::default()
            }];
        }
        ServerKind::TlsPassthrough | ServerKind::Tcp => {
            for s in &servers {
                let binding = Binding::Gateway {
                    namespace: s.namespace(),
                    name: s.name(),
                };
                let hosts = s.hosts();
                for vs in scope.gateway_virtual_services(s.namespace(), s.name()) {
                    let chains = if kind == ServerKind::Tcp {
                        tcp_route_chains(scope, &vs, s.port, binding)
                    } else {
                        tls_route_chains(scope, &vs, s.port, binding, &hosts)
                    };
                    for chain in chains {
                        push_chain(&mut l, chain, &name);
                    }
                }
            }
            if l.filter_chains.is_empty() {
                tracing::warn!(
                    "Gateway {}: no VirtualService routes {kind:?} traffic on port {port}; listener {name} skipped",
                    refs.join(", ")
                );
                return None;
            }
            if kind == ServerKind::TlsPassthrough {
                l.listener_filters = vec![tls_inspector_listener_filter()];
            }
        }
    }
    Some(l)
}
