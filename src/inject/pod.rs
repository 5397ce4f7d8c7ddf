//! Sidecar injection as a pure function: a Pod (or a workload's pod template) and the template options in, the
//! injected pod out, plus the JSON patch between them for the admission webhook.
//!
//! The injected pod gets a stock Envoy container `istio-proxy` (UID 1337) whose `--config-yaml` argument is the
//! bootstrap from `envoy::bootstrap`, rendered with placeholders that Kubernetes expands from the downward API
//! (`$(POD_NAME)`, `$(POD_NAMESPACE)`, `$(INSTANCE_IP)`), a projected service-account token with audience
//! `istio-ca`, a readiness probe on 15021 and Prometheus annotations for 15090; and an init container
//! `istio-init` running `rudder iptables apply` with the pod's `traffic.sidecar.istio.io/*` annotations.
//! Injecting an injected pod changes nothing.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::core::v1::{Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};

use crate::envoy::bootstrap;
use crate::inject::iptables;
use crate::inject::proxy_config::{self, Effective};
use crate::model::proxy::ProxyKind;

/// Pod annotation / label that opts a pod in or out (`"false"` skips it).
pub const INJECT_ANNOTATION: &str = "sidecar.istio.io/inject";
/// Set on injected pods (Istio's marker, read by tooling).
pub const STATUS_ANNOTATION: &str = "sidecar.istio.io/status";
/// The sidecar container's name, as Istio's.
pub const PROXY_CONTAINER: &str = "istio-proxy";
/// The init container's name, as Istio's.
pub const INIT_CONTAINER: &str = "istio-init";
/// Default sidecar image: stock Envoy.
pub const DEFAULT_PROXY_IMAGE: &str = "envoyproxy/envoy:v1.40.0";
/// Default image of the init container (`rudder iptables apply`).
pub const DEFAULT_INIT_IMAGE: &str = "rudder:latest";
/// Where the projected service-account token is mounted.
pub const TOKEN_DIR: &str = "/var/run/secrets/tokens";
/// Audience of that token (what rudder's CA and xDS server check).
pub const TOKEN_AUDIENCE: &str = "istio-ca";

const IP_PLACEHOLDER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 233);
const POD_PLACEHOLDER: &str = "rudder-pod-name-placeholder";
const NS_PLACEHOLDER: &str = "rudder-pod-namespace-placeholder";
const SA_PLACEHOLDER: &str = "rudder-service-account-placeholder";

/// Injection settings (the injector's template options and mesh config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// Sidecar image.
    pub proxy_image: String,
    /// Init container image (must contain `rudder`).
    pub init_image: String,
    /// `host:port` of rudder's xDS endpoint.
    pub xds_address: String,
    /// Kubernetes DNS suffix.
    pub domain_suffix: String,
    /// Envoy worker threads (`--concurrency`; 0 omits it).
    pub concurrency: u32,
    /// Envoy `--drain-time-s` (mesh `defaultConfig.drainDuration`).
    pub drain_duration: std::time::Duration,
    /// How long the proxy keeps serving after termination starts (`terminationDrainDuration`).
    pub termination_drain_duration: std::time::Duration,
    /// Extra proxy environment (`defaultConfig.proxyMetadata`).
    pub proxy_metadata: BTreeMap<String, String>,
    /// Start apps only once Envoy is ready (`holdApplicationUntilProxyStarts`).
    pub hold_application_until_proxy_starts: bool,
}

impl Default for Template {
    fn default() -> Self {
        Template {
            proxy_image: DEFAULT_PROXY_IMAGE.into(),
            init_image: DEFAULT_INIT_IMAGE.into(),
            xds_address: bootstrap::DEFAULT_XDS_ADDRESS.into(),
            domain_suffix: "cluster.local".into(),
            concurrency: 2,
            drain_duration: std::time::Duration::from_secs(45),
            termination_drain_duration: std::time::Duration::from_secs(5),
            proxy_metadata: BTreeMap::new(),
            hold_application_until_proxy_starts: false,
        }
    }
}

