//! Which HTTP rules apply to which host: VirtualServices grouped by host, delegates expanded, conflicts reported.
//!
//! Merging (istiod's gateway semantics, applied to sidecars too so one host can be split across files):
//! VirtualServices are ordered by creation time, then `namespace/name`; for each host they declare (resolved in
//! their namespace), their HTTP rules are concatenated in that order. A rule placed after an earlier
//! VirtualService's catch-all rule can never match: that is a conflict, the earlier one wins (the later rules are
//! kept out of the routes and reported). When several host patterns match one service (`reviews` and
//! `*.svc.cluster.local`), the most specific pattern's rules are used, as Envoy's own domain matching would; the
//! others are reported as conflicts for that service.

use std::collections::BTreeMap;

use crate::config::istio::common::StringMatch;
use crate::config::istio::networking::{HttpMatchRequest, HttpRoute, VirtualServiceSpec};
use crate::config::{Kind, Object};
use crate::model::proxy::{Istio, ProxyScope, host_match_rank, resolve_host};
use crate::model::snapshot::Snapshot;

/// One HTTP rule with where it came from.
#[derive(Debug, Clone)]
pub struct Rule {
    /// `namespace/name` of the VirtualService that wrote the rule (the delegate's, for delegated rules).
    pub origin: String,
    /// The namespace short destination hosts resolve in.
    pub namespace: String,
    pub http: HttpRoute,
}

/// The rules for one host pattern, merged from every VirtualService declaring it.
#[derive(Debug, Clone)]
pub struct HostRules {
    /// The host as resolved (`reviews.shop.svc.cluster.local`, `*.example.com`, `fruits.example.io`).
    pub host: String,
    pub rules: Vec<Rule>,
    /// `namespace/name` of the VirtualServices that contributed, in merge order.
    pub sources: Vec<String>,
}

/// Two VirtualServices that cannot both apply: `kept` wins, `dropped`'s rules for `host` are not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub host: String,
    pub kept: String,
    pub dropped: String,
    pub reason: String,
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "VirtualService {}: host {}: {} (VirtualService {} wins)",
            self.dropped, self.host, self.reason, self.kept
        )
    }
}

