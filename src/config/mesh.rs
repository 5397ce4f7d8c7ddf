//! MeshConfig: what istiod reads from ConfigMap `istio` (key `mesh`), with Istio's defaults.

use serde::{Deserialize, Serialize};

/// Placeholder until the full schema lands.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct MeshConfig {}
