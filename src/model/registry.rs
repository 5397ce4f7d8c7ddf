//! The service registry: Kubernetes Services and ServiceEntries as `Service`s, with endpoints from EndpointSlices,
//! else Endpoints, else Pods matching the selector (file mode has no endpoints controller), plus WorkloadEntries.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::service::{
    Endpoint, Location, Origin, Protocol, Resolution, Service, ServicePort, TargetPort,
};
use super::workload::Workload;
use crate::config::Object;

/// Label EndpointSlices carry to name their Service.
pub(crate) const SLICE_SERVICE_LABEL: &str = "kubernetes.io/service-name";

/// Services and their endpoints, indexed for the generators.
///
/// The service list and its host index are shared (`Arc`) with the registries patched from this one: a
/// change of endpoints leaves them as they are.
#[derive(Debug, Default, Clone)]
pub struct Registry {
    services: Arc<Vec<Arc<Service>>>,
    by_host: Arc<HashMap<String, Vec<usize>>>,
    /// (service index, service port) → endpoints.
    endpoints: HashMap<(usize, u16), Arc<Vec<Endpoint>>>,
}

/// Kubernetes objects grouped for registry building.
#[derive(Default)]
pub struct Inputs<'a> {
    pub services: Vec<&'a core::Service>,
    pub endpoints: Vec<&'a core::Endpoints>,
    pub slices: Vec<&'a discovery::EndpointSlice>,
    pub service_entries: Vec<&'a Object>,
    pub workload_entries: Vec<&'a Object>,
    pub workloads: &'a [Arc<Workload>],
}

/// The objects a Kubernetes service's endpoints are read from, indexed once per build.
struct EndpointSources<'i, 'a> {
    inputs: &'i Inputs<'a>,
    slices_by_svc: HashMap<(&'a str, &'a str), Vec<&'a discovery::EndpointSlice>>,
    endpoints_by_svc: HashMap<(&'a str, &'a str), &'a core::Endpoints>,
    pods_by_ip: HashMap<&'a str, &'a Arc<Workload>>,
    pods_by_name: HashMap<(&'a str, &'a str), &'a Arc<Workload>>,
}

impl<'i, 'a> EndpointSources<'i, 'a> {
    fn new(inputs: &'i Inputs<'a>) -> Self {
        let workloads: &'a [Arc<Workload>] = inputs.workloads;
        let pods_by_ip = workloads
            .iter()
            .filter(|w| !w.ip.is_empty())
            .map(|w| (w.ip.as_str(), w))
            .collect();
        let pods_by_name = workloads
            .iter()
            .map(|w| ((w.namespace.as_str(), w.name.as_str()), w))
            .collect();
        let mut slices_by_svc: HashMap<(&str, &str), Vec<&discovery::EndpointSlice>> =
            HashMap::new();
        for &s in &inputs.slices {
            if let (Some(ns), Some(svc)) = (
                s.metadata.namespace.as_deref(),
                s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(SLICE_SERVICE_LABEL)),
            ) {
                slices_by_svc.entry((ns, svc.as_str())).or_default().push(s);
            }
        }
        let endpoints_by_svc = inputs
            .endpoints
            .iter()
            .filter_map(|&e| {
                Some((
                    (
                        e.metadata.namespace.as_deref()?,
                        e.metadata.name.as_deref()?,
                    ),
                    e,
                ))
            })
            .collect();
        EndpointSources {
            inputs,
            slices_by_svc,
            endpoints_by_svc,
            pods_by_ip,
            pods_by_name,
        }
    }

    /// The endpoints of Kubernetes Service `svc` (converted as `service`), per service port: from its
    /// EndpointSlices, else its Endpoints, else the Pods its selector picks, plus the WorkloadEntries it picks.
    fn of(&self, svc: &core::Service, service: &Service) -> BTreeMap<u16, Vec<Endpoint>> {
        let key = (service.namespace.as_str(), service.name.as_str());
        let external = svc
            .spec
            .as_ref()
            .and_then(|s| s.external_name.as_deref())
            .filter(|_| service.resolution == Resolution::Dns);
        let mut eps: BTreeMap<u16, Vec<Endpoint>> = if let Some(external) = external {
            service
                .ports
                .iter()
                .map(|p| {
                    (
                        p.port,
                        vec![dns_endpoint(external, p.port, &service.namespace)],
                    )
                })
                .collect()
        } else if let Some(slices) = self.slices_by_svc.get(&key) {
            from_slices(service, slices, &self.pods_by_ip, &self.pods_by_name)
        } else if let Some(ep) = self.endpoints_by_svc.get(&key) {
            from_endpoints(service, ep, &self.pods_by_ip, &self.pods_by_name)
        } else if !service.selector.is_empty() {
            from_pods(service, self.inputs.workloads)
        } else {
            BTreeMap::new()
        };
        // Istio lets a Kubernetes Service's selector pick WorkloadEntries (VMs) in its namespace too.
        if !service.selector.is_empty() {
            for sp in &service.ports {
                let entries = super::service_entry::workload_entry_endpoints(
                    self.inputs,
                    &service.namespace,
                    &service.selector,
                    sp,
                );
                eps.entry(sp.port).or_default().extend(entries);
            }
            eps.retain(|_, v| !v.is_empty());
        }
        eps
    }
}

