//! The book's Istio 1.3 kinds (authentication Policy/MeshPolicy, rbac.istio.io, Mixer config.istio.io, SMI
//! TrafficSplit): parsed and validated so the book's YAML loads; translated by later stages.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

macro_rules! placeholder {
    ($($name:ident),*) => {$(
        /// Placeholder until the full schema lands.
        #[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
        pub struct $name {}
    )*};
}
placeholder!(
    PolicySpec,
    RbacConfigSpec,
    ServiceRoleSpec,
    ServiceRoleBindingSpec,
    HandlerSpec,
    InstanceSpec,
    RuleSpec,
    QuotaSpecSpec,
    QuotaSpecBindingSpec,
    TrafficSplitSpec
);
