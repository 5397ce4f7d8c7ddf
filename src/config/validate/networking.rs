//! Validation rules for networking.istio.io kinds.

use super::Report;
use crate::config::istio::networking::*;

pub(super) fn gateway(_spec: &GatewaySpec, _r: &mut Report) {}
pub(super) fn virtual_service(_spec: &VirtualServiceSpec, _r: &mut Report) {}
pub(super) fn destination_rule(_spec: &DestinationRuleSpec, _r: &mut Report) {}
pub(super) fn service_entry(_spec: &ServiceEntrySpec, _r: &mut Report) {}
pub(super) fn sidecar(_spec: &SidecarSpec, _r: &mut Report) {}
pub(super) fn workload_entry(_spec: &WorkloadEntrySpec, _r: &mut Report) {}
pub(super) fn workload_group(_spec: &WorkloadGroupSpec, _r: &mut Report) {}
pub(super) fn envoy_filter(_spec: &EnvoyFilterSpec, _r: &mut Report) {}
