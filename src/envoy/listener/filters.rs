//! Building blocks shared by every listener: the HTTP connection manager istiod configures, tcp_proxy to one or
//! several clusters, listener filters, the mesh access log, and the `istio.config` back-reference metadata.

use envoy_types::pb::envoy::config::accesslog::v3::{AccessLog, access_log};
use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ApiVersion, CidrRange, ConfigSource, DataSource, Metadata,
    SubstitutionFormatString, config_source, data_source, substitution_format_string,
};
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, ListenerFilter, filter, listener_filter,
};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::{
    FileAccessLog, file_access_log,
};
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::Cors;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager as hcm, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::google::protobuf::value::Kind as ValueKind;
use envoy_types::pb::google::protobuf::{
    Any, BoolValue, Duration as PbDuration, ListValue, Struct, UInt32Value, Value,
};
use prost::Name;

use crate::config::mesh::{AccessLogEncoding, MeshConfig};

/// Network filter names Envoy knows the typed configs under.
pub const HCM_FILTER: &str = "envoy.filters.network.http_connection_manager";
pub const TCP_PROXY_FILTER: &str = "envoy.filters.network.tcp_proxy";
/// HTTP filter names. The route generator attaches `typed_per_filter_config` under the fault and CORS names, so
/// these must stay exactly as istiod spells them.
pub const FAULT_FILTER: &str = "envoy.filters.http.fault";
pub const CORS_FILTER: &str = "envoy.filters.http.cors";
pub const ROUTER_FILTER: &str = "envoy.filters.http.router";
pub const ORIGINAL_DST_FILTER: &str = "envoy.filters.listener.original_dst";
pub const TLS_INSPECTOR_FILTER: &str = "envoy.filters.listener.tls_inspector";

/// Packs a message into `Any` with its type URL.
pub fn any<M: Name>(msg: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: msg.encode_to_vec(),
    }
}

/// `BoolValue` wrapper.
pub fn bool_value(value: bool) -> Option<BoolValue> {
    Some(BoolValue { value })
}

/// `0s` — istiod's "no timeout / don't wait" value.
pub fn zero_duration() -> Option<PbDuration> {
    Some(PbDuration {
        seconds: 0,
        nanos: 0,
    })
}

/// RDS and friends come over the same ADS stream. `initial_fetch_timeout: 0s` (as istiod) keeps a listener from
/// being held back when its route name has no configuration yet.
pub fn ads_config_source() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        resource_api_version: ApiVersion::V3 as i32,
        initial_fetch_timeout: zero_duration(),
        ..Default::default()
    }
}

/// Which side of the mesh an HTTP connection manager faces; decides trust in client addresses and XFCC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HcmRole {
    /// A sidecar's outbound or inbound port: the peer is inside the pod or the mesh.
    Sidecar,
    /// A gateway: the peer is an external client, so its address is the remote address.
    Gateway,
}

/// Where an HTTP connection manager takes its routes from.
pub enum RouteSource {
    /// RDS over ADS under this route name.
    Rds(String),
    /// A route configuration carried in the listener (the inbound chains).
    Inline(RouteConfiguration),
}

/// The HTTP connection manager istiod builds for sidecar and gateway ports.
pub fn http_connection_manager(
    stat_prefix: String,
    routes: RouteSource,
    role: HcmRole,
    mesh: &MeshConfig,
) -> HttpConnectionManager {
    let route_specifier = match routes {
        RouteSource::Rds(name) => hcm::RouteSpecifier::Rds(Rds {
            config_source: Some(ads_config_source()),
            route_config_name: name,
        }),
        RouteSource::Inline(rc) => hcm::RouteSpecifier::RouteConfig(rc),
    };
    let forward_client_cert_details = match role {
        HcmRole::Sidecar => hcm::ForwardClientCertDetails::AppendForward,
        HcmRole::Gateway => hcm::ForwardClientCertDetails::SanitizeSet,
    };
    HttpConnectionManager {
        codec_type: hcm::CodecType::Auto as i32,
        stat_prefix,
        route_specifier: Some(route_specifier),
        http_filters: http_filters(),
        server_name: crate::envoy::names::SERVER_NAME.to_owned(),
        // Requests get an x-request-id if they have none; an existing one (and the x-b3-* / traceparent headers,
        // which Envoy never strips) passes through so applications can propagate traces.
        generate_request_id: bool_value(true),
        // Sidecars see traffic from their own pod or from other sidecars: the downstream address is not the
        // client's. Gateways face the real clients.
        use_remote_address: bool_value(role == HcmRole::Gateway),
        normalize_path: bool_value(true),
        path_with_escaped_slashes_action: hcm::PathWithEscapedSlashesAction::KeepUnchanged as i32,
        forward_client_cert_details: forward_client_cert_details as i32,
        set_current_client_cert_details: Some(hcm::SetCurrentClientCertDetails {
            subject: bool_value(true),
            dns: true,
            uri: true,
            ..Default::default()
        }),
        upgrade_configs: vec![hcm::UpgradeConfig {
            upgrade_type: "websocket".to_owned(),
            ..Default::default()
        }],
        // istiod disables the stream idle timeout: long polls and streams are the application's business.
        stream_idle_timeout: zero_duration(),
        access_log: access_logs(mesh),
        ..Default::default()
    }
}