impl Registry {
    /// Builds the registry. `domain` is the cluster DNS suffix (`cluster.local`).
    pub fn build(inputs: &Inputs<'_>, domain: &str) -> Registry {
        let mut reg = Registry::default();
        let sources = EndpointSources::new(inputs);
        for svc in &inputs.services {
            let Some(service) = kube_service(svc, domain) else {
                continue;
            };
            let eps = sources.of(svc, &service);
            reg.insert(service, eps);
        }
        super::service_entry::add_service_entries(&mut reg, inputs);
        reg.services_sorted();
        reg
    }

    /// This registry after the endpoint objects of the Kubernetes services `changed` (`(namespace, name)`)
    /// changed, and nothing else: their endpoints are read again from `inputs` (which must hold their
    /// Service, EndpointSlice and Endpoints objects, the WorkloadEntries and the Pods); every service, and
    /// every other service's endpoints, stay shared with this registry.
    pub fn patched(
        &self,
        inputs: &Inputs<'_>,
        domain: &str,
        changed: &BTreeSet<(String, String)>,
    ) -> Registry {
        let mut reg = self.clone();
        let sources = EndpointSources::new(inputs);
        for (ns, name) in changed {
            let Some(i) = self.kube_index(ns, name, domain) else {
                continue;
            };
            let Some(svc) = inputs.services.iter().find(|s| {
                s.metadata.namespace.as_deref() == Some(ns.as_str())
                    && s.metadata.name.as_deref() == Some(name.as_str())
            }) else {
                continue;
            };
            let service = &self.services[i];
            // Endpoints are kept per service port (`EndpointSources::of`).
            for p in &service.ports {
                reg.endpoints.remove(&(i, p.port));
            }
            for (port, eps) in sources.of(svc, service) {
                reg.endpoints.insert((i, port), Arc::new(eps));
            }
        }
        reg
    }

    /// How many services have every port's endpoints shared (the same `Arc`s) with `earlier`, which has the
    /// same services.
    #[cfg(test)]
    pub(crate) fn sharing_endpoints_with(&self, earlier: &Registry) -> usize {
        (0..self.services.len())
            .filter(|&i| {
                self.services[i].ports.iter().all(|p| {
                    let key = (i, p.port);
                    match (self.endpoints.get(&key), earlier.endpoints.get(&key)) {
                        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                        (a, b) => a.is_none() && b.is_none(),
                    }
                })
            })
            .count()
    }

    /// The index of Kubernetes Service `namespace/name`.
    fn kube_index(&self, namespace: &str, name: &str, domain: &str) -> Option<usize> {
        let host = format!("{name}.{namespace}.svc.{domain}");
        self.by_host.get(&host)?.iter().copied().find(|&i| {
            let s = &self.services[i];
            s.origin == Origin::Kubernetes && s.namespace == namespace && s.name == name
        })
    }

