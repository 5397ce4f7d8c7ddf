//! Table tests for upstream mesh mTLS: auto-mTLS socket matches, ISTIO_MUTUAL, DISABLE, SANs and SNI, and
//! nothing of it for proxies without identity.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::TransportSocket;
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    UpstreamTlsContext, common_tls_context::ValidationContextType,
    subject_alt_name_matcher::SanType,
};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::google::protobuf::value::Kind;
use prost::Message;

use super::super::clusters;
use crate::model::proxy::ProxyScope;
use crate::test_helpers::mesh::{router, sidecar, snapshot_from_yaml};

/// `client-1` (sa sleep) in `shop`; `web` (HTTP 80 → 8080, gRPC 9090) with two pods of service accounts `web`
/// and `web-canary` (v1/v2), `plain` in namespace `legacy`, and an external ServiceEntry.
const MESH: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: client-1, namespace: shop, labels: {app: client}}
spec:
  serviceAccountName: sleep
  containers: [{name: c}]
status: {phase: Running, podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web, version: v1}}
spec:
  serviceAccountName: web
  containers: [{name: w, ports: [{containerPort: 8080}, {containerPort: 9090}]}]
status: {phase: Running, podIP: 10.0.0.3}
---
apiVersion: v1
kind: Pod
metadata: {name: web-2, namespace: shop, labels: {app: web, version: v2}}
spec:
  serviceAccountName: web-canary
  containers: [{name: w, ports: [{containerPort: 8080}, {containerPort: 9090}]}]
status: {phase: Running, podIP: 10.0.0.4}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.3
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: grpc, port: 9090}
---
apiVersion: v1
kind: Pod
metadata: {name: plain-1, namespace: legacy, labels: {app: plain}}
spec:
  containers: [{name: p, ports: [{containerPort: 80}]}]
status: {phase: Running, podIP: 10.0.1.3}
---
apiVersion: v1
kind: Service
metadata: {name: plain, namespace: legacy}
spec:
  clusterIP: 10.96.1.3
  selector: {app: plain}
  ports: [{name: http, port: 80}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: shop}
spec:
  hosts: [api.example.com]
  location: MESH_EXTERNAL
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: DNS
"#;

const WEB: &str = "web.shop.svc.cluster.local";

fn mtls_sidecar<'a>(snap: &'a crate::model::Snapshot) -> ProxyScope<'a> {
    let mut scope = sidecar(snap, "shop", "client-1");
    scope.meta.mtls = true;
    scope
}

fn cluster(list: &[Cluster], name: &str) -> Cluster {
    list.iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no cluster {name}"))
        .clone()
}

fn upstream(socket: &TransportSocket) -> UpstreamTlsContext {
    assert_eq!(socket.name, "envoy.transport_sockets.tls");
    let Some(ConfigType::TypedConfig(any)) = &socket.config_type else {
        panic!("no typed config");
    };
    UpstreamTlsContext::decode(any.value.as_slice()).unwrap()
}

/// (sni, alpn, SAN exact URIs, certificate secret, validation secret) of a mesh context.
fn mesh_ctx(ctx: &UpstreamTlsContext) -> (String, Vec<String>, Vec<String>, String, String) {
    let common = ctx.common_tls_context.clone().unwrap();
    let Some(ValidationContextType::CombinedValidationContext(combined)) =
        common.validation_context_type
    else {
        panic!("no combined validation context");
    };
    let sans = combined
        .default_validation_context
        .unwrap()
        .match_typed_subject_alt_names
        .iter()
        .map(|m| {
            assert_eq!(m.san_type, SanType::Uri as i32);
            match m.matcher.as_ref().unwrap().match_pattern.as_ref().unwrap() {
                MatchPattern::Exact(s) => s.clone(),
                other => panic!("not exact: {other:?}"),
            }
        })
        .collect();
    (
        ctx.sni.clone(),
        common.alpn_protocols.clone(),
        sans,
        common.tls_certificate_sds_secret_configs[0].name.clone(),
        combined.validation_context_sds_secret_config.unwrap().name,
    )
}