/// fault, cors, router — in this order, with empty configs; routes enable fault and CORS per route.
fn http_filters() -> Vec<HttpFilter> {
    let filter = |name: &str, config: Any| HttpFilter {
        name: name.to_owned(),
        config_type: Some(http_filter::ConfigType::TypedConfig(config)),
        ..Default::default()
    };
    vec![
        filter(FAULT_FILTER, any(&HttpFault::default())),
        filter(CORS_FILTER, any(&Cors::default())),
        filter(ROUTER_FILTER, any(&Router::default())),
    ]
}

/// The network filter wrapping an HTTP connection manager.
pub fn hcm_filter(hcm: &HttpConnectionManager) -> Filter {
    Filter {
        name: HCM_FILTER.to_owned(),
        config_type: Some(filter::ConfigType::TypedConfig(any(hcm))),
    }
}

/// A weighted upstream of a tcp_proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightedCluster {
    pub name: String,
    pub weight: u32,
}

/// A tcp_proxy filter to one cluster, or split by weight over several. Zero weights are dropped (Envoy requires
/// weights ≥ 1); returns `None` when nothing is left.
pub fn tcp_proxy_filter(clusters: &[WeightedCluster], mesh: &MeshConfig) -> Option<Filter> {
    let live: Vec<&WeightedCluster> = clusters.iter().filter(|c| c.weight > 0).collect();
    let first = live.first()?;
    let cluster_specifier = if live.len() == 1 {
        tcp_proxy::ClusterSpecifier::Cluster(first.name.clone())
    } else {
        tcp_proxy::ClusterSpecifier::WeightedClusters(tcp_proxy::WeightedCluster {
            clusters: live
                .iter()
                .map(|c| tcp_proxy::weighted_cluster::ClusterWeight {
                    name: c.name.clone(),
                    weight: c.weight,
                    ..Default::default()
                })
                .collect(),
        })
    };
    // istiod names TCP stats after the (first) destination cluster.
    Some(tcp_proxy(&first.name, cluster_specifier, mesh))
}

/// A tcp_proxy to a single cluster (catch-all and inbound chains).
pub fn tcp_proxy_to(cluster: &str, mesh: &MeshConfig) -> Filter {
    tcp_proxy(
        cluster,
        tcp_proxy::ClusterSpecifier::Cluster(cluster.to_owned()),
        mesh,
    )
}

fn tcp_proxy(
    stat_prefix: &str,
    cluster_specifier: tcp_proxy::ClusterSpecifier,
    mesh: &MeshConfig,
) -> Filter {
    let proxy = TcpProxy {
        stat_prefix: stat_prefix.to_owned(),
        cluster_specifier: Some(cluster_specifier),
        access_log: access_logs(mesh),
        ..Default::default()
    };
    Filter {
        name: TCP_PROXY_FILTER.to_owned(),
        config_type: Some(filter::ConfigType::TypedConfig(any(&proxy))),
    }
}

/// A filter chain named `name` that proxies everything it matches to `cluster`.
pub fn tcp_chain(
    name: &str,
    filter_chain_match: Option<FilterChainMatch>,
    cluster: &str,
    mesh: &MeshConfig,
) -> FilterChain {
    FilterChain {
        name: name.to_owned(),
        filter_chain_match,
        filters: vec![tcp_proxy_to(cluster, mesh)],
        ..Default::default()
    }
}

/// A chain match on the destination port only.
pub fn destination_port_match(port: u16) -> FilterChainMatch {
    FilterChainMatch {
        destination_port: Some(UInt32Value {
            value: u32::from(port),
        }),
        ..Default::default()
    }
}

/// Parses `10.0.0.1` or `10.0.0.0/24` into a CIDR range; `None` (and the caller warns) for anything else.
pub fn cidr_range(s: &str) -> Option<CidrRange> {
    let net: ipnet::IpNet = match s.parse() {
        Ok(net) => net,
        Err(_) => ipnet::IpNet::from(s.parse::<std::net::IpAddr>().ok()?),
    };
    Some(CidrRange {
        address_prefix: net.network().to_string(),
        prefix_len: Some(UInt32Value {
            value: u32::from(net.prefix_len()),
        }),
    })
}

