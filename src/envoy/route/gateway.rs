//! Gateway route configurations: `http.<port>` per plain-HTTP listener port of the Gateways selecting the router
//! (the server port, or the target port of the router's own Service on it, as the listener binds).
//!
//! For each server host (`ns/host`, namespace `*` by default, `.` = the Gateway's namespace) and each
//! VirtualService bound to the Gateway whose namespace the server admits, every VS host intersecting the server
//! host (wildcards on both sides; the narrower one names the vhost) becomes vhost `<host>:<port>` with istiod's
//! domains `<host>` and `<host>:*` (`<host>:<port>` for wildcard hosts). A server host no VirtualService covers
//! gets no vhost, so Envoy answers 404. A server with `tls.httpsRedirect` makes its vhosts `require_tls: ALL` (301
//! to https). Destinations resolve in the VirtualService's namespace. TLS-terminating HTTPS servers are not routed
//! here yet.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::route::v3::{
    RouteConfiguration, VirtualHost, virtual_host::TlsRequirementType,
};

use super::virtual_service::{group_by_host, key_of};
use super::{Ctx, bool_value, domains, http};
use crate::config::istio::networking::{GatewaySpec, Server};
use crate::envoy::names::{gateway_route, virtual_host};
use crate::model::proxy::{Istio, ProxyScope, host_match_rank};
use crate::model::service::Protocol;

/// A Gateway server with its own port number.
type ServerAt<'a> = (&'a Istio<GatewaySpec>, &'a Server, u16);

/// Every gateway route configuration of a router.
pub fn route_configs(scope: &ProxyScope<'_>) -> Vec<RouteConfiguration> {
    let mut gateways = scope.gateways();
    gateways.sort_by_key(key_of);
    // Keyed by the port the listener binds (`http.<bound port>`, as istiod); each server keeps its own port for
    // vhost names, domains and VirtualService port matches, which see the port clients addressed.
    let mut by_port: BTreeMap<u16, Vec<ServerAt<'_>>> = BTreeMap::new();
    for gw in &gateways {
        for server in &gw.spec.servers {
            let Some(port) = server.port.as_ref() else {
                continue;
            };
            let protocol = port.protocol.as_deref().and_then(Protocol::parse);
            if !protocol.is_some_and(Protocol::is_http) {
                continue;
            }
            let Some(number) = port.number.and_then(|n| u16::try_from(n).ok()) else {
                tracing::warn!(
                    "Gateway {}: server port {:?} is not a port; skipped",
                    key_of(gw),
                    port.number
                );
                continue;
            };
            for bind in scope.gateway_ports(number) {
                by_port.entry(bind).or_default().push((gw, server, number));
            }
        }
    }
    by_port
        .into_iter()
        .map(|(port, servers)| route_config(scope, port, &servers))
        .collect()
}

fn route_config(
    scope: &ProxyScope<'_>,
    bound_port: u16,
    servers: &[ServerAt<'_>],
) -> RouteConfiguration {
    let mut seen_domains = BTreeSet::new();
    let mut vhosts: BTreeMap<String, VirtualHost> = BTreeMap::new();
    for &(gw, server, port) in servers {
        let gw_ns = gw.metadata.namespace.as_deref().unwrap_or_default();
        let gw_name = gw.metadata.name.as_deref().unwrap_or_default();
        let ctx = Ctx {
            scope,
            port,
            gateway: Some((gw_ns, gw_name)),
        };
        let bound = scope.gateway_virtual_services(gw_ns, gw_name);
        let redirect = server
            .tls
            .as_ref()
            .and_then(|t| t.https_redirect)
            .unwrap_or(false);
        for entry in &server.hosts {
            let (ns_sel, server_host) = entry.split_once('/').unwrap_or(("*", entry.as_str()));
            let admitted: Vec<_> = bound
                .iter()
                .filter(|vs| {
                    let vs_ns = vs.metadata.namespace.as_deref().unwrap_or_default();
                    match ns_sel {
                        "*" => true,
                        "." => vs_ns == gw_ns,
                        other => vs_ns == other,
                    }
                })
                .cloned()
                .collect();
            let (groups, conflicts) = group_by_host(scope.snapshot, &admitted);
            for c in &conflicts {
                tracing::warn!("{c}");
            }
            for g in &groups {
                let Some(host) = intersect(server_host, &g.host) else {
                    continue;
                };
                let name = virtual_host(&host, port);
                if vhosts.contains_key(&name) {
                    tracing::warn!(
                        "Gateway {}: host {host} on port {port} already has a virtual host; VirtualService {} not used for it",
                        key_of(gw),
                        g.sources.join(",")
                    );
                    continue;
                }
                let routes = http::routes(&ctx, &g.rules);
                let mut doms = gateway_domains(&host, port);
                domains::dedupe(&mut doms, &mut seen_domains);
                if routes.is_empty() || doms.is_empty() {
                    continue;
                }
                vhosts.insert(
                    name.clone(),
                    VirtualHost {
                        name,
                        domains: doms,
                        routes,
                        require_tls: if redirect {
                            TlsRequirementType::All as i32
                        } else {
                            TlsRequirementType::None as i32
                        },
                        include_request_attempt_count: true,
                        ..Default::default()
                    },
                );
            }
        }
    }
    RouteConfiguration {
        name: gateway_route(bound_port),
        virtual_hosts: vhosts.into_values().collect(),
        validate_clusters: bool_value(false),
        ..Default::default()
    }
}

/// istiod's gateway vhost domains: the host and `host:*`, so a Host header carrying any port matches (clients
/// reach gateways through load balancers, node ports and port-forwards); a wildcard host keeps `:<port>` instead
/// (Envoy allows one wildcard per domain), and `*` alone already matches everything.
fn gateway_domains(host: &str, port: u16) -> Vec<String> {
    if host == "*" {
        vec![host.to_string()]
    } else if host.starts_with('*') {
        vec![host.to_string(), format!("{host}:{port}")]
    } else {
        vec![host.to_string(), format!("{host}:*")]
    }
}

/// The narrower of two host patterns when they overlap (`*` and `*.example.com` both ways), else `None`.
pub fn intersect(server_host: &str, vs_host: &str) -> Option<String> {
    if host_match_rank(server_host, vs_host).is_some() {
        Some(vs_host.to_string())
    } else if host_match_rank(vs_host, server_host).is_some() {
        Some(server_host.to_string())
    } else {
        None
    }
}