impl Template {
    /// The template with the mesh config's `defaultConfig`: discovery address (when set), concurrency (when
    /// set), drain durations, proxy metadata and holdApplicationUntilProxyStarts.
    pub fn with_mesh(mut self, mesh: &crate::config::mesh::MeshConfig) -> Self {
        let d = &mesh.default_config;
        if !d.discovery_address.is_empty() {
            self.xds_address = d.discovery_address.clone();
        }
        if let Some(c) = d.concurrency {
            self.concurrency = c;
        }
        self.drain_duration = d.drain_duration.get();
        self.termination_drain_duration = d.termination_drain_duration.get();
        self.proxy_metadata = d.proxy_metadata.clone();
        if let Some(hold) = d.hold_application_until_proxy_starts {
            self.hold_application_until_proxy_starts = hold;
        }
        self
    }
}

/// Why a pod was left alone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Skip {
    /// `sidecar.istio.io/inject: "false"`.
    #[error("sidecar.istio.io/inject is false")]
    Disabled,
    /// The namespace is not labelled `istio-injection=enabled` or `istio.io/rev`.
    #[error("namespace {0} is not enabled for injection")]
    Namespace(String),
    /// The pod shares the node's network; capturing its traffic would capture the node's.
    #[error("pod uses the host network")]
    HostNetwork,
    /// It already has the sidecar.
    #[error("already injected")]
    AlreadyInjected,
}

/// Whether a namespace with these labels asks for injection.
pub fn namespace_enabled(labels: &BTreeMap<String, String>) -> bool {
    labels.get("istio-injection").map(String::as_str) == Some("enabled")
        || labels.contains_key("istio.io/rev")
}

/// Decides whether to inject. `namespace_labels` is `None` when unknown (the webhook's namespaceSelector has
/// already chosen, and `kube-inject` injects what it is given).
pub fn should_inject(
    meta: &ObjectMeta,
    spec: &PodSpec,
    namespace: &str,
    namespace_labels: Option<&BTreeMap<String, String>>,
) -> Result<(), Skip> {
    let flag = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(INJECT_ANNOTATION))
        .or_else(|| meta.labels.as_ref().and_then(|l| l.get(INJECT_ANNOTATION)))
        .map(|v| v.to_ascii_lowercase());
    if matches!(flag.as_deref(), Some("false" | "n" | "no" | "off")) {
        return Err(Skip::Disabled);
    }
    if spec.host_network == Some(true) {
        return Err(Skip::HostNetwork);
    }
    // A native sidecar (holdApplicationUntilProxyStarts) sits among the init containers.
    let native = spec.init_containers.iter().flatten();
    if spec
        .containers
        .iter()
        .chain(native)
        .any(|c| c.name == PROXY_CONTAINER)
    {
        return Err(Skip::AlreadyInjected);
    }
    let opted_in = matches!(flag.as_deref(), Some("true" | "y" | "yes" | "on"));
    if let Some(labels) = namespace_labels
        && !namespace_enabled(labels)
        && !opted_in
    {
        return Err(Skip::Namespace(namespace.to_string()));
    }
    Ok(())
}

