//! Per-proxy sync state: `/debug/syncz` (istiod's `SyncStatus`, read by `istioctl proxy-status` and
//! `rudder proxy-status`), `/debug/adsz` (connections and watches), `/debug/nackz` (every NACK per resource with
//! the Istio objects behind it) and `/debug/config_status` (which proxies a config object affects and which of
//! them ACKed it). The response types are shared with the CLI, which decodes them.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::protojson;
use super::time::rfc3339;
use crate::config::store::Store;
use crate::config::{ConfigError, Kind, ObjectKey, Severity};
use crate::envoy::Generator;
use crate::envoy::generator::proxy_meta;
use crate::model::Snapshot;
use crate::xds::{ConnectionStatus, Protocol, SentResource, TypeStatus, XdsResource, type_url};

/// The types a proxy is synced on, with istiod's short names.
pub const TYPES: [(&str, &str); 5] = [
    ("cds", type_url::CLUSTER),
    ("eds", type_url::ENDPOINT),
    ("lds", type_url::LISTENER),
    ("rds", type_url::ROUTE),
    ("sds", type_url::SECRET),
];

/// istiod's `SyncStatus` (nonces sent and ACKed per type), plus rudder's NACK texts.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SyncStatus {
    /// Always `Kubernetes` (single cluster).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster_id: String,
    /// `<pod>.<namespace>`.
    #[serde(rename = "proxy", default)]
    pub proxy_id: String,
    /// `sidecar` or `router`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub proxy_type: String,
    /// The Envoy node id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_id: String,
    /// rudder's version (istiod puts its own here).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub istio_version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster_sent: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster_acked: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub listener_sent: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub listener_acked: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub route_sent: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub route_acked: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub endpoint_sent: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub endpoint_acked: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub secret_sent: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub secret_acked: String,
    /// rudder: Envoy's error text of the last NACK per short type (`cds`, …), while not fixed by an ACK.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub nacks: BTreeMap<String, String>,
}

/// The state of one type as `proxy-status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeSync {
    /// Nothing sent yet.
    NotSent,
    /// The last response was ACKed.
    Synced,
    /// The last response was NACKed.
    Nacked,
    /// Sent, not (yet) ACKed.
    Stale,
}

impl TypeSync {
    /// The word `proxy-status` prints (istioctl's vocabulary, plus NACKED).
    pub fn as_str(self) -> &'static str {
        match self {
            TypeSync::NotSent => "NOT SENT",
            TypeSync::Synced => "SYNCED",
            TypeSync::Nacked => "NACKED",
            TypeSync::Stale => "STALE",
        }
    }
}

impl SyncStatus {
    /// Nonces (sent, acked) of a short type.
    pub fn nonces(&self, short: &str) -> (&str, &str) {
        match short {
            "cds" => (&self.cluster_sent, &self.cluster_acked),
            "eds" => (&self.endpoint_sent, &self.endpoint_acked),
            "lds" => (&self.listener_sent, &self.listener_acked),
            "rds" => (&self.route_sent, &self.route_acked),
            "sds" => (&self.secret_sent, &self.secret_acked),
            _ => ("", ""),
        }
    }

    /// istioctl's rule (NOT SENT / SYNCED / STALE), with NACKED when Envoy rejected the last response.
    pub fn state(&self, short: &str) -> TypeSync {
        let (sent, acked) = self.nonces(short);
        if self.nacks.contains_key(short) {
            TypeSync::Nacked
        } else if sent.is_empty() {
            TypeSync::NotSent
        } else if sent == acked {
            TypeSync::Synced
        } else {
            TypeSync::Stale
        }
    }
}

/// One status per connected proxy (its newest stream), ordered by proxy.
pub fn syncz(conns: &[ConnectionStatus]) -> Vec<SyncStatus> {
    latest_per_proxy(conns)
        .into_iter()
        .map(|c| {
            let mut s = SyncStatus {
                cluster_id: "Kubernetes".to_owned(),
                proxy_id: c.proxy.id.pod_key(),
                proxy_type: c.proxy.id.proxy_type.as_str().to_owned(),
                node_id: c.proxy.id.to_string(),
                istio_version: format!("rudder-{}", env!("CARGO_PKG_VERSION")),
                ..Default::default()
            };
            for (short, url) in TYPES {
                let Some(t) = c.types.get(url) else { continue };
                let sent = t.nonce_sent.clone().unwrap_or_default();
                let acked = t.acked_nonce.clone().unwrap_or_default();
                match short {
                    "cds" => (s.cluster_sent, s.cluster_acked) = (sent, acked),
                    "eds" => (s.endpoint_sent, s.endpoint_acked) = (sent, acked),
                    "lds" => (s.listener_sent, s.listener_acked) = (sent, acked),
                    "rds" => (s.route_sent, s.route_acked) = (sent, acked),
                    _ => (s.secret_sent, s.secret_acked) = (sent, acked),
                }
                if let Some(n) = &t.last_nack {
                    s.nacks.insert(short.to_owned(), n.message.clone());
                }
            }
            s
        })
        .collect()
}

