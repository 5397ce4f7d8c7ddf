//! The immutable snapshot ("push context"): everything the generators read, indexed once per build and shared by
//! `Arc`.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use super::registry::{Inputs, MovedService, Registry};
use super::workload::Workload;
use crate::config::mesh::MeshConfig;
use crate::config::{ConfigError, Kind, Object, Severity};

/// The cluster DNS suffix services are named under (istiod's `--domain`).
pub const DOMAIN_SUFFIX: &str = "cluster.local";

/// Namespace and name of the ConfigMap holding the mesh config.
pub const MESH_CONFIGMAP: (&str, &str) = ("istio-system", "istio");

/// An immutable view of the whole mesh at one store generation.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Increases with every build.
    pub version: u64,
    pub mesh: Arc<MeshConfig>,
    pub registry: Registry,
    pub workloads: Vec<Arc<Workload>>,
    /// Namespace name → labels.
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// Istio (and legacy) config by kind, in key order.
    configs: BTreeMap<Kind, Vec<Object>>,
    /// Problems reported by sources and by the build itself.
    pub problems: Vec<ConfigError>,
}

/// Kinds rudder stores (validated, shown in debug) but does not turn into Envoy config yet, with what that means
/// for traffic. Each such object gets a warning in the snapshot's problems (the one-line snapshot log counts them,
/// the debug API lists them); the proxies' config is generated without it, never NACKed because of it.
fn not_translated(kind: Kind) -> Option<&'static str> {
    Some(match kind {
        Kind::AuthorizationPolicy => {
            "rudder enforces no AuthorizationPolicy yet; requests are not filtered"
        }
        Kind::RequestAuthentication => "rudder validates no request JWTs yet",
        Kind::Telemetry => {
            "rudder applies no Telemetry yet; access logs follow the mesh config's accessLogFile"
        }
        Kind::EnvoyFilter => "rudder applies no EnvoyFilter patches",
        Kind::ClusterRbacConfig
        | Kind::RbacConfig
        | Kind::ServiceRole
        | Kind::ServiceRoleBinding => "legacy Istio RBAC is not enforced",
        Kind::Handler | Kind::Instance | Kind::Rule | Kind::QuotaSpec | Kind::QuotaSpecBinding => {
            "Mixer config has no effect (Istio removed Mixer)"
        }
        _ => return None,
    })
}

/// Counts for the one-line log and the debug API.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub version: u64,
    pub services: usize,
    pub endpoints: usize,
    pub workloads: usize,
    pub configs: BTreeMap<String, usize>,
    pub errors: usize,
    pub warnings: usize,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "snapshot {}: {} services, {} endpoints, {} workloads",
            self.version, self.services, self.endpoints, self.workloads
        )?;
        if !self.configs.is_empty() {
            let parts: Vec<String> = self
                .configs
                .iter()
                .map(|(k, n)| format!("{k}={n}"))
                .collect();
            write!(f, ", config: {}", parts.join(" "))?;
        }
        write!(f, ", {} errors, {} warnings", self.errors, self.warnings)
    }
}

