//! `/debug/config_dump?proxyID=`: what rudder sent a proxy on its stream, shaped like Envoy's admin
//! `/config_dump` (`ClustersConfigDump.dynamic_active_clusters[].cluster`, …) so the two diff section by section.

use serde_json::{Value, json};

use super::protojson;
use super::sync::TYPES;
use crate::xds::{ConnectionStatus, Protocol, SentResource, type_url};

/// The `?types=` list (`cds,eds,lds,rds,sds`); all of them when absent.
pub fn parse_types(types: Option<&str>) -> Result<Vec<&'static str>, String> {
    let Some(types) = types.filter(|t| !t.is_empty()) else {
        return Ok(TYPES.iter().map(|(_, url)| *url).collect());
    };
    types
        .split(',')
        .map(|t| {
            TYPES
                .iter()
                .find(|(short, _)| short.eq_ignore_ascii_case(t.trim()))
                .map(|(_, url)| *url)
                .ok_or_else(|| format!("unknown type {t:?} (use cds, eds, lds, rds, sds)"))
        })
        .collect()
}

/// The config dump of one stream, sections in Envoy's order (clusters, endpoints, listeners, routes, secrets).
pub fn dump(conn: &ConnectionStatus, types: &[&str]) -> Value {
    let mut configs = Vec::new();
    for (_, url) in TYPES {
        if !types.contains(&url) {
            continue;
        }
        let Some(status) = conn.types.get(url) else {
            continue;
        };
        let mut items = Vec::new();
        for (name, sent) in status.sent.iter() {
            // SotW: Envoy records the response's version_info; delta: the resource's own version.
            let version = match conn.protocol {
                Protocol::Sotw => status.version_sent.clone().unwrap_or_default(),
                Protocol::Delta => sent.version().to_owned(),
            };
            let body = match sent {
                SentResource::Sent(r) => protojson::to_json(&r.type_url, &r.bytes)
                    .unwrap_or_else(|e| json!({"error": e.to_string()})),
                // Held by the proxy from an earlier stream; rudder has not sent it on this one.
                SentResource::Claimed { .. } => json!({"claimed": true}),
            };
            items.push(section_item(url, name, version, body));
        }
        configs.push(section(url, items));
    }
    json!({ "configs": configs })
}

/// One entry of a section, with Envoy's field names for the type.
fn section_item(url: &str, name: &str, version: String, body: Value) -> Value {
    match url {
        type_url::CLUSTER => json!({"version_info": version, "cluster": body}),
        type_url::ENDPOINT => json!({"version_info": version, "endpoint_config": body}),
        type_url::LISTENER => json!({
            "name": name,
            "active_state": {"version_info": version, "listener": body},
        }),
        type_url::ROUTE => json!({"version_info": version, "route_config": body}),
        _ => json!({"name": name, "version_info": version, "secret": body}),
    }
}

/// A typed section (`envoy.admin.v3.ClustersConfigDump`, …).
fn section(url: &str, items: Vec<Value>) -> Value {
    let (ty, field) = match url {
        type_url::CLUSTER => ("ClustersConfigDump", "dynamic_active_clusters"),
        type_url::ENDPOINT => ("EndpointsConfigDump", "dynamic_endpoint_configs"),
        type_url::LISTENER => ("ListenersConfigDump", "dynamic_listeners"),
        type_url::ROUTE => ("RoutesConfigDump", "dynamic_route_configs"),
        _ => ("SecretsConfigDump", "dynamic_active_secrets"),
    };
    json!({
        "@type": format!("type.googleapis.com/envoy.admin.v3.{ty}"),
        field: items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_type_lists() {
        assert_eq!(parse_types(None).unwrap().len(), 5);
        assert_eq!(
            parse_types(Some("cds, LDS")).unwrap(),
            [type_url::CLUSTER, type_url::LISTENER]
        );
        assert!(parse_types(Some("cds,xds")).unwrap_err().contains("xds"));
    }
}
