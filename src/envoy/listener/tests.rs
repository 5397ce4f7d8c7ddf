//! Table tests for the listener generator: YAML in, Listener protos out.

use envoy_types::pb::envoy::config::core::v3::{address, socket_address};
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{route, route_action, route_match};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager as hcm,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::google::protobuf::value::Kind as ValueKind;
use prost::Message;

use super::listeners;
use crate::model::Snapshot;
use crate::test_helpers::mesh::{objects_from_yaml, router, sidecar, snapshot_from_yaml};
use crate::test_helpers::named::find;
use gateway::GATEWAYS;

mod gateway;

/// A namespace `shop` with the sidecar pod `app-1` (10.0.0.5), HTTP, TCP and mixed services, and two
/// ServiceEntries (TLS by DNS without address, Mongo on a CIDR).
const MESH: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: app-1, namespace: shop, labels: {app: app, version: v1}}
spec:
  containers:
  - name: app
    ports:
    - {name: http-web, containerPort: 8080}
    - {name: db, containerPort: 5432}
    - {name: grpc-admin, containerPort: 9090}
    - {containerPort: 7070}
status: {phase: Running, podIP: 10.0.0.5}
---
apiVersion: v1
kind: Service
metadata: {name: app, namespace: shop}
spec:
  clusterIP: 10.96.0.5
  selector: {app: app}
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: tcp-db, port: 5432, targetPort: db}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  selector: {app: reviews}
  ports:
  - {name: http, port: 9080}
---
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: shop}
spec:
  clusterIP: 10.96.0.11
  selector: {app: ratings}
  ports:
  - {name: http-api, port: 9080}
---
apiVersion: v1
kind: Service
metadata: {name: legacy, namespace: shop}
spec:
  clusterIP: 10.96.0.30
  selector: {app: legacy}
  ports:
  - {name: tcp-legacy, port: 9080}
---
apiVersion: v1
kind: Service
metadata: {name: mysql, namespace: shop}
spec:
  clusterIP: 10.96.0.20
  selector: {app: mysql}
  ports:
  - {name: tcp-mysql, port: 3306}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: example-api, namespace: shop}
spec:
  hosts: [api.example.com]
  location: MESH_EXTERNAL
  ports:
  - {number: 443, name: https, protocol: TLS}
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: mongo, namespace: shop}
spec:
  hosts: [mongo.internal]
  addresses: [192.168.0.0/16]
  location: MESH_EXTERNAL
  ports:
  - {number: 27017, name: mongo, protocol: MONGO}
  resolution: NONE
"#;

fn with(extra: &str) -> Snapshot {
    snapshot_from_yaml(&format!("{MESH}\n---\n{extra}"))
}

fn sidecar_listeners(snap: &Snapshot) -> Vec<Listener> {
    listeners(&sidecar(snap, "shop", "app-1"))
}

fn chain<'a>(l: &'a Listener, name: &str) -> &'a FilterChain {
    l.filter_chains
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| {
            panic!(
                "{}: no chain {name}; have {:?}",
                l.name,
                l.filter_chains.iter().map(|c| &c.name).collect::<Vec<_>>()
            )
        })
}

fn socket(l: &Listener) -> (String, u32) {
    match l.address.as_ref().and_then(|a| a.address.as_ref()) {
        Some(address::Address::SocketAddress(s)) => match s.port_specifier {
            Some(socket_address::PortSpecifier::PortValue(p)) => (s.address.clone(), p),
            _ => panic!("no port"),
        },
        _ => panic!("no socket address"),
    }
}

fn typed<M: Message + Default>(c: &FilterChain, filter_name: &str) -> M {
    let f = c
        .filters
        .iter()
        .find(|f| f.name == filter_name)
        .unwrap_or_else(|| panic!("chain {:?} has no {filter_name}", c.name));
    match &f.config_type {
        Some(filter::ConfigType::TypedConfig(any)) => M::decode(any.value.as_slice()).unwrap(),
        _ => panic!("untyped filter"),
    }
}

fn hcm_of(c: &FilterChain) -> HttpConnectionManager {
    typed(c, "envoy.filters.network.http_connection_manager")
}

fn tcp_of(c: &FilterChain) -> TcpProxy {
    typed(c, "envoy.filters.network.tcp_proxy")
}

