//! Invalid legacy documents with the exact line rudder reports, and the book's manifests loading cleanly.

use std::path::PathBuf;

use crate::config::Kind;
use crate::config::validate::check_file;

/// Every problem `check_file` reports for `yaml` (default namespace `shop`), as printed.
fn problems(yaml: &str) -> Vec<String> {
    check_file("t.yaml", yaml.as_bytes(), "shop", false)
        .into_iter()
        .flat_map(|c| c.problems)
        .map(|p| p.to_string())
        .collect()
}

#[test]
fn invalid_documents_report_one_exact_line_each() {
    let cases: &[(&str, &str)] = &[
        (
            "apiVersion: authentication.istio.io/v1alpha1\nkind: MeshPolicy\nmetadata: {name: mesh}\nspec:\n  peers: [{mtls: {}}]\n",
            "MeshPolicy mesh: metadata.name: a MeshPolicy must be named \"default\"",
        ),
        (
            "apiVersion: authentication.istio.io/v1alpha1\nkind: Policy\nmetadata: {name: default}\nspec:\n  targets: [{name: fruits}]\n  peers: [{mtls: {}}]\n",
            "Policy shop/default: spec.targets: the namespace-wide Policy \"default\" must not have targets",
        ),
        (
            "apiVersion: authentication.istio.io/v1alpha1\nkind: Policy\nmetadata: {name: p}\nspec:\n  targets:\n  - ports: [{number: 8080}]\n",
            "Policy shop/p: spec.targets[0].name: required",
        ),
        (
            "apiVersion: authentication.istio.io/v1alpha1\nkind: Policy\nmetadata: {name: p}\nspec:\n  peers:\n  - mtls: {mode: DISABLE}\n",
            "Policy shop/p: spec.peers[0].mtls.mode: unknown variant `DISABLE`, expected `STRICT` or `PERMISSIVE`",
        ),
        (
            "apiVersion: authentication.istio.io/v1alpha1\nkind: Policy\nmetadata: {name: p}\nspec:\n  origins:\n  - jwt: {jwksUri: \"https://example.com/jwks.json\"}\n  principalBinding: USE_ORIGIN\n",
            "Policy shop/p: spec.origins[0].jwt.issuer: required",
        ),
        (
            "apiVersion: authentication.istio.io/v1alpha1\nkind: Policy\nmetadata: {name: p}\nspec:\n  peers: [{mtls: {}}]\n  principalBinding: USE_ORIGIN\n",
            "Policy shop/p: spec.principalBinding: USE_ORIGIN needs at least one entry in origins",
        ),
        (
            "apiVersion: authentication.istio.io/v1alpha1\nkind: MeshPolicy\nmetadata: {name: default}\nspec:\n  origins:\n  - jwt:\n      issuer: a\n      triggerRules:\n      - excludedPaths: [{exact: /health, prefix: /h}]\n",
            "MeshPolicy default: spec.origins[0].jwt.triggerRules[0].excludedPaths[0]: exactly one of exact, prefix, suffix or regex must be set (found 2)",
        ),
        (
            "apiVersion: rbac.istio.io/v1alpha1\nkind: RbacConfig\nmetadata: {name: default, namespace: istio-system}\nspec:\n  mode: ON_WITH_INCLUSION\n",
            "RbacConfig istio-system/default: spec.inclusion: services or namespaces are required when mode is ON_WITH_INCLUSION",
        ),
        (
            "apiVersion: rbac.istio.io/v1alpha1\nkind: ClusterRbacConfig\nmetadata: {name: default}\nspec:\n  mode: ENABLED\n",
            "ClusterRbacConfig default: spec.mode: unknown variant `ENABLED`, expected one of `OFF`, `ON`, `ON_WITH_INCLUSION`, `ON_WITH_EXCLUSION`",
        ),
        (
            "apiVersion: rbac.istio.io/v1alpha1\nkind: ServiceRole\nmetadata: {name: viewer}\nspec:\n  rules:\n  - methods: [GET]\n",
            "ServiceRole shop/viewer: spec.rules[0].services: required",
        ),
        (
            "apiVersion: rbac.istio.io/v1alpha1\nkind: ServiceRoleBinding\nmetadata: {name: b}\nspec:\n  subjects: [{user: \"*\"}]\n  roleRef: {kind: ClusterRole, name: viewer}\n",
            "ServiceRoleBinding shop/b: spec.roleRef.kind: must be ServiceRole (found \"ClusterRole\")",
        ),
        (
            "apiVersion: rbac.istio.io/v1alpha1\nkind: ServiceRoleBinding\nmetadata: {name: b}\nspec:\n  subjects: [{user: \"*\"}]\n  roleRef: {kind: ServiceRole}\n",
            "ServiceRoleBinding shop/b: spec.roleRef.name: required",
        ),
        (
            "apiVersion: rbac.istio.io/v1alpha1\nkind: ServiceRoleBinding\nmetadata: {name: b}\nspec:\n  roleRef: {kind: ServiceRole, name: viewer}\n",
            "ServiceRoleBinding shop/b: spec.subjects: at least one subject is required",
        ),
        (
            "apiVersion: config.istio.io/v1alpha2\nkind: handler\nmetadata: {name: h, namespace: istio-system}\nspec:\n  params: {address: \"fluentd-es.logging:24224\"}\n",
            "handler istio-system/h: spec.compiledAdapter: required (or adapter)",
        ),
        (
            "apiVersion: config.istio.io/v1alpha2\nkind: instance\nmetadata: {name: i, namespace: istio-system}\nspec:\n  params: {value: \"1\"}\n",
            "instance istio-system/i: spec.compiledTemplate: required (or template)",
        ),
        (
            "apiVersion: config.istio.io/v1alpha2\nkind: rule\nmetadata: {name: r, namespace: istio-system}\nspec:\n  match: \"true\"\n  actions:\n  - instances: [newlog]\n",
            "rule istio-system/r: spec.actions[0].handler: required",
        ),
        (
            "apiVersion: config.istio.io/v1alpha2\nkind: QuotaSpec\nmetadata: {name: q, namespace: istio-system}\nspec:\n  rules:\n  - quotas:\n    - charge: 1\n",
            "QuotaSpec istio-system/q: spec.rules[0].quotas[0].quota: required",
        ),
        (
            "apiVersion: config.istio.io/v1alpha2\nkind: QuotaSpecBinding\nmetadata: {name: q}\nspec:\n  quotaSpecs: [{name: request-count, namespace: istio-system}]\n",
            "QuotaSpecBinding shop/q: spec.services: at least one service is required",
        ),
        (
            "apiVersion: split.smi-spec.io/v1alpha1\nkind: TrafficSplit\nmetadata: {name: s}\nspec:\n  backends: [{service: web-v1, weight: 100}]\n",
            "TrafficSplit shop/s: spec.service: required",
        ),
        (
            "apiVersion: split.smi-spec.io/v1alpha2\nkind: TrafficSplit\nmetadata: {name: s}\nspec:\n  service: web\n  backends: [{service: web-v1, weight: -5}]\n",
            "TrafficSplit shop/s: spec.backends[0].weight: -5 must not be negative",
        ),
    ];
    for (doc, want) in cases {
        let got = problems(doc);
        assert_eq!(got, vec![want.to_string()], "document:\n{doc}");
    }
}

