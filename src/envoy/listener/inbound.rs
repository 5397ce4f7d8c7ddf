//! `virtualInbound` (0.0.0.0:15006): the iptables target for traffic to the workload. One chain per workload port
//! (matched on the original destination port) to `inbound|<port>||` — an HTTP connection manager with an inline
//! route for HTTP ports, tcp_proxy otherwise — and a catch-all to `InboundPassthroughCluster` for ports nobody
//! declared.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route, route_action,
    route_match,
};

use super::filters::{
    HcmRole, RouteSource, bool_value, destination_port_match, hcm_filter, http_connection_manager,
    original_dst_listener_filter, tcp_chain, zero_duration,
};
use super::listener_at;
use crate::envoy::names::{
    BLACKHOLE_CLUSTER, ClusterName, INBOUND_PASSTHROUGH_CLUSTER, VIRTUAL_INBOUND_LISTENER,
    VIRTUAL_INBOUND_PORT, VIRTUAL_OUTBOUND_PORT,
};
use crate::model::proxy::ProxyScope;
use crate::model::service::{Protocol, TargetPort};
use crate::model::workload::Workload;

/// Chain dropping connections whose original destination is the capture port itself (a loop).
const INBOUND_BLACKHOLE_CHAIN: &str = "virtualInbound-blackhole";
/// Catch-all chain for undeclared ports.
const INBOUND_CATCHALL_CHAIN: &str = "virtualInbound-catchall-tcp";

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
    if let Some(workload) = &scope.workload {
        for (port, protocol) in inbound_ports(scope, workload) {
            chains.push(port_chain(scope, port, protocol));
        }
    }
    l.filter_chains = chains;
    l.default_filter_chain = Some(tcp_chain(
        INBOUND_CATCHALL_CHAIN,
        None,
        INBOUND_PASSTHROUGH_CLUSTER,
        mesh,
    ));
    l
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

/// The chain for one workload port.
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
