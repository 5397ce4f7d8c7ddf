//! Every property of Istio's published CRD schemas decodes into rudder's types.
//!
//! For each Istio kind rudder reads and each version its CRD serves, the test builds a sample object that sets
//! every property of the `spec` schema (and, over several samples, every enum value), then decodes it with the
//! loader. A field rudder's type does not know shows up as an unknown-field warning; a field typed differently
//! shows up as a decode error. Both fail the test, listed per kind, so a new Istio field is noticed when the
//! CRD file is updated. Each decoded sample is also validated (the rules must not panic on any field) and
//! serialized back, which must decode to the same object.
//!
//! The CRDs are read from `../shared/istio/crd-all.gen.yaml` relative to the repository.

use std::collections::BTreeMap;
use std::path::PathBuf;

use rudder::config::Kind;
use rudder::config::parse::{Document, decode_value, yaml_value};
use rudder::config::validate::validate;
use serde_json::{Map, Value, json};

fn crd_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/istio/crd-all.gen.yaml")
}

/// Every document of the CRD file, parsed with rudder's own YAML reader.
fn load_crds() -> Vec<Value> {
    let path = crd_file();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read Istio's CRDs at {}: {e}. This test needs the shared reference data \
             (shared/istio/crd-all.gen.yaml beside the repository checkout).",
            path.display()
        )
    });
    let mut docs = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        if line.trim_end() == "---" {
            docs.push(std::mem::take(&mut current));
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    docs.push(current);
    docs.iter()
        .filter(|d| !d.trim().is_empty())
        .map(|d| yaml_value(d).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

/// The largest `enum` list in a schema: that many samples cover every enum value.
fn max_enum_len(schema: &Value) -> usize {
    let own = schema
        .get("enum")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let children = ["properties", "additionalProperties"]
        .iter()
        .filter_map(|k| schema.get(*k))
        .flat_map(|v| match v {
            Value::Object(m) if m.contains_key("type") || m.contains_key("properties") => {
                vec![v]
            }
            Value::Object(m) => m.values().collect(),
            _ => vec![],
        })
        .chain(schema.get("items"))
        .map(max_enum_len)
        .max()
        .unwrap_or(0);
    own.max(children)
}

/// A value for `schema` that sets every property. Enums take their `variant`-th value (modulo length).
fn sample(schema: &Value, variant: usize) -> Value {
    if let Some(values) = schema.get("enum").and_then(Value::as_array)
        && !values.is_empty()
    {
        return values[variant % values.len()].clone();
    }
    if schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        return json!(1);
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                let map: Map<String, Value> = props
                    .iter()
                    .map(|(k, v)| (k.clone(), sample(v, variant)))
                    .collect();
                Value::Object(map)
            } else if let Some(ap) = schema
                .get("additionalProperties")
                .filter(|ap| ap.is_object())
            {
                // Maps are keyed `k`, except where the CRD's own rules parse keys as integers (port maps).
                let int_keys = schema
                    .get("x-kubernetes-validations")
                    .is_some_and(|v| v.to_string().contains("int(key)"));
                let key = if int_keys { "1" } else { "k" };
                json!({ key: sample(ap, variant) })
            } else {
                // Free-form (`x-kubernetes-preserve-unknown-fields`) or empty objects.
                json!({})
            }
        }
        Some("array") => match schema.get("items") {
            Some(items) => json!([sample(items, variant)]),
            None => json!([]),
        },
        // "1s" so that duration fields parse; plain strings take it as is.
        Some("string") => json!("1s"),
        Some("integer") => json!(1),
        Some("number") => json!(1.0),
        Some("boolean") => json!(true),
        _ if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) => {
            json!({})
        }
        _ => json!("1s"),
    }
}

