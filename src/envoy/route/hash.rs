//! Route hash policies for DestinationRule `consistentHash` load balancing (the cluster side sets the ring-hash or
//! Maglev policy; the key to hash on is chosen per route). Written here because `cluster.rs` does not export a
//! helper yet.

use envoy_types::pb::envoy::config::route::v3::route_action::{
    HashPolicy,
    hash_policy::{
        ConnectionProperties, Cookie, CookieAttribute, Header, PolicySpecifier, QueryParameter,
    },
};

use super::pb_duration;
use crate::config::istio::networking::{ConsistentHashLb, TrafficPolicy};
use crate::model::proxy::ProxyScope;

/// The hash policy for traffic to `hostname` (a service of `service_ns`) on `port`, subset `subset`: the subset's
/// policy wins over the port-level one, which wins over the host-level one, as for clusters.
pub fn hash_policy_for(
    scope: &ProxyScope<'_>,
    hostname: &str,
    service_ns: &str,
    port: u16,
    subset: &str,
) -> Option<HashPolicy> {
    let dr = scope.destination_rule(hostname, service_ns)?;
    let from_policy = |p: &TrafficPolicy| -> Option<ConsistentHashLb> {
        let port_level = p
            .port_level_settings
            .iter()
            .find(|s| s.port.is_some_and(|sel| sel.number == u32::from(port)))
            .and_then(|s| s.load_balancer.as_ref());
        match port_level {
            // A port-level load balancer replaces the host-level one entirely.
            Some(lb) => lb.consistent_hash.clone(),
            None => p.load_balancer.as_ref()?.consistent_hash.clone(),
        }
    };
    let subset_policy = (!subset.is_empty())
        .then(|| dr.spec.subsets.iter().find(|s| s.name == subset))
        .flatten()
        .and_then(|s| s.traffic_policy.as_ref());
    let hash = match subset_policy {
        Some(p) if p.load_balancer.is_some() || !p.port_level_settings.is_empty() => from_policy(p),
        _ => dr.spec.traffic_policy.as_ref().and_then(from_policy),
    }?;
    to_hash_policy(&hash)
}

/// The Envoy hash key of a `consistentHash` setting (`None` when it names no key, e.g. only ring parameters).
pub fn to_hash_policy(hash: &ConsistentHashLb) -> Option<HashPolicy> {
    let spec = if let Some(h) = &hash.http_header_name {
        PolicySpecifier::Header(Header {
            header_name: h.clone(),
            regex_rewrite: None,
        })
    } else if let Some(c) = &hash.http_cookie {
        PolicySpecifier::Cookie(Cookie {
            name: c.name.clone(),
            ttl: c.ttl.map(|t| pb_duration(t.get())),
            path: c.path.clone().unwrap_or_default(),
            attributes: c
                .attributes
                .iter()
                .map(|a| CookieAttribute {
                    name: a.name.clone(),
                    value: a.value.clone().unwrap_or_default(),
                })
                .collect(),
        })
    } else if hash.use_source_ip == Some(true) {
        PolicySpecifier::ConnectionProperties(ConnectionProperties { source_ip: true })
    } else if let Some(q) = &hash.http_query_parameter_name {
        PolicySpecifier::QueryParameter(QueryParameter { name: q.clone() })
    } else {
        return None;
    };
    Some(HashPolicy {
        terminal: false,
        policy_specifier: Some(spec),
    })
}
