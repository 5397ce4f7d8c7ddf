//! Table tests: YAML in, effective mode per port out.

use super::*;
use crate::test_helpers::mesh::snapshot_from_yaml;

/// Pod `web-1` (app=web, ports http 8080, metrics 9090) and `db-1` (app=db, 5432) in `shop`; Service `web`
/// (80 → http, 9090 by number) and `db`.
const BASE: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec:
  containers:
  - name: web
    ports: [{name: http, containerPort: 8080}, {name: metrics, containerPort: 9090}]
status: {phase: Running, podIP: 10.0.0.5}
---
apiVersion: v1
kind: Pod
metadata: {name: db-1, namespace: shop, labels: {app: db}}
spec:
  containers:
  - name: db
    ports: [{containerPort: 5432}]
status: {phase: Running, podIP: 10.0.0.6}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}, {name: http-metrics, port: 9090}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec:
  selector: {app: db}
  ports: [{name: tcp, port: 5432}]
"#;

fn pa(ns: &str, name: &str, body: &str) -> String {
    format!(
        "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{body}\n"
    )
}

fn pa_at(ns: &str, name: &str, created: &str, body: &str) -> String {
    format!(
        "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {ns}, creationTimestamp: \"{created}\"}}\nspec:\n{body}\n"
    )
}

fn legacy(kind: &str, ns: Option<&str>, name: &str, body: &str) -> String {
    let ns = ns.map(|n| format!(", namespace: {n}")).unwrap_or_default();
    format!(
        "---\napiVersion: authentication.istio.io/v1alpha1\nkind: {kind}\nmetadata: {{name: {name}{ns}}}\nspec:\n{body}\n"
    )
}

/// `(web 8080, web 9090, db 5432)` modes.
fn modes(extra: &str) -> (MtlsMode, MtlsMode, MtlsMode) {
    let snap = snapshot_from_yaml(&format!("{BASE}{extra}"));
    let web = snap.workload("shop", "web-1").unwrap().clone();
    let db = snap.workload("shop", "db-1").unwrap().clone();
    (
        effective_mtls(&snap, &web, 8080),
        effective_mtls(&snap, &web, 9090),
        effective_mtls(&snap, &db, 5432),
    )
}

use MtlsMode::{Disable as D, Permissive as P, Strict as S};

#[test]
fn peer_authentication_levels_and_inheritance() {
    let cases: Vec<(&str, String, (MtlsMode, MtlsMode, MtlsMode))> = vec![
        ("nothing: PERMISSIVE", String::new(), (P, P, P)),
        (
            "mesh STRICT",
            pa("istio-system", "default", "  mtls: {mode: STRICT}"),
            (S, S, S),
        ),
        (
            "mesh STRICT, namespace DISABLE",
            pa("istio-system", "default", "  mtls: {mode: STRICT}")
                + &pa("shop", "default", "  mtls: {mode: DISABLE}"),
            (D, D, D),
        ),
        (
            "mesh STRICT, namespace UNSET inherits",
            pa("istio-system", "default", "  mtls: {mode: STRICT}")
                + &pa("shop", "default", "  mtls: {mode: UNSET}"),
            (S, S, S),
        ),
        (
            "other namespace's policy does not apply",
            pa("other", "default", "  mtls: {mode: STRICT}"),
            (P, P, P),
        ),
        (
            "workload STRICT beats namespace DISABLE, only for its pods",
            pa("shop", "default", "  mtls: {mode: DISABLE}")
                + &pa(
                    "shop",
                    "web",
                    "  selector: {matchLabels: {app: web}}\n  mtls: {mode: STRICT}",
                ),
            (S, S, D),
        ),
        (
            "workload UNSET inherits the namespace",
            pa("shop", "default", "  mtls: {mode: STRICT}")
                + &pa(
                    "shop",
                    "web",
                    "  selector: {matchLabels: {app: web}}\n  mtls: {mode: UNSET}\n  portLevelMtls:\n    9090: {mode: DISABLE}",
                ),
            (S, D, S),
        ),
        (
            "DISABLE on a port under a STRICT namespace",
            pa("shop", "default", "  mtls: {mode: STRICT}")
                + &pa(
                    "shop",
                    "web-metrics",
                    "  selector: {matchLabels: {app: web}}\n  portLevelMtls:\n    9090: {mode: DISABLE}",
                ),
            (S, D, S),
        ),
        (
            "port UNSET inherits the workload",
            pa(
                "shop",
                "web",
                "  selector: {matchLabels: {app: web}}\n  mtls: {mode: STRICT}\n  portLevelMtls:\n    9090: {mode: UNSET}",
            ),
            (S, S, P),
        ),
        (
            "selector policies in the root namespace are ignored",
            pa(
                "istio-system",
                "web",
                "  selector: {matchLabels: {app: web}}\n  mtls: {mode: STRICT}",
            ),
            (P, P, P),
        ),
        (
            "two namespace policies: the oldest wins",
            pa_at(
                "shop",
                "b-new",
                "2024-02-01T00:00:00Z",
                "  mtls: {mode: DISABLE}",
            ) + &pa_at(
                "shop",
                "a-old",
                "2024-01-01T00:00:00Z",
                "  mtls: {mode: STRICT}",
            ) + &pa_at(
                "shop",
                "c-newer",
                "2024-03-01T00:00:00Z",
                "  mtls: {mode: PERMISSIVE}",
            ),
            (S, S, S),
        ),
        (
            "same age: the first name wins",
            pa("shop", "b", "  mtls: {mode: DISABLE}") + &pa("shop", "a", "  mtls: {mode: STRICT}"),
            (S, S, S),
        ),
    ];
    for (case, yaml, want) in cases {
        assert_eq!(modes(&yaml), want, "{case}");
    }
}

