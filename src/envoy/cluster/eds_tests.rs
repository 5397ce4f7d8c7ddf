//! Table tests for EDS: which clusters get assignments, subset filtering, locality grouping, weights, metadata.

use envoy_types::pb::envoy::config::core::v3::{address, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, LbEndpoint, lb_endpoint::HostIdentifier,
};
use envoy_types::pb::google::protobuf::value::Kind;

use crate::envoy::endpoint::load_assignments;
use crate::model::Snapshot;
use crate::test_helpers::mesh::{sidecar, snapshot_from_yaml};
use crate::test_helpers::named::find;

const MESH: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: client-7d9f8c6b5-abcde
  namespace: shop
  labels: {app: client, pod-template-hash: 7d9f8c6b5, topology.kubernetes.io/region: us-east, topology.kubernetes.io/zone: z1}
spec:
  containers: [{name: c}]
status: {phase: Running, podIP: 10.0.0.5}
---
apiVersion: v1
kind: Pod
metadata:
  name: reviews-v1-5c4d3b2a1-xyz12
  namespace: shop
  labels: {app: reviews, version: v1, pod-template-hash: 5c4d3b2a1, topology.kubernetes.io/region: us-east, topology.kubernetes.io/zone: z1}
  annotations: {sidecar.istio.io/status: "{}"}
spec:
  containers: [{name: r, ports: [{name: http, containerPort: 9080}]}]
status: {phase: Running, podIP: 10.0.1.1}
---
apiVersion: v1
kind: Pod
metadata:
  name: reviews-v2-a
  namespace: shop
  labels: {app: reviews, version: v2, topology.kubernetes.io/region: us-east, topology.kubernetes.io/zone: z2}
spec:
  containers: [{name: r, ports: [{name: http, containerPort: 9080}]}]
status: {phase: Running, podIP: 10.0.1.2}
---
apiVersion: v1
kind: Pod
metadata:
  name: reviews-v2-b
  namespace: shop
  labels: {app: reviews, version: v2, topology.kubernetes.io/region: eu-west, topology.kubernetes.io/zone: z1}
spec:
  containers: [{name: r, ports: [{name: http, containerPort: 9080}]}]
status: {phase: Running, podIP: 10.0.1.3}
---
apiVersion: v1
kind: Pod
metadata:
  name: reviews-v2-starting
  namespace: shop
  labels: {app: reviews, version: v2, topology.kubernetes.io/region: us-east, topology.kubernetes.io/zone: z1}
spec:
  containers: [{name: r, ports: [{name: http, containerPort: 9080}]}]
status:
  phase: Running
  podIP: 10.0.1.4
  conditions: [{type: Ready, status: "False"}]
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  selector: {app: reviews}
  ports:
  - {name: http, port: 80, targetPort: http}
---
apiVersion: v1
kind: Service
metadata: {name: nobody, namespace: shop}
spec:
  clusterIP: 10.96.0.11
  selector: {app: nobody}
  ports:
  - {name: http, port: 80}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: shop}
spec:
  hosts: [api.example.com]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: vms, namespace: shop}
