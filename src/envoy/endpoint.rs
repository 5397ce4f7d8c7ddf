//! EDS: a ClusterLoadAssignment per EDS cluster (service port, subset-filtered, with locality and weights).
//!
//! Endpoints are grouped by locality (`region/zone/subzone`), carry their weight, and are tagged with istiod's
//! endpoint metadata: `istio.workload` (`<workload>;<namespace>;<canonical service>;<canonical revision>;<cluster>`,
//! read by telemetry) and `envoy.transport_socket_match: {tlsMode: istio}` for endpoints with a sidecar (what
//! auto-mTLS matches on). Not-ready endpoints are left out, as istiod does by default
//! (`PILOT_SEND_UNHEALTHY_ENDPOINTS=false`): sent as UNHEALTHY they would still receive traffic whenever Envoy's
//! panic threshold trips. A cluster with no endpoints still gets an (empty) assignment so Envoy finishes warming.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::{
    Address, Metadata, Pipe, SocketAddress, address, socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints,
    lb_endpoint::HostIdentifier,
};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};

use crate::envoy::cluster::locality::{self, failover_priority_rank, parse_locality};
use crate::envoy::cluster::policy::{effective_locality_setting, u32v};
use crate::envoy::cluster::{ClusterKind, OutboundTarget, outbound_targets};
use crate::model::peer_auth::{EffectiveMtls, MtlsMode, workload_mtls};
use crate::model::proxy::ProxyScope;
use crate::model::service::{Endpoint, Service};

/// Metadata filter Envoy's transport socket matching reads.
pub const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";
/// istiod's cluster id for the local Kubernetes cluster (last field of `istio.workload`).
const CLUSTER_ID: &str = "Kubernetes";

/// Load assignments for every EDS cluster the proxy can see (the server filters by subscription).
pub fn load_assignments(scope: &ProxyScope<'_>) -> Vec<ClusterLoadAssignment> {
    load_assignments_of(scope, |_| true)
}

/// Load assignments for the EDS clusters of the services `of` picks.
pub fn load_assignments_of(
    scope: &ProxyScope<'_>,
    of: impl Fn(&Service) -> bool,
) -> Vec<ClusterLoadAssignment> {
    let mut out: Vec<ClusterLoadAssignment> = outbound_targets(scope)
        .iter()
        .filter(|t| t.kind == ClusterKind::Eds && of(&t.service))
        .map(|t| assignment(scope, t))
        .collect();
    out.sort_by(|a, b| a.cluster_name.cmp(&b.cluster_name));
    out
}

/// The assignment of one outbound cluster (EDS, or the inline one of a DNS cluster), with the locality setting
/// applied relative to the proxy.
pub(crate) fn assignment(scope: &ProxyScope<'_>, target: &OutboundTarget) -> ClusterLoadAssignment {
    let setting = effective_locality_setting(
        target.policy.load_balancer.as_ref(),
        scope.snapshot.mesh.locality_lb_setting.as_ref(),
    );
    let failover = target.policy.outlier_detection.is_some();
    // failoverPriority only ranks endpoints when failover applies and no `distribute` overrides it.
    let priority_labels: &[String] = match &setting {
        Some(s) if failover && s.distribute.is_empty() => &s.failover_priority,
        _ => &[],
    };
    let endpoints = scope
        .snapshot
        .registry
        .endpoints(&target.service, target.port.port);
    let ip_only = target.kind == ClusterKind::Eds;
    let mut cla = ClusterLoadAssignment {
        cluster_name: target.name.to_string(),
        endpoints: locality_endpoints(
            endpoints,
            &target.subset_labels,
            &scope.labels,
            priority_labels,
            ip_only,
            &target.name.to_string(),
        ),
        ..Default::default()
    };
    if scope.meta.mtls {
        drop_tls_mode_where_disabled(scope, endpoints, &mut cla.endpoints);
    }
    if let Some(s) = &setting {
        let proxy_locality = scope
            .workload
            .as_ref()
            .map(|w| parse_locality(&w.locality))
            .unwrap_or_default();
        locality::apply(&mut cla, &proxy_locality, s, failover);
    }
    cla
}

/// istiod's EDS mTLS check: an endpoint whose workload's peer authentication DISABLEs mTLS on its port loses
/// `tlsMode: istio`, so auto-mTLS clients reach it in plaintext there (its sidecar terminates no TLS on that
/// port and would refuse the handshake).
fn drop_tls_mode_where_disabled(
    scope: &ProxyScope<'_>,
    endpoints: &[Endpoint],
    groups: &mut [LocalityLbEndpoints],
) {
    // One policy lookup per workload (namespace + labels), not per endpoint.
    let mut modes: Vec<(&str, &BTreeMap<String, String>, EffectiveMtls)> = Vec::new();
    let mut disabled: Vec<(&str, u16)> = Vec::new();
    for ep in endpoints.iter().filter(|ep| ep.has_sidecar) {
        let ns = ep.namespace.as_str();
        let i = match modes
            .iter()
            .position(|(n, l, _)| *n == ns && *l == &ep.labels)
        {
            Some(i) => i,
            None => {
                modes.push((
                    ns,
                    &ep.labels,
                    workload_mtls(scope.snapshot, ns, &ep.labels, None),
                ));
                modes.len() - 1
            }
        };
        if modes[i].2.for_port(ep.port) == MtlsMode::Disable {
            disabled.push((ep.address.as_str(), ep.port));
        }
    }
    if disabled.is_empty() {
        return;
    }
    for lb in groups.iter_mut().flat_map(|g| g.lb_endpoints.iter_mut()) {
        let Some(HostIdentifier::Endpoint(e)) = &lb.host_identifier else {
            continue;
        };
        let Some(address::Address::SocketAddress(sa)) =
            e.address.as_ref().and_then(|a| a.address.as_ref())
        else {
            continue;
        };
        let port = match sa.port_specifier {
            Some(socket_address::PortSpecifier::PortValue(p)) => p,
            _ => continue,
        };
        if disabled
            .iter()
            .any(|(a, p)| *a == sa.address && u32::from(*p) == port)
            && let Some(m) = lb.metadata.as_mut()
        {
            m.filter_metadata.remove(TRANSPORT_SOCKET_MATCH);
        }
    }
}

