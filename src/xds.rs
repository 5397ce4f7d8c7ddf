//! The ADS server: state-of-the-world and delta streams, per-connection subscription/ACK/NACK state, and the push
//! pipeline. It sees only opaque, pre-encoded resources produced by generators.