/// The tcp_proxy's destinations as (cluster, weight); a single cluster has weight 0.
fn tcp_dest(c: &FilterChain) -> Vec<(String, u32)> {
    match tcp_of(c).cluster_specifier {
        Some(tcp_proxy::ClusterSpecifier::Cluster(n)) => vec![(n, 0)],
        Some(tcp_proxy::ClusterSpecifier::WeightedClusters(w)) => {
            w.clusters.into_iter().map(|c| (c.name, c.weight)).collect()
        }
        None => panic!("no cluster"),
    }
}

fn default_cluster(l: &Listener) -> String {
    let c = l.default_filter_chain.as_ref().expect("default chain");
    tcp_dest(c).remove(0).0
}

fn dest_port(c: &FilterChain) -> Option<u32> {
    c.filter_chain_match
        .as_ref()
        .and_then(|m| m.destination_port.as_ref())
        .map(|p| p.value)
}

/// `filter_metadata.istio.config` as strings.
fn config_refs(md: Option<&envoy_types::pb::envoy::config::core::v3::Metadata>) -> Vec<String> {
    let Some(v) = md
        .and_then(|m| m.filter_metadata.get("istio"))
        .and_then(|s| s.fields.get("config"))
    else {
        return Vec::new();
    };
    match &v.kind {
        Some(ValueKind::StringValue(s)) => vec![s.clone()],
        Some(ValueKind::ListValue(l)) => l
            .values
            .iter()
            .filter_map(|v| match &v.kind {
                Some(ValueKind::StringValue(s)) => Some(s.clone()),
                _ => None,
            })
            .collect(),
        _ => panic!("unexpected metadata {v:?}"),
    }
}

fn listener_filter_names(l: &Listener) -> Vec<&str> {
    l.listener_filters.iter().map(|f| f.name.as_str()).collect()
}

#[test]
fn sidecar_gets_istio_listener_names_sorted() {
    let snap = with("");
    let ls = sidecar_listeners(&snap);
    let names: Vec<&str> = ls.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "0.0.0.0_27017",
            "0.0.0.0_443",
            "0.0.0.0_80",
            "0.0.0.0_9080",
            "10.96.0.20_3306",
            "10.96.0.30_9080",
            "10.96.0.5_5432",
            "virtualInbound",
            "virtualOutbound",
        ]
    );
    // Only the capture listeners bind; the per-port ones receive hand-offs.
    for l in &ls {
        let bound = l.bind_to_port.as_ref().is_none_or(|b| b.value);
        assert_eq!(
            bound,
            l.name.starts_with("virtual"),
            "{} bind_to_port",
            l.name
        );
    }
}

#[test]
fn virtual_outbound_passes_through_under_allow_any() {
    let snap = with("");
    let ls = sidecar_listeners(&snap);
    let l = find(&ls, "virtualOutbound");
    assert_eq!(socket(l), ("0.0.0.0".into(), 15001));
    assert_eq!(l.use_original_dst.as_ref().map(|b| b.value), Some(true));
    assert_eq!(default_cluster(l), "PassthroughCluster");
    assert_eq!(
        l.default_filter_chain.as_ref().unwrap().name,
        "PassthroughFilterChain"
    );
    // Connections to 15001 itself would loop.
    let loop_guard = chain(l, "virtualOutbound-blackhole");
    assert_eq!(dest_port(loop_guard), Some(15001));
    assert_eq!(tcp_dest(loop_guard), [("BlackHoleCluster".into(), 0)]);
    assert!(config_refs(l.metadata.as_ref()).is_empty());
}

#[test]
fn registry_only_blackholes_unknown_destinations() {
    let mesh_wide = with(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    outboundTrafficPolicy:
      mode: REGISTRY_ONLY
"#,
    );
    let ls = sidecar_listeners(&mesh_wide);
    assert_eq!(
        default_cluster(find(&ls, "virtualOutbound")),
        "BlackHoleCluster"
    );
    // Wildcard TCP/TLS listeners fall through the same way.
    assert_eq!(
        default_cluster(find(&ls, "0.0.0.0_443")),
        "BlackHoleCluster"
    );

    // A Sidecar resource overrides the mesh default and is blamed for the listener.
    let by_sidecar = with(
        r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: shop}
spec:
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
"#,
    );
    let ls = sidecar_listeners(&by_sidecar);
    let l = find(&ls, "virtualOutbound");
    assert_eq!(default_cluster(l), "BlackHoleCluster");
    assert_eq!(
        config_refs(l.metadata.as_ref()),
        ["/apis/networking.istio.io/v1/namespaces/shop/sidecar/default"]
    );
}

