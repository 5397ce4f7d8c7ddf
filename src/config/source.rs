//! Sources feed the store: each parses its input, validates it, and writes changes and problems.

pub mod file;
pub mod kube;
