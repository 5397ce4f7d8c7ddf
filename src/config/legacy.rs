//! The book's Istio 1.3 kinds (authentication Policy/MeshPolicy, rbac.istio.io, Mixer config.istio.io, SMI
//! TrafficSplit): parsed and validated so the book's YAML loads; translated by later stages.
//!
//! These CRDs were removed from Istio (1.6 for authentication/rbac, 1.8 for Mixer), so there is no published
//! schema to follow; the shapes here are the Istio 1.3 protos' JSON forms, covering every field the book uses
//! and the rest of each message. Mixer `params` are adapter/template specific and stay free-form JSON.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::config::istio::common::Duration;

// ---- authentication.istio.io/v1alpha1 Policy and MeshPolicy ----

/// `Policy.spec` / `MeshPolicy.spec`: peer (mTLS) and origin (JWT) authentication for the targeted services.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct PolicySpec {
    /// Services the policy applies to; empty means every service of the namespace (or mesh, for MeshPolicy).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<TargetSelector>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<PeerAuthenticationMethod>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_is_optional: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub origins: Vec<OriginAuthenticationMethod>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin_is_optional: Option<bool>,
    /// Absent means USE_PEER.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal_binding: Option<PrincipalBinding>,
}

/// A service (by short name) and optionally some of its ports.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct TargetSelector {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<LegacyPortSelector>,
}

/// A service port by number or by name (the 1.3 PortSelector had both).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct LegacyPortSelector {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub number: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// One `peers[]` entry: mutual TLS (or the long-deprecated peer JWT).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct PeerAuthenticationMethod {
    /// `mtls: {}` and `mtls: null` (and `mtls: {mode: STRICT}`) all mean STRICT: see [`MutualTls::effective_mode`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MutualTls>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt: Option<Jwt>,
}

impl PeerAuthenticationMethod {
    /// The mTLS mode this entry asks for, or `None` for a peer-JWT entry. `mtls: {}`, `mtls: null` and an empty
    /// entry all mean STRICT (YAML `- mtls:` is `null`, and the 1.3 control plane read both as STRICT).
    pub fn mtls_mode(&self) -> Option<MutualTlsMode> {
        match (&self.mtls, &self.jwt) {
            (Some(m), _) => Some(m.effective_mode()),
            (None, Some(_)) => None,
            (None, None) => Some(MutualTlsMode::Strict),
        }
    }
}

/// `mtls: {mode}`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct MutualTls {
    /// Deprecated in 1.1 in favour of `mode: PERMISSIVE`; accepted so old YAML loads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_tls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<MutualTlsMode>,
}

impl MutualTls {
    /// The mode with the 1.3 default applied: absent means STRICT (and the deprecated `allowTls: true` meant
    /// PERMISSIVE).
    pub fn effective_mode(&self) -> MutualTlsMode {
        match (self.mode, self.allow_tls) {
            (Some(m), _) => m,
            (None, Some(true)) => MutualTlsMode::Permissive,
            (None, _) => MutualTlsMode::Strict,
        }
    }
}

/// Istio 1.3 peer mTLS mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MutualTlsMode {
    Strict,
    Permissive,
}

/// One `origins[]` entry: end-user authentication by JWT.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct OriginAuthenticationMethod {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt: Option<Jwt>,
}

/// Istio 1.3 JWT settings (the ancestor of RequestAuthentication's `jwtRules[]`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct Jwt {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub jwt_headers: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub jwt_params: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trigger_rules: Vec<TriggerRule>,
}

/// Which request paths the JWT check applies to: skipped when a path matches `excludedPaths`; if
/// `includedPaths` is set, applied only when one matches.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct TriggerRule {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub excluded_paths: Vec<LegacyStringMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub included_paths: Vec<LegacyStringMatch>,
}

/// The 1.3 authentication StringMatch: one of exact, prefix, suffix or regex (modern StringMatch has no suffix).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct LegacyStringMatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// Which identity becomes the request principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PrincipalBinding {
    UsePeer,
    UseOrigin,
}

impl PolicySpec {
    /// The principal binding with the 1.3 default (USE_PEER) applied.
    pub fn effective_principal_binding(&self) -> PrincipalBinding {
        self.principal_binding.unwrap_or(PrincipalBinding::UsePeer)
    }
}

// ---- rbac.istio.io/v1alpha1 ----

/// `ClusterRbacConfig.spec` / `RbacConfig.spec`: where Istio RBAC is enforced.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct RbacConfigSpec {
    /// Absent means OFF.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<RbacMode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inclusion: Option<RbacTarget>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exclusion: Option<RbacTarget>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enforcement_mode: Option<EnforcementMode>,
}

/// Where RBAC is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RbacMode {
    Off,
    On,
    OnWithInclusion,
    OnWithExclusion,
}

/// Services (FQDNs) and namespaces included in or excluded from RBAC.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct RbacTarget {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
}

