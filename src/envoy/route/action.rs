//! Route actions: destinations (cluster or weighted clusters), retries, mirrors, redirects, direct responses.

use envoy_types::pb::envoy::config::core::v3::{
    DataSource, RuntimeFractionalPercent, data_source::Specifier,
};
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, RedirectAction, RetryPolicy, WeightedCluster,
    redirect_action::{PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier},
    retry_policy::{
        RetryBackOff, RetryHostPredicate, RetryPriority, retry_host_predicate, retry_priority,
    },
    route_action::{MaxStreamDuration, RequestMirrorPolicy},
    weighted_cluster::ClusterWeight,
};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::extensions::retry::priority::previous_priorities::v3::PreviousPrioritiesConfig;
use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};

use super::policy::HeaderOps;
use super::{Ctx, any, bool_value, pb_duration};
use crate::config::istio::networking::{
    Destination, HttpDirectResponse, HttpRedirect, HttpRetry, RedirectPortSelection,
};
use crate::envoy::names::ClusterName;
use crate::model::proxy::resolve_host;

/// Istio's retry conditions when a route sets none.
pub const DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";
/// Istio's retry count when a route sets none.
pub const DEFAULT_RETRIES: u32 = 2;
const PREVIOUS_HOSTS: &str = "envoy.retry_host_predicates.previous_hosts";
const PREVIOUS_PRIORITIES: &str = "envoy.retry_priorities.previous_priorities";

/// Where one destination goes: its cluster, and what the hash policy lookup needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub cluster: String,
    pub host: String,
    pub port: u16,
    pub subset: String,
}

/// Resolves a destination written in namespace `ns`. Its port is the one named, else the service's only port, else
/// the listener's (as istiod).
pub fn target(ctx: &Ctx<'_, '_>, dest: &Destination, ns: &str) -> Target {
    let host = resolve_host(&dest.host, ns);
    let service = ctx.scope.service(&host);
    let port = dest
        .port
        .and_then(|p| u16::try_from(p.number).ok())
        .filter(|p| *p != 0)
        .or_else(|| match service.map(|s| s.ports.as_slice()) {
            Some([only]) => Some(only.port),
            _ => None,
        })
        .unwrap_or(ctx.port);
    let subset = dest.subset.clone().unwrap_or_default();
    Target {
        cluster: ClusterName::outbound(port, &subset, &host).to_string(),
        host,
        port,
        subset,
    }
}

/// Istio's default retry policy (2 retries on connect failures, refused streams and 503, another host each time).
pub fn default_retry_policy() -> RetryPolicy {
    RetryPolicy {
        retry_on: DEFAULT_RETRY_ON.into(),
        num_retries: Some(UInt32Value {
            value: DEFAULT_RETRIES,
        }),
        retry_host_predicate: vec![previous_hosts()],
        host_selection_retry_max_attempts: 5,
        retriable_status_codes: vec![503],
        ..Default::default()
    }
}

fn previous_hosts() -> RetryHostPredicate {
    RetryHostPredicate {
        name: PREVIOUS_HOSTS.into(),
        config_type: Some(retry_host_predicate::ConfigType::TypedConfig(any(
            &PreviousHostsPredicate::default(),
        ))),
    }
}

/// The retry policy of a rule: Istio's default when unset, none when `attempts` is 0 (or unset: istiod reads an
/// explicit `retries` block without attempts as "disable"), else the default overridden field by field.
pub fn retry_policy(r: Option<&HttpRetry>) -> Option<RetryPolicy> {
    let Some(r) = r else {
        return Some(default_retry_policy());
    };
    let attempts = r.attempts.unwrap_or(0);
    if attempts <= 0 {
        return None;
    }
    let mut out = default_retry_policy();
    out.num_retries = Some(UInt32Value {
        value: attempts as u32,
    });
    if let Some(on) = r.retry_on.as_deref().filter(|s| !s.trim().is_empty()) {
        // Numbers are status codes; the rest are Envoy retry conditions.
        let (codes, conds): (Vec<&str>, Vec<&str>) = on
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .partition(|s| s.parse::<u32>().is_ok());
        let mut conds: Vec<String> = conds.into_iter().map(String::from).collect();
        out.retriable_status_codes = codes.iter().filter_map(|c| c.parse().ok()).collect();
        if !out.retriable_status_codes.is_empty()
            && !conds.iter().any(|c| c == "retriable-status-codes")
        {
            conds.push("retriable-status-codes".into());
        }
        out.retry_on = conds.join(",");
    }
    if let Some(t) = r.per_try_timeout {
        out.per_try_timeout = Some(pb_duration(t.get()));
    }
    if r.retry_remote_localities == Some(true) {
        out.retry_priority = Some(RetryPriority {
            name: PREVIOUS_PRIORITIES.into(),
            config_type: Some(retry_priority::ConfigType::TypedConfig(any(
                &PreviousPrioritiesConfig {
                    update_frequency: 2,
                },
            ))),
        });
    }
    if r.retry_ignore_previous_hosts == Some(false) {
        out.retry_host_predicate.clear();
    }
    if let Some(b) = r.backoff {
        out.retry_back_off = Some(RetryBackOff {
            base_interval: Some(pb_duration(b.get())),
            max_interval: None,
        });
    }
    Some(out)
}

/// The route timeout (0 = disabled, istiod's default) and the matching gRPC stream limits.
pub fn timeout(t: Option<std::time::Duration>) -> (PbDuration, MaxStreamDuration) {
    let d = pb_duration(t.unwrap_or_default());
    (
        d,
        MaxStreamDuration {
            max_stream_duration: Some(d),
            grpc_timeout_header_max: Some(d),
            grpc_timeout_header_offset: None,
        },
    )
}

