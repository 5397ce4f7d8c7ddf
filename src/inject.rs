//! Sidecar injection support: the traffic-capture rules an init container installs (`rudder iptables`).
//!
//! The webhook and injection template land here later; they reuse the same rules and the bootstrap renderer in
//! `envoy::bootstrap`.

pub mod iptables;
pub mod pod;
pub mod proxy_config;
pub mod webhook;
