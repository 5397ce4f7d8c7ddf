//! Workloads (pods) as the registry and proxy scoping see them: address, labels, identity, sidecar presence.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1 as core;
use serde::Serialize;

use super::service::Endpoint;

/// Annotation the injector writes on pods it injected.
pub const SIDECAR_STATUS_ANNOTATION: &str = "sidecar.istio.io/status";
/// Name of the injected proxy container.
pub const PROXY_CONTAINER: &str = "istio-proxy";

/// A pod reduced to what the control plane needs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    /// Pod IP; empty until scheduled.
    pub ip: String,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    pub has_sidecar: bool,
    /// Container port names → numbers, to resolve named `targetPort`s.
    pub container_ports: BTreeMap<String, u16>,
    /// Every declared container port (the inbound listener's chains).
    pub ports: Vec<u16>,
    pub ready: bool,
    pub locality: String,
}

impl Workload {
    /// Reduces a Pod. Returns `None` for pods that can never receive traffic (finished, or being deleted).
    pub fn from_pod(pod: &core::Pod) -> Option<Workload> {
        let meta = &pod.metadata;
        if meta.deletion_timestamp.is_some() {
            return None;
        }
        let status = pod.status.clone().unwrap_or_default();
        if matches!(status.phase.as_deref(), Some("Succeeded") | Some("Failed")) {
            return None;
        }
        let spec = pod.spec.clone().unwrap_or_default();
        let mut container_ports = BTreeMap::new();
        let mut ports = Vec::new();
        for c in spec.containers.iter().filter(|c| c.name != PROXY_CONTAINER) {
            for p in c.ports.iter().flatten() {
                let Ok(n) = u16::try_from(p.container_port) else {
                    continue;
                };
                if let Some(name) = &p.name {
                    container_ports.insert(name.clone(), n);
                }
                if !ports.contains(&n) {
                    ports.push(n);
                }
            }
        }
        let annotations = meta.annotations.clone().unwrap_or_default();
        let has_sidecar = annotations.contains_key(SIDECAR_STATUS_ANNOTATION)
            || spec.containers.iter().any(|c| c.name == PROXY_CONTAINER);
        // Without readiness conditions (file mode) a pod with an IP is ready, as kubelet would soon report.
        let ready = status
            .conditions
            .as_ref()
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status == "True")
            .unwrap_or(true);
        let labels = meta.labels.clone().unwrap_or_default();
        let locality = locality_of(&labels);
        Some(Workload {
            name: meta.name.clone().unwrap_or_default(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            ip: status.pod_ip.unwrap_or_default(),
            labels,
            service_account: spec
                .service_account_name
                .or(spec.service_account)
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".into()),
            has_sidecar,
            container_ports,
            ports,
            ready,
            locality,
        })
    }

    /// Whether the workload's labels include every `selector` pair.
    pub fn matches(&self, selector: &BTreeMap<String, String>) -> bool {
        selector.iter().all(|(k, v)| self.labels.get(k) == Some(v))
    }

    /// This workload as an endpoint on `port`.
    pub fn endpoint(&self, port: u16, ready: bool) -> Endpoint {
        Endpoint {
            address: self.ip.clone(),
            port,
            labels: self.labels.clone(),
            service_account: self.service_account.clone(),
            namespace: self.namespace.clone(),
            workload: self.name.clone(),
            has_sidecar: self.has_sidecar,
            locality: self.locality.clone(),
            weight: 1,
            network: String::new(),
            ready,
        }
    }
}

/// `region/zone/subzone` from the well-known topology labels (or Istio's `istio-locality` label).
fn locality_of(labels: &BTreeMap<String, String>) -> String {
    if let Some(l) = labels.get("istio-locality") {
        return l.replace('.', "/");
    }
    let region = labels
        .get("topology.kubernetes.io/region")
        .map(String::as_str)
        .unwrap_or("");
    let zone = labels
        .get("topology.kubernetes.io/zone")
        .map(String::as_str)
        .unwrap_or("");
    let sub = labels
        .get("topology.istio.io/subzone")
        .map(String::as_str)
        .unwrap_or("");
    match (region, zone, sub) {
        ("", "", "") => String::new(),
        (r, "", "") => r.to_string(),
        (r, z, "") => format!("{r}/{z}"),
        (r, z, s) => format!("{r}/{z}/{s}"),
    }
}
