//! The service registry built from YAML: Kubernetes services with pods, Endpoints, EndpointSlices, ServiceEntries
//! and WorkloadEntries, port protocol detection.

use rudder::config::parse::{Document, parse_documents};
use rudder::config::validate::validate;
use rudder::model::{Protocol, Resolution, Snapshot};

fn snapshot(yaml: &str) -> Snapshot {
    let mut objects = Vec::new();
    for doc in parse_documents("test.yaml", yaml.as_bytes(), "default") {
        match doc {
            Document::Object { object, warnings } => {
                assert!(warnings.is_empty(), "{warnings:?}");
                let errors = validate(&object);
                assert!(errors.is_empty(), "{errors:?}");
                objects.push(object);
            }
            other => panic!("test fixture does not load: {other:?}"),
        }
    }
    Snapshot::build(1, &objects, vec![])
}

fn endpoints(snap: &Snapshot, host: &str, ns: &str, port: u16) -> Vec<String> {
    let svc = snap
        .registry
        .service(host, ns)
        .unwrap_or_else(|| panic!("no service {host} in {ns}"));
    let mut v: Vec<String> = snap
        .registry
        .endpoints(svc, port)
        .iter()
        .map(|e| format!("{}:{}", e.address, e.port))
        .collect();
    v.sort();
    v
}

const PODS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: fruits, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  selector: {app: fruits}
  ports:
  - {name: http-api, port: 80, targetPort: http-fruits}
  - {name: grpc-x, port: 90, targetPort: 9090}
  - {name: metrics, port: 91, appProtocol: http, targetPort: 9091}
  - {name: tcp, port: 92}
  - {name: db, port: 93}
---
apiVersion: v1
kind: Pod
metadata: {name: fruits-1, namespace: shop, labels: {app: fruits, version: "1"}}
spec:
  serviceAccountName: fruits-sa
  containers:
  - name: app
    ports: [{name: http-fruits, containerPort: 3000}]
  - name: istio-proxy
status: {podIP: 10.44.0.11}
---
apiVersion: v1
kind: Pod
metadata: {name: fruits-2, namespace: shop, labels: {app: fruits, version: "2"}}
spec:
  containers:
  - name: app
    ports: [{name: http-fruits, containerPort: 3001}]
status: {podIP: 10.44.0.12}
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: shop, labels: {app: other}}
spec: {containers: [{name: app}]}
status: {podIP: 10.44.0.13}
---
apiVersion: v1
kind: Pod
metadata: {name: finished, namespace: shop, labels: {app: fruits}}
spec: {containers: [{name: app}]}
status: {podIP: 10.44.0.14, phase: Succeeded}
"#;

#[test]
fn cluster_ip_service_selects_pods_and_resolves_named_target_ports() {
    let snap = snapshot(PODS);
    let svc = snap
        .registry
        .service("fruits.shop.svc.cluster.local", "shop")
        .expect("service registered by FQDN");
    assert_eq!(svc.addresses, ["10.96.0.10"]);
    assert_eq!(svc.resolution, Resolution::ClientSideLb);
    // Named target port resolves per pod.
    assert_eq!(
        endpoints(&snap, "fruits.shop.svc.cluster.local", "shop", 80),
        ["10.44.0.11:3000", "10.44.0.12:3001"]
    );
    assert_eq!(
        endpoints(&snap, "fruits.shop.svc.cluster.local", "shop", 90),
        ["10.44.0.11:9090", "10.44.0.12:9090"]
    );
    let eps = snap.registry.endpoints(svc, 80);
    let first = eps.iter().find(|e| e.address == "10.44.0.11").unwrap();
    assert_eq!(first.service_account, "fruits-sa");
    assert!(first.has_sidecar, "istio-proxy container means a sidecar");
    assert_eq!(first.labels.get("version").map(String::as_str), Some("1"));
    let second = eps.iter().find(|e| e.address == "10.44.0.12").unwrap();
    assert!(!second.has_sidecar);
    assert_eq!(second.service_account, "default");
}

