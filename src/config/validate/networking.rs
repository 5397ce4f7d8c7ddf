//! Validation rules for networking.istio.io kinds.
//!
//! The rules follow what istiod's validating webhook and the CRD's own schema (`x-kubernetes-validations`) refuse,
//! so a config rudder accepts is one Istio would accept too. Every problem is reported with its full path; a rule
//! that cannot be checked because a required part is missing reports the missing part and moves on.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::Serialize;

use super::{
    Report, check_host, check_percent, check_port, check_regex, check_string_match, dns1123_label,
    dns1123_subdomain,
};
use crate::config::istio::common::{Duration, Percent, StringMatch};
use crate::config::istio::networking::*;

#[cfg(test)]
mod tests;

/// Protocols a Gateway server port may declare (compared case-insensitively, like istiod).
const GATEWAY_PROTOCOLS: &[&str] = &[
    "HTTP", "HTTPS", "GRPC", "GRPC-WEB", "HTTP2", "MONGO", "TCP", "TLS",
];

/// Protocols a ServiceEntry or Sidecar port may declare: Istio's full protocol list.
const PORT_PROTOCOLS: &[&str] = &[
    "HTTP",
    "HTTPS",
    "GRPC",
    "GRPC-WEB",
    "HTTP2",
    "HTTP_PROXY",
    "MONGO",
    "MYSQL",
    "REDIS",
    "TCP",
    "TLS",
    "UDP",
    "THRIFT",
];

/// Envoy's retry conditions (`x-envoy-retry-on` and `x-envoy-retry-grpc-on`).
const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// gRPC status names accepted by `fault.abort.grpcStatus`.
const GRPC_STATUS: &[&str] = &[
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

const HTTP_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

// ---------------------------------------------------------------------------------------------------------------
// Gateway
// ---------------------------------------------------------------------------------------------------------------

pub(super) fn gateway(spec: &GatewaySpec, r: &mut Report) {
    if spec.servers.is_empty() {
        r.err("spec.servers", "at least one server is required");
    }
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, s) in spec.servers.iter().enumerate() {
        let path = format!("spec.servers[{i}]");
        if let Some(name) = s.name.as_deref().filter(|n| !n.is_empty()) {
            if let Some(first) = names.get(name) {
                r.err(
                    format!("{path}.name"),
                    format!("server name {name:?} is already used by spec.servers[{first}]"),
                );
            } else {
                names.insert(name, i);
            }
        }
        server(s, &path, r);
    }
    selector_labels(&spec.selector, "spec.selector", r);
}

fn server(s: &Server, path: &str, r: &mut Report) {
    if s.hosts.is_empty() {
        r.err(format!("{path}.hosts"), "at least one host is required");
    }
    for (i, h) in s.hosts.iter().enumerate() {
        namespaced_host(h, &format!("{path}.hosts[{i}]"), false, r);
    }
    let mut protocol = None;
    match &s.port {
        None => r.err(format!("{path}.port"), "required"),
        Some(p) => {
            required_port(p.number, &format!("{path}.port.number"), r);
            match p.protocol.as_deref().filter(|p| !p.is_empty()) {
                None => r.err(format!("{path}.port.protocol"), "required"),
                Some(proto) => {
                    let upper = proto.to_ascii_uppercase();
                    if GATEWAY_PROTOCOLS.contains(&upper.as_str()) {
                        protocol = Some(upper);
                    } else {
                        r.err(
                            format!("{path}.port.protocol"),
                            format!(
                                "unsupported protocol {proto:?} (expected one of {})",
                                GATEWAY_PROTOCOLS.join(", ")
                            ),
                        );
                    }
                }
            }
            if p.name.as_deref().unwrap_or_default().is_empty() {
                r.err(format!("{path}.port.name"), "required");
            }
            optional_port(p.target_port, &format!("{path}.port.targetPort"), r);
        }
    }
    if let Some(bind) = &s.bind {
        bind_address(bind, &format!("{path}.bind"), r);
    }
    if let Some(protocol) = &protocol {
        let terminates = protocol == "HTTPS" || protocol == "TLS";
        match &s.tls {
            None if terminates => r.err(
                format!("{path}.tls"),
                format!("required for {protocol} servers (set mode and certificates)"),
            ),
            Some(tls) if !terminates && !only_https_redirect(tls) => r.err(
                format!("{path}.tls"),
                format!(
                    "a {protocol} server may only set tls.httpsRedirect; TLS settings need an HTTPS or TLS port"
                ),
            ),
            _ => {}
        }
    }
    if let Some(tls) = &s.tls {
        server_tls(tls, &format!("{path}.tls"), r);
    }
}

fn only_https_redirect(tls: &ServerTlsSettings) -> bool {
    let only = ServerTlsSettings {
        https_redirect: tls.https_redirect,
        ..ServerTlsSettings::default()
    };
    *tls == only
}

fn server_tls(t: &ServerTlsSettings, path: &str, r: &mut Report) {
    let sources = [
        t.credential_name.is_some(),
        !t.credential_names.is_empty(),
        !t.tls_certificates.is_empty(),
    ];
    let has_credential = sources.iter().any(|s| *s);
    if sources.iter().filter(|s| **s).count() > 1 {
        r.err(
            path,
            "only one of credentialName, credentialNames or tlsCertificates may be set",
        );
    }
    if t.credential_names.len() > 2 {
        r.err(
            format!("{path}.credentialNames"),
            format!(
                "at most 2 credential names (one RSA, one ECDSA) are allowed (found {})",
                t.credential_names.len()
            ),
        );
    }
    if t.tls_certificates.len() > 2 {
        r.err(
            format!("{path}.tlsCertificates"),
            format!(
                "at most 2 certificates (one RSA, one ECDSA) are allowed (found {})",
                t.tls_certificates.len()
            ),
        );
    }
    for (i, c) in t.tls_certificates.iter().enumerate() {
        if c.server_certificate.is_none() {
            r.err(
                format!("{path}.tlsCertificates[{i}].serverCertificate"),
                "required",
            );
        }
        if c.private_key.is_none() {
            r.err(
                format!("{path}.tlsCertificates[{i}].privateKey"),
                "required",
            );
        }
    }
    match t.mode {
        Some(
            mode @ (ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual),
        ) => {
            let mode = enum_name(&mode);
            if !has_credential {
                for (field, value) in [
                    ("serverCertificate", &t.server_certificate),
                    ("privateKey", &t.private_key),
                ] {
                    if value.as_deref().unwrap_or_default().is_empty() {
                        r.err(
                            format!("{path}.{field}"),
                            format!("required for {mode} TLS unless credentialName is set"),
                        );
                    }
                }
            }
            if mode != "SIMPLE"
                && !has_credential
                && t.ca_certificates.as_deref().unwrap_or_default().is_empty()
                && t.ca_cert_credential_name.is_none()
            {
                r.err(
                    format!("{path}.caCertificates"),
                    format!("required for {mode} TLS unless credentialName is set"),
                );
            }
        }
        Some(ServerTlsMode::IstioMutual)
            if (t.server_certificate.is_some()
                || t.private_key.is_some()
                || t.ca_certificates.is_some()
                || has_credential) =>
        {
            r.err(
                    path,
                    "ISTIO_MUTUAL uses the proxy's Istio certificates: serverCertificate, privateKey, caCertificates and credentialName must not be set",
                );
        }
        _ => {}
    }
    if let (Some(min), Some(max)) = (t.min_protocol_version, t.max_protocol_version)
        && min != TlsProtocolVersion::TlsAuto
        && max != TlsProtocolVersion::TlsAuto
        && min > max
    {
        r.err(
            format!("{path}.minProtocolVersion"),
            format!(
                "{} is above maxProtocolVersion {}",
                enum_name(&min),
                enum_name(&max)
            ),
        );
    }
}

// ---------------------------------------------------------------------------------------------------------------
// VirtualService
// ---------------------------------------------------------------------------------------------------------------