    /// Adds a service with its endpoints per port.
    pub(crate) fn insert(&mut self, service: Service, endpoints: BTreeMap<u16, Vec<Endpoint>>) {
        let idx = self.services.len();
        for (port, eps) in endpoints {
            self.endpoints.insert((idx, port), Arc::new(eps));
        }
        Arc::make_mut(&mut self.by_host)
            .entry(service.hostname.clone())
            .or_default()
            .push(idx);
        Arc::make_mut(&mut self.services).push(Arc::new(service));
    }

    /// Sorts the index lists so lookups are deterministic (first-defined ServiceEntry wins ties).
    fn services_sorted(&mut self) {
        let services = &self.services;
        for list in Arc::make_mut(&mut self.by_host).values_mut() {
            list.sort_by(|a, b| services[*a].namespace.cmp(&services[*b].namespace));
        }
    }

    /// Every service, in insertion order (Kubernetes services first).
    pub fn services(&self) -> &[Arc<Service>] {
        &self.services
    }

    /// The services declared for `hostname` (one per declaring namespace).
    pub fn by_hostname(&self, hostname: &str) -> impl Iterator<Item = &Arc<Service>> {
        self.by_host
            .get(hostname)
            .into_iter()
            .flatten()
            .map(|i| &self.services[*i])
    }

    /// The service for `hostname` declared in `namespace`.
    pub fn service(&self, hostname: &str, namespace: &str) -> Option<&Arc<Service>> {
        self.by_hostname(hostname)
            .find(|s| s.namespace == namespace)
    }

    /// Endpoints of one service port (empty when none).
    pub fn endpoints(&self, service: &Service, port: u16) -> &[Endpoint] {
        self.by_host
            .get(&service.hostname)
            .into_iter()
            .flatten()
            .find(|i| self.services[**i].namespace == service.namespace)
            .and_then(|i| self.endpoints.get(&(*i, port)))
            .map(|v| v.as_slice())
            .unwrap_or_default()
    }

    /// Total endpoints across every service port.
    pub fn endpoint_count(&self) -> usize {
        self.endpoints.values().map(|v| v.len()).sum()
    }

    /// When this registry has the same services as `earlier`: those whose endpoints differ (any port). `None`
    /// when a service was added, removed or changed.
    pub fn moved_since(&self, earlier: &Registry) -> Option<Vec<MovedService>> {
        let same_services = Arc::ptr_eq(&self.services, &earlier.services)
            || self.services.len() == earlier.services.len()
                && (self.services.iter())
                    .zip(earlier.services.iter())
                    .all(|(a, b)| Arc::ptr_eq(a, b) || a == b);
        if !same_services {
            return None;
        }
        // Same services in the same order, so an index names the same service in both.
        let mut moved: Vec<usize> = self
            .endpoints
            .iter()
            .filter(|(key, eps)| earlier.endpoints.get(key) != Some(eps))
            .map(|((i, _), _)| *i)
            .chain(
                earlier
                    .endpoints
                    .keys()
                    .filter(|key| !self.endpoints.contains_key(key))
                    .map(|(i, _)| *i),
            )
            .collect();
        moved.sort_unstable();
        moved.dedup();
        Some(
            moved
                .into_iter()
                .map(|i| MovedService {
                    service: self.services[i].clone(),
                    identities_changed: self.identities(i) != earlier.identities(i),
                })
                .collect(),
        )
    }

    /// The (namespace, service account) pairs of service `i`'s endpoints, every port.
    fn identities(&self, i: usize) -> BTreeSet<(&str, &str)> {
        self.services[i]
            .ports
            .iter()
            .filter_map(|p| self.endpoints.get(&(i, p.port)))
            .flat_map(|eps| eps.iter())
            .map(|e| (e.namespace.as_str(), e.service_account.as_str()))
            .collect()
    }
}

