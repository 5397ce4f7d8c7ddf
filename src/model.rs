//! The model: an immutable snapshot of the mesh (service registry, workloads, mesh config, Istio config indexes)
//! built from the store after a debounce. Imports no kube, tonic or Envoy types.

pub mod builder;
pub mod peer_auth;
pub mod proxy;
pub mod registry;
pub mod service;
mod service_entry;
pub mod snapshot;
pub mod workload;

pub use service::{
    Endpoint, Location, Origin, Protocol, Resolution, Service, ServicePort, TargetPort,
};
pub use snapshot::{Snapshot, Summary};
pub use workload::Workload;