#[test]
fn legacy_mesh_policy_and_policies() {
    let strict_mesh = legacy("MeshPolicy", None, "default", "  peers: [{mtls: {}}]");
    let cases: Vec<(&str, String, (MtlsMode, MtlsMode, MtlsMode))> = vec![
        (
            "MeshPolicy mtls {} is STRICT",
            strict_mesh.clone(),
            (S, S, S),
        ),
        (
            "MeshPolicy PERMISSIVE",
            legacy(
                "MeshPolicy",
                None,
                "default",
                "  peers: [{mtls: {mode: PERMISSIVE}}]",
            ),
            (P, P, P),
        ),
        (
            "namespace Policy without peers replaces the MeshPolicy",
            strict_mesh.clone() + &legacy("Policy", Some("shop"), "default", "  origins: []"),
            (D, D, D),
        ),
        (
            "Policy targeting a service: its ports only",
            legacy(
                "Policy",
                Some("shop"),
                "db-mtls",
                "  targets: [{name: db}]\n  peers: [{mtls: {}}]",
            ),
            (P, P, S),
        ),
        (
            "Policy without peers for one service under a STRICT MeshPolicy",
            strict_mesh.clone()
                + &legacy(
                    "Policy",
                    Some("shop"),
                    "web-plain",
                    "  targets: [{name: web}]",
                ),
            (D, D, S),
        ),
        (
            "Policy target by service port number (80 → target 8080)",
            strict_mesh.clone()
                + &legacy(
                    "Policy",
                    Some("shop"),
                    "web-80",
                    "  targets: [{name: web, ports: [{number: 80}]}]",
                ),
            (D, S, S),
        ),
        (
            "Policy target by service port name",
            strict_mesh.clone()
                + &legacy(
                    "Policy",
                    Some("shop"),
                    "web-metrics",
                    "  targets: [{name: web, ports: [{name: http-metrics}]}]",
                ),
            (S, D, S),
        ),
        (
            "PeerAuthentication beats MeshPolicy at the mesh level",
            strict_mesh.clone() + &pa("istio-system", "default", "  mtls: {mode: DISABLE}"),
            (D, D, D),
        ),
    ];
    for (case, yaml, want) in cases {
        assert_eq!(modes(&yaml), want, "{case}");
    }
}

#[test]
fn namespace_mode_ignores_workload_policies() {
    let snap = snapshot_from_yaml(&format!(
        "{BASE}{}{}",
        pa("shop", "default", "  mtls: {mode: DISABLE}"),
        pa(
            "shop",
            "web",
            "  selector: {matchLabels: {app: web}}\n  mtls: {mode: STRICT}"
        )
    ));
    assert_eq!(namespace_mtls(&snap, "shop"), D);
    assert_eq!(namespace_mtls(&snap, "other"), P);
    let web = snap.workload("shop", "web-1").unwrap();
    let merged = workload_mtls(&snap, "shop", &web.labels, Some(web));
    assert_eq!(merged.mode, S);
    assert!(merged.any_tls());
}
