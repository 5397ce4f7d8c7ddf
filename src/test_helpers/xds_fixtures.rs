//! Real Envoy protos for xDS tests (an EDS cluster, its endpoints, an HTTP listener with RDS, a route) and a
//! scriptable generator that serves them, shared per generation like a real one.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ApiVersion, ConfigSource, HeaderValue, HeaderValueOption,
    SocketAddress, address, config_source, socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route, route_action,
    route_match,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryResponse, DiscoveryResponse};
use envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher;
use envoy_types::pb::google::protobuf::{Any, Duration};
use prost::{Message, Name};
use tokio::sync::watch;

use crate::xds::{Generate, Proxy, PushContext, ResourceSet, XdsResource, type_url};

fn any<M: Message + Name>(msg: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: msg.encode_to_vec(),
    }
}

fn ads() -> Option<ConfigSource> {
    Some(ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        ..Default::default()
    })
}

fn socket(addr: SocketAddr) -> envoy_types::pb::envoy::config::core::v3::Address {
    envoy_types::pb::envoy::config::core::v3::Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: addr.ip().to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                addr.port(),
            ))),
            ..Default::default()
        })),
    }
}

/// An EDS cluster fed over ADS.
pub fn cluster(name: &str) -> Arc<XdsResource> {
    let c = Cluster {
        name: name.to_owned(),
        connect_timeout: Some(Duration {
            seconds: 1,
            nanos: 0,
        }),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: ads(),
            service_name: String::new(),
        }),
        ..Default::default()
    };
    Arc::new(XdsResource::encode(name, &c))
}

/// Endpoints of `cluster`.
pub fn endpoints(cluster: &str, addrs: &[SocketAddr]) -> Arc<XdsResource> {
    let cla = ClusterLoadAssignment {
        cluster_name: cluster.to_owned(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: addrs
                .iter()
                .map(|a| LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: Some(socket(*a)),
                        ..Default::default()
                    })),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    };
    Arc::new(XdsResource::encode(cluster, &cla))
}

