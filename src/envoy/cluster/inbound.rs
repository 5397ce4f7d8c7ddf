//! Sidecar inbound clusters (`inbound|<port>||` → the application on localhost) and the catch-all clusters
//! (`BlackHoleCluster`, `PassthroughCluster`, `InboundPassthroughCluster`).

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    DiscoveryType, LbConfig, LbPolicy, OriginalDstLbConfig,
};
use envoy_types::pb::envoy::config::core::v3::{BindConfig, SocketAddress, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints,
    lb_endpoint::HostIdentifier,
};

use super::policy::{self, ProtocolOptions, duration};
use super::{base_cluster, port_protocol_options, set_protocol_options};
use crate::envoy::endpoint::socket_address as address;
use crate::envoy::names::{
    BLACKHOLE_CLUSTER, ClusterName, INBOUND_PASSTHROUGH_CLUSTER, PASSTHROUGH_CLUSTER,
};
use crate::model::proxy::ProxyScope;
use crate::model::service::{Protocol, TargetPort};

/// Where the sidecar sends inbound traffic it does not pass through: the application on localhost.
pub const LOCALHOST: &str = "127.0.0.1";
/// Source address for connections the sidecar makes to the pod IP or to original destinations. iptables skips
/// traffic from it, so the sidecar's own upstream connections are not captured again (istiod's
/// `InboundPassthroughBindIpv4`).
pub const INBOUND_PASSTHROUGH_BIND: &str = "127.0.0.6";

/// Where one inbound port goes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct InboundPort {
    dest: Dest,
    target: u16,
    protocol: Protocol,
}

/// The upstream of an inbound cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Dest {
    /// A fixed address: `127.0.0.1`, `::1` or `unix://…`.
    Local(String),
    /// The pod's own IP (`defaultEndpoint: 0.0.0.0:<port>`). Built as an original-destination cluster with the
    /// port overridden rather than a STATIC one naming the IP (istiod's shape): inbound traffic's original
    /// destination is the pod IP anyway, and the cluster then does not depend on which replica asks, so
    /// replicas with the same labels can share one generated cluster set.
    PodIp,
    /// The original destination, port included (no `defaultEndpoint`).
    OriginalDst,
}

/// `inbound|<port>||` for every port the workload serves: its declared container ports, the target ports of the
/// services selecting it, and the Sidecar's `ingress` listeners (which override the others for their port).
pub fn inbound_clusters(scope: &ProxyScope<'_>) -> Vec<Cluster> {
    inbound_ports(scope)
        .into_iter()
        .map(|(port, p)| inbound_cluster(scope, port, &p))
        .collect()
}

fn inbound_ports(scope: &ProxyScope<'_>) -> BTreeMap<u16, InboundPort> {
    let mut ports = BTreeMap::new();
    let local = |target: u16, protocol: Protocol| InboundPort {
        dest: Dest::Local(LOCALHOST.to_string()),
        target,
        protocol,
    };
    if let Some(w) = &scope.workload {
        for &p in &w.ports {
            ports.insert(p, local(p, Protocol::Unsupported));
        }
        // Services selecting the pod: their target ports, with the protocol the service port declares.
        for svc in scope.snapshot.registry.services() {
            if svc.namespace != w.namespace || svc.selector.is_empty() || !w.matches(&svc.selector)
            {
                continue;
            }
            for sp in &svc.ports {
                let target = match &sp.target_port {
                    TargetPort::Number(n) => Some(*n),
                    TargetPort::Named(name) => w.container_ports.get(name).copied(),
                };
                let Some(target) = target else {
                    continue;
                };
                let entry = ports
                    .entry(target)
                    .or_insert_with(|| local(target, sp.protocol));
                if entry.protocol == Protocol::Unsupported {
                    entry.protocol = sp.protocol;
                }
            }
        }
    }
    let ingress = scope.sidecar.iter().flat_map(|s| s.spec.ingress.iter());
    for listener in ingress {
        let Some(port) = listener.port.as_ref() else {
            continue;
        };
        let Some(number) = port.number.and_then(|n| u16::try_from(n).ok()) else {
            continue;
        };
        let protocol = port
            .protocol
            .as_deref()
            .and_then(Protocol::parse)
            .unwrap_or(Protocol::Unsupported);
        let endpoint = listener.default_endpoint.as_deref().unwrap_or_default();
        let p = match parse_default_endpoint(endpoint) {
            Ok((dest, target)) => InboundPort {
                dest,
                target: target.unwrap_or(number),
                protocol,
            },
            Err(e) => {
                tracing::warn!(
                    "Sidecar {}/{}: ingress port {number}: defaultEndpoint {endpoint:?}: {e}; skipped",
                    scope.namespace(),
                    scope
                        .sidecar
                        .as_ref()
                        .and_then(|s| s.metadata.name.clone())
                        .unwrap_or_default()
                );
                continue;
            }
        };
        ports.insert(number, p);
    }
    ports
}

