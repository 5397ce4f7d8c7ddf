//! The immutable snapshot ("push context"): everything the generators read, indexed once per build and shared by
//! `Arc`.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use serde::Serialize;

use super::registry::{Inputs, MovedService, Registry, SLICE_SERVICE_LABEL};
use super::workload::Workload;
use crate::config::mesh::MeshConfig;
use crate::config::store::Changes;
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
    /// Where in `problems` the build's own begin (after the sources').
    own_problems: usize,
    /// The EndpointSlices built from (shared): which service a changed or deleted slice belonged to.
    slices: Vec<Object>,
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

/// The Kubernetes services `(namespace, name)` whose endpoint objects `changes` touched, when it touched only
/// EndpointSlices and Endpoints. A slice counts for the service it names now and the one it named in
/// `earlier` (a relabelled or deleted slice leaves the latter).
fn endpoint_services(
    earlier: &Snapshot,
    changes: &Changes,
    objects: &[Object],
) -> Option<BTreeSet<(String, String)>> {
    let endpoint_kinds = [Kind::EndpointSlice, Kind::Endpoints];
    if changes.kinds.is_empty() || !changes.kinds.iter().all(|k| endpoint_kinds.contains(k)) {
        return None;
    }
    let mut services = BTreeSet::new();
    let mut slices = Vec::new();
    for key in &changes.keys {
        match key.kind {
            Kind::Endpoints => {
                services.insert((key.namespace.clone(), key.name.clone()));
            }
            _ => slices.push((key.namespace.as_str(), key.name.as_str())),
        }
    }
    let slices = Keys::new(slices);
    // One pass over the slices now and the ones the earlier snapshot was built from.
    let slice_objects = objects
        .iter()
        .filter(|o| o.kind() == Kind::EndpointSlice)
        .chain(&earlier.slices);
    for slice in slice_objects {
        let meta = slice.meta();
        let key = (
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default(),
        );
        if slices.contains(key.0, key.1)
            && let Some(service) = meta
                .labels
                .as_ref()
                .and_then(|l| l.get(SLICE_SERVICE_LABEL))
        {
            services.insert((key.0.to_owned(), service.clone()));
        }
    }
    Some(services)
}

/// A few `(namespace, name)` keys, looked up once per stored object of a kind: compared one by one while
/// they are few (an endpoint change names one or two services, and hashing each of thousands of objects'
/// keys cost more than the patch it decides), hashed when many.
enum Keys<'a> {
    Few(Vec<(&'a str, &'a str)>),
    Many(HashSet<(&'a str, &'a str)>),
}

impl<'a> Keys<'a> {
    const FEW: usize = 8;

    fn new(keys: Vec<(&'a str, &'a str)>) -> Self {
        match keys.len() <= Self::FEW {
            true => Keys::Few(keys),
            false => Keys::Many(keys.into_iter().collect()),
        }
    }

    fn contains(&self, namespace: &str, name: &str) -> bool {
        match self {
            // The name first: it tells objects apart more often than the namespace.
            Keys::Few(keys) => keys.iter().any(|(ns, n)| *n == name && *ns == namespace),
            Keys::Many(keys) => keys.contains(&(namespace, name)),
        }
    }
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
    pub fn build(version: u64, objects: &[Object], problems: Vec<ConfigError>) -> Snapshot {
        Self::build_whole(version, objects, problems)
    }

    /// Builds a snapshot. When `earlier` (the snapshot of the objects before `changes`) is given and only
    /// EndpointSlices and Endpoints changed, it is patched instead: the services they belong to (now or
    /// before) get their endpoints read again, and everything else is shared with it.
    pub fn build_after(
        earlier: Option<(&Snapshot, &Changes)>,
        version: u64,
        objects: &[Object],
        problems: Vec<ConfigError>,
    ) -> Snapshot {
        if let Some((earlier, changes)) = earlier
            && let Some(changed) = endpoint_services(earlier, changes, objects)
        {
            return earlier.with_endpoints_of(&changed, version, objects, problems);
        }
        Self::build_whole(version, objects, problems)
    }