spec:
  hosts: [vm.internal]
  location: MESH_INTERNAL
  ports: [{number: 8000, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - {address: 192.168.1.10, weight: 3, locality: us-east/z1, labels: {security.istio.io/tlsMode: istio}}
  - {address: 192.168.1.11, ports: {http: 8001}}
"#;

fn with(extra: &str) -> Snapshot {
    snapshot_from_yaml(&format!("{MESH}\n---\n{extra}"))
}

fn assignments(snap: &Snapshot) -> Vec<ClusterLoadAssignment> {
    load_assignments(&sidecar(snap, "shop", "client-7d9f8c6b5-abcde"))
}

fn addr(ep: &LbEndpoint) -> (String, u32) {
    let Some(HostIdentifier::Endpoint(e)) = &ep.host_identifier else {
        panic!()
    };
    let Some(address::Address::SocketAddress(sa)) = &e.address.as_ref().unwrap().address else {
        panic!()
    };
    let Some(socket_address::PortSpecifier::PortValue(p)) = sa.port_specifier else {
        panic!()
    };
    (sa.address.clone(), p)
}

/// (locality "region/zone", priority, addresses) per group.
fn groups(a: &ClusterLoadAssignment) -> Vec<(String, u32, Vec<String>)> {
    a.endpoints
        .iter()
        .map(|g| {
            let l = g.locality.clone().unwrap_or_default();
            (
                format!("{}/{}", l.region, l.zone),
                g.priority,
                g.lb_endpoints.iter().map(|e| addr(e).0).collect(),
            )
        })
        .collect()
}

fn meta_str(ep: &LbEndpoint, filter: &str, key: &str) -> Option<String> {
    let m = ep.metadata.as_ref()?.filter_metadata.get(filter)?;
    match m.fields.get(key)?.kind.as_ref()? {
        Kind::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

const REVIEWS: &str = "outbound|80||reviews.shop.svc.cluster.local";

#[test]
fn assignments_for_eds_clusters_only() {
    let snap = with("");
    let all = assignments(&snap);
    let names: Vec<&str> = all.iter().map(|a| a.cluster_name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "outbound|8000||vm.internal",
            "outbound|80||nobody.shop.svc.cluster.local",
            REVIEWS,
        ],
        "sorted; DNS clusters carry their endpoints inline"
    );
    // No endpoints still yields an (empty) assignment, so Envoy finishes warming.
    assert!(
        find(&all, "outbound|80||nobody.shop.svc.cluster.local")
            .endpoints
            .is_empty()
    );
}

#[test]
fn endpoints_grouped_by_locality_ready_only() {
    let snap = with("");
    let all = assignments(&snap);
    let a = find(&all, REVIEWS);
    assert_eq!(
        groups(a),
        vec![
            ("eu-west/z1".into(), 0, vec!["10.0.1.3".into()]),
            ("us-east/z1".into(), 0, vec!["10.0.1.1".into()]),
            ("us-east/z2".into(), 0, vec!["10.0.1.2".into()]),
        ],
        "not-ready 10.0.1.4 left out"
    );
    // The named targetPort resolves to the container port.
    assert_eq!(addr(&a.endpoints[1].lb_endpoints[0]).1, 9080);
    let v1 = &a.endpoints[1].lb_endpoints[0];
    assert_eq!(
        meta_str(v1, "envoy.transport_socket_match", "tlsMode").as_deref(),
        Some("istio")
    );
    assert_eq!(
        meta_str(v1, "istio", "workload").as_deref(),
        Some("reviews-v1;shop;reviews;v1;Kubernetes"),
        "Deployment name from the pod-template-hash"
    );
    let v2 = &a.endpoints[2].lb_endpoints[0];
    assert_eq!(
        meta_str(v2, "envoy.transport_socket_match", "tlsMode"),
        None,
        "no sidecar"
    );
    assert_eq!(v2.load_balancing_weight.unwrap().value, 1);

    // ServiceEntry endpoints: weights summed per locality, port renamed by the entry's `ports`.
    let a = find(&all, "outbound|8000||vm.internal");
    let g: Vec<(String, u32, u32)> = a
        .endpoints
        .iter()
        .flat_map(|g| {
            g.lb_endpoints
                .iter()
                .map(move |e| (addr(e).0, addr(e).1, g.load_balancing_weight.unwrap().value))
        })
        .collect();
    assert_eq!(
        g,
        vec![
            ("192.168.1.11".into(), 8001, 1),
            ("192.168.1.10".into(), 8000, 3)
        ]
    );
    assert_eq!(
        a.endpoints[1].lb_endpoints[0]
            .load_balancing_weight
            .unwrap()
            .value,
        3
    );
    assert_eq!(
        meta_str(
            &a.endpoints[1].lb_endpoints[0],
            "envoy.transport_socket_match",
            "tlsMode"
        )
        .as_deref(),
        Some("istio")
    );
}

#[test]
fn subsets_filter_endpoints() {
    let snap = with(
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
"#,
    );
    let all = assignments(&snap);
    let addrs = |subset: &str| -> Vec<String> {
        groups(find(
            &all,
            &format!("outbound|80|{subset}|reviews.shop.svc.cluster.local"),
        ))
        .into_iter()
        .flat_map(|g| g.2)
        .collect()
    };
    assert_eq!(addrs("v1"), vec!["10.0.1.1"]);
    assert_eq!(addrs("v2"), vec!["10.0.1.3", "10.0.1.2"]);
    assert!(addrs("v3").is_empty());
    assert_eq!(addrs("").len(), 3);
}

#[test]
fn locality_failover_and_distribute() {
    // Outlier detection turns on default failover: the client is in us-east/z1.
    let snap = with(
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 1}
"#,
    );
    let all = assignments(&snap);
    let prio: Vec<(String, u32)> = groups(find(&all, REVIEWS))
        .into_iter()
        .map(|g| (g.0, g.1))
        .collect();
    assert_eq!(
        prio,
        vec![
            ("eu-west/z1".into(), 2),
            ("us-east/z1".into(), 0),
            ("us-east/z2".into(), 1),
        ]
    );
    // Locality LB disabled: no priorities.
    let snap = with(
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {localityLbSetting: {enabled: false}}
    outlierDetection: {consecutive5xxErrors: 1}
"#,
    );
    let all = assignments(&snap);
    assert!(groups(find(&all, REVIEWS)).iter().all(|g| g.1 == 0));
    // Distribute: us-east clients send 90% to z2 and 10% to eu-west; z1 gets nothing.
    let snap = with(
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      localityLbSetting:
        distribute:
        - from: us-east/z1/*
          to: {"us-east/z2/*": 90, "eu-west/*": 10}
"#,
    );
    let all = assignments(&snap);
    let a = find(&all, REVIEWS);
    let w: Vec<(usize, u32)> = a
        .endpoints
        .iter()
        .map(|g| (g.lb_endpoints.len(), g.load_balancing_weight.unwrap().value))
        .collect();
    assert_eq!(w, vec![(1, 10), (0, 1), (1, 90)]);
}

#[test]
fn port_level_disable_drops_tls_mode_for_proxies_with_identity() {
    // reviews-v1 has a sidecar; its workload policy is STRICT with port 9080 DISABLEd (istiod's EDS mTLS check).
    let snap = with(
        r#"apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: reviews, namespace: shop}
spec:
  selector: {matchLabels: {app: reviews}}
  mtls: {mode: STRICT}
  portLevelMtls:
    9080: {mode: DISABLE}
"#,
    );
    let tls_mode = |mtls: bool| {
        let mut scope = sidecar(&snap, "shop", "client-7d9f8c6b5-abcde");
        scope.meta.mtls = mtls;
        let all = load_assignments(&scope);
        let a = find(&all, REVIEWS);
        let v1 = a
            .endpoints
            .iter()
            .flat_map(|g| &g.lb_endpoints)
            .find(|e| addr(e).0 == "10.0.1.1")
            .cloned()
            .expect("reviews-v1 endpoint");
        meta_str(&v1, "envoy.transport_socket_match", "tlsMode")
    };
    assert_eq!(
        tls_mode(true),
        None,
        "DISABLE port: plaintext for auto-mTLS"
    );
    // Plaintext proxies have no auto-mTLS; their assignments are left as they were.
    assert_eq!(tls_mode(false).as_deref(), Some("istio"));
    // Without the port override (STRICT), the endpoint keeps its mTLS marker.
    let strict = with(
        r#"apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: reviews, namespace: shop}
spec:
  selector: {matchLabels: {app: reviews}}
  mtls: {mode: STRICT}
"#,
    );
    let mut scope = sidecar(&strict, "shop", "client-7d9f8c6b5-abcde");
    scope.meta.mtls = true;
    let all = load_assignments(&scope);
    let v1 = find(&all, REVIEWS)
        .endpoints
        .iter()
        .flat_map(|g| &g.lb_endpoints)
        .find(|e| addr(e).0 == "10.0.1.1")
        .cloned()
        .expect("reviews-v1 endpoint");
    assert_eq!(
        meta_str(&v1, "envoy.transport_socket_match", "tlsMode").as_deref(),
        Some("istio")
    );
}
