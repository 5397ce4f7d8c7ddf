//! MeshConfig: what istiod reads from ConfigMap `istio` (key `mesh`), with Istio's defaults.
//!
//! The `mesh` value is YAML with camelCase keys, as `kubectl -n istio-system get cm istio -o yaml` shows. Fields
//! rudder uses are typed; Istio has dozens more, which are accepted and ignored so a stock ConfigMap loads.
//! Absent fields (and explicit `null`s, which protobuf JSON treats as unset) take Istio's defaults, and nested
//! messages such as `defaultConfig` are merged field by field onto the default, as istiod does.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use serde::{Deserialize, Serialize};

use crate::config::istio::common::Duration;

/// Name of the ConfigMap istiod reads mesh config from (in the root namespace).
pub const CONFIGMAP_NAME: &str = "istio";
/// The ConfigMap key holding the MeshConfig YAML.
pub const CONFIGMAP_KEY: &str = "mesh";

fn secs(s: u64) -> Duration {
    Duration(std::time::Duration::from_secs(s))
}

fn all_namespaces() -> Vec<String> {
    vec!["*".to_string()]
}

/// Mesh-wide settings (`meshConfig`), defaults applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MeshConfig {
    /// SPIFFE trust domain of workload identities (`spiffe://<trustDomain>/ns/<ns>/sa/<sa>`).
    pub trust_domain: String,
    /// Other trust domains treated as this one in authorization.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trust_domain_aliases: Vec<String>,
    /// Where mesh-wide policy (PeerAuthentication, Sidecar, EnvoyFilter …) lives.
    pub root_namespace: String,
    pub outbound_traffic_policy: OutboundTrafficPolicy,
    /// Envoy access log path; empty disables the mesh-wide access log.
    pub access_log_file: String,
    pub access_log_encoding: AccessLogEncoding,
    /// Envoy access log format string; empty means Istio's default format.
    pub access_log_format: String,
    /// Send Istio mTLS to destinations that have a sidecar unless a DestinationRule says otherwise.
    pub enable_auto_mtls: bool,
    /// Proxy defaults, overridable per workload with the `proxy.istio.io/config` annotation.
    pub default_config: ProxyConfig,
    /// Upstream connect timeout for clusters without a DestinationRule setting.
    pub connect_timeout: Duration,
    /// How long the inbound listener waits for the client's first bytes when sniffing; 0 disables the timeout.
    pub protocol_detection_timeout: Duration,
    /// Ingress class (`kubernetes.io/ingress.class`) rudder treats as Istio's.
    pub ingress_class: String,
    /// Service whose address is written into Ingress status.
    pub ingress_service: String,
    pub ingress_controller_mode: IngressControllerMode,
    pub enable_tracing: bool,
    /// Visibility of Services, VirtualServices and DestinationRules that have no `exportTo`.
    pub default_service_export_to: Vec<String>,
    pub default_virtual_service_export_to: Vec<String>,
    pub default_destination_rule_export_to: Vec<String>,
    /// Mesh-wide locality load balancing (the DestinationRule `localityLbSetting` message), kept as JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locality_lb_setting: Option<serde_json::Value>,
    /// Refresh interval of DNS-resolved clusters (ServiceEntry `resolution: DNS`).
    pub dns_refresh_rate: Duration,
    /// Named tracing, metrics, access-log and ext_authz providers, as JSON (one `{name, <kind>: {...}}` each).
    /// Istio's built-in `prometheus` and `envoy` providers are present unless replaced by name.
    pub extension_providers: Vec<serde_json::Value>,
    /// Providers Telemetry uses when a resource names none.
    pub default_providers: DefaultProviders,
    pub enable_prometheus_merge: bool,
}

impl Default for MeshConfig {
    /// Istio's defaults (what istiod runs with when the ConfigMap has no `mesh` key).
    fn default() -> Self {
        MeshConfig {
            trust_domain: "cluster.local".into(),
            trust_domain_aliases: Vec::new(),
            root_namespace: "istio-system".into(),
            outbound_traffic_policy: OutboundTrafficPolicy::default(),
            access_log_file: String::new(),
            access_log_encoding: AccessLogEncoding::Text,
            access_log_format: String::new(),
            enable_auto_mtls: true,
            default_config: ProxyConfig::default(),
            connect_timeout: secs(10),
            // Istio disabled the server-first detection timeout by default in 1.12 (0s = wait forever).
            protocol_detection_timeout: secs(0),
            ingress_class: "istio".into(),
            ingress_service: "istio-ingressgateway".into(),
            ingress_controller_mode: IngressControllerMode::Strict,
            enable_tracing: true,
            default_service_export_to: all_namespaces(),
            default_virtual_service_export_to: all_namespaces(),
            default_destination_rule_export_to: all_namespaces(),
            locality_lb_setting: None,
            dns_refresh_rate: secs(60),
            extension_providers: builtin_extension_providers(),
            default_providers: DefaultProviders {
                metrics: vec!["prometheus".into()],
                ..DefaultProviders::default()
            },
            enable_prometheus_merge: true,
        }
    }
}

