//! Looking up generated xDS resources by name in table tests: one [`find`] for clusters, listeners, route
//! configurations and load assignments, failing with the names that were there.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;

/// An xDS resource with a name (a load assignment's is its cluster name).
pub trait Named {
    /// What the resource is, for failure messages.
    const KIND: &'static str;
    /// The resource name.
    fn name(&self) -> &str;
}

impl Named for Cluster {
    const KIND: &'static str = "cluster";
    fn name(&self) -> &str {
        &self.name
    }
}

impl Named for Listener {
    const KIND: &'static str = "listener";
    fn name(&self) -> &str {
        &self.name
    }
}

impl Named for RouteConfiguration {
    const KIND: &'static str = "route configuration";
    fn name(&self) -> &str {
        &self.name
    }
}

impl Named for ClusterLoadAssignment {
    const KIND: &'static str = "assignment";
    fn name(&self) -> &str {
        &self.cluster_name
    }
}

/// The resource called `name` in `all`; panics naming the ones there are when it is missing.
pub fn find<'a, T: Named>(all: &'a [T], name: &str) -> &'a T {
    all.iter().find(|r| r.name() == name).unwrap_or_else(|| {
        panic!(
            "no {} {name}; have {:?}",
            T::KIND,
            all.iter().map(Named::name).collect::<Vec<_>>()
        )
    })
}
