//! The table of every kind rudder reads: group, served versions, plural, scope and Rust type, in one place.
//!
//! `Kind` (what it is), `Object` (a typed, shared instance) and the decode step are generated from the table so
//! adding a kind is one line.

use std::fmt;
use std::sync::Arc;

use k8s_openapi::api::apps::v1 as apps;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

use super::istio::{networking, security, telemetry};
use super::legacy;

/// An Istio-style object: `apiVersion`, `kind`, `metadata` and a typed `spec`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IstioObject<S> {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: S,
    /// Written by controllers, never read by rudder; accepted so `kubectl get -o yaml` output loads cleanly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

/// Access to the Kubernetes metadata of any object rudder stores.
pub trait HasMeta {
    /// The object's metadata.
    fn meta(&self) -> &ObjectMeta;
    /// Mutable metadata (the loader fills in defaults such as the namespace).
    fn meta_mut(&mut self) -> &mut ObjectMeta;
}

impl<S> HasMeta for IstioObject<S> {
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

macro_rules! k8s_meta {
    ($($ty:ty),*) => {$(
        impl HasMeta for $ty {
            fn meta(&self) -> &ObjectMeta { &self.metadata }
            fn meta_mut(&mut self) -> &mut ObjectMeta { &mut self.metadata }
        }
    )*};
}
k8s_meta!(
    core::Namespace,
    core::Service,
    core::Endpoints,
    discovery::EndpointSlice,
    core::Pod,
    core::Secret,
    core::ConfigMap,
    apps::Deployment
);

macro_rules! kinds {
    ($( $variant:ident => ($group:literal, [$($version:literal),+], $name:literal, $plural:literal, $namespaced:literal, $ty:ty) ),+ $(,)?) => {
        /// Every kind rudder reads.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub enum Kind { $($variant),+ }

        impl Kind {
            /// All kinds, in table order.
            pub const ALL: &'static [Kind] = &[$(Kind::$variant),+];

            /// The API group (`""` for the core group).
            pub fn group(self) -> &'static str {
                match self { $(Kind::$variant => $group),+ }
            }
            /// Served versions, newest last.
            pub fn versions(self) -> &'static [&'static str] {
                match self { $(Kind::$variant => &[$($version),+]),+ }
            }
            /// The `kind:` string as written in YAML.
            pub fn name(self) -> &'static str {
                match self { $(Kind::$variant => $name),+ }
            }
            /// Lower-case plural used in REST paths.
            pub fn plural(self) -> &'static str {
                match self { $(Kind::$variant => $plural),+ }
            }
            /// Whether objects of this kind live in a namespace.
            pub fn namespaced(self) -> bool {
                match self { $(Kind::$variant => $namespaced),+ }
            }
        }

        /// A typed object of any kind. Cheap to clone: the body is shared.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Object { $($variant(Arc<$ty>)),+ }

        impl Object {
            /// The object's kind.
            pub fn kind(&self) -> Kind {
                match self { $(Object::$variant(_) => Kind::$variant),+ }
            }
            /// Equal objects, checked by pointer first: objects a build did not touch are the store's own `Arc`s.
            pub fn same(&self, other: &Object) -> bool {
                match (self, other) {
                    $((Object::$variant(a), Object::$variant(b)) => Arc::ptr_eq(a, b) || a == b,)+
                    _ => false,
                }
            }
            /// The object's metadata.
            pub fn meta(&self) -> &ObjectMeta {
                match self { $(Object::$variant(o) => o.meta()),+ }
            }
            /// The object as JSON, the way the API server would return it.
            pub fn to_json(&self) -> serde_json::Value {
                let mut v = match self { $(Object::$variant(o) => serde_json::to_value(&**o)),+ }
                    .unwrap_or(serde_json::Value::Null);
                // k8s-openapi types do not serialize apiVersion/kind unless asked; fill them in uniformly.
                if let Some(map) = v.as_object_mut() {
                    let kind = self.kind();
                    map.entry("apiVersion").or_insert_with(|| kind.default_api_version().into());
                    map.entry("kind").or_insert_with(|| kind.name().into());
                }
                v
            }
        }

        /// Decodes a JSON value of a known kind into its typed object. `ignored` is called with the path of every
        /// field the Rust type does not know.
        pub(crate) fn decode(
            kind: Kind,
            value: serde_json::Value,
            ignored: &mut dyn FnMut(String),
        ) -> Result<Object, (String, String)> {
            match kind {
                $(Kind::$variant => super::parse::decode_typed::<$ty>(value, ignored)
                    .map(|o| Object::$variant(Arc::new(o)))),+
            }
        }

        /// Fills in defaults (namespace) before the object is shared.
        pub(crate) fn with_namespace(obj: Object, namespace: &str) -> Object {
            match obj {
                $(Object::$variant(mut o) => {
                    let m = Arc::make_mut(&mut o).meta_mut();
                    if Kind::$variant.namespaced() && m.namespace.as_deref().unwrap_or("").is_empty() {
                        m.namespace = Some(namespace.to_string());
                    }
                    Object::$variant(o)
                }),+
            }
        }
    };
}

