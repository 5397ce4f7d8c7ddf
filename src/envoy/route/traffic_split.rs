//! The book's SMI `TrafficSplit` (`split.smi-spec.io`, chapter 9): clients address the root `spec.service`; its
//! traffic is shared among `spec.backends[].service` by relative weight (normalised to 100). Applied only when no
//! VirtualService routes the root host (the caller checks).

use envoy_types::pb::envoy::config::route::v3::Route;

use super::Ctx;
use super::action::{Target, normalise_weights, target};
use super::http::weighted_route;
use super::virtual_service::key_of;
use crate::config::istio::common::PortSelector;
use crate::config::istio::networking::Destination;
use crate::config::{Kind, Object};
use crate::model::proxy::resolve_host;

/// The weighted route splitting traffic for `host`, if a TrafficSplit names it as its root (the first by
/// `namespace/name` wins when several do).
pub fn route_for(ctx: &Ctx<'_, '_>, host: &str) -> Option<Route> {
    let snapshot = ctx.scope.snapshot;
    let mut splits: Vec<_> = snapshot
        .configs(Kind::TrafficSplit)
        .iter()
        .filter_map(|o| match o {
            Object::TrafficSplit(ts) => Some(ts.clone()),
            _ => None,
        })
        .filter(|ts| {
            let ns = ts.metadata.namespace.as_deref().unwrap_or_default();
            ts.spec
                .service
                .as_deref()
                .is_some_and(|s| resolve_host(s, ns) == host)
        })
        .collect();
    splits.sort_by_key(key_of);
    let ts = splits.first()?;
    let origin = key_of(ts);
    let ns = ts.metadata.namespace.as_deref().unwrap_or_default();
    let backends: Vec<(&str, u32)> = ts
        .spec
        .backends
        .iter()
        .filter_map(|b| {
            let svc = b.service.as_deref()?;
            // Relative weights in thousandths; negative ones were rejected by validation.
            let milli = b.weight.map(|w| w.milli).unwrap_or(0).max(0);
            Some((svc, u32::try_from(milli).unwrap_or(u32::MAX)))
        })
        .collect();
    if backends.is_empty() || backends.iter().all(|(_, w)| *w == 0) {
        tracing::warn!("TrafficSplit {origin}: no backend with a positive weight; ignored");
        return None;
    }
    let weights = normalise_weights(&backends.iter().map(|(_, w)| *w).collect::<Vec<_>>());
    let targets: Vec<(Target, u32)> = backends
        .iter()
        .zip(weights)
        .filter(|(_, w)| *w > 0)
        .map(|((svc, _), w)| {
            // Backends serve the root's port when they have it; else their only port (`target` decides).
            let backend_host = resolve_host(svc, ns);
            let same_port = ctx
                .scope
                .service(&backend_host)
                .is_some_and(|s| s.port(ctx.port).is_some());
            let dest = Destination {
                host: (*svc).to_string(),
                subset: None,
                port: same_port.then_some(PortSelector {
                    number: u32::from(ctx.port),
                }),
            };
            (target(ctx, &dest, ns), w)
        })
        .collect();
    Some(weighted_route(&format!("trafficsplit.{origin}"), targets))
}