#[test]
fn http_port_listener_uses_rds_and_istio_hcm_settings() {
    let snap = with("");
    let ls = sidecar_listeners(&snap);
    let l = find(&ls, "0.0.0.0_9080");
    assert_eq!(socket(l), ("0.0.0.0".into(), 9080));
    assert_eq!(l.bind_to_port.as_ref().map(|b| b.value), Some(false));
    assert_eq!(l.filter_chains.len(), 1);
    let h = hcm_of(&l.filter_chains[0]);
    assert_eq!(h.stat_prefix, "outbound_0.0.0.0_9080");
    match &h.route_specifier {
        Some(hcm::RouteSpecifier::Rds(rds)) => {
            assert_eq!(rds.route_config_name, "9080");
            assert!(matches!(
                rds.config_source.as_ref().unwrap().config_source_specifier,
                Some(envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier::Ads(_))
            ));
        }
        other => panic!("expected RDS, got {other:?}"),
    }
    assert_eq!(h.server_name, "istio-envoy");
    assert_eq!(h.generate_request_id.map(|b| b.value), Some(true));
    assert_eq!(h.use_remote_address.map(|b| b.value), Some(false));
    assert_eq!(h.normalize_path.map(|b| b.value), Some(true));
    let filters: Vec<&str> = h.http_filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        filters,
        [
            "envoy.filters.http.fault",
            "envoy.filters.http.cors",
            "envoy.filters.http.router"
        ]
    );
    // Tracing headers pass through untouched.
    assert!(h.internal_address_config.is_none());
    assert!(
        h.access_log.is_empty(),
        "no access log without accessLogFile"
    );
}

#[test]
fn access_log_follows_mesh_config() {
    let snap = with(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    accessLogFile: /dev/stdout
"#,
    );
    let ls = sidecar_listeners(&snap);
    let h = hcm_of(&find(&ls, "0.0.0.0_9080").filter_chains[0]);
    assert_eq!(h.access_log.len(), 1);
    assert_eq!(h.access_log[0].name, "envoy.access_loggers.file");
    let file: envoy_types::pb::envoy::extensions::access_loggers::file::v3::FileAccessLog = match &h
        .access_log[0]
        .config_type
    {
        Some(
            envoy_types::pb::envoy::config::accesslog::v3::access_log::ConfigType::TypedConfig(a),
        ) => Message::decode(a.value.as_slice()).unwrap(),
        _ => panic!("untyped access log"),
    };
    assert_eq!(file.path, "/dev/stdout");
    // TCP proxies log too.
    let tcp = tcp_of(&find(&ls, "10.96.0.20_3306").filter_chains[0]);
    assert_eq!(tcp.access_log.len(), 1);
}

#[test]
fn tcp_services_get_vip_listeners_and_http_wins_the_wildcard() {
    let snap = with("");
    let ls = sidecar_listeners(&snap);
    let l = find(&ls, "10.96.0.20_3306");
    assert_eq!(socket(l), ("10.96.0.20".into(), 3306));
    assert_eq!(l.filter_chains.len(), 1);
    assert_eq!(
        tcp_dest(&l.filter_chains[0]),
        [("outbound|3306||mysql.shop.svc.cluster.local".into(), 0)]
    );
    assert_eq!(
        tcp_of(&l.filter_chains[0]).stat_prefix,
        "outbound|3306||mysql.shop.svc.cluster.local"
    );
    assert!(
        l.default_filter_chain.is_none(),
        "a VIP listener has no fallthrough"
    );
    // legacy shares port 9080 with HTTP services: it keeps its own VIP listener.
    let legacy = find(&ls, "10.96.0.30_9080");
    assert_eq!(
        tcp_dest(&legacy.filter_chains[0]),
        [("outbound|9080||legacy.shop.svc.cluster.local".into(), 0)]
    );
    assert!(
        hcm_of(&find(&ls, "0.0.0.0_9080").filter_chains[0])
            .stat_prefix
            .ends_with("9080")
    );
}

const MYSQL_TCP_VS: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: mysql-split, namespace: shop}
spec:
  hosts: [mysql]
  tcp:
  - match:
    - port: 3306
      sourceLabels: {app: other}
    route:
    - destination: {host: mysql, subset: never}
  - match:
    - port: 3306
      destinationSubnets: [10.96.0.20/32]
    - port: 9999
    route:
    - destination: {host: mysql, subset: v1}
      weight: 80
    - destination: {host: mysql, subset: v2}
      weight: 20
  - route:
    - destination: {host: mysql, subset: v3, port: {number: 3306}}