pub(super) fn virtual_service(spec: &VirtualServiceSpec, r: &mut Report) {
    let bound_to_mesh = spec.gateways.is_empty() || spec.gateways.iter().any(|g| g == "mesh");
    if spec.hosts.is_empty() {
        r.err("spec.hosts", "at least one host is required");
    }
    for (i, h) in spec.hosts.iter().enumerate() {
        let path = format!("spec.hosts[{i}]");
        if h == "*" && bound_to_mesh {
            r.err(
                path,
                "host \"*\" is only allowed when the VirtualService is bound to gateways (not to mesh)",
            );
        } else if h.parse::<IpAddr>().is_err()
            && let Err(e) = check_host(h, true)
        {
            r.err(path, e);
        }
    }
    for (i, g) in spec.gateways.iter().enumerate() {
        gateway_name(g, &format!("spec.gateways[{i}]"), r);
    }
    export_to(&spec.export_to, "spec.exportTo", r);
    if spec.http.is_empty() && spec.tls.is_empty() && spec.tcp.is_empty() {
        r.err("spec", "at least one http, tls or tcp route is required");
    }
    for (i, route) in spec.http.iter().enumerate() {
        http_route(route, &format!("spec.http[{i}]"), r);
    }
    for (i, route) in spec.tls.iter().enumerate() {
        tls_route(route, &spec.hosts, &format!("spec.tls[{i}]"), r);
    }
    for (i, route) in spec.tcp.iter().enumerate() {
        tcp_route(route, &format!("spec.tcp[{i}]"), r);
    }
}

fn http_route(route: &HttpRoute, path: &str, r: &mut Report) {
    let actions: Vec<&str> = [
        (!route.route.is_empty(), "route"),
        (route.redirect.is_some(), "redirect"),
        (route.direct_response.is_some(), "directResponse"),
        (route.delegate.is_some(), "delegate"),
    ]
    .into_iter()
    .filter_map(|(set, name)| set.then_some(name))
    .collect();
    match actions.len() {
        0 => r.err(
            path,
            "one of route, redirect, directResponse or delegate is required",
        ),
        1 => {}
        _ => r.err(
            path,
            format!(
                "only one of route, redirect, directResponse or delegate may be set (found {})",
                actions.join(" and ")
            ),
        ),
    }
    if route.redirect.is_some() {
        if route.rewrite.is_some() {
            r.err(
                format!("{path}.rewrite"),
                "cannot be used with redirect (a redirect rewrites through its own fields)",
            );
        }
        if route.fault.is_some() {
            r.err(format!("{path}.fault"), "cannot be used with redirect");
        }
    }

    for (i, m) in route.r#match.iter().enumerate() {
        http_match(m, &format!("{path}.match[{i}]"), r);
    }
    for (i, d) in route.route.iter().enumerate() {
        let p = format!("{path}.route[{i}]");
        destination(&d.destination, &format!("{p}.destination"), r);
        if let Some(h) = &d.headers {
            headers(h, &format!("{p}.headers"), r);
        }
    }
    weights(
        route.route.iter().map(|d| d.weight),
        &format!("{path}.route"),
        r,
    );
    if let Some(redirect) = &route.redirect {
        http_redirect(redirect, &format!("{path}.redirect"), r);
    }
    if let Some(dr) = &route.direct_response {
        direct_response(dr, &format!("{path}.directResponse"), r);
    }
    if let Some(d) = &route.delegate {
        match d.name.as_deref().filter(|n| !n.is_empty()) {
            None => r.err(format!("{path}.delegate.name"), "required"),
            Some(n) => {
                if let Err(e) = dns1123_subdomain(n) {
                    r.err(format!("{path}.delegate.name"), e);
                }
            }
        }
        if let Some(ns) = d.namespace.as_deref().filter(|n| !n.is_empty())
            && let Err(e) = dns1123_label(ns)
        {
            r.err(format!("{path}.delegate.namespace"), e);
        }
    }
    if let Some(rw) = &route.rewrite {
        rewrite(rw, &format!("{path}.rewrite"), r);
    }
    min_1ms(route.timeout, &format!("{path}.timeout"), r);
    if let Some(retry) = &route.retries {
        retries(retry, &format!("{path}.retries"), r);
    }
    if let Some(f) = &route.fault {
        fault(f, &format!("{path}.fault"), r);
    }
    mirrors(route, path, r);
    if let Some(cors) = &route.cors_policy {
        cors_policy(cors, &format!("{path}.corsPolicy"), r);
    }
    if let Some(h) = &route.headers {
        headers(h, &format!("{path}.headers"), r);
    }
}

fn http_match(m: &HttpMatchRequest, path: &str, r: &mut Report) {
    for (field, sm) in [
        ("uri", &m.uri),
        ("scheme", &m.scheme),
        ("method", &m.method),
        ("authority", &m.authority),
    ] {
        if let Some(sm) = sm {
            check_string_match(sm, format!("{path}.{field}"), r);
        }
    }
    for (field, map) in [
        ("headers", &m.headers),
        ("withoutHeaders", &m.without_headers),
    ] {
        for (name, sm) in map {
            let p = format!("{path}.{field}.{name}");
            if let Err(e) = header_name(name) {
                r.err(&p, e);
            } else if name.chars().any(|c| c.is_ascii_uppercase()) {
                r.err(
                    &p,
                    format!(
                        "header name {name:?} must be lower-case (use {:?})",
                        name.to_ascii_lowercase()
                    ),
                );
            }
            presence_or_string_match(sm, &p, r);
        }
    }
    for (name, sm) in &m.query_params {
        let p = format!("{path}.queryParams.{name}");
        if name.is_empty() {
            r.err(&p, "query parameter name must not be empty");
        }
        presence_or_string_match(sm, &p, r);
    }
    optional_port(m.port, &format!("{path}.port"), r);
    labels(&m.source_labels, &format!("{path}.sourceLabels"), r);
    for (i, g) in m.gateways.iter().enumerate() {
        gateway_name(g, &format!("{path}.gateways[{i}]"), r);
    }
    source_namespace(m.source_namespace.as_deref(), path, r);
}

/// Header and query-parameter matches: `{}` tests presence, otherwise at most one of exact/prefix/regex.
fn presence_or_string_match(m: &StringMatch, path: &str, r: &mut Report) {
    let set = [m.exact.is_some(), m.prefix.is_some(), m.regex.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if set > 1 {
        r.err(
            path,
            format!("at most one of exact, prefix or regex may be set (found {set})"),
        );
    }
    if let Some(re) = &m.regex
        && let Err(e) = check_regex(re)
    {
        r.err(format!("{path}.regex"), e);
    }
}

fn http_redirect(rd: &HttpRedirect, path: &str, r: &mut Report) {
    if *rd == HttpRedirect::default() {
        r.err(
            path,
            "redirect must set at least one of uri, authority, scheme, port, derivePort, prefixRewrite or redirectCode",
        );
    }
    if rd.uri.is_some() && rd.prefix_rewrite.is_some() {
        r.err(path, "only one of uri or prefixRewrite may be set");
    }
    if rd.port.is_some() && rd.derive_port.is_some() {
        r.err(path, "only one of port or derivePort may be set");
    }
    optional_port(rd.port, &format!("{path}.port"), r);
    if let Some(code) = rd.redirect_code
        && ![301, 302, 303, 307, 308].contains(&code)
    {
        r.err(
            format!("{path}.redirectCode"),
            format!("redirect code must be one of 301, 302, 303, 307 or 308 (found {code})"),
        );
    }
    if let Some(scheme) = &rd.scheme
        && scheme != "http"
        && scheme != "https"
    {
        r.err(
            format!("{path}.scheme"),
            format!("scheme must be http or https (found {scheme:?})"),
        );
    }
}

fn direct_response(dr: &HttpDirectResponse, path: &str, r: &mut Report) {
    match dr.status {
        None => r.err(format!("{path}.status"), "required"),
        Some(s) if !(200..=599).contains(&s) => r.err(
            format!("{path}.status"),
            format!("status must be in the range 200..599 (found {s})"),
        ),
        Some(_) => {}
    }
    if let Some(body) = &dr.body {
        if body.string.is_some() && body.bytes.is_some() {
            r.err(
                format!("{path}.body"),
                "only one of string or bytes may be set",
            );
        }
        if let Some(b) = &body.bytes
            && !is_base64(b)
        {
            r.err(format!("{path}.body.bytes"), "must be base64-encoded");
        }
    }
}

fn rewrite(rw: &HttpRewrite, path: &str, r: &mut Report) {
    if rw.uri.is_none() && rw.authority.is_none() && rw.uri_regex_rewrite.is_none() {
        r.err(
            path,
            "rewrite must set at least one of uri, authority or uriRegexRewrite",
        );
    }
    if rw.uri.is_some() && rw.uri_regex_rewrite.is_some() {
        r.err(path, "only one of uri or uriRegexRewrite may be set");
    }
    if let Some(rr) = &rw.uri_regex_rewrite {
        match &rr.r#match {
            None => r.err(format!("{path}.uriRegexRewrite.match"), "required"),
            Some(re) => {
                if let Err(e) = check_regex(re) {
                    r.err(format!("{path}.uriRegexRewrite.match"), e);
                }
            }
        }
        if rr.rewrite.is_none() {
            r.err(format!("{path}.uriRegexRewrite.rewrite"), "required");
        }
    }
}

