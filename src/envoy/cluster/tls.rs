//! Upstream TLS from a DestinationRule's `tls` settings: DISABLE (plaintext), SIMPLE (verify the server) and
//! MUTUAL (also present a client certificate), with certificates read by Envoy from files.
//!
//! ISTIO_MUTUAL (and auto-mTLS towards endpoints with a sidecar) needs the workload certificate served over SDS,
//! which comes with the identity work: [`istio_mutual`] is the seam, and returns no transport socket for now so
//! such clusters stay plaintext. `trafficPolicy.proxyProtocol` wraps whichever socket results.

use envoy_types::pb::envoy::config::core::v3::{
    DataSource, ProxyProtocolConfig, TransportSocket, data_source, proxy_protocol_config,
    transport_socket,
};
use envoy_types::pb::envoy::extensions::transport_sockets::proxy_protocol::v3::ProxyProtocolUpstreamTransport;
use envoy_types::pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, SubjectAltNameMatcher, TlsCertificate,
    UpstreamTlsContext, common_tls_context::ValidationContextType,
    subject_alt_name_matcher::SanType,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern};

use super::any;
use crate::config::istio::networking::{ClientTlsMode, ClientTlsSettings, ProxyProtocolVersion};

/// Envoy's name for the TLS transport socket.
pub const TLS_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.tls";

/// The system trust bundle used when SIMPLE/MUTUAL name no `caCertificates`: istiod verifies against the
/// system roots by default (`caCertificates: system`), and this is where Debian/Ubuntu-based Envoy images keep them.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The transport socket for `tls`, or `None` for plaintext. `default_sni` is used when the rule sets no `sni`
/// (the service host, so TLS origination to an external host presents the name the server expects).
pub fn transport_socket(
    tls: Option<&ClientTlsSettings>,
    default_sni: Option<&str>,
    what: &str,
) -> Option<TransportSocket> {
    let tls = tls?;
    match tls.mode.unwrap_or(ClientTlsMode::Disable) {
        ClientTlsMode::Disable => None,
        ClientTlsMode::IstioMutual => istio_mutual(),
        mode @ (ClientTlsMode::Simple | ClientTlsMode::Mutual) => {
            if tls.credential_name.is_some() {
                // Secrets by name are served over SDS (`kubernetes://<name>`), which comes with the identity work.
                tracing::warn!(
                    "{what}: tls.credentialName is not supported yet; using the file settings only"
                );
            }
            let mut common = CommonTlsContext::default();
            if mode == ClientTlsMode::Mutual {
                match (&tls.client_certificate, &tls.private_key) {
                    (Some(cert), Some(key)) => common.tls_certificates.push(TlsCertificate {
                        certificate_chain: Some(file(cert)),
                        private_key: Some(file(key)),
                        ..Default::default()
                    }),
                    _ => tracing::warn!(
                        "{what}: tls mode MUTUAL without clientCertificate and privateKey; no client certificate is sent"
                    ),
                }
            }
            if tls.insecure_skip_verify != Some(true) {
                let ca = tls.ca_certificates.as_deref().unwrap_or(SYSTEM_CA_BUNDLE);
                common.validation_context_type = Some(ValidationContextType::ValidationContext(
                    CertificateValidationContext {
                        trusted_ca: Some(file(ca)),
                        crl: tls.ca_crl.as_deref().map(file),
                        match_typed_subject_alt_names: tls
                            .subject_alt_names
                            .iter()
                            .map(|san| san_matcher(san))
                            .collect(),
                        ..Default::default()
                    },
                ));
            }
            let ctx = UpstreamTlsContext {
                common_tls_context: Some(common),
                sni: tls
                    .sni
                    .clone()
                    .or_else(|| default_sni.map(str::to_string))
                    .unwrap_or_default(),
                ..Default::default()
            };
            Some(TransportSocket {
                name: TLS_TRANSPORT_SOCKET.into(),
                config_type: Some(transport_socket::ConfigType::TypedConfig(any(&ctx))),
            })
        }
    }
}

/// ISTIO_MUTUAL: the workload certificate (`default`) and trust bundle (`ROOTCA`) over SDS, SNI
/// `outbound_.<port>_.<subset>_.<host>` and ALPN `istio-peer-exchange, istio`. Not built until rudder serves SDS;
/// plaintext keeps traffic flowing meanwhile.
pub fn istio_mutual() -> Option<TransportSocket> {
    None
}

fn file(path: &str) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::Filename(path.to_string())),
        ..Default::default()
    }
}

/// SPIFFE ids are URI SANs, IP literals IP SANs, anything else a DNS SAN.
fn san_matcher(san: &str) -> SubjectAltNameMatcher {
    let san_type = if san.contains("://") {
        SanType::Uri
    } else if san.parse::<std::net::IpAddr>().is_ok() {
        SanType::IpAddress
    } else {
        SanType::Dns
    };
    SubjectAltNameMatcher {
        san_type: san_type as i32,
        matcher: Some(StringMatcher {
            match_pattern: Some(MatchPattern::Exact(san.to_string())),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Wraps the cluster's transport socket (plaintext when there is none) so Envoy sends a PROXY protocol header
/// first (`trafficPolicy.proxyProtocol`).
pub fn with_proxy_protocol(
    inner: Option<TransportSocket>,
    version: Option<ProxyProtocolVersion>,
) -> TransportSocket {
    let inner = inner.unwrap_or_else(|| TransportSocket {
        name: "envoy.transport_sockets.raw_buffer".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(
            &RawBuffer::default(),
        ))),
    });
    let version = match version {
        Some(ProxyProtocolVersion::V2) => proxy_protocol_config::Version::V2,
        _ => proxy_protocol_config::Version::V1,
    };
    let wrapper = ProxyProtocolUpstreamTransport {
        config: Some(ProxyProtocolConfig {
            version: version as i32,
            ..Default::default()
        }),
        transport_socket: Some(inner),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.upstream_proxy_protocol".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(&wrapper))),
    }
}