/// An HTTP listener on `addr` whose routes come from RDS `route_name`.
pub fn listener(name: &str, addr: SocketAddr, route_name: &str) -> Arc<XdsResource> {
    let hcm = HttpConnectionManager {
        stat_prefix: name.to_owned(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: ads(),
            route_config_name: route_name.to_owned(),
        })),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".to_owned(),
            config_type: Some(http_filter::ConfigType::TypedConfig(
                any(&Router::default()),
            )),
            ..Default::default()
        }],
        ..Default::default()
    };
    let l = Listener {
        name: name.to_owned(),
        address: Some(socket(addr)),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".to_owned(),
                config_type: Some(filter::ConfigType::TypedConfig(any(&hcm))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    Arc::new(XdsResource::encode(name, &l))
}

/// A route configuration sending every path under `prefix` to `cluster`, tagging responses with
/// `x-rudder-tag: <tag>` so tests see which generation served them.
pub fn route(name: &str, cluster: &str, prefix: &str, tag: &str) -> Arc<XdsResource> {
    route_with(
        name,
        cluster,
        route_match::PathSpecifier::Prefix(prefix.to_owned()),
        tag,
    )
}

/// Like [`route`] but matching a regex; an invalid regex makes Envoy reject the route (NACK).
pub fn route_regex(name: &str, cluster: &str, regex: &str, tag: &str) -> Arc<XdsResource> {
    let m = RegexMatcher {
        regex: regex.to_owned(),
        ..Default::default()
    };
    route_with(name, cluster, route_match::PathSpecifier::SafeRegex(m), tag)
}

fn route_with(
    name: &str,
    cluster: &str,
    path: route_match::PathSpecifier,
    tag: &str,
) -> Arc<XdsResource> {
    let rc = RouteConfiguration {
        name: name.to_owned(),
        virtual_hosts: vec![VirtualHost {
            name: "all".to_owned(),
            domains: vec!["*".to_owned()],
            routes: vec![Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(path),
                    ..Default::default()
                }),
                action: Some(route::Action::Route(RouteAction {
                    cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                        cluster.to_owned(),
                    )),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        response_headers_to_add: vec![HeaderValueOption {
            header: Some(HeaderValue {
                key: "x-rudder-tag".to_owned(),
                value: tag.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    Arc::new(XdsResource::encode(name, &rc))
}

/// Names of the resources in a SotW response (decoded from the `Any`s).
pub fn sotw_names(resp: &DiscoveryResponse) -> Vec<String> {
    resp.resources
        .iter()
        .map(|a| resource_name(&a.type_url, &a.value))
        .collect()
}

/// Names of the resources added/changed by a delta response.
pub fn delta_names(resp: &DeltaDiscoveryResponse) -> Vec<String> {
    resp.resources.iter().map(|r| r.name.clone()).collect()
}

fn resource_name(type_url: &str, bytes: &[u8]) -> String {
    match type_url {
        type_url::CLUSTER => Cluster::decode(bytes).map(|m| m.name).unwrap_or_default(),
        type_url::ENDPOINT => ClusterLoadAssignment::decode(bytes)
            .map(|m| m.cluster_name)
            .unwrap_or_default(),
        type_url::LISTENER => Listener::decode(bytes).map(|m| m.name).unwrap_or_default(),
        type_url::ROUTE => RouteConfiguration::decode(bytes)
            .map(|m| m.name)
            .unwrap_or_default(),
        other => panic!("sotw_names: unsupported type {other}"),
    }
}

/// Resources by type, plus per-pod additions/overrides (by name) keyed by `<pod>.<ns>`.
///
/// Like a real generator, the common set of each type is built once per generation (on first use) and
/// shared by every proxy that has no per-pod resources.
#[derive(Clone, Debug, Default)]
pub struct StaticGenerator {
    common: BTreeMap<String, Vec<Arc<XdsResource>>>,
    per_pod: BTreeMap<String, BTreeMap<String, Vec<Arc<XdsResource>>>>,
    /// Each type's set, built on first use and kept until that type changes. Clones share it, so a type a
    /// change left alone is the very same set in the next generation, as with the real generator.
    shared: BTreeMap<String, Arc<OnceLock<ResourceSet>>>,
}

impl StaticGenerator {
    /// Adds (or replaces by name) a resource every proxy sees.
    pub fn with(mut self, r: Arc<XdsResource>) -> Self {
        self.set(r);
        self
    }

    /// Adds or replaces a common resource.
    pub fn set(&mut self, r: Arc<XdsResource>) {
        self.shared.insert(r.type_url.clone(), Arc::default());
        let list = self.common.entry(r.type_url.clone()).or_default();
        list.retain(|x| x.name != r.name);
        list.push(r);
    }

    /// Removes a common resource.
    pub fn remove(&mut self, type_url: &str, name: &str) {
        self.shared.insert(type_url.to_owned(), Arc::default());
        if let Some(list) = self.common.get_mut(type_url) {
            list.retain(|x| x.name != name);
        }
    }

    /// Adds or replaces a resource only `pod_key` sees.
    pub fn set_for(&mut self, pod_key: &str, r: Arc<XdsResource>) {
        let list = self
            .per_pod
            .entry(pod_key.to_owned())
            .or_default()
            .entry(r.type_url.clone())
            .or_default();
        list.retain(|x| x.name != r.name);
        list.push(r);
    }
}

impl Generate for StaticGenerator {
    fn generate(&self, proxy: &Proxy, type_url: &str) -> ResourceSet {
        let base = match (self.shared.get(type_url), self.common.get(type_url)) {
            (Some(set), Some(list)) => set.get_or_init(|| ResourceSet::new(list.clone())).clone(),
            _ => ResourceSet::default(),
        };
        if self.per_pod.is_empty() {
            return base;
        }
        match self
            .per_pod
            .get(&proxy.id.pod_key())
            .and_then(|m| m.get(type_url))
        {
            None => base,
            // Per-pod resources come first, so they win over common ones of the same name.
            Some(extra) => extra.iter().chain(base.items()).cloned().collect(),
        }
    }
}

/// Publishes generations to a server the way the app does.
#[derive(Debug)]
pub struct Publisher {
    tx: watch::Sender<Option<Arc<PushContext>>>,
    version: u64,
}

impl Publisher {
    /// A publisher with no generation yet, and the receiver to build the server from.
    pub fn new() -> (Self, watch::Receiver<Option<Arc<PushContext>>>) {
        let (tx, rx) = watch::channel(None);
        (Publisher { tx, version: 0 }, rx)
    }

    /// Publishes the next generation; returns its version.
    pub fn publish(&mut self, generator: impl Generate + 'static) -> u64 {
        self.version += 1;
        let ctx = PushContext::new(self.version, Arc::new(generator));
        self.tx.send_replace(Some(Arc::new(ctx)));
        self.version
    }

    /// The version the next [`Publisher::publish`] gives.
    pub fn next_version(&self) -> u64 {
        self.version + 1
    }

    /// Another receiver (for a restarted server).
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<PushContext>>> {
        self.tx.subscribe()
    }
}
