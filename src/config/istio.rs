//! Istio's own kinds (networking, security, telemetry) as plain serde types, every served version sharing one
//! schema.

pub mod common;
pub mod networking;
pub mod security;
pub mod telemetry;