#[test]
fn port_protocols_from_names_and_app_protocol() {
    let snap = snapshot(PODS);
    let svc = snap
        .registry
        .service("fruits.shop.svc.cluster.local", "shop")
        .unwrap();
    let protocols: Vec<(u16, Protocol)> = svc.ports.iter().map(|p| (p.port, p.protocol)).collect();
    assert_eq!(
        protocols,
        [
            (80, Protocol::Http),
            (90, Protocol::Grpc),
            (91, Protocol::Http),
            (92, Protocol::Tcp),
            (93, Protocol::Unsupported)
        ]
    );
    for (name, want) in [
        ("http2-web", Protocol::Http2),
        ("https-admin", Protocol::Https),
        ("tls", Protocol::Tls),
        ("mongo-db", Protocol::Mongo),
        ("redis", Protocol::Redis),
        ("grpc-web", Protocol::GrpcWeb),
        ("HTTP-upper", Protocol::Http),
        ("web", Protocol::Unsupported),
    ] {
        assert_eq!(Protocol::from_port_name(name), want, "{name}");
    }
}

#[test]
fn selectorless_service_with_manual_endpoints() {
    // Book CL 29: a service without a selector, its Endpoints written by hand.
    let snap = snapshot(
        r#"
apiVersion: v1
kind: Service
metadata: {name: service1, namespace: micro-shake-factory}
spec:
  ports:
  - {name: http, port: 80, protocol: TCP, targetPort: 80}
---
apiVersion: v1
kind: Endpoints
metadata: {name: service1, namespace: micro-shake-factory}
subsets:
- addresses: [{ip: 1.2.3.4}]
  ports: [{port: 80, name: http}]
"#,
    );
    assert_eq!(
        endpoints(
            &snap,
            "service1.micro-shake-factory.svc.cluster.local",
            "micro-shake-factory",
            80
        ),
        ["1.2.3.4:80"]
    );
}

#[test]
fn endpoint_slices_take_precedence_and_link_pods() {
    let snap = snapshot(
        r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: ns}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-abc, namespace: ns, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: [10.0.0.5]
  conditions: {ready: true}
  targetRef: {kind: Pod, name: web-1, namespace: ns}
- addresses: [10.0.0.6]
  conditions: {ready: false}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: ns, labels: {app: web}}
spec: {serviceAccountName: web, containers: [{name: app}]}
status: {podIP: 10.0.0.5}
---
apiVersion: v1
kind: Pod
metadata: {name: web-2, namespace: ns, labels: {app: web}}
spec: {containers: [{name: app}]}
status: {podIP: 10.0.0.9}
"#,
    );
    // The slice decides (10.0.0.9 is not in it), pod data is joined in.
    assert_eq!(
        endpoints(&snap, "web.ns.svc.cluster.local", "ns", 80),
        ["10.0.0.5:8080", "10.0.0.6:8080"]
    );
    let svc = snap
        .registry
        .service("web.ns.svc.cluster.local", "ns")
        .unwrap();
    let eps = snap.registry.endpoints(svc, 80);
    assert_eq!(eps[0].service_account, "web");
    assert!(eps[0].ready);
    assert!(!eps[1].ready);
}

#[test]
fn headless_and_external_name_services() {
    let snap = snapshot(
        r#"
apiVersion: v1
kind: Service
metadata: {name: db, namespace: ns}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{name: tcp-db, port: 5432}]
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: ns}
spec:
  type: ExternalName
  externalName: api.example.com
  ports: [{name: https, port: 443}]
"#,
    );
    let db = snap
        .registry
        .service("db.ns.svc.cluster.local", "ns")
        .unwrap();
    assert_eq!(db.resolution, Resolution::Passthrough);
    assert!(db.addresses.is_empty());
    let ext = snap
        .registry
        .service("ext.ns.svc.cluster.local", "ns")
        .unwrap();
    assert_eq!(ext.resolution, Resolution::Dns);
    assert_eq!(
        endpoints(&snap, "ext.ns.svc.cluster.local", "ns", 443),
        ["api.example.com:443"]
    );
}