fn retries(retry: &HttpRetry, path: &str, r: &mut Report) {
    if let Some(a) = retry.attempts
        && a < 0
    {
        r.err(
            format!("{path}.attempts"),
            format!("attempts must not be negative (found {a})"),
        );
    }
    min_1ms(retry.per_try_timeout, &format!("{path}.perTryTimeout"), r);
    min_1ms(retry.backoff, &format!("{path}.backoff"), r);
    if let Some(on) = &retry.retry_on {
        for cond in on.split(',').map(str::trim) {
            let status = cond.parse::<u16>().is_ok_and(|c| (100..=599).contains(&c));
            if !status && !RETRY_ON.contains(&cond) {
                r.err(
                    format!("{path}.retryOn"),
                    format!(
                        "unknown retry condition {cond:?} (expected Envoy conditions such as 5xx, connect-failure, refused-stream, or an HTTP status code)"
                    ),
                );
            }
        }
    }
}

fn fault(f: &HttpFaultInjection, path: &str, r: &mut Report) {
    if f.delay.is_none() && f.abort.is_none() {
        r.err(path, "fault must set delay, abort or both");
    }
    if let Some(d) = &f.delay {
        let p = format!("{path}.delay");
        match (d.fixed_delay, d.exponential_delay) {
            (None, None) => r.err(format!("{p}.fixedDelay"), "required"),
            (Some(_), Some(_)) => {
                r.err(&p, "only one of fixedDelay or exponentialDelay may be set")
            }
            _ => {}
        }
        min_1ms(d.fixed_delay, &format!("{p}.fixedDelay"), r);
        min_1ms(d.exponential_delay, &format!("{p}.exponentialDelay"), r);
        if let Some(pct) = d.percent
            && let Err(e) = check_percent(f64::from(pct))
        {
            r.err(format!("{p}.percent"), e);
        }
        percentage(d.percentage.as_ref(), &format!("{p}.percentage"), r);
    }
    if let Some(a) = &f.abort {
        let p = format!("{path}.abort");
        let kinds = [
            a.http_status.is_some(),
            a.grpc_status.is_some(),
            a.http2_error.is_some(),
        ];
        match kinds.iter().filter(|k| **k).count() {
            0 => r.err(&p, "one of httpStatus or grpcStatus is required"),
            1 => {}
            _ => r.err(
                &p,
                "only one of httpStatus, grpcStatus or http2Error may be set",
            ),
        }
        if let Some(s) = a.http_status
            && !(200..=599).contains(&s)
        {
            r.err(
                format!("{p}.httpStatus"),
                format!("HTTP status must be in the range 200..599 (found {s})"),
            );
        }
        if let Some(g) = &a.grpc_status {
            let numeric = g.parse::<u8>().is_ok_and(|n| n <= 16);
            if !numeric && !GRPC_STATUS.contains(&g.as_str()) {
                r.err(
                    format!("{p}.grpcStatus"),
                    format!(
                        "unknown gRPC status {g:?} (expected a name such as UNAVAILABLE, or 0..16)"
                    ),
                );
            }
        }
        if a.http2_error.is_some() {
            r.err(
                format!("{p}.http2Error"),
                "HTTP/2 error aborts are not supported; use httpStatus or grpcStatus",
            );
        }
        percentage(a.percentage.as_ref(), &format!("{p}.percentage"), r);
    }
}

fn mirrors(route: &HttpRoute, path: &str, r: &mut Report) {
    if route.mirror.is_some() && !route.mirrors.is_empty() {
        r.err(path, "only one of mirror or mirrors may be set");
    }
    if let Some(m) = &route.mirror {
        destination(m, &format!("{path}.mirror"), r);
    }
    percentage(
        route.mirror_percentage.as_ref(),
        &format!("{path}.mirrorPercentage"),
        r,
    );
    for (field, value) in [
        ("mirrorPercent", route.mirror_percent),
        ("mirror_percent", route.mirror_percent_snake),
    ] {
        if let Some(v) = value
            && let Err(e) = check_percent(f64::from(v))
        {
            r.err(format!("{path}.{field}"), e);
        }
    }
    for (i, m) in route.mirrors.iter().enumerate() {
        let p = format!("{path}.mirrors[{i}]");
        destination(&m.destination, &format!("{p}.destination"), r);
        percentage(m.percentage.as_ref(), &format!("{p}.percentage"), r);
    }
}

fn cors_policy(c: &CorsPolicy, path: &str, r: &mut Report) {
    for (i, m) in c.allow_origins.iter().enumerate() {
        check_string_match(m, format!("{path}.allowOrigins[{i}]"), r);
    }
    for (i, m) in c.allow_methods.iter().enumerate() {
        if m != "*" && !HTTP_METHODS.contains(&m.as_str()) {
            r.err(
                format!("{path}.allowMethods[{i}]"),
                format!(
                    "unknown HTTP method {m:?} (expected one of {})",
                    HTTP_METHODS.join(", ")
                ),
            );
        }
    }
    for (field, list) in [
        ("allowHeaders", &c.allow_headers),
        ("exposeHeaders", &c.expose_headers),
    ] {
        for (i, h) in list.iter().enumerate() {
            if h != "*"
                && let Err(e) = header_name(h)
            {
                r.err(format!("{path}.{field}[{i}]"), e);
            }
        }
    }
    if let Some(age) = c.max_age {
        if age.get().subsec_nanos() != 0 {
            r.err(
                format!("{path}.maxAge"),
                format!("must be a whole number of seconds (found {age})"),
            );
        }
        min_1ms(Some(age), &format!("{path}.maxAge"), r);
    }
}

fn headers(h: &Headers, path: &str, r: &mut Report) {
    for (dir, ops) in [("request", &h.request), ("response", &h.response)] {
        let Some(ops) = ops else { continue };
        let p = format!("{path}.{dir}");
        for (op, names) in [("set", &ops.set), ("add", &ops.add)] {
            for name in names.keys() {
                header_operation_name(name, &format!("{p}.{op}.{name}"), r);
            }
        }
        for (i, name) in ops.remove.iter().enumerate() {
            header_operation_name(name, &format!("{p}.remove[{i}]"), r);
        }
    }
}

fn header_operation_name(name: &str, path: &str, r: &mut Report) {
    if name.starts_with(':') {
        r.err(
            path,
            format!(
                "pseudo-header {name:?} cannot be changed (use rewrite for the path and authority)"
            ),
        );
    } else if let Err(e) = header_name(name) {
        r.err(path, e);
    }
}

fn tls_route(route: &TlsRoute, vs_hosts: &[String], path: &str, r: &mut Report) {
    if route.r#match.is_empty() {
        r.err(format!("{path}.match"), "at least one match is required");
    }
    for (i, m) in route.r#match.iter().enumerate() {
        let p = format!("{path}.match[{i}]");
        if m.sni_hosts.is_empty() {
            r.err(format!("{p}.sniHosts"), "at least one SNI host is required");
        }
        for (j, sni) in m.sni_hosts.iter().enumerate() {
            let sp = format!("{p}.sniHosts[{j}]");
            if let Err(e) = check_host(sni, true) {
                r.err(sp, e);
            } else if !vs_hosts.is_empty()
                && !vs_hosts.iter().any(|h| covers(h, sni) || covers(sni, h))
            {
                r.err(
                    sp,
                    format!("SNI host {sni:?} does not match any of the VirtualService hosts"),
                );
            }
        }
        subnets(
            &m.destination_subnets,
            &format!("{p}.destinationSubnets"),
            r,
        );
        optional_port(m.port, &format!("{p}.port"), r);
        labels(&m.source_labels, &format!("{p}.sourceLabels"), r);
        for (j, g) in m.gateways.iter().enumerate() {
            gateway_name(g, &format!("{p}.gateways[{j}]"), r);
        }
        source_namespace(m.source_namespace.as_deref(), &p, r);
    }
    l4_destinations(&route.route, path, r);
}

