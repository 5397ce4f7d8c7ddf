//! Helpers shared by unit tests, integration tests and the conformance harness (feature `testing`).

pub mod ads;
pub mod envoy;
pub mod gotmpl;
pub mod identity;
pub mod kube;
pub mod loopback;
pub mod mesh;
pub mod named;
pub mod netns;
pub mod process;
pub mod xds_fixtures;