/// A service whose endpoints differ from an earlier registry's.
#[derive(Debug, Clone)]
pub struct MovedService {
    pub service: Arc<Service>,
    /// The service accounts (or namespaces) behind its endpoints changed: the identities its clusters accept.
    pub identities_changed: bool,
}

fn kube_service(svc: &core::Service, domain: &str) -> Option<Service> {
    let name = svc.metadata.name.clone()?;
    let namespace = svc.metadata.namespace.clone().unwrap_or_default();
    let spec = svc.spec.clone().unwrap_or_default();
    if spec.type_.as_deref() == Some("ExternalName") {
        // ExternalName services are CNAMEs: DNS-resolved, mesh-external (endpoints added by `build`).
        return Some(Service {
            hostname: format!("{name}.{namespace}.svc.{domain}"),
            namespace,
            name,
            origin: Origin::Kubernetes,
            addresses: vec![],
            ports: ports_of(&spec),
            resolution: Resolution::Dns,
            location: Location::MeshExternal,
            export_to: export_to(&svc.metadata),
            selector: BTreeMap::new(),
            labels: svc.metadata.labels.clone().unwrap_or_default(),
            subject_alt_names: vec![],
        });
    }
    let headless = spec.cluster_ip.as_deref() == Some("None");
    let addresses: Vec<String> = match (&spec.cluster_ips, &spec.cluster_ip) {
        _ if headless => vec![],
        (Some(ips), _) if !ips.is_empty() => ips.clone(),
        (_, Some(ip)) if !ip.is_empty() => vec![ip.clone()],
        _ => vec![],
    };
    Some(Service {
        hostname: format!("{name}.{namespace}.svc.{domain}"),
        namespace,
        name,
        origin: Origin::Kubernetes,
        addresses,
        ports: ports_of(&spec),
        resolution: if headless {
            Resolution::Passthrough
        } else {
            Resolution::ClientSideLb
        },
        location: Location::MeshInternal,
        export_to: export_to(&svc.metadata),
        selector: spec.selector.clone().unwrap_or_default(),
        labels: svc.metadata.labels.clone().unwrap_or_default(),
        subject_alt_names: vec![],
    })
}