fn tcp_route(route: &TcpRoute, path: &str, r: &mut Report) {
    for (i, m) in route.r#match.iter().enumerate() {
        let p = format!("{path}.match[{i}]");
        subnets(
            &m.destination_subnets,
            &format!("{p}.destinationSubnets"),
            r,
        );
        if let Some(s) = &m.source_subnet
            && !is_ip_or_cidr(s)
        {
            r.err(
                format!("{p}.sourceSubnet"),
                format!("{s:?} is not an IP address or CIDR"),
            );
        }
        optional_port(m.port, &format!("{p}.port"), r);
        labels(&m.source_labels, &format!("{p}.sourceLabels"), r);
        for (j, g) in m.gateways.iter().enumerate() {
            gateway_name(g, &format!("{p}.gateways[{j}]"), r);
        }
        source_namespace(m.source_namespace.as_deref(), &p, r);
    }
    l4_destinations(&route.route, path, r);
}

fn l4_destinations(route: &[RouteDestination], path: &str, r: &mut Report) {
    if route.is_empty() {
        r.err(
            format!("{path}.route"),
            "at least one destination is required",
        );
    }
    for (i, d) in route.iter().enumerate() {
        destination(&d.destination, &format!("{path}.route[{i}].destination"), r);
    }
    weights(route.iter().map(|d| d.weight), &format!("{path}.route"), r);
}

/// A single destination may omit its weight (it gets everything); several must add up to 100.
fn weights(weights: impl Iterator<Item = Option<i32>>, path: &str, r: &mut Report) {
    let weights: Vec<Option<i32>> = weights.collect();
    for (i, w) in weights.iter().enumerate() {
        if let Some(w) = w.filter(|w| *w < 0) {
            r.err(
                format!("{path}[{i}].weight"),
                format!("weight must not be negative (found {w})"),
            );
        }
    }
    if weights.len() > 1 {
        let sum: i64 = weights.iter().map(|w| i64::from(w.unwrap_or(0))).sum();
        if sum != 100 {
            r.err(path, format!("weights must sum to 100 (found {sum})"));
        }
    }
}

fn destination(d: &Destination, path: &str, r: &mut Report) {
    if d.host.is_empty() {
        r.err(format!("{path}.host"), "required");
    } else if d.host == "*" {
        r.err(
            format!("{path}.host"),
            "destination host must name a service, not \"*\"",
        );
    } else if let Err(e) = check_host(&d.host, false) {
        r.err(format!("{path}.host"), e);
    }
    if let Some(subset) = &d.subset
        && let Err(e) = dns1123_label(subset)
    {
        r.err(format!("{path}.subset"), e);
    }
    if let Some(port) = &d.port
        && let Err(e) = check_port(port.number)
    {
        r.err(format!("{path}.port.number"), e);
    }
}

/// Whether `pattern` (a host, possibly `*.suffix` or `*`) covers `host`.
fn covers(pattern: &str, host: &str) -> bool {
    if pattern == "*" || pattern == host {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => host.ends_with(suffix),
        None => false,
    }
}

// ---------------------------------------------------------------------------------------------------------------
// DestinationRule
// ---------------------------------------------------------------------------------------------------------------

pub(super) fn destination_rule(spec: &DestinationRuleSpec, r: &mut Report) {
    if spec.host.is_empty() {
        r.err("spec.host", "required");
    } else if let Err(e) = check_host(&spec.host, true) {
        r.err("spec.host", e);
    }
    export_to(&spec.export_to, "spec.exportTo", r);
    if let Some(ws) = &spec.workload_selector {
        selector_labels(&ws.match_labels, "spec.workloadSelector.matchLabels", r);
    }
    if let Some(tp) = &spec.traffic_policy {
        traffic_policy(tp, "spec.trafficPolicy", r);
    }
    let mut names: BTreeSet<&str> = BTreeSet::new();
    for (i, s) in spec.subsets.iter().enumerate() {
        let path = format!("spec.subsets[{i}]");
        if s.name.is_empty() {
            r.err(format!("{path}.name"), "required");
        } else if let Err(e) = dns1123_label(&s.name) {
            r.err(format!("{path}.name"), e);
        } else if !names.insert(&s.name) {
            r.err(
                format!("{path}.name"),
                format!("duplicate subset name {:?}", s.name),
            );
        }
        labels(&s.labels, &format!("{path}.labels"), r);
        if let Some(tp) = &s.traffic_policy {
            traffic_policy(tp, &format!("{path}.trafficPolicy"), r);
        }
    }
}

fn traffic_policy(tp: &TrafficPolicy, path: &str, r: &mut Report) {
    port_policy_parts(
        tp.load_balancer.as_ref(),
        tp.connection_pool.as_ref(),
        tp.outlier_detection.as_ref(),
        tp.tls.as_ref(),
        path,
        r,
    );
    let mut ports: BTreeSet<u32> = BTreeSet::new();
    for (i, pl) in tp.port_level_settings.iter().enumerate() {
        let p = format!("{path}.portLevelSettings[{i}]");
        match &pl.port {
            None => r.err(format!("{p}.port"), "required"),
            Some(port) => {
                if let Err(e) = check_port(port.number) {
                    r.err(format!("{p}.port.number"), e);
                } else if !ports.insert(port.number) {
                    r.err(
                        format!("{p}.port.number"),
                        format!("port {} already has port-level settings", port.number),
                    );
                }
            }
        }
        port_policy_parts(
            pl.load_balancer.as_ref(),
            pl.connection_pool.as_ref(),
            pl.outlier_detection.as_ref(),
            pl.tls.as_ref(),
            &p,
            r,
        );
    }
    if let Some(t) = &tp.tunnel {
        let p = format!("{path}.tunnel");
        if t.target_host.is_empty() {
            r.err(format!("{p}.targetHost"), "required");
        }
        required_port(t.target_port, &format!("{p}.targetPort"), r);
        if let Some(proto) = &t.protocol
            && proto != "CONNECT"
            && proto != "POST"
        {
            r.err(
                format!("{p}.protocol"),
                format!("tunnel protocol must be CONNECT or POST (found {proto:?})"),
            );
        }
    }
    if let Some(rb) = &tp.retry_budget {
        if let Some(pct) = rb.percent
            && let Err(e) = check_percent(pct)
        {
            r.err(format!("{path}.retryBudget.percent"), e);
        }
        min_1ms(
            rb.budget_interval,
            &format!("{path}.retryBudget.budgetInterval"),
            r,
        );
    }
}

fn port_policy_parts(
    lb: Option<&LoadBalancerSettings>,
    cp: Option<&ConnectionPoolSettings>,
    od: Option<&OutlierDetection>,
    tls: Option<&ClientTlsSettings>,
    path: &str,
    r: &mut Report,
) {
    if let Some(lb) = lb {
        load_balancer(lb, &format!("{path}.loadBalancer"), r);
    }
    if let Some(cp) = cp {
        connection_pool(cp, &format!("{path}.connectionPool"), r);
    }
    if let Some(od) = od {
        outlier_detection(od, &format!("{path}.outlierDetection"), r);
    }
    if let Some(tls) = tls {
        client_tls(tls, &format!("{path}.tls"), r);
    }
}

