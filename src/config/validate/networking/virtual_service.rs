//! VirtualService rules: hosts and gateways, HTTP/TLS/TCP routes, matches, weights and the HTTP route
//! modifiers (redirect, rewrite, retries, fault, mirrors, CORS, headers).

use super::*;

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

/// VirtualService: hosts, gateways, exportTo, then every HTTP, TLS and TCP rule.
pub(in crate::config::validate) fn virtual_service(spec: &VirtualServiceSpec, r: &mut Report) {
    let bound_to_mesh = spec.gateways.is_empty() || spec.gateways.iter().any(|g| g == "mesh");
    // No hosts: a delegate, only reachable through a root VirtualService's `delegate` (istiod's rules: it inherits
    // the root's hosts and gateways, and only HTTP routes can be delegated).
    let delegate = spec.hosts.is_empty();
    if delegate {
        const WHY: &str = "a delegate VirtualService (no hosts)";
        if !spec.tls.is_empty() || !spec.tcp.is_empty() {
            r.err(
                "spec.hosts",
                "at least one host is required for tls and tcp routes (only a delegate, with http routes only, may omit hosts)",
            );
        } else if spec.http.is_empty() {
            r.err("spec.hosts", "at least one host is required");
        }
        if !spec.gateways.is_empty() {
            r.err(
                "spec.gateways",
                format!("{WHY} must not set gateways: it is bound through its root"),
            );
        }
        for (i, route) in spec.http.iter().enumerate() {
            if route.delegate.is_some() {
                r.err(
                    format!("spec.http[{i}].delegate"),
                    format!("{WHY} cannot delegate again"),
                );
            }
        }
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
    if !delegate && spec.http.is_empty() && spec.tls.is_empty() && spec.tcp.is_empty() {
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
            // Any case: istiod accepts `K-Network-Hash` (Knative generates it) and Envoy matches header names
            // case-insensitively.
            if let Err(e) = header_name(name) {
                r.err(&p, e);
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
        if d.exponential_delay.is_some() {
            // istiod refuses it ("not supported yet"); rudder loads the rest of the rule and injects no delay.
            r.warn(
                format!("{p}.exponentialDelay"),
                "exponentialDelay is not supported (istiod rejects it too); no delay is injected",
            );
        }
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

pub(super) fn destination(d: &Destination, path: &str, r: &mut Report) {
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
