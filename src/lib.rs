//! rudder: an Istio-compatible service-mesh control plane serving stock Envoy over ADS.
//!
//! Data flows one way: `config` (sources → store) → `model` (immutable snapshot) → generators → `xds` server.

pub mod app;
pub mod cli;
pub mod config;
pub mod debug;
pub mod envoy;
pub mod inject;
pub mod model;
pub mod security;
pub mod xds;

#[cfg(any(test, feature = "testing"))]
pub mod test_helpers;
