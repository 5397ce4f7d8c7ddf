//! Table tests for inbound mesh mTLS: `virtualInbound`'s chains per peer-authentication mode.

use envoy_types::pb::envoy::config::core::v3::TransportSocket;
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener, filter};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager as hcm,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    DownstreamTlsContext, common_tls_context::ValidationContextType,
    subject_alt_name_matcher::SanType,
};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use prost::Message;

use super::super::listeners;
use crate::model::Snapshot;
use crate::test_helpers::mesh::{sidecar, snapshot_from_yaml};

/// `web-1` in `shop`: HTTP port 8080 (Service `web` 80 → 8080), TCP port 5432 (Service `db`), and an
/// undeclared container port 7070.
const MESH: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec:
  serviceAccountName: web
  containers:
  - name: web
    ports: [{name: http, containerPort: 8080}, {containerPort: 5432}, {containerPort: 7070}]
status: {phase: Running, podIP: 10.0.0.5}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec:
  selector: {app: web}
  ports: [{name: tcp-db, port: 5432}]
"#;

fn pa(body: &str) -> String {
    format!(
        "{MESH}---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: pa, namespace: shop}}\nspec:\n{body}\n"
    )
}

fn virtual_inbound(snap: &Snapshot, mtls: bool) -> Listener {
    let mut scope = sidecar(snap, "shop", "web-1");
    scope.meta.mtls = mtls;
    listeners(&scope)
        .into_iter()
        .find(|l| l.name == "virtualInbound")
        .unwrap()
}

/// A chain summarised: (name, port, transport protocol, ALPN, terminates mTLS).
type Shape = (String, u32, String, Vec<String>, bool);

fn shape(c: &FilterChain) -> Shape {
    let m = c.filter_chain_match.clone().unwrap_or_default();
    (
        c.name.clone(),
        m.destination_port.map(|p| p.value).unwrap_or(0),
        m.transport_protocol,
        m.application_protocols,
        c.transport_socket.is_some(),
    )
}

fn chains_of_port(l: &Listener, port: u32) -> Vec<Shape> {
    l.filter_chains
        .iter()
        .map(shape)
        .filter(|s| s.1 == port)
        .collect()
}

fn s(name: &str, port: u32, transport: &str, alpn: &[&str], tls: bool) -> Shape {
    (
        name.to_string(),
        port,
        transport.to_string(),
        alpn.iter().map(|a| a.to_string()).collect(),
        tls,
    )
}

const ISTIO_ALPNS: [&str; 5] = [
    "istio",
    "istio-peer-exchange",
    "istio-http/1.0",
    "istio-http/1.1",
    "istio-h2",
];

fn downstream(socket: &TransportSocket) -> DownstreamTlsContext {
    assert_eq!(socket.name, "envoy.transport_sockets.tls");
    let Some(ConfigType::TypedConfig(any)) = &socket.config_type else {
        panic!("no typed config");
    };
    DownstreamTlsContext::decode(any.value.as_slice()).unwrap()
}

/// Envoy rejects a listener whose chains share a match.
fn assert_unique_matches(l: &Listener) {
    let mut seen = Vec::new();
    for c in &l.filter_chains {
        let m = c.filter_chain_match.clone().unwrap_or_default();
        assert!(!seen.contains(&m), "{}: duplicate match {m:?}", c.name);
        seen.push(m);
    }
}

fn has_tls_inspector(l: &Listener) -> bool {
    l.listener_filters
        .iter()
        .any(|f| f.name == "envoy.filters.listener.tls_inspector")
}

#[test]
fn strict_requires_mtls_everywhere() {
    let snap = snapshot_from_yaml(&pa("  mtls: {mode: STRICT}"));
    let l = virtual_inbound(&snap, true);
    assert_unique_matches(&l);
    assert_eq!(
        chains_of_port(&l, 8080),
        [s("0.0.0.0_8080", 8080, "tls", &[], true)]
    );
    assert_eq!(
        chains_of_port(&l, 5432),
        [s("0.0.0.0_5432", 5432, "tls", &[], true)]
    );
    assert!(has_tls_inspector(&l));
    assert!(l.continue_on_listener_filters_timeout);
    // Undeclared ports too: the catch-all terminates mTLS itself.
    let default = l.default_filter_chain.as_ref().unwrap();
    assert!(default.filter_chain_match.is_none());
    let ctx = downstream(default.transport_socket.as_ref().unwrap());
    assert_eq!(
        ctx.common_tls_context.unwrap().alpn_protocols,
        ["istio-peer-exchange", "h2", "http/1.1"]
    );

    // The HTTP chain's context: client certificate required, `default` presented, peers checked against
    // ROOTCA and the trust domain's SPIFFE prefix.
    let http = l
        .filter_chains
        .iter()
        .find(|c| c.name == "0.0.0.0_8080")
        .unwrap();
    let ctx = downstream(http.transport_socket.as_ref().unwrap());
    assert_eq!(ctx.require_client_certificate.map(|b| b.value), Some(true));
    let common = ctx.common_tls_context.unwrap();
    assert_eq!(common.alpn_protocols, ["h2", "http/1.1"]);
    assert_eq!(common.tls_certificate_sds_secret_configs[0].name, "default");
    let Some(ValidationContextType::CombinedValidationContext(v)) = common.validation_context_type
    else {
        panic!("no combined validation context");
    };
    assert_eq!(
        v.validation_context_sds_secret_config.unwrap().name,
        "ROOTCA"
    );
    let sans = v
        .default_validation_context
        .unwrap()
        .match_typed_subject_alt_names;
    assert_eq!(sans.len(), 1);
    assert_eq!(sans[0].san_type, SanType::Uri as i32);
    assert_eq!(
        sans[0].matcher.clone().unwrap().match_pattern,
        Some(MatchPattern::Prefix("spiffe://cluster.local/".into()))
    );

    // The application learns the peer: XFCC appended with the current client's URI.
    let Some(filter::ConfigType::TypedConfig(any)) = &http.filters[0].config_type else {
        panic!("no HCM");
    };
    let hcm_cfg = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
    assert_eq!(
        hcm_cfg.forward_client_cert_details,
        hcm::ForwardClientCertDetails::AppendForward as i32
    );
    assert!(hcm_cfg.set_current_client_cert_details.unwrap().uri);
}

