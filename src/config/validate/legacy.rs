//! Validation rules for the book's legacy kinds.

use super::Report;
use crate::config::legacy::*;

pub(super) fn policy(_spec: &PolicySpec, _r: &mut Report) {}
pub(super) fn rbac_config(_spec: &RbacConfigSpec, _r: &mut Report) {}
pub(super) fn service_role(_spec: &ServiceRoleSpec, _r: &mut Report) {}
pub(super) fn service_role_binding(_spec: &ServiceRoleBindingSpec, _r: &mut Report) {}
pub(super) fn handler(_spec: &HandlerSpec, _r: &mut Report) {}
pub(super) fn instance(_spec: &InstanceSpec, _r: &mut Report) {}
pub(super) fn rule(_spec: &RuleSpec, _r: &mut Report) {}
pub(super) fn quota_spec(_spec: &QuotaSpecSpec, _r: &mut Report) {}
pub(super) fn quota_spec_binding(_spec: &QuotaSpecBindingSpec, _r: &mut Report) {}
pub(super) fn traffic_split(_spec: &TrafficSplitSpec, _r: &mut Report) {}
