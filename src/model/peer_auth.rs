//! Peer authentication: which mTLS mode a workload port accepts, from PeerAuthentication
//! (`security.istio.io`) and the book's legacy `authentication.istio.io/v1alpha1` MeshPolicy/Policy.
//!
//! Resolution follows istiod's `ComposePeerAuthentication`:
//! ```text
//!  port-level (workload PeerAuthentication portLevelMtls, then a legacy Policy targeting the port's service)
//!    └ UNSET inherits ▶ workload (PeerAuthentication with a selector, not in the root namespace)
//!        └ UNSET inherits ▶ namespace (PeerAuthentication without selector; legacy Policy named `default`)
//!            └ UNSET inherits ▶ mesh (root-namespace PeerAuthentication without selector; MeshPolicy `default`)
//!                └ nothing says anything ▶ PERMISSIVE
//! ```
//! When several policies compete at one level the oldest (creationTimestamp, then name) wins, as in istiod. An
//! object without a timestamp (file mode) counts as oldest. At a level where both API generations speak, the
//! PeerAuthentication wins. Legacy policies do not merge (book S16): a Policy without `peers` replaces the
//! MeshPolicy for its targets and means no mTLS (DISABLE).

use std::collections::BTreeMap;

use super::service::TargetPort;
use super::snapshot::Snapshot;
use super::workload::Workload;
use crate::config::istio::security::{MtlsMode as PaMode, PeerAuthenticationSpec, PeerMutualTls};
use crate::config::legacy::{MutualTlsMode, PolicySpec};
use crate::config::{IstioObject, Kind, Object};

/// The name the legacy mesh-wide and namespace-wide policies must carry.
const LEGACY_DEFAULT_POLICY: &str = "default";

/// What a workload port accepts from its peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MtlsMode {
    /// Plaintext only: no TLS is terminated by the sidecar.
    Disable,
    /// mTLS from sidecars and plaintext from everyone else.
    Permissive,
    /// mTLS only.
    Strict,
}

/// The merged policy of one workload: its mode and the ports that differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveMtls {
    /// The workload-wide mode (also what undeclared ports get).
    pub mode: MtlsMode,
    /// Per workload (target) port overrides, already resolved (no UNSET).
    pub per_port: BTreeMap<u16, MtlsMode>,
}

impl EffectiveMtls {
    /// The mode for one workload port.
    pub fn for_port(&self, port: u16) -> MtlsMode {
        self.per_port.get(&port).copied().unwrap_or(self.mode)
    }

    /// Whether any port (or the workload) accepts mTLS.
    pub fn any_tls(&self) -> bool {
        self.mode != MtlsMode::Disable || self.per_port.values().any(|m| *m != MtlsMode::Disable)
    }
}

/// The mode of `port` of `workload`.
pub fn effective_mtls(snapshot: &Snapshot, workload: &Workload, port: u16) -> MtlsMode {
    workload_mtls(
        snapshot,
        &workload.namespace,
        &workload.labels,
        Some(workload),
    )
    .for_port(port)
}

/// The mesh- and namespace-level mode of `namespace` (no workload policy): what istiod consults to decide
/// whether clients may use auto-mTLS towards the namespace's services.
pub fn namespace_mtls(snapshot: &Snapshot, namespace: &str) -> MtlsMode {
    workload_mtls(snapshot, namespace, &BTreeMap::new(), None).mode
}

/// The merged policy of a workload in `namespace` with `labels`. `workload` (the Pod) is needed to map
/// legacy Policy targets (services and service ports) onto its ports; without it they are not applied.
pub fn workload_mtls(
    snapshot: &Snapshot,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    workload: Option<&Workload>,
) -> EffectiveMtls {
    let root = snapshot.mesh.root_namespace.as_str();
    let mut mesh_pa = None;
    let mut ns_pa = None;
    let mut workload_pa = None;
    for pa in peer_authentications(snapshot) {
        let pa_ns = pa.metadata.namespace.as_deref().unwrap_or_default();
        let selector = pa
            .spec
            .selector
            .as_ref()
            .map(|s| &s.match_labels)
            .filter(|l| !l.is_empty());
        let slot = match selector {
            None if pa_ns == root => &mut mesh_pa,
            None if pa_ns == namespace => &mut ns_pa,
            // istiod ignores selector policies in the root namespace.
            Some(sel)
                if pa_ns == namespace
                    && pa_ns != root
                    && sel.iter().all(|(k, v)| labels.get(k) == Some(v)) =>
            {
                &mut workload_pa
            }
            _ => continue,
        };
        keep_oldest(slot, pa);
    }

    let (legacy_mesh, legacy_ns, legacy_targeted) = legacy_policies(snapshot, namespace);

    let mut mode = MtlsMode::Permissive;
    let levels = [
        (
            mesh_pa.and_then(|p| pa_mode(p.spec.mtls.as_ref())),
            legacy_mesh,
        ),
        (ns_pa.and_then(|p| pa_mode(p.spec.mtls.as_ref())), legacy_ns),
    ];
    for (pa, legacy) in levels {
        if let Some(m) = pa.or(legacy) {
            mode = m;
        }
    }
    let workload_spec: Option<&PeerAuthenticationSpec> = workload_pa.map(|p| &p.spec);
    if let Some(m) = workload_spec.and_then(|s| pa_mode(s.mtls.as_ref())) {
        mode = m;
    }

    let mut per_port = BTreeMap::new();
    // Legacy targeted policies first, so a PeerAuthentication port setting overrides them.
    if let Some(w) = workload {
        for (port, m) in legacy_ports(snapshot, w, &legacy_targeted) {
            per_port.insert(port, m);
        }
    }
    for (port, mtls) in workload_spec.iter().flat_map(|s| &s.port_level_mtls) {
        let Ok(port) = u16::try_from(*port) else {
            continue;
        };
        per_port.insert(port, pa_mode(Some(mtls)).unwrap_or(mode));
    }
    EffectiveMtls { mode, per_port }
}

