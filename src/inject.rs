//! Sidecar injection: `pod` injects a stock Envoy sidecar and the `istio-init` capture container into a pod
//! (a pure function, shared by the webhook and `rudder kube-inject`), `proxy_config` reads the
//! `proxy.istio.io/config` annotation over the mesh's `defaultConfig`, `iptables` holds the capture rules the init
//! container installs (`rudder iptables`), and `webhook` serves `/inject` and `/validate` over HTTPS.

pub mod iptables;
pub mod pod;
pub mod proxy_config;
pub mod webhook;
