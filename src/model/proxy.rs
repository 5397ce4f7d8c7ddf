//! Proxy scope: who a proxy is (sidecar or gateway, its workload and namespace) and what it may see — the
//! services, VirtualServices, DestinationRules and Gateways that apply to it, after `exportTo`, the Sidecar CRD
//! and the mesh's outbound policy.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::service::Service;
use super::snapshot::{DOMAIN_SUFFIX, Snapshot};
use super::workload::Workload;
use crate::config::istio::networking::{
    DestinationRuleSpec, GatewaySpec, OutboundTrafficMode, SidecarSpec, VirtualServiceSpec,
};
use crate::config::mesh::OutboundMode;
use crate::config::{IstioObject, Kind, Object};

/// Sidecar or gateway (the node id's first field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProxyKind {
    Sidecar,
    Router,
}

/// What the node id (and metadata) say about a proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyMeta {
    pub kind: ProxyKind,
    pub ip: String,
    pub pod: String,
    pub namespace: String,
    /// Labels from node metadata, used when the Pod is not (yet) in the snapshot.
    pub labels: BTreeMap<String, String>,
    /// Whether the proxy proved its identity (TLS xDS with a service-account token) and so can get its
    /// certificate over SDS: only then do its listeners and clusters reference the `default`/`ROOTCA` secrets,
    /// which would otherwise never arrive and keep them from warming.
    pub mtls: bool,
}

/// A VirtualService, DestinationRule, Gateway or Sidecar with its namespace and name.
pub type Istio<S> = Arc<IstioObject<S>>;

/// Everything a generator needs to know about one proxy, computed once per (snapshot, proxy).
#[derive(Debug)]
pub struct ProxyScope<'a> {
    pub snapshot: &'a Snapshot,
    pub meta: ProxyMeta,
    /// The proxy's Pod, when the snapshot has it.
    pub workload: Option<Arc<Workload>>,
    /// The pod's labels (or the node metadata's).
    pub labels: BTreeMap<String, String>,
    /// The Sidecar resource that applies, if any.
    pub sidecar: Option<Istio<SidecarSpec>>,
    /// What happens to traffic for unknown hosts.
    pub outbound_policy: OutboundMode,
    services: Vec<Arc<Service>>,
    /// Hostname → the visible service [`ProxyScope::service`] picks (an index into `services`).
    by_host: HashMap<&'a str, usize>,
}

impl<'a> ProxyScope<'a> {
    /// Computes the scope of one proxy.
    pub fn new(snapshot: &'a Snapshot, meta: ProxyMeta) -> ProxyScope<'a> {
        Self::seeing(snapshot, meta, |_| true)
    }

    /// The scope of a proxy that sees only the services `keep` picks, of those it can see. Keeping every
    /// service of a hostname (all namespaces) gives that hostname the same service as the whole scope does,
    /// so what concerns those services alone (their clusters, their load assignments) comes out the same.
    pub fn seeing(
        snapshot: &'a Snapshot,
        meta: ProxyMeta,
        keep: impl Fn(&Service) -> bool,
    ) -> ProxyScope<'a> {
        let workload = Self::workload_of(snapshot, &meta);
        let labels = Self::labels_of(workload.as_deref(), &meta).clone();
        let sidecar = match meta.kind {
            ProxyKind::Sidecar => find_sidecar(snapshot, &meta.namespace, &labels),
            ProxyKind::Router => None,
        };
        let outbound_policy = sidecar
            .as_ref()
            .and_then(|s| s.spec.outbound_traffic_policy.as_ref())
            .and_then(|p| p.mode)
            .map(|m| match m {
                OutboundTrafficMode::RegistryOnly => OutboundMode::RegistryOnly,
                _ => OutboundMode::AllowAny,
            })
            .unwrap_or(snapshot.mesh.outbound_traffic_policy.mode);
        let mut scope = ProxyScope {
            snapshot,
            meta,
            workload,
            labels,
            sidecar,
            outbound_policy,
            services: Vec::new(),
            by_host: HashMap::new(),
        };
        let visible: Vec<&'a Arc<Service>> = snapshot
            .registry
            .services()
            .iter()
            .filter(|s| keep(s))
            .filter(|s| scope.exported_to_me(&s.export_to, &s.namespace, ExportDefault::Service))
            .filter(|s| scope.egress_allows(&s.namespace, &s.hostname))
            .collect();
        // A host declared in several namespaces: the one in the proxy's own namespace, else the first.
        for (i, s) in visible.iter().enumerate() {
            let own = s.namespace == scope.meta.namespace;
            scope
                .by_host
                .entry(s.hostname.as_str())
                .and_modify(|at| {
                    if own && visible[*at].namespace != scope.meta.namespace {
                        *at = i;
                    }
                })
                .or_insert(i);
        }
        scope.services = visible.into_iter().cloned().collect();
        scope
    }