/// `envoy.filters.listener.original_dst`: restores the pre-iptables destination so chains can match on it.
pub fn original_dst_listener_filter() -> ListenerFilter {
    ListenerFilter {
        name: ORIGINAL_DST_FILTER.to_owned(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(any(
            &OriginalDst::default(),
        ))),
        ..Default::default()
    }
}

/// `envoy.filters.listener.tls_inspector`: reads the SNI so chains can match `server_names`.
pub fn tls_inspector_listener_filter() -> ListenerFilter {
    ListenerFilter {
        name: TLS_INSPECTOR_FILTER.to_owned(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(any(
            &TlsInspector::default(),
        ))),
        ..Default::default()
    }
}

/// The mesh-wide file access log (`meshConfig.accessLogFile`), or nothing when it is unset.
pub fn access_logs(mesh: &MeshConfig) -> Vec<AccessLog> {
    if mesh.access_log_file.is_empty() {
        return Vec::new();
    }
    let format = match mesh.access_log_encoding {
        // An empty text format means Envoy's default line, which carries the same fields as Istio's.
        AccessLogEncoding::Text if mesh.access_log_format.is_empty() => None,
        AccessLogEncoding::Text => Some(substitution_format_string::Format::TextFormatSource(
            DataSource {
                specifier: Some(data_source::Specifier::InlineString(format!(
                    "{}\n",
                    mesh.access_log_format.trim_end_matches('\n')
                ))),
                ..Default::default()
            },
        )),
        AccessLogEncoding::Json => Some(substitution_format_string::Format::JsonFormat(
            json_log_format(),
        )),
    };
    let file = FileAccessLog {
        path: mesh.access_log_file.clone(),
        access_log_format: format.map(|f| {
            file_access_log::AccessLogFormat::LogFormat(SubstitutionFormatString {
                format: Some(f),
                ..Default::default()
            })
        }),
    };
    vec![AccessLog {
        name: "envoy.access_loggers.file".to_owned(),
        config_type: Some(access_log::ConfigType::TypedConfig(any(&file))),
        ..Default::default()
    }]
}

/// Istio's default JSON access log fields.
fn json_log_format() -> Struct {
    let fields = [
        ("start_time", "%START_TIME%"),
        ("method", "%REQ(:METHOD)%"),
        ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
        ("protocol", "%PROTOCOL%"),
        ("response_code", "%RESPONSE_CODE%"),
        ("response_flags", "%RESPONSE_FLAGS%"),
        ("bytes_received", "%BYTES_RECEIVED%"),
        ("bytes_sent", "%BYTES_SENT%"),
        ("duration", "%DURATION%"),
        ("upstream_host", "%UPSTREAM_HOST%"),
        ("upstream_cluster", "%UPSTREAM_CLUSTER%"),
        ("downstream_remote_address", "%DOWNSTREAM_REMOTE_ADDRESS%"),
        ("downstream_local_address", "%DOWNSTREAM_LOCAL_ADDRESS%"),
        ("request_id", "%REQ(X-REQUEST-ID)%"),
        ("authority", "%REQ(:AUTHORITY)%"),
        ("user_agent", "%REQ(USER-AGENT)%"),
    ];
    Struct {
        fields: crate::envoy::proto::stable_map(
            fields
                .into_iter()
                .map(|(k, v)| (k.to_owned(), string_value(v))),
        ),
    }
}

fn string_value(s: &str) -> Value {
    Value {
        kind: Some(ValueKind::StringValue(s.to_owned())),
    }
}

/// The Istio object that shaped a listener or chain, as istiod's debug tooling names it:
/// `/apis/networking.istio.io/v1/namespaces/<ns>/<kind>/<name>` (`kind` like `virtual-service`).
pub fn config_ref(kind: &str, namespace: &str, name: &str) -> String {
    format!("/apis/networking.istio.io/v1/namespaces/{namespace}/{kind}/{name}")
}

/// `filter_metadata.istio.config`: one back-reference as a string (istiod's shape); several (a gateway listener
/// merged from several Gateways) as a list of strings. `None` for no references.
pub fn istio_config_metadata(refs: &[String]) -> Option<Metadata> {
    let value = match refs {
        [] => return None,
        [one] => string_value(one),
        many => Value {
            kind: Some(ValueKind::ListValue(ListValue {
                values: many.iter().map(|r| string_value(r)).collect(),
            })),
        },
    };
    let istio = Struct {
        fields: [("config".to_owned(), value)].into_iter().collect(),
    };
    Some(Metadata {
        filter_metadata: [("istio".to_owned(), istio)].into_iter().collect(),
        ..Default::default()
    })
}
