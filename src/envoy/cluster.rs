//! CDS: outbound service clusters (with DestinationRule policies and subsets), inbound clusters, and the catch-all
//! clusters, named and shaped as istiod builds them.
//!
//! Outbound: one `outbound|<port>||<host>` per visible service port plus one `outbound|<port>|<subset>|<host>` per
//! DestinationRule subset. The discovery type follows the service's resolution (Kubernetes and STATIC → EDS,
//! DNS → STRICT_DNS or LOGICAL_DNS for a single host, DNS_ROUND_ROBIN → LOGICAL_DNS, NONE/headless →
//! ORIGINAL_DST, except on gateways, which cannot use original-destination clusters and use EDS). The policy
//! modules apply the DestinationRule; `endpoint` builds the assignments shared by EDS and inline DNS clusters.
//!
//! Sidecars also get inbound clusters and the catch-alls (`inbound`); gateways get outbound clusters and the
//! BlackHoleCluster only.

pub mod inbound;
pub mod locality;
pub mod policy;
pub mod tls;

#[cfg(test)]
mod eds_tests;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, CommonLbConfig, DiscoveryType, DnsLookupFamily, EdsClusterConfig,
};
use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ApiVersion, ConfigSource, Metadata, TransportSocket, config_source,
};
use envoy_types::pb::envoy::config::route::v3::route_action::HashPolicy;
use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::{
    ConnectionProperties, Cookie, Header, PolicySpecifier, QueryParameter,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::google::protobuf::{Any, ListValue, Struct, Value, value::Kind};
use prost::{Message, Name};

use self::policy::{EffectivePolicy, ProtocolOptions, duration};
use crate::config::istio::networking::{DestinationRuleSpec, LoadBalancerSettings};
use crate::envoy::endpoint::{assignment, string_value};
use crate::envoy::names::ClusterName;
use crate::envoy::proto::stable_map;
use crate::model::proxy::{Istio, ProxyKind, ProxyScope};
use crate::model::service::{Location, Protocol, Resolution, Service, ServicePort};

/// Every cluster the proxy needs, sorted by name.
pub fn clusters(scope: &ProxyScope<'_>) -> Vec<Cluster> {
    let mut out: Vec<Cluster> = each_cluster(scope).collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    // Two services can claim the same cluster name (e.g. a ServiceEntry host and a Kubernetes service); the first
    // kept, as istiod does, since Envoy rejects duplicate names.
    out.dedup_by(|b, a| a.name == b.name);
    out
}

/// Every cluster of the proxy, made as the iterator is read, in the order that ranks duplicate names (the
/// first of a name wins), neither sorted nor deduplicated: a caller that encodes each as it comes never holds
/// them all (a `Cluster` message is kilobytes; a thousand services make megabytes). The few fixed and inbound
/// clusters are made at once.
pub fn each_cluster<'s>(scope: &'s ProxyScope<'_>) -> impl Iterator<Item = Cluster> + 's {
    let mut fixed = vec![inbound::blackhole(scope)];
    if scope.meta.kind == ProxyKind::Sidecar {
        fixed.push(inbound::passthrough(scope));
        fixed.push(inbound::inbound_passthrough(scope));
        fixed.extend(inbound::inbound_clusters(scope));
    }
    outbound_targets(scope)
        .into_iter()
        .filter_map(move |target| outbound_cluster(scope, &target))
        .chain(fixed)
}

/// How an outbound cluster finds its endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterKind {
    /// Endpoints over EDS.
    Eds,
    /// Envoy resolves the endpoint hosts (STRICT_DNS, or LOGICAL_DNS for one host).
    Dns,
    /// ServiceEntry DNS_ROUND_ROBIN: LOGICAL_DNS.
    DnsRoundRobin,
    /// Traffic goes to the address the caller dialled.
    OriginalDst,
}

/// One outbound cluster to build: the service port, the subset (if any), the policy in force and where its
/// endpoints come from. Shared by CDS and EDS so both agree on which clusters exist.
#[derive(Debug, Clone)]
pub struct OutboundTarget {
    pub name: ClusterName,
    pub service: Arc<Service>,
    pub port: ServicePort,
    /// Empty for the service's default cluster.
    pub subset_labels: BTreeMap<String, String>,
    pub policy: EffectivePolicy,
    pub kind: ClusterKind,
    /// The DestinationRule that shaped the cluster.
    pub rule: Option<Istio<DestinationRuleSpec>>,
}

