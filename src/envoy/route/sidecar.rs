//! Sidecar outbound route configurations: one per HTTP port of the visible services, named `"<port>"`.
//!
//! Each visible service with an HTTP port gets the vhost `<fqdn>:<port>`, routed by the VirtualService for its
//! host, else a TrafficSplit naming it, else the default route. VirtualService hosts that match no service (external
//! names reached through the mesh) get a vhost on every HTTP port, as istiod does. Last comes the catch-all:
//! `allow_any` to `PassthroughCluster` under ALLOW_ANY, `block_all` answering 502 under REGISTRY_ONLY (istiod's
//! `BlackHoleRouteName` vhost).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, Route, RouteAction, RouteConfiguration, VirtualHost,
    route::Action,
    route_action::{ClusterSpecifier, MaxStreamDuration},
};

use super::virtual_service::{self, HostRules};
use super::{Ctx, bool_value, domains, http, matcher, pb_duration, traffic_split};
use crate::config::mesh::OutboundMode;
use crate::envoy::names::{PASSTHROUGH_CLUSTER, sidecar_route, virtual_host};
use crate::model::proxy::{ProxyScope, host_match_rank};
use crate::model::service::Service;

/// istiod's catch-all vhost and route name under ALLOW_ANY.
pub const ALLOW_ANY: &str = "allow_any";
/// istiod's catch-all vhost and route name under REGISTRY_ONLY.
pub const BLOCK_ALL: &str = "block_all";

/// Every sidecar route configuration.
pub fn route_configs(scope: &ProxyScope<'_>) -> Vec<RouteConfiguration> {
    // One service per hostname (the scope prefers the proxy's own namespace), sorted for stable output.
    let mut by_host: BTreeMap<&str, &Arc<Service>> = BTreeMap::new();
    for s in scope.services() {
        if let Some(svc) = scope.service(&s.hostname) {
            by_host.entry(svc.hostname.as_str()).or_insert(svc);
        }
    }
    let ports: BTreeSet<u16> = by_host
        .values()
        .flat_map(|s| {
            s.ports
                .iter()
                .filter(|p| p.protocol.is_http())
                .map(|p| p.port)
        })
        .collect();
    let vss = scope.mesh_virtual_services();
    let (groups, conflicts) = virtual_service::group_by_host(scope.snapshot, &vss);
    for c in &conflicts {
        tracing::warn!("{c}");
    }
    ports
        .into_iter()
        .map(|port| {
            let ctx = Ctx {
                scope,
                port,
                gateway: None,
            };
            route_config(&ctx, &by_host, &groups)
        })
        .collect()
}

fn route_config(
    ctx: &Ctx<'_, '_>,
    by_host: &BTreeMap<&str, &Arc<Service>>,
    groups: &[HostRules],
) -> RouteConfiguration {
    let port = ctx.port;
    let mut seen = BTreeSet::new();
    let mut vhosts = Vec::new();
    let mut add = |name: String, mut doms: Vec<String>, routes: Vec<Route>| {
        let dropped = domains::dedupe(&mut doms, &mut seen);
        if !dropped.is_empty() {
            tracing::warn!(
                "route {port}: virtual host {name}: domains {dropped:?} already used by another host; dropped"
            );
        }
        if doms.is_empty() || routes.is_empty() {
            return;
        }
        vhosts.push(VirtualHost {
            name,
            domains: doms,
            routes,
            include_request_attempt_count: true,
            ..Default::default()
        });
    };
    for (host, svc) in by_host {
        if !svc.port(port).is_some_and(|p| p.protocol.is_http()) {
            continue;
        }
        let (group, conflicts) = virtual_service::best_for(groups, host);
        for c in conflicts {
            tracing::debug!("{c}");
        }
        // A VirtualService with no rule for this port leaves the service on its default route.
        let routes = group
            .map(|g| http::routes(ctx, &g.rules))
            .filter(|r| !r.is_empty())
            .or_else(|| traffic_split::route_for(ctx, host).map(|r| vec![r]))
            .unwrap_or_else(|| vec![http::default_route(ctx, host)]);
        add(
            virtual_host(host, port),
            domains::service_domains(svc, port, ctx.scope.namespace()),
            routes,
        );
    }
    // VirtualService hosts no service answers for: reachable only through these routes (e.g. ALLOW_ANY egress).
    for g in groups {
        let covered = by_host.keys().any(|h| {
            host_match_rank(&g.host, h).is_some() || host_match_rank(h, &g.host).is_some()
        });
        if covered || g.host == "*" {
            continue;
        }
        let routes = http::routes(ctx, &g.rules);
        add(
            virtual_host(&g.host, port),
            domains::with_ports(std::slice::from_ref(&g.host), port),
            routes,
        );
    }
    vhosts.sort_by(|a, b| a.name.cmp(&b.name));
    vhosts.push(catch_all(ctx));
    RouteConfiguration {
        name: sidecar_route(port),
        virtual_hosts: vhosts,
        validate_clusters: bool_value(false),
        ..Default::default()
    }
}

/// `allow_any` (ALLOW_ANY: to the original destination, no timeout) or `block_all` (REGISTRY_ONLY: 502).
fn catch_all(ctx: &Ctx<'_, '_>) -> VirtualHost {
    let (name, action) = match ctx.scope.outbound_policy {
        OutboundMode::AllowAny => {
            let zero = pb_duration(std::time::Duration::ZERO);
            (
                ALLOW_ANY,
                Action::Route(RouteAction {
                    cluster_specifier: Some(ClusterSpecifier::Cluster(PASSTHROUGH_CLUSTER.into())),
                    timeout: Some(zero),
                    max_stream_duration: Some(MaxStreamDuration {
                        max_stream_duration: Some(zero),
                        grpc_timeout_header_max: Some(zero),
                        grpc_timeout_header_offset: None,
                    }),
                    ..Default::default()
                }),
            )
        }
        OutboundMode::RegistryOnly => (
            BLOCK_ALL,
            Action::DirectResponse(DirectResponseAction {
                status: 502,
                ..Default::default()
            }),
        ),
    };
    VirtualHost {
        name: name.into(),
        domains: vec!["*".into()],
        routes: vec![Route {
            name: name.into(),
            r#match: Some(matcher::route_match(None)),
            action: Some(action),
            ..Default::default()
        }],
        include_request_attempt_count: true,
        ..Default::default()
    }
}