kinds! {
    // Kubernetes core objects: the service registry's inputs.
    Namespace => ("", ["v1"], "Namespace", "namespaces", false, core::Namespace),
    Service => ("", ["v1"], "Service", "services", true, core::Service),
    Endpoints => ("", ["v1"], "Endpoints", "endpoints", true, core::Endpoints),
    EndpointSlice => ("discovery.k8s.io", ["v1"], "EndpointSlice", "endpointslices", true, discovery::EndpointSlice),
    Pod => ("", ["v1"], "Pod", "pods", true, core::Pod),
    Secret => ("", ["v1"], "Secret", "secrets", true, core::Secret),
    ConfigMap => ("", ["v1"], "ConfigMap", "configmaps", true, core::ConfigMap),
    // Read by the local mesh and the injector; the registry uses Pods, not Deployments.
    Deployment => ("apps", ["v1"], "Deployment", "deployments", true, apps::Deployment),

    // networking.istio.io
    Gateway => ("networking.istio.io", ["v1alpha3", "v1beta1", "v1"], "Gateway", "gateways", true, IstioObject<networking::GatewaySpec>),
    VirtualService => ("networking.istio.io", ["v1alpha3", "v1beta1", "v1"], "VirtualService", "virtualservices", true, IstioObject<networking::VirtualServiceSpec>),
    DestinationRule => ("networking.istio.io", ["v1alpha3", "v1beta1", "v1"], "DestinationRule", "destinationrules", true, IstioObject<networking::DestinationRuleSpec>),
    ServiceEntry => ("networking.istio.io", ["v1alpha3", "v1beta1", "v1"], "ServiceEntry", "serviceentries", true, IstioObject<networking::ServiceEntrySpec>),
    Sidecar => ("networking.istio.io", ["v1alpha3", "v1beta1", "v1"], "Sidecar", "sidecars", true, IstioObject<networking::SidecarSpec>),
    WorkloadEntry => ("networking.istio.io", ["v1alpha3", "v1beta1", "v1"], "WorkloadEntry", "workloadentries", true, IstioObject<networking::WorkloadEntrySpec>),
    WorkloadGroup => ("networking.istio.io", ["v1alpha3", "v1beta1", "v1"], "WorkloadGroup", "workloadgroups", true, IstioObject<networking::WorkloadGroupSpec>),
    EnvoyFilter => ("networking.istio.io", ["v1alpha3"], "EnvoyFilter", "envoyfilters", true, IstioObject<networking::EnvoyFilterSpec>),

    // security.istio.io
    PeerAuthentication => ("security.istio.io", ["v1beta1", "v1"], "PeerAuthentication", "peerauthentications", true, IstioObject<security::PeerAuthenticationSpec>),
    RequestAuthentication => ("security.istio.io", ["v1beta1", "v1"], "RequestAuthentication", "requestauthentications", true, IstioObject<security::RequestAuthenticationSpec>),
    AuthorizationPolicy => ("security.istio.io", ["v1beta1", "v1"], "AuthorizationPolicy", "authorizationpolicies", true, IstioObject<security::AuthorizationPolicySpec>),

    // telemetry.istio.io
    Telemetry => ("telemetry.istio.io", ["v1alpha1", "v1"], "Telemetry", "telemetries", true, IstioObject<telemetry::TelemetrySpec>),

    // The book's legacy kinds (Istio 1.3): parsed and validated, translated by later stages.
    Policy => ("authentication.istio.io", ["v1alpha1"], "Policy", "policies", true, IstioObject<legacy::PolicySpec>),
    MeshPolicy => ("authentication.istio.io", ["v1alpha1"], "MeshPolicy", "meshpolicies", false, IstioObject<legacy::PolicySpec>),
    ClusterRbacConfig => ("rbac.istio.io", ["v1alpha1"], "ClusterRbacConfig", "clusterrbacconfigs", false, IstioObject<legacy::RbacConfigSpec>),
    RbacConfig => ("rbac.istio.io", ["v1alpha1"], "RbacConfig", "rbacconfigs", true, IstioObject<legacy::RbacConfigSpec>),
    ServiceRole => ("rbac.istio.io", ["v1alpha1"], "ServiceRole", "serviceroles", true, IstioObject<legacy::ServiceRoleSpec>),
    ServiceRoleBinding => ("rbac.istio.io", ["v1alpha1"], "ServiceRoleBinding", "servicerolebindings", true, IstioObject<legacy::ServiceRoleBindingSpec>),
    Handler => ("config.istio.io", ["v1alpha2"], "handler", "handlers", true, IstioObject<legacy::HandlerSpec>),
    Instance => ("config.istio.io", ["v1alpha2"], "instance", "instances", true, IstioObject<legacy::InstanceSpec>),
    Rule => ("config.istio.io", ["v1alpha2"], "rule", "rules", true, IstioObject<legacy::RuleSpec>),
    QuotaSpec => ("config.istio.io", ["v1alpha2"], "QuotaSpec", "quotaspecs", true, IstioObject<legacy::QuotaSpecSpec>),
    QuotaSpecBinding => ("config.istio.io", ["v1alpha2"], "QuotaSpecBinding", "quotaspecbindings", true, IstioObject<legacy::QuotaSpecBindingSpec>),
    TrafficSplit => ("split.smi-spec.io", ["v1alpha1", "v1alpha2"], "TrafficSplit", "trafficsplits", true, IstioObject<legacy::TrafficSplitSpec>),
}