/// Whether denials are enforced or only logged (dry run).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EnforcementMode {
    Enforced,
    Permissive,
}

/// `ServiceRole.spec`: a set of permissions.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct ServiceRoleSpec {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<AccessRule>,
}

/// One permission: services (FQDNs, `*` prefix/suffix wildcards) and what may be done to them.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct AccessRule {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_hosts: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<i32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<i32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<Constraint>,
}

/// `constraints[]`: an attribute (`destination.labels[version]`, `request.headers[x]` …) and allowed values.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct Constraint {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// `ServiceRoleBinding.spec`: grants a ServiceRole to subjects.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct ServiceRoleBindingSpec {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<Subject>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role_ref: Option<RoleRef>,
    /// Inline permissions (1.3 alpha), instead of a role.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<AccessRule>,
    /// The role by name (`/name` for a cluster-wide role), instead of `roleRef`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<EnforcementMode>,
}

/// Who a binding grants the role to. `properties` holds attribute matches such as `source.namespace` or
/// `request.auth.claims[role]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct Subject {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Deprecated in 1.3 in favour of `groups`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_names: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_groups: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_ips: Vec<String>,
}

impl Subject {
    /// Whether no field is set (such a subject matches nothing useful and is refused).
    pub fn is_empty(&self) -> bool {
        *self == Subject::default()
    }
}

/// `roleRef: {kind: ServiceRole, name}`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct RoleRef {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

// ---- config.istio.io/v1alpha2 (Mixer) ----

/// Mixer `handler.spec`: a configured adapter (memquota, prometheus, fluentd …).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct HandlerSpec {
    /// Name of an adapter built into Mixer (`memquota`, `prometheus`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compiled_adapter: Option<String>,
    /// Name of an out-of-process adapter resource.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adapter: Option<String>,
    /// Adapter-specific configuration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub params: Option<serde_json::Value>,
    /// Where an out-of-process adapter listens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection: Option<AdapterConnection>,
}

/// `connection: {address, timeout, authentication}` of an out-of-process adapter.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct AdapterConnection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// TLS or mutual-TLS settings, free-form.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authentication: Option<serde_json::Value>,
}

/// Mixer `instance.spec`: attribute expressions mapped onto a template (quota, metric, logentry …).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct InstanceSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compiled_template: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Template fields as Mixer expressions (`destination.service.name | "unknown"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub params: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub attribute_bindings: BTreeMap<String, String>,
}

/// Mixer `rule.spec`: when `match` holds, send the instances to the handlers.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct RuleSpec {
    /// A Mixer expression (`match(request.headers["user-agent"], "curl*")`); absent or empty always matches.
    #[serde(rename = "match", skip_serializing_if = "Option::is_none")]
    pub match_: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<RuleAction>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub request_header_operations: Vec<HeaderOperation>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub response_header_operations: Vec<HeaderOperation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampling: Option<Sampling>,
}

/// `actions[]`: a handler (`name` or legacy `name.kind`) and the instances sent to it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct RuleAction {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<String>,
    /// Names the action's output for header operations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A header rewrite driven by a rule's outputs.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct HeaderOperation {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<HeaderOperationKind>,
}

/// How a header operation changes the header (absent means REPLACE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HeaderOperationKind {
    Replace,
    Remove,
    Append,
}

/// Rule sampling: random and/or rate-limited.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct Sampling {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub random: Option<RandomSampling>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSampling>,
}

/// Samples a fraction of requests.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct RandomSampling {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attribute_expression: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent_sampled: Option<FractionalPercent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub use_independent_randomness: Option<bool>,
}

/// `numerator / denominator` with denominator HUNDRED (default), TEN_THOUSAND or MILLION.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct FractionalPercent {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub numerator: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub denominator: Option<FractionDenominator>,
}

/// The denominator of a [`FractionalPercent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FractionDenominator {
    Hundred,
    TenThousand,
    Million,
}

/// Passes the first `maxUnsampledEntries` per `samplingDuration`, then one in `samplingRate`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct RateLimitSampling {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampling_duration: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_unsampled_entries: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampling_rate: Option<i64>,
}

/// `QuotaSpec.spec`: which quotas a matching request is charged against.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct QuotaSpecSpec {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<QuotaRule>,
}

/// `rules[]`: when any `match` entry holds (or none is given), charge each quota.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct QuotaRule {
    #[serde(rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub match_: Vec<AttributeMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub quotas: Vec<Quota>,
}

/// `match[]`: every clause (attribute name → string match) must hold.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct AttributeMatch {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub clause: BTreeMap<String, LegacyStringMatch>,
}

/// `quotas[]`: a quota instance name and how much a request costs (default 1).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct Quota {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub charge: Option<i64>,
}

/// `QuotaSpecBinding.spec`: attaches QuotaSpecs to services.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct QuotaSpecBindingSpec {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub quota_specs: Vec<QuotaSpecReference>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<IstioService>,
}

