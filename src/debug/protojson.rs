//! Proto3 JSON of Envoy messages, as Envoy's admin `/config_dump` prints them (proto field names, enums by name,
//! 64-bit integers as strings, `Any` expanded with `@type`), via `prost-reflect` and a descriptor set of Envoy's
//! v3 API compiled by `build.rs` from the protos shipped in `envoy-types`.

use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde_json::Value;

/// The encoded `FileDescriptorSet` written by `build.rs`.
static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptors.bin"));

/// Why a resource could not be rendered.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The embedded descriptor set does not decode (a build problem).
    #[error("Envoy descriptor set is invalid: {0}")]
    Pool(String),
    /// The type URL names a message the descriptor set does not have.
    #[error("unknown message type {0}")]
    UnknownType(String),
    /// The bytes are not a valid message of that type.
    #[error("cannot decode {type_url}: {reason}")]
    Decode {
        /// The type URL.
        type_url: String,
        /// The decoder's reason.
        reason: String,
    },
}

/// Envoy's descriptor pool, decoded once (about 1 MB, a few ms).
pub fn pool() -> Result<&'static DescriptorPool, Error> {
    static POOL: OnceLock<Result<DescriptorPool, String>> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(DESCRIPTORS).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| Error::Pool(e.clone()))
}

/// The message name of a type URL (`type.googleapis.com/envoy.config.cluster.v3.Cluster` → the part after `/`).
fn message_name(type_url: &str) -> &str {
    type_url.rsplit_once('/').map_or(type_url, |(_, n)| n)
}

/// Renders an encoded message as proto3 JSON with a leading `@type`, like an `Any` in Envoy's config dump.
pub fn to_json(type_url: &str, bytes: &[u8]) -> Result<Value, Error> {
    let pool = pool()?;
    let name = message_name(type_url);
    let desc = pool
        .get_message_by_name(name)
        .ok_or_else(|| Error::UnknownType(type_url.to_owned()))?;
    let decode_err = |reason: String| Error::Decode {
        type_url: type_url.to_owned(),
        reason,
    };
    let msg = DynamicMessage::decode(desc, bytes).map_err(|e| decode_err(e.to_string()))?;
    // Envoy's dump uses proto field names and omits defaults; `Any`s are expanded through the same pool.
    let opts = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(true);
    let mut value = msg
        .serialize_with_options(serde_json::value::Serializer, &opts)
        .map_err(|e| decode_err(e.to_string()))?;
    if let Value::Object(map) = &mut value {
        map.insert(
            "@type".to_owned(),
            Value::String(format!("type.googleapis.com/{name}")),
        );
    }
    redact(&mut value);
    Ok(value)
}

/// Fields whose values never leave the control plane in debug output (Envoy marks them `sensitive`).
const SENSITIVE: [&str; 4] = [
    "private_key",
    "password",
    "session_ticket_keys",
    "hmac_secret",
];

/// Replaces inline key material under sensitive fields with `[redacted]`, as Envoy's admin does.
pub fn redact(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if SENSITIVE.contains(&k.as_str()) {
                    redact_inline(v);
                } else {
                    redact(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// A `DataSource` (or a list of them): inline contents are replaced, file names are kept.
fn redact_inline(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if k.starts_with("inline_") {
                    *v = Value::String("[redacted]".to_owned());
                } else if v.is_object() || v.is_array() {
                    redact_inline(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_inline),
        Value::String(s) => *s = "[redacted]".to_owned(),
        _ => {}
    }
}

/// Every `filter_metadata.istio.config` back-reference anywhere in a rendered resource (clusters carry the
/// DestinationRule, listeners and filter chains the VirtualService or Gateway), deduplicated, in order.
pub fn istio_config_refs(value: &Value) -> Vec<String> {
    let mut out = Vec::new();
    collect_refs(value, &mut out);
    out
}

fn collect_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(config) = map
                .get("filter_metadata")
                .and_then(|f| f.get("istio"))
                .and_then(|i| i.get("config"))
            {
                let refs: Vec<&str> = match config {
                    Value::String(s) => vec![s.as_str()],
                    Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
                    _ => Vec::new(),
                };
                for r in refs {
                    if !out.iter().any(|o| o == r) {
                        out.push(r.to_owned());
                    }
                }
            }
            map.values().for_each(|v| collect_refs(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

/// `/apis/networking.istio.io/v1/namespaces/shop/destination-rule/db` → `DestinationRule shop/db` (the way
/// rudder names objects in every message); unknown shapes are returned unchanged.
pub fn describe_ref(r: &str) -> String {
    let parts: Vec<&str> = r.trim_start_matches('/').split('/').collect();
    if let ["apis", _group, _version, "namespaces", ns, slug, name] = parts[..] {
        let kind: String = slug
            .split('-')
            .map(|w| {
                let mut c = w.chars();
                c.next()
                    .map(|f| f.to_uppercase().chain(c).collect::<String>())
                    .unwrap_or_default()
            })
            .collect();
        return format!("{kind} {ns}/{name}");
    }
    r.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::core::v3::Metadata;
    use envoy_types::pb::google::protobuf::{Duration, Struct, Value as PbValue, value::Kind};
    use prost::{Message, Name};

    #[test]
    fn renders_cluster_like_envoy() {
        let cluster = Cluster {
            name: "outbound|80||a.b.svc.cluster.local".into(),
            connect_timeout: Some(Duration {
                seconds: 10,
                nanos: 0,
            }),
            metadata: Some(Metadata {
                filter_metadata: [(
                    "istio".to_owned(),
                    Struct {
                        fields: [(
                            "config".to_owned(),
                            PbValue {
                                kind: Some(Kind::StringValue(
                                    "/apis/networking.istio.io/v1/namespaces/b/destination-rule/a"
                                        .into(),
                                )),
                            },
                        )]
                        .into(),
                    },
                )]
                .into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let json = to_json(&Cluster::type_url(), &cluster.encode_to_vec()).unwrap();
        assert_eq!(
            json["@type"],
            "type.googleapis.com/envoy.config.cluster.v3.Cluster"
        );
        assert_eq!(json["name"], "outbound|80||a.b.svc.cluster.local");
        assert_eq!(json["connect_timeout"], "10s");
        assert!(json.get("per_connection_buffer_limit_bytes").is_none());
        let refs = istio_config_refs(&json);
        assert_eq!(refs.len(), 1);
        assert_eq!(describe_ref(&refs[0]), "DestinationRule b/a");
    }

    #[test]
    fn redacts_inline_keys_only() {
        let mut v = serde_json::json!({"tls_certificate": {
            "certificate_chain": {"inline_string": "CERT"},
            "private_key": {"inline_bytes": "S0VZ"},
        }, "other": {"private_key": {"filename": "/etc/key.pem"}}});
        redact(&mut v);
        assert_eq!(
            v["tls_certificate"]["certificate_chain"]["inline_string"],
            "CERT"
        );
        assert_eq!(
            v["tls_certificate"]["private_key"]["inline_bytes"],
            "[redacted]"
        );
        assert_eq!(v["other"]["private_key"]["filename"], "/etc/key.pem");
    }

    #[test]
    fn unknown_type_is_an_error() {
        let err = to_json("type.googleapis.com/nope.Nothing", &[]).unwrap_err();
        assert!(err.to_string().contains("unknown message type"));
    }
}