/// Providers every install has, so Telemetry can name `prometheus` or `envoy` without configuring them.
fn builtin_extension_providers() -> Vec<serde_json::Value> {
    vec![
        serde_json::json!({"name": "prometheus", "prometheus": {}}),
        serde_json::json!({"name": "envoy", "envoyFileAccessLog": {"path": "/dev/stdout"}}),
    ]
}

/// `outboundTrafficPolicy: {mode}`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OutboundTrafficPolicy {
    pub mode: OutboundMode,
}

/// What sidecars do with traffic to hosts outside the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundMode {
    /// Pass it through to the original destination (`PassthroughCluster`).
    #[default]
    AllowAny,
    /// Drop it (`BlackHoleCluster`); external hosts need a ServiceEntry (the book's CL 32/33).
    RegistryOnly,
}

/// Access log encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AccessLogEncoding {
    #[default]
    Text,
    Json,
}

/// Which Ingress objects istiod translates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum IngressControllerMode {
    Unspecified,
    /// None.
    Off,
    /// Those without a class annotation, or with `ingressClass`.
    Default,
    /// Only those whose class is `ingressClass`.
    #[default]
    Strict,
}

/// `defaultProviders`: provider names per telemetry kind.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DefaultProviders {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tracing: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub access_logging: Vec<String>,
}

/// `defaultConfig`: the sidecar/gateway proxy settings (ProxyConfig), defaults applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProxyConfig {
    pub config_path: String,
    pub binary_path: String,
    pub service_cluster: String,
    /// How long Envoy drains listeners on a hot restart or LDS change.
    pub drain_duration: Duration,
    /// How long the agent waits for connections to drain when the pod terminates.
    pub termination_drain_duration: Duration,
    /// Where proxies reach the control plane (host:port).
    pub discovery_address: String,
    pub proxy_admin_port: u16,
    /// The agent's health/stats port (`/healthz/ready`, merged Prometheus stats).
    pub status_port: u16,
    /// Envoy worker threads; `None` lets the injector choose (2), 0 means one per core.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    pub control_plane_auth_policy: ControlPlaneAuthPolicy,
    pub stat_name_length: u32,
    /// Environment for the agent and bootstrap (`ISTIO_META_*` become node metadata).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub proxy_metadata: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold_application_until_proxy_starts: Option<bool>,
    pub tracing: ProxyTracing,
}

impl ProxyConfig {
    /// Outbound capture listener (iptables REDIRECT target for app egress). Fixed in Istio, not configurable.
    pub const OUTBOUND_PORT: u16 = 15001;
    /// Inbound capture listener.
    pub const INBOUND_PORT: u16 = 15006;
    /// Envoy's own readiness listener (`/healthz/ready`) on gateways and sidecars.
    pub const READINESS_PORT: u16 = 15021;
    /// Envoy Prometheus listener (`/stats/prometheus`).
    pub const PROMETHEUS_PORT: u16 = 15090;
}

impl Default for ProxyConfig {
    /// Istio's proxy defaults.
    fn default() -> Self {
        ProxyConfig {
            config_path: "./etc/istio/proxy".into(),
            binary_path: "/usr/local/bin/envoy".into(),
            service_cluster: "istio-proxy".into(),
            drain_duration: secs(45),
            termination_drain_duration: secs(5),
            discovery_address: "istiod.istio-system.svc:15012".into(),
            proxy_admin_port: 15000,
            status_port: 15020,
            concurrency: None,
            control_plane_auth_policy: ControlPlaneAuthPolicy::MutualTls,
            stat_name_length: 189,
            proxy_metadata: BTreeMap::new(),
            hold_application_until_proxy_starts: None,
            tracing: ProxyTracing::default(),
        }
    }
}

/// How proxies authenticate to the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ControlPlaneAuthPolicy {
    None,
    #[default]
    MutualTls,
    Inherit,
}

/// `defaultConfig.tracing`: the legacy (pre-Telemetry API) tracer settings. One tracer is used; Zipkin is the
/// default, and naming any other tracer replaces it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProxyTracing {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zipkin: Option<ZipkinTracer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lightstep: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datadog: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stackdriver: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_census_agent: Option<serde_json::Value>,
    /// Sampling percentage 0–100; `None` means Istio's default (1%).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampling: Option<f64>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub custom_tags: BTreeMap<String, serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_path_tag_length: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_settings: Option<serde_json::Value>,
}

