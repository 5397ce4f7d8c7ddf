//! Validation rules for security.istio.io and telemetry.istio.io kinds.
//!
//! These follow the checks istiod's validating webhook and the CRDs' CEL rules make, so a file that rudder accepts
//! would also be accepted by the API server of an Istio cluster. Enum values are already checked by decoding.

use std::fmt::Display;
use std::net::IpAddr;

use super::{Report, check_percent, check_port};
use crate::config::istio::common::{PolicyTargetReference, WorkloadSelector};
use crate::config::istio::security::*;
use crate::config::istio::telemetry::*;

pub(super) fn peer_authentication(spec: &PeerAuthenticationSpec, r: &mut Report) {
    if let Some(sel) = &spec.selector {
        selector(sel, r);
    }
    if !spec.port_level_mtls.is_empty()
        && spec
            .selector
            .as_ref()
            .is_none_or(|s| s.match_labels.is_empty())
    {
        r.err(
            "spec.portLevelMtls",
            "requires a selector with matchLabels (port-level mTLS applies to specific workloads)",
        );
    }
    for port in spec.port_level_mtls.keys() {
        if let Err(e) = check_port(*port) {
            r.err(format!("spec.portLevelMtls.{port}"), e);
        }
    }
}

pub(super) fn request_authentication(spec: &RequestAuthenticationSpec, r: &mut Report) {
    targeting(
        spec.selector.as_ref(),
        spec.target_ref.as_ref(),
        &spec.target_refs,
        r,
    );
    for (i, rule) in spec.jwt_rules.iter().enumerate() {
        jwt_rule(rule, &format!("spec.jwtRules[{i}]"), r);
    }
}

fn jwt_rule(rule: &JwtRule, path: &str, r: &mut Report) {
    if rule.issuer.as_deref().unwrap_or_default().is_empty() {
        r.err(format!("{path}.issuer"), "required");
    }
    non_empty_items(&rule.audiences, format!("{path}.audiences"), r);
    let sources = [&rule.jwks, &rule.jwks_uri, &rule.jwks_uri_snake];
    if sources.iter().filter(|s| s.is_some()).count() > 1 {
        r.err(path, "only one of jwks or jwksUri may be set");
    }
    for (field, uri) in [
        ("jwksUri", &rule.jwks_uri),
        ("jwks_uri", &rule.jwks_uri_snake),
    ] {
        if let Some(uri) = uri
            && let Err(e) = check_http_url(uri)
        {
            r.err(format!("{path}.{field}"), e);
        }
    }
    if let Some(jwks) = &rule.jwks
        && let Err(e) = serde_json::from_str::<serde_json::Value>(jwks)
    {
        r.err(
            format!("{path}.jwks"),
            format!("not a JSON Web Key Set: {e}"),
        );
    }
    for (j, h) in rule.from_headers.iter().enumerate() {
        if h.name.as_deref().unwrap_or_default().is_empty() {
            r.err(format!("{path}.fromHeaders[{j}].name"), "required");
        }
    }
    non_empty_items(&rule.from_params, format!("{path}.fromParams"), r);
    non_empty_items(&rule.from_cookies, format!("{path}.fromCookies"), r);
    for (j, c) in rule.output_claim_to_headers.iter().enumerate() {
        let p = format!("{path}.outputClaimToHeaders[{j}]");
        match c.header.as_deref().unwrap_or_default() {
            "" => r.err(format!("{p}.header"), "required"),
            h if !h
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
            {
                r.err(
                    format!("{p}.header"),
                    format!("{h:?} is not a valid header name (letters, digits, '-' and '_')"),
                )
            }
            _ => {}
        }
        if c.claim.as_deref().unwrap_or_default().is_empty() {
            r.err(format!("{p}.claim"), "required");
        }
    }
    if let Some(t) = rule.timeout
        && t.get() < std::time::Duration::from_millis(1)
    {
        r.err(
            format!("{path}.timeout"),
            format!("{t} is too short (at least 1ms)"),
        );
    }
}

pub(super) fn authorization_policy(spec: &AuthorizationPolicySpec, r: &mut Report) {
    targeting(
        spec.selector.as_ref(),
        spec.target_ref.as_ref(),
        &spec.target_refs,
        r,
    );
    let custom = spec.action == Some(AuthorizationAction::Custom);
    match (&spec.provider, custom) {
        (None, true) => r.err("spec.provider", "required when action is CUSTOM"),
        (Some(p), true) if p.name.as_deref().unwrap_or_default().is_empty() => {
            r.err("spec.provider.name", "required")
        }
        (Some(_), false) => r.err("spec.provider", "only allowed when action is CUSTOM"),
        _ => {}
    }
    for (i, rule) in spec.rules.iter().enumerate() {
        let path = format!("spec.rules[{i}]");
        for (j, from) in rule.from.iter().enumerate() {
            let p = format!("{path}.from[{j}].source");
            match &from.source {
                None => r.err(&p, "required"),
                Some(s) => source(s, &p, r),
            }
        }
        for (j, to) in rule.to.iter().enumerate() {
            let p = format!("{path}.to[{j}].operation");
            match &to.operation {
                None => r.err(&p, "required"),
                Some(o) => operation(o, &p, r),
            }
        }
        for (j, cond) in rule.when.iter().enumerate() {
            condition(cond, &format!("{path}.when[{j}]"), r);
        }
    }
}