/// Every outbound cluster the proxy can see, in service and port order.
pub fn outbound_targets(scope: &ProxyScope<'_>) -> Vec<OutboundTarget> {
    let mut out = Vec::new();
    for service in scope.services() {
        // A host declared in several namespaces yields one cluster set: the one the scope prefers.
        if !scope
            .service(&service.hostname)
            .is_some_and(|s| Arc::ptr_eq(s, service))
        {
            continue;
        }
        let rule = scope.destination_rule(&service.hostname, &service.namespace);
        let base_kind = match service.resolution {
            Resolution::ClientSideLb => ClusterKind::Eds,
            Resolution::Dns => ClusterKind::Dns,
            Resolution::DnsRoundRobin => ClusterKind::DnsRoundRobin,
            // Gateways have no original-destination listener to pass through from.
            Resolution::Passthrough if scope.meta.kind == ProxyKind::Router => ClusterKind::Eds,
            Resolution::Passthrough => ClusterKind::OriginalDst,
        };
        for port in &service.ports {
            if port.protocol == Protocol::Udp {
                continue;
            }
            let policy = EffectivePolicy::for_port(
                rule.as_ref().and_then(|r| r.spec.traffic_policy.as_ref()),
                port.port,
            );
            let kind = if policy.is_passthrough() {
                ClusterKind::OriginalDst
            } else {
                base_kind
            };
            out.push(OutboundTarget {
                name: ClusterName::outbound(port.port, "", &service.hostname),
                service: service.clone(),
                port: port.clone(),
                subset_labels: BTreeMap::new(),
                policy: policy.clone(),
                kind,
                rule: rule.clone(),
            });
            for subset in rule.iter().flat_map(|r| r.spec.subsets.iter()) {
                let own = EffectivePolicy::for_port(subset.traffic_policy.as_ref(), port.port);
                out.push(OutboundTarget {
                    name: ClusterName::outbound(port.port, &subset.name, &service.hostname),
                    service: service.clone(),
                    port: port.clone(),
                    subset_labels: subset.labels.clone(),
                    policy: policy.with_subset(subset.traffic_policy.as_ref(), port.port),
                    // Only the subset's own PASSTHROUGH changes its type; otherwise it follows the default cluster.
                    kind: if own.is_passthrough() {
                        ClusterKind::OriginalDst
                    } else {
                        kind
                    },
                    rule: rule.clone(),
                });
            }
        }
    }
    out
}

/// Whether the service's clusters carry its endpoints inline (Envoy resolves them: DNS), rather than over EDS
/// or not at all.
pub fn inlines_endpoints(service: &Service) -> bool {
    matches!(
        service.resolution,
        Resolution::Dns | Resolution::DnsRoundRobin
    )
}

/// Packs a message into `Any`.
pub(crate) fn any<M: Message + Name>(msg: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: msg.encode_to_vec(),
    }
}

/// `typed_extension_protocol_options` key of the upstream HTTP options.
pub const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// ADS as config source, V3, and no initial fetch timeout (istiod's EDS config: a cluster waits for its
/// endpoints rather than warming empty).
pub fn ads_config_source() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource::default(),
        )),
        initial_fetch_timeout: Some(duration(std::time::Duration::ZERO)),
        resource_api_version: ApiVersion::V3 as i32,
        ..Default::default()
    }
}

pub(crate) fn discovery(t: DiscoveryType) -> Option<ClusterDiscoveryType> {
    Some(ClusterDiscoveryType::Type(t as i32))
}

/// A cluster with the fields every Istio cluster has: name, type, mesh connect timeout, empty common LB config.
pub(crate) fn base_cluster(scope: &ProxyScope<'_>, name: &str, t: DiscoveryType) -> Cluster {
    Cluster {
        name: name.to_string(),
        cluster_discovery_type: discovery(t),
        connect_timeout: Some(duration(scope.snapshot.mesh.connect_timeout.get())),
        common_lb_config: Some(CommonLbConfig::default()),
        ..Default::default()
    }
}

/// Upstream protocol from the port: HTTP/2 for http2/grpc ports; unnamed ports on sidecars follow the
/// downstream protocol (sniffed), as istiod's `setUpstreamProtocol`.
pub(crate) fn port_protocol_options(scope: &ProxyScope<'_>, protocol: Protocol) -> ProtocolOptions {
    let mut options = ProtocolOptions::default();
    match protocol {
        Protocol::Http2 | Protocol::Grpc | Protocol::GrpcWeb => options.set_h2(),
        Protocol::Unsupported if scope.meta.kind == ProxyKind::Sidecar => {
            options.set_use_downstream()
        }
        _ => {}
    }
    options
}