"#;

#[test]
fn tcp_routes_become_chains_with_subnets_and_weights() {
    let snap = with(MYSQL_TCP_VS);
    let ls = sidecar_listeners(&snap);
    let l = find(&ls, "10.96.0.20_3306");
    let names: Vec<&str> = l.filter_chains.iter().map(|c| c.name.as_str()).collect();
    // Rule 0's sourceLabels don't match this pod; rule 1's second match is for another port.
    assert_eq!(
        names,
        ["tcp-shop/mysql-split-1-0", "tcp-shop/mysql-split-2"]
    );
    let split = &l.filter_chains[0];
    let m = split.filter_chain_match.as_ref().unwrap();
    assert_eq!(m.prefix_ranges.len(), 1);
    assert_eq!(m.prefix_ranges[0].address_prefix, "10.96.0.20");
    assert_eq!(m.prefix_ranges[0].prefix_len.as_ref().unwrap().value, 32);
    assert_eq!(
        tcp_dest(split),
        [
            ("outbound|3306|v1|mysql.shop.svc.cluster.local".into(), 80),
            ("outbound|3306|v2|mysql.shop.svc.cluster.local".into(), 20),
        ]
    );
    assert_eq!(
        tcp_dest(&l.filter_chains[1]),
        [("outbound|3306|v3|mysql.shop.svc.cluster.local".into(), 0)]
    );
    for c in &l.filter_chains {
        assert_eq!(
            config_refs(c.metadata.as_ref()),
            ["/apis/networking.istio.io/v1/namespaces/shop/virtual-service/mysql-split"]
        );
    }
}

#[test]
fn source_labels_that_match_select_the_rule() {
    let snap = with(&MYSQL_TCP_VS.replace("app: other", "app: app"));
    let ls = sidecar_listeners(&snap);
    let l = find(&ls, "10.96.0.20_3306");
    assert_eq!(l.filter_chains[0].name, "tcp-shop/mysql-split-0-0");
    assert_eq!(
        tcp_dest(&l.filter_chains[0]),
        [("outbound|3306|never|mysql.shop.svc.cluster.local".into(), 0)]
    );
    // Rule 0 catches everything, so nothing after it is reachable.
    assert_eq!(l.filter_chains.len(), 1);
}

#[test]
fn tls_service_without_vip_is_matched_by_sni() {
    let snap = with("");
    let ls = sidecar_listeners(&snap);
    let l = find(&ls, "0.0.0.0_443");
    assert_eq!(l.bind_to_port.as_ref().map(|b| b.value), Some(false));
    assert_eq!(
        listener_filter_names(l),
        ["envoy.filters.listener.tls_inspector"]
    );
    assert_eq!(l.filter_chains.len(), 1);
    let c = &l.filter_chains[0];
    assert_eq!(
        c.filter_chain_match.as_ref().unwrap().server_names,
        ["api.example.com"]
    );
    assert_eq!(tcp_dest(c), [("outbound|443||api.example.com".into(), 0)]);
    assert_eq!(default_cluster(l), "PassthroughCluster");
}

#[test]
fn tls_routes_split_by_sni_and_weight() {
    let snap = with(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: example-tls, namespace: shop}
spec:
  hosts: [api.example.com]
  tls:
  - match:
    - port: 443
      sniHosts: [api.example.com]
    route:
    - destination: {host: api.example.com, port: {number: 443}}
      weight: 70
    - destination: {host: mysql, port: {number: 3306}}
      weight: 30
"#,
    );
    let ls = sidecar_listeners(&snap);
    let l = find(&ls, "0.0.0.0_443");
    assert_eq!(l.filter_chains.len(), 1);
    let c = &l.filter_chains[0];
    assert_eq!(c.name, "tls-shop/example-tls-0-0");
    assert_eq!(
        c.filter_chain_match.as_ref().unwrap().server_names,
        ["api.example.com"]
    );
    assert_eq!(
        tcp_dest(c),
        [
            ("outbound|443||api.example.com".into(), 70),
            ("outbound|3306||mysql.shop.svc.cluster.local".into(), 30),
        ]
    );
    assert_eq!(
        config_refs(c.metadata.as_ref()),
        ["/apis/networking.istio.io/v1/namespaces/shop/virtual-service/example-tls"]
    );
}

