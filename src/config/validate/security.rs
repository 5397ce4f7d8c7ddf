//! Validation rules for security.istio.io and telemetry.istio.io kinds.

use super::Report;
use crate::config::istio::security::*;
use crate::config::istio::telemetry::TelemetrySpec;

pub(super) fn peer_authentication(_spec: &PeerAuthenticationSpec, _r: &mut Report) {}
pub(super) fn request_authentication(_spec: &RequestAuthenticationSpec, _r: &mut Report) {}
pub(super) fn authorization_policy(_spec: &AuthorizationPolicySpec, _r: &mut Report) {}
pub(super) fn telemetry(_spec: &TelemetrySpec, _r: &mut Report) {}
