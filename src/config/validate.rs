//! Semantic validation with Istio's rules. Every problem of an object is reported (not just the first), each as
//! `Kind namespace/name: spec.field.path: what is wrong`.

mod kube;
mod legacy;
mod networking;
mod security;

use std::fmt::Display;

use super::istio::common::StringMatch;
use super::parse::{self, Document};
use super::{ConfigError, Object, ObjectKey, Severity};

/// Collects the problems of one object.
pub struct Report {
    key: ObjectKey,
    errors: Vec<ConfigError>,
}

impl Report {
    /// An empty report for the object `key`.
    pub fn new(key: ObjectKey) -> Self {
        Report {
            key,
            errors: Vec::new(),
        }
    }

    /// Records an error at `path`.
    pub fn err(&mut self, path: impl Display, message: impl Into<String>) {
        self.errors
            .push(ConfigError::for_key(&self.key, path.to_string(), message));
    }

    /// Records a warning at `path`: the object is still accepted.
    pub fn warn(&mut self, path: impl Display, message: impl Into<String>) {
        self.errors.push(
            ConfigError::for_key(&self.key, path.to_string(), message).severity(Severity::Warning),
        );
    }

    /// The namespace of the object being validated.
    pub fn namespace(&self) -> &str {
        &self.key.namespace
    }

    /// The object being validated.
    pub fn key(&self) -> &ObjectKey {
        &self.key
    }

    /// Everything recorded.
    pub fn finish(self) -> Vec<ConfigError> {
        self.errors
    }
}

/// Validates one decoded object. Returns errors and warnings; the object is acceptable when none is an error.
pub fn validate(obj: &Object) -> Vec<ConfigError> {
    let mut r = Report::new(obj.key());
    metadata(obj, &mut r);
    match obj {
        Object::Namespace(_) | Object::Secret(_) | Object::ConfigMap(_) | Object::Deployment(_) => {
        }
        Object::Service(o) => kube::service(o, &mut r),
        Object::Endpoints(o) => kube::endpoints(o, &mut r),
        Object::EndpointSlice(o) => kube::endpoint_slice(o, &mut r),
        Object::Pod(o) => kube::pod(o, &mut r),
        Object::Gateway(o) => networking::gateway(&o.spec, &mut r),
        Object::VirtualService(o) => networking::virtual_service(&o.spec, &mut r),
        Object::DestinationRule(o) => networking::destination_rule(&o.spec, &mut r),
        Object::ServiceEntry(o) => networking::service_entry(&o.spec, &mut r),
        Object::Sidecar(o) => networking::sidecar(&o.spec, &mut r),
        Object::WorkloadEntry(o) => networking::workload_entry(&o.spec, &mut r),
        Object::WorkloadGroup(o) => networking::workload_group(&o.spec, &mut r),
        Object::EnvoyFilter(o) => networking::envoy_filter(&o.spec, &mut r),
        Object::PeerAuthentication(o) => security::peer_authentication(&o.spec, &mut r),
        Object::RequestAuthentication(o) => security::request_authentication(&o.spec, &mut r),
        Object::AuthorizationPolicy(o) => security::authorization_policy(&o.spec, &mut r),
        Object::Telemetry(o) => security::telemetry(&o.spec, &mut r),
        Object::Policy(o) | Object::MeshPolicy(o) => legacy::policy(&o.spec, &mut r),
        Object::ClusterRbacConfig(o) | Object::RbacConfig(o) => {
            legacy::rbac_config(&o.spec, &mut r)
        }
        Object::ServiceRole(o) => legacy::service_role(&o.spec, &mut r),
        Object::ServiceRoleBinding(o) => legacy::service_role_binding(&o.spec, &mut r),
        Object::Handler(o) => legacy::handler(&o.spec, &mut r),
        Object::Instance(o) => legacy::instance(&o.spec, &mut r),
        Object::Rule(o) => legacy::rule(&o.spec, &mut r),
        Object::QuotaSpec(o) => legacy::quota_spec(&o.spec, &mut r),
        Object::QuotaSpecBinding(o) => legacy::quota_spec_binding(&o.spec, &mut r),
        Object::TrafficSplit(o) => legacy::traffic_split(&o.spec, &mut r),
    }
    r.finish()
}

/// Names must be DNS-1123 subdomains (namespaces: labels), as the API server would insist.
fn metadata(obj: &Object, r: &mut Report) {
    let m = obj.meta();
    let name = m.name.as_deref().unwrap_or_default();
    if let Err(e) = dns1123_subdomain(name) {
        r.err("metadata.name", e);
    }
    if let Some(ns) = m.namespace.as_deref().filter(|ns| !ns.is_empty())
        && let Err(e) = dns1123_label(ns)
    {
        r.err("metadata.namespace", e);
    }
}

/// The outcome of validating one document of a file.
#[derive(Debug)]
pub struct Checked {
    /// The object, when the document decoded.
    pub object: Option<Object>,
    /// The key, when known.
    pub key: Option<ObjectKey>,
    /// Errors and warnings, in document order.
    pub problems: Vec<ConfigError>,
    /// `Some(kind)` when the document is of a kind rudder does not read.
    pub skipped: Option<String>,
}

impl Checked {
    /// Whether the document is acceptable (no error-level problem).
    pub fn is_valid(&self) -> bool {
        self.problems.iter().all(|p| p.severity != Severity::Error)
    }
}

