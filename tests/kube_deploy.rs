//! Every YAML in `crds/` and `deploy/` parses into the Kubernetes types it claims to be, with no field the
//! types do not know (a typo would be silently dropped by the API server), and the deploy manifests say what
//! the mesh relies on (istiod's Service ports, webhook selectors and policies, probes, least-privilege RBAC).

use std::path::PathBuf;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use rudder::config::parse::yaml_value;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn files(dir: &str) -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    out.sort();
    out
}

fn docs(path: &PathBuf) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines().chain(std::iter::once("---")) {
        if line.trim_end() == "---" {
            let v = yaml_value(&cur).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            if !v.is_null() {
                out.push(v);
            }
            cur.clear();
        } else {
            cur.push_str(line);
            cur.push('\n');
        }
    }
    out
}

/// Paths present in `a` but not in `b` (what a typed decode dropped).
fn dropped(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, v) in x {
                match y.get(k) {
                    Some(w) => dropped(v, w, &format!("{path}.{k}"), out),
                    None => out.push(format!("{path}.{k}")),
                }
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                dropped(v, w, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn typed<T: DeserializeOwned + Serialize>(doc: &Value, what: &str) -> T {
    let t: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{what}: {e}"));
    let back = serde_json::to_value(&t).unwrap();
    let mut missing = Vec::new();
    dropped(doc, &back, "", &mut missing);
    missing.retain(|p| p != ".apiVersion" && p != ".kind");
    assert!(missing.is_empty(), "{what}: unknown fields {missing:?}");
    t
}

fn check(doc: &Value, what: &str) {
    match doc["kind"].as_str().unwrap_or_default() {
        "CustomResourceDefinition" => drop(typed::<CustomResourceDefinition>(doc, what)),
        "Namespace" => drop(typed::<Namespace>(doc, what)),
        "ServiceAccount" => drop(typed::<ServiceAccount>(doc, what)),
        "ClusterRole" => drop(typed::<ClusterRole>(doc, what)),
        "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(doc, what)),
        "Role" => drop(typed::<Role>(doc, what)),
        "RoleBinding" => drop(typed::<RoleBinding>(doc, what)),
        "Deployment" => drop(typed::<Deployment>(doc, what)),
        "Service" => drop(typed::<Service>(doc, what)),
        "MutatingWebhookConfiguration" => drop(typed::<MutatingWebhookConfiguration>(doc, what)),
        "ValidatingWebhookConfiguration" => {
            drop(typed::<ValidatingWebhookConfiguration>(doc, what))
        }
        other => panic!("{what}: unexpected kind {other}"),
    }
}

fn all(dir: &str) -> Vec<(String, Value)> {
    files(dir)
        .iter()
        .flat_map(|f| {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            docs(f).into_iter().map(move |d| (name.clone(), d))
        })
        .collect()
}

#[test]
fn every_crd_and_deploy_yaml_parses_as_its_kubernetes_type() {
    let mut n = 0;
    for dir in ["crds", "deploy"] {
        for (file, doc) in all(dir) {
            check(&doc, &format!("{dir}/{file} {}", doc["metadata"]["name"]));
            n += 1;
        }
    }
    assert!(n > 30, "only {n} documents");
}

fn find<'a>(docs: &'a [(String, Value)], kind: &str, name: &str) -> &'a Value {
    &docs
        .iter()
        .find(|(_, d)| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
        .1
}

#[test]
fn deploy_manifests_keep_istiod_contracts() {
    let docs = all("deploy");
    let svc: Service = serde_json::from_value(find(&docs, "Service", "istiod").clone()).unwrap();
    let ports: Vec<(i32, String)> = svc
        .spec
        .unwrap()
        .ports
        .unwrap()
        .iter()
        .map(|p| {
            let target = match &p.target_port {
                Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i)) => {
                    i.to_string()
                }
                other => format!("{other:?}"),
            };
            (p.port, target)
        })
        .collect();
    for want in [
        (15010, "15010"),
        (15012, "15012"),
        (443, "15017"),
        (15014, "15014"),
    ] {
        assert!(ports.contains(&(want.0, want.1.to_string())), "{ports:?}");
    }
    let d: Deployment =
        serde_json::from_value(find(&docs, "Deployment", "istiod").clone()).unwrap();
    assert_eq!(d.spec.replicas, Some(2));
    let c = &d.spec.template.spec.unwrap().containers[0];
    let probe = c
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(probe.path.as_deref(), Some("/ready"));
    // Identity on in-cluster with one flag: no JWKS file, no certificate files to mount.
    let args = c.args.clone().unwrap_or_default();
    assert_eq!(args[0], "discovery");
    assert!(args.iter().any(|a| a == "--identity"), "{args:?}");
    for absent in [
        "--jwks",
        "--webhook-cert",
        "--webhook-key",
        "--trust-domain",
    ] {
        assert!(!args.iter().any(|a| a == absent), "{absent} in {args:?}");
    }
    let flag_value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .map(|i| args[i + 1].as_str())
    };
    assert_eq!(flag_value("--secure-grpc-addr"), Some("0.0.0.0:15012"));
    assert_eq!(flag_value("--webhook-addr"), Some("0.0.0.0:15017"));
    // Every flag the Deployment passes is one `rudder discovery` knows.
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_rudder"))
        .args(["discovery", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in args.iter().filter(|a| a.starts_with("--")) {
        assert!(
            help.contains(flag.as_str()),
            "rudder discovery has no {flag}"
        );
    }

    let m: MutatingWebhookConfiguration = serde_json::from_value(
        find(
            &docs,
            "MutatingWebhookConfiguration",
            "istio-sidecar-injector",
        )
        .clone(),
    )
    .unwrap();
    let hooks = m.webhooks.unwrap();
    assert_eq!(hooks.len(), 2);
    for h in &hooks {
        assert_eq!(h.failure_policy.as_deref(), Some("Fail"));
        assert_eq!(h.side_effects, "None");
        assert_eq!(h.admission_review_versions, ["v1"]);
        assert_eq!(
            h.client_config.service.as_ref().unwrap().path.as_deref(),
            Some("/inject")
        );
        let obj = h
            .object_selector
            .as_ref()
            .unwrap()
            .match_expressions
            .as_ref()
            .unwrap();
        assert_eq!(
            (obj[0].key.as_str(), obj[0].operator.as_str()),
            ("sidecar.istio.io/inject", "NotIn")
        );
    }
    let ns0 = hooks[0].namespace_selector.as_ref().unwrap();
    assert_eq!(
        ns0.match_labels.as_ref().unwrap()["istio-injection"],
        "enabled"
    );
    let ns1 = hooks[1]
        .namespace_selector
        .as_ref()
        .unwrap()
        .match_expressions
        .as_ref()
        .unwrap();
    assert_eq!(ns1[0].key, "istio.io/rev");

    let v = find(
        &docs,
        "ValidatingWebhookConfiguration",
        "istio-validator-istio-system",
    );
    assert_eq!(
        v["webhooks"][0]["clientConfig"]["service"]["path"],
        "/validate"
    );

    // Least privilege: exactly these writes (and reads of the webhook configurations by name), nothing more.
    let role: ClusterRole =
        serde_json::from_value(find(&docs, "ClusterRole", "istiod-istio-system").clone()).unwrap();
    let ns_role: Role = serde_json::from_value(find(&docs, "Role", "istiod").clone()).unwrap();
    let mut writes = std::collections::BTreeSet::new();
    let rules = role.rules.unwrap().into_iter().map(|r| ("*", r));
    let ns_rules = ns_role
        .rules
        .unwrap()
        .into_iter()
        .map(|r| ("istio-system", r));
    let mut non_resource = Vec::new();
    for (scope, rule) in rules.chain(ns_rules) {
        if let Some(urls) = &rule.non_resource_urls {
            // Only reading the token issuer's keys and discovery document.
            assert_eq!(rule.verbs, ["get"], "{rule:?}");
            assert!(rule.resources.is_none(), "{rule:?}");
            non_resource.extend(urls.iter().map(|u| format!("{scope} {u}")));
        }
        assert!(
            !rule.verbs.iter().any(|v| v == "*" || v == "delete"),
            "{rule:?}"
        );
        let names = rule.resource_names.clone().unwrap_or_default().join(",");
        for r in rule.resources.clone().unwrap_or_default() {
            if r.contains("webhookconfigurations") {
                // Not even listed: only the two configurations rudder patches.
                assert_eq!(rule.verbs, ["get", "patch"], "{rule:?}");
            }
            for v in &rule.verbs {
                if !matches!(v.as_str(), "get" | "list" | "watch") {
                    writes.insert(format!("{scope} {v} {r} [{names}]"));
                }
            }
        }
    }
    let want: std::collections::BTreeSet<String> = [
        "* create configmaps []",
        "* update configmaps [istio-ca-root-cert]",
        "* patch mutatingwebhookconfigurations [istio-sidecar-injector]",
        "* patch validatingwebhookconfigurations [istio-validator-istio-system]",
        "istio-system create secrets []",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(writes, want);
    non_resource.sort();
    assert_eq!(
        non_resource,
        [
            format!("* {}", rudder::security::kube_jwks::DISCOVERY_PATH),
            format!("* {}", rudder::security::kube_jwks::JWKS_PATH),
        ]
    );
    // The names rudder writes are the ones deployed.
    let targets = rudder::security::kube_trust::Targets::istio("istio-system");
    assert_eq!(targets.mutating, ["istio-sidecar-injector"]);
    assert_eq!(targets.validating, ["istio-validator-istio-system"]);
    assert_eq!(
        rudder::security::kube_trust::ROOT_CONFIGMAP,
        "istio-ca-root-cert"
    );
    assert_eq!(rudder::security::kube_ca::CA_SECRET, "istio-ca-secret");

    let gw: Service =
        serde_json::from_value(find(&docs, "Service", "istio-ingressgateway").clone()).unwrap();
    assert_eq!(gw.spec.unwrap().type_.as_deref(), Some("LoadBalancer"));
    let gwd: Deployment =
        serde_json::from_value(find(&docs, "Deployment", "istio-ingressgateway").clone()).unwrap();
    let labels = gwd.spec.template.metadata.unwrap().labels.unwrap();
    assert_eq!(labels["istio"], "ingressgateway");
    let proxy = &gwd.spec.template.spec.unwrap().containers[0];
    assert_eq!(proxy.image.as_deref(), Some("envoyproxy/envoy:v1.40.0"));
}
