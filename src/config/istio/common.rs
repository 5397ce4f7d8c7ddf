//! Small value types shared by several Istio kinds (durations, string matches, selectors, percentages).

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A protobuf `google.protobuf.Duration` as Istio writes it in YAML: `1.5s`, `100ms`, `1m`, `2h`, `10us`.
///
/// Parsed once at the edge, so an invalid duration is reported with its field path by the loader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    /// The wrapped standard duration.
    pub fn get(self) -> std::time::Duration {
        self.0
    }
}

/// Parses Istio/Go duration strings. Istio accepts Go's `time.ParseDuration` forms (`1h30m`, `1.5s`, `300ms`)
/// and protobuf JSON durations (`1.5s`). Negative durations are refused: no Istio field takes one.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if s == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    if s.starts_with('-') {
        return Err(format!("invalid duration {s:?}: must not be negative"));
    }
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut total: f64 = 0.0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
            i += 1;
        }
        let num = &s[start..i];
        if num.is_empty() || num.matches('.').count() > 1 {
            return Err(format!(
                "invalid duration {s:?}: expected a number like 1.5s or 100ms"
            ));
        }
        let value: f64 = num
            .parse()
            .map_err(|_| format!("invalid duration {s:?}: bad number {num:?}"))?;
        let ustart = i;
        while i < bytes.len() && !(bytes[i].is_ascii_digit() || bytes[i] == b'.') {
            i += 1;
        }
        let unit = &s[ustart..i];
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => {
                return Err(format!(
                    "invalid duration {s:?}: missing unit (use ms, s, m or h)"
                ));
            }
            other => return Err(format!("invalid duration {s:?}: unknown unit {other:?}")),
        };
        total += value * scale;
    }
    // protobuf Duration caps at 10,000 years; anything near that is a mistake in a mesh config.
    if !total.is_finite() || total > 315_576_000_000.0 {
        return Err(format!("invalid duration {s:?}: too large"));
    }
    Ok(std::time::Duration::from_secs_f64(total))
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.subsec_nanos() == 0 {
            write!(f, "{}s", d.as_secs())
        } else if d.as_nanos().is_multiple_of(1_000_000) {
            write!(f, "{}ms", d.as_millis())
        } else {
            write!(f, "{}s", d.as_secs_f64())
        }
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        parse_duration(&raw)
            .map(Duration)
            .map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "description": "Duration such as 1.5s or 100ms"})
    }
}

/// Istio's `StringMatch`: exactly one of `exact`, `prefix`, `regex` (RE2) should be set.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct StringMatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// `selector: {matchLabels: {...}}` used by the security and telemetry kinds (and Sidecar, WorkloadGroup…).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct WorkloadSelector {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
}

/// A reference to a policy target (`targetRef`/`targetRefs` of the security and telemetry kinds).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct PolicyTargetReference {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub group: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
}

/// Istio's `Percent` (`{value: 12.5}`), a double between 0 and 100.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct Percent {
    pub value: f64,
}

/// `port: {number: 80}` as used by DestinationRule port-level settings and VirtualService destinations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct PortSelector {
    pub number: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_istio() {
        let ok = [
            ("1.5s", 1500),
            ("100ms", 100),
            ("1m", 60_000),
            ("2h", 7_200_000),
            ("1h30m", 5_400_000),
            ("0", 0),
            ("3s", 3000),
        ];
        for (s, ms) in ok {
            assert_eq!(parse_duration(s).unwrap().as_millis(), ms, "{s}");
        }
        for bad in ["", "5", "1x", "-1s", "s", "1..5s", "abc"] {
            assert!(parse_duration(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn duration_round_trips() {
        let d: Duration = serde_json::from_str("\"1.5s\"").unwrap();
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"1500ms\"");
        let d: Duration = serde_json::from_str("\"10s\"").unwrap();
        assert_eq!(d.to_string(), "10s");
    }
}