pub(crate) fn set_protocol_options(cluster: &mut Cluster, options: ProtocolOptions) {
    if let Some(o) = options.build() {
        cluster.typed_extension_protocol_options.insert(
            HTTP_PROTOCOL_OPTIONS.to_string(),
            any::<HttpProtocolOptions>(&o),
        );
    }
}

fn outbound_cluster(scope: &ProxyScope<'_>, t: &OutboundTarget) -> Option<Cluster> {
    let name = t.name.to_string();
    let what = match &t.rule {
        Some(r) => format!(
            "cluster {name} (DestinationRule {}/{})",
            r.metadata.namespace.as_deref().unwrap_or_default(),
            r.metadata.name.as_deref().unwrap_or_default()
        ),
        None => format!("cluster {name}"),
    };
    let mut cluster;
    match t.kind {
        ClusterKind::Eds => {
            cluster = base_cluster(scope, &name, DiscoveryType::Eds);
            cluster.eds_cluster_config = Some(EdsClusterConfig {
                eds_config: Some(ads_config_source()),
                service_name: name.clone(),
            });
        }
        ClusterKind::OriginalDst => {
            cluster = base_cluster(scope, &name, DiscoveryType::OriginalDst);
        }
        ClusterKind::Dns | ClusterKind::DnsRoundRobin => {
            let cla = assignment(scope, t);
            let hosts: usize = cla.endpoints.iter().map(|g| g.lb_endpoints.len()).sum();
            if hosts == 0 {
                // Envoy cannot resolve nothing; istiod skips DNS clusters without endpoints too.
                tracing::warn!(
                    "{what}: DNS resolution without endpoints (wildcard host?); skipped"
                );
                return None;
            }
            let t_dns = match (t.kind, hosts) {
                (_, 1) => DiscoveryType::LogicalDns,
                (ClusterKind::DnsRoundRobin, _) => {
                    tracing::warn!(
                        "{what}: DNS_ROUND_ROBIN needs exactly one endpoint, has {hosts}; using STRICT_DNS"
                    );
                    DiscoveryType::StrictDns
                }
                _ => DiscoveryType::StrictDns,
            };
            cluster = base_cluster(scope, &name, t_dns);
            cluster.dns_lookup_family = DnsLookupFamily::V4Only as i32;
            // Envoy prefers these on the `envoy.cluster.dns` extension now, but still honours the cluster fields,
            // and istiod (and its tooling) use them with `type: STRICT_DNS`/`LOGICAL_DNS`.
            #[allow(deprecated)]
            {
                cluster.dns_refresh_rate =
                    Some(duration(scope.snapshot.mesh.dns_refresh_rate.get()));
                cluster.respect_dns_ttl = true;
            }
            cluster.load_assignment = Some(cla);
        }
    }
    let mut options = port_protocol_options(scope, t.port.protocol);
    let pool = t.policy.connection_pool.as_ref();
    // Upgrade first, so HTTP/2 settings of the pool (maxConcurrentStreams) land on upgraded clusters too.
    if policy::wants_h2_upgrade(pool) {
        options.set_h2();
    }
    policy::apply_connection_pool(&mut cluster, &mut options, pool);
    policy::apply_outlier_detection(&mut cluster, t.policy.outlier_detection.as_ref());
    let lb = t.policy.load_balancer.as_ref();
    let locality =
        policy::effective_locality_setting(lb, scope.snapshot.mesh.locality_lb_setting.as_ref());
    policy::apply_locality_config(&mut cluster, locality.as_ref());
    policy::apply_load_balancer(&mut cluster, lb);
    apply_upstream_tls(&mut cluster, scope, t, options.is_h2(), &what);
    policy::apply_retry_budget(&mut cluster, t.policy.retry_budget.as_ref());
    set_protocol_options(&mut cluster, options);
    cluster.metadata = Some(outbound_metadata(t));
    Some(cluster)
}

/// The cluster's transport socket(s) (DestinationRule TLS, ISTIO_MUTUAL or auto-mTLS), each wrapped for
/// `trafficPolicy.proxyProtocol` when set.
fn apply_upstream_tls(
    cluster: &mut Cluster,
    scope: &ProxyScope<'_>,
    t: &OutboundTarget,
    h2: bool,
    what: &str,
) {
    let wrap = |socket: Option<TransportSocket>| match &t.policy.proxy_protocol {
        Some(pp) => Some(tls::with_proxy_protocol(socket, pp.version)),
        None => socket,
    };
    match tls::upstream_tls(scope, t, h2, what) {
        tls::UpstreamTls::Plaintext => cluster.transport_socket = wrap(None),
        tls::UpstreamTls::Socket(socket) => cluster.transport_socket = wrap(Some(socket)),
        tls::UpstreamTls::Matches(mut matches) => {
            for m in &mut matches {
                m.transport_socket = wrap(m.transport_socket.take());
            }
            cluster.transport_socket_matches = matches;
        }
    }
}

