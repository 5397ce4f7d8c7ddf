//! Invalid security and telemetry documents, one broken rule each, with the exact line rudder reports.

use crate::config::validate::check_file;

/// Every problem `check_file` reports for `yaml` (default namespace `shop`), as printed.
fn problems(yaml: &str) -> Vec<String> {
    check_file("t.yaml", yaml.as_bytes(), "shop", false)
        .into_iter()
        .flat_map(|c| c.problems)
        .map(|p| p.to_string())
        .collect()
}

const AP: &str =
    "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny}\nspec:\n";
const PA: &str = "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: pa}\nspec:\n";
const RA: &str =
    "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt}\nspec:\n";
const TEL: &str =
    "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: tel}\nspec:\n";

#[test]
fn invalid_documents_report_one_exact_line_each() {
    let cases: &[(&str, &str, &str)] = &[
        (
            AP,
            "  action: CUSTOM\n  rules: [{to: [{operation: {paths: [/admin]}}]}]\n",
            "AuthorizationPolicy shop/deny: spec.provider: required when action is CUSTOM",
        ),
        (
            AP,
            "  action: DENY\n  provider: {name: ext-authz}\n  rules: [{}]\n",
            "AuthorizationPolicy shop/deny: spec.provider: only allowed when action is CUSTOM",
        ),
        (
            AP,
            "  rules:\n  - when:\n    - values: [admin]\n",
            "AuthorizationPolicy shop/deny: spec.rules[0].when[0].key: required",
        ),
        (
            AP,
            "  rules:\n  - when:\n    - key: request.auth.claims[role]\n",
            "AuthorizationPolicy shop/deny: spec.rules[0].when[0]: one of values or notValues is required",
        ),
        (
            AP,
            "  selector: {matchLabels: {app: a}}\n  targetRef: {kind: Gateway, name: gw}\n",
            "AuthorizationPolicy shop/deny: spec.targetRef: only one of selector, targetRef or targetRefs may be set",
        ),
        (
            AP,
            "  rules:\n  - to:\n    - operation: {methods: [get]}\n",
            "AuthorizationPolicy shop/deny: spec.rules[0].to[0].operation.methods[0]: HTTP method \"get\" must be upper-case (\"GET\")",
        ),
        (
            AP,
            "  rules:\n  - from:\n    - source:\n        principals: [cluster.local/ns/shop/sa/web]\n    - source:\n        ipBlocks: [10.0.0.1, 10.0.0.0/33]\n",
            "AuthorizationPolicy shop/deny: spec.rules[0].from[1].source.ipBlocks[1]: \"10.0.0.0/33\" is not an IP address or CIDR block",
        ),
        (
            AP,
            "  rules:\n  - to:\n    - operation: {ports: [http]}\n",
            "AuthorizationPolicy shop/deny: spec.rules[0].to[0].operation.ports[0]: \"http\" is not a port number",
        ),
        (
            AP,
            "  rules:\n  - from:\n    - source: {}\n",
            "AuthorizationPolicy shop/deny: spec.rules[0].from[0].source: must set at least one field (an empty source is a mistake: omit `from` to match every source)",
        ),
        (
            AP,
            "  rules:\n  - to:\n    - operation: {paths: [/api/*/items]}\n",
            "AuthorizationPolicy shop/deny: spec.rules[0].to[0].operation.paths[0]: path \"/api/*/items\": \"*\" is only allowed alone, at the start or at the end",
        ),
        (
            AP,
            "  rules:\n  - from:\n    - source: {serviceAccounts: [shop/web], namespaces: [shop]}\n",
            "AuthorizationPolicy shop/deny: spec.rules[0].from[0].source: serviceAccounts cannot be combined with principals or namespaces",
        ),
        (
            AP,
            "  targetRefs:\n  - {kind: Gateway, group: gateway.networking.k8s.io, name: gw, namespace: shop}\n",
            "AuthorizationPolicy shop/deny: spec.targetRefs[0].namespace: cross-namespace references are not supported (leave namespace empty)",
        ),
        (
            AP,
            "  action: REJECT\n",
            "AuthorizationPolicy shop/deny: spec.action: unknown variant `REJECT`, expected one of `ALLOW`, `DENY`, `AUDIT`, `CUSTOM`",
        ),
        (
            PA,
            "  mtls: {mode: STRICT}\n  portLevelMtls:\n    8080: {mode: DISABLE}\n",
            "PeerAuthentication shop/pa: spec.portLevelMtls: requires a selector with matchLabels (port-level mTLS applies to specific workloads)",
        ),
        (
            PA,
            "  selector: {matchLabels: {app: db}}\n  portLevelMtls:\n    0: {mode: PERMISSIVE}\n",
            "PeerAuthentication shop/pa: spec.portLevelMtls.0: port number 0 must be in the range 1..65535",
        ),
        (
            PA,
            "  mtls: {mode: OPTIONAL}\n",
            "PeerAuthentication shop/pa: spec.mtls.mode: unknown variant `OPTIONAL`, expected one of `UNSET`, `DISABLE`, `PERMISSIVE`, `STRICT`",
        ),
        (
            RA,
            "  jwtRules:\n  - jwksUri: https://example.com/jwks.json\n",
            "RequestAuthentication shop/jwt: spec.jwtRules[0].issuer: required",
        ),
        (
            RA,
            "  jwtRules:\n  - issuer: a\n    jwksUri: https://example.com/jwks.json\n    jwks: '{\"keys\": []}'\n",
            "RequestAuthentication shop/jwt: spec.jwtRules[0]: only one of jwks or jwksUri may be set",
        ),
        (
            RA,
            "  jwtRules:\n  - issuer: a\n    jwksUri: https://a/j\n    jwks_uri: https://a/j\n",
            "RequestAuthentication shop/jwt: spec.jwtRules[0]: only one of jwks or jwksUri may be set",
        ),
        (
            RA,
            "  jwtRules:\n  - issuer: a\n    jwksUri: ftp://example.com/jwks.json\n",
            "RequestAuthentication shop/jwt: spec.jwtRules[0].jwksUri: \"ftp://example.com/jwks.json\" is not an http:// or https:// URL",
        ),
        (
            RA,
            "  jwtRules:\n  - issuer: a\n    outputClaimToHeaders: [{header: x user, claim: sub}]\n",
            "RequestAuthentication shop/jwt: spec.jwtRules[0].outputClaimToHeaders[0].header: \"x user\" is not a valid header name (letters, digits, '-' and '_')",
        ),
        (
            TEL,
            "  tracing:\n  - randomSamplingPercentage: 150\n",
            "Telemetry shop/tel: spec.tracing[0].randomSamplingPercentage: percentage 150 must be in the range 0..100",
        ),
        (
            TEL,
            "  metrics:\n  - overrides:\n    - tagOverrides:\n        request_host: {operation: UPSERT}\n",
            "Telemetry shop/tel: spec.metrics[0].overrides[0].tagOverrides.request_host.value: required when operation is UPSERT",
        ),
        (
            TEL,
            "  accessLogging:\n  - providers: [{}]\n",
            "Telemetry shop/tel: spec.accessLogging[0].providers[0].name: required",
        ),
        (
            TEL,
            "  tracing:\n  - customTags:\n      cluster: {literal: {value: a}, environment: {name: B}}\n",
            "Telemetry shop/tel: spec.tracing[0].customTags.cluster: exactly one of literal, environment, header or formatter must be set (found 2)",
        ),
    ];
    for (head, body, want) in cases {
        let got = problems(&format!("{head}{body}"));
        assert_eq!(got, vec![want.to_string()], "document:\n{head}{body}");
    }
}