/// Parses and validates every document of a file. With `strict`, unknown fields are errors (the `validate`
/// command and the admission webhook); otherwise warnings (the loaders).
pub fn check_file(
    origin: &str,
    text: &[u8],
    default_namespace: &str,
    strict: bool,
) -> Vec<Checked> {
    parse::parse_documents(origin, text, default_namespace)
        .into_iter()
        .map(|doc| check_document(doc, strict))
        .collect()
}

/// Validates one parsed document.
pub fn check_document(doc: Document, strict: bool) -> Checked {
    match doc {
        Document::Object { object, warnings } => {
            let mut problems: Vec<ConfigError> = warnings
                .into_iter()
                .map(|w| {
                    if strict {
                        w.severity(Severity::Error)
                    } else {
                        w
                    }
                })
                .collect();
            problems.extend(validate(&object));
            Checked {
                key: Some(object.key()),
                object: Some(object),
                problems,
                skipped: None,
            }
        }
        Document::Skipped { api_version, kind } => Checked {
            object: None,
            key: None,
            problems: vec![],
            skipped: Some(format!("{api_version} {kind}")),
        },
        Document::Invalid { key, errors } => Checked {
            object: None,
            key,
            problems: errors,
            skipped: None,
        },
    }
}

// ---- Shared rule helpers used by the per-group validators. ----

/// A DNS-1123 label: lower-case alphanumerics and '-', starting and ending alphanumeric, at most 63 characters.
pub fn dns1123_label(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("required".into());
    }
    if s.len() > 63 {
        return Err(format!("{s:?} is longer than 63 characters"));
    }
    let ok_chars = s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ok_ends = s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !ok_chars || !ok_ends {
        return Err(format!(
            "{s:?} is not a DNS-1123 label (lower-case letters, digits and '-', starting and ending with a letter or digit)"
        ));
    }
    Ok(())
}

/// A DNS-1123 subdomain: dot-separated labels, at most 253 characters.
pub fn dns1123_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("required".into());
    }
    if s.len() > 253 {
        return Err(format!("{s:?} is longer than 253 characters"));
    }
    for label in s.split('.') {
        dns1123_label(label).map_err(|_| {
            format!("{s:?} is not a DNS-1123 subdomain (lower-case letters, digits, '-' and '.')")
        })?;
    }
    Ok(())
}

/// An Istio host: a FQDN or short name, optionally starting with `*` (`*.example.com`, or `*` alone when
/// `allow_bare_wildcard`). Upper case is refused like istiod does.
pub fn check_host(host: &str, allow_bare_wildcard: bool) -> Result<(), String> {
    if host.is_empty() {
        return Err("host must not be empty".into());
    }
    if host == "*" {
        return if allow_bare_wildcard {
            Ok(())
        } else {
            Err("wildcard host \"*\" is not allowed here".into())
        };
    }
    let rest = host.strip_prefix("*.").unwrap_or(host);
    if rest.contains('*') {
        return Err(format!(
            "host {host:?}: a wildcard is only allowed as the first label (\"*.example.com\")"
        ));
    }
    if host.len() > 255 {
        return Err(format!("host {host:?} is longer than 255 characters"));
    }
    for label in rest.split('.') {
        let valid = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !valid {
            return Err(format!(
                "host {host:?} is not a valid DNS name (lower-case labels of letters, digits and '-')"
            ));
        }
    }
    Ok(())
}

/// A TCP/UDP port number 1–65535.
pub fn check_port(port: impl Into<i64>) -> Result<(), String> {
    let p = port.into();
    if (1..=65535).contains(&p) {
        Ok(())
    } else {
        Err(format!("port number {p} must be in the range 1..65535"))
    }
}

/// A regular expression Envoy will accept: RE2 syntax, which the `regex` crate shares (no look-around, no
/// backreferences).
pub fn check_regex(re: &str) -> Result<(), String> {
    regex::Regex::new(re).map(|_| ()).map_err(|e| {
        let msg = e.to_string();
        let last = msg
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or("invalid")
            .trim()
            .to_string();
        format!(
            "invalid RE2 regex {re:?}: {}",
            last.trim_start_matches("error: ")
        )
    })
}

/// `StringMatch`: exactly one of exact/prefix/regex, and a regex must compile.
pub fn check_string_match(m: &StringMatch, path: impl Display, r: &mut Report) {
    let set = [m.exact.is_some(), m.prefix.is_some(), m.regex.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if set != 1 {
        r.err(
            &path,
            format!("exactly one of exact, prefix or regex must be set (found {set})"),
        );
    }
    if let Some(re) = &m.regex
        && let Err(e) = check_regex(re)
    {
        r.err(format!("{path}.regex"), e);
    }
}

/// A percentage 0–100.
pub fn check_percent(value: f64) -> Result<(), String> {
    if (0.0..=100.0).contains(&value) {
        Ok(())
    } else {
        Err(format!("percentage {value} must be in the range 0..100"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        for ok in [
            "a",
            "reviews.default.svc.cluster.local",
            "*.example.com",
            "x-1.y",
        ] {
            assert!(check_host(ok, false).is_ok(), "{ok}");
        }
        assert!(check_host("*", true).is_ok());
        for bad in ["", "*", "a.*.b", "UPPER.case", "-a.b", "a..b", "a_b"] {
            assert!(check_host(bad, false).is_err(), "{bad}");
        }
    }

    #[test]
    fn regexes_are_re2() {
        assert!(check_regex("^/api/v[0-9]+/.*").is_ok());
        assert!(check_regex("(?=look)ahead").is_err());
        assert!(check_regex("(unclosed").is_err());
    }
}
