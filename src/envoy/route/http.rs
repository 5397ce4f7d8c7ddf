//! VirtualService HTTP rules → Envoy routes, and the default route of a service without one.
//!
//! Each applicable match of a rule becomes one route with the rule's action (first match wins in Envoy, so the
//! order of rules and matches is kept). Translation stops after a catch-all route, as istiod does: anything after
//! it is unreachable.

use envoy_types::pb::envoy::config::route::v3::{
    Decorator, Route, RouteAction,
    route::Action,
    route_action::{ClusterSpecifier, HostRewriteSpecifier},
};
use envoy_types::pb::envoy::r#type::matcher::v3::RegexMatchAndSubstitute;

use super::action::{self, Target, Weighted};
use super::hash::hash_policy_for;
use super::matcher::{self, regex};
use super::policy::{self, HeaderOps};
use super::virtual_service::Rule;
use super::{CORS_FILTER, Ctx, FAULT_FILTER, any};
use crate::config::istio::networking::{HttpMatchRequest, HttpRoute};
use crate::envoy::names::ClusterName;

/// The routes of `rules` on the listener port of `ctx`.
pub fn routes(ctx: &Ctx<'_, '_>, rules: &[Rule]) -> Vec<Route> {
    let mut out = Vec::new();
    for rule in rules {
        let http = &rule.http;
        let matches: Vec<Option<&HttpMatchRequest>> = if http.r#match.is_empty() {
            vec![None]
        } else {
            let applicable: Vec<_> = http
                .r#match
                .iter()
                .filter(|m| matcher::applies(ctx, m, &rule.namespace))
                .map(Some)
                .collect();
            if applicable.is_empty() {
                continue;
            }
            applicable
        };
        let Some(base) = rule_route(ctx, rule) else {
            continue;
        };
        for m in matches {
            let mut route = base.clone();
            route.r#match = Some(matcher::route_match(m));
            route.name = route_name(http, m);
            exact_path_rewrite(&mut route, http, m);
            out.push(route);
            if is_catch_all(m) {
                return out;
            }
        }
    }
    out
}

/// `<rule name>.<match name>`, or whichever is set.
fn route_name(http: &HttpRoute, m: Option<&HttpMatchRequest>) -> String {
    match (http.name.as_deref(), m.and_then(|m| m.name.as_deref())) {
        (Some(r), Some(m)) => format!("{r}.{m}"),
        (Some(r), None) => r.to_string(),
        (None, Some(m)) => m.to_string(),
        (None, None) => String::new(),
    }
}

fn is_catch_all(m: Option<&HttpMatchRequest>) -> bool {
    m.is_none_or(|m| {
        super::virtual_service::is_catch_all(&HttpRoute {
            r#match: vec![m.clone()],
            ..Default::default()
        })
    })
}

/// `rewrite.uri` on an exact-path match replaces the whole path (`path_rewrite`), otherwise the matched prefix.
fn exact_path_rewrite(route: &mut Route, http: &HttpRoute, m: Option<&HttpMatchRequest>) {
    let Some(uri) = http.rewrite.as_ref().and_then(|r| r.uri.as_ref()) else {
        return;
    };
    let exact = m
        .and_then(|m| m.uri.as_ref())
        .is_some_and(|u| u.exact.is_some());
    if let Some(Action::Route(a)) = &mut route.action
        && exact
        && a.regex_rewrite.is_none()
    {
        a.prefix_rewrite.clear();
        // `path_rewrite` is a substitution format: a literal `%` must be doubled.
        a.path_rewrite = uri.replace('%', "%%");
    }
}

/// The route for a rule, without its match.
fn rule_route(ctx: &Ctx<'_, '_>, rule: &Rule) -> Option<Route> {
    let http = &rule.http;
    let origin = rule.origin.as_str();
    let req = policy::header_ops(
        http.headers.as_ref().and_then(|h| h.request.as_ref()),
        origin,
    );
    let resp = policy::header_ops(
        http.headers.as_ref().and_then(|h| h.response.as_ref()),
        origin,
    );
    let mut route = Route {
        request_headers_to_add: req.add.clone(),
        request_headers_to_remove: req.remove.clone(),
        response_headers_to_add: resp.add,
        response_headers_to_remove: resp.remove,
        ..Default::default()
    };
    let mut filters = crate::envoy::proto::stable_map([]);
    if let Some(f) = http.fault.as_ref().and_then(|f| policy::fault(f, origin)) {
        filters.insert(FAULT_FILTER.to_string(), any(&f));
    }
    if let Some(c) = &http.cors_policy {
        filters.insert(CORS_FILTER.to_string(), any(&policy::cors(c)));
    }
    route.typed_per_filter_config = filters;

    route.action = Some(if let Some(r) = &http.redirect {
        Action::Redirect(action::redirect(r, origin))
    } else if let Some(d) = &http.direct_response {
        Action::DirectResponse(action::direct_response(d, origin))
    } else if !http.route.is_empty() {
        let a = route_action(ctx, rule, req.host, &mut route)?;
        Action::Route(a)
    } else {
        tracing::warn!(
            "VirtualService {origin}: rule {:?} has no route, redirect or directResponse; skipped",
            http.name.as_deref().unwrap_or_default()
        );
        return None;
    });
    Some(route)
}

