//! VirtualService TCP and TLS routes as filter chains: each applicable match becomes a chain (destination subnets
//! → `prefix_ranges`, source subnet → `source_prefix_ranges`, SNI hosts → `server_names`) whose tcp_proxy sends
//! to the route's weighted destinations. Shared by sidecar outbound listeners and gateway listeners.

use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, FilterChainMatch};

use super::filters::{WeightedCluster, config_ref, istio_config_metadata, tcp_proxy_filter};
use crate::config::istio::networking::{RouteDestination, VirtualServiceSpec};
use crate::envoy::names::ClusterName;
use crate::model::proxy::{Istio, ProxyScope, binds_mesh, gateway_ref_matches, resolve_host};

/// Which gateway the chains are built for: rule-level `gateways` lists are checked against it.
#[derive(Debug, Clone, Copy)]
pub enum Binding<'a> {
    /// A sidecar (the `mesh` gateway).
    Mesh,
    /// The Gateway `namespace/name`.
    Gateway { namespace: &'a str, name: &'a str },
}

/// The attributes one TCP or TLS match contributes; both route kinds reduce to this.
struct MatchAttrs<'m> {
    port: Option<u32>,
    destination_subnets: &'m [String],
    source_subnet: Option<&'m str>,
    source_labels: &'m std::collections::BTreeMap<String, String>,
    gateways: &'m [String],
    source_namespace: Option<&'m str>,
    sni_hosts: &'m [String],
}

/// Filter chains from the `tcp` rules of `vs` for a listener on `port`. Rules apply in order; a rule without
/// matches (or a match without subnets) catches everything, so later rules are unreachable and dropped.
pub fn tcp_route_chains(
    scope: &ProxyScope<'_>,
    vs: &Istio<VirtualServiceSpec>,
    port: u16,
    binding: Binding<'_>,
) -> Vec<FilterChain> {
    let mut chains = Vec::new();
    for (i, rule) in vs.spec.tcp.iter().enumerate() {
        let matches: Vec<MatchAttrs<'_>> = rule
            .r#match
            .iter()
            .map(|m| MatchAttrs {
                port: m.port,
                destination_subnets: &m.destination_subnets,
                source_subnet: m.source_subnet.as_deref(),
                source_labels: &m.source_labels,
                gateways: &m.gateways,
                source_namespace: m.source_namespace.as_deref(),
                sni_hosts: &[],
            })
            .collect();
        if rule_chains(
            scope,
            vs,
            ("tcp", i),
            &matches,
            &rule.route,
            port,
            binding,
            &[],
            &mut chains,
        ) {
            break;
        }
    }
    chains
}

/// Filter chains from the `tls` rules of `vs` for a listener on `port`, matched by SNI. A match without
/// `sniHosts` uses `default_sni` (the service or server hosts).
pub fn tls_route_chains(
    scope: &ProxyScope<'_>,
    vs: &Istio<VirtualServiceSpec>,
    port: u16,
    binding: Binding<'_>,
    default_sni: &[String],
) -> Vec<FilterChain> {
    let mut chains = Vec::new();
    for (i, rule) in vs.spec.tls.iter().enumerate() {
        let matches: Vec<MatchAttrs<'_>> = rule
            .r#match
            .iter()
            .map(|m| MatchAttrs {
                port: m.port,
                destination_subnets: &m.destination_subnets,
                source_subnet: None,
                source_labels: &m.source_labels,
                gateways: &m.gateways,
                source_namespace: m.source_namespace.as_deref(),
                sni_hosts: &m.sni_hosts,
            })
            .collect();
        rule_chains(
            scope,
            vs,
            ("tls", i),
            &matches,
            &rule.route,
            port,
            binding,
            default_sni,
            &mut chains,
        );
    }
    chains
}