fn sans_web() -> Vec<String> {
    vec![
        "spiffe://cluster.local/ns/shop/sa/web".to_string(),
        "spiffe://cluster.local/ns/shop/sa/web-canary".to_string(),
    ]
}

#[test]
fn auto_mtls_matches_endpoints_with_a_sidecar() {
    let snap = snapshot_from_yaml(MESH);
    let list = clusters(&mtls_sidecar(&snap));
    let c = cluster(&list, &format!("outbound|80||{WEB}"));
    assert!(c.transport_socket.is_none(), "auto-mTLS uses matches only");
    let names: Vec<&str> = c
        .transport_socket_matches
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    assert_eq!(names, ["tlsMode-istio", "tlsMode-disabled"]);
    let istio = &c.transport_socket_matches[0];
    let m = istio.r#match.as_ref().unwrap();
    assert_eq!(m.fields.len(), 1);
    assert!(matches!(&m.fields["tlsMode"].kind, Some(Kind::StringValue(v)) if v == "istio"));
    let (sni, alpn, sans, cert, root) =
        mesh_ctx(&upstream(istio.transport_socket.as_ref().unwrap()));
    assert_eq!(sni, format!("outbound_.80_._.{WEB}"));
    assert_eq!(alpn, ["istio-peer-exchange", "istio"]);
    assert_eq!(sans, sans_web());
    assert_eq!((cert.as_str(), root.as_str()), ("default", "ROOTCA"));
    let plain = &c.transport_socket_matches[1];
    assert!(plain.r#match.as_ref().unwrap().fields.is_empty());
    assert_eq!(
        plain.transport_socket.as_ref().unwrap().name,
        "envoy.transport_sockets.raw_buffer"
    );

    // gRPC port: HTTP/2 upstream advertises h2 in the mesh ALPN.
    let grpc = cluster(&list, &format!("outbound|9090||{WEB}"));
    let (sni, alpn, ..) = mesh_ctx(&upstream(
        grpc.transport_socket_matches[0]
            .transport_socket
            .as_ref()
            .unwrap(),
    ));
    assert_eq!(sni, format!("outbound_.9090_._.{WEB}"));
    assert_eq!(alpn, ["istio-peer-exchange", "istio", "h2"]);

    // External services and the catch-alls never get mesh TLS.
    let ext = cluster(&list, "outbound|443||api.example.com");
    assert!(ext.transport_socket.is_none() && ext.transport_socket_matches.is_empty());
    for c in &list {
        if !c.name.starts_with("outbound|") {
            assert!(c.transport_socket_matches.is_empty(), "{}", c.name);
        }
    }
}

const ISTIO_MUTUAL_MESH_WIDE: &str = r#"
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: default, namespace: istio-system}
spec:
  host: "*.local"
  trafficPolicy:
    tls: {mode: ISTIO_MUTUAL}
"#;

#[test]
fn destination_rule_tls_modes() {
    let subsets = r#"
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: shop}
spec:
  host: web
  trafficPolicy:
    portLevelSettings:
    - port: {number: 9090}
      tls: {mode: DISABLE}
  subsets:
  - {name: v1, labels: {version: v1}}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      tls: {mode: ISTIO_MUTUAL, sni: canary.example, subjectAltNames: ["spiffe://cluster.local/ns/shop/sa/web-canary"]}