/// The newest stream of each proxy (a reconnecting proxy briefly has two), ordered by `<pod>.<ns>`.
pub fn latest_per_proxy(conns: &[ConnectionStatus]) -> Vec<ConnectionStatus> {
    let mut by: BTreeMap<String, &ConnectionStatus> = BTreeMap::new();
    for c in conns {
        let key = c.proxy.id.pod_key();
        if by.get(&key).is_none_or(|o| o.conn_id < c.conn_id) {
            by.insert(key, c);
        }
    }
    by.into_values().cloned().collect()
}

/// The connection of `proxy`, given as `<pod>.<ns>` or a full node id.
pub fn find_connection(conns: &[ConnectionStatus], proxy: &str) -> Option<ConnectionStatus> {
    latest_per_proxy(conns)
        .into_iter()
        .find(|c| c.proxy.id.pod_key() == proxy || c.proxy.id.to_string() == proxy)
}

/// `<pod>.<ns>` of every connected proxy, for "unknown proxy" errors.
pub fn known_proxies(conns: &[ConnectionStatus]) -> Vec<String> {
    latest_per_proxy(conns)
        .iter()
        .map(|c| c.proxy.id.pod_key())
        .collect()
}

/// istiod's `/debug/adsz`: every stream with its node metadata and watched names.
pub fn adsz(conns: &[ConnectionStatus]) -> Value {
    let clients: Vec<Value> = conns
        .iter()
        .map(|c| {
            let watches: BTreeMap<&str, Vec<String>> = c
                .types
                .iter()
                .map(|(url, t)| {
                    let mut names: Vec<String> = t.names.iter().cloned().collect();
                    if t.wildcard {
                        names.insert(0, "*".to_owned());
                    }
                    (url.as_str(), names)
                })
                .collect();
            let types: BTreeMap<&str, Value> = c
                .types
                .iter()
                .map(|(url, t)| (type_url::short(url), type_json(t)))
                .collect();
            serde_json::json!({
                "connectionId": format!("{}-{}", c.proxy.id, c.conn_id),
                "proxy": c.proxy.id.pod_key(),
                "node_id": c.proxy.id.to_string(),
                "cluster": c.proxy.cluster,
                "connectedAt": rfc3339(c.connected_at),
                "protocol": match c.protocol { Protocol::Sotw => "sotw", Protocol::Delta => "delta" },
                "generation": c.generation,
                "metadata": c.proxy.metadata.as_ref().map(struct_json).unwrap_or(Value::Null),
                "watches": watches,
                "types": types,
            })
        })
        .collect();
    serde_json::json!({"totalClients": conns.len(), "clients": clients})
}

fn type_json(t: &TypeStatus) -> Value {
    serde_json::json!({
        "nonce_sent": t.nonce_sent,
        "version_sent": t.version_sent,
        "acked_nonce": t.acked_nonce,
        "acked_version": t.acked_version,
        "responses": t.responses,
        "resources": t.sent.len(),
        "nack": t.last_nack.as_ref().map(|n| n.message.clone()),
    })
}

/// A `google.protobuf.Struct` (node metadata) as plain JSON.
pub fn struct_json(s: &envoy_types::pb::google::protobuf::Struct) -> Value {
    use envoy_types::pb::google::protobuf::value::Kind as K;
    fn val(v: &envoy_types::pb::google::protobuf::Value) -> Value {
        match &v.kind {
            Some(K::NullValue(_)) | None => Value::Null,
            Some(K::NumberValue(n)) => serde_json::json!(n),
            Some(K::StringValue(s)) => Value::String(s.clone()),
            Some(K::BoolValue(b)) => Value::Bool(*b),
            Some(K::StructValue(s)) => struct_json(s),
            Some(K::ListValue(l)) => Value::Array(l.values.iter().map(val).collect()),
        }
    }
    Value::Object(s.fields.iter().map(|(k, v)| (k.clone(), val(v))).collect())
}

