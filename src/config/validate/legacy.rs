//! Validation rules for the book's legacy kinds.
//!
//! Istio 1.3's Galley validated these; its webhook is gone, so the rules here are the ones that kept a
//! misconfigured object from silently doing nothing (missing names, empty role references, empty subjects). Enum
//! values (mTLS mode, RBAC mode, principal binding) are checked when the object is decoded.

use super::{Report, check_port, check_regex};
use crate::config::legacy::*;

use super::security::check_http_url;

pub(super) fn policy(spec: &PolicySpec, r: &mut Report) {
    // Istio 1.3: the mesh-wide policy is the MeshPolicy named `default`; a namespace's `default` Policy applies to
    // the whole namespace and so names no targets.
    let (kind, name) = (r.key().kind, r.key().name.clone());
    if kind == crate::config::Kind::MeshPolicy && name != "default" {
        r.err("metadata.name", "a MeshPolicy must be named \"default\"");
    }
    if kind == crate::config::Kind::Policy && name == "default" && !spec.targets.is_empty() {
        r.err(
            "spec.targets",
            "the namespace-wide Policy \"default\" must not have targets",
        );
    }
    for (i, t) in spec.targets.iter().enumerate() {
        let path = format!("spec.targets[{i}]");
        if t.name.as_deref().unwrap_or_default().is_empty() {
            r.err(format!("{path}.name"), "required");
        }
        for (j, p) in t.ports.iter().enumerate() {
            let pp = format!("{path}.ports[{j}]");
            match (p.number, p.name.as_deref()) {
                (Some(n), None) => {
                    if let Err(e) = check_port(n) {
                        r.err(format!("{pp}.number"), e);
                    }
                }
                (None, Some(name)) if !name.is_empty() => {}
                _ => r.err(pp, "exactly one of number or name must be set"),
            }
        }
    }
    let mut mtls_peers = 0;
    for (i, peer) in spec.peers.iter().enumerate() {
        let path = format!("spec.peers[{i}]");
        if peer.mtls.is_some() && peer.jwt.is_some() {
            r.err(&path, "only one of mtls or jwt may be set");
        }
        if peer.mtls_mode().is_some() {
            mtls_peers += 1;
            if mtls_peers == 2 {
                r.err(&path, "only one mtls peer method is allowed");
            }
        }
        if let Some(jwt) = &peer.jwt {
            legacy_jwt(jwt, &format!("{path}.jwt"), r);
        }
    }
    for (i, origin) in spec.origins.iter().enumerate() {
        let path = format!("spec.origins[{i}].jwt");
        match &origin.jwt {
            None => r.err(path, "required"),
            Some(jwt) => legacy_jwt(jwt, &path, r),
        }
    }
    if spec.principal_binding == Some(PrincipalBinding::UseOrigin) && spec.origins.is_empty() {
        r.err(
            "spec.principalBinding",
            "USE_ORIGIN needs at least one entry in origins",
        );
    }
}

fn legacy_jwt(jwt: &Jwt, path: &str, r: &mut Report) {
    if jwt.issuer.as_deref().unwrap_or_default().is_empty() {
        r.err(format!("{path}.issuer"), "required");
    }
    if let Some(uri) = &jwt.jwks_uri
        && let Err(e) = check_http_url(uri)
    {
        r.err(format!("{path}.jwksUri"), e);
    }
    if jwt.jwks.is_some() && jwt.jwks_uri.is_some() {
        r.err(path, "only one of jwks or jwksUri may be set");
    }
    for (i, rule) in jwt.trigger_rules.iter().enumerate() {
        let p = format!("{path}.triggerRules[{i}]");
        for (field, list) in [
            ("excludedPaths", &rule.excluded_paths),
            ("includedPaths", &rule.included_paths),
        ] {
            for (j, m) in list.iter().enumerate() {
                legacy_string_match(m, &format!("{p}.{field}[{j}]"), r);
            }
        }
    }
}

fn legacy_string_match(m: &LegacyStringMatch, path: &str, r: &mut Report) {
    let set = [&m.exact, &m.prefix, &m.suffix, &m.regex]
        .iter()
        .filter(|v| v.is_some())
        .count();
    if set != 1 {
        r.err(
            path,
            format!("exactly one of exact, prefix, suffix or regex must be set (found {set})"),
        );
    }
    if let Some(re) = &m.regex
        && let Err(e) = check_regex(re)
    {
        r.err(format!("{path}.regex"), e);
    }
}

