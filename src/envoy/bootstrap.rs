//! The stock-Envoy bootstrap rudder renders for sidecars and gateways (`rudder bootstrap`; the injector uses the
//! same code). It replaces istio-agent's generated bootstrap: node identity and metadata, ADS to rudder over
//! the static `xds-grpc` cluster, admin on 127.0.0.1:15000, Prometheus stats on 15090 and readiness on 15021.
//!
//! Rendered as JSON (`serde_json::Value`) rather than the Bootstrap proto: Envoy reads JSON/YAML bootstraps
//! natively and the proto crate has no JSON mapping. `envoy --mode validate` checks the result in the tests.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::{Value, json};

use crate::model::proxy::ProxyKind;

/// Where proxies find rudder by default (istiod's plaintext xDS port).
pub const DEFAULT_XDS_ADDRESS: &str = "istiod.istio-system.svc:15010";
/// Envoy admin port (loopback only).
pub const ADMIN_PORT: u16 = 15000;
/// Prometheus scrape port (`/stats/prometheus`).
pub const STATS_PORT: u16 = 15090;
/// Readiness port (`/healthz/ready`).
pub const READINESS_PORT: u16 = 15021;
/// Name of the static cluster that carries ADS.
pub const XDS_CLUSTER: &str = "xds-grpc";
/// Static cluster pointing at Envoy's own admin listener (for the stats and readiness listeners).
pub const ADMIN_CLUSTER: &str = "prometheus_stats";
/// Cluster id and mesh id reported in node metadata, as istiod's defaults.
pub const CLUSTER_ID: &str = "Kubernetes";
/// Istio version reported in metadata; tooling reads `ISTIO_VERSION` to decide feature support.
pub const ISTIO_VERSION: &str = "1.24.0";

/// The ADS flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdsApi {
    /// State of the world (`api_type: GRPC`).
    #[default]
    Grpc,
    /// Incremental (`api_type: DELTA_GRPC`).
    DeltaGrpc,
}

impl AdsApi {
    fn api_type(self) -> &'static str {
        match self {
            AdsApi::Grpc => "GRPC",
            AdsApi::DeltaGrpc => "DELTA_GRPC",
        }
    }
}

/// Everything the bootstrap depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub kind: ProxyKind,
    /// Pod IP (the node id's second field).
    pub ip: IpAddr,
    pub pod: String,
    pub namespace: String,
    /// Kubernetes DNS suffix of the node id's last field.
    pub domain_suffix: String,
    /// Node cluster; `None` derives `<app label or pod>.<namespace>` as istio-agent does.
    pub cluster: Option<String>,
    /// Pod labels, sent as the `LABELS` metadata (rudder scopes a proxy by them until its Pod is known).
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    /// `host:port` of rudder's ADS endpoint.
    pub xds_address: String,
    pub ads_api: AdsApi,
    pub admin_port: u16,
    pub stats_port: u16,
    pub readiness_port: u16,
}

impl Options {
    /// Options with Istio's ports and defaults for a proxy of `kind` at `ip` in pod `namespace/pod`.
    pub fn new(kind: ProxyKind, ip: IpAddr, pod: &str, namespace: &str) -> Options {
        Options {
            kind,
            ip,
            pod: pod.into(),
            namespace: namespace.into(),
            domain_suffix: "cluster.local".into(),
            cluster: None,
            labels: BTreeMap::new(),
            service_account: "default".into(),
            xds_address: DEFAULT_XDS_ADDRESS.into(),
            ads_api: AdsApi::Grpc,
            admin_port: ADMIN_PORT,
            stats_port: STATS_PORT,
            readiness_port: READINESS_PORT,
        }
    }

    /// `sidecar~<ip>~<pod>.<ns>~<ns>.svc.<suffix>` (or `router~…`).
    pub fn node_id(&self) -> String {
        let kind = match self.kind {
            ProxyKind::Sidecar => "sidecar",
            ProxyKind::Router => "router",
        };
        format!(
            "{kind}~{}~{}.{}~{}.svc.{}",
            self.ip, self.pod, self.namespace, self.namespace, self.domain_suffix
        )
    }

    /// The node cluster: explicit, else the `app` label (or the pod name) with the namespace.
    pub fn node_cluster(&self) -> String {
        if let Some(c) = &self.cluster {
            return c.clone();
        }
        let app = self
            .labels
            .get("app")
            .or_else(|| self.labels.get("app.kubernetes.io/name"))
            .cloned()
            .unwrap_or_else(|| self.pod.clone());
        format!("{app}.{}", self.namespace)
    }
}

/// The problem with an `--xds-address`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("xDS address {0:?} must be host:port")]
pub struct BadAddress(pub String);