/// `quotaSpecs[]`: a QuotaSpec by name (namespace defaults to the binding's).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct QuotaSpecReference {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// The 1.3 `IstioService`: a service by short name (+ namespace, domain) or by FQDN in `service`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct IstioService {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

// ---- split.smi-spec.io TrafficSplit ----

/// SMI `TrafficSplit.spec` (v1alpha1 and v1alpha2): split traffic for `service` across `backends` by weight.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct TrafficSplitSpec {
    /// The root service clients address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<TrafficSplitBackend>,
}

/// `backends[]`: a service and its relative weight.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct TrafficSplitBackend {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<SplitWeight>,
}

/// A TrafficSplit weight: an integer (v1alpha2) or a Kubernetes quantity (v1alpha1: `100`, `500m`, `1k`), held in
/// thousandths so `100m` and `1` compare exactly. Weights are relative; only their ratios matter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SplitWeight {
    /// The weight × 1000.
    pub milli: i64,
}

impl SplitWeight {
    /// Parses an integer or Kubernetes quantity string (decimal or binary suffixes, `m` for milli).
    pub fn parse(s: &str) -> Result<SplitWeight, String> {
        let t = s.trim();
        let num_end = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
            .unwrap_or(t.len());
        let (num, suffix) = t.split_at(num_end);
        let value: f64 = num.parse().map_err(|_| {
            format!("invalid weight {s:?}: expected a number or quantity like 100m")
        })?;
        let scale = match suffix {
            "" => 1.0,
            "m" => 1e-3,
            "k" => 1e3,
            "M" => 1e6,
            "G" => 1e9,
            "T" => 1e12,
            "Ki" => 1024.0,
            "Mi" => 1024.0 * 1024.0,
            "Gi" => 1024.0 * 1024.0 * 1024.0,
            other => return Err(format!("invalid weight {s:?}: unknown suffix {other:?}")),
        };
        let milli = (value * scale * 1000.0).round();
        if !milli.is_finite() || milli.abs() > i64::MAX as f64 / 2.0 {
            return Err(format!("invalid weight {s:?}: too large"));
        }
        Ok(SplitWeight {
            milli: milli as i64,
        })
    }
}

impl fmt::Display for SplitWeight {
    /// Whole weights print as integers, others as milli-quantities (`100m`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.milli % 1000 == 0 {
            write!(f, "{}", self.milli / 1000)
        } else {
            write!(f, "{}m", self.milli)
        }
    }
}

impl Serialize for SplitWeight {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.milli % 1000 == 0 {
            s.serialize_i64(self.milli / 1000)
        } else {
            s.collect_str(self)
        }
    }
}

impl<'de> Deserialize<'de> for SplitWeight {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = SplitWeight;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer or a quantity string such as \"100m\"")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<SplitWeight, E> {
                v.checked_mul(1000)
                    .map(|milli| SplitWeight { milli })
                    .ok_or_else(|| E::custom(format!("weight {v} is too large")))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<SplitWeight, E> {
                i64::try_from(v)
                    .map_err(|_| E::custom(format!("weight {v} is too large")))
                    .and_then(|v| self.visit_i64(v))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<SplitWeight, E> {
                SplitWeight::parse(&v.to_string()).map_err(E::custom)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SplitWeight, E> {
                SplitWeight::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl JsonSchema for SplitWeight {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "SplitWeight".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "x-kubernetes-int-or-string": true,
            "description": "An integer or a Kubernetes quantity such as 100m"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_weights_accept_ints_and_quantities() {
        for (json, milli) in [
            (serde_json::json!(100), 100_000),
            (serde_json::json!("900m"), 900),
            (serde_json::json!("1k"), 1_000_000),
            (serde_json::json!("2"), 2000),
            (serde_json::json!(0.5), 500),
            (serde_json::json!("-1"), -1000),
        ] {
            let w: SplitWeight = serde_json::from_value(json.clone()).unwrap();
            assert_eq!(w.milli, milli, "{json}");
        }
        for bad in [serde_json::json!("lots"), serde_json::json!("1x")] {
            assert!(serde_json::from_value::<SplitWeight>(bad).is_err());
        }
        assert_eq!(
            serde_json::to_value(SplitWeight { milli: 900 }).unwrap(),
            "900m"
        );
        assert_eq!(
            serde_json::to_value(SplitWeight { milli: 5000 }).unwrap(),
            5
        );
    }

    #[test]
    fn mtls_empty_and_null_mean_strict() {
        for peers in [
            serde_json::json!([{"mtls": {}}]),
            serde_json::json!([{"mtls": null}]),
        ] {
            let spec: PolicySpec =
                serde_json::from_value(serde_json::json!({ "peers": peers })).unwrap();
            let mode = spec.peers[0]
                .mtls
                .clone()
                .unwrap_or_default()
                .effective_mode();
            assert_eq!(mode, MutualTlsMode::Strict);
        }
    }
}