pub(super) fn rbac_config(spec: &RbacConfigSpec, r: &mut Report) {
    let needs = match spec.mode {
        Some(RbacMode::OnWithInclusion) => Some(("inclusion", &spec.inclusion)),
        Some(RbacMode::OnWithExclusion) => Some(("exclusion", &spec.exclusion)),
        _ => None,
    };
    if let Some((field, target)) = needs {
        let empty = target
            .as_ref()
            .is_none_or(|t| t.services.is_empty() && t.namespaces.is_empty());
        if empty {
            let mode = if field == "inclusion" {
                "ON_WITH_INCLUSION"
            } else {
                "ON_WITH_EXCLUSION"
            };
            r.err(
                format!("spec.{field}"),
                format!("services or namespaces are required when mode is {mode}"),
            );
        }
    }
    for (field, target) in [
        ("inclusion", &spec.inclusion),
        ("exclusion", &spec.exclusion),
    ] {
        if let Some(t) = target {
            non_empty_items(&t.services, &format!("spec.{field}.services"), r);
            non_empty_items(&t.namespaces, &format!("spec.{field}.namespaces"), r);
        }
    }
}

pub(super) fn service_role(spec: &ServiceRoleSpec, r: &mut Report) {
    if spec.rules.is_empty() {
        r.err("spec.rules", "at least one rule is required");
    }
    for (i, rule) in spec.rules.iter().enumerate() {
        let path = format!("spec.rules[{i}]");
        if rule.services.is_empty() {
            r.err(format!("{path}.services"), "required");
        }
        access_rule(rule, &path, r);
    }
}

fn access_rule(rule: &AccessRule, path: &str, r: &mut Report) {
    for (field, list) in [
        ("services", &rule.services),
        ("hosts", &rule.hosts),
        ("notHosts", &rule.not_hosts),
        ("paths", &rule.paths),
        ("notPaths", &rule.not_paths),
        ("methods", &rule.methods),
        ("notMethods", &rule.not_methods),
    ] {
        non_empty_items(list, &format!("{path}.{field}"), r);
    }
    for (field, list) in [("ports", &rule.ports), ("notPorts", &rule.not_ports)] {
        for (k, p) in list.iter().enumerate() {
            if let Err(e) = check_port(*p) {
                r.err(format!("{path}.{field}[{k}]"), e);
            }
        }
    }
    for (k, c) in rule.constraints.iter().enumerate() {
        let p = format!("{path}.constraints[{k}]");
        if c.key.as_deref().unwrap_or_default().is_empty() {
            r.err(format!("{p}.key"), "required");
        }
        if c.values.is_empty() {
            r.err(format!("{p}.values"), "at least one value is required");
        }
    }
}

