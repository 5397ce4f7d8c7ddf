//! Sidecar outbound listeners: `virtualOutbound` (15001, the iptables target that hands each connection to the
//! listener of its original destination) and the per-port listeners it hands off to, none of which bind:
//! `0.0.0.0_<port>` for HTTP ports (routes over RDS `"<port>"`), `<vip>_<port>` for TCP and TLS services, and
//! `0.0.0.0_<port>` for TCP/TLS services without a VIP (matched by SNI or destination subnet).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, FilterChainMatch, Listener};

use super::filters::{
    HcmRole, RouteSource, bool_value, cidr_range, config_ref, destination_port_match, hcm_filter,
    http_connection_manager, istio_config_metadata, tcp_chain, tls_inspector_listener_filter,
};
use super::l4::{Binding, tcp_route_chains, tls_route_chains};
use super::{listener_at, push_chain};
use crate::config::istio::networking::VirtualServiceSpec;
use crate::config::mesh::OutboundMode;
use crate::envoy::names::{
    BLACKHOLE_CLUSTER, ClusterName, PASSTHROUGH_CLUSTER, VIRTUAL_INBOUND_PORT,
    VIRTUAL_OUTBOUND_LISTENER, VIRTUAL_OUTBOUND_PORT, outbound_http_listener,
    outbound_tcp_listener, sidecar_route,
};
use crate::model::proxy::{Istio, ProxyScope, host_match_rank, resolve_host};
use crate::model::service::{Origin, Protocol, Resolution, Service};

/// Name of the catch-all chain of capture and wildcard listeners (istiod's).
pub const PASSTHROUGH_CHAIN: &str = "PassthroughFilterChain";
/// Name of the chain that drops connections addressed to the capture port itself (a loop).
const OUTBOUND_BLACKHOLE_CHAIN: &str = "virtualOutbound-blackhole";

