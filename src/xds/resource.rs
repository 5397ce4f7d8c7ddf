//! Opaque, pre-encoded xDS resources and the [`Generate`] boundary to the translation code.
//!
//! A resource is encoded once and hashed once ([`XdsResource::encode`]); generators return `Arc`s so a resource
//! identical for many proxies is shared by every connection that sends it within a generation.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use envoy_types::pb::google::protobuf::Any;

use super::Proxy;

/// Type URLs rudder serves, and their push order.
pub mod type_url {
    /// Clusters (CDS).
    pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    /// Endpoints (EDS).
    pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
    /// Listeners (LDS).
    pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    /// Route configurations (RDS).
    pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    /// Secrets (SDS).
    pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

    /// Make before break: clusters and their endpoints exist before listeners and routes point at them.
    pub const PUSH_ORDER: [&str; 5] = [CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET];

    /// Rank of a type in [`PUSH_ORDER`]; unknown types go last.
    pub fn push_rank(type_url: &str) -> usize {
        PUSH_ORDER
            .iter()
            .position(|t| *t == type_url)
            .unwrap_or(PUSH_ORDER.len())
    }

    /// Whether an empty name list on the first SotW request means "everything" (the xDS wildcard types).
    pub fn is_wildcard_type(type_url: &str) -> bool {
        type_url == CLUSTER || type_url == LISTENER
    }

    /// Short name for metrics and logs (`cds`, `eds`, …, `other`).
    pub fn short(type_url: &str) -> &'static str {
        match type_url {
            CLUSTER => "cds",
            ENDPOINT => "eds",
            LISTENER => "lds",
            ROUTE => "rds",
            SECRET => "sds",
            _ => "other",
        }
    }
}

/// One named, encoded resource with its content version (xxh3 of the encoded bytes, hex).
#[derive(Clone, PartialEq, Eq)]
pub struct XdsResource {
    /// Resource name (cluster name, listener name, …).
    pub name: String,
    /// Full type URL of the encoded message.
    pub type_url: String,
    /// The encoded protobuf message (not wrapped in `Any`).
    pub bytes: Bytes,
    /// Content hash used as the delta-xDS resource version.
    pub version: String,
}

impl XdsResource {
    /// Encodes `msg` once and computes its version.
    pub fn encode<M: prost::Message + prost::Name>(name: impl Into<String>, msg: &M) -> Self {
        Self::from_bytes(name, M::type_url(), Bytes::from(msg.encode_to_vec()))
    }

    /// Wraps already-encoded bytes.
    pub fn from_bytes(name: impl Into<String>, type_url: impl Into<String>, bytes: Bytes) -> Self {
        let version = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&bytes));
        XdsResource {
            name: name.into(),
            type_url: type_url.into(),
            bytes,
            version,
        }
    }

    /// The resource as an `Any` (copies the bytes: prost's `Any` owns a `Vec`).
    pub fn to_any(&self) -> Any {
        Any {
            type_url: self.type_url.clone(),
            value: self.bytes.to_vec(),
        }
    }
}

impl fmt::Debug for XdsResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XdsResource")
            .field("name", &self.name)
            .field("type_url", &self.type_url)
            .field("len", &self.bytes.len())
            .field("version", &self.version)
            .finish()
    }
}

/// The boundary to the translation code: all resources of one type a proxy may see in one generation.
///
/// Implementations are pure and deterministic for a given generation. A resource identical for many proxies
/// should be built and encoded once per generation and handed out as the same `Arc` (cache it in the
/// generator); the server only compares versions and copies bytes.
pub trait Generate: Send + Sync {
    /// Every resource of `type_url` visible to `proxy` (the server filters by the proxy's subscription).
    fn generate(&self, proxy: &Proxy, type_url: &str) -> Vec<Arc<XdsResource>>;
}

/// One generation of configuration, published by the app on the server's `watch` channel.
#[derive(Clone)]
pub struct PushContext {
    /// Monotonic generation number; sent as the SotW `version_info` and delta `system_version_info`.
    pub version: u64,
    /// Produces the resources of this generation.
    pub generator: Arc<dyn Generate>,
    /// True when this generation differs from generation `version - 1` only in endpoints: connections that saw
    /// `version - 1` then recompute EDS only. Any other gap makes a full recompute.
    pub endpoints_only: bool,
    /// When the generation was published (start of the convergence-time measurement).
    pub published: Instant,
}

impl PushContext {
    /// A generation published now.
    pub fn new(version: u64, generator: Arc<dyn Generate>, endpoints_only: bool) -> Self {
        PushContext {
            version,
            generator,
            endpoints_only,
            published: Instant::now(),
        }
    }
}

impl fmt::Debug for PushContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PushContext")
            .field("version", &self.version)
            .field("endpoints_only", &self.endpoints_only)
            .finish_non_exhaustive()
    }
}