impl Kind {
    /// Looks a kind up by `apiVersion` and `kind` as written in a document. Every served version is accepted.
    pub fn from_api(api_version: &str, kind: &str) -> Option<Kind> {
        let (group, version) = match api_version.rsplit_once('/') {
            Some((g, v)) => (g, v),
            None => ("", api_version),
        };
        Kind::ALL
            .iter()
            .copied()
            .find(|k| k.group() == group && k.name() == kind && k.versions().contains(&version))
    }

    /// `group/version` of the newest served version (`v1` for the core group).
    pub fn default_api_version(self) -> String {
        let v = self.versions().last().copied().unwrap_or("v1");
        if self.group().is_empty() {
            v.to_string()
        } else {
            format!("{}/{}", self.group(), v)
        }
    }

    /// Kinds whose changes only move endpoints (the push pipeline's fast path).
    pub fn is_endpoint_only(self) -> bool {
        matches!(
            self,
            Kind::Endpoints | Kind::EndpointSlice | Kind::Pod | Kind::WorkloadEntry
        )
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Identity of an object in the store: kind, namespace (empty when cluster-scoped) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    /// Builds a key; `namespace` is ignored for cluster-scoped kinds.
    pub fn new(kind: Kind, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        let namespace = if kind.namespaced() {
            namespace.into()
        } else {
            String::new()
        };
        ObjectKey {
            kind,
            namespace,
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    /// `Kind namespace/name`, or `Kind name` when cluster-scoped: the prefix of every error rudder reports.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

impl Object {
    /// The store key of this object.
    pub fn key(&self) -> ObjectKey {
        let m = self.meta();
        ObjectKey::new(
            self.kind(),
            m.namespace.clone().unwrap_or_default(),
            m.name.clone().unwrap_or_default(),
        )
    }
}