/// Decodes every sample of every served version of `kind`'s CRD; returns the problems found.
fn check_kind(kind: Kind, crds: &[Value]) -> Vec<String> {
    let Some(crd) = crds.iter().find(|c| {
        c["kind"] == "CustomResourceDefinition"
            && c["spec"]["group"] == kind.group()
            && c["spec"]["names"]["kind"] == kind.name()
    }) else {
        return vec![format!(
            "no CRD for {}/{} in {}",
            kind.group(),
            kind.name(),
            crd_file().display()
        )];
    };
    let mut problems = Vec::new();
    let versions = crd["spec"]["versions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for version in versions.iter().filter(|v| v["served"] == true) {
        let name = version["name"].as_str().unwrap_or("?");
        let spec_schema = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
        if spec_schema.is_null() {
            problems.push(format!("{name}: the CRD has no spec schema"));
            continue;
        }
        let samples = max_enum_len(spec_schema).max(1);
        for variant in 0..samples {
            let doc = json!({
                "apiVersion": format!("{}/{}", kind.group(), name),
                "kind": kind.name(),
                "metadata": {"name": "x", "namespace": "y"},
                "spec": sample(spec_schema, variant),
            });
            match decode_value("crd-sample", doc, "default") {
                Document::Object { object, warnings } => {
                    problems.extend(warnings.iter().map(|w| format!("{name}: {}", w.path)));
                    // Every field set: the validators walk all of them and must not panic.
                    let _ = validate(&object);
                    // What rudder serializes (debug API, webhook) must read back as the same object.
                    match decode_value("round-trip", object.to_json(), "default") {
                        Document::Object { object: back, .. } if back == object => {}
                        Document::Object { object: back, .. } => problems.push(format!(
                            "{name}: serializing and decoding again changes the object:\n      before {}\n      after  {}",
                            object.to_json()["spec"],
                            back.to_json()["spec"]
                        )),
                        other => problems.push(format!(
                            "{name}: the serialized object does not decode again: {other:?}"
                        )),
                    }
                }
                Document::Invalid { errors, .. } => problems.extend(
                    errors
                        .iter()
                        .map(|e| format!("{name}: decode error at {}: {}", e.path, e.message)),
                ),
                Document::Skipped { api_version, .. } => {
                    problems.push(format!(
                        "{name}: {api_version} is served by the CRD but not read by rudder"
                    ));
                }
            }
        }
    }
    problems.sort();
    problems.dedup();
    problems
}

/// Checks every Istio kind of `group`, failing with all problems listed per kind.
fn check_group(group: &str) {
    let crds = load_crds();
    let kinds: Vec<Kind> = Kind::ALL
        .iter()
        .copied()
        .filter(|k| k.group() == group)
        .collect();
    assert!(!kinds.is_empty(), "rudder reads no {group} kinds");
    let failures: BTreeMap<String, Vec<String>> = kinds
        .iter()
        .map(|k| (k.name().to_string(), check_kind(*k, &crds)))
        .filter(|(_, p)| !p.is_empty())
        .collect();
    if !failures.is_empty() {
        let mut report = format!(
            "{group}: CRD fields that do not decode into rudder's types (unknown field paths, decode errors):\n"
        );
        for (kind, problems) in &failures {
            report.push_str(&format!("{kind} ({} problems):\n", problems.len()));
            for p in problems {
                report.push_str(&format!("    {p}\n"));
            }
        }
        panic!("{report}");
    }
}

#[test]
fn networking_kinds_decode_every_crd_field() {
    check_group("networking.istio.io");
}

#[test]
fn security_kinds_decode_every_crd_field() {
    check_group("security.istio.io");
}

#[test]
fn telemetry_kinds_decode_every_crd_field() {
    check_group("telemetry.istio.io");
}

#[test]
fn samples_set_every_property_and_enum_value() {
    let schema = json!({
        "type": "object",
        "properties": {
            "mode": {"type": "string", "enum": ["A", "B", "C"]},
            "port": {"type": "integer"},
            "names": {"type": "array", "items": {"type": "string"}},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "value": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            "target": {"x-kubernetes-int-or-string": true},
        }
    });
    assert_eq!(max_enum_len(&schema), 3);
    assert_eq!(
        sample(&schema, 4),
        json!({"mode": "B", "port": 1, "names": ["1s"], "labels": {"k": "1s"}, "value": {}, "target": 1})
    );
}

#[test]
fn an_unknown_field_is_reported_with_its_path() {
    let crds = load_crds();
    let crd = crds
        .iter()
        .find(|c| c["spec"]["names"]["kind"] == "VirtualService")
        .expect("VirtualService CRD");
    let mut spec = sample(
        &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"],
        0,
    );
    spec["http"][0]["notAnIstioField"] = json!(true);
    let doc = json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "x", "namespace": "y"},
        "spec": spec,
    });
    let Document::Object { warnings, .. } = decode_value("t", doc, "default") else {
        panic!("the sample should decode");
    };
    let paths: Vec<&str> = warnings.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(paths, ["spec.http[0].notAnIstioField"]);
}
