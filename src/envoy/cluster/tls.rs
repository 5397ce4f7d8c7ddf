//! Upstream TLS of an outbound cluster, as istiod decides it:
//! - a DestinationRule's `tls`: DISABLE (plaintext), SIMPLE (verify the server) and MUTUAL (also present a
//!   client certificate) with certificates read by Envoy from files, or ISTIO_MUTUAL: the mesh certificate;
//! - no `tls` at all: **auto-mTLS** (`meshConfig.enableAutoMtls`): `transport_socket_matches` send mesh mTLS to
//!   endpoints labelled `tlsMode: istio` (those with a sidecar, see `envoy::endpoint`) and plaintext to the rest.
//!
//! Mesh mTLS (istiod's ISTIO_MUTUAL context): the workload certificate `default` and trust bundle `ROOTCA` over
//! SDS on the ADS stream, SNI `outbound_.<port>_.<subset>_.<host>`, ALPN `istio-peer-exchange, istio` (plus `h2`
//! for HTTP/2 clusters), and the server's SPIFFE id checked against the destination's service accounts.
//! Only proxies with an identity get it ([`crate::model::proxy::ProxyMeta::mtls`]): SDS is served to nobody
//! else, and a cluster waiting for a secret that never comes never warms. `trafficPolicy.proxyProtocol` wraps
//! whichever socket results.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::cluster::v3::cluster::TransportSocketMatch;
use envoy_types::pb::envoy::config::core::v3::{
    DataSource, ProxyProtocolConfig, TransportSocket, data_source, proxy_protocol_config,
    transport_socket,
};
use envoy_types::pb::envoy::extensions::transport_sockets::proxy_protocol::v3::ProxyProtocolUpstreamTransport;
use envoy_types::pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, SdsSecretConfig, SubjectAltNameMatcher,
    TlsCertificate, TlsParameters, UpstreamTlsContext,
    common_tls_context::{CombinedCertificateValidationContext, ValidationContextType},
    subject_alt_name_matcher::SanType,
    tls_parameters::TlsProtocol,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};

use super::{ClusterKind, OutboundTarget, ads_config_source, any};
use crate::config::istio::networking::{ClientTlsMode, ClientTlsSettings, ProxyProtocolVersion};
use crate::envoy::names::ClusterName;
use crate::model::Location;
use crate::model::peer_auth::{MtlsMode, namespace_mtls};
use crate::model::proxy::ProxyScope;
use crate::security::SpiffeId;
use crate::security::sds::{DEFAULT_SECRET, ROOT_SECRET};

/// Envoy's name for the TLS transport socket.
pub const TLS_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.tls";

/// The system trust bundle used when SIMPLE/MUTUAL name no `caCertificates`: istiod verifies against the
/// system roots by default (`caCertificates: system`), and this is where Debian/Ubuntu-based Envoy images keep them.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Envoy's name for the plaintext transport socket.
pub const RAW_BUFFER_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.raw_buffer";

/// ALPN of mesh mTLS from the client side: `istio` marks in-mesh traffic (the server's chains match on it) and
/// `istio-peer-exchange` announces metadata exchange, as istiod's sidecars send it.
pub const ALPN_IN_MESH: [&str; 2] = ["istio-peer-exchange", "istio"];
/// The same for HTTP/2 clusters.
pub const ALPN_IN_MESH_H2: [&str; 3] = ["istio-peer-exchange", "istio", "h2"];

/// `transport_socket_matches` names and the endpoint metadata value auto-mTLS keys on (istiod's).
pub const TLS_MODE_ISTIO_MATCH: &str = "tlsMode-istio";
pub const TLS_MODE_DISABLED_MATCH: &str = "tlsMode-disabled";

/// How an outbound cluster talks to its endpoints.
#[derive(Debug, Clone, PartialEq)]
pub enum UpstreamTls {
    /// Plaintext.
    Plaintext,
    /// One transport socket for every endpoint.
    Socket(TransportSocket),
    /// Auto-mTLS: per-endpoint sockets chosen by endpoint metadata (the first match wins).
    Matches(Vec<TransportSocketMatch>),
}

