//! Translation of the model into Envoy resources. Each generator is a pure function of a `ProxyScope`; the
//! `generator` module adapts them to the xDS server (encoding, caching, sharing).
//!
//! Envoy types are imported under short aliases at the top of each generator file.

pub mod bootstrap;
pub mod cluster;
pub mod endpoint;
pub mod generator;
pub mod listener;
pub mod names;
pub mod proto;
pub mod route;

pub use generator::Generator;
