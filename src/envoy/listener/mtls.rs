//! Inbound mesh mTLS on `virtualInbound`: which filter chains a workload port gets for its peer-authentication
//! mode ([`crate::model::peer_auth`]), and the server-side TLS context (istiod's `BuildInboundTLS`).
//!
//! Per port, as istiod matches them (all named `0.0.0.0_<port>`, matched on the original destination port):
//! ```text
//!  STRICT      transport tls                              → mTLS terminated, then HCM / tcp_proxy
//!  PERMISSIVE  transport tls, ALPN istio, istio-peer-exchange,
//!              istio-http/1.0, istio-http/1.1, istio-h2   → mTLS terminated (a mesh client)
//!              transport tls, any ALPN (TCP ports only)   → passed through untouched (the app's own TLS)
//!              transport raw_buffer                       → plaintext
//!  DISABLE     (port only)                                → plaintext, as for proxies without identity
//! ```
//! The `tls_inspector` listener filter sets the transport protocol and ALPN these chains match on. The
//! terminating chains require a client certificate issued by the mesh root (`ROOTCA`) with a SPIFFE id of the
//! trust domain, present the workload certificate (`default`), and the HTTP connection manager (XFCC
//! `APPEND_FORWARD` + `set_current_client_cert_details`) hands the peer's `URI=spiffe://…` to the application
//! in `x-forwarded-client-cert`.

use envoy_types::pb::envoy::config::core::v3::{TransportSocket, transport_socket};
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, FilterChainMatch};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext;

use super::filters::{any, bool_value};
use crate::envoy::cluster::tls::{
    TLS_TRANSPORT_SOCKET, mesh_common_tls_context, spiffe_trust_domain_matcher,
};
use crate::model::peer_auth::MtlsMode;
use crate::model::proxy::ProxyScope;

/// `transport_protocol` the tls_inspector reports for TLS, and the default for everything else.
pub const TRANSPORT_TLS: &str = "tls";
pub const TRANSPORT_RAW_BUFFER: &str = "raw_buffer";

/// ALPN values mesh clients send (istiod's `allIstioMtlsALPNs`): PERMISSIVE chains tell mesh mTLS from an
/// application's own TLS by them.
pub const ISTIO_MTLS_ALPNS: [&str; 5] = [
    "istio",
    "istio-peer-exchange",
    "istio-http/1.0",
    "istio-http/1.1",
    "istio-h2",
];
/// ALPN the server offers on HTTP chains: never `istio`, which would hide the real protocol.
const SERVER_ALPN_HTTP: [&str; 2] = ["h2", "http/1.1"];
/// ALPN the server offers on TCP chains (metadata exchange first, as istiod).
const SERVER_ALPN_TCP: [&str; 3] = ["istio-peer-exchange", "h2", "http/1.1"];

/// One filter chain variant of a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainOption {
    /// Transport protocol to match; empty matches any.
    pub transport_protocol: &'static str,
    /// ALPN to match; empty matches any.
    pub alpn: &'static [&'static str],
    /// Whether the chain terminates mesh mTLS.
    pub terminate_mtls: bool,
}

const STRICT: &[ChainOption] = &[ChainOption {
    transport_protocol: TRANSPORT_TLS,
    alpn: &[],
    terminate_mtls: true,
}];
const MESH_MTLS: ChainOption = ChainOption {
    transport_protocol: TRANSPORT_TLS,
    alpn: &ISTIO_MTLS_ALPNS,
    terminate_mtls: true,
};
const PLAINTEXT: ChainOption = ChainOption {
    transport_protocol: TRANSPORT_RAW_BUFFER,
    alpn: &[],
    terminate_mtls: false,
};
const PERMISSIVE_HTTP: &[ChainOption] = &[MESH_MTLS, PLAINTEXT];
const PERMISSIVE_TCP: &[ChainOption] = &[
    MESH_MTLS,
    ChainOption {
        transport_protocol: TRANSPORT_TLS,
        alpn: &[],
        terminate_mtls: false,
    },
    PLAINTEXT,
];
const DISABLE: &[ChainOption] = &[ChainOption {
    transport_protocol: "",
    alpn: &[],
    terminate_mtls: false,
}];

/// The chain variants of a port in `mode` (HTTP ports need no pass-through TLS chain: they are declared HTTP).
pub fn chain_options(mode: MtlsMode, http: bool) -> &'static [ChainOption] {
    match (mode, http) {
        (MtlsMode::Strict, _) => STRICT,
        (MtlsMode::Permissive, true) => PERMISSIVE_HTTP,
        (MtlsMode::Permissive, false) => PERMISSIVE_TCP,
        (MtlsMode::Disable, _) => DISABLE,
    }
}

/// Copies of `base` (its filters and destination port match) for each variant of `mode`: match fields and the
/// TLS transport socket filled in.
pub fn chains_for_mode(
    scope: &ProxyScope<'_>,
    base: FilterChain,
    mode: MtlsMode,
    http: bool,
) -> Vec<FilterChain> {
    chain_options(mode, http)
        .iter()
        .map(|opt| {
            let mut chain = base.clone();
            let fcm = chain
                .filter_chain_match
                .get_or_insert_with(FilterChainMatch::default);
            fcm.transport_protocol = opt.transport_protocol.to_string();
            fcm.application_protocols = opt.alpn.iter().map(|a| a.to_string()).collect();
            if opt.terminate_mtls {
                chain.transport_socket = Some(downstream_mtls(scope, http));
            }
            chain
        })
        .collect()
}

/// Whether any of the chains matches on what the tls_inspector finds out.
pub fn needs_tls_inspector(chains: &[FilterChain]) -> bool {
    chains.iter().any(|c| {
        c.filter_chain_match.as_ref().is_some_and(|m| {
            !m.transport_protocol.is_empty() || !m.application_protocols.is_empty()
        })
    })
}

/// The server side of mesh mTLS: a client certificate is required and must chain to `ROOTCA` with a SPIFFE
/// id of the mesh's trust domain (or one of its aliases); the workload presents `default`.
pub fn downstream_mtls(scope: &ProxyScope<'_>, http: bool) -> TransportSocket {
    let mesh = &scope.snapshot.mesh;
    let sans = std::iter::once(&mesh.trust_domain)
        .chain(mesh.trust_domain_aliases.iter())
        .map(|td| spiffe_trust_domain_matcher(td))
        .collect();
    let alpn: &[&str] = if http {
        &SERVER_ALPN_HTTP
    } else {
        &SERVER_ALPN_TCP
    };
    let ctx = DownstreamTlsContext {
        common_tls_context: Some(mesh_common_tls_context(sans, alpn)),
        require_client_certificate: bool_value(true),
        ..Default::default()
    };
    TransportSocket {
        name: TLS_TRANSPORT_SOCKET.to_string(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(&ctx))),
    }
}

#[cfg(test)]
mod tests;
