//! networking.istio.io kinds: Gateway, VirtualService, DestinationRule, ServiceEntry, Sidecar, WorkloadEntry,
//! WorkloadGroup, EnvoyFilter.

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
    GatewaySpec,
    VirtualServiceSpec,
    DestinationRuleSpec,
    ServiceEntrySpec,
    SidecarSpec,
    WorkloadEntrySpec,
    WorkloadGroupSpec,
    EnvoyFilterSpec
);