/// Appends the chains of one rule; returns true when the rule caught all traffic (nothing after it matters).
#[allow(clippy::too_many_arguments)]
fn rule_chains(
    scope: &ProxyScope<'_>,
    vs: &Istio<VirtualServiceSpec>,
    (kind, rule_index): (&str, usize),
    matches: &[MatchAttrs<'_>],
    route: &[RouteDestination],
    port: u16,
    binding: Binding<'_>,
    default_sni: &[String],
    chains: &mut Vec<FilterChain>,
) -> bool {
    let vs_ns = vs.metadata.namespace.as_deref().unwrap_or_default();
    let vs_name = vs.metadata.name.as_deref().unwrap_or_default();
    let clusters = destinations(scope, vs_ns, route, port);
    let Some(filter) = tcp_proxy_filter(&clusters, &scope.snapshot.mesh) else {
        tracing::warn!(
            "VirtualService {vs_ns}/{vs_name}: {kind}[{rule_index}] has no destination with a positive weight; \
             rule skipped"
        );
        return false;
    };
    let metadata = istio_config_metadata(&[config_ref("virtual-service", vs_ns, vs_name)]);
    let chain = |name: String, filter_chain_match: FilterChainMatch| FilterChain {
        name,
        filter_chain_match: Some(filter_chain_match),
        filters: vec![filter.clone()],
        metadata: metadata.clone(),
        ..Default::default()
    };
    if matches.is_empty() {
        let mut m = FilterChainMatch::default();
        if kind == "tls" {
            m.server_names = server_names(default_sni);
        }
        chains.push(chain(format!("{kind}-{vs_ns}/{vs_name}-{rule_index}"), m));
        // A TLS rule still only catches its SNI hosts; a TCP rule without matches catches all.
        return kind == "tcp";
    }
    let mut caught_all = false;
    for (j, m) in matches.iter().enumerate() {
        if !applies(scope, m, port, binding, vs_ns) {
            continue;
        }
        let Some(prefix_ranges) = cidrs(m.destination_subnets, vs_ns, vs_name) else {
            continue;
        };
        let source_prefix_ranges = match m.source_subnet {
            Some(s) => match cidrs(&[s.to_owned()], vs_ns, vs_name) {
                Some(r) => r,
                None => continue,
            },
            None => Vec::new(),
        };
        let server_names = if kind == "tls" {
            if m.sni_hosts.is_empty() {
                server_names(default_sni)
            } else {
                server_names(m.sni_hosts)
            }
        } else {
            Vec::new()
        };
        caught_all |= kind == "tcp" && prefix_ranges.is_empty() && source_prefix_ranges.is_empty();
        chains.push(chain(
            format!("{kind}-{vs_ns}/{vs_name}-{rule_index}-{j}"),
            FilterChainMatch {
                prefix_ranges,
                source_prefix_ranges,
                server_names,
                ..Default::default()
            },
        ));
    }
    caught_all
}

/// SNI names for a chain match. `*` means any name, which Envoy expresses as no `server_names` at all (it
/// rejects a bare `*`); `*.example.com` suffix wildcards are kept.
fn server_names(hosts: &[String]) -> Vec<String> {
    if hosts.iter().any(|h| h == "*") {
        return Vec::new();
    }
    hosts.to_vec()
}

/// Whether a match applies to this proxy and listener port (port, source labels and namespace, gateways).
fn applies(
    scope: &ProxyScope<'_>,
    m: &MatchAttrs<'_>,
    port: u16,
    binding: Binding<'_>,
    vs_ns: &str,
) -> bool {
    if m.port.is_some_and(|p| p != u32::from(port)) {
        return false;
    }
    if !m
        .source_labels
        .iter()
        .all(|(k, v)| scope.labels.get(k) == Some(v))
    {
        return false;
    }
    if m.source_namespace.is_some_and(|ns| ns != scope.namespace()) {
        return false;
    }
    if m.gateways.is_empty() {
        return true;
    }
    match binding {
        Binding::Mesh => binds_mesh(m.gateways),
        Binding::Gateway { namespace, name } => m
            .gateways
            .iter()
            .any(|g| gateway_ref_matches(g, vs_ns, namespace, name)),
    }
}

/// Parses subnets; `None` (with a warning) when one is not an address or CIDR, so the match is skipped rather
/// than widened.
fn cidrs(subnets: &[String], vs_ns: &str, vs_name: &str) -> Option<Vec<CidrRange>> {
    subnets
        .iter()
        .map(|s| {
            let range = super::filters::cidr_range(s);
            if range.is_none() {
                tracing::warn!(
                    "VirtualService {vs_ns}/{vs_name}: subnet {s:?} is not an IP or CIDR; match skipped"
                );
            }
            range
        })
        .collect()
}

/// The clusters and weights of a TCP/TLS route. A destination without a port uses the service's only port, else
/// the listener's. Unset weights: a single destination takes everything, several share equally when none has a
/// weight (otherwise an unset weight is 0).
pub fn destinations(
    scope: &ProxyScope<'_>,
    vs_ns: &str,
    route: &[RouteDestination],
    listener_port: u16,
) -> Vec<WeightedCluster> {
    let none_weighted = route.iter().all(|d| d.weight.is_none());
    route
        .iter()
        .filter_map(|d| {
            let host = resolve_host(&d.destination.host, vs_ns);
            let port = match &d.destination.port {
                Some(p) => u16::try_from(p.number).ok()?,
                None => scope
                    .service(&host)
                    .filter(|s| s.ports.len() == 1)
                    .map(|s| s.ports[0].port)
                    .unwrap_or(listener_port),
            };
            let weight = match d.weight {
                Some(w) => u32::try_from(w).unwrap_or(0),
                None if none_weighted => 1,
                None => 0,
            };
            let subset = d.destination.subset.as_deref().unwrap_or_default();
            Some(WeightedCluster {
                name: ClusterName::outbound(port, subset, &host).to_string(),
                weight,
            })
        })
        .collect()
}
