//! Gateway rules: servers, ports and protocols, `namespace/host` hosts and server TLS.

use super::*;

/// Protocols a Gateway server port may declare (compared case-insensitively, like istiod).
const GATEWAY_PROTOCOLS: &[&str] = &[
    "HTTP", "HTTPS", "GRPC", "GRPC-WEB", "HTTP2", "MONGO", "TCP", "TLS",
];

/// Gateway: at least one server, each with hosts, a valid port and TLS settings that fit its protocol.
pub(in crate::config::validate) fn gateway(spec: &GatewaySpec, r: &mut Report) {
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
            // Like istiod: an HTTP server may carry TLS settings only to redirect to HTTPS.
            Some(tls) if !terminates && tls.https_redirect != Some(true) => r.err(
                format!("{path}.tls"),
                format!(
                    "{protocol} servers cannot terminate TLS: set tls.httpsRedirect: true to redirect to HTTPS, or use an HTTPS or TLS port"
                ),
            ),
            _ => {}
        }
    }
    if let Some(tls) = &s.tls {
        server_tls(tls, &format!("{path}.tls"), r);
    }
}

pub(super) fn server_tls(t: &ServerTlsSettings, path: &str, r: &mut Report) {
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
