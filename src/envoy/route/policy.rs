//! Per-route modifiers: header operations, fault injection (`envoy.filters.http.fault`), CORS
//! (`envoy.filters.http.cors`), percentages.

use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, RuntimeFractionalPercent,
    header_value_option::HeaderAppendAction,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{
    FaultDelay, fault_delay::FaultDelaySecifier,
};
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy as EnvoyCors;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
    FaultAbort, HttpFault, fault_abort::ErrorType,
};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent::DenominatorType};

use super::{bool_value, matcher::string_matcher, pb_duration};
use crate::config::istio::common::{Percent, StringMatch};
use crate::config::istio::networking::{
    CorsPolicy, HeaderOperations, HttpFaultInjection, UnmatchedPreflights,
};

/// Envoy's header operations for one Istio `headers.request` or `headers.response`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct HeaderOps {
    pub add: Vec<HeaderValueOption>,
    pub remove: Vec<String>,
    /// `set`/`add` of `host` or `:authority` on requests: a host rewrite, since Envoy refuses to touch the Host
    /// header through header operations.
    pub host: Option<String>,
}

/// Translates header operations. `set` overwrites (`OVERWRITE_IF_EXISTS_OR_ADD`), `add` appends
/// (`APPEND_IF_EXISTS_OR_ADD`). Pseudo-headers cannot be modified this way and are dropped with a warning.
pub fn header_ops(ops: Option<&HeaderOperations>, origin: &str) -> HeaderOps {
    let mut out = HeaderOps::default();
    let Some(ops) = ops else {
        return out;
    };
    let mut push = |name: &str, value: &str, action: HeaderAppendAction| {
        let lower = name.to_ascii_lowercase();
        if lower == "host" || lower == ":authority" {
            out.host = Some(value.to_string());
            return;
        }
        if lower.starts_with(':') {
            tracing::warn!("VirtualService {origin}: header {name} cannot be modified; ignored");
            return;
        }
        out.add.push(HeaderValueOption {
            header: Some(HeaderValue {
                key: name.to_string(),
                value: value.to_string(),
                ..Default::default()
            }),
            append_action: action as i32,
            ..Default::default()
        });
    };
    for (k, v) in &ops.set {
        push(k, v, HeaderAppendAction::OverwriteIfExistsOrAdd);
    }
    for (k, v) in &ops.add {
        push(k, v, HeaderAppendAction::AppendIfExistsOrAdd);
    }
    for name in &ops.remove {
        let lower = name.to_ascii_lowercase();
        if lower.starts_with(':') || lower == "host" {
            tracing::warn!("VirtualService {origin}: header {name} cannot be removed; ignored");
            continue;
        }
        out.remove.push(name.clone());
    }
    out
}

/// A percentage 0–100 (Istio `Percent`) as a fraction of a million, Envoy's finest denominator.
pub fn percent(p: &Percent) -> FractionalPercent {
    let clamped = p.value.clamp(0.0, 100.0);
    FractionalPercent {
        numerator: (clamped * 10_000.0).round() as u32,
        denominator: DenominatorType::Million as i32,
    }
}

/// An integer percentage (deprecated Istio fields).
pub fn int_percent(p: u32) -> FractionalPercent {
    FractionalPercent {
        numerator: p.min(100),
        denominator: DenominatorType::Hundred as i32,
    }
}

/// 100%.
pub fn always() -> FractionalPercent {
    int_percent(100)
}

/// The per-route fault filter config, `None` when nothing is injected.
pub fn fault(f: &HttpFaultInjection, origin: &str) -> Option<HttpFault> {
    let delay = f.delay.as_ref().and_then(|d| {
        let Some(fixed) = d.fixed_delay else {
            if d.exponential_delay.is_some() {
                tracing::warn!("VirtualService {origin}: fault.delay.exponentialDelay is not supported; ignored");
            }
            return None;
        };
        let pct = match (&d.percentage, d.percent) {
            (Some(p), _) => percent(p),
            (None, Some(i)) => int_percent(i.max(0) as u32),
            (None, None) => always(),
        };
        Some(FaultDelay {
            percentage: Some(pct),
            fault_delay_secifier: Some(FaultDelaySecifier::FixedDelay(pb_duration(fixed.get()))),
        })
    });
    let abort = f.abort.as_ref().and_then(|a| {
        let error = if let Some(s) = a.http_status {
            ErrorType::HttpStatus(s as u32)
        } else if let Some(g) = &a.grpc_status {
            let Some(code) = grpc_code(g) else {
                tracing::warn!(
                    "VirtualService {origin}: fault.abort.grpcStatus {g:?} is unknown; ignored"
                );
                return None;
            };
            ErrorType::GrpcStatus(code)
        } else {
            tracing::warn!(
                "VirtualService {origin}: fault.abort without httpStatus/grpcStatus; ignored"
            );
            return None;
        };
        Some(FaultAbort {
            percentage: Some(a.percentage.as_ref().map(percent).unwrap_or_else(always)),
            error_type: Some(error),
            ..Default::default()
        })
    });
    (delay.is_some() || abort.is_some()).then(|| HttpFault {
        delay,
        abort,
        ..Default::default()
    })
}

/// gRPC status by name (`UNAVAILABLE`) or number.
fn grpc_code(s: &str) -> Option<u32> {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    s.parse()
        .ok()
        .or_else(|| NAMES.iter().position(|n| *n == s).map(|i| i as u32))
}

/// The per-route CORS filter config. The deprecated `allowOrigin` list (the book's form) means exact origins.
pub fn cors(c: &CorsPolicy) -> EnvoyCors {
    let origins = c
        .allow_origins
        .iter()
        .filter_map(string_matcher)
        .chain(c.allow_origin.iter().filter_map(|o| {
            string_matcher(&StringMatch {
                exact: Some(o.clone()),
                ..Default::default()
            })
        }))
        .collect();
    EnvoyCors {
        allow_origin_string_match: origins,
        allow_methods: c.allow_methods.join(","),
        allow_headers: c.allow_headers.join(","),
        expose_headers: c.expose_headers.join(","),
        max_age: c
            .max_age
            .map(|d| d.get().as_secs().to_string())
            .unwrap_or_default(),
        allow_credentials: c.allow_credentials.and_then(bool_value),
        filter_enabled: Some(RuntimeFractionalPercent {
            default_value: Some(always()),
            runtime_key: String::new(),
        }),
        forward_not_matching_preflights: match c.unmatched_preflights {
            Some(UnmatchedPreflights::Ignore) => bool_value(false),
            Some(UnmatchedPreflights::Forward) => bool_value(true),
            _ => None,
        },
        ..Default::default()
    }
}
