//! Gateway listener tests: servers merged per port, HTTP on RDS `http.<port>`, TLS PASSTHROUGH by SNI, TCP.

use super::*;

pub(super) const GATEWAYS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: ingress-1, namespace: istio-system, labels: {istio: ingressgateway}}
spec:
  containers:
  - name: istio-proxy
status: {phase: Running, podIP: 10.0.0.9}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: fruits, namespace: shop}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 18080, name: http, protocol: HTTP}
    hosts: [fruits.example.com]
  - port: {number: 18443, name: tls, protocol: TLS}
    hosts: [secure.example.com]
    tls: {mode: PASSTHROUGH}
  - port: {number: 18444, name: https, protocol: HTTPS}
    hosts: [terminated.example.com]
    tls: {mode: SIMPLE, credentialName: cert}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: juice, namespace: shop}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 18080, name: http2, protocol: HTTP2}
    hosts: [juice.example.com]
  - port: {number: 18443, name: tcp, protocol: TCP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: elsewhere, namespace: shop}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 19000, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: secure, namespace: shop}
spec:
  hosts: [secure.example.com]
  gateways: [fruits]
  tls:
  - match:
    - port: 18443
      sniHosts: [secure.example.com]
    route:
    - destination: {host: api.example.com, port: {number: 443}}
"#;

#[test]
fn gateway_servers_merge_per_port() {
    let snap = with(GATEWAYS);
    let scope = router(&snap, "istio-system", "ingress-1", &[]);
    let ls = listeners(&scope);
    let names: Vec<&str> = ls.iter().map(|l| l.name.as_str()).collect();
    // HTTPS SIMPLE waits for SDS; the egress gateway selects other pods.
    assert_eq!(names, ["0.0.0.0_18080", "0.0.0.0_18443"]);

    let http = find(&ls, "0.0.0.0_18080");
    assert_eq!(socket(http), ("0.0.0.0".into(), 18080));
    assert!(http.bind_to_port.is_none(), "gateway listeners bind");
    assert_eq!(http.filter_chains.len(), 1);
    let h = hcm_of(&http.filter_chains[0]);
    let Some(hcm::RouteSpecifier::Rds(rds)) = &h.route_specifier else {
        panic!("expected RDS")
    };
    assert_eq!(rds.route_config_name, "http.18080");
    assert_eq!(h.use_remote_address.map(|b| b.value), Some(true));
    assert_eq!(h.stat_prefix, "outbound_0.0.0.0_18080");
    assert_eq!(
        config_refs(http.metadata.as_ref()),
        [
            "/apis/networking.istio.io/v1/namespaces/shop/gateway/fruits",
            "/apis/networking.istio.io/v1/namespaces/shop/gateway/juice",
        ]
    );

    // 18443: PASSTHROUGH from `fruits` wins; juice's TCP server conflicts and is dropped.
    let tls = find(&ls, "0.0.0.0_18443");
    assert_eq!(
        listener_filter_names(tls),
        ["envoy.filters.listener.tls_inspector"]
    );
    assert_eq!(tls.filter_chains.len(), 1);
    let c = &tls.filter_chains[0];
    assert_eq!(
        c.filter_chain_match.as_ref().unwrap().server_names,
        ["secure.example.com"]
    );
    assert_eq!(tcp_dest(c), [("outbound|443||api.example.com".into(), 0)]);
    assert_eq!(
        config_refs(c.metadata.as_ref()),
        ["/apis/networking.istio.io/v1/namespaces/shop/virtual-service/secure"]
    );
}

#[test]
fn gateway_tcp_server_routes_by_virtual_service() {
    let snap = with(
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: db, namespace: shop}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 13306, name: tcp, protocol: TCP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db, namespace: shop}
spec:
  hosts: ["*"]
  gateways: [db]
  tcp:
  - match: [{port: 13306}]
    route:
    - destination: {host: mysql, port: {number: 3306}}
"#,
    );
    let scope = router(&snap, "istio-system", "gw", &[("istio", "ingressgateway")]);
    let ls = listeners(&scope);
    let l = find(&ls, "0.0.0.0_13306");
    assert_eq!(
        tcp_dest(&l.filter_chains[0]),
        [("outbound|3306||mysql.shop.svc.cluster.local".into(), 0)]
    );
    assert!(l.listener_filters.is_empty());
}

#[test]
fn routers_without_gateways_and_sidecars_get_no_gateway_listeners() {
    let snap = with(GATEWAYS);
    let scope = router(&snap, "istio-system", "other", &[("istio", "none")]);
    assert!(listeners(&scope).is_empty());
    let ls = sidecar_listeners(&snap);
    assert!(ls.iter().all(|l| l.name != "0.0.0.0_18080"));
}

#[test]
fn a_wildcard_sni_host_matches_any_name() {
    let snap = with(
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: tls-any, namespace: shop}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 18443, name: tls, protocol: TLS}
    hosts: ["shop/*"]
    tls: {mode: PASSTHROUGH}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: tls-any, namespace: shop}
spec:
  hosts: ["*"]
  gateways: [tls-any]
  tls:
  - match: [{sniHosts: ["*"]}]
    route:
    - destination: {host: api.example.com, port: {number: 443}}
"#,
    );
    let scope = router(&snap, "istio-system", "gw", &[("istio", "ingressgateway")]);
    let ls = listeners(&scope);
    let l = find(&ls, "0.0.0.0_18443");
    let m = l.filter_chains[0].filter_chain_match.as_ref().unwrap();
    assert!(m.server_names.is_empty(), "{m:?}");
    assert_eq!(
        tcp_dest(&l.filter_chains[0]),
        [("outbound|443||api.example.com".into(), 0)]
    );
}