    /// The proxy's Pod in `snapshot`, by name, else by IP.
    pub fn workload_of(snapshot: &Snapshot, meta: &ProxyMeta) -> Option<Arc<Workload>> {
        snapshot
            .workload(&meta.namespace, &meta.pod)
            .or_else(|| snapshot.workload_by_ip(&meta.ip))
            .cloned()
    }

    /// The labels a proxy's scope has: its Pod's, else the node metadata's.
    pub fn labels_of<'m>(
        workload: Option<&'m Workload>,
        meta: &'m ProxyMeta,
    ) -> &'m BTreeMap<String, String> {
        workload.map(|w| &w.labels).unwrap_or(&meta.labels)
    }

    /// The proxy's namespace.
    pub fn namespace(&self) -> &str {
        &self.meta.namespace
    }

    /// Services this proxy can reach, in registry order. When a host is declared in several namespaces, the one
    /// in the proxy's own namespace wins, then the first.
    pub fn services(&self) -> &[Arc<Service>] {
        &self.services
    }

    /// The visible service for `hostname`, preferring the proxy's namespace.
    pub fn service(&self, hostname: &str) -> Option<&Arc<Service>> {
        self.by_host.get(hostname).map(|&i| &self.services[i])
    }

    /// VirtualServices that apply to this proxy: exported to its namespace, within the Sidecar's egress hosts,
    /// and (for sidecars) bound to the `mesh` gateway; for routers, bound to one of `gateways` (`ns/name`).
    pub fn virtual_services(&self) -> Vec<Istio<VirtualServiceSpec>> {
        self.snapshot
            .configs(Kind::VirtualService)
            .iter()
            .filter_map(|o| match o {
                Object::VirtualService(vs) => Some(vs.clone()),
                _ => None,
            })
            .filter(|vs| {
                let ns = vs.metadata.namespace.as_deref().unwrap_or_default();
                self.exported_to_me(&vs.spec.export_to, ns, ExportDefault::VirtualService)
                    && vs
                        .spec
                        .hosts
                        .iter()
                        .any(|h| self.egress_allows(ns, &resolve_host(h, ns)))
            })
            .collect()
    }

    /// VirtualServices bound to the `mesh` gateway (what sidecars route with).
    pub fn mesh_virtual_services(&self) -> Vec<Istio<VirtualServiceSpec>> {
        self.virtual_services()
            .into_iter()
            .filter(|vs| binds_mesh(&vs.spec.gateways))
            .collect()
    }

    /// VirtualServices bound to the gateway `gateway_ns/gateway_name`.
    pub fn gateway_virtual_services(
        &self,
        gateway_ns: &str,
        gateway_name: &str,
    ) -> Vec<Istio<VirtualServiceSpec>> {
        self.snapshot
            .configs(Kind::VirtualService)
            .iter()
            .filter_map(|o| match o {
                Object::VirtualService(vs) => Some(vs.clone()),
                _ => None,
            })
            .filter(|vs| {
                let ns = vs.metadata.namespace.as_deref().unwrap_or_default();
                vs.spec
                    .gateways
                    .iter()
                    .any(|g| gateway_ref_matches(g, ns, gateway_ns, gateway_name))
            })
            .collect()
    }

    /// Gateways whose selector matches this (router) proxy's labels, in key order.
    pub fn gateways(&self) -> Vec<Istio<GatewaySpec>> {
        if self.meta.kind != ProxyKind::Router {
            return Vec::new();
        }
        self.snapshot
            .configs(Kind::Gateway)
            .iter()
            .filter_map(|o| match o {
                Object::Gateway(g) => Some(g.clone()),
                _ => None,
            })
            .filter(|g| {
                !g.spec.selector.is_empty()
                    && g.spec
                        .selector
                        .iter()
                        .all(|(k, v)| self.labels.get(k) == Some(v))
            })
            .collect()
    }

    /// The ports a gateway listens on for a Gateway server port, as istiod's `resolvePorts`: the target ports of
    /// this proxy's own service instances on that service port (the `istio-ingressgateway` Service maps 80 to
    /// 8080, so a server on 80 is served on 8080), else the server port itself.
    pub fn gateway_ports(&self, server_port: u16) -> Vec<u16> {
        let ip = self
            .workload
            .as_ref()
            .map_or(self.meta.ip.as_str(), |w| w.ip.as_str());
        let registry = &self.snapshot.registry;
        let mut ports: Vec<u16> = registry
            .services()
            .iter()
            .filter(|s| s.ports.iter().any(|p| p.port == server_port))
            .flat_map(|s| registry.endpoints(s, server_port))
            .filter(|e| e.address == ip)
            .map(|e| e.port)
            .collect();
        ports.sort_unstable();
        ports.dedup();
        if ports.is_empty() {
            vec![server_port]
        } else {
            ports
        }
    }

    /// The DestinationRule for `hostname` as istiod picks it: the proxy's namespace first, then the service's
    /// namespace, then the root namespace; within a namespace the most specific host wins (exact, then the
    /// longest wildcard).
    pub fn destination_rule(
        &self,
        hostname: &str,
        service_namespace: &str,
    ) -> Option<Istio<DestinationRuleSpec>> {
        let root = self.snapshot.mesh.root_namespace.as_str();
        for ns in [self.meta.namespace.as_str(), service_namespace, root] {
            let best = self
                .snapshot
                .configs_in(Kind::DestinationRule, ns)
                .filter_map(|o| match o {
                    Object::DestinationRule(dr) => Some(dr.clone()),
                    _ => None,
                })
                .filter(|dr| {
                    // Rules in other namespaces only apply when exported to us.
                    ns == self.meta.namespace
                        || self.exported_to_me(
                            &dr.spec.export_to,
                            ns,
                            ExportDefault::DestinationRule,
                        )
                })
                .filter(|dr| {
                    dr.spec.workload_selector.as_ref().is_none_or(|sel| {
                        ns == self.meta.namespace
                            && sel
                                .match_labels
                                .iter()
                                .all(|(k, v)| self.labels.get(k) == Some(v))
                    })
                })
                .filter_map(|dr| {
                    let host = resolve_host(&dr.spec.host, ns);
                    host_match_rank(&host, hostname).map(|rank| (rank, dr))
                })
                .max_by_key(|(rank, _)| *rank)
                .map(|(_, dr)| dr);
            if best.is_some() {
                return best;
            }
        }
        None
    }

    fn exported_to_me(&self, export_to: &[String], owner_ns: &str, default: ExportDefault) -> bool {
        let mesh = &self.snapshot.mesh;
        let list = if export_to.is_empty() {
            match default {
                ExportDefault::Service => &mesh.default_service_export_to,
                ExportDefault::VirtualService => &mesh.default_virtual_service_export_to,
                ExportDefault::DestinationRule => &mesh.default_destination_rule_export_to,
            }
        } else {
            export_to
        };
        list.iter().any(|e| match e.as_str() {
            "*" => true,
            "." => owner_ns == self.meta.namespace,
            "~" => false,
            ns => ns == self.meta.namespace,
        })
    }

    /// The Sidecar's egress `ns/host` patterns (all listeners), or everything when there is no Sidecar.
    fn egress_allows(&self, owner_ns: &str, hostname: &str) -> bool {
        let Some(sidecar) = &self.sidecar else {
            return true;
        };
        if sidecar.spec.egress.is_empty() {
            return true;
        }
        sidecar
            .spec
            .egress
            .iter()
            .flat_map(|e| e.hosts.iter())
            .any(|pattern| {
                let (ns, host) = pattern.split_once('/').unwrap_or(("*", pattern.as_str()));
                let ns_ok = match ns {
                    "*" => true,
                    "." => owner_ns == self.meta.namespace,
                    "~" => false,
                    other => other == owner_ns,
                };
                ns_ok && host_match_rank(host, hostname).is_some()
            })
    }
}