"#;
    // The book's CL 101: ISTIO_MUTUAL for everything under *.local.
    let snap = snapshot_from_yaml(&format!("{MESH}{ISTIO_MUTUAL_MESH_WIDE}"));
    let list = clusters(&mtls_sidecar(&snap));
    for name in [
        format!("outbound|80||{WEB}"),
        "outbound|80||plain.legacy.svc.cluster.local".to_string(),
    ] {
        let c = cluster(&list, &name);
        assert!(c.transport_socket_matches.is_empty(), "{name}");
        let (sni, alpn, ..) = mesh_ctx(&upstream(c.transport_socket.as_ref().unwrap()));
        assert!(sni.starts_with("outbound_.80_._."), "{sni}");
        assert_eq!(alpn, ["istio-peer-exchange", "istio"]);
    }

    // A rule in the service's namespace: port-level DISABLE beats auto-mTLS; subsets inherit auto-mTLS or set
    // their own ISTIO_MUTUAL (SNI and SANs from the rule).
    let snap = snapshot_from_yaml(&format!("{MESH}{subsets}"));
    let list = clusters(&mtls_sidecar(&snap));
    let grpc = cluster(&list, &format!("outbound|9090||{WEB}"));
    assert!(grpc.transport_socket.is_none() && grpc.transport_socket_matches.is_empty());
    let grpc_v1 = cluster(&list, &format!("outbound|9090|v1|{WEB}"));
    assert!(grpc_v1.transport_socket.is_none() && grpc_v1.transport_socket_matches.is_empty());
    let v1 = cluster(&list, &format!("outbound|80|v1|{WEB}"));
    let (sni, _, sans, ..) = mesh_ctx(&upstream(
        v1.transport_socket_matches[0]
            .transport_socket
            .as_ref()
            .unwrap(),
    ));
    assert_eq!(sni, format!("outbound_.80_.v1_.{WEB}"));
    assert_eq!(sans, sans_web());
    let v2 = cluster(&list, &format!("outbound|80|v2|{WEB}"));
    let (sni, _, sans, ..) = mesh_ctx(&upstream(v2.transport_socket.as_ref().unwrap()));
    assert_eq!(sni, "canary.example");
    assert_eq!(sans, ["spiffe://cluster.local/ns/shop/sa/web-canary"]);
}

#[test]
fn no_mesh_tls_without_identity_or_when_turned_off() {
    let with_dr = snapshot_from_yaml(&format!("{MESH}{ISTIO_MUTUAL_MESH_WIDE}"));
    let plain_proxy = clusters(&sidecar(&with_dr, "shop", "client-1"));
    let plain = snapshot_from_yaml(MESH);
    let no_auto = snapshot_from_yaml(&format!(
        "{MESH}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: istio, namespace: istio-system}}\ndata:\n  mesh: |\n    enableAutoMtls: false\n"
    ));
    let ns_disabled = snapshot_from_yaml(&format!(
        "{MESH}---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: default, namespace: shop}}\nspec:\n  mtls: {{mode: DISABLE}}\n"
    ));
    let cases = [
        ("plaintext proxy, ISTIO_MUTUAL rule", plain_proxy),
        (
            "plaintext proxy, auto-mTLS",
            clusters(&sidecar(&plain, "shop", "client-1")),
        ),
        ("enableAutoMtls: false", clusters(&mtls_sidecar(&no_auto))),
        (
            "destination namespace DISABLE",
            clusters(&mtls_sidecar(&ns_disabled)),
        ),
    ];
    for (case, list) in cases {
        let c = cluster(&list, &format!("outbound|80||{WEB}"));
        assert!(
            c.transport_socket.is_none() && c.transport_socket_matches.is_empty(),
            "{case}: {c:?}"
        );
    }
    // The DISABLE namespace only turns off auto-mTLS towards itself.
    let list = clusters(&mtls_sidecar(&ns_disabled));
    let other = cluster(&list, "outbound|80||plain.legacy.svc.cluster.local");
    assert_eq!(other.transport_socket_matches.len(), 2);
}

#[test]
fn gateways_with_identity_get_auto_mtls() {
    let snap = snapshot_from_yaml(MESH);
    let mut gw = router(
        &snap,
        "istio-system",
        "ingress-1",
        &[("istio", "ingressgateway")],
    );
    assert!(
        clusters(&gw)
            .iter()
            .all(|c| c.transport_socket_matches.is_empty())
    );
    gw.meta.mtls = true;
    let c = cluster(&clusters(&gw), &format!("outbound|80||{WEB}"));
    assert_eq!(c.transport_socket_matches.len(), 2);
}