    /// This snapshot after the endpoint objects of the services `changed` changed, and nothing else.
    fn with_endpoints_of(
        &self,
        changed: &BTreeSet<(String, String)>,
        version: u64,
        objects: &[Object],
        mut problems: Vec<ConfigError>,
    ) -> Snapshot {
        let changed_keys = Keys::new(
            changed
                .iter()
                .map(|(n, m)| (n.as_str(), m.as_str()))
                .collect(),
        );
        let is_changed = |ns: &Option<String>, name: Option<&String>| {
            let ns = ns.as_deref().unwrap_or_default();
            name.is_some_and(|name| changed_keys.contains(ns, name))
        };
        let mut inputs = Inputs::default();
        let mut slices = Vec::new();
        for obj in objects {
            match obj {
                Object::Service(s)
                    if is_changed(&s.metadata.namespace, s.metadata.name.as_ref()) =>
                {
                    inputs.services.push(s)
                }
                Object::Endpoints(e)
                    if is_changed(&e.metadata.namespace, e.metadata.name.as_ref()) =>
                {
                    inputs.endpoints.push(e)
                }
                Object::EndpointSlice(s) => {
                    let service = s.metadata.labels.as_ref();
                    let service = service.and_then(|l| l.get(SLICE_SERVICE_LABEL));
                    if is_changed(&s.metadata.namespace, service) {
                        inputs.slices.push(s);
                    }
                    slices.push(obj.clone());
                }
                _ => {}
            }
        }
        inputs.workload_entries = self.configs(Kind::WorkloadEntry).iter().collect();
        inputs.workloads = &self.workloads;
        let registry = self.registry.patched(&inputs, DOMAIN_SUFFIX, changed);
        drop(inputs);
        let own_problems = problems.len();
        problems.extend_from_slice(&self.problems[self.own_problems..]);
        Snapshot {
            version,
            mesh: self.mesh.clone(),
            registry,
            workloads: self.workloads.clone(),
            namespaces: self.namespaces.clone(),
            configs: self.configs.clone(),
            problems,
            own_problems,
            slices,
        }
    }