/// Injects the sidecar into a pod template's metadata and spec (as JSON values, so fields rudder does not model
/// survive untouched). `namespace` is the pod's namespace.
pub fn inject_template(
    meta: &mut Value,
    spec: &mut Value,
    namespace: &str,
    template: &Template,
) -> Result<(), Skip> {
    let typed_meta: ObjectMeta = serde_json::from_value(meta.clone()).unwrap_or_default();
    let typed_spec: PodSpec = serde_json::from_value(spec.clone()).unwrap_or_default();
    should_inject(&typed_meta, &typed_spec, namespace, None)?;
    let annotations = typed_meta.annotations.clone().unwrap_or_default();
    let labels = typed_meta.labels.clone().unwrap_or_default();

    let pod_name = typed_meta
        .name
        .clone()
        .or(typed_meta.generate_name.clone())
        .unwrap_or_default();
    let eff = proxy_config::effective(template, &annotations, &format!("{namespace}/{pod_name}"));
    let init = init_container(&annotations, &typed_spec, template);
    let proxy = proxy_container(&labels, &eff, template);
    push(spec, "initContainers", init);
    let status = if eff.hold_application {
        // After istio-init (its rules must be in place before Envoy runs), before every app container: the
        // kubelet starts the apps only once the startup probe passed.
        push(spec, "initContainers", proxy);
        json!({
            "initContainers": [INIT_CONTAINER, PROXY_CONTAINER],
            "containers": [],
            "volumes": ["istio-envoy", "istio-token", "istiod-ca-cert"],
        })
    } else {
        push(spec, "containers", proxy);
        json!({
            "initContainers": [INIT_CONTAINER],
            "containers": [PROXY_CONTAINER],
            "volumes": ["istio-envoy", "istio-token", "istiod-ca-cert"],
        })
    };
    for v in volumes() {
        push(spec, "volumes", v);
    }
    set(meta, "annotations", STATUS_ANNOTATION, status.to_string());
    set(meta, "annotations", "prometheus.io/scrape", "true".into());
    set(
        meta,
        "annotations",
        "prometheus.io/port",
        bootstrap::STATS_PORT.to_string(),
    );
    set(
        meta,
        "annotations",
        "prometheus.io/path",
        "/stats/prometheus".into(),
    );
    // The registry marks endpoints with this label as mTLS-capable.
    set(meta, "labels", "security.istio.io/tlsMode", "istio".into());
    Ok(())
}

/// Injects a Pod, returning the injected Pod as JSON.
pub fn inject_pod(
    pod: &Value,
    namespace_labels: Option<&BTreeMap<String, String>>,
    template: &Template,
) -> Result<Value, Skip> {
    let typed: Pod = serde_json::from_value(pod.clone()).unwrap_or_default();
    let namespace = typed
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    should_inject(
        &typed.metadata,
        &typed.spec.clone().unwrap_or_default(),
        &namespace,
        namespace_labels,
    )?;
    let mut out = pod.clone();
    let mut meta = out.get("metadata").cloned().unwrap_or_else(|| json!({}));
    let mut spec = out.get("spec").cloned().unwrap_or_else(|| json!({}));
    inject_template(&mut meta, &mut spec, &namespace, template)?;
    out["metadata"] = meta;
    out["spec"] = spec;
    Ok(out)
}

fn push(obj: &mut Value, field: &str, item: Value) {
    if !obj.get(field).is_some_and(Value::is_array) {
        obj[field] = json!([]);
    }
    if let Some(a) = obj[field].as_array_mut() {
        a.push(item);
    }
}

fn set(obj: &mut Value, field: &str, key: &str, value: String) {
    if !obj.get(field).is_some_and(Value::is_object) {
        obj[field] = json!({});
    }
    obj[field][key] = value.into();
}

/// The container ports the app declares (for `excludeInboundPorts` defaults nothing is needed: every inbound
/// port is captured unless excluded).
fn init_container(
    annotations: &BTreeMap<String, String>,
    _spec: &PodSpec,
    template: &Template,
) -> Value {
    let ann = |k: &str| {
        annotations
            .get(&format!("traffic.sidecar.istio.io/{k}"))
            .map(|v| v.trim().to_string())
    };
    let mut args: Vec<String> = vec![
        "iptables".into(),
        "apply".into(),
        "-p".into(),
        iptables::OUTBOUND_CAPTURE_PORT.to_string(),
        "-z".into(),
        iptables::INBOUND_CAPTURE_PORT.to_string(),
        "-u".into(),
        iptables::PROXY_UID.to_string(),
        "-g".into(),
        iptables::PROXY_UID.to_string(),
        "-i".into(),
        ann("includeOutboundIPRanges").unwrap_or_else(|| "*".into()),
        "-b".into(),
        ann("includeInboundPorts").unwrap_or_else(|| "*".into()),
    ];
    for (flag, key) in [
        ("-x", "excludeOutboundIPRanges"),
        ("-o", "excludeOutboundPorts"),
        ("-d", "excludeInboundPorts"),
    ] {
        if let Some(v) = ann(key).filter(|v| !v.is_empty()) {
            args.push(flag.into());
            args.push(v);
        }
    }
    json!({
        "name": INIT_CONTAINER,
        "image": template.init_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["rudder"],
        "args": args,
        "resources": {"requests": {"cpu": "10m", "memory": "10Mi"}, "limits": {"cpu": "100m", "memory": "50Mi"}},
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "privileged": false,
            "readOnlyRootFilesystem": true,
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": false,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        },
    })
}