/// The tracers other than Zipkin; naming one replaces the default Zipkin tracer (they are a protobuf oneof).
const OTHER_TRACERS: [&str; 4] = ["lightstep", "datadog", "stackdriver", "openCensusAgent"];

impl Default for ProxyTracing {
    fn default() -> Self {
        ProxyTracing {
            zipkin: Some(ZipkinTracer {
                address: "zipkin.istio-system:9411".into(),
            }),
            lightstep: None,
            datadog: None,
            stackdriver: None,
            open_census_agent: None,
            sampling: None,
            custom_tags: BTreeMap::new(),
            max_path_tag_length: None,
            tls_settings: None,
        }
    }
}

/// `zipkin: {address}`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ZipkinTracer {
    pub address: String,
}

impl MeshConfig {
    /// Reads the `mesh` key of the `istio` ConfigMap. A missing key (or empty value) means all defaults; fields
    /// not set take Istio's defaults; fields rudder does not use are ignored.
    pub fn from_configmap(cm: &ConfigMap) -> Result<MeshConfig, String> {
        match cm.data.as_ref().and_then(|d| d.get(CONFIGMAP_KEY)) {
            Some(text) => MeshConfig::from_yaml(text),
            None => Ok(MeshConfig::default()),
        }
    }

    /// Parses MeshConfig YAML (the value of the `mesh` key). Errors name the field: `data.mesh.connectTimeout: …`.
    pub fn from_yaml(text: &str) -> Result<MeshConfig, String> {
        let mut value =
            crate::config::parse::yaml_value(text).map_err(|e| format!("data.mesh: {e}"))?;
        if value.is_null() {
            return Ok(MeshConfig::default());
        }
        if !value.is_object() {
            return Err("data.mesh: expected a mapping of MeshConfig fields".into());
        }
        strip_nulls(&mut value);
        let raw = value.clone();
        let mut mesh: MeshConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            format!("data.mesh.{path}: {}", e.into_inner())
        })?;
        mesh.merge_oneofs_and_lists(&raw);
        mesh.check()?;
        Ok(mesh)
    }

    /// Undoes field-wise defaulting where protobuf merging would not apply it: a non-Zipkin tracer replaces the
    /// default Zipkin one, and user extension providers are added to the built-ins (replacing by name).
    fn merge_oneofs_and_lists(&mut self, raw: &serde_json::Value) {
        let tracing = raw.pointer("/defaultConfig/tracing");
        let names_other_tracer = tracing.and_then(|t| t.as_object()).is_some_and(|t| {
            OTHER_TRACERS.iter().any(|k| t.contains_key(*k)) && !t.contains_key("zipkin")
        });
        if names_other_tracer {
            self.default_config.tracing.zipkin = None;
        }
        if raw.get("extensionProviders").is_some() {
            let name =
                |p: &serde_json::Value| p.get("name").and_then(|n| n.as_str()).map(str::to_owned);
            let user: Vec<Option<String>> = self.extension_providers.iter().map(name).collect();
            for builtin in builtin_extension_providers() {
                if !user.contains(&name(&builtin)) {
                    self.extension_providers.push(builtin);
                }
            }
        }
    }

    /// Rules istiod enforces on mesh config.
    fn check(&self) -> Result<(), String> {
        let one_ms = std::time::Duration::from_millis(1);
        if self.connect_timeout.get() < one_ms {
            return Err(format!(
                "data.mesh.connectTimeout: {} is too short (at least 1ms)",
                self.connect_timeout
            ));
        }
        let pdt = self.protocol_detection_timeout.get();
        if !pdt.is_zero() && pdt < one_ms {
            return Err(format!(
                "data.mesh.protocolDetectionTimeout: {} must be 0s (no timeout) or at least 1ms",
                self.protocol_detection_timeout
            ));
        }
        if self.trust_domain.is_empty() {
            return Err("data.mesh.trustDomain: must not be empty".into());
        }
        if self.default_config.proxy_admin_port == 0 || self.default_config.status_port == 0 {
            return Err(
                "data.mesh.defaultConfig: proxyAdminPort and statusPort must not be 0".into(),
            );
        }
        Ok(())
    }
}