/// Kinds this module and `security` own: the book's manifests of these kinds must load with no warning.
fn owned(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::PeerAuthentication
            | Kind::RequestAuthentication
            | Kind::AuthorizationPolicy
            | Kind::Telemetry
            | Kind::Policy
            | Kind::MeshPolicy
            | Kind::ClusterRbacConfig
            | Kind::RbacConfig
            | Kind::ServiceRole
            | Kind::ServiceRoleBinding
            | Kind::Handler
            | Kind::Instance
            | Kind::Rule
            | Kind::QuotaSpec
            | Kind::QuotaSpecBinding
            | Kind::TrafficSplit
    )
}

#[test]
fn the_books_legacy_manifests_load_without_warnings() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/book/manifests");
    let mut seen = Vec::new();
    for chapter in ["chapter-6", "chapter-7", "chapter-8"] {
        let dir = root.join(chapter);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for path in files {
            let text = std::fs::read(&path).unwrap();
            let origin = path.display().to_string();
            for checked in check_file(&origin, &text, "default", false) {
                let Some(key) = &checked.key else { continue };
                if !owned(key.kind) {
                    continue;
                }
                let problems: Vec<String> =
                    checked.problems.iter().map(|p| p.to_string()).collect();
                assert!(problems.is_empty(), "{origin}: {problems:#?}");
                assert!(checked.object.is_some(), "{origin}: {key} did not decode");
                seen.push(key.to_string());
            }
        }
    }
    let want = [
        "handler istio-system/throttle-handler",
        "instance istio-system/request-quota-instance",
        "rule istio-system/quota-rule",
        "QuotaSpec istio-system/request-count",
        "QuotaSpecBinding micro-shake-factory/request-count",
        "MeshPolicy default",
        "Policy micro-shake-factory/fruits-api-authn-policy",
        "RbacConfig istio-system/default",
        "ServiceRole micro-shake-factory/fruits-api-viewer",
        "ServiceRoleBinding micro-shake-factory/fruits-api-viewer-binding",
        "instance istio-system/doublerequestcount",
        "handler istio-system/doublehandler",
        "rule istio-system/doubleprom",
        "instance micro-shake-factory/newlog",
        "handler micro-shake-factory/handler",
        "rule micro-shake-factory/newlogtofluentd",
    ];
    for w in want {
        assert!(seen.iter().any(|s| s == w), "{w} not found in {seen:#?}");
    }
}

