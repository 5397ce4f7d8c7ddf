//! `virtualInbound` (0.0.0.0:15006): the iptables target for traffic to the workload. One chain per workload port
//! (matched on the original destination port) to `inbound|<port>||` — an HTTP connection manager with an inline
//! route for HTTP ports, tcp_proxy otherwise — and a catch-all to `InboundPassthroughCluster` for ports nobody
//! declared.
//!
//! Proxies with an identity ([`crate::model::proxy::ProxyMeta::mtls`]) get each port's chains in the shape its
//! peer-authentication mode asks for (see `mtls`): STRICT requires mesh mTLS, PERMISSIVE accepts both, DISABLE
//! stays plaintext. The catch-all follows the workload-wide mode, and ports with their own port-level mode but
//! no service get passthrough chains of that mode. Proxies without identity cannot get certificates, so their
//! inbound stays plaintext whatever the policy says.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::listener::v3::FilterChainMatch;

use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route, route_action,
    route_match,
};

use super::filters::{
    HcmRole, RouteSource, bool_value, destination_port_match, hcm_filter, http_connection_manager,
    original_dst_listener_filter, tcp_chain, tls_inspector_listener_filter, zero_duration,
};
use super::listener_at;
use super::mtls::{self, ISTIO_MTLS_ALPNS, TRANSPORT_TLS};
use crate::envoy::names::{
    BLACKHOLE_CLUSTER, ClusterName, INBOUND_PASSTHROUGH_CLUSTER, VIRTUAL_INBOUND_LISTENER,
    VIRTUAL_INBOUND_PORT, VIRTUAL_OUTBOUND_PORT,
};
use crate::model::peer_auth::{EffectiveMtls, MtlsMode, workload_mtls};
use crate::model::proxy::ProxyScope;
use crate::model::service::{Protocol, TargetPort};
use crate::model::workload::Workload;

/// Chain dropping connections whose original destination is the capture port itself (a loop).
const INBOUND_BLACKHOLE_CHAIN: &str = "virtualInbound-blackhole";
/// Catch-all chain for undeclared ports.
const INBOUND_CATCHALL_CHAIN: &str = "virtualInbound-catchall-tcp";
/// Passthrough chains that follow a peer-authentication mode (mesh mTLS to undeclared ports; port-level
/// modes of ports no service declares): istiod's name for its passthrough chains.
const INBOUND_PASSTHROUGH_CHAIN: &str = VIRTUAL_INBOUND_LISTENER;

/// `virtualInbound`. It carries the original_dst listener filter but, unlike `virtualOutbound`, not
/// `use_original_dst`: handing inbound connections off by destination would deliver them to the outbound
/// `0.0.0.0_<port>` listeners. iptables REDIRECT (not TPROXY) is used, so the listener is not transparent.
pub fn virtual_inbound(scope: &ProxyScope<'_>) -> Listener {
    let mesh = &scope.snapshot.mesh;
    let mut l = listener_at(VIRTUAL_INBOUND_LISTENER, "0.0.0.0", VIRTUAL_INBOUND_PORT);
    l.traffic_direction = TrafficDirection::Inbound as i32;
    l.listener_filters = vec![original_dst_listener_filter()];
    let mut chains = vec![tcp_chain(
        INBOUND_BLACKHOLE_CHAIN,
        Some(destination_port_match(VIRTUAL_INBOUND_PORT)),
        BLACKHOLE_CLUSTER,
        mesh,
    )];
    let policy = peer_policy(scope);
    let mode_of = |port: u16| {
        policy
            .as_ref()
            .map_or(MtlsMode::Disable, |p| p.for_port(port))
    };
    let mut declared = Vec::new();
    if let Some(workload) = &scope.workload {
        for (port, protocol) in inbound_ports(scope, workload) {
            declared.push(port);
            chains.extend(port_chains(scope, port, protocol, mode_of(port)));
        }
    }
    let catchall = tcp_chain(
        INBOUND_CATCHALL_CHAIN,
        None,
        INBOUND_PASSTHROUGH_CLUSTER,
        mesh,
    );
    if let Some(policy) = &policy {
        for (&port, &mode) in &policy.per_port {
            if declared.contains(&port)
                || port == VIRTUAL_INBOUND_PORT
                || port == VIRTUAL_OUTBOUND_PORT
            {
                continue;
            }
            let base = tcp_chain(
                INBOUND_PASSTHROUGH_CHAIN,
                Some(destination_port_match(port)),
                INBOUND_PASSTHROUGH_CLUSTER,
                mesh,
            );
            chains.extend(mtls::chains_for_mode(scope, base, mode, false));
        }
    }
    let mut default_chain = catchall.clone();
    match policy.as_ref().map_or(MtlsMode::Disable, |p| p.mode) {
        // Nothing undeclared gets in without mesh mTLS: the catch-all itself terminates it.
        MtlsMode::Strict => {
            default_chain.transport_socket = Some(mtls::downstream_mtls(scope, false))
        }
        // Mesh clients to undeclared ports: terminate their mTLS and pass the bytes on; the rest as is.
        MtlsMode::Permissive => {
            let mut mesh_chain = catchall;
            mesh_chain.name = INBOUND_PASSTHROUGH_CHAIN.to_string();
            mesh_chain.filter_chain_match = Some(FilterChainMatch {
                transport_protocol: TRANSPORT_TLS.to_string(),
                application_protocols: ISTIO_MTLS_ALPNS.iter().map(|a| a.to_string()).collect(),
                ..Default::default()
            });
            mesh_chain.transport_socket = Some(mtls::downstream_mtls(scope, false));
            chains.push(mesh_chain);
        }
        MtlsMode::Disable => {}
    }
    if mtls::needs_tls_inspector(&chains) {
        l.listener_filters.push(tls_inspector_listener_filter());
        // Server-first protocols send nothing for the inspector to read: go on without it after the timeout.
        l.continue_on_listener_filters_timeout = true;
    }
    l.filter_chains = chains;
    l.default_filter_chain = Some(default_chain);
    l
}