/// Splits `host:port` (`[v6]:port` allowed).
fn split_host_port(addr: &str) -> Result<(String, u16), BadAddress> {
    let bad = || BadAddress(addr.to_string());
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

/// The complete bootstrap for `opts`.
pub fn render(opts: &Options) -> Result<Value, BadAddress> {
    let (xds_host, xds_port) = split_host_port(&opts.xds_address)?;
    // An IP needs no resolver; a name (the istiod Service) is resolved and re-resolved by Envoy.
    let xds_type = if xds_host.parse::<IpAddr>().is_ok() {
        "STATIC"
    } else {
        "STRICT_DNS"
    };
    let labels: serde_json::Map<String, Value> = opts
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let router = json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
    });
    let admin_listener = |name: &str, port: u16, stat_prefix: &str, route: Value| {
        json!({
            "name": name,
            "address": {"socket_address": {"protocol": "TCP", "address": "0.0.0.0", "port_value": port}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "codec_type": "AUTO",
                    "stat_prefix": stat_prefix,
                    "route_config": {"virtual_hosts": [{
                        "name": "backend",
                        "domains": ["*"],
                        "routes": [route]
                    }]},
                    "http_filters": [router.clone()]
                }
            }]}]
        })
    };
    let stats = admin_listener(
        &format!("0.0.0.0_{}", opts.stats_port),
        opts.stats_port,
        "stats",
        json!({"match": {"prefix": "/stats/prometheus"}, "route": {"cluster": ADMIN_CLUSTER}}),
    );
    // No istio-agent answers readiness, so ask Envoy itself: admin `/ready` is 200 once the initial xDS
    // fetch completed (the server is LIVE), 503 before.
    let readiness = admin_listener(
        &format!("0.0.0.0_{}", opts.readiness_port),
        opts.readiness_port,
        "agent",
        json!({
            "match": {"prefix": "/healthz/ready"},
            "route": {"cluster": ADMIN_CLUSTER, "prefix_rewrite": "/ready"}
        }),
    );
    let ads_source =
        json!({"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"});
    Ok(json!({
        "node": {
            "id": opts.node_id(),
            "cluster": opts.node_cluster(),
            "metadata": {
                "ISTIO_VERSION": ISTIO_VERSION,
                "LABELS": labels,
                "NAMESPACE": opts.namespace,
                "NAME": opts.pod,
                "SERVICE_ACCOUNT": opts.service_account,
                "INSTANCE_IPS": opts.ip.to_string(),
                "CLUSTER_ID": CLUSTER_ID,
                "MESH_ID": opts.domain_suffix,
                "INTERCEPTION_MODE": "REDIRECT",
                "PROXY_TYPE": match opts.kind { ProxyKind::Sidecar => "sidecar", ProxyKind::Router => "router" },
            }
        },
        "admin": {
            "address": {"socket_address": {"protocol": "TCP", "address": "127.0.0.1", "port_value": opts.admin_port}}
        },
        "dynamic_resources": {
            "lds_config": ads_source.clone(),
            "cds_config": ads_source,
            "ads_config": {
                "api_type": opts.ads_api.api_type(),
                "transport_api_version": "V3",
                "set_node_on_first_message_only": true,
                "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER}}]
            }
        },
        "static_resources": {
            "clusters": [
                {
                    "name": ADMIN_CLUSTER,
                    "type": "STATIC",
                    "connect_timeout": "0.250s",
                    "lb_policy": "ROUND_ROBIN",
                    "load_assignment": {"cluster_name": ADMIN_CLUSTER, "endpoints": [{"lb_endpoints": [{"endpoint": {
                        "address": {"socket_address": {"protocol": "TCP", "address": "127.0.0.1", "port_value": opts.admin_port}}
                    }}]}]}
                },
                {
                    "name": XDS_CLUSTER,
                    "type": xds_type,
                    "dns_lookup_family": "V4_PREFERRED",
                    "connect_timeout": "1s",
                    "lb_policy": "ROUND_ROBIN",
                    // ADS is one long-lived stream; the default limits (1024 requests) must never cut it.
                    "circuit_breakers": {"thresholds": [
                        {"priority": "DEFAULT", "max_connections": 100000, "max_pending_requests": 100000, "max_requests": 100000},
                        {"priority": "HIGH", "max_connections": 100000, "max_pending_requests": 100000, "max_requests": 100000}
                    ]},
                    "upstream_connection_options": {"tcp_keepalive": {"keepalive_time": 300}},
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {
                                "connection_keepalive": {"interval": "30s", "timeout": "10s"}
                            }}
                        }
                    },
                    "load_assignment": {"cluster_name": XDS_CLUSTER, "endpoints": [{"lb_endpoints": [{"endpoint": {
                        "address": {"socket_address": {"address": xds_host, "port_value": xds_port}}
                    }}]}]}
                }
            ],
            "listeners": [stats, readiness]
        }
    }))
}

/// Output format of `rudder bootstrap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Json,
    Yaml,
}

