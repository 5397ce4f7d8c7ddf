//! security.istio.io kinds: PeerAuthentication, RequestAuthentication, AuthorizationPolicy.

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
    PeerAuthenticationSpec,
    RequestAuthenticationSpec,
    AuthorizationPolicySpec
);