fn source(s: &Source, path: &str, r: &mut Report) {
    if *s == Source::default() {
        r.err(path, "must set at least one field (an empty source is a mistake: omit `from` to match every source)");
        return;
    }
    let lists: [(&str, &[String]); 14] = [
        ("principals", &s.principals),
        ("notPrincipals", &s.not_principals),
        ("requestPrincipals", &s.request_principals),
        ("notRequestPrincipals", &s.not_request_principals),
        ("namespaces", &s.namespaces),
        ("notNamespaces", &s.not_namespaces),
        ("serviceAccounts", &s.service_accounts),
        ("notServiceAccounts", &s.not_service_accounts),
        ("trustDomains", &s.trust_domains),
        ("notTrustDomains", &s.not_trust_domains),
        ("ipBlocks", &s.ip_blocks),
        ("notIpBlocks", &s.not_ip_blocks),
        ("remoteIpBlocks", &s.remote_ip_blocks),
        ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
    ];
    for (field, values) in lists {
        non_empty_items(values, format!("{path}.{field}"), r);
    }
    for (field, values) in &lists[10..] {
        for (k, v) in values.iter().enumerate() {
            if !v.is_empty()
                && let Err(e) = check_ip_or_cidr(v)
            {
                r.err(format!("{path}.{field}[{k}]"), e);
            }
        }
    }
    for (field, values) in [
        ("serviceAccounts", &s.service_accounts),
        ("notServiceAccounts", &s.not_service_accounts),
    ] {
        if values.len() > MAX_SERVICE_ACCOUNTS {
            r.err(
                format!("{path}.{field}"),
                format!("at most {MAX_SERVICE_ACCOUNTS} service accounts are allowed"),
            );
        }
    }
    let has_sa = !s.service_accounts.is_empty() || !s.not_service_accounts.is_empty();
    let has_other = !s.principals.is_empty()
        || !s.not_principals.is_empty()
        || !s.namespaces.is_empty()
        || !s.not_namespaces.is_empty();
    if has_sa && has_other {
        r.err(
            path,
            "serviceAccounts cannot be combined with principals or namespaces",
        );
    }
}

fn operation(o: &Operation, path: &str, r: &mut Report) {
    if *o == Operation::default() {
        r.err(path, "must set at least one field (an empty operation is a mistake: omit `to` to match every request)");
        return;
    }
    for (field, values) in [
        ("hosts", &o.hosts),
        ("notHosts", &o.not_hosts),
        ("methods", &o.methods),
        ("notMethods", &o.not_methods),
        ("paths", &o.paths),
        ("notPaths", &o.not_paths),
    ] {
        non_empty_items(values, format!("{path}.{field}"), r);
    }
    for (field, values) in [("ports", &o.ports), ("notPorts", &o.not_ports)] {
        for (k, v) in values.iter().enumerate() {
            let p = format!("{path}.{field}[{k}]");
            match v.parse::<i64>() {
                Ok(n) => {
                    if let Err(e) = check_port(n) {
                        r.err(p, e);
                    }
                }
                Err(_) => r.err(p, format!("{v:?} is not a port number")),
            }
        }
    }
    for (field, values) in [("methods", &o.methods), ("notMethods", &o.not_methods)] {
        for (k, m) in values.iter().enumerate() {
            if m.to_ascii_uppercase() != *m {
                r.err(
                    format!("{path}.{field}[{k}]"),
                    format!(
                        "HTTP method {m:?} must be upper-case ({:?})",
                        m.to_ascii_uppercase()
                    ),
                );
            }
        }
    }
    for (field, values) in [("paths", &o.paths), ("notPaths", &o.not_paths)] {
        for (k, p) in values.iter().enumerate() {
            if let Err(e) = check_path_pattern(p) {
                r.err(format!("{path}.{field}[{k}]"), e);
            }
        }
    }
}

/// Attributes AuthorizationPolicy `when[].key` may name (`[...]` ones take a header or claim name).
const CONDITION_KEYS: &[&str] = &[
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "source.serviceAccount",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "destination.ip",
    "destination.port",
    "connection.sni",
];
const CONDITION_KEY_PREFIXES: &[&str] = &[
    "request.headers[",
    "request.auth.claims[",
    "experimental.envoy.filters.",
];