/// A mirror to `cluster` for `fraction` of requests.
pub fn mirror(
    cluster: String,
    fraction: envoy_types::pb::envoy::r#type::v3::FractionalPercent,
) -> RequestMirrorPolicy {
    RequestMirrorPolicy {
        cluster,
        runtime_fraction: Some(RuntimeFractionalPercent {
            default_value: Some(fraction),
            runtime_key: String::new(),
        }),
        trace_sampled: bool_value(false),
        ..Default::default()
    }
}

/// One weighted destination with its destination-level header operations.
pub struct Weighted {
    pub target: Target,
    pub weight: u32,
    pub request: HeaderOps,
    pub response: HeaderOps,
}

/// Scales weights to sum to 100 (largest remainder, ties by position); zero weights are dropped. When no
/// destination has a weight they share equally.
pub fn normalise_weights(weights: &[u32]) -> Vec<u32> {
    let mut w: Vec<u64> = weights.iter().map(|&x| u64::from(x)).collect();
    if w.iter().all(|&x| x == 0) {
        w = vec![1; w.len()];
    }
    let total: u64 = w.iter().sum();
    if total == 0 {
        return Vec::new();
    }
    let mut out: Vec<u64> = w.iter().map(|x| x * 100 / total).collect();
    let mut rest = 100 - out.iter().sum::<u64>();
    let mut order: Vec<usize> = (0..w.len()).filter(|&i| w[i] > 0).collect();
    order.sort_by_key(|&i| std::cmp::Reverse((w[i] * 100) % total));
    for i in order {
        if rest == 0 {
            break;
        }
        out[i] += 1;
        rest -= 1;
    }
    out.into_iter().map(|x| x as u32).collect()
}

/// Weighted clusters for several destinations (weights already normalised, zero weights removed).
pub fn weighted_clusters(dests: &[Weighted]) -> WeightedCluster {
    WeightedCluster {
        clusters: dests
            .iter()
            .map(|d| ClusterWeight {
                name: d.target.cluster.clone(),
                weight: Some(UInt32Value { value: d.weight }),
                request_headers_to_add: d.request.add.clone(),
                request_headers_to_remove: d.request.remove.clone(),
                response_headers_to_add: d.response.add.clone(),
                response_headers_to_remove: d.response.remove.clone(),
                host_rewrite_specifier: d.request.host.clone().map(
                    envoy_types::pb::envoy::config::route::v3::weighted_cluster::cluster_weight::HostRewriteSpecifier::HostRewriteLiteral,
                ),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// `redirect` → Envoy redirect (`redirectCode` defaults to 301).
pub fn redirect(r: &HttpRedirect, origin: &str) -> RedirectAction {
    let code = match r.redirect_code.unwrap_or(301) {
        301 => RedirectResponseCode::MovedPermanently,
        302 => RedirectResponseCode::Found,
        303 => RedirectResponseCode::SeeOther,
        307 => RedirectResponseCode::TemporaryRedirect,
        308 => RedirectResponseCode::PermanentRedirect,
        other => {
            tracing::warn!(
                "VirtualService {origin}: redirectCode {other} is not a redirect; using 301"
            );
            RedirectResponseCode::MovedPermanently
        }
    };
    let port = match (r.port, r.derive_port) {
        (Some(p), _) => p,
        (None, Some(RedirectPortSelection::FromProtocolDefault)) => {
            if r.scheme.as_deref() == Some("https") {
                443
            } else {
                80
            }
        }
        // FROM_REQUEST_PORT: Envoy keeps the request's port when none is set.
        _ => 0,
    };
    RedirectAction {
        host_redirect: r.authority.clone().unwrap_or_default(),
        port_redirect: port,
        response_code: code as i32,
        scheme_rewrite_specifier: r.scheme.clone().map(SchemeRewriteSpecifier::SchemeRedirect),
        path_rewrite_specifier: if let Some(uri) = &r.uri {
            Some(PathRewriteSpecifier::PathRedirect(uri.clone()))
        } else {
            r.prefix_rewrite
                .clone()
                .map(PathRewriteSpecifier::PrefixRewrite)
        },
        ..Default::default()
    }
}

/// `directResponse` → a fixed answer (`body.bytes` is base64).
pub fn direct_response(d: &HttpDirectResponse, origin: &str) -> DirectResponseAction {
    let body = d.body.as_ref().and_then(|b| {
        if let Some(s) = &b.string {
            Some(Specifier::InlineString(s.clone()))
        } else if let Some(bytes) = &b.bytes {
            match base64_decode(bytes) {
                Some(v) => Some(Specifier::InlineBytes(v)),
                None => {
                    tracing::warn!("VirtualService {origin}: directResponse.body.bytes is not base64; body dropped");
                    None
                }
            }
        } else {
            None
        }
    });
    DirectResponseAction {
        status: d.status.unwrap_or(200),
        body: body.map(|s| DataSource {
            specifier: Some(s),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Standard base64 (with or without padding).
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in s
        .trim()
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
    {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_100() {
        assert_eq!(normalise_weights(&[90, 10]), vec![90, 10]);
        assert_eq!(normalise_weights(&[100, 900]), vec![10, 90]);
        assert_eq!(normalise_weights(&[1, 1, 1]), vec![34, 33, 33]);
        assert_eq!(normalise_weights(&[0, 0]), vec![50, 50]);
        assert_eq!(normalise_weights(&[0, 5]), vec![0, 100]);
    }

    #[test]
    fn base64() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVsbG8").unwrap(), b"hello");
        assert!(base64_decode("a*b").is_none());
    }
}