#[test]
fn service_entries_dns_static_none() {
    let snap = snapshot(
        r#"
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: exotic-fruits-service-entry, namespace: micro-shake-factory}
spec:
  hosts: [raw.githubusercontent.com]
  location: MESH_EXTERNAL
  ports: [{number: 443, name: https, protocol: TLS}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: static, namespace: ns}
spec:
  hosts: [service2]
  addresses: [10.9.0.1]
  location: MESH_INTERNAL
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - {address: 1.2.3.4}
  - {address: 1.2.3.5, ports: {http: 8080}, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: none, namespace: ns}
spec:
  hosts: [passthrough.example.com]
  ports: [{number: 3306, name: mysql, protocol: TCP}]
  resolution: NONE
"#,
    );
    let dns = snap
        .registry
        .service("raw.githubusercontent.com", "micro-shake-factory")
        .unwrap();
    assert_eq!(
        (dns.resolution, dns.location),
        (Resolution::Dns, rudder::model::Location::MeshExternal)
    );
    assert_eq!(dns.ports[0].protocol, Protocol::Tls);
    assert_eq!(
        endpoints(
            &snap,
            "raw.githubusercontent.com",
            "micro-shake-factory",
            443
        ),
        ["raw.githubusercontent.com:443"]
    );

    let st = snap.registry.service("service2", "ns").unwrap();
    assert_eq!(
        (st.resolution, st.location),
        (
            Resolution::ClientSideLb,
            rudder::model::Location::MeshInternal
        )
    );
    assert_eq!(st.addresses, ["10.9.0.1"]);
    assert_eq!(
        endpoints(&snap, "service2", "ns", 80),
        ["1.2.3.4:80", "1.2.3.5:8080"]
    );

    let none = snap
        .registry
        .service("passthrough.example.com", "ns")
        .unwrap();
    assert_eq!(none.resolution, Resolution::Passthrough);
    assert!(endpoints(&snap, "passthrough.example.com", "ns", 3306).is_empty());
}

#[test]
fn workload_entries_selected_by_service_entries_and_services() {
    let snap = snapshot(
        r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm-1, namespace: ns}
spec:
  address: 192.168.1.10
  labels: {app: legacy, security.istio.io/tlsMode: istio}
  serviceAccount: legacy-sa
  ports: {http: 9080}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm-other, namespace: ns}
spec:
  address: 192.168.1.11
  labels: {app: other}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy, namespace: ns}
spec:
  hosts: [legacy.example.internal]
  location: MESH_INTERNAL
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: legacy}}
---
apiVersion: v1
kind: Service
metadata: {name: legacy, namespace: ns}
spec:
  selector: {app: legacy}
  ports: [{name: http, port: 80, targetPort: 8080}]
"#,
    );
    assert_eq!(
        endpoints(&snap, "legacy.example.internal", "ns", 80),
        ["192.168.1.10:9080"]
    );
    let svc = snap
        .registry
        .service("legacy.example.internal", "ns")
        .unwrap();
    let ep = &snap.registry.endpoints(svc, 80)[0];
    assert_eq!(ep.service_account, "legacy-sa");
    assert_eq!(ep.workload, "vm-1");
    assert!(ep.has_sidecar, "tlsMode label marks a proxied workload");
    assert_eq!(
        endpoints(&snap, "legacy.ns.svc.cluster.local", "ns", 80),
        ["192.168.1.10:9080"]
    );
}

#[test]
fn mesh_config_comes_from_the_istio_configmap() {
    let snap = snapshot(
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
    assert_eq!(
        snap.mesh.outbound_traffic_policy.mode,
        rudder::config::mesh::OutboundMode::RegistryOnly
    );
    assert_eq!(
        snap.mesh.trust_domain, "cluster.local",
        "defaults kept for absent fields"
    );

    let broken = snapshot(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\ndata:\n  mesh: 'outboundTrafficPolicy: {mode: SOMETIMES}'\n",
    );
    assert_eq!(
        broken.mesh.outbound_traffic_policy.mode,
        rudder::config::mesh::OutboundMode::AllowAny
    );
    assert_eq!(broken.problems.len(), 1, "{:?}", broken.problems);
    assert!(
        broken.problems[0].to_string().starts_with(
            "ConfigMap istio-system/istio: data.mesh.outboundTrafficPolicy.mode: unknown variant"
        ),
        "{}",
        broken.problems[0]
    );
}