/// `filter_metadata.istio` as istiod writes it (maps from `stable_map`, so equal clusters encode identically): the service (for telemetry), the DestinationRule that shaped the
/// cluster (`config`, read by the debug API), the subset, and `external` for MESH_EXTERNAL services.
fn outbound_metadata(t: &OutboundTarget) -> Metadata {
    let svc = &t.service;
    let service = Struct {
        fields: stable_map([
            ("host".to_string(), string_value(&svc.hostname)),
            ("name".to_string(), string_value(&svc.name)),
            ("namespace".to_string(), string_value(&svc.namespace)),
        ]),
    };
    let mut fields: std::collections::HashMap<String, Value> = stable_map([(
        "services".to_string(),
        Value {
            kind: Some(Kind::ListValue(ListValue {
                values: vec![Value {
                    kind: Some(Kind::StructValue(service)),
                }],
            })),
        },
    )]);
    if let Some(rule) = &t.rule {
        fields.insert(
            "config".to_string(),
            string_value(&format!(
                "/apis/networking.istio.io/v1/namespaces/{}/destination-rule/{}",
                rule.metadata.namespace.as_deref().unwrap_or_default(),
                rule.metadata.name.as_deref().unwrap_or_default()
            )),
        );
    }
    if !t.name.subset.is_empty() {
        fields.insert("subset".to_string(), string_value(&t.name.subset));
    }
    if svc.location == Location::MeshExternal {
        fields.insert(
            "external".to_string(),
            Value {
                kind: Some(Kind::BoolValue(true)),
            },
        );
    }
    Metadata {
        filter_metadata: [("istio".to_string(), Struct { fields })].into(),
        ..Default::default()
    }
}

/// The route hash policies a DestinationRule's `consistentHash` needs (the route side of RING_HASH/MAGLEV
/// clusters): header, cookie (`ttl` makes Envoy generate it), source IP or query parameter.
pub fn hash_policy_for(lb: Option<&LoadBalancerSettings>) -> Vec<HashPolicy> {
    let Some(hash) = lb.and_then(|l| l.consistent_hash.as_ref()) else {
        return Vec::new();
    };
    let spec = if let Some(header) = &hash.http_header_name {
        PolicySpecifier::Header(Header {
            header_name: header.clone(),
            ..Default::default()
        })
    } else if let Some(cookie) = &hash.http_cookie {
        PolicySpecifier::Cookie(Cookie {
            name: cookie.name.clone(),
            path: cookie.path.clone().unwrap_or_default(),
            ttl: cookie.ttl.map(|d| duration(d.get())),
            ..Default::default()
        })
    } else if hash.use_source_ip == Some(true) {
        PolicySpecifier::ConnectionProperties(ConnectionProperties { source_ip: true })
    } else if let Some(q) = &hash.http_query_parameter_name {
        PolicySpecifier::QueryParameter(QueryParameter { name: q.clone() })
    } else {
        return Vec::new();
    };
    vec![HashPolicy {
        policy_specifier: Some(spec),
        ..Default::default()
    }]
}

/// The hash policies for a route destination `host` (`subset`, `port`) as this proxy sees it: the
/// DestinationRule's load balancer after port-level and subset overrides. Empty without consistent hashing.
pub fn hash_policy_for_destination(
    scope: &ProxyScope<'_>,
    host: &str,
    subset: Option<&str>,
    port: u16,
) -> Vec<HashPolicy> {
    let namespace = scope
        .service(host)
        .map(|s| s.namespace.clone())
        .unwrap_or_else(|| scope.namespace().to_string());
    let Some(rule) = scope.destination_rule(host, &namespace) else {
        return Vec::new();
    };
    let mut policy = EffectivePolicy::for_port(rule.spec.traffic_policy.as_ref(), port);
    if let Some(name) = subset.filter(|s| !s.is_empty())
        && let Some(s) = rule.spec.subsets.iter().find(|s| s.name == name)
    {
        policy = policy.with_subset(s.traffic_policy.as_ref(), port);
    }
    hash_policy_for(policy.load_balancer.as_ref())
}