/// The workload's merged peer-authentication policy, or `None` when the proxy has no identity (it cannot get
/// the certificates mTLS needs, so everything stays plaintext).
fn peer_policy(scope: &ProxyScope<'_>) -> Option<EffectiveMtls> {
    if !scope.meta.mtls {
        tracing::debug!(
            "proxy {}.{}: no identity (plaintext xDS); inbound stays plaintext",
            scope.meta.pod,
            scope.meta.namespace
        );
        return None;
    }
    Some(workload_mtls(
        scope.snapshot,
        scope.namespace(),
        &scope.labels,
        scope.workload.as_deref(),
    ))
}

/// The workload's ports and their protocols: target ports of the Services selecting it (their port protocol),
/// then its named container ports (protocol from the name), then every other declared container port (TCP).
pub fn inbound_ports(scope: &ProxyScope<'_>, workload: &Workload) -> BTreeMap<u16, Protocol> {
    let mut ports: BTreeMap<u16, Protocol> = BTreeMap::new();
    let mut note = |port: u16, protocol: Protocol| {
        if port == 0 || port == VIRTUAL_INBOUND_PORT || port == VIRTUAL_OUTBOUND_PORT {
            return;
        }
        let known = ports.entry(port).or_insert(protocol);
        // A declared protocol beats an undeclared one; between two declared ones the first (Service) wins.
        if *known == Protocol::Unsupported {
            *known = protocol;
        }
    };
    for svc in scope.snapshot.registry.services() {
        if svc.namespace != workload.namespace
            || svc.selector.is_empty()
            || !workload.matches(&svc.selector)
        {
            continue;
        }
        for p in &svc.ports {
            let target = match &p.target_port {
                TargetPort::Number(0) => p.port,
                TargetPort::Number(n) => *n,
                TargetPort::Named(name) => match workload.container_ports.get(name) {
                    Some(n) => *n,
                    None => continue,
                },
            };
            note(target, p.protocol);
        }
    }
    for (name, &port) in &workload.container_ports {
        note(port, Protocol::from_port_name(name));
    }
    for &port in &workload.ports {
        note(port, Protocol::Unsupported);
    }
    ports
}

/// The chains for one workload port in `mode`.
fn port_chains(
    scope: &ProxyScope<'_>,
    port: u16,
    protocol: Protocol,
    mode: MtlsMode,
) -> Vec<FilterChain> {
    let http = protocol.is_http();
    mtls::chains_for_mode(scope, port_chain(scope, port, protocol), mode, http)
}

/// The plaintext chain for one workload port.
fn port_chain(scope: &ProxyScope<'_>, port: u16, protocol: Protocol) -> FilterChain {
    let cluster = ClusterName::inbound(port).to_string();
    let name = format!("0.0.0.0_{port}");
    if !protocol.is_http() {
        return tcp_chain(
            &name,
            Some(destination_port_match(port)),
            &cluster,
            &scope.snapshot.mesh,
        );
    }
    let routes = RouteConfiguration {
        name: cluster.clone(),
        virtual_hosts: vec![VirtualHost {
            name: format!("inbound|http|{port}"),
            domains: vec!["*".to_owned()],
            routes: vec![Route {
                name: "default".to_owned(),
                r#match: Some(RouteMatch {
                    path_specifier: Some(route_match::PathSpecifier::Prefix("/".to_owned())),
                    ..Default::default()
                }),
                action: Some(route::Action::Route(RouteAction {
                    cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster)),
                    // The caller's sidecar enforces the route's timeout; inbound waits as long as it takes.
                    timeout: zero_duration(),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        // Inline routes validate their clusters by default, which would reject the whole listener whenever CDS
        // lags behind; istiod turns it off too (a missing cluster answers 503 instead).
        validate_clusters: bool_value(false),
        ..Default::default()
    };
    let hcm = http_connection_manager(
        format!("inbound_0.0.0.0_{port}"),
        RouteSource::Inline(routes),
        HcmRole::Sidecar,
        &scope.snapshot.mesh,
    );
    FilterChain {
        name,
        filter_chain_match: Some(destination_port_match(port)),
        filters: vec![hcm_filter(&hcm)],
        ..Default::default()
    }
}
