//! telemetry.istio.io Telemetry.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Placeholder until the full schema lands.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
pub struct TelemetrySpec {}