/// `namespace/name` of a config object.
pub fn key_of<S>(o: &Istio<S>) -> String {
    format!(
        "{}/{}",
        o.metadata.namespace.as_deref().unwrap_or_default(),
        o.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Groups the HTTP rules of `vss` by host, expanding delegates. Conflicts are returned, not logged.
pub fn group_by_host(
    snapshot: &Snapshot,
    vss: &[Istio<VirtualServiceSpec>],
) -> (Vec<HostRules>, Vec<Conflict>) {
    let mut ordered: Vec<&Istio<VirtualServiceSpec>> = vss.iter().collect();
    ordered.sort_by(|a, b| {
        let ta = a.metadata.creation_timestamp.as_ref().map(|t| t.0);
        let tb = b.metadata.creation_timestamp.as_ref().map(|t| t.0);
        // Objects without a timestamp (file source) sort after timestamped ones, by key.
        (ta.is_none(), ta, key_of(a)).cmp(&(tb.is_none(), tb, key_of(b)))
    });
    let mut groups: Vec<HostRules> = Vec::new();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    let mut conflicts = Vec::new();
    for vs in ordered {
        let ns = vs.metadata.namespace.as_deref().unwrap_or_default();
        let origin = key_of(vs);
        let rules = expand(snapshot, vs, ns, &origin);
        for h in &vs.spec.hosts {
            let host = resolve_host(h, ns);
            let i = *index.entry(host.clone()).or_insert_with(|| {
                groups.push(HostRules {
                    host: host.clone(),
                    rules: Vec::new(),
                    sources: Vec::new(),
                });
                groups.len() - 1
            });
            let group = &mut groups[i];
            if group.sources.contains(&origin) {
                continue; // the same host listed twice in one VirtualService
            }
            if let Some(catch_all) = group.rules.iter().find(|r| is_catch_all(&r.http)) {
                if !rules.is_empty() {
                    conflicts.push(Conflict {
                        host: host.clone(),
                        kept: catch_all.origin.clone(),
                        dropped: origin.clone(),
                        reason: "rules follow a catch-all rule and can never match".into(),
                    });
                }
                continue;
            }
            group.sources.push(origin.clone());
            group.rules.extend(rules.iter().cloned());
        }
    }
    (groups, conflicts)
}

/// The group whose host pattern matches `hostname` most specifically, and conflicts with the other matching groups.
pub fn best_for<'g>(
    groups: &'g [HostRules],
    hostname: &str,
) -> (Option<&'g HostRules>, Vec<Conflict>) {
    let mut matching: Vec<(usize, &HostRules)> = groups
        .iter()
        .filter_map(|g| host_match_rank(&g.host, hostname).map(|r| (r, g)))
        .collect();
    // Stable: equal ranks keep merge order.
    matching.sort_by_key(|m| std::cmp::Reverse(m.0));
    let Some((_, best)) = matching.first().copied() else {
        return (None, Vec::new());
    };
    let conflicts = matching[1..]
        .iter()
        .map(|(_, g)| Conflict {
            host: hostname.to_string(),
            kept: best.sources.join(","),
            dropped: g.sources.join(","),
            reason: format!("host {} is less specific than {}", g.host, best.host),
        })
        .collect();
    (Some(best), conflicts)
}

/// Every conflict between the VirtualServices a sidecar sees (for debugging and the CLI).
pub fn virtual_service_conflicts(scope: &ProxyScope<'_>) -> Vec<Conflict> {
    let vss = scope.mesh_virtual_services();
    let (groups, mut conflicts) = group_by_host(scope.snapshot, &vss);
    for svc in scope.services() {
        conflicts.extend(best_for(&groups, &svc.hostname).1);
    }
    conflicts.sort_by(|a, b| (&a.host, &a.dropped).cmp(&(&b.host, &b.dropped)));
    conflicts.dedup();
    conflicts
}

/// A rule without conditions (or only `uri: prefix /`): everything after it is unreachable.
pub fn is_catch_all(rule: &HttpRoute) -> bool {
    rule.r#match.is_empty() || rule.r#match.iter().any(is_catch_all_match)
}

fn is_catch_all_match(m: &HttpMatchRequest) -> bool {
    let uri_all = match &m.uri {
        None => true,
        Some(u) => {
            u.prefix.as_deref() == Some("/") || matches!(u.regex.as_deref(), Some("*") | Some(".*"))
        }
    };
    let plain = HttpMatchRequest {
        uri: None,
        name: None,
        ignore_uri_case: None,
        stat_prefix: None,
        ..m.clone()
    };
    uri_all && plain == HttpMatchRequest::default()
}

/// The VirtualService's HTTP rules with delegate rules pulled in (one level, as istiod).
fn expand(
    snapshot: &Snapshot,
    vs: &Istio<VirtualServiceSpec>,
    ns: &str,
    origin: &str,
) -> Vec<Rule> {
    let mut out = Vec::new();
    for rule in &vs.spec.http {
        let Some(delegate) = &rule.delegate else {
            out.push(Rule {
                origin: origin.to_string(),
                namespace: ns.to_string(),
                http: rule.clone(),
            });
            continue;
        };
        let d_name = delegate.name.as_deref().unwrap_or_default();
        let d_ns = delegate.namespace.as_deref().unwrap_or(ns);
        let found = snapshot
            .configs_in(Kind::VirtualService, d_ns)
            .find_map(|o| match o {
                Object::VirtualService(d) if d.metadata.name.as_deref() == Some(d_name) => {
                    Some(d.clone())
                }
                _ => None,
            });
        let Some(d) = found else {
            tracing::warn!(
                "VirtualService {origin}: delegate {d_ns}/{d_name} not found; rule skipped"
            );
            continue;
        };
        if !exported_to(&d.spec.export_to, snapshot, d_ns, ns) {
            tracing::warn!(
                "VirtualService {origin}: delegate {d_ns}/{d_name} is not exported to namespace {ns}; rule skipped"
            );
            continue;
        }
        if !d.spec.hosts.is_empty() {
            tracing::warn!(
                "VirtualService {origin}: delegate {d_ns}/{d_name} has hosts, which delegates must not; rule skipped"
            );
            continue;
        }
        for child in &d.spec.http {
            if child.delegate.is_some() {
                tracing::warn!(
                    "VirtualService {d_ns}/{d_name}: nested delegation is not supported; rule skipped"
                );
                continue;
            }
            let Some(matches) = merge_matches(&rule.r#match, &child.r#match) else {
                tracing::warn!(
                    "VirtualService {d_ns}/{d_name}: rule {:?} conflicts with every match of its root {origin}; skipped",
                    child.name.as_deref().unwrap_or_default()
                );
                continue;
            };
            let mut http = child.clone();
            http.r#match = matches;
            inherit(&mut http, rule);
            out.push(Rule {
                origin: format!("{d_ns}/{d_name}"),
                namespace: d_ns.to_string(),
                http,
            });
        }
    }
    out
}

/// Whether a delegate in `own_ns` with `export_to` (else the mesh's `defaultVirtualServiceExportTo`) may be used
/// by a root VirtualService in `root_ns`, as istiod checks before merging.
fn exported_to(export_to: &[String], snapshot: &Snapshot, own_ns: &str, root_ns: &str) -> bool {
    let list = if export_to.is_empty() {
        &snapshot.mesh.default_virtual_service_export_to
    } else {
        export_to
    };
    list.is_empty()
        || list.iter().any(|e| match e.as_str() {
            "*" => true,
            "." => own_ns == root_ns,
            "~" => false,
            other => other == root_ns,
        })
}

/// Root × delegate matches, as istiod's `mergeHTTPMatchRequests`: every delegate match must fit at least one root
/// match (else the whole delegate rule conflicts: `None`), and yields one merged match per root match it fits. An
/// empty list means "match everything".
pub fn merge_matches(
    root: &[HttpMatchRequest],
    child: &[HttpMatchRequest],
) -> Option<Vec<HttpMatchRequest>> {
    if root.is_empty() {
        return Some(child.to_vec());
    }
    if child.is_empty() {
        return Some(root.to_vec());
    }
    let mut merged = Vec::new();
    for c in child {
        let fits: Vec<HttpMatchRequest> = root
            .iter()
            .filter(|r| !conflicts(r, c))
            .map(|r| merge_match(r, c))
            .collect();
        if fits.is_empty() {
            return None;
        }
        merged.extend(fits);
    }
    Some(merged)
}

/// Whether a delegate match cannot narrow a root match (istiod's `hasConflict`).
fn conflicts(root: &HttpMatchRequest, leaf: &HttpMatchRequest) -> bool {
    let pairs = [
        (&root.uri, &leaf.uri),
        (&root.scheme, &leaf.scheme),
        (&root.method, &leaf.method),
        (&root.authority, &leaf.authority),
    ];
    if pairs
        .iter()
        .any(|(r, l)| string_match_conflict(r.as_ref(), l.as_ref()))
    {
        return true;
    }
    let map_conflict = |r: &BTreeMap<String, StringMatch>, l: &BTreeMap<String, StringMatch>| {
        l.iter()
            .any(|(k, lv)| string_match_conflict(r.get(k), Some(lv)))
    };
    if map_conflict(&root.headers, &leaf.headers)
        || map_conflict(&root.without_headers, &leaf.without_headers)
        || map_conflict(&root.query_params, &leaf.query_params)
    {
        return true;
    }
    if root.ignore_uri_case.unwrap_or(false) != leaf.ignore_uri_case.unwrap_or(false) {
        return true;
    }
    if let (Some(r), Some(l)) = (root.port, leaf.port)
        && r > 0
        && l > 0
        && r != l
    {
        return true;
    }
    // A root limited to a source namespace only admits delegates limited to the same one.
    if let Some(r) = root.source_namespace.as_deref().filter(|n| !n.is_empty())
        && leaf.source_namespace.as_deref() != Some(r)
    {
        return true;
    }
    if leaf
        .source_labels
        .iter()
        .any(|(k, v)| root.source_labels.get(k).is_some_and(|rv| rv != v))
    {
        return true;
    }
    // The root's gateways must be a superset of the delegate's.
    !root.gateways.is_empty()
        && !leaf.gateways.is_empty()
        && leaf.gateways.iter().any(|g| !root.gateways.contains(g))
}

/// Whether a delegate string match is not within the root's (istiod's `stringMatchConflict`): regexes only combine
/// with an absent match, an exact root admits the same exact, a prefix root admits longer prefixes and exacts
/// under it.
fn string_match_conflict(root: Option<&StringMatch>, leaf: Option<&StringMatch>) -> bool {
    let (Some(root), Some(leaf)) = (root, leaf) else {
        return false;
    };
    let set = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
    let any = |m: &StringMatch| set(&m.exact) || set(&m.prefix) || set(&m.regex);
    if set(&root.regex) || set(&leaf.regex) {
        return any(root) && any(leaf);
    }
    if let Some(exact) = root.exact.as_deref().filter(|e| !e.is_empty()) {
        return set(&leaf.prefix) || leaf.exact.as_deref() != Some(exact);
    }
    if let Some(prefix) = root.prefix.as_deref().filter(|p| !p.is_empty()) {
        if let Some(lp) = leaf.prefix.as_deref().filter(|p| !p.is_empty()) {
            return !lp.starts_with(prefix);
        }
        if let Some(le) = leaf.exact.as_deref().filter(|e| !e.is_empty()) {
            return !le.starts_with(prefix);
        }
    }
    true
}

/// istiod's `mergeHTTPMatchRequest`: the delegate's fields win, the root fills what it leaves unset, maps merge
/// (delegate entries over the root's), names chain `root-delegate`.
fn merge_match(root: &HttpMatchRequest, child: &HttpMatchRequest) -> HttpMatchRequest {
    let mut out = child.clone();
    out.name = chain_names(root.name.as_deref(), child.name.as_deref());
    for (o, r) in [
        (&mut out.uri, &root.uri),
        (&mut out.scheme, &root.scheme),
        (&mut out.method, &root.method),
        (&mut out.authority, &root.authority),
    ] {
        if o.is_none() {
            o.clone_from(r);
        }
    }
    fn merged<V: Clone>(r: &BTreeMap<String, V>, c: &BTreeMap<String, V>) -> BTreeMap<String, V> {
        let mut out = r.clone();
        out.extend(c.iter().map(|(k, v)| (k.clone(), v.clone())));
        out
    }
    out.headers = merged(&root.headers, &child.headers);
    out.without_headers = merged(&root.without_headers, &child.without_headers);
    out.query_params = merged(&root.query_params, &child.query_params);
    out.source_labels = merged(&root.source_labels, &child.source_labels);
    if out.port.unwrap_or(0) == 0 {
        out.port = root.port;
    }
    if out
        .source_namespace
        .as_deref()
        .unwrap_or_default()
        .is_empty()
    {
        out.source_namespace.clone_from(&root.source_namespace);
    }
    if out.gateways.is_empty() {
        out.gateways.clone_from(&root.gateways);
    }
    if out.stat_prefix.as_deref().unwrap_or_default().is_empty() {
        out.stat_prefix.clone_from(&root.stat_prefix);
    }
    out
}

/// `root-child`, or whichever is set.
fn chain_names(root: Option<&str>, child: Option<&str>) -> Option<String> {
    match (
        root.filter(|n| !n.is_empty()),
        child.filter(|n| !n.is_empty()),
    ) {
        (Some(r), Some(c)) => Some(format!("{r}-{c}")),
        (r, c) => c.or(r).map(str::to_owned),
    }
}

/// istiod's `mergeHTTPRoute`: what the delegate's rule leaves unset, the root's rule provides (rewrite, timeout,
/// retries, fault, mirrors, CORS, header operations), and names chain `root-delegate`.
fn inherit(child: &mut HttpRoute, root: &HttpRoute) {
    child.name = chain_names(root.name.as_deref(), child.name.as_deref());
    fn fill<T: Clone>(c: &mut Option<T>, r: &Option<T>) {
        if c.is_none() {
            c.clone_from(r);
        }
    }
    fill(&mut child.rewrite, &root.rewrite);
    fill(&mut child.direct_response, &root.direct_response);
    fill(&mut child.timeout, &root.timeout);
    fill(&mut child.retries, &root.retries);
    fill(&mut child.fault, &root.fault);
    fill(&mut child.mirror, &root.mirror);
    fill(&mut child.mirror_percent, &root.mirror_percent);
    fill(&mut child.mirror_percent_snake, &root.mirror_percent_snake);
    fill(&mut child.mirror_percentage, &root.mirror_percentage);
    fill(&mut child.cors_policy, &root.cors_policy);
    fill(&mut child.headers, &root.headers);
    if child.mirrors.is_empty() {
        child.mirrors.clone_from(&root.mirrors);
    }
}
