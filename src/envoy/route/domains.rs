//! Virtual host domains: every name a client may put in `Host` for a service, each with and without `:<port>`.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::model::service::{Origin, Service};
use crate::model::snapshot::DOMAIN_SUFFIX;

/// Domains of `service` on `port` as seen from a proxy in `proxy_ns`. For a Kubernetes service `name` in `ns`:
/// `name` (only from `ns` itself, as istiod: another namespace's short name would resolve to a different service),
/// `name.ns`, `name.ns.svc`, `name.ns.svc.cluster`, the FQDN, and the VIPs. ServiceEntry hosts are used as written.
pub fn service_domains(service: &Service, port: u16, proxy_ns: &str) -> Vec<String> {
    let mut names = Vec::new();
    match service.origin {
        Origin::Kubernetes => {
            let suffix = format!(".svc.{DOMAIN_SUFFIX}");
            if let Some(name_ns) = service.hostname.strip_suffix(&suffix) {
                if service.namespace == proxy_ns
                    && let Some((name, _)) = name_ns.split_once('.')
                {
                    names.push(name.to_string());
                }
                names.push(name_ns.to_string());
                names.push(format!("{name_ns}.svc"));
                names.push(format!("{name_ns}.svc.cluster"));
            }
            names.push(service.hostname.clone());
        }
        Origin::ServiceEntry => names.push(service.hostname.clone()),
    }
    // VIPs only: CIDR ranges and the unspecified address are not Host values.
    names.extend(
        service
            .addresses
            .iter()
            .filter(|a| a.parse::<IpAddr>().is_ok_and(|ip| !ip.is_unspecified()))
            .cloned(),
    );
    with_ports(&names, port)
}

/// Each name, then each name with `:<port>`. `*` stays alone: it already matches every host and port.
pub fn with_ports(names: &[String], port: u16) -> Vec<String> {
    let mut out = Vec::with_capacity(names.len() * 2);
    for n in names {
        out.push(n.clone());
        if n != "*" {
            out.push(format!("{n}:{port}"));
        }
    }
    out
}

/// Drops domains already used by an earlier virtual host of the same route configuration: Envoy rejects a
/// RouteConfiguration in which two virtual hosts share a domain. Returns the domains that were dropped.
pub fn dedupe(domains: &mut Vec<String>, seen: &mut BTreeSet<String>) -> Vec<String> {
    let mut dropped = Vec::new();
    domains.retain(|d| {
        if seen.insert(d.clone()) {
            true
        } else {
            dropped.push(d.clone());
            false
        }
    });
    dropped
}
