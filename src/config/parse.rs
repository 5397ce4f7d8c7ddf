//! Turns YAML/JSON text into typed objects: document splitting, hostile-input budgets, kind lookup, decoding with
//! field paths, unknown-field detection and defaulting. Validation of the decoded objects lives in `validate`.

use serde::de::DeserializeOwned;

use super::kind::{self, Kind, Object, ObjectKey};
use super::{ConfigError, Severity};

/// Largest file the loader reads. Real mesh config files are kilobytes; this stops a stray log or dump.
pub const MAX_FILE_BYTES: usize = 4 * 1024 * 1024;

/// How one document of a file turned out.
#[derive(Debug)]
pub enum Document {
    /// A typed object, with warnings (unknown fields) that do not stop it loading.
    Object {
        object: Object,
        warnings: Vec<ConfigError>,
    },
    /// A document of a kind rudder does not read (a Knative Service, a CRD, a `List` of nothing …). Not an error.
    Skipped { api_version: String, kind: String },
    /// A document that could not be decoded. `key` is known when the document had apiVersion/kind/name.
    Invalid {
        key: Option<ObjectKey>,
        errors: Vec<ConfigError>,
    },
}

/// Parses every document of one file. `origin` names the file in errors of documents without a usable key;
/// `default_namespace` is given to namespaced objects without one (as `kubectl apply` would).
pub fn parse_documents(origin: &str, text: &[u8], default_namespace: &str) -> Vec<Document> {
    if text.len() > MAX_FILE_BYTES {
        return vec![file_error(
            origin,
            format!(
                "file is {} bytes, over the {} byte limit",
                text.len(),
                MAX_FILE_BYTES
            ),
        )];
    }
    if text.contains(&0) {
        return vec![file_error(
            origin,
            "binary file (contains NUL bytes), not YAML".into(),
        )];
    }
    let Ok(text) = std::str::from_utf8(text) else {
        return vec![file_error(origin, "not UTF-8 text, not YAML".into())];
    };
    split_documents(text)
        .into_iter()
        .enumerate()
        .filter(|(_, doc)| !is_blank(doc))
        .flat_map(|(i, doc)| {
            parse_document(
                &format!("{origin}: document {}", i + 1),
                doc,
                default_namespace,
            )
        })
        .collect()
}

fn file_error(origin: &str, message: String) -> Document {
    Document::Invalid {
        key: None,
        errors: vec![ConfigError::new(origin, "", message)],
    }
}

/// Splits a YAML stream on `---` lines. Done by hand so that a syntax error in one document does not hide the
/// documents after it.
fn split_documents(text: &str) -> Vec<&str> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_end();
        let is_marker =
            trimmed == "---" || trimmed.starts_with("--- ") || trimmed.starts_with("---\t");
        if is_marker {
            docs.push(&text[start..offset]);
            // Content after the marker on the same line (`--- # comment`, `--- {…}`) belongs to the next document.
            start = offset + 3;
        } else if trimmed == "..." {
            docs.push(&text[start..offset]);
            start = offset + line.len();
        }
        offset += line.len();
    }
    docs.push(&text[start..]);
    docs
}

fn is_blank(doc: &str) -> bool {
    doc.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || l.starts_with('%')
    })
}

fn yaml_options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    // Istio objects nest ~15 levels; EnvoyFilter patches a few more. 64 leaves room and stops depth bombs.
    budget.max_depth = 64;
    budget.max_nodes = 250_000;
    budget.max_events = 1_000_000;
    budget.max_aliases = 1_000;
    budget.max_total_scalar_bytes = MAX_FILE_BYTES;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    // YAML 1.2 booleans only: `n`, `no`, `on` stay strings (a namespace called `n` is not `false`).
    options.strict_booleans = true;
    options
}

/// Parses one YAML (or JSON, which is YAML) document into a JSON value, under the budgets.
pub fn yaml_value(doc: &str) -> Result<serde_json::Value, String> {
    serde_saphyr::from_str_with_options::<serde_json::Value>(doc, yaml_options()).map_err(|e| {
        let msg = e.to_string();
        // Keep the error on one line: the store and debug API list errors line by line.
        let first = msg
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("invalid YAML");
        format!("invalid YAML: {}", first.trim())
    })
}

fn parse_document(origin: &str, doc: &str, default_namespace: &str) -> Vec<Document> {
    let value = match yaml_value(doc) {
        Ok(v) => v,
        Err(e) => return vec![file_error(origin, e)],
    };
    match value {
        serde_json::Value::Null => vec![],
        // `kind: List` (kubectl get -o yaml) carries its objects in `items`.
        serde_json::Value::Object(ref m)
            if m.get("kind").and_then(|k| k.as_str()) == Some("List") =>
        {
            match m.get("items") {
                Some(serde_json::Value::Array(items)) => items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        decode_value(
                            &format!("{origin} item {i}"),
                            item.clone(),
                            default_namespace,
                        )
                    })
                    .collect(),
                _ => vec![file_error(origin, "List without items".into())],
            }
        }
        v => vec![decode_value(origin, v, default_namespace)],
    }
}