    fn build_whole(version: u64, objects: &[Object], mut problems: Vec<ConfigError>) -> Snapshot {
        let own_problems = problems.len();
        let mut mesh = MeshConfig::default();
        let mut namespaces = BTreeMap::new();
        let mut workloads = Vec::new();
        let mut configs: BTreeMap<Kind, Vec<Object>> = BTreeMap::new();
        let mut inputs = Inputs::default();
        let mut slices = Vec::new();
        for obj in objects {
            match obj {
                Object::Namespace(ns) => {
                    let name = ns.metadata.name.clone().unwrap_or_default();
                    namespaces.insert(name, ns.metadata.labels.clone().unwrap_or_default());
                }
                Object::Pod(pod) => workloads.extend(Workload::from_pod(pod).map(Arc::new)),
                Object::Service(s) => inputs.services.push(s),
                Object::Endpoints(e) => inputs.endpoints.push(e),
                Object::EndpointSlice(s) => {
                    inputs.slices.push(s);
                    slices.push(obj.clone());
                }
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
            own_problems,
            slices,
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
        let same_mesh = Arc::ptr_eq(&self.mesh, &earlier.mesh) || self.mesh == earlier.mesh;
        if !same_configs || !same_mesh || self.namespaces != earlier.namespaces {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ObjectKey;
    use crate::test_helpers::mesh::objects_from_yaml;

    /// `web` with a slice, `api` with an Endpoints object, `app` with neither (its pods), `ext` an
    /// ExternalName, a WorkloadEntry `web` selects, and an AuthorizationPolicy (a problem of the build's own).
    fn mesh(web_ip: &str, api_ip: &str, app_slice: Option<&str>) -> Vec<Object> {
        let service = |name: &str| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\n\
                 spec: {{clusterIP: 10.96.0.{}, selector: {{app: {name}}}, ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n---\n",
                name.len()
            )
        };
        let slice = |name: &str, ip: &str| {
            format!(
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                 metadata: {{name: {name}-1, namespace: shop, labels: {{kubernetes.io/service-name: {name}}}}}\n\
                 addressType: IPv4\nports: [{{name: http, port: 8080}}]\n\
                 endpoints: [{{addresses: [\"{ip}\"], conditions: {{ready: true}}}}]\n---\n"
            )
        };
        let mut yaml = service("web") + &service("api") + &service("app") + &slice("web", web_ip);
        yaml += &format!(
            "apiVersion: v1\nkind: Endpoints\nmetadata: {{name: api, namespace: shop}}\n\
             subsets: [{{addresses: [{{ip: \"{api_ip}\"}}], ports: [{{name: http, port: 8080}}]}}]\n---\n"
        );
        yaml += "apiVersion: v1\nkind: Pod\nmetadata: {name: app-1, namespace: shop, labels: {app: app}}\n\
                 spec: {containers: [{name: c, ports: [{containerPort: 8080}]}]}\n\
                 status: {phase: Running, podIP: 10.0.0.9}\n---\n";
        yaml += "apiVersion: v1\nkind: Service\nmetadata: {name: ext, namespace: shop}\n\
                 spec: {type: ExternalName, externalName: example.com, ports: [{name: http, port: 80}]}\n---\n";
        yaml += "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: vm, namespace: shop}\n\
                 spec: {address: 10.9.0.1, labels: {app: web}}\n---\n";
        yaml += "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny, namespace: shop}\n\
                 spec: {action: DENY}\n---\n";
        if let Some(ip) = app_slice {
            yaml += &slice("app", ip);
        }
        objects_from_yaml(&yaml)
    }

    fn changes(keys: &[(Kind, &str)]) -> Changes {
        Changes {
            kinds: keys.iter().map(|(k, _)| *k).collect(),
            keys: keys
                .iter()
                .map(|(k, name)| ObjectKey::new(*k, "shop", *name))
                .collect(),
        }
    }

    /// Building after `earlier` gives what building whole gives; returns how many services kept their
    /// endpoints as they were (not read again).
    fn same_as_whole(earlier: &Snapshot, changes: &Changes, objects: &[Object]) -> usize {
        // The sources' problems now, which differ from the earlier snapshot's.
        let reported = || {
            vec![ConfigError::for_key(
                &ObjectKey::new(Kind::Service, "shop", "x"),
                "spec",
                "bad",
            )]
        };
        let whole = Snapshot::build(2, objects, reported());
        let after = Snapshot::build_after(Some((earlier, changes)), 2, objects, reported());
        assert_eq!(after.summary(), whole.summary());
        assert_eq!(after.problems, whole.problems);
        assert_eq!(after.workloads, whole.workloads);
        assert_eq!(
            after.registry.moved_since(&whole.registry).map(|m| m.len()),
            Some(0),
            "same services and endpoints"
        );
        assert_eq!(
            after.registry.endpoint_count(),
            whole.registry.endpoint_count()
        );
        after.registry.sharing_endpoints_with(&earlier.registry)
    }

    #[test]
    fn a_build_after_endpoint_changes_reads_only_their_services_endpoints_and_equals_a_whole_build()
    {
        let base = mesh("10.1.0.1", "10.2.0.1", None);
        let earlier = Snapshot::build(1, &base, Vec::new());
        assert_eq!(earlier.summary().warnings, 1, "the AuthorizationPolicy");
        let kube_services = 4;

        // web's slice moves: web (and its WorkloadEntry endpoint) rebuilt, the other three reused.
        let objects = mesh("10.1.0.2", "10.2.0.1", None);
        let reused = same_as_whole(
            &earlier,
            &changes(&[(Kind::EndpointSlice, "web-1")]),
            &objects,
        );
        assert_eq!(reused, kube_services - 1);

        // api's Endpoints object moves.
        let objects = mesh("10.1.0.1", "10.2.0.2", None);
        let reused = same_as_whole(&earlier, &changes(&[(Kind::Endpoints, "api")]), &objects);
        assert_eq!(reused, kube_services - 1);

        // app gets a slice: its endpoints now come from it, not its pods.
        let objects = mesh("10.1.0.1", "10.2.0.1", Some("10.3.0.1"));
        let reused = same_as_whole(
            &earlier,
            &changes(&[(Kind::EndpointSlice, "app-1")]),
            &objects,
        );
        assert_eq!(reused, kube_services - 1);

        // app's slice deleted: back to its pods (the earlier snapshot knows whose slice it was).
        let with_app = Snapshot::build(
            1,
            &mesh("10.1.0.1", "10.2.0.1", Some("10.3.0.1")),
            Vec::new(),
        );
        let reused = same_as_whole(
            &with_app,
            &changes(&[(Kind::EndpointSlice, "app-1")]),
            &base,
        );
        assert_eq!(reused, kube_services - 1);

        // A slice relabelled from web to api: both rebuilt.
        let relabelled: Vec<Object> = base
            .iter()
            .filter(|o| o.meta().name.as_deref() != Some("web-1"))
            .cloned()
            .chain(objects_from_yaml(
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                 metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: api}}\n\
                 addressType: IPv4\nports: [{name: http, port: 8080}]\n\
                 endpoints: [{addresses: [\"10.1.0.1\"], conditions: {ready: true}}]\n",
            ))
            .collect();
        let reused = same_as_whole(
            &earlier,
            &changes(&[(Kind::EndpointSlice, "web-1")]),
            &relabelled,
        );
        assert_eq!(reused, kube_services - 2);

        // Any other kind changed: built whole.
        let reused = same_as_whole(
            &earlier,
            &changes(&[(Kind::EndpointSlice, "web-1"), (Kind::Pod, "app-1")]),
            &mesh("10.1.0.2", "10.2.0.1", None),
        );
        assert_eq!(reused, 0);
    }
}
