//! The registry and config views: `/debug/registryz` (services), `/debug/endpointz` (endpoints per service port),
//! `/debug/configz` (every stored object, Secret contents redacted) and `/debug/push_status` (the last
//! snapshot's summary and problems).

use serde_json::{Value, json};

use crate::config::store::Store;
use crate::config::{Kind, Severity};
use crate::model::Snapshot;
use crate::model::builder::Built;

/// What replaces Secret values in any debug output.
pub const REDACTED: &str = "<redacted>";

/// Every service of the snapshot, ordered by hostname and namespace.
pub fn registryz(snapshot: &Snapshot) -> Value {
    let mut services: Vec<&crate::model::service::Service> = snapshot
        .registry
        .services()
        .iter()
        .map(|s| s.as_ref())
        .collect();
    services.sort_by(|a, b| (&a.hostname, &a.namespace).cmp(&(&b.hostname, &b.namespace)));
    serde_json::to_value(services).unwrap_or(Value::Null)
}

/// Endpoints per service port.
pub fn endpointz(snapshot: &Snapshot) -> Value {
    let mut out = Vec::new();
    let mut services: Vec<_> = snapshot.registry.services().iter().collect();
    services.sort_by(|a, b| (&a.hostname, &a.namespace).cmp(&(&b.hostname, &b.namespace)));
    for svc in services {
        for port in &svc.ports {
            out.push(json!({
                "service": svc.hostname,
                "namespace": svc.namespace,
                "port": port.port,
                "port_name": port.name,
                "endpoints": snapshot.registry.endpoints(svc, port.port),
            }));
        }
    }
    Value::Array(out)
}

/// Every object in the store as the API server would return it; Secrets keep their keys, never their values.
pub fn configz(store: &Store) -> Value {
    let objects = store
        .objects()
        .iter()
        .map(|o| {
            let mut v = o.to_json();
            if o.kind() == Kind::Secret {
                redact_secret(&mut v);
            }
            v
        })
        .collect();
    Value::Array(objects)
}

/// Replaces every value of `data` and `stringData`, and drops the last-applied annotation (it holds the data too).
pub fn redact_secret(v: &mut Value) {
    for field in ["data", "stringData"] {
        if let Some(map) = v.get_mut(field).and_then(Value::as_object_mut) {
            map.values_mut()
                .for_each(|x| *x = Value::String(REDACTED.to_owned()));
        }
    }
    if let Some(ann) = v
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        ann.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// The last snapshot: version, timings, counts, and every problem (`Kind ns/name: path: reason`), errors
/// (rejected config) apart from warnings.
pub fn push_status(built: &Built, store: &Store) -> Value {
    let snap = &built.snapshot;
    let lines = |sev: Severity| -> Vec<String> {
        snap.problems
            .iter()
            .filter(|p| p.severity == sev)
            .map(ToString::to_string)
            .collect()
    };
    json!({
        "version": snap.version,
        "build_time_ms": built.build_time.as_secs_f64() * 1e3,
        "debounce_time_ms": built.debounce_time.as_secs_f64() * 1e3,
        "changed_kinds": built.changes.kinds.iter().map(|k| k.name()).collect::<Vec<_>>(),
        "summary": snap.summary(),
        "store_objects": store.len(),
        "errors": lines(Severity::Error),
        "warnings": lines(Severity::Warning),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_values_are_redacted() {
        let mut v = json!({
            "kind": "Secret",
            "metadata": {"name": "s", "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": "{\"data\":{\"key\":\"c2VjcmV0\"}}",
                "keep": "me"}},
            "data": {"tls.key": "c2VjcmV0"},
            "stringData": {"password": "hunter2"},
        });
        redact_secret(&mut v);
        let s = v.to_string();
        assert!(!s.contains("c2VjcmV0") && !s.contains("hunter2"), "{s}");
        assert_eq!(v["data"]["tls.key"], REDACTED);
        assert_eq!(v["metadata"]["annotations"]["keep"], "me");
    }
}