/// Decodes one JSON value that should be a Kubernetes-style object.
pub fn decode_value(origin: &str, value: serde_json::Value, default_namespace: &str) -> Document {
    let serde_json::Value::Object(map) = &value else {
        return file_error(
            origin,
            format!(
                "expected a mapping with apiVersion and kind, found {}",
                type_name(&value)
            ),
        );
    };
    let api_version = map
        .get("apiVersion")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    let kind_str = map
        .get("kind")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    if api_version.is_empty() || kind_str.is_empty() {
        let missing = if api_version.is_empty() {
            "apiVersion"
        } else {
            "kind"
        };
        return file_error(origin, format!("{missing}: required"));
    }
    let Some(kind) = Kind::from_api(&api_version, &kind_str) else {
        return Document::Skipped {
            api_version,
            kind: kind_str,
        };
    };
    let name = map
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .unwrap_or_default()
        .to_string();
    let namespace = map
        .get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(|n| n.as_str())
        .filter(|n| !n.is_empty())
        .unwrap_or(default_namespace)
        .to_string();
    let key = ObjectKey::new(kind, namespace.clone(), name.clone());
    if name.is_empty() {
        return Document::Invalid {
            key: None,
            errors: vec![ConfigError::new(
                format!("{origin}: {kind}"),
                "metadata.name",
                "required",
            )],
        };
    }

    let mut unknown = Vec::new();
    let decoded = kind::decode(kind, value, &mut |path| unknown.push(path));
    match decoded {
        Ok(object) => {
            let object = kind::with_namespace(object, &namespace);
            let warnings = unknown
                .into_iter()
                .map(|path| {
                    ConfigError::for_key(&key, path, "unknown field").severity(Severity::Warning)
                })
                .collect();
            Document::Object { object, warnings }
        }
        Err((path, message)) => Document::Invalid {
            key: Some(key.clone()),
            errors: vec![ConfigError::for_key(&key, path, message)],
        },
    }
}

/// Deserializes `value` as `T`, reporting the path of the first error and every field `T` ignores.
pub(crate) fn decode_typed<T: DeserializeOwned>(
    value: serde_json::Value,
    ignored: &mut dyn FnMut(String),
) -> Result<T, (String, String)> {
    let mut cb = |path: serde_ignored::Path<'_>| ignored(render_ignored_path(&path));
    let de = serde_ignored::Deserializer::new(value, &mut cb);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        (path, e.into_inner().to_string())
    })
}

/// Renders a serde_ignored path as `spec.http[0].foo`.
fn render_ignored_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", render_ignored_path(parent)),
        Path::Map { parent, key } => {
            let p = render_ignored_path(parent);
            if p.is_empty() {
                key.clone()
            } else {
                format!("{p}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => render_ignored_path(parent),
    }
}

fn type_name(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objects(docs: &[Document]) -> usize {
        docs.iter()
            .filter(|d| matches!(d, Document::Object { .. }))
            .count()
    }

    #[test]
    fn splits_documents_and_skips_blank_ones() {
        let text = "---\n# only a comment\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n--- \napiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n...\n";
        let docs = parse_documents("t.yaml", text.as_bytes(), "default");
        assert_eq!(objects(&docs), 2, "{docs:?}");
    }

    #[test]
    fn a_broken_document_does_not_hide_the_next() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: [\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: ok}\n";
        let docs = parse_documents("t.yaml", text.as_bytes(), "default");
        assert_eq!(objects(&docs), 1);
        let Document::Invalid { errors, .. } = &docs[0] else {
            panic!("{docs:?}")
        };
        assert!(
            errors[0]
                .to_string()
                .starts_with("t.yaml: document 1: invalid YAML"),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn namespace_defaults_and_unknown_kinds_are_skipped() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n---\napiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: k}\n";
        let docs = parse_documents("t.yaml", text.as_bytes(), "shop");
        let Document::Object { object, .. } = &docs[0] else {
            panic!("{docs:?}")
        };
        assert_eq!(object.key().to_string(), "Service shop/s");
        assert!(matches!(&docs[1], Document::Skipped { kind, .. } if kind == "Service"));
    }

    #[test]
    fn unknown_fields_are_warnings_with_paths() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: n}\nspec:\n  ports:\n  - port: 80\n    colour: red\n";
        let docs = parse_documents("t.yaml", text.as_bytes(), "default");
        let Document::Object { warnings, .. } = &docs[0] else {
            panic!("{docs:?}")
        };
        assert_eq!(warnings.len(), 1);
        assert_eq!(
            warnings[0].to_string(),
            "Service n/s: spec.ports[0].colour: unknown field"
        );
    }

    #[test]
    fn type_errors_carry_the_field_path() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: n}\nspec:\n  ports:\n  - port: eighty\n";
        let docs = parse_documents("t.yaml", text.as_bytes(), "default");
        let Document::Invalid { key, errors } = &docs[0] else {
            panic!("{docs:?}")
        };
        assert_eq!(key.as_ref().unwrap().to_string(), "Service n/s");
        assert!(
            errors[0]
                .to_string()
                .starts_with("Service n/s: spec.ports[0].port: invalid type"),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn hostile_input_is_refused_quickly() {
        // Billion laughs: each level multiplies the previous by nine.
        let mut bomb = String::from(
            "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
        );
        for (prev, next) in ["a", "b", "c", "d", "e", "f", "g", "h"]
            .iter()
            .zip(["b", "c", "d", "e", "f", "g", "h", "i"])
        {
            bomb.push_str(&format!("{next}: &{next} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"));
        }
        let docs = parse_documents("bomb.yaml", bomb.as_bytes(), "default");
        assert!(matches!(&docs[0], Document::Invalid { .. }), "{docs:?}");

        let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
        let docs = parse_documents("deep.yaml", deep.as_bytes(), "default");
        assert!(matches!(&docs[0], Document::Invalid { .. }), "{docs:?}");

        let docs = parse_documents("bin.yaml", b"\x00\x01\x02", "default");
        assert!(docs[0].to_string_errors().contains("binary file"));

        let big = vec![b'#'; MAX_FILE_BYTES + 1];
        let docs = parse_documents("big.yaml", &big, "default");
        assert!(docs[0].to_string_errors().contains("over the"));
    }

    impl Document {
        fn to_string_errors(&self) -> String {
            match self {
                Document::Invalid { errors, .. } => errors
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("\n"),
                _ => String::new(),
            }
        }
    }
}