#[test]
fn valid_modern_policies_pass_cleanly() {
    let yaml = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: db}
spec:
  selector: {matchLabels: {app: db}}
  mtls: {mode: STRICT}
  portLevelMtls:
    3306: {mode: DISABLE}
    "8080": {mode: PERMISSIVE}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt}
spec:
  selector: {matchLabels: {app: fruits-api}}
  jwtRules:
  - issuer: istio-succinctly.io
    jwksUri: https://raw.githubusercontent.com/Istio-Succinctly/Policies/master/Static/jwks.json
    audiences: [fruits]
    fromHeaders: [{name: Authorization, prefix: "Bearer "}]
    fromParams: [token]
    fromCookies: [session]
    outputClaimToHeaders: [{header: x-role, claim: role}]
    forwardOriginalToken: true
    timeout: 5s
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: viewer}
spec:
  selector: {matchLabels: {app: fruits-api}}
  action: ALLOW
  rules:
  - from:
    - source: {requestPrincipals: ["*"], notNamespaces: [evil]}
    to:
    - operation: {methods: [GET], paths: ["/api/*", "/items/{*}/x"], ports: ["8080"]}
    when:
    - key: request.auth.claims[role]
      values: [learner]
    - key: source.ip
      notValues: [10.0.0.0/8]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext}
spec:
  action: CUSTOM
  provider: {name: ext-authz}
  rules: [{to: [{operation: {paths: [/admin]}}]}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  tracing:
  - providers: [{name: zipkin}]
    randomSamplingPercentage: 10
    customTags:
      env: {environment: {name: ENV, defaultValue: dev}}
  metrics:
  - providers: [{name: prometheus}]
    overrides:
    - match: {metric: REQUEST_COUNT, mode: CLIENT_AND_SERVER}
      tagOverrides:
        request_host: {operation: REMOVE}
        source_x: {value: "upstream_peer.labels['x'].value"}
  accessLogging:
  - providers: [{name: envoy}]
    filter: {expression: "response.code >= 400"}
"#;
    let got = problems(yaml);
    assert!(got.is_empty(), "{got:#?}");
}

#[test]
fn every_problem_of_an_object_is_reported() {
    let yaml = format!(
        "{AP}  action: CUSTOM\n  rules:\n  - to:\n    - operation: {{methods: [post], ports: [\"0\"]}}\n    when:\n    - key: request.colour\n      values: [red]\n"
    );
    assert_eq!(
        problems(&yaml),
        [
            "AuthorizationPolicy shop/deny: spec.provider: required when action is CUSTOM",
            "AuthorizationPolicy shop/deny: spec.rules[0].to[0].operation.ports[0]: port number 0 must be in the range 1..65535",
            "AuthorizationPolicy shop/deny: spec.rules[0].to[0].operation.methods[0]: HTTP method \"post\" must be upper-case (\"POST\")",
            "AuthorizationPolicy shop/deny: spec.rules[0].when[0].key: unknown attribute \"request.colour\" (see Istio's authorization condition list, e.g. request.headers[name], source.ip, request.auth.claims[name])",
        ]
    );
}