/// The bootstrap with downward-API placeholders Kubernetes expands in `args`.
fn bootstrap_arg(labels: &BTreeMap<String, String>, template: &Template) -> String {
    let mut opts = bootstrap::Options::new(
        ProxyKind::Sidecar,
        IpAddr::V4(IP_PLACEHOLDER),
        POD_PLACEHOLDER,
        NS_PLACEHOLDER,
    );
    opts.labels = labels.clone();
    opts.service_account = SA_PLACEHOLDER.into();
    opts.xds_address = template.xds_address.clone();
    opts.domain_suffix = template.domain_suffix.clone();
    let rendered = bootstrap::render(&opts).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "injector: bad xDS address; using the default");
        opts.xds_address = bootstrap::DEFAULT_XDS_ADDRESS.into();
        bootstrap::render(&opts).unwrap_or_default()
    });
    serde_json::to_string(&rendered)
        .unwrap_or_default()
        // `$` must not start an expansion Kubernetes would try (`$(`); double it where it is literal.
        .replace("$(", "$$(")
        .replace(&IP_PLACEHOLDER.to_string(), "$(INSTANCE_IP)")
        .replace(POD_PLACEHOLDER, "$(POD_NAME)")
        .replace(NS_PLACEHOLDER, "$(POD_NAMESPACE)")
        .replace(SA_PLACEHOLDER, "$(SERVICE_ACCOUNT)")
}

fn proxy_container(
    labels: &BTreeMap<String, String>,
    eff: &Effective,
    template: &Template,
) -> Value {
    let field = |path: &str| json!({"fieldRef": {"apiVersion": "v1", "fieldPath": path}});
    let mut args = vec!["--config-yaml".to_owned(), bootstrap_arg(labels, template)];
    // 0: Envoy picks one worker per core (Istio's meaning of concurrency 0).
    if eff.concurrency > 0 {
        args.extend(["--concurrency".to_owned(), eff.concurrency.to_string()]);
    }
    args.extend(
        [
            "--drain-time-s",
            &eff.drain_duration.as_secs().max(1).to_string(),
            "--drain-strategy",
            "immediate",
            "--disable-hot-restart",
            "--log-level",
            "warning",
        ]
        .map(str::to_owned),
    );
    let mut env = vec![
        json!({"name": "POD_NAME", "valueFrom": field("metadata.name")}),
        json!({"name": "POD_NAMESPACE", "valueFrom": field("metadata.namespace")}),
        json!({"name": "INSTANCE_IP", "valueFrom": field("status.podIP")}),
        json!({"name": "SERVICE_ACCOUNT", "valueFrom": field("spec.serviceAccountName")}),
    ];
    env.extend(
        eff.proxy_metadata
            .iter()
            .map(|(k, v)| json!({"name": k, "value": v})),
    );
    let mut c = json!({
        "name": PROXY_CONTAINER,
        "image": template.proxy_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["envoy"],
        "args": args,
        "env": env,
        "ports": [{"name": "http-envoy-prom", "containerPort": bootstrap::STATS_PORT, "protocol": "TCP"}],
        "readinessProbe": {
            "httpGet": {"path": "/healthz/ready", "port": bootstrap::READINESS_PORT},
            "initialDelaySeconds": 1,
            "periodSeconds": 2,
            "failureThreshold": 30,
            "timeoutSeconds": 3,
        },
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "2", "memory": "1Gi"}},
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "privileged": false,
            "readOnlyRootFilesystem": true,
            "runAsUser": iptables::PROXY_UID,
            "runAsGroup": iptables::PROXY_UID,
            "runAsNonRoot": true,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "istio-envoy", "mountPath": "/etc/istio/proxy"},
            {"name": "istio-token", "mountPath": TOKEN_DIR},
            {"name": "istiod-ca-cert", "mountPath": "/var/run/secrets/istio"},
        ],
    });
    let drain = eff.termination_drain_duration.as_secs();
    if drain > 0 {
        // No agent to drain on SIGTERM: the kubelet waits this long before signalling Envoy, which keeps
        // serving the app's in-flight and late requests meanwhile.
        c["lifecycle"] = json!({"preStop": {"sleep": {"seconds": drain}}});
    }
    if eff.hold_application {
        // A native sidecar: runs for the pod's lifetime, and the app containers start after its startup probe.
        c["restartPolicy"] = json!("Always");
        c["startupProbe"] = json!({
            "httpGet": {"path": "/healthz/ready", "port": bootstrap::READINESS_PORT},
            "periodSeconds": 1,
            "failureThreshold": 600,
            "timeoutSeconds": 3,
        });
    }
    c
}

