//! Route hash policies for DestinationRule `consistentHash` load balancing. The cluster generator owns the
//! precedence (subset over port-level over host-level) and the key translation, so the route's hash key always
//! matches the ring-hash/Maglev policy the cluster was built with; this module only adapts it to route actions.

use envoy_types::pb::envoy::config::route::v3::route_action::HashPolicy;

use crate::envoy::cluster::hash_policy_for_destination;
use crate::model::proxy::ProxyScope;

/// The hash policy for traffic to `hostname` on `port`, subset `subset` (empty for none), if consistent hashing
/// applies. Envoy hashes once per route: one policy is enough.
pub fn hash_policy_for(
    scope: &ProxyScope<'_>,
    hostname: &str,
    port: u16,
    subset: &str,
) -> Option<HashPolicy> {
    hash_policy_for_destination(scope, hostname, Some(subset), port)
        .into_iter()
        .next()
}