/// The book's listings that are not in the manifests folder: the TrafficSplit of CL 153, the ServiceRole and
/// binding of CL 108/109 and the Policy schema of CL 97.
#[test]
fn the_books_other_listings_load_without_warnings() {
    let yaml = r#"
apiVersion: split.smi-spec.io/v1alpha1
kind: TrafficSplit
metadata: {name: split-sample}
spec:
  service: web
  backends:
  - service: web-v1
    weight: 100m
  - service: web-v2
    weight: 900m
---
apiVersion: authentication.istio.io/v1alpha1
kind: Policy
metadata: {name: fruits-api-authn-policy, namespace: micro-shake-factory}
spec:
  targets:
  - name: fruits-api-service
    ports:
    - number: 80
  peers:
  - mtls:
      mode: PERMISSIVE
  peerIsOptional: false
  origins:
  - jwt:
      issuer: "istio-succinctly.io"
      audiences: [fruits]
      jwksUri: "https://raw.githubusercontent.com/Istio-Succinctly/Policies/master/Static/jwks.json"
      jwtHeaders: [x-jwt]
      jwtParams: [token]
      triggerRules:
      - excludedPaths: [{exact: /health}]
        includedPaths: [{prefix: /api}, {suffix: .json}, {regex: "^/v[0-9]+/"}]
  originIsOptional: false
  principalBinding: USE_PEER
---
apiVersion: authentication.istio.io/v1alpha1
kind: MeshPolicy
metadata: {name: default}
spec:
  peers:
  - mtls:
---
apiVersion: rbac.istio.io/v1alpha1
kind: ClusterRbacConfig
metadata: {name: default}
spec:
  mode: ON_WITH_EXCLUSION
  exclusion: {namespaces: [kube-system]}
  enforcementMode: PERMISSIVE
---
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRole
metadata: {name: fruits-api-viewer, namespace: micro-shake-factory}
spec:
  rules:
  - services: ["fruits-api-service.micro-shake-factory.svc.cluster.local"]
    paths: ["*"]
    methods: ["GET"]
    constraints:
    - key: destination.labels[version]
      values: ["v1", "v2"]
---
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRoleBinding
metadata: {name: fruits-api-viewer-binding, namespace: micro-shake-factory}
spec:
  subjects:
  - user: "cluster.local/ns/default/sa/bookinfo-productpage"
  - properties:
      source.namespace: "default"
  roleRef:
    kind: ServiceRole
    name: "fruits-api-viewer"
"#;
    let got = problems(yaml);
    assert!(got.is_empty(), "{got:#?}");
}