fn volumes() -> Vec<Value> {
    vec![
        json!({"name": "istio-envoy", "emptyDir": {"medium": "Memory"}}),
        json!({"name": "istio-token", "projected": {"sources": [{"serviceAccountToken": {
            "audience": TOKEN_AUDIENCE, "expirationSeconds": 43200, "path": "istio-token"}}]}}),
        json!({"name": "istiod-ca-cert", "configMap": {"name": "istio-ca-root-cert", "optional": true}}),
    ]
}

/// A JSON patch (RFC 6902) turning `from` into `to`: objects are diffed key by key, arrays that only grew get
/// appends, anything else is replaced.
pub fn diff(from: &Value, to: &Value) -> Vec<Value> {
    let mut ops = Vec::new();
    diff_at(from, to, "", &mut ops);
    ops
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn diff_at(from: &Value, to: &Value, path: &str, ops: &mut Vec<Value>) {
    match (from, to) {
        (a, b) if a == b => {}
        (Value::Object(a), Value::Object(b)) => {
            for (k, va) in a {
                let p = format!("{path}/{}", escape(k));
                match b.get(k) {
                    Some(vb) => diff_at(va, vb, &p, ops),
                    None => ops.push(json!({"op": "remove", "path": p})),
                }
            }
            for (k, vb) in b {
                if !a.contains_key(k) {
                    ops.push(
                        json!({"op": "add", "path": format!("{path}/{}", escape(k)), "value": vb}),
                    );
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if b.len() > a.len() && b[..a.len()] == a[..] => {
            for v in &b[a.len()..] {
                ops.push(json!({"op": "add", "path": format!("{path}/-"), "value": v}));
            }
        }
        _ => ops.push(json!({"op": "replace", "path": path, "value": to})),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(extra_meta: Value, extra_spec: Value) -> Value {
        let mut p = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "nginx", "ports": [{"containerPort": 80}]}]},
        });
        for (k, v) in extra_meta.as_object().unwrap() {
            p["metadata"][k] = v.clone();
        }
        for (k, v) in extra_spec.as_object().unwrap() {
            p["spec"][k] = v.clone();
        }
        p
    }

    fn enabled() -> BTreeMap<String, String> {
        [("istio-injection".to_string(), "enabled".to_string())].into()
    }

    #[test]
    fn injects_proxy_init_volumes_and_annotations() {
        let out = inject_pod(
            &pod(json!({}), json!({})),
            Some(&enabled()),
            &Template::default(),
        )
        .unwrap();
        let containers = out["spec"]["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 2);
        let proxy = &containers[1];
        assert_eq!(proxy["name"], PROXY_CONTAINER);
        assert_eq!(proxy["image"], DEFAULT_PROXY_IMAGE);
        assert_eq!(proxy["securityContext"]["runAsUser"], 1337);
        assert_eq!(proxy["readinessProbe"]["httpGet"]["port"], 15021);
        let cfg = proxy["args"][1].as_str().unwrap();
        let boot: Value = serde_json::from_str(cfg).unwrap();
        assert_eq!(
            boot["node"]["id"],
            "sidecar~$(INSTANCE_IP)~$(POD_NAME).$(POD_NAMESPACE)~$(POD_NAMESPACE).svc.cluster.local"
        );
        let init = &out["spec"]["initContainers"][0];
        assert_eq!(init["name"], INIT_CONTAINER);
        assert_eq!(init["args"][0], "iptables");
        assert_eq!(
            init["securityContext"]["capabilities"]["add"],
            json!(["NET_ADMIN", "NET_RAW"])
        );
        let token = &out["spec"]["volumes"][1]["projected"]["sources"][0]["serviceAccountToken"];
        assert_eq!(token["audience"], "istio-ca");
        assert_eq!(
            out["metadata"]["annotations"]["prometheus.io/port"],
            "15090"
        );
        assert_eq!(
            out["metadata"]["labels"]["security.istio.io/tlsMode"],
            "istio"
        );
        // Typed: it is a valid Pod.
        let typed: Pod = serde_json::from_value(out).unwrap();
        assert_eq!(typed.spec.unwrap().containers.len(), 2);
    }

    #[test]
    fn proxy_config_annotation_shapes_the_sidecar() {
        let plain = inject_pod(
            &pod(json!({}), json!({})),
            Some(&enabled()),
            &Template::default(),
        )
        .unwrap();
        let proxy = &plain["spec"]["containers"][1];
        let args: Vec<&str> = proxy["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(
            args[2..],
            [
                "--concurrency",
                "2",
                "--drain-time-s",
                "45",
                "--drain-strategy",
                "immediate",
                "--disable-hot-restart",
                "--log-level",
                "warning"
            ]
        );
        assert_eq!(proxy["lifecycle"]["preStop"]["sleep"]["seconds"], 5);
        assert!(proxy.get("restartPolicy").is_none());

        let annotated = pod(
            json!({"annotations": {"proxy.istio.io/config":
                "concurrency: 0\ndrainDuration: 20s\nterminationDrainDuration: 30s\n\
                 proxyMetadata: {ISTIO_META_DNS_CAPTURE: \"true\"}\nholdApplicationUntilProxyStarts: true\n"}}),
            json!({}),
        );
        let out = inject_pod(&annotated, Some(&enabled()), &Template::default()).unwrap();
        // Held: Envoy is a native sidecar after istio-init, and the app is the only regular container.
        let containers = out["spec"]["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 1);
        assert_eq!(containers[0]["name"], "web");
        let inits = out["spec"]["initContainers"].as_array().unwrap();
        assert_eq!(inits[0]["name"], INIT_CONTAINER);
        let proxy = &inits[1];
        assert_eq!(proxy["name"], PROXY_CONTAINER);
        assert_eq!(proxy["restartPolicy"], "Always");
        assert_eq!(proxy["startupProbe"]["httpGet"]["path"], "/healthz/ready");
        assert_eq!(proxy["startupProbe"]["httpGet"]["port"], 15021);
        let args: Vec<&str> = proxy["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert!(!args.contains(&"--concurrency"), "{args:?}");
        let at = args.iter().position(|a| *a == "--drain-time-s").unwrap();
        assert_eq!(args[at + 1], "20");
        assert_eq!(proxy["lifecycle"]["preStop"]["sleep"]["seconds"], 30);
        assert!(
            proxy["env"]
                .as_array()
                .unwrap()
                .contains(&json!({"name": "ISTIO_META_DNS_CAPTURE", "value": "true"}))
        );
        let status: Value = serde_json::from_str(
            out["metadata"]["annotations"][STATUS_ANNOTATION]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            status["initContainers"],
            json!([INIT_CONTAINER, PROXY_CONTAINER])
        );
        // A valid Pod, and injecting it again changes nothing.
        let typed: Pod = serde_json::from_value(out.clone()).unwrap();
        let init = &typed.spec.unwrap().init_containers.unwrap()[1];
        assert_eq!(init.restart_policy.as_deref(), Some("Always"));
        assert_eq!(
            inject_pod(&out, Some(&enabled()), &Template::default()),
            Err(Skip::AlreadyInjected)
        );
    }

    #[test]
    fn mesh_default_config_reaches_the_template() {
        let mesh: crate::config::mesh::MeshConfig = serde_json::from_value(json!({
            "defaultConfig": {"concurrency": 3, "drainDuration": "10s",
                              "holdApplicationUntilProxyStarts": true,
                              "proxyMetadata": {"A": "1"}}}))
        .unwrap();
        let t = Template::default().with_mesh(&mesh);
        assert_eq!(t.concurrency, 3);
        assert_eq!(t.drain_duration, std::time::Duration::from_secs(10));
        assert!(t.hold_application_until_proxy_starts);
        assert_eq!(t.proxy_metadata["A"], "1");
        // The pod's annotation still wins.
        let p = pod(
            json!({"annotations": {"proxy.istio.io/config": "holdApplicationUntilProxyStarts: false"}}),
            json!({}),
        );
        let out = inject_pod(&p, Some(&enabled()), &t).unwrap();
        assert_eq!(out["spec"]["containers"][1]["name"], PROXY_CONTAINER);
    }

    #[test]
    fn traffic_annotations_reach_the_init_container() {
        let p = pod(
            json!({"annotations": {
                "traffic.sidecar.istio.io/includeOutboundIPRanges": "10.0.0.0/8",
                "traffic.sidecar.istio.io/excludeOutboundPorts": "5432,6379",
                "traffic.sidecar.istio.io/excludeInboundPorts": "9090",
            }}),
            json!({}),
        );
        let out = inject_pod(&p, None, &Template::default()).unwrap();
        let args: Vec<&str> = out["spec"]["initContainers"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let after = |flag: &str| args[args.iter().position(|a| *a == flag).unwrap() + 1];
        assert_eq!(after("-i"), "10.0.0.0/8");
        assert_eq!(after("-o"), "5432,6379");
        assert_eq!(after("-d"), "9090");
    }

    #[test]
    fn skips() {
        let t = Template::default();
        let off = pod(
            json!({"annotations": {INJECT_ANNOTATION: "false"}}),
            json!({}),
        );
        assert_eq!(inject_pod(&off, Some(&enabled()), &t), Err(Skip::Disabled));
        let off_label = pod(json!({"labels": {INJECT_ANNOTATION: "false"}}), json!({}));
        assert_eq!(
            inject_pod(&off_label, Some(&enabled()), &t),
            Err(Skip::Disabled)
        );
        let host = pod(json!({}), json!({"hostNetwork": true}));
        assert_eq!(
            inject_pod(&host, Some(&enabled()), &t),
            Err(Skip::HostNetwork)
        );
        let plain = pod(json!({}), json!({}));
        assert_eq!(
            inject_pod(&plain, Some(&BTreeMap::new()), &t),
            Err(Skip::Namespace("shop".into()))
        );
        let rev: BTreeMap<String, String> =
            [("istio.io/rev".to_string(), "default".to_string())].into();
        assert!(inject_pod(&plain, Some(&rev), &t).is_ok());
        let once = inject_pod(&plain, None, &t).unwrap();
        assert_eq!(inject_pod(&once, None, &t), Err(Skip::AlreadyInjected));
    }

    #[test]
    fn diff_appends_and_adds() {
        let a = json!({"metadata": {"name": "x"}, "spec": {"containers": [1]}});
        let b = json!({"metadata": {"name": "x", "annotations": {"a/b": "1"}}, "spec": {"containers": [1, 2], "volumes": [3]}});
        let ops = diff(&a, &b);
        assert_eq!(
            ops,
            vec![
                json!({"op": "add", "path": "/metadata/annotations", "value": {"a/b": "1"}}),
                json!({"op": "add", "path": "/spec/containers/-", "value": 2}),
                json!({"op": "add", "path": "/spec/volumes", "value": [3]}),
            ]
        );
        assert!(diff(&a, &a).is_empty());
    }
}