fn load_balancer(lb: &LoadBalancerSettings, path: &str, r: &mut Report) {
    let kinds = [
        lb.simple.is_some(),
        lb.consistent_hash.is_some(),
        lb.backend_utilization.is_some(),
    ];
    if kinds.iter().filter(|k| **k).count() > 1 {
        r.err(
            path,
            "only one of simple, consistentHash or backendUtilization may be set",
        );
    }
    if let Some(ch) = &lb.consistent_hash {
        let p = format!("{path}.consistentHash");
        let keys = [
            ch.http_header_name.is_some(),
            ch.http_cookie.is_some(),
            ch.use_source_ip == Some(true),
            ch.http_query_parameter_name.is_some(),
        ]
        .iter()
        .filter(|k| **k)
        .count();
        if keys != 1 {
            r.err(
                &p,
                format!(
                    "exactly one hash key (httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName) must be set (found {keys})"
                ),
            );
        }
        if ch.ring_hash.is_some() && ch.maglev.is_some() {
            r.err(&p, "only one of ringHash or maglev may be set");
        }
        if let Some(h) = &ch.http_header_name
            && let Err(e) = header_name(h)
        {
            r.err(format!("{p}.httpHeaderName"), e);
        }
        if let Some(c) = &ch.http_cookie {
            if c.name.is_empty() {
                r.err(format!("{p}.httpCookie.name"), "required");
            }
            for (i, a) in c.attributes.iter().enumerate() {
                if a.name.is_empty() {
                    r.err(format!("{p}.httpCookie.attributes[{i}].name"), "required");
                }
            }
        }
    }
    if let Some(l) = &lb.locality_lb_setting {
        let p = format!("{path}.localityLbSetting");
        if !l.distribute.is_empty() && !l.failover.is_empty() {
            r.err(&p, "only one of distribute or failover may be set");
        }
        for (i, d) in l.distribute.iter().enumerate() {
            if d.from.as_deref().unwrap_or_default().is_empty() {
                r.err(format!("{p}.distribute[{i}].from"), "required");
            }
            let sum: u64 = d.to.values().map(|w| u64::from(*w)).sum();
            if sum != 100 {
                r.err(
                    format!("{p}.distribute[{i}].to"),
                    format!("weights must sum to 100 (found {sum})"),
                );
            }
        }
        failovers(&l.failover, &format!("{p}.failover"), r);
    }
    if let Some(z) = &lb.zone_aware_lb_setting {
        failovers(
            &z.failover,
            &format!("{path}.zoneAwareLbSetting.failover"),
            r,
        );
        if z.min_cluster_size == Some(0) {
            r.err(
                format!("{path}.zoneAwareLbSetting.minClusterSize"),
                "must be at least 1",
            );
        }
    }
    min_1ms(
        lb.warmup_duration_secs,
        &format!("{path}.warmupDurationSecs"),
        r,
    );
    if let Some(w) = &lb.warmup {
        let p = format!("{path}.warmup");
        match w.duration {
            None => r.err(format!("{p}.duration"), "required"),
            d => min_1ms(d, &format!("{p}.duration"), r),
        }
        if let Some(m) = w.minimum_percent
            && let Err(e) = check_percent(m)
        {
            r.err(format!("{p}.minimumPercent"), e);
        }
        if let Some(a) = w.aggression.filter(|a| *a < 0.0) {
            r.err(
                format!("{p}.aggression"),
                format!("must not be negative (found {a})"),
            );
        }
    }
}

fn failovers(list: &[LocalityFailover], path: &str, r: &mut Report) {
    for (i, f) in list.iter().enumerate() {
        let from = f.from.as_deref().unwrap_or_default();
        let to = f.to.as_deref().unwrap_or_default();
        if from.is_empty() {
            r.err(format!("{path}[{i}].from"), "required");
        }
        if to.is_empty() {
            r.err(format!("{path}[{i}].to"), "required");
        }
        if !from.is_empty() && from == to {
            r.err(
                format!("{path}[{i}]"),
                format!("failover from {from:?} to itself"),
            );
        }
    }
}

fn connection_pool(cp: &ConnectionPoolSettings, path: &str, r: &mut Report) {
    if let Some(tcp) = &cp.tcp {
        let p = format!("{path}.tcp");
        non_negative(tcp.max_connections, &format!("{p}.maxConnections"), r);
        min_1ms(tcp.connect_timeout, &format!("{p}.connectTimeout"), r);
        min_1ms(
            tcp.max_connection_duration,
            &format!("{p}.maxConnectionDuration"),
            r,
        );
        if let Some(k) = &tcp.tcp_keepalive {
            min_1ms(k.time, &format!("{p}.tcpKeepalive.time"), r);
            min_1ms(k.interval, &format!("{p}.tcpKeepalive.interval"), r);
        }
    }
    if let Some(http) = &cp.http {
        let p = format!("{path}.http");
        for (field, v) in [
            ("http1MaxPendingRequests", http.http1_max_pending_requests),
            ("http2MaxRequests", http.http2_max_requests),
            ("maxRequestsPerConnection", http.max_requests_per_connection),
            ("maxRetries", http.max_retries),
            ("maxConcurrentStreams", http.max_concurrent_streams),
        ] {
            non_negative(v, &format!("{p}.{field}"), r);
        }
        min_1ms(http.idle_timeout, &format!("{p}.idleTimeout"), r);
        if let Some(k) = &http.http2_keep_alive {
            min_1ms(k.interval, &format!("{p}.http2KeepAlive.interval"), r);
            min_1ms(k.timeout, &format!("{p}.http2KeepAlive.timeout"), r);
        }
    }
}

fn outlier_detection(od: &OutlierDetection, path: &str, r: &mut Report) {
    non_negative(
        od.consecutive_errors,
        &format!("{path}.consecutiveErrors"),
        r,
    );
    min_1ms(od.interval, &format!("{path}.interval"), r);
    min_1ms(
        od.base_ejection_time,
        &format!("{path}.baseEjectionTime"),
        r,
    );
    for (field, v) in [
        ("maxEjectionPercent", od.max_ejection_percent),
        ("minHealthPercent", od.min_health_percent),
    ] {
        if let Some(v) = v
            && let Err(e) = check_percent(f64::from(v))
        {
            r.err(format!("{path}.{field}"), e);
        }
    }
    for (i, code) in od.outlier_detection_http_error_codes.iter().enumerate() {
        if !(100..=599).contains(code) {
            r.err(
                format!("{path}.outlierDetectionHttpErrorCodes[{i}]"),
                format!("HTTP status must be in the range 100..599 (found {code})"),
            );
        }
    }
}

fn client_tls(t: &ClientTlsSettings, path: &str, r: &mut Report) {
    let has_files =
        t.client_certificate.is_some() || t.private_key.is_some() || t.ca_certificates.is_some();
    match t.mode {
        Some(ClientTlsMode::Mutual) if t.credential_name.is_none() => {
            for (field, value) in [
                ("clientCertificate", &t.client_certificate),
                ("privateKey", &t.private_key),
            ] {
                if value.as_deref().unwrap_or_default().is_empty() {
                    r.err(
                        format!("{path}.{field}"),
                        "required for MUTUAL TLS unless credentialName is set",
                    );
                }
            }
        }
        Some(ClientTlsMode::IstioMutual) => {
            if has_files || t.credential_name.is_some() || t.ca_crl.is_some() {
                r.err(
                    path,
                    "ISTIO_MUTUAL uses the proxy's Istio certificates: clientCertificate, privateKey, caCertificates, caCrl and credentialName must not be set",
                );
            }
            return;
        }
        _ => {}
    }
    if t.credential_name.is_some() && has_files {
        r.err(
            path,
            "credentialName cannot be combined with clientCertificate, privateKey or caCertificates",
        );
    }
}

// ---------------------------------------------------------------------------------------------------------------
// ServiceEntry, WorkloadEntry, WorkloadGroup
// ---------------------------------------------------------------------------------------------------------------