/// The upstream TLS of outbound cluster `t` for this proxy; `h2` says whether the cluster speaks HTTP/2
/// upstream (it advertises `h2` in the mesh ALPN then).
pub fn upstream_tls(
    scope: &ProxyScope<'_>,
    t: &OutboundTarget,
    h2: bool,
    what: &str,
) -> UpstreamTls {
    let mesh_sni = || istio_sni(&t.name);
    match t.policy.tls.as_ref() {
        Some(tls) if tls.mode == Some(ClientTlsMode::IstioMutual) => {
            if !scope.meta.mtls {
                tracing::debug!(
                    "{what}: ISTIO_MUTUAL, but proxy {}.{} has no identity (plaintext xDS); plaintext",
                    scope.meta.pod,
                    scope.meta.namespace
                );
                return UpstreamTls::Plaintext;
            }
            // A rule's own SNI and SANs win (useful through gateways); else the computed ones, as istiod.
            let sni = tls.sni.clone().unwrap_or_else(mesh_sni);
            let sans = if tls.subject_alt_names.is_empty() {
                service_sans(scope, t)
            } else {
                tls.subject_alt_names.clone()
            };
            UpstreamTls::Socket(istio_mutual(&sni, &sans, h2))
        }
        Some(tls) => {
            let sni = (!t.service.hostname.starts_with('*')).then_some(t.service.hostname.as_str());
            match transport_socket(Some(tls), sni, what) {
                Some(socket) => UpstreamTls::Socket(socket),
                None => UpstreamTls::Plaintext,
            }
        }
        None if auto_mtls_applies(scope, t) => UpstreamTls::Matches(vec![
            TransportSocketMatch {
                name: TLS_MODE_ISTIO_MATCH.into(),
                r#match: Some(tls_mode_istio()),
                transport_socket: Some(istio_mutual(&mesh_sni(), &service_sans(scope, t), h2)),
            },
            TransportSocketMatch {
                name: TLS_MODE_DISABLED_MATCH.into(),
                r#match: Some(Struct::default()),
                transport_socket: Some(raw_buffer()),
            },
        ]),
        None => UpstreamTls::Plaintext,
    }
}

/// Auto-mTLS needs: a proxy with identity, the mesh option on, an in-mesh destination that is not reached by
/// original destination (no endpoint metadata to match there), and a destination namespace whose peer
/// authentication does not DISABLE mTLS (istiod's `serviceMTLSMode` check).
fn auto_mtls_applies(scope: &ProxyScope<'_>, t: &OutboundTarget) -> bool {
    scope.meta.mtls
        && scope.snapshot.mesh.enable_auto_mtls
        && t.service.location != Location::MeshExternal
        && t.kind != ClusterKind::OriginalDst
        && namespace_mtls(scope.snapshot, &t.service.namespace) != MtlsMode::Disable
}

/// `{tlsMode: istio}`: the endpoint metadata of endpoints with a sidecar.
fn tls_mode_istio() -> Struct {
    Struct {
        fields: [(
            "tlsMode".to_string(),
            Value {
                kind: Some(Kind::StringValue("istio".into())),
            },
        )]
        .into(),
    }
}

/// istiod's SNI for mesh mTLS: `outbound_.<port>_.<subset>_.<host>` (its "DNS SRV" subset key).
pub fn istio_sni(name: &ClusterName) -> String {
    format!("outbound_.{}_.{}_.{}", name.port, name.subset, name.host)
}

/// The identities a mesh server of this cluster may present: the SPIFFE ids of the service accounts of the
/// service's endpoints (any port), plus the service's declared `subjectAltNames`; sorted, deduplicated.
pub fn service_sans(scope: &ProxyScope<'_>, t: &OutboundTarget) -> Vec<String> {
    let svc = &t.service;
    let trust_domain = &scope.snapshot.mesh.trust_domain;
    let mut sans: BTreeSet<String> = svc.subject_alt_names.iter().cloned().collect();
    for port in &svc.ports {
        for ep in scope.snapshot.registry.endpoints(svc, port.port) {
            if ep.service_account.is_empty() {
                continue;
            }
            let ns = if ep.namespace.is_empty() {
                &svc.namespace
            } else {
                &ep.namespace
            };
            sans.insert(SpiffeId::new(trust_domain, ns, &ep.service_account).to_string());
        }
    }
    sans.into_iter().collect()
}