/// `127.0.0.1:P` / `[::1]:P` → localhost, `0.0.0.0:P` → the pod IP, `unix:///path` → the socket, empty →
/// original destination.
fn parse_default_endpoint(endpoint: &str) -> Result<(Dest, Option<u16>), String> {
    if endpoint.is_empty() {
        return Ok((Dest::OriginalDst, None));
    }
    if endpoint.starts_with("unix://") {
        return Ok((Dest::Local(endpoint.to_string()), None));
    }
    let (host, port) = endpoint
        .rsplit_once(':')
        .ok_or("expected <ip>:<port> or unix://<path>")?;
    let port: u16 = port.parse().map_err(|_| format!("bad port {port:?}"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let dest = match host {
        "127.0.0.1" | "::1" => Dest::Local(host.to_string()),
        "0.0.0.0" | "::" => Dest::PodIp,
        other => {
            return Err(format!(
                "host {other:?} must be 127.0.0.1, ::1, 0.0.0.0 or ::"
            ));
        }
    };
    Ok((dest, Some(port)))
}

fn inbound_cluster(scope: &ProxyScope<'_>, port: u16, p: &InboundPort) -> Cluster {
    let name = ClusterName::inbound(port).to_string();
    let mut cluster = match &p.dest {
        Dest::Local(addr) => {
            let mut c = base_cluster(scope, &name, DiscoveryType::Static);
            c.load_assignment = Some(ClusterLoadAssignment {
                cluster_name: name.clone(),
                endpoints: vec![LocalityLbEndpoints {
                    lb_endpoints: vec![LbEndpoint {
                        host_identifier: Some(HostIdentifier::Endpoint(EnvoyEndpoint {
                            address: Some(address(addr, p.target)),
                            ..Default::default()
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            });
            c
        }
        Dest::PodIp => {
            let mut c = base_cluster(scope, &name, DiscoveryType::OriginalDst);
            c.lb_policy = LbPolicy::ClusterProvided as i32;
            c.lb_config = Some(LbConfig::OriginalDstLbConfig(OriginalDstLbConfig {
                upstream_port_override: Some(policy::u32v(u32::from(p.target))),
                ..Default::default()
            }));
            // Connections to the pod IP would be captured by iptables again unless they come from the magic
            // source address.
            c.upstream_bind_config = Some(bind(INBOUND_PASSTHROUGH_BIND));
            c
        }
        Dest::OriginalDst => {
            let mut c = base_cluster(scope, &name, DiscoveryType::OriginalDst);
            c.lb_policy = LbPolicy::ClusterProvided as i32;
            c.upstream_bind_config = Some(bind(INBOUND_PASSTHROUGH_BIND));
            c
        }
    };
    let mut options = port_protocol_options(scope, p.protocol);
    let pool = scope.sidecar.as_ref().and_then(|s| {
        s.spec
            .ingress
            .iter()
            .find(|i| i.port.as_ref().and_then(|p| p.number) == Some(u32::from(port)))
            .and_then(|i| i.connection_pool.clone())
            .or_else(|| s.spec.inbound_connection_pool.clone())
    });
    policy::apply_connection_pool(&mut cluster, &mut options, pool.as_ref());
    set_protocol_options(&mut cluster, options);
    cluster
}

fn bind(ip: &str) -> BindConfig {
    BindConfig {
        source_address: Some(SocketAddress {
            address: ip.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(0)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Drops traffic: a STATIC cluster without endpoints.
pub fn blackhole(scope: &ProxyScope<'_>) -> Cluster {
    let mut c = base_cluster(scope, BLACKHOLE_CLUSTER, DiscoveryType::Static);
    c.common_lb_config = None;
    c.lb_policy = LbPolicy::RoundRobin as i32;
    c
}

/// Forwards to the original destination (ALLOW_ANY). HTTP upstreams follow the downstream protocol and idle
/// out after 5 minutes, as istiod's.
pub fn passthrough(scope: &ProxyScope<'_>) -> Cluster {
    let mut c = base_cluster(scope, PASSTHROUGH_CLUSTER, DiscoveryType::OriginalDst);
    c.common_lb_config = None;
    c.lb_policy = LbPolicy::ClusterProvided as i32;
    let mut options = ProtocolOptions::default();
    options.set_use_downstream();
    policy::apply_connection_pool(&mut c, &mut options, None);
    options.common = Some(
        envoy_types::pb::envoy::config::core::v3::HttpProtocolOptions {
            idle_timeout: Some(duration(std::time::Duration::from_secs(300))),
            ..Default::default()
        },
    );
    set_protocol_options(&mut c, options);
    c
}

/// Inbound traffic to undeclared ports, forwarded to the original destination from 127.0.0.6 so iptables does
/// not capture it again.
pub fn inbound_passthrough(scope: &ProxyScope<'_>) -> Cluster {
    let mut c = passthrough(scope);
    c.name = INBOUND_PASSTHROUGH_CLUSTER.to_string();
    c.upstream_bind_config = Some(bind(INBOUND_PASSTHROUGH_BIND));
    c
}