/// `bootstrap` as text in `format`.
pub fn to_text(bootstrap: &Value, format: Format) -> String {
    match format {
        // Serializing a `Value` cannot fail.
        Format::Json => serde_json::to_string_pretty(bootstrap).unwrap_or_default() + "\n",
        Format::Yaml => serde_saphyr::to_string(bootstrap).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_helpers::envoy::envoy_binary;

    fn sidecar() -> Options {
        let mut o = Options::new(
            ProxyKind::Sidecar,
            "10.244.1.5".parse().unwrap(),
            "fruits-api-v1-abc",
            "micro-shake-factory",
        );
        o.labels.insert("app".into(), "fruits-api".into());
        o.labels.insert("version".into(), "1".into());
        o
    }

    #[test]
    fn node_identity_and_metadata() {
        let b = render(&sidecar()).unwrap();
        assert_eq!(
            b["node"]["id"],
            "sidecar~10.244.1.5~fruits-api-v1-abc.micro-shake-factory~micro-shake-factory.svc.cluster.local"
        );
        assert_eq!(b["node"]["cluster"], "fruits-api.micro-shake-factory");
        let md = &b["node"]["metadata"];
        assert_eq!(md["LABELS"]["version"], "1");
        assert_eq!(md["NAMESPACE"], "micro-shake-factory");
        assert_eq!(md["NAME"], "fruits-api-v1-abc");
        assert_eq!(md["SERVICE_ACCOUNT"], "default");
        assert_eq!(md["ISTIO_VERSION"], ISTIO_VERSION);

        let mut gw = Options::new(
            ProxyKind::Router,
            "10.244.1.9".parse().unwrap(),
            "istio-ingressgateway-0",
            "istio-system",
        );
        gw.cluster = Some("istio-ingressgateway".into());
        let b = render(&gw).unwrap();
        assert_eq!(
            b["node"]["id"],
            "router~10.244.1.9~istio-ingressgateway-0.istio-system~istio-system.svc.cluster.local"
        );
        assert_eq!(b["node"]["cluster"], "istio-ingressgateway");
    }

    #[test]
    fn xds_cluster_static_for_ip_dns_for_names() {
        let b = render(&sidecar()).unwrap();
        let xds = &b["static_resources"]["clusters"][1];
        assert_eq!(xds["name"], XDS_CLUSTER);
        assert_eq!(xds["type"], "STRICT_DNS");
        let sa = &xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
            ["socket_address"];
        assert_eq!(sa["address"], "istiod.istio-system.svc");
        assert_eq!(sa["port_value"], 15010);
        assert_eq!(b["dynamic_resources"]["ads_config"]["api_type"], "GRPC");

        let mut o = sidecar();
        o.xds_address = "10.244.1.1:41000".into();
        o.ads_api = AdsApi::DeltaGrpc;
        let b = render(&o).unwrap();
        assert_eq!(b["static_resources"]["clusters"][1]["type"], "STATIC");
        assert_eq!(
            b["dynamic_resources"]["ads_config"]["api_type"],
            "DELTA_GRPC"
        );

        for bad in ["istiod", "istiod:", "istiod:0", ":15010", "h:99999"] {
            o.xds_address = bad.into();
            assert_eq!(render(&o), Err(BadAddress(bad.into())), "{bad}");
        }
    }

    #[test]
    fn admin_stats_and_readiness_listeners() {
        let b = render(&sidecar()).unwrap();
        assert_eq!(
            b["admin"]["address"]["socket_address"]["address"],
            "127.0.0.1"
        );
        assert_eq!(b["admin"]["address"]["socket_address"]["port_value"], 15000);
        let listeners = b["static_resources"]["listeners"].as_array().unwrap();
        let ports: Vec<_> = listeners
            .iter()
            .map(|l| {
                l["address"]["socket_address"]["port_value"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(ports, [15090, 15021]);
        let route = |l: &Value| {
            l["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]
                ["routes"][0]
                .clone()
        };
        assert_eq!(route(&listeners[0])["match"]["prefix"], "/stats/prometheus");
        assert_eq!(route(&listeners[1])["match"]["prefix"], "/healthz/ready");
        assert_eq!(route(&listeners[1])["route"]["prefix_rewrite"], "/ready");
    }

    /// Envoy itself accepts the JSON and the YAML rendering.
    #[test]
    fn envoy_validates_json_and_yaml() {
        let dir = tempfile::tempdir().unwrap();
        let mut gw = Options::new(
            ProxyKind::Router,
            "10.244.1.9".parse().unwrap(),
            "gw",
            "istio-system",
        );
        gw.xds_address = "127.0.0.1:15010".into();
        gw.ads_api = AdsApi::DeltaGrpc;
        for (name, opts, format) in [
            ("sidecar.json", sidecar(), Format::Json),
            ("sidecar.yaml", sidecar(), Format::Yaml),
            ("router.yaml", gw, Format::Yaml),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, to_text(&render(&opts).unwrap(), format)).unwrap();
            let out = std::process::Command::new(envoy_binary())
                .args(["--mode", "validate", "--log-level", "warn", "-c"])
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{name}: envoy --mode validate failed:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
