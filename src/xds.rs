//! The ADS server: state-of-the-world and delta streams, per-connection subscription/ACK/NACK state, and the push
//! pipeline. It sees only opaque, pre-encoded resources produced by generators.
//!
//! ```text
//!  app (debounce) ──▶ watch<Option<Arc<PushContext>>> ──▶ one task per connection ──▶ Envoy
//!                                                         │  (HTTP/2 and its ADS streams; a
//!                                                         │   stream waits for a push permit:
//!                                                         │   bounded concurrency, merged
//!                                                         │   per stream by the watch; ACKs
//!                                                         │   read once the fan-out is out)
//!                                                         └─▶ Registry (read-only view for /debug)
//! ```
//!
//! Wiring: build a [`PushContext`] per snapshot generation with a [`Generate`] implementation, publish it on a
//! `watch` channel, create a [`Server`] from a [`Config`] and the receiver, bind a listener and run
//! [`Server::serve`] with a shutdown future. [`Server::registry`] and [`Server::metrics`] feed the debug API.

mod connection;
pub mod debounce;
mod delta;
pub(crate) mod fanout;
mod grpc;
mod http2;
pub mod metrics;
pub mod node;
pub mod registry;
pub mod resource;
mod server;
mod sotw;
mod type_state;
mod watch_gate;

use std::net::SocketAddr;

pub use debounce::debounce;
pub use metrics::Metrics;
pub use node::{Authenticate, PeerIdentity, Proxy, ProxyId, ProxyType};
pub use registry::{ConnectionStatus, Nack, Protocol, Registry, SentResource, TypeStatus};
pub use resource::{Generate, PushContext, ResourceSet, XdsResource, type_url};
pub use server::{Config, Server};

/// Errors of the xDS module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Envoy node id does not have the `<type>~<ip>~<pod>.<ns>~<domain>` shape.
    #[error(
        "invalid node id {id:?}: {reason} (expected <sidecar|router>~<ip>~<pod>.<namespace>~<domain>)"
    )]
    InvalidNodeId {
        /// The node id as sent by Envoy.
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Binding the ADS listener failed.
    #[error("xDS server cannot bind {0}: {1} (is another process using the port?)")]
    Bind(SocketAddr, #[source] std::io::Error),
    /// Reading the bound address failed.
    #[error("xDS server cannot read its local address: {0}")]
    LocalAddr(#[source] std::io::Error),
}
