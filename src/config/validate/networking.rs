//! Validation rules for networking.istio.io kinds.
//!
//! The rules follow what istiod's validating webhook and the CRD's own schema (`x-kubernetes-validations`) refuse,
//! so a config rudder accepts is one Istio would accept too. Every problem is reported with its full path; a rule
//! that cannot be checked because a required part is missing reports the missing part and moves on.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::Serialize;

use super::{
    Report, check_host, check_percent, check_port, check_regex, check_string_match, dns1123_label,
    dns1123_subdomain,
};
use crate::config::istio::common::{Duration, Percent, StringMatch};
use crate::config::istio::networking::*;

mod destination_rule;
mod envoy_filter;
mod gateway;
mod service_entry;
mod sidecar;
#[cfg(test)]
mod tests;
mod virtual_service;

pub(super) use destination_rule::destination_rule;
pub(super) use envoy_filter::envoy_filter;
pub(super) use gateway::gateway;
pub(super) use service_entry::{service_entry, workload_entry, workload_group};
pub(super) use sidecar::sidecar;
pub(super) use virtual_service::virtual_service;

/// Protocols a ServiceEntry or Sidecar port may declare: Istio's full protocol list.
const PORT_PROTOCOLS: &[&str] = &[
    "HTTP",
    "HTTPS",
    "GRPC",
    "GRPC-WEB",
    "HTTP2",
    "HTTP_PROXY",
    "MONGO",
    "MYSQL",
    "REDIS",
    "TCP",
    "TLS",
    "UDP",
    "THRIFT",
];

// ---- Small checks shared by several kinds. ----

/// The YAML spelling of an enum value (`SIMPLE`, `DNS_ROUND_ROBIN`).
fn enum_name<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::from("?"),
    }
}

/// Durations Istio's CRD requires to be at least 1ms (timeouts, intervals, ejection times).
fn min_1ms(d: Option<Duration>, path: &str, r: &mut Report) {
    if let Some(d) = d
        && d.get() < std::time::Duration::from_millis(1)
    {
        r.err(path, format!("duration must be at least 1ms (found {d})"));
    }
}

fn non_negative(v: Option<i32>, path: &str, r: &mut Report) {
    if let Some(v) = v.filter(|v| *v < 0) {
        r.err(path, format!("must not be negative (found {v})"));
    }
}

fn percentage(p: Option<&Percent>, path: &str, r: &mut Report) {
    if let Some(p) = p
        && let Err(e) = check_percent(p.value)
    {
        r.err(format!("{path}.value"), e);
    }
}

fn required_port(p: Option<u32>, path: &str, r: &mut Report) {
    match p {
        None => r.err(path, "required"),
        Some(n) => {
            if let Err(e) = check_port(n) {
                r.err(path, e);
            }
        }
    }
}

fn optional_port(p: Option<u32>, path: &str, r: &mut Report) {
    if let Some(n) = p
        && let Err(e) = check_port(n)
    {
        r.err(path, e);
    }
}

fn port_protocol(proto: Option<&str>, path: &str, r: &mut Report) {
    if let Some(proto) = proto.filter(|p| !p.is_empty())
        && !PORT_PROTOCOLS.contains(&proto.to_ascii_uppercase().as_str())
    {
        r.err(
            path,
            format!(
                "unsupported protocol {proto:?} (expected one of {})",
                PORT_PROTOCOLS.join(", ")
            ),
        );
    }
}

fn is_ip_or_cidr(s: &str) -> bool {
    s.parse::<IpAddr>().is_ok() || s.parse::<ipnet::IpNet>().is_ok()
}

fn subnets(list: &[String], path: &str, r: &mut Report) {
    for (i, s) in list.iter().enumerate() {
        if !is_ip_or_cidr(s) {
            r.err(
                format!("{path}[{i}]"),
                format!("{s:?} is not an IP address or CIDR"),
            );
        }
    }
}

fn bind_address(bind: &str, path: &str, r: &mut Report) {
    if !bind.starts_with("unix://") && bind.parse::<IpAddr>().is_err() {
        r.err(
            path,
            format!("{bind:?} must be an IP address or a unix:// socket"),
        );
    }
}