/// Ready endpoints matching `subset_labels`, grouped by (failover rank, locality), sorted for a stable output.
/// `ip_only` drops endpoints whose address is a DNS name (EDS needs IPs; Envoy would reject the whole
/// assignment).
pub(crate) fn locality_endpoints(
    endpoints: &[Endpoint],
    subset_labels: &BTreeMap<String, String>,
    proxy_labels: &BTreeMap<String, String>,
    failover_priority: &[String],
    ip_only: bool,
    cluster: &str,
) -> Vec<LocalityLbEndpoints> {
    let mut groups: BTreeMap<(u32, String), Vec<&Endpoint>> = BTreeMap::new();
    for ep in endpoints {
        if !ep.ready
            || !subset_labels
                .iter()
                .all(|(k, v)| ep.labels.get(k) == Some(v))
        {
            continue;
        }
        if ip_only && !is_ip_or_unix(&ep.address) {
            tracing::warn!(
                "cluster {cluster}: endpoint {}:{} is not an IP address; left out of EDS",
                ep.address,
                ep.port
            );
            continue;
        }
        let rank = failover_priority_rank(failover_priority, proxy_labels, &ep.labels);
        groups
            .entry((rank, ep.locality.clone()))
            .or_default()
            .push(ep);
    }
    groups
        .into_iter()
        .map(|((priority, locality), mut eps)| {
            eps.sort_by(|a, b| (&a.address, a.port).cmp(&(&b.address, b.port)));
            let weight: u32 = eps.iter().map(|e| e.weight.max(1)).sum();
            LocalityLbEndpoints {
                locality: Some(parse_locality(&locality)),
                lb_endpoints: eps.into_iter().map(lb_endpoint).collect(),
                load_balancing_weight: Some(u32v(weight)),
                priority,
                ..Default::default()
            }
        })
        .collect()
}

fn is_ip_or_unix(address: &str) -> bool {
    address.starts_with("unix://") || address.parse::<std::net::IpAddr>().is_ok()
}

/// An Envoy address for an IP or DNS name and port, or a unix socket (`unix:///path`).
pub(crate) fn socket_address(address: &str, port: u16) -> Address {
    if let Some(path) = address.strip_prefix("unix://") {
        return Address {
            address: Some(address::Address::Pipe(Pipe {
                path: path.to_string(),
                ..Default::default()
            })),
        };
    }
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: address.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

fn lb_endpoint(ep: &Endpoint) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(HostIdentifier::Endpoint(EnvoyEndpoint {
            address: Some(socket_address(&ep.address, ep.port)),
            ..Default::default()
        })),
        metadata: Some(endpoint_metadata(ep)),
        load_balancing_weight: Some(u32v(ep.weight.max(1))),
        ..Default::default()
    }
}

/// A protobuf string value.
pub(crate) fn string_value(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_string())),
    }
}

fn endpoint_metadata(ep: &Endpoint) -> Metadata {
    // Two keys: build with the shared seed so equal endpoints encode identically (see `envoy::proto`).
    let mut filter_metadata = crate::envoy::proto::stable_map([]);
    if ep.has_sidecar {
        filter_metadata.insert(
            TRANSPORT_SOCKET_MATCH.to_string(),
            Struct {
                fields: [("tlsMode".to_string(), string_value("istio"))].into(),
            },
        );
    }
    if !ep.workload.is_empty() || !ep.namespace.is_empty() {
        filter_metadata.insert(
            "istio".to_string(),
            Struct {
                fields: [("workload".to_string(), string_value(&workload_label(ep)))].into(),
            },
        );
    }
    Metadata {
        filter_metadata,
        ..Default::default()
    }
}

/// `<workload>;<namespace>;<canonical name>;<canonical revision>;<cluster>` as istiod writes it. The workload is
/// the Deployment name for ReplicaSet pods (the pod name minus `-<pod-template-hash>-<suffix>`), else the pod
/// or WorkloadEntry name. The revision is left empty when it would be `latest`.
fn workload_label(ep: &Endpoint) -> String {
    let workload = workload_name(&ep.workload, &ep.labels);
    let labels = &ep.labels;
    let canonical_name = [
        "service.istio.io/canonical-name",
        "app.kubernetes.io/name",
        "app",
    ]
    .iter()
    .find_map(|k| labels.get(*k))
    .cloned()
    .unwrap_or_else(|| workload.clone());
    let revision = [
        "service.istio.io/canonical-revision",
        "app.kubernetes.io/version",
        "version",
    ]
    .iter()
    .find_map(|k| labels.get(*k))
    .cloned()
    .unwrap_or_default();
    let revision = if revision == "latest" {
        String::new()
    } else {
        revision
    };
    format!(
        "{workload};{};{canonical_name};{revision};{CLUSTER_ID}",
        ep.namespace
    )
}

fn workload_name(pod: &str, labels: &BTreeMap<String, String>) -> String {
    if let Some(hash) = labels.get("pod-template-hash")
        && let Some(idx) = pod.rfind(&format!("-{hash}-"))
    {
        return pod[..idx].to_string();
    }
    pod.to_string()
}