/// `networking.istio.io/exportTo` annotation (comma-separated), as istiod reads it.
fn export_to(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Vec<String> {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get("networking.istio.io/exportTo"))
        .map(|v| {
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

fn ports_of(spec: &core::ServiceSpec) -> Vec<ServicePort> {
    spec.ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") != "SCTP")
        .filter_map(|p| {
            let port = u16::try_from(p.port).ok()?;
            let name = p.name.clone().unwrap_or_default();
            let protocol = if p.protocol.as_deref() == Some("UDP") {
                Protocol::Udp
            } else {
                p.app_protocol
                    .as_deref()
                    .and_then(Protocol::from_app_protocol)
                    .unwrap_or_else(|| Protocol::from_port_name(&name))
            };
            let target_port = match &p.target_port {
                Some(IntOrString::Int(n)) => TargetPort::Number(u16::try_from(*n).unwrap_or(port)),
                Some(IntOrString::String(s)) => match s.parse::<u16>() {
                    Ok(n) => TargetPort::Number(n),
                    Err(_) => TargetPort::Named(s.clone()),
                },
                None => TargetPort::Number(port),
            };
            Some(ServicePort {
                name,
                port,
                protocol,
                target_port,
            })
        })
        .collect()
}

pub(crate) fn dns_endpoint(host: &str, port: u16, namespace: &str) -> Endpoint {
    Endpoint {
        address: host.to_string(),
        port,
        labels: BTreeMap::new(),
        service_account: String::new(),
        namespace: namespace.to_string(),
        workload: String::new(),
        has_sidecar: false,
        locality: String::new(),
        weight: 1,
        network: String::new(),
        ready: true,
    }
}

/// An endpoint for a pod (or a bare IP when no pod is known).
fn endpoint_for(
    ip: &str,
    port: u16,
    pod: Option<&Arc<Workload>>,
    ready: bool,
    namespace: &str,
) -> Endpoint {
    match pod {
        Some(w) => w.endpoint(port, ready),
        None => Endpoint {
            address: ip.to_string(),
            ready,
            ..dns_endpoint(ip, port, namespace)
        },
    }
}

fn from_slices(
    service: &Service,
    slices: &[&discovery::EndpointSlice],
    by_ip: &HashMap<&str, &Arc<Workload>>,
    by_name: &HashMap<(&str, &str), &Arc<Workload>>,
) -> BTreeMap<u16, Vec<Endpoint>> {
    let mut out: BTreeMap<u16, Vec<Endpoint>> = BTreeMap::new();
    for sp in &service.ports {
        for slice in slices {
            // A slice port matches the service port by name (both empty for single-port services).
            let Some(port) = slice
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref().unwrap_or("") == sp.name)
                .and_then(|p| p.port)
                .and_then(|p| u16::try_from(p).ok())
            else {
                continue;
            };
            for ep in slice.endpoints.iter().flatten() {
                let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                let pod = ep
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .and_then(|r| {
                        by_name.get(&(
                            r.namespace.as_deref().unwrap_or(&service.namespace),
                            r.name.as_deref()?,
                        ))
                    })
                    .copied();
                for addr in &ep.addresses {
                    let pod = pod.or_else(|| by_ip.get(addr.as_str()).copied());
                    out.entry(sp.port).or_default().push(endpoint_for(
                        addr,
                        port,
                        pod,
                        ready,
                        &service.namespace,
                    ));
                }
            }
        }
    }
    out
}

fn from_endpoints(
    service: &Service,
    ep: &core::Endpoints,
    by_ip: &HashMap<&str, &Arc<Workload>>,
    by_name: &HashMap<(&str, &str), &Arc<Workload>>,
) -> BTreeMap<u16, Vec<Endpoint>> {
    let mut out: BTreeMap<u16, Vec<Endpoint>> = BTreeMap::new();
    for sp in &service.ports {
        for subset in ep.subsets.iter().flatten() {
            let ports = subset.ports.as_deref().unwrap_or_default();
            // Match by name; a lone unnamed port matches a single-port service.
            let Some(port) = ports
                .iter()
                .find(|p| p.name.as_deref().unwrap_or("") == sp.name)
                .or_else(|| {
                    if ports.len() == 1 && service.ports.len() == 1 {
                        ports.first()
                    } else {
                        None
                    }
                })
                .and_then(|p| u16::try_from(p.port).ok())
            else {
                continue;
            };
            let all = [
                (subset.addresses.as_deref(), true),
                (subset.not_ready_addresses.as_deref(), false),
            ];
            for (addrs, ready) in all {
                for a in addrs.unwrap_or_default() {
                    let pod = a
                        .target_ref
                        .as_ref()
                        .and_then(|r| {
                            by_name.get(&(
                                r.namespace.as_deref().unwrap_or(&service.namespace),
                                r.name.as_deref()?,
                            ))
                        })
                        .or_else(|| by_ip.get(a.ip.as_str()))
                        .copied();
                    out.entry(sp.port).or_default().push(endpoint_for(
                        &a.ip,
                        port,
                        pod,
                        ready,
                        &service.namespace,
                    ));
                }
            }
        }
    }
    out
}

/// File mode has no endpoints controller: select pods directly, as the controller would.
fn from_pods(service: &Service, workloads: &[Arc<Workload>]) -> BTreeMap<u16, Vec<Endpoint>> {
    let mut out: BTreeMap<u16, Vec<Endpoint>> = BTreeMap::new();
    for w in workloads {
        if w.namespace != service.namespace || w.ip.is_empty() || !w.matches(&service.selector) {
            continue;
        }
        for sp in &service.ports {
            let port = match &sp.target_port {
                TargetPort::Number(n) => Some(*n),
                TargetPort::Named(name) => w.container_ports.get(name).copied(),
            };
            if let Some(port) = port {
                out.entry(sp.port)
                    .or_default()
                    .push(w.endpoint(port, w.ready));
            }
        }
    }
    out
}