/// `namespace/dnsName` hosts of Gateway servers (namespace optional) and Sidecar egress (namespace required,
/// `~` allowed).
fn namespaced_host(h: &str, path: &str, sidecar: bool, r: &mut Report) {
    let (ns, host) = match h.split_once('/') {
        Some((ns, host)) => (Some(ns), host),
        None if sidecar => {
            r.err(
                path,
                format!("host {h:?} must be in the form namespace/dnsName (e.g. \"./*\" or \"istio-system/*\")"),
            );
            return;
        }
        None => (None, h),
    };
    if host.contains('/') {
        r.err(
            path,
            format!("host {h:?} must be in the form namespace/dnsName"),
        );
        return;
    }
    if let Some(ns) = ns {
        let special = ns == "*" || ns == "." || (sidecar && ns == "~");
        if !special && dns1123_label(ns).is_err() {
            r.err(
                path,
                format!("namespace {ns:?} of host {h:?} must be \"*\", \".\" or a namespace name"),
            );
            return;
        }
    }
    if let Err(e) = check_host(host, true) {
        r.err(path, e);
    }
}

/// VirtualService gateway references: `mesh`, `name`, `namespace/name` (names may be FQDNs).
fn gateway_name(g: &str, path: &str, r: &mut Report) {
    if g == "mesh" {
        return;
    }
    let (ns, name) = match g.split_once('/') {
        Some((ns, name)) => (Some(ns), name),
        None => (None, g),
    };
    let ok = ns.is_none_or(|ns| dns1123_label(ns).is_ok())
        && !name.contains('/')
        && dns1123_subdomain(name).is_ok();
    if !ok {
        r.err(
            path,
            format!("gateway {g:?} must be \"mesh\", a Gateway name or namespace/name"),
        );
    }
}

fn export_to(list: &[String], path: &str, r: &mut Report) {
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    for (i, ns) in list.iter().enumerate() {
        let p = format!("{path}[{i}]");
        if ns != "." && ns != "*" && ns != "~" && dns1123_label(ns).is_err() {
            r.err(
                p,
                format!("{ns:?} must be \".\", \"*\", \"~\" or a namespace name"),
            );
        } else if !seen.insert(ns) {
            r.err(p, format!("duplicate namespace {ns:?}"));
        }
    }
    if list.len() > 1 && seen.contains("*") {
        r.err(
            path,
            "\"*\" already exports everywhere; list no other namespaces with it",
        );
    }
}

fn source_namespace(ns: Option<&str>, path: &str, r: &mut Report) {
    if let Some(ns) = ns.filter(|n| !n.is_empty())
        && let Err(e) = dns1123_label(ns)
    {
        r.err(format!("{path}.sourceNamespace"), e);
    }
}

/// An HTTP header name: a non-empty RFC 7230 token.
fn header_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("header name must not be empty".into());
    }
    let token = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if token {
        Ok(())
    } else {
        Err(format!(
            "invalid header name {name:?} (letters, digits and !#$%&'*+-.^_`|~ only)"
        ))
    }
}

/// Kubernetes label syntax for keys and values.
fn labels(map: &BTreeMap<String, String>, path: &str, r: &mut Report) {
    for (k, v) in map {
        let p = format!("{path}.{k}");
        if let Err(e) = label_key(k) {
            r.err(&p, e);
        }
        if !v.is_empty() && !is_label_name(v) {
            r.err(
                &p,
                format!(
                    "invalid label value {v:?} (at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit)"
                ),
            );
        }
    }
}

/// Workload selectors: label syntax, and no wildcards (the CRD refuses them).
fn selector_labels(map: &BTreeMap<String, String>, path: &str, r: &mut Report) {
    for (k, v) in map {
        if k.contains('*') || v.contains('*') {
            r.err(
                format!("{path}.{k}"),
                "wildcards are not supported in selectors",
            );
            return;
        }
    }
    labels(map, path, r);
}

fn label_key(k: &str) -> Result<(), String> {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, k),
    };
    if let Some(prefix) = prefix
        && dns1123_subdomain(prefix).is_err()
    {
        return Err(format!(
            "invalid label key {k:?}: the prefix must be a DNS subdomain"
        ));
    }
    if !is_label_name(name) {
        return Err(format!(
            "invalid label key {k:?} (at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit)"
        ));
    }
    Ok(())
}

fn is_label_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Port names of WorkloadEntry `ports` (as the CRD checks them).
fn is_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() < 63
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn is_base64(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    s.len().is_multiple_of(4)
        && s.len() - body.len() <= 2
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}