pub(super) fn service_entry(spec: &ServiceEntrySpec, r: &mut Report) {
    let resolution = spec.resolution.unwrap_or(ServiceEntryResolution::None);
    let dns = matches!(
        resolution,
        ServiceEntryResolution::Dns | ServiceEntryResolution::DnsRoundRobin
    );
    if spec.hosts.is_empty() {
        r.err("spec.hosts", "at least one host is required");
    }
    for (i, h) in spec.hosts.iter().enumerate() {
        let path = format!("spec.hosts[{i}]");
        if h == "*" {
            r.err(
                path,
                "host \"*\" is not allowed in a ServiceEntry (name the hosts, e.g. \"*.example.com\")",
            );
        } else if let Err(e) = check_host(h, false) {
            r.err(path, e);
        } else if dns && h.starts_with("*.") && spec.endpoints.is_empty() {
            r.err(
                path,
                format!(
                    "wildcard host {h:?} cannot be resolved with {} resolution (list endpoints or use NONE)",
                    enum_name(&resolution)
                ),
            );
        }
    }
    for (i, a) in spec.addresses.iter().enumerate() {
        let path = format!("spec.addresses[{i}]");
        if !is_ip_or_cidr(a) {
            r.err(path, format!("{a:?} is not an IP address or CIDR"));
        } else if a.contains('/')
            && !matches!(
                resolution,
                ServiceEntryResolution::None | ServiceEntryResolution::Static
            )
        {
            r.err(
                path,
                format!(
                    "CIDR addresses are only allowed with NONE or STATIC resolution (resolution is {})",
                    enum_name(&resolution)
                ),
            );
        }
    }
    let mut names: BTreeSet<&str> = BTreeSet::new();
    let mut numbers: BTreeSet<u32> = BTreeSet::new();
    for (i, p) in spec.ports.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        required_port(p.number, &format!("{path}.number"), r);
        if let Some(n) = p.number.filter(|n| check_port(*n).is_ok())
            && !numbers.insert(n)
        {
            r.err(
                format!("{path}.number"),
                format!("duplicate port number {n}"),
            );
        }
        match p.name.as_deref().filter(|n| !n.is_empty()) {
            None => r.err(format!("{path}.name"), "required"),
            Some(name) => {
                if !names.insert(name) {
                    r.err(
                        format!("{path}.name"),
                        format!("duplicate port name {name:?}"),
                    );
                }
            }
        }
        port_protocol(p.protocol.as_deref(), &format!("{path}.protocol"), r);
        optional_port(p.target_port, &format!("{path}.targetPort"), r);
    }
    if spec.workload_selector.is_some() && !spec.endpoints.is_empty() {
        r.err(
            "spec",
            "only one of workloadSelector or endpoints may be set",
        );
    }
    match resolution {
        ServiceEntryResolution::None if !spec.endpoints.is_empty() => r.err(
            "spec.endpoints",
            "endpoints cannot be set with NONE resolution (use STATIC or DNS)",
        ),
        ServiceEntryResolution::Static
            if spec.endpoints.is_empty() && spec.workload_selector.is_none() =>
        {
            r.err(
                "spec.endpoints",
                "STATIC resolution needs endpoints or a workloadSelector",
            )
        }
        ServiceEntryResolution::DnsRoundRobin if spec.endpoints.len() > 1 => r.err(
            "spec.endpoints",
            format!(
                "DNS_ROUND_ROBIN resolution allows at most one endpoint (found {})",
                spec.endpoints.len()
            ),
        ),
        _ => {}
    }
    for (i, ep) in spec.endpoints.iter().enumerate() {
        let path = format!("spec.endpoints[{i}]");
        workload(ep, &path, true, Some(&names), r);
        if let Some(a) = ep.address.as_deref().filter(|a| !a.is_empty())
            && resolution == ServiceEntryResolution::Static
            && !a.starts_with("unix://")
            && a.parse::<IpAddr>().is_err()
        {
            r.err(
                format!("{path}.address"),
                format!("{a:?} must be an IP address or a unix:// socket with STATIC resolution"),
            );
        }
    }
    if let Some(ws) = &spec.workload_selector {
        selector_labels(&ws.labels, "spec.workloadSelector.labels", r);
    }
    export_to(&spec.export_to, "spec.exportTo", r);
}

pub(super) fn workload_entry(spec: &WorkloadEntrySpec, r: &mut Report) {
    workload(spec, "spec", true, None, r);
}

pub(super) fn workload_group(spec: &WorkloadGroupSpec, r: &mut Report) {
    if let Some(m) = &spec.metadata {
        labels(&m.labels, "spec.metadata.labels", r);
    }
    workload(&spec.template, "spec.template", false, None, r);
    if let Some(p) = &spec.probe {
        probe(p, "spec.probe", r);
    }
}

/// Rules shared by WorkloadEntry, ServiceEntry endpoints and WorkloadGroup templates. `port_names` are the
/// ServiceEntry's port names, which endpoint `ports` keys must refer to.
fn workload(
    w: &WorkloadEntrySpec,
    path: &str,
    address_required: bool,
    port_names: Option<&BTreeSet<&str>>,
    r: &mut Report,
) {
    match w.address.as_deref().filter(|a| !a.is_empty()) {
        None if address_required && w.network.is_none() => {
            r.err(format!("{path}.address"), "required unless network is set")
        }
        None => {}
        Some(a) => {
            if let Some(socket) = a.strip_prefix("unix://") {
                if !(socket.starts_with('/') || socket.starts_with('@')) {
                    r.err(
                        format!("{path}.address"),
                        format!("{a:?}: a unix socket must be an absolute path or an abstract name (@name)"),
                    );
                } else if socket.ends_with('/') {
                    r.err(
                        format!("{path}.address"),
                        format!("{a:?}: a unix socket cannot be a directory"),
                    );
                }
                if !w.ports.is_empty() {
                    r.err(
                        format!("{path}.ports"),
                        "a unix:// address cannot have ports",
                    );
                }
            } else if a.parse::<IpAddr>().is_err()
                && let Err(e) = check_host(a, false)
            {
                r.err(
                    format!("{path}.address"),
                    format!("not an IP address, DNS name or unix:// socket: {e}"),
                );
            }
        }
    }
    for (name, number) in &w.ports {
        let p = format!("{path}.ports.{name}");
        if !is_port_name(name) {
            r.err(
                &p,
                format!(
                    "invalid port name {name:?} (letters, digits and '-', at most 62 characters)"
                ),
            );
        } else if let Some(names) = port_names
            && !names.contains(name.as_str())
        {
            r.err(
                &p,
                format!("port {name:?} is not one of the ServiceEntry's spec.ports names"),
            );
        }
        if let Err(e) = check_port(*number) {
            r.err(&p, e);
        }
    }
    labels(&w.labels, &format!("{path}.labels"), r);
    if let Some(sa) = w.service_account.as_deref().filter(|s| !s.is_empty())
        && let Err(e) = dns1123_subdomain(sa)
    {
        r.err(format!("{path}.serviceAccount"), e);
    }
}