fn route_action(
    ctx: &Ctx<'_, '_>,
    rule: &Rule,
    header_host: Option<String>,
    route: &mut Route,
) -> Option<RouteAction> {
    let http = &rule.http;
    let origin = rule.origin.as_str();
    let raw: Vec<u32> = http
        .route
        .iter()
        .map(|d| d.weight.unwrap_or(0).max(0) as u32)
        .collect();
    let weights = action::normalise_weights(&raw);
    let mut dests: Vec<Weighted> = http
        .route
        .iter()
        .zip(weights)
        .filter(|(_, w)| *w > 0)
        .map(|(d, weight)| {
            let h = d.headers.as_ref();
            Weighted {
                target: action::target(ctx, &d.destination, &rule.namespace),
                weight,
                request: policy::header_ops(h.and_then(|h| h.request.as_ref()), origin),
                response: policy::header_ops(h.and_then(|h| h.response.as_ref()), origin),
            }
        })
        .collect();
    if dests.is_empty() {
        tracing::warn!("VirtualService {origin}: every destination has weight 0; rule skipped");
        return None;
    }
    let (timeout, max_stream) = action::timeout(http.timeout.map(|t| t.get()));
    let mut a = RouteAction {
        timeout: Some(timeout),
        max_stream_duration: Some(max_stream),
        retry_policy: action::retry_policy(http.retries.as_ref()),
        ..Default::default()
    };
    let mut host_rewrite = header_host;
    if dests.len() == 1 {
        // A single destination's header operations apply to the whole route.
        let d = dests.remove(0);
        route.request_headers_to_add.extend(d.request.add);
        route.request_headers_to_remove.extend(d.request.remove);
        route.response_headers_to_add.extend(d.response.add);
        route.response_headers_to_remove.extend(d.response.remove);
        host_rewrite = host_rewrite.or(d.request.host);
        a.hash_policy = hash(ctx, &d.target).into_iter().collect();
        a.cluster_specifier = Some(ClusterSpecifier::Cluster(d.target.cluster));
    } else {
        // Envoy hashes once per route: the first destination with a consistent-hash policy decides (istiod).
        a.hash_policy = dests
            .iter()
            .find_map(|d| hash(ctx, &d.target))
            .into_iter()
            .collect();
        a.cluster_specifier = Some(ClusterSpecifier::WeightedClusters(
            action::weighted_clusters(&dests),
        ));
    }
    if let Some(rw) = &http.rewrite {
        if let Some(rx) = &rw.uri_regex_rewrite {
            a.regex_rewrite = Some(RegexMatchAndSubstitute {
                pattern: Some(regex(rx.r#match.as_deref().unwrap_or_default())),
                substitution: rx.rewrite.clone().unwrap_or_default(),
            });
        } else if let Some(uri) = &rw.uri {
            a.prefix_rewrite = uri.clone();
        }
        if let Some(auth) = &rw.authority {
            host_rewrite = Some(auth.clone());
        }
    }
    a.host_rewrite_specifier = host_rewrite.map(HostRewriteSpecifier::HostRewriteLiteral);

    let mut mirrors = Vec::new();
    if let Some(m) = &http.mirror {
        let fraction = match (
            &http.mirror_percentage,
            http.mirror_percent.or(http.mirror_percent_snake),
        ) {
            (Some(p), _) => policy::percent(p),
            (None, Some(i)) => policy::int_percent(i),
            (None, None) => policy::always(),
        };
        if fraction.numerator > 0 {
            mirrors.push((m, fraction));
        }
    }
    for m in &http.mirrors {
        let fraction = m
            .percentage
            .as_ref()
            .map(policy::percent)
            .unwrap_or_else(policy::always);
        if fraction.numerator > 0 {
            mirrors.push((&m.destination, fraction));
        }
    }
    a.request_mirror_policies = mirrors
        .into_iter()
        .map(|(d, f)| action::mirror(action::target(ctx, d, &rule.namespace).cluster, f))
        .collect();
    Some(a)
}

fn hash(
    ctx: &Ctx<'_, '_>,
    t: &Target,
) -> Option<envoy_types::pb::envoy::config::route::v3::route_action::HashPolicy> {
    hash_policy_for(ctx.scope, &t.host, t.port, &t.subset)
}

/// The route for a service without VirtualService: everything to `outbound|<port>||<host>`, Istio's default retry
/// policy, no timeout.
pub fn default_route(ctx: &Ctx<'_, '_>, host: &str) -> Route {
    let cluster = ClusterName::outbound(ctx.port, "", host).to_string();
    let (timeout, max_stream) = action::timeout(None);
    Route {
        name: "default".into(),
        r#match: Some(matcher::route_match(None)),
        decorator: Some(Decorator {
            operation: format!("{host}:{}/*", ctx.port),
            propagate: None,
        }),
        action: Some(Action::Route(RouteAction {
            cluster_specifier: Some(ClusterSpecifier::Cluster(cluster)),
            timeout: Some(timeout),
            max_stream_duration: Some(max_stream),
            retry_policy: Some(action::default_retry_policy()),
            hash_policy: hash_policy_for(ctx.scope, host, ctx.port, "")
                .into_iter()
                .collect(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// A weighted route over several targets (TrafficSplit), with the default retry policy and no timeout.
pub fn weighted_route(name: &str, targets: Vec<(Target, u32)>) -> Route {
    let (timeout, max_stream) = action::timeout(None);
    let dests: Vec<Weighted> = targets
        .into_iter()
        .map(|(target, weight)| Weighted {
            target,
            weight,
            request: HeaderOps::default(),
            response: HeaderOps::default(),
        })
        .collect();
    let spec = match dests.as_slice() {
        [one] => ClusterSpecifier::Cluster(one.target.cluster.clone()),
        _ => ClusterSpecifier::WeightedClusters(action::weighted_clusters(&dests)),
    };
    Route {
        name: name.to_string(),
        r#match: Some(matcher::route_match(None)),
        action: Some(Action::Route(RouteAction {
            cluster_specifier: Some(spec),
            timeout: Some(timeout),
            max_stream_duration: Some(max_stream),
            retry_policy: Some(action::default_retry_policy()),
            ..Default::default()
        })),
        ..Default::default()
    }
}
