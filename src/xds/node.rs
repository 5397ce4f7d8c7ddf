//! Who is on the other end of a stream: the Envoy node id (`<type>~<ip>~<pod>.<ns>~<domain>`) parsed into a
//! [`ProxyId`], plus the node's cluster and metadata kept as Envoy sent them.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::Struct;

use super::Error;

/// The kind of proxy, the first field of the node id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProxyType {
    /// A workload sidecar (`sidecar~…`).
    Sidecar,
    /// A gateway (`router~…`).
    Router,
}

impl ProxyType {
    /// The node-id spelling of the type.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyType::Sidecar => "sidecar",
            ProxyType::Router => "router",
        }
    }
}

/// A parsed Envoy node id: `<type>~<ip>~<pod>.<namespace>~<domain>`, e.g.
/// `sidecar~10.1.2.3~reviews-v1-abc.default~default.svc.cluster.local`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProxyId {
    /// Sidecar or gateway.
    pub proxy_type: ProxyType,
    /// The workload IP.
    pub ip: IpAddr,
    /// Pod name.
    pub pod: String,
    /// Pod namespace.
    pub namespace: String,
    /// DNS domain, usually `<ns>.svc.cluster.local`.
    pub domain: String,
}

impl ProxyId {
    /// `<pod>.<namespace>`: the key istioctl and `/debug/config_dump?proxyID=` use.
    pub fn pod_key(&self) -> String {
        format!("{}.{}", self.pod, self.namespace)
    }
}

impl FromStr for ProxyId {
    type Err = Error;

    fn from_str(id: &str) -> Result<Self, Error> {
        let err = |reason| Error::InvalidNodeId {
            id: id.to_owned(),
            reason,
        };
        let parts: Vec<&str> = id.split('~').collect();
        let [ty, ip, pod_ns, domain] = parts[..] else {
            return Err(err("expected 4 fields separated by '~'"));
        };
        let proxy_type = match ty {
            "sidecar" => ProxyType::Sidecar,
            "router" => ProxyType::Router,
            _ => return Err(err("unknown proxy type")),
        };
        let ip = ip.parse().map_err(|_| err("invalid IP address"))?;
        // Pod names cannot contain dots; namespaces cannot either, so split at the first dot.
        let (pod, namespace) = pod_ns
            .split_once('.')
            .ok_or_else(|| err("expected <pod>.<namespace>"))?;
        if pod.is_empty() || namespace.is_empty() {
            return Err(err("empty pod or namespace"));
        }
        Ok(ProxyId {
            proxy_type,
            ip,
            pod: pod.to_owned(),
            namespace: namespace.to_owned(),
            domain: domain.to_owned(),
        })
    }
}

impl fmt::Display for ProxyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}~{}~{}.{}~{}",
            self.proxy_type.as_str(),
            self.ip,
            self.pod,
            self.namespace,
            self.domain
        )
    }
}

/// A connected proxy as generators see it.
#[derive(Clone, Debug, PartialEq)]
pub struct Proxy {
    /// The parsed node id.
    pub id: ProxyId,
    /// `node.cluster` (Istio sets `<app>.<ns>`).
    pub cluster: String,
    /// `node.metadata`, untouched.
    pub metadata: Option<Struct>,
    /// Unique id (in this process) of the ADS stream this proxy is connected on.
    pub conn_id: u64,
    /// Who the proxy proved to be with its stream credentials; only a server with an [`Authenticate`]
    /// hook (the TLS server) ever sets it, and secrets are only generated for proxies that have it.
    pub identity: Option<PeerIdentity>,
}

/// A service account a proxy authenticated as.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerIdentity {
    /// Kubernetes namespace of the service account.
    pub namespace: String,
    /// Service account name.
    pub service_account: String,
}

/// Authenticates a stream from its gRPC metadata (e.g. `authorization: Bearer <token>`) and the node id
/// it presented. The error is the reason, logged by the server; the stream then goes on unauthenticated.
pub trait Authenticate: Send + Sync {
    /// The identity proven by `metadata` for the proxy `node`.
    fn authenticate(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        node: &ProxyId,
    ) -> Result<PeerIdentity, String>;
}

impl Proxy {
    /// Builds the proxy from the node of a stream's first request.
    pub fn from_node(node: &Node, conn_id: u64) -> Result<Self, Error> {
        Ok(Proxy {
            id: node.id.parse()?,
            cluster: node.cluster.clone(),
            metadata: node.metadata.clone(),
            conn_id,
            identity: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_sidecar_id() {
        let s = "sidecar~10.1.2.3~reviews-v1-abc.default~default.svc.cluster.local";
        let id: ProxyId = s.parse().unwrap();
        assert_eq!(id.proxy_type, ProxyType::Sidecar);
        assert_eq!(id.pod_key(), "reviews-v1-abc.default");
        assert_eq!(id.domain, "default.svc.cluster.local");
        assert_eq!(id.to_string(), s);
    }

    #[test]
    fn parses_router_with_ipv6() {
        let id: ProxyId = "router~fd00::1~gw-1.istio-system~istio-system.svc.cluster.local"
            .parse()
            .unwrap();
        assert_eq!(id.proxy_type, ProxyType::Router);
        assert_eq!(id.ip, "fd00::1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn rejects_bad_ids() {
        for bad in [
            "",
            "sidecar",
            "proxy~1.2.3.4~a.b~d",
            "sidecar~nope~a.b~d",
            "sidecar~1.2.3.4~nodot~d",
            "a~b~c~d~e",
        ] {
            let err = bad.parse::<ProxyId>().unwrap_err();
            assert!(err.to_string().contains("invalid node id"), "{bad}: {err}");
        }
    }
}
