//! Sidecar rules: egress `namespace/host` lists, listener ports, bind addresses and default endpoints.

use super::destination_rule::connection_pool;
use super::gateway::server_tls;
use super::virtual_service::destination;
use super::*;

/// Sidecar: a non-empty config, `namespace/host` egress hosts, at most one catch-all egress, unique ports.
pub(in crate::config::validate) fn sidecar(spec: &SidecarSpec, r: &mut Report) {
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
