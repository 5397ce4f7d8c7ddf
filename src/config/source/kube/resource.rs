//! What the Kubernetes source watches: one slot per kind, built from the kind table, and the probe that picks
//! which of a kind's versions the API server serves.

use kube::api::{Api, ApiResource, DynamicObject, ListParams};

use crate::config::Kind;
use crate::config::mesh::CONFIGMAP_NAME;

/// One watched collection. The first candidate the API server serves is watched; the others are never watched,
/// so an object served under several versions reaches the store once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// `(kind, version)` in order of preference.
    pub candidates: Vec<(Kind, &'static str)>,
    /// Watch one namespace only (the mesh ConfigMap); `None` watches all namespaces.
    pub namespace: Option<String>,
    /// Field selector (`metadata.name=istio`).
    pub fields: Option<String>,
}

impl Slot {
    fn kind(kind: Kind) -> Slot {
        Slot {
            // Newest first: the table lists served versions oldest first.
            candidates: kind.versions().iter().rev().map(|v| (kind, *v)).collect(),
            namespace: None,
            fields: None,
        }
    }

    /// The name used in logs and as the store's problem origin (`kube:VirtualService`).
    pub fn origin(&self) -> String {
        format!("kube:{}", self.candidates[0].0)
    }
}

/// Every collection rudder watches: the registry's Kubernetes inputs, the mesh ConfigMap in `root_namespace`,
/// and every Istio and legacy kind in the table.
pub fn slots(root_namespace: &str) -> Vec<Slot> {
    let mut out = Vec::new();
    for &kind in Kind::ALL {
        match kind {
            // Not read by the registry (Pods are); the injector sees workloads through admission instead.
            Kind::Deployment => {}
            // The fallback of EndpointSlice, never watched beside it.
            Kind::Endpoints => {}
            Kind::EndpointSlice => out.push(Slot {
                candidates: vec![(Kind::EndpointSlice, "v1"), (Kind::Endpoints, "v1")],
                namespace: None,
                fields: None,
            }),
            // Only the mesh config: other ConfigMaps are not rudder's business and can be large.
            Kind::ConfigMap => out.push(Slot {
                namespace: Some(root_namespace.to_string()),
                fields: Some(format!("metadata.name={CONFIGMAP_NAME}")),
                ..Slot::kind(kind)
            }),
            _ => out.push(Slot::kind(kind)),
        }
    }
    out
}

/// The dynamic API resource of one kind at one version.
pub fn api_resource(kind: Kind, version: &str) -> ApiResource {
    let api_version = if kind.group().is_empty() {
        version.to_string()
    } else {
        format!("{}/{}", kind.group(), version)
    };
    ApiResource {
        group: kind.group().to_string(),
        version: version.to_string(),
        api_version,
        kind: kind.name().to_string(),
        plural: kind.plural().to_string(),
    }
}

/// The API for a slot at one candidate.
pub fn api(client: &kube::Client, slot: &Slot, ar: &ApiResource) -> Api<DynamicObject> {
    match &slot.namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, ar),
        None => Api::all_with(client.clone(), ar),
    }
}

/// Finds the first candidate the API server serves with a one-item list. `Ok(None)` when none is (the CRD is
/// not installed); `Err` for any other failure (unreachable, forbidden), which is worth retrying.
pub async fn resolve(
    client: &kube::Client,
    slot: &Slot,
) -> Result<Option<(Kind, ApiResource)>, kube::Error> {
    for &(kind, version) in &slot.candidates {
        let ar = api_resource(kind, version);
        let mut lp = ListParams::default().limit(1);
        if let Some(f) = &slot.fields {
            lp = lp.fields(f);
        }
        match api(client, slot, &ar).list_metadata(&lp).await {
            Ok(_) => return Ok(Some((kind, ar))),
            Err(kube::Error::Api(status)) if status.is_not_found() => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_cover_the_table_once() {
        let slots = slots("istio-system");
        let first: Vec<Kind> = slots.iter().map(|s| s.candidates[0].0).collect();
        let mut dedup = first.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(dedup.len(), first.len(), "a kind is watched twice");
        assert!(first.contains(&Kind::VirtualService));
        assert!(!first.contains(&Kind::Deployment));
        let vs = slots
            .iter()
            .find(|s| s.candidates[0].0 == Kind::VirtualService)
            .unwrap();
        assert_eq!(
            vs.candidates.iter().map(|c| c.1).collect::<Vec<_>>(),
            ["v1", "v1beta1", "v1alpha3"]
        );
        let eps = slots
            .iter()
            .find(|s| s.candidates[0].0 == Kind::EndpointSlice)
            .unwrap();
        assert_eq!(eps.candidates[1], (Kind::Endpoints, "v1"));
        let cm = slots
            .iter()
            .find(|s| s.candidates[0].0 == Kind::ConfigMap)
            .unwrap();
        assert_eq!(cm.namespace.as_deref(), Some("istio-system"));
        assert_eq!(cm.fields.as_deref(), Some("metadata.name=istio"));
    }

    #[test]
    fn api_resource_paths() {
        let ar = api_resource(Kind::Pod, "v1");
        assert_eq!(
            (ar.api_version.as_str(), ar.plural.as_str()),
            ("v1", "pods")
        );
        let ar = api_resource(Kind::DestinationRule, "v1beta1");
        assert_eq!(ar.api_version, "networking.istio.io/v1beta1");
        assert_eq!(ar.kind, "DestinationRule");
    }
}