#[test]
fn cidr_service_entry_matches_destination_prefix() {
    let snap = with("");
    let ls = sidecar_listeners(&snap);
    let l = find(&ls, "0.0.0.0_27017");
    let c = &l.filter_chains[0];
    let m = c.filter_chain_match.as_ref().unwrap();
    assert_eq!(m.prefix_ranges[0].address_prefix, "192.168.0.0");
    assert_eq!(m.prefix_ranges[0].prefix_len.as_ref().unwrap().value, 16);
    assert_eq!(tcp_dest(c), [("outbound|27017||mongo.internal".into(), 0)]);
    assert!(l.listener_filters.is_empty(), "no SNI, no tls_inspector");
}

#[test]
fn conflicting_wildcard_chains_keep_the_first() {
    let snap = with(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: a, namespace: shop}
spec:
  hosts: [a.external]
  location: MESH_EXTERNAL
  ports: [{number: 6000, name: tcp, protocol: TCP}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: b, namespace: shop}
spec:
  hosts: [b.external]
  location: MESH_EXTERNAL
  ports: [{number: 6000, name: tcp, protocol: TCP}]
  resolution: DNS
"#,
    );
    let ls = sidecar_listeners(&snap);
    let l = find(&ls, "0.0.0.0_6000");
    assert_eq!(l.filter_chains.len(), 1, "Envoy rejects duplicate matches");
    assert_eq!(
        tcp_dest(&l.filter_chains[0]),
        [("outbound|6000||a.external".into(), 0)]
    );
}

#[test]
fn virtual_inbound_has_a_chain_per_workload_port() {
    let snap = with("");
    let ls = sidecar_listeners(&snap);
    let l = find(&ls, "virtualInbound");
    assert_eq!(socket(l), ("0.0.0.0".into(), 15006));
    assert_eq!(
        listener_filter_names(l),
        ["envoy.filters.listener.original_dst"]
    );
    assert!(
        l.use_original_dst.is_none(),
        "inbound must not hand off to outbound listeners"
    );
    let ports: Vec<(String, Option<u32>)> = l
        .filter_chains
        .iter()
        .map(|c| (c.name.clone(), dest_port(c)))
        .collect();
    assert_eq!(
        ports,
        [
            ("virtualInbound-blackhole".to_string(), Some(15006)),
            ("0.0.0.0_5432".to_string(), Some(5432)),
            ("0.0.0.0_7070".to_string(), Some(7070)),
            ("0.0.0.0_8080".to_string(), Some(8080)),
            ("0.0.0.0_9090".to_string(), Some(9090)),
        ]
    );
    assert_eq!(default_cluster(l), "InboundPassthroughCluster");

    // 8080 is HTTP (the Service's port protocol): inline route to inbound|8080||.
    let h = hcm_of(chain(l, "0.0.0.0_8080"));
    assert_eq!(h.stat_prefix, "inbound_0.0.0.0_8080");
    assert_eq!(h.use_remote_address.map(|b| b.value), Some(false));
    let Some(hcm::RouteSpecifier::RouteConfig(rc)) = &h.route_specifier else {
        panic!("expected an inline route")
    };
    assert_eq!(rc.name, "inbound|8080||");
    assert_eq!(rc.virtual_hosts[0].name, "inbound|http|8080");
    assert_eq!(rc.virtual_hosts[0].domains, ["*"]);
    let r = &rc.virtual_hosts[0].routes[0];
    assert!(matches!(
        &r.r#match.as_ref().unwrap().path_specifier,
        Some(route_match::PathSpecifier::Prefix(p)) if p == "/"
    ));
    let Some(route::Action::Route(action)) = &r.action else {
        panic!("expected a route action")
    };
    assert_eq!(
        action.cluster_specifier,
        Some(route_action::ClusterSpecifier::Cluster(
            "inbound|8080||".into()
        ))
    );
    // 9090 is HTTP by its container port name (grpc-admin); 5432 (tcp-db via named targetPort) and the
    // unnamed 7070 are TCP.
    assert!(matches!(
        hcm_of(chain(l, "0.0.0.0_9090")).route_specifier,
        Some(hcm::RouteSpecifier::RouteConfig(_))
    ));
    assert_eq!(
        tcp_dest(chain(l, "0.0.0.0_5432")),
        [("inbound|5432||".into(), 0)]
    );
    assert_eq!(
        tcp_dest(chain(l, "0.0.0.0_7070")),
        [("inbound|7070||".into(), 0)]
    );
}