fn condition(c: &Condition, path: &str, r: &mut Report) {
    let key = c.key.as_deref().unwrap_or_default();
    if key.is_empty() {
        r.err(format!("{path}.key"), "required");
    } else {
        let bracketed = CONDITION_KEY_PREFIXES.iter().any(|p| {
            key.strip_prefix(p)
                .is_some_and(|rest| !p.ends_with('[') || (rest.len() > 1 && rest.ends_with(']')))
        });
        if !bracketed && !CONDITION_KEYS.contains(&key) {
            r.err(
                format!("{path}.key"),
                format!("unknown attribute {key:?} (see Istio's authorization condition list, e.g. request.headers[name], source.ip, request.auth.claims[name])"),
            );
        }
    }
    if c.values.is_empty() && c.not_values.is_empty() {
        r.err(path, "one of values or notValues is required");
    }
    for (field, values) in [("values", &c.values), ("notValues", &c.not_values)] {
        for (k, v) in values.iter().enumerate() {
            let p = format!("{path}.{field}[{k}]");
            let checked = match key {
                "source.ip" | "remote.ip" | "destination.ip" => check_ip_or_cidr(v),
                "destination.port" => v
                    .parse::<i64>()
                    .map_err(|_| format!("{v:?} is not a port number"))
                    .and_then(check_port),
                _ => Ok(()),
            };
            if let Err(e) = checked {
                r.err(p, e);
            }
        }
    }
}

pub(super) fn telemetry(spec: &TelemetrySpec, r: &mut Report) {
    targeting(
        spec.selector.as_ref(),
        spec.target_ref.as_ref(),
        &spec.target_refs,
        r,
    );
    for (i, t) in spec.tracing.iter().enumerate() {
        let path = format!("spec.tracing[{i}]");
        providers(&t.providers, &path, r);
        if let Some(p) = t.random_sampling_percentage
            && let Err(e) = check_percent(p)
        {
            r.err(format!("{path}.randomSamplingPercentage"), e);
        }
        for (name, tag) in &t.custom_tags {
            custom_tag(tag, &format!("{path}.customTags.{name}"), r);
        }
    }
    for (i, m) in spec.metrics.iter().enumerate() {
        let path = format!("spec.metrics[{i}]");
        providers(&m.providers, &path, r);
        if let Some(d) = m.reporting_interval
            && d.get() < std::time::Duration::from_millis(1)
        {
            r.err(
                format!("{path}.reportingInterval"),
                format!("{d} is too short (at least 1ms)"),
            );
        }
        for (j, o) in m.overrides.iter().enumerate() {
            let p = format!("{path}.overrides[{j}]");
            if let Some(sel) = &o.match_ {
                if sel.metric.is_some() && sel.custom_metric.is_some() {
                    r.err(
                        format!("{p}.match"),
                        "only one of metric or customMetric may be set",
                    );
                }
                if sel.custom_metric.as_deref() == Some("") {
                    r.err(format!("{p}.match.customMetric"), "must not be empty");
                }
            }
            for (tag, to) in &o.tag_overrides {
                let tp = format!("{p}.tagOverrides.{tag}");
                let has_value = to.value.as_deref().is_some_and(|v| !v.is_empty());
                match to.operation.unwrap_or(TagOperation::Upsert) {
                    TagOperation::Upsert if !has_value => {
                        r.err(format!("{tp}.value"), "required when operation is UPSERT")
                    }
                    TagOperation::Remove if has_value => r.err(
                        format!("{tp}.value"),
                        "must not be set when operation is REMOVE",
                    ),
                    _ => {}
                }
            }
        }
    }
    for (i, a) in spec.access_logging.iter().enumerate() {
        let path = format!("spec.accessLogging[{i}]");
        providers(&a.providers, &path, r);
        let expression = a.filter.as_ref().map(|f| f.expression.as_deref());
        if let Some(expr) = expression
            && expr.unwrap_or_default().trim().is_empty()
        {
            r.err(format!("{path}.filter.expression"), "required");
        }
    }
}

fn providers(list: &[ProviderRef], path: &str, r: &mut Report) {
    for (k, p) in list.iter().enumerate() {
        if p.name.as_deref().unwrap_or_default().is_empty() {
            r.err(format!("{path}.providers[{k}].name"), "required");
        }
    }
}

