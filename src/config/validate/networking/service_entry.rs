//! ServiceEntry, WorkloadEntry and WorkloadGroup rules: hosts against resolution, addresses, ports and
//! endpoints.

use super::*;

/// ServiceEntry: hosts and addresses against the resolution mode, unique ports, endpoints.
pub(in crate::config::validate) fn service_entry(spec: &ServiceEntrySpec, r: &mut Report) {
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

/// WorkloadEntry: an address (unless a network is given), ports and labels.
pub(in crate::config::validate) fn workload_entry(spec: &WorkloadEntrySpec, r: &mut Report) {
    workload(spec, "spec", true, None, r);
}

/// WorkloadGroup: metadata labels, the entry template (address optional) and the readiness probe.
pub(in crate::config::validate) fn workload_group(spec: &WorkloadGroupSpec, r: &mut Report) {
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