/// An SDS reference to `name` over the ADS stream (no initial fetch timeout: the resource waits for its
/// secret instead of warming without it).
pub fn sds_secret(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_string(),
        sds_config: Some(ads_config_source()),
    }
}

/// TLS 1.2 to 1.3, as istiod's mesh contexts.
pub fn mesh_tls_params() -> TlsParameters {
    TlsParameters {
        tls_minimum_protocol_version: TlsProtocol::TlSv12 as i32,
        tls_maximum_protocol_version: TlsProtocol::TlSv13 as i32,
        ..Default::default()
    }
}

/// The common context of both ends of mesh mTLS: certificate `default`, peers validated against `ROOTCA`
/// and `sans`, `alpn`.
pub fn mesh_common_tls_context(
    sans: Vec<SubjectAltNameMatcher>,
    alpn: &[&str],
) -> CommonTlsContext {
    CommonTlsContext {
        tls_params: Some(mesh_tls_params()),
        tls_certificate_sds_secret_configs: vec![sds_secret(DEFAULT_SECRET)],
        validation_context_type: Some(ValidationContextType::CombinedValidationContext(
            CombinedCertificateValidationContext {
                default_validation_context: Some(CertificateValidationContext {
                    match_typed_subject_alt_names: sans,
                    ..Default::default()
                }),
                validation_context_sds_secret_config: Some(sds_secret(ROOT_SECRET)),
                ..Default::default()
            },
        )),
        alpn_protocols: alpn.iter().map(|a| a.to_string()).collect(),
        ..Default::default()
    }
}

/// The transport socket for `tls` when it is DISABLE, SIMPLE or MUTUAL (`None` for plaintext; ISTIO_MUTUAL is
/// [`upstream_tls`]'s). `default_sni` is used when the rule sets no `sni` (the service host, so TLS origination
/// to an external host presents the name the server expects).
pub fn transport_socket(
    tls: Option<&ClientTlsSettings>,
    default_sni: Option<&str>,
    what: &str,
) -> Option<TransportSocket> {
    let tls = tls?;
    match tls.mode.unwrap_or(ClientTlsMode::Disable) {
        ClientTlsMode::Disable | ClientTlsMode::IstioMutual => None,
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

/// ISTIO_MUTUAL: the workload certificate (`default`) and trust bundle (`ROOTCA`) over SDS, `sni`, ALPN
/// `istio-peer-exchange, istio` (+ `h2`), and the server's identity checked against `sans` (exact; none means
/// any identity the mesh root signed).
pub fn istio_mutual(sni: &str, sans: &[String], h2: bool) -> TransportSocket {
    let alpn: &[&str] = if h2 { &ALPN_IN_MESH_H2 } else { &ALPN_IN_MESH };
    let ctx = UpstreamTlsContext {
        common_tls_context: Some(mesh_common_tls_context(
            sans.iter().map(|s| san_matcher(s)).collect(),
            alpn,
        )),
        sni: sni.to_string(),
        ..Default::default()
    };
    TransportSocket {
        name: TLS_TRANSPORT_SOCKET.into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(&ctx))),
    }
}

/// The plaintext socket (auto-mTLS's `tlsMode-disabled` match, and what PROXY protocol wraps by default).
pub fn raw_buffer() -> TransportSocket {
    TransportSocket {
        name: RAW_BUFFER_TRANSPORT_SOCKET.into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(
            &RawBuffer::default(),
        ))),
    }
}

fn file(path: &str) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::Filename(path.to_string())),
        ..Default::default()
    }
}

/// A URI SAN matcher accepting any SPIFFE id of `trust_domain` (`spiffe://<trust-domain>/` prefix): what a
/// mesh server checks of its clients.
pub fn spiffe_trust_domain_matcher(trust_domain: &str) -> SubjectAltNameMatcher {
    SubjectAltNameMatcher {
        san_type: SanType::Uri as i32,
        matcher: Some(StringMatcher {
            match_pattern: Some(MatchPattern::Prefix(format!("spiffe://{trust_domain}/"))),
            ..Default::default()
        }),
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
    let inner = inner.unwrap_or_else(raw_buffer);
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

#[cfg(test)]
mod tests;
