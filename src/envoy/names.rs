//! Istio's resource names (the compatibility contract): clusters `outbound|<port>|<subset>|<fqdn>` and
//! `inbound|<port>||`, the catch-all clusters, listener and route names, virtual host names.

use std::fmt;
use std::str::FromStr;

/// Catch-all cluster that drops traffic (REGISTRY_ONLY, or a route to a missing destination).
pub const BLACKHOLE_CLUSTER: &str = "BlackHoleCluster";
/// Catch-all cluster forwarding to the original destination (ALLOW_ANY).
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";
/// Inbound traffic to ports the workload did not declare.
pub const INBOUND_PASSTHROUGH_CLUSTER: &str = "InboundPassthroughCluster";
/// The sidecar's outbound capture listener (iptables REDIRECT target).
pub const VIRTUAL_OUTBOUND_LISTENER: &str = "virtualOutbound";
/// The sidecar's inbound capture listener.
pub const VIRTUAL_INBOUND_LISTENER: &str = "virtualInbound";
/// Outbound capture port.
pub const VIRTUAL_OUTBOUND_PORT: u16 = 15001;
/// Inbound capture port.
pub const VIRTUAL_INBOUND_PORT: u16 = 15006;
/// The `server_name` every HTTP connection manager announces.
pub const SERVER_NAME: &str = "istio-envoy";

/// Traffic direction of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Outbound,
    Inbound,
}

/// A service cluster name: `outbound|80|v1|reviews.default.svc.cluster.local` or `inbound|9080||`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterName {
    pub direction: Direction,
    pub port: u16,
    /// DestinationRule subset name; empty for none.
    pub subset: String,
    /// Service hostname; empty for inbound clusters.
    pub host: String,
}

impl ClusterName {
    /// `outbound|<port>|<subset>|<host>`.
    pub fn outbound(port: u16, subset: &str, host: &str) -> Self {
        ClusterName {
            direction: Direction::Outbound,
            port,
            subset: subset.to_string(),
            host: host.to_string(),
        }
    }

    /// `inbound|<port>||`.
    pub fn inbound(port: u16) -> Self {
        ClusterName {
            direction: Direction::Inbound,
            port,
            subset: String::new(),
            host: String::new(),
        }
    }
}

impl fmt::Display for ClusterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dir = match self.direction {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        };
        write!(f, "{dir}|{}|{}|{}", self.port, self.subset, self.host)
    }
}

impl FromStr for ClusterName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('|').collect();
        let [dir, port, subset, host] = parts[..] else {
            return Err(format!("{s:?} is not <direction>|<port>|<subset>|<host>"));
        };
        let direction = match dir {
            "outbound" => Direction::Outbound,
            "inbound" => Direction::Inbound,
            _ => return Err(format!("{s:?}: unknown direction {dir:?}")),
        };
        let port = port
            .parse()
            .map_err(|_| format!("{s:?}: bad port {port:?}"))?;
        Ok(ClusterName {
            direction,
            port,
            subset: subset.to_string(),
            host: host.to_string(),
        })
    }
}

/// Outbound HTTP listener of a sidecar for `port`: `0.0.0.0_<port>`.
pub fn outbound_http_listener(port: u16) -> String {
    format!("0.0.0.0_{port}")
}

/// Outbound TCP/TLS listener of a sidecar for one service address: `<vip>_<port>`.
pub fn outbound_tcp_listener(vip: &str, port: u16) -> String {
    format!("{vip}_{port}")
}

/// Gateway listener for a server port: `0.0.0.0_<port>`.
pub fn gateway_listener(port: u16) -> String {
    format!("0.0.0.0_{port}")
}

/// The sidecar's RDS route name for an HTTP port: `"<port>"`.
pub fn sidecar_route(port: u16) -> String {
    port.to_string()
}

/// The gateway's RDS route name for an HTTP server port: `http.<port>` (`https.<port>.<server>` for TLS, later).
pub fn gateway_route(port: u16) -> String {
    format!("http.{port}")
}

/// Virtual host name: `<host>:<port>`.
pub fn virtual_host(host: &str, port: u16) -> String {
    format!("{host}:{port}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_names_round_trip() {
        for s in [
            "outbound|80|v1|reviews.default.svc.cluster.local",
            "outbound|443||raw.githubusercontent.com",
            "inbound|3000||",
        ] {
            assert_eq!(s.parse::<ClusterName>().unwrap().to_string(), s);
        }
        assert_eq!(ClusterName::inbound(9080).to_string(), "inbound|9080||");
        assert!("outbound|x||h".parse::<ClusterName>().is_err());
        assert!("sideways|80||h".parse::<ClusterName>().is_err());
    }
}