#[test]
fn permissive_accepts_both() {
    // No policy at all is PERMISSIVE.
    let snap = snapshot_from_yaml(MESH);
    let l = virtual_inbound(&snap, true);
    assert_unique_matches(&l);
    assert_eq!(
        chains_of_port(&l, 8080),
        [
            s("0.0.0.0_8080", 8080, "tls", &ISTIO_ALPNS, true),
            s("0.0.0.0_8080", 8080, "raw_buffer", &[], false),
        ]
    );
    assert_eq!(
        chains_of_port(&l, 5432),
        [
            s("0.0.0.0_5432", 5432, "tls", &ISTIO_ALPNS, true),
            s("0.0.0.0_5432", 5432, "tls", &[], false),
            s("0.0.0.0_5432", 5432, "raw_buffer", &[], false),
        ]
    );
    // Mesh clients of undeclared ports: mTLS terminated by a port-less chain; the default stays plaintext.
    assert_eq!(
        chains_of_port(&l, 0),
        [s("virtualInbound", 0, "tls", &ISTIO_ALPNS, true)]
    );
    assert!(
        l.default_filter_chain
            .as_ref()
            .unwrap()
            .transport_socket
            .is_none()
    );
    assert!(has_tls_inspector(&l));
    // Whatever the chain, the same filters: the TLS and plaintext chains of a port reach the same cluster.
    let tcp: Vec<String> = l
        .filter_chains
        .iter()
        .filter(|c| c.name == "0.0.0.0_5432")
        .map(|c| {
            let Some(filter::ConfigType::TypedConfig(any)) = &c.filters[0].config_type else {
                panic!()
            };
            match TcpProxy::decode(any.value.as_slice())
                .unwrap()
                .cluster_specifier
            {
                Some(tcp_proxy::ClusterSpecifier::Cluster(c)) => c,
                other => panic!("{other:?}"),
            }
        })
        .collect();
    assert_eq!(tcp, ["inbound|5432||"; 3]);
}

#[test]
fn port_level_modes() {
    // STRICT namespace, DISABLE on the HTTP port and on an undeclared port, PERMISSIVE on the TCP port.
    let snap = snapshot_from_yaml(&format!(
        "{}---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: web, namespace: shop}}\nspec:\n  selector: {{matchLabels: {{app: web}}}}\n  portLevelMtls:\n    8080: {{mode: DISABLE}}\n    5432: {{mode: PERMISSIVE}}\n    9999: {{mode: DISABLE}}\n",
        pa("  mtls: {mode: STRICT}")
    ));
    let l = virtual_inbound(&snap, true);
    assert_unique_matches(&l);
    assert_eq!(
        chains_of_port(&l, 8080),
        [s("0.0.0.0_8080", 8080, "", &[], false)]
    );
    assert_eq!(chains_of_port(&l, 5432).len(), 3);
    assert_eq!(
        chains_of_port(&l, 7070),
        [s("0.0.0.0_7070", 7070, "tls", &[], true)]
    );
    assert_eq!(
        chains_of_port(&l, 9999),
        [s("virtualInbound", 9999, "", &[], false)]
    );
    assert!(
        l.default_filter_chain
            .as_ref()
            .unwrap()
            .transport_socket
            .is_some()
    );
}

#[test]
fn disable_and_plaintext_proxies_stay_plaintext() {
    let strict = snapshot_from_yaml(&pa("  mtls: {mode: STRICT}"));
    let disabled = snapshot_from_yaml(&pa("  mtls: {mode: DISABLE}"));
    for (case, l) in [
        (
            "proxy without identity under STRICT",
            virtual_inbound(&strict, false),
        ),
        ("DISABLE", virtual_inbound(&disabled, true)),
    ] {
        assert!(!has_tls_inspector(&l), "{case}");
        assert!(!l.continue_on_listener_filters_timeout, "{case}");
        for c in l.filter_chains.iter().chain(l.default_filter_chain.iter()) {
            assert!(c.transport_socket.is_none(), "{case}: {}", c.name);
            let m = c.filter_chain_match.clone().unwrap_or_default();
            assert!(
                m.transport_protocol.is_empty() && m.application_protocols.is_empty(),
                "{case}"
            );
        }
        assert_eq!(
            chains_of_port(&l, 8080),
            [s("0.0.0.0_8080", 8080, "", &[], false)],
            "{case}"
        );
    }
    // And a plaintext proxy's listener is exactly what it was before identity existed.
    let plain_pod = virtual_inbound(&snapshot_from_yaml(MESH), false);
    assert_eq!(virtual_inbound(&strict, false), plain_pod);
}