/// `/debug/nackz`: NACKs per proxy and resource, plus the config rudder itself rejected.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Nackz {
    /// Proxies whose last response of some type was rejected.
    pub proxies: Vec<ProxyNacks>,
    /// Config objects refused by validation (`Kind ns/name: path: reason`); they never reach a proxy.
    pub rejected_config: Vec<String>,
}

/// The NACKs of one proxy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProxyNacks {
    /// `<pod>.<namespace>`.
    pub proxy: String,
    /// One per rejected type.
    pub nacks: Vec<NackInfo>,
}

/// One NACK with the resources it concerns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NackInfo {
    /// Short type (`cds`, …).
    #[serde(rename = "type")]
    pub type_short: String,
    /// Full type URL.
    pub type_url: String,
    /// Nonce and version of the rejected response.
    pub nonce: String,
    pub version: String,
    /// Envoy's `error_detail`.
    pub code: i32,
    pub message: String,
    /// When it arrived (RFC 3339).
    pub at: String,
    /// The resources Envoy's message names (all of the response when it names none).
    pub resources: Vec<NackedResource>,
}

/// A resource of a rejected response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NackedResource {
    pub name: String,
    /// The Istio objects that produced it (`DestinationRule shop/db`), from `filter_metadata.istio.config`.
    pub config: Vec<String>,
}

/// Builds `/debug/nackz`.
pub fn nackz(conns: &[ConnectionStatus], rejected: &[ConfigError]) -> Nackz {
    let mut proxies = Vec::new();
    for c in latest_per_proxy(conns) {
        let mut nacks = Vec::new();
        for (url, t) in &c.types {
            let Some(n) = &t.last_nack else { continue };
            // Envoy names the offending resources in its text ("Error adding/updating cluster(s) X: …"); when it
            // names none, every resource of the response is a suspect.
            let named: Vec<&String> = n
                .names
                .iter()
                .filter(|name| n.message.contains(name.as_str()))
                .collect();
            let suspects: Vec<&String> = if named.is_empty() {
                n.names.iter().collect()
            } else {
                named
            };
            let resources = suspects
                .into_iter()
                .map(|name| NackedResource {
                    name: name.clone(),
                    config: match t.sent.get(name) {
                        Some(SentResource::Sent(r)) => resource_refs(&r),
                        _ => Vec::new(),
                    },
                })
                .collect();
            nacks.push(NackInfo {
                type_short: type_url::short(url).to_owned(),
                type_url: url.clone(),
                nonce: n.nonce.clone(),
                version: n.version.clone(),
                code: n.code,
                message: n.message.clone(),
                at: rfc3339(n.at),
                resources,
            });
        }
        if !nacks.is_empty() {
            proxies.push(ProxyNacks {
                proxy: c.proxy.id.pod_key(),
                nacks,
            });
        }
    }
    Nackz {
        proxies,
        rejected_config: rejected
            .iter()
            .filter(|p| p.severity == Severity::Error)
            .map(ToString::to_string)
            .collect(),
    }
}

/// The Istio objects a sent resource points back to.
fn resource_refs(r: &XdsResource) -> Vec<String> {
    match protojson::to_json(&r.type_url, &r.bytes) {
        Ok(v) => protojson::istio_config_refs(&v)
            .iter()
            .map(|r| protojson::describe_ref(r))
            .collect(),
        Err(e) => {
            tracing::warn!(resource = %r.name, error = %e, "cannot decode sent resource");
            Vec::new()
        }
    }
}

/// `/debug/config_status`: for one config object, the proxies whose config it changes and whether each has
/// ACKed a version containing it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConfigStatus {
    /// `Kind ns/name`.
    pub object: String,
    /// Every affected proxy has ACKed the resources the object shapes.
    pub synced: bool,
    /// The affected proxies.
    pub proxies: Vec<ProxyConfigStatus>,
}

/// One affected proxy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProxyConfigStatus {
    /// `<pod>.<namespace>`.
    pub proxy: String,
    /// All its affected resources are ACKed as they are now.
    pub acked: bool,
    /// Resources the object shapes, with their state (`ACKED`, `PENDING`, `NACKED`).
    pub resources: Vec<ResourceState>,
    /// Envoy's text when a type carrying the object was NACKed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nack: Option<String>,
}