#[test]
fn inbound_without_pod_only_passes_through() {
    let snap = with("");
    let scope = sidecar(&snap, "shop", "unknown-pod");
    let ls = listeners(&scope);
    let l = find(&ls, "virtualInbound");
    assert_eq!(l.filter_chains.len(), 1);
    assert_eq!(default_cluster(l), "InboundPassthroughCluster");
}

#[test]
fn listeners_are_deterministic_and_chain_matches_unique() {
    let snap = with(&format!("{MYSQL_TCP_VS}\n---\n{GATEWAYS}"));
    let a = sidecar_listeners(&snap);
    let b = sidecar_listeners(&snap);
    assert_eq!(a, b);
    for l in &a {
        let mut seen = Vec::new();
        for c in &l.filter_chains {
            let m = c.filter_chain_match.clone().unwrap_or_default();
            assert!(!seen.contains(&m), "{}: duplicate match {m:?}", l.name);
            seen.push(m);
        }
    }
}

#[test]
fn headless_tcp_services_get_a_listener_per_endpoint() {
    let snap = with(
        r#"
apiVersion: v1
kind: Service
metadata: {name: cassandra, namespace: shop}
spec:
  clusterIP: None
  selector: {app: cassandra}
  ports:
  - {name: tcp-cql, port: 9042}
---
apiVersion: v1
kind: Pod
metadata: {name: cassandra-0, namespace: shop, labels: {app: cassandra}}
spec:
  containers:
  - name: cassandra
    ports: [{name: tcp-cql, containerPort: 9042}]
status: {phase: Running, podIP: 10.0.1.1}
---
apiVersion: v1
kind: Pod
metadata: {name: cassandra-1, namespace: shop, labels: {app: cassandra}}
spec:
  containers:
  - name: cassandra
    ports: [{name: tcp-cql, containerPort: 9042}]
status: {phase: Running, podIP: 10.0.1.2}
"#,
    );
    let ls = sidecar_listeners(&snap);
    for name in ["10.0.1.1_9042", "10.0.1.2_9042"] {
        let l = find(&ls, name);
        assert_eq!(
            tcp_dest(&l.filter_chains[0]),
            [("outbound|9042||cassandra.shop.svc.cluster.local".into(), 0)]
        );
    }
    assert!(
        ls.iter().all(|l| l.name != "0.0.0.0_9042"),
        "a headless service must not capture the port for every destination"
    );
}

#[test]
fn book_example_listeners_keep_envoys_invariants() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/micro-shake-factory");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let objects: Vec<_> = files
        .iter()
        .flat_map(|f| objects_from_yaml(&std::fs::read_to_string(f).unwrap()))
        .collect();
    let snap = Snapshot::build(1, &objects, Vec::new());
    let mut scopes: Vec<_> = snap
        .workloads
        .iter()
        .filter(|w| w.namespace == "micro-shake-factory")
        .map(|w| sidecar(&snap, &w.namespace, &w.name))
        .collect();
    assert!(scopes.len() >= 6, "the book has six app pods");
    scopes.push(router(
        &snap,
        "istio-system",
        "istio-ingressgateway-5d8d9b9c7-x2x4p",
        &[],
    ));
    for scope in &scopes {
        let ls = listeners(scope);
        let mut names: Vec<&str> = ls.iter().map(|l| l.name.as_str()).collect();
        names.dedup();
        assert_eq!(
            names.len(),
            ls.len(),
            "{}: duplicate listener names",
            scope.meta.pod
        );
        for l in &ls {
            assert!(
                !l.filter_chains.is_empty() || l.default_filter_chain.is_some(),
                "{}: {} has no chain",
                scope.meta.pod,
                l.name
            );
            let mut seen = Vec::new();
            for c in &l.filter_chains {
                let m = c.filter_chain_match.clone().unwrap_or_default();
                assert!(!seen.contains(&m), "{}: duplicate match {m:?}", l.name);
                seen.push(m);
            }
        }
    }
    // The gateway serves the book's two Gateways (both on port 80) from one listener, bound on the target port
    // of its Service (istio-ingressgateway 80 → 8080), as istiod does.
    let gw = listeners(scopes.last().unwrap());
    assert_eq!(
        gw.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
        ["0.0.0.0_8080"]
    );
    assert_eq!(config_refs(gw[0].metadata.as_ref()).len(), 2);
}
