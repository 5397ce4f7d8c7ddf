//! Compares two config dumps section by section and resource by resource: rudder's `/debug/config_dump` for a
//! proxy against that Envoy's own admin `/config_dump?include_eds` (`rudder proxy-status PROXY --envoy-admin`).
//! Resources compare as rendered JSON, except endpoints, which compare by address (see `diff_dumps`).

use std::collections::BTreeMap;

use serde_json::Value;

/// Sections compared: (label, field in the typed dump, pointer to the resource in an entry, name field).
const SECTIONS: [(&str, &str, &str, &str); 5] = [
    ("clusters", "dynamic_active_clusters", "/cluster", "name"),
    (
        "endpoints",
        "dynamic_endpoint_configs",
        "/endpoint_config",
        "cluster_name",
    ),
    (
        "listeners",
        "dynamic_listeners",
        "/active_state/listener",
        "name",
    ),
    ("routes", "dynamic_route_configs", "/route_config", "name"),
    ("secrets", "dynamic_active_secrets", "/secret", "name"),
];

/// The comparison of one section.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SectionDiff {
    /// `clusters`, `endpoints`, `listeners`, `routes` or `secrets`.
    pub section: &'static str,
    /// Resources present in both with equal content.
    pub in_sync: usize,
    /// Present in both, content differs.
    pub differ: Vec<String>,
    /// Sent by rudder, absent from Envoy (rejected, warming, or not yet applied).
    pub only_rudder: Vec<String>,
    /// Held by Envoy, not in what rudder sent on the current stream.
    pub only_envoy: Vec<String>,
}

impl SectionDiff {
    /// Nothing differs.
    pub fn is_clean(&self) -> bool {
        self.differ.is_empty() && self.only_rudder.is_empty() && self.only_envoy.is_empty()
    }
}

/// Compares every section either dump has.
pub fn diff_dumps(rudder: &Value, envoy: &Value) -> Vec<SectionDiff> {
    let mut out = Vec::new();
    for (label, field, inner, key) in SECTIONS {
        let mut ours = resources(rudder, field, inner, key);
        let mut theirs = resources(envoy, field, inner, key);
        if label == "endpoints" {
            // Envoy rebuilds its EDS dump from its host sets (adding weights, health, overprovisioning) and lists
            // the inline assignments of non-EDS clusters too: compare the addresses of what rudder sent.
            theirs.retain(|name, _| ours.contains_key(name));
            ours.values_mut().for_each(|v| *v = addresses(v));
            theirs.values_mut().for_each(|v| *v = addresses(v));
        }
        if ours.is_empty() && theirs.is_empty() {
            continue;
        }
        let mut d = SectionDiff {
            section: label,
            ..Default::default()
        };
        for (name, body) in &ours {
            match theirs.get(name) {
                Some(t) if t == body => d.in_sync += 1,
                Some(_) => d.differ.push(name.clone()),
                None => d.only_rudder.push(name.clone()),
            }
        }
        d.only_envoy = theirs
            .keys()
            .filter(|n| !ours.contains_key(*n))
            .cloned()
            .collect();
        out.push(d);
    }
    out
}

/// Resources of one section by name, numbers normalized (Envoy prints `100`, prost-reflect `100.0`).
pub fn resources(dump: &Value, field: &str, inner: &str, key: &str) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for c in dump["configs"].as_array().into_iter().flatten() {
        for item in c[field].as_array().into_iter().flatten() {
            // A listener still warming in Envoy has its config under `warming_state`.
            let warming = inner.replace("active_state", "warming_state");
            let Some(body) = item.pointer(inner).or_else(|| item.pointer(&warming)) else {
                continue;
            };
            // Envoy's dump of a secret has the name beside the secret; rudder's body carries it too.
            let name = body[key]
                .as_str()
                .or_else(|| item[key].as_str())
                .unwrap_or_default()
                .to_owned();
            out.insert(name, normalize(body));
        }
    }
    out
}

/// The sorted `address:port` list of a ClusterLoadAssignment.
fn addresses(cla: &Value) -> Value {
    let mut out: Vec<String> = cla["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["lb_endpoints"].as_array().cloned().unwrap_or_default())
        .map(|lb| {
            let sa = &lb["endpoint"]["address"]["socket_address"];
            format!(
                "{}:{}",
                sa["address"].as_str().unwrap_or_default(),
                sa["port_value"]
            )
        })
        .collect();
    out.sort();
    serde_json::json!(out)
}

fn normalize(v: &Value) -> Value {
    match v {
        Value::Number(n) => serde_json::json!(n.as_f64()),
        Value::Array(a) => Value::Array(a.iter().map(normalize).collect()),
        Value::Object(m) => {
            Value::Object(m.iter().map(|(k, v)| (k.clone(), normalize(v))).collect())
        }
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reports_equal_differing_and_missing_resources() {
        let dump = |clusters: Value| {
            json!({"configs": [{"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
                "dynamic_active_clusters": clusters}]})
        };
        let ours = dump(json!([
            {"cluster": {"name": "a", "connect_timeout": "1s", "x": 1.0}},
            {"cluster": {"name": "b", "connect_timeout": "1s"}},
            {"cluster": {"name": "c"}},
        ]));
        let theirs = dump(json!([
            {"version_info": "v", "cluster": {"name": "a", "connect_timeout": "1s", "x": 1}},
            {"cluster": {"name": "b", "connect_timeout": "2s"}},
            {"cluster": {"name": "d"}},
        ]));
        let d = diff_dumps(&ours, &theirs);
        assert_eq!(
            d,
            [SectionDiff {
                section: "clusters",
                in_sync: 1,
                differ: vec!["b".into()],
                only_rudder: vec!["c".into()],
                only_envoy: vec!["d".into()],
            }]
        );
        assert!(!d[0].is_clean());
    }
}