fn probe(p: &ReadinessProbe, path: &str, r: &mut Report) {
    let kinds = [
        p.http_get.is_some(),
        p.tcp_socket.is_some(),
        p.exec.is_some(),
        p.grpc.is_some(),
    ]
    .iter()
    .filter(|k| **k)
    .count();
    match kinds {
        0 => r.err(path, "one of httpGet, tcpSocket, exec or grpc is required"),
        1 => {}
        _ => r.err(
            path,
            "only one of httpGet, tcpSocket, exec or grpc may be set",
        ),
    }
    for (field, v) in [
        ("initialDelaySeconds", p.initial_delay_seconds),
        ("timeoutSeconds", p.timeout_seconds),
        ("periodSeconds", p.period_seconds),
        ("successThreshold", p.success_threshold),
        ("failureThreshold", p.failure_threshold),
    ] {
        non_negative(v, &format!("{path}.{field}"), r);
    }
    if let Some(h) = &p.http_get {
        required_port(h.port, &format!("{path}.httpGet.port"), r);
        if let Some(s) = h.scheme.as_deref().filter(|s| !s.is_empty())
            && s != "HTTP"
            && s != "HTTPS"
        {
            r.err(
                format!("{path}.httpGet.scheme"),
                format!("scheme must be HTTP or HTTPS (found {s:?})"),
            );
        }
        for (i, hdr) in h.http_headers.iter().enumerate() {
            if let Err(e) = header_name(hdr.name.as_deref().unwrap_or_default()) {
                r.err(format!("{path}.httpGet.httpHeaders[{i}].name"), e);
            }
        }
    }
    if let Some(t) = &p.tcp_socket {
        required_port(t.port, &format!("{path}.tcpSocket.port"), r);
    }
    if let Some(g) = &p.grpc {
        required_port(g.port, &format!("{path}.grpc.port"), r);
    }
    if let Some(e) = &p.exec
        && e.command.is_empty()
    {
        r.err(format!("{path}.exec.command"), "required");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Sidecar
// ---------------------------------------------------------------------------------------------------------------

pub(super) fn sidecar(spec: &SidecarSpec, r: &mut Report) {
    if spec.ingress.is_empty()
        && spec.egress.is_empty()
        && spec.outbound_traffic_policy.is_none()
        && spec.inbound_connection_pool.is_none()
    {
        r.err(
            "spec",
            "empty Sidecar: set at least one of egress, ingress, outboundTrafficPolicy or inboundConnectionPool",
        );
    }
    if let Some(ws) = &spec.workload_selector {
        selector_labels(&ws.labels, "spec.workloadSelector.labels", r);
    }
    let catch_all = spec.egress.iter().filter(|e| e.port.is_none()).count();
    if catch_all > 1 {
        r.err(
            "spec.egress",
            format!("at most one egress listener may omit the port (found {catch_all})"),
        );
    }
    let mut egress_ports: BTreeSet<u32> = BTreeSet::new();
    for (i, e) in spec.egress.iter().enumerate() {
        let path = format!("spec.egress[{i}]");
        if e.hosts.is_empty() {
            r.err(format!("{path}.hosts"), "at least one host is required");
        }
        for (j, h) in e.hosts.iter().enumerate() {
            namespaced_host(h, &format!("{path}.hosts[{j}]"), true, r);
        }
        if let Some(p) = &e.port {
            listener_port(p, &format!("{path}.port"), &mut egress_ports, r);
        }
        if let Some(bind) = &e.bind {
            bind_address(bind, &format!("{path}.bind"), r);
        }
    }
    let mut ingress_ports: BTreeSet<u32> = BTreeSet::new();
    for (i, l) in spec.ingress.iter().enumerate() {
        let path = format!("spec.ingress[{i}]");
        match &l.port {
            None => r.err(format!("{path}.port"), "required"),
            Some(p) => listener_port(p, &format!("{path}.port"), &mut ingress_ports, r),
        }
        if let Some(bind) = &l.bind {
            bind_address(bind, &format!("{path}.bind"), r);
        }
        if let Some(ep) = &l.default_endpoint {
            default_endpoint(ep, &format!("{path}.defaultEndpoint"), r);
        }
        if let Some(tls) = &l.tls {
            server_tls(tls, &format!("{path}.tls"), r);
        }
        if let Some(cp) = &l.connection_pool {
            connection_pool(cp, &format!("{path}.connectionPool"), r);
        }
    }
    if let Some(cp) = &spec.inbound_connection_pool {
        connection_pool(cp, "spec.inboundConnectionPool", r);
    }
    if let Some(otp) = &spec.outbound_traffic_policy
        && let Some(proxy) = &otp.egress_proxy
    {
        if otp.mode != Some(OutboundTrafficMode::AllowAny) {
            r.err(
                "spec.outboundTrafficPolicy.egressProxy",
                "egressProxy needs mode ALLOW_ANY",
            );
        }
        destination(proxy, "spec.outboundTrafficPolicy.egressProxy", r);
    }
}

fn listener_port(p: &Port, path: &str, seen: &mut BTreeSet<u32>, r: &mut Report) {
    required_port(p.number, &format!("{path}.number"), r);
    if let Some(n) = p.number.filter(|n| check_port(*n).is_ok())
        && !seen.insert(n)
    {
        r.err(
            format!("{path}.number"),
            format!("port {n} is already used by another listener"),
        );
    }
    port_protocol(p.protocol.as_deref(), &format!("{path}.protocol"), r);
    optional_port(p.target_port, &format!("{path}.targetPort"), r);
}

fn default_endpoint(ep: &str, path: &str, r: &mut Report) {
    if let Some(socket) = ep.strip_prefix("unix://") {
        if socket.is_empty() {
            r.err(path, "unix:// needs a socket path");
        }
        return;
    }
    let ok = ep.rsplit_once(':').is_some_and(|(host, port)| {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        host.parse::<IpAddr>().is_ok() && port.parse::<u32>().is_ok_and(|p| check_port(p).is_ok())
    });
    if !ok {
        r.err(
            path,
            format!("{ep:?} must be IP:port (e.g. 127.0.0.1:8080) or unix:///path"),
        );
    }
}

// ---------------------------------------------------------------------------------------------------------------
// EnvoyFilter
// ---------------------------------------------------------------------------------------------------------------

pub(super) fn envoy_filter(spec: &EnvoyFilterSpec, r: &mut Report) {
    if spec.workload_selector.is_some() && !spec.target_refs.is_empty() {
        r.err(
            "spec",
            "only one of workloadSelector or targetRefs may be set",
        );
    }
    if let Some(ws) = &spec.workload_selector {
        selector_labels(&ws.labels, "spec.workloadSelector.labels", r);
    }
    for (i, t) in spec.target_refs.iter().enumerate() {
        let path = format!("spec.targetRefs[{i}]");
        if t.kind.is_empty() {
            r.err(format!("{path}.kind"), "required");
        }
        if t.name.is_empty() {
            r.err(format!("{path}.name"), "required");
        }
        if !t.namespace.is_empty() {
            r.err(
                format!("{path}.namespace"),
                "cross-namespace references are not supported; leave namespace empty",
            );
        }
    }
    for (i, cp) in spec.config_patches.iter().enumerate() {
        config_patch(cp, &format!("spec.configPatches[{i}]"), r);
    }
}

fn config_patch(cp: &EnvoyConfigObjectPatch, path: &str, r: &mut Report) {
    let apply_to = cp.apply_to.filter(|a| *a != ApplyTo::Invalid);
    if apply_to.is_none() {
        r.err(format!("{path}.applyTo"), "required");
    }
    match &cp.patch {
        None => r.err(format!("{path}.patch"), "required"),
        Some(patch) => match patch.operation.filter(|o| *o != PatchOperation::Invalid) {
            None => r.err(format!("{path}.patch.operation"), "required"),
            Some(op) => {
                if op != PatchOperation::Remove && patch.value.is_none() {
                    r.err(
                        format!("{path}.patch.value"),
                        format!("required for operation {}", enum_name(&op)),
                    );
                }
                if let Some(apply_to) = apply_to {
                    patch_target(op, apply_to, &format!("{path}.patch.operation"), r);
                }
            }
        },
    }
    if let Some(m) = &cp.r#match {
        let p = format!("{path}.match");
        if m.waypoint.is_some() && m.context != Some(PatchContext::Waypoint) {
            r.err(
                format!("{p}.waypoint"),
                "only allowed when context is WAYPOINT",
            );
        }
        if let Some(v) = m.proxy.as_ref().and_then(|px| px.proxy_version.as_ref())
            && let Err(e) = check_regex(v)
        {
            r.err(format!("{p}.proxy.proxyVersion"), e);
        }
        let objects: Vec<&str> = [
            (m.listener.is_some(), "listener"),
            (m.route_configuration.is_some(), "routeConfiguration"),
            (m.cluster.is_some(), "cluster"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect();
        if objects.len() > 1 {
            r.err(
                &p,
                format!(
                    "only one of listener, routeConfiguration or cluster may be set (found {})",
                    objects.join(" and ")
                ),
            );
        } else if let (Some(apply_to), Some(object)) = (apply_to, objects.first()) {
            let expected = match apply_to {
                ApplyTo::Listener
                | ApplyTo::FilterChain
                | ApplyTo::NetworkFilter
                | ApplyTo::HttpFilter
                | ApplyTo::ListenerFilter => Some("listener"),
                ApplyTo::RouteConfiguration | ApplyTo::VirtualHost | ApplyTo::HttpRoute => {
                    Some("routeConfiguration")
                }
                ApplyTo::Cluster => Some("cluster"),
                _ => None,
            };
            if let Some(expected) = expected.filter(|e| e != object) {
                r.err(
                    format!("{p}.{object}"),
                    format!(
                        "applyTo {} needs a {expected} match, not a {object} match",
                        enum_name(&apply_to)
                    ),
                );
            }
        }
        if let Some(l) = &m.listener {
            optional_port(l.port_number, &format!("{p}.listener.portNumber"), r);
            if let Some(fc) = &l.filter_chain {
                optional_port(
                    fc.destination_port,
                    &format!("{p}.listener.filterChain.destinationPort"),
                    r,
                );
            }
        }
        if let Some(rc) = &m.route_configuration {
            optional_port(
                rc.port_number,
                &format!("{p}.routeConfiguration.portNumber"),
                r,
            );
        }
        if let Some(c) = &m.cluster {
            optional_port(c.port_number, &format!("{p}.cluster.portNumber"), r);
        }
        if let Some(w) = &m.waypoint {
            optional_port(w.port_number, &format!("{p}.waypoint.portNumber"), r);
        }
    }
}

/// Which operations make sense for which objects: inserting positions only exists in ordered lists.
fn patch_target(op: PatchOperation, apply_to: ApplyTo, path: &str, r: &mut Report) {
    use ApplyTo::*;
    use PatchOperation::*;
    let ok = match op {
        InsertBefore | InsertAfter | InsertFirst => matches!(
            apply_to,
            NetworkFilter | HttpFilter | HttpRoute | ListenerFilter
        ),
        Replace => matches!(apply_to, NetworkFilter | HttpFilter),
        _ => true,
    };
    if !ok {
        let targets = if op == Replace {
            "NETWORK_FILTER or HTTP_FILTER"
        } else {
            "NETWORK_FILTER, HTTP_FILTER, HTTP_ROUTE or LISTENER_FILTER"
        };
        r.err(
            path,
            format!(
                "{} applies only to {targets}, not {}",
                enum_name(&op),
                enum_name(&apply_to)
            ),
        );
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Small shared checks.
// ---------------------------------------------------------------------------------------------------------------

/// The YAML spelling of an enum value (`SIMPLE`, `DNS_ROUND_ROBIN`).
fn enum_name<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::from("?"),
    }
}

/// Durations Istio's CRD requires to be at least 1ms (timeouts, intervals, ejection times).
fn min_1ms(d: Option<Duration>, path: &str, r: &mut Report) {
    if let Some(d) = d
        && d.get() < std::time::Duration::from_millis(1)
    {
        r.err(path, format!("duration must be at least 1ms (found {d})"));
    }
}

fn non_negative(v: Option<i32>, path: &str, r: &mut Report) {
    if let Some(v) = v.filter(|v| *v < 0) {
        r.err(path, format!("must not be negative (found {v})"));
    }
}

fn percentage(p: Option<&Percent>, path: &str, r: &mut Report) {
    if let Some(p) = p
        && let Err(e) = check_percent(p.value)
    {
        r.err(format!("{path}.value"), e);
    }
}

fn required_port(p: Option<u32>, path: &str, r: &mut Report) {
    match p {
        None => r.err(path, "required"),
        Some(n) => {
            if let Err(e) = check_port(n) {
                r.err(path, e);
            }
        }
    }
}

fn optional_port(p: Option<u32>, path: &str, r: &mut Report) {
    if let Some(n) = p
        && let Err(e) = check_port(n)
    {
        r.err(path, e);
    }
}

fn port_protocol(proto: Option<&str>, path: &str, r: &mut Report) {
    if let Some(proto) = proto.filter(|p| !p.is_empty())
        && !PORT_PROTOCOLS.contains(&proto.to_ascii_uppercase().as_str())
    {
        r.err(
            path,
            format!(
                "unsupported protocol {proto:?} (expected one of {})",
                PORT_PROTOCOLS.join(", ")
            ),
        );
    }
}

fn is_ip_or_cidr(s: &str) -> bool {
    s.parse::<IpAddr>().is_ok() || s.parse::<ipnet::IpNet>().is_ok()
}

fn subnets(list: &[String], path: &str, r: &mut Report) {
    for (i, s) in list.iter().enumerate() {
        if !is_ip_or_cidr(s) {
            r.err(
                format!("{path}[{i}]"),
                format!("{s:?} is not an IP address or CIDR"),
            );
        }
    }
}

fn bind_address(bind: &str, path: &str, r: &mut Report) {
    if !bind.starts_with("unix://") && bind.parse::<IpAddr>().is_err() {
        r.err(
            path,
            format!("{bind:?} must be an IP address or a unix:// socket"),
        );
    }
}

/// `namespace/dnsName` hosts of Gateway servers (namespace optional) and Sidecar egress (namespace required,
/// `~` allowed).
fn namespaced_host(h: &str, path: &str, sidecar: bool, r: &mut Report) {
    let (ns, host) = match h.split_once('/') {
        Some((ns, host)) => (Some(ns), host),
        None if sidecar => {
            r.err(
                path,
                format!("host {h:?} must be in the form namespace/dnsName (e.g. \"./*\" or \"istio-system/*\")"),
            );
            return;
        }
        None => (None, h),
    };
    if host.contains('/') {
        r.err(
            path,
            format!("host {h:?} must be in the form namespace/dnsName"),
        );
        return;
    }
    if let Some(ns) = ns {
        let special = ns == "*" || ns == "." || (sidecar && ns == "~");
        if !special && dns1123_label(ns).is_err() {
            r.err(
                path,
                format!("namespace {ns:?} of host {h:?} must be \"*\", \".\" or a namespace name"),
            );
            return;
        }
    }
    if let Err(e) = check_host(host, true) {
        r.err(path, e);
    }
}

/// VirtualService gateway references: `mesh`, `name`, `namespace/name` (names may be FQDNs).
fn gateway_name(g: &str, path: &str, r: &mut Report) {
    if g == "mesh" {
        return;
    }
    let (ns, name) = match g.split_once('/') {
        Some((ns, name)) => (Some(ns), name),
        None => (None, g),
    };
    let ok = ns.is_none_or(|ns| dns1123_label(ns).is_ok())
        && !name.contains('/')
        && dns1123_subdomain(name).is_ok();
    if !ok {
        r.err(
            path,
            format!("gateway {g:?} must be \"mesh\", a Gateway name or namespace/name"),
        );
    }
}

fn export_to(list: &[String], path: &str, r: &mut Report) {
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    for (i, ns) in list.iter().enumerate() {
        let p = format!("{path}[{i}]");
        if ns != "." && ns != "*" && ns != "~" && dns1123_label(ns).is_err() {
            r.err(
                p,
                format!("{ns:?} must be \".\", \"*\", \"~\" or a namespace name"),
            );
        } else if !seen.insert(ns) {
            r.err(p, format!("duplicate namespace {ns:?}"));
        }
    }
    if list.len() > 1 && seen.contains("*") {
        r.err(
            path,
            "\"*\" already exports everywhere; list no other namespaces with it",
        );
    }
}

fn source_namespace(ns: Option<&str>, path: &str, r: &mut Report) {
    if let Some(ns) = ns.filter(|n| !n.is_empty())
        && let Err(e) = dns1123_label(ns)
    {
        r.err(format!("{path}.sourceNamespace"), e);
    }
}

/// An HTTP header name: a non-empty RFC 7230 token.
fn header_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("header name must not be empty".into());
    }
    let token = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if token {
        Ok(())
    } else {
        Err(format!(
            "invalid header name {name:?} (letters, digits and !#$%&'*+-.^_`|~ only)"
        ))
    }
}

/// Kubernetes label syntax for keys and values.
fn labels(map: &BTreeMap<String, String>, path: &str, r: &mut Report) {
    for (k, v) in map {
        let p = format!("{path}.{k}");
        if let Err(e) = label_key(k) {
            r.err(&p, e);
        }
        if !v.is_empty() && !is_label_name(v) {
            r.err(
                &p,
                format!(
                    "invalid label value {v:?} (at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit)"
                ),
            );
        }
    }
}

/// Workload selectors: label syntax, and no wildcards (the CRD refuses them).
fn selector_labels(map: &BTreeMap<String, String>, path: &str, r: &mut Report) {
    for (k, v) in map {
        if k.contains('*') || v.contains('*') {
            r.err(
                format!("{path}.{k}"),
                "wildcards are not supported in selectors",
            );
            return;
        }
    }
    labels(map, path, r);
}

fn label_key(k: &str) -> Result<(), String> {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, k),
    };
    if let Some(prefix) = prefix
        && dns1123_subdomain(prefix).is_err()
    {
        return Err(format!(
            "invalid label key {k:?}: the prefix must be a DNS subdomain"
        ));
    }
    if !is_label_name(name) {
        return Err(format!(
            "invalid label key {k:?} (at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit)"
        ));
    }
    Ok(())
}

fn is_label_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Port names of WorkloadEntry `ports` (as the CRD checks them).
fn is_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() < 63
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn is_base64(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    s.len().is_multiple_of(4)
        && s.len() - body.len() <= 2
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}