fn peer_authentications(
    snapshot: &Snapshot,
) -> impl Iterator<Item = &IstioObject<PeerAuthenticationSpec>> {
    snapshot
        .configs(Kind::PeerAuthentication)
        .iter()
        .filter_map(|o| match o {
            Object::PeerAuthentication(pa) => Some(pa.as_ref()),
            _ => None,
        })
}

/// Age order: creationTimestamp (absent = oldest), then name.
fn age_key<S>(
    o: &IstioObject<S>,
) -> (
    Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    &str,
) {
    (
        o.metadata.creation_timestamp.as_ref(),
        o.metadata.name.as_deref().unwrap_or_default(),
    )
}

fn keep_oldest<'a, S>(slot: &mut Option<&'a IstioObject<S>>, candidate: &'a IstioObject<S>) {
    if slot.is_none_or(|current| age_key(candidate) < age_key(current)) {
        *slot = Some(candidate);
    }
}

/// A PeerAuthentication mode, or `None` for UNSET/absent (inherit).
fn pa_mode(mtls: Option<&PeerMutualTls>) -> Option<MtlsMode> {
    match mtls?.mode? {
        PaMode::Unset => None,
        PaMode::Disable => Some(MtlsMode::Disable),
        PaMode::Permissive => Some(MtlsMode::Permissive),
        PaMode::Strict => Some(MtlsMode::Strict),
    }
}

/// A legacy policy's peer mode: the first `peers[]` entry asking for mTLS; none (or only peer JWT) means no mTLS.
fn legacy_mode(spec: &PolicySpec) -> MtlsMode {
    match spec.peers.iter().find_map(|p| p.mtls_mode()) {
        Some(MutualTlsMode::Strict) => MtlsMode::Strict,
        Some(MutualTlsMode::Permissive) => MtlsMode::Permissive,
        None => MtlsMode::Disable,
    }
}

/// The legacy MeshPolicy mode, the namespace's `default` Policy mode, and the namespace's targeted Policies
/// (oldest first).
fn legacy_policies<'a>(
    snapshot: &'a Snapshot,
    namespace: &'a str,
) -> (
    Option<MtlsMode>,
    Option<MtlsMode>,
    Vec<&'a IstioObject<PolicySpec>>,
) {
    let mut mesh = None;
    for o in snapshot.configs(Kind::MeshPolicy) {
        if let Object::MeshPolicy(p) = o
            && p.metadata.name.as_deref() == Some(LEGACY_DEFAULT_POLICY)
        {
            keep_oldest(&mut mesh, p.as_ref());
        }
    }
    let mut ns = None;
    let mut targeted: Vec<&IstioObject<PolicySpec>> = Vec::new();
    for o in snapshot.configs_in(Kind::Policy, namespace) {
        let Object::Policy(p) = o else { continue };
        if !p.spec.targets.is_empty() {
            targeted.push(p.as_ref());
        } else if p.metadata.name.as_deref() == Some(LEGACY_DEFAULT_POLICY) {
            ns = Some(p.as_ref());
        } else {
            // Istio 1.3 only honoured target-less policies named `default`.
            tracing::debug!(
                "Policy {namespace}/{}: no targets and not named default; ignored",
                p.metadata.name.as_deref().unwrap_or_default()
            );
        }
    }
    targeted.sort_by(|a, b| age_key(a).cmp(&age_key(b)));
    (
        mesh.map(|p| legacy_mode(&p.spec)),
        ns.map(|p| legacy_mode(&p.spec)),
        targeted,
    )
}

/// The workload ports legacy targeted Policies speak for: each target names a Service (short name, the policy's
/// namespace) selecting the workload and optionally some of its ports (number or name); the targeted service
/// ports' target ports get the policy's mode. The oldest policy wins a port.
fn legacy_ports(
    snapshot: &Snapshot,
    workload: &Workload,
    policies: &[&IstioObject<PolicySpec>],
) -> BTreeMap<u16, MtlsMode> {
    let mut out = BTreeMap::new();
    for policy in policies {
        let mode = legacy_mode(&policy.spec);
        for target in &policy.spec.targets {
            let Some(name) = target.name.as_deref() else {
                continue;
            };
            for svc in snapshot.registry.services() {
                if svc.name != name
                    || svc.namespace != workload.namespace
                    || svc.selector.is_empty()
                    || !workload.matches(&svc.selector)
                {
                    continue;
                }
                for sp in &svc.ports {
                    let selected = target.ports.is_empty()
                        || target.ports.iter().any(|sel| {
                            sel.number == Some(u32::from(sp.port))
                                || (sel.name.is_some() && sel.name.as_deref() == Some(&sp.name))
                        });
                    if !selected {
                        continue;
                    }
                    let port = match &sp.target_port {
                        TargetPort::Number(0) => sp.port,
                        TargetPort::Number(n) => *n,
                        TargetPort::Named(n) => match workload.container_ports.get(n) {
                            Some(p) => *p,
                            None => continue,
                        },
                    };
                    out.entry(port).or_insert(mode);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