/// Removes `key: null` entries at every level: protobuf JSON treats null as "unset", so the default applies.
fn strip_nulls(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.retain(|_, v| !v.is_null());
            m.values_mut().for_each(strip_nulls);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configmap(mesh: Option<&str>) -> ConfigMap {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some(CONFIGMAP_NAME.into());
        cm.metadata.namespace = Some("istio-system".into());
        if let Some(m) = mesh {
            cm.data = Some([(CONFIGMAP_KEY.to_string(), m.to_string())].into());
        }
        cm
    }

    #[test]
    fn defaults_are_istios() {
        let m = MeshConfig::default();
        assert_eq!(m.trust_domain, "cluster.local");
        assert_eq!(m.root_namespace, "istio-system");
        assert_eq!(m.outbound_traffic_policy.mode, OutboundMode::AllowAny);
        assert_eq!(m.access_log_file, "");
        assert_eq!(m.access_log_encoding, AccessLogEncoding::Text);
        assert!(m.enable_auto_mtls);
        assert_eq!(m.connect_timeout.to_string(), "10s");
        assert_eq!(m.dns_refresh_rate.to_string(), "60s");
        assert_eq!(m.ingress_class, "istio");
        assert_eq!(m.ingress_service, "istio-ingressgateway");
        assert_eq!(m.default_service_export_to, vec!["*"]);
        assert_eq!(m.default_virtual_service_export_to, vec!["*"]);
        assert_eq!(m.default_destination_rule_export_to, vec!["*"]);
        let p = &m.default_config;
        assert_eq!((p.proxy_admin_port, p.status_port), (15000, 15020));
        assert_eq!(p.discovery_address, "istiod.istio-system.svc:15012");
        assert_eq!(p.drain_duration.to_string(), "45s");
        assert_eq!(
            (
                ProxyConfig::OUTBOUND_PORT,
                ProxyConfig::INBOUND_PORT,
                ProxyConfig::READINESS_PORT,
                ProxyConfig::PROMETHEUS_PORT
            ),
            (15001, 15006, 15021, 15090)
        );

        // No ConfigMap key, an empty value and `{}` all mean the defaults.
        for cm in [configmap(None), configmap(Some("")), configmap(Some("{}"))] {
            assert_eq!(MeshConfig::from_configmap(&cm).unwrap(), m);
        }
    }

    #[test]
    fn registry_only_from_the_books_configmap() {
        let cm = configmap(Some(
            "accessLogFile: /dev/stdout\nenableAutoMtls: true\noutboundTrafficPolicy:\n  mode: REGISTRY_ONLY\ndefaultConfig:\n  proxyMetadata:\n    ISTIO_META_DNS_CAPTURE: \"true\"\n  concurrency: 2\n",
        ));
        let m = MeshConfig::from_configmap(&cm).unwrap();
        assert_eq!(m.outbound_traffic_policy.mode, OutboundMode::RegistryOnly);
        assert_eq!(m.access_log_file, "/dev/stdout");
        // Setting some ProxyConfig fields keeps the defaults of the others.
        assert_eq!(m.default_config.concurrency, Some(2));
        assert_eq!(m.default_config.proxy_admin_port, 15000);
        assert_eq!(
            m.default_config.proxy_metadata["ISTIO_META_DNS_CAPTURE"],
            "true"
        );
        assert_eq!(m.trust_domain, "cluster.local");
    }

    #[test]
    fn unknown_fields_and_nulls_are_tolerated() {
        let yaml = "\
enablePrometheusMerge: true
rootNamespace: istio-system
trustDomain: example.org
meshNetworks: {networks: {}}
discoverySelectors: [{matchLabels: {env: prod}}]
someFutureField: {nested: [1, 2]}
localityLbSetting: null
defaultConfig:
  tracing:
    datadog: {address: dd:8126}
  holdApplicationUntilProxyStarts: true
  gatewayTopology: {numTrustedProxies: 1}
extensionProviders:
- name: otel
  opentelemetry: {service: otel.observability.svc.cluster.local, port: 4317}
";
        let m = MeshConfig::from_yaml(yaml).unwrap();
        assert_eq!(m.trust_domain, "example.org");
        assert_eq!(m.locality_lb_setting, None);
        assert_eq!(
            m.default_config.hold_application_until_proxy_starts,
            Some(true)
        );
        // Naming another tracer replaces the default Zipkin one.
        assert_eq!(m.default_config.tracing.zipkin, None);
        assert!(m.default_config.tracing.datadog.is_some());
        let names: Vec<&str> = m
            .extension_providers
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert_eq!(names, ["otel", "prometheus", "envoy"]);
    }

    #[test]
    fn bad_values_name_the_field() {
        let err = MeshConfig::from_yaml("outboundTrafficPolicy: {mode: DENY_ALL}").unwrap_err();
        assert!(
            err.starts_with("data.mesh.outboundTrafficPolicy.mode: unknown variant `DENY_ALL`"),
            "{err}"
        );
        let err = MeshConfig::from_yaml("connectTimeout: 10").unwrap_err();
        assert!(err.starts_with("data.mesh.connectTimeout: "), "{err}");
        let err = MeshConfig::from_yaml("connectTimeout: 0s").unwrap_err();
        assert_eq!(
            err,
            "data.mesh.connectTimeout: 0s is too short (at least 1ms)"
        );
        assert!(MeshConfig::from_yaml("- a\n- b").is_err());
    }
}