pub(super) fn service_role_binding(spec: &ServiceRoleBindingSpec, r: &mut Report) {
    if spec.subjects.is_empty() {
        r.err("spec.subjects", "at least one subject is required");
    }
    for (i, s) in spec.subjects.iter().enumerate() {
        if s.is_empty() {
            r.err(
                format!("spec.subjects[{i}]"),
                "empty subject: set user, properties, names, namespaces, groups or ips",
            );
        }
    }
    let given = [
        spec.role_ref.is_some(),
        spec.role.is_some(),
        !spec.actions.is_empty(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    match given {
        0 => r.err("spec.roleRef", "required"),
        1 => {}
        _ => r.err("spec", "only one of roleRef, role or actions may be set"),
    }
    if let Some(role_ref) = &spec.role_ref {
        match role_ref.kind.as_deref().unwrap_or_default() {
            "ServiceRole" => {}
            "" => r.err("spec.roleRef.kind", "required (must be ServiceRole)"),
            other => r.err(
                "spec.roleRef.kind",
                format!("must be ServiceRole (found {other:?})"),
            ),
        }
        if role_ref.name.as_deref().unwrap_or_default().is_empty() {
            r.err("spec.roleRef.name", "required");
        }
    }
    if spec.role.as_deref() == Some("") {
        r.err("spec.role", "must not be empty");
    }
    for (i, rule) in spec.actions.iter().enumerate() {
        access_rule(rule, &format!("spec.actions[{i}]"), r);
    }
}

pub(super) fn handler(spec: &HandlerSpec, r: &mut Report) {
    exactly_one(
        ("compiledAdapter", &spec.compiled_adapter),
        ("adapter", &spec.adapter),
        r,
    );
}

pub(super) fn instance(spec: &InstanceSpec, r: &mut Report) {
    exactly_one(
        ("compiledTemplate", &spec.compiled_template),
        ("template", &spec.template),
        r,
    );
}

/// A Mixer handler names either a built-in adapter or an out-of-process one (and an instance a template).
fn exactly_one(a: (&str, &Option<String>), b: (&str, &Option<String>), r: &mut Report) {
    let set = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
    match (set(a.1), set(b.1)) {
        (false, false) => r.err(format!("spec.{}", a.0), format!("required (or {})", b.0)),
        (true, true) => r.err("spec", format!("only one of {} or {} may be set", a.0, b.0)),
        _ => {}
    }
}

pub(super) fn rule(spec: &RuleSpec, r: &mut Report) {
    if spec.actions.is_empty()
        && spec.request_header_operations.is_empty()
        && spec.response_header_operations.is_empty()
    {
        r.err("spec.actions", "at least one action is required");
    }
    for (i, a) in spec.actions.iter().enumerate() {
        let path = format!("spec.actions[{i}]");
        if a.handler.as_deref().unwrap_or_default().is_empty() {
            r.err(format!("{path}.handler"), "required");
        }
        if a.instances.is_empty() {
            r.err(
                format!("{path}.instances"),
                "at least one instance is required",
            );
        }
        non_empty_items(&a.instances, &format!("{path}.instances"), r);
    }
    for (field, ops) in [
        ("requestHeaderOperations", &spec.request_header_operations),
        ("responseHeaderOperations", &spec.response_header_operations),
    ] {
        for (i, op) in ops.iter().enumerate() {
            if op.name.as_deref().unwrap_or_default().is_empty() {
                r.err(format!("spec.{field}[{i}].name"), "required");
            }
        }
    }
    if let Some(pct) = spec
        .sampling
        .as_ref()
        .and_then(|s| s.random.as_ref())
        .and_then(|r| r.percent_sampled.as_ref())
    {
        let denominator = match pct.denominator.unwrap_or(FractionDenominator::Hundred) {
            FractionDenominator::Hundred => 100,
            FractionDenominator::TenThousand => 10_000,
            FractionDenominator::Million => 1_000_000,
        };
        let numerator = pct.numerator.unwrap_or(0);
        if numerator > denominator {
            r.err(
                "spec.sampling.random.percentSampled.numerator",
                format!("{numerator} is larger than the denominator {denominator}"),
            );
        }
    }
}

pub(super) fn quota_spec(spec: &QuotaSpecSpec, r: &mut Report) {
    for (i, rule) in spec.rules.iter().enumerate() {
        let path = format!("spec.rules[{i}]");
        for (j, m) in rule.match_.iter().enumerate() {
            for (attr, sm) in &m.clause {
                legacy_string_match(sm, &format!("{path}.match[{j}].clause.{attr}"), r);
            }
        }
        for (j, q) in rule.quotas.iter().enumerate() {
            let p = format!("{path}.quotas[{j}]");
            if q.quota.as_deref().unwrap_or_default().is_empty() {
                r.err(format!("{p}.quota"), "required");
            }
            if let Some(c) = q.charge
                && c < 0
            {
                r.err(format!("{p}.charge"), format!("{c} must not be negative"));
            }
        }
    }
}

pub(super) fn quota_spec_binding(spec: &QuotaSpecBindingSpec, r: &mut Report) {
    if spec.quota_specs.is_empty() {
        r.err("spec.quotaSpecs", "at least one QuotaSpec is required");
    }
    for (i, q) in spec.quota_specs.iter().enumerate() {
        if q.name.as_deref().unwrap_or_default().is_empty() {
            r.err(format!("spec.quotaSpecs[{i}].name"), "required");
        }
    }
    if spec.services.is_empty() {
        r.err("spec.services", "at least one service is required");
    }
    for (i, s) in spec.services.iter().enumerate() {
        let named = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
        if !named(&s.name) && !named(&s.service) {
            r.err(format!("spec.services[{i}].name"), "required (or service)");
        }
    }
}

pub(super) fn traffic_split(spec: &TrafficSplitSpec, r: &mut Report) {
    if spec.service.as_deref().unwrap_or_default().is_empty() {
        r.err("spec.service", "required");
    }
    if spec.backends.is_empty() {
        r.err("spec.backends", "at least one backend is required");
    }
    for (i, b) in spec.backends.iter().enumerate() {
        let path = format!("spec.backends[{i}]");
        if b.service.as_deref().unwrap_or_default().is_empty() {
            r.err(format!("{path}.service"), "required");
        }
        match b.weight {
            None => r.err(format!("{path}.weight"), "required"),
            Some(w) if w.milli < 0 => r.err(
                format!("{path}.weight"),
                format!("{w} must not be negative"),
            ),
            Some(_) => {}
        }
    }
}

fn non_empty_items(values: &[String], path: &str, r: &mut Report) {
    for (k, v) in values.iter().enumerate() {
        if v.is_empty() {
            r.err(format!("{path}[{k}]"), "must not be empty");
        }
    }
}

#[cfg(test)]
mod tests;
