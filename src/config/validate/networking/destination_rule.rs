//! DestinationRule rules: host, subsets and traffic policies (load balancer, connection pool, outlier
//! detection, client TLS, tunnel).

use super::*;

/// DestinationRule: host, exportTo, workload selector, traffic policy and unique, well-formed subsets.
pub(in crate::config::validate) fn destination_rule(spec: &DestinationRuleSpec, r: &mut Report) {
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

pub(super) fn connection_pool(cp: &ConnectionPoolSettings, path: &str, r: &mut Report) {
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