/// An affected resource.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResourceState {
    #[serde(rename = "type")]
    pub type_short: String,
    pub name: String,
    pub state: String,
}

/// Computes `/debug/config_status` for `kind ns/name`: the object's effect is what changes in each proxy's
/// generated resources when it is left out of the snapshot. Comparing rendered JSON (not bytes) keeps map
/// order out of it.
pub fn config_status(
    store: &Store,
    conns: &[ConnectionStatus],
    kind: &str,
    namespace: &str,
    name: &str,
) -> Result<ConfigStatus, String> {
    let kind = Kind::ALL
        .iter()
        .copied()
        .find(|k| k.name().eq_ignore_ascii_case(kind) || k.plural().eq_ignore_ascii_case(kind))
        .ok_or_else(|| format!("unknown kind {kind:?}"))?;
    let key = ObjectKey::new(kind, namespace, name);
    let objects = store.objects();
    if !objects.iter().any(|o| o.key() == key) {
        return Err(format!(
            "{key} is not in the store (rejected or deleted? see /debug/nackz)"
        ));
    }
    let without: Vec<_> = objects.iter().filter(|o| o.key() != key).cloned().collect();
    let with_gen = Generator::new(Arc::new(Snapshot::build(0, &objects, Vec::new())));
    let without_gen = Generator::new(Arc::new(Snapshot::build(0, &without, Vec::new())));
    let mut proxies = Vec::new();
    for c in latest_per_proxy(conns) {
        let meta = proxy_meta(&c.proxy);
        let mut resources = Vec::new();
        let mut nack = None;
        for (short, url) in TYPES {
            let with = with_gen.generate_for(meta.clone(), url);
            let without = without_gen.generate_for(meta.clone(), url);
            let status = c.types.get(url);
            for (name, expected) in changed(&with, &without) {
                // Names the proxy never asked for (EDS and RDS are subscribed by name) do not concern it.
                let Some(t) = status else { continue };
                if !t.wildcard && !t.names.contains(&name) && !t.sent.contains_key(&name) {
                    continue;
                }
                let holds = match (&expected, t.sent.get(&name)) {
                    (None, None) => true,
                    (Some(e), Some(SentResource::Sent(s))) => same_content(e, &s),
                    _ => false,
                };
                let state = if t.last_nack.is_some() {
                    nack = t.last_nack.as_ref().map(|n| n.message.clone());
                    "NACKED"
                } else if holds && t.is_acked() {
                    "ACKED"
                } else {
                    "PENDING"
                };
                resources.push(ResourceState {
                    type_short: short.to_owned(),
                    name,
                    state: state.to_owned(),
                });
            }
        }
        if resources.is_empty() {
            continue;
        }
        proxies.push(ProxyConfigStatus {
            proxy: c.proxy.id.pod_key(),
            acked: resources.iter().all(|r| r.state == "ACKED"),
            resources,
            nack,
        });
    }
    Ok(ConfigStatus {
        object: key.to_string(),
        synced: proxies.iter().all(|p| p.acked),
        proxies,
    })
}

/// Resource names whose content differs between two generations, with the resource as it should be now
/// (`None`: the object's presence removes it).
fn changed(
    with: &[Arc<XdsResource>],
    without: &[Arc<XdsResource>],
) -> Vec<(String, Option<Arc<XdsResource>>)> {
    let before: BTreeMap<&str, &Arc<XdsResource>> =
        without.iter().map(|r| (r.name.as_str(), r)).collect();
    let now: BTreeMap<&str, &Arc<XdsResource>> =
        with.iter().map(|r| (r.name.as_str(), r)).collect();
    let mut out = Vec::new();
    for (name, r) in &now {
        if before.get(name).is_none_or(|b| !same_content(r, b)) {
            out.push((name.to_string(), Some((*r).clone())));
        }
    }
    for name in before.keys() {
        if !now.contains_key(name) {
            out.push((name.to_string(), None));
        }
    }
    out
}

/// Same bytes, or (protobuf maps encode in hash order) the same rendered JSON.
fn same_content(a: &XdsResource, b: &XdsResource) -> bool {
    a.bytes == b.bytes
        || matches!(
            (protojson::to_json(&a.type_url, &a.bytes), protojson::to_json(&b.type_url, &b.bytes)),
            (Ok(x), Ok(y)) if x == y
        )
}