/// The cluster unknown destinations go to: the original destination under ALLOW_ANY, nowhere under
/// REGISTRY_ONLY.
pub fn fallthrough_cluster(scope: &ProxyScope<'_>) -> &'static str {
    match scope.outbound_policy {
        OutboundMode::AllowAny => PASSTHROUGH_CLUSTER,
        OutboundMode::RegistryOnly => BLACKHOLE_CLUSTER,
    }
}

/// The default chain of listeners that see traffic for unknown destinations.
fn fallthrough_chain(scope: &ProxyScope<'_>) -> FilterChain {
    tcp_chain(
        PASSTHROUGH_CHAIN,
        None,
        fallthrough_cluster(scope),
        &scope.snapshot.mesh,
    )
}

/// `virtualOutbound`: 0.0.0.0:15001, bound, `use_original_dst` so Envoy hands each redirected connection to the
/// listener for its original destination (which restores that address itself — Envoy inserts the original_dst
/// listener filter when `use_original_dst` is set, as istiod relies on). What no listener claims falls through
/// to the default chain.
pub fn virtual_outbound(scope: &ProxyScope<'_>) -> Listener {
    let mesh = &scope.snapshot.mesh;
    let mut l = listener_at(VIRTUAL_OUTBOUND_LISTENER, "0.0.0.0", VIRTUAL_OUTBOUND_PORT);
    l.use_original_dst = bool_value(true);
    l.traffic_direction = TrafficDirection::Outbound as i32;
    // A connection whose original destination is 15001 itself would loop through the capture forever.
    l.filter_chains = vec![tcp_chain(
        OUTBOUND_BLACKHOLE_CHAIN,
        Some(destination_port_match(VIRTUAL_OUTBOUND_PORT)),
        BLACKHOLE_CLUSTER,
        mesh,
    )];
    l.default_filter_chain = Some(fallthrough_chain(scope));
    // The Sidecar resource decides visibility and the outbound policy: blame it for this listener.
    if let Some(sidecar) = &scope.sidecar {
        l.metadata = istio_config_metadata(&[config_ref(
            "sidecar",
            sidecar.metadata.namespace.as_deref().unwrap_or_default(),
            sidecar.metadata.name.as_deref().unwrap_or_default(),
        )]);
    }
    l
}

/// The per-port outbound listeners, in no particular order (the caller sorts).
pub fn outbound_listeners(scope: &ProxyScope<'_>) -> Vec<Listener> {
    let services = visible_services(scope);
    let http_ports: BTreeSet<u16> = services
        .iter()
        .flat_map(|s| s.ports.iter())
        .filter(|p| p.protocol.is_http() && !is_capture_port(p.port))
        .map(|p| p.port)
        .collect();

    let mut listeners: Vec<Listener> = http_ports
        .iter()
        .map(|&port| http_listener(scope, port))
        .collect();

    let mesh_vs = scope.mesh_virtual_services();
    // Keyed by listener name so every VIP/port pair and wildcard port gets exactly one listener.
    let mut l4: BTreeMap<String, L4Listener> = BTreeMap::new();
    for svc in &services {
        for p in &svc.ports {
            if p.protocol.is_http() || p.protocol == Protocol::Udp || is_capture_port(p.port) {
                continue;
            }
            add_l4_service(
                scope,
                &mesh_vs,
                &http_ports,
                svc,
                p.port,
                p.protocol,
                &mut l4,
            );
        }
    }
    listeners.extend(l4.into_values().map(|l| l.finish(scope)));
    listeners
}

/// The capture ports are Envoy's own; a service on them would shadow the capture listeners.
fn is_capture_port(port: u16) -> bool {
    port == VIRTUAL_OUTBOUND_PORT || port == VIRTUAL_INBOUND_PORT
}

/// One service per hostname (the scope's choice when a host is declared in several namespaces), by hostname.
fn visible_services(scope: &ProxyScope<'_>) -> Vec<Arc<Service>> {
    let hosts: BTreeSet<&str> = scope
        .services()
        .iter()
        .map(|s| s.hostname.as_str())
        .collect();
    hosts
        .into_iter()
        .filter_map(|h| scope.service(h).cloned())
        .collect()
}

/// `0.0.0.0_<port>`: every HTTP service on the port, routed by Host header over RDS `"<port>"`.
fn http_listener(scope: &ProxyScope<'_>, port: u16) -> Listener {
    let name = outbound_http_listener(port);
    let hcm = http_connection_manager(
        format!("outbound_{name}"),
        RouteSource::Rds(sidecar_route(port)),
        HcmRole::Sidecar,
        &scope.snapshot.mesh,
    );
    let mut l = listener_at(&name, "0.0.0.0", port);
    l.bind_to_port = bool_value(false);
    l.traffic_direction = TrafficDirection::Outbound as i32;
    l.filter_chains = vec![FilterChain {
        filters: vec![hcm_filter(&hcm)],
        ..Default::default()
    }];
    l
}

/// A TCP/TLS listener being assembled from several services.
struct L4Listener {
    listener: Listener,
    /// Bound to 0.0.0.0: destinations no chain claims fall through (passthrough or blackhole).
    wildcard: bool,
}

impl L4Listener {
    fn finish(mut self, scope: &ProxyScope<'_>) -> Listener {
        if self.wildcard {
            self.listener.default_filter_chain = Some(fallthrough_chain(scope));
        }
        if self.listener.filter_chains.iter().any(|c| {
            c.filter_chain_match
                .as_ref()
                .is_some_and(|m| !m.server_names.is_empty())
        }) {
            self.listener.listener_filters = vec![tls_inspector_listener_filter()];
        }
        self.listener
    }
}

/// Whether the service's listeners name its endpoints: a headless service, whose clients DNS hands the pod IPs,
/// so each endpoint gets its own `<ip>_<port>` listener (as in istiod); a wildcard listener would capture the
/// port for every destination in the world.
pub fn lists_endpoints(svc: &Service) -> bool {
    svc.addresses.is_empty()
        && svc.origin == Origin::Kubernetes
        && svc.resolution == Resolution::Passthrough
}

/// Adds the chains of one TCP or TLS service port: to `<vip>_<port>` per VIP, or to the wildcard `0.0.0.0_<port>`
/// (matched by SNI for TLS, by subnet for CIDR addresses) when it has no VIP.
#[allow(clippy::too_many_arguments)]
fn add_l4_service(
    scope: &ProxyScope<'_>,
    mesh_vs: &[Istio<VirtualServiceSpec>],
    http_ports: &BTreeSet<u16>,
    svc: &Service,
    port: u16,
    protocol: Protocol,
    l4: &mut BTreeMap<String, L4Listener>,
) {
    let tls = protocol.is_tls();
    let mut vips = Vec::new();
    let mut subnets = Vec::new();
    for addr in &svc.addresses {
        match addr.parse::<std::net::IpAddr>() {
            Ok(ip) => vips.push(ip.to_string()),
            Err(_) => match cidr_range(addr) {
                Some(range) => subnets.push(range),
                None => tracing::warn!(
                    "Service {}/{}: address {addr:?} is neither an IP nor a CIDR; ignored",
                    svc.namespace,
                    svc.name
                ),
            },
        }
    }
    if lists_endpoints(svc) {
        for ep in scope.snapshot.registry.endpoints(svc, port) {
            if let Ok(ip) = ep.address.parse::<std::net::IpAddr>()
                && !vips.contains(&ip.to_string())
            {
                vips.push(ip.to_string());
            }
        }
        if vips.is_empty() {
            return;
        }
    }
    let chains = |wildcard: bool| -> Vec<FilterChain> {
        let mut chains = route_chains(scope, mesh_vs, svc, port, tls);
        if chains.is_empty() {
            let cluster = ClusterName::outbound(port, "", &svc.hostname).to_string();
            // On a VIP listener the address already identifies the service; on the wildcard listener a TLS
            // service is told apart by SNI.
            let m = (tls && wildcard).then(|| FilterChainMatch {
                server_names: vec![svc.hostname.clone()],
                ..Default::default()
            });
            chains.push(tcp_chain(&cluster, m, &cluster, &scope.snapshot.mesh));
        }
        chains
    };
    for vip in &vips {
        let name = outbound_tcp_listener(vip, port);
        let entry = l4.entry(name.clone()).or_insert_with(|| {
            let mut l = listener_at(&name, vip, port);
            l.bind_to_port = bool_value(false);
            l.traffic_direction = TrafficDirection::Outbound as i32;
            L4Listener {
                listener: l,
                wildcard: false,
            }
        });
        for chain in chains(false) {
            push_chain(&mut entry.listener, chain, &svc.hostname);
        }
    }
    if !vips.is_empty() && subnets.is_empty() {
        return;
    }
    // No VIP (or CIDR addresses): the wildcard listener for the port.
    if http_ports.contains(&port) {
        // istiod resolves this conflict the same way: the HTTP listener owns 0.0.0.0_<port>.
        tracing::warn!(
            "Service {}/{}: {protocol} port {port} has no VIP and port {port} is HTTP for other services; \
             the HTTP listener wins",
            svc.namespace,
            svc.name
        );
        return;
    }
    let name = outbound_http_listener(port);
    let entry = l4.entry(name.clone()).or_insert_with(|| {
        let mut l = listener_at(&name, "0.0.0.0", port);
        l.bind_to_port = bool_value(false);
        l.traffic_direction = TrafficDirection::Outbound as i32;
        L4Listener {
            listener: l,
            wildcard: true,
        }
    });
    for mut chain in chains(true) {
        if !subnets.is_empty() {
            let m = chain
                .filter_chain_match
                .get_or_insert_with(Default::default);
            if m.prefix_ranges.is_empty() {
                m.prefix_ranges = subnets.clone();
            }
        }
        push_chain(&mut entry.listener, chain, &svc.hostname);
    }
}

/// Chains from the most specific mesh VirtualService for the service's host that has rules of the right kind.
fn route_chains(
    scope: &ProxyScope<'_>,
    mesh_vs: &[Istio<VirtualServiceSpec>],
    svc: &Service,
    port: u16,
    tls: bool,
) -> Vec<FilterChain> {
    let best = mesh_vs
        .iter()
        .filter(|vs| {
            if tls {
                !vs.spec.tls.is_empty()
            } else {
                !vs.spec.tcp.is_empty()
            }
        })
        .filter_map(|vs| {
            let ns = vs.metadata.namespace.as_deref().unwrap_or_default();
            vs.spec
                .hosts
                .iter()
                .filter_map(|h| host_match_rank(&resolve_host(h, ns), &svc.hostname))
                .max()
                .map(|rank| (rank, vs))
        })
        // `max_by_key` keeps the last of equals; reverse so the first VirtualService (key order) wins ties.
        .rev()
        .max_by_key(|(rank, _)| *rank)
        .map(|(_, vs)| vs);
    let Some(vs) = best else {
        return Vec::new();
    };
    if tls {
        tls_route_chains(
            scope,
            vs,
            port,
            Binding::Mesh,
            std::slice::from_ref(&svc.hostname),
        )
    } else {
        tcp_route_chains(scope, vs, port, Binding::Mesh)
    }
}
