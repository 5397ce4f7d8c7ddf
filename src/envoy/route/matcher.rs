//! `HTTPMatchRequest` → Envoy `RouteMatch`, and whether a match applies to this proxy and port at all (`port`,
//! `sourceLabels`, `sourceNamespace` and match-level `gateways` select, they are not request conditions).

use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, QueryParameterMatcher, RouteMatch, header_matcher::HeaderMatchSpecifier,
    query_parameter_matcher::QueryParameterMatchSpecifier, route_match::PathSpecifier,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    RegexMatcher, StringMatcher, string_matcher::MatchPattern,
};

use super::{Ctx, bool_value};
use crate::config::istio::common::StringMatch;
use crate::config::istio::networking::HttpMatchRequest;
use crate::model::proxy::gateway_ref_matches;

/// Whether `m` applies to the proxy and listener port of `ctx`. `vs_ns` is the namespace of the VirtualService
/// (short gateway names resolve there).
pub fn applies(ctx: &Ctx<'_, '_>, m: &HttpMatchRequest, vs_ns: &str) -> bool {
    if let Some(port) = m.port
        && port != u32::from(ctx.port)
    {
        return false;
    }
    if !m
        .source_labels
        .iter()
        .all(|(k, v)| ctx.scope.labels.get(k) == Some(v))
    {
        return false;
    }
    if let Some(ns) = &m.source_namespace
        && ns != ctx.scope.namespace()
    {
        return false;
    }
    if !m.gateways.is_empty() {
        let bound = match ctx.gateway {
            None => m.gateways.iter().any(|g| g == "mesh"),
            Some((gw_ns, gw_name)) => m
                .gateways
                .iter()
                .any(|g| gateway_ref_matches(g, vs_ns, gw_ns, gw_name)),
        };
        if !bound {
            return false;
        }
    }
    true
}

/// The Envoy match for one Istio match (`None`: everything, prefix `/`).
pub fn route_match(m: Option<&HttpMatchRequest>) -> RouteMatch {
    let mut out = RouteMatch {
        path_specifier: Some(PathSpecifier::Prefix("/".into())),
        ..Default::default()
    };
    let Some(m) = m else {
        return out;
    };
    if let Some(uri) = &m.uri {
        out.path_specifier = Some(if let Some(e) = &uri.exact {
            PathSpecifier::Path(e.clone())
        } else if let Some(p) = &uri.prefix {
            PathSpecifier::Prefix(p.clone())
        } else if let Some(r) = &uri.regex {
            PathSpecifier::SafeRegex(regex(r))
        } else {
            PathSpecifier::Prefix("/".into())
        });
    }
    if m.ignore_uri_case == Some(true) {
        out.case_sensitive = bool_value(false);
    }
    for (name, sm) in [
        (":scheme", &m.scheme),
        (":method", &m.method),
        (":authority", &m.authority),
    ] {
        if let Some(sm) = sm {
            out.headers.push(header(name, sm, false));
        }
    }
    for (name, sm) in &m.headers {
        out.headers
            .push(header(&name.to_ascii_lowercase(), sm, false));
    }
    for (name, sm) in &m.without_headers {
        out.headers
            .push(header(&name.to_ascii_lowercase(), sm, true));
    }
    for (name, sm) in &m.query_params {
        let spec = match string_matcher(sm) {
            Some(s) => QueryParameterMatchSpecifier::StringMatch(s),
            None => QueryParameterMatchSpecifier::PresentMatch(true),
        };
        out.query_parameters.push(QueryParameterMatcher {
            name: name.clone(),
            query_parameter_match_specifier: Some(spec),
        });
    }
    out
}

/// A header condition; an empty match (`{}`) or an empty prefix tests presence. `invert` negates it
/// (`withoutHeaders`).
fn header(name: &str, sm: &StringMatch, invert: bool) -> HeaderMatcher {
    let spec = match string_matcher(sm) {
        Some(s) => HeaderMatchSpecifier::StringMatch(s),
        None => HeaderMatchSpecifier::PresentMatch(true),
    };
    HeaderMatcher {
        name: name.to_string(),
        invert_match: invert,
        header_match_specifier: Some(spec),
        ..Default::default()
    }
}

/// Istio `StringMatch` → Envoy `StringMatcher`; `None` for an empty match (presence).
pub fn string_matcher(sm: &StringMatch) -> Option<StringMatcher> {
    let pattern = if let Some(e) = &sm.exact {
        MatchPattern::Exact(e.clone())
    } else if let Some(p) = sm.prefix.as_ref().filter(|p| !p.is_empty()) {
        MatchPattern::Prefix(p.clone())
    } else if let Some(r) = &sm.regex {
        MatchPattern::SafeRegex(regex(r))
    } else {
        return None;
    };
    Some(StringMatcher {
        match_pattern: Some(pattern),
        ignore_case: false,
    })
}

/// An RE2 matcher (Envoy's default engine).
pub fn regex(r: &str) -> RegexMatcher {
    RegexMatcher {
        regex: r.to_string(),
        engine_type: None,
    }
}
