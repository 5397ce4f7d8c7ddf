//! The service registry's value types: services, ports with their protocol, endpoints.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

/// The application protocol of a port, from its name prefix (`http-web`), `appProtocol`, or an Istio
/// `protocol:` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    GrpcWeb,
    Https,
    Tls,
    Tcp,
    Mongo,
    Redis,
    Mysql,
    Udp,
    /// Not declared: treated as TCP (istiod would sniff).
    Unsupported,
}

impl Protocol {
    /// Parses an Istio protocol name (`HTTP`, `http2`, `GRPC-WEB` …), case-insensitively.
    pub fn parse(s: &str) -> Option<Protocol> {
        Some(match s.to_ascii_lowercase().as_str() {
            "http" => Protocol::Http,
            "http2" => Protocol::Http2,
            "grpc" => Protocol::Grpc,
            "grpc-web" => Protocol::GrpcWeb,
            "https" => Protocol::Https,
            "tls" => Protocol::Tls,
            "tcp" => Protocol::Tcp,
            "mongo" => Protocol::Mongo,
            "redis" => Protocol::Redis,
            "mysql" => Protocol::Mysql,
            "udp" => Protocol::Udp,
            _ => return None,
        })
    }

    /// Istio's port-naming convention: `<protocol>[-<suffix>]`.
    pub fn from_port_name(name: &str) -> Protocol {
        // `grpc-web` is itself a protocol with a dash; check it before splitting.
        let lower = name.to_ascii_lowercase();
        if lower == "grpc-web" || lower.starts_with("grpc-web-") {
            return Protocol::GrpcWeb;
        }
        let prefix = lower.split('-').next().unwrap_or_default();
        Protocol::parse(prefix).unwrap_or(Protocol::Unsupported)
    }

    /// Kubernetes `appProtocol` (takes precedence over the name), including the `kubernetes.io/h2c` form.
    pub fn from_app_protocol(app: &str) -> Option<Protocol> {
        match app {
            "kubernetes.io/h2c" => Some(Protocol::Http2),
            "kubernetes.io/ws" | "kubernetes.io/wss" => Some(Protocol::Http),
            other => Protocol::parse(other),
        }
    }

    /// Ports routed by HTTP route configuration.
    pub fn is_http(self) -> bool {
        matches!(
            self,
            Protocol::Http | Protocol::Http2 | Protocol::Grpc | Protocol::GrpcWeb
        )
    }

    /// Ports routed by SNI (TLS not terminated by the sidecar).
    pub fn is_tls(self) -> bool {
        matches!(self, Protocol::Https | Protocol::Tls)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Protocol::Http => "HTTP",
            Protocol::Http2 => "HTTP2",
            Protocol::Grpc => "GRPC",
            Protocol::GrpcWeb => "GRPC-WEB",
            Protocol::Https => "HTTPS",
            Protocol::Tls => "TLS",
            Protocol::Tcp => "TCP",
            Protocol::Mongo => "Mongo",
            Protocol::Redis => "Redis",
            Protocol::Mysql => "MySQL",
            Protocol::Udp => "UDP",
            Protocol::Unsupported => "UnsupportedProtocol",
        };
        f.write_str(s)
    }
}

/// Where a service's port sends traffic on the workload.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(untagged)]
pub enum TargetPort {
    Number(u16),
    /// A container port name, resolved per pod.
    Named(String),
}

/// One port of a service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct ServicePort {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
    pub target_port: TargetPort,
}

/// How clients find the service's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Resolution {
    /// Endpoints known to rudder, load-balanced by Envoy (Kubernetes services, ServiceEntry `STATIC`).
    ClientSideLb,
    /// Envoy resolves the hosts (ServiceEntry `DNS`).
    Dns,
    /// ServiceEntry `DNS_ROUND_ROBIN`.
    DnsRoundRobin,
    /// Traffic goes to the address the caller used (ServiceEntry `NONE`, headless services).
    Passthrough,
}

/// Inside or outside the mesh (ServiceEntry `location`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Location {
    MeshInternal,
    MeshExternal,
}

/// Which object defined a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Origin {
    Kubernetes,
    ServiceEntry,
}

/// A service in the registry. Identified by (hostname, namespace): a ServiceEntry host may be declared in several
/// namespaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    /// FQDN for Kubernetes services (`name.ns.svc.cluster.local`); the declared host for ServiceEntries.
    pub hostname: String,
    pub namespace: String,
    /// Kubernetes Service name, or ServiceEntry name.
    pub name: String,
    pub origin: Origin,
    /// ClusterIP(s) or ServiceEntry addresses (IPs or CIDRs). Empty for headless services.
    pub addresses: Vec<String>,
    pub ports: Vec<ServicePort>,
    pub resolution: Resolution,
    pub location: Location,
    /// Namespaces that may see it (`*`, `.`, or names); empty means the mesh default (`*`).
    pub export_to: Vec<String>,
    /// Pod selector (Kubernetes) or workloadSelector labels (ServiceEntry).
    pub selector: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    /// ServiceEntry `subjectAltNames`.
    pub subject_alt_names: Vec<String>,
}

impl Service {
    /// The port numbered `port`, if the service has one.
    pub fn port(&self, port: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == port)
    }
}

/// A place traffic for one service port can go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// IP address, or a DNS name for DNS-resolved ServiceEntries.
    pub address: String,
    /// The workload's port that receives the service port's traffic.
    pub port: u16,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    pub namespace: String,
    /// Pod or WorkloadEntry name; empty for manual endpoints.
    pub workload: String,
    /// The workload runs an Envoy sidecar (so auto-mTLS can use ISTIO_MUTUAL).
    pub has_sidecar: bool,
    /// `region/zone/subzone`.
    pub locality: String,
    pub weight: u32,
    pub network: String,
    /// Not-ready endpoints are kept for debugging but not load-balanced.
    pub ready: bool,
}