impl Snapshot {
    /// Builds a snapshot from every stored object and the problems the sources reported.
    pub fn build(version: u64, objects: &[Object], mut problems: Vec<ConfigError>) -> Snapshot {
        let mut mesh = MeshConfig::default();
        let mut namespaces = BTreeMap::new();
        let mut workloads = Vec::new();
        let mut configs: BTreeMap<Kind, Vec<Object>> = BTreeMap::new();
        let mut inputs = Inputs::default();
        for obj in objects {
            match obj {
                Object::Namespace(ns) => {
                    let name = ns.metadata.name.clone().unwrap_or_default();
                    namespaces.insert(name, ns.metadata.labels.clone().unwrap_or_default());
                }
                Object::Pod(pod) => workloads.extend(Workload::from_pod(pod).map(Arc::new)),
                Object::Service(s) => inputs.services.push(s),
                Object::Endpoints(e) => inputs.endpoints.push(e),
                Object::EndpointSlice(s) => inputs.slices.push(s),
                Object::ConfigMap(cm) => {
                    let key = (
                        cm.metadata.namespace.as_deref(),
                        cm.metadata.name.as_deref(),
                    );
                    if key == (Some(MESH_CONFIGMAP.0), Some(MESH_CONFIGMAP.1)) {
                        match MeshConfig::from_configmap(cm) {
                            Ok(m) => mesh = m,
                            Err(e) => {
                                // MeshConfig errors read `data.mesh.field: reason`; split so the path is a path.
                                let (path, msg) = e.split_once(": ").unwrap_or(("data.mesh", &e));
                                problems.push(ConfigError::for_key(&obj.key(), path, msg));
                            }
                        }
                    }
                }
                Object::Secret(_) | Object::Deployment(_) => {}
                Object::ServiceEntry(_) => {
                    inputs.service_entries.push(obj);
                    configs.entry(obj.kind()).or_default().push(obj.clone());
                }
                Object::WorkloadEntry(_) => {
                    inputs.workload_entries.push(obj);
                    configs.entry(obj.kind()).or_default().push(obj.clone());
                }
                other => {
                    if let Some(effect) = not_translated(other.kind()) {
                        problems.push(
                            ConfigError::for_key(
                                &other.key(),
                                "",
                                format!("loaded but not translated: {effect}"),
                            )
                            .severity(Severity::Warning),
                        );
                    }
                    configs.entry(other.kind()).or_default().push(other.clone())
                }
            }
        }
        inputs.workloads = &workloads;
        let registry = Registry::build(&inputs, DOMAIN_SUFFIX);
        drop(inputs);
        Snapshot {
            version,
            mesh: Arc::new(mesh),
            registry,
            workloads,
            namespaces,
            configs,
            problems,
        }
    }

    /// When this snapshot differs from `earlier` only in endpoints and pods: the services whose endpoints
    /// moved. `None` when any config, service, namespace or the mesh config differs.
    pub fn moved_since(&self, earlier: &Snapshot) -> Option<Vec<MovedService>> {
        let same_configs = self.configs.len() == earlier.configs.len()
            && self
                .configs
                .iter()
                .zip(&earlier.configs)
                .all(|((k1, a), (k2, b))| {
                    k1 == k2 && a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.same(y))
                });
        if !same_configs || self.mesh != earlier.mesh || self.namespaces != earlier.namespaces {
            return None;
        }
        self.registry.moved_since(&earlier.registry)
    }

    /// Config objects of one kind.
    pub fn configs(&self, kind: Kind) -> &[Object] {
        self.configs
            .get(&kind)
            .map(|v| v.as_slice())
            .unwrap_or_default()
    }

    /// Config objects of one kind in one namespace.
    pub fn configs_in<'a>(
        &'a self,
        kind: Kind,
        namespace: &'a str,
    ) -> impl Iterator<Item = &'a Object> + 'a {
        self.configs(kind)
            .iter()
            .filter(move |o| o.meta().namespace.as_deref() == Some(namespace))
    }

    /// The workload with this pod IP.
    pub fn workload_by_ip(&self, ip: &str) -> Option<&Arc<Workload>> {
        self.workloads.iter().find(|w| w.ip == ip)
    }

    /// The workload `namespace/name`.
    pub fn workload(&self, namespace: &str, name: &str) -> Option<&Arc<Workload>> {
        self.workloads
            .iter()
            .find(|w| w.namespace == namespace && w.name == name)
    }

    /// Counts for logs and debug output.
    pub fn summary(&self) -> Summary {
        Summary {
            version: self.version,
            services: self.registry.services().len(),
            endpoints: self.registry.endpoint_count(),
            workloads: self.workloads.len(),
            configs: self
                .configs
                .iter()
                .map(|(k, v)| (k.name().to_string(), v.len()))
                .collect(),
            errors: self
                .problems
                .iter()
                .filter(|p| p.severity == Severity::Error)
                .count(),
            warnings: self
                .problems
                .iter()
                .filter(|p| p.severity == Severity::Warning)
                .count(),
        }
    }
}
