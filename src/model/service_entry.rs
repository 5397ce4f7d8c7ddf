//! ServiceEntry and WorkloadEntry services in the registry.

use std::collections::BTreeMap;

use super::registry::{Inputs, Registry, dns_endpoint};
use super::service::{
    Endpoint, Location, Origin, Protocol, Resolution, Service, ServicePort, TargetPort,
};
use crate::config::Object;
use crate::config::istio::networking::{
    ServiceEntryLocation, ServiceEntryResolution, WorkloadEntrySpec,
};

/// Label a WorkloadEntry (or ServiceEntry endpoint) carries when its workload runs an Istio proxy.
const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";

/// Adds every ServiceEntry host as a service, with endpoints from its `endpoints`, the WorkloadEntries and Pods
/// its `workloadSelector` matches, or (DNS resolution) the host itself.
pub(crate) fn add_service_entries(reg: &mut Registry, inputs: &Inputs<'_>) {
    for obj in &inputs.service_entries {
        let Object::ServiceEntry(se) = obj else {
            continue;
        };
        let namespace = se.metadata.namespace.clone().unwrap_or_default();
        let name = se.metadata.name.clone().unwrap_or_default();
        let spec = &se.spec;
        let resolution = match spec.resolution {
            None | Some(ServiceEntryResolution::None) => Resolution::Passthrough,
            Some(ServiceEntryResolution::Static) => Resolution::ClientSideLb,
            Some(ServiceEntryResolution::Dns) | Some(ServiceEntryResolution::DynamicDns) => {
                Resolution::Dns
            }
            Some(ServiceEntryResolution::DnsRoundRobin) => Resolution::DnsRoundRobin,
        };
        let location = match spec.location {
            Some(ServiceEntryLocation::MeshInternal) => Location::MeshInternal,
            // Istio's default (enum value 0) is MESH_EXTERNAL.
            _ => Location::MeshExternal,
        };
        let ports: Vec<ServicePort> = spec
            .ports
            .iter()
            .filter_map(|p| {
                let port = u16::try_from(p.number?).ok()?;
                let name = p.name.clone().unwrap_or_default();
                let protocol = p
                    .protocol
                    .as_deref()
                    .and_then(Protocol::parse)
                    .unwrap_or_else(|| Protocol::from_port_name(&name));
                let target = p
                    .target_port
                    .and_then(|t| u16::try_from(t).ok())
                    .unwrap_or(port);
                Some(ServicePort {
                    name,
                    port,
                    protocol,
                    target_port: TargetPort::Number(target),
                })
            })
            .collect();
        let selector = spec
            .workload_selector
            .as_ref()
            .map(|s| s.labels.clone())
            .unwrap_or_default();
        for host in &spec.hosts {
            let service = Service {
                hostname: host.clone(),
                namespace: namespace.clone(),
                name: name.clone(),
                origin: Origin::ServiceEntry,
                addresses: spec.addresses.clone(),
                ports: ports.clone(),
                resolution,
                location,
                export_to: spec.export_to.clone(),
                selector: selector.clone(),
                labels: se.metadata.labels.clone().unwrap_or_default(),
                subject_alt_names: spec.subject_alt_names.clone(),
            };
            let mut eps: BTreeMap<u16, Vec<Endpoint>> = BTreeMap::new();
            for sp in &service.ports {
                let list = eps.entry(sp.port).or_default();
                if !spec.endpoints.is_empty() {
                    list.extend(
                        spec.endpoints
                            .iter()
                            .map(|we| entry_endpoint(we, sp, &namespace, "")),
                    );
                } else if !selector.is_empty() {
                    list.extend(workload_entry_endpoints(inputs, &namespace, &selector, sp));
                    list.extend(
                        inputs
                            .workloads
                            .iter()
                            .filter(|w| {
                                w.namespace == namespace && !w.ip.is_empty() && w.matches(&selector)
                            })
                            .map(|w| w.endpoint(target_number(sp), w.ready)),
                    );
                } else if matches!(resolution, Resolution::Dns | Resolution::DnsRoundRobin)
                    && !host.starts_with('*')
                {
                    list.push(dns_endpoint(host, target_number(sp), &namespace));
                }
            }
            reg.insert(service, eps);
        }
    }
}

fn target_number(sp: &ServicePort) -> u16 {
    match sp.target_port {
        TargetPort::Number(n) => n,
        TargetPort::Named(_) => sp.port,
    }
}

/// Endpoints from the WorkloadEntries in `namespace` whose labels match `selector` (also used for Kubernetes
/// services, whose selectors select WorkloadEntries too).
pub(crate) fn workload_entry_endpoints<'a>(
    inputs: &'a Inputs<'_>,
    namespace: &'a str,
    selector: &'a BTreeMap<String, String>,
    sp: &'a ServicePort,
) -> impl Iterator<Item = Endpoint> + 'a {
    inputs.workload_entries.iter().filter_map(move |obj| {
        let Object::WorkloadEntry(we) = obj else {
            return None;
        };
        if we.metadata.namespace.as_deref() != Some(namespace) {
            return None;
        }
        if !selector
            .iter()
            .all(|(k, v)| we.spec.labels.get(k) == Some(v))
        {
            return None;
        }
        Some(entry_endpoint(
            &we.spec,
            sp,
            namespace,
            we.metadata.name.as_deref().unwrap_or_default(),
        ))
    })
}

/// A WorkloadEntry (or inline ServiceEntry endpoint) as the endpoint for service port `sp`: the entry's `ports`
/// map renames the port by the service port's name.
fn entry_endpoint(
    we: &WorkloadEntrySpec,
    sp: &ServicePort,
    namespace: &str,
    workload: &str,
) -> Endpoint {
    let port = we
        .ports
        .get(&sp.name)
        .and_then(|p| u16::try_from(*p).ok())
        .unwrap_or_else(|| target_number(sp));
    Endpoint {
        address: we.address.clone().unwrap_or_default(),
        port,
        labels: we.labels.clone(),
        service_account: we.service_account.clone().unwrap_or_default(),
        namespace: namespace.to_string(),
        workload: workload.to_string(),
        has_sidecar: we.labels.get(TLS_MODE_LABEL).map(String::as_str) == Some("istio"),
        locality: we.locality.clone().unwrap_or_default(),
        weight: we.weight.unwrap_or(1).max(1),
        network: we.network.clone().unwrap_or_default(),
        ready: true,
    }
}