#[derive(Clone, Copy)]
enum ExportDefault {
    Service,
    VirtualService,
    DestinationRule,
}

/// The Sidecar for a workload: one in its namespace selecting it, else its namespace's selector-less one, else the
/// root namespace's selector-less one.
fn find_sidecar(
    snapshot: &Snapshot,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Option<Istio<SidecarSpec>> {
    let sidecars = |ns: &str| -> Vec<Istio<SidecarSpec>> {
        snapshot
            .configs_in(Kind::Sidecar, ns)
            .filter_map(|o| match o {
                Object::Sidecar(s) => Some(s.clone()),
                _ => None,
            })
            .collect()
    };
    let local = sidecars(namespace);
    let selecting = local.iter().find(|s| {
        s.spec.workload_selector.as_ref().is_some_and(|sel| {
            !sel.labels.is_empty() && sel.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
        })
    });
    if let Some(s) = selecting {
        return Some(s.clone());
    }
    let unselected = |list: &[Istio<SidecarSpec>]| {
        list.iter()
            .find(|s| s.spec.workload_selector.is_none())
            .cloned()
    };
    unselected(&local).or_else(|| unselected(&sidecars(&snapshot.mesh.root_namespace)))
}

/// Whether a VirtualService's `gateways` list includes the sidecars' `mesh` gateway (an empty list does).
pub fn binds_mesh(gateways: &[String]) -> bool {
    gateways.is_empty() || gateways.iter().any(|g| g == "mesh")
}

/// Whether a VirtualService `gateways` entry (written in namespace `vs_ns`) names `gw_ns/gw_name`. Short names
/// mean the VirtualService's own namespace.
pub fn gateway_ref_matches(reference: &str, vs_ns: &str, gw_ns: &str, gw_name: &str) -> bool {
    match reference.split_once('/') {
        Some((ns, name)) => ns == gw_ns && name == gw_name,
        // The book (Istio 1.3) also wrote `name.namespace.svc.cluster.local`-style references.
        None => match reference.split_once('.') {
            Some((name, ns_rest)) => name == gw_name && ns_rest.split('.').next() == Some(gw_ns),
            None => reference == gw_name && vs_ns == gw_ns,
        },
    }
}

/// Resolves a host as written in config in namespace `ns`: short names (no dot) become
/// `<name>.<ns>.svc.cluster.local`; wildcards and dotted names are kept.
pub fn resolve_host(host: &str, ns: &str) -> String {
    if host.contains('.') || host.contains('*') {
        host.to_string()
    } else {
        format!("{host}.{ns}.svc.{DOMAIN_SUFFIX}")
    }
}

/// How well `pattern` (exact or `*.suffix` or `*`) matches `host`: `None` no match, higher is more specific.
pub fn host_match_rank(pattern: &str, host: &str) -> Option<usize> {
    if pattern == host {
        return Some(usize::MAX);
    }
    if pattern == "*" {
        return Some(0);
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        // `*.example.com` matches `a.example.com` (and `*.example.com` itself, handled above).
        if let Some(h) = host.strip_prefix('*') {
            // Wildcard host vs wildcard pattern: the pattern must be at least as broad.
            return h.ends_with(suffix).then_some(suffix.len());
        }
        return host.ends_with(suffix).then_some(suffix.len());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_matching() {
        assert_eq!(host_match_rank("a.b", "a.b"), Some(usize::MAX));
        assert!(host_match_rank("*.b", "a.b").is_some());
        assert!(
            host_match_rank("*.local", "x.ns.svc.cluster.local").unwrap()
                < host_match_rank("*.cluster.local", "x.ns.svc.cluster.local").unwrap()
        );
        assert_eq!(host_match_rank("*.b", "b"), None);
        assert_eq!(host_match_rank("a.b", "c.b"), None);
        assert!(host_match_rank("*", "anything").is_some());
    }

    #[test]
    fn gateway_references() {
        assert!(gateway_ref_matches(
            "fruits-api-gateway",
            "shop",
            "shop",
            "fruits-api-gateway"
        ));
        assert!(!gateway_ref_matches(
            "fruits-api-gateway",
            "other",
            "shop",
            "fruits-api-gateway"
        ));
        assert!(gateway_ref_matches("shop/gw", "other", "shop", "gw"));
        assert!(gateway_ref_matches(
            "gw.shop.svc.cluster.local",
            "other",
            "shop",
            "gw"
        ));
        assert!(binds_mesh(&[]));
        assert!(!binds_mesh(&["gw".into()]));
    }

    #[test]
    fn short_hosts_resolve_in_the_namespace() {
        assert_eq!(
            resolve_host("reviews", "shop"),
            "reviews.shop.svc.cluster.local"
        );
        assert_eq!(resolve_host("*.local", "shop"), "*.local");
        assert_eq!(resolve_host("a.example.com", "shop"), "a.example.com");
    }
}