fn custom_tag(tag: &CustomTag, path: &str, r: &mut Report) {
    let set = [
        tag.literal.is_some(),
        tag.environment.is_some(),
        tag.header.is_some(),
        tag.formatter.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if set != 1 {
        r.err(
            path,
            format!(
                "exactly one of literal, environment, header or formatter must be set (found {set})"
            ),
        );
    }
    for (field, v) in [("literal", &tag.literal), ("formatter", &tag.formatter)] {
        if let Some(v) = v
            && v.value.as_deref().unwrap_or_default().is_empty()
        {
            r.err(format!("{path}.{field}.value"), "required");
        }
    }
    for (field, v) in [("environment", &tag.environment), ("header", &tag.header)] {
        if let Some(v) = v
            && v.name.as_deref().unwrap_or_default().is_empty()
        {
            r.err(format!("{path}.{field}.name"), "required");
        }
    }
}

// ---- helpers shared by the policy kinds ----

/// The CRDs' `maxItems` for `targetRefs` and for `serviceAccounts`/`notServiceAccounts`.
const MAX_TARGET_REFS: usize = 16;
const MAX_SERVICE_ACCOUNTS: usize = 16;

/// `selector`, `targetRef` and `targetRefs` are alternatives; target references must name a kind and an object
/// in the policy's own namespace.
fn targeting(
    sel: Option<&WorkloadSelector>,
    target_ref: Option<&PolicyTargetReference>,
    target_refs: &[PolicyTargetReference],
    r: &mut Report,
) {
    if let Some(sel) = sel {
        selector(sel, r);
    }
    let used = [sel.is_some(), target_ref.is_some(), !target_refs.is_empty()]
        .iter()
        .filter(|b| **b)
        .count();
    if used > 1 {
        let path = if target_ref.is_some() {
            "spec.targetRef"
        } else {
            "spec.targetRefs"
        };
        r.err(
            path,
            "only one of selector, targetRef or targetRefs may be set",
        );
    }
    if target_refs.len() > MAX_TARGET_REFS {
        r.err(
            "spec.targetRefs",
            format!("at most {MAX_TARGET_REFS} target references are allowed"),
        );
    }
    if let Some(t) = target_ref {
        target_reference(t, "spec.targetRef", r);
    }
    for (i, t) in target_refs.iter().enumerate() {
        target_reference(t, &format!("spec.targetRefs[{i}]"), r);
    }
}

fn target_reference(t: &PolicyTargetReference, path: &str, r: &mut Report) {
    if t.kind.is_empty() {
        r.err(format!("{path}.kind"), "required");
    }
    if t.name.is_empty() {
        r.err(format!("{path}.name"), "required");
    }
    // The CRD refuses any namespace here, even the policy's own.
    if !t.namespace.is_empty() {
        r.err(
            format!("{path}.namespace"),
            "cross-namespace references are not supported (leave namespace empty)",
        );
    }
}

fn selector(sel: &WorkloadSelector, r: &mut Report) {
    for (k, v) in &sel.match_labels {
        let path = format!("spec.selector.matchLabels.{k}");
        if k.is_empty() {
            r.err("spec.selector.matchLabels", "label keys must not be empty");
        } else if k.contains('*') {
            r.err(&path, "wildcards are not allowed in label keys");
        }
        if v.contains('*') {
            r.err(&path, "wildcards are not allowed in label values");
        }
    }
}

fn non_empty_items(values: &[String], path: impl Display, r: &mut Report) {
    for (k, v) in values.iter().enumerate() {
        if v.is_empty() {
            r.err(format!("{path}[{k}]"), "must not be empty");
        }
    }
}

/// An address or CIDR block (`10.0.0.1`, `10.0.0.0/16`, `2001:db8::/32`).
pub(super) fn check_ip_or_cidr(s: &str) -> Result<(), String> {
    if s.parse::<IpAddr>().is_ok() || s.parse::<ipnet::IpNet>().is_ok() {
        Ok(())
    } else {
        Err(format!("{s:?} is not an IP address or CIDR block"))
    }
}

/// An absolute `http://` or `https://` URL with a host.
pub(super) fn check_http_url(s: &str) -> Result<(), String> {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"));
    match rest {
        Some(rest) if !rest.is_empty() && !rest.starts_with('/') && !rest.contains(' ') => Ok(()),
        _ => Err(format!("{s:?} is not an http:// or https:// URL")),
    }
}

/// Authorization path patterns: `*` alone, as a prefix (`*/x`) or suffix (`/x/*`), or whole `{*}`/`{**}` segments.
fn check_path_pattern(p: &str) -> Result<(), String> {
    if p.contains('{') {
        for seg in p.split('/') {
            if seg.contains(['{', '}', '*']) && seg != "{*}" && seg != "{**}" {
                return Err(format!(
                    "path {p:?}: a template segment must be exactly {{*}} or {{**}}"
                ));
            }
        }
        return Ok(());
    }
    let inner = p.strip_prefix('*').unwrap_or(p);
    let inner = inner.strip_suffix('*').unwrap_or(inner);
    if inner.contains('*') {
        return Err(format!(
            "path {p:?}: \"*\" is only allowed alone, at the start or at the end"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
